//! `GET /v1/models`: what a request can name here. One entry per name, the version the
//! name resolves to: models imported here (ours), then those announced by publishers
//! trusted for their name (a stranger's announcements are not listed: anyone can
//! announce anything, and a name they announce is not used here either), then models
//! served here that have no name, by CID.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;

use super::wire::{Model, ModelList};
use super::{OpenAiError, OpenAiResult};
use crate::api::Api;
use crate::models::LocalModels;

pub(super) async fn list(State(api): State<Api>) -> OpenAiResult<Json<ModelList>> {
    let local = LocalModels::new(api.node.repo().path());
    let records = tokio::task::spawn_blocking(move || local.list())
        .await
        .map_err(OpenAiError::server)?
        .map_err(OpenAiError::server)?;
    let node = &api.node;
    let server = node.infer_server();
    let ours = node.peer_id().to_string();
    // By name; a later import of a name replaces an earlier one, as `resolve` picks.
    let mut by_name: BTreeMap<String, (u64, Model)> = BTreeMap::new();
    for record in records {
        let newer = by_name
            .get(&record.name)
            .is_none_or(|(at, _)| record.imported_at >= *at);
        if newer {
            let model = Model {
                id: record.name.clone(),
                object: "model",
                created: record.imported_at,
                owned_by: ours.clone(),
                task: record.task.clone(),
                weights: record.root.to_string(),
                version: record.version.clone(),
                serving_here: server.is_serving(&record.root),
            };
            by_name.insert(record.name, (record.imported_at, model));
        }
    }
    // Newest first, so the first announcement of a name is the one it resolves to.
    for announced in node.directory().list(None) {
        let body = &announced.manifest.body;
        if by_name.contains_key(&body.name) || !node.trusts(&body.name, &announced.publisher) {
            continue;
        }
        let model = Model {
            id: body.name.clone(),
            object: "model",
            created: body.created_at,
            owned_by: announced.publisher.to_string(),
            task: Some(body.task.clone()),
            weights: body.weights.to_string(),
            version: body.version.clone(),
            serving_here: server.is_serving(&body.weights),
        };
        by_name.insert(body.name.clone(), (body.created_at, model));
    }
    let mut data: Vec<Model> = by_name.into_values().map(|(_, model)| model).collect();
    for (root, _) in server.served() {
        let weights = root.to_string();
        if data.iter().any(|m| m.weights == weights) {
            continue;
        }
        data.push(Model {
            id: weights.clone(),
            object: "model",
            created: 0,
            owned_by: ours.clone(),
            task: server.kind(&root).map(|kind| kind.task().to_owned()),
            weights,
            version: String::new(),
            serving_here: true,
        });
    }
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}
