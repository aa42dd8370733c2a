//! Private swarms: daemons whose repos hold the same `swarm.key` connect and exchange
//! blocks, with each other and with a real Kubo given the key; a peer without it, or
//! with another key, cannot even connect. And `LIBP2P_FORCE_PNET=1` keeps a daemon
//! without a key from starting.

use std::time::Duration;

use ipfs_accelerate_tests::{Daemon, Kubo, TestRepo, deterministic_file, wait_with_timeout};

const KUBO_WAIT: Duration = Duration::from_secs(60);

/// A repo initialised with the key in `key_file`.
fn private_repo(key_file: &std::path::Path) -> TestRepo {
    let repo = TestRepo::uninitialised();
    repo.ok(&["init", "--swarm-key", key_file.to_str().unwrap()]);
    repo
}

#[test]
fn only_peers_with_the_same_swarm_key_connect_and_exchange_blocks() {
    let keys = TestRepo::uninitialised();
    let (key, other_key) = (keys.path("swarm.key"), keys.path("other.key"));
    std::fs::write(&key, keys.ok(&["swarm", "key", "generate"])).unwrap();
    std::fs::write(&other_key, keys.ok(&["swarm", "key", "generate"])).unwrap();
    assert_ne!(
        std::fs::read(&key).unwrap(),
        std::fs::read(&other_key).unwrap()
    );

    let a = Daemon::start_on(private_repo(&key), &[]);
    let b = Daemon::start_on(private_repo(&key), &[]);
    let public = Daemon::start(&[]);
    let stranger = Daemon::start_on(private_repo(&other_key), &[]);

    // The key's file is private to its owner, as the identity's.
    let mode = std::fs::metadata(a.repo.repo_path().join("swarm.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // A private node listens on TCP only: pnet cannot protect QUIC.
    let id: serde_json::Value = serde_json::from_str(&a.repo.ok(&["id", "--json"])).unwrap();
    let addrs = id["Addresses"].as_array().unwrap();
    assert!(!addrs.is_empty());
    assert!(
        addrs.iter().all(|a| !a.as_str().unwrap().contains("quic")),
        "{addrs:?}"
    );
    let said = a.repo.run(&["id"]);
    assert!(String::from_utf8_lossy(&said.stderr).contains("private swarm"));

    let file = a.repo.path("data.bin");
    deterministic_file(&file, 3 * 1024 * 1024 + 11, 5).unwrap();
    let cid = a.repo.add(&file, &[]);
    assert!(
        b.repo
            .ok(&["swarm", "connect", &a.addr()])
            .ends_with("success")
    );
    let fetched = b.repo.run(&["cat", &cid]);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(
        fetched.stdout == std::fs::read(&file).unwrap(),
        "b read other bytes"
    );

    // Without the key, or with another one, the handshake fails: no connection.
    for outsider in [&public, &stranger] {
        let out = outsider.repo.run(&["swarm", "connect", &a.addr()]);
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Nor can a reach them.
        let out = a.repo.run(&["swarm", "connect", &outsider.addr()]);
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let peers = a.repo.ok(&["swarm", "peers"]);
    assert!(peers.contains(&b.peer_id()), "{peers}");
    assert!(
        !peers.contains(&public.peer_id()) && !peers.contains(&stranger.peer_id()),
        "{peers}"
    );
}

#[test]
fn force_pnet_refuses_to_start_without_a_key_and_a_bad_key_is_one_line() {
    let repo = TestRepo::new();
    let child = repo
        .command(&[
            "daemon",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env("LIBP2P_FORCE_PNET", "1")
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(30)).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LIBP2P_FORCE_PNET=1") && stderr.contains("swarm.key"),
        "{stderr}"
    );
    // Offline commands still work, as in Kubo.
    repo.ok(&["repo", "stat"]);

    let bad = repo.path("bad.key");
    std::fs::write(&bad, "/key/swarm/psk/1.0.0/\n/base16/\nnot-hex\n").unwrap();
    let fresh = TestRepo::uninitialised();
    let error = fresh.fails(&["init", "--swarm-key", bad.to_str().unwrap()]);
    assert!(error.contains("is not a Kubo swarm.key"), "{error}");
    assert!(
        !fresh.repo_path().join("config.toml").exists(),
        "a repo was left behind"
    );
}

#[test]
fn kubo_with_the_same_swarm_key_exchanges_blocks_and_kubo_without_it_cannot_connect() {
    let keys = TestRepo::uninitialised();
    let key = keys.path("swarm.key");
    std::fs::write(&key, keys.ok(&["swarm", "key", "generate"])).unwrap();
    let ours = Daemon::start_on(private_repo(&key), &[]);
    let mut kubo = Kubo::start_with(KUBO_WAIT, &["--swarm-key", key.to_str().unwrap()]);

    // Kubo adds, we fetch over Bitswap through the private connection.
    let theirs = keys.path("theirs.bin");
    deterministic_file(&theirs, 2 * 1024 * 1024 + 3, 7).unwrap();
    let cid = kubo.call(&format!("add {}", theirs.display()))["cid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ours.repo
            .ok(&["swarm", "connect", &kubo.multiaddr()])
            .ends_with("success")
    );
    let fetched = ours.repo.run(&["cat", &cid]);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(
        fetched.stdout == std::fs::read(&theirs).unwrap(),
        "we read other bytes"
    );

    // We add, Kubo fetches.
    let mine = ours.repo.path("mine.bin");
    deterministic_file(&mine, 1024 * 1024 + 5, 8).unwrap();
    let our_cid = ours.repo.add(&mine, &["--cid-version=0"]);
    let dest = keys.path("from-ours.bin");
    let got = kubo.call(&format!("get {our_cid} {}", dest.display()));
    assert_eq!(got["ok"], true, "{got}");
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&mine).unwrap());

    // A Kubo of the public swarm cannot connect to us, nor we to it.
    let mut public = Kubo::start(KUBO_WAIT);
    assert_eq!(
        public.call(&format!("connect {}", ours.addr()))["ok"],
        false
    );
    let out = ours.repo.run(&["swarm", "connect", &public.multiaddr()]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
