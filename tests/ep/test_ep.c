/* test_ep.c — expert parallelism over MPI on the CPU backend. Run under
 * mpirun with 1, 2 or 4 ranks. Every case shards the experts, runs
 * dynmoe_ep_moe_forward on each rank's slice of the tokens, and compares with
 * the single-process dynmoe_moe_forward of the same slice with all experts
 * (fp32: ||out - ref|| / ||ref|| < 1e-6; bf16: < 1e-2). In capacity mode the
 * reference is dynmoe_experts_forward over the routed table with exactly the
 * dropped slots set to -1 (the drop order: per destination rank, a source's
 * slots in (token, slot) order, the first `capacity` travel), and the number
 * of dropped slots must equal stats.overflow_slots.
 * Outputs and workspaces are filled with NaN before each call. Every rank
 * agrees on each verdict (MPI_Allreduce); rank 0 prints one line per case and
 * "N passed, M failed" last. The NCCL path has no device here: it skips with
 * a message. */
#define _POSIX_C_SOURCE 200809L /* alarm, write */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mpi.h>

#include "dynmoe.h"

static int g_rank, g_size, g_pass, g_fail;

/* ------------------------------------------------------------- helpers */

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static float urand(void) { /* [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / (1ull << 24))) * 2.0f - 1.0f;
}

static uint16_t to_bf16(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

static void *xalloc(size_t bytes) {
    void *p = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return p;
}
static void fill_nan(void *p, size_t bytes) {
    uint32_t nan = 0x7fc00000u;
    for (size_t i = 0; i + 4 <= bytes; i += 4) memcpy((char *)p + i, &nan, 4);
}
/* Stores `n` floats as dtype dt. */
static void *store(const float *v, size_t n, dynmoe_dtype dt) {
    void *p = xalloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        if (dt == DYNMOE_F32) ((float *)p)[i] = v[i];
        else ((uint16_t *)p)[i] = to_bf16(v[i]);
    }
    return p;
}
static float load(const void *p, dynmoe_dtype dt, size_t i) {
    return dt == DYNMOE_F32 ? ((const float *)p)[i] : from_bf16(((const uint16_t *)p)[i]);
}

/* All ranks agree: a check fails if it fails on any rank. */
static int all_ok(int ok) {
    int all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}
static void verdict(const char *name, int ok, const char *detail) {
    ok = all_ok(ok);
    if (ok) g_pass++;
    else g_fail++;
    if (g_rank == 0) printf("[%s] %-44s %s\n", ok ? "PASS" : "FAIL", name, detail);
    fflush(stdout);
}

/* ------------------------------------------------------------- the cases */

enum { MAP_CONTIGUOUS, MAP_PERMUTED, MAP_REDUNDANT };

typedef struct ep_case {
    const char *name;
    int E, Z;
    dynmoe_zero_kind zero_kind;
    int K;
    dynmoe_score score;
    dynmoe_norm norm;
    int groups, topk_groups;
    float scale;
    int bias, mask; /* selection bias; BEAM mask */
    dynmoe_dtype dtype;
    int skew;         /* most tokens to rank 0's experts */
    int starve;       /* the last rank's experts get no token */
    int empty_rank;   /* the last rank has T = 0 */
    int map;
    dynmoe_ep_mode mode;
    int capacity;     /* capacity mode: slots per rank pair, 0 = lossless */
    int expect_overflow;
    int recv_bound; /* exact mode: config.max_recv_rows = all tokens * K (below the worst case) */
} ep_case;

#define H_ 64
#define I_ 48
#define TB 11 /* tokens of rank r: TB + 3r */

