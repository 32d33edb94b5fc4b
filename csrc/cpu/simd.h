/* cpu/simd.h — what the hand-written AVX2 kernels share (gemm_skinny.c,
 * ffn_panels.c): the target attribute and 8-wide loaders per dtype (the run
 * time check is dm_cpu_isa_best() in isa.c). Defines DM_CPU_X86 on x86-64. */
#ifndef DYNMOE_CPU_SIMD_H
#define DYNMOE_CPU_SIMD_H

#if defined(__x86_64__) && defined(__GNUC__)
#define DM_CPU_X86 1
#include <cpuid.h>
#include <immintrin.h>

#include "../hd.h"
#include "cpu.h"

#define DM_AVX2 __attribute__((target("avx2,fma,f16c")))

/* Eight elements from index i, widened to fp32: one loader per dtype so that
 * inner loops have no branch. */
DM_AVX2 static inline __m256 dm_load8_f32(const void *w, int64_t i) { return _mm256_loadu_ps((const float *)w + i); }
DM_AVX2 static inline __m256 dm_load8_bf16(const void *w, int64_t i) {
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
DM_AVX2 static inline __m256 dm_load8_f16(const void *w, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
}

/* The sum of the 8 lanes. */
DM_AVX2 static inline float dm_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight 4-bit values from 4 bytes, element k in nibble k (low first), as int32 lanes. */
DM_AVX2 static inline __m256i dm_nibbles8(const uint8_t *p) {
    uint32_t u;
    memcpy(&u, p, sizeof u);
    const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)u), sh), _mm256_set1_epi32(0xf));
}

/* The fp8 and e2m1 decoders (skinny kernel and row widening) go through fp16 and F16C's
 * vcvtph2ps (8 values per instruction): the integer work is done on 16-bit
 * lanes, 16 values per instruction, instead of 32-bit lanes. */

/* float8 e4m3fn codes as the fp16 codes of value * 2^-8, exactly: with the
 * byte in a 16-bit lane's high byte, an arithmetic shift right by 1 puts the
 * 4 exponent and 3 mantissa bits in fp16's fields (fp16's bias 15 = e4m3's
 * 7 + 8, so every normal and subnormal lands on value * 2^-8; subnormals stay
 * subnormals of fp16, which vcvtph2ps converts exactly whatever MXCSR says);
 * the sign's copy in bit 14 is cleared. S.1111.111 would land on 1.875: it
 * becomes 0xffff, an fp16 NaN (quant_rules.h: the code is NaN). The caller
 * folds the 2^8 into the block scale. */
/* The rule on 16-bit lanes u = code << 8: h = (u >> 1, arithmetic) without
 * the sign's copy in bit 14; the NaN codes (u | 0x8000 == 0xff00, both signs:
 * an OR and a compare, which run on any vector pipe, where a shift runs on
 * two) become 0xffff. */
DM_AVX2 static inline __m256i dm_fp8_lanes16(__m256i u) {
    const __m256i h = _mm256_and_si256(_mm256_srai_epi16(u, 1), _mm256_set1_epi16((short)0xbfff));
    const __m256i nan = _mm256_cmpeq_epi16(_mm256_or_si256(u, _mm256_set1_epi16((short)0x8000)),
                                           _mm256_set1_epi16((short)0xff00));
    return _mm256_or_si256(h, nan);
}
/* 16 codes as 16 fp16 in k order. */
DM_AVX2 static inline __m256i dm_fp8x16_f16(const uint8_t *p) {
    return dm_fp8_lanes16(_mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), 8));
}
/* 32 codes as 4 x 8 fp16 in k order: unpacking with zero puts each code in
 * its lane's high byte directly (one shuffle per 16 codes, no widening and
 * shift); the 128-bit halves of the unpacks hold k 0-7 | 16-23 and 8-15 |
 * 24-31. */
