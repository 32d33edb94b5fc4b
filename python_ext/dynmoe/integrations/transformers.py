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
flags: weights in the layout dynmoe takes (``gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``, transformers' default) are passed without a copy; a
transposed layout is re-laid once and cached per parameter (re-laid again
only when the parameter changes). ``has_bias`` passes ``*_proj_bias`` as
b13/b2; ``has_gate=False`` (Nemotron-H's ``up_proj``, relu2 or silu) runs
dynmoe's non-gated acts; the activations of ``support.ACTIVATIONS`` (SiLU,
erf GELU, tanh GELU for Gemma-4) and the custom gates of ``CUSTOM_GATES``
(gpt-oss's clamped SwiGLU on interleaved rows with the module's alpha and
limit, and its blocked kin) run as they are. ``has_post_expert_norm``, another
custom ``_apply_gate`` or an activation dynmoe lacks raise
``NotImplementedError`` naming the class and what dynmoe lacks.

**patch(model)** also hands the routing to dynmoe for the router families it
expresses (the table ``ROUTERS``): softmax top-k (Qwen2/Qwen3-MoE, Mixtral,
OLMoE, MiniMax, Granite, gpt-oss with its logit bias), sigmoid + selection
bias + groups + routed scale (DeepSeek-V3, GLM-4-MoE, Dots1, Nemotron-H),
softmax + bias + identity zero experts (LongCat-Flash) and softmax top-k
renormalised times ``per_expert_scale`` (Gemma-4, dynmoe's expert_scale).
Each router computes the same logits and routes with
``torch.ops.dynmoe.route`` (the router module keeps its parameters and
state_dict names; only its forward changes). Llama-4's block (``BLOCKS``),
whose experts take no routing table, becomes one ``moe_forward``: sigmoid
top-1 with the weight on the expert's input (``weight_on_input``). Shared
experts, shared gates, latent projections and everything else of the block
stay the model's own. A block whose router is not in the tables raises
``NotImplementedError`` naming its class.

**DYNMOE_PACK=1** (CPU experts, plain weights): ``patch(model)`` packs every
dynmoe experts module at load time (``prepack(model)``, which also serves
``register()`` users), so no forward packs; with ``register()`` alone the
first forward packs, once (docs/cpu.md, "Packed experts and oneDNN").
"""
from __future__ import annotations

import torch

import dynmoe

from . import support

NAME = "dynmoe"

__all__ = ["NAME", "register", "patch", "prepack", "experts_forward", "ROUTERS", "why_not", "attach_quantized",
           "load_quantized"]


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
    if isinstance(act_fn, torch.nn.GELU):
        return "gelu" if act_fn.approximate == "none" else "gelu_pytorch_tanh"
    if cls == "GELUTanh":  # gelu_pytorch_tanh (torch's tanh GELU) and gelu_python_tanh: one formula
        return "gelu_pytorch_tanh"
    if cls == "NewGELUActivation":  # the same tanh approximation, written out
        return "gelu_new"
    if cls == "ReLUSquaredActivation":
        return "relu2"
    return cls


# Experts classes whose own _apply_gate dynmoe expresses: class name -> (act,
# gate/up layout, the module's attributes holding alpha and limit). The
# layout is the one the gate function reads (the privacy filter declares
# is_concatenated=False but chunks its rows).
CUSTOM_GATES = {
    "GptOssExperts": ("swiglu_oai", "interleaved", "alpha", "limit"),
    "OpenAIPrivacyFilterExperts": ("swiglu_oai", "blocked", "alpha", "limit"),
    "MiniMaxM3VLExperts": ("swiglu_oai", "blocked", "swiglu_alpha", "swiglu_limit"),
    # act_fn(gate) * up computed in fp32, then cast: dynmoe's default (fp32 inside)
    "BeamExperts": (None, "blocked", None, None),
}


def _experts_spec(module):
    """How dynmoe runs this experts module: a dict (w13/w2/bias parameter
    names, act, gate_up, alpha, limit), or a str saying what dynmoe lacks."""
    from transformers.integrations import moe as hf_moe

    if getattr(module, "has_post_expert_norm", False):
        return "a norm after each expert (has_post_expert_norm)"
    gated = getattr(module, "has_gate", True)
    spec = dict(w13="gate_up_proj" if gated else "up_proj", w2="down_proj", gate_up="blocked", alpha=1.702,
                limit=7.0)
    if gated:
        gate = getattr(type(module), "_apply_gate", hf_moe._default_apply_gate)
        custom = CUSTOM_GATES.get(type(module).__name__)
        if gate is not hf_moe._default_apply_gate and custom is None:
            return f"the custom gating function {type(module).__name__}._apply_gate"
        if custom is not None and custom[0] is not None:
            act, spec["gate_up"], a, lim = custom
            spec["alpha"], spec["limit"] = float(getattr(module, a)), float(getattr(module, lim))
        else:
            name = _act_name(getattr(module, "act_fn", None))
            act = support.activation(name)
            if act is None:
                return support.lacks_activation(name)
    else:
        name = _act_name(getattr(module, "act_fn", None))
        act = support.non_gated_activation(name)
        if act is None:
            return support.lacks_activation(name, gated=False)
    spec["act"] = act
    w = getattr(module, spec["w13"], None)
    if w is None or getattr(module, "down_proj", None) is None:
        return f"experts without {spec['w13']} / down_proj parameters"
    if support.dtype_name(w.dtype) not in support.DTYPES:
        return f"expert weights of dtype {w.dtype}"
    if getattr(module, "has_bias", False):
        spec["b13"], spec["b2"] = spec["w13"] + "_bias", "down_proj_bias"
        for b in (spec["b13"], spec["b2"]):
            if getattr(module, b, None) is None:
                return f"expert biases without a {b} parameter"
    return spec


def why_not(module):
    """None when experts_forward runs this experts module, else what dynmoe lacks."""
    spec = _experts_spec(module)
    return spec if isinstance(spec, str) else None


def _relaid(module, name, param, transposed):
    """param in dynmoe's layout ([E, rows, cols], row-major); a copy cached on
    the module when it is transposed (keyed by the parameter's storage and
    version)."""
    if not transposed and param.is_contiguous():
        return param
    key = (param.data_ptr(), param._version, tuple(param.shape))
    cache = module.__dict__.setdefault("_dynmoe_relaid", {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    w = param.detach()
    if transposed:
        w = w.transpose(1, 2)
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


_FORMATS = {"plain": 0, "fp8_block": 1, "mxfp4": 2, "int4": 3}


@torch._dynamo.assume_constant_result
def _experts_lists(gate_up, alpha, limit, fmt="plain", group_size=0):
    # dynmoe.Experts.ints / .floats: [gate_up, weight_format, group_size, dtype (0: x's)], [alpha, limit]
    e = {"blocked": 0, "interleaved": 1}[gate_up]
    return [e, _FORMATS[fmt], int(group_size) if fmt != "plain" else 0, 0], [float(alpha), float(limit)]


# ------------------------------------------------------- quantized experts

def attach_quantized(experts, w13, w2):
    """Runs an experts module on quantized weights: w13, w2 are
    dynmoe.quant.Quantized in dynmoe's layout (w13 [E, rows, H] in the
    module's gate/up order, w2 [E, H, I]), e.g. from quant.from_gpt_oss_mxfp4
    or quant.from_fp8_block. The module's float parameters are then not read
    by dynmoe (biases still are); replace them to free their memory."""
    if w13.fmt != w2.fmt or w13.fmt not in _FORMATS or w13.fmt == "plain":
        raise ValueError(f"dynmoe.attach_quantized: w13 is {w13.fmt}, w2 is {w2.fmt}: one quantized format")
    if w13.perm is not None or w2.perm is not None:
        raise NotImplementedError("dynmoe.attach_quantized: act-order (perm) weights: fold them first "
                                  "(dynmoe.quant.permute_rows)")
    e = int(experts.down_proj.shape[0])
    if w13.q.shape[0] != e or w2.q.shape[0] != e:
        raise ValueError(f"dynmoe.attach_quantized: {type(experts).__name__} has {e} experts, the tensors "
                         f"{w13.q.shape[0]} and {w2.q.shape[0]}")
    experts.__dict__["_dynmoe_quant"] = (w13, w2)
    return experts


def load_quantized(model, tensors):
    """Attaches the quantized expert tensors of a checkpoint (a mapping from
    the checkpoint's names to tensors, e.g. safetensors' safe_open) to every
    experts module of model that has them, in the layouts the checkpoints
    ship:

    * gpt-oss MXFP4: ``<experts>.gate_up_proj_blocks / _scales`` and
      ``<experts>.down_proj_blocks / _scales``;
    * DeepSeek-V3 fine-grained fp8: ``<experts>.<j>.{gate,up,down}_proj.weight``
      (float8_e4m3fn) with ``.weight_scale_inv`` [128 x 128 blocks].

    Returns the names of the modules it attached to. The converters are
    dynmoe.quant's."""
    from dynmoe import quant

    done = []
    for name, mod in model.named_modules():
        if not (hasattr(mod, "down_proj") and isinstance(getattr(mod, "down_proj"), torch.nn.Parameter)):
            continue
        p = name + "."
        if p + "gate_up_proj_blocks" in tensors:
            w13 = quant.from_gpt_oss_mxfp4(tensors[p + "gate_up_proj_blocks"], tensors[p + "gate_up_proj_scales"])
            w2 = quant.from_gpt_oss_mxfp4(tensors[p + "down_proj_blocks"], tensors[p + "down_proj_scales"])
        elif p + "0.gate_proj.weight" in tensors:
            e = int(mod.down_proj.shape[0])

            def stacked(proj):
                w = torch.stack([tensors[f"{p}{j}.{proj}.weight"] for j in range(e)])
                s = torch.stack([tensors[f"{p}{j}.{proj}.weight_scale_inv"] for j in range(e)])
                return quant.from_fp8_block(w, s)
            w13 = quant.stack_fp8_gate_up(stacked("gate_proj"), stacked("up_proj"))
            w2 = stacked("down_proj")
        else:
            continue
        attach_quantized(mod, w13, w2)
        done.append(name)
    return done


def _op_experts(self, spec):
    """(w13, w2, act, b13, b2, scales, zeros, experts_ints, experts_floats):
    what experts_forward passes the op after the routing, and what
    dynmoe._torch.prepack takes. w13 is the parameter itself (or its cached
    re-laid copy) where it holds exactly the experts: the same tensor at
    every call, which the packing cache (DYNMOE_PACK=1) is keyed on."""
    transposed = bool(getattr(self, "is_transposed", False))
    num_experts = self.down_proj.shape[0]
    quant = self.__dict__.get("_dynmoe_quant")
    if quant is not None:  # attach_quantized(): the checkpoint's quantized tensors, not the parameters
        q13, q2 = quant
        w13, w2 = q13.q, q2.q
        qt = (q13.scale, q2.scale, q13.zero, q2.zero)
        eints, efloats = _experts_lists(spec["gate_up"], spec["alpha"], spec["limit"], q13.fmt, q13.group_size)
    else:
        w13 = _relaid(self, spec["w13"], getattr(self, spec["w13"]), transposed)
        if w13.shape[0] != num_experts:
            w13 = w13[:num_experts]
        w2 = _relaid(self, "down_proj", self.down_proj, transposed)
        qt = (None, None, None, None)
        eints, efloats = _experts_lists(spec["gate_up"], spec["alpha"], spec["limit"])
    b13 = b2 = None
    if "b13" in spec:
        b13 = getattr(self, spec["b13"])[:num_experts].contiguous()
        b2 = getattr(self, spec["b2"]).contiguous()
    return (w13, w2, spec["act"], b13, b2, *qt, eints, efloats)


def experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' experts signature: hidden_states [T, H], top_k_index
    [T, K], top_k_weights [T, K] -> [T, H], computed by dynmoe."""
    spec = _experts_spec(self)
    if isinstance(spec, str):
        raise NotImplementedError(f"dynmoe: {type(self).__name__} cannot run on dynmoe: dynmoe lacks {spec}")
    w13, w2, act, *options = _op_experts(self, spec)
    zero = int(getattr(self, "zero_expert_num", 0) or 0)  # LongCat-Flash: ids E.. copy x
    ints, floats = _router_lists(int(self.down_proj.shape[0]), int(top_k_index.shape[-1]), zero, "identity")
    x = hidden_states.contiguous()
    ids = top_k_index.to(torch.int32).contiguous()
    weights = top_k_weights.to(torch.float32).contiguous()
    out = torch.empty_like(x)
    torch.ops.dynmoe.experts_forward_out(x, ids, weights, w13, w2, ints, floats, act, out, None, *options)
    return out


def prepack(model):
    """DYNMOE_PACK=1: packs the CPU experts of every experts module of model
    that runs on dynmoe now, into the cache the dynmoe ops read, so that no
    forward packs (patch() calls it; without it the first forward packs).
    Returns the number of modules packed; where packing is unsupported (no
    oneDNN in the library) none is, with one warning, and the plain experts
    run."""
    from dynmoe import _torch

    if not _torch.pack_wanted():
        return 0
    done = 0
    for mod in model.modules():
        if not isinstance(getattr(mod, "down_proj", None), torch.Tensor):
            continue
        if getattr(getattr(mod, "config", None), "_experts_implementation", NAME) != NAME:
            continue  # this module's experts run elsewhere
        spec = _experts_spec(mod)
        if isinstance(spec, str) or mod.down_proj.device.type != "cpu":
            continue
        done += _torch.prepack(*_op_experts(mod, spec)) is not None
    return done


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


def _gpt_oss_logits(gate, x):
    return torch.nn.functional.linear(x, gate.weight, gate.bias)


def _gemma4_logits(gate, x):
    # Gemma-4's router scores a normed, scaled copy of x (its own RMSNorm without weight)
    h = gate.norm(x) * gate.scale * gate.scalar_root_size
    return gate.proj(h)


# Each spec gives: "router", the dynmoe.Router keywords; "bias", the name of
# the selection-bias buffer; "expert_scale", the name of the per-expert weight
# scale; "first", what the router returns before (weights, ids): its logits
# or, for Gemma-4, the softmax probabilities.
def _spec(router, bias=None, expert_scale=None, first="logits"):
    return dict(router=router, bias=bias, expert_scale=expert_scale, first=first)


def _softmax_topk(gate):
    norm = getattr(gate, "norm_topk_prob", True)
    return _spec(dict(score="softmax", norm="selected" if norm else "none"))


def _sigmoid_groups(gate):
    return _spec(dict(score="sigmoid", norm="selected" if gate.norm_topk_prob else "none", num_groups=gate.num_group,
                      topk_groups=gate.topk_group, scale=float(gate.routed_scaling_factor)), "e_score_correction_bias")


def _softmax_bias_zero(gate):
    # LongCat-Flash: softmax over E + Z, chosen with the bias, unnormalised,
    # times the routed scale (the zero experts' weights too).
    return _spec(dict(score="softmax", norm="none", zero_kind="identity", scale=float(gate.routed_scaling_factor)),
                 "e_score_correction_bias")


def _gemma4(gate):
    # softmax over all, top-k, renormalised, then times per_expert_scale[id]
    return _spec(dict(score="softmax", norm="selected"), expert_scale="per_expert_scale", first="probs")


# router class name -> (the logits the model computes, the spec above). A new
# family is one entry.
ROUTERS = {
    "Qwen3MoeTopKRouter": (_linear_logits, _softmax_topk),
    "Qwen2MoeTopKRouter": (_linear_logits, _softmax_topk),
    "MixtralTopKRouter": (_linear_logits, _softmax_topk),
    "OlmoeTopKRouter": (_linear_logits, _softmax_topk),
    "MiniMaxTopKRouter": (_linear_logits, _softmax_topk),
    # top-k of the logits, then softmax over the k: softmax, top-k, renormalised
    "GraniteMoeTopKRouter": (lambda g, x: _linear_logits(g, x).float(), _softmax_topk),
    "GptOssTopKRouter": (_gpt_oss_logits, _softmax_topk),
    "DeepseekV3TopkRouter": (_float_logits, _sigmoid_groups),
    "Glm4MoeTopkRouter": (_float_logits, _sigmoid_groups),
    "Dots1TopkRouter": (_float_logits, _sigmoid_groups),
    "NemotronHTopkRouter": (_float_logits, _sigmoid_groups),
    "LongcatFlashTopkRouter": (_classifier_logits, _softmax_bias_zero),
    "Gemma4TextRouter": (_gemma4_logits, _gemma4),
}


def _logit_width(gate):
    lin = gate.classifier if hasattr(gate, "classifier") else gate.proj if hasattr(gate, "proj") else gate
    return lin.weight.shape


def _routed_forward(self, hidden_states):
    """The router module's forward after patch(): the same (router_logits or
    probabilities, top_k_weights, top_k_index), chosen by dynmoe.route
    (weights fp32, ids int32, which dynmoe's experts take as they are)."""
    logits_fn, ints, floats, spec = self._dynmoe
    x = hidden_states.reshape(-1, _logit_width(self)[1])
    logits = logits_fn(self, x)
    bias = None if spec["bias"] is None else getattr(self, spec["bias"]).to(torch.float32)
    scale = None if spec["expert_scale"] is None else getattr(self, spec["expert_scale"]).to(torch.float32)
    ids, weights = torch.ops.dynmoe.route(logits.contiguous(), ints, floats, bias, None,
                                          None if scale is None else scale.contiguous())
    if spec["first"] == "probs":
        return torch.nn.functional.softmax(logits, dim=-1, dtype=torch.float32), weights, ids
    return logits, weights, ids


def _route_in_dynmoe(gate, experts):
    """Makes gate route with dynmoe (its forward replaced on the instance:
    its parameters, buffers and state_dict names stay as they are)."""
    logits_fn, spec_fn = ROUTERS[type(gate).__name__]
    spec = spec_fn(gate)
    kw = dict(spec["router"])
    e = int(experts.down_proj.shape[0])
    width = int(_logit_width(gate)[0])
    if width - e:
        kw["num_zero_experts"] = width - e
    top_k = getattr(gate, "top_k", None) or gate.config.top_k_experts
    r = dynmoe.Router(num_experts=e, top_k=int(top_k), **kw)
    gate._dynmoe = (logits_fn, r.ints, r.floats, spec)
    gate.forward = _routed_forward.__get__(gate)


# ------------------------------------------------- whole blocks (Llama-4)

def _llama4_forward(self, hidden_states):
    """Llama4TextMoe after patch(): sigmoid top-k, the weight on the expert's
    input (sum_k FFN_k(w_k x)), in one dynmoe.moe_forward; the shared expert
    stays the model's. Returns (out, router_logits) as the block does."""
    ints, floats = self._dynmoe
    x = hidden_states.reshape(-1, self.hidden_dim)
    logits = torch.nn.functional.linear(x, self.router.weight)
    ex = self.experts
    w13 = _relaid(ex, "gate_up_proj", ex.gate_up_proj, True)
    w2 = _relaid(ex, "down_proj", ex.down_proj, True)
    x = x.contiguous()
    routed = torch.empty_like(x)
    torch.ops.dynmoe.moe_forward_out(x, logits.contiguous(), w13, w2, ints, floats, ex._dynmoe_act, None, None,
                                     routed, None)
    out = self.shared_expert(x)
    out.add_(routed)
    return out, logits


def _patch_llama4(block):
    ex = block.experts
    act = support.activation(_act_name(ex.act_fn))
    if act is None:
        return support.lacks_activation(_act_name(ex.act_fn))
    if support.dtype_name(ex.gate_up_proj.dtype) not in support.DTYPES:
        return f"expert weights of dtype {ex.gate_up_proj.dtype}"

    def apply():
        r = dynmoe.Router(num_experts=int(ex.gate_up_proj.shape[0]), top_k=int(block.top_k), score="sigmoid",
                          norm="none", weight_on_input=True)
        block._dynmoe = (r.ints, r.floats)
        ex._dynmoe_act = act
        block.forward = _llama4_forward.__get__(block)
    return apply


# block class name -> a function of the block returning what dynmoe lacks
# (str) or a function that patches it: for blocks whose experts do not take
# transformers' (top_k_index, top_k_weights) interface.
BLOCKS = {"Llama4TextMoe": _patch_llama4}


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
        if type(block).__name__ in BLOCKS and not hasattr(block, "_dynmoe"):
            got = BLOCKS[type(block).__name__](block)
            if isinstance(got, str):
                raise NotImplementedError(f"dynmoe.patch: {type(block).__name__} ({name}) needs {got}, which "
                                          "dynmoe lacks")
            todo.append(got)
            continue
        attr, gate = _router_attr(block)
        if attr is None or hasattr(gate, "_dynmoe"):
            continue
        experts = block.experts
        if not ((hasattr(experts, "gate_up_proj") or hasattr(experts, "up_proj")) and hasattr(experts, "down_proj")):
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
        todo.append((gate, experts))
    if not todo:
        raise NotImplementedError(f"dynmoe.patch: no MoE block with a router and experts in {type(model).__name__}")
    for item in todo:
        if callable(item):
            item()
            continue
        gate, experts = item
        _route_in_dynmoe(gate, experts)
        if not hasattr(type(experts), "_apply_gate"):  # undecorated: its own forward -> dynmoe's
            experts.forward = experts_forward.__get__(experts)
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(NAME)
    prepack(model)
    return model
