/*
 * combine.cu — out[t] = sum over t's slots k, in slot order, of
 *   w[t,k] * rows_y[slot_rows[t*S+k]]   for a real expert (0 <= id < E)
 *            rows_y[slot_rows[t*S+k]]   for a real expert with router.weight_on_input (the
 *                                       weight already scaled the expert's input: experts.cu)
 *   w[t,k] * x[t]                       for an identity zero expert (E <= id < E+Z)
 * accumulated in fp32, stored in experts.dtype. Zero-output experts, empty
 * slots and ids outside [-1, E+Z) add nothing. The routed scale is already in
 * w. One block per token; each thread owns fixed columns and adds the slots
 * in order, so every run gives the same bits (no atomics, no reduction tree).
 *
 * rows_y [T*S, H] is in experts.dtype, as cuda/experts.cu writes it (the CPU backend's is
 * fp32). Every tensor is 16-byte aligned (the API's rule; rows_y starts a workspace region).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda_backend.h"
#include "hd.h"
#include "ptx.cuh"

#define DM_COMBINE_MAX_THREADS 256

/* How a slot contributes: nothing, an expert row, or x. */
#define DM_SLOT_SKIP 0
#define DM_SLOT_ROW 1
#define DM_SLOT_X 2

/* Elements per 16-byte vector: 8 of bf16/f16, 4 of fp32. */
__host__ __device__ __forceinline__ int vec_elems(dynmoe_dtype dt) { return dt == DYNMOE_F32 ? 4 : 8; }

/* Element i of a 16-byte vector of dtype dt as fp32, and the reverse, on the 32-bit words (no
 * type punning through pointers, which C++ compilers may break), with the hardware conversions
 * (f16 -> f32 is exact; f32 -> f16/bf16 rounds to nearest even, as hd.h's do). */
__device__ __forceinline__ float vec_get(const uint32_t *w, dynmoe_dtype dt, int i) {
    if (dt == DYNMOE_F32) return __uint_as_float(w[i]);
    const unsigned short h = (unsigned short)(w[i >> 1] >> (16 * (i & 1)));
    return dt == DYNMOE_BF16 ? __uint_as_float((uint32_t)h << 16) : __half2float(__ushort_as_half(h));
}
__device__ __forceinline__ void vec_set(uint32_t *w, dynmoe_dtype dt, int i, float v) {
    if (dt == DYNMOE_F32) {
        w[i] = __float_as_uint(v);
        return;
    }
    const uint32_t h = dt == DYNMOE_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v))
                                         : __half_as_ushort(__float2half_rn(v));
    w[i >> 1] = (i & 1) ? (w[i >> 1] | (h << 16)) : h; /* low half first */
}

/*
 * dm_combine_kernel: block t sums token t's S slots into out[t, 0:H].
 * The slot table (kind, row, weight) is read once into shared memory; then each thread walks its
 * columns, a 16-byte vector at a time (8 bf16/f16 or 4 fp32 values of rows_y, x and out) when
 * H fills whole vectors, one at a time otherwise, adding the slots in order.
 * Napkin math (Qwen3-30B-A3B, T = 4096, K = 8, H = 2048, bf16): reads 4096*8*2048*2 = 128 MiB
 * of expert rows (half of what fp32 rows were) and writes 16 MiB: ~45 us at 3 TB/s, HBM bound;
 * a slot that is empty, zero-output or masked reads nothing.
 */
