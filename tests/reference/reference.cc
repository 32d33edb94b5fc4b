/*
 * reference.cc — see reference.h. Naive on purpose: every rule is written
 * the way DESIGN.md section 2 states it, in double precision.
 */
#include "reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

namespace dmref {

namespace {

const double kInf = std::numeric_limits<double>::infinity();

/* Rounds a finite double to `bits` significant bits, round to nearest even,
 * with quanta no smaller than `min_quantum` (the subnormal step). */
double round_to_bits(double v, int bits, double min_quantum) {
    if (v == 0.0) return v;
    int e = 0;
    std::frexp(v, &e); /* |v| = m * 2^e, m in [0.5, 1) */
    double quantum = std::max(std::ldexp(1.0, e - bits), min_quantum);
    return std::nearbyint(v / quantum) * quantum; /* default mode: ties to even */
}

uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

/* Relative gap of two values that decide something; `scale` is the size of
 * the terms they were computed from. */
double rel_gap(double a, double b, double scale) {
    if (!(scale > 0)) scale = 1e-300;
    return std::fabs(a - b) / scale;
}

} // namespace

/* ---- scalars ------------------------------------------------------------ */

uint16_t f32_to_bf16(float v) {
    uint32_t sign = float_bits(v) & 0x80000000u;
    if (std::isnan(v)) return (uint16_t)((sign >> 16) | 0x7fc0u);
    if (std::isinf(v)) return (uint16_t)((sign >> 16) | 0x7f80u);
    double r = round_to_bits((double)v, 8, std::ldexp(1.0, -133));
    if (std::fabs(r) >= std::ldexp(1.0, 128)) return (uint16_t)((sign >> 16) | 0x7f80u);
    uint32_t u = float_bits((float)r) | sign; /* r fits a float exactly, low 16 bits zero */
    return (uint16_t)(u >> 16);
}

float bf16_to_f32(uint16_t h) { return bits_float((uint32_t)h << 16); }

uint16_t f32_to_f16(float v) {
    uint16_t sign = (float_bits(v) & 0x80000000u) ? 0x8000u : 0u;
    if (std::isnan(v)) return (uint16_t)(sign | 0x7e00u);
    if (std::isinf(v)) return (uint16_t)(sign | 0x7c00u);
    double r = std::fabs(round_to_bits((double)v, 11, std::ldexp(1.0, -24)));
    if (r >= 65536.0) return (uint16_t)(sign | 0x7c00u);
    if (r == 0.0) return sign;
    if (r < std::ldexp(1.0, -14)) return (uint16_t)(sign | (uint16_t)(r / std::ldexp(1.0, -24)));
    int e = 0;
    double m = std::frexp(r, &e); /* r = m 2^e, m in [0.5, 1): value = (1+f) 2^(e-1) */
    uint32_t exp_field = (uint32_t)(e - 1 + 15);
    uint32_t man = (uint32_t)((m * 2.0 - 1.0) * 1024.0);
    return (uint16_t)(sign | (exp_field << 10) | man);
}

float f16_to_f32(uint16_t h) {
    double sign = (h & 0x8000u) ? -1.0 : 1.0;
    int exp_field = (h >> 10) & 0x1f;
    int man = h & 0x3ff;
    if (exp_field == 0x1f)
        return man ? std::numeric_limits<float>::quiet_NaN()
                   : (float)(sign * std::numeric_limits<double>::infinity());
    if (exp_field == 0) return (float)(sign * man * std::ldexp(1.0, -24));
    return (float)(sign * (1.0 + man / 1024.0) * std::ldexp(1.0, exp_field - 15));
}

double load(const void *p, dynmoe_dtype dt, int64_t i) {
    switch (dt) {
    case DYNMOE_F16: return f16_to_f32(static_cast<const uint16_t *>(p)[i]);
    case DYNMOE_BF16: return bf16_to_f32(static_cast<const uint16_t *>(p)[i]);
    default: return static_cast<const float *>(p)[i];
    }
}

size_t dtype_size(dynmoe_dtype dt) { return dt == DYNMOE_F32 ? 4 : 2; }

double silu(double g) { return g / (1.0 + std::exp(-g)); }
double gelu_erf(double g) { return 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0))); }
double gelu_tanh(double g) {
    const double pi = 3.14159265358979323846;
    return 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (g + 0.044715 * g * g * g)));
}

/* ---- routing ------------------------------------------------------------ */

