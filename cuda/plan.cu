/*
 * plan.cu — the expert-major layout of a routing table on the GPU: a stable
 * counting sort of the n = T*S slots by expert, with no atomic deciding an
 * order and no host synchronisation. The same integers as csrc/cpu/plan.c.
 *
 * Each slot falls in one of NC = E+3 categories: expert 0..E-1, then
 * EMPTY (-1), ZERO (E..E+Z-1), INVALID (anything else). The slots are cut into
 * ns segments of SEG consecutive slots; one warp owns one segment.
 *
 *   1. dm_plan_count_kernel    per segment and category, a count:
 *                              seg_counts[c * ns + seg] (category-major), and
 *                              a trailing 0 at [NC * ns]
 *   2. cub::DeviceScan         exclusive sum of the NC*ns+1 counts: seg_base.
 *                              seg_base[c*ns + seg] is where segment seg's
 *                              first slot of category c goes; seg_base[e*ns] is
 *                              expert_offsets[e]; seg_base[NC*ns] = n
 *   3. dm_plan_scatter_kernel  each warp walks its segment in slot order, 32
 *                              slots a round: __match_any_sync groups lanes of
 *                              one expert, a lane's rank among them is the
 *                              count of lower lanes; the segment's per-expert
 *                              cursor (shared memory) then moves by the
 *                              group's size. Rows come out ordered by
 *                              (expert, slot) = (expert, token, slot).
 *                              Its last block writes counts, offsets, the
 *                              active list (cub::BlockScan), and the stats.
 *
 * Up to DM_PLAN_SMALL slots (decode) dm_plan_small_kernel does all three
 * in one block and one launch, with no temporaries.
 *
 * Temporaries (in a->temp): seg_counts and seg_base, 4*(NC*ns+1) bytes each,
 * 256-byte aligned, then CUB's scan storage. SEG >= NC/2 keeps them under
 * 8*(2n + NC + 1) bytes + CUB's; see plan_geometry.
 */
#include <stdint.h>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include "cuda_backend.h"

#define DM_PLAN_WARPS 8
#define DM_PLAN_THREADS (32 * DM_PLAN_WARPS)
#define DM_PLAN_UNROLL 4 /* rounds whose ids are loaded before the first is used */
#define DM_PLAN_ITEMS 4  /* experts per thread in the finalize block: 256 * 4 >= DYNMOE_MAX_EXPERTS */
#define DM_PLAN_SMALL 4096      /* slots up to which one block builds the whole plan */
#define DM_PLAN_SMALL_ITEMS 5   /* categories per thread there: 256 * 5 >= DYNMOE_MAX_EXPERTS + 3 */

typedef cub::BlockScan<int32_t, DM_PLAN_THREADS> dm_plan_block_scan;

__device__ __forceinline__ int32_t slot_category(int32_t id, int32_t E, int32_t Z) {
    if (id >= 0 && id < E) return id;
    if (id == -1) return E;
    if (id >= E && id < E + Z) return E + 1;
    return E + 2;
}

/*
 * dm_plan_count_kernel: seg_counts[c * ns + seg] = slots of category c in
 * segment seg. Warp w of block b owns segment 8b + w; its counts live in
 * shared memory (NC ints per warp; shared atomics count, they decide no order).
 * Napkin math: reads the 4n bytes of ids once and writes 4*NC*ns <= 8n + 4NC
 * bytes; for n = 32K slots (T = 4096, K = 8) a few microseconds, latency bound.
 */
__global__ void __launch_bounds__(DM_PLAN_THREADS)
    dm_plan_count_kernel(const int32_t *ids, int64_t n, int32_t E, int32_t Z, int32_t seg, int32_t ns,
                         int32_t *seg_counts) {
    extern __shared__ int32_t dm_plan_count_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int32_t NC = E + 3;
    const int64_t sg = (int64_t)blockIdx.x * DM_PLAN_WARPS + warp;
    if (blockIdx.x == 0 && threadIdx.x == 0) seg_counts[(int64_t)NC * ns] = 0;
    if (sg >= ns) return;
    int32_t *cnt = dm_plan_count_smem + (size_t)warp * NC;
    for (int32_t c = lane; c < NC; c += 32) cnt[c] = 0;
    __syncwarp();
    const int64_t begin = sg * seg, end = begin + seg < n ? begin + seg : n;
    for (int64_t i = begin + lane; i < end; i += 32) atomicAdd(&cnt[slot_category(ids[i], E, Z)], 1);
    __syncwarp();
    for (int32_t c = lane; c < NC; c += 32) seg_counts[(int64_t)c * ns + sg] = cnt[c];
}

