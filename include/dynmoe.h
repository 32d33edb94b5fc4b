/*
 * dynmoe.h — the public C API of dynmoe, the expert-routing part of a
 * Mixture-of-Experts layer whose cost follows the work that routing asked for.
 *
 *   x [T,H] -> route -> ids/weights [T,K] -> plan -> experts -> combine -> out [T,H]
 *
 * Conventions (all of them, once):
 *  - Every function returns dynmoe_status; on failure dynmoe_last_error() gives
 *    a thread-local message, and nothing was launched or written.
 *  - Pointers given to a context of backend CUDA are device pointers; for the
 *    CPU backend they are host pointers. `stream` is a cudaStream_t on CUDA
 *    (NULL = the legacy default stream) and ignored on the CPU.
 *  - Tensors are row-major and contiguous, 16-byte aligned. Shapes are written
 *    [T, K] in the comments: T tokens, E real experts, Z zero-computation
 *    experts, K = router.top_k, S slots per token in a routing table, H hidden,
 *    I intermediate (per expert).
 *  - A routing table is token-major: ids [T, S] int32, weights [T, S] fp32
 *    (vLLM's topk_ids / topk_weights). An empty slot is id -1, weight 0.
 *    Ids E..E+Z-1 are zero-computation experts.
 *  - Forward calls allocate nothing, never synchronise and never read device
 *    memory on the host: they can be captured into a CUDA graph.
 *  - T == 0 is valid and does nothing; null pointers are then allowed.
 *  - Contexts are independent and may be used from different threads. One
 *    context may be used from several streams (it holds no per-call state)
 *    unless a stats block is attached (see dynmoe_ctx_set_stats).
 */
#ifndef DYNMOE_H
#define DYNMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DYNMOE_API
#else
#define DYNMOE_API __attribute__((visibility("default")))
#endif

#define DYNMOE_VERSION_MAJOR 0
#define DYNMOE_VERSION_MINOR 3
#define DYNMOE_VERSION_PATCH 0
/* MAJOR*10000 + MINOR*100 + PATCH, the value dynmoe_version() returns. */
#define DYNMOE_VERSION \
    (DYNMOE_VERSION_MAJOR * 10000 + DYNMOE_VERSION_MINOR * 100 + DYNMOE_VERSION_PATCH)

/* Limits that the API checks (DESIGN.md section 3). */
#define DYNMOE_MAX_EXPERTS 1024     /* E + Z */
#define DYNMOE_MAX_TOP_K 64         /* K, and slots per token of a table */
#define DYNMOE_MAX_TOKENS (1 << 24) /* T; T * S must also stay below 2^31 */

/* ------------------------------------------------------------------------ */
/* Status and errors                                                        */
/* ------------------------------------------------------------------------ */

typedef enum dynmoe_status {
    DYNMOE_OK = 0,
    DYNMOE_ERR_INVALID_ARGUMENT = 1, /* a bad pointer, size, enum or shape */
    DYNMOE_ERR_UNSUPPORTED = 2,      /* valid, but not implemented on this backend */
    DYNMOE_ERR_WORKSPACE_TOO_SMALL = 3,
    DYNMOE_ERR_OUT_OF_MEMORY = 4,    /* only at context creation */
    DYNMOE_ERR_DEVICE = 5,           /* a CUDA/NCCL/MPI error; the message names it */
    DYNMOE_ERR_INTERNAL = 6,
    DYNMOE_STATUS_COUNT
} dynmoe_status;

/* "DYNMOE_OK", "DYNMOE_ERR_INVALID_ARGUMENT", ...; "unknown status" otherwise. */
DYNMOE_API const char *dynmoe_status_name(dynmoe_status status);
/* The detail of the last failure on this thread ("" if none). The string
 * stays valid until the next dynmoe call on this thread. */
DYNMOE_API const char *dynmoe_last_error(void);
DYNMOE_API int dynmoe_version(void);

/* ------------------------------------------------------------------------ */
/* Context                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum dynmoe_dtype { DYNMOE_F32 = 0, DYNMOE_F16 = 1, DYNMOE_BF16 = 2, DYNMOE_DTYPE_COUNT } dynmoe_dtype;
typedef enum dynmoe_backend { DYNMOE_BACKEND_CPU = 0, DYNMOE_BACKEND_CUDA = 1, DYNMOE_BACKEND_COUNT } dynmoe_backend;

typedef struct dynmoe_ctx dynmoe_ctx;

/* Creates a context. `device` is the CUDA device ordinal (ignored on the CPU).
 * DYNMOE_ERR_UNSUPPORTED when the library was built without CUDA,
 * DYNMOE_ERR_DEVICE when no such device exists. This is the only call that
 * allocates. */
