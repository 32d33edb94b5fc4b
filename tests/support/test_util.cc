#include "test_util.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <utility>

#ifdef DYNMOE_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace dmtest {

/* ---- Buffer ------------------------------------------------------------------ */

#ifdef DYNMOE_HAVE_CUDA
#define DMTEST_CUDA_CHECK(call)                                                                \
    do {                                                                                       \
        cudaError_t err_ = (call);                                                             \
        if (err_ != cudaSuccess) {                                                             \
            ADD_FAILURE() << #call << ": " << cudaGetErrorString(err_);                        \
        }                                                                                      \
    } while (0)
#endif

Buffer::Buffer(dynmoe_backend backend, size_t bytes) : backend_(backend), bytes_(bytes) {
    const size_t alloc = bytes == 0 ? 256 : (bytes + 255) / 256 * 256;
    if (backend == DYNMOE_BACKEND_CUDA) {
#ifdef DYNMOE_HAVE_CUDA
        DMTEST_CUDA_CHECK(cudaMalloc(&ptr_, alloc));
#else
        ADD_FAILURE() << "device buffer requested in a test build without CUDA";
#endif
    } else {
        ptr_ = std::aligned_alloc(256, alloc);
        if (!ptr_) ADD_FAILURE() << "host allocation of " << alloc << " bytes failed";
    }
}

Buffer::~Buffer() {
    if (!ptr_) return;
    if (backend_ == DYNMOE_BACKEND_CUDA) {
#ifdef DYNMOE_HAVE_CUDA
        cudaFree(ptr_);
#endif
    } else {
        std::free(ptr_);
    }
}

Buffer::Buffer(Buffer &&o) noexcept : backend_(o.backend_), ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
}

Buffer &Buffer::operator=(Buffer &&o) noexcept {
    if (this != &o) {
        this->~Buffer();
        backend_ = o.backend_;
        ptr_ = o.ptr_;
        bytes_ = o.bytes_;
        o.ptr_ = nullptr;
        o.bytes_ = 0;
    }
    return *this;
}

void Buffer::upload(const void *src, size_t n, size_t at) {
    if (n == 0 || !ptr_) return;
    if (backend_ == DYNMOE_BACKEND_CUDA) {
#ifdef DYNMOE_HAVE_CUDA
        DMTEST_CUDA_CHECK(cudaMemcpy(static_cast<char *>(ptr_) + at, src, n, cudaMemcpyHostToDevice));
#endif
    } else {
        std::memcpy(static_cast<char *>(ptr_) + at, src, n);
    }
}

void Buffer::download(void *dst, size_t n, size_t at) const {
    if (n == 0 || !ptr_) return;
    if (backend_ == DYNMOE_BACKEND_CUDA) {
#ifdef DYNMOE_HAVE_CUDA
        DMTEST_CUDA_CHECK(cudaDeviceSynchronize());
        DMTEST_CUDA_CHECK(cudaMemcpy(dst, static_cast<const char *>(ptr_) + at, n, cudaMemcpyDeviceToHost));
#endif
    } else {
        std::memcpy(dst, static_cast<const char *>(ptr_) + at, n);
    }
}

void Buffer::fill(uint8_t byte) {
    if (!ptr_ || bytes_ == 0) return;
    if (backend_ == DYNMOE_BACKEND_CUDA) {
#ifdef DYNMOE_HAVE_CUDA
        DMTEST_CUDA_CHECK(cudaMemset(ptr_, byte, bytes_));
        DMTEST_CUDA_CHECK(cudaDeviceSynchronize());
#endif
    } else {
        std::memset(ptr_, byte, bytes_);
    }
}

std::vector<uint8_t> Buffer::bytes_vector() const { return to_vector<uint8_t>(bytes_); }

void device_sync(dynmoe_backend b) {
#ifdef DYNMOE_HAVE_CUDA
    if (b == DYNMOE_BACKEND_CUDA) DMTEST_CUDA_CHECK(cudaDeviceSynchronize());
#else
    (void)b;
#endif
}

