"""dynmoe's Python API on the CPU with numpy, every function against the
float64 reference in reference.py. Integer outputs match exactly; floats by
relative norm (fp32 < 1e-5, fp16 < 1e-2)."""
import zlib

import numpy as np
import pytest

import dynmoe
import reference as ref

# Router configurations, model-shaped and by stage (small sizes).
ROUTERS = {
    "softmax-topk-selected": dict(num_experts=8, top_k=2),
    "softmax-none": dict(num_experts=16, top_k=4, norm="none"),
    "sigmoid-groups-bias-scale": dict(num_experts=16, top_k=4, score="sigmoid", num_groups=4,
                                      topk_groups=2, scale=2.5),
    "groups-no-bias": dict(num_experts=16, top_k=3, num_groups=4, topk_groups=1),
    "top_p": dict(num_experts=16, top_k=6, select="top_p", top_p=0.5),
    "threshold": dict(num_experts=16, top_k=6, select="threshold", threshold=0.08, norm="kept"),
    "zero-output": dict(num_experts=8, top_k=4, num_zero_experts=4, zero_kind="zero"),
    "identity-bias": dict(num_experts=8, top_k=3, num_zero_experts=4, zero_kind="identity",
                          norm="none", scale=1.5),
    "uniform": dict(num_experts=8, top_k=3, norm="uniform"),
    "score-none": dict(num_experts=8, top_k=2, score="none", norm="none"),
    "one-expert": dict(num_experts=1, top_k=1),
    "k-equals-e+z": dict(num_experts=4, top_k=6, num_zero_experts=2),
}
BIASED = {"sigmoid-groups-bias-scale", "identity-bias"}


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def logits_for(rng, T, n, dtype=np.float32):
    return (rng.standard_normal((T, n)) * 2.0).astype(dtype)


