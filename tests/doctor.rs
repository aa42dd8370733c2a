//! `ipfs-accelerate doctor` against real daemons on loopback: a healthy one passes
//! every check (with AutoNAT on, a loopback node may only warn that its reachability
//! from the internet is unknown), and with the API down, the daemon killed, a port taken by another
//! process or another server behind the gateway address, doctor names the problem,
//! its cause and the fix, and exits non-zero.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Output;
use std::time::Duration;

use ipfs_accelerate_tests::{COMMAND_TIMEOUT, Daemon, TestRepo, poll_until, wait_with_timeout};
use serde_json::Value;

/// What a healthy node on loopback may warn about, when its profile turns AutoNAT on:
/// no peer there can tell whether the internet reaches it.
const EXPECTED_WARNINGS: [&str; 1] = ["reachability"];

/// `doctor --json`'s report, and whether doctor exited with success.
fn doctor(repo: &TestRepo) -> (Value, Output) {
    let out = repo.run(&["doctor", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: doctor printed {stdout:?}"));
    (report, out)
}

/// The check called `name` in a report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

fn names(report: &Value) -> Vec<&str> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// Sets `key` under [network] in the repo's config.toml.
fn set_network(repo: &TestRepo, key: &str, value: &str) {
    let path = repo.repo_path().join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let prefix = format!("{key} = ");
    assert!(config.lines().any(|l| l.starts_with(&prefix)), "{config}");
    let config: Vec<String> = config
        .lines()
        .map(|line| match line.starts_with(&prefix) {
            true => format!("{key} = \"{value}\""),
            false => line.to_owned(),
        })
        .collect();
    std::fs::write(&path, config.join("\n") + "\n").unwrap();
}

/// A port no one listens on, below the range Linux hands out for port 0 and outgoing
/// connections (32768 and up), so no other test takes it before doctor tries it.
fn quiet_port() -> u16 {
    (0..1000)
        .map(|_| 20_000 + rand::random::<u16>() % 10_000)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port between 20000 and 30000")
}

fn repo_blocks(repo: &TestRepo) -> u64 {
    let stat: Value = serde_json::from_str(&repo.ok(&["repo", "stat", "--json"])).unwrap();
    stat["NumObjects"].as_u64().unwrap()
}

#[test]
fn a_healthy_daemon_passes_every_check_and_leaves_nothing_behind() {
    // The test profile: loopback only, AutoNAT off.
    let repo = TestRepo::uninitialised();
    repo.ok(&["init", "--profile", "test"]);
    let a = Daemon::start_on(repo, &[]);
    // The default (lan) profile tests reachability, which no peer on loopback settles.
    let b = Daemon::start(&[]);
    b.repo.ok(&["swarm", "connect", &a.addr()]);

    // Connected, the two find each other in the DHT as soon as identify tells them.
    let mut report = Value::Null;
    let settled = poll_until(Duration::from_secs(10), || {
        report = doctor(&a.repo).0;
        check(&report, "dht")["status"] == "pass"
    });
    assert!(settled, "{report}");
    let (report, out) = doctor(&a.repo);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["healthy"], true, "{report}");
    for check in report["checks"].as_array().unwrap() {
        assert_eq!(check["status"], "pass", "{report}");
        assert!(check.get("cause").is_none() && check.get("fix").is_none());
    }
    let names = names(&report);
    for name in [
        "api",
        "gateway",
        "round trip",
        "repo",
        "private swarm",
        "listen",
        "reachability",
        "relays",
        "dht",
        "peers",
        "models",
    ] {
        assert!(names.contains(&name), "no check {name:?}: {report}");
    }
    let trip = check(&report, "round trip")["detail"].as_str().unwrap();
    assert!(trip.contains("through the API"), "{trip}");
    let gateway = check(&report, "gateway")["detail"].as_str().unwrap();
    assert!(
        gateway.contains(&a.gateway),
        "{gateway} is not {}",
        a.gateway
    );
    let peers = check(&report, "peers")["detail"].as_str().unwrap();
    assert!(peers.starts_with("1 connected (1 direct"), "{peers}");

    // On the lan profile only the untestable is a warning.
    let (report, out) = doctor(&b.repo);
    assert!(out.status.success(), "{report}");
    for check in report["checks"].as_array().unwrap() {
        let name = check["name"].as_str().unwrap();
        match check["status"].as_str().unwrap() {
            "pass" => {}
            "warn" => assert!(EXPECTED_WARNINGS.contains(&name), "{check}"),
            _ => panic!("{check}"),
        }
    }

    // The round trip's block is removed: a second run leaves the repo as it was.
    let blocks = repo_blocks(&a.repo);
    let text = a.repo.ok(&["doctor"]);
    assert!(text.ends_with(" 0 failed"), "{text}");
    assert_eq!(repo_blocks(&a.repo), blocks);
}

#[test]
fn with_no_daemon_doctor_names_the_api_and_still_checks_the_repo() {
    let repo = TestRepo::new();
    let (report, out) = doctor(&repo);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "Error: doctor found 1 problem(s): api");
    assert_eq!(report["healthy"], false);
    let api = check(&report, "api");
    assert_eq!(api["status"], "fail");
    assert!(
        api["detail"].as_str().unwrap().contains("no daemon"),
        "{api}"
    );
    assert!(api["cause"].is_string(), "{api}");
    assert_eq!(api["fix"], "start it: `ipfs-accelerate daemon`");
    assert_eq!(check(&report, "repo")["status"], "pass", "{report}");
    let trip = check(&report, "round trip");
    assert_eq!(trip["status"], "pass", "{report}");
    assert!(trip["detail"].as_str().unwrap().contains("no daemon"));
    // No daemon, no network to check.
    assert!(!names(&report).contains(&"peers"), "{report}");
    assert_eq!(
        repo_blocks(&repo),
        0,
        "the offline round trip left its block"
    );

    // A daemon killed without a chance to clean up (SIGKILL, as Daemon's drop sends)
    // leaves its api file behind.
    let mut daemon = Daemon::start_on(repo, &[]);
    let repo = std::mem::replace(&mut daemon.repo, TestRepo::uninitialised());
    drop(daemon);
    assert!(repo.repo_path().join("api").exists());
    let (report, out) = doctor(&repo);
    assert!(!out.status.success());
    let api = check(&report, "api");
    assert_eq!(api["status"], "fail");
    assert!(
        api["detail"]
            .as_str()
            .unwrap()
            .contains("no daemon answers there"),
        "{api}"
    );
    assert!(api["cause"].as_str().unwrap().contains("killed or crashed"));
    // The dead daemon's lock went with it: the repo opens.
    assert_eq!(check(&report, "repo")["status"], "pass", "{report}");
}

