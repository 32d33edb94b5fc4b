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


def route_token(logits, r, bias=None, mask=None):
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
        w[i] *= r.get("scale", 1.0)
    return ids, w, False


def route(logits, r, bias=None, mask=None):
    """logits [T, E+Z] -> ids [T, K] int32, weights [T, K] float64, nonfinite rows."""
    T = logits.shape[0]
    K = r["top_k"]
    ids = np.full((T, K), -1, np.int32)
    w = np.zeros((T, K))
    bad = 0
    for t in range(T):
        i, wt, nf = route_token(logits[t].astype(np.float64), r, bias,
                                None if mask is None else mask[t].astype(np.float64))
        ids[t], w[t] = i, wt
        bad += nf
    return ids, w, bad


def route_tasks(x, task_logits, task_weights, r, bias=None):
    """CaRE: per token the top_tasks largest task logits pick tasks; task i
    routes W_r x into slots [i*K, (i+1)*K); a repeated expert keeps its first
    slot with the summed weight."""
    T = x.shape[0]
    K, P = r["top_k"], r["top_tasks"]
    S = K * P
    ids = np.full((T, S), -1, np.int32)
    w = np.zeros((T, S))
    for t in range(T):
        picked = _best_first(task_logits[t].astype(np.float64), range(r["num_tasks"]))[:P]
        for i, task in enumerate(picked):
            lg = task_weights[task].astype(np.float64) @ x[t].astype(np.float64)
            ti, tw, _ = route_token(lg, r, bias)
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


def _act(g, u, act):
    if act == "swiglu":
        return g / (1.0 + np.exp(-g)) * u
    erf = np.vectorize(math.erf)
    return 0.5 * g * (1.0 + erf(g / math.sqrt(2.0))) * u


def experts(x, ids, w, w13, w2, E, Z=0, zero_kind="zero", act="swiglu"):
    """out[t] = sum_k w[t,k] * FFN_{ids[t,k]}(x[t]) + identity zero experts' w * x."""
    x = x.astype(np.float64)
    w13 = w13.astype(np.float64)
    w2 = w2.astype(np.float64)
    inter = w13.shape[1] // 2
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            if 0 <= e < E:
                h = w13[e] @ x[t]
                y = w2[e] @ _act(h[:inter], h[inter:], act)
                out[t] += float(w[t, k]) * y
            elif E <= e < E + Z and zero_kind == "identity":
                out[t] += float(w[t, k]) * x[t]
    return out


def moe(x, logits, r, w13, w2, bias=None, mask=None, act="swiglu"):
    ids, w, _ = route(logits, r, bias, mask)
    return experts(x, ids, w, w13, w2, r["num_experts"], r.get("num_zero_experts", 0),
                   r.get("zero_kind", "zero"), act)


def rel_err(a, ref):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    return np.linalg.norm(a - ref) / (den if den > 0 else 1.0)
