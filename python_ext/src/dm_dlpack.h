/*
 * dm_dlpack.h — the DLPack exchange ABI (v1.x), the few declarations dynmoe's
 * Python extension needs to read a tensor that torch, numpy or cupy export.
 *
 * These declarations follow the DLPack specification (dmlc/dlpack,
 * include/dlpack/dlpack.h, Apache License 2.0, Copyright (c) 2017 by
 * Contributors); only the struct layouts and constants are reproduced, so that
 * the build needs no extra package. The layouts are an ABI: do not reorder.
 */
#ifndef DM_DLPACK_H
#define DM_DLPACK_H

#include <stdint.h>

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

/* Device types (DLDeviceType); only the ones dynmoe tells apart. */
enum {
    kDLCPU = 1,
    kDLCUDA = 2,
    kDLCUDAHost = 3,
    kDLROCM = 10,
    kDLCUDAManaged = 13,
};

typedef struct {
    int32_t device_type; /* DLDeviceType, an enum of int size */
    int32_t device_id;
} DLDevice;

/* Type codes (DLDataTypeCode). */
enum { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLBool = 6 };

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides; /* in elements; NULL = compact row-major (legacy producers) */
    uint64_t byte_offset;
} DLTensor;

/* Legacy capsule "dltensor". */
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

#define DLPACK_FLAG_BITMASK_READ_ONLY (1UL << 0UL)
#define DLPACK_FLAG_BITMASK_IS_COPIED (1UL << 1UL)

/* Versioned capsule "dltensor_versioned" (DLPack >= 1.0). */
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

#endif /* DM_DLPACK_H */
