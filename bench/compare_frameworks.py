"""One Qwen3-30B-A3B-shaped MoE layer (E 128, K 8, H 2048, I 768, SwiGLU) on the
CPU through dynmoe and its peers, side by side in one run (issue 17, Deliver 4).

The peers, all on the same weights (vLLM's FusedMoE layout, w13 [E, 2I, H],
w2 [E, H, I]) and the same routing table (softmax, top-K, renormalised, from
one set of random logits):

  dynmoe        dynmoe.experts_forward (the Python API; out and workspace
                allocated once, outside the timing)
  dynmoe+pack   the same on pre-packed weights, when dynmoe exposes packing
                (Experts.pack, run on the "onednn" CPU path); otherwise skipped with the reason
  eager         the Hugging Face/transformers loop over the experts that got
                tokens (index_select, two matmuls, SwiGLU, index_add_), in the
                run's dtype (bench/moe_peers.py, shared with compare_torch.py)
  dense         torch.mm at equal FLOPs: one dense GEMM pair on the active
                rows (the compute ceiling; its output is not the layer's)
  vllm          vLLM's CPUUnquantizedExperts (torch.ops._C.cpu_fused_moe,
                isa "vec", on its prepacked weights: the class vLLM picks on a
                CPU without AMX), through FusedMoEExpertsModular.apply
  dynmoe-vllm   the dynmoe vLLM plugin's DynmoeExperts through the same apply
                (torch.ops.dynmoe.experts_forward_out on the weights as loaded)
  vllm-amx      vLLM's X86CPUUnquantizedExperts (cpu_fused_moe, isa "amx", on
                its AMX-prepacked weights), bf16 only, where the CPU has AMX;
                otherwise "skipped: no AMX on this CPU (<model>)"

The vLLM rows need vLLM (build-py/venv-vllm, scripts/test-frameworks.sh);
without it they are skipped with the reason and the others run. Rows are
measured round-robin (every peer once per repeat, so machine noise hits all),
after one warm-up round, medians [min, max]. Per row: the time, the ratio
peer/dynmoe (> 1: dynmoe is faster), GFLOP/s on the active FLOPs (2*T*K*3*H*I),
the fraction of dense (dense time / peer time) and the relative error
||out - ref|| / ||ref|| against a float64 reference (the eager loop on the
run's rounded inputs and weights upcast to float64; float64 rather than fp32
so that the fp32 eager peer is not its own reference). The run fails (exit 1)
when a peer's error is over the dtype's limit (f32 1e-4, bf16 2e-2).

    build-py/venv-vllm/bin/python bench/compare_frameworks.py [--tokens 1,16,128,512,2048] [--dtypes f32,bf16]
    python bench/compare_frameworks.py --smoke            # tiny shape, seconds (the test)
    python bench/compare_frameworks.py --shape 16,4,128,64 --tokens 1,33 --json rows.jsonl

CPU only (compare_torch.py is the GPU comparison).
"""
import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moe_peers import active_flops, dense_inputs, dense_pair, eager_layer, rel_err, torch_route  # noqa: E402

QWEN3 = (128, 8, 2048, 768)  # E, K, H, I
SMOKE = (16, 4, 128, 64)
LIMIT = {"f32": 1e-4, "bf16": 2e-2}
PEERS = ("dynmoe", "dynmoe+pack", "eager", "dense", "vllm", "dynmoe-vllm", "vllm-amx")


def cpu_model():
    """The model name, with CPUID family and model (a virtual machine's name can be bare, "AMD EPYC")."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
            if not line.strip():
                break  # the first processor is enough
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    return name


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_amx(torch, flags):
    """AMX-BF16 tiles: the CPU flag, and torch's own check (the one vLLM uses)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "amx_bf16" in flags and (check is None or bool(check()))


def commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"



