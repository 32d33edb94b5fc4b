/* cpu/experts.c — the expert FFNs on the CPU, active experts only, on
 * dynmoe's own kernels (no BLAS).
 *
 * Each active expert e has rows [r0, r0 + R_e) of the plan; its FFN
 *   h = s_r * (W13_e . x[token(r)]) + b13_e   (s_r: the slot weight under
 *                                              router.weight_on_input, else 1)
 *   y[r] = W2_e . act(h) + b2_e               (act_rules.h: gate/up rows, dm_activate)
 * lands in rows_y[r0 + r]; W13/W2 may be quantized (the panel kernels decode
 * a row at a time into the thread's wbuf, the skinny kernel in registers).
 * An expert with no rows is never visited, so it reads no weights: cost
 * follows the rows. Napkin math (Qwen3-30B-A3B,
 * T = 2048, K = 8): 16384 rows, 6 * 16384 * 768 * 2048 = 155 GFLOP and 2.4 GB
 * of fp32 weights; the bound is the machine's dense sgemm rate.
 *
 * Work items: an expert is cut into chunks of up to DM_CPU_PANEL_ROWS rows
 * (chunk_rows), one item each. The kernel of an item depends on its rows and
 * the instruction path (isa.c) only:
 *  - avx2, R >= 8: packed 8-row panels, GEMM 1 + activation, GEMM 2
 *    (ffn_panels.c); avx2, R < 8: gather, skinny GEMM 1, activation, skinny
 *    GEMM 2 (gemm_skinny.c), where a panel would be mostly padding;
 *  - avx512, R >= 8: ffn_avx512.c's panels (16-lane FMAs on k pairs) when H
 *    and I are even, else avx2's; R < 8 as avx2;
 *  - scalar: the panels of ffn_scalar.c for every R.
 * One parallel region, two schedules:
 *  - at least 2 items per thread (prefill): whole items per thread, dynamic;
 *  - fewer (decode, Mixtral's 8 experts, one hot expert): the items one after
 *    another, each one's phases (pack, GEMM 1, GEMM 2) cut into column blocks
 *    over all threads, a barrier between phases.
 * Every output element is computed by one thread in an order fixed by the
 * element (cpu.h), so the bits do not depend on the schedule or the thread
 * count. Nothing here allocates: no nested region, no BLAS, and the team has
 * the size of every other stage's (dm_cpu_threads). */
#include "../hd.h"
#include "cpu.h"
#include "onednn.h"

/* From this many rows on, the AVX2 path packs panels; below, a panel would
 * be mostly padding and the skinny kernel is faster (ffn_panels.c measures). */
#define DM_PANEL_MIN_ROWS 8
/* Columns per block of the skinny GEMMs when a team shares them. */
#define SKINNY_COLS 24

int32_t dm_cpu_chunk_rows(int32_t R) {
    /* Equal chunks in multiples of 16 rows: 136 rows as 128 + 8 would read
     * the weights a second time for 8 rows (measured: 139 against 170 GFLOP/s). */
    const int32_t chunks = (R + DM_CPU_PANEL_ROWS - 1) / DM_CPU_PANEL_ROWS;
    const int32_t step = ((R + chunks - 1) / chunks + 15) / 16 * 16;
    return step < DM_CPU_PANEL_ROWS ? step : DM_CPU_PANEL_ROWS;
}

static int32_t chunks_of(int32_t R) {
    const int32_t step = dm_cpu_chunk_rows(R);
    return (R + step - 1) / step;
}

/* [lo, hi) of [0, n): all of it for one thread, else this thread's
 * contiguous share of the team. */
static void share(int64_t n, int split, int32_t *lo, int32_t *hi) {
    const int64_t t = split ? omp_get_thread_num() : 0, nt = split ? omp_get_num_threads() : 1;
    *lo = (int32_t)(n * t / nt);
    *hi = (int32_t)(n * (t + 1) / nt);
}

