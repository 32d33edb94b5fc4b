"""Bad inputs give clear TypeError/ValueError messages before any work; a
failing C call raises dynmoe.DynmoeError with the status name and detail."""
import ctypes
import pickle

import numpy as np
import pytest

import dynmoe

E, K, H, I, T = 8, 2, 16, 8, 5


@pytest.fixture
def layer():
    rng = np.random.default_rng(7)
    router = dynmoe.Router(num_experts=E, top_k=K)
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    w13 = rng.standard_normal((E, 2 * I, H)).astype(np.float32)
    w2 = rng.standard_normal((E, H, I)).astype(np.float32)
    return router, x, logits, dynmoe.Experts(w13, w2)


def test_wrong_dtype(layer):
    router, x, logits, experts = layer
    with pytest.raises(TypeError, match=r"logits must be float32 or float16 or bfloat16, got float64"):
        dynmoe.route(logits.astype(np.float64), router)
    with pytest.raises(TypeError, match=r"logits must be .* got int32"):
        dynmoe.route(logits.astype(np.int32), router)
    with pytest.raises(TypeError, match=r"bias must be float32, got float16"):
        dynmoe.route(logits, router, bias=np.zeros(E, np.float16))
    with pytest.raises(TypeError, match=r"mask_logits must be float32, got float16"):
        dynmoe.route(logits, router, mask_logits=logits.astype(np.float16))
    with pytest.raises(TypeError, match=r"ids must be int32, got int64"):
        dynmoe.route(logits, router, ids=np.zeros((T, K), np.int64))
    with pytest.raises(TypeError, match=r"x is \[5, 16\] float16 but the experts take \[T, 16\] float32"):
        dynmoe.moe_forward(x.astype(np.float16), logits, router, experts)
    with pytest.raises(TypeError, match=r"w2 is float16 but w13 is float32"):
        dynmoe.moe_forward(x, logits, router, dynmoe.Experts(experts.w13, experts.w2.astype(np.float16)))
    ids, w = dynmoe.route(logits, router)
    with pytest.raises(TypeError, match=r"weights must be float32, got float64"):
        dynmoe.experts_forward(x, ids, w.astype(np.float64), router, experts)


def test_not_contiguous(layer):
    router, x, logits, experts = layer
    wide = np.zeros((T, 2 * E), np.float32)
    with pytest.raises(ValueError, match=r"logits must be contiguous \(row-major\)"):
        dynmoe.route(wide[:, ::2], router)
    with pytest.raises(ValueError, match=r"x must be contiguous"):
        dynmoe.moe_forward(np.asfortranarray(x), logits, router, experts)
    w13t = np.ascontiguousarray(experts.w13.transpose(0, 2, 1)).transpose(0, 2, 1)
    with pytest.raises(ValueError, match=r"w13 must be contiguous"):
        dynmoe.moe_forward(x, logits, router, dynmoe.Experts(w13t, experts.w2))


def test_mismatched_shapes(layer):
    router, x, logits, experts = layer
    with pytest.raises(ValueError, match=r"logits has shape \(5, 7\), expected \[T, E\+Z\]"):
        dynmoe.route(logits[:, :7].copy(), router)
    with pytest.raises(ValueError, match=r"bias has shape \(9,\), expected \[E\+Z\] = \(8,\)"):
        dynmoe.route(logits, router, bias=np.zeros(9, np.float32))
    with pytest.raises(ValueError, match=r"mask_logits has shape \(4, 8\), expected \[T, E\]"):
        dynmoe.route(logits, router, mask_logits=logits[:4].copy())
    with pytest.raises(ValueError, match=r"logits has shape \(4, 8\), expected \[T, E\+Z\] = \(5, 8\)"):
        dynmoe.moe_forward(x, logits[:4].copy(), router, experts)
    with pytest.raises(ValueError, match=r"x is \[5, 12\] float32 but the experts take \[T, 16\]"):
        dynmoe.moe_forward(x[:, :12].copy(), logits, router, experts)
    ids, w = dynmoe.route(logits, router)
    with pytest.raises(ValueError, match=r"weights has shape \(5, 1\), expected \[T, S\]"):
        dynmoe.experts_forward(x, ids, w[:, :1].copy(), router, experts)
    with pytest.raises(ValueError, match=r"out has shape"):
        dynmoe.moe_forward(x, logits, router, experts, out=np.empty((T, H + 1), np.float32))
    with pytest.raises(ValueError, match=r"w13 has shape \(4, 16, 16\), expected \[E, 2\*I, H\]"):
        dynmoe.moe_forward(x, logits, router, dynmoe.Experts(experts.w13[:4].copy(), experts.w2[:4].copy()))
    with pytest.raises(ValueError, match=r"w2 must be \[E, H, I\]"):
        dynmoe.Experts(experts.w13, experts.w2[:, :, :4].copy())
    with pytest.raises(ValueError, match=r"w13 must be \[E, 2\*I, H\]"):
        dynmoe.Experts(experts.w13[:, :15].copy(), experts.w2)


