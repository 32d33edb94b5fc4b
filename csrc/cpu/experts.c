/* cpu/experts.c — the expert FFNs on the CPU, active experts only.
 *
 * Each active expert e has rows [r0, r1) of the plan (R_e = r1 - r0); its FFN
 *   y[r] = W2_e . act(W1_e . x[token(r)]) * (W3_e . x[token(r)])
 * lands in rows_y[r0 + r]. An expert with no rows is never visited, so it
 * reads no weights: cost follows the rows. Napkin math (Qwen3-30B-A3B,
 * T = 2048, K = 8): 16384 rows, 6 * 16384 * 768 * 2048 = 155 GFLOP and 2.4 GB
 * of fp32 weights; the bound is the machine's dense sgemm rate.
 *
 * Three paths, by how many experts are active and how many rows each has:
 *  - prefill (at least 2 active experts per thread): whole experts per OpenMP
 *    thread, no barrier between them. An expert with >= DM_PANEL_MIN_ROWS rows
 *    runs ffn_panels.c (GEMM 1 + activation + GEMM 2 on packed row panels,
 *    weights read once per 256 rows); one with fewer runs run_expert() below
 *    single-threaded.
 *  - decode (few active experts): one expert at a time through run_expert(),
 *    the threads inside each GEMM.
 *  - run_expert(): gather the rows into rows_y, GEMM 1 into rows_h (the skinny
 *    kernel up to DM_SKINNY_MAX_ROWS rows, else sgemm), activation in place,
 *    GEMM 2 back into rows_y. bf16/f16 weights go to sgemm converted a tile of
 *    DM_CPU_TILE_ROWS rows at a time, never as a whole-weight copy. */
#include <math.h>

#include <omp.h>

#include <cblas.h>

#include "../hd.h"
#include "cpu.h"

/* cblas.h pulls in complex.h, whose macro I forbids the usual names: In = I, Hd = H. */

/* Up to this many rows the skinny kernel beats packed sgemm (measured on the
 * Zen 3 CI machine at K = 2048: 1.5-2x at 8-32 rows, even at 48). */
#define DM_SKINNY_MAX_ROWS 40
/* From this many rows on (one full panel), prefill experts run through
 * ffn_panels.c; below, a panel would be mostly padding. */
#define DM_PANEL_MIN_ROWS 8

/* C[M, N] = A[M, K] . W[N, K]^T, with W of dtype dt; lda/ldc in floats. */
static void gemm_wt(int32_t M, int32_t N, int32_t K, const float *A, int32_t lda, const void *W,
                    dynmoe_dtype dt, float *C, int32_t ldc, float *tile, size_t tile_floats, int inner) {
    /* Few rows: stream the weights once (gemm_skinny.c) instead of packing them. */
    if (M <= DM_SKINNY_MAX_ROWS &&
        dm_cpu_gemm_skinny(M, N, K, A, lda, W, dt, C, ldc, inner ? omp_get_max_threads() : 1))
        return;
    if (dt == DYNMOE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, lda, (const float *)W, K,
                    0.0f, C, ldc);
        return;
    }
    const int32_t rows = (int32_t)(tile_floats / (size_t)K);
    for (int32_t n0 = 0; n0 < N; n0 += rows) {
        const int32_t nn = N - n0 < rows ? N - n0 : rows;
#pragma omp parallel for schedule(static) if (inner)
        for (int64_t i = 0; i < (int64_t)nn * K; i++) tile[i] = dm_load(W, dt, (int64_t)n0 * K + i);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, nn, K, 1.0f, A, lda, tile, K, 0.0f,
                    C + n0, ldc);
    }
}

/* One expert: gather, GEMM 1, activation, GEMM 2 over its R rows. `inner`
 * says whether the element-wise loops may fork threads (not when experts
 * already run in parallel). */
static void run_expert(const dm_experts_args *a, int32_t e, float *tile, size_t tile_floats, int inner) {
    const dynmoe_experts *ex = &a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter, S = a->slots;
    const dynmoe_dtype dt = ex->dtype;
    const size_t esz = dm_dtype_size(dt);
    const dynmoe_plan *p = &a->plan;
    const int32_t r0 = p->expert_offsets[e], R = p->expert_offsets[e + 1] - r0;
    float *Ye = (float *)a->rows_y + (int64_t)r0 * Hd, *He = (float *)a->rows_h + (int64_t)r0 * 2 * In;
    const char *w13 = (const char *)ex->w13 + (size_t)e * 2 * In * Hd * esz;
    const char *w2 = (const char *)ex->w2 + (size_t)e * Hd * In * esz;

#pragma omp parallel for schedule(static) if (inner)
    for (int32_t r = 0; r < R; r++) {
        const int64_t t = p->sorted_slots[r0 + r] / S;
        for (int32_t h = 0; h < Hd; h++) Ye[(int64_t)r * Hd + h] = dm_load(a->x, dt, t * Hd + h);
    }
    gemm_wt(R, 2 * In, Hd, Ye, Hd, w13, dt, He, 2 * In, tile, tile_floats, inner);
    const int geglu = ex->act == DYNMOE_ACT_GEGLU;
#pragma omp parallel for schedule(static) if (inner)
    for (int32_t r = 0; r < R; r++) {
        float *hr = He + (int64_t)r * 2 * In;
        for (int32_t i = 0; i < In; i++) hr[i] = dm_cpu_act(hr[i], hr[In + i], geglu);
    }
    gemm_wt(R, Hd, In, He, 2 * In, w2, dt, Ye, Hd, tile, tile_floats, inner);
}

dynmoe_status dm_cpu_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream) {
    (void)ctx;
    (void)stream;
    const dynmoe_plan *p = &a->plan;
    const int32_t num_active = *p->num_active;
    const int32_t Hd = a->experts.hidden, In = a->experts.inter;
    const size_t tile_floats = (size_t)DM_CPU_TILE_ROWS * (size_t)(Hd > In ? Hd : In);
    const size_t scratch_floats = dm_cpu_scratch_floats((size_t)Hd, (size_t)In, (size_t)p->num_slots);
    /* The workspace holds one scratch per thread it was sized for. */
    int threads = omp_get_max_threads();
    const size_t tiles = a->scratch_bytes / (scratch_floats * sizeof(float));
    if ((size_t)threads > tiles) threads = (int)tiles;
    if (threads < 1) return dm_fail(DYNMOE_ERR_INTERNAL, "dynmoe: workspace scratch holds no weight tile");

    if (num_active >= 2 * threads) {
        /* Prefill: whole experts per thread (a sgemm inside runs serially: the
         * OpenMP build of OpenBLAS does not fork inside a parallel region). */
#pragma omp parallel num_threads(threads)
        {
            float *scratch = (float *)a->scratch + (size_t)omp_get_thread_num() * scratch_floats;
#pragma omp for schedule(dynamic, 1)
            for (int32_t ai = 0; ai < num_active; ai++) {
                const int32_t e = p->active_experts[ai];
                const int32_t R = p->expert_offsets[e + 1] - p->expert_offsets[e];
                if (R < DM_PANEL_MIN_ROWS || !dm_cpu_ffn_panels(a, e, scratch))
                    run_expert(a, e, scratch, tile_floats, 0);
            }
        }
    } else {
        /* Decode or few experts: one expert at a time, threads inside the GEMMs. */
        for (int32_t ai = 0; ai < num_active; ai++)
            run_expert(a, p->active_experts[ai], (float *)a->scratch, tile_floats, 1);
    }
    return DYNMOE_OK;
}
