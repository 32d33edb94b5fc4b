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
#include <float.h>

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

/* Quantized weights: QNR = 2 weight rows decoded in registers (simd.h's
 * decoders, 32 values per step) against MRV = 4, 2 or 1 activation rows, so
 * a stored byte is read once per row block and never goes through memory as
 * a float. Each product goes to one of NCH accumulator chains per output
 * (v % NCH), so that the FMAs' latency hides behind the decoding when MRV is
 * small. The scale is hoisted (HOIST): each group's Σ x·q is multiplied by
 * its scale once, with
 * - FP8_BLOCK: q = value·2^-8 from dm_fp8x32_f16_nonan, the 2^8 folded into
 *   the scale; at every MRV (groups of 128 k). Its NaN rule is applied per
 *   row, not per weight: a NaN code anywhere in the row's 32-steps makes the
 *   outputs of the row NaN, which is what its product would have made them
 *   (the 8-wide remainder and the scalar tail decode NaN per weight);
 * - MXFP4: q from the fp16 table (dm_lut4x32_f16);
 * - INT4: q = 0..15 as integers (dm_nibbles8: broadcast + variable shifts,
 *   measured a little faster here than the fp16 table), the zero point as
 *   s·Σ x·q - z·s·Σ x with Σ x summed alongside (z = 8 without zero points).
 * The 4-bit formats scale the decoded weights instead (q·s, INT4 q·s - z·s
 * in one FMA) where that measured faster (in-cache A/B, AMD EPYC Zen 3): at
 * MRV = 4 (hoisting needs 16 accumulators, which spill), MXFP4 at MRV = 2,
 * INT4 with groups of 32 (one step per group: the per-group fold costs more
 * than it saves).
 * So the rounding differs from the panels' decode-then-multiply path (the
 * tests compare both with the fp64 reference); each output is still one
 * fixed sequence of operations, wherever its block and thread are. */
#define QNR 2
#define QSTEP 32

#define FMT_FP8 DYNMOE_WEIGHTS_FP8_BLOCK
#define FMT_MX DYNMOE_WEIGHTS_MXFP4
#define FMT_I4 DYNMOE_WEIGHTS_INT4

/* Group gi of row n: s, z as stored (z: INT4's zero point, 8 when none) for
 * the scalar K tail; v, c the vector decoders' scale and INT4 offset. */
typedef struct {
    float s, z, v, c;
} qscale;

DM_AVX2 static inline qscale group_scale(const dm_cpu_wmat *W, int64_t n, int64_t gi) {
    qscale q = {0.0f, 0.0f, 0.0f, 0.0f};
    switch (W->fmt) {
    case DYNMOE_WEIGHTS_FP8_BLOCK:
        q.s = ((const float *)W->scale)[(n / DM_FP8_BLOCK) * W->groups + gi];
        q.v = q.s * DM_FP8_F16_SCALE;
        break;
    case DYNMOE_WEIGHTS_MXFP4: q.s = q.v = dm_ue8m0_to_f32(((const uint8_t *)W->scale)[n * W->groups + gi]); break;
    default:
        /* F16C's exact conversion: hd.h's branchy rule cost a visible share with groups of 32 */
        q.s = q.v = _cvtsh_ss(((const uint16_t *)W->scale)[n * W->groups + gi]);
        q.z = W->zero ? (float)((const uint8_t *)W->zero)[n * W->groups + gi] : 8.0f;
        q.c = -q.z * q.s;
    }
    return q;
}

/* The scale of group gi of row n of 4-bit W, fmt known at compile time. */
DM_AVX2 static inline float scale4s(int fmt, const dm_cpu_wmat *W, int64_t n, int64_t gi) {
    return fmt == FMT_MX ? dm_ue8m0_to_f32(((const uint8_t *)W->scale)[n * W->groups + gi])
                         : _cvtsh_ss(((const uint16_t *)W->scale)[n * W->groups + gi]);
}

/* Scaled 4-bit weights (hoist == 0): q·s, INT4 q·s - z·s. */
DM_AVX2 static inline __m256 scale4(int fmt, __m256 w, __m256 s, __m256 c) {
    return fmt == FMT_MX ? _mm256_mul_ps(w, s) : _mm256_fmadd_ps(w, s, c);
}
/* 32 weights of row p from k, unscaled (fp8 times 2^-8, INT4 q) or, 4-bit
 * without hoist, scaled. */
