/* cpu/gemm_skinny.c — C[M, N] = A[M, K] . W[N, K]^T for few rows (M small),
 * the shape of an expert that received a handful of tokens.
 *
 * Why not sgemm: with M ~ 20 rows, OpenBLAS packs every weight panel before
 * using it ~20 times, and the packing traffic dominates (measured here: 2.7
 * GB/s of weights, 26 GFLOP/s single-threaded at M = 19). Here each weight
 * element is read from memory once, kept in L1 for a 4-row weight block,
 * and used against all M activation rows (which sit in L2): the cost is one
 * stream over the expert's weights plus 2*M*N*K FLOPs at FMA speed.
 *
 * Napkin math (Qwen3 expert, K = 2048, 4 weight rows = 32 KiB fp32 = L1):
 * a 4x3 register block does 12 FMAs of 8 lanes per 7 vector loads. Weights may be fp32, bf16 or f16; the
 * 16-bit ones are widened in registers (no tile copy at all).
 *
 * The AVX2 path (isa.c) for experts with fewer than 8 rows; experts.c gives
 * ranges of columns to threads. Each C element is one dot product in a fixed
 * order (8 lanes over k, their sum, then the tail), wherever its block is. */
#include "../hd.h"
#include "cpu.h"
#include "simd.h"

#ifdef DM_CPU_X86
/* One block of MR activation rows a[] against NR weight rows (offsets wrow[]).
 * 12 accumulators + 3 weight vectors + 1 activation vector = the 16 ymm
 * registers of AVX2: nothing spills. Rows past the matrix edge point at a
 * valid row and their results are dropped, so the loop is always full. */
#define MR 4
#define NR 3
#define DEFINE_BLOCK(NAME, LOAD8, DT)                                                                  \
    DM_AVX2 static void NAME(int32_t K, const float *const a[MR], const void *W, const int64_t wrow[NR], \
                               float out[MR][NR]) {                                                    \
        __m256 acc[MR][NR];                                                                            \
        for (int j = 0; j < MR; j++)                                                                   \
            for (int i = 0; i < NR; i++) acc[j][i] = _mm256_setzero_ps();                              \
        int32_t k = 0;                                                                                 \
        for (; k + 8 <= K; k += 8) {                                                                   \
            __m256 w0 = LOAD8(W, wrow[0] + k), w1 = LOAD8(W, wrow[1] + k), w2 = LOAD8(W, wrow[2] + k); \
            for (int j = 0; j < MR; j++) {                                                             \
                __m256 x = _mm256_loadu_ps(a[j] + k);                                                  \
                acc[j][0] = _mm256_fmadd_ps(x, w0, acc[j][0]);                                         \
                acc[j][1] = _mm256_fmadd_ps(x, w1, acc[j][1]);                                         \
                acc[j][2] = _mm256_fmadd_ps(x, w2, acc[j][2]);                                         \
            }                                                                                          \
        }                                                                                              \
        for (int j = 0; j < MR; j++)                                                                   \
            for (int i = 0; i < NR; i++) {                                                             \
                float s = dm_hsum8(acc[j][i]);                                                            \
                for (int32_t kk = k; kk < K; kk++) s += a[j][kk] * dm_load(W, DT, wrow[i] + kk);       \
                out[j][i] = s;                                                                         \
            }                                                                                          \
    }
DEFINE_BLOCK(block_f32, dm_load8_f32, DYNMOE_F32)
DEFINE_BLOCK(block_bf16, dm_load8_bf16, DYNMOE_BF16)
DEFINE_BLOCK(block_f16, dm_load8_f16, DYNMOE_F16)

DM_AVX2 void dm_cpu_gemm_skinny_avx2(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                                     const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc, float *wbuf) {
    const int32_t K = W->K;
    const int plain = W->fmt == DYNMOE_WEIGHTS_PLAIN;
    for (int32_t n0 = n_begin; n0 < n_end; n0 += NR) {
        int64_t wrow[NR];
        float b[NR];
        for (int i = 0; i < NR; i++) {
            const int32_t n = n0 + i < n_end ? n0 + i : n_end - 1;
            /* quantized: rows decoded into wbuf once, used by every row block */
            wrow[i] = plain ? (int64_t)n * K : (int64_t)i * K;
            if (!plain) dm_cpu_weight_row_avx2(W, n, wbuf + (size_t)i * K);
            b[i] = dm_cpu_bias(bias, W->dt, n);
        }
        const void *Wp = plain ? (const void *)W->w : (const void *)wbuf;
        const dynmoe_dtype dt = plain ? W->dt : DYNMOE_F32;
        for (int32_t m0 = 0; m0 < M; m0 += MR) {
            const float *a[MR];
            for (int j = 0; j < MR; j++) a[j] = A + (int64_t)(m0 + j < M ? m0 + j : M - 1) * lda;
            float out[MR][NR];
            if (dt == DYNMOE_BF16) block_bf16(K, a, Wp, wrow, out);
            else if (dt == DYNMOE_F16) block_f16(K, a, Wp, wrow, out);
            else block_f32(K, a, Wp, wrow, out);
            for (int j = 0; j < MR && m0 + j < M; j++)
                for (int i = 0; i < NR && n0 + i < n_end; i++) C[(int64_t)(m0 + j) * ldc + n0 + i] = out[j][i] + b[i];
        }
    }
}

#else

void dm_cpu_gemm_skinny_avx2(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                             const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc, float *wbuf) {
    (void)M, (void)n_begin, (void)n_end, (void)A, (void)lda, (void)W, (void)bias, (void)C, (void)ldc, (void)wbuf;
}

#endif
