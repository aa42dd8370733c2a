//! Peers behind real NATs: Linux network namespaces joined by veth links, nftables
//! masquerading on two routers that let nothing in that their LAN did not start. A
//! relay sits on the "internet" (a bridge on 203.0.113.0/24, a documentation range
//! that never leaves this machine); A and B sit each behind its own NAT. They meet
//! through the relay, A serves a model, B calls it and pulls it.
//!
//! Needs root, `ip` and `nft` (tests/setup.sh installs nftables).

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipfs_accelerate_tests::{TestRepo, binary, poll_until, wait_with_timeout, workspace_root};
use serde_json::Value;

const RELAY_IP: &str = "203.0.113.1";
/// Longest one step (a reachability verdict, a reservation, a hole punch) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// A pull that can get no block gives up after Bitswap's 60 s without one.
const PULL_TIMEOUT: Duration = Duration::from_secs(150);

/// How a router maps its LAN's connections. Either way it drops, without a word,
/// every packet from the internet that no connection from its LAN asked for, as home
/// routers do (an answer such as a TCP reset would tear down the state a hole punch
/// relies on).
#[derive(Clone, Copy)]
enum NatKind {
    /// Linux's masquerade keeps the source port where it can: the same public port
    /// for every destination (endpoint-independent mapping), so hole punching works.
    PortPreserving,
    /// A random public port per connection (endpoint-dependent, "symmetric"): the
    /// port a peer sees is not the one a punch comes from, so punching fails.
    Symmetric,
}

/// The namespaces and links; removed on drop.
struct Lab {
    names: Vec<String>,
}

