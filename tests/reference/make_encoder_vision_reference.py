"""Reference outputs for the engine's RoBERTa / XLM-RoBERTa encoders and its ViT image
classifier, from transformers, sentence-transformers and PIL; the outputs are committed,
so CI needs none of them.

1. tests/fixtures/tiny-roberta/: a seeded random `RobertaForMaskedLM` (tensors prefixed
   `roberta.`, an `lm_head.` the encoder ignores) with a byte-level BPE tokenizer trained
   here with `tokenizers`; reference token ids and mean / CLS pooled hidden states, and
   hand-made token inputs with padding in odd places (RoBERTa's position ids skip it).
2. tests/fixtures/tiny-xlm-roberta/: a seeded random `XLMRobertaModel` with a Unigram
   (SentencePiece-style) tokenizer trained here, saved as a sentence-transformers folder
   (mean pooling, Normalize, max_seq_length 48); reference embeddings from
   `SentenceTransformer.encode`.
3. tests/fixtures/tiny-vit/: a seeded random `ViTForImageClassification` (32x32 images,
   8x8 patches, 5 named labels) with the preprocessor_config.json of
   `ViTImageProcessor(size={"height": 32, "width": 32})`; test images written by PIL into
   tests/fixtures/images/ (PNG RGB / RGBA / grayscale / 16-bit / palette, JPEG colour,
   grayscale and EXIF-rotated) plus hostile ones under images/hostile/; per image, the
   pixels as transformers' image pipeline sees them (`load_image`: EXIF transpose, then
   `convert("RGB")`), PIL's resize, the processor's pixel_values, and the logits and
   probabilities.

Run with the reference environment described in make_reference.py:

    .venv-ref/bin/python tests/reference/make_encoder_vision_reference.py

Writes tests/fixtures/{tiny-roberta,tiny-xlm-roberta,tiny-vit,images}/ and
tests/fixtures/{tiny-roberta,tiny-xlm-roberta,tiny-vit}-reference.json.
"""

import base64
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import zlib

import numpy
import torch
from PIL import Image, ImageOps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

SENTENCES = [
    "Hi",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "IPFS names content by the hash of its bytes.",
    "Peers fetch model weights from each other over Bitswap.",
    "3.14159 is roughly pi; 2,718 is not e but 2.718 is close.",
    "Café, naïve, façade, São Paulo, Zürich and Øresund.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "I love this! 😀🚀",
    "  leading and trailing spaces  ",
    "UPPER CASE AND lower case AND MiXeD CaSe",
    " ".join(["Content addressing makes every block verifiable by anyone who fetches it."] * 8),
    "What is the capital of France?",
]

# Text the tokenizers are trained on: the sentences and more of the same kinds.
CORPUS = SENTENCES + [
    "A peer stores and serves blocks, announces models and runs inference for others.",
    "Models are folders of files: config.json, model.safetensors and tokenizer.json.",
    "Les pairs échangent des blocs; chaque bloc est vérifié par son empreinte.",
    "Die Gewichte werden von mehreren Anbietern gleichzeitig geladen.",
    "Los modelos se publican una vez y se comparten entre todos los nodos.",
    "モデルはコンテンツアドレスで共有されます。",
    "Сеть находит поставщиков модели через распределённую хеш-таблицу.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2026 3.5 -7 1,000,000.",
    "Punctuation! Questions? Quotes \"like this\" and 'this'; (parentheses) [brackets].",
    "the of and to in is that it for on with as was by at from this be are an or",
]

# Randomised weights: the same recipe as the tiny BERT (make_reference.py).
SPREAD = 0.2


def as_lists(array):
    return [[float(x) for x in row] for row in numpy.asarray(array, dtype=numpy.float32)]


def f32_list(array):
    """Floats of a float32 array, each the shortest decimal that reads back to it."""
    return [float(numpy.format_float_positional(x, unique=True)) for x in
            numpy.asarray(array, dtype=numpy.float32).ravel()]


