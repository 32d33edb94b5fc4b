#!/usr/bin/env bash
# gpu-check.sh — the one prepared run for a GPU machine (DESIGN.md section 6).
#
# The GPU machine reaches no network: no apt, no pip. Its image has nvcc 13,
# CMake, ninja, compute-sanitizer and python3 with torch/numpy/pytest
# (/work/.library/device/KINDS.md), but no GoogleTest, OpenBLAS or MPI. So:
#
#   bash scripts/gpu-check.sh --prepare    here, where apt is reachable: fills
#                                          gpu-check-deps/ (git-ignored, <= 40 MiB;
#                                          today about 1 MB: the GoogleTest sources)
#   bash scripts/gpu-check.sh [OUT_DIR]    there: its image plus gpu-check-deps/
#                                          only (OUT_DIR: else $OUT, else gpu-check-out/)
#
# The device call, from the root of the checkout the session sends (the
# lead's: run --prepare in that checkout first):
#
#   run(command='GPU_CHECK_PACK=1 bash scripts/gpu-check.sh "$OUT"',
#       carry=["gpu-check-deps"], timeout_s=510)
#
# The step limits below add up to 395 s and GPU_CHECK_BUDGET_S (450) stops
# the run before 8 minutes whatever happens (a step past its limit is killed
# 10 s later; a later step that would start with under 20 s left is skipped,
# not failed). With the machine's 1-2 minute start that is <= 10 of the 15
# device minutes. A rerun on the still-warm machine (within 30 s of the
# reply) finds build-gpu-check/ (ignored, kept between calls) and rebuilds
# only what changed, so the rerun is the test steps: at most 225 s.
# GPU_CHECK_PACK=1 leaves 5 files in OUT_DIR (the device returns at most 8):
# summary.json, table.txt, bench.jsonl, bench_table.txt and logs.tar.gz.
#
# Steps, each with a log and a line in summary.json (limit in seconds):
#   env          nvidia-smi, nvcc, the compute capability
#   deps         cmake, ninja; GoogleTest installed or in gpu-check-deps/ (never installs)
#   configure    30  CMake + Ninja for the GPU found (sm_90 on H100/H200), else 80;90;
#                    -DDYNMOE_BLAS=OFF -DDYNMOE_MPI=OFF (NCCL when found)
#   build       140  everything, GoogleTest from source when it is not installed
#   list          -  ctest -N: the test list, CUDA cases counted (they skip without a GPU)
#   ctest        60  the whole suite but LargeIndex (CPU and CUDA parameterisations)
#   ctest-large  30  the LargeIndex cases (gigabytes), alone
#   memcheck, racecheck, initcheck  45 (together: the three run side by side)
#                    compute-sanitizer on the small CUDA cases of every test binary
#   graph        20  graph capture/replay, two-stream and determinism tests on CUDA
#   bench        70  dynmoe-bench --backend cuda, Qwen3-30B-A3B and DeepSeek-V3 presets
# and a short table last. Without a GPU it builds, lists the tests and stops,
# unless GPU_CHECK_CPU_TESTS=1 (scripts/ci-offline.sh, CI's proof of this
# offline path): then the two ctest steps run too, the CUDA cases skipping.
# Exit status: 0 when every step that ran passed.
#
# Knobs (environment): GPU_CHECK_BUDGET_S (450), GPU_CHECK_SCALE (multiplies
# every limit and the budget; CI's 2 cores), GPU_CHECK_JOBS, GPU_CHECK_DEPS
# (gpu-check-deps/), GPU_CHECK_PACK, GPU_CHECK_CPU_TESTS, GPU_CHECK_CTEST_EXCLUDE
# (a ctest regex of cases the suite step leaves out, besides LargeIndex), CUDA_ARCHS,
# SANITIZER_FILTER, GRAPH_FILTER, BENCH_TOKENS, BUILD_DIR, CMAKE_EXTRA_ARGS.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
deps=${GPU_CHECK_DEPS:-$root/gpu-check-deps}

# ---- --prepare: everything the offline run needs beyond the image -------------
if [ "${1:-}" = --prepare ]; then
    set -e
    gsrc=/usr/src/googletest
    if [ ! -f $gsrc/CMakeLists.txt ]; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        echo "gpu-check --prepare: apt-get install googletest (the GoogleTest sources)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends googletest >/dev/null
    fi
    rm -rf "$deps"
    mkdir -p "$deps/googletest"
    # gtest alone: the top CMakeLists builds googlemock only with BUILD_GMOCK,
    # which tests/CMakeLists.txt turns off.
    cp -r $gsrc/CMakeLists.txt $gsrc/googletest "$deps/googletest/"
    rm -rf "$deps/googletest/googletest/docs" "$deps/googletest/googletest/samples" "$deps/googletest/googletest/test"
    {
        echo "gpu-check-deps: what scripts/gpu-check.sh needs on the offline GPU machine beyond its image"
        echo "prepared $(date -u +%FT%TZ) on $(uname -n), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null)"
        echo "googletest/  GoogleTest $(dpkg-query -W -f='${Version}' googletest 2>/dev/null || echo '?') sources from $gsrc"
        echo "             (tests/CMakeLists.txt builds them when find_package(GTest) finds none)"
    } >"$deps/MANIFEST"
    bytes=$(du -sb "$deps" | cut -f1)
    if ((bytes > 40 * 1024 * 1024)); then
        echo "gpu-check --prepare: $deps is $bytes bytes, over the 40 MiB limit" >&2
        exit 1
    fi
    echo "gpu-check --prepare: $deps ready ($((bytes / 1024)) KiB):"
    cat "$deps/MANIFEST"
    echo "device call: run(command='GPU_CHECK_PACK=1 bash scripts/gpu-check.sh \"\$OUT\"', carry=[\"gpu-check-deps\"], timeout_s=510)"
    exit 0
