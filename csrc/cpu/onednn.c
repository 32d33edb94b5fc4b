/* cpu/onednn.c — dynmoe_experts_pack: expert weights reordered once into
 * the blocked layout oneDNN's matmul asks for (format_tag any), and one
 * matmul primitive per GEMM and M tile, all made at pack time. A forward
 * only points the primitives' memory objects at its buffers and executes
 * them with a user scratchpad from the workspace (dm_packed_gemm).
 *
 * GEMM 1 of expert e: src x [M, H] . weights [H, rows13] (w13_e [rows13, H]
 * row-major is oneDNN's tag "ba" of dims {H, rows13}) -> dst [M, rows13]
 * fp32; GEMM 2: a [M, I] . [I, H] (w2_e [H, I], "ba") -> [M, H] fp32. The
 * weights and src are bf16 for bf16 experts where oneDNN has a bf16 matmul
 * (AVX512-BF16 / AMX), else fp32 (bf16 and f16 weights widened at pack time:
 * oneDNN 2.6 has no bf16/f16 matmul on AVX2). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../hd.h"
#include "cpu.h"
#include "onednn.h"

#ifndef DYNMOE_HAVE_ONEDNN

int dm_onednn_available(void) { return 0; }

dynmoe_status dynmoe_experts_pack(dynmoe_ctx *ctx, const dynmoe_experts *experts, dynmoe_packed_experts **out) {
    (void)ctx, (void)experts;
    if (out) *out = NULL;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED, "dynmoe_experts_pack: this build of dynmoe has no oneDNN "
                                           "(configure with -DDYNMOE_ONEDNN=ON and libdnnl-dev)");
}
void dynmoe_packed_experts_destroy(dynmoe_packed_experts *p) { (void)p; }
size_t dynmoe_packed_experts_bytes(const dynmoe_packed_experts *p) { (void)p; return 0; }
int32_t dynmoe_packed_experts_min_rows(const dynmoe_packed_experts *p) { (void)p; return 0; }
const char *dynmoe_packed_experts_path(const dynmoe_packed_experts *p) { (void)p; return ""; }
dynmoe_status dm_packed_check(const char *fn, const dynmoe_packed_experts *p, const dynmoe_experts *x) {
    (void)p, (void)x;
    return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: experts.packed is set, but this build has no oneDNN, so it "
                                                "cannot come from dynmoe_experts_pack", fn);
}
dynmoe_dtype dm_packed_compute_dtype(const dynmoe_packed_experts *p) { (void)p; return DYNMOE_F32; }
size_t dm_packed_scratchpad_bytes(const dynmoe_packed_experts *p) { (void)p; return 0; }
int32_t dm_packed_tile(const dynmoe_packed_experts *p, int32_t rows) { (void)p; return rows / DM_PACKED_TILE; }
int dm_packed_threads(const dynmoe_packed_experts *p) { (void)p; return 1; }
int dm_packed_gemm(const dynmoe_packed_experts *p, int thread, int which, int32_t e, int32_t tile, const void *src,
                   float *dst, void *pad) {
    (void)p, (void)thread, (void)which, (void)e, (void)tile, (void)src, (void)dst, (void)pad;
    return -1; /* no packed experts exist without oneDNN */
}

#else

#include <oneapi/dnnl/dnnl.h>

#define PACKED_MAGIC 0x646d706bu /* "dmpk": a dynmoe_packed_experts of this build */

/* One matmul primitive and the memory objects its forwards re-point, one
 * set per thread (packed.c runs experts on every thread at once). */
typedef struct gemm_tile {
    dnnl_primitive_t prim;
    dnnl_memory_t *src, *dst, *pad; /* [nthr]; pad NULL when the primitive needs no scratchpad */
} gemm_tile;

typedef struct gemm_pack {
    int32_t N, K;
    size_t expert_bytes;        /* packed bytes of one expert's matrix */
    char *buf;                  /* E * expert_bytes */
    dnnl_memory_t *wei;         /* [nthr], re-pointed at buf + e * expert_bytes */
    gemm_tile tiles[DM_PACKED_TILES];
    char impl[64];
} gemm_pack;