def test_not_a_tensor(layer):
    router, x, logits, experts = layer
    with pytest.raises(TypeError, match=r"logits must be a tensor that supports DLPack"):
        dynmoe.route(_NoDLPack(logits), router, ids=np.zeros((T, K), np.int32),
                     weights=np.zeros((T, K), np.float32))


class _NoDLPack:
    def __init__(self, a):
        self.shape = a.shape


def test_read_only_output(layer):
    router, x, logits, experts = layer
    out = np.empty_like(x)
    out.flags.writeable = False
    with pytest.raises((ValueError, TypeError), match=r"out (is read-only|could not be exported)"):
        dynmoe.moe_forward(x, logits, router, experts, out=out)


def test_read_only_inputs_work(layer):
    # Weights memory-mapped read-only (safetensors) are fine as inputs.
    router, x, logits, experts = layer
    w13 = experts.w13.copy()
    w13.flags.writeable = False
    out = dynmoe.moe_forward(x, logits, router, dynmoe.Experts(w13, experts.w2))
    np.testing.assert_array_equal(out, dynmoe.moe_forward(x, logits, router, experts))


def test_misaligned(layer):
    router, x, logits, experts = layer
    buf = np.zeros(T * E + 1, np.float32)
    off = 1 if buf.ctypes.data % 16 == 0 else 0
    mis = buf[off:off + T * E].reshape(T, E)
    assert mis.ctypes.data % 16 != 0
    with pytest.raises(ValueError, match=r"logits is not 16-byte aligned"):
        dynmoe.route(mis, router)


def test_router_errors():
    with pytest.raises(ValueError, match=r"top_k = 9 must be in \[1, min\(E\+Z = 8, 64\)\]"):
        dynmoe.Router(num_experts=8, top_k=9)
    with pytest.raises(ValueError, match=r"score must be one of"):
        dynmoe.Router(num_experts=8, top_k=2, score="relu")
    with pytest.raises(ValueError, match=r"num_groups = 3 must divide num_experts = 8"):
        dynmoe.Router(num_experts=8, top_k=2, num_groups=3, topk_groups=1)
    with pytest.raises(ValueError, match=r"top_p"):
        dynmoe.Router(num_experts=8, top_k=2, select="top_p", top_p=0.0)
    with pytest.raises(ValueError, match=r"act must be one of"):
        dynmoe.Experts(np.zeros((1, 2, 4), np.float32), np.zeros((1, 4, 1), np.float32), act="relu")


def test_dynmoe_error(layer):
    router, x, logits, experts = layer
    task_router = dynmoe.Router(num_experts=E, top_k=K, num_tasks=2, top_tasks=1)
    with pytest.raises(dynmoe.DynmoeError) as e:
        dynmoe.route(logits, task_router, ids=np.zeros((T, K), np.int32), weights=np.zeros((T, K), np.float32))
    assert e.value.status_name == "DYNMOE_ERR_INVALID_ARGUMENT"
    assert "dynmoe_route_tasks" in e.value.detail
    assert str(e.value).startswith("DYNMOE_ERR_INVALID_ARGUMENT: dynmoe_route")
    assert isinstance(e.value, RuntimeError)
    again = pickle.loads(pickle.dumps(e.value))
    assert again.status == e.value.status and again.detail == e.value.detail


