/*
 * experts.cu — the expert FFNs of the CUDA backend, over the active experts only.
 *
 * For every plan row r in [0, R), R = plan.expert_offsets[E] (device memory, never read on the
 * host), with e the expert whose segment [offsets[e], offsets[e+1]) holds r and t the token of
 * sorted_slots[r]:
 *
 *   GEMM1  g = w * (x[t] . W13_e[gate row of j]) + b13_e[gate row of j]       j < I   (K = H)
 *          u = w * (x[t] . W13_e[up row of j])   + b13_e[up row of j]
 *          h[r, j]       = dm_activate(act, alpha, limit, g, u)     (act_rules.h, every dynmoe_act)
 *   GEMM2  rows_y[r, n]  = h[r] . W2_e[n] + b2_e[n]                            n < H   (K = I)
 *
 * The gate and up rows of j are dm_gate_row / dm_up_row (BLOCKED j, I + j; INTERLEAVED 2j, 2j+1);
 * non-gated activations (RELU2, SILU: dm_act_gated false) have one row j per unit, w13 holds
 * dm_w13_rows = I rows per expert and u is unused. Biases are optional, in the weights' dtype.
 * w is the slot's routing weight with router.weight_on_input (W13 (w x) = w (W13 x): the
 * accumulator is scaled, x is never rewritten; combine then adds the row unweighted), else 1.
 * h lives in rows_h in the weights' dtype (bf16/f16, the
 * operand type of GEMM2's tensor cores) or fp32 for f32, with a row stride `ldh` = I rounded up
 * to 16 bytes when that fits in the [T*S, 2I] fp32 scratch. rows_y [T*S, H] is in the weights'
 * dtype too (half of fp32's bytes written here and read back by combine.cu; the workspace region
 * keeps its fp32 size).
 *
 * Both GEMMs are "TN": C[m, n] = sum_k A[m, k] * B[n, k], A and B both k-contiguous.
 *
 * Nothing here reads device memory on the host, allocates or synchronises: the grids are sized
 * from host-known bounds (T*S, E, H, I, SM count) and every CTA reads the real per-expert row
 * counts from the device-side plan; work past the real rows exits. CUDA-graph safe.
 *
 * Kernels
 *  - dm_prefill_gemm<T, MODE, VEC>: tensor-core grouped GEMM (mma.sync m16n8k16 bf16/f16, fp32
 *    accumulate), CTA tile 128 x 128 x 32, 4 warps of 64 x 64, 4-stage cp.async pipeline,
 *    XOR-swizzled shared memory read by ldmatrix. A persistent tile scheduler: each CTA scans the
 *    device offsets into a per-expert tile prefix and walks tiles blockIdx.x, + gridDim.x, ...,
 *    mapping each to (expert, row tile, column tile) by binary search; the next tile's first
 *    k-tiles are loading while the current one's epilogue stores. A warp runs only the 16-row
 *    MMA steps that hold rows of the expert (a ragged tail costs its rows rounded up to 16, not
 *    128). MODE 0 is GEMM1: the A rows are gathered from x through sorted_slots in the loads, the
 *    B tile holds 64 gate rows and the 64 matching up rows, and the epilogue applies the gated
 *    activation. MODE 1 is GEMM2. VEC: every chunk one 16-byte cp.async (rows of 16-byte
 *    multiples), else scalar loads; the launcher picks, no run-time branch per chunk.
 *  All PTX goes through ptx.cuh, which cuda/emu/ emulates: CI runs these kernels' own sources.
 *  - dm_decode_gemm<T, MODE, Q>: few rows per expert (Q = 1, 2, 3: FP8_BLOCK, MXFP4, INT4 weights, see below). One warp streams 4 weight rows of one active
 *    expert (16-byte loads, each weight read once per chunk of 8 rows) against up to 8 rows held
 *    as 16-byte vectors, reduced by a 31-shuffle transpose-reduce. Split along N only: with
 *    I = 768..2048 and H = 2048..7168, even one active expert gives hundreds of warps.
 *    It is also the f32 path (FFMA, fp32-exact products), then split over row chunks too.
 *
 * Napkin math (H100 SXM: ~3.3 TB/s HBM, ~990 TFLOP/s dense bf16, mma.sync reaching ~60% of it;
 * ridge ~300 FLOP per weight byte). A layer's FLOPs per weight byte = rows per active expert.
 *  Qwen3-30B-A3B, E 128 K 8 H 2048 I 768, bf16: weights per expert 3*H*I*2 B = 9.4 MB.
 *    Decode T=1: 8 experts, 75 MB -> 23 us at 3.3 TB/s (the bound); FLOPs negligible.
 *    Prefill T=4096: 2*T*K*3*H*I = 310 GFLOP -> 0.31 ms at 990 TF/s; all 1.2 GB of weights read
 *    once -> 0.36 ms: balanced, so both must hold (each expert's 2 row tiles run on neighbouring
 *    CTAs: the second read of a weight tile is an L2 hit).
 *  DeepSeek-V3, E 256 K 8 H 7168 I 2048: 88 MB per expert. Decode T=1: 704 MB -> 213 us.
 *    Prefill T=4096: 2.9 TFLOP -> 2.9 ms at 990 TF/s, but 22.5 GB of weights -> 6.8 ms: at 128
 *    rows per expert the layer is bound by weight bytes, which the tile order reads once.
 *  Bounds the benchmark measures against: prefill FLOPs / cuBLAS dense bf16 GEMM rate; decode
 *  active weight bytes / device-to-device copy bandwidth.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "act_rules.h"
#include "quant_rules.h"
#include "backend.h"
#include "cuda_backend.h"
#include "hd.h"
#include "ptx.cuh"

extern "C" dynmoe_status dm_cuda_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);
extern "C" dynmoe_status dm_cuda_experts_load(void);

/* ------------------------------------------------------------------ shared parameters */

/* One GEMM of the pair, as the kernels see it. Row strides are in elements. */
struct dm_gemm_params {
    const void *a;              /* MODE 0: x [T, H]; MODE 1: h (rows_h) [R, ldh] */
    const void *b;              /* MODE 0: w13 [E, 2I, H]; MODE 1: w2 [E, H, I] */
    void *out;                  /* MODE 0: h [R, ldh]; MODE 1: rows_y [R, H]; both of T */
    const int32_t *offsets;     /* [E+1] */
    const int32_t *sorted_slots;/* [T*S] */
    const int32_t *active;      /* [E] */
    const int32_t *num_active;  /* [1] */
    int32_t num_experts;        /* E */
    int32_t slots;              /* S: token = slot / S */
    int32_t n;                  /* output columns: I (MODE 0) or H (MODE 1) */
    int32_t k;                  /* reduction length: H (MODE 0) or I (MODE 1) */
    int64_t lda;                /* A row stride */
    int64_t ldb;                /* B row stride (= k) */
    int64_t b_expert;           /* elements between experts in B */
    int64_t ldo;                /* out row stride */
    const void *bias;           /* MODE 0: b13 [E, w13 rows]; MODE 1: b2 [E, H]; weights' dtype; or NULL */
    int64_t bias_expert;        /* elements between experts in bias */
    const float *row_w;         /* MODE 0 with weight_on_input: weights [T*S] by slot; else NULL */
    int32_t paired;             /* MODE 0 of a gated act: a gate and an up row per output column */
    int32_t gate_up;            /* dynmoe_gate_up of w13 (paired only) */
    int32_t vec_a, vec_b;       /* 16-byte loads allowed on A / B rows */
    int32_t act;                /* dynmoe_act */
    float alpha, limit;         /* SWIGLU_OAI */
    int32_t row_split;          /* decode: warps sharing one expert's rows */
    const void *b_scale;        /* quantized B (b, ldb, b_expert in bytes): FP8_BLOCK fp32 [E, ceil(N/128),
                                   ceil(K/128)], MXFP4 ue8m0 [E, N, K/32], INT4 fp16 [E, N, ceil(K/g)] */
    const uint8_t *b_zero;      /* INT4 zero points as b_scale, or NULL (8) */
    int64_t scale_expert;       /* scales between experts */
    int32_t scale_kg;           /* scales per 128-row block (FP8) or per row (MXFP4, INT4) */
    int32_t group;              /* INT4 group size along K (MXFP4: 32) */
    int32_t wfmt;               /* dynmoe_weight_format: the decode kernel's Q */
};

/* Element types: storage and conversion to fp32. */
struct dm_bf16_t {
    typedef uint16_t store;
    static __device__ __forceinline__ float to_f32(uint16_t v) { return __uint_as_float((uint32_t)v << 16); }
    static __device__ __forceinline__ uint16_t from_f32(float v) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(v));
    }
    /* two packed values of a 32-bit word */
    static __device__ __forceinline__ float2 pair(uint32_t w) {
        return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    }
    /* two values rounded as from_f32 into one word, lo in bits 0-15: one cvt */
    static __device__ __forceinline__ uint32_t pack2(float lo, float hi) { return dm_cvt_bf16x2(lo, hi); }
};
struct dm_f16_t {
    typedef uint16_t store;
    static __device__ __forceinline__ float to_f32(uint16_t v) { return __half2float(__ushort_as_half(v)); }
    static __device__ __forceinline__ uint16_t from_f32(float v) { return __half_as_ushort(__float2half_rn(v)); }
    static __device__ __forceinline__ float2 pair(uint32_t w) {
        return make_float2(__half2float(__ushort_as_half((unsigned short)(w & 0xffffu))),
                           __half2float(__ushort_as_half((unsigned short)(w >> 16))));
    }
    static __device__ __forceinline__ uint32_t pack2(float lo, float hi) { return dm_cvt_f16x2(lo, hi); }
};
struct dm_f32_t {
    typedef float store;
    static __device__ __forceinline__ float to_f32(float v) { return v; }
    static __device__ __forceinline__ float from_f32(float v) { return v; }
};

/* The w13 row of output column j (MODE 0): its gate row (paired, `up` false), its up row, or
 * row j itself (non-gated). dm_gate_row / dm_up_row are the layout's rule (act_rules.h). */
static __device__ __forceinline__ int64_t dm_w13_row(const dm_gemm_params &p, int64_t j, bool up) {
    if (!p.paired) return j;
    return up ? dm_up_row((dynmoe_gate_up)p.gate_up, p.n, j) : dm_gate_row((dynmoe_gate_up)p.gate_up, p.n, j);
}

/* Bias entry `row` of expert e in fp32, 0 without biases. */
template <typename T>
static __device__ __forceinline__ float dm_bias(const dm_gemm_params &p, int e, int64_t row) {
    return p.bias ? T::to_f32(((const typename T::store *)p.bias)[(long long)e * p.bias_expert + row]) : 0.0f;
}

