/* cpu/packed.c — the experts of a call that run on packed weights (the
 * "onednn" path, experts.packed set): every active expert with at least
 * dynmoe_packed_experts_min_rows rows, cut into the chunks of experts.c
 * (dm_cpu_chunk_rows), one after another. Per chunk of R rows on a tile of
 * M >= R rows:
 *   gather    src[r] = x[token of row r] (compute dtype), rows >= R zero
 *   GEMM 1    h = src . W13_e^T            (oneDNN, its own threads)
 *   epilogue  act[r][i] = dm_cpu_unit(s_r, h gate/up rows, b13)  (act_rules.h)
 *   GEMM 2    y = act . W2_e^T             (oneDNN)
 *   store     rows_y[r0 + r] = y[r] + b2_e, r < R
 * Two schedules:
 *  - by chunk (at least 2 chunks per thread): each thread takes whole
 *    chunks, one at a time from a shared counter, and runs all five steps
 *    on its own area and oneDNN objects; oneDNN runs each matmul on the
 *    calling thread alone (it does not nest). No barrier between chunks:
 *    on the AMX Xeon (2 cores) this cut the OpenMP waits between the steps.
 *  - by row (fewer chunks): the chunks one after another, each matmul on
 *    all of oneDNN's threads, the gather, epilogue and store split by rows
 *    in dynmoe's regions between them.
 * Either way a chunk's result does not depend on the thread that ran it.
 * The combine stays the common one. Everything lives in the packed part of
 * the CPU scratch: nothing here allocates (what oneDNN itself allocates,
 * test_alloc reports). */
#include <omp.h>
#include <stdatomic.h>
#include <string.h>

#include "../hd.h"
#include "cpu.h"
#include "onednn.h"
#include "simd.h"

/* The packed area of one call: four row buffers of the largest tile, then
 * oneDNN's scratchpad, each rounded to 64 floats. */
typedef struct packed_area {
    void *src;  /* [M, H] compute dtype */
    float *h;   /* [M, rows13] */
    void *act;  /* [M, I] compute dtype */
    float *y;   /* [M, H] */
    void *pad;
} packed_area;

static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

/* Float offsets of the buffers in the area, for tiles of up to 256 rows
 * (a tile oneDNN left out rounds a chunk up to a larger one). */
typedef struct area_offsets {
    size_t src, h, act, y, pad, total;
} area_offsets;

static area_offsets offsets_of(const dynmoe_experts *x) {
    const size_t M = DM_CPU_PANEL_ROWS, H = (size_t)x->hidden, I = (size_t)x->inter;
    const size_t rows13 = (size_t)dm_w13_rows(x->act, x->inter);
    area_offsets o;
    o.src = 0;
    o.h = o.src + round64(M * H);
    o.act = o.h + round64(M * rows13);
    o.y = o.act + round64(M * I);
    o.pad = o.y + round64(M * H);
    o.total = o.pad + round64(dm_packed_scratchpad_bytes(x->packed) / sizeof(float) + 1);
    return o;
}

static packed_area area_of(const dynmoe_experts *x, float *base) {
    const area_offsets o = offsets_of(x);
    const packed_area ar = {base + o.src, base + o.h, base + o.act, base + o.y, base + o.pad};
    return ar;
}

/* One area per scratch slice (per core): the by-chunk schedule gives each
 * thread its own. */
size_t dm_packed_scratch_floats(const dynmoe_experts *x, size_t rows) {
    /* No expert of a call with fewer slots reaches the packed path. */
    if (x == NULL || x->packed == NULL || rows < (size_t)dynmoe_packed_experts_min_rows(x->packed)) return 0;
    return offsets_of(x).total * (size_t)dm_cpu_scratch_slices();
}

/* One chunk: rows [r0, r0 + R) of expert e, on a tile of M >= R rows. */
typedef struct chunk {
    int32_t e, r0, R, M, tile;
} chunk;

/* ---- the steps around the matmuls, on rows [lo, hi) of a chunk ---- */