# ---- devices: a hand-made DLPack capsule that claims to live on cuda:0 ----

class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


def _fake_cuda_capsule(shape, code=2, bits=32, device_type=2):
    """A legacy "dltensor" capsule for a (never dereferenced) device tensor."""
    keep = {}
    shp = (ctypes.c_int64 * len(shape))(*shape)
    m = _DLManagedTensor()
    m.dl_tensor.data = 1 << 20
    m.dl_tensor.device = _DLDevice(device_type, 0)
    m.dl_tensor.ndim = len(shape)
    m.dl_tensor.dtype = _DLDataType(code, bits, 1)
    m.dl_tensor.shape = shp
    m.dl_tensor.strides = None
    keep.update(shp=shp, m=m)
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    cap = new(ctypes.addressof(m), b"dltensor", None)
    return cap, keep


def test_wrong_device(layer):
    router, x, logits, experts = layer
    bias, keep = _fake_cuda_capsule((E,))
    with pytest.raises(ValueError, match=r"bias is on cuda:0 but logits is on cpu: all tensors must be on one device"):
        dynmoe.route(logits, router, bias=bias)
    del keep


def test_unsupported_device(layer):
    router, x, logits, experts = layer
    lg, k1 = _fake_cuda_capsule((T, E), device_type=8)  # Metal
    with pytest.raises(ValueError, match=r"DLPack device type 8; dynmoe takes CPU or CUDA tensors"):
        dynmoe._C.route(router._c, lg, None, None, None, np.zeros((T, K), np.int32),
                        np.zeros((T, K), np.float32), None, None)


@pytest.mark.skipif(dynmoe.cuda_available(), reason="needs a build or machine without CUDA")
def test_cuda_tensors_without_cuda(layer):
    router, x, logits, experts = layer
    lg, k1 = _fake_cuda_capsule((T, E))
    ids, k2 = _fake_cuda_capsule((T, K), code=0)
    w, k3 = _fake_cuda_capsule((T, K))
    with pytest.raises(dynmoe.DynmoeError) as e:
        dynmoe._C.route(router._c, lg, None, None, None, ids, w, 0, None)
    assert e.value.status_name in ("DYNMOE_ERR_UNSUPPORTED", "DYNMOE_ERR_DEVICE")


# ---- issue 12.5: the exception types the README promises, naming the argument ----

def test_lists_and_scalars_are_type_errors(layer):
    router, x, logits, experts = layer
    with pytest.raises(TypeError, match=r"dynmoe.route: logits must be a tensor .* got list"):
        dynmoe.route(logits.tolist(), router)
    with pytest.raises(TypeError, match=r"dynmoe.moe_forward: x must be a tensor .* got list"):
        dynmoe.moe_forward(x.tolist(), logits, router, experts)
    with pytest.raises(TypeError, match=r"dynmoe.moe_forward: logits must be a tensor .* got list"):
        dynmoe.moe_forward(x, logits.tolist(), router, experts)
    with pytest.raises(TypeError, match=r"dynmoe.Experts: w13 must be a tensor .* got list"):
        dynmoe.Experts(experts.w13.tolist(), experts.w2)
    with pytest.raises(TypeError, match=r"dynmoe.Experts: w2 must be a tensor .* got float"):
        dynmoe.Experts(experts.w13, 1.0)
    ids, w = dynmoe.route(logits, router)
    with pytest.raises(TypeError, match=r"dynmoe.plan: ids must be a tensor .* got list"):
        dynmoe.plan(ids.tolist(), router)
    with pytest.raises(TypeError, match=r"dynmoe.experts_forward: ids must be a tensor .* got list"):
        dynmoe.experts_forward(x, ids.tolist(), w, router, experts)
    with pytest.raises(TypeError, match=r"weights must be a tensor .* got list"):
        dynmoe.experts_forward(x, ids, w.tolist(), router, experts)


