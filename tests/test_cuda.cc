/*
 * test_cuda.cc — the properties DESIGN.md section 3 promises for the device
 * path, checked against the reference and against eager calls:
 *  - Graph.CaptureReplay: dynmoe_moe_forward (with stats) captured into a
 *    CUDA graph in cudaStreamCaptureModeGlobal (any sync or allocation inside
 *    fails the capture), replayed, then replayed again on new inputs written
 *    into the same buffers; each replay equals the reference and, bitwise, an
 *    eager call.
 *  - Stream.TwoStreams: one context, two streams, two forwards in flight at
 *    once; each equals its eager single-stream result bitwise.
 *  - Forward.DeterministicFiveRuns: five runs, bitwise equal outputs and equal
 *    stats (CPU and CUDA).
 *  - Graph.ExpertPathsMatchReference: both CUDA expert paths, forced with
 *    DYNMOE_EXPERTS_PATH=decode|prefill, on the edge cases of section 6.
 * The suite names match scripts/gpu-check.sh's graph step filter
 * ('*Graph*' / '*Stream*' / '*Deterministic*'). CUDA cases skip without a
 * device; graph capture skips on the CPU backend.
 */
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cases.h"
#include "run.h"

#ifdef DYNMOE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

using namespace dmtest;

namespace {

#ifdef DYNMOE_HAVE_CUDA
#define CUDA_ASSERT(call)                                                                      \
    do {                                                                                       \
        cudaError_t err_ = (call);                                                             \
        ASSERT_EQ(err_, cudaSuccess) << #call << ": " << cudaGetErrorString(err_);             \
    } while (0)
#define CUDA_EXPECT(call)                                                                      \
    do {                                                                                       \
        cudaError_t err_ = (call);                                                             \
        EXPECT_EQ(err_, cudaSuccess) << #call << ": " << cudaGetErrorString(err_);             \
    } while (0)
#endif

uint64_t seed_of(size_t index, int salt) {
    return base_seed() * 1000003ull + 170000ull + index * 7919ull + (uint64_t)salt;
}

const dynmoe_dtype kDtypes[] = {DYNMOE_F32, DYNMOE_BF16};

std::string sizes(const ModelCase &c, dynmoe_dtype dt, int64_t T, uint64_t seed) {
    return c.name + " " + dtype_name(dt) + " T=" + std::to_string(T) + " H=" + std::to_string(c.H) +
           " I=" + std::to_string(c.I) + " seed=" + std::to_string(seed) + " " + describe(c.router);
}


void expect_stats_equal(const dynmoe_stats &a, const dynmoe_stats &b, const std::string &what) {
    EXPECT_EQ(a.tokens, b.tokens) << what;
    EXPECT_EQ(a.routed_slots, b.routed_slots) << what;
    EXPECT_EQ(a.empty_slots, b.empty_slots) << what;
    EXPECT_EQ(a.zero_expert_slots, b.zero_expert_slots) << what;
    EXPECT_EQ(a.invalid_ids, b.invalid_ids) << what;
    EXPECT_EQ(a.nonfinite_rows, b.nonfinite_rows) << what;
    EXPECT_EQ(a.active_experts, b.active_experts) << what;
    EXPECT_EQ(a.max_expert_rows, b.max_expert_rows) << what;
    EXPECT_EQ(a.overflow_slots, b.overflow_slots) << what;
}

/* One MoE layer's buffers on a backend, kept across calls so that a captured
 * graph (which holds the pointers) can be replayed on new inputs. */
struct Layer {
    Layer(dynmoe_backend b_, const ModelCase &c_, const ExpertWeights &w, dynmoe_dtype dt_, int64_t T_,
          const RouteInputs &in)
        : b(b_), c(c_), dt(dt_), T(T_), w13(make_buffer(b_, w.w13.bytes)), w2(make_buffer(b_, w.w2.bytes)),
          x(b_, (size_t)(T_ * c_.H) * dmref::dtype_size(dt_)), logits(b_, in.logits.bytes.size()),
          bias(b_, in.bias.size() * sizeof(float)), mask(b_, in.mask.bytes.size()),
          out(b_, (size_t)(T_ * c_.H) * dmref::dtype_size(dt_)) {
        ex = make_experts_desc(c.router, c.H, c.I, dt, w.ref.act, w13.get(), w2.get());
        ws_bytes = dynmoe_workspace_size(&c.router, &ex, T);
        EXPECT_GT(ws_bytes, 0u) << "dynmoe_workspace_size: " << dynmoe_last_error();
        ws = Buffer(b, ws_bytes);
        has_bias = !in.bias.empty();
        has_mask = in.mask.size() > 0;
    }