DM_AVX2 static inline void dm_fp8x32_f16(const uint8_t *p, __m128i h[4]) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)p), z = _mm256_setzero_si256();
    const __m256i lo = dm_fp8_lanes16(_mm256_unpacklo_epi8(z, b)), hi = dm_fp8_lanes16(_mm256_unpackhi_epi8(z, b));
    h[0] = _mm256_castsi256_si128(lo), h[1] = _mm256_castsi256_si128(hi);
    h[2] = _mm256_extracti128_si256(lo, 1), h[3] = _mm256_extracti128_si256(hi, 1);
}
/* dm_fp8x32_f16 without the NaN rule, for a caller that applies it per
 * row instead: the codes' bytes | 0x80 go into *top by an unsigned max, so
 * a row had a NaN code exactly when a byte of *top is 0xff (its NaN lanes
 * decode to 1.875 * 2^-8 here, finite). 2 instructions per 32 codes instead
 * of 6. */
DM_AVX2 static inline void dm_fp8x32_f16_nonan(const uint8_t *p, __m128i h[4], __m256i *top) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)p), z = _mm256_setzero_si256();
    const __m256i m = _mm256_set1_epi16((short)0xbfff);
    *top = _mm256_max_epu8(*top, _mm256_or_si256(b, _mm256_set1_epi8((char)0x80)));
    const __m256i lo = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpacklo_epi8(z, b), 1), m);
    const __m256i hi = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpackhi_epi8(z, b), 1), m);
    h[0] = _mm256_castsi256_si128(lo), h[1] = _mm256_castsi256_si128(hi);
    h[2] = _mm256_extracti128_si256(lo, 1), h[3] = _mm256_extracti128_si256(hi, 1);
}
/* Whether *top (dm_fp8x32_f16_nonan) saw a NaN code. */
DM_AVX2 static inline int dm_fp8_top_nan(__m256i top) {
    return _mm256_movemask_epi8(_mm256_cmpeq_epi8(top, _mm256_set1_epi8((char)0xff))) != 0;
}
/* The same for 8 codes. */
DM_AVX2 static inline __m128i dm_fp8x8_f16(const uint8_t *p) {
    const __m128i u = _mm_unpacklo_epi8(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)p));
    const __m128i h = _mm_and_si128(_mm_srai_epi16(u, 1), _mm_set1_epi16((short)0xbfff));
    const __m128i nan = _mm_cmpeq_epi16(_mm_or_si128(u, _mm_set1_epi16((short)0x8000)), _mm_set1_epi16((short)0xff00));
    return _mm_or_si128(h, nan);
}
#define DM_FP8_F16_SCALE 256.0f /* dm_fp8x16_f16's values times this are the e4m3 values */

/* e2m1 codes by table: every e2m1 value is an fp16 whose low byte is 0, so
 * one pshufb maps 16 codes to their fp16 high bytes. */
#define DM_E2M1_F16HI                                                                                             \
    _mm_setr_epi8(0x00, 0x38, 0x3c, 0x3e, 0x40, 0x42, 0x44, 0x46, (char)0x80, (char)0xb8, (char)0xbc, (char)0xbe,  \
                  (char)0xc0, (char)0xc2, (char)0xc4, (char)0xc6) /* 0 .5 1 1.5 2 3 4 6, then negated */
/* 32 codes from 16 bytes (element k in nibble k, low first) as 4 x 8 fp16
 * in k order: low and high nibbles looked up apart, re-interleaved bytewise
 * into k order, then each byte becomes the high byte of a 16-bit lane. */
