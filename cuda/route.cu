/*
 * route.cu — routing on the GPU: one warp per token.
 *
 * Every rule comes from csrc/route_rules.h (the DYNMOE_HD functions that the
 * CPU's dm_route_token_serial strings together); this file only decides how a
 * warp shares the work of one token:
 *   scores     lanes own experts e = lane + 32j; max and softmax sum by warp
 *              reduction (butterfly: every lane ends with the same bits)
 *   group      lane j scores group j (dm_group_score); lane 0 keeps the best
 *              groups with dm_topk_insert, exactly as the serial path
 *   selection  K rounds of a warp arg-max under dm_better (larger choice,
 *              ties to the lower id): each lane keeps the best of its experts
 *              that rank below the last winner; only the winner's lane rescans
 *   finalize   lane 0 calls dm_finalize_slots on the selection
 * The selected ids are exactly the serial path's on the same choice values
 * (the K best under a strict total order are unique and come out best
 * first). Scores differ from the CPU's in the last bits: the device uses
 * expf (as on the CPU) and a tree sum for the softmax.
 *
 * Per-warp scratch lives in shared memory: the token's scores s[N] and
 * choices c[N] (N = E+Z <= 1024) and the selection arrays (K <= 64), about
 * 10 KiB per warp at N = 1024, 4 warps per block. No local-memory arrays.
 */
#include <math.h>
#include <stdint.h>

#include "cuda_backend.h"
#include "hd.h"

#include "route_rules.h"

#define DM_ROUTE_WARPS 4
#define DM_ROUTE_THREADS (32 * DM_ROUTE_WARPS)
#define DM_SLOTS_MAX DYNMOE_MAX_TOP_K

/* Per-warp scratch; followed in shared memory by s[N] and c[N]. */
typedef struct dm_route_smem {
    int32_t sel_id[DM_SLOTS_MAX];  /* selection, best first */
    float sel_s[DM_SLOTS_MAX];     /* its unbiased scores */
    float sel_mask[DM_SLOTS_MAX];  /* its BEAM mask logits */
    int32_t out_id[DM_SLOTS_MAX];  /* the token's output slots (all tasks) */
    float out_w[DM_SLOTS_MAX];
    float gscore[DM_MAX_GROUPS];   /* group limit */
    float gsel_c[DM_MAX_GROUPS];
    int32_t gsel_id[DM_MAX_GROUPS];
    int32_t task_id[DM_SLOTS_MAX]; /* picked tasks, best first */
    unsigned long long keep;       /* kept groups, bit j = group j */
    int64_t pad;
} dm_route_smem;

/* Bytes of one warp's scratch for N candidates (16-byte multiple). */
static size_t warp_smem_bytes(int32_t N) {
    return sizeof(dm_route_smem) + (((size_t)2 * N * sizeof(float) + 15) / 16) * 16;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(DM_FULL_MASK, v, o));
    return v;
}

/* Butterfly sum: a+b and b+a are the same float, so every lane gets the same bits. */
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DM_FULL_MASK, v, o);
    return v;
}

/* The best (by dm_better) finite v[e] among this lane's entries e = lane + 32j
 * < n that rank strictly below the pivot (pc, pid) when has_pivot. None:
 * (-inf, INT32_MAX). */
__device__ __forceinline__ void lane_best(const float *v, int32_t n, int lane, int has_pivot, float pc,
                                          int32_t pid, float *bc, int32_t *bid) {
    float c = dm_neg_inf();
    int32_t id = INT32_MAX;
    for (int32_t e = lane; e < n; e += 32) {
        const float x = v[e];
        if (!dm_isfinite(x)) continue;
        if (has_pivot && !dm_better(pc, pid, x, e)) continue;
        if (dm_better(x, e, c, id)) {
            c = x;
            id = e;
        }
    }
    *bc = c;
    *bid = id;
}

/* The (up to) cap best finite entries of v[0..n) by dm_better, best first,
 * into sel_id (lane 0 writes); returns how many. The same set and order as
 * cap successive dm_topk_insert calls over e = 0..n-1. All 32 lanes call it. */
