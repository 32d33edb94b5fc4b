/*
 * enum_shim.h — out-of-range enum values for the API's checks. In C++ an
 * enum value outside the enumeration's range (e.g. (dynmoe_score)-1) is
 * undefined behaviour and UBSan rejects it, so such values are made and
 * passed by plain C (enum_shim.c), where an enum is just an int.
 */
#ifndef DYNMOE_TESTS_ENUM_SHIM_H
#define DYNMOE_TESTS_ENUM_SHIM_H

#include "dynmoe.h"

#ifdef __cplusplus
extern "C" {
#endif

enum shim_field {
    SHIM_SCORE, SHIM_SELECT, SHIM_NORM, SHIM_ZERO_KIND, SHIM_EXPERTS_DTYPE, SHIM_EXPERTS_ACT, SHIM_EXPERTS_GATE_UP,
    SHIM_EXPERTS_FORMAT
};

void shim_set_router_enum(dynmoe_router *r, int field, int value);
void shim_set_experts_enum(dynmoe_experts *x, int field, int value);
const char *shim_status_name(int status);
dynmoe_status shim_ctx_create(dynmoe_ctx **ctx, int backend, int device);
dynmoe_status shim_route(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T, const void *logits,
                         int logits_dtype, const float *bias, const void *mask_logits, int32_t *ids,
                         float *weights);
dynmoe_status shim_route_tasks(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T, const void *x,
                               int x_dtype, int32_t hidden, const float *task_logits,
                               const void *task_weights, const float *bias, int32_t *ids, float *weights);
dynmoe_status shim_moe_forward(dynmoe_ctx *ctx, const dynmoe_router *router, const dynmoe_experts *experts,
                               int64_t T, const void *x, const void *logits, int logits_dtype,
                               const float *bias, const void *mask_logits, void *out, void *workspace,
                               size_t workspace_bytes);

#ifdef __cplusplus
}
#endif

#endif
