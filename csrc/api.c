/* api.c — the public entry points: validate every argument on the host, once,
 * then dispatch to the context's backend. Nothing is launched or written
 * before all checks pass.
 *
 * A caller built against an earlier release passes a shorter router or
 * experts struct (its struct_size). Right after checking them, every entry
 * point replaces its `router` / `experts` pointers by full local copies
 * (dm_router_full, dm_experts_full), so nothing past the caller's struct is
 * ever read. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "act_rules.h"
#include "backend.h"
#include "cpu/onednn.h"
#include "nvtx.h"

#define INVALID(...) dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, __VA_ARGS__)

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

dynmoe_status dm_check_tensor(const char *fn, const char *name, const void *p, int64_t T) {
    if (T > 0 && p == NULL) return INVALID("%s: %s is NULL", fn, name);
    if (!aligned16(p)) return INVALID("%s: %s is not 16-byte aligned", fn, name);
    return DYNMOE_OK;
}

static dynmoe_status check_ctx(const char *fn, const dynmoe_ctx *ctx) {
    if (ctx == NULL || ctx->ops == NULL) return INVALID("%s: ctx is NULL", fn);
    return DYNMOE_OK;
}

static dynmoe_status check_dtype(const char *fn, const char *name, dynmoe_dtype dt) {
    if ((unsigned)dt >= DYNMOE_DTYPE_COUNT) return INVALID("%s: %s has unknown dtype %d", fn, name, (int)dt);
    return DYNMOE_OK;
}

/* Struct sizes of earlier releases that are still accepted: the fields added
 * since then take their initializer defaults (dm_router_full, dm_experts_full). */
#define DM_ROUTER_SIZE_0_1 offsetof(dynmoe_router, weight_on_input)
#define DM_EXPERTS_SIZE_0_1 offsetof(dynmoe_experts, b13)
#define DM_EXPERTS_SIZE_0_2 offsetof(dynmoe_experts, packed)

dynmoe_router dm_router_full(const dynmoe_router *r) {
    dynmoe_router full = DYNMOE_ROUTER_INIT;
    memcpy(&full, r, r->struct_size < sizeof full ? r->struct_size : sizeof full);
    full.struct_size = sizeof full;
    return full;
}

dynmoe_experts dm_experts_full(const dynmoe_experts *x) {
    dynmoe_experts full = DYNMOE_EXPERTS_INIT;
    memcpy(&full, x, x->struct_size < sizeof full ? x->struct_size : sizeof full);
    full.struct_size = sizeof full;
    return full;
}