DM_AVX2 static inline void dec32(int fmt, int hoist, const uint8_t *p, int32_t k, __m128i lut, __m256 s, __m256 c,
                                 __m256 w[4], __m256i *top) {
    if (fmt == FMT_FP8) { /* NaN codes per row: *top */
        __m128i h[4];
        dm_fp8x32_f16_nonan(p + k, h, top);
        for (int v = 0; v < 4; v++) w[v] = _mm256_cvtph_ps(h[v]);
        return;
    }
    if (fmt == FMT_I4) {
        for (int v = 0; v < 4; v++) {
            w[v] = _mm256_cvtepi32_ps(dm_nibbles8(p + k / 2 + 4 * v));
            if (!hoist) w[v] = scale4(fmt, w[v], s, c);
        }
        return;
    }
    __m128i h[4];
    dm_lut4x32_f16(p + k / 2, lut, h);
    for (int v = 0; v < 4; v++) w[v] = hoist ? _mm256_cvtph_ps(h[v]) : scale4(fmt, _mm256_cvtph_ps(h[v]), s, c);
}
/* 8 weights from k (the last group's K % 32 remainder), as dec32. */
DM_AVX2 static inline __m256 dec8(int fmt, int hoist, const uint8_t *p, int32_t k, __m128i lut, __m256 s, __m256 c) {
    if (fmt == FMT_FP8) return _mm256_cvtph_ps(dm_fp8x8_f16(p + k));
    const __m256 w = fmt == FMT_I4 ? _mm256_cvtepi32_ps(dm_nibbles8(p + k / 2)) : _mm256_cvtph_ps(dm_lut4x8_f16(p + k / 2, lut));
    return hoist ? w : scale4(fmt, w, s, c);
}
/* One weight of the K % 8 tail: quant_rules.h's rules. */
DM_AVX2 static inline float dec1(int fmt, const uint8_t *p, int32_t k, qscale q) {
    if (fmt == FMT_FP8) return dm_fp8e4m3_to_f32(p[k]) * q.s;
    if (fmt == FMT_MX) return dm_e2m1_to_f32(dm_nibble(p, k)) * q.s;
    return ((float)dm_nibble(p, k) - q.z) * q.s;
}
DM_AVX2 static inline __m256 sum_chains(const __m256 *g, int nch) {
    return nch == 4 ? _mm256_add_ps(_mm256_add_ps(g[0], g[1]), _mm256_add_ps(g[2], g[3]))
           : nch == 2 ? _mm256_add_ps(g[0], g[1])
                      : g[0];
}

#define DEFINE_QBLOCK(NAME, FMT, HOIST, ZP, MRV, NCH)                                                             \
    DM_AVX2 static void NAME(const dm_cpu_wmat *W, const float *const a[], const int64_t n[QNR],                 \
                             float out[][QNR]) {                                                                  \
        const int32_t K = W->K, G = (FMT) == FMT_FP8 ? DM_FP8_BLOCK : (FMT) == FMT_MX ? DM_MXFP4_BLOCK : W->group; \
        const __m128i lut = DM_E2M1_F16HI;                                                                        \
        /* INT4 at 4 rows: 8 weights per step, each x vector loaded once for both weight rows */                 \
        const int STEP32 = (FMT) != FMT_I4 || (MRV) < 4;                                                          \
        const uint8_t *p[QNR];                                                                                    \
        __m256 acc[MRV][QNR], g[MRV][QNR][NCH], xs[MRV][2];                                                       \
        __m256i top[QNR]; /* fp8: NaN codes of the 32-steps */                                                    \
        for (int i = 0; i < QNR; i++) p[i] = (const uint8_t *)W->w + n[i] * W->row_bytes;                         \
        for (int i = 0; i < QNR; i++) top[i] = _mm256_setzero_si256();                                            \
        for (int j = 0; j < MRV; j++) {                                                                           \
            xs[j][0] = xs[j][1] = _mm256_setzero_ps();                                                            \
            for (int i = 0; i < QNR; i++) {                                                                       \
                acc[j][i] = _mm256_setzero_ps();                                                                  \
                for (int c = 0; c < NCH; c++) g[j][i][c] = _mm256_setzero_ps();                                   \
            }                                                                                                     \
        }                                                                                                         \
        qscale q[QNR];                                                                                            \
        __m256 sv[QNR], cv[QNR];                                                                                  \
        int32_t k = 0;                                                                                            \
        for (int32_t k0 = 0, gi = 0; k0 < K; k0 += G, gi++) {                                                     \
            const int32_t kend = K < k0 + G ? K : k0 + G;                                                         \
            for (int i = 0; i < QNR; i++) {                                                                       \
                q[i] = group_scale(W, n[i], gi);                                                                  \
                sv[i] = _mm256_set1_ps(q[i].v), cv[i] = _mm256_set1_ps(q[i].c);                                   \
            }                                                                                                     \
            for (k = k0; STEP32 && k + QSTEP <= kend; k += QSTEP) {                                               \
                for (int i = 0; i < QNR; i++) {                                                                   \
                    __m256 w[4];                                                                                  \
                    _mm_prefetch((const char *)p[i] + QNR * W->row_bytes + ((FMT) == FMT_FP8 ? k : k / 2),        \
                                 _MM_HINT_T0); /* the next block's rows (see qrow4) */                            \
                    dec32(FMT, HOIST, p[i], k, lut, sv[i], cv[i], w, &top[i]);                                    \
                    for (int v = 0; v < 4; v++)                                                                   \
                        for (int j = 0; j < MRV; j++)                                                             \
                            g[j][i][v % NCH] =                                                                    \
                                _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + k + 8 * v), w[v], g[j][i][v % NCH]);       \
                }                                                                                                 \
                if (ZP)                                                                                           \
                    for (int v = 0; v < 4; v++)                                                                   \
                        for (int j = 0; j < MRV; j++)                                                             \
                            xs[j][v & 1] = _mm256_add_ps(xs[j][v & 1], _mm256_loadu_ps(a[j] + k + 8 * v));        \
            }                                                                                                     \
            for (; k + 8 <= kend; k += 8) {                                                                       \
                for (int i = 0; i < QNR; i++) {                                                                   \
                    const __m256 w = dec8(FMT, HOIST, p[i], k, lut, sv[i], cv[i]);                                \
                    for (int j = 0; j < MRV; j++) g[j][i][0] = _mm256_fmadd_ps(_mm256_loadu_ps(a[j] + k), w, g[j][i][0]); \
                }                                                                                                 \
                if (ZP)                                                                                           \
                    for (int j = 0; j < MRV; j++) xs[j][0] = _mm256_add_ps(xs[j][0], _mm256_loadu_ps(a[j] + k));  \
            }                                                                                                     \
            if (HOIST) /* the group's scale (and zero point) once: s·Σ x·q - z·s·Σ x */                       \
                for (int j = 0; j < MRV; j++) {                                                                   \
                    for (int i = 0; i < QNR; i++) {                                                               \
                        acc[j][i] = _mm256_fmadd_ps(sum_chains(g[j][i], NCH), sv[i], acc[j][i]);                  \
                        if (ZP) acc[j][i] = _mm256_fmadd_ps(_mm256_add_ps(xs[j][0], xs[j][1]), cv[i], acc[j][i]); \
                        for (int c = 0; c < NCH; c++) g[j][i][c] = _mm256_setzero_ps();                           \
                    }                                                                                             \
                    xs[j][0] = xs[j][1] = _mm256_setzero_ps();                                                    \
                }                                                                                                 \
        }                                                                                                         \
        /* k: the K % 8 tail, in the last group (its q still set) */                                              \
        for (int j = 0; j < MRV; j++)                                                                             \
            for (int i = 0; i < QNR; i++) {                                                                       \
                float t = dm_hsum8(HOIST ? acc[j][i] : sum_chains(g[j][i], NCH));                                 \
                for (int32_t kk = k; kk < K; kk++) t += a[j][kk] * dec1(FMT, p[i], kk, q[i]);                     \
                out[j][i] = (FMT) == FMT_FP8 && dm_fp8_top_nan(top[i]) ? NAN : t;                                 \
            }                                                                                                     \
    }
