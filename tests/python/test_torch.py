"""torch.ops.dynmoe.* on the CPU: against the float64 reference, under
torch.compile, the fake implementations' shapes (FakeTensorMode and
torch.library.opcheck), and torch-specific bad inputs. Skipped when torch is
not installed; test_import_without_torch runs either way."""
import numpy as np
import pytest

import dynmoe
import reference as ref

torch = pytest.importorskip("torch")

E, Z, K, H, I, T = 8, 2, 3, 32, 16, 13
KW = dict(num_experts=E, top_k=K, num_zero_experts=Z, zero_kind="identity", norm="selected", scale=1.5)


@pytest.fixture
def layer():
    g = torch.Generator().manual_seed(3)
    router = dynmoe.Router(**KW)
    x = torch.randn(T, H, generator=g)
    logits = torch.randn(T, E + Z, generator=g) * 2
    bias = torch.randn(E + Z, generator=g) * 0.2
    mask = torch.randn(T, E, generator=g)
    w13 = torch.randn(E, 2 * I, H, generator=g) / H**0.5
    w2 = torch.randn(E, H, I, generator=g) / I**0.5
    return router, x, logits, bias, mask, w13, w2


def test_registered():
    assert dynmoe.torch_ops_registered
    for name in ("route", "route_tasks", "plan", "experts_forward", "moe_forward"):
        assert hasattr(torch.ops.dynmoe, name)


