"""dynmoe inside Hugging Face transformers (CPU, f32), against the installed
package's own eager code:

* every experts class decorated with @use_experts_implementation, built from
  its model's config shrunk to a tiny size: experts_implementation="dynmoe"
  matches "eager" within 1e-5 (relative), or raises NotImplementedError
  naming the class and what dynmoe lacks;
* tiny Qwen3-MoE and DeepSeek-V3 models (random weights): identical greedy
  tokens with "eager", with from_config(experts_implementation="dynmoe") and
  after patch(model), eager and under torch.compile;
* patch(model) on every router family of dynmoe.integrations.transformers.ROUTERS
  gives the eager logits within 1e-5, and refuses a block it cannot express.

Skipped when transformers is not installed.
"""
import importlib
import pathlib
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import dynmoe.integrations.transformers as dmt  # noqa: E402
import tiny_models  # noqa: E402

TOL = 1e-5
MODELS = pathlib.Path(transformers.__file__).parent / "models"
DECORATED = re.compile(r"^@use_experts_implementation(?:\([^)]*\))?\s*\nclass (\w+)", re.M)

# Config fields set to tiny values wherever a config has them.
TINY = dict(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, expert_intermediate_size=32,
            moe_ffn_hidden_size=32, expert_ffn_hidden_size=32, ffn_hidden_size=32, num_experts=8,
            num_local_experts=8, n_routed_experts=8, moe_num_experts=8, num_experts_per_tok=2, moe_topk=2,
            top_k=2)


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def decorated_classes():
    """(model folder, class name) of every decorated experts class."""
    out = []
    for f in sorted(MODELS.glob("*/modeling_*.py")):
        for cls in DECORATED.findall(f.read_text()):
            out.append((f.parent.name, f.stem, cls))
    return out


# Configs whose MoE sizes default to None (MoE off): switched on with tiny sizes.
MOE_ON = {"gemma4": dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=32)}


def tiny_config(folder):
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[folder]
    default = cls()
    try:  # sizes given to the constructor reach derived fields (e.g. num_local_experts)
        cfg = cls(**{k: v for k, v in TINY.items() if hasattr(default, k)})
    except Exception:
        cfg = default
    subs, todo = [], [cfg]
    while todo:  # the config and its sub-configs (text_config, thinker_config.text_config, ...)
        c = todo.pop(0)
        subs.append(c)
        todo += [v for k, v in vars(c).items() if isinstance(v, transformers.PretrainedConfig) and v not in subs]
    for c in subs:
        if folder in MOE_ON and hasattr(c, "enable_moe_block"):
            for k, v in MOE_ON[folder].items():
                setattr(c, k, v)
        for k, v in TINY.items():
            if hasattr(c, k) and isinstance(getattr(c, k), int) and not isinstance(getattr(c, k), bool):
                setattr(c, k, v)
    return subs


def build_experts(folder, module, cls_name):
    mod = importlib.import_module(f"transformers.models.{folder}.{module}")
    cls = getattr(mod, cls_name)
    last = None
    for cfg in tiny_config(folder)[::-1]:
        try:
            torch.manual_seed(0)
            experts = cls(cfg)
        except Exception as e:  # this sub-config is not the experts' one
            last = e
            continue
        if getattr(experts, "down_proj", None) is None or experts.down_proj.numel() > 2_000_000:
            continue
        return experts.float().eval()
    raise RuntimeError(f"{cls_name}: no tiny config builds it ({last!r})")


