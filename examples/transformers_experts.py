"""transformers with dynmoe as the experts implementation, and with dynmoe
routing too (patch).

    python examples/transformers_experts.py

A tiny Qwen3-MoE built from its config (random weights, no download):
from_config(..., experts_implementation="dynmoe") runs every experts layer on
dynmoe's kernels after dynmoe.integrations.transformers.register();
dynmoe.integrations.transformers.patch(model) also hands the routing to
dynmoe. Both are compared with transformers' own eager experts.
"""
import sys

import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

import dynmoe.integrations.transformers as dmt


def main():
    dmt.register()  # adds experts_implementation="dynmoe"
    cfg = Qwen3MoeConfig(vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         num_experts=16, num_experts_per_tok=4, norm_topk_prob=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation="dynmoe", dtype=torch.float32).eval()
    prompt = torch.tensor([[3, 17, 99, 5, 42, 7]])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=8, do_sample=False)
        logits = model(prompt).logits
        model.set_experts_implementation("eager")  # transformers' own experts, same weights
        ref = model.generate(prompt, max_new_tokens=8, do_sample=False)
        ref_logits = model(prompt).logits
        dmt.patch(model)  # dynmoe routes and runs the experts
        patched = model.generate(prompt, max_new_tokens=8, do_sample=False)
    err = float((logits - ref_logits).norm() / ref_logits.norm())
    n = prompt.shape[1]
    print("dynmoe experts:", out[0, n:].tolist())
    print("eager experts: ", ref[0, n:].tolist())
    print("patch(model):  ", patched[0, n:].tolist())
    print(f"logits relative difference {err:.1e}")
    if not (torch.equal(out, ref) and torch.equal(patched, ref) and err < 1e-5):
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
