//! The CLI end to end: real processes of the binary on temporary repos.

use ipfs_accelerate_tests::{Daemon, TestRepo, deterministic_file};

#[test]
fn add_cat_get_round_trip_files_and_directories() {
    let repo = TestRepo::new();
    let file = repo.path("data.bin");
    deterministic_file(&file, 3 * 1024 * 1024 + 17, 1).unwrap();
    let cid = repo.add(&file, &[]);
    assert!(cid.starts_with("bafybei"), "{cid}");
    let out = repo.run(&["cat", &cid]);
    assert!(out.status.success());
    assert_eq!(out.stdout, std::fs::read(&file).unwrap());

    let dir = repo.path("tree");
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("a.txt"), b"alpha\n").unwrap();
    std::fs::copy(&file, dir.join("sub/deeper/big.bin")).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
    let lines = repo.ok(&["add", "-r", dir.to_str().unwrap()]);
    let last = lines.lines().last().unwrap();
    assert!(last.ends_with(" tree"), "{lines}");
    assert!(lines.contains(" tree/sub/deeper/big.bin"), "{lines}");
    assert!(lines.contains(" tree/empty"), "{lines}");
    let root = last.split_whitespace().nth(1).unwrap().to_string();

    let out_dir = repo.path("out");
    repo.ok(&["get", &root, "-o", out_dir.to_str().unwrap()]);
    assert_eq!(std::fs::read(out_dir.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(out_dir.join("sub/deeper/big.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert!(out_dir.join("empty").is_dir());
    assert_eq!(
        std::fs::read_link(out_dir.join("link")).unwrap().to_str(),
        Some("a.txt")
    );

    let listing = repo.ok(&["ls", &root]);
    assert!(listing.contains(" 6 a.txt"), "{listing}");
    assert!(listing.contains(" - sub/"), "{listing}");
    let json: serde_json::Value = serde_json::from_str(&repo.ok(&["ls", "--json", &root])).unwrap();
    assert_eq!(json["Objects"][0]["Links"].as_array().unwrap().len(), 4);
}

#[test]
fn stdin_and_output_modes_match_kubo_shapes() {
    let repo = TestRepo::new();
    let out = repo.run_with_stdin(&["add", "-"], b"hello\n");
    let text = String::from_utf8_lossy(&out.stdout);
    // `echo hello | ipfs add --cid-version=1`
    let cid = "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am";
    assert_eq!(text.trim(), format!("added {cid} {cid}"));
    let v0 = repo.run_with_stdin(&["add", "-Q", "--cid-version=0", "-"], b"hello\n");
    assert_eq!(
        String::from_utf8_lossy(&v0.stdout).trim(),
        "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
    );
    let json = repo.run_with_stdin(&["add", "--json", "-"], b"hello\n");
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["Hash"], cid);
    assert_eq!(value["Size"], "6");

    let id: serde_json::Value = serde_json::from_str(&repo.ok(&["id", "--json"])).unwrap();
    assert!(id["ID"].as_str().unwrap().starts_with("12D3KooW"));
    assert!(id["PublicKey"].as_str().unwrap().len() > 40);
    assert_eq!(repo.ok(&["id"]), id["ID"].as_str().unwrap());
}

#[test]
fn blocks_put_get_stat_rm() {
    let repo = TestRepo::new();
    let input = repo.path("block");
    std::fs::write(&input, b"raw block").unwrap();
    let cid = repo.ok(&["block", "put", input.to_str().unwrap()]);
    assert!(cid.starts_with("bafkrei"));
    assert_eq!(repo.run(&["block", "get", &cid]).stdout, b"raw block");
    let stat: serde_json::Value =
        serde_json::from_str(&repo.ok(&["block", "stat", "--json", &cid])).unwrap();
    assert_eq!(stat["Size"], 9);
    let blake = repo.ok(&[
        "block",
        "put",
        "--mhtype",
        "blake3",
        input.to_str().unwrap(),
    ]);
    assert!(blake.starts_with("bafkr4i"), "{blake}");
    repo.ok(&["block", "rm", &cid]);
    assert!(
        repo.fails(&["block", "get", &cid])
            .contains("not in the local repo")
    );

    // Pinned blocks are refused.
    let pinned = repo.ok(&["block", "put", "--pin", input.to_str().unwrap()]);
    assert!(repo.fails(&["block", "rm", &pinned]).contains("pinned"));
    // Garbage claiming to be dag-pb is refused up front.
    std::fs::write(&input, [0xffu8, 0xff, 0xff]).unwrap();
    assert!(
        repo.fails(&[
            "block",
            "put",
            "--cid-codec",
            "dag-pb",
            input.to_str().unwrap()
        ])
        .contains("dag-pb")
    );
    // Oversized blocks are refused with advice.
    std::fs::write(&input, vec![0u8; 1024 * 1024 + 1]).unwrap();
    assert!(
        repo.fails(&["block", "put", input.to_str().unwrap()])
            .contains("--allow-big-block")
    );
}

#[test]
fn pins_gc_and_stat() {
    let repo = TestRepo::new();
    let (a, b) = (repo.path("a"), repo.path("b"));
    deterministic_file(&a, 600_000, 2).unwrap();
    deterministic_file(&b, 600_000, 3).unwrap();
    let kept = repo.add(&a, &[]);
    let dropped = repo.add(&b, &["--pin=false"]);
    let pins = repo.ok(&["pin", "ls", "--type", "recursive"]);
    assert_eq!(pins, format!("{kept} recursive"));
    let indirect = repo.ok(&["pin", "ls", "--type", "indirect"]);
    assert_eq!(
        indirect.lines().count(),
        3,
        "three leaves under the root: {indirect}"
    );

    let gc = repo.ok(&["repo", "gc"]);
    assert!(gc.contains(&format!("removed {dropped}")), "{gc}");
    assert!(!gc.contains(&kept));
    assert!(
        repo.fails(&["cat", &dropped])
            .contains("not in the local repo")
    );
    assert_eq!(repo.run(&["cat", &kept]).stdout, std::fs::read(&a).unwrap());

    let leaf = indirect
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(
        repo.fails(&["pin", "rm", &leaf])
            .contains("pinned indirectly")
    );
    repo.ok(&["pin", "rm", &kept]);
    assert!(repo.fails(&["pin", "rm", &kept]).contains("not pinned"));
    repo.ok(&["pin", "add", &kept]);
    repo.ok(&["pin", "rm", &kept]);
    repo.ok(&["repo", "gc", "--quiet"]);
    let stat: serde_json::Value =
        serde_json::from_str(&repo.ok(&["repo", "stat", "--json"])).unwrap();
    assert_eq!(stat["NumObjects"], 0);
    assert_eq!(stat["RepoSize"], 0);
    assert_eq!(stat["StorageMax"], 10_000_000_000u64);
    assert!(
        repo.fails(&["pin", "add", &kept])
            .contains("not in the local repo")
    );
}

#[test]
fn dag_export_import_round_trip_between_repos() {
    let (source, target) = (TestRepo::new(), TestRepo::new());
    let file = source.path("f");
    deterministic_file(&file, 2_000_000, 4).unwrap();
    let cid = source.add(&file, &["--chunker=size-65536"]);
    let car = source.run(&["dag", "export", &cid]);
    assert!(car.status.success());
    let car_path = target.path("x.car");
    std::fs::write(&car_path, &car.stdout).unwrap();
    let out = target.ok(&["dag", "import", "--stats", car_path.to_str().unwrap()]);
    assert!(out.contains(&format!("pinned root {cid} success")), "{out}");
    assert_eq!(
        target.run(&["cat", &cid]).stdout,
        std::fs::read(&file).unwrap()
    );
    assert!(
        target
            .ok(&["pin", "ls"])
            .contains(&format!("{cid} recursive"))
    );
    let stdin_import = TestRepo::new();
    let out = stdin_import.run_with_stdin(&["dag", "import"], &car.stdout);
    assert!(out.status.success());

    // Truncated and tampered CARs are rejected and pin nothing.
    let bad = TestRepo::new();
    let truncated = bad.path("t.car");
    std::fs::write(&truncated, &car.stdout[..car.stdout.len() - 100]).unwrap();
    assert!(
        bad.fails(&["dag", "import", truncated.to_str().unwrap()])
            .contains("truncated")
    );
    let mut tampered_bytes = car.stdout.clone();
    let n = tampered_bytes.len();
    tampered_bytes[n - 10] ^= 0xff;
    let tampered = bad.path("x.car");
    std::fs::write(&tampered, tampered_bytes).unwrap();
    assert!(
        bad.fails(&["dag", "import", tampered.to_str().unwrap()])
            .contains("does not match")
    );
    assert_eq!(bad.ok(&["pin", "ls"]), "");
    bad.ok(&["repo", "verify"]);
}

#[test]
fn bad_input_gets_one_line_errors() {
    let repo = TestRepo::new();
    assert!(repo.fails(&["cat", "not-a-cid"]).contains("invalid CID"));
    assert!(
        repo.fails(&["add", repo.path("missing").to_str().unwrap()])
            .contains("No such file")
    );
    let unreadable = repo.path("secret");
    std::fs::write(&unreadable, b"x").unwrap();
    let dir = repo.path("dir");
    std::fs::create_dir(&dir).unwrap();
    assert!(
        repo.fails(&["add", dir.to_str().unwrap()])
            .contains("use -r")
    );
    assert!(
        repo.fails(&["add", "--chunker=rabin", unreadable.to_str().unwrap()])
            .contains("size-N")
    );
    assert!(
        repo.fails(&["add", "--cid-version=2", unreadable.to_str().unwrap()])
            .contains("--cid-version")
    );
    let unknown = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    assert!(
        repo.fails(&["cat", unknown])
            .contains("not in the local repo")
    );
    assert!(
        repo.fails(&["get", unknown])
            .contains("not in the local repo")
    );
    assert!(
        repo.fails(&["dag", "export", unknown])
            .contains("not in the local repo")
    );
    let garbage = repo.path("garbage.car");
    std::fs::write(&garbage, b"this is not a car file at all").unwrap();
    repo.fails(&["dag", "import", garbage.to_str().unwrap()]);
    let dir_cid = repo.ok(&["add", "-r", "-Q", dir.to_str().unwrap()]);
    assert!(repo.fails(&["cat", &dir_cid]).contains("is a directory"));

    let fresh = TestRepo::uninitialised();
    assert!(
        fresh
            .fails(&["add", unreadable.to_str().unwrap()])
            .contains("ipfs-accelerate init")
    );
    fresh.ok(&["init"]);
    assert!(fresh.fails(&["init"]).contains("already exists"));
}

#[test]
fn unreadable_files_are_reported() {
    // Root reads everything, so make the path unreadable by making it a dangling
    // symlink target inside a directory import instead.
    let repo = TestRepo::new();
    let dir = repo.path("d");
    std::fs::create_dir(&dir).unwrap();
    let fifo = dir.join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        repo.fails(&["add", "-r", dir.to_str().unwrap()])
            .contains("not a regular file")
    );
    assert_eq!(
        repo.ok(&["pin", "ls"]),
        "",
        "nothing pinned after a failed add"
    );
}

#[test]
fn a_second_process_gets_a_clear_error_while_the_repo_is_in_use() {
    let repo = TestRepo::new();
    // `add -` holds the repo open while it waits for stdin.
    let mut holder = repo
        .command(&["add", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The holder has the lock once it created... wait for the pid to appear in the lock file.
    let lock = repo.repo_path().join("repo.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&lock).unwrap_or_default();
        if text.trim() == holder.id().to_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "holder never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = repo.fails(&["pin", "ls"]);
    assert!(
        err.contains("in use by another ipfs-accelerate process"),
        "{err}"
    );
    assert!(err.contains(&holder.id().to_string()), "{err}");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    repo.ok(&["pin", "ls"]);
}

#[test]
fn full_disk_is_a_clear_error() {
    // A 20 MiB tmpfs stands in for a full disk; needs root (CI and dev machines are).
    let repo = TestRepo::new();
    let mount = repo.path("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"])
        .arg(&mount)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(mounted, "mounting a tmpfs needs root");
    let small = TestRepo {
        dir: tempfile::Builder::new().tempdir_in(&mount).unwrap(),
    };
    small.ok(&["init"]);
    let file = repo.path("big");
    deterministic_file(&file, 40 * 1024 * 1024, 5).unwrap();
    let err = small.fails(&["add", file.to_str().unwrap()]);
    assert!(
        err.contains("No space left") || err.contains("space"),
        "{err}"
    );
    drop(small);
    let _ = std::process::Command::new("umount").arg(&mount).status();
}

#[test]
fn storage_max_evicts_least_recently_used_unpinned_content() {
    let repo = TestRepo::new();
    // 10 MB cap: eviction starts above 9 MB and frees down to 7 MB.
    let config = repo.repo_path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("storage_max = 10000000000", "storage_max = 10000000");
    std::fs::write(&config, text).unwrap();

    let files: Vec<_> = (0..4)
        .map(|i| {
            let path = repo.path(&format!("f{i}"));
            deterministic_file(&path, 2_000_000, 10 + i).unwrap();
            path
        })
        .collect();
    let pinned = repo.add(&files[0], &[]);
    let cids: Vec<String> = files[1..]
        .iter()
        .map(|f| repo.add(f, &["--pin=false"]))
        .collect();
    // Reading the oldest cached file makes it the most recently used.
    assert!(repo.run(&["cat", &cids[0]]).status.success());
    // 8 MB in the repo; 2 MB more crosses 9 MB: evict down to 7 MB.
    let newest = repo.path("newest");
    deterministic_file(&newest, 2_000_000, 20).unwrap();
    let newest_cid = repo.add(&newest, &["--pin=false"]);

    let present = |cid: &str| repo.run(&["cat", cid]).status.success();
    assert!(present(&pinned), "pinned content is never evicted");
    assert!(present(&cids[0]), "recently read content stays");
    assert!(present(&newest_cid), "content just written stays");
    assert!(!present(&cids[1]), "least recently used goes first");
    let stat: serde_json::Value =
        serde_json::from_str(&repo.ok(&["repo", "stat", "--json"])).unwrap();
    // Eviction freed down to 7 MB while the newest file was being written; the rest
    // of it landed afterwards, still under the 9 MB mark that starts eviction.
    assert!(stat["RepoSize"].as_u64().unwrap() <= 9_000_000, "{stat}");
    repo.ok(&["repo", "verify"]);
}

/// The boundary every upload used before each got a random one.
const OLD_FIXED_BOUNDARY: &[u8] = b"ipfs-accelerate-boundary-7c1f2a";

#[test]
fn uploads_keep_files_that_hold_a_multipart_boundary() {
    let daemon = Daemon::start(&[]);
    let file = daemon.repo.path("boundary.txt");
    let mut content = b"before\r\n--".to_vec();
    content.extend_from_slice(OLD_FIXED_BOUNDARY);
    content.extend_from_slice(b"\r\nContent-Type: text/plain\r\n\r\nmiddle\r\n--");
    content.extend_from_slice(OLD_FIXED_BOUNDARY);
    content.extend_from_slice(b"--\r\nafter");
    std::fs::write(&file, &content).unwrap();
    let through_daemon = daemon.repo.add(&file, &[]);
    let local = TestRepo::new();
    assert_eq!(through_daemon, local.add(&file, &[]));
    assert_eq!(daemon.repo.run(&["cat", &through_daemon]).stdout, content);
}

#[test]
fn boolean_flags_take_values_only_after_an_equals_sign() {
    // Kubo: `ipfs add --raw-leaves FILE` adds FILE with raw leaves.
    let repo = TestRepo::new();
    let file = repo.path("data.bin");
    deterministic_file(&file, 600_000, 9).unwrap();
    let path = file.to_str().unwrap();
    let raw = repo.ok(&["add", "-Q", "--cid-version=0", "--raw-leaves", path]);
    assert_eq!(
        raw,
        repo.ok(&["add", "-Q", "--cid-version=0", "--raw-leaves=true", path])
    );
    assert_ne!(
        raw,
        repo.ok(&["add", "-Q", "--cid-version=0", "--raw-leaves=false", path])
    );
    let pinned = repo.ok(&["add", "-Q", "--pin", path]);
    assert!(repo.ok(&["pin", "ls"]).contains(&pinned));
    repo.ok(&["pin", "rm", &pinned]);
    repo.ok(&["pin", "add", "--recursive", &pinned]);
    let car = repo.path("data.car");
    let out = repo.run(&["dag", "export", &pinned]);
    std::fs::write(&car, out.stdout).unwrap();
    repo.ok(&["dag", "import", "--pin-roots", car.to_str().unwrap()]);
}

#[test]
fn identity_cids_are_read_inline_even_through_a_daemon_with_no_peers() {
    // CIDv1, raw, identity multihash of "hello\n".
    let cid = "bafkqabtimvwgy3yk";
    let repo = TestRepo::new();
    assert_eq!(repo.run(&["cat", cid]).stdout, b"hello\n");
    let daemon = Daemon::start_on(repo, &[]);
    let started = std::time::Instant::now();
    assert_eq!(daemon.repo.run(&["cat", cid]).stdout, b"hello\n");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answered from the CID, not after a network timeout"
    );
}

/// `--precision f16` runs on wgpu only: the CPU backends refuse it by name, before any
/// weight is read; on wgpu (Mesa's lavapipe without a GPU) a model runs in f16 and
/// embeds as it does at f32 on the CPU, to f16's precision.
#[test]
fn half_precision_runs_on_wgpu_only() {
    let repo = TestRepo::new();
    let folder = ipfs_accelerate_tests::workspace_root().join("tests/fixtures/tiny-bert");
    let cid = repo.ok(&["model", "import", folder.to_str().unwrap()]);
    fn infer<'a>(cid: &'a str, device: &'a str, precision: &'a str) -> Vec<&'a str> {
        let mut args = vec!["infer", cid, "--text", "peers share weights"];
        args.extend(["--device", device, "--precision", precision, "--json"]);
        args
    }
    for device in ["cpu", "ndarray"] {
        let err = repo.fails(&infer(&cid, device, "f16"));
        assert!(
            err.contains("f16 runs on wgpu only; the CPU widens half weights to f32"),
            "{err}"
        );
    }
    let err = repo.fails(&infer(&cid, "cpu", "f8"));
    assert!(err.contains("use f32 or f16"), "{err}");

    let embedding = |device: &str, precision: &str| {
        let out: serde_json::Value =
            serde_json::from_str(&repo.ok(&infer(&cid, device, precision))).unwrap();
        assert_eq!(out["precision"], precision);
        serde_json::from_value::<Vec<Vec<f32>>>(out["embeddings"].clone()).unwrap()[0].clone()
    };
    let (full, half) = (embedding("cpu", "f32"), embedding("wgpu", "f16"));
    let worst = full
        .iter()
        .zip(&half)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst > 0.0 && worst < 0.02, "f16 differs by {worst}");
}
