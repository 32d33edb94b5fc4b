/*
 * ptx_emu.h — the host emulation of cuda/ptx.cuh: the same functions, written from the PTX ISA
 * (sections named at each function; numbers vary between ISA versions, names do not), not
 * from the kernels. The translated kernels (cuda/emu/translate.py) include this instead of
 * ptx.cuh. Execution and traps: emu.h.
 */
#pragma once
#include <cmath>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "emu.h"

/* The emulated architecture (ptx.cuh's DM_ARCH): 800 unless the build sets DM_EMU_ARCH; the
 * experts test is built twice, at 800 (emu.experts) and 890 (emu.experts_sm89), so that both
 * arch paths of the kernels run. */
#ifndef DM_EMU_ARCH
#define DM_EMU_ARCH 800
#endif
#define DM_ARCH DM_EMU_ARCH

/* "cvta": generic -> shared window. */
static inline uint32_t dm_smem_addr(const void *p) { return emu::smem_addr_of(p); }

/* ---- "Data Movement and Conversion Instructions: cp.async", ".commit_group", ".wait_group".
 * cp.async initiates a copy; it is complete, and its data visible to the issuing thread, only at
 * the cp.async.wait_group that leaves at most N newer groups pending ("Writes performed by
 * cp.async operations are made visible to the executing thread only after ... the completion of
 * cp.async.wait_group on the cp.async-group in which the cp.async belongs to"). Reading the
 * destination before then is undefined: the emulator writes poison there at issue and the data
 * at the covering wait_group. src-size bytes are read, the rest of cp-size zero-filled. Source
 * and destination are aligned to cp-size ("Addresses as Operands"). */
static inline void dm_cp_async16_zfill(uint32_t dst, const void *src, uint32_t src_bytes) {
    if (src_bytes > 16) emu::fail("cp.async: src-size %u is larger than cp-size 16", src_bytes);
    emu::check_global_align(src, 16, "cp.async source");
    unsigned char *d = emu::smem_ptr(dst, 16, 16, "cp.async destination");
    emu::CpWrite w;
    w.dst = dst;
    memset(w.data, 0, 16);
    if (src_bytes) memcpy(w.data, src, src_bytes);
    emu::smem_note_write(dst, 16, emu::cur->tid, "cp.async (issue)");
    memset(d, 0xff, 16);
    emu::cur->open.push_back(w);
}
static inline void dm_cp_async16(uint32_t dst, const void *src) { dm_cp_async16_zfill(dst, src, 16); }
/* A new per-thread group of every uncommitted cp.async (possibly empty). */
static inline void dm_cp_async_commit(void) {
    emu::cur->groups.push_back(std::move(emu::cur->open));
    emu::cur->open.clear();
}
/* Completes all but the N most recent groups of this thread, oldest first. */
template <int N>
static inline void dm_cp_async_wait(void) {
    emu::Thread *t = emu::cur;
    while (t->groups.size() > (size_t)N) {
        for (const emu::CpWrite &w : t->groups.front()) {
            emu::smem_note_write(w.dst, 16, t->tid, "cp.async (lands at its wait_group)");
            memcpy(emu::smem_ptr(w.dst, 16, 16, "cp.async destination"), w.data, 16);
        }
        t->groups.pop_front();
    }
}

/* ---- "Data Movement and Conversion Instructions: st" / "ld", .shared.v4.u32: 16 bytes,
 * naturally aligned. */
static inline void dm_st_shared16(uint32_t dst, uint4 v) {
    unsigned char *d = emu::smem_ptr(dst, 16, 16, "st.shared.v4");
    emu::smem_note_write(dst, 16, emu::cur->tid, "st.shared.v4");
    memcpy(d, &v, 16);
}
static inline uint4 dm_ld_shared16(uint32_t src) {
    const unsigned char *s = emu::smem_ptr(src, 16, 16, "ld.shared.v4");
    emu::smem_note_read(src, 16, emu::cur->tid, "ld.shared.v4");
    uint4 v;
    memcpy(&v, s, 16);
    return v;
}

/* ---- "Warp-level matrix load instruction: ldmatrix", .m8n8 .b16. A warp collective: for matrix
 * m (register r_m), threads 8m..8m+7 give the addresses of its rows 0..7 (16 bytes each,
 * naturally aligned). "Each thread in a warp loads fragments of a row, with thread 0 receiving
 * the first fragment ... A group of four threads loads an entire row": thread l receives row
 * l/4, elements 2(l%4) and 2(l%4)+1 (low half first). With .trans the matrix is read in
 * column-major order: thread l receives elements (2(l%4), l/4) and (2(l%4)+1, l/4). */
