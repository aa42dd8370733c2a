//! Pubsub with real Kubo (v0.22): a message we publish reaches Kubo's subscriber, and
//! one Kubo publishes reaches `ipfs-accelerate pubsub sub`, signed by its sender.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use ipfs_accelerate_tests::{Daemon, Kubo};

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn pubsub_messages_flow_both_ways_with_kubo() {
    let mut kubo = Kubo::start(Duration::from_secs(30));
    let ours = Daemon::start(&[]);
    assert_eq!(kubo.call("sub from-us")["ok"], true);
    let mut sub = ours
        .repo
        .command(&["pubsub", "sub", "--json", "from-kubo"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = sub.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert!(
        ours.repo
            .ok(&["swarm", "connect", &kubo.multiaddr()])
            .ends_with("success")
    );

    // Us -> Kubo. Gossip needs both sides to learn each other's subscriptions first,
    // so publish until Kubo's subscriber sees the message.
    let start = Instant::now();
    loop {
        let out = ours
            .repo
            .run_with_stdin(&["pubsub", "pub", "from-us"], b"hello kubo");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = kubo.call("next from-us 1");
        if got["data"] == "hello kubo" {
            assert_eq!(got["from"], ours.peer_id().as_str());
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "Kubo never received our message"
        );
    }

    // Kubo -> us.
    let start = Instant::now();
    loop {
        assert_eq!(kubo.call("pub from-kubo hello-ours")["ok"], true);
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            let message: serde_json::Value = serde_json::from_str(&line).unwrap();
            let data = message["data"].as_str().unwrap().strip_prefix('u').unwrap();
            let data = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(data)
                .unwrap();
            assert_eq!(data, b"hello-ours");
            assert_eq!(message["from"], kubo.id.as_str());
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "our subscriber never received Kubo's message"
        );
    }
    // Every node also listens for model announcements.
    let topics = ours.repo.ok(&["pubsub", "ls"]);
    let mut topics: Vec<&str> = topics.lines().collect();
    topics.sort();
    assert_eq!(topics, ["from-kubo", "ipfs-accelerate/models/1"]);
    let _ = sub.kill();
    let _ = sub.wait();
}
