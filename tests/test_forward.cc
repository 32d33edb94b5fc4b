/*
 * test_forward.cc — dynmoe_moe_forward and dynmoe_experts_forward against the
 * reference (route -> experts FFN -> combine in double): model-shaped layers
 * with reduced H and I in f32, bf16 and f16, caller tables, task-router
 * tables and the edge cases of DESIGN.md section 6. On the CPU every test runs
 * once per instruction path (DYNMOE_CPU_ISA); a path this CPU lacks skips.
 */
#include <fstream>
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <thread>

#include <omp.h>

#include "cases.h"
#include "run.h"

using namespace dmtest;

namespace {

const dynmoe_dtype kDtypes[] = {DYNMOE_F32, DYNMOE_BF16, DYNMOE_F16};

uint64_t seed_of(size_t index, int salt) {
    return base_seed() * 1000003ull + 90000ull + index * 7919ull + (uint64_t)salt;
}

ModelCase small_case(const char *name, int32_t E, int32_t Z, dynmoe_zero_kind zk, int32_t K, int32_t H,
                     int32_t I) {
    ModelCase c;
    c.name = name;
    c.router = make_router(E, K);
    c.router.num_zero_experts = Z;
    c.router.zero_kind = zk;
    c.router.norm = DYNMOE_NORM_SELECTED;
    c.H = H;
    c.I = I;
    return c;
}

} // namespace

/* A backend and, on the CPU, the instruction path forced with DYNMOE_CPU_ISA. */
struct ForwardPath {
    dynmoe_backend backend;
    const char *isa; /* NULL on CUDA */
};

void PrintTo(const ForwardPath &p, std::ostream *os) { *os << backend_name(p.backend) << (p.isa ? " " : "") << (p.isa ? p.isa : ""); }

class Forward : public ::testing::TestWithParam<ForwardPath> {
  protected:
    void SetUp() override {
        if (backend() == DYNMOE_BACKEND_CUDA && !dynmoe_cuda_available()) GTEST_SKIP() << "no CUDA device";
        if (const char *isa = GetParam().isa) {
            setenv("DYNMOE_CPU_ISA", isa, 1);
            const char *got = dynmoe_cpu_isa();
            if (got == nullptr || std::string(got) != isa) {
                unsetenv("DYNMOE_CPU_ISA");
                GTEST_SKIP() << "this CPU has no " << isa << " path (its best is " << dynmoe_cpu_isa() << ")";
            }
        }
        ASSERT_EQ(dynmoe_ctx_create(&ctx_, backend(), 0), DYNMOE_OK) << dynmoe_last_error();
    }
    void TearDown() override {
        dynmoe_ctx_destroy(ctx_);
        ctx_ = nullptr;
        unsetenv("DYNMOE_CPU_ISA");
    }
    dynmoe_backend backend() const { return GetParam().backend; }
    dynmoe_ctx *ctx_ = nullptr;

    /* moe_forward of case c with T tokens vs reference route + FFN + combine. */
    void check_moe(const ModelCase &c, int64_t T, dynmoe_dtype dt, uint64_t seed, unsigned required = ST_TOKENS) {
        SCOPED_TRACE(c.name + " " + dtype_name(dt) + " T=" + std::to_string(T) + " H=" + std::to_string(c.H) +
                     " I=" + std::to_string(c.I) + " seed=" + std::to_string(seed) + " " + describe(c.router));
        check_moe_vs_reference(ctx_, backend(), c, T, dt, seed, required);
    }

    /* experts_forward of a given table vs reference FFN + combine. */
    void check_experts(const dynmoe_router &r, int32_t H, int32_t I, dynmoe_act act, dynmoe_dtype dt,
                       const dmref::Table &table, Rng &rng, unsigned required = ST_PLAN,
                       const ExpertOptions &opt = {}) {
        check_experts_vs_reference(ctx_, backend(), r, H, I, act, dt, table, rng, required, "experts_forward", opt);
    }
};
/* Names end in /CUDA for the CUDA runs (scripts/gpu-check.sh filters on it). */
INSTANTIATE_TEST_SUITE_P(Backends, Forward,
                         ::testing::Values(ForwardPath{DYNMOE_BACKEND_CPU, "scalar"},
                                           ForwardPath{DYNMOE_BACKEND_CPU, "avx2"},
                                           ForwardPath{DYNMOE_BACKEND_CPU, "avx512"},
                                           ForwardPath{DYNMOE_BACKEND_CUDA, nullptr}),
                         [](const ::testing::TestParamInfo<ForwardPath> &info) {
                             std::string n = backend_name(info.param.backend);
                             return info.param.isa ? n + "_" + info.param.isa : n;
                         });

/* The whole layer for every model-shaped router, every dtype. */
TEST_P(Forward, MoeModelConfigs) {
    const std::vector<ModelCase> cases = model_cases();
    for (size_t i = 0; i < cases.size(); i++)
        for (dynmoe_dtype dt : kDtypes) check_moe(cases[i], 40 + (int64_t)(i % 4) * 23, dt, seed_of(i, (int)dt));
}

/* experts_forward over the reference's routing tables. */
TEST_P(Forward, ExpertsModelConfigs) {
    const std::vector<ModelCase> cases = model_cases();
    for (size_t i = 0; i < cases.size(); i++) {
        for (dynmoe_dtype dt : kDtypes) {
            const ModelCase &c = cases[i];
            const uint64_t seed = seed_of(i, 10 + (int)dt);
            const int64_t T = 33 + (int64_t)(i % 3) * 20;
            SCOPED_TRACE(c.name + " " + dtype_name(dt) + " seed=" + std::to_string(seed));
            Rng rng(seed);
            RouteInputs in = make_route_inputs(c, T, DYNMOE_F32, rng);
            check_experts(c.router, c.H, c.I, c.act, dt, in.ref.table, rng, ST_TOKENS, c.ex);
        }
    }
}

/* The stats of a whole forward: every field a forward fills. */
TEST_P(Forward, Stats) {
    ModelCase c = find_case("beam_longcat_identity"); /* identity zero experts and masks */
    check_moe(c, 61, DYNMOE_F32, seed_of(0, 20), ST_ALL);
    dynmoe_router r = make_router(16, 4);
    r.num_zero_experts = 4;
    r.zero_kind = DYNMOE_ZERO_IDENTITY;
    dmref::Table t;
    t.T = 4;
    t.S = 4;
    t.ids = {0, 0, 0, 3, -1, 16, 19, 20, 3, 3, -7, 15, 1, -1, -1, 18};
    t.weights = {0.5, 0.25, 0.125, 1, 0, 0.5, 0.5, 9, 1, -1, 3, 2, 0.75, 0, 0, 0.25};
    Rng rng(seed_of(0, 21));
    SCOPED_TRACE("caller table");
    check_experts(r, 32, 16, DYNMOE_ACT_SWIGLU, DYNMOE_F32, t, rng, ST_PLAN);
}

/* A caller's table with -1, out-of-range and duplicate ids: out-of-range
 * skipped, duplicates count once per slot, identity zero experts add w*x. */
