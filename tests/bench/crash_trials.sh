#!/usr/bin/env bash
# kill -9 trials for a benchmark run: 34 kills per operation (a large `add`, `repo gc`
# after `pin rm`, `dag import`), 102 in all, each followed by a clean `repo verify` and a
# read-back of every pin (tests/crash.rs). CI runs the same test with 8 per operation.
# Usage: tests/bench/crash_trials.sh [KILLS_PER_OPERATION]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-accelerate-target}
export CRASH_TRIALS_PER_OP=${1:-34}
# The test runs the debug binary of this tree; build it as tests/run.sh does.
cargo build --locked --workspace --all-targets --features ipfs-accelerate/wgpu,ipfs-accelerate/ndarray
cargo nextest run --locked --workspace --features ipfs-accelerate/wgpu,ipfs-accelerate/ndarray \
    -E 'package(ipfs-accelerate-tests) & binary(crash)' --no-capture
