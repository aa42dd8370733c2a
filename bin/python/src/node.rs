//! `Node`: a running peer in this process, and its operations as awaitables. Each
//! answers with the JSON body the daemon's API sends for the same operation.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cid::{Cid, Version};
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::engine::Placement;
use ipfs_accelerate_node::envelope::{self, Opener, Seal};
use ipfs_accelerate_node::infer::{DEFAULT_DEADLINE, ServeConfig};
use ipfs_accelerate_node::model_network::{InferCall, PublishMeta};
use ipfs_accelerate_node::models::{LocalModels, ModelRecord};
use ipfs_accelerate_node::node::NetworkOverrides;
use ipfs_accelerate_node::pin::PinType;
use ipfs_accelerate_node::profile::Profile;
use ipfs_accelerate_node::repo::{self, Repo};
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use ipfs_accelerate_node::{Node, NodeConfig, PeerId, api, gateway};
use ipfs_accelerate_protocol::infer::{ByteBuf, InferOptions, Inputs, Message, Task};
use ipfs_accelerate_protocol::limits::CHUNK_SIZE_LIMIT;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use tokio::sync::watch;

use crate::generation::PyGeneration;
use crate::pubsub::PySubscription;
use crate::seal::{DEFAULT_OPEN_LIMIT, Limited};
use crate::{Bytes, awaitable, bad_argument, failed, json_text, runtime};

/// Longest wait for the swarm's first listen address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `close` waits for the HTTP servers to stop.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the interpreter's exit waits for a node to stop.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `close` checks that the node's tasks let go of its store.
const RELEASE_POLL: Duration = Duration::from_millis(10);
/// Longest `close` waits for that.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Providers `find_providers` asks the DHT for, unless told.
const DEFAULT_PROVIDERS: usize = 20;

/// A whole peer running in this process: repo, swarm, Bitswap, models and inference.
/// Made by `await Node.start(...)`; `await node.close()` stops it and releases the repo.
#[pyclass(module = "ipfs_accelerate._native", name = "Node", frozen)]
#[derive(Debug)]
pub(crate) struct PyNode {
    /// `None` once closed.
    node: RwLock<Option<Arc<Node>>>,
    /// The HTTP servers started by `serve_http`, stopped by `close`.
    servers: Mutex<Servers>,
    peer_id: String,
    repo: PathBuf,
}

#[derive(Debug, Default)]
struct Servers {
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    api: Option<String>,
    gateway: Option<String>,
    /// Files written for the CLI (`api`, `gateway` in the repo), removed at close.
    files: Vec<PathBuf>,
}

/// What `start` opens and how.
#[derive(Debug)]
struct StartOptions {
    repo: Option<PathBuf>,
    init: bool,
    profile: Option<Profile>,
    listen: Vec<String>,
    bootstrap: Vec<String>,
    mdns: Option<bool>,
    gateways: Option<Vec<String>>,
    gateway_retries: Option<u32>,
    gateway_timeout_secs: Option<u64>,
    api_token: Option<String>,
}

async fn start_node(options: StartOptions) -> PyResult<PyNode> {
    let path = repo::resolve_path(options.repo.clone());
    let profile = options.profile;
    let init = options.init;
    let opened = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> Result<Repo, String> {
            match Repo::open(&path) {
                Err(repo::Error::NotInitialized(_)) if init => {
                    let mut config = NodeConfig::default();
                    profile.unwrap_or(Profile::Lan).apply(&mut config.network);
                    Repo::init(&path, config).map_err(|e| e.to_string())
                }
                Err(repo::Error::InUse { .. }) => Err(format!(
                    "the repo {} is in use by another process (a daemon?): talk to that daemon \
                     (local_node) or give this node a repo of its own",
                    path.display()
                )),
                other => other.map_err(|e| e.to_string()),
            }
        }
    })
    .await
    .map_err(failed)?;
    let mut repo = opened.map_err(failed)?;
    let network = &mut repo.config_mut().network;
    if let Some(gateways) = options.gateways {
        network.gateways = gateways;
    }
    if let Some(retries) = options.gateway_retries {
        network.gateways_retries = retries;
    }
    if let Some(secs) = options.gateway_timeout_secs {
        network.gateways_timeout_secs = secs.max(1);
    }
    if let Some(token) = options.api_token {
        network.api_token = Some(token);
    }
    let overrides = NetworkOverrides {
        listen: options.listen,
        bootstrap: options.bootstrap,
        no_mdns: options.mdns == Some(false),
        dht_protocol: None,
        profile,
    };
    let node = Node::start(repo, overrides, ServeConfig::default())
        .await
        .map_err(failed)?;
    if let Err(e) = node.p2p().wait_listening(LISTEN_TIMEOUT).await {
        node.shutdown().await;
        return Err(failed(format!("the swarm did not start listening: {e}")));
    }
    Ok(PyNode {
        peer_id: node.peer_id().to_string(),
        repo: path,
        node: RwLock::new(Some(Arc::new(node))),
        servers: Mutex::new(Servers::default()),
    })
}

fn parse_cid(text: &str) -> PyResult<Cid> {
    let trimmed = text.trim().trim_start_matches("/ipfs/");
    Cid::try_from(trimmed).map_err(|e| bad_argument(format!("invalid CID {text:?}: {e}")))
}

/// `CID`, `CID/a/b` or `/ipfs/CID/a/b`: the root and the path under it.
fn split_path(text: &str) -> PyResult<(Cid, String)> {
    let trimmed = text.trim().trim_start_matches("/ipfs/");
    let (root, path) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    Ok((parse_cid(root)?, path.trim_matches('/').to_owned()))
}