DM_AVX2 static inline void dm_lut4x32_f16(const uint8_t *p, __m128i lut, __m128i h[4]) {
    const __m128i b = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(0x0f), z = _mm_setzero_si128();
    const __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(b, m));
    const __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(b, 4), m));
    const __m128i k0 = _mm_unpacklo_epi8(lo, hi), k1 = _mm_unpackhi_epi8(lo, hi);
    h[0] = _mm_unpacklo_epi8(z, k0), h[1] = _mm_unpackhi_epi8(z, k0);
    h[2] = _mm_unpacklo_epi8(z, k1), h[3] = _mm_unpackhi_epi8(z, k1);
}
/* The same for 8 codes from 4 bytes. */
DM_AVX2 static inline __m128i dm_lut4x8_f16(const uint8_t *p, __m128i lut) {
    int32_t u;
    memcpy(&u, p, sizeof u);
    const __m128i b = _mm_cvtsi32_si128(u), m = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(b, m));
    const __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(b, 4), m));
    return _mm_unpacklo_epi8(_mm_setzero_si128(), _mm_unpacklo_epi8(lo, hi));
}

/* 64 codes from 32 bytes b (element k in nibble k, low first) as 4 x 16 fp16,
 * one shift, AND and pshufb each and no re-interleaving: 16-bit lane j of
 * the bytes holds elements 4j .. 4j+3; each is moved into the lane's high
 * byte's low nibble (<< 8, << 4, as is, >> 4), the rest masked off, so the
 * high byte indexes the table (lut in both 128-bit halves) and the low byte,
 * 0, looks up entry 0, which is e2m1's +0 (fp16 0x0000: the lane's low byte
 * comes out 0 without a second index). So h[v] lane j is element 4j + v, and
 * its 128-bit halves are elements 4i + v and 32 + 4i + v (i = 0..7): the
 * caller pairs them with the activations permuted the same way. */
DM_AVX2 static inline void dm_lut4x64_f16(__m256i b, __m256i lut, __m256i h[4]) {
    const __m256i m = _mm256_set1_epi16(0x0f00);
    h[0] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_slli_epi16(b, 8), m));
    h[1] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_slli_epi16(b, 4), m));
    h[2] = _mm256_shuffle_epi8(lut, _mm256_and_si256(b, m));
    h[3] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), m));
}
/* Where dm_lut4x64_f16 puts element k of a 64-step: vector v = k % 4,
 * 128-bit half k / 32, lane k / 4 % 8, i.e. float (k % 4) * 16 + (k / 32) * 8
 * + k / 4 % 8 of the permuted activations. */
static inline int32_t dm_lut4x64_slot(int32_t k) { return (k % 4) * 16 + (k / 32) * 8 + k / 4 % 8; }

/* ---- the panel kernels' GEMM 1 epilogue (ffn_panels.c, ffn_avx512.c) ---- */

/* SiLU(g) = g / (1 + e^-g) on 8 lanes. e^x as in Cephes expf: x = n ln2 + r,
 * a degree-6 polynomial for e^r, 2^n in the exponent bits; within 2 ulp, and
 * g / (1 + inf) = -0 below -88. NaN in, NaN out (the final g / ...). */
DM_AVX2 static inline __m256 dm_silu8(__m256 g) {
    __m256 x = _mm256_max_ps(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), g), _mm256_set1_ps(88.3762626647949f)),
                             _mm256_set1_ps(-88.3762626647949f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), y));
}

/* GEMM 1's epilogue on 8 panel rows: h = s * acc + b13 (s: the rows' scales,
 * cpu.h dm_cpu_row_scale), then the activation. SwiGLU and SiLU stay in
 * vector code (dm_silu8); the others go through dm_activate lane by lane. */
DM_AVX2 static inline void dm_unit_epilogue8(const dynmoe_experts *ex, __m256 s, __m256 g, float bg, __m256 u, float bu,
                                             float *d) {
    g = _mm256_fmadd_ps(g, s, _mm256_set1_ps(bg));
    u = _mm256_fmadd_ps(u, s, _mm256_set1_ps(bu));
    if (ex->act == DYNMOE_ACT_SWIGLU) {
        _mm256_storeu_ps(d, _mm256_mul_ps(dm_silu8(g), u));
    } else if (ex->act == DYNMOE_ACT_SILU) {
        _mm256_storeu_ps(d, dm_silu8(g));
    } else {
        float gv[8], uv[8];
        _mm256_storeu_ps(gv, g), _mm256_storeu_ps(uv, u);
        for (int j = 0; j < 8; j++) d[j] = dm_activate(ex->act, ex->alpha, ex->limit, gv[j], uv[j]);
    }
}

