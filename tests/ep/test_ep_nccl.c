/* test_ep_nccl.c — expert parallelism over NCCL on the CUDA backend: one
 * process, one thread per visible GPU (up to 8), communicators from
 * ncclCommInitAll. Every rank's sharded forward is compared with the
 * single-GPU dynmoe_moe_forward of its slice on the same device (fp32,
 * relative error < 1e-6); capacity mode with the documented drop order and
 * stats.overflow_slots. With one GPU the path still runs (sends to self).
 * Without a CUDA device it prints a SKIP line and "0 passed, 0 failed". */
#define _POSIX_C_SOURCE 200809L /* pthread barriers under -std=c11 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "dynmoe.h"

#define MAXDEV 8
#define H_ 128
#define I_ 96

typedef struct nc_case {
    const char *name;
    int E, Z;
    dynmoe_zero_kind zero_kind;
    int K;
    dynmoe_score score;
    dynmoe_norm norm;
    int groups, topk_groups;
    float scale;
    int bias, mask, skew, starve, empty_rank;
    dynmoe_ep_mode mode;
    int capacity;
    int agree; /* the last rank passes T > max_tokens: every rank must get its error */
} nc_case;

static const nc_case cases[] = {
    {"topk exact", 16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, 0, 0, 0, DYNMOE_EP_EXACT, 0, 0},
    {"topk skewed + starved, T=0 rank", 16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, 1, 1, 1, DYNMOE_EP_EXACT, 0, 0},
    {"deepseek grouped exact", 16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED, 4, 2, 2.5f, 1, 0, 0, 0, 0, DYNMOE_EP_EXACT, 0, 0},
    {"beam mask exact", 16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 1, 0, 0, 0, DYNMOE_EP_EXACT, 0, 0},
    {"longcat identity zero exact", 16, 8, DYNMOE_ZERO_IDENTITY, 6, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_NONE, 0, 0, 1.0f, 1, 0, 0, 0, 0, DYNMOE_EP_EXACT, 0, 0},
    {"topk capacity lossless", 16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, 1, 0, 0, DYNMOE_EP_CAPACITY, 0, 0},
    {"topk capacity overflow", 16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, 1, 1, 0, DYNMOE_EP_CAPACITY, 5, 0},
    {"longcat capacity overflow", 16, 8, DYNMOE_ZERO_IDENTITY, 6, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_NONE, 0, 0, 1.0f, 1, 0, 1, 0, 0, DYNMOE_EP_CAPACITY, 4, 0},
    {"agree: last rank's T > max_tokens", 16, 0, DYNMOE_ZERO_OUTPUT, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 0, 0, 1.0f, 0, 0, 0, 0, 0, DYNMOE_EP_EXACT, 0, 1},
};

static int ndev;
static ncclComm_t comms[MAXDEV];
static pthread_barrier_t barrier;
static const nc_case *cur;
static int ok_of[MAXDEV], setup_ok[MAXDEV];
static double err_of[MAXDEV];
static long long ovf_of[MAXDEV];
static char msg_of[MAXDEV][256];

static int tokens_of(const nc_case *c, int r) { return c->empty_rank && ndev > 1 && r == ndev - 1 ? 0 : 13 + 5 * r; }

static float urand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 40) * (1.0 / (1ull << 24))) * 2.0f - 1.0f;
}

static void *dev_copy(const void *h, size_t bytes) {
    void *d = NULL;
    if (cudaMalloc(&d, bytes + 256) != cudaSuccess) return NULL;
    if (h) cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    return d;
}

/* The documented owner of a slot, contiguous map. */
static int owner(int E, int e) {
    for (int r = 0; r < ndev; r++)
        if ((long long)r * E / ndev <= e && e < (long long)(r + 1) * E / ndev) return r;
    return -1;
}

#define FAIL(...)                                                         \
    do {                                                                  \
        snprintf(msg_of[rank], sizeof msg_of[rank], __VA_ARGS__);        \
        ok_of[rank] = 0;                                                  \
        goto out;                                                         \
    } while (0)

#define FAIL_EARLY(...)                                                   \
    do {                                                                  \
        snprintf(msg_of[rank], sizeof msg_of[rank], __VA_ARGS__);        \
        ok_of[rank] = setup_ok[rank] = 0;                                 \
        goto sync;                                                        \
    } while (0)