static void gather_rows(const dm_experts_args *a, const packed_area *ar, dynmoe_dtype cdt, const chunk *c,
                        int32_t lo, int32_t hi) {
    const int32_t Hd = a->experts.hidden, S = a->slots;
    const dynmoe_dtype dt = a->experts.dtype;
    const size_t esz = dm_dtype_size(cdt);
    for (int32_t r = lo; r < hi; r++) {
        char *d = (char *)ar->src + (size_t)r * Hd * esz;
        if (r >= c->R) {
            memset(d, 0, (size_t)Hd * esz);
            continue;
        }
        const int64_t x0 = (int64_t)(a->plan.sorted_slots[c->r0 + r] / S) * Hd;
        if (cdt == dt) {
            memcpy(d, (const char *)a->x + (size_t)x0 * esz, (size_t)Hd * esz);
        } else {
            float *df = (float *)d;
            for (int32_t k = 0; k < Hd; k++) df[k] = dm_load(a->x, dt, x0 + k);
        }
    }
}

#ifdef DM_CPU_X86
/* Eight b13 entries from i (zeros without a bias). */
DM_AVX2 static inline __m256 bias8(const void *b, dynmoe_dtype dt, int64_t i) {
    if (b == NULL) return _mm256_setzero_ps();
    return dt == DYNMOE_F32 ? dm_load8_f32(b, i) : dt == DYNMOE_BF16 ? dm_load8_bf16(b, i) : dm_load8_f16(b, i);
}

/* Lanes 0, 2, .., 14 and 1, 3, .., 15 of the 16 floats lo:hi. */
DM_AVX2 static inline void deinterleave8(__m256 lo, __m256 hi, __m256 *even, __m256 *odd) {
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xd8));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xdd)), 0xd8));
}

/* Eight fp32 as bf16, rounded to nearest even, NaN kept quiet (hd.h dm_f32_to_bf16). */
DM_AVX2 static inline void store8_bf16(uint16_t *d, __m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
    _mm_storeu_si128((__m128i *)d, _mm256_castsi256_si128(p));
}

/* Units [0, In8) of one row (In8 a multiple of 8), 8 at a time: the
 * gate and up values of 8 consecutive units, h = s * acc + b13, then SiLU
 * / SwiGLU in vector code (dm_silu8) or dm_activate lane by lane. */
DM_AVX2 static void epilogue_row8(const dynmoe_experts *ex, float s, const float *h, int64_t b0, void *act,
                                  dynmoe_dtype cdt, int64_t o, int32_t In8) {
    const int gated = dm_act_gated(ex->act), inter = ex->gate_up == DYNMOE_GATE_UP_INTERLEAVED;
    const dynmoe_dtype dt = ex->dtype;
    const __m256 sv = _mm256_set1_ps(s);
    for (int32_t i = 0; i < In8; i += 8) {
        __m256 g, u = _mm256_setzero_ps(), bg, bu = _mm256_setzero_ps();
        if (!gated) {
            g = _mm256_loadu_ps(h + i), bg = bias8(ex->b13, dt, b0 + i);
        } else if (inter) {
            deinterleave8(_mm256_loadu_ps(h + 2 * i), _mm256_loadu_ps(h + 2 * i + 8), &g, &u);
            deinterleave8(bias8(ex->b13, dt, b0 + 2 * i), bias8(ex->b13, dt, b0 + 2 * i + 8), &bg, &bu);
        } else {
            g = _mm256_loadu_ps(h + i), u = _mm256_loadu_ps(h + ex->inter + i);
            bg = bias8(ex->b13, dt, b0 + i), bu = bias8(ex->b13, dt, b0 + ex->inter + i);
        }
        g = _mm256_fmadd_ps(g, sv, bg);
        u = _mm256_fmadd_ps(u, sv, bu);
        __m256 v;
        if (ex->act == DYNMOE_ACT_SWIGLU) {
            v = _mm256_mul_ps(dm_silu8(g), u);
        } else if (ex->act == DYNMOE_ACT_SILU) {
            v = dm_silu8(g);
        } else {
            float gv[8], uv[8];
            _mm256_storeu_ps(gv, g), _mm256_storeu_ps(uv, u);
            for (int j = 0; j < 8; j++) gv[j] = dm_activate(ex->act, ex->alpha, ex->limit, gv[j], uv[j]);
            v = _mm256_loadu_ps(gv);
        }
        if (cdt == DYNMOE_BF16)
            store8_bf16((uint16_t *)act + o + i, v);
        else
            _mm256_storeu_ps((float *)act + o + i, v);
    }
}

