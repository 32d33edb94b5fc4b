"""The installed package as a wheel user gets it: the entry point vLLM loads,
the integrations importable without their frameworks, and -- for a wheel
repaired by auditwheel (scripts/build-wheel.sh) -- every library libdynmoe
needs besides the manylinux baseline comes from the wheel's dynmoe.libs/."""
import importlib.metadata
import pathlib
import shutil
import subprocess

import pytest

import dynmoe

PKG = pathlib.Path(dynmoe.__file__).parent
LIBS = PKG.parent / "dynmoe.libs"
# glibc's libraries and the CUDA ones a CUDA wheel takes from the process
BASELINE = ("linux-vdso", "libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "ld-linux",
            "libgcc_s.so", "libstdc++.so", "libcublas", "libcuda.so")


def test_vllm_entry_point():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    ep = next((e for e in eps if e.name == "dynmoe"), None)
    assert ep is not None and ep.value == "dynmoe.integrations.vllm:register"
    register = ep.load()  # importing the plugin module needs no vLLM
    assert callable(register)


def test_integrations_import_without_frameworks():
    import dynmoe.integrations.support as support
    import dynmoe.integrations.vllm as plugin

    assert support.activation("silu") == "swiglu" and support.activation("gelu") == "geglu"
    assert support.activation("gelu_tanh") == "geglu_tanh" and support.activation("swigluoai") == "swiglu_oai"
    assert support.non_gated_activation("relu2_no_mul") == "relu2" and support.activation("relu2_no_mul") is None
    assert support.activation("swiglustep") is None
    assert plugin.mode() in plugin.MODES


@pytest.mark.skipif(not LIBS.is_dir(), reason="not installed from an auditwheel-repaired wheel")
def test_repaired_wheel_brings_its_libraries():
    if shutil.which("ldd") is None:
        pytest.skip("no ldd")
    lib = next(PKG.glob("libdynmoe.so*"))
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=True).stdout
    bundled = [p.name for p in LIBS.iterdir()]
    assert any(n.startswith("libopenblas") or n.startswith("libgomp") for n in bundled), bundled
    for line in out.splitlines():
        name = pathlib.Path(line.strip().split()[0]).name
        if name.startswith(BASELINE):
            continue
        assert "not found" not in line, out
        where = pathlib.Path(line.split("=>", 1)[1].split("(")[0].strip()).resolve()
        assert where.parent == LIBS.resolve(), f"{name} does not come from the wheel:\n{out}"
