/*
 * test_route.cc — dynmoe_route and dynmoe_route_tasks against the reference:
 * the table of model-shaped routers in every logits dtype, then the edge
 * cases of DESIGN.md section 6 that concern routing.
 */
#include <cmath>
#include <limits>

#include "cases.h"
#include "run.h"

using namespace dmtest;

namespace {

const dynmoe_dtype kDtypes[] = {DYNMOE_F32, DYNMOE_BF16, DYNMOE_F16};

uint64_t case_seed(size_t index, int salt) { return base_seed() * 1000003ull + index * 7919ull + (uint64_t)salt; }

/* Routes `in` on the backend and checks ids, weights and the route stats.
 * The loops over many cases require only tokens and nonfinite_rows (any
 * other field may stay unwritten but must be right if written); the
 * dedicated Stats test requires every field route is documented to fill. */
void check_route(dynmoe_ctx *ctx, dynmoe_backend b, const ModelCase &c, int64_t T, const RouteInputs &in,
                 unsigned required = ST_TOKENS | ST_NONFINITE) {
    RouteOut o = run_route(ctx, b, c.router, T, in);
    ASSERT_EQ(o.status, DYNMOE_OK);
    expect_table_eq(o.ids, o.weights, in.ref.table, "route");
    const int32_t E = c.router.num_experts, Z = c.router.num_zero_experts;
    expect_stats(o.stats, dmref::table_stats(E, Z, T, c.router.top_k, in.ref.table.ids, in.ref.nonfinite_rows),
                 required);
}

RouteInputs inputs_from(const ModelCase &c, int64_t T, dynmoe_dtype dt, const std::vector<float> &logits,
                        const std::vector<float> &bias = {}, const std::vector<float> &mask = {}) {
    RouteInputs in;
    in.logits = pack(logits, dt);
    in.bias = bias;
    if (!mask.empty()) in.mask = pack(mask, dt);
    rereference(c, T, in);
    return in;
}

ModelCase simple_case(const char *name, int32_t E, int32_t K, dynmoe_score score, dynmoe_norm norm) {
    ModelCase c;
    c.name = name;
    c.router = make_router(E, K);
    c.router.score = score;
    c.router.norm = norm;
    return c;
}

} // namespace

class Route : public BackendTest {};
DYNMOE_INSTANTIATE_BACKENDS(Route);

/* Every model-shaped router, every logits dtype. */
TEST_P(Route, ModelConfigs) {
    const std::vector<ModelCase> cases = model_cases();
    for (size_t i = 0; i < cases.size(); i++) {
        for (dynmoe_dtype dt : kDtypes) {
            const uint64_t seed = case_seed(i, (int)dt);
            SCOPED_TRACE(cases[i].name + " " + dtype_name(dt) + " seed=" + std::to_string(seed) + " " +
                         describe(cases[i].router));
            Rng rng(seed);
            const int64_t T = 67 + (int64_t)i % 5 * 31;
            RouteInputs in = make_route_inputs(cases[i], T, dt, rng);
            check_route(ctx_, backend(), cases[i], T, in);
        }
    }
}

/* T = 0 (null pointers allowed), 1, 7 and 4097 tokens. */
TEST_P(Route, TokenCounts) {
    ModelCase c = find_case("qwen3_30b_a3b");
    c.mask = true;
    c.keep = 0.7;
    dynmoe_router r = c.router;
    EXPECT_EQ(dynmoe_route(ctx_, &r, 0, nullptr, DYNMOE_F32, nullptr, nullptr, nullptr, nullptr, nullptr),
              DYNMOE_OK)
        << dynmoe_last_error();
    for (int64_t T : {1, 7, 4097}) {
        const uint64_t seed = case_seed((size_t)T, 1);
        SCOPED_TRACE("T=" + std::to_string(T) + " seed=" + std::to_string(seed));
        Rng rng(seed);
        RouteInputs in = make_route_inputs(c, T, DYNMOE_BF16, rng);
        check_route(ctx_, backend(), c, T, in);
    }
}

