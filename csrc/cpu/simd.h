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

/* Row n of m as K floats (cpu.h, dm_cpu_weight_row), 8 at a time: the row
 * itself for PLAIN f32, else widened into buf. */
DM_AVX2 static inline const float *dm_cpu_weight_row_avx2(const dm_cpu_wmat *m, int64_t n, float *buf) {
    const char *row = m->w + n * m->row_bytes;
    const int32_t K = m->K;
    int32_t k = 0;
    switch (m->fmt) {
    case DYNMOE_WEIGHTS_PLAIN:
        if (m->dt == DYNMOE_F32) return (const float *)row;
        if (m->dt == DYNMOE_BF16)
            for (; k + 8 <= K; k += 8) _mm256_storeu_ps(buf + k, dm_load8_bf16(row, k));
        else
            for (; k + 8 <= K; k += 8) _mm256_storeu_ps(buf + k, dm_load8_f16(row, k));
        for (; k < K; k++) buf[k] = dm_load(row, m->dt, k);
        return buf;
    default: return dm_cpu_weight_row(m, n, buf);
    }
}

#endif

#endif
