/* cpu/ffn_avx512.c — the AVX-512 kernels of an expert's FFN for 8 rows and
 * more: ffn_panels.c's scheme (C^T = W . X^T, weights broadcast from their
 * rows as stored or widened a block at a time into wbuf, activations packed
 * into 8-row panels) with 16-lane FMAs. A zmm holds 8 panel rows at two k,
 * so the panels are packed by k pairs:
 *
 *   xp[p][k/2][j][k%2] = x[token of row 8p+j][k]      (rows past R are 0)
 *   ap[p][i/2][j][i%2] = act(unit i of row 8p+j)      GEMM 1 + epilogue
 *
 * and a weight pair (w[k], w[k+1]) is one 8-byte broadcast. Lane 2j + (k%2)
 * of an accumulator sums the even or the odd k of row j; the two are added
 * once at the end (pair_sum), so every output is one fixed-order sum (cpu.h)
 * whatever the tile, block or thread. K must be even (H and I: every model's
 * are; dm_cpu_panels_avx512_fit sends the others to ffn_panels.c).
 *
 * Why not AVX512-BF16's vdpbf16ps: measured on the Intel Xeon (family 6
 * model 207, 2 cores, no AMX) where this was written, one core ran 80 GFLOP/s
 * of vdpbf16ps against 144-170 of zmm FMAs, so bf16 weights are widened to
 * fp32 as on AVX2 and run on the FMAs.
 *
 * Tiles: the whole 12-row block (GEMM 1: 6 gate rows and their 6 up rows)
 * against 2 panels, 24 zmm accumulators, per k pair 12 broadcasts and 2
 * loads for 24 FMAs; a lone panel takes 12 x 1. Rows past the last full
 * panel (at most DOT_MAX_ROWS) go as plain rows, 16 k per FMA. */
#include "../hd.h"
#include "cpu.h"
#include "simd.h"

#ifdef DM_CPU_X86

#define DM_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,f16c")))

#define WB 12 /* weight rows per block and tile */
#define DOT_MAX_ROWS 2

/* Rows [r_begin, r_end) of the chunk's x: panel rows by k pairs (above);
 * the nd rows after the panels are plain rows, laid out as for every path
 * (dm_cpu_chunk_pack). */
static void pack_pairs(const dm_cpu_chunk *c, int32_t r_begin, int32_t r_end) {
    const dm_experts_args *a = c->a;
    const int32_t Hd = a->experts.hidden, S = a->slots;
    const dynmoe_dtype dt = a->experts.dtype;
    const int32_t *slots = a->plan.sorted_slots + c->r0;
    const int32_t panel_end = r_end < 8 * c->P ? r_end : 8 * c->P;
    if (r_end > panel_end) dm_cpu_chunk_pack(c, r_begin > panel_end ? r_begin : panel_end, r_end);
    for (int32_t r = r_begin; r < panel_end; r++) {
        float *d = c->xp + (int64_t)(r / 8) * 8 * Hd + 2 * (r % 8);
        if (r >= c->R) {
            for (int32_t k = 0; k < Hd; k += 2) d[8 * k] = 0.0f, d[8 * k + 1] = 0.0f;
            continue;
        }
        const int64_t x0 = (int64_t)(slots[r] / S) * Hd;
        for (int32_t k = 0; k < Hd; k += 2) /* pair k/2 at d + 16 * (k/2) */
            d[8 * k] = dm_load(a->x, dt, x0 + k), d[8 * k + 1] = dm_load(a->x, dt, x0 + k + 1);
    }
}

/* Row j of a k-pair accumulator: lanes 2j (even k) + 2j+1 (odd k). */
DM_AVX512 static inline __m256 pair_sum(__m512 v) {
    const __m512 s = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14);
    return _mm512_castps512_ps256(_mm512_permutexvar_ps(even, s));
}

/* Named accumulators c<row>_<panel> so that all 24 stay in registers. */
#define LOADB(q, kk) const __m512 x##q = _mm512_loadu_ps(b##q + 16 * (int64_t)(kk))
#define BCAST(i, kk) const __m512 v##i = bcast_pair(ws + (i) * (2 * KC2) + 2 * (int64_t)(kk))
#define FMA(i, q) c##i##_##q = _mm512_fmadd_ps(v##i, x##q, c##i##_##q)
#define ROW2(i, kk) do { BCAST(i, kk); FMA(i, 0); FMA(i, 1); } while (0)
#define ROW1(i, kk) do { BCAST(i, kk); FMA(i, 0); } while (0)
#define ROWS12(R, kk)                                                                                \
    R(0, kk); R(1, kk); R(2, kk); R(3, kk); R(4, kk); R(5, kk);                                      \
    R(6, kk); R(7, kk); R(8, kk); R(9, kk); R(10, kk); R(11, kk)
