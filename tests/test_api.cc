/*
 * test_api.cc — the API's contract outside the math: every bad argument
 * returns its status, sets a non-empty dynmoe_last_error() and writes
 * nothing (outputs, workspace, plan and stats keep their poison); status
 * names; version; T == 0.
 */
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>

#include "cases.h"
#include "enum_shim.h"
#include "run.h"

using namespace dmtest;

/* ---- status names, version ---------------------------------------------------- */

TEST(Api, StatusNames) {
    const char *names[] = {"DYNMOE_OK",
                           "DYNMOE_ERR_INVALID_ARGUMENT",
                           "DYNMOE_ERR_UNSUPPORTED",
                           "DYNMOE_ERR_WORKSPACE_TOO_SMALL",
                           "DYNMOE_ERR_OUT_OF_MEMORY",
                           "DYNMOE_ERR_DEVICE",
                           "DYNMOE_ERR_INTERNAL"};
    ASSERT_EQ((int)DYNMOE_STATUS_COUNT, 7);
    for (int s = 0; s < DYNMOE_STATUS_COUNT; s++) {
        const char *n = dynmoe_status_name((dynmoe_status)s);
        ASSERT_NE(n, nullptr);
        EXPECT_STREQ(n, names[s]);
    }
    EXPECT_STREQ(dynmoe_status_name(DYNMOE_STATUS_COUNT), "unknown status");
    EXPECT_STREQ(shim_status_name(-1), "unknown status");
    EXPECT_STREQ(shim_status_name(12345), "unknown status");
}

TEST(Api, Version) {
    EXPECT_EQ(dynmoe_version(), DYNMOE_VERSION);
    EXPECT_EQ(DYNMOE_VERSION, DYNMOE_VERSION_MAJOR * 10000 + DYNMOE_VERSION_MINOR * 100 + DYNMOE_VERSION_PATCH);
    EXPECT_EQ(dynmoe_version() / 10000, DYNMOE_VERSION_MAJOR);
    EXPECT_EQ(dynmoe_version() / 100 % 100, DYNMOE_VERSION_MINOR);
    EXPECT_EQ(dynmoe_version() % 100, DYNMOE_VERSION_PATCH);
}

TEST(Api, Initializers) {
    dynmoe_router r = DYNMOE_ROUTER_INIT;
    EXPECT_EQ(r.struct_size, sizeof(dynmoe_router));
    EXPECT_EQ(r.score, DYNMOE_SCORE_SOFTMAX);
    EXPECT_EQ(r.select, DYNMOE_SELECT_TOPK);
    EXPECT_EQ(r.norm, DYNMOE_NORM_NONE);
    EXPECT_EQ(r.scale, 1.0f);
    EXPECT_EQ(r.num_zero_experts, 0);
    EXPECT_EQ(r.num_groups, 0);
    EXPECT_EQ(r.num_tasks, 0);
    dynmoe_experts x = DYNMOE_EXPERTS_INIT;
    EXPECT_EQ(x.struct_size, sizeof(dynmoe_experts));
    EXPECT_EQ(x.act, DYNMOE_ACT_SWIGLU);
    /* fields of 0.2 */
    EXPECT_EQ(r.weight_on_input, 0);
    EXPECT_EQ(r.expert_scale, nullptr);
    EXPECT_EQ(x.b13, nullptr);
    EXPECT_EQ(x.b2, nullptr);
    EXPECT_EQ(x.gate_up, DYNMOE_GATE_UP_BLOCKED);
    /* field of 0.3 */
    EXPECT_EQ(x.packed, nullptr);
    EXPECT_EQ(x.alpha, 1.702f);
    EXPECT_EQ(x.limit, 7.0f);
}

TEST(Api, Context) {
    EXPECT_EQ(dynmoe_ctx_create(nullptr, DYNMOE_BACKEND_CPU, 0), DYNMOE_ERR_INVALID_ARGUMENT);
    EXPECT_STRNE(dynmoe_last_error(), "");
    dynmoe_ctx *ctx = nullptr;
    EXPECT_EQ(dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_COUNT, 0), DYNMOE_ERR_INVALID_ARGUMENT);
    EXPECT_STRNE(dynmoe_last_error(), "");
    EXPECT_EQ(shim_ctx_create(&ctx, -1, 0), DYNMOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(shim_ctx_create(&ctx, 77, 0), DYNMOE_ERR_INVALID_ARGUMENT);
    ASSERT_EQ(dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_CPU, 0), DYNMOE_OK) << dynmoe_last_error();
    EXPECT_EQ(dynmoe_ctx_backend(ctx), DYNMOE_BACKEND_CPU);
    EXPECT_EQ(dynmoe_ctx_set_stats(nullptr, nullptr), DYNMOE_ERR_INVALID_ARGUMENT);
    EXPECT_STRNE(dynmoe_last_error(), "");
    dynmoe_ctx_destroy(ctx);
    dynmoe_ctx_destroy(nullptr);
    if (!dynmoe_cuda_available()) {
        dynmoe_ctx *c = nullptr;
        const dynmoe_status st = dynmoe_ctx_create(&c, DYNMOE_BACKEND_CUDA, 0);
        EXPECT_TRUE(st == DYNMOE_ERR_UNSUPPORTED || st == DYNMOE_ERR_DEVICE) << dynmoe_status_name(st);
        EXPECT_STRNE(dynmoe_last_error(), "");
        dynmoe_ctx_destroy(c);
    }
}

