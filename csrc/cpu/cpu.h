/* cpu.h — the CPU backend's stage functions (one file per stage). */
#ifndef DYNMOE_CPU_H
#define DYNMOE_CPU_H

#include "../backend.h"

dynmoe_status dm_cpu_route(dynmoe_ctx *ctx, const dm_route_args *a, void *stream);
dynmoe_status dm_cpu_route_tasks(dynmoe_ctx *ctx, const dm_route_tasks_args *a, void *stream);
dynmoe_status dm_cpu_plan(dynmoe_ctx *ctx, const dm_plan_args *a, void *stream);
dynmoe_status dm_cpu_experts(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);
dynmoe_status dm_cpu_combine(dynmoe_ctx *ctx, const dm_experts_args *a, void *stream);

#endif
