//! `/debug/metrics/prometheus` (Kubo's path on the API port): the node's counters in
//! Prometheus' text format, read from the components at each scrape, so nothing on a
//! hot path updates a metric.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Api, ApiError, ApiResult, blocking};
use crate::bitswap::Stats;
use crate::infer::ServeMetrics;
use crate::infer::client::CallMetrics;
use ipfs_accelerate_protocol::model_folder::ModelKind;

/// Prometheus' text format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one scrape reports.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) bitswap: Stats,
    /// Blocks from the fallback gateways (zeros without any).
    pub(super) gateways: crate::fallback::Stats,
    pub(super) wantlist: usize,
    pub(super) peers: usize,
    pub(super) repo_blocks: u64,
    pub(super) repo_bytes: u64,
    pub(super) models_served: usize,
    /// Requests waiting in the served models' queues.
    pub(super) infer_queued: u64,
    /// Sequences in the running batches of the served generation models.
    pub(super) generations_running: u64,
    pub(super) serve: ServeMetrics,
    /// Inference calls this node made to peers.
    pub(super) call: CallMetrics,
    pub(super) dht: crate::p2p::DhtMetrics,
    pub(super) network: crate::p2p::NetworkStatus,
}

pub(super) async fn prometheus(State(api): State<Api>) -> ApiResult<impl IntoResponse> {
    let store = api.node.store();
    let stat = blocking(move || store.stat()).await?;
    let peers = (api.node.p2p().connected_peer_ids().await).map_err(ApiError::internal)?;
    let network = (api.node.p2p().network_status().await).map_err(ApiError::internal)?;
    let bitswap = api.node.bitswap();
    let server = api.node.infer_server();
    let served = server.served();
    let snapshot = Snapshot {
        bitswap: bitswap.stats(),
        gateways: bitswap.gateways().map(|g| g.stats()).unwrap_or_default(),
        wantlist: bitswap.wantlist().len(),
        peers: peers.len(),
        repo_blocks: stat.blocks,
        repo_bytes: stat.bytes,
        models_served: served.len(),
        infer_queued: served.iter().map(|(_, load)| u64::from(load.queued)).sum(),
        // A generation model's load counts its running batch as `workers`.
        generations_running: served
            .iter()
            .filter(|(model, _)| server.kind(model) == Some(ModelKind::Generate))
            .map(|(_, load)| u64::from(load.workers))
            .sum(),
        serve: server.metrics().clone(),
        call: api.node.infer_client().metrics().clone(),
        dht: api.node.p2p().dht_metrics().clone(),
        network,
    };
    let text = render(&snapshot).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}

