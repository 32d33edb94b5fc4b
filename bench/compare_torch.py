#!/usr/bin/env python3
"""compare_torch.py — dynmoe's expert layer against PyTorch on a GPU, timed in the same run.

For each preset and token count T it builds random bf16 weights in vLLM's FusedMoE layout
(w13 [E, 2I, H], w2 [E, H, I]), routes with softmax top-K renormalised (torch), and times

  dynmoe        dynmoe_experts_forward through ctypes on build/libdynmoe.so (plan, experts,
                combine; the routing table comes from torch so that every path computes the
                same function)
  dynmoe+route  dynmoe_moe_forward (route, plan, experts, combine) from the logits
  grouped_mm    torch._grouped_mm: argsort by expert, gather, two grouped GEMMs, SwiGLU, index_add
  eager         the Hugging Face loop over the experts that received tokens
  dense         cuBLAS (torch.mm) on the same FLOPs as one dense GEMM pair: the compute ceiling

with CUDA events (median of --iters after --warmup), and prints a table: times, ratios,
TFLOP/s on the active FLOPs, GB/s on the weight bytes of the active experts and the fraction of
the measured device-to-device copy bandwidth, and the relative error ||out - ref|| / ||ref|| of
dynmoe against grouped_mm (bf16) and against an fp32 eager reference.

  python3 bench/compare_torch.py                         # both presets, T = 1 16 64 512 4096
  python3 bench/compare_torch.py --preset qwen3 --tokens 1 4096 --graph
  python3 bench/compare_torch.py --lib build/libdynmoe.so --json out.jsonl
"""
import argparse
import ctypes
import json
import os
import statistics
import sys

PRESETS = {
    # name: (E, K, H, I)
    "qwen3-30b-a3b": (128, 8, 2048, 768),
    "deepseek-v3": (256, 8, 7168, 2048),
}
ALIASES = {"qwen3": "qwen3-30b-a3b", "deepseek": "deepseek-v3", "dsv3": "deepseek-v3"}

# ---------------------------------------------------------------- the C API through ctypes

DYNMOE_BACKEND_CUDA = 1
DYNMOE_F32, DYNMOE_F16, DYNMOE_BF16 = 0, 1, 2
DYNMOE_SCORE_SOFTMAX = 0
DYNMOE_SELECT_TOPK = 0
DYNMOE_NORM_SELECTED = 1
DYNMOE_ZERO_OUTPUT = 0
DYNMOE_ACT_SWIGLU = 0


class Router(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("num_experts", ctypes.c_int32),
        ("num_zero_experts", ctypes.c_int32),
        ("zero_kind", ctypes.c_int),
        ("top_k", ctypes.c_int32),
        ("score", ctypes.c_int),
        ("select", ctypes.c_int),
        ("top_p", ctypes.c_float),
        ("threshold", ctypes.c_float),
        ("num_groups", ctypes.c_int32),
        ("topk_groups", ctypes.c_int32),
        ("norm", ctypes.c_int),
        ("scale", ctypes.c_float),
        ("num_tasks", ctypes.c_int32),
        ("top_tasks", ctypes.c_int32),
    ]


class Experts(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("num_experts", ctypes.c_int32),
        ("hidden", ctypes.c_int32),
        ("inter", ctypes.c_int32),
        ("dtype", ctypes.c_int),
        ("act", ctypes.c_int),
        ("w13", ctypes.c_void_p),
        ("w2", ctypes.c_void_p),
    ]


