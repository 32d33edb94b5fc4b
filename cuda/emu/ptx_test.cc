/*
 * ptx_test.cc — the emulated instructions (ptx_emu.h, cuda_runtime.h) on small known inputs:
 *  - ldmatrix (.x1/.x2/.x4, .trans) feeding mma.sync m16n8k16 (bf16, f16) equals a plain
 *    matrix product for the two standard B layouts (n-major read plainly, k-major read .trans):
 *    the ldmatrix and mma fragment tables agree with each other as the ISA intends;
 *  - shuffles (idx, xor, up, down) and the warp votes lane by lane;
 *  - cp.async: data lands only at the covering wait_group, zero-fill, poison before;
 *  - cvt.rn.{bf16x2,f16x2}.f32: lo in bits 0-15, hi in 16-31, each rounded to nearest even;
 *  - cvt.rn.f16x2.e4m3x2 on all 65536 byte pairs against quant_rules.h's e4m3 rule;
 *  - each trap fails (a child process must exit with emu::fail's status 3): misaligned
 *    ldmatrix and cp.async, races without __syncthreads, a barrier some threads never reach
 *    (deadlock),
 *    lanes of one warp at different collectives.
 */
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

/* the sm_89 instructions (cvt.rn.f16x2.e4m3x2) are emulated only for DM_ARCH >= 890 */
#define DM_EMU_ARCH 890
#include "ptx_emu.h"
#include "quant_rules.h"

static int failures;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

static std::mt19937 rng(11);
static uint16_t to16(float v, bool bf16) {
    return bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v)) : __half_as_ushort(__float2half_rn(v));
}
static float from16(uint16_t v, bool bf16) {
    return bf16 ? __bfloat162float(__ushort_as_bfloat16(v)) : __half2float(__ushort_as_half(v));
}

/* One warp: A [16][16] row-major and B in smem, D = A B + C through ldmatrix + mma.
 * b_kmajor: B stored [16 k][8 n] (read with .trans), else [8 n][16 k]. x1: load with .x1/.x2
 * instead of .x4. */
static void mma_kernel(const uint16_t *a, const uint16_t *b, const float *c, float *d, bool bf16, bool b_kmajor,
                       bool x1) {
    uint16_t *sa = (uint16_t *)emu::dyn_smem(), *sb = sa + 256;
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) sa[i] = a[i];
    for (int i = lane; i < 128; i += 32) sb[i] = b[i];
    __syncthreads();
    uint32_t af[4], bf[2];
    /* A matrices: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) */
    const int r = lane & 15, kc = (lane >> 4) * 8;
    if (x1) {
        for (int m = 0; m < 4; m++) {
            const int row = (m & 1) * 8 + (lane & 7), col = (m >> 1) * 8;
            dm_ldmatrix_x1(dm_smem_addr(sa + row * 16 + col), af[m]);
        }
    } else {
        dm_ldmatrix_x4(dm_smem_addr(sa + r * 16 + kc), af[0], af[1], af[2], af[3]);
    }
    if (b_kmajor) { /* rows are k: matrix 0 = k 0-7, matrix 1 = k 8-15 */
        const int k = lane & 15;
        dm_ldmatrix_x2_trans(dm_smem_addr(sb + k * 8), bf[0], bf[1]);
    } else { /* rows are n: matrix 0 = (n, k 0-7), matrix 1 = (n, k 8-15) */
        const int n = lane & 7, k0 = ((lane >> 3) & 1) * 8;
        dm_ldmatrix_x2(dm_smem_addr(sb + n * 16 + k0), bf[0], bf[1]);
    }
    const int g = lane >> 2, q = lane & 3;
    float acc[4] = {c[g * 8 + 2 * q], c[g * 8 + 2 * q + 1], c[(g + 8) * 8 + 2 * q], c[(g + 8) * 8 + 2 * q + 1]};
    if (bf16) dm_mma_bf16_16816(acc, af, bf[0], bf[1]);
    else dm_mma_f16_16816(acc, af, bf[0], bf[1]);
    d[g * 8 + 2 * q] = acc[0];
    d[g * 8 + 2 * q + 1] = acc[1];
    d[(g + 8) * 8 + 2 * q] = acc[2];
    d[(g + 8) * 8 + 2 * q + 1] = acc[3];
}