DEFINE_QBLOCK(qblock4_fp8, FMT_FP8, 1, 0, 4, 1)
DEFINE_QBLOCK(qblock2_fp8, FMT_FP8, 1, 0, 2, 2)
DEFINE_QBLOCK(qblock1_fp8, FMT_FP8, 1, 0, 1, 2)
DEFINE_QBLOCK(qblock4_mx, FMT_MX, 0, 0, 4, 1)
DEFINE_QBLOCK(qblock2_mx, FMT_MX, 0, 0, 2, 2)
DEFINE_QBLOCK(qblock1_mx, FMT_MX, 1, 0, 1, 2)
DEFINE_QBLOCK(qblock4_i4, FMT_I4, 0, 0, 4, 1)
DEFINE_QBLOCK(qblock2_i4, FMT_I4, 1, 1, 2, 2)
DEFINE_QBLOCK(qblock1_i4, FMT_I4, 1, 1, 1, 2)
DEFINE_QBLOCK(qblock2_i4s, FMT_I4, 0, 0, 2, 2)
DEFINE_QBLOCK(qblock1_i4s, FMT_I4, 0, 0, 1, 2)

typedef void (*qblock_fn)(const dm_cpu_wmat *, const float *const[], const int64_t[QNR], float[][QNR]);

/* 4-bit weights against one activation row (decode: every expert of T = 1,
 * most of T = 16), P4 weight rows per block (x's loads shared by 4 rows),
 * the scale hoisted: each 32-half of a 64-step lies in one MXFP4 block or
 * INT4 group (groups are 32, 64 or 128), so its Σ x·q is one 4-FMA chain
 * that gets its scale in one FMA.
 * - MXFP4: x is permuted once per call into the order in which
 *   dm_lut4x64_f16 yields the weights (xp), so the decoded vectors feed the
 *   FMAs as they are: per 64 weights 3 shifts, 4 ANDs, 4 pshufb, 4 extracts
 *   and 8 vcvtph2ps, where dec32 also re-interleaves into k order (8 more
 *   shuffles).
 * - INT4: q = 0..15 as integers in k order (dm_nibbles8, vcvtdq2ps; the
 *   fp16 table through dm_lut4x64_f16 with f16(q - 8) measured slower),
 *   and the zero point as -z·s·Σ x per group with Σ x summed once per call
 *   (xsum), not per row, added per row in scalar (z = 8 without zero
 *   points).
 * k from K64 = K rounded down to 64 (test shapes; the models' K are
 * multiples of 64) goes through dec8/dec1 with the scale applied to the
 * weights, against x in k order. */
#define P4 4

/* Row x (one of the tail rows): MXFP4: xp = x permuted (dm_lut4x64_slot)
 * over [0, K64); INT4: xsum[g] = group g's Σ x over its columns below K64
 * (8 lanes, then their sum: a fixed order). */
DM_AVX2 static void permute4(const dm_cpu_wmat *W, const float *x, float *xp, float *xsum) {
    const int32_t K64 = W->K / 64 * 64;
    if (W->fmt == FMT_MX)
        for (int32_t k0 = 0; k0 < K64; k0 += 64)
            for (int32_t k = 0; k < 64; k++) xp[k0 + dm_lut4x64_slot(k)] = x[k0 + k];
    if (W->fmt != FMT_I4) return;
    for (int32_t k0 = 0, gi = 0; k0 < K64; k0 += W->group, gi++) {
        const int32_t kend = K64 < k0 + W->group ? K64 : k0 + W->group;
        __m256 t = _mm256_setzero_ps();
        for (int32_t k = k0; k < kend; k += 8) t = _mm256_add_ps(t, _mm256_loadu_ps(x + k));
        xsum[gi] = dm_hsum8(t);
    }
}

/* The tail rows' inputs: x in k order, xp (MXFP4) and xsum (INT4). */
typedef struct {
    const float *x[2], *xp[2], *xsum[2];
} qtail;

