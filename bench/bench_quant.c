/* bench_quant.c — the bench's encoder into dynmoe's quantized weight formats
 * (see bench_quant.h). Napkin math: Qwen3-30B-A3B's 201 M expert weights
 * encode in about a second on 2 cores; the layer itself is timed afterwards. */
#include "bench_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench_dev.h" /* convert_from_f32 */
#include "hd.h"        /* dm_f16_to_f32: the library's own fp16 reading */

const char *bq_format_name(dynmoe_weight_format f) {
    switch (f) {
    case DYNMOE_WEIGHTS_PLAIN: return "plain";
    case DYNMOE_WEIGHTS_FP8_BLOCK: return "fp8_block";
    case DYNMOE_WEIGHTS_MXFP4: return "mxfp4";
    case DYNMOE_WEIGHTS_INT4: return "int4";
    default: return "?";
    }
}

bq_bytes bq_matrix_bytes(dynmoe_weight_format f, dynmoe_dtype dt, int64_t N, int64_t K, int32_t group, int zeros) {
    bq_bytes b = {0, 0, 0};
    switch (f) {
    case DYNMOE_WEIGHTS_FP8_BLOCK:
        b.q = (size_t)(N * K);
        b.scale = (size_t)((N + 127) / 128 * ((K + 127) / 128)) * 4;
        break;
    case DYNMOE_WEIGHTS_MXFP4:
        b.q = (size_t)(N * ((K + 1) / 2));
        b.scale = (size_t)(N * (K / 32));
        break;
    case DYNMOE_WEIGHTS_INT4:
        b.q = (size_t)(N * ((K + 1) / 2));
        b.scale = (size_t)(N * ((K + group - 1) / group)) * 2;
        b.zero = zeros ? (size_t)(N * ((K + group - 1) / group)) : 0;
        break;
    default: b.q = (size_t)(N * K) * dtype_size(dt); break;
    }
    return b;
}

/* ---- single values ---- */

uint8_t bq_f32_to_e4m3(float v) {
    const uint8_t sign = signbit(v) ? 0x80 : 0;
    const float a = fabsf(v);
    if (isnan(a)) return 0x7f;
    if (a >= 448.0f) return sign | 0x7e;                          /* 1.75 * 2^8, the largest finite */
    if (a < 0.015625f) return sign | (uint8_t)lrintf(a * 512.0f); /* subnormal m * 2^-9; m = 8 is 2^-6 */
    int e;
    const float fr = frexpf(a, &e); /* a = (2 fr) 2^(e-1), 2 fr in [1, 2) */
    int m = (int)lrintf((2.0f * fr - 1.0f) * 8.0f), be = e - 1 + 7;
    if (m == 8) m = 0, be++;
    if (be > 15 || (be == 15 && m == 7)) return sign | 0x7e;
    return sign | (uint8_t)(be << 3) | (uint8_t)m;
}

uint8_t bq_f32_to_e2m1(float v) {
    static const float mid[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f}; /* between 0 .5 1 1.5 2 3 4 6 */
    const float a = fabsf(v);
    uint8_t m = 0;
    while (m < 7 && a > mid[m]) m++;
    return (uint8_t)((signbit(v) ? 8 : 0) | m);
}

uint8_t bq_ue8m0_for(float amax) {
    if (!(amax > 0)) return 127;
    int e;
    const float fr = frexpf(amax / 6.0f, &e); /* amax/6 = fr 2^e, fr in [0.5, 1): ceil(log2) = e, or e-1 at fr 0.5 */
    int s = 127 + (fr == 0.5f ? e - 1 : e);
    return (uint8_t)(s < 1 ? 1 : s > 254 ? 254 : s);
}

/* ---- rows ---- */