static void test_mma() {
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (int kmajor = 0; kmajor < 2; kmajor++)
            for (int x1 = 0; x1 < 2; x1++) {
                std::uniform_real_distribution<float> u(-2, 2);
                std::vector<uint16_t> a(256), b(128);
                std::vector<float> c(128), d(128, NAN), want(128);
                for (auto &v : a) v = to16(u(rng), bf16);
                for (auto &v : b) v = to16(u(rng), bf16);
                for (auto &v : c) v = u(rng);
                for (int m = 0; m < 16; m++)
                    for (int n = 0; n < 8; n++) {
                        double s = c[m * 8 + n];
                        for (int k = 0; k < 16; k++)
                            s += (double)from16(a[m * 16 + k], bf16) *
                                 from16(kmajor ? b[k * 8 + n] : b[n * 16 + k], bf16);
                        want[m * 8 + n] = (float)s;
                    }
                emu_launch(&mma_kernel, "mma_kernel", 1, 32, 1024, nullptr,
                           [&] { mma_kernel(a.data(), b.data(), c.data(), d.data(), bf16, kmajor, x1); });
                double err = 0;
                for (int i = 0; i < 128; i++) err = std::max(err, (double)fabsf(d[i] - want[i]));
                CHECK(err < 1e-4, "mma %s, B %s, %s: max error %g", bf16 ? "bf16" : "f16",
                      kmajor ? "k-major (.trans)" : "n-major", x1 ? ".x1" : ".x4", err);
            }
}

static void shfl_kernel(int *out) {
    const int l = threadIdx.x & 31, w = threadIdx.x >> 5;
    int *o = out + w * 32 * 6 + l * 6;
    o[0] = __shfl_sync(0xffffffffu, 100 + l, 5);
    o[1] = __shfl_xor_sync(0xffffffffu, 100 + l, 3);
    o[2] = __shfl_up_sync(0xffffffffu, 100 + l, 2);
    o[3] = __shfl_down_sync(0xffffffffu, 100 + l, 4, 8);
    o[4] = (int)__ballot_sync(0xffffffffu, l & 1);
    o[5] = (int)__match_any_sync(0xffffffffu, l / 8);
}

static void test_shuffles() {
    std::vector<int> out(64 * 6, -1);
    emu_launch(&shfl_kernel, "shfl_kernel", 1, 64, 0, nullptr, [&] { shfl_kernel(out.data()); });
    for (int w = 0; w < 2; w++)
        for (int l = 0; l < 32; l++) {
            const int *o = out.data() + w * 192 + l * 6;
            CHECK(o[0] == 105, "shfl idx lane %d: %d", l, o[0]);
            CHECK(o[1] == 100 + (l ^ 3), "shfl xor lane %d: %d", l, o[1]);
            CHECK(o[2] == 100 + (l >= 2 ? l - 2 : l), "shfl up lane %d: %d", l, o[2]);
            CHECK(o[3] == 100 + ((l % 8) + 4 < 8 ? l + 4 : l), "shfl down width 8 lane %d: %d", l, o[3]);
            CHECK((unsigned)o[4] == 0xaaaaaaaau, "ballot lane %d: %x", l, o[4]);
            CHECK((unsigned)o[5] == 0xffu << (8 * (l / 8)), "match_any lane %d: %x", l, o[5]);
        }
}