def weights_for(rng, E, H, I, dtype=np.float32):
    w13 = (rng.standard_normal((E, 2 * I, H)) / np.sqrt(H)).astype(dtype)
    w2 = (rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(dtype)
    return w13, w2


@pytest.mark.parametrize("name", sorted(ROUTERS))
@pytest.mark.parametrize("masked", [False, True])
def test_route(name, masked):
    kw = ROUTERS[name]
    router = dynmoe.Router(**kw)
    E, Z = kw["num_experts"], kw.get("num_zero_experts", 0)
    rng = rng_for(name + str(masked))
    T = 37
    logits = logits_for(rng, T, E + Z)
    bias = (rng.standard_normal(E + Z) * 0.3).astype(np.float32) if name in BIASED else None
    mask = logits_for(rng, T, E) if masked else None
    ids, w = dynmoe.route(logits, router, bias=bias, mask_logits=mask)
    assert ids.dtype == np.int32 and w.dtype == np.float32 and ids.shape == (T, router.top_k)
    rids, rw, _ = ref.route(logits, kw, bias, mask)
    np.testing.assert_array_equal(ids, rids)
    assert ref.rel_err(w, rw) < 1e-5


def test_route_fp16_logits():
    kw = ROUTERS["softmax-topk-selected"]
    rng = rng_for("fp16")
    logits = logits_for(rng, 33, 8, np.float16)
    mask = logits_for(rng, 33, 8, np.float16)
    ids, w = dynmoe.route(logits, dynmoe.Router(**kw), mask_logits=mask)
    rids, rw, _ = ref.route(logits, kw, None, mask)
    np.testing.assert_array_equal(ids, rids)
    assert ref.rel_err(w, rw) < 1e-5


def test_route_nonfinite_rows_and_stats():
    kw = dict(num_experts=8, top_k=2)
    rng = rng_for("nonfinite")
    logits = logits_for(rng, 6, 8)
    logits[1, :] = -np.inf
    logits[2, :] = np.nan
    logits[3, 2] = np.nan
    logits[4, 5] = np.inf
    ids, w, st = dynmoe.route(logits, dynmoe.Router(**kw), stats=True)
    rids, rw, bad = ref.route(logits, kw)
    np.testing.assert_array_equal(ids, rids)
    assert ref.rel_err(w, rw) < 1e-5
    assert (ids[1] == -1).all() and (w[2] == 0).all()
    assert set(st) == set(dynmoe.STATS_FIELDS)
    assert st["tokens"] == 6 and st["nonfinite_rows"] == bad == 2


def test_route_given_outputs():
    router = dynmoe.Router(num_experts=8, top_k=2)
    logits = logits_for(rng_for("given"), 5, 8)
    ids = np.full((5, 2), 99, np.int32)
    w = np.full((5, 2), np.nan, np.float32)
    rids, rw = dynmoe.route(logits, router, ids=ids, weights=w)
    assert rids is ids and rw is w
    np.testing.assert_array_equal(ids, ref.route(logits, router.kwargs())[0])


def test_route_tasks():
    kw = dict(num_experts=8, top_k=2, num_zero_experts=2, num_tasks=4, top_tasks=2)
    router = dynmoe.Router(**kw)
    rng = rng_for("tasks")
    T, H = 19, 24
    x = rng.standard_normal((T, H)).astype(np.float32)
    task_logits = rng.standard_normal((T, 4)).astype(np.float32)
    task_weights = rng.standard_normal((4, 10, H)).astype(np.float32)
    ids, w = dynmoe.route_tasks(x, task_logits, task_weights, router)
    assert ids.shape == (T, 4)
    rids, rw = ref.route_tasks(x, task_logits, task_weights, kw)
    np.testing.assert_array_equal(ids, rids)
    assert ref.rel_err(w, rw) < 1e-5


def check_plan(p, ids, E):
    r = ref.plan(ids, E)
    R = int(r["offsets"][-1])
    np.testing.assert_array_equal(p["counts"], r["counts"])
    np.testing.assert_array_equal(p["offsets"], r["offsets"])
    np.testing.assert_array_equal(p["sorted_slots"][:R], r["sorted_slots"])
    assert (p["sorted_slots"][R:] == -1).all()
    np.testing.assert_array_equal(p["slot_rows"], r["slot_rows"])
    assert int(p["num_active"][0]) == r["num_active"]
    np.testing.assert_array_equal(p["active_experts"][: r["num_active"]], r["active_experts"])
    assert (p["active_experts"][r["num_active"]:] == -1).all()


def test_plan_routed():
    router = dynmoe.Router(num_experts=16, top_k=4, num_zero_experts=4)
    logits = logits_for(rng_for("plan"), 41, 20)
    ids, _ = dynmoe.route(logits, router)
    p = dynmoe.plan(ids, router)
    assert set(p) == set(dynmoe.PLAN_KEYS)
    assert all(v.dtype == np.int32 for v in p.values())
    check_plan(p, ids, 16)


def test_plan_caller_table_with_invalid_ids():
    router = dynmoe.Router(num_experts=4, top_k=3, num_zero_experts=1)
    ids = np.array([[0, 0, 3], [-1, 4, 2], [7, -5, 1], [2, 2, 2], [-1, -1, -1]], np.int32)
    p, st = dynmoe.plan(ids, router, stats=True)
    check_plan(p, ids, 4)
    assert st["invalid_ids"] == 2 and st["zero_expert_slots"] == 1 and st["empty_slots"] == 4
    assert st["routed_slots"] == 8 and st["active_experts"] == 4 and st["max_expert_rows"] == 4


def test_plan_hot_expert():
    router = dynmoe.Router(num_experts=8, top_k=2)
    ids = np.zeros((50, 2), np.int32)
    ids[:, 1] = 5
    check_plan(dynmoe.plan(ids, router), ids, 8)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float16, 1e-2)])
@pytest.mark.parametrize("act", ["swiglu", "geglu"])
def test_experts_forward(dtype, tol, act):
    E, Z, H, I, T, S = 6, 2, 32, 24, 29, 3
    kw = dict(num_experts=E, top_k=S, num_zero_experts=Z, zero_kind="identity")
    router = dynmoe.Router(**kw)
    rng = rng_for(f"experts{dtype}{act}")
    x = rng.standard_normal((T, H)).astype(dtype)
    w13, w2 = weights_for(rng, E, H, I, dtype)
    ids = rng.integers(-1, E + Z, size=(T, S)).astype(np.int32)
    ids[0] = [E + Z + 3, -7, 1]  # out of range: skipped
    w = rng.random((T, S)).astype(np.float32)
    out = dynmoe.experts_forward(x, ids, w, router, dynmoe.Experts(w13, w2, act=act))
    assert out.dtype == dtype and out.shape == (T, H)
    r = ref.experts(x, ids, w, w13, w2, E, Z, "identity", act)
    assert ref.rel_err(out, r) < tol


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_moe_forward(name):
    kw = ROUTERS[name]
    router = dynmoe.Router(**kw)
    E, Z = kw["num_experts"], kw.get("num_zero_experts", 0)
    rng = rng_for("moe" + name)
    T, H, I = 23, 32, 16
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = logits_for(rng, T, E + Z)
    bias = (rng.standard_normal(E + Z) * 0.3).astype(np.float32) if name in BIASED else None
    mask = logits_for(rng, T, E)
    w13, w2 = weights_for(rng, E, H, I)
    out = dynmoe.moe_forward(x, logits, router, dynmoe.Experts(w13, w2), bias=bias, mask_logits=mask)
    r = ref.moe(x, logits, kw, w13, w2, bias, mask)
    assert ref.rel_err(out, r) < 1e-5


