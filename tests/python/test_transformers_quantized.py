"""Quantized experts through the transformers integration (issue 16), CPU:

* a tiny gpt-oss whose experts are MXFP4 (``*_blocks`` / ``*_scales``, random
  codes): the eager model runs on transformers' own dequantization of those
  tensors (integrations/mxfp4.py convert_moe_packed_tensors), dynmoe runs the
  packed bytes (load_quantized + patch);
* a tiny DeepSeek-V3 whose experts are fine-grained fp8 (per-expert
  ``gate/up/down_proj.weight`` float8_e4m3fn + ``weight_scale_inv``): eager on
  transformers' dequantization (integrations/finegrained_fp8.py), dynmoe on
  the fp8 bytes.

Logits within 1e-5 (f32). Skipped without transformers or without those
transformers helpers.
"""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import dynmoe.integrations.transformers as dmt  # noqa: E402
from test_transformers import family_model, rel_err  # noqa: E402

PROMPT = torch.tensor([[3, 17, 99, 5, 42, 7, 120, 64, 9, 33]])


def experts_modules(model):
    return [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("Experts")
            and isinstance(getattr(m, "down_proj", None), torch.nn.Parameter)]


def test_gpt_oss_mxfp4_experts():
    try:
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    except ImportError as e:
        pytest.skip(f"no transformers mxfp4 integration ({e})")
    model = family_model("gpt_oss")
    g = torch.Generator().manual_seed(4)
    tensors = {}
    with torch.no_grad():
        for name, ex in experts_modules(model):
            for proj in ("gate_up_proj", "down_proj"):
                p = getattr(ex, proj)  # [E, K, N] (x @ W): the checkpoint stores [E, N, K/32, 16]
                e, k, n = p.shape
                blocks = torch.randint(0, 256, (e, n, k // 32, 16), generator=g, dtype=torch.int32).to(torch.uint8)
                scales = torch.randint(121, 127, (e, n, k // 32), generator=g, dtype=torch.int32).to(torch.uint8)
                tensors[f"{name}.{proj}_blocks"], tensors[f"{name}.{proj}_scales"] = blocks, scales
                theirs = convert_moe_packed_tensors(blocks.clone(), scales.clone(), dtype=torch.float32)
                assert theirs.shape == p.shape
                p.copy_(theirs)
    model.set_experts_implementation("eager")
    with torch.no_grad():
        ref = model(PROMPT).logits
    assert sorted(dmt.load_quantized(model, tensors)) == sorted(n for n, _ in experts_modules(model))
    dmt.patch(model)
    with torch.no_grad():
        for _, ex in experts_modules(model):  # dynmoe must not read the float parameters
            ex.gate_up_proj.fill_(float("nan"))
            ex.down_proj.fill_(float("nan"))
        got = model(PROMPT).logits
    err = rel_err(got, ref)
    print(f"gpt-oss mxfp4 experts: logits rel err {err:.1e}")
    assert err < 1e-5


def test_deepseek_v3_fp8_block_experts():
    try:
        from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
    except ImportError as e:
        pytest.skip(f"no transformers fine-grained fp8 helper ({e})")
    import tiny_models

    model = tiny_models.build("deepseek_v3", moe_intermediate_size=128)  # gate and up fill whole 128-blocks
    g = torch.Generator().manual_seed(5)
    tensors = {}
    with torch.no_grad():
        for name, ex in experts_modules(model):
            e, two_i, h = ex.gate_up_proj.shape
            i = two_i // 2
            deq = {}
            for proj, (n, k) in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
                mats = []
                for j in range(e):
                    q = torch.randint(0, 256, (n, k), generator=g, dtype=torch.int32).to(torch.uint8)
                    q[(q & 0x7F) == 0x7F] = 0x38  # no NaN codes
                    s = torch.rand((-(-n // 128), -(-k // 128)), generator=g) * 0.02 + 0.002
                    w = q.view(torch.float8_e4m3fn)
                    tensors[f"{name}.{j}.{proj}.weight"], tensors[f"{name}.{j}.{proj}.weight_scale_inv"] = w, s
                    mats.append(_dequantize_fp8_weight(w.clone(), s.clone(), [128, 128], torch.float32))
                deq[proj] = torch.stack(mats)
            ex.gate_up_proj.copy_(torch.cat([deq["gate_proj"], deq["up_proj"]], dim=1))
            ex.down_proj.copy_(deq["down_proj"])
    model.set_experts_implementation("eager")
    with torch.no_grad():
        ref = model(PROMPT).logits
    assert dmt.load_quantized(model, tensors)
    dmt.patch(model)
    with torch.no_grad():
        for _, ex in experts_modules(model):
            ex.gate_up_proj.fill_(float("nan"))
            ex.down_proj.fill_(float("nan"))
        got = model(PROMPT).logits
    err = rel_err(got, ref)
    print(f"deepseek-v3 fp8_block experts: logits rel err {err:.1e}")
    assert err < 1e-5