/* cp.async: thread 0 copies two 16-byte chunks in two groups, the second zero-filled. */
static void cp_kernel(const uint8_t *src, uint8_t *seen) {
    unsigned char *s = (unsigned char *)emu::dyn_smem();
    if (threadIdx.x == 0) {
        dm_cp_async16(dm_smem_addr(s), src);
        dm_cp_async_commit();
        dm_cp_async16_zfill(dm_smem_addr(s + 16), src + 16, 4);
        dm_cp_async_commit();
        uint4 v = dm_ld_shared16(dm_smem_addr(s));
        memcpy(seen, &v, 16); /* before any wait: poison */
        dm_cp_async_wait<1>();
        v = dm_ld_shared16(dm_smem_addr(s));
        memcpy(seen + 16, &v, 16); /* group 1 landed */
        v = dm_ld_shared16(dm_smem_addr(s + 16));
        memcpy(seen + 32, &v, 16); /* group 2 not yet */
        dm_cp_async_wait<0>();
        v = dm_ld_shared16(dm_smem_addr(s + 16));
        memcpy(seen + 48, &v, 16);
    }
    __syncthreads();
}

static void test_cp_async() {
    alignas(16) uint8_t src[32];
    for (int i = 0; i < 32; i++) src[i] = (uint8_t)(i + 1);
    uint8_t seen[64];
    emu_launch(&cp_kernel, "cp_kernel", 1, 32, 64, nullptr, [&] { cp_kernel(src, seen); });
    bool poison = true, landed = true, pending = true, zfill = true;
    for (int i = 0; i < 16; i++) {
        poison &= seen[i] == 0xff;
        landed &= seen[16 + i] == src[i];
        pending &= seen[32 + i] == 0xff;
        zfill &= seen[48 + i] == (i < 4 ? src[16 + i] : 0);
    }
    CHECK(poison, "cp.async destination read before its wait_group is not poison");
    CHECK(landed, "cp.async group 1 did not land at wait_group 1");
    CHECK(pending, "cp.async group 2 landed before its wait_group");
    CHECK(zfill, "cp.async src-size 4: wrong zero fill");
}

/* ---- traps: each must end the process with emu::fail's status 3 */
static void misaligned_ldmatrix() {
    unsigned char *s = (unsigned char *)emu::dyn_smem();
    uint32_t r;
    dm_ldmatrix_x1(dm_smem_addr(s + 8 + 16 * (threadIdx.x & 7)), r);
}
static void misaligned_cp_async(const uint8_t *src) {
    dm_cp_async16(dm_smem_addr(emu::dyn_smem()), src + 8);
}
static void race_no_barrier() { /* thread 32 reads what thread 0 wrote: no __syncthreads */
    unsigned char *s = (unsigned char *)emu::dyn_smem();
    if (threadIdx.x == 0) dm_st_shared16(dm_smem_addr(s), make_uint4(1, 2, 3, 4));
    __syncwarp();
    if (threadIdx.x == 32) (void)dm_ld_shared16(dm_smem_addr(s));
}
static void war_no_barrier() { /* warp 1 overwrites what warp 0 read */
    unsigned char *s = (unsigned char *)emu::dyn_smem();
    if (threadIdx.x < 32) (void)dm_ld_shared16(dm_smem_addr(s));
    __syncwarp();
    if (threadIdx.x == 32) dm_st_shared16(dm_smem_addr(s), make_uint4(1, 2, 3, 4));
}
static void divergent_barrier() { /* half of warp 1 waits at __syncwarp, the rest at __syncthreads */
    if (threadIdx.x >= 32 && threadIdx.x < 48) __syncwarp();
    else __syncthreads();
}
static void mixed_collectives() {
    if (threadIdx.x & 1) (void)__shfl_xor_sync(0xffffffffu, 1, 1);
    else __syncwarp();
}