__device__ int32_t warp_select(const float *v, int32_t n, int32_t cap, int lane, int32_t *sel_id) {
    float bc;
    int32_t bid;
    lane_best(v, n, lane, 0, 0.0f, 0, &bc, &bid);
    int32_t k = 0;
    for (; k < cap; k++) {
        float wc = bc;
        int32_t wid = bid;
        for (int o = 16; o > 0; o >>= 1) {
            const float oc = __shfl_xor_sync(DM_FULL_MASK, wc, o);
            const int32_t oid = __shfl_xor_sync(DM_FULL_MASK, wid, o);
            if (dm_better(oc, oid, wc, wid)) {
                wc = oc;
                wid = oid;
            }
        }
        if (!dm_isfinite(wc)) break; /* warp-uniform: every lane holds the same winner */
        if (lane == 0) sel_id[k] = wid;
        if ((wid & 31) == lane) lane_best(v, n, lane, 1, wc, wid, &bc, &bid);
    }
    __syncwarp();
    return k;
}

/* Routes one token with the whole warp. On entry s[0..N) holds its fp32
 * logits; s and c are this warp's shared scratch. mask (dtype mdt, element
 * mask_row + id) or NULL. Writes out_id/out_w [K] (shared). Returns 1 when the
 * token had no finite logit (all slots empty). Mirrors dm_route_token_serial. */
__device__ int warp_route_token(const dynmoe_router *r, float *s, float *c, const float *bias,
                                const void *mask, dynmoe_dtype mdt, int64_t mask_row, dm_route_smem *ws,
                                int32_t *out_id, float *out_w, int lane) {
    const int32_t E = r->num_experts, N = E + r->num_zero_experts, K = r->top_k;

    float mx = dm_neg_inf();
    for (int32_t e = lane; e < N; e += 32) {
        const float l = s[e];
        if (dm_isfinite(l) && l > mx) mx = l;
    }
    mx = warp_max(mx);
    if (!dm_isfinite(mx)) {
        for (int32_t k = lane; k < K; k += 32) {
            out_id[k] = -1;
            out_w[k] = 0.0f;
        }
        __syncwarp();
        return 1;
    }
    float inv_sum = 1.0f;
    if (r->score == DYNMOE_SCORE_SOFTMAX) {
        float sum = 0.0f;
        for (int32_t e = lane; e < N; e += 32)
            if (dm_isfinite(s[e])) sum += DM_EXPF(s[e] - mx);
        inv_sum = 1.0f / warp_sum(sum);
    }
    for (int32_t e = lane; e < N; e += 32) {
        const float l = s[e];
        const float sv = dm_score(r->score, l, mx, inv_sum);
        c[e] = dm_choice(r, l, sv, bias ? bias[e] : 0.0f);
        s[e] = sv;
    }
    __syncwarp();

    if (r->num_groups > 0) {
        const int32_t G = r->num_groups, gsize = E / G; /* the API checks that G divides E */
        for (int32_t j = lane; j < G; j += 32) {
            const int32_t b0 = dm_group_begin(E, G, j), b1 = dm_group_begin(E, G, j + 1);
            ws->gscore[j] = dm_group_score(c + b0, s + b0, b1 - b0, bias != NULL);
        }
        __syncwarp();
        if (lane == 0) {
            int32_t ng = 0;
            for (int32_t j = 0; j < G; j++)
                ng = dm_topk_insert(ws->gsel_c, ws->gsel_id, ng, r->topk_groups, ws->gscore[j], j);
            unsigned long long keep = 0;
            for (int32_t i = 0; i < ng; i++) keep |= 1ull << ws->gsel_id[i];
            ws->keep = keep;
        }
        __syncwarp();
        const unsigned long long keep = ws->keep;
        for (int32_t e = lane; e < E; e += 32)
            if (!((keep >> (e / gsize)) & 1ull)) c[e] = dm_neg_inf();
        __syncwarp();
    }

    const int32_t n = warp_select(c, N, K, lane, ws->sel_id);
    for (int32_t i = lane; i < n; i += 32) {
        const int32_t id = ws->sel_id[i];
        ws->sel_s[i] = s[id];
        ws->sel_mask[i] = (mask != NULL && id < E) ? dm_load(mask, mdt, mask_row + id) : 1.0f;
    }
    __syncwarp();
    if (lane == 0) dm_finalize_slots(r, n, ws->sel_id, ws->sel_s, mask ? ws->sel_mask : NULL, out_id, out_w);
    __syncwarp();
    return 0;
}