/* E = 1; K = E+Z (every expert chosen, in order of choice). */
TEST_P(Route, OneExpertAndAllExperts) {
    std::vector<ModelCase> cases;
    cases.push_back(simple_case("E1_softmax_selected", 1, 1, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED));
    cases.push_back(simple_case("E1_sigmoid_none", 1, 1, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_NONE));
    ModelCase all = simple_case("K_eq_E_plus_Z", 8, 12, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED);
    all.router.num_zero_experts = 4;
    all.router.zero_kind = DYNMOE_ZERO_IDENTITY;
    all.bias = true;
    cases.push_back(all);
    ModelCase all_mask = all;
    all_mask.name = "K_eq_E_plus_Z_beam_kept";
    all_mask.mask = true;
    all_mask.keep = 0.5;
    all_mask.router.norm = DYNMOE_NORM_KEPT;
    cases.push_back(all_mask);
    ModelCase all64 = simple_case("K_eq_E_64", 64, 64, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_UNIFORM);
    cases.push_back(all64);
    for (size_t i = 0; i < cases.size(); i++) {
        for (dynmoe_dtype dt : kDtypes) {
            const uint64_t seed = case_seed(i, 100 + (int)dt);
            SCOPED_TRACE(cases[i].name + " " + dtype_name(dt) + " seed=" + std::to_string(seed));
            Rng rng(seed);
            RouteInputs in = make_route_inputs(cases[i], 50, dt, rng);
            check_route(ctx_, backend(), cases[i], 50, in);
        }
    }
    /* E = 1, K = 1, softmax + SELECTED: every token routes to 0 with weight 1. */
    {
        RouteInputs in = inputs_from(cases[0], 3, DYNMOE_F32, {-5.0f, 0.0f, 7.5f});
        RouteOut o = run_route(ctx_, backend(), cases[0].router, 3, in);
        EXPECT_EQ(o.ids, (std::vector<int32_t>{0, 0, 0}));
        EXPECT_EQ(o.weights, (std::vector<float>{1.0f, 1.0f, 1.0f}));
    }
}

/* Ties go to the lower id, among experts and among groups. */
TEST_P(Route, Ties) {
    /* All equal: ids 0..K-1, weights 1/K after SELECTED. */
    {
        ModelCase c = simple_case("all_equal", 16, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED);
        std::vector<float> logits(2 * 16, 0.5f);
        RouteInputs in = inputs_from(c, 2, DYNMOE_F32, logits);
        RouteOut o = run_route(ctx_, backend(), c.router, 2, in);
        EXPECT_EQ(o.ids, (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 3}));
        for (float w : o.weights) EXPECT_NEAR(w, 0.25f, 1e-7f);
        expect_table_eq(o.ids, o.weights, in.ref.table, "all_equal");
    }
    /* Explicit: logits 1,3,3,2,3 with K=3 -> 1,2,4. */
    {
        ModelCase c = simple_case("explicit", 5, 3, DYNMOE_SCORE_NONE, DYNMOE_NORM_NONE);
        RouteInputs in = inputs_from(c, 1, DYNMOE_F32, {1.0f, 3.0f, 3.0f, 2.0f, 3.0f});
        RouteOut o = run_route(ctx_, backend(), c.router, 1, in);
        EXPECT_EQ(o.ids, (std::vector<int32_t>{1, 2, 4}));
        EXPECT_EQ(o.weights, (std::vector<float>{3.0f, 3.0f, 3.0f}));
    }
    /* Quantised logits (many exact ties) over several routers and dtypes. */
    std::vector<ModelCase> cases;
    cases.push_back(simple_case("levels_softmax", 32, 6, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED));
    ModelCase g = simple_case("levels_groups", 32, 4, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED);
    g.router.num_groups = 4;
    g.router.topk_groups = 2;
    cases.push_back(g);
    ModelCase z = simple_case("levels_zero", 12, 5, DYNMOE_SCORE_NONE, DYNMOE_NORM_UNIFORM);
    z.router.num_zero_experts = 4;
    cases.push_back(z);
    ModelCase p = simple_case("levels_top_p", 16, 6, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_KEPT);
    p.router.select = DYNMOE_SELECT_TOP_P;
    p.router.top_p = 0.37f;
    cases.push_back(p);
    for (size_t i = 0; i < cases.size(); i++) {
        for (dynmoe_dtype dt : kDtypes) {
            const uint64_t seed = case_seed(i, 200 + (int)dt);
            SCOPED_TRACE(cases[i].name + " " + dtype_name(dt) + " seed=" + std::to_string(seed));
            Rng rng(seed);
            const int64_t T = 64;
            const int32_t N = cases[i].router.num_experts + cases[i].router.num_zero_experts;
            std::vector<float> logits((size_t)(T * N));
            for (auto &v : logits) v = (float)rng.integer(0, 3) * 0.75f;
            RouteInputs in = inputs_from(cases[i], T, dt, logits);
            check_route(ctx_, backend(), cases[i], T, in);
        }
    }
}

