"""Benchmark: text generation and ViT image classification on the CPU, ours (burn,
`bench generate` / `bench classify`) against PyTorch + transformers, on the same weights,
the same inputs and the same number of threads, in one run (rounds alternate).

Models of realistic size with random weights (seed 0), written during setup into a
temporary folder by transformers' own `save_pretrained` (no hub is reachable here):

- gpt2:       GPT2LMHeadModel with GPT2Config()'s sizes (gpt2 small, 124M parameters);
- smollm:     LlamaForCausalLM with SmolLM-135M's sizes (hidden 576, 30 layers, 9 heads,
              3 key/value heads, intermediate 1536, vocabulary 49152, tied embeddings);
- vit:        ViTForImageClassification with google/vit-base-patch16-224's sizes (86M
              parameters, 1000 labels) and ViTImageProcessor()'s preprocessor_config.json.

The decoders take the tokenizer of a committed fixture (tests/fixtures/tiny-gpt2,
tiny-llama: 512 tokens, inside the models' vocabularies). Prompts are synthetic token
ids, the same on both sides (`prompt_ids` below is bin/src/bench_generate.rs's).

Generation: greedy decoding, `use_cache=True`, prompts of --prompt-tokens tokens and
--max-tokens new ones. Time to first token is the first step (prompt in, first token out);
decode tokens/s counts the steps after it. transformers' side is timed inside `generate`
by a logits processor that notes the time of each step, so neither side pays for
starting up. Ours also runs N streams as one continuous batch (`Generator::step` over
all of them); transformers' batch of N (same-length prompts, no padding) is shown beside
it for reference. Both sides' greedy tokens are compared.

Classification: ours from the PNG files (decoding and preprocessing in the timing) and
from prepared pixels; transformers the same with PIL + ViTImageProcessor, and the model
alone on its pixel_values. Top-5 labels are compared.

PyTorch gets `torch.set_num_threads(T)` with OPENBLAS_NUM_THREADS=T and OMP_NUM_THREADS=T;
with T > 1 also one torch thread and T OpenBLAS threads (often faster with Debian's
build), and ratios are taken against the faster setting. Setup as in
tests/reference/make_reference.py (Debian's python3-torch, transformers 4.44.2, PIL):

    .venv-ref/bin/python tests/bench/generate_vs_pytorch.py [--threads 1 2] [--rounds 3]
        [--models gpt2 smollm vit] [--prompt-tokens 64] [--max-tokens 64] [--streams 8]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from add_vs_kubo import ROOT, build_release  # same folder: one way to build

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
IMAGES = 16
IMAGE_BATCH = 8


def prompt_ids(stream, length, vocab):
    """bin/src/bench_generate.rs's `prompt_ids`."""
    return [(17 + 31 * position + 997 * stream) % vocab for position in range(length)]