fi

out=${1:-${OUT:-$root/gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
logs=$out/logs
mkdir -p "$logs"
build=${BUILD_DIR:-$root/build-gpu-check}
scale=${GPU_CHECK_SCALE:-1}
budget=$((${GPU_CHECK_BUDGET_S:-450} * scale))
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

# limit_of LIMIT: the step's limit scaled, cut to the budget left; 0 when
# under 20 s are left (the step is then skipped).
limit_of() {
    local limit=$(($1 * scale)) remaining
    remaining=$(left)
    ((remaining < 20)) && { echo 0; return; }
    ((limit > remaining)) && limit=$remaining
    echo "$limit"
}

# status_of RC LIMIT NAME: the status and note of a finished step.
status_of() {
    if (($1 == 0)); then echo "pass|log: logs/$3.log"
    elif (($1 == 124 || $1 == 137)); then echo "timeout|over ${2}s, log: logs/$3.log"
    else echo "fail|exit $1, log: logs/$3.log"; fi
}

# run_step NAME LIMIT_S CMD...: runs CMD with a time limit into logs/NAME.log and records it.
run_step() {
    local name=$1 limit
    limit=$(limit_of "$2")
    shift 2
    if ((limit == 0)); then
        record "$name" skip 0 "time budget spent"
        return 0
    fi
    local t0 rc s
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    s=$(status_of $rc "$limit" "$name")
    record "$name" "${s%%|*}" $(($(date +%s) - t0)) "${s#*|}"
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
    if [ "${GPU_CHECK_PACK:-0}" = 1 ]; then
        # the device returns at most 8 files: the logs travel as one archive
        tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
    fi
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
    cmake --version 2>&1 | head -n1
} >"$logs/env.log" 2>&1
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

# ---- deps: what the build needs, from the image or gpu-check-deps/ (never installed) ----
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v nvcc >/dev/null 2>&1 || missing+=(nvcc)
gtest_args=()
if [ -f "$deps/googletest/CMakeLists.txt" ]; then
    gtest_args=("-DDYNMOE_GTEST_SOURCE=$deps/googletest")
    gtest_from="GoogleTest: installed, else $deps/googletest"
elif [ -f /usr/include/gtest/gtest.h ] || [ -f /usr/local/include/gtest/gtest.h ]; then
    gtest_from="GoogleTest: installed"
else
    gtest_from=""
fi
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if ((${#missing[@]})); then
    record deps fail 0 "missing from the image: ${missing[*]}"
    finish
fi
tests_opt=()
if [ -z "$gtest_from" ]; then
    tests_opt=(-DDYNMOE_BUILD_TESTS=OFF)
    record deps fail 0 "no GoogleTest: run 'bash scripts/gpu-check.sh --prepare' where apt works and carry gpu-check-deps; building without tests"
else
    record deps pass 0 "cmake, nvcc${generator:+, ninja}; $gtest_from"
fi

# ---- build ------------------------------------------------------------------
# shellcheck disable=SC2086 # CMAKE_EXTRA_ARGS is a list of words
if ! run_step configure 30 cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DDYNMOE_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$archs" -DDYNMOE_BLAS=OFF -DDYNMOE_MPI=OFF \
    -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON "${gtest_args[@]}" "${tests_opt[@]}" ${CMAKE_EXTRA_ARGS:-}; then
    finish
fi
grep -E 'dynmoe: |GoogleTest' "$logs/configure.log" | sed 's/^-- //' >"$logs/configure-summary.log"
if ! run_step build 140 cmake --build "$build" -j "$jobs"; then
    finish
fi

# ---- the test list: CUDA cases are in it, with or without a GPU ----------------
if [ ${#tests_opt[@]} -eq 0 ]; then
    ctest --test-dir "$build" -N >"$logs/list.log" 2>&1
    n_all=$(grep -cE '^ *Test +#[0-9]+: ' "$logs/list.log")
    n_cuda=$(grep -cE '^ *Test +#[0-9]+: .*/CUDA( |$)' "$logs/list.log")
    if ((n_cuda > 0)); then
        record list pass 0 "$n_all tests listed, $n_cuda of them CUDA cases (log: logs/list.log)"
    else
        record list fail 0 "$n_all tests listed, no CUDA case among them (log: logs/list.log)"
    fi
fi

run_tests=$have_gpu
[ "${GPU_CHECK_CPU_TESTS:-0}" = 1 ] && run_tests=1
if ((!run_tests)); then
    record gpu skip 0 "no GPU on this machine: built for sm_${archs}; tests, sanitizers and bench need one"
    finish
fi

# ---- the suite ----------------------------------------------------------------
# Everything but the multi-gigabyte cases in parallel, then those alone.
ctest_jobs=$((jobs > 8 ? 8 : jobs))
run_step ctest 60 ctest --test-dir "$build" --output-on-failure --timeout $((55 * scale)) -j "$ctest_jobs" \
    -E "LargeIndex${GPU_CHECK_CTEST_EXCLUDE:+|$GPU_CHECK_CTEST_EXCLUDE}"
# (tests/CMakeLists.txt marks a GoogleTest skip as a ctest skip)
n_skip=$(grep -cE '/CUDA( .*)? \(Skipped\)' "$logs/ctest.log")
((n_skip > 0)) && record cuda-skip info 0 "$n_skip CUDA cases skipped (no usable CUDA device)"
run_step ctest-large 30 ctest --test-dir "$build" --output-on-failure --timeout $((28 * scale)) -R LargeIndex

if ((!have_gpu)); then
    record gpu skip 0 "no GPU: compute-sanitizer, graph and bench need one"
    finish
fi

# ---- compute-sanitizer on the small CUDA cases, the three tools side by side ---------
sanitizer=$(command -v compute-sanitizer || true)
[ -z "$sanitizer" ] && [ -x /usr/local/cuda/compute-sanitizer/compute-sanitizer ] &&
    sanitizer=/usr/local/cuda/compute-sanitizer/compute-sanitizer
test_bins=()
for s in route plan forward api cuda; do
    b=$(find "$build" -type f -name "test_$s" -perm -u+x 2>/dev/null | head -n1)
    [ -n "$b" ] && test_bins+=("$b")
done
# sanitize_script TOOL: every test binary under the tool (all of them, even
# after a failure).
sanitize_script() {
    local tool=$1 b script="rc=0"
    for b in "${test_bins[@]}"; do
        script+="; echo '### $tool $(basename "$b")'; '$sanitizer' --tool $tool --error-exitcode 99"
        [ "$tool" = memcheck ] && script+=" --leak-check full"
        [ "$tool" = racecheck ] && script+=" --racecheck-report hazard"
        script+=" '$b' --gtest_filter='$sanitizer_filter' || rc=1"
    done
    echo "$script; exit \$rc"
}
if [ -z "$sanitizer" ]; then
    record sanitizer skip 0 "compute-sanitizer not found"
elif ((${#test_bins[@]} == 0)); then
    record sanitizer skip 0 "no test binaries built"
else
    limit=$(limit_of 45)
    if ((limit == 0)); then
        record sanitizer skip 0 "time budget spent"
    else
        t0=$(date +%s)
        declare -A pid_of
        for tool in memcheck racecheck initcheck; do
            timeout --kill-after=10 "$limit" bash -c "$(sanitize_script $tool)" >"$logs/$tool.log" 2>&1 &
            pid_of[$tool]=$!
        done
        for tool in memcheck racecheck initcheck; do
            wait "${pid_of[$tool]}"
            rc=$?
            s=$(status_of $rc "$limit" "$tool")
            record "$tool" "${s%%|*}" $(($(date +%s) - t0)) "${s#*|}"
        done
    fi
fi

# ---- graphs, streams, determinism -------------------------------------------------
if ((${#test_bins[@]})); then
    script="rc=0"
    for b in "${test_bins[@]}"; do script+="; '$b' --gtest_filter='$graph_filter' --gtest_repeat=2 || rc=1"; done
    run_step graph 20 bash -c "$script; exit \$rc"
    grep -q '^\[       OK \]' "$logs/graph.log" 2>/dev/null ||
        record graph-run info 0 "no test matched GRAPH_FILTER='$graph_filter'"
fi

# ---- benchmark -------------------------------------------------------------------
bench=""
for c in "$build/dynmoe-bench" "$build/bench/dynmoe-bench"; do [ -x "$c" ] && bench=$c && break; done
if [ -n "$bench" ]; then
    : >"$out/bench.jsonl"
    run_step bench 70 bash -c "'$bench' --backend cuda --preset qwen3-30b-a3b --tokens $bench_tokens --keep 1,0.5,0.15 --json '$out/bench.jsonl' &&
        '$bench' --backend cuda --preset deepseek-v3 --tokens $bench_tokens --keep 1,0.5,0.15 --json '$out/bench.jsonl'"
    # the bench's own table, for the last screen
    grep -v '^\[' "$logs/bench.log" 2>/dev/null | tail -n 30 >"$out/bench_table.txt" || true
else
    record bench skip 0 "dynmoe-bench not built"
fi

if [ -s "$out/bench_table.txt" ]; then
    echo
    cat "$out/bench_table.txt"
fi
finish
