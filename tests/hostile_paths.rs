//! `get` of hostile DAGs: names like `..`, `/etc/x` or `a/../../x`, and a symlink
//! followed by an entry of the same name or below it, must never write outside the
//! `-o` folder, neither from the repo (export) nor through a daemon (its tar stream).
//! The DAGs are hand-made dag-pb blocks stored with `block put`; the command must fail
//! with a one-line error.

use std::path::Path;

use ipfs_accelerate_tests::{Daemon, TestRepo};

/// Protobuf varint.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag << 3 | 2);
    varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// UnixFS `Data`: type (1 directory, 2 file, 4 symlink) and optional bytes.
fn unixfs(kind: u64, data: &[u8]) -> Vec<u8> {
    let mut out = vec![1 << 3];
    varint(kind, &mut out);
    if !data.is_empty() {
        bytes_field(2, data, &mut out);
    }
    if kind == 2 {
        out.push(3 << 3);
        varint(data.len() as u64, &mut out);
    }
    out
}

/// A dag-pb node: links (name, CID bytes) then the UnixFS data.
fn dag_pb(links: &[(&str, Vec<u8>)], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, cid) in links {
        let mut link = Vec::new();
        bytes_field(1, cid, &mut link);
        bytes_field(2, name.as_bytes(), &mut link);
        link.push(3 << 3);
        varint(10, &mut link);
        bytes_field(2, &link, &mut out);
    }
    bytes_field(1, data, &mut out);
    out
}

/// Stores a block with `block put` and returns its CID as text and as bytes.
fn put(repo: &TestRepo, codec: &str, data: &[u8]) -> (String, Vec<u8>) {
    let file = repo.path("block.tmp");
    std::fs::write(&file, data).unwrap();
    let cid = repo.ok(&[
        "block",
        "put",
        "--pin",
        "--cid-codec",
        codec,
        file.to_str().unwrap(),
    ]);
    let bytes = cid::Cid::try_from(cid.as_str()).unwrap().to_bytes();
    (cid, bytes)
}

fn directory(repo: &TestRepo, links: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
    put(repo, "dag-pb", &dag_pb(links, &unixfs(1, &[])))
}

/// The hostile DAGs, by what they try.
fn hostile_dags(repo: &TestRepo, outside: &Path) -> Vec<(&'static str, String)> {
    let (_, leaf) = put(repo, "raw", b"payload\n");
    let (_, file) = put(repo, "dag-pb", &dag_pb(&[], &unixfs(2, b"payload\n")));
    let outside = outside.to_str().unwrap().as_bytes();
    let (_, symlink) = put(repo, "dag-pb", &dag_pb(&[], &unixfs(4, outside)));
    let victim = [outside, b"/victim"].concat();
    let (_, symlink_to_file) = put(repo, "dag-pb", &dag_pb(&[], &unixfs(4, &victim)));
    let (_, inner) = directory(repo, &[("file", leaf.clone())]);
    let (_, deep_parent) = directory(repo, &[("x", leaf.clone())]);
    vec![
        ("dot-dot file", directory(repo, &[("..", leaf.clone())]).0),
        (
            "dot-dot directory",
            directory(repo, &[("..", deep_parent)]).0,
        ),
        (
            "absolute name",
            directory(repo, &[("/etc/x", leaf.clone())]).0,
        ),
        (
            "climbing name",
            directory(repo, &[("a/../../x", leaf.clone())]).0,
        ),
        (
            "symlink then a directory through it",
            directory(repo, &[("s", symlink.clone()), ("s", inner)]).0,
        ),
        (
            "symlink then a file of the same name",
            directory(repo, &[("t", symlink_to_file), ("t", file)]).0,
        ),
    ]
}

/// Runs `get -o` for every DAG and checks that each fails and writes nothing outside.
fn refuses_all(repo: &TestRepo, dags: &[(&str, String)], outside: &Path, mode: &str) {
    for (i, (what, cid)) in dags.iter().enumerate() {
        let parent = repo.path(&format!("{mode}-{i}"));
        std::fs::create_dir(&parent).unwrap();
        let out = parent.join("out");
        let error = repo.fails(&["get", cid, "-o", out.to_str().unwrap()]);
        let leftovers: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != "out")
            .collect();
        assert!(
            leftovers.is_empty(),
            "{mode}, {what}: wrote {leftovers:?} beside the output ({error})"
        );
        let escaped: Vec<_> = std::fs::read_dir(outside).unwrap().collect();
        assert!(
            escaped.is_empty(),
            "{mode}, {what}: wrote {escaped:?} through a symlink ({error})"
        );
    }
}

#[test]
fn get_never_writes_outside_the_output_folder() {
    let repo = TestRepo::new();
    let outside = repo.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let dags = hostile_dags(&repo, &outside);
    refuses_all(&repo, &dags, &outside, "repo");

    let daemon = Daemon::start_on(repo, &[]);
    refuses_all(&daemon.repo, &dags, &outside, "daemon");

    // `get` without -o names the output after the path's last part, never `..`.
    let (_, leaf) = put(&daemon.repo, "raw", b"x");
    let (root, _) = directory(&daemon.repo, &[("a", leaf)]);
    let error = daemon.repo.fails(&["get", &format!("/ipfs/{root}/..")]);
    assert!(error.contains("cannot name the output"), "{error}");
}
