/* ep/ep_nccl.c — expert parallelism over NCCL for the CUDA backend.
 *
 * The same steps as ep_mpi.c, all enqueued on the caller's stream: the
 * destination of each slot (ep_kernels.cu), its stable position per
 * destination (the CUDA backend's plan over a table whose "experts" are the
 * R ranks), packing, grouped ncclSend/ncclRecv to every peer (self included),
 * the local experts through ctx->ops, the fp32 rows back, and combine.
 *
 * Exact mode needs the per-peer counts on the host to size the transfers: the
 * counts are exchanged on the device, copied to the host and the stream is
 * synchronised once per call (documented in dynmoe.h; not graph-capturable).
 * Capacity mode moves `capacity` slots per pair: no host sync, capturable. */
#include "ep.h"

#ifdef DYNMOE_EP_HAVE_NCCL

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "ep_cuda.h"

enum { AGREE_WORDS = 2 + DM_EP_KEY_COUNT };

typedef struct nccl_state {
    ncclComm_t comm;
    int device;      /* the communicator's CUDA device */
    int32_t *tables; /* device: copies [E], self_copy [E], copy_rank [E*P], copy_local [E*P] */
    /* exact mode's agreement (dm_ep_nccl_agree): device words and the
     * failing rank's message, and their host copies */
    long long *agree_dev;     /* [2 * AGREE_WORDS], then a dm_ep_failure */
    long long agree_host[2 * AGREE_WORDS];
    dm_ep_failure failure_host;
} nccl_state;

static dynmoe_status cuda_fail(int err, const char *what) {
    return dm_fail(DYNMOE_ERR_DEVICE, "dynmoe_ep (NCCL): %s failed: %s", what,
                   cudaGetErrorString((cudaError_t)err));
}
static dynmoe_status nccl_fail(ncclResult_t r, const char *what) {
    return dm_fail(DYNMOE_ERR_DEVICE, "dynmoe_ep (NCCL): %s failed: %s", what, ncclGetErrorString(r));
}

#define CUDA_TRY(call)                                      \
    do {                                                    \
        int e_ = (int)(call);                               \
        if (e_ != 0) return cuda_fail(e_, #call);           \
    } while (0)
#define NCCL_TRY(call)                                      \
    do {                                                    \
        ncclResult_t r_ = (call);                           \
        if (r_ != ncclSuccess) return nccl_fail(r_, #call); \
    } while (0)
#define TRY(expr)                         \
    do {                                  \
        dynmoe_status st_ = (expr);       \
        if (st_ != DYNMOE_OK) return st_; \
    } while (0)

static dm_ep_dev_tables dev_tables(const struct dynmoe_ep *ep) {
    const nccl_state *s = (const nccl_state *)ep->comm;
    const int64_t E = ep->num_experts, P = ep->replicas;
    dm_ep_dev_tables t = {s->tables, s->tables + 2 * E, s->tables + 2 * E + E * P, s->tables + E, ep->replicas};
    return t;
}

dynmoe_status dm_ep_nccl_create(struct dynmoe_ep *ep, const void *nccl_comm, const dynmoe_ep_config *c) {
    static const char fn[] = "dynmoe_ep_create_nccl";
    ncclComm_t comm = *(const ncclComm_t *)nccl_comm;
    int rank = 0, size = 0;
    NCCL_TRY(ncclCommCount(comm, &size));
    NCCL_TRY(ncclCommUserRank(comm, &rank));
    int device = -1, current = -1;
    NCCL_TRY(ncclCommCuDevice(comm, &device));
    CUDA_TRY(cudaGetDevice(&current));
    if (device != current)
        return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: the communicator is on CUDA device %d, the current device is %d",
                       fn, device, current);
    ep->rank = rank;
    ep->num_ranks = size;
    TRY(dm_ep_placement(ep, c, fn));
    nccl_state *s = calloc(1, sizeof *s);
    if (s == NULL) return dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    const size_t E = (size_t)ep->num_experts, P = (size_t)ep->replicas, words = 2 * E + 2 * E * P;
    int32_t *host = malloc(words * sizeof(int32_t));
    cudaError_t err = host ? cudaMalloc((void **)&s->tables, words * sizeof(int32_t)) : cudaErrorMemoryAllocation;
    if (err == cudaSuccess) {
        memcpy(host, ep->copies, E * sizeof(int32_t));
        memcpy(host + E, ep->self_copy, E * sizeof(int32_t));
        memcpy(host + 2 * E, ep->copy_rank, E * P * sizeof(int32_t));
        memcpy(host + 2 * E + E * P, ep->copy_local, E * P * sizeof(int32_t));
        err = cudaMemcpy(s->tables, host, words * sizeof(int32_t), cudaMemcpyHostToDevice);
    }
    free(host);
    if (err == cudaSuccess)
        err = cudaMalloc((void **)&s->agree_dev, sizeof s->agree_host + sizeof s->failure_host);
    if (err != cudaSuccess) {
        if (s->tables) cudaFree(s->tables);
        if (s->agree_dev) cudaFree(s->agree_dev);
        free(s);
        return err == cudaErrorMemoryAllocation
                   ? dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "%s: out of device memory", fn)
                   : cuda_fail((int)err, "copying the placement tables");
    }
    s->comm = comm;
    s->device = device;
    ep->comm = s;
    return DYNMOE_OK;
}

