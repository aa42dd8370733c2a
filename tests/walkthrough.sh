#!/usr/bin/env bash
# A short scripted walk through one peer's content store: init, add, cat, pin, gc,
# CAR export/import and verify, on a temporary repo that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-accelerate-target}
cargo build --release --quiet -p ipfs-accelerate
bin="$CARGO_TARGET_DIR/release/ipfs-accelerate"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export IPFS_ACCELERATE_PATH="$work/repo"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step "$bin" init
step "$bin" id --json
echo "hello from ipfs-accelerate" > "$work/hello.txt"
step "$bin" add "$work/hello.txt"
step "$bin" add --cid-version=0 "$work/hello.txt"
cid=$("$bin" add -Q "$work/hello.txt")
step "$bin" cat "$cid"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$work/weights.bin"
mkdir -p "$work/model"; cp "$work/weights.bin" "$work/model/model.safetensors"
echo '{"architectures": ["BertModel"]}' > "$work/model/config.json"
start=$(date +%s%N)
step "$bin" add -r "$work/model"
end=$(date +%s%N)
echo "added 64 MiB in $(( (end - start) / 1000000 )) ms"
model=$("$bin" add -r -Q "$work/model")
step "$bin" ls "$model"
scratch=$("$bin" add -Q --pin=false "$work/weights.bin" --chunker=size-1048576)
step "$bin" pin ls --type recursive
step "$bin" repo stat --human
step "$bin" repo gc --quiet
step "$bin" repo stat --human
"$bin" dag export "$model" > "$work/model.car"
echo "exported $(stat -c %s "$work/model.car") bytes of CAR"
export IPFS_ACCELERATE_PATH="$work/repo2"
step "$bin" init
step "$bin" dag import --stats "$work/model.car"
step "$bin" get "$model" -o "$work/restored"
cmp "$work/model/model.safetensors" "$work/restored/model.safetensors" && echo "restored model is identical"
step "$bin" repo verify
echo "(the unpinned scratch copy $scratch was collected by gc in the first repo)"