dynmoe_status dm_check_router(const char *fn, const dynmoe_router *in) {
    if (in == NULL) return INVALID("%s: router is NULL", fn);
    if (in->struct_size != sizeof(dynmoe_router) && in->struct_size != DM_ROUTER_SIZE_0_1)
        return INVALID("%s: router.struct_size is %zu, expected %zu (initialise with DYNMOE_ROUTER_INIT)",
                       fn, in->struct_size, sizeof(dynmoe_router));
    const dynmoe_router full = dm_router_full(in), *r = &full;
    const int64_t E = r->num_experts, Z = r->num_zero_experts;
    if (E < 1) return INVALID("%s: router.num_experts = %d must be >= 1", fn, r->num_experts);
    if (Z < 0) return INVALID("%s: router.num_zero_experts = %d is negative", fn, r->num_zero_experts);
    if (E + Z > DYNMOE_MAX_EXPERTS)
        return INVALID("%s: num_experts + num_zero_experts = %lld exceeds %d", fn, (long long)(E + Z),
                       DYNMOE_MAX_EXPERTS);
    if ((unsigned)r->zero_kind >= DYNMOE_ZERO_COUNT) return INVALID("%s: unknown router.zero_kind %d", fn, (int)r->zero_kind);
    if ((unsigned)r->score >= DYNMOE_SCORE_COUNT) return INVALID("%s: unknown router.score %d", fn, (int)r->score);
    if ((unsigned)r->select >= DYNMOE_SELECT_COUNT) return INVALID("%s: unknown router.select %d", fn, (int)r->select);
    if ((unsigned)r->norm >= DYNMOE_NORM_COUNT) return INVALID("%s: unknown router.norm %d", fn, (int)r->norm);
    if (r->top_k < 1 || r->top_k > E + Z || r->top_k > DYNMOE_MAX_TOP_K)
        return INVALID("%s: router.top_k = %d must be in [1, min(E+Z = %lld, %d)]", fn, r->top_k,
                       (long long)(E + Z), DYNMOE_MAX_TOP_K);
    if (r->select == DYNMOE_SELECT_TOP_P && !(r->top_p > 0.0f && r->top_p <= 1.0f))
        return INVALID("%s: router.top_p = %g must be in (0, 1]", fn, (double)r->top_p);
    if (r->select == DYNMOE_SELECT_THRESHOLD && !isfinite(r->threshold))
        return INVALID("%s: router.threshold is not finite", fn);
    if (!isfinite(r->scale)) return INVALID("%s: router.scale is not finite", fn);
    if (r->num_groups < 0) return INVALID("%s: router.num_groups = %d is negative", fn, r->num_groups);
    if (r->num_groups > 0) {
        if (r->num_groups > 64 || E % r->num_groups != 0)
            return INVALID("%s: router.num_groups = %d must divide num_experts = %d and be <= 64", fn,
                           r->num_groups, r->num_experts);
        if (r->topk_groups < 1 || r->topk_groups > r->num_groups)
            return INVALID("%s: router.topk_groups = %d must be in [1, num_groups = %d]", fn,
                           r->topk_groups, r->num_groups);
    }
    if (r->num_tasks < 0) return INVALID("%s: router.num_tasks = %d is negative", fn, r->num_tasks);
    if (r->num_tasks > 0) {
        if (r->top_tasks < 1 || r->top_tasks > r->num_tasks)
            return INVALID("%s: router.top_tasks = %d must be in [1, num_tasks = %d]", fn, r->top_tasks,
                           r->num_tasks);
        if ((int64_t)r->top_tasks * r->top_k > DYNMOE_MAX_TOP_K)
            return INVALID("%s: top_tasks * top_k = %lld slots exceeds %d", fn,
                           (long long)r->top_tasks * r->top_k, DYNMOE_MAX_TOP_K);
    }
    if (r->weight_on_input != 0 && r->weight_on_input != 1)
        return INVALID("%s: router.weight_on_input = %d must be 0 or 1", fn, r->weight_on_input);
    return dm_check_tensor(fn, "router.expert_scale", r->expert_scale, 0);
}

static dynmoe_status check_tokens(const char *fn, int64_t T, int32_t slots) {
    if (T < 0 || T > DYNMOE_MAX_TOKENS)
        return INVALID("%s: T = %lld must be in [0, %d]", fn, (long long)T, DYNMOE_MAX_TOKENS);
    if (slots < 1 || slots > DYNMOE_MAX_TOP_K)
        return INVALID("%s: slots per token = %d must be in [1, %d]", fn, slots, DYNMOE_MAX_TOP_K);
    if (T * slots >= ((int64_t)1 << 31))
        return INVALID("%s: T * slots = %lld must be < 2^31", fn, (long long)(T * slots));
    return DYNMOE_OK;
}

/* The quantization fields of x (see dynmoe_weight_format); `used` when the
 * weights will be read (T > 0 and experts present). */
static dynmoe_status check_weight_format(const char *fn, const char *name, const dynmoe_experts *x, int used) {
    const dynmoe_weight_format f = x->weight_format;
    const int32_t g = x->group_size;
    if ((unsigned)f >= DYNMOE_WEIGHTS_COUNT) return INVALID("%s: unknown %s.weight_format %d", fn, name, (int)f);
    if (f == DYNMOE_WEIGHTS_PLAIN) {
        if (x->w13_scale || x->w2_scale || x->w13_zero || x->w2_zero || g != 0)
            return INVALID("%s: %s has scales, zeros or a group_size but weight_format is PLAIN", fn, name);
        return DYNMOE_OK;
    }
    if (used && (x->w13_scale == NULL || x->w2_scale == NULL))
        return INVALID("%s: %s.w13_scale and %s.w2_scale are required by weight_format %d", fn, name, name, (int)f);
    if (!aligned16(x->w13_scale) || !aligned16(x->w2_scale) || !aligned16(x->w13_zero) || !aligned16(x->w2_zero))
        return INVALID("%s: %s scales or zeros are not 16-byte aligned", fn, name);
    if (f != DYNMOE_WEIGHTS_INT4 && (x->w13_zero || x->w2_zero))
        return INVALID("%s: %s zero points are only for weight_format INT4", fn, name);
    switch (f) {
    case DYNMOE_WEIGHTS_FP8_BLOCK:
        if (g != 0 && g != 128) return INVALID("%s: %s.group_size = %d: FP8_BLOCK blocks are 128 x 128", fn, name, g);
        return DYNMOE_OK;
    case DYNMOE_WEIGHTS_MXFP4:
        if (g != 0 && g != 32) return INVALID("%s: %s.group_size = %d: MXFP4 blocks are 32", fn, name, g);
        if (x->hidden % 32 != 0 || x->inter % 32 != 0)
            return INVALID("%s: MXFP4 needs %s.hidden = %d and %s.inter = %d to be multiples of 32", fn, name,
                           x->hidden, name, x->inter);
        return DYNMOE_OK;
    case DYNMOE_WEIGHTS_INT4:
        if (g != 32 && g != 64 && g != 128)
            return INVALID("%s: %s.group_size = %d: INT4 groups are 32, 64 or 128", fn, name, g);
        return DYNMOE_OK;
    default: return INVALID("%s: unknown %s.weight_format %d", fn, name, (int)f);
    }
}

