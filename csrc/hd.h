/*
 * hd.h — the DYNMOE_HD macro and the scalar helpers that host C and CUDA
 * share: dtype conversion (bit exact on both sides) and float classification.
 * Plain C11 when compiled by a C compiler; __host__ __device__ under nvcc.
 */
#ifndef DYNMOE_HD_H
#define DYNMOE_HD_H

#include <stdint.h>
#include <string.h>

#include "dynmoe.h"

#ifdef __CUDACC__
#define DYNMOE_HD __host__ __device__ __forceinline__
#else
#define DYNMOE_HD static inline
#endif

/* A float is finite when its exponent bits are not all ones. Written on the
 * bits so that -ffast-math or a device compiler cannot fold it away. */
DYNMOE_HD int dm_isfinite(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (u & 0x7f800000u) != 0x7f800000u;
}

DYNMOE_HD float dm_neg_inf(void) {
    uint32_t u = 0xff800000u;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

DYNMOE_HD float dm_bits_to_f32(uint32_t u) {
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

DYNMOE_HD uint32_t dm_f32_to_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* bf16 is the top half of an fp32. */
DYNMOE_HD float dm_bf16_to_f32(uint16_t h) { return dm_bits_to_f32((uint32_t)h << 16); }

/* Round to nearest even; NaN stays a (quiet) NaN. */
DYNMOE_HD uint16_t dm_f32_to_bf16(float v) {
    uint32_t u = dm_f32_to_bits(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* IEEE binary16 -> fp32, subnormals included. */
DYNMOE_HD float dm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) return dm_bits_to_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return dm_bits_to_f32(sign);
        /* subnormal: man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return dm_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* fp32 -> IEEE binary16, round to nearest even, overflow to inf. */
DYNMOE_HD uint16_t dm_f32_to_f16(float v) {
    uint32_t u = dm_f32_to_bits(v);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);          /* NaN */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);         /* >= 65520: inf */
    if (abs < 0x38800000u) {                                           /* < 2^-14: subnormal */
        /* value = abs_f * 2^24 rounded to an integer number of 2^-24 units */
        float a = dm_bits_to_f32(abs) * 16777216.0f;
        uint32_t m = (uint32_t)a;
        float frac = a - (float)m;
        if (frac > 0.5f || (frac == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u); /* round mantissa to 10 bits */
    return (uint16_t)(sign | (((r >> 23) - 112u) << 10) | ((r >> 13) & 0x3ffu));
}

/* Element i of a tensor of dtype dt, as fp32. */
DYNMOE_HD float dm_load(const void *p, dynmoe_dtype dt, int64_t i) {
    switch (dt) {
    case DYNMOE_F16: return dm_f16_to_f32(((const uint16_t *)p)[i]);
    case DYNMOE_BF16: return dm_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

DYNMOE_HD void dm_store(void *p, dynmoe_dtype dt, int64_t i, float v) {
    switch (dt) {
    case DYNMOE_F16: ((uint16_t *)p)[i] = dm_f32_to_f16(v); break;
    case DYNMOE_BF16: ((uint16_t *)p)[i] = dm_f32_to_bf16(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

DYNMOE_HD size_t dm_dtype_size(dynmoe_dtype dt) { return dt == DYNMOE_F32 ? 4u : 2u; }

#endif /* DYNMOE_HD_H */