/* This warp's scratch inside the block's dynamic shared memory. */
__device__ __forceinline__ dm_route_smem *warp_scratch(unsigned char *smem, size_t warp_bytes, int warp,
                                                       float **s, float **c, int32_t N) {
    dm_route_smem *ws = (dm_route_smem *)(smem + (size_t)warp * warp_bytes);
    *s = (float *)(ws + 1);
    *c = *s + N;
    return ws;
}

/* Per-block counters of the stats that routing fills. */
typedef struct dm_route_counts {
    int nonfinite, empty, zero;
} dm_route_counts;

/* Counts the empty and zero-expert slots among a token's n output slots
 * (shared ids) into the block's counters; the whole warp calls it. */
__device__ __forceinline__ void count_slots(const int32_t *out_id, int32_t n, int32_t E, int nonfinite,
                                            dm_route_counts *bc, int lane) {
    unsigned empty = 0, zero = 0;
    for (int32_t k = lane; k < n; k += 32) {
        empty += out_id[k] < 0;
        zero += out_id[k] >= E;
    }
    empty = __reduce_add_sync(DM_FULL_MASK, empty);
    zero = __reduce_add_sync(DM_FULL_MASK, zero);
    if (lane == 0) {
        atomicAdd(&bc->nonfinite, nonfinite);
        atomicAdd(&bc->empty, (int)empty);
        atomicAdd(&bc->zero, (int)zero);
    }
}

/* Adds the block's counters to stats (integer atomics: the sums do not
 * depend on their order); block 0 sets tokens. */
__device__ __forceinline__ void block_stats(dynmoe_stats *stats, const dm_route_counts *bc, int64_t T) {
    __syncthreads();
    if (threadIdx.x == 0) {
        if (bc->nonfinite) atomicAdd((unsigned long long *)&stats->nonfinite_rows, (unsigned long long)bc->nonfinite);
        if (bc->empty) atomicAdd((unsigned long long *)&stats->empty_slots, (unsigned long long)bc->empty);
        if (bc->zero) atomicAdd((unsigned long long *)&stats->zero_expert_slots, (unsigned long long)bc->zero);
        if (blockIdx.x == 0) stats->tokens = T;
    }
}

/*
 * dm_route_kernel: ids/weights [T, K] from logits [T, N] (+ bias [N], mask [T, E]).
 * Warp w of block b routes token t = 4b + w.
 * Napkin math (DeepSeek-V3, T = 4096, N = 256, bf16): reads 2 MiB of logits,
 * writes 256 KiB: ~1 us of HBM. The cost is the K = 8 arg-max rounds (5
 * shuffle pairs each) and the 8 scores per lane: latency, not bandwidth; 4096
 * warps over 132 SMs keep the schedulers fed.
 */
