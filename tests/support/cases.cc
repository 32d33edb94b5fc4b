#include "cases.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace dmtest {

namespace {

ModelCase mc(const std::string &name, int32_t E, int32_t K, dynmoe_score score, dynmoe_norm norm,
             int32_t H, int32_t I) {
    ModelCase c;
    c.name = name;
    c.router = make_router(E, K);
    c.router.score = score;
    c.router.norm = norm;
    c.H = H;
    c.I = I;
    return c;
}

} // namespace

std::vector<ModelCase> model_cases() {
    std::vector<ModelCase> v;

    ModelCase qwen3 = mc("qwen3_30b_a3b", 128, 8, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 96, 48);
    v.push_back(qwen3);

    ModelCase ds = mc("deepseek_v3", 256, 8, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED, 112, 24);
    ds.bias = true;
    ds.router.num_groups = 8;
    ds.router.topk_groups = 4;
    ds.router.scale = 2.5f;
    v.push_back(ds);

    ModelCase lc = mc("longcat_flash", 512, 12, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_NONE, 40, 16);
    lc.router.num_zero_experts = 256;
    lc.router.zero_kind = DYNMOE_ZERO_IDENTITY;
    lc.bias = true;
    v.push_back(lc);

    ModelCase zeda = mc("zeda_qwen3", 128, 8, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 72, 40);
    zeda.router.num_zero_experts = 64;
    zeda.router.zero_kind = DYNMOE_ZERO_OUTPUT;
    v.push_back(zeda);

    v.push_back(mc("mixtral", 8, 2, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 256, 128));

    ModelCase olmoe = mc("olmoe", 64, 8, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_NONE, 100, 36);
    olmoe.act = DYNMOE_ACT_GEGLU;
    v.push_back(olmoe);

    ModelCase beam_sel = qwen3;
    beam_sel.name = "beam_qwen3_selected";
    beam_sel.mask = true;
    beam_sel.keep = 0.5;
    beam_sel.H = 80;
    beam_sel.I = 44;
    v.push_back(beam_sel);

    ModelCase beam_kept = beam_sel;
    beam_kept.name = "beam_qwen3_kept";
    beam_kept.router.norm = DYNMOE_NORM_KEPT;
    beam_kept.keep = 0.3;
    beam_kept.H = 65;
    beam_kept.I = 33;
    v.push_back(beam_kept);

    ModelCase beam_ds = ds;
    beam_ds.name = "beam_deepseek_v3";
    beam_ds.mask = true;
    beam_ds.keep = 0.5;
    beam_ds.H = 56;
    beam_ds.I = 20;
    v.push_back(beam_ds);

    ModelCase beam_lc = lc;
    beam_lc.name = "beam_longcat_identity";
    beam_lc.mask = true;
    beam_lc.keep = 0.4;
    beam_lc.router.norm = DYNMOE_NORM_KEPT;
    beam_lc.router.scale = 1.5f;
    v.push_back(beam_lc);

    ModelCase adamoe = zeda;
    adamoe.name = "zeda_beam_kept";
    adamoe.mask = true;
    adamoe.keep = 0.6;
    adamoe.router.norm = DYNMOE_NORM_KEPT;
    adamoe.act = DYNMOE_ACT_GEGLU;
    v.push_back(adamoe);

    ModelCase topp = mc("top_p_0.4", 128, 8, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 64, 48);
    topp.router.select = DYNMOE_SELECT_TOP_P;
    topp.router.top_p = 0.4f;
    v.push_back(topp);

    ModelCase topp_ds = ds;
    topp_ds.name = "top_p_0.6_softmax_bias_groups";
    topp_ds.router.select = DYNMOE_SELECT_TOP_P;
    topp_ds.router.top_p = 0.6f;
    topp_ds.router.score = DYNMOE_SCORE_SOFTMAX;
    topp_ds.H = 48;
    topp_ds.I = 16;
    v.push_back(topp_ds);

    ModelCase thr = mc("threshold", 128, 8, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 70, 30);
    thr.router.select = DYNMOE_SELECT_THRESHOLD;
    thr.router.threshold = 0.03f;
    v.push_back(thr);

    ModelCase thr_sig = mc("threshold_sigmoid_zero", 64, 6, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_KEPT, 64, 32);
    thr_sig.router.select = DYNMOE_SELECT_THRESHOLD;
    thr_sig.router.threshold = 0.8f;
    thr_sig.router.num_zero_experts = 8;
    thr_sig.router.zero_kind = DYNMOE_ZERO_IDENTITY;
    v.push_back(thr_sig);

    ModelCase uni = mc("uniform_beam", 64, 8, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_UNIFORM, 64, 32);
    uni.mask = true;
    uni.keep = 0.5;
    v.push_back(uni);

    ModelCase grp = mc("groups_no_bias_sigmoid", 64, 6, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED, 64, 32);
    grp.router.num_groups = 8;
    grp.router.topk_groups = 3;
    v.push_back(grp);

    ModelCase none = mc("score_none_scale", 32, 4, DYNMOE_SCORE_NONE, DYNMOE_NORM_NONE, 33, 17);
    none.router.scale = 0.5f;
    v.push_back(none);

    /* gpt-oss: softmax over the top-K logits (= softmax over all, renormalised),
     * gate and up interleaved, biases, the clamped SwiGLU. */
    ModelCase oss = mc("gpt_oss", 32, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 72, 40);
    oss.act = DYNMOE_ACT_SWIGLU_OAI;
    oss.ex.gate_up = DYNMOE_GATE_UP_INTERLEAVED;
    oss.ex.bias = true;
    v.push_back(oss);

    ModelCase oss_beam = oss;
    oss_beam.name = "gpt_oss_beam_limit_2";
    oss_beam.mask = true;
    oss_beam.keep = 0.5;
    oss_beam.ex.limit = 2.0;
    oss_beam.ex.alpha = 1.0;
    oss_beam.H = 41;
    oss_beam.I = 19;
    v.push_back(oss_beam);

    /* Llama-4: sigmoid top-1, the routing weight scales the expert's input. */
    ModelCase l4 = mc("llama4", 16, 1, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_NONE, 80, 64);
    l4.router.weight_on_input = 1;
    v.push_back(l4);

    /* Weight on the input with several slots and identity zero experts. */
    ModelCase l4k = mc("weight_on_input_k3_identity", 24, 3, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED, 48, 24);
    l4k.router.weight_on_input = 1;
    l4k.router.num_zero_experts = 4;
    l4k.router.zero_kind = DYNMOE_ZERO_IDENTITY;
    l4k.mask = true;
    l4k.keep = 0.6;
    v.push_back(l4k);

    /* Gemma-4: softmax top-8 renormalised, a learned per-expert scale, GELU (tanh). */
    ModelCase g4 = mc("gemma4", 128, 8, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_SELECTED, 64, 24);
    g4.expert_scale = true;
    g4.act = DYNMOE_ACT_GEGLU_TANH;
    v.push_back(g4);

    /* Nemotron-H: DeepSeek-V3-style sigmoid + bias + groups, non-gated relu^2. */
    ModelCase nh = mc("nemotron_h", 128, 6, DYNMOE_SCORE_SIGMOID, DYNMOE_NORM_SELECTED, 56, 40);
    nh.bias = true;
    nh.router.num_groups = 8;
    nh.router.topk_groups = 4;
    nh.router.scale = 2.5f;
    nh.act = DYNMOE_ACT_RELU2;
    v.push_back(nh);

    /* Non-gated SiLU with biases, expert scale and zero-output experts. */
    ModelCase silu = mc("silu_bias_scale_zero", 32, 4, DYNMOE_SCORE_SOFTMAX, DYNMOE_NORM_KEPT, 37, 21);
    silu.act = DYNMOE_ACT_SILU;
    silu.ex.bias = true;
    silu.expert_scale = true;
    silu.router.num_zero_experts = 8;
    silu.mask = true;
    silu.keep = 0.5;
    v.push_back(silu);

    return v;
}

