//! Models on the network: the node's `ModelNetwork` serves models to peers,
//! publishes them (signed manifest, registry entry, DHT records, gossip), hears what
//! others announce, reads registry entries (`registry.rs`), names pulled models, and
//! runs inference here or on the best peer serving the model.
//!
//! Names resolve only to manifests by publishers trusted for them ([`crate::trust`]);
//! inference inputs go only to peers that announced the model or provide its service
//! key on the DHT, never to whoever happens to be connected.

mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cid::Cid;
use ipfs_accelerate_protocol::infer::{
    Delta, InferOptions, InferOutput, InferRequest, InferResponse, Inputs, Task, service_key,
};
use ipfs_accelerate_protocol::manifest::{
    MODELS_TOPIC, Manifest, ManifestBody, RECIPIENT_COUNT_LIMIT, model_topic,
};
use ipfs_accelerate_protocol::model_folder::{self, ModelKind};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::announce::{self, Announced, Directory, Inserted, Source};
use crate::bitswap::{Bitswap, provider_key};
use crate::engine::{
    self, BertConfig, DecoderConfig, DeviceKind, Model, ModelFiles, Placement, VitConfig,
};
use crate::envelope::{self, Opener, Seal};
use crate::error::{Error, Result};
use crate::infer::{self, Callers, Client, Server};
use crate::models::{LocalModels, ModelRecord};
use crate::p2p::{NodeEvent, P2p};
use crate::provider;
use crate::repo::Repo;
use crate::store::Store;
use crate::trust::{Observed, Trust};
use crate::unixfs::{self, ImportOptions};

/// How often our own announcements are repeated, for peers that joined since.
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);
/// Inbound requests being answered at once; more get `Busy` straight away.
const INBOUND_IN_FLIGHT: usize = 4096;
/// How long DHT providers of a model's service key are reused before asking again.
const PROVIDER_CACHE_TTL: Duration = Duration::from_secs(30);
/// Longest a DHT lookup for inference providers may hold up a call.
const PROVIDER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Providers asked for on the DHT.
const PROVIDER_LOOKUP_LIMIT: usize = 20;
/// Models kept loaded for local calls that are not served to peers.
const LOCAL_MODELS: usize = 4;

/// What `model publish` records besides the weights.
#[derive(Debug, Clone, Default)]
pub struct PublishMeta {
    pub name: String,
    pub version: String,
    pub tags: Vec<String>,
    /// Publish a private copy, encrypted to these peers (and to this node, which
    /// serves it); empty for a public model.
    pub recipients: Vec<PeerId>,
}

/// A published model.
#[derive(Debug, Clone)]
pub struct Published {
    pub manifest: Manifest,
    pub manifest_cid: Cid,
    /// The name's registry entry, listing this version and those published before.
    pub registry: Cid,
    /// When the announcement was handed to gossipsub, so a listener can time its
    /// journey from the send (the demo does).
    pub announced_at: Instant,
}

/// An inference call as the CLI and the HTTP API make it; the task follows from the
/// inputs ([`Inputs::task`]).
#[derive(Debug, Clone)]
pub struct InferCall {
    pub model: Cid,
    pub inputs: Inputs,
    pub options: InferOptions,
    /// Only peers, even when the model is served here.
    pub remote: bool,
    pub deadline: Duration,
}

/// The answer to an [`InferCall`], and who gave it.
#[derive(Debug, Clone)]
pub struct InferAnswer {
    pub output: InferOutput,
    /// The peer that answered (our own id when it ran here).
    pub provider: PeerId,
    pub local: bool,
    pub round_trip: Duration,
    pub attempts: Vec<(PeerId, Option<String>)>,
}

/// A peer serving a model, as `providers` shows it.
#[derive(Debug, Clone)]
pub struct ProviderInfo {
    pub peer: PeerId,
    /// Round-trip of a probe request, when it answered.
    pub round_trip: Option<Duration>,
    pub stats: infer::PeerStats,
    pub error: Option<String>,
}

