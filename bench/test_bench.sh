#!/usr/bin/env bash
# ctest bench_flags: dynmoe-bench's flags of issues 15/16 on small layers.
#   bench/test_bench.sh path/to/dynmoe-bench
# Checks: the new presets and --weights are listed by --help; bad values fail
# with a message naming the flag (exit 2); every preset runs every format and
# its JSON lines carry the format, the preset's expert options and the stored
# bytes of one expert (values + scales + zero points, recomputed here from
# include/dynmoe.h's layouts), and weight_bytes = active experts x that.
# Every row must run (the CPU kernels implement every option and format; the
# runs take --backend cpu, so a GPU machine runs them on the CPU too).
set -euo pipefail
bin=${1:?usage: test_bench.sh path/to/dynmoe-bench}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

help=$("$bin" --help)
for w in gpt-oss-20b gpt-oss-120b llama4-scout "--weights W" "--group-size G" "native mxfp4" "native fp8_block"; do
  grep -q -- "$w" <<<"$help" || fail "--help does not mention '$w'"
done

# bad input: exit 2 and a message that names the flag and the value
expect_bad() { # expected-message args...
  local want=$1; shift
  set +e
  "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  set -e
  [ "$rc" = 2 ] || [ "$rc" = 1 ] || fail "'$*' exited $rc, expected an error"
  grep -qF -- "$want" "$tmp/err" || { cat "$tmp/err" >&2; fail "'$*': no '$want' in the message"; }
}
expect_bad "--weights: expected plain, fp8_block, mxfp4, int4 or native (a comma list), got 'fp4'" --weights fp4
expect_bad "got 'int8'" --weights plain,int8
expect_bad "--group-size: expected 32, 64 or 128, got '48'" --group-size 48
expect_bad "--weights: plain is listed twice (native is plain for qwen3-30b-a3b)" --preset qwen3 --weights plain,native
expect_bad "--weights mxfp4 needs H and I divisible by 32" --preset qwen3 --hidden 100 --weights mxfp4 --tokens 1
expect_bad "unknown preset 'gpt-oss'" --preset gpt-oss   # a prefix of two presets is ambiguous

# every new preset (and a 0.1 one) with every format, on a small layer: H 320
# and I 96 leave partial 128-blocks (fp8) and a short last int4 group
run=(--backend cpu --experts 8 --hidden 320 --inter 96 --tokens 3 --keep 1,0.5 --iters 2 --warmup 0 --rounds 1 --rotate 1 --quiet)
for p in gpt-oss-20b gpt-oss-120b llama4-scout qwen3-30b-a3b; do
  set +e
  "$bin" --preset "$p" --weights plain,fp8_block,mxfp4,int4 "${run[@]}" --json "$tmp/r.jsonl" >"$tmp/$p.txt" 2>&1
  set -e
done
"$bin" --preset deepseek-v3 --groups 2 --topk-groups 1 --weights native,int4 --group-size 32 "${run[@]}" --json "$tmp/r.jsonl" >"$tmp/ds.txt" 2>&1 || true
"$bin" --preset gpt-oss-20b --weights native "${run[@]}" --json "$tmp/r.jsonl" >"$tmp/native.txt" 2>&1 || true

python3 - "$tmp/r.jsonl" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
# gpt-oss: 4 formats x 2 keep (+ 2 rows of --weights native = mxfp4)
count = {}
for r in rows:
    count[r["preset"]] = count.get(r["preset"], 0) + 1
assert count == {"gpt-oss-20b": 10, "gpt-oss-120b": 8, "llama4-scout": 8, "qwen3-30b-a3b": 8, "deepseek-v3": 4}, count

