//! `Node`: one place that wires the components together — the repo (store, pins,
//! identity), the libp2p swarm ([`crate::p2p`]), Bitswap ([`crate::bitswap`]) and the
//! models on the network ([`crate::model_network`]) — and offers the operations the CLI
//! and the HTTP API share. Disk work runs on blocking threads; nothing here blocks the
//! async runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};

use crate::BLOCK_FETCH_TIMEOUT;
use crate::announce::{Announced, Directory};
use crate::bitswap::{Bitswap, provider_key};
use crate::engine::Placement;
use crate::error::{Error, Result};
use crate::infer::{Client, ServeConfig, Server};
use crate::model_network::{
    InferAnswer, InferCall, ModelNetwork, ProviderInfo, PublishMeta, Published,
};
use crate::p2p::{self, P2p};
use crate::provider;
use crate::repo::Repo;
use crate::store::Store;
use crate::trust::Trust;

/// Flags that override the repo's `[network]` config for one run of the daemon.
#[derive(Debug, Clone, Default)]
pub struct NetworkOverrides {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub no_mdns: bool,
    pub dht_protocol: Option<String>,
    /// A profile applied before the flags above ([`crate::profile`]).
    pub profile: Option<crate::profile::Profile>,
}

/// A running peer.
#[derive(Debug)]
pub struct Node {
    repo: Repo,
    p2p: P2p,
    bitswap: Bitswap,
    /// Local subscribers per pubsub topic; the swarm leaves a topic when none remain.
    topics: Arc<Mutex<HashMap<String, usize>>>,
    /// Serving, publishing, discovering and calling models.
    models: ModelNetwork,
}

/// A pubsub message as subscribers receive it.
#[derive(Debug, Clone)]
pub struct PubsubMessage {
    pub topic: String,
    pub from: Option<PeerId>,
    pub data: Vec<u8>,
    pub seqno: Option<u64>,
}

/// Messages on one topic; leaves the topic (if nobody else listens) when dropped.
#[derive(Debug)]
pub struct Subscription {
    topic: String,
    events: tokio::sync::broadcast::Receiver<p2p::NodeEvent>,
    topics: Arc<Mutex<HashMap<String, usize>>>,
    p2p: P2p,
}

impl Subscription {
    /// The next message, or `None` once the node stops. Messages a slow reader
    /// missed are skipped.
    pub async fn next(&mut self) -> Option<PubsubMessage> {
        loop {
            match self.events.recv().await {
                Ok(p2p::NodeEvent::PubsubMessage {
                    topic,
                    from,
                    data,
                    seqno,
                }) if topic == self.topic => {
                    return Some(PubsubMessage {
                        topic,
                        from,
                        data,
                        seqno,
                    });
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            match topics.get_mut(&self.topic) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    topics.remove(&self.topic);
                    true
                }
            }
        };
        if last {
            let (p2p, topic) = (self.p2p.clone(), self.topic.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { p2p.pubsub_unsubscribe(topic).await });
            }
        }
    }
}

