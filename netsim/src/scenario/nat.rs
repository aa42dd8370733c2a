//! `nat`: a share of the nodes behind NATs that take no connection in, a few open
//! relays (the swarm's [`NatSetup`](crate::sim::NatSetup)). Once the swarm has settled,
//! it measures what the node's NAT traversal achieves: NATed nodes holding a relay
//! reservation; NATed providers that a node not yet connected to them reaches (a DHT
//! lookup, then an inference call); the relayed connections that hole punching turned
//! direct; and the latency of inference calls through a relay against direct ones.
//!
//! The providers answer every call at once with a 384-dimension embedding of zeros:
//! no model runs, since what is measured is the path, not the compute.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use ipfs_accelerate_node::p2p::{self, P2p};
use ipfs_accelerate_protocol::infer::{
    InferOutput, InferRequest, InferResponse, Inputs, Load, Task, Tensor, encode_frame,
};
use libp2p::PeerId;
use rand::RngExt;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::network::{Nat, Network};
use crate::sim::{Clock, Sim};
use crate::stats::Percentiles;

/// Time between two looks at the nodes' reservations while the swarm settles.
const SETTLE_POLL: Duration = Duration::from_secs(1);
/// Longest one node may take to report its network status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Providers announcing at once.
const PROVIDES_AT_ONCE: usize = 32;
/// Longest a provide or a lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// After the last provide, for the records to land.
const RECORDS_LAND: Duration = Duration::from_secs(2);
/// Longest an inference call may take, the dial included.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a relayed connection is given to become direct: DCUtR's three attempts,
/// each up to a punch window.
const PUNCH_SETTLE: Duration = Duration::from_secs(15);
/// Time between two looks at whether a connection became direct (or closed).
const PUNCH_POLL: Duration = Duration::from_millis(200);
/// Longest a caller's connections to the provider may take to close.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After the punch settled, before the timed calls: a new connection's identify
/// exchange would count as a call's bytes.
const QUIET_BEFORE_CALLS: Duration = Duration::from_secs(1);
/// Dimensions of the embedding each call gets back.
const EMBEDDING_DIMENSIONS: usize = 384;
/// The sentence each call sends, as long as a short paragraph.
const SENTENCE_CHARS: usize = 256;