/* Row n of m as K floats (cpu.h, dm_cpu_weight_row), 8 at a time, each
 * stored byte read once: the row itself for PLAIN f32, else widened or
 * dequantized into buf with the group's scale (and zero point) hoisted.
 * Groups are multiples of 8 long, so a vector never straddles two; the K
 * tail goes through quant_rules.h's scalar rules. fp8 and e2m1 go through
 * fp16 (the decoders above); every step is exact up to the one product
 * with the scale, so the floats are those of the scalar rules. */
DM_AVX2 static inline const float *dm_cpu_weight_row_avx2(const dm_cpu_wmat *m, int64_t n, float *buf) {
    const uint8_t *row = (const uint8_t *)m->w + n * m->row_bytes;
    const int32_t K = m->K;
    int32_t k = 0;
    switch (m->fmt) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: {
        const float *sc = (const float *)m->scale + (n / DM_FP8_BLOCK) * m->groups;
        for (int32_t k0 = 0; k0 < K; k0 += DM_FP8_BLOCK) {
            const int32_t kend = K < k0 + DM_FP8_BLOCK ? K : k0 + DM_FP8_BLOCK;
            const float s = sc[k0 / DM_FP8_BLOCK];
            /* (value * 2^-8) * (s * 2^8): both factors exact, so the product rounds as value * s */
            const __m256 sv = _mm256_set1_ps(s * DM_FP8_F16_SCALE);
            for (k = k0; k + 16 <= kend; k += 16) {
                const __m256i h = dm_fp8x16_f16(row + k);
                _mm256_storeu_ps(buf + k, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), sv));
                _mm256_storeu_ps(buf + k + 8, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), sv));
            }
            for (; k + 8 <= kend; k += 8) _mm256_storeu_ps(buf + k, _mm256_mul_ps(_mm256_cvtph_ps(dm_fp8x8_f16(row + k)), sv));
            for (; k < kend; k++) buf[k] = dm_fp8e4m3_to_f32(row[k]) * s;
        }
        return buf;
    }
    case DYNMOE_WEIGHTS_MXFP4: {
        const uint8_t *sc = (const uint8_t *)m->scale + n * m->groups;
        for (int32_t k0 = 0; k0 < K; k0 += DM_MXFP4_BLOCK) { /* K % 32 == 0 */
            const __m256 sv = _mm256_set1_ps(dm_ue8m0_to_f32(sc[k0 / DM_MXFP4_BLOCK]));
            __m128i h[4]; /* e2m1 values are exact in fp16: the same floats as dm_e2m1x8's */
            dm_lut4x32_f16(row + k0 / 2, DM_E2M1_F16HI, h);
            for (int q = 0; q < 4; q++) _mm256_storeu_ps(buf + k0 + 8 * q, _mm256_mul_ps(_mm256_cvtph_ps(h[q]), sv));
        }
        return buf;
    }
    case DYNMOE_WEIGHTS_INT4: {
        const uint16_t *sc = (const uint16_t *)m->scale + n * m->groups;
        const uint8_t *zr = m->zero ? (const uint8_t *)m->zero + n * m->groups : NULL;
        for (int32_t k0 = 0, gi = 0; k0 < K; k0 += m->group, gi++) {
            const int32_t kend = K < k0 + m->group ? K : k0 + m->group;
            const float s = dm_f16_to_f32(sc[gi]), z = zr ? (float)zr[gi] : 8.0f;
            const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
            for (k = k0; k + 8 <= kend; k += 8)
                _mm256_storeu_ps(buf + k,
                                 _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(dm_nibbles8(row + k / 2)), zv), sv));
            for (; k < kend; k++) buf[k] = ((float)dm_nibble(row, k) - z) * s;
        }
        return buf;
    }
    default:
        if (m->dt == DYNMOE_F32) return (const float *)row;
        if (m->dt == DYNMOE_BF16)
            for (; k + 8 <= K; k += 8) _mm256_storeu_ps(buf + k, dm_load8_bf16(row, k));
        else
            for (; k + 8 <= K; k += 8) _mm256_storeu_ps(buf + k, dm_load8_f16(row, k));
        for (; k < K; k++) buf[k] = dm_load(row, m->dt, k);
        return buf;
    }
}

