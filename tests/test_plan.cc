/*
 * test_plan.cc — dynmoe_plan_build against the reference plan: counts,
 * exclusive offsets, slots sorted by (expert, token, slot), the inverse map,
 * active experts, and the plan's stats. Integers: exact.
 */
#include <climits>

#include "cases.h"
#include "run.h"

using namespace dmtest;

namespace {

uint64_t seed_of(int salt) { return base_seed() * 1000003ull + 50000ull + (uint64_t)salt; }

/* Plans `ids` and compares everything with the reference. */
void check_plan(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r, int64_t T, int32_t S,
                const std::vector<int32_t> &ids, unsigned required = ST_PLAN) {
    PlanOut o = run_plan(ctx, b, r, T, S, ids);
    ASSERT_EQ(o.status, DYNMOE_OK);
    ASSERT_TRUE(o.pointers_ok);
    const int32_t E = r.num_experts;
    dmref::Plan want = dmref::plan(E, T, S, ids);
    EXPECT_TRUE(ints_equal(o.plan.counts, want.counts, "expert_counts"));
    EXPECT_TRUE(ints_equal(o.plan.offsets, want.offsets, "expert_offsets"));
    EXPECT_TRUE(ints_equal(o.plan.sorted_slots, want.sorted_slots, "sorted_slots"));
    EXPECT_TRUE(ints_equal(o.plan.slot_rows, want.slot_rows, "slot_rows", S));
    EXPECT_EQ(o.num_active, (int32_t)want.active.size());
    EXPECT_TRUE(ints_equal(o.plan.active, want.active, "active_experts"));
    expect_stats(o.stats, dmref::table_stats(E, r.num_zero_experts, T, S, ids, 0), required);
}

dynmoe_router router_ez(int32_t E, int32_t Z, int32_t K) {
    dynmoe_router r = make_router(E, K);
    r.num_zero_experts = Z;
    return r;
}

} // namespace

class Plan : public BackendTest {};
DYNMOE_INSTANTIATE_BACKENDS(Plan);

/* Tables routed by the reference for every model-shaped router. */
TEST_P(Plan, FromModelRoutes) {
    const std::vector<ModelCase> cases = model_cases();
    for (size_t i = 0; i < cases.size(); i++) {
        const uint64_t seed = seed_of((int)i);
        SCOPED_TRACE(cases[i].name + " seed=" + std::to_string(seed));
        Rng rng(seed);
        const int64_t T = 150 + (int64_t)i * 13;
        RouteInputs in = make_route_inputs(cases[i], T, DYNMOE_F32, rng);
        check_plan(ctx_, backend(), cases[i].router, T, cases[i].router.top_k, in.ref.table.ids);
    }
}

/* A caller's table: -1, out-of-range ids (skipped and counted), duplicates
 * within a token (each slot is its own row). */
TEST_P(Plan, CallerTables) {
    const int32_t special[] = {-1, -2, 20, 21, 1000, INT_MIN, INT_MAX, 1 << 20, -100};
    for (int variant = 0; variant < 4; variant++) {
        const int32_t E = variant == 3 ? 1 : 16, Z = variant == 3 ? 0 : 4, S = variant == 2 ? 64 : 8;
        dynmoe_router r = router_ez(E, Z, std::min(S, E + Z));
        const int64_t T = 101;
        const uint64_t seed = seed_of(100 + variant);
        SCOPED_TRACE("variant " + std::to_string(variant) + " seed=" + std::to_string(seed));
        Rng rng(seed);
        std::vector<int32_t> ids((size_t)(T * S));
        for (auto &id : ids) {
            const double u = rng.uniform(0, 1);
            if (u < 0.2)
                id = special[rng.integer(0, 8)];
            else if (u < 0.35)
                id = (int32_t)rng.integer(E, E + Z - (Z > 0 ? 1 : 0));
            else
                id = (int32_t)rng.integer(0, E - 1);
        }
        /* explicit duplicates in token 0 */
        for (int32_t k = 0; k < S; k++) ids[(size_t)k] = 0;
        if (Z == 0)
            for (auto &id : ids)
                if (id == E) id = -1;
        dynmoe_stats st = dmref::table_stats(E, Z, T, S, ids, 0);
        EXPECT_GT(st.invalid_ids, 0);
        check_plan(ctx_, backend(), r, T, S, ids);
    }
}

/* T = 0 with null pointers; T = 1; T = 4097 all on one expert; most experts
 * without tokens; every slot empty; every slot a zero expert; E = 1. */
