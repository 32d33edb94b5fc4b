/* cpu/backend.c — the CPU backend's table (it has no state of its own) and
 * its one way into OpenMP. */
#include "cpu.h"

const dm_backend_ops dm_cpu_ops = {
    dm_cpu_route, dm_cpu_route_tasks, dm_cpu_plan, dm_cpu_experts, dm_cpu_combine, NULL,
};

void dm_cpu_parallel(int threads, void (*body)(void *arg), void *arg) {
    if (threads <= 1) {
        body(arg);
        return;
    }
#pragma omp parallel num_threads(threads)
    body(arg);
}