TEST_P(Forward, CallerTables) {
    const int32_t special[] = {-1, -2, 1000, INT_MIN, INT_MAX, -1000};
    for (int zk = 0; zk < 2; zk++) {
        for (dynmoe_dtype dt : kDtypes) {
            const int32_t E = 12, Z = 5, S = 7, H = 40, I = 24;
            const int64_t T = 57;
            dynmoe_router r = make_router(E, S);
            r.num_zero_experts = Z;
            r.zero_kind = zk ? DYNMOE_ZERO_IDENTITY : DYNMOE_ZERO_OUTPUT;
            const uint64_t seed = seed_of(1, 30 + zk * 4 + (int)dt);
            SCOPED_TRACE(std::string(zk ? "identity " : "zero-output ") + dtype_name(dt) + " seed=" +
                         std::to_string(seed));
            Rng rng(seed);
            dmref::Table t;
            t.T = T;
            t.S = S;
            for (int64_t q = 0; q < T * S; q++) {
                const double u = rng.uniform(0, 1);
                int32_t id;
                if (u < 0.15)
                    id = special[rng.integer(0, 5)];
                else if (u < 0.2)
                    id = E + Z; /* just out of range */
                else if (u < 0.4)
                    id = (int32_t)rng.integer(E, E + Z - 1);
                else
                    id = (int32_t)rng.integer(0, E - 1);
                t.ids.push_back(id);
                t.weights.push_back(id == -1 ? 0.0 : rng.uniform(-1, 1));
            }
            /* duplicates: token 0 uses expert 3 in every slot, token 1 zero expert E */
            for (int32_t k = 0; k < S; k++) {
                t.ids[(size_t)k] = 3;
                t.ids[(size_t)(S + k)] = E;
                t.weights[(size_t)k] = t.weights[(size_t)(S + k)] = 0.1 * (k + 1);
            }
            check_experts(r, H, I, zk ? DYNMOE_ACT_GEGLU : DYNMOE_ACT_SWIGLU, dt, t, rng, ST_TOKENS);
        }
    }
}

/* CaRE task-router tables ([T, top_tasks*K], with merged empty slots). */
TEST_P(Forward, TaskRouterTables) {
    dynmoe_router r = make_router(32, 3);
    r.num_tasks = 6;
    r.top_tasks = 2;
    r.num_zero_experts = 4;
    r.zero_kind = DYNMOE_ZERO_IDENTITY;
    r.norm = DYNMOE_NORM_SELECTED;
    const int32_t H = 48, I = 20, N = 36;
    const int64_t T = 40;
    for (dynmoe_dtype dt : kDtypes) {
        const uint64_t seed = seed_of(2, 40 + (int)dt);
        SCOPED_TRACE(std::string("tasks ") + dtype_name(dt) + " seed=" + std::to_string(seed));
        Rng rng(seed);
        std::vector<double> x = to_double(rng.uniform_vec((size_t)(T * H), -1, 1));
        std::vector<double> tw = to_double(rng.uniform_vec((size_t)(6 * N * H), -0.5, 0.5));
        std::vector<double> tl = to_double(rng.uniform_vec((size_t)(T * 6), -1, 1));
        dmref::RouteResult ref = dmref::route_tasks(r, T, H, x, tl, tw, {});
        check_experts(r, H, I, DYNMOE_ACT_SWIGLU, dt, ref.table, rng, ST_TOKENS);
    }
}

/* T = 0 (nulls), 1, 7, 4097; E = 1; K = E+Z; odd H and I. */
TEST_P(Forward, Sizes) {
    {
        dynmoe_router r = make_router(8, 2);
        dynmoe_experts ex = make_experts_desc(r, 64, 32, DYNMOE_BF16, DYNMOE_ACT_SWIGLU, nullptr, nullptr);
        EXPECT_EQ(dynmoe_moe_forward(ctx_, &r, &ex, 0, nullptr, nullptr, DYNMOE_BF16, nullptr, nullptr, nullptr,
                                     nullptr, 0, nullptr),
                  DYNMOE_OK)
            << dynmoe_last_error();
        EXPECT_EQ(dynmoe_experts_forward(ctx_, &r, &ex, 0, nullptr, nullptr, nullptr, 2, nullptr, nullptr, 0,
                                         nullptr),
                  DYNMOE_OK)
            << dynmoe_last_error();
    }
    ModelCase q = find_case("qwen3_30b_a3b");
    q.H = 48;
    q.I = 24;
    for (int64_t T : {1, 7}) check_moe(q, T, DYNMOE_BF16, seed_of(3, (int)T));
    {
        ModelCase c = find_case("mixtral"); /* Mixtral E8 K2 */
        c.H = 32;
        c.I = 16;
        check_moe(c, 4097, DYNMOE_BF16, seed_of(3, 4097));
    }
    ModelCase e1 = small_case("E1", 1, 0, DYNMOE_ZERO_OUTPUT, 1, 40, 20);
    for (dynmoe_dtype dt : kDtypes) check_moe(e1, 9, dt, seed_of(4, (int)dt));
    ModelCase all = small_case("K_eq_E_plus_Z", 6, 3, DYNMOE_ZERO_IDENTITY, 9, 32, 16);
    all.bias = true;
    for (dynmoe_dtype dt : kDtypes) check_moe(all, 30, dt, seed_of(5, (int)dt));
    ModelCase odd = small_case("odd_sizes", 8, 0, DYNMOE_ZERO_OUTPUT, 3, 17, 3);
    for (dynmoe_dtype dt : kDtypes) check_moe(odd, 25, dt, seed_of(6, (int)dt));
    ModelCase tiny = small_case("H1_I1", 4, 0, DYNMOE_ZERO_OUTPUT, 2, 1, 1);
    check_moe(tiny, 5, DYNMOE_F32, seed_of(7, 0));
}

/* All tokens on one expert; experts with no tokens. */
TEST_P(Forward, Skewed) {
    for (dynmoe_dtype dt : kDtypes) {
        dynmoe_router r = make_router(8, 2);
        const int64_t T = 300;
        dmref::Table t;
        t.T = T;
        t.S = 2;
        const uint64_t seed = seed_of(8, (int)dt);
        SCOPED_TRACE(std::string("one expert ") + dtype_name(dt) + " seed=" + std::to_string(seed));
        Rng rng(seed);
        for (int64_t q = 0; q < T * 2; q++) {
            t.ids.push_back(q % 2 ? -1 : 6);
            t.weights.push_back(q % 2 ? 0.0 : rng.uniform(0.1, 1));
        }
        check_experts(r, 64, 40, DYNMOE_ACT_SWIGLU, dt, t, rng);
    }
    {
        dynmoe_router r = make_router(256, 1);
        const int64_t T = 12;
        dmref::Table t;
        t.T = T;
        t.S = 1;
        Rng rng(seed_of(9, 0));
        SCOPED_TRACE("E=256 with 12 tokens seed=" + std::to_string(seed_of(9, 0)));
        for (int64_t q = 0; q < T; q++) {
            t.ids.push_back((int32_t)rng.integer(0, 255));
            t.weights.push_back(1.0);
        }
        check_experts(r, 32, 16, DYNMOE_ACT_GEGLU, DYNMOE_BF16, t, rng);
    }
}

/* Prefill-shaped tables: many active experts (the CPU runs whole experts per
 * thread when at least 2 per thread are active; 77 here) with every row count
 * around the CPU kernel's 8-row panels, its 1-5 leftover rows, 16-row pairs,
 * 24-row triples and 256-row chunks, at sizes that are no multiple of its
 * 12-row and 6-row weight blocks. */
