/* context.c — creating a context picks its backend; the only allocation. */
#include <stdlib.h>

#include "backend.h"

dynmoe_status dynmoe_ctx_create(dynmoe_ctx **ctx, dynmoe_backend backend, int device) {
    dm_clear_error();
    if (ctx == NULL) return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "dynmoe_ctx_create: ctx is NULL");
    *ctx = NULL;
    if (backend != DYNMOE_BACKEND_CPU && backend != DYNMOE_BACKEND_CUDA)
        return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "dynmoe_ctx_create: unknown backend %d", (int)backend);
    dynmoe_ctx *c = calloc(1, sizeof *c);
    if (c == NULL) return dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "dynmoe_ctx_create: out of host memory");
    c->backend = backend;
    c->device = device;
    if (backend == DYNMOE_BACKEND_CPU) {
        c->ops = &dm_cpu_ops;
    } else {
        if (device < 0) {
            free(c);
            return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "dynmoe_ctx_create: negative CUDA device %d", device);
        }
        dynmoe_status st = dm_cuda_ctx_init(c, device);
        if (st != DYNMOE_OK) {
            free(c);
            return st;
        }
    }
    *ctx = c;
    return DYNMOE_OK;
}

void dynmoe_ctx_destroy(dynmoe_ctx *ctx) {
    if (ctx == NULL) return;
    if (ctx->ops && ctx->ops->destroy) ctx->ops->destroy(ctx);
    free(ctx);
}

dynmoe_backend dynmoe_ctx_backend(const dynmoe_ctx *ctx) {
    return ctx ? ctx->backend : DYNMOE_BACKEND_CPU;
}

int dynmoe_cuda_available(void) { return dm_cuda_device_count() > 0; }

dynmoe_status dynmoe_ctx_set_stats(dynmoe_ctx *ctx, dynmoe_stats *stats) {
    dm_clear_error();
    if (ctx == NULL) return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "dynmoe_ctx_set_stats: ctx is NULL");
    if (((uintptr_t)stats & 7u) != 0)
        return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "dynmoe_ctx_set_stats: stats is not 8-byte aligned");
    ctx->stats = stats;
    return DYNMOE_OK;
}