class Dynmoe:
    def __init__(self, path):
        self.lib = lib = ctypes.CDLL(path)
        vp, i32, i64, sz = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t
        lib.dynmoe_last_error.restype = ctypes.c_char_p
        lib.dynmoe_status_name.restype = ctypes.c_char_p
        lib.dynmoe_status_name.argtypes = [ctypes.c_int]
        lib.dynmoe_ctx_create.restype = ctypes.c_int
        lib.dynmoe_ctx_create.argtypes = [ctypes.POINTER(vp), ctypes.c_int, ctypes.c_int]
        lib.dynmoe_ctx_destroy.restype = None
        lib.dynmoe_ctx_destroy.argtypes = [vp]
        lib.dynmoe_workspace_size.restype = sz
        lib.dynmoe_workspace_size.argtypes = [ctypes.POINTER(Router), ctypes.POINTER(Experts), i64]
        lib.dynmoe_experts_forward.restype = ctypes.c_int
        lib.dynmoe_experts_forward.argtypes = [vp, ctypes.POINTER(Router), ctypes.POINTER(Experts), i64,
                                               vp, vp, vp, i32, vp, vp, sz, vp]
        lib.dynmoe_moe_forward.restype = ctypes.c_int
        lib.dynmoe_moe_forward.argtypes = [vp, ctypes.POINTER(Router), ctypes.POINTER(Experts), i64,
                                           vp, vp, ctypes.c_int, vp, vp, vp, vp, sz, vp]
        self.ctx = vp()

    def check(self, status, what):
        if status != 0:
            name = self.lib.dynmoe_status_name(status).decode()
            raise RuntimeError(f"{what}: {name}: {self.lib.dynmoe_last_error().decode()}")

    def create(self, device):
        self.check(self.lib.dynmoe_ctx_create(ctypes.byref(self.ctx), DYNMOE_BACKEND_CUDA, device),
                   "dynmoe_ctx_create")

    def destroy(self):
        if self.ctx:
            self.lib.dynmoe_ctx_destroy(self.ctx)
            self.ctx = ctypes.c_void_p()


def make_router(E, K):
    r = Router()
    r.struct_size = ctypes.sizeof(Router)
    r.num_experts, r.num_zero_experts, r.zero_kind = E, 0, DYNMOE_ZERO_OUTPUT
    r.top_k, r.score, r.select = K, DYNMOE_SCORE_SOFTMAX, DYNMOE_SELECT_TOPK
    r.top_p, r.threshold = 1.0, 0.0
    r.num_groups, r.topk_groups = 0, 0
    r.norm, r.scale = DYNMOE_NORM_SELECTED, 1.0
    r.num_tasks, r.top_tasks = 0, 0
    return r


def make_experts(E, H, I, w13, w2):
    ex = Experts()
    ex.struct_size = ctypes.sizeof(Experts)
    ex.num_experts, ex.hidden, ex.inter = E, H, I
    ex.dtype, ex.act = DYNMOE_BF16, DYNMOE_ACT_SWIGLU
    ex.w13, ex.w2 = w13.data_ptr(), w2.data_ptr()
    return ex


# ---------------------------------------------------------------- torch paths


# torch_route, grouped_mm_layer, eager_layer, dense_inputs/dense_pair, rel_err: bench/moe_peers.py,
# shared with bench/compare_frameworks.py (the CPU peers) so that both scripts time the same functions.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moe_peers import dense_inputs, dense_pair, eager_layer, grouped_mm_layer, rel_err, torch_route  # noqa: E402


# ---------------------------------------------------------------- timing


def time_ms(torch, fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), (max(times) - min(times))


