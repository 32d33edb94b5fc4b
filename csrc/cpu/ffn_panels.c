/* cpu/ffn_panels.c — one expert's whole FFN (GEMM 1, activation, GEMM 2) for
 * prefill row counts, without copying a single weight.
 *
 * Why not sgemm: OpenBLAS packs (copies) each weight panel before it uses it
 * R times; at the 19-128 rows an expert gets in prefill that copy and the
 * short GEMMs cost 20-50 % (measured here: 101 GFLOP/s for a 64-row expert
 * on 2 cores against 148 with this file). So the GEMMs run transposed,
 * C^T = W . X^T: a weight is a scalar broadcast straight from its row, and the
 * small operand, the activations, is what gets packed, in 8-row panels:
 *
 *   xp[p][k][j] = x[token of row 8p+j][k]            (rows past R are 0)
 *   ap[p][i][j] = act(gate_i . xp) * (up_i . xp)     GEMM 1 + activation
 *   y[8p+j][n]  = W2[n] . ap[p][.][j]                GEMM 2, stored as rows
 *
 * The micro-kernel takes 6 weight rows against 2 panels (16 rows): 12 ymm
 * accumulators, and per k 6 broadcasts + 2 loads for 12 FMAs. The 6 weight
 * rows (<= 48 KiB at K = 2048) stay in L1/L2 while every panel passes them, so
 * a weight is read from memory once per chunk of up to DM_CPU_PANEL_ROWS rows.
 * GEMM 1 takes 3 gate rows with their 3 up rows, so the activation is applied
 * to the accumulators and h is never stored. bf16/f16 weights are widened 6
 * rows at a time into the scratch. Napkin math (Qwen3 expert, R = 64, f32):
 * 1.2 GFLOP against 18.9 MB of weights, 64 FLOP per weight byte: compute
 * bound on 2 cores at ~25 GB/s. */
#include "../hd.h"
#include "cpu.h"
#include "simd.h"

#ifdef DM_CPU_X86

#define WR 6 /* weight rows per block */

/* One 8-lane FMA step of weight row i against panels 0 and 1 at k. */
#define STEP2(i, k)                                          \
    v = _mm256_broadcast_ss(w##i + (k));                     \
    c##i##0 = _mm256_fmadd_ps(v, x0, c##i##0);               \
    c##i##1 = _mm256_fmadd_ps(v, x1, c##i##1)
#define STEP1(i, k) c##i##0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w##i + (k)), x0, c##i##0)

/* acc[i][q] = sum over k of w[i][k] * bq[8k .. 8k+7], for the np (1 or 2)
 * panels b0, b1. The accumulators are named variables so that all twelve stay
 * in registers. pf (or NULL): the next block's weight rows, in bytes of esz
 * per k, fetched into cache at the pace this block reads its own (measured
 * +5 % at 19 rows, where the weight stream is most of the time). */
DM_AVX2 static void block6(int32_t K, const float *const w[WR], const float *b0, const float *b1, int np,
                           const char *const pf[WR], size_t esz, __m256 acc[WR][2]) {
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5];
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
           c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, v;
    for (int32_t k0 = 0; k0 < K; k0 += 16) {
        const int32_t k1 = K - k0 < 16 ? K : k0 + 16;
        if (pf)
            for (int i = 0; i < WR; i++) _mm_prefetch(pf[i] + (size_t)k0 * esz, _MM_HINT_T0);
        if (np == 2) {
            for (int32_t k = k0; k < k1; k++) {
                __m256 x0 = _mm256_loadu_ps(b0 + 8 * (int64_t)k), x1 = _mm256_loadu_ps(b1 + 8 * (int64_t)k);
                STEP2(0, k); STEP2(1, k); STEP2(2, k); STEP2(3, k); STEP2(4, k); STEP2(5, k);
            }
        } else {
            for (int32_t k = k0; k < k1; k++) {
                __m256 x0 = _mm256_loadu_ps(b0 + 8 * (int64_t)k);
                STEP1(0, k); STEP1(1, k); STEP1(2, k); STEP1(3, k); STEP1(4, k); STEP1(5, k);
            }
        }
    }
    (void)v;
    acc[0][0] = c00, acc[0][1] = c01, acc[1][0] = c10, acc[1][1] = c11, acc[2][0] = c20, acc[2][1] = c21;
    acc[3][0] = c30, acc[3][1] = c31, acc[4][0] = c40, acc[4][1] = c41, acc[5][0] = c50, acc[5][1] = c51;
}

/* Weight row n of W [N, K] as fp32: the row itself for f32, else widened into buf. */
DM_AVX2 static const float *weight_row(const void *W, dynmoe_dtype dt, int64_t n, int32_t K, float *buf) {
    if (dt == DYNMOE_F32) return (const float *)W + n * K;
    int64_t base = n * K;
    int32_t k = 0;
    if (dt == DYNMOE_BF16)
        for (; k + 8 <= K; k += 8) _mm256_storeu_ps(buf + k, dm_load8_bf16(W, base + k));
    else
        for (; k + 8 <= K; k += 8) _mm256_storeu_ps(buf + k, dm_load8_f16(W, base + k));
    for (; k < K; k++) buf[k] = dm_load(W, dt, base + k);
    return buf;
}

