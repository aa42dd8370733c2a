//! What `doctor` concludes. Each check is plain data (name, status, what was found,
//! and for a problem its likely cause and the fix), decided by a small function from
//! facts gathered elsewhere ([`super::probe`]), so every decision is tested without a
//! daemon.

use std::time::Duration;

use serde::Serialize;

/// The empty UnixFS directory, which every gateway serves.
pub(crate) const EMPTY_DIR: &str = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn";

/// How a check came out. Only `fail` makes `doctor` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Pass,
    /// Works, but less than it could (not reachable from the internet, no peers yet).
    Warn,
    /// Broken: something the user has to fix.
    Fail,
}

/// One check's result, as printed and as `--json` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) status: Status,
    pub(crate) detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
            cause: None,
            fix: None,
        }
    }

    fn problem(
        status: Status,
        name: &'static str,
        detail: impl Into<String>,
        cause: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            cause: Some(cause.into()),
            fix: Some(fix.into()),
        }
    }

    fn warn(
        name: &'static str,
        detail: impl Into<String>,
        cause: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::problem(Status::Warn, name, detail, cause, fix)
    }

    fn fail(
        name: &'static str,
        detail: impl Into<String>,
        cause: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::problem(Status::Fail, name, detail, cause, fix)
    }
}

/// Whether this process could listen on an address (tried, then let go at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    Free,
    /// Another process listens there.
    Taken,
    /// Not an address of this machine, a privileged port, or no address at all.
    Refused(String),
}

/// What was learnt about the daemon's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiFact {
    /// No `api` file: no daemon holds the repo. `addr` is the configured API address.
    NotRunning { addr: String, bind: Bind },
    /// The `api` file names `addr`, and `id` was answered there.
    Answered { addr: String, peer: String },
    /// The `api` file names `addr`, and nothing answered there.
    Silent { addr: String, error: String },
}

pub(crate) fn api(fact: &ApiFact) -> Check {
    const NAME: &str = "api";
    const START: &str = "start it: `ipfs-accelerate daemon`";
    match fact {
        ApiFact::Answered { addr, peer } => {
            Check::pass(NAME, format!("the daemon answers at {addr} (peer {peer})"))
        }
        ApiFact::NotRunning {
            bind: Bind::Free, ..
        } => Check::fail(
            NAME,
            "no daemon is running on this repo (the network checks need one)",
            "the daemon was not started, or it has stopped",
            START,
        ),
        ApiFact::NotRunning {
            addr,
            bind: Bind::Taken,
        } => Check::fail(
            NAME,
            format!(
                "no daemon is running on this repo, and its API address {addr} is taken by another process"
            ),
            format!(
                "another program (or the daemon of another repo) listens on {addr}, so the daemon cannot bind its API there and refuses to start"
            ),
            "stop that process, or give this repo another API address: `api` under [network] in config.toml, or `daemon --api HOST:PORT`",
        ),
        ApiFact::NotRunning {
            addr,
            bind: Bind::Refused(error),
        } => Check::fail(
            NAME,
            format!(
                "no daemon is running on this repo, and it cannot listen on its API address {addr}: {error}"
            ),
            "the address is not one of this machine's, or the port needs privileges",
            "set `api` under [network] in config.toml (or `daemon --api HOST:PORT`) to an address of this machine, e.g. 127.0.0.1:5001",
        ),
        ApiFact::Silent { addr, error } => Check::fail(
            NAME,
            format!("the repo's api file names {addr}, but no daemon answers there: {error}"),
            "the daemon stopped without removing its api file (killed or crashed), or it is stuck",
            "start `ipfs-accelerate daemon` (it replaces the file); if a daemon is running but stuck, stop it first",
        ),
    }
}

/// What the gateway answered for the empty directory's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GatewayAnswer {
    /// The bytes hash to the empty directory's CID.
    Verified,
    Status(u16),
    /// A success whose bytes are not the empty directory's.
    WrongBytes,
    Unreachable(String),
}

/// What was learnt about the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GatewayFact {
    /// A daemon runs: its gateway at `url` was asked.
    Asked { url: String, answer: GatewayAnswer },
    /// No daemon runs: whether it could bind the configured gateway address.
    Offline { addr: String, bind: Bind },
}