/* Row n against x from K64 = K rounded down to 64 on (dec8/dec1, the scale
 * on the weights) and, INT4, the zero points Σ_g -z·s·Σ x below K64, added
 * to head (the Σ below K64 of qrow or qrowi). */
DM_AVX2 static inline float qrow_rest(int fmt, const dm_cpu_wmat *W, const float *x, const float *xsum, int64_t n,
                                      float head) {
    const int32_t K = W->K, K64 = K / 64 * 64, G = fmt == FMT_MX ? DM_MXFP4_BLOCK : W->group;
    const uint8_t *p = (const uint8_t *)W->w + n * W->row_bytes;
    __m256 r = _mm256_setzero_ps();
    int32_t k = K64;
    for (; k + 8 <= K; k += 8) {
        const qscale q = group_scale(W, n, k / G);
        r = _mm256_fmadd_ps(_mm256_loadu_ps(x + k),
                            dec8(fmt, 0, p, k, DM_E2M1_F16HI, _mm256_set1_ps(q.v), _mm256_set1_ps(q.c)), r);
    }
    float u = head + dm_hsum8(r);
    for (; k < K; k++) u += x[k] * dec1(fmt, p, k, group_scale(W, n, k / G));
    if (fmt == FMT_I4) { /* the zero points: Σ_g -z·s·Σ x, 8 groups a step (c = -z·s as group_scale's) */
        const int64_t ng = (K64 + G - 1) / G;
        const uint16_t *sg = (const uint16_t *)W->scale + n * W->groups;
        const uint8_t *zg = W->zero ? (const uint8_t *)W->zero + n * W->groups : NULL;
        __m256 zs = _mm256_setzero_ps();
        int64_t gi = 0;
        for (; gi + 8 <= ng; gi += 8) {
            const __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sg + gi)));
            const __m256 zv = zg ? _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(zg + gi))))
                                 : _mm256_set1_ps(8.0f);
            zs = _mm256_fnmadd_ps(_mm256_mul_ps(zv, sv), _mm256_loadu_ps(xsum + gi), zs);
        }
        u += dm_hsum8(zs);
        for (; gi < ng; gi++) u += group_scale(W, n, gi).c * xsum[gi];
    }
    return u;
}

/* MRV (1 or 2) tail rows against NB weight rows n[]: out[j][i]. */
DM_AVX2 static inline __attribute__((always_inline)) void qrow(int fmt, int MRV, int NB, const dm_cpu_wmat *W,
                                                                const qtail *t, const int64_t *n, float out[][P4]) {
    const int32_t K = W->K, K64 = K / 64 * 64, G = fmt == FMT_MX ? DM_MXFP4_BLOCK : W->group;
    const __m256i lut = _mm256_broadcastsi128_si256(DM_E2M1_F16HI);
    const uint8_t *p[P4];
    __m256 acc[2][P4];
    for (int i = 0; i < NB; i++) {
        p[i] = (const uint8_t *)W->w + n[i] * W->row_bytes;
        for (int j = 0; j < MRV; j++) acc[j][i] = _mm256_setzero_ps();
    }
    for (int32_t k0 = 0; k0 < K64; k0 += 64) {
        for (int i = 0; i < NB; i++) {
            /* the next block's rows (the next 4 KiB page at K 2048 and 4
             * rows: the hardware prefetcher stops at pages), one block ahead */
            _mm_prefetch((const char *)p[i] + NB * W->row_bytes + k0 / 2, _MM_HINT_T0);
            __m256i h[4];
            if (fmt == FMT_MX) dm_lut4x64_f16(_mm256_loadu_si256((const __m256i *)(p[i] + k0 / 2)), lut, h);
            for (int hf = 0; hf < 2; hf++) { /* each half decoded where it is used: 4 live vectors, not 8 */
                __m256 w[4];
                for (int v = 0; v < 4; v++) /* INT4: integer q in k order (dm_nibbles8), x as it is */
                    w[v] = fmt == FMT_I4 ? _mm256_cvtepi32_ps(dm_nibbles8(p[i] + (k0 + 32 * hf) / 2 + 4 * v))
                           : hf          ? _mm256_cvtph_ps(_mm256_extracti128_si256(h[v], 1))
                                         : _mm256_cvtph_ps(_mm256_castsi256_si128(h[v]));
                const __m256 s = _mm256_set1_ps(scale4s(fmt, W, n[i], (k0 + 32 * hf) / G));
                for (int j = 0; j < MRV; j++) {
                    /* MXFP4: vector (hf, v), lane l, is x[k0 + 32 hf + 4 l + v], at xp + k0 + 16 v + 8 hf + l */
                    const float *xs = fmt == FMT_I4 ? t->x[j] + k0 + 32 * hf : t->xp[j] + k0 + 8 * hf;
                    const int vs = fmt == FMT_I4 ? 8 : 16;
                    __m256 g = _mm256_mul_ps(_mm256_loadu_ps(xs), w[0]);
                    for (int v = 1; v < 4; v++) g = _mm256_fmadd_ps(_mm256_loadu_ps(xs + vs * v), w[v], g);
                    acc[j][i] = _mm256_fmadd_ps(g, s, acc[j][i]);
                }
            }
        }
    }
    for (int j = 0; j < MRV; j++)
        for (int i = 0; i < NB; i++) out[j][i] = qrow_rest(fmt, W, t->x[j], t->xsum[j], n[i], dm_hsum8(acc[j][i]));
}
/* One tail row against 4 weight rows, two (MXFP4) against 2 (their 8
 * accumulators and 8 decoded vectors fill the registers). */
