//! `/api/v0/accelerate/...`: models and inference over HTTP, the same operations the
//! CLI runs against a daemon.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use cid::Cid;
use ipfs_accelerate_protocol::infer::{InferOptions, Inputs};
use ipfs_accelerate_protocol::manifest::Manifest;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, ApiError, ApiResult, Params, flag, param};
use crate::engine::DeviceKind;
use crate::infer::DEFAULT_DEADLINE;
use crate::models::LocalModels;
use crate::serving::{InferCall, PublishMeta};

/// The body of `accelerate/infer`.
#[derive(Debug, Deserialize)]
pub(super) struct InferBody {
    /// A root CID, or a model name imported here or announced by peers.
    model: String,
    #[serde(default)]
    texts: Vec<String>,
    /// Token ids instead of texts, with `attention_mask` of the same shape.
    ids: Option<Vec<Vec<u32>>>,
    attention_mask: Option<Vec<Vec<u32>>>,
    /// Only peers answer, even if the model is here.
    #[serde(default)]
    remote: bool,
    normalize: Option<bool>,
    deadline_ms: Option<u64>,
}

fn model_arg(api: &Api, q: &[(String, String)]) -> ApiResult<Cid> {
    let arg =
        param(q, "arg").ok_or_else(|| ApiError::bad_request("argument \"arg\" is required"))?;
    api.node
        .resolve_model(arg)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

fn device_arg(q: &[(String, String)]) -> ApiResult<DeviceKind> {
    param(q, "device")
        .unwrap_or("cpu")
        .parse()
        .map_err(|e: crate::engine::EngineError| ApiError::bad_request(e.to_string()))
}

pub(super) async fn infer(
    State(api): State<Api>,
    Json(body): Json<InferBody>,
) -> ApiResult<Json<Value>> {
    let model = api
        .node
        .resolve_model(&body.model)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let inputs = match (body.ids, body.attention_mask) {
        (Some(ids), Some(attention_mask)) if body.texts.is_empty() => Inputs::Tokens {
            ids,
            attention_mask,
        },
        (None, None) if !body.texts.is_empty() => Inputs::Texts(body.texts),
        _ => {
            return Err(ApiError::bad_request(
                "give either texts, or ids with attention_mask",
            ));
        }
    };
    let call = InferCall {
        model,
        inputs,
        options: InferOptions {
            normalize: body.normalize,
        },
        remote: body.remote,
        deadline: body
            .deadline_ms
            .map_or(DEFAULT_DEADLINE, Duration::from_millis),
    };
    let answer = api
        .node
        .infer(call)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let rows = answer
        .output
        .output
        .rows_f32()
        .map_err(|e| ApiError::internal(format!("the provider sent a bad tensor: {e}")))?;
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Json(json!({
        "model": model.to_string(),
        "provider": answer.provider.to_string(),
        "local": answer.local,
        "device": answer.output.backend,
        "dim": rows.first().map_or(0, Vec::len),
        "embeddings": rows,
        "timings": {
            "queue_ms": ms(answer.output.queue_us),
            "compute_ms": ms(answer.output.compute_us),
            "round_trip_ms": answer.round_trip.as_secs_f64() * 1000.0,
        },
        "attempts": answer.attempts.iter().map(|(peer, failure)| json!({
            "peer": peer.to_string(),
            "error": failure,
        })).collect::<Vec<_>>(),
    })))
}

pub(super) async fn publish(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Value>> {
    let root = model_arg(&api, &q)?;
    let name =
        param(&q, "name").ok_or_else(|| ApiError::bad_request("argument \"name\" is required"))?;
    let meta = PublishMeta {
        name: name.to_owned(),
        version: param(&q, "version").unwrap_or("1").to_owned(),
        tags: param(&q, "tags")
            .map(|t| {
                t.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let published = api
        .node
        .publish_model(root, meta, device_arg(&q)?)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(manifest_json(
        &published.manifest,
        &published.manifest_cid,
    )))
}

pub(super) async fn serve(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Value>> {
    let root = model_arg(&api, &q)?;
    api.node
        .serve_model(root, device_arg(&q)?)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "Serving": root.to_string() })))
}

