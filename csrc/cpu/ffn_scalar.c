/* cpu/ffn_scalar.c — the portable path of an expert's FFN: the panel layout
 * of ffn_panels.c (8-row panels, k-major, cpu.h) in plain C loops that the
 * compiler vectorises (the 8 rows of a panel are the vector), for CPUs
 * without AVX2 and as the last resort. Every row goes into a panel (no plain
 * rows), whatever R is.
 *
 * A tile is 4 weight rows x 1 panel: per k 4 weights and 8 panel floats for
 * 32 multiply-adds; the 4 rows (32 KiB at K = 2048 in fp32) stay in L1/L2
 * while every panel of the chunk passes them, so a weight is read from memory
 * once per chunk, as in the AVX2 path. bf16/f16 rows are widened into wbuf
 * first. Each result is sum_k w[k] * x[k] in k order, one accumulator per
 * (weight row, panel row): the same bits wherever the tile or thread is. */
#include "../hd.h"
#include "cpu.h"

#define TW 4 /* weight rows per tile */

/* acc[i][j] = sum over k of w[i][k] * pan[8k + j]. */
static void tile_4x1(int32_t K, const float *const w[TW], const float *pan, float acc[TW][8]) {
    float c0[8] = {0}, c1[8] = {0}, c2[8] = {0}, c3[8] = {0};
    for (int32_t k = 0; k < K; k++) {
        const float *b = pan + 8 * (int64_t)k;
        const float a0 = w[0][k], a1 = w[1][k], a2 = w[2][k], a3 = w[3][k];
        for (int j = 0; j < 8; j++) {
            c0[j] += a0 * b[j];
            c1[j] += a1 * b[j];
            c2[j] += a2 * b[j];
            c3[j] += a3 * b[j];
        }
    }
    for (int j = 0; j < 8; j++) acc[0][j] = c0[j], acc[1][j] = c1[j], acc[2][j] = c2[j], acc[3][j] = c3[j];
}

/* Weight row n of W [N, K] as fp32: the row itself for f32, else widened into buf. */
static const float *weight_row(const void *W, dynmoe_dtype dt, int64_t n, int32_t K, float *buf) {
    if (dt == DYNMOE_F32) return (const float *)W + n * K;
    for (int32_t k = 0; k < K; k++) buf[k] = dm_load(W, dt, n * K + k);
    return buf;
}

/* GEMM 1 + activation: hidden units of blocks [b_begin, b_end), two at a
 * time (their 2 gate and 2 up rows make one tile; past the edge the last
 * unit again, results dropped). */
static void gemm1_scalar(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf) {
    const dynmoe_experts *ex = &c->a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter;
    const dynmoe_dtype dt = ex->dtype;
    const char *w13 = (const char *)ex->w13 + (size_t)c->e * 2 * In * Hd * dm_dtype_size(dt);
    const int geglu = ex->act == DYNMOE_ACT_GEGLU;
    const int32_t n_end = b_end * DM_CPU_GEMM1_BLOCK < In ? b_end * DM_CPU_GEMM1_BLOCK : In;
    for (int32_t n0 = b_begin * DM_CPU_GEMM1_BLOCK; n0 < n_end; n0 += 2) {
        const int32_t n1 = n0 + 1 < In ? n0 + 1 : In - 1;
        const float *w[TW] = {weight_row(w13, dt, n0, Hd, wbuf), weight_row(w13, dt, n1, Hd, wbuf + Hd),
                              weight_row(w13, dt, (int64_t)In + n0, Hd, wbuf + 2 * (size_t)Hd),
                              weight_row(w13, dt, (int64_t)In + n1, Hd, wbuf + 3 * (size_t)Hd)};
        for (int32_t p = 0; p < c->P; p++) {
            float acc[TW][8];
            tile_4x1(Hd, w, c->xp + (int64_t)p * 8 * Hd, acc);
            float *d = c->ap + (int64_t)p * 8 * In;
            for (int u = 0; u < 2 && n0 + u < n_end; u++)
                for (int j = 0; j < 8; j++) d[(int64_t)(n0 + u) * 8 + j] = dm_cpu_act(acc[u][j], acc[2 + u][j], geglu);
        }
    }
}

/* GEMM 2: W2 rows of blocks [b_begin, b_end), four at a time, into y rows. */
static void gemm2_scalar(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf) {
    const dynmoe_experts *ex = &c->a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter;
    const dynmoe_dtype dt = ex->dtype;
    const char *w2 = (const char *)ex->w2 + (size_t)c->e * Hd * In * dm_dtype_size(dt);
    float *y = (float *)c->a->rows_y + (int64_t)c->r0 * Hd;
    const int32_t n_end = b_end * DM_CPU_GEMM2_BLOCK < Hd ? b_end * DM_CPU_GEMM2_BLOCK : Hd;
    for (int32_t n0 = b_begin * DM_CPU_GEMM2_BLOCK; n0 < n_end; n0 += TW) {
        const float *w[TW];
        for (int i = 0; i < TW; i++) w[i] = weight_row(w2, dt, n0 + i < Hd ? n0 + i : Hd - 1, In, wbuf + (size_t)i * In);
        for (int32_t p = 0; p < c->P; p++) {
            float acc[TW][8];
            tile_4x1(In, w, c->ap + (int64_t)p * 8 * In, acc);
            for (int j = 0; j < 8 && 8 * p + j < c->R; j++)
                for (int i = 0; i < TW && n0 + i < n_end; i++) y[(int64_t)(8 * p + j) * Hd + n0 + i] = acc[i][j];
        }
    }
}

_Static_assert(DM_CPU_GEMM2_BLOCK % TW == 0 && DM_CPU_GEMM1_BLOCK % 2 == 0 && DM_CPU_WBUF_ROWS >= TW,
               "a tile never straddles two blocks");
const dm_cpu_panel_kernels dm_cpu_panels_scalar = {gemm1_scalar, gemm2_scalar, 0};