/* ---- what both panel kernels (ffn_panels.c, ffn_avx512.c) do around their tiles ---- */

/* Twice the stored bytes of one weight (the pace of the next-block prefetch). */
static inline size_t dm_cpu_stored_esz2(const dm_cpu_wmat *m) {
    switch (m->fmt) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: return 2;
    case DYNMOE_WEIGHTS_MXFP4:
    case DYNMOE_WEIGHTS_INT4: return 1;
    default: return 2 * dm_dtype_size(m->dt);
    }
}

/* GEMM 1's block of `units` hidden units from n0 (12 rows: gated, the gate
 * rows of units n0..n0+5 then their up rows; non-gated, the rows of units
 * n0..n0+11; past the edge the last unit again): wr[i] the row as floats
 * (widened into wbuf + i * H where needed), pf[i] the next block's row as
 * stored, bias[i] its b13 entry (b0: this expert's first). */
DM_AVX2 static inline void dm_cpu_gemm1_block(const dynmoe_experts *ex, const dm_cpu_wmat *m, int64_t b0, int32_t n0,
                                              float *wbuf, const float *wr[12], const char *pf[12], float bias[12]) {
    const int32_t In = ex->inter, units = dm_cpu_gemm1_units(ex->act);
    const int gated = dm_act_gated(ex->act);
    for (int i = 0; i < 12; i++) {
        const int32_t j = gated ? i % 6 : i, u = n0 + j < In ? n0 + j : In - 1;
        const int32_t un = n0 + units + j < In ? n0 + units + j : In - 1; /* next block */
        const int up = gated && i >= 6;
        const int64_t row = up ? dm_up_row(ex->gate_up, In, u) : dm_gate_row(ex->gate_up, In, u);
        const int64_t rown = up ? dm_up_row(ex->gate_up, In, un) : dm_gate_row(ex->gate_up, In, un);
        wr[i] = dm_cpu_weight_row_avx2(m, row, wbuf + (size_t)i * ex->hidden);
        pf[i] = m->w + rown * m->row_bytes;
        bias[i] = dm_cpu_bias(ex->b13, ex->dtype, b0 + row);
    }
}

/* GEMM 1's epilogue for up to 2 plain rows: h[j][i] the accumulators of
 * row j against block row i, sc[j] the rows' scales; unit n0 + i of row j
 * into ad[j * I + n0 + i]. */
static inline void dm_cpu_plain_units(const dynmoe_experts *ex, int nr, float h[2][12], const float *sc,
                                      const float bias[12], int32_t n0, float *ad) {
    const int gated = dm_act_gated(ex->act);
    for (int j = 0; j < nr; j++)
        for (int i = 0; i < (gated ? 6 : 12) && n0 + i < ex->inter; i++)
            ad[(int64_t)j * ex->inter + n0 + i] = gated ? dm_cpu_unit(ex, sc[j], h[j][i], bias[i], h[j][6 + i], bias[6 + i])
                                                        : dm_cpu_unit(ex, sc[j], h[j][i], bias[i], 0.0f, 0.0f);
}

#endif

#endif