/* The routing weight that scales plan row r's GEMM1 accumulator (weight_on_input), else 1. */
static __device__ __forceinline__ float dm_row_weight(const dm_gemm_params &p, int r) {
    return p.row_w ? p.row_w[p.sorted_slots[r]] : 1.0f;
}

static __device__ __forceinline__ float dm_act1(const dm_gemm_params &p, float gate, float up) {
    return dm_activate((dynmoe_act)p.act, p.alpha, p.limit, gate, up);
}

/* MXFP4 / INT4 scale (and zero) of entry gi of the scale arrays. */
template <int Q>
static __device__ __forceinline__ float dm_nib_scale(const dm_gemm_params &p, long long gi) {
    return Q == 2 ? dm_ue8m0_to_f32(((const uint8_t *)p.b_scale)[gi])
                  : dm_f16_to_f32(((const uint16_t *)p.b_scale)[gi]);
}
static __device__ __forceinline__ float dm_nib_zero(const dm_gemm_params &p, long long gi) {
    return p.b_zero ? (float)p.b_zero[gi] : 8.0f;
}

/* D = A(16x16, row) * B(16x8, col) + D, fp32 accumulate. Fragments (PTX ISA, m16n8k16):
 * g = lane/4, q = lane%4; A: a[0] (row g, k 2q..2q+1), a[1] (row g+8), a[2] (row g, k+8),
 * a[3] (row g+8, k+8); B: b[0] (k 2q..2q+1, col g), b[1] (k+8); C: c[0..1] (row g, cols 2q..),
 * c[2..3] (row g+8). */
template <typename T>
struct dm_mma;
template <>
struct dm_mma<dm_bf16_t> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
        dm_mma_bf16_16816(c, a, b0, b1);
    }
};
template <>
struct dm_mma<dm_f16_t> {
    static __device__ __forceinline__ void run(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
        dm_mma_f16_16816(c, a, b0, b1);
    }
};

/* ------------------------------------------------------------------ prefill: tensor cores */

/*
 * CTA tile BM x BN x BK = 128 x 128 x 32, 4 warps as 2 (M) x 2 (N), each warp 64 rows x
 * (32 + 32) columns: columns [wn*32, +32) of the tile's first half and the same of its second
 * half. In GEMM1 the halves are gate and up of the same 64 intermediate columns, so one thread
 * holds both operands of silu(gate) * up; in GEMM2 they are just columns [0,64) and [64,128).
 *
 * Shared memory per stage: A 128 x 32 and B 128 x 32 16-bit values, 64-byte rows of 4 chunks of
 * 16 bytes, chunk c of row r stored at c ^ ((r >> 1) & 3): the 8 rows an ldmatrix phase reads
 * (and the 8 chunks a cp.async phase writes) fall in 8 distinct bank groups. 4 stages = 64 KiB
 * plus the tile prefix: 2 CTAs (8 warps) per SM on A100 (164 KiB) and H100 (228 KiB).
 *
 * Per k16 step a warp issues 4 + 4 ldmatrix.x4 (4 KiB of shared reads) for 32 mma (128 KFLOP):
 * half the shared traffic per FLOP of a 64 x 32 warp tile, which on H100 (~2 mma.sync clocks
 * of tensor work per 64 bytes of the 128 B/clk shared port) is what keeps the tensor cores fed.
 */
#define DM_BM 128
#define DM_BN 128
#define DM_BK 32
#define DM_STAGES 4
#define DM_THREADS 128
#define DM_STAGE_BYTES ((DM_BM + DM_BN) * DM_BK * 2)
#define DM_LD_ROWS (DM_THREADS / 4) /* rows one pass of the loader covers (4 chunks per row) */

/* Output columns per tile: 64 when each column takes a gate and an up row (GEMM1 of a gated
 * act), else 128 (GEMM2, and GEMM1 of RELU2 / SILU: no half-empty tiles). */
static __host__ __device__ __forceinline__ int dm_tile_cols(int paired) { return paired ? DM_BN / 2 : DM_BN; }

/* The output column (intermediate j in GEMM1, hidden n in GEMM2) of B tile row r: paired tiles
 * hold 64 gate rows then the 64 matching up rows. */
static __device__ __forceinline__ int dm_b_col(bool paired, int n0, int r) { return n0 + (paired ? (r & 63) : r); }

static __device__ __forceinline__ uint32_t dm_swz(int row, int chunk) {
    return (uint32_t)(row * (DM_BK * 2) + ((chunk ^ ((row >> 1) & 3)) << 4));
}

/* Loads 8 elements of one row at column k into shared memory at dst. A row outside the expert or
 * the matrix (NULL) is not loaded at all: its shared rows only feed output rows or columns that
 * the epilogue never stores (an MMA output element reads one A row and one B column), so stale
 * values there are harmless. Columns past K must be zeros in both operands.
 *  VEC (K % 8 == 0, rows 16-byte aligned: a chunk is all inside or all past K): one cp.async,
 *  zero-filled past K (src-size 0) — the same instruction for every chunk, no branch.
 *  otherwise: scalar loads with bounds, one st.shared. */
template <bool VEC>
static __device__ __forceinline__ void dm_load_chunk(uint32_t dst, const uint16_t *row, int k, int K) {
    if (row == NULL) return;
    if (VEC) {
        const bool in = k < K;
        dm_cp_async16_zfill(dst, in ? row + k : row, in ? 16u : 0u);
    } else {
        uint32_t w[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t lo = k + 2 * i < K ? (uint32_t)row[k + 2 * i] : 0u;
            uint32_t hi = k + 2 * i + 1 < K ? (uint32_t)row[k + 2 * i + 1] : 0u;
            w[i] = lo | (hi << 16);
        }
        dm_st_shared16(dst, make_uint4(w[0], w[1], w[2], w[3]));
    }
}

#define DM_LD_PASSES (DM_BM / DM_LD_ROWS) /* 4: rows ld_row + 32 * i */

/* Shared memory of a prefill variant (Q: 0 weights of T, else its dynmoe_weight_format). A stage
 * is the A tile (128 x 32 16-bit values), then Q = 0 the 16-bit B tile, else the B tile's stored
 * bytes, row r at r * raw_row (32 e4m3 bytes or 16 bytes of nibbles per 32 k). Quantized
 * variants add one dequantized 16-bit B tile after the stages, swizzled like Q = 0's and read by
 * the same ldmatrix code, rewritten every k-tile (a stage's bytes are a quarter or half of its
 * 16-bit tile, so the four stages plus that tile take less than Q = 0's 64 KiB). The tile prefix
 * s_tile follows. */
template <int Q>
struct dm_layout {
    enum {
        a_bytes = DM_BM * DM_BK * 2,
        raw_row = Q == 0 ? DM_BK * 2 : Q == DYNMOE_WEIGHTS_FP8_BLOCK ? DM_BK : DM_BK / 2,
        stage = a_bytes + DM_BN * raw_row,
        dq = Q == 0 ? 0 : DM_BN * DM_BK * 2,
        bytes = DM_STAGES * stage + dq
    };
};

/* The stored bytes of B tile row `row` (this thread's: tid) for k-tile kt into raw_row bytes at
 * dst; bytes past the row's end are zeros. VEC (FP8 K % 16 == 0, MXFP4 / INT4 K % 32 == 0, rows
 * 16-byte aligned: a 16-byte piece is all inside or all past the row): 16-byte cp.async,
 * zero-filled past the row; otherwise byte loads with bounds and one st.shared per 16 bytes. */
template <bool VEC, int Q>
static __device__ __forceinline__ void dm_load_raw(uint32_t dst, const uint8_t *row, int kt, int K) {
    if (row == NULL) return;
    const int raw = dm_layout<Q>::raw_row, nbytes = Q == DYNMOE_WEIGHTS_FP8_BLOCK ? K : (K + 1) / 2;
#pragma unroll
    for (int c = 0; c < raw / 16; c++) {
        const int b = kt * raw + 16 * c;
        if (VEC) {
            const bool in = b < nbytes;
            dm_cp_async16_zfill(dst + 16 * c, in ? row + b : row, in ? 16u : 0u);
        } else {
            uint32_t w[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                w[i] = 0;
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (b + 4 * i + j < nbytes) w[i] |= (uint32_t)row[b + 4 * i + j] << (8 * j);
            }
            dm_st_shared16(dst + 16 * c, make_uint4(w[0], w[1], w[2], w[3]));
        }
    }
}

/* ---- Pair decoders: two stored values (bits 0-15 of x: FP8 bytes 0, 1; MXFP4 / INT4 the two
 * nibbles of byte 0, low first) to an fp16 pair (the first value in bits 0-15) by integer ops on
 * one word (FP8 on sm_89+: one cvt). Each is exact: the fp16 is the value times a power of two
 * (DM_FP8_FOLD, DM_E2M1_FOLD) that the caller folds into the scale, or 1024 + q for INT4. They
 * agree with quant_rules.h's scalar rules on every code (experts_test checks all pairs). */

/* The FP8 pair decoder of this arch and DM_FP8_FOLD, its power of two. Both give the same fp32
 * product q * s bit for bit: q * 2^-8 (sm_80) and q (sm_89+) are exact in fp16 and fp32 and
 * s * 2^8 is exact (dm_fold_ok), so (q 2^-8)(s 2^8) and q s are one real number, rounded once. */
#if DM_ARCH >= 890
/* sm_89+: cvt.rn.f16x2.e4m3x2 gives the value itself (fold 1: the scale is used as is). */
#define DM_FP8_FOLD 1.0f
static __device__ __forceinline__ uint32_t dm_fp8x2_to_f16x2(uint32_t x) { return dm_cvt_e4m3x2_f16x2(x); }
#else
/* sm_80: e4m3 -> fp16 of value * 2^-8 by integer ops: each byte in the high byte of its lane,
 * magnitude shifted right 1 (fp16's bias 15 is e4m3's 7 + 8; e4m3 subnormals land on fp16
 * subnormals), sign kept. The NaN codes S.1111.111 (magnitude 0x7f00, the only one that carries
 * into bit 15 when 0x100 is added) get exponent 31 (0x7f80): NaN, quant_rules.h's rule. */