/* dst[k] = y[k] + b[b0 + k] for k < H8 (a multiple of 8). */
DM_AVX2 static void add_bias8(float *dst, const float *y, const void *b, dynmoe_dtype dt, int64_t b0, int32_t H8) {
    for (int32_t k = 0; k < H8; k += 8)
        _mm256_storeu_ps(dst + k, _mm256_add_ps(_mm256_loadu_ps(y + k), bias8(b, dt, b0 + k)));
}
#endif

/* Whether the 8-wide epilogue and store may run (an AVX2 CPU: the onednn
 * path also runs where dynmoe's best kernels are scalar). */
static int vector_ok(void) {
#ifdef DM_CPU_X86
    return dm_cpu_isa_kernels() >= DM_CPU_ISA_AVX2;
#else
    return 0;
#endif
}

static void epilogue_rows(const dm_experts_args *a, const packed_area *ar, dynmoe_dtype cdt, const chunk *c,
                          int32_t lo, int32_t hi, int vec) {
    const dynmoe_experts *ex = &a->experts;
    const int32_t In = ex->inter, In8 = vec ? In / 8 * 8 : 0;
    const int64_t rows13 = dm_w13_rows(ex->act, In), b0 = (int64_t)c->e * rows13;
    const int gated = dm_act_gated(ex->act);
    const dynmoe_dtype dt = ex->dtype;
    for (int32_t r = lo; r < hi; r++) {
        const float *h = ar->h + (size_t)r * rows13;
        const int64_t o = (int64_t)r * In;
        if (r >= c->R) {
            memset((char *)ar->act + (size_t)o * dm_dtype_size(cdt), 0, (size_t)In * dm_dtype_size(cdt));
            continue;
        }
        const float s = dm_cpu_row_scale(a, c->r0, c->R, r);
#ifdef DM_CPU_X86
        if (In8 > 0) epilogue_row8(ex, s, h, b0, ar->act, cdt, o, In8);
#endif
        for (int32_t i = In8; i < In; i++) {
            const int64_t g = gated ? dm_gate_row(ex->gate_up, In, i) : i;
            const int64_t u = gated ? dm_up_row(ex->gate_up, In, i) : i;
            const float v = gated ? dm_cpu_unit(ex, s, h[g], dm_cpu_bias(ex->b13, dt, b0 + g), h[u],
                                                dm_cpu_bias(ex->b13, dt, b0 + u))
                                  : dm_cpu_unit(ex, s, h[i], dm_cpu_bias(ex->b13, dt, b0 + i), 0.0f, 0.0f);
            dm_store(ar->act, cdt, o + i, v);
        }
    }
}

static void store_rows(const dm_experts_args *a, const packed_area *ar, const chunk *c, int32_t lo, int32_t hi,
                       int vec) {
    const int32_t Hd = a->experts.hidden, H8 = vec ? Hd / 8 * 8 : 0;
    const dynmoe_dtype dt = a->experts.dtype;
    const void *b2 = a->experts.b2;
    const int64_t b0 = (int64_t)c->e * Hd;
    if (hi > c->R) hi = c->R;
    for (int32_t r = lo; r < hi; r++) {
        const float *y = ar->y + (size_t)r * Hd;
        float *out = (float *)a->rows_y + (size_t)(c->r0 + r) * Hd;
        if (b2 == NULL) {
            memcpy(out, y, (size_t)Hd * sizeof(float));
            continue;
        }
#ifdef DM_CPU_X86
        if (H8 > 0) add_bias8(out, y, b2, dt, b0, H8);
#endif
        for (int32_t k = H8; k < Hd; k++) out[k] = y[k] + dm_load(b2, dt, b0 + k);
    }
}

