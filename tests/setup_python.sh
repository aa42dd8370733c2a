#!/usr/bin/env bash
# Builds the Python package's wheel from the workspace's test build and installs it into
# the test venv (.venv), idempotently. `--no-build` skips the cargo build and packs what
# is there (or only installs the Python dependencies when nothing is built yet).
#
# The extension (bin/python) is one more member of the workspace build, so it shares
# the node's, burn's and libp2p's artifacts with the CLI and the tests: this runs the
# same `cargo build` as tests/run.sh (a no-op when that already ran, and the other way
# round), then packs the library it made into a wheel (bin/python/pack_wheel.py, about
# 5 s) without compiling anything again. maturin (`pip install ./bin/python`) would build
# the crate alone, with another feature set, and compile everything a second time.
#
# Also installs, pinned: `requests`, which the seed guide's connection diagnostic
# imports; mypy and pytest, with which tests/python/test_typing.py checks the package
# and a user's program under `mypy --strict`; numpy, which `Embeddings.numpy()` returns
# (an optional dependency of the package) and whose types that check reads.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ipfs-accelerate-target}
venv=${IPFS_ACCELERATE_VENV:-$PWD/.venv}
features=ipfs-accelerate/wgpu,ipfs-accelerate/ndarray
pins=(requests==2.34.2 mypy==2.4.1 pytest==9.2.0 numpy==2.4.6)

if [[ ${1:-} != --no-build ]]; then
    cargo build --locked --workspace --all-targets --features "$features"
fi
lib=$CARGO_TARGET_DIR/debug/libipfs_accelerate_native.so

pip=("$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir)
# Installs only when one is missing or at another version.
"$venv/bin/python" - "${pins[@]}" <<'EOF' || "${pip[@]}" "${pins[@]}"
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    sys.exit(any(version(name) != want for name, want in (p.split("==") for p in sys.argv[1:])))
except PackageNotFoundError:
    sys.exit(1)
EOF
if [[ ! -f $lib ]]; then
    # --no-build before the first workspace build: the test packs its own wheel anyway.
    echo "$lib is not built yet: no wheel installed (run this again after the build)" >&2
    exit 0
fi

# The library and the Python sources decide the wheel; reinstall only when they change.
stamp_file="$venv/.ipfs-accelerate-wheel"
stamp=$( (stat -c '%s %Y' "$lib"; find bin/python/python bin/python/pack_wheel.py Cargo.toml -type f \
    -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16)
if [[ -e $stamp_file && $(cat "$stamp_file") == "$stamp" ]] &&
    "$venv/bin/python" -c "import ipfs_accelerate" 2>/dev/null; then
    exit 0
fi
wheel=$("$venv/bin/python" bin/python/pack_wheel.py --lib "$lib" --out "$CARGO_TARGET_DIR/wheels")
"${pip[@]}" --no-deps --force-reinstall "$wheel"
echo "$stamp" > "$stamp_file"
echo "installed $(basename "$wheel") into $venv"
