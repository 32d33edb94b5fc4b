/*
 * backend.cu — the CUDA context: device properties read once at creation,
 * kernels loaded once, and the table of stage functions that csrc/ calls.
 *
 * Each entry of the table makes the context's device current for the call
 * (and restores the caller's device afterwards), then runs the stage. No
 * entry allocates, synchronises or reads device memory on the host.
 */
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"

/* Makes ctx->device current; *prev receives the caller's device. */
static dynmoe_status enter_device(const dynmoe_ctx *ctx, int *prev) {
    DM_CUDA_TRY(dm_cuda_check(cudaGetDevice(prev), "cudaGetDevice"));
    if (*prev != ctx->device) DM_CUDA_TRY(dm_cuda_check(cudaSetDevice(ctx->device), "cudaSetDevice"));
    return DYNMOE_OK;
}

static void leave_device(const dynmoe_ctx *ctx, int prev) {
    if (prev != ctx->device) (void)cudaSetDevice(prev);
}

/* One wrapper per stage: device guard around the stage function. */
#define DM_CUDA_OP(name, stage, args_t)                                              \
    static dynmoe_status name(dynmoe_ctx *ctx, const args_t *a, void *stream) {      \
        int prev = 0;                                                                \
        DM_CUDA_TRY(enter_device(ctx, &prev));                                       \
        dynmoe_status st = stage(ctx, a, stream);                                    \
        leave_device(ctx, prev);                                                     \
        return st;                                                                   \
    }

DM_CUDA_OP(op_route, dm_cuda_route, dm_route_args)
DM_CUDA_OP(op_route_tasks, dm_cuda_route_tasks, dm_route_tasks_args)
DM_CUDA_OP(op_plan, dm_cuda_plan, dm_plan_args)
DM_CUDA_OP(op_experts, dm_cuda_experts, dm_experts_args)
DM_CUDA_OP(op_combine, dm_cuda_combine, dm_experts_args)

static void op_destroy(dynmoe_ctx *ctx) {
    free(ctx->impl);
    ctx->impl = NULL;
}

/* What the CUDA expert kernels implement: every dynmoe_act, both gate/up layouts, biases b13 and
 * b2, router.weight_on_input and expert_scale (issue 15, cuda/experts.cu and cuda/combine.cu);
 * every weight format on both paths: plain, and FP8_BLOCK, MXFP4, INT4 decoded in registers by the
 * streaming kernel (decode sizes, and f32 at every T) or dequantized per k-tile into shared memory
 * by the tensor-core prefill kernel (bf16 / f16 at prefill sizes). So every format is accepted. */
static dynmoe_status op_supports(const char *fn, const dynmoe_router *r, const dynmoe_experts *x) {
    (void)r;
    if (x->weight_format < DYNMOE_WEIGHTS_PLAIN || x->weight_format >= DYNMOE_WEIGHTS_COUNT)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "%s: experts.weight_format %d is not implemented on the CUDA backend",
                       fn, (int)x->weight_format);
    return DYNMOE_OK;
}

static const dm_backend_ops dm_cuda_ops = {
    op_route, op_route_tasks, op_plan, op_experts, op_combine, op_supports, op_destroy,
};

extern "C" int dm_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* no driver / no device: not an error of a later call */
        return 0;
    }
    return n;
}

static dynmoe_status read_properties(int device, dm_cuda_impl *p) {
    struct {
        cudaDeviceAttr attr;
        int *out;
    } q[] = {
        {cudaDevAttrMultiProcessorCount, &p->sm_count},
        {cudaDevAttrComputeCapabilityMajor, &p->cc_major},
        {cudaDevAttrComputeCapabilityMinor, &p->cc_minor},
        {cudaDevAttrMaxThreadsPerMultiProcessor, &p->max_threads_per_sm},
        {cudaDevAttrMaxSharedMemoryPerBlockOptin, &p->max_smem_per_block_optin},
        {cudaDevAttrL2CacheSize, &p->l2_bytes},
    };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++)
        DM_CUDA_TRY(dm_cuda_check(cudaDeviceGetAttribute(q[i].out, q[i].attr, device), "cudaDeviceGetAttribute"));
    cudaDeviceProp prop;
    DM_CUDA_TRY(dm_cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
    memcpy(p->name, prop.name, sizeof p->name < sizeof prop.name ? sizeof p->name : sizeof prop.name);
    p->name[sizeof p->name - 1] = '\0';
    p->device = device;
    return DYNMOE_OK;
}

/* With the device current: properties, the arch check, kernel loading. */
static dynmoe_status init_on_device(int device, dm_cuda_impl *impl) {
    DM_CUDA_TRY(read_properties(device, impl));
    if (impl->cc_major < 8)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED,
                       "dynmoe_ctx_create: CUDA device %d (%s) has compute capability %d.%d; dynmoe needs 8.0 or newer",
                       device, impl->name, impl->cc_major, impl->cc_minor);
    DM_CUDA_TRY(dm_cuda_route_load());
    DM_CUDA_TRY(dm_cuda_plan_load());
    DM_CUDA_TRY(dm_cuda_combine_load());
    DM_CUDA_TRY(dm_cuda_experts_load());
    return DYNMOE_OK;
}

extern "C" dynmoe_status dm_cuda_ctx_init(dynmoe_ctx *ctx, int device) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return dm_fail(DYNMOE_ERR_DEVICE, "dynmoe_ctx_create: no CUDA device: %s (%s)", cudaGetErrorName(e),
                       cudaGetErrorString(e));
    }
    if (device >= count)
        return dm_fail(DYNMOE_ERR_DEVICE, "dynmoe_ctx_create: CUDA device %d does not exist (%d visible)", device,
                       count);
    dm_cuda_impl *impl = (dm_cuda_impl *)calloc(1, sizeof *impl);
    if (impl == NULL) return dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "dynmoe_ctx_create: out of host memory");

    int prev = 0;
    dynmoe_status st = dm_cuda_check(cudaGetDevice(&prev), "cudaGetDevice");
    if (st == DYNMOE_OK && prev != device) st = dm_cuda_check(cudaSetDevice(device), "cudaSetDevice");
    if (st == DYNMOE_OK) {
        st = init_on_device(device, impl);
        if (prev != device) (void)cudaSetDevice(prev);
    }
    if (st != DYNMOE_OK) {
        free(impl);
        return st;
    }
    ctx->impl = impl;
    ctx->ops = &dm_cuda_ops;
    return DYNMOE_OK;
}