def copy_bandwidth(torch, warmup, iters):
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.fill_(1)
    ms, _ = time_ms(torch, lambda: b.copy_(a), warmup, iters)
    return 2 * n / (ms * 1e-3) / 1e9  # GB/s, bytes read + written


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build",
                                                  "libdynmoe.so"))
    ap.add_argument("--preset", nargs="*", default=list(PRESETS))
    ap.add_argument("--tokens", nargs="*", type=int, default=[1, 16, 64, 512, 4096])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--graph", action="store_true", help="also time dynmoe replayed from a CUDA graph")
    ap.add_argument("--no-eager", action="store_true", help="skip the eager loop (slow at large E)")
    ap.add_argument("--no-ref", action="store_true", help="skip the fp32 reference")
    ap.add_argument("--json", default=None, help="append one JSON line per row to this file")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("compare_torch: no CUDA device", file=sys.stderr)
        return 2
    torch.cuda.set_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    dev_name = torch.cuda.get_device_name(args.device)
    has_gmm = hasattr(torch, "_grouped_mm")

    dm = Dynmoe(os.path.abspath(args.lib))
    dm.create(args.device)
    bw = copy_bandwidth(torch, args.warmup, args.iters)
    print(f"# device {dev_name}, torch {torch.__version__}, copy bandwidth {bw:.0f} GB/s, lib {args.lib}")

    rows = []
    gen = torch.Generator(device="cuda")
    gen.manual_seed(args.seed)
    for name in args.preset:
        name = ALIASES.get(name, name)
        E, K, H, I = PRESETS[name]
        # weights ~ N(0, 1/fan_in) so that activations stay O(1)
        w13 = torch.empty(E, 2 * I, H, dtype=torch.bfloat16, device="cuda")
        w2 = torch.empty(E, H, I, dtype=torch.bfloat16, device="cuda")
        for e0 in range(0, E, 16):  # in chunks: DeepSeek-V3's fp32 temporaries would be 45 GB
            e1 = min(E, e0 + 16)
            w13[e0:e1] = torch.randn(e1 - e0, 2 * I, H, device="cuda", generator=gen) * H ** -0.5
            w2[e0:e1] = torch.randn(e1 - e0, H, I, device="cuda", generator=gen) * I ** -0.5
        router = make_router(E, K)
        experts = make_experts(E, H, I, w13, w2)
        for T in args.tokens:
            x = torch.randn(T, H, device="cuda", generator=gen).to(torch.bfloat16)
            logits = torch.randn(T, E, device="cuda", generator=gen).to(torch.bfloat16)
            ids, weights = torch_route(torch, logits, K)
            ws_bytes = dm.lib.dynmoe_workspace_size(ctypes.byref(router), ctypes.byref(experts), T)
            if ws_bytes == 0:
                raise RuntimeError("dynmoe_workspace_size: " + dm.lib.dynmoe_last_error().decode())
            ws = torch.empty(ws_bytes, dtype=torch.uint8, device="cuda")
            out = torch.empty(T, H, dtype=torch.bfloat16, device="cuda")
            out_r = torch.empty_like(out)

            def run_dm():
                st = torch.cuda.current_stream().cuda_stream
                dm.check(dm.lib.dynmoe_experts_forward(dm.ctx, ctypes.byref(router), ctypes.byref(experts), T,
                                                       x.data_ptr(), ids.data_ptr(), weights.data_ptr(), K,
                                                       out.data_ptr(), ws.data_ptr(), ws_bytes, st),
                         "dynmoe_experts_forward")

            def run_dm_route():
                st = torch.cuda.current_stream().cuda_stream
                dm.check(dm.lib.dynmoe_moe_forward(dm.ctx, ctypes.byref(router), ctypes.byref(experts), T,
                                                   x.data_ptr(), logits.data_ptr(), DYNMOE_BF16, None, None,
                                                   out_r.data_ptr(), ws.data_ptr(), ws_bytes, st),
                         "dynmoe_moe_forward")

            # correctness first: poison, run once, compare
            out.fill_(float("nan"))
            run_dm()
            torch.cuda.synchronize()
            ref_gmm = grouped_mm_layer(torch, F, x, ids, weights, w13, w2) if has_gmm else None
            ref32 = None if args.no_ref else eager_layer(torch, F, x, ids, weights, w13, w2, torch.float32)
            err_gmm = rel_err(torch, out, ref_gmm) if ref_gmm is not None else float("nan")
            err_32 = rel_err(torch, out, ref32) if ref32 is not None else float("nan")
            out_r.fill_(float("nan"))
            run_dm_route()
            torch.cuda.synchronize()
            err_route = rel_err(torch, out_r, out)  # same routing rule: should be ~0

            t_dm, spread_dm = time_ms(torch, run_dm, args.warmup, args.iters)
            t_dm_route, _ = time_ms(torch, run_dm_route, args.warmup, args.iters)
            t_graph = float("nan")
            if args.graph:
                g = torch.cuda.CUDAGraph()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    run_dm()  # warm (cudaFuncSetAttribute etc.) outside the capture
                torch.cuda.current_stream().wait_stream(s)
                with torch.cuda.graph(g):
                    run_dm()
                t_graph, _ = time_ms(torch, g.replay, args.warmup, args.iters)
            t_gmm = float("nan")
            if has_gmm:
                t_gmm, _ = time_ms(torch, lambda: grouped_mm_layer(torch, F, x, ids, weights, w13, w2),
                                   args.warmup, args.iters)
            t_eager = float("nan")
            if not args.no_eager:
                t_eager, _ = time_ms(torch, lambda: eager_layer(torch, F, x, ids, weights, w13, w2),
                                     max(1, args.warmup // 2), max(3, args.iters // 4))
            # dense cuBLAS at equal FLOPs: [R, H] x [H, 2I] and [R, I] x [I, H]
            R = T * K
            xa, ha = dense_inputs(torch, T, K, H, I, torch.bfloat16, "cuda", gen)
            t_dense, _ = time_ms(torch, lambda: dense_pair(torch, xa, ha, w13[0], w2[0]), args.warmup, args.iters)

            active = int(torch.unique(ids).numel())
            flops = 2.0 * R * 3 * H * I
            wbytes = active * 3.0 * H * I * 2
            row = {
                "device": dev_name, "preset": name, "T": T, "E": E, "K": K, "H": H, "I": I,
                "active_experts": active,
                "dynmoe_ms": t_dm, "dynmoe_spread_ms": spread_dm, "dynmoe_route_ms": t_dm_route,
                "dynmoe_graph_ms": t_graph, "grouped_mm_ms": t_gmm, "eager_ms": t_eager, "dense_ms": t_dense,
                "tflops": flops / (t_dm * 1e-3) / 1e12, "weight_gbs": wbytes / (t_dm * 1e-3) / 1e9,
                "copy_gbs": bw, "err_vs_grouped_mm": err_gmm, "err_vs_fp32": err_32,
                "err_route_vs_table": err_route,
            }
            rows.append(row)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            del ws, xa, ha
            torch.cuda.empty_cache()
        del w13, w2
        torch.cuda.empty_cache()
    dm.destroy()

    def ratio(a, b):
        return a / b if b == b and a == a and b > 0 else float("nan")

    hdr = (f"{'preset':<14} {'T':>5} {'act':>4} {'dynmoe':>9} {'+route':>9} {'graph':>9} {'grp_mm':>9} "
           f"{'eager':>9} {'dense':>9} {'gmm/dm':>7} {'eag/dm':>7} {'dns/dm':>7} {'TFLOP/s':>8} {'GB/s':>7} "
           f"{'bw%':>5} {'err_gmm':>8} {'err_f32':>8}")
    print(hdr)
    print("-" * len(hdr))
    bad = 0
    for r in rows:
        print(f"{r['preset']:<14} {r['T']:>5} {r['active_experts']:>4} {r['dynmoe_ms']:>9.4f} "
              f"{r['dynmoe_route_ms']:>9.4f} {r['dynmoe_graph_ms']:>9.4f} {r['grouped_mm_ms']:>9.4f} "
              f"{r['eager_ms']:>9.4f} {r['dense_ms']:>9.4f} {ratio(r['grouped_mm_ms'], r['dynmoe_ms']):>7.2f} "
              f"{ratio(r['eager_ms'], r['dynmoe_ms']):>7.2f} {ratio(r['dense_ms'], r['dynmoe_ms']):>7.2f} "
              f"{r['tflops']:>8.1f} {r['weight_gbs']:>7.0f} {100 * r['weight_gbs'] / r['copy_gbs']:>5.0f} "
              f"{r['err_vs_grouped_mm']:>8.1e} {r['err_vs_fp32']:>8.1e}")
        for key in ("err_vs_grouped_mm", "err_vs_fp32"):
            v = r[key]
            if v != v and key == "err_vs_fp32" and args.no_ref:
                continue
            if v != v and key == "err_vs_grouped_mm" and not has_gmm:
                continue
            if not (v < 1e-2):
                bad += 1
    print(f"# times in ms (median of {args.iters}); ratios > 1 mean dynmoe is faster; bw% = weight GB/s of the "
          f"active experts over the copy bandwidth; err = ||dynmoe - ref|| / ||ref|| (bf16 limit 1e-2)")
    print(f"# {'FAIL' if bad else 'OK'}: {bad} rows over the error limit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