/* A caller built against an earlier release passes that release's router
 * and experts structs, which end where the fields added since begin: they are
 * accepted and give the result of the full structs, and nothing past them is
 * read (each sits in a heap block of exactly its size, so ASan sees any
 * over-read). */
struct ReleaseSizes {
    const char *release;             /* the test's suffix: "01" is release 0.1 */
    size_t router, experts;          /* where that release's structs end in today's */
    size_t router_lp64, experts_lp64; /* that release's sizeof on LP64 */
    uint64_t seed;
};

void PrintTo(const ReleaseSizes &p, std::ostream *os) { *os << "release " << p.release; }

class StructSizes : public ::testing::TestWithParam<ReleaseSizes> {};

TEST_P(StructSizes, OfRelease) {
    const ReleaseSizes &p = GetParam();
    dynmoe_ctx *ctx = nullptr;
    ASSERT_EQ(dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_CPU, 0), DYNMOE_OK) << dynmoe_last_error();
    const ModelCase c = find_case("beam_deepseek_v3");
    const int64_t T = 37;
    Rng rng(p.seed);
    RouteInputs in = make_route_inputs(c, T, DYNMOE_F32, rng);
    ExpertWeights w = make_experts(c.router.num_experts, c.H, c.I, c.act, DYNMOE_F32, rng);
    Packed x = random_x(T, c.H, DYNMOE_F32, rng);
    ForwardOut full = run_moe_forward(ctx, DYNMOE_BACKEND_CPU, c.router, w, DYNMOE_F32, T, x, in, false);
    ASSERT_EQ(full.status, DYNMOE_OK);

    EXPECT_EQ(p.router, p.router_lp64) << p.release << "'s sizeof(dynmoe_router) on LP64";
    EXPECT_EQ(p.experts, p.experts_lp64) << p.release << "'s sizeof(dynmoe_experts) on LP64";
    BackendExperts bx = upload_experts(DYNMOE_BACKEND_CPU, c.router, w, DYNMOE_F32);
    dynmoe_router r = c.router;
    dynmoe_experts ex = bx.desc;
    r.struct_size = p.router;
    ex.struct_size = p.experts;
    std::unique_ptr<char[]> rb(new char[p.router]), xb(new char[p.experts]);
    std::memcpy(rb.get(), &r, p.router);
    std::memcpy(xb.get(), &ex, p.experts);
    const dynmoe_router *rp = reinterpret_cast<const dynmoe_router *>(rb.get());
    const dynmoe_experts *xp = reinterpret_cast<const dynmoe_experts *>(xb.get());

    const size_t bytes = dynmoe_workspace_size(rp, xp, T);
    EXPECT_EQ(bytes, dynmoe_workspace_size(&c.router, &bx.desc, T)) << dynmoe_last_error();
    Buffer ws(DYNMOE_BACKEND_CPU, bytes), out(DYNMOE_BACKEND_CPU, (size_t)(T * c.H) * 4);
    ws.fill(kPoisonFloat);
    out.fill(kPoisonFloat);
    ASSERT_EQ(dynmoe_moe_forward(ctx, rp, xp, T, x.bytes.data(), in.logits.bytes.data(), DYNMOE_F32,
                                 in.bias.data(), in.mask.bytes.data(), out.get(), ws.get(), bytes, nullptr),
              DYNMOE_OK)
        << dynmoe_last_error();
    EXPECT_EQ(out.bytes_vector(), full.out_bytes) << p.release << " structs give another result";
    dynmoe_ctx_destroy(ctx);
}

/* 0.1: the router without weight_on_input (0.2), the experts without b13 (0.2).
 * 0.2: the router as today (0.3 added nothing to it), the experts without
 * `packed` (0.3). */
INSTANTIATE_TEST_SUITE_P(
    Api, StructSizes,
    ::testing::Values(ReleaseSizes{"01", offsetof(dynmoe_router, weight_on_input), offsetof(dynmoe_experts, b13),
                                   64, 48, 11},
                      ReleaseSizes{"02", sizeof(dynmoe_router), offsetof(dynmoe_experts, packed), 80, 120, 12}),
    [](const ::testing::TestParamInfo<ReleaseSizes> &i) { return std::string("Release") + i.param.release; });

/* ---- bad arguments ------------------------------------------------------------- */