def f32_base64(array):
    """A float32 array's little-endian bytes in base64: exact, and a third of the text."""
    return base64.b64encode(numpy.asarray(array, dtype="<f4").ravel().tobytes()).decode()


def randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            centre = 1.0 if name.endswith(("LayerNorm.weight", "layer_norm.weight",
                                           "layernorm.weight", "layernorm_before.weight",
                                           "layernorm_after.weight")) else 0.0
            param.copy_(centre + SPREAD * torch.randn_like(param))


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def check_size(folder):
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    assert total < 1_000_000, f"{folder} is {total} bytes"


def mean_pool(hidden, mask):
    mask = mask.unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


# ---------------------------------------------------------------------------------------
# RoBERTa


def tiny_roberta():
    from tokenizers import processors  # noqa: PLC0415
    from tokenizers.implementations import ByteLevelBPETokenizer  # noqa: PLC0415
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast  # noqa: PLC0415

    out = os.path.join(FIXTURES, "tiny-roberta")
    fresh(out)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=700, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, model_max_length=64)
    tokenizer.save_pretrained(out)
    for extra in ("vocab.json", "merges.txt"):  # tokenizer.json holds them
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))

    config = RobertaConfig(
        vocab_size=tokenizer.backend_tokenizer.get_vocab_size(), hidden_size=32,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        # pad_token_id 1: positions run from 2, so 64 tokens need 66 rows.
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2,
    )
    model = RobertaForMaskedLM(config).eval()
    randomise(model, 11)
    model.save_pretrained(out, safe_serialization=True)
    check_size(out)

    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model.roberta(**batch).last_hidden_state
    # Token inputs a caller may send: left padding, and a pad id inside the text (which
    # transformers gives the padding position, as its `create_position_ids_from_input_ids`
    # keys on the id, not on the mask).
    token_ids = [[1, 1, 0, 40, 50, 60, 2], [0, 70, 1, 80, 2, 1, 1]]
    token_mask = [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]
    with torch.no_grad():
        token_hidden = model.roberta(input_ids=torch.tensor(token_ids),
                                     attention_mask=torch.tensor(token_mask)).last_hidden_state
    reference = {
        "model": "tiny random RobertaForMaskedLM (seed 11), tests/fixtures/tiny-roberta",
        "sentences": SENTENCES,
        "input_ids": [ids[: int(m.sum())] for ids, m in
                      zip(batch["input_ids"].tolist(), batch["attention_mask"])],
        "mean_pooled": as_lists(mean_pool(hidden, batch["attention_mask"])),
        "cls_pooled": as_lists(hidden[:, 0]),
        "token_ids": token_ids,
        "token_mask": token_mask,
        "token_mean_pooled": as_lists(mean_pool(token_hidden, torch.tensor(token_mask))),
    }
    with open(os.path.join(FIXTURES, "tiny-roberta-reference.json"), "w") as f:
        json.dump(reference, f)


# ---------------------------------------------------------------------------------------
# XLM-RoBERTa