/* The pair conversions: halves in place (lo low), ties to even, NaN kept, subnormal f16. */
static void test_cvt_pairs() {
    const float tie_bf = 1.0f + 0x1p-8f, tie_bf_up = 1.0f + 3 * 0x1p-8f; /* halfway: to 1, to 1+2^-6 */
    CHECK(dm_cvt_bf16x2(tie_bf, -2.0f) == (0x3f80u | (0xc000u << 16)), "bf16x2 %08x", dm_cvt_bf16x2(tie_bf, -2.0f));
    CHECK(dm_cvt_bf16x2(1.0f, tie_bf_up) == (0x3f80u | (0x3f82u << 16)), "bf16x2 %08x",
          dm_cvt_bf16x2(1.0f, tie_bf_up));
    const float tie_h = 1.0f + 0x1p-11f, sub_h = 0x1p-24f; /* halfway: to 1; the least f16 subnormal */
    CHECK(dm_cvt_f16x2(tie_h, sub_h) == (0x3c00u | (0x0001u << 16)), "f16x2 %08x", dm_cvt_f16x2(tie_h, sub_h));
    const uint32_t n = dm_cvt_f16x2(NAN, 65520.0f), nb = dm_cvt_bf16x2(0.5f, NAN);
    CHECK((n & 0x7c00u) == 0x7c00u && (n & 0x3ffu) && (n >> 16) == 0x7c00u, "f16x2 NaN/inf %08x", n);
    CHECK((nb & 0xffffu) == 0x3f00u && ((nb >> 16) & 0x7f80u) == 0x7f80u && ((nb >> 16) & 0x7fu), "bf16x2 NaN %08x", nb);
    for (int i = 0; i < 1000; i++) { /* each half is the scalar conversion */
        const float a = std::ldexp((float)rng() / 4294967296.0f - 0.5f, (int)(rng() % 40) - 20);
        const float b = std::ldexp((float)rng() / 4294967296.0f - 0.5f, (int)(rng() % 40) - 20);
        CHECK(dm_cvt_bf16x2(a, b) == ((uint32_t)to16(a, true) | ((uint32_t)to16(b, true) << 16)), "bf16x2 %g %g", a, b);
        CHECK(dm_cvt_f16x2(a, b) == ((uint32_t)to16(a, false) | ((uint32_t)to16(b, false) << 16)), "f16x2 %g %g", a, b);
    }
}

/* cvt.rn.f16x2.e4m3x2 on every byte pair (bits 16-31 of the word set: .b16 ignores them), each
 * half against quant_rules.h's dm_fp8e4m3_to_f32: the same fp32 bits, or both NaN (the ISA does
 * not fix the NaN bits); the low byte lands in bits 0-15. */
static void test_cvt_e4m3x2() {
    int bad = 0, nans = 0;
    for (uint32_t x = 0; x < 65536; x++) {
        const uint32_t d = dm_cvt_e4m3x2_f16x2(x | 0x5a5a0000u);
        for (int i = 0; i < 2; i++) {
            const float got = from16((uint16_t)(d >> (16 * i)), false);
            const float want = dm_fp8e4m3_to_f32((uint8_t)(x >> (8 * i)));
            const bool ok = std::isnan(want) ? std::isnan(got) : !std::isnan(got) && memcmp(&got, &want, 4) == 0;
            nans += std::isnan(got) && std::isnan(want);
            if (!ok && bad++ < 5) CHECK(false, "cvt.f16x2.e4m3x2 %04x lane %d: %g, rule %g", x, i, got, want);
        }
    }
    CHECK(bad == 0, "cvt.f16x2.e4m3x2: %d mismatches of 131072 halves", bad);
    CHECK(nans == 2 * 2 * 256, "cvt.f16x2.e4m3x2: %d NaN halves, not 1024", nans); /* 0x7f, 0xff in each lane */
}

/* sub.rn.f16x2: halves in place, against the exact difference (double) rounded once to fp16
 * (every fp16 difference is exact in double): ties to even, subnormals, overflow to inf, NaN. */
