#!/usr/bin/env bash
# The Python package's tests (part of the README's test command): builds and
# installs dynmoe with pip (the project's own CMake, driven by scikit-build-core)
# into a virtual environment with numpy, pytest and torch, then runs
# tests/python. DYNMOE_PY_TORCH=0 leaves torch out (the torch tests then skip);
# PYTHON picks the interpreter; CMAKE_ARGS reach the CMake configure.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
venv=${DYNMOE_PY_VENV:-build-py/venv}
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pkgs=(numpy pytest "scikit-build-core>=0.10")
[ "${DYNMOE_PY_TORCH:-1}" = 1 ] && pkgs+=(torch)
"$venv/bin/python" -m pip install -q "${pkgs[@]}"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$venv/bin/python" -m pip install -q --no-build-isolation ./python_ext
"$venv/bin/python" -m pytest tests/python -q
