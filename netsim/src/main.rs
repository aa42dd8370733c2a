//! `netsim SCENARIO --nodes N --latency-ms L ... [--json OUT]`: runs one scenario on a
//! simulated swarm and prints its figures (and writes them as JSON).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use ipfs_accelerate_netsim::network::LinkConfig;
use ipfs_accelerate_netsim::plot;
use ipfs_accelerate_netsim::scenario::{churn, dht, gossip, inference, nat, pull};
use ipfs_accelerate_netsim::sim::{NatSetup, Sim, SimConfig, Stack, resident_bytes};
use ipfs_accelerate_netsim::stats::CpuMeter;
use ipfs_accelerate_node::p2p;
use serde_json::json;

/// Thousands of swarms allocate and free small buffers on every stream from both
/// threads; glibc's allocator spends most of the run in its bins, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Many ipfs-accelerate peers in one process over a simulated network")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Every node provides keys; random nodes look them up.
    Dht {
        #[command(flatten)]
        common: Common,
        /// Keys each node provides.
        #[arg(long, default_value_t = 1)]
        keys_per_node: usize,
        /// Lookups, each by a random node for a random key.
        #[arg(long, default_value_t = 1000)]
        lookups: usize,
        /// Lookups running at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Nodes crash and come back at a steady rate while random nodes look up keys.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Share of the nodes that crash per minute (each is back 10 s later).
        #[arg(long, default_value_t = 0.1)]
        churn_per_minute: f64,
        /// How long the churn lasts, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 10.0)]
        lookups_per_second: f64,
    },
    /// Random publishers send announcements on one topic every node subscribes to.
    Gossip {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Milliseconds between two publications.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
    /// Peers pull one model over Bitswap from one origin, each providing it when done.
    SwarmPull {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50)]
        pullers: usize,
        /// Size of the model file, in MiB.
        #[arg(long, default_value_t = 100)]
        size_mib: u64,
        /// Milliseconds between two pullers starting (0: all at once).
        #[arg(long, default_value_t = 0)]
        stagger_ms: u64,
        /// Longest one pull may take, in seconds.
        #[arg(long, default_value_t = 1200)]
        timeout_secs: u64,
    },
    /// dht, gossip and churn in turn on one swarm, whose start is most of a
    /// 1000-node run (keys per node 1, 16 lookups at once).
    Suite {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        lookups: usize,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Milliseconds between two gossip publications.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        #[arg(long, default_value_t = 0.1)]
        churn_per_minute: f64,
        /// How long the churn lasts, in seconds.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        #[arg(long, default_value_t = 10.0)]
        lookups_per_second: f64,
    },
    /// Providers serve a small model, clients call it, the busiest provider crashes halfway.
    InferenceLoad {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 3)]
        providers: usize,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        requests_per_client: usize,
        /// Calls each client keeps in flight.
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        /// The model folder the providers serve (default: the repo's tiny BERT fixture).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Longest one call may take, failovers included, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        deadline_ms: u64,
    },
    /// A share of the nodes behind NATs, a few open relays: reservations, providers
    /// reached, hole punches, and inference through a relay against direct.
    Nat {
        #[command(flatten)]
        common: Common,
        /// Share of all nodes behind a NAT that takes no connection in.
        #[arg(long, default_value_t = 0.6)]
        nat_share: f64,
        /// Share of the NATed nodes behind a cone (port-preserving) NAT, which a hole
        /// punch gets through; the rest are symmetric.
        #[arg(long, default_value_t = 0.5)]
        cone_share: f64,
        /// Open nodes (1 to N) that relay and that every other node bootstraps from.
        #[arg(long, default_value_t = 5)]
        relays: usize,
        /// NATed providers tried, each by one random node not connected to it.
        #[arg(long, default_value_t = 100)]
        providers: usize,
        /// Timed calls to each provider reached.
        #[arg(long, default_value_t = 5)]
        calls: usize,
        /// Providers tried at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Longest wait for every NATed node to hold a relay reservation, in seconds.
        #[arg(long, default_value_t = 120)]
        settle_secs: u64,
    },
}

