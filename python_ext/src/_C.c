/*
 * _C.c — dynmoe._C, the CPython extension over the C API (include/dynmoe.h).
 *
 * Every tensor argument is any object with __dlpack__/__dlpack_device__
 * (torch, numpy >= 1.22, cupy) or a DLPack capsule. This file checks shapes,
 * dtypes, devices, contiguity and alignment with clear ValueError/TypeError
 * messages, then calls the C API with the GIL released. Outputs and the
 * workspace are allocated by the Python layer (dynmoe/_core.py) in the
 * caller's framework and passed in like any other tensor; this file
 * allocates nothing but the contexts (one per device, created on first use).
 *
 * A failing C call raises dynmoe.DynmoeError(status, status_name, detail).
 * The functions here are private: positional arguments in a fixed order,
 * the router as a tuple (dynmoe.Router._c). The public API is dynmoe/_core.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include <stdio.h>
#include <string.h>

#include "dm_dlpack.h"
#include "dynmoe.h"

_Static_assert(sizeof(dynmoe_stats) % sizeof(int64_t) == 0, "dynmoe_stats is a row of int64");
#define DM_STATS_LEN ((int64_t)(sizeof(dynmoe_stats) / sizeof(int64_t)))
#define DM_MAX_DEVICES 64

static PyObject *g_error_class; /* dynmoe.DynmoeError, set by _set_error_class */
/* torch.Tensor and torch.utils.dlpack.to_dlpack, set by _set_torch when torch
 * is imported: a torch tensor is exported with one C call, without going
 * through Tensor.__dlpack__ and __dlpack_device__ in Python (tens of
 * microseconds per call otherwise) and without a stream sync, which is right
 * because dynmoe enqueues on the caller's current stream. */
static PyObject *g_torch_tensor, *g_torch_to_dlpack;

/* ------------------------------------------------------------------ errors */

/* Raises DynmoeError(status, status_name, detail). Returns NULL. */
static PyObject *raise_status(dynmoe_status st, const char *detail) {
    PyObject *cls = g_error_class ? g_error_class : PyExc_RuntimeError;
    PyObject *exc = PyObject_CallFunction(cls, "iss", (int)st, dynmoe_status_name(st), detail);
    if (exc == NULL) return NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

/* ----------------------------------------------------------------- devices */

typedef struct {
    int cuda;     /* 0: host memory (CPU backend), 1: CUDA device memory */
    int id;       /* CUDA ordinal */
    int set;      /* a tensor has fixed the device of this call */
    const char *first; /* the tensor that fixed it, for messages */
} dm_dev;

static void dev_str(int cuda, int id, char *buf, size_t n) {
    if (cuda)
        snprintf(buf, n, "cuda:%d", id);
    else
        snprintf(buf, n, "cpu");
}

static dynmoe_ctx *g_ctx[2][DM_MAX_DEVICES];       /* [cuda][id]: plain calls */
static dynmoe_ctx *g_stats_ctx[2][DM_MAX_DEVICES]; /* calls with a stats block */
static PyThread_type_lock g_stats_lock;            /* one stats call at a time */

/* The context of a device, created on first use (with the GIL held). */
static dynmoe_ctx *get_ctx(const dm_dev *dev, int stats) {
    if (dev->id < 0 || dev->id >= DM_MAX_DEVICES) {
        PyErr_Format(PyExc_ValueError, "dynmoe: device ordinal %d out of range", dev->id);
        return NULL;
    }
    dynmoe_ctx **slot = stats ? &g_stats_ctx[dev->cuda][dev->id] : &g_ctx[dev->cuda][dev->id];
    if (*slot == NULL) {
        dynmoe_status st = dynmoe_ctx_create(slot, dev->cuda ? DYNMOE_BACKEND_CUDA : DYNMOE_BACKEND_CPU,
                                             dev->cuda ? dev->id : 0);
        if (st != DYNMOE_OK) {
            *slot = NULL;
            raise_status(st, dynmoe_last_error());
            return NULL;
        }
    }
    return *slot;
}

/* ----------------------------------------------------------------- tensors */

enum {
    DM_F32 = 1 << 0,
    DM_F16 = 1 << 1,
    DM_BF16 = 1 << 2,
    DM_I32 = 1 << 3,
    DM_I64 = 1 << 4,
    DM_ANY = 1 << 5, /* raw bytes: any dtype (workspace) */
    DM_U8 = 1 << 6,  /* quantized weight bytes, MXFP4 scales, INT4 zero points */
    DM_FLOAT = DM_F32 | DM_F16 | DM_BF16,
};

typedef struct {
    const char *name;
    PyObject *cap; /* the DLPack capsule, owned; releasing it lets the producer go */
    DLTensor *t;
    int readonly;
    int copied;    /* the producer exported a copy: writes would be lost */
    int kind;      /* one DM_* bit */
    char *data;    /* data + byte_offset; NULL when empty */
    int64_t numel;
    int64_t nbytes;
} dm_tensor;

static void tensor_release(dm_tensor *a) {
    Py_CLEAR(a->cap);
    a->t = NULL;
}

static const char *kind_name(int kind) {
    switch (kind) {
    case DM_F32: return "float32";
    case DM_F16: return "float16";
    case DM_BF16: return "bfloat16";
    case DM_I32: return "int32";
    case DM_I64: return "int64";
    case DM_U8: return "uint8";
    default: return "another dtype";
    }
}

static void kinds_str(int mask, char *buf, size_t n) {
    buf[0] = 0;
    static const int all[] = {DM_F32, DM_F16, DM_BF16, DM_I32, DM_I64, DM_U8};
    int first = 1;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (!(mask & all[i])) continue;
        size_t len = strlen(buf);
        snprintf(buf + len, n - len, "%s%s", first ? "" : " or ", kind_name(all[i]));
        first = 0;
    }
}

static int dtype_kind(DLDataType d) {
    if (d.lanes != 1) return 0;
    if (d.code == kDLFloat && d.bits == 32) return DM_F32;
    if (d.code == kDLFloat && d.bits == 16) return DM_F16;
    if (d.code == kDLBfloat && d.bits == 16) return DM_BF16;
    if (d.code == kDLInt && d.bits == 32) return DM_I32;
    if (d.code == kDLInt && d.bits == 64) return DM_I64;
    if (d.code == kDLUInt && d.bits == 8) return DM_U8;
    return 0;
}

static dynmoe_dtype to_dynmoe_dtype(int kind) {
    return kind == DM_F16 ? DYNMOE_F16 : kind == DM_BF16 ? DYNMOE_BF16 : DYNMOE_F32;
}