bool route_token(const dynmoe_router &r, const double *logits, const double *bias,
                 const double *mask, int32_t *ids, double *w, double *margin,
                 const double *expert_scale) {
    const int32_t E = r.num_experts, N = r.num_experts + r.num_zero_experts, K = r.top_k;
    double m = kInf;
    for (int32_t k = 0; k < K; k++) {
        ids[k] = -1;
        w[k] = 0.0;
    }

    /* A token with no finite logit gets empty slots. */
    bool any_finite = false;
    for (int32_t e = 0; e < N; e++) any_finite |= std::isfinite(logits[e]);
    if (!any_finite) {
        *margin = m;
        return true;
    }

    /* 1. scores: softmax over the finite logits of all E+Z experts; a
     * non-finite logit scores 0 and is never chosen. */
    std::vector<double> s(N, 0.0);
    if (r.score == DYNMOE_SCORE_SOFTMAX) {
        double mx = -kInf, sum = 0.0;
        for (int32_t e = 0; e < N; e++)
            if (std::isfinite(logits[e])) mx = std::max(mx, logits[e]);
        for (int32_t e = 0; e < N; e++)
            if (std::isfinite(logits[e])) sum += std::exp(logits[e] - mx);
        for (int32_t e = 0; e < N; e++)
            if (std::isfinite(logits[e])) s[e] = std::exp(logits[e] - mx) / sum;
    } else {
        for (int32_t e = 0; e < N; e++) {
            if (!std::isfinite(logits[e])) continue;
            s[e] = r.score == DYNMOE_SCORE_SIGMOID ? 1.0 / (1.0 + std::exp(-logits[e])) : logits[e];
        }
    }

    /* 2. choice values c = s + b; eligibility. */
    std::vector<double> c(N), size(N);
    std::vector<bool> eligible(N);
    for (int32_t e = 0; e < N; e++) {
        double b = bias ? bias[e] : 0.0;
        c[e] = s[e] + b;
        size[e] = std::fabs(s[e]) + std::fabs(b);
        eligible[e] = std::isfinite(logits[e]) && std::isfinite(c[e]);
        if (r.select == DYNMOE_SELECT_THRESHOLD && std::isfinite(logits[e])) {
            m = std::min(m, rel_gap(s[e], r.threshold,
                                    std::fabs(s[e]) + std::fabs((double)r.threshold)));
            if (!(s[e] > (double)r.threshold)) eligible[e] = false;
        }
    }

    /* 3. DeepSeek-V3 group limit over the real experts only. */
    if (r.num_groups > 0) {
        const int32_t G = r.num_groups;
        std::vector<double> gscore(G, -kInf), gsize(G, 0.0);
        for (int32_t j = 0; j < G; j++) {
            const int32_t b0 = (int32_t)((int64_t)j * E / G), b1 = (int32_t)((int64_t)(j + 1) * E / G);
            std::vector<int32_t> members;
            for (int32_t e = b0; e < b1; e++)
                if (eligible[e]) members.push_back(e);
            if (members.empty()) continue;
            if (bias) {
                /* sum of the two largest c */
                std::sort(members.begin(), members.end(),
                          [&](int32_t a, int32_t b) { return c[a] > c[b]; });
                gscore[j] = c[members[0]];
                gsize[j] = size[members[0]];
                if (members.size() > 1) {
                    gscore[j] += c[members[1]];
                    gsize[j] += size[members[1]];
                }
            } else {
                for (int32_t e : members)
                    if (s[e] > gscore[j]) {
                        gscore[j] = s[e];
                        gsize[j] = std::fabs(s[e]);
                    }
            }
        }
        std::vector<int32_t> order;
        for (int32_t j = 0; j < G; j++)
            if (std::isfinite(gscore[j])) order.push_back(j);
        std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
            return gscore[a] > gscore[b] || (gscore[a] == gscore[b] && a < b);
        });
        const size_t kept = std::min<size_t>((size_t)r.topk_groups, order.size());
        if (kept < order.size()) {
            int32_t a = order[kept - 1], b = order[kept];
            m = std::min(m, rel_gap(gscore[a], gscore[b], gsize[a] + gsize[b]));
        }
        std::vector<bool> keep(G, false);
        for (size_t i = 0; i < kept; i++) keep[order[i]] = true;
        for (int32_t j = 0; j < G; j++) {
            if (keep[j]) continue;
            const int32_t b0 = (int32_t)((int64_t)j * E / G), b1 = (int32_t)((int64_t)(j + 1) * E / G);
            for (int32_t e = b0; e < b1; e++) eligible[e] = false;
        }
    }

    /* 4. selection: eligible experts by (c desc, id asc), at most K. */
    std::vector<int32_t> cand;
    for (int32_t e = 0; e < N; e++)
        if (eligible[e]) cand.push_back(e);
    std::sort(cand.begin(), cand.end(),
              [&](int32_t a, int32_t b) { return c[a] > c[b] || (c[a] == c[b] && a < b); });
    int32_t n = (int32_t)std::min<size_t>((size_t)K, cand.size());
    for (int32_t i = 0; i + 1 < (int32_t)cand.size() && i < n; i++) {
        int32_t a = cand[i], b = cand[i + 1];
        m = std::min(m, rel_gap(c[a], c[b], size[a] + size[b]));
    }

    /* top-p: keep the sorted prefix while the cumulative score before the
     * expert is < top_p; at least 1. */
    if (r.select == DYNMOE_SELECT_TOP_P && n > 0) {
        double cum = s[cand[0]];
        int32_t kept = 1;
        while (kept < n) {
            m = std::min(m, rel_gap(cum, r.top_p, 1.0));
            if (!(cum < (double)r.top_p)) break;
            cum += s[cand[kept]];
            kept++;
        }
        n = kept;
    }

    /* 5. BEAM mask, norm, scale. Slot i is selection i or empty. */
    double sum_selected = 0.0, sum_kept = 0.0;
    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++) {
        const int32_t id = cand[i];
        const bool real = id < E;
        sum_selected += s[id];
        if (real && mask && !(mask[id] > 0.0)) continue;
        ids[i] = id;
        w[i] = s[id];
        kept++;
        if (real) sum_kept += s[id];
    }
    double div = 1.0;
    if (r.norm == DYNMOE_NORM_SELECTED) div = sum_selected;
    if (r.norm == DYNMOE_NORM_KEPT) div = sum_kept;
    for (int32_t i = 0; i < K; i++) {
        if (ids[i] < 0) continue;
        if (r.norm == DYNMOE_NORM_UNIFORM)
            w[i] = 1.0 / kept;
        else if (div != 0.0 && std::isfinite(div))
            w[i] = w[i] / div;
        if (expert_scale) w[i] *= expert_scale[ids[i]];
        w[i] *= r.scale;
    }
    *margin = m;
    return false;
}

