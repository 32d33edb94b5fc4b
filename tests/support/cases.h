/*
 * cases.h — the table of model-shaped router configurations the suites loop
 * over, and the generator of tie-free random routing inputs.
 */
#ifndef DYNMOE_TESTS_CASES_H
#define DYNMOE_TESTS_CASES_H

#include <string>
#include <vector>

#include "test_util.h"

namespace dmtest {

/* How the experts of a case are laid out beyond their activation. */
struct ExpertOptions {
    dynmoe_gate_up gate_up = DYNMOE_GATE_UP_BLOCKED;
    bool bias = false;                 /* b13 and b2 */
    double alpha = 1.702, limit = 7.0; /* SWIGLU_OAI */
    dynmoe_weight_format format = DYNMOE_WEIGHTS_PLAIN;
    int32_t group = 0;                 /* INT4 group size */
    bool zeros = true;                 /* INT4: zero points (else symmetric, 8) */
};

struct ModelCase {
    std::string name;
    dynmoe_router router;    /* router.expert_scale stays NULL: see RouteInputs */
    bool bias = false;       /* selection bias */
    bool mask = false;       /* BEAM mask */
    double keep = 1.0;       /* BEAM keep rate */
    bool expert_scale = false; /* a per-expert weight scale (Gemma-4) */
    int32_t H = 64, I = 32;  /* reduced sizes for the forward tests */
    dynmoe_act act = DYNMOE_ACT_SWIGLU;
    ExpertOptions ex;
};

/* Model-shaped routers (Qwen3-30B-A3B, DeepSeek-V3, LongCat-Flash, ZEDA,
 * Mixtral, OLMoE), the dynamic selections (BEAM, top-p, threshold, uniform)
 * and a few score/norm combinations. */
std::vector<ModelCase> model_cases();
/* The case of that name (fails the test when there is none). */
ModelCase find_case(const std::string &name);

/* Routing inputs for T tokens; every token's decisions are at least
 * kMinMargin away from a tie (rows are redrawn until they are). */
constexpr double kMinMargin = 2e-4;

struct RouteInputs {
    Packed logits;             /* [T, E+Z] */
    std::vector<float> bias;   /* [E+Z] or empty */
    Packed mask;               /* [T, E] or empty */
    std::vector<float> expert_scale; /* [E+Z] or empty; run_* point router.expert_scale at a copy */
    dmref::RouteResult ref;    /* the reference routing of exactly these inputs */
    std::vector<double> bias_d() const { return to_double(bias); }
    std::vector<double> expert_scale_d() const { return to_double(expert_scale); }
};

RouteInputs make_route_inputs(const ModelCase &c, int64_t T, dynmoe_dtype dt, Rng &rng);

/* Recomputes inputs.ref after the caller changed logits/mask/bias. */
void rereference(const ModelCase &c, int64_t T, RouteInputs &in);

/* After the caller edited some logits: redraws the finite logits of every row
 * whose margin fell below kMinMargin (non-finite entries stay), then
 * recomputes the reference. */
void retie_free(const ModelCase &c, int64_t T, RouteInputs &in, Rng &rng);

/* Random expert weights [E,2I,H] (or [E,I,H] for non-gated act) and
 * [E,H,I] of dt, with biases when opt.bias, scaled so that outputs are O(1). */
struct ExpertWeights {
    Packed w13, w2, b13, b2; /* b13, b2 empty without biases; w13/w2 hold the codes when quantized */
    dmref::QuantMatrix q13, q2; /* the quantized form (format PLAIN: unused) */
    dmref::Experts ref;         /* the values the weights stand for (dequantized) */
};
ExpertWeights make_experts(int32_t E, int32_t H, int32_t I, dynmoe_act act, dynmoe_dtype dt, Rng &rng,
                           const ExpertOptions &opt = {});

/* Quantizes w [E, N, K] into format f (a plain round-to-nearest encoder of
 * the tests, per block or group); the library and dmref::dequantize then read
 * the same codes. */
dmref::QuantMatrix quantize(const std::vector<double> &w, int32_t E, int64_t N, int64_t K, dynmoe_weight_format f,
                            int32_t group, bool zeros);

} // namespace dmtest

#endif