TEST_P(Forward, PrefillRowCounts) {
    const int32_t counts[] = {8,  9,  10, 11, 12,  13,  14,  15,  16,  17,  21,  22,  23,  24,
                              25, 31, 32, 33, 47, 64, 100, 129, 255, 256, 257, 300, 513};
    const int32_t listed = (int32_t)(sizeof counts / sizeof counts[0]);
    struct Shape {
        int32_t H, I;
        dynmoe_act act;
        dynmoe_dtype dt;
    };
    const Shape shapes[] = {{37, 13, DYNMOE_ACT_SWIGLU, DYNMOE_F32},
                            {37, 13, DYNMOE_ACT_SWIGLU, DYNMOE_BF16},
                            {37, 13, DYNMOE_ACT_SWIGLU, DYNMOE_F16},
                            {64, 48, DYNMOE_ACT_GEGLU, DYNMOE_F32},
                            {17, 1, DYNMOE_ACT_SWIGLU, DYNMOE_F32},
                            /* even H and I for the avx512 panels (k pairs), H past one K
                             * slice of 256 with a partial one after it, non-gated RELU2 too */
                            {300, 34, DYNMOE_ACT_SWIGLU, DYNMOE_F32},
                            {300, 34, DYNMOE_ACT_SWIGLU, DYNMOE_BF16},
                            {300, 34, DYNMOE_ACT_RELU2, DYNMOE_F16}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const Shape &s = shapes[si];
        const uint64_t seed = seed_of(40, (int)si);
        SCOPED_TRACE("H=" + std::to_string(s.H) + " I=" + std::to_string(s.I) + " " + dtype_name(s.dt) +
                     " seed=" + std::to_string(seed));
        Rng rng(seed);
        const int32_t E = listed + 60;
        std::vector<int32_t> ids;
        for (int32_t e = 0; e < E; e++) {
            /* the listed counts, then 50 experts with 1..7 rows, then 10 with none */
            const int32_t n = e < listed ? counts[e] : e < listed + 50 ? 1 + e % 7 : 0;
            ids.insert(ids.end(), (size_t)n, e);
        }
        for (size_t i = ids.size(); i > 1; i--) std::swap(ids[i - 1], ids[(size_t)rng.integer(0, (int64_t)i - 1)]);
        dmref::Table t;
        t.T = (int64_t)ids.size(); /* one slot per token */
        t.S = 1;
        t.ids = ids;
        for (size_t q = 0; q < t.ids.size(); q++) t.weights.push_back(rng.uniform(0.1, 1));
        check_experts(make_router(E, 1), s.H, s.I, s.act, s.dt, t, rng);
    }
}

/* Nothing to compute: every slot empty / masked / a zero expert. The
 * output must be written anyway (0, or w*x for identity zero experts). */
TEST_P(Forward, NothingRouted) {
    for (dynmoe_dtype dt : kDtypes) {
        const uint64_t seed = seed_of(10, (int)dt);
        SCOPED_TRACE(std::string(dtype_name(dt)) + " seed=" + std::to_string(seed));
        Rng rng(seed);
        const int64_t T = 50;
        {
            SCOPED_TRACE("all slots empty");
            dynmoe_router r = make_router(16, 4);
            dmref::Table t;
            t.T = T;
            t.S = 4;
            t.ids.assign((size_t)(T * 4), -1);
            t.weights.assign((size_t)(T * 4), 0.0);
            check_experts(r, 32, 16, DYNMOE_ACT_SWIGLU, dt, t, rng);
        }
        for (int zk = 0; zk < 2; zk++) {
            SCOPED_TRACE(zk ? "all slots identity zero experts" : "all slots zero-output experts");
            dynmoe_router r = make_router(16, 3);
            r.num_zero_experts = 5;
            r.zero_kind = zk ? DYNMOE_ZERO_IDENTITY : DYNMOE_ZERO_OUTPUT;
            dmref::Table t;
            t.T = T;
            t.S = 3;
            for (int64_t q = 0; q < T * 3; q++) {
                t.ids.push_back((int32_t)rng.integer(16, 20));
                t.weights.push_back(rng.uniform(0, 1));
            }
            check_experts(r, 32, 16, DYNMOE_ACT_SWIGLU, dt, t, rng);
        }
        {
            SCOPED_TRACE("all slots masked (moe_forward)");
            ModelCase c = find_case("qwen3_30b_a3b");
            c.mask = true;
            c.keep = 0.0;
            c.H = 32;
            c.I = 16;
            check_moe(c, T, dt, seed_of(11, (int)dt), ST_ALL);
        }
    }
}

/* Rows of NaN/Inf logits through the whole layer: their output is 0 and no
 * NaN reaches any other token. */
TEST_P(Forward, NonFiniteRows) {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    std::vector<ModelCase> cases = {find_case("deepseek_v3"), find_case("longcat_flash")}; /* DeepSeek, LongCat */
    for (size_t i = 0; i < cases.size(); i++) {
        for (dynmoe_dtype dt : kDtypes) {
            ModelCase c = cases[i];
            c.H = 32;
            c.I = 16;
            const int32_t N = c.router.num_experts + c.router.num_zero_experts;
            const int64_t T = 20;
            const uint64_t seed = seed_of(12 + i, (int)dt);
            SCOPED_TRACE(c.name + " " + dtype_name(dt) + " seed=" + std::to_string(seed));
            Rng rng(seed);
            RouteInputs in = make_route_inputs(c, T, dt, rng);
            for (int32_t e = 0; e < N; e++) {
                set_packed(in.logits, (size_t)(2 * N + e), nan);
                set_packed(in.logits, (size_t)(5 * N + e), e % 2 ? inf : -inf);
                if (e % 5 == 0) set_packed(in.logits, (size_t)(9 * N + e), nan);
            }
            retie_free(c, T, in, rng);
            ASSERT_EQ(in.ref.nonfinite_rows, 2);
            ExpertWeights w = make_experts(c.router.num_experts, c.H, c.I, c.act, dt, rng);
            Packed x = random_x(T, c.H, dt, rng);
            ForwardOut o = run_moe_forward(ctx_, backend(), c.router, w, dt, T, x, in);
            expect_close(o.out, moe_reference_out(c, w, T, x, in), dt, "moe_forward with non-finite rows");
            for (int64_t t : {2, 5})
                for (int32_t h = 0; h < c.H; h++) EXPECT_EQ(o.out[(size_t)(t * c.H + h)], 0.0) << "token " << t;
            EXPECT_EQ(o.stats.nonfinite_rows, 2);
        }
    }
}

/* The same call twice: bitwise the same output (DESIGN.md section 1). */
TEST_P(Forward, Deterministic) {
    const std::vector<ModelCase> cases = model_cases();
    for (size_t i : {1u, 2u, 9u}) {
        const ModelCase &c = cases[i];
        const int64_t T = 150;
        Rng rng(seed_of(20 + i, 0));
        RouteInputs in = make_route_inputs(c, T, DYNMOE_BF16, rng);
        ExpertWeights w = make_experts(c.router.num_experts, c.H, c.I, c.act, DYNMOE_BF16, rng);
        Packed x = random_x(T, c.H, DYNMOE_BF16, rng);
        ForwardOut a = run_moe_forward(ctx_, backend(), c.router, w, DYNMOE_BF16, T, x, in, false);
        ForwardOut b = run_moe_forward(ctx_, backend(), c.router, w, DYNMOE_BF16, T, x, in, false);
        EXPECT_EQ(a.out_bytes, b.out_bytes) << c.name;
    }
}

/* Contexts are independent and usable from different threads at once
 * (DESIGN.md section 3): concurrent forwards on two contexts give bitwise the
 * results of the same calls made one after the other. */