fn parse_placement(device: &str, precision: &str) -> PyResult<Placement> {
    let bad = |e: ipfs_accelerate_node::engine::EngineError| bad_argument(e.to_string());
    Placement::new(
        device.parse().map_err(bad)?,
        precision.parse().map_err(bad)?,
    )
    .map_err(bad)
}

fn parse_peer(text: &str) -> PyResult<PeerId> {
    text.trim()
        .parse()
        .map_err(|_| bad_argument(format!("{text:?} is not a peer id")))
}

/// Runs store work on a blocking thread.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> PyResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(failed)?
        .map_err(failed)
}

impl PyNode {
    /// The running node, or `Error` once closed.
    fn node(&self) -> PyResult<Arc<Node>> {
        self.node
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| crate::Error::new_err("this node is closed"))
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, Servers> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the HTTP servers, then the node; the repo is released once the last
    /// operation in flight ends.
    fn take_for_close(&self) -> (Option<Arc<Node>>, Servers) {
        let node = self.node.write().unwrap_or_else(|e| e.into_inner()).take();
        let servers = std::mem::take(&mut *self.servers());
        (node, servers)
    }
}

async fn close_node(node: Option<Arc<Node>>, mut servers: Servers) {
    if let Some(stop) = servers.stop.take() {
        let _ = stop.send(true);
    }
    for task in servers.tasks.drain(..) {
        let _ = tokio::time::timeout(SERVER_STOP_TIMEOUT, task).await;
    }
    for file in &servers.files {
        let _ = std::fs::remove_file(file);
    }
    if let Some(node) = node {
        node.shutdown().await;
        // The datastore closes when the last task holding the store ends; wait for it,
        // so the repo can be opened again as soon as `close` returns.
        let store = Arc::downgrade(&node.store());
        drop(node);
        let released = async {
            while store.strong_count() > 0 {
                tokio::time::sleep(RELEASE_POLL).await;
            }
        };
        if tokio::time::timeout(RELEASE_TIMEOUT, released)
            .await
            .is_err()
        {
            tracing::warn!("the node's tasks still hold its store; the repo stays open a while");
        }
    }
}

impl Drop for PyNode {
    fn drop(&mut self) {
        let (node, servers) = self.take_for_close();
        if (node.is_some() || servers.stop.is_some())
            && let Ok(runtime) = runtime()
        {
            runtime.spawn(close_node(node, servers));
        }
    }
}

/// A model named by CID or name, resolved as the API resolves it.
fn resolve_model(node: &Node, model: &str, any_publisher: bool) -> PyResult<Cid> {
    node.resolve_model_from(model, any_publisher)
        .map_err(|e| bad_argument(e.to_string()))
}

/// Options of a generation, from Python keyword arguments.
#[derive(Debug, Clone, Default)]
pub(crate) struct GenerateOptions {
    pub(crate) max_tokens: Option<u32>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) top_k: Option<u32>,
    pub(crate) repetition_penalty: Option<f32>,
    pub(crate) seed: Option<u64>,
    pub(crate) stop: Vec<String>,
}

/// The generation a `generate` call asks for: a prompt or chat messages.
fn generate_call(
    model: Cid,
    prompt: Option<String>,
    messages: Option<Vec<(String, String)>>,
    options: GenerateOptions,
    remote: bool,
    deadline: Duration,
) -> PyResult<InferCall> {
    let inputs = match (prompt, messages) {
        (Some(prompt), None) => Inputs::Prompt(prompt),
        (None, Some(messages)) => Inputs::Messages(
            messages
                .into_iter()
                .map(|(role, content)| Message { role, content })
                .collect(),
        ),
        _ => return Err(bad_argument("give either prompt or messages")),
    };
    Ok(InferCall {
        model,
        inputs,
        options: InferOptions {
            max_tokens: options.max_tokens,
            temperature: options.temperature,
            top_p: options.top_p,
            top_k: options.top_k,
            repetition_penalty: options.repetition_penalty,
            seed: options.seed,
            stop: options.stop,
            ..InferOptions::default()
        },
        remote,
        deadline,
    })
}

fn deadline(deadline_ms: Option<u64>) -> Duration {
    deadline_ms.map_or(DEFAULT_DEADLINE, Duration::from_millis)
}

