/* cpu/plan.c — the expert-major layout of a routing table: a stable counting
 * sort of the slots by expert. O(T*S + E), one thread: at T*S = 16k slots it
 * takes microseconds, far below the experts' milliseconds. */
#include "cpu.h"

dynmoe_status dm_cpu_plan(dynmoe_ctx *ctx, const dm_plan_args *a, void *stream) {
    (void)ctx;
    (void)stream;
    const int32_t E = a->num_experts, Z = a->num_zero_experts;
    const int64_t n = a->T * a->slots;
    const dynmoe_plan *p = &a->plan;
    int32_t *cursor = (int32_t *)a->temp; /* [E] next free row of each expert */
    int64_t empty = 0, zero = 0, invalid = 0;

    for (int32_t e = 0; e < E; e++) p->expert_counts[e] = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = a->ids[i];
        if (id >= 0 && id < E) p->expert_counts[id]++;
        else if (id == -1) empty++;
        else if (id >= E && id < E + Z) zero++;
        else invalid++;
    }
    int32_t acc = 0, active = 0, max_rows = 0;
    for (int32_t e = 0; e < E; e++) {
        int32_t c = p->expert_counts[e];
        p->expert_offsets[e] = acc;
        cursor[e] = acc;
        acc += c;
        if (c > 0) p->active_experts[active++] = e;
        if (c > max_rows) max_rows = c;
    }
    p->expert_offsets[E] = acc;
    *p->num_active = active;
    /* Slots in increasing t*S+k order: rows come out sorted by (expert, token, slot). */
    for (int64_t i = 0; i < n; i++) {
        int32_t id = a->ids[i];
        if (id >= 0 && id < E) {
            int32_t row = cursor[id]++;
            p->sorted_slots[row] = (int32_t)i;
            p->slot_rows[i] = row;
        } else {
            p->slot_rows[i] = -1;
        }
    }
    if (a->stats) {
        dynmoe_stats *s = a->stats;
        s->tokens = a->T;
        s->routed_slots = acc;
        s->empty_slots = empty;
        s->zero_expert_slots = zero;
        s->invalid_ids = invalid;
        s->active_experts = active;
        s->max_expert_rows = max_rows;
    }
    return DYNMOE_OK;
}