TEST_P(Forward, ConcurrentContexts) {
    const ModelCase c = find_case("zeda_beam_kept");
    const int64_t T = 120;
    Rng rng(seed_of(30, 0));
    RouteInputs in = make_route_inputs(c, T, DYNMOE_BF16, rng);
    ExpertWeights w = make_experts(c.router.num_experts, c.H, c.I, c.act, DYNMOE_BF16, rng);
    Packed xa = random_x(T, c.H, DYNMOE_BF16, rng), xb = random_x(T, c.H, DYNMOE_BF16, rng);
    ForwardOut want_a = run_moe_forward(ctx_, backend(), c.router, w, DYNMOE_BF16, T, xa, in, false);
    ForwardOut want_b = run_moe_forward(ctx_, backend(), c.router, w, DYNMOE_BF16, T, xb, in, false);
    dynmoe_ctx *ca = nullptr, *cb = nullptr;
    ASSERT_EQ(dynmoe_ctx_create(&ca, backend(), 0), DYNMOE_OK) << dynmoe_last_error();
    ASSERT_EQ(dynmoe_ctx_create(&cb, backend(), 0), DYNMOE_OK) << dynmoe_last_error();
    for (int round = 0; round < 3; round++) {
        ForwardOut got_a, got_b;
        std::thread ta([&] { got_a = run_moe_forward(ca, backend(), c.router, w, DYNMOE_BF16, T, xa, in, false); });
        std::thread tb([&] { got_b = run_moe_forward(cb, backend(), c.router, w, DYNMOE_BF16, T, xb, in, false); });
        ta.join();
        tb.join();
        EXPECT_EQ(got_a.out_bytes, want_a.out_bytes) << "round " << round;
        EXPECT_EQ(got_b.out_bytes, want_b.out_bytes) << "round " << round;
    }
    dynmoe_ctx_destroy(ca);
    dynmoe_ctx_destroy(cb);
}

/* Tables that take each schedule of cpu/experts.c: few items cut into column
 * blocks over the team, many items one per thread, experts cut into
 * 256-row chunks, the skinny kernel (< 8 rows) beside the panels. */
struct ScheduleCase {
    std::string name;
    int32_t E;
    dmref::Table table;
};

std::vector<ScheduleCase> schedule_cases(Rng &rng) {
    std::vector<ScheduleCase> cases;
    auto add = [&](const std::string &name, int32_t E, int32_t S, const std::vector<int32_t> &ids) {
        ScheduleCase c{name, E, {}};
        c.table.T = (int64_t)ids.size() / S;
        c.table.S = S;
        c.table.ids = ids;
        for (size_t q = 0; q < ids.size(); q++) c.table.weights.push_back(rng.uniform(0.1, 1));
        cases.push_back(c);
    };
    /* decode: T tokens with 8 distinct experts of 64 each */
    for (int64_t T : {1, 4}) {
        std::vector<int32_t> ids;
        for (int64_t t = 0; t < T; t++)
            for (int32_t k = 0; k < 8; k++) ids.push_back((int32_t)((t * 5 + k * 7) % 64));
        add("decode T=" + std::to_string(T), 64, 8, ids);
    }
    { /* three experts with ~100 rows each (Mixtral-like: fewer items than 2 per thread) */
        std::vector<int32_t> ids;
        const int32_t pick[3] = {1, 4, 6};
        for (int64_t t = 0; t < 150; t++) {
            const int64_t a = rng.integer(0, 2), b = (a + rng.integer(1, 2)) % 3;
            ids.push_back(pick[a]), ids.push_back(pick[b]);
        }
        add("three experts", 8, 2, ids);
    }
    { /* one expert with 5 rows (skinny on avx2), one with 300 (two chunks) */
        std::vector<int32_t> ids(300, 5);
        ids.insert(ids.end(), 5, 3);
        for (size_t i = ids.size(); i > 1; i--) std::swap(ids[i - 1], ids[(size_t)rng.integer(0, (int64_t)i - 1)]);
        add("5 + 300 rows", 8, 1, ids);
    }
    { /* a hot expert of 600 rows (three chunks) among 100 rows on 47 others */
        std::vector<int32_t> ids(600, 2);
        for (int i = 0; i < 100; i++) ids.push_back((int32_t)(3 + rng.integer(0, 44)));
        for (size_t i = ids.size(); i > 1; i--) std::swap(ids[i - 1], ids[(size_t)rng.integer(0, (int64_t)i - 1)]);
        add("hot expert", 48, 1, ids);
    }
    { /* prefill: 40 experts with ~20 rows each */
        std::vector<int32_t> ids;
        for (int64_t t = 0; t < 400; t++) {
            const int32_t a = (int32_t)rng.integer(0, 39);
            ids.push_back(a), ids.push_back((a + (int32_t)rng.integer(1, 39)) % 40);
        }
        add("prefill", 40, 2, ids);
    }
    return cases;
}

/* Restores OpenMP's thread count when a test ends. */
struct ThreadCountGuard {
    int saved = omp_get_max_threads();
    ~ThreadCountGuard() { omp_set_num_threads(saved); }
};

/* Every output element is computed by one thread in a fixed order, so the
 * result is bitwise the same for any thread count (1 thread up to more than
 * the cores, where the CPU backend caps at the cores), and right. */
TEST_P(Forward, ThreadCounts) {
    if (backend() != DYNMOE_BACKEND_CPU) GTEST_SKIP() << "OpenMP thread counts are the CPU backend's";
    ThreadCountGuard guard;
    const int procs = omp_get_num_procs();
    Rng rng(seed_of(50, 0));
    const std::vector<ScheduleCase> cases = schedule_cases(rng);
    /* H and I no multiple of the kernels' 12- and 6-row weight blocks */
    const int32_t H = 52, I = 30;
    for (const ScheduleCase &c : cases) {
        for (dynmoe_dtype dt : kDtypes) {
            SCOPED_TRACE(c.name + " " + dtype_name(dt));
            const dynmoe_router r = make_router(c.E, c.table.S);
            ExpertWeights w = make_experts(c.E, H, I, DYNMOE_ACT_SWIGLU, dt, rng);
            Packed x = random_x(c.table.T, H, dt, rng);
            const std::vector<float> wf = to_float(c.table.weights);
            omp_set_num_threads(1);
            ForwardOut one = run_experts_forward(ctx_, backend(), r, w, dt, c.table.T, x, c.table.ids, wf, c.table.S);
            ASSERT_EQ(one.status, DYNMOE_OK);
            dmref::Table tf = c.table;
            tf.weights = to_double(wf);
            std::vector<double> ref;
            dmref::experts_forward(w.ref, 0, DYNMOE_ZERO_OUTPUT, c.table.T, x.values, tf, ref);
            expect_close(one.out, ref, dt, "1 thread");
            for (int threads : {2, 3, 4, procs, procs + 3}) {
                omp_set_num_threads(threads);
                ForwardOut o = run_experts_forward(ctx_, backend(), r, w, dt, c.table.T, x, c.table.ids, wf,
                                                   c.table.S);
                EXPECT_EQ(o.status, DYNMOE_OK);
                EXPECT_TRUE(o.out_bytes == one.out_bytes) << threads << " threads differ from 1 thread";
            }
        }
    }
}

/* Every activation, gate/up layout, bias and weight_on_input through each
 * schedule and kernel of cpu/experts.c (decode T = 1 and 4 split over the
 * team, the skinny kernel beside panels, 256-row chunks of a hot expert,
 * whole items in prefill), f32 and bf16. */
