/* bench_dev.c — memory, timers and ceilings of dynmoe-bench, for the host and
 * (under DYNMOE_HAVE_CUDA) one CUDA device. Plain C: the CUDA runtime API,
 * cuBLAS and NVTX are called from C. */
#define _GNU_SOURCE 1 /* cblas.h (cpu_set_t), clock_gettime, sysconf */

#include "bench_dev.h"

#ifdef DYNMOE_HAVE_BLAS
#include <cblas.h> /* includes <complex.h>: `I` is a macro here */
#endif
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef DYNMOE_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#include <nvtx3/nvToolsExt.h>
#endif

static char g_err[512];
const char *bdev_last_error(void) { return g_err; }
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return -1;
}

#ifdef DYNMOE_HAVE_CUDA
#define CUDA_TRY(call)                                                                    \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) return fail("%s: %s", #call, cudaGetErrorString(e_));      \
    } while (0)
#define CUBLAS_TRY(call)                                                                  \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) return fail("%s: cuBLAS status %d", #call, (int)s_); \
    } while (0)
#endif

/* ------------------------------------------------------------------------ */
/* data                                                                     */
/* ------------------------------------------------------------------------ */

size_t dtype_size(dynmoe_dtype t) { return t == DYNMOE_F32 ? 4 : 2; }

const char *dtype_name(dynmoe_dtype t) {
    switch (t) {
    case DYNMOE_F32: return "f32";
    case DYNMOE_BF16: return "bf16";
    case DYNMOE_F16: return "f16";
    default: return "?";
    }
}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504: inf */
    if (a < 0x38800000u) {                                   /* subnormal f16 */
        if (a < 0x33000000u) return (uint16_t)sign;
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 + (112 - e) ... m >> (shift) lands in 10 bits */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((a >> 13) - (112u << 10));
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}

void convert_from_f32(const float *src, void *dst, size_t n, dynmoe_dtype t) {
    if (t == DYNMOE_F32) {
        memcpy(dst, src, n * 4);
        return;
    }
    uint16_t *o = dst;
    if (t == DYNMOE_BF16) {
        for (size_t i = 0; i < n; i++) o[i] = f32_to_bf16(src[i]);
    } else {
        for (size_t i = 0; i < n; i++) o[i] = f32_to_f16(src[i]);
    }
}

void random_floats(float *dst, size_t n, float a, uint64_t seed) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17; /* xorshift64 */
        float u = (float)((s >> 40) & 0xffffffu) * (1.0f / 16777216.0f); /* [0,1) */
        float v = a * (1.0f / 64.0f + (63.0f / 64.0f) * u);             /* never 0 */
        dst[i] = (s & 1u) ? v : -v;
    }
}

/* ------------------------------------------------------------------------ */
/* machine                                                                  */
/* ------------------------------------------------------------------------ */

static void cpu_model(char *out, size_t len) {
    snprintf(out, len, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) {
                c++;
                while (*c == ' ' || *c == '\t') c++;
                c[strcspn(c, "\n")] = 0;
                snprintf(out, len, "%s", c);
            }
            break;
        }
    }
    fclose(f);
}

int bdev_init(bdev *d, int cuda, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    d->cuda = cuda;
    cpu_model(d->host_cpu, sizeof d->host_cpu);
    if (!cuda) {
        cpu_model(d->name, sizeof d->name);
#ifdef DYNMOE_HAVE_BLAS
        const char *cfg = openblas_get_config();
        d->has_dense = 1;
#else
        const char *cfg = "no BLAS: no dense baseline";
#endif
        snprintf(d->detail, sizeof d->detail, "%d OpenMP threads, %d cores, %s", omp_get_max_threads(),
                 (int)sysconf(_SC_NPROCESSORS_ONLN), cfg ? cfg : "OpenBLAS");
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
        d->mem_total = (pages > 0 && page > 0) ? (size_t)pages * (size_t)page : (size_t)8 << 30;
        /* 80% of physical memory: leave room for the OS and other processes
         * rather than swapping or being killed mid-run. */
        d->mem_limit = d->mem_total / 10 * 8;
        return 0;
    }
#ifdef DYNMOE_HAVE_CUDA
    struct cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, 0);
    if (e == cudaSuccess) e = cudaSetDevice(0);
    cudaStream_t s = NULL;
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    size_t free_b = 0, total_b = 0;
    if (e == cudaSuccess) e = cudaMemGetInfo(&free_b, &total_b);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "CUDA device 0: %s", cudaGetErrorString(e));
        return -1;
    }
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS || cublasSetStream(h, s) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cublasCreate failed");
        return -1;
    }
    d->stream = s;
    d->blas = h;
    d->has_dense = 1;
    snprintf(d->name, sizeof d->name, "%s", p.name);
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    snprintf(d->detail, sizeof d->detail, "sm_%d%d, %d SMs, %.0f GiB, runtime %d, driver %d", p.major,
             p.minor, p.multiProcessorCount, (double)total_b / (1u << 30), rt, drv);
    d->mem_total = total_b;
    d->flush_bytes = 2 * (size_t)(p.l2CacheSize > 0 ? p.l2CacheSize : (64 << 20));
    if (cudaMalloc(&d->flush, d->flush_bytes) != cudaSuccess) {
        snprintf(err, errlen, "cudaMalloc of the L2 flush buffer failed");
        return -1;
    }
    d->mem_limit = free_b / 100 * 92 - d->flush_bytes; /* cuBLAS and the CUDA context need some */
    return 0;
