/*
 * route_rules.h — every routing rule of DESIGN.md section 2, once.
 *
 * The CPU backend (csrc/cpu/route.c) and the CUDA kernels (cuda/route.cu)
 * call these functions; they differ only in how they parallelise over
 * tokens and experts. The test reference (tests/reference/) is written
 * independently in double precision.
 *
 * Per token the stages are:
 *   1. scores      s_e = score(logit_e)                    dm_score
 *   2. choice      c_e = s_e + b_e, -inf when not eligible  dm_choice
 *   3. group limit keep the topk_groups best groups        dm_group_score, dm_better
 *   4. selection   best-first by (c desc, id asc), <= K     dm_better, dm_topk_insert
 *   5. finalize    top-p cut, BEAM mask, norm, scale        dm_finalize_slots
 * dm_route_token_serial strings them together for one token on one thread.
 *
 * Decisions the design left open (also in docs/routing.md):
 *  - A non-finite logit is never chosen and takes no part in the softmax
 *    (its score is 0). A choice value c that is not finite (bias NaN) is
 *    likewise ineligible. A token with no finite logit gets empty slots.
 *  - Ineligible experts (-inf choice: non-finite, masked group, below the
 *    threshold) are never selected; their slots stay empty. (vLLM may pick
 *    -inf entries when K exceeds the eligible count; we leave the slot empty.)
 *  - Zero experts belong to no group and are always eligible.
 *  - Dropped slots keep their position (-1/0); slots are not compacted.
 */
#ifndef DYNMOE_ROUTE_RULES_H
#define DYNMOE_ROUTE_RULES_H

#include <math.h>

#include "hd.h"

/* expf on both sides (not the device's __expf approximation): routing is a
 * negligible part of the layer, and close scores keep the CPU and GPU picking
 * the same experts. */
#define DM_EXPF expf

/* The largest number of candidates a serial token route handles (E+Z). */
#define DM_MAX_CANDIDATES DYNMOE_MAX_EXPERTS
/* The most groups a group-limited router may have (checked by the API). */
#define DM_MAX_GROUPS 64

/* 1. Score of one logit. For softmax, max_logit and inv_sum are over the
 * finite logits of the token. A non-finite logit scores 0. */
DYNMOE_HD float dm_score(dynmoe_score kind, float logit, float max_logit, float inv_sum) {
    if (!dm_isfinite(logit)) return 0.0f;
    switch (kind) {
    case DYNMOE_SCORE_SOFTMAX: return DM_EXPF(logit - max_logit) * inv_sum;
    case DYNMOE_SCORE_SIGMOID: return 1.0f / (1.0f + DM_EXPF(-logit));
    default: return logit;
    }
}

/* 2. Choice value: what selection ranks. -inf means "never selected". */
DYNMOE_HD float dm_choice(const dynmoe_router *r, float logit, float s, float bias) {
    if (!dm_isfinite(logit)) return dm_neg_inf();
    if (r->select == DYNMOE_SELECT_THRESHOLD && !(s > r->threshold)) return dm_neg_inf();
    float c = s + bias;
    return dm_isfinite(c) ? c : dm_neg_inf();
}

/* Strict order of candidates: larger choice first, ties to the lower id. */
DYNMOE_HD int dm_better(float ca, int32_t ida, float cb, int32_t idb) {
    return ca > cb || (ca == cb && ida < idb);
}

/* 3. Group score of n experts with choices c and scores s: with a selection
 * bias, the sum of the two largest c (DeepSeek-V3); without, the largest s
 * of an eligible expert. -inf when no expert of the group is eligible. */
DYNMOE_HD float dm_group_score(const float *c, const float *s, int32_t n, int has_bias) {
    float best = dm_neg_inf(), second = dm_neg_inf(), best_s = dm_neg_inf();
    for (int32_t i = 0; i < n; i++) {
        if (!dm_isfinite(c[i])) continue;
        if (c[i] > best) {
            second = best;
            best = c[i];
        } else if (c[i] > second) {
            second = c[i];
        }
        if (s[i] > best_s) best_s = s[i];
    }
    if (!dm_isfinite(best)) return dm_neg_inf();
    if (!has_bias) return best_s;
    return dm_isfinite(second) ? best + second : best;
}

