/* cpu/ffn_panels.c — the AVX2 kernels of an expert's FFN for 8 rows and more:
 * GEMM 1 + activation and GEMM 2 of one chunk (up to DM_CPU_PANEL_ROWS rows of
 * one expert, packed by dm_cpu_chunk_pack), each over a range of weight-row
 * blocks so that experts.c can give a chunk's blocks to several threads. The
 * weights are read in place (f32) instead of packed.
 *
 * Why not sgemm: OpenBLAS packs (copies) each weight panel before it uses it
 * R times; at the 19-128 rows an expert gets in prefill that copy and the
 * short GEMMs cost 20-50 % (measured here, 2 cores: 101 GFLOP/s for 64-row
 * experts against 148 with a prototype of this file). So the GEMMs run transposed,
 * C^T = W . X^T: a weight is a scalar broadcast straight from its row, and the
 * small operand, the activations, is what gets packed, in 8-row panels:
 *
 *   xp[p][k][j] = x[token of row 8p+j][k]            (rows past R are 0)
 *   ap[p][i][j] = act(s * (W13 rows of unit i . xp) + b13)   GEMM 1 + epilogue
 *   y[8p+j][n]  = W2[n] . ap[p][.][j] + b2[n]                 GEMM 2, stored as rows
 *
 * Weights go in blocks of 12 rows (GEMM 1: 6 gate rows with their 6 up rows,
 * or 12 rows of a non-gated activation, so the epilogue is applied to the
 * accumulators and h is never stored; s is the row's weight_on_input scale).
 * A block (<= 96 KiB at K = 2048) stays in L2 while every panel of the chunk
 * passes it through a register tile (6 x 2 or 4 x 3 rows x panels, below), so
 * a weight is read from memory once per chunk of up to DM_CPU_PANEL_ROWS rows,
 * and the next block is prefetched meanwhile. bf16/f16 weights are widened and
 * quantized ones decoded a block at a time into the scratch (simd.h). Napkin math (Qwen3 expert, R = 64, f32):
 * 1.2 GFLOP against 18.9 MB of weights, 64 FLOP per weight byte: compute
 * bound on 2 cores at ~25 GB/s; at R = 19 the weight stream is half the time. */
#include "../hd.h"
#include "cpu.h"
#include "simd.h"

#ifdef DM_CPU_X86

/* Weight rows per block: GEMM 1 takes 6 gate rows with their 6 up rows (or 12 non-gated rows). */
#define WB 12

/* The three register tiles, by weight rows x panels (8 rows each):
 *   6 x 2: 12 accumulators, per k 6 broadcasts + 2 loads for 12 FMAs
 *   4 x 3: 12 accumulators, per k 4 broadcasts + 3 loads for 12 FMAs
 *   6 x 1:  6 accumulators, per k 6 broadcasts + 1 load  for 6 FMAs
 * The first two are FMA-bound; the third is load-bound (measured: 2/3 the
 * rate per FMA), so an odd panel count of 3 or more takes one 4 x 3 tile and
 * pairs, and only a lone panel uses 6 x 1. Accumulators are named variables
 * (c<row><panel>) so that they stay in registers. */
#define LOADB(q, k) const __m256 x##q = _mm256_loadu_ps(b##q + 8 * (int64_t)(k))
#define BCAST(i, k) const __m256 v##i = _mm256_broadcast_ss(w##i + (k))
#define FMA(i, q) c##i##q = _mm256_fmadd_ps(v##i, x##q, c##i##q)
#define BODY_6x1(k)                                                                                  \
    do {                                                                                             \
        LOADB(0, k);                                                                                 \
        BCAST(0, k); BCAST(1, k); BCAST(2, k); BCAST(3, k); BCAST(4, k); BCAST(5, k);                \
        FMA(0, 0); FMA(1, 0); FMA(2, 0); FMA(3, 0); FMA(4, 0); FMA(5, 0);                            \
    } while (0)