def test_moe_forward_stats_and_workspace():
    kw = dict(num_experts=8, top_k=3, num_zero_experts=2)
    router = dynmoe.Router(**kw)
    rng = rng_for("stats")
    T, H, I = 17, 16, 8
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = logits_for(rng, T, 10)
    w13, w2 = weights_for(rng, 8, H, I)
    experts = dynmoe.Experts(w13, w2)
    n = dynmoe.workspace_size(router, experts, T)
    assert n > 0 and dynmoe.workspace_size(router, experts, 4 * T) > n
    ws = np.empty(n, np.uint8)
    out = np.empty_like(x)
    res, st = dynmoe.moe_forward(x, logits, router, experts, out=out, workspace=ws, stats=True)
    assert res is out
    assert ref.rel_err(out, ref.moe(x, logits, kw, w13, w2)) < 1e-5
    ids, _, _ = ref.route(logits, kw)
    p = ref.plan(ids, 8)
    assert st["tokens"] == T
    assert st["routed_slots"] == p["offsets"][-1]
    assert st["zero_expert_slots"] == int(((ids >= 8) & (ids < 10)).sum())
    assert st["empty_slots"] == int((ids < 0).sum())
    assert st["active_experts"] == p["num_active"]
    assert st["max_expert_rows"] == p["counts"].max()
    with pytest.raises(dynmoe.DynmoeError) as e:
        dynmoe.moe_forward(x, logits, router, experts, workspace=np.empty(n // 2, np.uint8))
    assert e.value.status_name == "DYNMOE_ERR_WORKSPACE_TOO_SMALL"
    assert "workspace" in str(e.value)


def test_t_zero():
    router = dynmoe.Router(num_experts=4, top_k=2)
    w13, w2 = weights_for(rng_for("t0"), 4, 8, 4)
    experts = dynmoe.Experts(w13, w2)
    x = np.empty((0, 8), np.float32)
    logits = np.empty((0, 4), np.float32)
    ids, w = dynmoe.route(logits, router)
    assert ids.shape == (0, 2) and w.shape == (0, 2)
    p = dynmoe.plan(ids, router)
    assert p["counts"].shape == (4,) and int(p["num_active"][0]) == 0
    assert dynmoe.experts_forward(x, ids, w, router, experts).shape == (0, 8)
    assert dynmoe.moe_forward(x, logits, router, experts).shape == (0, 8)


def test_no_copy_of_weights():
    w13, w2 = weights_for(rng_for("nocopy"), 4, 8, 4)
    experts = dynmoe.Experts(w13, w2)
    assert experts.w13 is w13 and experts.w2 is w2
    assert (experts.num_experts, experts.hidden, experts.inter) == (4, 8, 4)


@pytest.mark.parametrize("name", sorted(dynmoe.presets))
def test_presets(name):
    p = dynmoe.presets[name]
    router = dynmoe.preset_router(name)
    assert p["hidden"] > 0 and p["inter"] > 0
    kw = p["router"]
    E, Z = kw["num_experts"], kw.get("num_zero_experts", 0)
    rng = rng_for("preset" + name)
    T, H, I = 5, 16, 8  # the preset's router on a small layer
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = logits_for(rng, T, E + Z)
    bias = (rng.standard_normal(E + Z) * 0.1).astype(np.float32) if p.get("bias") else None
    w13, w2 = weights_for(rng, E, H, I)
    out = dynmoe.moe_forward(x, logits, router, dynmoe.Experts(w13, w2), bias=bias)
    assert ref.rel_err(out, ref.moe(x, logits, kw, w13, w2, bias)) < 1e-5


def test_router_round_trip():
    r = dynmoe.Router(num_experts=16, top_k=4, score="sigmoid", num_groups=4, topk_groups=2, scale=2.5,
                      num_zero_experts=2, zero_kind="identity", select="top_p", top_p=0.7)
    assert dynmoe.Router.from_lists(r.ints, r.floats) == r
    assert dynmoe.Router(**r.kwargs()) == r
    assert "top_p=0.7" in repr(r)


def test_version():
    assert dynmoe.version() >= 100
    assert isinstance(dynmoe.cuda_available(), bool)