DM_AVX2 static void qrow1_mx(const dm_cpu_wmat *W, const qtail *t, const int64_t *n, float out[][P4]) {
    qrow(FMT_MX, 1, 4, W, t, n, out);
}
DM_AVX2 static void qrow1_i4(const dm_cpu_wmat *W, const qtail *t, const int64_t *n, float out[][P4]) {
    qrow(FMT_I4, 1, 4, W, t, n, out);
}
DM_AVX2 static void qrow2_mx(const dm_cpu_wmat *W, const qtail *t, const int64_t *n, float out[][P4]) {
    qrow(FMT_MX, 2, 2, W, t, n, out);
}

/* 4-bit weights against one or two activation rows as exact integer dot
 * products (vpmaddubsw), the decode path (T = 1, most experts of T = 16). The float path above spends per 8
 * weights a conversion and an FMA (and for e2m1 two vcvtph2ps uops per 8)
 * on the four FP pipes; here 32 weights of a row cost one vpmaddubsw per
 * slice of x, and the conversion and FMA come once per 8 int32 lanes.
 * - x is split once per call, per 32-block b, into NS int8 slices (xint_prep):
 *   x = s_b · (a + c1/2^7 + c2/2^14), s_b a power of two with max|x| / s_b in
 *   [63.75, 127.5), so |a| <= 127 and |c1|, |c2| <= 64; every step of the
 *   split is exact in fp32 (power-of-two scales), and what is left is at most
 *   s_b/2^8 (NS = 2) or s_b/2^15 (NS = 3): 2^-14 or 2^-21 of the block's
 *   max|x|. NS = 3 for f32 experts, 2 for bf16/f16 (x and out are rounded to
 *   2^-9 / 2^-12 of themselves there anyway).
 * - q is unsigned (vpmaddubsw's first operand): INT4 q = 0..15 as stored
 *   (the zero point stays s·(Σ x·q) - z·s·Σ x as in qrow); e2m1 through a
 *   pshufb table as 2v + 12 = 0..24, and 12·Σ of x's integers (c64, per
 *   lane, once per call) subtracted, so Σ v·x = (S - c64) / 2 exactly.
 * - Per 64-step and weight row: the low and high nibbles (even and odd k)
 *   against x's slices stored in that order; pair sums <= 2·24·127, lo + hi
 *   <= 12192 fit int16; vpmaddwd by 2^14, 2^7, 1 joins the slices in int32
 *   (<= 4.1e8); lanes 0-3 are block k0/32, lanes 4-7 the next; one
 *   conversion, then the lanes' scales x64 (s_b / 2^(7(NS-1)), halved for
 *   e2m1) and the weight scale.
 * The integer sums are exact; the rounding is the split's, the conversion
 * of each lane's sum to fp32 and the scale products. x with a NaN or Inf, or
 * a block of |x| below 2^-90 (its slices' scales would leave fp32's normal
 * range), takes qrow instead, which propagates them as the product would. */
#define XI_STEP_BYTES(ns) (64 * (ns) + 64) /* slices (lo, hi), then x64 and c64 */

/* 2^e as a float, e in [-126, 127]. */
static inline float pow2f(int e) {
    const uint32_t u = (uint32_t)(e + 127) << 23;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* 32 int32 in k order (4 vectors, each in [-128, 127]) as int8: even k into
 * lo[0..15], odd k into hi[0..15], the order the nibbles come out in. */
DM_AVX2 static inline void store_even_odd(const __m256i v[4], uint8_t *lo, uint8_t *hi) {
    /* packs: lane 0 holds k 0-3, 8-11, 16-19, 24-27, lane 1 k 4-7, 12-15, 20-23, 28-31 */
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    const __m256i k = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)); /* k order */
    const __m256i eo = _mm256_shuffle_epi8(k, _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0,
                                                              2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
    const __m256i q = _mm256_permute4x64_epi64(eo, _MM_SHUFFLE(3, 1, 2, 0)); /* evens 0-15 | odds 0-15 */
    _mm_storeu_si128((__m128i *)lo, _mm256_castsi256_si128(q));
    _mm_storeu_si128((__m128i *)hi, _mm256_extracti128_si256(q, 1));
}

/* Splits row x over [0, K64) into buf (XI_STEP_BYTES per 64-step), and for
 * INT4 Σ x per group into xsum; 0 when x needs the float path. Vectorised:
 * per call it runs once per tail row and costs ~2 vector ops per value
 * (scalar, it was a quarter of the MXFP4 kernel's time at T = 1). */
