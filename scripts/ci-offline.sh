#!/usr/bin/env bash
# ci-offline.sh — CI's proof, on every commit, that the GPU machine's offline
# path works (issue 13.2): scripts/gpu-check.sh --prepare with the network,
# then scripts/gpu-check.sh itself as the device runs it, but
#   - with no network (a new network namespace: unshare -n);
#   - with the system's OpenBLAS, BLAS/LAPACK, GoogleTest (headers, libraries,
#     CMake and pkg-config files, /usr/src/googletest), OpenMPI and oneDNN removed: an
#     overlay on /usr, in a new mount namespace, deletes every file of those
#     packages (dpkg -L), so CMake cannot find what the GPU image lacks;
#   - with only the prepared gpu-check-deps/ beyond that.
# The CUDA code is built for sm_90 (what gpu-check builds on an H100/H200);
# the test list, CUDA cases included, is printed, and the suite runs (the CUDA
# cases skip without a device; the CPU parameterisations of Forward.*, which
# CI's first ctest has just run from the same sources, are left out; the
# whole suite took 70 s here). Needs root (CI runs as root) for the
# namespaces and the overlay; anything that stays visible fails the script.
#
#   bash scripts/ci-offline.sh        (build: build-offline/, logs: build-offline/out/)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${OFFLINE_BUILD_DIR:-$root/build-offline}

echo "=== $(date -u +%T) ci-offline: prepare (network on)"
bash scripts/gpu-check.sh --prepare

# Packages the GPU image does not have: removed from view inside the namespaces.
hide_re='^(libopenblas|libblas|liblapack|libgtest|libgmock|googletest|libopenmpi|openmpi|mpi-default|libdnnl)'
mapfile -t pkgs < <(dpkg-query -W -f '${Package}\n' 2>/dev/null | grep -E "$hide_re" || true)
echo "=== $(date -u +%T) ci-offline: hidden packages: ${pkgs[*]:-none installed}"

mkdir -p "$build"
rm -rf "$build/out"
# -n: no network; -m: our own mounts (the overlay vanishes with the namespace).
unshare --net --mount --propagation private bash -s -- "$build" "${pkgs[@]}" <<'INNER'
set -euo pipefail
build=$1
shift
ov=$(mktemp -d)
mount -t tmpfs ci-offline "$ov"
mkdir -p "$ov/up" "$ov/work"
mount -t overlay ci-offline -o "lowerdir=/usr,upperdir=$ov/up,workdir=$ov/work" /usr
n=0
if (($#)); then
    # files and links first, then the directories they leave empty
    while IFS= read -r f; do
        if [ -L "$f" ] || { [ -e "$f" ] && [ ! -d "$f" ]; }; then rm -f "$f" && n=$((n + 1)); fi
    done < <(dpkg -L "$@" 2>/dev/null | grep '^/usr/' | sort -u)
    dpkg -L "$@" 2>/dev/null | grep '^/usr/' | sort -ru | while IFS= read -r d; do
        [ -d "$d" ] && [ ! -L "$d" ] && rmdir --ignore-fail-on-non-empty "$d" 2>/dev/null || true
    done
fi
echo "ci-offline: $n files of ${#} packages removed from /usr (overlay, this namespace only)"

# What the GPU machine lacks must be gone; fail loudly if anything is still visible.
bad=0
probe() { if eval "$2" >/dev/null 2>&1; then echo "ci-offline: still visible: $1"; bad=1; fi; }
probe "network (1.1.1.1:443)" "timeout 3 bash -c 'exec 3<>/dev/tcp/1.1.1.1/443'"
probe "network (pypi.org)" "getent hosts pypi.org"
probe "GoogleTest headers" "test -e /usr/include/gtest/gtest.h"
probe "GoogleTest sources" "test -e /usr/src/googletest/CMakeLists.txt"
probe "GoogleTest CMake package" "test -e /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake"
probe "GoogleTest library" "test -e /usr/lib/x86_64-linux-gnu/libgtest.a"
probe "OpenBLAS (pkg-config)" "pkg-config --exists openblas"
probe "cblas.h" "test -e /usr/include/x86_64-linux-gnu/cblas.h || test -e /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h"
probe "libopenblas" "test -e /usr/lib/x86_64-linux-gnu/libopenblas.so"
probe "MPI (mpicc)" "command -v mpicc"
probe "MPI (mpi.h)" "test -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h"
((bad == 0)) || exit 1
echo "ci-offline: no network; no OpenBLAS, GoogleTest or MPI in sight"

echo "=== $(date -u +%T) ci-offline: scripts/gpu-check.sh as on the GPU machine (CUDA for sm_90; 2 cores: limits x4)"
rc=0
GPU_CHECK_CPU_TESTS=1 GPU_CHECK_CTEST_EXCLUDE="${GPU_CHECK_CTEST_EXCLUDE-Forward\.[^/]+/CPU_}" GPU_CHECK_SCALE=${GPU_CHECK_SCALE:-4} CUDA_ARCHS=${CUDA_ARCHS:-90} BUILD_DIR="$build/gpu-check" \
    bash scripts/gpu-check.sh "$build/out" || rc=$?
echo "=== $(date -u +%T) ci-offline: how the build found its dependencies"
cat "$build/out/logs/configure-summary.log" 2>/dev/null || true
echo "=== $(date -u +%T) ci-offline: the test list (ctest -N), CUDA cases included"
grep -E '^ *Test +#' "$build/out/logs/list.log" 2>/dev/null || echo "(no list: the build did not get that far)"
echo "=== $(date -u +%T) ci-offline: the suite"
tail -n 60 "$build/out/logs/ctest.log" 2>/dev/null || true
if ((rc != 0)); then
    for f in configure build ctest ctest-large; do
        [ -f "$build/out/logs/$f.log" ] && { echo "--- $f.log (end)"; tail -n 40 "$build/out/logs/$f.log"; }
    done
fi
exit $rc
INNER