struct dynmoe_packed_experts {
    uint32_t magic;
    /* the experts it packs (dm_packed_check) */
    int32_t E, H, I;
    dynmoe_dtype dtype;
    dynmoe_act act;
    dynmoe_gate_up gate_up;
    const void *w13, *w2;
    /* oneDNN */
    dnnl_engine_t eng;
    int nthr;               /* threads that may run matmuls at once (dm_cpu_scratch_slices) */
    dnnl_stream_t *streams; /* [nthr] */
    dnnl_data_type_t cdt;
    gemm_pack g[2];
    size_t pad_bytes; /* the largest scratchpad */
    int32_t min_rows; /* dynmoe_packed_experts_min_rows */
    char path[192];
};

int dm_onednn_available(void) { return 1; }

#define DNNL_TRY(call)                                                                                      \
    do {                                                                                                    \
        const dnnl_status_t s_ = (call);                                                                    \
        if (s_ != dnnl_success) {                                                                           \
            st = dm_fail(s_ == dnnl_out_of_memory ? DYNMOE_ERR_OUT_OF_MEMORY : DYNMOE_ERR_UNSUPPORTED,      \
                         "dynmoe_experts_pack: oneDNN %s failed (dnnl_status %d)", #call, (int)s_);         \
            goto fail;                                                                                      \
        }                                                                                                   \
    } while (0)

/* The matmul pd of [M, K] . [K, N] -> [M, N] fp32 with weights `wmd`
 * (format any or a packed layout); NULL-status on failure. */
static dnnl_status_t matmul_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t eng, dnnl_data_type_t cdt, int32_t M,
                               const dnnl_memory_desc_t *wmd, int32_t N, int32_t K) {
    dnnl_memory_desc_t smd, dmd;
    const dnnl_dims_t sd = {M, K}, dd = {M, N};
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(&smd, 2, sd, cdt, dnnl_ab);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dnnl_f32, dnnl_ab);
    dnnl_matmul_desc_t md;
    if (s == dnnl_success) s = dnnl_matmul_desc_init(&md, &smd, wmd, NULL, &dmd);
    dnnl_primitive_attr_t attr = NULL;
    if (s == dnnl_success) s = dnnl_primitive_attr_create(&attr);
    if (s == dnnl_success) s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success) s = dnnl_primitive_desc_create(pd, &md, attr, eng, NULL);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return s;
}

/* Makes g's primitives for every tile: the weight layout comes from the
 * largest tile (format any), the others must accept that same layout. */
static dynmoe_status make_gemm(dynmoe_packed_experts *p, gemm_pack *g) {
    dynmoe_status st = DYNMOE_OK;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_desc_t any, packed;
    const dnnl_dims_t wd = {g->K, g->N};
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&any, 2, wd, p->cdt, dnnl_format_tag_any));
    for (int t = DM_PACKED_TILES - 1; t >= 0; t--) {
        gemm_tile *gt = &g->tiles[t];
        const int32_t M = (t + 1) * DM_PACKED_TILE;
        if (t < DM_PACKED_TILES - 1) {
            /* A tile that takes no weights of the largest tile's layout is
             * left out: its chunks run on the next larger tile. */
            if (matmul_pd(&pd, p->eng, p->cdt, M, &packed, g->N, g->K) != dnnl_success) {
                pd = NULL;
                continue;
            }
        } else {
            DNNL_TRY(matmul_pd(&pd, p->eng, p->cdt, M, &any, g->N, g->K));
        }
        if (t == DM_PACKED_TILES - 1) {
            packed = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
            g->expert_bytes = dnnl_memory_desc_get_size(&packed);
            const char *impl = "";
            dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
            snprintf(g->impl, sizeof g->impl, "%s", impl);
            g->wei = calloc((size_t)p->nthr, sizeof *g->wei);
            if (g->wei == NULL) goto oom;
            for (int i = 0; i < p->nthr; i++)
                DNNL_TRY(dnnl_memory_create(&g->wei[i], &packed, p->eng, DNNL_MEMORY_NONE));
        }
        const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        const dnnl_memory_desc_t *dmd = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        const dnnl_memory_desc_t *pmd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        const size_t pb = pmd ? dnnl_memory_desc_get_size(pmd) : 0;
        gt->src = calloc((size_t)p->nthr, sizeof *gt->src);
        gt->dst = calloc((size_t)p->nthr, sizeof *gt->dst);
        if (pb > 0) gt->pad = calloc((size_t)p->nthr, sizeof *gt->pad);
        if (gt->src == NULL || gt->dst == NULL || (pb > 0 && gt->pad == NULL)) goto oom;
        for (int i = 0; i < p->nthr; i++) {
            DNNL_TRY(dnnl_memory_create(&gt->src[i], smd, p->eng, DNNL_MEMORY_NONE));
            DNNL_TRY(dnnl_memory_create(&gt->dst[i], dmd, p->eng, DNNL_MEMORY_NONE));
            if (pb > 0) DNNL_TRY(dnnl_memory_create(&gt->pad[i], pmd, p->eng, DNNL_MEMORY_NONE));
        }
        if (pb > p->pad_bytes) p->pad_bytes = pb;
        DNNL_TRY(dnnl_primitive_create(&gt->prim, pd));
        dnnl_primitive_desc_destroy(pd);
        pd = NULL;
    }
    return DYNMOE_OK;