#define DM_FP8_FOLD 256.0f
static __device__ __forceinline__ uint32_t dm_fp8x2_to_f16x2(uint32_t x) {
    const uint32_t w = ((x & 0xffu) << 8) | ((x & 0xff00u) << 16);
    const uint32_t m = w & 0x7f007f00u;
    return (m >> 1) | (w & 0x80008000u) | (((m + 0x01000100u) & 0x80008000u) >> 1);
}
#endif
/* e2m1 -> fp16 of value * 2^-14: each nibble at the top of its lane, magnitude shifted right 3
 * (fp16's bias 15 is e2m1's 1 + 14; 0.5 lands on an fp16 subnormal), sign kept. */
#define DM_E2M1_FOLD 16384.0f
static __device__ __forceinline__ uint32_t dm_e2m1x2_to_f16x2(uint32_t x) {
    const uint32_t w = ((x & 0xfu) << 12) | ((x & 0xf0u) << 24);
    return ((w & 0x70007000u) >> 3) | (w & 0x80008000u);
}
/* 4-bit integer q -> fp16 1024 + q: 0x6400 is 1024 and q fills its mantissa's low bits. */
#define DM_U4_BIAS 1024.0f
static __device__ __forceinline__ uint32_t dm_u4x2_to_f16x2(uint32_t x) {
    return (x & 0xfu) | ((x & 0xf0u) << 12) | 0x64006400u;
}
/* Nibbles j and j + 4 (j 0..3) of a word w of 8 nibbles -> fp16 pair 1024 + q (nibble j in bits
 * 0-15): one shift and one lop3 per pair, no per-byte extraction; the caller pairs the lanes with
 * values j and j + 4 (the decode step's 8 nibbles of a word in 4 pairs). */
static __device__ __forceinline__ uint32_t dm_u4x8_to_f16x2(uint32_t w, int j) {
    return ((w >> (4 * j)) & 0x000f000fu) | 0x64006400u;
}
/* The pair decoder of format Q. */
template <int Q>
static __device__ __forceinline__ uint32_t dm_q2_to_f16x2(uint32_t x) {
    return Q == DYNMOE_WEIGHTS_FP8_BLOCK ? dm_fp8x2_to_f16x2(x)
           : Q == DYNMOE_WEIGHTS_MXFP4   ? dm_e2m1x2_to_f16x2(x)
                                         : dm_u4x2_to_f16x2(x);
}
/* The power of two the pair decoder of Q leaves out of the value (1 for INT4). */
template <int Q>
static __device__ __forceinline__ float dm_q_fold(void) {
    return Q == DYNMOE_WEIGHTS_FP8_BLOCK ? DM_FP8_FOLD : Q == DYNMOE_WEIGHTS_MXFP4 ? DM_E2M1_FOLD : 1.0f;
}
/* Whether scale s may take the fold: s * fold is then exact, so (value / fold) * (s * fold) is
 * the same fp32 product as value * s. Finite scales from 2^100 up (the fold could overflow to
 * inf) take the per-value rules instead; NaN and inf scales fold to themselves. */
static __device__ __forceinline__ bool dm_fold_ok(float s) {
    return !(fabsf(s) >= 0x1p100f && fabsf(s) <= 3.40282347e38f);
}
/* Values 2i, 2i + 1 of the pair word x decoded by Q, as fp32 times the folded scale s8 (zero
 * point zb = 1024 + z for INT4): (f - zb) is q - z exactly. */
template <int Q>
static __device__ __forceinline__ float2 dm_q2_scaled(uint32_t x, float s8, float zb) {
    const float2 f = dm_f16_t::pair(dm_q2_to_f16x2<Q>(x));
    if (Q == DYNMOE_WEIGHTS_INT4) return make_float2((f.x - zb) * s8, (f.y - zb) * s8);
    return make_float2(f.x * s8, f.y * s8);
}

/* Value v of a raw row (words: its bytes, little-endian) times scale s, zero point z (INT4).
 * Byte v for FP8; nibble v, low nibble first (bits 4 (v % 8) of word v / 8), for MXFP4 / INT4. */
template <int Q>
static __device__ __forceinline__ float dm_raw_value(const uint32_t *words, int v, float s, float z) {
    if (Q == DYNMOE_WEIGHTS_FP8_BLOCK) return dm_fp8e4m3_to_f32((uint8_t)(words[v >> 2] >> (8 * (v & 3)))) * s;
    const uint32_t q = (words[v >> 3] >> (4 * (v & 7))) & 0xfu;
    return Q == DYNMOE_WEIGHTS_MXFP4 ? dm_e2m1_to_f32(q) * s : ((float)q - z) * s;
}

/* B tile row `row` (this thread's) of k-tile kt from its raw bytes at raw into the dequantized
 * tile dq. One scale (and zero) per row and k-tile: 32 divides FP8's 128-block, is MXFP4's block
 * and divides every INT4 group (a ragged last group is just the last index). si: the row's first
 * scale entry (FP8: its 128-row block's), or -1 for a row outside the matrix (not written: stale
 * values there only feed columns the epilogue never stores). Each value is one fp32 product
 * decode(q) * s, rounded once to T (to nearest even: T::pack2, one cvt per pair). A full k-tile
 * (k0 + BK <= K) decodes pairs on whole words (dm_q2_scaled: value / fold times s * fold, the
 * same fp32 product); a partial one, or a finite scale past dm_fold_ok, takes quant_rules.h's
 * scalar rules per value with columns k >= K set to 0 (an odd K's pad nibble, and A's
 * zero-filled tail meets zeros even when s is NaN). */
template <typename T, int Q>
static __device__ __forceinline__ void dm_dequant_row(const dm_gemm_params &p, uint32_t dq, uint32_t raw, int row,
                                                      long long si, int kt, int K) {
    if (si < 0) return;
    const int k0 = kt * DM_BK;
    float s, z = 0.0f;
    if (Q == DYNMOE_WEIGHTS_FP8_BLOCK) {
        s = ((const float *)p.b_scale)[si + k0 / DM_FP8_BLOCK];
    } else {
        const long long g = si + k0 / p.group;
        s = dm_nib_scale<Q>(p, g);
        if (Q == DYNMOE_WEIGHTS_INT4) z = dm_nib_zero(p, g);
    }
    uint32_t words[8];
#pragma unroll
    for (int c = 0; c < dm_layout<Q>::raw_row / 16; c++) {
        const uint4 v = dm_ld_shared16(raw + 16 * c);
        words[4 * c] = v.x, words[4 * c + 1] = v.y, words[4 * c + 2] = v.z, words[4 * c + 3] = v.w;
    }
    if (k0 + DM_BK <= K && dm_fold_ok(s)) {
        /* full tile: no bounds; pairs decoded on whole words, the fold in the scale, one cvt per pair */
        const float s8 = s * dm_q_fold<Q>(), zb = z + DM_U4_BIAS;
#pragma unroll
        for (int c = 0; c < DM_BK / 8; c++) {
            uint32_t o[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int v = 8 * c + 2 * i; /* FP8: bytes v, v+1; 4-bit: byte v / 2 */
                const uint32_t x = Q == DYNMOE_WEIGHTS_FP8_BLOCK ? words[v >> 2] >> (8 * (v & 3))
                                                                 : words[v >> 3] >> (4 * (v & 7));
                const float2 f = dm_q2_scaled<Q>(x, s8, zb);
                o[i] = T::pack2(f.x, f.y);
            }
            dm_st_shared16(dq + dm_swz(row, c), make_uint4(o[0], o[1], o[2], o[3]));
        }
        return;
    }
#pragma unroll
    for (int c = 0; c < DM_BK / 8; c++) {
        uint32_t o[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int v = 8 * c + 2 * i;
            const float f0 = k0 + v < K ? dm_raw_value<Q>(words, v, s, z) : 0.0f;
            const float f1 = k0 + v + 1 < K ? dm_raw_value<Q>(words, v + 1, s, z) : 0.0f;
            o[i] = T::pack2(f0, f1);
        }
        dm_st_shared16(dq + dm_swz(row, c), make_uint4(o[0], o[1], o[2], o[3]));
    }
}

/* One k-tile (columns [kt*BK, +BK)) of A and B into stage `stage`. This thread's chunk of row
 * ld_row + 32 i sits at ld_off + i * 32 rows: rows 32 apart have the same swizzle. Quantized B
 * (Q > 0): the stored bytes of B row tid (q_row) into the stage's raw area. */
template <bool VEC, int Q>
static __device__ __forceinline__ void dm_load_stage(uint32_t smem0, int stage, int kt, uint32_t ld_off, int ld_chunk,
                                                     const uint16_t *const *a_row, const uint16_t *const *b_row,
                                                     const uint8_t *q_row, int tid, int K) {
    const uint32_t s0 = smem0 + stage * dm_layout<Q>::stage, sa = s0 + ld_off, sb = sa + DM_BM * DM_BK * 2;
    const int k = kt * DM_BK + ld_chunk * 8;
#pragma unroll
    for (int i = 0; i < DM_LD_PASSES; i++) {
        dm_load_chunk<VEC>(sa + i * DM_LD_ROWS * DM_BK * 2, a_row[i], k, K);
        if (Q == 0) dm_load_chunk<VEC>(sb + i * DM_LD_ROWS * DM_BK * 2, b_row[i], k, K);
    }
    if (Q != 0) dm_load_raw<VEC, Q>(s0 + dm_layout<Q>::a_bytes + tid * dm_layout<Q>::raw_row, q_row, kt, K);
}

/* Where a tile of the persistent order lies: expert e, its first plan row and row count, and
 * the tile's first row (within the expert) and first column. */
struct dm_tile {
    int e, row0, rows, m0, n0;
};

/* Tile `tile` from the per-expert tile prefix s_tile [E+1] (binary search): row tiles of an
 * expert fastest, so neighbouring CTAs share the B (weight) tile through L2. */
static __device__ __forceinline__ dm_tile dm_locate(long long tile, const long long *s_tile, const int32_t *offsets,
                                                    int E, int tile_cols) {
    int lo = 0, hi = E - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (s_tile[mid] <= tile) lo = mid;
        else hi = mid - 1;
    }
    dm_tile t;
    t.e = lo;
    t.row0 = offsets[lo];
    t.rows = offsets[lo + 1] - t.row0;
    const long long tiles_m = (t.rows + DM_BM - 1) / DM_BM, local = tile - s_tile[lo];
    t.m0 = (int)(local % tiles_m) * DM_BM;
    t.n0 = (int)(local / tiles_m) * tile_cols;
    return t;
}

/* The A and B rows this thread loads for tile t (rows ld_row + 32 i of the tile); NULL outside
 * the expert or the matrix. A paired B tile: rows 0..63 the gate rows of columns n0 + r,
 * 64..127 the up rows of the same columns (dm_w13_row: the layout's rule). */