static void *rank_main(void *arg) {
    const int rank = (int)(intptr_t)arg, R = ndev;
    const nc_case *c = cur;
    const int E = c->E, Z = c->Z, EZ = E + Z, K = c->K, H = H_, In = I_;
    ok_of[rank] = setup_ok[rank] = 1;
    msg_of[rank][0] = 0;
    err_of[rank] = 0;
    ovf_of[rank] = 0;
    cudaSetDevice(rank);
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    int64_t Ttot = 0, T0 = 0, maxT = 1;
    for (int r = 0; r < R; r++) {
        int64_t t = tokens_of(c, r);
        if (r < rank) T0 += t;
        Ttot += t;
        if (t > maxT) maxT = t;
    }
    const int64_t T = tokens_of(c, rank);
    uint64_t seed = 4242 + (uint64_t)(c - cases);
    float *x = malloc(sizeof(float) * (Ttot * H + 1)), *lg = malloc(sizeof(float) * (Ttot * EZ + 1));
    float *mk = malloc(sizeof(float) * (Ttot * E + 1)), *bias = malloc(sizeof(float) * EZ);
    const size_t w13n = (size_t)2 * In * H, w2n = (size_t)H * In;
    float *w13 = malloc(sizeof(float) * E * w13n), *w2 = malloc(sizeof(float) * E * w2n);
    for (int64_t i = 0; i < Ttot * H; i++) x[i] = urand(&seed);
    for (int64_t t = 0; t < Ttot; t++)
        for (int e = 0; e < EZ; e++) {
            float v = 2.0f * urand(&seed);
            if (c->skew && e < E && owner(E, e) == 0 && urand(&seed) < 0.8f) v += 3.0f;
            if (c->starve && R > 1 && e < E && owner(E, e) == R - 1) v = -30.0f;
            lg[t * EZ + e] = v;
        }
    for (int64_t i = 0; i < Ttot * E; i++) mk[i] = urand(&seed);
    for (int e = 0; e < EZ; e++) bias[e] = 0.3f * urand(&seed);
    for (size_t i = 0; i < E * w13n; i++) w13[i] = 0.2f * urand(&seed);
    for (size_t i = 0; i < E * w2n; i++) w2[i] = 0.2f * urand(&seed);

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

    dynmoe_ctx *ctx = NULL;
    dynmoe_ep *ep = NULL;
    void *d_x = NULL, *d_lg = NULL, *d_mk = NULL, *d_bias = NULL, *d_w13 = NULL, *d_w2 = NULL, *d_lw13 = NULL,
         *d_lw2 = NULL, *d_ws = NULL, *d_out = NULL, *d_ref = NULL, *d_rws = NULL, *d_stats = NULL, *d_ids = NULL,
         *d_wts = NULL;
    float *out = NULL, *ref = NULL;
    int32_t *ids = NULL;
    size_t wsb = 0;
    const float *bp = NULL;
    const void *mp = NULL;
    dynmoe_experts gx = DYNMOE_EXPERTS_INIT, lx = DYNMOE_EXPERTS_INIT;
    dynmoe_status st = dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_CUDA, rank);
    if (st) FAIL_EARLY("ctx: %s", dynmoe_last_error());
    dynmoe_ep_config cfg = DYNMOE_EP_CONFIG_INIT;
    cfg.num_experts = E;
    cfg.max_tokens = maxT;
    cfg.capacity = c->capacity;
    if ((st = dynmoe_ep_create_nccl(&ep, &comms[rank], &cfg))) FAIL_EARLY("create: %s", dynmoe_last_error());
    int32_t L = 0, lids[64];
    dynmoe_ep_info(ep, NULL, NULL, &L);
    dynmoe_ep_local_experts(ep, lids);
    float *lw13 = malloc(sizeof(float) * (L * w13n + 1)), *lw2 = malloc(sizeof(float) * (L * w2n + 1));
    for (int j = 0; j < L; j++) {
        memcpy(lw13 + j * w13n, w13 + lids[j] * w13n, sizeof(float) * w13n);
        memcpy(lw2 + j * w2n, w2 + lids[j] * w2n, sizeof(float) * w2n);
    }
    d_x = dev_copy(x + T0 * H, sizeof(float) * T * H);
    d_lg = dev_copy(lg + T0 * EZ, sizeof(float) * T * EZ);
    d_mk = dev_copy(mk + T0 * E, sizeof(float) * T * E);
    d_bias = dev_copy(bias, sizeof(float) * EZ);
    d_w13 = dev_copy(w13, sizeof(float) * E * w13n);
    d_w2 = dev_copy(w2, sizeof(float) * E * w2n);
    d_lw13 = L ? dev_copy(lw13, sizeof(float) * L * w13n) : NULL;
    d_lw2 = L ? dev_copy(lw2, sizeof(float) * L * w2n) : NULL;
    free(lw13);
    free(lw2);
    d_out = dev_copy(NULL, sizeof(float) * T * H);
    d_ref = dev_copy(NULL, sizeof(float) * T * H);
    d_stats = dev_copy(NULL, sizeof(dynmoe_stats));
    gx.num_experts = E;
    gx.hidden = H;
    gx.inter = In;
    gx.w13 = d_w13;
    gx.w2 = d_w2;
    lx = gx;
    lx.num_experts = L;
    lx.w13 = d_lw13;
    lx.w2 = d_lw2;
    wsb = dynmoe_ep_workspace_size(ep, &router, &lx, c->mode);
    d_ws = dev_copy(NULL, wsb);
    cudaMemset(d_ws, 0xff, wsb);
    cudaMemset(d_out, 0xff, sizeof(float) * T * H); /* NaN: an unwritten element fails */
    bp = c->bias ? d_bias : NULL;
    mp = c->mask ? d_mk : NULL;
    dynmoe_ctx_set_stats(ctx, d_stats);
    if (wsb == 0 || !d_ws || !d_out || !d_ref || !d_stats) FAIL_EARLY("setup: %s", dynmoe_last_error());