/// The snapshot in Prometheus' text format, every name under `ipfs_accelerate_`.
pub(super) fn render(snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("ipfs_accelerate");
    let b = &snapshot.bitswap;
    let counters = [
        (
            "bitswap_blocks_received",
            "Wanted blocks received over Bitswap",
            b.blocks_received,
        ),
        (
            "bitswap_received_bytes",
            "Bytes of wanted blocks received",
            b.bytes_received,
        ),
        (
            "bitswap_duplicate_blocks",
            "Blocks received after another peer sent them",
            b.duplicate_blocks,
        ),
        (
            "bitswap_duplicate_bytes",
            "Bytes of duplicate blocks",
            b.duplicate_bytes,
        ),
        (
            "bitswap_messages_received",
            "Bitswap messages received",
            b.messages_received,
        ),
        (
            "bitswap_blocks_sent",
            "Blocks sent to peers over Bitswap",
            b.blocks_sent,
        ),
        ("bitswap_sent_bytes", "Bytes of blocks sent", b.bytes_sent),
        (
            "bitswap_peers_dropped",
            "Peers disconnected for misbehaving",
            b.peers_dropped,
        ),
    ];
    let g = &snapshot.gateways;
    let gateway_counters = [
        (
            "gateway_blocks_received",
            "Blocks fetched from the fallback HTTP gateways, verified",
            g.blocks,
        ),
        (
            "gateway_received_bytes",
            "Bytes of blocks fetched from gateways",
            g.bytes,
        ),
        (
            "gateway_failed_requests",
            "Gateway requests that brought no block (errors, timeouts, statuses)",
            g.failed_requests,
        ),
        (
            "gateway_wrong_blocks",
            "Gateway answers refused for not matching their CID",
            g.wrong_blocks,
        ),
    ];
    let n = &snapshot.network;
    let nat_counters = [
        (
            "hole_punches",
            "Relayed connections upgraded to direct ones by hole punching",
            n.hole_punches,
        ),
        (
            "hole_punch_failures",
            "Hole punching attempts that failed (the connection stays relayed)",
            n.hole_punch_failures,
        ),
    ];
    for (name, help, value) in counters
        .into_iter()
        .chain(gateway_counters)
        .chain(nat_counters)
    {
        registry.register(name, help, ConstCounter::new(value));
    }
    let gauges = [
        (
            "bitswap_wantlist",
            "Blocks this node is looking for",
            snapshot.wantlist as i64,
        ),
        ("peers", "Connected peers", snapshot.peers as i64),
        (
            "connections_direct",
            "Open connections to peers, direct",
            n.direct_connections as i64,
        ),
        (
            "connections_relayed",
            "Open connections to peers through a relay",
            n.relayed_connections as i64,
        ),
        (
            "relay_reservations",
            "Relays holding a reservation for this node",
            n.relay_reservations.len() as i64,
        ),
        (
            "publicly_reachable",
            "1 when AutoNAT found this node publicly reachable, 0 when private, -1 unknown",
            match n.reachability {
                crate::p2p::Reachability::Public => 1,
                crate::p2p::Reachability::Private => 0,
                crate::p2p::Reachability::Unknown => -1,
            },
        ),
        (
            "dht_routing_table_peers",
            "Peers in the DHT routing table",
            n.routing_table_size as i64,
        ),
        (
            "repo_blocks",
            "Blocks in the repo",
            snapshot.repo_blocks as i64,
        ),
        (
            "repo_bytes",
            "Bytes of blocks in the repo",
            snapshot.repo_bytes as i64,
        ),
        (
            "infer_models_served",
            "Models this node serves",
            snapshot.models_served as i64,
        ),
        (
            "infer_queued",
            "Inference requests waiting in the served models' queues",
            snapshot.infer_queued as i64,
        ),
        (
            "infer_generations_running",
            "Generations running now in the served models' batches",
            snapshot.generations_running as i64,
        ),
    ];
    for (name, help, value) in gauges {
        registry.register(name, help, ConstGauge::new(value));
    }
    registry.register(
        "infer_answers",
        "Inference requests this node answered, by outcome (ok or the refusal's code)",
        snapshot.serve.answers.clone(),
    );
    registry.register(
        "infer_answer_seconds",
        "Time from an inference request's arrival to its answer",
        snapshot.serve.seconds.clone(),
    );
    registry.register(
        "infer_batch_rows",
        "Rows (texts) in each batch the inference server ran",
        snapshot.serve.batch_rows.clone(),
    );
    registry.register(
        "infer_calls",
        "Inference calls this node made to peers serving a model, by outcome (ok, the refusal's code, no_providers, unusable, deadline or all_failed)",
        snapshot.call.calls.clone(),
    );
    registry.register(
        "infer_call_seconds",
        "Time from an inference call's start to its answer or failure, hedges and failovers included",
        snapshot.call.seconds.clone(),
    );
    registry.register(
        "dht_queries",
        "DHT queries this node ran, by kind (bootstrap, provide, find_providers, find_peer) and outcome",
        snapshot.dht.queries.clone(),
    );
    registry.register(
        "dht_query_seconds",
        "Time from a DHT query's start to its end",
        snapshot.dht.seconds.clone(),
    );
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_renders_as_prometheus_text() {
        let snapshot = Snapshot {
            bitswap: Stats {
                blocks_sent: 7,
                bytes_sent: 1792,
                ..Stats::default()
            },
            peers: 3,
            repo_bytes: 1 << 40,
            network: crate::p2p::NetworkStatus {
                reachability: crate::p2p::Reachability::Private,
                direct_connections: 2,
                relayed_connections: 1,
                hole_punches: 4,
                routing_table_size: 9,
                ..Default::default()
            },
            ..Snapshot::default()
        };
        snapshot.dht.record(
            "find_providers",
            false,
            std::time::Duration::from_millis(40),
        );
        snapshot
            .serve
            .record("busy", std::time::Duration::from_millis(3));
        snapshot.serve.batch_rows.observe(3.0);
        snapshot
            .call
            .calls
            .get_or_create(&vec![("outcome".into(), "deadline".into())])
            .inc();
        snapshot.call.seconds.observe(0.5);
        let text = render(&snapshot).unwrap();
        assert!(
            text.contains("# TYPE ipfs_accelerate_bitswap_blocks_sent counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\nipfs_accelerate_bitswap_blocks_sent_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("\nipfs_accelerate_bitswap_sent_bytes_total 1792\n"),
            "{text}"
        );
        assert!(text.contains("\nipfs_accelerate_peers 3\n"), "{text}");
        for line in [
            "ipfs_accelerate_connections_direct 2",
            "ipfs_accelerate_connections_relayed 1",
            "ipfs_accelerate_publicly_reachable 0",
            "ipfs_accelerate_hole_punches_total 4",
            "ipfs_accelerate_dht_routing_table_peers 9",
            "ipfs_accelerate_dht_queries_total{kind=\"find_providers\",outcome=\"error\"} 1",
            "ipfs_accelerate_dht_query_seconds_count 1",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "{line}: {text}");
        }
        assert!(
            text.contains("\nipfs_accelerate_repo_bytes 1099511627776\n"),
            "{text}"
        );
        assert!(
            text.contains("\nipfs_accelerate_infer_answers_total{outcome=\"busy\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nipfs_accelerate_infer_answer_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nipfs_accelerate_infer_batch_rows_bucket{le=\"4.0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nipfs_accelerate_infer_calls_total{outcome=\"deadline\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nipfs_accelerate_infer_call_seconds_sum 0.5\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
