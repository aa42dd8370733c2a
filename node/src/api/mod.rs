//! HTTP RPC API with Kubo's paths, parameter names and JSON shapes (`/api/v0/...`),
//! so Kubo's RPC clients work. The only module that knows HTTP and JSON; every
//! endpoint calls the same [`Node`] methods as the CLI.
//!
//! Kubo answers RPC calls to POST only (`/api/v0/version` also answers GET here, so a
//! plain health probe works). Errors are `{"Message", "Code", "Type"}` with a 4xx/5xx
//! status, including axum's own rejections (bad JSON, too large a body), which are
//! rewritten into that shape: bad input is a 400, never a 500.
//!
//! Web pages are kept out ([`origin`]), request bodies are bounded per route (uploads
//! may be large, JSON bodies may not) and the server limits connections and stalled
//! clients ([`crate::http_server`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, Multipart, Query, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cid::{Cid, Version};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

mod add;
mod auth;
mod bitswap;
mod infer_fault;
mod metrics;
mod models;
mod openai;
mod origin;
pub mod types;

use crate::http_body::stream_from_blocking;
use crate::http_server::{self, Limits};
use crate::node::Node;
use crate::pin::PinType;
use crate::unixfs::{self, ImportOptions, reader};
use infer_fault::{InferFault, retry_after_secs};
use ipfs_accelerate_protocol::limits::{self, CHUNK_SIZE_LIMIT};

/// Upload chunks buffered between HTTP and the importing thread.
const BODY_CHANNEL_CAPACITY: usize = 16;
/// Largest upload accepted in one `add` request.
pub const ADD_BODY_LIMIT: usize = 64 * 1024 * 1024 * 1024;
/// Largest body of any route that takes no upload (JSON arguments).
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
/// Room for multipart framing around a one-block upload.
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// Most of an error answer's text read back to rewrite it as Kubo's error body.
const REJECTION_TEXT_LIMIT: usize = 64 * 1024;

/// Kubo-style query parameters: `arg` may repeat.
type Params = Query<Vec<(String, String)>>;

#[derive(Clone)]
struct Api {
    node: Arc<Node>,
    shutdown: watch::Sender<bool>,
    /// How long a streamed answer waits on a client that does not read.
    write_timeout: Duration,
}

/// An error as Kubo's API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    /// Kubo's error body; a 503 also says when to try again.
    fn into_response(self) -> Response {
        let wait = retry_after_secs(&self.message);
        let body = types::ErrorBody {
            code: 0,
            message: self.message,
            r#type: "error".into(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, wait.into());
        }
        response
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

fn params<'a>(q: &'a [(String, String)], name: &str) -> impl Iterator<Item = &'a str> {
    q.iter()
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params(q, name).next()
}

fn flag(q: &[(String, String)], name: &str, default: bool) -> ApiResult<bool> {
    match param(q, name) {
        None => Ok(default),
        Some("" | "true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid {name}={other}: use true or false"
        ))),
    }
}

fn cid_arg(q: &[(String, String)]) -> ApiResult<Cid> {
    let (cid, path) = split_path_arg(q)?;
    if !path.is_empty() {
        return Err(ApiError::bad_request(format!(
            "this command takes a CID, not the path {cid}/{path}"
        )));
    }
    Ok(cid)
}

/// `arg` as `CID`, `CID/a/b` or `/ipfs/CID/a/b`: the root and the path under it.
fn split_path_arg(q: &[(String, String)]) -> ApiResult<(Cid, String)> {
    let arg =
        param(q, "arg").ok_or_else(|| ApiError::bad_request("argument \"arg\" is required"))?;
    let trimmed = arg.strip_prefix("/ipfs/").unwrap_or(arg);
    let (root, path) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let cid = Cid::try_from(root)
        .map_err(|e| ApiError::bad_request(format!("invalid CID {arg:?}: {e}")))?;
    Ok((cid, path.trim_matches('/').to_string()))
}

/// `arg` as an IPFS path, resolved to the CID it names (fetching on the way).
async fn path_arg(api: &Api, q: &[(String, String)]) -> ApiResult<Cid> {
    let (root, path) = split_path_arg(q)?;
    api.node.resolve(root, &path).await.map_err(|e| match e {
        crate::Error::NoLink { .. } => ApiError::bad_request(e.to_string()),
        _ => ApiError::internal(e),
    })
}

