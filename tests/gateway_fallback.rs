//! Fallback HTTP gateways (`network.gateways`) as a block source, with real processes
//! and sockets: a node with no peers fetches DAGs from another node's gateway for
//! `cat`, `get`, `pin add` and its own gateway; a gateway that answers wrong bytes is
//! refused and skipped while the fetch completes from a good one; a gateway that
//! stalls is cut by the timeout, retried after a backoff, and passed over; when every
//! gateway fails, the command says so in one line in bounded time.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ipfs_accelerate_tests::{Daemon, TestRepo, deterministic_file};

/// A repo with the `test` profile (loopback, no mDNS, no bootstrap peers) and these
/// `[network]` settings (TOML values).
fn repo_with(network: &[(&str, String)]) -> TestRepo {
    let repo = TestRepo::uninitialised();
    repo.ok(&["init", "--profile", "test"]);
    for (key, value) in network {
        set_network(&repo, key, value);
    }
    repo
}

/// Sets `key = value` in `[network]` of the repo's config.toml, replacing the line
/// `init` wrote for it.
fn set_network(repo: &TestRepo, key: &str, value: &str) {
    let path = repo.repo_path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut out, mut in_network, mut done) = (Vec::new(), false, false);
    for line in text.lines() {
        if line.starts_with('[') {
            in_network = line.trim() == "[network]";
            if in_network && !done {
                out.push(line.to_string());
                out.push(format!("{key} = {value}"));
                done = true;
                continue;
            }
        }
        if in_network && line.split('=').next().map(str::trim) == Some(key) {
            continue;
        }
        out.push(line.to_string());
    }
    assert!(done, "no [network] section in {}", path.display());
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

