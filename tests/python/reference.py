"""An independent reference for dynmoe's Python tests: naive, float64, one
token at a time, written from DESIGN.md section 2 (not from csrc/ and not
from tests/reference/). Routers are plain dicts of dynmoe.Router's keywords.
"""
import math

import numpy as np

NEG_INF = -np.inf


def _scores(logits, score):
    """Per-token scores; a non-finite logit scores 0."""
    fin = np.isfinite(logits)
    s = np.zeros_like(logits)
    if score == "softmax":
        m = logits[fin].max()
        ex = np.exp(logits[fin] - m)
        s[fin] = ex / ex.sum()
    elif score == "sigmoid":
        s[fin] = 1.0 / (1.0 + np.exp(-logits[fin]))
    else:
        s[fin] = logits[fin]
    return s


def _best_first(values, ids):
    """ids sorted by value descending, ties to the lower id; -inf dropped."""
    keep = [(float(v), int(i)) for v, i in zip(values, ids) if np.isfinite(v)]
    keep.sort(key=lambda p: (-p[0], p[1]))
    return [i for _, i in keep]


def route_token(logits, r, bias=None, mask=None, expert_scale=None):
    """One token: logits [E+Z] float64 -> (ids [K], weights [K]), nonfinite flag."""
    E, Z, K = r["num_experts"], r.get("num_zero_experts", 0), r["top_k"]
    N = E + Z
    ids = [-1] * K
    w = [0.0] * K
    logits = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(logits).any():
        return ids, w, True
    s = _scores(logits, r.get("score", "softmax"))
    b = np.zeros(N) if bias is None else np.asarray(bias, dtype=np.float64)
    c = np.full(N, NEG_INF)
    for e in range(N):
        if not np.isfinite(logits[e]):
            continue
        if r.get("select", "topk") == "threshold" and not s[e] > r.get("threshold", 0.0):
            continue
        v = s[e] + b[e]
        c[e] = v if np.isfinite(v) else NEG_INF
    G = r.get("num_groups", 0)
    if G > 0:
        gscore = []
        for j in range(G):
            lo, hi = j * E // G, (j + 1) * E // G
            cg = [c[e] for e in range(lo, hi) if np.isfinite(c[e])]
            if not cg:
                gscore.append(NEG_INF)
            elif bias is not None:
                top = sorted(cg, reverse=True)[:2]
                gscore.append(sum(top))
            else:
                gscore.append(max(s[e] for e in range(lo, hi) if np.isfinite(c[e])))
        kept = set(_best_first(gscore, range(G))[: r["topk_groups"]])
        for j in range(G):
            if j not in kept:
                c[j * E // G:(j + 1) * E // G] = NEG_INF
    sel = _best_first(c, range(N))[:K]
    n = len(sel)
    if r.get("select", "topk") == "top_p":
        cum, n = 0.0, 0
        while n < len(sel) and (n == 0 or cum < r.get("top_p", 1.0)):
            cum += s[sel[n]]
            n += 1
    sum_sel = sum(s[e] for e in sel[:n])
    sum_kept, kept = 0.0, 0
    for i in range(n):
        e = sel[i]
        real = e < E
        if real and mask is not None and not mask[e] > 0:
            continue
        ids[i], w[i] = e, s[e]
        kept += 1
        if real:
            sum_kept += s[e]
    norm = r.get("norm", "selected")
    div = {"selected": sum_sel, "kept": sum_kept}.get(norm, 1.0)
    for i in range(K):
        if ids[i] < 0:
            continue
        if norm == "uniform":
            w[i] = 1.0 / kept
        elif div != 0 and np.isfinite(div):
            w[i] = w[i] / div
        if expert_scale is not None:  # a learned per-expert factor, after norm, before the router's scale
            w[i] *= float(expert_scale[ids[i]])
        w[i] *= r.get("scale", 1.0)
    return ids, w, False


def route(logits, r, bias=None, mask=None, expert_scale=None):
    """logits [T, E+Z] -> ids [T, K] int32, weights [T, K] float64, nonfinite rows."""
    T = logits.shape[0]
    K = r["top_k"]
    ids = np.full((T, K), -1, np.int32)
    w = np.zeros((T, K))
    bad = 0
    for t in range(T):
        i, wt, nf = route_token(logits[t].astype(np.float64), r, bias,
                                None if mask is None else mask[t].astype(np.float64), expert_scale)
        ids[t], w[t] = i, wt
        bad += nf
    return ids, w, bad


def route_tasks(x, task_logits, task_weights, r, bias=None, expert_scale=None):
    """CaRE: per token the top_tasks largest task logits pick tasks; task i
    routes W_r x into slots [i*K, (i+1)*K) (expert_scale on each task's
    weights, before the merge); a repeated expert keeps its first slot with
    the summed weight."""
    T = x.shape[0]
    K, P = r["top_k"], r["top_tasks"]
    S = K * P
    ids = np.full((T, S), -1, np.int32)
    w = np.zeros((T, S))
    for t in range(T):
        picked = _best_first(task_logits[t].astype(np.float64), range(r["num_tasks"]))[:P]
        for i, task in enumerate(picked):
            lg = task_weights[task].astype(np.float64) @ x[t].astype(np.float64)
            ti, tw, _ = route_token(lg, r, bias, None, expert_scale)
            ids[t, i * K:(i + 1) * K] = ti
            w[t, i * K:(i + 1) * K] = tw
        for j in range(S):
            if ids[t, j] < 0:
                continue
            for i in range(j):
                if ids[t, i] == ids[t, j]:
                    w[t, i] += w[t, j]
                    ids[t, j], w[t, j] = -1, 0.0
                    break
    return ids, w


def plan(ids, E):
    """The expert-major layout: only ids in [0, E) are rows, stable by
    (expert, token, slot)."""
    flat = ids.reshape(-1)
    counts = np.zeros(E, np.int64)
    rows = []
    for e in range(E):
        slots = [q for q in range(flat.size) if flat[q] == e]
        counts[e] = len(slots)
        rows += slots
    offsets = np.concatenate([[0], np.cumsum(counts)])
    slot_rows = np.full(flat.size, -1, np.int64)
    for r_, q in enumerate(rows):
        slot_rows[q] = r_
    active = [e for e in range(E) if counts[e] > 0]
    return dict(counts=counts, offsets=offsets, sorted_slots=np.array(rows, np.int64),
                slot_rows=slot_rows, active_experts=np.array(active, np.int64), num_active=len(active))


NON_GATED = ("relu2", "silu")


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _act(g, u, act, alpha=1.702, limit=7.0):
    """One expert's activation of its gate (or only) values g and up values u."""
    if act == "swiglu":
        return g * _sigmoid(g) * u
    if act == "geglu":
        erf = np.vectorize(math.erf)
        return 0.5 * g * (1.0 + erf(g / math.sqrt(2.0))) * u
    if act == "geglu_tanh":
        return 0.5 * g * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3))) * u
    if act == "swiglu_oai":  # gpt-oss: gate clamped from above, up to [-limit, limit], and up + 1
        g = np.minimum(g, limit)
        u = np.clip(u, -limit, limit)
        return (u + 1.0) * g * _sigmoid(alpha * g)
    if act == "relu2":
        return np.maximum(g, 0.0) ** 2
    if act == "silu":
        return g * _sigmoid(g)
    raise ValueError(act)


