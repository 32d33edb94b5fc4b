/* cpu/packed.c — the experts of a call that run on packed weights (the
 * "onednn" path, experts.packed set): every active expert with at least
 * DYNMOE_PACKED_MIN_ROWS rows, cut into the chunks of experts.c
 * (dm_cpu_chunk_rows), one after another. Per chunk of R rows on a tile of
 * M >= R rows:
 *   gather    src[r] = x[token of row r] (compute dtype), rows >= R zero
 *   GEMM 1    h = src . W13_e^T            (oneDNN, its own threads)
 *   epilogue  act[r][i] = dm_cpu_unit(s_r, h gate/up rows, b13)  (act_rules.h)
 *   GEMM 2    y = act . W2_e^T             (oneDNN)
 *   store     rows_y[r0 + r] = y[r] + b2_e, r < R
 * The gather, epilogue and store run in dynmoe's parallel regions between
 * the matmuls (oneDNN's OpenMP regions); the combine stays the common one.
 * Everything lives in the packed part of the CPU scratch: nothing here
 * allocates (what oneDNN itself allocates, test_alloc reports). */
#include <string.h>

#include "../hd.h"
#include "cpu.h"
#include "onednn.h"

/* The packed area of one call: four row buffers of the largest tile, then
 * oneDNN's scratchpad, each rounded to 64 floats. */
typedef struct packed_area {
    void *src;  /* [M, H] compute dtype */
    float *h;   /* [M, rows13] */
    void *act;  /* [M, I] compute dtype */
    float *y;   /* [M, H] */
    void *pad;
} packed_area;

static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

/* Float offsets of the buffers in the area, for tiles of up to 256 rows
 * (a tile oneDNN left out rounds a chunk up to a larger one). */
typedef struct area_offsets {
    size_t src, h, act, y, pad, total;
} area_offsets;

static area_offsets offsets_of(const dynmoe_experts *x) {
    const size_t M = DM_CPU_PANEL_ROWS, H = (size_t)x->hidden, I = (size_t)x->inter;
    const size_t rows13 = (size_t)dm_w13_rows(x->act, x->inter);
    area_offsets o;
    o.src = 0;
    o.h = o.src + round64(M * H);
    o.act = o.h + round64(M * rows13);
    o.y = o.act + round64(M * I);
    o.pad = o.y + round64(M * H);
    o.total = o.pad + round64(dm_packed_scratchpad_bytes(x->packed) / sizeof(float) + 1);
    return o;
}

static packed_area area_of(const dynmoe_experts *x, float *base) {
    const area_offsets o = offsets_of(x);
    const packed_area ar = {base + o.src, base + o.h, base + o.act, base + o.y, base + o.pad};
    return ar;
}

size_t dm_packed_scratch_floats(const dynmoe_experts *x, size_t rows) {
    /* No expert of a call with fewer slots reaches the packed path. */
    if (x == NULL || x->packed == NULL || rows < DYNMOE_PACKED_MIN_ROWS) return 0;
    return offsets_of(x).total;
}

/* One chunk's state, shared by the team of each phase. */
typedef struct chunk_job {
    const dm_experts_args *a;
    packed_area ar;
    dynmoe_dtype cdt;
    int32_t e, r0, R, M;
} chunk_job;

static void gather_body(void *arg) {
    const chunk_job *j = (const chunk_job *)arg;
    const dm_experts_args *a = j->a;
    const int32_t Hd = a->experts.hidden, S = a->slots;
    const dynmoe_dtype dt = a->experts.dtype;
    const size_t esz = dm_dtype_size(j->cdt);
#pragma omp for schedule(static)
    for (int32_t r = 0; r < j->M; r++) {
        char *d = (char *)j->ar.src + (size_t)r * Hd * esz;
        if (r >= j->R) {
            memset(d, 0, (size_t)Hd * esz);
            continue;
        }
        const int64_t x0 = (int64_t)(a->plan.sorted_slots[j->r0 + r] / S) * Hd;
        if (j->cdt == dt) {
            memcpy(d, (const char *)a->x + (size_t)x0 * esz, (size_t)Hd * esz);
        } else {
            float *df = (float *)d;
            for (int32_t k = 0; k < Hd; k++) df[k] = dm_load(a->x, dt, x0 + k);
        }
    }
}