/* ---- the two schedules ---- */

/* The packed chunks of a call in order: active experts with at least
 * dynmoe_packed_experts_min_rows rows, each cut into dm_cpu_chunk_rows pieces. */
typedef struct chunk_cursor {
    int32_t ai, c0;
    int64_t index; /* of the chunk at (ai, c0) in that order */
} chunk_cursor;

/* Moves c to the first packed chunk at or after (ai, c0) and fills *out; 0 past the last. */
static int chunk_here(const dm_experts_args *a, chunk_cursor *c, chunk *out) {
    const dynmoe_plan *p = &a->plan;
    const int32_t min_rows = dynmoe_packed_experts_min_rows(a->experts.packed);
    for (; c->ai < *p->num_active; c->ai++, c->c0 = 0) {
        const int32_t e = p->active_experts[c->ai], off = p->expert_offsets[e];
        const int32_t R = p->expert_offsets[e + 1] - off;
        if (R < min_rows || c->c0 >= R) continue; /* experts.c runs the short ones */
        const int32_t step = dm_cpu_chunk_rows(R);
        out->e = e, out->r0 = off + c->c0, out->R = R - c->c0 < step ? R - c->c0 : step;
        return 1;
    }
    return 0;
}

static void chunk_next(const dm_experts_args *a, chunk_cursor *c) {
    const dynmoe_plan *p = &a->plan;
    const int32_t e = p->active_experts[c->ai];
    c->c0 += dm_cpu_chunk_rows(p->expert_offsets[e + 1] - p->expert_offsets[e]);
    c->index++;
}

enum { STEP_GATHER, STEP_EPILOGUE, STEP_STORE };

typedef struct packed_job {
    const dm_experts_args *a;
    const dynmoe_packed_experts *pk;
    float *area;     /* thread t's area at area + t * area_floats */
    size_t area_floats;
    dynmoe_dtype cdt;
    int vec;
    _Atomic long long next; /* by chunk: the next chunk index to take */
    _Atomic int failed;     /* the first oneDNN status != 0, and where */
    int fail_gemm, fail_e;
    chunk c;                /* by row: the chunk of the team */
    int step;               /* by row: the team's step */
} packed_job;

/* Step `step` of chunk c on its rows [lo, hi), in area ar. */
static void run_step(const packed_job *j, const packed_area *ar, const chunk *c, int step, int32_t lo, int32_t hi) {
    if (step == STEP_GATHER) gather_rows(j->a, ar, j->cdt, c, lo, hi);
    else if (step == STEP_EPILOGUE) epilogue_rows(j->a, ar, j->cdt, c, lo, hi, j->vec);
    else store_rows(j->a, ar, c, lo, hi, j->vec);
}

/* GEMM `which` of chunk c on `thread`'s oneDNN objects; 0 after a failure,
 * which is recorded (the first one) for the calling thread to report. */
static int run_gemm(packed_job *j, int thread, int which, const chunk *c, const packed_area *ar) {
    const int s = which == 0 ? dm_packed_gemm(j->pk, thread, 0, c->e, c->tile, ar->src, ar->h, ar->pad)
                             : dm_packed_gemm(j->pk, thread, 1, c->e, c->tile, ar->act, ar->y, ar->pad);
    int none = 0;
    if (s != 0 && atomic_compare_exchange_strong(&j->failed, &none, s)) j->fail_gemm = which + 1, j->fail_e = c->e;
    return s == 0;
}

