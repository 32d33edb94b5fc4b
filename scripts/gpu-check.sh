#!/usr/bin/env bash
# gpu-check.sh — the one prepared run for a GPU machine (DESIGN.md section 6).
#
#   bash scripts/gpu-check.sh [OUT_DIR]        (OUT_DIR: else $OUT, else gpu-check-out/)
#
# Steps, each with a log in OUT_DIR and a line in OUT_DIR/summary.json:
#   env        nvidia-smi, nvcc, the compute capability
#   deps       cmake, ninja, GoogleTest, OpenBLAS (apt-get when missing; offline is fine)
#   build      CMake + Ninja for the GPU found (sm_90 on H100/H200), else 80;90
#   ctest      the whole suite (CPU and CUDA parameterisations)
#   memcheck, racecheck, initcheck   compute-sanitizer on the small CUDA cases
#   graph      graph capture/replay, two-stream and determinism tests on CUDA
#   bench      dynmoe-bench --backend cuda on the Qwen3-30B-A3B and DeepSeek-V3 presets
# and a short table last. Meant to finish in under 8 minutes; each step has a
# time limit and later steps are skipped (not failed) when the budget is spent.
# Without a GPU it builds, says so, and stops. Exit status: 0 when every step
# that ran passed.
#
# Knobs (environment): GPU_CHECK_BUDGET_S (default 450), GPU_CHECK_JOBS,
# CUDA_ARCHS (override the detected arch), SANITIZER_FILTER (gtest filter of
# the small cases), GRAPH_FILTER, BENCH_TOKENS, BUILD_DIR, CMAKE_EXTRA_ARGS.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out=${1:-${OUT:-$root/gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${BUILD_DIR:-$root/build-gpu-check}
budget=${GPU_CHECK_BUDGET_S:-450}
jobs=${GPU_CHECK_JOBS:-$(nproc 2>/dev/null || echo 4)}
start=$(date +%s)

# CUDA tests are named Backends/Suite.Case/CUDA. Small cases: every CUDA test
# but the ones that allocate gigabytes (LargeIndex) and the model-sized layers.
sanitizer_filter=${SANITIZER_FILTER:-'*/CUDA:-*LargeIndex*:*Forward.*ModelConfigs*:*ExpertPaths*:*TwoStreams*'}
graph_filter=${GRAPH_FILTER:-'*Graph*/CUDA:*Stream*/CUDA:*Deterministic*/CUDA'}
bench_tokens=${BENCH_TOKENS:-1,64,4096}

export PATH="$PATH:/usr/local/cuda/bin${CUDA_HOME:+:$CUDA_HOME/bin}"

declare -a step_names step_status step_secs step_notes
overall=0

elapsed() { echo $(($(date +%s) - start)); }
left() { echo $((budget - $(elapsed))); }

# record NAME STATUS SECONDS NOTE  (STATUS: pass | fail | skip | timeout | info)
record() {
    step_names+=("$1"); step_status+=("$2"); step_secs+=("$3"); step_notes+=("$4")
    case $2 in fail | timeout) overall=1 ;; esac
    printf '[gpu-check] %-11s %-7s %4ss  %s\n' "$1" "$2" "$3" "$4"
}

# run NAME LIMIT_S CMD...: runs CMD with a time limit into OUT/NAME.log and records it.
run_step() {
    local name=$1 limit=$2
    shift 2
    local remaining
    remaining=$(left)
    if ((remaining < 20)); then
        record "$name" skip 0 "time budget spent"
        return 0
    fi
    ((limit > remaining)) && limit=$remaining
    local t0 rc status note
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    if ((rc == 0)); then status=pass; note="log: $name.log"
    elif ((rc == 124 || rc == 137)); then status=timeout; note="over ${limit}s, log: $name.log"
    else status=fail; note="exit $rc, log: $name.log"; fi
    record "$name" "$status" $(($(date +%s) - t0)) "$note"
    return $rc
}