/* Rows whose logits are all NaN/Inf get empty slots and are counted; a
 * non-finite entry in a finite row is never chosen and not in the softmax. */
TEST_P(Route, NonFiniteRows) {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    std::vector<ModelCase> cases;
    cases.push_back(simple_case("softmax", 32, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED));
    cases.push_back(find_case("deepseek_v3")); /* DeepSeek-V3: groups, sigmoid, bias */
    ModelCase zero = simple_case("zero_identity", 16, 6, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_KEPT);
    zero.router.num_zero_experts = 4;
    zero.router.zero_kind = DYNMOE_ZERO_IDENTITY;
    zero.mask = true;
    zero.keep = 0.5;
    cases.push_back(zero);
    for (size_t i = 0; i < cases.size(); i++) {
        for (dynmoe_dtype dt : kDtypes) {
            const ModelCase &c = cases[i];
            const int32_t E = c.router.num_experts, N = E + c.router.num_zero_experts;
            const uint64_t seed = case_seed(i, 300 + (int)dt);
            SCOPED_TRACE(c.name + " " + dtype_name(dt) + " seed=" + std::to_string(seed));
            Rng rng(seed);
            const int64_t T = 24;
            RouteInputs in = make_route_inputs(c, T, dt, rng);
            auto row = [&](int64_t t, float v) {
                for (int32_t e = 0; e < N; e++) set_packed(in.logits, (size_t)(t * N + e), v);
            };
            row(0, nan);
            row(1, inf);
            row(2, -inf);
            for (int32_t e = 0; e < N; e++) set_packed(in.logits, (size_t)(3 * N + e), e % 3 == 0 ? nan : (e % 3 == 1 ? inf : -inf));
            /* row 4: a single finite logit */
            row(4, nan);
            set_packed(in.logits, (size_t)(4 * N + N / 2), 0.3f);
            /* rows 5..8: some non-finite entries among finite ones */
            for (int64_t t = 5; t < 9; t++)
                for (int32_t e = 0; e < N; e += 3)
                    set_packed(in.logits, (size_t)(t * N + e), t == 5 ? nan : (t == 6 ? inf : (t == 7 ? -inf : nan)));
            /* row 9: the whole first group non-finite */
            for (int32_t e = 0; e < N / 8; e++) set_packed(in.logits, (size_t)(9 * N + e), nan);
            retie_free(c, T, in, rng);
            EXPECT_EQ(in.ref.nonfinite_rows, 4);
            check_route(ctx_, backend(), c, T, in);
        }
    }
}