#[derive(Debug, Clone)]
pub struct NatParams {
    /// NATed providers tried, each from one random node (not a relay), which drops
    /// its connections to the provider first if it has any.
    pub providers: usize,
    /// Timed calls to each provider reached (after the first, which dials). The
    /// relay cuts a circuit after 128 KiB (about 60 calls) or 2 minutes; calls after
    /// that go direct where a hole was punched.
    pub calls: usize,
    /// Providers tried at once (a relay carries 16 circuits at a time).
    pub concurrency: usize,
    /// Longest wait, after the start, for every NATed node to hold a reservation.
    pub settle: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct NatReport {
    pub nodes: usize,
    pub relays: usize,
    pub natted: usize,
    pub cone: usize,
    pub symmetric: usize,
    /// Simulated seconds from the start until every NATed node held a reservation (or
    /// the settle timeout).
    pub settle_seconds: f64,
    /// What AutoNAT found: open nodes that learned they are public, NATed ones that
    /// learned they are private.
    pub open_found_public: usize,
    pub natted_found_private: usize,
    /// NATed nodes holding at least one relay reservation, and their share.
    pub natted_reserved: usize,
    pub reserved_share: f64,
    pub providers_tried: usize,
    /// Callers that were connected to their provider already, and disconnected.
    pub callers_were_connected: usize,
    /// Providers the caller's first inference call reached, and their share.
    pub reached: usize,
    pub reached_share: f64,
    /// Providers not reached, by why the first call failed.
    pub unreached_because: BTreeMap<String, usize>,
    /// Of those reached: over a relay first, and then hole punched to direct within
    /// the settle time; over a relay only; direct at once (as the network sees the
    /// connections).
    pub relayed_then_direct: usize,
    pub relayed_only: usize,
    pub direct_at_once: usize,
    /// Relayed connections that became direct: relayed_then_direct over all relayed.
    pub upgraded_share: f64,
    /// The same by the caller's and the provider's NAT ("open>cone": tried, upgraded).
    pub upgrades_by_nat: BTreeMap<String, (usize, usize)>,
    /// The nodes' own DCUtR counters, summed: successes, and attempts given up.
    pub hole_punches: u64,
    pub hole_punch_failures: u64,
    /// Time from the lookup's start to the first answer, which dials the provider.
    pub first_call: Percentiles,
    /// Calls whose request and answer both crossed a direct link, and the others,
    /// which went through a relay.
    pub relayed: Percentiles,
    pub direct: Percentiles,
    pub failed_calls: usize,
    #[serde(skip)]
    pub relayed_samples: Vec<Duration>,
    #[serde(skip)]
    pub direct_samples: Vec<Duration>,
}

/// How one caller fared with one provider.
#[derive(Debug, Default)]
struct Pair {
    caller_nat: Option<Nat>,
    /// The caller was connected to the provider before, and disconnected.
    was_connected: bool,
    provider_nat: Option<Nat>,
    reached: bool,
    unreached_because: Option<&'static str>,
    first_call: Option<Duration>,
    /// The first connection went through a relay.
    relayed_first: bool,
    /// A direct connection existed once the punch settled.
    direct_after: bool,
    relayed: Vec<Duration>,
    direct: Vec<Duration>,
    failed_calls: usize,
}

pub async fn run(sim: &mut Sim, params: &NatParams) -> Result<NatReport> {
    let up = sim.up();
    for &i in &up {
        sim.node(i)
            .context("a node is down")?
            .serve_infer(embedding_handler())?;
    }
    let natted: Vec<usize> = up
        .iter()
        .copied()
        .filter(|&i| sim.net.nat(i) != Nat::Open)
        .collect();
    let settle_started = Instant::now();
    let settle_wall = sim.clock.wall(params.settle);
    let mut statuses = network_statuses(sim).await;
    while settle_started.elapsed() < settle_wall
        && natted.iter().any(|i| reservations(&statuses, *i) == 0)
    {
        tokio::time::sleep(sim.clock.wall(SETTLE_POLL)).await;
        statuses = network_statuses(sim).await;
    }
    let settle_seconds = sim.clock.simulated(settle_started.elapsed()).as_secs_f64();
    let reachability = |i: usize| {
        statuses
            .get(i)
            .and_then(|s| s.as_ref())
            .map(|s| s.reachability)
    };
    let open_found_public = up
        .iter()
        .filter(|&&i| sim.net.nat(i) == Nat::Open)
        .filter(|&&i| reachability(i) == Some(p2p::Reachability::Public))
        .count();
    let natted_found_private = natted
        .iter()
        .filter(|&&i| reachability(i) == Some(p2p::Reachability::Private))
        .count();
    let natted_reserved = natted
        .iter()
        .filter(|&&i| reservations(&statuses, i) > 0)
        .count();

    let mut providers = natted.clone();
    providers.shuffle(&mut sim.rng);
    providers.truncate(params.providers);
    let keys: Vec<[u8; 32]> = providers.iter().map(|_| sim.rng.random()).collect();
    provide_all(sim, &providers, &keys).await;
    tokio::time::sleep(sim.clock.wall(RECORDS_LAND)).await;

    let callers: Vec<usize> = up.iter().copied().filter(|&i| !sim.is_relay(i)).collect();
    let mut tasks = Vec::new();
    for (k, &p) in providers.iter().enumerate() {
        let others: Vec<usize> = callers.iter().copied().filter(|&i| i != p).collect();
        let Some(caller) = choose(&others, sim) else {
            continue;
        };
        let caller_p2p = sim.node(caller).context("a caller is down")?.clone();
        let call = Call {
            net: sim.net.clone(),
            clock: sim.clock,
            caller,
            caller_p2p,
            provider: p,
            provider_peer: sim.peer_id(p),
            key: keys[k],
            calls: params.calls,
        };
        tasks.push(call.run());
    }
    let pairs: Vec<Pair> = futures::stream::iter(tasks)
        .buffer_unordered(params.concurrency.max(1))
        .collect()
        .await;

    let final_statuses = network_statuses(sim).await;
    let (hole_punches, hole_punch_failures) = final_statuses
        .iter()
        .flatten()
        .fold((0, 0), |(ok, failed), s| {
            (ok + s.hole_punches, failed + s.hole_punch_failures)
        });
    Ok(summarize(
        sim,
        &natted,
        Summary {
            settle_seconds,
            open_found_public,
            natted_found_private,
            natted_reserved,
            hole_punches,
            hole_punch_failures,
        },
        pairs,
    ))
}

/// One line on the report.
pub fn describe(report: &NatReport) -> String {
    format!(
        "{} NATed of {} ({} cone, {} symmetric), {} relays; {:.1}% of NATed nodes held a \
         reservation after {:.0} s; {}/{} NATed providers reached ({:.1}%): {} relayed then \
         direct, {} relayed only, {} direct at once; {:.1}% of relayed connections upgraded \
         (nodes' counters: {} punches, {} given up); calls through a relay p50 {:.0} / p95 \
         {:.0} ms ({}), direct p50 {:.0} / p95 {:.0} ms ({}); {} calls failed; not reached: \
         {:?}",
        report.natted,
        report.nodes,
        report.cone,
        report.symmetric,
        report.relays,
        report.reserved_share * 100.0,
        report.settle_seconds,
        report.reached,
        report.providers_tried,
        report.reached_share * 100.0,
        report.relayed_then_direct,
        report.relayed_only,
        report.direct_at_once,
        report.upgraded_share * 100.0,
        report.hole_punches,
        report.hole_punch_failures,
        report.relayed.p50_ms,
        report.relayed.p95_ms,
        report.relayed.count,
        report.direct.p50_ms,
        report.direct.p95_ms,
        report.direct.count,
        report.failed_calls,
        report.unreached_because,
    )
}

/// One caller's attempt on one provider.
struct Call {
    net: Network,
    clock: Clock,
    caller: usize,
    caller_p2p: P2p,
    provider: usize,
    provider_peer: PeerId,
    key: [u8; 32],
    calls: usize,
}

impl Call {
    async fn run(self) -> Pair {
        let mut pair = Pair {
            caller_nat: Some(self.net.nat(self.caller)),
            provider_nat: Some(self.net.nat(self.provider)),
            ..Pair::default()
        };
        // From a cold start: a caller already connected (the provider dialed it for the
        // DHT) drops its connections first.
        if self.is_connected().await {
            pair.was_connected = true;
            let _ = self.caller_p2p.disconnect(self.provider_peer).await;
            let deadline = Instant::now() + self.clock.wall(DISCONNECT_TIMEOUT);
            while self.is_connected().await && Instant::now() < deadline {
                tokio::time::sleep(self.clock.wall(PUNCH_POLL)).await;
            }
        }
        let started = Instant::now();
        // The lookup dials the provider on the addresses its record carries: its
        // private listen address, which fails, and its addresses through relays.
        let lookup = self.caller_p2p.find_providers(self.key.to_vec(), 1);
        let _ = tokio::time::timeout(self.clock.wall(LOOKUP_TIMEOUT), lookup).await;
        if let Err(error) = self.call(0).await {
            pair.unreached_because = Some(why_unreached(&format!("{error:#}")));
            return pair;
        }
        pair.reached = true;
        pair.first_call = Some(self.clock.simulated(started.elapsed()));
        pair.relayed_first = !self.direct();
        pair.direct_after = !pair.relayed_first || self.wait_direct().await;
        // The new connection's identify exchange is over before the timed calls.
        tokio::time::sleep(self.clock.wall(QUIET_BEFORE_CALLS)).await;
        for id in 1..=self.calls as u64 {
            let sent = self.net.sent_direct(self.caller, self.provider);
            let received = self.net.sent_direct(self.provider, self.caller);
            let started = Instant::now();
            match self.call(id).await {
                Ok((request, response)) => {
                    let took = self.clock.simulated(started.elapsed());
                    // Direct when both the request and the answer crossed the direct
                    // link; else through a relay.
                    let out = self.net.sent_direct(self.caller, self.provider) - sent;
                    let back = self.net.sent_direct(self.provider, self.caller) - received;
                    if out >= request as u64 && back >= response as u64 {
                        pair.direct.push(took);
                    } else {
                        pair.relayed.push(took);
                    }
                }
                Err(_) => pair.failed_calls += 1,
            }
        }
        pair
    }