pub(crate) fn gateway(fact: &GatewayFact) -> Check {
    const NAME: &str = "gateway";
    let other_server = |url: &str| {
        format!("another HTTP server answers at {url}: the daemon's gateway is elsewhere")
    };
    const CHECK_ADDRESS: &str = "check `gateway` under [network] in config.toml against the daemon's `Gateway server listening on` line, and restart the daemon";
    match fact {
        GatewayFact::Asked {
            url,
            answer: GatewayAnswer::Verified,
        } => Check::pass(
            NAME,
            format!(
                "{url} serves the empty directory {EMPTY_DIR}, its bytes verified against the CID"
            ),
        ),
        GatewayFact::Asked {
            url,
            answer: GatewayAnswer::Status(status),
        } => Check::fail(
            NAME,
            format!("{url}/ipfs/{EMPTY_DIR} answered HTTP {status}"),
            other_server(url),
            CHECK_ADDRESS,
        ),
        GatewayFact::Asked {
            url,
            answer: GatewayAnswer::WrongBytes,
        } => Check::fail(
            NAME,
            format!("{url} answered bytes that are not the empty directory's block"),
            other_server(url),
            CHECK_ADDRESS,
        ),
        GatewayFact::Asked {
            url,
            answer: GatewayAnswer::Unreachable(error),
        } => Check::fail(
            NAME,
            format!("the gateway at {url} does not answer: {error}"),
            "the daemon's gateway stopped, or the repo's gateway file is left from an earlier daemon",
            "restart the daemon: `ipfs-accelerate shutdown`, then `ipfs-accelerate daemon`",
        ),
        GatewayFact::Offline {
            addr,
            bind: Bind::Free,
        } => Check::pass(NAME, format!("{addr} is free for the daemon's gateway")),
        GatewayFact::Offline {
            addr,
            bind: Bind::Taken,
        } => Check::fail(
            NAME,
            format!("the gateway address {addr} is taken by another process"),
            format!(
                "another program (or the daemon of another repo) listens on {addr}, so the daemon cannot bind its gateway there and refuses to start"
            ),
            "stop that process, or give this repo another gateway address: `gateway` under [network] in config.toml (e.g. \"127.0.0.1:8081\"), or `daemon --gateway HOST:PORT`",
        ),
        GatewayFact::Offline {
            addr,
            bind: Bind::Refused(error),
        } => Check::fail(
            NAME,
            format!("the daemon could not listen on its gateway address {addr}: {error}"),
            "the address is not one of this machine's, or the port needs privileges",
            "set `gateway` under [network] in config.toml (or `daemon --gateway HOST:PORT`) to an address of this machine, e.g. 127.0.0.1:8080",
        ),
    }
}

/// Where the round trip's block went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// Through the daemon's API (`block/put`, `block/get`, `block/rm`).
    Api,
    /// Straight into the repo's datastore, with no daemon running.
    Datastore,
}

/// Where a store-then-read round trip went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RoundTripFailure {
    Put(String),
    /// The block was stored under another CID than its bytes give.
    WrongCid {
        expected: String,
        got: String,
    },
    Get(String),
    /// The bytes read back differ from those stored.
    WrongBytes,
    /// Stored and read back, but not removed.
    Remove(String),
}

/// A round trip of `bytes` bytes and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoundTrip {
    pub(crate) via: Via,
    pub(crate) bytes: usize,
    pub(crate) result: Result<Duration, RoundTripFailure>,
}