template <dynmoe_dtype dt> /* a compile-time dtype: the conversions of the slot loop fold */
__global__ void __launch_bounds__(DM_COMBINE_MAX_THREADS)
    dm_combine_kernel(int32_t E, int32_t Z, int identity, int on_input, int32_t S, int32_t H, const void *x, const int32_t *ids,
                      const float *weights, const int32_t *slot_rows, const void *rows_y, void *out) {
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
        w[k] = kd == DM_SLOT_ROW && on_input ? 1.0f : weights[slot];
    }
    __syncthreads();

    const int vn = vec_elems(dt);
    const size_t es = dm_dtype_size(dt);
    if (H % vn == 0) {
        for (int32_t h = vn * threadIdx.x; h < H; h += vn * blockDim.x) {
            float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            for (int32_t k = 0; k < S; k++) {
                if (kind[k] == DM_SLOT_SKIP) continue;
                const float wk = w[k];
                const char *src = kind[k] == DM_SLOT_ROW ? (const char *)rows_y + ((int64_t)row[k] * H + h) * es
                                                         : (const char *)x + (t * H + h) * es;
                const uint4 v = dm_ld_global16(src);
                const uint32_t vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int i = 0; i < 8; i++)
                    if (i < vn) acc[i] += wk * vec_get(vw, dt, i);
            }
            uint32_t ow[4] = {0, 0, 0, 0};
#pragma unroll
            for (int i = 0; i < 8; i++)
                if (i < vn) vec_set(ow, dt, i, acc[i]);
            dm_st_global16((char *)out + (t * H + h) * es, make_uint4(ow[0], ow[1], ow[2], ow[3]));
        }
    } else {
        for (int32_t h = threadIdx.x; h < H; h += blockDim.x) {
            float acc = 0.0f;
            for (int32_t k = 0; k < S; k++) {
                if (kind[k] == DM_SLOT_SKIP) continue;
                const float v = kind[k] == DM_SLOT_ROW ? dm_load(rows_y, dt, (int64_t)row[k] * H + h) : dm_load(x, dt, t * H + h);
                acc += w[k] * v;
            }
            dm_store(out, dt, t * H + h, acc);
        }
    }
}

extern "C" dynmoe_status dm_cuda_combine(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream) {
    (void)ctx;
    const int32_t H = a->experts.hidden;
    /* threads: one per 16-byte vector of a row (or per column), a multiple of 32, at most 256 */
    const int vn = vec_elems(a->experts.dtype);
    const int64_t lanes = H % vn == 0 ? H / vn : H;
    int threads = (int)((lanes + 31) / 32 * 32);
    if (threads > DM_COMBINE_MAX_THREADS) threads = DM_COMBINE_MAX_THREADS;
    if (a->T > INT32_MAX)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "cuda combine: T = %lld exceeds the grid", (long long)a->T);
    const unsigned grid = (unsigned)a->T;
    const int32_t E = a->router.num_experts, Z = a->router.num_zero_experts, S = a->slots;
    const int identity = a->router.zero_kind == DYNMOE_ZERO_IDENTITY;
    const int on_input = a->router.weight_on_input != 0;
    cudaStream_t st = (cudaStream_t)stream;
    switch (a->experts.dtype) {
    case DYNMOE_F32:
        dm_combine_kernel<DYNMOE_F32><<<grid, threads, 0, st>>>(E, Z, identity, on_input, S, H, a->x, a->ids, a->weights,
                                                                a->plan.slot_rows, a->rows_y, a->out);
        break;
    case DYNMOE_F16:
        dm_combine_kernel<DYNMOE_F16><<<grid, threads, 0, st>>>(E, Z, identity, on_input, S, H, a->x, a->ids, a->weights,
                                                                a->plan.slot_rows, a->rows_y, a->out);
        break;
    case DYNMOE_BF16:
        dm_combine_kernel<DYNMOE_BF16><<<grid, threads, 0, st>>>(E, Z, identity, on_input, S, H, a->x, a->ids, a->weights,
                                                                 a->plan.slot_rows, a->rows_y, a->out);
        break;
    default:
        return dm_fail(DYNMOE_ERR_INTERNAL, "cuda combine: unknown dtype %d", (int)a->experts.dtype);
    }
    return dm_cuda_check_launch("cuda combine: dm_combine_kernel");
}

extern "C" dynmoe_status dm_cuda_combine_load(void) {
    cudaFuncAttributes fa;
    dynmoe_status s = dm_cuda_check(cudaFuncGetAttributes(&fa, dm_combine_kernel<DYNMOE_F32>), "cuda combine: loading");
    if (s == DYNMOE_OK) s = dm_cuda_check(cudaFuncGetAttributes(&fa, dm_combine_kernel<DYNMOE_F16>), "cuda combine: loading");
    if (s == DYNMOE_OK) s = dm_cuda_check(cudaFuncGetAttributes(&fa, dm_combine_kernel<DYNMOE_BF16>), "cuda combine: loading");
    return s;
}