DYNMOE_API dynmoe_status dynmoe_ctx_create(dynmoe_ctx **ctx, dynmoe_backend backend, int device);
/* NULL is allowed. */
DYNMOE_API void dynmoe_ctx_destroy(dynmoe_ctx *ctx);
DYNMOE_API dynmoe_backend dynmoe_ctx_backend(const dynmoe_ctx *ctx);
/* 1 when this build has the CUDA backend and a CUDA device is visible. */
DYNMOE_API int dynmoe_cuda_available(void);
/* The instruction path the CPU backend's expert kernels take now: "onednn"
 * (packed experts on oneDNN matmuls, the rest as avx512; the default on CPUs
 * with AMX when the build has oneDNN), "avx512" (AVX-512 F/BW/DQ/VL
 * panels for experts of 8 rows and more, the rest as avx2), "avx2" (AVX2 +
 * FMA + F16C) or "scalar" (plain C), the best this CPU has, lowered by the environment
 * variable DYNMOE_CPU_ISA (read at every call; DYNMOE_CPU_ISA=onednn also
 * selects oneDNN on an AVX2 CPU, where the build has it). NULL when
 * DYNMOE_CPU_ISA names no path; CPU forwards then fail with
 * DYNMOE_ERR_INVALID_ARGUMENT. */
DYNMOE_API const char *dynmoe_cpu_isa(void);

/* ------------------------------------------------------------------------ */
/* Router description (DESIGN.md section 2 is the specification)            */
/* ------------------------------------------------------------------------ */

typedef enum dynmoe_score {
    DYNMOE_SCORE_SOFTMAX = 0, /* softmax over all E+Z logits */
    DYNMOE_SCORE_SIGMOID = 1,
    DYNMOE_SCORE_NONE = 2,    /* the logits are already scores */
    DYNMOE_SCORE_COUNT
} dynmoe_score;

typedef enum dynmoe_select {
    DYNMOE_SELECT_TOPK = 0,      /* K largest choice values, ties -> lower id */
    DYNMOE_SELECT_TOP_P = 1,     /* sorted prefix while cumulative score before < top_p; 1..K */
    DYNMOE_SELECT_THRESHOLD = 2, /* every expert with score > threshold, at most K */
    DYNMOE_SELECT_COUNT
} dynmoe_select;

typedef enum dynmoe_norm {
    DYNMOE_NORM_NONE = 0,     /* w = s[id] */
    DYNMOE_NORM_SELECTED = 1, /* / sum over selected slots, before mask and zero drop */
    DYNMOE_NORM_KEPT = 2,     /* / sum over surviving real-expert slots */
    DYNMOE_NORM_UNIFORM = 3,  /* 1 / number of surviving slots */
    DYNMOE_NORM_COUNT
} dynmoe_norm;

typedef enum dynmoe_zero_kind {
    DYNMOE_ZERO_OUTPUT = 0,   /* contributes 0 (ZEDA, AdaMoE null experts) */
    DYNMOE_ZERO_IDENTITY = 1, /* contributes w * x (LongCat-Flash, MoE++ copy experts) */
    DYNMOE_ZERO_COUNT
} dynmoe_zero_kind;

/* The expert's activation. Gated ones combine a gate and an up row of w13
 * (2I rows per expert); non-gated ones apply to one row (w13 holds I rows). */
typedef enum dynmoe_act {
    DYNMOE_ACT_SWIGLU = 0,     /* silu(gate) * up */
    DYNMOE_ACT_GEGLU = 1,      /* gelu_erf(gate) * up */
    DYNMOE_ACT_GEGLU_TANH = 2, /* gelu_tanh(gate) * up (Gemma) */
    DYNMOE_ACT_SWIGLU_OAI = 3, /* (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g),
                                  g = min(gate, limit) (gpt-oss; vLLM swigluoai) */
    DYNMOE_ACT_RELU2 = 4,      /* non-gated: relu(h)^2 (Nemotron-H; vLLM relu2_no_mul) */
    DYNMOE_ACT_SILU = 5,       /* non-gated: silu(h) */
    DYNMOE_ACT_COUNT
} dynmoe_act;

