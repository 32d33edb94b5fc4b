/* cpu/combine.c — out[t] = sum over t's slots, in slot order, of w * y[row]
 * (real experts) or w * x[t] (identity zero experts), in fp32. Under
 * router.weight_on_input the experts already saw w * x (experts.c), so a
 * real expert's row is added with weight 1. One token per
 * iteration; columns in blocks so the accumulator stays in registers/L1. */
#include "../hd.h"
#include "cpu.h"

#define COMBINE_COLS 256

static void combine_body(void *arg) {
    const dm_experts_args *a = (const dm_experts_args *)arg;
    const int32_t E = a->router.num_experts, Z = a->router.num_zero_experts, S = a->slots;
    const int32_t H = a->experts.hidden;
    const int identity = a->router.zero_kind == DYNMOE_ZERO_IDENTITY, on_input = a->router.weight_on_input;
    const dynmoe_dtype dt = a->experts.dtype;
    const float *y = (const float *)a->rows_y;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < a->T; t++) {
        for (int32_t h0 = 0; h0 < H; h0 += COMBINE_COLS) {
            const int32_t nh = H - h0 < COMBINE_COLS ? H - h0 : COMBINE_COLS;
            float acc[COMBINE_COLS];
            for (int32_t j = 0; j < nh; j++) acc[j] = 0.0f;
            for (int32_t k = 0; k < S; k++) {
                const int64_t slot = t * S + k;
                const int32_t id = a->ids[slot];
                const float w = a->weights[slot];
                if (id >= 0 && id < E) {
                    const float *yr = y + (int64_t)a->plan.slot_rows[slot] * H + h0;
                    if (on_input)
                        for (int32_t j = 0; j < nh; j++) acc[j] += yr[j];
                    else
                        for (int32_t j = 0; j < nh; j++) acc[j] += w * yr[j];
                } else if (identity && id >= E && id < E + Z) {
                    for (int32_t j = 0; j < nh; j++) acc[j] += w * dm_load(a->x, dt, t * H + h0 + j);
                }
            }
            for (int32_t j = 0; j < nh; j++) dm_store(a->out, dt, t * H + h0 + j, acc[j]);
        }
    }
}

dynmoe_status dm_cpu_combine(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream) {
    (void)ctx;
    (void)stream;
    dm_cpu_parallel(dm_cpu_threads(), combine_body, (void *)a);
    return DYNMOE_OK;
}
