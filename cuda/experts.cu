/*
 * experts.cu — expert FFN (grouped GEMM) kernels of the CUDA backend.
 * Placeholder: full kernels land with issue 5.
 */
#include "backend.h"

extern "C" dynmoe_status dm_cuda_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);

extern "C" dynmoe_status dm_cuda_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream)
{
    (void)ctx;
    (void)a;
    (void)stream;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED, "cuda experts: not implemented yet");
}
