//! `/api/v0/accelerate/...`: models and inference over HTTP, the same operations the
//! CLI runs against a daemon.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use cid::Cid;
use ipfs_accelerate_protocol::infer::{ByteBuf, Delta, InferOptions, Inputs, Message, Task};
use tokio::sync::mpsc;

use super::types::{self, InferRequest, PullLine};
use super::{Api, ApiError, ApiResult, Params, flag, json_line, ndjson_stream, param, params};
use crate::PeerId;
use crate::engine::Placement;
use crate::envelope::{self, Opener};
use crate::infer::DEFAULT_DEADLINE;
use crate::model_network::{InferCall, PublishMeta};
use crate::models::LocalModels;
use crate::trust;

/// How often a pull with `progress=true` reports.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Progress lines queued for a slow reader.
const PROGRESS_LINES: usize = 16;

/// The model `arg` names (with `any-publisher=true`, by any publisher of the name).
fn model_arg(api: &Api, q: &[(String, String)]) -> ApiResult<Cid> {
    let arg =
        param(q, "arg").ok_or_else(|| ApiError::bad_request("argument \"arg\" is required"))?;
    api.node
        .resolve_model_from(arg, flag(q, "any-publisher", false)?)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Where to serve: `device` (cpu) and `precision` (f32; f16 on wgpu only).
fn device_arg(q: &[(String, String)]) -> ApiResult<Placement> {
    let bad = |e: crate::engine::EngineError| ApiError::bad_request(e.to_string());
    let device = param(q, "device").unwrap_or("cpu").parse().map_err(bad)?;
    let precision = param(q, "precision")
        .unwrap_or("f32")
        .parse()
        .map_err(bad)?;
    Placement::new(device, precision).map_err(bad)
}

pub(super) async fn infer(State(api): State<Api>, Json(body): Json<InferRequest>) -> ApiResult {
    let model = api
        .node
        .resolve_model_from(&body.model, body.any_publisher)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let call = infer_call(model, body)?;
    match call.inputs.task() {
        Task::Generate => generate(api, call).await,
        Task::Classify => classify(&api, call).await.map(IntoResponse::into_response),
        Task::Embed => embed(&api, call).await.map(IntoResponse::into_response),
    }
}

/// The call a request body asks for: texts or tokens embed, a prompt or messages
/// generate, images are classified; one kind of input at a time.
fn infer_call(model: Cid, body: InferRequest) -> ApiResult<InferCall> {
    let given = [
        !body.texts.is_empty(),
        body.ids.is_some() || body.attention_mask.is_some(),
        body.prompt.is_some(),
        !body.messages.is_empty(),
        !body.images.is_empty(),
    ];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(ApiError::bad_request(
            "give one of: texts, ids with attention_mask, prompt, messages or images",
        ));
    }
    let inputs = if let Some(prompt) = body.prompt {
        Inputs::Prompt(prompt)
    } else if !body.messages.is_empty() {
        Inputs::Messages(
            body.messages
                .into_iter()
                .map(|m| Message {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
        )
    } else if !body.images.is_empty() {
        let images = body
            .images
            .iter()
            .enumerate()
            .map(|(i, text)| {
                BASE64_STANDARD
                    .decode(text)
                    .map(ByteBuf::from)
                    .map_err(|e| ApiError::bad_request(format!("images[{i}] is not base64: {e}")))
            })
            .collect::<ApiResult<_>>()?;
        Inputs::Images(images)
    } else {
        match (body.ids, body.attention_mask) {
            (Some(ids), Some(attention_mask)) => Inputs::Tokens {
                ids,
                attention_mask,
            },
            (None, None) => Inputs::Texts(body.texts),
            _ => return Err(ApiError::bad_request("ids need attention_mask, and back")),
        }
    };
    let g = body.generation;
    Ok(InferCall {
        model,
        inputs,
        options: InferOptions {
            normalize: body.normalize,
            max_tokens: g.max_tokens,
            temperature: g.temperature,
            top_p: g.top_p,
            top_k: g.top_k,
            repetition_penalty: g.repetition_penalty,
            seed: g.seed,
            stop: g.stop,
            resume: Vec::new(),
            labels: body.labels,
        },
        remote: body.remote,
        deadline: body
            .deadline_ms
            .map_or(DEFAULT_DEADLINE, Duration::from_millis),
    })
}

async fn embed(api: &Api, call: InferCall) -> ApiResult<Json<types::InferAnswer>> {
    let model = call.model;
    let answer = api.node.infer(call).await.map_err(super::infer_error)?;
    let rows = answer
        .output
        .output
        .rows_f32()
        .map_err(|e| ApiError::internal(format!("the provider sent a bad tensor: {e}")))?;
    Ok(Json(types::InferAnswer {
        attempts: types::Attempt::all(&answer),
        device: answer.output.backend.clone(),
        dim: rows.first().map_or(0, Vec::len),
        embeddings: rows
            .into_iter()
            .map(|row| row.into_iter().map(f64::from).collect())
            .collect(),
        local: answer.local,
        model: model.to_string(),
        provider: answer.provider.to_string(),
        timings: types::InferTimings::of(&answer),
    }))
}

async fn classify(api: &Api, call: InferCall) -> ApiResult<Json<types::ClassifyAnswer>> {
    let model = call.model;
    let answer = api.node.infer(call).await.map_err(super::infer_error)?;
    types::ClassifyAnswer::new(model.to_string(), &answer)
        .map(Json)
        .map_err(|e| ApiError::internal(format!("the provider sent a bad tensor: {e}")))
}

/// A generation as newline-delimited JSON: a line per delta as it comes, then the end.
/// A failure before any text is an HTTP error; after, it is the last line. A client
/// that goes away stops the generation.
async fn generate(api: Api, call: InferCall) -> ApiResult {
    let model = call.model;
    let (deltas, mut heard) = mpsc::channel::<Delta>(16);
    let started = Instant::now();
    let run = tokio::spawn(async move { api.node.infer_streaming(call, deltas, None).await });
    // Waits for the first text (or the end) to pick the response's status.
    let first = heard.recv().await;
    let first_token = started.elapsed();
    let Some(first) = first else {
        // No text at all: the generation ended empty or failed.
        let answer = run
            .await
            .map_err(ApiError::internal)?
            .map_err(super::infer_error)?;
        let done = types::GenerateDone::new(
            model.to_string(),
            &answer,
            String::new(),
            first_token,
            started,
        );
        return Ok(ndjson_lines([types::GenerateLine::Done(done)]));
    };
    let (lines, body) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut text = String::new();
        let mut next = Some(first);
        while let Some(delta) = next {
            text.push_str(&delta.text);
            let line = types::GenerateLine::Delta {
                text: delta.text,
                tokens: delta.tokens,
            };
            // The client left: dropping `heard` stops the generation.
            if lines.send(line).await.is_err() {
                return;
            }
            next = heard.recv().await;
        }
        let end = match run.await {
            Ok(Ok(answer)) => types::GenerateLine::Done(types::GenerateDone::new(
                model.to_string(),
                &answer,
                text,
                first_token,
                started,
            )),
            Ok(Err(error)) => types::GenerateLine::Error {
                message: error.to_string(),
            },
            Err(error) => types::GenerateLine::Error {
                message: error.to_string(),
            },
        };
        let _ = lines.send(end).await;
    });
    Ok(ndjson_stream(body, "application/x-ndjson"))
}