namespace {

/* Every router field that a check must reject (base: E 128, K 8). */
struct RouterMutation {
    const char *name;
    std::function<void(dynmoe_router &)> apply;
};

alignas(16) const float kScales[8] = {1, 1, 1, 1, 1, 1, 1, 1};

std::vector<RouterMutation> router_mutations() {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    return {
        {"struct_size 0", [](dynmoe_router &r) { r.struct_size = 0; }},
        {"struct_size 8", [](dynmoe_router &r) { r.struct_size = 8; }},
        {"num_experts 0", [](dynmoe_router &r) { r.num_experts = 0; }},
        {"num_experts -1", [](dynmoe_router &r) { r.num_experts = -1; }},
        {"num_experts 1025", [](dynmoe_router &r) { r.num_experts = 1025; }},
        {"E+Z 1025", [](dynmoe_router &r) { r.num_experts = 1000; r.num_zero_experts = 25; }},
        {"num_zero_experts -1", [](dynmoe_router &r) { r.num_zero_experts = -1; }},
        {"top_k 0", [](dynmoe_router &r) { r.top_k = 0; }},
        {"top_k -3", [](dynmoe_router &r) { r.top_k = -3; }},
        {"top_k > E+Z", [](dynmoe_router &r) { r.num_experts = 6; r.num_zero_experts = 1; r.top_k = 8; }},
        {"top_k 65", [](dynmoe_router &r) { r.top_k = 65; }},
        {"score COUNT", [](dynmoe_router &r) { r.score = DYNMOE_SCORE_COUNT; }},
        {"score -1", [](dynmoe_router &r) { shim_set_router_enum(&r, SHIM_SCORE, -1); }},
        {"select 1000", [](dynmoe_router &r) { shim_set_router_enum(&r, SHIM_SELECT, 1000); }},
        {"select COUNT", [](dynmoe_router &r) { r.select = DYNMOE_SELECT_COUNT; }},
        {"norm COUNT", [](dynmoe_router &r) { r.norm = DYNMOE_NORM_COUNT; }},
        {"norm 99", [](dynmoe_router &r) { shim_set_router_enum(&r, SHIM_NORM, 99); }},
        {"zero_kind -2", [](dynmoe_router &r) { r.num_zero_experts = 4; shim_set_router_enum(&r, SHIM_ZERO_KIND, -2); }},
        {"zero_kind COUNT", [](dynmoe_router &r) { r.num_zero_experts = 4; r.zero_kind = DYNMOE_ZERO_COUNT; }},
        {"num_groups -1", [](dynmoe_router &r) { r.num_groups = -1; }},
        {"groups not dividing E", [](dynmoe_router &r) { r.num_groups = 3; r.topk_groups = 1; }},
        {"topk_groups > groups", [](dynmoe_router &r) { r.num_groups = 8; r.topk_groups = 9; }},
        {"topk_groups 0", [](dynmoe_router &r) { r.num_groups = 8; r.topk_groups = 0; }},
        {"top_p 0", [](dynmoe_router &r) { r.select = DYNMOE_SELECT_TOP_P; r.top_p = 0.0f; }},
        {"top_p -0.5", [](dynmoe_router &r) { r.select = DYNMOE_SELECT_TOP_P; r.top_p = -0.5f; }},
        {"top_p 1.5", [](dynmoe_router &r) { r.select = DYNMOE_SELECT_TOP_P; r.top_p = 1.5f; }},
        {"top_p NaN", [=](dynmoe_router &r) { r.select = DYNMOE_SELECT_TOP_P; r.top_p = nan; }},
        {"weight_on_input 2", [](dynmoe_router &r) { r.weight_on_input = 2; }},
        {"weight_on_input -1", [](dynmoe_router &r) { r.weight_on_input = -1; }},
        {"expert_scale misaligned", [](dynmoe_router &r) { r.expert_scale = kScales + 1; }},
        {"struct_size 0.1 + 4", [](dynmoe_router &r) { r.struct_size = offsetof(dynmoe_router, weight_on_input) + 4; }},
    };
}

constexpr size_t kSlack = 64; /* every buffer has room for a misaligned view */

} // namespace

class ApiErrors : public BackendTest {
  protected:
    void SetUp() override {
        BackendTest::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        router_ = make_router(E, K);
        const dynmoe_backend b = backend();
        logits_ = Buffer(b, T * N * 4 + kSlack);
        bias_ = Buffer(b, N * 4 + kSlack);
        mask_ = Buffer(b, T * E * 4 + kSlack);
        x_ = Buffer(b, T * H * 2 + kSlack);
        w13_ = Buffer(b, (size_t)E * 2 * I * H * 2 + kSlack);
        w2_ = Buffer(b, (size_t)E * H * I * 2 + kSlack);
        task_logits_ = Buffer(b, T * R * 4 + kSlack);
        task_weights_ = Buffer(b, (size_t)R * N * H * 2 + kSlack);
        ids_in_ = Buffer(b, T * 64 * 4 + kSlack);
        weights_in_ = Buffer(b, T * 64 * 4 + kSlack);
        logits_.fill(0);
        bias_.fill(0);
        mask_.fill(0);
        x_.fill(0);
        w13_.fill(0);
        w2_.fill(0);
        task_logits_.fill(0);
        task_weights_.fill(0);
        ids_in_.fill(0);
        weights_in_.fill(0);
        ids_out_ = Buffer(b, T * 64 * 4 + kSlack);
        weights_out_ = Buffer(b, T * 64 * 4 + kSlack);
        out_ = Buffer(b, T * H * 2 + kSlack);
        experts_ = make_experts_desc(router_, H, I, DYNMOE_BF16, DYNMOE_ACT_SWIGLU, w13_.get(), w2_.get());
        ws_bytes_ = std::max(dynmoe_workspace_size(&router_, &experts_, T), dynmoe_plan_workspace_size(&router_, T, K));
        ASSERT_GT(ws_bytes_, 0u);
        ws_ = Buffer(b, ws_bytes_ + kSlack);
        stats_.reset(new StatsBlock(ctx_, b));
    }
    void TearDown() override {
        stats_.reset();
        BackendTest::TearDown();
    }

    void poison() {
        ids_out_.fill(kPoisonInt);
        weights_out_.fill(kPoisonFloat);
        out_.fill(kPoisonFloat);
        ws_.fill(kPoisonInt);
        stats_->poison();
    }

    /* The call failed with `want`, said why, and wrote nothing. */
    void expect_rejected(const std::string &what, dynmoe_status got, dynmoe_status want) {
        SCOPED_TRACE(what);
        EXPECT_EQ(got, want) << "got " << dynmoe_status_name(got) << ": " << dynmoe_last_error();
        if (got == DYNMOE_OK) return;
        const char *msg = dynmoe_last_error();
        ASSERT_NE(msg, nullptr);
        EXPECT_GT(std::strlen(msg), 0u) << "dynmoe_last_error() is empty";
        expect_poison(ids_out_, kPoisonInt, "ids");
        expect_poison(weights_out_, kPoisonFloat, "weights");
        expect_poison(out_, kPoisonFloat, "out");
        expect_poison(ws_, kPoisonInt, "workspace");
        dynmoe_stats st = stats_->read();
        std::vector<uint8_t> sb(sizeof st);
        std::memcpy(sb.data(), &st, sizeof st);
        size_t changed = 0;
        for (uint8_t v : sb) changed += v != kPoisonInt;
        EXPECT_EQ(changed, 0u) << "stats block written by a rejected call";
    }