void dm_ep_nccl_destroy(struct dynmoe_ep *ep) {
    nccl_state *s = (nccl_state *)ep->comm;
    if (s == NULL) return;
    cudaFree(s->tables);
    cudaFree(s->agree_dev);
    free(s);
    ep->comm = NULL;
}

/* One ncclAllReduce (MAX over the words and their negations) of this rank's
 * check result and key, enqueued before any other collective of the call,
 * and one stream sync; if a rank failed, one ncclBroadcast of its status and
 * message and a second sync. Every rank returns the same status. Only exact
 * mode calls it: it syncs the stream (so does exact mode's counts exchange). */
dynmoe_status dm_ep_nccl_agree(struct dynmoe_ep *ep, const dynmoe_ctx *ctx, const char *fn, dynmoe_status st,
                               const long long key[DM_EP_KEY_COUNT], void *stream) {
    nccl_state *s = (nccl_state *)ep->comm;
    cudaStream_t cs = (cudaStream_t)stream;
    dm_ep_failure *mine = &s->failure_host;
    mine->status = (int32_t)st;
    mine->detail[0] = '\0';
    if (st != DYNMOE_OK) snprintf(mine->detail, sizeof mine->detail, "%s", dynmoe_last_error());
    int current = -1;
    CUDA_TRY(cudaGetDevice(&current));
    if (current != s->device) /* the stream and the buffers would be on another device */
        return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: the current CUDA device is %d, the NCCL communicator's %d",
                       fn, current, s->device);
    if (st == DYNMOE_OK && ctx->device != s->device) {
        st = dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: ctx is on CUDA device %d, the NCCL communicator on device %d",
                     fn, ctx->device, s->device);
        mine->status = (int32_t)st;
        snprintf(mine->detail, sizeof mine->detail, "%s", dynmoe_last_error());
    }
    long long *h = s->agree_host;
    dm_ep_agree_words(ep, st != DYNMOE_OK, key, DM_EP_KEY_COUNT, h);
    for (int i = 0; i < AGREE_WORDS; i++) h[AGREE_WORDS + i] = -h[i];
    CUDA_TRY(cudaMemcpyAsync(s->agree_dev, h, sizeof s->agree_host, cudaMemcpyHostToDevice, cs));
    NCCL_TRY(ncclAllReduce(s->agree_dev, s->agree_dev, 2 * AGREE_WORDS, ncclInt64, ncclMax, s->comm, cs));
    CUDA_TRY(cudaMemcpyAsync(h, s->agree_dev, sizeof s->agree_host, cudaMemcpyDeviceToHost, cs));
    CUDA_TRY(cudaStreamSynchronize(cs));
    int32_t last = 0;
    const int32_t first = dm_ep_agree_failed_rank(ep, h, &last);
    if (first < 0) return dm_ep_agree_key(fn, h + 2, h + AGREE_WORDS + 2, DM_EP_KEY_COUNT, DM_EP_KEY_ROUTER,
                                          dm_ep_key_names);
    char *fdev = (char *)(s->agree_dev + 2 * AGREE_WORDS);
    CUDA_TRY(cudaMemcpyAsync(fdev, mine, sizeof *mine, cudaMemcpyHostToDevice, cs));
    NCCL_TRY(ncclBroadcast(fdev, fdev, sizeof *mine, ncclUint8, first, s->comm, cs));
    CUDA_TRY(cudaMemcpyAsync(mine, fdev, sizeof *mine, cudaMemcpyDeviceToHost, cs));
    CUDA_TRY(cudaStreamSynchronize(cs));
    mine->detail[sizeof mine->detail - 1] = '\0';
    return dm_ep_agree_fail(ep, first, last, mine->status, mine->detail);
}

