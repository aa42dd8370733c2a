#!/usr/bin/env bash
# A newcomer's first build: `cargo build --release -p ipfs-accelerate` (what
# `cargo run --release -p ipfs-accelerate -- demo` compiles) from nothing, in a fresh
# target folder, with `--timings`. Prints the wall time, CPU time and peak memory, then
# the 15 slowest units from cargo's timing report.
# Usage: tests/bench/build_time.sh [SOURCE_DIR [TARGET_DIR]]
#   SOURCE_DIR: default this checkout; pass a `git worktree` of an older commit to
#     measure it the same way.
#   TARGET_DIR: a folder that does not exist yet, kept afterwards (its release binary
#     serves the benchmarks: CARGO_TARGET_DIR=TARGET_DIR); default a temporary one.
# Run it on a quiet machine: it measures the whole machine's build throughput.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
source_dir=$(cd "${1:-$repo}" && pwd)
if [[ -n ${2:-} ]]; then
    [[ ! -e $2 ]] || { echo "$2 exists: the build must start from nothing" >&2; exit 1; }
    mkdir -p "$2" && target=$(cd "$2" && pwd)
else
    target=$(mktemp -d "${TMPDIR:-/tmp}/build-time.XXXXXX")
    trap 'rm -rf "$target"' EXIT
fi

cd "$source_dir"
echo "source: $source_dir at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.rs' '*.toml' Cargo.lock || echo ' (with uncommitted code changes)')"
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1e6}' /proc/meminfo), $(rustc --version)"
echo "command: cargo build --locked --release --timings -p ipfs-accelerate"
CARGO_TARGET_DIR=$target /usr/bin/time -f 'wall %e s, user %U s, system %S s, peak RSS %M KB' \
    cargo build --locked --release --timings -p ipfs-accelerate 2>&1 | grep -E '^(wall|\s*Finished|error)'

python3 - "$target/cargo-timings/cargo-timing.html" <<'EOF'
import json, re, sys
html = open(sys.argv[1]).read()
units = json.loads(re.search(r"const UNIT_DATA = (\[.*?\]);\n", html, re.S).group(1))
print(f"units compiled: {len(units)}, sum of their times: {sum(u['duration'] for u in units):.0f} s")
print("slowest units (s):")
for u in sorted(units, key=lambda u: -u["duration"])[:15]:
    print(f"  {u['duration']:7.1f}  {u['name']} {u['version']} {u['target'].strip()}")
EOF