__global__ void __launch_bounds__(DM_ROUTE_THREADS)
    dm_route_kernel(dynmoe_router r, int64_t T, const void *logits, dynmoe_dtype ldt, const float *bias,
                    const void *mask, int32_t *ids, float *weights, dynmoe_stats *stats, size_t warp_bytes) {
    extern __shared__ __align__(16) unsigned char dm_route_dyn_smem[];
    __shared__ dm_route_counts counts;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int32_t E = r.num_experts, N = E + r.num_zero_experts, K = r.top_k;
    if (threadIdx.x == 0) counts.nonfinite = counts.empty = counts.zero = 0;
    __syncthreads();

    const int64_t t = (int64_t)blockIdx.x * DM_ROUTE_WARPS + warp;
    if (t < T) {
        float *s, *c;
        dm_route_smem *ws = warp_scratch(dm_route_dyn_smem, warp_bytes, warp, &s, &c, N);
        for (int32_t e = lane; e < N; e += 32) s[e] = dm_load(logits, ldt, t * N + e);
        __syncwarp();
        const int nonfinite = warp_route_token(&r, s, c, bias, mask, ldt, t * E, ws, ws->out_id, ws->out_w, lane);
        for (int32_t k = lane; k < K; k += 32) {
            ids[t * K + k] = ws->out_id[k];
            weights[t * K + k] = ws->out_w[k];
        }
        if (stats != NULL) count_slots(ws->out_id, K, E, nonfinite, &counts, lane);
    }
    if (stats != NULL) block_stats(stats, &counts, T);
}

/*
 * dm_route_tasks_kernel: CaRE bi-level routing, one warp per token.
 * Picks the P = top_tasks best task logits (warp_select: dm_better order,
 * non-finite never picked), computes the N expert logits W_r x of each picked
 * task with warp dot products (lanes stride H, fp32 accumulate, butterfly sum:
 * deterministic, not the CPU's summation order), routes them like
 * dm_route_kernel into slots [i*K, (i+1)*K), then dm_merge_duplicate_slots.
 * A token counts as non-finite when no picked task routed anything.
 * Napkin math: P*N*H multiply-adds per token reading W_r (L2-resident when
 * R*N*H is small) and x[t] (L1); e.g. P = 2, N = 64, H = 2048: 256K MACs, 8K
 * coalesced warp loads per token. Bound by L1/L2 load bandwidth.
 */
__global__ void __launch_bounds__(DM_ROUTE_THREADS)
    dm_route_tasks_kernel(dynmoe_router r, int64_t T, const void *x, dynmoe_dtype xdt, int32_t H,
                          const float *task_logits, const void *task_weights, const float *bias, int32_t *ids,
                          float *weights, dynmoe_stats *stats, size_t warp_bytes) {
    extern __shared__ __align__(16) unsigned char dm_route_dyn_smem[];
    __shared__ dm_route_counts counts;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int32_t E = r.num_experts, N = E + r.num_zero_experts, K = r.top_k;
    const int32_t R = r.num_tasks, P = r.top_tasks, S = P * K;
    if (threadIdx.x == 0) counts.nonfinite = counts.empty = counts.zero = 0;
    __syncthreads();

    const int64_t t = (int64_t)blockIdx.x * DM_ROUTE_WARPS + warp;
    if (t < T) {
        float *s, *c;
        dm_route_smem *ws = warp_scratch(dm_route_dyn_smem, warp_bytes, warp, &s, &c, N);
        const int32_t picked = warp_select(task_logits + t * R, R, P, lane, ws->task_id);
        int routed_any = 0;
        for (int32_t i = 0; i < P; i++) {
            if (i >= picked) {
                for (int32_t k = lane; k < K; k += 32) {
                    ws->out_id[i * K + k] = -1;
                    ws->out_w[i * K + k] = 0.0f;
                }
                continue;
            }
            const int64_t wbase = (int64_t)ws->task_id[i] * N * H;
            for (int32_t e = 0; e < N; e++) {
                float acc = 0.0f;
                for (int32_t h = lane; h < H; h += 32)
                    acc += dm_load(task_weights, xdt, wbase + (int64_t)e * H + h) * dm_load(x, xdt, t * H + h);
                acc = warp_sum(acc);
                if (lane == 0) s[e] = acc;
            }
            __syncwarp();
            routed_any |= !warp_route_token(&r, s, c, bias, NULL, xdt, 0, ws, ws->out_id + i * K,
                                            ws->out_w + i * K, lane);
        }
        __syncwarp();
        if (lane == 0) dm_merge_duplicate_slots(S, ws->out_id, ws->out_w);
        __syncwarp();
        for (int32_t k = lane; k < S; k += 32) {
            ids[t * S + k] = ws->out_id[k];
            weights[t * S + k] = ws->out_w[k];
        }
        if (stats != NULL) count_slots(ws->out_id, S, E, !routed_any, &counts, lane);
    }
    if (stats != NULL) block_stats(stats, &counts, T);
}

