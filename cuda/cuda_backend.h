/*
 * cuda_backend.h — what the files of the CUDA backend share (cuda/ only; csrc/
 * never sees CUDA types). One file per stage: route.cu, plan.cu, experts.cu,
 * combine.cu; backend.cu holds the context and the table of stage functions.
 *
 * Contract of every stage function below (the same as backend.h's):
 *  - arguments were validated by csrc/api.c: T >= 1, pointers are device
 *    pointers, sizes in range, workspace laid out by dm_workspace_layout_of;
 *  - the context's device is current (backend.cu's table switches to it and
 *    back around each call);
 *  - enqueue work on `stream` only: no allocation, no synchronisation, no read
 *    of device memory on the host, so every call can be captured in a graph;
 *  - every launch is followed by dm_cuda_check_launch, which turns a launch
 *    error into DYNMOE_ERR_DEVICE with the CUDA error string.
 */
#ifndef DYNMOE_CUDA_BACKEND_H
#define DYNMOE_CUDA_BACKEND_H

#include <cuda_runtime.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Device properties, read once by dm_cuda_ctx_init; ctx->impl points here. */
typedef struct dm_cuda_impl {
    int device;
    int sm_count;            /* multiprocessors */
    int cc_major, cc_minor;  /* compute capability */
    int max_threads_per_sm;
    int max_smem_per_block_optin; /* bytes a block may get after cudaFuncSetAttribute */
    int l2_bytes;
    char name[256];
} dm_cuda_impl;

/* Stage functions of the CUDA backend (the ops table of backend.cu). */
dynmoe_status dm_cuda_route(dynmoe_ctx *ctx, const dm_route_args *a, void *stream);
dynmoe_status dm_cuda_route_tasks(dynmoe_ctx *ctx, const dm_route_tasks_args *a, void *stream);
dynmoe_status dm_cuda_plan(dynmoe_ctx *ctx, const dm_plan_args *a, void *stream);
/* cuda/experts.cu (issue 5): every plan row r:
 *   rows_y[r, 0:H] = FFN_e(x[sorted_slots[r] / S])   [T*S, H] row-major, in experts.dtype
 * (the CPU backend's rows_y is fp32; the workspace region is sized for fp32 either way) */
dynmoe_status dm_cuda_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);
/* out[t] = sum over t's slots in slot order of w * (rows_y[row] | x[t]), accumulated in fp32;
 * rows_y, x and out in experts.dtype */
dynmoe_status dm_cuda_combine(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);

/* Called once by dm_cuda_ctx_init with the device current: loads the stage's
 * kernels (CUDA loads modules lazily; loading them here keeps the first
 * forward call, which may be under graph capture, free of it) and reports a
 * build without code for this GPU. */
dynmoe_status dm_cuda_route_load(void);
dynmoe_status dm_cuda_plan_load(void);
dynmoe_status dm_cuda_combine_load(void);
dynmoe_status dm_cuda_experts_load(void); /* cuda/experts.cu */

#ifdef __cplusplus
}
#endif

/* A launch error (bad configuration, no code for this GPU, a sticky fault of
 * an earlier kernel) becomes DYNMOE_ERR_DEVICE naming the kernel. */
static inline dynmoe_status dm_cuda_check_launch(const char *what) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return dm_fail(DYNMOE_ERR_DEVICE, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
    return DYNMOE_OK;
}

/* The same for a runtime call that returned `e`. */
static inline dynmoe_status dm_cuda_check(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* clear a non-sticky error so that later calls do not see it */
        return dm_fail(DYNMOE_ERR_DEVICE, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
    }
    return DYNMOE_OK;
}

#define DM_CUDA_TRY(expr)                       \
    do {                                        \
        dynmoe_status dm_st_ = (expr);          \
        if (dm_st_ != DYNMOE_OK) return dm_st_; \
    } while (0)

#define DM_FULL_MASK 0xffffffffu

#endif /* DYNMOE_CUDA_BACKEND_H */
