"""Quantized expert weights (issue 16) through the Python API on the CPU:
dynmoe.Experts(weight_format="fp8_block" | "mxfp4" | "int4", ...) against the
float64 reference on the dequantized weights (reference.dequantize, written
from include/dynmoe.h), outputs poisoned with NaN; the reference's decoders
checked against known codes and, with torch, torch's own float8_e4m3fn; and
the argument checks (TypeError/ValueError naming the argument)."""
import zlib

import numpy as np
import pytest

import dynmoe
import reference as ref


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def quantized(rng, fmt, E, N, K, group_size=None, zeros=True):
    """Random codes and scales of an [E, N, K] matrix in fmt: (w, scale, zero)."""
    if fmt == "fp8_block":
        w = rng.integers(0, 256, size=(E, N, K)).astype(np.uint8)
        w[(w & 0x7F) == 0x7F] = 0x30  # no NaN codes
        # small scales: random e4m3 codes reach 448, and f16 outputs must not overflow
        s = (rng.random((E, -(-N // 128), -(-K // 128))) * 0.004 + 0.001).astype(np.float32)
        return w, s, None
    if fmt == "mxfp4":
        w = rng.integers(0, 256, size=(E, N, K // 2)).astype(np.uint8)
        s = rng.integers(118, 126, size=(E, N, K // 32)).astype(np.uint8)  # 2^-9 .. 2^-2
        return w, s, None
    w = rng.integers(0, 256, size=(E, N, -(-K // 2))).astype(np.uint8)
    if K % 2:  # the pad nibble of an odd row is unused: random all the same
        w[..., -1] |= 0xF0
    g = -(-K // group_size)
    s = (rng.random((E, N, g)) * 0.05 + 0.005).astype(np.float16)
    z = rng.integers(0, 16, size=(E, N, g)).astype(np.uint8) if zeros else None
    return w, s, z


CASES = [  # (format, H, I, group_size, zeros, act)
    ("fp8_block", 160, 136, None, False, "swiglu"),  # 128-blocks with partial tails on N and K
    ("fp8_block", 64, 32, None, False, "swiglu_oai"),
    ("mxfp4", 64, 96, None, False, "swiglu_oai"),    # gpt-oss's format
    ("mxfp4", 32, 32, None, False, "relu2"),
    ("int4", 64, 48, 32, True, "swiglu"),
    ("int4", 96, 40, 64, False, "geglu"),            # zero point 8; a group straddles I's tail
    ("int4", 80, 72, 128, True, "silu"),             # one short group per row
    ("int4", 64, 45, 32, True, "swiglu"),            # odd K of w2: rows of ceil(K/2) bytes, a pad nibble
]


@pytest.mark.parametrize("fmt,H,I,g,zeros,act", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_quantized_experts(fmt, H, I, g, zeros, act, dtype):
    E, Z, T, S = 4, 1, 17, 2
    rows = I if act in ref.NON_GATED else 2 * I
    rng = rng_for(f"{fmt}{H}{I}{g}{act}{dtype}")
    w13, s13, z13 = quantized(rng, fmt, E, rows, H, g, zeros)
    w2, s2, z2 = quantized(rng, fmt, E, H, I, g, zeros)
    d13 = ref.dequantize(fmt, w13, s13, H, z13, g)
    d2 = ref.dequantize(fmt, w2, s2, I, z2, g)
    gate_up = "interleaved" if act == "swiglu_oai" else "blocked"
    experts = dynmoe.Experts(w13, w2, act=act, gate_up=gate_up, weight_format=fmt, w13_scale=s13, w2_scale=s2,
                             w13_zero=z13, w2_zero=z2, group_size=g)
    assert (experts.hidden, experts.inter) == (H, I)
    router = dynmoe.Router(num_experts=E, top_k=S, num_zero_experts=Z, zero_kind="identity")
    x = rng.standard_normal((T, H)).astype(dtype)
    ids = rng.integers(-1, E + Z, size=(T, S)).astype(np.int32)
    w = rng.random((T, S)).astype(np.float32)
    out = dynmoe.experts_forward(x, ids, w, router, experts, out=np.full((T, H), np.nan, dtype))
    r = ref.experts(x, ids, w, d13, d2, E, Z, "identity", act, gate_up=gate_up)
    assert np.abs(r).max() < 6e4  # the test's data fit f16
    assert ref.rel_err(out, r) < (1e-5 if dtype == np.float32 else 1e-2)


def test_quantized_with_biases_and_moe_forward():
    E, H, I, T = 4, 64, 64, 11
    rng = rng_for("mxfp4-bias")
    w13, s13, _ = quantized(rng, "mxfp4", E, 2 * I, H)
    w2, s2, _ = quantized(rng, "mxfp4", E, H, I)
    b13 = rng.standard_normal((E, 2 * I)).astype(np.float32)
    b2 = rng.standard_normal((E, H)).astype(np.float32)
    experts = dynmoe.Experts(w13.reshape(E, 2 * I, H // 32, 16), w2, act="swiglu_oai", b13=b13, b2=b2,
                             gate_up="interleaved", weight_format="mxfp4", w13_scale=s13, w2_scale=s2)
    assert experts.w13.shape == (E, 2 * I, H // 2) and experts.dtype == "float32"  # gpt-oss's *_blocks
    kw = dict(num_experts=E, top_k=2)
    x = rng.standard_normal((T, H)).astype(np.float32)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    out = dynmoe.moe_forward(x, logits, dynmoe.Router(**kw), experts, out=np.full((T, H), np.nan, np.float32))
    r = ref.moe(x, logits, kw, ref.dequantize("mxfp4", w13, s13, H), ref.dequantize("mxfp4", w2, s2, I),
                act="swiglu_oai", b13=b13, b2=b2, gate_up="interleaved")
    assert ref.rel_err(out, r) < 1e-5


def test_reference_decoders_known_codes():
    assert ref.e4m3fn(0x38) == 1.0 and ref.e4m3fn(0x7E) == 448.0 and ref.e4m3fn(0xFE) == -448.0
    assert ref.e4m3fn(0x01) == 2.0 ** -9 and ref.e4m3fn(0x08) == 2.0 ** -6 and np.isnan(ref.e4m3fn(0x7F))
    assert [ref.e2m1(n) for n in range(8)] == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert ref.e2m1(0xF) == -6.0 and ref.e2m1(0x9) == -0.5
    # element k in byte k // 2, even k in the low nibble
    np.testing.assert_array_equal(ref._nibbles(np.array([[0x21, 0x43]], np.uint8), 4), [[1, 2, 3, 4]])
    d = ref.dequantize("int4", np.array([[[0x9F]]], np.uint8), np.array([[[0.5]]], np.float16), 2, None, 32)
    np.testing.assert_array_equal(d, [[[3.5, 0.5]]])  # (15 - 8) * .5, (9 - 8) * .5


def test_reference_e4m3fn_against_torch():
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8_e4m3fn")
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    theirs = codes.view(torch.float8_e4m3fn).to(torch.float64).numpy()
    ours = np.array([ref.e4m3fn(c) for c in range(256)])
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(ours[~np.isnan(ours)], theirs[~np.isnan(theirs)])


# ---------------------------------------------------------------- bad input

@pytest.fixture
def fp8():
    rng = rng_for("fp8-bad")
    w13, s13, _ = quantized(rng, "fp8_block", 2, 64, 32)
    w2, s2, _ = quantized(rng, "fp8_block", 2, 32, 32)
    return w13, w2, s13, s2


def test_bad_quantized_arguments(fp8):
    w13, w2, s13, s2 = fp8
    F = dict(weight_format="fp8_block")
    with pytest.raises(ValueError, match=r"needs w13_scale"):
        dynmoe.Experts(w13, w2, w2_scale=s2, **F)
    with pytest.raises(ValueError, match=r"w2_scale must be \[2, 1, 1\] for fp8_block, got shape \(2, 2, 1\)"):
        dynmoe.Experts(w13, w2, w13_scale=s13, w2_scale=np.ones((2, 2, 1), np.float32), **F)
    with pytest.raises(TypeError, match=r"w13_scale must be float32 for fp8_block, got float16"):
        dynmoe.Experts(w13, w2, w13_scale=s13.astype(np.float16), w2_scale=s2, **F)
    with pytest.raises(TypeError, match=r"w13 of weight_format 'fp8_block' must be uint8 bytes, got float32"):
        dynmoe.Experts(w13.astype(np.float32), w2, w13_scale=s13, w2_scale=s2, **F)
    with pytest.raises(ValueError, match=r"zero points\) are only for weight_format 'int4'"):
        dynmoe.Experts(w13, w2, w13_scale=s13, w2_scale=s2, w13_zero=np.zeros((2, 64, 1), np.uint8), **F)
    with pytest.raises(ValueError, match=r"group_size = 64: fp8_block takes 128"):
        dynmoe.Experts(w13, w2, w13_scale=s13, w2_scale=s2, group_size=64, **F)
    with pytest.raises(ValueError, match=r"weight_format is 'plain'"):
        dynmoe.Experts(w13.astype(np.float32), w2.astype(np.float32), w13_scale=s13)
    with pytest.raises(ValueError, match=r"weight_format must be one of"):
        dynmoe.Experts(w13, w2, weight_format="nf4")
    rng = rng_for("int4-bad")
    q13, t13, _ = quantized(rng, "int4", 2, 64, 32, 32)
    q2, t2, _ = quantized(rng, "int4", 2, 32, 32, 32)
    with pytest.raises(ValueError, match=r"needs group_size= \(32, 64 or 128\)"):
        dynmoe.Experts(q13, q2, weight_format="int4", w13_scale=t13, w2_scale=t2)
    with pytest.raises(ValueError, match=r"w13 \(2, 64, 16\) and w2 \(2, 32, 15\) do not fit one layer"):
        dynmoe.Experts(q13, q2[..., :15].copy(), weight_format="int4", w13_scale=t13, w2_scale=t2, group_size=32)
    m13, u13, _ = quantized(rng_for("mx"), "mxfp4", 2, 64, 32)
    with pytest.raises(ValueError, match=r"mxfp4 needs H = 32 and I = 16 to be multiples of 32"):
        dynmoe.Experts(m13[:, :32].copy(), np.zeros((2, 32, 8), np.uint8), weight_format="mxfp4",
                       w13_scale=u13[:, :32].copy(), w2_scale=np.zeros((2, 32, 0), np.uint8))


def test_quantized_x_dtype_must_match(fp8):
    w13, w2, s13, s2 = fp8
    experts = dynmoe.Experts(w13, w2, weight_format="fp8_block", w13_scale=s13, w2_scale=s2,
                             b2=np.zeros((2, 32), np.float16))
    router = dynmoe.Router(num_experts=2, top_k=1)
    x = np.zeros((3, 32), np.float32)
    with pytest.raises(TypeError, match=r"x is \[3, 32\] float32 but the experts take \[T, 32\] float16"):
        dynmoe.moe_forward(x, np.zeros((3, 2), np.float32), router, experts)


def test_torch_float8_weights_are_taken_as_bytes(fp8):
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8_e4m3fn")
    w13, w2, s13, s2 = fp8
    t13, t2 = torch.from_numpy(w13).view(torch.float8_e4m3fn), torch.from_numpy(w2).view(torch.float8_e4m3fn)
    experts = dynmoe.Experts(t13, t2, weight_format="fp8_block", w13_scale=torch.from_numpy(s13),
                             w2_scale=torch.from_numpy(s2))
    assert experts.w13.dtype == torch.uint8 and experts.w13.data_ptr() == t13.data_ptr()  # a view, no copy
    router = dynmoe.Router(num_experts=2, top_k=1)
    x = torch.randn(5, 32)
    logits = torch.randn(5, 2)
    out = dynmoe.moe_forward(x, logits, router, experts)
    r = ref.moe(x.numpy(), logits.numpy(), dict(num_experts=2, top_k=1),
                ref.dequantize("fp8_block", w13, s13, 32), ref.dequantize("fp8_block", w2, s2, 32))
    assert ref.rel_err(out.numpy(), r) < 1e-5
