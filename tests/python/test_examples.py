"""examples/ run as a user would run them (CPU, tiny models): the
transformers example wherever transformers is installed, the vLLM example
where vLLM is (scripts/test-frameworks.sh runs this file in the vLLM venv)."""
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def run(args, **env):
    res = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", **env))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.strip().endswith("ok"), res.stdout
    return res.stdout + res.stderr


def test_transformers_example():
    pytest.importorskip("transformers")
    out = run([EXAMPLES / "transformers_experts.py"])
    assert "logits relative difference" in out


def test_vllm_example(tmp_path):
    pytest.importorskip("vllm")
    out = run([EXAMPLES / "vllm_offline.py", "--tiny", tmp_path, "--compare"],
              VLLM_DISABLE_COMPILE_CACHE="1", VLLM_CACHE_ROOT=str(tmp_path / "cache"), VLLM_CPU_KVCACHE_SPACE="1")
    assert "runs dynmoe (modular mode)" in out
    assert "greedy tokens equal to vLLM's own experts: True" in out