/* A team barrier between phases when the team shares an item. */
#define PHASE_BARRIER(split)                                                                         \
    do {                                                                                             \
        if (split) {                                                                                 \
            _Pragma("omp barrier")                                                                   \
        }                                                                                            \
    } while (0)

void dm_cpu_chunk_pack(const dm_cpu_chunk *c, int32_t r_begin, int32_t r_end) {
    const dm_experts_args *a = c->a;
    const int32_t Hd = a->experts.hidden, S = a->slots;
    const dynmoe_dtype dt = a->experts.dtype;
    const int32_t *slots = a->plan.sorted_slots + c->r0;
    float *xd = c->xp + (int64_t)c->P * 8 * Hd;
    for (int32_t r = r_begin; r < r_end; r++) {
        const int panel = r < 8 * c->P;
        float *d = panel ? c->xp + (int64_t)(r / 8) * 8 * Hd + r % 8 : xd + (int64_t)(r - 8 * c->P) * Hd;
        const int64_t step = panel ? 8 : 1;
        if (r >= c->R) {
            for (int32_t k = 0; k < Hd; k++) d[step * k] = 0.0f;
            continue;
        }
        const int64_t x0 = (int64_t)(slots[r] / S) * Hd;
        for (int32_t k = 0; k < Hd; k++) d[step * k] = dm_load(a->x, dt, x0 + k);
    }
}

/* Item rows [r0, r0 + R) of expert e through the panel kernels k: packed
 * into `panels` (xp then ap), weights widened into wbuf. */
static void run_panels(const dm_experts_args *a, const dm_cpu_panel_kernels *k, int32_t e, int32_t r0, int32_t R,
                       float *panels, float *wbuf, int split) {
    const int32_t Hd = a->experts.hidden, In = a->experts.inter;
    const int32_t nd = R % 8 <= k->max_plain_rows ? R % 8 : 0;
    const size_t cap = dm_cpu_panel_capacity((size_t)a->plan.num_slots);
    const dm_cpu_chunk c = {a, e, r0, R, (R - nd + 7) / 8, nd, panels, panels + cap * (size_t)Hd};
    int32_t lo, hi;
    share(8 * c.P + nd, split, &lo, &hi);
    k->pack(&c, lo, hi);
    PHASE_BARRIER(split);
    const int32_t units = dm_cpu_gemm1_units(a->experts.act);
    share((In + units - 1) / units, split, &lo, &hi);
    k->gemm1(&c, lo, hi, wbuf);
    PHASE_BARRIER(split);
    share((Hd + DM_CPU_GEMM2_BLOCK - 1) / DM_CPU_GEMM2_BLOCK, split, &lo, &hi);
    k->gemm2(&c, lo, hi, wbuf);
    /* No barrier after GEMM 2: the next item writes other rows of rows_y, and
     * its pack writes xp, not the ap this GEMM reads; its GEMM 1, which
     * writes ap, comes after its pack's barrier. */
}

/* Item rows [r0, r0 + R) of expert e through the skinny kernels (AVX2, R < 8):
 * gather into rows_y, GEMM 1 into rows_h, row scale + b13 + activation in
 * place, GEMM 2 (+ b2) back into rows_y; wbuf (the thread's, DM_CPU_WBUF_ROWS
 * x max(H, I) floats) is the kernels' xbuf. */