/* Rows [c0, c0 + R) of expert e, R <= DM_CPU_PANEL_ROWS. */
DM_AVX2 static void ffn_chunk(const dm_experts_args *a, int32_t e, int32_t c0, int32_t R, float *scratch) {
    const dynmoe_experts *ex = &a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter, S = a->slots, P = (R + 7) / 8;
    const dynmoe_dtype dt = ex->dtype;
    const size_t esz = dm_dtype_size(dt);
    const int32_t r0 = a->plan.expert_offsets[e] + c0;
    const int32_t *slots = a->plan.sorted_slots + r0;
    const void *w13 = (const char *)ex->w13 + (size_t)e * 2 * In * Hd * esz;
    const void *w2 = (const char *)ex->w2 + (size_t)e * Hd * In * esz;
    float *y = (float *)a->rows_y + (int64_t)r0 * Hd;
    float *xp = scratch, *ap = xp + (size_t)DM_CPU_PANEL_ROWS * Hd, *wbuf = ap + (size_t)DM_CPU_PANEL_ROWS * In;
    const int geglu = ex->act == DYNMOE_ACT_GEGLU;

    for (int32_t r = 0; r < 8 * P; r++) {
        float *d = xp + (int64_t)(r / 8) * 8 * Hd + r % 8;
        const int64_t x0 = r < R ? (int64_t)(slots[r] / S) * Hd : 0;
        for (int32_t k = 0; k < Hd; k++) d[8 * k] = r < R ? dm_load(a->x, dt, x0 + k) : 0.0f;
    }

    /* GEMM 1 + activation: gate rows n0..n0+2 with up rows In+n0..In+n0+2
     * (past the edge: the last row again, its result dropped). */
    for (int32_t n0 = 0; n0 < In; n0 += 3) {
        const float *w[WR];
        const char *pf[WR];
        for (int i = 0; i < 3; i++) {
            const int32_t n = n0 + i < In ? n0 + i : In - 1, nn = n0 + 3 + i < In ? n0 + 3 + i : In - 1;
            w[i] = weight_row(w13, dt, n, Hd, wbuf + (size_t)i * Hd);
            w[3 + i] = weight_row(w13, dt, (int64_t)In + n, Hd, wbuf + (size_t)(3 + i) * Hd);
            pf[i] = (const char *)w13 + (size_t)nn * Hd * esz;
            pf[3 + i] = (const char *)w13 + (size_t)(In + nn) * Hd * esz;
        }
        for (int32_t p = 0; p < P; p += 2) {
            const int np = P - p >= 2 ? 2 : 1;
            __m256 acc[WR][2];
            block6(Hd, w, xp + (int64_t)p * 8 * Hd, xp + (int64_t)(p + np - 1) * 8 * Hd, np, p ? NULL : pf, esz,
                   acc);
            for (int q = 0; q < np; q++) {
                float g[3][8], u[3][8];
                for (int i = 0; i < 3; i++) _mm256_storeu_ps(g[i], acc[i][q]), _mm256_storeu_ps(u[i], acc[3 + i][q]);
                float *d = ap + (int64_t)(p + q) * 8 * In;
                for (int i = 0; i < 3 && n0 + i < In; i++)
                    for (int j = 0; j < 8; j++) d[(int64_t)(n0 + i) * 8 + j] = dm_cpu_act(g[i][j], u[i][j], geglu);
            }
        }
    }

    /* GEMM 2: 6 rows of W2 at a time, results transposed back into y rows. */
    for (int32_t n0 = 0; n0 < Hd; n0 += WR) {
        const float *w[WR];
        const char *pf[WR];
        for (int i = 0; i < WR; i++) {
            w[i] = weight_row(w2, dt, n0 + i < Hd ? n0 + i : Hd - 1, In, wbuf + (size_t)i * In);
            pf[i] = (const char *)w2 + (size_t)(n0 + WR + i < Hd ? n0 + WR + i : Hd - 1) * In * esz;
        }
        for (int32_t p = 0; p < P; p += 2) {
            const int np = P - p >= 2 ? 2 : 1;
            __m256 acc[WR][2];
            block6(In, w, ap + (int64_t)p * 8 * In, ap + (int64_t)(p + np - 1) * 8 * In, np, p ? NULL : pf, esz,
                   acc);
            for (int q = 0; q < np; q++) {
                float t[WR][8];
                for (int i = 0; i < WR; i++) _mm256_storeu_ps(t[i], acc[i][q]);
                for (int j = 0; j < 8 && 8 * (p + q) + j < R; j++) {
                    float *yr = y + (int64_t)(8 * (p + q) + j) * Hd + n0;
                    for (int i = 0; i < WR && n0 + i < Hd; i++) yr[i] = t[i][j];
                }
            }
        }
    }
}

int dm_cpu_ffn_panels(const dm_experts_args *a, int32_t e, float *scratch) {
    if (!dm_cpu_simd_ok(a->experts.dtype)) return 0;
    const int32_t R = a->plan.expert_offsets[e + 1] - a->plan.expert_offsets[e];
    /* Equal chunks in multiples of 16 rows: 136 rows as 128 + 8 would read
     * the weights a second time for 8 rows (measured: 139 against 170 GFLOP/s). */
    const int32_t chunks = (R + DM_CPU_PANEL_ROWS - 1) / DM_CPU_PANEL_ROWS;
    int32_t step = ((R + chunks - 1) / chunks + 15) / 16 * 16;
    if (step > DM_CPU_PANEL_ROWS) step = DM_CPU_PANEL_ROWS;
    for (int32_t c0 = 0; c0 < R; c0 += step) ffn_chunk(a, e, c0, R - c0 < step ? R - c0 : step, scratch);
    return 1;
}

#else

int dm_cpu_ffn_panels(const dm_experts_args *a, int32_t e, float *scratch) {
    (void)a, (void)e, (void)scratch;
    return 0;
}

#endif
