/*
 * test_util.h — the small layer that lets every test run on every backend:
 * a Buffer that is host or device memory, a fixture parameterised by
 * backend, seeded random inputs, dtype packing and the comparisons.
 * Only the public API (dynmoe.h) and, with DYNMOE_HAVE_CUDA, the CUDA runtime.
 */
#ifndef DYNMOE_TESTS_TEST_UTIL_H
#define DYNMOE_TESTS_TEST_UTIL_H

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "dynmoe.h"
#include "reference.h"

namespace dmtest {

/* Poison patterns: 0xFF bytes are NaN for f32, f16 and bf16 alike; ints get
 * 0xA5 bytes (-1515870811), because 0xFF bytes would read as -1, a valid
 * empty slot, and an unwritten slot would pass. */
constexpr uint8_t kPoisonFloat = 0xFF;
constexpr uint8_t kPoisonInt = 0xA5;
constexpr int32_t kPoisonInt32 = (int32_t)0xA5A5A5A5u;

/* Host memory (aligned to 256 bytes) for the CPU backend, device memory for
 * CUDA. Never null, even for 0 bytes. */
class Buffer {
  public:
    Buffer() = default;
    Buffer(dynmoe_backend backend, size_t bytes);
    ~Buffer();
    Buffer(Buffer &&o) noexcept;
    Buffer &operator=(Buffer &&o) noexcept;
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;

    void *get() const { return ptr_; }
    template <class T> T *as() const { return static_cast<T *>(ptr_); }
    /* ptr + bytes, for misaligned-pointer tests */
    void *offset(size_t bytes) const { return static_cast<char *>(ptr_) + bytes; }
    size_t bytes() const { return bytes_; }
    dynmoe_backend backend() const { return backend_; }

    void upload(const void *src, size_t n, size_t at = 0);
    void download(void *dst, size_t n, size_t at = 0) const;
    void fill(uint8_t byte);
    std::vector<uint8_t> bytes_vector() const;
    template <class T> std::vector<T> to_vector(size_t count) const {
        std::vector<T> v(count);
        if (count) download(v.data(), count * sizeof(T));
        return v;
    }

  private:
    dynmoe_backend backend_ = DYNMOE_BACKEND_CPU;
    void *ptr_ = nullptr;
    size_t bytes_ = 0;
};

/* A buffer holding `v`. */
template <class T> Buffer make_buffer(dynmoe_backend b, const std::vector<T> &v) {
    Buffer buf(b, v.size() * sizeof(T));
    if (!v.empty()) buf.upload(v.data(), v.size() * sizeof(T));
    return buf;
}

/* Synchronises the device after a call on CUDA (no-op on the CPU). */
void device_sync(dynmoe_backend b);

const char *backend_name(dynmoe_backend b);
const char *dtype_name(dynmoe_dtype dt);

/* Tests run once per backend; CUDA skips with "no CUDA device" when
 * dynmoe_cuda_available() is 0. */
class BackendTest : public ::testing::TestWithParam<dynmoe_backend> {
  protected:
    void SetUp() override;
    void TearDown() override;
    dynmoe_backend backend() const { return GetParam(); }

    dynmoe_ctx *ctx_ = nullptr;
};

std::string backend_param_name(const ::testing::TestParamInfo<dynmoe_backend> &info);

#define DYNMOE_INSTANTIATE_BACKENDS(suite)                                                     \
    INSTANTIATE_TEST_SUITE_P(Backends, suite,                                                  \
                             ::testing::Values(DYNMOE_BACKEND_CPU, DYNMOE_BACKEND_CUDA),        \
                             dmtest::backend_param_name)

/* ---- random inputs --------------------------------------------------------- */

/* The base seed: DYNMOE_TEST_SEED from the environment, else a fixed one.
 * Every test derives its seeds from it and prints them with SCOPED_TRACE. */
uint64_t base_seed();

struct Rng {
    explicit Rng(uint64_t seed) : gen(seed) {}
    std::mt19937_64 gen;
    /* 53 random bits scaled: faster than std::uniform_real_distribution */
    double uniform(double lo, double hi) { return lo + (hi - lo) * (double)(gen() >> 11) * 0x1p-53; }
    double normal(double sd = 1.0) { return std::normal_distribution<double>(0.0, sd)(gen); }
    int64_t integer(int64_t lo, int64_t hi) /* inclusive */ {
        return std::uniform_int_distribution<int64_t>(lo, hi)(gen);
    }
    std::vector<float> uniform_vec(size_t n, double lo, double hi) {
        std::vector<float> v(n);
        for (auto &x : v) x = (float)uniform(lo, hi);
        return v;
    }
};

/* Values stored in a dtype; `values` are what the stored bits mean. */
struct Packed {
    dynmoe_dtype dtype = DYNMOE_F32;
    std::vector<uint8_t> bytes;
    std::vector<double> values;
    size_t size() const { return values.size(); }
};
Packed pack(const std::vector<float> &v, dynmoe_dtype dt);
/* Element i rounded as dt would store it. */
double round_to(float v, dynmoe_dtype dt);

/* Stores v into a packed tensor at i (rounded to its dtype). */
void set_packed(Packed &p, size_t i, float v);

std::vector<double> to_double(const std::vector<float> &v);

/* Decodes n elements of a downloaded tensor of dtype dt. */
std::vector<double> unpack(const std::vector<uint8_t> &bytes, dynmoe_dtype dt, size_t n);

/* ---- comparisons ----------------------------------------------------------- */

/* ||got - ref|| / ||ref||; when ||ref|| == 0, ||got|| (so 0 is required).
 * NaN in got gives NaN, which fails every `<` check. */
double rel_error(const std::vector<double> &got, const std::vector<double> &ref);

/* The tolerance of a dtype: fp32 1e-5, f16/bf16 1e-2. */
double tolerance(dynmoe_dtype dt);

/* Exact comparison of integer arrays with a readable first mismatch. */
::testing::AssertionResult ints_equal(const std::vector<int32_t> &got,
                                      const std::vector<int32_t> &want, const char *what,
                                      int64_t row_len = 0);

/* Checks a routing table against the reference: ids exactly, weights by
 * relative error < 1e-5, empty slots exactly weight 0. */
void expect_table_eq(const std::vector<int32_t> &ids, const std::vector<float> &weights,
                     const dmref::Table &ref, const char *what);

/* Stats: `required` fields must equal `want`; the other fields may either keep
 * the poison (unwritten) or equal `want`. */
enum StatsField : unsigned {
    ST_TOKENS = 1u << 0,
    ST_ROUTED = 1u << 1,
    ST_EMPTY = 1u << 2,
    ST_ZERO = 1u << 3,
    ST_INVALID = 1u << 4,
    ST_NONFINITE = 1u << 5,
    ST_ACTIVE = 1u << 6,
    ST_MAXROWS = 1u << 7,
    ST_OVERFLOW = 1u << 8,
    ST_ROUTE = ST_TOKENS | ST_NONFINITE | ST_EMPTY | ST_ZERO,
    ST_PLAN = ST_ROUTED | ST_INVALID | ST_ACTIVE | ST_MAXROWS,
    ST_ALL = ST_ROUTE | ST_PLAN,
};
constexpr int64_t kStatsPoison = (int64_t)0xA5A5A5A5A5A5A5A5ull;
void expect_stats(const dynmoe_stats &got, const dynmoe_stats &want, unsigned required);

/* Router helpers */
dynmoe_router make_router(int32_t E, int32_t K);
std::string describe(const dynmoe_router &r);

} // namespace dmtest

#endif
