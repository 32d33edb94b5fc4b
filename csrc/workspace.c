/* workspace.c — the one layout of the caller's workspace, for every backend.
 *
 *   [ids T*S i32][weights T*S f32]                        route output (forward only)
 *   [counts E][offsets E+1][sorted_slots T*S][slot_rows T*S][active E][num_active 1]
 *   [plan_temp]                                           device sort/scan temporaries
 *   [rows_h T*S x 2I f32][rows_y T*S x H f32][scratch]    expert rows (forward only)
 *   scratch (CPU): [item table E+1 i32][one slice per core: packed rows]
 *
 * Everything is sized by T*S + E (no padding rows); each region is 256-byte
 * aligned so that any backend can use vector loads on it. */
#include "backend.h"

#include <omp.h>

size_t dm_layout_region(dm_layout_cursor *c, size_t count, size_t elem) {
    size_t bytes;
    if (__builtin_mul_overflow(count, elem, &bytes) || bytes > SIZE_MAX - 2 * DM_WORKSPACE_ALIGN) {
        c->ok = 0;
        return 0;
    }
    size_t start = c->at;
    size_t end = start + bytes;
    if (end < start) c->ok = 0;
    end = (end + DM_WORKSPACE_ALIGN - 1) / DM_WORKSPACE_ALIGN * DM_WORKSPACE_ALIGN;
    if (end < start) c->ok = 0;
    c->at = end;
    return start;
}

int dm_cpu_scratch_slices(void) {
    /* Counted once: omp_get_num_procs() follows the calling thread's affinity,
     * and the size of a workspace must not change between calls. */
    static int slices; /* 0 until the first call */
    int s = __atomic_load_n(&slices, __ATOMIC_ACQUIRE);
    if (s == 0) {
        int procs = omp_get_num_procs(), none = 0;
        __atomic_compare_exchange_n(&slices, &none, procs > 0 ? procs : 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        s = __atomic_load_n(&slices, __ATOMIC_ACQUIRE);
    }
    return s;
}

int32_t dm_router_slots(const dynmoe_router *r) {
    /* In 64 bits: on a router not yet checked the product may pass 2^31. */
    const int64_t s = r->num_tasks > 0 ? (int64_t)r->top_k * r->top_tasks : r->top_k;
    return s > INT32_MAX ? INT32_MAX : s < INT32_MIN ? INT32_MIN : (int32_t)s;
}

int dm_workspace_layout_of(const dynmoe_router *r, const dynmoe_experts *experts, int64_t T,
                           int32_t slots, dm_workspace_layout *l) {
    dm_layout_cursor c = {0, 1};
    size_t E = (size_t)r->num_experts;
    size_t n = (size_t)T * (size_t)slots; /* T <= 2^24 and slots <= 4096: no overflow */
    *l = (dm_workspace_layout){0};
    if (experts) {
        l->ids = dm_layout_region(&c, n, sizeof(int32_t));
        l->weights = dm_layout_region(&c, n, sizeof(float));
    }
    l->counts = dm_layout_region(&c, E, sizeof(int32_t));
    l->offsets = dm_layout_region(&c, E + 1, sizeof(int32_t));
    l->sorted_slots = dm_layout_region(&c, n, sizeof(int32_t));
    l->slot_rows = dm_layout_region(&c, n, sizeof(int32_t));
    l->active = dm_layout_region(&c, E, sizeof(int32_t));
    l->num_active = dm_layout_region(&c, 1, sizeof(int32_t));
    /* Temporaries of a device sort/scan (keys and values double-buffered). */
    l->plan_temp = dm_layout_region(&c, 4 * n + 2 * E + (1u << 16), sizeof(int32_t));
    l->plan_temp_bytes = c.at - l->plan_temp;
    l->plan_end = c.at;
    if (experts) {
        size_t H = (size_t)experts->hidden, I = (size_t)experts->inter;
        size_t hn, yn;
        if (__builtin_mul_overflow(n, 2 * I, &hn) || __builtin_mul_overflow(n, H, &yn)) return 0;
        l->rows_h = dm_layout_region(&c, hn, sizeof(float));
        l->rows_y = dm_layout_region(&c, yn, sizeof(float));
        /* CPU: the item table, then a slice of packed rows per core (not per
         * thread: the size must not change with the thread count). */
        const size_t scratch = dm_cpu_item_table_floats(E) +
                               dm_cpu_scratch_floats(H, I, n) * (size_t)dm_cpu_scratch_slices() +
                               dm_packed_scratch_floats(experts, n);
        l->scratch = dm_layout_region(&c, scratch, sizeof(float));
        l->scratch_bytes = c.at - l->scratch;
    }
    l->total = c.at;
    return c.ok;
}

dynmoe_plan dm_plan_pointers(void *workspace, const dm_workspace_layout *l, int32_t num_experts,
                             int64_t num_slots) {
    char *w = (char *)workspace;
    dynmoe_plan p;
    p.num_experts = num_experts;
    p.num_slots = num_slots;
    p.expert_counts = (int32_t *)(w + l->counts);
    p.expert_offsets = (int32_t *)(w + l->offsets);
    p.sorted_slots = (int32_t *)(w + l->sorted_slots);
    p.slot_rows = (int32_t *)(w + l->slot_rows);
    p.active_experts = (int32_t *)(w + l->active);
    p.num_active = (int32_t *)(w + l->num_active);
    return p;
}