ModelCase find_case(const std::string &name) {
    for (const ModelCase &c : model_cases())
        if (c.name == name) return c;
    ADD_FAILURE() << "no model case " << name;
    return model_cases()[0];
}

namespace {

double draw_logit(const dynmoe_router &r, Rng &rng) {
    switch (r.score) {
    case DYNMOE_SCORE_SIGMOID: return rng.normal(2.0);
    case DYNMOE_SCORE_NONE: return rng.uniform(-1.0, 1.0);
    default: return rng.normal(2.0);
    }
}

} // namespace

void rereference(const ModelCase &c, int64_t T, RouteInputs &in) {
    in.ref = dmref::route(c.router, T, in.logits.values, in.bias_d(), in.mask.values, in.expert_scale_d());
}

RouteInputs make_route_inputs(const ModelCase &c, int64_t T, dynmoe_dtype dt, Rng &rng) {
    const dynmoe_router &r = c.router;
    const int32_t E = r.num_experts, N = r.num_experts + r.num_zero_experts;
    RouteInputs in;
    if (c.bias) {
        /* comparable to the scores so that the bias changes choices */
        const double b = r.score == DYNMOE_SCORE_SIGMOID ? 0.15 : 4.0 / N;
        in.bias = rng.uniform_vec((size_t)N, -b, b);
    }
    if (c.expert_scale) {
        /* learned scales around 1 (Gemma-4's per_expert_scale starts at 1) */
        in.expert_scale = rng.uniform_vec((size_t)N, 0.25, 2.0);
    }
    in.logits = pack(std::vector<float>((size_t)(T * N), 0.0f), dt);
    if (c.mask) {
        in.mask = pack(std::vector<float>((size_t)(T * E), 0.0f), dt);
        for (int64_t i = 0; i < T * E; i++) {
            double mag = rng.uniform(0.25, 3.0);
            set_packed(in.mask, (size_t)i, (float)(rng.uniform(0.0, 1.0) < c.keep ? mag : -mag));
        }
    }
    std::vector<double> bias = in.bias_d();
    std::vector<int32_t> ids((size_t)r.top_k);
    std::vector<double> w((size_t)r.top_k);
    for (int64_t t = 0; t < T; t++) {
        double margin = 0.0;
        int tries = 0;
        do {
            for (int32_t e = 0; e < N; e++) set_packed(in.logits, (size_t)(t * N + e), (float)draw_logit(r, rng));
            dmref::route_token(r, &in.logits.values[(size_t)(t * N)], bias.empty() ? nullptr : bias.data(),
                               nullptr, ids.data(), w.data(), &margin);
        } while (margin < kMinMargin && ++tries < 2000);
        if (margin < kMinMargin) {
            ADD_FAILURE() << c.name << ": could not draw a tie-free row in 2000 tries (token " << t << ")";
            break;
        }
    }
    rereference(c, T, in);
    return in;
}

