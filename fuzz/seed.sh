#!/usr/bin/env bash
# Writes a few valid inputs per target into corpus/<target>/seed-*, encoded from real
# messages by protocol/tests/fuzz_corpus.rs (write_seed_corpora). Stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked -p ipfs-accelerate-protocol --test fuzz_corpus -- --ignored --exact write_seed_corpora