/// A node's models on the network: the inference server and client, the directory of
/// announced models, who may speak for each name, and our own announcements. `Node`
/// holds one and offers its operations to the CLI and the HTTP API.
#[derive(Debug)]
pub(crate) struct ModelNetwork {
    p2p: P2p,
    bitswap: Bitswap,
    store: Arc<Store>,
    /// Signs our manifests and registry entries.
    keypair: Keypair,
    /// Opens private models' files with this node's key.
    opener: Opener,
    /// `[models] serve_private_to_anyone`.
    serve_private_to_anyone: bool,
    /// The names this repo knows (`models.json`): imported, pulled or published here.
    local_models: LocalModels,
    server: Arc<Server>,
    client: Client,
    directory: Arc<Directory>,
    /// Who may speak for each name.
    trust: Arc<Trust>,
    /// Manifests we published, re-announced on a timer.
    published: Arc<Mutex<Vec<Manifest>>>,
    /// DHT providers of a model's service key, with when we asked.
    dht_providers: Mutex<HashMap<Cid, (Instant, Vec<PeerId>)>>,
    /// Models run for local calls without being served to peers (a few at most).
    local: Server,
}

impl ModelNetwork {
    /// The models of a node on `repo` (its trust list and `[models]` config): joins the
    /// announcement topic and starts the tasks that hear announcements, answer
    /// inference requests and repeat our announcements.
    pub(crate) async fn start(
        repo: &Repo,
        p2p: P2p,
        bitswap: Bitswap,
        serve: infer::ServeConfig,
    ) -> Result<Self> {
        let config = &repo.config().models;
        let trust = Trust::open(repo.path(), config).map_err(|e| Error::Model(e.to_string()))?;
        let models = Self {
            client: Client::new(p2p.clone(), config.spot_check_share),
            p2p,
            bitswap,
            store: repo.shared_store(),
            keypair: repo.identity().keypair().clone(),
            opener: Opener::with_key(envelope::node_identity(repo.identity().keypair()).ok()),
            serve_private_to_anyone: config.serve_private_to_anyone,
            local_models: LocalModels::new(repo.path()),
            server: Arc::new(Server::new(serve)),
            directory: Arc::default(),
            trust: Arc::new(trust),
            published: Arc::default(),
            dht_providers: Mutex::default(),
            local: Server::new(infer::ServeConfig::default()),
        };
        models.spawn_tasks().await?;
        Ok(models)
    }

