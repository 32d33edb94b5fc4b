#include "run.h"

#include <cmath>
#include <memory>

namespace dmtest {

StatsBlock::StatsBlock(dynmoe_ctx *ctx, dynmoe_backend b) : ctx_(ctx), buf_(b, sizeof(dynmoe_stats)) {
    poison();
    EXPECT_EQ(dynmoe_ctx_set_stats(ctx_, buf_.as<dynmoe_stats>()), DYNMOE_OK) << dynmoe_last_error();
}

StatsBlock::~StatsBlock() { EXPECT_EQ(dynmoe_ctx_set_stats(ctx_, nullptr), DYNMOE_OK); }

void StatsBlock::poison() { buf_.fill(kPoisonInt); }

dynmoe_stats StatsBlock::read() const {
    dynmoe_stats s;
    buf_.download(&s, sizeof s);
    return s;
}

std::vector<float> to_float(const std::vector<double> &v) { return std::vector<float>(v.begin(), v.end()); }

dynmoe_experts make_experts_desc(const dynmoe_router &r, int32_t H, int32_t I, dynmoe_dtype dt,
                                 dynmoe_act act, const void *w13, const void *w2) {
    dynmoe_experts x = DYNMOE_EXPERTS_INIT;
    x.num_experts = r.num_experts;
    x.hidden = H;
    x.inter = I;
    x.dtype = dt;
    x.act = act;
    x.w13 = w13;
    x.w2 = w2;
    return x;
}

BackendExperts upload_experts(dynmoe_backend b, const dynmoe_router &r, const ExpertWeights &w, dynmoe_dtype dt) {
    BackendExperts e;
    e.w13 = make_buffer(b, w.w13.bytes);
    e.w2 = make_buffer(b, w.w2.bytes);
    e.b13 = make_buffer(b, w.b13.bytes);
    e.b2 = make_buffer(b, w.b2.bytes);
    e.desc = make_experts_desc(r, w.ref.H, w.ref.I, dt, w.ref.act, e.w13.get(), e.w2.get());
    e.desc.gate_up = w.ref.gate_up;
    e.desc.alpha = (float)w.ref.alpha;
    e.desc.limit = (float)w.ref.limit;
    if (w.b13.size()) e.desc.b13 = e.b13.get();
    if (w.b2.size()) e.desc.b2 = e.b2.get();
    const dmref::QuantMatrix *q[2] = {&w.q13, &w.q2};
    Buffer *sb[2] = {&e.s13, &e.s2}, *zb[2] = {&e.z13, &e.z2};
    const void *sp[2] = {nullptr, nullptr}, *zp[2] = {nullptr, nullptr};
    for (int i = 0; i < 2; i++) {
        switch (q[i]->format) {
        case DYNMOE_WEIGHTS_FP8_BLOCK: *sb[i] = make_buffer(b, q[i]->scale_f32); break;
        case DYNMOE_WEIGHTS_MXFP4: *sb[i] = make_buffer(b, q[i]->scale_u8); break;
        case DYNMOE_WEIGHTS_INT4: *sb[i] = make_buffer(b, q[i]->scale_f16); break;
        default: continue;
        }
        sp[i] = sb[i]->get();
        if (!q[i]->zero.empty()) {
            *zb[i] = make_buffer(b, q[i]->zero);
            zp[i] = zb[i]->get();
        }
    }
    e.desc.weight_format = w.q13.format;
    e.desc.group_size = w.q13.format == DYNMOE_WEIGHTS_INT4 ? w.q13.group : 0;
    e.desc.w13_scale = sp[0];
    e.desc.w2_scale = sp[1];
    e.desc.w13_zero = zp[0];
    e.desc.w2_zero = zp[1];
    return e;
}

dynmoe_router with_expert_scale(const dynmoe_router &r, const RouteInputs &in, dynmoe_backend b, Buffer &buf) {
    dynmoe_router rr = r;
    if (!in.expert_scale.empty()) {
        buf = make_buffer(b, in.expert_scale);
        rr.expert_scale = buf.as<float>();
    }
    return rr;
}

RouteOut run_route(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r_in, int64_t T,
                   const RouteInputs &in, bool with_stats) {
    RouteOut o;
    Buffer scale;
    const dynmoe_router r = with_expert_scale(r_in, in, b, scale);
    const size_t n = (size_t)(T * r.top_k);
    Buffer logits = make_buffer(b, in.logits.bytes);
    Buffer bias = make_buffer(b, in.bias);
    Buffer mask = make_buffer(b, in.mask.bytes);
    Buffer ids(b, n * 4), weights(b, n * 4);
    ids.fill(kPoisonInt);
    weights.fill(kPoisonFloat);
    std::unique_ptr<StatsBlock> stats;
    if (with_stats) stats.reset(new StatsBlock(ctx, b));
    o.status = dynmoe_route(ctx, &r, T, logits.get(), in.logits.dtype,
                            in.bias.empty() ? nullptr : bias.as<float>(),
                            in.mask.size() ? mask.get() : nullptr, ids.as<int32_t>(),
                            weights.as<float>(), nullptr);
    EXPECT_EQ(o.status, DYNMOE_OK) << dynmoe_last_error();
    o.ids = ids.to_vector<int32_t>(n);
    o.weights = weights.to_vector<float>(n);
    if (stats) o.stats = stats->read();
    return o;
}

PlanOut run_plan(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r, int64_t T, int32_t S,
                 const std::vector<int32_t> &ids_v, bool with_stats, bool poison) {
    PlanOut o;
    const int32_t E = r.num_experts;
    const int64_t n = T * S;
    const size_t ws_bytes = dynmoe_plan_workspace_size(&r, T, S);
    EXPECT_GT(ws_bytes, 0u) << "dynmoe_plan_workspace_size";
    Buffer ids = make_buffer(b, ids_v);
    Buffer ws(b, ws_bytes);
    if (poison) ws.fill(kPoisonInt);
    std::unique_ptr<StatsBlock> stats;
    if (with_stats) stats.reset(new StatsBlock(ctx, b));
    dynmoe_plan p;
    std::memset(&p, 0, sizeof p);
    o.status = dynmoe_plan_build(ctx, &r, T, ids.as<int32_t>(), S, ws.get(), ws_bytes, &p, nullptr);
    EXPECT_EQ(o.status, DYNMOE_OK) << dynmoe_last_error();
    if (o.status != DYNMOE_OK) return o;
    EXPECT_EQ(p.num_experts, E);
    EXPECT_EQ(p.num_slots, n);
    /* Every array must lie inside the workspace; read them back by offset. */
    const char *base = static_cast<const char *>(ws.get());
    auto inside = [&](const void *ptr, size_t bytes) {
        const char *c = static_cast<const char *>(ptr);
        return c >= base && c + bytes <= base + ws_bytes;
    };
    o.pointers_ok = inside(p.expert_counts, E * 4u) && inside(p.expert_offsets, (E + 1) * 4u) &&
                    inside(p.sorted_slots, (size_t)n * 4) && inside(p.slot_rows, (size_t)n * 4) &&
                    inside(p.active_experts, E * 4u) && inside(p.num_active, 4);
    EXPECT_TRUE(o.pointers_ok) << "plan pointers outside the workspace";
    if (!o.pointers_ok) return o;
    auto get = [&](const int32_t *ptr, size_t count) {
        std::vector<int32_t> v(count);
        if (count) ws.download(v.data(), count * 4, (size_t)(reinterpret_cast<const char *>(ptr) - base));
        return v;
    };
    o.plan.counts = get(p.expert_counts, (size_t)E);
    o.plan.offsets = get(p.expert_offsets, (size_t)E + 1);
    o.num_active = get(p.num_active, 1)[0];
    int64_t R = o.plan.offsets[(size_t)E];
    if (R < 0 || R > n) {
        ADD_FAILURE() << "expert_offsets[E] = " << R << " out of [0, " << n << "]";
        return o;
    }
    o.plan.sorted_slots = get(p.sorted_slots, (size_t)R);
    o.plan.slot_rows = get(p.slot_rows, (size_t)n);
    if (o.num_active < 0 || o.num_active > E) {
        ADD_FAILURE() << "num_active = " << o.num_active;
        return o;
    }
    o.plan.active = get(p.active_experts, (size_t)o.num_active);
    if (stats) o.stats = stats->read();
    return o;
}

namespace {

ForwardOut finish_forward(const Buffer &out, dynmoe_dtype dt, int64_t T, int32_t H) {
    ForwardOut o;
    const size_t n = (size_t)(T * H);
    o.out_bytes = out.to_vector<uint8_t>(n * dmref::dtype_size(dt));
    o.out = unpack(o.out_bytes, dt, n);
    return o;
}

} // namespace

ForwardOut run_experts_forward(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r,
                               const ExpertWeights &w, dynmoe_dtype dt, int64_t T, const Packed &x,
                               const std::vector<int32_t> &ids_v, const std::vector<float> &weights_v,
                               int32_t S, bool with_stats, bool poison) {
    const int32_t H = w.ref.H;
    BackendExperts bx = upload_experts(b, r, w, dt);
    dynmoe_experts &ex = bx.desc;
    dynmoe_router rr = r;
    /* the caller's table has S slots per token, whatever the router's K */
    const size_t ws_bytes = dynmoe_experts_workspace_size(&rr, &ex, T, S);
    EXPECT_GT(ws_bytes, 0u) << "dynmoe_experts_workspace_size";
    Buffer xb = make_buffer(b, x.bytes), ids = make_buffer(b, ids_v), weights = make_buffer(b, weights_v);
    Buffer out(b, (size_t)(T * H) * dmref::dtype_size(dt)), ws(b, ws_bytes);
    out.fill(kPoisonFloat);
    if (poison) ws.fill(kPoisonFloat);
    std::unique_ptr<StatsBlock> stats;
    if (with_stats) stats.reset(new StatsBlock(ctx, b));
    dynmoe_status st = dynmoe_experts_forward(ctx, &rr, &ex, T, xb.get(), ids.as<int32_t>(),
                                              weights.as<float>(), S, out.get(), ws.get(), ws_bytes, nullptr);
    EXPECT_EQ(st, DYNMOE_OK) << dynmoe_last_error();
    ForwardOut o = finish_forward(out, dt, T, H);
    o.status = st;
    if (stats) o.stats = stats->read();
    return o;
}

Packed random_x(int64_t T, int32_t H, dynmoe_dtype dt, Rng &rng) {
    return pack(rng.uniform_vec((size_t)(T * H), -1.0, 1.0), dt);
}

std::vector<double> moe_reference_out(const ModelCase &c, const ExpertWeights &w, int64_t T, const Packed &x,
                                      const RouteInputs &in) {
    std::vector<double> ref;
    dmref::experts_forward(w.ref, c.router.num_zero_experts, c.router.zero_kind, T, x.values, in.ref.table, ref,
                           {}, c.router.weight_on_input != 0);
    return ref;
}

dynmoe_stats moe_reference_stats(const ModelCase &c, int64_t T, const RouteInputs &in) {
    return dmref::table_stats(c.router.num_experts, c.router.num_zero_experts, T, c.router.top_k, in.ref.table.ids,
                              in.ref.nonfinite_rows);
}

void expect_close(const std::vector<double> &got, const std::vector<double> &ref, dynmoe_dtype dt,
                  const std::string &what) {
    size_t nonfinite = 0;
    for (double v : got) nonfinite += !std::isfinite(v);
    EXPECT_EQ(nonfinite, 0u) << what << ": non-finite outputs (unwritten elements keep the NaN poison)";
    EXPECT_LT(rel_error(got, ref), tolerance(dt)) << what << ": relative error";
}

void check_moe_vs_reference(dynmoe_ctx *ctx, dynmoe_backend b, const ModelCase &c, int64_t T, dynmoe_dtype dt,
                            uint64_t seed, unsigned required) {
    Rng rng(seed);
    RouteInputs in = make_route_inputs(c, T, dt, rng);
    ExpertWeights w = make_experts(c.router.num_experts, c.H, c.I, c.act, dt, rng, c.ex);
    Packed x = random_x(T, c.H, dt, rng);
    ForwardOut o = run_moe_forward(ctx, b, c.router, w, dt, T, x, in);
    ASSERT_EQ(o.status, DYNMOE_OK);
    expect_close(o.out, moe_reference_out(c, w, T, x, in), dt, "moe_forward");
    expect_stats(o.stats, moe_reference_stats(c, T, in), required);
}

void check_experts_vs_reference(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r, int32_t H, int32_t I,
                                dynmoe_act act, dynmoe_dtype dt, const dmref::Table &table, Rng &rng,
                                unsigned required, const std::string &what, const ExpertOptions &opt) {
    ExpertWeights w = make_experts(r.num_experts, H, I, act, dt, rng, opt);
    Packed x = random_x(table.T, H, dt, rng);
    std::vector<float> wf = to_float(table.weights);
    dmref::Table tf = table;
    tf.weights = to_double(wf);
    ForwardOut o = run_experts_forward(ctx, b, r, w, dt, table.T, x, table.ids, wf, table.S);
    ASSERT_EQ(o.status, DYNMOE_OK);
    std::vector<double> ref;
    dmref::experts_forward(w.ref, r.num_zero_experts, r.zero_kind, table.T, x.values, tf, ref, {},
                           r.weight_on_input != 0);
    expect_close(o.out, ref, dt, what);
    expect_stats(o.stats, dmref::table_stats(r.num_experts, r.num_zero_experts, table.T, table.S, table.ids, 0),
                 required);
}

ForwardOut run_moe_forward(dynmoe_ctx *ctx, dynmoe_backend b, const dynmoe_router &r_in,
                           const ExpertWeights &w, dynmoe_dtype dt, int64_t T, const Packed &x,
                           const RouteInputs &in, bool with_stats) {
    const int32_t H = w.ref.H;
    Buffer scale;
    const dynmoe_router r = with_expert_scale(r_in, in, b, scale);
    BackendExperts bx = upload_experts(b, r, w, dt);
    dynmoe_experts &ex = bx.desc;
    const size_t ws_bytes = dynmoe_workspace_size(&r, &ex, T);
    EXPECT_GT(ws_bytes, 0u) << "dynmoe_workspace_size";
    Buffer xb = make_buffer(b, x.bytes);
    Buffer logits = make_buffer(b, in.logits.bytes), bias = make_buffer(b, in.bias),
           mask = make_buffer(b, in.mask.bytes);
    Buffer out(b, (size_t)(T * H) * dmref::dtype_size(dt)), ws(b, ws_bytes);
    out.fill(kPoisonFloat);
    ws.fill(kPoisonFloat);
    std::unique_ptr<StatsBlock> stats;
    if (with_stats) stats.reset(new StatsBlock(ctx, b));
    dynmoe_status st = dynmoe_moe_forward(ctx, &r, &ex, T, xb.get(), logits.get(), in.logits.dtype,
                                          in.bias.empty() ? nullptr : bias.as<float>(),
                                          in.mask.size() ? mask.get() : nullptr, out.get(), ws.get(),
                                          ws_bytes, nullptr);
    EXPECT_EQ(st, DYNMOE_OK) << dynmoe_last_error();
    ForwardOut o = finish_forward(out, dt, T, H);
    o.status = st;
    if (stats) o.stats = stats->read();
    return o;
}

} // namespace dmtest
