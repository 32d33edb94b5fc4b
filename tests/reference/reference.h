/*
 * reference.h — the independent test reference of dynmoe.
 *
 * Written from DESIGN.md section 2 and the decision list at the top of
 * csrc/route_rules.h, WITHOUT including or copying that header: naive loops,
 * double precision, sorting instead of clever selection. Everything the
 * backends compute is computed here again in the most obvious way, and the
 * GoogleTest suites compare the two.
 *
 * Beside the results, routing reports a per-token *margin*: the smallest
 * relative distance of any decision (top-K boundary, order of the selected,
 * group boundary, threshold, top-p cut) from its tie. A backend in fp32 and
 * this reference in fp64 may only be compared exactly on tokens whose margin
 * is well above fp32 rounding; the tests redraw inputs until it is.
 */
#ifndef DYNMOE_TESTS_REFERENCE_H
#define DYNMOE_TESTS_REFERENCE_H

#include <cstdint>
#include <vector>

#include "dynmoe.h"

namespace dmref {

/* ---- scalar helpers ---------------------------------------------------- */

/* Storage conversions, written independently of csrc/hd.h: round to nearest
 * even through double arithmetic. */
uint16_t f32_to_bf16(float v);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float v);
float f16_to_f32(uint16_t h);
/* value of element i of a tensor stored as dt */
double load(const void *p, dynmoe_dtype dt, int64_t i);
size_t dtype_size(dynmoe_dtype dt);

double silu(double g);
double gelu_erf(double g);
double gelu_tanh(double g);

/* ---- routing ----------------------------------------------------------- */

/* A routing table [T, S]: ids and weights, token-major. */
struct Table {
    int64_t T = 0;
    int32_t S = 0;
    std::vector<int32_t> ids;
    std::vector<double> weights;
};

/* Routes one token. logits [E+Z], bias [E+Z] or null, mask [E] or null,
 * expert_scale [E+Z] or null (r.expert_scale is never read: the reference
 * takes its own copy). Writes ids/w [K]. Returns true when the token had no
 * finite logit. *margin receives the token's decision margin (+inf when
 * nothing was decided). */
bool route_token(const dynmoe_router &r, const double *logits, const double *bias,
                 const double *mask, int32_t *ids, double *w, double *margin,
                 const double *expert_scale = nullptr);

struct RouteResult {
    Table table;
    int64_t nonfinite_rows = 0;
    std::vector<double> margin; /* [T] */
};

/* logits [T, E+Z], bias [E+Z] or empty, mask [T, E] or empty, expert_scale
 * [E+Z] or empty. */
RouteResult route(const dynmoe_router &r, int64_t T, const std::vector<double> &logits,
                  const std::vector<double> &bias, const std::vector<double> &mask,
                  const std::vector<double> &expert_scale = {});

/* CaRE bi-level routing (dynmoe_route_tasks):
 * x [T, H], task_logits [T, R], task_weights [R, E+Z, H], bias [E+Z] or empty.
 * Table [T, top_tasks*K]. margin covers the task choice and every picked
 * task's expert routing. */
RouteResult route_tasks(const dynmoe_router &r, int64_t T, int32_t H, const std::vector<double> &x,
                        const std::vector<double> &task_logits,
                        const std::vector<double> &task_weights, const std::vector<double> &bias,
                        const std::vector<double> &expert_scale = {});

/* ---- plan -------------------------------------------------------------- */

struct Plan {
    std::vector<int32_t> counts;       /* [E] */
    std::vector<int32_t> offsets;      /* [E+1] */
    std::vector<int32_t> sorted_slots; /* [R] row -> slot */
    std::vector<int32_t> slot_rows;    /* [T*S] slot -> row or -1 */
    std::vector<int32_t> active;       /* experts with rows, ascending */
};

Plan plan(int32_t E, int64_t T, int32_t S, const std::vector<int32_t> &ids);

/* Expected counters of a table (dynmoe_stats), all fields. */
dynmoe_stats table_stats(int32_t E, int32_t Z, int64_t T, int32_t S,
                         const std::vector<int32_t> &ids, int64_t nonfinite_rows);

/* ---- experts and combine ----------------------------------------------- */

struct Experts {
    int32_t E = 0, H = 0, I = 0;
    dynmoe_act act = DYNMOE_ACT_SWIGLU;
    dynmoe_gate_up gate_up = DYNMOE_GATE_UP_BLOCKED;
    double alpha = 1.702, limit = 7.0; /* SWIGLU_OAI */
    /* [E, 2I, H] gated (BLOCKED: rows 0..I-1 gate, I..2I-1 up; INTERLEAVED:
     * row 2j gate j, 2j+1 up j), [E, I, H] for RELU2 / SILU */
    std::vector<double> w13;
    std::vector<double> w2;  /* [E, H, I] */
    std::vector<double> b13; /* [E, rows of w13] or empty */
    std::vector<double> b2;  /* [E, H] or empty */
};

/* Whether act reads a gate and an up row per hidden unit (else one row). */
bool gated(dynmoe_act act);

/* y [H] = W2_e act(W13_e x + b13_e) + b2_e, the activation as documented in
 * include/dynmoe.h (dynmoe_act). */
void ffn(const Experts &ex, int32_t e, const double *x, double *y);

/* out [T, H] = sum over slots of w * FFN_id(x_t) (real experts; with
 * weight_on_input FFN_id(w * x_t) instead), w * x_t (identity zero experts),
 * 0 (zero-output experts); ids outside [-1, E+Z) skipped; a repeated id
 * counts once per slot. `tokens`, when not empty, restricts the computation
 * to those tokens (other rows of out are left 0). */
void experts_forward(const Experts &ex, int32_t Z, dynmoe_zero_kind zero_kind, int64_t T,
                     const std::vector<double> &x, const Table &table, std::vector<double> &out,
                     const std::vector<int64_t> &tokens = {}, bool weight_on_input = false);

/* ---- quantized weights (include/dynmoe.h, dynmoe_weight_format) -------- */

double fp8_e4m3(uint8_t q); /* OCP float8 e4m3fn */
double e2m1(uint8_t nibble);  /* OCP MX fp4 */
double ue8m0(uint8_t s);      /* OCP MX scale 2^(s-127) */

/* One quantized [E, N, K] matrix as the library takes it. */
struct QuantMatrix {
    dynmoe_weight_format format = DYNMOE_WEIGHTS_PLAIN;
    int32_t group = 0;               /* INT4 group size */
    std::vector<uint8_t> q;          /* codes: [E, N, K] fp8 bytes or [E, N, ceil(K/2)] nibbles */
    std::vector<float> scale_f32;    /* FP8_BLOCK [E, ceil(N/128), ceil(K/128)] */
    std::vector<uint8_t> scale_u8;   /* MXFP4 [E, N, K/32] ue8m0 */
    std::vector<uint16_t> scale_f16; /* INT4 [E, N, ceil(K/g)] fp16 bits */
    std::vector<uint8_t> zero;       /* INT4 [E, N, ceil(K/g)] or empty (zero point 8) */
};

/* The values [E, N, K] a quantized matrix stands for. */
std::vector<double> dequantize(const QuantMatrix &m, int32_t E, int64_t N, int64_t K);

} // namespace dmref

#endif