#else
    snprintf(err, errlen, "dynmoe-bench was built without CUDA");
    return -1;
#endif
}

void bdev_destroy(bdev *d) {
    void **bufs[] = {&d->dA, &d->dW13, &d->dC1, &d->dH, &d->dW2, &d->dC2, &d->cpy_src, &d->cpy_dst, &d->flush};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        bdev_free(d, *bufs[i]);
        *bufs[i] = NULL;
    }
#ifdef DYNMOE_HAVE_CUDA
    if (d->blas) cublasDestroy((cublasHandle_t)d->blas);
    if (d->stream) cudaStreamDestroy((cudaStream_t)d->stream);
#endif
    d->blas = d->stream = NULL;
}

/* ------------------------------------------------------------------------ */
/* memory                                                                   */
/* ------------------------------------------------------------------------ */

void *bdev_alloc(bdev *d, size_t bytes) {
    if (bytes == 0) bytes = 256;
    if (!d->cuda) {
        size_t rounded = (bytes + 255) / 256 * 256;
        void *p = aligned_alloc(256, rounded);
        if (!p) fail("out of host memory allocating %zu bytes", bytes);
        return p;
    }
#ifdef DYNMOE_HAVE_CUDA
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        fail("cudaMalloc(%zu): %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
#else
    return NULL;
#endif
}

void bdev_free(bdev *d, void *p) {
    if (!p) return;
    if (!d->cuda) {
        free(p);
        return;
    }
#ifdef DYNMOE_HAVE_CUDA
    cudaFree(p);
#endif
}

int bdev_upload(bdev *d, void *dst, const void *src, size_t bytes) {
    if (!d->cuda) {
        memcpy(dst, src, bytes);
        return 0;
    }
#ifdef DYNMOE_HAVE_CUDA
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, (cudaStream_t)d->stream));
    CUDA_TRY(cudaStreamSynchronize((cudaStream_t)d->stream));
#endif
    return 0;
}

int bdev_download(bdev *d, void *dst, const void *src, size_t bytes) {
    if (!d->cuda) {
        memcpy(dst, src, bytes);
        return 0;
    }
#ifdef DYNMOE_HAVE_CUDA
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, (cudaStream_t)d->stream));
    CUDA_TRY(cudaStreamSynchronize((cudaStream_t)d->stream));
#endif
    return 0;
}

int bdev_sync(bdev *d) {
#ifdef DYNMOE_HAVE_CUDA
    if (d->cuda) CUDA_TRY(cudaStreamSynchronize((cudaStream_t)d->stream));
#else
    (void)d;
#endif
    return 0;
}

/* Start of tile i's copy of the block: a 16-byte multiple (any dtype's
 * element boundary), pseudo-random so tiles differ. */
static size_t tile_shift(size_t i, size_t block_bytes) {
    size_t units = block_bytes / 16;
    return units ? (size_t)((i * 2654435761ull) % units) * 16 : 0;
}