#define BODY_6x2(k)                                                                                  \
    do {                                                                                             \
        LOADB(0, k); LOADB(1, k);                                                                    \
        BCAST(0, k); FMA(0, 0); FMA(0, 1); BCAST(1, k); FMA(1, 0); FMA(1, 1);                        \
        BCAST(2, k); FMA(2, 0); FMA(2, 1); BCAST(3, k); FMA(3, 0); FMA(3, 1);                        \
        BCAST(4, k); FMA(4, 0); FMA(4, 1); BCAST(5, k); FMA(5, 0); FMA(5, 1);                        \
    } while (0)
#define BODY_4x3(k)                                                                                  \
    do {                                                                                             \
        LOADB(0, k); LOADB(1, k); LOADB(2, k);                                                       \
        BCAST(0, k); FMA(0, 0); FMA(0, 1); FMA(0, 2); BCAST(1, k); FMA(1, 0); FMA(1, 1); FMA(1, 2);  \
        BCAST(2, k); FMA(2, 0); FMA(2, 1); FMA(2, 2); BCAST(3, k); FMA(3, 0); FMA(3, 1); FMA(3, 2);  \
    } while (0)
/* All K; with pf, 16 k at a time with one prefetch per next-block weight row
 * (a cache line of fp32 per 16 k), then the rest. */
#define KLOOP(BODY, NW)                                                                              \
    do {                                                                                             \
        int32_t k = 0;                                                                               \
        if (pf)                                                                                      \
            for (; k + 16 <= K; k += 16) {                                                           \
                for (int i = 0; i < NW; i++) _mm_prefetch(pf[i] + (((size_t)k * esz2) >> 1), _MM_HINT_T0);     \
                for (int u = 0; u < 16; u++) BODY(k + u);                                            \
            }                                                                                        \
        for (; k < K; k++) BODY(k);                                                                  \
    } while (0)
#define ZERO(i, q) __m256 c##i##q = _mm256_setzero_ps()
#define OUT(i, q) acc[i][q] = c##i##q

/* acc[i][q] = sum over k of w[i][k] * b[q][8k .. 8k+7]. pf (or NULL): the
 * next block's weight rows as stored (esz2 / 2 bytes per k: 4-bit formats
 * have esz2 = 1), fetched into cache at the pace
 * this tile reads its own: +5 % at 19 rows, where the weight stream is most
 * of the time (measured). */
typedef __m256 dm_acc[6][3];
DM_AVX2 static void tile_6x1(int32_t K, const float *const w[], const float *const b[], const char *const pf[],
                             size_t esz2, dm_acc acc) {
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5], *b0 = b[0];
    ZERO(0, 0); ZERO(1, 0); ZERO(2, 0); ZERO(3, 0); ZERO(4, 0); ZERO(5, 0);
    KLOOP(BODY_6x1, 6);
    OUT(0, 0); OUT(1, 0); OUT(2, 0); OUT(3, 0); OUT(4, 0); OUT(5, 0);
}
DM_AVX2 static void tile_6x2(int32_t K, const float *const w[], const float *const b[], const char *const pf[],
                             size_t esz2, dm_acc acc) {
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5], *b0 = b[0], *b1 = b[1];
    ZERO(0, 0); ZERO(1, 0); ZERO(2, 0); ZERO(3, 0); ZERO(4, 0); ZERO(5, 0);
    ZERO(0, 1); ZERO(1, 1); ZERO(2, 1); ZERO(3, 1); ZERO(4, 1); ZERO(5, 1);
    KLOOP(BODY_6x2, 6);
    OUT(0, 0); OUT(1, 0); OUT(2, 0); OUT(3, 0); OUT(4, 0); OUT(5, 0);
    OUT(0, 1); OUT(1, 1); OUT(2, 1); OUT(3, 1); OUT(4, 1); OUT(5, 1);
}
DM_AVX2 static void tile_4x3(int32_t K, const float *const w[], const float *const b[], const char *const pf[],
                             size_t esz2, dm_acc acc) {
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *b0 = b[0], *b1 = b[1], *b2 = b[2];
    ZERO(0, 0); ZERO(1, 0); ZERO(2, 0); ZERO(3, 0);
    ZERO(0, 1); ZERO(1, 1); ZERO(2, 1); ZERO(3, 1);
    ZERO(0, 2); ZERO(1, 2); ZERO(2, 2); ZERO(3, 2);
    KLOOP(BODY_4x3, 4);
    OUT(0, 0); OUT(1, 0); OUT(2, 0); OUT(3, 0);
    OUT(0, 1); OUT(1, 1); OUT(2, 1); OUT(3, 1);
    OUT(0, 2); OUT(1, 2); OUT(2, 2); OUT(3, 2);
}