def write_models(out, names):
    """The benchmark's model folders under `out`, seeded, by transformers' save_pretrained."""
    import numpy
    import torch
    from PIL import Image
    from transformers import (
        GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, ViTConfig,
        ViTForImageClassification, ViTImageProcessor,
    )

    # With --keep, what an earlier run wrote there is reused.
    folders = {n: os.path.join(out, n) for n in [*names, "images"]
               if os.path.exists(os.path.join(out, n, "written"))}
    names = [n for n in names if n not in folders]

    def save(name, model, tokenizer_from=None):
        path = os.path.join(out, name)
        model.eval().save_pretrained(path, safe_serialization=True)
        if tokenizer_from is not None:
            for file in TOKENIZER_FILES:
                shutil.copy(os.path.join(FIXTURES, tokenizer_from, file), path)
        open(os.path.join(path, "written"), "w").close()
        folders[name] = path
        return path

    if "gpt2" in names:
        torch.manual_seed(0)
        save("gpt2", GPT2LMHeadModel(GPT2Config()), "tiny-gpt2")
    if "smollm" in names:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2,
        )
        save("smollm", LlamaForCausalLM(config), "tiny-llama")
    if "vit" in names:
        torch.manual_seed(0)
        config = ViTConfig(num_labels=1000)  # vit-base-patch16-224's sizes are the defaults
        path = save("vit", ViTForImageClassification(config))
        ViTImageProcessor().save_pretrained(path)
        open(os.path.join(path, "written"), "w").close()
        # Photo-sized PNGs: smooth colour fields with noise, 640x480. PNG, not JPEG: PNG
        # decodes to the same pixels everywhere, so both sides classify the same input
        # and their top-5 can be compared (JPEG decoders round differently by a few
        # levels, see engine/image.rs).
        images = os.path.join(out, "images")
        shutil.rmtree(images, ignore_errors=True)
        os.makedirs(images)
        rng = numpy.random.default_rng(0)
        y, x = numpy.mgrid[0:480, 0:640]
        for i in range(IMAGES):
            phase = rng.uniform(0, 6.28, 3)
            channels = [
                128 + 100 * numpy.sin(x / (40 + 10 * c) + y / (60 + 7 * i) + phase[c]) for c in range(3)
            ]
            pixels = numpy.stack(channels, axis=-1) + rng.normal(0, 12, (480, 640, 3))
            Image.fromarray(numpy.clip(pixels, 0, 255).astype("uint8")).save(
                os.path.join(images, f"{i:02}.png"))
        open(os.path.join(images, "written"), "w").close()
        folders["images"] = images
    return folders


GENERATE_WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList
threads, model_dir, prompt_len, max_tokens, streams = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
torch.set_num_threads(int(threads))

class Clock(LogitsProcessor):
    # Called once per step, after the forward pass and before the token is picked.
    def __init__(self):
        self.times = []
    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores

def prompt_ids(stream, length, vocab):
    return [(17 + 31 * p + 997 * stream) % vocab for p in range(length)]

model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
vocab = model.config.vocab_size
out = {"parameters": sum(p.numel() for p in model.parameters())}
with torch.inference_mode():
    for batch in [1] + ([streams] if streams > 1 else []):
        ids = torch.tensor([prompt_ids(s, prompt_len, vocab) for s in range(batch)])
        def run():
            clock = Clock()
            started = time.perf_counter()
            sequences = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                do_sample=False, use_cache=True, pad_token_id=model.config.eos_token_id,
                logits_processor=LogitsProcessorList([clock]),
            )
            return started, clock.times, sequences
        run()  # warm-up
        started, times, sequences = run()
        steps = len(times)
        out[str(batch)] = {
            "time_to_first_token_ms": (times[0] - started) * 1e3,
            "prefill_tokens_per_second": batch * prompt_len / (times[0] - started),
            "decode_tokens_per_second": batch * (steps - 1) / (times[-1] - times[0]),
            "new_tokens": steps,
            "tokens": sequences[0, prompt_len:].tolist(),
        }
print(json.dumps(out))
"""

CLASSIFY_WORKER = r"""
import json, os, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessor
threads, model_dir, images_dir, batch, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(int(threads))
model = ViTForImageClassification.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
processor = ViTImageProcessor.from_pretrained(model_dir)
paths = sorted(os.path.join(images_dir, f) for f in os.listdir(images_dir) if f.endswith(".png"))
chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
with torch.inference_mode():
    def encoded():
        top = []
        started = time.perf_counter()
        for chunk in chunks:
            images = [Image.open(p).convert("RGB") for p in chunk]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            top.extend(model(pixel_values=pixels).logits.topk(5).indices.tolist())
        return time.perf_counter() - started, top
    prepared_pixels = [
        processor(images=[Image.open(p).convert("RGB") for p in chunk], return_tensors="pt")["pixel_values"]
        for chunk in chunks
    ]
    def prepared():
        started = time.perf_counter()
        for pixels in prepared_pixels:
            model(pixel_values=pixels).logits.topk(5)
        return time.perf_counter() - started
    encoded(); prepared()  # warm-up
    times, pixel_times = [], []
    for _ in range(runs):
        seconds, top = encoded()
        times.append(seconds)
        pixel_times.append(prepared())