pub(super) async fn pull(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Value>> {
    let root = model_arg(&api, &q)?;
    let started = std::time::Instant::now();
    let before = api.node.bitswap().received_from();
    let mut fetched = (0, 0);
    api.node
        .pull_model(root, |blocks, bytes| fetched = (blocks, bytes))
        .await
        .map_err(ApiError::internal)?;
    // Which peers the blocks came from (a pull takes them from every provider at once).
    let sources: serde_json::Map<String, Value> = api
        .node
        .bitswap()
        .received_from()
        .into_iter()
        .filter_map(|(peer, (blocks, bytes))| {
            let (old_blocks, old_bytes) = before.get(&peer).copied().unwrap_or_default();
            (blocks > old_blocks).then(|| {
                (
                    peer.to_string(),
                    json!({ "blocks": blocks - old_blocks, "bytes": bytes - old_bytes }),
                )
            })
        })
        .collect();
    if flag(&q, "serve", false)? {
        api.node
            .serve_model(root, device_arg(&q)?)
            .await
            .map_err(ApiError::internal)?;
    }
    Ok(Json(json!({
        "Root": root.to_string(),
        "Blocks": fetched.0,
        "Bytes": fetched.1,
        "Seconds": started.elapsed().as_secs_f64(),
        "Sources": sources,
    })))
}

/// Models known here: imported or pulled ones, and those peers announced.
pub(super) async fn ls(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Value>> {
    let tag = param(&q, "tag");
    let local = LocalModels::new(api.node.repo().path());
    let records = tokio::task::spawn_blocking(move || local.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let server = api.node.infer_server();
    let mut models: Vec<Value> = records
        .iter()
        .filter(|r| tag.is_none_or(|t| r.tags.iter().any(|x| x == t)))
        .map(|r| {
            json!({
                "name": r.name,
                "version": r.version,
                "tags": r.tags,
                "weights": r.root.to_string(),
                "source": "local",
                "serving": server.is_serving(&r.root),
            })
        })
        .collect();
    for announced in api.node.directory().list(tag) {
        let body = &announced.manifest.body;
        models.push(json!({
            "name": body.name,
            "version": body.version,
            "tags": body.tags,
            "weights": body.weights.to_string(),
            "manifest": announced.manifest_cid.to_string(),
            "publisher": announced.publisher.to_string(),
            "source": "announced",
            "serving": server.is_serving(&body.weights),
        }));
    }
    Ok(Json(json!({ "Models": models })))
}

pub(super) async fn info(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Value>> {
    let root = model_arg(&api, &q)?;
    let announced = api
        .node
        .directory()
        .by_weights(&root)
        .into_iter()
        .max_by_key(|a| a.manifest.body.created_at);
    let mut info = match &announced {
        Some(a) => manifest_json(&a.manifest, &a.manifest_cid),
        None => json!({ "weights": root.to_string() }),
    };
    info["serving_here"] = json!(api.node.infer_server().is_serving(&root));
    Ok(Json(info))
}

pub(super) async fn providers(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Value>> {
    let root = model_arg(&api, &q)?;
    let providers = api.node.providers(root).await.map_err(ApiError::internal)?;
    let list: Vec<Value> = providers
        .iter()
        .map(|p| {
            json!({
                "peer": p.peer.to_string(),
                "round_trip_ms": p.round_trip.map(|d| d.as_secs_f64() * 1000.0),
                "success_rate": p.stats.success_rate(),
                "successes": p.stats.successes,
                "failures": p.stats.failures,
                "load": p.stats.load.map(|l| json!({
                    "queued": l.queued, "capacity": l.capacity, "workers": l.workers,
                })),
                "error": p.error,
            })
        })
        .collect();
    Ok(Json(
        json!({ "Model": root.to_string(), "Providers": list }),
    ))
}

/// A manifest as the API and `--json` show it.
pub(super) fn manifest_json(manifest: &Manifest, cid: &Cid) -> Value {
    let body = &manifest.body;
    json!({
        "manifest": cid.to_string(),
        "name": body.name,
        "version": body.version,
        "task": body.task,
        "architecture": body.architecture,
        "parameters": body.parameters,
        "input_shape": body.input_shape,
        "output_shape": body.output_shape,
        "hardware": body.hardware,
        "precision": body.precision,
        "tags": body.tags,
        "created_at": body.created_at,
        "weights": body.weights.to_string(),
        "publisher": body.publisher,
    })
}
