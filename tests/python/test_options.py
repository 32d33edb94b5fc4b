"""The expert and router options of API 0.2 (issue 15) through the Python API
on the CPU with numpy, against the float64 reference in reference.py:
activations (geglu_tanh, swiglu_oai, relu2, silu), biases b13/b2, the
interleaved gate/up layout, Router(weight_on_input=True) and expert_scale=.
Outputs are poisoned with NaN before each call (out=). fp32 < 1e-5, fp16 < 1e-2.
Bad options raise TypeError/ValueError naming the argument."""
import zlib

import numpy as np
import pytest

import dynmoe
import reference as ref

GATED = ["swiglu", "geglu", "geglu_tanh", "swiglu_oai"]
ACTS = GATED + ["relu2", "silu"]
TOL = {np.float32: 1e-5, np.float16: 1e-2}


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def layer(rng, E, H, I, act, dtype, bias):
    rows = I if act in ref.NON_GATED else 2 * I
    # scale 3: some units pass the clamps of swiglu_oai (the tests use limit 1.5)
    w13 = (rng.standard_normal((E, rows, H)) * 3.0 / np.sqrt(H)).astype(dtype)
    w2 = (rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(dtype)
    b13 = (rng.standard_normal((E, rows)) * 0.5).astype(dtype) if bias else None
    b2 = (rng.standard_normal((E, H)) * 0.5).astype(dtype) if bias else None
    return w13, w2, b13, b2


def nan_out(shape, dtype):
    return np.full(shape, np.nan, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("gate_up", ["blocked", "interleaved"])
@pytest.mark.parametrize("act", ACTS)
def test_experts_forward_options(act, gate_up, bias, dtype):
    if gate_up == "interleaved" and act in ref.NON_GATED:
        pytest.skip("non-gated acts have one row per unit")
    E, Z, H, I, T, S = 6, 2, 32, 24, 29, 3
    router = dynmoe.Router(num_experts=E, top_k=S, num_zero_experts=Z, zero_kind="identity")
    rng = rng_for(f"opt{act}{gate_up}{bias}{dtype}")
    x = rng.standard_normal((T, H)).astype(dtype)
    w13, w2, b13, b2 = layer(rng, E, H, I, act, dtype, bias)
    ids = rng.integers(-1, E + Z, size=(T, S)).astype(np.int32)
    w = rng.random((T, S)).astype(np.float32)
    kw = dict(b13=b13, b2=b2, gate_up=gate_up, alpha=1.3, limit=1.5)
    experts = dynmoe.Experts(w13, w2, act=act, **kw)
    out = dynmoe.experts_forward(x, ids, w, router, experts, out=nan_out((T, H), dtype))
    r = ref.experts(x, ids, w, w13, w2, E, Z, "identity", act, **kw)
    assert ref.rel_err(out, r) < TOL[dtype]


@pytest.mark.parametrize("act", ["swiglu_oai", "relu2"])
def test_moe_forward_options(act):
    # gpt-oss and Nemotron-H shaped blocks: softmax top-k over the selected
    E, H, I, T = 8, 32, 16, 23
    kw = dict(num_experts=E, top_k=2)
    rng = rng_for("moeopt" + act)
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = (rng.standard_normal((T, E)) * 2).astype(np.float32)
    w13, w2, b13, b2 = layer(rng, E, H, I, act, np.float32, True)
    gate_up = "interleaved" if act == "swiglu_oai" else "blocked"
    experts = dynmoe.Experts(w13, w2, act=act, b13=b13, b2=b2, gate_up=gate_up)
    out = dynmoe.moe_forward(x, logits, dynmoe.Router(**kw), experts, out=nan_out((T, H), np.float32))
    r = ref.moe(x, logits, kw, w13, w2, act=act, b13=b13, b2=b2, gate_up=gate_up)
    assert ref.rel_err(out, r) < 1e-5


@pytest.mark.parametrize("slots", [1, 3])
def test_weight_on_input(slots):
    # Llama-4: sigmoid top-1, the weight scales the expert's input; any number of slots
    E, Z, H, I, T = 8, 2, 32, 16, 19
    kw = dict(num_experts=E, top_k=slots, score="sigmoid", norm="none", weight_on_input=True,
              num_zero_experts=Z, zero_kind="identity")
    router = dynmoe.Router(**kw)
    assert router.weight_on_input and dynmoe.Router.from_lists(router.ints, router.floats) == router
    rng = rng_for(f"woi{slots}")
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = (rng.standard_normal((T, E + Z)) * 2).astype(np.float32)
    w13, w2, _, _ = layer(rng, E, H, I, "swiglu", np.float32, False)
    experts = dynmoe.Experts(w13, w2)
    out = dynmoe.moe_forward(x, logits, router, experts, out=nan_out((T, H), np.float32))
    r = ref.moe(x, logits, kw, w13, w2)
    assert ref.rel_err(out, r) < 1e-5
    # Not the same as weighting the output: the test can tell them apart.
    assert ref.rel_err(ref.moe(x, logits, dict(kw, weight_on_input=False), w13, w2), r) > 1e-3
    ids, w = dynmoe.route(logits, router)
    out = dynmoe.experts_forward(x, ids, w, router, experts, out=nan_out((T, H), np.float32))
    assert ref.rel_err(out, ref.experts(x, ids, w, w13, w2, E, Z, "identity", weight_on_input=True)) < 1e-5


def test_expert_scale():
    # Gemma-4: per_expert_scale multiplies the routing weight, after norm, before the routed scale
    E, Z, H, I, T = 8, 2, 32, 16, 21
    kw = dict(num_experts=E, top_k=3, num_zero_experts=Z, zero_kind="identity", scale=1.5)
    router = dynmoe.Router(**kw)
    rng = rng_for("expert_scale")
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = (rng.standard_normal((T, E + Z)) * 2).astype(np.float32)
    es = (rng.random(E + Z) * 2).astype(np.float32)
    ids, w = dynmoe.route(logits, router, expert_scale=es)
    rids, rw, _ = ref.route(logits, kw, expert_scale=es)
    np.testing.assert_array_equal(ids, rids)
    assert ref.rel_err(w, rw) < 1e-5
    assert ref.rel_err(w, ref.route(logits, kw)[1]) > 1e-3
    w13, w2, _, _ = layer(rng, E, H, I, "geglu_tanh", np.float32, False)
    experts = dynmoe.Experts(w13, w2, act="geglu_tanh")
    out = dynmoe.moe_forward(x, logits, router, experts, expert_scale=es, out=nan_out((T, H), np.float32))
    assert ref.rel_err(out, ref.moe(x, logits, kw, w13, w2, act="geglu_tanh", expert_scale=es)) < 1e-5


def test_expert_scale_on_task_routers():
    # CaRE task routers: each task's weights are scaled before the merge (docs/routing.md), so
    # an expert two tasks pick gets the sum of its scaled weights; zero experts are scaled too
    E, Z, H, T = 8, 2, 24, 37
    kw = dict(num_experts=E, top_k=2, num_zero_experts=Z, zero_kind="identity", num_tasks=3, top_tasks=2,
              scale=1.5)
    router = dynmoe.Router(**kw)
    rng = rng_for("expert_scale_tasks")
    x = rng.standard_normal((T, H)).astype(np.float32)
    tl = rng.standard_normal((T, 3)).astype(np.float32)
    tw = rng.standard_normal((3, E + Z, H)).astype(np.float32)
    es = (rng.random(E + Z) * 2).astype(np.float32)
    es[3] = 0.0
    ids, w = dynmoe.route_tasks(x, tl, tw, router, expert_scale=es)
    rids, rw = ref.route_tasks(x, tl, tw, kw, expert_scale=es)
    np.testing.assert_array_equal(ids, rids)
    assert ref.rel_err(w, rw) < 1e-5
    assert ref.rel_err(w, ref.route_tasks(x, tl, tw, kw)[1]) > 1e-3  # the scale reached the router
    merged = [t for t in range(T) if (ids[t] == -1).any()]
    assert merged, "no token whose tasks picked the same expert: the merge is untested"
    # the caller's tables are written in place, as for route
    ids2 = np.full((T, 4), 99, np.int32)
    w2 = np.full((T, 4), np.nan, np.float32)
    dynmoe.route_tasks(x, tl, tw, router, expert_scale=es, ids=ids2, weights=w2)
    np.testing.assert_array_equal(ids2, rids)
    assert ref.rel_err(w2, rw) < 1e-5


def test_bad_expert_scale_on_task_routers():
    E, Z, H, T = 8, 2, 16, 5
    router = dynmoe.Router(num_experts=E, top_k=2, num_zero_experts=Z, num_tasks=2, top_tasks=1)
    x = np.zeros((T, H), np.float32)
    tl = np.zeros((T, 2), np.float32)
    tw = np.zeros((2, E + Z, H), np.float32)
    with pytest.raises(ValueError, match=r"dynmoe.route_tasks: expert_scale has shape \(8,\), expected \[E\+Z\] = \(10,\)"):
        dynmoe.route_tasks(x, tl, tw, router, expert_scale=np.ones(E, np.float32))
    with pytest.raises(TypeError, match=r"dynmoe.route_tasks: expert_scale must be float32"):
        dynmoe.route_tasks(x, tl, tw, router, expert_scale=np.ones(E + Z, np.float16))


def test_workspace_size_of_every_act():
    rng = rng_for("ws")
    router = dynmoe.Router(num_experts=4, top_k=2)
    for act in ACTS:
        w13, w2, b13, b2 = layer(rng, 4, 16, 8, act, np.float32, True)
        assert dynmoe.workspace_size(router, dynmoe.Experts(w13, w2, act=act, b13=b13, b2=b2), 9) > 0


# ---------------------------------------------------------------- bad input

@pytest.fixture
def gated():
    rng = rng_for("bad")
    return layer(rng, 4, 16, 8, "swiglu", np.float32, True)


def test_bad_bias_shape_and_dtype(gated):
    w13, w2, b13, b2 = gated
    with pytest.raises(ValueError, match=r"b13 must be \[4, 16\]"):
        dynmoe.Experts(w13, w2, b13=b13[:, :8].copy())
    with pytest.raises(ValueError, match=r"b2 must be \[4, 16\]"):
        dynmoe.Experts(w13, w2, b2=b2[:3].copy())
    with pytest.raises(TypeError, match=r"b13 must be float32 .* got float16"):
        dynmoe.Experts(w13, w2, b13=b13.astype(np.float16))
    with pytest.raises(ValueError, match=r"b13 must be 2-D"):
        dynmoe.Experts(w13, w2, b13=b13.reshape(-1))
    with pytest.raises(TypeError, match=r"b2 must be a tensor"):
        dynmoe.Experts(w13, w2, b2=[0.0] * 16)


def test_bad_act_options(gated):
    w13, w2, _, _ = gated
    with pytest.raises(ValueError, match=r"limit = 0.0 must be finite and > 0"):
        dynmoe.Experts(w13, w2, act="swiglu_oai", limit=0.0)
    with pytest.raises(ValueError, match=r"limit = -1.0"):
        dynmoe.Experts(w13, w2, act="swiglu_oai", limit=-1)
    with pytest.raises(ValueError, match=r"alpha = inf"):
        dynmoe.Experts(w13, w2, act="swiglu_oai", alpha=float("inf"))
    with pytest.raises(ValueError, match=r"gate_up='interleaved' needs a gated act; 'relu2'"):
        dynmoe.Experts(w13[:, :8].copy(), w2, act="relu2", gate_up="interleaved")
    with pytest.raises(ValueError, match=r"gate_up must be one of"):
        dynmoe.Experts(w13, w2, gate_up="strided")
    with pytest.raises(ValueError, match=r"act must be one of"):
        dynmoe.Experts(w13, w2, act="gelu_new")
    with pytest.raises(TypeError, match=r"weight_on_input must be a bool"):
        dynmoe.Router(num_experts=4, top_k=1, weight_on_input="yes")
    # a non-gated act takes w13 [E, I, H]: the gated shape is w2's mismatch
    with pytest.raises(ValueError, match=r"w2 must be \[E, H, I\] = \(4, 16, 16\)"):
        dynmoe.Experts(w13, w2, act="relu2")


def test_bad_expert_scale(gated):
    w13, w2, _, _ = gated
    router = dynmoe.Router(num_experts=4, top_k=2)
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"expert_scale has shape \(3,\), expected \[E\+Z\]"):
        dynmoe.route(logits, router, expert_scale=np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"expert_scale must be float32, got float16"):
        dynmoe.moe_forward(np.zeros((3, 16), np.float32), logits, router, dynmoe.Experts(w13, w2),
                           expert_scale=np.ones(4, np.float16))


# -------------------------------------------------------------------- torch

def torch_layer(act="swiglu_oai", dtype="float32"):
    torch = pytest.importorskip("torch")
    E, H, I, T = 8, 32, 16, 13
    g = torch.Generator().manual_seed(11)
    rows = I if act in ref.NON_GATED else 2 * I
    dt = getattr(torch, dtype)
    w13 = (torch.randn(E, rows, H, generator=g) * 3 / H ** 0.5).to(dt)
    w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).to(dt)
    b13 = (torch.randn(E, rows, generator=g) * 0.5).to(dt)
    b2 = (torch.randn(E, H, generator=g) * 0.5).to(dt)
    x = torch.randn(T, H, generator=g).to(dt)
    logits = torch.randn(T, E, generator=g) * 2
    es = torch.rand(E, generator=g) * 2
    gate_up = "blocked" if act in ref.NON_GATED else "interleaved"
    experts = dynmoe.Experts(w13, w2, act=act, b13=b13, b2=b2, gate_up=gate_up, alpha=1.3, limit=1.5)
    f64 = (lambda t: t.double().numpy())
    want = ref.moe(f64(x), logits.numpy(), dict(num_experts=E, top_k=2), f64(w13), f64(w2), act=act,
                   expert_scale=es.numpy(), b13=f64(b13), b2=f64(b2), gate_up=gate_up, alpha=1.3, limit=1.5)
    return torch, dynmoe.Router(num_experts=E, top_k=2), experts, x, logits, es, want


