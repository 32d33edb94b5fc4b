/* cpu/backend.c — the CPU backend's table (it has no state of its own) and
 * its one way into OpenMP. */
#include "cpu.h"

/* What the CPU expert kernels do not implement yet (issue 16). Every
 * activation, both gate/up layouts, biases and weight_on_input are (issue 15). */
static dynmoe_status cpu_supports(const char *fn, const dynmoe_router *r, const dynmoe_experts *x) {
    (void)r;
    if (x->weight_format != DYNMOE_WEIGHTS_PLAIN)
        return dm_fail(DYNMOE_ERR_UNSUPPORTED, "%s: quantized weights are not implemented on the CPU backend yet", fn);
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
