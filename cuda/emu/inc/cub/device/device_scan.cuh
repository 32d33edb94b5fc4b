#pragma once
/* Stand-in for CUB in the host emulation (cuda/emu/run.sh): the same results, serially. */
#include <cuda_runtime.h>
namespace cub {
struct DeviceScan {
    static cudaError_t ExclusiveSum(void *tmp, size_t &bytes, int32_t *in, int32_t *out, int n, cudaStream_t = 0) {
        if (tmp == nullptr) { bytes = 1000 + n / 100; return 0; }
        int32_t run = 0; for (int i = 0; i < n; i++) { int32_t v = in[i]; out[i] = run; run += v; }
        return 0;
    }
};
}
