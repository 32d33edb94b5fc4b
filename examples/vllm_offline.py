"""vLLM offline generation with dynmoe running the MoE layers.

    DYNMOE_VLLM=1 python examples/vllm_offline.py --model Qwen/Qwen3-30B-A3B
    python examples/vllm_offline.py --tiny /tmp/dynmoe-models      # a 2-layer random Qwen3-MoE, no download

The plugin is the `dynmoe` entry point of group `vllm.general_plugins`, which
vLLM loads in the engine and in every worker; it only acts with DYNMOE_VLLM=1
(this script sets it unless it is given). DYNMOE_VLLM_MODE=monolithic lets
dynmoe route as well. vLLM logs, per MoE layer, "dynmoe: <layer> runs dynmoe
(modular mode)" or why the layer keeps vLLM's kernel.

--tiny writes the checkpoint the tests use (tests/python/tiny_models.py:
random weights, so the tokens mean nothing) and generates from token ids;
--compare also runs vLLM's own experts and checks the greedy tokens agree.
"""
import argparse
import os
import pathlib
import sys


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a model name or folder vLLM can load")
    src.add_argument("--tiny", metavar="DIR", help="write a tiny random Qwen3-MoE checkpoint into DIR and use it")
    ap.add_argument("--compare", action="store_true", help="also run vLLM's own experts and compare")
    ap.add_argument("--max-tokens", type=int, default=8)
    a = ap.parse_args()

    os.environ.setdefault("DYNMOE_VLLM", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: --compare in the same one
    from vllm import LLM, SamplingParams

    if a.tiny:
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))
        import tiny_models

        model = tiny_models.write("qwen3_moe", a.tiny)
        prompts = [{"prompt_token_ids": [3, 17, 99, 5, 42, 7]}, {"prompt_token_ids": [11, 200, 13]}]
        kw = dict(skip_tokenizer_init=True, dtype="float32", max_model_len=128, max_num_seqs=4)
    else:
        model, kw = a.model, {}
        prompts = ["The capital of France is", "Mixture-of-Experts layers route each token to"]
    params = SamplingParams(max_tokens=a.max_tokens, temperature=0.0, detokenize=not a.tiny)

    def generate():
        llm = LLM(model=model, seed=0, **kw)
        outs = [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]
        del llm
        return outs

    outs = generate()
    for p, o in zip(prompts, outs):
        print(f"{p['prompt_token_ids']} -> {list(o.token_ids)}" if a.tiny else f"{p!r} -> {o.text!r}")
    if a.compare:
        os.environ["DYNMOE_VLLM"] = "0"  # the engine built next keeps vLLM's own experts
        ref = generate()
        same = all(list(x.token_ids) == list(y.token_ids) for x, y in zip(outs, ref))
        print("greedy tokens equal to vLLM's own experts:", same)
        if not same:
            return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