    async fn spawn_tasks(&self) -> Result<()> {
        let p2p = &self.p2p;
        p2p.pubsub_subscribe(MODELS_TOPIC.to_owned()).await?;
        let mut events = p2p.subscribe_events();
        let directory = Arc::clone(&self.directory);
        let trust = Arc::clone(&self.trust);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(NodeEvent::PubsubMessage {
                        topic, from, data, ..
                    }) if announce::is_model_topic(&topic) => {
                        // The swarm task verified it and its publisher (the source);
                        // only decode it here.
                        if let Ok(manifest) = Manifest::decode(&data)
                            && let Some(publisher) = from
                        {
                            remember(&directory, &trust, manifest, publisher, Source::Announced)
                                .await;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let server = Arc::clone(&self.server);
        let slots = Arc::new(Semaphore::new(INBOUND_IN_FLIGHT));
        p2p.serve_infer(Arc::new(move |peer, request, deltas| {
            let server = Arc::clone(&server);
            let slot = Arc::clone(&slots).try_acquire_owned();
            Box::pin(async move {
                match slot {
                    Ok(_slot) => server.handle(Some(peer), request, Some(deltas)).await,
                    Err(_) => busy(request.id),
                }
            })
        }))?;
        let (published, p2p) = (Arc::clone(&self.published), p2p.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ANNOUNCE_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let manifests = published.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for manifest in manifests {
                    if announce_manifest(&p2p, &manifest).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(())
    }

    /// Models announced on the network.
    pub(crate) fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The server answering peers' inference requests for the models served here.
    pub(crate) fn server(&self) -> &Server {
        &self.server
    }

    /// The client calling peers for inference (and its per-peer statistics).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Who may speak for each model name.
    pub(crate) fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Whether `publisher` may speak for `name` here: trusted for it, or ourselves.
    pub(crate) fn trusts(&self, name: &str, publisher: &PeerId) -> bool {
        *publisher == self.p2p.local_peer_id() || self.trust.is_trusted(name, publisher)
    }

    /// The root CID `model` names: a CID, a name this repo knows (`NAME[@VERSION]`), or
    /// a name announced by a publisher trusted for it; with `any_publisher` a name
    /// announced by anyone (the newest `created_at` wins).
    pub(crate) fn resolve(&self, model: &str, any_publisher: bool) -> Result<Cid> {
        match self.local_models.resolve(model) {
            Ok(cid) => Ok(cid),
            Err(crate::models::Error::Unknown(_)) => {
                let (name, version) = match model.split_once('@') {
                    Some((name, version)) => (name, Some(version)),
                    None => (model, None),
                };
                let found = self
                    .directory
                    .find_by(name, version, |p| any_publisher || self.trusts(name, p));
                if let Some(announced) = found {
                    return Ok(announced.manifest.body.weights);
                }
                match self.directory.find(name, version) {
                    Some(untrusted) => Err(Error::Model(format!(
                        "model {model:?} is announced only by publishers not trusted for the name (such as {}); trust one with `model trust add {name} PEER_ID`, pass --any-publisher, or give the CID ({})",
                        untrusted.publisher, untrusted.manifest.body.weights
                    ))),
                    None => Err(Error::Model(format!(
                        "no model named {model:?} here or announced by peers; give a CID, or `model pull` it"
                    ))),
                }
            }
            Err(e) => Err(Error::Model(e.to_string())),
        }
    }

    /// Serves inference for `root` to peers (and to local calls), and says so on the
    /// DHT under the model's service key. The model must be in the repo. A model served
    /// elsewhere (another device or precision) moves: loaded anew, it takes the old
    /// one's place, and calls already queued on the old one finish there.
    pub(crate) async fn serve(&self, root: Cid, placement: Placement) -> Result<()> {
        if self.server.placement(&root) != Some(placement) {
            let model = self.load(root, placement).await?;
            let callers = self.callers(root).await?;
            self.server
                .serve(root, model, callers)
                .map_err(|e| Error::Model(format!("serving {root}: {e}")))?;
        }
        provider::provide(&self.p2p, service_key(&root)).await;
        Ok(())
    }

    /// Publishes the model folder `root`, which the caller has pinned: a signed
    /// manifest stored and pinned, the name's registry entry rewritten to list it, the
    /// service key provided on the DHT, and announcements on gossip, repeated while the
    /// node runs. The model is served from here too.
    pub(crate) async fn publish(
        &self,
        root: Cid,
        meta: PublishMeta,
        placement: Placement,
    ) -> Result<Published> {
        let (store, opener) = (Arc::clone(&self.store), self.opener.clone());
        let (config, precision) = tokio::task::spawn_blocking(move || {
            let config = read_config(&store, &root, &opener)?;
            // What the checkpoint stores, whatever precision this node serves it in.
            let precision = ModelFiles::stored_precision(&store, &root, &opener)
                .map_err(|e| Error::Model(e.to_string()))?;
            Ok::<_, Error>((config, precision))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        let (weights, recipients) = match meta.recipients.is_empty() {
            true => (root, Vec::new()),
            false => self.private_copy(root, &meta.recipients).await?,
        };
        let mut record = ModelRecord::new(
            meta.name.clone(),
            meta.version.clone(),
            meta.tags.clone(),
            weights,
        )
        .map_err(|e| Error::Model(e.to_string()))?;
        let summary = ModelSummary::of(&config).map_err(|e| Error::Model(e.to_string()))?;
        record.task = Some(summary.kind.task().to_owned());
        let hardware = [DeviceKind::Cpu, DeviceKind::Ndarray, DeviceKind::Wgpu]
            .into_iter()
            .filter(|d| d.is_built())
            .map(|d| d.name().to_owned())
            .collect();
        let body = ManifestBody {
            name: meta.name,
            task: summary.kind.task().into(),
            version: meta.version,
            architecture: summary.architecture,
            parameters: summary.parameters,
            input_shape: summary.input_shape,
            output_shape: summary.output_shape,
            hardware,
            precision,
            tags: meta.tags,
            created_at: unix_now(),
            weights,
            publisher: String::new(),
            publisher_key: Vec::new(),
            recipients: recipients.iter().map(|peer| peer.to_base58()).collect(),
        };
        let manifest =
            Manifest::sign(body, &self.keypair).map_err(|e| Error::Model(e.to_string()))?;
        let block = manifest
            .to_block()
            .map_err(|e| Error::Model(e.to_string()))?;
        let manifest_cid = *block.cid();
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            store.put_many(&[block])?;
            store.pin_add(&manifest_cid, true)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        record.manifest = Some(manifest_cid);
        let models = self.local_models.clone();
        tokio::task::spawn_blocking(move || models.record(record))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(|e| Error::Model(e.to_string()))?;
        let registry = self
            .write_registry_entry(manifest.body.name.clone())
            .await?;
        // Remembered before serving: a private model's callers come from its manifest.
        self.remember(
            manifest.clone(),
            self.p2p.local_peer_id(),
            Source::Announced,
        )
        .await;
        self.serve(weights, placement).await?;
        provider::provide(&self.p2p, manifest_cid).await;
        let announced_at = Instant::now();
        announce_manifest(&self.p2p, &manifest).await?;
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(manifest.clone());
        Ok(Published {
            manifest,
            manifest_cid,
            registry,
            announced_at,
        })
    }

    /// A copy of the model folder `root` with every file encrypted to `recipients` and
    /// this node, stored and pinned; returns its root and the recipients it names.
    async fn private_copy(&self, root: Cid, recipients: &[PeerId]) -> Result<(Cid, Vec<PeerId>)> {
        let mut peers = recipients.to_vec();
        peers.push(self.p2p.local_peer_id());
        peers.sort();
        peers.dedup();
        // Refused before encrypting anything, as signing would refuse it after.
        if peers.len() > RECIPIENT_COUNT_LIMIT {
            return Err(Error::Model(format!(
                "{} recipients with this node, at most {RECIPIENT_COUNT_LIMIT} allowed",
                peers.len()
            )));
        }
        let seal = Seal {
            recipients: peers
                .iter()
                .map(envelope::peer_recipient)
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Model(e.to_string()))?,
            compress: false,
        };
        let store = Arc::clone(&self.store);
        let options = ImportOptions {
            seal,
            ..ImportOptions::default()
        };
        let copy = tokio::task::spawn_blocking(move || {
            unixfs::reseal_tree(&store, &root, "model", &options)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|e| Error::Model(format!("encrypting {root}: {e}")))?;
        Ok((copy.cid, peers))
    }

    /// Who may call `root` here: anyone for a public model; for a private one (its
    /// files encrypted), the recipients every signed manifest of it names, so a
    /// manifest by someone else cannot widen them; none when no manifest is known.
    async fn callers(&self, root: Cid) -> Result<Callers> {
        let store = Arc::clone(&self.store);
        let private = tokio::task::spawn_blocking(move || is_private(&store, &root))
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        if !private || self.serve_private_to_anyone {
            return Ok(Callers::Anyone);
        }
        let mut allowed: Option<HashSet<PeerId>> = None;
        for announced in self.directory.by_weights(&root) {
            let named: HashSet<PeerId> = announced
                .manifest
                .body
                .recipient_peers()
                .unwrap_or_default()
                .into_iter()
                .collect();
            allowed = Some(match allowed {
                None => named,
                Some(so_far) => so_far.intersection(&named).copied().collect(),
            });
        }
        let allowed = allowed.unwrap_or_default();
        if allowed.is_empty() {
            tracing::warn!(model = %root, "a private model with no known recipients: served to local calls only");
        }
        Ok(Callers::Only(allowed))
    }

    /// Records the announced name of `root`, just pulled, in this repo's names: only
    /// from a publisher trusted for the name, since a local name resolves without
    /// asking. Nothing is recorded when no trusted publisher announced it.
    pub(crate) async fn name_pulled(&self, root: Cid) {
        let Some(announced) = self
            .directory
            .by_weights(&root)
            .into_iter()
            .filter(|a| self.trusts(&a.manifest.body.name, &a.publisher))
            .max_by_key(|a| a.manifest.body.created_at)
        else {
            return;
        };
        let body = &announced.manifest.body;
        if let Ok(mut record) = ModelRecord::new(
            body.name.clone(),
            body.version.clone(),
            body.tags.clone(),
            root,
        ) {
            record.task = Some(body.task.clone());
            let models = self.local_models.clone();
            let _ = tokio::task::spawn_blocking(move || models.record(record)).await;
        }
    }

    /// Reads the registry entry `registry` (see [`registry::read`]) and adds its
    /// manifests to the directory; a version older than one its publisher announced is
    /// left out.
    pub(crate) async fn discover_registry(&self, registry: Cid) -> Result<Vec<Announced>> {
        let verified = registry::read(&self.bitswap, registry).await?;
        let publisher = verified.publisher;
        let mut found = Vec::with_capacity(verified.manifests.len());
        for (manifest, manifest_cid) in verified.manifests {
            let source = Source::Registry(registry);
            match self.remember(manifest.clone(), publisher, source).await {
                Inserted::New | Inserted::Refreshed => {
                    found.push(Announced::new(manifest, manifest_cid, publisher, source))
                }
                outcome => {
                    tracing::info!(%registry, version = %manifest.body.version, ?outcome, "registry: left a version out");
                }
            }
        }
        Ok(found)
    }

    /// Runs inference: here when the model is served or stored here (unless `remote`),
    /// otherwise on the best peer serving it, with hedging and failover (a generation
    /// fails over by resuming elsewhere). A generation's text goes to `deltas` as it
    /// comes; dropping their receiver stops it. `provider` is told who sends it.
    pub(crate) async fn infer(
        &self,
        call: InferCall,
        deltas: Option<mpsc::Sender<Delta>>,
        provider: Option<watch::Sender<Option<PeerId>>>,
    ) -> Result<InferAnswer> {
        let request = InferRequest {
            id: next_request_id(),
            model: call.model,
            task: call.inputs.task(),
            inputs: call.inputs,
            options: call.options,
            deadline_ms: u32::try_from(call.deadline.as_millis()).unwrap_or(u32::MAX),
        };
        if !call.remote
            && let Some(answer) = self
                .infer_here(request.clone(), deltas.clone(), provider.as_ref())
                .await?
        {
            return Ok(answer);
        }
        if request.task == Task::Generate {
            return self
                .generate_remote(request, call.deadline, deltas, provider.as_ref())
                .await;
        }
        let end = Instant::now() + call.deadline;
        let mut candidates = self.candidates(call.model, false).await;
        if candidates.is_empty() {
            // The cached DHT answer may be from before a provider appeared. Inputs go
            // only to providers: never to peers that merely happen to be connected.
            candidates = self.candidates(call.model, true).await;
        }
        for round in 0..2 {
            let left = end.saturating_duration_since(Instant::now());
            match self
                .client
                .call_checked(request.clone(), &candidates, left)
                .await
            {
                Ok(answer) => {
                    return Ok(InferAnswer {
                        output: answer.output,
                        provider: answer.provider,
                        local: false,
                        round_trip: answer.round_trip,
                        attempts: answer.attempts,
                    });
                }
                Err(error) => {
                    let last = round == 1
                        || matches!(
                            error,
                            infer::CallError::Refused { .. }
                                | infer::CallError::Deadline { .. }
                                | infer::CallError::NoProviders
                                | infer::CallError::Unusable { .. }
                        );
                    if last {
                        return Err(Error::Model(format!(
                            "inference for {}: {error}",
                            call.model
                        )));
                    }
                    // The providers we knew failed: ask the DHT again, without them.
                    tracing::debug!(%error, "infer: looking for other providers");
                    let failed = std::mem::take(&mut candidates);
                    candidates = self.candidates(call.model, true).await;
                    candidates.retain(|p| !failed.contains(p));
                    if candidates.is_empty() {
                        return Err(Error::Model(format!(
                            "inference for {}: {error}",
                            call.model
                        )));
                    }
                }
            }
        }
        Err(Error::Model(format!(
            "inference for {}: no provider answered",
            call.model
        )))
    }

    /// A generation on the best peer serving its model, resumed on the next when one
    /// fails.
    async fn generate_remote(
        &self,
        request: InferRequest,
        deadline: Duration,
        deltas: Option<mpsc::Sender<Delta>>,
        provider: Option<&watch::Sender<Option<PeerId>>>,
    ) -> Result<InferAnswer> {
        let model = request.model;
        let mut candidates = self.candidates(model, false).await;
        if candidates.is_empty() {
            candidates = self.candidates(model, true).await;
        }
        // Without a listener the text is dropped, but the generation still runs.
        let (deltas, _unheard) = match deltas {
            Some(deltas) => (deltas, None),
            None => {
                let (tx, rx) = mpsc::channel(1);
                (tx, Some(drain(rx)))
            }
        };
        let answer = self
            .client
            .generate(request, &candidates, deadline, &deltas, provider)
            .await
            .map_err(|error| Error::Model(format!("inference for {model}: {error}")))?;
        Ok(InferAnswer {
            output: answer.output,
            provider: answer.provider,
            local: false,
            round_trip: answer.round_trip,
            attempts: answer.attempts,
        })
    }

    /// Every peer serving `model` (the DHT asked afresh), each probed with one small
    /// request to measure its round-trip and learn its load.
    pub(crate) async fn providers(&self, model: Cid) -> Result<Vec<ProviderInfo>> {
        let candidates = self.candidates(model, true).await;
        let probes = candidates.into_iter().map(|peer| async move {
            let known = self.client.stats().remove(&peer);
            if let Some(stats) = known.filter(|s| s.distrusted.is_some()) {
                // Not asked again: it is not used any more.
                let error = stats
                    .distrusted
                    .as_ref()
                    .map(|why| format!("distrusted: {why}"));
                return ProviderInfo {
                    peer,
                    round_trip: None,
                    stats,
                    error,
                };
            }
            let request = InferRequest {
                id: next_request_id(),
                model,
                task: Task::Embed,
                inputs: Inputs::Texts(vec!["ping".into()]),
                options: InferOptions::default(),
                deadline_ms: 5000,
            };
            let request = self.probe_for(request);
            let answer = self
                .client
                .call(request, &[peer], Duration::from_secs(5))
                .await;
            let (round_trip, error) = match answer {
                Ok(answer) => (Some(answer.round_trip), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let stats = self.client.stats().remove(&peer).unwrap_or_default();
            ProviderInfo {
                peer,
                round_trip,
                stats,
                error,
            }
        });
        Ok(futures::future::join_all(probes).await)
    }

    /// Puts a verified manifest in the directory (see [`crate::announce::Directory`]),
    /// pinning its publisher for the name on first use.
    async fn remember(&self, manifest: Manifest, publisher: PeerId, source: Source) -> Inserted {
        remember(&self.directory, &self.trust, manifest, publisher, source).await
    }

    /// The probe `providers` sends, made to fit what the model does (as its manifest
    /// says): a one-token generation, or one tiny image.
    fn probe_for(&self, mut request: InferRequest) -> InferRequest {
        let task = self
            .directory
            .by_weights(&request.model)
            .into_iter()
            .map(|a| a.manifest.body.task)
            .next();
        match task.as_deref() {
            Some("generate") => {
                request.task = Task::Generate;
                request.inputs = Inputs::Prompt("ping".into());
                request.options.max_tokens = Some(1);
            }
            Some("classify") => {
                request.task = Task::Classify;
                request.inputs =
                    Inputs::Images(vec![ipfs_accelerate_protocol::infer::ByteBuf::from(
                        PROBE_PNG,
                    )]);
                request.options.labels = Some(1);
            }
            _ => {}
        }
        request
    }

    /// Loads the model under `root` (it must be here) onto `placement`.
    async fn load(&self, root: Cid, placement: Placement) -> Result<Model> {
        let (store, opener) = (Arc::clone(&self.store), self.opener.clone());
        let started = Instant::now();
        let model = tokio::task::spawn_blocking(move || {
            let files = ModelFiles::from_store(&store, &root, &opener)
                .map_err(engine::EngineError::from)?;
            Model::load(files, placement)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|e| Error::Model(e.to_string()))?;
        tracing::info!(model = %root, %placement, elapsed = ?started.elapsed(), "models: loaded");
        Ok(model)
    }

    /// Writes, pins and provides the registry entry of `name` as published from here,
    /// and returns its CID.
    async fn write_registry_entry(&self, name: String) -> Result<Cid> {
        let (models, store) = (self.local_models.clone(), Arc::clone(&self.store));
        let keypair = self.keypair.clone();
        let cid =
            tokio::task::spawn_blocking(move || registry::write(&models, &store, &keypair, &name))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
        provider::provide(&self.p2p, cid).await;
        Ok(cid)
    }

    /// Peers that serve `model`: publishers that announced it and DHT providers of its
    /// service key (looked up at most every 30 s unless `fresh`), without ourselves.
    async fn candidates(&self, model: Cid, fresh: bool) -> Vec<PeerId> {
        let me = self.p2p.local_peer_id();
        let mut candidates: Vec<PeerId> = self
            .directory
            .by_weights(&model)
            .into_iter()
            .map(|a| a.publisher)
            .collect();
        let cached = self
            .dht_providers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&model)
            .filter(|(at, _)| !fresh && at.elapsed() < PROVIDER_CACHE_TTL)
            .map(|(_, peers)| peers.clone());
        let from_dht = match cached {
            Some(peers) => peers,
            None => {
                let key = provider_key(&service_key(&model));
                let found = tokio::time::timeout(
                    PROVIDER_LOOKUP_TIMEOUT,
                    self.p2p.find_providers(key, PROVIDER_LOOKUP_LIMIT),
                )
                .await;
                let found = match found {
                    Ok(Ok(found)) => found,
                    _ => Vec::new(),
                };
                // Teach the swarm their addresses (the DHT's routing table may not
                // hold them), so that the request can dial them.
                for (peer, addrs) in found.iter().filter(|(p, a)| *p != me && !a.is_empty()) {
                    let (p2p, peer, addrs) = (self.p2p.clone(), *peer, addrs.clone());
                    tokio::spawn(async move { p2p.dial_peer(peer, addrs).await });
                }
                let peers: Vec<PeerId> = found.into_iter().map(|(peer, _)| peer).collect();
                self.dht_providers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(model, (Instant::now(), peers.clone()));
                peers
            }
        };
        candidates.extend(from_dht);
        candidates.retain(|p| *p != me);
        candidates.sort();
        candidates.dedup();
        candidates
    }

    /// Runs `request` on this machine if the model is served or stored here.
    async fn infer_here(
        &self,
        request: InferRequest,
        deltas: Option<mpsc::Sender<Delta>>,
        provider: Option<&watch::Sender<Option<PeerId>>>,
    ) -> Result<Option<InferAnswer>> {
        let started = Instant::now();
        let model = request.model;
        let here = || {
            if let Some(provider) = provider {
                provider.send_replace(Some(self.p2p.local_peer_id()));
            }
        };
        let response = if self.server.is_serving(&model) {
            here();
            self.server.handle(None, request, deltas).await
        } else if self.local.is_serving(&model) {
            here();
            self.local.handle(None, request, deltas).await
        } else {
            let store = Arc::clone(&self.store);
            let missing = tokio::task::spawn_blocking(move || store.first_missing_block(&model))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            if missing.is_some() {
                return Ok(None);
            }
            let engine = self.load(model, DeviceKind::Cpu.into()).await?;
            let local = &self.local;
            for (old, _) in local.served().into_iter().skip(LOCAL_MODELS - 1) {
                local.stop(&old);
            }
            local
                .serve(model, engine, Callers::Anyone)
                .map_err(|e| Error::Model(format!("loading {model}: {e}")))?;
            here();
            local.handle(None, request, deltas).await
        };
        match response {
            InferResponse::Ok(output) => Ok(Some(InferAnswer {
                output,
                provider: self.p2p.local_peer_id(),
                local: true,
                round_trip: started.elapsed(),
                attempts: Vec::new(),
            })),
            InferResponse::Err(error) => {
                Err(Error::Model(format!("{}: {}", error.code, error.message)))
            }
            InferResponse::Delta(_) => Err(Error::Model("a delta for an answer".into())),
        }
    }
}

/// A 1x1 PNG, the image `providers` probes an image classifier with.
const PROBE_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0xc9, 0xfe, 0x92, 0xef, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Reads and drops what `rx` gets, until its senders are gone.
async fn drain(mut rx: mpsc::Receiver<Delta>) {
    while rx.recv().await.is_some() {}
}

/// What a manifest says of a model folder, from its config.json.
struct ModelSummary {
    kind: ModelKind,
    architecture: String,
    parameters: u64,
    input_shape: Vec<i64>,
    output_shape: Vec<i64>,
}

impl ModelSummary {
    fn of(config: &[u8]) -> std::result::Result<Self, model_folder::FolderError> {
        let kind = model_folder::model_kind(config)?;
        let named = serde_json::from_slice::<serde_json::Value>(config)
            .ok()
            .and_then(|v| v["architectures"][0].as_str().map(str::to_owned));
        let (default, parameters, input_shape, output_shape) = match kind {
            ModelKind::Embed => {
                let c = BertConfig::parse(config)?;
                let out = vec![-1, c.hidden_size as i64];
                ("BertModel", c.parameter_count(), vec![-1, -1], out)
            }
            ModelKind::Generate => {
                let c = DecoderConfig::parse(config)?;
                let out = vec![-1, c.vocab_size as i64];
                (c.architecture.name(), c.parameter_count(), vec![-1], out)
            }
            ModelKind::Classify => {
                let c = VitConfig::parse(config)?;
                let [h, w] = c.image_size;
                let input = vec![-1, 3, h as i64, w as i64];
                let out = vec![-1, c.labels.len() as i64];
                ("ViTForImageClassification", c.parameter_count(), input, out)
            }
        };
        Ok(Self {
            kind,
            architecture: named.unwrap_or_else(|| default.to_owned()),
            parameters: parameters as u64,
            input_shape,
            output_shape,
        })
    }
}

/// Puts a verified manifest in the directory, pinning its publisher for the name if
/// nobody holds it yet (trust on first use, persisted off the async threads).
async fn remember(
    directory: &Directory,
    trust: &Arc<Trust>,
    manifest: Manifest,
    publisher: PeerId,
    source: Source,
) -> Inserted {
    let mut pinned = false;
    let (name, version) = (manifest.body.name.clone(), manifest.body.version.clone());
    let outcome = directory.insert_at(manifest, publisher, source, Instant::now(), |m| {
        pinned = trust.observe(&m.body.name, &publisher) == Observed::Pinned;
    });
    match outcome {
        Inserted::New => {
            tracing::info!(%name, %version, %publisher, pinned, "models: heard a manifest");
        }
        Inserted::Refreshed => {}
        dropped => {
            tracing::debug!(%name, %version, %publisher, ?dropped, "models: dropped a manifest")
        }
    }
    if pinned {
        let trust = Arc::clone(trust);
        match tokio::task::spawn_blocking(move || trust.persist()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "trust: could not write the trust list"),
            Err(error) => tracing::warn!(%error, "trust: the write task failed"),
        }
    }
    outcome
}

fn busy(id: u64) -> InferResponse {
    InferResponse::Err(ipfs_accelerate_protocol::infer::InferError {
        id,
        code: ipfs_accelerate_protocol::infer::ErrorCode::Busy,
        message: "too many requests in flight".into(),
        retry_after_ms: Some(10),
        load: None,
    })
}

/// Sends a manifest on the announcement topic and its model's own topic.
async fn announce_manifest(p2p: &P2p, manifest: &Manifest) -> Result<()> {
    let data = manifest.encode().map_err(|e| Error::Model(e.to_string()))?;
    p2p.pubsub_publish(MODELS_TOPIC.to_owned(), data.clone())
        .await?;
    p2p.pubsub_publish(model_topic(&manifest.body.weights), data)
        .await?;
    Ok(())
}

/// config.json of the model folder `root`.
fn read_config(store: &Store, root: &Cid, opener: &Opener) -> Result<Vec<u8>> {
    let files = ModelFiles::read_one(store, root, "config.json", opener)
        .map_err(|e| Error::Model(e.to_string()))?;
    files.ok_or_else(|| Error::Model(format!("{root} has no config.json: is it a model folder?")))
}

/// Whether the model folder `root` is private: its config.json is encrypted.
fn is_private(store: &Store, root: &Cid) -> bool {
    matches!(
        ModelFiles::read_one(store, root, "config.json", &Opener::raw()),
        Ok(Some(bytes)) if bytes.starts_with(envelope::AGE_MAGIC)
    )
}

/// Request ids only need to be unique among our requests in flight.
fn next_request_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
