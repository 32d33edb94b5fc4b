#!/usr/bin/env bash
# ci-fuzz.sh — the libFuzzer target of the API's argument checks
# (tests/fuzz/fuzz_api.cc), run for a bounded time on every commit (.ci/run).
#
#   bash scripts/ci-fuzz.sh            (FUZZ_SECONDS=60, FUZZ_BUILD_DIR=build-fuzz)
#
# Builds the CPU library and the target with clang and
# -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all (the library
# too: its undefined behaviour stops the run), replays the checked-in seed
# corpus (tests/fuzz/corpus/, a table of the entry points it reaches), then
# fuzzes a scratch copy of it for FUZZ_SECONDS. Prints the exec count and
# exec/s. A crash, a UB report, a leak or a timeout fails the script, leaves
# the input in $FUZZ_BUILD_DIR/fuzz-artifacts/ and prints it in base64: add
# it to tests/fuzz/corpus/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
build=${FUZZ_BUILD_DIR:-build-fuzz}

# clang, its libFuzzer runtime and OpenMP (CI runs as root; apt only when missing)
missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || missing+=(libclang-rt-dev)
ls /usr/lib/llvm-*/lib/libomp.so >/dev/null 2>&1 || missing+=(libomp-dev)
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "ci-fuzz: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$build"
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDYNMOE_FUZZ=ON \
  -DDYNMOE_CUDA=OFF -DDYNMOE_MPI=OFF -DDYNMOE_BUILD_BENCH=OFF >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" --target fuzz_api
fuzz=$build/tests/fuzz/fuzz_api

# One thread: the target checks arguments, and OpenMP's spinning threads on a
# 2-core machine would cost most of the exec/s.
cores=$(nproc) # before OMP_NUM_THREADS, which nproc obeys
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
flags=(-rss_limit_mb=2048 -timeout=25 -print_final_stats=1)
art=$build/fuzz-artifacts
rm -rf "$art" "$build/fuzz-corpus"
mkdir -p "$art" "$build/fuzz-corpus"

echo "=== $(date -u +%T) ci-fuzz: the seed corpus ($(find tests/fuzz/corpus -type f | wc -l) inputs), entry points reached"
DYNMOE_FUZZ_TRACE=1 "$fuzz" "${flags[@]}" -runs=0 -artifact_prefix="$art/" tests/fuzz/corpus \
  >"$build/fuzz-seeds.log" 2>&1 || { tail -n 40 "$build/fuzz-seeds.log"; exit 1; }
grep '^entry ' "$build/fuzz-seeds.log" | sort | uniq -c | awk '{printf "  %-16s %-32s %4d\n", $3, $4, $1}'
for e in route route_tasks plan_build experts_forward moe_forward; do
  grep -q "^entry $e DYNMOE_OK" "$build/fuzz-seeds.log" ||
    { echo "ci-fuzz: no seed reaches an accepted $e call"; exit 1; }
done

echo "=== $(date -u +%T) ci-fuzz: ${secs}s of fuzzing"
cp tests/fuzz/corpus/* "$build/fuzz-corpus/"
rc=0
"$fuzz" "${flags[@]}" -max_total_time="$secs" -artifact_prefix="$art/" "$build/fuzz-corpus" \
  >"$build/fuzz.log" 2>&1 || rc=$?
grep -E '^stat::|^#[0-9]+ +DONE' "$build/fuzz.log" || true
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build/fuzz.log")
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$build/fuzz.log")
echo "ci-fuzz: ${runs:-?} executions in ${secs}s, ${rate:-?} exec/s ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $cores cores)"
if ((rc != 0)); then
  echo "ci-fuzz: FAILED (exit $rc); the end of the log:"
  tail -n 40 "$build/fuzz.log"
  for f in "$art"/*; do [ -f "$f" ] && echo "input $f (base64): $(base64 -w0 "$f")"; done
  exit "$rc"
fi
echo "ci-fuzz: no crash, UB, leak or timeout"
