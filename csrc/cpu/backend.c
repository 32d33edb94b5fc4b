/* cpu/backend.c — the CPU backend's table (it has no state of its own) and
 * its one way into OpenMP. */
#include "cpu.h"

/* The CPU expert kernels implement every expert option of API 0.2: every
 * activation, both gate/up layouts, biases, weight_on_input (issue 15) and
 * the quantized weight formats (issue 16). */
static dynmoe_status cpu_supports(const char *fn, const dynmoe_router *r, const dynmoe_experts *x) {
    (void)fn, (void)r, (void)x;
    return DYNMOE_OK;
}

const dm_backend_ops dm_cpu_ops = {
    dm_cpu_route, dm_cpu_route_tasks, dm_cpu_plan, dm_cpu_experts, dm_cpu_combine, cpu_supports, NULL,
};

void dm_cpu_parallel(int threads, void (*body)(void *arg), void *arg) {
    if (threads <= 1) {
        body(arg);
        return;
    }
#pragma omp parallel num_threads(threads)
    body(arg);
}