/* Calls obj.__dlpack__(**kwargs), first asking for a versioned capsule. */
static PyObject *call_dlpack(PyObject *method, PyObject *stream) {
    PyObject *kw = PyDict_New();
    if (kw == NULL) return NULL;
    PyObject *empty = PyTuple_New(0);
    PyObject *res = NULL;
    if (empty == NULL) goto done;
    if (stream && PyDict_SetItemString(kw, "stream", stream) < 0) goto done;
    PyObject *ver = Py_BuildValue("(ii)", 1, 0);
    if (ver == NULL || PyDict_SetItemString(kw, "max_version", ver) < 0) {
        Py_XDECREF(ver);
        goto done;
    }
    Py_DECREF(ver);
    res = PyObject_Call(method, empty, kw);
    if (res == NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {
        /* A producer older than DLPack 1.0: no max_version keyword. */
        PyErr_Clear();
        if (PyDict_DelItemString(kw, "max_version") < 0) goto done;
        res = PyObject_Call(method, empty, kw);
    }
done:
    Py_XDECREF(empty);
    Py_DECREF(kw);
    return res;
}

/* obj.<attr> is True, e.g. "requires_grad" (a torch tensor that DLPack will
 * not export) or "is_meta" (a torch tensor on the meta device: shapes, no
 * data); never raises, keeps a pending exception. */
static int attr_is_true(PyObject *obj, const char *attr) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *v = PyObject_GetAttrString(obj, attr);
    int yes = v != NULL && v == Py_True;
    Py_XDECREF(v);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    return yes;
}

/* Imports `obj` (a DLPack tensor or capsule) into `a`. `stream` is the
 * Python int handed to __dlpack__(stream=...) for device tensors. */
static int tensor_import(const char *fn, const char *name, PyObject *obj, PyObject *stream, dm_tensor *a) {
    memset(a, 0, sizeof *a);
    a->name = name;
    if (PyCapsule_CheckExact(obj)) {
        Py_INCREF(obj);
        a->cap = obj;
    } else if (g_torch_tensor != NULL && PyObject_TypeCheck(obj, (PyTypeObject *)g_torch_tensor) &&
               (a->cap = PyObject_CallOneArg(g_torch_to_dlpack, obj)) != NULL) {
        /* exported */
    } else {
        /* torch failed to export it: a meta tensor is the one case whose
         * message (torch's) would not name the argument */
        if (PyErr_Occurred() && attr_is_true(obj, "is_meta")) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "%s: %s is on the meta device (no data); dynmoe takes CPU or CUDA tensors", fn, name);
            return -1;
        }
        PyErr_Clear();
        PyObject *method = PyObject_GetAttrString(obj, "__dlpack__");
        if (method == NULL) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "%s: %s must be a tensor that supports DLPack (torch, numpy >= 1.22, cupy), got %.200s",
                         fn, name, Py_TYPE(obj)->tp_name);
            return -1;
        }
        PyObject *use_stream = NULL;
        PyObject *devm = PyObject_GetAttrString(obj, "__dlpack_device__");
        if (devm == NULL) {
            PyErr_Clear();
        } else {
            PyObject *dev = PyObject_CallNoArgs(devm);
            Py_DECREF(devm);
            if (dev == NULL) {
                Py_DECREF(method);
                return -1;
            }
            int dtype_ = 0, did = 0;
            if (!PyArg_ParseTuple(dev, "ii", &dtype_, &did)) {
                Py_DECREF(dev);
                Py_DECREF(method);
                return -1;
            }
            Py_DECREF(dev);
            if (dtype_ == kDLCUDA || dtype_ == kDLCUDAManaged || dtype_ == kDLROCM) use_stream = stream;
        }
        a->cap = call_dlpack(method, use_stream);
        Py_DECREF(method);
        if (a->cap == NULL && attr_is_true(obj, "requires_grad")) {
            /* torch refuses to export a tensor that requires grad; dynmoe only
             * reads it (the custom ops have no autograd), so export a detached view. */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyObject *det = PyObject_CallMethod(obj, "detach", NULL);
            if (det != NULL) {
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
                int rc = tensor_import(fn, name, det, stream, a);
                Py_DECREF(det);
                return rc;
            }
            PyErr_Clear();
            PyErr_Restore(type, value, tb);
        }
        if (a->cap == NULL) {
            /* numpy raises BufferError for read-only arrays on old DLPack. */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_Format(PyExc_TypeError, "%s: %s could not be exported with DLPack: %S", fn, name,
                         value ? value : Py_None);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            return -1;
        }
        if (!PyCapsule_CheckExact(a->cap)) {
            PyErr_Format(PyExc_TypeError, "%s: %s.__dlpack__() did not return a capsule", fn, name);
            tensor_release(a);
            return -1;
        }
    }
    if (PyCapsule_IsValid(a->cap, "dltensor_versioned")) {
        DLManagedTensorVersioned *m = PyCapsule_GetPointer(a->cap, "dltensor_versioned");
        if (m->version.major != 1) {
            PyErr_Format(PyExc_TypeError, "%s: %s is a DLPack %u.%u tensor; dynmoe reads DLPack 1.x", fn,
                         name, m->version.major, m->version.minor);
            tensor_release(a);
            return -1;
        }
        a->t = &m->dl_tensor;
        a->readonly = (m->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0;
        a->copied = (m->flags & DLPACK_FLAG_BITMASK_IS_COPIED) != 0;
    } else if (PyCapsule_IsValid(a->cap, "dltensor")) {
        DLManagedTensor *m = PyCapsule_GetPointer(a->cap, "dltensor");
        a->t = &m->dl_tensor;
    } else {
        PyErr_Format(PyExc_TypeError, "%s: %s is a capsule that is not an unused DLPack tensor", fn, name);
        tensor_release(a);
        return -1;
    }
    DLTensor *t = a->t;
    a->kind = dtype_kind(t->dtype);
    a->numel = 1;
    for (int i = 0; i < t->ndim; i++) a->numel *= t->shape[i];
    a->nbytes = a->numel * ((t->dtype.bits * t->dtype.lanes + 7) / 8);
    a->data = a->numel > 0 ? (char *)t->data + t->byte_offset : NULL;
    return 0;
}

