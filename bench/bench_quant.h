/*
 * bench_quant.h — dynmoe-bench's small encoder: random expert weights stored in
 * the quantized formats of dynmoe_weight_format (include/dynmoe.h), so that the
 * bench can time quantized layers at real shapes. Encoding only: the decode
 * rules are csrc/quant_rules.h, and bench_quant_test decodes what this writes
 * with them.
 *
 * A matrix is E experts of [N, K] (w13: N = 2I or I rows, K = H; w2: N = H,
 * K = I). Values are uniform in [-a, a], row n of expert e drawn from its own
 * stream of `seed`, so the result does not depend on the thread count.
 *   FP8_BLOCK  scale = amax / 448 per 128 x 128 block, e4m3 round to nearest
 *   MXFP4      scale 2^ceil(log2(amax / 6)) per 32 along K, e2m1 to nearest
 *   INT4       per group: asymmetric, scale (max - min) / 15 in fp16 and a
 *              zero point, or (zeros NULL) symmetric around 8, scale amax / 7
 */
#ifndef DYNMOE_BENCH_QUANT_H
#define DYNMOE_BENCH_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "dynmoe.h"

/* Bytes of one expert's [N, K] matrix: values, scales, zero points (0 when
 * the format has none; INT4 zeros only when `zeros`). PLAIN: K * N * dtype. */
typedef struct bq_bytes {
    size_t q, scale, zero;
} bq_bytes;
bq_bytes bq_matrix_bytes(dynmoe_weight_format f, dynmoe_dtype dt, int64_t N, int64_t K, int32_t group, int zeros);

/* Encodes E experts into host buffers of E * bq_matrix_bytes(...) each; zero
 * is NULL for FP8_BLOCK, MXFP4 and symmetric INT4. OpenMP over row blocks. */
void bq_encode(dynmoe_weight_format f, int32_t E, int64_t N, int64_t K, int32_t group, float a, uint64_t seed,
               uint8_t *q, void *scale, uint8_t *zero);

/* The values bq_encode quantizes: row `row` (e * N + n) of uniform values in [-a, a]. */
void bq_row_values(float *v, int64_t K, float a, uint64_t seed, int64_t row);

/* "plain", "fp8_block", "mxfp4", "int4" */
const char *bq_format_name(dynmoe_weight_format f);

/* The encoders of single values (exposed for bench_quant_test). */
uint8_t bq_f32_to_e4m3(float v);   /* round to nearest, saturates at +-448 */
uint8_t bq_f32_to_e2m1(float v);   /* nearest of 0, .5, 1, 1.5, 2, 3, 4, 6; saturates */
uint8_t bq_ue8m0_for(float amax);  /* smallest s with 6 * 2^(s-127) >= amax (127 for amax 0) */

#endif /* DYNMOE_BENCH_QUANT_H */
