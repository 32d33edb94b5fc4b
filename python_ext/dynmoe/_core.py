"""The Python API of dynmoe over its C extension (dynmoe._C).

Tensors are any DLPack tensor: torch, numpy >= 1.22, cupy. Outputs that are
not given are allocated in the framework and on the device of the first
tensor argument (torch in -> torch out, numpy in -> numpy out).

Workspace: every forward needs a scratch buffer of ``workspace_size(router,
experts, T)`` bytes (the C library never allocates on the forward path). When
``workspace=`` is not given it is allocated per call in the caller's framework
(torch's caching allocator makes that cheap on CUDA, also under CUDA-graph
capture; with numpy it is a fresh ``np.empty``). To reuse one buffer, pass
``workspace=`` a 1-D contiguous tensor of at least that many bytes (any dtype)
on the same device; do not share one workspace between concurrent streams.

Streams: on CUDA the call is enqueued on the caller's current stream
(torch.cuda.current_stream(), cupy's current stream), or the one given with
``stream=`` (a cudaStream_t as an int). Nothing synchronises, except
``stats=True``, which reads the counters back to the host.
"""
from __future__ import annotations

from . import _C

__all__ = [
    "DynmoeError",
    "Router",
    "Experts",
    "route",
    "route_tasks",
    "plan",
    "experts_forward",
    "moe_forward",
    "workspace_size",
    "plan_workspace_size",
    "STATS_FIELDS",
]


class DynmoeError(RuntimeError):
    """A dynmoe C call failed. ``status`` (int), ``status_name`` (e.g.
    "DYNMOE_ERR_INVALID_ARGUMENT") and ``detail`` (dynmoe_last_error())."""

    def __init__(self, status, status_name, detail):
        super().__init__(f"{status_name}: {detail}")
        self.status = status
        self.status_name = status_name
        self.detail = detail

    def __reduce__(self):
        return (type(self), (self.status, self.status_name, self.detail))


_C._set_error_class(DynmoeError)

# The fields of dynmoe_stats, in order (include/dynmoe.h).
STATS_FIELDS = (
    "tokens",
    "routed_slots",
    "empty_slots",
    "zero_expert_slots",
    "invalid_ids",
    "nonfinite_rows",
    "active_experts",
    "max_expert_rows",
    "overflow_slots",
)
assert len(STATS_FIELDS) == _C.STATS_LEN

_SCORE = {"softmax": 0, "sigmoid": 1, "none": 2}
_SELECT = {"topk": 0, "top_p": 1, "threshold": 2}
_NORM = {"none": 0, "selected": 1, "kept": 2, "uniform": 3}
_ZERO = {"zero": 0, "output": 0, "identity": 1}
_ACT = {"swiglu": 0, "geglu": 1, "geglu_tanh": 2, "swiglu_oai": 3, "relu2": 4, "silu": 5}
_NON_GATED = ("relu2", "silu")  # w13 holds I rows
_GATE_UP = {"blocked": 0, "interleaved": 1}
_FORMAT = {"plain": 0, "fp8_block": 1, "mxfp4": 2, "int4": 3}
# The C extension's dtype kinds (DM_F32, DM_F16, DM_BF16 in src/_C.c); 0: not fixed.
_KIND = {"float32": 1, "float16": 2, "bfloat16": 4}


def _enum(table, value, what):
    if isinstance(value, str) and value.lower() in table:
        return table[value.lower()]
    names = ", ".join(repr(k) for k in table)
    raise ValueError(f"dynmoe: {what} must be one of {names}, got {value!r}")


def _name_of(table, code):
    for k, v in table.items():
        if v == code:
            return k
    raise ValueError(code)


_I32_MIN, _I32_MAX = -(2 ** 31), 2 ** 31 - 1
_ROUTER_INTS = ("num_experts", "top_k", "num_zero_experts", "num_groups", "topk_groups", "num_tasks",
                "top_tasks")


def _tensor_shape(t, name, fn, ndim, desc, compute=True):
    """The shape of tensor argument `name` of `fn`, checked before any use:
    TypeError when it is not a tensor (a list, a scalar), ValueError when it
    has the wrong number of dimensions (a 0-d tensor) or, when `fn` computes
    on it now, lives on torch's meta device (shapes only, no data)."""
    shape = getattr(t, "shape", None)
    if shape is None or not (hasattr(t, "__dlpack__") or hasattr(t, "__dlpack_device__")):
        raise TypeError(f"{fn}: {name} must be a tensor that supports DLPack (torch, numpy >= 1.22, "
                        f"cupy), got {type(t).__name__}")
    shape = tuple(shape)
    if len(shape) != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D {desc}, got shape {shape}")
    if compute and getattr(t, "is_meta", False) is True:
        raise ValueError(f"{fn}: {name} is on the meta device (no data); dynmoe takes CPU or CUDA tensors")
    return shape


