#include <cuda_runtime.h>
#include <cstdio>
#include <random>
#include "route.emu.inc"
extern "C" dynmoe_status dm_fail(dynmoe_status s, const char *, ...) { return s; }
static std::mt19937_64 rng(777);
static int I(int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); }
int main() {
    int bad = 0, n = 0, bad_stats = 0;
    for (int trial = 0; trial < 60; trial++) {
        dynmoe_router r = DYNMOE_ROUTER_INIT;
        int E = std::vector<int>{2, 4, 8, 16, 64}[I(0, 4)], Z = I(0, 1) ? I(1, 4) : 0, N = E + Z;
        r.num_experts = E; r.num_zero_experts = Z;
        r.num_tasks = I(1, 40); r.top_tasks = I(1, std::min(r.num_tasks, 4));
        r.top_k = I(1, std::min(N, 64 / r.top_tasks));
        r.score = (dynmoe_score)I(0, 1); r.norm = (dynmoe_norm)I(0, 3);
        r.select = I(0, 3) == 0 ? DYNMOE_SELECT_TOP_P : DYNMOE_SELECT_TOPK; r.top_p = 0.6f;
        int H = I(1, 100), R = r.num_tasks, P = r.top_tasks, K = r.top_k, S = P * K;
        dynmoe_dtype dt = (dynmoe_dtype)I(0, 2);
        int64_t T = I(1, 9);
        /* small integers / 8 (exact in every dtype, exact dot products): the
         * sums cannot depend on their order, so ids must match exactly */
        std::vector<float> xf(T * H), wf((size_t)R * N * H), tl(T * R);
        for (auto &v : xf) v = I(-8, 8) / 8.0f;
        for (auto &v : wf) v = I(-8, 8) / 8.0f;
        for (auto &v : tl) v = (float)I(-1000, 1000) / 7.0f;
        if (T > 1) for (int j = 0; j < R; j++) tl[1 * R + j] = NAN; /* no task picked */
        std::vector<uint16_t> xh(xf.size()), wh(wf.size());
        for (size_t i = 0; i < xf.size(); i++) xh[i] = dt == DYNMOE_BF16 ? dm_f32_to_bf16(xf[i]) : dm_f32_to_f16(xf[i]);
        for (size_t i = 0; i < wf.size(); i++) wh[i] = dt == DYNMOE_BF16 ? dm_f32_to_bf16(wf[i]) : dm_f32_to_f16(wf[i]);
        const void *xp = dt == DYNMOE_F32 ? (const void *)xf.data() : xh.data();
        const void *wp = dt == DYNMOE_F32 ? (const void *)wf.data() : wh.data();
        std::vector<int32_t> ids(T * S, 999); std::vector<float> w(T * S, 5.f);
        dynmoe_stats st{}; 
        dm_route_tasks_args a{r, T, xp, dt, H, tl.data(), wp, nullptr, ids.data(), w.data(), &st};
        if (dm_cuda_route_tasks(nullptr, &a, nullptr) != DYNMOE_OK) return 2;
        int64_t nonfinite = 0;
        for (int64_t t = 0; t < T; t++) { /* csrc/cpu/route.c's loop */
            static dm_token_scratch scratch; float logits[1024];
            float task_c[64]; int32_t task_id[64]; int32_t picked = 0;
            for (int32_t j = 0; j < R; j++) picked = dm_topk_insert(task_c, task_id, picked, P, tl[t * R + j], j);
            std::vector<int32_t> rid(S); std::vector<float> rw(S); int routed_any = 0;
            for (int32_t i = 0; i < P; i++) {
                if (i >= picked) { for (int k = 0; k < K; k++) { rid[i * K + k] = -1; rw[i * K + k] = 0; } continue; }
                for (int e = 0; e < N; e++) { float acc = 0; for (int h = 0; h < H; h++) acc += dm_load(wp, dt, ((int64_t)task_id[i] * N + e) * H + h) * dm_load(xp, dt, t * H + h); logits[e] = acc; }
                routed_any |= !dm_route_token_serial(&r, logits, nullptr, nullptr, &scratch, rid.data() + i * K, rw.data() + i * K);
            }
            dm_merge_duplicate_slots(S, rid.data(), rw.data());
            nonfinite += !routed_any;
            for (int k = 0; k < S; k++) { n++; if (rid[k] != ids[t * S + k] || std::fabs(rw[k] - w[t * S + k]) > 1e-5f * (1 + std::fabs(rw[k]))) { if (bad++ < 5) printf("trial %d t %ld k %d: %d/%g vs ref %d/%g\n", trial, (long)t, k, ids[t*S+k], w[t*S+k], rid[k], rw[k]); } }
        }
        if (st.nonfinite_rows != nonfinite || st.tokens != T) { bad_stats++; printf("stats %ld vs %ld\n", (long)st.nonfinite_rows, (long)nonfinite); }
    }
    printf("route_tasks emulation: %d slots, %d mismatches, %d stats mismatches\n", n, bad, bad_stats);
    return (bad || bad_stats) || emu::launch_errors;
}