static void shape_str(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t len = 0;
    len += snprintf(buf + len, n - len, "(");
    for (int i = 0; i < ndim && len < n; i++)
        len += snprintf(buf + len, n - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (len < n) snprintf(buf + len, n - len, "%s)", ndim == 1 ? "," : "");
}

/* Checks an imported tensor: dtype in `kinds`, ndim and shape (entries < 0
 * are free), row-major contiguous, 16-byte aligned, on the call's device,
 * writable when `out`. `desc` names the expected shape ("[T, E+Z]"). */
static int tensor_check(const char *fn, dm_tensor *a, int kinds, int ndim, const int64_t *shape,
                        const char *desc, dm_dev *dev, int out) {
    DLTensor *t = a->t;
    char b1[256], b2[256];
    if (!(a->kind & kinds) && !(kinds & DM_ANY)) {
        kinds_str(kinds, b1, sizeof b1);
        if (a->kind)
            PyErr_Format(PyExc_TypeError, "%s: %s must be %s, got %s", fn, a->name, b1, kind_name(a->kind));
        else {
            static const char *codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
            const char *c = t->dtype.code < 7 ? codes[t->dtype.code] : "dtype-code-";
            if (t->dtype.lanes == 1)
                PyErr_Format(PyExc_TypeError, "%s: %s must be %s, got %s%d", fn, a->name, b1, c, t->dtype.bits);
            else
                PyErr_Format(PyExc_TypeError, "%s: %s must be %s, got %s%dx%d", fn, a->name, b1, c,
                             t->dtype.bits, t->dtype.lanes);
        }
        return -1;
    }
    if (ndim >= 0) {
        int bad = t->ndim != ndim;
        for (int i = 0; !bad && i < ndim; i++) bad = shape[i] >= 0 && t->shape[i] != shape[i];
        if (bad) {
            shape_str(t->shape, t->ndim, b1, sizeof b1);
            if (ndim > 0) {
                int64_t show[8];
                for (int i = 0; i < ndim && i < 8; i++) show[i] = shape[i];
                shape_str(show, ndim, b2, sizeof b2);
                /* -1 entries print as -1: say "any" instead. */
                PyErr_Format(PyExc_ValueError, "%s: %s has shape %s, expected %s = %s%s", fn, a->name, b1, desc,
                             b2, strstr(b2, "-1") ? " (-1: any)" : "");
            } else {
                PyErr_Format(PyExc_ValueError, "%s: %s has shape %s, expected %s", fn, a->name, b1, desc);
            }
            return -1;
        }
    }
    if (t->strides != NULL && a->numel > 0) {
        int64_t expect = 1;
        for (int i = t->ndim - 1; i >= 0; i--) {
            if (t->shape[i] != 1 && t->strides[i] != expect) {
                PyErr_Format(PyExc_ValueError,
                             "%s: %s must be contiguous (row-major); pass x.contiguous() (torch) or "
                             "np.ascontiguousarray(x) (numpy)",
                             fn, a->name);
                return -1;
            }
            expect *= t->shape[i];
        }
    }
    if (((uintptr_t)a->data & 15u) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s: %s is not 16-byte aligned (a view at an odd offset?); pass a copy (x.clone() / x.copy())",
                     fn, a->name);
        return -1;
    }
    int dt = t->device.device_type, cuda;
    if (dt == kDLCPU || dt == kDLCUDAHost)
        cuda = 0;
    else if (dt == kDLCUDA || dt == kDLCUDAManaged)
        cuda = 1;
    else {
        PyErr_Format(PyExc_ValueError, "%s: %s is on DLPack device type %d; dynmoe takes CPU or CUDA tensors",
                     fn, a->name, dt);
        return -1;
    }
    int id = cuda ? t->device.device_id : 0;
    if (!dev->set) {
        dev->set = 1;
        dev->cuda = cuda;
        dev->id = id;
        dev->first = a->name;
    } else if (dev->cuda != cuda || dev->id != id) {
        dev_str(cuda, id, b1, sizeof b1);
        dev_str(dev->cuda, dev->id, b2, sizeof b2);
        PyErr_Format(PyExc_ValueError, "%s: %s is on %s but %s is on %s: all tensors must be on one device", fn,
                     a->name, b1, dev->first, b2);
        return -1;
    }
    if (out && a->readonly) {
        PyErr_Format(PyExc_ValueError, "%s: %s is read-only", fn, a->name);
        return -1;
    }
    if (out && a->copied) {
        PyErr_Format(PyExc_ValueError, "%s: %s was exported by its framework as a copy; pass a tensor it can share",
                     fn, a->name);
        return -1;
    }
    return 0;
}

/* Import + check in one step; an optional argument (None) leaves a->t NULL. */
static int arg(const char *fn, const char *name, PyObject *obj, PyObject *stream, dm_tensor *a, int kinds,
               int ndim, const int64_t *shape, const char *desc, dm_dev *dev, int out, int optional) {
    if (obj == Py_None) {
        memset(a, 0, sizeof *a);
        if (optional) return 0;
        PyErr_Format(PyExc_TypeError, "%s: %s is required", fn, name);
        return -1;
    }
    if (tensor_import(fn, name, obj, stream, a) < 0) return -1;
    return tensor_check(fn, a, kinds, ndim, shape, desc, dev, out);
}

/* ------------------------------------------------------------------ router */

static int parse_router(PyObject *o, dynmoe_router *r) {
    dynmoe_router init = DYNMOE_ROUTER_INIT;
    *r = init;
    int zero_kind, score, select, norm;
    if (!PyTuple_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "dynmoe: router must be a dynmoe.Router");
        return -1;
    }
    if (!PyArg_ParseTuple(o, "iiiiiiffiiifiii;dynmoe: malformed router tuple", &r->num_experts,
                          &r->num_zero_experts, &zero_kind, &r->top_k, &score, &select, &r->top_p,
                          &r->threshold, &r->num_groups, &r->topk_groups, &norm, &r->scale, &r->num_tasks,
                          &r->top_tasks, &r->weight_on_input))
        return -1;
    r->zero_kind = (dynmoe_zero_kind)zero_kind;
    r->score = (dynmoe_score)score;
    r->select = (dynmoe_select)select;
    r->norm = (dynmoe_norm)norm;
    return 0;
}

/* The tensors of one dynmoe.Experts, imported for one call. */
typedef struct {
    dm_tensor w13, w2, b13, b2, s13, s2, z13, z2;
} dm_experts_t;

