#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <cstdarg>
#include "route.emu.inc"
extern "C" dynmoe_status dm_fail(dynmoe_status s, const char *, ...) { return s; }

static std::mt19937_64 rng(12345);
static float U(float a, float b) { return std::uniform_real_distribution<float>(a, b)(rng); }
static int I(int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); }

int main() {
    int bad_ids = 0, bad_w = 0, cases = 0, bad_stats = 0;
    for (int trial = 0; trial < 120; trial++) {
        dynmoe_router r = DYNMOE_ROUTER_INIT;
        int E = std::vector<int>{1, 4, 8, 16, 64, 128, 256, 512, 1000, 1024}[I(0, 9)];
        int Z = I(0, 3) == 0 ? I(1, 40) : 0;
        if (E + Z > 1024) Z = 0;
        int N = E + Z;
        r.num_experts = E; r.num_zero_experts = Z;
        r.top_k = I(1, std::min(N, 64));
        r.score = (dynmoe_score)I(0, 2);
        r.select = (dynmoe_select)I(0, 2);
        r.top_p = U(0.1f, 1.0f);
        r.threshold = r.score == DYNMOE_SCORE_NONE ? U(-0.5f, 0.5f) : U(0.0f, 0.02f);
        r.norm = (dynmoe_norm)I(0, 3);
        r.scale = U(0.5f, 3.0f);
        if (I(0, 2) == 0 && E >= 8) { int g[] = {2, 4, 8}; r.num_groups = g[I(0, 2)]; r.topk_groups = I(1, r.num_groups); }
        bool use_bias = I(0, 1), use_mask = I(0, 1);
        dynmoe_dtype dt = (dynmoe_dtype)I(0, 2);
        int64_t T = I(1, 13);
        std::vector<float> lf(T * N), mf(T * E), bias(N);
        for (auto &v : lf) v = U(-4, 4);
        for (auto &v : mf) v = U(-1, 1);
        for (auto &v : bias) v = U(-0.2f, 0.2f);
        /* some non-finite entries and one all-NaN row */
        for (int q = 0; q < 3; q++) lf[I(0, (int)lf.size() - 1)] = q == 0 ? NAN : (q == 1 ? INFINITY : -INFINITY);
        if (T > 2) for (int e = 0; e < N; e++) lf[1 * N + e] = NAN;
        std::vector<uint16_t> lh(T * N), mh(T * E);
        for (size_t i = 0; i < lf.size(); i++) { lh[i] = dt == DYNMOE_BF16 ? dm_f32_to_bf16(lf[i]) : dm_f32_to_f16(lf[i]); }
        for (size_t i = 0; i < mf.size(); i++) { mh[i] = dt == DYNMOE_BF16 ? dm_f32_to_bf16(mf[i]) : dm_f32_to_f16(mf[i]); }
        const void *lp = dt == DYNMOE_F32 ? (const void *)lf.data() : (const void *)lh.data();
        const void *mp = use_mask ? (dt == DYNMOE_F32 ? (const void *)mf.data() : (const void *)mh.data()) : nullptr;
        std::vector<int32_t> ids(T * r.top_k, 12345); std::vector<float> w(T * r.top_k, 777.f);
        dynmoe_stats st; memset(&st, 0x5a, sizeof st);
        dm_route_args a{r, T, lp, dt, use_bias ? bias.data() : nullptr, mp, ids.data(), w.data(), &st};
        if (dm_cuda_route(nullptr, &a, nullptr) != DYNMOE_OK) return 2;
        /* serial reference */
        int64_t nonfinite = 0, empty = 0, zero = 0;
        for (int64_t t = 0; t < T; t++) {
            std::vector<float> row(N), mrow(E);
            for (int e = 0; e < N; e++) row[e] = dm_load(lp, dt, t * N + e);
            for (int e = 0; e < E; e++) mrow[e] = mp ? dm_load(mp, dt, t * E + e) : 0;
            static dm_token_scratch scr;
            std::vector<int32_t> rid(r.top_k); std::vector<float> rw(r.top_k);
            nonfinite += dm_route_token_serial(&r, row.data(), use_bias ? bias.data() : nullptr, mp ? mrow.data() : nullptr, &scr, rid.data(), rw.data());
            for (int k = 0; k < r.top_k; k++) {
                cases++;
                empty += rid[k] < 0; zero += rid[k] >= E;
                if (rid[k] != ids[t * r.top_k + k]) { bad_ids++; if (bad_ids < 5) printf("trial %d t %ld k %d: id %d vs ref %d\n", trial, (long)t, k, ids[t * r.top_k + k], rid[k]); }
                else if (std::fabs(rw[k] - w[t * r.top_k + k]) > 1e-5f * (1 + std::fabs(rw[k]))) { bad_w++; if (bad_w < 5) printf("trial %d w %g vs %g\n", trial, w[t*r.top_k+k], rw[k]); }
            }
        }
        if (st.nonfinite_rows != nonfinite || st.empty_slots != empty || st.zero_expert_slots != zero || st.tokens != T) {
            bad_stats++; printf("trial %d stats nf %ld/%ld empty %ld/%ld zero %ld/%ld tokens %ld\n", trial, (long)st.nonfinite_rows, (long)nonfinite, (long)st.empty_slots, (long)empty, (long)st.zero_expert_slots, (long)zero, (long)st.tokens);
        }
    }
    printf("route emulation: %d slots, %d id mismatches, %d weight mismatches, %d stats mismatches\n", cases, bad_ids, bad_w, bad_stats);
    return (bad_ids || bad_w || bad_stats) || emu::launch_errors;
}
