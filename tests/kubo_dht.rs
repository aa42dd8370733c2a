//! The DHT with real Kubo (v0.22) over its LAN DHT protocol on loopback. Providers are
//! found through a hub daemon that holds the records, never by being connected to the
//! provider in advance: Kubo finds our provider record and fetches from us, and we find
//! Kubo's record and fetch from Kubo.

use std::time::{Duration, Instant};

use ipfs_accelerate_tests::{Daemon, Kubo, TestRepo, deterministic_file};

const DEADLINE: Duration = Duration::from_secs(90);

#[test]
fn kubo_and_we_find_each_others_provider_records() {
    let files = TestRepo::uninitialised();
    let hub = Daemon::start(&[]);
    let hub_addr = hub.addr();
    let ours = Daemon::start(&["--bootstrap", &hub_addr]);
    let mut kubo = Kubo::start(Duration::from_secs(120));
    assert_eq!(kubo.call(&format!("connect {hub_addr}"))["ok"], true);

    // Ours -> Kubo: we add (and provide); Kubo, connected only to the hub, fetches.
    let mine = files.path("ours.bin");
    deterministic_file(&mine, 3 * 1024 * 1024 + 1, 21).unwrap();
    let cid = ours.repo.add(&mine, &[]);
    let start = Instant::now();
    loop {
        if ours
            .repo
            .ok(&["routing", "findprovs", &cid])
            .contains(&ours.peer_id())
            && hub
                .repo
                .ok(&["routing", "findprovs", &cid])
                .contains(&ours.peer_id())
        {
            break;
        }
        ours.repo.ok(&["routing", "provide", &cid]);
        assert!(
            start.elapsed() < DEADLINE,
            "our provider record never reached the hub"
        );
    }
    let dest = files.path("kubo-got.bin");
    let got = kubo.call(&format!("get {cid} {}", dest.display()));
    assert_eq!(got["ok"], true, "Kubo could not find or fetch {cid}");
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&mine).unwrap());

    // Kubo -> ours: Kubo adds (and provides); a fresh daemon that knows only the hub
    // finds Kubo's record and fetches from Kubo.
    let theirs = files.path("kubo.bin");
    deterministic_file(&theirs, 2 * 1024 * 1024 + 9, 22).unwrap();
    let kubo_cid = kubo.call(&format!("add {}", theirs.display()))["cid"]
        .as_str()
        .unwrap()
        .to_string();
    let fresh = Daemon::start(&["--bootstrap", &hub_addr]);
    let start = Instant::now();
    loop {
        let providers = fresh.repo.ok(&["routing", "findprovs", &kubo_cid]);
        if providers.contains(&kubo.id) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "Kubo's provider record never showed up: {providers:?}"
        );
    }
    let out = fresh.repo.run(&["cat", &kubo_cid]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == std::fs::read(&theirs).unwrap());
}
