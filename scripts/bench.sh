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
exec "$build/bench/dynmoe-bench" "$@"
