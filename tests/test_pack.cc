/*
 * test_pack.cc — pre-packed experts (dynmoe_experts_pack) on the CPU's
 * "onednn" path against the independent fp64 reference, on random inputs with
 * the output and workspace poisoned with NaN before each call: every
 * activation, biases, interleaved gate/up, weight_on_input, zero experts,
 * masked slots, T = 0 / 1 / 300 / 2048, f32 / bf16 / f16; then the checks of
 * a packed object that describes other experts. Without oneDNN in the build
 * (or when DYNMOE_CPU_ISA=onednn gives another path) the tests skip with a
 * message.
 */
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "reference.h"
#include "run.h"

using namespace dmtest;

namespace {

uint64_t seed_of(size_t index, uint64_t salt) { return base_seed() * 1000003ull + 70000ull + index * 7919ull + salt; }

/* A table of T tokens, S slots over E real and Z zero experts, skewed so that
 * a few experts get many rows (the packed path) and others few (dynmoe's own
 * kernels); about 1 in 16 slots is masked (-1). Weights in (0, 1]. */
dmref::Table skewed_table(int64_t T, int32_t S, int32_t E, int32_t Z, Rng &rng) {
    dmref::Table t;
    t.T = T, t.S = S;
    for (int64_t i = 0; i < T; i++)
        for (int32_t k = 0; k < S; k++) {
            const int64_t u = rng.integer(0, 15);
            int32_t id;
            if (u == 0) id = -1;
            else if (u == 1 && Z > 0) id = E + (int32_t)rng.integer(0, Z - 1);
            else if (u < 10) id = (int32_t)rng.integer(0, 2);          /* hot: experts 0..2 */
            else id = (int32_t)rng.integer(0, E - 1);                  /* the rest, some cold */
            t.ids.push_back(id);
            t.weights.push_back(id < 0 ? 0.0 : (double)(float)rng.uniform(0.05, 1.0));
        }
    return t;
}

struct PackCase {
    const char *name;
    dynmoe_act act;
    dynmoe_dtype dt;
    int32_t H, I;
    ExpertOptions opt;
    int weight_on_input;
    int32_t Z;
};

class Pack : public ::testing::Test {
  protected:
    void SetUp() override {
        setenv("DYNMOE_CPU_ISA", "onednn", 1);
        const char *got = dynmoe_cpu_isa();
        if (got == nullptr || std::string(got) != "onednn") {
            unsetenv("DYNMOE_CPU_ISA");
            GTEST_SKIP() << "this CPU has no onednn path (its best is " << dynmoe_cpu_isa()
                         << "): the build has no oneDNN";
        }
        ASSERT_EQ(dynmoe_ctx_create(&ctx_, DYNMOE_BACKEND_CPU, 0), DYNMOE_OK) << dynmoe_last_error();
    }
    void TearDown() override {
        dynmoe_ctx_destroy(ctx_);
        unsetenv("DYNMOE_CPU_ISA");
    }