#define LOADC(i, q) __m512 c##i##_##q = first ? _mm512_setzero_ps() : am[2 * (i) + (q)]
#define STOREC(i, q) am[2 * (i) + (q)] = c##i##_##q
#define EACH12(M, q) M(0, q); M(1, q); M(2, q); M(3, q); M(4, q); M(5, q); \
                     M(6, q); M(7, q); M(8, q); M(9, q); M(10, q); M(11, q)

/* (w[0], w[1]) in every lane pair. */
DM_AVX512 static inline __m512 bcast_pair(const float *w) {
    double d;
    memcpy(&d, w, sizeof d);
    return _mm512_castpd_ps(_mm512_set1_pd(d));
}

/* Pairs [kb, ke); with pf, 8 pairs (16 k) at a time with one prefetch per
 * next-block weight row as stored (esz2 / 2 bytes per k), as ffn_panels.c. */
#define KLOOP(BODY)                                                                                  \
    do {                                                                                             \
        int32_t kk = 0;                                                                              \
        if (pf)                                                                                      \
            for (; kk + 8 <= n; kk += 8) {                                                           \
                for (int i = 0; i < WB; i++)                                                         \
                    _mm_prefetch(pf[i] + (((size_t)(kb + kk) * esz2)), _MM_HINT_T0);                 \
                for (int u = 0; u < 8; u++) { BODY(kk + u); }                                        \
            }                                                                                        \
        for (; kk < n; kk++) { BODY(kk); }                                                           \
    } while (0)

#define PFB(q, kk) _mm_prefetch((const char *)(b##q + 16 * (int64_t)(kk) + 16 * PFD), _MM_HINT_T0)
#define PFD 16
#define BODY_12x2(kk) do { PFB(0, kk); PFB(1, kk); LOADB(0, kk); LOADB(1, kk); ROWS12(ROW2, kk); } while (0)
#define BODY_12x1(kk) do { LOADB(0, kk); ROWS12(ROW1, kk); } while (0)

/* K pairs per slice: the slice of the block's 12 weight rows is copied to
 * ws (12 KiB of fp32, row i at ws + i * 2 * KC2), where it stays in L1 while
 * the slice passes every panel pair, and one register addresses all 12
 * (with 12 row pointers the tile ran out of general registers). */
#define KC2 128

/* The lane sums of ws's rows against panels b0 (and b1), n k pairs from pair
 * kb on (b0, b1 and ws start at pair kb), added to am[2i + q] (set when
 * `first`): a tile runs one K slice at a time and keeps its accumulators in
 * am between slices, which leaves every lane's sum in k order. */
DM_AVX512 static void tile_12x2(int32_t kb, int32_t n, int first, const float *ws, const float *b0,
                                const float *b1, const char *const pf[], size_t esz2, __m512 *am) {
    EACH12(LOADC, 0);
    EACH12(LOADC, 1);
    KLOOP(BODY_12x2);
    EACH12(STOREC, 0);
    EACH12(STOREC, 1);
}
DM_AVX512 static void tile_12x1(int32_t kb, int32_t n, int first, const float *ws, const float *b0,
                                const char *const pf[], size_t esz2, __m512 *am) {
    EACH12(LOADC, 0);
    KLOOP(BODY_12x1);
    EACH12(STOREC, 0);
}

/* acc[p][i]: weight row i of the block against panel p of `pan` (8 * K
 * floats each, P panels), K even; am: the tiles' accumulators (2 * WB per
 * panel pair); next-block prefetches ride on the first pair of each slice. */