template <int NUM, bool TRANS>
static inline void dm_emu_ldmatrix(uint32_t addr, uint32_t *r) {
    static const char *names[2][3] = {{"ldmatrix.m8n8.x1.b16", "ldmatrix.m8n8.x2.b16", "ldmatrix.m8n8.x4.b16"},
                                      {"ldmatrix.m8n8.x1.trans.b16", "ldmatrix.m8n8.x2.trans.b16",
                                       "ldmatrix.m8n8.x4.trans.b16"}};
    const char *what = names[TRANS][NUM == 1 ? 0 : NUM == 2 ? 1 : 2];
    struct IO {
        uint32_t addr;
        int tid;
        uint32_t r[4];
    } io{addr, emu::cur->tid, {0, 0, 0, 0}};
    emu::warp_collective(what, &io, [what](void **ios) {
        for (int m = 0; m < NUM; m++) {
            uint16_t row[8][8];
            for (int i = 0; i < 8; i++) {
                const IO *src = (const IO *)ios[8 * m + i];
                if (src->addr % 16 != 0)
                    emu::fail("%s: lane %d's row address 0x%x is not 16-byte aligned", what, 8 * m + i, src->addr);
                memcpy(row[i], emu::smem_ptr(src->addr, 16, 16, what), 16);
                emu::smem_note_read(src->addr, 16, src->tid, what);
            }
            for (int l = 0; l < 32; l++) {
                const int a = l / 4, b = 2 * (l % 4);
                const uint16_t lo = TRANS ? row[b][a] : row[a][b];
                const uint16_t hi = TRANS ? row[b + 1][a] : row[a][b + 1];
                ((IO *)ios[l])->r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
            }
        }
    });
    for (int m = 0; m < NUM; m++) r[m] = io.r[m];
}
static inline void dm_ldmatrix_x1(uint32_t a, uint32_t &r0) { dm_emu_ldmatrix<1, false>(a, &r0); }
static inline void dm_ldmatrix_x2(uint32_t a, uint32_t &r0, uint32_t &r1) {
    uint32_t r[2];
    dm_emu_ldmatrix<2, false>(a, r);
    r0 = r[0], r1 = r[1];
}
static inline void dm_ldmatrix_x4(uint32_t a, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3) {
    uint32_t r[4];
    dm_emu_ldmatrix<4, false>(a, r);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
static inline void dm_ldmatrix_x1_trans(uint32_t a, uint32_t &r0) { dm_emu_ldmatrix<1, true>(a, &r0); }
static inline void dm_ldmatrix_x2_trans(uint32_t a, uint32_t &r0, uint32_t &r1) {
    uint32_t r[2];
    dm_emu_ldmatrix<2, true>(a, r);
    r0 = r[0], r1 = r[1];
}
static inline void dm_ldmatrix_x4_trans(uint32_t a, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3) {
    uint32_t r[4];
    dm_emu_ldmatrix<4, true>(a, r);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

/* ---- "Matrix Fragments for mma.m16n8k16 with floating point type" (.f16/.bf16 A and B, .f32
 * C/D), "Multiply-and-Accumulate Instruction: mma". A warp collective: A (16x16), B (16x8) and
 * C (16x8) are rebuilt from the 32 lanes' registers, D = A * B + C, D handed back the same way.
 * groupID g = lane >> 2, threadID_in_group q = lane % 4; registers hold elements low half first
 * (a0 a1 | a2 a3 | a4 a5 | a6 a7, b0 b1 | b2 b3):
 *   A: a_i at row g (i in 0,1,4,5) or g + 8 (otherwise), col 2q + (i & 1) (+ 8 for i >= 4)
 *   B: b_i at row 2q + (i & 1) (+ 8 for i >= 2), col g
 *   C, D: c_i at row g (i < 2) or g + 8, col 2q + (i & 1)
 * The products of 16-bit operands are exact in fp32; they are added to C in k order with fp32
 * rounding (the ISA does not fix the order of the tensor cores' sums). */
template <bool BF16>
static inline void dm_emu_mma_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    struct IO {
        uint32_t a[4], b[2];
        float c[4];
    } io{{a[0], a[1], a[2], a[3]}, {b0, b1}, {c[0], c[1], c[2], c[3]}};
    emu::warp_collective(BF16 ? "mma.m16n8k16.f32.bf16" : "mma.m16n8k16.f32.f16", &io, [](void **ios) {
        float A[16][16], B[16][8], C[16][8];
        auto cvt = [](uint16_t e) {
            return BF16 ? __bfloat162float(__ushort_as_bfloat16(e)) : __half2float(__ushort_as_half(e));
        };
        for (int l = 0; l < 32; l++) {
            const IO *x = (const IO *)ios[l];
            const int g = l >> 2, q = l % 4;
            for (int i = 0; i < 8; i++) {
                const uint16_t e = (uint16_t)(x->a[i / 2] >> (16 * (i & 1)));
                const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
                const int col = q * 2 + (i & 1) + (i >= 4 ? 8 : 0);
                A[row][col] = cvt(e);
            }
            for (int i = 0; i < 4; i++) {
                const uint16_t e = (uint16_t)(x->b[i / 2] >> (16 * (i & 1)));
                B[q * 2 + (i & 1) + (i >= 2 ? 8 : 0)][g] = cvt(e);
                C[i < 2 ? g : g + 8][q * 2 + (i & 1)] = x->c[i];
            }
        }
        for (int l = 0; l < 32; l++) {
            IO *x = (IO *)ios[l];
            const int g = l >> 2, q = l % 4;
            for (int i = 0; i < 4; i++) {
                const int m = i < 2 ? g : g + 8, n = q * 2 + (i & 1);
                float d = C[m][n];
                for (int k = 0; k < 16; k++) d += A[m][k] * B[k][n];
                x->c[i] = d;
            }
        }
    });
    for (int i = 0; i < 4; i++) c[i] = io.c[i];
}
static inline void dm_mma_bf16_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    dm_emu_mma_16816<true>(c, a, b0, b1);
}
static inline void dm_mma_f16_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    dm_emu_mma_16816<false>(c, a, b0, b1);
}