    /* experts_forward of case c over `table` with packed experts vs the reference. */
    void check(const PackCase &c, int64_t T, int32_t S, uint64_t seed) {
        const std::string what = std::string(c.name) + " " + dtype_name(c.dt) + " T " + std::to_string(T);
        SCOPED_TRACE(what);
        const int32_t E = 8;
        Rng rng(seed);
        dynmoe_router r = make_router(E, S);
        r.num_zero_experts = c.Z;
        r.zero_kind = DYNMOE_ZERO_IDENTITY;
        r.weight_on_input = c.weight_on_input;
        ExpertWeights w = make_experts(E, c.H, c.I, c.act, c.dt, rng, c.opt);
        Packed x = random_x(T, c.H, c.dt, rng);
        dmref::Table table = skewed_table(T, S, E, c.Z, rng);
        std::vector<float> wf = to_float(table.weights);
        table.weights = to_double(wf);
        BackendExperts bx = upload_experts(DYNMOE_BACKEND_CPU, r, w, c.dt);
        dynmoe_packed_experts *pk = nullptr;
        ASSERT_EQ(dynmoe_experts_pack(ctx_, &bx.desc, &pk), DYNMOE_OK) << dynmoe_last_error();
        EXPECT_GT(dynmoe_packed_experts_bytes(pk), 0u);
        EXPECT_EQ(std::string(dynmoe_packed_experts_path(pk)).rfind("onednn ", 0), 0u) << dynmoe_packed_experts_path(pk);
        /* from 2 rows where both matmuls are AMX kernels, else from DYNMOE_PACKED_MIN_ROWS */
        const std::string path = dynmoe_packed_experts_path(pk);
        const size_t g2 = path.find(" gemm2 ");
        const bool amx = path.find("amx") < g2 && path.find("amx", g2) != std::string::npos;
        EXPECT_EQ(dynmoe_packed_experts_min_rows(pk), amx ? 2 : DYNMOE_PACKED_MIN_ROWS) << path;
        EXPECT_EQ(dynmoe_packed_experts_min_rows(nullptr), 0);
        dynmoe_experts ex = bx.desc;
        ex.packed = pk;
        const size_t ws_bytes = dynmoe_experts_workspace_size(&r, &ex, T, S);
        ASSERT_GT(ws_bytes, 0u) << dynmoe_last_error();
        Buffer xb = make_buffer(DYNMOE_BACKEND_CPU, x.bytes), ids = make_buffer(DYNMOE_BACKEND_CPU, table.ids),
               wts = make_buffer(DYNMOE_BACKEND_CPU, wf);
        Buffer out(DYNMOE_BACKEND_CPU, (size_t)(T * c.H) * dmref::dtype_size(c.dt) + 16),
            ws(DYNMOE_BACKEND_CPU, ws_bytes);
        std::vector<double> ref;
        dmref::experts_forward(w.ref, c.Z, r.zero_kind, T, x.values, table, ref, {}, c.weight_on_input != 0);
        for (int call = 0; call < 2; call++) { /* the second call reuses the primitives */
            out.fill(kPoisonFloat);
            ws.fill(kPoisonFloat);
            ASSERT_EQ(dynmoe_experts_forward(ctx_, &r, &ex, T, xb.get(), ids.as<int32_t>(), wts.as<float>(), S,
                                             out.get(), ws.get(), ws_bytes, nullptr),
                      DYNMOE_OK)
                << dynmoe_last_error();
            const size_t n = (size_t)(T * c.H);
            expect_close(unpack(out.to_vector<uint8_t>(n * dmref::dtype_size(c.dt)), c.dt, n), ref, c.dt, what);
        }
        dynmoe_packed_experts_destroy(pk);
    }
    dynmoe_ctx *ctx_ = nullptr;
};

ExpertOptions with(bool bias, dynmoe_gate_up gu = DYNMOE_GATE_UP_BLOCKED) {
    ExpertOptions o;
    o.bias = bias;
    o.gate_up = gu;
    return o;
}

const PackCase kCases[] = {
    {"swiglu", DYNMOE_ACT_SWIGLU, DYNMOE_F32, 64, 48, with(false), 0, 0},
    {"geglu bias", DYNMOE_ACT_GEGLU, DYNMOE_F32, 64, 32, with(true), 0, 0},
    {"geglu_tanh", DYNMOE_ACT_GEGLU_TANH, DYNMOE_F32, 48, 40, with(false), 0, 2},
    {"swiglu_oai interleaved bias", DYNMOE_ACT_SWIGLU_OAI, DYNMOE_F32, 64, 32,
     with(true, DYNMOE_GATE_UP_INTERLEAVED), 0, 0},
    {"relu2", DYNMOE_ACT_RELU2, DYNMOE_F32, 32, 64, with(false), 0, 0},
    {"silu bias weight_on_input", DYNMOE_ACT_SILU, DYNMOE_F32, 64, 48, with(true), 1, 2},
    {"swiglu weight_on_input zero experts", DYNMOE_ACT_SWIGLU, DYNMOE_F32, 64, 32, with(false), 1, 2},
    /* H and I not multiples of 8: the scalar tails of the 8-wide epilogue and store */
    {"swiglu odd H, I bias", DYNMOE_ACT_SWIGLU, DYNMOE_F32, 44, 36, with(true), 0, 0},
};

} // namespace

