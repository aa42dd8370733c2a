"""Reference outputs for the text-generation engine's tests, from transformers; the
outputs are committed, so CI needs neither torch nor transformers.

Writes small seeded random decoders in Hugging Face layout, each with a byte-level BPE
tokenizer trained offline here (512 tokens), by transformers' own `save_pretrained`:

- tests/fixtures/tiny-gpt2/     GPT2LMHeadModel, gelu_new, tied embeddings
- tests/fixtures/tiny-llama/    LlamaForCausalLM, GQA (4 heads, 2 key/value heads),
                                untied embeddings, llama3 rope_scaling, a Llama 3 style
                                chat template (bos_token, `| trim`)
- tests/fixtures/tiny-qwen2/    Qwen2ForCausalLM, q/k/v bias, tied embeddings, a ChatML
                                chat template, sampling defaults and two EOS ids in
                                generation_config.json
- tests/fixtures/tiny-mistral/  MistralForCausalLM, one key/value head, head_dim 24
                                (not hidden/heads), sliding_window 8 (shorter than most
                                test prompts), a Mistral chat template with raise_exception
- tests/fixtures/tiny-llama-bf16/, tiny-qwen2-f16/: the same models saved in bf16 / f16

and tests/fixtures/generation-reference.json: per model and prompt the prompt's ids, the
logits at the prompt's last position, transformers' greedy continuation (32 new tokens,
`do_sample=False`) with the decoded text, the top-20 logits and the top-1/top-2 margin at
every greedy step, a greedy continuation under repetition_penalty 1.5; for the bf16/f16
copies the logits of the rounded weights computed in f32; RoPE inverse frequencies for
every rope_scaling variant; rendered chat templates. Versions and fixture sha256s are
recorded.

Run with the reference venv (see make_reference.py), plus jinja2 for chat templates:

    .venv-ref/bin/pip install jinja2==3.1.6
    .venv-ref/bin/python tests/reference/make_generation_reference.py
"""

import hashlib
import json
import os
import shutil

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
VOCAB = 512
NEW_TOKENS = 32
TOP = 20
MY_FOLDERS = [
    "tiny-gpt2", "tiny-llama", "tiny-llama-bf16", "tiny-qwen2", "tiny-qwen2-f16", "tiny-mistral",
]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "IPFS names content by the hash of its bytes, so every block can be verified.",
    "Peers fetch model weights from each other over Bitswap and announce them on the DHT.",
    "A language model predicts the next token from the tokens before it.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2026 3.14159",
    "Café, naïve, façade, São Paulo, Zürich and Øresund.",
    "東京は日本の首都です。 Москва — столица России. 😀🚀🔥",
    "def main():\n    print('hello')\n    return 0\n",
    "Once upon a time there was a small peer that served inference to its friends.",
    "What is the capital of France? Paris is the capital and most populous city of France.",
    "The cache grows with every token the model generates, one key and value per layer.",
]

PROMPTS = [
    "Hello",
    "The quick brown fox",
    "Peers fetch model weights from each other over Bitswap and announce them on the DHT. "
    "A language model predicts the next token",
    "Café 東京 😀",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is IPFS?"},
        {"role": "assistant", "content": "  Content addressing.  "},
        {"role": "user", "content": "Café 東京?"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ],
]

QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) "
    "or message.role == 'assistant' %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

LLAMA_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def floats(tensor):
    return [float(x) for x in tensor.detach().float().reshape(-1)]


def train_tokenizer(specials, bos=None):
    """A byte-level BPE of VOCAB tokens over CORPUS; `bos` is prepended by the
    post-processor, as Llama's tokenizers do."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return tok


def randomise(model, std):
    """Random weights, not near-zero: norms around 1 and every bias set, so that a
    mis-loaded weight shows and outputs are far from uniform."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm = "norm" in name or ".ln_" in name or name.endswith("ln_f.weight")
            if is_norm and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.05 * torch.randn_like(param))
            else:
                param.copy_(std * torch.randn_like(param))


