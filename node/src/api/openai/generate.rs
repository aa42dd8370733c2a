//! `POST /v1/completions` and `POST /v1/chat/completions`: a generation through the
//! swarm, whole or streamed as server-sent events ending in `data: [DONE]`. The
//! generation runs where `infer --prompt` runs it (mid-stream failover included: a
//! provider that dies is replaced and the text goes on). A failure before any text
//! is an HTTP error; after, it is the stream's last event, in OpenAI's error shape. A
//! client that goes away stops the generation at the provider.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use ipfs_accelerate_protocol::infer::{Delta, FinishReason, InferOptions, Inputs, Message};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::wire::{self, Sampling};
use super::{
    OpenAiError, OpenAiResult, error, name_provider, refuse_unknown, resolve_model, with_provider,
};
use crate::api::Api;
use crate::model_network::{InferAnswer, InferCall};

/// How long a generation may run, from the request to its last token: long answers
/// on a CPU take minutes.
const GENERATION_DEADLINE: Duration = Duration::from_secs(600);
/// OpenAI's default `max_tokens` for `/v1/completions` (chat has none: the model's).
const COMPLETION_MAX_TOKENS: u32 = 16;
/// Deltas and events queued for a slow client before the generation waits on it.
const QUEUED: usize = 16;

/// Which of the two routes is answering: they differ only in their JSON.
#[derive(Debug, Clone, Copy)]
enum Route {
    Completions,
    Chat,
}

/// What every answer of one request shares.
#[derive(Debug, Clone)]
struct Answering {
    route: Route,
    id: String,
    created: u64,
    /// The model as the request named it.
    model: String,
}

pub(super) async fn completions(
    State(api): State<Api>,
    Json(request): Json<wire::CompletionRequest>,
) -> OpenAiResult {
    refuse_unknown(&request.unknown)?;
    if request.echo == Some(true) {
        return Err(OpenAiError::unsupported("echo", "echo is not supported"));
    }
    if request.best_of.is_some_and(|n| n != 1) {
        return Err(OpenAiError::unsupported("best_of", "best_of must be 1"));
    }
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(OpenAiError::unsupported(
            "suffix",
            "suffix (insertion) is not supported",
        ));
    }
    if request.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(OpenAiError::unsupported(
            "logprobs",
            "logprobs are not returned",
        ));
    }
    let prompt = match request.prompt {
        wire::Prompt::Text(text) => text,
        wire::Prompt::Texts(mut texts) if texts.len() == 1 => texts.remove(0),
        wire::Prompt::Texts(_) => {
            return Err(OpenAiError::unsupported("prompt", "one prompt per request"));
        }
        wire::Prompt::Other(_) => {
            return Err(OpenAiError::unsupported(
                "prompt",
                "prompt must be text: token ids are not supported",
            ));
        }
    };
    let max_tokens = request.sampling.max_tokens.unwrap_or(COMPLETION_MAX_TOKENS);
    let options = options(&request.sampling, Some(max_tokens))?;
    let answering = Answering {
        route: Route::Completions,
        id: super::answer_id("cmpl"),
        created: super::unix_now(),
        model: request.model,
    };
    let model = resolve_model(&api, &answering.model)?;
    let call = generation_call(model, Inputs::Prompt(prompt), options);
    run(api, answering, call, &request.sampling).await
}

pub(super) async fn chat(
    State(api): State<Api>,
    Json(request): Json<wire::ChatRequest>,
) -> OpenAiResult {
    refuse_unknown(&request.unknown)?;
    refuse_chat_features(&request)?;
    let messages = chat_messages(request.messages)?;
    let max_tokens = request
        .max_completion_tokens
        .or(request.sampling.max_tokens);
    let options = options(&request.sampling, max_tokens)?;
    let answering = Answering {
        route: Route::Chat,
        id: super::answer_id("chatcmpl"),
        created: super::unix_now(),
        model: request.model,
    };
    let model = resolve_model(&api, &answering.model)?;
    let call = generation_call(model, Inputs::Messages(messages), options);
    run(api, answering, call, &request.sampling).await
}

fn generation_call(model: cid::Cid, inputs: Inputs, options: InferOptions) -> InferCall {
    InferCall {
        model,
        inputs,
        options,
        remote: false,
        deadline: GENERATION_DEADLINE,
    }
}

