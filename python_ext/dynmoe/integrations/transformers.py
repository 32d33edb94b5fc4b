"""dynmoe inside Hugging Face transformers (5.x).

    import dynmoe.integrations.transformers as dmt
    dmt.register()                                   # adds experts_implementation="dynmoe"
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation="dynmoe")
    # or: model.set_experts_implementation("dynmoe")
    dmt.patch(model)                                 # dynmoe also routes (and runs the experts)

**register()** adds ``"dynmoe"`` to transformers' ``ExpertsInterface``: every
experts class decorated with ``@use_experts_implementation`` then runs
``experts_forward`` below, which takes the model's routing table
(``top_k_index``, ``top_k_weights``) and runs dynmoe's experts and combine in
one op (``torch.ops.dynmoe.experts_forward_out``). It honours the decorator's
flags: ``is_concatenated`` / ``is_transposed`` weights in the layout dynmoe
takes (``gate_up_proj [E, 2I, H]`` gate rows first, ``down_proj [E, H, I]``,
which is transformers' default) are passed without a copy; a transposed or
interleaved layout is re-laid once and cached per parameter (re-laid again
only when the parameter changes). ``has_bias``, ``has_gate=False``,
``has_post_expert_norm``, a custom ``_apply_gate`` or an activation dynmoe
lacks raise ``NotImplementedError`` naming the class and what dynmoe lacks
(``dynmoe.integrations.support``).

**patch(model)** also hands the routing to dynmoe for the router families it
expresses (the table ``ROUTERS``): softmax top-k (Qwen2/Qwen3-MoE, Mixtral,
OLMoE, MiniMax, Granite), sigmoid + selection bias + groups + routed scale
(DeepSeek-V3, GLM-4-MoE, Dots1) and softmax + bias + identity zero experts
(LongCat-Flash). Each router computes the same
logits and routes with ``torch.ops.dynmoe.route`` (the router module keeps
its parameters and state_dict names; only its forward changes); shared
experts, shared gates and everything else of the block stay the model's own. A block whose
router is not in the table raises ``NotImplementedError`` naming its class.
"""
from __future__ import annotations

import torch

import dynmoe

from . import support

NAME = "dynmoe"

__all__ = ["NAME", "register", "patch", "experts_forward", "ROUTERS", "why_not"]


# --------------------------------------------------------------- the experts

def _act_name(act_fn):
    """The framework name of an experts module's activation, or its class name."""
    cls = type(act_fn).__name__
    if act_fn is torch.nn.functional.silu:
        return "silu"
    if act_fn is torch.nn.functional.gelu:
        return "gelu"
    if isinstance(act_fn, torch.nn.SiLU) or cls == "SiLUActivation":
        return "silu"
    if cls == "GELUActivation" and getattr(act_fn, "act", None) is torch.nn.functional.gelu:
        return "gelu"
    if isinstance(act_fn, torch.nn.GELU) and act_fn.approximate == "none":
        return "gelu"
    return cls


def why_not(module):
    """None when experts_forward runs this experts module, else what dynmoe lacks."""
    from transformers.integrations import moe as hf_moe

    if getattr(module, "has_bias", False):
        return support.MISSING["bias"]
    if not getattr(module, "has_gate", True):
        return support.MISSING["non_gated"]
    if getattr(module, "has_post_expert_norm", False):
        return "a norm after each expert (has_post_expert_norm)"
    gate = getattr(type(module), "_apply_gate", hf_moe._default_apply_gate)
    if gate is not hf_moe._default_apply_gate:
        return f"the custom gating function {type(module).__name__}._apply_gate"
    act = _act_name(getattr(module, "act_fn", None))
    if support.activation(act) is None:
        return support.lacks_activation(act)
    w = getattr(module, "gate_up_proj", None)
    if w is None or getattr(module, "down_proj", None) is None:
        return "experts without gate_up_proj / down_proj parameters"
    if support.dtype_name(w.dtype) not in support.DTYPES:
        return f"expert weights of dtype {w.dtype}"
    return None