def build(name, model, tokenizer, chat_template=None, generation=None, dtype_copies=()):
    out = os.path.join(FIXTURES, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model.eval()
    if generation is not None:
        for key, value in generation.items():
            setattr(model.generation_config, key, value)
    model.save_pretrained(out, safe_serialization=True)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    copies = {}
    for suffix, dtype in dtype_copies:
        copy_dir = os.path.join(FIXTURES, f"{name}-{suffix}")
        shutil.rmtree(copy_dir, ignore_errors=True)
        os.makedirs(copy_dir)
        saved = type(model)(model.config)
        saved.load_state_dict(model.state_dict())
        saved = saved.to(dtype).eval()
        saved.generation_config = model.generation_config
        saved.save_pretrained(copy_dir, safe_serialization=True)
        tokenizer.save_pretrained(copy_dir)
        # Rebuilt rather than cast back: a cast would also round the rotary inv_freq
        # buffer, which the file does not hold and the engine computes exactly.
        rounded = type(model)(model.config)
        rounded.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
        copies[f"{name}-{suffix}"] = rounded.eval()
    return out, copies


def margins(scores):
    top2 = torch.topk(scores, 2).values
    return float(top2[0] - top2[1])


def reference_for(model, tokenizer, special_ids):
    """Greedy continuations and logits for every prompt."""
    results = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        mask = torch.ones_like(ids)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[0, -1]
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                repetition_penalty=1.0,
                pad_token_id=special_ids["pad"],
                return_dict_in_generate=True,
                output_logits=True,
            )
            new = out.sequences[0, ids.shape[1]:]
            steps = []
            for step_logits in out.logits:
                row = step_logits[0]
                top = torch.topk(row, TOP)
                steps.append({
                    "top_ids": [int(i) for i in top.indices],
                    "top_logits": floats(top.values),
                    "margin": margins(row),
                })
            # The cached decode must be what a full recompute gives, where the margin is clear.
            full = model(input_ids=out.sequences, attention_mask=torch.ones_like(out.sequences)).logits[0]
            for i, token in enumerate(new.tolist()):
                row = full[ids.shape[1] - 1 + i]
                if steps[i]["margin"] > 1e-3:
                    assert int(row.argmax()) == token, (prompt, i)
            penalised = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                repetition_penalty=1.5,
                pad_token_id=special_ids["pad"],
                return_dict_in_generate=True,
                output_scores=True,
            )
            pen_new = penalised.sequences[0, ids.shape[1]:]
        results.append({
            "prompt": prompt,
            "input_ids": ids[0].tolist(),
            "last_logits": floats(logits),
            "greedy_ids": new.tolist(),
            "greedy_text": tokenizer.decode(new, skip_special_tokens=True),
            "greedy_steps": steps,
            "penalty_1_5_ids": pen_new.tolist(),
            "penalty_1_5_margins": [margins(s[0]) for s in penalised.scores],
        })
    return results


def rounded_reference(model, tokenizer):
    """Last-position logits of a bf16/f16 copy, its weights widened to f32 and run in f32:
    exactly what the engine computes from that file."""
    out = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        out.append(floats(logits))
    return out


def chat_reference(tokenizer):
    rendered = []
    for conversation in CONVERSATIONS:
        try:
            text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
            rendered.append({"messages": conversation, "text": text, "input_ids": list(ids)})
        except Exception as e:  # noqa: BLE001 - the template's own raise_exception
            rendered.append({"messages": conversation, "error": str(e)})
    return rendered


def rope_reference():
    """inv_freq and attention factor of every supported rope_scaling, from transformers."""
    base = dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=64, rope_theta=10000.0)
    cases = [
        ("default", None, None),
        ("linear", {"rope_type": "linear", "factor": 2.0}, None),
        ("dynamic-short", {"rope_type": "dynamic", "factor": 2.0}, 40),
        ("dynamic-long", {"rope_type": "dynamic", "factor": 2.0}, 100),
        ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32}, None),
        ("yarn", {"rope_type": "yarn", "factor": 4.0}, None),
        ("yarn-beta", {"rope_type": "yarn", "factor": 3.0, "beta_fast": 16.0, "beta_slow": 2.0,
                       "attention_factor": 1.2}, None),
    ]
    out = []
    for name, scaling, seq_len in cases:
        config = LlamaConfig(**base, rope_scaling=scaling)
        kind = "default" if scaling is None else scaling["rope_type"]
        inv_freq, factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=seq_len)
        out.append({
            "name": name,
            "config": {**base, "rope_scaling": scaling},
            "seq_len": seq_len,
            "inv_freq": floats(inv_freq),
            "attention_factor": float(factor),
        })
    return out