typedef __m256 dm_acc512[DM_CPU_PANEL_ROWS / 8][WB];
DM_AVX512 static void block_tiles(int32_t P, int32_t K, const float *const w[WB], const float *pan,
                                  const char *const pf[], size_t esz2, __m512 *am, dm_acc512 acc) {
    const int32_t K2 = K / 2;
    float ws[WB * 2 * KC2];
    for (int32_t kb = 0; kb < K2; kb += KC2) {
        const int32_t n = K2 - kb < KC2 ? K2 - kb : KC2;
        for (int i = 0; i < WB; i++) memcpy(ws + i * 2 * KC2, w[i] + 2 * (int64_t)kb, (size_t)n * 2 * sizeof(float));
        for (int32_t p = 0; p < P; p += 2) {
            const float *b0 = pan + (int64_t)p * 8 * K + 16 * (int64_t)kb;
            __m512 *a2 = am + (size_t)p * WB;
            if (P - p >= 2) tile_12x2(kb, n, kb == 0, ws, b0, b0 + 8 * (int64_t)K, p ? NULL : pf, esz2, a2);
            else tile_12x1(kb, n, kb == 0, ws, b0, p ? NULL : pf, esz2, a2);
        }
    }
    for (int32_t p = 0; p < P; p++) {
        const int32_t p0 = p & ~1;
        for (int i = 0; i < WB; i++) acc[p][i] = pair_sum(am[(size_t)p0 * WB + 2 * i + (p & 1)]);
    }
}

/* out[j][i] = x_j . w_i for plain rows x0, x1 (nr = 1: x1 = x0) against the
 * 12 block rows: 16 k per FMA, the lanes added by _mm512_reduce_add_ps (a
 * fixed tree), then the K % 16 tail in k order. */
DM_AVX512 static void dot_2x12(int32_t K, const float *x0, const float *x1, const float *const w[WB],
                               float out[2][WB]) {
    __m512 c[2][WB];
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < WB; i++) c[j][i] = _mm512_setzero_ps();
    int32_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const __m512 a0 = _mm512_loadu_ps(x0 + k), a1 = _mm512_loadu_ps(x1 + k);
        for (int i = 0; i < WB; i++) {
            const __m512 v = _mm512_loadu_ps(w[i] + k);
            c[0][i] = _mm512_fmadd_ps(a0, v, c[0][i]);
            c[1][i] = _mm512_fmadd_ps(a1, v, c[1][i]);
        }
    }
    for (int i = 0; i < WB; i++) {
        float s0 = _mm512_reduce_add_ps(c[0][i]), s1 = _mm512_reduce_add_ps(c[1][i]);
        for (int32_t kk = k; kk < K; kk++) s0 += x0[kk] * w[i][kk], s1 += x1[kk] * w[i][kk];
        out[0][i] = s0, out[1][i] = s1;
    }
}

/* Unit u's 8 panel rows d8 into the k-pair panel pp (I/2 pairs of 16). */
static inline void store_unit(float *pp, int32_t u, const float d8[8]) {
    float *d = pp + (int64_t)(u / 2) * 16 + u % 2;
    for (int j = 0; j < 8; j++) d[2 * j] = d8[j];
}

/* GEMM 1 + activation over blocks [b_begin, b_end) of `units` hidden units
 * (gated: 6 units, the block's rows their 6 gate rows then their 6 up rows;
 * non-gated: 12 units). Past the edge the last unit again, results dropped. */
DM_AVX512 static void gemm1_avx512(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf) {
    const dynmoe_experts *ex = &c->a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter, P = c->P, nd = c->nd;
    const int gated = dm_act_gated(ex->act);
    const int32_t units = dm_cpu_gemm1_units(ex->act);
    const dm_cpu_wmat m = dm_cpu_wmat_of(ex, 0, c->e);
    const size_t esz2 = dm_cpu_stored_esz2(&m);
    const int64_t b0 = (int64_t)c->e * dm_w13_rows(ex->act, In);
    const float *xp = c->xp, *xd = xp + (int64_t)P * 8 * Hd;
    float *ap = c->ap, *ad = ap + (int64_t)P * 8 * In;
    float rs[DM_CPU_PANEL_ROWS + 8];
    for (int32_t r = 0; r < 8 * P + nd; r++) rs[r] = dm_cpu_row_scale(c->a, c->r0, c->R, r);
    __m512 am[DM_CPU_PANEL_ROWS / 8 * WB]; /* 24 KiB: the tiles' lane sums between K slices */
    dm_acc512 acc;

    for (int32_t n0 = b_begin * units; n0 < In && n0 < b_end * units; n0 += units) {
        const float *wr[WB];
        const char *pf[WB];
        float bias[WB];
        dm_cpu_gemm1_block(ex, &m, b0, n0, wbuf, wr, pf, bias);
        block_tiles(P, Hd, wr, xp, pf, esz2, am, acc);
        for (int32_t p = 0; p < P; p++) {
            float *pp = ap + (int64_t)p * 8 * In;
            const __m256 sv = _mm256_loadu_ps(rs + 8 * p);
            float d8[8];
            for (int i = 0; i < (gated ? WB / 2 : WB) && n0 + i < In; i++) {
                if (gated) dm_unit_epilogue8(ex, sv, acc[p][i], bias[i], acc[p][WB / 2 + i], bias[WB / 2 + i], d8);
                else dm_unit_epilogue8(ex, sv, acc[p][i], bias[i], _mm256_setzero_ps(), 0.0f, d8);
                store_unit(pp, n0 + i, d8);
            }
        }
        for (int32_t r = 0; r < nd; r += 2) {
            const float *x0 = xd + (int64_t)r * Hd, *x1 = r + 1 < nd ? x0 + Hd : x0;
            float h[2][WB];
            dot_2x12(Hd, x0, x1, wr, h);
            dm_cpu_plain_units(ex, nd - r < 2 ? nd - r : 2, h, rs + 8 * P + r, bias, n0, ad + (int64_t)r * In);
        }
    }
}

