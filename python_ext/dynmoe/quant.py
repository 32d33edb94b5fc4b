"""dynmoe.quant — quantized checkpoints' tensors in dynmoe's weight formats.

Pure torch: nothing here calls libdynmoe, so it runs (and is tested) wherever
torch runs. The layouts are those of include/dynmoe.h (dynmoe_weight_format),
for one matrix [N, K] or stacked experts [E, N, K] (w13: N = 2I or I rows,
K = H; w2: N = H, K = I):

    fp8_block  q: uint8 (float8 e4m3fn bits) [.., N, K]
               scale: float32 [.., ceil(N/128), ceil(K/128)]; w = e4m3(q) * scale
    mxfp4      q: uint8 [.., N, K/2], element k in byte k/2, even k in the low nibble
               scale: uint8 ue8m0 [.., N, K/32]; w = e2m1(nibble) * 2^(s - 127)
    int4       q: uint8 [.., N, ceil(K/2)], packed as mxfp4 (unsigned nibbles)
               scale: float16 [.., N, ceil(K/g)], zero: uint8 0..15 [.., N, ceil(K/g)]
               or None (zero point 8); w = (q - zero) * scale; g in {32, 64, 128};
               the last group of a row may be short

Converters
    from_awq(qweight, qzeros, scales, group_size)              AutoAWQ "GEMM" tensors
    from_gptq(qweight, qzeros, scales, g_idx, group_size, ...) GPTQ tensors, act-order included
    from_fp8_block(weight, weight_scale_inv)                   DeepSeek-V3 style fine-grained fp8
    from_gpt_oss_mxfp4(blocks, scales)                         gpt-oss *_blocks / *_scales
    dequantize(fmt, q, scale, zero=None, group_size=0, k=None) any dynmoe format -> float
    permute_rows(...)                                          folds a w2 act-order permutation into w13

Packing orders, and how they were checked (tests/python/test_quant.py):
  * AWQ (AutoAWQ WQLinear_GEMM, awq/modules/linear/gemm.py and
    awq/utils/packing_utils.py): qweight int32 [K, N/8] and qzeros int32
    [K/g, N/8] pack 8 values along N; nibble i (bits 4i..4i+3) of word c holds
    column 8c + AWQ_ORDER[i] with AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]; scales
    fp16 [K/g, N]; w[n, k] = (q - z) * s with the zero stored as is. The test
    packs random integers with a transcription of AutoAWQ's own packing loop
    (`qweight[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)`) and
    checks that from_awq + dequantize give (q - z) * s element for element, and
    that a plain sequential order would fail that test.
  * GPTQ (AutoGPTQ qlinear_cuda_old.QuantLinear.pack, the "gptq" v1 checkpoint
    format that HF/vLLM load): qweight int32 [K/8, N] packs 8 values along K,
    sequentially (value 8r + i at bits 4i of row r); qzeros int32 [G, N/8]
    packs along N sequentially and stores zero - 1 (the v1 off-by-one that
    AutoGPTQ's dequantization undoes with `zeros + 1`); scales fp16 [G, N];
    g_idx int32 [K] is the group of each input channel. checkpoint_format=
    "gptq_v2" (GPTQModel) stores the zero itself. The test packs with a
    transcription of AutoGPTQ's pack loops and compares with
    scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]).
  * gpt-oss MXFP4 and fine-grained fp8: compared bit for bit with
    transformers' own dequantization when the installed transformers ships it
    (5.24.0 when this was written): integrations/mxfp4.py
    convert_moe_packed_tensors, which returns its [E, K, N] parameter (the
    stored blocks are [E, N, K/32, 16], dynmoe's row order), and
    integrations/finegrained_fp8.py _dequantize_fp8_weight (ragged 128-blocks)
    and Fp8Dequantize (the loader's dequantize=True op).
  * Planted bugs that the tests caught: AWQ read in sequential order, the
    GPTQ v1 zero offset dropped, the nibble order swapped, the act-order
    permutation reversed.

Act-order GPTQ (desc_act, a non-monotone g_idx): dynmoe's int4 groups are
contiguous along K, so from_gptq sorts K by group (stable) and returns the
permutation `perm` ([K], or [E, K] for stacked experts) with
w_dynmoe[:, j] = w[:, perm[j]]. The product is unchanged when the input is
permuted the same way, x'[..., j] = x[..., perm[j]]:
  * w2 (K = I, the expert's activation): nobody can permute h, so fold the
    permutation into w13's rows instead: permute_rows(w13..., perm, gate_up)
    reorders gate row j and up row j to perm[j] (rows carry their own scales
    and zeros, so this is exact and free at run time), and b13 the same way.
  * w13 (K = H, the layer input): the caller permutes x once, x[:, perm],
    which needs one permutation shared by all experts (checked by
    shared_perm); experts with different w13 permutations cannot be served
    without a per-expert gather and are refused with a ValueError.

Non-finite and zero scales are kept as given (include/dynmoe.h: a NaN/Inf
scale reaches the outputs of the tokens routed to that expert; scale 0 gives
zero weights). A GPTQ v1 zero of 0 is stored as 0xF and reads back as 16,
which dynmoe's uint8 0..15 zero points cannot hold: from_gptq refuses it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)   # nibble i of a word holds column 8c + AWQ_ORDER[i]
FP8_BLOCK = 128
MXFP4_BLOCK = 32
INT4_GROUPS = (32, 64, 128)

__all__ = ["Quantized", "from_awq", "from_gptq", "from_fp8_block", "from_gpt_oss_mxfp4", "dequantize",
           "permute_rows", "shared_perm", "pack_nibbles", "unpack_nibbles", "AWQ_ORDER"]


class Quantized(NamedTuple):
    """One matrix (or stacked experts) in a dynmoe weight format, ready for
    dynmoe.Experts(weight_format=fmt, w13=q, w13_scale=scale, w13_zero=zero,
    group_size=group_size). perm: act-order permutation of K, or None."""
    fmt: str
    q: torch.Tensor
    scale: torch.Tensor
    zero: Optional[torch.Tensor]
    group_size: int
    k: int
    perm: Optional[torch.Tensor] = None


# --------------------------------------------------------------------------
# nibbles
# --------------------------------------------------------------------------

def pack_nibbles(v: torch.Tensor) -> torch.Tensor:
    """[.., K] values 0..15 -> uint8 [.., ceil(K/2)], even k in the low nibble
    (an odd K pads the last high nibble with 0)."""
    v = v.to(torch.uint8)
    if v.shape[-1] % 2:
        v = torch.nn.functional.pad(v, (0, 1))
    return (v[..., 0::2] & 15) | ((v[..., 1::2] & 15) << 4)


def unpack_nibbles(b: torch.Tensor, k: Optional[int] = None) -> torch.Tensor:
    """uint8 [.., B] -> uint8 [.., k] (k defaults to 2B), even k from the low nibble."""
    b = b.to(torch.uint8)
    out = torch.stack((b & 15, b >> 4), dim=-1).reshape(*b.shape[:-1], 2 * b.shape[-1])
    return out if k is None else out[..., :k]


def _int32_nibbles(w: torch.Tensor) -> torch.Tensor:
    """int32 [..., C] -> int64 [..., C, 8]: nibble i = bits 4i..4i+3 (two's
    complement words read as unsigned)."""
    w = w.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=w.device)
    return (w.unsqueeze(-1) >> shifts) & 15


def _check_group(group_size: int) -> int:
    if group_size not in INT4_GROUPS:
        raise ValueError(f"group_size: dynmoe's int4 groups are 32, 64 or 128 along K, got {group_size}")
    return group_size


def _fp16_scales(s: torch.Tensor, what: str) -> torch.Tensor:
    if not s.is_floating_point():
        raise ValueError(f"{what}: expected a float tensor, got {s.dtype}")
    h = s.to(torch.float16)
    overflow = torch.isinf(h) & torch.isfinite(s)
    if bool(overflow.any()):
        raise ValueError(f"{what}: {int(overflow.sum())} finite scales overflow float16 (dynmoe's int4 scales are fp16)")
    return h


def _group_counts_ok(g_sorted: torch.Tensor, groups: int, group_size: int, k: int) -> bool:
    counts = torch.bincount(g_sorted, minlength=groups)
    want = torch.full((groups,), group_size, dtype=counts.dtype)
    want[-1] = k - group_size * (groups - 1)
    return counts.shape[0] == groups and bool(torch.equal(counts, want))


# --------------------------------------------------------------------------
# AWQ and GPTQ -> int4
# --------------------------------------------------------------------------

def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> Quantized:
    """AutoAWQ GEMM tensors -> dynmoe int4. qweight int32 [(E,) K, N/8],
    qzeros int32 [(E,) K/g, N/8], scales [(E,) K/g, N] (fp16; bf16/f32 are
    converted). Returns int4 q [(E,) N, K/2], scale fp16 and zero uint8
    [(E,) N, K/g]."""
    g = _check_group(group_size)
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"qweight/qzeros: expected int32 (AWQ packs 8 nibbles per word), got {qweight.dtype}/{qzeros.dtype}")
    k, n8 = qweight.shape[-2], qweight.shape[-1]
    n = 8 * n8
    groups = (k + g - 1) // g
    lead = tuple(qweight.shape[:-2])
    if tuple(qzeros.shape) != lead + (groups, n8):
        raise ValueError(f"qzeros: expected shape {lead + (groups, n8)} for K={k}, group_size={g}, got {tuple(qzeros.shape)}")
    if tuple(scales.shape) != lead + (groups, n):
        raise ValueError(f"scales: expected shape {lead + (groups, n)}, got {tuple(scales.shape)}")
    rev = torch.tensor([AWQ_ORDER.index(j) for j in range(8)], device=qweight.device)  # column j <- nibble rev[j]
    q = _int32_nibbles(qweight)[..., rev].reshape(*lead, k, n)       # [.., K, N]
    z = _int32_nibbles(qzeros)[..., rev].reshape(*lead, groups, n)   # [.., G, N]
    return Quantized("int4", pack_nibbles(q.transpose(-1, -2)).contiguous(),
                     _fp16_scales(scales, "scales").transpose(-1, -2).contiguous(),
                     z.transpose(-1, -2).to(torch.uint8).contiguous(), g, k)


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: Optional[torch.Tensor],
              group_size: int, checkpoint_format: str = "gptq") -> Quantized:
    """GPTQ tensors (4-bit) -> dynmoe int4. qweight int32 [(E,) K/8, N],
    qzeros int32 [(E,) G, N/8], scales [(E,) G, N], g_idx int [(E,) K] or None
    (k // group_size). checkpoint_format "gptq" stores zero - 1 (AutoGPTQ v1),
    "gptq_v2" the zero itself. With act-order the result's perm says how K was
    reordered (module docstring); perm is None when g_idx is already sorted."""
    g = _check_group(group_size)
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format: expected 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"qweight/qzeros: expected int32, got {qweight.dtype}/{qzeros.dtype}")
    k8, n = qweight.shape[-2], qweight.shape[-1]
    k = 8 * k8
    lead = tuple(qweight.shape[:-2])
    groups = (k + g - 1) // g
    if n % 8:
        raise ValueError(f"qweight: N = {n} is not a multiple of 8 (qzeros packs 8 zeros per word)")
    if tuple(qzeros.shape) != lead + (groups, n // 8):
        raise ValueError(f"qzeros: expected shape {lead + (groups, n // 8)} for K={k}, group_size={g}, got {tuple(qzeros.shape)}")
    if tuple(scales.shape) != lead + (groups, n):
        raise ValueError(f"scales: expected shape {lead + (groups, n)}, got {tuple(scales.shape)}")
    q = _int32_nibbles(qweight).transpose(-1, -2).reshape(*lead, k, n).transpose(-1, -2)  # [.., N, K], k = 8r + i
    z = _int32_nibbles(qzeros).reshape(*lead, groups, n)                # [.., G, N]
    if checkpoint_format == "gptq":
        z = z + 1
    if bool((z > 15).any()):
        raise ValueError("qzeros: a v1 ('gptq') zero point reads back as 16 (an asymmetric zero of 0 stored as -1); "
                         "dynmoe's int4 zero points are 0..15: convert the checkpoint to gptq_v2 first")
    s = _fp16_scales(scales, "scales")
    perm = None
    if g_idx is not None:
        g_idx = g_idx.to(torch.int64)
        if tuple(g_idx.shape) != lead + (k,):
            raise ValueError(f"g_idx: expected shape {lead + (k,)}, got {tuple(g_idx.shape)}")
        if bool(((g_idx < 0) | (g_idx >= groups)).any()):
            raise ValueError(f"g_idx: groups must be in [0, {groups})")
        perm = torch.sort(g_idx, dim=-1, stable=True).indices                  # [.., K]
        g_sorted = torch.gather(g_idx, -1, perm)
        for gs in g_sorted.reshape(-1, k):
            if not _group_counts_ok(gs, groups, g, k):
                raise ValueError(f"g_idx: every group must hold group_size={g} channels (the last one the rest)")
        if bool((perm == torch.arange(k, device=perm.device)).all()):
            perm = None
        else:
            q = torch.gather(q, -1, perm.unsqueeze(-2).expand(*lead, n, k))
    return Quantized("int4", pack_nibbles(q).contiguous(), s.transpose(-1, -2).contiguous(),
                     z.transpose(-1, -2).to(torch.uint8).contiguous(), g, k, perm)


def shared_perm(perm: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The one x permutation [K] of stacked experts' w13 act-order perms
    [E, K], or a ValueError when the experts disagree (module docstring)."""
    if perm is None or perm.dim() == 1:
        return perm
    if not bool((perm == perm[:1]).all()):
        raise ValueError("w13 act-order: the experts permute the layer input differently; dynmoe takes one x "
                         "(permute it once with a shared order), so this checkpoint cannot be served without requantizing")
    return perm[0]


def permute_rows(w13: Quantized, perm: torch.Tensor, gate_up: str = "blocked", b13: Optional[torch.Tensor] = None):
    """Folds w2's act-order permutation (its K = I, the activation) into w13:
    gate row j and up row j become rows perm[j] of the original, so that
    act(w13' x) = act(w13 x)[perm] is the permuted input w2 expects. Works on
    any dynmoe format whose scales are per row (int4, mxfp4); perm [I] or
    [E, I]. Returns (w13', b13')."""
    if w13.fmt == "fp8_block":
        raise ValueError("permute_rows: fp8_block scales cover 128 rows, a row permutation would break them")
    n = w13.q.shape[-2]
    i = perm.shape[-1]
    if gate_up not in ("blocked", "interleaved", "none"):
        raise ValueError(f"gate_up: expected blocked, interleaved or none (non-gated), got {gate_up!r}")
    gated = gate_up != "none"
    if n != (2 * i if gated else i):
        raise ValueError(f"perm: {i} channels do not match w13's {n} rows ({gate_up})")
    perm = perm.to(torch.int64)
    if gate_up == "blocked":
        rows = torch.cat((perm, perm + i), dim=-1)
    elif gate_up == "interleaved":
        rows = torch.stack((2 * perm, 2 * perm + 1), dim=-1).reshape(*perm.shape[:-1], 2 * i)
    else:
        rows = perm

    def take(t, axis):
        if t is None:
            return None
        # rows [R] or [E, R] against t [.., R(, X)]: broadcast over experts and the trailing axis
        shape = list(t.shape)
        r = rows.reshape(*rows.shape, *([1] * (-axis - 1)))
        return torch.gather(t, t.dim() + axis, r.expand(*shape).contiguous()).contiguous()

    out = w13._replace(q=take(w13.q, -2), scale=take(w13.scale, -2), zero=take(w13.zero, -2), perm=None)
    return out, take(b13, -1)


# --------------------------------------------------------------------------
# fp8 block and gpt-oss MXFP4: the checkpoints' layouts map directly
# --------------------------------------------------------------------------

def from_fp8_block(weight: torch.Tensor, weight_scale_inv: torch.Tensor, block_size=(128, 128)) -> Quantized:
    """Fine-grained fp8 (DeepSeek-V3 / MiniMax-M2, transformers'
    FineGrainedFP8): weight float8_e4m3fn [(E,) N, K] (as in the checkpoint:
    [out, in]) and weight_scale_inv [(E,) ceil(N/128), ceil(K/128)], which
    despite its name multiplies (w = q * weight_scale_inv). No reshape is
    needed: q is the weight's bytes, scale the fp32 scales. For separate
    gate_proj / up_proj experts, stack them with stack_fp8_gate_up."""
    if tuple(block_size) != (FP8_BLOCK, FP8_BLOCK):
        raise ValueError(f"weight_block_size: dynmoe's fp8 blocks are 128 x 128, got {tuple(block_size)}")
    if weight.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise ValueError(f"weight: expected float8_e4m3fn (or its uint8 bits), got {weight.dtype}")
    n, k = weight.shape[-2], weight.shape[-1]
    want = tuple(weight.shape[:-2]) + (-(-n // FP8_BLOCK), -(-k // FP8_BLOCK))
    if tuple(weight_scale_inv.shape) != want:
        raise ValueError(f"weight_scale_inv: expected shape {want} for a [{n}, {k}] weight, got {tuple(weight_scale_inv.shape)}")
    q = weight.contiguous().view(torch.uint8)
    return Quantized("fp8_block", q, weight_scale_inv.to(torch.float32).contiguous(), None, FP8_BLOCK, k)


def stack_fp8_gate_up(gate: Quantized, up: Quantized) -> Quantized:
    """gate_proj and up_proj ([.., I, H] each) -> w13 [.., 2I, H], blocked.
    Needs I % 128 == 0: otherwise the last gate block and the first up block
    would share one 128-row scale block."""
    if gate.q.shape != up.q.shape or gate.fmt != "fp8_block" or up.fmt != "fp8_block":
        raise ValueError("stack_fp8_gate_up: expects two fp8_block matrices of one shape")
    if gate.q.shape[-2] % FP8_BLOCK:
        raise ValueError(f"stack_fp8_gate_up: I = {gate.q.shape[-2]} is not a multiple of 128")
    return Quantized("fp8_block", torch.cat((gate.q, up.q), dim=-2).contiguous(),
                     torch.cat((gate.scale, up.scale), dim=-2).contiguous(), None, FP8_BLOCK, gate.k)


def from_gpt_oss_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> Quantized:
    """gpt-oss MXFP4 experts: *_blocks uint8 [E, N, K/32, 16] and *_scales
    uint8 [E, N, K/32]. transformers' convert_moe_packed_tensors dequantizes
    them to [E, N, K] and then transposes to its [E, K, N] parameter
    (gate_up_proj [E, H, 2I], x @ W); the stored tensors are therefore already
    dynmoe's [E, N, K] rows: gate_up_proj_blocks is w13 [E, 2I, H] with gate
    and up interleaved (gate_up="interleaved", gate_up_proj_bias [E, 2I] in
    the same order), down_proj_blocks is w2 [E, H, I]. A reshape, no copy."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"blocks/scales: expected uint8, got {blocks.dtype}/{scales.dtype}")
    if blocks.dim() < 3 or blocks.shape[-1] != 16 or tuple(blocks.shape[:-1]) != tuple(scales.shape):
        raise ValueError(f"blocks {tuple(blocks.shape)} / scales {tuple(scales.shape)}: expected [.., N, K/32, 16] and [.., N, K/32]")
    *lead, n, kb, _ = blocks.shape
    return Quantized("mxfp4", blocks.reshape(*lead, n, kb * 16), scales, None, MXFP4_BLOCK, kb * MXFP4_BLOCK)


# --------------------------------------------------------------------------
# dequantization, from include/dynmoe.h's description
# --------------------------------------------------------------------------

def _fp8_e4m3_table() -> torch.Tensor:
    """All 256 e4m3fn codes: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits;
    no infinities, S.1111.111 is NaN; subnormals m/8 * 2^-6."""
    vals = []
    for c in range(256):
        e, m = (c >> 3) & 15, c & 7
        if e == 15 and m == 7:
            v = float("nan")
        elif e == 0:
            v = m / 8.0 * 2.0 ** -6
        else:
            v = (1.0 + m / 8.0) * 2.0 ** (e - 7)
        vals.append(-v if c & 0x80 else v)
    return torch.tensor(vals, dtype=torch.float64)


_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                     dtype=torch.float64)


def _ue8m0(s: torch.Tensor) -> torch.Tensor:
    e = s.to(torch.float64) - 127.0
    v = torch.pow(torch.tensor(2.0, dtype=torch.float64, device=s.device), e)
    return torch.where(s == 255, torch.full_like(v, float("nan")), v)


def dequantize(fmt, q=None, scale=None, zero=None, group_size: int = 0, k: Optional[int] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A dynmoe-format matrix [(E,) N, K] as `dtype` (computed in float64).
    fmt: "fp8_block" | "mxfp4" | "int4", or a Quantized (the other arguments
    then come from it). k: K when it is odd (int4 rows hold ceil(K/2) bytes)."""
    if isinstance(fmt, Quantized):
        fmt, q, scale, zero, group_size, k = fmt.fmt, fmt.q, fmt.scale, fmt.zero, fmt.group_size, fmt.k
    dev = q.device
    if fmt == "fp8_block":
        qb = q.view(torch.uint8) if q.dtype != torch.uint8 else q
        w = _fp8_e4m3_table().to(dev)[qb.to(torch.int64)]
        n, kk = w.shape[-2], w.shape[-1]
        s = scale.to(torch.float64).repeat_interleave(FP8_BLOCK, -2)[..., :n, :]
        s = s.repeat_interleave(FP8_BLOCK, -1)[..., :kk]
        return (w * s).to(dtype)
    if fmt == "mxfp4":
        kk = 2 * q.shape[-1] if k is None else k
        if kk % MXFP4_BLOCK:
            raise ValueError(f"mxfp4: K = {kk} is not a multiple of 32")
        w = _E2M1.to(dev)[unpack_nibbles(q, kk).to(torch.int64)]
        return (w * _ue8m0(scale).repeat_interleave(MXFP4_BLOCK, -1)[..., :kk]).to(dtype)
    if fmt == "int4":
        g = _check_group(group_size)
        kk = 2 * q.shape[-1] if k is None else k
        v = unpack_nibbles(q, kk).to(torch.float64)
        s = scale.to(torch.float64).repeat_interleave(g, -1)[..., :kk]
        z = 8.0 if zero is None else zero.to(torch.float64).repeat_interleave(g, -1)[..., :kk]
        return ((v - z) * s).to(dtype)
    raise ValueError(f"fmt: expected fp8_block, mxfp4 or int4, got {fmt!r}")
