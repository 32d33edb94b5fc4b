/* ep/ep.c — the expert-parallel entry points: validate on the host, once,
 * then hand over to the transport (ep_mpi.c for the CPU backend, ep_nccl.c for
 * CUDA). Also the placement tables and the workspace layout, which both
 * transports share. Built with neither MPI nor NCCL, every entry point exists
 * and returns DYNMOE_ERR_UNSUPPORTED with a message. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ep.h"

#define INVALID(...) dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, __VA_ARGS__)
#define TRY(expr)                         \
    do {                                  \
        dynmoe_status st_ = (expr);       \
        if (st_ != DYNMOE_OK) return st_; \
    } while (0)

double dm_ep_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}


/* ------------------------------------------------------------ placement */

void dm_ep_free_tables(struct dynmoe_ep *ep) {
    free(ep->copies);
    free(ep->copy_rank);
    free(ep->copy_local);
    free(ep->self_copy);
    free(ep->local_ids);
    free(ep->host_counts);
    ep->copies = ep->copy_rank = ep->copy_local = ep->self_copy = ep->local_ids = ep->host_counts = NULL;
}

static dynmoe_status check_config(const char *fn, const dynmoe_ep_config *c) {
    if (c == NULL) return INVALID("%s: config is NULL", fn);
    if (c->struct_size != sizeof(dynmoe_ep_config))
        return INVALID("%s: config.struct_size is %zu, expected %zu (initialise with DYNMOE_EP_CONFIG_INIT)",
                       fn, c->struct_size, sizeof(dynmoe_ep_config));
    if (c->num_experts < 1 || c->num_experts > DYNMOE_MAX_EXPERTS)
        return INVALID("%s: config.num_experts = %d must be in [1, %d]", fn, c->num_experts, DYNMOE_MAX_EXPERTS);
    if (c->max_tokens < 1 || c->max_tokens > DYNMOE_MAX_TOKENS)
        return INVALID("%s: config.max_tokens = %lld must be in [1, %d]", fn, (long long)c->max_tokens,
                       DYNMOE_MAX_TOKENS);
    if (c->capacity < 0) return INVALID("%s: config.capacity = %d is negative", fn, c->capacity);
    if (c->max_recv_rows < 0 || c->max_recv_rows >= ((int64_t)1 << 31))
        return INVALID("%s: config.max_recv_rows = %lld must be in [0, 2^31)", fn, (long long)c->max_recv_rows);
    return DYNMOE_OK;
}

