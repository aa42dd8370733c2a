//! The JSON bodies of OpenAI's API as `/v1` reads and writes them. Requests name every
//! field OpenAI defines for the route and refuse others (OpenAI answers "Unrecognized
//! request argument"): fields nobody named land in `unknown`, and a parameter this
//! server cannot honour is refused by name rather than ignored (see `super::request`).

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub(super) struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<u64>,
    /// Identifies the end user to OpenAI; nothing here depends on it.
    #[serde(default, rename = "user")]
    _user: Option<IgnoredAny>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// What OpenAI embeds: a text, texts, a token array, or token arrays.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "input to be a string, an array of strings, an array of token ids or an array of arrays of token ids"
)]
pub(super) enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenRows(Vec<Vec<u32>>),
}

#[derive(Debug, Serialize)]
pub(super) struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub(super) struct Embedding {
    pub object: &'static str,
    pub index: usize,
    /// Floats, or base64 of their little-endian f32 bytes.
    pub embedding: EmbeddingValue,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum EmbeddingValue {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(super) struct Usage {
    pub prompt_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u32>,
    pub total_tokens: u32,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub(super) struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub best_of: Option<u32>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// A completion's prompt: one text (a list of one is accepted too); token ids are not.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "prompt to be a string")]
pub(super) enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Other(IgnoredAny),
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(super) struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Meaningless without tools, which are refused.
    #[serde(default, rename = "parallel_tool_calls")]
    _parallel_tool_calls: Option<IgnoredAny>,
    #[serde(default)]
    pub functions: Option<Vec<Value>>,
    #[serde(default)]
    pub function_call: Option<Value>,
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
    #[serde(default)]
    pub audio: Option<Value>,
    #[serde(default)]
    pub prediction: Option<Value>,
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    #[serde(default)]
    pub web_search_options: Option<Value>,
    /// OpenAI's stored-completion switches; nothing is stored here either way.
    #[serde(default, rename = "store")]
    _store: Option<IgnoredAny>,
    #[serde(default, rename = "metadata")]
    _metadata: Option<IgnoredAny>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// What completions and chat completions share.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Sampling {
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Not OpenAI's, but vLLM's and llama.cpp's: sample among the k likeliest.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Not OpenAI's, but vLLM's and llama.cpp's.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
    /// Identifies the end user to OpenAI; nothing here depends on it.
    #[serde(default, rename = "user")]
    _user: Option<IgnoredAny>,
    /// OpenAI's processing tiers; a peer has one.
    #[serde(default, rename = "service_tier")]
    _service_tier: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    /// Obfuscation padding OpenAI adds to stream chunks; nothing is added here.
    #[serde(default, rename = "include_obfuscation")]
    _include_obfuscation: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "stop to be a string or an array of strings")]
pub(super) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// A participant's name, which chat templates do not use.
    #[serde(default, rename = "name")]
    _name: Option<IgnoredAny>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// An earlier answer's refusal text, which templates do not use.
    #[serde(default, rename = "refusal")]
    _refusal: Option<IgnoredAny>,
}

/// A message's content: text, or parts of which only text ones are understood.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "content to be a string or an array of content parts"
)]
pub(super) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(super) struct ContentPart {
    pub r#type: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub(super) struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub(super) struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub(super) struct ChatChoice {
    pub index: u32,
    /// `message` in a whole answer, `delta` in a stream's chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<AssistantDelta>,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub(super) struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
    pub refusal: Option<()>,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct AssistantDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub(super) struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

#[derive(Debug, Serialize)]
pub(super) struct Model {
    /// What requests name it by.
    pub id: String,
    pub object: &'static str,
    /// Unix seconds the manifest was signed (0 when there is none).
    pub created: u64,
    /// The publisher's peer id (ours for a model imported here).
    pub owned_by: String,
    /// Not OpenAI's: `embed`, `generate` or `classify`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Not OpenAI's: the weights' CID.
    pub weights: String,
    /// Not OpenAI's: the version `id` resolves to.
    pub version: String,
    /// Not OpenAI's: whether this node serves it.
    pub serving_here: bool,
}

/// OpenAI's error body.
#[derive(Debug, Serialize)]
pub(super) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub(super) struct ErrorDetail {
    pub message: String,
    pub r#type: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}