dynmoe_status dm_check_experts(const char *fn, const char *name, const dynmoe_experts *in,
                               int32_t num_experts, int64_t T) {
    if (in == NULL) return INVALID("%s: %s is NULL", fn, name);
    if (in->struct_size != sizeof(dynmoe_experts) && in->struct_size != DM_EXPERTS_SIZE_0_1 &&
        in->struct_size != DM_EXPERTS_SIZE_0_2)
        return INVALID("%s: %s.struct_size is %zu, expected %zu (initialise with DYNMOE_EXPERTS_INIT)",
                       fn, name, in->struct_size, sizeof(dynmoe_experts));
    const dynmoe_experts full = dm_experts_full(in), *x = &full;
    if (x->num_experts != num_experts)
        return INVALID("%s: %s.num_experts = %d, expected %d", fn, name, x->num_experts, num_experts);
    if (x->hidden < 1 || x->inter < 1)
        return INVALID("%s: %s.hidden = %d and %s.inter = %d must be >= 1", fn, name, x->hidden, name, x->inter);
    if ((unsigned)x->dtype >= DYNMOE_DTYPE_COUNT) return INVALID("%s: %s has unknown dtype %d", fn, name, (int)x->dtype);
    if ((unsigned)x->act >= DYNMOE_ACT_COUNT) return INVALID("%s: unknown %s.act %d", fn, name, (int)x->act);
    if ((unsigned)x->gate_up >= DYNMOE_GATE_UP_COUNT)
        return INVALID("%s: unknown %s.gate_up %d", fn, name, (int)x->gate_up);
    if (!dm_act_gated(x->act) && x->gate_up != DYNMOE_GATE_UP_BLOCKED)
        return INVALID("%s: %s.gate_up is INTERLEAVED but act %d is not gated (w13 holds I rows)", fn, name,
                       (int)x->act);
    if (x->act == DYNMOE_ACT_SWIGLU_OAI && (!isfinite(x->alpha) || !isfinite(x->limit) || !(x->limit > 0.0f)))
        return INVALID("%s: %s.alpha = %g and %s.limit = %g must be finite, limit > 0 (SWIGLU_OAI)", fn, name,
                       (double)x->alpha, name, (double)x->limit);
    /* E * 2I * H elements must be addressable with 64-bit offsets. */
    double elems = (double)x->num_experts * 2.0 * x->inter * x->hidden;
    if (elems > 9.0e18 / 4) return INVALID("%s: %s weights are too large", fn, name);
    const int64_t need = num_experts > 0 ? T : 0;
    if (x->w13 == NULL && need > 0) return INVALID("%s: %s.w13 is NULL", fn, name);
    if (x->w2 == NULL && need > 0) return INVALID("%s: %s.w2 is NULL", fn, name);
    if (!aligned16(x->w13) || !aligned16(x->w2)) return INVALID("%s: %s weights are not 16-byte aligned", fn, name);
    if (!aligned16(x->b13) || !aligned16(x->b2)) return INVALID("%s: %s biases are not 16-byte aligned", fn, name);
    const dynmoe_status st = check_weight_format(fn, name, x, need > 0);
    if (st != DYNMOE_OK || x->packed == NULL) return st;
    return dm_packed_check(fn, x->packed, x);
}