/// What each of the API's listeners takes from the repo's config.
struct Setup {
    api: Api,
    token: Option<Arc<str>>,
    /// Who may call, for the address listened on.
    policy: Arc<origin::Policy>,
    limits: Limits,
}

impl Setup {
    fn new(
        node: Arc<Node>,
        listener: &tokio::net::TcpListener,
        shutdown: watch::Sender<bool>,
    ) -> std::io::Result<Setup> {
        let config = node.repo().config().api.clone();
        let token = node
            .repo()
            .config()
            .network
            .api_token()
            .map(Arc::<str>::from);
        Ok(Setup {
            policy: Arc::new(origin::Policy::new(&config, listener.local_addr()?)),
            token,
            limits: Limits {
                max_connections: config.max_connections,
                header_timeout: config.header_timeout(),
                write_timeout: config.write_timeout(),
            },
            api: Api {
                node,
                shutdown,
                write_timeout: config.write_timeout(),
            },
        })
    }
}

/// Serves the API on `listener` until `/api/v0/shutdown` or `stop` fires.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
) -> std::io::Result<()> {
    let Setup {
        api,
        token,
        policy,
        limits,
    } = Setup::new(node, &listener, shutdown)?;
    let upload = || DefaultBodyLimit::max(ADD_BODY_LIMIT);
    let one_block = || DefaultBodyLimit::max(limits::BLOCK_SIZE_LIMIT + MULTIPART_OVERHEAD);
    let app = Router::new()
        .route("/api/v0/version", get(version).post(version))
        .route("/api/v0/id", post(id))
        .route("/api/v0/swarm/peers", post(swarm_peers))
        .route("/api/v0/swarm/connect", post(swarm_connect))
        .route("/api/v0/swarm/addrs", post(swarm_addrs))
        .route("/api/v0/swarm/addrs/local", post(swarm_addrs_local))
        .route("/api/v0/add", post(add::add).layer(upload()))
        .route("/api/v0/cat", post(cat))
        .route("/api/v0/get", post(get_tar))
        .route("/api/v0/bitswap/wantlist", post(bitswap::wantlist))
        .route("/api/v0/bitswap/stat", post(bitswap::stat))
        .route("/api/v0/block/get", post(block_get))
        .route("/api/v0/block/stat", post(block_stat))
        .route("/api/v0/pin/add", post(pin_add))
        .route("/api/v0/pin/rm", post(pin_rm))
        .route("/api/v0/pin/ls", post(pin_ls))
        .route("/api/v0/routing/findprovs", post(findprovs))
        .route("/api/v0/routing/provide", post(provide))
        .route("/api/v0/routing/findpeer", post(findpeer))
        .route("/api/v0/ls", post(ls))
        .route("/api/v0/block/put", post(block_put).layer(one_block()))
        .route("/api/v0/block/rm", post(block_rm))
        .route("/api/v0/repo/stat", post(repo_stat))
        .route("/api/v0/repo/gc", post(repo_gc))
        .route("/api/v0/repo/verify", post(repo_verify))
        .route("/api/v0/dag/export", post(dag_export))
        .route("/api/v0/dag/import", post(dag_import).layer(upload()))
        .route("/api/v0/pubsub/pub", post(pubsub_pub).layer(one_block()))
        .route("/api/v0/pubsub/sub", post(pubsub_sub))
        .route("/api/v0/pubsub/ls", post(pubsub_ls))
        .route("/api/v0/pubsub/peers", post(pubsub_peers))
        .route("/api/v0/shutdown", post(shutdown_handler))
        .route("/debug/metrics/prometheus", get(metrics::prometheus))
        .route(
            "/api/v0/accelerate/infer",
            post(models::infer).layer(DefaultBodyLimit::max(limits::INFER_REQUEST_LIMIT)),
        )
        .route("/api/v0/accelerate/model/import", post(models::import))
        .route("/api/v0/accelerate/model/publish", post(models::publish))
        .route("/api/v0/accelerate/model/serve", post(models::serve))
        .route("/api/v0/accelerate/model/pull", post(models::pull))
        .route("/api/v0/accelerate/model/ls", post(models::ls))
        .route("/api/v0/accelerate/model/info", post(models::info))
        .route("/api/v0/accelerate/model/discover", post(models::discover))
        .route(
            "/api/v0/accelerate/model/trust/add",
            post(models::trust_add),
        )
        .route("/api/v0/accelerate/model/trust/rm", post(models::trust_rm))
        .route("/api/v0/accelerate/model/trust/ls", post(models::trust_ls))
        .route("/api/v0/accelerate/providers", post(models::providers))
        .route("/api/v0/accelerate/network", post(network))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn(kubo_errors));
    let app = match &token {
        Some(token) => app.layer(axum::middleware::from_fn_with_state(
            Arc::clone(token),
            auth::require_token,
        )),
        None => app,
    };
    let app = app.merge(openai::router(token));
    // Outermost: a page is refused before anything else, and its preflight answered.
    let app = app
        .layer(axum::middleware::from_fn_with_state(policy, origin::guard))
        .with_state(api);
    http_server::serve(listener, app, limits, stop).await
}