def tiny_xlm_roberta():
    from sentence_transformers import SentenceTransformer, models  # noqa: PLC0415
    from tokenizers.implementations import SentencePieceUnigramTokenizer  # noqa: PLC0415
    from tokenizers import Tokenizer, processors  # noqa: PLC0415
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast  # noqa: PLC0415

    out = os.path.join(FIXTURES, "tiny-xlm-roberta")
    fresh(out)
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(CORPUS, vocab_size=500, unk_token="<unk>",
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    # The trainer works in hash-map order: its scores differ in their last bits from run to
    # run, the single characters it adds at the end get scores 1e-4 apart in any order, and
    # pieces of equal score come out in any order. Rounded to 0.01 and sorted after the
    # special tokens (ids 0-4), the fixture is the same on every run.
    state = json.loads(unigram._tokenizer.to_str())
    vocab = [[piece, round(score, 2)] for piece, score in state["model"]["vocab"]]
    state["model"]["vocab"] = vocab[:5] + sorted(vocab[5:], key=lambda p: (-p[1], p[0]))
    assert state["model"]["unk_id"] == 3
    backend = Tokenizer.from_str(json.dumps(state))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=backend, model_max_length=64)

    config = XLMRobertaConfig(
        vocab_size=tokenizer.backend_tokenizer.get_vocab_size(), hidden_size=32,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, hidden_act="gelu",
    )
    model = XLMRobertaModel(config).eval()  # with its pooler, which embeddings ignore
    randomise(model, 13)
    with tempfile.TemporaryDirectory() as hf:
        model.save_pretrained(hf, safe_serialization=True)
        tokenizer.save_pretrained(hf)
        word = models.Transformer(hf, max_seq_length=48)
        pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
        st = SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu")
        st.save(out)
    for extra in ("README.md", "sentencepiece.bpe.model"):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    # The temporary folder's name, which would change the fixture on every run.
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    saved.pop("_name_or_path", None)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
    check_size(out)

    st = SentenceTransformer(out, device="cpu")
    embeddings = st.encode(SENTENCES, batch_size=32, convert_to_numpy=True)
    # What sentence-transformers feeds the model: each text stripped, then tokenized.
    ids = [st.tokenize([s])["input_ids"][0].tolist() for s in SENTENCES]
    reference = {
        "model": "tiny random XLMRobertaModel (seed 13), sentence-transformers folder, "
                 "tests/fixtures/tiny-xlm-roberta",
        "max_seq_length": st.max_seq_length,
        "normalized": True,
        "pooling": "mean",
        "sentences": SENTENCES,
        "input_ids": ids,
        "embeddings": as_lists(embeddings),
    }
    with open(os.path.join(FIXTURES, "tiny-xlm-roberta-reference.json"), "w") as f:
        json.dump(reference, f)


# ---------------------------------------------------------------------------------------
# ViT

# Seeded so that every test image's probabilities are at least MIN_GAP apart, and the
# order of the labels is a fact a small numerical difference cannot flip.
VIT_SEED = int(os.environ.get("VIT_SEED", "18"))
MIN_GAP = 1e-3
LABELS = ["tabby cat", "golden retriever", "fire truck", "espresso", "mountain bike"]


def raw_png(width, height, depth, color_type, rows):
    """A PNG written by hand, for the pixel formats PIL cannot save (16-bit RGB)."""
    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    data = b"".join(b"\x00" + row for row in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(data))
            + chunk(b"IEND", b""))


def scene(width, height, seed):
    """A smooth picture with edges and a little noise: what a photo has, in few bytes."""
    rng = numpy.random.default_rng(seed)
    y, x = numpy.mgrid[0:height, 0:width].astype(numpy.float64)
    r = 128 + 100 * numpy.sin(x / width * 6.0 + seed)
    g = 255 * (y / max(height - 1, 1))
    b = numpy.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2,
                    230.0, 40.0)
    rgb = numpy.stack([r, g, b], axis=-1) + rng.normal(0, 12, (height, width, 3))
    return numpy.clip(rgb, 0, 255).round().astype(numpy.uint8)