static void set_tile(const packed_job *j, chunk *c) {
    c->tile = dm_packed_tile(j->pk, c->R);
    c->M = (c->tile + 1) * DM_PACKED_TILE;
}

/* All five steps of chunk c on one thread's area and oneDNN objects. */
static void run_chunk(packed_job *j, int thread, chunk *c) {
    const packed_area ar = area_of(&j->a->experts, j->area + (size_t)thread * j->area_floats);
    set_tile(j, c);
    run_step(j, &ar, c, STEP_GATHER, 0, c->M);
    if (!run_gemm(j, thread, 0, c, &ar)) return;
    run_step(j, &ar, c, STEP_EPILOGUE, 0, c->M);
    if (!run_gemm(j, thread, 1, c, &ar)) return;
    run_step(j, &ar, c, STEP_STORE, 0, c->M);
}

static void by_chunk_body(void *arg) {
    packed_job *j = (packed_job *)arg;
    const int thread = omp_get_thread_num();
    chunk_cursor cur = {0, 0, 0};
    chunk c;
    for (;;) {
        const long long want = atomic_fetch_add(&j->next, 1);
        int more = chunk_here(j->a, &cur, &c);
        while (more && cur.index < want) {
            chunk_next(j->a, &cur);
            more = chunk_here(j->a, &cur, &c);
        }
        if (!more || atomic_load(&j->failed)) return;
        run_chunk(j, thread, &c);
    }
}

/* The team's step on this thread's rows of the chunk, in one block (what
 * schedule(static) gives), in area 0. */
static void team_body(void *arg) {
    const packed_job *j = (const packed_job *)arg;
    const packed_area ar = area_of(&j->a->experts, j->area);
    const int32_t t = omp_get_thread_num(), nt = omp_get_num_threads(), M = j->c.M, per = (M + nt - 1) / nt;
    const int32_t lo = t * per < M ? t * per : M, hi = lo + per < M ? lo + per : M;
    run_step(j, &ar, &j->c, j->step, lo, hi);
}

static void team_step(packed_job *j, int threads, int step) {
    j->step = step;
    dm_cpu_parallel(threads, team_body, j);
}

static void by_row(packed_job *j, int threads) {
    const packed_area ar = area_of(&j->a->experts, j->area);
    chunk_cursor cur = {0, 0, 0};
    for (; chunk_here(j->a, &cur, &j->c); chunk_next(j->a, &cur)) {
        set_tile(j, &j->c);
        team_step(j, threads, STEP_GATHER);
        if (!run_gemm(j, 0, 0, &j->c, &ar)) return;
        team_step(j, threads, STEP_EPILOGUE);
        if (!run_gemm(j, 0, 1, &j->c, &ar)) return;
        team_step(j, threads, STEP_STORE);
    }
}

dynmoe_status dm_cpu_packed_experts(const dm_experts_args *a, float *area, int threads) {
    packed_job j;
    memset(&j, 0, sizeof j);
    j.a = a, j.pk = a->experts.packed, j.area = area, j.area_floats = offsets_of(&a->experts).total;
    j.cdt = dm_packed_compute_dtype(j.pk), j.vec = vector_ok();
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, 0);
    chunk_cursor cur = {0, 0, 0};
    chunk c;
    while (chunk_here(a, &cur, &c)) chunk_next(a, &cur); /* cur.index: the number of chunks */
    /* by chunk needs a thread's objects and area for every thread of the region */
    const int team = threads < dm_packed_threads(j.pk) ? threads : dm_packed_threads(j.pk);
    if (team > 1 && cur.index >= 2 * (int64_t)team)
        dm_cpu_parallel(team, by_chunk_body, &j);
    else
        by_row(&j, threads);
    const int failed = atomic_load(&j.failed);
    if (failed != 0)
        return dm_fail(DYNMOE_ERR_INTERNAL, "dynmoe: oneDNN matmul (GEMM %d, expert %d) failed (dnnl_status %d)",
                       j.fail_gemm, j.fail_e, failed);
    return DYNMOE_OK;
}