/* Group j of E experts in G groups is [j*E/G, (j+1)*E/G). */
DYNMOE_HD int32_t dm_group_begin(int32_t num_experts, int32_t num_groups, int32_t j) {
    return (int32_t)((int64_t)j * num_experts / num_groups);
}

/* 4. Keeps the best n (<= cap) candidates in best-first order in
 * (sel_c, sel_id); inserts candidate (c, id) if it belongs. Returns the new n.
 * Ineligible (-inf) candidates are never inserted. */
DYNMOE_HD int32_t dm_topk_insert(float *sel_c, int32_t *sel_id, int32_t n, int32_t cap, float c,
                                 int32_t id) {
    if (!dm_isfinite(c)) return n;
    if (n == cap && !dm_better(c, id, sel_c[n - 1], sel_id[n - 1])) return n;
    int32_t pos = n < cap ? n : cap - 1;
    while (pos > 0 && dm_better(c, id, sel_c[pos - 1], sel_id[pos - 1])) {
        sel_c[pos] = sel_c[pos - 1];
        sel_id[pos] = sel_id[pos - 1];
        pos--;
    }
    sel_c[pos] = c;
    sel_id[pos] = id;
    return n < cap ? n + 1 : n;
}

/* 5. From the n_sel selected experts (best first: ids and unbiased scores s)
 * to the K output slots of one token:
 *   top-p cut  -> keep slot i while the cumulative score before it < top_p (>= 1 kept)
 *   BEAM mask  -> a real-expert slot survives only if sel_mask[i] > 0 (sel_mask may be NULL)
 *   norm       -> NONE, SELECTED (sum before mask/zero drop), KEPT (sum of surviving
 *                 real slots), UNIFORM (1 / surviving slots); a zero or non-finite
 *                 sum leaves the weights unnormalised
 *   expert scale -> w *= r->expert_scale[id] when given (Gemma-4), zero experts included
 *   scale      -> every surviving slot, zero experts included
 * Writes ids_out/w_out [K]; slot i of the output is selection i (or empty). */
DYNMOE_HD void dm_finalize_slots(const dynmoe_router *r, int32_t n_sel, const int32_t *sel_id,
                                 const float *sel_s, const float *sel_mask, int32_t *ids_out,
                                 float *w_out) {
    const int32_t K = r->top_k, E = r->num_experts;
    int32_t n = n_sel;
    if (r->select == DYNMOE_SELECT_TOP_P) {
        float cum = 0.0f;
        n = 0;
        while (n < n_sel && (n == 0 || cum < r->top_p)) {
            cum += sel_s[n];
            n++;
        }
    }
    float sum_selected = 0.0f, sum_kept = 0.0f;
    int32_t kept = 0;
    for (int32_t i = 0; i < K; i++) {
        int32_t id = -1;
        float w = 0.0f;
        if (i < n) {
            sum_selected += sel_s[i];
            int is_real = sel_id[i] < E;
            if (!is_real || sel_mask == NULL || sel_mask[i] > 0.0f) {
                id = sel_id[i];
                w = sel_s[i];
                kept++;
                if (is_real) sum_kept += w;
            }
        }
        ids_out[i] = id;
        w_out[i] = w;
    }
    float div = 1.0f;
    switch (r->norm) {
    case DYNMOE_NORM_SELECTED: div = sum_selected; break;
    case DYNMOE_NORM_KEPT: div = sum_kept; break;
    default: break;
    }
    for (int32_t i = 0; i < K; i++) {
        if (ids_out[i] < 0) continue;
        float w = w_out[i];
        if (r->norm == DYNMOE_NORM_UNIFORM) {
            w = 1.0f / (float)kept;
        } else if (div != 0.0f && dm_isfinite(div)) {
            w = w / div;
        }
        if (r->expert_scale) w *= r->expert_scale[ids_out[i]];
        w_out[i] = w * r->scale;
    }
}

/* Scratch one serial token route needs: scores and choices of E+Z experts. */
typedef struct dm_token_scratch {
    float s[DM_MAX_CANDIDATES];
    float c[DM_MAX_CANDIDATES];
} dm_token_scratch;