def main():
    torch.manual_seed(1234)
    torch.set_grad_enabled(False)
    os.makedirs(FIXTURES, exist_ok=True)
    reference = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "new_tokens": NEW_TOKENS,
        "models": {},
        "rounded": {},
        "rope": rope_reference(),
    }

    def add(name, model, tok_obj, specials, template=None, generation=None, copies=(), **tok_kwargs):
        # No clean-up of spaces before punctuation on decode: the engine's streamed text is
        # tokenizers' plain decode (as Llama 3 and Qwen2 configure theirs).
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok_obj, clean_up_tokenization_spaces=False, **tok_kwargs
        )
        tokenizer.model_max_length = model.config.max_position_embeddings
        out, rounded = build(name, model, tokenizer, template, generation, copies)
        special_ids = {"pad": tokenizer.convert_tokens_to_ids(tok_kwargs.get("eos_token"))}
        entry = {
            "prompts": reference_for(model, tokenizer, special_ids),
            "chat": chat_reference(tokenizer) if template else None,
        }
        reference["models"][name] = entry
        for copy_name, copy_model in rounded.items():
            reference["rounded"][copy_name] = {"of": name, "last_logits": rounded_reference(copy_model, tokenizer)}
        size = os.path.getsize(os.path.join(out, "model.safetensors"))
        assert size < 1_000_000, f"{name} is {size} bytes"

    gpt2_tok = train_tokenizer(["<|endoftext|>"])
    eot = gpt2_tok.token_to_id("<|endoftext|>")
    gpt2 = GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4,
        activation_function="gelu_new", bos_token_id=eot, eos_token_id=eot,
        attn_implementation="eager",
    ))
    randomise(gpt2, 0.2)
    add("tiny-gpt2", gpt2, gpt2_tok, ["<|endoftext|>"],
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")

    llama_specials = ["<unk>", "<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    llama_tok = train_tokenizer(llama_specials, bos="<s>")
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        bos_token_id=llama_tok.token_to_id("<s>"), eos_token_id=llama_tok.token_to_id("</s>"),
        attn_implementation="eager",
    ))
    randomise(llama, 0.2)
    add("tiny-llama", llama, llama_tok, llama_specials, LLAMA_TEMPLATE, copies=[("bf16", torch.bfloat16)],
        bos_token="<s>", eos_token="</s>", unk_token="<unk>")

    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    qwen_tok = train_tokenizer(qwen_specials)
    im_end, endoftext = qwen_tok.token_to_id("<|im_end|>"), qwen_tok.token_to_id("<|endoftext|>")
    qwen = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
        bos_token_id=endoftext, eos_token_id=endoftext,
        attn_implementation="eager",
    ))
    randomise(qwen, 0.2)
    add("tiny-qwen2", qwen, qwen_tok, qwen_specials, QWEN2_TEMPLATE,
        generation={"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                    "repetition_penalty": 1.05, "eos_token_id": [im_end, endoftext]},
        copies=[("f16", torch.float16)],
        eos_token="<|im_end|>", pad_token="<|endoftext|>")

    mistral_specials = ["<unk>", "<s>", "</s>"]
    mistral_tok = train_tokenizer(mistral_specials, bos="<s>")
    mistral = MistralForCausalLM(MistralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=24, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=8, tie_word_embeddings=False,
        bos_token_id=mistral_tok.token_to_id("<s>"), eos_token_id=mistral_tok.token_to_id("</s>"),
        attn_implementation="eager",
    ))
    randomise(mistral, 0.2)
    add("tiny-mistral", mistral, mistral_tok, mistral_specials, MISTRAL_TEMPLATE,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>")

    reference["sha256"] = {}
    for folder in MY_FOLDERS:
        for file in sorted(os.listdir(os.path.join(FIXTURES, folder))):
            path = os.path.join(FIXTURES, folder, file)
            os.chmod(path, 0o644)  # save_pretrained writes safetensors as 0600
            reference["sha256"][f"{folder}/{file}"] = sha256(path)
    with open(os.path.join(FIXTURES, "generation-reference.json"), "w") as f:
        json.dump(reference, f)
    print("wrote", FIXTURES, "min margin:", min(
        s["margin"] for m in reference["models"].values() for p in m["prompts"] for s in p["greedy_steps"]))


if __name__ == "__main__":
    main()