/* T = 1: nothing reaches 16 rows; T = 40: a few chunks, run one after another
 * on every thread (packed.c, by row); T = 300: many chunks, one per thread at
 * a time (by chunk). */
TEST_F(Pack, EveryOptionF32) {
    uint64_t s = 1;
    for (const PackCase &c : kCases)
        for (int64_t T : {1, 40, 300}) check(c, T, 2, seed_of(900, s++));
}

TEST_F(Pack, Bf16AndF16) {
    uint64_t s = 1;
    for (dynmoe_dtype dt : {DYNMOE_BF16, DYNMOE_F16}) {
        for (PackCase c : {kCases[0], kCases[3], kCases[5], kCases[7]}) {
            c.dt = dt;
            for (int64_t T : {1, 5, 40, 300}) check(c, T, 2, seed_of(901, s++)); /* T 1, 5: packed (from 2 rows) on AMX only */
        }
    }
}

/* T = 2048, K = 4 over 8 experts: chunks of 256 rows and shorter last chunks. */
TEST_F(Pack, LargeT) {
    check(kCases[0], 2048, 4, seed_of(902, 0));
    PackCase c = kCases[3];
    c.dt = DYNMOE_BF16;
    check(c, 2048, 4, seed_of(902, 1));
}

TEST_F(Pack, TZeroDoesNothing) {
    Rng rng(seed_of(903, 0));
    const dynmoe_router r = make_router(4, 2);
    ExpertWeights w = make_experts(4, 32, 16, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng);
    BackendExperts bx = upload_experts(DYNMOE_BACKEND_CPU, r, w, DYNMOE_F32);
    dynmoe_packed_experts *pk = nullptr;
    ASSERT_EQ(dynmoe_experts_pack(ctx_, &bx.desc, &pk), DYNMOE_OK) << dynmoe_last_error();
    dynmoe_experts ex = bx.desc;
    ex.packed = pk;
    EXPECT_EQ(dynmoe_experts_forward(ctx_, &r, &ex, 0, nullptr, nullptr, nullptr, 2, nullptr, nullptr, 0, nullptr),
              DYNMOE_OK)
        << dynmoe_last_error();
    dynmoe_packed_experts_destroy(pk);
}

/* A packed object must describe the experts it is passed with; a garbage
 * pointer and quantized weights are refused with a message. */