/* Routes one token on one thread: logits [E+Z] (fp32), bias [E+Z] or NULL,
 * mask [E] (fp32) or NULL. Writes ids/w [K]. Returns 1 when the token had no
 * finite logit (all slots empty), else 0. */
DYNMOE_HD int dm_route_token_serial(const dynmoe_router *r, const float *logits, const float *bias,
                                    const float *mask, dm_token_scratch *scratch, int32_t *ids,
                                    float *w) {
    const int32_t E = r->num_experts, N = r->num_experts + r->num_zero_experts;
    float *s = scratch->s, *c = scratch->c;

    float max_logit = dm_neg_inf();
    for (int32_t e = 0; e < N; e++)
        if (dm_isfinite(logits[e]) && logits[e] > max_logit) max_logit = logits[e];
    if (!dm_isfinite(max_logit)) {
        for (int32_t k = 0; k < r->top_k; k++) {
            ids[k] = -1;
            w[k] = 0.0f;
        }
        return 1;
    }
    float inv_sum = 1.0f;
    if (r->score == DYNMOE_SCORE_SOFTMAX) {
        float sum = 0.0f;
        for (int32_t e = 0; e < N; e++)
            if (dm_isfinite(logits[e])) sum += DM_EXPF(logits[e] - max_logit);
        inv_sum = 1.0f / sum;
    }
    for (int32_t e = 0; e < N; e++) {
        s[e] = dm_score(r->score, logits[e], max_logit, inv_sum);
        c[e] = dm_choice(r, logits[e], s[e], bias ? bias[e] : 0.0f);
    }

    if (r->num_groups > 0) {
        float gsel_c[DM_MAX_GROUPS];
        int32_t gsel_id[DM_MAX_GROUPS];
        int32_t ng = 0;
        for (int32_t j = 0; j < r->num_groups; j++) {
            int32_t b0 = dm_group_begin(E, r->num_groups, j), b1 = dm_group_begin(E, r->num_groups, j + 1);
            float g = dm_group_score(c + b0, s + b0, b1 - b0, bias != NULL);
            ng = dm_topk_insert(gsel_c, gsel_id, ng, r->topk_groups, g, j);
        }
        for (int32_t j = 0; j < r->num_groups; j++) {
            int keep = 0;
            for (int32_t i = 0; i < ng; i++) keep |= gsel_id[i] == j;
            if (keep) continue;
            int32_t b0 = dm_group_begin(E, r->num_groups, j), b1 = dm_group_begin(E, r->num_groups, j + 1);
            for (int32_t e = b0; e < b1; e++) c[e] = dm_neg_inf();
        }
    }

    float sel_c[DYNMOE_MAX_TOP_K];
    int32_t sel_id[DYNMOE_MAX_TOP_K];
    int32_t n = 0;
    for (int32_t e = 0; e < N; e++) n = dm_topk_insert(sel_c, sel_id, n, r->top_k, c[e], e);

    float sel_s[DYNMOE_MAX_TOP_K], sel_mask[DYNMOE_MAX_TOP_K];
    for (int32_t i = 0; i < n; i++) {
        sel_s[i] = s[sel_id[i]];
        sel_mask[i] = (mask && sel_id[i] < E) ? mask[sel_id[i]] : 1.0f;
    }
    dm_finalize_slots(r, n, sel_id, sel_s, mask ? sel_mask : NULL, ids, w);
    return 0;
}

/* CaRE: an expert chosen by several tasks keeps its first slot, with the
 * summed weight; later slots of the same id become empty. ids/w [S]. */
DYNMOE_HD void dm_merge_duplicate_slots(int32_t S, int32_t *ids, float *w) {
    for (int32_t j = 1; j < S; j++) {
        if (ids[j] < 0) continue;
        for (int32_t i = 0; i < j; i++) {
            if (ids[i] == ids[j]) {
                w[i] += w[j];
                ids[j] = -1;
                w[j] = 0.0f;
                break;
            }
        }
    }
}

#endif /* DYNMOE_ROUTE_RULES_H */