/// A TOML list of URLs.
fn urls(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|u| format!("{u:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The node serving blocks: a daemon whose gateway the others list.
fn origin() -> Daemon {
    Daemon::start_on(repo_with(&[]), &[])
}

/// Adds a file of `size` seeded bytes to `daemon`; its CID and bytes.
fn add_file(daemon: &Daemon, name: &str, size: u64, seed: u64) -> (String, Vec<u8>) {
    let path = daemon.repo.path(name);
    deterministic_file(&path, size, seed).unwrap();
    let cid = daemon.repo.add(&path, &[]);
    (cid, std::fs::read(&path).unwrap())
}

/// A raw block no node here has.
const NOBODYS_BLOCK: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

/// A file of 13 chunks and its root: 14 blocks.
const FILE_SIZE: u64 = 3 * 1024 * 1024 + 7;
const FILE_BLOCKS: f64 = 14.0;

fn http_get(url: &str) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = agent.get(url).call().expect("request");
    let status = response.status().as_u16();
    let body = (response.into_body().with_config())
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (status, body)
}

fn metrics(daemon: &Daemon) -> String {
    let (status, body) = http_get(&format!("{}/debug/metrics/prometheus", daemon.api_url()));
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// One Prometheus sample's value, by its full name.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

fn no_peers(daemon: &Daemon) {
    assert_eq!(daemon.repo.ok(&["swarm", "peers"]), "", "it found a peer");
}

/// A gateway played by the test: each connection on a thread of its own gets its
/// request head read, is counted, and is answered by `answer`. Answers that wait end
/// when the server is dropped (they watch `released`).
struct FakeGateway {
    url: String,
    requests: Arc<AtomicUsize>,
    _release: mpsc::Sender<()>,
}

impl FakeGateway {
    fn start(
        answer: impl Fn(&mut TcpStream, &Mutex<mpsc::Receiver<()>>) + Send + Sync + 'static,
    ) -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let (release, released) = mpsc::channel();
        let released = Arc::new(Mutex::new(released));
        let answer = Arc::new(answer);
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (answer, released, counted) =
                    (answer.clone(), released.clone(), counted.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    answer(&mut stream, &released);
                });
            }
        });
        FakeGateway {
            url,
            requests,
            _release: release,
        }
    }

    /// Answers 200 with bytes that are no block's.
    fn hostile() -> FakeGateway {
        FakeGateway::start(|stream, _| {
            let body = b"these bytes are not the block you asked for";
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.ipld.raw\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        })
    }

    /// Accepts, reads the request and never answers (until the test ends).
    fn stalled() -> FakeGateway {
        FakeGateway::start(|_, released| {
            let _ = (released.lock().unwrap()).recv_timeout(Duration::from_secs(120));
        })
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[test]
fn a_node_without_peers_fetches_from_another_nodes_gateway() {
    let a = origin();
    let (for_cat, cat_bytes) = add_file(&a, "cat.bin", FILE_SIZE, 1);
    let (for_pin, _) = add_file(&a, "pin.bin", FILE_SIZE, 2);
    let (for_gateway, gateway_bytes) = add_file(&a, "gateway.bin", FILE_SIZE, 3);
    let (for_pull, _) = add_file(&a, "pull.bin", FILE_SIZE, 8);
    let tree = a.repo.path("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    deterministic_file(&tree.join("sub/weights.bin"), 600 * 1024, 4).unwrap();
    std::fs::write(tree.join("config.json"), b"{\"hidden_size\": 8}").unwrap();
    let for_get = a.repo.add(&tree, &["-r"]);

    let b = Daemon::start_on(
        repo_with(&[("gateways", urls(&[&format!("http://{}", a.gateway)]))]),
        &[],
    );
    let out = b.repo.run(&["cat", &for_cat]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == cat_bytes, "cat gave other bytes");

    let target = b.repo.path("got");
    b.repo
        .ok(&["get", &for_get, "-o", target.to_str().unwrap()]);
    for file in ["sub/weights.bin", "config.json"] {
        assert!(
            std::fs::read(target.join(file)).unwrap() == std::fs::read(tree.join(file)).unwrap(),
            "get gave other bytes for {file}"
        );
    }

    b.repo.ok(&["pin", "add", &for_pin]);
    b.repo.ok(&["model", "pull", &for_pull]);
    let pinned = b.repo.ok(&["pin", "ls", "--type", "recursive"]);
    assert!(
        pinned.contains(&for_pin) && pinned.contains(&for_pull),
        "{pinned}"
    );
    b.repo.ok(&["repo", "verify"]);

    let (status, body) = http_get(&format!("http://{}/ipfs/{for_gateway}", b.gateway));
    assert_eq!(status, 200);
    assert!(body == gateway_bytes, "b's gateway sent other bytes");

    // Every block came over HTTP: b never met a peer.
    no_peers(&b);
    let text = metrics(&b);
    assert!(
        sample(&text, "ipfs_accelerate_gateway_blocks_received_total") >= 4.0 * FILE_BLOCKS,
        "{text}"
    );
    assert_eq!(
        sample(&text, "ipfs_accelerate_bitswap_blocks_received_total"),
        0.0
    );
    assert_eq!(
        sample(&text, "ipfs_accelerate_gateway_wrong_blocks_total"),
        0.0
    );
}

#[test]
fn a_gateway_that_sends_wrong_bytes_is_refused_and_skipped() {
    let a = origin();
    let (first, first_bytes) = add_file(&a, "first.bin", FILE_SIZE, 5);
    let (second, second_bytes) = add_file(&a, "second.bin", FILE_SIZE, 6);
    let hostile = FakeGateway::hostile();
    let good = format!("http://{}", a.gateway);
    let b = Daemon::start_on(
        repo_with(&[
            ("gateways", urls(&[&hostile.url, &good])),
            ("gateways_timeout_secs", "2".into()),
            ("gateways_retries", "0".into()),
        ]),
        &[],
    );
    let out = b.repo.run(&["cat", &first]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == first_bytes, "cat gave other bytes");
    // Listed first, it was asked for the root, refused, and not asked again.
    assert_eq!(hostile.requests(), 1);
    let out = b.repo.run(&["cat", &second]);
    assert!(out.status.success());
    assert!(out.stdout == second_bytes, "cat gave other bytes");
    assert_eq!(hostile.requests(), 1, "a gateway that lied was asked again");
    // Not even when the good gateway fails: it is skipped, not only ranked last.
    let error = b.repo.fails(&["cat", NOBODYS_BLOCK]);
    assert!(error.contains(&good), "{error}");
    assert_eq!(hostile.requests(), 1, "a gateway that lied was asked again");
    b.repo.ok(&["repo", "verify"]);
    let text = metrics(&b);
    assert_eq!(
        sample(&text, "ipfs_accelerate_gateway_wrong_blocks_total"),
        1.0
    );
    assert!(
        sample(&text, "ipfs_accelerate_gateway_blocks_received_total") >= 2.0 * FILE_BLOCKS,
        "{text}"
    );
}

#[test]
fn a_stalled_gateway_times_out_and_the_fetch_moves_on() {
    let a = origin();
    let (cid, bytes) = add_file(&a, "data.bin", FILE_SIZE, 7);
    let stalled = FakeGateway::stalled();
    let good = format!("http://{}", a.gateway);
    let b = Daemon::start_on(
        repo_with(&[
            ("gateways", urls(&[&stalled.url, &good])),
            ("gateways_timeout_secs", "1".into()),
        ]),
        &[],
    );
    let started = Instant::now();
    let out = b.repo.run(&["cat", &cid]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == bytes, "cat gave other bytes");
    // The root waited out one timeout there; then the stalled one ranks last.
    assert_eq!(stalled.requests(), 1);
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let text = metrics(&b);
    assert_eq!(
        sample(&text, "ipfs_accelerate_gateway_failed_requests_total"),
        1.0
    );
}

#[test]
fn when_every_gateway_fails_the_fetch_says_so_in_bounded_time() {
    let stalled = FakeGateway::stalled();
    let b = Daemon::start_on(
        repo_with(&[
            ("gateways", urls(&[&stalled.url])),
            ("gateways_timeout_secs", "1".into()),
            ("gateways_retries", "1".into()),
        ]),
        &[],
    );
    let cid = NOBODYS_BLOCK;
    let started = Instant::now();
    let error = b.repo.fails(&["cat", cid]);
    let took = started.elapsed();
    assert!(error.contains(cid), "{error}");
    assert!(error.contains("no peer is connected"), "{error}");
    assert!(error.contains(&stalled.url), "{error}");
    assert!(error.contains("no answer within 1s"), "{error}");
    // The first try and one retry after a backoff, each cut at a second.
    assert_eq!(stalled.requests(), 2);
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn a_gateway_url_that_is_not_http_stops_the_daemon_with_one_line() {
    let repo = repo_with(&[("gateways", urls(&["ftp://gateway.invalid"]))]);
    let error = repo.fails(&["daemon", "--api", "127.0.0.1:0", "--gateway", "127.0.0.1:0"]);
    assert!(error.contains("ftp://gateway.invalid"), "{error}");
    assert!(error.contains("http:// and https://"), "{error}");
}