static void experts_release(dm_experts_t *e) {
    tensor_release(&e->w13), tensor_release(&e->w2), tensor_release(&e->b13), tensor_release(&e->b2);
    tensor_release(&e->s13), tensor_release(&e->s2), tensor_release(&e->z13), tensor_release(&e->z2);
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Bytes per row of K values of a weight format (include/dynmoe.h). */
static int64_t packed_cols(dynmoe_weight_format f, int64_t K) {
    return f == DYNMOE_WEIGHTS_MXFP4 || f == DYNMOE_WEIGHTS_INT4 ? ceil_div(K, 2) : K;
}

/* The scale (and zero point) of an [E, N, K] matrix: dtype kind and shape. */
static int scale_shape(dynmoe_weight_format f, int32_t g, int64_t E, int64_t N, int64_t K, int64_t *shape,
                       const char **desc) {
    shape[0] = E;
    switch (f) {
    case DYNMOE_WEIGHTS_FP8_BLOCK:
        shape[1] = ceil_div(N, 128), shape[2] = ceil_div(K, 128), *desc = "[E, ceil(N/128), ceil(K/128)] float32";
        return DM_F32;
    case DYNMOE_WEIGHTS_MXFP4:
        shape[1] = N, shape[2] = K / 32, *desc = "[E, N, K/32] uint8 (ue8m0)";
        return DM_U8;
    default:
        shape[1] = N, shape[2] = ceil_div(K, g), *desc = "[E, N, ceil(K/group_size)] float16";
        return DM_F16;
    }
}

/* The experts tuple of dynmoe.Experts._c: (w13, w2, act, b13, b2, gate_up,
 * alpha, limit, weight_format, w13_scale, w2_scale, w13_zero, w2_zero,
 * group_size, dtype) with dtype a DM_* kind or 0 (quantized weights: the
 * dtype of x, or of the biases). Checks every tensor's dtype and shape
 * against w13/w2 (the C API checks fields and alignment only) and fills x
 * with the full 0.2 struct. `x_kind` is x's dtype kind, 0 when no x. */
static int parse_experts(const char *fn, const dynmoe_router *r, PyObject *eo, int x_kind, PyObject *stream,
                         dm_experts_t *e, dm_dev *dev, dynmoe_experts *x) {
    dynmoe_experts init = DYNMOE_EXPERTS_INIT;
    *x = init;
    PyObject *w13, *w2, *b13, *b2, *s13, *s2, *z13, *z2;
    int act, gate_up, fmt, group, kind;
    float alpha, limit;
    PyObject *packed = Py_None; /* a capsule of dynmoe_experts_pack (Experts.pack) or None */
    if (!PyArg_ParseTuple(eo, "OOiOOiffiOOOOii|O;dynmoe: malformed experts tuple", &w13, &w2, &act, &b13, &b2,
                          &gate_up, &alpha, &limit, &fmt, &s13, &s2, &z13, &z2, &group, &kind, &packed))
        return -1;
    if (packed != Py_None) {
        x->packed = (const dynmoe_packed_experts *)PyCapsule_GetPointer(packed, "dynmoe.packed_experts");
        if (x->packed == NULL) return -1;
    }
    if (act < 0 || act >= DYNMOE_ACT_COUNT || fmt < 0 || fmt >= DYNMOE_WEIGHTS_COUNT) {
        PyErr_Format(PyExc_ValueError, "%s: unknown act %d or weight_format %d", fn, act, fmt);
        return -1;
    }
    const dynmoe_weight_format f = (dynmoe_weight_format)fmt;
    const int gated = act != DYNMOE_ACT_RELU2 && act != DYNMOE_ACT_SILU;
    const int plain = f == DYNMOE_WEIGHTS_PLAIN;
    const int wkind = plain ? DM_FLOAT : DM_U8;
    const char *rows_desc = gated ? "[E, 2*I, H]" : "[E, I, H] (non-gated act)";
    int64_t s_13[3] = {r->num_experts, -1, -1};
    if (arg(fn, "w13", w13, stream, &e->w13, wkind, 3, s_13, rows_desc, dev, 0, 0) < 0) return -1;
    int64_t s_2[3] = {r->num_experts, -1, -1};
    if (arg(fn, "w2", w2, stream, &e->w2, wkind, 3, s_2, "[E, H, I]", dev, 0, 0) < 0) return -1;
    const int64_t E = r->num_experts, N13 = e->w13.t->shape[1];
    const int64_t H = plain ? e->w13.t->shape[2] : e->w2.t->shape[1];
    const int64_t I = gated ? N13 / 2 : N13;
    if ((gated && N13 % 2 != 0) || I < 1 || H < 1 || I > INT32_MAX || H > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: w13 has %lld rows per expert; expected %s", fn, (long long)N13,
                     rows_desc);
        return -1;
    }
    if (!plain && (e->w13.t->shape[2] != packed_cols(f, H) || e->w2.t->shape[2] != packed_cols(f, I))) {
        PyErr_Format(PyExc_ValueError,
                     "%s: quantized w13 [E, %lld, %lld] and w2 [E, %lld, %lld] do not pack H = %lld, I = %lld "
                     "(bytes per row: fp8_block K, mxfp4/int4 ceil(K/2))",
                     fn, (long long)N13, (long long)e->w13.t->shape[2], (long long)H, (long long)e->w2.t->shape[2],
                     (long long)H, (long long)I);
        return -1;
    }
    int64_t s_w2[3] = {E, H, plain ? I : packed_cols(f, I)};
    if (plain) {
        if (tensor_check(fn, &e->w2, DM_FLOAT, 3, s_w2, "[E, H, I]", dev, 0) < 0) return -1;
        if (e->w2.kind != e->w13.kind) {
            PyErr_Format(PyExc_TypeError, "%s: w2 is %s but w13 is %s", fn, kind_name(e->w2.kind),
                         kind_name(e->w13.kind));
            return -1;
        }
        kind = e->w13.kind;
    }
    if (f == DYNMOE_WEIGHTS_MXFP4 && (H % 32 != 0 || I % 32 != 0)) {
        PyErr_Format(PyExc_ValueError, "%s: mxfp4 needs H = %lld and I = %lld to be multiples of 32", fn,
                     (long long)H, (long long)I);
        return -1;
    }
    if (f == DYNMOE_WEIGHTS_INT4 && group != 32 && group != 64 && group != 128) {
        PyErr_Format(PyExc_ValueError, "%s: group_size = %d: int4 groups are 32, 64 or 128", fn, group);
        return -1;
    }
    /* The activations' dtype: the plain weights', else Experts(dtype=), else
     * x's, else the biases' (parse_x_experts checks x against it). */
    if (kind == 0) kind = x_kind;
    if (kind == 0 && b13 != Py_None) {
        if (tensor_import(fn, "b13", b13, stream, &e->b13) < 0) return -1;
        kind = e->b13.kind & DM_FLOAT ? e->b13.kind : 0;
        tensor_release(&e->b13);
    }
    if (kind == 0) kind = DM_F32; /* workspace_size of quantized experts without x nor biases */
    int64_t s_b13[2] = {E, N13}, s_b2[2] = {E, H};
    if (arg(fn, "b13", b13, stream, &e->b13, kind, 2, s_b13, "[E, rows of w13] (the experts' dtype)", dev, 0, 1) < 0)
        return -1;
    if (arg(fn, "b2", b2, stream, &e->b2, kind, 2, s_b2, "[E, H] (the experts' dtype)", dev, 0, 1) < 0) return -1;
    if (plain) {
        if (s13 != Py_None || s2 != Py_None || z13 != Py_None || z2 != Py_None) {
            PyErr_Format(PyExc_ValueError, "%s: scales or zero points given but weight_format is plain", fn);
            return -1;
        }
    } else {
        int64_t sh13[3], sh2[3];
        const char *d13, *d2;
        int k13 = scale_shape(f, group, E, N13, H, sh13, &d13), k2 = scale_shape(f, group, E, H, I, sh2, &d2);
        if (arg(fn, "w13_scale", s13, stream, &e->s13, k13, 3, sh13, d13, dev, 0, 0) < 0) return -1;
        if (arg(fn, "w2_scale", s2, stream, &e->s2, k2, 3, sh2, d2, dev, 0, 0) < 0) return -1;
        if (f != DYNMOE_WEIGHTS_INT4 && (z13 != Py_None || z2 != Py_None)) {
            PyErr_Format(PyExc_ValueError, "%s: zero points (w13_zero, w2_zero) are only for weight_format int4", fn);
            return -1;
        }
        if (arg(fn, "w13_zero", z13, stream, &e->z13, DM_U8, 3, sh13, "[E, N, ceil(K/group_size)] uint8", dev, 0, 1) <
                0 ||
            arg(fn, "w2_zero", z2, stream, &e->z2, DM_U8, 3, sh2, "[E, N, ceil(K/group_size)] uint8", dev, 0, 1) < 0)
            return -1;
    }
    x->num_experts = r->num_experts;
    x->hidden = (int32_t)H;
    x->inter = (int32_t)I;
    x->dtype = to_dynmoe_dtype(kind);
    x->act = (dynmoe_act)act;
    x->w13 = e->w13.data;
    x->w2 = e->w2.data;
    x->b13 = e->b13.data;
    x->b2 = e->b2.data;
    x->gate_up = (dynmoe_gate_up)gate_up;
    x->alpha = alpha;
    x->limit = limit;
    x->weight_format = f;
    x->w13_scale = e->s13.data;
    x->w2_scale = e->s2.data;
    x->w13_zero = e->z13.data;
    x->w2_zero = e->z2.data;
    x->group_size = group;
    return 0;
}