static const ep_case cases[] = {
    /* name                         E   Z  zk                  K  score                 norm                 G  g  scale bias mask dtype       skew starve empty map             mode               cap ovf */
    {"topk exact",                  16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 0, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"topk skewed + starved rank",  16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 1, 1, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"topk rank with T=0",          16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_NONE,     0, 0, 1.0f, 0, 0, DYNMOE_F32, 0, 0, 1, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"deepseek grouped exact",      16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED, 4, 2, 2.5f, 1, 0, DYNMOE_F32, 0, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"beam mask exact",             16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 1, DYNMOE_F32, 0, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"longcat identity zero exact", 16, 8, DYNMOE_ZERO_IDENTITY, 6, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_NONE,   0, 0, 1.0f, 1, 0, DYNMOE_F32, 0, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"zeda zero output skewed",     16, 8, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 1, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"topk permuted map",           16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 1, 0, 0, MAP_PERMUTED,   DYNMOE_EP_EXACT, 0, 0, 0},
    {"topk skewed, max_recv_rows",  16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 1, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 1},
    {"topk redundant map",          16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 1, 0, 0, MAP_REDUNDANT,  DYNMOE_EP_EXACT, 0, 0, 0},
    {"E=3 (ranks without experts)", 3,  0, DYNMOE_ZERO_OUTPUT, 2, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 0, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"bf16 topk exact",             16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_BF16, 1, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_EXACT, 0, 0, 0},
    {"topk capacity lossless",      16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 1, 0, 1, MAP_CONTIGUOUS, DYNMOE_EP_CAPACITY, 0, 0, 0},
    {"topk capacity overflow",      16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 1, 1, 0, MAP_CONTIGUOUS, DYNMOE_EP_CAPACITY, 5, 1, 0},
    {"deepseek capacity overflow",  16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED, 4, 2, 2.5f, 1, 0, DYNMOE_F32, 1, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_CAPACITY, 4, 1, 0},
    {"beam capacity overflow",      16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_KEPT,     0, 0, 1.0f, 0, 1, DYNMOE_F32, 1, 0, 0, MAP_CONTIGUOUS, DYNMOE_EP_CAPACITY, 3, 1, 0},
    {"longcat capacity overflow",   16, 8, DYNMOE_ZERO_IDENTITY, 6, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_NONE,   0, 0, 1.0f, 1, 0, DYNMOE_F32, 1, 0, 1, MAP_CONTIGUOUS, DYNMOE_EP_CAPACITY, 4, 1, 0},
    {"redundant capacity overflow", 16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 1, 0, 0, MAP_REDUNDANT,  DYNMOE_EP_CAPACITY, 4, 1, 0},
    {"E=3 capacity overflow",       3,  0, DYNMOE_ZERO_OUTPUT, 2, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_F32, 0, 0, 1, MAP_CONTIGUOUS, DYNMOE_EP_CAPACITY, 4, 1, 0},
    {"bf16 capacity overflow",      16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, DYNMOE_BF16, 1, 0, 0, MAP_PERMUTED,   DYNMOE_EP_CAPACITY, 4, 1, 0},
};

static int tokens_of(const ep_case *c, int r) {
    if (c->empty_rank && g_size > 1 && r == g_size - 1) return 0;
    return TB + 3 * r;
}

/* The placement the case asks for: [E, P] or NULL (contiguous), P in *P. */
static int32_t *make_map(const ep_case *c, int *P) {
    const int E = c->E, R = g_size;
    *P = 1;
    if (c->map == MAP_CONTIGUOUS) return NULL;
    if (c->map == MAP_PERMUTED) {
        int32_t *m = malloc(sizeof(int32_t) * E);
        for (int e = 0; e < E; e++) m[e] = (e * 7 + 3) % R; /* interleaved, uneven */
        return m;
    }
    *P = R > 1 ? 2 : 1;
    int32_t *m = malloc(sizeof(int32_t) * E * *P);
    for (int e = 0; e < E; e++) {
        m[e * *P] = (int)((int64_t)e * R / E);
        if (*P == 2) m[e * 2 + 1] = (m[e * 2] + 1) % R; /* every expert twice */
    }
    return m;
}

/* The destination rank of a slot, as documented in dynmoe.h (test-side copy). */
static int owner(const int32_t *map, int P, int E, int e, int64_t t) {
    const int R = g_size;
    if (!map) {
        for (int r = 0; r < R; r++)
            if ((int64_t)r * E / R <= e && e < (int64_t)(r + 1) * E / R) return r;
        return -1;
    }
    int n = 0, self = -1;
    for (int p = 0; p < P; p++) {
        if (map[e * P + p] < 0) break;
        if (map[e * P + p] == g_rank) self = p;
        n++;
    }
    return map[e * P + (self >= 0 ? self : (int)(t % n))];
}