    static void expect_poison(const Buffer &b, uint8_t byte, const char *name) {
        std::vector<uint8_t> v = b.bytes_vector();
        size_t changed = 0;
        for (uint8_t c : v) changed += c != byte;
        EXPECT_EQ(changed, 0u) << name << " written by a rejected call";
    }

    static constexpr int32_t E = 128, K = 8, N = 128, H = 64, I = 32, R = 4;
    static constexpr size_t T = 16;
    dynmoe_router router_;
    dynmoe_experts experts_;
    Buffer logits_, bias_, mask_, x_, w13_, w2_, task_logits_, task_weights_, ids_in_, weights_in_;
    Buffer ids_out_, weights_out_, out_, ws_;
    size_t ws_bytes_ = 0;
    std::unique_ptr<StatsBlock> stats_;
};
DYNMOE_INSTANTIATE_BACKENDS(ApiErrors);

namespace {

/* Arguments of dynmoe_route, each replaceable by a mutation. */
struct RouteCall {
    dynmoe_ctx *ctx;
    bool null_router = false;
    dynmoe_router r;
    int64_t T;
    const void *logits;
    int dt = DYNMOE_F32; /* int: out-of-range values go through the C shim */
    const float *bias;
    const void *mask;
    int32_t *ids;
    float *weights;
    dynmoe_status run() const {
        return shim_route(ctx, null_router ? nullptr : &r, T, logits, dt, bias, mask, ids, weights);
    }
};

} // namespace

TEST_P(ApiErrors, Route) {
    RouteCall base{ctx_, false, router_, (int64_t)T, logits_.get(), DYNMOE_F32, bias_.as<float>(), mask_.get(),
                   ids_out_.as<int32_t>(), weights_out_.as<float>()};
    poison();
    ASSERT_EQ(base.run(), DYNMOE_OK) << "the base call must be valid: " << dynmoe_last_error();
    struct M {
        const char *name;
        std::function<void(RouteCall &)> f;
    };
    const char *c1 = static_cast<const char *>(logits_.get());
    std::vector<M> ms = {
        {"ctx NULL", [](RouteCall &a) { a.ctx = nullptr; }},
        {"router NULL", [](RouteCall &a) { a.null_router = true; }},
        {"T -1", [](RouteCall &a) { a.T = -1; }},
        {"T > DYNMOE_MAX_TOKENS", [](RouteCall &a) { a.T = (int64_t)DYNMOE_MAX_TOKENS + 1; }},
        {"T huge", [](RouteCall &a) { a.T = INT64_MAX; }},
        {"logits NULL", [](RouteCall &a) { a.logits = nullptr; }},
        {"ids NULL", [](RouteCall &a) { a.ids = nullptr; }},
        {"weights NULL", [](RouteCall &a) { a.weights = nullptr; }},
        {"dtype COUNT", [](RouteCall &a) { a.dt = DYNMOE_DTYPE_COUNT; }},
        {"dtype -1", [](RouteCall &a) { a.dt = -1; }},
        {"dtype 40000", [](RouteCall &a) { a.dt = 40000; }},
        {"logits misaligned", [=](RouteCall &a) { a.logits = c1 + 4; }},
        {"bias misaligned", [](RouteCall &a) { a.bias = a.bias + 1; }},
        {"mask misaligned", [](RouteCall &a) { a.mask = static_cast<const char *>(a.mask) + 4; }},
        {"ids misaligned", [](RouteCall &a) { a.ids = a.ids + 1; }},
        {"weights misaligned", [](RouteCall &a) { a.weights = a.weights + 2; }},
        {"logits bf16 misaligned by 2", [=](RouteCall &a) { a.dt = DYNMOE_BF16; a.logits = c1 + 2; }},
    };
    for (const M &m : ms) {
        RouteCall a = base;
        m.f(a);
        poison();
        expect_rejected(std::string("route: ") + m.name, a.run(), DYNMOE_ERR_INVALID_ARGUMENT);
    }
    for (const RouterMutation &m : router_mutations()) {
        RouteCall a = base;
        m.apply(a.r);
        poison();
        expect_rejected(std::string("route: router ") + m.name, a.run(), DYNMOE_ERR_INVALID_ARGUMENT);
    }
}

