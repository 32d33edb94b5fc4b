/*
 * fuzz_api.cc — libFuzzer target of the API's argument checks (CPU backend).
 *
 * The input chooses one entry point and every argument: router and experts
 * fields (in range, at the edges or wild), T, slots, dtypes, null and
 * misaligned pointers, the workspace size, and the data itself (logits with
 * NaN/Inf, tables with any int32 id). Buffers are always sized as the
 * contract asks for the arguments *as given* (clamped to what a caller could
 * allocate), so that:
 *  - a call the checks reject must return a non-OK status with a non-empty
 *    message and leave the outputs untouched;
 *  - a call the checks accept must be memory-safe (ASan) and, for routing,
 *    produce ids in [-1, E+Z).
 * Any violation traps. Build: -DDYNMOE_FUZZ=ON with clang; run
 *   ./tests/fuzz/fuzz_api -max_total_time=60
 */
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "dynmoe.h"

namespace {

struct Reader {
    const uint8_t *p;
    size_t n;
    uint8_t u8() {
        if (n == 0) return 0;
        n--;
        return *p++;
    }
    uint32_t u32() {
        uint32_t v = 0;
        for (int i = 0; i < 4; i++) v = v << 8 | u8();
        return v;
    }
    /* mostly small valid values, sometimes edges, sometimes anything */
    int32_t i32(int32_t lo, int32_t hi) {
        const uint8_t mode = u8() % 8;
        if (mode == 0) return (int32_t)u32();
        if (mode == 1) {
            const int32_t edges[] = {-1, 0, 1, 63, 64, 65, 1023, 1024, 1025, INT32_MIN, INT32_MAX};
            return edges[u8() % 11];
        }
        const uint32_t span = (uint32_t)(hi - lo) + 1u;
        return lo + (int32_t)(u32() % span);
    }
    float f32() {
        const uint8_t mode = u8() % 6;
        if (mode == 0) {
            uint32_t b = u32();
            float f;
            std::memcpy(&f, &b, 4);
            return f;
        }
        if (mode == 1) {
            const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, NAN, INFINITY, -INFINITY, 1e-30f, 1.5f};
            return edges[u8() % 9];
        }
        return (float)((int)(u32() % 2001) - 1000) / 500.0f;
    }
};

/* An allocation with room for a misaligned view; contents from the input.
 * calloc, not a vector: the weight buffers reach 27 MB for E = 1024, and a
 * large calloc is fresh zero pages (ASan does not memset them), so an input
 * pays only for the pages the library touches (4x more exec/s). */
struct Buf {
    std::unique_ptr<uint8_t, decltype(&std::free)> mem{nullptr, &std::free};
    size_t size = 0; /* usable bytes from base */
    void *base = nullptr;
    void make(size_t bytes, Reader &rd) {
        mem.reset(static_cast<uint8_t *>(std::calloc(bytes + 64, 1)));
        if (!mem) std::abort();
        size = bytes;
        base = mem.get() + (64 - ((uintptr_t)mem.get() & 63)) % 64;
        const uint8_t seed = rd.u8();
        for (size_t i = 0; i < bytes && i < 4096; i++) static_cast<uint8_t *>(base)[i] = (uint8_t)(seed * 31 + i * 7);
    }
    /* null, misaligned or the base, as the input says */
    void *view(Reader &rd) {
        const uint8_t m = rd.u8() % 16;
        if (m == 0) return nullptr;
        if (m == 1) return static_cast<uint8_t *>(base) + 1 + rd.u8() % 15;
        return base;
    }
};

/* Any int in an enum field, without creating an out-of-range enum value in
 * C++ (undefined behaviour): the library, in C, reads it as an int. */
template <class En> void set_enum(En &field, int32_t v) {
    static_assert(sizeof(En) == sizeof(int32_t), "enum is not int-sized");
    std::memcpy(&field, &v, sizeof v);
}

size_t clamp_size(int64_t v, int64_t hi) { return v < 0 ? 0 : (size_t)(v > hi ? hi : v); }

void check(bool ok) {
    if (!ok) __builtin_trap();
}

bool same_bytes(const std::vector<uint8_t> &before, const void *now) {
    return before.empty() || std::memcmp(before.data(), now, before.size()) == 0;
}

void check_failure(dynmoe_status st) {
    if (st == DYNMOE_OK) return;
    check(st > DYNMOE_OK && st < DYNMOE_STATUS_COUNT);
    const char *msg = dynmoe_last_error();
    check(msg != nullptr && msg[0] != '\0');
}

dynmoe_ctx *context() {
    static dynmoe_ctx *ctx = [] {
        dynmoe_ctx *c = nullptr;
        if (dynmoe_ctx_create(&c, DYNMOE_BACKEND_CPU, 0) != DYNMOE_OK) std::abort();
        return c;
    }();
    return ctx;
}

