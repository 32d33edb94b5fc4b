"""How a vLLM-style FusedMoE layer hands its expert computation to dynmoe.

vLLM's FusedMoE keeps its expert weights as
    w13_weight [E, 2*I, H]   (gate rows 0..I-1, then up rows)
    w2_weight  [E, H, I]
and its forward is, in essence,
    topk_weights, topk_ids = select_experts(router_logits, top_k, renormalize, ...)
    out = fused_experts(hidden_states, w13_weight, w2_weight, topk_weights, topk_ids)

dynmoe takes the same tensors without a copy (dynmoe.Experts keeps references),
so the swap is one line:
    out = dynmoe.experts_forward(hidden_states, topk_ids.int(), topk_weights, router, experts)
or, letting dynmoe route too (group limits, selection bias, top-p, zero experts):
    out = dynmoe.moe_forward(hidden_states, router_logits, router, experts, bias=..., mask_logits=...)

Two dynamic-compute extensions plug in through the router and one argument:
  * BEAM: a mask head (a linear layer [E, H]) gives mask_logits [T, E]; a routed
    slot survives only if its mask logit is > 0. Dropped slots cost nothing.
  * Zero-computation experts: the gate emits E + Z logits; ids E..E+Z-1 either
    contribute nothing ("zero": ZEDA, AdaMoE) or w * x ("identity": LongCat-Flash).

Runs on the CPU with small sizes, with torch when installed, else numpy:
    python examples/vllm_fused_moe.py [--backend torch|numpy]
"""
import argparse

import numpy as np

import dynmoe


# ---- the naive computation a FusedMoE layer does (for comparison only) -----

def naive_fused_experts(x, w13, w2, topk_weights, topk_ids, zero_kind=None, num_experts=None):
    """out[t] = sum_k w[t,k] * (silu(x W_gate^T) * (x W_up^T)) W2^T, per slot, in float64."""
    x, w13, w2 = (np.asarray(a, np.float64) for a in (x, w13, w2))
    inter = w13.shape[1] // 2
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(topk_ids.shape[1]):
            e, w = int(topk_ids[t, k]), float(topk_weights[t, k])
            if e < 0:
                continue
            if num_experts is not None and e >= num_experts:  # a zero expert
                if zero_kind == "identity":
                    out[t] += w * x[t]
                continue
            h = w13[e] @ x[t]
            g, u = h[:inter], h[inter:]
            out[t] += w * (w2[e] @ (g / (1 + np.exp(-g)) * u))
    return out


def select_experts_softmax_topk(router_logits, top_k, renormalize=True):
    """vLLM's default select_experts: softmax, top-k, optional renormalisation."""
    lg = np.asarray(router_logits, np.float64)
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :top_k]
    w = np.take_along_axis(p, ids, 1)
    if renormalize:
        w /= w.sum(1, keepdims=True)
    return w.astype(np.float32), ids.astype(np.int32)


# ---- a FusedMoE-like layer that runs on dynmoe --------------------------------

class DynmoeFusedMoE:
    """The parts of vLLM's FusedMoE that matter here: weights in its layout, a
    gate, and a forward over router logits. `xp` is torch or numpy."""

    def __init__(self, xp, num_experts, top_k, hidden, inter, num_zero_experts=0, zero_kind="zero",
                 beam_mask=False, seed=0):
        rng = np.random.default_rng(seed)
        self.xp = xp
        n_logits = num_experts + num_zero_experts

        def param(*shape, scale):
            a = (rng.standard_normal(shape) * scale).astype(np.float32)
            return xp.from_numpy(a) if xp.__name__ == "torch" else a

        # The same tensors vLLM's FusedMoE would hold (create_weights).
        self.w13_weight = param(num_experts, 2 * inter, hidden, scale=hidden**-0.5)
        self.w2_weight = param(num_experts, hidden, inter, scale=inter**-0.5)
        self.gate = param(n_logits, hidden, scale=hidden**-0.5)           # router: [E+Z, H]
        self.mask_head = param(num_experts, hidden, scale=hidden**-0.5) if beam_mask else None
        self.router = dynmoe.Router(num_experts=num_experts, top_k=top_k, score="softmax", norm="selected",
                                    num_zero_experts=num_zero_experts, zero_kind=zero_kind)
        # No copy: dynmoe keeps references to w13_weight / w2_weight.
        self.experts = dynmoe.Experts(self.w13_weight, self.w2_weight, act="swiglu")

    def router_logits(self, x):
        return x @ self.gate.T

    def forward(self, x):
        """x [T, H] -> out [T, H]: dynmoe routes (softmax top-k, renormalised),
        applies the BEAM mask and zero experts, runs only the experts with work."""
        logits = self.router_logits(x)
        mask_logits = x @ self.mask_head.T if self.mask_head is not None else None
        if self.xp.__name__ == "numpy":  # a matmul result of numpy is contiguous already
            logits = np.ascontiguousarray(logits)
            mask_logits = None if mask_logits is None else np.ascontiguousarray(mask_logits)
        else:
            logits = logits.contiguous()
            mask_logits = None if mask_logits is None else mask_logits.contiguous()
        return dynmoe.moe_forward(x, logits, self.router, self.experts, mask_logits=mask_logits)

    def forward_with_own_routing(self, x, topk_weights, topk_ids):
        """The drop-in for fused_experts(x, w13, w2, topk_weights, topk_ids)
        when the framework keeps its own select_experts."""
        return dynmoe.experts_forward(x, topk_ids, topk_weights, self.router, self.experts)