/* x [T, H] and the experts it goes through: same dtype, H = experts.hidden. */
static int parse_x_experts(const char *fn, const dynmoe_router *r, PyObject *xo, PyObject *eo, PyObject *ds,
                           dm_tensor *xt, dm_experts_t *e, dm_dev *dev, dynmoe_experts *x) {
    int64_t s_x[2] = {-1, -1};
    if (arg(fn, "x", xo, ds, xt, DM_FLOAT, 2, s_x, "[T, H]", dev, 0, 0) < 0) return -1;
    if (parse_experts(fn, r, eo, xt->kind, ds, e, dev, x) < 0) return -1;
    const int kind = x->dtype == DYNMOE_F16 ? DM_F16 : x->dtype == DYNMOE_BF16 ? DM_BF16 : DM_F32;
    if (xt->t->shape[1] != x->hidden || xt->kind != kind) {
        PyErr_Format(xt->kind != kind ? PyExc_TypeError : PyExc_ValueError,
                     "%s: x is [%lld, %lld] %s but the experts take [T, %d] %s", fn, (long long)xt->t->shape[0],
                     (long long)xt->t->shape[1], kind_name(xt->kind), x->hidden, kind_name(kind));
        return -1;
    }
    return 0;
}

/* The experts alone, for the calls without x or a stream (workspace_size,
 * pack): exported for the legacy default stream. */
static int parse_experts_alone(const char *fn, const dynmoe_router *r, PyObject *eo, dm_experts_t *e, dm_dev *dev,
                               dynmoe_experts *x) {
    PyObject *ds = PyLong_FromLong(1);
    if (ds == NULL) return -1;
    const int rc = parse_experts(fn, r, eo, 0, ds, e, dev, x);
    Py_DECREF(ds);
    return rc;
}

static int parse_stream(PyObject *o, void **stream) {
    if (o == Py_None) {
        *stream = NULL;
        return 0;
    }
    *stream = PyLong_AsVoidPtr(o);
    return (*stream == NULL && PyErr_Occurred()) ? -1 : 0;
}

/* The object handed to __dlpack__(stream=...): our stream, or 1 (the legacy
 * default stream) for stream 0, as the DLPack protocol spells it. */
static PyObject *dlpack_stream(PyObject *o) {
    if (o == Py_None) return PyLong_FromLong(1);
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return NULL;
    if (v == 0 && !overflow) return PyLong_FromLong(1);
    Py_INCREF(o);
    return o;
}

/* ------------------------------------------------------------------- calls */

/* Runs `CALL` (an expression yielding dynmoe_status that names `ctx`) on the
 * call's device with the GIL released; with a stats block, on the device's
 * stats context under a lock (a stats block makes a context single-stream).
 * On failure raises DynmoeError and jumps to `fail`. */
#define DM_RUN(dev, stats_ptr, CALL)                                                           \
    do {                                                                                       \
        dynmoe_ctx *ctx = get_ctx(&(dev), (stats_ptr) != NULL);                                \
        if (ctx == NULL) goto fail;                                                            \
        dynmoe_status st_;                                                                     \
        char detail_[1024] = "";                                                               \
        Py_BEGIN_ALLOW_THREADS;                                                                \
        if (stats_ptr) {                                                                       \
            PyThread_acquire_lock(g_stats_lock, WAIT_LOCK);                                    \
            st_ = dynmoe_ctx_set_stats(ctx, (dynmoe_stats *)(stats_ptr));                      \
            if (st_ == DYNMOE_OK) st_ = (CALL);                                                \
            if (st_ != DYNMOE_OK) snprintf(detail_, sizeof detail_, "%s", dynmoe_last_error()); \
            dynmoe_ctx_set_stats(ctx, NULL);                                                   \
            PyThread_release_lock(g_stats_lock);                                               \
        } else {                                                                               \
            st_ = (CALL);                                                                      \
            if (st_ != DYNMOE_OK) snprintf(detail_, sizeof detail_, "%s", dynmoe_last_error()); \
        }                                                                                      \
        Py_END_ALLOW_THREADS;                                                                  \
        if (st_ != DYNMOE_OK) {                                                                \
            raise_status(st_, detail_);                                                        \
            goto fail;                                                                         \
        }                                                                                      \
    } while (0)

static const int64_t k_stats_shape[1] = {DM_STATS_LEN};

/* route(router, logits, bias, mask_logits, expert_scale, ids, weights, stream, stats) */
static PyObject *py_route(PyObject *self, PyObject *args) {
    (void)self;
    static const char fn[] = "dynmoe.route";
    PyObject *ro, *lo, *bo, *mo, *eso, *io, *wo, *so, *sto;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &ro, &lo, &bo, &mo, &eso, &io, &wo, &so, &sto)) return NULL;
    dynmoe_router r;
    if (parse_router(ro, &r) < 0) return NULL;
    void *stream;
    if (parse_stream(so, &stream) < 0) return NULL;
    PyObject *ds = dlpack_stream(so);
    if (ds == NULL) return NULL;
    dm_tensor lt = {0}, bt = {0}, mt = {0}, est = {0}, it = {0}, wt = {0}, stt = {0};
    dm_dev dev = {0};
    PyObject *ret = NULL;
    const int64_t EZ = (int64_t)r.num_experts + r.num_zero_experts;
    int64_t s_logits[2] = {-1, EZ};
    if (arg(fn, "logits", lo, ds, &lt, DM_FLOAT, 2, s_logits, "[T, E+Z]", &dev, 0, 0) < 0) goto fail;
    const int64_t T = lt.t->shape[0];
    int64_t s_bias[1] = {EZ}, s_mask[2] = {T, r.num_experts}, s_ids[2] = {T, r.top_k};
    if (arg(fn, "bias", bo, ds, &bt, DM_F32, 1, s_bias, "[E+Z]", &dev, 0, 1) < 0) goto fail;
    if (arg(fn, "mask_logits", mo, ds, &mt, lt.kind, 2, s_mask, "[T, E]", &dev, 0, 1) < 0) goto fail;
    if (arg(fn, "expert_scale", eso, ds, &est, DM_F32, 1, s_bias, "[E+Z]", &dev, 0, 1) < 0) goto fail;
    r.expert_scale = (const float *)est.data;
    if (arg(fn, "ids", io, ds, &it, DM_I32, 2, s_ids, "[T, K]", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "weights", wo, ds, &wt, DM_F32, 2, s_ids, "[T, K]", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "stats", sto, ds, &stt, DM_I64, 1, k_stats_shape, "[9]", &dev, 1, 1) < 0) goto fail;
    DM_RUN(dev, stt.data,
           dynmoe_route(ctx, &r, T, lt.data, to_dynmoe_dtype(lt.kind), (const float *)bt.data, mt.data,
                        (int32_t *)it.data, (float *)wt.data, stream));
    ret = Py_NewRef(Py_None);