const char *backend_name(dynmoe_backend b) { return b == DYNMOE_BACKEND_CUDA ? "CUDA" : "CPU"; }

const char *dtype_name(dynmoe_dtype dt) {
    switch (dt) {
    case DYNMOE_F32: return "f32";
    case DYNMOE_F16: return "f16";
    case DYNMOE_BF16: return "bf16";
    default: return "?";
    }
}

void BackendTest::SetUp() {
    if (backend() == DYNMOE_BACKEND_CUDA && !dynmoe_cuda_available()) GTEST_SKIP() << "no CUDA device";
#ifndef DYNMOE_HAVE_CUDA
    if (backend() == DYNMOE_BACKEND_CUDA)
        GTEST_SKIP() << "no CUDA device (tests built without the CUDA runtime)";
#endif
    dynmoe_status st = dynmoe_ctx_create(&ctx_, backend(), 0);
    ASSERT_EQ(st, DYNMOE_OK) << dynmoe_last_error();
    ASSERT_NE(ctx_, nullptr);
}

void BackendTest::TearDown() {
    dynmoe_ctx_destroy(ctx_);
    ctx_ = nullptr;
}

std::string backend_param_name(const ::testing::TestParamInfo<dynmoe_backend> &info) {
    return backend_name(info.param);
}

/* ---- random inputs ------------------------------------------------------------- */

uint64_t base_seed() {
    const char *env = std::getenv("DYNMOE_TEST_SEED");
    if (env && *env) return std::strtoull(env, nullptr, 0);
    return 20261128;
}

double round_to(float v, dynmoe_dtype dt) {
    switch (dt) {
    case DYNMOE_F16: return dmref::f16_to_f32(dmref::f32_to_f16(v));
    case DYNMOE_BF16: return dmref::bf16_to_f32(dmref::f32_to_bf16(v));
    default: return v;
    }
}

void set_packed(Packed &p, size_t i, float v) {
    if (p.dtype == DYNMOE_F32) {
        std::memcpy(&p.bytes[i * 4], &v, 4);
    } else {
        uint16_t h = p.dtype == DYNMOE_F16 ? dmref::f32_to_f16(v) : dmref::f32_to_bf16(v);
        std::memcpy(&p.bytes[i * 2], &h, 2);
    }
    p.values[i] = dmref::load(p.bytes.data(), p.dtype, (int64_t)i);
}

Packed pack(const std::vector<float> &v, dynmoe_dtype dt) {
    Packed p;
    p.dtype = dt;
    p.bytes.resize(v.size() * dmref::dtype_size(dt));
    p.values.resize(v.size());
    for (size_t i = 0; i < v.size(); i++) set_packed(p, i, v[i]);
    return p;
}

std::vector<double> to_double(const std::vector<float> &v) { return std::vector<double>(v.begin(), v.end()); }

std::vector<double> unpack(const std::vector<uint8_t> &bytes, dynmoe_dtype dt, size_t n) {
    std::vector<double> out(n);
    for (size_t i = 0; i < n; i++) out[i] = dmref::load(bytes.data(), dt, (int64_t)i);
    return out;
}

/* ---- comparisons ------------------------------------------------------------- */

double rel_error(const std::vector<double> &got, const std::vector<double> &ref) {
    if (got.size() != ref.size()) return std::numeric_limits<double>::quiet_NaN();
    double num = 0.0, den = 0.0, gn = 0.0;
    for (size_t i = 0; i < got.size(); i++) {
        double d = got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
        gn += got[i] * got[i];
    }
    if (std::isnan(num) || std::isnan(gn)) return std::numeric_limits<double>::quiet_NaN();
    if (den == 0.0) return std::sqrt(gn);
    return std::sqrt(num / den);
}

double tolerance(dynmoe_dtype dt) { return dt == DYNMOE_F32 ? 1e-5 : 1e-2; }

