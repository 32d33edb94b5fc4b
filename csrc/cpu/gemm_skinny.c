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
/* One block of MRV activation rows a[] against NR weight rows (offsets wrow[]).
 * MRV = 4: 12 accumulators + 3 weight vectors + 1 activation vector = the 16
 * ymm registers of AVX2: nothing spills. MRV = 1 for a lone row (decode
 * T = 1), which would otherwise compute 3 copies of it. Rows past the matrix
 * edge point at a valid row and their results are dropped, so the loop is
 * always full. */
#define MR 4
#define NR 3
#define DEFINE_BLOCK(NAME, LOAD8, DT, MRV)                                                             \
    DM_AVX2 static void NAME(int32_t K, const float *const a[], const void *W, const int64_t wrow[NR],  \
                             float out[][NR]) {                                                        \
        __m256 acc[MRV][NR];                                                                           \
        for (int j = 0; j < MRV; j++)                                                                  \
            for (int i = 0; i < NR; i++) acc[j][i] = _mm256_setzero_ps();                              \
        int32_t k = 0;                                                                                 \
        for (; k + 8 <= K; k += 8) {                                                                   \
            __m256 w0 = LOAD8(W, wrow[0] + k), w1 = LOAD8(W, wrow[1] + k), w2 = LOAD8(W, wrow[2] + k); \
            for (int j = 0; j < MRV; j++) {                                                            \
                __m256 x = _mm256_loadu_ps(a[j] + k);                                                  \
                acc[j][0] = _mm256_fmadd_ps(x, w0, acc[j][0]);                                         \
                acc[j][1] = _mm256_fmadd_ps(x, w1, acc[j][1]);                                         \
                acc[j][2] = _mm256_fmadd_ps(x, w2, acc[j][2]);                                         \
            }                                                                                          \
        }                                                                                              \
        for (int j = 0; j < MRV; j++)                                                                  \
            for (int i = 0; i < NR; i++) {                                                             \
                float s = dm_hsum8(acc[j][i]);                                                         \
                for (int32_t kk = k; kk < K; kk++) s += a[j][kk] * dm_load(W, DT, wrow[i] + kk);       \
                out[j][i] = s;                                                                         \
            }                                                                                          \
    }
DEFINE_BLOCK(block_f32, dm_load8_f32, DYNMOE_F32, MR)
DEFINE_BLOCK(block_bf16, dm_load8_bf16, DYNMOE_BF16, MR)
DEFINE_BLOCK(block_f16, dm_load8_f16, DYNMOE_F16, MR)
DEFINE_BLOCK(block1_f32, dm_load8_f32, DYNMOE_F32, 1)
DEFINE_BLOCK(block1_bf16, dm_load8_bf16, DYNMOE_BF16, 1)
DEFINE_BLOCK(block1_f16, dm_load8_f16, DYNMOE_F16, 1)

/* Quantized weights: the same block with the weights decoded in registers
 * (simd.h's decoders), group by group with each row's scale (and zero point)
 * hoisted, so a stored byte is read once per row block and never goes
 * through memory as a float. The products q * scale and the FMA order are
 * those of dm_cpu_weight_row_avx2 followed by block_f32, so the bits are the
 * same as decoding into a buffer first. QNR = 2 weight rows leave registers
 * for the decoders' constants. */
#define QNR 2

/* The scale and zero point (INT4; 8 when none) of group gi of row n. */
DM_AVX2 static inline void group_scale(const dm_cpu_wmat *W, int64_t n, int64_t gi, float *s, float *z) {
    switch (W->fmt) {
    case DYNMOE_WEIGHTS_FP8_BLOCK:
        *s = ((const float *)W->scale)[(n / DM_FP8_BLOCK) * W->groups + gi], *z = 0.0f;
        break;
    case DYNMOE_WEIGHTS_MXFP4: *s = dm_ue8m0_to_f32(((const uint8_t *)W->scale)[n * W->groups + gi]), *z = 0.0f; break;
    default:
        *s = dm_f16_to_f32(((const uint16_t *)W->scale)[n * W->groups + gi]);
        *z = W->zero ? (float)((const uint8_t *)W->zero)[n * W->groups + gi] : 8.0f;
    }
}

