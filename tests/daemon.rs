//! Daemons as real processes on loopback: they connect (explicitly and through a
//! bootstrap address), fetch from each other over Bitswap through the CLI routed to
//! their APIs, find providers on the DHT, and carry on when one is killed.

use std::time::Duration;

use ipfs_accelerate_tests::{Daemon, deterministic_file};

#[test]
fn three_daemons_fetch_from_each_other_and_survive_a_kill() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let file = a.repo.path("model.bin");
    deterministic_file(&file, 12 * 1024 * 1024 + 7, 9).unwrap();
    let cid = a.repo.add(&file, &[]);
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

#[test]
fn repo_commands_go_through_a_running_daemon() {
    use ipfs_accelerate_tests::TestRepo;

    let repo = TestRepo::new();
    let dir = repo.path("tree");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), b"alpha\n").unwrap();
    deterministic_file(&dir.join("sub/big.bin"), 3 * 1024 * 1024, 4).unwrap();
    let root = repo.ok(&["add", "-r", "-Q", dir.to_str().unwrap()]);
    let daemon = Daemon::start_on(repo, &[]);
    let cli = &daemon.repo;

    let listing = cli.ok(&["ls", &root]);
    assert!(
        listing.contains(" 6 a.txt") && listing.contains(" - sub/"),
        "{listing}"
    );

    let block_file = cli.path("block");
    std::fs::write(&block_file, b"a raw block").unwrap();
    let block = cli.ok(&["block", "put", block_file.to_str().unwrap()]);
    assert!(cli.ok(&["block", "stat", &block]).contains("Size: 11"));
    assert_eq!(cli.run(&["block", "get", &block]).stdout, b"a raw block");
    cli.ok(&["block", "rm", &block]);

    let car = cli.run(&["dag", "export", &root]);
    assert!(car.status.success());
    let car_path = cli.path("tree.car");
    std::fs::write(&car_path, &car.stdout).unwrap();
    cli.ok(&["pin", "rm", &root]);
    let gc = cli.ok(&["repo", "gc"]);
    assert!(gc.contains(&format!("removed {root}")), "{gc}");
    let stat: serde_json::Value =
        serde_json::from_str(&cli.ok(&["repo", "stat", "--json"])).unwrap();
    assert_eq!(stat["NumObjects"], 0, "{stat}");
    assert_eq!(
        cli.ok(&["dag", "import", car_path.to_str().unwrap()]),
        format!("pinned root {root} success")
    );
    assert!(
        cli.ok(&["pin", "ls", "--type", "recursive"])
            .contains(&root)
    );
    assert!(
        cli.fails(&["get", &root])
            .contains("not available while a daemon holds the repo")
    );
}