#[derive(Args)]
struct Common {
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// One-way latency of every link.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Each connection's latency is up to this much more, drawn once.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Bandwidth of a connection each way, in Mbit/s (none: no cap).
    #[arg(long)]
    bandwidth_mbps: Option<f64>,
    /// What a node sends over all its connections together, in Mbit/s (none: no cap).
    #[arg(long)]
    uplink_mbps: Option<f64>,
    /// Chance a packet is lost (and retransmitted late).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Earlier nodes each node dials when it starts.
    #[arg(long, default_value_t = 3)]
    bootstrap_peers: usize,
    /// Connected peers each node's connection manager trims down to.
    #[arg(long, default_value_t = 32)]
    low_water: usize,
    /// Connected peers above which it trims.
    #[arg(long, default_value_t = 96)]
    high_water: usize,
    /// Seconds between two DHT refreshes of each node (the node's default: 600). Two
    /// cores cannot run a thousand nodes' refreshes and a scenario at once; real nodes
    /// each have their own CPU.
    #[arg(long, default_value_t = 600)]
    dht_refresh_secs: u64,
    /// Run the network and the nodes' protocol timers this many times slower than the
    /// wall clock, and report latencies in simulated time: each simulated second gets
    /// this many seconds of CPU, so that a thousand nodes on two cores are not all
    /// waiting for a core (dht, gossip, churn and suite).
    #[arg(long, default_value_t = 1)]
    time_dilation: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the latency distribution here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

impl Common {
    /// Draws the latency distributions to `--plot`, if given, titled with the swarm.
    fn plot(&self, what: &str, series: &[(&str, &[Duration])]) -> Result<()> {
        let Some(path) = &self.plot else {
            return Ok(());
        };
        let title = format!("{what}, {} nodes, {} ms links", self.nodes, self.latency_ms);
        plot::latency_cdf(path, &title, series)
    }

