// Drives a node's OpenAI-compatible API (`/v1`) with OpenAI's own npm package:
//   node openai_check.mjs URL EMBED_MODEL GENERATE_MODEL
// prints one JSON object: the models, embeddings (the package's default base64 and
// floats), a chat completion whole and streamed, and how an unknown model is refused.
import OpenAI from "openai";

const [url, embed, generate] = process.argv.slice(2);
const api = new OpenAI({ baseURL: url, apiKey: "unused", maxRetries: 0 });
const sentences = ["Peers fetch model weights over Bitswap", "héllo wörld"];
const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Name a content-addressed network." },
];

const out = {};
out.models = [];
for await (const model of api.models.list()) out.models.push(model.id);

const byDefault = await api.embeddings.create({ model: embed, input: sentences });
const floats = await api.embeddings.create({ model: embed, input: sentences, encoding_format: "float" });
out.embeddings = {
  default: byDefault.data.map((d) => Array.from(d.embedding)),
  float: floats.data.map((d) => d.embedding),
  prompt_tokens: floats.usage.prompt_tokens,
};

const { data: chat, response } = await api.chat.completions
  .create({ model: generate, messages, max_tokens: 24, temperature: 0 })
  .withResponse();
out.chat = {
  text: chat.choices[0].message.content,
  finish_reason: chat.choices[0].finish_reason,
  usage: chat.usage,
  provider: response.headers.get("x-ipfs-accelerate-provider"),
};

let text = "";
let finish = null;
const stream = await api.chat.completions.create({
  model: generate,
  messages,
  max_tokens: 24,
  temperature: 0,
  stream: true,
});
for await (const chunk of stream) {
  for (const choice of chunk.choices) {
    text += choice.delta.content ?? "";
    finish = choice.finish_reason ?? finish;
  }
}
out.chat_stream = { text, finish_reason: finish };

try {
  await api.embeddings.create({ model: "no-such-model", input: "x" });
  out.unknown_model = null;
} catch (error) {
  out.unknown_model = { status: error.status, code: error.code, type: error.type, param: error.param };
}
console.log(JSON.stringify(out));