def expert_bytes(r):
    H, I, f, g = r["hidden"], r["inter"], r["weights"], r["group_size"]
    es = 4 if r["dtype"] == "f32" else 2
    n13 = 2 * I
    def mat(N, K):
        c = lambda a, b: -(-a // b)
        if f == "plain": return N * K * es
        if f == "fp8_block": return N * K + c(N, 128) * c(K, 128) * 4
        if f == "mxfp4": return N * K // 2 + N * K // 32
        if f == "int4": return N * c(K, 2) + N * c(K, g) * 3     # fp16 scale + uint8 zero per group
        raise AssertionError(f)
    return mat(n13, H) + mat(H, I)

expect = {
    "gpt-oss-20b": dict(act="swiglu_oai", gate_up="interleaved", biases=True, weight_on_input=False, experts=8, top_k=4, score="softmax"),
    "gpt-oss-120b": dict(act="swiglu_oai", gate_up="interleaved", biases=True, weight_on_input=False, top_k=4),
    "llama4-scout": dict(act="swiglu", gate_up="blocked", biases=False, weight_on_input=True, top_k=1, score="sigmoid"),
    "qwen3-30b-a3b": dict(act="swiglu", gate_up="blocked", biases=False, weight_on_input=False),
    "deepseek-v3": dict(act="swiglu", biases=False),
}
for r in rows:
    for k, v in expect[r["preset"]].items():
        assert r[k] == v, (r["preset"], k, r[k], v)
    assert r["weights"] in ("plain", "fp8_block", "mxfp4", "int4"), r["weights"]
    assert r["group_size"] == {"plain": 0, "fp8_block": 128, "mxfp4": 32, "int4": r["group_size"]}[r["weights"]]
    if r["weights"] == "int4":
        assert r["group_size"] == (32 if r["preset"] == "deepseek-v3" else 128), r["group_size"]
    assert r["expert_bytes"] == expert_bytes(r), (r["preset"], r["weights"], r["expert_bytes"], expert_bytes(r))
    assert r["ok"], (r["preset"], r["weights"], r.get("error"))
    assert math.isclose(r["weight_bytes"], r["active_experts"] * r["expert_bytes"], rel_tol=1e-5), r
    assert r["time_s"] > 0 and r["time_over_first_weights"] > 0
    if r["weights"] == r["first_weights"]:
        assert r["time_over_first_weights"] == 1, r
# --weights native: deepseek-v3 fp8_block, gpt-oss mxfp4
ds = [r for r in rows if r["preset"] == "deepseek-v3"]
assert [r["weights"] for r in ds] == ["fp8_block", "fp8_block", "int4", "int4"], [r["weights"] for r in ds]
assert rows[-1]["weights"] == "mxfp4" and rows[-1]["first_weights"] == "mxfp4"
print(f"bench_flags: {len(rows)} JSON rows checked")
EOF

# --pack (issue 17): with oneDNN in the build, the plain weights run packed on the onednn path
# and the header names what oneDNN runs; without it the bench stops with the library's message.
set +e
DYNMOE_CPU_ISA=onednn "$bin" --preset qwen3 --pack --weights plain,fp8_block "${run[@]}" >"$tmp/pack.txt" 2>&1
rc=$?
set -e
if grep -q "has no oneDNN" "$tmp/pack.txt"; then
  [ "$rc" != 0 ] || fail "--pack without oneDNN exited 0"
  echo "bench_flags: --pack: this build has no oneDNN (the bench said so and failed)"
else
  [ "$rc" = 0 ] || { cat "$tmp/pack.txt" >&2; fail "--pack exited $rc"; }
  grep -q "^# cpu path: onednn" "$tmp/pack.txt" || fail "--pack: the header names no onednn path"
  grep -q "^# packed plain weights: .*onednn [0-9.]* f32 gemm1 " "$tmp/pack.txt" || fail "--pack: no packed path line"
  [ "$(grep -c '^qwen3-30b-a3b\* *cpu *f32 *\(plain\|fp8\) ' "$tmp/pack.txt")" = 4 ] || { cat "$tmp/pack.txt" >&2; fail "--pack: expected 4 rows"; }
  echo "bench_flags: --pack ran on $(grep -o 'onednn [0-9.]* f32 gemm1 [^ ]*' "$tmp/pack.txt")"
fi
