"""dynmoe: the expert-routing part of Mixture-of-Experts inference.

    import dynmoe
    router  = dynmoe.Router(num_experts=128, top_k=8, score="softmax", norm="selected")
    experts = dynmoe.Experts(w13, w2, act="swiglu")        # [E,2I,H], [E,H,I]; no copy
    ids, weights = dynmoe.route(logits, router, bias=None, mask_logits=None)
    out = dynmoe.experts_forward(x, ids, weights, router, experts)
    out = dynmoe.moe_forward(x, logits, router, experts, bias=None, mask_logits=None)
    out, stats = dynmoe.moe_forward(x, logits, router, experts, stats=True)

Any DLPack tensor goes in (torch, numpy >= 1.22, cupy); outputs come back in
the caller's framework and on its device. With torch installed the same calls
exist as torch.ops.dynmoe.* custom ops (see dynmoe._torch).
"""
# torch first, when it is installed: its CUDA libraries (pip wheels) must be
# the ones loaded into the process before libdynmoe's dependencies on
# /usr/local/cuda's (same sonames, older versions) could claim the names.
try:
    import torch as _torch_first  # noqa: F401
except Exception:
    pass

from ._core import (  # noqa: F401
    PLAN_KEYS,
    STATS_FIELDS,
    DynmoeError,
    Experts,
    Router,
    experts_forward,
    moe_forward,
    plan,
    plan_workspace_size,
    route,
    route_tasks,
    workspace_size,
)
from . import _C
from .presets import preset_router, presets  # noqa: F401

__version__ = "0.3.0"
version = _C.version  # dynmoe_version() of the loaded libdynmoe: MAJOR*10000 + MINOR*100 + PATCH
cuda_available = _C.cuda_available
cpu_isa = _C.cpu_isa  # the CPU path of the next call: "onednn", "avx512", "avx2" or "scalar" (DYNMOE_CPU_ISA)

from . import _torch  # noqa: E402  registers torch.ops.dynmoe.* when torch is importable

torch_ops_registered = _torch.registered

__all__ = [
    "DynmoeError", "Router", "Experts", "route", "route_tasks", "plan", "experts_forward",
    "moe_forward", "workspace_size", "plan_workspace_size", "presets", "preset_router",
    "STATS_FIELDS", "PLAN_KEYS", "version", "cuda_available", "cpu_isa", "torch_ops_registered",
]
