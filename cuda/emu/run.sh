#!/usr/bin/env bash
# cuda/emu/run.sh — builds and runs the emulated kernel tests alone (the same tests ctest runs
# under the label "emu" in the full build): the CUDA kernels' own sources (route, plan,
# combine, experts, expert-parallel pack) on the host, threads as fibers, the PTX of
# cuda/ptx.cuh emulated from the ISA (ptx_emu.h), against the fp64 reference and host loops.
# Needs a C++20 compiler (GCC >= 11), CMake, Ninja or make, python3; no GPU, no nvcc.
#
#   bash cuda/emu/run.sh [BUILD_DIR]        (under a minute on 2 cores)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${1:-$here/../../build-emu}
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$here" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
