/*
 * act_rules.h — every expert activation of dynmoe_act once, and where a
 * hidden unit's gate and up rows sit in w13. Host C and CUDA share it (as
 * route_rules.h for routing): the CPU kernels and the CUDA kernels call these
 * functions; tests/reference/ writes the same math again, independently, in
 * double precision.
 *
 * One expert's FFN of a row x (include/dynmoe.h):
 *   h = w13_e . x + b13_e        gated: 2I values (gate and up rows), else I
 *   a_j = dm_activate(gate_j, up_j)   j < I   (non-gated: dm_activate(h_j, 0))
 *   y = w2_e . a + b2_e
 */
#ifndef DYNMOE_ACT_RULES_H
#define DYNMOE_ACT_RULES_H

#include <math.h>

#include "hd.h"

/* Gated activations read a gate and an up row per hidden unit; RELU2 and
 * SILU read one row (w13 has I rows per expert). */
DYNMOE_HD int dm_act_gated(dynmoe_act act) { return act != DYNMOE_ACT_RELU2 && act != DYNMOE_ACT_SILU; }

/* Rows of w13 per expert: 2I gated, I otherwise. */
DYNMOE_HD int64_t dm_w13_rows(dynmoe_act act, int64_t inter) { return dm_act_gated(act) ? 2 * inter : inter; }

/* The w13 row (and b13 entry) of hidden unit j's gate and up values. For
 * non-gated activations the unit's only row is the "gate" row j. */
DYNMOE_HD int64_t dm_gate_row(dynmoe_gate_up layout, int64_t inter, int64_t j) {
    (void)inter;
    return layout == DYNMOE_GATE_UP_INTERLEAVED ? 2 * j : j;
}
DYNMOE_HD int64_t dm_up_row(dynmoe_gate_up layout, int64_t inter, int64_t j) {
    return layout == DYNMOE_GATE_UP_INTERLEAVED ? 2 * j + 1 : inter + j;
}

DYNMOE_HD float dm_silu(float g) { return g / (1.0f + expf(-g)); }
DYNMOE_HD float dm_gelu_erf(float g) { return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)); }
/* GELU, tanh approximation: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))). */
DYNMOE_HD float dm_gelu_tanh(float g) {
    return 0.5f * g * (1.0f + tanhf(0.79788456080286536f * (g + 0.044715f * g * g * g)));
}

/* The activated value of one hidden unit. Gated: act(gate) * up; SWIGLU_OAI
 * clamps first (gpt-oss: gate to at most limit, up to [-limit, limit]).
 * Non-gated: act(gate), `up` unused. A NaN input gives NaN. */
DYNMOE_HD float dm_activate(dynmoe_act act, float alpha, float limit, float gate, float up) {
    switch (act) {
    case DYNMOE_ACT_GEGLU: return dm_gelu_erf(gate) * up;
    case DYNMOE_ACT_GEGLU_TANH: return dm_gelu_tanh(gate) * up;
    case DYNMOE_ACT_SWIGLU_OAI: {
        const float g = gate > limit ? limit : gate;
        const float u = up > limit ? limit : (up < -limit ? -limit : up);
        return (u + 1.0f) * (g / (1.0f + expf(-alpha * g)));
    }
    case DYNMOE_ACT_RELU2: {
        const float r = gate > 0.0f ? gate : 0.0f;
        return gate != gate ? gate : r * r;
    }
    case DYNMOE_ACT_SILU: return dm_silu(gate);
    default: return dm_silu(gate) * up;
    }
}

#endif /* DYNMOE_ACT_RULES_H */
