#!/usr/bin/env python3
"""sass_loops.py SASS [OPCODE MIN] — for every function of a `cuobjdump -sass` listing, the
smallest loop (a backward branch and its target) holding at least MIN instructions whose opcode
starts with OPCODE (default: HMMA 64, the prefill kernel's k-tile loop), with its static size and
its memory and math instructions. The numbers of docs/cuda.md's before/after table:

    nvcc -std=c++17 -O3 -cubin -arch=sm_90 -Xptxas -v -Iinclude -Icsrc -Icuda -Icsrc/ep \\
         -DDYNMOE_HAVE_CUDA=1 -o experts.cubin cuda/experts.cu
    cuobjdump -sass experts.cubin > experts.sass      # pip install nvidia-cuda-cuobjdump
    python3 cuda/sass_loops.py experts.sass             # prefill k-tile loops
    python3 cuda/sass_loops.py experts.sass LDG.E.128 8 # decode streaming loops
"""
import re
import sys
from collections import Counter

KINDS = ('HMMA', 'LDSM', 'LDGSTS', 'LDG', 'STG', 'LDS', 'STS', 'FFMA', 'SHFL', 'BAR')


def main():
    opc = sys.argv[2] if len(sys.argv) > 2 else 'HMMA'
    need = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    funcs, cur = {}, None
    for line in open(sys.argv[1]):
        m = re.search(r'Function : (\S+)', line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
        if m and cur:
            funcs[cur].append((int(m.group(1), 16), m.group(2).strip()))
    op = lambda t: re.sub(r'^@!?U?P\w+\s+', '', t).split()[0]
    for f, ins in funcs.items():
        best = None
        for a, t in ins:
            m = re.search(r'\bBRA\b.*?(0x[0-9a-f]+)\s*$', t)
            if m and int(m.group(1), 16) < a:
                lo = int(m.group(1), 16)
                body = [x for b, x in ins if lo <= b <= a]
                if sum(op(x).startswith(opc) for x in body) >= need and (best is None or len(body) < len(best)):
                    best = body
        if best is None:
            print(f'{f}: {len(ins)} instructions; no loop with {need} {opc}')
            continue
        c = Counter(op(x).split('.')[0] for x in best)
        kinds = ', '.join(f'{k} {c[k]}' for k in KINDS if c[k])
        print(f'{f}: {len(ins)} instructions; loop {len(best)}: {kinds}')


main()