/* How w13 and w2 store their values. Weight-only: x, out and the
 * accumulation stay in experts.dtype / fp32. For a matrix [E, N, K] (w13:
 * N = rows of w13, K = H; w2: N = H, K = I):
 *  PLAIN      experts.dtype values [E, N, K].
 *  FP8_BLOCK  float8 e4m3fn bytes [E, N, K]; scale fp32 [E, ceil(N/128),
 *             ceil(K/128)]; w = e4m3(q) * scale[n/128][k/128] (DeepSeek-V3's
 *             weight_scale_inv with weight_block_size [128, 128]).
 *  MXFP4      e2m1 values two per byte, element k in byte k/2, even k in the
 *             low nibble: [E, N, K/2] bytes (gpt-oss's *_blocks [E, N, K/32,
 *             16]); scale ue8m0 bytes [E, N, K/32], 2^(s-127); K % 32 == 0.
 *  INT4       unsigned 4-bit values packed as MXFP4 (row stride ceil(K/2)
 *             bytes); per group of group_size along K a scale (IEEE fp16)
 *             [E, N, ceil(K/g)] and a zero point (uint8 0..15) [E, N,
 *             ceil(K/g)] or NULL for 8: w = (q - zero) * scale. The last group
 *             of a row may be short (K % g != 0). Converters from AWQ and GPTQ
 *             tensors: python_ext dynmoe.quant.
 * Scales and zeros live with the weights (device memory on CUDA), 16-byte
 * aligned. A NaN or Inf in a scale or an fp8 NaN code is not sanitised: it
 * reaches the outputs of the tokens routed to that expert. A scale of 0 gives
 * zero weights. */
typedef enum dynmoe_weight_format {
    DYNMOE_WEIGHTS_PLAIN = 0,
    DYNMOE_WEIGHTS_FP8_BLOCK = 1,
    DYNMOE_WEIGHTS_MXFP4 = 2,
    DYNMOE_WEIGHTS_INT4 = 3,
    DYNMOE_WEIGHTS_COUNT
} dynmoe_weight_format;

/* Where the gate and up rows of a gated expert sit in w13 [E, 2I, H]. */
typedef enum dynmoe_gate_up {
    DYNMOE_GATE_UP_BLOCKED = 0,     /* rows 0..I-1 gate, I..2I-1 up (vLLM, most HF models) */
    DYNMOE_GATE_UP_INTERLEAVED = 1, /* row 2j gate j, row 2j+1 up j (gpt-oss) */
    DYNMOE_GATE_UP_COUNT
} dynmoe_gate_up;

/* Fields may be added at the end; always start from DYNMOE_ROUTER_INIT. */
typedef struct dynmoe_router {
    size_t struct_size;         /* sizeof(dynmoe_router), set by the initializer */
    int32_t num_experts;        /* E real experts, >= 1 */
    int32_t num_zero_experts;   /* Z, ids E..E+Z-1 */
    dynmoe_zero_kind zero_kind;
    int32_t top_k;              /* K, 1..min(E+Z, 64) */
    dynmoe_score score;
    dynmoe_select select;
    float top_p;                /* TOP_P: in (0, 1] */
    float threshold;            /* THRESHOLD: on the unbiased score */
    int32_t num_groups;         /* DeepSeek-V3 group limit: G (0 = off); G divides E */
    int32_t topk_groups;        /* groups kept, 1..G */
    dynmoe_norm norm;
    float scale;                /* routed scaling factor, applied after norm */
    int32_t num_tasks;          /* CaRE task routers R (dynmoe_route_tasks only) */
    int32_t top_tasks;          /* tasks picked per token, 1..R */
    /* ---- since 0.2 (a caller built against 0.1 passes the smaller struct_size;
     * the fields below then take their defaults) ---- */
    /* Llama-4 (vLLM apply_router_weight_on_input): a slot's routing weight
     * scales the expert's input, out[t] = sum_k FFN_k(w_k * x[t]); identity zero
     * experts still add w * x[t]. Any number of slots per token. 0 or 1. */
    int32_t weight_on_input;
    /* [E+Z] fp32 or NULL (memory of the context's backend, 16-byte aligned):
     * a learned per-expert scale of the routing weight, w *= expert_scale[id],
     * applied after norm and before scale (Gemma-4's per_expert_scale). Read
     * by dynmoe_route, dynmoe_route_tasks and dynmoe_moe_forward; a caller's
     * table in dynmoe_experts_forward is taken as is. */
    const float *expert_scale;
} dynmoe_router;

/* softmax, top-K, norm NONE, scale 1, no zero experts, no groups, no tasks,
 * weight on the output, no expert scale. Set num_experts and top_k after it. */
#define DYNMOE_ROUTER_INIT                                                             \
    {                                                                                  \
        sizeof(dynmoe_router), 0, 0, DYNMOE_ZERO_OUTPUT, 0, DYNMOE_SCORE_SOFTMAX,      \
            DYNMOE_SELECT_TOPK, 1.0f, 0.0f, 0, 0, DYNMOE_NORM_NONE, 1.0f, 0, 0, 0, NULL \
    }