int bdev_fill(bdev *d, void *dst, size_t bytes, const void *block, size_t block_bytes) {
    size_t tiles = (bytes + block_bytes - 1) / block_bytes;
    if (!d->cuda) {
        /* Parallel first touch also spreads the pages over the threads' nodes. */
        int bad = 0;
#pragma omp parallel for schedule(static)
        for (long long i = 0; i < (long long)tiles; i++) {
            size_t at = (size_t)i * block_bytes;
            size_t n = bytes - at < block_bytes ? bytes - at : block_bytes;
            size_t s = tile_shift((size_t)i, block_bytes);
            size_t first = block_bytes - s < n ? block_bytes - s : n;
            memcpy((char *)dst + at, (const char *)block + s, first);
            if (n > first) memcpy((char *)dst + at + first, block, n - first);
        }
        return bad;
    }
#ifdef DYNMOE_HAVE_CUDA
    cudaStream_t st = (cudaStream_t)d->stream;
    void *dblock = NULL;
    CUDA_TRY(cudaMalloc(&dblock, block_bytes));
    CUDA_TRY(cudaMemcpyAsync(dblock, block, block_bytes, cudaMemcpyHostToDevice, st));
    for (size_t i = 0; i < tiles; i++) {
        size_t at = i * block_bytes;
        size_t n = bytes - at < block_bytes ? bytes - at : block_bytes;
        size_t s = tile_shift(i, block_bytes);
        size_t first = block_bytes - s < n ? block_bytes - s : n;
        CUDA_TRY(cudaMemcpyAsync((char *)dst + at, (char *)dblock + s, first, cudaMemcpyDeviceToDevice, st));
        if (n > first)
            CUDA_TRY(cudaMemcpyAsync((char *)dst + at + first, dblock, n - first, cudaMemcpyDeviceToDevice, st));
    }
    CUDA_TRY(cudaStreamSynchronize(st));
    CUDA_TRY(cudaFree(dblock));
#endif
    return 0;
}

/* ------------------------------------------------------------------------ */
/* timing                                                                   */
/* ------------------------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int bdev_time(bdev *d, bench_fn fn, void *arg, int warmup, int iters, double *samples) {
    for (int i = 0; i < warmup; i++)
        if (fn(arg, i) != 0) return -1;
    if (iters <= 0) return 0;
    if (!d->cuda) {
        for (int i = 0; i < iters; i++) {
            double t0 = now_s();
            if (fn(arg, warmup + i) != 0) return -1;
            samples[i] = now_s() - t0;
        }
        return 0;
    }
#ifdef DYNMOE_HAVE_CUDA
    cudaStream_t st = (cudaStream_t)d->stream;
    cudaEvent_t *ev = malloc(sizeof(cudaEvent_t) * 2 * (size_t)iters);
    if (!ev) return fail("out of host memory");
    int made = 0, rc = 0;
    for (; made < 2 * iters; made++)
        if (cudaEventCreate(&ev[made]) != cudaSuccess) {
            rc = fail("cudaEventCreate failed");
            break;
        }
    for (int i = 0; rc == 0 && i < iters; i++) {
        if (d->flush) cudaMemsetAsync(d->flush, i & 0xff, d->flush_bytes, st);
        cudaEventRecord(ev[2 * i], st);
        if (fn(arg, warmup + i) != 0) rc = -1;
        cudaEventRecord(ev[2 * i + 1], st);
    }
    if (rc == 0) {
        cudaError_t e = cudaStreamSynchronize(st);
        if (e != cudaSuccess) rc = fail("the timed calls failed: %s", cudaGetErrorString(e));
    }
    for (int i = 0; rc == 0 && i < iters; i++) {
        float ms = 0;
        cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]);
        samples[i] = 1e-3 * (double)ms;
    }
    for (int i = 0; i < made; i++) cudaEventDestroy(ev[i]);
    free(ev);
    return rc;
#else
    return fail("built without CUDA");
#endif
}

/* ------------------------------------------------------------------------ */
/* dense GEMM ceiling                                                       */
/* ------------------------------------------------------------------------ */

static int fill_random(bdev *d, void *dst, size_t n, dynmoe_dtype t, float a, uint64_t seed) {
    size_t bn = (size_t)1 << 20; /* 1M-element random block, tiled */
    float *f = malloc(bn * 4);
    void *b = malloc(bn * 4);
    if (!f || !b) {
        free(f);
        free(b);
        return fail("out of host memory");
    }
    random_floats(f, bn, a, seed);
    convert_from_f32(f, b, bn, t);
    int rc = bdev_fill(d, dst, n * dtype_size(t), b, bn * dtype_size(t));
    free(f);
    free(b);
    return rc;
}

int bdev_dense_setup(bdev *d, dynmoe_dtype dtype, int64_t max_rows, int32_t hidden, int32_t inter) {
    if (!d->has_dense) return 0; /* nothing to set up: bdev_dense_run fails */
    if (!d->cuda) dtype = DYNMOE_F32; /* cblas_sgemm */
    if (max_rows < 1) max_rows = 1;
    size_t es = dtype_size(dtype), M = (size_t)max_rows, H = (size_t)hidden, In = (size_t)inter;
    void **bufs[] = {&d->dA, &d->dW13, &d->dC1, &d->dH, &d->dW2, &d->dC2};
    for (size_t i = 0; i < 6; i++) {
        bdev_free(d, *bufs[i]);
        *bufs[i] = NULL;
    }
    size_t n[6] = {M * H, 2 * In * H, M * 2 * In, M * In, H * In, M * H};
    for (size_t i = 0; i < 6; i++) {
        *bufs[i] = bdev_alloc(d, n[i] * es);
        if (!*bufs[i]) return -1;
        if (fill_random(d, *bufs[i], n[i], dtype, i == 1 || i == 4 ? 0.03f : 1.0f, 101 + i) != 0) return -1;
    }
    d->dense_rows = max_rows;
    d->dense_hidden = hidden;
    d->dense_inter = inter;
    d->dense_dtype = dtype;
    return 0;
}