static void run_case(dynmoe_ctx *ctx, const ep_case *c) {
    const int R = g_size, E = c->E, Z = c->Z, EZ = E + Z, K = c->K, H = H_, In = I_;
    char detail[256] = "";
    int ok = 1;
    /* Global problem, the same on every rank. */
    int64_t Ttot = 0, T0 = 0, maxT = 1;
    for (int r = 0; r < R; r++) {
        int64_t t = tokens_of(c, r);
        if (r < g_rank) T0 += t;
        Ttot += t;
        if (t > maxT) maxT = t;
    }
    const int64_t T = tokens_of(c, g_rank);
    rng_seed(1234 + (uint64_t)(c - cases));
    float *xf = malloc(sizeof(float) * (Ttot * H + 1));
    float *lg = malloc(sizeof(float) * (Ttot * EZ + 1));
    float *mk = malloc(sizeof(float) * (Ttot * E + 1));
    float *bias = xalloc(sizeof(float) * EZ);
    float *w13f = malloc(sizeof(float) * (size_t)E * 2 * In * H);
    float *w2f = malloc(sizeof(float) * (size_t)E * H * In);
    for (int64_t i = 0; i < Ttot * H; i++) xf[i] = urand();
    for (int64_t t = 0; t < Ttot; t++)
        for (int e = 0; e < EZ; e++) {
            float v = 2.0f * urand();
            int contiguous_owner = (int)(((int64_t)e * R) / (E > 0 ? E : 1));
            if (c->skew && e < E && (int64_t)e * R / E == 0 && urand() < 0.8f) v += 3.0f; /* rank 0's experts */
            (void)contiguous_owner;
            lg[t * EZ + e] = v;
        }
    if (c->starve && R > 1)
        for (int64_t t = 0; t < Ttot; t++)
            for (int e = 0; e < E; e++)
                if ((int64_t)(R - 1) * E / R <= e) lg[t * EZ + e] = -30.0f;
    for (int64_t i = 0; i < Ttot * E; i++) mk[i] = urand();
    for (int e = 0; e < EZ; e++) bias[e] = 0.3f * urand();
    for (size_t i = 0; i < (size_t)E * 2 * In * H; i++) w13f[i] = 0.2f * urand();
    for (size_t i = 0; i < (size_t)E * H * In; i++) w2f[i] = 0.2f * urand();

    dynmoe_router router = DYNMOE_ROUTER_INIT;
    router.num_experts = E;
    router.num_zero_experts = Z;
    router.zero_kind = c->zero_kind;
    router.top_k = K;
    router.score = c->score;
    router.norm = c->norm;
    router.num_groups = c->groups;
    router.topk_groups = c->topk_groups;
    router.scale = c->scale;

    /* ---- the ep handle and this rank's experts */
    int P = 1;
    int32_t *map = make_map(c, &P);
    dynmoe_ep_config cfg = DYNMOE_EP_CONFIG_INIT;
    cfg.num_experts = E;
    cfg.expert_rank = map;
    cfg.max_replicas = P;
    cfg.max_tokens = maxT;
    cfg.capacity = c->capacity;
    cfg.max_recv_rows = c->recv_bound ? Ttot * K : 0;
    dynmoe_ep *ep = NULL;
    dynmoe_status st = dynmoe_ep_create_mpi(&ep, &(MPI_Comm){MPI_COMM_WORLD}, &cfg);
    if (st != DYNMOE_OK) {
        snprintf(detail, sizeof detail, "create: %s %s", dynmoe_status_name(st), dynmoe_last_error());
        verdict(c->name, 0, detail);
        free(map);
        return;
    }
    int32_t L = 0;
    dynmoe_ep_info(ep, NULL, NULL, &L);
    int32_t *local_ids = malloc(sizeof(int32_t) * (E + 1));
    dynmoe_ep_local_experts(ep, local_ids);
    const size_t w13n = (size_t)2 * In * H, w2n = (size_t)H * In;
    float *lw13f = malloc(sizeof(float) * (L * w13n + 1)), *lw2f = malloc(sizeof(float) * (L * w2n + 1));
    for (int j = 0; j < L; j++) {
        memcpy(lw13f + j * w13n, w13f + local_ids[j] * w13n, sizeof(float) * w13n);
        memcpy(lw2f + j * w2n, w2f + local_ids[j] * w2n, sizeof(float) * w2n);
    }
    const dynmoe_dtype dt = c->dtype;
    void *x = store(xf + T0 * H, (size_t)T * H, dt);
    void *w13 = store(w13f, (size_t)E * w13n, dt), *w2 = store(w2f, (size_t)E * w2n, dt);
    dynmoe_experts gx = DYNMOE_EXPERTS_INIT;
    gx.num_experts = E;
    gx.hidden = H;
    gx.inter = In;
    gx.dtype = dt;
    gx.w13 = w13;
    gx.w2 = w2;
    dynmoe_experts lx = gx;
    lx.num_experts = L;
    lx.w13 = L ? store(lw13f, L * w13n, dt) : NULL;
    lx.w2 = L ? store(lw2f, L * w2n, dt) : NULL;
    float *logits = store(lg + T0 * EZ, (size_t)T * EZ, DYNMOE_F32);
    float *mask = c->mask ? store(mk + T0 * E, (size_t)T * E, DYNMOE_F32) : NULL;
    const float *biasp = c->bias ? bias : NULL;
    const size_t esz = dt == DYNMOE_F32 ? 4 : 2;

    /* ---- sharded forward */
    size_t wsb = dynmoe_ep_workspace_size(ep, &router, &lx, c->mode);
    void *ws = xalloc(wsb);
    fill_nan(ws, wsb);
    void *out = xalloc((size_t)T * H * esz + 16);
    fill_nan(out, (size_t)T * H * esz);
    dynmoe_stats stats;
    memset(&stats, 0xff, sizeof stats);
    dynmoe_ctx_set_stats(ctx, &stats);
    st = wsb ? dynmoe_ep_moe_forward(ep, ctx, &router, &lx, T, x, logits, DYNMOE_F32, biasp, mask, out, ws, wsb,
                                     c->mode, NULL)
             : DYNMOE_ERR_INVALID_ARGUMENT;
    dynmoe_ctx_set_stats(ctx, NULL);
    if (st != DYNMOE_OK) {
        ok = 0;
        snprintf(detail, sizeof detail, "rank %d: forward %s %s", g_rank, dynmoe_status_name(st), dynmoe_last_error());
    }
    /* Every slot is counted once: travelled, dropped, empty or zero expert. */
    if (ok && stats.routed_slots + stats.overflow_slots + stats.empty_slots + stats.zero_expert_slots != T * K) {
        ok = 0;
        snprintf(detail, sizeof detail, "rank %d: stats count %lld+%lld+%lld+%lld slots, expected %lld", g_rank,
                 (long long)stats.routed_slots, (long long)stats.overflow_slots, (long long)stats.empty_slots,
                 (long long)stats.zero_expert_slots, (long long)(T * K));
    }
    /* A second call on the same workspace gives the same bits (all ranks or none call it). */
    if (all_ok(ok)) {
        void *again = xalloc((size_t)T * H * esz + 16);
        fill_nan(ws, wsb);
        st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, T, x, logits, DYNMOE_F32, biasp, mask, again, ws, wsb,
                                   c->mode, NULL);
        if (st != DYNMOE_OK || memcmp(again, out, (size_t)T * H * esz) != 0) {
            ok = 0;
            snprintf(detail, sizeof detail, "rank %d: second call %s, not bitwise equal", g_rank,
                     dynmoe_status_name(st));
        }
        free(again);
    }

    /* ---- reference on this rank's slice with all experts */
    void *ref = xalloc((size_t)T * H * esz + 16);
    int64_t expect_overflow = 0;
    if (T > 0) {
        size_t rws = dynmoe_workspace_size(&router, &gx, T);
        void *rw = xalloc(rws);
        dynmoe_status rs;
        if (c->mode == DYNMOE_EP_EXACT) {
            rs = dynmoe_moe_forward(ctx, &router, &gx, T, x, logits, DYNMOE_F32, biasp, mask, ref, rw, rws, NULL);
        } else {
            int32_t *ids = xalloc(sizeof(int32_t) * T * K);
            float *wts = xalloc(sizeof(float) * T * K);
            rs = dynmoe_route(ctx, &router, T, logits, DYNMOE_F32, biasp, mask, ids, wts, NULL);
            int64_t cap = c->capacity ? c->capacity : maxT * K;
            int64_t used[64] = {0};
            for (int64_t s = 0; s < T * K; s++) /* the documented drop order */
                if (ids[s] >= 0 && ids[s] < E) {
                    int d = owner(map, P, E, ids[s], s / K);
                    if (used[d] >= cap) {
                        ids[s] = -1;
                        expect_overflow++;
                    } else {
                        used[d]++;
                    }
                }
            if (rs == DYNMOE_OK)
                rs = dynmoe_experts_forward(ctx, &router, &gx, T, x, ids, wts, K, ref, rw, rws, NULL);
            free(ids);
            free(wts);
        }
        free(rw);
        if (rs != DYNMOE_OK) {
            ok = 0;
            snprintf(detail, sizeof detail, "rank %d: reference %s %s", g_rank, dynmoe_status_name(rs),
                     dynmoe_last_error());
        }
    }
    double num = 0, den = 0;
    int nonfinite = 0;
    for (int64_t i = 0; i < T * H; i++) {
        double o = load(out, dt, i), r = load(ref, dt, i);
        if (!isfinite(o)) nonfinite++;
        num += (o - r) * (o - r);
        den += r * r;
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    const double tol = dt == DYNMOE_F32 ? 1e-6 : 1e-2;
    if (ok && (nonfinite || !(rel < tol))) {
        ok = 0;
        snprintf(detail, sizeof detail, "rank %d: rel err %.3g (tol %.0e), %d non-finite, seed %llu", g_rank, rel, tol,
                 nonfinite, (unsigned long long)(1234 + (c - cases)));
    }
    if (ok && st == DYNMOE_OK && stats.overflow_slots != expect_overflow) {
        ok = 0;
        snprintf(detail, sizeof detail, "rank %d: stats.overflow_slots = %lld, expected %lld", g_rank,
                 (long long)stats.overflow_slots, (long long)expect_overflow);
    }
    if (ok && st == DYNMOE_OK && stats.tokens != T) {
        ok = 0;
        snprintf(detail, sizeof detail, "rank %d: stats.tokens = %lld", g_rank, (long long)stats.tokens);
    }
    /* What the case exercised, summed over the ranks. */
    double errmax = 0;
    long long ov = st == DYNMOE_OK ? stats.overflow_slots : 0, ovsum = 0;
    long long rows = st == DYNMOE_OK ? stats.max_expert_rows : -1, starved = 0;
    long long my_starved = (rows == 0 && L > 0) ? 1 : 0;
    MPI_Allreduce(&rel, &errmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&ov, &ovsum, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&my_starved, &starved, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (ok && c->expect_overflow && ovsum == 0) {
        ok = 0;
        snprintf(detail, sizeof detail, "no slot overflowed: the case does not test overflow");
    }
    if (ok && c->starve && R > 1 && starved == 0) {
        ok = 0;
        snprintf(detail, sizeof detail, "no rank was starved: the case does not test it");
    }
    if (ok)
        snprintf(detail, sizeof detail, "max rel err %.2e, overflow %lld, ranks receiving nothing %lld", errmax, ovsum,
                 starved);
    verdict(c->name, ok, detail);

    dynmoe_ep_destroy(ep);
    free(map);
    free(local_ids);
    free(xf);
    free(lg);
    free(mk);
    free(bias);
    free(w13f);
    free(w2f);
    free(lw13f);
    free(lw2f);
    free(x);
    free(w13);
    free(w2);
    free((void *)lx.w13);
    free((void *)lx.w2);
    free(logits);
    free(mask);
    free(ws);
    free(out);
    free(ref);
}

/* ------------------------------------------------------ argument checks */

/* The layer of the argument-check cases: E = 8, K = 2, H = I = 16, this
 * rank's L experts on the weights w (at least 8 * 2 * 16 * 16 floats). */
static void small_layer(int32_t L, const float *w, dynmoe_router *router, dynmoe_experts *lx) {
    const dynmoe_router r = DYNMOE_ROUTER_INIT;
    const dynmoe_experts x = DYNMOE_EXPERTS_INIT;
    *router = r;
    router->num_experts = 8;
    router->top_k = 2;
    *lx = x;
    lx->num_experts = L;
    lx->hidden = 16;
    lx->inter = 16;
    lx->w13 = w;
    lx->w2 = w;
}

static void run_checks(dynmoe_ctx *ctx) {
    MPI_Comm world = MPI_COMM_WORLD;
    dynmoe_ep_config cfg = DYNMOE_EP_CONFIG_INIT;
    cfg.num_experts = 8;
    cfg.max_tokens = 4;
    dynmoe_ep *ep = NULL;
    char d[256];

    dynmoe_status st = dynmoe_ep_create_mpi(NULL, &world, &cfg);
    verdict("create: NULL ep", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    st = dynmoe_ep_create_mpi(&ep, NULL, &cfg);
    verdict("create: NULL communicator", st == DYNMOE_ERR_INVALID_ARGUMENT && !ep, dynmoe_last_error());
    dynmoe_ep_config bad = cfg;
    bad.max_tokens = 0;
    st = dynmoe_ep_create_mpi(&ep, &world, &bad);
    verdict("create: max_tokens 0", st == DYNMOE_ERR_INVALID_ARGUMENT && !ep, dynmoe_last_error());
    int32_t map[8] = {0, 0, 0, 0, 0, 0, 0, g_size}; /* rank out of range */
    bad = cfg;
    bad.expert_rank = map;
    st = dynmoe_ep_create_mpi(&ep, &world, &bad);
    verdict("create: expert_rank out of range", st == DYNMOE_ERR_INVALID_ARGUMENT && !ep, dynmoe_last_error());
    bad = cfg;
    bad.max_tokens = g_rank == 0 ? 4 : 5; /* differs between ranks (1 rank: same) */
    st = dynmoe_ep_create_mpi(&ep, &world, &bad);
    snprintf(d, sizeof d, "%s", dynmoe_last_error());
    if (g_size > 1) verdict("create: config differs between ranks", st == DYNMOE_ERR_INVALID_ARGUMENT && !ep, d);
    else dynmoe_ep_destroy(ep);
    ep = NULL;

    st = dynmoe_ep_create_mpi(&ep, &world, &cfg);
    verdict("create: contiguous map", st == DYNMOE_OK, dynmoe_last_error());
    if (st != DYNMOE_OK) return;
    int32_t rank = -1, size = -1, L = -1;
    dynmoe_ep_info(ep, &rank, &size, &L);
    snprintf(d, sizeof d, "rank %d of %d holds %d experts", rank, size, L);
    verdict("info", rank == g_rank && size == g_size && L == 8 / g_size, d);

    float *w = xalloc(sizeof(float) * 8 * 2 * 16 * 16);
    dynmoe_router router;
    dynmoe_experts lx;
    small_layer(L, w, &router, &lx);
    size_t wsb = dynmoe_ep_workspace_size(ep, &router, &lx, DYNMOE_EP_EXACT);
    verdict("workspace size", wsb > 0, dynmoe_last_error());
    void *ws = xalloc(wsb);
    float *x = xalloc(sizeof(float) * 4 * 16), *lg = xalloc(sizeof(float) * 4 * 8), *out = xalloc(sizeof(float) * 4 * 16);

    st = dynmoe_ep_moe_forward(NULL, ctx, &router, &lx, 4, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb,
                               DYNMOE_EP_EXACT, NULL);
    verdict("forward: NULL ep", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    dynmoe_experts badx = lx;
    badx.num_experts = L + 1;
    st = dynmoe_ep_moe_forward(ep, ctx, &router, &badx, 4, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb,
                               DYNMOE_EP_EXACT, NULL);
    verdict("forward: wrong number of local experts", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    dynmoe_router badr = router;
    badr.num_experts = 16;
    st = dynmoe_ep_moe_forward(ep, ctx, &badr, &lx, 4, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb,
                               DYNMOE_EP_EXACT, NULL);
    verdict("forward: router.num_experts != ep's", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    badr = router;
    badr.top_k = 0;
    st = dynmoe_ep_moe_forward(ep, ctx, &badr, &lx, 4, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb,
                               DYNMOE_EP_EXACT, NULL);
    verdict("forward: invalid router", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, 5, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb,
                               DYNMOE_EP_EXACT, NULL);
    verdict("forward: T > max_tokens", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, 4, NULL, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb,
                               DYNMOE_EP_EXACT, NULL);
    verdict("forward: NULL x", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, 4, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb - 1,
                               DYNMOE_EP_EXACT, NULL);
    verdict("forward: workspace too small", st == DYNMOE_ERR_WORKSPACE_TOO_SMALL, dynmoe_last_error());
    st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, 4, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb,
                               (dynmoe_ep_mode)7, NULL);
    verdict("forward: unknown mode", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    dynmoe_ctx *cuda = NULL;
    if (dynmoe_ctx_create(&cuda, DYNMOE_BACKEND_CUDA, 0) == DYNMOE_OK) {
        st = dynmoe_ep_moe_forward(ep, cuda, &router, &lx, 4, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsb,
                                   DYNMOE_EP_EXACT, NULL);
        verdict("forward: CUDA context with an MPI ep", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
        dynmoe_ctx_destroy(cuda);
    }
    dynmoe_ep_destroy(ep);
    ep = NULL;

    /* max_recv_rows too small for skewed routing: every rank gets the status */
    dynmoe_ep_config small = cfg;
    small.max_recv_rows = 1;
    st = dynmoe_ep_create_mpi(&ep, &world, &small);
    if (st == DYNMOE_OK) {
        size_t sb = dynmoe_ep_workspace_size(ep, &router, &lx, DYNMOE_EP_EXACT);
        for (int i = 0; i < 4 * 8; i++) lg[i] = (i % 8) == 0 ? 5.0f : 0.0f; /* all tokens to expert 0 */
        for (int i = 0; i < 4 * 16; i++) x[i] = 1.0f;
        for (int i = 0; i < 8 * 2 * 16 * 16; i++) w[i] = 0.01f;
        st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, 4, x, lg, DYNMOE_F32, NULL, NULL, out, ws, sb,
                                   DYNMOE_EP_EXACT, NULL);
        snprintf(d, sizeof d, "workspace %zu < %zu bytes; %s", sb, wsb, dynmoe_last_error());
        verdict("forward: max_recv_rows exceeded on a rank", st == DYNMOE_ERR_WORKSPACE_TOO_SMALL && sb < wsb, d);
        dynmoe_ep_destroy(ep);
        ep = NULL;
    } else {
        verdict("create: max_recv_rows", 0, dynmoe_last_error());
    }
    free(w);
    free(ws);
    free(x);
    free(lg);
    free(out);

    /* NCCL: the multi-GPU forward is tests/ep/test_ep_nccl.c (CUDA builds). */
    st = dynmoe_ep_create_nccl(&ep, NULL, &cfg);
    verdict("nccl create: NULL communicator", st == DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    if (g_rank == 0 && !dynmoe_cuda_available())
        printf("[SKIP] nccl multi-GPU forward: no CUDA device here (test_ep_nccl runs it where there is one)\n");
}

/* ------------------------------------------- agreement between the ranks */

/* One rank's arguments fail its own checks, or the ranks pass different
 * values: every rank must return the same status, with a message naming the
 * failing rank, and none may block (a hang here is caught by the watchdog in
 * main and by the ctest TIMEOUT). */
static int names_rank(const char *msg, int rank) {
    char want[32];
    snprintf(want, sizeof want, "rank %d of %d", rank, g_size);
    return strstr(msg, want) != NULL;
}

/* st == want on every rank, the message names `rank` (-1: the message names
 * `what` instead), and every rank has the same message. */
static void agreed(const char *name, dynmoe_status st, dynmoe_status want, int rank, const char *what) {
    const char *msg = dynmoe_last_error();
    char d[320];
    int ok = st == want && (rank >= 0 ? names_rank(msg, rank) : strstr(msg, what) != NULL);
    /* the same message on every rank: compare with rank 0's */
    char m0[512];
    snprintf(m0, sizeof m0, "%s", msg);
    MPI_Bcast(m0, sizeof m0, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (strcmp(m0, msg) != 0) ok = 0;
    snprintf(d, sizeof d, "rank %d: %s: %.240s", g_rank, dynmoe_status_name(st), msg);
    verdict(name, ok, d);
}

static void run_agreement(dynmoe_ctx *ctx) {
    MPI_Comm world = MPI_COMM_WORLD;
    const int last = g_size - 1; /* the rank that misbehaves */
    dynmoe_ep_config cfg = DYNMOE_EP_CONFIG_INIT;
    cfg.num_experts = 8;
    cfg.max_tokens = 4;
    cfg.capacity = 8;
    dynmoe_ep *ep = NULL;

    /* ---- create */
    dynmoe_ep_config bad = cfg;
    if (g_rank == last) bad.max_tokens = 0;
    dynmoe_status st = dynmoe_ep_create_mpi(&ep, &world, &bad);
    agreed("agree create: one rank's max_tokens 0", st, DYNMOE_ERR_INVALID_ARGUMENT, last, NULL);
    if (ep) dynmoe_ep_destroy(ep), ep = NULL;
    st = dynmoe_ep_create_mpi(&ep, &world, g_rank == last ? NULL : &cfg);
    agreed("agree create: one rank's config NULL", st, DYNMOE_ERR_INVALID_ARGUMENT, last, NULL);
    if (ep) dynmoe_ep_destroy(ep), ep = NULL;
    int32_t map[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    bad = cfg;
    if (g_rank == last) {
        map[3] = g_size + 2; /* not a rank */
        bad.expert_rank = map;
    }
    st = dynmoe_ep_create_mpi(&ep, &world, &bad);
    agreed("agree create: one rank's expert_rank invalid", st, DYNMOE_ERR_INVALID_ARGUMENT, last, NULL);
    if (ep) dynmoe_ep_destroy(ep), ep = NULL;

    st = dynmoe_ep_create_mpi(&ep, &world, &cfg);
    verdict("agree: create", st == DYNMOE_OK, dynmoe_last_error());
    if (st != DYNMOE_OK) return;
    int32_t L = 0;
    dynmoe_ep_info(ep, NULL, NULL, &L);
    float *w = xalloc(sizeof(float) * 8 * 2 * 32 * 32); /* room for hidden 32 */
    for (int i = 0; i < 8 * 2 * 32 * 32; i++) w[i] = 0.01f;
    dynmoe_router router;
    dynmoe_experts lx;
    small_layer(L, w, &router, &lx);
    size_t wsb = dynmoe_ep_workspace_size(ep, &router, &lx, DYNMOE_EP_EXACT);
    size_t wcap = dynmoe_ep_workspace_size(ep, &router, &lx, DYNMOE_EP_CAPACITY);
    dynmoe_experts wide = lx;
    wide.hidden = 32;
    size_t wwide = dynmoe_ep_workspace_size(ep, &router, &wide, DYNMOE_EP_EXACT);
    size_t wmax = wsb > wcap ? wsb : wcap;
    if (wwide > wmax) wmax = wwide;
    void *ws = xalloc(wmax);
    float *x = xalloc(sizeof(float) * 4 * 32), *lg = xalloc(sizeof(float) * 4 * 8), *out = xalloc(sizeof(float) * 4 * 32);
    for (int i = 0; i < 4 * 32; i++) x[i] = 0.5f;
    for (int i = 0; i < 4 * 8; i++) lg[i] = (float)(i % 8) * 0.1f;
    const dynmoe_ep_mode EX = DYNMOE_EP_EXACT;
#define FWD(rp, xp, T_, wsbytes, mode_) \
    dynmoe_ep_moe_forward(ep, ctx, rp, xp, T_, x, lg, DYNMOE_F32, NULL, NULL, out, ws, wsbytes, mode_, NULL)

    st = FWD(&router, &lx, g_rank == last ? 5 : 4, wsb, EX);
    agreed("agree forward: one rank's T > max_tokens", st, DYNMOE_ERR_INVALID_ARGUMENT, last, NULL);
    st = FWD(&router, &lx, 4, g_rank == last ? wsb - 1 : wsb, EX);
    agreed("agree forward: one rank's workspace too small", st, DYNMOE_ERR_WORKSPACE_TOO_SMALL, last, NULL);
    st = FWD(g_rank == last ? NULL : &router, &lx, 4, wsb, EX);
    agreed("agree forward: one rank's router NULL", st, DYNMOE_ERR_INVALID_ARGUMENT, last, NULL);
    st = dynmoe_ep_moe_forward(ep, g_rank == last ? NULL : ctx, &router, &lx, 4, x, lg, DYNMOE_F32, NULL, NULL,
                               out, ws, wsb, EX, NULL);
    agreed("agree forward: one rank's ctx NULL", st, DYNMOE_ERR_INVALID_ARGUMENT, last, NULL);
    st = FWD(&router, &lx, 4, wsb, g_rank == last ? (dynmoe_ep_mode)9 : EX);
    agreed("agree forward: one rank's mode unknown", st, DYNMOE_ERR_INVALID_ARGUMENT, last, NULL);
    if (g_size > 1) {
        st = FWD(&router, &lx, 4, wmax, g_rank == last ? DYNMOE_EP_CAPACITY : EX);
        agreed("agree forward: ranks in different modes", st, DYNMOE_ERR_INVALID_ARGUMENT, -1, "different mode");
        st = FWD(&router, g_rank == last ? &wide : &lx, 4, wmax, EX);
        agreed("agree forward: ranks with different hidden", st, DYNMOE_ERR_INVALID_ARGUMENT, -1,
               "different local_experts.hidden (from 16 to 32)");
        dynmoe_router other = router;
        other.scale = 2.0f;
        st = FWD(g_rank == last ? &other : &router, &lx, 4, wsb, EX);
        agreed("agree forward: ranks with different routers", st, DYNMOE_ERR_INVALID_ARGUMENT, -1,
               "different router");
    }
    if (g_size > 2) { /* two ranks fail: the lowest is named, and the range */
        const int fail2 = g_rank == 1 || g_rank == last;
        st = FWD(&router, &lx, fail2 ? 5 : 4, wsb, EX);
        char what[96];
        snprintf(what, sizeof what, "rank 1 of %d (the lowest failing rank; the highest is %d)", g_size, last);
        agreed("agree forward: two ranks fail", st, DYNMOE_ERR_INVALID_ARGUMENT, -1, what);
    }
    /* after all that, the handle still works */
    st = FWD(&router, &lx, 4, wsb, EX);
    verdict("agree forward: a good call after the bad ones", st == DYNMOE_OK, dynmoe_last_error());
    st = FWD(&router, &lx, 4, wcap, DYNMOE_EP_CAPACITY);
    verdict("agree forward: a good capacity call", st == DYNMOE_OK, dynmoe_last_error());
#undef FWD
    dynmoe_ep_destroy(ep);
    free(w);
    free(ws);
    free(x);
    free(lg);
    free(out);
}

/* A hang (a rank left waiting in MPI) must fail the test, not block CI. */
static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "test_ep: still running after the watchdog's limit: a rank is blocked in MPI\n";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(3);
    _exit(3);
}

int main(int argc, char **argv) {
    /* ctest's TIMEOUT backs this up; 120 s is 4x a 4-rank run on 2 cores */
    signal(SIGALRM, on_alarm);
    alarm(argc > 1 ? (unsigned)atoi(argv[1]) : 120u);
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    if (g_rank == 0) printf("dynmoe expert parallelism over MPI: %d rank(s)\n", g_size);
    dynmoe_ctx *ctx = NULL;
    if (dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_CPU, 0) != DYNMOE_OK) {
        fprintf(stderr, "ctx: %s\n", dynmoe_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    run_checks(ctx);
    run_agreement(ctx);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(ctx, &cases[i]);
    dynmoe_ctx_destroy(ctx);
    if (g_rank == 0) printf("%d passed, %d failed\n", g_pass, g_fail);
    MPI_Finalize();
    return g_fail ? 1 : 0;
}