def ffn(xrow, w13, w2, act="swiglu", b13=None, b2=None, gate_up="blocked", alpha=1.702, limit=7.0):
    """One expert of one row, float64: h = w13 x + b13, a = act(h), y = w2 a + b2."""
    h = w13 @ xrow
    if b13 is not None:
        h = h + b13
    if act in NON_GATED:
        a = _act(h, None, act)
    elif gate_up == "interleaved":
        a = _act(h[0::2], h[1::2], act, alpha, limit)
    else:
        i = h.shape[0] // 2
        a = _act(h[:i], h[i:], act, alpha, limit)
    y = w2 @ a
    return y if b2 is None else y + b2


def experts(x, ids, w, w13, w2, E, Z=0, zero_kind="zero", act="swiglu", b13=None, b2=None, gate_up="blocked",
            alpha=1.702, limit=7.0, weight_on_input=False):
    """out[t] = sum_k w[t,k] * FFN_{ids[t,k]}(x[t]) + identity zero experts' w * x;
    weight_on_input: FFN_{ids[t,k]}(w[t,k] * x[t]) unweighted (identity zero
    experts still add w * x)."""
    x = x.astype(np.float64)
    f64 = (lambda a: None if a is None else np.asarray(a, dtype=np.float64))
    w13, w2, b13, b2 = f64(w13), f64(w2), f64(b13), f64(b2)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            wk = float(w[t, k])
            if 0 <= e < E:
                xin = wk * x[t] if weight_on_input else x[t]
                y = ffn(xin, w13[e], w2[e], act, None if b13 is None else b13[e], None if b2 is None else b2[e],
                        gate_up, alpha, limit)
                out[t] += y if weight_on_input else wk * y
            elif E <= e < E + Z and zero_kind == "identity":
                out[t] += wk * x[t]
    return out