/// Chat features this server does not have, each refused by its parameter's name.
fn refuse_chat_features(request: &wire::ChatRequest) -> OpenAiResult<()> {
    let nonempty = |v: &Option<Vec<serde_json::Value>>| v.as_ref().is_some_and(|v| !v.is_empty());
    let refused = [
        (request.logprobs == Some(true), "logprobs"),
        (request.top_logprobs.is_some_and(|n| n > 0), "top_logprobs"),
        (nonempty(&request.tools), "tools"),
        (nonempty(&request.functions), "functions"),
        (request.function_call.is_some(), "function_call"),
        (
            request
                .tool_choice
                .as_ref()
                .is_some_and(|c| c != "none" && c != "auto"),
            "tool_choice",
        ),
        (
            request
                .response_format
                .as_ref()
                .is_some_and(|f| f.get("type").is_none_or(|t| t != "text")),
            "response_format",
        ),
        (
            request
                .modalities
                .as_ref()
                .is_some_and(|m| m.iter().any(|m| m != "text")),
            "modalities",
        ),
        (request.audio.is_some(), "audio"),
        (request.prediction.is_some(), "prediction"),
        (request.reasoning_effort.is_some(), "reasoning_effort"),
        (request.web_search_options.is_some(), "web_search_options"),
    ];
    match refused.iter().find(|(asked, _)| *asked) {
        Some((_, name)) => Err(OpenAiError::unsupported(
            name,
            format!("{name} is not supported by this server: it generates plain text"),
        )),
        None => Ok(()),
    }
}

/// The chat as the protocol's messages: `developer` is `system` (OpenAI's newer name
/// for it), text parts are joined; images, tools and function calls are refused.
fn chat_messages(messages: Vec<wire::ChatMessage>) -> OpenAiResult<Vec<Message>> {
    if messages.is_empty() {
        return Err(OpenAiError::invalid(Some("messages"), "messages is empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let role = match message.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(OpenAiError::unsupported(
                        &format!("messages[{i}].role"),
                        format!("role {other:?} is not supported: system, developer, user or assistant"),
                    ));
                }
            };
            if message.tool_calls.is_some() || message.tool_call_id.is_some() {
                return Err(OpenAiError::unsupported(
                    &format!("messages[{i}]"),
                    "tool calls are not supported",
                ));
            }
            let content = match message.content {
                None => String::new(),
                Some(wire::Content::Text(text)) => text,
                Some(wire::Content::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for part in parts {
                        match (part.r#type.as_str(), part.text) {
                            ("text", Some(text)) => texts.push(text),
                            (kind, _) => {
                                return Err(OpenAiError::unsupported(
                                    &format!("messages[{i}].content"),
                                    format!("content parts of type {kind:?} are not supported: text only"),
                                ));
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            Ok(Message {
                role: role.to_owned(),
                content,
            })
        })
        .collect()
}

/// The sampling parameters as the protocol's options. Left out, each is the model's
/// default (its generation_config.json), as vLLM does, not OpenAI's temperature 1.
fn options(sampling: &Sampling, max_tokens: Option<u32>) -> OpenAiResult<InferOptions> {
    if sampling.n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::unsupported(
            "n",
            "one choice per request (n = 1)",
        ));
    }
    if let Some(t) = sampling.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(OpenAiError::invalid(
            Some("temperature"),
            format!("temperature {t} is not between 0 and 2"),
        ));
    }
    if let Some(p) = sampling.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(OpenAiError::invalid(
            Some("top_p"),
            format!("top_p {p} is not above 0 and at most 1"),
        ));
    }
    for (value, name) in [
        (sampling.frequency_penalty, "frequency_penalty"),
        (sampling.presence_penalty, "presence_penalty"),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(OpenAiError::unsupported(
                name,
                format!("{name} is not supported; repetition_penalty is"),
            ));
        }
    }
    if sampling
        .logit_bias
        .as_ref()
        .is_some_and(|b| b.as_object().is_none_or(|b| !b.is_empty()))
    {
        return Err(OpenAiError::unsupported(
            "logit_bias",
            "logit_bias is not supported",
        ));
    }
    let stop = match &sampling.stop {
        None => Vec::new(),
        Some(wire::Stop::One(stop)) => vec![stop.clone()],
        Some(wire::Stop::Many(stops)) => stops.clone(),
    };
    Ok(InferOptions {
        max_tokens,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        top_k: sampling.top_k,
        repetition_penalty: sampling.repetition_penalty,
        // OpenAI's seed is any 64-bit integer; its bits are the sampler's seed.
        seed: sampling.seed.map(|s| s as u64),
        stop,
        ..InferOptions::default()
    })
}

