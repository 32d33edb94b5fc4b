/* ep/ep_cuda.h — the device steps of the NCCL path (ep_kernels.cu), C
 * linkage, no CUDA types: `stream` is a cudaStream_t, the return value a
 * cudaError_t (0 = success). Arguments are trusted (validated by ep.c). */
#ifndef DYNMOE_EP_CUDA_H
#define DYNMOE_EP_CUDA_H

#include <stdint.h>

#include "dynmoe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Device copies of the placement (struct dynmoe_ep's tables). */
typedef struct dm_ep_dev_tables {
    const int32_t *copies;     /* [E] */
    const int32_t *copy_rank;  /* [E, P] */
    const int32_t *copy_local; /* [E, P] */
    const int32_t *self_copy;  /* [E] */
    int32_t replicas;          /* P */
} dm_ep_dev_tables;

/* dest[s] = the rank that runs slot s (real experts), else -1.  ids [n], n = T*K. */
int dm_ep_cuda_dest(const int32_t *ids, int64_t n, int32_t K, int32_t E, dm_ep_dev_tables tab, int32_t *dest,
                    void *stream);

typedef struct dm_ep_pack_args {
    int64_t n;                     /* T*K slots */
    int32_t K, E, Z, capacity;     /* capacity 0: exact mode */
    dm_ep_dev_tables tab;
    int32_t *ids;                  /* [n]; dropped slots become -1 */
    const int32_t *dest;           /* [n] */
    const int32_t *dest_offsets;   /* [R+1] plan of dest */
    const int32_t *dest_slot_rows; /* [n]    position in (rank, token, slot) order */
    int32_t *send_index;           /* [n] out: row of the send/back buffers, -1 */
    int32_t *send_ids;             /* [rows] out: local expert on the destination */
    char *send_rows;               /* [rows, row_bytes] out */
    const char *x;                 /* [T, row_bytes] */
    int32_t row_bytes;             /* H * sizeof(dtype), even */
    long long *counters;           /* [4] += sent, overflow, empty, zero (zeroed by the caller) */
} dm_ep_pack_args;

int dm_ep_cuda_pack(const dm_ep_pack_args *a, void *stream);
int dm_ep_cuda_fill(float *p, int64_t n, float v, void *stream);
/* stats->tokens .. overflow_slots from the counters and the local plan's stats
 * (lstats, or zeros when computed == 0). */
int dm_ep_cuda_stats(dynmoe_stats *stats, const long long *counters, const dynmoe_stats *lstats, int computed,
                     int64_t T, void *stream);

#ifdef __cplusplus
}
#endif

#endif