    fn sim_config(&self, stack: Stack) -> SimConfig {
        SimConfig {
            nodes: self.nodes,
            link: LinkConfig {
                latency: Duration::from_millis(self.latency_ms),
                jitter: Duration::from_millis(self.jitter_ms),
                bandwidth: self.bandwidth_mbps.map(bytes_per_second),
                uplink: self.uplink_mbps.map(bytes_per_second),
                loss: self.loss,
            },
            seed: self.seed,
            bootstrap_peers: self.bootstrap_peers,
            connections: p2p::ConnectionLimits {
                low_water: self.low_water,
                high_water: self.high_water,
                ..p2p::ConnectionLimits::default()
            },
            dht_refresh: Duration::from_secs(self.dht_refresh_secs),
            time_dilation: self.time_dilation,
            stack,
            nat: None,
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,ipfs_accelerate_netsim=info,libp2p_kad=error,libp2p_gossipsub=error,yamux=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let common = match &cli.scenario {
            Scenario::Dht { common, .. }
            | Scenario::Churn { common, .. }
            | Scenario::Gossip { common, .. }
            | Scenario::SwarmPull { common, .. }
            | Scenario::Suite { common, .. }
            | Scenario::InferenceLoad { common, .. }
            | Scenario::Nat { common, .. } => common,
        };
        // Whole nodes keep their repos here, removed when the run ends.
        let repos = tempfile::tempdir()?;
        let stack = match cli.scenario {
            Scenario::SwarmPull { .. } => Stack::Bitswap,
            Scenario::InferenceLoad { .. } => Stack::Node(repos.path().to_path_buf()),
            _ => Stack::Swarm,
        };
        let memory_before = resident_bytes();
        let started = Instant::now();
        let mut config = common.sim_config(stack);
        if let Scenario::Nat {
            nat_share,
            cone_share,
            relays,
            ..
        } = &cli.scenario
        {
            config.nat = Some(NatSetup {
                share: *nat_share,
                cone_share: *cone_share,
                relays: *relays,
            });
        }
        let mut sim = Sim::start(&config).await?;
        let start_seconds = started.elapsed().as_secs_f64();
        let per_node = match (memory_before, resident_bytes()) {
            (Some(before), Some(after)) => {
                Some(after.saturating_sub(before) / common.nodes.max(1) as u64)
            }
            _ => None,
        };
        let connections = sim.mean_connections().await;
        eprintln!(
            "{} nodes up in {start_seconds:.1} s, {} KiB and {connections:.0} connections each",
            common.nodes,
            per_node.map_or(0, |b| b / 1024)
        );
        let (name, results) = match &cli.scenario {
            Scenario::Dht {
                keys_per_node,
                lookups,
                concurrency,
                ..
            } => {
                let params = dht::DhtParams {
                    keys_per_node: *keys_per_node,
                    lookups: *lookups,
                    concurrency: *concurrency,
                };
                let (report, busy) = metered(dht::run(&mut sim, &params)).await?;
                println!("dht: {}{}", describe_dht(&report), describe_busy(busy));
                common.plot("DHT lookups", &[("lookup", &report.lookups.samples)])?;
                ("dht", with_cpu(&report, busy)?)
            }
            Scenario::Churn {
                churn_per_minute,
                seconds,
                lookups_per_second,
                ..
            } => {
                let params = churn::ChurnParams {
                    churn_per_minute: *churn_per_minute,
                    duration: Duration::from_secs(*seconds),
                    lookups_per_second: *lookups_per_second,
                };
                let (report, busy) = metered(churn::run(&mut sim, &params)).await?;
                println!("churn: {}{}", describe_churn(&report), describe_busy(busy));
                common.plot(
                    "DHT lookups under churn",
                    &[("lookup", &report.lookups.samples)],
                )?;
                ("churn", with_cpu(&report, busy)?)
            }
            Scenario::Gossip {
                messages,
                interval_ms,
                ..
            } => {
                let params = gossip::GossipParams {
                    messages: *messages,
                    interval: Duration::from_millis(*interval_ms),
                };
                let (report, busy) = metered(gossip::run(&mut sim, &params)).await?;
                println!(
                    "gossip: {}{}",
                    describe_gossip(&report),
                    describe_busy(busy)
                );
                common.plot("Gossip delivery", &[("delivery", &report.samples)])?;
                ("gossip", with_cpu(&report, busy)?)
            }
            Scenario::SwarmPull {
                pullers,
                size_mib,
                stagger_ms,
                timeout_secs,
                ..
            } => {
                let params = pull::PullParams {
                    pullers: *pullers,
                    size: size_mib * 1024 * 1024,
                    stagger: Duration::from_millis(*stagger_ms),
                    timeout: Duration::from_secs(*timeout_secs),
                };
                let (report, busy) = metered(pull::run(&mut sim, &params)).await?;
                println!(
                    "swarm-pull: {}{}",
                    pull::describe(&report),
                    describe_busy(busy)
                );
                common.plot(
                    &format!("{pullers} peers pulling {size_mib} MiB"),
                    &[("completion", &report.samples)],
                )?;
                ("swarm-pull", with_cpu(&report, busy)?)
            }
            Scenario::Suite {
                lookups,
                messages,
                interval_ms,
                churn_per_minute,
                seconds,
                lookups_per_second,
                ..
            } => {
                let (dht, dht_busy) = metered(dht::run(
                    &mut sim,
                    &dht::DhtParams {
                        keys_per_node: 1,
                        lookups: *lookups,
                        concurrency: 16,
                    },
                ))
                .await?;
                println!("dht: {}{}", describe_dht(&dht), describe_busy(dht_busy));
                let (gossip, gossip_busy) = metered(gossip::run(
                    &mut sim,
                    &gossip::GossipParams {
                        messages: *messages,
                        interval: Duration::from_millis(*interval_ms),
                    },
                ))
                .await?;
                println!(
                    "gossip: {}{}",
                    describe_gossip(&gossip),
                    describe_busy(gossip_busy)
                );
                let (churn, churn_busy) = metered(churn::run(
                    &mut sim,
                    &churn::ChurnParams {
                        churn_per_minute: *churn_per_minute,
                        duration: Duration::from_secs(*seconds),
                        lookups_per_second: *lookups_per_second,
                    },
                ))
                .await?;
                println!(
                    "churn: {}{}",
                    describe_churn(&churn),
                    describe_busy(churn_busy)
                );
                let series = [
                    ("DHT lookup", &dht.lookups.samples[..]),
                    ("gossip delivery", &gossip.samples[..]),
                    ("DHT lookup under churn", &churn.lookups.samples[..]),
                ];
                common.plot("dht, gossip and churn", &series)?;
                (
                    "suite",
                    json!({
                        "dht": with_cpu(&dht, dht_busy)?,
                        "gossip": with_cpu(&gossip, gossip_busy)?,
                        "churn": with_cpu(&churn, churn_busy)?,
                    }),
                )
            }
            Scenario::InferenceLoad {
                providers,
                clients,
                requests_per_client,
                in_flight,
                model_dir,
                deadline_ms,
                ..
            } => {
                let params = inference::InferParams {
                    providers: *providers,
                    clients: *clients,
                    requests_per_client: *requests_per_client,
                    in_flight: *in_flight,
                    model_dir: model_dir
                        .clone()
                        .unwrap_or_else(|| inference::DEFAULT_MODEL_DIR.into()),
                    deadline: Duration::from_millis(*deadline_ms),
                };
                let (report, busy) = metered(inference::run(&mut sim, &params)).await?;
                println!(
                    "inference-load: {}{}",
                    inference::describe(&report),
                    describe_busy(busy)
                );
                common.plot(
                    &format!("{clients} clients calling {providers} providers"),
                    &[("call", &report.samples)],
                )?;
                ("inference-load", with_cpu(&report, busy)?)
            }
            Scenario::Nat {
                providers,
                calls,
                concurrency,
                settle_secs,
                ..
            } => {
                let params = nat::NatParams {
                    providers: *providers,
                    calls: *calls,
                    concurrency: *concurrency,
                    settle: Duration::from_secs(*settle_secs),
                };
                let (report, busy) = metered(nat::run(&mut sim, &params)).await?;
                println!("nat: {}{}", nat::describe(&report), describe_busy(busy));
                common.plot(
                    "Inference calls to NATed providers",
                    &[
                        ("through a relay", &report.relayed_samples),
                        ("direct", &report.direct_samples),
                    ],
                )?;
                ("nat", with_cpu(&report, busy)?)
            }
        };
        sim.shutdown().await;
        if let Some(path) = &common.json {
            let report = json!({
                "scenario": name,
                "nodes": common.nodes,
                "latency_ms": common.latency_ms,
                "jitter_ms": common.jitter_ms,
                "bandwidth_mbps": common.bandwidth_mbps,
                "uplink_mbps": common.uplink_mbps,
                "loss": common.loss,
                "seed": common.seed,
                "time_dilation": common.time_dilation,
                "start_seconds": start_seconds,
                "memory_per_node_bytes": per_node,
                "connections_per_node": connections,
                "results": results,
            });
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        }
        anyhow::Ok(())
    })
}

/// Runs a scenario, measuring the share of the cores it kept busy.
async fn metered<T>(scenario: impl Future<Output = Result<T>>) -> Result<(T, Option<f64>)> {
    let meter = CpuMeter::start();
    let report = scenario.await?;
    Ok((report, meter.busy()))
}

/// A scenario's report as JSON, with the share of the cores it kept busy.
fn with_cpu(report: &impl serde::Serialize, busy: Option<f64>) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(report)?;
    value["cpu_busy"] = json!(busy);
    Ok(value)
}