TEST_F(Pack, MismatchIsRefused) {
    Rng rng(seed_of(904, 0));
    const int32_t E = 4, H = 32, I = 16;
    const dynmoe_router r = make_router(E, 2);
    ExpertWeights w = make_experts(E, H, I, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng);
    BackendExperts bx = upload_experts(DYNMOE_BACKEND_CPU, r, w, DYNMOE_F32);
    ExpertWeights w2 = make_experts(E, H, I, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng);
    BackendExperts other = upload_experts(DYNMOE_BACKEND_CPU, r, w2, DYNMOE_F32);
    dynmoe_packed_experts *pk = nullptr;
    ASSERT_EQ(dynmoe_experts_pack(ctx_, &bx.desc, &pk), DYNMOE_OK) << dynmoe_last_error();
    const int64_t T = 40;
    Packed x = random_x(T, H, DYNMOE_F32, rng);
    dmref::Table table = skewed_table(T, 2, E, 0, rng);
    std::vector<float> wf = to_float(table.weights);
    Buffer xb = make_buffer(DYNMOE_BACKEND_CPU, x.bytes), ids = make_buffer(DYNMOE_BACKEND_CPU, table.ids),
           wts = make_buffer(DYNMOE_BACKEND_CPU, wf), out(DYNMOE_BACKEND_CPU, (size_t)(T * H) * 4);
    struct Mutation {
        const char *name, *message;
        void (*apply)(dynmoe_experts &, const dynmoe_experts &other);
    };
    const Mutation muts[] = {
        {"other weights", "w13 or w2 differs", [](dynmoe_experts &e, const dynmoe_experts &o) { e.w13 = o.w13; }},
        {"act", "act differs", [](dynmoe_experts &e, const dynmoe_experts &) { e.act = DYNMOE_ACT_GEGLU; }},
        {"gate_up", "gate_up differs",
         [](dynmoe_experts &e, const dynmoe_experts &) { e.gate_up = DYNMOE_GATE_UP_INTERLEAVED; }},
        {"inter", "hidden or inter differs", [](dynmoe_experts &e, const dynmoe_experts &) { e.inter = 8; }},
        {"dtype", "dtype differs", [](dynmoe_experts &e, const dynmoe_experts &) { e.dtype = DYNMOE_BF16; }},
    };
    for (const Mutation &m : muts) {
        SCOPED_TRACE(m.name);
        dynmoe_experts ex = bx.desc;
        ex.packed = pk;
        m.apply(ex, other.desc);
        const size_t ws_bytes = dynmoe_experts_workspace_size(&r, &bx.desc, T, 2) * 4;
        Buffer ws(DYNMOE_BACKEND_CPU, ws_bytes);
        EXPECT_EQ(dynmoe_experts_forward(ctx_, &r, &ex, T, xb.get(), ids.as<int32_t>(), wts.as<float>(), 2, out.get(),
                                         ws.get(), ws_bytes, nullptr),
                  DYNMOE_ERR_INVALID_ARGUMENT);
        EXPECT_NE(std::string(dynmoe_last_error()).find(m.message), std::string::npos) << dynmoe_last_error();
        EXPECT_EQ(dynmoe_experts_workspace_size(&r, &ex, T, 2), 0u);
    }
    /* not a packed object at all */
    alignas(64) static char junk[4096] = {1, 2, 3};
    dynmoe_experts ex = bx.desc;
    ex.packed = reinterpret_cast<const dynmoe_packed_experts *>(junk);
    EXPECT_EQ(dynmoe_experts_workspace_size(&r, &ex, T, 2), 0u);
    EXPECT_NE(std::string(dynmoe_last_error()).find("not a dynmoe_experts_pack result"), std::string::npos)
        << dynmoe_last_error();
    /* a workspace sized without the packed area */
    ex.packed = pk;
    const size_t small = dynmoe_experts_workspace_size(&r, &bx.desc, T, 2);
    Buffer ws(DYNMOE_BACKEND_CPU, small);
    EXPECT_EQ(dynmoe_experts_forward(ctx_, &r, &ex, T, xb.get(), ids.as<int32_t>(), wts.as<float>(), 2, out.get(),
                                     ws.get(), small, nullptr),
              DYNMOE_ERR_WORKSPACE_TOO_SMALL);
    /* packing: quantized weights, an already packed description, NULLs */
    dynmoe_packed_experts *bad = reinterpret_cast<dynmoe_packed_experts *>(junk);
    EXPECT_EQ(dynmoe_experts_pack(ctx_, &ex, &bad), DYNMOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(bad, nullptr);
    EXPECT_EQ(dynmoe_experts_pack(nullptr, &bx.desc, &bad), DYNMOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(dynmoe_experts_pack(ctx_, nullptr, &bad), DYNMOE_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(dynmoe_experts_pack(ctx_, &bx.desc, nullptr), DYNMOE_ERR_INVALID_ARGUMENT);
    ExpertOptions q;
    q.format = DYNMOE_WEIGHTS_INT4;
    q.group = 32;
    ExpertWeights wq = make_experts(E, H, I, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng, q);
    BackendExperts bq = upload_experts(DYNMOE_BACKEND_CPU, r, wq, DYNMOE_F32);
    EXPECT_EQ(dynmoe_experts_pack(ctx_, &bq.desc, &bad), DYNMOE_ERR_UNSUPPORTED);
    EXPECT_NE(std::string(dynmoe_last_error()).find("only PLAIN"), std::string::npos) << dynmoe_last_error();
    dynmoe_packed_experts_destroy(pk);
    dynmoe_packed_experts_destroy(nullptr);
    EXPECT_EQ(dynmoe_packed_experts_bytes(nullptr), 0u);
    EXPECT_STREQ(dynmoe_packed_experts_path(nullptr), "");
}

/* Off the onednn path (DYNMOE_CPU_ISA=avx512, avx2 or scalar) packed experts are
 * ignored: the forward runs the unpacked kernels on w13/w2, same results. */
TEST_F(Pack, OtherPathsIgnoreThePacking) {
    Rng rng(seed_of(905, 0));
    const int32_t E = 4, H = 32, I = 16, S = 2;
    const int64_t T = 64;
    const dynmoe_router r = make_router(E, S);
    ExpertWeights w = make_experts(E, H, I, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng);
    BackendExperts bx = upload_experts(DYNMOE_BACKEND_CPU, r, w, DYNMOE_F32);
    dynmoe_packed_experts *pk = nullptr;
    ASSERT_EQ(dynmoe_experts_pack(ctx_, &bx.desc, &pk), DYNMOE_OK) << dynmoe_last_error();
    dynmoe_experts ex = bx.desc;
    ex.packed = pk;
    Packed x = random_x(T, H, DYNMOE_F32, rng);
    dmref::Table table = skewed_table(T, S, E, 0, rng);
    std::vector<float> wf = to_float(table.weights);
    table.weights = to_double(wf);
    std::vector<double> ref;
    dmref::experts_forward(w.ref, 0, r.zero_kind, T, x.values, table, ref);
    const size_t ws_bytes = dynmoe_experts_workspace_size(&r, &ex, T, S);
    Buffer xb = make_buffer(DYNMOE_BACKEND_CPU, x.bytes), ids = make_buffer(DYNMOE_BACKEND_CPU, table.ids),
           wts = make_buffer(DYNMOE_BACKEND_CPU, wf), out(DYNMOE_BACKEND_CPU, (size_t)(T * H) * 4),
           ws(DYNMOE_BACKEND_CPU, ws_bytes);
    for (const char *isa : {"scalar", "avx2", "avx512"}) { /* avx512 is avx2 on a CPU without it */
        SCOPED_TRACE(isa);
        setenv("DYNMOE_CPU_ISA", isa, 1);
        out.fill(kPoisonFloat);
        ws.fill(kPoisonFloat);
        ASSERT_EQ(dynmoe_experts_forward(ctx_, &r, &ex, T, xb.get(), ids.as<int32_t>(), wts.as<float>(), S, out.get(),
                                         ws.get(), ws_bytes, nullptr),
                  DYNMOE_OK)
            << dynmoe_last_error();
        expect_close(unpack(out.bytes_vector(), DYNMOE_F32, (size_t)(T * H)), ref, DYNMOE_F32, isa);
    }
    dynmoe_packed_experts_destroy(pk);
}

/* CUDA contexts refuse packed experts (and packing) with a message. */
TEST(PackCuda, CudaRefusesPackedExperts) {
    if (!dynmoe_cuda_available()) GTEST_SKIP() << "no CUDA device";
    dynmoe_ctx *cpu = nullptr, *gpu = nullptr;
    ASSERT_EQ(dynmoe_ctx_create(&cpu, DYNMOE_BACKEND_CPU, 0), DYNMOE_OK);
    ASSERT_EQ(dynmoe_ctx_create(&gpu, DYNMOE_BACKEND_CUDA, 0), DYNMOE_OK) << dynmoe_last_error();
    Rng rng(7);
    const dynmoe_router r = make_router(4, 2);
    ExpertWeights w = make_experts(4, 32, 16, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng);
    BackendExperts hx = upload_experts(DYNMOE_BACKEND_CPU, r, w, DYNMOE_F32);
    dynmoe_packed_experts *pk = nullptr;
    EXPECT_EQ(dynmoe_experts_pack(gpu, &hx.desc, &pk), DYNMOE_ERR_UNSUPPORTED);
    if (dynmoe_experts_pack(cpu, &hx.desc, &pk) != DYNMOE_OK) {
        dynmoe_ctx_destroy(cpu);
        dynmoe_ctx_destroy(gpu);
        GTEST_SKIP() << "no oneDNN in this build: " << dynmoe_last_error();
    }
    BackendExperts dx = upload_experts(DYNMOE_BACKEND_CUDA, r, w, DYNMOE_F32);
    dynmoe_experts ex = dx.desc;
    ex.packed = pk;
    ex.w13 = hx.desc.w13, ex.w2 = hx.desc.w2; /* the packed object's own experts */
    const int64_t T = 2;
    Buffer x(DYNMOE_BACKEND_CUDA, T * 32 * 4), ids = make_buffer(DYNMOE_BACKEND_CUDA, std::vector<int32_t>{0, 1, 2, 3}),
        wt = make_buffer(DYNMOE_BACKEND_CUDA, std::vector<float>{1, 1, 1, 1}), out(DYNMOE_BACKEND_CUDA, T * 32 * 4);
    const size_t ws_bytes = dynmoe_experts_workspace_size(&r, &ex, T, 2);
    Buffer ws(DYNMOE_BACKEND_CUDA, ws_bytes);
    EXPECT_EQ(dynmoe_experts_forward(gpu, &r, &ex, T, x.get(), ids.as<int32_t>(), wt.as<float>(), 2, out.get(),
                                     ws.get(), ws_bytes, nullptr),
              DYNMOE_ERR_UNSUPPORTED);
    EXPECT_NE(std::string(dynmoe_last_error()).find("CPU backend only"), std::string::npos) << dynmoe_last_error();
    dynmoe_packed_experts_destroy(pk);
    dynmoe_ctx_destroy(cpu);
    dynmoe_ctx_destroy(gpu);
}

/* Both builds: with oneDNN packing works; without it dynmoe_experts_pack is
 * DYNMOE_ERR_UNSUPPORTED with a message and a forward given any packed
 * pointer fails with DYNMOE_ERR_INVALID_ARGUMENT (nothing can have made it). */
TEST(PackBuild, PackReportsWhetherTheBuildHasOnednn) {
    setenv("DYNMOE_CPU_ISA", "onednn", 1);
    const bool have = dynmoe_cpu_isa() != nullptr && std::string(dynmoe_cpu_isa()) == "onednn";
    unsetenv("DYNMOE_CPU_ISA");
    dynmoe_ctx *ctx = nullptr;
    ASSERT_EQ(dynmoe_ctx_create(&ctx, DYNMOE_BACKEND_CPU, 0), DYNMOE_OK);
    Rng rng(seed_of(906, 0));
    const dynmoe_router r = make_router(4, 2);
    ExpertWeights w = make_experts(4, 32, 16, DYNMOE_ACT_SWIGLU, DYNMOE_F32, rng);
    BackendExperts bx = upload_experts(DYNMOE_BACKEND_CPU, r, w, DYNMOE_F32);
    dynmoe_packed_experts *pk = nullptr;
    const dynmoe_status st = dynmoe_experts_pack(ctx, &bx.desc, &pk);
    if (have) {
        EXPECT_EQ(st, DYNMOE_OK) << dynmoe_last_error();
        EXPECT_NE(pk, nullptr);
    } else {
        EXPECT_EQ(st, DYNMOE_ERR_UNSUPPORTED);
        EXPECT_EQ(pk, nullptr);
        EXPECT_NE(std::string(dynmoe_last_error()).find("no oneDNN"), std::string::npos) << dynmoe_last_error();
        alignas(64) static char junk[256] = {1};
        dynmoe_experts ex = bx.desc;
        ex.packed = reinterpret_cast<const dynmoe_packed_experts *>(junk);
        EXPECT_EQ(dynmoe_experts_workspace_size(&r, &ex, 8, 2), 0u);
        EXPECT_NE(std::string(dynmoe_last_error()).find("no oneDNN"), std::string::npos) << dynmoe_last_error();
    }
    dynmoe_packed_experts_destroy(pk);
    dynmoe_ctx_destroy(ctx);
}