dynmoe_status dm_ep_placement(struct dynmoe_ep *ep, const dynmoe_ep_config *c, const char *fn) {
    const int32_t E = c->num_experts, R = ep->num_ranks;
    const int32_t P = c->expert_rank ? c->max_replicas : 1;
    if (c->expert_rank && (P < 1 || P > R))
        return INVALID("%s: config.max_replicas = %d must be in [1, num_ranks = %d]", fn, c->max_replicas, R);
    ep->num_experts = E;
    ep->replicas = P;
    ep->max_tokens = c->max_tokens;
    ep->capacity = c->capacity;
    ep->max_recv_rows = c->max_recv_rows;
    ep->copies = calloc((size_t)E, sizeof(int32_t));
    ep->copy_rank = malloc((size_t)E * P * sizeof(int32_t));
    ep->copy_local = malloc((size_t)E * P * sizeof(int32_t));
    ep->self_copy = malloc((size_t)E * sizeof(int32_t));
    ep->local_ids = malloc((size_t)E * sizeof(int32_t) + 1);
    ep->host_counts = calloc(4 * (size_t)R + 2, sizeof(int32_t));
    int32_t *per_rank = calloc((size_t)R, sizeof(int32_t));
    if (!ep->copies || !ep->copy_rank || !ep->copy_local || !ep->self_copy || !ep->local_ids ||
        !ep->host_counts || !per_rank) {
        free(per_rank);
        return dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    dynmoe_status st = DYNMOE_OK;
    for (int32_t e = 0; e < E && st == DYNMOE_OK; e++) {
        ep->self_copy[e] = -1;
        for (int32_t p = 0; p < P; p++) {
            int32_t r;
            if (c->expert_rank) {
                r = c->expert_rank[(int64_t)e * P + p];
            } else { /* contiguous: rank r holds [floor(rE/R), floor((r+1)E/R)) */
                r = (int32_t)(((int64_t)e * R + R - 1) / E);
                while (r > 0 && (int64_t)r * E / R > e) r--;
                while ((int64_t)(r + 1) * E / R <= e) r++;
            }
            ep->copy_rank[(int64_t)e * P + p] = r;
            ep->copy_local[(int64_t)e * P + p] = -1;
            if (r == -1) continue;
            if (r < 0 || r >= R) {
                st = INVALID("%s: config.expert_rank[%d][%d] = %d is not a rank in [0, %d)", fn, e, p, r, R);
                break;
            }
            if (ep->copies[e] != p) {
                st = INVALID("%s: config.expert_rank[%d]: rank %d follows an unused entry -1", fn, e, r);
                break;
            }
            for (int32_t q = 0; q < p; q++)
                if (ep->copy_rank[(int64_t)e * P + q] == r) {
                    st = INVALID("%s: config.expert_rank[%d] lists rank %d twice", fn, e, r);
                    break;
                }
            ep->copies[e]++;
            if (r == ep->rank) ep->self_copy[e] = p;
        }
        if (st == DYNMOE_OK && ep->copies[e] == 0)
            st = INVALID("%s: config.expert_rank[%d] lists no rank: every expert needs one", fn, e);
    }
    if (st == DYNMOE_OK) {
        /* Local indices: experts held by a rank, ascending by global id. */
        for (int32_t e = 0; e < E; e++)
            for (int32_t p = 0; p < ep->copies[e]; p++) {
                int32_t r = ep->copy_rank[(int64_t)e * P + p];
                ep->copy_local[(int64_t)e * P + p] = per_rank[r]++;
                if (r == ep->rank) ep->local_ids[ep->num_local++] = e;
            }
        ep->max_local = 0;
        for (int32_t r = 0; r < R; r++)
            if (per_rank[r] > ep->max_local) ep->max_local = per_rank[r];
    }
    free(per_rank);
    return st;
}

/* --------------------------------------------------------- create/destroy */

static dynmoe_status create(dynmoe_ep **out, const void *comm, const dynmoe_ep_config *config,
                            dm_ep_transport transport, const char *fn) {
    dm_clear_error();
    if (out != NULL) *out = NULL;
    /* Without a communicator this rank cannot take part in anything. */
    if (comm == NULL) return INVALID("%s: the communicator pointer is NULL", fn);
    dynmoe_status st = out == NULL ? INVALID("%s: ep is NULL", fn) : check_config(fn, config);
    if (transport == DM_EP_NCCL && st != DYNMOE_OK) return st; /* not collective */
    struct dynmoe_ep *ep = calloc(1, sizeof *ep);
    if (ep == NULL) return dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    ep->transport = transport;
    /* MPI: collective even when this rank's arguments are bad, so that every
     * rank returns the same error instead of the others blocking. */
    st = transport == DM_EP_MPI ? dm_ep_mpi_create(ep, comm, st == DYNMOE_OK ? config : NULL, st)
                                : dm_ep_nccl_create(ep, comm, config);
    if (st != DYNMOE_OK) {
        dm_ep_free_tables(ep);
        free(ep);
        return st;
    }
    *out = ep;
    return DYNMOE_OK;
}

dynmoe_status dynmoe_ep_create_mpi(dynmoe_ep **ep, const void *mpi_comm, const dynmoe_ep_config *config) {
    return create(ep, mpi_comm, config, DM_EP_MPI, "dynmoe_ep_create_mpi");
}

dynmoe_status dynmoe_ep_create_nccl(dynmoe_ep **ep, const void *nccl_comm, const dynmoe_ep_config *config) {
    return create(ep, nccl_comm, config, DM_EP_NCCL, "dynmoe_ep_create_nccl");
}

void dynmoe_ep_destroy(dynmoe_ep *ep) {
    if (ep == NULL) return;
    if (ep->transport == DM_EP_MPI) dm_ep_mpi_destroy(ep);
    else dm_ep_nccl_destroy(ep);
    dm_ep_free_tables(ep);
    free(ep);
}

dynmoe_status dynmoe_ep_info(const dynmoe_ep *ep, int32_t *rank, int32_t *num_ranks, int32_t *num_local) {
    dm_clear_error();
    if (ep == NULL) return INVALID("dynmoe_ep_info: ep is NULL");
    if (rank) *rank = ep->rank;
    if (num_ranks) *num_ranks = ep->num_ranks;
    if (num_local) *num_local = ep->num_local;
    return DYNMOE_OK;
}

dynmoe_status dynmoe_ep_local_experts(const dynmoe_ep *ep, int32_t *global_ids) {
    dm_clear_error();
    if (ep == NULL) return INVALID("dynmoe_ep_local_experts: ep is NULL");
    if (global_ids == NULL && ep->num_local > 0) return INVALID("dynmoe_ep_local_experts: global_ids is NULL");
    if (ep->num_local > 0) memcpy(global_ids, ep->local_ids, (size_t)ep->num_local * sizeof(int32_t));
    return DYNMOE_OK;
}

dynmoe_status dynmoe_ep_last_times(const dynmoe_ep *ep, double seconds[4]) {
    dm_clear_error();
    if (ep == NULL || seconds == NULL) return INVALID("dynmoe_ep_last_times: ep or seconds is NULL");
    memcpy(seconds, ep->times, sizeof ep->times);
    return DYNMOE_OK;
}

/* ------------------------------------------------------------ agreement */

const char *const dm_ep_key_names[DM_EP_KEY_COUNT] = {
    "mode", "local_experts.hidden", "local_experts.inter", "local_experts.dtype",
    "local_experts.act, gate_up or weight_format (act + 16 gate_up + 256 weight_format)",
    "router (some field of it)", "config (num_experts, expert_rank, max_tokens, capacity or max_recv_rows)"};

/* FNV-1a over 32-bit words, kept to 63 bits so that its negation fits. */
static uint64_t fnv_words(uint64_t h, const uint32_t *w, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= w[i];
        h *= 1099511628211ull;
    }
    return h;
}
#define DM_FNV_SEED 1469598103934665603ull

