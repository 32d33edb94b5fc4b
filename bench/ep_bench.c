/* ep_bench.c — dynmoe-ep-bench: the expert-parallel MoE layer over MPI on the
 * CPU backend, timed per rank and split into route (+ send lists), exchange
 * (all-to-alls, including the wait for slower ranks), local experts and
 * combine.
 *
 *   mpirun -np 4 dynmoe-ep-bench [--preset qwen3|olmoe|mixtral|deepseek]
 *       [--tokens T per rank] [--iters N] [--warmup N] [--dtype f32|bf16]
 *       [--mode exact|capacity] [--capacity C] [--skew] [--experts E] [--json]
 *
 * Each rank generates its own tokens and only its own experts' weights
 * (random, fixed seeds). Times are the median over the iterations, in ms.
 * Napkin math (Qwen3-30B-A3B, H 2048, I 768, K 8): 2*3*I*H = 9.4 MFLOP per
 * routed slot, 75 MFLOP per token; each slot moves H*esize bytes out and H*4
 * back, 12 KiB in bf16. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "dynmoe.h"

typedef struct preset {
    const char *name;
    int E, K, H, I;
    dynmoe_score score;
    dynmoe_norm norm;
    int groups, topk_groups;
    float scale;
} preset;

static const preset presets[] = {
    {"qwen3", 128, 8, 2048, 768, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f},     /* Qwen3-30B-A3B */
    {"olmoe", 64, 8, 2048, 1024, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_NONE, 0, 0, 1.0f},         /* OLMoE */
    {"mixtral", 8, 2, 4096, 14336, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f},   /* Mixtral-8x7B */
    {"deepseek", 256, 8, 7168, 2048, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED, 8, 4, 2.5f}, /* DeepSeek-V3 */
};