@contextlib.contextmanager
def cpu_path(name):
    """DYNMOE_CPU_ISA=name for the calls inside (dynmoe reads it at every call)."""
    old = os.environ.get("DYNMOE_CPU_ISA")
    os.environ["DYNMOE_CPU_ISA"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["DYNMOE_CPU_ISA"]
        else:
            os.environ["DYNMOE_CPU_ISA"] = old


def dynmoe_cpu_isa(dynmoe):
    """dynmoe's CPU path: dynmoe.cpu_isa() when the package has it, else the C dynmoe_cpu_isa()
    of the libdynmoe the package loaded."""
    if hasattr(dynmoe, "cpu_isa"):
        return str(dynmoe.cpu_isa())
    folder = os.path.dirname(dynmoe.__file__)
    for name in sorted(os.listdir(folder)):
        if name.startswith("libdynmoe.so"):
            fn = ctypes.CDLL(os.path.join(folder, name)).dynmoe_cpu_isa
            fn.restype = ctypes.c_char_p
            return fn().decode()
    return "unknown (no libdynmoe.so next to the package)"


def vllm_or_reason():
    try:
        import vllm  # noqa: F401
        from vllm.model_executor.layers.fused_moe.experts import cpu_moe  # noqa: F401
        return vllm, None
    except Exception as e:  # ImportError, or a vLLM that is not the CPU build
        return None, f"vLLM not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


class Peer:
    """One timed peer: fn() writes the peer's output (out, or None for dense)."""

    def __init__(self, name, fn, out=None, skip=None):
        self.name, self.fn, self.out, self.skip = name, fn, out, skip
        self.times = []


def skipped(name, reason):
    return Peer(name, None, skip=reason)


def vllm_peers(torch, shape, dtype, w13, w2, amx, model):
    """vLLM's experts, the dynmoe plugin's and vLLM's AMX experts, each as apply(output, x, ...)
    on its own weights. Returns [(name, experts, w13, w2) or (name, None, reason)]."""
    E, K, H, I = shape
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import (FusedMoEConfig, FusedMoEParallelConfig,
                                                             FusedMoEQuantConfig, RoutingMethodType)
    from vllm.model_executor.layers.fused_moe.experts import cpu_moe

    from dynmoe.integrations import vllm as plugin

    cfg = FusedMoEConfig(num_experts=E, experts_per_token=K, hidden_dim=H, intermediate_size=I,
                         num_local_experts=E, num_logical_experts=E, activation=MoEActivation.SILU, device="cpu",
                         routing_method=RoutingMethodType.RenormalizeNaive,
                         moe_parallel_config=FusedMoEParallelConfig.make_no_parallel(), in_dtype=dtype,
                         intermediate_size_per_partition_unpadded=I, hidden_dim_unpadded=H)
    qc = FusedMoEQuantConfig.make()

    def prepacked(cls):
        layer = torch.nn.Module()  # what vLLM's experts prepack into (a copy in their own layout)
        layer.w13_weight = torch.nn.Parameter(w13.clone(), requires_grad=False)
        layer.w2_weight = torch.nn.Parameter(w2.clone(), requires_grad=False)
        obj = cls(cfg, qc)
        obj.process_weights_after_loading(layer)
        return obj, layer.w13_weight, layer.w2_weight

    out = [("vllm", *prepacked(cpu_moe.CPUUnquantizedExperts)),
           ("dynmoe-vllm", plugin._classes()["modular"](cfg, qc), w13, w2)]
    amx_cls = getattr(cpu_moe, "X86CPUUnquantizedExperts", None)
    if not amx:
        out.append(("vllm-amx", None, f"skipped: no AMX on this CPU ({model})"))
    elif amx_cls is None:
        out.append(("vllm-amx", None, "skipped: this vLLM has no X86CPUUnquantizedExperts"))
    elif dtype != torch.bfloat16:
        out.append(("vllm-amx", None, "skipped: vLLM's AMX experts take bf16 only"))
    else:
        out.append(("vllm-amx", *prepacked(amx_cls)))
    return out


def build_peers(torch, F, dynmoe, vllm_reason, shape, dtype, w13, w2, x, ids, tw, wanted, amx, model, plant, cache):
    """The peers of one (dtype, T); cache keeps what is per dtype (vLLM's prepacked copies)."""
    E, K, H, I = shape
    T = x.shape[0]
    peers = []
    router = dynmoe.Router(num_experts=E, top_k=K, score="softmax", norm="selected")
    experts = dynmoe.Experts(w13, w2, act="swiglu")
    ws = torch.empty(dynmoe.workspace_size(router, experts, T), dtype=torch.uint8)

    def dm_peer(name, ex):
        out = torch.empty(T, H, dtype=dtype)
        return Peer(name, lambda: dynmoe.experts_forward(x, ids, tw, router, ex, out=out, workspace=ws), out)

    if "dynmoe" in wanted:
        peers.append(dm_peer("dynmoe", experts))
    if "dynmoe+pack" in wanted:
        if not hasattr(experts, "pack"):
            peers.append(skipped("dynmoe+pack", "skipped: this dynmoe has no Experts.pack (packing not exposed)"))
        else:
            try:
                packed = experts.pack()
            except Exception as e:  # no oneDNN in this build: DynmoeError (unsupported)
                peers.append(skipped("dynmoe+pack", f"skipped: Experts.pack failed: {e}"))
            else:
                # The packed weights run on the "onednn" CPU path only (the default on AMX
                # CPUs); DYNMOE_CPU_ISA is read at every call, so this peer selects it for its own
                # calls and the others keep the CPU's default path.
                out_p = torch.empty(T, H, dtype=dtype)
                with cpu_path("onednn"):
                    ws_p = torch.empty(dynmoe.workspace_size(router, packed, T), dtype=torch.uint8)

                def run_packed():
                    with cpu_path("onednn"):
                        dynmoe.experts_forward(x, ids, tw, router, packed, out=out_p, workspace=ws_p)

                peers.append(Peer("dynmoe+pack", run_packed, out_p))
    for name in sorted(n for n in wanted if n.startswith("dynmoe@")):
        # dynmoe on one named CPU path (--peers dynmoe@avx2,dynmoe@avx512): the paths of one
        # build side by side, DYNMOE_CPU_ISA set around this peer's calls only
        isa = name.split("@", 1)[1]
        with cpu_path(isa):
            got = dynmoe_cpu_isa(dynmoe)
        if got != isa:
            peers.append(skipped(name, f"skipped: this CPU or build has no {isa} path (DYNMOE_CPU_ISA={isa} gives {got})"))
            continue
        out_i = torch.empty(T, H, dtype=dtype)

        def run_isa(isa=isa, out_i=out_i):
            with cpu_path(isa):
                dynmoe.experts_forward(x, ids, tw, router, experts, out=out_i, workspace=ws)

        peers.append(Peer(name, run_isa, out_i))
    if "eager" in wanted:
        pw2 = w2 * 1.5 if plant == "eager" else w2  # --plant eager: a wrong peer, for the test
        box = {}
        peers.append(Peer("eager", lambda: box.__setitem__("out", eager_layer(torch, F, x, ids, tw, w13, pw2)),
                          box))
    if "dense" in wanted:
        gen = torch.Generator().manual_seed(1000 + T)
        xa, ha = dense_inputs(torch, T, K, H, I, dtype, "cpu", gen)
        peers.append(Peer("dense", lambda: dense_pair(torch, xa, ha, w13[0], w2[0])))
    vnames = [n for n in ("vllm", "dynmoe-vllm", "vllm-amx") if n in wanted]
    if vnames and vllm_reason:
        peers += [skipped(n, f"skipped: {vllm_reason}") for n in vnames]
    elif vnames:
        from vllm.model_executor.layers.fused_moe.activation import MoEActivation
        args = dict(activation=MoEActivation.SILU, global_num_experts=E, expert_map=None, a1q_scale=None,
                    a2_scale=None, workspace13=None, workspace2=None, expert_tokens_meta=None,
                    apply_router_weight_on_input=False)
        if "vllm" not in cache:
            cache["vllm"] = vllm_peers(torch, shape, dtype, w13, w2, amx, model)
        for name, obj, *rest in cache["vllm"]:
            if name not in wanted:
                continue
            if obj is None:
                peers.append(skipped(name, rest[0]))
                continue
            vw13, vw2 = rest
            out = torch.empty(T, H, dtype=dtype)
            peers.append(Peer(name, (lambda o=obj, out=out, a=vw13, b=vw2: o.apply(out, x, a, b, tw, ids, **args)),
                              out))
    return peers


def output_of(p):
    if isinstance(p.out, dict):
        return p.out.get("out")
    return p.out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,16,128,512,2048")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shape", help="E,K,H,I (default Qwen3-30B-A3B: 128,8,2048,768)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"tiny run for the test: shape {','.join(map(str, SMOKE))}, T 1,5,33, 2 repeats")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="which peers to run (dynmoe always runs); dynmoe@PATH adds dynmoe on one CPU path")
    ap.add_argument("--plant", choices=["eager"], help="test only: the eager peer gets w2 x 1.5 (must fail)")
    ap.add_argument("--json", help="also write one JSON line per (dtype, T, peer) here")
    a = ap.parse_args()
    shape = QWEN3
    if a.smoke:
        shape, a.tokens, a.repeats = SMOKE, "1,5,33", 2
    if a.shape:
        shape = tuple(int(v) for v in a.shape.split(","))
    E, K, H, I = shape
    wanted = set(a.peers.split(",")) | {"dynmoe"}
    unknown = {n for n in wanted - set(PEERS) if not n.startswith("dynmoe@")}
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; known: {','.join(PEERS)}")

    import torch
    import torch.nn.functional as F

    import dynmoe

    vllm, vllm_reason = vllm_or_reason() if wanted & {"vllm", "dynmoe-vllm", "vllm-amx"} else (None, "not asked for")
    flags = cpu_flags()
    model = cpu_model()
    amx = has_amx(torch, flags)
    isa = dynmoe_cpu_isa(dynmoe)
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    load = os.getloadavg()
    rel_flags = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    print(f"# compare_frameworks: MoE layer E {E}, K {K}, H {H}, I {I} (SwiGLU), CPU peers in one run")
    print(f"# {model}, {os.cpu_count()} cores, flags {' '.join(rel_flags) or '-'}; "
          f"torch capability {torch.backends.cpu.get_cpu_capability()}, AMX {'yes' if amx else 'no'}")
    print(f"# torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"vLLM {vllm.__version__ if vllm else '- (' + vllm_reason + ')'}, "
          f"dynmoe {dynmoe.__version__} (lib {dynmoe.version()}, CPU path {isa}, "
          f"OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}), commit {commit()}")
    print(f"# load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median [min, max] of {a.repeats} round-robin "
          f"repeats after one warm-up round")
    print("# x dynmoe = peer time / dynmoe time (> 1: dynmoe is faster); GFLOP/s on the active FLOPs 2*T*K*3*H*I; "
          "of dense = dense time / peer time; rel = ||out - ref|| / ||ref||, ref = float64 eager loop")
    hdr = f"{'dtype':>5} {'T':>5} {'peer':<12} | {'ms':>29} | {'x dynmoe':>8} | {'GFLOP/s':>8} | {'of dense':>8} | {'rel':>8}"
    print(hdr)
    print("-" * len(hdr))
    rows, bad = [], []
    for dn in a.dtypes.split(","):
        dtype = dtypes[dn]
        g = torch.Generator().manual_seed(0)
        w13 = (torch.randn(E, 2 * I, H, generator=g) / H ** 0.5).to(dtype)
        w2 = (torch.randn(E, H, I, generator=g) / I ** 0.5).to(dtype)
        cache, said = {}, {}
        for t in (int(v) for v in a.tokens.split(",")):
            g = torch.Generator().manual_seed(t)
            x = torch.randn(t, H, generator=g).to(dtype)
            ids, tw = torch_route(torch, torch.randn(t, E, generator=g), K)
            peers = build_peers(torch, F, dynmoe, vllm_reason, shape, dtype, w13, w2, x, ids, tw, wanted, amx,
                                model, a.plant, cache)
            live = [p for p in peers if p.skip is None]
            for p in live:  # poison the outputs: a peer that writes nothing cannot pass
                o = output_of(p)
                if o is not None:
                    o.fill_(float("nan"))
            for rep in range(a.repeats + 1):  # the first round warms every peer up and is not counted
                for p in live:
                    t0 = time.perf_counter()
                    p.fn()
                    dt = time.perf_counter() - t0
                    if rep:
                        p.times.append(dt * 1e3)
            ref = eager_layer(torch, F, x, ids, tw, w13, w2, torch.float64)
            med = {p.name: statistics.median(p.times) for p in live}
            flops = active_flops(t, K, H, I)
            for p in peers:
                if p.skip:
                    if said.get(p.name) != p.skip:  # once per dtype, not on every T
                        print(f"{dn:>5} {t:>5} {p.name:<12} | {p.skip}")
                        said[p.name] = p.skip
                    rows.append(dict(dtype=dn, T=t, peer=p.name, skipped=p.skip))
                    continue
                o = output_of(p)
                rel = rel_err(torch, o, ref) if o is not None else None
                m = med[p.name]
                ratio = m / med["dynmoe"]
                gfs = flops / (m * 1e-3) / 1e9
                frac = med["dense"] / m if "dense" in med else float("nan")
                over = rel is not None and not (rel <= LIMIT[dn])
                if over:
                    bad.append(f"{dn} T {t} {p.name}: rel {rel:.1e} > {LIMIT[dn]:.0e}")
                cell = f"{m:10.3f} [{min(p.times):8.3f}, {max(p.times):8.3f}]"
                rs = "-" if rel is None else f"{rel:8.1e}"
                print(f"{dn:>5} {t:>5} {p.name:<12} | {cell:>29} | {ratio:7.2f}x | {gfs:8.1f} | {frac:8.2f} | {rs:>8}"
                      f"{'  OVER LIMIT' if over else ''}", flush=True)
                rows.append(dict(dtype=dn, T=t, peer=p.name, E=E, K=K, H=H, I=I, ms=p.times, median_ms=m,
                                 vs_dynmoe=ratio, gflops=gfs, of_dense=frac, rel=rel, cpu=model, cpu_isa=isa))
            del peers, live
        del w13, w2, cache
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    for b in bad:
        print(f"# FAIL: {b}")
    print(f"# {'FAIL' if bad else 'OK'}: {len(bad)} peer rows over the error limit (f32 1e-4, bf16 2e-2)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