DM_AVX2 static int xint_prep(const dm_cpu_wmat *W, const float *x, int ns, uint8_t *buf, float *xsum) {
    const int32_t K64 = W->K / 64 * 64;
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX), r128 = _mm256_set1_ps(128.0f);
    if (W->fmt == FMT_I4)
        for (int32_t gi = 0; gi * W->group < K64; gi++) xsum[gi] = 0.0f;
    for (int32_t k0 = 0; k0 < K64; k0 += 64) {
        uint8_t *st = buf + (int64_t)(k0 / 64) * XI_STEP_BYTES(ns);
        float x64[8];
        int32_t c64[8]; /* lane l: k 8(l % 4) .. +7 of block l / 4 (bytes 4l .. 4l+3 of lo and hi) */
        for (int h = 0; h < 2; h++) {
            const float *xb = x + k0 + 32 * h;
            __m256 v[4], mx = _mm256_setzero_ps();
            int finite = 1;
            for (int q = 0; q < 4; q++) {
                v[q] = _mm256_loadu_ps(xb + 8 * q);
                const __m256 a = _mm256_andnot_ps(sign, v[q]);
                mx = _mm256_max_ps(mx, a);
                finite &= _mm256_movemask_ps(_mm256_cmp_ps(a, big, _CMP_LE_OQ)) == 0xff; /* NaN, Inf fail */
            }
            if (!finite) return 0;
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            const float m = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            if (m != 0.0f && m < 0x1p-90f) return 0;
            int E = 0; /* m = f·2^E, f in [0.5, 1); then max|x| / s_b in [63.75, 127.5) */
            if (m != 0.0f) {
                uint32_t u;
                memcpy(&u, &m, sizeof u);
                E = (int)(u >> 23) - 126;
                if (m * pow2f(7 - E) >= 127.5f) E++;
            }
            const __m256 inv = _mm256_set1_ps(pow2f(7 - E)); /* 1 / s_b */
            __m256i sl[3][4], jv[4]; /* the slices; each k's slices joined: a·2^14 + c1·2^7 + c2 (NS = 3) */
            for (int q = 0; q < 4; q++) {
                __m256 t = _mm256_mul_ps(v[q], inv), c = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                jv[q] = sl[0][q] = _mm256_cvtps_epi32(c);
                for (int r = 1; r < ns; r++) {
                    t = _mm256_mul_ps(_mm256_sub_ps(t, c), r128);
                    c = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    sl[r][q] = _mm256_cvtps_epi32(c);
                    jv[q] = _mm256_add_epi32(_mm256_slli_epi32(jv[q], 7), sl[r][q]);
                }
            }
            for (int r = 0; r < ns; r++) store_even_odd(sl[r], st + 64 * r + 16 * h, st + 64 * r + 32 + 16 * h);
            const __m256i hs = _mm256_hadd_epi32(_mm256_hadd_epi32(jv[0], jv[1]), _mm256_hadd_epi32(jv[2], jv[3]));
            const __m128i j4 = _mm_add_epi32(_mm256_castsi256_si128(hs), _mm256_extracti128_si256(hs, 1));
            _mm_storeu_si128((__m128i *)(c64 + 4 * h), _mm_mullo_epi32(j4, _mm_set1_epi32(12)));
            const float sx = pow2f(E - 7 - 7 * (ns - 1));
            /* INT4's Σ x of the zero points from the split x itself, so that
             * s·Σ x·q - z·s·Σ x cancels as Σ (q - z)·x of the split would */
            if (W->fmt == FMT_I4) {
                const int32_t jsum = _mm_extract_epi32(j4, 0) + _mm_extract_epi32(j4, 1) + _mm_extract_epi32(j4, 2) +
                                     _mm_extract_epi32(j4, 3);
                xsum[(k0 + 32 * h) / W->group] += (float)jsum * sx;
            }
            for (int l = 0; l < 4; l++) x64[4 * h + l] = W->fmt == FMT_MX ? 0.5f * sx : sx;
        }
        memcpy(st + 64 * ns, x64, sizeof x64);
        memcpy(st + 64 * ns + 32, c64, sizeof c64);
    }
    return 1;
}

/* The split inputs (xint_prep) of MRV = 1 or 2 tail rows against P4 weight
 * rows n[]: out[r][i], one weight row after the other (x's slices are
 * re-read from L1 as memory operands, so that nothing else spills), each
 * decoded 64-step used by the MRV rows. G32: the weight scale changes every
 * 32 k (MXFP4, INT4 groups of 32): lanes 0-3 get block k0/32's, 4-7 the
 * next; else it changes once per group of 64 or 128, whose lanes get it in
 * one FMA. MXFP4 rows without the scale bytes 0 and 255 (2^-127, NaN: rules
 * of their own in dm_ue8m0_to_f32) build the lanes' scales from the bytes
 * (2^(s-127) is the float with exponent field s) in 3 vector uops, the
 * others take them from dm_ue8m0_to_f32. */
typedef struct {
    const float *x[2];     /* the rows in k order (the K64.. tail) */
    const uint8_t *buf[2]; /* xint_prep's steps */
    const float *xsum[2];  /* INT4: Σ x per group */
} qint;

