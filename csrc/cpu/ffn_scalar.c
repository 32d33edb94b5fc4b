/* cpu/ffn_scalar.c — the portable path of an expert's FFN: the panel layout
 * of ffn_panels.c (8-row panels, k-major, cpu.h) in plain C loops that the
 * compiler vectorises (the 8 rows of a panel are the vector), for CPUs
 * without AVX2 and as the last resort. Every row goes into a panel (no plain
 * rows), whatever R is.
 *
 * A tile is 4 weight rows x 1 panel: per k 4 weights and 8 panel floats for
 * 32 multiply-adds; the 4 rows (32 KiB at K = 2048 in fp32) stay in L1/L2
 * while every panel of the chunk passes them, so a weight is read from memory
 * once per chunk, as in the AVX2 path. bf16/f16 and quantized rows are
 * widened into wbuf first (dm_cpu_weight_row). The epilogue of GEMM 1 (row
 * scale under weight_on_input, b13, the activation) and of GEMM 2 (b2) is
 * scalar C over act_rules.h. Each result is sum_k w[k] * x[k] in k order, one accumulator per
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

const float *dm_cpu_weight_row(const dm_cpu_wmat *m, int64_t n, float *buf) {
    const uint8_t *row = (const uint8_t *)m->w + n * m->row_bytes;
    const int32_t K = m->K;
    switch (m->fmt) {
    case DYNMOE_WEIGHTS_FP8_BLOCK: {
        /* one fp32 scale per 128 x 128 block (quant_rules.h, dm_dequant) */
        const float *sc = (const float *)m->scale + (n / DM_FP8_BLOCK) * m->groups;
        for (int32_t k0 = 0; k0 < K; k0 += DM_FP8_BLOCK) {
            const float s = sc[k0 / DM_FP8_BLOCK];
            for (int32_t k = k0; k < K && k < k0 + DM_FP8_BLOCK; k++) buf[k] = dm_fp8e4m3_to_f32(row[k]) * s;
        }
        return buf;
    }
    case DYNMOE_WEIGHTS_MXFP4: {
        const uint8_t *sc = (const uint8_t *)m->scale + n * m->groups;
        for (int32_t k0 = 0; k0 < K; k0 += DM_MXFP4_BLOCK) {
            const float s = dm_ue8m0_to_f32(sc[k0 / DM_MXFP4_BLOCK]);
            for (int32_t k = k0; k < k0 + DM_MXFP4_BLOCK; k++) buf[k] = dm_e2m1_to_f32(dm_nibble(row, k)) * s;
        }
        return buf;
    }
    case DYNMOE_WEIGHTS_INT4: {
        const uint16_t *sc = (const uint16_t *)m->scale + n * m->groups;
        const uint8_t *zr = m->zero ? (const uint8_t *)m->zero + n * m->groups : NULL;
        for (int32_t k0 = 0, gi = 0; k0 < K; k0 += m->group, gi++) {
            const float s = dm_f16_to_f32(sc[gi]), z = zr ? (float)zr[gi] : 8.0f;
            for (int32_t k = k0; k < K && k < k0 + m->group; k++) buf[k] = ((float)dm_nibble(row, k) - z) * s;
        }
        return buf;
    }
    default:
        if (m->dt == DYNMOE_F32) return (const float *)row;
        for (int32_t k = 0; k < K; k++) buf[k] = dm_load(row, m->dt, k);
        return buf;
    }
}

/* GEMM 1 + activation: hidden units of blocks [b_begin, b_end), one tile of
 * TW rows at a time: 2 units (their 2 gate and 2 up rows) when gated, else 4
 * units; past the edge the last unit again, results dropped. */