static void run_skinny(const dm_experts_args *a, int32_t e, int32_t r0, int32_t R, float *wbuf, int split) {
    const dynmoe_experts *ex = &a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter, S = a->slots;
    const int32_t rows13 = (int32_t)dm_w13_rows(ex->act, In);
    const int gated = dm_act_gated(ex->act);
    const dynmoe_dtype dt = ex->dtype;
    float *Ye = (float *)a->rows_y + (int64_t)r0 * Hd, *He = (float *)a->rows_h + (int64_t)r0 * 2 * In;
    const dm_cpu_wmat w13 = dm_cpu_wmat_of(ex, 0, e), w2 = dm_cpu_wmat_of(ex, 1, e);
    const void *b2 = ex->b2 ? (const char *)ex->b2 + (size_t)e * Hd * dm_dtype_size(dt) : NULL;
    const int64_t b0 = (int64_t)e * rows13; /* this expert's b13 */
    int32_t lo, hi;
    share(R, split, &lo, &hi);
    for (int32_t r = lo; r < hi; r++) {
        const int64_t t = a->plan.sorted_slots[r0 + r] / S;
        for (int32_t h = 0; h < Hd; h++) Ye[(int64_t)r * Hd + h] = dm_load(a->x, dt, t * Hd + h);
    }
    PHASE_BARRIER(split);
    share((rows13 + SKINNY_COLS - 1) / SKINNY_COLS, split, &lo, &hi);
    dm_cpu_gemm_skinny_avx2(R, lo * SKINNY_COLS, hi * SKINNY_COLS < rows13 ? hi * SKINNY_COLS : rows13, Ye, Hd, &w13,
                            NULL, He, 2 * In, wbuf);
    PHASE_BARRIER(split);
    share(R, split, &lo, &hi);
    for (int32_t r = lo; r < hi; r++) {
        /* in place, ascending: unit i reads rows >= i (dm_gate_row, dm_up_row) and writes i */
        float *hr = He + (int64_t)r * 2 * In;
        const float sc = dm_cpu_row_scale(a, r0, R, r);
        for (int32_t i = 0; i < In; i++) {
            const int64_t g = dm_gate_row(ex->gate_up, In, i), u = dm_up_row(ex->gate_up, In, i);
            hr[i] = gated ? dm_cpu_unit(ex, sc, hr[g], dm_cpu_bias(ex->b13, dt, b0 + g), hr[u],
                                        dm_cpu_bias(ex->b13, dt, b0 + u))
                          : dm_cpu_unit(ex, sc, hr[i], dm_cpu_bias(ex->b13, dt, b0 + i), 0.0f, 0.0f);
        }
    }
    PHASE_BARRIER(split);
    share((Hd + SKINNY_COLS - 1) / SKINNY_COLS, split, &lo, &hi);
    dm_cpu_gemm_skinny_avx2(R, lo * SKINNY_COLS, hi * SKINNY_COLS < Hd ? hi * SKINNY_COLS : Hd, He, 2 * In, &w2, b2,
                            Ye, Hd, wbuf);
    /* No barrier: the next item touches other rows (see run_panels). */
}

/* Work item i: chunk i - first[ai] of active expert ai, where first[ai] <= i < first[ai + 1]. */
static void run_item(const dm_experts_args *a, dm_cpu_isa isa, const int32_t *first, int32_t num_active, int32_t i,
                     float *panels, float *wbuf, int split) {
    int32_t lo = 0, hi = num_active; /* first[lo] <= i < first[hi] */
    while (hi - lo > 1) {
        const int32_t mid = (lo + hi) / 2;
        if (first[mid] <= i) lo = mid;
        else hi = mid;
    }
    const int32_t e = a->plan.active_experts[lo], off = a->plan.expert_offsets[e];
    const int32_t R = a->plan.expert_offsets[e + 1] - off, step = dm_cpu_chunk_rows(R);
    const int32_t c0 = (i - first[lo]) * step, rows = R - c0 < step ? R - c0 : step;
    if (isa >= DM_CPU_ISA_AVX2 && R < DM_PANEL_MIN_ROWS) {
        run_skinny(a, e, off + c0, rows, wbuf, split);
        return;
    }
    const dm_cpu_panel_kernels *k = isa == DM_CPU_ISA_SCALAR ? &dm_cpu_panels_scalar
                                    : isa == DM_CPU_ISA_AVX512 && dm_cpu_panels_avx512_fit(&a->experts)
                                        ? &dm_cpu_panels_avx512
                                        : &dm_cpu_panels_avx2;
    run_panels(a, k, e, off + c0, rows, panels, wbuf, split);
}