sync:
    /* Every rank reaches this point; if one failed to set up, none communicates. */
    pthread_barrier_wait(&barrier);
    for (int r = 0; r < R; r++)
        if (!setup_ok[r]) {
            if (!msg_of[rank][0]) snprintf(msg_of[rank], sizeof msg_of[rank], "rank %d failed to set up", r);
            ok_of[rank] = 0;
            goto out;
        }
    if (c->agree) { /* exact mode agrees: every rank returns the last rank's error */
        st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, rank == R - 1 ? maxT + 1 : T, d_x, d_lg, DYNMOE_F32, bp,
                                   mp, d_out, d_ws, wsb, c->mode, stream);
        char want[32];
        snprintf(want, sizeof want, "rank %d of %d", R - 1, R);
        if (st != DYNMOE_ERR_INVALID_ARGUMENT || !strstr(dynmoe_last_error(), want))
            FAIL("agree: %s %s (wanted %s)", dynmoe_status_name(st), dynmoe_last_error(), want);
        goto out;
    }
    st = dynmoe_ep_moe_forward(ep, ctx, &router, &lx, T, d_x, d_lg, DYNMOE_F32, bp, mp, d_out, d_ws, wsb, c->mode,
                               stream);
    dynmoe_ctx_set_stats(ctx, NULL);
    if (st) FAIL("forward: %s %s", dynmoe_status_name(st), dynmoe_last_error());
    if (cudaStreamSynchronize(stream) != cudaSuccess) FAIL("forward: %s", cudaGetErrorString(cudaGetLastError()));
    dynmoe_stats stats;
    cudaMemcpy(&stats, d_stats, sizeof stats, cudaMemcpyDeviceToHost);

    /* reference: the whole layer on this GPU for this slice */
    long long expect_ovf = 0;
    if (T > 0) {
        size_t rws = dynmoe_workspace_size(&router, &gx, T);
        d_rws = dev_copy(NULL, rws);
        if (c->mode == DYNMOE_EP_EXACT) {
            st = dynmoe_moe_forward(ctx, &router, &gx, T, d_x, d_lg, DYNMOE_F32, bp, mp, d_ref, d_rws, rws, stream);
        } else {
            d_ids = dev_copy(NULL, sizeof(int32_t) * T * K);
            d_wts = dev_copy(NULL, sizeof(float) * T * K);
            st = dynmoe_route(ctx, &router, T, d_lg, DYNMOE_F32, bp, mp, d_ids, d_wts, stream);
            cudaStreamSynchronize(stream);
            ids = malloc(sizeof(int32_t) * T * K);
            cudaMemcpy(ids, d_ids, sizeof(int32_t) * T * K, cudaMemcpyDeviceToHost);
            long long cap = c->capacity ? c->capacity : maxT * K, used[MAXDEV] = {0};
            for (int64_t s = 0; s < T * K; s++)
                if (ids[s] >= 0 && ids[s] < E) {
                    int d = owner(E, ids[s]);
                    if (used[d] >= cap) ids[s] = -1, expect_ovf++;
                    else used[d]++;
                }
            cudaMemcpy(d_ids, ids, sizeof(int32_t) * T * K, cudaMemcpyHostToDevice);
            if (st == DYNMOE_OK)
                st = dynmoe_experts_forward(ctx, &router, &gx, T, d_x, d_ids, d_wts, K, d_ref, d_rws, rws, stream);
        }
        if (st) FAIL("reference: %s", dynmoe_last_error());
        cudaStreamSynchronize(stream);
    }
    out = malloc(sizeof(float) * (T * H + 1));
    ref = malloc(sizeof(float) * (T * H + 1));
    cudaMemcpy(out, d_out, sizeof(float) * T * H, cudaMemcpyDeviceToHost);
    cudaMemcpy(ref, d_ref, sizeof(float) * T * H, cudaMemcpyDeviceToHost);
    double num = 0, den = 0;
    for (int64_t i = 0; i < T * H; i++) {
        if (!isfinite(out[i])) FAIL("out[%lld] is not finite", (long long)i);
        num += ((double)out[i] - ref[i]) * ((double)out[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    err_of[rank] = den > 0 ? sqrt(num / den) : sqrt(num);
    if (!(err_of[rank] < 1e-6)) FAIL("rel err %.3g", err_of[rank]);
    ovf_of[rank] = stats.overflow_slots;
    if (stats.overflow_slots != expect_ovf)
        FAIL("stats.overflow_slots %lld, expected %lld", (long long)stats.overflow_slots, expect_ovf);
out:
    dynmoe_ep_destroy(ep);
    dynmoe_ctx_destroy(ctx);
    void *bufs[] = {d_x, d_lg, d_mk, d_bias, d_w13, d_w2, d_lw13, d_lw2, d_ws, d_out, d_ref, d_rws, d_stats, d_ids, d_wts};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) cudaFree(bufs[i]);
    cudaStreamDestroy(stream);
    free(x);
    free(lg);
    free(mk);
    free(bias);
    free(w13);
    free(w2);
    free(out);
    free(ref);
    free(ids);
    return NULL;
}

int main(void) {
    int count = 0, pass = 0, fail = 0;
    if (!dynmoe_cuda_available() || cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("[SKIP] expert parallelism over NCCL: no CUDA device visible\n0 passed, 0 failed\n");
        return 0;
    }
    ndev = count < MAXDEV ? count : MAXDEV;
    if (ncclCommInitAll(comms, ndev, NULL) != ncclSuccess) {
        printf("ncclCommInitAll failed\n0 passed, 1 failed\n");
        return 1;
    }
    printf("dynmoe expert parallelism over NCCL: %d GPU(s), one thread each\n", ndev);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cur = &cases[i];
        pthread_t th[MAXDEV];
        pthread_barrier_init(&barrier, NULL, (unsigned)ndev);
        for (int r = 0; r < ndev; r++) pthread_create(&th[r], NULL, rank_main, (void *)(intptr_t)r);
        for (int r = 0; r < ndev; r++) pthread_join(th[r], NULL);
        pthread_barrier_destroy(&barrier);
        int ok = 1;
        double emax = 0;
        long long ovf = 0;
        const char *why = "";
        for (int r = 0; r < ndev; r++) {
            if (!ok_of[r] && ok) ok = 0, why = msg_of[r];
            if (err_of[r] > emax) emax = err_of[r];
            ovf += ovf_of[r];
        }
        if (ok) pass++;
        else fail++;
        printf("[%s] %-36s max rel err %.2e, overflow %lld %s\n", ok ? "PASS" : "FAIL", cur->name, emax, ovf, why);
    }
    for (int r = 0; r < ndev; r++) ncclCommDestroy(comms[r]);
    printf("%d passed, %d failed\n", pass, fail);
    return fail ? 1 : 0;
}