static void gemm1_scalar(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf) {
    const dynmoe_experts *ex = &c->a->experts;
    const int32_t In = ex->inter, units = dm_cpu_gemm1_units(ex->act);
    const int gated = dm_act_gated(ex->act);
    const int32_t step = gated ? TW / 2 : TW; /* units per tile */
    const dm_cpu_wmat m = dm_cpu_wmat_of(ex, 0, c->e);
    const int64_t b0 = (int64_t)c->e * dm_w13_rows(ex->act, In); /* this expert's b13 */
    const int32_t n_end = b_end * units < In ? b_end * units : In;
    for (int32_t n0 = b_begin * units; n0 < n_end; n0 += step) {
        const float *w[TW];
        float bias[TW];
        for (int i = 0; i < TW; i++) {
            const int32_t u = n0 + i % step < In ? n0 + i % step : In - 1;
            const int64_t row = gated && i >= step ? dm_up_row(ex->gate_up, In, u) : dm_gate_row(ex->gate_up, In, u);
            w[i] = dm_cpu_weight_row(&m, row, wbuf + (size_t)i * m.K);
            bias[i] = dm_cpu_bias(ex->b13, ex->dtype, b0 + row);
        }
        for (int32_t p = 0; p < c->P; p++) {
            float acc[TW][8], s[8];
            for (int j = 0; j < 8; j++) s[j] = dm_cpu_row_scale(c->a, c->r0, c->R, 8 * p + j);
            tile_4x1(m.K, w, c->xp + (int64_t)p * 8 * m.K, acc);
            float *d = c->ap + (int64_t)p * 8 * In;
            for (int u = 0; u < step && n0 + u < n_end; u++)
                for (int j = 0; j < 8; j++)
                    d[(int64_t)(n0 + u) * 8 + j] =
                        gated ? dm_cpu_unit(ex, s[j], acc[u][j], bias[u], acc[step + u][j], bias[step + u])
                              : dm_cpu_unit(ex, s[j], acc[u][j], bias[u], 0.0f, 0.0f);
        }
    }
}

/* GEMM 2: W2 rows of blocks [b_begin, b_end), four at a time, into y rows, + b2. */
static void gemm2_scalar(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf) {
    const dynmoe_experts *ex = &c->a->experts;
    const int32_t Hd = ex->hidden;
    const dm_cpu_wmat m = dm_cpu_wmat_of(ex, 1, c->e);
    float *y = (float *)c->a->rows_y + (int64_t)c->r0 * Hd;
    const int32_t n_end = b_end * DM_CPU_GEMM2_BLOCK < Hd ? b_end * DM_CPU_GEMM2_BLOCK : Hd;
    for (int32_t n0 = b_begin * DM_CPU_GEMM2_BLOCK; n0 < n_end; n0 += TW) {
        const float *w[TW];
        float bias[TW];
        for (int i = 0; i < TW; i++) {
            const int32_t n = n0 + i < Hd ? n0 + i : Hd - 1;
            w[i] = dm_cpu_weight_row(&m, n, wbuf + (size_t)i * m.K);
            bias[i] = dm_cpu_bias(ex->b2, ex->dtype, (int64_t)c->e * Hd + n);
        }
        for (int32_t p = 0; p < c->P; p++) {
            float acc[TW][8];
            tile_4x1(m.K, w, c->ap + (int64_t)p * 8 * m.K, acc);
            for (int j = 0; j < 8 && 8 * p + j < c->R; j++)
                for (int i = 0; i < TW && n0 + i < n_end; i++)
                    y[(int64_t)(8 * p + j) * Hd + n0 + i] = acc[i][j] + bias[i];
        }
    }
}

_Static_assert(DM_CPU_GEMM2_BLOCK % TW == 0 && DM_CPU_GEMM1_BLOCK % (TW / 2) == 0 && (2 * DM_CPU_GEMM1_BLOCK) % TW == 0 &&
                   DM_CPU_WBUF_ROWS >= TW,
               "a tile never straddles two blocks");
const dm_cpu_panel_kernels dm_cpu_panels_scalar = {gemm1_scalar, gemm2_scalar, 0, dm_cpu_chunk_pack};
