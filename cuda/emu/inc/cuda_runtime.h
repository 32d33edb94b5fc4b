/*
 * Host stand-in of cuda_runtime.h for the emulation of dynmoe's kernels (cuda/emu/): the
 * kernel-side language (qualifiers, vector types, intrinsics, warp collectives, atomics) and
 * the few runtime calls the launchers make. Execution is cuda/emu/emu.h's: threads are fibers,
 * collectives exchange through the warp. Semantics are those of the CUDA C++ Programming Guide
 * ("Warp Shuffle Functions", "Warp Match Functions", "Warp Reduce Functions", "Synchronization
 * Functions") and the PTX ISA ("Parallel Synchronization and Communication Instructions:
 * shfl.sync"); only full-warp masks are emulated (every kernel here uses 0xffffffff).
 */
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "emu.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

/* CUDA's vector types are aligned to their size: a misaligned one is UB that UBSan reports */
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

/* ---- bit casts and math */
inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline int32_t __float_as_int(float f) { int32_t u; memcpy(&u, &f, 4); return u; }
inline float __expf(float v) { return expf(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
template <class T> inline T __ldg(const T *p) { /* ld.global.nc: naturally aligned */
    emu::check_global_align(p, alignof(T), "__ldg");
    return *p;
}
inline size_t __cvta_generic_to_shared(const void *p) { return emu::smem_addr_of(p); }

/* ---- synchronisation */
inline void __syncthreads() { emu::barrier(); }

namespace emu {
inline void full_mask(unsigned mask, const char *what) {
    if (mask != 0xffffffffu) fail("%s with mask 0x%08x: only full-warp masks are emulated", what, mask);
}
/* Lane l receives lane src(l, param_l, width)'s value, or keeps its own when src is -1. */
template <class T, class Src>
inline T shuffle(const char *what, unsigned mask, T v, int param, int width, Src src) {
    full_mask(mask, what);
    struct IO { T in, out; int param, width; } io{v, v, param, width};
    warp_collective(what, &io, [&](void **ios) {
        for (int l = 0; l < 32; l++) {
            IO *me = (IO *)ios[l];
            const int s = src(l, me->param, me->width);
            me->out = s >= 0 && s < 32 ? ((IO *)ios[s])->in : me->in;
        }
    });
    return io.out;
}
/* first lane of l's segment of w lanes */
inline int seg(int l, int w) { return l & ~(w - 1); }
} // namespace emu

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::full_mask(mask, "__syncwarp");
    emu::warp_collective("__syncwarp", nullptr, [](void **) {});
}
/* Programming Guide, Warp Shuffle Functions: idx reads lane srcLane of the caller's segment;
 * up/down read lane -/+ delta and keep their own value past the segment's edge; xor reads
 * lane ^ laneMask, which may lie in an earlier segment but not in a later one. */
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return emu::shuffle("shfl.sync.idx", mask, v, src, width,
                        [](int l, int p, int w) { return emu::seg(l, w) + (p & (w - 1)); });
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu::shuffle("shfl.sync.bfly", mask, v, lane_mask, width, [](int l, int p, int w) {
        const int s = l ^ p;
        return s >= emu::seg(l, w) + w ? -1 : s;
    });
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu::shuffle("shfl.sync.up", mask, v, (int)delta, width,
                        [](int l, int p, int w) { return l - p < emu::seg(l, w) ? -1 : l - p; });
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu::shuffle("shfl.sync.down", mask, v, (int)delta, width,
                        [](int l, int p, int w) { return l + p >= emu::seg(l, w) + w ? -1 : l + p; });
}
/* Lanes whose value equals the caller's (Warp Match Functions). */
template <class T> inline unsigned __match_any_sync(unsigned mask, T v) {
    emu::full_mask(mask, "__match_any_sync");
    struct IO { T v; unsigned out; } io{v, 0};
    emu::warp_collective("match.any.sync", &io, [](void **ios) {
        for (int l = 0; l < 32; l++) {
            unsigned m = 0;
            for (int j = 0; j < 32; j++)
                if (((IO *)ios[j])->v == ((IO *)ios[l])->v) m |= 1u << j;
            ((IO *)ios[l])->out = m;
        }
    });
    return io.out;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu::full_mask(mask, "__ballot_sync");
    struct IO { int p; unsigned out; } io{pred, 0};
    emu::warp_collective("vote.sync.ballot", &io, [](void **ios) {
        unsigned m = 0;
        for (int j = 0; j < 32; j++) m |= (((IO *)ios[j])->p != 0 ? 1u : 0u) << j;
        for (int j = 0; j < 32; j++) ((IO *)ios[j])->out = m;
    });
    return io.out;
}
/* Sum over the warp (Warp Reduce Functions), wrapping like the unsigned hardware add. */
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
    emu::full_mask(mask, "__reduce_add_sync");
    struct IO { unsigned v, out; } io{v, 0};
    emu::warp_collective("redux.sync.add", &io, [](void **ios) {
        unsigned s = 0;
        for (int j = 0; j < 32; j++) s += ((IO *)ios[j])->v;
        for (int j = 0; j < 32; j++) ((IO *)ios[j])->out = s;
    });
    return io.out;
}

/* ---- atomics: fibers switch only at synchronisation points, so a read-modify-write here is
 * atomic with respect to every other emulated thread. */
inline int atomicAdd(int *p, int v) { int o = *p; *p = o + v; return o; }
inline unsigned atomicAdd(unsigned *p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) { unsigned long long o = *p; *p = o + v; return o; }
inline float atomicAdd(float *p, float v) { float o = *p; *p = o + v; return o; }
inline int atomicMax(int *p, int v) { int o = *p; if (v > o) *p = v; return o; }
inline int atomicMin(int *p, int v) { int o = *p; if (v < o) *p = v; return o; }

/* ---- runtime API: what the launchers call */
typedef int cudaError_t;
typedef void *cudaStream_t;
#define cudaSuccess 0
#define cudaErrorInvalidConfiguration 9
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes { int maxThreadsPerBlock, numRegs; size_t sharedSizeBytes; };
inline cudaError_t cudaGetLastError() { int e = emu::last_error; emu::last_error = 0; return e; }
inline cudaError_t cudaPeekAtLastError() { return emu::last_error; }
inline const char *cudaGetErrorName(cudaError_t e) { return e == 0 ? "cudaSuccess" : e == 9 ? "cudaErrorInvalidConfiguration" : "cudaError"; }
inline const char *cudaGetErrorString(cudaError_t e) { return e == 0 ? "no error" : e == 9 ? "invalid configuration argument" : "error"; }
inline cudaError_t cudaGetDevice(int *d) { *d = 0; return 0; }
template <class F> inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F *) { *a = {1024, 0, 0}; return 0; }
template <class F> inline cudaError_t cudaFuncSetAttribute(F *f, cudaFuncAttribute attr, int v) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) emu::set_max_dyn_smem(reinterpret_cast<const void *>(f), v);
    return 0;
}
inline cudaError_t cudaMalloc(void **p, size_t n) { *p = emu::dalloc(n); return 0; }
inline cudaError_t cudaFree(void *p) { if (p) emu::dfree(p); return 0; }
#define cudaStreamNonBlocking 1
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, int) { *s = nullptr; return 0; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return 0; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return 0; }
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t = nullptr) { memset(p, v, n); return 0; }