TEST_P(ApiErrors, RouteTasks) {
    dynmoe_router r = router_;
    r.num_tasks = R;
    r.top_tasks = 2;
    struct A {
        dynmoe_ctx *ctx;
        dynmoe_router r;
        int64_t T;
        const void *x;
        int dt;
        int32_t hidden;
        const float *tl;
        const void *tw;
        const float *bias;
        int32_t *ids;
        float *w;
        dynmoe_status run() const {
            return shim_route_tasks(ctx, &r, T, x, dt, hidden, tl, tw, bias, ids, w);
        }
    };
    A base{ctx_, r, (int64_t)T, x_.get(), DYNMOE_BF16, H, task_logits_.as<float>(), task_weights_.get(),
           bias_.as<float>(), ids_out_.as<int32_t>(), weights_out_.as<float>()};
    poison();
    ASSERT_EQ(base.run(), DYNMOE_OK) << "the base call must be valid: " << dynmoe_last_error();
    struct M {
        const char *name;
        std::function<void(A &)> f;
    };
    std::vector<M> ms = {
        {"ctx NULL", [](A &a) { a.ctx = nullptr; }},
        {"T -1", [](A &a) { a.T = -1; }},
        {"x NULL", [](A &a) { a.x = nullptr; }},
        {"task_logits NULL", [](A &a) { a.tl = nullptr; }},
        {"task_weights NULL", [](A &a) { a.tw = nullptr; }},
        {"ids NULL", [](A &a) { a.ids = nullptr; }},
        {"weights NULL", [](A &a) { a.w = nullptr; }},
        {"hidden 0", [](A &a) { a.hidden = 0; }},
        {"hidden -5", [](A &a) { a.hidden = -5; }},
        {"x dtype COUNT", [](A &a) { a.dt = DYNMOE_DTYPE_COUNT; }},
        {"x dtype -1", [](A &a) { a.dt = -1; }},
        {"num_tasks 0", [](A &a) { a.r.num_tasks = 0; a.r.top_tasks = 0; }},
        {"num_tasks -1", [](A &a) { a.r.num_tasks = -1; }},
        {"top_tasks 0", [](A &a) { a.r.top_tasks = 0; }},
        {"top_tasks > num_tasks", [](A &a) { a.r.top_tasks = R + 1; }},
        {"top_tasks * K > 64", [](A &a) { a.r.top_k = 40; }},
        {"x misaligned", [](A &a) { a.x = static_cast<const char *>(a.x) + 2; }},
        {"task_logits misaligned", [](A &a) { a.tl = a.tl + 1; }},
        {"task_weights misaligned", [](A &a) { a.tw = static_cast<const char *>(a.tw) + 8; }},
        {"ids misaligned", [](A &a) { a.ids = a.ids + 3; }},
    };
    for (const M &m : ms) {
        A a = base;
        m.f(a);
        poison();
        expect_rejected(std::string("route_tasks: ") + m.name, a.run(), DYNMOE_ERR_INVALID_ARGUMENT);
    }
    for (const RouterMutation &m : router_mutations()) {
        A a = base;
        m.apply(a.r);
        poison();
        expect_rejected(std::string("route_tasks: router ") + m.name, a.run(), DYNMOE_ERR_INVALID_ARGUMENT);
    }
}