/* A group of np panels and the tile shape that covers it. */
typedef struct panel_group {
    int32_t p, np; /* first panel, panels (1, 2 or 3) */
    int nw;        /* weight rows per tile: 6, or 4 for three panels */
} panel_group;

/* P panels as one 4 x 3 group when P is odd and >= 3, pairs, or one lone panel. */
static int panel_groups(int32_t P, panel_group *g) {
    int n = 0;
    int32_t p = 0;
    if (P % 2 == 1 && P >= 3) g[n++] = (panel_group){p, 3, 4}, p += 3;
    for (; p < P; p += 2) g[n++] = (panel_group){p, P - p >= 2 ? 2 : 1, 6};
    return n;
}

/* One tile of group g: weight rows w[0..nw), panels of `pan` (8 * K floats each). */
DM_AVX2 static void run_tile(const panel_group *g, int32_t K, const float *const w[], const float *pan,
                             const char *const pf[], size_t esz2, dm_acc acc) {
    const float *b[3];
    for (int q = 0; q < g->np; q++) b[q] = pan + (int64_t)(g->p + q) * 8 * K;
    if (g->np == 3) tile_4x3(K, w, b, pf, esz2, acc);
    else if (g->np == 2) tile_6x2(K, w, b, pf, esz2, acc);
    else tile_6x1(K, w, b, pf, esz2, acc);
}

/* The rows past the last full panel, when there are at most DOT_MAX_ROWS,
 * skip the panel (mostly padding) and take the other orientation: 8 k per
 * FMA, out[j][i] = x_j . w_i for 2 rows against 6 weight rows (12
 * accumulators, per 8 k 2 + 6 loads for 12 FMAs). The weight rows come from
 * L2, so this is L2-bound. Measured on a Qwen3 expert (ms per expert and
 * thread): 16 rows 2.13-2.15, 18 rows 2.44 (this), 24 rows 2.76-2.84 (a third
 * panel), 21 rows 3.20-3.25 (this, 5 rows): worth it for 1-2 rows only.
 * nr = 1 repeats row 0. */
#define DOT_MAX_ROWS 2
DM_AVX2 static void dot_2x6(int32_t K, const float *x0, const float *x1, const float *const w[6],
                            float out[2][6]) {
    __m256 c[2][6];
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < 6; i++) c[j][i] = _mm256_setzero_ps();
    int32_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const __m256 a0 = _mm256_loadu_ps(x0 + k), a1 = _mm256_loadu_ps(x1 + k);
        for (int i = 0; i < 6; i++) {
            const __m256 v = _mm256_loadu_ps(w[i] + k);
            c[0][i] = _mm256_fmadd_ps(a0, v, c[0][i]);
            c[1][i] = _mm256_fmadd_ps(a1, v, c[1][i]);
        }
    }
    for (int i = 0; i < 6; i++) {
        float s0 = dm_hsum8(c[0][i]), s1 = dm_hsum8(c[1][i]);
        for (int32_t kk = k; kk < K; kk++) s0 += x0[kk] * w[i][kk], s1 += x1[kk] * w[i][kk];
        out[0][i] = s0, out[1][i] = s1;
    }
}