/* ------------------------------------------------------------- launchers */

static dynmoe_status launch_dims(const char *fn, int64_t T, int32_t N, dim3 *grid, size_t *warp_bytes,
                                 size_t *smem) {
    if (N > DYNMOE_MAX_EXPERTS)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "%s: E+Z = %d exceeds %d (one warp per token)", fn, N,
                       DYNMOE_MAX_EXPERTS);
    *warp_bytes = warp_smem_bytes(N);
    *smem = *warp_bytes * DM_ROUTE_WARPS; /* <= 4 * (2336 + 8192) bytes: under the 48 KiB default */
    *grid = dim3((unsigned)((T + DM_ROUTE_WARPS - 1) / DM_ROUTE_WARPS));
    return DYNMOE_OK;
}

/* Zeroes the stats counters that the route kernels add to: empty_slots
 * through nonfinite_rows, one memset. That range includes invalid_ids, and 0
 * is its true value for a table that routing produced. */
static dynmoe_status reset_stats(dynmoe_stats *stats, cudaStream_t st) {
    if (stats == NULL) return DYNMOE_OK;
    char *first = (char *)&stats->empty_slots, *last = (char *)(&stats->nonfinite_rows + 1);
    return dm_cuda_check(cudaMemsetAsync(first, 0, (size_t)(last - first), st), "cuda route: cudaMemsetAsync(stats)");
}

extern "C" dynmoe_status dm_cuda_route(dynmoe_ctx *ctx, const dm_route_args *a, void *stream) {
    (void)ctx;
    const cudaStream_t st = (cudaStream_t)stream;
    const int32_t N = a->router.num_experts + a->router.num_zero_experts;
    dim3 grid;
    size_t warp_bytes = 0, smem = 0;
    DM_CUDA_TRY(launch_dims("cuda route", a->T, N, &grid, &warp_bytes, &smem));
    DM_CUDA_TRY(reset_stats(a->stats, st));
    dm_route_kernel<<<grid, DM_ROUTE_THREADS, smem, st>>>(a->router, a->T, a->logits, a->logits_dtype, a->bias,
                                                           a->mask_logits, a->ids, a->weights, a->stats,
                                                           warp_bytes);
    return dm_cuda_check_launch("cuda route: dm_route_kernel");
}

extern "C" dynmoe_status dm_cuda_route_tasks(dynmoe_ctx *ctx, const dm_route_tasks_args *a, void *stream) {
    (void)ctx;
    const cudaStream_t st = (cudaStream_t)stream;
    const int32_t N = a->router.num_experts + a->router.num_zero_experts;
    dim3 grid;
    size_t warp_bytes = 0, smem = 0;
    DM_CUDA_TRY(launch_dims("cuda route_tasks", a->T, N, &grid, &warp_bytes, &smem));
    DM_CUDA_TRY(reset_stats(a->stats, st));
    dm_route_tasks_kernel<<<grid, DM_ROUTE_THREADS, smem, st>>>(a->router, a->T, a->x, a->x_dtype, a->hidden,
                                                                 a->task_logits, a->task_weights, a->bias, a->ids,
                                                                 a->weights, a->stats, warp_bytes);
    return dm_cuda_check_launch("cuda route_tasks: dm_route_tasks_kernel");
}

extern "C" dynmoe_status dm_cuda_route_load(void) {
    cudaFuncAttributes fa;
    DM_CUDA_TRY(dm_cuda_check(cudaFuncGetAttributes(&fa, dm_route_kernel), "cuda route: loading dm_route_kernel"));
    DM_CUDA_TRY(dm_cuda_check(cudaFuncGetAttributes(&fa, dm_route_tasks_kernel),
                              "cuda route: loading dm_route_tasks_kernel"));
    return DYNMOE_OK;
}