RouteResult route(const dynmoe_router &r, int64_t T, const std::vector<double> &logits,
                  const std::vector<double> &bias, const std::vector<double> &mask,
                  const std::vector<double> &expert_scale) {
    const int32_t E = r.num_experts, N = r.num_experts + r.num_zero_experts, K = r.top_k;
    RouteResult res;
    res.table.T = T;
    res.table.S = K;
    res.table.ids.assign((size_t)(T * K), -1);
    res.table.weights.assign((size_t)(T * K), 0.0);
    res.margin.assign((size_t)T, kInf);
    for (int64_t t = 0; t < T; t++) {
        bool nonfinite = route_token(r, &logits[(size_t)(t * N)], bias.empty() ? nullptr : bias.data(),
                                     mask.empty() ? nullptr : &mask[(size_t)(t * E)],
                                     &res.table.ids[(size_t)(t * K)],
                                     &res.table.weights[(size_t)(t * K)], &res.margin[(size_t)t],
                                     expert_scale.empty() ? nullptr : expert_scale.data());
        res.nonfinite_rows += nonfinite ? 1 : 0;
    }
    return res;
}

RouteResult route_tasks(const dynmoe_router &r, int64_t T, int32_t H, const std::vector<double> &x,
                        const std::vector<double> &task_logits,
                        const std::vector<double> &task_weights, const std::vector<double> &bias,
                        const std::vector<double> &expert_scale) {
    const int32_t N = r.num_experts + r.num_zero_experts, K = r.top_k, R = r.num_tasks,
                  P = r.top_tasks, S = P * K;
    RouteResult res;
    res.table.T = T;
    res.table.S = S;
    res.table.ids.assign((size_t)(T * S), -1);
    res.table.weights.assign((size_t)(T * S), 0.0);
    res.margin.assign((size_t)T, kInf);
    std::vector<double> logits(N);
    for (int64_t t = 0; t < T; t++) {
        double m = kInf;
        const double *tl = &task_logits[(size_t)(t * R)];
        std::vector<int32_t> tasks(R);
        std::iota(tasks.begin(), tasks.end(), 0);
        std::sort(tasks.begin(), tasks.end(), [&](int32_t a, int32_t b) {
            return tl[a] > tl[b] || (tl[a] == tl[b] && a < b);
        });
        for (int32_t i = 0; i < P && i + 1 < R; i++)
            m = std::min(m, rel_gap(tl[tasks[i]], tl[tasks[i + 1]],
                                    std::fabs(tl[tasks[i]]) + std::fabs(tl[tasks[i + 1]])));
        int32_t *ids = &res.table.ids[(size_t)(t * S)];
        double *w = &res.table.weights[(size_t)(t * S)];
        for (int32_t i = 0; i < P; i++) {
            const int32_t task = tasks[i];
            for (int32_t e = 0; e < N; e++) {
                double acc = 0.0;
                const double *wr = &task_weights[((size_t)task * N + e) * H];
                for (int32_t h = 0; h < H; h++) acc += wr[h] * x[(size_t)(t * H + h)];
                logits[e] = acc;
            }
            double tm = kInf;
            bool nonfinite = route_token(r, logits.data(), bias.empty() ? nullptr : bias.data(),
                                         nullptr, ids + i * K, w + i * K, &tm,
                                         expert_scale.empty() ? nullptr : expert_scale.data());
            m = std::min(m, tm);
            res.nonfinite_rows += nonfinite ? 1 : 0;
        }
        /* An expert chosen by several tasks keeps its first slot with the
         * summed weight; its later slots become empty. */
        for (int32_t j = 0; j < S; j++) {
            if (ids[j] < 0) continue;
            for (int32_t i = 0; i < j; i++) {
                if (ids[i] == ids[j]) {
                    w[i] += w[j];
                    ids[j] = -1;
                    w[j] = 0.0;
                    break;
                }
            }
        }
        res.margin[(size_t)t] = m;
    }
    return res;
}