TEST_P(Forward, ExpertOptionsSchedules) {
    struct Opt {
        const char *name;
        dynmoe_act act;
        dynmoe_gate_up gate_up;
        bool bias, on_input;
        double alpha, limit;
    };
    const Opt opts[] = {
        {"swiglu interleaved bias", DYNMOE_ACT_SWIGLU, DYNMOE_GATE_UP_INTERLEAVED, true, false, 1.702, 7.0},
        {"geglu interleaved", DYNMOE_ACT_GEGLU, DYNMOE_GATE_UP_INTERLEAVED, false, false, 1.702, 7.0},
        {"geglu_tanh bias", DYNMOE_ACT_GEGLU_TANH, DYNMOE_GATE_UP_BLOCKED, true, false, 1.702, 7.0},
        {"swiglu_oai interleaved bias (gpt-oss)", DYNMOE_ACT_SWIGLU_OAI, DYNMOE_GATE_UP_INTERLEAVED, true, false, 1.702,
         7.0},
        {"swiglu_oai blocked limit 1.5", DYNMOE_ACT_SWIGLU_OAI, DYNMOE_GATE_UP_BLOCKED, false, false, 1.0, 1.5},
        {"relu2 bias", DYNMOE_ACT_RELU2, DYNMOE_GATE_UP_BLOCKED, true, false, 1.702, 7.0},
        {"silu", DYNMOE_ACT_SILU, DYNMOE_GATE_UP_BLOCKED, false, false, 1.702, 7.0},
        {"swiglu on input", DYNMOE_ACT_SWIGLU, DYNMOE_GATE_UP_BLOCKED, false, true, 1.702, 7.0},
        {"swiglu_oai interleaved bias on input", DYNMOE_ACT_SWIGLU_OAI, DYNMOE_GATE_UP_INTERLEAVED, true, true, 1.702,
         7.0},
        {"relu2 bias on input", DYNMOE_ACT_RELU2, DYNMOE_GATE_UP_BLOCKED, true, true, 1.702, 7.0},
    };
    Rng rng(seed_of(53, 0));
    const std::vector<ScheduleCase> cases = schedule_cases(rng);
    /* H and I no multiple of the kernels' 12- and 6-row weight blocks */
    const int32_t H = 52, I = 30;
    for (const Opt &o : opts) {
        ExpertOptions eo;
        eo.gate_up = o.gate_up;
        eo.bias = o.bias;
        eo.alpha = o.alpha;
        eo.limit = o.limit;
        for (const ScheduleCase &c : cases) {
            for (dynmoe_dtype dt : {DYNMOE_F32, DYNMOE_BF16}) {
                SCOPED_TRACE(std::string(o.name) + ", " + c.name + " " + dtype_name(dt));
                dynmoe_router r = make_router(c.E, c.table.S);
                r.weight_on_input = o.on_input ? 1 : 0;
                check_experts(r, H, I, o.act, dt, c.table, rng, ST_PLAN, eo);
            }
        }
    }
}

/* ---- quantized weights (issue 16) ---- */

/* T tokens with S distinct real experts each out of E, weights in [0.1, 1]. */
dmref::Table distinct_table(int32_t E, int32_t S, int64_t T, Rng &rng) {
    dmref::Table t;
    t.T = T;
    t.S = S;
    for (int64_t i = 0; i < T; i++) {
        std::vector<int32_t> ids;
        while ((int32_t)ids.size() < S) {
            const int32_t id = (int32_t)rng.integer(0, E - 1);
            if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
        }
        for (int32_t id : ids) t.ids.push_back(id), t.weights.push_back(rng.uniform(0.1, 1));
    }
    return t;
}

/* After a test edited w.q13 / w.q2 (codes, scales): the codes the library
 * gets and the values the reference sees (dmref::dequantize). */
void redequantize(ExpertWeights &w) {
    const int64_t rows = dmref::gated(w.ref.act) ? 2 * (int64_t)w.ref.I : w.ref.I;
    w.w13.bytes = w.q13.q;
    w.w2.bytes = w.q2.q;
    w.ref.w13 = w.w13.values = dmref::dequantize(w.q13, w.ref.E, rows, w.ref.H);
    w.ref.w2 = w.w2.values = dmref::dequantize(w.q2, w.ref.E, w.ref.H, w.ref.I);
}

struct QuantFormat {
    const char *name;
    dynmoe_weight_format format;
    int32_t group;
    bool zeros;
    int32_t H, I; /* shapes that cut the format's blocks: FP8 128-blocks along N and K with tails, INT4 ragged groups */
};
const QuantFormat kQuantFormats[] = {
    {"fp8_block", DYNMOE_WEIGHTS_FP8_BLOCK, 0, false, 160, 136}, /* w13 272 x 160: 3 x 2 blocks */
    {"fp8_block K % 8 tails", DYNMOE_WEIGHTS_FP8_BLOCK, 0, false, 134, 139},
    {"mxfp4", DYNMOE_WEIGHTS_MXFP4, 0, false, 96, 64},
    {"int4 g32 zeros", DYNMOE_WEIGHTS_INT4, 32, true, 100, 72}, /* last groups of 4 and 8, K % 8 tails */
    {"int4 g64 symmetric", DYNMOE_WEIGHTS_INT4, 64, false, 100, 72},
    {"int4 g128 zeros", DYNMOE_WEIGHTS_INT4, 128, true, 100, 72}, /* one ragged group per row */
    /* GEMM 1's K long enough for the decode kernels' many-step paths (T <= 16, one act: the test's
     * quantization and fp64 reference are slow at these shapes): group scales changing inside and across 64-steps, a partial group flushed
     * at K rounded down to 64, 8 groups a step in the zero points, 32 MXFP4 scale bytes a step */
    {"mxfp4 wide", DYNMOE_WEIGHTS_MXFP4, 0, false, 1056, 64},
    {"int4 g32 zeros wide", DYNMOE_WEIGHTS_INT4, 32, true, 1100, 72},
    {"int4 g64 symmetric wide", DYNMOE_WEIGHTS_INT4, 64, false, 1100, 72},
    {"int4 g128 zeros wide", DYNMOE_WEIGHTS_INT4, 128, true, 1100, 72},
};
static bool wide(const QuantFormat &f) { return f.H > 1000; }

ExpertOptions quant_options(const QuantFormat &f) {
    ExpertOptions o;
    o.format = f.format;
    o.group = f.group;
    o.zeros = f.zeros;
    return o;
}

/* Every format x f32/bf16 x decode (T = 1, 16) and prefill (T = 300, one
 * expert with > 256 rows) x SwiGLU blocked, SwiGLU-OAI interleaved with
 * biases (gpt-oss), ReLU^2, against the fp64 reference on the dequantized
 * weights. */
TEST_P(Forward, QuantizedWeights) {
    struct Act {
        const char *name;
        dynmoe_act act;
        dynmoe_gate_up gate_up;
        bool bias, on_input;
    };
    /* on_input: the slot weight scales GEMM 1's rows (router.weight_on_input), so a kernel that
     * put two rows' GEMM 1 outputs in each other's place (GEMM 2 swapping them back) is seen;
     * at T = 16 only, where experts get 2 or 6 rows (the 4-bit kernels' two-row tail). */
    const Act acts[] = {{"swiglu", DYNMOE_ACT_SWIGLU, DYNMOE_GATE_UP_BLOCKED, false, false},
                        {"swiglu_oai interleaved bias", DYNMOE_ACT_SWIGLU_OAI, DYNMOE_GATE_UP_INTERLEAVED, true, false},
                        {"relu2", DYNMOE_ACT_RELU2, DYNMOE_GATE_UP_BLOCKED, false, false},
                        {"swiglu on_input", DYNMOE_ACT_SWIGLU, DYNMOE_GATE_UP_BLOCKED, false, true}};
    const int32_t S = 4;
    for (size_t fi = 0; fi < sizeof kQuantFormats / sizeof kQuantFormats[0]; fi++) {
        const QuantFormat &f = kQuantFormats[fi];
        for (const Act &a : acts) {
            for (dynmoe_dtype dt : {DYNMOE_F32, DYNMOE_BF16}) {
                for (int64_t T : {1, 16, 300}) {
                    if ((a.on_input && T != 16) || (wide(f) && (T > 16 || a.act != DYNMOE_ACT_SWIGLU_OAI))) continue;
                    const uint64_t seed = seed_of(60 + fi, (int)(T + 7 * (int)dt + 31 * (int)a.act + 97 * a.on_input));
                    SCOPED_TRACE(std::string(f.name) + " " + a.name + " " + dtype_name(dt) + " T=" + std::to_string(T) +
                                 " seed=" + std::to_string(seed));
                    Rng rng(seed);
                    const int32_t E = wide(f) ? 8 : 16;
                    dmref::Table t = distinct_table(E, S, T, rng);
                    if (T == 300) /* a hot expert: 300 rows, two chunks */
                        for (int64_t i = 0; i < T; i++) t.ids[(size_t)(i * S)] = 5, t.ids[(size_t)(i * S + 1)] %= 5;
                    ExpertOptions o = quant_options(f);
                    o.gate_up = a.gate_up;
                    o.bias = a.bias;
                    dynmoe_router r = make_router(E, S);
                    r.weight_on_input = a.on_input ? 1 : 0;
                    check_experts(r, f.H, f.I, a.act, dt, t, rng, ST_PLAN, o);
                }
            }
        }
    }
}