print(json.dumps({
    "images_per_second": len(paths) / statistics.median(times),
    "pixels_images_per_second": len(paths) / statistics.median(pixel_times),
    "top5": top,
}))
"""


def pytorch_env(threads, torch_threads):
    return {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(torch_threads)}


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def ours_generate(binary, model, threads, args):
    streams = "1" if args.streams <= 1 else f"1,{args.streams}"
    out = subprocess.run(
        [binary, "bench", "generate", model, "--prompt-tokens", str(args.prompt_tokens),
         "--max-tokens", str(args.max_tokens), "--streams", streams, "--runs", "1",
         "--warmup", "1", "--threads", str(threads), "--device", "cpu", "--json"],
        check=True, capture_output=True, text=True,
    )
    report = json.loads(out.stdout)
    return {str(r["streams"]): r for r in report["results"]} | {"parameters": report["parameters"]}


def pytorch_generate(model, threads, torch_threads, args):
    out = subprocess.run(
        [sys.executable, "-c", GENERATE_WORKER, str(torch_threads), model, str(args.prompt_tokens),
         str(args.max_tokens), str(args.streams)],
        check=True, capture_output=True, text=True, env=pytorch_env(threads, torch_threads),
    )
    return last_json(out.stdout)


def ours_classify(binary, model, images, threads, runs):
    out = subprocess.run(
        [binary, "bench", "classify", model, "--images", images, "--batch", str(IMAGE_BATCH),
         "--runs", str(runs), "--warmup", "1", "--threads", str(threads), "--device", "cpu", "--json"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def pytorch_classify(model, images, threads, torch_threads, runs):
    out = subprocess.run(
        [sys.executable, "-c", CLASSIFY_WORKER, str(torch_threads), model, images, str(IMAGE_BATCH), str(runs)],
        check=True, capture_output=True, text=True, env=pytorch_env(threads, torch_threads),
    )
    return last_json(out.stdout)


def alternate(runners, rounds):
    """Each runner `rounds` times, rotating who goes first so drift hits everyone."""
    samples = {name: [] for name in runners}
    for round_ in range(rounds):
        names = list(runners)
        names = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in names:
            samples[name].append(runners[name]())
    return samples


def median_of(samples, *keys):
    values = []
    for sample in samples:
        for key in keys:
            sample = sample[key]
        values.append(sample)
    return statistics.median(values)


def bench_decoder(binary, name, model, threads, args):
    runners = {
        "ours": lambda: ours_generate(binary, model, threads, args),
        "pytorch": lambda: pytorch_generate(model, threads, threads, args),
    }
    if threads > 1:
        runners["pytorch_blas_threads_only"] = lambda: pytorch_generate(model, threads, 1, args)
    samples = alternate(runners, args.rounds)
    row = {"model": name, "threads": threads, "parameters": samples["ours"][0]["parameters"],
           "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens}
    for side, runs in samples.items():
        for metric in ["decode_tokens_per_second", "prefill_tokens_per_second", "time_to_first_token_ms"]:
            row[f"{side}_{metric}"] = median_of(runs, "1", metric)
        if args.streams > 1:
            row[f"{side}_{args.streams}_streams_decode_tokens_per_second"] = median_of(
                runs, str(args.streams), "decode_tokens_per_second")
        row[f"{side}_new_tokens"] = runs[-1]["1"]["new_tokens"]
    pytorch_sides = [s for s in samples if s.startswith("pytorch")]
    best = max(pytorch_sides, key=lambda s: row[f"{s}_decode_tokens_per_second"])
    row["pytorch_best_setting"] = best
    row["decode_ratio"] = row["ours_decode_tokens_per_second"] / row[f"{best}_decode_tokens_per_second"]
    row["prefill_ratio"] = row["ours_prefill_tokens_per_second"] / max(
        row[f"{s}_prefill_tokens_per_second"] for s in pytorch_sides)
    if args.streams > 1:
        row["streams"] = args.streams
        row["streams_vs_batch_1"] = (
            row[f"ours_{args.streams}_streams_decode_tokens_per_second"] / row["ours_decode_tokens_per_second"])
    ours_tokens, their_tokens = samples["ours"][-1]["1"]["tokens"], samples["pytorch"][-1]["1"]["tokens"]
    same = next((i for i, (a, b) in enumerate(zip(ours_tokens, their_tokens)) if a != b), len(their_tokens))
    row["greedy_tokens_identical"] = same == len(their_tokens) == len(ours_tokens)
    row["greedy_tokens_agreeing"] = same
    line = (
        f"{name}, {threads} thread(s): decode at batch 1 ours {row['ours_decode_tokens_per_second']:.1f} "
        f"tokens/s, transformers {row[f'{best}_decode_tokens_per_second']:.1f} ({best}) -> "
        f"{row['decode_ratio']:.2f}x; prefill ours {row['ours_prefill_tokens_per_second']:.0f} tokens/s "
        f"(TTFT {row['ours_time_to_first_token_ms']:.0f} ms), transformers "
        f"{row[f'{best}_prefill_tokens_per_second']:.0f} (TTFT {row[f'{best}_time_to_first_token_ms']:.0f} ms)"
    )
    if args.streams > 1:
        line += (
            f"; {args.streams} streams ours {row[f'ours_{args.streams}_streams_decode_tokens_per_second']:.1f} "
            f"tokens/s = {row['streams_vs_batch_1']:.2f}x batch 1 (transformers batch {args.streams}: "
            f"{row[f'{best}_{args.streams}_streams_decode_tokens_per_second']:.1f})"
        )
    line += f"; greedy tokens identical: {row['greedy_tokens_identical']} ({same} agree)"
    print(line, flush=True)
    return row


def bench_vit(binary, model, images, threads, args):
    runs = 3
    runners = {
        "ours": lambda: ours_classify(binary, model, images, threads, runs),
        "pytorch": lambda: pytorch_classify(model, images, threads, threads, runs),
    }
    if threads > 1:
        runners["pytorch_blas_threads_only"] = lambda: pytorch_classify(model, images, threads, 1, runs)
    samples = alternate(runners, args.rounds)
    row = {"model": "vit", "threads": threads, "images": IMAGES, "batch": IMAGE_BATCH}
    for side, runs_ in samples.items():
        for metric in ["images_per_second", "pixels_images_per_second"]:
            row[f"{side}_{metric}"] = median_of(runs_, metric)
    pytorch_sides = [s for s in samples if s.startswith("pytorch")]
    best = {}
    for metric in ["images_per_second", "pixels_images_per_second"]:
        best[metric] = max(row[f"{s}_{metric}"] for s in pytorch_sides)
        row[f"{metric}_ratio"] = row[f"ours_{metric}"] / best[metric]
    row["top5_identical"] = samples["ours"][-1]["top5"] == samples["pytorch"][-1]["top5"]
    print(
        f"vit, {threads} thread(s): from PNG files ours {row['ours_images_per_second']:.2f} images/s, "
        f"transformers {best['images_per_second']:.2f} -> {row['images_per_second_ratio']:.2f}x; "
        f"from prepared pixels ours {row['ours_pixels_images_per_second']:.2f}, transformers "
        f"{best['pixels_images_per_second']:.2f} -> {row['pixels_images_per_second_ratio']:.2f}x; "
        f"top-5 identical: {row['top5_identical']}",
        flush=True,
    )
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["gpt2", "smollm", "vit"],
                        choices=["gpt2", "smollm", "vit"])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams beside batch 1")
    parser.add_argument("--keep", metavar="DIR",
                        help="write the models here and keep them (reused when already written)")
    args = parser.parse_args()
    binary = build_release()
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        out = args.keep or tmp
        os.makedirs(out, exist_ok=True)
        folders = write_models(out, args.models)
        results = []
        for threads in args.threads:
            for name in args.models:
                if name == "vit":
                    results.append(bench_vit(binary, folders["vit"], folders["images"], threads, args))
                else:
                    results.append(bench_decoder(binary, name, folders[name], threads, args))
        print(json.dumps(results))


if __name__ == "__main__":
    main()
