//! `ipfs-accelerate doctor`: checks a node end to end and, for each problem, names its
//! likely cause and the fix. With a daemon running, everything goes through its API
//! and gateway as any client's would; with none, it says so and checks what it can
//! offline (the repo, its datastore, whether the daemon's addresses are free). Exits
//! non-zero when a check fails; warnings (not reachable from the internet, no peers)
//! do not.

mod checks;
mod probe;

use std::path::Path;

use anyhow::{Result, bail};
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::repo::{self, Repo};
use ipfs_accelerate_node::{NodeConfig, swarm_key};
use serde::Serialize;

use self::checks::{ApiFact, Check, GatewayFact, NetworkFact, RepoFact, Status};
use crate::api::Client;
use crate::output::print_json;

/// What `--json` prints: one object.
#[derive(Debug, Serialize)]
struct Report<'a> {
    healthy: bool,
    checks: &'a [Check],
}

pub(crate) fn run(path: &Path, json: bool) -> Result<()> {
    let checks = diagnose(path);
    let healthy = checks::healthy(&checks);
    if json {
        print_json(&Report {
            healthy,
            checks: &checks,
        })?;
    } else {
        print_text(&checks);
    }
    if !healthy {
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name)
            .collect();
        bail!(
            "doctor found {} problem(s): {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Every check that applies to the repo at `path`, in order.
fn diagnose(path: &Path) -> Vec<Check> {
    let config = match Repo::read_config(path) {
        Ok(config) => config,
        Err(error) => return vec![checks::repo(&unreadable_config(path, error))],
    };
    match connect(path, &config) {
        Ok((client, id)) => online(path, &config, &client, &id),
        Err(api) => offline(path, &config, &api),
    }
}

fn unreadable_config(path: &Path, error: repo::Error) -> RepoFact {
    match error {
        repo::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            RepoFact::Missing {
                path: path.display().to_string(),
            }
        }
        repo::Error::Config { reason, .. } => RepoFact::BadConfig(reason),
        error => RepoFact::Unreadable(error.to_string()),
    }
}

/// The daemon's API client and its `id` answer, or why there is none.
fn connect(path: &Path, config: &NodeConfig) -> Result<(Client, types::Id), ApiFact> {
    let Some(addr) = probe::api_file_addr(path) else {
        let addr = config.network.api.clone();
        let bind = probe::bind(&addr);
        return Err(ApiFact::NotRunning { addr, bind });
    };
    let silent = |error: anyhow::Error| ApiFact::Silent {
        addr: addr.clone(),
        error: format!("{error:#}"),
    };
    let client = match Client::from_repo(path) {
        Ok(Some(client)) => client.with_timeout(probe::PROBE_TIMEOUT),
        // The daemon stopped between the two reads.
        Ok(None) => {
            let addr = config.network.api.clone();
            let bind = probe::bind(&addr);
            return Err(ApiFact::NotRunning { addr, bind });
        }
        Err(error) => return Err(silent(error)),
    };
    let id = client.json::<types::Id>("id", &[]).map_err(silent)?;
    Ok((client, id))
}

fn online(path: &Path, config: &NodeConfig, client: &Client, id: &types::Id) -> Vec<Check> {
    let addr = probe::api_file_addr(path).unwrap_or_default();
    let mut checks = vec![checks::api(&ApiFact::Answered {
        addr,
        peer: id.id.clone(),
    })];
    let url = probe::gateway_url(path, &config.network.gateway);
    let answer = probe::gateway(&url);
    checks.push(checks::gateway(&GatewayFact::Asked { url, answer }));
    checks.push(checks::round_trip(&probe::round_trip_api(client)));
    let repo = match client.json::<types::RepoStat>("repo/stat", &[]) {
        Ok(stat) => probe::repo_stat(stat.num_objects, stat.repo_size, config),
        Err(error) => RepoFact::Unreadable(format!("{error:#}")),
    };
    checks.push(checks::repo(&repo));
    let network = client.json::<types::NetworkStatus>("accelerate/network", &[]);
    let running_private = network.as_ref().ok().map(|net| net.private_swarm);
    checks.push(checks::swarm(&swarm_key_of(path), false, running_private));
    let connections = match network {
        Ok(net) => {
            let fact = network_fact(&net, config);
            checks.extend([
                checks::listen(&net.listen_addresses),
                checks::reachability(&fact),
                checks::relays(&fact),
                checks::dht(net.routing_table_size),
            ]);
            Some((net.direct_connections, net.relayed_connections))
        }
        Err(error) => {
            checks.push(unanswered("network", "accelerate/network", error));
            None
        }
    };
    checks.push(match client.json::<types::SwarmPeers>("swarm/peers", &[]) {
        Ok(peers) => checks::peers(peers.peers.len(), connections),
        Err(error) => unanswered("peers", "swarm/peers", error),
    });
    checks.push(
        match client.json::<types::ModelList>("accelerate/model/ls", &[]) {
            Ok(list) => checks::models(&served(&list)),
            Err(error) => unanswered("models", "accelerate/model/ls", error),
        },
    );
    checks
}

fn network_fact(net: &types::NetworkStatus, config: &NodeConfig) -> NetworkFact {
    NetworkFact {
        reachability: net.reachability.clone(),
        public_addresses: net.public_addresses.clone(),
        relay_reservations: net.relay_reservations.clone(),
        relay_service: net.relay_service,
        autonat: config.network.autonat,
        relay_client: config.network.relay_client,
    }
}

/// A daemon that answered `id` but failed a later call.
fn unanswered(name: &'static str, call: &str, error: anyhow::Error) -> Check {
    checks::unanswered(name, call, &format!("{error:#}"))
}

/// The models the daemon serves, each once, as `name@version`.
fn served(list: &types::ModelList) -> Vec<String> {
    let mut served: Vec<String> = list
        .models
        .iter()
        .filter(|m| m.serving)
        .map(|m| format!("{}@{}", m.name, m.version))
        .collect();
    served.sort();
    served.dedup();
    served
}

fn offline(path: &Path, config: &NodeConfig, api: &ApiFact) -> Vec<Check> {
    let mut checks = vec![checks::api(api)];
    let (repo, opened) = probe::open_repo(path);
    checks.push(checks::repo(&repo));
    if let Some(opened) = &opened {
        checks.push(checks::round_trip(&probe::round_trip_store(opened.store())));
    }
    // The lock is let go before the addresses are tried: a daemon may start now.
    drop(opened);
    let addr = config.network.gateway.clone();
    let bind = probe::bind(&addr);
    checks.push(checks::gateway(&GatewayFact::Offline { addr, bind }));
    let forced = swarm_key::check_forced(None).is_err();
    checks.push(checks::swarm(&swarm_key_of(path), forced, None));
    checks
}

/// The repo's swarm key as its fingerprint, none, or why it cannot be read.
fn swarm_key_of(path: &Path) -> Result<Option<String>, String> {
    swarm_key::load(path)
        .map(|key| key.map(|k| k.fingerprint().to_string()))
        .map_err(|e| e.to_string())
}

fn print_text(checks: &[Check]) {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for check in checks {
        let status = match check.status {
            Status::Pass => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        println!("{status}  {:width$}  {}", check.name, check.detail);
        let indent = 4 + 2 + width + 2;
        if let Some(cause) = &check.cause {
            println!("{:indent$}cause: {cause}", "");
        }
        if let Some(fix) = &check.fix {
            println!("{:indent$}fix:   {fix}", "");
        }
    }
    let count = |status| checks.iter().filter(|c| c.status == status).count();
    println!(
        "{} passed, {} warned, {} failed",
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    );
}
