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
        for (int i = 0; i < NB; i++) {
            const float *x = t->x[j];
            __m256 r = _mm256_setzero_ps();
            int32_t k = K64;
            for (; k + 8 <= K; k += 8) {
                const qscale q = group_scale(W, n[i], k / G);
                r = _mm256_fmadd_ps(_mm256_loadu_ps(x + k),
                                    dec8(fmt, 0, p[i], k, DM_E2M1_F16HI, _mm256_set1_ps(q.v), _mm256_set1_ps(q.c)), r);
            }
            float u = dm_hsum8(acc[j][i]) + dm_hsum8(r);
            for (; k < K; k++) u += x[k] * dec1(fmt, p[i], k, group_scale(W, n[i], k / G));
            if (fmt == FMT_I4) /* the zero points: Σ_g -z·s·Σ x */
                for (int32_t k0 = 0, gi = 0; k0 < K64; k0 += G, gi++) u += group_scale(W, n[i], gi).c * t->xsum[j][gi];
            out[j][i] = u;
        }
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

/* Quantized W: blocks of P4 weight rows; activation rows in blocks of 4
 * and 2 (never a padded activation row: each row's FMAs are the cost here).
 * 4-bit: the last rows (nt below) go through qrow against the tail rows'
 * inputs (xbuf: 2 K floats). */
DM_AVX2 static void skinny_quant(int32_t M, int32_t n_begin, int32_t n_end, const float *A, int32_t lda,
                                 const dm_cpu_wmat *W, const void *bias, float *C, int32_t ldc, float *xbuf) {
    static const qblock_fn fns[4][3] = {{qblock1_fp8, qblock2_fp8, qblock4_fp8},
                                        {qblock1_mx, qblock2_mx, qblock4_mx},
                                        {qblock1_i4, qblock2_i4, qblock4_i4},
                                        {qblock1_i4s, qblock2_i4s, qblock4_i4}};
    const int f = W->fmt == DYNMOE_WEIGHTS_FP8_BLOCK ? 0 : W->fmt == DYNMOE_WEIGHTS_MXFP4 ? 1 : W->group < 64 ? 3 : 2;
    /* tail rows: MXFP4 M % 4 if 1 or 2, 1 if 3; INT4 M % 2 (two INT4 rows
     * measured no faster in qrow than in qblock2_i4: 415 against 408 us) */
    const int32_t nt = f == 0 ? 0 : f == 1 ? (M % 4 == 3 ? 1 : M % 4) : M % 2;
    const int32_t Mb = M - nt;
    qtail t;
    for (int32_t j = 0; j < nt; j++) {
        t.x[j] = A + (int64_t)(Mb + j) * lda;
        t.xp[j] = xbuf + (int64_t)j * W->K, t.xsum[j] = xbuf + (int64_t)j * W->groups; /* MXFP4 / INT4 */
        permute4(W, t.x[j], (float *)t.xp[j], (float *)t.xsum[j]);
    }
    const int nb = nt == 1 ? 4 : 2; /* weight rows per qrow call */
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
            (nt == 2 ? qrow2_mx : f == 1 ? qrow1_mx : qrow1_i4)(W, &t, n + i0, out);
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
