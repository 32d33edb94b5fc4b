"""bench/compare_frameworks.py (the CPU peers of issue 17) at a tiny shape: the
rows exist and every peer's output agrees with the float64 reference (so with
the others); a planted wrong peer (--plant eager: w2 x 1.5) makes the run
fail. The dynmoe, eager and dense rows need only torch; the vLLM rows run
where vLLM is installed (scripts/test-frameworks.sh runs this file in the vLLM
venv) and are checked to be skipped with the reason elsewhere."""
import json
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "compare_frameworks.py"
LIMIT = {"f32": 1e-4, "bf16": 2e-2}
TOKENS = (1, 5, 33)  # --smoke's


def run(tmp_path, *args):
    out = tmp_path / "rows.jsonl"
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out), *args], capture_output=True,
                         text=True, timeout=900)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return res, {(r["dtype"], r["T"], r["peer"]): r for r in rows}


def has_vllm():
    try:
        from vllm.model_executor.layers.fused_moe.experts import cpu_moe  # noqa: F401
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run(tmp_path_factory.mktemp("cf"))


def test_rows_exist_and_agree(smoke):
    res, rows = smoke
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert "# OK: 0 peer rows over the error limit" in res.stdout
    assert "CPU path " in res.stdout and "torch capability" in res.stdout  # the header names the paths
    for dn in ("f32", "bf16"):
        for t in TOKENS:
            for peer in ("dynmoe", "eager"):
                r = rows[(dn, t, peer)]
                assert len(r["ms"]) == 2 and r["median_ms"] > 0
                assert r["rel"] is not None and r["rel"] <= LIMIT[dn], r
            dense = rows[(dn, t, "dense")]
            assert dense["rel"] is None and dense["of_dense"] == pytest.approx(1.0)
            assert rows[(dn, t, "dynmoe")]["vs_dynmoe"] == pytest.approx(1.0)


def test_vllm_rows(smoke):
    res, rows = smoke
    if not has_vllm():
        for peer in ("vllm", "dynmoe-vllm", "vllm-amx"):
            assert "vLLM not importable" in rows[("f32", 1, peer)]["skipped"]
        pytest.skip("vLLM is not installed: its rows were skipped with the reason (checked)")
    amx = "amx_bf16" in open("/proc/cpuinfo").read()
    for dn in ("f32", "bf16"):
        for t in TOKENS:
            for peer in ("vllm", "dynmoe-vllm"):
                r = rows[(dn, t, peer)]
                assert r["rel"] is not None and r["rel"] <= LIMIT[dn], r
            r = rows[(dn, t, "vllm-amx")]
            if amx and dn == "bf16":
                assert r["rel"] is not None and r["rel"] <= LIMIT[dn], r
            else:
                assert r["skipped"].startswith("skipped: "), r
                assert ("no AMX on this CPU" in r["skipped"]) != amx, r


def test_a_wrong_peer_fails(tmp_path):
    res, rows = run(tmp_path, "--plant", "eager", "--peers", "eager", "--dtypes", "f32")
    assert res.returncode == 1, res.stdout[-4000:] + res.stderr[-4000:]
    assert "# FAIL: f32 T 1 eager" in res.stdout
    for t in TOKENS:
        assert rows[("f32", t, "eager")]["rel"] > 0.1
        assert rows[("f32", t, "dynmoe")]["rel"] <= LIMIT["f32"]
