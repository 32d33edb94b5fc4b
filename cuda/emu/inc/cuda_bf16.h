/* Host stand-in of cuda_bf16.h: the conversions the kernels use. bfloat16 is the top half of
 * an IEEE binary32; __float2bfloat16_rn rounds to nearest even, a NaN stays a quiet NaN. */
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 { uint16_t bits; };
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40u)};
    const uint32_t lsb = (u >> 16) & 1u;
    return {(uint16_t)((u + 0x7fffu + lsb) >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = (uint32_t)h.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }
