/*
 * ptx.cuh — every inline-PTX instruction the expert kernels (cuda/experts.cu) and the
 * expert-parallel kernels (csrc/ep/ep_kernels.cu) use, one wrapper each, nowhere else.
 *
 * This header is the seam of the host emulation: cuda/emu/ptx_emu.h implements exactly these
 * functions (same names, same arguments) from the PTX ISA, so that the kernels' own sources run
 * in CI without a GPU. A new instruction goes here and into ptx_emu.h, never inline in a kernel.
 *
 * Shared-memory operands are 32-bit shared-window addresses (dm_smem_addr), as PTX takes them.
 * Warp shuffles are the CUDA intrinsics (__shfl_*_sync), emulated in cuda/emu/inc/cuda_runtime.h.
 */
#ifndef DYNMOE_CUDA_PTX_CUH
#define DYNMOE_CUDA_PTX_CUH

#include <cuda_runtime.h>
#include <stdint.h>

/* The architecture this device pass compiles for (0 on nvcc's host pass, where no kernel body
 * is kept). Kernels pick arch-specific paths on DM_ARCH, not __CUDA_ARCH__, so that the
 * emulation (ptx_emu.h, which sets DM_ARCH from DM_EMU_ARCH) can build and test each path. */
#ifdef __CUDA_ARCH__
#define DM_ARCH __CUDA_ARCH__
#else
#define DM_ARCH 0
#endif

/* Generic -> shared-window address (cvta.to.shared). */
static __device__ __forceinline__ uint32_t dm_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* ---- cp.async: 16 bytes global -> shared, L2 only (.cg): weights and gathered rows are
 * streamed. The copy lands at the cp.async.wait_group that covers its commit group. */
static __device__ __forceinline__ void dm_cp_async16(uint32_t dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
/* The same with src-size: copies src_bytes (0 or 16) and zero-fills the rest, so a masked
 * chunk is the same instruction as a loaded one (src must still be a valid, aligned address). */
static __device__ __forceinline__ void dm_cp_async16_zfill(uint32_t dst, const void *src, uint32_t src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}
static __device__ __forceinline__ void dm_cp_async_commit(void) {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
static __device__ __forceinline__ void dm_cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* ---- shared memory, 16 bytes */
static __device__ __forceinline__ void dm_st_shared16(uint32_t dst, uint4 v) {
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}
static __device__ __forceinline__ uint4 dm_ld_shared16(uint32_t src) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(src)
                 : "memory");
    return v;
}

/* ---- ldmatrix: 8x8 b16 matrices, row addresses from lanes 0-7 (.x1), 0-15 (.x2), 0-31 (.x4) */
static __device__ __forceinline__ void dm_ldmatrix_x1(uint32_t addr, uint32_t &r0) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r0) : "r"(addr) : "memory");
}
static __device__ __forceinline__ void dm_ldmatrix_x2(uint32_t addr, uint32_t &r0, uint32_t &r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r0), "=r"(r1)
                 : "r"(addr)
                 : "memory");
}
static __device__ __forceinline__ void dm_ldmatrix_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2,
                                                      uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}
static __device__ __forceinline__ void dm_ldmatrix_x1_trans(uint32_t addr, uint32_t &r0) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r0) : "r"(addr) : "memory");
}
static __device__ __forceinline__ void dm_ldmatrix_x2_trans(uint32_t addr, uint32_t &r0, uint32_t &r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r0), "=r"(r1)
                 : "r"(addr)
                 : "memory");
}
static __device__ __forceinline__ void dm_ldmatrix_x4_trans(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2,
                                                            uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

/* ---- mma.sync m16n8k16, row.col, fp32 accumulate in place: c = A(16x16) * B(16x8) + c.
 * a[4], b0/b1 and c[4] are the per-lane fragments of the PTX ISA's tables for m16n8k16. */
static __device__ __forceinline__ void dm_mma_bf16_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ void dm_mma_f16_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ---- cvt.rn.{bf16x2,f16x2}.f32: two fp32 values to one packed pair, each rounded to nearest even
 * (lo in bits 0-15): one instruction for what two scalar conversions and a prmt cost. PTX puts
 * its first source (a) in the upper half. Not volatile: pure, the compiler may schedule it. */
static __device__ __forceinline__ uint32_t dm_cvt_bf16x2(float lo, float hi) {
    uint32_t d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
static __device__ __forceinline__ uint32_t dm_cvt_f16x2(float lo, float hi) {
    uint32_t d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

/* ---- cvt.rn.f16x2.e4m3x2 (sm_89+; ptxas 13.0 wants PTX ISA 7.8 on sm_90, 8.1 on sm_89 and
 * refuses it below sm_89, hence only defined there): the two e4m3 bytes of bits 0-15 of x to an
 * fp16 pair, the low byte's value in bits 0-15. Exact: every e4m3 value is an fp16 value. */
#if DM_ARCH >= 890
static __device__ __forceinline__ uint32_t dm_cvt_e4m3x2_f16x2(uint32_t x) {
    uint32_t d;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(d) : "h"((unsigned short)x));
    return d;
}
#endif

/* ---- sub.rn.f16x2: a - b per 16-bit half (lo with lo, hi with hi), each rounded to nearest even;
 * one HADD2 for two values (the INT4 decode's (1024 + q) - (1024 + z), exact there). */
static __device__ __forceinline__ uint32_t dm_sub_f16x2(uint32_t a, uint32_t b) {
    uint32_t d;
    asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

/* ---- global memory, 16 bytes (p 16-byte aligned) */
/* Streaming load of data read once (weights): read-only path, not kept in L1. */
static __device__ __forceinline__ uint4 dm_ld_stream16(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
/* Read-only load kept in L1 (x rows, which every weight row of an expert meets again). */
static __device__ __forceinline__ uint4 dm_ld_global_nc16(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
/* Plain vector load / store (the emulator checks their alignment). */
static __device__ __forceinline__ uint4 dm_ld_global16(const void *p) { return *(const uint4 *)p; }
static __device__ __forceinline__ void dm_st_global16(void *p, uint4 v) { *(uint4 *)p = v; }

#endif /* DYNMOE_CUDA_PTX_CUH */