/* One forward of weights w over table t: output against the reference on
 * the tokens that do not use expert `bad`; the tokens that do must come out
 * all non-finite (dynmoe.h: a NaN/Inf scale reaches exactly the tokens
 * routed to that expert). bad = -1: every token compared. */
void check_quant_forward(dynmoe_ctx *ctx, dynmoe_backend b, const ExpertWeights &w, dynmoe_dtype dt,
                         const dmref::Table &t, int32_t bad, Rng &rng) {
    const int32_t H = w.ref.H;
    Packed x = random_x(t.T, H, dt, rng);
    const std::vector<float> wf = to_float(t.weights);
    dmref::Table tf = t;
    tf.weights = to_double(wf);
    ForwardOut o = run_experts_forward(ctx, b, make_router(w.ref.E, t.S), w, dt, t.T, x, t.ids, wf, t.S);
    ASSERT_EQ(o.status, DYNMOE_OK) << dynmoe_last_error();
    std::vector<int64_t> good;
    std::vector<double> got;
    for (int64_t i = 0; i < t.T; i++) {
        bool hit = false;
        for (int32_t k = 0; k < t.S; k++) hit |= t.ids[(size_t)(i * t.S + k)] == bad;
        if (!hit) {
            good.push_back(i);
            continue;
        }
        for (int32_t h = 0; h < H; h++)
            EXPECT_FALSE(std::isfinite(o.out[(size_t)(i * H + h)])) << "token " << i << " of expert " << bad << ", h " << h;
    }
    std::vector<double> ref;
    dmref::experts_forward(w.ref, 0, DYNMOE_ZERO_OUTPUT, t.T, x.values, tf, ref, good);
    std::vector<double> g, r;
    for (int64_t i : good)
        for (int32_t h = 0; h < H; h++) g.push_back(o.out[(size_t)(i * H + h)]), r.push_back(ref[(size_t)(i * H + h)]);
    ASSERT_FALSE(good.empty());
    expect_close(g, r, dt, "tokens not routed to the bad expert");
}

/* Scales of 0 (zero weights: the expert's output is its b2), NaN and Inf
 * scales (non-finite outputs for exactly the tokens routed there), on the
 * decode and the prefill schedules; T = 1 compares one row against the
 * zero-scale expert (MXFP4: blocks of 2^-127 between normal ones). */
TEST_P(Forward, QuantizedScaleEdgeCases) {
    const int32_t E = 8, S = 2;
    for (size_t fi = 0; fi < sizeof kQuantFormats / sizeof kQuantFormats[0]; fi++) {
        const QuantFormat &f = kQuantFormats[fi];
        for (dynmoe_dtype dt : {DYNMOE_F32, DYNMOE_BF16}) {
            for (int64_t T : {1, 3, 200}) {
                if (wide(f) && T > 16) continue;
                const uint64_t seed = seed_of(70 + fi, (int)(T + 7 * (int)dt));
                SCOPED_TRACE(std::string(f.name) + " " + dtype_name(dt) + " T=" + std::to_string(T) +
                             " seed=" + std::to_string(seed));
                Rng rng(seed);
                dmref::Table t = distinct_table(E, S, T, rng);
                ExpertOptions o = quant_options(f);
                o.bias = true;
                ExpertWeights w = make_experts(E, f.H, f.I, DYNMOE_ACT_SWIGLU, dt, rng, o);
                /* expert 2: every scale 0 (w13 and w2); expert 6: one NaN or Inf scale in w13 */
                auto set_scale = [&](dmref::QuantMatrix &q, size_t from, size_t count, double v) {
                    for (size_t i = from; i < from + count; i++) {
                        if (f.format == DYNMOE_WEIGHTS_FP8_BLOCK) q.scale_f32[i] = (float)v;
                        else if (f.format == DYNMOE_WEIGHTS_MXFP4) q.scale_u8[i] = std::isnan(v) ? 0xff : 0; /* 0: 2^-127 */
                        else q.scale_f16[i] = dmref::f32_to_f16((float)v);
                    }
                };
                const size_t per13 = w.q13.scale_f32.size() + w.q13.scale_u8.size() + w.q13.scale_f16.size();
                const size_t per2 = w.q2.scale_f32.size() + w.q2.scale_u8.size() + w.q2.scale_f16.size();
                if (f.format != DYNMOE_WEIGHTS_MXFP4) { /* ue8m0 has no 0: its smallest, 2^-127, stands in */
                    set_scale(w.q13, per13 / E * 2, per13 / E, 0.0);
                    set_scale(w.q2, per2 / E * 2, per2 / E, 0.0);
                } else { /* expert 2: every other block 2^-127, so that its rows mix both kinds of block */
                    for (size_t i = per13 / E * 2; i < per13 / E * 3; i += 2) w.q13.scale_u8[i] = 0;
                    for (size_t i = per2 / E * 2; i < per2 / E * 3; i += 2) w.q2.scale_u8[i] = 0;
                }
                const double bad = f.format == DYNMOE_WEIGHTS_INT4 ? std::numeric_limits<double>::infinity()
                                                                   : std::numeric_limits<double>::quiet_NaN();
                set_scale(w.q13, per13 / E * 6 + per13 / E / 2, 1, bad);
                redequantize(w);
                /* the expert with zero scales is in the table: its rows are b2 exactly */
                for (int64_t i = 0; i < T; i += 3) t.ids[(size_t)(i * S + 1)] = t.ids[(size_t)(i * S)] == 2 ? 3 : 2;
                t.ids[0] = 6; /* slot 1 of token 0 is 2 or 3 now */
                if (T == 1) t.ids[0] = 2, t.ids[1] = 3; /* one row per expert (decode), compared */
                check_quant_forward(ctx_, backend(), w, dt, t, 6, rng);
            }
        }
    }
}

/* 4-bit experts at one row each (decode) with activations the integer
 * decode path cannot split: a NaN and an Inf in x make their tokens' outputs
 * non-finite, as the products would; x with a block below 2^-90 and a block
 * of zeros is computed as the reference computes it. */