/* DYNMOE_FUZZ_TRACE=1: one line per input, "entry <fn> <status>", so that
 * scripts/ci-fuzz.sh can show which entry points the corpus reaches. */
void trace(int fn, dynmoe_status st) {
    static const bool on = std::getenv("DYNMOE_FUZZ_TRACE") != nullptr;
    static const char *const names[] = {"route", "route_tasks", "plan_build", "experts_forward", "moe_forward"};
    if (on) std::fprintf(stderr, "entry %s %s\n", names[fn], dynmoe_status_name(st));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Reader rd{data, size};
    dynmoe_ctx *ctx = context();

    dynmoe_router r = DYNMOE_ROUTER_INIT;
    if (rd.u8() % 16 == 0) r.struct_size = rd.u32();
    r.num_experts = rd.i32(1, 96);
    r.num_zero_experts = rd.u8() % 2 ? rd.i32(0, 32) : 0;
    set_enum(r.zero_kind, rd.i32(0, 1));
    r.top_k = rd.i32(1, 12);
    set_enum(r.score, rd.i32(0, 2));
    set_enum(r.select, rd.i32(0, 2));
    r.top_p = rd.f32();
    r.threshold = rd.f32();
    if (rd.u8() % 2) {
        r.num_groups = rd.i32(1, 8);
        r.topk_groups = rd.i32(1, 8);
    }
    set_enum(r.norm, rd.i32(0, 3));
    r.scale = rd.u8() % 4 ? 1.0f : rd.f32();
    const int fn = rd.u8() % 5;
    if (fn == 1 || rd.u8() % 16 == 0) {
        r.num_tasks = rd.i32(1, 6);
        r.top_tasks = rd.i32(1, 3);
    }
    int64_t T = rd.u8() % 16 == 0 ? (int64_t)(int32_t)rd.u32() : rd.i32(0, 24);
    if (rd.u8() % 32 == 0) T = (int64_t)DYNMOE_MAX_TOKENS + 1 + rd.u8();
    /* A valid T larger than the buffers would make the *caller* wrong: clamp. */
    if (T > 64 && T <= DYNMOE_MAX_TOKENS) T = 64;
    if (r.num_tasks > 64) r.num_tasks = 64;

    /* sizes as the contract computes them, clamped to an allocatable range */
    const int64_t E = r.num_experts, N = (int64_t)r.num_experts + r.num_zero_experts;
    const size_t Tc = clamp_size(T, 64), Nc = clamp_size(N, 1100), Ec = clamp_size(E, 1100);
    /* slots per token: the product in 64 bits (top_k and top_tasks may be
     * anything here), then any int32 the API can be handed */
    const int64_t S_routed = r.num_tasks > 0 ? (int64_t)r.top_k * r.top_tasks : r.top_k;
    const int32_t S = fn == 2 || fn == 3 ? rd.i32(1, 16)
                                         : (int32_t)std::max<int64_t>(INT32_MIN, std::min<int64_t>(INT32_MAX, S_routed));
    const size_t Sc = clamp_size(S, 64);
    const dynmoe_dtype dt = (dynmoe_dtype)(rd.u8() % 4); /* 3: DYNMOE_DTYPE_COUNT, invalid */
    const size_t esz = 4; /* room for any dtype, whatever experts.dtype says */

    dynmoe_experts ex = DYNMOE_EXPERTS_INIT;
    if (rd.u8() % 16 == 0) ex.struct_size = rd.u32();
    ex.num_experts = rd.u8() % 16 ? r.num_experts : rd.i32(1, 96);
    ex.hidden = rd.i32(1, 24);
    ex.inter = rd.i32(1, 12);
    if (rd.u8() % 16)
        ex.dtype = dt;
    else
        set_enum(ex.dtype, rd.i32(0, 3));
    set_enum(ex.act, rd.i32(0, 1));
    if (ex.hidden > 64) ex.hidden = 64;
    if (ex.inter > 32) ex.inter = 32;
    const size_t Hc = clamp_size(ex.hidden, 64), Ic = clamp_size(ex.inter, 32), Xc = clamp_size(ex.num_experts, 1100);

    Buf logits, bias, mask, ids_in, w_in, x, out, w13, w2, tl, tw, ids_out, w_out, ws;
    logits.make(Tc * Nc * 4, rd);
    bias.make(Nc * 4, rd);
    mask.make(Tc * Ec * 4, rd);
    ids_in.make(Tc * Sc * 4, rd);
    w_in.make(Tc * Sc * 4, rd);
    x.make(Tc * Hc * esz, rd);
    out.make(Tc * Hc * esz, rd);
    w13.make(Xc * 2 * Ic * Hc * esz, rd);
    w2.make(Xc * Hc * Ic * esz, rd);
    tl.make(Tc * clamp_size(r.num_tasks, 64) * 4, rd);
    tw.make(clamp_size(r.num_tasks, 64) * Nc * Hc * esz, rd);
    ids_out.make(Tc * Sc * 4, rd);
    w_out.make(Tc * Sc * 4, rd);
    /* tables: any id at all */
    for (size_t i = 0; i < Tc * Sc; i++) {
        int32_t id = rd.u8() % 4 ? (int32_t)(rd.u8() % (Nc + 2)) - 1 : (int32_t)rd.u32();
        std::memcpy(static_cast<uint8_t *>(ids_in.base) + 4 * i, &id, 4);
    }
    for (size_t i = 0; i < Tc * Nc && rd.n; i++) {
        float v = rd.f32();
        if (dt == DYNMOE_F32) std::memcpy(static_cast<uint8_t *>(logits.base) + 4 * i, &v, 4);
    }

    ex.w13 = w13.view(rd);
    ex.w2 = w2.view(rd);
    const bool with_bias = rd.u8() % 2, with_mask = rd.u8() % 2;
    const dynmoe_router *rp = rd.u8() % 32 ? &r : nullptr;
    const dynmoe_experts *ep = rd.u8() % 32 ? &ex : nullptr;
    dynmoe_ctx *cp = rd.u8() % 32 ? ctx : nullptr;

    size_t need = 0;
    if (fn == 2)
        need = dynmoe_plan_workspace_size(&r, T, S);
    else if (fn >= 3)
        need = dynmoe_workspace_size(&r, &ex, T <= 0 ? 0 : T * ((Sc + (size_t)std::max(1, r.top_k) - 1) / (size_t)std::max(1, r.top_k)));
    const uint8_t wmode = rd.u8() % 4;
    const size_t ws_bytes = wmode == 0 ? need : wmode == 1 ? (need ? need - 1 : 0) : wmode == 2 ? 0 : need + rd.u8();
    ws.make(std::min<size_t>(need + 256, (size_t)1 << 28), rd);
    const size_t ws_given = std::min(ws_bytes, ws.size);

    const std::vector<uint8_t> ids_before(static_cast<uint8_t *>(ids_out.base),
                                          static_cast<uint8_t *>(ids_out.base) + Tc * Sc * 4);
    const std::vector<uint8_t> out_before(static_cast<uint8_t *>(out.base),
                                          static_cast<uint8_t *>(out.base) + Tc * Hc * esz);
    dynmoe_status st = DYNMOE_OK;
    switch (fn) {
    case 0:
        st = dynmoe_route(cp, rp, T, logits.view(rd), dt, with_bias ? static_cast<float *>(bias.view(rd)) : nullptr,
                          with_mask ? mask.view(rd) : nullptr, static_cast<int32_t *>(ids_out.view(rd)),
                          static_cast<float *>(w_out.view(rd)), nullptr);
        break;
    case 1:
        st = dynmoe_route_tasks(cp, rp, T, x.view(rd), dt, ex.hidden, static_cast<float *>(tl.view(rd)), tw.view(rd),
                                with_bias ? static_cast<float *>(bias.view(rd)) : nullptr,
                                static_cast<int32_t *>(ids_out.view(rd)), static_cast<float *>(w_out.view(rd)), nullptr);
        break;
    case 2: {
        dynmoe_plan plan;
        st = dynmoe_plan_build(cp, rp, T, static_cast<int32_t *>(ids_in.view(rd)), S, ws.view(rd), ws_given,
                               rd.u8() % 32 ? &plan : nullptr, nullptr);
        break;
    }
    case 3:
        st = dynmoe_experts_forward(cp, rp, ep, T, x.view(rd), static_cast<int32_t *>(ids_in.view(rd)),
                                    static_cast<float *>(w_in.view(rd)), S, out.view(rd), ws.view(rd), ws_given,
                                    nullptr);
        break;
    default:
        st = dynmoe_moe_forward(cp, rp, ep, T, x.view(rd), logits.view(rd), dt,
                                with_bias ? static_cast<float *>(bias.view(rd)) : nullptr,
                                with_mask ? mask.view(rd) : nullptr, out.view(rd), ws.view(rd), ws_given, nullptr);
        break;
    }
    check_failure(st);
    trace(fn, st);
    if (st != DYNMOE_OK) {
        /* a rejected call writes nothing (memcmp of 0 bytes may not see the
         * null data() of an empty vector: T = 0 is a common input) */
        check(same_bytes(ids_before, ids_out.base));
        check(same_bytes(out_before, out.base));
    } else if (fn <= 1 && T > 0) {
        /* an accepted route wrote ids in [-1, E+Z) */
        for (size_t i = 0; i < Tc * Sc; i++) {
            int32_t id;
            std::memcpy(&id, static_cast<uint8_t *>(ids_out.base) + 4 * i, 4);
            check(id >= -1 && id < N);
        }
    }
    return 0;
}
