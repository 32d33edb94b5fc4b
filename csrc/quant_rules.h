/*
 * quant_rules.h — the quantized weight formats of dynmoe_weight_format once:
 * how one stored value decodes to fp32 and where its scale sits. Host C and
 * CUDA share it (DYNMOE_HD); the CPU and CUDA kernels widen whole blocks with
 * their own vector code but must agree with these scalar rules, and
 * tests/reference/ decodes the formats again, independently, in double.
 *
 * A matrix [E, N, K] of one expert is addressed by row n and column k; the
 * expert's base pointers (weights, scales, zeros) are given already offset to
 * that expert.
 */
#ifndef DYNMOE_QUANT_RULES_H
#define DYNMOE_QUANT_RULES_H

#include "hd.h"

/* FP8_BLOCK and MXFP4 blocks, along N and K (FP8) or K (MXFP4). */
#define DM_FP8_BLOCK 128
#define DM_MXFP4_BLOCK 32

/* float8 e4m3fn (OCP FP8): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no
 * infinities, S.1111.111 is NaN; subnormals m * 2^-9. */
DYNMOE_HD float dm_fp8e4m3_to_f32(uint8_t q) {
    const uint32_t sign = (uint32_t)(q & 0x80u) << 24;
    const uint32_t exp = (q >> 3) & 0xfu, man = q & 0x7u;
    if (exp == 0xfu && man == 0x7u) return dm_bits_to_f32(sign | 0x7fc00000u);
    if (exp == 0) {
        const float v = (float)man * 0.001953125f; /* 2^-9 */
        return sign ? -v : v;
    }
    return dm_bits_to_f32(sign | ((exp + 120u) << 23) | (man << 20));
}

/* e2m1 (OCP MX FP4): 1 sign, 2 exponent (bias 1), 1 mantissa bit:
 * 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives. */
DYNMOE_HD float dm_e2m1_to_f32(uint32_t nibble) {
    const uint32_t mag = nibble & 7u;
    /* exponent e = mag >> 1, mantissa m = mag & 1: e == 0 -> m / 2, else (1 + m/2) 2^(e-1) */
    const float v = (mag >> 1) == 0 ? 0.5f * (float)(mag & 1u)
                                     : (1.0f + 0.5f * (float)(mag & 1u)) * (float)(1u << ((mag >> 1) - 1u));
    return (nibble & 8u) ? -v : v;
}

/* ue8m0 (OCP MX scale): 2^(s - 127); 0xff is NaN. s = 0 is 2^-127, a
 * subnormal fp32. */
DYNMOE_HD float dm_ue8m0_to_f32(uint8_t s) {
    if (s == 0xffu) return dm_bits_to_f32(0x7fc00000u);
    if (s == 0) return dm_bits_to_f32(0x00400000u);
    return dm_bits_to_f32((uint32_t)s << 23);
}

/* Element k of a row of 4-bit values, two per byte, even k in the low nibble. */
DYNMOE_HD uint32_t dm_nibble(const uint8_t *row, int64_t k) {
    const uint32_t b = row[k >> 1];
    return (k & 1) ? b >> 4 : b & 0xfu;
}

/* Bytes of one stored row of K values. */
DYNMOE_HD int64_t dm_quant_row_bytes(dynmoe_weight_format f, dynmoe_dtype dt, int64_t K) {
    switch (f) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: return K;
    case DYNMOE_WEIGHTS_MXFP4:
    case DYNMOE_WEIGHTS_INT4: return (K + 1) / 2;
    default: return K * (int64_t)dm_dtype_size(dt);
    }
}

/* Scale (and zero point) entries per row of K values (MXFP4, INT4) or per
 * 128-row block (FP8_BLOCK); group is INT4's group size. */
DYNMOE_HD int64_t dm_quant_groups(dynmoe_weight_format f, int64_t K, int32_t group) {
    switch (f) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: return (K + DM_FP8_BLOCK - 1) / DM_FP8_BLOCK;
    case DYNMOE_WEIGHTS_MXFP4: return K / DM_MXFP4_BLOCK;
    case DYNMOE_WEIGHTS_INT4: return (K + group - 1) / group;
    default: return 0;
    }
}

/* Scale entries of one expert's [N, K] matrix. */
DYNMOE_HD int64_t dm_quant_scales_per_expert(dynmoe_weight_format f, int64_t N, int64_t K, int32_t group) {
    if (f == DYNMOE_WEIGHTS_FP8_BLOCK) return (N + DM_FP8_BLOCK - 1) / DM_FP8_BLOCK * dm_quant_groups(f, K, group);
    return N * dm_quant_groups(f, K, group);
}

/* Element (n, k) of one expert's quantized [N, K] matrix as fp32. w, scale
 * and zero (INT4 only, may be NULL: zero point 8) point at that expert's
 * first entry; scale is fp32 (FP8_BLOCK), ue8m0 bytes (MXFP4) or fp16 bits
 * (INT4). */
DYNMOE_HD float dm_dequant(dynmoe_weight_format f, const void *w, const void *scale, const void *zero, int64_t K,
                           int32_t group, int64_t n, int64_t k) {
    const uint8_t *row = (const uint8_t *)w + n * dm_quant_row_bytes(f, DYNMOE_F32, K);
    const int64_t groups = dm_quant_groups(f, K, group);
    switch (f) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: {
        const float s = ((const float *)scale)[(n / DM_FP8_BLOCK) * groups + k / DM_FP8_BLOCK];
        return dm_fp8e4m3_to_f32(row[k]) * s;
    }
    case DYNMOE_WEIGHTS_MXFP4:
        return dm_e2m1_to_f32(dm_nibble(row, k)) * dm_ue8m0_to_f32(((const uint8_t *)scale)[n * groups + k / DM_MXFP4_BLOCK]);
    case DYNMOE_WEIGHTS_INT4: {
        const int64_t gi = n * groups + k / group;
        const float s = dm_f16_to_f32(((const uint16_t *)scale)[gi]);
        const float z = zero ? (float)((const uint8_t *)zero)[gi] : 8.0f;
        return ((float)dm_nibble(row, k) - z) * s;
    }
    default: return 0.0f;
    }
}

#endif /* DYNMOE_QUANT_RULES_H */
