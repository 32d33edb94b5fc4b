#!/usr/bin/env bash
# cuda/emu/run.sh — runs the CUDA backend's route, route_tasks, plan and
# combine kernels, from their own sources, on the host, and compares them with
# the serial CPU rules. For machines without a GPU (CI, the 2-core dev box):
# it checks the kernels' logic — warp collectives, per-lane ownership, the
# segmented counting sort, the launchers' geometry — not timing or the memory
# model (compute-sanitizer racecheck on a GPU does that).
#
#   bash cuda/emu/run.sh [WORK_DIR]        (about a minute on 2 cores)
#
# How: each .cu is turned into host C++: a launch `k<<<g, b, smem, st>>>(...)`
# becomes emu_launch(g, b, smem, ...), which also checks the configuration
# (block size, at most 48 KiB of dynamic shared memory), and __shared__
# becomes static. inc/ stands in for cuda_runtime.h and CUB: one std::thread
# per CUDA thread, std::barrier for __syncwarp/__syncthreads, the warp
# collectives through a per-warp exchange.
# Lanes are not in lockstep here, so a missing __syncwarp can show up as a
# wrong result. Needs g++ >= 11 (C++20) and python3.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"

python3 - "$root/cuda" "$work" <<'PY'
import re, sys
src, work = sys.argv[1], sys.argv[2]
launch = re.compile(r'(\w+)<<<([^,]+), ([^,]+), ([^,]+), ([^>]+)>>>\(')
for name in ('route', 'plan', 'combine'):
    s = open(f'{src}/{name}.cu').read()
    s = s.replace('extern __shared__', 'extern').replace('__shared__', 'static')
    out, pos = [], 0
    for m in launch.finditer(s):
        end = s.index(');', m.end())
        out += [s[pos:m.start()], f'emu_launch({m.group(2)}, {m.group(3)}, {m.group(4)}, [&] {{ {m.group(1)}(', s[m.end():end], '); })']
        pos = end + 1
    out.append(s[pos:])
    open(f'{work}/{name}.emu.inc', 'w').write(''.join(out))
PY

status=0
for t in route tasks plan combine; do
    g++ -std=c++20 -O1 -Wall -Wno-unused-function -Wno-unknown-pragmas -I "$here/inc" -I "$work" -I "$root/include" -I "$root/csrc" \
        -I "$root/cuda" "$here/${t}_test.cc" -o "$work/${t}_test" -lpthread
    if "$work/${t}_test" >"$work/$t.log" 2>&1; then
        tail -n 1 "$work/$t.log"
    else
        status=1
        tail -n 20 "$work/$t.log"
    fi
done
exit $status
