"""What dynmoe can run, as tables the integrations read: a newly supported
activation or option is one entry here. Issue 15 added the activations
geglu_tanh, swiglu_oai, relu2 and silu, expert biases, the interleaved
gate/up layout, weight_on_input and expert_scale; issue 16 quantized weights
(transformers: integrations.transformers.load_quantized / attach_quantized
for gpt-oss MXFP4 and DeepSeek-V3-style fp8 checkpoints; vLLM's quantized MoE
methods are not CustomOps with an out-of-tree hook in 0.32, so quantized vLLM
layers keep vLLM's kernels: MISSING["quantized"]).
"""
from __future__ import annotations

# A framework's name of a gated activation (vLLM's MoEActivation.value,
# transformers' config.hidden_act) -> dynmoe's act=. "gelu" is the exact (erf)
# GELU in both frameworks, which is dynmoe's geglu; gelu_pytorch_tanh and
# gelu_new are the tanh approximation (Gemma). vLLM's swigluoai is gpt-oss's
# clamped SwiGLU on interleaved gate/up rows (alpha, limit from the layer).
ACTIVATIONS = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_pytorch_tanh": "geglu_tanh",
    "gelu_new": "geglu_tanh",
    "gelu_tanh": "geglu_tanh",
    "swigluoai": "swiglu_oai",
}

# Non-gated experts (w13 holds I rows): transformers' act_fn of a
# has_gate=False experts class, vLLM's *_no_mul activations.
NON_GATED = {
    "relu2": "relu2",
    "relu2_no_mul": "relu2",
    "silu": "silu",
    "silu_no_mul": "silu",
}

# The acts whose gate/up rows are interleaved in the framework's layout
# (vLLM's swigluoai, as gpt-oss stores them).
INTERLEAVED = {"swigluoai"}

# The expert weight dtypes dynmoe runs (x and out share them).
DTYPES = ("float32", "bfloat16", "float16")

# Options of an experts layer that dynmoe's integrations do not pass yet, and
# the words used to say so. An integration keeps the framework's own kernel.
MISSING = {
    "quantized": "quantized expert weights through vLLM's quantization methods (issue 16)",
    "beta": "a SwiGLU with a beta offset (swiglu_beta)",
}


def activation(name):
    """dynmoe's gated act for a framework's activation name, or None."""
    if name is None:
        return None
    return ACTIVATIONS.get(str(name).lower())


def non_gated_activation(name):
    """dynmoe's non-gated act for a framework's activation name, or None."""
    if name is None:
        return None
    return NON_GATED.get(str(name).lower())


def dtype_name(dtype):
    name = str(dtype)
    return name[len("torch."):] if name.startswith("torch.") else name


def lacks_activation(name, gated=True):
    known = ACTIVATIONS if gated else NON_GATED
    kind = "gated" if gated else "non-gated"
    return f"the {kind} activation {name!r} (dynmoe has {', '.join(sorted(set(known)))})"