long long dm_ep_config_hash(const struct dynmoe_ep *ep) {
    const uint32_t head[6] = {(uint32_t)ep->num_experts, (uint32_t)ep->replicas, (uint32_t)ep->max_tokens,
                              (uint32_t)(ep->max_tokens >> 32), (uint32_t)ep->capacity, ep->max_recv_rows > 0};
    uint64_t h = fnv_words(DM_FNV_SEED, head, 6);
    h = fnv_words(h, (const uint32_t *)ep->copy_rank, (size_t)ep->num_experts * (size_t)ep->replicas);
    return (long long)(h >> 1);
}

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

void dm_ep_forward_key(const struct dynmoe_ep *ep, const dynmoe_router *r, const dynmoe_experts *x,
                       dynmoe_ep_mode mode, int ok, long long key[DM_EP_KEY_COUNT]) {
    memset(key, 0, DM_EP_KEY_COUNT * sizeof key[0]);
    if (!ok) return;
    const uint32_t rw[15] = {(uint32_t)r->num_experts, (uint32_t)r->num_zero_experts, (uint32_t)r->zero_kind,
                             (uint32_t)r->top_k, (uint32_t)r->score, (uint32_t)r->select, float_bits(r->top_p),
                             float_bits(r->threshold), (uint32_t)r->num_groups, (uint32_t)r->topk_groups,
                             (uint32_t)r->norm, float_bits(r->scale), (uint32_t)r->num_tasks,
                             (uint32_t)r->top_tasks, (uint32_t)(r->expert_scale != NULL)};
    key[DM_EP_KEY_MODE] = mode;
    key[DM_EP_KEY_HIDDEN] = x->hidden;
    key[DM_EP_KEY_INTER] = x->inter;
    key[DM_EP_KEY_DTYPE] = x->dtype;
    key[DM_EP_KEY_ACT] = x->act + 16 * (long long)x->gate_up + 256 * (long long)x->weight_format;
    key[DM_EP_KEY_ROUTER] = (long long)(fnv_words(DM_FNV_SEED, rw, 15) >> 1);
    key[DM_EP_KEY_CONFIG] = dm_ep_config_hash(ep);
}

