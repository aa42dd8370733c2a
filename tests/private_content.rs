//! Private content: files encrypted to named peers before chunking, so what is stored,
//! what Bitswap carries and what the gateway serves is ciphertext; recipients read the
//! plaintext back, others get a one-line error and nothing on disk; compressed files
//! come back as added; corrupt or cut ciphertext and compressed streams fail cleanly.

use std::path::Path;

use std::time::Duration;

use ipfs_accelerate_tests::{Daemon, TestRepo, poll_until, workspace_root};

const MARKER: &[u8] = b"MARKER-plaintext-7f3a";

/// A file of `lines` lines, each carrying [`MARKER`].
fn marked_file(path: &Path, lines: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..lines)
        .flat_map(|i| {
            format!(
                "{} row {i}: {{\"score\": {}}}\n",
                "MARKER-plaintext-7f3a",
                i % 89
            )
            .into_bytes()
        })
        .collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn stdout_of(repo: &TestRepo, args: &[&str]) -> Vec<u8> {
    let out = repo.run(args);
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn http_get(url: &str) -> Vec<u8> {
    let mut response = ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap()
}

#[test]
fn encrypted_files_travel_as_ciphertext_and_open_only_for_recipients() {
    let a = Daemon::start(&[]);
    let b = Daemon::start(&[]);
    let c = Daemon::start(&[]);
    let plain = marked_file(&a.repo.path("secret.jsonl"), 60_000);
    assert!(plain.len() > 2 << 20, "several chunks: {}", plain.len());

    // A encrypts to B and to itself; C is no recipient.
    let cid = a.repo.add(
        &a.repo.path("secret.jsonl"),
        &["--encrypt-to", &b.peer_id(), "--encrypt"],
    );

    // Stored at A: every block, and the file as stored, hold ciphertext only.
    let car = stdout_of(&a.repo, &["dag", "export", &cid]);
    assert!(car.len() > plain.len());
    assert!(!contains(&car, MARKER), "a stored block holds plaintext");
    let raw = stdout_of(&a.repo, &["cat", "--raw", &cid]);
    assert!(raw.starts_with(b"age-encryption.org/v1\n"));
    assert!(!contains(&raw, MARKER));
    // A reads it back: it is a recipient.
    assert!(
        stdout_of(&a.repo, &["cat", &cid]) == plain,
        "A read other bytes"
    );

    // The gateway serves what is stored: ciphertext, as a file and as a CAR.
    for path in [format!("/ipfs/{cid}"), format!("/ipfs/{cid}?format=car")] {
        let body = http_get(&format!("http://{}{path}", a.gateway));
        assert!(body.len() > 1 << 20, "{path}: {} bytes", body.len());
        assert!(!contains(&body, MARKER), "{path} served plaintext");
    }

    // B fetches the blocks over Bitswap: what it received is ciphertext, and it opens.
    b.repo.ok(&["swarm", "connect", &a.addr()]);
    assert!(
        stdout_of(&b.repo, &["cat", &cid]) == plain,
        "B read other bytes"
    );
    let received = stdout_of(&b.repo, &["dag", "export", &cid]);
    assert!(!contains(&received, MARKER), "Bitswap carried plaintext");
    let got = b.repo.path("got.jsonl");
    b.repo.ok(&["get", &cid, "-o", got.to_str().unwrap()]);
    assert!(std::fs::read(&got).unwrap() == plain);

    // C fetches the same blocks but cannot open them: one line, nothing written.
    c.repo.ok(&["swarm", "connect", &a.addr()]);
    let err = c.repo.fails(&["cat", &cid]);
    assert!(err.contains("encrypted to other recipients"), "{err}");
    let target = c.repo.path("stolen.jsonl");
    let err = c.repo.fails(&["get", &cid, "-o", target.to_str().unwrap()]);
    assert!(err.contains("encrypted to other recipients"), "{err}");
    assert!(!target.exists(), "a failed get left a file behind");
    // The ciphertext itself is C's to have.
    assert!(stdout_of(&c.repo, &["cat", "--raw", &cid]) == raw);
}

#[test]
fn compressed_and_encrypted_files_round_trip_and_damage_is_a_clean_error() {
    // Without a daemon (the repo directly) and through one: the same results.
    let offline = TestRepo::new();
    let daemon = Daemon::start(&[]);
    for repo in [&offline, &daemon.repo] {
        let plain = marked_file(&repo.path("results.jsonl"), 40_000);
        let file = repo.path("results.jsonl");

        let compressed = repo.add(&file, &["--compress"]);
        let stored = stdout_of(repo, &["cat", "--raw", &compressed]);
        assert!(
            stored.len() * 5 < plain.len(),
            "{} of {}",
            stored.len(),
            plain.len()
        );
        assert!(stdout_of(repo, &["cat", &compressed]) == plain);

        let both = repo.add(&file, &["--compress", "--encrypt"]);
        let sealed = stdout_of(repo, &["cat", "--raw", &both]);
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        assert!(
            sealed.len() * 5 < plain.len(),
            "compressed before encrypted"
        );
        assert!(stdout_of(repo, &["cat", &both]) == plain);

        // A directory: every file sealed, each opened on the way out.
        let dir = repo.path("tree");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.jsonl"), &plain).unwrap();
        std::fs::write(dir.join("b.txt"), b"small").unwrap();
        let tree = repo.add(&dir, &["-r", "--encrypt", "--compress"]);
        let out = repo.path("tree-out");
        repo.ok(&["get", &tree, "-o", out.to_str().unwrap()]);
        assert!(std::fs::read(out.join("sub/a.jsonl")).unwrap() == plain);
        assert_eq!(std::fs::read(out.join("b.txt")).unwrap(), b"small");

        // Damaged copies, added as plain files: a compressed stream cut in half, a
        // ciphertext cut short, a ciphertext with one bit flipped.
        let mut flipped = sealed.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        for (name, bytes, expected) in [
            (
                "cut.zst",
                &stored[..stored.len() / 2],
                "compressed content is corrupt or cut short",
            ),
            (
                "cut.age",
                &sealed[..sealed.len() - 20],
                "encrypted content is corrupt or cut short",
            ),
            (
                "flipped.age",
                &flipped[..],
                "encrypted content is corrupt or cut short",
            ),
        ] {
            let path = repo.path(name);
            std::fs::write(&path, bytes).unwrap();
            let cid = repo.add(&path, &[]);
            let err = repo.fails(&["cat", &cid]);
            assert!(err.contains(expected), "{name}: {err}");
            let target = repo.path(&format!("{name}.out"));
            let err = repo.fails(&["get", &cid, "-o", target.to_str().unwrap()]);
            assert!(err.contains(expected), "{name}: {err}");
            assert!(!target.exists(), "{name}: a failed get left a file behind");
            // `--raw` is the bytes as added.
            assert!(stdout_of(repo, &["cat", "--raw", &cid]) == bytes);
        }
    }
}

#[test]
fn recipients_are_peer_ids_or_age_strings() {
    let a = TestRepo::new();
    let b = TestRepo::new();
    let b_id = b.ok(&["id"]);
    let b_recipient = b.ok(&["key", "recipient"]);
    assert!(b_recipient.starts_with("age1"), "{b_recipient}");
    // Anyone can compute a peer's recipient from its id alone.
    assert_eq!(a.ok(&["key", "recipient", &b_id]), b_recipient);

    let file = a.path("note.txt");
    std::fs::write(&file, b"for b only").unwrap();
    for recipient in [b_id.as_str(), b_recipient.as_str()] {
        let cid = a.add(&file, &["--encrypt-to", recipient]);
        // A did not encrypt to itself, so it cannot read it back.
        let err = a.fails(&["cat", &cid]);
        assert!(err.contains("encrypted to other recipients"), "{err}");
        let raw = stdout_of(&a, &["cat", "--raw", &cid]);
        let path = b.path("note.age");
        std::fs::write(&path, raw).unwrap();
        let copied = b.add(&path, &[]);
        assert_eq!(stdout_of(&b, &["cat", &copied]), b"for b only");
    }
    let err = a.fails(&["add", "--encrypt-to", "bob", file.to_str().unwrap()]);
    assert!(
        err.contains("neither a peer id nor an age recipient"),
        "{err}"
    );
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_private_model_is_published_pulled_and_served_for_its_recipients_only() {
    let fixture = workspace_root().join("tests/fixtures/tiny-bert");
    let fixture = fixture.to_str().unwrap();
    let a = Daemon::start(&[]);
    let b = Daemon::start(&["--bootstrap", &a.addr()]);
    let c = Daemon::start(&["--bootstrap", &a.addr()]);
    let infer = |daemon: &Daemon, model: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["infer", model, "--json", "--text", "kept between two peers"];
        args.extend_from_slice(extra);
        json(&daemon.repo.ok(&args))
    };
    // The plain model's answer, computed here from the folder.
    let plain_root = a.repo.ok(&["add", "-Q", "-r", fixture]);
    let reference = infer(&a, &plain_root, &[])["embeddings"].clone();

    let published = json(&a.repo.ok(&[
        "model",
        "publish",
        fixture,
        "--name",
        "secret",
        "--encrypt-to",
        &b.peer_id(),
        "--json",
    ]));
    let weights = published["weights"].as_str().unwrap().to_owned();
    assert_ne!(weights, plain_root);
    let recipients = published["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 2, "{published}");
    for peer in [a.peer_id(), b.peer_id()] {
        assert!(recipients.iter().any(|r| r == peer.as_str()), "{published}");
    }
    // Its files are ciphertext as stored and served.
    let car = stdout_of(&a.repo, &["dag", "export", &weights]);
    assert!(
        !contains(&car, b"\"hidden_size\""),
        "config.json in the clear"
    );

    // B hears it, pulls and serves it; its answers are the plain model's.
    for daemon in [&b, &c] {
        let heard = poll_until(Duration::from_secs(40), || {
            daemon.repo.ok(&["model", "ls"]).contains("secret")
        });
        assert!(heard, "the manifest was not heard");
    }
    b.repo.ok(&["model", "pull", "secret", "--serve"]);
    assert_eq!(infer(&b, "secret", &[])["embeddings"], reference);
    assert_eq!(infer(&b, "secret", &["--remote"])["embeddings"], reference);

    // C fetches the blocks but cannot load them, and no server answers it.
    let error = c.repo.fails(&["model", "pull", "secret", "--serve"]);
    assert!(error.contains("encrypted to other recipients"), "{error}");
    let error = c
        .repo
        .fails(&["infer", "secret", "--remote", "--text", "let me in"]);
    assert!(error.contains("not among its recipients"), "{error}");
}