/* The last block of dm_plan_scatter_kernel: per-expert counts and offsets,
 * active experts ascending (exclusive scan of count > 0), num_active, stats. */
__device__ void plan_finalize(const int32_t *seg_base, int32_t E, int32_t ns, int64_t T, dynmoe_plan p,
                              dynmoe_stats *stats) {
    __shared__ typename dm_plan_block_scan::TempStorage scan_tmp;
    __shared__ int32_t max_rows;
    if (threadIdx.x == 0) max_rows = 0;
    __syncthreads();
    int32_t cnt[DM_PLAN_ITEMS], flag[DM_PLAN_ITEMS], pos[DM_PLAN_ITEMS];
    int32_t local_max = 0;
#pragma unroll
    for (int j = 0; j < DM_PLAN_ITEMS; j++) {
        const int32_t e = threadIdx.x * DM_PLAN_ITEMS + j; /* blocked: thread order = expert order */
        cnt[j] = 0;
        if (e < E) {
            const int32_t off = seg_base[(int64_t)e * ns];
            cnt[j] = seg_base[(int64_t)(e + 1) * ns] - off;
            p.expert_counts[e] = cnt[j];
            p.expert_offsets[e] = off;
        }
        flag[j] = cnt[j] > 0;
        local_max = cnt[j] > local_max ? cnt[j] : local_max;
    }
    int32_t num_active = 0;
    dm_plan_block_scan(scan_tmp).ExclusiveSum(flag, pos, num_active);
#pragma unroll
    for (int j = 0; j < DM_PLAN_ITEMS; j++)
        if (flag[j]) p.active_experts[pos[j]] = threadIdx.x * DM_PLAN_ITEMS + j;
    atomicMax(&max_rows, local_max); /* a max: the order of the atomics cannot matter */
    __syncthreads();
    if (threadIdx.x == 0) {
        const int64_t NC = E + 3;
        const int32_t rows = seg_base[(int64_t)E * ns];
        p.expert_offsets[E] = rows;
        *p.num_active = num_active;
        if (stats != NULL) {
            stats->tokens = T;
            stats->routed_slots = rows;
            stats->empty_slots = seg_base[(int64_t)(E + 1) * ns] - seg_base[(int64_t)E * ns];
            stats->zero_expert_slots = seg_base[(int64_t)(E + 2) * ns] - seg_base[(int64_t)(E + 1) * ns];
            stats->invalid_ids = seg_base[NC * ns] - seg_base[(int64_t)(E + 2) * ns];
            stats->active_experts = num_active;
            stats->max_expert_rows = max_rows;
        }
    }
}

/* One warp scatters the slots [begin, begin + seg) (seg a multiple of
 * 32 * DM_PLAN_UNROLL; slots >= n are ignored) in slot order. cursor[e]
 * (shared, this warp's own) is the next row of expert e; it moves on. */
__device__ __forceinline__ void scatter_segment(const int32_t *ids, int64_t n, int32_t E, int64_t begin,
                                                int32_t seg, int32_t *cursor, const dynmoe_plan &p) {
    const int lane = threadIdx.x & 31;
    const unsigned lower = (1u << lane) - 1u;
    for (int32_t r0 = 0; r0 < seg / 32; r0 += DM_PLAN_UNROLL) {
        int32_t idv[DM_PLAN_UNROLL];
#pragma unroll
        for (int u = 0; u < DM_PLAN_UNROLL; u++) {
            const int64_t i = begin + (int64_t)(r0 + u) * 32 + lane;
            idv[u] = i < n ? ids[i] : -1;
        }
#pragma unroll
        for (int u = 0; u < DM_PLAN_UNROLL; u++) {
            const int64_t i = begin + (int64_t)(r0 + u) * 32 + lane;
            const int32_t id = idv[u];
            const int real = i < n && id >= 0 && id < E;
            /* lanes of one expert; a lane's rank among them = how many are below it */
            const unsigned peers = __match_any_sync(DM_FULL_MASK, real ? id : -1);
            int32_t row = 0;
            if (real) row = cursor[id] + __popc(peers & lower);
            __syncwarp();
            if (real && lane == __ffs(peers) - 1) cursor[id] += __popc(peers);
            __syncwarp();
            if (real) {
                p.sorted_slots[row] = (int32_t)i;
                p.slot_rows[i] = row;
            } else if (i < n) {
                p.slot_rows[i] = -1;
            }
        }
    }
}

