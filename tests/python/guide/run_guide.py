"""Runs the seed guide's Python examples (the verbatim `NN_*.py` files here) in order,
in one namespace, as a reader pasting them one after another would.

    python run_guide.py daemon     # against the daemon at http://localhost:5001
    python run_guide.py embedded   # a peer in this process (GUIDE_REPO, GUIDE_BOOTSTRAP)

The harness does three things and nothing else:
  - `embedded`: every `ipfs_accelerate_py(config, ...)` gets `embedded`, `repo`,
    `profile`, `bootstrap` and `enable_local_gateway` added to its `ipfs` config, so the
    examples run on a peer in this process, which serves the API at their `local_node`
    (localhost:5001) and the gateway at localhost:8080;
  - calls the entry points the guide leaves commented out (`# asyncio.run(...)`) where
    they run on the package (ENTRY_POINTS);
  - imports `time` first: the guide's model sharing example uses it before the block
    that imports it.
Before the examples it puts the empty UnixFS directory in the repo (the diagnostic
fetches it from the gateway, as every Kubo repo holds it) and, in embedded mode, reads
the publisher's registry entry (GUIDE_REGISTRY) so the peer knows `bert-base-uncased`.
An example in EXPECTED_FAILURES must fail with its exception (a bug of the guide's).
Each example's output follows a line `=== NN_name.py`; a failure prints `!!! ` and the
traceback and exits 1.
"""

import asyncio
import glob
import os
import sys
import tempfile
import time
import traceback

import ipfs_accelerate_py as package

HERE = os.path.dirname(os.path.abspath(__file__))
#: Commented-out calls of the guide run after their block: (file, code).
ENTRY_POINTS = {
    "14_pubsub_for_real_time_updates.py": "pubsub_system = asyncio.run(pubsub_example())",
    "15_connection_issues.py": "asyncio.run(diagnose_ipfs_connection())",
    "16_performance_issues.py": "asyncio.run(optimize_ipfs_performance())",
    "17_error_recovery_strategies.py": "robust_success = asyncio.run(robust_ipfs_example())",
}
#: Examples that fail whatever runs them, with the exception they must raise: the
#: guide's `discover_models` reads `registry_cid` before its own `for registry_cid in`
#: loop makes the name local to the function (UnboundLocalError in any Python).
EXPECTED_FAILURES = {"07_model_discovery.py": UnboundLocalError}
#: Longest the embedded peer waits to hear the model announced.
ANNOUNCE_TIMEOUT = 60


def embedded_harness():
    real = package.ipfs_accelerate_py
    extra = {
        "embedded": True,
        "repo": os.environ["GUIDE_REPO"],
        "profile": "test",
        "bootstrap": [a for a in os.environ.get("GUIDE_BOOTSTRAP", "").split(",") if a],
        "enable_local_gateway": True,
    }

    def ipfs_accelerate_py(config, resources):
        config = dict(config)
        config["ipfs"] = {**config.get("ipfs", {}), **extra}
        return real(config, resources)

    package.ipfs_accelerate_py = ipfs_accelerate_py
    return ipfs_accelerate_py


async def prepare(accelerator, wait_for_model):
    empty = tempfile.mkdtemp()
    added = await accelerator.node.add_path(empty, cid_version=0)
    os.rmdir(empty)
    print(f"harness: empty directory {added[-1].cid}")
    if wait_for_model:
        registry = os.environ.get("GUIDE_REGISTRY")
        if registry:
            # Read the publisher's signed registry entry rather than wait for its next
            # announcement (every 30 s).
            await accelerator.node.discover(registry)
        deadline = time.monotonic() + ANNOUNCE_TIMEOUT
        while not [m for m in await accelerator.node.models() if m.name == "bert-base-uncased"]:
            if time.monotonic() > deadline:
                raise SystemExit("harness: bert-base-uncased was never announced to this peer")
            await asyncio.sleep(0.2)
        print("harness: bert-base-uncased announced")


def main():
    mode = sys.argv[1]
    if mode == "embedded":
        make = embedded_harness()
        accelerator = make({"ipfs": {"local_node": "http://localhost:5001"}}, {})
        asyncio.run(prepare(accelerator, wait_for_model=True))
    elif mode == "daemon":
        accelerator = package.ipfs_accelerate_py({"ipfs": {"local_node": "http://localhost:5001"}}, {})
        asyncio.run(prepare(accelerator, wait_for_model=False))
    else:
        raise SystemExit(f"unknown mode {mode!r}: use daemon or embedded")
    namespace = {"__name__": "__main__", "time": time}
    for path in sorted(glob.glob(os.path.join(HERE, "[0-9][0-9]_*.py"))):
        name = os.path.basename(path)
        print(f"=== {name}", flush=True)
        with open(path, encoding="utf-8") as f:
            code = f.read()
        try:
            try:
                exec(compile(code, path, "exec"), namespace)
            except EXPECTED_FAILURES.get(name, ()) as error:
                print(f"--- {name} failed as expected: {type(error).__name__}: {error}")
                continue
            if name in EXPECTED_FAILURES:
                raise AssertionError(f"{name} was expected to fail with {EXPECTED_FAILURES[name].__name__}")
            if name in ENTRY_POINTS:
                exec(compile(ENTRY_POINTS[name], f"<entry point of {name}>", "exec"), namespace)
        except BaseException:
            print(f"!!! {name} failed")
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            sys.exit(1)
        sys.stdout.flush()
    print("=== done", flush=True)


if __name__ == "__main__":
    main()