/* ---- "Data Movement and Conversion Instructions: ld" (.global.nc.v4 and .global.v4) and "st":
 * 16 bytes, naturally aligned. */
static inline uint4 dm_ld_stream16(const void *p) {
    emu::check_global_align(p, 16, "ld.global.nc.v4");
    uint4 v;
    memcpy(&v, p, 16);
    return v;
}
static inline uint4 dm_ld_global_nc16(const void *p) {
    emu::check_global_align(p, 16, "ld.global.nc.v4");
    uint4 v;
    memcpy(&v, p, 16);
    return v;
}
static inline uint4 dm_ld_global16(const void *p) {
    emu::check_global_align(p, 16, "ld.global.v4");
    uint4 v;
    memcpy(&v, p, 16);
    return v;
}
static inline void dm_st_global16(void *p, uint4 v) {
    emu::check_global_align(p, 16, "st.global.v4");
    memcpy(p, &v, 16);
}

/* ---- "Data Movement and Conversion Instructions: cvt", .f16x2 / .bf16x2 from two .f32: "the
 * value converted from input a is stored in the upper half of d and the value converted from
 * input b is stored in the lower half of d"; .rn: round to nearest even (cuda_fp16.h /
 * cuda_bf16.h stand-ins: IEEE round to nearest even, subnormals kept, NaN stays NaN). The
 * wrappers take (lo, hi), i.e. b = lo, a = hi. */
static inline uint32_t dm_cvt_bf16x2(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}
static inline uint32_t dm_cvt_f16x2(float lo, float hi) {
    return (uint32_t)__half_as_ushort(__float2half_rn(lo)) | ((uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16);
}

/* ---- "Half Precision Floating-Point Instructions: sub", .rn.f16x2: "d = a - b" on each half of
 * the packed pair, round to nearest even, subnormals kept (no .ftz), NaN stays NaN. In fp32 the
 * difference of two fp16 values rounds at most once more, and since fp32's 24 bits are at least
 * 2 * 11 + 2, rounding that to fp16 is the correctly rounded fp16 difference (no double-rounding
 * error for +, -: Figueroa's bound). */
static inline uint32_t dm_sub_f16x2(uint32_t a, uint32_t b) {
    uint32_t d = 0;
    for (int i = 0; i < 2; i++) {
        const float x = __half2float(__ushort_as_half((unsigned short)(a >> (16 * i))));
        const float y = __half2float(__ushort_as_half((unsigned short)(b >> (16 * i))));
        d |= (uint32_t)__half_as_ushort(__float2half_rn(x - y)) << (16 * i);
    }
    return d;
}

/* ---- "Data Movement and Conversion Instructions: cvt", .rn.f16x2.e4m3x2 (sm_89+: ptx.cuh defines
 * the wrapper only for DM_ARCH >= 890 and the emulation traps below that). Implemented:
 * "When converting from .e4m3x2/.e5m2x2 to .f16x2, source operand a has .b16 type. Each 8-bit
 * input value in operand a is converted to .f16 type. The converted values are packed in the
 * destination operand d such that the value converted from the upper 8 bits of a is stored in
 * the upper 16 bits of d and the value converted from the lower 8 bits of a is stored in the
 * lower 16 bits of d." The e4m3 value (1 sign, 4 exponent bits of bias 7, 3 mantissa bits; no
 * infinities, S.1111.111 NaN; exponent 0: subnormal m 2^-9) is an fp16 value, so .rn never
 * rounds and nothing saturates (the form has no .satfinite). The ISA text does not fix the NaN
 * bits: this gives sign | 0x7e00, and tests compare NaN-ness only. */
static inline uint16_t dm_emu_e4m3_to_f16(uint32_t b) {
    const uint32_t sign = (b & 0x80u) << 8, e = (b >> 3) & 0xfu, m = b & 7u;
    if (e == 0xfu && m == 7u) return (uint16_t)(sign | 0x7e00u);
    const float v = e == 0 ? std::ldexp((float)m, -9) : std::ldexp(1.0f + (float)m / 8.0f, (int)e - 7);
    return (uint16_t)(sign | __half_as_ushort(__float2half_rn(v)));
}
static inline uint32_t dm_cvt_e4m3x2_f16x2(uint32_t x) {
    if (DM_ARCH < 890) emu::fail("cvt.rn.f16x2.e4m3x2 needs sm_89 (DM_ARCH %d)", DM_ARCH);
    return (uint32_t)dm_emu_e4m3_to_f16(x & 0xffu) | ((uint32_t)dm_emu_e4m3_to_f16((x >> 8) & 0xffu) << 16);
}
