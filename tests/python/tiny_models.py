"""Tiny MoE checkpoints built from configs with random weights (no hub): the
models the vLLM and transformers tests, the examples and the framework
benchmark load from a local folder.

    path = tiny_models.write("qwen3_moe", folder)     # a folder vLLM / from_pretrained read

Two layers, hidden 64, 8-16 experts: seconds to build, to load and to run on
two CPU cores. The weights are drawn with a fixed seed and scaled so that
logits are not flat (greedy tokens are then not decided by ties).
"""
from __future__ import annotations

import json
import os
import pathlib

# Shared sizes: hidden 64 and moe_intermediate 32 are multiples of 32, which
# vLLM's own CPU experts need (so that both kernels can run the same layer).
_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
               tie_word_embeddings=False, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)

CONFIGS = {
    # softmax top-8 of 16, renormalised (norm_topk_prob), no shared expert
    "qwen3_moe": dict(_COMMON, model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"],
                      num_experts=16, num_experts_per_tok=4, moe_intermediate_size=32,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[]),
    # sigmoid + selection bias, 4 groups keep 2, renormalised, routed scale 2.5,
    # one shared expert, first layer dense
    "deepseek_v3": dict(_COMMON, model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
                        n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=32,
                        n_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                        norm_topk_prob=True, topk_method="noaux_tc", scoring_func="sigmoid",
                        first_k_dense_replace=1, moe_layer_freq=1, kv_lora_rank=512, q_lora_rank=None,
                        qk_rope_head_dim=64, qk_nope_head_dim=32, v_head_dim=32, num_key_value_heads=2, head_dim=64,
                        rope_scaling=None),  # vLLM's CPU MLA decode needs kv_lora_rank 512 + rope 64
}


def config(name, **overrides):
    from transformers import AutoConfig

    kw = dict(CONFIGS[name], **overrides)
    model_type = kw.pop("model_type")
    return AutoConfig.for_model(model_type, **kw)


def build(name, dtype="float32", seed=0, **overrides):
    """The model (random weights, eval mode) of a tiny config."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = config(name, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
        for n, b in list(model.named_parameters()) + list(model.named_buffers()):
            if n.endswith("e_score_correction_bias"):
                b.normal_(0.0, 0.3)  # a selection bias that changes which experts are chosen
    return model.eval()


def write(name, folder, dtype="float32", seed=0, **overrides):
    """Writes the tiny model to folder/name (safetensors + config.json) once
    and returns the path."""
    path = pathlib.Path(folder) / f"{name}-{dtype}-{seed}"
    if (path / "config.json").exists():
        return str(path)
    model = build(name, dtype=dtype, seed=seed, **overrides)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = dtype
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, path)
    return str(path)