void retie_free(const ModelCase &c, int64_t T, RouteInputs &in, Rng &rng) {
    const int32_t N = c.router.num_experts + c.router.num_zero_experts;
    rereference(c, T, in);
    for (int64_t t = 0; t < T; t++) {
        int tries = 0;
        while (in.ref.margin[(size_t)t] < kMinMargin && tries++ < 2000) {
            for (int32_t e = 0; e < N; e++)
                if (std::isfinite(in.logits.values[(size_t)(t * N + e)]))
                    set_packed(in.logits, (size_t)(t * N + e), (float)draw_logit(c.router, rng));
            rereference(c, T, in);
        }
        if (in.ref.margin[(size_t)t] < kMinMargin) ADD_FAILURE() << c.name << ": no tie-free redraw of token " << t;
    }
}

ExpertWeights make_experts(int32_t E, int32_t H, int32_t I, dynmoe_act act, dynmoe_dtype dt, Rng &rng,
                           const ExpertOptions &opt) {
    ExpertWeights w;
    const size_t rows = dmref::gated(act) ? 2 * (size_t)I : (size_t)I;
    /* SWIGLU_OAI clamps at limit: spread h over a few units so clamps happen */
    const double spread = act == DYNMOE_ACT_SWIGLU_OAI ? 3.0 * opt.limit / 7.0 + 1.0 : 1.0;
    const double a = spread * std::sqrt(3.0 / H), b = std::sqrt(3.0 / I);
    w.w13 = pack(rng.uniform_vec((size_t)E * rows * H, -a, a), dt);
    w.w2 = pack(rng.uniform_vec((size_t)E * H * I, -b * 2, b * 2), dt);
    if (opt.format != DYNMOE_WEIGHTS_PLAIN) {
        /* the codes replace the plain weights; the reference sees their values */
        w.q13 = quantize(w.w13.values, E, (int64_t)rows, H, opt.format, opt.group, opt.zeros);
        w.q2 = quantize(w.w2.values, E, H, I, opt.format, opt.group, opt.zeros);
        w.w13.bytes = w.q13.q;
        w.w13.values = dmref::dequantize(w.q13, E, (int64_t)rows, H);
        w.w2.bytes = w.q2.q;
        w.w2.values = dmref::dequantize(w.q2, E, H, I);
    }
    if (opt.bias) {
        w.b13 = pack(rng.uniform_vec((size_t)E * rows, -0.5, 0.5), dt);
        w.b2 = pack(rng.uniform_vec((size_t)E * H, -0.5, 0.5), dt);
    }
    w.ref.E = E;
    w.ref.H = H;
    w.ref.I = I;
    w.ref.act = act;
    w.ref.gate_up = opt.gate_up;
    w.ref.alpha = opt.alpha;
    w.ref.limit = opt.limit;
    w.ref.w13 = w.w13.values;
    w.ref.w2 = w.w2.values;
    w.ref.b13 = w.b13.values;
    w.ref.b2 = w.b2.values;
    return w;
}