fail:
    tensor_release(&lt), tensor_release(&bt), tensor_release(&mt), tensor_release(&est);
    tensor_release(&it), tensor_release(&wt), tensor_release(&stt);
    Py_DECREF(ds);
    return ret;
}

/* route_tasks(router, x, task_logits, task_weights, bias, expert_scale, ids, weights, stream, stats) */
static PyObject *py_route_tasks(PyObject *self, PyObject *args) {
    (void)self;
    static const char fn[] = "dynmoe.route_tasks";
    PyObject *ro, *xo, *tlo, *two, *bo, *eso, *io, *wo, *so, *sto;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO", &ro, &xo, &tlo, &two, &bo, &eso, &io, &wo, &so, &sto)) return NULL;
    dynmoe_router r;
    if (parse_router(ro, &r) < 0) return NULL;
    if (r.num_tasks < 1) {
        PyErr_Format(PyExc_ValueError, "%s: the router has no task routers (num_tasks = 0)", fn);
        return NULL;
    }
    void *stream;
    if (parse_stream(so, &stream) < 0) return NULL;
    PyObject *ds = dlpack_stream(so);
    if (ds == NULL) return NULL;
    dm_tensor xt = {0}, tlt = {0}, twt = {0}, bt = {0}, est = {0}, it = {0}, wt = {0}, stt = {0};
    dm_dev dev = {0};
    PyObject *ret = NULL;
    const int64_t EZ = (int64_t)r.num_experts + r.num_zero_experts;
    int64_t s_x[2] = {-1, -1};
    if (arg(fn, "x", xo, ds, &xt, DM_FLOAT, 2, s_x, "[T, H]", &dev, 0, 0) < 0) goto fail;
    const int64_t T = xt.t->shape[0], H = xt.t->shape[1];
    if (H < 1 || H > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: x has hidden size %lld", fn, (long long)H);
        goto fail;
    }
    int64_t s_tl[2] = {T, r.num_tasks}, s_tw[3] = {r.num_tasks, EZ, H}, s_bias[1] = {EZ};
    int64_t s_ids[2] = {T, (int64_t)r.top_tasks * r.top_k};
    if (arg(fn, "task_logits", tlo, ds, &tlt, DM_F32, 2, s_tl, "[T, num_tasks]", &dev, 0, 0) < 0) goto fail;
    if (arg(fn, "task_weights", two, ds, &twt, xt.kind, 3, s_tw, "[num_tasks, E+Z, H] (dtype of x)", &dev, 0, 0) <
        0)
        goto fail;
    if (arg(fn, "bias", bo, ds, &bt, DM_F32, 1, s_bias, "[E+Z]", &dev, 0, 1) < 0) goto fail;
    if (arg(fn, "expert_scale", eso, ds, &est, DM_F32, 1, s_bias, "[E+Z]", &dev, 0, 1) < 0) goto fail;
    r.expert_scale = (const float *)est.data;
    if (arg(fn, "ids", io, ds, &it, DM_I32, 2, s_ids, "[T, top_tasks*K]", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "weights", wo, ds, &wt, DM_F32, 2, s_ids, "[T, top_tasks*K]", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "stats", sto, ds, &stt, DM_I64, 1, k_stats_shape, "[9]", &dev, 1, 1) < 0) goto fail;
    DM_RUN(dev, stt.data,
           dynmoe_route_tasks(ctx, &r, T, xt.data, to_dynmoe_dtype(xt.kind), (int32_t)H,
                              (const float *)tlt.data, twt.data, (const float *)bt.data, (int32_t *)it.data,
                              (float *)wt.data, stream));
    ret = Py_NewRef(Py_None);
fail:
    tensor_release(&xt), tensor_release(&tlt), tensor_release(&twt), tensor_release(&bt), tensor_release(&est);
    tensor_release(&it), tensor_release(&wt), tensor_release(&stt);
    Py_DECREF(ds);
    return ret;
}