TEST_P(ApiErrors, PlanBuild) {
    const size_t need = dynmoe_plan_workspace_size(&router_, T, K);
    ASSERT_GT(need, 0u);
    ASSERT_LE(need, ws_bytes_);
    struct A {
        dynmoe_ctx *ctx;
        dynmoe_router r;
        int64_t T;
        const int32_t *ids;
        int32_t slots;
        void *ws;
        size_t bytes;
        dynmoe_plan *plan;
        dynmoe_status run() const { return dynmoe_plan_build(ctx, &r, T, ids, slots, ws, bytes, plan, nullptr); }
    };
    dynmoe_plan plan, plan_poison;
    std::memset(&plan_poison, kPoisonInt, sizeof plan_poison);
    A base{ctx_, router_, (int64_t)T, ids_in_.as<int32_t>(), K, ws_.get(), need, &plan};
    poison();
    ASSERT_EQ(base.run(), DYNMOE_OK) << "the base call must be valid: " << dynmoe_last_error();
    struct M {
        const char *name;
        std::function<void(A &)> f;
        dynmoe_status want;
    };
    std::vector<M> ms = {
        {"ctx NULL", [](A &a) { a.ctx = nullptr; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"T -1", [](A &a) { a.T = -1; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"ids NULL", [](A &a) { a.ids = nullptr; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"workspace NULL", [](A &a) { a.ws = nullptr; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"plan NULL", [](A &a) { a.plan = nullptr; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"slots 0", [](A &a) { a.slots = 0; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"slots -1", [](A &a) { a.slots = -1; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"slots 65", [](A &a) { a.slots = 65; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"workspace one byte short", [](A &a) { a.bytes -= 1; }, DYNMOE_ERR_WORKSPACE_TOO_SMALL},
        {"workspace 0 bytes", [](A &a) { a.bytes = 0; }, DYNMOE_ERR_WORKSPACE_TOO_SMALL},
        {"ids misaligned", [](A &a) { a.ids = a.ids + 1; }, DYNMOE_ERR_INVALID_ARGUMENT},
        {"workspace misaligned", [](A &a) { a.ws = static_cast<char *>(a.ws) + 8; }, DYNMOE_ERR_INVALID_ARGUMENT},
    };
    for (const M &m : ms) {
        A a = base;
        m.f(a);
        poison();
        std::memcpy(&plan, &plan_poison, sizeof plan);
        expect_rejected(std::string("plan_build: ") + m.name, a.run(), m.want);
        EXPECT_EQ(0, std::memcmp(&plan, &plan_poison, sizeof plan)) << m.name << ": plan written";
    }
    for (const RouterMutation &m : router_mutations()) {
        A a = base;
        m.apply(a.r);
        poison();
        expect_rejected(std::string("plan_build: router ") + m.name, a.run(), DYNMOE_ERR_INVALID_ARGUMENT);
    }
    /* invalid arguments give a zero workspace size */
    EXPECT_EQ(dynmoe_plan_workspace_size(nullptr, T, K), 0u);
    EXPECT_EQ(dynmoe_plan_workspace_size(&router_, -1, K), 0u);
    EXPECT_EQ(dynmoe_plan_workspace_size(&router_, T, 0), 0u);
    EXPECT_EQ(dynmoe_plan_workspace_size(&router_, T, 65), 0u);
}

namespace {

struct ForwardCall {
    bool moe = false;
    dynmoe_ctx *ctx;
    dynmoe_router r;
    bool null_router = false;
    dynmoe_experts ex;
    bool null_experts = false;
    int64_t T;
    const void *x;
    const int32_t *ids;
    const float *weights;
    int32_t slots;
    const void *logits;
    int logits_dt = DYNMOE_BF16;
    const float *bias;
    const void *mask;
    void *out;
    void *ws;
    size_t bytes;
    dynmoe_status run() const {
        const dynmoe_router *rp = null_router ? nullptr : &r;
        const dynmoe_experts *ep = null_experts ? nullptr : &ex;
        if (moe) return shim_moe_forward(ctx, rp, ep, T, x, logits, logits_dt, bias, mask, out, ws, bytes);
        return dynmoe_experts_forward(ctx, rp, ep, T, x, ids, weights, slots, out, ws, bytes, nullptr);
    }
};

/* Declares the call's weights quantized in format f with scales that pass
 * the pointer checks (what a mutation then breaks is the point). */
void quantized(ForwardCall &a, dynmoe_weight_format f) {
    a.ex.weight_format = f;
    a.ex.w13_scale = a.ex.w13;
    a.ex.w2_scale = a.ex.w2;
    a.ex.group_size = f == DYNMOE_WEIGHTS_INT4 ? 32 : 0;
}

struct ForwardMutation {
    const char *name;
    std::function<void(ForwardCall &)> f;
    dynmoe_status want;
    int which; /* 0 both, 1 experts_forward only, 2 moe_forward only */
};

std::vector<ForwardMutation> forward_mutations() {
    const dynmoe_status inv = DYNMOE_ERR_INVALID_ARGUMENT;
    auto mis = [](const void *p, size_t by) { return static_cast<const char *>(p) + by; };
    return {
        {"ctx NULL", [](ForwardCall &a) { a.ctx = nullptr; }, inv, 0},
        {"router NULL", [](ForwardCall &a) { a.null_router = true; }, inv, 0},
        {"experts NULL", [](ForwardCall &a) { a.null_experts = true; }, inv, 0},
        {"T -1", [](ForwardCall &a) { a.T = -1; }, inv, 0},
        {"T > DYNMOE_MAX_TOKENS", [](ForwardCall &a) { a.T = (int64_t)DYNMOE_MAX_TOKENS + 1; }, inv, 0},
        {"experts.struct_size 0", [](ForwardCall &a) { a.ex.struct_size = 0; }, inv, 0},
        {"experts.num_experts != router", [](ForwardCall &a) { a.ex.num_experts = 64; }, inv, 0},
        {"experts.hidden 0", [](ForwardCall &a) { a.ex.hidden = 0; }, inv, 0},
        {"experts.hidden -1", [](ForwardCall &a) { a.ex.hidden = -1; }, inv, 0},
        {"experts.inter 0", [](ForwardCall &a) { a.ex.inter = 0; }, inv, 0},
        {"experts.dtype COUNT", [](ForwardCall &a) { a.ex.dtype = DYNMOE_DTYPE_COUNT; }, inv, 0},
        {"experts.act COUNT", [](ForwardCall &a) { a.ex.act = DYNMOE_ACT_COUNT; }, inv, 0},
        {"experts.act -1", [](ForwardCall &a) { shim_set_experts_enum(&a.ex, SHIM_EXPERTS_ACT, -1); }, inv, 0},
        {"experts.dtype 9", [](ForwardCall &a) { shim_set_experts_enum(&a.ex, SHIM_EXPERTS_DTYPE, 9); }, inv, 0},
        {"experts.w13 NULL", [](ForwardCall &a) { a.ex.w13 = nullptr; }, inv, 0},
        {"experts.w2 NULL", [](ForwardCall &a) { a.ex.w2 = nullptr; }, inv, 0},
        {"experts.w13 misaligned", [=](ForwardCall &a) { a.ex.w13 = mis(a.ex.w13, 2); }, inv, 0},
        {"experts.w2 misaligned", [=](ForwardCall &a) { a.ex.w2 = mis(a.ex.w2, 8); }, inv, 0},
        {"experts.b13 misaligned", [=](ForwardCall &a) { a.ex.b13 = mis(a.ex.w13, 2); }, inv, 0},
        {"experts.b2 misaligned", [=](ForwardCall &a) { a.ex.b2 = mis(a.ex.w2, 4); }, inv, 0},
        {"experts.gate_up COUNT", [](ForwardCall &a) { a.ex.gate_up = DYNMOE_GATE_UP_COUNT; }, inv, 0},
        {"experts.gate_up -1", [](ForwardCall &a) { shim_set_experts_enum(&a.ex, SHIM_EXPERTS_GATE_UP, -1); }, inv, 0},
        {"interleaved non-gated RELU2",
         [](ForwardCall &a) { a.ex.act = DYNMOE_ACT_RELU2; a.ex.gate_up = DYNMOE_GATE_UP_INTERLEAVED; }, inv, 0},
        {"interleaved non-gated SILU",
         [](ForwardCall &a) { a.ex.act = DYNMOE_ACT_SILU; a.ex.gate_up = DYNMOE_GATE_UP_INTERLEAVED; }, inv, 0},
        {"SWIGLU_OAI limit 0", [](ForwardCall &a) { a.ex.act = DYNMOE_ACT_SWIGLU_OAI; a.ex.limit = 0.0f; }, inv, 0},
        {"SWIGLU_OAI limit -7", [](ForwardCall &a) { a.ex.act = DYNMOE_ACT_SWIGLU_OAI; a.ex.limit = -7.0f; }, inv, 0},
        {"SWIGLU_OAI limit NaN",
         [](ForwardCall &a) { a.ex.act = DYNMOE_ACT_SWIGLU_OAI; a.ex.limit = std::numeric_limits<float>::quiet_NaN(); }, inv, 0},
        {"SWIGLU_OAI alpha inf",
         [](ForwardCall &a) { a.ex.act = DYNMOE_ACT_SWIGLU_OAI; a.ex.alpha = std::numeric_limits<float>::infinity(); }, inv, 0},
        {"experts.struct_size 0.1 + 8", [](ForwardCall &a) { a.ex.struct_size = offsetof(dynmoe_experts, b13) + 8; }, inv, 0},
        {"experts.struct_size 0.2 + 4", [](ForwardCall &a) { a.ex.struct_size = offsetof(dynmoe_experts, packed) + 4; }, inv, 0},
        {"weight_format COUNT", [](ForwardCall &a) { a.ex.weight_format = DYNMOE_WEIGHTS_COUNT; }, inv, 0},
        {"weight_format -1", [](ForwardCall &a) { shim_set_experts_enum(&a.ex, SHIM_EXPERTS_FORMAT, -1); }, inv, 0},
        {"PLAIN with a scale", [](ForwardCall &a) { a.ex.w13_scale = a.ex.w13; }, inv, 0},
        {"PLAIN with a zero", [](ForwardCall &a) { a.ex.w2_zero = a.ex.w2; }, inv, 0},
        {"PLAIN with a group_size", [](ForwardCall &a) { a.ex.group_size = 32; }, inv, 0},
        {"FP8_BLOCK w13_scale NULL",
         [](ForwardCall &a) { a.ex.weight_format = DYNMOE_WEIGHTS_FP8_BLOCK; a.ex.w2_scale = a.ex.w2; }, inv, 0},
        {"FP8_BLOCK w2_scale NULL",
         [](ForwardCall &a) { a.ex.weight_format = DYNMOE_WEIGHTS_FP8_BLOCK; a.ex.w13_scale = a.ex.w13; }, inv, 0},
        {"FP8_BLOCK group_size 64",
         [](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_FP8_BLOCK); a.ex.group_size = 64; }, inv, 0},
        {"FP8_BLOCK with zeros", [](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_FP8_BLOCK); a.ex.w13_zero = a.ex.w13; }, inv, 0},
        {"FP8_BLOCK scale misaligned",
         [=](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_FP8_BLOCK); a.ex.w2_scale = mis(a.ex.w2, 4); }, inv, 0},
        {"MXFP4 inter 48", [](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_MXFP4); a.ex.inter = 48; }, inv, 0},
        {"MXFP4 hidden 80", [](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_MXFP4); a.ex.hidden = 80; }, inv, 0},
        {"MXFP4 group_size 16", [](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_MXFP4); a.ex.group_size = 16; }, inv, 0},
        {"INT4 group_size 0", [](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_INT4); a.ex.group_size = 0; }, inv, 0},
        {"INT4 group_size 48", [](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_INT4); a.ex.group_size = 48; }, inv, 0},
        {"INT4 zero misaligned",
         [=](ForwardCall &a) { quantized(a, DYNMOE_WEIGHTS_INT4); a.ex.w13_zero = mis(a.ex.w13, 2); }, inv, 0},
        {"x NULL", [](ForwardCall &a) { a.x = nullptr; }, inv, 0},
        {"x misaligned", [=](ForwardCall &a) { a.x = mis(a.x, 2); }, inv, 0},
        {"out NULL", [](ForwardCall &a) { a.out = nullptr; }, inv, 0},
        {"out misaligned", [](ForwardCall &a) { a.out = static_cast<char *>(a.out) + 4; }, inv, 0},
        {"out aliases x", [](ForwardCall &a) { a.x = a.out; }, inv, 0},
        {"workspace NULL", [](ForwardCall &a) { a.ws = nullptr; }, inv, 0},
        {"workspace misaligned", [](ForwardCall &a) { a.ws = static_cast<char *>(a.ws) + 8; }, inv, 0},
        {"workspace one byte short", [](ForwardCall &a) { a.bytes -= 1; }, DYNMOE_ERR_WORKSPACE_TOO_SMALL, 0},
        {"workspace 0 bytes", [](ForwardCall &a) { a.bytes = 0; }, DYNMOE_ERR_WORKSPACE_TOO_SMALL, 0},
        {"ids NULL", [](ForwardCall &a) { a.ids = nullptr; }, inv, 1},
        {"weights NULL", [](ForwardCall &a) { a.weights = nullptr; }, inv, 1},
        {"ids misaligned", [](ForwardCall &a) { a.ids = a.ids + 1; }, inv, 1},
        {"weights misaligned", [](ForwardCall &a) { a.weights = a.weights + 1; }, inv, 1},
        {"slots 0", [](ForwardCall &a) { a.slots = 0; }, inv, 1},
        {"slots 65", [](ForwardCall &a) { a.slots = 65; }, inv, 1},
        {"logits NULL", [](ForwardCall &a) { a.logits = nullptr; }, inv, 2},
        {"logits dtype COUNT", [](ForwardCall &a) { a.logits_dt = DYNMOE_DTYPE_COUNT; }, inv, 2},
        {"logits dtype -1", [](ForwardCall &a) { a.logits_dt = -1; }, inv, 2},
        {"logits misaligned", [=](ForwardCall &a) { a.logits = mis(a.logits, 2); }, inv, 2},
        {"bias misaligned", [](ForwardCall &a) { a.bias = a.bias + 1; }, inv, 2},
        {"mask misaligned", [=](ForwardCall &a) { a.mask = mis(a.mask, 6); }, inv, 2},
    };
}

} // namespace

