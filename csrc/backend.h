/*
 * backend.h — the one interface between the API layer (csrc/api.c) and the
 * backends (csrc/cpu/, cuda/). Plain C, no CUDA types.
 *
 * The API layer validates every argument once; backend functions trust their
 * arguments (non-null pointers when T > 0, sizes in range, workspace laid out
 * by dm_workspace_layout) and only decide how to parallelise.
 */
#ifndef DYNMOE_BACKEND_H
#define DYNMOE_BACKEND_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "dynmoe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sets the thread-local message and returns `status`. */
dynmoe_status dm_fail(dynmoe_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void dm_clear_error(void);

/* ---- arguments of each stage (validated) ---- */

typedef struct dm_route_args {
    dynmoe_router router;
    int64_t T;
    const void *logits; /* [T, E+Z] */
    dynmoe_dtype logits_dtype;
    const float *bias;       /* [E+Z] or NULL */
    const void *mask_logits; /* [T, E] or NULL */
    int32_t *ids;            /* [T, K] */
    float *weights;          /* [T, K] */
    dynmoe_stats *stats;     /* or NULL: fill tokens, nonfinite_rows, empty/zero slots, invalid_ids = 0 */
} dm_route_args;

typedef struct dm_route_tasks_args {
    dynmoe_router router;
    int64_t T;
    const void *x; /* [T, H] */
    dynmoe_dtype x_dtype;
    int32_t hidden;
    const float *task_logits; /* [T, R] */
    const void *task_weights; /* [R, E+Z, H] of x_dtype */
    const float *bias;        /* [E+Z] or NULL */
    int32_t *ids;             /* [T, top_tasks*K] */
    float *weights;
    dynmoe_stats *stats;
} dm_route_tasks_args;

typedef struct dm_plan_args {
    int32_t num_experts;      /* E */
    int32_t num_zero_experts; /* Z */
    int64_t T;
    int32_t slots;       /* S */
    const int32_t *ids;  /* [T, S] */
    dynmoe_plan plan;    /* pointers laid out in the workspace */
    void *temp;          /* plan temporaries in the workspace, temp_bytes */
    size_t temp_bytes;
    dynmoe_stats *stats; /* or NULL: fill all but nonfinite_rows, overflow_slots */
} dm_plan_args;

typedef struct dm_experts_args {
    dynmoe_router router;
    dynmoe_experts experts;
    int64_t T;
    const void *x;         /* [T, H] */
    const int32_t *ids;    /* [T, S] */
    const float *weights;  /* [T, S] */
    int32_t slots;         /* S */
    dynmoe_plan plan;      /* built */
    void *rows_h;          /* scratch, >= [T*S, 2I] fp32 bytes */
    void *rows_y;          /* expert output rows, >= [T*S, H] fp32 bytes */
    void *scratch;         /* backend scratch (CPU: weight tiles), scratch_bytes */
    size_t scratch_bytes;
    void *out;             /* [T, H] */
} dm_experts_args;

typedef struct dm_backend_ops {
    dynmoe_status (*route)(dynmoe_ctx *ctx, const dm_route_args *a, void *stream);
    dynmoe_status (*route_tasks)(dynmoe_ctx *ctx, const dm_route_tasks_args *a, void *stream);
    dynmoe_status (*plan)(dynmoe_ctx *ctx, const dm_plan_args *a, void *stream);
    /* every plan row r: rows_y[r] = FFN_e(x[token of sorted_slots[r]]) */
    dynmoe_status (*experts)(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);
    /* out[t] = sum over slots of w * (rows_y[row] | x[t] for identity zero experts) */
    dynmoe_status (*combine)(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);
    /* DYNMOE_OK when this backend's expert kernels implement every option of
     * (r, x), else DYNMOE_ERR_UNSUPPORTED with a message naming fn and the option */
    dynmoe_status (*supports)(const char *fn, const dynmoe_router *r, const dynmoe_experts *x);
    void (*destroy)(dynmoe_ctx *ctx); /* frees ctx->impl */
} dm_backend_ops;

struct dynmoe_ctx {
    dynmoe_backend backend;
    int device;
    const dm_backend_ops *ops;
    dynmoe_stats *stats; /* attached stats block or NULL */
    void *impl;          /* backend state */
};

extern const dm_backend_ops dm_cpu_ops;
/* Built with CUDA: fills ctx->ops and ctx->impl for `device`. Without CUDA
 * (csrc/cuda_stub.c) returns DYNMOE_ERR_UNSUPPORTED. */
dynmoe_status dm_cuda_ctx_init(dynmoe_ctx *ctx, int device);
int dm_cuda_device_count(void);

/* ---- argument checks shared by the API entry points (api.c, ep/ep.c) ---- */

/* Each returns DYNMOE_OK or DYNMOE_ERR_INVALID_ARGUMENT with a message naming `fn`.
 * The struct checks accept the struct_size of this release and of 0.1. */
dynmoe_status dm_check_router(const char *fn, const dynmoe_router *r);
/* A tensor pointer: non-null when there is data (T > 0), 16-byte aligned. */
dynmoe_status dm_check_tensor(const char *fn, const char *name, const void *p, int64_t T);
/* An expert description `name` that must hold `num_experts` experts; its
 * weights may be NULL only when T == 0 or num_experts == 0. */
dynmoe_status dm_check_experts(const char *fn, const char *name, const dynmoe_experts *x,
                               int32_t num_experts, int64_t T);
/* DYNMOE_ERR_UNSUPPORTED for declared options ctx's expert kernels lack
 * (ctx->ops->supports; full structs). */
dynmoe_status dm_check_implemented(const char *fn, const dynmoe_ctx *ctx, const dynmoe_router *r,
                                   const dynmoe_experts *x);
/* A checked struct as this release knows it: a shorter (older) one with the
 * newer fields at their initializer defaults. */
dynmoe_router dm_router_full(const dynmoe_router *r);
dynmoe_experts dm_experts_full(const dynmoe_experts *x);

/* ---- workspace layout (one for every backend) ---- */

#define DM_WORKSPACE_ALIGN 256
/* The most expert rows cpu/ffn_panels.c packs at once (one weight pass each). */
#define DM_CPU_PANEL_ROWS 256
/* Rows the CPU panel kernels pack at once for a call of `rows` = T * S slots:
 * min(rows, PANEL_ROWS) rounded up to a whole 8-row panel. */
static inline size_t dm_cpu_panel_capacity(size_t rows) {
    return ((rows < DM_CPU_PANEL_ROWS ? rows : DM_CPU_PANEL_ROWS) + 7) / 8 * 8;
}
/* Floats of one CPU scratch slice for hidden, inter and `rows` = T * S:
 * packed rows (capacity x H), packed activations (capacity x I) and 12
 * widened weight rows (cpu.h: DM_CPU_WBUF_ROWS). Rounded to 64. */
static inline size_t dm_cpu_scratch_floats(size_t hidden, size_t inter, size_t rows) {
    const size_t mx = hidden > inter ? hidden : inter;
    return (dm_cpu_panel_capacity(rows) * (hidden + inter) + 12 * mx + 63) / 64 * 64;
}
/* Slices in a CPU scratch: the machine's cores (omp_get_num_procs() at the
 * first call, then fixed for the process), never the OpenMP thread count, so
 * that a workspace stays valid when the thread count changes; a call uses at
 * most this many threads. */
int dm_cpu_scratch_slices(void);
/* Floats at the head of a CPU scratch: the work-item table of cpu/experts.c
 * (first item of each active expert, E + 1 int32). Rounded to 64. */
static inline size_t dm_cpu_item_table_floats(size_t num_experts) { return (num_experts + 1 + 63) / 64 * 64; }

/* Floats the CPU scratch adds, after its slices, for the packed experts
 * x->packed (cpu/packed.c) with `rows` = T * S; 0 when x->packed is NULL. */
size_t dm_packed_scratch_floats(const dynmoe_experts *x, size_t rows);

typedef struct dm_workspace_layout {
    /* byte offsets from the workspace base */
    size_t ids, weights;                 /* [T, S] route output (moe_forward) */
    size_t counts, offsets, sorted_slots, slot_rows, active, num_active; /* plan */
    size_t plan_temp, plan_temp_bytes;   /* device sort/scan temporaries of the plan */
    size_t rows_h;                       /* [T*S, 2I] fp32 */
    size_t rows_y;                       /* [T*S, H] fp32 */
    size_t scratch;                      /* backend scratch */
    size_t scratch_bytes;
    size_t plan_end; /* bytes of the plan part alone (starts at `counts`) */
    size_t total;
} dm_workspace_layout;

/* Lays out regions one after another, each DM_WORKSPACE_ALIGN-aligned; ok
 * turns 0 on size overflow. */
typedef struct dm_layout_cursor {
    size_t at;
    int ok;
} dm_layout_cursor;
/* Byte offset of a new region of count * elem bytes. */
size_t dm_layout_region(dm_layout_cursor *c, size_t count, size_t elem);

/* Slots per token of a router: K, or K * top_tasks with task routers
 * (computed in 64 bits and clamped to int32; meaningful on a checked router). */
int32_t dm_router_slots(const dynmoe_router *r);
/* Lays out the workspace. experts == NULL lays out only the plan (from offset 0).
 * Returns 0 on size overflow. */
int dm_workspace_layout_of(const dynmoe_router *r, const dynmoe_experts *experts, int64_t T,
                           int32_t slots, dm_workspace_layout *out);
/* The plan's pointers inside a workspace laid out as `l`. */
dynmoe_plan dm_plan_pointers(void *workspace, const dm_workspace_layout *l, int32_t num_experts,
                             int64_t num_slots);

#ifdef __cplusplus
}
#endif

#endif /* DYNMOE_BACKEND_H */