/* Expert weights in vLLM's FusedMoE layout, passed without a copy.
 * w13 [E, 2*I, H] for gated activations: rows 0..I-1 of each expert are the
 * gate, rows I..2I-1 the up projection (gate_up BLOCKED), or gate and up rows
 * alternate (INTERLEAVED); [E, I, H] for non-gated ones. w2 [E, H, I]. All of
 * `dtype`, which x and out share. Fields may be added at the end; always start
 * from DYNMOE_EXPERTS_INIT.
 *
 * One expert's FFN of a row x:  h = w13_e . x + b13_e   (2I or I values)
 *                               a = act(h)              (I values)
 *                               y = w2_e . a + b2_e     (H values) */
typedef struct dynmoe_experts {
    size_t struct_size;  /* sizeof(dynmoe_experts) */
    int32_t num_experts; /* E, equals router.num_experts */
    int32_t hidden;      /* H */
    int32_t inter;       /* I */
    dynmoe_dtype dtype;
    dynmoe_act act;
    const void *w13;
    const void *w2;
    /* ---- since 0.2 (a caller built against 0.1 passes the smaller struct_size;
     * the fields below then take their defaults) ---- */
    const void *b13;        /* [E, 2I] (gated, in w13's row order) or [E, I], dtype; NULL = none */
    const void *b2;         /* [E, H], dtype; NULL = none */
    dynmoe_gate_up gate_up; /* gated activations only; BLOCKED for non-gated */
    float alpha;            /* SWIGLU_OAI: sigmoid slope, finite (gpt-oss 1.702) */
    float limit;            /* SWIGLU_OAI: clamp, finite and > 0 (gpt-oss 7.0) */
    dynmoe_weight_format weight_format; /* PLAIN: w13/w2 of dtype */
    const void *w13_scale, *w2_scale;   /* FP8_BLOCK, MXFP4, INT4 (see dynmoe_weight_format) */
    const void *w13_zero, *w2_zero;     /* INT4 zero points or NULL (zero point 8) */
    int32_t group_size;  /* INT4: 32, 64 or 128; FP8_BLOCK: 0 or 128; MXFP4: 0 or 32; PLAIN: 0 */
    /* ---- since 0.3 (0.1 and 0.2 callers pass a smaller struct_size: NULL) ---- */
    /* Pre-packed weights of these same experts (dynmoe_experts_pack) or NULL.
     * w13 and w2 stay required and must stay alive: the paths the packing
     * does not cover (decode rows, other instruction paths) still read them. */
    const struct dynmoe_packed_experts *packed;
} dynmoe_experts;

#define DYNMOE_EXPERTS_INIT                                                              \
    {                                                                                    \
        sizeof(dynmoe_experts), 0, 0, 0, DYNMOE_F32, DYNMOE_ACT_SWIGLU, NULL, NULL, NULL, \
            NULL, DYNMOE_GATE_UP_BLOCKED, 1.702f, 7.0f, DYNMOE_WEIGHTS_PLAIN, NULL, NULL,  \
            NULL, NULL, 0, NULL                                                           \
    }

/* ---- pre-packed CPU experts (since 0.3; docs/cpu.md "Packed experts and oneDNN") ----
 * dynmoe_experts_pack copies PLAIN f32/bf16/f16 expert weights once, at load
 * time, into the layout oneDNN's matmul asks for (reordered once; bf16/f16
 * weights are widened to f32 where this CPU's oneDNN has no bf16/f16 matmul).
 * Pass the result as experts.packed with the same experts description: a
 * description that differs from the packed one (shapes, dtype, act, gate_up,
 * weight pointers) fails the forward with DYNMOE_ERR_INVALID_ARGUMENT. CPU
 * forwards on the "onednn" path (dynmoe_cpu_isa) run experts with at least
 * dynmoe_packed_experts_min_rows rows on the packed weights (oneDNN's
 * matmuls) and everything else on dynmoe's kernels over w13/w2. One forward at a time
 * may use a packed object (it keeps per-shape oneDNN handles). An exception
 * to "forward calls allocate nothing": oneDNN's matmul executions allocate
 * (a few heap calls each, docs/cpu.md); dynmoe's own part does not. CUDA
 * contexts refuse packed experts with DYNMOE_ERR_UNSUPPORTED. Without oneDNN
 * in the build, dynmoe_experts_pack returns DYNMOE_ERR_UNSUPPORTED. */
typedef struct dynmoe_packed_experts dynmoe_packed_experts;
/* The fewest rows of an expert that run packed where oneDNN's matmuls are
 * not AMX's (dynmoe_packed_experts_min_rows). */
