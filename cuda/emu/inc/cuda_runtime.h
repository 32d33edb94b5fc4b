/* Host emulation of the CUDA features the dynmoe kernels use: one std::thread
 * per CUDA thread, barriers for __syncwarp/__syncthreads and the warp
 * collectives. Lanes must call collectives warp-uniformly (our kernels do). */
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <vector>
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
typedef int cudaError_t;
typedef void *cudaStream_t;
#define cudaSuccess 0
inline cudaError_t cudaGetLastError() { return 0; }
inline const char *cudaGetErrorName(cudaError_t) { return "x"; }
inline const char *cudaGetErrorString(cudaError_t) { return "x"; }
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __align__(n)
struct float4 { float x, y, z, w; };
struct uint2 { unsigned x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline std::barrier<> *g_block_bar;
inline std::barrier<> *g_warp_bar[64];
inline uint64_t g_xch[64][32];
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_warp_bar[threadIdx.x >> 5]->arrive_and_wait(); }
template <class T> T __shfl_xor_sync(unsigned, T v, int o) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    uint64_t u = 0; memcpy(&u, &v, sizeof v); g_xch[w][l] = u;
    __syncwarp();
    T r; memcpy(&r, &g_xch[w][l ^ o], sizeof r);
    __syncwarp();
    return r;
}
inline unsigned __match_any_sync(unsigned, int v) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    g_xch[w][l] = (uint64_t)(uint32_t)v;
    __syncwarp();
    unsigned m = 0;
    for (int j = 0; j < 32; j++) if (g_xch[w][j] == (uint64_t)(uint32_t)v) m |= 1u << j;
    __syncwarp();
    return m;
}
inline unsigned __reduce_add_sync(unsigned, unsigned v) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    g_xch[w][l] = v; __syncwarp();
    unsigned s = 0; for (int j = 0; j < 32; j++) s += (unsigned)g_xch[w][j];
    __syncwarp(); return s;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int atomicAdd(int *p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) { return std::atomic_ref<unsigned long long>(*p).fetch_add(v); }
inline int atomicMax(int *p, int v) { std::atomic_ref<int> a(*p); int o = a.load(); while (o < v && !a.compare_exchange_weak(o, v)) {} return o; }
inline float __expf(float v) { return expf(v); }
/* Runs grid x block threads, one block at a time (blocks are independent in
 * every kernel emulated here). */
inline int g_emu_launch_errors;
template <class F> void emu_launch(dim3 grid3, unsigned block, size_t dyn_smem, F f) {
    const unsigned grid = grid3.x;
    /* what a launch without cudaFuncSetAttribute may use: 48 KiB of dynamic shared memory */
    if (dyn_smem > 48 * 1024 || block > 1024 || block % 32 != 0) {
        fprintf(stderr, "emu_launch: bad configuration: block %u, %zu bytes of dynamic shared memory\n", block, dyn_smem);
        g_emu_launch_errors++;
        return;
    }
    gridDim = dim3(grid); blockDim = dim3(block);
    for (unsigned b = 0; b < grid; b++) {
        std::barrier<> bb((std::ptrdiff_t)block);
        g_block_bar = &bb;
        std::vector<std::barrier<> *> wb;
        for (unsigned w = 0; w < (block + 31) / 32; w++) { wb.push_back(new std::barrier<>(32)); g_warp_bar[w] = wb.back(); }
        std::vector<std::thread> th;
        for (unsigned t = 0; t < block; t++) th.emplace_back([=] { threadIdx = dim3(t); blockIdx = dim3(b); f(); });
        for (auto &x : th) x.join();
        for (auto *p : wb) delete p;
    }
}
struct cudaFuncAttributes { int x; };
template <class F> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *, F) { return 0; }
inline cudaError_t cudaMalloc(void **p, size_t n) { *p = malloc(n); return 0; }
inline cudaError_t cudaFree(void *p) { free(p); return 0; }
#define cudaStreamNonBlocking 1
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, int) { *s = nullptr; return 0; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return 0; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return 0; }
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { memset(p, v, n); return 0; }