oom:
    st = dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "dynmoe_experts_pack: out of memory");
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    return st;
}

/* Reorders every expert's [N, K] matrix `w` (experts.dtype, row-major) into
 * g->buf; widened to fp32 first (one expert at a time in `wide`) when the
 * compute dtype is fp32 and the weights are not. */
static dynmoe_status pack_weights(dynmoe_packed_experts *p, gemm_pack *g, const void *w) {
    dynmoe_status st = DYNMOE_OK;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t from = NULL;
    float *wide = NULL;
    const int widen = p->cdt == dnnl_f32 && p->dtype != DYNMOE_F32;
    const size_t nk = (size_t)g->N * (size_t)g->K, esz = dm_dtype_size(p->dtype);
    dnnl_memory_desc_t umd;
    const dnnl_dims_t wd = {g->K, g->N};
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&umd, 2, wd, p->cdt, dnnl_ba));
    const dnnl_memory_desc_t *packed = NULL;
    DNNL_TRY(dnnl_memory_get_memory_desc(g->wei[0], &packed));
    DNNL_TRY(dnnl_reorder_primitive_desc_create(&rpd, &umd, p->eng, packed, p->eng, NULL));
    DNNL_TRY(dnnl_primitive_create(&reorder, rpd));
    DNNL_TRY(dnnl_memory_create(&from, &umd, p->eng, DNNL_MEMORY_NONE));
    g->buf = aligned_alloc(64, (g->expert_bytes * (size_t)p->E + 63) / 64 * 64);
    if (widen) wide = malloc(nk * sizeof(float));
    if (g->buf == NULL || (widen && wide == NULL)) {
        st = dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "dynmoe_experts_pack: out of memory for %zu bytes of packed weights",
                     g->expert_bytes * (size_t)p->E);
        goto fail;
    }
    for (int32_t e = 0; e < p->E; e++) {
        const char *src = (const char *)w + (size_t)e * nk * esz;
        if (widen)
            for (size_t i = 0; i < nk; i++) wide[i] = dm_load(src, p->dtype, (int64_t)i);
        DNNL_TRY(dnnl_memory_set_data_handle(from, widen ? (void *)wide : (void *)src));
        DNNL_TRY(dnnl_memory_set_data_handle(g->wei[0], g->buf + (size_t)e * g->expert_bytes));
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, g->wei[0]}};
        DNNL_TRY(dnnl_primitive_execute(reorder, p->streams[0], 2, args));
    }
    DNNL_TRY(dnnl_stream_wait(p->streams[0]));
fail:
    free(wide);
    if (from) dnnl_memory_destroy(from);
    if (reorder) dnnl_primitive_destroy(reorder);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    return st;
}

/* Destroys the n memory objects of m (NULL entries skipped) and frees m. */
static void drop_memories(dnnl_memory_t *m, int n) {
    if (m == NULL) return;
    for (int i = 0; i < n; i++)
        if (m[i]) dnnl_memory_destroy(m[i]);
    free(m);
}