#define DYNMOE_PACKED_MIN_ROWS 16

/* Allocates *out (load time). ctx must be a CPU context; experts as for
 * dynmoe_experts_forward (weights present), experts->packed NULL. */
DYNMOE_API dynmoe_status dynmoe_experts_pack(dynmoe_ctx *ctx, const dynmoe_experts *experts,
                                             dynmoe_packed_experts **out);
/* NULL is allowed. */
DYNMOE_API void dynmoe_packed_experts_destroy(dynmoe_packed_experts *p);
/* Bytes of the packed weights (0 for NULL). */
DYNMOE_API size_t dynmoe_packed_experts_bytes(const dynmoe_packed_experts *p);
/* What the packing runs: "onednn <version> <compute dtype> gemm1 <impl>
 * gemm2 <impl>" with oneDNN's impl_info strings; "" for NULL. */
DYNMOE_API const char *dynmoe_packed_experts_path(const dynmoe_packed_experts *p);
/* The fewest rows of an expert that run on p (since 0.3): 2 where both
 * matmuls are AMX kernels (on the AMX Xeon the 16-row AMX tile beat dynmoe's
 * decode kernels from 2 rows, and lost at 1: docs/cpu.md), else
 * DYNMOE_PACKED_MIN_ROWS; 0 for NULL. */
DYNMOE_API int32_t dynmoe_packed_experts_min_rows(const dynmoe_packed_experts *p);

/* ------------------------------------------------------------------------ */
/* Stats: what an operator watches for load imbalance                      */
/* ------------------------------------------------------------------------ */

/* Counters of the last call on a context, written by the device (CPU backend:
 * host memory) without a sync. Each call overwrites the fields of the stages
 * it ran: route fills tokens, nonfinite_rows, empty_slots, zero_expert_slots
 * and invalid_ids (0: routing writes no invalid id); the plan fills all but
 * nonfinite_rows and overflow_slots; dynmoe_moe_forward fills all. The per-expert token counts
 * are the plan's expert_counts. */
typedef struct dynmoe_stats {
    int64_t tokens;            /* T of the call */
    int64_t routed_slots;      /* slots sent to a real expert = rows of the expert GEMMs */
    int64_t empty_slots;       /* id -1: masked, cut by top-p/threshold, non-finite */
    int64_t zero_expert_slots; /* ids E..E+Z-1 */
    int64_t invalid_ids;       /* ids outside [-1, E+Z) in a table: skipped */
    int64_t nonfinite_rows;    /* tokens whose logits had no finite value (route only) */
    int64_t active_experts;    /* experts with at least one row */
    int64_t max_expert_rows;   /* rows of the busiest expert */
    int64_t overflow_slots;    /* expert parallel, capacity mode: slots dropped */
} dynmoe_stats;

/* Attaches a stats block (device memory on CUDA, host memory on the CPU) that
 * later calls on this context fill; NULL detaches. With stats attached, calls
 * on one context must not run concurrently on different streams. */
DYNMOE_API dynmoe_status dynmoe_ctx_set_stats(dynmoe_ctx *ctx, dynmoe_stats *stats);

/* ------------------------------------------------------------------------ */
/* Routing                                                                  */
/* ------------------------------------------------------------------------ */

/* Routes T tokens.
 *  logits      [T, E+Z] of logits_dtype
 *  bias        [E+Z] fp32 or NULL: selection bias (choose by s + b, weigh by s)
 *  mask_logits [T, E] of logits_dtype or NULL: BEAM mask, a real-expert slot
 *              survives only if its mask logit is > 0
 *  ids, weights [T, K] outputs.
 * Non-finite logits are never chosen and take no part in the softmax; a token
 * with no finite logit gets only empty slots. */
DYNMOE_API dynmoe_status dynmoe_route(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T,
                                      const void *logits, dynmoe_dtype logits_dtype,
                                      const float *bias, const void *mask_logits,
                                      int32_t *ids, float *weights, void *stream);

/* CaRE bi-level routing: per token the router.top_tasks largest task logits
 * pick tasks; for each picked task r the expert logits W_r x (W_r =
 * task_weights[r], [E+Z, H]) are routed with the stages of `router`; picked
 * task i writes slots [i*K, (i+1)*K). An expert chosen by several tasks keeps
 * its first slot with the summed weight; the later slots become empty.
 *  x            [T, H] of x_dtype
 *  task_logits  [T, R] fp32
 *  task_weights [R, E+Z, H] of x_dtype
 *  bias         [E+Z] fp32 or NULL
 *  ids, weights [T, top_tasks*K] outputs. */