static void epilogue_body(void *arg) {
    const chunk_job *j = (const chunk_job *)arg;
    const dm_experts_args *a = j->a;
    const dynmoe_experts *ex = &a->experts;
    const int32_t In = ex->inter;
    const int64_t rows13 = dm_w13_rows(ex->act, In), b0 = (int64_t)j->e * rows13;
    const int gated = dm_act_gated(ex->act);
    const dynmoe_dtype dt = ex->dtype;
#pragma omp for schedule(static)
    for (int32_t r = 0; r < j->M; r++) {
        const float *h = j->ar.h + (size_t)r * rows13;
        const int64_t o = (int64_t)r * In;
        if (r >= j->R) {
            for (int32_t i = 0; i < In; i++) dm_store(j->ar.act, j->cdt, o + i, 0.0f);
            continue;
        }
        const float s = dm_cpu_row_scale(a, j->r0, j->R, r);
        for (int32_t i = 0; i < In; i++) {
            const int64_t g = gated ? dm_gate_row(ex->gate_up, In, i) : i;
            const int64_t u = gated ? dm_up_row(ex->gate_up, In, i) : i;
            const float v = gated ? dm_cpu_unit(ex, s, h[g], dm_cpu_bias(ex->b13, dt, b0 + g), h[u],
                                                dm_cpu_bias(ex->b13, dt, b0 + u))
                                  : dm_cpu_unit(ex, s, h[i], dm_cpu_bias(ex->b13, dt, b0 + i), 0.0f, 0.0f);
            dm_store(j->ar.act, j->cdt, o + i, v);
        }
    }
}

static void store_body(void *arg) {
    const chunk_job *j = (const chunk_job *)arg;
    const dm_experts_args *a = j->a;
    const int32_t Hd = a->experts.hidden;
    const dynmoe_dtype dt = a->experts.dtype;
    const int64_t b0 = (int64_t)j->e * Hd;
#pragma omp for schedule(static)
    for (int32_t r = 0; r < j->R; r++) {
        const float *y = j->ar.y + (size_t)r * Hd;
        float *out = (float *)a->rows_y + (size_t)(j->r0 + r) * Hd;
        for (int32_t k = 0; k < Hd; k++) out[k] = y[k] + dm_cpu_bias(a->experts.b2, dt, b0 + k);
    }
}

dynmoe_status dm_cpu_packed_experts(const dm_experts_args *a, float *area, int threads) {
    const dynmoe_packed_experts *pk = a->experts.packed;
    const dynmoe_plan *p = &a->plan;
    chunk_job j = {a, area_of(&a->experts, area), dm_packed_compute_dtype(pk), 0, 0, 0, 0};
    for (int32_t ai = 0; ai < *p->num_active; ai++) {
        const int32_t e = p->active_experts[ai], off = p->expert_offsets[e];
        const int32_t R = p->expert_offsets[e + 1] - off;
        if (R < DYNMOE_PACKED_MIN_ROWS) continue; /* experts.c runs it */
        const int32_t step = dm_cpu_chunk_rows(R);
        for (int32_t c0 = 0; c0 < R; c0 += step) {
            j.e = e, j.r0 = off + c0, j.R = R - c0 < step ? R - c0 : step;
            const int32_t tile = dm_packed_tile(pk, j.R);
            j.M = (tile + 1) * DM_PACKED_TILE;
            dm_cpu_parallel(threads, gather_body, &j);
            dynmoe_status st = dm_packed_gemm(pk, 0, e, tile, j.ar.src, j.ar.h, j.ar.pad);
            if (st != DYNMOE_OK) return st;
            dm_cpu_parallel(threads, epilogue_body, &j);
            st = dm_packed_gemm(pk, 1, e, tile, j.ar.act, j.ar.y, j.ar.pad);
            if (st != DYNMOE_OK) return st;
            dm_cpu_parallel(threads, store_body, &j);
        }
    }
    return DYNMOE_OK;
}