TEST_P(ApiErrors, Forward) {
    for (int moe = 0; moe < 2; moe++) {
        ForwardCall base;
        base.moe = moe;
        base.ctx = ctx_;
        base.r = router_;
        base.ex = experts_;
        base.T = T;
        base.x = x_.get();
        base.ids = ids_in_.as<int32_t>();
        base.weights = weights_in_.as<float>();
        base.slots = K;
        base.logits = logits_.get();
        base.logits_dt = DYNMOE_BF16;
        base.bias = bias_.as<float>();
        base.mask = mask_.get();
        base.out = out_.get();
        base.ws = ws_.get();
        base.bytes = ws_bytes_;
        const char *fn = moe ? "moe_forward: " : "experts_forward: ";
        poison();
        ASSERT_EQ(base.run(), DYNMOE_OK) << fn << "the base call must be valid: " << dynmoe_last_error();
        for (const ForwardMutation &m : forward_mutations()) {
            if (m.which == 1 + !moe) continue;
            ForwardCall a = base;
            m.f(a);
            poison();
            expect_rejected(std::string(fn) + m.name, a.run(), m.want);
        }
        for (const RouterMutation &m : router_mutations()) {
            ForwardCall a = base;
            m.apply(a.r);
            poison();
            expect_rejected(std::string(fn) + "router " + m.name, a.run(), DYNMOE_ERR_INVALID_ARGUMENT);
        }
    }
    /* invalid arguments give a zero workspace size */
    EXPECT_EQ(dynmoe_workspace_size(nullptr, &experts_, T), 0u);
    EXPECT_EQ(dynmoe_workspace_size(&router_, nullptr, T), 0u);
    EXPECT_EQ(dynmoe_workspace_size(&router_, &experts_, -1), 0u);
    dynmoe_experts bad = experts_;
    bad.num_experts = 3;
    EXPECT_EQ(dynmoe_workspace_size(&router_, &bad, T), 0u);
    EXPECT_EQ(dynmoe_experts_workspace_size(&router_, &bad, T, K), 0u);
    EXPECT_EQ(dynmoe_experts_workspace_size(&router_, &experts_, T, 0), 0u);
    EXPECT_EQ(dynmoe_experts_workspace_size(&router_, &experts_, T, 65), 0u);
    /* the router's own slot count gives the same size as dynmoe_workspace_size;
     * a caller's table with more slots needs more */
    EXPECT_EQ(dynmoe_experts_workspace_size(&router_, &experts_, T, router_.top_k),
              dynmoe_workspace_size(&router_, &experts_, T));
    EXPECT_GT(dynmoe_experts_workspace_size(&router_, &experts_, T, 2 * router_.top_k),
              dynmoe_workspace_size(&router_, &experts_, T));
    /* The router is checked before its slots are counted: top_k * top_tasks
     * = 2^16 * 2^16 overflows int32 (UBSan stopped here before the check came
     * first); the size is 0 and the message names the bad field. */
    for (int32_t top_tasks : {1 << 16, INT32_MAX}) {
        dynmoe_router huge = router_;
        huge.top_k = 1 << 16;
        huge.num_tasks = INT32_MAX;
        huge.top_tasks = top_tasks;
        EXPECT_EQ(dynmoe_workspace_size(&huge, &experts_, T), 0u) << "top_tasks " << top_tasks;
        EXPECT_NE(std::string(dynmoe_last_error()).find("top_k"), std::string::npos) << dynmoe_last_error();
    }
}