static uint64_t mix(uint64_t z) { /* splitmix64 finaliser */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void bq_row_values(float *v, int64_t K, float a, uint64_t seed, int64_t row) {
    uint64_t s = mix(seed * 0x9e3779b97f4a7c15ull + (uint64_t)row);
    for (int64_t k = 0; k < K; k++) {
        s += 0x9e3779b97f4a7c15ull;
        v[k] = a * (float)((double)(mix(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
    }
}

static uint16_t to_f16(float v) {
    uint16_t h;
    convert_from_f32(&v, &h, 1, DYNMOE_F16);
    return h;
}

static void encode_fp8(int32_t E, int64_t N, int64_t K, float a, uint64_t seed, uint8_t *q, float *scale) {
    const int64_t nb = (N + 127) / 128, kb = (K + 127) / 128;
#pragma omp parallel
    {
        float *v = malloc(sizeof(float) * (size_t)(128 * K));
        float amax[1024]; /* K <= 128 * 1024 */
#pragma omp for schedule(dynamic)
        for (int64_t band = 0; band < (int64_t)E * nb; band++) {
            const int64_t e = band / nb, n0 = band % nb * 128, rows = N - n0 < 128 ? N - n0 : 128;
            if (!v || kb > 1024) continue; /* setup checks K; out of memory leaves zeros */
            for (int64_t j = 0; j < kb; j++) amax[j] = 0;
            for (int64_t r = 0; r < rows; r++) {
                bq_row_values(v + r * K, K, a, seed, e * N + n0 + r);
                for (int64_t k = 0; k < K; k++) amax[k / 128] = fmaxf(amax[k / 128], fabsf(v[r * K + k]));
            }
            float *s = scale + (e * nb + band % nb) * kb;
            for (int64_t j = 0; j < kb; j++) s[j] = amax[j] > 0 ? amax[j] / 448.0f : 1.0f;
            for (int64_t r = 0; r < rows; r++) {
                uint8_t *qr = q + (e * N + n0 + r) * K;
                for (int64_t k = 0; k < K; k++) qr[k] = bq_f32_to_e4m3(v[r * K + k] / s[k / 128]);
            }
        }
        free(v);
    }
}

static void encode_mxfp4(int32_t E, int64_t N, int64_t K, float a, uint64_t seed, uint8_t *q, uint8_t *scale) {
    const int64_t groups = K / 32, rb = (K + 1) / 2;
#pragma omp parallel
    {
        float *v = malloc(sizeof(float) * (size_t)K);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < (int64_t)E * N; row++) {
            if (!v) continue;
            bq_row_values(v, K, a, seed, row);
            uint8_t *qr = q + row * rb;
            memset(qr, 0, (size_t)rb);
            for (int64_t g = 0; g < groups; g++) {
                float amax = 0;
                for (int64_t k = g * 32; k < g * 32 + 32; k++) amax = fmaxf(amax, fabsf(v[k]));
                const uint8_t s = bq_ue8m0_for(amax);
                scale[row * groups + g] = s;
                const float inv = ldexpf(1.0f, 127 - (int)s);
                for (int64_t k = g * 32; k < g * 32 + 32; k++)
                    qr[k / 2] |= (uint8_t)(bq_f32_to_e2m1(v[k] * inv) << (k & 1 ? 4 : 0));
            }
        }
        free(v);
    }
}

static void encode_int4(int32_t E, int64_t N, int64_t K, int32_t group, float a, uint64_t seed, uint8_t *q,
                        uint16_t *scale, uint8_t *zero) {
    const int64_t groups = (K + group - 1) / group, rb = (K + 1) / 2;
#pragma omp parallel
    {
        float *v = malloc(sizeof(float) * (size_t)K);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < (int64_t)E * N; row++) {
            if (!v) continue;
            bq_row_values(v, K, a, seed, row);
            uint8_t *qr = q + row * rb;
            memset(qr, 0, (size_t)rb);
            for (int64_t g = 0; g < groups; g++) {
                const int64_t k0 = g * group, k1 = k0 + group < K ? k0 + group : K; /* the last group may be short */
                float lo = 0, hi = 0; /* the range holds 0, as GPTQ's quantizer does: the zero point stays in 0..15 */
                for (int64_t k = k0; k < k1; k++) lo = fminf(lo, v[k]), hi = fmaxf(hi, v[k]);
                float z = 8.0f;
                float sv = zero && hi > lo ? (hi - lo) / 15.0f : fmaxf(fabsf(lo), fabsf(hi)) / 7.0f;
                if (!(sv > 0)) sv = 1.0f; /* an all-zero group */
                uint16_t sh = to_f16(sv);
                if (dm_f16_to_f32(sh) < sv) sh++; /* round the scale up: [lo, hi] stays inside the 16 codes */
                const float s = dm_f16_to_f32(sh); /* quantize against the scale the kernel will read */
                if (zero) {
                    z = fminf(fmaxf(rintf(-lo / s), 0.0f), 15.0f);
                    zero[row * groups + g] = (uint8_t)z;
                }
                scale[row * groups + g] = sh;
                for (int64_t k = k0; k < k1; k++) {
                    const float c = fminf(fmaxf(rintf(v[k] / s) + z, 0.0f), 15.0f);
                    qr[k / 2] |= (uint8_t)((uint8_t)c << (k & 1 ? 4 : 0));
                }
            }
        }
        free(v);
    }
}

void bq_encode(dynmoe_weight_format f, int32_t E, int64_t N, int64_t K, int32_t group, float a, uint64_t seed,
               uint8_t *q, void *scale, uint8_t *zero) {
    switch (f) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: encode_fp8(E, N, K, a, seed, q, scale); break;
    case DYNMOE_WEIGHTS_MXFP4: encode_mxfp4(E, N, K, a, seed, q, scale); break;
    case DYNMOE_WEIGHTS_INT4: encode_int4(E, N, K, group, a, seed, q, scale, zero); break;
    default: break;
    }
}
