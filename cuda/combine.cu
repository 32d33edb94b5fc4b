/*
 * combine.cu — out[t] = sum over t's slots k, in slot order, of
 *   w[t,k] * rows_y[slot_rows[t*S+k]]   for a real expert (0 <= id < E)
 *   w[t,k] * x[t]                       for an identity zero expert (E <= id < E+Z)
 * accumulated in fp32, stored in experts.dtype. Zero-output experts, empty
 * slots and ids outside [-1, E+Z) add nothing. The routed scale is already in
 * w. One block per token; each thread owns fixed columns and adds the slots
 * in order, so every run gives the same bits (no atomics, no reduction tree).
 *
 * rows_y is fp32 [T*S, H] (what cuda/experts.cu writes, as on the CPU).
 */
#include <stdint.h>

#include "cuda_backend.h"
#include "hd.h"

#define DM_COMBINE_MAX_THREADS 256

/* How a slot contributes: nothing, an expert row, or x. */
#define DM_SLOT_SKIP 0
#define DM_SLOT_ROW 1
#define DM_SLOT_X 2

/* Four consecutive elements i..i+3 of a dtype tensor as fp32; i is a multiple
 * of 4 and the base 16-byte aligned, so the load is one 16- or 8-byte access. */
__device__ __forceinline__ float4 load4(const void *p, dynmoe_dtype dt, int64_t i) {
    if (dt == DYNMOE_F32) return *(const float4 *)((const float *)p + i);
    const uint2 u = *(const uint2 *)((const uint16_t *)p + i);
    const uint16_t h0 = (uint16_t)(u.x & 0xffffu), h1 = (uint16_t)(u.x >> 16);
    const uint16_t h2 = (uint16_t)(u.y & 0xffffu), h3 = (uint16_t)(u.y >> 16);
    if (dt == DYNMOE_BF16)
        return make_float4(dm_bf16_to_f32(h0), dm_bf16_to_f32(h1), dm_bf16_to_f32(h2), dm_bf16_to_f32(h3));
    return make_float4(dm_f16_to_f32(h0), dm_f16_to_f32(h1), dm_f16_to_f32(h2), dm_f16_to_f32(h3));
}

__device__ __forceinline__ void store4(void *p, dynmoe_dtype dt, int64_t i, float4 v) {
    if (dt == DYNMOE_F32) {
        *(float4 *)((float *)p + i) = v;
        return;
    }
    uint16_t h0, h1, h2, h3;
    if (dt == DYNMOE_BF16) {
        h0 = dm_f32_to_bf16(v.x), h1 = dm_f32_to_bf16(v.y), h2 = dm_f32_to_bf16(v.z), h3 = dm_f32_to_bf16(v.w);
    } else {
        h0 = dm_f32_to_f16(v.x), h1 = dm_f32_to_f16(v.y), h2 = dm_f32_to_f16(v.z), h3 = dm_f32_to_f16(v.w);
    }
    *(uint2 *)((uint16_t *)p + i) = make_uint2((uint32_t)h0 | ((uint32_t)h1 << 16), (uint32_t)h2 | ((uint32_t)h3 << 16));
}

/*
 * dm_combine_kernel: block t sums token t's S slots into out[t, 0:H].
 * The slot table (kind, row, weight) is read once into shared memory; then
 * each thread walks its columns, 4 at a time when H % 4 == 0 (16-byte loads of
 * rows_y), one at a time otherwise, adding the slots in order.
 * Napkin math (Qwen3-30B-A3B, T = 4096, K = 8, H = 2048): reads 4096*8*2048*4
 * = 256 MiB of fp32 rows and writes 16 MiB of bf16: ~90 us at 3 TB/s, HBM
 * bound; a slot that is empty, zero-output or masked reads nothing.
 */
__global__ void __launch_bounds__(DM_COMBINE_MAX_THREADS)
    dm_combine_kernel(int32_t E, int32_t Z, int identity, int32_t S, int32_t H, dynmoe_dtype dt, const void *x,
                      const int32_t *ids, const float *weights, const int32_t *slot_rows, const float *rows_y,
                      void *out) {
    __shared__ int32_t kind[DYNMOE_MAX_TOP_K];
    __shared__ int32_t row[DYNMOE_MAX_TOP_K];
    __shared__ float w[DYNMOE_MAX_TOP_K];
    const int64_t t = blockIdx.x;
    for (int32_t k = threadIdx.x; k < S; k += blockDim.x) {
        const int64_t slot = t * S + k;
        const int32_t id = ids[slot];
        int32_t kd = DM_SLOT_SKIP, r = 0;
        if (id >= 0 && id < E) {
            r = slot_rows[slot];
            kd = r >= 0 ? DM_SLOT_ROW : DM_SLOT_SKIP; /* a real slot always has a row; never index with -1 */
        } else if (identity && id >= E && id < E + Z) {
            kd = DM_SLOT_X;
        }
        kind[k] = kd;
        row[k] = r;
        w[k] = weights[slot];
    }
    __syncthreads();

    if ((H & 3) == 0) {
        for (int32_t h = 4 * threadIdx.x; h < H; h += 4 * blockDim.x) {
            float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            for (int32_t k = 0; k < S; k++) {
                if (kind[k] == DM_SLOT_SKIP) continue;
                const float wk = w[k];
                const float4 v = kind[k] == DM_SLOT_ROW ? *(const float4 *)(rows_y + (int64_t)row[k] * H + h)
                                                        : load4(x, dt, t * H + h);
                acc.x += wk * v.x;
                acc.y += wk * v.y;
                acc.z += wk * v.z;
                acc.w += wk * v.w;
            }
            store4(out, dt, t * H + h, acc);
        }
    } else {
        for (int32_t h = threadIdx.x; h < H; h += blockDim.x) {
            float acc = 0.0f;
            for (int32_t k = 0; k < S; k++) {
                if (kind[k] == DM_SLOT_SKIP) continue;
                const float v = kind[k] == DM_SLOT_ROW ? rows_y[(int64_t)row[k] * H + h] : dm_load(x, dt, t * H + h);
                acc += w[k] * v;
            }
            dm_store(out, dt, t * H + h, acc);
        }
    }
}

extern "C" dynmoe_status dm_cuda_combine(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream) {
    (void)ctx;
    const int32_t H = a->experts.hidden;
    /* threads: one per 4 columns (or per column), a multiple of 32, at most 256 */
    const int64_t lanes = (H & 3) == 0 ? H / 4 : H;
    int threads = (int)((lanes + 31) / 32 * 32);
    if (threads > DM_COMBINE_MAX_THREADS) threads = DM_COMBINE_MAX_THREADS;
    if (a->T > INT32_MAX)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "cuda combine: T = %lld exceeds the grid", (long long)a->T);
    dm_combine_kernel<<<(unsigned)a->T, threads, 0, (cudaStream_t)stream>>>(
        a->router.num_experts, a->router.num_zero_experts, a->router.zero_kind == DYNMOE_ZERO_IDENTITY, a->slots, H,
        a->experts.dtype, a->x, a->ids, a->weights, a->plan.slot_rows, (const float *)a->rows_y, a->out);
    return dm_cuda_check_launch("cuda combine: dm_combine_kernel");
}

extern "C" dynmoe_status dm_cuda_combine_load(void) {
    cudaFuncAttributes fa;
    return dm_cuda_check(cudaFuncGetAttributes(&fa, dm_combine_kernel), "cuda combine: loading dm_combine_kernel");
}