def to_np(a):
    return a.numpy() if hasattr(a, "numpy") and not isinstance(a, np.ndarray) else np.asarray(a)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["torch", "numpy"], default=None)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args(argv)
    backend = args.backend
    if backend is None:
        try:
            import torch  # noqa: F401
            backend = "torch"
        except ImportError:
            backend = "numpy"
    if backend == "torch":
        import torch as xp
    else:
        xp = np
    E, K, H, I, T = 8, 2, 64, 32, args.tokens
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((T, H)).astype(np.float32)
    x = xp.from_numpy(x_np) if backend == "torch" else x_np
    print(f"dynmoe {dynmoe.__version__} (lib {dynmoe.version()}), backend {backend}, T={T} E={E} K={K} H={H} I={I}")

    # 1. Plain FusedMoE: vLLM's select_experts + fused_experts, swapped for dynmoe.
    layer = DynmoeFusedMoE(xp, E, K, H, I)
    logits = to_np(layer.router_logits(x))
    topk_w, topk_ids = select_experts_softmax_topk(logits, K)
    want = naive_fused_experts(x_np, to_np(layer.w13_weight), to_np(layer.w2_weight), topk_w, topk_ids)
    if backend == "torch":
        tw, ti = xp.from_numpy(topk_w), xp.from_numpy(topk_ids)
    else:
        tw, ti = topk_w, topk_ids
    got_table = layer.forward_with_own_routing(x, tw, ti)      # framework's routing table
    got_layer = layer.forward(x)                               # dynmoe routes too
    e1, e2 = rel_err(to_np(got_table), want), rel_err(to_np(got_layer), want)
    print(f"fused_experts -> dynmoe.experts_forward: rel err {e1:.2e}; dynmoe.moe_forward: {e2:.2e}")
    assert e1 < 1e-5 and e2 < 1e-5
    assert layer.experts.w13 is layer.w13_weight  # the same tensor, no copy

    # 2. BEAM: a mask head drops routed slots whose mask logit is <= 0.
    beam = DynmoeFusedMoE(xp, E, K, H, I, beam_mask=True, seed=2)
    out, st = dynmoe.moe_forward(x, beam.router_logits(x), beam.router, beam.experts,
                                 mask_logits=x @ beam.mask_head.T, stats=True)
    print(f"BEAM mask head: {st['routed_slots']} of {T * K} slots computed, {st['empty_slots']} dropped, "
          f"{st['active_experts']} experts active")

    # 3. Zero-computation experts (LongCat-Flash style identity experts): 4 extra
    #    gate outputs; slots routed there cost no GEMM and add w * x.
    zero = DynmoeFusedMoE(xp, E, K, H, I, num_zero_experts=4, zero_kind="identity", seed=3)
    out, st = dynmoe.moe_forward(x, zero.router_logits(x), zero.router, zero.experts, stats=True)
    ids, w = dynmoe.route(zero.router_logits(x), zero.router)
    want = naive_fused_experts(x_np, to_np(zero.w13_weight), to_np(zero.w2_weight), to_np(w), to_np(ids),
                               zero_kind="identity", num_experts=E)
    err = rel_err(to_np(out), want)
    print(f"zero experts: {st['zero_expert_slots']} of {T * K} slots were identity experts; rel err {err:.2e}")
    assert err < 1e-5

    if backend == "torch":
        # 4. The custom op under torch.compile (what a vLLM model's forward is).
        import torch
        compiled = torch.compile(lambda x: layer.forward(x), fullgraph=True)
        err = rel_err(to_np(compiled(x)), to_np(got_layer))
        print(f"torch.compile(layer.forward): rel err vs eager {err:.2e}")
        assert err == 0.0
    print("ok")


if __name__ == "__main__":
    main()