TEST_P(Forward, QuantizedActivationEdgeCases) {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const int32_t E = 8, S = 2;
    const int64_t T = 4;
    for (size_t fi = 0; fi < sizeof kQuantFormats / sizeof kQuantFormats[0]; fi++) {
        const QuantFormat &f = kQuantFormats[fi];
        if (f.format == DYNMOE_WEIGHTS_FP8_BLOCK || wide(f)) continue;
        for (dynmoe_dtype dt : {DYNMOE_F32, DYNMOE_BF16}) {
            const uint64_t seed = seed_of(75 + fi, (int)dt);
            SCOPED_TRACE(std::string(f.name) + " " + dtype_name(dt) + " seed=" + std::to_string(seed));
            Rng rng(seed);
            ExpertWeights w = make_experts(E, f.H, f.I, DYNMOE_ACT_SWIGLU, dt, rng, quant_options(f));
            dmref::Table t;
            t.T = T, t.S = S;
            for (int32_t id = 0; id < T * S; id++) t.ids.push_back(id), t.weights.push_back(rng.uniform(0.1, 1));
            const int32_t H = f.H;
            Packed x = random_x(T, H, dt, rng);
            set_packed(x, 5, nan);                     /* token 0 */
            set_packed(x, (size_t)H + 40, -inf);       /* token 1 */
            for (int32_t h = 0; h < 32; h++) {         /* token 2: a tiny block and a block of zeros */
                set_packed(x, (size_t)(2 * H + h), (float)(x.values[(size_t)(2 * H + h)] * 3e-38));
                set_packed(x, (size_t)(2 * H + 32 + h), 0.0f);
            }
            const std::vector<float> wf = to_float(t.weights);
            dmref::Table tf = t;
            tf.weights = to_double(wf);
            ForwardOut o = run_experts_forward(ctx_, backend(), make_router(E, S), w, dt, T, x, t.ids, wf, S);
            ASSERT_EQ(o.status, DYNMOE_OK) << dynmoe_last_error();
            for (int64_t i : {0, 1})
                for (int32_t h = 0; h < H; h++)
                    EXPECT_FALSE(std::isfinite(o.out[(size_t)(i * H + h)])) << "token " << i << ", h " << h;
            std::vector<double> ref;
            const std::vector<int64_t> good = {2, 3};
            dmref::experts_forward(w.ref, 0, DYNMOE_ZERO_OUTPUT, T, x.values, tf, ref, good);
            std::vector<double> g, r;
            for (int64_t i : good)
                for (int32_t h = 0; h < H; h++) g.push_back(o.out[(size_t)(i * H + h)]), r.push_back(ref[(size_t)(i * H + h)]);
            expect_close(g, r, dt, "tokens 2 and 3");
        }
    }
}

/* Every float8 e4m3fn code but the two NaNs, in w13 and w2, against the
 * reference's own decoding (subnormals, the largest, both signs). */
TEST_P(Forward, Fp8EveryCode) {
    const QuantFormat &f = kQuantFormats[0];
    for (dynmoe_dtype dt : {DYNMOE_F32, DYNMOE_BF16}) {
        for (int64_t T : {2, 100}) {
            Rng rng(seed_of(80, (int)(T + (int)dt)));
            SCOPED_TRACE(std::string(dtype_name(dt)) + " T=" + std::to_string(T));
            ExpertWeights w = make_experts(4, f.H, f.I, DYNMOE_ACT_SWIGLU, dt, rng, quant_options(f));
            for (dmref::QuantMatrix *q : {&w.q13, &w.q2})
                for (size_t i = 0; i < q->q.size(); i++) {
                    const uint8_t c = (uint8_t)((i * 37) % 254); /* 0..253, then skip 0x7f */
                    q->q[i] = (uint8_t)(c >= 0x7f ? c + 1 : c);
                }
            for (float &sc : w.q13.scale_f32) sc = 1.0f / 2048; /* |w| <= 448 / 2048 */
            for (float &sc : w.q2.scale_f32) sc = 1.0f / 4096;
            redequantize(w);
            check_quant_forward(ctx_, backend(), w, dt, distinct_table(4, 2, T, rng), -1, rng);
        }
    }
}

/* The float8 NaN codes (S.1111.111, both signs) in one weight of expert 1's
 * w13: exactly the tokens routed to it come out non-finite, the others right.
 * H = 170 puts the code in each step of the decode kernel: k = 3 in a
 * 32-value step, 163 in the 8-value remainder of the last block, 169 in the
 * scalar K tail; T = 2 decodes in the skinny kernel, T = 100 in the panels. */
TEST_P(Forward, Fp8NanCode) {
    const int32_t E = 4, S = 2, H = 170, I = 64;
    for (uint8_t code : {(uint8_t)0x7f, (uint8_t)0xff})
        for (int32_t k : {3, 163, 169})
            for (int64_t T : {2, 100}) {
                SCOPED_TRACE("code " + std::to_string(code) + " k=" + std::to_string(k) + " T=" + std::to_string(T));
                Rng rng(seed_of(81, (int)(code + k + T)));
                ExpertOptions o = quant_options(kQuantFormats[0]);
                ExpertWeights w = make_experts(E, H, I, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng, o);
                const int64_t rows = 2 * (int64_t)I, row = 37;
                w.q13.q[(size_t)((1 * rows + row) * H + k)] = code;
                redequantize(w);
                dmref::Table t = distinct_table(E, S, T, rng);
                t.ids[0] = 1, t.ids[1] = 2, t.ids[2] = 0, t.ids[3] = 3; /* token 0 uses expert 1, token 1 not */
                check_quant_forward(ctx_, backend(), w, DYNMOE_F32, t, 1, rng);
            }
}

/* A workspace sized at one thread count stays valid when the count changes
 * before the call (omp_set_num_threads, torch.set_num_threads): raised past
 * the cores, then lowered, the same workspace gives OK and the same bits. */
TEST_P(Forward, WorkspaceSizedBeforeThreadChange) {
    if (backend() != DYNMOE_BACKEND_CPU) GTEST_SKIP() << "OpenMP thread counts are the CPU backend's";
    ThreadCountGuard guard;
    const int procs = omp_get_num_procs();
    ModelCase c = find_case("qwen3_30b_a3b");
    c.H = 48;
    c.I = 40;
    ASSERT_FALSE(c.bias || c.mask) << "the call below passes no bias and no mask";
    const int64_t T = 100;
    for (dynmoe_dtype dt : kDtypes) {
        SCOPED_TRACE(dtype_name(dt));
        Rng rng(seed_of(51, (int)dt));
        RouteInputs in = make_route_inputs(c, T, DYNMOE_F32, rng);
        ExpertWeights w = make_experts(c.router.num_experts, c.H, c.I, c.act, dt, rng);
        Packed x = random_x(T, c.H, dt, rng);
        Buffer w13 = make_buffer(backend(), w.w13.bytes), w2 = make_buffer(backend(), w.w2.bytes);
        dynmoe_experts ex = make_experts_desc(c.router, c.H, c.I, dt, c.act, w13.get(), w2.get());
        Buffer xb = make_buffer(backend(), x.bytes), logits = make_buffer(backend(), in.logits.bytes);
        omp_set_num_threads(1);
        const size_t ws_bytes = dynmoe_workspace_size(&c.router, &ex, T);
        ASSERT_GT(ws_bytes, 0u) << dynmoe_last_error();
        Buffer ws(backend(), ws_bytes), out(backend(), (size_t)(T * c.H) * dmref::dtype_size(dt));
        std::vector<uint8_t> first;
        for (int threads : {1, 2 * procs + 1, procs, 1}) {
            omp_set_num_threads(threads);
            EXPECT_EQ(dynmoe_workspace_size(&c.router, &ex, T), ws_bytes) << threads << " threads";
            out.fill(kPoisonFloat);
            ws.fill(kPoisonFloat);
            ASSERT_EQ(dynmoe_moe_forward(ctx_, &c.router, &ex, T, xb.get(), logits.get(), DYNMOE_F32, nullptr, nullptr,
                                         out.get(), ws.get(), ws_bytes, nullptr),
                      DYNMOE_OK)
                << threads << " threads: " << dynmoe_last_error();
            if (first.empty()) {
                first = out.bytes_vector();
                expect_close(unpack(first, dt, (size_t)(T * c.H)), moe_reference_out(c, w, T, x, in), dt, "1 thread");
            } else {
                EXPECT_TRUE(out.bytes_vector() == first) << threads << " threads differ from 1 thread";
            }
        }
    }
}

