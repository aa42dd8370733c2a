#!/usr/bin/env bash
# The whole test suite: installs test dependencies, checks formatting and lints, builds the
# binary the integration tests run, then runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-accelerate-target}

bash tests/setup.sh
cargo fmt --all --check
# Every backend is built in so its tests run: wgpu (on Mesa's lavapipe when there is no
# GPU) and ndarray, both opt-in for users.
features=ipfs-accelerate/wgpu,ipfs-accelerate/ndarray
# Lints as errors, with the same features as the build, so one check covers the GPU code.
cargo clippy --locked --workspace --all-targets --features "$features" -- -D warnings
# Every target at once, with the features the tests use, so that the binary the
# integration tests run and the tests themselves share one build of the dependencies.
cargo build --locked --workspace --all-targets --features "$features"
# The Python package's wheel from that build, into the test venv (seconds).
bash tests/setup_python.sh --no-build
cargo nextest run --locked --workspace --features "$features" --no-fail-fast
