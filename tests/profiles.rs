//! Network profiles. The public one is checked by the config it writes and never
//! started: no test may reach outside this machine.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipfs_accelerate_tests::TestRepo;

fn config_of(repo: &TestRepo) -> String {
    std::fs::read_to_string(repo.repo_path().join("config.toml")).unwrap()
}

#[test]
fn init_writes_the_profile_asked_for_and_lan_by_default() {
    let public = TestRepo::uninitialised();
    public.ok(&["init", "--profile", "public"]);
    let config = config_of(&public);
    assert!(
        config.contains("dht_protocol = \"/ipfs/kad/1.0.0\""),
        "{config}"
    );
    assert!(
        config.contains(
            "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"
        ),
        "{config}"
    );
    assert!(config.contains("mdns = true"), "{config}");

    let default = TestRepo::new();
    let config = config_of(&default);
    assert!(
        config.contains("dht_protocol = \"/ipfs/lan/kad/1.0.0\""),
        "{config}"
    );
    assert!(config.contains("bootstrap = []"), "{config}");
    assert!(!config.contains("bootstrap.libp2p.io"), "{config}");

    let test = TestRepo::uninitialised();
    test.ok(&["init", "--profile", "test"]);
    let config = config_of(&test);
    assert!(config.contains("\"/ip4/127.0.0.1/tcp/0\""), "{config}");
    assert!(config.contains("mdns = false"), "{config}");
    assert!(!config.contains("0.0.0.0"), "{config}");

    let out = TestRepo::uninitialised().run(&["init", "--profile", "world"]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("use public, lan or test"), "{error}");
}

#[test]
fn a_private_swarm_refuses_the_public_profile() {
    let keys = TestRepo::uninitialised();
    let key = keys.path("swarm.key");
    std::fs::write(&key, keys.ok(&["swarm", "key", "generate"])).unwrap();
    let key = key.to_str().unwrap();
    let refused = TestRepo::uninitialised();
    let error = refused.fails(&["init", "--profile", "public", "--swarm-key", key]);
    assert!(
        error.contains("does not join the public network"),
        "{error}"
    );
    assert!(!refused.repo_path().join("config.toml").exists());

    // The daemon refuses it for a run too, before it listens or dials anything.
    let private = TestRepo::uninitialised();
    private.ok(&["init", "--swarm-key", key]);
    let error = private.fails(&[
        "daemon",
        "--profile",
        "public",
        "--api",
        "127.0.0.1:0",
        "--gateway",
        "127.0.0.1:0",
    ]);
    assert!(
        error.contains("does not join the public network"),
        "{error}"
    );
}

#[test]
fn daemon_with_the_test_profile_listens_on_loopback_only() {
    let repo = TestRepo::new();
    let mut child = repo
        .command(&[
            "daemon",
            "--profile",
            "test",
            "--api",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut listening = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "Daemon is ready" => break,
            Ok(line) => {
                listening.extend(line.strip_prefix("Swarm listening on ").map(str::to_owned))
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the daemon was not ready in time");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!listening.is_empty());
    assert!(
        listening
            .iter()
            .all(|a| a.starts_with("/ip4/127.0.0.1/tcp/")),
        "{listening:?}"
    );
}