#[test]
fn a_port_taken_by_another_process_is_named() {
    let repo = TestRepo::new();
    let gateway_taker = TcpListener::bind("127.0.0.1:0").unwrap();
    let api_taker = TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway = gateway_taker.local_addr().unwrap().to_string();
    let api = api_taker.local_addr().unwrap().to_string();
    set_network(&repo, "gateway", &gateway);
    set_network(&repo, "api", &api);

    // The daemon cannot bind its gateway, and says so.
    let out = repo.run(&["daemon", "--api", "127.0.0.1:0", "--no-mdns"]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains(&format!("binding the gateway to {gateway}")),
        "{error}"
    );

    let (report, out) = doctor(&repo);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "Error: doctor found 2 problem(s): api, gateway"
    );
    let check_gateway = check(&report, "gateway");
    assert_eq!(check_gateway["status"], "fail");
    assert_eq!(
        check_gateway["detail"],
        format!("the gateway address {gateway} is taken by another process")
    );
    assert!(check_gateway["fix"].as_str().unwrap().contains("--gateway"));
    let check_api = check(&report, "api");
    assert!(
        check_api["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("its API address {api} is taken")),
        "{check_api}"
    );

    // On free addresses, the same checks pass.
    drop((gateway_taker, api_taker));
    set_network(&repo, "gateway", &format!("127.0.0.1:{}", quiet_port()));
    set_network(&repo, "api", &format!("127.0.0.1:{}", quiet_port()));
    let (report, _) = doctor(&repo);
    assert_eq!(check(&report, "gateway")["status"], "pass", "{report}");
    assert_eq!(
        check(&report, "api")["fix"],
        "start it: `ipfs-accelerate daemon`"
    );
}

#[test]
fn another_server_behind_the_gateway_address_is_not_taken_for_the_gateway() {
    let daemon = Daemon::start(&[]);
    // An HTTP server that answers everything with a page of its own.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", other.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        if let Ok((mut stream, _)) = other.accept() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let page = "<h1>something else</h1>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    std::fs::write(daemon.repo.repo_path().join("gateway"), &url).unwrap();
    let (report, out) = doctor(&daemon.repo);
    server.join().unwrap();
    assert!(!out.status.success());
    let gateway = check(&report, "gateway");
    assert_eq!(gateway["status"], "fail", "{report}");
    assert!(
        gateway["detail"]
            .as_str()
            .unwrap()
            .contains("not the empty directory"),
        "{gateway}"
    );
    assert!(
        gateway["cause"]
            .as_str()
            .unwrap()
            .contains("another HTTP server")
    );
    // Everything else about the daemon is fine.
    assert_eq!(check(&report, "api")["status"], "pass");
    assert_eq!(check(&report, "round trip")["status"], "pass");
}

#[test]
fn doctor_says_whether_the_swarm_is_private() {
    let keys = TestRepo::uninitialised();
    let key = keys.path("swarm.key");
    std::fs::write(&key, keys.ok(&["swarm", "key", "generate"])).unwrap();
    let private = TestRepo::uninitialised();
    private.ok(&["init", "--swarm-key", key.to_str().unwrap()]);
    let (report, _) = doctor(&private);
    let swarm = check(&report, "private swarm");
    assert_eq!(swarm["status"], "pass");
    assert!(
        swarm["detail"].as_str().unwrap().starts_with("private"),
        "{swarm}"
    );

    // A node that must join a private swarm, and has no key, cannot start.
    let public = TestRepo::new();
    let child = public
        .command(&["doctor", "--json"])
        .env("LIBP2P_FORCE_PNET", "1")
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, COMMAND_TIMEOUT).unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let swarm = check(&report, "private swarm");
    assert_eq!(swarm["status"], "fail", "{report}");
    assert!(swarm["fix"].as_str().unwrap().contains("swarm.key"));
}