@pytest.mark.parametrize("act,dtype,tol", [("swiglu_oai", "float32", 1e-5), ("relu2", "float32", 1e-5),
                                           ("swiglu_oai", "bfloat16", 1e-2), ("geglu_tanh", "bfloat16", 1e-2)])
def test_torch_options_eager_compiled_and_ops(act, dtype, tol):
    torch, router, experts, x, logits, es, want = torch_layer(act, dtype)
    got = dynmoe.moe_forward(x, logits, router, experts, expert_scale=es)
    assert got.dtype == x.dtype and ref.rel_err(got.float().numpy(), want) < tol

    @torch.compile(fullgraph=True)
    def layer(x, logits):
        ids, w = dynmoe.route(logits, router, expert_scale=es)
        return dynmoe.experts_forward(x, ids, w, router, experts)

    assert ref.rel_err(layer(x, logits).float().numpy(), want) < tol
    out = torch.full_like(x, float("nan"))
    torch.ops.dynmoe.moe_forward_out(x, logits, experts.w13, experts.w2, router.ints, router.floats, experts.act,
                                     None, None, out, None, es, *experts.tensors, experts.ints, experts.floats)
    assert ref.rel_err(out.float().numpy(), want) < tol


def test_torch_options_opcheck_and_fake():
    torch, router, experts, x, logits, es, _ = torch_layer()
    ri, rf = router.ints, router.floats
    ids, w = dynmoe.route(logits, router, expert_scale=es)
    tail = (*experts.tensors, experts.ints, experts.floats)
    cases = [
        (torch.ops.dynmoe.moe_forward.default, (x, logits, experts.w13, experts.w2, ri, rf, experts.act, None, None,
                                                es, *tail)),
        (torch.ops.dynmoe.experts_forward.default, (x, ids, w, experts.w13, experts.w2, ri, rf, experts.act, *tail)),
        (torch.ops.dynmoe.route.default, (logits, ri, rf, None, None, es)),
        (torch.ops.dynmoe.experts_forward_out.default, (x, ids, w, experts.w13, experts.w2, ri, rf, experts.act,
                                                        torch.empty_like(x), None, *tail)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    woi = dynmoe.Router(num_experts=8, top_k=1, score="sigmoid", norm="none", weight_on_input=True)
    assert woi.ints[-1] == 1 and dynmoe._torch._router(woi.ints, woi.floats).weight_on_input