/// Serves OpenAI's API alone (`/v1`) on `listener`, the address `network.openai`
/// names, until `stop` fires; the API's token and allowed origins apply.
pub async fn serve_openai(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // `/api/v0/shutdown` is not served here.
    let (shutdown, _) = watch::channel(false);
    let setup = Setup::new(node, &listener, shutdown)?;
    let app = openai::router(setup.token)
        .layer(axum::middleware::from_fn_with_state(
            setup.policy,
            origin::guard,
        ))
        .with_state(setup.api);
    http_server::serve(listener, app, setup.limits, stop).await
}

/// Rewrites axum's own error answers (a rejected JSON body, too large a body, an unknown
/// route) into Kubo's error body.
async fn kubo_errors(request: Request, next: Next) -> Response {
    match plain_rejection(next.run(request).await).await {
        Ok((status, message)) => ApiError { status, message }.into_response(),
        Err(response) => response,
    }
}

/// An error answer axum wrote itself (not JSON, which the handlers write), as its status
/// and text, for rewriting into an API's error body; a body the client got wrong is a
/// 400. Any other answer comes back as it is.
async fn plain_rejection(response: Response) -> Result<(StatusCode, String), Response> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return Err(response);
    }
    let text = axum::body::to_bytes(response.into_body(), REJECTION_TEXT_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let status = match status {
        StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    let message = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_string(),
        false => text,
    };
    Ok((status, message))
}

/// The answer for a failed inference, by [`InferFault`]: the caller's fault is a 400, a
/// busy model a 503 with `Retry-After`, anything else a 500.
pub(super) fn infer_error(error: impl std::fmt::Display) -> ApiError {
    let message = error.to_string();
    match InferFault::of(&message) {
        InferFault::Caller => ApiError::bad_request(message),
        InferFault::Busy => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
        },
        InferFault::Node => ApiError::internal(message),
    }
}

/// The address a listener bound to, for writing into the repo's `api` file.
pub fn local_addr(listener: &tokio::net::TcpListener) -> std::io::Result<SocketAddr> {
    listener.local_addr()
}