/* Dynamic selections at their limits. */
TEST_P(Route, SelectionLimits) {
    const int64_t T = 40;
    /* p = 1: the whole top-K prefix (every s > 0), identical ids to plain top-K */
    {
        ModelCase c = find_case("qwen3_30b_a3b");
        c.router.select = DYNMOE_SELECT_TOP_P;
        c.router.top_p = 1.0f;
        Rng rng(case_seed(0, 400));
        SCOPED_TRACE("top_p=1 seed=" + std::to_string(case_seed(0, 400)));
        RouteInputs in = make_route_inputs(c, T, DYNMOE_F32, rng);
        check_route(ctx_, backend(), c, T, in);
        ModelCase k = c;
        k.router.select = DYNMOE_SELECT_TOPK;
        RouteInputs ink = in;
        rereference(k, T, ink);
        EXPECT_EQ(in.ref.table.ids, ink.ref.table.ids) << "reference: p=1 differs from top-K";
    }
    /* threshold above every score: every slot empty, nothing non-finite */
    for (dynmoe_score score : {DYNMOE_SCORE_SOFTMAX, DYNMOE_SCORE_SIGMOID}) {
        ModelCase c = simple_case("threshold_above_all", 64, 8, score, DYNMOE_NORM_SELECTED);
        c.router.select = DYNMOE_SELECT_THRESHOLD;
        c.router.threshold = 1.5f;
        Rng rng(case_seed(1, 401));
        RouteInputs in = make_route_inputs(c, T, DYNMOE_BF16, rng);
        for (int32_t id : in.ref.table.ids) ASSERT_EQ(id, -1);
        RouteOut o = run_route(ctx_, backend(), c.router, T, in);
        expect_table_eq(o.ids, o.weights, in.ref.table, "threshold_above_all");
        dynmoe_stats want = dmref::table_stats(64, 0, T, 8, in.ref.table.ids, 0);
        EXPECT_EQ(want.empty_slots, T * 8);
        expect_stats(o.stats, want, ST_TOKENS | ST_NONFINITE);
    }
    /* every slot masked: real experts all dropped, zero experts survive */
    for (int zero = 0; zero < 2; zero++) {
        ModelCase c = zero ? find_case("zeda_qwen3") : find_case("qwen3_30b_a3b");
        c.mask = true;
        c.keep = 0.0;
        for (dynmoe_norm norm : {DYNMOE_NORM_SELECTED, DYNMOE_NORM_KEPT, DYNMOE_NORM_UNIFORM}) {
            c.router.norm = norm;
            const uint64_t seed = case_seed(2 + zero, 402 + norm);
            SCOPED_TRACE(c.name + " all masked, norm " + std::to_string(norm) + " seed=" + std::to_string(seed));
            Rng rng(seed);
            RouteInputs in = make_route_inputs(c, T, DYNMOE_F16, rng);
            for (size_t q = 0; q < in.ref.table.ids.size(); q++)
                ASSERT_TRUE(in.ref.table.ids[q] == -1 || in.ref.table.ids[q] >= c.router.num_experts);
            check_route(ctx_, backend(), c, T, in);
        }
    }
    /* every slot a zero expert */
    {
        ModelCase c = simple_case("all_zero_experts", 16, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED);
        c.router.num_zero_experts = 8;
        c.router.zero_kind = DYNMOE_ZERO_IDENTITY;
        c.mask = true;
        c.keep = 0.5;
        Rng rng(case_seed(4, 410));
        RouteInputs in = make_route_inputs(c, T, DYNMOE_F32, rng);
        for (int64_t t = 0; t < T; t++)
            for (int32_t e = 16; e < 24; e++)
                set_packed(in.logits, (size_t)(t * 24 + e), (float)(in.logits.values[(size_t)(t * 24 + e)] + 30.0));
        rereference(c, T, in);
        for (int32_t id : in.ref.table.ids) ASSERT_GE(id, 16);
        RouteOut o = run_route(ctx_, backend(), c.router, T, in);
        expect_table_eq(o.ids, o.weights, in.ref.table, "all_zero_experts");
        dynmoe_stats want = dmref::table_stats(16, 8, T, 4, in.ref.table.ids, 0);
        EXPECT_EQ(want.zero_expert_slots, T * 4);
        expect_stats(o.stats, want, ST_TOKENS | ST_NONFINITE);
    }
}

/* dynmoe.h: "route fills tokens, nonfinite_rows, empty/zero slot counts".
 * Zero experts, masked slots and non-finite rows all occur here. */
TEST_P(Route, Stats) {
    ModelCase c = find_case("beam_longcat_identity"); /* identity zero experts and masks */
    const int64_t T = 97;
    const uint64_t seed = case_seed(10, 700);
    SCOPED_TRACE("seed=" + std::to_string(seed));
    Rng rng(seed);
    RouteInputs in = make_route_inputs(c, T, DYNMOE_F32, rng);
    const int32_t N = c.router.num_experts + c.router.num_zero_experts;
    for (int64_t t : {3, 50, 96})
        for (int32_t e = 0; e < N; e++)
            set_packed(in.logits, (size_t)(t * N + e), std::numeric_limits<float>::quiet_NaN());
    rereference(c, T, in);
    dynmoe_stats want = dmref::table_stats(c.router.num_experts, c.router.num_zero_experts, T, c.router.top_k,
                                           in.ref.table.ids, in.ref.nonfinite_rows);
    ASSERT_EQ(want.nonfinite_rows, 3);
    ASSERT_GT(want.empty_slots, 0);
    ASSERT_GT(want.zero_expert_slots, 0);
    check_route(ctx_, backend(), c, T, in, ST_ROUTE);
}