/*
 * dm_plan_scatter_kernel: sorted_slots[row] = slot and slot_rows[slot] = row
 * (-1 for slots that are not rows). Warp w of block b owns segment 8b + w,
 * walks it in rounds of 32 consecutive slots (DM_PLAN_UNROLL rounds of ids in
 * flight), ranks each lane among the lanes of the same expert with
 * __match_any_sync and moves the segment's per-expert cursors (E ints of
 * shared memory per warp). The last block runs plan_finalize instead.
 * Napkin math: reads 4n bytes of ids and 4*E*ns <= 8n of bases, writes 8n
 * bytes (scattered sorted_slots, coalesced slot_rows); per round ~40 cycles
 * of shared memory and shuffles: n = 32K with E = 128 is 128 warps x 8
 * rounds, a few microseconds.
 */
__global__ void __launch_bounds__(DM_PLAN_THREADS)
    dm_plan_scatter_kernel(const int32_t *ids, int64_t n, int32_t E, int32_t seg, int32_t ns,
                           const int32_t *seg_base, dynmoe_plan p, int64_t T, dynmoe_stats *stats) {
    extern __shared__ int32_t dm_plan_scatter_smem[];
    if (blockIdx.x == gridDim.x - 1) {
        plan_finalize(seg_base, E, ns, T, p, stats);
        return;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t sg = (int64_t)blockIdx.x * DM_PLAN_WARPS + warp;
    if (sg >= ns) return;
    int32_t *cursor = dm_plan_scatter_smem + (size_t)warp * E;
    for (int32_t e = lane; e < E; e += 32) cursor[e] = seg_base[(int64_t)e * ns + sg];
    __syncwarp();
    scatter_segment(ids, n, E, sg * seg, seg, cursor, p);
}

/*
 * dm_plan_small_kernel: the whole plan in one launch for n <= DM_PLAN_SMALL
 * slots (decode: T*K of a few hundred). The same algorithm as the three steps
 * above with the segment counts, their scan and the cursors in shared memory:
 * warp w owns segment w; cnt[w][c] (8 x NC ints <= 32.9 KiB) holds its
 * counts, then its cursors. A category's total and base come from a
 * cub::BlockScan over the categories (blocked, DM_PLAN_SMALL_ITEMS a thread).
 * Napkin math: reads 4n bytes, writes 8n + 12E; one launch instead of four
 * is the point (a few microseconds of launch latency saved per layer).
 */
__global__ void __launch_bounds__(DM_PLAN_THREADS)
    dm_plan_small_kernel(const int32_t *ids, int64_t n, int32_t E, int32_t Z, int32_t seg, dynmoe_plan p,
                         int64_t T, dynmoe_stats *stats) {
    extern __shared__ int32_t dm_plan_small_smem[];
    __shared__ typename dm_plan_block_scan::TempStorage scan_tmp;
    __shared__ int32_t max_rows;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int32_t NC = E + 3;
    int32_t *cnt = dm_plan_small_smem + (size_t)warp * NC;
    for (int32_t c = lane; c < NC; c += 32) cnt[c] = 0;
    if (threadIdx.x == 0) max_rows = 0;
    __syncwarp();
    const int64_t begin = (int64_t)warp * seg, end = begin + seg < n ? begin + seg : n;
    for (int64_t i = begin + lane; i < end; i += 32) atomicAdd(&cnt[slot_category(ids[i], E, Z)], 1);
    __syncthreads();

    /* totals of the categories this thread owns (c = thread * ITEMS + j), and their bases */
    int32_t tot[DM_PLAN_SMALL_ITEMS], base[DM_PLAN_SMALL_ITEMS], flag[DM_PLAN_SMALL_ITEMS], pos[DM_PLAN_SMALL_ITEMS];
#pragma unroll
    for (int j = 0; j < DM_PLAN_SMALL_ITEMS; j++) {
        const int32_t c = threadIdx.x * DM_PLAN_SMALL_ITEMS + j;
        tot[j] = 0;
        if (c < NC)
            for (int w = 0; w < DM_PLAN_WARPS; w++) tot[j] += dm_plan_small_smem[w * NC + c];
    }
    int32_t all = 0;
    dm_plan_block_scan(scan_tmp).ExclusiveSum(tot, base, all);
    __syncthreads(); /* scan_tmp is used again below */

    int32_t local_max = 0;
#pragma unroll
    for (int j = 0; j < DM_PLAN_SMALL_ITEMS; j++) {
        const int32_t c = threadIdx.x * DM_PLAN_SMALL_ITEMS + j;
        if (c < NC) { /* cursors: the base plus the category's slots in earlier segments */
            int32_t run = base[j];
            for (int w = 0; w < DM_PLAN_WARPS; w++) {
                const int32_t k = dm_plan_small_smem[w * NC + c];
                dm_plan_small_smem[w * NC + c] = run;
                run += k;
            }
        }
        flag[j] = c < E && tot[j] > 0;
        if (c < E) {
            p.expert_counts[c] = tot[j];
            p.expert_offsets[c] = base[j];
            local_max = tot[j] > local_max ? tot[j] : local_max;
        } else if (c == E) {
            p.expert_offsets[E] = base[j]; /* rows */
            if (stats != NULL) {
                stats->routed_slots = base[j];
                stats->empty_slots = tot[j];
            }
        } else if (c == E + 1 && stats != NULL) {
            stats->zero_expert_slots = tot[j];
        } else if (c == E + 2 && stats != NULL) {
            stats->invalid_ids = tot[j];
        }
    }
    int32_t num_active = 0;
    dm_plan_block_scan(scan_tmp).ExclusiveSum(flag, pos, num_active);
#pragma unroll
    for (int j = 0; j < DM_PLAN_SMALL_ITEMS; j++)
        if (flag[j]) p.active_experts[pos[j]] = threadIdx.x * DM_PLAN_SMALL_ITEMS + j;
    atomicMax(&max_rows, local_max);
    __syncthreads(); /* cursors and max_rows are complete */
    if (threadIdx.x == 0) {
        *p.num_active = num_active;
        if (stats != NULL) {
            stats->tokens = T;
            stats->active_experts = num_active;
            stats->max_expert_rows = max_rows;
        }
    }
    scatter_segment(ids, n, E, begin, seg, cnt, p);
}

/* ------------------------------------------------------------- launcher */

typedef struct plan_geometry {
    int32_t seg, ns; /* slots per segment (a multiple of 32 * DM_PLAN_UNROLL), segments */
    int32_t m;       /* NC * ns + 1 scanned counts */
    size_t counts_at, base_at, cub_at, cub_bytes, total;
} plan_geometry;

static size_t align256(size_t v) { return (v + 255) / 256 * 256; }

/* SEG >= NC/2 bounds the counts by 2n + NC + 1; a larger SEG is taken when
 * the temporaries would not fit (fewer, longer segments: slower, same result). */
static dynmoe_status plan_geometry_of(const dm_plan_args *a, plan_geometry *g) {
    const int64_t n = a->T * a->slots, NC = (int64_t)a->num_experts + 3;
    /* rounds of 32 slots: ceil(NC / 64) (so SEG >= NC / 2), at least 8, a multiple of the unroll */
    int64_t rounds = (NC + 63) / 64;
    if (rounds < 8) rounds = 8;
    rounds = (rounds + DM_PLAN_UNROLL - 1) / DM_PLAN_UNROLL * DM_PLAN_UNROLL;
    g->total = 0;
    for (int64_t seg = 32 * rounds;; seg *= 2) {
        const int64_t ns = (n + seg - 1) / seg, m = NC * ns + 1;
        if (m <= INT32_MAX && seg <= INT32_MAX / 2) {
            size_t cub_bytes = 0;
            DM_CUDA_TRY(dm_cuda_check(cub::DeviceScan::ExclusiveSum(NULL, cub_bytes, (int32_t *)NULL,
                                                                    (int32_t *)NULL, (int)m, (cudaStream_t)0),
                                      "cuda plan: cub::DeviceScan size query"));
            g->seg = (int32_t)seg;
            g->ns = (int32_t)ns;
            g->m = (int32_t)m;
            g->counts_at = 0;
            g->base_at = align256((size_t)m * sizeof(int32_t));
            g->cub_at = g->base_at + align256((size_t)m * sizeof(int32_t));
            g->cub_bytes = cub_bytes;
            g->total = g->cub_at + cub_bytes;
            if (g->total <= a->temp_bytes) return DYNMOE_OK;
        }
        if (seg >= n)
            return dm_fail(DYNMOE_ERR_INTERNAL,
                           "cuda plan: temporaries need %zu bytes, the workspace's plan_temp has %zu", g->total,
                           a->temp_bytes);
    }
}

extern "C" dynmoe_status dm_cuda_plan(dynmoe_ctx *ctx, const dm_plan_args *a, void *stream) {
    (void)ctx;
    const cudaStream_t st = (cudaStream_t)stream;
    const int32_t E = a->num_experts;
    const int64_t n = a->T * a->slots;
    if (n <= DM_PLAN_SMALL) {
        const int64_t step = 32 * DM_PLAN_UNROLL, per_warp = (n + DM_PLAN_WARPS - 1) / DM_PLAN_WARPS;
        const int32_t seg = (int32_t)((per_warp + step - 1) / step * step);
        const size_t smem = (size_t)DM_PLAN_WARPS * (E + 3) * sizeof(int32_t); /* <= 32.9 KiB */
        dm_plan_small_kernel<<<1, DM_PLAN_THREADS, smem, st>>>(a->ids, n, E, a->num_zero_experts, seg, a->plan, a->T,
                                                                a->stats);
        return dm_cuda_check_launch("cuda plan: dm_plan_small_kernel");
    }
    plan_geometry g = {};
    DM_CUDA_TRY(plan_geometry_of(a, &g));
    if (((uintptr_t)a->temp & 255u) != 0)
        return dm_fail(DYNMOE_ERR_INTERNAL, "cuda plan: plan_temp is not 256-byte aligned");
    char *temp = (char *)a->temp;
    int32_t *seg_counts = (int32_t *)(temp + g.counts_at);
    int32_t *seg_base = (int32_t *)(temp + g.base_at);
    const unsigned blocks = (unsigned)((g.ns + DM_PLAN_WARPS - 1) / DM_PLAN_WARPS);

    const size_t count_smem = (size_t)DM_PLAN_WARPS * (E + 3) * sizeof(int32_t); /* <= 32.9 KiB */
    dm_plan_count_kernel<<<blocks, DM_PLAN_THREADS, count_smem, st>>>(a->ids, n, E, a->num_zero_experts, g.seg,
                                                                       g.ns, seg_counts);
    DM_CUDA_TRY(dm_cuda_check_launch("cuda plan: dm_plan_count_kernel"));

    size_t cub_bytes = g.cub_bytes;
    DM_CUDA_TRY(dm_cuda_check(cub::DeviceScan::ExclusiveSum(temp + g.cub_at, cub_bytes, seg_counts, seg_base,
                                                            (int)g.m, st),
                              "cuda plan: cub::DeviceScan::ExclusiveSum"));
    DM_CUDA_TRY(dm_cuda_check_launch("cuda plan: cub::DeviceScan::ExclusiveSum"));

    const size_t scatter_smem = (size_t)DM_PLAN_WARPS * E * sizeof(int32_t); /* <= 32 KiB */
    dm_plan_scatter_kernel<<<blocks + 1, DM_PLAN_THREADS, scatter_smem, st>>>(a->ids, n, E, g.seg, g.ns,
                                                                               seg_base, a->plan, a->T, a->stats);
    return dm_cuda_check_launch("cuda plan: dm_plan_scatter_kernel");
}

/* CUB's scan kernels cannot be named for cudaFuncGetAttributes: one tiny scan
 * on a private stream loads them (and fills CUB's per-device caches) at
 * context creation, the one place that may allocate and synchronise. */
static dynmoe_status warm_up_cub_scan(void) {
    const int m = 2;
    size_t bytes = 0;
    DM_CUDA_TRY(dm_cuda_check(cub::DeviceScan::ExclusiveSum(NULL, bytes, (int32_t *)NULL, (int32_t *)NULL, m,
                                                            (cudaStream_t)0),
                              "cuda plan: cub::DeviceScan size query"));
    char *buf = NULL;
    cudaStream_t st = NULL;
    const size_t at = 256;
    cudaError_t e = cudaMalloc((void **)&buf, at + bytes);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaMemsetAsync(buf, 0, at, st);
    if (e == cudaSuccess)
        e = cub::DeviceScan::ExclusiveSum(buf + at, bytes, (int32_t *)buf, (int32_t *)buf + 16, m, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (st != NULL) (void)cudaStreamDestroy(st);
    if (buf != NULL) (void)cudaFree(buf);
    return dm_cuda_check(e, "cuda plan: warming up cub::DeviceScan");
}

extern "C" dynmoe_status dm_cuda_plan_load(void) {
    DM_CUDA_TRY(warm_up_cub_scan());
    cudaFuncAttributes fa;
    DM_CUDA_TRY(dm_cuda_check(cudaFuncGetAttributes(&fa, dm_plan_count_kernel), "cuda plan: loading dm_plan_count_kernel"));
    DM_CUDA_TRY(dm_cuda_check(cudaFuncGetAttributes(&fa, dm_plan_scatter_kernel),
                              "cuda plan: loading dm_plan_scatter_kernel"));
    DM_CUDA_TRY(dm_cuda_check(cudaFuncGetAttributes(&fa, dm_plan_small_kernel), "cuda plan: loading dm_plan_small_kernel"));
    return DYNMOE_OK;
}
