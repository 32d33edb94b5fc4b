/* ep/ep_mpi.c — expert parallelism over MPI for the CPU backend.
 *
 * Exact mode: MPI_Alltoall of the per-destination slot counts, then
 * MPI_Alltoallv of the local expert ids and of the x rows; the fp32 results
 * come back with one more MPI_Alltoallv. Capacity mode: the same with fixed
 * counts (MPI_Alltoall of `capacity` slots per pair), so no counts exchange.
 * Napkin math (Qwen3-30B-A3B, H 2048, K 8, bf16 x, 4 ranks): each routed slot
 * moves 4 KiB out and 8 KiB (fp32) back; with 3/4 of the slots remote that is
 * 9 KiB per slot against 2*3*768*2048 = 9.4 MFLOP of expert work on it. */
#include "ep.h"

#ifdef DYNMOE_EP_HAVE_MPI

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

static dynmoe_status mpi_fail(int rc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len] = '\0';
    return dm_fail(DYNMOE_ERR_DEVICE, "dynmoe_ep (MPI): %s failed: %s", what, msg);
}

#define MPI_TRY(call)                                  \
    do {                                               \
        int rc_ = (call);                              \
        if (rc_ != MPI_SUCCESS) {                      \
            st = mpi_fail(rc_, #call);                 \
            goto done;                                 \
        }                                              \
    } while (0)

#define DM_TRY(expr)                   \
    do {                               \
        st = (expr);                   \
        if (st != DYNMOE_OK) goto done; \
    } while (0)

/* One MPI_Allreduce (MAX over the words and their negations) of this rank's
 * check result `st` and its key; then, if a rank failed, one MPI_Bcast of
 * that rank's status and message. Every rank returns the same status. */
static dynmoe_status agree(struct dynmoe_ep *ep, MPI_Comm comm, const char *fn, dynmoe_status st,
                           const long long *key, int n, int first_hash, const char *const *names) {
    enum { MAXW = 2 + 16 };
    long long in[2 * MAXW], mx[2 * MAXW];
    const int w = 2 + n;
    dm_ep_failure mine = {(int32_t)st, ""};
    if (st != DYNMOE_OK) snprintf(mine.detail, sizeof mine.detail, "%s", dynmoe_last_error());
    dm_ep_agree_words(ep, st != DYNMOE_OK, key, n, in);
    for (int i = 0; i < w; i++) in[w + i] = -in[i];
    int rc = MPI_Allreduce(in, mx, 2 * w, MPI_LONG_LONG, MPI_MAX, comm);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Allreduce (the ranks' agreement)");
    int32_t last = 0;
    const int32_t first = dm_ep_agree_failed_rank(ep, mx, &last);
    if (first < 0) return dm_ep_agree_key(fn, mx + 2, mx + w + 2, n, first_hash, names);
    rc = MPI_Bcast(&mine, (int)sizeof mine, MPI_BYTE, first, comm);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Bcast (the failing rank's message)");
    mine.detail[sizeof mine.detail - 1] = '\0';
    return dm_ep_agree_fail(ep, first, last, mine.status, mine.detail);
}

dynmoe_status dm_ep_mpi_agree(struct dynmoe_ep *ep, const char *fn, dynmoe_status st,
                              const long long key[DM_EP_KEY_COUNT]) {
    return agree(ep, *(MPI_Comm *)ep->comm, fn, st, key, DM_EP_KEY_COUNT, DM_EP_KEY_ROUTER, dm_ep_key_names);
}

dynmoe_status dm_ep_mpi_create(struct dynmoe_ep *ep, const void *mpi_comm, const dynmoe_ep_config *c,
                               dynmoe_status st) {
    static const char fn[] = "dynmoe_ep_create_mpi";
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: MPI is not initialised (or finalised)", fn);
    MPI_Comm *comm = malloc(sizeof *comm);
    if (comm == NULL) return dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    int rc = MPI_Comm_dup(*(const MPI_Comm *)mpi_comm, comm);
    if (rc != MPI_SUCCESS) {
        free(comm);
        return mpi_fail(rc, "MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(*comm, MPI_ERRORS_RETURN);
    int rank = 0, size = 1;
    MPI_Comm_rank(*comm, &rank);
    MPI_Comm_size(*comm, &size);
    ep->rank = rank;
    ep->num_ranks = size;
    ep->comm = comm;
    /* Every rank takes part in the check, so that a bad config fails everywhere
     * (with the failing rank's message) instead of leaving the other ranks
     * blocked in the first forward. */
    if (st == DYNMOE_OK) st = dm_ep_placement(ep, c, fn);
    long long key = st == DYNMOE_OK ? dm_ep_config_hash(ep) : 0;
    st = agree(ep, *comm, fn, st, &key, 1, 0, &dm_ep_key_names[DM_EP_KEY_CONFIG]);
    if (st != DYNMOE_OK) {
        MPI_Comm_free(comm);
        free(comm);
        ep->comm = NULL;
    }
    return st;
}

void dm_ep_mpi_destroy(struct dynmoe_ep *ep) {
    MPI_Comm *comm = (MPI_Comm *)ep->comm;
    if (comm == NULL) return;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Comm_free(comm);
    free(comm);
    ep->comm = NULL;
}

dynmoe_status dm_ep_mpi_forward(struct dynmoe_ep *ep, dynmoe_ctx *ctx, const dm_ep_fwd *f) {
    MPI_Comm comm = *(MPI_Comm *)ep->comm;
    const dm_ep_layout *l = &f->l;
    char *base = f->base;
    const int32_t R = ep->num_ranks, K = l->K, E = ep->num_experts, Z = f->router.num_zero_experts;
    const int32_t L = ep->num_local, C = l->capacity;
    const int capacity = f->mode == DYNMOE_EP_CAPACITY;
    const int64_t T = f->T, n = T * K;
    const int32_t H = f->local_experts.hidden;
    const size_t esz = f->local_experts.dtype == DYNMOE_F32 ? 4u : 2u, rowb = (size_t)H * esz;
    int32_t *ids = (int32_t *)(base + l->ids);
    float *weights = (float *)(base + l->weights);
    int32_t *send_index = (int32_t *)(base + l->send_index);
    int32_t *send_ids = (int32_t *)(base + l->send_ids);
    char *send_rows = base + l->send_rows, *recv_rows = base + l->recv_rows;
    char *lbase = base + l->local;
    int32_t *recv_ids = (int32_t *)(lbase + l->ll.ids);
    float *back_send = (float *)(base + l->back_send), *back_recv = (float *)(base + l->back_recv);
    dynmoe_stats *lstats = (dynmoe_stats *)(base + l->stats);
    int *scnt = (int *)ep->host_counts, *sdsp = scnt + R, *rcnt = scnt + 2 * R, *rdsp = scnt + 3 * R;
    MPI_Datatype row_t = MPI_DATATYPE_NULL, back_t = MPI_DATATYPE_NULL;
    dynmoe_status st = DYNMOE_OK;
    int64_t overflow = 0, empty = 0, zero = 0, sent = 0, recv_total = 0;
    int computed = 0;

    double t0 = dm_ep_now();
    /* ---- route, then assign each real-expert slot a destination and a
     * position there, in (token, slot) order; capacity drops the rest. */
    if (T > 0) {
        dm_route_args ra = {f->router, T, f->logits, f->logits_dtype, f->bias, f->mask_logits, ids, weights, ctx->stats};
        DM_TRY(ctx->ops->route(ctx, &ra, NULL));
    }
    for (int32_t d = 0; d < R; d++) scnt[d] = 0;
    for (int64_t s = 0; s < n; s++) {
        const int32_t id = ids[s];
        send_index[s] = -1;
        if (id >= 0 && id < E) {
            int32_t d, lid;
            dm_ep_owner(ep, id, s / K, &d, &lid);
            if (capacity && scnt[d] >= C) { /* dropped: contributes 0, as if id were -1 */
                ids[s] = -1;
                overflow++;
                continue;
            }
            send_index[s] = scnt[d]++;
            sent++;
        } else if (id == -1) {
            empty++;
        } else if (id >= E && id < E + Z) {
            zero++;
        }
    }
    for (int32_t d = 0, acc = 0; d < R; d++) {
        sdsp[d] = capacity ? d * C : acc;
        acc += scnt[d];
    }
    if (capacity)
        for (int64_t p = 0; p < l->send_rows_max; p++) send_ids[p] = -1;
    /* ---- pack: the x row and the local expert index of every travelling slot */
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < n; s++) {
        if (send_index[s] < 0) continue;
        int32_t d, lid;
        dm_ep_owner(ep, ids[s], s / K, &d, &lid);
        const int32_t p = sdsp[d] + send_index[s];
        send_index[s] = p;
        send_ids[p] = lid;
        memcpy(send_rows + (size_t)p * rowb, (const char *)f->x + (size_t)(s / K) * rowb, rowb);
    }
    double t1 = dm_ep_now();

    /* ---- exchange the rows */
    MPI_TRY(MPI_Type_contiguous((int)rowb, MPI_BYTE, &row_t));
    MPI_TRY(MPI_Type_commit(&row_t));
    MPI_TRY(MPI_Type_contiguous(H, MPI_FLOAT, &back_t));
    MPI_TRY(MPI_Type_commit(&back_t));
    if (capacity) {
        MPI_TRY(MPI_Alltoall(send_ids, C, MPI_INT32_T, recv_ids, C, MPI_INT32_T, comm));
        MPI_TRY(MPI_Alltoall(send_rows, C, row_t, recv_rows, C, row_t, comm));
        recv_total = (int64_t)R * C;
    } else {
        MPI_TRY(MPI_Alltoall(scnt, 1, MPI_INT, rcnt, 1, MPI_INT, comm));
        for (int32_t d = 0; d < R; d++) {
            rdsp[d] = (int)recv_total;
            recv_total += rcnt[d];
        }
        if (ep->max_recv_rows > 0) { /* every rank learns whether one would overflow */
            int over = recv_total > l->recv_rows_max, any = 0;
            MPI_TRY(MPI_Allreduce(&over, &any, 1, MPI_INT, MPI_MAX, comm));
            if (any) {
                st = over ? dm_fail(DYNMOE_ERR_WORKSPACE_TOO_SMALL,
                                    "dynmoe_ep_moe_forward: rank %d would receive %lld rows, config.max_recv_rows "
                                    "is %lld; no rows were moved", ep->rank, (long long)recv_total,
                                    (long long)l->recv_rows_max)
                          : dm_fail(DYNMOE_ERR_WORKSPACE_TOO_SMALL,
                                    "dynmoe_ep_moe_forward: another rank would receive more rows than its "
                                    "config.max_recv_rows; no rows were moved");
                goto done;
            }
        } else if (recv_total > l->recv_rows_max) { /* cannot happen: the worst case is sized */
            st = dm_fail(DYNMOE_ERR_INTERNAL, "dynmoe_ep_moe_forward: %lld rows arrived, room for %lld",
                         (long long)recv_total, (long long)l->recv_rows_max);
            goto done;
        }
        MPI_TRY(MPI_Alltoallv(send_ids, scnt, sdsp, MPI_INT32_T, recv_ids, rcnt, rdsp, MPI_INT32_T, comm));
        MPI_TRY(MPI_Alltoallv(send_rows, scnt, sdsp, row_t, recv_rows, rcnt, rdsp, row_t, comm));
    }
    double t2 = dm_ep_now();

    /* ---- the local experts on what arrived: one slot per row, weight 1 */
    if (L > 0 && recv_total > 0) {
        const dm_workspace_layout *ll = &l->ll;
        float *ones = (float *)(lbase + ll->weights);
        for (int64_t j = 0; j < recv_total; j++) ones[j] = 1.0f;
        dm_plan_args pa = {L, 0, recv_total, 1, recv_ids, dm_plan_pointers(lbase, ll, L, recv_total),
                           lbase + ll->plan_temp, ll->plan_temp_bytes, lstats};
        DM_TRY(ctx->ops->plan(ctx, &pa, NULL));
        dm_experts_args ea = {dm_ep_local_router(ep), f->local_experts, recv_total, recv_rows, recv_ids, ones, 1,
                              pa.plan, lbase + ll->rows_h, lbase + ll->rows_y, lbase + ll->scratch,
                              ll->scratch_bytes, back_send};
        DM_TRY(ctx->ops->experts(ctx, &ea, NULL));
        /* fp32 results in arrival order: a combine of one slot of weight 1 (a gather) */
        ea.experts.dtype = DYNMOE_F32;
        DM_TRY(ctx->ops->combine(ctx, &ea, NULL));
        computed = 1;
    }
    double t3 = dm_ep_now();

    /* ---- results back, in the order they were sent */
    if (capacity) {
        MPI_TRY(MPI_Alltoall(back_send, C, back_t, back_recv, C, back_t, comm));
    } else {
        MPI_TRY(MPI_Alltoallv(back_send, rcnt, rdsp, back_t, back_recv, scnt, sdsp, back_t, comm));
    }
    double t4 = dm_ep_now();

    /* ---- combine with the original weights; slot_rows point into back_recv */
    if (T > 0) {
        dynmoe_plan cp = dm_plan_pointers(base + l->dest_plan, &l->dl, E, n);
        cp.slot_rows = send_index;
        dynmoe_experts gx = f->local_experts;
        gx.num_experts = E;
        dm_experts_args ca = {f->router, gx, T, f->x, ids, weights, K, cp, NULL, back_recv, NULL, 0, f->out};
        DM_TRY(ctx->ops->combine(ctx, &ca, NULL));
    }
    double t5 = dm_ep_now();
    ep->times[DM_EP_T_ROUTE] = t1 - t0;
    ep->times[DM_EP_T_EXCHANGE] = (t2 - t1) + (t4 - t3);
    ep->times[DM_EP_T_EXPERTS] = t3 - t2;
    ep->times[DM_EP_T_COMBINE] = t5 - t4;
    if (ctx->stats) {
        dynmoe_stats *s = ctx->stats;
        s->tokens = T;
        if (T == 0) s->nonfinite_rows = 0;
        s->routed_slots = sent;
        s->empty_slots = empty;
        s->zero_expert_slots = zero;
        s->invalid_ids = 0;
        s->active_experts = computed ? lstats->active_experts : 0;
        s->max_expert_rows = computed ? lstats->max_expert_rows : 0;
        s->overflow_slots = overflow;
    }
done:
    if (row_t != MPI_DATATYPE_NULL) MPI_Type_free(&row_t);
    if (back_t != MPI_DATATYPE_NULL) MPI_Type_free(&back_t);
    return st;
}

#else /* built without MPI */

dynmoe_status dm_ep_mpi_create(struct dynmoe_ep *ep, const void *mpi_comm, const dynmoe_ep_config *c,
                               dynmoe_status st) {
    (void)ep;
    (void)mpi_comm;
    (void)c;
    (void)st;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED,
                   "dynmoe_ep_create_mpi: dynmoe was built without MPI (DYNMOE_MPI=OFF or MPI not found)");
}

void dm_ep_mpi_destroy(struct dynmoe_ep *ep) { (void)ep; }

dynmoe_status dm_ep_mpi_agree(struct dynmoe_ep *ep, const char *fn, dynmoe_status st,
                              const long long key[DM_EP_KEY_COUNT]) {
    (void)ep;
    (void)fn;
    (void)key;
    return st;
}

dynmoe_status dm_ep_mpi_forward(struct dynmoe_ep *ep, dynmoe_ctx *ctx, const dm_ep_fwd *f) {
    (void)ep;
    (void)ctx;
    (void)f;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED, "dynmoe_ep_moe_forward: dynmoe was built without MPI");
}

#endif