fn parse_addrs(what: &'static str, values: &[String]) -> Result<Vec<Multiaddr>> {
    values
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|e: libp2p::multiaddr::Error| Error::Config {
                    what,
                    value: v.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

impl Node {
    /// Starts the swarm and Bitswap on an open repo.
    pub async fn start(
        repo: Repo,
        overrides: NetworkOverrides,
        serve: ServeConfig,
    ) -> Result<Node> {
        Node::launch(repo, overrides, serve, None).await
    }

    /// Like [`Node::start`], over `transport` instead of TCP and QUIC: netsim runs
    /// whole nodes on its simulated network this way.
    pub async fn start_with_transport(
        repo: Repo,
        overrides: NetworkOverrides,
        serve: ServeConfig,
        transport: p2p::BoxedTransport,
    ) -> Result<Node> {
        Node::launch(repo, overrides, serve, Some(transport)).await
    }

    async fn launch(
        repo: Repo,
        overrides: NetworkOverrides,
        serve: ServeConfig,
        transport: Option<p2p::BoxedTransport>,
    ) -> Result<Node> {
        crate::swarm_key::check_forced(repo.swarm_key().as_ref())?;
        let mut network = repo.config().network.clone();
        if let Some(profile) = overrides.profile {
            (profile.check(repo.swarm_key().is_some())).map_err(|reason| Error::Config {
                what: "profile",
                value: profile.name().into(),
                reason,
            })?;
            profile.apply(&mut network);
        }
        let listen = if overrides.listen.is_empty() {
            network.listen.clone()
        } else {
            overrides.listen.clone()
        };
        let mut bootstrap = network.bootstrap.clone();
        bootstrap.extend(overrides.bootstrap.iter().cloned());
        let dht = overrides
            .dht_protocol
            .clone()
            .unwrap_or(network.dht_protocol.clone());
        let dht_protocol =
            StreamProtocol::try_from_owned(dht.clone()).map_err(|e| Error::Config {
                what: "dht protocol",
                value: dht,
                reason: e.to_string(),
            })?;
        let config = p2p::Config {
            listen: parse_addrs("listen address", &listen)?,
            bootstrap: parse_addrs("bootstrap address", &bootstrap)?,
            mdns: network.mdns && !overrides.no_mdns,
            dht_protocol,
            agent_version: concat!("ipfs-accelerate/", env!("CARGO_PKG_VERSION"), "/").into(),
            infer_limits: p2p::InferLimits {
                request: network.infer_request_limit,
                response: network.infer_response_limit,
            },
            connections: p2p::ConnectionLimits {
                low_water: network.low_water,
                high_water: network.high_water,
                grace: Duration::from_secs(network.grace_period_secs),
            },
            dht_refresh: p2p::DEFAULT_DHT_REFRESH,
            limits: repo.config().swarm.p2p_limits(),
            time_dilation: 1,
            swarm_key: repo.swarm_key(),
            nat: p2p::NatConfig {
                autonat: network.autonat,
                relay_service: network.relay_service,
                relay_client: network.relay_client,
                relays: parse_addrs("relay address", &network.relays)?,
                hole_punching: network.hole_punching,
                upnp: network.upnp,
            },
        };
        let keypair = repo.identity().keypair().clone();
        let gateways =
            crate::fallback::Gateways::new(crate::fallback::Config::from_network(&network))
                .map_err(|bad| Error::Config {
                    what: "gateway URL",
                    value: bad.url,
                    reason: bad.reason,
                })?;
        let p2p = P2p::start_on(config, keypair, transport).await?;
        let bitswap = Bitswap::start(
            repo.shared_store(),
            p2p.clone(),
            crate::bitswap::Config {
                gateways,
                ..repo.config().swarm.bitswap()
            },
        )?;
        let models = ModelNetwork::start(&repo, p2p.clone(), bitswap.clone(), serve).await?;
        let node = Node {
            repo,
            p2p,
            bitswap,
            // The node itself listens to model announcements, whoever else subscribes.
            topics: Arc::new(Mutex::new(HashMap::from([(
                ipfs_accelerate_protocol::manifest::MODELS_TOPIC.to_owned(),
                1,
            )]))),
            models,
        };
        node.spawn_reprovider(Duration::from_secs(network.reprovide_interval_secs.max(60)));
        Ok(node)
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    pub fn store(&self) -> Arc<Store> {
        self.repo.shared_store()
    }

    pub fn p2p(&self) -> &P2p {
        &self.p2p
    }

    pub fn bitswap(&self) -> &Bitswap {
        &self.bitswap
    }

    pub fn peer_id(&self) -> PeerId {
        self.p2p.local_peer_id()
    }

    /// Listen addresses with our `/p2p/<id>` appended, as `id` prints them.
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>> {
        Ok(self
            .p2p
            .listeners()
            .await?
            .into_iter()
            .map(|a| a.with(Protocol::P2p(self.peer_id())))
            .collect())
    }

    /// Makes the whole DAG under `root` local, fetching what is missing from peers.
    pub async fn fetch(&self, root: Cid) -> Result<()> {
        self.fetch_with_progress(root, |_, _| {}).await
    }

    /// Whether every block of the DAG under `root` is here.
    pub async fn is_complete(&self, root: Cid) -> Result<bool> {
        let store = self.store();
        Ok(
            tokio::task::spawn_blocking(move || store.first_missing_block(&root))
                .await
                .map_err(|e| Error::Task(e.to_string()))??
                .is_none(),
        )
    }

    /// Like [`Node::fetch`]; `progress` gets (blocks, bytes) fetched so far.
    pub async fn fetch_with_progress(
        &self,
        root: Cid,
        progress: impl FnMut(u64, u64),
    ) -> Result<()> {
        if !self.is_complete(root).await? {
            self.bitswap
                .fetch_dag(root, BLOCK_FETCH_TIMEOUT, progress)
                .await?;
        }
        Ok(())
    }

    /// The DAG's size as its dag-pb root declares it (the root's bytes plus its links'
    /// cumulative sizes), fetching the root if needed; `None` for other codecs. A hint
    /// for progress bars, not verified.
    pub async fn dag_size_hint(&self, root: Cid) -> Result<Option<u64>> {
        if root.codec() != ipfs_accelerate_protocol::codec::DAG_PB {
            return Ok(None);
        }
        let block = self.bitswap.get(root, BLOCK_FETCH_TIMEOUT).await?;
        let Ok(node) = ipfs_accelerate_protocol::block::decode_dag_pb(&root, block.data()) else {
            return Ok(None);
        };
        let links: u64 = node.links.iter().filter_map(|l| l.size).sum();
        Ok(Some(block.data().len() as u64 + links))
    }

    /// Follows `path` (`a/b/c`, empty for `root` itself) through dag-pb links from
    /// `root`, fetching the blocks on the way.
    pub async fn resolve(&self, root: Cid, path: &str) -> Result<Cid> {
        let mut current = root;
        for name in path.split('/').filter(|s| !s.is_empty()) {
            let parent = self.bitswap.get(current, BLOCK_FETCH_TIMEOUT).await?;
            let no_link = || Error::NoLink {
                parent: current,
                name: name.to_string(),
            };
            current = ipfs_accelerate_protocol::block::decode_dag_pb(&current, parent.data())
                .map_err(|_| no_link())?
                .links
                .into_iter()
                .find(|l| l.name.as_deref() == Some(name))
                .map(|l| l.cid)
                .ok_or_else(no_link)?;
        }
        Ok(current)
    }

    /// Fetches the DAG if needed, pins it, and announces it on the DHT.
    pub async fn pin(&self, root: Cid, recursive: bool) -> Result<()> {
        if recursive {
            self.fetch(root).await?;
        } else {
            self.bitswap.get(root, BLOCK_FETCH_TIMEOUT).await?;
        }
        let store = self.store();
        tokio::task::spawn_blocking(move || store.pin_add(&root, recursive))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        self.provide_root(root).await;
        Ok(())
    }

    /// Announces a newly added or pinned `root` on the DHT, and (by the configured
    /// strategy) the blocks under it in the background.
    pub async fn provide_root(&self, root: Cid) {
        self.provide(root).await;
        let strategy = self.repo.config().network.provide_strategy;
        let (store, p2p) = (self.store(), self.p2p.clone());
        tokio::spawn(async move {
            let under = tokio::task::spawn_blocking(move || {
                provider::blocks_under(&store, strategy, &root)
            })
            .await;
            if let Ok(Ok(keys)) = under {
                let _ = provider::announce(&p2p, keys).await;
            }
        });
    }

    /// Announces `cid` on the DHT; failures are logged, not fatal (no peers yet).
    pub async fn provide(&self, cid: Cid) {
        provider::provide(&self.p2p, cid).await;
    }

    /// Addresses of `peer`: those we are connected on, else a DHT lookup.
    pub async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>> {
        let connected: Vec<Multiaddr> = self
            .p2p
            .peers()
            .await?
            .into_iter()
            .filter(|p| p.peer == peer)
            .map(|p| p.addr)
            .collect();
        if !connected.is_empty() {
            return Ok(connected);
        }
        Ok(self.p2p.find_peer(peer).await?)
    }

    /// Providers of `cid` on the DHT.
    pub async fn find_providers(
        &self,
        cid: Cid,
        limit: usize,
    ) -> Result<Vec<(PeerId, Vec<Multiaddr>)>> {
        Ok(self.p2p.find_providers(provider_key(&cid), limit).await?)
    }

    /// Subscribes to a pubsub topic.
    pub async fn pubsub_subscribe(&self, topic: String) -> Result<Subscription> {
        // Listen before joining so no early message is missed.
        let events = self.p2p.subscribe_events();
        let first = {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            let count = topics.entry(topic.clone()).or_default();
            *count += 1;
            *count == 1
        };
        let subscription = Subscription {
            topic: topic.clone(),
            events,
            topics: self.topics.clone(),
            p2p: self.p2p.clone(),
        };
        if first {
            self.p2p.pubsub_subscribe(topic).await?;
        }
        Ok(subscription)
    }

    /// Publishes to the topic's peers and, as Kubo does, to our own subscribers.
    pub async fn pubsub_publish(&self, topic: String, data: Vec<u8>) -> Result<()> {
        // Peers reject anything else on the model topics; say so instead of sending it.
        if crate::announce::is_model_topic(&topic) {
            crate::announce::check(&topic, &data, Some(self.peer_id())).map_err(|reason| {
                Error::Model(format!(
                    "not sent: messages on {topic} must be model manifests signed by this node ({reason})"
                ))
            })?;
        }
        let local = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&topic);
        self.p2p.pubsub_publish(topic.clone(), data.clone()).await?;
        if local {
            self.p2p.emit_local(p2p::NodeEvent::PubsubMessage {
                topic,
                from: Some(self.peer_id()),
                data,
                seqno: None,
            });
        }
        Ok(())
    }

    /// Announces every recursively pinned root now and every `interval` after.
    fn spawn_reprovider(&self, interval: Duration) {
        let store = self.store();
        let p2p = self.p2p.clone();
        let strategy = self.repo.config().network.provide_strategy;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // Lets go of the store at shutdown, so the repo can be opened again
                    // in this process (the Python package closes and reopens nodes).
                    _ = p2p.closed() => return,
                }
                if provider::reprovide(store.clone(), &p2p, strategy)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Stops the swarm.
    pub async fn shutdown(&self) {
        self.p2p.shutdown().await;
    }
}

/// Models on the network, as `ModelNetwork` runs them; publishing and pulling pin
/// the model's DAG here first.
impl Node {
    /// Models announced on the network.
    pub fn directory(&self) -> &Directory {
        self.models.directory()
    }

    /// The server answering peers' inference requests for the models served here.
    pub fn infer_server(&self) -> &Server {
        self.models.server()
    }

    /// The client calling peers for inference (and its per-peer statistics).
    pub fn infer_client(&self) -> &Client {
        self.models.client()
    }

    /// Who may speak for each model name.
    pub fn trust(&self) -> &Trust {
        self.models.trust()
    }

    /// Whether `publisher` may speak for `name` here: trusted for it, or ourselves.
    pub fn trusts(&self, name: &str, publisher: &PeerId) -> bool {
        self.models.trusts(name, publisher)
    }

    /// The root CID `model` names: a CID, a name imported here (`NAME[@VERSION]`), or
    /// a name announced by a publisher trusted for it.
    pub fn resolve_model(&self, model: &str) -> Result<Cid> {
        self.models.resolve(model, false)
    }

    /// Like [`Node::resolve_model`]; with `any_publisher` a name announced by anyone
    /// resolves (the newest `created_at` wins).
    pub fn resolve_model_from(&self, model: &str, any_publisher: bool) -> Result<Cid> {
        self.models.resolve(model, any_publisher)
    }

    /// Serves inference for `root` to peers (and to local calls) on `placement` (a
    /// device, at f32, or a device and precision), and says so on the DHT under the
    /// model's service key. The model must be in the repo.
    pub async fn serve_model(&self, root: Cid, placement: impl Into<Placement>) -> Result<()> {
        self.models.serve(root, placement.into()).await
    }

    /// Publishes the model folder `root` (imported here): pinned and provided, a signed
    /// manifest stored and pinned, the name's registry entry rewritten to list it, the
    /// service key provided on the DHT, and announcements on gossip, repeated while the
    /// node runs. The model is served from here too.
    pub async fn publish_model(
        &self,
        root: Cid,
        meta: PublishMeta,
        placement: impl Into<Placement>,
    ) -> Result<Published> {
        self.pin(root, true).await?;
        self.models.publish(root, meta, placement.into()).await
    }

    /// Fetches every block of the model from its providers (whatever is here already
    /// is not fetched again), pins it, records its announced name (only from a
    /// publisher trusted for the name: a local record resolves without asking), and
    /// provides it so the next peer has one more source. `progress` gets (blocks,
    /// bytes) fetched.
    pub async fn pull_model(&self, root: Cid, progress: impl FnMut(u64, u64)) -> Result<()> {
        self.fetch_with_progress(root, progress).await?;
        self.pin(root, true).await?;
        self.models.name_pulled(root).await;
        Ok(())
    }

    /// Reads the registry entry `registry` (fetching it and its manifests from peers
    /// when they are not here), checks its signature and every manifest, and adds them
    /// to the directory (a version older than one its publisher announced is left
    /// out). An entry whose signature fails, or a manifest whose signature fails, that
    /// is by another publisher or disagrees with the entry, is an error.
    pub async fn discover_registry(&self, registry: Cid) -> Result<Vec<Announced>> {
        self.models.discover_registry(registry).await
    }

    /// Runs inference: here when the model is served or stored here (unless `remote`),
    /// otherwise on the best peer serving it, with hedging and failover.
    pub async fn infer(&self, call: InferCall) -> Result<InferAnswer> {
        self.models.infer(call, None, None).await
    }

    /// [`Node::infer`] whose generated text goes to `deltas` as it comes; dropping
    /// their receiver stops the generation, here or at the peer running it.
    /// `provider`, when given, names the peer whose text is coming (ours when it runs
    /// here) from before its first delta is sent; a failover changes it.
    pub async fn infer_streaming(
        &self,
        call: InferCall,
        deltas: tokio::sync::mpsc::Sender<ipfs_accelerate_protocol::infer::Delta>,
        provider: Option<tokio::sync::watch::Sender<Option<PeerId>>>,
    ) -> Result<InferAnswer> {
        self.models.infer(call, Some(deltas), provider).await
    }

    /// Every peer serving `model` (the DHT asked afresh), each probed with one small
    /// request to measure its round-trip and learn its load.
    pub async fn providers(&self, model: Cid) -> Result<Vec<ProviderInfo>> {
        self.models.providers(model).await
    }
}