def moe(x, logits, r, w13, w2, bias=None, mask=None, act="swiglu", expert_scale=None, **ffn_kw):
    ids, w, _ = route(logits, r, bias, mask, expert_scale)
    return experts(x, ids, w, w13, w2, r["num_experts"], r.get("num_zero_experts", 0),
                   r.get("zero_kind", "zero"), act, weight_on_input=r.get("weight_on_input", False), **ffn_kw)


# ------------------------------------------------------- quantized weights
#
# Written from the format description in include/dynmoe.h (dynmoe_weight_format),
# not from csrc/quant_rules.h: a matrix [E, N, K] of values.

def e4m3fn(code):
    """float8 e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no
    infinities, S.1111.111 is NaN; exponent 0 is subnormal."""
    code = int(code)
    sign = -1.0 if code & 0x80 else 1.0
    ex, man = (code >> 3) & 0xF, code & 0x7
    if ex == 0xF and man == 0x7:
        return math.nan
    if ex == 0:
        return sign * (man / 8.0) * 2.0 ** -6
    return sign * (1.0 + man / 8.0) * 2.0 ** (ex - 7)


def e2m1(nibble):
    """fp4 e2m1: sign, 2 exponent bits (bias 1), 1 mantissa bit: 0, .5, 1, 1.5, 2, 3, 4, 6."""
    nibble = int(nibble)
    sign = -1.0 if nibble & 0x8 else 1.0
    ex, man = (nibble >> 1) & 0x3, nibble & 0x1
    if ex == 0:
        return sign * man * 0.5
    return sign * (1.0 + man / 2.0) * 2.0 ** (ex - 1)


def _nibbles(packed, K):
    """[..., ceil(K/2)] bytes -> [..., K] 4-bit codes: element k in byte k // 2, even k in the low nibble."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.empty(packed.shape[:-1] + (K,), np.int64)
    for k in range(K):
        b = packed[..., k // 2].astype(np.int64)
        out[..., k] = (b & 0xF) if k % 2 == 0 else (b >> 4)
    return out


def dequantize(fmt, w, scale, K, zero=None, group_size=None):
    """The float64 values [E, N, K] of quantized weights w (include/dynmoe.h)."""
    w = np.asarray(w)
    if fmt == "fp8_block":
        vals = np.vectorize(e4m3fn, otypes=[np.float64])(w.astype(np.int64))
        s = np.asarray(scale, dtype=np.float64)
        n_idx = np.arange(w.shape[1]) // 128
        k_idx = np.arange(K) // 128
        return vals * s[:, n_idx][:, :, k_idx]
    if fmt == "mxfp4":
        vals = np.vectorize(e2m1, otypes=[np.float64])(_nibbles(w, K))
        s = 2.0 ** (np.asarray(scale, dtype=np.float64) - 127.0)
        return vals * s[:, :, np.arange(K) // 32]
    if fmt == "int4":
        q = _nibbles(w, K).astype(np.float64)
        g = np.arange(K) // group_size
        s = np.asarray(scale, dtype=np.float64)[:, :, g]
        z = 8.0 if zero is None else np.asarray(zero, dtype=np.float64)[:, :, g]
        return (q - z) * s
    raise ValueError(fmt)


def rel_err(a, ref):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    return np.linalg.norm(a - ref) / (den if den > 0 else 1.0)