def test_every_decorated_experts_class():
    dmt.register()
    classes = decorated_classes()
    assert len(classes) > 20, classes
    matched, refused, unbuilt = {}, {}, {}
    for folder, module, cls_name in classes:
        try:
            experts = build_experts(folder, module, cls_name)
        except Exception as e:
            unbuilt[cls_name] = repr(e)[:120]
            continue
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in experts.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)
        e = experts.down_proj.shape[0]
        h = experts.down_proj.shape[1] if not getattr(experts, "is_transposed", False) else experts.down_proj.shape[2]
        t, k = 13, 2
        x = torch.randn(t, h, generator=g)
        ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)])
        w = torch.rand(t, k, generator=g)
        experts.config._experts_implementation = "eager"
        with torch.no_grad():
            ref = experts(x, ids, w)
        experts.config._experts_implementation = dmt.NAME
        try:
            with torch.no_grad():
                got = experts(x, ids, w)
        except NotImplementedError as err:
            assert cls_name in str(err) and "dynmoe lacks" in str(err), err
            refused[cls_name] = str(err).split("dynmoe lacks ")[-1]
            continue
        err = rel_err(got, ref)
        assert err < TOL, f"{cls_name}: rel err {err:.2e}"
        matched[cls_name] = err
    print(f"\n{len(matched)} experts classes match eager (max rel err {max(matched.values()):.1e}), "
          f"{len(refused)} refused, {len(unbuilt)} not built from a tiny config")
    for c, why in sorted(refused.items()):
        print(f"  refused {c}: dynmoe lacks {why}")
    for c, why in sorted(unbuilt.items()):
        print(f"  not built {c}: {why}")
    for c in ("Qwen3MoeExperts", "MixtralExperts", "DeepseekV3Experts", "OlmoeExperts", "Qwen2MoeExperts",
              "Glm4MoeExperts", "Dots1Experts", "MiniMaxExperts", "GraniteMoeExperts"):
        assert c in matched, (c, refused.get(c), unbuilt.get(c))
    # issue 15: biases + interleaved clamped SwiGLU (gpt-oss), non-gated relu2 (Nemotron-H), GELU tanh (Gemma-4)
    for c in ("GptOssExperts", "OpenAIPrivacyFilterExperts", "MiniMaxM3VLExperts", "NemotronHExperts",
              "Gemma4TextExperts"):
        assert c in matched, (c, refused.get(c), unbuilt.get(c))
    assert not any("bias" in why or "non-gated" in why for why in refused.values()), refused


@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3"])
def test_full_model_greedy_tokens(name):
    dmt.register()
    prompt = torch.tensor([[3, 17, 99, 5, 42, 7, 120, 64]])
    model = tiny_models.build(name)
    model.set_experts_implementation("eager")
    ref = model.generate(prompt, max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        ref_logits = model(prompt).logits

    torch.manual_seed(0)
    dm = transformers.AutoModelForCausalLM.from_config(tiny_models.config(name), experts_implementation=dmt.NAME,
                                                       dtype=torch.float32)
    dm.load_state_dict(model.state_dict())
    dm.eval()
    assert dm.config._experts_implementation == dmt.NAME
    assert torch.equal(dm.generate(prompt, max_new_tokens=8, do_sample=False), ref)

    dmt.patch(model)
    gates = [m for m in model.modules() if hasattr(m, "_dynmoe")]
    assert gates, "patch() routed no block"
    _, w, ids = gates[0](torch.randn(5, model.config.hidden_size))
    assert ids.dtype == torch.int32 and w.dtype == torch.float32  # chosen by dynmoe.route
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False), ref)
    with torch.no_grad():
        err = rel_err(model(prompt).logits, ref_logits)
    print(f"{name}: patch(model) logits rel err {err:.1e}")
    assert err < TOL

    compiled = torch.compile(model.forward, fullgraph=True)
    with torch.no_grad():
        err = rel_err(compiled(prompt).logits, ref_logits)
    print(f"{name}: compiled patch(model) logits rel err {err:.1e}")
    assert err < TOL


# model_type -> config overrides for a tiny model of every router family patch() knows
FAMILIES = {
    "qwen3_moe": {},
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32, norm_topk_prob=False),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2),
    "minimax": dict(num_local_experts=8, num_experts_per_tok=2, layer_types=["full_attention"] * 2),
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "deepseek_v3": {},
    "glm4_moe": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2,
                     topk_group=1, first_k_dense_replace=0, routed_scaling_factor=1.5, n_shared_experts=1),
    "dots1": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2, topk_group=1,
                  first_k_dense_replace=0, routed_scaling_factor=1.5, n_shared_experts=1),
    "longcat_flash": dict(n_routed_experts=8, zero_expert_num=4, moe_topk=3, expert_ffn_hidden_size=32,
                          ffn_hidden_size=64, routed_scaling_factor=2.0, kv_lora_rank=16, q_lora_rank=16,
                          qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8, num_layers=1,
                          num_key_value_heads=2),
    # issue 15. gpt-oss: biases, interleaved gate/up, swiglu_oai (limit 2 here, so that the clamps bite)
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=32, swiglu_limit=2.0,
                    layer_types=["sliding_attention", "full_attention"], sliding_window=16),
    # Llama-4: sigmoid top-1, the weight on the expert's input, a shared expert
    "llama4_text": dict(num_local_experts=8, num_experts_per_tok=1, intermediate_size=32, intermediate_size_mlp=64,
                        interleave_moe_layer_step=1),
    # Gemma-4: per_expert_scale, GELU tanh, the router on a normed copy of x
    "gemma4_text": dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=32,
                        layer_types=["sliding_attention", "full_attention"], sliding_window=16),
    # Nemotron-H: non-gated relu2 experts, DeepSeek-V3-style router, one attention and one MoE layer
    "nemotron_h": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                       moe_shared_expert_intermediate_size=32, n_group=2, topk_group=1, routed_scaling_factor=1.5,
                       layers_block_type=["full_attention", "moe"]),
}
ISSUE15 = ("gpt_oss", "llama4_text", "gemma4_text", "nemotron_h")


