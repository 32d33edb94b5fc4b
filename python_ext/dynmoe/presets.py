"""MoE layers of known models (published configs): Router keyword arguments
plus the layer's hidden size H and per-expert intermediate size I.

    p = dynmoe.presets["DeepSeek-V3"]
    router = dynmoe.Router(**p["router"])       # or dynmoe.preset_router("DeepSeek-V3")
    H, I = p["hidden"], p["inter"]

DeepSeek-V3 and LongCat-Flash choose with a selection bias
(e_score_correction_bias) that the caller passes as ``bias=`` [E+Z] fp32.
Sizes are those of DESIGN.md section 7 (the benchmark's presets).
"""
from __future__ import annotations

presets = {
    # E 8, K 2, softmax, renormalised over the 2 picked.
    "Mixtral-8x7B": {
        "router": dict(num_experts=8, top_k=2, score="softmax", norm="selected"),
        "hidden": 4096, "inter": 14336,
    },
    # E 128, K 8, softmax, norm_topk_prob = true.
    "Qwen3-30B-A3B": {
        "router": dict(num_experts=128, top_k=8, score="softmax", norm="selected"),
        "hidden": 2048, "inter": 768,
    },
    # E 256, K 8, sigmoid + bias, 8 groups keep 4, renormalised, routed scale 2.5.
    "DeepSeek-V3": {
        "router": dict(num_experts=256, top_k=8, score="sigmoid", norm="selected", num_groups=8,
                       topk_groups=4, scale=2.5),
        "hidden": 7168, "inter": 2048, "bias": True,
    },
    # E 512 + 256 identity (copy) zero experts, K 12, softmax + bias, no renorm,
    # routed scale 6.0 (applied to zero-expert weights too).
    "LongCat-Flash": {
        "router": dict(num_experts=512, top_k=12, score="softmax", norm="none", num_zero_experts=256,
                       zero_kind="identity", scale=6.0),
        "hidden": 6144, "inter": 2048, "bias": True,
    },
    # Qwen3-30B-A3B's layer with 64 zero-output (null) experts, renormalised
    # over the selected slots before the zero experts are dropped.
    "ZEDA-Qwen3": {
        "router": dict(num_experts=128, top_k=8, score="softmax", norm="selected", num_zero_experts=64,
                       zero_kind="zero"),
        "hidden": 2048, "inter": 768,
    },
    # E 64, K 8, softmax, norm_topk_prob = false.
    "OLMoE": {
        "router": dict(num_experts=64, top_k=8, score="softmax", norm="none"),
        "hidden": 2048, "inter": 1024,
    },
}


def preset_router(name, **overrides):
    """dynmoe.Router of a preset, with keyword overrides (e.g. select="top_p")."""
    from ._core import Router

    if name not in presets:
        raise KeyError(f"dynmoe: no preset {name!r}; known: {', '.join(presets)}")
    return Router(**{**presets[name]["router"], **overrides})