/* Frees p's primitives and packed weights (a failed build, or destroy). */
static void drop_gemms(dynmoe_packed_experts *p) {
    for (int w = 0; w < 2; w++) {
        gemm_pack *g = &p->g[w];
        for (int t = 0; t < DM_PACKED_TILES; t++) {
            gemm_tile *gt = &g->tiles[t];
            if (gt->prim) dnnl_primitive_destroy(gt->prim);
            drop_memories(gt->src, p->nthr);
            drop_memories(gt->dst, p->nthr);
            drop_memories(gt->pad, p->nthr);
            memset(gt, 0, sizeof *gt);
        }
        drop_memories(g->wei, p->nthr);
        free(g->buf);
        g->wei = NULL, g->buf = NULL, g->expert_bytes = 0;
    }
    p->pad_bytes = 0;
}

void dynmoe_packed_experts_destroy(dynmoe_packed_experts *p) {
    if (p == NULL) return;
    drop_gemms(p);
    if (p->streams)
        for (int i = 0; i < p->nthr; i++)
            if (p->streams[i]) dnnl_stream_destroy(p->streams[i]);
    free(p->streams);
    if (p->eng) dnnl_engine_destroy(p->eng);
    p->magic = 0;
    free(p);
}

/* Primitives and packed weights of p in compute dtype p->cdt. */
static dynmoe_status build(dynmoe_packed_experts *p, const dynmoe_experts *x) {
    dynmoe_status st = DYNMOE_OK;
    for (int w = 0; w < 2 && st == DYNMOE_OK; w++) st = make_gemm(p, &p->g[w]);
    for (int w = 0; w < 2 && st == DYNMOE_OK; w++) st = pack_weights(p, &p->g[w], w ? x->w2 : x->w13);
    if (st != DYNMOE_OK) drop_gemms(p);
    return st;
}

dynmoe_status dynmoe_experts_pack(dynmoe_ctx *ctx, const dynmoe_experts *experts, dynmoe_packed_experts **out) {
    static const char fn[] = "dynmoe_experts_pack";
    dm_clear_error();
    if (out == NULL) return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = NULL;
    if (ctx == NULL) return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", fn);
    if (ctx->backend != DYNMOE_BACKEND_CPU)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "%s: packed experts are for CPU contexts only", fn);
    if (experts == NULL) return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: experts is NULL", fn);
    dynmoe_status st = dm_check_experts(fn, "experts", experts, experts->num_experts, 1);
    if (st != DYNMOE_OK) return st;
    const dynmoe_experts x = dm_experts_full(experts);
    if (x.num_experts < 1) return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: experts.num_experts must be >= 1", fn);
    if (x.weight_format != DYNMOE_WEIGHTS_PLAIN)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "%s: only PLAIN weights are packed (weight_format %d keeps the "
                                               "unpacked kernels)", fn, (int)x.weight_format);
    if (x.packed) return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: experts.packed is already set", fn);
    dynmoe_packed_experts *p = calloc(1, sizeof *p);
    if (p == NULL) return dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    p->magic = PACKED_MAGIC;
    p->E = x.num_experts, p->H = x.hidden, p->I = x.inter;
    p->dtype = x.dtype, p->act = x.act, p->gate_up = x.gate_up;
    p->w13 = x.w13, p->w2 = x.w2;
    p->g[0].N = (int32_t)dm_w13_rows(x.act, x.inter), p->g[0].K = x.hidden;
    p->g[1].N = x.hidden, p->g[1].K = x.inter;
    p->nthr = dm_cpu_scratch_slices();
    p->streams = calloc((size_t)p->nthr, sizeof *p->streams);
    if (p->streams == NULL) {
        dynmoe_packed_experts_destroy(p);
        return dm_fail(DYNMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    int ok = dnnl_engine_create(&p->eng, dnnl_cpu, 0) == dnnl_success;
    for (int i = 0; ok && i < p->nthr; i++)
        ok = dnnl_stream_create(&p->streams[i], p->eng, dnnl_stream_default_flags) == dnnl_success;
    if (!ok) {
        dynmoe_packed_experts_destroy(p);
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "%s: oneDNN has no CPU engine here", fn);
    }
    /* bf16 experts run bf16 matmuls where oneDNN has them, else fp32. */
    p->cdt = x.dtype == DYNMOE_BF16 ? dnnl_bf16 : dnnl_f32;
    st = build(p, &x);
    if (st == DYNMOE_ERR_UNSUPPORTED && p->cdt == dnnl_bf16) {
        p->cdt = dnnl_f32;
        dm_clear_error();
        st = build(p, &x);
    }
    if (st != DYNMOE_OK) {
        dynmoe_packed_experts_destroy(p);
        return st;
    }
    const int amx = strstr(p->g[0].impl, "amx") != NULL && strstr(p->g[1].impl, "amx") != NULL;
    p->min_rows = amx ? 2 : DYNMOE_PACKED_MIN_ROWS; /* include/dynmoe.h says why */
    const dnnl_version_t *v = dnnl_version();
    snprintf(p->path, sizeof p->path, "onednn %d.%d.%d %s gemm1 %s gemm2 %s", v->major, v->minor, v->patch,
             p->cdt == dnnl_bf16 ? "bf16" : "f32", p->g[0].impl, p->g[1].impl);
    *out = p;
    return DYNMOE_OK;
}

