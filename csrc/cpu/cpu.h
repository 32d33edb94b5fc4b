/* cpu.h — the CPU backend's stage functions (one file per stage) and the
 * kernels of its expert FFNs (experts.c schedules them). */
#ifndef DYNMOE_CPU_H
#define DYNMOE_CPU_H

#include <math.h>

#include <omp.h>

#include "../act_rules.h"
#include "../backend.h"
#include "../quant_rules.h"

dynmoe_status dm_cpu_route(dynmoe_ctx *ctx, const dm_route_args *a, void *stream);
dynmoe_status dm_cpu_route_tasks(dynmoe_ctx *ctx, const dm_route_tasks_args *a, void *stream);
dynmoe_status dm_cpu_plan(dynmoe_ctx *ctx, const dm_plan_args *a, void *stream);
dynmoe_status dm_cpu_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);
dynmoe_status dm_cpu_combine(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);

/* Threads of every parallel region of the CPU backend: OpenMP's count capped
 * by the scratch slices a workspace holds (one per core). One team size for
 * every stage, because libgomp reuses its last team only at the same size (a
 * new size allocates one). */
static inline int dm_cpu_threads(void) {
    const int t = omp_get_max_threads(), cap = dm_cpu_scratch_slices();
    return t < cap ? t : cap;
}

/* Runs body(arg) on `threads` threads: one OpenMP parallel region, or none at
 * all for one thread (libgomp frees a team of one after each region and
 * allocates it again at the next). Bodies share work with orphaned `omp for`
 * loops, which also run on one thread outside a region. */
void dm_cpu_parallel(int threads, void (*body)(void *arg), void *arg);

/* ---- instruction paths (isa.c) ---- */

/* Ordered: a path may stand in for any lower one. ONEDNN runs packed experts
 * on oneDNN matmuls and everything else on the best of the lower paths. */
typedef enum dm_cpu_isa {
    DM_CPU_ISA_SCALAR,
    DM_CPU_ISA_AVX2,
    DM_CPU_ISA_AVX512, /* AVX2's kernels, with ffn_avx512.c's panels where they apply */
    DM_CPU_ISA_ONEDNN,
    DM_CPU_ISA_COUNT
} dm_cpu_isa;

/* The path for `request` (the value of DYNMOE_CPU_ISA; NULL or "" = none) on
 * a CPU whose best path is `best` and whose build can run oneDNN
 * (`have_onednn`): the requested path, or `best` when that is lower; "onednn"
 * is granted whenever have_onednn (oneDNN picks this CPU's kernels itself);
 * -1 when `request` names no path. Pure. */
int dm_cpu_isa_select(const char *request, dm_cpu_isa best, int have_onednn);
/* The best path this CPU runs (CPUID): ONEDNN when the build has oneDNN and
 * the CPU has usable AMX-BF16, else the best own-kernel path. */
dm_cpu_isa dm_cpu_isa_best(void);
/* The best path of dynmoe's own kernels (never ONEDNN): what ONEDNN runs
 * for the work it does not hand to oneDNN. */
dm_cpu_isa dm_cpu_isa_kernels(void);
const char *dm_cpu_isa_name(dm_cpu_isa isa);
/* The path of this call: DYNMOE_CPU_ISA read now. DYNMOE_ERR_INVALID_ARGUMENT
 * (with a message) when it names no path. */
dynmoe_status dm_cpu_isa_current(dm_cpu_isa *isa);

/* ---- expert FFN kernels ----
 * Every kernel computes each output element by one dot product whose order
 * over k is fixed by the element alone (not by its block, tile or thread),
 * so experts.c may cut the work anywhere along rows or columns and results
 * stay bitwise the same for any thread count. */

/* One work item of the panel kernels: plan rows [r0, r0 + R) of expert e,
 * R <= DM_CPU_PANEL_ROWS. Rows 0..8P-1 are packed k-major in P 8-row panels
 *   xp[p][k][j] = x[token of row 8p+j][k]    (rows past R are 0)
 *   ap[p][i][j] = activated unit i of row 8p+j (dm_cpu_unit)
 * and the nd rows after them are plain rows (xp + 8P*H, ap + 8P*I). */
typedef struct dm_cpu_chunk {
    const dm_experts_args *a;
    int32_t e, r0, R; /* expert, first plan row, rows */
    int32_t P, nd;    /* 8-row panels, plain rows after them */
    float *xp, *ap;   /* [8P + nd, H] and [8P + nd, I] floats, packed as above */
} dm_cpu_chunk;

/* Rows of one chunk of an expert with R rows (equal chunks, multiples of 16,
 * at most DM_CPU_PANEL_ROWS), so that a weight is read once per chunk. */
int32_t dm_cpu_chunk_rows(int32_t R);
/* Packs rows [r_begin, r_end) of 0..8P+nd-1 of the chunk's x into xp (plain C, every path). */
void dm_cpu_chunk_pack(const dm_cpu_chunk *c, int32_t r_begin, int32_t r_end);

/* GEMM 1 + activation over blocks [b_begin, b_end) of hidden units
 * (dm_cpu_gemm1_units each: gate rows with their up rows, or single rows
 * for non-gated activations) into ap; GEMM 2 over blocks of
 * DM_CPU_GEMM2_BLOCK rows of W2 into rows_y. wbuf: DM_CPU_WBUF_ROWS x max(H, I)
 * floats of this thread, for bf16/f16 or quantized weights widened a block
 * at a time. */
