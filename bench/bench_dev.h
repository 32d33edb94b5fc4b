/*
 * bench_dev.h — what dynmoe-bench needs from the machine it times: memory
 * (host or CUDA device), a timer (clock_gettime or CUDA events), the two
 * ceilings a MoE layer is compared with (dense GEMM at equal FLOPs, memory
 * copy bandwidth) and NVTX ranges. bench/dynmoe_bench.c knows nothing of CUDA;
 * every CUDA call is in bench_dev.c under DYNMOE_HAVE_CUDA.
 */
#ifndef DYNMOE_BENCH_DEV_H
#define DYNMOE_BENCH_DEV_H

#include <stddef.h>
#include <stdint.h>

#include "dynmoe.h"

typedef struct bdev {
    int cuda;           /* 0: host memory + CPU clock; 1: device memory + CUDA events */
    void *stream;       /* cudaStream_t the layer runs on (NULL on the CPU) */
    void *blas;         /* cublasHandle_t (NULL on the CPU) */
    int has_dense;      /* a dense GEMM baseline exists: cuBLAS, or a BLAS on the CPU (DYNMOE_BLAS) */
    char name[256];     /* CPU model or GPU name */
    char detail[256];   /* threads / SMs, BLAS build */
    char host_cpu[256]; /* the CPU model, also on CUDA runs */
    size_t mem_total;   /* physical memory or device memory */
    size_t mem_limit;   /* what the bench lets itself allocate (see bdev_init) */
    /* dense-ceiling buffers, owned by bdev_dense_* */
    void *dA, *dW13, *dC1, *dH, *dW2, *dC2;
    int64_t dense_rows;
    int32_t dense_hidden, dense_inter;
    dynmoe_dtype dense_dtype;
    /* CUDA: written before every timed call (outside the timed range) so the
     * layer finds nothing of the previous call in L2, as in a real model where
     * other layers run in between */
    void *flush;
    size_t flush_bytes;
    /* copy-bandwidth buffers */
    void *cpy_src, *cpy_dst;
    size_t cpy_bytes;
} bdev;

/* 0 on success; on failure -1 with a message in err. */
int bdev_init(bdev *d, int cuda, char *err, size_t errlen);
void bdev_destroy(bdev *d);

/* 256-byte aligned; NULL on failure. */
void *bdev_alloc(bdev *d, size_t bytes);
void bdev_free(bdev *d, void *p);
int bdev_upload(bdev *d, void *dst, const void *src, size_t bytes);
int bdev_download(bdev *d, void *dst, const void *src, size_t bytes);
/* Fills dst with copies of `block`, each copy shifted by a prime stride so
 * that no two experts see the same numbers at the same offsets. */
int bdev_fill(bdev *d, void *dst, size_t bytes, const void *block, size_t block_bytes);
int bdev_sync(bdev *d);

/* One timed call; `iter` picks the rotated input set. 0 = ok, else failure. */
typedef int (*bench_fn)(void *arg, int iter);
/* Runs `warmup` untimed calls then `iters` timed ones; seconds per call in
 * samples[iters]. CPU: wall clock around each call (the CPU backend is
 * synchronous). CUDA: an event pair around each call on d->stream, read after
 * one sync at the end, so launches are not serialised by the timer; before
 * each call a memset of twice the L2 size evicts what the previous call left. */
int bdev_time(bdev *d, bench_fn fn, void *arg, int warmup, int iters, double *samples);

/* Dense ceiling: the two GEMMs of an FFN on M rows, with no gather, no
 * activation and no combine: C1[M,2I] = A[M,H]·W13[2I,H]^T and
 * C2[M,H] = Hm[M,I]·W2[H,I]^T (the x·W^T layout the experts use).
 * CPU: cblas_sgemm (fp32, the CPU backend computes in fp32 whatever the storage);
 * without a BLAS (has_dense = 0) setup does nothing and run fails.
 * CUDA: cublasGemmEx in `dtype` with fp32 accumulation. */
int bdev_dense_setup(bdev *d, dynmoe_dtype dtype, int64_t max_rows, int32_t hidden, int32_t inter);
int bdev_dense_run(bdev *d, int64_t rows);

/* Copy bandwidth: memcpy (OpenMP, all threads) or cudaMemcpyAsync D2D of
 * `bytes`. Reported as 2*bytes/time (read + write, STREAM's convention). */
int bdev_copy_setup(bdev *d, size_t bytes);
int bdev_copy_run(bdev *d);

/* NVTX ranges (no-ops without CUDA). */
void bdev_range_push(const char *name);
void bdev_range_pop(void);
/* cudaProfilerStart/Stop, so that `ncu --profile-from-start off` and
 * `nsys --capture-range=cudaProfilerApi` see only the profiled iteration. */
void bdev_profiler(int start);

const char *bdev_last_error(void);

/* ---- data ---- */
size_t dtype_size(dynmoe_dtype t);
const char *dtype_name(dynmoe_dtype t);
/* float -> f32/bf16/f16 storage, round to nearest even. */
void convert_from_f32(const float *src, void *dst, size_t n, dynmoe_dtype t);
/* Uniform in [-a, a], never exactly 0 (|v| >= a/64), from a 64-bit seed. */
void random_floats(float *dst, size_t n, float a, uint64_t seed);

#endif /* DYNMOE_BENCH_DEV_H */