DM_AVX2 static inline __attribute__((always_inline)) void qrowi(int fmt, int ns, int g32, int MRV, const dm_cpu_wmat *W,
                                                                 const qint *t, const int64_t *n, float out[][P4]) {
    const int32_t K64 = W->K / 64 * 64, G = fmt == FMT_MX ? DM_MXFP4_BLOCK : W->group;
    /* e2m1 code -> 2v + 12: 0 1 2 3 4 6 8 12 -> 12 13 14 15 16 18 20 24, then negated */
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    /* byte 0 of a 16-bit pair into byte 2 of lanes 0-3, byte 1 into lanes 4-7 */
    const __m256i to_exp = _mm256_setr_epi8(-1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 1, -1, -1,
                                            -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1);
    const __m256i mul[3] = {_mm256_set1_epi16(ns == 3 ? 1 << 14 : 1 << 7), _mm256_set1_epi16(ns == 3 ? 1 << 7 : 1),
                            _mm256_set1_epi16(1)};
    for (int i = 0; i < P4; i++) {
        const uint8_t *p = (const uint8_t *)W->w + n[i] * W->row_bytes;
        const uint8_t *sb = (const uint8_t *)W->scale + n[i] * W->groups; /* MXFP4's scale bytes */
        int plain_exp = fmt == FMT_MX, b = 0;
        for (; plain_exp && b + 32 <= K64 / 32; b += 32) { /* 0x00 or 0xff anywhere: the byte + 1 is below 2 */
            const __m256i v = _mm256_add_epi8(_mm256_loadu_si256((const __m256i *)(sb + b)), _mm256_set1_epi8(1));
            plain_exp = _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_max_epu8(v, _mm256_set1_epi8(2)), v)) == -1;
        }
        for (; plain_exp && b < K64 / 32; b++) plain_exp = sb[b] != 0 && sb[b] != 0xff;
        __m256 acc[2], g[2];
        for (int r = 0; r < MRV; r++) acc[r] = g[r] = _mm256_setzero_ps();
        /* pointers stepped, not indices recomputed: the loop is short enough
         * that its address arithmetic showed in llvm-mca's dispatch bound */
        const uint8_t *st[2] = {t->buf[0], t->buf[MRV - 1]}, *pw = p, *ps = sb;
        int32_t gi = 0, left = G / 64; /* !g32: the group and its 64-steps still to come (no idiv per step) */
        for (int32_t k0 = 0; k0 < K64; k0 += 64, pw += 32, ps += 2) {
            _mm_prefetch((const char *)pw + P4 * W->row_bytes, _MM_HINT_T0); /* as in qrow */
            const __m256i b = _mm256_loadu_si256((const __m256i *)pw);
            __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
            if (fmt == FMT_MX) lo = _mm256_shuffle_epi8(lut, lo), hi = _mm256_shuffle_epi8(lut, hi);
            __m256 sw = _mm256_setzero_ps();
            if (g32 && plain_exp) {
                uint16_t two;
                memcpy(&two, ps, sizeof two);
                sw = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_shuffle_epi8(_mm256_set1_epi16((short)two), to_exp), 7));
            } else if (g32) {
                sw = _mm256_setr_m128(_mm_set1_ps(scale4s(fmt, W, n[i], k0 / 32)),
                                      _mm_set1_ps(scale4s(fmt, W, n[i], k0 / 32 + 1)));
            }
            const int flush = !g32 && (--left == 0 || k0 + 64 == K64);
            const __m256 sg = flush ? _mm256_set1_ps(scale4s(fmt, W, n[i], gi)) : sw;
            if (flush) gi++, left = G / 64;
            for (int r = 0; r < MRV; r++) {
                const uint8_t *sr = st[r];
                __m256i S = _mm256_setzero_si256();
                for (int sl = 0; sl < ns; sl++) {
                    const __m256i xl = _mm256_loadu_si256((const __m256i *)(sr + 64 * sl));
                    const __m256i xh = _mm256_loadu_si256((const __m256i *)(sr + 64 * sl + 32));
                    const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh));
                    S = _mm256_add_epi32(S, _mm256_madd_epi16(s16, mul[sl]));
                }
                if (fmt == FMT_MX) S = _mm256_sub_epi32(S, _mm256_loadu_si256((const __m256i *)(sr + 64 * ns + 32)));
                const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(S), _mm256_loadu_ps((const float *)(sr + 64 * ns)));
                if (g32) {
                    acc[r] = _mm256_fmadd_ps(f, sw, acc[r]);
                } else {
                    g[r] = _mm256_add_ps(g[r], f);
                    if (flush) acc[r] = _mm256_fmadd_ps(g[r], sg, acc[r]), g[r] = _mm256_setzero_ps();
                }
                st[r] = sr + XI_STEP_BYTES(ns);
            }
        }
        for (int r = 0; r < MRV; r++) out[r][i] = qrow_rest(fmt, W, t->x[r], t->xsum[r], n[i], dm_hsum8(acc[r]));
    }
}

typedef void (*qrowi_fn)(const dm_cpu_wmat *, const qint *, const int64_t *, float[][P4]);
#define DEFINE_QROWI(NAME, FMT, NS, G32, MRV)                                                                    \
    DM_AVX2 static void NAME(const dm_cpu_wmat *W, const qint *t, const int64_t *n, float out[][P4]) {         \
        qrowi(FMT, NS, G32, MRV, W, t, n, out);                                                                \
    }
DEFINE_QROWI(qrowi2_mx, FMT_MX, 2, 1, 1)
DEFINE_QROWI(qrowi3_mx, FMT_MX, 3, 1, 1)
DEFINE_QROWI(qrowi2_i4s, FMT_I4, 2, 1, 1)
DEFINE_QROWI(qrowi3_i4s, FMT_I4, 3, 1, 1)
DEFINE_QROWI(qrowi2_i4, FMT_I4, 2, 0, 1)
DEFINE_QROWI(qrowi3_i4, FMT_I4, 3, 0, 1)
DEFINE_QROWI(qrowi2_mx_2, FMT_MX, 2, 1, 2)
DEFINE_QROWI(qrowi3_mx_2, FMT_MX, 3, 1, 2)
DEFINE_QROWI(qrowi2_i4s_2, FMT_I4, 2, 1, 2)
DEFINE_QROWI(qrowi3_i4s_2, FMT_I4, 3, 1, 2)
DEFINE_QROWI(qrowi2_i4_2, FMT_I4, 2, 0, 2)
DEFINE_QROWI(qrowi3_i4_2, FMT_I4, 3, 0, 2)

/* Quantized W: blocks of P4 weight rows; activation rows in blocks of 4
 * and 2 (never a padded activation row: each row's FMAs are the cost here).
 * 4-bit: the last rows (nt below) go through qrowi against their split
 * inputs (xbuf: ni rows of stride bytes, about 3 K (NS = 2) or 4 K (NS = 3)
 * each, within wbuf's 12 max(H, I) floats), or where a row's x
 * cannot be split, through qrow against the tail rows' inputs (2 K floats). */