int bdev_dense_run(bdev *d, int64_t rows) {
    if (rows <= 0) return 0;
    if (!d->has_dense) return fail("dense GEMM: dynmoe-bench was built without BLAS (DYNMOE_BLAS)");
    if (rows > d->dense_rows) return fail("dense GEMM: %lld rows > %lld set up", (long long)rows, (long long)d->dense_rows);
    int M = (int)rows, H = d->dense_hidden, In = d->dense_inter;
    if (!d->cuda) {
#ifdef DYNMOE_HAVE_BLAS
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, 2 * In, H, 1.0f, d->dA, H, d->dW13, H, 0.0f,
                    d->dC1, 2 * In);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, H, In, 1.0f, d->dH, In, d->dW2, In, 0.0f, d->dC2,
                    H);
#else
        (void)M, (void)H, (void)In; /* unreachable: has_dense is 0 */
#endif
        return 0;
    }
#ifdef DYNMOE_HAVE_CUDA
    /* Row-major Y[M,N] = X[M,K]·W[N,K]^T is column-major Y^T[N,M] = W·X^T:
     * op(A) = W^T stored [K,N] col-major -> CUBLAS_OP_T, B = X^T [K,M]. */
    cudaDataType_t t = d->dense_dtype == DYNMOE_BF16 ? CUDA_R_16BF : d->dense_dtype == DYNMOE_F16 ? CUDA_R_16F : CUDA_R_32F;
    cublasHandle_t h = (cublasHandle_t)d->blas;
    float one = 1.0f, zero = 0.0f;
    CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, 2 * In, M, H, &one, d->dW13, t, H, d->dA, t, H, &zero,
                            d->dC1, t, 2 * In, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, H, M, In, &one, d->dW2, t, In, d->dH, t, In, &zero, d->dC2,
                            t, H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
#else
    return fail("built without CUDA");
#endif
}

/* ------------------------------------------------------------------------ */
/* copy bandwidth                                                           */
/* ------------------------------------------------------------------------ */

int bdev_copy_setup(bdev *d, size_t bytes) {
    bdev_free(d, d->cpy_src);
    bdev_free(d, d->cpy_dst);
    d->cpy_src = bdev_alloc(d, bytes);
    d->cpy_dst = bdev_alloc(d, bytes);
    if (!d->cpy_src || !d->cpy_dst) return -1;
    d->cpy_bytes = bytes;
    if (fill_random(d, d->cpy_src, bytes / 4, DYNMOE_F32, 1.0f, 7) != 0) return -1;
    return fill_random(d, d->cpy_dst, bytes / 4, DYNMOE_F32, 1.0f, 8);
}

int bdev_copy_run(bdev *d) {
    if (!d->cuda) {
        /* One memcpy per thread on its own slice: one thread alone does not
         * saturate the memory system on most machines. */
        size_t n = d->cpy_bytes;
#pragma omp parallel
        {
            size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
            size_t chunk = (n / nt + 63) / 64 * 64;
            size_t lo = id * chunk < n ? id * chunk : n, hi = lo + chunk < n ? lo + chunk : n;
            memcpy((char *)d->cpy_dst + lo, (const char *)d->cpy_src + lo, hi - lo);
        }
        return 0;
    }
#ifdef DYNMOE_HAVE_CUDA
    CUDA_TRY(cudaMemcpyAsync(d->cpy_dst, d->cpy_src, d->cpy_bytes, cudaMemcpyDeviceToDevice,
                             (cudaStream_t)d->stream));
    return 0;
#else
    return fail("built without CUDA");
#endif
}

/* ------------------------------------------------------------------------ */
/* profiling                                                                */
/* ------------------------------------------------------------------------ */

void bdev_range_push(const char *name) {
#ifdef DYNMOE_HAVE_CUDA
    nvtxRangePushA(name);
#else
    (void)name;
#endif
}

void bdev_range_pop(void) {
#ifdef DYNMOE_HAVE_CUDA
    nvtxRangePop();
#endif
}

void bdev_profiler(int start) {
#ifdef DYNMOE_HAVE_CUDA
    if (start)
        cudaProfilerStart();
    else
        cudaProfilerStop();
#else
    (void)start;
#endif
}
