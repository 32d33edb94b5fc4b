"""torch.library custom ops: torch.ops.dynmoe.{route, route_tasks, plan,
experts_forward, moe_forward} and the in-place {route_out, experts_forward_out,
moe_forward_out}, registered when torch (>= 2.4) is importable.

Each op has a fake (meta) implementation that only computes output shapes,
so the ops trace under torch.compile (no graph break) and can be captured in
CUDA graphs (the real implementation enqueues on the current stream,
allocates its workspace from torch's caching allocator and never syncs).

The router travels as two lists (dynmoe.Router.ints / .floats) so that the
op schemas hold only types torch.library knows:

    router = dynmoe.Router(num_experts=8, top_k=2)
    out = torch.ops.dynmoe.moe_forward(x, logits, w13, w2, router.ints, router.floats,
                                       "swiglu", None, None)
"""
from __future__ import annotations

registered = False
ops = None

try:  # torch is optional
    import torch
    from torch.library import custom_op as _custom_op
except Exception:  # ImportError, or a torch too old for custom_op
    torch = None
    _custom_op = None

if _custom_op is not None:
    from typing import List, Optional, Tuple

    import functools
    import os
    import threading
    import warnings
    import weakref

    from . import _C, _core

    Tensor = torch.Tensor
    # torch tensors are exported with torch.utils.dlpack.to_dlpack, straight from C.
    _C._set_torch(torch.Tensor, torch.utils.dlpack.to_dlpack)

    @functools.lru_cache(maxsize=256)
    def _router_cached(ints, floats):
        return _core.Router.from_lists(ints, floats)

    def _router(router_ints, router_floats):
        return _router_cached(tuple(router_ints), tuple(router_floats))

    def _experts(w13, w2, act, b13=None, b2=None, w13_scale=None, w2_scale=None, w13_zero=None, w2_zero=None,
                 experts_ints=None, experts_floats=None):
        # The trailing arguments are dynmoe.Experts' options (Experts.tensors,
        # .ints = [gate_up, weight_format, group_size, dtype], .floats = [alpha, limit]).
        e = _core.Experts.from_op(w13, w2, act, (b13, b2, w13_scale, w2_scale, w13_zero, w2_zero),
                                  experts_ints, experts_floats)
        if pack_wanted() and w13.device.type == "cpu" and e.weight_format == "plain":
            return _packed(e, w13, w2, b13, b2)
        return e

    # DYNMOE_PACK=1: the ops' CPU experts packed once (dynmoe.Experts.pack) at
    # their first forward and reused while the same weight tensors live
    # unchanged (weak references, data pointers and torch's version counters
    # are checked at every call, so freed, moved or modified weights are
    # packed again rather than read stale). The integrations call these ops;
    # vLLM's plugin and transformers' patch() fill the cache at load time
    # (prepack), so their first forward packs nothing. Where packing is
    # unsupported (a build without oneDNN) the plain experts run, with one
    # warning.
    _packs = {}
    _pack_warned = []
    _isa_warned = []  # DYNMOE_PACK=1 off the onednn path: warned once
    pack_count = [0]  # dynmoe_experts_pack calls made for the ops (tests read it: packed at load or not)

    def pack_wanted():
        return os.environ.get("DYNMOE_PACK") == "1"

    def prepack(w13, w2, act="swiglu", *options):
        """Load time (the integrations' hooks): packs plain CPU experts now into
        the cache the ops read, given the experts ops' own arguments (w13, w2,
        act, then b13, b2, scales, zeros, experts_ints, experts_floats), so
        that their first forward finds it. Returns (bytes, path), or None when
        DYNMOE_PACK is not 1, the weights are not plain CPU ones, or packing is
        unsupported (then one warning, and the plain experts run)."""
        return _experts(w13, w2, act, *options).packed

    def _packed(e, w13, w2, b13, b2):
        key = (id(w13), id(w2), e._c[2:3] + e._c[5:9])
        state = (w13.data_ptr(), w2.data_ptr(), w13._version, w2._version,
                 None if b13 is None else (b13.data_ptr(), b13._version),
                 None if b2 is None else (b2.data_ptr(), b2._version))
        hit = _packs.get(key)
        cap = None
        if hit is not None:
            r13, r2, st, cap = hit
            if not (r13() is w13 and r2() is w2 and st == state):
                cap = None
        if cap is None:
            try:
                cap = e.pack()._packed
                pack_count[0] += 1
            except _core.DynmoeError as err:
                if not _pack_warned:
                    _pack_warned.append(str(err))
                    warnings.warn(f"DYNMOE_PACK=1: experts run unpacked ({err})", RuntimeWarning, stacklevel=3)
                return e
            isa = _C.cpu_isa()
            if isa != "onednn" and not _isa_warned:
                # since the onednn path is the default only with AMX (docs/cpu.md), say why
                # the copy is not used instead of keeping it silently
                _isa_warned.append(isa)
                warnings.warn(f"DYNMOE_PACK=1: packed, but the CPU path is {isa}, which runs the plain "
                              "experts; DYNMOE_CPU_ISA=onednn runs the packed copy (the default only on "
                              "AMX CPUs: elsewhere oneDNN measured slower, docs/cpu.md)", RuntimeWarning,
                              stacklevel=3)
            # the entry holds the packed object only (no tensor): it goes when w13 does
            drop = lambda _ref, k=key: _packs.pop(k, None)  # noqa: E731
            _packs[key] = (weakref.ref(w13, drop), weakref.ref(w2, drop), state, cap)
        e._packed, e._c = cap, e._c + (cap,)
        return e

    # One workspace per (device, stream) -- per thread on the CPU, where calls
    # run on the calling thread -- grown by powers of two: a layer of any T
    # reuses it, and two calls never share scratch unless the stream orders
    # them. On CUDA the first call on a stream allocates it (from torch's
    # caching allocator); make that call before capturing a graph, as the
    # usual warm-up does.
    _workspaces = {}

    def cached_workspace(like, nbytes):
        """A 1-D uint8 tensor of >= nbytes on like's device, reused across calls."""
        dev = like.device
        if dev.type == "cuda":
            key = (dev.type, dev.index, torch.cuda.current_stream(dev).cuda_stream)
        else:
            key = (dev.type, dev.index, threading.get_ident())
        ws = _workspaces.get(key)
        if ws is None or ws.numel() < nbytes:
            size = 4096
            while size < nbytes:
                size *= 2
            ws = torch.empty(size, dtype=torch.uint8, device=dev)
            _workspaces[key] = ws
        return ws

    @_custom_op("dynmoe::route", mutates_args=())
    def route(logits: Tensor, router_ints: List[int], router_floats: List[float],
              bias: Optional[Tensor] = None, mask_logits: Optional[Tensor] = None,
              expert_scale: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r = _router(router_ints, router_floats)
        return _core._route(logits, r, bias, mask_logits, expert_scale=expert_scale)

    @route.register_fake
    def _(logits, router_ints, router_floats, bias=None, mask_logits=None, expert_scale=None):
        k = router_ints[3]
        t = logits.shape[0]
        return (logits.new_empty((t, k), dtype=torch.int32), logits.new_empty((t, k), dtype=torch.float32))

    @_custom_op("dynmoe::route_tasks", mutates_args=())
    def route_tasks(x: Tensor, task_logits: Tensor, task_weights: Tensor, router_ints: List[int],
                    router_floats: List[float], bias: Optional[Tensor] = None,
                    expert_scale: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r = _router(router_ints, router_floats)
        return _core._route_tasks(x, task_logits, task_weights, r, bias, expert_scale=expert_scale)

    @route_tasks.register_fake
    def _(x, task_logits, task_weights, router_ints, router_floats, bias=None, expert_scale=None):
        s = router_ints[3] * router_ints[10]
        t = x.shape[0]
        return (x.new_empty((t, s), dtype=torch.int32), x.new_empty((t, s), dtype=torch.float32))

    @_custom_op("dynmoe::plan", mutates_args=())
    def plan(ids: Tensor, router_ints: List[int], router_floats: List[float]) -> Tuple[
            Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        r = _router(router_ints, router_floats)
        p = _core._plan(ids, r)
        # Outputs of a custom op may not alias each other: one copy each.
        return tuple(p[k].clone() for k in _core.PLAN_KEYS)

    @plan.register_fake
    def _(ids, router_ints, router_floats):
        e = router_ints[0]
        n = ids.shape[0] * ids.shape[1]
        i32 = torch.int32
        return (ids.new_empty((e,), dtype=i32), ids.new_empty((e + 1,), dtype=i32),
                ids.new_empty((n,), dtype=i32), ids.new_empty((n,), dtype=i32),
                ids.new_empty((e,), dtype=i32), ids.new_empty((1,), dtype=i32))

    @_custom_op("dynmoe::experts_forward", mutates_args=())
    def experts_forward(x: Tensor, ids: Tensor, weights: Tensor, w13: Tensor, w2: Tensor,
                        router_ints: List[int], router_floats: List[float], act: str = "swiglu",
                        b13: Optional[Tensor] = None, b2: Optional[Tensor] = None,
                        w13_scale: Optional[Tensor] = None, w2_scale: Optional[Tensor] = None,
                        w13_zero: Optional[Tensor] = None, w2_zero: Optional[Tensor] = None,
                        experts_ints: Optional[List[int]] = None,
                        experts_floats: Optional[List[float]] = None) -> Tensor:
        r = _router(router_ints, router_floats)
        return _core._experts_forward(x, ids, weights, r, _experts(w13, w2, act, b13, b2, w13_scale, w2_scale, w13_zero, w2_zero, experts_ints, experts_floats))

    @experts_forward.register_fake
    def _(x, ids, weights, w13, w2, router_ints, router_floats, act="swiglu", b13=None, b2=None, w13_scale=None, w2_scale=None, w13_zero=None,
          w2_zero=None, experts_ints=None, experts_floats=None):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @_custom_op("dynmoe::moe_forward", mutates_args=())
    def moe_forward(x: Tensor, logits: Tensor, w13: Tensor, w2: Tensor, router_ints: List[int],
                    router_floats: List[float], act: str = "swiglu", bias: Optional[Tensor] = None,
                    mask_logits: Optional[Tensor] = None, expert_scale: Optional[Tensor] = None,
                    b13: Optional[Tensor] = None, b2: Optional[Tensor] = None,
                        w13_scale: Optional[Tensor] = None, w2_scale: Optional[Tensor] = None,
                        w13_zero: Optional[Tensor] = None, w2_zero: Optional[Tensor] = None,
                        experts_ints: Optional[List[int]] = None,
                        experts_floats: Optional[List[float]] = None) -> Tensor:
        r = _router(router_ints, router_floats)
        return _core._moe_forward(x, logits, r, _experts(w13, w2, act, b13, b2, w13_scale, w2_scale, w13_zero, w2_zero, experts_ints, experts_floats), bias, mask_logits,
                                  expert_scale=expert_scale)

    @moe_forward.register_fake
    def _(x, logits, w13, w2, router_ints, router_floats, act="swiglu", bias=None, mask_logits=None,
          expert_scale=None, b13=None, b2=None, w13_scale=None, w2_scale=None, w13_zero=None,
          w2_zero=None, experts_ints=None, experts_floats=None):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    # ------------------------------------------------ ops that write in place
    #
    # The *_out ops write into the caller's tensors (vLLM's preallocated
    # `output`, a routing table it owns) and return nothing, so a compiled
    # graph holds one opaque node that neither allocates its result nor copies
    # it. `workspace` is the caller's scratch (>= workspace_size bytes, any
    # dtype, 1-D); None takes the cached one of this device and stream
    # (cached_workspace), which is what the integrations pass: the real
    # implementation runs eagerly even inside a compiled graph, so a graph
    # neither allocates a workspace per call nor needs one as an input.

    @_custom_op("dynmoe::route_out", mutates_args=("ids", "weights"))
    def route_out(logits: Tensor, router_ints: List[int], router_floats: List[float],
                  bias: Optional[Tensor], mask_logits: Optional[Tensor], ids: Tensor,
                  weights: Tensor, expert_scale: Optional[Tensor] = None) -> None:
        _core._route(logits, _router(router_ints, router_floats), bias, mask_logits, expert_scale=expert_scale,
                     ids=ids, weights=weights)

    @route_out.register_fake
    def _(logits, router_ints, router_floats, bias, mask_logits, ids, weights, expert_scale=None):
        return None

    @_custom_op("dynmoe::experts_forward_out", mutates_args=("out", "workspace"))
    def experts_forward_out(x: Tensor, ids: Tensor, weights: Tensor, w13: Tensor, w2: Tensor,
                            router_ints: List[int], router_floats: List[float], act: str, out: Tensor,
                            workspace: Optional[Tensor] = None,
                            b13: Optional[Tensor] = None, b2: Optional[Tensor] = None,
                        w13_scale: Optional[Tensor] = None, w2_scale: Optional[Tensor] = None,
                        w13_zero: Optional[Tensor] = None, w2_zero: Optional[Tensor] = None,
                        experts_ints: Optional[List[int]] = None,
                        experts_floats: Optional[List[float]] = None) -> None:
        r, e = _router(router_ints, router_floats), _experts(w13, w2, act, b13, b2, w13_scale, w2_scale, w13_zero, w2_zero, experts_ints, experts_floats)
        if workspace is None:
            workspace = cached_workspace(x, _core.workspace_size(r, e, x.shape[0]))
        _core._experts_forward(x, ids, weights, r, e, out=out, workspace=workspace)

    @experts_forward_out.register_fake
    def _(x, ids, weights, w13, w2, router_ints, router_floats, act, out, workspace=None, b13=None, b2=None, w13_scale=None, w2_scale=None, w13_zero=None,
          w2_zero=None, experts_ints=None, experts_floats=None):
        return None

    @_custom_op("dynmoe::moe_forward_out", mutates_args=("out", "workspace"))
    def moe_forward_out(x: Tensor, logits: Tensor, w13: Tensor, w2: Tensor, router_ints: List[int],
                        router_floats: List[float], act: str, bias: Optional[Tensor],
                        mask_logits: Optional[Tensor], out: Tensor,
                        workspace: Optional[Tensor] = None, expert_scale: Optional[Tensor] = None,
                        b13: Optional[Tensor] = None, b2: Optional[Tensor] = None,
                        w13_scale: Optional[Tensor] = None, w2_scale: Optional[Tensor] = None,
                        w13_zero: Optional[Tensor] = None, w2_zero: Optional[Tensor] = None,
                        experts_ints: Optional[List[int]] = None,
                        experts_floats: Optional[List[float]] = None) -> None:
        r, e = _router(router_ints, router_floats), _experts(w13, w2, act, b13, b2, w13_scale, w2_scale, w13_zero, w2_zero, experts_ints, experts_floats)
        if workspace is None:
            workspace = cached_workspace(x, _core.workspace_size(r, e, x.shape[0]))
        _core._moe_forward(x, logits, r, e, bias, mask_logits, expert_scale=expert_scale, out=out,
                           workspace=workspace)

    @moe_forward_out.register_fake
    def _(x, logits, w13, w2, router_ints, router_floats, act, bias, mask_logits, out, workspace=None,
          expert_scale=None, b13=None, b2=None, w13_scale=None, w2_scale=None, w13_zero=None,
          w2_zero=None, experts_ints=None, experts_floats=None):
        return None

    class _Ops:
        route = staticmethod(route)
        route_tasks = staticmethod(route_tasks)
        plan = staticmethod(plan)
        experts_forward = staticmethod(experts_forward)
        moe_forward = staticmethod(moe_forward)
        route_out = staticmethod(route_out)
        experts_forward_out = staticmethod(experts_forward_out)
        moe_forward_out = staticmethod(moe_forward_out)

    _plain = (torch.Tensor, torch.nn.Parameter)
    _is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)

    def wants_op(t):
        """The public API takes the custom op under torch.compile and for
        tensor subclasses (FakeTensor, functional tensors); eager plain
        tensors go to the C extension directly."""
        return _is_compiling() or type(t) not in _plain

    ops = _Ops
    registered = True
