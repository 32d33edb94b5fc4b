/*
 * experts_test.cc — cuda/experts.cu (both paths) and cuda/combine.cu, their own sources run
 * under the emulation, against the independent fp64 reference (tests/reference/).
 *
 * Each case fixes the rows of every expert exactly (a table is built that routes that many
 * slots to each expert, with empty slots between), plans it with the reference's plan, and runs
 * dm_cuda_experts on poisoned outputs, forced to one path (DYNMOE_EXPERTS_PATH). Checks:
 *  - every plan row of rows_y against the reference FFN of its token, with h rounded to the
 *    dtype as the kernels store it: ||y - ref|| / ||ref|| and the largest element error per row;
 *  - rows_y rows past the plan's R rows and every buffer's slack are untouched;
 *  - combine's output against dmref::experts_forward (unrounded fp64), DESIGN.md's tolerance.
 * The cases: experts of 1, 7, 127, 128, 129 and 300 rows; H and I multiples of the tile, of 8
 * only, even but not of 8, and odd (each load variant and K tail); a hot expert; E = 300; a
 * persistent grid of a few CTAs (an emulated device of 1-2 SMs) and a grid of one CTA per tile.
 * Issue 15, on both paths: every dynmoe_act (SWIGLU_OAI with a limit that clamps), the
 * interleaved gate/up layout, non-gated RELU2 / SILU (w13 of I rows), biases b13 and b2, and
 * router.weight_on_input (with identity zero experts, which still add w * x).
 */
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "combine.emu.inc"
#include "experts.emu.inc"
#include "reference.h"