#define DM_CPU_GEMM1_BLOCK 6
#define DM_CPU_GEMM2_BLOCK 12
#define DM_CPU_WBUF_ROWS 12
typedef struct dm_cpu_panel_kernels {
    void (*gemm1)(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf);
    void (*gemm2)(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf);
    int32_t max_plain_rows; /* rows past the last full panel taken as plain rows (nd <= this) */
    /* packs rows [r_begin, r_end) of x the way gemm1 reads them (dm_cpu_chunk_pack, or
     * ffn_avx512.c's k-pair panels) */
    void (*pack)(const dm_cpu_chunk *c, int32_t r_begin, int32_t r_end);
} dm_cpu_panel_kernels;
extern const dm_cpu_panel_kernels dm_cpu_panels_avx2;   /* ffn_panels.c (NULL gemms off x86) */
extern const dm_cpu_panel_kernels dm_cpu_panels_scalar; /* ffn_scalar.c */
/* ffn_avx512.c: AVX-512 F FMAs on panels of k pairs, for experts with even H and I
 * (dm_cpu_panels_avx512_fit); NULL gemms off x86. */
extern const dm_cpu_panel_kernels dm_cpu_panels_avx512;
static inline int dm_cpu_panels_avx512_fit(const dynmoe_experts *ex) {
    return dm_cpu_panels_avx512.gemm1 != NULL && ex->hidden % 2 == 0 && ex->inter % 2 == 0;
}

/* Hidden units of one GEMM 1 block: a block is 12 weight rows, 6 gate rows
 * with their 6 up rows, or 12 rows of a non-gated activation. */
static inline int32_t dm_cpu_gemm1_units(dynmoe_act act) {
    return dm_act_gated(act) ? DM_CPU_GEMM1_BLOCK : 2 * DM_CPU_GEMM1_BLOCK;
}

/* ---- one expert's weight matrix [N, K] as stored (dynmoe_weight_format) ---- */
typedef struct dm_cpu_wmat {
    const char *w;            /* row n at w + n * row_bytes */
    const void *scale, *zero; /* this expert's first scale / zero point (quantized) */
    dynmoe_weight_format fmt;
    dynmoe_dtype dt; /* PLAIN: the values' dtype */
    int32_t K, group;
    int64_t row_bytes, groups; /* dm_quant_row_bytes, dm_quant_groups */
} dm_cpu_wmat;

/* Expert e's w13 (which = 0: [rows13, H]) or w2 (which = 1: [H, I]). */
static inline dm_cpu_wmat dm_cpu_wmat_of(const dynmoe_experts *ex, int which, int32_t e) {
    const int64_t N = which ? ex->hidden : dm_w13_rows(ex->act, ex->inter);
    const int32_t K = which ? ex->inter : ex->hidden;
    const dynmoe_weight_format f = ex->weight_format;
    const int32_t g = f == DYNMOE_WEIGHTS_INT4 ? ex->group_size : 0;
    dm_cpu_wmat m = {NULL, NULL, NULL, f, ex->dtype, K, g, dm_quant_row_bytes(f, ex->dtype, K),
                     dm_quant_groups(f, K, g)};
    m.w = (const char *)(which ? ex->w2 : ex->w13) + (size_t)e * (size_t)N * (size_t)m.row_bytes;
    const size_t ssz = f == DYNMOE_WEIGHTS_FP8_BLOCK ? 4 : f == DYNMOE_WEIGHTS_INT4 ? 2 : 1;
    const void *scale = which ? ex->w2_scale : ex->w13_scale, *zero = which ? ex->w2_zero : ex->w13_zero;
    if (f != DYNMOE_WEIGHTS_PLAIN)
        m.scale = (const char *)scale + (size_t)e * (size_t)dm_quant_scales_per_expert(f, N, K, g) * ssz;
    if (f == DYNMOE_WEIGHTS_INT4 && zero) m.zero = (const char *)zero + (size_t)e * (size_t)N * (size_t)m.groups;
    return m;
}

/* Row n of m as K floats: the row itself for PLAIN f32, else widened or
 * dequantized into buf (plain C, every path; quant_rules.h's rules with the
 * scale hoisted per group). */
const float *dm_cpu_weight_row(const dm_cpu_wmat *m, int64_t n, float *buf);

/* ---- the per-unit epilogues (act_rules.h), every path ---- */

/* Entry i of an optional bias b (b13 or b2, experts.dtype) or 0. */
static inline float dm_cpu_bias(const void *b, dynmoe_dtype dt, int64_t i) { return b ? dm_load(b, dt, i) : 0.0f; }

/* GEMM 1's factor for row r of a chunk: under router.weight_on_input the
 * expert sees w * x, and GEMM 1 is linear (W13 (w x) = w (W13 x)), so the
 * accumulator is scaled by the slot weight before b13 is added; else 1. Rows
 * past R (panel padding) get 0. */
static inline float dm_cpu_row_scale(const dm_experts_args *a, int32_t r0, int32_t R, int32_t r) {
    if (r >= R) return 0.0f;
    return a->router.weight_on_input ? a->weights[a->plan.sorted_slots[r0 + r]] : 1.0f;
}

/* Hidden unit j of a row whose GEMM 1 accumulators are g (its gate row) and
 * u (its up row; unused when not gated): h = s * acc + b13, then dm_activate. */
static inline float dm_cpu_unit(const dynmoe_experts *ex, float s, float g, float bg, float u, float bu) {
    return dm_activate(ex->act, ex->alpha, ex->limit, s * g + bg, s * u + bu);
}

/* AVX2 path, few rows (gemm_skinny.c): columns [n_begin, n_end) of
 * C[M, N] = A[M, K] . W[N, K]^T + bias[N] (bias of W->dt or NULL), K =
 * W->K; lda/ldc in floats. 16-bit and quantized weights are widened or
 * decoded in registers (no weight buffer); xbuf: the thread's 2 * K floats,
 * where 4-bit weights get one activation row permuted per call. */
void dm_cpu_gemm_skinny_avx2(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                             const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc, float *xbuf);

#endif
