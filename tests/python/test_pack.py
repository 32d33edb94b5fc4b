"""Pre-packed experts through the Python API (dynmoe.Experts.pack(), issue 17)
on the CPU with numpy: on the "onednn" path (DYNMOE_CPU_ISA=onednn) the packed
experts give the reference's result (fp32 < 1e-5, bf16-free here: numpy has
no bfloat16, fp16 < 1e-2) with outputs poisoned with NaN, and so do the other
paths, which ignore the packing; packing errors raise DynmoeError. Without
oneDNN in the build, pack() raises "unsupported" and the tests skip."""
import os
import zlib

import numpy as np
import pytest

import dynmoe
import reference as ref


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


# scripts/test-python.sh sets it when it runs this file against a library with oneDNN: a
# missing oneDNN then fails instead of skipping.
REQUIRE = os.environ.get("DYNMOE_REQUIRE_ONEDNN") == "1"


def no_onednn(reason):
    (pytest.fail if REQUIRE else pytest.skip)(reason)


def packed_or_skip(experts):
    try:
        return experts.pack()
    except dynmoe.DynmoeError as e:
        if "no oneDNN" in str(e):
            no_onednn(f"this build has no oneDNN: {e}")
        raise


@pytest.fixture
def onednn(monkeypatch):
    monkeypatch.setenv("DYNMOE_CPU_ISA", "onednn")
    if dynmoe.cpu_isa() != "onednn":
        no_onednn(f"this CPU has no onednn path (the build has no oneDNN): {dynmoe.cpu_isa()}")


def layer(rng, E, H, I, act, dtype):
    rows = I if act in ref.NON_GATED else 2 * I
    w13 = (rng.standard_normal((E, rows, H)) / np.sqrt(H)).astype(dtype)
    w2 = (rng.standard_normal((E, H, I)) / np.sqrt(I)).astype(dtype)
    b13 = (rng.standard_normal((E, rows)) * 0.5).astype(dtype)
    b2 = (rng.standard_normal((E, H)) * 0.5).astype(dtype)
    return w13, w2, b13, b2


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("act", ["swiglu", "swiglu_oai", "relu2"])
def test_packed_experts_forward(onednn, act, dtype):
    E, Z, H, I, T, S = 6, 2, 32, 24, 200, 2
    router = dynmoe.Router(num_experts=E, top_k=S, num_zero_experts=Z, zero_kind="identity")
    rng = rng_for(f"pack{act}{dtype}")
    x = rng.standard_normal((T, H)).astype(dtype)
    w13, w2, b13, b2 = layer(rng, E, H, I, act, dtype)
    # experts 0 and 1 hot (the packed path), the others few rows (dynmoe's kernels)
    ids = np.where(rng.random((T, S)) < 0.7, rng.integers(0, 2, (T, S)), rng.integers(-1, E + Z, (T, S)))
    ids = ids.astype(np.int32)
    w = rng.random((T, S)).astype(np.float32)
    gate_up = "interleaved" if act == "swiglu_oai" else "blocked"
    kw = dict(b13=b13, b2=b2, gate_up=gate_up)
    experts = dynmoe.Experts(w13, w2, act=act, **kw)
    packed = packed_or_skip(experts)
    nbytes, path = packed.packed
    assert nbytes > 0 and path.startswith("onednn "), path
    assert experts.packed is None and "packed" in repr(packed)
    r = ref.experts(x, ids, w, w13, w2, E, Z, "identity", act, **kw)
    tol = 1e-5 if dtype == np.float32 else 1e-2
    out = dynmoe.experts_forward(x, ids, w, router, packed, out=np.full((T, H), np.nan, dtype))
    assert ref.rel_err(out, r) < tol
    plain = dynmoe.experts_forward(x, ids, w, router, experts, out=np.full((T, H), np.nan, dtype))
    assert ref.rel_err(out, plain) < tol


def test_packed_moe_forward_and_other_paths(monkeypatch):
    E, H, I, T = 4, 32, 16, 120
    kw = dict(num_experts=E, top_k=2)
    rng = rng_for("packmoe")
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = (rng.standard_normal((T, E)) * 2).astype(np.float32)
    w13, w2, _, _ = layer(rng, E, H, I, "swiglu", np.float32)
    packed = packed_or_skip(dynmoe.Experts(w13, w2))
    r = ref.moe(x, logits, kw, w13, w2)
    for isa in ("onednn", "avx512", "avx2", "scalar"):  # a path the CPU lacks runs its best lower one
        monkeypatch.setenv("DYNMOE_CPU_ISA", isa)
        out = dynmoe.moe_forward(x, logits, dynmoe.Router(**kw), packed, out=np.full((T, H), np.nan, np.float32))
        assert ref.rel_err(out, r) < 1e-5, isa


