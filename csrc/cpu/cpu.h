/* cpu.h — the CPU backend's stage functions (one file per stage). */
#ifndef DYNMOE_CPU_H
#define DYNMOE_CPU_H

#include <math.h>

#include "../backend.h"

dynmoe_status dm_cpu_route(dynmoe_ctx *ctx, const dm_route_args *a, void *stream);
dynmoe_status dm_cpu_route_tasks(dynmoe_ctx *ctx, const dm_route_tasks_args *a, void *stream);
dynmoe_status dm_cpu_plan(dynmoe_ctx *ctx, const dm_plan_args *a, void *stream);
dynmoe_status dm_cpu_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);
dynmoe_status dm_cpu_combine(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);

/* C[M, N] = A[M, K] . W[N, K]^T (W of dtype dt) for few rows; returns 0 when
 * this CPU lacks AVX2/FMA (the caller then uses BLAS). */
int dm_cpu_gemm_skinny(int32_t M, int32_t N, int32_t K, const float *A, int32_t lda, const void *W,
                       dynmoe_dtype dt, float *C, int32_t ldc, int threads);

/* The whole FFN of expert e (all its plan rows) into rows_y, through
 * packed row panels (ffn_panels.c); `scratch` holds dm_cpu_scratch_floats().
 * Returns 0 when this CPU lacks AVX2/FMA (the caller then uses BLAS). */
int dm_cpu_ffn_panels(const dm_experts_args *a, int32_t e, float *scratch);

/* The gated activation of one hidden unit: act(gate) * up, SiLU or GELU (erf). */
static inline float dm_cpu_act(float gate, float up, int geglu) {
    const float a = geglu ? 0.5f * gate * (1.0f + erff(gate * 0.70710678118654752f)) : gate / (1.0f + expf(-gate));
    return a * up;
}

#endif