#[pymethods]
impl PyNode {
    /// Opens the repo at `repo` (default: `$IPFS_ACCELERATE_PATH`, else
    /// `~/.ipfs-accelerate`; created when missing, unless `init=False`) and starts the
    /// peer on it. `profile` is `lan` (the default), `public` or `test`; `listen` and
    /// `bootstrap` are multiaddrs; `mdns=False` turns local discovery off; `gateways`
    /// are trustless HTTP gateways asked for blocks no peer delivers (every block
    /// verified), with `gateway_retries` rounds and `gateway_timeout_secs` per request;
    /// `api_token` is the bearer token the API served by `serve_http` requires.
    #[staticmethod]
    #[pyo3(signature = (
        repo = None, *, init = true, profile = None, listen = Vec::new(), bootstrap = Vec::new(),
        mdns = None, gateways = None, gateway_retries = None, gateway_timeout_secs = None,
        api_token = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn start<'py>(
        py: Python<'py>,
        repo: Option<PathBuf>,
        init: bool,
        profile: Option<String>,
        listen: Vec<String>,
        bootstrap: Vec<String>,
        mdns: Option<bool>,
        gateways: Option<Vec<String>>,
        gateway_retries: Option<u32>,
        gateway_timeout_secs: Option<u64>,
        api_token: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let profile = profile
            .map(|p| p.parse::<Profile>().map_err(bad_argument))
            .transpose()?;
        let options = StartOptions {
            repo,
            init,
            profile,
            listen,
            bootstrap,
            mdns,
            gateways,
            gateway_retries,
            gateway_timeout_secs,
            api_token,
        };
        awaitable(py, start_node(options))
    }

    /// This node's peer id.
    #[getter]
    fn peer_id(&self) -> String {
        self.peer_id.clone()
    }

    /// The repo directory this node holds.
    #[getter]
    fn repo(&self) -> PathBuf {
        self.repo.clone()
    }

    /// Whether `close` has run.
    #[getter]
    fn closed(&self) -> bool {
        self.node
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// The API's and the gateway's URLs, once `serve_http` started them.
    #[getter]
    fn http(&self) -> (Option<String>, Option<String>) {
        let servers = self.servers();
        (servers.api.clone(), servers.gateway.clone())
    }

    /// Kubo's `id`: peer id, public key, addresses, agent.
    fn id<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            let identity = node.repo().identity();
            let addrs = node.addresses().await.map_err(failed)?;
            json_text(&types::Id {
                addresses: Some(addrs.iter().map(ToString::to_string).collect()),
                agent_version: types::AGENT_VERSION.into(),
                id: identity.peer_id().to_string(),
                protocol_version: types::PROTOCOL_VERSION.into(),
                protocols: None,
                public_key: identity.public_key_base64(),
            })
        })
    }

    /// Serves the daemon's HTTP RPC API (Kubo's paths, `/api/v0/accelerate/...`, and
    /// OpenAI's `/v1`) on `api` and the gateway on `gateway` (`HOST:PORT`; port 0
    /// picks one), and writes the repo's `api` and `gateway` files so the CLI and
    /// Kubo's clients reach this node. Returns the URLs.
    #[pyo3(signature = (api = None, gateway = None))]
    fn serve_http<'py>(
        slf: Py<Self>,
        py: Python<'py>,
        api: Option<String>,
        gateway: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = slf.get().node()?;
        awaitable(py, async move {
            let this = slf.get();
            let stop = {
                let mut servers = this.servers();
                if (api.is_some() && servers.api.is_some())
                    || (gateway.is_some() && servers.gateway.is_some())
                {
                    return Err(crate::Error::new_err(
                        "this node already serves HTTP there; close it first",
                    ));
                }
                servers
                    .stop
                    .get_or_insert_with(|| watch::channel(false).0)
                    .clone()
            };
            let mut files = Vec::new();
            let mut started = Vec::new();
            let mut urls = (None, None);
            if let Some(addr) = api {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .map_err(|e| failed(format!("binding the API to {addr}: {e}")))?;
                let bound = listener.local_addr().map_err(failed)?;
                let file = Repo::api_file(node.repo().path());
                std::fs::write(&file, format!("/ip4/{}/tcp/{}", bound.ip(), bound.port()))
                    .map_err(|e| failed(format!("writing {}: {e}", file.display())))?;
                files.push(file);
                let (node, rx, tx) = (node.clone(), stop.subscribe(), stop.clone());
                started.push(tokio::spawn(async move {
                    let _ = api::serve(node, listener, rx, tx).await;
                }));
                urls.0 = Some(format!("http://{bound}"));
            }
            if let Some(addr) = gateway {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .map_err(|e| failed(format!("binding the gateway to {addr}: {e}")))?;
                let bound = listener.local_addr().map_err(failed)?;
                let url = format!("http://{bound}");
                let file = Repo::gateway_file(node.repo().path());
                std::fs::write(&file, &url)
                    .map_err(|e| failed(format!("writing {}: {e}", file.display())))?;
                files.push(file);
                let (node, rx) = (node.clone(), stop.subscribe());
                started.push(tokio::spawn(async move {
                    let _ = gateway::serve(node, listener, rx).await;
                }));
                urls.1 = Some(url);
            }
            let mut servers = this.servers();
            servers.tasks.extend(started);
            servers.files.extend(files);
            if urls.0.is_some() {
                servers.api = urls.0.clone();
            }
            if urls.1.is_some() {
                servers.gateway = urls.1.clone();
            }
            Ok(urls)
        })
    }

    /// Adds `data` as a UnixFS file (CIDv1, raw leaves by default, as `add`), pinned
    /// unless `pin=False`, compressed and/or encrypted first when asked (`encrypt`:
    /// to this node; `encrypt_to`: peer ids or `age1...` recipients). Returns `add`'s
    /// JSON line.
    #[pyo3(signature = (
        data, *, pin = true, cid_version = None, raw_leaves = None, chunk_size = None,
        encrypt = false, encrypt_to = Vec::new(), compress = false, name = String::new(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn add<'py>(
        &self,
        py: Python<'py>,
        data: PyBackedBytes,
        pin: bool,
        cid_version: Option<u8>,
        raw_leaves: Option<bool>,
        chunk_size: Option<usize>,
        encrypt: bool,
        encrypt_to: Vec<String>,
        compress: bool,
        name: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let options = import_options(
            &node,
            pin,
            cid_version,
            raw_leaves,
            chunk_size,
            encrypt,
            &encrypt_to,
            compress,
        )?;
        awaitable(py, async move {
            let store = node.store();
            let pinned = options.pin;
            // The import seals the bytes itself (`options.seal`).
            let added = blocking(move || {
                unixfs::add_reader(
                    &store,
                    std::io::Cursor::new(&data[..]),
                    &name,
                    &options,
                    &mut |_| {},
                )
            })
            .await?;
            if pinned {
                node.provide_root(added.cid).await;
            }
            json_text(&types::Added::from(&added))
        })
    }

    /// Adds a file or a directory tree from disk, as `add -r PATH`. Returns every
    /// entry's JSON line, the root last.
    #[pyo3(signature = (
        path, *, pin = true, cid_version = None, raw_leaves = None, chunk_size = None,
        hidden = false, encrypt = false, encrypt_to = Vec::new(), compress = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn add_path<'py>(
        &self,
        py: Python<'py>,
        path: PathBuf,
        pin: bool,
        cid_version: Option<u8>,
        raw_leaves: Option<bool>,
        chunk_size: Option<usize>,
        hidden: bool,
        encrypt: bool,
        encrypt_to: Vec<String>,
        compress: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let mut options = import_options(
            &node,
            pin,
            cid_version,
            raw_leaves,
            chunk_size,
            encrypt,
            &encrypt_to,
            compress,
        )?;
        options.hidden = hidden;
        awaitable(py, async move {
            let store = node.store();
            let pinned = options.pin;
            let (root, entries) = blocking(move || {
                let mut entries = Vec::new();
                let root = unixfs::add_path(
                    &store,
                    &path,
                    &options,
                    &mut |entry| entries.push(types::Added::from(entry)),
                    &mut |_| {},
                )?;
                Ok::<_, unixfs::Error>((root, entries))
            })
            .await?;
            if pinned {
                node.provide_root(root.cid).await;
            }
            json_text(&entries)
        })
    }

    /// The bytes of the file at `path` (`CID`, `CID/a/b` or `/ipfs/CID/...`), fetched
    /// from peers when not here; sealed content opened with this node's key unless
    /// `raw=True`. More than `max_size` bytes is an error: read big files with `get`.
    #[pyo3(signature = (path, *, raw = false, max_size = DEFAULT_OPEN_LIMIT))]
    fn cat<'py>(
        &self,
        py: Python<'py>,
        path: String,
        raw: bool,
        max_size: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let (root, sub) = split_path(&path)?;
        awaitable(py, async move {
            let cid = node.resolve(root, &sub).await.map_err(failed)?;
            node.fetch(cid).await.map_err(failed)?;
            let store = node.store();
            let opener = opener(&node, raw);
            let bytes = blocking(move || {
                let size = unixfs::file_size(&store, &cid)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{cid} is a directory, not a file; use get"))?;
                if !raw && size > max_size.saturating_mul(2).saturating_add(1 << 20) {
                    // Sealing adds a little; anything far over the limit is refused early.
                    return Err(format!(
                        "{cid} is {size} bytes, over max_size ({max_size}); read it with get()"
                    ));
                }
                if raw && size > max_size {
                    return Err(format!(
                        "{cid} is {size} bytes, over max_size ({max_size}); read it with get()"
                    ));
                }
                let mut out = opener.writer(Limited::with_capacity(max_size, size));
                unixfs::cat(&store, &cid, &mut out, &mut |_| {}).map_err(|e| e.to_string())?;
                Ok(out.finish().map_err(|e| e.to_string())?.into_inner())
            })
            .await?;
            Ok(Bytes(bytes))
        })
    }

    /// Writes the file or tree at `path` to `target` (which must not exist), as `get`.
    #[pyo3(signature = (path, target, *, raw = false))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        path: String,
        target: PathBuf,
        raw: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let (root, sub) = split_path(&path)?;
        awaitable(py, async move {
            if target.symlink_metadata().is_ok() {
                return Err(bad_argument(format!(
                    "{} already exists; choose another target",
                    target.display()
                )));
            }
            let cid = node.resolve(root, &sub).await.map_err(failed)?;
            node.fetch(cid).await.map_err(failed)?;
            let store = node.store();
            let opener = opener(&node, raw);
            blocking(move || {
                let result = unixfs::get(&store, &cid, &target, &opener, &mut |_| {});
                if result.is_err() && target.symlink_metadata().is_ok() {
                    let _ = match target.is_dir() {
                        true => std::fs::remove_dir_all(&target),
                        false => std::fs::remove_file(&target),
                    };
                }
                result.map(|()| target.display().to_string())
            })
            .await
        })
    }

    /// Imports a CAR file, every block hashed against its CID; pins its roots (each
    /// root's DAG must then be complete) unless `pin_roots=False`, which leaves the
    /// blocks as cache. Returns the roots.
    #[pyo3(signature = (car, *, pin_roots = true))]
    fn dag_import<'py>(
        &self,
        py: Python<'py>,
        car: PyBackedBytes,
        pin_roots: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            let store = node.store();
            let stats = blocking(move || {
                ipfs_accelerate_node::car::import(
                    &store,
                    std::io::Cursor::new(&car[..]),
                    pin_roots,
                    &mut |_| {},
                )
            })
            .await?;
            if pin_roots {
                for root in &stats.roots {
                    node.provide_root(*root).await;
                }
            }
            Ok(stats
                .roots
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>())
        })
    }

    /// Fetches the DAG (all of it unless `recursive=False`), pins it and provides it.
    #[pyo3(signature = (path, *, recursive = true))]
    fn pin_add<'py>(
        &self,
        py: Python<'py>,
        path: String,
        recursive: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let (root, sub) = split_path(&path)?;
        awaitable(py, async move {
            let cid = node.resolve(root, &sub).await.map_err(failed)?;
            node.pin(cid, recursive).await.map_err(failed)?;
            json_text(&types::Pins::new([&cid]))
        })
    }

    /// Unpins `cid`; its blocks become cache.
    fn pin_rm<'py>(&self, py: Python<'py>, cid: String) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let cid = parse_cid(&cid)?;
        awaitable(py, async move {
            let store = node.store();
            blocking(move || store.pin_rm(&cid)).await?;
            json_text(&types::Pins::new([&cid]))
        })
    }

    /// Pins by type: `all`, `direct`, `recursive` or `indirect`.
    #[pyo3(signature = (r#type = "all".to_owned()))]
    fn pin_ls<'py>(&self, py: Python<'py>, r#type: String) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let types = match r#type.as_str() {
            "all" => vec![],
            "direct" => vec![PinType::Direct],
            "recursive" => vec![PinType::Recursive],
            "indirect" => vec![PinType::Indirect],
            other => {
                return Err(bad_argument(format!(
                    "invalid pin type {other:?}: use all, direct, recursive or indirect"
                )));
            }
        };
        awaitable(py, async move {
            let store = node.store();
            let pins = blocking(move || store.pin_ls(&types)).await?;
            json_text(&pins.into_iter().collect::<types::PinLs>())
        })
    }

    /// Makes the whole DAG under `cid` local (fetching what is missing), then reads
    /// every block back and hashes it against its CID. Returns
    /// `{"Cid", "Blocks", "Bytes"}`; a missing or corrupt block is an `Error`.
    fn verify<'py>(&self, py: Python<'py>, cid: String) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let (root, sub) = split_path(&cid)?;
        awaitable(py, async move {
            let cid = node.resolve(root, &sub).await.map_err(failed)?;
            node.fetch(cid).await.map_err(failed)?;
            let store = node.store();
            let (blocks, bytes) = blocking(move || {
                let (mut blocks, mut bytes) = (0u64, 0u64);
                let mut seen = HashSet::new();
                let mut queue = VecDeque::from([cid]);
                while let Some(next) = queue.pop_front() {
                    if !seen.insert(next) {
                        continue;
                    }
                    // `get` hashes the block against its CID.
                    let block = store.get(&next)?;
                    blocks += 1;
                    bytes += block.len() as u64;
                    queue.extend(store.links(&next)?);
                }
                Ok::<_, ipfs_accelerate_node::store::Error>((blocks, bytes))
            })
            .await?;
            json_text(&serde_json::json!({
                "Cid": cid.to_string(),
                "Blocks": blocks,
                "Bytes": bytes,
            }))
        })
    }

    /// Imports a model folder (Hugging Face layout) into the repo, pinned, and names
    /// it `name@version` here, as `model import`. Returns the record.
    #[pyo3(signature = (folder, *, name = None, version = "1".to_owned(), tags = Vec::new()))]
    fn import_model<'py>(
        &self,
        py: Python<'py>,
        folder: PathBuf,
        name: Option<String>,
        version: String,
        tags: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            let record = import_folder(&node, folder, name, version, tags).await?;
            json_text(&types::ImportedModel::from(&record))
        })
    }

    /// Publishes a model (a name, CID, or a folder, imported first): pinned, signed
    /// manifest, registry entry, DHT records, gossip announcements; served from here.
    /// Returns the manifest with the registry entry's CID.
    #[pyo3(signature = (
        model, *, name = None, version = "1".to_owned(), tags = Vec::new(),
        device = "cpu".to_owned(), precision = "f32".to_owned(), encrypt_to = Vec::new(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        model: String,
        name: Option<String>,
        version: String,
        tags: Vec<String>,
        device: String,
        precision: String,
        encrypt_to: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let placement = parse_placement(&device, &precision)?;
        let recipients = encrypt_to
            .iter()
            .map(|p| parse_peer(p))
            .collect::<PyResult<Vec<_>>>()?;
        awaitable(py, async move {
            let folder = PathBuf::from(&model);
            let (root, name) = if folder.is_dir() {
                let record =
                    import_folder(&node, folder, name, version.clone(), tags.clone()).await?;
                (record.root, record.name)
            } else {
                let root = resolve_model(&node, &model, false)?;
                let name = name.ok_or_else(|| {
                    bad_argument("name is required when publishing a model by CID or name")
                })?;
                (root, name)
            };
            let meta = PublishMeta {
                name,
                version,
                tags: tags.into_iter().filter(|t| !t.is_empty()).collect(),
                recipients,
            };
            let published = node
                .publish_model(root, meta, placement)
                .await
                .map_err(failed)?;
            let mut answer = types::Manifest::new(&published.manifest, &published.manifest_cid);
            answer.registry = Some(published.registry.to_string());
            json_text(&answer)
        })
    }

    /// Serves inference for a model in the repo to peers (and local calls).
    #[pyo3(signature = (model, *, device = "cpu".to_owned(), precision = "f32".to_owned()))]
    fn serve<'py>(
        &self,
        py: Python<'py>,
        model: String,
        device: String,
        precision: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let placement = parse_placement(&device, &precision)?;
        awaitable(py, async move {
            let root = resolve_model(&node, &model, false)?;
            node.serve_model(root, placement).await.map_err(failed)?;
            json_text(&types::Serving {
                serving: root.to_string(),
            })
        })
    }

    /// Pulls a model from every provider at once: verified, pinned, provided; served
    /// too with `serve=True`. Returns what came from which peer.
    #[pyo3(signature = (
        model, *, serve = false, device = "cpu".to_owned(), precision = "f32".to_owned(),
        any_publisher = false,
    ))]
    fn pull<'py>(
        &self,
        py: Python<'py>,
        model: String,
        serve: bool,
        device: String,
        precision: String,
        any_publisher: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let placement = serve
            .then(|| parse_placement(&device, &precision))
            .transpose()?;
        awaitable(py, async move {
            let root = resolve_model(&node, &model, any_publisher)?;
            let started = Instant::now();
            let before = node.bitswap().received_from();
            let mut fetched = (0, 0);
            node.pull_model(root, |blocks, bytes| fetched = (blocks, bytes))
                .await
                .map_err(failed)?;
            let sources = types::Received::since(&before, node.bitswap().received_from());
            if let Some(placement) = placement {
                node.serve_model(root, placement).await.map_err(failed)?;
            }
            json_text(&types::Pulled {
                blocks: fetched.0,
                bytes: fetched.1,
                root: root.to_string(),
                seconds: started.elapsed().as_secs_f64(),
                sources,
            })
        })
    }

    /// Models known here: imported or pulled, announced by peers, read from
    /// registries; filtered by `task` (`embed`, `generate`, `classify`) and `tag`.
    #[pyo3(signature = (*, task = None, tag = None))]
    fn models<'py>(
        &self,
        py: Python<'py>,
        task: Option<String>,
        tag: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            let local = LocalModels::new(node.repo().path());
            let records = blocking(move || local.list()).await?;
            let (task, tag) = (task.as_deref(), tag.as_deref());
            let server = node.infer_server();
            let mut models: Vec<_> = records
                .iter()
                .filter(|r| tag.is_none_or(|t| r.tags.iter().any(|x| x == t)))
                .filter(|r| task.is_none_or(|t| r.task.as_deref() == Some(t)))
                .map(|r| types::ModelEntry {
                    manifest: r.manifest.map(|m| m.to_string()),
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
                node.directory()
                    .list(tag)
                    .iter()
                    .filter(|a| task.is_none_or(|t| a.manifest.body.task == t))
                    .map(|a| types::ModelEntry::announced(a, &node)),
            );
            json_text(&types::ModelList { models })
        })
    }

    /// Reads a signed registry entry (fetched from peers when not here), checks it and
    /// every manifest it lists, and returns the versions it names.
    fn discover<'py>(&self, py: Python<'py>, registry: String) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let registry = parse_cid(&registry)?;
        awaitable(py, async move {
            let found = node.discover_registry(registry).await.map_err(failed)?;
            let models = found
                .iter()
                .map(|a| types::ModelEntry::announced(a, &node))
                .collect();
            json_text(&types::Discovered {
                models,
                registry: registry.to_string(),
            })
        })
    }

    /// The signed manifest of a model, when one was announced.
    fn model_info<'py>(&self, py: Python<'py>, model: String) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            let root = resolve_model(&node, &model, false)?;
            let announced = node
                .directory()
                .by_weights(&root)
                .into_iter()
                .max_by_key(|a| {
                    let trusted = node.trusts(&a.manifest.body.name, &a.publisher);
                    (trusted, a.manifest.body.created_at)
                });
            let serving_here = node.infer_server().is_serving(&root);
            json_text(&match &announced {
                Some(a) => types::ModelInfo::Announced(types::Manifest {
                    serving_here: Some(serving_here),
                    ..types::Manifest::new(&a.manifest, &a.manifest_cid)
                }),
                None => types::ModelInfo::Unknown {
                    serving_here,
                    weights: root.to_string(),
                },
            })
        })
    }

    /// Sentence embeddings of `texts`, or of token `ids` with their `attention_mask`:
    /// here when the model is served or stored here (unless `remote=True`), otherwise
    /// on the best peer serving it. `local_only=True` refuses to call peers. Returns
    /// `(answer_json, f32_le_bytes, rows, dim)`; the JSON is `accelerate/infer`'s
    /// without `embeddings`.
    #[pyo3(signature = (
        model, *, texts = None, ids = None, attention_mask = None, normalize = None,
        remote = false, local_only = false, any_publisher = false, deadline_ms = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        model: String,
        texts: Option<Vec<String>>,
        ids: Option<Vec<Vec<u32>>>,
        attention_mask: Option<Vec<Vec<u32>>>,
        normalize: Option<bool>,
        remote: bool,
        local_only: bool,
        any_publisher: bool,
        deadline_ms: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let inputs = match (texts, ids, attention_mask) {
            (Some(texts), None, None) => Inputs::Texts(texts),
            (None, Some(ids), Some(attention_mask)) => Inputs::Tokens {
                ids,
                attention_mask,
            },
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(bad_argument("ids need attention_mask, and back"));
            }
            _ => return Err(bad_argument("give texts, or ids with attention_mask")),
        };
        if remote && local_only {
            return Err(bad_argument("remote and local_only exclude each other"));
        }
        awaitable(py, async move {
            let model = resolve_model(&node, &model, any_publisher)?;
            if local_only {
                check_local(&node, model).await?;
            }
            let call = InferCall {
                model,
                inputs,
                options: InferOptions {
                    normalize,
                    ..InferOptions::default()
                },
                remote,
                deadline: deadline(deadline_ms),
            };
            if call.inputs.task() != Task::Embed {
                return Err(bad_argument("these inputs are not for embeddings"));
            }
            let answer = node.infer(call).await.map_err(failed)?;
            let tensor = &answer.output.output;
            let (rows, dim) = tensor
                .matrix()
                .map_err(|e| failed(format!("the provider sent a bad tensor: {e}")))?;
            let values = tensor
                .to_f32()
                .map_err(|e| failed(format!("the provider sent a bad tensor: {e}")))?;
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for value in values {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
            let meta = serde_json::json!({
                "attempts": types::Attempt::all(&answer),
                "device": answer.output.backend,
                "dim": dim,
                "local": answer.local,
                "model": model.to_string(),
                "provider": answer.provider.to_string(),
                "timings": types::InferTimings::of(&answer),
            });
            Ok((json_text(&meta)?, Bytes(bytes), rows, dim))
        })
    }

    /// Top `labels` labels of each image (JPEG or PNG bytes), here or on a peer.
    #[pyo3(signature = (
        model, images, *, labels = None, remote = false, local_only = false,
        any_publisher = false, deadline_ms = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn classify<'py>(
        &self,
        py: Python<'py>,
        model: String,
        images: Vec<PyBackedBytes>,
        labels: Option<u32>,
        remote: bool,
        local_only: bool,
        any_publisher: bool,
        deadline_ms: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let images = images.iter().map(|i| ByteBuf::from(i.to_vec())).collect();
        awaitable(py, async move {
            let model = resolve_model(&node, &model, any_publisher)?;
            if local_only {
                check_local(&node, model).await?;
            }
            let call = InferCall {
                model,
                inputs: Inputs::Images(images),
                options: InferOptions {
                    labels,
                    ..InferOptions::default()
                },
                remote,
                deadline: deadline(deadline_ms),
            };
            let answer = node.infer(call).await.map_err(failed)?;
            let classified = types::ClassifyAnswer::new(model.to_string(), &answer)
                .map_err(|e| failed(format!("the provider sent a bad tensor: {e}")))?;
            json_text(&classified)
        })
    }

    /// Generates text from `prompt`, or from chat `messages` (`(role, content)` pairs)
    /// through the model's chat template; options not given take the model's
    /// `generation_config.json`. Returns an async iterator of deltas
    /// (`(text, tokens)`); its `done` holds the end (`accelerate/infer`'s last line).
    #[pyo3(signature = (
        model, *, prompt = None, messages = None, max_tokens = None, temperature = None,
        top_p = None, top_k = None, repetition_penalty = None, seed = None,
        stop = Vec::new(), remote = false, local_only = false, any_publisher = false,
        deadline_ms = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        model: String,
        prompt: Option<String>,
        messages: Option<Vec<(String, String)>>,
        max_tokens: Option<u32>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        top_k: Option<u32>,
        repetition_penalty: Option<f32>,
        seed: Option<u64>,
        stop: Vec<String>,
        remote: bool,
        local_only: bool,
        any_publisher: bool,
        deadline_ms: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let options = GenerateOptions {
            max_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            stop,
        };
        awaitable(py, async move {
            let model = resolve_model(&node, &model, any_publisher)?;
            if local_only {
                check_local(&node, model).await?;
            }
            let call = generate_call(
                model,
                prompt,
                messages,
                options,
                remote,
                deadline(deadline_ms),
            )?;
            Ok(PyGeneration::start(node, call))
        })
    }

    /// Every peer serving `model`, each probed once: round trip, success rate, load.
    fn providers<'py>(&self, py: Python<'py>, model: String) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            let root = resolve_model(&node, &model, false)?;
            let providers = node.providers(root).await.map_err(failed)?;
            json_text(&types::Providers {
                model: root.to_string(),
                providers: providers.iter().map(types::Provider::from).collect(),
            })
        })
    }

    /// Providers of a CID on the DHT (`routing findprovs`): `[[peer, [addrs]], ...]`.
    #[pyo3(signature = (cid, *, limit = DEFAULT_PROVIDERS))]
    fn find_providers<'py>(
        &self,
        py: Python<'py>,
        cid: String,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let cid = parse_cid(&cid)?;
        awaitable(py, async move {
            let found = node.find_providers(cid, limit).await.map_err(failed)?;
            Ok(found
                .into_iter()
                .map(|(peer, addrs)| {
                    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                    (peer.to_string(), addrs)
                })
                .collect::<Vec<_>>())
        })
    }

    /// Connects to a multiaddr (with `/p2p/ID`, or not) or to a peer id (through the
    /// addresses known for it, else a DHT lookup). Returns the peer id connected to.
    fn connect<'py>(&self, py: Python<'py>, target: String) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let target = target.trim().to_owned();
        awaitable(py, async move {
            if let Ok(peer) = target.parse::<PeerId>() {
                if node
                    .p2p()
                    .connected_peer_ids()
                    .await
                    .map_err(failed)?
                    .contains(&peer)
                {
                    return Ok(peer.to_string());
                }
                let addrs = node.find_peer(peer).await.map_err(failed)?;
                let mut last = format!("no address is known for peer {peer}");
                for addr in addrs {
                    let text = addr.to_string();
                    let text = match text.contains("/p2p/") {
                        true => text,
                        false => format!("{text}/p2p/{peer}"),
                    };
                    let Ok(addr) = text.parse() else { continue };
                    match node.p2p().connect(addr).await {
                        Ok(connected) => return Ok(connected.to_string()),
                        Err(e) => last = e.to_string(),
                    }
                }
                return Err(failed(format!("connecting to {peer}: {last}")));
            }
            let addr = target.parse().map_err(|e| {
                bad_argument(format!(
                    "{target:?} is neither a peer id nor a multiaddr: {e}"
                ))
            })?;
            let peer = node.p2p().connect(addr).await.map_err(failed)?;
            Ok(peer.to_string())
        })
    }

    /// Connected peers: `swarm/peers`' JSON.
    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            let peers = node.p2p().peers().await.map_err(failed)?;
            json_text(&types::SwarmPeers::from(peers))
        })
    }

    /// Publishes `data` on a gossipsub topic (and to this node's own subscribers).
    fn pubsub_publish<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        data: PyBackedBytes,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        let data = data.to_vec();
        awaitable(py, async move {
            node.pubsub_publish(topic, data).await.map_err(failed)?;
            Ok(())
        })
    }

    /// Subscribes to a topic: an async iterator of `(topic, from, data, seqno)`.
    fn subscribe<'py>(&self, py: Python<'py>, topic: String) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            let subscription = node.pubsub_subscribe(topic).await.map_err(failed)?;
            Ok(PySubscription::new(subscription))
        })
    }

    /// Topics this node is subscribed to.
    fn pubsub_topics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let node = self.node()?;
        awaitable(py, async move {
            node.p2p().pubsub_topics().await.map_err(failed)
        })
    }

    /// Stops the HTTP servers and the peer; the repo is released.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (node, servers) = self.take_for_close();
        awaitable(py, async move {
            close_node(node, servers).await;
            Ok(())
        })
    }

    /// `close` without an event loop, for the interpreter's exit: blocks (without the
    /// GIL) until the node stops, at most 10 s.
    fn close_blocking(&self, py: Python<'_>) -> PyResult<()> {
        let (node, servers) = self.take_for_close();
        let runtime = runtime()?;
        py.detach(|| {
            runtime.block_on(async {
                let _ = tokio::time::timeout(EXIT_TIMEOUT, close_node(node, servers)).await;
            })
        });
        Ok(())
    }
}

