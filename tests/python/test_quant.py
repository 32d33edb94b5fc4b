"""dynmoe.quant: the AWQ / GPTQ converters against transcriptions of the real
packing code, the fp8-block and gpt-oss MXFP4 layouts against transformers'
own dequantization, and the dequantize() edge cases.

Where each packing order comes from (the code read, not a description of it):
  * AWQ: AutoAWQ, awq/modules/linear/gemm.py WQLinear_GEMM.from_linear and
    awq/utils/packing_utils.py (AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7],
    AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]): intweight [K, N] packed
    along N, `qweight[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)`,
    the zeros [K/g, N] the same way, no offset.
  * GPTQ: AutoGPTQ, auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py
    QuantLinear.pack: intweight [K, N] packed along K sequentially,
    `qweight[row] |= intweight[j] << (4 * (j - i))`; `zeros -= 1` and then
    packed along N sequentially (`qzeros[:, col] |= zeros[:, j] << ...`); its
    forward reads `zeros + 1` and `scales[g_idx]`. act-order: g_idx[k] is the
    group of input channel k (GPTQ's desc_act assigns groups in the order of
    a permutation of K).
The two packers below are transcriptions of those loops, kept separate from
dynmoe/quant.py's vectorised unpacking, which they check.
"""
import importlib.util

import pytest

torch = pytest.importorskip("torch")
quant = pytest.importorskip("dynmoe.quant")


# ---------------------------------------------------------------------------
# independent packers (transcribed loops, see the module docstring)
# ---------------------------------------------------------------------------