    /// One inference call; the request's and the answer's frame lengths.
    async fn call(&self, id: u64) -> Result<(usize, usize)> {
        let request = request(id, &self.key);
        let frame = encode_frame(&request)?.len();
        let wait = self.clock.wall(CALL_TIMEOUT);
        match tokio::time::timeout(wait, self.caller_p2p.infer(self.provider_peer, request)).await {
            Ok(Ok(response @ InferResponse::Ok(_))) => Ok((frame, encode_frame(&response)?.len())),
            Ok(Ok(InferResponse::Err(e))) => Err(e.into()),
            Ok(Ok(InferResponse::Delta(_))) => anyhow::bail!("a delta for an embedding"),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => anyhow::bail!("no answer in time"),
        }
    }

    async fn is_connected(&self) -> bool {
        let peers = self.caller_p2p.connected_peer_ids().await;
        peers.is_ok_and(|peers| peers.contains(&self.provider_peer))
    }

    /// Whether the two have a direct connection, as the network sees it (a node's
    /// peer list counts a relayed connection it accepted as direct).
    fn direct(&self) -> bool {
        self.net.connected_directly(self.caller, self.provider)
    }

    /// Waits up to [`PUNCH_SETTLE`] for a direct connection; whether one came.
    async fn wait_direct(&self) -> bool {
        let deadline = Instant::now() + self.clock.wall(PUNCH_SETTLE);
        while Instant::now() < deadline {
            if self.direct() {
                return true;
            }
            tokio::time::sleep(self.clock.wall(PUNCH_POLL)).await;
        }
        self.direct()
    }
}

/// Why a first call failed, from its error: the relays refusing the circuit (their
/// limits on circuits at once and per peer), a relay path failing otherwise, or no
/// address through a relay known at all.
fn why_unreached(error: &str) -> &'static str {
    if error.contains("resource limit exceeded") {
        "relay refused: resource limit exceeded"
    } else if error.contains("p2p-circuit") {
        "relayed dial failed"
    } else if error.contains("no answer") {
        "no answer in time"
    } else {
        "no relayed address known"
    }
}

