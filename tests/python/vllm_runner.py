"""Runs a tiny model through vLLM's LLM(...).generate several times in one
process, with the dynmoe plugin on and off, and prints one JSON line per run:
greedy tokens and top-5 logprobs of each prompt. test_vllm.py starts it with
the vLLM venv's python; the engine runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), so the dynmoe and the vLLM runs are
compared within one process.

    python vllm_runner.py MODEL_DIR --runs on,off,on@c [--compiled] [--tp 2 --ep]

A run is `on` (the plugin, modular mode), `mono` (monolithic mode) or `off`
(DYNMOE_VLLM=0 for the layers built in it: vLLM's own kernel; the plugin is
registered once, at the first LLM, so the first run must not be `off`),
`@c` appended for a compiled engine (vLLM's default compilation; eager
otherwise, or all compiled with --compiled), and
`=DIR` appended loads DIR instead of MODEL_DIR for that run (one process,
several checkpoints), `#LABEL` before it only names the run (on#awq), and
`+perturb` appended for the negative control: dynmoe's experts then see
w2 scaled by 1.5 (a copy made inside the dynmoe call only), which must
change the output with the plugin on and nothing with it off. `+pack`
appended runs it with DYNMOE_PACK=1 on the onednn path (DYNMOE_CPU_ISA=onednn)
and reports the packings made while the engine loaded and while it generated
(dynmoe._torch.pack_count) and how many dynmoe expert calls carried packed
experts. --long adds a 100-token prompt (so experts get >= 16 rows, the
packed path's minimum, in prefill).
"""
import argparse
import gc
import json
import os
import sys

PROMPTS = [[3, 17, 99, 5, 42, 7, 120, 64], [11, 200, 13], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]


def perturb_dynmoe():
    """Scales the experts' w2 by 1.5 in what dynmoe's experts read -- a copy
    made inside dynmoe's calls, so only dynmoe's path sees it. Returns the
    undo."""
    import dynmoe._core as core

    saved = core._experts_forward, core._moe_forward

    def altered(e):
        return core.Experts(e.w13, e.w2 * 1.5, e.act)

    core._experts_forward = lambda x, ids, w, r, e, **kw: saved[0](x, ids, w, r, altered(e), **kw)
    core._moe_forward = lambda x, lg, r, e, *a, **kw: saved[1](x, lg, r, altered(e), *a, **kw)
    return lambda: (setattr(core, "_experts_forward", saved[0]), setattr(core, "_moe_forward", saved[1]))


def count_packed_calls():
    """Counts dynmoe's expert calls and those that carried packed experts.
    Returns (counts, undo)."""
    import dynmoe._core as core

    saved = core._experts_forward, core._moe_forward
    n = {"calls": 0, "packed": 0}

    def seen(e):
        n["calls"] += 1
        n["packed"] += e._packed is not None

    def ef(x, ids, w, r, e, **kw):
        seen(e)
        return saved[0](x, ids, w, r, e, **kw)

    def mf(x, lg, r, e, *a, **kw):
        seen(e)
        return saved[1](x, lg, r, e, *a, **kw)

    core._experts_forward, core._moe_forward = ef, mf
    return n, lambda: (setattr(core, "_experts_forward", saved[0]), setattr(core, "_moe_forward", saved[1]))


def count_fp8_calls():
    """Counts dynmoe's expert calls, those on fp8_block experts, and the calls
    per weight format, w13 dtype and gate/up order they ran on. Returns (counts, undo)."""
    import dynmoe._core as core

    saved = core._experts_forward
    n = {"calls": 0, "fp8_calls": 0, "formats": {}}

    def ef(x, ids, w, r, e, **kw):
        n["calls"] += 1
        n["fp8_calls"] += e.weight_format == "fp8_block"
        key = f"{e.weight_format}:{e.w13.dtype}:{e.gate_up}"
        n["formats"][key] = n["formats"].get(key, 0) + 1
        return saved(x, ids, w, r, e, **kw)

    core._experts_forward = ef
    return n, lambda: setattr(core, "_experts_forward", saved)


def mla_backend(model_dir):
    """LLM kwargs for an MLA model (DeepSeek-V3): vLLM's reference CPU_MLA attention. On an AMX
    CPU vLLM 0.32 otherwise picks AMX_MLA, whose weight processing refuses float32 ("expect
    weight to be bfloat16, float16, int8, fp8_e4m3 or uint8"), and these models run in float32;
    CPU_MLA is what vLLM runs on CPUs without AMX."""
    with open(os.path.join(model_dir, "config.json")) as f:
        return {"attention_backend": "CPU_MLA"} if "kv_lora_rank" in json.load(f) else {}


def expert_dtypes(model):
    """{MoE layer: (w13 dtype, w2 dtype)} of a loaded model (what the experts hold)."""
    return {n: (str(m.w13_weight.dtype), str(m.w2_weight.dtype))
            for n, m in model.named_modules() if hasattr(m, "w13_weight")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--runs", default="on,off")
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--ep", action="store_true")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--long", action="store_true")
    a = ap.parse_args()

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    sp = SamplingParams(max_tokens=a.max_tokens, temperature=0.0, logprobs=5, detokenize=False)
    long = [[(7 * i + 3) % 250 + 3 for i in range(100)]] if a.long else []
    prompts = [{"prompt_token_ids": p} for p in PROMPTS + long]
    for item in a.runs.split(","):
        run, _, model = item.partition("=")  # RUN=DIR: this run loads DIR (several models, one process)
        spec, _, extra = run.partition("#")[0].partition("+")  # RUN#LABEL: a label that only names it
        plugin, _, how = spec.partition("@")
        compiled = a.compiled or how == "c"
        os.environ["DYNMOE_VLLM"] = "0" if plugin == "off" else "1"
        os.environ["DYNMOE_VLLM_MODE"] = "monolithic" if plugin == "mono" else "modular"
        undo = perturb_dynmoe() if extra == "perturb" else None
        pack = extra == "pack"
        os.environ["DYNMOE_PACK"] = "1" if pack else "0"
        if pack:
            os.environ["DYNMOE_CPU_ISA"] = "onednn"
        else:
            os.environ.pop("DYNMOE_CPU_ISA", None)
        from dynmoe import _torch

        packs0 = _torch.pack_count[0]
        llm = LLM(model=model or a.model, skip_tokenizer_init=True, dtype="float32", enforce_eager=not compiled,
                  max_model_len=128, max_num_seqs=4, seed=0, tensor_parallel_size=a.tp,
                  enable_expert_parallel=a.ep, distributed_executor_backend="mp" if a.tp > 1 else None,
                  **mla_backend(model or a.model))
        packs1 = _torch.pack_count[0]
        calls, uncount = count_packed_calls() if pack else (None, None)
        if extra == "count":
            calls, uncount = count_fp8_calls()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        if uncount is not None:
            uncount()
        res = []
        for o in outs:
            c = o.outputs[0]
            res.append({"tokens": list(c.token_ids),
                        "logprobs": [{str(k): v.logprob for k, v in lp.items()} for lp in c.logprobs]})
        info = {"run": run, "out": res}
        if extra == "count":
            info.update(calls, experts=llm.apply_model(expert_dtypes)[0])
        if pack:
            info.update(packs_at_load=packs1 - packs0, packs_in_generate=_torch.pack_count[0] - packs1, **calls)
        print("RESULT " + json.dumps(info), flush=True)
        if undo is not None:
            undo()
        del llm
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