def _relaid(module, name, param, transposed, interleaved):
    """param in dynmoe's layout; a copy cached on the module when the layout
    differs (keyed by the parameter's storage and version)."""
    if not transposed and not interleaved and param.is_contiguous():
        return param
    key = (param.data_ptr(), param._version, tuple(param.shape))
    cache = module.__dict__.setdefault("_dynmoe_relaid", {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    w = param.detach()
    if transposed:
        w = w.transpose(1, 2)
    if interleaved:  # [gate0, up0, gate1, up1, ...] rows -> [gates; ups]
        w = torch.cat([w[:, 0::2], w[:, 1::2]], dim=1)
    w = w.contiguous()
    if not torch.compiler.is_compiling():
        cache[name] = (key, w)
    return w


@torch._dynamo.assume_constant_result
def _router_lists(num_experts, top_k, num_zero_experts, zero_kind):
    # Built once per shape at trace time (a Router validates through the C
    # library, which dynamo does not trace); a compiled graph holds the lists.
    r = dynmoe.Router(num_experts=num_experts, top_k=top_k, num_zero_experts=num_zero_experts,
                      zero_kind=zero_kind)
    return r.ints, r.floats


def experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' experts signature: hidden_states [T, H], top_k_index
    [T, K], top_k_weights [T, K] -> [T, H], computed by dynmoe."""
    reason = why_not(self)
    if reason is not None:
        raise NotImplementedError(f"dynmoe: {type(self).__name__} cannot run on dynmoe: dynmoe lacks {reason}")
    transposed = bool(getattr(self, "is_transposed", False))
    interleaved = not getattr(self, "is_concatenated", True)
    num_experts = self.down_proj.shape[0]
    w13 = _relaid(self, "gate_up_proj", self.gate_up_proj, transposed, interleaved)[:num_experts]
    w2 = _relaid(self, "down_proj", self.down_proj, transposed, False)
    zero = int(getattr(self, "zero_expert_num", 0) or 0)  # LongCat-Flash: ids E.. copy x
    ints, floats = _router_lists(int(num_experts), int(top_k_index.shape[-1]), zero, "identity")
    x = hidden_states.contiguous()
    ids = top_k_index.to(torch.int32).contiguous()
    weights = top_k_weights.to(torch.float32).contiguous()
    out = torch.empty_like(x)
    torch.ops.dynmoe.experts_forward_out(x, ids, weights, w13, w2, ints, floats,
                                         support.activation(_act_name(self.act_fn)), out, None)
    return out


def register():
    """Adds "dynmoe" to transformers' experts implementations (idempotent)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    ExpertsInterface.register(NAME, experts_forward)
    return ALL_EXPERTS_FUNCTIONS


# --------------------------------------------------------------- the routers

def _linear_logits(gate, x):
    return torch.nn.functional.linear(x, gate.weight)


def _float_logits(gate, x):
    return torch.nn.functional.linear(x.type(torch.float32), gate.weight.type(torch.float32))


def _classifier_logits(gate, x):
    return torch.nn.functional.linear(x.type(torch.float32), gate.classifier.weight.type(torch.float32),
                                      None if gate.classifier.bias is None else gate.classifier.bias.float())


def _softmax_topk(gate):
    norm = getattr(gate, "norm_topk_prob", True)
    return dict(score="softmax", norm="selected" if norm else "none"), None


def _sigmoid_groups(gate):
    return dict(score="sigmoid", norm="selected" if gate.norm_topk_prob else "none", num_groups=gate.num_group,
                topk_groups=gate.topk_group, scale=float(gate.routed_scaling_factor)), "e_score_correction_bias"


def _softmax_bias_zero(gate):
    # LongCat-Flash: softmax over E + Z, chosen with the bias, unnormalised,
    # times the routed scale (the zero experts' weights too).
    return dict(score="softmax", norm="none", zero_kind="identity",
                scale=float(gate.routed_scaling_factor)), "e_score_correction_bias"


# router class name -> (the logits the model computes, dynmoe.Router keywords
# and the name of the selection-bias buffer). A new family is one entry.
ROUTERS = {
    "Qwen3MoeTopKRouter": (_linear_logits, _softmax_topk),
    "Qwen2MoeTopKRouter": (_linear_logits, _softmax_topk),
    "MixtralTopKRouter": (_linear_logits, _softmax_topk),
    "OlmoeTopKRouter": (_linear_logits, _softmax_topk),
    "MiniMaxTopKRouter": (_linear_logits, _softmax_topk),
    # top-k of the logits, then softmax over the k: softmax, top-k, renormalised
    "GraniteMoeTopKRouter": (lambda g, x: _linear_logits(g, x).float(), _softmax_topk),
    "DeepseekV3TopkRouter": (_float_logits, _sigmoid_groups),
    "Glm4MoeTopkRouter": (_float_logits, _sigmoid_groups),
    "Dots1TopkRouter": (_float_logits, _sigmoid_groups),
    "LongcatFlashTopkRouter": (_classifier_logits, _softmax_bias_zero),
}


def _logit_width(gate):
    lin = gate.classifier if hasattr(gate, "classifier") else gate
    return lin.weight.shape


def _routed_forward(self, hidden_states):
    """The router module's forward after patch(): the same (router_logits,
    top_k_weights, top_k_index), chosen by dynmoe.route (weights fp32, ids
    int32, which dynmoe's experts take as they are)."""
    logits_fn, ints, floats, bias_name = self._dynmoe
    x = hidden_states.reshape(-1, _logit_width(self)[1])
    logits = logits_fn(self, x)
    bias = None if bias_name is None else getattr(self, bias_name).to(torch.float32)
    ids, weights = torch.ops.dynmoe.route(logits.contiguous(), ints, floats, bias, None)
    return logits, weights, ids


def _route_in_dynmoe(gate, experts):
    """Makes gate route with dynmoe (its forward replaced on the instance:
    its parameters, buffers and state_dict names stay as they are)."""
    logits_fn, spec = ROUTERS[type(gate).__name__]
    kw, bias_name = spec(gate)
    e = int(experts.down_proj.shape[0])
    width = int(_logit_width(gate)[0])
    if width - e:
        kw["num_zero_experts"] = width - e
    r = dynmoe.Router(num_experts=e, top_k=int(gate.top_k), **kw)
    gate._dynmoe = (logits_fn, r.ints, r.floats, bias_name)
    gate.forward = _routed_forward.__get__(gate)


def _router_attr(block):
    for name in ("gate", "router"):
        mod = getattr(block, name, None)
        if isinstance(mod, torch.nn.Module) and hasattr(block, "experts"):
            return name, mod
    return None, None


def patch(model):
    """Routes every MoE block of model in dynmoe and runs its experts on
    dynmoe. Returns the model. Raises NotImplementedError (naming the block
    class and what dynmoe lacks) for a block it cannot express, before
    changing anything."""
    register()
    todo = []
    for name, block in model.named_modules():
        attr, gate = _router_attr(block)
        if attr is None or hasattr(gate, "_dynmoe"):
            continue
        experts = block.experts
        if not (hasattr(experts, "gate_up_proj") and hasattr(experts, "down_proj")):
            continue
        if type(gate).__name__ not in ROUTERS:
            raise NotImplementedError(
                f"dynmoe.patch: {type(block).__name__} ({name}) routes with {type(gate).__name__}, "
                f"which dynmoe's router does not express (known: {', '.join(sorted(ROUTERS))})")
        if not hasattr(experts, "has_gate"):  # an experts class without the decorator (LongCat)
            experts.has_gate, experts.has_bias, experts.is_transposed, experts.is_concatenated = True, False, False, True
        reason = why_not(experts)
        if reason is not None:
            raise NotImplementedError(
                f"dynmoe.patch: {type(block).__name__} ({name}): its experts {type(experts).__name__} "
                f"need {reason}, which dynmoe lacks")
        todo.append((block, attr, gate, experts))
    if not todo:
        raise NotImplementedError(f"dynmoe.patch: no MoE block with a router and experts in {type(model).__name__}")
    for block, attr, gate, experts in todo:
        _route_in_dynmoe(gate, experts)
        if not hasattr(type(experts), "_apply_gate"):  # undecorated: its own forward -> dynmoe's
            experts.forward = experts_forward.__get__(experts)
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(NAME)
    return model