pub(crate) fn round_trip(trip: &RoundTrip) -> Check {
    const NAME: &str = "round trip";
    const DAMAGED: &str = "the datastore (datastore.redb) is damaged, or the disk under it fails";
    const VERIFY: &str = "run `ipfs-accelerate repo verify` and check the disk; restore the repo from a copy if blocks are corrupt";
    let through = match trip.via {
        Via::Api => "through the API",
        Via::Datastore => "in the datastore (no daemon)",
    };
    match &trip.result {
        Ok(took) => Check::pass(
            NAME,
            format!(
                "stored a random {}-byte block {through}, read it back byte for byte under the same CID and removed it ({} ms)",
                trip.bytes,
                took.as_millis()
            ),
        ),
        Err(RoundTripFailure::Put(error)) => Check::fail(
            NAME,
            format!("storing a block {through} failed: {error}"),
            "the repo cannot be written: the disk is full, the repo's files are not writable by this user, or the datastore is damaged",
            "free disk space, check the repo directory's owner and permissions, then run `ipfs-accelerate repo verify`",
        ),
        Err(RoundTripFailure::WrongCid { expected, got }) => Check::fail(
            NAME,
            format!(
                "a block stored {through} came back named {got}, but its bytes give {expected}"
            ),
            "the daemon and this command hash blocks differently (different versions?)",
            "run the same version of ipfs-accelerate for the daemon and the commands",
        ),
        Err(RoundTripFailure::Get(error)) => Check::fail(
            NAME,
            format!("a block stored {through} could not be read back: {error}"),
            DAMAGED,
            VERIFY,
        ),
        Err(RoundTripFailure::WrongBytes) => Check::fail(
            NAME,
            format!("a block stored {through} was read back with other bytes"),
            DAMAGED,
            VERIFY,
        ),
        Err(RoundTripFailure::Remove(error)) => Check::warn(
            NAME,
            format!("a block stored and read back {through} could not be removed: {error}"),
            "the datastore refused the removal",
            "`ipfs-accelerate repo gc` removes it: it is not pinned",
        ),
    }
}

/// What was learnt about the repo itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RepoFact {
    /// No `config.toml` at `path`.
    Missing { path: String },
    /// `config.toml` does not parse.
    BadConfig(String),
    /// Another process holds the lock and serves no API.
    Locked { holder: String },
    /// The datastore could not be opened or read.
    Unreadable(String),
    Stat {
        blocks: u64,
        bytes: u64,
        storage_max: u64,
        /// Bytes past which unpinned content is evicted.
        high_watermark: u64,
    },
}

pub(crate) fn repo(fact: &RepoFact) -> Check {
    const NAME: &str = "repo";
    match fact {
        RepoFact::Missing { path } => Check::fail(
            NAME,
            format!("no ipfs-accelerate repo at {path}"),
            "it was never initialised, or --repo / IPFS_ACCELERATE_PATH names another directory",
            "`ipfs-accelerate init`, or point --repo / IPFS_ACCELERATE_PATH at the repo",
        ),
        RepoFact::BadConfig(error) => Check::fail(
            NAME,
            format!("config.toml cannot be read: {error}"),
            "an edit left a key misspelt or a value of the wrong type",
            "correct the key the message names (docs/reference.md lists every key), or remove it to get its default",
        ),
        RepoFact::Locked { holder } => Check::warn(
            NAME,
            format!("the repo is locked by another process{holder}, which serves no API"),
            "another ipfs-accelerate command is running, or a daemon is still starting",
            "wait for it to finish (a daemon is ready when it prints `Daemon is ready`), or stop it",
        ),
        RepoFact::Unreadable(error) => Check::fail(
            NAME,
            format!("the datastore cannot be read: {error}"),
            "datastore.redb is damaged, or not readable by this user",
            "check the repo directory's owner and permissions, then run `ipfs-accelerate repo verify`",
        ),
        RepoFact::Stat {
            blocks,
            bytes,
            storage_max,
            high_watermark,
        } => {
            let detail = format!(
                "{blocks} blocks, {bytes} bytes of {storage_max} allowed ({}%)",
                percent(*bytes, *storage_max)
            );
            if bytes < high_watermark {
                return Check::pass(NAME, detail);
            }
            Check::warn(
                NAME,
                format!("{detail}: past the high watermark of {high_watermark} bytes"),
                "pinned content fills the repo beyond what eviction of unpinned blocks can free",
                "unpin what is no longer needed (`pin rm`, then `repo gc`), or raise `storage_max` under [datastore] in config.toml",
            )
        }
    }
}

fn percent(part: u64, whole: u64) -> u64 {
    match whole {
        0 => 100,
        _ => (u128::from(part) * 100 / u128::from(whole)) as u64,
    }
}