template <int MODE>
static __device__ __forceinline__ void dm_tile_rows(const dm_gemm_params &p, const dm_tile &t, int ld_row,
                                                    const uint16_t **a_row, const uint16_t **b_row) {
    const uint16_t *A = (const uint16_t *)p.a;
    const uint16_t *Be = (const uint16_t *)p.b + (long long)t.e * p.b_expert;
#pragma unroll
    for (int i = 0; i < DM_LD_PASSES; i++) {
        const int r = ld_row + DM_LD_ROWS * i, m = t.m0 + r;
        a_row[i] = NULL;
        if (m < t.rows) {
            long long src = t.row0 + m;
            if (MODE == 0) src = p.sorted_slots[src] / p.slots;
            a_row[i] = A + src * p.lda;
        }
        const bool paired = MODE == 0 && p.paired;
        const int j = dm_b_col(paired, t.n0, r);
        b_row[i] = j < p.n ? Be + (MODE == 0 ? dm_w13_row(p, j, r >= 64) : (long long)j) * p.ldb : NULL;
    }
}

/* Quantized B: the stored row of B tile row r (this thread's: tid) and its first scale entry
 * (FP8: of its 128-row block), NULL and -1 outside the matrix. b, ldb, b_expert count bytes. */
template <int MODE, int Q>
static __device__ __forceinline__ void dm_tile_qrow(const dm_gemm_params &p, const dm_tile &t, int r,
                                                    const uint8_t **q_row, long long *q_si) {
    const bool paired = MODE == 0 && p.paired;
    const int j = dm_b_col(paired, t.n0, r);
    *q_row = NULL;
    *q_si = -1;
    if (j >= p.n) return;
    const long long wrow = MODE == 0 ? dm_w13_row(p, j, r >= 64) : (long long)j;
    *q_row = (const uint8_t *)p.b + (long long)t.e * p.b_expert + wrow * p.ldb;
    *q_si = (long long)t.e * p.scale_expert +
            (Q == DYNMOE_WEIGHTS_FP8_BLOCK ? wrow / DM_FP8_BLOCK : wrow) * p.scale_kg;
}

/* The first STAGES-1 k-tiles into stages 0..STAGES-2, one commit group each (empty past KT). */
template <bool VEC, int Q>
static __device__ __forceinline__ void dm_prologue(uint32_t smem0, int KT, uint32_t ld_off, int ld_chunk,
                                                   const uint16_t *const *a_row, const uint16_t *const *b_row,
                                                   const uint8_t *q_row, int tid, int K) {
#pragma unroll
    for (int s = 0; s < DM_STAGES - 1; s++) {
        if (s < KT) dm_load_stage<VEC, Q>(smem0, s, s, ld_off, ld_chunk, a_row, b_row, q_row, tid, K);
        dm_cp_async_commit();
    }
}

/* Stores columns col, col + 1 (< n) of an output row in the weights' dtype: one 32-bit store when
 * both are inside and the row stride is even. */
template <typename T>
static __device__ __forceinline__ void dm_store_pair(typename T::store *row, int col, int n, bool even_ld, float v0,
                                                     float v1) {
    const uint16_t h0 = T::from_f32(v0), h1 = T::from_f32(v1);
    if (col + 1 < n && even_ld) {
        *(uint32_t *)(row + col) = (uint32_t)h0 | ((uint32_t)h1 << 16);
    } else {
        if (col < n) row[col] = h0;
        if (col + 1 < n) row[col + 1] = h1;
    }
}

/* Epilogue straight from the accumulators: acc[mt][j][0..1] row g, [2..3] row g+8, columns 2q,
 * 2q+1 of n-tile j (j = half * 4 + n-tile); only rows of the expert and columns < n stored.
 * GEMM1 writes h = act(w acc + b13) to rows_h (paired: j < 4 the gate, j + 4 the up value of one
 * column), GEMM2 y = acc + b2 to rows_y, both in the weights' dtype. The bias of this thread's
 * 16 columns is read once per tile, the routing weight (weight_on_input) once per row.
 * ACT is the layer's dynmoe_act (MODE 0) as a constant: each activation's 64 sites fold to its
 * own code, instead of a 6-way switch at every site (5x the SASS, all of it in one I-cache). */
template <typename T, int MODE, int ACT>
static __device__ __forceinline__ void dm_epilogue_act(const dm_gemm_params &p, float (&acc)[4][8][4],
                                                       const dm_tile &t, int wm, int wn, int lane) {
    const int g = lane >> 2, q = lane & 3;
    const bool even_ld = (p.ldo & 1) == 0;
    const bool paired = MODE == 0 && dm_act_gated((dynmoe_act)ACT); /* == p.paired */
#define DM_ACT(gate, up) dm_activate((dynmoe_act)ACT, p.alpha, p.limit, gate, up)
    /* column of n-tile j's first value; paired tiles: both halves are the same 64 columns */
    const int col0 = t.n0 + wn * 32 + 2 * q;
#define DM_EPI_COL(j) (col0 + (paired ? 0 : ((j) >> 2) * 64) + ((j) & 3) * 8)
    float bb[8][2];
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int c = 0; c < 2; c++) {
            const int col = DM_EPI_COL(j) + c;
            bb[j][c] = col < p.n ? dm_bias<T>(p, t.e, MODE == 0 ? dm_w13_row(p, col, j >= 4) : (long long)col) : 0.0f;
        }
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int m = t.m0 + wm * 64 + mt * 16 + g + half * 8;
            if (m >= t.rows) continue;
            typename T::store *out = (typename T::store *)p.out + (long long)(t.row0 + m) * p.ldo;
            const float rw = MODE == 0 ? dm_row_weight(p, t.row0 + m) : 1.0f;
            if (paired) {
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    const float *gate = acc[mt][nt] + half * 2, *up = acc[mt][4 + nt] + half * 2;
                    dm_store_pair<T>(out, DM_EPI_COL(nt), p.n, even_ld,
                                     DM_ACT(gate[0] * rw + bb[nt][0], up[0] * rw + bb[4 + nt][0]),
                                     DM_ACT(gate[1] * rw + bb[nt][1], up[1] * rw + bb[4 + nt][1]));
                }
            } else {
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    float v0 = acc[mt][j][half * 2] * rw + bb[j][0], v1 = acc[mt][j][half * 2 + 1] * rw + bb[j][1];
                    if (MODE == 0) v0 = DM_ACT(v0, 0.0f), v1 = DM_ACT(v1, 0.0f);
                    dm_store_pair<T>(out, DM_EPI_COL(j), p.n, even_ld, v0, v1);
                }
            }
        }
    }
#undef DM_EPI_COL
#undef DM_ACT
}

/* The epilogue of the layer's activation (GEMM1) or GEMM2's (no activation). */
template <typename T, int MODE>
static __device__ __forceinline__ void dm_epilogue(const dm_gemm_params &p, float (&acc)[4][8][4], const dm_tile &t,
                                                   int wm, int wn, int lane) {
    if (MODE == 1) return dm_epilogue_act<T, MODE, DYNMOE_ACT_SWIGLU>(p, acc, t, wm, wn, lane);
    switch (p.act) {
    case DYNMOE_ACT_GEGLU: return dm_epilogue_act<T, MODE, DYNMOE_ACT_GEGLU>(p, acc, t, wm, wn, lane);
    case DYNMOE_ACT_GEGLU_TANH: return dm_epilogue_act<T, MODE, DYNMOE_ACT_GEGLU_TANH>(p, acc, t, wm, wn, lane);
    case DYNMOE_ACT_SWIGLU_OAI: return dm_epilogue_act<T, MODE, DYNMOE_ACT_SWIGLU_OAI>(p, acc, t, wm, wn, lane);
    case DYNMOE_ACT_RELU2: return dm_epilogue_act<T, MODE, DYNMOE_ACT_RELU2>(p, acc, t, wm, wn, lane);
    case DYNMOE_ACT_SILU: return dm_epilogue_act<T, MODE, DYNMOE_ACT_SILU>(p, acc, t, wm, wn, lane);
    default: return dm_epilogue_act<T, MODE, DYNMOE_ACT_SWIGLU>(p, acc, t, wm, wn, lane);
    }
}

/* Q: 0 weights of T, else the dynmoe_weight_format of B (W8A16 / W4A16: dequantized per k-tile
 * into a 16-bit tile, then the same ldmatrix / mma loop). */
