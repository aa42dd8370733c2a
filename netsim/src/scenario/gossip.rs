//! `gossip`: every node subscribes to one topic; random publishers send announcements.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ipfs_accelerate_node::p2p::NodeEvent;
use libp2p::gossipsub;
use serde::Serialize;

use crate::sim::Sim;
use crate::stats::Percentiles;

const TOPIC: &str = "netsim/announcements";
/// Longest the mesh may take to form, and the last message to spread.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct GossipParams {
    pub messages: usize,
    /// Time between two publications.
    pub interval: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct GossipReport {
    pub messages: usize,
    pub receivers: usize,
    pub delivered: usize,
    pub delivery_ratio: f64,
    pub latency: Percentiles,
    /// Copies of one message handed to one node's subscribers more than once.
    pub duplicates_per_node: f64,
    /// Latency of each delivery to a node other than the publisher, for the plot.
    #[serde(skip)]
    pub samples: Vec<Duration>,
}

/// When each message was published, and when each node first got it.
#[derive(Default)]
struct Log {
    /// Each message's publisher and when it published.
    sent: HashMap<u64, (usize, Instant)>,
    /// (message, node) -> first delivery.
    received: HashMap<(u64, usize), Instant>,
    /// Deliveries of a message to a node that already had it.
    duplicates: usize,
}

impl Log {
    fn deliver(&mut self, id: u64, node: usize) {
        match self.received.entry((id, node)) {
            std::collections::hash_map::Entry::Occupied(_) => self.duplicates += 1,
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Instant::now());
            }
        }
    }
}

pub async fn run(sim: &mut Sim, params: &GossipParams) -> Result<GossipReport> {
    let up = sim.up();
    let clock = sim.clock;
    let log = Arc::new(Mutex::new(Log::default()));
    let mut listeners = Vec::new();
    for &i in &up {
        let Some(node) = sim.node(i) else { continue };
        let mut events = node.subscribe_events();
        node.pubsub_subscribe(TOPIC.into()).await?;
        let log = Arc::clone(&log);
        listeners.push(tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let NodeEvent::PubsubMessage { topic, data, .. } = event
                    && topic == TOPIC
                    && let Ok(id) = <[u8; 8]>::try_from(&data[..8.min(data.len())])
                {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.deliver(u64::from_le_bytes(id), i);
                }
            }
        }));
    }
    // Meshes form on gossipsub's heartbeats. Until they have, messages spread by the
    // publisher's flooding and the next heartbeat's gossip instead of along meshes, as
    // they would in a swarm that has been up for a while: wait until every node keeps
    // as many mesh peers as gossipsub aims for at least (or all its topic peers).
    let mesh_low = gossipsub::Config::default().mesh_n_low();
    let settle = Instant::now() + clock.wall(SETTLE_TIMEOUT);
    for &i in &up {
        let Some(node) = sim.node(i) else { continue };
        loop {
            let peers = node.pubsub_peers(Some(TOPIC.into())).await?.len();
            let mesh = node.pubsub_mesh_peers(TOPIC.into()).await?.len();
            if peers > 0 && mesh >= mesh_low.min(peers) {
                break;
            }
            if Instant::now() > settle {
                bail!(
                    "node {i} has {mesh} mesh peers of {peers} on the topic after {SETTLE_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(clock.wall(Duration::from_millis(100))).await;
        }
    }
    let mut tick = tokio::time::interval(clock.wall(params.interval));
    for id in 0..params.messages as u64 {
        tick.tick().await;
        let Some(publisher) = sim.random_up(None) else {
            break;
        };
        let Some(node) = sim.node(publisher) else {
            continue;
        };
        let mut data = id.to_le_bytes().to_vec();
        data.extend_from_slice(&[0u8; 120]);
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .sent
            .insert(id, (publisher, Instant::now()));
        // The publisher's own copy counts as delivered at once.
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .deliver(id, publisher);
        node.pubsub_publish(TOPIC.into(), data).await?;
    }
    let expected = params.messages * up.len();
    let end = Instant::now() + clock.wall(SETTLE_TIMEOUT);
    while Instant::now() < end {
        let delivered = log.lock().unwrap_or_else(|e| e.into_inner()).received.len();
        if delivered >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for listener in listeners {
        listener.abort();
    }
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let delivered = log.received.len();
    let latencies: Vec<Duration> = log
        .received
        .iter()
        .filter_map(|((id, node), at)| {
            let (publisher, sent) = log.sent.get(id)?;
            (publisher != node).then(|| clock.simulated(at.saturating_duration_since(*sent)))
        })
        .collect();
    Ok(GossipReport {
        messages: params.messages,
        receivers: up.len(),
        delivered,
        delivery_ratio: delivered as f64 / expected.max(1) as f64,
        latency: Percentiles::of(&latencies),
        samples: latencies,
        duplicates_per_node: log.duplicates as f64 / up.len().max(1) as f64,
    })
}