/* ncclSend/ncclRecv of `count` elements of `bytes` each, to/from every peer,
 * in one group. Counts of 0 are skipped. */
static dynmoe_status all_to_all_v(ncclComm_t comm, int32_t R, const char *send, const int *scnt, const int *sdsp,
                                  char *recv, const int *rcnt, const int *rdsp, size_t bytes, cudaStream_t s) {
    NCCL_TRY(ncclGroupStart());
    for (int32_t d = 0; d < R; d++) {
        if (scnt[d] > 0) {
            ncclResult_t r = ncclSend(send + (size_t)sdsp[d] * bytes, (size_t)scnt[d] * bytes, ncclUint8, d, comm, s);
            if (r != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(r, "ncclSend");
            }
        }
        if (rcnt[d] > 0) {
            ncclResult_t r = ncclRecv(recv + (size_t)rdsp[d] * bytes, (size_t)rcnt[d] * bytes, ncclUint8, d, comm, s);
            if (r != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(r, "ncclRecv");
            }
        }
    }
    NCCL_TRY(ncclGroupEnd());
    return DYNMOE_OK;
}

dynmoe_status dm_ep_nccl_forward(struct dynmoe_ep *ep, dynmoe_ctx *ctx, const dm_ep_fwd *f, void *stream) {
    const nccl_state *ns = (const nccl_state *)ep->comm;
    cudaStream_t cs = (cudaStream_t)stream;
    if (ctx->device != ns->device) /* still before any work or communication */
        return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT,
                       "dynmoe_ep_moe_forward: ctx is on CUDA device %d, the NCCL communicator on device %d",
                       ctx->device, ns->device);
    const dm_ep_layout *l = &f->l;
    char *base = f->base;
    const int32_t R = ep->num_ranks, K = l->K, E = ep->num_experts, L = ep->num_local, C = l->capacity;
    const int capacity = f->mode == DYNMOE_EP_CAPACITY;
    const int64_t T = f->T, n = T * K;
    const int32_t H = f->local_experts.hidden;
    const size_t esz = f->local_experts.dtype == DYNMOE_F32 ? 4u : 2u, rowb = (size_t)H * esz;
    int32_t *ids = (int32_t *)(base + l->ids);
    float *weights = (float *)(base + l->weights);
    int32_t *send_index = (int32_t *)(base + l->send_index), *dest = (int32_t *)(base + l->dest);
    int32_t *dcounts = (int32_t *)(base + l->counts); /* [2R] send, recv */
    int32_t *send_ids = (int32_t *)(base + l->send_ids);
    char *send_rows = base + l->send_rows, *recv_rows = base + l->recv_rows;
    char *lbase = base + l->local;
    int32_t *recv_ids = (int32_t *)(lbase + l->ll.ids);
    float *back_send = (float *)(base + l->back_send), *back_recv = (float *)(base + l->back_recv);
    dynmoe_stats *lstats = (dynmoe_stats *)(base + l->stats);
    long long *counters = (long long *)(lstats + 1);
    int *scnt = (int *)ep->host_counts, *sdsp = scnt + R, *rcnt = scnt + 2 * R, *rdsp = scnt + 3 * R;
    const dm_ep_dev_tables tab = dev_tables(ep);
    char *dbase = base + l->dest_plan;
    const dynmoe_plan dplan = dm_plan_pointers(dbase, &l->dl, R, n);

    double t0 = dm_ep_now();
    /* ---- route; destination of each slot; stable position per destination */
    CUDA_TRY(cudaMemsetAsync(counters, 0, 4 * sizeof(long long), cs));
    if (T > 0) {
        dm_route_args ra = {f->router, T, f->logits, f->logits_dtype, f->bias, f->mask_logits, ids, weights, ctx->stats};
        TRY(ctx->ops->route(ctx, &ra, stream));
        CUDA_TRY(dm_ep_cuda_dest(ids, n, K, E, tab, dest, stream));
        dm_plan_args pa = {R, 0, T, K, dest, dplan, dbase + l->dl.plan_temp, l->dl.plan_temp_bytes, NULL};
        TRY(ctx->ops->plan(ctx, &pa, stream));
    } else {
        CUDA_TRY(cudaMemsetAsync(dplan.expert_counts, 0, (size_t)R * sizeof(int32_t), cs));
    }
    if (capacity) CUDA_TRY(cudaMemsetAsync(send_ids, 0xff, (size_t)l->send_rows_max * sizeof(int32_t), cs));
    dm_ep_pack_args pk = {n, K, E, f->router.num_zero_experts, capacity ? C : 0, tab, ids, dest,
                          dplan.expert_offsets, dplan.slot_rows, send_index, send_ids, send_rows,
                          (const char *)f->x, (int32_t)rowb, counters};
    CUDA_TRY(dm_ep_cuda_pack(&pk, stream));
    double t1 = dm_ep_now();

    /* ---- exchange */
    int64_t recv_total;
    if (capacity) {
        for (int32_t d = 0; d < R; d++) {
            scnt[d] = rcnt[d] = C;
            sdsp[d] = rdsp[d] = d * C;
        }
        recv_total = (int64_t)R * C;
    } else {
        /* counts on the device, then to the host: the one sync of exact mode */
        NCCL_TRY(ncclGroupStart());
        for (int32_t d = 0; d < R; d++) {
            ncclResult_t r = ncclSend(dplan.expert_counts + d, 1, ncclInt32, d, ns->comm, cs);
            if (r == ncclSuccess) r = ncclRecv(dcounts + R + d, 1, ncclInt32, d, ns->comm, cs);
            if (r != ncclSuccess) {
                ncclGroupEnd();
                return nccl_fail(r, "ncclSend/ncclRecv of the counts");
            }
        }
        NCCL_TRY(ncclGroupEnd());
        CUDA_TRY(cudaMemcpyAsync(scnt, dplan.expert_counts, (size_t)R * sizeof(int32_t), cudaMemcpyDeviceToHost, cs));
        CUDA_TRY(cudaMemcpyAsync(rcnt, dcounts + R, (size_t)R * sizeof(int32_t), cudaMemcpyDeviceToHost, cs));
        CUDA_TRY(cudaStreamSynchronize(cs));
        recv_total = 0;
        for (int32_t d = 0, acc = 0; d < R; d++) {
            sdsp[d] = acc;
            acc += scnt[d];
            rdsp[d] = (int)recv_total;
            recv_total += rcnt[d];
        }
        if (ep->max_recv_rows > 0) { /* every rank learns whether one would overflow */
            int *flag = scnt + 4 * R;
            const int over = recv_total > l->recv_rows_max;
            *flag = over;
            CUDA_TRY(cudaMemcpyAsync(dcounts + 2 * R, flag, sizeof(int), cudaMemcpyHostToDevice, cs));
            NCCL_TRY(ncclAllReduce(dcounts + 2 * R, dcounts + 2 * R, 1, ncclInt32, ncclMax, ns->comm, cs));
            CUDA_TRY(cudaMemcpyAsync(flag, dcounts + 2 * R, sizeof(int), cudaMemcpyDeviceToHost, cs));
            CUDA_TRY(cudaStreamSynchronize(cs));
            if (*flag)
                return over ? dm_fail(DYNMOE_ERR_WORKSPACE_TOO_SMALL,
                                      "dynmoe_ep_moe_forward: rank %d would receive %lld rows, "
                                      "config.max_recv_rows is %lld; no rows were moved",
                                      ep->rank, (long long)recv_total, (long long)l->recv_rows_max)
                            : dm_fail(DYNMOE_ERR_WORKSPACE_TOO_SMALL,
                                      "dynmoe_ep_moe_forward: another rank would receive more rows than its "
                                      "config.max_recv_rows; no rows were moved");
        } else if (recv_total > l->recv_rows_max) {
            return dm_fail(DYNMOE_ERR_INTERNAL, "dynmoe_ep_moe_forward: %lld rows arrived, room for %lld",
                           (long long)recv_total, (long long)l->recv_rows_max);
        }
    }
    TRY(all_to_all_v(ns->comm, R, (const char *)send_ids, scnt, sdsp, (char *)recv_ids, rcnt, rdsp, sizeof(int32_t), cs));
    TRY(all_to_all_v(ns->comm, R, send_rows, scnt, sdsp, recv_rows, rcnt, rdsp, rowb, cs));
    double t2 = dm_ep_now();

    /* ---- local experts on what arrived */
    const int computed = L > 0 && recv_total > 0;
    if (computed) {
        const dm_workspace_layout *ll = &l->ll;
        float *ones = (float *)(lbase + ll->weights);
        CUDA_TRY(dm_ep_cuda_fill(ones, recv_total, 1.0f, stream));
        dm_plan_args pa = {L, 0, recv_total, 1, recv_ids, dm_plan_pointers(lbase, ll, L, recv_total),
                           lbase + ll->plan_temp, ll->plan_temp_bytes, lstats};
        TRY(ctx->ops->plan(ctx, &pa, stream));
        dm_experts_args ea = {dm_ep_local_router(ep), f->local_experts, recv_total, recv_rows, recv_ids, ones, 1,
                              pa.plan, lbase + ll->rows_h, lbase + ll->rows_y, lbase + ll->scratch,
                              ll->scratch_bytes, back_send};
        TRY(ctx->ops->experts(ctx, &ea, stream));
        /* the gather: one slot of weight 1; rows travel back in the experts' dtype, as the CUDA
         * backend's expert rows are (exact: a bf16/f16 value times 1) */
        TRY(ctx->ops->combine(ctx, &ea, stream));
    }
    double t3 = dm_ep_now();

    /* ---- results back */
    TRY(all_to_all_v(ns->comm, R, (const char *)back_send, rcnt, rdsp, (char *)back_recv, scnt, sdsp, rowb, cs));
    double t4 = dm_ep_now();

    /* ---- combine */
    if (T > 0) {
        dynmoe_plan cp = dplan;
        cp.num_experts = E;
        cp.slot_rows = send_index;
        dynmoe_experts gx = f->local_experts;
        gx.num_experts = E;
        dm_experts_args ca = {f->router, gx, T, f->x, ids, weights, K, cp, NULL, back_recv, NULL, 0, f->out};
        TRY(ctx->ops->combine(ctx, &ca, stream));
    }
    if (ctx->stats) CUDA_TRY(dm_ep_cuda_stats(ctx->stats, counters, lstats, computed, T, stream));
    double t5 = dm_ep_now();
    ep->times[DM_EP_T_ROUTE] = t1 - t0;
    ep->times[DM_EP_T_EXCHANGE] = (t2 - t1) + (t4 - t3);
    ep->times[DM_EP_T_EXPERTS] = t3 - t2;
    ep->times[DM_EP_T_COMBINE] = t5 - t4;
    return DYNMOE_OK;
}

#else /* built without NCCL */

dynmoe_status dm_ep_nccl_create(struct dynmoe_ep *ep, const void *nccl_comm, const dynmoe_ep_config *c) {
    (void)ep;
    (void)nccl_comm;
    (void)c;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED, "dynmoe_ep_create_nccl: dynmoe was built without NCCL "
                                           "(DYNMOE_NCCL=OFF, no CUDA backend, or nccl.h/libnccl not found)");
}

void dm_ep_nccl_destroy(struct dynmoe_ep *ep) { (void)ep; }

dynmoe_status dm_ep_nccl_agree(struct dynmoe_ep *ep, const dynmoe_ctx *ctx, const char *fn, dynmoe_status st,
                               const long long key[DM_EP_KEY_COUNT], void *stream) {
    (void)ep;
    (void)ctx;
    (void)fn;
    (void)key;
    (void)stream;
    return st;
}

dynmoe_status dm_ep_nccl_forward(struct dynmoe_ep *ep, dynmoe_ctx *ctx, const dm_ep_fwd *f, void *stream) {
    (void)ep;
    (void)ctx;
    (void)f;
    (void)stream;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED, "dynmoe_ep_moe_forward: dynmoe was built without NCCL");
}

#endif