impl Lab {
    /// `inet` (the relay on a bridge), and for each side a router `natN` in front of
    /// a host `hostN` on 192.168.N.0/24.
    fn build(kind: NatKind) -> Lab {
        let prefix = format!("iacc{}", std::process::id());
        let name = |part: &str| format!("{prefix}-{part}");
        let names: Vec<String> = ["inet", "nat1", "host1", "nat2", "host2"]
            .iter()
            .map(|p| name(p))
            .collect();
        let lab = Lab { names };
        for ns in &lab.names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let inet = lab.ns("inet");
        ip(&["-n", inet, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            inet,
            "addr",
            "add",
            &format!("{RELAY_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", inet, "link", "set", "br0", "up"]);
        for side in [1, 2] {
            let router = lab.ns(&format!("nat{side}"));
            let host = lab.ns(&format!("host{side}"));
            let port = format!("p{side}");
            ip(&[
                "-n", router, "link", "add", "wan", "type", "veth", "peer", "name", &port, "netns",
                inet,
            ]);
            ip(&["-n", inet, "link", "set", &port, "master", "br0"]);
            ip(&["-n", inet, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                router,
                "addr",
                "add",
                &format!("203.0.113.{}/24", side + 1),
                "dev",
                "wan",
            ]);
            ip(&["-n", router, "link", "set", "wan", "up"]);
            ip(&[
                "-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                "netns", host,
            ]);
            ip(&[
                "-n",
                router,
                "addr",
                "add",
                &format!("192.168.{side}.1/24"),
                "dev",
                "lan",
            ]);
            ip(&["-n", router, "link", "set", "lan", "up"]);
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("192.168.{side}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", host, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                host,
                "route",
                "add",
                "default",
                "via",
                &format!("192.168.{side}.1"),
            ]);
            run_in(router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let mapping = match kind {
                NatKind::PortPreserving => "masquerade",
                NatKind::Symmetric => "masquerade random",
            };
            let rules = format!(
                "table ip nat {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"wan\" {mapping}\n }}\n}}\n\
                 table inet filter {{\n chain forward {{\n  type filter hook forward priority filter; policy drop;\n  ct state established,related accept\n  iifname \"lan\" accept\n }}\n\
                 chain input {{\n  type filter hook input priority filter; policy drop;\n  ct state established,related accept\n  iifname {{ \"lan\", \"lo\" }} accept\n }}\n}}\n"
            );
            nft(router, &rules);
        }
        lab
    }

    fn ns(&self, part: &str) -> &str {
        self.names
            .iter()
            .find(|n| n.ends_with(&format!("-{part}")))
            .expect("namespace")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_in(ns: &str, args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("running ip netns exec");
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn nft(ns: &str, rules: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nft (tests/setup.sh installs nftables)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("writing rules");
    let out = wait_with_timeout(child, COMMAND_TIMEOUT).expect("nft");
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A daemon in a namespace, its repo beside the others on disk; killed on drop.
struct Peer {
    ns: String,
    repo: TestRepo,
    child: Option<Child>,
}

impl Peer {
    /// Starts a daemon listening on `listen` (TCP port 4001), bootstrapping from
    /// `bootstrap`, its API and gateway on the namespace's own loopback.
    fn start(ns: &str, listen: &str, bootstrap: Option<&str>) -> Peer {
        let repo = TestRepo::new();
        let mut peer = Peer {
            ns: ns.to_owned(),
            repo,
            child: None,
        };
        let mut args = vec![
            "daemon",
            "--no-mdns",
            "--api",
            "127.0.0.1:5001",
            "--gateway",
            "127.0.0.1:8080",
            "--dht-protocol",
            "/ipfs/lan/kad/1.0.0",
            "--listen",
            listen,
        ];
        if let Some(bootstrap) = bootstrap {
            args.extend(["--bootstrap", bootstrap]);
        }
        let mut child = peer
            .command(&args)
            .env("RUST_LOG", "info,ipfs_accelerate_node::p2p=debug")
            .stderr(std::fs::File::create(peer.repo.path("daemon.log")).expect("log file"))
            .spawn()
            .expect("daemon");
        let stdout = child.stdout.take().expect("stdout");
        peer.child = Some(child);
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line == "Daemon is ready" {
                    let _ = ready_tx.send(());
                }
            }
        });
        let started = ready.recv_timeout(STEP_TIMEOUT).is_ok();
        assert!(started, "the daemon in {ns} did not start:\n{}", peer.log());
        peer
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(binary())
            .args(args)
            .env("IPFS_ACCELERATE_PATH", self.repo.repo_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .env_remove("RUST_LOG")
            .spawn()
            .expect("cli");
        wait_with_timeout(child, COMMAND_TIMEOUT).expect("cli finished")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`{}` in {} failed: {}\n--- daemon log ---\n{}",
            args.join(" "),
            self.ns,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn peer_id(&self) -> String {
        self.ok(&["id"])
    }

    /// `accelerate/network`, asked on the namespace's loopback.
    fn network(&self) -> Value {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "curl", "-sf", "-m", "10", "-X", "POST",
            ])
            .arg("http://127.0.0.1:5001/api/v0/accelerate/network")
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Waits until `condition` holds for the network status; panics with the log.
    fn wait_network(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let held = poll_until(STEP_TIMEOUT, || {
            last = self.network();
            condition(&last)
        });
        assert!(
            held,
            "{} never {what}: {last}\n--- daemon log ---\n{}",
            self.ns,
            self.log()
        );
        last
    }

    /// The address `swarm peers` shows for `peer` (a direct connection's when there
    /// is one), if connected.
    fn address_of(&self, peer: &str) -> Option<String> {
        self.ok(&["swarm", "peers"])
            .lines()
            .find(|line| line.contains(peer))
            .map(str::to_owned)
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.repo.path("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The relay, and A and B behind their NATs, each holding a reservation on it.
struct Swarm {
    // Fields drop in order: the daemons before their namespaces.
    a: Peer,
    b: Peer,
    _relay: Peer,
    _lab: Lab,
}

impl Swarm {
    fn start(kind: NatKind) -> Swarm {
        let lab = Lab::build(kind);
        let relay = Peer::start(lab.ns("inet"), &format!("/ip4/{RELAY_IP}/tcp/4001"), None);
        let relay_addr = format!("/ip4/{RELAY_IP}/tcp/4001/p2p/{}", relay.peer_id());
        let a = Peer::start(lab.ns("host1"), "/ip4/0.0.0.0/tcp/4001", Some(&relay_addr));
        let b = Peer::start(lab.ns("host2"), "/ip4/0.0.0.0/tcp/4001", Some(&relay_addr));
        // AutoNAT: the peers dial the relay back, the relay cannot dial them.
        let status = relay.wait_network("found itself public", |s| s["reachability"] == "public");
        assert_eq!(status["relay_service"], true, "{status}");
        for peer in [&a, &b] {
            peer.wait_network("found itself private", |s| s["reachability"] == "private");
            let status = peer.wait_network("got a relay reservation", |s| {
                s["relay_reservations"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            });
            let reservation = status["relay_reservations"][0].as_str().unwrap_or_default();
            assert!(
                reservation.contains(RELAY_IP) && reservation.ends_with("/p2p-circuit"),
                "{status}"
            );
        }
        Swarm {
            a,
            b,
            _relay: relay,
            _lab: lab,
        }
    }
}

fn tiny_model() -> String {
    workspace_root()
        .join("tests/fixtures/tiny-bert")
        .to_string_lossy()
        .into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A publishes the tiny model; B calls it by name and gets A's answer.
fn publish_and_call(swarm: &Swarm) -> (String, Value) {
    let a_id = swarm.a.peer_id();
    let published = json(&swarm.a.ok(&[
        "model",
        "publish",
        &tiny_model(),
        "--name",
        "tiny",
        "--version",
        "1",
        "--json",
    ]));
    let weights = published["weights"].as_str().unwrap_or_default().to_owned();
    let heard = poll_until(STEP_TIMEOUT, || {
        let listed = swarm.b.run(&["model", "ls", "--json"]);
        String::from_utf8_lossy(&listed.stdout).contains(&weights)
    });
    assert!(
        heard,
        "B never heard A's model through the relay\n{}",
        swarm.b.log()
    );
    let mut answer = Value::Null;
    let answered = poll_until(STEP_TIMEOUT, || {
        let out = swarm
            .b
            .run(&["infer", "tiny", "--text", "hello through a NAT", "--json"]);
        answer = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        out.status.success()
    });
    assert!(
        answered,
        "B's inference on A failed: {answer}\n{}",
        swarm.b.log()
    );
    assert_eq!(answer["provider"], a_id.as_str(), "{answer}");
    assert_eq!(answer["local"], false, "{answer}");
    (weights, answer)
}

#[test]
fn peers_behind_port_preserving_nats_meet_through_a_relay_and_punch_a_direct_connection() {
    let swarm = Swarm::start(NatKind::PortPreserving);
    let (a_id, b_id) = (swarm.a.peer_id(), swarm.b.peer_id());
    let (weights, _) = publish_and_call(&swarm);

    // The relayed connection became a direct one: B reaches A at A's router.
    let direct = poll_until(STEP_TIMEOUT, || {
        swarm.b.address_of(&a_id).is_some_and(|addr| {
            addr.starts_with("/ip4/203.0.113.2/") && !addr.contains("p2p-circuit")
        })
    });
    assert!(
        direct,
        "no direct connection from B to A: {:?}\n--- A ---\n{}\n--- B ---\n{}",
        swarm.b.address_of(&a_id),
        swarm.a.log(),
        swarm.b.log()
    );
    let punched = |s: &Value| s["hole_punches"].as_u64() >= Some(1);
    let a_status = swarm.a.network();
    let b_status = swarm.b.network();
    assert!(
        punched(&a_status) || punched(&b_status),
        "{a_status}\n{b_status}"
    );

    // Bitswap runs on the direct connection: B pulls the model from A and serves it.
    let pulled = json(&swarm.b.ok(&["model", "pull", "tiny", "--json"]));
    assert_eq!(pulled["Root"], weights.as_str(), "{pulled}");
    assert!(pulled["Sources"].get(a_id.as_str()).is_some(), "{pulled}");
    let local = json(&swarm.b.ok(&["infer", "tiny", "--text", "hello", "--json"]));
    assert_eq!(local["local"], true, "{local}");
    assert_ne!(a_id, b_id);
}

#[test]
fn peers_behind_symmetric_nats_stay_relayed_and_inference_still_works() {
    let swarm = Swarm::start(NatKind::Symmetric);
    let a_id = swarm.a.peer_id();
    let (_, answer) = publish_and_call(&swarm);
    assert!(
        answer["embeddings"]
            .as_array()
            .is_some_and(|e| e.len() == 1),
        "{answer}"
    );

    // B just called A: over the relayed connection, the only one it has.
    let address = swarm.b.address_of(&a_id).unwrap_or_default();
    assert!(
        address.contains("p2p-circuit"),
        "B reaches A as {address:?}"
    );
    // A relayed connection carries no blocks: the pull fails after Bitswap's wait,
    // and both the daemon's log and the command's error say why.
    let started = Instant::now();
    let pull = swarm
        .b
        .command(&["model", "pull", "tiny"])
        .env_remove("RUST_LOG")
        .spawn()
        .expect("pull");
    let pulled = wait_with_timeout(pull, PULL_TIMEOUT).expect("pull finished");
    let error = String::from_utf8_lossy(&pulled.stderr);
    assert!(
        !pulled.status.success(),
        "the pull succeeded through a relay"
    );
    // One wait of 60 s for the root, not one for its size and another for its blocks.
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "the pull took {:?}: {error}",
        started.elapsed()
    );
    assert!(
        error.contains("reached only through a relay"),
        "the pull's error does not say why: {error}"
    );
    assert!(
        swarm.b.log().contains("connected only through a relay"),
        "{}",
        swarm.b.log()
    );
    // No punch gets through a symmetric NAT. (A failed attempt is reported only when
    // its dials time out: these routers drop the punches without a word, so TCP
    // retries each SYN for about two minutes; the test does not wait for that.) Checked
    // after the pull's wait, so the punch had time to be tried.
    let punched = |s: Value| s["hole_punches"].as_u64().unwrap_or(0);
    assert_eq!(punched(swarm.a.network()) + punched(swarm.b.network()), 0);
    let address = swarm.b.address_of(&a_id).unwrap_or_default();
    assert!(
        address.is_empty() || address.contains("p2p-circuit"),
        "B reaches A as {address:?}"
    );
}