TEST_P(Plan, EdgeCases) {
    {
        dynmoe_router r = router_ez(8, 0, 2);
        dynmoe_plan p;
        std::memset(&p, 0, sizeof p);
        EXPECT_EQ(dynmoe_plan_build(ctx_, &r, 0, nullptr, 2, nullptr, 0, &p, nullptr), DYNMOE_OK)
            << dynmoe_last_error();
    }
    {
        SCOPED_TRACE("T=1");
        check_plan(ctx_, backend(), router_ez(8, 2, 4), 1, 4, {7, -1, 2, 8});
    }
    {
        SCOPED_TRACE("T=4097 on one expert");
        std::vector<int32_t> ids(4097 * 2);
        for (size_t q = 0; q < ids.size(); q++) ids[q] = q % 2 ? -1 : 5;
        check_plan(ctx_, backend(), router_ez(8, 0, 2), 4097, 2, ids);
    }
    {
        SCOPED_TRACE("experts with no tokens");
        Rng rng(seed_of(200));
        std::vector<int32_t> ids(16);
        for (auto &id : ids) id = (int32_t)rng.integer(0, 255);
        check_plan(ctx_, backend(), router_ez(256, 0, 1), 16, 1, ids);
    }
    {
        SCOPED_TRACE("all slots empty");
        check_plan(ctx_, backend(), router_ez(32, 0, 4), 77, 4, std::vector<int32_t>(77 * 4, -1));
    }
    {
        SCOPED_TRACE("all slots zero experts");
        std::vector<int32_t> ids(60 * 3);
        for (size_t q = 0; q < ids.size(); q++) ids[q] = 32 + (int32_t)(q % 7);
        check_plan(ctx_, backend(), router_ez(32, 7, 3), 60, 3, ids);
    }
    {
        SCOPED_TRACE("E=1");
        std::vector<int32_t> ids(33 * 2);
        for (size_t q = 0; q < ids.size(); q++) ids[q] = q % 3 == 0 ? -1 : 0;
        check_plan(ctx_, backend(), router_ez(1, 0, 1), 33, 2, ids);
    }
    {
        SCOPED_TRACE("E=1024, S=64");
        Rng rng(seed_of(201));
        std::vector<int32_t> ids(40 * 64);
        for (auto &id : ids) id = (int32_t)rng.integer(-1, 1023);
        check_plan(ctx_, backend(), router_ez(1000, 24, 64), 40, 64, ids);
    }
}

/* dynmoe.h: the plan fills routed_slots, invalid_ids, active_experts and
 * max_expert_rows (and whatever else it writes must be right). */
TEST_P(Plan, Stats) {
    dynmoe_router r = router_ez(16, 4, 4);
    std::vector<int32_t> ids = {0, 0, 0, 3, -1, 16, 19, 20, 3, 3, -7, 15, 1, -1, -1, 18};
    dynmoe_stats st = dmref::table_stats(16, 4, 4, 4, ids, 0);
    EXPECT_EQ(st.routed_slots, 8);
    EXPECT_EQ(st.empty_slots, 3);
    EXPECT_EQ(st.zero_expert_slots, 3);
    EXPECT_EQ(st.invalid_ids, 2);
    EXPECT_EQ(st.active_experts, 4);
    EXPECT_EQ(st.max_expert_rows, 3);
    check_plan(ctx_, backend(), r, 4, 4, ids, ST_PLAN);
}

/* Same table twice: bitwise the same plan. */
TEST_P(Plan, Deterministic) {
    Rng rng(seed_of(300));
    const int64_t T = 1000;
    std::vector<int32_t> ids((size_t)T * 8);
    for (auto &id : ids) id = (int32_t)rng.integer(-1, 70);
    dynmoe_router r = router_ez(64, 4, 8);
    PlanOut a = run_plan(ctx_, backend(), r, T, 8, ids, false);
    PlanOut b = run_plan(ctx_, backend(), r, T, 8, ids, false);
    EXPECT_EQ(a.plan.sorted_slots, b.plan.sorted_slots);
    EXPECT_EQ(a.plan.slot_rows, b.plan.slot_rows);
    EXPECT_EQ(a.plan.counts, b.plan.counts);
}

/* The reference itself: rows sorted by (expert, token, slot), slot_rows the
 * inverse of sorted_slots. */
TEST(PlanReference, Invariants) {
    Rng rng(11);
    const int64_t T = 200;
    const int32_t S = 6, E = 20;
    std::vector<int32_t> ids((size_t)(T * S));
    for (auto &id : ids) id = (int32_t)rng.integer(-3, 25);
    dmref::Plan p = dmref::plan(E, T, S, ids);
    for (size_t row = 0; row < p.sorted_slots.size(); row++) {
        const int32_t q = p.sorted_slots[row];
        EXPECT_EQ(p.slot_rows[(size_t)q], (int32_t)row);
        if (row > 0) {
            const int32_t q0 = p.sorted_slots[row - 1];
            EXPECT_TRUE(ids[(size_t)q0] < ids[(size_t)q] || (ids[(size_t)q0] == ids[(size_t)q] && q0 < q));
        }
        EXPECT_GE((int64_t)row, p.offsets[(size_t)ids[(size_t)q]]);
        EXPECT_LT((int64_t)row, p.offsets[(size_t)ids[(size_t)q] + 1]);
    }
}