/// The end of a scenario's line: how busy it kept the cores.
fn describe_busy(busy: Option<f64>) -> String {
    busy.map_or_else(String::new, |busy| {
        format!("; cores {:.0}% busy", busy * 100.0)
    })
}

fn bytes_per_second(mbit_per_second: f64) -> u64 {
    (mbit_per_second * 1_000_000.0 / 8.0) as u64
}

fn describe_gossip(report: &gossip::GossipReport) -> String {
    format!(
        "{:.2}% delivered ({} of {} x {}); latency p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
        report.delivery_ratio * 100.0,
        report.delivered,
        report.messages,
        report.receivers,
        report.latency.p50_ms,
        report.latency.p95_ms,
        report.latency.p99_ms
    )
}

fn describe_churn(report: &churn::ChurnReport) -> String {
    format!(
        "{} crashes, {} restarts; {}",
        report.crashes,
        report.restarts,
        describe(&report.lookups)
    )
}

/// One line on a set of DHT lookups.
fn describe(lookups: &dht::Lookups) -> String {
    format!(
        "{}/{} lookups found the provider ({:.2}%; missed {}, failed {}, timed out {}); latency p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
        lookups.found,
        lookups.lookups,
        lookups.success_rate * 100.0,
        lookups.missed,
        lookups.failed,
        lookups.timed_out,
        lookups.latency.p50_ms,
        lookups.latency.p95_ms,
        lookups.latency.p99_ms,
    )
}

/// One line on the dht scenario: its lookups, and the hops their searches take.
fn describe_dht(report: &dht::DhtReport) -> String {
    let hops = &report.hops;
    format!(
        "{}; hops p50 {}, p95 {}, max {} ({} reached no record)",
        describe(&report.lookups),
        hops.p50,
        hops.p95,
        hops.max,
        hops.unreached
    )
}