/* plan_workspace_size(router, T, slots) -> bytes */
static PyObject *py_plan_workspace_size(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ro;
    long long T;
    int slots;
    if (!PyArg_ParseTuple(args, "OLi", &ro, &T, &slots)) return NULL;
    dynmoe_router r;
    if (parse_router(ro, &r) < 0) return NULL;
    size_t n = dynmoe_plan_workspace_size(&r, T, slots);
    if (n == 0) return raise_status(DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    return PyLong_FromSize_t(n);
}

/* plan(router, ids, workspace, stream, stats) -> byte offsets into the
 * workspace of (counts, offsets, sorted_slots, slot_rows, active, num_active) */
static PyObject *py_plan(PyObject *self, PyObject *args) {
    (void)self;
    static const char fn[] = "dynmoe.plan";
    PyObject *ro, *io, *wso, *so, *sto;
    if (!PyArg_ParseTuple(args, "OOOOO", &ro, &io, &wso, &so, &sto)) return NULL;
    dynmoe_router r;
    if (parse_router(ro, &r) < 0) return NULL;
    void *stream;
    if (parse_stream(so, &stream) < 0) return NULL;
    PyObject *ds = dlpack_stream(so);
    if (ds == NULL) return NULL;
    dm_tensor it = {0}, wst = {0}, stt = {0};
    dm_dev dev = {0};
    PyObject *ret = NULL;
    int64_t s_ids[2] = {-1, -1};
    if (arg(fn, "ids", io, ds, &it, DM_I32, 2, s_ids, "[T, S]", &dev, 0, 0) < 0) goto fail;
    const int64_t T = it.t->shape[0], S = it.t->shape[1];
    if (S < 1 || S > DYNMOE_MAX_TOP_K) {
        PyErr_Format(PyExc_ValueError, "%s: ids has %lld slots per token, expected 1..%d", fn, (long long)S,
                     DYNMOE_MAX_TOP_K);
        goto fail;
    }
    if (arg(fn, "workspace", wso, ds, &wst, DM_ANY, -1, NULL, "", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "stats", sto, ds, &stt, DM_I64, 1, k_stats_shape, "[9]", &dev, 1, 1) < 0) goto fail;
    dynmoe_plan p;
    memset(&p, 0, sizeof p);
    DM_RUN(dev, stt.data,
           dynmoe_plan_build(ctx, &r, T, (const int32_t *)it.data, (int32_t)S, wst.data, (size_t)wst.nbytes, &p,
                             stream));
    if (T == 0) {
        ret = Py_NewRef(Py_None);
    } else {
        char *b = wst.data;
        ret = Py_BuildValue("(LLLLLL)", (long long)((char *)p.expert_counts - b),
                            (long long)((char *)p.expert_offsets - b), (long long)((char *)p.sorted_slots - b),
                            (long long)((char *)p.slot_rows - b), (long long)((char *)p.active_experts - b),
                            (long long)((char *)p.num_active - b));
    }
fail:
    tensor_release(&it), tensor_release(&wst), tensor_release(&stt);
    Py_DECREF(ds);
    return ret;
}

/* workspace_size(router, experts, T) -> bytes */
static PyObject *py_workspace_size(PyObject *self, PyObject *args) {
    (void)self;
    static const char fn[] = "dynmoe.workspace_size";
    PyObject *ro, *eo;
    long long T;
    if (!PyArg_ParseTuple(args, "OOL", &ro, &eo, &T)) return NULL;
    dynmoe_router r;
    if (parse_router(ro, &r) < 0) return NULL;
    dm_experts_t et = {0};
    dm_dev dev = {0};
    dynmoe_experts x;
    PyObject *ret = NULL;
    if (parse_experts_alone(fn, &r, eo, &et, &dev, &x) < 0) goto fail;
    size_t n = dynmoe_workspace_size(&r, &x, T);
    if (n == 0)
        raise_status(DYNMOE_ERR_INVALID_ARGUMENT, dynmoe_last_error());
    else
        ret = PyLong_FromSize_t(n);
fail:
    experts_release(&et);
    return ret;
}

/* experts_forward(router, experts, x, ids, weights, out, workspace, stream, stats) */
static PyObject *py_experts_forward(PyObject *self, PyObject *args) {
    (void)self;
    static const char fn[] = "dynmoe.experts_forward";
    PyObject *ro, *eo, *xo, *io, *wo, *oo, *wso, *so, *sto;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &ro, &eo, &xo, &io, &wo, &oo, &wso, &so, &sto)) return NULL;
    dynmoe_router r;
    if (parse_router(ro, &r) < 0) return NULL;
    void *stream;
    if (parse_stream(so, &stream) < 0) return NULL;
    PyObject *ds = dlpack_stream(so);
    if (ds == NULL) return NULL;
    dm_tensor xt = {0}, it = {0}, wt = {0}, ot = {0}, wst = {0}, stt = {0};
    dm_experts_t et = {0};
    dm_dev dev = {0};
    dynmoe_experts x;
    PyObject *ret = NULL;
    if (parse_x_experts(fn, &r, xo, eo, ds, &xt, &et, &dev, &x) < 0) goto fail;
    const int64_t T = xt.t->shape[0];
    int64_t s_ids[2] = {T, -1};
    if (arg(fn, "ids", io, ds, &it, DM_I32, 2, s_ids, "[T, S]", &dev, 0, 0) < 0) goto fail;
    const int64_t S = it.t->shape[1];
    int64_t s_w[2] = {T, S}, s_out[2] = {T, x.hidden};
    if (arg(fn, "weights", wo, ds, &wt, DM_F32, 2, s_w, "[T, S] (the shape of ids)", &dev, 0, 0) < 0) goto fail;
    if (arg(fn, "out", oo, ds, &ot, xt.kind, 2, s_out, "[T, H] (dtype of x)", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "workspace", wso, ds, &wst, DM_ANY, -1, NULL, "", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "stats", sto, ds, &stt, DM_I64, 1, k_stats_shape, "[9]", &dev, 1, 1) < 0) goto fail;
    if (S < 1 || S > DYNMOE_MAX_TOP_K) {
        PyErr_Format(PyExc_ValueError, "%s: ids has %lld slots per token, expected 1..%d", fn, (long long)S,
                     DYNMOE_MAX_TOP_K);
        goto fail;
    }
    DM_RUN(dev, stt.data,
           dynmoe_experts_forward(ctx, &r, &x, T, xt.data, (const int32_t *)it.data, (const float *)wt.data,
                                  (int32_t)S, ot.data, wst.data, (size_t)wst.nbytes, stream));
    ret = Py_NewRef(Py_None);
fail:
    tensor_release(&xt), experts_release(&et), tensor_release(&it);
    tensor_release(&wt), tensor_release(&ot), tensor_release(&wst), tensor_release(&stt);
    Py_DECREF(ds);
    return ret;
}

/* moe_forward(router, experts, x, logits, bias, mask_logits, expert_scale, out, workspace, stream, stats) */
static PyObject *py_moe_forward(PyObject *self, PyObject *args) {
    (void)self;
    static const char fn[] = "dynmoe.moe_forward";
    PyObject *ro, *eo, *xo, *lo, *bo, *mo, *eso, *oo, *wso, *so, *sto;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOO", &ro, &eo, &xo, &lo, &bo, &mo, &eso, &oo, &wso, &so, &sto))
        return NULL;
    dynmoe_router r;
    if (parse_router(ro, &r) < 0) return NULL;
    void *stream;
    if (parse_stream(so, &stream) < 0) return NULL;
    PyObject *ds = dlpack_stream(so);
    if (ds == NULL) return NULL;
    dm_tensor xt = {0}, lt = {0}, bt = {0}, mt = {0}, est = {0}, ot = {0}, wst = {0}, stt = {0};
    dm_experts_t et = {0};
    dm_dev dev = {0};
    dynmoe_experts x;
    PyObject *ret = NULL;
    if (parse_x_experts(fn, &r, xo, eo, ds, &xt, &et, &dev, &x) < 0) goto fail;
    const int64_t T = xt.t->shape[0];
    const int64_t EZ = (int64_t)r.num_experts + r.num_zero_experts;
    int64_t s_logits[2] = {T, EZ}, s_bias[1] = {EZ}, s_mask[2] = {T, r.num_experts}, s_out[2] = {T, x.hidden};
    if (arg(fn, "logits", lo, ds, &lt, DM_FLOAT, 2, s_logits, "[T, E+Z]", &dev, 0, 0) < 0) goto fail;
    if (arg(fn, "bias", bo, ds, &bt, DM_F32, 1, s_bias, "[E+Z]", &dev, 0, 1) < 0) goto fail;
    if (arg(fn, "mask_logits", mo, ds, &mt, lt.kind, 2, s_mask, "[T, E] (dtype of logits)", &dev, 0, 1) < 0)
        goto fail;
    if (arg(fn, "expert_scale", eso, ds, &est, DM_F32, 1, s_bias, "[E+Z]", &dev, 0, 1) < 0) goto fail;
    r.expert_scale = (const float *)est.data;
    if (arg(fn, "out", oo, ds, &ot, xt.kind, 2, s_out, "[T, H] (dtype of x)", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "workspace", wso, ds, &wst, DM_ANY, -1, NULL, "", &dev, 1, 0) < 0) goto fail;
    if (arg(fn, "stats", sto, ds, &stt, DM_I64, 1, k_stats_shape, "[9]", &dev, 1, 1) < 0) goto fail;
    DM_RUN(dev, stt.data,
           dynmoe_moe_forward(ctx, &r, &x, T, xt.data, lt.data, to_dynmoe_dtype(lt.kind), (const float *)bt.data,
                              mt.data, ot.data, wst.data, (size_t)wst.nbytes, stream));
    ret = Py_NewRef(Py_None);
fail:
    tensor_release(&xt), experts_release(&et), tensor_release(&lt), tensor_release(&bt), tensor_release(&est);
    tensor_release(&mt), tensor_release(&ot), tensor_release(&wst), tensor_release(&stt);
    Py_DECREF(ds);
    return ret;
}

