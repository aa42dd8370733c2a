//! A real Kubo RPC client (npm `kubo-rpc-client`) drives our daemon's API: version, id,
//! add, cat, pin rm/ls/add and pubsub subscribe/ls/publish.

use ipfs_accelerate_tests::{Daemon, harness, node_script};

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
    // The CLI, routed to the same daemon, sees what the JS client added.
    let cid = report["added"].as_str().unwrap();
    assert!(
        daemon
            .repo
            .ok(&["pin", "ls", "--type", "recursive"])
            .contains(cid)
    );
}