DYNMOE_API dynmoe_status dynmoe_route_tasks(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T,
                                            const void *x, dynmoe_dtype x_dtype, int32_t hidden,
                                            const float *task_logits, const void *task_weights,
                                            const float *bias, int32_t *ids, float *weights,
                                            void *stream);

/* ------------------------------------------------------------------------ */
/* Plan: the expert-major layout of a routing table                         */
/* ------------------------------------------------------------------------ */

/* Pointers into the caller's workspace (device memory on CUDA). A slot is
 * numbered t*S + k. Only slots whose id is a real expert (0 <= id < E) enter
 * the plan; the number of them, R = expert_offsets[E], is the number of rows.
 * Order is stable: by (expert, token, slot). No padding rows. */
typedef struct dynmoe_plan {
    int32_t num_experts;     /* E */
    int64_t num_slots;       /* T * S */
    int32_t *expert_counts;  /* [E] rows per expert */
    int32_t *expert_offsets; /* [E+1] exclusive prefix of expert_counts */
    int32_t *sorted_slots;   /* [T*S] row r -> slot; entries >= R are unspecified */
    int32_t *slot_rows;      /* [T*S] slot -> row, -1 for slots that are not rows */
    int32_t *active_experts; /* [E] experts with rows, ascending; entries >= num_active unspecified */
    int32_t *num_active;     /* [1] */
} dynmoe_plan;

/* Bytes dynmoe_plan_build needs for T tokens with S slots each. */
DYNMOE_API size_t dynmoe_plan_workspace_size(const dynmoe_router *router, int64_t T, int32_t slots);

/* Builds the plan of a routing table ids [T, S] (S = `slots`). Ids outside
 * [-1, E+Z) are skipped and counted. `plan` is written on the host with
 * pointers into `workspace`; their contents are written on `stream`. */
DYNMOE_API dynmoe_status dynmoe_plan_build(dynmoe_ctx *ctx, const dynmoe_router *router, int64_t T,
                                           const int32_t *ids, int32_t slots, void *workspace,
                                           size_t workspace_bytes, dynmoe_plan *plan, void *stream);

/* ------------------------------------------------------------------------ */
/* Experts and the whole layer                                              */
/* ------------------------------------------------------------------------ */

/* Workspace bytes for dynmoe_experts_forward and dynmoe_moe_forward with up to
 * T tokens (valid for every backend). Slots per token: router.top_k, times
 * router.top_tasks when task routers are used. 0 on invalid arguments.
 * The size depends on the router, the experts' shapes and T only: it stays
 * valid whatever the OpenMP thread count is at call time (omp_set_num_threads,
 * torch.set_num_threads); the CPU backend sizes its scratch for the machine's
 * cores, counted once per process, and uses at most that many threads. */
DYNMOE_API size_t dynmoe_workspace_size(const dynmoe_router *router, const dynmoe_experts *experts,
                                        int64_t T);

/* Workspace bytes for dynmoe_experts_forward over a caller's table of T tokens
 * with `slots` slots each (which may differ from the router's K). 0 on
 * invalid arguments. */
DYNMOE_API size_t dynmoe_experts_workspace_size(const dynmoe_router *router, const dynmoe_experts *experts,
                                                int64_t T, int32_t slots);

/* Runs the experts over a routing table and combines:
 *   out[t] = sum_{k: real} w[t,k] * FFN_{id}(x[t]) + sum_{k: identity zero} w[t,k] * x[t]
 * accumulated in fp32 in slot order.
 *  x [T, H], out [T, H] of experts->dtype; ids, weights [T, slots]. A table is
 * taken literally: an id repeated in one token's slots counts once per slot;
 * ids outside [-1, E+Z) are skipped. `out` may not alias x. */
DYNMOE_API dynmoe_status dynmoe_experts_forward(dynmoe_ctx *ctx, const dynmoe_router *router,
                                                const dynmoe_experts *experts, int64_t T,
                                                const void *x, const int32_t *ids,
                                                const float *weights, int32_t slots, void *out,
                                                void *workspace, size_t workspace_bytes,
                                                void *stream);

/* route -> plan -> experts -> combine in one call. Arguments as in
 * dynmoe_route and dynmoe_experts_forward. */
DYNMOE_API dynmoe_status dynmoe_moe_forward(dynmoe_ctx *ctx, const dynmoe_router *router,
                                            const dynmoe_experts *experts, int64_t T, const void *x,
                                            const void *logits, dynmoe_dtype logits_dtype,
                                            const float *bias, const void *mask_logits, void *out,
                                            void *workspace, size_t workspace_bytes, void *stream);