static void test_sub_f16x2() {
    auto h = [](float v) { return (uint32_t)to16(v, false); };
    auto ref = [](uint16_t x, uint16_t y) -> uint16_t {
        const double d = (double)from16(x, false) - (double)from16(y, false); /* exact */
        if (std::isnan(d)) return 0x7e00u;
        const double m = std::fabs(d);
        if (m >= 65520.0) return d < 0 ? 0xfc00u : 0x7c00u;
        const int e = m < 0x1p-14 ? -14 : std::ilogb(m);
        const double q = std::nearbyint(std::ldexp(m, 10 - e)); /* to nearest even at fp16's ulp */
        return (uint16_t)((d < 0 || (d == 0 && std::signbit(d)) ? 0x8000u : 0u) | to16((float)std::ldexp(q, e - 10), false));
    };
    CHECK(dm_sub_f16x2(h(1027.0f) | (h(1031.0f) << 16), h(1032.0f) * 0x10001u) == (h(-5.0f) | (h(-1.0f) << 16)),
          "sub.f16x2 lanes %08x", dm_sub_f16x2(h(1027.0f) | (h(1031.0f) << 16), h(1032.0f) * 0x10001u));
    CHECK(dm_sub_f16x2(h(1.0f), h(-0x1p-11f)) == h(1.0f), "sub.f16x2 tie to even"); /* 1 + 2^-11: tie, to 1 */
    CHECK(dm_sub_f16x2(h(65504.0f), h(-65504.0f)) == 0x7c00u, "sub.f16x2 overflow");
    CHECK((dm_sub_f16x2(0x7e00u, h(1.0f)) & 0x7fffu) > 0x7c00u, "sub.f16x2 NaN");
    for (int i = 0; i < 200000; i++) {
        const uint16_t x = (uint16_t)rng(), y = (uint16_t)rng(), u = (uint16_t)rng(), v = (uint16_t)rng();
        const uint32_t d = dm_sub_f16x2(x | ((uint32_t)u << 16), y | ((uint32_t)v << 16));
        for (int l = 0; l < 2; l++) {
            const uint16_t a = l ? u : x, b = l ? v : y, got = (uint16_t)(d >> (16 * l)), want = ref(a, b);
            const bool nan = (want & 0x7fffu) > 0x7c00u; /* ref returns 0x7e00 for NaN */
            CHECK(nan ? std::isnan(from16(got, false)) : got == want, "sub.f16x2 %04x - %04x: %04x, want %04x", a, b, got, want);
        }
    }
}

template <class F>
static void expect_trap(const char *what, F f) {
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        f();
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    const bool trapped = WIFEXITED(st) && WEXITSTATUS(st) == 3;
    CHECK(trapped, "%s was not trapped (status %d)", what, st);
    if (trapped) printf("  trapped: %s\n", what);
}

int main() {
    test_mma();
    test_shuffles();
    test_cp_async();
    test_cvt_pairs();
    test_cvt_e4m3x2();
    test_sub_f16x2();
    alignas(16) static uint8_t buf[64];
    expect_trap("misaligned ldmatrix row address",
                [] { emu_launch(&misaligned_ldmatrix, "t", 1, 32, 256, nullptr, [] { misaligned_ldmatrix(); }); });
    expect_trap("misaligned cp.async source",
                [] { emu_launch(&misaligned_cp_async, "t", 1, 32, 256, nullptr, [] { misaligned_cp_async(buf); }); });
    expect_trap("read-after-write race without __syncthreads",
                [] { emu_launch(&race_no_barrier, "t", 1, 64, 256, nullptr, [] { race_no_barrier(); }); });
    expect_trap("write-after-read race without __syncthreads",
                [] { emu_launch(&war_no_barrier, "t", 1, 64, 256, nullptr, [] { war_no_barrier(); }); });
    expect_trap("half a warp at __syncwarp, the rest at __syncthreads (deadlock)",
                [] { emu_launch(&divergent_barrier, "t", 1, 64, 0, nullptr, [] { divergent_barrier(); }); });
    expect_trap("lanes at different collectives",
                [] { emu_launch(&mixed_collectives, "t", 1, 32, 0, nullptr, [] { mixed_collectives(); }); });
    printf("ptx emulation self-test: %d failures\n", failures);
    return failures != 0 || emu::launch_errors != 0;
}