/* ---- plan --------------------------------------------------------------- */

Plan plan(int32_t E, int64_t T, int32_t S, const std::vector<int32_t> &ids) {
    Plan p;
    const int64_t n = T * S;
    p.counts.assign((size_t)E, 0);
    for (int64_t q = 0; q < n; q++)
        if (ids[(size_t)q] >= 0 && ids[(size_t)q] < E) p.counts[(size_t)ids[(size_t)q]]++;
    p.offsets.assign((size_t)E + 1, 0);
    for (int32_t e = 0; e < E; e++) p.offsets[(size_t)e + 1] = p.offsets[(size_t)e] + p.counts[(size_t)e];
    /* Stable by (expert, token, slot): slot number q = t*S + k already orders
     * (token, slot), so a stable counting sort over q is the definition. */
    p.sorted_slots.assign((size_t)p.offsets[(size_t)E], -1);
    p.slot_rows.assign((size_t)n, -1);
    std::vector<int32_t> next(p.offsets.begin(), p.offsets.end() - 1);
    for (int64_t q = 0; q < n; q++) {
        const int32_t id = ids[(size_t)q];
        if (id < 0 || id >= E) continue;
        const int32_t row = next[(size_t)id]++;
        p.sorted_slots[(size_t)row] = (int32_t)q;
        p.slot_rows[(size_t)q] = row;
    }
    for (int32_t e = 0; e < E; e++)
        if (p.counts[(size_t)e] > 0) p.active.push_back(e);
    return p;
}

dynmoe_stats table_stats(int32_t E, int32_t Z, int64_t T, int32_t S,
                         const std::vector<int32_t> &ids, int64_t nonfinite_rows) {
    dynmoe_stats st;
    std::memset(&st, 0, sizeof st);
    st.tokens = T;
    st.nonfinite_rows = nonfinite_rows;
    std::vector<int64_t> counts((size_t)E, 0);
    for (int64_t q = 0; q < T * S; q++) {
        const int32_t id = ids[(size_t)q];
        if (id == -1)
            st.empty_slots++;
        else if (id >= 0 && id < E)
            counts[(size_t)id]++;
        else if (id >= E && id < E + Z)
            st.zero_expert_slots++;
        else
            st.invalid_ids++;
    }
    for (int32_t e = 0; e < E; e++) {
        st.routed_slots += counts[(size_t)e];
        st.active_experts += counts[(size_t)e] > 0 ? 1 : 0;
        st.max_expert_rows = std::max(st.max_expert_rows, counts[(size_t)e]);
    }
    st.overflow_slots = 0;
    return st;
}

