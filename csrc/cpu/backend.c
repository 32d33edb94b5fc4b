/* cpu/backend.c — the CPU backend's table. It has no state of its own. */
#include "cpu.h"

const dm_backend_ops dm_cpu_ops = {
    dm_cpu_route, dm_cpu_route_tasks, dm_cpu_plan, dm_cpu_experts, dm_cpu_combine, NULL,
};
