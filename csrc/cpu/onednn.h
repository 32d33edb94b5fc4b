/* cpu/onednn.h — packed experts on oneDNN matmuls (onednn.c) and the chunk
 * loop that runs them with dynmoe's epilogue (packed.c). Without oneDNN in
 * the build, onednn.c keeps only stubs that refuse. */
#ifndef DYNMOE_CPU_ONEDNN_H
#define DYNMOE_CPU_ONEDNN_H

#include "../backend.h"

/* M tiles of the primitives: 16, 32, ..., 256 rows (a chunk of R rows runs
 * on the tile of ceil(R / 16) * 16 rows; its padding rows are zero). */
#define DM_PACKED_TILE 16
#define DM_PACKED_TILES (DM_CPU_PANEL_ROWS / DM_PACKED_TILE)

/* 1 when the build has oneDNN. */
int dm_onednn_available(void);

/* DYNMOE_OK when p packs exactly the experts x (full struct), else
 * DYNMOE_ERR_INVALID_ARGUMENT naming fn and the first difference. */
dynmoe_status dm_packed_check(const char *fn, const dynmoe_packed_experts *p, const dynmoe_experts *x);

/* The compute dtype of the packed matmuls' inputs: DYNMOE_F32 or DYNMOE_BF16. */
dynmoe_dtype dm_packed_compute_dtype(const dynmoe_packed_experts *p);
/* Bytes of oneDNN's scratchpad for the largest of p's primitives. */
size_t dm_packed_scratchpad_bytes(const dynmoe_packed_experts *p);

/* The tile of a chunk of `rows` rows (1..256): the smallest that holds
 * them and has both GEMMs' primitives. */
int32_t dm_packed_tile(const dynmoe_packed_experts *p, int32_t rows);
/* Threads that may run p's matmuls at once (one set of memory objects and a
 * stream each): dm_cpu_scratch_slices() when p was packed. */
int dm_packed_threads(const dynmoe_packed_experts *p);
/* GEMM `which` (0: h = x . W13_e^T, [M, rows13]; 1: y = a . W2_e^T, [M, H])
 * of expert e on M = (tile + 1) * 16 rows: src [M, K] of the compute dtype,
 * dst [M, N] fp32, pad dm_packed_scratchpad_bytes bytes. Synchronous, on
 * `thread`'s objects (0 <= thread < dm_packed_threads), so that threads run
 * matmuls at once; called inside a parallel region, oneDNN runs it on the
 * calling thread alone. Returns oneDNN's status (0: success); it sets no
 * error, because it may run on a worker thread. */
int dm_packed_gemm(const dynmoe_packed_experts *p, int thread, int which, int32_t e, int32_t tile, const void *src,
                   float *dst, void *pad);

/* packed.c: every active expert with at least dynmoe_packed_experts_min_rows rows of
 * the call, through the packed GEMMs, into rows_y; `area` is the packed part
 * of the CPU scratch (dm_packed_scratch_floats floats). */
dynmoe_status dm_cpu_packed_experts(const dm_experts_args *a, float *area, int threads);

#endif