async fn version() -> Json<types::Version> {
    Json(types::Version {
        commit: String::new(),
        golang: String::new(),
        repo: "1".into(),
        system: format!("{}/{}", std::env::consts::ARCH, std::env::consts::OS),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn id(State(api): State<Api>) -> ApiResult<Json<types::Id>> {
    let identity = api.node.repo().identity();
    let addrs = api.node.addresses().await.map_err(ApiError::internal)?;
    let protocols = [
        ipfs_accelerate_protocol::bitswap::PROTOCOL_1_2_0,
        ipfs_accelerate_protocol::bitswap::PROTOCOL_1_1_0,
        ipfs_accelerate_protocol::bitswap::PROTOCOL_1_0_0,
        "/ipfs/id/1.0.0",
        "/ipfs/ping/1.0.0",
    ];
    Ok(Json(types::Id {
        addresses: Some(addrs.iter().map(|a| a.to_string()).collect()),
        agent_version: types::AGENT_VERSION.into(),
        id: identity.peer_id().to_string(),
        protocol_version: types::PROTOCOL_VERSION.into(),
        protocols: Some(protocols.map(str::to_owned).to_vec()),
        public_key: identity.public_key_base64(),
    }))
}

/// Reachability, relays, connections and the routing table (`doctor` reads it).
async fn network(State(api): State<Api>) -> ApiResult<Json<types::NetworkStatus>> {
    let status = api.node.p2p().network_status().await;
    Ok(Json(status.map_err(ApiError::internal)?.into()))
}

async fn swarm_peers(State(api): State<Api>) -> ApiResult<Json<types::SwarmPeers>> {
    let peers = api.node.p2p().peers().await.map_err(ApiError::internal)?;
    Ok(Json(peers.into()))
}

async fn swarm_connect(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::Strings>> {
    let mut strings = Vec::new();
    for arg in params(&q, "arg") {
        let addr = arg
            .parse()
            .map_err(|e| ApiError::bad_request(format!("invalid multiaddr {arg:?}: {e}")))?;
        let peer = api
            .node
            .p2p()
            .connect(addr)
            .await
            .map_err(ApiError::internal)?;
        strings.push(format!("connect {peer} success"));
    }
    if strings.is_empty() {
        return Err(ApiError::bad_request("argument \"address\" is required"));
    }
    Ok(Json(types::Strings { strings }))
}

/// Fewest links a file node may have (a tree of one link per node never ends).
const MIN_FILE_LINKS: usize = 2;

fn import_options(api: &Api, q: &[(String, String)]) -> ApiResult<ImportOptions> {
    let mut options = ImportOptions::from(&api.node.repo().config().import);
    if let Some(v) = param(q, "cid-version") {
        options.cid_version = match v {
            "0" => Version::V0,
            "1" => Version::V1,
            other => {
                return Err(ApiError::bad_request(format!(
                    "invalid cid-version {other}"
                )));
            }
        };
        options.raw_leaves = v == "1";
    }
    options.raw_leaves = flag(q, "raw-leaves", options.raw_leaves)?;
    if let Some(chunker) = param(q, "chunker") {
        options.chunk_size = chunker
            .strip_prefix("size-")
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..=CHUNK_SIZE_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unsupported chunker {chunker:?}: use size-N with N from 1 to {CHUNK_SIZE_LIMIT}"
                ))
            })?;
    }
    if let Some(links) = param(q, "max-file-links") {
        options.max_links = links
            .parse()
            .ok()
            .filter(|n| *n >= MIN_FILE_LINKS)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid max-file-links {links}: use a number of at least {MIN_FILE_LINKS}"
                ))
            })?;
    }
    options.pin = flag(q, "pin", true)?;
    Ok(options)
}

/// A blocking `Read` over chunks that an async task feeds through a channel. The feeder
/// ends with `None`; a channel closed without it (the request failed or was dropped)
/// reads as an error, so a cut-off upload is never imported as if it were whole.
struct ChannelReader {
    rx: mpsc::Receiver<Option<Bytes>>,
    current: Bytes,
    ended: bool,
}

/// Where upload chunks go: `Some(chunk)`, then `None` at the end.
type ChunkSender = mpsc::Sender<Option<Bytes>>;

