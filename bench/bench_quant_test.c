/* bench_quant_test — the bench's encoder (bench_quant.c) read back through the
 * library's decode rules (csrc/quant_rules.h, dm_dequant): every element of
 * E experts' [N, K] matrices, with ragged blocks and groups, must decode to
 * within the format's rounding error of the value that was encoded. A wrong
 * nibble order, scale index or rounding makes it fail. Exit 0 = pass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_quant.h"
#include "quant_rules.h"

static int failures;

/* The largest rounding error allowed for a value x of a block with scale s. */
static double bound(dynmoe_weight_format f, double x, double s) {
    const double u = fabs(x) / s;
    switch (f) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: return s * (u < 0.015625 ? 0.0009765625 : u * 0.0625) * 1.0001;
    case DYNMOE_WEIGHTS_MXFP4: return s * (u <= 2 ? 0.25 : u <= 4 ? 0.5 : 1.0) * 1.0001;
    default: return s * 0.5 * 1.0001; /* INT4: half a step */
    }
}

static void check(dynmoe_weight_format f, int32_t E, int64_t N, int64_t K, int32_t group, int zeros) {
    bq_bytes by = bq_matrix_bytes(f, DYNMOE_F32, N, K, group, zeros);
    uint8_t *q = malloc(by.q * (size_t)E), *z = zeros ? malloc(by.zero * (size_t)E) : NULL;
    void *s = malloc(by.scale * (size_t)E);
    float *v = malloc(sizeof(float) * (size_t)K);
    const float a = 0.37f;
    const uint64_t seed = 42;
    bq_encode(f, E, N, K, group, a, seed, q, s, z);
    const int32_t g = f == DYNMOE_WEIGHTS_INT4 ? group : 0;
    long bad = 0;
    double worst = 0;
    for (int32_t e = 0; e < E; e++)
        for (int64_t n = 0; n < N; n++) {
            bq_row_values(v, K, a, seed, (int64_t)e * N + n);
            const uint8_t *qe = q + by.q * (size_t)e, *ze = z ? z + by.zero * (size_t)e : NULL;
            const uint8_t *se = (const uint8_t *)s + by.scale * (size_t)e;
            for (int64_t k = 0; k < K; k++) {
                const double w = dm_dequant(f, qe, se, ze, K, g, n, k);
                double sc;
                if (f == DYNMOE_WEIGHTS_FP8_BLOCK)
                    sc = ((const float *)se)[(n / 128) * ((K + 127) / 128) + k / 128];
                else if (f == DYNMOE_WEIGHTS_MXFP4)
                    sc = dm_ue8m0_to_f32(se[n * (K / 32) + k / 32]);
                else
                    sc = dm_f16_to_f32(((const uint16_t *)se)[n * ((K + group - 1) / group) + k / group]);
                const double err = fabs(w - v[k]);
                /* INT4 with zero points: an integer zero can put the group's
                 * extreme half a step past the last code (AWQ's rounding too) */
                const uint32_t nib = dm_nibble(qe + n * ((K + 1) / 2), k);
                const int end = f == DYNMOE_WEIGHTS_INT4 && ze && (nib == 0 || nib == 15);
                if (!(err <= bound(f, v[k], sc) * (end ? 2 : 1))) {
                    if (bad++ < 3)
                        fprintf(stderr, "  %s e %d n %lld k %lld: value %.6g decodes to %.6g (scale %.3g)\n",
                                bq_format_name(f), e, (long long)n, (long long)k, v[k], w, sc);
                }
                if (err > worst) worst = err;
            }
        }
    printf("%-9s E %d N %lld K %lld group %d zeros %d: %ld of %lld beyond the rounding bound, worst error %.3g\n",
           bq_format_name(f), E, (long long)N, (long long)K, g, zeros, bad, (long long)E * N * K, worst);
    failures += bad != 0;
    free(q), free(z), free(s), free(v);
}

int main(void) {
    /* e4m3 corner codes against the decode rule */
    const float probe[] = {0.0f, 448.0f, 1000.0f, -448.0f, 0.001953125f, 0.015625f, 1.0f, 1.0625f, 240.0f, -3.3f};
    for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
        const float back = dm_fp8e4m3_to_f32(bq_f32_to_e4m3(probe[i]));
        const float want = fabsf(probe[i]) > 448 ? copysignf(448.0f, probe[i]) : probe[i];
        if (fabsf(back - want) > fabsf(want) * 0.0625f) {
            fprintf(stderr, "e4m3: %g encodes to %g\n", probe[i], back);
            failures++;
        }
    }
    for (uint32_t c = 0; c < 16; c++) /* every e2m1 value encodes to itself */
        if (bq_f32_to_e2m1(dm_e2m1_to_f32(c)) != c && !(c == 8 && bq_f32_to_e2m1(-0.0f) == 8)) {
            fprintf(stderr, "e2m1: code %u does not round-trip\n", c);
            failures++;
        }
    check(DYNMOE_WEIGHTS_FP8_BLOCK, 2, 200, 300, 0, 0); /* partial 128-blocks on both axes */
    check(DYNMOE_WEIGHTS_MXFP4, 2, 33, 96, 0, 0);
    check(DYNMOE_WEIGHTS_INT4, 2, 17, 200, 64, 1); /* last group 8 wide */
    check(DYNMOE_WEIGHTS_INT4, 2, 17, 96, 32, 0);  /* symmetric, zero point 8 */
    check(DYNMOE_WEIGHTS_INT4, 1, 5, 129, 128, 1); /* odd K: a half-filled last byte */
    printf("bench_quant_test: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