/// The repo's swarm key: its fingerprint, none, or why it cannot be used; `forced`
/// when LIBP2P_FORCE_PNET=1 demands one and no daemon has started yet; `running`,
/// whether the running daemon says its swarm is private.
pub(crate) fn swarm(
    key: &Result<Option<String>, String>,
    forced: bool,
    running: Option<bool>,
) -> Check {
    const NAME: &str = "private swarm";
    if let (Ok(key), Some(private)) = (key, running)
        && key.is_some() != private
    {
        let (repo, daemon) = match private {
            true => ("has no swarm.key", "private"),
            false => ("holds a swarm.key", "public"),
        };
        return Check::warn(
            NAME,
            format!("the repo {repo}, but the running daemon's swarm is {daemon}"),
            "swarm.key was added or removed after the daemon started",
            "restart the daemon to apply the repo's swarm.key: `ipfs-accelerate shutdown`, then `ipfs-accelerate daemon`",
        );
    }
    match key {
        Ok(Some(fingerprint)) => Check::pass(
            NAME,
            format!(
                "private: only peers holding this swarm.key connect (fingerprint {fingerprint})"
            ),
        ),
        Ok(None) if forced => Check::fail(
            NAME,
            "LIBP2P_FORCE_PNET=1, but the repo has no swarm.key",
            "the daemon refuses to join a public swarm when a private one is demanded",
            "copy the swarm's swarm.key into the repo, or unset LIBP2P_FORCE_PNET",
        ),
        Ok(None) => Check::pass(NAME, "no: any peer may connect (the repo has no swarm.key)"),
        Err(error) => Check::fail(
            NAME,
            format!("swarm.key cannot be used: {error}"),
            "the file is not a Kubo swarm.key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits)",
            "replace it with the swarm's key (`ipfs-accelerate swarm key generate` makes a new one), or remove it to join the public swarm",
        ),
    }
}

pub(crate) fn listen(addrs: &[String]) -> Check {
    const NAME: &str = "listen";
    if addrs.is_empty() {
        return Check::fail(
            NAME,
            "the swarm listens on no address: no peer can dial this node",
            "every address of `listen` under [network] failed to bind (taken, or not an address of this machine)",
            "set `listen` under [network] in config.toml (or `daemon --listen MULTIADDR`) to addresses of this machine with free ports, e.g. /ip4/0.0.0.0/tcp/4001",
        );
    }
    Check::pass(NAME, format!("listening on {}", addrs.join(", ")))
}

/// What the daemon says of its place in the network (`accelerate/network`), and the
/// NAT traversal the repo's config turns on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkFact {
    /// `public`, `private` or `unknown`, from AutoNAT.
    pub(crate) reachability: String,
    pub(crate) public_addresses: Vec<String>,
    pub(crate) relay_reservations: Vec<String>,
    pub(crate) relay_service: bool,
    pub(crate) autonat: bool,
    pub(crate) relay_client: bool,
}

pub(crate) fn reachability(net: &NetworkFact) -> Check {
    const NAME: &str = "reachability";
    match net.reachability.as_str() {
        "public" => Check::pass(
            NAME,
            format!(
                "publicly reachable: peers dialed back {} (AutoNAT)",
                net.public_addresses.join(", ")
            ),
        ),
        "private" => Check::warn(
            NAME,
            "not publicly reachable: peers dialing this node's addresses fail (AutoNAT), so they reach it only through relays or hole punching",
            "the node is behind a NAT or a firewall that lets no connection in",
            "forward the swarm's port (4001 TCP and UDP by default) to this machine on the router and open it in the firewall, or set `upnp = true` under [network]; until then relays carry inbound connections",
        ),
        _ if !net.autonat => Check::pass(
            NAME,
            "not tested: AutoNAT is off (`autonat` under [network]; the test profile turns it off)",
        ),
        _ => Check::warn(
            NAME,
            "not known yet: no peer has tested this node's addresses (AutoNAT)",
            "too few connected peers that test addresses: a new node, or one on a LAN or loopback only",
            "wait a minute after joining the network (`init --profile public` joins Kubo's); on a LAN or loopback this stays unknown, which is expected there",
        ),
    }
}

pub(crate) fn relays(net: &NetworkFact) -> Check {
    const NAME: &str = "relays";
    let service = match net.relay_service {
        true => "relaying for others",
        false => "not relaying for others",
    };
    if !net.relay_reservations.is_empty() {
        return Check::pass(
            NAME,
            format!(
                "{} reservation(s), reachable at {}; {service}",
                net.relay_reservations.len(),
                net.relay_reservations.join(", ")
            ),
        );
    }
    match net.reachability.as_str() {
        "public" => Check::pass(NAME, format!("none needed: publicly reachable; {service}")),
        "private" if !net.relay_client => Check::warn(
            NAME,
            "no relay reservation, and relays are off: no peer can reach this node behind its NAT",
            "`relay_client` under [network] is false",
            "set `relay_client = true` under [network] and restart the daemon, or open the swarm's port on the router",
        ),
        "private" => Check::warn(
            NAME,
            "no relay reservation: no peer can reach this node behind its NAT",
            "no connected peer offers relay service (circuit relay v2), and `relays` under [network] names none that answers",
            "connect to a publicly reachable node that relays (Kubo's bootstrap peers do: `init --profile public`), or name one in `relays` under [network]",
        ),
        _ => Check::pass(
            NAME,
            format!(
                "none held: reservations are made once AutoNAT finds this node unreachable; {service}"
            ),
        ),
    }
}

