//! Daemons as real processes on loopback: they connect (explicitly and through a
//! bootstrap address), fetch from each other over Bitswap through the CLI routed to
//! their APIs, find providers on the DHT, and carry on when one is killed.

use std::time::Duration;

use ipfs_accelerate_tests::{Daemon, deterministic_file, poll_until};

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
    // Bitswap's counters, in Kubo's shape: a sent b the file's blocks.
    let stat = |d: &Daemon| -> serde_json::Value {
        serde_json::from_str(&d.repo.ok(&["bitswap", "stat", "--json"])).unwrap()
    };
    let (sent, received) = (stat(&a), stat(&b));
    let size = content.len() as u64;
    assert!(sent["BlocksSent"].as_u64().unwrap() >= 48, "{sent}");
    assert!(sent["DataSent"].as_u64().unwrap() >= size, "{sent}");
    assert!(
        received["BlocksReceived"].as_u64().unwrap() >= 48,
        "{received}"
    );
    assert!(
        received["DataReceived"].as_u64().unwrap() >= size,
        "{received}"
    );
    assert!(
        received["MessagesReceived"].as_u64().unwrap() > 0,
        "{received}"
    );
    assert_eq!(sent["Peers"], serde_json::json!([b.peer_id()]), "{sent}");
    assert_eq!(received["Wantlist"], serde_json::json!([]), "{received}");
    assert_eq!(b.repo.ok(&["bitswap", "wantlist"]), "");
    assert_eq!(
        a.repo.ok(&["bitswap", "wantlist", "--peer", &b.peer_id()]),
        ""
    );
    assert!(b.repo.ok(&["bitswap", "stat"]).contains("partners [1]"));
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

    // c finds a through the DHT (b knows a), and b lists a's address.
    let a_addrs = c.repo.ok(&["routing", "findpeer", &a.peer_id()]);
    assert!(a_addrs.contains("/ip4/127.0.0.1/tcp/"), "{a_addrs}");
    let known = b.repo.ok(&["swarm", "addrs"]);
    assert!(known.contains(&a.peer_id()), "{known}");
    assert!(
        c.repo
            .ok(&["swarm", "addrs", "local"])
            .contains("/ip4/127.0.0.1/tcp/")
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
fn three_daemons_find_each_other_with_mdns() {
    let daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start_with_mdns()).collect();
    let ids: Vec<String> = daemons.iter().map(Daemon::peer_id).collect();
    let everyone_connected = || {
        daemons.iter().enumerate().all(|(i, d)| {
            let peers = d.repo.ok(&["swarm", "peers"]);
            ids.iter()
                .enumerate()
                .all(|(j, id)| i == j || peers.contains(id.as_str()))
        })
    };
    assert!(
        poll_until(Duration::from_secs(30), everyone_connected),
        "the daemons did not all find each other over mDNS"
    );
    // Nobody dialed anybody: the last fetches what the first added.
    let file = daemons[0].repo.path("weights.bin");
    deterministic_file(&file, 3 * 1024 * 1024, 5).unwrap();
    let cid = daemons[0].repo.add(&file, &[]);
    let fetched = daemons[2].repo.run(&["cat", &cid]);
    assert!(fetched.status.success());
    assert!(fetched.stdout == std::fs::read(&file).unwrap());
}