/// Each NATed provider announces its key, a bounded number at once.
async fn provide_all(sim: &Sim, providers: &[usize], keys: &[[u8; 32]]) {
    let wait = sim.clock.wall(LOOKUP_TIMEOUT);
    let provides = providers.iter().zip(keys).filter_map(|(&p, key)| {
        let p2p = sim.node(p)?.clone();
        let key = key.to_vec();
        Some(async move {
            let _ = tokio::time::timeout(wait, p2p.provide(key)).await;
        })
    });
    futures::stream::iter(provides)
        .buffer_unordered(PROVIDES_AT_ONCE)
        .collect::<Vec<()>>()
        .await;
}

type Statuses = Vec<Option<p2p::NetworkStatus>>;

/// Every node's network status, by index (`None` for a node down or too busy).
async fn network_statuses(sim: &Sim) -> Statuses {
    let asks = (0..sim.size()).map(|i| {
        let node = sim.node(i).cloned();
        async move {
            tokio::time::timeout(STATUS_TIMEOUT, node?.network_status())
                .await
                .ok()?
                .ok()
        }
    });
    futures::future::join_all(asks).await
}

fn reservations(statuses: &Statuses, i: usize) -> usize {
    statuses
        .get(i)
        .and_then(|s| s.as_ref())
        .map_or(0, |s| s.relay_reservations.len())
}

/// A random one of `nodes`.
fn choose(nodes: &[usize], sim: &mut Sim) -> Option<usize> {
    (!nodes.is_empty()).then(|| nodes[sim.rng.random_range(0..nodes.len())])
}

/// The request each call sends: one sentence to embed.
fn request(id: u64, key: &[u8; 32]) -> InferRequest {
    let digest = cid::multihash::Multihash::<64>::wrap(0x12, key).unwrap_or_default();
    InferRequest {
        id,
        model: cid::Cid::new_v1(0x55, digest),
        task: Task::Embed,
        inputs: Inputs::Texts(vec!["a".repeat(SENTENCE_CHARS)]),
        options: Default::default(),
        deadline_ms: CALL_TIMEOUT.as_millis() as u32,
    }
}

