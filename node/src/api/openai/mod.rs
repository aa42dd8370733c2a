//! OpenAI's API under `/v1`, backed by the swarm: `GET /v1/models`, `POST
//! /v1/embeddings`, `POST /v1/completions` and `POST /v1/chat/completions`. Every
//! client library, LangChain, editors and chat UIs speak it. A model is named as the
//! swarm names it (`NAME`, `NAME@VERSION`) or by CID, and runs where `infer` would run
//! it: here when served here, else on the best peer, with the same hedging and
//! failover. Answers name the peer that gave them in `x-ipfs-accelerate-provider` (a
//! stream, the peer whose text came first).
//!
//! Served on the API's port and, when `network.openai` names an address, on its own
//! listener too ([`super::serve_openai`]); `network.api_token` and `api.allowed_origins`
//! apply to both.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use cid::Cid;
use ipfs_accelerate_protocol::infer::{InferOptions, Inputs};
use ipfs_accelerate_protocol::limits::{INFER_REQUEST_LIMIT, INFER_ROWS_LIMIT};
use serde_json::{Map, Value};

mod error;
mod generate;
mod models;
mod wire;

pub(crate) use error::OpenAiError;

use super::Api;
use crate::infer::DEFAULT_DEADLINE;
use crate::model_network::{InferAnswer, InferCall};

/// The header naming the peer that answered.
const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-ipfs-accelerate-provider");

type OpenAiResult<T = Response> = Result<T, OpenAiError>;

/// The `/v1` routes, with OpenAI's error shape for everything they refuse (the token
/// check included, when `token` is set).
pub(super) fn router(token: Option<Arc<str>>) -> Router<Api> {
    let routes = Router::new()
        .route("/models", get(models::list))
        .route("/embeddings", post(embeddings))
        .route("/completions", post(generate::completions))
        .route("/chat/completions", post(generate::chat))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(INFER_REQUEST_LIMIT))
        .layer(axum::middleware::from_fn(error::rewrite_rejections));
    let routes = match token {
        Some(token) => routes.layer(axum::middleware::from_fn_with_state(token, require_token)),
        None => routes,
    };
    Router::new().nest("/v1", routes)
}

async fn unknown_route(method: Method, OriginalUri(uri): OriginalUri) -> OpenAiError {
    OpenAiError::not_found(format!(
        "Unknown request URL: {method} {}. This server answers GET /v1/models, POST \
         /v1/embeddings, /v1/completions and /v1/chat/completions.",
        uri.path()
    ))
}

async fn require_token(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    match super::auth::presents_token(request.headers(), &token) {
        true => next.run(request).await,
        false => OpenAiError::unauthorized(
            "this API needs `Authorization: Bearer <token>` with the node's network.api_token",
        )
        .into_response(),
    }
}

/// Refuses fields OpenAI's API does not have for the route, as OpenAI does.
fn refuse_unknown(unknown: &Map<String, Value>) -> OpenAiResult<()> {
    match unknown.keys().next() {
        Some(name) => Err(OpenAiError::invalid(
            Some(name),
            format!("Unrecognized request argument supplied: {name}"),
        )),
        None => Ok(()),
    }
}

/// The model a request names, trusted publishers only (as `infer` without
/// `--any-publisher`): a name anyone else announces is not found.
fn resolve_model(api: &Api, name: &str) -> OpenAiResult<Cid> {
    api.node.resolve_model_from(name, false).map_err(|e| {
        OpenAiError::model_not_found(format!("The model `{name}` does not exist here: {e}"))
    })
}

/// `answer`'s JSON with the provider's header.
fn with_provider(answer: &InferAnswer, body: impl serde::Serialize) -> Response {
    let mut response = Json(body).into_response();
    name_provider(&mut response, &answer.provider);
    response
}

/// Says in its header which peer gives `response`.
fn name_provider(response: &mut Response, provider: &crate::PeerId) {
    if let Ok(value) = HeaderValue::from_str(&provider.to_string()) {
        response.headers_mut().insert(PROVIDER_HEADER, value);
    }
}

async fn embeddings(
    State(api): State<Api>,
    Json(request): Json<wire::EmbeddingsRequest>,
) -> OpenAiResult {
    refuse_unknown(&request.unknown)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(
                Some("encoding_format"),
                format!("encoding_format {other:?} is not one of float, base64"),
            ));
        }
    };
    let inputs = embedding_inputs(request.input)?;
    let model = resolve_model(&api, &request.model)?;
    let call = InferCall {
        model,
        inputs,
        options: InferOptions::default(),
        remote: false,
        deadline: DEFAULT_DEADLINE,
    };
    let answer = api.node.infer(call).await.map_err(error::from_inference)?;
    let rows = answer
        .output
        .output
        .rows_f32()
        .map_err(|e| OpenAiError::server(format!("the provider sent a bad tensor: {e}")))?;
    let dim = rows.first().map_or(0, Vec::len);
    if let Some(asked) = request.dimensions
        && asked != dim as u64
    {
        return Err(OpenAiError::unsupported(
            "dimensions",
            format!("{} gives {dim} dimensions, not {asked}", request.model),
        ));
    }
    let data = rows
        .into_iter()
        .enumerate()
        .map(|(index, row)| wire::Embedding {
            object: "embedding",
            index,
            embedding: match base64 {
                true => wire::EmbeddingValue::Base64(
                    BASE64_STANDARD
                        .encode(row.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()),
                ),
                false => wire::EmbeddingValue::Floats(row),
            },
        })
        .collect();
    let tokens = answer.output.input_tokens.unwrap_or(0);
    let body = wire::EmbeddingsResponse {
        object: "list",
        data,
        model: request.model,
        usage: wire::Usage {
            prompt_tokens: tokens,
            completion_tokens: None,
            total_tokens: tokens,
        },
    };
    Ok(with_provider(&answer, body))
}

/// OpenAI's four input shapes as the protocol's: texts, or token rows (every token
/// attended to).
fn embedding_inputs(input: wire::EmbeddingInput) -> OpenAiResult<Inputs> {
    let inputs = match input {
        wire::EmbeddingInput::Text(text) => Inputs::Texts(vec![text]),
        wire::EmbeddingInput::Texts(texts) => Inputs::Texts(texts),
        wire::EmbeddingInput::Tokens(ids) => token_rows(vec![ids]),
        wire::EmbeddingInput::TokenRows(rows) => token_rows(rows),
    };
    let count = match &inputs {
        Inputs::Texts(texts) => texts.len(),
        Inputs::Tokens { ids, .. } => ids.len(),
        _ => 0,
    };
    if count == 0 {
        return Err(OpenAiError::invalid(Some("input"), "input is empty"));
    }
    if count > INFER_ROWS_LIMIT {
        return Err(OpenAiError::invalid(
            Some("input"),
            format!("{count} inputs in one request; at most {INFER_ROWS_LIMIT}"),
        ));
    }
    Ok(inputs)
}

fn token_rows(ids: Vec<Vec<u32>>) -> Inputs {
    let attention_mask = ids.iter().map(|row| vec![1; row.len()]).collect();
    Inputs::Tokens {
        ids,
        attention_mask,
    }
}

/// Seconds since the Unix epoch, OpenAI's `created`.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random id such as `chatcmpl-3f9a...`, as OpenAI names its answers.
fn answer_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// The CORS preflight of a web page allowed to call `/v1` may ask for any header
/// (OpenAI's browser client sends its own `x-stainless-*` ones).
pub(super) fn is_openai_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}