DM_AVX2 static void skinny_quant(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                                 const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc, float *xbuf) {
    static const qblock_fn fns[4][3] = {{qblock1_fp8, qblock2_fp8, qblock4_fp8},
                                        {qblock1_mx, qblock2_mx, qblock4_mx},
                                        {qblock1_i4, qblock2_i4, qblock4_i4},
                                        {qblock1_i4s, qblock2_i4s, qblock4_i4}};
    const int f = W->fmt == DYNMOE_WEIGHTS_FP8_BLOCK ? 0 : W->fmt == DYNMOE_WEIGHTS_MXFP4 ? 1 : W->group < 64 ? 3 : 2;
    /* the integer path (qrowi) for M % 4 rows if 1 or 2, 1 if 3, both
     * formats, unless a row's x needs the float one */
    const int ns = W->dt == DYNMOE_F32 ? 3 : 2;
    const int32_t ni = f == 0 ? 0 : M % 4 == 3 ? 1 : M % 4;
    const int64_t stride = ((int64_t)(W->K / 64) * XI_STEP_BYTES(ns) + 4 * W->groups + 63) / 64 * 64;
    qint qi;
    qrowi_fn fi = NULL;
    int ok = ni > 0;
    for (int32_t j = 0; j < ni && ok; j++) {
        uint8_t *buf = (uint8_t *)xbuf + j * stride;
        qi.x[j] = A + (int64_t)(M - ni + j) * lda, qi.buf[j] = buf;
        qi.xsum[j] = (const float *)(buf + (int64_t)(W->K / 64) * XI_STEP_BYTES(ns));
        ok = xint_prep(W, qi.x[j], ns, buf, (float *)qi.xsum[j]);
    }
    if (ok) {
        static const qrowi_fn fis[2][3][2] = {
            {{qrowi2_mx, qrowi3_mx}, {qrowi2_i4, qrowi3_i4}, {qrowi2_i4s, qrowi3_i4s}},
            {{qrowi2_mx_2, qrowi3_mx_2}, {qrowi2_i4_2, qrowi3_i4_2}, {qrowi2_i4s_2, qrowi3_i4s_2}}};
        fi = fis[ni - 1][f - 1][ns - 2];
    }
    /* else the float path's tail rows: MXFP4 M % 4 if 1 or 2, 1 if 3; INT4
     * M % 2 (two INT4 rows measured no faster in qrow than in qblock2_i4:
     * 415 against 408 us) */
    const int32_t nt = fi ? ni : f == 0 ? 0 : f == 1 ? (M % 4 == 3 ? 1 : M % 4) : M % 2;
    const int32_t Mb = M - nt;
    qtail t;
    for (int32_t j = 0; j < nt && !fi; j++) {
        t.x[j] = A + (int64_t)(Mb + j) * lda;
        t.xp[j] = xbuf + (int64_t)j * W->K, t.xsum[j] = xbuf + (int64_t)j * W->groups; /* MXFP4 / INT4 */
        permute4(W, t.x[j], (float *)t.xp[j], (float *)t.xsum[j]);
    }
    const int nb = fi || nt == 1 ? P4 : 2; /* weight rows per qrowi / qrow call */
    for (int32_t n0 = n_begin; n0 < n_end; n0 += P4) {
        int64_t n[P4];
        float b[P4];
        for (int i = 0; i < P4; i++) {
            n[i] = n0 + i < n_end ? n0 + i : n_end - 1;
            b[i] = dm_cpu_bias(bias, W->dt, n[i]);
        }
        for (int i0 = 0; i0 < P4 && n0 + i0 < n_end; i0 += QNR)
            for (int32_t m0 = 0, mr; m0 < Mb; m0 += mr) {
                mr = Mb - m0 >= 4 ? 4 : Mb - m0 >= 2 ? 2 : 1;
                const float *a[MR];
                for (int j = 0; j < mr; j++) a[j] = A + (int64_t)(m0 + j) * lda;
                float out[MR][QNR];
                fns[f][mr == 4 ? 2 : mr - 1](W, a, n + i0, out);
                for (int j = 0; j < mr; j++)
                    for (int i = 0; i < QNR && n0 + i0 + i < n_end; i++)
                        C[(int64_t)(m0 + j) * ldc + n0 + i0 + i] = out[j][i] + b[i0 + i];
            }
        for (int i0 = 0; nt && i0 < P4 && n0 + i0 < n_end; i0 += nb) {
            float out[2][P4];
            if (fi) fi(W, &qi, n + i0, out);
            else (nt == 2 ? qrow2_mx : f == 1 ? qrow1_mx : qrow1_i4)(W, &t, n + i0, out);
            for (int j = 0; j < nt; j++)
                for (int i = 0; i < nb && n0 + i0 + i < n_end; i++)
                    C[(int64_t)(Mb + j) * ldc + n0 + i0 + i] = out[j][i] + b[i0 + i];
        }
    }
}

DM_AVX2 void dm_cpu_gemm_skinny_avx2(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                                     const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc, float *xbuf) {
    if (W->fmt != DYNMOE_WEIGHTS_PLAIN) {
        skinny_quant(M, n_begin, n_end, A, lda, W, bias, C, ldc, xbuf);
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
                             const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc, float *xbuf) {
    (void)M, (void)n_begin, (void)n_end, (void)A, (void)lda, (void)W, (void)bias, (void)C, (void)ldc, (void)xbuf;
}

#endif