static uint64_t rs = 88172645463325252ull;
static float urand(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((rs >> 40) * (1.0 / (1ull << 24))) * 2.0f - 1.0f;
}
static void *xalloc(size_t bytes) {
    void *p = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    if (!p) {
        fprintf(stderr, "dynmoe-ep-bench: out of memory (%zu bytes)\n", bytes);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return p;
}
static void fill(void *p, size_t n, dynmoe_dtype dt, float amp) {
    for (size_t i = 0; i < n; i++) {
        float v = amp * urand();
        if (dt == DYNMOE_F32) {
            ((float *)p)[i] = v;
        } else {
            uint32_t u;
            memcpy(&u, &v, 4);
            ((uint16_t *)p)[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
}
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
static void die(int rank, const char *what, dynmoe_status st) {
    fprintf(stderr, "dynmoe-ep-bench rank %d: %s: %s: %s\n", rank, what, dynmoe_status_name(st), dynmoe_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, R;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &R);
    preset p = presets[0];
    int64_t T = 128;
    int iters = 5, warmup = 1, skew = 0, json = 0, capacity = 0, E_override = 0;
    dynmoe_dtype dt = DYNMOE_F32;
    dynmoe_ep_mode mode = DYNMOE_EP_EXACT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--preset") && v) {
            int found = 0;
            for (size_t j = 0; j < sizeof presets / sizeof presets[0]; j++)
                if (!strcmp(presets[j].name, v)) p = presets[j], found = 1;
            if (!found) {
                if (rank == 0) fprintf(stderr, "unknown preset %s\n", v);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            i++;
        } else if (!strcmp(a, "--tokens") && v) T = atoll(v), i++;
        else if (!strcmp(a, "--iters") && v) iters = atoi(v), i++;
        else if (!strcmp(a, "--warmup") && v) warmup = atoi(v), i++;
        else if (!strcmp(a, "--capacity") && v) capacity = atoi(v), i++;
        else if (!strcmp(a, "--experts") && v) E_override = atoi(v), i++;
        else if (!strcmp(a, "--dtype") && v) dt = !strcmp(v, "bf16") ? DYNMOE_BF16 : DYNMOE_F32, i++;
        else if (!strcmp(a, "--mode") && v) mode = !strcmp(v, "capacity") ? DYNMOE_EP_CAPACITY : DYNMOE_EP_EXACT, i++;
        else if (!strcmp(a, "--skew")) skew = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else {
            if (rank == 0)
                fprintf(stderr, "usage: mpirun -np R %s [--preset qwen3|olmoe|mixtral|deepseek] [--tokens T] "
                                "[--iters N] [--warmup N] [--dtype f32|bf16] [--mode exact|capacity] "
                                "[--capacity C] [--skew] [--experts E] [--json]\n", argv[0]);
            MPI_Finalize();
            return 2;
        }
    }
    if (iters < 1) iters = 1;
    if (E_override > 0) {
        p.E = E_override;
        if (p.groups > 0 && p.E % p.groups) p.groups = p.topk_groups = 0;
    }
    const int E = p.E, K = p.K, H = p.H, In = p.I;
    dynmoe_router router = DYNMOE_ROUTER_INIT;
    router.num_experts = E;
    router.top_k = K;
    router.score = p.score;
    router.norm = p.norm;
    router.num_groups = p.groups;
    router.topk_groups = p.topk_groups;
    router.scale = p.scale;

    dynmoe_ctx *ctx = NULL;
    dynmoe_status st = dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_CPU, 0);
    if (st) die(rank, "ctx", st);
    dynmoe_ep_config cfg = DYNMOE_EP_CONFIG_INIT;
    cfg.num_experts = E;
    cfg.max_tokens = T > 0 ? T : 1;
    cfg.capacity = capacity;
    dynmoe_ep *ep = NULL;
    MPI_Comm world = MPI_COMM_WORLD;
    if ((st = dynmoe_ep_create_mpi(&ep, &world, &cfg))) die(rank, "dynmoe_ep_create_mpi", st);
    int32_t L = 0;
    dynmoe_ep_info(ep, NULL, NULL, &L);

    const size_t esz = dt == DYNMOE_F32 ? 4 : 2;
    rs += (uint64_t)rank * 7919u;
    dynmoe_experts lx = DYNMOE_EXPERTS_INIT;
    lx.num_experts = L;
    lx.hidden = H;
    lx.inter = In;
    lx.dtype = dt;
    void *w13 = L ? xalloc((size_t)L * 2 * In * H * esz) : NULL, *w2 = L ? xalloc((size_t)L * H * In * esz) : NULL;
    if (L) {
        fill(w13, (size_t)L * 2 * In * H, dt, 0.02f);
        fill(w2, (size_t)L * H * In, dt, 0.02f);
    }
    lx.w13 = w13;
    lx.w2 = w2;
    void *x = xalloc((size_t)T * H * esz + 16), *out = xalloc((size_t)T * H * esz + 16);
    float *logits = xalloc(sizeof(float) * (size_t)T * E + 16);
    fill(x, (size_t)T * H, dt, 1.0f);
    for (int64_t i = 0; i < T * E; i++) logits[i] = urand() + (skew && (i % E) < E / R && urand() < 0.6f ? 3.0f : 0.0f);
    size_t wsb = dynmoe_ep_workspace_size(ep, &router, &lx, mode);
    if (!wsb) die(rank, "dynmoe_ep_workspace_size", DYNMOE_ERR_INVALID_ARGUMENT);
    void *ws = xalloc(wsb);
    memset(ws, 0, wsb);
    dynmoe_stats stats;
    dynmoe_ctx_set_stats(ctx, &stats);

    double *tp[5];
    for (int j = 0; j < 5; j++) tp[j] = calloc((size_t)iters, sizeof(double));
    /* One rank holds every expert: the single-process layer on the same tokens
     * and weights is the baseline of the ep overhead, timed in alternation
     * with the ep forward so that both see the same machine load. */
    const int baseline = R == 1 && T > 0;
    size_t bwsb = baseline ? dynmoe_workspace_size(&router, &lx, T) : 0;
    void *bws = baseline ? xalloc(bwsb) : NULL;
    if (bws) memset(bws, 0, bwsb);
    double *tb = calloc((size_t)iters, sizeof(double)), base_ms = 0;
    int64_t rows = 0, overflow = 0, sent = 0;
    for (int it = -warmup; it < iters; it++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, T, x, logits, DYNMOE_F32, NULL, NULL, out, ws, wsb, mode, NULL);
        double t1 = MPI_Wtime();
        if (st) die(rank, "dynmoe_ep_moe_forward", st);
        if (it < 0) continue;
        double s[4];
        dynmoe_ep_last_times(ep, s);
        for (int j = 0; j < 4; j++) tp[j][it] = 1e3 * s[j];
        tp[4][it] = 1e3 * (t1 - t0);
        sent = stats.routed_slots;
        overflow = stats.overflow_slots;
        rows = stats.max_expert_rows; /* busiest local expert */
        if (baseline) {
            t0 = MPI_Wtime();
            st = dynmoe_moe_forward(ctx, &router, &lx, T, x, logits, DYNMOE_F32, NULL, NULL, out, bws, bwsb, NULL);
            if (st) die(rank, "dynmoe_moe_forward", st);
            tb[it] = 1e3 * (MPI_Wtime() - t0);
        }
    }
    if (baseline) base_ms = median(tb, iters);
    free(tb);
    free(bws);
    double med[5];
    for (int j = 0; j < 5; j++) med[j] = median(tp[j], iters);
    double all[5 * 64 + 5];
    long long cnt[3] = {sent, overflow, rows}, allc[3 * 64];
    MPI_Gather(med, 5, MPI_DOUBLE, all, 5, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    MPI_Gather(cnt, 3, MPI_LONG_LONG, allc, 3, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        const char *thr = getenv("OMP_NUM_THREADS");
        char load[64] = "?";
        FILE *lf = fopen("/proc/loadavg", "r"); /* the machine may be shared: say how busy it was */
        if (lf) {
            if (!fgets(load, sizeof load, lf)) snprintf(load, sizeof load, "?");
            load[strcspn(load, "\n")] = 0;
            fclose(lf);
        }
        printf("dynmoe-ep-bench: preset %s E %d K %d H %d I %d, %s, %s mode%s, %d rank(s), %lld tokens per rank, "
               "OMP_NUM_THREADS=%s, median of %d, loadavg %s\n",
               p.name, E, K, H, In, dt == DYNMOE_F32 ? "f32" : "bf16",
               mode == DYNMOE_EP_EXACT ? "exact" : "capacity", skew ? ", skewed routing" : "", R, (long long)T,
               thr ? thr : "(unset)", iters, load);
        printf("%4s %9s %10s %9s %9s %9s %8s %9s %9s\n", "rank", "route_ms", "exchange_ms", "experts_ms",
               "combine_ms", "total_ms", "slots", "overflow", "max_rows");
        double layer = 0;
        for (int r = 0 < R ? 0 : 0; r < R && r < 64; r++) {
            const double *m = all + 5 * r;
            printf("%4d %9.3f %10.3f %10.3f %10.3f %9.3f %8lld %9lld %9lld\n", r, m[0], m[1], m[2], m[3], m[4],
                   allc[3 * r], allc[3 * r + 1], allc[3 * r + 2]);
            if (m[4] > layer) layer = m[4];
            if (json)
                printf("{\"bench\":\"ep\",\"preset\":\"%s\",\"ranks\":%d,\"rank\":%d,\"tokens_per_rank\":%lld,"
                       "\"dtype\":\"%s\",\"mode\":\"%s\",\"route_ms\":%.4f,\"exchange_ms\":%.4f,\"experts_ms\":%.4f,"
                       "\"combine_ms\":%.4f,\"total_ms\":%.4f,\"slots\":%lld,\"overflow\":%lld}\n",
                       p.name, R, r, (long long)T, dt == DYNMOE_F32 ? "f32" : "bf16",
                       mode == DYNMOE_EP_EXACT ? "exact" : "capacity", m[0], m[1], m[2], m[3], m[4], allc[3 * r],
                       allc[3 * r + 1]);
        }
        const double flops = 2.0 * 3.0 * In * H * (double)K * (double)T * R;
        printf("layer (slowest rank) %.3f ms, %.0f tokens/s, %.1f GFLOP/s on the routed FLOPs\n", layer,
               1e3 * (double)T * R / layer, flops / (layer * 1e6));
        if (base_ms > 0)
            printf("baseline dynmoe_moe_forward (1 process, same tokens and weights) %.3f ms: ep / baseline %.3f\n",
                   base_ms, layer / base_ms);
    }
    dynmoe_ctx_set_stats(ctx, NULL);
    dynmoe_ep_destroy(ep);
    dynmoe_ctx_destroy(ctx);
    for (int j = 0; j < 5; j++) free(tp[j]);
    free(w13);
    free(w2);
    free(x);
    free(out);
    free(logits);
    free(ws);
    MPI_Finalize();
    return 0;
}
