//! A real Kubo RPC client (npm `kubo-rpc-client`) drives our daemon's API: version, id,
//! add (a file and a directory tree), cat, get, pin rm/ls/add and pubsub
//! subscribe/ls/publish.

use ipfs_accelerate_tests::{Daemon, TestRepo, harness, node_script};

#[test]
fn kubo_rpc_client_drives_the_daemon() {
    let daemon = Daemon::start(&[]);
    let mut cmd = node_script("rpc.mjs");
    cmd.arg(daemon.api_url());
    let report: serde_json::Value = serde_json::from_str(&harness(cmd)[0]).unwrap();
    assert_eq!(report["id"], daemon.peer_id().as_str());
    assert!(
        report["added"].as_str().unwrap().starts_with("bafybei"),
        "{report}"
    );
    assert_eq!(report["catMatches"], true, "{report}");
    assert_eq!(report["unpinned"], true, "{report}");
    assert_eq!(report["pinned"], true, "{report}");
    assert_eq!(report["subscribed"], true, "{report}");
    assert_eq!(report["pubsubSelf"], "ping", "{report}");
    assert_eq!(report["tarHasEntries"], true, "{report}");
    // A daemon alone: nothing exchanged, nothing wanted, no partners.
    let bitswap =
        serde_json::json!({"blocksSent": 0, "blocksReceived": 0, "wantlist": 0, "peers": 0});
    assert_eq!(report["bitswap"], bitswap, "{report}");
    assert_eq!(report["wantlist"], 0, "{report}");
    assert_eq!(report["wantlistForPeer"], 0, "{report}");
    // The tree the JS client uploaded part by part has the CID `add -r` gives it here.
    let local = TestRepo::new();
    let dir = local.path("tree");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(dir.join("sub/b.txt"), "beta\n".repeat(100_000)).unwrap();
    let expected = local.ok(&["add", "-r", "-Q", "--cid-version=1", dir.to_str().unwrap()]);
    assert_eq!(report["treeRoot"], expected.as_str(), "{report}");
    // The CLI, routed to the same daemon, sees what the JS client added.
    let cid = report["added"].as_str().unwrap();
    assert!(
        daemon
            .repo
            .ok(&["pin", "ls", "--type", "recursive"])
            .contains(cid)
    );
}