pub(crate) fn dht(routing_table_size: usize) -> Check {
    const NAME: &str = "dht";
    if routing_table_size == 0 {
        return Check::warn(
            NAME,
            "the DHT routing table is empty: providers and models are found only among connected peers",
            "no bootstrap peer answered, and no connected peer speaks this node's DHT protocol (`dht_protocol` under [network])",
            "connect to peers on the same DHT: `bootstrap` under [network], `daemon --bootstrap MULTIADDR`, or `swarm connect`",
        );
    }
    Check::pass(
        NAME,
        format!("{routing_table_size} peer(s) in the routing table"),
    )
}

/// Connected peers, and the connections' kinds when the daemon reported them
/// (direct, relayed).
pub(crate) fn peers(count: usize, connections: Option<(usize, usize)>) -> Check {
    const NAME: &str = "peers";
    if count == 0 {
        return Check::warn(
            NAME,
            "no connected peers: content and models are found only in this repo",
            "no bootstrap peers are configured or none answered, and mDNS (if on) found no one",
            "`ipfs-accelerate swarm connect MULTIADDR`, or add peers to `bootstrap` under [network] (`init --profile public` joins Kubo's network)",
        );
    }
    match connections {
        Some((direct, relayed)) => Check::pass(
            NAME,
            format!("{count} connected ({direct} direct, {relayed} relayed connection(s))"),
        ),
        None => Check::pass(NAME, format!("{count} connected")),
    }
}

/// Models served, each as `name@version` or its CID.
pub(crate) fn models(served: &[String]) -> Check {
    const NAME: &str = "models";
    if served.is_empty() {
        return Check::pass(
            NAME,
            "serving none (`model serve MODEL` or `daemon --serve MODEL` serves one)",
        );
    }
    Check::pass(
        NAME,
        format!("serving {}: {}", served.len(), served.join(", ")),
    )
}

/// A daemon that answered `id` but failed the later `call` this check needs.
pub(crate) fn unanswered(name: &'static str, call: &str, error: &str) -> Check {
    Check::fail(
        name,
        format!("the daemon failed {call}: {error}"),
        "the daemon answers but this part of it failed",
        "read the daemon's log (run it with RUST_LOG=info) for the error, and restart it",
    )
}

