"""Benchmark: reading a file that another daemon holds, in one run on loopback TCP.

Daemon A adds a random file (--size-mib, 256 by default; our default layout, 256 KiB raw
leaves). For each mode a fresh daemon B connects to A and reads the file through its
own daemon; the modes run in a rotated order each round, so machine noise hits them alike:

    cat    `cat CID > /dev/null`: streamed in order as the blocks arrive
           (node/src/unixfs/reader)
    get    `get CID -o FILE`: the same stream as a tar archive, unpacked to disk
    tree   `get DIR -o DEST` of a directory holding the same file: the tar streamed as
           the reader walks the directory (fetched whole before a byte went out, before)
    fetch  `pin add CID`: the whole DAG fetched in random order (Bitswap::fetch_dag), the
           speed a reader in order should keep

Throughput is the file's MiB per second of wall time, median of --runs rounds; the bar
is cat >= 90% of get. B's peak RSS (VmHWM) is reported for each mode. Every `get` is
compared with the original.

Then a gateway Range request for the last MiB of a remote --range-size-mib (1024) file
through a fresh B: its time, and the blocks B fetched (Bitswap stat) against the blocks
the range covers and the file's.

    .venv/bin/python tests/bench/remote_read.py [--size-mib 256] [--runs 3] \
        [--range-size-mib 1024] [--binary PATH] | tee tests/bench/results/remote_read.txt
"""

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

from add_vs_kubo import build_release  # same folder: one way to build
from transfer import Ours, cpu_seconds, random_file

MIB = 1 << 20
MODES = ("cat", "get", "tree", "fetch")


def start(binary, tmp):
    """A daemon whose stdout lines before "Daemon is ready" are kept (for the gateway)."""
    node = Ours.__new__(Ours)
    node.binary = binary
    node.env = {**os.environ, "IPFS_ACCELERATE_PATH": tempfile.mkdtemp(dir=tmp, prefix="repo-")}
    node.run("init")
    node.proc = subprocess.Popen(
        [binary, "daemon", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
         "--gateway", "127.0.0.1:0", "--no-mdns", "--dht-protocol", "/ipfs/lan/kad/1.0.0"],
        env=node.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    node.gateway = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = node.proc.stdout.readline()
        if not line:
            raise RuntimeError("daemon exited before it was ready")
        if line.startswith("Gateway server listening on "):
            parts = line.strip().rsplit(" ", 1)[1].split("/")
            node.gateway = f"{parts[2]}:{parts[4]}"
        if line.strip() == "Daemon is ready":
            break
    node.addr = json.loads(node.run("id", "--json"))["Addresses"][0]
    return node


def stat(node):
    return json.loads(node.run("bitswap", "stat", "--json"))


def read_once(binary, tmp, server, cids, mode, path):
    """One read by a fresh daemon in `mode` (of the file, `cids[0]`, or the directory,
    `cids[1]`); returns (seconds, peak RSS MB, CPU s)."""
    os.sync()
    client = start(binary, tmp)
    try:
        client.connect(server.addr)
        dest = os.path.join(tmp, "fetched")
        cid = cids[mode == "tree"]
        cpu_before = cpu_seconds(client.proc.pid)
        start_time = time.perf_counter()
        if mode == "cat":
            with open(os.devnull, "wb") as null:
                client.run("cat", cid, stdout=null)
        elif mode in ("get", "tree"):
            client.run("get", cid, "-o", dest)
        else:
            client.run("pin", "add", cid)
        seconds = time.perf_counter() - start_time
        cpu = cpu_seconds(client.proc.pid) - cpu_before
        if mode in ("get", "tree"):
            got = os.path.join(dest, os.path.basename(path)) if mode == "tree" else dest
            assert filecmp.cmp(path, got, shallow=False), "fetched file differs"
            if mode == "tree":
                shutil.rmtree(dest)
            else:
                os.remove(dest)
        return seconds, client.peak_rss_mb(), cpu
    finally:
        client.close()


def range_once(binary, tmp, size_mib):
    """The last MiB of a remote file of `size_mib` through a fresh daemon's gateway."""
    path = random_file(tmp, size_mib)
    server = start(binary, tmp)
    client = start(binary, tmp)
    try:
        cid = server.run("add", "-Q", path).strip()
        client.connect(server.addr)
        size = os.path.getsize(path)
        request = urllib.request.Request(
            f"http://{client.gateway}/ipfs/{cid}", headers={"Range": f"bytes=-{MIB}"})
        start_time = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as answer:
            status, body = answer.status, answer.read()
        seconds = time.perf_counter() - start_time
        with open(path, "rb") as f:
            f.seek(size - MIB)
            assert body == f.read(), "the range carried other bytes"
        assert status == 206, status
        received = stat(client)
        total = blocks_under(server, cid)
        return seconds, received["BlocksReceived"], received["DataReceived"], total
    finally:
        for node in (server, client):
            node.close()
        os.remove(path)


def blocks_under(node, cid):
    """The blocks of the file DAG under `cid`, from `ls` of its nodes (raw leaves, CIDv1
    `bafk...`, have no links)."""
    if cid.startswith("bafk"):
        return 1
    return 1 + sum(blocks_under(node, line.split()[0])
                   for line in node.run("ls", cid).splitlines())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--range-size-mib", type=int, default=1024)
    parser.add_argument("--binary", help="a release binary to use instead of building one")
    args = parser.parse_args()
    binary = args.binary or build_release()
    with tempfile.TemporaryDirectory(prefix="bench-remote-read-") as tmp:
        path = random_file(tmp, args.size_mib)
        server = start(binary, tmp)
        try:
            cid = server.run("add", "-Q", path).strip()
            tree = os.path.join(tmp, "tree")
            os.mkdir(tree)
            os.link(path, os.path.join(tree, os.path.basename(path)))
            tree_cid = server.run("add", "-r", "-Q", tree).strip()
            results = {mode: [] for mode in MODES}
            for round_ in range(args.runs):
                order = MODES[round_ % len(MODES):] + MODES[:round_ % len(MODES)]
                for mode in order:
                    seconds, rss, cpu = read_once(
                        binary, tmp, server, (cid, tree_cid), mode, path)
                    results[mode].append((seconds, rss, cpu))
                    print(f"round {round_ + 1} {mode:5}: {args.size_mib / seconds:7.1f} MiB/s"
                          f" ({seconds:.2f} s, reader peak RSS {rss:.0f} MB,"
                          f" reader CPU {cpu:.2f} s)", flush=True)
        finally:
            server.close()
        print(f"\n{args.size_mib} MiB remote file, median of {args.runs}:")
        median = {}
        for mode in MODES:
            seconds = statistics.median(r[0] for r in results[mode])
            median[mode] = args.size_mib / seconds
            rss = max(r[1] for r in results[mode])
            print(f"  {mode:5} {median[mode]:7.1f} MiB/s  (peak RSS up to {rss:.0f} MB)")
        ratio = median["cat"] / median["get"]
        print(f"  cat / get   = {ratio:.2f} (bar >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'})")
        print(f"  cat / fetch = {median['cat'] / median['fetch']:.2f}")
        print(f"  tree / get  = {median['tree'] / median['get']:.2f}")

        seconds, blocks, data, total = range_once(binary, tmp, args.range_size_mib)
        print(f"\nRange bytes=-{MIB} of a remote {args.range_size_mib} MiB file through the "
              f"gateway: {seconds * 1000:.0f} ms, {blocks} blocks fetched ({data} bytes) of "
              f"the file's {total}")


if __name__ == "__main__":
    main()
