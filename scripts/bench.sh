#!/usr/bin/env bash
# The README's main command: install what is missing, build, and run
# dynmoe-bench on the default preset (Qwen3-30B-A3B) — on the GPU when there
# is one, else on the CPU backend. Extra arguments go to dynmoe-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDYNMOE_BUILD_TESTS=OFF ${CMAKE_ARGS:-}
cmake --build "$build" -j"$(nproc)" --target dynmoe-bench
# Debian 12's OpenBLAS 0.3.21 does not know newer Xeons: on family 6 model 207 (no AMX exposed) its
# DYNAMIC_ARCH picked the Prescott kernels, and the bench's dense ceiling read 50 GFLOP/s instead of
# 230-247 (SkylakeX). Naming the core is OpenBLAS's own switch; a caller's setting is kept.
if [ -z "${OPENBLAS_CORETYPE+x}" ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  export OPENBLAS_CORETYPE=SkylakeX
fi
exec "$build/bench/dynmoe-bench" "$@"