/* ---- experts and combine ------------------------------------------------ */

bool gated(dynmoe_act act) { return !(act == DYNMOE_ACT_RELU2 || act == DYNMOE_ACT_SILU); }

/* The activation of one hidden unit from its gate and up values (up unused
 * when not gated), as include/dynmoe.h documents each dynmoe_act. */
static double activate(const Experts &ex, double gate, double up) {
    switch (ex.act) {
    case DYNMOE_ACT_GEGLU: return gelu_erf(gate) * up;
    case DYNMOE_ACT_GEGLU_TANH: return gelu_tanh(gate) * up;
    case DYNMOE_ACT_SWIGLU_OAI: {
        const double g = std::min(gate, ex.limit), u = std::max(-ex.limit, std::min(up, ex.limit));
        return (u + 1.0) * g / (1.0 + std::exp(-ex.alpha * g));
    }
    case DYNMOE_ACT_RELU2: return gate > 0.0 ? gate * gate : 0.0;
    case DYNMOE_ACT_SILU: return silu(gate);
    default: return silu(gate) * up;
    }
}

void ffn(const Experts &ex, int32_t e, const double *x, double *y) {
    const int64_t H = ex.H, I = ex.I, rows = gated(ex.act) ? 2 * I : I;
    const double *w13 = &ex.w13[(size_t)(e * rows * H)];
    const double *w2 = &ex.w2[(size_t)e * H * I];
    /* h = W13 x + b13, in w13's own row order */
    std::vector<double> h((size_t)rows);
    for (int64_t n = 0; n < rows; n++) {
        double acc = ex.b13.empty() ? 0.0 : ex.b13[(size_t)(e * rows + n)];
        for (int64_t k = 0; k < H; k++) acc += w13[n * H + k] * x[k];
        h[(size_t)n] = acc;
    }
    std::vector<double> a((size_t)I);
    for (int64_t i = 0; i < I; i++) {
        if (!gated(ex.act)) {
            a[(size_t)i] = activate(ex, h[(size_t)i], 0.0);
        } else if (ex.gate_up == DYNMOE_GATE_UP_INTERLEAVED) {
            a[(size_t)i] = activate(ex, h[(size_t)(2 * i)], h[(size_t)(2 * i + 1)]);
        } else {
            a[(size_t)i] = activate(ex, h[(size_t)i], h[(size_t)(I + i)]);
        }
    }
    for (int64_t n = 0; n < H; n++) {
        double acc = ex.b2.empty() ? 0.0 : ex.b2[(size_t)(e * H + n)];
        for (int64_t i = 0; i < I; i++) acc += w2[n * I + i] * a[(size_t)i];
        y[n] = acc;
    }
}

void experts_forward(const Experts &ex, int32_t Z, dynmoe_zero_kind zero_kind, int64_t T,
                     const std::vector<double> &x, const Table &table, std::vector<double> &out,
                     const std::vector<int64_t> &tokens, bool weight_on_input) {
    const int32_t E = ex.E, H = ex.H, S = table.S;
    out.assign((size_t)(T * H), 0.0);
    std::vector<double> y((size_t)H), wx((size_t)H);
    auto one = [&](int64_t t) {
        const double *xt = &x[(size_t)(t * H)];
        double *ot = &out[(size_t)(t * H)];
        for (int32_t k = 0; k < S; k++) {
            const int32_t id = table.ids[(size_t)(t * S + k)];
            const double w = table.weights[(size_t)(t * S + k)];
            if (id >= 0 && id < E && weight_on_input) {
                for (int32_t h = 0; h < H; h++) wx[(size_t)h] = w * xt[h];
                ffn(ex, id, wx.data(), y.data());
                for (int32_t h = 0; h < H; h++) ot[h] += y[(size_t)h];
            } else if (id >= 0 && id < E) {
                ffn(ex, id, xt, y.data());
                for (int32_t h = 0; h < H; h++) ot[h] += w * y[(size_t)h];
            } else if (id >= E && id < E + Z && zero_kind == DYNMOE_ZERO_IDENTITY) {
                for (int32_t h = 0; h < H; h++) ot[h] += w * xt[h];
            }
        }
    };
    if (tokens.empty())
        for (int64_t t = 0; t < T; t++) one(t);
    else
        for (int64_t t : tokens) one(t);
}

} // namespace dmref