def write_images(folder):
    """The test images, as (file name, what it exercises)."""
    fresh(folder)
    images = []

    def save(name, image, note, **options):
        image.save(os.path.join(folder, name), **options)
        images.append((name, note))

    save("rgb.png", Image.fromarray(scene(61, 47, 1)), "RGB PNG, wider than tall, downscaled")
    rgba = numpy.dstack([scene(40, 90, 2), numpy.linspace(0, 255, 40 * 90).reshape(90, 40)
                         .astype(numpy.uint8)])
    save("rgba.png", Image.fromarray(rgba, "RGBA"), "RGBA PNG, tall; alpha dropped")
    save("gray.png", Image.fromarray(scene(20, 25, 3)[:, :, 1], "L"), "grayscale PNG, upscaled")
    gray16 = (numpy.arange(33 * 29).reshape(29, 33) * 1.1).astype(numpy.uint16)
    save("gray16.png", Image.fromarray(gray16), "16-bit grayscale PNG (PIL clips at 255)")
    rgb16 = scene(24, 24, 4).astype(numpy.uint16) * 257 + 77
    with open(os.path.join(folder, "rgb16.png"), "wb") as f:
        f.write(raw_png(24, 24, 16, 2, [row.astype(">u2").tobytes() for row in rgb16]))
    images.append(("rgb16.png", "16-bit RGB PNG (PIL keeps the high byte)"))
    save("palette.png", Image.fromarray(scene(50, 50, 5)).quantize(16), "palette PNG")
    save("exact.png", Image.fromarray(scene(32, 32, 6)), "RGB PNG at the model's size: no resize")
    save("photo.jpg", Image.fromarray(scene(120, 80, 7)), "JPEG 4:2:0", quality=90)
    save("gray.jpg", Image.fromarray(scene(50, 30, 8)[:, :, 0], "L"), "grayscale JPEG",
         quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("rotated.jpg", Image.fromarray(scene(64, 40, 9)), "JPEG with EXIF orientation 6",
         quality=90, exif=exif)
    return images


def write_hostile(folder):
    """Images a hostile peer may send: each must be refused, none may allocate much."""
    fresh(folder)
    # A PNG header declaring 60000 x 60000 RGB (10 GB decoded) over a few bytes of data.
    bomb = raw_png(60000, 60000, 8, 2, [b"\x00" * 30])
    with open(os.path.join(folder, "bomb.png"), "wb") as f:
        f.write(bomb)
    # Within any side limit, but 8000 x 8000 16-bit RGBA is 512 MB decoded.
    with open(os.path.join(folder, "large16.png"), "wb") as f:
        f.write(raw_png(8000, 8000, 16, 6, [b"\x00" * 30]))
    # The same for JPEG: a real JPEG whose frame header says 60000 x 60000.
    buffer = io.BytesIO()
    Image.fromarray(scene(16, 16, 10)).save(buffer, "JPEG", quality=50)
    jpeg = bytearray(buffer.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5: sof + 9] = struct.pack(">HH", 60000, 60000)
    with open(os.path.join(folder, "bomb.jpg"), "wb") as f:
        f.write(jpeg)
    # Valid images cut short.
    with open(os.path.join(FIXTURES, "images", "rgb.png"), "rb") as f:
        png = f.read()
    with open(os.path.join(folder, "truncated.png"), "wb") as f:
        f.write(png[: len(png) // 2])
    with open(os.path.join(FIXTURES, "images", "photo.jpg"), "rb") as f:
        photo = f.read()
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(photo[: len(photo) // 2])
    with open(os.path.join(folder, "not-an-image.txt"), "wb") as f:
        f.write(b"this is not an image, only text that a peer sent as one\n")
    # A format the engine does not decode.
    Image.fromarray(scene(8, 8, 11)).save(os.path.join(folder, "tiny.gif"))


def load_like_the_pipeline(path):
    """transformers.image_utils.load_image: EXIF orientation applied, then RGB."""
    image = Image.open(path)
    mode = image.mode
    image = ImageOps.exif_transpose(image)
    return mode, image.convert("RGB")


def tiny_vit():
    from transformers import (ViTConfig, ViTForImageClassification,  # noqa: PLC0415
                              ViTImageProcessor, pipeline)

    out = os.path.join(FIXTURES, "tiny-vit")
    fresh(out)
    config = ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=96, hidden_act="gelu", layer_norm_eps=1e-12,
        qkv_bias=True, num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)},
        architectures=["ViTForImageClassification"],
    )
    model = ViTForImageClassification(config).eval()
    randomise(model, VIT_SEED)
    model.save_pretrained(out, safe_serialization=True)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(out)
    check_size(out)

    images_dir = os.path.join(FIXTURES, "images")
    notes = write_images(images_dir)
    write_hostile(os.path.join(images_dir, "hostile"))
    check_size(images_dir)

    entries = []
    all_pixels = []
    for name, note in notes:
        mode, rgb = load_like_the_pipeline(os.path.join(images_dir, name))
        decoded = numpy.asarray(rgb, dtype=numpy.uint8)
        resized = numpy.asarray(rgb.resize((32, 32), Image.BILINEAR), dtype=numpy.uint8)
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        assert pixels.shape == (1, 3, 32, 32), pixels.shape
        # The processor's pixels are PIL's resize, rescaled and normalised in float32.
        manual = ((resized.astype(numpy.float64) / 255).astype(numpy.float32) - 0.5) / 0.5
        assert numpy.array_equal(manual.transpose(2, 0, 1), pixels[0].numpy())
        with torch.no_grad():
            logits = model(pixel_values=pixels).logits[0]
        probabilities = torch.softmax(logits, dim=-1)
        order = torch.argsort(probabilities, descending=True).tolist()
        ranked = probabilities[order]
        gap = float((ranked[:-1] - ranked[1:]).min())
        assert gap >= MIN_GAP, f"{name}: probabilities {gap} apart; try another VIT_SEED"
        all_pixels.append(pixels)
        entries.append({
            "file": name,
            "note": note,
            "pil_mode": mode,
            "width": rgb.width,
            "height": rgb.height,
            "rgb_sha256": hashlib.sha256(decoded.tobytes()).hexdigest(),
            # Whole decoded pixels for JPEGs only, to measure how far decoders differ.
            "rgb_base64": (base64.b64encode(decoded.tobytes()).decode()
                           if name.endswith(".jpg") else None),
            "resized_base64": base64.b64encode(resized.tobytes()).decode(),
            "pixel_values_f32_base64": f32_base64(pixels[0]),
            "logits": f32_list(logits),
            "probabilities": f32_list(probabilities),
            "top": order,
        })

    # The image-classification pipeline (which loads images the same way) agrees.
    classify = pipeline("image-classification", model=out, device="cpu")
    for entry in entries:
        got = classify(os.path.join(images_dir, entry["file"]), top_k=len(LABELS))
        assert [g["label"] for g in got] == [LABELS[i] for i in entry["top"]], (entry["file"], got)
        for g, i in zip(got, entry["top"]):
            assert abs(g["score"] - entry["probabilities"][i]) < 1e-6

    # One batch of every image gives each image's logits.
    with torch.no_grad():
        batch_logits = model(pixel_values=torch.cat(all_pixels)).logits
    for entry, logits in zip(entries, batch_logits):
        assert numpy.allclose(entry["logits"], logits.numpy(), atol=1e-5)

    # PIL's resize with each filter the engine reproduces, shrinking and enlarging, one
    # side at a time and both.
    resizes = []
    for name, width, height, filters in [
        ("rgb.png", 32, 32, [1, 2, 3, 4, 5]),
        ("gray.png", 45, 13, [1, 2, 3, 4, 5]),
        ("rgb.png", 61, 20, [2, 3]),
        ("rotated.jpg", 7, 64, [2, 1]),
        ("rgba.png", 224, 224, [2]),
    ]:
        _, rgb = load_like_the_pipeline(os.path.join(images_dir, name))
        for resample in filters:
            resized = numpy.asarray(rgb.resize((width, height), resample), dtype=numpy.uint8)
            resizes.append({"file": name, "width": width, "height": height,
                            "resample": resample,
                            "sha256": hashlib.sha256(resized.tobytes()).hexdigest()})

    reference = {
        "resizes": resizes,
        "model": f"tiny random ViTForImageClassification (seed {VIT_SEED}), tests/fixtures/tiny-vit",
        "labels": LABELS,
        "image_size": 32,
        "images": entries,
    }
    with open(os.path.join(FIXTURES, "tiny-vit-reference.json"), "w") as f:
        json.dump(reference, f)


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    tiny_roberta()
    tiny_xlm_roberta()
    tiny_vit()
    print("wrote", FIXTURES)


if __name__ == "__main__":
    main()
