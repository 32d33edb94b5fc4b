/* cpu.h — the CPU backend's stage functions (one file per stage) and the
 * kernels of its expert FFNs (experts.c schedules them). */
#ifndef DYNMOE_CPU_H
#define DYNMOE_CPU_H

#include <math.h>

#include <omp.h>

#include "../backend.h"

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

typedef enum dm_cpu_isa { DM_CPU_ISA_SCALAR, DM_CPU_ISA_AVX2, DM_CPU_ISA_COUNT } dm_cpu_isa;

/* The path for `request` (the value of DYNMOE_CPU_ISA; NULL or "" = none) on
 * a CPU whose best path is `best`: the requested path, or `best` when that is
 * lower; -1 when `request` names no path. Pure. */
int dm_cpu_isa_select(const char *request, dm_cpu_isa best);
/* The best path this CPU runs (CPUID). */
dm_cpu_isa dm_cpu_isa_best(void);
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
 *   ap[p][i][j] = act(gate_i . xp) * (up_i . xp)
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

/* GEMM 1 + activation over blocks [b_begin, b_end) of DM_CPU_GEMM1_BLOCK
 * hidden units (gate rows with their up rows) into ap; GEMM 2 over blocks of
 * DM_CPU_GEMM2_BLOCK rows of W2 into rows_y. wbuf: DM_CPU_WBUF_ROWS x max(H, I)
 * floats of this thread, for bf16/f16 weights widened a block at a time. */
#define DM_CPU_GEMM1_BLOCK 6
#define DM_CPU_GEMM2_BLOCK 12
#define DM_CPU_WBUF_ROWS 12
typedef struct dm_cpu_panel_kernels {
    void (*gemm1)(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf);
    void (*gemm2)(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf);
    int32_t max_plain_rows; /* rows past the last full panel taken as plain rows (nd <= this) */
} dm_cpu_panel_kernels;
extern const dm_cpu_panel_kernels dm_cpu_panels_avx2;   /* ffn_panels.c (NULL gemms off x86) */
extern const dm_cpu_panel_kernels dm_cpu_panels_scalar; /* ffn_scalar.c */

/* AVX2 path, few rows (gemm_skinny.c): columns [n_begin, n_end) of
 * C[M, N] = A[M, K] . W[N, K]^T, W of dtype dt; lda/ldc in floats. */
void dm_cpu_gemm_skinny_avx2(int32_t M, int32_t n_begin, int32_t n_end, int32_t K, const float *A, int32_t lda,
                             const void *W, dynmoe_dtype dt, float *C, int32_t ldc);

/* The gated activation of one hidden unit: act(gate) * up, SiLU or GELU (erf). */
static inline float dm_cpu_act(float gate, float up, int geglu) {
    const float a = geglu ? 0.5f * gate * (1.0f + erff(gate * 0.70710678118654752f)) : gate / (1.0f + expf(-gate));
    return a * up;
}

#endif