size_t dynmoe_packed_experts_bytes(const dynmoe_packed_experts *p) {
    return p ? (p->g[0].expert_bytes + p->g[1].expert_bytes) * (size_t)p->E : 0;
}

const char *dynmoe_packed_experts_path(const dynmoe_packed_experts *p) { return p ? p->path : ""; }

int32_t dynmoe_packed_experts_min_rows(const dynmoe_packed_experts *p) { return p ? p->min_rows : 0; }

dynmoe_status dm_packed_check(const char *fn, const dynmoe_packed_experts *p, const dynmoe_experts *x) {
#define MISMATCH(what) dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: experts.packed was packed for other experts (%s differs)", fn, what)
    if (p->magic != PACKED_MAGIC)
        return dm_fail(DYNMOE_ERR_INVALID_ARGUMENT, "%s: experts.packed is not a dynmoe_experts_pack result", fn);
    if (p->E != x->num_experts) return MISMATCH("num_experts");
    if (p->H != x->hidden || p->I != x->inter) return MISMATCH("hidden or inter");
    if (p->dtype != x->dtype) return MISMATCH("dtype");
    if (p->act != x->act) return MISMATCH("act");
    if (p->gate_up != x->gate_up) return MISMATCH("gate_up");
    if (x->weight_format != DYNMOE_WEIGHTS_PLAIN) return MISMATCH("weight_format");
    if (p->w13 != x->w13 || p->w2 != x->w2) return MISMATCH("w13 or w2");
    return DYNMOE_OK;
#undef MISMATCH
}

dynmoe_dtype dm_packed_compute_dtype(const dynmoe_packed_experts *p) {
    return p->cdt == dnnl_bf16 ? DYNMOE_BF16 : DYNMOE_F32;
}

size_t dm_packed_scratchpad_bytes(const dynmoe_packed_experts *p) { return p->pad_bytes; }

int32_t dm_packed_tile(const dynmoe_packed_experts *p, int32_t rows) {
    int32_t t = (rows + DM_PACKED_TILE - 1) / DM_PACKED_TILE - 1;
    while (t < DM_PACKED_TILES - 1 && !(p->g[0].tiles[t].prim && p->g[1].tiles[t].prim)) t++;
    return t;
}

int dm_packed_threads(const dynmoe_packed_experts *p) { return p->nthr; }

int dm_packed_gemm(const dynmoe_packed_experts *p, int thread, int which, int32_t e, int32_t tile, const void *src,
                   float *dst, void *pad) {
    const gemm_pack *g = &p->g[which];
    const gemm_tile *gt = &g->tiles[tile];
    const int i = thread;
    dnnl_memory_t pm = gt->pad ? gt->pad[i] : NULL;
    dnnl_status_t s = dnnl_memory_set_data_handle(g->wei[i], g->buf + (size_t)e * g->expert_bytes);
    if (s == dnnl_success) s = dnnl_memory_set_data_handle(gt->src[i], (void *)src);
    if (s == dnnl_success) s = dnnl_memory_set_data_handle(gt->dst[i], dst);
    if (s == dnnl_success && pm) s = dnnl_memory_set_data_handle(pm, pad);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, gt->src[i]}, {DNNL_ARG_WEIGHTS, g->wei[i]}, {DNNL_ARG_DST, gt->dst[i]},
                               {DNNL_ARG_SCRATCHPAD, pm}};
    if (s == dnnl_success) s = dnnl_primitive_execute(gt->prim, p->streams[i], pm ? 4 : 3, args);
    if (s == dnnl_success) s = dnnl_stream_wait(p->streams[i]);
    return (int)s;
}

#endif