def test_pack_errors():
    rng = rng_for("packerr")
    w13, w2, _, _ = layer(rng, 4, 32, 32, "swiglu", np.float32)
    packed = packed_or_skip(dynmoe.Experts(w13, w2))
    with pytest.raises(dynmoe.DynmoeError, match="already set"):
        packed.pack()
    # quantized weights keep the unpacked kernels
    q13 = np.zeros((4, 64, 16), np.uint8)
    q2 = np.zeros((4, 32, 16), np.uint8)
    s13 = np.ones((4, 64, 1), np.float16)
    s2 = np.ones((4, 32, 1), np.float16)
    q = dynmoe.Experts(q13, q2, weight_format="int4", w13_scale=s13, w2_scale=s2, group_size=32, dtype="float32")
    with pytest.raises(dynmoe.DynmoeError, match="only PLAIN"):
        q.pack()


def test_packed_mismatch_is_refused(onednn):
    # a packed object passed with other weights (here: a copy) is refused
    E, H, I, T = 4, 32, 16, 40
    rng = rng_for("packmis")
    w13, w2, _, _ = layer(rng, E, H, I, "swiglu", np.float32)
    packed = packed_or_skip(dynmoe.Experts(w13, w2))
    other = dynmoe.Experts(w13.copy(), w2.copy())
    other._packed, other._c = packed._packed, other._c + (packed._packed,)
    x = rng.standard_normal((T, H)).astype(np.float32)
    ids = rng.integers(0, E, (T, 2)).astype(np.int32)
    w = rng.random((T, 2)).astype(np.float32)
    with pytest.raises(dynmoe.DynmoeError, match="w13 or w2 differs"):
        dynmoe.experts_forward(x, ids, w, dynmoe.Router(num_experts=E, top_k=2), other)


def test_dynmoe_pack_env_in_torch_ops(onednn, monkeypatch):
    # DYNMOE_PACK=1: the torch ops (which the vLLM and transformers integrations
    # call) pack CPU experts at their first forward and repack when the weights change
    torch = pytest.importorskip("torch")
    if not dynmoe.torch_ops_registered:
        pytest.skip("torch ops not registered")
    from dynmoe import _torch
    monkeypatch.setenv("DYNMOE_PACK", "1")
    E, H, I, T, S = 4, 32, 16, 96, 2
    rng = rng_for("packenv")
    w13n, w2n, _, _ = layer(rng, E, H, I, "swiglu", np.float32)
    x = torch.from_numpy(rng.standard_normal((T, H)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, E, (T, S)).astype(np.int32))
    w = torch.from_numpy(rng.random((T, S)).astype(np.float32))
    w13, w2 = torch.from_numpy(w13n), torch.from_numpy(w2n)
    router = dynmoe.Router(num_experts=E, top_k=S)
    for step in range(2):
        out = torch.full((T, H), float("nan"))
        torch.ops.dynmoe.experts_forward_out(x, ids, w, w13, w2, router.ints, router.floats, "swiglu", out)
        r = ref.experts(x.numpy(), ids.numpy(), w.numpy(), w13.numpy(), w2.numpy(), E)
        assert ref.rel_err(out.numpy(), r) < 1e-5, step
        if _torch._pack_warned:
            pytest.skip("packing unsupported in this build")
        assert any(v[0]() is w13 for v in _torch._packs.values())
        w13.mul_(0.5)  # in place: the version counter changes, so the next call packs again


def test_transformers_packs_once(onednn, monkeypatch):
    # DYNMOE_PACK=1 in transformers: patch() packs each MoE layer's experts at load time
    # (prepack), forwards pack nothing more; with register() alone the first forward packs
    # and the next ones reuse it. The output is the unpacked one within f32's tolerance, and
    # 64 tokens give the 16 experts (top-4) >= 16 rows: the packed matmuls run.
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models
    import dynmoe.integrations.transformers as dmt
    from dynmoe import _torch

    ids = torch.from_numpy(rng_for("packhf").integers(3, 250, (1, 64)))
    monkeypatch.setenv("DYNMOE_PACK", "0")
    plain = tiny_models.build("qwen3_moe")
    dmt.patch(plain)
    with torch.no_grad():
        want = plain(ids).logits
    monkeypatch.setenv("DYNMOE_PACK", "1")
    model = tiny_models.build("qwen3_moe")
    n0 = _torch.pack_count[0]
    dmt.patch(model)
    if _torch._pack_warned:
        no_onednn(f"packing unsupported: {_torch._pack_warned[0]}")
    assert _torch.pack_count[0] - n0 == 2  # both layers, at load
    for _ in range(2):
        with torch.no_grad():
            got = model(ids).logits
        assert _torch.pack_count[0] - n0 == 2
        assert ref.rel_err(got.numpy(), want.numpy()) < 1e-5
    # register() alone (no load-time hook): the first forward packs, the second reuses it
    lazy = tiny_models.build("qwen3_moe")
    dmt.register()
    lazy.set_experts_implementation("dynmoe")
    n1 = _torch.pack_count[0]
    for step in range(2):
        with torch.no_grad():
            got = lazy(ids).logits
        assert _torch.pack_count[0] - n1 == 2, step
        assert ref.rel_err(got.numpy(), want.numpy()) < 1e-5
