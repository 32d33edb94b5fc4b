"""examples/ run as a user would run them (CPU, small sizes)."""
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_vllm_fused_moe(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    res = subprocess.run([sys.executable, str(EXAMPLES / "vllm_fused_moe.py"), "--backend", backend],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("ok")