template <typename T, int MODE, bool VEC, int Q>
__global__ void __launch_bounds__(DM_THREADS, 2) dm_prefill_gemm(dm_gemm_params p) {
    extern __shared__ __align__(128) unsigned char dm_smem[];
    long long *s_tile = (long long *)(dm_smem + dm_layout<Q>::bytes); /* [E+1] */
    __shared__ long long s_warp[DM_THREADS / 32];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int E = p.num_experts;
    const int tile_cols = dm_tile_cols(MODE == 0 && p.paired);
    const long long tiles_n = (p.n + tile_cols - 1) / tile_cols;

    /* ---- tile prefix over experts: s_tile[e] = sum_{e' < e} ceil(rows_e' / BM) * tiles_n ---- */
    {
        const int per = (E + DM_THREADS - 1) / DM_THREADS;
        const int lo = tid * per < E ? tid * per : E;
        const int hi = lo + per < E ? lo + per : E;
        long long sum = 0;
        for (int e = lo; e < hi; e++) {
            int rows = p.offsets[e + 1] - p.offsets[e];
            sum += (long long)((rows + DM_BM - 1) / DM_BM) * tiles_n;
        }
        long long incl = sum;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            long long v = __shfl_up_sync(0xffffffffu, incl, d);
            if (lane >= d) incl += v;
        }
        if (lane == 31) s_warp[warp] = incl;
        __syncthreads();
        long long before = 0;
        for (int w = 0; w < warp; w++) before += s_warp[w];
        long long excl = before + incl - sum;
        for (int e = lo; e < hi; e++) {
            s_tile[e] = excl;
            int rows = p.offsets[e + 1] - p.offsets[e];
            excl += (long long)((rows + DM_BM - 1) / DM_BM) * tiles_n;
        }
        if (tid == DM_THREADS - 1) s_tile[E] = before + incl;
        __syncthreads();
    }
    const long long total = s_tile[E];
    long long tile = blockIdx.x;
    if (tile >= total) return;

    const uint32_t smem0 = dm_smem_addr(dm_smem);
    const int ld_row = tid >> 2, ld_chunk = tid & 3; /* this thread loads rows ld_row + 32 i */
    const int KT = (p.k + DM_BK - 1) / DM_BK;
    /* Shared offsets of this thread, fixed for the kernel: its loader chunk, and its ldmatrix row
     * of A (rows wm*64 + lane%16, chunk lane/16) and of B (rows wn*32 + lane%8 + 8*(lane/16),
     * chunk (lane/8)%2) for kk = 0. Rows 16 apart share the swizzle, and chunk 2kk + c is c ^ 2kk,
     * so (mt, nb, kk) only add whole rows and XOR bit 5: no swizzle math in the k loop. */
    const uint32_t ld_off = dm_swz(ld_row, ld_chunk);
    const uint32_t a_frag = dm_swz(wm * 64 + (lane & 15), lane >> 4);
    const uint32_t b_frag = dm_swz(wn * 32 + (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);

    dm_tile t = dm_locate(tile, s_tile, p.offsets, E, tile_cols);
    const uint16_t *a_row[DM_LD_PASSES], *b_row[DM_LD_PASSES];
    const uint8_t *q_row = NULL; /* Q > 0: B row tid, stored bytes */
    long long q_si = -1;
    dm_tile_rows<MODE>(p, t, ld_row, a_row, b_row);
    if (Q != 0) dm_tile_qrow<MODE, Q>(p, t, tid, &q_row, &q_si);
    dm_prologue<VEC, Q>(smem0, KT, ld_off, ld_chunk, a_row, b_row, q_row, tid, p.k);

    for (;;) {
        /* The row extent of this tile is the expert's: a warp runs only its 16-row MMA steps that
         * hold rows of the expert, so an expert's tail tile of r rows costs ceil(r / 16) * 16
         * rows of MMA, not BM (ragged experts of 128 +- 11 rows: ~1.04x the useful MMA work
         * instead of ~1.5x). A warp with none still loads and meets the barriers. */
        const int wrows = t.rows - t.m0 - wm * 64;
        const int n_mt = wrows <= 0 ? 0 : (wrows >= 64 ? 4 : (wrows + 15) >> 4);
        float acc[4][8][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) acc[i][j][r] = 0.0f;

        /* ---- multistage pipeline: STAGES-1 k-tiles in flight ahead of the math ---- */
        for (int kt = 0; kt < KT; kt++) {
            dm_cp_async_wait<DM_STAGES - 2>();
            const uint32_t sa = smem0 + (kt % DM_STAGES) * dm_layout<Q>::stage;
            const uint32_t sb = Q != 0 ? smem0 + DM_STAGES * dm_layout<Q>::stage : sa + DM_BM * DM_BK * 2;
            const uint32_t raw = sa + dm_layout<Q>::a_bytes + tid * dm_layout<Q>::raw_row; /* Q > 0: own B row */
            __syncthreads(); /* k-tile kt landed for all; everyone is done with stage (kt-1) % STAGES */
            /* Quantized B: every warp is done with the previous k-tile's mma (the barrier above), so the
             * one dequantized tile may be rewritten, from this thread's own raw row (landed at its wait);
             * the barrier after the loads publishes it. */
            if (Q != 0) dm_dequant_row<T, Q>(p, sb, raw, tid, q_si, kt, p.k);
            {
                const int nk = kt + DM_STAGES - 1;
                if (nk < KT)
                    dm_load_stage<VEC, Q>(smem0, nk % DM_STAGES, nk, ld_off, ld_chunk, a_row, b_row, q_row, tid, p.k);
                dm_cp_async_commit();
            }
            if (Q != 0) __syncthreads(); /* dequantized tile complete */
            if (n_mt == 0) continue;
#pragma unroll
            for (int kk = 0; kk < DM_BK / 16; kk++) {
                /* ldmatrix.x4 lanes 8i..8i+7 address the rows of 8x8 matrix i.
                 * A (16 rows x 16 k): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
                 * (rows 8-15, k 8-15) = a[0..3]. B (16 n x 16 k, n-major): (n 0-7, k 0-7), (n 0-7, k 8-15),
                 * (n 8-15, k 0-7), (n 8-15, k 8-15) = b[0], b[1] of n-tile 0, then of n-tile 1. */
                uint32_t af[4][4], bf[4][4];
#pragma unroll
                for (int mt = 0; mt < 4; mt++)
                    if (mt < n_mt)
                        dm_ldmatrix_x4(sa + (a_frag ^ (kk << 5)) + mt * 16 * DM_BK * 2, af[mt][0], af[mt][1],
                                       af[mt][2], af[mt][3]);
#pragma unroll
                for (int nb = 0; nb < 4; nb++) /* (half, 16-column block): half = nb / 2 */
                    dm_ldmatrix_x4(sb + (b_frag ^ (kk << 5)) + ((nb >> 1) * 64 + (nb & 1) * 16) * DM_BK * 2,
                                   bf[nb][0], bf[nb][1], bf[nb][2], bf[nb][3]);
#pragma unroll
                for (int mt = 0; mt < 4; mt++)
                    if (mt < n_mt)
#pragma unroll
                        for (int j = 0; j < 8; j++) /* j = half * 4 + n-tile of 8 columns */
                            dm_mma<T>::run(acc[mt][j], af[mt], bf[j >> 1][(j & 1) * 2], bf[j >> 1][(j & 1) * 2 + 1]);
            }
        }
        /* Every warp is done with the stages (the last real loads landed at the waits above;
         * only empty groups are pending): the next tile's prologue may overwrite them, and its
         * loads fly while this tile's epilogue stores from registers. */
        __syncthreads();
        const dm_tile done = t;
        tile += gridDim.x;
        const bool more = tile < total;
        if (more) {
            t = dm_locate(tile, s_tile, p.offsets, E, tile_cols);
            dm_tile_rows<MODE>(p, t, ld_row, a_row, b_row);
            if (Q != 0) dm_tile_qrow<MODE, Q>(p, t, tid, &q_row, &q_si);
            dm_prologue<VEC, Q>(smem0, KT, ld_off, ld_chunk, a_row, b_row, q_row, tid, p.k);
        }
        dm_epilogue<T, MODE>(p, acc, done, wm, wn, lane);
        if (!more) break;
    }
}

/* ------------------------------------------------------------------ decode: weight streaming */

/*
 * A warp task is (active expert a, row split rs, group of DM_NR weight rows). The warp streams
 * its weight rows once per chunk of DM_RC plan rows of that expert (chunks rs, rs + row_split,
 * ...), lane l taking 16-byte vectors l, l + 32, ... of each row; each weight vector meets up to
 * DM_RC row vectors (L1 hits: all warps of the expert read the same rows). Per 16-byte weight
 * load: up to 2 row loads and 8..32 FMA, so HBM stays the bound up to ~8 rows per expert.
 *  GEMM1 group g: gate rows 2g, 2g+1 and up rows I+2g, I+2g+1 -> h[., 2g], h[., 2g+1].
 *  GEMM2 group g: rows 4g .. 4g+3 of W2_e -> rows_y[., 4g .. 4g+3].
 * DM_NR * DM_RC = 32 partial sums per lane are reduced with a transpose-reduce (31 shuffles),
 * after which lane l holds the total of value l = (weight row l / 8, plan row l % 8).
 */
#define DM_NR 4
#define DM_RC 8
#define DM_DEC_THREADS 256

template <typename T>
struct dm_vec;
template <>
struct dm_vec<dm_bf16_t> {
    enum { n = 8 };
    static __device__ __forceinline__ void unpack(uint4 v, float *f) {
        uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 t = dm_bf16_t::pair(w[i]);
            f[2 * i] = t.x;
            f[2 * i + 1] = t.y;
        }
    }
};
template <>
struct dm_vec<dm_f16_t> {
    enum { n = 8 };
    static __device__ __forceinline__ void unpack(uint4 v, float *f) {
        uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 t = dm_f16_t::pair(w[i]);
            f[2 * i] = t.x;
            f[2 * i + 1] = t.y;
        }
    }
};
template <>
struct dm_vec<dm_f32_t> {
    enum { n = 4 };
    static __device__ __forceinline__ void unpack(uint4 v, float *f) {
        f[0] = __uint_as_float(v.x);
        f[1] = __uint_as_float(v.y);
        f[2] = __uint_as_float(v.z);
        f[3] = __uint_as_float(v.w);
    }
};

/* One step of the transpose-reduce of 2*W values per lane over lanes l and l^W: afterwards the
 * lane with bit W set holds the sums of values W..2W-1 in acc[0..W-1], the other lane those of
 * 0..W-1. Five steps (16, 8, 4, 2, 1) leave in lane l's acc[0] the warp total of value l.
 * Bit masks instead of `upper ? acc[i] : acc[i + W]`, which the compiler may turn into a select
 * of addresses and so move acc to local memory. */
template <int W>
static __device__ __forceinline__ void dm_reduce_step(float *acc, int lane) {
    const uint32_t up = (lane & W) ? 0xffffffffu : 0u;
#pragma unroll
    for (int i = 0; i < W; i++) {
        const uint32_t lo = __float_as_uint(acc[i]), hi = __float_as_uint(acc[i + W]);
        const float send = __uint_as_float((lo & up) | (hi & ~up));
        const float keep = __uint_as_float((hi & up) | (lo & ~up));
        acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, W);
    }
}

/* acc[w * RC + i] += wf[w] . x row i over x's 16-byte vector v (rows i < nr only). */
template <typename T>
static __device__ __forceinline__ void dm_decode_fma(float *acc, const float (&wf)[DM_NR][dm_vec<T>::n],
                                                     const typename T::store *A, long long lda, const int *xrow, int v,
                                                     int nr) {
    enum { VN = dm_vec<T>::n };
#pragma unroll
    for (int i = 0; i < DM_RC; i++) {
        if (i < nr) {
            float xf[VN];
            dm_vec<T>::unpack(dm_ld_global_nc16(A + (long long)xrow[i] * lda + (long long)v * VN), xf);
#pragma unroll
            for (int w = 0; w < DM_NR; w++)
#pragma unroll
                for (int u = 0; u < VN; u++) acc[w * DM_RC + i] = fmaf(wf[w][u], xf[u], acc[w * DM_RC + i]);
        }
    }
}

/* acc[w * RC + i] += W row w . x row i over one 16-byte vector v of each (rows i < nr only). */
template <typename T>
static __device__ __forceinline__ void dm_decode_step(float *acc, const uint4 *wv, const typename T::store *A,
                                                      long long lda, const int *xrow, int v, int nr) {
    float wf[DM_NR][dm_vec<T>::n];
#pragma unroll
    for (int w = 0; w < DM_NR; w++) dm_vec<T>::unpack(wv[w], wf[w]);
    dm_decode_fma<T>(acc, wf, A, lda, xrow, v, nr);
}

