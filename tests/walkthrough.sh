#!/usr/bin/env bash
# A short scripted walk through one peer's content store: init, add, cat, pin, gc,
# CAR export/import and verify, on a temporary repo that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-accelerate-target}
cargo build --release --quiet -p ipfs-accelerate
bin="$CARGO_TARGET_DIR/release/ipfs-accelerate"

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
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

echo
echo "--- two peers on loopback: the second fetches the model from the first over Bitswap ---"
start_daemon() { # repo log
    IPFS_ACCELERATE_PATH="$1" "$bin" daemon --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 \
        --gateway 127.0.0.1:0 --no-mdns --dht-protocol /ipfs/lan/kad/1.0.0 > "$2" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do grep -q "Daemon is ready" "$2" && return; sleep 0.1; done
    echo "daemon did not start:"; cat "$2"; exit 1
}
export IPFS_ACCELERATE_PATH="$work/repo2"
start_daemon "$work/repo2" "$work/peer1.log"
cat "$work/peer1.log"
export IPFS_ACCELERATE_PATH="$work/repo3"
step "$bin" init
start_daemon "$work/repo3" "$work/peer2.log"
addr=$(IPFS_ACCELERATE_PATH="$work/repo2" "$bin" id --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["Addresses"][0])')
step "$bin" swarm connect "$addr"
start=$(date +%s%N)
"$bin" pin add "$model"
end=$(date +%s%N)
echo "fetched and pinned the 64 MiB model from the first peer in $(( (end - start) / 1000000 )) ms"
step "$bin" routing findprovs "$model"
gateway=$(grep "Gateway server" "$work/peer2.log" | awk -F/ '{print $3":"$5}')
echo "$ curl http://$gateway/ipfs/$model/config.json"
curl -s "http://$gateway/ipfs/$model/config.json"
IPFS_ACCELERATE_PATH="$work/repo2" "$bin" shutdown
step "$bin" shutdown
