/* nvtx.h — named ranges around each stage of a forward call, visible in
 * Nsight Systems (NVTX3 is header-only; host-side and graph-safe). Empty
 * when the library is built without CUDA. */
#ifndef DYNMOE_NVTX_H
#define DYNMOE_NVTX_H

#ifdef DYNMOE_HAVE_NVTX
#include <nvtx3/nvToolsExt.h>
#define DM_RANGE_PUSH(name) nvtxRangePushA(name)
#define DM_RANGE_POP() nvtxRangePop()
#else
#define DM_RANGE_PUSH(name) ((void)0)
#define DM_RANGE_POP() ((void)0)
#endif

#endif