#[test]
fn repo_commands_go_through_a_running_daemon() {
    use ipfs_accelerate_tests::TestRepo;

    let repo = TestRepo::new();
    let dir = repo.path("tree");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), b"alpha\n").unwrap();
    deterministic_file(&dir.join("sub/big.bin"), 3 * 1024 * 1024, 4).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join(".hidden"), b"secret").unwrap();
    std::os::unix::fs::symlink("sub/big.bin", dir.join("link")).unwrap();
    let root = repo.ok(&["add", "-r", "-Q", dir.to_str().unwrap()]);
    let with_hidden = repo.ok(&["add", "-r", "-Q", "--hidden", dir.to_str().unwrap()]);
    let daemon = Daemon::start_on(repo, &[]);
    let cli = &daemon.repo;

    // add -r streams the tree through the API's multipart upload: same CIDs.
    let dir_arg = dir.to_str().unwrap();
    assert_eq!(cli.ok(&["add", "-r", "-Q", dir_arg]), root);
    assert_eq!(
        cli.ok(&["add", "-r", "-Q", "--hidden", dir_arg]),
        with_hidden
    );
    assert_ne!(root, with_hidden);
    let lines = cli.ok(&["add", "-r", dir_arg]);
    for name in [
        "tree/a.txt",
        "tree/sub/big.bin",
        "tree/empty",
        "tree/link",
        "tree/sub",
    ] {
        assert!(
            lines.contains(&format!(" {name}\n")),
            "{name} missing: {lines}"
        );
    }
    assert!(lines.ends_with(&format!("added {root} tree")), "{lines}");
    assert!(cli.fails(&["add", dir_arg]).contains("add it with -r"));
    assert!(cli.ok(&["repo", "verify"]).contains("repo is intact"));

    let listing = cli.ok(&["ls", &root]);
    assert!(
        listing.contains(" 6 a.txt")
            && listing.contains(" - sub/")
            && listing.contains(" - empty/"),
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
    cli.ok(&["pin", "rm", &with_hidden]);
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

    // get and cat by IPFS path, through the daemon's tar stream.
    let out = cli.path("restored");
    cli.ok(&["get", &root, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(out.join("sub/big.bin")).unwrap(),
        std::fs::read(dir.join("sub/big.bin")).unwrap()
    );
    let single = cli.path("big.bin");
    cli.ok(&[
        "get",
        &format!("/ipfs/{root}/sub/big.bin"),
        "-o",
        single.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&single).unwrap(),
        std::fs::read(dir.join("sub/big.bin")).unwrap()
    );
    // Without -o, `get` of a path writes its last component into the working directory.
    let workdir = cli.path("workdir");
    std::fs::create_dir_all(&workdir).unwrap();
    let got = cli
        .command(&["get", &format!("/ipfs/{root}/a.txt")])
        .current_dir(&workdir)
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(std::fs::read(workdir.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(cli.ok(&["cat", &format!("{root}/a.txt")]), "alpha");
    assert!(
        cli.fails(&["cat", &format!("{root}/missing.txt")])
            .contains("no link named \"missing.txt\"")
    );
    assert!(
        cli.fails(&["get", &root, "-o", out.to_str().unwrap()])
            .contains("already exists")
    );
}

#[test]
fn provide_strategy_decides_which_blocks_are_announced() {
    let file_blocks = |daemon: &Daemon| {
        let file = daemon.repo.path("weights.bin");
        deterministic_file(&file, 3 * 256 * 1024, 11).unwrap();
        let root = daemon.repo.add(&file, &[]);
        let listing = daemon.repo.ok(&["ls", &root]);
        let first_chunk = listing.split_whitespace().next().unwrap().to_string();
        (root, first_chunk)
    };
    let finds = |seeker: &Daemon, cid: &str, provider: &Daemon| {
        seeker
            .repo
            .ok(&["routing", "findprovs", cid])
            .contains(&provider.peer_id())
    };

    // The default, `all`: a chunk deep in the file leads to its holder.
    let all = Daemon::start(&[]);
    let seeker = Daemon::start(&["--bootstrap", &all.addr()]);
    let (root, chunk) = file_blocks(&all);
    assert!(finds(&seeker, &root, &all));
    assert!(
        poll_until(Duration::from_secs(20), || finds(&seeker, &chunk, &all)),
        "no provider record for chunk {chunk} under the `all` strategy"
    );

    // `roots`: the root is announced, its chunks are not.
    let repo = ipfs_accelerate_tests::TestRepo::new();
    let config = repo.repo_path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("provide_strategy = \"all\""), "{text}");
    std::fs::write(
        &config,
        text.replace("provide_strategy = \"all\"", "provide_strategy = \"roots\""),
    )
    .unwrap();
    let roots_only = Daemon::start_on(repo, &["--bootstrap", &seeker.addr()]);
    let (root, chunk) = file_blocks(&roots_only);
    assert!(poll_until(Duration::from_secs(20), || finds(
        &seeker,
        &root,
        &roots_only
    )));
    // Absence can only be watched for: give the records as long as `all` needed above.
    assert!(!poll_until(Duration::from_secs(3), || finds(
        &seeker,
        &chunk,
        &roots_only
    )));
}

#[test]
fn model_import_names_a_folder_through_a_running_daemon() {
    use ipfs_accelerate_tests::workspace_root;

    let daemon = Daemon::start(&[]);
    let cli = &daemon.repo;
    let tiny = workspace_root().join("tests/fixtures/tiny-bert");
    let tiny = tiny.to_str().unwrap();
    // `model import DIR` uploads the folder with `add`, then names it with
    // `accelerate/model/import`: the same CID and record as without a daemon.
    let imported: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "model",
        "import",
        tiny,
        "--name",
        "tiny",
        "--version",
        "2",
        "--tags",
        "nlp,bert",
        "--json",
    ]))
    .unwrap();
    let cid = imported["cid"].as_str().unwrap().to_owned();
    assert_eq!(cid, cli.ok(&["add", "-r", "-Q", tiny]));
    assert_eq!(
        (
            &imported["name"],
            &imported["version"],
            &imported["task"],
            &imported["tags"]
        ),
        (
            &"tiny".into(),
            &"2".into(),
            &"embed".into(),
            &serde_json::json!(["nlp", "bert"])
        ),
        "{imported}"
    );
    let listed = cli.ok(&["model", "ls"]);
    assert!(
        listed.contains(&format!("tiny@2\t{cid}\tembed\tlocal\tnlp,bert")),
        "{listed}"
    );
    assert!(cli.ok(&["pin", "ls", "--type", "recursive"]).contains(&cid));
    assert!(
        cli.ok(&["infer", "tiny@2", "--text", "hello"])
            .contains("(32 dims)")
    );
    // The daemon runs the model where it is served: engine options are refused by
    // name, not ignored.
    let engine = cli.run(&["infer", "tiny@2", "--text", "hello", "--device", "wgpu"]);
    let said = String::from_utf8_lossy(&engine.stderr);
    assert!(!engine.status.success(), "{said}");
    assert!(
        said.contains("--device apply when infer runs a model itself")
            && said.contains("model serve"),
        "{said}"
    );

    // What cannot be named is the caller's mistake (400), with what to do.
    let file = cli.path("plain.txt");
    std::fs::write(&file, b"not a model").unwrap();
    let plain = cli.ok(&["add", "-Q", file.to_str().unwrap()]);
    let missing = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = format!("{}/api/v0/accelerate/model/import", daemon.api_url());
    for (query, says) in [
        (format!("arg={plain}&name=x"), "is not a model folder"),
        (
            format!("arg={missing}&name=x"),
            "is not wholly in this repo",
        ),
        (format!("arg={cid}&name=a%20b"), "invalid model name"),
        (format!("arg={cid}"), "is required"),
    ] {
        let mut reply = agent.post(format!("{url}?{query}")).send_empty().unwrap();
        let body = reply.body_mut().read_to_string().unwrap();
        assert_eq!(reply.status().as_u16(), 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
    // None of them named anything.
    assert_eq!(cli.ok(&["model", "ls"]).lines().count(), 1);
}
