"""The PyTorch peers of dynmoe's expert layer, shared by bench/compare_torch.py
(GPU) and bench/compare_frameworks.py (CPU) so that both time the same
functions. Weights are in vLLM's FusedMoE layout: w13 [E, 2I, H] (rows 0..I-1
gate, I..2I-1 up), w2 [E, H, I]; SwiGLU; the routing table ids [T, K] int32,
weights [T, K] fp32.

Every function takes the torch module (and torch.nn.functional as F) as
arguments, so that importing this file needs no torch.
"""


def active_flops(T, K, H, I):
    """Multiply-adds x 2 of the routed rows: T*K rows through [H -> 2I] and [I -> H]."""
    return 2.0 * T * K * 3 * H * I


def torch_route(torch, logits, K):
    """softmax over E, top-K (ties to the lower id, as torch.topk on CUDA does not promise:
    random logits make ties practically impossible), weights renormalised over the K."""
    p = torch.softmax(logits.float(), dim=-1)
    w, ids = torch.topk(p, K, dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    return ids.to(torch.int32).contiguous(), w.contiguous()


def grouped_mm_layer(torch, F, x, ids, weights, w13, w2):
    """argsort by expert, gather, two torch._grouped_mm, SwiGLU, index_add_ (CUDA only)."""
    T, K = ids.shape
    E, twoI, H = w13.shape
    I = twoI // 2
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    tok = order // K
    counts = torch.bincount(flat, minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    xs = x.index_select(0, tok)
    h13 = torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs)
    h = F.silu(h13[:, :I]) * h13[:, I:]
    y = torch._grouped_mm(h.contiguous(), w2.transpose(-2, -1), offs=offs)
    out = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    out.index_add_(0, tok, y.float() * weights.reshape(-1)[order].unsqueeze(1))
    return out.to(x.dtype)


def eager_layer(torch, F, x, ids, weights, w13, w2, compute_dtype=None):
    """The Hugging Face loop: only experts that received tokens (one host sync for the list):
    index_select, gate and up matmuls, SwiGLU, down matmul, index_add_ of the weighted rows.
    Computes in x's dtype (fp32 accumulation of the sum) and returns x's dtype; with
    compute_dtype (float32 or float64, the references) everything is upcast first and the
    result comes back in compute_dtype."""
    T, K = ids.shape
    E, twoI, H = w13.shape
    I = twoI // 2
    acc = torch.float32 if compute_dtype is None else compute_dtype
    out = torch.zeros(T, H, dtype=acc, device=x.device)
    hit = torch.bincount(ids.reshape(-1).long(), minlength=E).nonzero().flatten().tolist()
    xc = x if compute_dtype is None else x.to(compute_dtype)
    for e in hit:
        tok, slot = torch.where(ids == e)
        we13 = w13[e] if compute_dtype is None else w13[e].to(compute_dtype)
        we2 = w2[e] if compute_dtype is None else w2[e].to(compute_dtype)
        xe = xc.index_select(0, tok)
        g = xe @ we13[:I].t()
        u = xe @ we13[I:].t()
        y = (F.silu(g) * u) @ we2.t()
        out.index_add_(0, tok, y.to(acc) * weights[tok, slot].to(acc).unsqueeze(1))
    return out if compute_dtype is not None else out.to(x.dtype)


def dense_inputs(torch, T, K, H, I, dtype, device, generator):
    """The operands of the dense peer: R = T*K rows of x [R, H] and of h [R, I]."""
    R = T * K
    xa = torch.randn(R, H, device=device, generator=generator).to(dtype)
    ha = torch.randn(R, I, device=device, generator=generator).to(dtype)
    return xa, ha


def dense_pair(torch, xa, ha, w13e, w2e):
    """torch.mm on the active FLOPs as one dense GEMM pair ([R, H] x [H, 2I], [R, I] x [I, H]) on
    one expert's weights: the compute ceiling (no routing, no gather, weights reused)."""
    return torch.mm(xa, w13e.t()), torch.mm(ha, w2e.t())


def rel_err(torch, out, ref):
    """||out - ref|| / ||ref|| in float64; NaN when out has a non-finite value."""
    out = out.double()
    ref = ref.double()
    if not torch.isfinite(out).all():
        return float("nan")
    den = ref.norm().item()
    return (out - ref).norm().item() / (den if den > 0 else 1.0)