class Router:
    """A router description: the fields of the C struct dynmoe_router.

    score: "softmax" | "sigmoid" | "none"; select: "topk" | "top_p" |
    "threshold"; norm: "none" | "selected" | "kept" | "uniform"; zero_kind:
    "zero" (contributes 0) | "identity" (contributes w*x). See DESIGN.md
    section 2 for the stages. Invalid values raise ValueError here.
    """

    __slots__ = (
        "num_experts", "top_k", "score", "norm", "num_zero_experts", "zero_kind", "select",
        "top_p", "threshold", "num_groups", "topk_groups", "scale", "num_tasks", "top_tasks",
        "weight_on_input", "_c",
    )

    def __init__(self, num_experts, top_k, score="softmax", norm="selected", num_zero_experts=0,
                 zero_kind="zero", select="topk", top_p=1.0, threshold=0.0, num_groups=0,
                 topk_groups=0, scale=1.0, num_tasks=0, top_tasks=0, weight_on_input=False):
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.score = score
        self.norm = norm
        self.num_zero_experts = int(num_zero_experts)
        self.zero_kind = zero_kind
        self.select = select
        self.top_p = float(top_p)
        self.threshold = float(threshold)
        self.num_groups = int(num_groups)
        self.topk_groups = int(topk_groups)
        self.scale = float(scale)
        self.num_tasks = int(num_tasks)
        self.top_tasks = int(top_tasks)
        if not isinstance(weight_on_input, (bool, int)) or weight_on_input not in (0, 1):
            raise TypeError(f"dynmoe.Router: weight_on_input must be a bool, got {weight_on_input!r}")
        # Llama-4: the routing weight scales each slot's expert input, out = sum_k FFN_k(w_k x)
        self.weight_on_input = bool(weight_on_input)
        for name in _ROUTER_INTS:  # the C struct's fields are int32
            v = getattr(self, name)
            if not _I32_MIN <= v <= _I32_MAX:
                raise ValueError(f"dynmoe.Router: {name} = {v} does not fit the C library's int32")
        self._c = (
            self.num_experts, self.num_zero_experts, _enum(_ZERO, zero_kind, "zero_kind"), self.top_k,
            _enum(_SCORE, score, "score"), _enum(_SELECT, select, "select"), self.top_p,
            self.threshold, self.num_groups, self.topk_groups, _enum(_NORM, norm, "norm"),
            self.scale, self.num_tasks, self.top_tasks, int(self.weight_on_input),
        )
        try:  # the C library's own checks (dynmoe_plan_workspace_size validates the router)
            _C.plan_workspace_size(self._c, 1, self.slots)
        except DynmoeError as e:
            raise ValueError(f"dynmoe.Router: {e.detail}") from None

    @property
    def slots(self):
        """Slots per token of this router's routing table: top_k, times
        top_tasks for task routers."""
        return self.top_k * self.top_tasks if self.num_tasks > 0 else self.top_k

    # The router as two lists, the form the torch custom ops take.
    @property
    def ints(self):
        c = self._c
        return [c[0], c[1], c[2], c[3], c[4], c[5], c[8], c[9], c[10], c[12], c[13], c[14]]

    @property
    def floats(self):
        c = self._c
        return [c[6], c[7], c[11]]

    @classmethod
    def from_lists(cls, ints, floats):
        """Inverse of (router.ints, router.floats)."""
        e, z, zk, k, sc, sel, g, tg, nm, r, p, *woi = (int(v) for v in ints)
        top_p, threshold, scale = (float(v) for v in floats)
        return cls(num_experts=e, top_k=k, score=_name_of(_SCORE, sc), norm=_name_of(_NORM, nm),
                   num_zero_experts=z, zero_kind="identity" if zk == 1 else "zero",
                   select=_name_of(_SELECT, sel), top_p=top_p, threshold=threshold, num_groups=g,
                   topk_groups=tg, scale=scale, num_tasks=r, top_tasks=p,
                   weight_on_input=bool(woi and woi[0]))

    def kwargs(self):
        return {k: getattr(self, k) for k in self.__slots__ if k != "_c"}

    def __eq__(self, other):
        return isinstance(other, Router) and self._c == other._c

    def __hash__(self):
        return hash(self._c)

    def __repr__(self):
        return "dynmoe.Router(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs().items()) + ")"