def test_moe_forward_matches_reference(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    out = torch.ops.dynmoe.moe_forward(x, logits, w13, w2, router.ints, router.floats, "swiglu", bias, mask)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (T, H)
    r = ref.moe(x.numpy(), logits.numpy(), KW, w13.numpy(), w2.numpy(), bias.numpy(), mask.numpy())
    assert ref.rel_err(out.numpy(), r) < 1e-5
    # The public function with torch tensors is the same op.
    out2 = dynmoe.moe_forward(x, logits, router, dynmoe.Experts(w13, w2), bias=bias, mask_logits=mask)
    assert torch.equal(out, out2)


def test_route_plan_experts_match_reference(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    ids, w = torch.ops.dynmoe.route(logits, router.ints, router.floats, bias, mask)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    rids, rw, _ = ref.route(logits.numpy(), KW, bias.numpy(), mask.numpy())
    np.testing.assert_array_equal(ids.numpy(), rids)
    assert ref.rel_err(w.numpy(), rw) < 1e-5

    p = dynmoe.plan(ids, router)
    rp = ref.plan(rids, E)
    np.testing.assert_array_equal(p["counts"].numpy(), rp["counts"])
    np.testing.assert_array_equal(p["offsets"].numpy(), rp["offsets"])
    np.testing.assert_array_equal(p["slot_rows"].numpy(), rp["slot_rows"])
    R = int(rp["offsets"][-1])
    np.testing.assert_array_equal(p["sorted_slots"][:R].numpy(), rp["sorted_slots"])

    out = torch.ops.dynmoe.experts_forward(x, ids, w, w13, w2, router.ints, router.floats, "swiglu")
    r = ref.experts(x.numpy(), rids, w.numpy(), w13.numpy(), w2.numpy(), E, Z, "identity")
    assert ref.rel_err(out.numpy(), r) < 1e-5


def test_route_tasks_matches_reference():
    kw = dict(num_experts=8, top_k=2, num_tasks=3, top_tasks=2)
    router = dynmoe.Router(**kw)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 16, generator=g)
    tl = torch.randn(9, 3, generator=g)
    tw = torch.randn(3, 8, 16, generator=g)
    ids, w = dynmoe.route_tasks(x, tl, tw, router)
    rids, rw = ref.route_tasks(x.numpy(), tl.numpy(), tw.numpy(), kw)
    np.testing.assert_array_equal(ids.numpy(), rids)
    assert ref.rel_err(w.numpy(), rw) < 1e-5


def test_route_tasks_expert_scale_op():
    # the torch op and the public API under torch.compile take expert_scale as route's does
    kw = dict(num_experts=8, top_k=2, num_tasks=3, top_tasks=2, scale=2.0)
    router = dynmoe.Router(**kw)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(11, 16, generator=g)
    tl = torch.randn(11, 3, generator=g)
    tw = torch.randn(3, 8, 16, generator=g)
    es = torch.rand(8, generator=g) * 2
    rids, rw = ref.route_tasks(x.numpy(), tl.numpy(), tw.numpy(), kw, expert_scale=es.numpy())
    ids, w = torch.ops.dynmoe.route_tasks(x, tl, tw, router.ints, router.floats, None, es)
    np.testing.assert_array_equal(ids.numpy(), rids)
    assert ref.rel_err(w.numpy(), rw) < 1e-5
    f = torch.compile(lambda x, tl, tw, es: dynmoe.route_tasks(x, tl, tw, router, expert_scale=es), fullgraph=True)
    ids, w = f(x, tl, tw, es)
    np.testing.assert_array_equal(ids.numpy(), rids)
    assert ref.rel_err(w.numpy(), rw) < 1e-5
    with pytest.raises(ValueError, match=r"expert_scale has shape \(7,\)"):
        torch.ops.dynmoe.route_tasks(x, tl, tw, router.ints, router.floats, None, es[:7].contiguous())


def test_bf16(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    xb, w13b, w2b = x.bfloat16(), w13.bfloat16(), w2.bfloat16()
    out = dynmoe.moe_forward(xb, logits, router, dynmoe.Experts(w13b, w2b), bias=bias)
    assert out.dtype == torch.bfloat16
    r = ref.moe(xb.float().numpy(), logits.numpy(), KW, w13b.float().numpy(), w2b.float().numpy(), bias.numpy())
    assert ref.rel_err(out.float().numpy(), r) < 1e-2
    # bf16 logits and mask go through route too.
    ids, _ = dynmoe.route(logits.bfloat16(), router, bias=bias, mask_logits=mask.bfloat16())
    rids, _, _ = ref.route(logits.bfloat16().float().numpy(), KW, bias.numpy(), mask.bfloat16().float().numpy())
    np.testing.assert_array_equal(ids.numpy(), rids)


def test_torch_compile(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    experts = dynmoe.Experts(w13, w2)
    eager = dynmoe.moe_forward(x, logits, router, experts, bias=bias, mask_logits=mask)

    @torch.compile(fullgraph=True)
    def layer_op(x, logits, mask):
        y = torch.ops.dynmoe.moe_forward(x * 1.0, logits, w13, w2, router.ints, router.floats, "swiglu", bias, mask)
        return y + 0.0

    @torch.compile(fullgraph=True)
    def layer_api(x, logits):
        ids, w = dynmoe.route(logits, router, bias=bias, mask_logits=mask)
        return dynmoe.experts_forward(x, ids, w, router, experts)

    assert torch.equal(layer_op(x, logits, mask), eager)
    assert torch.equal(layer_api(x, logits), eager)
    # A new T goes through the same compiled code (dynamic shapes).
    x2, l2, m2 = x[:7].clone(), logits[:7].clone(), mask[:7].clone()
    assert torch.equal(layer_op(x2, l2, m2), dynmoe.moe_forward(x2, l2, router, experts, bias=bias, mask_logits=m2))


def test_fake_shapes(layer):
    from torch._subclasses.fake_tensor import FakeTensorMode

    router, x, logits, bias, mask, w13, w2 = layer
    ri, rf = router.ints, router.floats
    with FakeTensorMode() as mode:
        fx, fl, fb, fm = (mode.from_tensor(t) for t in (x, logits, bias, mask))
        f13, f2 = mode.from_tensor(w13), mode.from_tensor(w2)
        out = torch.ops.dynmoe.moe_forward(fx, fl, f13, f2, ri, rf, "swiglu", fb, fm)
        assert out.shape == (T, H) and out.dtype == torch.float32
        ids, w = torch.ops.dynmoe.route(fl, ri, rf, fb, fm)
        assert ids.shape == (T, K) and ids.dtype == torch.int32 and w.dtype == torch.float32
        p = torch.ops.dynmoe.plan(ids, ri, rf)
        assert [tuple(t.shape) for t in p] == [(E,), (E + 1,), (T * K,), (T * K,), (E,), (1,)]
        y = torch.ops.dynmoe.experts_forward(fx.bfloat16(), ids, w, f13.bfloat16(), f2.bfloat16(), ri, rf, "swiglu")
        assert y.shape == (T, H) and y.dtype == torch.bfloat16
        tr = dynmoe.Router(num_experts=E, top_k=K, num_zero_experts=Z, num_tasks=3, top_tasks=2)
        ti, tw = torch.ops.dynmoe.route_tasks(fx, mode.from_tensor(torch.zeros(T, 3)),
                                              mode.from_tensor(torch.zeros(3, E + Z, H)), tr.ints, tr.floats)
        assert ti.shape == (T, 2 * K) and tw.shape == (T, 2 * K)


def test_opcheck(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    ri, rf = router.ints, router.floats
    ids, w = torch.ops.dynmoe.route(logits, ri, rf, bias, mask)
    tr = dynmoe.Router(num_experts=E, top_k=K, num_zero_experts=Z, num_tasks=3, top_tasks=2)
    cases = [
        (torch.ops.dynmoe.moe_forward.default, (x, logits, w13, w2, ri, rf, "swiglu", bias, mask)),
        (torch.ops.dynmoe.route.default, (logits, ri, rf, bias, None)),
        (torch.ops.dynmoe.plan.default, (ids, ri, rf)),
        (torch.ops.dynmoe.experts_forward.default, (x, ids, w, w13, w2, ri, rf, "geglu")),
        (torch.ops.dynmoe.route_tasks.default, (x, torch.randn(T, 3), torch.randn(3, E + Z, H), tr.ints,
                                                tr.floats, None)),
    ]
    for op, args in cases:
        # test_autograd_registration needs no grad inputs; the rest check schema and fake impls.
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_torch_bad_inputs(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    experts = dynmoe.Experts(w13, w2)
    with pytest.raises(ValueError, match=r"x must be contiguous.*\.contiguous\(\)"):
        dynmoe.moe_forward(x.t().contiguous().t(), logits, router, experts)
    with pytest.raises(TypeError, match=r"logits must be float32 or float16 or bfloat16, got float64"):
        dynmoe.route(logits.double(), router)
    with pytest.raises(TypeError, match=r"x is \[13, 32\] bfloat16 but the experts take \[T, 32\] float32"):
        dynmoe.moe_forward(x.bfloat16(), logits, router, experts)
    with pytest.raises(ValueError, match=r"logits has shape \(12, 10\)"):
        dynmoe.moe_forward(x, logits[:12], router, experts)


def test_torch_stats_and_workspace(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    experts = dynmoe.Experts(w13, w2)
    ws = torch.empty(dynmoe.workspace_size(router, experts, T), dtype=torch.uint8)
    out, st = dynmoe.moe_forward(x, logits, router, experts, bias=bias, workspace=ws, stats=True)
    assert isinstance(out, torch.Tensor) and st["tokens"] == T
    assert torch.equal(out, dynmoe.moe_forward(x, logits, router, experts, bias=bias))


def test_parameters_requiring_grad(layer):
    # nn.Parameter weights (requires_grad=True) are read as they are, without a copy.
    router, x, logits, bias, mask, w13, w2 = layer
    p13, p2 = torch.nn.Parameter(w13.clone()), torch.nn.Parameter(w2.clone())
    want = dynmoe.moe_forward(x, logits, router, dynmoe.Experts(w13, w2))
    got = dynmoe.moe_forward(x.requires_grad_(), logits, router, dynmoe.Experts(p13, p2))
    assert torch.equal(got.detach(), want)
    got = torch.ops.dynmoe.moe_forward(x, logits, p13, p2, router.ints, router.floats, "swiglu", None, None)
    assert torch.equal(got.detach(), want)


def test_plan_tails(layer):
    router, x, logits, bias, mask, w13, w2 = layer
    ids = torch.full((T, K), E, dtype=torch.int32)  # only zero experts: no rows
    ids[0, 0] = 3
    for p in (dynmoe.plan(ids, router), dict(zip(dynmoe.PLAN_KEYS, torch.ops.dynmoe.plan(ids, router.ints,
                                                                                          router.floats)))):
        assert p["offsets"][-1].item() == 1 and p["sorted_slots"][0].item() == 0
        assert (p["sorted_slots"][1:] == -1).all()
        assert p["num_active"].item() == 1 and p["active_experts"][0].item() == 3
        assert (p["active_experts"][1:] == -1).all()
