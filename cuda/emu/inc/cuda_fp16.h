/* Host stand-in of cuda_fp16.h: the conversions the kernels use. IEEE binary16, round to
 * nearest even, subnormals kept: the compiler's _Float16 where it has one, else by bits. */
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

struct __half { uint16_t bits; };
inline __half __float2half_rn(float f) {
#ifdef __FLT16_MAX__
    const _Float16 h = (_Float16)f;
    __half r;
    memcpy(&r.bits, &h, 2);
    return r;
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return {(uint16_t)(sign | 0x7e00u)};
    if (a >= 0x477ff000u) return {(uint16_t)(sign | 0x7c00u)}; /* >= 65520 rounds to inf */
    if (a < 0x38800000u) return {(uint16_t)(sign | (uint16_t)nearbyint(fabs((double)f) * 16777216.0))};
    const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return {(uint16_t)(sign | ((r - (112u << 23)) >> 13))};
#endif
}
inline float __half2float(__half h) {
#ifdef __FLT16_MAX__
    _Float16 v;
    memcpy(&v, &h.bits, 2);
    return (float)v;
#else
    const uint32_t e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
    const float s = (h.bits & 0x8000u) ? -1.0f : 1.0f;
    if (e == 0) return s * (float)m * 5.9604644775390625e-8f;
    if (e == 31) return m ? NAN : s * INFINITY;
    return s * ldexpf((float)(m | 0x400u), (int)e - 25);
#endif
}
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
