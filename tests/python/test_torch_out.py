"""torch.ops.dynmoe.{route_out, experts_forward_out, moe_forward_out}: the
in-place ops the integrations call. Against the float64 reference with the
outputs poisoned (NaN) before each call, with the caller's workspace and with
the cached one, under torch.compile(fullgraph=True), and torch.library.opcheck.
Skipped without torch."""
import numpy as np
import pytest

import dynmoe
import reference as ref

torch = pytest.importorskip("torch")
from dynmoe import _torch as dt  # noqa: E402

from test_torch import E, KW, K, T, Z, layer  # noqa: E402,F401  the same layer fixture as test_torch.py


def nan_like(t):
    return torch.full_like(t, float("nan"))


def test_route_out(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    ids = torch.full((T, K), 0x5A5A5A5A, dtype=torch.int32)
    w = torch.full((T, K), float("nan"))
    assert torch.ops.dynmoe.route_out(logits, router.ints, router.floats, bias, mask, ids, w) is None
    rids, rw, _ = ref.route(logits.numpy(), KW, bias.numpy(), mask.numpy())
    np.testing.assert_array_equal(ids.numpy(), rids)
    assert ref.rel_err(w.numpy(), rw) < 1e-5


@pytest.mark.parametrize("own_workspace", [False, True])
def test_moe_and_experts_forward_out(layer, own_workspace):
    router, x, logits, bias, mask, w13, w2 = layer
    e = dynmoe.Experts(w13, w2)
    ws = torch.full((dynmoe.workspace_size(router, e, T),), 0xFF, dtype=torch.uint8) if own_workspace else None
    out = nan_like(x)
    torch.ops.dynmoe.moe_forward_out(x, logits, w13, w2, router.ints, router.floats, "swiglu", bias, mask,
                                     out, ws)
    r = ref.moe(x.numpy(), logits.numpy(), KW, w13.numpy(), w2.numpy(), bias.numpy(), mask.numpy())
    assert ref.rel_err(out.numpy(), r) < 1e-5

    ids, w = dynmoe.route(logits, router, bias=bias, mask_logits=mask)
    out = nan_like(x)
    torch.ops.dynmoe.experts_forward_out(x, ids, w, w13, w2, router.ints, router.floats, "swiglu", out, ws)
    r = ref.experts(x.numpy(), ids.numpy(), w.numpy(), w13.numpy(), w2.numpy(), E, Z, "identity")
    assert ref.rel_err(out.numpy(), r) < 1e-5


def test_cached_workspace_is_reused_and_grows():
    x = torch.empty(4, 8)
    a = dt.cached_workspace(x, 1000)
    assert a.dtype == torch.uint8 and a.numel() >= 1000
    assert dt.cached_workspace(x, 900).data_ptr() == a.data_ptr()  # one per device and thread
    b = dt.cached_workspace(x, a.numel() + 1)
    assert b.numel() >= a.numel() + 1 and b.numel() & (b.numel() - 1) == 0  # next power of two


def test_out_ops_trace_fullgraph(layer):
    router, x, logits, bias, mask, w13, w2 = layer

    @torch.compile(fullgraph=True, backend="eager")
    def f(x, logits):
        out = torch.empty_like(x)
        torch.ops.dynmoe.moe_forward_out(x, logits, w13, w2, router.ints, router.floats, "swiglu", bias, mask,
                                         out, None)
        return out * 2

    got = f(x, logits)
    r = ref.moe(x.numpy(), logits.numpy(), KW, w13.numpy(), w2.numpy(), bias.numpy(), mask.numpy())
    assert ref.rel_err(got.numpy(), 2 * r) < 1e-5


def test_opcheck(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    ids, w = dynmoe.route(logits, router, bias=bias)
    torch.library.opcheck(torch.ops.dynmoe.experts_forward_out.default,
                          (x, ids, w, w13, w2, router.ints, router.floats, "swiglu", torch.empty_like(x), None))
    torch.library.opcheck(torch.ops.dynmoe.moe_forward_out.default,
                          (x, logits, w13, w2, router.ints, router.floats, "swiglu", bias, None,
                           torch.empty_like(x), None))
    torch.library.opcheck(torch.ops.dynmoe.route_out.default,
                          (logits, router.ints, router.floats, bias, None, torch.empty_like(ids),
                           torch.empty_like(w)))