fn ndjson_lines(lines: impl IntoIterator<Item = types::GenerateLine>) -> axum::response::Response {
    let body: Vec<u8> = lines.into_iter().flat_map(|l| json_line(&l)).collect();
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// `tags`, comma-separated.
fn tags_arg(q: &[(String, String)]) -> Vec<String> {
    param(q, "tags")
        .map(|t| {
            t.split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Names the model folder `arg` (a CID, or a name already here) `name@version` here,
/// as `model import` does for a folder on disk: the folder must be whole in the repo
/// (uploaded with `add`, imported from a CAR; a published model is `pull`ed instead),
/// and is pinned and provided. The CLI's `model import DIR` with a daemon running and
/// the Python package's `RemoteNode.import_model` add the folder, then call this.
pub(super) async fn import(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::ImportedModel>> {
    let root = model_arg(&api, &q)?;
    let name =
        param(&q, "name").ok_or_else(|| ApiError::bad_request("argument \"name\" is required"))?;
    let version = param(&q, "version").unwrap_or("1").to_owned();
    if !api
        .node
        .is_complete(root)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::bad_request(format!(
            "{root} is not wholly in this repo: add the model folder first (`add -r`), \
             or `model pull` a published model"
        )));
    }
    let local = LocalModels::new(api.node.repo().path());
    let store = api.node.store();
    let key = envelope::node_identity(api.node.repo().identity().keypair()).ok();
    let named = (name.to_owned(), version, tags_arg(&q));
    let record = tokio::task::spawn_blocking(move || {
        local.import(&store, root, named, &Opener::with_key(key))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| match e.is_bad_input() {
        true => ApiError::bad_request(e.to_string()),
        false => ApiError::internal(e),
    })?;
    api.node.pin(root, true).await.map_err(ApiError::internal)?;
    Ok(Json(types::ImportedModel::from(&record)))
}

pub(super) async fn publish(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::Manifest>> {
    let root = model_arg(&api, &q)?;
    let name =
        param(&q, "name").ok_or_else(|| ApiError::bad_request("argument \"name\" is required"))?;
    let meta = PublishMeta {
        name: name.to_owned(),
        version: param(&q, "version").unwrap_or("1").to_owned(),
        tags: tags_arg(&q),
        recipients: params(&q, "encrypt-to")
            .map(|text| {
                text.parse::<PeerId>().map_err(|_| {
                    ApiError::bad_request(format!("encrypt-to {text:?} is not a peer id"))
                })
            })
            .collect::<ApiResult<_>>()?,
    };
    let published = api
        .node
        .publish_model(root, meta, device_arg(&q)?)
        .await
        .map_err(ApiError::internal)?;
    let mut answer = types::Manifest::new(&published.manifest, &published.manifest_cid);
    answer.registry = Some(published.registry.to_string());
    Ok(Json(answer))
}

pub(super) async fn serve(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::Serving>> {
    let root = model_arg(&api, &q)?;
    api.node
        .serve_model(root, device_arg(&q)?)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(types::Serving {
        serving: root.to_string(),
    }))
}

/// Pulls a model. With `progress=true` the answer is newline-delimited JSON: first
/// `{"Total"}` (bytes, from the root's links), then `{"Blocks", "Bytes"}` now and then,
/// and last the result or `{"Message", "Type": "error"}`.
pub(super) async fn pull(State(api): State<Api>, Query(q): Params) -> ApiResult {
    let root = model_arg(&api, &q)?;
    let serve = flag(&q, "serve", false)?
        .then(|| device_arg(&q))
        .transpose()?;
    if !flag(&q, "progress", false)? {
        let answer = run_pull(&api, root, serve, |_, _| {})
            .await
            .map_err(ApiError::internal)?;
        return Ok(Json(answer).into_response());
    }
    let (lines, receiver) = mpsc::channel::<PullLine>(PROGRESS_LINES);
    tokio::spawn(async move {
        // The hint fetches the root, the pull's first block: a root that cannot be had
        // ends the pull here rather than after a second wait as long.
        match api.node.dag_size_hint(root).await {
            Ok(Some(total)) => {
                let _ = lines.send(PullLine::Total { total }).await;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = lines.send(pull_failed(&e)).await;
                return;
            }
        }
        let mut last = Instant::now();
        let result = run_pull(&api, root, serve, |blocks, bytes| {
            if last.elapsed() >= PROGRESS_INTERVAL {
                last = Instant::now();
                // A slow reader misses some updates rather than holding up the pull.
                let _ = lines.try_send(PullLine::Progress { blocks, bytes });
            }
        })
        .await;
        let end = match result {
            Ok(pulled) => PullLine::Done(pulled),
            Err(e) => pull_failed(&e),
        };
        let _ = lines.send(end).await;
    });
    Ok(ndjson_stream(receiver, "application/json"))
}

/// The last line of a pull that failed.
fn pull_failed(error: &crate::error::Error) -> PullLine {
    PullLine::Failed {
        message: error.to_string(),
        r#type: "error".into(),
    }
}

/// Fetches, pins and provides `root` (serving it on `serve` when given) and says
/// what came from where.
async fn run_pull(
    api: &Api,
    root: Cid,
    serve: Option<Placement>,
    mut progress: impl FnMut(u64, u64),
) -> crate::error::Result<types::Pulled> {
    let started = Instant::now();
    let before = api.node.bitswap().received_from();
    let mut fetched = (0, 0);
    api.node
        .pull_model(root, |blocks, bytes| {
            fetched = (blocks, bytes);
            progress(blocks, bytes);
        })
        .await?;
    // Which peers the blocks came from (a pull takes them from every provider at once).
    let sources = types::Received::since(&before, api.node.bitswap().received_from());
    if let Some(device) = serve {
        api.node.serve_model(root, device).await?;
    }
    Ok(types::Pulled {
        blocks: fetched.0,
        bytes: fetched.1,
        root: root.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        sources,
    })
}

/// Models known here: imported or pulled ones, those peers announced, and those read
/// from registries.
pub(super) async fn ls(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::ModelList>> {
    let tag = param(&q, "tag");
    let task = param(&q, "task");
    let local = LocalModels::new(api.node.repo().path());
    let records = tokio::task::spawn_blocking(move || local.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let node = &api.node;
    let server = node.infer_server();
    let mut models: Vec<_> = records
        .iter()
        .filter(|r| tag.is_none_or(|t| r.tags.iter().any(|x| x == t)))
        .filter(|r| task.is_none_or(|t| r.task.as_deref() == Some(t)))
        .map(|r| types::ModelEntry {
            manifest: None,
            name: r.name.clone(),
            publisher: None,
            registry: None,
            serving: server.is_serving(&r.root),
            source: "local".into(),
            tags: r.tags.clone(),
            task: r.task.clone(),
            untrusted: None,
            version: r.version.clone(),
            weights: r.root.to_string(),
        })
        .collect();
    models.extend(
        api.node
            .directory()
            .list(tag)
            .iter()
            .filter(|a| task.is_none_or(|t| a.manifest.body.task == t))
            .map(|a| types::ModelEntry::announced(a, node)),
    );
    Ok(Json(types::ModelList { models }))
}

/// Reads a registry entry and lists the versions it names (now in the directory too).
pub(super) async fn discover(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::Discovered>> {
    let registry = param(&q, "registry")
        .ok_or_else(|| ApiError::bad_request("argument \"registry\" is required"))?;
    let registry = Cid::try_from(registry)
        .map_err(|e| ApiError::bad_request(format!("invalid registry CID {registry:?}: {e}")))?;
    let found = api
        .node
        .discover_registry(registry)
        .await
        .map_err(ApiError::internal)?;
    let models = found
        .iter()
        .map(|a| types::ModelEntry::announced(a, &api.node))
        .collect();
    Ok(Json(types::Discovered {
        models,
        registry: registry.to_string(),
    }))
}

pub(super) async fn info(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::ModelInfo>> {
    let root = model_arg(&api, &q)?;
    // A trusted publisher's manifest first, then the newest.
    let announced = api
        .node
        .directory()
        .by_weights(&root)
        .into_iter()
        .max_by_key(|a| {
            let trusted = api.node.trusts(&a.manifest.body.name, &a.publisher);
            (trusted, a.manifest.body.created_at)
        });
    let serving_here = api.node.infer_server().is_serving(&root);
    Ok(Json(match &announced {
        Some(a) => types::ModelInfo::Announced(types::Manifest {
            serving_here: Some(serving_here),
            ..types::Manifest::new(&a.manifest, &a.manifest_cid)
        }),
        None => types::ModelInfo::Unknown {
            serving_here,
            weights: root.to_string(),
        },
    }))
}

pub(super) async fn providers(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::Providers>> {
    let root = model_arg(&api, &q)?;
    let providers = api.node.providers(root).await.map_err(ApiError::internal)?;
    Ok(Json(types::Providers {
        model: root.to_string(),
        providers: providers.iter().map(types::Provider::from).collect(),
    }))
}

/// `model/trust/add?arg=NAME&arg=PEER_ID`: trusts PEER_ID for NAME too.
pub(super) async fn trust_add(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::TrustChange>> {
    let (name, publisher) = trust_args(&q)?;
    let node = Arc::clone(&api.node);
    let (task_name, task_publisher) = (name.clone(), publisher);
    tokio::task::spawn_blocking(move || node.trust().add(&task_name, task_publisher))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(types::TrustChange {
        name,
        publisher: publisher.to_string(),
        removed: None,
        trusted: true,
    }))
}

/// `model/trust/rm?arg=NAME&arg=PEER_ID`: stops trusting PEER_ID for NAME (the name
/// stays pinned, maybe to nobody).
pub(super) async fn trust_rm(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::TrustChange>> {
    let (name, publisher) = trust_args(&q)?;
    let node = Arc::clone(&api.node);
    let (task_name, task_publisher) = (name.clone(), publisher);
    let removed =
        tokio::task::spawn_blocking(move || node.trust().remove(&task_name, &task_publisher))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(types::TrustChange {
        name,
        publisher: publisher.to_string(),
        removed: Some(removed),
        trusted: false,
    }))
}

/// `model/trust/ls`: every trusted publisher by name, from the config and the repo.
pub(super) async fn trust_ls(State(api): State<Api>) -> ApiResult<Json<types::TrustList>> {
    let trusted = api.node.trust().list().iter().map(Into::into).collect();
    Ok(Json(types::TrustList { trusted }))
}

/// `arg=NAME&arg=PEER_ID`.
fn trust_args(q: &[(String, String)]) -> ApiResult<(String, crate::PeerId)> {
    let mut args = super::params(q, "arg");
    let (Some(name), Some(peer)) = (args.next(), args.next()) else {
        return Err(ApiError::bad_request(
            "arguments NAME and PEER_ID are required (arg=NAME&arg=PEER_ID)",
        ));
    };
    let publisher =
        trust::parse_peer("publisher", peer).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((name.to_owned(), publisher))
}