void dm_ep_agree_words(const struct dynmoe_ep *ep, int failed, const long long *key, int n, long long *words) {
    words[0] = failed ? ep->num_ranks - ep->rank : 0;
    words[1] = failed ? ep->rank + 1 : 0;
    for (int i = 0; i < n; i++) words[2 + i] = failed ? 0 : key[i];
}

int32_t dm_ep_agree_failed_rank(const struct dynmoe_ep *ep, const long long *max, int32_t *last) {
    if (max[0] == 0) return -1;
    *last = (int32_t)(max[1] - 1);
    return (int32_t)(ep->num_ranks - max[0]);
}

dynmoe_status dm_ep_agree_key(const char *fn, const long long *max, const long long *negmax, int n,
                              int first_hash, const char *const *names) {
    for (int i = 0; i < n; i++) {
        if (max[i] == -negmax[i]) continue;
        char range[64] = " (its fingerprint differs)";
        if (i < first_hash) snprintf(range, sizeof range, " (from %lld to %lld)", -negmax[i], max[i]);
        return INVALID("%s: the ranks pass different %s%s; every rank must pass the same config, router, mode "
                       "and expert shapes", fn, names[i], range);
    }
    return DYNMOE_OK;
}

dynmoe_status dm_ep_agree_fail(const struct dynmoe_ep *ep, int32_t first, int32_t last, int status,
                               const char *detail) {
    if (status <= DYNMOE_OK || status >= DYNMOE_STATUS_COUNT) status = DYNMOE_ERR_INTERNAL;
    char more[64] = "";
    if (last != first) snprintf(more, sizeof more, " (the lowest failing rank; the highest is %d)", (int)last);
    return dm_fail((dynmoe_status)status, "rank %d of %d%s: %s", (int)first, (int)ep->num_ranks, more, detail);
}

/* --------------------------------------------------------------- layout */

dynmoe_router dm_ep_local_router(const struct dynmoe_ep *ep) {
    dynmoe_router r = DYNMOE_ROUTER_INIT;
    r.num_experts = ep->num_local;
    r.top_k = 1;
    return r;
}

int dm_ep_layout_of(const struct dynmoe_ep *ep, const dynmoe_router *router,
                    const dynmoe_experts *lx, dynmoe_ep_mode mode, dm_ep_layout *l) {
    dm_layout_cursor c = {0, 1};
    const int64_t T = ep->max_tokens, R = ep->num_ranks, K = router->top_k;
    const size_t H = (size_t)lx->hidden, esz = lx->dtype == DYNMOE_F32 ? 4u : 2u;
    *l = (dm_ep_layout){0};
    l->T = T;
    l->K = (int32_t)K;
    const int64_t kmax = K < ep->max_local ? K : ep->max_local;
    const int64_t kloc = K < ep->num_local ? K : ep->num_local;
    if (mode == DYNMOE_EP_CAPACITY) {
        int64_t C = ep->capacity > 0 ? ep->capacity : T * (kmax > 0 ? kmax : 1);
        if (C > INT32_MAX / 2) return 0;
        l->capacity = (int32_t)C;
        l->send_rows_max = R * C;
        l->recv_rows_max = R * C;
    } else {
        l->send_rows_max = T * K;
        l->recv_rows_max = R * T * kloc;
        if (ep->max_recv_rows > 0 && ep->max_recv_rows < l->recv_rows_max) l->recv_rows_max = ep->max_recv_rows;
    }
    if (l->send_rows_max >= ((int64_t)1 << 31) || l->recv_rows_max >= ((int64_t)1 << 31)) return 0;
    const size_t n = (size_t)(T * K);
    l->ids = dm_layout_region(&c, n, 4);
    l->weights = dm_layout_region(&c, n, 4);
    l->send_index = dm_layout_region(&c, n, 4);
    l->dest = dm_layout_region(&c, n, 4);
    dynmoe_router dr = DYNMOE_ROUTER_INIT;
    dr.num_experts = (int32_t)R;
    dr.top_k = (int32_t)(K < R ? K : R);
    if (!dm_workspace_layout_of(&dr, NULL, T, (int32_t)K, &l->dl)) return 0;
    l->dest_plan = dm_layout_region(&c, l->dl.total, 1);
    l->dest_plan_end = c.at;
    l->counts = dm_layout_region(&c, 2 * (size_t)R + 2, 4);
    l->send_ids = dm_layout_region(&c, (size_t)l->send_rows_max, 4);
    l->send_rows = dm_layout_region(&c, (size_t)l->send_rows_max * H, esz);
    l->recv_rows = dm_layout_region(&c, (size_t)l->recv_rows_max * H, esz);
    if (ep->num_local > 0) {
        dynmoe_router lr = dm_ep_local_router(ep);
        if (!dm_workspace_layout_of(&lr, lx, l->recv_rows_max, 1, &l->ll)) return 0;
        l->local = dm_layout_region(&c, l->ll.total, 1);
    } else { /* no compute: only the received ids */
        l->local = dm_layout_region(&c, (size_t)l->recv_rows_max, 4);
    }
    l->back_send = dm_layout_region(&c, (size_t)l->recv_rows_max * H, 4);
    l->back_recv = dm_layout_region(&c, (size_t)l->send_rows_max * H, 4);
    l->stats = dm_layout_region(&c, 2, sizeof(dynmoe_stats)); /* local plan stats; device counters */
    l->total = c.at;
    return c.ok;
}