dynmoe_status dm_check_implemented(const char *fn, const dynmoe_ctx *ctx, const dynmoe_router *r,
                                   const dynmoe_experts *x) {
    if (x->packed && ctx->backend != DYNMOE_BACKEND_CPU)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "%s: packed experts (experts.packed) are for the CPU backend only", fn);
    return ctx->ops->supports(fn, r, x);
}

/* The experts of the router's layer. */
static dynmoe_status check_experts(const char *fn, const dynmoe_router *r, const dynmoe_experts *x, int64_t T) {
    return dm_check_experts(fn, "experts", x, r->num_experts, T);
}

static dynmoe_status check_workspace(const char *fn, const void *ws, size_t bytes, size_t need, int64_t T) {
    if (T > 0 && ws == NULL) return INVALID("%s: workspace is NULL", fn);
    if (!aligned16(ws)) return INVALID("%s: workspace is not 16-byte aligned", fn);
    if (T > 0 && bytes < need)
        return dm_fail(DYNMOE_ERR_WORKSPACE_TOO_SMALL, "%s: workspace has %zu bytes, needs %zu", fn, bytes, need);
    return DYNMOE_OK;
}

/* The workspace base rounded up to DM_WORKSPACE_ALIGN (sizes include the slack). */
static void *align_base(void *ws) {
    uintptr_t p = (uintptr_t)ws;
    return (void *)((p + DM_WORKSPACE_ALIGN - 1) & ~(uintptr_t)(DM_WORKSPACE_ALIGN - 1));
}

#define TRY(expr)                             \
    do {                                      \
        dynmoe_status st_ = (expr);           \
        if (st_ != DYNMOE_OK) return st_;     \
    } while (0)

/* Runs one backend stage inside an NVTX range named after it. */
#define STAGE(name, expr)                     \
    do {                                      \
        DM_RANGE_PUSH("dynmoe." name);        \
        dynmoe_status st_ = (expr);           \
        DM_RANGE_POP();                       \
        if (st_ != DYNMOE_OK) return st_;     \
    } while (0)

/* ---------------------------------------------------------------- route */

dynmoe_status dynmoe_route(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T,
                           const void *logits, dynmoe_dtype logits_dtype, const float *bias,
                           const void *mask_logits, int32_t *ids, float *weights, void *stream) {
    static const char fn[] = "dynmoe_route";
    dm_clear_error();
    TRY(check_ctx(fn, ctx));
    TRY(dm_check_router(fn, router));
    const dynmoe_router rt = dm_router_full(router);
    router = &rt;
    if (router->num_tasks > 0)
        return INVALID("%s: router has task routers (num_tasks = %d): use dynmoe_route_tasks", fn, router->num_tasks);
    TRY(check_tokens(fn, T, router->top_k));
    TRY(check_dtype(fn, "logits", logits_dtype));
    TRY(dm_check_tensor(fn, "logits", logits, T));
    TRY(dm_check_tensor(fn, "bias", bias, 0));
    TRY(dm_check_tensor(fn, "mask_logits", mask_logits, 0));
    TRY(dm_check_tensor(fn, "ids", ids, T));
    TRY(dm_check_tensor(fn, "weights", weights, T));
    if (T == 0) return DYNMOE_OK;
    dm_route_args a = {*router, T, logits, logits_dtype, bias, mask_logits, ids, weights, ctx->stats};
    STAGE("route", ctx->ops->route(ctx, &a, stream));
    return DYNMOE_OK;
}

dynmoe_status dynmoe_route_tasks(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T,
                                 const void *x, dynmoe_dtype x_dtype, int32_t hidden,
                                 const float *task_logits, const void *task_weights,
                                 const float *bias, int32_t *ids, float *weights, void *stream) {
    static const char fn[] = "dynmoe_route_tasks";
    dm_clear_error();
    TRY(check_ctx(fn, ctx));
    TRY(dm_check_router(fn, router));
    const dynmoe_router rt = dm_router_full(router);
    router = &rt;
    if (router->num_tasks < 1) return INVALID("%s: router.num_tasks must be >= 1", fn);
    TRY(check_tokens(fn, T, dm_router_slots(router)));
    TRY(check_dtype(fn, "x", x_dtype));
    if (hidden < 1) return INVALID("%s: hidden = %d must be >= 1", fn, hidden);
    TRY(dm_check_tensor(fn, "x", x, T));
    TRY(dm_check_tensor(fn, "task_logits", task_logits, T));
    TRY(dm_check_tensor(fn, "task_weights", task_weights, T));
    TRY(dm_check_tensor(fn, "bias", bias, 0));
    TRY(dm_check_tensor(fn, "ids", ids, T));
    TRY(dm_check_tensor(fn, "weights", weights, T));
    if (T == 0) return DYNMOE_OK;
    dm_route_tasks_args a = {*router, T, x, x_dtype, hidden, task_logits, task_weights, bias, ids, weights, ctx->stats};
    STAGE("route_tasks", ctx->ops->route_tasks(ctx, &a, stream));
    return DYNMOE_OK;
}