/// Answers every request at once with an embedding of zeros per input.
fn embedding_handler() -> p2p::InferHandler {
    Arc::new(|_peer, request: InferRequest, _deltas| {
        Box::pin(async move {
            let rows = match &request.inputs {
                Inputs::Texts(texts) => texts.len(),
                _ => 1,
            };
            let values = vec![0.0f32; rows * EMBEDDING_DIMENSIONS];
            let shape = vec![rows as u64, EMBEDDING_DIMENSIONS as u64];
            match Tensor::from_f32(shape, &values) {
                Ok(output) => InferResponse::Ok(InferOutput {
                    id: request.id,
                    model: request.model,
                    output,
                    backend: "netsim".into(),
                    queue_us: 0,
                    compute_us: 0,
                    load: Load::default(),
                    generation: None,
                    labels: Vec::new(),
                    input_tokens: None,
                }),
                Err(e) => InferResponse::Err(ipfs_accelerate_protocol::infer::InferError {
                    id: request.id,
                    code: ipfs_accelerate_protocol::infer::ErrorCode::Internal,
                    message: e.to_string(),
                    retry_after_ms: None,
                    load: None,
                }),
            }
        })
    })
}

/// What the settling phase found.
struct Summary {
    settle_seconds: f64,
    open_found_public: usize,
    natted_found_private: usize,
    natted_reserved: usize,
    hole_punches: u64,
    hole_punch_failures: u64,
}

fn summarize(sim: &Sim, natted: &[usize], found: Summary, pairs: Vec<Pair>) -> NatReport {
    let name = |nat: Option<Nat>| match nat {
        Some(Nat::Open) | None => "open",
        Some(Nat::Cone) => "cone",
        Some(Nat::Symmetric) => "symmetric",
    };
    let mut upgrades_by_nat: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut relayed_samples, mut direct_samples, mut first_calls) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut reached, mut relayed_then_direct, mut relayed_only, mut direct_at_once) = (0, 0, 0, 0);
    let (mut failed_calls, mut were_connected) = (0, 0);
    let mut unreached_because: BTreeMap<String, usize> = BTreeMap::new();
    for pair in &pairs {
        failed_calls += pair.failed_calls;
        were_connected += usize::from(pair.was_connected);
        if let Some(why) = pair.unreached_because {
            *unreached_because.entry(why.to_string()).or_default() += 1;
        }
        if !pair.reached {
            continue;
        }
        reached += 1;
        first_calls.extend(pair.first_call);
        relayed_samples.extend(&pair.relayed);
        direct_samples.extend(&pair.direct);
        if !pair.relayed_first {
            direct_at_once += 1;
            continue;
        }
        let entry = upgrades_by_nat
            .entry(format!(
                "{}>{}",
                name(pair.caller_nat),
                name(pair.provider_nat)
            ))
            .or_default();
        entry.0 += 1;
        if pair.direct_after {
            entry.1 += 1;
            relayed_then_direct += 1;
        } else {
            relayed_only += 1;
        }
    }
    let share = |part: usize, whole: usize| part as f64 / whole.max(1) as f64;
    let cone = natted
        .iter()
        .filter(|&&i| sim.net.nat(i) == Nat::Cone)
        .count();
    let relays = (0..sim.size()).filter(|&i| sim.is_relay(i)).count();
    NatReport {
        nodes: sim.size(),
        relays,
        natted: natted.len(),
        cone,
        symmetric: natted.len() - cone,
        settle_seconds: found.settle_seconds,
        open_found_public: found.open_found_public,
        natted_found_private: found.natted_found_private,
        natted_reserved: found.natted_reserved,
        reserved_share: share(found.natted_reserved, natted.len()),
        providers_tried: pairs.len(),
        callers_were_connected: were_connected,
        reached,
        reached_share: share(reached, pairs.len()),
        unreached_because,
        relayed_then_direct,
        relayed_only,
        direct_at_once,
        upgraded_share: share(relayed_then_direct, relayed_then_direct + relayed_only),
        upgrades_by_nat,
        hole_punches: found.hole_punches,
        hole_punch_failures: found.hole_punch_failures,
        first_call: Percentiles::of(&first_calls),
        relayed: Percentiles::of(&relayed_samples),
        direct: Percentiles::of(&direct_samples),
        failed_calls,
        relayed_samples,
        direct_samples,
    }
}
