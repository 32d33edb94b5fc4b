#!/usr/bin/env bash
# The CPU figures of bench/RESULTS.md, re-measured: keep-rate, zero-share and T
# sweeps of the Qwen3-30B-A3B layer, JSON lines and charts under OUT.
#   bench/results.sh [path/to/dynmoe-bench (default build/bench/dynmoe-bench)] [OUT (default bench/results)]      (about 10 minutes on 2 cores)
# Run it on a quiet machine: the banner prints the load average. Each sweep is
# measured round-robin 5 times (--rounds), so the ratios between its rows
# hold even when a shared machine slows down for a while.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build/bench/dynmoe-bench}
out=${2:-$here/results}
backend=${BACKEND:-cpu}
mkdir -p "$out"
json="$out/$backend.jsonl"
: >"$json"
echo "# $(date -u +%FT%TZ)  $(uptime)"
"$bin" --backend "$backend" --rounds "${ROUNDS:-5}" --preset qwen3-30b-a3b --tokens 2048 --keep 1,0.5,0.15 --json "$json"
"$bin" --backend "$backend" --rounds "${ROUNDS:-5}" --preset zeda-qwen3 --tokens 2048 --keep 1 --zero-share 0,0.25,0.5 --json "$json"
"$bin" --backend "$backend" --rounds "${ROUNDS:-5}" --preset qwen3-30b-a3b --tokens 1,16,128,512,2048 --keep 1 --json "$json"
# issues 15/16: the gpt-oss-20b keep-rate sweep (swiglu_oai, interleaved, biases), and the
# weight formats side by side on the Qwen3 layer in bf16: decode T = 1, 16 and prefill T = 2048
"$bin" --backend "$backend" --rounds "${ROUNDS:-5}" --preset gpt-oss-20b --tokens 2048 --keep 1,0.5,0.15 --json "$json"
"$bin" --backend "$backend" --rounds "${ROUNDS:-5}" --preset qwen3-30b-a3b --dtype bf16 --weights plain,fp8_block,mxfp4,int4 --tokens 1,16 --keep 1 --json "$json"
"$bin" --backend "$backend" --rounds "${ROUNDS:-5}" --preset qwen3-30b-a3b --dtype bf16 --weights plain,fp8_block,mxfp4,int4 --tokens 2048 --keep 1 --json "$json"
python3 "$here/plot.py" "$json" --out "$out" --prefix "${backend}_"