    /* Writes new inputs into the same buffers. */
    void load(const Packed &xv, const RouteInputs &in) {
        EXPECT_EQ(xv.bytes.size(), x.bytes());
        EXPECT_EQ(in.logits.bytes.size(), logits.bytes());
        EXPECT_EQ(in.mask.bytes.size(), mask.bytes());
        x.upload(xv.bytes.data(), xv.bytes.size());
        logits.upload(in.logits.bytes.data(), in.logits.bytes.size());
        if (has_bias) bias.upload(in.bias.data(), in.bias.size() * sizeof(float));
        if (has_mask) mask.upload(in.mask.bytes.data(), in.mask.bytes.size());
        logits_dtype = in.logits.dtype;
    }

    void poison() {
        out.fill(kPoisonFloat);
        ws.fill(kPoisonFloat);
    }

    dynmoe_status call(dynmoe_ctx *ctx, void *stream) const {
        return dynmoe_moe_forward(ctx, &c.router, &ex, T, x.get(), logits.get(), logits_dtype,
                                  has_bias ? bias.as<float>() : nullptr, has_mask ? mask.get() : nullptr,
                                  out.get(), ws.get(), ws_bytes, stream);
    }

    std::vector<uint8_t> out_bytes() const { return out.to_vector<uint8_t>(out.bytes()); }
    std::vector<double> out_values() const {
        return unpack(out_bytes(), dt, (size_t)(T * c.H));
    }

    dynmoe_backend b;
    ModelCase c;
    dynmoe_dtype dt;
    int64_t T;
    Buffer w13, w2, x, logits, bias, mask, out, ws;
    dynmoe_experts ex{};
    size_t ws_bytes = 0;
    dynmoe_dtype logits_dtype = DYNMOE_F32;
    bool has_bias = false, has_mask = false;
};

/* Sets an environment variable for a scope and restores the previous value. */
class EnvGuard {
  public:
    EnvGuard(const char *name, const char *value) : name_(name) {
        const char *old = std::getenv(name);
        had_ = old != nullptr;
        if (had_) old_ = old;
        if (value)
            setenv(name, value, 1);
        else
            unsetenv(name);
    }
    ~EnvGuard() {
        if (had_)
            setenv(name_, old_.c_str(), 1);
        else
            unsetenv(name_);
    }
    EnvGuard(const EnvGuard &) = delete;
    EnvGuard &operator=(const EnvGuard &) = delete;

  private:
    const char *name_;
    bool had_ = false;
    std::string old_;
};

/* Model-shaped cases with reduced, odd H and I (not multiples of 8 or of a tile). */
std::vector<ModelCase> graph_cases() {
    ModelCase q = find_case("beam_qwen3_selected"); /* Qwen3-shaped, BEAM mask */
    q.H = 67;
    q.I = 37;
    ModelCase d = find_case("deepseek_v3"); /* sigmoid, bias, grouped */
    d.H = 45;
    d.I = 29;
    ModelCase l = find_case("longcat_flash"); /* identity zero experts */
    l.H = 33;
    l.I = 19;
    return {q, d, l};
}

} // namespace

/* All suites share the fixture; each has its own name for gtest filters. */
class Graph : public BackendTest {};
class Stream : public BackendTest {};
class Forward : public BackendTest {};
DYNMOE_INSTANTIATE_BACKENDS(Graph);
DYNMOE_INSTANTIATE_BACKENDS(Stream);
DYNMOE_INSTANTIATE_BACKENDS(Forward);

/* Capture route -> plan -> experts -> combine (with stats in device memory)
 * into a graph; replay; replay again on new inputs in the same buffers. On the
 * CPU backend the same sequence runs with eager calls in place of the replays
 * (a check of the test itself), then the test skips. */
