/* cpu/route.c — routing on the CPU: one token per iteration, tokens spread
 * over OpenMP threads; every rule comes from route_rules.h. */
#include "../backend.h"
#include "../route_rules.h"
#include "cpu.h"

/* Row t of a [T, n] tensor as fp32: the row itself for f32 input, else a
 * conversion into buf. */
static const float *row_f32(const void *p, dynmoe_dtype dt, int64_t t, int32_t n, float *buf) {
    if (dt == DYNMOE_F32) return (const float *)p + t * n;
    for (int32_t i = 0; i < n; i++) buf[i] = dm_load(p, dt, t * n + i);
    return buf;
}

/* Empty and zero-expert slots of one token's S slots, for the stats. */
static void count_slots(const int32_t *ids, int32_t S, int32_t E, int64_t *empty, int64_t *zero) {
    for (int32_t k = 0; k < S; k++) {
        *empty += ids[k] < 0;
        *zero += ids[k] >= E;
    }
}

/* Route stats: a table that routing wrote has no invalid ids. */
static void route_stats(dynmoe_stats *s, int64_t T, int64_t nonfinite, int64_t empty, int64_t zero) {
    if (s == NULL) return;
    s->tokens = T;
    s->nonfinite_rows = nonfinite;
    s->empty_slots = empty;
    s->zero_expert_slots = zero;
    s->invalid_ids = 0;
}

/* What the threads of a routing call share: the arguments and the counts
 * for the stats (each thread adds its own once). */
typedef struct route_job {
    const void *args; /* dm_route_args or dm_route_tasks_args */
    int64_t nonfinite, empty, zero;
} route_job;

static void add_counts(route_job *j, int64_t nonfinite, int64_t empty, int64_t zero) {
#pragma omp atomic
    j->nonfinite += nonfinite;
#pragma omp atomic
    j->empty += empty;
#pragma omp atomic
    j->zero += zero;
}

static void route_body(void *arg) {
    route_job *j = (route_job *)arg;
    const dm_route_args *a = (const dm_route_args *)j->args;
    const dynmoe_router *r = &a->router;
    const int32_t E = r->num_experts, N = E + r->num_zero_experts, K = r->top_k;
    int64_t nonfinite = 0, empty = 0, zero = 0;
    /* Per-thread scratch lives on the stack (16 KiB): the forward path allocates nothing. */
    dm_token_scratch scratch;
    float lbuf[2 * DYNMOE_MAX_EXPERTS];
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < a->T; t++) {
        const float *logits = row_f32(a->logits, a->logits_dtype, t, N, lbuf);
        const float *mask = a->mask_logits ? row_f32(a->mask_logits, a->logits_dtype, t, E, lbuf + N) : NULL;
        nonfinite += dm_route_token_serial(r, logits, a->bias, mask, &scratch, a->ids + t * K, a->weights + t * K);
        count_slots(a->ids + t * K, K, E, &empty, &zero);
    }
    add_counts(j, nonfinite, empty, zero);
}

dynmoe_status dm_cpu_route(dynmoe_ctx *ctx, const dm_route_args *a, void *stream) {
    (void)ctx;
    (void)stream;
    route_job j = {a, 0, 0, 0};
    dm_cpu_parallel(dm_cpu_threads(), route_body, &j);
    route_stats(a->stats, a->T, j.nonfinite, j.empty, j.zero);
    return DYNMOE_OK;
}

/* CaRE: for each picked task, expert logits W_r x then the usual route. */
static void route_tasks_body(void *arg) {
    route_job *j = (route_job *)arg;
    const dm_route_tasks_args *a = (const dm_route_tasks_args *)j->args;
    const dynmoe_router *r = &a->router;
    const int32_t N = r->num_experts + r->num_zero_experts, K = r->top_k, H = a->hidden;
    const int32_t R = r->num_tasks, P = r->top_tasks, S = K * P;
    int64_t nonfinite = 0, empty = 0, zero = 0;
    {
        dm_token_scratch scratch;
        float logits[DYNMOE_MAX_EXPERTS];
        {
#pragma omp for schedule(static) nowait
            for (int64_t t = 0; t < a->T; t++) {
                float task_c[DYNMOE_MAX_TOP_K];
                int32_t task_id[DYNMOE_MAX_TOP_K];
                int32_t picked = 0;
                for (int32_t j = 0; j < R; j++)
                    picked = dm_topk_insert(task_c, task_id, picked, P, a->task_logits[t * R + j], j);
                int32_t *ids = a->ids + t * S;
                float *w = a->weights + t * S;
                int routed_any = 0;
                for (int32_t i = 0; i < P; i++) {
                    if (i >= picked) {
                        for (int32_t k = 0; k < K; k++) {
                            ids[i * K + k] = -1;
                            w[i * K + k] = 0.0f;
                        }
                        continue;
                    }
                    const int64_t wbase = (int64_t)task_id[i] * N * H;
                    for (int32_t e = 0; e < N; e++) {
                        float acc = 0.0f;
                        for (int32_t h = 0; h < H; h++)
                            acc += dm_load(a->task_weights, a->x_dtype, wbase + (int64_t)e * H + h) *
                                   dm_load(a->x, a->x_dtype, t * H + h);
                        logits[e] = acc;
                    }
                    routed_any |= !dm_route_token_serial(r, logits, a->bias, NULL, &scratch, ids + i * K, w + i * K);
                }
                dm_merge_duplicate_slots(S, ids, w);
                nonfinite += !routed_any;
                count_slots(ids, S, r->num_experts, &empty, &zero);
            }
        }
    }
    add_counts(j, nonfinite, empty, zero);
}

dynmoe_status dm_cpu_route_tasks(dynmoe_ctx *ctx, const dm_route_tasks_args *a, void *stream) {
    (void)ctx;
    (void)stream;
    route_job j = {a, 0, 0, 0};
    dm_cpu_parallel(dm_cpu_threads(), route_tasks_body, &j);
    route_stats(a->stats, a->T, j.nonfinite, j.empty, j.zero);
    return DYNMOE_OK;
}
