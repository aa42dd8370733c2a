//! Each scenario at small scale, with the README's bars as assertions: real nodes (the
//! node's P2p with every behaviour) on the simulated network with 50 ms links.

use std::time::Duration;

use ipfs_accelerate_netsim::network::LinkConfig;
use ipfs_accelerate_netsim::scenario::{churn, dht, gossip, inference, nat, pull};
use ipfs_accelerate_netsim::sim::{NatSetup, Sim, SimConfig, Stack};

/// Longest a whole scenario may take here.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);
const LATENCY: Duration = Duration::from_millis(50);

fn config(nodes: usize, seed: u64) -> SimConfig {
    SimConfig {
        nodes,
        link: LinkConfig {
            latency: LATENCY,
            jitter: Duration::from_millis(10),
            bandwidth: Some(12_500_000),
            uplink: None,
            loss: 0.0,
        },
        seed,
        bootstrap_peers: 3,
        connections: ipfs_accelerate_node::p2p::ConnectionLimits::default(),
        dht_refresh: ipfs_accelerate_node::p2p::DEFAULT_DHT_REFRESH,
        time_dilation: 1,
        stack: Stack::Swarm,
        nat: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_lookups_find_every_provider_within_the_bars() {
    let report = tokio::time::timeout(SCENARIO_TIMEOUT, async {
        let mut sim = Sim::start(&config(40, 7)).await.unwrap();
        let params = dht::DhtParams {
            keys_per_node: 2,
            lookups: 100,
            concurrency: 16,
        };
        let report = dht::run(&mut sim, &params).await.unwrap();
        sim.shutdown().await;
        report
    })
    .await
    .expect("the scenario finished in time");
    assert_eq!(report.keys, 80);
    assert_eq!(report.lookups.lookups, 100);
    assert_eq!(report.lookups.success_rate, 1.0, "{report:?}");
    // A lookup that leaves its node needs at least one round trip; the bar is 600 ms
    // at p95. With half the nodes holding each record, about half the searchers hold
    // it themselves and answer at once, so the median is the seed's coin toss (under
    // rand 0.10's stream for seed 7 it is local): the floor is checked at p95.
    assert!(report.lookups.latency.p95_ms >= 100.0, "{report:?}");
    assert!(report.lookups.latency.p95_ms <= 600.0, "{report:?}");
    // Forty nodes are all connected, so a lookup asks over open connections: one
    // round trip, since the request goes out with its protocol proposal rather than
    // after the peer's yes (which would make it two, 200 ms).
    assert!(report.lookups.latency.p95_ms < 200.0, "{report:?}");
    // Every search reaches a record holder, within the bar of 4 hops at p95; with
    // half the nodes holding each record some searches hold it themselves, but not
    // every one.
    assert_eq!(report.hops.unreached, 0, "{report:?}");
    assert!(report.hops.p95 <= 4, "{report:?}");
    assert!(report.hops.max >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_reaches_every_node_within_six_link_latencies() {
    let report = tokio::time::timeout(SCENARIO_TIMEOUT, async {
        // On a clock four times slower, so that a test machine busy with other tests
        // does not stretch the slowest deliveries past the bar.
        let config = SimConfig {
            time_dilation: 4,
            ..config(40, 11)
        };
        let mut sim = Sim::start(&config).await.unwrap();
        let params = gossip::GossipParams {
            messages: 20,
            interval: Duration::from_millis(50),
        };
        let report = gossip::run(&mut sim, &params).await.unwrap();
        sim.shutdown().await;
        report
    })
    .await
    .expect("the scenario finished in time");
    assert_eq!(report.receivers, 40);
    assert_eq!(report.delivery_ratio, 1.0, "{report:?}");
    // Other nodes hear a message one link later at the earliest: a network that ran
    // faster than the scenario's clock would fail this, one slower the bar (6 link
    // latencies at p99).
    assert!(report.latency.p50_ms >= 50.0, "{report:?}");
    assert!(report.latency.p99_ms <= 300.0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_keep_succeeding_while_nodes_crash_and_return() {
    let report = tokio::time::timeout(SCENARIO_TIMEOUT, async {
        let mut sim = Sim::start(&config(40, 13)).await.unwrap();
        // A quarter of the nodes per minute, for 30 s: 5 crashes, and the first ones back.
        let params = churn::ChurnParams {
            churn_per_minute: 0.25,
            duration: Duration::from_secs(30),
            lookups_per_second: 5.0,
        };
        let report = churn::run(&mut sim, &params).await.unwrap();
        sim.shutdown().await;
        report
    })
    .await
    .expect("the scenario finished in time");
    assert!(report.crashes >= 4, "{report:?}");
    assert!(report.restarts >= 1, "{report:?}");
    assert!(report.lookups.lookups >= 100, "{report:?}");
    assert!(report.lookups.success_rate >= 0.99, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_pulling_one_model_take_most_of_it_from_each_other() {
    let report = tokio::time::timeout(SCENARIO_TIMEOUT, async {
        let mut config = config(11, 17);
        config.stack = Stack::Bitswap;
        // Every node sends at most 50 Mbit/s in all: the origin cannot send ten copies
        // at once as fast as the pullers can pass blocks on.
        config.link.uplink = Some(6_250_000);
        let mut sim = Sim::start(&config).await.unwrap();
        let params = pull::PullParams {
            pullers: 10,
            // 128 blocks, twice a puller's window of blocks in flight.
            size: 32 * 1024 * 1024,
            stagger: Duration::ZERO,
            timeout: Duration::from_secs(120),
        };
        let report = pull::run(&mut sim, &params).await.unwrap();
        sim.shutdown().await;
        report
    })
    .await
    .expect("the scenario finished in time");
    eprintln!("{}", pull::describe(&report));
    assert_eq!(report.completed, 10, "{report:?}");
    assert!(report.model_bytes > 32 * 1024 * 1024, "{report:?}");
    assert_eq!(report.peers_dropped, 0, "{report:?}");
    // A central server sends 10 copies; here the origin sends about 1.8, within the
    // issue's bar of 3 (its 50-peer run is in the README). Everyone asking the origin
    // gave 10.0, and Bitswap before per-peer limits and a wants-only stream 4 to 5.
    assert!(report.origin_egress_multiple >= 1.0, "{report:?}");
    assert!(report.origin_egress_multiple <= 3.0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_when_the_busiest_provider_crashes() {
    let repos = tempfile::tempdir().unwrap();
    let report = tokio::time::timeout(SCENARIO_TIMEOUT, async {
        let mut config = config(16, 19);
        config.stack = Stack::Node(repos.path().to_path_buf());
        let mut sim = Sim::start(&config).await.unwrap();
        let params = inference::InferParams {
            providers: 3,
            clients: 6,
            requests_per_client: 30,
            in_flight: 2,
            model_dir: inference::DEFAULT_MODEL_DIR.into(),
            deadline: Duration::from_secs(10),
        };
        let report = inference::run(&mut sim, &params).await.unwrap();
        sim.shutdown().await;
        report
    })
    .await
    .expect("the scenario finished in time");
    assert_eq!(report.calls, 180, "{report:?}");
    // The crash costs the callers nothing but time: every call is answered.
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.calls_after_crash > 0, "{report:?}");
    let shares = &report.answers_per_provider;
    assert_eq!(shares.iter().map(|p| p.answered).sum::<usize>(), 180);
    // The crashed provider answered before it went; the calls after it went to the others.
    assert!(
        shares.iter().any(|p| p.crashed && p.answered > 0),
        "{report:?}"
    );
    assert!(
        shares
            .iter()
            .filter(|p| !p.crashed)
            .map(|p| p.answered)
            .sum::<usize>()
            >= report.calls_after_crash,
        "{report:?}"
    );
    // A call needs a round trip over two 50 ms links.
    assert!(report.latency.p50_ms >= 100.0, "{report:?}");
}

#[test]
fn latency_plots_are_svg() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cdf.svg");
    let samples: Vec<Duration> = (1..=50).map(|ms| Duration::from_millis(ms * 10)).collect();
    ipfs_accelerate_netsim::plot::latency_cdf(&path, "test", &[("lookup", &samples)]).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "no curve drawn"
    );
    assert!(svg.contains("latency (ms)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natted_nodes_reserve_on_relays_and_are_reached_through_them() {
    let report = tokio::time::timeout(SCENARIO_TIMEOUT, async {
        let config = SimConfig {
            nat: Some(NatSetup {
                share: 0.6,
                cone_share: 0.5,
                relays: 3,
            }),
            ..config(20, 5)
        };
        let mut sim = Sim::start(&config).await.unwrap();
        let params = nat::NatParams {
            providers: 6,
            calls: 3,
            concurrency: 6,
            settle: Duration::from_secs(60),
        };
        let report = nat::run(&mut sim, &params).await.unwrap();
        sim.shutdown().await;
        report
    })
    .await
    .expect("the scenario finished in time");
    assert_eq!((report.natted, report.cone, report.relays), (12, 6, 3));
    // AutoNAT finds every NATed node private, and each then reserves on a relay.
    assert_eq!(report.natted_found_private, 12, "{report:?}");
    assert_eq!(report.natted_reserved, 12, "{report:?}");
    // Callers not yet connected reach NATed providers, and some through a relay.
    assert!(report.reached >= 5, "{report:?}");
    assert!(
        report.relayed_then_direct + report.relayed_only >= 3,
        "{report:?}"
    );
    // A call through a relay crosses two links each way: at least 200 ms.
    if report.relayed.count > 0 {
        assert!(report.relayed.p50_ms >= 200.0, "{report:?}");
    }
}