/* Quantized weights (Q 1 FP8_BLOCK, 2 MXFP4, 3 INT4): one 16-byte vector v of each weight row =
 * QN values (16 e4m3 bytes, k = 16 v .., or 32 nibbles, low nibble first, k = 32 v ..), inside
 * one scale block or group (16 and 32 divide 128, MXFP4's 32 and every INT4 group): scale s[w],
 * zero z[w] (INT4). Decoded in registers pair by pair on whole words (dm_q2_scaled, the fold in
 * the scale: the same fp32 decode(q) * s as quant_rules.h's rules), or by those rules per value
 * when a row's scale is past dm_fold_ok; met with the QN / VN x vectors of the same k. FP8 is
 * 1 weight byte per FMA pair (bf16: 2), MXFP4 / INT4 half a byte. */
template <typename T, int Q>
static __device__ __forceinline__ void dm_decode_step_q(float *acc, const uint4 *wv, const float *s, const float *z,
                                                        const typename T::store *A, long long lda, const int *xrow,
                                                        int v, int nr) {
    enum { VN = dm_vec<T>::n, QN = Q == DYNMOE_WEIGHTS_FP8_BLOCK ? 16 : 32 };
    bool fold = true;
    float s8[DM_NR];
    /* INT4 only: the fp16 pair 1024 + z. z is a zero point byte, 0..15 by the C API
     * (dynmoe.h), or 8 without zeros; 1024 + z is exact for any byte (below 2048 fp16's step is
     * 1), so a byte past 15 still decodes as quant_rules.h's (q - z) * s. */
    uint32_t zh[DM_NR];
#pragma unroll
    for (int w = 0; w < DM_NR; w++) {
        fold = fold && dm_fold_ok(s[w]);
        s8[w] = s[w] * dm_q_fold<Q>();
        zh[w] = Q == DYNMOE_WEIGHTS_INT4 ? (0x6400u + (uint32_t)z[w]) * 0x10001u : 0u;
    }
#pragma unroll
    for (int h = 0; h < QN / VN; h++) {
        float wf[DM_NR][VN];
#pragma unroll
        for (int w = 0; w < DM_NR; w++) {
            const uint32_t words[4] = {wv[w].x, wv[w].y, wv[w].z, wv[w].w};
            if (fold && Q == DYNMOE_WEIGHTS_INT4) {
                /* value b = nibble n of word b / 8: lane n / 4 of pair n % 4 (f32: each half-word
                 * of x takes one lane; the other is dead code). q - z in fp16 on the pair (exact:
                 * an integer of at most 255 in magnitude, 15 within the C API), then one fp32
                 * product per value. */
#pragma unroll
                for (int u = 0; u < VN; u++) {
                    const int b = h * VN + u, n = b & 7;
                    const float2 f = dm_f16_t::pair(dm_sub_f16x2(dm_u4x8_to_f16x2(words[b >> 3], n & 3), zh[w]));
                    wf[w][u] = (n < 4 ? f.x : f.y) * s8[w];
                }
            } else if (fold) {
#pragma unroll
                for (int u = 0; u < VN; u += 2) {
                    const int b = h * VN + u; /* FP8: bytes b, b+1; 4-bit: byte b / 2 */
                    const uint32_t x = Q == DYNMOE_WEIGHTS_FP8_BLOCK ? words[b >> 2] >> (8 * (b & 3))
                                                                     : words[b >> 3] >> (4 * (b & 7));
                    /* FP8 / MXFP4 (a folding INT4 vector took the branch above): no zero point */
                    const float2 f = dm_q2_scaled<Q>(x, s8[w], 0.0f);
                    wf[w][u] = f.x, wf[w][u + 1] = f.y;
                }
            } else {
#pragma unroll
                for (int u = 0; u < VN; u++) wf[w][u] = dm_raw_value<Q>(words, h * VN + u, s[w], z[w]);
            }
        }
        dm_decode_fma<T>(acc, wf, A, lda, xrow, v * (QN / VN) + h, nr);
    }
}

/* 2 blocks (16 warps) per SM: at most 128 registers. Without the bound ptxas took 149 for GEMM2
 * once the biases came in, i.e. 8 warps per SM for a kernel that needs loads in flight. */
template <typename T, int MODE, int Q> /* Q: 0 weights of T, else dynmoe_weight_format */
__global__ void __launch_bounds__(DM_DEC_THREADS, 2) dm_decode_gemm(dm_gemm_params p) {
    typedef typename T::store S;
    enum { VN = dm_vec<T>::n };
    const int lane = threadIdx.x & 31;
    const long long warp0 = ((long long)blockIdx.x * DM_DEC_THREADS + threadIdx.x) >> 5;
    const long long warps = (long long)gridDim.x * (DM_DEC_THREADS / 32);
    const bool paired = MODE == 0 && p.paired;
    const int groups = paired ? (p.n + 1) / 2 : (p.n + DM_NR - 1) / DM_NR;
    const long long per_expert = (long long)groups * p.row_split;
    const int num_active = *p.num_active;
    const S *A = (const S *)p.a;
    const S *B = (const S *)p.b;
    const int K = p.k;
    const int vec = p.vec_a && p.vec_b;

    for (long long task = warp0; task < (long long)num_active * per_expert; task += warps) {
        const int ai = (int)(task / per_expert);
        const int rem = (int)(task % per_expert);
        const int rs = rem / groups, grp = rem % groups;
        const int e = p.active[ai];
        const int row0 = p.offsets[e];
        const int rows = p.offsets[e + 1] - row0;

        /* the 4 weight rows; a row past the end repeats the group's first (never stored).
         * Paired: gate rows of columns 2g, 2g+1 (w 0, 1), then their up rows (w 2, 3). */
        const S *Be = B + (long long)e * p.b_expert;
        const S *wr[DM_NR];
        const uint8_t *wq[DM_NR]; /* Q: the same rows as bytes, and their 128-row block's scales */
        const float *ws[DM_NR];
        long long si[DM_NR]; /* Q >= 2: the row's first scale (and zero) entry */
#pragma unroll
        for (int w = 0; w < DM_NR; w++) {
            long long wrow;
            if (paired) {
                int j = 2 * grp + (w & 1);
                wrow = dm_w13_row(p, j < p.n ? j : 2 * grp, w >= 2);
            } else {
                int j = DM_NR * grp + w;
                wrow = j < p.n ? j : DM_NR * grp;
            }
            wr[w] = Be + wrow * p.ldb;
            if (Q) wq[w] = (const uint8_t *)p.b + (long long)e * p.b_expert + wrow * p.ldb;
            if (Q == 1) ws[w] = (const float *)p.b_scale + (long long)e * p.scale_expert + (wrow / DM_FP8_BLOCK) * p.scale_kg;
            if (Q >= 2) si[w] = (long long)e * p.scale_expert + wrow * p.scale_kg;
        }

        for (int c0 = rs * DM_RC; c0 < rows; c0 += p.row_split * DM_RC) {
            const int nr = rows - c0 < DM_RC ? rows - c0 : DM_RC;
            /* A rows of the chunk (32-bit indices: fewer registers than pointers) */
            int xrow[DM_RC];
#pragma unroll
            for (int i = 0; i < DM_RC; i++) {
                int src = row0 + c0 + (i < nr ? i : 0);
                if (MODE == 0) src = p.sorted_slots[src] / p.slots;
                xrow[i] = src;
            }
            float acc[DM_NR * DM_RC];
#pragma unroll
            for (int i = 0; i < DM_NR * DM_RC; i++) acc[i] = 0.0f;

            if (Q && vec) {
                /* 16 (FP8) or 32 (MXFP4 / INT4) values per 16-byte vector */
                for (int v = lane; v < K / (Q == 1 ? 16 : 32); v += 32) {
                    uint4 wv[DM_NR];
                    float sc[DM_NR], zp[DM_NR];
                    const int g = Q == 1 ? 0 : Q == 2 ? v : (v * 32) / p.group; /* FP8 has no group (p.group 0) */
#pragma unroll
                    for (int w = 0; w < DM_NR; w++) {
                        wv[w] = dm_ld_stream16(wq[w] + (long long)v * 16);
                        if (Q == 1) sc[w] = ws[w][(v * 16) / DM_FP8_BLOCK];
                        else sc[w] = dm_nib_scale<Q>(p, si[w] + g);
                        zp[w] = Q == 3 ? dm_nib_zero(p, si[w] + g) : 0.0f;
                    }
                    dm_decode_step_q<T, Q>(acc, wv, sc, zp, A, p.lda, xrow, v, nr);
                }
            } else if (Q >= 2) {
                for (int k = lane; k < K; k += 32) {
                    float wf[DM_NR];
                    const int g = k / p.group;
#pragma unroll
                    for (int w = 0; w < DM_NR; w++) {
                        const uint32_t q = dm_nibble(wq[w], k);
                        const float s = dm_nib_scale<Q>(p, si[w] + g);
                        wf[w] = Q == 2 ? dm_e2m1_to_f32(q) * s : ((float)q - dm_nib_zero(p, si[w] + g)) * s;
                    }
#pragma unroll
                    for (int i = 0; i < DM_RC; i++) {
                        if (i < nr) {
                            float xf = T::to_f32(A[(long long)xrow[i] * p.lda + k]);
#pragma unroll
                            for (int w = 0; w < DM_NR; w++) acc[w * DM_RC + i] = fmaf(wf[w], xf, acc[w * DM_RC + i]);
                        }
                    }
                }
            } else if (Q) {
                for (int k = lane; k < K; k += 32) {
                    float wf[DM_NR];
#pragma unroll
                    for (int w = 0; w < DM_NR; w++) wf[w] = dm_fp8e4m3_to_f32(wq[w][k]) * ws[w][k / DM_FP8_BLOCK];
#pragma unroll
                    for (int i = 0; i < DM_RC; i++) {
                        if (i < nr) {
                            float xf = T::to_f32(A[(long long)xrow[i] * p.lda + k]);
#pragma unroll
                            for (int w = 0; w < DM_NR; w++) acc[w * DM_RC + i] = fmaf(wf[w], xf, acc[w * DM_RC + i]);
                        }
                    }
                }
            } else if (vec) {
                /* two vectors per weight row in flight per lane (8 x 16 B) before the math */
                const int nv = K / VN;
                int v = lane;
                for (; v + 32 < nv; v += 64) {
                    uint4 wv[2][DM_NR];
#pragma unroll
                    for (int d = 0; d < 2; d++)
#pragma unroll
                        for (int w = 0; w < DM_NR; w++) wv[d][w] = dm_ld_stream16(wr[w] + (long long)(v + 32 * d) * VN);
#pragma unroll
                    for (int d = 0; d < 2; d++) dm_decode_step<T>(acc, wv[d], A, p.lda, xrow, v + 32 * d, nr);
                }
                if (v < nv) {
                    uint4 wv[DM_NR];
#pragma unroll
                    for (int w = 0; w < DM_NR; w++) wv[w] = dm_ld_stream16(wr[w] + (long long)v * VN);
                    dm_decode_step<T>(acc, wv, A, p.lda, xrow, v, nr);
                }
            } else {
                for (int k = lane; k < K; k += 32) {
                    float wf[DM_NR];
#pragma unroll
                    for (int w = 0; w < DM_NR; w++) wf[w] = T::to_f32(wr[w][k]);
#pragma unroll
                    for (int i = 0; i < DM_RC; i++) {
                        if (i < nr) {
                            float xf = T::to_f32(A[(long long)xrow[i] * p.lda + k]);
#pragma unroll
                            for (int w = 0; w < DM_NR; w++) acc[w * DM_RC + i] = fmaf(wf[w], xf, acc[w * DM_RC + i]);
                        }
                    }
                }
            }

            dm_reduce_step<16>(acc, lane);
            dm_reduce_step<8>(acc, lane);
            dm_reduce_step<4>(acc, lane);
            dm_reduce_step<2>(acc, lane);
            dm_reduce_step<1>(acc, lane);
            /* lane l now holds weight row lw = l / RC of plan row i = l % RC: its column and bias
             * (the gate or up entry of b13, or b2), computed here, not held across the k loop */
            const int lw = lane / DM_RC, i = lane % DM_RC;
            const int col = paired ? 2 * grp + (lw & 1) : DM_NR * grp + lw;
            const float bias = col < p.n ? dm_bias<T>(p, e, MODE == 0 ? dm_w13_row(p, col, lw >= 2) : (long long)col) : 0.0f;
            const float rw = MODE == 0 && i < nr ? dm_row_weight(p, row0 + c0 + i) : 1.0f;
            const float v = acc[0] * rw + bias;
            S *orow = (S *)p.out + (long long)(row0 + c0 + i) * p.ldo;
            if (paired) {
                /* lanes 0..15 hold gate (w 0, 1), lanes 16..31 the matching up (w 2, 3) */
                const float up = __shfl_down_sync(0xffffffffu, v, 16);
                if (lane < 16 && i < nr && col < p.n) orow[col] = T::from_f32(dm_act1(p, v, up));
            } else {
                if (i < nr && col < p.n) orow[col] = T::from_f32(MODE == 0 ? dm_act1(p, v, 0.0f) : v);
            }
        }
    }
}

