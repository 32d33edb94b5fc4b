/* enum_shim.c — see enum_shim.h. */
#include "enum_shim.h"

void shim_set_router_enum(dynmoe_router *r, int field, int value) {
    switch (field) {
    case SHIM_SCORE: r->score = (dynmoe_score)value; break;
    case SHIM_SELECT: r->select = (dynmoe_select)value; break;
    case SHIM_NORM: r->norm = (dynmoe_norm)value; break;
    case SHIM_ZERO_KIND: r->zero_kind = (dynmoe_zero_kind)value; break;
    default: break;
    }
}

void shim_set_experts_enum(dynmoe_experts *x, int field, int value) {
    switch (field) {
    case SHIM_EXPERTS_DTYPE: x->dtype = (dynmoe_dtype)value; break;
    case SHIM_EXPERTS_ACT: x->act = (dynmoe_act)value; break;
    case SHIM_EXPERTS_GATE_UP: x->gate_up = (dynmoe_gate_up)value; break;
    case SHIM_EXPERTS_FORMAT: x->weight_format = (dynmoe_weight_format)value; break;
    default: break;
    }
}

const char *shim_status_name(int status) { return dynmoe_status_name((dynmoe_status)status); }

dynmoe_status shim_ctx_create(dynmoe_ctx **ctx, int backend, int device) {
    return dynmoe_ctx_create(ctx, (dynmoe_backend)backend, device);
}

dynmoe_status shim_route(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T, const void *logits,
                         int logits_dtype, const float *bias, const void *mask_logits, int32_t *ids,
                         float *weights) {
    return dynmoe_route(ctx, router, T, logits, (dynmoe_dtype)logits_dtype, bias, mask_logits, ids, weights,
                        NULL);
}

dynmoe_status shim_route_tasks(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T, const void *x,
                               int x_dtype, int32_t hidden, const float *task_logits,
                               const void *task_weights, const float *bias, int32_t *ids, float *weights) {
    return dynmoe_route_tasks(ctx, router, T, x, (dynmoe_dtype)x_dtype, hidden, task_logits, task_weights, bias,
                              ids, weights, NULL);
}

dynmoe_status shim_moe_forward(dynmoe_ctx *ctx, const dynmoe_router *router, const dynmoe_experts *experts,
                               int64_t T, const void *x, const void *logits, int logits_dtype,
                               const float *bias, const void *mask_logits, void *out, void *workspace,
                               size_t workspace_bytes) {
    return dynmoe_moe_forward(ctx, router, experts, T, x, logits, (dynmoe_dtype)logits_dtype, bias, mask_logits,
                              out, workspace, workspace_bytes, NULL);
}
