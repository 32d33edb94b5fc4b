/* ep/ep.h — expert parallelism inside the library: the communicator handle,
 * the placement tables, the workspace layout of dynmoe_ep_moe_forward, and
 * the entry points of the two transports (ep_mpi.c, ep_nccl.c).
 *
 * One forward, on every rank (S = K slots per token, R ranks):
 *   route    ids, weights [T, K]                     ctx->ops->route
 *   assign   slot -> (destination rank, position)    (token, slot) order per destination
 *   pack     send_rows [rows, H] = x[token(slot)], send_ids = local expert on the destination
 *   exchange counts (exact) then rows and ids        all-to-all(-v)
 *   experts  plan over the received rows (one slot each, weight 1, L experts)
 *            + ctx->ops->experts; the fp32 results back in arrival order via
 *            ctx->ops->combine (dtype F32, one slot of weight 1: a gather)
 *   exchange the fp32 rows back
 *   combine  ctx->ops->combine over the original ids/weights with slot_rows
 *            pointing into the returned rows; dropped slots have id -1.
 */
#ifndef DYNMOE_EP_H
#define DYNMOE_EP_H

#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DM_EP_MPI = 0, DM_EP_NCCL = 1 } dm_ep_transport;

enum { DM_EP_T_ROUTE = 0, DM_EP_T_EXCHANGE = 1, DM_EP_T_EXPERTS = 2, DM_EP_T_COMBINE = 3 };

struct dynmoe_ep {
    dm_ep_transport transport;
    int32_t rank, num_ranks;
    int32_t num_experts;   /* E */
    int32_t replicas;      /* P, columns of the placement tables */
    int32_t *copies;       /* [E] n_e */
    int32_t *copy_rank;    /* [E, P] rank of copy p, -1 past n_e */
    int32_t *copy_local;   /* [E, P] local index of e on that rank */
    int32_t *self_copy;    /* [E] column of this rank's copy, -1 if none */
    int32_t *local_ids;    /* [L] global ids of the local experts, ascending */
    int32_t num_local;     /* L */
    int32_t max_local;     /* max over ranks of L */
    int64_t max_tokens;
    int32_t capacity;      /* as configured (0 = lossless) */
    int64_t max_recv_rows; /* as configured (0 = worst case) */
    int32_t *host_counts;  /* [4R + 2] send/recv counts and displacements, a flag (host) */
    double times[4];       /* last forward, seconds */
    void *comm;            /* transport state (MPI_Comm* or ncclComm_t + device tables) */
};

/* The owner of a slot of local token t for expert e: (rank, local index there). */
static inline void dm_ep_owner(const struct dynmoe_ep *ep, int32_t e, int64_t t, int32_t *rank,
                               int32_t *local) {
    int32_t p = ep->self_copy[e];
    if (p < 0) p = (int32_t)(t % ep->copies[e]);
    *rank = ep->copy_rank[(int64_t)e * ep->replicas + p];
    *local = ep->copy_local[(int64_t)e * ep->replicas + p];
}

/* The workspace of one forward (byte offsets from the aligned base). */
typedef struct dm_ep_layout {
    int64_t T;        /* max_tokens */
    int32_t K;        /* slots per token */
    int32_t capacity; /* effective C (capacity mode), else 0 */
    int64_t send_rows_max, recv_rows_max;
    size_t ids, weights;         /* [T, K] route output */
    size_t send_index;           /* [T, K] slot -> row of back_recv, -1 */
    size_t dest;                 /* [T, K] destination rank, -1 (device assign) */
    size_t dest_plan, dest_plan_end; /* plan of dest over R "experts" (device assign) */
    dm_workspace_layout dl;      /* that plan's layout, relative to dest_plan */
    size_t counts;               /* [2R + 2] send counts, recv counts, a flag (device) */
    size_t send_ids, send_rows;  /* [send_rows_max] i32, [send_rows_max, H] dtype */
    size_t recv_rows;            /* [recv_rows_max, H] dtype */
    size_t local;                /* local plan + experts workspace (ll relative to it) */
    dm_workspace_layout ll;      /* ids = recv_ids, weights = ones */
    size_t back_send;            /* [recv_rows_max, H] f32 */
    size_t back_recv;            /* [send_rows_max, H] f32 */
    size_t stats;                /* [2] dynmoe_stats: the local plan's; counters (NCCL path) */
    size_t total;
} dm_ep_layout;

/* 0 on overflow. `ep`, `router`, `local_experts` trusted. */
int dm_ep_layout_of(const struct dynmoe_ep *ep, const dynmoe_router *router,
                    const dynmoe_experts *local_experts, dynmoe_ep_mode mode, dm_ep_layout *l);
/* The router of the local experts: L experts, one slot, no zero experts. */
dynmoe_router dm_ep_local_router(const struct dynmoe_ep *ep);
double dm_ep_now(void);

/* Builds the placement tables of `ep` (rank, num_ranks set) from config; frees nothing on failure. */
dynmoe_status dm_ep_placement(struct dynmoe_ep *ep, const dynmoe_ep_config *config, const char *fn);
void dm_ep_free_tables(struct dynmoe_ep *ep);