/* ---- expert parallelism (csrc/ep) ---- */

/* Expert parallelism: the E real experts of a layer are sharded over the ranks
 * of an existing communicator (MPI_Comm for the CPU backend, ncclComm_t for
 * the CUDA backend). dynmoe_ep_moe_forward on every rank: route this rank's
 * tokens locally; send each slot's x row to the rank that holds the slot's
 * expert; run this rank's experts on the rows that arrived; send the fp32
 * results back; combine in slot order with the original weights. Zero-expert
 * slots, empty slots and dropped slots never leave their rank.
 *
 * Placement. config.expert_rank [E, max_replicas] (host memory, copied at
 * creation) lists for each expert the ranks that hold a copy of its weights;
 * unused entries are -1, every expert has at least one rank, no rank twice.
 * NULL gives the static contiguous map: rank r holds experts
 * [floor(r*E/R), floor((r+1)*E/R)). With replicas (redundant experts), a slot
 * of local token t for expert e stays on this rank when it holds a copy, else
 * goes to entry (t mod n_e) of e's list (n_e copies): a fixed rule, so the
 * result does not depend on the replicas, only the traffic does.
 *
 * Local experts. The experts a rank holds, ascending by global id, are its
 * local experts 0..L-1 (dynmoe_ep_local_experts lists their global ids). The
 * `local_experts` passed to the ep calls describes only them: num_experts = L,
 * w13 [L, 2I, H], w2 [L, H, I]; a rank with L = 0 passes num_experts = 0 and
 * NULL weights. The router stays global: num_experts = E (+ zero experts).
 *
 * Collectives. dynmoe_ep_create_mpi and every dynmoe_ep_moe_forward are
 * collective: all ranks call them in the same order, with the same config,
 * router, mode and local expert shapes (T may differ per rank, 0 included).
 * Each rank checks its own arguments, then the ranks agree before any data
 * moves: one small all-reduce of every rank's check result and of a key
 * (mode, hidden, inter, dtype, act, a fingerprint of the router and of the
 * config). If any rank failed, every rank returns that rank's status with a
 * message "rank r of R: <its message>" (r the lowest failing rank); if the
 * keys differ, every rank returns DYNMOE_ERR_INVALID_ARGUMENT naming what
 * differs. So a bad argument on one rank fails everywhere instead of leaving
 * the others blocked. Where: MPI at create and at every forward (18 int64
 * words); NCCL at every exact-mode forward, as its first collective
 * plus one stream sync (exact mode syncs anyway). NCCL capacity mode stays
 * free of host syncs and graph-capturable, so it cannot agree: its checks are
 * local, and a rank that fails them returns without enqueueing anything
 * while the others' streams wait at the first exchange (as with NCCL itself);
 * run an exact-mode forward with the same router and experts first (e.g.
 * during warm-up, before capture) to check the ranks agree. Only a NULL ep
 * or communicator, or (NCCL) a current device other than the communicator's,
 * keeps a rank from taking part. Stats attached to the context are filled as in
 * dynmoe_moe_forward for this rank's tokens, except: routed_slots counts the
 * slots that travelled (this rank's tokens), overflow_slots those dropped,
 * active_experts / max_expert_rows describe this rank's local experts.
 * A handle runs one forward at a time (it keeps the per-peer counts). */
typedef struct dynmoe_ep dynmoe_ep;

typedef enum dynmoe_ep_mode {
    /* Prefill. Per-rank-pair counts are exchanged first (all-to-all), then
     * the rows (all-to-all-v); nothing is dropped. On CUDA the counts are
     * copied to the host: one stream synchronisation per call, so this mode
     * is not graph-capturable. */
    DYNMOE_EP_EXACT = 0,
    /* Decode. Every (source, destination) rank pair, self included, carries
     * a fixed config.capacity slots; no counts exchange, no host sync,
     * graph-capturable. For each destination the source's slots travel in
     * (token, slot) order; those beyond the capacity are dropped exactly as
     * if their id were -1 (contributing 0) and counted in
     * stats.overflow_slots: reported, never silent. */
    DYNMOE_EP_CAPACITY = 1,
    DYNMOE_EP_MODE_COUNT
} dynmoe_ep_mode;