def family_model(model_type, dtype=torch.float32):
    from transformers import AutoConfig

    base = {k: v for k, v in tiny_models.CONFIGS["qwen3_moe"].items() if k not in ("model_type", "architectures")}
    for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
              "decoder_sparse_step", "mlp_only_layers"):
        base.pop(k, None)
    if model_type == "deepseek_v3":
        return tiny_models.build("deepseek_v3")
    if model_type == "qwen3_moe":
        return tiny_models.build("qwen3_moe")
    cfg = AutoConfig.for_model(model_type, **{**base, **FAMILIES[model_type]})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
        for n, p in model.named_parameters():  # 1-D routing parameters that start as ones or zeros
            if n.endswith("per_expert_scale"):
                p.copy_(torch.rand(p.shape, generator=g) * 2)
            elif n.endswith("router.bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.to(dtype)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_patch_router_families(model_type):
    check_patch(model_type, torch.float32, TOL)


@pytest.mark.parametrize("model_type", ISSUE15)
def test_patch_issue15_families_bf16(model_type):
    # bf16: the first MoE block's output (its input is the same in both runs;
    # the whole model's logits differ from f32 by ~1e-2 already in eager bf16)
    check_patch(model_type, torch.bfloat16, 1e-2, first_block=True)


@pytest.mark.parametrize("model_type", ISSUE15)
def test_patch_issue15_families_compiled(model_type):
    # the new options travel as op arguments: torch.compile(fullgraph=True) traces them
    model = family_model(model_type)
    model.set_experts_implementation("eager")
    prompt = torch.tensor([[3, 17, 99, 5, 42, 7, 120, 64, 9, 33]])
    with torch.no_grad():
        ref = model(prompt).logits
    dmt.patch(model)
    compiled = torch.compile(model.forward, fullgraph=True)
    with torch.no_grad():
        err = rel_err(compiled(prompt).logits, ref)
    print(f"{model_type}: compiled patch(model) logits rel err {err:.1e}")
    assert err < TOL


def check_patch(model_type, dtype, tol, first_block=False):
    model = family_model(model_type, dtype)
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    prompt = torch.tensor([[3, 17, 99, 5, 42, 7, 120, 64, 9, 33]])
    seen = []
    if first_block:
        block = next(m for m in model.modules() if hasattr(m, "experts") and (hasattr(m, "gate") or hasattr(m, "router")))
        block.register_forward_hook(lambda mod, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        ref = model(prompt).logits
    dmt.patch(model)
    assert any(hasattr(m, "_dynmoe") for m in model.modules())
    with torch.no_grad():
        got = model(prompt).logits
    what = "logits"
    if first_block:
        ref, got, what = seen[0], seen[len(seen) // 2], f"{type(block).__name__} output"
    err = rel_err(got.float(), ref.float())
    print(f"{model_type} {dtype}: patch(model) {what} rel err {err:.1e}")
    assert err < tol


def test_patch_refuses_what_it_cannot_express():
    model = family_model("qwen3_moe")
    block = next(m for m in model.modules() if type(m).__name__ == "Qwen3MoeSparseMoeBlock")

    class HashRouter(torch.nn.Module):
        weight = block.gate.weight

    block.gate = HashRouter()
    with pytest.raises(NotImplementedError, match="Qwen3MoeSparseMoeBlock .* HashRouter"):
        dmt.patch(model)
    assert not any(hasattr(m, "_dynmoe") for m in model.modules())  # nothing changed