/* GEMM 2 over blocks [b_begin, b_end) of WB rows of W2 (n0 = 12b), results
 * transposed back into y rows, + b2. */
DM_AVX512 static void gemm2_avx512(const dm_cpu_chunk *c, int32_t b_begin, int32_t b_end, float *wbuf) {
    const dynmoe_experts *ex = &c->a->experts;
    const int32_t Hd = ex->hidden, In = ex->inter, P = c->P, nd = c->nd, R = c->R;
    const dm_cpu_wmat m = dm_cpu_wmat_of(ex, 1, c->e);
    const size_t esz2 = dm_cpu_stored_esz2(&m);
    const float *ap = c->ap, *ad = ap + (int64_t)P * 8 * In;
    float *y = (float *)c->a->rows_y + (int64_t)c->r0 * Hd;
    __m512 am[DM_CPU_PANEL_ROWS / 8 * WB];
    dm_acc512 acc;

    for (int32_t n0 = b_begin * WB; n0 < Hd && n0 < b_end * WB; n0 += WB) {
        const float *wrow[WB];
        const char *pf[WB];
        float bias[WB];
        for (int i = 0; i < WB; i++) {
            const int32_t n = n0 + i < Hd ? n0 + i : Hd - 1;
            wrow[i] = dm_cpu_weight_row_avx2(&m, n, wbuf + (size_t)i * In);
            pf[i] = m.w + (int64_t)(n0 + WB + i < Hd ? n0 + WB + i : Hd - 1) * m.row_bytes;
            bias[i] = dm_cpu_bias(ex->b2, ex->dtype, (int64_t)c->e * Hd + n);
        }
        block_tiles(P, In, wrow, ap, pf, esz2, am, acc);
        for (int32_t p = 0; p < P; p++) {
            float t[WB][8];
            for (int i = 0; i < WB; i++) _mm256_storeu_ps(t[i], acc[p][i]);
            for (int j = 0; j < 8 && 8 * p + j < R; j++) {
                float *yr = y + (int64_t)(8 * p + j) * Hd + n0;
                for (int i = 0; i < WB && n0 + i < Hd; i++) yr[i] = t[i][j] + bias[i];
            }
        }
        for (int32_t r = 0; r < nd; r += 2) {
            const float *a0 = ad + (int64_t)r * In, *a1 = r + 1 < nd ? a0 + In : a0;
            float o[2][WB];
            dot_2x12(In, a0, a1, wrow, o);
            for (int j = 0; j < 2 && r + j < nd; j++) {
                float *yr = y + (int64_t)(8 * P + r + j) * Hd + n0;
                for (int i = 0; i < WB && n0 + i < Hd; i++) yr[i] = o[j][i] + bias[i];
            }
        }
    }
}

_Static_assert(WB / 2 == DM_CPU_GEMM1_BLOCK && WB == DM_CPU_GEMM2_BLOCK && WB == DM_CPU_WBUF_ROWS,
               "ffn_avx512.c blocks are the ones experts.c schedules");
const dm_cpu_panel_kernels dm_cpu_panels_avx512 = {gemm1_avx512, gemm2_avx512, DOT_MAX_ROWS, pack_pairs};

#else

const dm_cpu_panel_kernels dm_cpu_panels_avx512 = {NULL, NULL, 0, NULL};

#endif