/* ---- agreement: what every rank of a collective call must pass alike ----
 * Before any data moves, the ranks compare, in one small all-reduce, whether
 * each passed its own argument checks and the values below; every rank then
 * returns the same status and message (naming the lowest rank that failed).
 * MPI: at create and at every forward. NCCL: at every exact-mode forward
 * (it syncs the stream anyway); capacity mode stays sync-free, its checks
 * are local (docs/expert_parallel.md). */
enum {
    DM_EP_KEY_MODE = 0,   /* forward: the mode */
    DM_EP_KEY_HIDDEN,     /* local_experts.hidden */
    DM_EP_KEY_INTER,      /* local_experts.inter */
    DM_EP_KEY_DTYPE,      /* local_experts.dtype */
    DM_EP_KEY_ACT,        /* local_experts.act + 16 gate_up + 256 weight_format */
    DM_EP_KEY_ROUTER,     /* a fingerprint of every router field */
    DM_EP_KEY_CONFIG,     /* a fingerprint of the ep's config and placement */
    DM_EP_KEY_COUNT
};
/* The names of the key's entries, for messages. */
extern const char *const dm_ep_key_names[DM_EP_KEY_COUNT];
/* The key of a forward; all zeros when `ok` is 0 (the arguments failed their checks). */
void dm_ep_forward_key(const struct dynmoe_ep *ep, const dynmoe_router *router, const dynmoe_experts *local_experts,
                       dynmoe_ep_mode mode, int ok, long long key[DM_EP_KEY_COUNT]);
/* The fingerprint of the config the placement was built from (FNV-1a, 63 bits). */
long long dm_ep_config_hash(const struct dynmoe_ep *ep);
/* words [2 + n] of one rank for the all-reduce (MAX over words and their
 * negations): [0] R - rank when `failed` (MAX: the lowest failing rank), [1]
 * rank + 1 when failed (the highest), then the key. */
void dm_ep_agree_words(const struct dynmoe_ep *ep, int failed, const long long *key, int n, long long *words);
/* After the all-reduce: max[i] and negmax[i] = max over ranks of -words[i].
 * Returns -1 when no rank failed, else the lowest failing rank (and its
 * highest in *last). */
int32_t dm_ep_agree_failed_rank(const struct dynmoe_ep *ep, const long long *max, int32_t *last);
/* DYNMOE_OK when every rank passed the same key, else fails with a message
 * naming the first entry that differs (entries from first_hash on are
 * fingerprints: their values are not printed). */
dynmoe_status dm_ep_agree_key(const char *fn, const long long *max, const long long *negmax, int n,
                              int first_hash, const char *const *names);
/* The message every rank returns when rank `first` (.. `last`) failed with
 * (status, detail): dm_fail's. */
dynmoe_status dm_ep_agree_fail(const struct dynmoe_ep *ep, int32_t first, int32_t last, int status,
                               const char *detail);
/* The failing rank's status and message, broadcast to every rank. */
typedef struct dm_ep_failure {
    int32_t status;
    char detail[508];
} dm_ep_failure;

/* Transports: validated arguments, base = aligned workspace. */
typedef struct dm_ep_fwd {
    dynmoe_router router;
    dynmoe_experts local_experts;
    int64_t T;
    const void *x, *logits, *mask_logits;
    dynmoe_dtype logits_dtype;
    const float *bias;
    void *out;
    char *base;
    dm_ep_layout l;
    dynmoe_ep_mode mode;
} dm_ep_fwd;

/* Collective on every rank that got a communicator: `st` is this rank's own
 * check result (config is NULL unless it is OK); returns the agreed status. */
dynmoe_status dm_ep_mpi_create(struct dynmoe_ep *ep, const void *mpi_comm, const dynmoe_ep_config *c,
                               dynmoe_status st);
void dm_ep_mpi_destroy(struct dynmoe_ep *ep);
/* The agreement of a forward (collective): `st` this rank's check result. */
dynmoe_status dm_ep_mpi_agree(struct dynmoe_ep *ep, const char *fn, dynmoe_status st,
                              const long long key[DM_EP_KEY_COUNT]);
dynmoe_status dm_ep_mpi_forward(struct dynmoe_ep *ep, dynmoe_ctx *ctx, const dm_ep_fwd *f);

dynmoe_status dm_ep_nccl_create(struct dynmoe_ep *ep, const void *nccl_comm, const dynmoe_ep_config *c);
void dm_ep_nccl_destroy(struct dynmoe_ep *ep);
/* Exact mode's agreement: the first collective of the call, then one stream
 * sync (exact mode syncs anyway). `st` this rank's check result, to which it
 * adds the check that ctx (may be NULL) is on the communicator's device. */
dynmoe_status dm_ep_nccl_agree(struct dynmoe_ep *ep, const dynmoe_ctx *ctx, const char *fn, dynmoe_status st,
                               const long long key[DM_EP_KEY_COUNT], void *stream);
dynmoe_status dm_ep_nccl_forward(struct dynmoe_ep *ep, dynmoe_ctx *ctx, const dm_ep_fwd *f, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* DYNMOE_EP_H */