/* ----------------------------------------------------------------- plan */

size_t dynmoe_plan_workspace_size(const dynmoe_router *router, int64_t T, int32_t slots) {
    dm_workspace_layout l;
    if (dm_check_router("dynmoe_plan_workspace_size", router) || check_tokens("dynmoe_plan_workspace_size", T, slots))
        return 0;
    const dynmoe_router rt = dm_router_full(router);
    if (!dm_workspace_layout_of(&rt, NULL, T, slots, &l)) return 0;
    return l.total + DM_WORKSPACE_ALIGN;
}

dynmoe_status dynmoe_plan_build(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T,
                                const int32_t *ids, int32_t slots, void *workspace,
                                size_t workspace_bytes, dynmoe_plan *plan, void *stream) {
    static const char fn[] = "dynmoe_plan_build";
    dm_clear_error();
    TRY(check_ctx(fn, ctx));
    TRY(dm_check_router(fn, router));
    const dynmoe_router rt = dm_router_full(router);
    router = &rt;
    TRY(check_tokens(fn, T, slots));
    TRY(dm_check_tensor(fn, "ids", ids, T));
    if (plan == NULL) return INVALID("%s: plan is NULL", fn);
    dm_workspace_layout l;
    if (!dm_workspace_layout_of(router, NULL, T, slots, &l)) return INVALID("%s: workspace size overflows", fn);
    TRY(check_workspace(fn, workspace, workspace_bytes, l.total + DM_WORKSPACE_ALIGN, T));
    if (T == 0) return DYNMOE_OK;
    char *base = align_base(workspace);
    dm_plan_args a = {router->num_experts, router->num_zero_experts, T, slots, ids,
                      dm_plan_pointers(base, &l, router->num_experts, T * slots),
                      base + l.plan_temp, l.plan_temp_bytes, ctx->stats};
    STAGE("plan", ctx->ops->plan(ctx, &a, stream));
    *plan = a.plan;
    return DYNMOE_OK;
}

/* -------------------------------------------------------------- forward */

size_t dynmoe_experts_workspace_size(const dynmoe_router *router, const dynmoe_experts *experts, int64_t T,
                                     int32_t slots) {
    static const char fn[] = "dynmoe_experts_workspace_size";
    dm_workspace_layout l;
    if (dm_check_router(fn, router) || check_experts(fn, router, experts, 0) || check_tokens(fn, T, slots)) return 0;
    const dynmoe_router rt = dm_router_full(router);
    const dynmoe_experts xt = dm_experts_full(experts);
    if (!dm_workspace_layout_of(&rt, &xt, T, slots, &l)) return 0;
    return l.total + DM_WORKSPACE_ALIGN;
}

size_t dynmoe_workspace_size(const dynmoe_router *router, const dynmoe_experts *experts, int64_t T) {
    /* The router first: its slots (top_k * top_tasks) mean nothing before. */
    if (dm_check_router("dynmoe_workspace_size", router)) return 0;
    const dynmoe_router rt = dm_router_full(router);
    return dynmoe_experts_workspace_size(&rt, experts, T, dm_router_slots(&rt));
}

/* plan -> experts -> combine over a table that is already in `base`'s layout
 * or given by the caller. */
static dynmoe_status run_experts(dynmoe_ctx *ctx, const dynmoe_router *router,
                                 const dynmoe_experts *experts, int64_t T, const void *x,
                                 const int32_t *ids, const float *weights, int32_t slots, void *out,
                                 char *base, const dm_workspace_layout *l, void *stream) {
    dm_plan_args pa = {router->num_experts, router->num_zero_experts, T, slots, ids,
                       dm_plan_pointers(base, l, router->num_experts, T * slots),
                       base + l->plan_temp, l->plan_temp_bytes, ctx->stats};
    STAGE("plan", ctx->ops->plan(ctx, &pa, stream));
    dm_experts_args ea = {*router, *experts, T, x, ids, weights, slots, pa.plan,
                          base + l->rows_h, base + l->rows_y, base + l->scratch, l->scratch_bytes, out};
    STAGE("experts", ctx->ops->experts(ctx, &ea, stream));
    STAGE("combine", ctx->ops->combine(ctx, &ea, stream));
    return DYNMOE_OK;
}