/* ------------------------------------------------------------------ launcher */

typedef enum { DM_PATH_AUTO = 0, DM_PATH_DECODE = 1, DM_PATH_PREFILL = 2 } dm_experts_path;

/* The path, a pure function of host-known sizes. DYNMOE_EXPERTS_PATH=decode|prefill forces one
 * (tests run both paths on the same inputs); f32 always takes the FFMA streaming kernel.
 * Decode when the average rows per expert, T*S / E, is at most 8: below that a 128-row MMA tile
 * is mostly padding and the layer is bound by weight bytes, which the streaming kernel reads once
 * per chunk of 8 rows at full width. */
static dm_experts_path dm_choose_path(dynmoe_dtype dt, int64_t num_slots, int32_t E) {
    const char *env = getenv("DYNMOE_EXPERTS_PATH");
    /* every weight format has both paths (bf16 / f16); the rule is the same for all of them */
    if (dt == DYNMOE_F32) return DM_PATH_DECODE;
    if (env && strcmp(env, "decode") == 0) return DM_PATH_DECODE;
    if (env && strcmp(env, "prefill") == 0) return DM_PATH_PREFILL;
    return num_slots <= (int64_t)DM_RC * E ? DM_PATH_DECODE : DM_PATH_PREFILL;
}

static int dm_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* Dynamic shared memory the prefill kernels are allowed: enough for any E (Q = 0's layout is the
 * largest). */
#define DM_PREFILL_SMEM_MAX ((int)dm_layout<0>::bytes + (int)sizeof(long long) * (DYNMOE_MAX_EXPERTS + 1))
#define DM_MAX_DEVICES 64

/* Devices whose prefill kernels already have the raised limit (set by dm_cuda_experts_load at
 * context creation, else by the first launch). A benign race: two threads may both set it. */
static volatile int dm_prefill_smem_ready[DM_MAX_DEVICES];

template <typename T>
static cudaError_t dm_load_prefill(cudaError_t err, int smem);

template <typename T>
static cudaError_t dm_prefill_smem_limit(int device) {
    if (device >= 0 && device < DM_MAX_DEVICES && dm_prefill_smem_ready[device]) return cudaSuccess;
    return dm_load_prefill<T>(cudaSuccess, DM_PREFILL_SMEM_MAX);
}

/* The load path is a compile-time variant, chosen here: 16-byte cp.async for every chunk when
 * both operands' rows allow it (A: K % 8 == 0; B: K % 8, FP8 K % 16, MXFP4 / INT4 K % 32 == 0;
 * 16-byte aligned), scalar loads otherwise. */
template <typename T, int MODE, int Q>
static void dm_prefill_launch_q(const dm_gemm_params &p, unsigned grid, cudaStream_t st) {
    const size_t smem = (size_t)dm_layout<Q>::bytes + sizeof(long long) * (size_t)(p.num_experts + 1);
    if (p.vec_a && p.vec_b) dm_prefill_gemm<T, MODE, true, Q><<<grid, DM_THREADS, smem, st>>>(p);
    else dm_prefill_gemm<T, MODE, false, Q><<<grid, DM_THREADS, smem, st>>>(p);
}

template <typename T, int MODE>
static void dm_prefill_launch(const dm_gemm_params &p, unsigned grid, cudaStream_t st) {
    switch (p.wfmt) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: return dm_prefill_launch_q<T, MODE, DYNMOE_WEIGHTS_FP8_BLOCK>(p, grid, st);
    case DYNMOE_WEIGHTS_MXFP4: return dm_prefill_launch_q<T, MODE, DYNMOE_WEIGHTS_MXFP4>(p, grid, st);
    case DYNMOE_WEIGHTS_INT4: return dm_prefill_launch_q<T, MODE, DYNMOE_WEIGHTS_INT4>(p, grid, st);
    default: return dm_prefill_launch_q<T, MODE, 0>(p, grid, st);
    }
}

template <typename T>
static dynmoe_status dm_launch_prefill(const dm_gemm_params &p1, const dm_gemm_params &p2, int64_t num_slots,
                                       int sms, int device, cudaStream_t st) {
    const int E = p1.num_experts;
    cudaError_t err = dm_prefill_smem_limit<T>(device);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return dm_fail(DYNMOE_ERR_DEVICE, "cuda experts: shared memory limit of the prefill kernels: %s",
                       cudaGetErrorString(err));
    }
    /* Row tiles: sum_e ceil(rows_e / BM) <= (R + active * (BM - 1)) / BM, R <= T*S. */
    const int64_t active_max = num_slots < E ? num_slots : E;
    const int64_t row_tiles = (num_slots + active_max * (DM_BM - 1)) / DM_BM;
    const dm_gemm_params *ps[2] = {&p1, &p2};
    for (int g = 0; g < 2; g++) {
        const dm_gemm_params &p = *ps[g];
        const int cols = dm_tile_cols(p.paired);
        const int64_t tiles = row_tiles * ((p.n + cols - 1) / cols);
        int64_t grid = (int64_t)sms * 2; /* 2 CTAs per SM: registers (205-236 x 128 of 64 K) and shared memory */
        if (tiles < grid) grid = tiles;
        if (grid < 1) grid = 1;
        if (g == 0) dm_prefill_launch<T, 0>(p, (unsigned)grid, st);
        else dm_prefill_launch<T, 1>(p, (unsigned)grid, st);
        err = cudaGetLastError();
        if (err != cudaSuccess)
            return dm_fail(DYNMOE_ERR_DEVICE, "cuda experts: prefill GEMM%d launch: %s", g + 1, cudaGetErrorString(err));
    }
    return DYNMOE_OK;
}

template <typename T>
static dynmoe_status dm_launch_decode(dm_gemm_params p1, dm_gemm_params p2, int64_t num_slots, int sms,
                                      cudaStream_t st) {
    const int E = p1.num_experts;
    const int64_t active_max = num_slots < E ? num_slots : E;
    /* Row split: 1 for the decode regime (weights read once per 8 rows); for f32 at prefill sizes
     * the average expert's chunks spread over up to 16 warps per weight group. */
    int64_t avg_chunks = (num_slots / E + DM_RC - 1) / DM_RC;
    int32_t split = avg_chunks < 1 ? 1 : (avg_chunks > 16 ? 16 : (int32_t)avg_chunks);
    p1.row_split = split;
    p2.row_split = split;
    dm_gemm_params *ps[2] = {&p1, &p2};
    for (int g = 0; g < 2; g++) {
        const dm_gemm_params &p = *ps[g];
        const int64_t groups = p.paired ? (p.n + 1) / 2 : (p.n + DM_NR - 1) / DM_NR;
        const int64_t warps = active_max * groups * split;
        int64_t grid = (warps + DM_DEC_THREADS / 32 - 1) / (DM_DEC_THREADS / 32);
        if (grid > (int64_t)sms * 8) grid = (int64_t)sms * 8;
        if (grid < 1) grid = 1;
        if (p.wfmt == DYNMOE_WEIGHTS_FP8_BLOCK) {
            if (g == 0) dm_decode_gemm<T, 0, 1><<<(unsigned)grid, DM_DEC_THREADS, 0, st>>>(p);
            else dm_decode_gemm<T, 1, 1><<<(unsigned)grid, DM_DEC_THREADS, 0, st>>>(p);
        } else if (p.wfmt == DYNMOE_WEIGHTS_MXFP4) {
            if (g == 0) dm_decode_gemm<T, 0, 2><<<(unsigned)grid, DM_DEC_THREADS, 0, st>>>(p);
            else dm_decode_gemm<T, 1, 2><<<(unsigned)grid, DM_DEC_THREADS, 0, st>>>(p);
        } else if (p.wfmt == DYNMOE_WEIGHTS_INT4) {
            if (g == 0) dm_decode_gemm<T, 0, 3><<<(unsigned)grid, DM_DEC_THREADS, 0, st>>>(p);
            else dm_decode_gemm<T, 1, 3><<<(unsigned)grid, DM_DEC_THREADS, 0, st>>>(p);
        } else {
            if (g == 0) dm_decode_gemm<T, 0, 0><<<(unsigned)grid, DM_DEC_THREADS, 0, st>>>(p);
            else dm_decode_gemm<T, 1, 0><<<(unsigned)grid, DM_DEC_THREADS, 0, st>>>(p);
        }
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess)
            return dm_fail(DYNMOE_ERR_DEVICE, "cuda experts: decode GEMM%d launch: %s", g + 1, cudaGetErrorString(err));
    }
    return DYNMOE_OK;
}