/* What the team of one call shares. */
typedef struct experts_job {
    const dm_experts_args *a;
    dm_cpu_isa isa;
    const int32_t *first; /* [num_active + 1] first item of each active expert */
    int32_t num_active, items;
    float *slices; /* one slice of `slice` floats per thread */
    size_t slice, cap;
    int split;    /* fewer items than 2 per thread: each one over the whole team */
    int32_t next; /* the next item a thread takes (whole items) */
} experts_job;

static void experts_body(void *arg) {
    experts_job *j = (experts_job *)arg;
    const dm_experts_args *a = j->a;
    float *own = j->slices + (size_t)omp_get_thread_num() * j->slice;
    float *wbuf = own + j->cap * (size_t)(a->experts.hidden + a->experts.inter);
    if (j->split) {
        /* packed into the first slice, shared by the team */
        for (int32_t i = 0; i < j->items; i++) run_item(a, j->isa, j->first, j->num_active, i, j->slices, wbuf, 1);
    } else {
        /* Dynamic schedule by hand: libgomp's allocates a work share when
         * the loop runs outside a parallel region (one thread). */
        for (int32_t i; (i = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->items;)
            run_item(a, j->isa, j->first, j->num_active, i, own, wbuf, 0);
    }
}

dynmoe_status dm_cpu_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream) {
    (void)ctx;
    (void)stream;
    dm_cpu_isa isa;
    dynmoe_status st = dm_cpu_isa_current(&isa);
    if (st != DYNMOE_OK) return st;
    /* The onednn path hands the experts with enough rows of packed experts
     * to packed.c; the rest (and unpacked experts) take dynmoe's kernels. */
    const int packed = isa == DM_CPU_ISA_ONEDNN && a->experts.packed != NULL;
    const int32_t min_rows = packed ? dynmoe_packed_experts_min_rows(a->experts.packed) : 0;
    if (isa == DM_CPU_ISA_ONEDNN) isa = dm_cpu_isa_kernels();
    const dynmoe_plan *p = &a->plan;
    const int32_t num_active = *p->num_active;
    const int32_t Hd = a->experts.hidden, In = a->experts.inter;
    /* The scratch: the item table, then one slice of packed rows per core. */
    int32_t *first = (int32_t *)a->scratch;
    const size_t table = dm_cpu_item_table_floats((size_t)p->num_experts);
    const size_t slice = dm_cpu_scratch_floats((size_t)Hd, (size_t)In, (size_t)p->num_slots);
    const size_t bytes = a->scratch_bytes / sizeof(float) > table ? a->scratch_bytes / sizeof(float) - table : 0;
    int threads = dm_cpu_threads();
    if ((size_t)threads > bytes / slice) threads = (int)(bytes / slice);
    if (threads < 1) return dm_fail(DYNMOE_ERR_INTERNAL, "dynmoe: the workspace's CPU scratch holds no slice");
    float *slices = (float *)a->scratch + table;
    const size_t cap = dm_cpu_panel_capacity((size_t)p->num_slots);
    if (packed) {
        /* its area follows every core's slice (workspace.c) */
        st = dm_cpu_packed_experts(a, slices + slice * (size_t)dm_cpu_scratch_slices(), threads);
        if (st != DYNMOE_OK) return st;
    }

    int32_t items = 0;
    for (int32_t ai = 0; ai < num_active; ai++) {
        const int32_t e = p->active_experts[ai], R = p->expert_offsets[e + 1] - p->expert_offsets[e];
        first[ai] = items;
        if (!(packed && R >= min_rows)) items += chunks_of(R); /* else packed.c ran it */
    }
    first[num_active] = items;
    if (items == 0) return DYNMOE_OK; /* nothing routed to a real expert */
    experts_job j = {a, isa, first, num_active, items, slices, slice, cap, items < 2 * threads, 0};
    dm_cpu_parallel(threads, experts_body, &j);
    return DYNMOE_OK;
}