dynmoe_status dynmoe_experts_forward(dynmoe_ctx *ctx, const dynmoe_router *router,
                                     const dynmoe_experts *experts, int64_t T, const void *x,
                                     const int32_t *ids, const float *weights, int32_t slots,
                                     void *out, void *workspace, size_t workspace_bytes,
                                     void *stream) {
    static const char fn[] = "dynmoe_experts_forward";
    dm_clear_error();
    TRY(check_ctx(fn, ctx));
    TRY(dm_check_router(fn, router));
    TRY(check_experts(fn, router, experts, T));
    const dynmoe_router rt = dm_router_full(router);
    const dynmoe_experts xt = dm_experts_full(experts);
    router = &rt;
    experts = &xt;
    TRY(dm_check_implemented(fn, ctx, router, experts));
    TRY(check_tokens(fn, T, slots));
    TRY(dm_check_tensor(fn, "x", x, T));
    TRY(dm_check_tensor(fn, "ids", ids, T));
    TRY(dm_check_tensor(fn, "weights", weights, T));
    TRY(dm_check_tensor(fn, "out", out, T));
    if (T > 0 && out == x) return INVALID("%s: out aliases x", fn);
    dm_workspace_layout l;
    if (!dm_workspace_layout_of(router, experts, T, slots, &l)) return INVALID("%s: workspace size overflows", fn);
    TRY(check_workspace(fn, workspace, workspace_bytes, l.total + DM_WORKSPACE_ALIGN, T));
    if (T == 0) return DYNMOE_OK;
    return run_experts(ctx, router, experts, T, x, ids, weights, slots, out, align_base(workspace), &l, stream);
}

dynmoe_status dynmoe_moe_forward(dynmoe_ctx *ctx, const dynmoe_router *router,
                                 const dynmoe_experts *experts, int64_t T, const void *x,
                                 const void *logits, dynmoe_dtype logits_dtype, const float *bias,
                                 const void *mask_logits, void *out, void *workspace,
                                 size_t workspace_bytes, void *stream) {
    static const char fn[] = "dynmoe_moe_forward";
    dm_clear_error();
    TRY(check_ctx(fn, ctx));
    TRY(dm_check_router(fn, router));
    if (router->num_tasks > 0)
        return INVALID("%s: router has task routers: use dynmoe_route_tasks then dynmoe_experts_forward", fn);
    TRY(check_experts(fn, router, experts, T));
    const dynmoe_router rt = dm_router_full(router);
    const dynmoe_experts xt = dm_experts_full(experts);
    router = &rt;
    experts = &xt;
    TRY(dm_check_implemented(fn, ctx, router, experts));
    TRY(check_tokens(fn, T, router->top_k));
    TRY(check_dtype(fn, "logits", logits_dtype));
    TRY(dm_check_tensor(fn, "x", x, T));
    TRY(dm_check_tensor(fn, "logits", logits, T));
    TRY(dm_check_tensor(fn, "bias", bias, 0));
    TRY(dm_check_tensor(fn, "mask_logits", mask_logits, 0));
    TRY(dm_check_tensor(fn, "out", out, T));
    if (T > 0 && out == x) return INVALID("%s: out aliases x", fn);
    const int32_t S = router->top_k;
    dm_workspace_layout l;
    if (!dm_workspace_layout_of(router, experts, T, S, &l)) return INVALID("%s: workspace size overflows", fn);
    TRY(check_workspace(fn, workspace, workspace_bytes, l.total + DM_WORKSPACE_ALIGN, T));
    if (T == 0) return DYNMOE_OK;
    char *base = align_base(workspace);
    int32_t *ids = (int32_t *)(base + l.ids);
    float *weights = (float *)(base + l.weights);
    dm_route_args ra = {*router, T, logits, logits_dtype, bias, mask_logits, ids, weights, ctx->stats};
    STAGE("route", ctx->ops->route(ctx, &ra, stream));
    return run_experts(ctx, router, experts, T, x, ids, weights, S, out, base, &l, stream);
}