/* A later failure replaces the message; another thread's failure does not
 * touch this thread's (thread-local). */
TEST_P(ApiErrors, MessageIsPerCall) {
    dynmoe_router r = router_;
    r.top_k = 0;
    EXPECT_EQ(dynmoe_route(ctx_, &r, 1, logits_.get(), DYNMOE_F32, nullptr, nullptr, ids_out_.as<int32_t>(),
                           weights_out_.as<float>(), nullptr),
              DYNMOE_ERR_INVALID_ARGUMENT);
    const std::string first = dynmoe_last_error();
    EXPECT_FALSE(first.empty());
    EXPECT_EQ(dynmoe_route(nullptr, &router_, 1, logits_.get(), DYNMOE_F32, nullptr, nullptr,
                           ids_out_.as<int32_t>(), weights_out_.as<float>(), nullptr),
              DYNMOE_ERR_INVALID_ARGUMENT);
    const std::string second = dynmoe_last_error();
    EXPECT_FALSE(second.empty());
    EXPECT_NE(first, second) << "the message should describe the latest failure";
    /* another thread's failure leaves this thread's message alone */
    std::string other;
    std::thread th([&] {
        dynmoe_router bad = router_;
        bad.num_experts = -4;
        dynmoe_route(ctx_, &bad, 1, logits_.get(), DYNMOE_F32, nullptr, nullptr, ids_out_.as<int32_t>(),
                     weights_out_.as<float>(), nullptr);
        other = dynmoe_last_error();
    });
    th.join();
    EXPECT_FALSE(other.empty());
    EXPECT_EQ(second, std::string(dynmoe_last_error()));
}