/// Runs the generation and answers it whole, or as a stream when asked.
async fn run(api: Api, answering: Answering, call: InferCall, sampling: &Sampling) -> OpenAiResult {
    let (deltas, mut heard) = mpsc::channel::<Delta>(QUEUED);
    let (provider, sending) = watch::channel(None);
    let node = api.node.clone();
    let generation =
        tokio::spawn(async move { node.infer_streaming(call, deltas, Some(provider)).await });
    let finished = |joined: Result<crate::error::Result<InferAnswer>, tokio::task::JoinError>| {
        joined
            .map_err(OpenAiError::server)?
            .map_err(error::from_inference)
    };
    if sampling.stream != Some(true) {
        let mut text = String::new();
        while let Some(delta) = heard.recv().await {
            text.push_str(&delta.text);
        }
        let answer = finished(generation.await)?;
        let body = answering.whole(text, &answer);
        return Ok(body);
    }
    let include_usage = sampling
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    // The first text (or the end) decides the status: nothing is sent before it.
    let first = heard.recv().await;
    if first.is_none() {
        // No text: a failure is an HTTP error; an empty answer is a stream of no text.
        let answer = finished(generation.await)?;
        let events: Vec<Event> = answering
            .opening()
            .into_iter()
            .chain(answering.ending(&answer, include_usage))
            .collect();
        let (events_tx, events_rx) = mpsc::channel(events.len());
        for event in events {
            let _ = events_tx.try_send(event);
        }
        let mut response = sse(events_rx);
        name_provider(&mut response, &answer.provider);
        return Ok(response);
    }
    // The peer whose text came first (a failover later is not in the header).
    let first_provider = *sending.borrow();
    let (events, events_rx) = mpsc::channel(QUEUED);
    tokio::spawn(async move {
        if let Some(opening) = answering.opening()
            && events.send(opening).await.is_err()
        {
            return;
        }
        let mut next = first;
        while let Some(delta) = next {
            // The client left: dropping `heard` stops the generation.
            if events.send(answering.text_chunk(delta.text)).await.is_err() {
                return;
            }
            next = heard.recv().await;
        }
        let ending = match finished(generation.await) {
            Ok(answer) => answering.ending(&answer, include_usage),
            Err(error) => vec![event(&error.body())],
        };
        for event in ending {
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
    let mut response = sse(events_rx);
    if let Some(peer) = first_provider {
        name_provider(&mut response, &peer);
    }
    Ok(response)
}

fn sse(events: mpsc::Receiver<Event>) -> Response {
    let stream = futures::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        Some((Ok::<_, Infallible>(event), events))
    });
    Sse::new(stream).into_response()
}

fn event(body: &impl Serialize) -> Event {
    Event::default().data(serde_json::to_string(body).unwrap_or_default())
}

fn finish_reason(answer: &InferAnswer) -> &'static str {
    match answer.output.generation.map(|g| g.finish_reason) {
        Some(FinishReason::Length) => "length",
        Some(FinishReason::Stop | FinishReason::Eos) | None => "stop",
    }
}

fn usage(answer: &InferAnswer) -> wire::Usage {
    let generated = answer.output.generation;
    let prompt = generated.map_or(0, |g| g.prompt_tokens);
    let completion = generated.map_or(0, |g| g.completion_tokens);
    wire::Usage {
        prompt_tokens: prompt,
        completion_tokens: Some(completion),
        total_tokens: prompt.saturating_add(completion),
    }
}

impl Answering {
    /// The whole answer, with the provider's header.
    fn whole(&self, text: String, answer: &InferAnswer) -> Response {
        let finish_reason = Some(finish_reason(answer));
        match self.route {
            Route::Completions => with_provider(
                answer,
                self.completion(
                    vec![wire::CompletionChoice {
                        index: 0,
                        text,
                        logprobs: None,
                        finish_reason,
                    }],
                    Some(usage(answer)),
                ),
            ),
            Route::Chat => with_provider(
                answer,
                self.chat(
                    "chat.completion",
                    vec![wire::ChatChoice {
                        index: 0,
                        message: Some(wire::AssistantMessage {
                            role: "assistant",
                            content: text,
                            refusal: None,
                        }),
                        delta: None,
                        logprobs: None,
                        finish_reason,
                    }],
                    Some(usage(answer)),
                ),
            ),
        }
    }

