// ep/ep_kernels.cu — the device steps of expert parallelism over NCCL: which
// rank runs each slot, and packing the travelling x rows. Everything else
// (route, the stable ranking per destination, experts, combine) is the CUDA
// backend's own stages, called through ctx->ops by ep_nccl.c.
// Napkin math: pack moves T*K*H*esize bytes once (8 MiB for T 256, K 8,
// H 2048 bf16): a few µs at HBM bandwidth, far below the all-to-all, when
// each lane moves 16 bytes per step (2-byte steps issue 8x the instructions).
#include <cuda_runtime.h>

#include "ep_cuda.h"
#include "ptx.cuh"

namespace {

__device__ __forceinline__ void owner(const dm_ep_dev_tables &t, int32_t e, int64_t tok, int32_t *rank,
                                      int32_t *local) {
    int32_t p = t.self_copy[e];
    if (p < 0) p = (int32_t)(tok % t.copies[e]);
    *rank = t.copy_rank[(int64_t)e * t.replicas + p];
    *local = t.copy_local[(int64_t)e * t.replicas + p];
}

__global__ void dest_kernel(const int32_t *ids, int64_t n, int32_t K, int32_t E, dm_ep_dev_tables tab,
                            int32_t *dest) {
    for (int64_t s = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; s < n; s += (int64_t)gridDim.x * blockDim.x) {
        const int32_t id = ids[s];
        int32_t d = -1, lid;
        if (id >= 0 && id < E) owner(tab, id, s / K, &d, &lid);
        dest[s] = d;
    }
}

// Copies one row of `bytes` bytes, lane by lane, in UNIT-byte pieces: 16 (one vector per
// lane, 512 bytes per warp step), 4 or 2, the largest that divides the row and its pointers'
// alignment (chosen at launch). A 2048-wide bf16 row is 8 vector steps instead of 64 2-byte ones.
template <int UNIT>
__device__ __forceinline__ void copy_row(char *dst, const char *src, int32_t bytes, int lane) {
    for (int32_t i = lane * UNIT; i < bytes; i += 32 * UNIT) {
        if (UNIT == 16) dm_st_global16(dst + i, dm_ld_global16(src + i));
        else if (UNIT == 4) *(uint32_t *)(dst + i) = *(const uint32_t *)(src + i);
        else *(uint16_t *)(dst + i) = *(const uint16_t *)(src + i);
    }
}

// One warp per slot: decide, then copy the row (H * 2 or H * 4 bytes).
template <int UNIT>
__global__ void pack_kernel(dm_ep_pack_args a) {
    const int lane = threadIdx.x & 31;
    const int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t s = warp; s < a.n; s += warps) {
        const int32_t id = a.ids[s], d = a.dest[s];
        int32_t p = -1;
        if (d >= 0) {
            const int32_t pos = a.dest_slot_rows[s] - a.dest_offsets[d];
            if (a.capacity > 0 && pos >= a.capacity) {
                if (lane == 0) {
                    a.ids[s] = -1; // dropped: contributes 0
                    atomicAdd((unsigned long long *)&a.counters[1], 1ull);
                }
            } else {
                p = a.capacity > 0 ? d * a.capacity + pos : a.dest_offsets[d] + pos;
                int32_t r, lid;
                owner(a.tab, id, s / a.K, &r, &lid);
                if (lane == 0) {
                    a.send_ids[p] = lid;
                    atomicAdd((unsigned long long *)&a.counters[0], 1ull);
                }
                copy_row<UNIT>(a.send_rows + (int64_t)p * a.row_bytes, a.x + (s / a.K) * (int64_t)a.row_bytes,
                               a.row_bytes, lane);
            }
        } else if (lane == 0) {
            if (id == -1) atomicAdd((unsigned long long *)&a.counters[2], 1ull);
            else if (id >= a.E && id < a.E + a.Z) atomicAdd((unsigned long long *)&a.counters[3], 1ull);
        }
        if (lane == 0) a.send_index[s] = p;
    }
}

__global__ void fill_kernel(float *p, int64_t n, float v) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        p[i] = v;
}

__global__ void stats_kernel(dynmoe_stats *s, const long long *c, const dynmoe_stats *l, int computed, int64_t T) {
    s->tokens = T;
    if (T == 0) s->nonfinite_rows = 0;
    s->routed_slots = c[0];
    s->overflow_slots = c[1];
    s->empty_slots = c[2];
    s->zero_expert_slots = c[3];
    s->invalid_ids = 0;
    s->active_experts = computed ? l->active_experts : 0;
    s->max_expert_rows = computed ? l->max_expert_rows : 0;
}

int blocks_for(int64_t n, int per_block) {
    int64_t b = (n + per_block - 1) / per_block;
    return (int)(b < 1 ? 1 : (b > 4096 ? 4096 : b));
}

} // namespace

extern "C" int dm_ep_cuda_dest(const int32_t *ids, int64_t n, int32_t K, int32_t E, dm_ep_dev_tables tab,
                               int32_t *dest, void *stream) {
    if (n == 0) return 0;
    dest_kernel<<<blocks_for(n, 256), 256, 0, (cudaStream_t)stream>>>(ids, n, K, E, tab, dest);
    return (int)cudaGetLastError();
}

extern "C" int dm_ep_cuda_pack(const dm_ep_pack_args *a, void *stream) {
    if (a->n == 0) return 0;
    const int blocks = blocks_for(a->n, 8);
    const uintptr_t align = (uintptr_t)a->x | (uintptr_t)a->send_rows | (uintptr_t)a->row_bytes;
    if (align % 16 == 0) pack_kernel<16><<<blocks, 256, 0, (cudaStream_t)stream>>>(*a);
    else if (align % 4 == 0) pack_kernel<4><<<blocks, 256, 0, (cudaStream_t)stream>>>(*a);
    else pack_kernel<2><<<blocks, 256, 0, (cudaStream_t)stream>>>(*a);
    return (int)cudaGetLastError();
}

extern "C" int dm_ep_cuda_fill(float *p, int64_t n, float v, void *stream) {
    if (n == 0) return 0;
    fill_kernel<<<blocks_for(n, 256), 256, 0, (cudaStream_t)stream>>>(p, n, v);
    return (int)cudaGetLastError();
}

extern "C" int dm_ep_cuda_stats(dynmoe_stats *stats, const long long *counters, const dynmoe_stats *lstats,
                                int computed, int64_t T, void *stream) {
    stats_kernel<<<1, 1, 0, (cudaStream_t)stream>>>(stats, counters, lstats, computed, T);
    return (int)cudaGetLastError();
}