/* Trusts its arguments (validated by the API layer). */
extern "C" dynmoe_status dm_cuda_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream) {
    const dynmoe_experts *ex = &a->experts;
    const int64_t num_slots = a->T * (int64_t)a->slots;
    if (num_slots == 0) return DYNMOE_OK;
    const int32_t E = ex->num_experts, H = ex->hidden, I = ex->inter;
    const dynmoe_dtype dt = ex->dtype;
    const size_t es = dm_dtype_size(dt);
    cudaStream_t st = (cudaStream_t)stream;

    const dm_cuda_impl *impl = (const dm_cuda_impl *)ctx->impl;
    const int sms = impl && impl->sm_count > 0 ? impl->sm_count : 132;

    /* h row stride: I rounded up to 16 bytes when that fits in the 8*I bytes of a rows_h row. */
    const int64_t per16 = (int64_t)(16 / es);
    int64_t ldh = (I + per16 - 1) / per16 * per16;
    if (ldh * (int64_t)es > 8 * (int64_t)I) ldh = I;

    dm_gemm_params p1;
    memset(&p1, 0, sizeof p1);
    p1.a = a->x;
    p1.b = ex->w13;
    p1.out = a->rows_h;
    p1.offsets = a->plan.expert_offsets;
    p1.sorted_slots = a->plan.sorted_slots;
    p1.active = a->plan.active_experts;
    p1.num_active = a->plan.num_active;
    p1.num_experts = E;
    p1.slots = a->slots;
    p1.n = I;
    p1.k = H;
    p1.lda = H;
    p1.ldb = H;
    p1.b_expert = dm_w13_rows(ex->act, I) * H;
    p1.ldo = ldh;
    p1.bias = ex->b13;
    p1.bias_expert = dm_w13_rows(ex->act, I);
    p1.row_w = a->router.weight_on_input ? a->weights : NULL;
    p1.paired = dm_act_gated(ex->act);
    p1.gate_up = ex->gate_up;
    p1.vec_a = (int64_t)H * es % 16 == 0 && dm_aligned16(a->x);
    p1.vec_b = (int64_t)H * es % 16 == 0 && dm_aligned16(ex->w13);
    /* FP8_BLOCK: b, ldb and b_expert count bytes (one per value: the same numbers); 16-byte
     * vectors of 16 values when K % 16 == 0 */
    const int fp8 = ex->weight_format == DYNMOE_WEIGHTS_FP8_BLOCK;
    if (fp8) {
        p1.vec_b = H % 16 == 0 && dm_aligned16(ex->w13);
        p1.b_scale = ex->w13_scale;
        p1.scale_kg = (int32_t)dm_quant_groups(DYNMOE_WEIGHTS_FP8_BLOCK, H, 0);
        p1.scale_expert = dm_quant_scales_per_expert(DYNMOE_WEIGHTS_FP8_BLOCK, dm_w13_rows(ex->act, I), H, 0);
    }
    /* MXFP4 / INT4: rows of ceil(K/2) bytes; 16-byte vectors of 32 nibbles when K % 32 == 0
     * (then every row starts 16-byte aligned and no vector holds the pad nibble) */
    const int nib = ex->weight_format == DYNMOE_WEIGHTS_MXFP4 || ex->weight_format == DYNMOE_WEIGHTS_INT4;
    const int32_t group = ex->weight_format == DYNMOE_WEIGHTS_MXFP4 ? DM_MXFP4_BLOCK : ex->group_size;
    p1.wfmt = ex->weight_format;
    if (nib) {
        p1.ldb = (H + 1) / 2;
        p1.b_expert = dm_w13_rows(ex->act, I) * p1.ldb;
        p1.vec_b = H % 32 == 0 && dm_aligned16(ex->w13);
        p1.b_scale = ex->w13_scale;
        p1.b_zero = (const uint8_t *)ex->w13_zero;
        p1.group = group;
        p1.scale_kg = (int32_t)dm_quant_groups(ex->weight_format, H, group);
        p1.scale_expert = dm_quant_scales_per_expert(ex->weight_format, dm_w13_rows(ex->act, I), H, group);
    }
    p1.act = ex->act;
    p1.alpha = ex->alpha;
    p1.limit = ex->limit;
    p1.row_split = 1;

    dm_gemm_params p2 = p1;
    p2.a = a->rows_h;
    p2.b = ex->w2;
    p2.out = a->rows_y;
    p2.n = H;
    p2.k = I;
    p2.lda = ldh;
    p2.ldb = I;
    p2.b_expert = (int64_t)H * I;
    p2.ldo = H;
    p2.bias = ex->b2;
    p2.bias_expert = H;
    p2.row_w = NULL;
    p2.paired = 0;
    p2.vec_a = ldh * (int64_t)es % 16 == 0 && dm_aligned16(a->rows_h);
    p2.vec_b = (int64_t)I * es % 16 == 0 && dm_aligned16(ex->w2);
    if (fp8) {
        p2.vec_b = I % 16 == 0 && dm_aligned16(ex->w2);
        p2.b_scale = ex->w2_scale;
        p2.scale_kg = (int32_t)dm_quant_groups(DYNMOE_WEIGHTS_FP8_BLOCK, I, 0);
        p2.scale_expert = dm_quant_scales_per_expert(DYNMOE_WEIGHTS_FP8_BLOCK, H, I, 0);
    }
    if (nib) {
        p2.ldb = (I + 1) / 2;
        p2.b_expert = (int64_t)H * p2.ldb;
        p2.vec_b = I % 32 == 0 && dm_aligned16(ex->w2);
        p2.b_scale = ex->w2_scale;
        p2.b_zero = (const uint8_t *)ex->w2_zero;
        p2.scale_kg = (int32_t)dm_quant_groups(ex->weight_format, I, group);
        p2.scale_expert = dm_quant_scales_per_expert(ex->weight_format, H, I, group);
    }

    const dm_experts_path path = dm_choose_path(dt, num_slots, E);
    switch (dt) {
    case DYNMOE_BF16:
        return path == DM_PATH_PREFILL ? dm_launch_prefill<dm_bf16_t>(p1, p2, num_slots, sms, ctx->device, st)
                                       : dm_launch_decode<dm_bf16_t>(p1, p2, num_slots, sms, st);
    case DYNMOE_F16:
        return path == DM_PATH_PREFILL ? dm_launch_prefill<dm_f16_t>(p1, p2, num_slots, sms, ctx->device, st)
                                       : dm_launch_decode<dm_f16_t>(p1, p2, num_slots, sms, st);
    case DYNMOE_F32:
        return dm_launch_decode<dm_f32_t>(p1, p2, num_slots, sms, st);
    default:
        return dm_fail(DYNMOE_ERR_INTERNAL, "cuda experts: unknown dtype %d", (int)dt);
    }
}

template <typename K>
static cudaError_t dm_load_kernel(cudaError_t err, K kernel, int smem) {
    cudaFuncAttributes fa;
    if (err == cudaSuccess) err = cudaFuncGetAttributes(&fa, kernel);
    if (err == cudaSuccess && smem > 0)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    return err;
}

template <typename T, int Q>
static cudaError_t dm_load_prefill_q(cudaError_t err, int smem) {
    err = dm_load_kernel(err, dm_prefill_gemm<T, 0, false, Q>, smem);
    err = dm_load_kernel(err, dm_prefill_gemm<T, 0, true, Q>, smem);
    err = dm_load_kernel(err, dm_prefill_gemm<T, 1, false, Q>, smem);
    return dm_load_kernel(err, dm_prefill_gemm<T, 1, true, Q>, smem);
}

/* Every prefill variant of T (4 weight formats x 2 GEMMs x 2 load paths) with the raised limit. */
template <typename T>
static cudaError_t dm_load_prefill(cudaError_t err, int smem) {
    err = dm_load_prefill_q<T, 0>(err, smem);
    err = dm_load_prefill_q<T, DYNMOE_WEIGHTS_FP8_BLOCK>(err, smem);
    err = dm_load_prefill_q<T, DYNMOE_WEIGHTS_MXFP4>(err, smem);
    return dm_load_prefill_q<T, DYNMOE_WEIGHTS_INT4>(err, smem);
}

/* Called once at context creation with the device current: loads every kernel of this file (CUDA
 * loads modules lazily; doing it here keeps a first forward call under graph capture free of it)
 * and raises the prefill kernels' dynamic shared memory limit to the most any E needs. */
extern "C" dynmoe_status dm_cuda_experts_load(void) {
    const int smem = DM_PREFILL_SMEM_MAX;
    int device = -1;
    cudaError_t err = cudaGetDevice(&device);
    err = dm_load_prefill<dm_bf16_t>(err, smem);
    err = dm_load_prefill<dm_f16_t>(err, smem);
    err = dm_load_kernel(err, dm_decode_gemm<dm_bf16_t, 0, 0>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_bf16_t, 0, 1>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_bf16_t, 0, 2>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_bf16_t, 0, 3>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_bf16_t, 1, 0>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_bf16_t, 1, 1>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_bf16_t, 1, 2>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_bf16_t, 1, 3>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f16_t, 0, 0>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f16_t, 0, 1>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f16_t, 0, 2>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f16_t, 0, 3>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f16_t, 1, 0>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f16_t, 1, 1>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f16_t, 1, 2>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f16_t, 1, 3>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f32_t, 0, 0>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f32_t, 0, 1>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f32_t, 0, 2>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f32_t, 0, 3>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f32_t, 1, 0>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f32_t, 1, 1>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f32_t, 1, 2>, 0);
    err = dm_load_kernel(err, dm_decode_gemm<dm_f32_t, 1, 3>, 0);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return dm_fail(DYNMOE_ERR_DEVICE, "cuda experts: loading kernels: %s (%s)", cudaGetErrorName(err),
                       cudaGetErrorString(err));
    }
    if (device >= 0 && device < DM_MAX_DEVICES) dm_prefill_smem_ready[device] = 1;
    return DYNMOE_OK;
}