TEST_P(Graph, CaptureReplay) {
    const bool cuda = backend() == DYNMOE_BACKEND_CUDA;
    const std::vector<ModelCase> cases = graph_cases();
    void *stream = nullptr;
#ifdef DYNMOE_HAVE_CUDA
    cudaStream_t s = nullptr;
    if (cuda) {
        CUDA_ASSERT(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        stream = s;
    }
#endif
    /* T = 57 takes the decode path for every case; T = 257 the bf16 prefill
     * (MMA) path for Qwen3 (2056 slots > 8 * 128) and DeepSeek (> 8 * 256) */
    for (int64_t T : {57, 257})
    for (size_t i = 0; i < cases.size(); i++) {
        for (dynmoe_dtype dt : kDtypes) {
            const ModelCase &c = cases[i];
            const uint64_t seed = seed_of(i, (int)dt + (int)T);
            SCOPED_TRACE(sizes(c, dt, T, seed));
            Rng rng(seed);
            RouteInputs in[2] = {make_route_inputs(c, T, dt, rng), make_route_inputs(c, T, dt, rng)};
            ExpertWeights w = make_experts(c.router.num_experts, c.H, c.I, c.act, dt, rng);
            Packed x[2] = {random_x(T, c.H, dt, rng), random_x(T, c.H, dt, rng)};
            Layer L(backend(), c, w, dt, T, in[0]);
            StatsBlock stats(ctx_, backend());
            L.load(x[0], in[0]);
            L.poison();

#ifdef DYNMOE_HAVE_CUDA
            cudaGraph_t graph = nullptr;
            cudaGraphExec_t exec = nullptr;
            if (cuda) {
                CUDA_EXPECT(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
                const dynmoe_status st = L.call(ctx_, s);
                const std::string msg = st == DYNMOE_OK ? "" : dynmoe_last_error();
                const cudaError_t cap = cudaStreamEndCapture(s, &graph);
                ASSERT_EQ(st, DYNMOE_OK) << "dynmoe_moe_forward during capture: " << msg;
                ASSERT_EQ(cap, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(cap)
                                            << " (a sync, allocation or legacy-stream call inside the forward)";
                ASSERT_NE(graph, nullptr);
                size_t nodes = 0;
                CUDA_EXPECT(cudaGraphGetNodes(graph, nullptr, &nodes));
                EXPECT_GT(nodes, 0u) << "the captured graph is empty";
                CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
                /* capture records, it does not run: the output keeps its poison */
                const std::vector<uint8_t> after = L.out_bytes();
                size_t written = 0;
                for (uint8_t v : after) written += v != kPoisonFloat;
                EXPECT_EQ(written, 0u) << "bytes of out written during capture";
            }
#endif
            auto replay = [&]() -> bool {
#ifdef DYNMOE_HAVE_CUDA
                if (cuda) {
                    const cudaError_t e1 = cudaGraphLaunch(exec, s);
                    EXPECT_EQ(e1, cudaSuccess) << "cudaGraphLaunch: " << cudaGetErrorString(e1);
                    const cudaError_t e2 = cudaStreamSynchronize(s);
                    EXPECT_EQ(e2, cudaSuccess) << "cudaStreamSynchronize: " << cudaGetErrorString(e2);
                    return e1 == cudaSuccess && e2 == cudaSuccess;
                }
#endif
                const dynmoe_status st = L.call(ctx_, nullptr);
                EXPECT_EQ(st, DYNMOE_OK) << dynmoe_last_error();
                return st == DYNMOE_OK;
            };

            for (int round = 0; round < 2; round++) {
                SCOPED_TRACE(round ? "replay on new inputs" : "first replay");
                if (round) L.load(x[1], in[1]);
                /* replay, twice: the second replay of the same inputs must agree too */
                std::vector<uint8_t> replay_bytes;
                dynmoe_stats replay_stats{};
                for (int rep = 0; rep < 2; rep++) {
                    L.poison();
                    stats.poison();
                    ASSERT_TRUE(replay());
                    const std::vector<uint8_t> got = L.out_bytes();
                    if (rep == 0) {
                        replay_bytes = got;
                        replay_stats = stats.read();
                    } else {
                        EXPECT_EQ(got, replay_bytes) << "two replays on the same inputs differ";
                    }
                }
                expect_close(unpack(replay_bytes, dt, (size_t)(T * c.H)),
                             moe_reference_out(c, w, T, x[round], in[round]), dt, "graph replay vs reference");
                expect_stats(replay_stats, moe_reference_stats(c, T, in[round]), ST_ALL);

                /* eager on the same inputs: bitwise the same */
                L.poison();
                stats.poison();
                ASSERT_EQ(L.call(ctx_, stream), DYNMOE_OK) << dynmoe_last_error();
                device_sync(backend());
                EXPECT_EQ(L.out_bytes(), replay_bytes) << "graph replay differs from the eager call";
                expect_stats_equal(stats.read(), replay_stats, "eager stats vs replay stats");
            }
#ifdef DYNMOE_HAVE_CUDA
            if (cuda) {
                CUDA_EXPECT(cudaGraphExecDestroy(exec));
                CUDA_EXPECT(cudaGraphDestroy(graph));
            }
#endif
        }
    }
#ifdef DYNMOE_HAVE_CUDA
    if (cuda) CUDA_EXPECT(cudaStreamDestroy(s));
#endif
    if (!cuda) GTEST_SKIP() << "graphs are CUDA only (on the CPU only the eager reload-and-compare sequence ran)";
}

/* One context, two streams, two independent forwards in flight at once (no
 * stats attached: stats forbid concurrent streams). On the CPU the streams are
 * null and the calls simply follow each other. */
TEST_P(Stream, TwoStreams) {
    const bool cuda = backend() == DYNMOE_BACKEND_CUDA;
    (void)cuda; /* only the CUDA build uses it */
    void *sa = nullptr, *sb = nullptr;
#ifdef DYNMOE_HAVE_CUDA
    cudaStream_t csa = nullptr, csb = nullptr;
    if (cuda) {
        CUDA_ASSERT(cudaStreamCreateWithFlags(&csa, cudaStreamNonBlocking));
        CUDA_ASSERT(cudaStreamCreateWithFlags(&csb, cudaStreamNonBlocking));
        sa = csa;
        sb = csb;
    }
#endif
    auto sync = [&](void *s) {
#ifdef DYNMOE_HAVE_CUDA
        if (cuda) CUDA_EXPECT(cudaStreamSynchronize(static_cast<cudaStream_t>(s)));
#else
        (void)s;
#endif
    };
    for (dynmoe_dtype dt : kDtypes) {
        /* A: a prefill-sized Qwen3 layer (bf16 takes the MMA path); B: a decode-sized DeepSeek layer */
        ModelCase ca = find_case("qwen3_30b_a3b"), cb = find_case("deepseek_v3");
        ca.H = 72;
        ca.I = 40;
        cb.H = 45;
        cb.I = 29;
        const int64_t Ta = 700, Tb = 9;
        const uint64_t seed = seed_of(10, (int)dt);
        SCOPED_TRACE(std::string(dtype_name(dt)) + " seed=" + std::to_string(seed));
        Rng rng(seed);
        RouteInputs ina = make_route_inputs(ca, Ta, dt, rng), inb = make_route_inputs(cb, Tb, dt, rng);
        ExpertWeights wa = make_experts(ca.router.num_experts, ca.H, ca.I, ca.act, dt, rng);
        ExpertWeights wb = make_experts(cb.router.num_experts, cb.H, cb.I, cb.act, dt, rng);
        Packed xa = random_x(Ta, ca.H, dt, rng), xb = random_x(Tb, cb.H, dt, rng);
        Layer A(backend(), ca, wa, dt, Ta, ina), B(backend(), cb, wb, dt, Tb, inb);
        A.load(xa, ina);
        B.load(xb, inb);

        /* eager, one stream at a time */
        A.poison();
        ASSERT_EQ(A.call(ctx_, sa), DYNMOE_OK) << dynmoe_last_error();
        sync(sa);
        const std::vector<uint8_t> want_a = A.out_bytes();
        B.poison();
        ASSERT_EQ(B.call(ctx_, sa), DYNMOE_OK) << dynmoe_last_error();
        sync(sa);
        const std::vector<uint8_t> want_b = B.out_bytes();
        expect_close(unpack(want_a, dt, (size_t)(Ta * ca.H)), moe_reference_out(ca, wa, Ta, xa, ina), dt, "A eager");
        expect_close(unpack(want_b, dt, (size_t)(Tb * cb.H)), moe_reference_out(cb, wb, Tb, xb, inb), dt, "B eager");

        for (int round = 0; round < 3; round++) {
            SCOPED_TRACE("round " + std::to_string(round));
            A.poison();
            B.poison();
            /* back to back, no sync in between; the order alternates */
            if (round % 2 == 0) {
                ASSERT_EQ(A.call(ctx_, sa), DYNMOE_OK) << dynmoe_last_error();
                ASSERT_EQ(B.call(ctx_, sb), DYNMOE_OK) << dynmoe_last_error();
            } else {
                ASSERT_EQ(B.call(ctx_, sb), DYNMOE_OK) << dynmoe_last_error();
                ASSERT_EQ(A.call(ctx_, sa), DYNMOE_OK) << dynmoe_last_error();
            }
            sync(sa);
            sync(sb);
            EXPECT_EQ(A.out_bytes(), want_a) << "A on stream a differs from its eager result";
            EXPECT_EQ(B.out_bytes(), want_b) << "B on stream b differs from its eager result";
        }
    }
#ifdef DYNMOE_HAVE_CUDA
    if (cuda) {
        CUDA_EXPECT(cudaStreamDestroy(csa));
        CUDA_EXPECT(cudaStreamDestroy(csb));
    }
#endif
}

/* Five runs of the same call: bitwise equal outputs, equal stats. */
TEST_P(Forward, DeterministicFiveRuns) {
    ModelCase cases[] = {find_case("deepseek_v3"), find_case("beam_longcat_identity"), find_case("beam_qwen3_kept")};
    cases[0].H = 45;
    cases[0].I = 29;
    cases[2].H = 67;
    cases[2].I = 37;
    for (size_t i = 0; i < 3; i++) {
        for (dynmoe_dtype dt : kDtypes) {
            const ModelCase &c = cases[i];
            const int64_t T = i == 2 ? 600 : 150; /* 600: the bf16 prefill path on CUDA */
            const uint64_t seed = seed_of(20 + i, (int)dt);
            SCOPED_TRACE(sizes(c, dt, T, seed));
            Rng rng(seed);
            RouteInputs in = make_route_inputs(c, T, dt, rng);
            ExpertWeights w = make_experts(c.router.num_experts, c.H, c.I, c.act, dt, rng);
            Packed x = random_x(T, c.H, dt, rng);
            Layer L(backend(), c, w, dt, T, in);
            L.load(x, in);
            StatsBlock stats(ctx_, backend());
            std::vector<uint8_t> first;
            dynmoe_stats first_stats{};
            for (int run = 0; run < 5; run++) {
                SCOPED_TRACE("run " + std::to_string(run));
                L.poison();
                stats.poison();
                ASSERT_EQ(L.call(ctx_, nullptr), DYNMOE_OK) << dynmoe_last_error();
                device_sync(backend());
                std::vector<uint8_t> got = L.out_bytes();
                const dynmoe_stats st = stats.read();
                if (run == 0) {
                    first = got;
                    first_stats = st;
                    expect_close(unpack(got, dt, (size_t)(T * c.H)), moe_reference_out(c, w, T, x, in), dt,
                                 "run 0 vs reference");
                    expect_stats(st, moe_reference_stats(c, T, in), ST_ALL);
                } else {
                    EXPECT_EQ(got, first) << "output differs from run 0";
                    expect_stats_equal(st, first_stats, "stats vs run 0");
                }
            }
        }
    }
}

/* Both CUDA expert paths (DYNMOE_EXPERTS_PATH=decode|prefill; f32 always takes
 * the decode kernel) against the reference on the edge cases. The CPU backend
 * ignores the variable and runs the same cases once. bf16: h is rounded to
 * bf16 between the GEMMs on CUDA, within the 1e-2 tolerance. */
TEST_P(Graph, ExpertPathsMatchReference) {
    const bool cuda = backend() == DYNMOE_BACKEND_CUDA;
    std::vector<const char *> paths = {"decode", "prefill"};
    if (!cuda) paths = {nullptr};
    for (const char *path : paths) {
        EnvGuard env("DYNMOE_EXPERTS_PATH", path);
        SCOPED_TRACE(std::string("DYNMOE_EXPERTS_PATH=") + (path ? path : "(unset)"));
        for (dynmoe_dtype dt : kDtypes) {
            SCOPED_TRACE(dtype_name(dt));
            /* experts_forward of a table vs the reference (the library gets fp32 weights) */
            auto check_table = [&](const char *what, const dynmoe_router &r, int32_t H, int32_t I, const dmref::Table &t,
                                   uint64_t seed) {
                SCOPED_TRACE(std::string(what) + " T=" + std::to_string(t.T) + " S=" + std::to_string(t.S) +
                             " H=" + std::to_string(H) + " I=" + std::to_string(I) + " seed=" +
                             std::to_string(seed) + " " + describe(r));
                Rng rng(seed);
                check_experts_vs_reference(ctx_, backend(), r, H, I, DYNMOE_ACT_SWIGLU, dt, t, rng, ST_PLAN, what);
            };
            /* moe_forward of a model case vs the reference */
            auto check_moe = [&](const ModelCase &c, int64_t T, uint64_t seed) {
                SCOPED_TRACE(sizes(c, dt, T, seed));
                check_moe_vs_reference(ctx_, backend(), c, T, dt, seed, ST_ALL);
            };
            const int salt = (int)dt * 10 + (path && path[0] == 'p' ? 100 : 0);

            {   /* odd H and I (not multiples of 8 or of a tile), over both size regimes */
                ModelCase odd;
                odd.name = "odd_sizes";
                odd.router = make_router(8, 3);
                odd.router.norm = DYNMOE_NORM_SELECTED;
                odd.H = 67;
                odd.I = 37;
                for (int64_t T : {5, 45, 301}) check_moe(odd, T, seed_of(40, salt + (int)T));
            }
            {   /* quantized weights (issue 16) on both paths: the streaming kernel, and with bf16 the
                 * tensor-core kernel that dequantizes B tiles in shared memory (f32: streaming) */
                for (dynmoe_weight_format f :
                     {DYNMOE_WEIGHTS_FP8_BLOCK, DYNMOE_WEIGHTS_MXFP4, DYNMOE_WEIGHTS_INT4}) {
                    ModelCase q;
                    q.name = "quantized";
                    q.router = make_router(8, 2);
                    q.H = 160; /* FP8: a partial second 128-block; INT4 g64: a ragged last group */
                    q.I = 96;
                    q.ex.format = f;
                    q.ex.group = f == DYNMOE_WEIGHTS_INT4 ? 64 : 0;
                    for (int64_t T : {5, 301}) check_moe(q, T, seed_of(43, salt + 1000 * (int)f + (int)T));
                }
            }
            {   /* one row */
                dynmoe_router r = make_router(8, 1);
                dmref::Table t;
                t.T = 1;
                t.S = 1;
                t.ids = {3};
                t.weights = {0.75};
                check_table("one row", r, 67, 37, t, seed_of(41, salt));
            }
            {   /* 4097 rows, all on one expert */
                dynmoe_router r = make_router(8, 2);
                dmref::Table t;
                t.T = 4097;
                t.S = 2;
                Rng rng(seed_of(42, salt));
                for (int64_t q = 0; q < t.T * 2; q++) {
                    t.ids.push_back(q % 2 ? -1 : 5);
                    t.weights.push_back(q % 2 ? 0.0 : rng.uniform(0.1, 1));
                }
                check_table("4097 rows on one expert", r, 40, 23, t, seed_of(43, salt));
            }
            {   /* E = 256, most experts empty */
                dynmoe_router r = make_router(256, 4);
                dmref::Table t;
                t.T = 37;
                t.S = 4;
                const int32_t used[] = {0, 7, 100, 255};
                Rng rng(seed_of(44, salt));
                for (int64_t q = 0; q < t.T * 4; q++) {
                    t.ids.push_back(used[rng.integer(0, 3)]);
                    t.weights.push_back(rng.uniform(-1, 1));
                }
                check_table("E=256, 252 experts empty", r, 33, 21, t, seed_of(45, salt));
            }
            for (int zk = 0; zk < 2; zk++) { /* every slot a zero expert */
                dynmoe_router r = make_router(16, 3);
                r.num_zero_experts = 5;
                r.zero_kind = zk ? DYNMOE_ZERO_IDENTITY : DYNMOE_ZERO_OUTPUT;
                dmref::Table t;
                t.T = 50;
                t.S = 3;
                Rng rng(seed_of(46, salt + zk));
                for (int64_t q = 0; q < t.T * 3; q++) {
                    t.ids.push_back((int32_t)rng.integer(16, 20));
                    t.weights.push_back(rng.uniform(0, 1));
                }
                check_table(zk ? "all slots identity zero experts" : "all slots zero-output experts", r, 35, 17, t,
                            seed_of(47, salt + zk));
            }
            {   /* BEAM masks (moe_forward) */
                ModelCase q = find_case("beam_qwen3_selected");
                q.H = 67;
                q.I = 37;
                check_moe(q, 70, seed_of(48, salt));
                check_moe(q, 600, seed_of(49, salt));
                ModelCase l = find_case("beam_longcat_identity");
                l.H = 45;
                l.I = 27;
                check_moe(l, 90, seed_of(50, salt));
            }
        }
    }
}
