/* Built when the CUDA backend is not: a CUDA context is unsupported. */
#include "backend.h"

dynmoe_status dm_cuda_ctx_init(dynmoe_ctx *ctx, int device) {
    (void)ctx;
    return dm_fail(DYNMOE_ERR_UNSUPPORTED,
                   "dynmoe was built without the CUDA backend (device %d requested)", device);
}

int dm_cuda_device_count(void) { return 0; }