/* The same call twice gives bitwise the same table. */
TEST_P(Route, Deterministic) {
    const std::vector<ModelCase> cases = model_cases();
    for (size_t i : {1u, 2u, 8u}) {
        Rng rng(case_seed(i, 500));
        RouteInputs in = make_route_inputs(cases[i], 300, DYNMOE_BF16, rng);
        RouteOut a = run_route(ctx_, backend(), cases[i].router, 300, in, false);
        RouteOut b = run_route(ctx_, backend(), cases[i].router, 300, in, false);
        EXPECT_EQ(a.ids, b.ids) << cases[i].name;
        EXPECT_EQ(0, std::memcmp(a.weights.data(), b.weights.data(), a.weights.size() * 4)) << cases[i].name;
    }
}

/* ---- CaRE task routers ------------------------------------------------------- */

namespace {

struct TaskCase {
    std::string name;
    dynmoe_router router;
    bool bias;
    int32_t H;
    bool expert_scale = false;
};

std::vector<TaskCase> task_cases() {
    std::vector<TaskCase> v;
    TaskCase a{"care_R6_top2_K3", make_router(32, 3), false, 64};
    a.router.num_tasks = 6;
    a.router.top_tasks = 2;
    a.router.norm = DYNMOE_NORM_SELECTED;
    v.push_back(a);
    TaskCase b{"care_sigmoid_bias_zero", make_router(24, 3), true, 48};
    b.router.num_tasks = 6;
    b.router.top_tasks = 2;
    b.router.score = DYNMOE_SCORE_SIGMOID;
    b.router.num_zero_experts = 8;
    b.router.zero_kind = DYNMOE_ZERO_IDENTITY;
    b.router.scale = 2.0f;
    v.push_back(b);
    TaskCase c{"care_groups_top3_K4", make_router(64, 4), false, 37};
    c.router.num_tasks = 5;
    c.router.top_tasks = 3;
    c.router.num_groups = 4;
    c.router.topk_groups = 2;
    c.router.norm = DYNMOE_NORM_KEPT;
    v.push_back(c);
    TaskCase d{"care_top_p", make_router(16, 4), false, 40};
    d.router.num_tasks = 4;
    d.router.top_tasks = 2;
    d.router.select = DYNMOE_SELECT_TOP_P;
    d.router.top_p = 0.5f;
    d.router.norm = DYNMOE_NORM_SELECTED;
    v.push_back(d);
    TaskCase e{"care_expert_scale_zero", make_router(20, 3), true, 32, true};
    e.router.num_tasks = 4;
    e.router.top_tasks = 2;
    e.router.norm = DYNMOE_NORM_SELECTED;
    e.router.num_zero_experts = 4;
    v.push_back(e);
    return v;
}

} // namespace

class RouteTasks : public BackendTest {};
DYNMOE_INSTANTIATE_BACKENDS(RouteTasks);