json_escape() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\n\r\t'; }

write_summary() {
    local f=$out/summary.json i
    {
        printf '{\n  "commit": "%s",\n' "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        printf '  "date": "%s",\n' "$(date -u +%FT%TZ)"
        printf '  "gpu": "%s",\n  "compute_cap": "%s",\n  "cuda_archs": "%s",\n' \
            "$(json_escape "$gpu_name")" "$(json_escape "$cc")" "$(json_escape "$archs")"
        printf '  "elapsed_s": %d,\n  "ok": %s,\n  "steps": [\n' "$(elapsed)" "$([ $overall = 0 ] && echo true || echo false)"
        for i in "${!step_names[@]}"; do
            printf '    {"name": "%s", "status": "%s", "seconds": %s, "note": "%s"}%s\n' \
                "${step_names[$i]}" "${step_status[$i]}" "${step_secs[$i]}" "$(json_escape "${step_notes[$i]}")" \
                "$([ "$i" -lt $((${#step_names[@]} - 1)) ] && echo , || true)"
        done
        printf '  ]\n}\n'
    } >"$f"
}

print_table() {
    local i
    echo
    echo "gpu-check  $(git -C "$root" rev-parse --short HEAD 2>/dev/null)  ${gpu_name:-no GPU}  sm_${archs}  $(elapsed)s"
    printf '%-11s %-8s %6s  %s\n' step status secs note
    for i in "${!step_names[@]}"; do
        printf '%-11s %-8s %6s  %s\n' "${step_names[$i]}" "${step_status[$i]}" "${step_secs[$i]}" "${step_notes[$i]}"
    done
    echo "logs and summary.json in $out"
    [ $overall = 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL"
}

finish() {
    write_summary
    print_table | tee "$out/table.txt"
    exit $overall
}

# ---- env --------------------------------------------------------------------
gpu_name="" cc="" archs=""
have_gpu=0
{
    date -u
    uname -a
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    nvcc --version 2>&1 || echo "nvcc: not found"
} >"$out/env.log" 2>&1
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')
fi
if [[ -n $cc && $cc =~ ^[0-9]+\.[0-9]+$ ]]; then
    have_gpu=1
    archs=${CUDA_ARCHS:-${cc/./}}
    record env info 0 "$gpu_name, compute capability $cc"
else
    archs=${CUDA_ARCHS:-80;90}
    record env info 0 "no GPU found (nvidia-smi gave no compute capability)"
fi

# ---- deps -------------------------------------------------------------------
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
{ [ -f /usr/include/gtest/gtest.h ] || [ -f /usr/local/include/gtest/gtest.h ]; } || missing+=(libgtest-dev)
{ pkg-config --exists openblas 2>/dev/null || [ -f /usr/include/x86_64-linux-gnu/cblas.h ] ||
    [ -f /usr/include/openblas/cblas.h ]; } || missing+=(libopenblas-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
    t0=$(date +%s)
    if timeout 120 bash -c "export DEBIAN_FRONTEND=noninteractive; $sudo apt-get update -q && $sudo apt-get install -y -q ${missing[*]}" \
        >"$out/deps.log" 2>&1; then
        record deps pass $(($(date +%s) - t0)) "installed: ${missing[*]}"
    else
        record deps info $(($(date +%s) - t0)) "could not install ${missing[*]} (offline?); going on, see deps.log"
    fi
else
    record deps pass 0 "cmake, ninja, gtest, openblas present"
fi

# ---- build ------------------------------------------------------------------
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
tests_opt=()
if ! { [ -f /usr/include/gtest/gtest.h ] || [ -f /usr/local/include/gtest/gtest.h ]; }; then
    tests_opt=(-DDYNMOE_BUILD_TESTS=OFF)
    record tests info 0 "GoogleTest missing: building without the test suites"
fi
# shellcheck disable=SC2086 # CMAKE_EXTRA_ARGS is a list of words
if ! run_step configure 120 cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DDYNMOE_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$archs" "${tests_opt[@]}" ${CMAKE_EXTRA_ARGS:-}; then
    finish
fi
if ! run_step build 300 cmake --build "$build" -j "$jobs"; then
    finish
fi

if ((!have_gpu)); then
    record gpu skip 0 "no GPU on this machine: built for sm_${archs}; tests, sanitizers and bench need one"
    finish
fi

# ---- the suite ----------------------------------------------------------------
# Everything but the multi-gigabyte cases in parallel, then those alone.
run_step ctest 180 ctest --test-dir "$build" --output-on-failure --timeout 120 -j 4 -E LargeIndex
run_step ctest-large 120 ctest --test-dir "$build" --output-on-failure --timeout 110 -R LargeIndex

# ---- compute-sanitizer on the small CUDA cases ------------------------------------
sanitizer=$(command -v compute-sanitizer || true)
[ -z "$sanitizer" ] && [ -x /usr/local/cuda/compute-sanitizer/compute-sanitizer ] &&
    sanitizer=/usr/local/cuda/compute-sanitizer/compute-sanitizer
test_bins=()
for s in route plan forward api cuda; do
    b=$(find "$build" -type f -name "test_$s" -perm -u+x 2>/dev/null | head -n1)
    [ -n "$b" ] && test_bins+=("$b")
done
# sanitize TOOL LIMIT: every test binary under the tool (all of them, even
# after a failure), one log per tool.
sanitize() {
    local tool=$1 limit=$2 b
    local script="rc=0"
    for b in "${test_bins[@]}"; do
        script+="; echo '### $tool $(basename "$b")'; '$sanitizer' --tool $tool --error-exitcode 99"
        [ "$tool" = memcheck ] && script+=" --leak-check full"
        [ "$tool" = racecheck ] && script+=" --racecheck-report hazard"
        script+=" '$b' --gtest_filter='$sanitizer_filter' || rc=1"
    done
    run_step "$tool" "$limit" bash -c "$script; exit \$rc"
}
if [ -z "$sanitizer" ]; then
    record sanitizer skip 0 "compute-sanitizer not found"
elif ((${#test_bins[@]} == 0)); then
    record sanitizer skip 0 "no test binaries built"
else
    sanitize memcheck 120
    sanitize racecheck 90
    sanitize initcheck 90
fi

# ---- graphs, streams, determinism -------------------------------------------------
if ((${#test_bins[@]})); then
    script="rc=0"
    for b in "${test_bins[@]}"; do script+="; '$b' --gtest_filter='$graph_filter' --gtest_repeat=2 || rc=1"; done
    run_step graph 60 bash -c "$script; exit \$rc"
    grep -q '^\[       OK \]' "$out/graph.log" 2>/dev/null ||
        record graph-run info 0 "no test matched GRAPH_FILTER='$graph_filter'"
fi

# ---- benchmark -------------------------------------------------------------------
bench=""
for c in "$build/dynmoe-bench" "$build/bench/dynmoe-bench"; do [ -x "$c" ] && bench=$c && break; done
if [ -n "$bench" ]; then
    : >"$out/bench.jsonl"
    run_step bench 120 bash -c "'$bench' --backend cuda --preset qwen3-30b-a3b --tokens $bench_tokens --keep 1,0.5,0.15 --json '$out/bench.jsonl' &&
        '$bench' --backend cuda --preset deepseek-v3 --tokens $bench_tokens --keep 1,0.5,0.15 --json '$out/bench.jsonl'"
    # the bench's own table, for the last screen
    grep -v '^\[' "$out/bench.log" 2>/dev/null | tail -n 30 >"$out/bench_table.txt" || true
else
    record bench skip 0 "dynmoe-bench not built"
fi

if [ -s "$out/bench_table.txt" ]; then
    echo
    cat "$out/bench_table.txt"
fi
finish