::testing::AssertionResult ints_equal(const std::vector<int32_t> &got,
                                      const std::vector<int32_t> &want, const char *what,
                                      int64_t row_len) {
    if (got.size() != want.size())
        return ::testing::AssertionFailure()
               << what << ": size " << got.size() << ", expected " << want.size();
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < got.size(); i++)
        if (got[i] != want[i]) {
            if (bad == 0) first = i;
            bad++;
        }
    if (bad == 0) return ::testing::AssertionSuccess();
    auto f = ::testing::AssertionFailure();
    f << what << ": " << bad << " of " << got.size() << " differ; first at [" << first << "]";
    if (row_len > 0) f << " (row " << first / row_len << ", col " << first % row_len << ")";
    f << ": got " << got[first] << ", expected " << want[first];
    if (row_len > 0) {
        size_t r0 = first / row_len * row_len;
        f << "\n  got row: ";
        for (int64_t k = 0; k < row_len && k < 16; k++) f << got[r0 + k] << ' ';
        f << "\n  ref row: ";
        for (int64_t k = 0; k < row_len && k < 16; k++) f << want[r0 + k] << ' ';
    }
    return f;
}

void expect_table_eq(const std::vector<int32_t> &ids, const std::vector<float> &weights,
                     const dmref::Table &ref, const char *what) {
    EXPECT_TRUE(ints_equal(ids, ref.ids, what, ref.S));
    std::vector<double> w(weights.begin(), weights.end());
    double err = rel_error(w, ref.weights);
    EXPECT_LT(err, 1e-5) << what << ": weights relative error";
    size_t nonzero_empty = 0;
    for (size_t i = 0; i < ids.size() && i < weights.size(); i++)
        if (ids[i] == -1 && !(weights[i] == 0.0f)) nonzero_empty++;
    EXPECT_EQ(nonzero_empty, 0u) << what << ": empty slots with weight != 0";
}

void expect_stats(const dynmoe_stats &got, const dynmoe_stats &want, unsigned required) {
    struct F {
        const char *name;
        unsigned bit;
        int64_t g, w;
    } fields[] = {
        {"tokens", ST_TOKENS, got.tokens, want.tokens},
        {"routed_slots", ST_ROUTED, got.routed_slots, want.routed_slots},
        {"empty_slots", ST_EMPTY, got.empty_slots, want.empty_slots},
        {"zero_expert_slots", ST_ZERO, got.zero_expert_slots, want.zero_expert_slots},
        {"invalid_ids", ST_INVALID, got.invalid_ids, want.invalid_ids},
        {"nonfinite_rows", ST_NONFINITE, got.nonfinite_rows, want.nonfinite_rows},
        {"active_experts", ST_ACTIVE, got.active_experts, want.active_experts},
        {"max_expert_rows", ST_MAXROWS, got.max_expert_rows, want.max_expert_rows},
        {"overflow_slots", ST_OVERFLOW, got.overflow_slots, want.overflow_slots},
    };
    for (const F &f : fields) {
        if (required & f.bit) {
            EXPECT_EQ(f.g, f.w) << "stats." << f.name;
        } else if (f.g != kStatsPoison) {
            EXPECT_EQ(f.g, f.w) << "stats." << f.name << " (written although not required)";
        }
    }
}

dynmoe_router make_router(int32_t E, int32_t K) {
    dynmoe_router r = DYNMOE_ROUTER_INIT;
    r.num_experts = E;
    r.top_k = K;
    return r;
}

std::string describe(const dynmoe_router &r) {
    std::ostringstream o;
    o << "E=" << r.num_experts << " Z=" << r.num_zero_experts << " zero_kind=" << r.zero_kind
      << " K=" << r.top_k << " score=" << r.score << " select=" << r.select << " top_p=" << r.top_p
      << " threshold=" << r.threshold << " groups=" << r.num_groups << "/" << r.topk_groups
      << " norm=" << r.norm << " scale=" << r.scale << " tasks=" << r.num_tasks << "/"
      << r.top_tasks << " weight_on_input=" << r.weight_on_input;
    return o.str();
}

} // namespace dmtest
