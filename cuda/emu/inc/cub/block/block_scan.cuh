#pragma once
/* Stand-in for CUB in the host emulation (cuda/emu/run.sh): the same results, serially. */
#include <cuda_runtime.h>
namespace cub {
template <class T, int THREADS> struct BlockScan {
    struct TempStorage { T part[THREADS]; };
    TempStorage &s;
    BlockScan(TempStorage &t) : s(t) {}
    template <int N> void ExclusiveSum(T (&in)[N], T (&out)[N], T &agg) {
        T loc = 0; for (int j = 0; j < N; j++) loc += in[j];
        s.part[threadIdx.x] = loc; __syncthreads();
        T run = 0, tot = 0;
        for (unsigned i = 0; i < blockDim.x; i++) { if (i < threadIdx.x) run += s.part[i]; tot += s.part[i]; }
        __syncthreads();
        for (int j = 0; j < N; j++) { out[j] = run; run += in[j]; }
        agg = tot;
    }
};
}