extern "C" dynmoe_status dm_fail(dynmoe_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("dm_fail: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    return s;
}

namespace {

struct Case {
    std::string name;
    dynmoe_dtype dt;
    const char *path; /* "prefill" | "decode" */
    int32_t H, I, S;
    std::vector<int32_t> rows; /* rows of each expert (E = size) */
    int sms = 2;               /* the emulated device's SM count: the persistent grid's size */
    dynmoe_act act = DYNMOE_ACT_SWIGLU;
    dynmoe_gate_up gate_up = DYNMOE_GATE_UP_BLOCKED;
    bool bias = false;     /* b13 and b2 */
    bool on_input = false; /* router.weight_on_input */
    int32_t Z = 0;         /* identity zero experts routed to */
    float limit = 7.0f;    /* SWIGLU_OAI */
    float alpha = 1.702f;  /* SWIGLU_OAI */
    bool fp8 = false;      /* FP8_BLOCK weights (issue 16) */
    dynmoe_weight_format nib = DYNMOE_WEIGHTS_PLAIN; /* MXFP4 or INT4 weights (issue 16) */
    int32_t group = 0;     /* INT4 group size */
    bool zeros = false;    /* INT4 zero points given (else NULL: 8) */
    bool edge = false;     /* quantized: 1 in 8 scales 0 (FP8, INT4), one NaN scale of expert 2's w13 */
    bool nan_codes = false; /* FP8: the NaN codes 0x7f in expert 1's w13, 0xff in expert 3's w2 */
    bool big_scale = false; /* FP8 / MXFP4: expert 1's w2 scales times 2^110 / 2^120 (bf16) */
};

/* The header's decision for scale edge cases: a scale of 0 gives zero weights, a NaN scale makes
 * NaN weights (the reference's own dequantize), which reach exactly the outputs of the tokens
 * routed to that expert. Expert 2's w13 gets one NaN scale (FP8: its first 128 x 128 block;
 * MXFP4: 0xff; INT4: fp16 NaN), at its gate row 3, group 0. */
void edge_scales(std::mt19937_64 &rng, dmref::QuantMatrix &m, int32_t E, int64_t N, int64_t K, bool nan) {
    const size_t per = m.format == DYNMOE_WEIGHTS_FP8_BLOCK ? m.scale_f32.size() / (size_t)E
                       : m.format == DYNMOE_WEIGHTS_MXFP4  ? m.scale_u8.size() / (size_t)E
                                                           : m.scale_f16.size() / (size_t)E;
    for (size_t i = 0; i < per * (size_t)E; i++)
        if (rng() % 8 == 0) {
            if (m.format == DYNMOE_WEIGHTS_FP8_BLOCK) m.scale_f32[i] = 0.0f;
            if (m.format == DYNMOE_WEIGHTS_INT4) m.scale_f16[i] = 0;
        }
    if (!nan || E < 3) return;
    const size_t kg = per / (size_t)(m.format == DYNMOE_WEIGHTS_FP8_BLOCK ? (N + 127) / 128 : N);
    const size_t i = 2 * per + (m.format == DYNMOE_WEIGHTS_FP8_BLOCK ? 0 : 3 * kg);
    if (m.format == DYNMOE_WEIGHTS_FP8_BLOCK) m.scale_f32[i] = NAN;
    if (m.format == DYNMOE_WEIGHTS_MXFP4) m.scale_u8[i] = 0xff;
    if (m.format == DYNMOE_WEIGHTS_INT4) m.scale_f16[i] = 0x7e00;
    (void)K;
}

/* An FP8_BLOCK [E, N, K] matrix of random e4m3 codes (no NaN code; zeros and subnormals
 * included) and random block scales around `scale`; its values come from the reference's own
 * dequantize. */
dmref::QuantMatrix random_fp8(std::mt19937_64 &rng, int32_t E, int64_t N, int64_t K, double scale) {
    dmref::QuantMatrix m;
    m.format = DYNMOE_WEIGHTS_FP8_BLOCK;
    m.q.resize((size_t)(E * N * K));
    for (auto &b : m.q) {
        const uint32_t r = (uint32_t)rng();
        const uint32_t exp = r % 16 < 2 ? 0 : 4 + (r >> 4) % 6; /* 2^-3 .. 2^2, a few subnormals */
        b = (uint8_t)(((r >> 8) & 0x80) | (exp << 3) | ((r >> 12) & 7));
    }
    m.scale_f32.resize((size_t)(E * ((N + 127) / 128) * ((K + 127) / 128)));
    std::uniform_real_distribution<double> u(0.25, 1.0);
    for (auto &s : m.scale_f32) s = (float)(u(rng) * scale);
    return m;
}

/* An MXFP4 or INT4 [E, N, K] matrix of random codes (every nibble, odd K's pad nibble random
 * too), random per-group scales around `scale` (MXFP4: powers of two) and, for INT4 with zeros,
 * random zero points 0..15; its values come from the reference's own dequantize. */
dmref::QuantMatrix random_nib(std::mt19937_64 &rng, dynmoe_weight_format f, int32_t E, int64_t N, int64_t K,
                              int32_t group, bool zeros, double scale) {
    dmref::QuantMatrix m;
    m.format = f;
    m.group = f == DYNMOE_WEIGHTS_INT4 ? group : 0;
    m.q.resize((size_t)(E * N * ((K + 1) / 2)));
    for (auto &b : m.q) b = (uint8_t)rng();
    const int64_t kg = f == DYNMOE_WEIGHTS_MXFP4 ? K / 32 : (K + group - 1) / group;
    std::uniform_real_distribution<double> u(0.5, 1.0);
    if (f == DYNMOE_WEIGHTS_MXFP4) {
        /* e2m1 magnitudes average ~2.3: 2^-2 .. 2^0 of scale / 2 */
        const int base = 127 + (int)std::floor(std::log2(scale / 2));
        m.scale_u8.resize((size_t)(E * N * kg));
        for (auto &sc : m.scale_u8) sc = (uint8_t)(base - (int)(rng() % 3));
    } else {
        m.scale_f16.resize((size_t)(E * N * kg));
        for (auto &sc : m.scale_f16) sc = dmref::f32_to_f16((float)(u(rng) * scale / 6));
        if (zeros) {
            m.zero.resize((size_t)(E * N * kg));
            for (auto &z : m.zero) z = (uint8_t)(rng() % 16);
        }
    }
    return m;
}

/* The reference's activation of one unit, through its public ffn on a 1 x 1 expert (x = 1,
 * w13 = (gate, up), w2 = 1): y = act(gate, up) exactly in fp64, no formula copied here. */
struct RefAct {
    dmref::Experts probe;
    explicit RefAct(const Case &c) {
        probe.E = 1, probe.H = 1, probe.I = 1, probe.act = c.act, probe.limit = c.limit, probe.alpha = c.alpha;
        probe.w13.assign(dmref::gated(c.act) ? 2 : 1, 0.0);
        probe.w2.assign(1, 1.0);
    }
    double operator()(double gate, double up) {
        probe.w13[0] = gate;
        if (probe.w13.size() > 1) probe.w13[1] = up;
        const double one = 1.0;
        double y = 0;
        dmref::ffn(probe, 0, &one, &y);
        return y;
    }
};

/* Device buffer of the emulation (guarded, poisoned) holding a host vector's bytes. */
template <class T>
T *upload(const std::vector<T> &v) {
    T *p = (T *)emu::dalloc(v.size() * sizeof(T) + (v.empty() ? 1 : 0));
    if (!v.empty()) memcpy(p, v.data(), v.size() * sizeof(T));
    return p;
}

uint16_t to16(double v, dynmoe_dtype dt) {
    return dt == DYNMOE_BF16 ? dmref::f32_to_bf16((float)v) : dmref::f32_to_f16((float)v);
}
double round_to(double v, dynmoe_dtype dt) {
    return dt == DYNMOE_F32 ? (double)(float)v : dmref::load(std::vector<uint16_t>{to16(v, dt)}.data(), dt, 0);
}

/* What the CUDA backend stores in rows_y: the weights' dtype. */
constexpr dynmoe_dtype kRowsYDtype(dynmoe_dtype dt) { return dt; }

struct Result {
    double worst_row = 0, worst_elem = 0, out_err = 0;
    bool ok = true;
};

Result run_case(const Case &c, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(-1, 1);
    const int32_t E = (int32_t)c.rows.size(), H = c.H, I = c.I, S = c.S;
    const dynmoe_dtype dt = c.dt;
    const size_t es = dmref::dtype_size(dt);
    Result res;

    /* a table with exactly rows[e] slots of expert e, a third as many empty slots between */
    std::vector<int32_t> ids;
    for (int32_t e = 0; e < E; e++) ids.insert(ids.end(), (size_t)c.rows[e], e);
    const size_t R = ids.size();
    ids.insert(ids.end(), R / 3 + 1, -1);
    for (int32_t z = 0; z < c.Z; z++) ids.insert(ids.end(), R / 8 + 1, E + z);
    while (ids.size() % (size_t)S) ids.push_back(-1);
    std::shuffle(ids.begin(), ids.end(), rng);
    const int64_t T = (int64_t)ids.size() / S;
    std::vector<float> wts(ids.size());
    for (auto &w : wts) w = (float)u(rng);
    const dmref::Plan pl = dmref::plan(E, T, S, ids);

    /* inputs, stored in dt, and their exact values for the reference */
    dmref::Experts ex;
    const bool gated = dmref::gated(c.act);
    const int64_t rows13 = gated ? 2 * I : I; /* w13 rows per expert */
    ex.E = E, ex.H = H, ex.I = I, ex.act = c.act, ex.gate_up = c.gate_up, ex.limit = c.limit, ex.alpha = c.alpha;
    ex.w13.resize((size_t)(E * rows13 * H));
    ex.w2.resize((size_t)E * H * I);
    if (c.bias) ex.b13.resize((size_t)(E * rows13)), ex.b2.resize((size_t)E * H);
    std::vector<double> x((size_t)T * H);
    std::vector<uint8_t> xb(x.size() * es), w13b(ex.w13.size() * es), w2b(ex.w2.size() * es);
    std::vector<uint8_t> b13b(ex.b13.size() * es), b2b(ex.b2.size() * es);
    auto fill = [&](std::vector<double> &v, std::vector<uint8_t> &b, double scale) {
        for (size_t i = 0; i < v.size(); i++) {
            const double r = u(rng) * scale;
            if (dt == DYNMOE_F32) {
                const float f = (float)r;
                memcpy(&b[i * 4], &f, 4);
                v[i] = f;
            } else {
                const uint16_t h = to16(r, dt);
                memcpy(&b[i * 2], &h, 2);
                v[i] = dmref::load(&h, dt, 0);
            }
        }
    };
    fill(x, xb, 1.0);
    fill(ex.w13, w13b, std::sqrt(3.0 / H) * 2);
    fill(ex.w2, w2b, std::sqrt(3.0 / I) * 2);
    dmref::QuantMatrix q13, q2;
    if (c.fp8) {
        q13 = random_fp8(rng, E, rows13, H, std::sqrt(3.0 / H));
        q2 = random_fp8(rng, E, H, I, std::sqrt(3.0 / I));
        ex.w13 = dmref::dequantize(q13, E, rows13, H);
        ex.w2 = dmref::dequantize(q2, E, H, I);
    }
    if (c.nib != DYNMOE_WEIGHTS_PLAIN) {
        q13 = random_nib(rng, c.nib, E, rows13, H, c.group, c.zeros, std::sqrt(3.0 / H));
        q2 = random_nib(rng, c.nib, E, H, I, c.group, c.zeros, std::sqrt(3.0 / I));
        ex.w13 = dmref::dequantize(q13, E, rows13, H);
        ex.w2 = dmref::dequantize(q2, E, H, I);
    }
    if (c.edge) {
        edge_scales(rng, q13, E, rows13, H, true);
        edge_scales(rng, q2, E, H, I, false);
        ex.w13 = dmref::dequantize(q13, E, rows13, H);
        ex.w2 = dmref::dequantize(q2, E, H, I);
    }
    if (c.nan_codes) { /* one NaN code per matrix: gate row 5 (all of h), w2 row 7 (one output column) */
        q13.q[(size_t)(1 * rows13 * H + 5 * H + 40)] = 0x7f;
        q2.q[(size_t)(3 * H * I + 7 * I + 33)] = 0xff;
        ex.w13 = dmref::dequantize(q13, E, rows13, H);
        ex.w2 = dmref::dequantize(q2, E, H, I);
    }
    if (c.big_scale) { /* a finite scale whose fold (2^8, 2^14) would overflow: the per-value rules */
        /* the whole expert, so that its rows keep the usual relative errors. MXFP4 scales of 2^114 and
         * more overflow once folded by 2^14; FP8 would need 2^120, whose outputs overflow bf16 here */
        const size_t per = c.fp8 ? (size_t)(((H + 127) / 128) * ((I + 127) / 128)) : (size_t)(H * (I / 32));
        for (size_t i = per; i < 2 * per; i++) {
            if (c.fp8) q2.scale_f32[i] *= 0x1p110f; /* 2^105 .. 2^107: past the guard, fold still finite */
            if (c.nib == DYNMOE_WEIGHTS_MXFP4) q2.scale_u8[i] = (uint8_t)(q2.scale_u8[i] + 120);
        }
        ex.w2 = dmref::dequantize(q2, E, H, I);
    }
    const bool quant = c.fp8 || c.nib != DYNMOE_WEIGHTS_PLAIN;
    fill(ex.b13, b13b, 0.5);
    fill(ex.b2, b2b, 0.5);

    /* device side */
    const size_t nslots = ids.size();
    void *dx = upload(xb), *dw13 = upload(quant ? q13.q : w13b), *dw2 = upload(quant ? q2.q : w2b);
    void *db13 = upload(b13b), *db2 = upload(b2b), *ds13 = upload(q13.scale_f32), *ds2 = upload(q2.scale_f32);
    if (c.nib == DYNMOE_WEIGHTS_MXFP4) ds13 = upload(q13.scale_u8), ds2 = upload(q2.scale_u8);
    if (c.nib == DYNMOE_WEIGHTS_INT4) ds13 = upload(q13.scale_f16), ds2 = upload(q2.scale_f16);
    void *dz13 = c.zeros ? upload(q13.zero) : nullptr, *dz2 = c.zeros ? upload(q2.zero) : nullptr;
    int32_t *dids = upload(ids);
    float *dw = upload(wts);
    std::vector<int32_t> sorted(pl.sorted_slots), active(pl.active), counts(pl.counts);
    sorted.resize(nslots, -7);
    active.resize((size_t)E, -7);
    int32_t *dcounts = upload(counts), *doffsets = upload(pl.offsets), *dsorted = upload(sorted);
    int32_t *dslot_rows = upload(pl.slot_rows), *dactive = upload(active);
    int32_t *dnum_active = upload(std::vector<int32_t>{(int32_t)pl.active.size()});
    const size_t rows_h_bytes = nslots * 2 * I * sizeof(float), rows_y_bytes = nslots * H * sizeof(float);
    unsigned char *rows_h = (unsigned char *)emu::dalloc(rows_h_bytes);
    unsigned char *rows_y = (unsigned char *)emu::dalloc(rows_y_bytes);
    void *out = emu::dalloc((size_t)T * H * es);

    dm_cuda_impl impl{};
    impl.sm_count = c.sms;
    dynmoe_ctx ctx{};
    ctx.backend = DYNMOE_BACKEND_CUDA;
    ctx.impl = &impl;
    dm_experts_args a{};
    a.router = DYNMOE_ROUTER_INIT;
    a.router.num_experts = E;
    a.router.top_k = S;
    a.router.num_zero_experts = c.Z;
    a.router.zero_kind = DYNMOE_ZERO_IDENTITY;
    a.router.weight_on_input = c.on_input;
    a.experts = DYNMOE_EXPERTS_INIT;
    a.experts.num_experts = E, a.experts.hidden = H, a.experts.inter = I, a.experts.dtype = dt;
    a.experts.act = c.act, a.experts.w13 = dw13, a.experts.w2 = dw2;
    a.experts.gate_up = c.gate_up, a.experts.limit = c.limit, a.experts.alpha = c.alpha;
    if (c.bias) a.experts.b13 = db13, a.experts.b2 = db2;
    if (c.fp8) {
        a.experts.weight_format = DYNMOE_WEIGHTS_FP8_BLOCK;
        a.experts.w13_scale = ds13, a.experts.w2_scale = ds2;
    }
    if (c.nib != DYNMOE_WEIGHTS_PLAIN) {
        a.experts.weight_format = c.nib;
        a.experts.w13_scale = ds13, a.experts.w2_scale = ds2;
        a.experts.w13_zero = dz13, a.experts.w2_zero = dz2;
        a.experts.group_size = c.nib == DYNMOE_WEIGHTS_INT4 ? c.group : 32;
    }
    a.T = T, a.x = dx, a.ids = dids, a.weights = dw, a.slots = S;
    a.plan = dynmoe_plan{E, (int64_t)nslots, dcounts, doffsets, dsorted, dslot_rows, dactive, dnum_active};
    a.rows_h = rows_h, a.rows_y = rows_y, a.out = out;

    memset(rows_h, 0xff, rows_h_bytes);
    memset(rows_y, 0xff, rows_y_bytes);
    memset(out, 0xff, (size_t)T * H * es);
    setenv("DYNMOE_EXPERTS_PATH", c.path, 1);
    dynmoe_status st = dm_cuda_experts(&ctx, &a, nullptr);
    if (st == DYNMOE_OK) st = dm_cuda_combine(&ctx, &a, nullptr);
    emu::check_slack();
    if (st != DYNMOE_OK || emu::launch_errors) {
        printf("  %s: status %d, %d launch errors\n", c.name.c_str(), (int)st, emu::launch_errors);
        res.ok = false;
        return res;
    }

    /* rows_y against the reference with h rounded to the dtype as rows_h holds it */
    const dynmoe_dtype ydt = kRowsYDtype(dt);
    const size_t yes = dmref::dtype_size(ydt);
    const double row_tol = dt == DYNMOE_F32 ? 2e-6 : dt == DYNMOE_BF16 ? 6e-3 : 1.5e-3;
    int bad_rows = 0, nan_rows = 0;
    std::vector<double> h((size_t)I), y((size_t)H), pre((size_t)rows13);
    RefAct act(c);
    /* the prefill kernel's quantized B tiles: each dequantized weight rounded once to dt (the
     * combine check below holds the unrounded weights to the accuracy target) */
    std::vector<double> w13r = ex.w13, w2r = ex.w2;
    if (quant && dt != DYNMOE_F32 && std::string(c.path) == "prefill") {
        for (auto &w : w13r) w = round_to(w, dt);
        for (auto &w : w2r) w = round_to(w, dt);
    }
    for (int32_t e = 0; e < E; e++) {
        const double *w13 = &w13r[(size_t)(e * rows13 * H)], *w2 = &w2r[(size_t)e * H * I];
        for (int32_t r = pl.offsets[e]; r < pl.offsets[e + 1]; r++) {
            const int32_t slot = pl.sorted_slots[r];
            const double *xt = &x[(size_t)(slot / S) * H];
            /* w13 . (w x) + b13 in w13's row order (w = 1 unless the weight is on the input) */
            const double wi = c.on_input ? (double)wts[(size_t)slot] : 1.0;
            for (int64_t n = 0; n < rows13; n++) {
                double s = 0;
                for (int32_t k = 0; k < H; k++) s += w13[(size_t)(n * H + k)] * (wi * xt[k]);
                pre[(size_t)n] = s + (c.bias ? ex.b13[(size_t)(e * rows13 + n)] : 0.0);
            }
            for (int32_t j = 0; j < I; j++) {
                const bool il = c.gate_up == DYNMOE_GATE_UP_INTERLEAVED;
                const double g = pre[(size_t)(!gated ? j : il ? 2 * j : j)];
                const double up = !gated ? 0.0 : pre[(size_t)(il ? 2 * j + 1 : I + j)];
                h[j] = round_to(act(g, up), dt);
            }
            double num = 0, den = 0, worst = 0;
            int32_t nan_expected = 0;
            for (int32_t n = 0; n < H; n++) {
                double s = c.bias ? ex.b2[(size_t)e * H + n] : 0.0;
                for (int32_t j = 0; j < I; j++) s += w2[(size_t)n * I + j] * h[j];
                const double got = dmref::load(rows_y + (size_t)r * H * yes, ydt, n);
                if (!std::isfinite(s)) { /* a NaN scale's row: NaN expected (edge cases) */
                    if (std::isfinite(got)) num = INFINITY;
                    nan_expected++;
                    continue;
                }
                const double d = std::isfinite(got) ? got - s : INFINITY;
                num += d * d, den += s * s;
                worst = std::max(worst, std::fabs(d));
            }
            nan_rows += nan_expected > 0;
            if (nan_expected == H && num == 0) continue; /* every value NaN, as expected */
            const double rel = std::sqrt(num / std::max(den, 1e-300)), elem = worst / std::sqrt(den / H);
            res.worst_row = std::max(res.worst_row, rel);
            res.worst_elem = std::max(res.worst_elem, elem);
            if (!(rel <= row_tol && elem <= 6 * row_tol)) {
                if (bad_rows++ < 3)
                    printf("  %s: expert %d row %d (tile row %d): error %.3g (largest element %.3g rms)\n", c.name.c_str(),
                           e, r, r - pl.offsets[e], rel, elem);
            }
        }
    }
    if ((c.edge || c.nan_codes) && (nan_rows == 0 || nan_rows == (int)R)) {
        printf("  %s: %d of %zu rows expect NaN: the edge case does not test what it should\n", c.name.c_str(),
               nan_rows, R);
        bad_rows++;
    }
    /* nothing written past the R plan rows */
    for (size_t i = R * H * yes; i < rows_y_bytes; i++)
        if (rows_y[i] != 0xff) {
            printf("  %s: rows_y written past the plan's %zu rows (byte %zu)\n", c.name.c_str(), R, i);
            bad_rows++;
            break;
        }

    /* combine's output against the unrounded fp64 reference */
    dmref::Table tab;
    tab.T = T, tab.S = S, tab.ids = ids;
    tab.weights.assign(wts.begin(), wts.end());
    std::vector<double> ref;
    dmref::experts_forward(ex, c.Z, DYNMOE_ZERO_IDENTITY, T, x, tab, ref, {}, c.on_input);
    double num = 0, den = 0;
    bool finite = true;
    for (size_t i = 0; i < ref.size(); i++) {
        const double got = dmref::load(out, dt, (int64_t)i);
        if (!std::isfinite(ref[i])) { /* a token of a NaN scale's expert (edge cases) */
            finite &= !std::isfinite(got);
            continue;
        }
        finite &= std::isfinite(got);
        num += (got - ref[i]) * (got - ref[i]), den += ref[i] * ref[i];
    }
    res.out_err = finite ? std::sqrt(num / std::max(den, 1e-300)) : INFINITY;
    const double out_tol = dt == DYNMOE_F32 ? 1e-5 : 1e-2;
    if (!(res.out_err < out_tol)) {
        printf("  %s: combine output error %.3g (tolerance %g)%s\n", c.name.c_str(), res.out_err, out_tol,
               finite ? "" : ", non-finite values");
        bad_rows++;
    }
    res.ok = bad_rows == 0;

    for (void *p : {dx, dw13, dw2, db13, db2, ds13, ds2, (void *)dids, (void *)dw, (void *)dcounts, (void *)doffsets, (void *)dsorted,
                    (void *)dslot_rows, (void *)dactive, (void *)dnum_active, (void *)rows_h, (void *)rows_y, out})
        emu::dfree(p);
    return res;
}

std::vector<int32_t> ragged() { return {1, 7, 127, 128, 129, 300}; }

std::vector<Case> cases() {
    std::vector<Case> v;
    /* name, dtype, path, H, I, S, rows per expert, SMs */
    for (dynmoe_dtype dt : {DYNMOE_BF16, DYNMOE_F16}) {
        const std::string d = dt == DYNMOE_BF16 ? "bf16" : "f16";
        v.push_back({"prefill " + d + " ragged, H I of the tile", dt, "prefill", 256, 128, 4, ragged(), 2});
        v.push_back({"prefill " + d + " ragged, H I of 8 only", dt, "prefill", 136, 72, 4, ragged(), 1});
        v.push_back({"prefill " + d + " ragged, H I of neither", dt, "prefill", 203, 77, 4, ragged(), 2});
        v.push_back({"decode " + d + " ragged, H I of 8", dt, "decode", 136, 72, 4, ragged(), 2});
        v.push_back({"decode " + d + " ragged, H I of neither", dt, "decode", 203, 77, 4, ragged(), 1});
        v.push_back({"prefill " + d + " ragged, H I even, not of 8", dt, "prefill", 100, 38, 4, ragged(), 2});
    }
    v.push_back({"prefill bf16 ragged, H of 8, I odd", DYNMOE_BF16, "prefill", 64, 45, 2, ragged(), 132});
    v.push_back({"prefill f16 H odd, I of the tile, GEGLU", DYNMOE_F16, "prefill", 67, 64, 2, {5, 0, 130, 64}, 2,
                 DYNMOE_ACT_GEGLU});
    v.push_back({"decode f32 ragged, H I of 8", DYNMOE_F32, "decode", 136, 72, 4, ragged(), 2});
    v.push_back({"decode f32 H I odd", DYNMOE_F32, "decode", 67, 37, 3, {1, 9, 0, 17}, 1});
    v.push_back({"decode bf16 H I even, not of 8", DYNMOE_BF16, "decode", 102, 38, 3, {1, 9, 0, 17, 130}, 1});
    v.push_back({"decode f32 H I even, not of 4", DYNMOE_F32, "decode", 102, 38, 3, {1, 9, 0, 17, 130}, 1});
    {
        std::vector<int32_t> hot(16, 3);
        hot[5] = 1100;
        hot[9] = 0;
        v.push_back({"prefill bf16 hot expert (1100 of 1145 rows)", DYNMOE_BF16, "prefill", 96, 40, 8, hot, 2});
        v.push_back({"decode bf16 hot expert", DYNMOE_BF16, "decode", 96, 40, 8, hot, 2});
    }
    {
        std::mt19937 r(3);
        std::vector<int32_t> many(300);
        for (auto &n : many) n = (int32_t)(r() % 4 == 0 ? 0 : r() % 9);
        many[299] = 70;
        v.push_back({"prefill bf16 E = 300", DYNMOE_BF16, "prefill", 40, 24, 8, many, 2});
        v.push_back({"decode f16 E = 300", DYNMOE_F16, "decode", 40, 24, 8, many, 2});
    }
    /* issue 15: activations, layouts, biases, weight on the input; both paths on the same shapes */
    /* limit 1 (it clamps) comes with alpha 1.3, so that a kernel taking the default 1.702 fails */
    auto opt = [&](Case c, dynmoe_gate_up gu, bool bias, bool on_input, int32_t Z, float limit) {
        c.gate_up = gu, c.bias = bias, c.on_input = on_input, c.Z = Z, c.limit = limit;
        if (limit < 7.0f) c.alpha = 1.3f;
        v.push_back(c);
    };
    const auto IL = DYNMOE_GATE_UP_INTERLEAVED, BL = DYNMOE_GATE_UP_BLOCKED;
    const auto OAI = DYNMOE_ACT_SWIGLU_OAI, TANH = DYNMOE_ACT_GEGLU_TANH, RELU2 = DYNMOE_ACT_RELU2,
               SILU = DYNMOE_ACT_SILU, SWIGLU = DYNMOE_ACT_SWIGLU;
    for (const char *path : {"prefill", "decode"}) {
        const std::string pa = path;
        /* gpt-oss: SWIGLU_OAI, interleaved, biases; limit 1 clamps about a third of the units */
        opt({pa + " bf16 SWIGLU_OAI interleaved, biases, H I of neither", DYNMOE_BF16, path, 203, 77, 4, ragged(), 2,
             OAI}, IL, true, false, 0, 1.0f);
        opt({pa + " f16 SWIGLU_OAI interleaved, biases, H I of the tile", DYNMOE_F16, path, 256, 128, 4,
             {1, 129, 0, 40}, 2, OAI}, IL, true, false, 0, 7.0f);
        /* Gemma-4: GELU tanh, blocked, biases */
        opt({pa + " f16 GEGLU_TANH, biases, H I of 8", DYNMOE_F16, path, 136, 72, 4, ragged(), 1, TANH}, BL, true,
            false, 0, 7.0f);
        opt({pa + " bf16 SWIGLU interleaved, no biases, H odd", DYNMOE_BF16, path, 67, 64, 2, {5, 0, 130, 64}, 2,
             SWIGLU}, IL, false, false, 0, 7.0f);
        /* Nemotron-H: non-gated RELU2 (w13 of I rows: 128-column tiles, 2 of them at I = 256) */
        opt({pa + " bf16 RELU2, biases, I of 2 tiles", DYNMOE_BF16, path, 96, 256, 4, ragged(), 2, RELU2}, BL, true,
            false, 0, 7.0f);
        opt({pa + " f16 RELU2, H I odd", DYNMOE_F16, path, 67, 45, 3, {1, 9, 0, 17, 130}, 1, RELU2}, BL, false,
            false, 0, 7.0f);
        opt({pa + " bf16 SILU non-gated, biases, H I of 8", DYNMOE_BF16, path, 136, 72, 4, ragged(), 2, SILU}, BL,
            true, false, 0, 7.0f);
        /* Llama-4: weight on the input, top-1 and several slots, identity zero experts beside */
        opt({pa + " bf16 weight on input, top-1, zero experts", DYNMOE_BF16, path, 136, 72, 1, ragged(), 2, SWIGLU}, BL,
            false, true, 2, 7.0f);
        opt({pa + " f16 weight on input, 4 slots, biases, OAI interleaved", DYNMOE_F16, path, 100, 38, 4, ragged(), 2,
             OAI}, IL, true, true, 1, 1.0f);
        opt({pa + " bf16 weight on input, RELU2, biases", DYNMOE_BF16, path, 203, 77, 4, {1, 9, 0, 17, 130}, 1,
             RELU2}, BL, true, true, 0, 7.0f);
    }
    opt({"decode f32 SWIGLU_OAI interleaved, biases, weight on input", DYNMOE_F32, "decode", 67, 37, 3, {1, 9, 0, 17},
         1, OAI}, IL, true, true, 1, 1.0f);
    opt({"decode f32 RELU2, biases, H I of 8", DYNMOE_F32, "decode", 136, 72, 4, ragged(), 2, RELU2}, BL, true, false,
        0, 7.0f);
    opt({"decode f32 SILU, biases, H I even", DYNMOE_F32, "decode", 102, 38, 3, {1, 9, 0, 17, 130}, 1, SILU}, BL,
        true, false, 0, 7.0f);
    opt({"decode f32 GEGLU_TANH interleaved, biases", DYNMOE_F32, "decode", 102, 38, 3, {1, 9, 0, 17, 130}, 1, TANH},
        IL, true, false, 0, 7.0f);
    /* issue 16, FP8_BLOCK: the streaming kernel at every T (several 128 x 128 scale blocks, K of
     * 16 (vector) and not (scalar), a partial last block), with issue 15's options */
    auto q8 = [&](Case c, dynmoe_gate_up gu, bool bias) {
        c.gate_up = gu, c.bias = bias, c.fp8 = true;
        v.push_back(c);
    };
    q8({"fp8 bf16 decode, H I of 16, 3 x 2 scale blocks", DYNMOE_BF16, "decode", 256, 144, 4, {1, 7, 0, 5}, 2}, BL,
       false);
    q8({"fp8 bf16 ragged (prefill sizes), OAI interleaved, biases", DYNMOE_BF16, "prefill", 160, 80, 4, ragged(), 2,
        OAI}, IL, true);
    q8({"fp8 f16 H I of neither (scalar), biases", DYNMOE_F16, "decode", 203, 77, 4, {1, 9, 0, 17, 130}, 1}, BL, true);
    q8({"fp8 f32 RELU2, H I of 16", DYNMOE_F32, "decode", 144, 272, 3, {1, 9, 0, 17}, 1, RELU2}, BL, true);
    /* issue 16, MXFP4 and INT4: the streaming kernel at every T, nibbles decoded in registers
     * (vector loop when K % 32 == 0, else the scalar loop: INT4 odd K and K of 8) */
    auto q4 = [&](Case c, dynmoe_weight_format f, int32_t g, bool zeros, dynmoe_gate_up gu, bool bias) {
        c.nib = f, c.group = g, c.zeros = zeros, c.gate_up = gu, c.bias = bias;
        v.push_back(c);
    };
    const dynmoe_weight_format MX = DYNMOE_WEIGHTS_MXFP4, I4 = DYNMOE_WEIGHTS_INT4;
    /* gpt-oss: MXFP4, SWIGLU_OAI interleaved with biases */
    q4({"mxfp4 bf16 decode, gpt-oss OAI interleaved, biases", DYNMOE_BF16, "decode", 256, 160, 4, {1, 7, 0, 5}, 2,
        OAI}, MX, 32, false, IL, true);
    q4({"mxfp4 f16 ragged (prefill sizes), OAI interleaved, biases", DYNMOE_F16, "prefill", 192, 96, 4, ragged(), 2,
        OAI}, MX, 32, false, IL, true);
    q4({"mxfp4 bf16 SWIGLU blocked", DYNMOE_BF16, "decode", 96, 64, 3, {1, 9, 0, 17}, 1}, MX, 32, false, BL, false);
    q4({"mxfp4 f32 RELU2", DYNMOE_F32, "decode", 128, 224, 3, {1, 9, 0, 17}, 1, RELU2}, MX, 32, false, BL, true);
    /* INT4 (AWQ / GPTQ style), zero points given and NULL, groups 32 / 64 / 128, ragged last
     * groups, K tails (odd K: the pad nibble) */
    q4({"int4 bf16 g128 zeros, H I of 32, ragged last group", DYNMOE_BF16, "decode", 320, 96, 4, {1, 7, 0, 5}, 2},
       I4, 128, true, BL, false);
    q4({"int4 f16 g64 no zeros, OAI interleaved, biases", DYNMOE_F16, "decode", 192, 160, 4, {1, 9, 0, 17, 130}, 2,
        OAI}, I4, 64, false, IL, true);
    q4({"int4 bf16 g32 zeros, ragged (prefill sizes)", DYNMOE_BF16, "prefill", 160, 96, 4, ragged(), 2}, I4, 32,
       true, BL, true);
    q4({"int4 f16 g64 zeros, H I odd (scalar, pad nibble)", DYNMOE_F16, "decode", 203, 77, 4, {1, 9, 0, 17, 130}, 1},
       I4, 64, true, BL, true);
    q4({"int4 bf16 g128 no zeros, H I of 8 not 32 (scalar)", DYNMOE_BF16, "decode", 136, 72, 3, {1, 9, 0, 17}, 1},
       I4, 128, false, BL, false);
    q4({"int4 bf16 g32 zeros, H I of 16 not 32 (scalar)", DYNMOE_BF16, "decode", 144, 80, 4, {1, 7, 0, 5}, 2}, I4,
       32, true, BL, true);
    q4({"int4 f32 g32 zeros, RELU2", DYNMOE_F32, "decode", 96, 160, 3, {1, 9, 0, 17}, 1, RELU2}, I4, 32, true, BL,
       true);
    /* issue 16, item 3: the tensor-core prefill path with B tiles dequantized in shared memory
     * (every dtype but f32); experts of 1 .. 300 rows, H / I of the tile and not, vector and
     * scalar raw loads, K tails inside a k-tile, every INT4 group with and without zeros and a
     * ragged last group, scales of 0 and NaN, SWIGLU and a non-gated act */
    const auto R = ragged();
    q8({"prefill fp8 bf16 H I of the tile, 2 x 2 scale blocks", DYNMOE_BF16, "prefill", 256, 128, 4, R, 2}, BL,
       false);
    q8({"prefill fp8 f16 H I of neither (scalar), RELU2, biases", DYNMOE_F16, "prefill", 203, 77, 4, R, 1, RELU2}, BL,
       true);
    q8({"prefill fp8 bf16 H of 16 not 32, I of 16, interleaved", DYNMOE_BF16, "prefill", 144, 80, 4, R, 2}, IL,
       false);
    q4({"prefill mxfp4 bf16 H I of the tile, SWIGLU", DYNMOE_BF16, "prefill", 256, 128, 4, R, 2}, MX, 32, false, BL,
       false);
    q4({"prefill mxfp4 f16 RELU2 (2 column tiles), biases", DYNMOE_F16, "prefill", 96, 160, 4, R, 1, RELU2}, MX, 32,
       false, BL, true);
    q4({"prefill int4 bf16 g128 zeros, ragged last group", DYNMOE_BF16, "prefill", 320, 96, 4, R, 2}, I4, 128, true,
       BL, false);
    q4({"prefill int4 f16 g64 no zeros, ragged group (scalar)", DYNMOE_F16, "prefill", 200, 72, 4, R, 2}, I4, 64,
       false, BL, false);
    q4({"prefill int4 bf16 g128 no zeros, H I odd, RELU2", DYNMOE_BF16, "prefill", 203, 77, 4, R, 1, RELU2}, I4, 128,
       false, BL, true);
    q4({"prefill int4 f16 g32 zeros, OAI interleaved, biases", DYNMOE_F16, "prefill", 256, 128, 4, R, 2, OAI}, I4, 32,
       true, IL, true);
    q4({"prefill int4 bf16 g32 no zeros, H I of 32", DYNMOE_BF16, "prefill", 96, 160, 4, R, 2}, I4, 32, false, BL,
       false);
    q4({"prefill int4 f16 g64 zeros, H I of 64", DYNMOE_F16, "prefill", 192, 128, 4, R, 2}, I4, 64, true, BL, false);
    /* scales of 0 and NaN, both paths */
    for (const char *path : {"prefill", "decode"}) {
        const std::string pa = path;
        Case c8{pa + " fp8 bf16 scales 0 and NaN", DYNMOE_BF16, path, 256, 144, 4, R, 2};
        c8.fp8 = true, c8.edge = true;
        v.push_back(c8);
        Case cm{pa + " mxfp4 f16 scale NaN (0xff)", DYNMOE_F16, path, 128, 96, 4, R, 2};
        cm.nib = MX, cm.group = 32, cm.edge = true;
        v.push_back(cm);
        Case ci{pa + " int4 bf16 g64 zeros, scales 0 and NaN", DYNMOE_BF16, path, 192, 96, 4, R, 2};
        ci.nib = I4, ci.group = 64, ci.zeros = true, ci.edge = true;
        v.push_back(ci);
        /* the e4m3 NaN codes (random_fp8 draws none) through the full-tile / vector decoders */
        Case cn{pa + " fp8 f16 NaN codes 0x7f and 0xff", DYNMOE_F16, path, 256, 128, 4, R, 2};
        cn.fp8 = true, cn.nan_codes = true;
        v.push_back(cn);
        Case cb{pa + " fp8 bf16 scales near 2^106", DYNMOE_BF16, path, 256, 128, 4, R, 2};
        cb.fp8 = true, cb.big_scale = true;
        v.push_back(cb);
        Case cbm{pa + " mxfp4 bf16 scales near 2^116", DYNMOE_BF16, path, 128, 96, 4, R, 2};
        cbm.nib = MX, cbm.group = 32, cbm.big_scale = true;
        v.push_back(cbm);
    }
    return v;
}

/* The pair decoders of experts.cu (dm_*x2_to_f16x2) against quant_rules.h's scalar rules on
 * every input: all 65536 FP8 byte pairs, all 256 nibble pairs; the fp16 value times the decoder's
 * fold is the rule's fp32 bit for bit (NaN: both NaN). Returns the number of mismatches. */
int check_pair_decoders() {
    int bad = 0;
    auto same = [](float a, float b) {
        uint32_t x, y;
        memcpy(&x, &a, 4), memcpy(&y, &b, 4);
        return (std::isnan(a) && std::isnan(b)) || x == y;
    };
    auto lane = [](uint32_t h, int i) { return __half2float(__ushort_as_half((unsigned short)(h >> (16 * i)))); };
    for (uint32_t x = 0; x < 65536; x++) {
        /* this build's decoder (DM_ARCH: sm_80's integer ops, or sm_89's cvt); bits 16-31 must not matter */
        const uint32_t h = dm_fp8x2_to_f16x2(x | 0xabcd0000u);
        for (int i = 0; i < 2; i++) {
            const float want = dm_fp8e4m3_to_f32((uint8_t)(x >> (8 * i))), got = lane(h, i) * DM_FP8_FOLD;
            if (!same(got, want) && bad++ < 5) printf("  fp8 pair %04x lane %d: %g, rule %g\n", x, i, got, want);
        }
    }
    for (uint32_t x = 0; x < 256; x++) {
        const uint32_t h = dm_e2m1x2_to_f16x2(x | 0x12345600u), u = dm_u4x2_to_f16x2(x | 0x12345600u);
        for (int i = 0; i < 2; i++) {
            const uint32_t q = (x >> (4 * i)) & 0xfu;
            const float want = dm_e2m1_to_f32(q), got = lane(h, i) * DM_E2M1_FOLD;
            if (!same(got, want) && bad++ < 5) printf("  e2m1 pair %02x lane %d: %g, rule %g\n", x, i, got, want);
            if (!(lane(u, i) - DM_U4_BIAS == (float)q) && bad++ < 5)
                printf("  u4 pair %02x lane %d: %g\n", x, i, lane(u, i) - DM_U4_BIAS);
        }
    }
    /* the decode step's word spread: nibbles j and j + 4 of a word, every pair of values at every j,
     * the other six nibbles set (they must not matter) */
    for (int j = 0; j < 4; j++)
        for (uint32_t x = 0; x < 256; x++) {
            const uint32_t q0 = x & 0xfu, q1 = x >> 4;
            const uint32_t word = (0x9a5c3e7bu & ~(0xfu << (4 * j)) & ~(0xfu << (4 * j + 16))) | (q0 << (4 * j)) |
                                  (q1 << (4 * j + 16));
            const uint32_t u = dm_u4x8_to_f16x2(word, j);
            for (int i = 0; i < 2; i++) {
                const uint32_t q = dm_nibble((const uint8_t *)&word, 4 * i + j); /* value 4i + j of the word */
                if (!(lane(u, i) - DM_U4_BIAS == (float)q) && bad++ < 5)
                    printf("  u4 word %08x j %d lane %d: %g, rule %u\n", word, j, i, lane(u, i) - DM_U4_BIAS, q);
            }
        }
    printf("%-4s pair decoders against quant_rules.h (65536 fp8 pairs, 256 nibble pairs, 4 x 256 word spreads)\n",
           bad ? "FAIL" : "ok");
    return bad;
}

} // namespace

int main(int argc, char **argv) {
    const uint64_t seed = argc > 1 ? strtoull(argv[1], nullptr, 10) : 20240601;
    int bad = check_pair_decoders() != 0, n = 0;
    for (const Case &c : cases()) {
        /* DM_ARCH changes only the FP8 pair decode (experts.cu's one DM_ARCH test): the
         * sm_89 build runs the FP8 cases, every other case is the sm_80 build's code */
        if (DM_ARCH >= 890 && !c.fp8) continue;
        const auto t0 = std::chrono::steady_clock::now();
        const Result r = run_case(c, seed + (uint64_t)n++);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        printf("%-4s %-48s E %3zu H %3d I %3d: row error %.2e (element %.2e), output %.2e  [%.1fs]\n",
               r.ok ? "ok" : "FAIL", c.name.c_str(), c.rows.size(), c.H, c.I, r.worst_row, r.worst_elem, r.out_err, s);
        bad += !r.ok;
    }
    printf("experts emulation (sm_%d paths, seed %llu): %d of %d cases failed\n", DM_ARCH / 10,
           (unsigned long long)seed, bad, n);
    return bad != 0;
}