/* ------------------------------------------------------------------- misc */

static PyObject *py_set_error_class(PyObject *self, PyObject *cls) {
    (void)self;
    Py_INCREF(cls);
    Py_XSETREF(g_error_class, cls);
    Py_RETURN_NONE;
}

static PyObject *py_set_torch(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *tensor_type, *to_dlpack;
    if (!PyArg_ParseTuple(args, "OO", &tensor_type, &to_dlpack)) return NULL;
    if (!PyType_Check(tensor_type) || !PyCallable_Check(to_dlpack)) {
        PyErr_SetString(PyExc_TypeError, "_set_torch(torch.Tensor, torch.utils.dlpack.to_dlpack)");
        return NULL;
    }
    Py_INCREF(tensor_type);
    Py_INCREF(to_dlpack);
    Py_XSETREF(g_torch_tensor, tensor_type);
    Py_XSETREF(g_torch_to_dlpack, to_dlpack);
    Py_RETURN_NONE;
}

static PyObject *py_version(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return PyLong_FromLong(dynmoe_version());
}

static PyObject *py_cuda_available(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    return PyBool_FromLong(dynmoe_cuda_available());
}

static PyObject *py_status_name(PyObject *self, PyObject *o) {
    (void)self;
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return NULL;
    return PyUnicode_FromString(dynmoe_status_name((dynmoe_status)v));
}

static void packed_capsule_free(PyObject *cap) {
    dynmoe_packed_experts_destroy((dynmoe_packed_experts *)PyCapsule_GetPointer(cap, "dynmoe.packed_experts"));
}

/* pack(experts) -> capsule owning dynmoe_experts_pack's result for CPU
 * experts (the tuple of dynmoe.Experts._c, unpacked). */
static PyObject *py_pack(PyObject *self, PyObject *args) {
    (void)self;
    static const char fn[] = "dynmoe.Experts.pack";
    PyObject *eo;
    int E;
    if (!PyArg_ParseTuple(args, "Oi", &eo, &E)) return NULL;
    dynmoe_router r = DYNMOE_ROUTER_INIT; /* E experts: what the experts' shapes are checked against */
    r.num_experts = E;
    r.top_k = 1;
    dm_experts_t et = {0};
    dm_dev dev = {0};
    dynmoe_experts x;
    dynmoe_packed_experts *pk = NULL;
    PyObject *ret = NULL;
    if (parse_experts_alone(fn, &r, eo, &et, &dev, &x) < 0) goto fail;
    if (dev.cuda) {
        raise_status(DYNMOE_ERR_UNSUPPORTED, "dynmoe.Experts.pack: packed experts are for CPU tensors only");
        goto fail;
    }
    DM_RUN(dev, NULL, dynmoe_experts_pack(ctx, &x, &pk));
    ret = PyCapsule_New(pk, "dynmoe.packed_experts", packed_capsule_free);
    if (ret == NULL) dynmoe_packed_experts_destroy(pk);
fail:
    experts_release(&et);
    return ret;
}

/* packed_info(capsule) -> (bytes, path) */
static PyObject *py_packed_info(PyObject *self, PyObject *cap) {
    (void)self;
    const dynmoe_packed_experts *p = PyCapsule_GetPointer(cap, "dynmoe.packed_experts");
    if (p == NULL) return NULL;
    return Py_BuildValue("ns", (Py_ssize_t)dynmoe_packed_experts_bytes(p), dynmoe_packed_experts_path(p));
}

static PyObject *py_cpu_isa(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    const char *isa = dynmoe_cpu_isa();
    if (isa == NULL) Py_RETURN_NONE;
    return PyUnicode_FromString(isa);
}

static PyMethodDef methods[] = {
    {"pack", py_pack, METH_VARARGS, "pack(experts, E) -> capsule of dynmoe_experts_pack"},
    {"packed_info", py_packed_info, METH_O, "packed_info(capsule) -> (bytes, path)"},
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "dynmoe_cpu_isa(): the CPU path of the next call, or None"},
    {"route", py_route, METH_VARARGS,
     "route(router, logits, bias, mask_logits, expert_scale, ids, weights, stream, stats)"},
    {"route_tasks", py_route_tasks, METH_VARARGS,
     "route_tasks(router, x, task_logits, task_weights, bias, expert_scale, ids, weights, stream, stats)"},
    {"plan_workspace_size", py_plan_workspace_size, METH_VARARGS, "plan_workspace_size(router, T, slots)"},
    {"plan", py_plan, METH_VARARGS, "plan(router, ids, workspace, stream, stats) -> byte offsets"},
    {"workspace_size", py_workspace_size, METH_VARARGS, "workspace_size(router, experts, T)"},
    {"experts_forward", py_experts_forward, METH_VARARGS,
     "experts_forward(router, experts, x, ids, weights, out, workspace, stream, stats)"},
    {"moe_forward", py_moe_forward, METH_VARARGS,
     "moe_forward(router, experts, x, logits, bias, mask_logits, expert_scale, out, workspace, stream, stats)"},
    {"_set_error_class", py_set_error_class, METH_O, NULL},
    {"_set_torch", py_set_torch, METH_VARARGS, NULL},
    {"version", py_version, METH_NOARGS, "dynmoe_version() of the loaded libdynmoe"},
    {"cuda_available", py_cuda_available, METH_NOARGS, "libdynmoe has CUDA and a device is visible"},
    {"status_name", py_status_name, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dynmoe._C",
                                    "dynmoe's C extension (private; use the dynmoe package)", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void) {
    g_stats_lock = PyThread_allocate_lock();
    if (g_stats_lock == NULL) return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "STATS_LEN", (long)DM_STATS_LEN) < 0 ||
        PyModule_AddIntConstant(m, "MAX_TOP_K", DYNMOE_MAX_TOP_K) < 0 ||
        PyModule_AddIntConstant(m, "MAX_EXPERTS", DYNMOE_MAX_EXPERTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