/* -------------------------------------------------------------- forward */

/* The router, checked by the library's own rules (dynmoe_plan_workspace_size
 * runs them and leaves the message), then the ep's. */
static dynmoe_status check_router(const char *fn, const struct dynmoe_ep *ep, const dynmoe_router *r) {
    dynmoe_status st = dm_check_router(fn, r);
    if (st != DYNMOE_OK) return st;
    if (r->num_tasks > 0) return INVALID("%s: router has task routers (num_tasks = %d)", fn, r->num_tasks);
    if (r->num_experts != ep->num_experts)
        return INVALID("%s: router.num_experts = %d differs from the ep's num_experts = %d", fn,
                       r->num_experts, ep->num_experts);
    return DYNMOE_OK;
}

static dynmoe_status check_local_experts(const char *fn, const struct dynmoe_ep *ep, const dynmoe_experts *x) {
    /* a rank that holds no experts passes NULL weights */
    return dm_check_experts(fn, "local_experts (this rank's experts, dynmoe_ep_info)", x, ep->num_local, 1);
}

size_t dynmoe_ep_workspace_size(const dynmoe_ep *ep, const dynmoe_router *router,
                                const dynmoe_experts *local_experts, dynmoe_ep_mode mode) {
    static const char fn[] = "dynmoe_ep_workspace_size";
    dm_clear_error();
    dm_ep_layout l;
    if (ep == NULL) return (void)INVALID("%s: ep is NULL", fn), 0;
    if (check_router(fn, ep, router) || check_local_experts(fn, ep, local_experts)) return 0;
    if ((unsigned)mode >= DYNMOE_EP_MODE_COUNT) return (void)INVALID("%s: unknown mode %d", fn, (int)mode), 0;
    const dynmoe_router rt = dm_router_full(router); /* an older caller's struct may be shorter */
    const dynmoe_experts xt = dm_experts_full(local_experts);
    if (!dm_ep_layout_of(ep, &rt, &xt, mode, &l))
        return (void)INVALID("%s: workspace size overflows", fn), 0;
    return l.total + DM_WORKSPACE_ALIGN;
}

