"""Benchmark: `add` of a 256 MiB file, ours against Kubo v0.22, in one run.

Both add the same random file into a fresh repo with their default datastore and
durability: ours into redb (CIDv1, raw leaves, 256 KiB chunks), Kubo into flatfs
(CIDv0, its default). Each side runs --runs times; the median is reported, with MB/s
against one core's SHA-256 speed (hashlib, OpenSSL) as the ceiling of a single-threaded
hasher. Run it with the test venv:

    .venv/bin/python tests/bench/add_vs_kubo.py [--size-mib 256] [--runs 5]
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_release(features=()):
    """The release binary, built with `features` of the ipfs-accelerate crate."""
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/ipfs-accelerate-target"))
    feature_args = ["--features", ",".join(features)] if features else []
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "ipfs-accelerate", *feature_args],
        cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": target},
    )
    return os.path.join(target, "release", "ipfs-accelerate")


def bench_ours(binary, path, runs, flags=()):
    seconds, cid = [], None
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp:
            env = {**os.environ, "IPFS_ACCELERATE_PATH": os.path.join(tmp, "repo")}
            subprocess.run([binary, "init"], env=env, check=True, capture_output=True)
            start = time.perf_counter()
            out = subprocess.run([binary, "add", "-Q", *flags, path], env=env, check=True, capture_output=True)
            seconds.append(time.perf_counter() - start)
            cid = out.stdout.decode().strip()
    return cid, seconds


def bench_kubo(path, runs):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests/interop/kubo/kubo.py"), "bench", path, "--runs", str(runs)],
        check=True, capture_output=True, timeout=1800,
    )
    result = json.loads(out.stdout)
    return result["cid"], result["seconds"]


def sha256_single_core(path):
    with open(path, "rb") as f:
        data = f.read()
    best = min(_time(lambda: hashlib.sha256(data).digest()) for _ in range(3))
    return len(data) / best / 1e6


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    binary = build_release()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        path = os.path.join(tmp, "input.bin")
        with open(path, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        size = os.path.getsize(path)
        sha = sha256_single_core(path)
        # Alternate sides so drift in machine load hits both.
        ours_s, v0_s, kubo_s = [], [], []
        for _ in range(args.runs):
            ours_cid, s = bench_ours(binary, path, 1)
            ours_s += s
            v0_cid, s = bench_ours(binary, path, 1, ["--cid-version=0"])
            v0_s += s
            kubo_cid, s = bench_kubo(path, 1)
            kubo_s += s
        assert v0_cid == kubo_cid, f"CIDv0 differs from Kubo: {v0_cid} vs {kubo_cid}"
    ours_mb = size / statistics.median(ours_s) / 1e6
    v0_mb = size / statistics.median(v0_s) / 1e6
    kubo_mb = size / statistics.median(kubo_s) / 1e6
    result = {
        "bytes": size,
        "runs": args.runs,
        "ours": {"cid": ours_cid, "seconds": ours_s, "median_mb_per_s": round(ours_mb, 1)},
        "ours_cidv0": {"cid": v0_cid, "seconds": v0_s, "median_mb_per_s": round(v0_mb, 1)},
        "kubo": {"cid": kubo_cid, "seconds": kubo_s, "median_mb_per_s": round(kubo_mb, 1)},
        "speedup": round(ours_mb / kubo_mb, 2),
        "speedup_same_layout": round(v0_mb / kubo_mb, 2),
        "sha256_one_core_mb_per_s": round(sha, 1),
        "ours_fraction_of_sha256": round(ours_mb / sha, 2),
    }
    print(f"add {size / 2**20:.0f} MiB, median of {args.runs}:")
    print(f"  ours                  {ours_mb:8.1f} MB/s  ({ours_cid})")
    print(f"  ours --cid-version=0  {v0_mb:8.1f} MB/s  ({v0_cid}, Kubo's layout)")
    print(f"  kubo                  {kubo_mb:8.1f} MB/s  ({kubo_cid})")
    print(f"  ours / kubo = {ours_mb / kubo_mb:.2f}x; one core SHA-256 = {sha:.0f} MB/s "
          f"(ours runs at {ours_mb / sha:.0%} of it)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
