/*
 * test_large.cc — index arithmetic past 2^31 (DESIGN.md section 6:
 * "T*K*H > 2^31"), sized to stay near 2.5 GB of host memory:
 *
 *  - Plan: T = 2^18 tokens x S = 64 slots = 2^24 slots (T*S*H passes 2^31 for
 *    any H >= 128): the whole plan compared exactly with the reference.
 *  - Forward: T = 4097, K = E = 64 (every token on every expert: 262,208
 *    rows), H = 2304, I = 8. The fp32 expert-output rows of the workspace
 *    span 262,208 * 2304 * 4 B = 2.42 GB, so byte offsets of the later rows
 *    pass 2^31; T*K*H = 6.0e8 elements. A forward with T*K*H > 2^31 *elements*
 *    would need an 8.6 GB fp32 row buffer, which a 2-core CI machine cannot
 *    hold; the plan case covers the element-index range instead.
 *  The output is compared with the reference on a sample of tokens (first,
 *  last, middle and random ones): every token has a row in every expert, so
 *  the sample reaches rows across the whole buffer.
 */
#include "cases.h"
#include "run.h"

using namespace dmtest;

class LargeIndex : public BackendTest {};
DYNMOE_INSTANTIATE_BACKENDS(LargeIndex);

TEST_P(LargeIndex, Plan) {
    const int64_t T = 1 << 18;
    const int32_t S = 64, E = 256, Z = 16;
    dynmoe_router r = make_router(E, S);
    r.num_zero_experts = Z;
    const uint64_t seed = base_seed() + 77;
    SCOPED_TRACE("seed=" + std::to_string(seed));
    Rng rng(seed);
    std::vector<int32_t> ids((size_t)(T * S));
    for (auto &id : ids) {
        const uint64_t u = rng.gen();
        id = (int32_t)(u % (E + Z + 2)) - 1; /* -1, real, zero, and E+Z (invalid) */
    }
    PlanOut o = run_plan(ctx_, backend(), r, T, S, ids, true, false);
    ASSERT_EQ(o.status, DYNMOE_OK);
    dmref::Plan want = dmref::plan(E, T, S, ids);
    EXPECT_TRUE(ints_equal(o.plan.counts, want.counts, "expert_counts"));
    EXPECT_TRUE(ints_equal(o.plan.offsets, want.offsets, "expert_offsets"));
    EXPECT_TRUE(ints_equal(o.plan.sorted_slots, want.sorted_slots, "sorted_slots"));
    EXPECT_TRUE(ints_equal(o.plan.slot_rows, want.slot_rows, "slot_rows", S));
    EXPECT_TRUE(ints_equal(o.plan.active, want.active, "active_experts"));
    expect_stats(o.stats, dmref::table_stats(E, Z, T, S, ids, 0), ST_PLAN);
}

TEST_P(LargeIndex, ForwardRowsPast2GB) {
    const int64_t T = 4097;
    const int32_t E = 64, S = 64, H = 2304, I = 8;
    const dynmoe_dtype dt = DYNMOE_F32; /* no conversions: the library's time is its GEMMs */
    dynmoe_router r = make_router(E, S);
    const uint64_t seed = base_seed() + 78;
    SCOPED_TRACE("seed=" + std::to_string(seed));
    Rng rng(seed);
    ASSERT_GT((double)T * S * H * 4, 2147483648.0);
    dmref::Table t;
    t.T = T;
    t.S = S;
    for (int64_t tok = 0; tok < T; tok++)
        for (int32_t k = 0; k < S; k++) {
            t.ids.push_back((int32_t)((tok + k) % E));
            t.weights.push_back((float)rng.uniform(0.0, 2.0 / S));
        }
    ExpertWeights w = make_experts(E, H, I, DYNMOE_ACT_SWIGLU, dt, rng);
    Packed x = pack(rng.uniform_vec((size_t)(T * H), -1, 1), dt);
    ForwardOut o = run_experts_forward(ctx_, backend(), r, w, dt, T, x, t.ids, to_float(t.weights), S, true, false);
    ASSERT_EQ(o.status, DYNMOE_OK);
    std::vector<int64_t> sample = {0, 1, T / 2, T - 2, T - 1};
    for (int i = 0; i < 16; i++) sample.push_back(rng.integer(0, T - 1));
    std::vector<double> ref;
    dmref::experts_forward(w.ref, 0, DYNMOE_ZERO_OUTPUT, T, x.values, t, ref, sample);
    std::vector<double> got_s, ref_s;
    for (int64_t tok : sample)
        for (int32_t h = 0; h < H; h++) {
            got_s.push_back(o.out[(size_t)(tok * H + h)]);
            ref_s.push_back(ref[(size_t)(tok * H + h)]);
        }
    EXPECT_LT(rel_error(got_s, ref_s), tolerance(dt));
    size_t nonfinite = 0;
    for (double v : o.out) nonfinite += !std::isfinite(v);
    EXPECT_EQ(nonfinite, 0u) << "unwritten or non-finite outputs";
    expect_stats(o.stats, dmref::table_stats(E, 0, T, S, t.ids, 0), ST_PLAN);
}