/* GEMM 1 + activation, blocks [b_begin, b_end) of `units` hidden units from
 * n0 = units * b (past the edge: the last unit again, results dropped).
 * The block's WB weight rows wr[]: gated, the gate rows of units n0..n0+5
 * then their up rows (dm_gate_row, dm_up_row: blocked or interleaved);
 * non-gated, the rows of units n0..n0+11. A tile of nw rows takes nw/2
 * units with their up rows (gated) or nw units. */
DM_AVX2 static void gemm1_avx2(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf) {
    const dynmoe_experts *ex = &c->a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter, P = c->P, nd = c->nd;
    const int gated = dm_act_gated(ex->act);
    const int32_t units = dm_cpu_gemm1_units(ex->act);
    const dm_cpu_wmat m = dm_cpu_wmat_of(ex, 0, c->e);
    const size_t esz2 = dm_cpu_stored_esz2(&m);
    const int64_t b0 = (int64_t)c->e * dm_w13_rows(ex->act, In); /* this expert's b13 */
    const float *xp = c->xp, *xd = xp + (int64_t)P * 8 * Hd;
    float *ap = c->ap, *ad = ap + (int64_t)P * 8 * In;
    panel_group groups[DM_CPU_PANEL_ROWS / 16 + 2];
    const int ng = P ? panel_groups(P, groups) : 0;
    float rs[DM_CPU_PANEL_ROWS + 8]; /* row scales of the chunk */
    for (int32_t r = 0; r < 8 * P + nd; r++) rs[r] = dm_cpu_row_scale(c->a, c->r0, c->R, r);

    for (int32_t n0 = b_begin * units; n0 < In && n0 < b_end * units; n0 += units) {
        const float *wr[WB];
        const char *pf_row[WB];
        float bias[WB];
        dm_cpu_gemm1_block(ex, &m, b0, n0, wbuf, wr, pf_row, bias);
        for (int gi = 0; gi < ng; gi++) {
            const panel_group *g = &groups[gi];
            const int per = gated ? g->nw / 2 : g->nw; /* units per tile */
            for (int s = 0; s < WB / g->nw; s++) {
                const float *w[6];
                const char *pf[6];
                int at[6]; /* wr index of tile row i */
                for (int i = 0; i < g->nw; i++)
                    at[i] = gated ? (i < per ? s * per + i : WB / 2 + s * per + i - per) : s * per + i;
                for (int i = 0; i < g->nw; i++) w[i] = wr[at[i]], pf[i] = pf_row[at[i]];
                dm_acc acc;
                run_tile(g, Hd, w, xp, gi ? NULL : pf, esz2, acc);
                for (int q = 0; q < g->np; q++) {
                    float *d = ap + (int64_t)(g->p + q) * 8 * In;
                    const __m256 sv = _mm256_loadu_ps(rs + 8 * (g->p + q));
                    for (int i = 0; i < per && n0 + s * per + i < In; i++) {
                        float *di = d + (int64_t)(n0 + s * per + i) * 8;
                        if (gated)
                            dm_unit_epilogue8(ex, sv, acc[i][q], bias[at[i]], acc[per + i][q], bias[at[per + i]], di);
                        else
                            dm_unit_epilogue8(ex, sv, acc[i][q], bias[at[i]], _mm256_setzero_ps(), 0.0f, di);
                    }
                }
            }
        }
        for (int32_t r = 0; r < nd; r += 2) {
            const float *x0 = xd + (int64_t)r * Hd, *x1 = r + 1 < nd ? x0 + Hd : x0;
            float h[2][WB]; /* h[j][i]: row r + j against wr[i] */
            float lo[2][6], hi[2][6];
            dot_2x6(Hd, x0, x1, wr, lo);
            dot_2x6(Hd, x0, x1, wr + 6, hi);
            for (int j = 0; j < 2; j++)
                for (int i = 0; i < 6; i++) h[j][i] = lo[j][i], h[j][6 + i] = hi[j][i];
            dm_cpu_plain_units(ex, nd - r < 2 ? nd - r : 2, h, rs + 8 * P + r, bias, n0, ad + (int64_t)r * In);
        }
    }
}