/// The import options of `add` from Python arguments.
#[allow(clippy::too_many_arguments)]
fn import_options(
    node: &Node,
    pin: bool,
    cid_version: Option<u8>,
    raw_leaves: Option<bool>,
    chunk_size: Option<usize>,
    encrypt: bool,
    encrypt_to: &[String],
    compress: bool,
) -> PyResult<ImportOptions> {
    let mut options = ImportOptions::from(&node.repo().config().import);
    if let Some(version) = cid_version {
        options.cid_version = match version {
            0 => Version::V0,
            1 => Version::V1,
            other => return Err(bad_argument(format!("cid_version {other}: use 0 or 1"))),
        };
        options.raw_leaves = version == 1;
    }
    if let Some(raw) = raw_leaves {
        options.raw_leaves = raw;
    }
    if let Some(size) = chunk_size {
        if size == 0 || size > CHUNK_SIZE_LIMIT {
            return Err(bad_argument(format!(
                "chunk_size {size}: use 1 to {CHUNK_SIZE_LIMIT} bytes"
            )));
        }
        options.chunk_size = size;
    }
    options.pin = pin;
    let mut recipients = encrypt_to
        .iter()
        .map(|text| envelope::parse_recipient(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_argument(e.to_string()))?;
    if encrypt {
        recipients.push(envelope::peer_recipient(&node.peer_id()).map_err(failed)?);
    }
    options.seal = Seal {
        recipients,
        compress,
    };
    Ok(options)
}

/// How reads open sealed files: with this node's key, or not at all (`raw`).
fn opener(node: &Node, raw: bool) -> Opener {
    if raw {
        return Opener::raw();
    }
    Opener::with_key(envelope::node_identity(node.repo().identity().keypair()).ok())
}

/// Refuses a call that would have to go to a peer: the model must be served here or
/// wholly in the repo.
async fn check_local(node: &Node, model: Cid) -> PyResult<()> {
    if node.infer_server().is_serving(&model) || node.is_complete(model).await.map_err(failed)? {
        return Ok(());
    }
    Err(crate::Error::new_err(format!(
        "model {model} is not in this node's repo, and local_only forbids calling peers: \
         pull it first, or allow distributed inference"
    )))
}

/// `model import`: the folder added and pinned, and named here.
async fn import_folder(
    node: &Node,
    folder: PathBuf,
    name: Option<String>,
    version: String,
    tags: Vec<String>,
) -> PyResult<ModelRecord> {
    if !folder.join("config.json").is_file() {
        return Err(bad_argument(format!(
            "{} is not a model folder: it has no config.json (Hugging Face layout expected)",
            folder.display()
        )));
    }
    let name = match name {
        Some(name) => name,
        None => folder
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| bad_argument("the folder has no name to use; pass name="))?,
    };
    let store = node.store();
    let options = ImportOptions {
        pin: true,
        ..ImportOptions::from(&node.repo().config().import)
    };
    let local = LocalModels::new(node.repo().path());
    let opener = opener(node, false);
    let record = tokio::task::spawn_blocking(move || -> PyResult<ModelRecord> {
        let root = unixfs::add_path(&store, &folder, &options, &mut |_| {}, &mut |_| {})
            .map_err(|e| failed(format!("importing {}: {e}", folder.display())))?;
        local
            .import(&store, root.cid, (name, version, tags), &opener)
            .map_err(|e| match e.is_bad_input() {
                true => bad_argument(e.to_string()),
                false => failed(e),
            })
    })
    .await
    .map_err(failed)??;
    node.provide_root(record.root).await;
    Ok(record)
}