def awq_pack(intweight, zeros):
    """AutoAWQ WQLinear_GEMM.from_linear's loops: intweight [K, N], zeros [G, N]."""
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    k, n = intweight.shape
    qweight = torch.zeros(k, n // 8, dtype=torch.int32)
    for col in range(n // 8):
        for i in range(8):
            qweight[:, col] |= intweight[:, col * 8 + order_map[i]].to(torch.int32) << (i * 4)
    qzeros = torch.zeros(zeros.shape[0], n // 8, dtype=torch.int32)
    for col in range(n // 8):
        for i in range(8):
            qzeros[:, col] |= zeros[:, col * 8 + order_map[i]].to(torch.int32) << (i * 4)
    return qweight, qzeros


def gptq_pack(intweight, zeros, v1=True):
    """AutoGPTQ QuantLinear.pack's loops (4 bits), with numpy uint32 as there:
    intweight [K, N], zeros [G, N] (v1 stores zeros - 1)."""
    np = pytest.importorskip("numpy")
    iw = intweight.numpy().astype(np.uint32)
    qweight = np.zeros((iw.shape[0] // 32 * 4, iw.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        for j in range(i, i + 8):
            qweight[row] |= iw[j] << (4 * (j - i))
        i += 8
        row += 1
    z = zeros.numpy().astype(np.int64)
    if v1:
        z = z - 1
    z = z.astype(np.uint32)
    qzeros = np.zeros((z.shape[0], z.shape[1] // 32 * 4), dtype=np.uint32)
    i = col = 0
    while col < qzeros.shape[1]:
        for j in range(i, i + 8):
            qzeros[:, col] |= z[:, j] << (4 * (j - i))
        i += 8
        col += 1
    return torch.from_numpy(qweight.astype(np.int32)), torch.from_numpy(qzeros.astype(np.int32))


def gen(seed):
    g = torch.Generator().manual_seed(seed)
    return g


def rand_int4(shape, g, lo=0):
    return torch.randint(lo, 16, shape, generator=g, dtype=torch.int64)


def rand_scales(shape, g):
    return (torch.rand(shape, generator=g, dtype=torch.float32) * 0.02 + 0.001).to(torch.float16)


# ---------------------------------------------------------------------------
# AWQ
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("k,n,group", [(256, 64, 128), (128, 32, 32), (192, 16, 64)])
def test_awq_order_matches_autoawq_packing(k, n, group):
    g = gen(k + n)
    q = rand_int4((k, n), g)
    z = rand_int4((k // group, n), g)
    s = rand_scales((k // group, n), g)
    qweight, qzeros = awq_pack(q, z)
    out = quant.from_awq(qweight, qzeros, s, group)
    assert out.fmt == "int4" and out.q.shape == (n, k // 2) and out.q.dtype == torch.uint8
    assert out.scale.shape == (n, k // group) and out.scale.dtype == torch.float16
    assert out.zero.shape == (n, k // group) and out.zero.dtype == torch.uint8
    gi = torch.arange(k) // group
    want = (q - z[gi]).double() * s[gi].double()            # [K, N], the AWQ formula
    got = quant.dequantize(out, dtype=torch.float64)          # [N, K]
    torch.testing.assert_close(got, want.T, rtol=0, atol=0)
    # the nibbles themselves: row n of dynmoe's int4 is column n of intweight
    assert torch.equal(quant.unpack_nibbles(out.q).long(), q.T)
    assert torch.equal(out.zero.long(), z.T)


def test_awq_sequential_order_would_be_caught():
    """The test above can fail: packing in plain sequential order (GPTQ's
    within-word order) gives different columns."""
    g = gen(7)
    q = rand_int4((64, 16), g)
    z = rand_int4((2, 16), g)
    s = rand_scales((2, 16), g)
    seq_w = torch.zeros(64, 2, dtype=torch.int32)
    seq_z = torch.zeros(2, 2, dtype=torch.int32)
    for col in range(2):
        for i in range(8):
            seq_w[:, col] |= q[:, col * 8 + i].to(torch.int32) << (4 * i)
            seq_z[:, col] |= z[:, col * 8 + i].to(torch.int32) << (4 * i)
    out = quant.from_awq(seq_w, seq_z, s, 32)
    assert not torch.equal(quant.unpack_nibbles(out.q).long(), q.T)


def test_awq_stacked_experts():
    g = gen(3)
    E, k, n, group = 3, 128, 32, 64
    qs, zs, ss, packed_w, packed_z = [], [], [], [], []
    for _ in range(E):
        q, z, s = rand_int4((k, n), g), rand_int4((k // group, n), g), rand_scales((k // group, n), g)
        qw, qz = awq_pack(q, z)
        qs.append(q), zs.append(z), ss.append(s), packed_w.append(qw), packed_z.append(qz)
    out = quant.from_awq(torch.stack(packed_w), torch.stack(packed_z), torch.stack(ss), group)
    assert out.q.shape == (E, n, k // 2)
    for e in range(E):
        one = quant.from_awq(packed_w[e], packed_z[e], ss[e], group)
        assert torch.equal(out.q[e], one.q) and torch.equal(out.zero[e], one.zero) and torch.equal(out.scale[e], one.scale)


def test_awq_round_trip_from_float_weights():
    """float W -> asymmetric group quantization (AWQ's, test-side) -> AWQ
    tensors -> dynmoe int4 -> dequantize: within half a step of W."""
    g = gen(11)
    k, n, group = 256, 48, 128
    w = torch.randn(n, k, generator=g, dtype=torch.float64)       # [out, in]
    wg = w.reshape(n, k // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    s = ((hi - lo) / 15).to(torch.float16)
    z = torch.round(-lo / s.double()).clamp(0, 15)
    q = torch.clamp(torch.round(wg / s.double()[..., None]) + z[..., None], 0, 15).reshape(n, k).long()
    qweight, qzeros = awq_pack(q.T.contiguous(), z.T.long().contiguous())
    out = quant.from_awq(qweight, qzeros, s.T.contiguous(), group)
    got = quant.dequantize(out, dtype=torch.float64)
    step = s.double().repeat_interleave(group, -1)
    assert bool(((got - w).abs() <= step * 0.5 + 1e-3).all())


def test_awq_bad_input():
    g = gen(1)
    qw, qz = awq_pack(rand_int4((64, 16), g), rand_int4((2, 16), g))
    s = rand_scales((2, 16), g)
    with pytest.raises(ValueError, match="group_size"):
        quant.from_awq(qw, qz, s, 48)
    with pytest.raises(ValueError, match="qzeros"):
        quant.from_awq(qw, qz[:1], s, 32)
    with pytest.raises(ValueError, match="scales"):
        quant.from_awq(qw, qz, s[:, :8], 32)
    with pytest.raises(ValueError, match="int32"):
        quant.from_awq(qw.to(torch.int64), qz, s, 32)
    with pytest.raises(ValueError, match="overflow"):
        quant.from_awq(qw, qz, torch.full((2, 16), 1e6, dtype=torch.float32), 32)


# ---------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------

def gptq_expected(q, z, s, g_idx):
    """AutoGPTQ's forward: scales[g_idx] * (q - zeros[g_idx]), [K, N]."""
    return s.double()[g_idx] * (q - z[g_idx]).double()


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_sequential_order_matches_autogptq_packing(fmt):
    g = gen(5)
    k, n, group = 256, 32, 64
    q = rand_int4((k, n), g)
    z = rand_int4((k // group, n), g, lo=1 if fmt == "gptq" else 0)  # v1 cannot hold a zero of 0
    s = rand_scales((k // group, n), g)
    qweight, qzeros = gptq_pack(q, z, v1=fmt == "gptq")
    g_idx = torch.arange(k, dtype=torch.int32) // group
    out = quant.from_gptq(qweight, qzeros, s, g_idx, group, checkpoint_format=fmt)
    assert out.perm is None
    torch.testing.assert_close(quant.dequantize(out, dtype=torch.float64), gptq_expected(q, z, s, g_idx.long()).T,
                               rtol=0, atol=0)
    assert torch.equal(out.zero.long(), z.T)
    # reading the v1 tensors as v2 is off by one zero: the format argument matters
    other = quant.from_gptq(qweight, qzeros, s, g_idx, group,
                            checkpoint_format="gptq_v2" if fmt == "gptq" else "gptq") \
        if fmt == "gptq" or bool((z < 15).all()) else None
    if other is not None:
        assert not torch.equal(other.zero, out.zero)


def test_gptq_v1_zero_of_zero_is_refused():
    g = gen(6)
    q = rand_int4((64, 32), g)            # AutoGPTQ's pack needs K and N in multiples of 32
    z = rand_int4((2, 32), g, lo=1)
    z[1, 3] = 0
    qweight, qzeros = gptq_pack(q, z, v1=True)
    with pytest.raises(ValueError, match="16"):
        quant.from_gptq(qweight, qzeros, rand_scales((2, 32), g), None, 32)


@pytest.mark.parametrize("stacked", [False, True])
def test_gptq_act_order(stacked):
    """desc_act: g_idx follows a random permutation of K. dynmoe's int4 keeps
    groups contiguous, so K is sorted by group and the permutation returned;
    W' x[perm] == W x, and W'[:, j] == W[:, perm[j]]."""
    g = gen(9)
    E = 2 if stacked else 1
    k, n, group = 192, 32, 64
    packed, refs, gidx = [], [], []
    for _ in range(E):
        q, z, s = rand_int4((k, n), g), rand_int4((k // group, n), g, lo=1), rand_scales((k // group, n), g)
        order = torch.randperm(k, generator=g)          # GPTQ's processing order of the columns
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[order] = (torch.arange(k) // group).to(torch.int32)
        qw, qz = gptq_pack(q, z)
        packed.append((qw, qz, s)), refs.append(gptq_expected(q, z, s, g_idx.long()).T), gidx.append(g_idx)
    if stacked:
        args = [torch.stack([p[i] for p in packed]) for i in range(3)] + [torch.stack(gidx)]
    else:
        args = list(packed[0]) + [gidx[0]]
    out = quant.from_gptq(*args, group)
    perm = out.perm if stacked else out.perm[None]
    w = quant.dequantize(out, dtype=torch.float64).reshape(E, n, k)
    x = torch.randn(k, generator=g, dtype=torch.float64)
    for e in range(E):
        assert torch.equal(w[e], refs[e][:, perm[e]])
        torch.testing.assert_close(w[e] @ x[perm[e]], refs[e] @ x)
        # groups are contiguous after the sort: each 64-column block shares one g_idx
        assert bool((gidx[e].long()[perm[e]].reshape(-1, group) == torch.arange(k // group)[:, None]).all())
    if stacked:
        with pytest.raises(ValueError, match="differently"):
            quant.shared_perm(out.perm)


def test_gptq_ragged_last_group():
    """K = 96 with groups of 64: 2 groups, the last holds 32 channels
    (AutoGPTQ's pack needs K in multiples of 32)."""
    g = gen(10)
    k, n, group = 96, 32, 64
    q, z, s = rand_int4((k, n), g), rand_int4((2, n), g, lo=1), rand_scales((2, n), g)
    qw, qz = gptq_pack(q, z)
    g_idx = torch.arange(k, dtype=torch.int32) // group
    out = quant.from_gptq(qw, qz, s, g_idx, group)
    assert out.scale.shape == (n, 2)
    torch.testing.assert_close(quant.dequantize(out, dtype=torch.float64), gptq_expected(q, z, s, g_idx.long()).T,
                               rtol=0, atol=0)
    bad = g_idx.clone()
    bad[0] = 1                        # group 1 would hold 33 channels
    with pytest.raises(ValueError, match="g_idx"):
        quant.from_gptq(qw, qz, s, bad, group)


def test_permute_rows_folds_w2_act_order_into_w13():
    """A SwiGLU expert whose w2 is act-ordered: w13's gate and up rows
    permuted by w2's perm give the same FFN output, for both gate/up layouts."""
    g = gen(12)
    H, I, group = 64, 96, 32
    x = torch.randn(H, generator=g, dtype=torch.float64)
    for layout in ("blocked", "interleaved"):
        w13q = rand_int4((2 * I, H), g)
        w13 = quant.Quantized("int4", quant.pack_nibbles(w13q), rand_scales((2 * I, H // group), g),
                              rand_int4((2 * I, H // group), g).to(torch.uint8), group, H)
        b13 = torch.randn(2 * I, generator=g, dtype=torch.float64)
        # w2 [H, I] through GPTQ with act-order
        q2, z2, s2 = rand_int4((I, H), g), rand_int4((I // group, H), g, lo=1), rand_scales((I // group, H), g)
        order = torch.randperm(I, generator=g)
        g_idx = torch.empty(I, dtype=torch.int32)
        g_idx[order] = (torch.arange(I) // group).to(torch.int32)
        qw, qz = gptq_pack(q2, z2)
        w2 = quant.from_gptq(qw, qz, s2, g_idx, group)
        w2_ref = gptq_expected(q2, z2, s2, g_idx.long()).T            # [H, I]

        def ffn(w13m, b, w2m):
            h = w13m @ x + b
            gate, up = (h[:I], h[I:]) if layout == "blocked" else (h[0::2], h[1::2])
            return w2m @ (torch.nn.functional.silu(gate) * up)

        want = ffn(quant.dequantize(w13, dtype=torch.float64), b13, w2_ref)
        w13p, b13p = quant.permute_rows(w13, w2.perm, layout, b13)
        got = ffn(quant.dequantize(w13p, dtype=torch.float64), b13p, quant.dequantize(w2, dtype=torch.float64))
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------
# fp8 block
# ---------------------------------------------------------------------------

def test_fp8_table_matches_torch_float8():
    codes = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    mine = quant.dequantize("fp8_block", codes.reshape(1, 256), torch.ones(1, 2), dtype=torch.float64)[0]
    theirs = codes.view(torch.float8_e4m3fn).to(torch.float64)
    nan = torch.isnan(theirs)
    assert torch.equal(torch.isnan(mine), nan) and int(nan.sum()) == 2      # 0x7f and 0xff
    assert torch.equal(mine[~nan], theirs[~nan])


def test_fp8_block_ragged_and_edge_scales():
    g = gen(13)
    n, k = 200, 300                                   # both tails partial: 2 x 3 blocks
    w = (torch.randn(n, k, generator=g) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(2, 3, generator=g) + 0.5
    s[0, 1] = 0.0
    s[1, 2] = float("nan")
    out = quant.from_fp8_block(w, s)
    assert out.q.dtype == torch.uint8 and out.q.shape == (n, k) and out.scale.dtype == torch.float32
    got = quant.dequantize(out, dtype=torch.float64)
    ref = w.to(torch.float64) * s.double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    assert bool((got[:128, 128:256] == 0).all())                 # scale 0: zero weights
    assert bool(torch.isnan(got[128:, 256:]).all())              # NaN scale: NaN weights, that block only
    fin = ~torch.isnan(ref)
    assert torch.equal(torch.isnan(got), ~fin)
    assert torch.equal(got[fin], ref[fin])
    with pytest.raises(ValueError, match="weight_scale_inv"):
        quant.from_fp8_block(w, s[:1])
    with pytest.raises(ValueError, match="128"):
        quant.from_fp8_block(w, s, block_size=(64, 64))


def _hf_finegrained_fp8():
    """transformers' fine-grained fp8 integration, where the installed release ships one."""
    pytest.importorskip("transformers")
    try:
        import transformers.integrations.finegrained_fp8 as ff
    except ImportError as e:
        pytest.skip(f"this transformers has no integrations/finegrained_fp8.py ({e})")
    return ff


@pytest.mark.parametrize("n,k", [(256, 384), (200, 300)])
def test_fp8_block_against_transformers(n, k):
    """dynmoe's reading of converted DeepSeek-V3 style tensors against
    transformers' own dequantization: Fp8Dequantize (the loader's
    dequantize=True op; block-divisible shapes only) and
    _dequantize_fp8_weight (its backward-pass helper, ragged tails too)."""
    ff = _hf_finegrained_fp8()
    g = gen(14)
    E = 2
    w = (torch.randn(E, n, k, generator=g) * 30).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(E, -(-n // 128), -(-k // 128), generator=g) + 0.25
    ours = quant.dequantize(quant.from_fp8_block(w, s), dtype=torch.float32)
    checked = 0
    if hasattr(ff, "_dequantize_fp8_weight"):
        theirs = ff._dequantize_fp8_weight(w.clone(), s, [128, 128], torch.float32)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        checked += 1
    if hasattr(ff, "Fp8Dequantize") and n % 128 == 0 and k % 128 == 0:
        for e in range(E):
            out = ff.Fp8Dequantize(None).convert({"weight": w[e], "weight_scale_inv": s[e]})
            torch.testing.assert_close(ours[e], next(iter(out.values())).to(torch.float32), rtol=0, atol=0)
        checked += 1
    if not checked:
        pytest.skip("this transformers' finegrained_fp8 has neither _dequantize_fp8_weight nor Fp8Dequantize")


# ---------------------------------------------------------------------------
# MXFP4 (gpt-oss)
# ---------------------------------------------------------------------------

def test_mxfp4_against_transformers_convert_moe_packed_tensors():
    pytest.importorskip("transformers")
    try:
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    except ImportError as e:
        pytest.skip(f"transformers has no integrations.mxfp4.convert_moe_packed_tensors ({e})")
    g = gen(15)
    E, N, K = 3, 40, 96                               # gate_up_proj_blocks [E, 2I, H/32, 16]
    blocks = torch.randint(0, 256, (E, N, K // 32, 16), generator=g, dtype=torch.int64).to(torch.uint8)
    scales = torch.randint(110, 140, (E, N, K // 32), generator=g, dtype=torch.int64).to(torch.uint8)
    ours = quant.dequantize(quant.from_gpt_oss_mxfp4(blocks, scales), dtype=torch.float32)   # [E, N, K]
    theirs = convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=torch.float32)
    # transformers returns its parameter layout: [E, K, N] (x @ W), or [E, N, K] on releases without the transpose
    if tuple(theirs.shape) == (E, K, N):
        theirs = theirs.transpose(1, 2)
    assert tuple(theirs.shape) == (E, N, K)
    torch.testing.assert_close(ours, theirs.to(torch.float32), rtol=0, atol=0)


def test_mxfp4_layout_and_edge_scales():
    blocks = torch.zeros(1, 2, 2, 16, dtype=torch.uint8)
    blocks[0, 0, 0, 0] = 0x71          # k=0: nibble 1 = 0.5; k=1: nibble 7 = 6.0
    blocks[0, 1, 1, 15] = 0xF9         # row 1, k=62: 9 = -0.5, k=63: 15 = -6.0
    scales = torch.tensor([[[127, 255], [0, 128]]], dtype=torch.uint8)
    w = quant.dequantize(quant.from_gpt_oss_mxfp4(blocks, scales), dtype=torch.float64)[0]
    assert w[0, 0] == 0.5 and w[0, 1] == 6.0 and bool((w[0, 2:32] == 0).all())
    assert bool(torch.isnan(w[0, 32:]).all())                      # ue8m0 0xff is NaN
    assert w[1, 62] == -1.0 and w[1, 63] == -12.0                  # 2^(128-127)
    assert bool((w[1, :32] == 0).all())                            # zeros * 2^-127
    with pytest.raises(ValueError, match="blocks"):
        quant.from_gpt_oss_mxfp4(blocks, scales[..., :1])


# ---------------------------------------------------------------------------
# int4 edge cases and nibble round trips
# ---------------------------------------------------------------------------

def test_int4_scale_zero_nan_and_default_zero_point():
    q = quant.pack_nibbles(torch.tensor([[0, 15, 8, 3] * 16]))     # K = 64
    s = torch.tensor([[0.0, float("nan")]], dtype=torch.float16)
    w = quant.dequantize("int4", q, s, None, 32, dtype=torch.float64)
    assert bool((w[0, :32] == 0).all()) and bool(torch.isnan(w[0, 32:]).all())
    s = torch.tensor([[1.0, 2.0]], dtype=torch.float16)
    w = quant.dequantize("int4", q, s, None, 32, dtype=torch.float64)   # zero point 8
    assert w[0, :4].tolist() == [-8.0, 7.0, 0.0, -5.0] and w[0, 32:36].tolist() == [-16.0, 14.0, 0.0, -10.0]


@pytest.mark.parametrize("k", [1, 2, 63, 64, 100])
def test_nibble_round_trip(k):
    v = torch.randint(0, 16, (3, k), generator=gen(k))
    b = quant.pack_nibbles(v)
    assert b.shape == (3, (k + 1) // 2)
    assert torch.equal(quant.unpack_nibbles(b, k).long(), v)
    assert int(b[0, 0]) == int(v[0, 0]) | ((int(v[0, 1]) << 4) if k > 1 else 0)    # even k low nibble
