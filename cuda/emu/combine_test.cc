#include <cuda_runtime.h>
#include <cstdio>
#include <random>
#include "combine.emu.inc"
extern "C" dynmoe_status dm_fail(dynmoe_status s, const char *, ...) { return s; }
static std::mt19937_64 rng(5);
static int I(int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); }
int main() {
    int bad = 0;
    for (int trial = 0; trial < 40; trial++) {
        int E = I(1, 20), Z = I(0, 4), S = I(1, 12), H = std::vector<int>{1, 3, 4, 8, 100, 1030, 2048}[I(0, 6)];
        int64_t T = I(1, 5);
        dynmoe_dtype dt = (dynmoe_dtype)I(0, 2);
        int identity = I(0, 1), on_input = I(0, 1); /* router.weight_on_input: real rows unweighted */
        std::vector<int32_t> ids(T * S), slot_rows(T * S, -1); std::vector<float> w(T * S);
        int rows = 0;
        for (int64_t i = 0; i < T * S; i++) { ids[i] = I(-3, E + Z + 1); w[i] = I(-10, 10) / 4.0f; if (ids[i] >= 0 && ids[i] < E) slot_rows[i] = rows++; }
        std::vector<float> y((size_t)rows * H), xf(T * H);
        for (auto &v : y) v = I(-100, 100) / 16.0f;
        for (auto &v : xf) v = I(-100, 100) / 16.0f;
        std::vector<uint16_t> xh(xf.size()), oh(T * H, 0xdead); std::vector<float> of(T * H, -999);
        for (size_t i = 0; i < xf.size(); i++) xh[i] = dt == DYNMOE_BF16 ? dm_f32_to_bf16(xf[i]) : dm_f32_to_f16(xf[i]);
        std::vector<uint16_t> yh(y.size()); /* rows_y in experts.dtype, as cuda/experts.cu writes it */
        for (size_t i = 0; i < y.size(); i++) yh[i] = dt == DYNMOE_BF16 ? dm_f32_to_bf16(y[i]) : dm_f32_to_f16(y[i]);
        const void *xp = dt == DYNMOE_F32 ? (const void *)xf.data() : xh.data();
        void *op = dt == DYNMOE_F32 ? (void *)of.data() : oh.data();
        dm_experts_args a{};
        a.router = DYNMOE_ROUTER_INIT; a.router.num_experts = E; a.router.num_zero_experts = Z;
        a.router.zero_kind = identity ? DYNMOE_ZERO_IDENTITY : DYNMOE_ZERO_OUTPUT;
        a.router.weight_on_input = on_input;
        a.experts = DYNMOE_EXPERTS_INIT; a.experts.hidden = H; a.experts.dtype = dt;
        a.T = T; a.x = xp; a.ids = ids.data(); a.weights = w.data(); a.slots = S; a.plan.slot_rows = slot_rows.data();
        a.rows_y = dt == DYNMOE_F32 ? (void *)y.data() : (void *)yh.data(); a.out = op;
        dm_cuda_combine(nullptr, &a, nullptr);
        int nb = 0;
        for (int64_t t = 0; t < T; t++) for (int h = 0; h < H; h++) { /* csrc/cpu/combine.c */
            float acc = 0;
            for (int k = 0; k < S; k++) { int64_t s = t * S + k; int id = ids[s];
                if (id >= 0 && id < E) acc += (on_input ? 1.0f : w[s]) * y[(int64_t)slot_rows[s] * H + h];
                else if (identity && id >= E && id < E + Z) acc += w[s] * dm_load(xp, dt, t * H + h); }
            const float want = dt == DYNMOE_F32    ? acc
                               : dt == DYNMOE_BF16 ? dm_bf16_to_f32(dm_f32_to_bf16(acc))
                                                   : dm_f16_to_f32(dm_f32_to_f16(acc));
            float got = dm_load(op, dt, t * H + h);
            if (got != want) nb++;
        }
        bad += nb != 0;
        if (nb) printf("trial %d H %d dt %d on_input %d: %d mismatches\n", trial, H, dt, on_input, nb);
    }
    printf("combine emulation: %d bad trials\n", bad);
    return (bad) || emu::launch_errors;
}
