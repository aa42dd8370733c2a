"""Packs the extension the workspace build made into a wheel, without compiling anything.

    python bin/python/pack_wheel.py --lib $CARGO_TARGET_DIR/debug/libipfs_accelerate_native.so --out DIR

`cargo build --workspace` builds `bin/python` as one more member, sharing the node's,
burn's and libp2p's artifacts with the CLI and the tests; maturin would build it alone,
with another feature set, and compile them all again (tens of minutes on two cores).
This writes the same wheel maturin would (abi3, `ipfs_accelerate._native` plus the pure
Python of `python/`) from that library, stripped of debug info. Standard library only.
Prints the wheel's path.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NAME = "ipfs_accelerate"
DIST = "ipfs_accelerate"
PACKAGES = ("ipfs_accelerate", "ipfs_accelerate_py")
#: The oldest CPython the abi3 library serves (pyo3's `abi3-py39`).
ABI3_FROM = "cp39"


def version() -> str:
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("[workspace.package]", 1)[1]
    match = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M)
    if not match:
        sys.exit("no version in [workspace.package] of Cargo.toml")
    return match.group(1)


def platform_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", sysconfig.get_platform())


def record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def stripped(lib: str) -> bytes:
    """The library without debug info (about half its size), or as it is without `strip`."""
    strip = shutil.which("strip")
    if strip is None:
        with open(lib, "rb") as f:
            return f.read()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "lib.so")
        subprocess.run([strip, "--strip-debug", "-o", out, lib], check=True)
        with open(out, "rb") as f:
            return f.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", required=True, help="libipfs_accelerate_native.so from cargo")
    parser.add_argument("--out", required=True, help="directory for the wheel")
    args = parser.parse_args()
    if not os.path.isfile(args.lib):
        sys.exit(f"{args.lib} not found: build the workspace first (tests/setup_python.sh does)")
    ver = version()
    tag = f"{ABI3_FROM}-abi3-{platform_tag()}"
    wheel_name = f"{DIST}-{ver}-{tag}.whl"
    dist_info = f"{DIST}-{ver}.dist-info"
    files = []
    for package in PACKAGES:
        source = os.path.join(HERE, "python", package)
        for directory, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                if name.endswith((".py", ".pyi", ".typed")):
                    full = os.path.join(directory, name)
                    rel = os.path.relpath(full, os.path.join(HERE, "python")).replace(os.sep, "/")
                    with open(full, "rb") as f:
                        files.append((rel, f.read()))
    files.append((f"{NAME}/_native.abi3.so", stripped(args.lib)))
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    metadata = (
        "Metadata-Version: 2.1\n"
        f"Name: ipfs-accelerate\nVersion: {ver}\n"
        "Summary: An IPFS peer for ML models in your Python process\n"
        "License: MIT OR Apache-2.0\nRequires-Python: >=3.9\n"
        "Provides-Extra: numpy\nRequires-Dist: numpy; extra == \"numpy\"\n"
        "Description-Content-Type: text/markdown\n\n" + readme
    )
    wheel = f"Wheel-Version: 1.0\nGenerator: ipfs-accelerate pack_wheel.py\nRoot-Is-Purelib: false\nTag: {tag}\n"
    files.append((f"{dist_info}/METADATA", metadata.encode()))
    files.append((f"{dist_info}/WHEEL", wheel.encode()))
    files.append((f"{dist_info}/top_level.txt", "".join(p + "\n" for p in PACKAGES).encode()))
    record = [record_line(path, data) for path, data in files] + [f"{dist_info}/RECORD,,"]
    files.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    os.makedirs(args.out, exist_ok=True)
    target = os.path.join(args.out, wheel_name)
    partial = target + ".partial"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path, data in files:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o755 if path.endswith(".so") else 0o644) << 16
            zf.writestr(info, data)
    os.replace(partial, target)
    print(target)


if __name__ == "__main__":
    main()