/* Every check of a forward, on this rank only; fills `f` when they pass. */
static dynmoe_status check_forward(const char *fn, dynmoe_ep *ep, dynmoe_ctx *ctx, const dynmoe_router *router,
                                   const dynmoe_experts *local_experts, int64_t T, const void *x,
                                   const void *logits, dynmoe_dtype logits_dtype, const float *bias,
                                   const void *mask_logits, void *out, void *workspace, size_t workspace_bytes,
                                   dynmoe_ep_mode mode, dm_ep_fwd *f) {
    if (ctx == NULL || ctx->ops == NULL) return INVALID("%s: ctx is NULL", fn);
    const dynmoe_backend want = ep->transport == DM_EP_MPI ? DYNMOE_BACKEND_CPU : DYNMOE_BACKEND_CUDA;
    if (ctx->backend != want)
        return INVALID("%s: the ep was created for %s, which needs a %s context", fn,
                       ep->transport == DM_EP_MPI ? "MPI" : "NCCL", want == DYNMOE_BACKEND_CPU ? "CPU" : "CUDA");
    TRY(check_router(fn, ep, router));
    TRY(check_local_experts(fn, ep, local_experts));
    /* full copies: an older caller's structs may be shorter */
    f->router = dm_router_full(router);
    f->local_experts = dm_experts_full(local_experts);
    router = &f->router;
    local_experts = &f->local_experts;
    if (router->weight_on_input)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "%s: router.weight_on_input is not supported with expert parallelism",
                       fn);
    TRY(dm_check_implemented(fn, ctx, router, local_experts));
    if ((unsigned)mode >= DYNMOE_EP_MODE_COUNT) return INVALID("%s: unknown mode %d", fn, (int)mode);
    if (T < 0 || T > ep->max_tokens)
        return INVALID("%s: T = %lld must be in [0, config.max_tokens = %lld]", fn, (long long)T,
                       (long long)ep->max_tokens);
    if ((unsigned)logits_dtype >= DYNMOE_DTYPE_COUNT) return INVALID("%s: unknown logits dtype %d", fn, (int)logits_dtype);
    TRY(dm_check_tensor(fn, "x", x, T));
    TRY(dm_check_tensor(fn, "logits", logits, T));
    TRY(dm_check_tensor(fn, "bias", bias, 0));
    TRY(dm_check_tensor(fn, "mask_logits", mask_logits, 0));
    TRY(dm_check_tensor(fn, "out", out, T));
    if (T > 0 && out == x) return INVALID("%s: out aliases x", fn);
    if (!dm_ep_layout_of(ep, router, local_experts, mode, &f->l)) return INVALID("%s: workspace size overflows", fn);
    const size_t need = f->l.total + DM_WORKSPACE_ALIGN;
    /* Every rank communicates, even with T == 0: the workspace is always needed. */
    if (workspace == NULL) return INVALID("%s: workspace is NULL", fn);
    if (workspace_bytes < need)
        return dm_fail(DYNMOE_ERR_WORKSPACE_TOO_SMALL, "%s: workspace has %zu bytes, needs %zu", fn,
                       workspace_bytes, need);
    uintptr_t b = ((uintptr_t)workspace + DM_WORKSPACE_ALIGN - 1) & ~(uintptr_t)(DM_WORKSPACE_ALIGN - 1);
    f->T = T;
    f->x = x;
    f->logits = logits;
    f->mask_logits = mask_logits;
    f->logits_dtype = logits_dtype;
    f->bias = bias;
    f->out = out;
    f->base = (char *)b;
    f->mode = mode;
    return DYNMOE_OK;
}

dynmoe_status dynmoe_ep_moe_forward(dynmoe_ep *ep, dynmoe_ctx *ctx, const dynmoe_router *router,
                                    const dynmoe_experts *local_experts, int64_t T, const void *x,
                                    const void *logits, dynmoe_dtype logits_dtype, const float *bias,
                                    const void *mask_logits, void *out, void *workspace,
                                    size_t workspace_bytes, dynmoe_ep_mode mode, void *stream) {
    static const char fn[] = "dynmoe_ep_moe_forward";
    dm_clear_error();
    if (ep == NULL) return INVALID("%s: ep is NULL", fn); /* no communicator: cannot take part */
    dm_ep_fwd f;
    dynmoe_status st = check_forward(fn, ep, ctx, router, local_experts, T, x, logits, logits_dtype, bias,
                                     mask_logits, out, workspace, workspace_bytes, mode, &f);
    long long key[DM_EP_KEY_COUNT];
    dm_ep_forward_key(ep, &f.router, &f.local_experts, mode, st == DYNMOE_OK, key);
    if (ep->transport == DM_EP_MPI) {
        TRY(dm_ep_mpi_agree(ep, fn, st, key));
        return dm_ep_mpi_forward(ep, ctx, &f);
    }
    /* NCCL: exact mode agrees (it syncs anyway); capacity mode, sync-free and
     * graph-capturable, keeps its checks local. A rank whose mode is not even
     * valid cannot know which protocol the others run. */
    if (mode == DYNMOE_EP_EXACT)
        TRY(dm_ep_nccl_agree(ep, ctx, fn, st, key, stream));
    else
        TRY(st);
    return dm_ep_nccl_forward(ep, ctx, &f, stream);
}