namespace {

/* The code among `codes` (decoded by `value`) nearest to v. */
template <class F> uint8_t nearest_code(double v, int ncodes, F value) {
    uint8_t best = 0;
    double bd = std::numeric_limits<double>::infinity();
    for (int c = 0; c < ncodes; c++) {
        const double d = std::fabs(value((uint8_t)c) - v);
        if (d < bd) bd = d, best = (uint8_t)c;
    }
    return best;
}

} // namespace

dmref::QuantMatrix quantize(const std::vector<double> &w, int32_t E, int64_t N, int64_t K, dynmoe_weight_format f,
                            int32_t group, bool zeros) {
    dmref::QuantMatrix m;
    m.format = f;
    m.group = group;
    auto at = [&](int32_t e, int64_t n, int64_t k) { return w[(size_t)((e * N + n) * K + k)]; };
    if (f == DYNMOE_WEIGHTS_FP8_BLOCK) {
        /* per 128 x 128 block: scale = max |w| / 448 (e4m3's largest), codes to nearest */
        const int64_t nb = (N + 127) / 128, kb = (K + 127) / 128;
        m.q.assign((size_t)(E * N * K), 0);
        m.scale_f32.assign((size_t)(E * nb * kb), 1.0f);
        std::vector<double> pos(127);
        for (int c = 0; c < 127; c++) pos[(size_t)c] = dmref::fp8_e4m3((uint8_t)c);
        for (int32_t e = 0; e < E; e++)
            for (int64_t bn = 0; bn < nb; bn++)
                for (int64_t bk = 0; bk < kb; bk++) {
                    double mx = 0.0;
                    for (int64_t n = bn * 128; n < std::min(N, bn * 128 + 128); n++)
                        for (int64_t k = bk * 128; k < std::min(K, bk * 128 + 128); k++) mx = std::max(mx, std::fabs(at(e, n, k)));
                    const float sc = mx > 0 ? (float)(mx / 448.0) : 1.0f;
                    m.scale_f32[(size_t)((e * nb + bn) * kb + bk)] = sc;
                    for (int64_t n = bn * 128; n < std::min(N, bn * 128 + 128); n++)
                        for (int64_t k = bk * 128; k < std::min(K, bk * 128 + 128); k++) {
                            const double v = at(e, n, k) / sc;
                            const uint8_t c = (uint8_t)(std::lower_bound(pos.begin(), pos.end(), std::fabs(v)) - pos.begin());
                            uint8_t best = c > 126 ? 126 : c;
                            if (best > 0 && std::fabs(pos[best - 1] - std::fabs(v)) < std::fabs(pos[best] - std::fabs(v))) best--;
                            m.q[(size_t)((e * N + n) * K + k)] = (uint8_t)(best | (v < 0 ? 0x80 : 0));
                        }
                }
        return m;
    }
    const int64_t row_bytes = (K + 1) / 2;
    m.q.assign((size_t)(E * N * row_bytes), 0);
    auto put = [&](int32_t e, int64_t n, int64_t k, uint8_t nib) {
        uint8_t &b = m.q[(size_t)((e * N + n) * row_bytes + k / 2)];
        b = (uint8_t)(k % 2 == 0 ? (b & 0xf0) | nib : (b & 0x0f) | (nib << 4));
    };
    if (f == DYNMOE_WEIGHTS_MXFP4) {
        /* per 32 values: the smallest power of two that brings max |w| within 6 */
        const int64_t kb = K / 32;
        m.scale_u8.assign((size_t)(E * N * kb), 127);
        for (int32_t e = 0; e < E; e++)
            for (int64_t n = 0; n < N; n++)
                for (int64_t bk = 0; bk < kb; bk++) {
                    double mx = 0.0;
                    for (int64_t k = bk * 32; k < bk * 32 + 32; k++) mx = std::max(mx, std::fabs(at(e, n, k)));
                    const int s = mx > 0 ? std::max(1, std::min(254, 127 + (int)std::ceil(std::log2(mx / 6.0)))) : 127;
                    m.scale_u8[(size_t)((e * N + n) * kb + bk)] = (uint8_t)s;
                    const double sc = dmref::ue8m0((uint8_t)s);
                    for (int64_t k = bk * 32; k < bk * 32 + 32; k++)
                        put(e, n, k, nearest_code(at(e, n, k) / sc, 16, dmref::e2m1));
                }
        return m;
    }
    /* INT4: per group, asymmetric (zeros) or symmetric around 8 */
    const int64_t kb = (K + group - 1) / group;
    m.scale_f16.assign((size_t)(E * N * kb), 0);
    if (zeros) m.zero.assign((size_t)(E * N * kb), 8);
    for (int32_t e = 0; e < E; e++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t g = 0; g < kb; g++) {
                const int64_t k0 = g * group, k1 = std::min(K, k0 + group);
                double lo = 0.0, hi = 0.0;
                for (int64_t k = k0; k < k1; k++) lo = std::min(lo, at(e, n, k)), hi = std::max(hi, at(e, n, k));
                double sc = zeros ? (hi - lo) / 15.0 : std::max(hi, -lo) / 7.0;
                if (!(sc > 0)) sc = 1.0;
                const uint16_t sh = dmref::f32_to_f16((float)sc);
                sc = dmref::f16_to_f32(sh);
                const size_t gi = (size_t)((e * N + n) * kb + g);
                m.scale_f16[gi] = sh;
                double z = 8.0;
                if (zeros) {
                    z = std::max(0.0, std::min(15.0, std::round(-lo / sc)));
                    m.zero[gi] = (uint8_t)z;
                }
                for (int64_t k = k0; k < k1; k++)
                    put(e, n, k, (uint8_t)std::max(0.0, std::min(15.0, std::round(at(e, n, k) / sc + z))));
            }
    return m;
}

} // namespace dmtest