impl ChannelReader {
    fn channel() -> (ChunkSender, ChannelReader) {
        let (tx, rx) = mpsc::channel(BODY_CHANNEL_CAPACITY);
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
            ended: false,
        };
        (tx, reader)
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() && !self.ended {
            match self.rx.blocking_recv() {
                Some(Some(chunk)) => self.current = chunk,
                Some(None) => self.ended = true,
                None => return Err(std::io::Error::other("the upload ended early")),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Sends a field's chunks and the end marker; false if the reader went away.
async fn pump_field(
    field: &mut axum::extract::multipart::Field<'_>,
    tx: &ChunkSender,
) -> ApiResult<bool> {
    while let Some(chunk) = field.chunk().await.map_err(upload_error)? {
        if tx.send(Some(chunk)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(tx.send(None).await.is_ok())
}

/// Streams one upload field into `consume`, which reads it as a blocking `Read` on a
/// blocking thread; the upload is never held whole in memory.
async fn consume_field<T, E>(
    field: &mut axum::extract::multipart::Field<'_>,
    consume: impl FnOnce(ChannelReader) -> Result<T, E> + Send + 'static,
) -> ApiResult<T>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (tx, reader) = ChannelReader::channel();
    let task = tokio::task::spawn_blocking(move || consume(reader));
    // On a failed read the sender drops unfinished, so the import fails too.
    pump_field(field, &tx).await?;
    drop(tx);
    task.await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// One JSON value per line, as Kubo streams results.
fn ndjson<T: Serialize>(lines: impl IntoIterator<Item = T>) -> Response {
    let mut body = Vec::new();
    for line in lines {
        body.extend(json_line(&line));
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// One JSON value per line as each comes from `lines`, until its senders are gone.
fn ndjson_stream<T: Serialize + Send + 'static>(
    lines: tokio::sync::mpsc::Receiver<T>,
    content_type: &'static str,
) -> Response {
    let body = futures::stream::unfold(lines, |mut lines| async move {
        let line = lines.recv().await?;
        Some((Ok::<_, std::io::Error>(json_line(&line)), lines))
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// `value` as one line of newline-delimited JSON. Bodies of [`types`] always serialize.
fn json_line(value: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The file's bytes, streamed as its blocks arrive in order (see
/// [`unixfs::reader`]): the first bytes go out once the first leaf is here.
async fn cat(State(api): State<Api>, Query(q): Params) -> ApiResult {
    let cid = path_arg(&api, &q).await?;
    let bitswap = api.node.bitswap().clone();
    // Fail before the 200 if it is not a file.
    let Some(size) = reader::file_size(&bitswap, cid)
        .await
        .map_err(ApiError::internal)?
    else {
        return Err(ApiError::internal(format!(
            "{cid} is a directory, not a file"
        )));
    };
    let mut read = reader::file_reader(bitswap, cid, 0..size);
    let runtime = tokio::runtime::Handle::current();
    let body = stream_from_blocking(api.write_timeout, move |out| {
        reader::write_file(&mut read, &runtime, &(0..size), out)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Kubo's `get`: the file or tree as a tar stream, entries named after the last
/// component of the argument, written as its blocks arrive in order (see
/// [`unixfs::reader`]): the first entries go out once the first blocks are here.
async fn get_tar(State(api): State<Api>, Query(q): Params) -> ApiResult {
    if flag(&q, "compress", false)? {
        return Err(ApiError::bad_request(
            "compressed output is not supported; fetch without compress",
        ));
    }
    let cid = path_arg(&api, &q).await?;
    let root_name = param(&q, "arg")
        .and_then(|arg| arg.trim_end_matches('/').rsplit('/').next())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| cid.to_string());
    let bitswap = api.node.bitswap().clone();
    let file_size = reader::file_size(&bitswap, cid)
        .await
        .map_err(ApiError::internal)?;
    let body = match file_size {
        Some(size) => {
            let mut read = reader::file_reader(bitswap, cid, 0..size);
            let runtime = tokio::runtime::Handle::current();
            stream_from_blocking(api.write_timeout, move |out| {
                unixfs::export::tar_file(&root_name, size, out, |out| {
                    Ok(reader::write_file(&mut read, &runtime, &(0..size), out)?)
                })
                .map_err(|e| e.to_string())
            })
        }
        None => {
            let mut read = reader::tree_reader(bitswap, cid);
            let runtime = tokio::runtime::Handle::current();
            stream_from_blocking(api.write_timeout, move |out| {
                reader::write_tar(&mut read, &runtime, &cid, &root_name, out)
                    .map_err(|e| e.to_string())
            })
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar"),
            (HeaderName::from_static("x-stream-output"), "1"),
        ],
        body,
    )
        .into_response())
}

async fn block_get(State(api): State<Api>, Query(q): Params) -> ApiResult {
    let cid = cid_arg(&q)?;
    let block = api
        .node
        .bitswap()
        .get(cid, crate::BLOCK_FETCH_TIMEOUT)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        block.data().clone(),
    )
        .into_response())
}

async fn block_stat(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<types::BlockStat>> {
    let cid = cid_arg(&q)?;
    let block = api
        .node
        .bitswap()
        .get(cid, crate::BLOCK_FETCH_TIMEOUT)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(types::BlockStat {
        key: cid.to_string(),
        size: block.len() as u64,
    }))
}

async fn pin_add(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<types::Pins>> {
    let cid = path_arg(&api, &q).await?;
    let recursive = flag(&q, "recursive", true)?;
    api.node
        .pin(cid, recursive)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(types::Pins::new([&cid])))
}

async fn pin_rm(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<types::Pins>> {
    let cid = cid_arg(&q)?;
    let store = api.node.store();
    tokio::task::spawn_blocking(move || store.pin_rm(&cid))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(types::Pins::new([&cid])))
}

async fn pin_ls(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<types::PinLs>> {
    let types = match param(&q, "type").unwrap_or("all") {
        "all" => vec![],
        "direct" => vec![PinType::Direct],
        "recursive" => vec![PinType::Recursive],
        "indirect" => vec![PinType::Indirect],
        other => return Err(ApiError::bad_request(format!("invalid type {other:?}"))),
    };
    let store = api.node.store();
    let pins = tokio::task::spawn_blocking(move || store.pin_ls(&types))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(pins.into_iter().collect()))
}

async fn findprovs(State(api): State<Api>, Query(q): Params) -> ApiResult {
    let cid = cid_arg(&q)?;
    let limit = param(&q, "num-providers")
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let providers = api
        .node
        .find_providers(cid, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(ndjson(providers.into_iter().map(|(peer, addrs)| {
        let found = peer_addrs(&peer, &addrs);
        types::RoutingEvent::peers(types::ROUTING_PROVIDER, Some(vec![found]))
    })))
}

async fn findpeer(State(api): State<Api>, Query(q): Params) -> ApiResult {
    let peer: libp2p::PeerId = param(&q, "arg")
        .ok_or_else(|| ApiError::bad_request("argument \"arg\" is required"))?
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid peer ID: {e}")))?;
    let addrs = api.node.find_peer(peer).await.map_err(ApiError::internal)?;
    let found = peer_addrs(&peer, &addrs);
    Ok(ndjson([types::RoutingEvent::peers(
        types::ROUTING_FINAL_PEER,
        Some(vec![found]),
    )]))
}

fn peer_addrs(peer: &libp2p::PeerId, addrs: &[libp2p::Multiaddr]) -> types::PeerAddrs {
    types::PeerAddrs {
        addrs: addrs.iter().map(|a| a.to_string()).collect(),
        id: peer.to_string(),
    }
}

async fn swarm_addrs(State(api): State<Api>) -> ApiResult<Json<types::SwarmAddrs>> {
    let peers = api.node.p2p().peers().await.map_err(ApiError::internal)?;
    let mut addrs = std::collections::BTreeMap::<_, Vec<_>>::new();
    for info in peers {
        let list = addrs.entry(info.peer.to_string()).or_default();
        list.push(info.addr.to_string());
    }
    Ok(Json(types::SwarmAddrs { addrs }))
}

async fn swarm_addrs_local(State(api): State<Api>) -> ApiResult<Json<types::Strings>> {
    let addrs = api.node.addresses().await.map_err(ApiError::internal)?;
    let strings = addrs.iter().map(|a| a.to_string()).collect();
    Ok(Json(types::Strings { strings }))
}

async fn provide(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<types::RoutingEvent>> {
    let cid = cid_arg(&q)?;
    let store = api.node.store();
    let present = tokio::task::spawn_blocking(move || store.has(&cid))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    if !present {
        return Err(ApiError::internal(format!(
            "block {cid} is not in the local repo; cannot provide it"
        )));
    }
    api.node.provide(cid).await;
    Ok(Json(types::RoutingEvent::peers(
        types::ROUTING_SENDING_QUERY,
        None,
    )))
}

/// Runs store work on a blocking thread, mapping both failure layers to 500s.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// A failed read of a multipart upload, as a 400 that names the cause: axum's own text
/// reads the same for a malformed, an oversized and a stalled body.
fn upload_error(error: MultipartError) -> ApiError {
    let mut message = String::from("reading upload");
    let mut cause: Option<&dyn std::error::Error> = Some(&error);
    while let Some(error) = cause {
        // Wrappers repeat the text of what they wrap.
        let text = error.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = error.source();
    }
    ApiError::bad_request(message)
}

/// Reads the first multipart field whole, refusing more than `limit` bytes.
async fn first_field(form: &mut Multipart, limit: usize) -> ApiResult<Vec<u8>> {
    match form.next_field().await.map_err(upload_error)? {
        Some(mut field) => field_bytes(&mut field, limit).await,
        None => Ok(Vec::new()),
    }
}

/// Reads a multipart field whole, refusing more than `limit` bytes.
async fn field_bytes(
    field: &mut axum::extract::multipart::Field<'_>,
    limit: usize,
) -> ApiResult<Vec<u8>> {
    let mut data = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(upload_error)? {
        data.extend_from_slice(&chunk);
        if data.len() > limit {
            return Err(ApiError::bad_request(format!(
                "upload is over the {limit}-byte limit"
            )));
        }
    }
    Ok(data)
}

async fn ls(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<types::Ls>> {
    let cid = path_arg(&api, &q).await?;
    api.node
        .bitswap()
        .get(cid, crate::BLOCK_FETCH_TIMEOUT)
        .await
        .map_err(ApiError::internal)?;
    let store = api.node.store();
    let entries = blocking(move || unixfs::ls(&store, &cid)).await?;
    Ok(Json(types::Ls::new(&cid, &entries)))
}

async fn block_put(
    State(api): State<Api>,
    Query(q): Params,
    mut form: Multipart,
) -> ApiResult<Json<types::BlockStat>> {
    use ipfs_accelerate_protocol::{Block, codec};
    let codec_name = param(&q, "cid-codec").unwrap_or("raw");
    let codec = codec::codec_from_name(codec_name)
        .ok_or_else(|| ApiError::bad_request(format!("unsupported cid-codec {codec_name:?}")))?;
    let hash_name = param(&q, "mhtype").unwrap_or("sha2-256");
    let hash = codec::hash_from_name(hash_name)
        .ok_or_else(|| ApiError::bad_request(format!("unsupported mhtype {hash_name:?}")))?;
    let limit = if flag(&q, "allow-big-block", false)? {
        limits::BLOCK_SIZE_LIMIT
    } else {
        limits::BLOCK_PUT_SOFT_LIMIT
    };
    let data = first_field(&mut form, limit).await?;
    let block = Block::from_data(Version::V1, codec, hash, data)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    block
        .links()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let pin = flag(&q, "pin", false)?;
    let (cid, size) = (*block.cid(), block.len());
    let store = api.node.store();
    blocking(move || {
        store.put_many(std::slice::from_ref(&block))?;
        if pin {
            store.pin_add(block.cid(), false)?;
        }
        Ok::<_, crate::store::Error>(())
    })
    .await?;
    Ok(Json(types::BlockStat {
        key: cid.to_string(),
        size: size as u64,
    }))
}

async fn block_rm(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<types::BlockRm>> {
    let cid = cid_arg(&q)?;
    let store = api.node.store();
    blocking(move || store.remove_block(&cid)).await?;
    Ok(Json(types::BlockRm {
        error: String::new(),
        hash: cid.to_string(),
    }))
}

async fn repo_stat(State(api): State<Api>) -> ApiResult<Json<types::RepoStat>> {
    let store = api.node.store();
    let stat = blocking(move || store.stat()).await?;
    Ok(Json(types::RepoStat {
        num_objects: stat.blocks,
        repo_path: api.node.repo().path().to_owned(),
        repo_size: stat.bytes,
        storage_max: api.node.repo().config().datastore.storage_max,
        version: types::REPO_VERSION.into(),
    }))
}

async fn repo_verify(State(api): State<Api>) -> ApiResult<Json<types::Verify>> {
    let store = api.node.store();
    let report = blocking(move || store.verify(|_| {})).await?;
    Ok(Json(types::Verify::from(&report)))
}

async fn repo_gc(State(api): State<Api>) -> ApiResult {
    let store = api.node.store();
    let report = blocking(move || store.gc()).await?;
    Ok(ndjson(
        report
            .removed
            .iter()
            .map(|&cid| types::GcRemoved { key: cid.into() }),
    ))
}

/// The DAG as a CAR, streamed as its blocks arrive in order (see [`unixfs::reader`]).
async fn dag_export(State(api): State<Api>, Query(q): Params) -> ApiResult {
    let cid = path_arg(&api, &q).await?;
    // Fail before the 200 if the root cannot be had.
    let bitswap = api.node.bitswap().clone();
    bitswap
        .get(cid, crate::BLOCK_FETCH_TIMEOUT)
        .await
        .map_err(ApiError::internal)?;
    let mut read = reader::dag_reader(bitswap, cid);
    let runtime = tokio::runtime::Handle::current();
    let body = stream_from_blocking(api.write_timeout, move |out| {
        reader::write_car(&mut read, &runtime, &cid, out)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    Ok(([(header::CONTENT_TYPE, "application/vnd.ipld.car")], body).into_response())
}

async fn dag_import(State(api): State<Api>, Query(q): Params, mut form: Multipart) -> ApiResult {
    let pin_roots = flag(&q, "pin-roots", true)?;
    let mut lines = Vec::new();
    while let Some(mut field) = form.next_field().await.map_err(upload_error)? {
        let store = api.node.store();
        let stats = consume_field(&mut field, move |reader| {
            crate::car::import(&store, reader, pin_roots, &mut |_| {})
        })
        .await?;
        for root in stats.roots {
            if pin_roots {
                api.node.provide_root(root).await;
            }
            lines.push(types::DagImported::root(root));
        }
    }
    Ok(ndjson(lines))
}

/// Kubo's RPC carries pubsub topics and data as multibase base64url (`u...`).
fn multibase_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    format!(
        "u{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn topic_arg(q: &[(String, String)]) -> ApiResult<String> {
    use base64::Engine;
    let arg =
        param(q, "arg").ok_or_else(|| ApiError::bad_request("argument \"topic\" is required"))?;
    let decoded = arg
        .strip_prefix('u')
        .and_then(|b| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b)
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "topic {arg:?} is not multibase (base64url, 'u' prefix) as Kubo's RPC requires"
            ))
        })?;
    Ok(decoded)
}

async fn pubsub_pub(
    State(api): State<Api>,
    Query(q): Params,
    mut form: Multipart,
) -> ApiResult<Json<types::Empty>> {
    let topic = topic_arg(&q)?;
    let data = first_field(&mut form, crate::p2p::GOSSIP_MESSAGE_LIMIT).await?;
    api.node
        .pubsub_publish(topic, data)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(types::Empty {}))
}

async fn pubsub_sub(State(api): State<Api>, Query(q): Params) -> ApiResult {
    let topic = topic_arg(&q)?;
    let subscription = api
        .node
        .pubsub_subscribe(topic)
        .await
        .map_err(ApiError::internal)?;
    // The stream ends (and the subscription drops) when the client goes away.
    let body = futures::stream::unfold(subscription, |mut sub| async move {
        let message = sub.next().await?;
        let line = types::PubsubMessage {
            data: multibase_encode(&message.data),
            from: message.from.map(|p| p.to_string()).unwrap_or_default(),
            seqno: multibase_encode(&message.seqno.unwrap_or_default().to_be_bytes()),
            topic_ids: vec![multibase_encode(message.topic.as_bytes())],
        };
        Some((Ok::<_, std::io::Error>(json_line(&line)), sub))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

async fn pubsub_ls(State(api): State<Api>) -> ApiResult<Json<types::Strings>> {
    let topics = api
        .node
        .p2p()
        .pubsub_topics()
        .await
        .map_err(ApiError::internal)?;
    let strings = topics
        .iter()
        .map(|t| multibase_encode(t.as_bytes()))
        .collect();
    Ok(Json(types::Strings { strings }))
}

async fn pubsub_peers(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<types::Strings>> {
    let topic = match param(&q, "arg") {
        Some(_) => Some(topic_arg(&q)?),
        None => None,
    };
    let peers = api
        .node
        .p2p()
        .pubsub_peers(topic)
        .await
        .map_err(ApiError::internal)?;
    let strings = peers.iter().map(|p| p.to_string()).collect();
    Ok(Json(types::Strings { strings }))
}

async fn shutdown_handler(State(api): State<Api>) -> StatusCode {
    let _ = api.shutdown.send(true);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_inference_is_answered_by_whose_fault_it_is() {
        let bad = infer_error("inference for bafy: bad input: ids and attention_mask differ");
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let large = infer_error("too large: 9000 rows is over the 256-row limit");
        assert_eq!(large.status, StatusCode::BAD_REQUEST);
        let failed = infer_error("inference for bafy: no provider answered");
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        let busy = infer_error("inference for bafy: every provider failed: p: busy: queue full");
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        let response = busy.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&infer_fault::BUSY_RETRY_AFTER_SECS.into())
        );
        let resting = crate::infer::CallError::Unusable {
            providers: 1,
            retry_in: Some(std::time::Duration::from_secs(25)),
        };
        let response = infer_error(format!("inference for bafy: {resting}")).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&25.into())
        );
    }
}
