#include <cuda_runtime.h>
#include <cstdio>
#include <random>
#include "plan.emu.inc"
extern "C" dynmoe_status dm_fail(dynmoe_status s, const char *f, ...) { printf("dm_fail: %s\n", f); return s; }
static std::mt19937_64 rng(99);
static int I(int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); }
int main() {
    int bad = 0;
    for (int trial = 0; trial < 40; trial++) {
        int E = std::vector<int>{1, 3, 8, 64, 128, 256, 700, 1021}[I(0, 7)], Z = I(0, 1) ? I(1, 3) : 0;
        int S = I(1, 16); int64_t T = std::vector<int64_t>{1, 7, 100, 256, 300, 700, 1500}[I(0, 6)];
        int64_t n = T * S;
        std::vector<int32_t> ids(n);
        bool hot = I(0, 3) == 0;
        for (auto &v : ids) v = hot && I(0, 1) ? 0 : I(-3, E + Z + 2);
        /* reference: csrc/cpu/plan.c */
        std::vector<int32_t> rc(E, 0), ro(E + 1), rs, rr(n, -1), ra; int64_t empty = 0, zero = 0, inv = 0;
        for (auto id : ids) { if (id >= 0 && id < E) rc[id]++; else if (id == -1) empty++; else if (id >= E && id < E + Z) zero++; else inv++; }
        int acc = 0, mx = 0; std::vector<int32_t> cur(E);
        for (int e = 0; e < E; e++) { ro[e] = acc; cur[e] = acc; acc += rc[e]; if (rc[e]) ra.push_back(e); mx = std::max(mx, rc[e]); }
        ro[E] = acc; rs.resize(acc);
        for (int64_t i = 0; i < n; i++) { int id = ids[i]; if (id >= 0 && id < E) { rs[cur[id]] = (int)i; rr[i] = cur[id]++; } }
        /* device */
        std::vector<int32_t> counts(E, -7), offs(E + 1, -7), ss(n, -7), sr(n, -7), act(E, -7), na(1, -7);
        size_t temp_bytes = 16 * n + 8 * E + 262144;
        std::vector<char> tempv(temp_bytes + 256); char *temp = (char *)(((uintptr_t)tempv.data() + 255) & ~(uintptr_t)255);
        dynmoe_stats st; memset(&st, 0x77, sizeof st);
        dm_plan_args a{};
        a.num_experts = E; a.num_zero_experts = Z; a.T = T; a.slots = S; a.ids = ids.data();
        a.plan = dynmoe_plan{E, n, counts.data(), offs.data(), ss.data(), sr.data(), act.data(), na.data()};
        a.temp = temp; a.temp_bytes = temp_bytes; a.stats = &st;
        dynmoe_status s = dm_cuda_plan(nullptr, &a, nullptr);
        bool ok = s == DYNMOE_OK && counts == rc && offs == ro && sr == rr && na[0] == (int)ra.size() &&
                  std::equal(rs.begin(), rs.end(), ss.begin()) && std::equal(ra.begin(), ra.end(), act.begin()) &&
                  st.tokens == T && st.routed_slots == acc && st.empty_slots == empty && st.zero_expert_slots == zero &&
                  st.invalid_ids == inv && st.active_experts == (int64_t)ra.size() && st.max_expert_rows == mx;
        printf("trial %2d E %4d Z %d T %5ld S %2d n %6ld %s: %s\n", trial, E, Z, (long)T, S, (long)n, n <= DM_PLAN_SMALL ? "small" : "multi", ok ? "ok" : "MISMATCH");
        bad += !ok;
    }
    printf("plan emulation: %d mismatches\n", bad);
    return (bad) || emu::launch_errors;
}
