#!/usr/bin/env bash
# The README's test command: install what is missing, build everything (the
# CUDA backend too when nvcc is found, for sm_80 and sm_90), run all tests:
# GoogleTest suites (CPU; GPU cases skip without a device), the MPI expert-
# parallel tests, and the Python package's pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "=== $(date -u +%T) setup (scripts/setup.sh)"
bash scripts/setup.sh

jobs=$(nproc)
build=${BUILD_DIR:-build}
echo "=== $(date -u +%T) build ($build)"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j"$jobs"
echo "=== $(date -u +%T) ctest"
ctest --test-dir "$build" --output-on-failure -j"$jobs"

if [ -f pyproject.toml ] && [ -d tests/python ]; then
  echo "=== $(date -u +%T) Python package (scripts/test-python.sh)"
  bash scripts/test-python.sh
fi