TEST_P(RouteTasks, Configs) {
    const std::vector<TaskCase> cases = task_cases();
    EXPECT_EQ(dynmoe_route_tasks(ctx_, &cases[0].router, 0, nullptr, DYNMOE_F32, 64, nullptr, nullptr,
                                 nullptr, nullptr, nullptr, nullptr),
              DYNMOE_OK)
        << dynmoe_last_error();
    for (size_t i = 0; i < cases.size(); i++) {
        for (dynmoe_dtype dt : kDtypes) {
            const TaskCase &c = cases[i];
            const dynmoe_router &r = c.router;
            const int32_t N = r.num_experts + r.num_zero_experts, R = r.num_tasks, H = c.H,
                          S = r.top_k * r.top_tasks;
            const int64_t T = 45;
            const uint64_t seed = case_seed(i, 600 + (int)dt);
            SCOPED_TRACE(c.name + " " + dtype_name(dt) + " seed=" + std::to_string(seed) + " " + describe(r));
            Rng rng(seed);
            Packed tw = pack(rng.uniform_vec((size_t)R * N * H, -2.0 / std::sqrt(H), 2.0 / std::sqrt(H)), dt);
            std::vector<float> bias, scale;
            if (c.bias) bias = rng.uniform_vec((size_t)N, -0.1, 0.1);
            if (c.expert_scale) scale = rng.uniform_vec((size_t)N, 0.25, 2.0);
            Packed x = pack(std::vector<float>((size_t)(T * H)), dt);
            std::vector<float> tl((size_t)(T * R));
            dmref::RouteResult ref;
            /* redraw tokens until no decision sits near a tie */
            for (int tries = 0; tries < 200; tries++) {
                ref = dmref::route_tasks(r, T, H, x.values, to_double(tl), tw.values, to_double(bias),
                                         to_double(scale));
                bool redo = false;
                for (int64_t t = 0; t < T; t++) {
                    if (tries > 0 && ref.margin[(size_t)t] >= kMinMargin) continue;
                    redo = true;
                    for (int32_t h = 0; h < H; h++) set_packed(x, (size_t)(t * H + h), (float)rng.uniform(-1, 1));
                    for (int32_t j = 0; j < R; j++) tl[(size_t)(t * R + j)] = (float)rng.uniform(-2, 2);
                }
                if (!redo) break;
            }
            for (double m : ref.margin) ASSERT_GE(m, kMinMargin) << "could not draw tie-free task inputs";
            /* an expert picked by several tasks must occur in the test data */
            Buffer xb = make_buffer(backend(), x.bytes), twb = make_buffer(backend(), tw.bytes),
                   tlb = make_buffer(backend(), tl), bb = make_buffer(backend(), bias),
                   sb = make_buffer(backend(), scale);
            dynmoe_router rs = r;
            if (!scale.empty()) rs.expert_scale = sb.as<float>();
            Buffer ids(backend(), (size_t)(T * S) * 4), w(backend(), (size_t)(T * S) * 4);
            ids.fill(kPoisonInt);
            w.fill(kPoisonFloat);
            StatsBlock stats(ctx_, backend());
            ASSERT_EQ(dynmoe_route_tasks(ctx_, &rs, T, xb.get(), dt, H, tlb.as<float>(), twb.get(),
                                         bias.empty() ? nullptr : bb.as<float>(), ids.as<int32_t>(),
                                         w.as<float>(), nullptr),
                      DYNMOE_OK)
                << dynmoe_last_error();
            std::vector<int32_t> got_ids = ids.to_vector<int32_t>((size_t)(T * S));
            std::vector<float> got_w = w.to_vector<float>((size_t)(T * S));
            expect_table_eq(got_ids, got_w, ref.table, "route_tasks");
            expect_stats(stats.read(),
                         dmref::table_stats(r.num_experts, r.num_zero_experts, T, S, ref.table.ids, 0),
                         ST_TOKENS | ST_NONFINITE);
        }
    }
}

/* The merge rule is exercised: some token has an expert chosen by two tasks. */
TEST(RouteTasksReference, MergeHappens) {
    TaskCase c = task_cases()[0];
    dynmoe_router r = c.router;
    r.num_experts = 4; /* few experts: collisions between tasks are certain */
    const int32_t N = 4, R = 6, H = 8, S = 6;
    const int64_t T = 50;
    Rng rng(7);
    std::vector<double> x = to_double(rng.uniform_vec((size_t)(T * H), -1, 1));
    std::vector<double> tw = to_double(rng.uniform_vec((size_t)(R * N * H), -1, 1));
    std::vector<double> tl = to_double(rng.uniform_vec((size_t)(T * R), -1, 1));
    dmref::RouteResult ref = dmref::route_tasks(r, T, H, x, tl, tw, {});
    int merged = 0;
    for (int64_t t = 0; t < T; t++) {
        int empty = 0;
        double sum = 0;
        for (int32_t k = 0; k < S; k++) {
            empty += ref.table.ids[(size_t)(t * S + k)] == -1;
            sum += ref.table.weights[(size_t)(t * S + k)];
        }
        merged += empty > 0;
        EXPECT_NEAR(sum, 2.0, 1e-12); /* two tasks, each normalised to 1 */
    }
    EXPECT_GT(merged, 0);
}