/* The default CPU path follows the CPU's flags as Linux reports them (a
 * second reading than isa.c's CPUID, XCR0 and arch_prctl): onednn where AMX-BF16
 * is there and the build has oneDNN, else avx512 (F/BW/DQ/VL), avx2 (with FMA
 * and F16C) or scalar. */
TEST(CpuIsa, DefaultFollowsTheCpuFlags) {
    std::ifstream info("/proc/cpuinfo");
    std::string line, flags;
    while (std::getline(info, line))
        if (line.rfind("flags", 0) == 0) {
            flags = line.substr(line.find(':') + 1) + " ";
            break;
        }
    if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags on this machine";
    auto has = [&](const char *f) { return flags.find(" " + std::string(f) + " ") != std::string::npos; };
    setenv("DYNMOE_CPU_ISA", "onednn", 1);
    const bool onednn = std::string(dynmoe_cpu_isa()) == "onednn"; /* a build with oneDNN takes it on request */
    unsetenv("DYNMOE_CPU_ISA");
    std::string want = "scalar";
    if (has("avx2") && has("fma") && has("f16c")) want = "avx2";
    if (want == "avx2" && has("avx512f") && has("avx512bw") && has("avx512dq") && has("avx512vl")) want = "avx512";
    if (want == "avx512" && has("amx_tile") && has("amx_bf16") && onednn) want = "onednn";
    EXPECT_EQ(std::string(dynmoe_cpu_isa()), want) << "flags:" << flags;
    std::printf("[ INFO     ] this CPU's default path: %s (oneDNN in the build: %s)\n", want.c_str(),
                onednn ? "yes" : "no");
}

/* DYNMOE_CPU_ISA lowers the CPU path and never raises it; a name that is no
 * path makes dynmoe_cpu_isa() NULL and a CPU forward fail with a message. */
TEST(CpuIsa, EnvironmentLowersThePath) {
    unsetenv("DYNMOE_CPU_ISA");
    const char *best_c = dynmoe_cpu_isa();
    ASSERT_NE(best_c, nullptr);
    const std::string best = best_c;
    // onednn is the default only where the build has oneDNN and the CPU AVX-512 (isa.c).
    EXPECT_TRUE(best == "scalar" || best == "avx2" || best == "avx512" || best == "onednn") << best;
    setenv("DYNMOE_CPU_ISA", "scalar", 1);
    EXPECT_STREQ(dynmoe_cpu_isa(), "scalar");
    setenv("DYNMOE_CPU_ISA", "avx2", 1);
    EXPECT_STREQ(dynmoe_cpu_isa(), best != "scalar" ? "avx2" : "scalar");
    setenv("DYNMOE_CPU_ISA", "avx512", 1); /* the AVX-512 CPUs' own kernels, else the best lower path */
    EXPECT_STREQ(dynmoe_cpu_isa(), best == "onednn" || best == "avx512" ? "avx512" : best.c_str());
    setenv("DYNMOE_CPU_ISA", "", 1);
    EXPECT_EQ(std::string(dynmoe_cpu_isa()), best);
    setenv("DYNMOE_CPU_ISA", "avx1024", 1);
    EXPECT_EQ(dynmoe_cpu_isa(), nullptr);
    dynmoe_ctx *ctx = nullptr;
    ASSERT_EQ(dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_CPU, 0), DYNMOE_OK);
    Rng rng(seed_of(52, 0));
    const dynmoe_router r = make_router(4, 1);
    ExpertWeights w = make_experts(4, 16, 8, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng);
    Buffer w13 = make_buffer(DYNMOE_BACKEND_CPU, w.w13.bytes), w2 = make_buffer(DYNMOE_BACKEND_CPU, w.w2.bytes);
    const dynmoe_experts ex = make_experts_desc(r, 16, 8, DYNMOE_F32, DYNMOE_ACT_SWIGLU, w13.get(), w2.get());
    Packed x = random_x(2, 16, DYNMOE_F32, rng);
    Buffer xb = make_buffer(DYNMOE_BACKEND_CPU, x.bytes), ids = make_buffer(DYNMOE_BACKEND_CPU, std::vector<int32_t>{1, 2});
    Buffer wt = make_buffer(DYNMOE_BACKEND_CPU, std::vector<float>{1, 1}), out(DYNMOE_BACKEND_CPU, 2 * 16 * 4);
    const size_t ws_bytes = dynmoe_experts_workspace_size(&r, &ex, 2, 1);
    Buffer ws(DYNMOE_BACKEND_CPU, ws_bytes);
    EXPECT_EQ(dynmoe_experts_forward(ctx, &r, &ex, 2, xb.get(), ids.as<int32_t>(), wt.as<float>(), 1, out.get(),
                                     ws.get(), ws_bytes, nullptr),
              DYNMOE_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(dynmoe_last_error()).find("DYNMOE_CPU_ISA=avx1024"), std::string::npos)
        << dynmoe_last_error();
    unsetenv("DYNMOE_CPU_ISA");
    EXPECT_EQ(dynmoe_experts_forward(ctx, &r, &ex, 2, xb.get(), ids.as<int32_t>(), wt.as<float>(), 1, out.get(),
                                     ws.get(), ws_bytes, nullptr),
              DYNMOE_OK)
        << dynmoe_last_error();
    dynmoe_ctx_destroy(ctx);
}

/* Reference self-checks: SwiGLU and GEGLU of a hand-computed case. */
TEST(ForwardReference, HandComputed) {
    dmref::Experts ex;
    ex.E = 1;
    ex.H = 2;
    ex.I = 1;
    /* gate row (1, 0), up row (0, 2); w2 rows (3), (-1) */
    ex.w13 = {1, 0, 0, 2};
    ex.w2 = {3, -1};
    const double x[2] = {0.5, 0.25};
    double y[2];
    ex.act = DYNMOE_ACT_SWIGLU;
    dmref::ffn(ex, 0, x, y);
    const double a = 0.5 / (1 + std::exp(-0.5)) * 0.5;
    EXPECT_NEAR(y[0], 3 * a, 1e-15);
    EXPECT_NEAR(y[1], -a, 1e-15);
    ex.act = DYNMOE_ACT_GEGLU;
    dmref::ffn(ex, 0, x, y);
    const double g = 0.5 * 0.5 * (1 + std::erf(0.5 / std::sqrt(2.0))) * 0.5;
    EXPECT_NEAR(y[0], 3 * g, 1e-15);
    /* combine: identity zero expert adds w*x, zero-output adds 0, an id past
     * E+Z is skipped, a repeated id counts per slot */
    dmref::Table t;
    t.T = 1;
    t.S = 5;
    t.ids = {0, 1, 2, 3, 0};
    t.weights = {1.0, 2.0, 100.0, 100.0, 1.0};
    std::vector<double> out;
    ex.act = DYNMOE_ACT_SWIGLU;
    dmref::experts_forward(ex, 2, DYNMOE_ZERO_IDENTITY, 1, {0.5, 0.25}, t, out);
    EXPECT_NEAR(out[0], 2 * 3 * a + 2 * 0.5 + 100 * 0.5, 1e-12);
    dmref::experts_forward(ex, 2, DYNMOE_ZERO_OUTPUT, 1, {0.5, 0.25}, t, out);
    EXPECT_NEAR(out[0], 2 * 3 * a, 1e-12);
}