def test_zero_d_tensors_are_value_errors(layer):
    router, x, logits, experts = layer
    scalar = np.array(1.0, np.float32)
    with pytest.raises(ValueError, match=r"dynmoe.route: logits must be 2-D \[T, E\+Z\], got shape \(\)"):
        dynmoe.route(scalar, router)
    with pytest.raises(ValueError, match=r"dynmoe.moe_forward: x must be 2-D \[T, H\], got shape \(\)"):
        dynmoe.moe_forward(scalar, logits, router, experts)
    with pytest.raises(ValueError, match=r"dynmoe.experts_forward: x must be 2-D"):
        dynmoe.experts_forward(scalar, np.zeros((T, K), np.int32), np.zeros((T, K), np.float32), router, experts)
    with pytest.raises(ValueError, match=r"dynmoe.plan: ids must be 2-D \[T, S\], got shape \(\)"):
        dynmoe.plan(np.array(3, np.int32), router)
    with pytest.raises(ValueError, match=r"dynmoe.Experts: w13 must be 3-D \[E, 2\*I, H\], got shape \(\)"):
        dynmoe.Experts(scalar, experts.w2)
    task_router = dynmoe.Router(num_experts=E, top_k=K, num_tasks=2, top_tasks=1)
    with pytest.raises(ValueError, match=r"dynmoe.route_tasks: x must be 2-D \[T, H\], got shape \(\)"):
        dynmoe.route_tasks(scalar, np.zeros((T, 2), np.float32), np.zeros((2, E, H), np.float32), task_router)


@pytest.mark.parametrize("field", ["num_experts", "top_k", "num_zero_experts", "num_groups", "topk_groups",
                                   "num_tasks", "top_tasks"])
@pytest.mark.parametrize("value", [2 ** 40, 2 ** 31, -(2 ** 31) - 1])
def test_router_int_overflow_is_value_error(field, value):
    kw = dict(num_experts=8, top_k=2)
    kw[field] = value
    with pytest.raises(ValueError, match=rf"dynmoe.Router: {field} = {value} does not fit"):
        dynmoe.Router(**kw)


def test_plan_with_zero_slots_is_value_error(layer):
    router, x, logits, experts = layer
    with pytest.raises(ValueError, match=r"dynmoe.plan: ids has shape \(5, 0\): .* S >= 1"):
        dynmoe.plan(np.zeros((T, 0), np.int32), router)


def test_meta_tensors_name_the_argument(layer):
    torch = pytest.importorskip("torch")
    router, x, logits, experts = layer
    tx, tl = torch.from_numpy(x), torch.from_numpy(logits)
    texp = dynmoe.Experts(torch.from_numpy(experts.w13), torch.from_numpy(experts.w2))
    meta = torch.empty((T, E), device="meta")
    with pytest.raises(ValueError, match=r"dynmoe.route: logits is on the meta device"):
        dynmoe.route(meta, router)
    with pytest.raises(ValueError, match=r"dynmoe.moe_forward: x is on the meta device"):
        dynmoe.moe_forward(tx.to("meta"), tl, router, texp)
    # a meta tensor that is not the first argument: the C extension names it
    with pytest.raises(ValueError, match=r"dynmoe.route: bias is on the meta device"):
        dynmoe.route(tl, router, bias=torch.zeros(E, device="meta"))
    with pytest.raises(ValueError, match=r"dynmoe\.(moe_forward|workspace_size): w13 is on the meta device"):
        dynmoe.moe_forward(tx, tl, router, dynmoe.Experts(texp.w13.to("meta"), texp.w2))
    ids, w = dynmoe.route(tl, router)
    with pytest.raises(ValueError, match=r"dynmoe.experts_forward: weights is on the meta device"):
        dynmoe.experts_forward(tx, ids, w.to("meta"), router, texp)
    with pytest.raises(ValueError, match=r"dynmoe.plan: ids is on the meta device"):
        dynmoe.plan(ids.to("meta"), router)