    /// What a stream says before its text: chat announces the assistant's role; a
    /// completion starts with its text.
    fn opening(&self) -> Option<Event> {
        match self.route {
            Route::Completions => None,
            Route::Chat => Some(self.chat_chunk(
                wire::AssistantDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                None,
            )),
        }
    }

    fn text_chunk(&self, text: String) -> Event {
        match self.route {
            Route::Completions => event(&self.completion(
                vec![wire::CompletionChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason: None,
                }],
                None,
            )),
            Route::Chat => self.chat_chunk(
                wire::AssistantDelta {
                    role: None,
                    content: Some(text),
                },
                None,
            ),
        }
    }

    /// The events after the text: why it ended, the usage when asked, `[DONE]`.
    fn ending(&self, answer: &InferAnswer, include_usage: bool) -> Vec<Event> {
        let reason = Some(finish_reason(answer));
        let mut events = vec![match self.route {
            Route::Completions => event(&self.completion(
                vec![wire::CompletionChoice {
                    index: 0,
                    text: String::new(),
                    logprobs: None,
                    finish_reason: reason,
                }],
                None,
            )),
            Route::Chat => self.chat_chunk(wire::AssistantDelta::default(), reason),
        }];
        if include_usage {
            events.push(match self.route {
                Route::Completions => event(&self.completion(Vec::new(), Some(usage(answer)))),
                Route::Chat => {
                    event(&self.chat("chat.completion.chunk", Vec::new(), Some(usage(answer))))
                }
            });
        }
        events.push(Event::default().data("[DONE]"));
        events
    }

    fn chat_chunk(
        &self,
        delta: wire::AssistantDelta,
        finish_reason: Option<&'static str>,
    ) -> Event {
        event(&self.chat(
            "chat.completion.chunk",
            vec![wire::ChatChoice {
                index: 0,
                message: None,
                delta: Some(delta),
                logprobs: None,
                finish_reason,
            }],
            None,
        ))
    }

    fn completion(
        &self,
        choices: Vec<wire::CompletionChoice>,
        usage: Option<wire::Usage>,
    ) -> wire::Completion {
        wire::Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn chat(
        &self,
        object: &'static str,
        choices: Vec<wire::ChatChoice>,
        usage: Option<wire::Usage>,
    ) -> wire::ChatCompletion {
        wire::ChatCompletion {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(json: serde_json::Value) -> OpenAiResult<Vec<Message>> {
        chat_messages(serde_json::from_value(json).unwrap())
    }

    fn sampling(json: serde_json::Value) -> Sampling {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn chats_become_the_protocols_messages() {
        let got = messages(serde_json::json!([
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "name": "bot"},
        ]))
        .unwrap();
        let roles: Vec<&str> = got.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(got[1].content, "a\nb");
        assert_eq!(got[2].content, "");
    }

    #[test]
    fn what_a_chat_cannot_carry_is_refused_by_name() {
        let image = serde_json::json!([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}
        ]}]);
        let error = messages(image).unwrap_err().body().error;
        assert_eq!(error.param.as_deref(), Some("messages[0].content"));
        let tool = serde_json::json!([{"role": "tool", "content": "x", "tool_call_id": "1"}]);
        assert_eq!(
            messages(tool).unwrap_err().body().error.param.as_deref(),
            Some("messages[0].role")
        );
        assert!(messages(serde_json::json!([])).is_err());
    }

    #[test]
    fn sampling_maps_to_options_and_refuses_what_it_cannot_do() {
        let mapped = options(
            &sampling(serde_json::json!({
                "temperature": 0.5, "top_p": 0.9, "stop": "\n", "seed": -1,
                "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "n": 1
            })),
            Some(7),
        )
        .unwrap();
        assert_eq!(mapped.max_tokens, Some(7));
        assert_eq!(mapped.temperature, Some(0.5));
        assert_eq!(mapped.stop, ["\n"]);
        assert_eq!(mapped.seed, Some(u64::MAX));
        for (refused, param) in [
            (serde_json::json!({"n": 2}), "n"),
            (serde_json::json!({"temperature": 2.5}), "temperature"),
            (serde_json::json!({"top_p": 0}), "top_p"),
            (
                serde_json::json!({"presence_penalty": 0.5}),
                "presence_penalty",
            ),
            (
                serde_json::json!({"logit_bias": {"50256": -100}}),
                "logit_bias",
            ),
        ] {
            let error = options(&sampling(refused), None).unwrap_err().body().error;
            assert_eq!(error.param.as_deref(), Some(param));
        }
    }
}