/// Whether the report as a whole is healthy: nothing failed.
pub(crate) fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(check: Check) -> Status {
        assert!(!check.detail.is_empty());
        // A problem always says why and what to do; a pass says neither.
        assert_eq!(
            check.cause.is_some() && check.fix.is_some(),
            check.status != Status::Pass,
            "{check:?}"
        );
        check.status
    }

    #[test]
    fn the_api_fails_when_no_daemon_answers_and_names_a_taken_port() {
        let addr = "127.0.0.1:5001".to_string();
        let answered = ApiFact::Answered {
            addr: addr.clone(),
            peer: "12D3Koo".into(),
        };
        assert_eq!(status(api(&answered)), Status::Pass);
        let stopped = ApiFact::NotRunning {
            addr: addr.clone(),
            bind: Bind::Free,
        };
        let check = api(&stopped);
        assert_eq!(
            check.fix.as_deref(),
            Some("start it: `ipfs-accelerate daemon`")
        );
        assert_eq!(status(check), Status::Fail);
        let taken = api(&ApiFact::NotRunning {
            addr: addr.clone(),
            bind: Bind::Taken,
        });
        assert!(
            taken.detail.contains("127.0.0.1:5001 is taken"),
            "{taken:?}"
        );
        assert_eq!(status(taken), Status::Fail);
        let refused = ApiFact::NotRunning {
            addr: addr.clone(),
            bind: Bind::Refused("permission denied".into()),
        };
        assert_eq!(status(api(&refused)), Status::Fail);
        let stale = api(&ApiFact::Silent {
            addr,
            error: "connection refused".into(),
        });
        assert!(
            stale
                .cause
                .as_deref()
                .unwrap()
                .contains("killed or crashed")
        );
        assert_eq!(status(stale), Status::Fail);
    }

    #[test]
    fn the_gateway_passes_only_with_the_verified_block_and_names_a_taken_port() {
        let asked = |answer| GatewayFact::Asked {
            url: "http://127.0.0.1:8080".into(),
            answer,
        };
        assert_eq!(
            status(gateway(&asked(GatewayAnswer::Verified))),
            Status::Pass
        );
        for answer in [
            GatewayAnswer::Status(404),
            GatewayAnswer::WrongBytes,
            GatewayAnswer::Unreachable("connection refused".into()),
        ] {
            assert_eq!(status(gateway(&asked(answer))), Status::Fail);
        }
        let offline = |bind| GatewayFact::Offline {
            addr: "127.0.0.1:8080".into(),
            bind,
        };
        assert_eq!(status(gateway(&offline(Bind::Free))), Status::Pass);
        let taken = gateway(&offline(Bind::Taken));
        assert!(
            taken.detail.contains("127.0.0.1:8080 is taken"),
            "{taken:?}"
        );
        assert!(taken.fix.as_deref().unwrap().contains("--gateway"));
        assert_eq!(status(taken), Status::Fail);
        let refused = gateway(&offline(Bind::Refused("bad address".into())));
        assert_eq!(status(refused), Status::Fail);
    }

    #[test]
    fn a_round_trip_fails_on_any_difference_and_only_warns_when_the_block_stays() {
        let trip = |result| RoundTrip {
            via: Via::Api,
            bytes: 64,
            result,
        };
        let ok = round_trip(&trip(Ok(Duration::from_millis(3))));
        assert!(ok.detail.contains("through the API"), "{ok:?}");
        assert_eq!(status(ok), Status::Pass);
        for failure in [
            RoundTripFailure::Put("disk full".into()),
            RoundTripFailure::WrongCid {
                expected: "bafk1".into(),
                got: "bafk2".into(),
            },
            RoundTripFailure::Get("not found".into()),
            RoundTripFailure::WrongBytes,
        ] {
            assert_eq!(status(round_trip(&trip(Err(failure)))), Status::Fail);
        }
        let kept = round_trip(&trip(Err(RoundTripFailure::Remove("busy".into()))));
        assert_eq!(status(kept), Status::Warn);
        let offline = round_trip(&RoundTrip {
            via: Via::Datastore,
            bytes: 64,
            result: Ok(Duration::ZERO),
        });
        assert!(offline.detail.contains("no daemon"), "{offline:?}");
    }

    #[test]
    fn the_repo_warns_past_its_high_watermark() {
        let stat = |bytes| RepoFact::Stat {
            blocks: 10,
            bytes,
            storage_max: 1000,
            high_watermark: 900,
        };
        let under = repo(&stat(899));
        assert!(under.detail.contains("(89%)"), "{under:?}");
        assert_eq!(status(under), Status::Pass);
        assert_eq!(status(repo(&stat(900))), Status::Warn);
        assert_eq!(
            status(repo(&RepoFact::Locked {
                holder: " (pid 7)".into()
            })),
            Status::Warn
        );
        for fact in [
            RepoFact::Missing {
                path: "/nowhere".into(),
            },
            RepoFact::BadConfig("unknown field".into()),
            RepoFact::Unreadable("corrupt".into()),
        ] {
            assert_eq!(status(repo(&fact)), Status::Fail);
        }
        assert_eq!(percent(5, 0), 100);
        assert_eq!(percent(u64::MAX, u64::MAX), 100);
    }

    #[test]
    fn the_swarm_says_private_and_fails_when_a_forced_key_is_missing() {
        let key = Ok(Some("ab12".to_string()));
        let private = swarm(&key, false, None);
        assert!(private.detail.starts_with("private"), "{private:?}");
        assert_eq!(status(private), Status::Pass);
        assert_eq!(status(swarm(&Ok(None), false, None)), Status::Pass);
        assert_eq!(status(swarm(&key, true, None)), Status::Pass);
        assert_eq!(status(swarm(&Ok(None), true, None)), Status::Fail);
        assert_eq!(
            status(swarm(&Err("not hex".into()), false, None)),
            Status::Fail
        );
        // A running daemon agrees with the repo, or has to be restarted.
        assert_eq!(status(swarm(&key, false, Some(true))), Status::Pass);
        assert_eq!(status(swarm(&Ok(None), false, Some(false))), Status::Pass);
        let stale = swarm(&key, false, Some(false));
        assert!(
            stale.fix.as_deref().unwrap().contains("restart"),
            "{stale:?}"
        );
        assert_eq!(status(stale), Status::Warn);
        assert_eq!(status(swarm(&Ok(None), false, Some(true))), Status::Warn);
    }

    #[test]
    fn the_network_checks_warn_when_alone_and_fail_when_deaf() {
        assert_eq!(status(listen(&[])), Status::Fail);
        assert_eq!(
            status(listen(&["/ip4/127.0.0.1/tcp/4001".into()])),
            Status::Pass
        );
        assert_eq!(status(peers(0, Some((0, 0)))), Status::Warn);
        let connected = peers(2, Some((1, 1)));
        assert!(connected.detail.contains("1 relayed"), "{connected:?}");
        assert_eq!(status(connected), Status::Pass);
        assert_eq!(status(peers(2, None)), Status::Pass);
        assert_eq!(status(dht(0)), Status::Warn);
        assert_eq!(status(dht(3)), Status::Pass);
        assert_eq!(status(models(&[])), Status::Pass);
        let serving = models(&["minilm@1".into()]);
        assert!(serving.detail.contains("minilm@1"), "{serving:?}");
    }

    fn network(reachability: &str, reservations: &[&str]) -> NetworkFact {
        NetworkFact {
            reachability: reachability.into(),
            public_addresses: vec!["/ip4/203.0.113.7/tcp/4001".into()],
            relay_reservations: reservations.iter().map(|r| r.to_string()).collect(),
            relay_service: false,
            autonat: true,
            relay_client: true,
        }
    }

    #[test]
    fn reachability_warns_unless_public_or_untested_on_purpose() {
        let public = reachability(&network("public", &[]));
        assert!(public.detail.contains("203.0.113.7"), "{public:?}");
        assert_eq!(status(public), Status::Pass);
        let private = reachability(&network("private", &[]));
        assert!(
            private.cause.as_deref().unwrap().contains("NAT"),
            "{private:?}"
        );
        assert_eq!(status(private), Status::Warn);
        assert_eq!(status(reachability(&network("unknown", &[]))), Status::Warn);
        let off = NetworkFact {
            autonat: false,
            ..network("unknown", &[])
        };
        assert_eq!(status(reachability(&off)), Status::Pass);
    }

    #[test]
    fn relays_warn_only_behind_a_nat_without_a_reservation() {
        let relayed = "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWR/p2p-circuit";
        let held = relays(&network("private", &[relayed]));
        assert!(held.detail.contains(relayed), "{held:?}");
        assert_eq!(status(held), Status::Pass);
        assert_eq!(status(relays(&network("public", &[]))), Status::Pass);
        assert_eq!(status(relays(&network("unknown", &[]))), Status::Pass);
        let stranded = relays(&network("private", &[]));
        assert!(
            stranded.fix.as_deref().unwrap().contains("relays"),
            "{stranded:?}"
        );
        assert_eq!(status(stranded), Status::Warn);
        let off = NetworkFact {
            relay_client: false,
            ..network("private", &[])
        };
        let off = relays(&off);
        assert!(off.fix.as_deref().unwrap().contains("relay_client = true"));
        assert_eq!(status(off), Status::Warn);
    }

    #[test]
    fn a_report_is_healthy_unless_a_check_failed() {
        let warned = vec![peers(0, None), models(&[])];
        assert!(healthy(&warned));
        let failed = vec![peers(0, None), listen(&[])];
        assert!(!healthy(&failed));
    }

    #[test]
    fn json_names_the_status_in_lower_case_and_leaves_out_what_a_pass_lacks() {
        let value = serde_json::to_value(models(&[])).unwrap();
        assert_eq!(value["status"], "pass");
        assert!(value.get("cause").is_none() && value.get("fix").is_none());
        let value = serde_json::to_value(peers(0, None)).unwrap();
        assert_eq!(value["status"], "warn");
        assert!(value["fix"].is_string());
    }
}