#define FMT_FP8 DYNMOE_WEIGHTS_FP8_BLOCK
#define FMT_MX DYNMOE_WEIGHTS_MXFP4
#define FMT_I4 DYNMOE_WEIGHTS_INT4
/* Eight weights of row p from k (a multiple of 8), scaled: simd.h's rules. */
#define DEC8(FMT, p, k, s, z)                                                                                   \
    ((FMT) == FMT_FP8 ? _mm256_mul_ps(dm_fp8x8((p) + (k)), s)                                                   \
     : (FMT) == FMT_MX ? _mm256_mul_ps(dm_e2m1x8(dm_nibbles8((p) + (k) / 2)), s)                                \
                       : _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(dm_nibbles8((p) + (k) / 2)), z), s))
/* One weight of the K tail (FP8, INT4): quant_rules.h's rules. */
#define DEC1(FMT, p, k, s, z)                                                                                   \
    ((FMT) == FMT_FP8 ? dm_fp8e4m3_to_f32((p)[k]) * (s)                                                         \
     : (FMT) == FMT_MX ? dm_e2m1_to_f32(dm_nibble((p), (k))) * (s)                                              \
                       : ((float)dm_nibble((p), (k)) - (z)) * (s))

#define DEFINE_QBLOCK(NAME, FMT, MRV)                                                                           \
    DM_AVX2 static void NAME(const dm_cpu_wmat *W, const float *const a[], const int64_t n[QNR],               \
                             float out[][QNR]) {                                                                \
        const int32_t K = W->K, G = (FMT) == FMT_FP8 ? DM_FP8_BLOCK : (FMT) == FMT_MX ? DM_MXFP4_BLOCK : W->group; \
        const uint8_t *p0 = (const uint8_t *)W->w + n[0] * W->row_bytes;                                        \
        const uint8_t *p1 = (const uint8_t *)W->w + n[1] * W->row_bytes;                                        \
        __m256 acc[MRV][QNR];                                                                                   \
        for (int j = 0; j < MRV; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();                              \
        float s[QNR] = {0.0f, 0.0f}, z[QNR] = {0.0f, 0.0f};                                                     \
        int32_t k = 0;                                                                                          \
        for (int32_t k0 = 0, gi = 0; k0 < K; k0 += G, gi++) {                                                   \
            group_scale(W, n[0], gi, &s[0], &z[0]);                                                             \
            group_scale(W, n[1], gi, &s[1], &z[1]);                                                             \
            const __m256 s0 = _mm256_set1_ps(s[0]), s1 = _mm256_set1_ps(s[1]);                                 \
            const __m256 z0 = _mm256_set1_ps(z[0]), z1 = _mm256_set1_ps(z[1]);                                 \
            const int32_t kend = K < k0 + G ? K : k0 + G;                                                       \
            for (k = k0; k + 8 <= kend; k += 8) {                                                               \
                const __m256 w0 = DEC8(FMT, p0, k, s0, z0), w1 = DEC8(FMT, p1, k, s1, z1);                      \
                for (int j = 0; j < MRV; j++) {                                                                 \
                    const __m256 x = _mm256_loadu_ps(a[j] + k);                                                 \
                    acc[j][0] = _mm256_fmadd_ps(x, w0, acc[j][0]);                                              \
                    acc[j][1] = _mm256_fmadd_ps(x, w1, acc[j][1]);                                              \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        /* k: the K % 8 tail, in the last group (its s, z still set) */                                         \
        for (int j = 0; j < MRV; j++) {                                                                         \
            float t0 = dm_hsum8(acc[j][0]), t1 = dm_hsum8(acc[j][1]);                                           \
            for (int32_t kk = k; kk < K; kk++)                                                                  \
                t0 += a[j][kk] * DEC1(FMT, p0, kk, s[0], z[0]), t1 += a[j][kk] * DEC1(FMT, p1, kk, s[1], z[1]); \
            out[j][0] = t0, out[j][1] = t1;                                                                     \
        }                                                                                                       \
    }
DEFINE_QBLOCK(qblock_fp8, FMT_FP8, MR)
DEFINE_QBLOCK(qblock_mx, FMT_MX, MR)
DEFINE_QBLOCK(qblock_i4, FMT_I4, MR)
DEFINE_QBLOCK(qblock1_fp8, FMT_FP8, 1)
DEFINE_QBLOCK(qblock1_mx, FMT_MX, 1)
DEFINE_QBLOCK(qblock1_i4, FMT_I4, 1)

/* Quantized W: blocks of QNR weight rows against row blocks of 4 (1 for M = 1). */
DM_AVX2 static void skinny_quant(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                                 const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc) {
    const int mr = M == 1 ? 1 : MR;
    for (int32_t n0 = n_begin; n0 < n_end; n0 += QNR) {
        int64_t n[QNR];
        float b[QNR];
        for (int i = 0; i < QNR; i++) {
            n[i] = n0 + i < n_end ? n0 + i : n_end - 1;
            b[i] = dm_cpu_bias(bias, W->dt, n[i]);
        }
        for (int32_t m0 = 0; m0 < M; m0 += mr) {
            const float *a[MR];
            for (int j = 0; j < MR; j++) a[j] = A + (int64_t)(m0 + j < M ? m0 + j : M - 1) * lda;
            float out[MR][QNR];
            switch (W->fmt) {
            case DYNMOE_WEIGHTS_FP8_BLOCK: mr == 1 ? qblock1_fp8(W, a, n, out) : qblock_fp8(W, a, n, out); break;
            case DYNMOE_WEIGHTS_MXFP4: mr == 1 ? qblock1_mx(W, a, n, out) : qblock_mx(W, a, n, out); break;
            default: mr == 1 ? qblock1_i4(W, a, n, out) : qblock_i4(W, a, n, out); break;
            }
            for (int j = 0; j < mr && m0 + j < M; j++)
                for (int i = 0; i < QNR && n0 + i < n_end; i++) C[(int64_t)(m0 + j) * ldc + n0 + i] = out[j][i] + b[i];
        }
    }
}

DM_AVX2 void dm_cpu_gemm_skinny_avx2(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                                     const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc) {
    if (W->fmt != DYNMOE_WEIGHTS_PLAIN) {
        skinny_quant(M, n_begin, n_end, A, lda, W, bias, C, ldc);
        return;
    }
    const int32_t K = W->K;
    const int mr = M == 1 ? 1 : MR;
    for (int32_t n0 = n_begin; n0 < n_end; n0 += NR) {
        int64_t wrow[NR];
        float b[NR];
        for (int i = 0; i < NR; i++) {
            const int32_t n = n0 + i < n_end ? n0 + i : n_end - 1;
            wrow[i] = (int64_t)n * K;
            b[i] = dm_cpu_bias(bias, W->dt, n);
        }
        for (int32_t m0 = 0; m0 < M; m0 += mr) {
            const float *a[MR];
            for (int j = 0; j < MR; j++) a[j] = A + (int64_t)(m0 + j < M ? m0 + j : M - 1) * lda;
            float out[MR][NR];
            if (W->dt == DYNMOE_BF16) mr == 1 ? block1_bf16(K, a, W->w, wrow, out) : block_bf16(K, a, W->w, wrow, out);
            else if (W->dt == DYNMOE_F16) mr == 1 ? block1_f16(K, a, W->w, wrow, out) : block_f16(K, a, W->w, wrow, out);
            else mr == 1 ? block1_f32(K, a, W->w, wrow, out) : block_f32(K, a, W->w, wrow, out);
            for (int j = 0; j < mr && m0 + j < M; j++)
                for (int i = 0; i < NR && n0 + i < n_end; i++) C[(int64_t)(m0 + j) * ldc + n0 + i] = out[j][i] + b[i];
        }
    }
}

#else

void dm_cpu_gemm_skinny_avx2(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                             const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc) {
    (void)M, (void)n_begin, (void)n_end, (void)A, (void)lda, (void)W, (void)bias, (void)C, (void)ldc;
}

#endif
