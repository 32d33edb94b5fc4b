"""What dynmoe can run, as tables the integrations read: a newly supported
activation or option is one entry here (issue 15 adds activations, expert
biases, the interleaved gate/up layout and weight_on_input; issue 16 quantized
weights).
"""
from __future__ import annotations

# A framework's name of the gated activation (vLLM's MoEActivation.value,
# transformers' config.hidden_act) -> dynmoe's act=. "gelu" is the exact (erf)
# GELU in both frameworks, which is dynmoe's geglu.
ACTIVATIONS = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
}

# The expert weight dtypes dynmoe runs (x and out share them).
DTYPES = ("float32", "bfloat16", "float16")

# Options of an experts layer that dynmoe does not have yet, and the words
# used to say so. An integration keeps the framework's own kernel for them.
MISSING = {
    "bias": "expert biases (b13/b2)",
    "interleaved": "the interleaved gate/up layout",
    "quantized": "quantized expert weights (issue 16)",
    "clamp": "a clamped/alpha SwiGLU (swiglu_limit, swiglu_alpha)",
    "non_gated": "non-gated experts (act without the up projection)",
}


def activation(name):
    """dynmoe's act for a framework's activation name, or None."""
    if name is None:
        return None
    return ACTIVATIONS.get(str(name).lower())


def dtype_name(dtype):
    name = str(dtype)
    return name[len("torch."):] if name.startswith("torch.") else name


def lacks_activation(name):
    return f"the {name!r} activation (dynmoe has {', '.join(sorted(set(ACTIVATIONS)))})"
