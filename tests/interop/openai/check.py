"""Drives a node's OpenAI-compatible API (`/v1`) with OpenAI's own Python package.

    check.py drive URL --embed MODEL --generate MODEL [--api-key KEY]
        models, embeddings (floats and the package's default base64), chat and text
        completions whole and streamed, and refused requests; prints one JSON object.
    check.py stream URL --generate MODEL --max-tokens N
        a streamed chat completion: prints "first" as soon as the first text arrives,
        then the whole answer and the provider its header names as JSON once it ends.
    check.py refused URL --embed MODEL [--api-key KEY]
        prints how an embeddings call is refused (status, type, code) as JSON.
"""

import argparse
import json
import sys

import openai

SENTENCES = ["Peers fetch model weights over Bitswap", "héllo wörld"]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a content-addressed network."},
]


def client(args):
    return openai.OpenAI(base_url=args.url, api_key=args.api_key or "unused", max_retries=0)


def refusal(call):
    """The error a call raises, as (status, type, code, param)."""
    try:
        call()
    except openai.APIStatusError as error:
        body = error.body or {}
        return {
            "status": error.status_code,
            "class": type(error).__name__,
            "type": body.get("type"),
            "code": body.get("code"),
            "param": body.get("param"),
            "message": body.get("message"),
        }
    return None


def drive(args):
    api = client(args)
    out = {"models": [{"id": m.id, "owned_by": m.owned_by} for m in api.models.list()]}

    floats = api.embeddings.create(model=args.embed, input=SENTENCES, encoding_format="float")
    default = api.embeddings.create(model=args.embed, input=SENTENCES)
    one = api.embeddings.create(model=args.embed, input=SENTENCES[0])
    out["embeddings"] = {
        "float": [d.embedding for d in floats.data],
        "default": [d.embedding for d in default.data],
        "one": [d.embedding for d in one.data],
        "indexes": [d.index for d in floats.data],
        "prompt_tokens": floats.usage.prompt_tokens,
        "total_tokens": floats.usage.total_tokens,
    }

    raw = api.chat.completions.with_raw_response.create(
        model=args.generate, messages=CHAT, max_tokens=24, temperature=0
    )
    chat = raw.parse()
    out["chat"] = {
        "text": chat.choices[0].message.content,
        "role": chat.choices[0].message.role,
        "finish_reason": chat.choices[0].finish_reason,
        "usage": chat.usage.model_dump(exclude_none=True),
        "provider": raw.headers.get("x-ipfs-accelerate-provider"),
        "object": chat.object,
    }

    text, chunks, finish, usage = "", 0, None, None
    raw = api.chat.completions.with_raw_response.create(
        model=args.generate,
        messages=CHAT,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in raw.parse():
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.model_dump(exclude_none=True)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    out["chat_stream"] = {
        "text": text,
        "chunks": chunks,
        "finish_reason": finish,
        "usage": usage,
        "provider": raw.headers.get("x-ipfs-accelerate-provider"),
    }

    completion = api.completions.create(
        model=args.generate, prompt="Hello", max_tokens=12, temperature=0
    )
    streamed = "".join(
        c.choices[0].text
        for c in api.completions.create(
            model=args.generate, prompt="Hello", max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    )
    out["completion"] = {
        "text": completion.choices[0].text,
        "finish_reason": completion.choices[0].finish_reason,
        "usage": completion.usage.model_dump(exclude_none=True),
        "streamed": streamed,
    }

    out["refused"] = {
        "unknown_model": refusal(
            lambda: api.embeddings.create(model="no-such-model", input="x")
        ),
        "wrong_type": refusal(lambda: api.embeddings.create(model=args.embed, input=[{"a": 1}])),
        "too_many": refusal(lambda: api.embeddings.create(model=args.embed, input=["x"] * 5000)),
        "embed_model_chat": refusal(
            lambda: api.chat.completions.create(model=args.embed, messages=CHAT)
        ),
        "two_choices": refusal(
            lambda: api.chat.completions.create(model=args.generate, messages=CHAT, n=2)
        ),
        "tools": refusal(
            lambda: api.chat.completions.create(
                model=args.generate,
                messages=CHAT,
                tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            )
        ),
        "temperature": refusal(
            lambda: api.chat.completions.create(
                model=args.generate, messages=CHAT, temperature=7
            )
        ),
        "unknown_argument": refusal(
            lambda: api.chat.completions.create(
                model=args.generate, messages=CHAT, extra_body={"frobnicate": True}
            )
        ),
    }
    print(json.dumps(out))


def stream(args):
    api = client(args)
    text, first = "", True
    raw = api.chat.completions.with_raw_response.create(
        model=args.generate,
        messages=CHAT,
        max_tokens=args.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in raw.parse():
        usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if first and text:
                first = False
                print("first", flush=True)
    provider = raw.headers.get("x-ipfs-accelerate-provider")
    print(json.dumps({"text": text, "usage": usage.model_dump(exclude_none=True), "provider": provider}), flush=True)


def refused(args):
    api = client(args)
    print(json.dumps(refusal(lambda: api.embeddings.create(model=args.embed, input="x"))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["drive", "stream", "refused"])
    parser.add_argument("url")
    parser.add_argument("--embed")
    parser.add_argument("--generate")
    parser.add_argument("--api-key")
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    {"drive": drive, "stream": stream, "refused": refused}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