def _dtype_of(t):
    """A tensor's dtype name without the framework prefix ("float32", "uint8", ...)."""
    name = str(getattr(t, "dtype", "?"))
    return name[len("torch."):] if name.startswith("torch.") else name


def _as_bytes_view(t):
    """torch float8_e4m3fn weights as their uint8 bytes (a view, no copy)."""
    if _is_torch(t) and _dtype_of(t).startswith("float8"):
        import torch
        return t.view(torch.uint8)
    return t


def _ceil_div(a, b):
    return -(-a // b)


class Experts:
    """Expert weights in vLLM's FusedMoE layout, kept by reference (no copy).

    w13 [E, 2*I, H] for the gated acts (gate_up="blocked": rows 0..I-1 gate,
    I..2I-1 up; "interleaved": row 2j gate j, 2j+1 up j, as gpt-oss), [E, I, H]
    for the non-gated ones; w2 [E, H, I]. act: "swiglu" (silu(gate)*up) |
    "geglu" (erf GELU) | "geglu_tanh" | "swiglu_oai" ((clamp(up, -limit,
    limit) + 1) * g * sigmoid(alpha * g), g = min(gate, limit)) | "relu2"
    (relu(h)^2, non-gated) | "silu" (non-gated). b13 [E, rows of w13], b2
    [E, H]: optional biases in the weights' dtype.

    weight_format "fp8_block" | "mxfp4" | "int4" (include/dynmoe.h): w13/w2
    are uint8 bytes (torch float8_e4m3fn is taken as its bytes; gpt-oss's
    *_blocks [E, N, K/32, 16] as [E, N, K/2]), w13_scale/w2_scale the scales
    (fp32 [E, ceil(N/128), ceil(K/128)]; uint8 ue8m0 [E, N, K/32]; fp16 [E, N,
    ceil(K/group_size)]), w13_zero/w2_zero the int4 zero points (uint8, the
    scales' shape) or None (8). group_size: int4 32, 64 or 128 (required);
    fp8_block 128, mxfp4 32. x and out are then of `dtype` (default: the
    biases' dtype, else x's at each call).
    """

    __slots__ = ("w13", "w2", "act", "b13", "b2", "alpha", "limit", "gate_up", "weight_format",
                 "w13_scale", "w2_scale", "w13_zero", "w2_zero", "group_size", "dtype",
                 "num_experts", "hidden", "inter", "_act", "_c", "_packed")

    def __init__(self, w13, w2, act="swiglu", b13=None, b2=None, alpha=1.702, limit=7.0,
                 gate_up="blocked", weight_format="plain", w13_scale=None, w2_scale=None,
                 w13_zero=None, w2_zero=None, group_size=None, dtype=None):
        fn = "dynmoe.Experts"
        self._act = _enum(_ACT, act, "act")
        gated = act.lower() not in _NON_GATED
        fmt = _enum(_FORMAT, weight_format, "weight_format")
        gu = _enum(_GATE_UP, gate_up, "gate_up")
        if gu == 1 and not gated:
            raise ValueError(f"{fn}: gate_up='interleaved' needs a gated act; {act!r} is non-gated "
                             "(w13 holds I rows)")
        rows = "[E, 2*I, H]" if gated else "[E, I, H] (non-gated act)"
        if fmt == 2 and len(getattr(w13, "shape", ())) == 4:  # gpt-oss *_blocks [E, N, K/32, 16]
            w13 = w13.reshape(w13.shape[0], w13.shape[1], -1)
        if fmt == 2 and len(getattr(w2, "shape", ())) == 4:
            w2 = w2.reshape(w2.shape[0], w2.shape[1], -1)
        w13, w2 = _as_bytes_view(w13), _as_bytes_view(w2)
        # kept by reference: meta weights are refused when a forward uses them
        s13 = _tensor_shape(w13, "w13", fn, 3, rows, compute=False)
        s2 = _tensor_shape(w2, "w2", fn, 3, "[E, H, I]", compute=False)
        if gated and s13[1] % 2 != 0:
            raise ValueError(f"{fn}: w13 must be [E, 2*I, H], got shape {s13}")
        e, n13 = s13[0], s13[1]
        i = n13 // 2 if gated else n13
        h = s13[2] if fmt == 0 else s2[1]
        packed = (lambda k: k) if fmt in (0, 1) else (lambda k: _ceil_div(k, 2))
        if fmt == 0:
            if s2 != (e, h, i):
                raise ValueError(f"{fn}: w2 must be [E, H, I] = {(e, h, i)}, got {s2}")
        else:
            want13, want2 = (e, n13, packed(h)), (e, h, packed(i))
            if s2[0] != e or s13[2] != packed(h) or s2[2] != packed(i):
                raise ValueError(f"{fn}: {weight_format} w13 {s13} and w2 {s2} do not fit one layer: for H = {h}, "
                                 f"I = {i} they are {want13} and {want2} bytes")
            for name, t in (("w13", w13), ("w2", w2)):
                if _dtype_of(t) != "uint8":
                    raise TypeError(f"{fn}: {name} of weight_format {weight_format!r} must be uint8 bytes, "
                                    f"got {_dtype_of(t)}")
        if not (isinstance(limit, (int, float)) and isinstance(alpha, (int, float))):
            raise TypeError(f"{fn}: alpha and limit must be numbers, got {alpha!r}, {limit!r}")
        alpha, limit = float(alpha), float(limit)
        if self._act == _ACT["swiglu_oai"] and not (limit > 0 and limit < float("inf")
                                                    and abs(alpha) < float("inf")):
            raise ValueError(f"{fn}: limit = {limit} must be finite and > 0 and alpha = {alpha} finite "
                             "(swiglu_oai)")
        wdtype = _dtype_of(w13) if fmt == 0 else None
        if dtype is not None:
            dtype = _dtype_of(dtype) if not isinstance(dtype, str) else dtype
            if dtype not in _KIND:
                raise TypeError(f"{fn}: dtype must be float32, float16 or bfloat16, got {dtype}")
            if wdtype is not None and dtype != wdtype:
                raise TypeError(f"{fn}: dtype={dtype} but the plain weights are {wdtype}")
        bdt = dtype or wdtype
        for name, t, want in (("b13", b13, (e, n13)), ("b2", b2, (e, h))):
            if t is None:
                continue
            shape = _tensor_shape(t, name, fn, 2, f"[E, {'2*I' if gated else 'I'}]" if name == "b13" else "[E, H]",
                                  compute=False)
            if shape != want:
                raise ValueError(f"{fn}: {name} must be {list(want)} (one row per expert, one value per "
                                 f"{'row of w13' if name == 'b13' else 'output'}), got shape {shape}")
            bdt = bdt or _dtype_of(t)
            if _dtype_of(t) != bdt:
                raise TypeError(f"{fn}: {name} must be {bdt} (the experts' dtype), got {_dtype_of(t)}")
        scales = (w13_scale, w2_scale, w13_zero, w2_zero)
        if fmt == 0:
            if any(t is not None for t in scales) or group_size not in (None, 0):
                raise ValueError(f"{fn}: w13_scale, w2_scale, w13_zero, w2_zero and group_size are for quantized "
                                 "weights; weight_format is 'plain'")
            group_size = 0
        else:
            default = {1: 128, 2: 32, 3: None}[fmt]
            allowed = {1: (128,), 2: (32,), 3: (32, 64, 128)}[fmt]
            group_size = default if group_size is None else group_size
            if group_size is None:
                raise ValueError(f"{fn}: weight_format 'int4' needs group_size= (32, 64 or 128)")
            if not isinstance(group_size, int) or group_size not in allowed:
                raise ValueError(f"{fn}: group_size = {group_size!r}: {weight_format} takes "
                                 f"{' or '.join(map(str, allowed))}")
            if fmt == 2 and (h % 32 or i % 32):
                raise ValueError(f"{fn}: mxfp4 needs H = {h} and I = {i} to be multiples of 32")
            if fmt != 3 and (w13_zero is not None or w2_zero is not None):
                raise ValueError(f"{fn}: w13_zero / w2_zero (zero points) are only for weight_format 'int4'")
            for name, t, n, k in (("w13_scale", w13_scale, n13, h), ("w2_scale", w2_scale, h, i),
                                  ("w13_zero", w13_zero, n13, h), ("w2_zero", w2_zero, h, i)):
                if t is None:
                    if name.endswith("scale"):
                        raise ValueError(f"{fn}: weight_format {weight_format!r} needs {name}")
                    continue
                if fmt == 1:
                    want, dt = (e, _ceil_div(n, 128), _ceil_div(k, 128)), "float32"
                elif fmt == 2:
                    want, dt = (e, n, k // 32), "uint8"
                else:
                    want, dt = (e, n, _ceil_div(k, group_size)), "float16" if name.endswith("scale") else "uint8"
                shape = _tensor_shape(t, name, fn, 3, str(list(want)), compute=False)
                if shape != want:
                    raise ValueError(f"{fn}: {name} must be {list(want)} for {weight_format}, got shape {shape}")
                if _dtype_of(t) != dt:
                    raise TypeError(f"{fn}: {name} must be {dt} for {weight_format}, got {_dtype_of(t)}")
        self.w13, self.w2, self.b13, self.b2 = w13, w2, b13, b2
        self.w13_scale, self.w2_scale, self.w13_zero, self.w2_zero = scales
        self.act, self.alpha, self.limit = act.lower(), alpha, limit
        self.gate_up, self.weight_format, self.group_size = gate_up.lower(), weight_format.lower(), group_size
        self.dtype = bdt
        self.num_experts, self.hidden, self.inter = int(e), int(h), int(i)
        self._c = (w13, w2, self._act, b13, b2, gu, alpha, limit, fmt, w13_scale, w2_scale, w13_zero, w2_zero,
                   group_size, _KIND.get(bdt, 0) if fmt else 0)
        self._packed = None

    def pack(self):
        """These experts with pre-packed weights (dynmoe_experts_pack, made once
        here): CPU tensors, plain f32/bf16/f16 weights. Forwards on the CPU's
        "onednn" path (dynmoe.cpu_isa(); DYNMOE_CPU_ISA=onednn, or the default
        on AMX CPUs) run the experts with many rows on oneDNN matmuls
        over the packed copy; the rest still reads w13/w2, which this object
        keeps alive. Same results as the unpacked experts within the dtype's
        tolerance. Raises DynmoeError (unsupported) without oneDNN in the
        build, for CUDA tensors and for quantized weights."""
        import copy
        cap = _C.pack(self._c, self.num_experts)
        p = copy.copy(self)
        p._packed = cap
        p._c = self._c + (cap,)
        return p

    @property
    def packed(self):
        """None, or (bytes, path) of the packed weights (dynmoe_packed_experts_path)."""
        return None if self._packed is None else _C.packed_info(self._packed)

    # The options as lists and optional tensors, the form the torch ops take
    # after (w13, w2, act): see dynmoe._torch.
    @property
    def ints(self):
        return [self._c[5], self._c[8], self.group_size, self._c[14]]

    @property
    def floats(self):
        return [self.alpha, self.limit]

    @property
    def tensors(self):
        """(b13, b2, w13_scale, w2_scale, w13_zero, w2_zero)."""
        return (self.b13, self.b2, self.w13_scale, self.w2_scale, self.w13_zero, self.w2_zero)

    @property
    def is_default(self):
        """Plain weights, no biases, blocked layout, default alpha/limit: the
        torch ops need nothing past (w13, w2, act)."""
        return (self._c[8] == 0 and self._c[5] == 0 and self.b13 is None and self.b2 is None
                and self.alpha == 1.702 and self.limit == 7.0)

    @classmethod
    def from_op(cls, w13, w2, act, tensors=None, ints=None, floats=None):
        """Inverse of (w13, w2, act, experts.tensors, experts.ints, experts.floats)."""
        b13, b2, s13, s2, z13, z2 = tensors or (None,) * 6
        gu, fmt, g, kind = ints or (0, 0, 0, 0)
        alpha, limit = floats or (1.702, 7.0)
        dtype = next((k for k, v in _KIND.items() if v == kind), None) if kind else None
        return cls(w13, w2, act, b13=b13, b2=b2, alpha=alpha, limit=limit, gate_up=_name_of(_GATE_UP, gu),
                   weight_format=_name_of(_FORMAT, fmt), w13_scale=s13, w2_scale=s2, w13_zero=z13, w2_zero=z2,
                   group_size=g if fmt else None, dtype=dtype)

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("gate_up", "weight_format")
                        if getattr(self, k) not in ("blocked", "plain"))
        if self._packed is not None:
            extra += ", packed"
        if self.b13 is not None or self.b2 is not None:
            extra += ", biases"
        return (f"dynmoe.Experts(E={self.num_experts}, H={self.hidden}, I={self.inter}, "
                f"act={self.act!r}{extra}, dtype={self.dtype or '?'})")


# ---------------------------------------------------------------- frameworks

def _framework(t):
    mod = type(t).__module__.split(".", 1)[0]
    if mod in ("torch", "numpy", "cupy"):
        return mod
    return "other"


def _is_torch(t):
    return type(t).__module__.split(".", 1)[0] == "torch"


def _empty(like, shape, dtype, zero=False):
    """A new C-contiguous, 16-byte aligned tensor in like's framework and device."""
    fw = _framework(like)
    if fw == "torch":
        import torch
        f = torch.zeros if zero else torch.empty
        return f(shape, dtype=getattr(torch, dtype), device=like.device)
    if fw == "cupy":
        import cupy
        with like.device:
            return (cupy.zeros if zero else cupy.empty)(shape, dtype=dtype)
    if fw == "numpy" or (hasattr(like, "__dlpack_device__") and like.__dlpack_device__()[0] in (1, 3)):
        import numpy as np
        a = (np.zeros if zero else np.empty)(shape, dtype=dtype)
        if a.__array_interface__["data"][0] % 16 == 0:  # always, with glibc's malloc
            return a
        n = a.size * a.itemsize
        raw = np.zeros(n + 16, dtype=np.uint8)
        off = (-raw.__array_interface__["data"][0]) % 16
        return raw[off:off + n].view(dtype).reshape(shape)
    raise TypeError(f"dynmoe: cannot allocate outputs for a {type(like).__name__} on this device; "
                    "pass them (ids=, weights=, out=, workspace=)")


def _stream(t, stream):
    """The caller's current CUDA stream for t's device (None on the CPU)."""
    if stream is not None:
        return int(stream)
    fw = _framework(t)
    if fw == "torch":
        if t.device.type == "cuda":
            import torch
            return torch.cuda.current_stream(t.device).cuda_stream
        return None
    if fw == "cupy":
        import cupy
        return cupy.cuda.get_current_stream().ptr
    dev = t.__dlpack_device__()[0] if hasattr(t, "__dlpack_device__") else 1
    return 0 if dev in (2, 13) else None


def _stats_buf(like, stats):
    return _empty(like, (_C.STATS_LEN,), "int64", zero=True) if stats else None


def _stats_dict(buf):
    return dict(zip(STATS_FIELDS, (int(v) for v in buf.tolist())))


def _view(ws, offset, count, dtype):
    """count elements of dtype at byte offset of a uint8 workspace."""
    fw = _framework(ws)
    part = ws[offset:offset + 4 * count]
    if fw == "torch":
        import torch
        return part.view(getattr(torch, dtype))
    return part.view(dtype)


def _as_bytes(ws):
    """A workspace of any dtype as a flat uint8 tensor (for plan's views)."""
    fw = _framework(ws)
    if fw == "torch":
        import torch
        return ws.reshape(-1).view(torch.uint8)
    return ws.reshape(-1).view("uint8")


# ------------------------------------------------------------------- the API
#
# Each public function called with torch tensors while torch.compile traces
# (or with tensor subclasses such as FakeTensor), and with nothing but the
# defaults for out/workspace/stats/stream, goes through its torch.ops.dynmoe
# custom op, so it is one node of the graph. Eager calls go to the C
# extension directly: the same result, without the dispatcher's overhead.

def _torch_op(t, *extras):
    if not _is_torch(t) or any(e is not None and e is not False for e in extras):
        return None
    from . import _torch
    if not _torch.registered or not _torch.wants_op(t):
        return None
    return _torch.ops


def route(logits, router, bias=None, mask_logits=None, *, expert_scale=None, ids=None, weights=None,
          stats=False, stream=None):
    """Routes T tokens: logits [T, E+Z] (fp32/fp16/bf16), bias [E+Z] fp32 or
    None, mask_logits [T, E] (logits' dtype) or None (BEAM: a real-expert slot
    survives only if its mask logit is > 0), expert_scale [E+Z] fp32 or None
    (a learned per-expert scale of the routing weight, after norm and before
    the router's scale: Gemma-4's per_expert_scale). Returns (ids [T, K]
    int32, weights [T, K] fp32), plus a stats dict when stats=True."""
    ops = _torch_op(logits, ids, weights, stats, stream)
    if ops is not None:
        return ops.route(logits, router.ints, router.floats, bias, mask_logits, expert_scale)
    return _route(logits, router, bias, mask_logits, expert_scale=expert_scale, ids=ids, weights=weights,
                  stats=stats, stream=stream)


def _route(logits, router, bias=None, mask_logits=None, *, expert_scale=None, ids=None, weights=None,
           stats=False, stream=None):
    t = _tensor_shape(logits, "logits", "dynmoe.route", 2, "[T, E+Z]")[0]
    if ids is None:
        ids = _empty(logits, (t, router.top_k), "int32")
    if weights is None:
        weights = _empty(logits, (t, router.top_k), "float32")
    st = _stats_buf(logits, stats)
    _C.route(router._c, logits, bias, mask_logits, expert_scale, ids, weights, _stream(logits, stream), st)
    return (ids, weights, _stats_dict(st)) if stats else (ids, weights)


def route_tasks(x, task_logits, task_weights, router, bias=None, *, expert_scale=None, ids=None, weights=None,
                stats=False, stream=None):
    """CaRE bi-level routing: x [T, H], task_logits [T, R] fp32, task_weights
    [R, E+Z, H] (x's dtype), bias and expert_scale [E+Z] fp32 or None (as in
    route; each task's weights are scaled before the merge). Returns (ids,
    weights) [T, top_tasks*K], plus a stats dict when stats=True."""
    ops = _torch_op(x, ids, weights, stats, stream)
    if ops is not None:
        return ops.route_tasks(x, task_logits, task_weights, router.ints, router.floats, bias, expert_scale)
    return _route_tasks(x, task_logits, task_weights, router, bias, expert_scale=expert_scale, ids=ids,
                        weights=weights, stats=stats, stream=stream)


def _route_tasks(x, task_logits, task_weights, router, bias=None, *, expert_scale=None, ids=None, weights=None,
                 stats=False, stream=None):
    t = _tensor_shape(x, "x", "dynmoe.route_tasks", 2, "[T, H]")[0]
    s = router.slots
    if ids is None:
        ids = _empty(x, (t, s), "int32")
    if weights is None:
        weights = _empty(x, (t, s), "float32")
    st = _stats_buf(x, stats)
    _C.route_tasks(router._c, x, task_logits, task_weights, bias, expert_scale, ids, weights, _stream(x, stream),
                   st)
    return (ids, weights, _stats_dict(st)) if stats else (ids, weights)


def plan_workspace_size(router, T, slots=None):
    """Bytes plan() needs for T tokens of `slots` slots (default router.slots)."""
    return _C.plan_workspace_size(router._c, int(T), int(slots or router.slots))


PLAN_KEYS = ("counts", "offsets", "sorted_slots", "slot_rows", "active_experts", "num_active")


def plan(ids, router, *, workspace=None, stats=False, stream=None):
    """The expert-major layout of a routing table ids [T, S] int32. Returns a
    dict of int32 tensors: counts [E], offsets [E+1] (exclusive prefix),
    sorted_slots [T*S] (row -> slot t*S+k; -1 from offsets[E] on), slot_rows
    [T*S] (slot -> row or -1), active_experts [E] (ascending; -1 from
    num_active on), num_active [1]. (For frameworks other than numpy and
    torch the entries past the ends are left unspecified.)
    Without torch they are views into the workspace. Plus a stats dict when
    stats=True."""
    ops = _torch_op(ids, workspace, stats, stream)
    if ops is not None:
        return dict(zip(PLAN_KEYS, ops.plan(ids, router.ints, router.floats)))
    return _plan(ids, router, workspace=workspace, stats=stats, stream=stream)


def _plan(ids, router, *, workspace=None, stats=False, stream=None):
    t, s = _tensor_shape(ids, "ids", "dynmoe.plan", 2, "[T, S]")
    if s < 1:
        raise ValueError(f"dynmoe.plan: ids has shape {(t, s)}: a routing table needs S >= 1 slots per token")
    e = router.num_experts
    n = t * s
    st = _stats_buf(ids, stats)
    if workspace is None:
        workspace = _empty(ids, (_C.plan_workspace_size(router._c, t, s),), "uint8")
    offs = _C.plan(router._c, ids, workspace, _stream(ids, stream), st)
    if offs is None:  # T == 0: an empty plan
        def z(c):
            return _empty(ids, (c,), "int32", zero=True)
        out = dict(zip(PLAN_KEYS, (z(e), z(e + 1), z(0), z(0), z(e) - 1, z(1))))
    else:
        ws = _as_bytes(workspace)
        counts = (e, e + 1, n, n, e, 1)
        out = {k: _view(ws, o, c, "int32") for k, o, c in zip(PLAN_KEYS, offs, counts)}
        _fill_tails(out, e)
    return (out, _stats_dict(st)) if stats else out


def _fill_tails(p, e):
    """Sets the entries the C plan leaves unspecified to -1 (sorted_slots from
    offsets[E] on, active_experts from num_active on), so that results are
    deterministic. No host sync with torch (a device-side mask)."""
    fw = _framework(p["sorted_slots"])
    if fw == "numpy":
        p["sorted_slots"][int(p["offsets"][e]):] = -1
        p["active_experts"][int(p["num_active"][0]):] = -1
    elif fw == "torch":
        import torch
        ss, act = p["sorted_slots"], p["active_experts"]
        ss.masked_fill_(torch.arange(ss.shape[0], device=ss.device) >= p["offsets"][e], -1)
        act.masked_fill_(torch.arange(act.shape[0], device=act.device) >= p["num_active"][0], -1)


def workspace_size(router, experts, T):
    """Bytes of the workspace experts_forward/moe_forward need for up to T tokens."""
    return _C.workspace_size(router._c, experts._c, int(T))


def _workspace(x, router, experts, workspace):
    if workspace is not None:
        return workspace
    return _empty(x, (workspace_size(router, experts, x.shape[0]),), "uint8")


def experts_forward(x, ids, weights, router, experts, *, out=None, workspace=None, stats=False,
                    stream=None):
    """Runs the experts over a routing table and combines: x [T, H], ids and
    weights [T, S] (int32, fp32); returns out [T, H] in x's dtype,
    out[t] = sum_k w[t,k] * FFN_{ids[t,k]}(x[t]) (+ w * x for identity zero
    experts), plus a stats dict when stats=True."""
    ops = _torch_op(x, out, workspace, stats, stream) if experts._packed is None else None
    if ops is not None:
        return ops.experts_forward(x, ids, weights, experts.w13, experts.w2, router.ints, router.floats,
                                   experts.act, *_op_experts(experts))
    return _experts_forward(x, ids, weights, router, experts, out=out, workspace=workspace,
                            stats=stats, stream=stream)


def _experts_forward(x, ids, weights, router, experts, *, out=None, workspace=None, stats=False,
                     stream=None):
    shape = _tensor_shape(x, "x", "dynmoe.experts_forward", 2, "[T, H]")
    _tensor_shape(ids, "ids", "dynmoe.experts_forward", 2, "[T, S]")
    if out is None:
        out = _empty(x, shape, _dtype_name(x))
    ws = _workspace(x, router, experts, workspace)
    st = _stats_buf(x, stats)
    _C.experts_forward(router._c, experts._c, x, ids, weights, out, ws, _stream(x, stream), st)
    return (out, _stats_dict(st)) if stats else out


def moe_forward(x, logits, router, experts, bias=None, mask_logits=None, *, expert_scale=None, out=None,
                workspace=None, stats=False, stream=None):
    """The whole layer, route -> plan -> experts -> combine: x [T, H] (the
    experts' dtype), logits [T, E+Z], bias [E+Z] fp32 or None, mask_logits
    [T, E] or None, expert_scale [E+Z] fp32 or None (see route). Returns out
    [T, H], plus a stats dict when stats=True."""
    ops = _torch_op(x, out, workspace, stats, stream) if experts._packed is None else None
    if ops is not None:
        return ops.moe_forward(x, logits, experts.w13, experts.w2, router.ints, router.floats,
                               experts.act, bias, mask_logits, expert_scale, *_op_experts(experts))
    return _moe_forward(x, logits, router, experts, bias, mask_logits, expert_scale=expert_scale, out=out,
                        workspace=workspace, stats=stats, stream=stream)


def _op_experts(experts):
    """The torch ops' trailing experts arguments: none for default experts."""
    if experts.is_default:
        return ()
    return (*experts.tensors, experts.ints, experts.floats)


def _moe_forward(x, logits, router, experts, bias=None, mask_logits=None, *, expert_scale=None, out=None,
                 workspace=None, stats=False, stream=None):
    shape = _tensor_shape(x, "x", "dynmoe.moe_forward", 2, "[T, H]")
    if out is None:
        out = _empty(x, shape, _dtype_name(x))
    ws = _workspace(x, router, experts, workspace)
    st = _stats_buf(x, stats)
    _C.moe_forward(router._c, experts._c, x, logits, bias, mask_logits, expert_scale, out, ws,
                   _stream(x, stream), st)
    return (out, _stats_dict(st)) if stats else out


def _dtype_name(t):
    name = str(t.dtype)
    return name[len("torch."):] if name.startswith("torch.") else name