/* GEMM 2, blocks [b_begin, b_end) of WB rows of W2 (n0 = 12b), results
 * transposed back into y rows, + b2. */
DM_AVX2 static void gemm2_avx2(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf) {
    const dynmoe_experts *ex = &c->a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter, P = c->P, nd = c->nd, R = c->R;
    const dm_cpu_wmat m = dm_cpu_wmat_of(ex, 1, c->e);
    const size_t esz2 = dm_cpu_stored_esz2(&m);
    const float *ap = c->ap, *ad = ap + (int64_t)P * 8 * In;
    float *y = (float *)c->a->rows_y + (int64_t)c->r0 * Hd;
    panel_group groups[DM_CPU_PANEL_ROWS / 16 + 2];
    const int ng = P ? panel_groups(P, groups) : 0;

    for (int32_t n0 = b_begin * WB; n0 < Hd && n0 < b_end * WB; n0 += WB) {
        const float *wrow[WB];
        const char *pf_row[WB];
        float bias[WB];
        for (int i = 0; i < WB; i++) {
            const int32_t n = n0 + i < Hd ? n0 + i : Hd - 1;
            wrow[i] = dm_cpu_weight_row_avx2(&m, n, wbuf + (size_t)i * In);
            pf_row[i] = m.w + (int64_t)(n0 + WB + i < Hd ? n0 + WB + i : Hd - 1) * m.row_bytes;
            bias[i] = dm_cpu_bias(ex->b2, ex->dtype, (int64_t)c->e * Hd + n);
        }
        for (int gi = 0; gi < ng; gi++) {
            const panel_group *g = &groups[gi];
            for (int s = 0; s < WB / g->nw; s++) {
                const int32_t m0 = n0 + s * g->nw;
                dm_acc acc;
                run_tile(g, In, wrow + s * g->nw, ap, gi ? NULL : pf_row + s * g->nw, esz2, acc);
                for (int q = 0; q < g->np; q++) {
                    float t[6][8];
                    for (int i = 0; i < g->nw; i++) _mm256_storeu_ps(t[i], acc[i][q]);
                    for (int j = 0; j < 8 && 8 * (g->p + q) + j < R; j++) {
                        float *yr = y + (int64_t)(8 * (g->p + q) + j) * Hd + m0;
                        for (int i = 0; i < g->nw && m0 + i < Hd; i++) yr[i] = t[i][j] + bias[s * g->nw + i];
                    }
                }
            }
        }
        for (int32_t r = 0; r < nd; r += 2) {
            const float *a0 = ad + (int64_t)r * In, *a1 = r + 1 < nd ? a0 + In : a0;
            for (int s = 0; s < WB / 6; s++) {
                float o[2][6];
                dot_2x6(In, a0, a1, wrow + 6 * s, o);
                for (int j = 0; j < 2 && r + j < nd; j++) {
                    float *yr = y + (int64_t)(8 * P + r + j) * Hd + n0 + 6 * s;
                    for (int i = 0; i < 6 && n0 + 6 * s + i < Hd; i++) yr[i] = o[j][i] + bias[6 * s + i];
                }
            }
        }
    }
}

_Static_assert(WB / 2 == DM_CPU_GEMM1_BLOCK && WB == DM_CPU_GEMM2_BLOCK && WB == DM_CPU_WBUF_ROWS,
               "ffn_panels.c blocks are the ones experts.c schedules");
const dm_cpu_panel_kernels dm_cpu_panels_avx2 = {gemm1_avx2, gemm2_avx2, DOT_MAX_ROWS, dm_cpu_chunk_pack};

#else

const dm_cpu_panel_kernels dm_cpu_panels_avx2 = {NULL, NULL, 0, NULL};

#endif
