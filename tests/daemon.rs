//! Daemons as real processes on loopback: they connect (explicitly and through a
//! bootstrap address), fetch from each other over Bitswap through the CLI routed to
//! their APIs, find providers on the DHT, and carry on when one is killed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use ipfs_accelerate_tests::{TestRepo, deterministic_file};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running daemon; killed on drop.
struct Daemon {
    repo: TestRepo,
    child: Option<Child>,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        let repo = TestRepo::new();
        let mut args = vec![
            "daemon",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
            "--dht-protocol",
            "/ipfs/lan/kad/1.0.0",
        ];
        args.extend_from_slice(extra);
        let mut child = repo
            .command(&args)
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            match rx.recv_timeout(READY_TIMEOUT) {
                Ok(line) if line == "Daemon is ready" => break,
                Ok(_) => {}
                Err(_) => panic!("daemon did not become ready in {READY_TIMEOUT:?}"),
            }
        }
        Daemon {
            repo,
            child: Some(child),
        }
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.take().expect("running");
        ipfs_accelerate_tests::wait_with_timeout(child, timeout)
            .expect("daemon exited in time")
            .status
    }

    fn addr(&self) -> String {
        let id: serde_json::Value = serde_json::from_str(&self.repo.ok(&["id", "--json"])).unwrap();
        id["Addresses"][0].as_str().unwrap().to_string()
    }

    fn peer_id(&self) -> String {
        self.repo.ok(&["id"])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn three_daemons_fetch_from_each_other_and_survive_a_kill() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let file = a.repo.path("model.bin");
    deterministic_file(&file, 12 * 1024 * 1024 + 7, 9).unwrap();
    let cid = a.add_file(&file);
    let content = std::fs::read(&file).unwrap();

    // b dials a explicitly and fetches through its CLI, routed to its daemon.
    assert!(
        b.repo
            .ok(&["swarm", "connect", &a.addr()])
            .ends_with("success")
    );
    assert!(b.repo.ok(&["swarm", "peers"]).contains(&a.peer_id()));
    let fetched = b.repo.run(&["cat", &cid]);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(fetched.stdout == content, "b read other bytes");
    b.repo.ok(&["pin", "add", &cid]);
    assert!(
        b.repo
            .ok(&["pin", "ls", "--type", "recursive"])
            .contains(&cid)
    );

    // c only knows b (bootstrap); a provided the CID on the DHT when it was added.
    let b_addr = b.addr();
    let c = Daemon::start(&["--bootstrap", &b_addr]);
    let providers = c.repo.ok(&["routing", "findprovs", &cid]);
    assert!(
        providers.contains(&a.peer_id()) || providers.contains(&b.peer_id()),
        "c found no provider of {cid}: {providers:?}"
    );

    // Kill a: b still has the pinned copy, and c fetches it from b.
    drop(a);
    let from_b = c.repo.run(&["cat", &cid]);
    assert!(
        from_b.status.success(),
        "{}",
        String::from_utf8_lossy(&from_b.stderr)
    );
    assert!(from_b.stdout == content, "c read other bytes");

    // A clean shutdown through the API removes the api file and ends the process.
    let mut c = c;
    c.repo.ok(&["shutdown"]);
    assert!(c.wait_exit(Duration::from_secs(30)).success());
    assert!(!c.repo.repo_path().join("api").exists());
    // With the daemon gone the repo opens directly again.
    c.repo.ok(&["repo", "verify"]);
    assert!(
        c.repo
            .fails(&["swarm", "peers"])
            .contains("no daemon is running")
    );
}

impl Daemon {
    fn add_file(&self, path: &std::path::Path) -> String {
        self.repo.add(path, &[])
    }
}
