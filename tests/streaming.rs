//! Streaming: adding, reading and exporting a 1 GiB file keeps peak memory (max RSS of
//! the process) under 100 MB.

use ipfs_accelerate_tests::{TestRepo, deterministic_file};

const GIB: u64 = 1024 * 1024 * 1024;
const RSS_LIMIT_KIB: i64 = 100 * 1000;

/// Peak RSS of the largest child this process has waited for, in KiB.
fn max_child_rss_kib() -> i64 {
    // SAFETY: getrusage only writes into the struct we pass.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    usage.ru_maxrss
}

#[test]
fn one_gib_add_cat_and_export_stay_under_100_mb() {
    let repo = TestRepo::new();
    let file = repo.path("one-gib.bin");
    deterministic_file(&file, GIB, 7).unwrap();
    let cid = repo.add(&file, &[]);
    let after_add = max_child_rss_kib();
    assert!(after_add < RSS_LIMIT_KIB, "add peaked at {after_add} KiB");

    // cat into a file: the test compares sizes and a sample, not a 1 GiB buffer.
    let out_path = repo.path("out.bin");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = repo.command(&["cat", &cid]).stdout(out).spawn().unwrap();
    assert!(child.wait().unwrap().success());
    let after_cat = max_child_rss_kib();
    assert!(after_cat < RSS_LIMIT_KIB, "cat peaked at {after_cat} KiB");
    assert_eq!(std::fs::metadata(&out_path).unwrap().len(), GIB);
    assert!(files_equal(&file, &out_path));
    std::fs::remove_file(&out_path).unwrap();

    let car_path = repo.path("out.car");
    let car = std::fs::File::create(&car_path).unwrap();
    let mut child = repo
        .command(&["dag", "export", &cid])
        .stdout(car)
        .spawn()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let after_export = max_child_rss_kib();
    assert!(
        after_export < RSS_LIMIT_KIB,
        "dag export peaked at {after_export} KiB"
    );
    eprintln!("peak RSS: add {after_add} KiB, cat {after_cat} KiB, export {after_export} KiB");
}

fn files_equal(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::io::Read;
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        let m = b.read_exact(&mut y[..n]).map(|()| n).unwrap_or(usize::MAX);
        if n != m || x[..n] != y[..n] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}