/* Fields may be added at the end; always start from DYNMOE_EP_CONFIG_INIT. */
typedef struct dynmoe_ep_config {
    size_t struct_size;         /* sizeof(dynmoe_ep_config), set by the initializer */
    int32_t num_experts;        /* E real experts of the layer, over all ranks */
    const int32_t *expert_rank; /* [E, max_replicas] host, or NULL: contiguous map */
    int32_t max_replicas;       /* columns of expert_rank, 1..R */
    int64_t max_tokens;         /* the largest T any rank passes to a forward, >= 1 */
    int32_t capacity;           /* CAPACITY mode: slots per rank pair; 0 = lossless
                                   (max_tokens * min(K, most experts on one rank)) */
    int64_t max_recv_rows;      /* EXACT mode: rows one rank may receive per call, which
                                   sizes its workspace; 0 = the worst case,
                                   R * max_tokens * min(K, L). Set on every rank or on
                                   none. When set, one more small
                                   collective checks it after the counts exchange: if any
                                   rank would receive more, every rank returns
                                   DYNMOE_ERR_WORKSPACE_TOO_SMALL and moves no rows. */
} dynmoe_ep_config;

#define DYNMOE_EP_CONFIG_INIT { sizeof(dynmoe_ep_config), 0, NULL, 1, 0, 0, 0 }

/* Creates the communicator from `mpi_comm`, a pointer to an MPI_Comm, which
 * is duplicated (the caller keeps its own). Collective; MPI must be
 * initialised. DYNMOE_ERR_UNSUPPORTED when built without MPI. */
DYNMOE_API dynmoe_status dynmoe_ep_create_mpi(dynmoe_ep **ep, const void *mpi_comm,
                                              const dynmoe_ep_config *config);
/* Creates the communicator from `nccl_comm`, a pointer to an ncclComm_t on
 * the current CUDA device, used as is (not duplicated, not destroyed: it must
 * outlive the handle); transfers are enqueued on the stream of each forward.
 * Allocates the placement tables on the device. Not collective.
 * DYNMOE_ERR_UNSUPPORTED when built without NCCL. */
DYNMOE_API dynmoe_status dynmoe_ep_create_nccl(dynmoe_ep **ep, const void *nccl_comm,
                                               const dynmoe_ep_config *config);
/* NULL is allowed. MPI: collective (it frees the duplicated communicator);
 * call it before MPI_Finalize. NCCL: not collective. */
DYNMOE_API void dynmoe_ep_destroy(dynmoe_ep *ep);
/* This rank, the number of ranks, and L, the number of local experts. Any
 * output pointer may be NULL. */
DYNMOE_API dynmoe_status dynmoe_ep_info(const dynmoe_ep *ep, int32_t *rank, int32_t *num_ranks,
                                        int32_t *num_local_experts);
/* global_ids [L] (host): the global id of each local expert, ascending. */
DYNMOE_API dynmoe_status dynmoe_ep_local_experts(const dynmoe_ep *ep, int32_t *global_ids);

/* Workspace bytes of dynmoe_ep_moe_forward on this rank (host memory for MPI,
 * device memory for NCCL), for T up to config.max_tokens. Exact mode sizes
 * the receive side for config.max_recv_rows rows, or for the worst case,
 * R * max_tokens * min(K, L) rows, when that is 0.
 * 0 on invalid arguments (dynmoe_last_error says why). */
DYNMOE_API size_t dynmoe_ep_workspace_size(const dynmoe_ep *ep, const dynmoe_router *router,
                                           const dynmoe_experts *local_experts,
                                           dynmoe_ep_mode mode);

/* The sharded layer: out [T, H] = dynmoe_moe_forward of this rank's tokens
 * with the experts of all ranks (minus the slots dropped in capacity mode).
 * Arguments as in dynmoe_moe_forward, except `local_experts` (this rank's
 * experts only, see above) and `mode`. ctx's backend must match the
 * transport (CPU for MPI, CUDA for NCCL). Collective. */
DYNMOE_API dynmoe_status dynmoe_ep_moe_forward(dynmoe_ep *ep, dynmoe_ctx *ctx,
                                               const dynmoe_router *router,
                                               const dynmoe_experts *local_experts, int64_t T,
                                               const void *x, const void *logits,
                                               dynmoe_dtype logits_dtype, const float *bias,
                                               const void *mask_logits, void *out,
                                               void *workspace, size_t workspace_bytes,
                                               dynmoe_ep_mode mode, void *stream);

/* Host wall-clock seconds of the phases of this rank's last forward:
 * [0] route (and building the send lists), [1] exchange (the all-to-alls,
 * including the wait for other ranks), [2] local experts, [3] combine. Exact
 * on the MPI path; on CUDA only the host enqueue time (use Nsight for device
 * times). For benchmarks and load-imbalance checks. */
DYNMOE_API dynmoe_status dynmoe_ep_last_times(const dynmoe_ep *ep, double seconds[4]);

/* ---- end expert parallelism ---- */

#ifdef __cplusplus
}
#endif

#endif /* DYNMOE_H */
