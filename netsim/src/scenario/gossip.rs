//! `gossip`: every node subscribes to one topic; random publishers send announcements.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ipfs_accelerate_node::p2p::NodeEvent;
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

/// When each message was published, and each (message, node) delivery.
#[derive(Default)]
struct Log {
    /// Each message's publisher and when it published.
    sent: HashMap<u64, (usize, Instant)>,
    received: Vec<(u64, usize, Instant)>,
}

pub async fn run(sim: &mut Sim, params: &GossipParams) -> Result<GossipReport> {
    let up = sim.up();
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
                    log.received
                        .push((u64::from_le_bytes(id), i, Instant::now()));
                }
            }
        }));
    }
    // The mesh forms on gossipsub's heartbeats: wait until every node has topic peers.
    let settle = Instant::now() + SETTLE_TIMEOUT;
    for &i in &up {
        let Some(node) = sim.node(i) else { continue };
        while node.pubsub_peers(Some(TOPIC.into())).await?.is_empty() {
            if Instant::now() > settle {
                bail!("node {i} found no peer on the topic within {SETTLE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut tick = tokio::time::interval(params.interval);
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
            .received
            .push((id, publisher, Instant::now()));
        node.pubsub_publish(TOPIC.into(), data).await?;
    }
    let expected = params.messages * up.len();
    let end = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < end {
        let unique = distinct(&log.lock().unwrap_or_else(|e| e.into_inner()).received);
        if unique >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for listener in listeners {
        listener.abort();
    }
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let delivered = distinct(&log.received);
    let mut seen = std::collections::HashSet::new();
    let mut latencies = Vec::new();
    for (id, node, at) in &log.received {
        if seen.insert((*id, *node))
            && let Some((publisher, sent)) = log.sent.get(id)
            && publisher != node
        {
            latencies.push(at.saturating_duration_since(*sent));
        }
    }
    Ok(GossipReport {
        messages: params.messages,
        receivers: up.len(),
        delivered,
        delivery_ratio: delivered as f64 / expected.max(1) as f64,
        latency: Percentiles::of(&latencies),
        samples: latencies,
        duplicates_per_node: (log.received.len() - delivered) as f64 / up.len().max(1) as f64,
    })
}

fn distinct(received: &[(u64, usize, Instant)]) -> usize {
    received
        .iter()
        .map(|(id, node, _)| (*id, *node))
        .collect::<std::collections::HashSet<_>>()
        .len()
}
