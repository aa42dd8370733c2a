//! Crash safety: kill -9 the binary at random moments during a large `add`, during
//! `repo gc` after `pin rm`, and during `dag import`; afterwards the repo must open,
//! `repo verify` must be clean, and every pinned CID must read back whole.
//!
//! CI runs 8 kills per scenario (24 a run); a benchmark run raises that with
//! `CRASH_TRIALS_PER_OP` (`tests/bench/crash_trials.sh` runs 34 per scenario, 102 kills).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipfs_accelerate_tests::{TestRepo, deterministic_file, wait_with_timeout};
use rand::{RngExt, SeedableRng};

/// Kills per scenario by default; three scenarios make 24 kills a run.
const DEFAULT_KILLS_PER_SCENARIO: usize = 8;

/// Kills per scenario: `CRASH_TRIALS_PER_OP` if set, else the default.
fn kills_per_scenario() -> usize {
    match std::env::var("CRASH_TRIALS_PER_OP") {
        Ok(value) => value
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("CRASH_TRIALS_PER_OP={value:?} is not a positive count")),
        Err(_) => DEFAULT_KILLS_PER_SCENARIO,
    }
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Add,
    GcAfterPinRm,
    DagImport,
}

struct Harness {
    repo: TestRepo,
    /// Content every pinned root must read back as.
    expected: HashMap<String, PathBuf>,
}

impl Harness {
    /// Spawns `args`, kills it after `delay`, and reports whether it was still running.
    fn kill_after(&self, args: &[&str], delay: Duration) -> bool {
        let mut child = self.repo.command(args).spawn().expect("spawn");
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let running = child.try_wait().expect("try_wait").is_none();
        child.kill().expect("kill -9");
        let _ = wait_with_timeout(child, Duration::from_secs(30));
        running
    }

    /// Times one uninterrupted run, so kills can be spread across its duration.
    fn duration_of(&self, args: &[&str]) -> Duration {
        let start = Instant::now();
        self.repo.ok(args);
        start.elapsed()
    }

    fn check(&self, context: &str) {
        let verify = self.repo.run(&["repo", "verify"]);
        assert!(
            verify.status.success(),
            "{context}: repo verify failed: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let pins = self.repo.ok(&["pin", "ls", "--type", "recursive"]);
        for line in pins.lines() {
            let cid = line.split(' ').next().unwrap_or_default();
            let source = self
                .expected
                .get(cid)
                .unwrap_or_else(|| panic!("{context}: unexpected pin {cid}"));
            let out = self.repo.run(&["cat", cid]);
            assert!(out.status.success(), "{context}: cat {cid} failed");
            assert!(
                out.stdout == std::fs::read(source).unwrap(),
                "{context}: pinned {cid} did not read back whole"
            );
        }
    }
}

#[test]
fn kill_9_at_random_moments_leaves_a_consistent_repo() {
    let kills = kills_per_scenario();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let repo = TestRepo::new();
    let mut h = Harness {
        expected: HashMap::new(),
        repo,
    };
    // A pinned file that must survive everything.
    let keep = h.repo.path("keep.bin");
    deterministic_file(&keep, 5 * 1024 * 1024, 1).unwrap();
    let keep_cid = h.repo.add(&keep, &[]);
    h.expected.insert(keep_cid, keep);

    // Large add: 48 MiB.
    let big = h.repo.path("big.bin");
    deterministic_file(&big, 48 * 1024 * 1024, 2).unwrap();
    let big_s = big.to_str().unwrap().to_string();
    // Small chunks give GC thousands of blocks to sweep.
    let many = h.repo.path("many.bin");
    deterministic_file(&many, 24 * 1024 * 1024, 3).unwrap();
    let many_s = many.to_str().unwrap().to_string();
    let many_flags = ["add", "-Q", "--chunker=size-8192", many_s.as_str()];
    // A CAR of a third file, exported from another repo.
    let carried = h.repo.path("carried.bin");
    deterministic_file(&carried, 32 * 1024 * 1024, 4).unwrap();
    let other = TestRepo::new();
    let carried_cid = other.add(&carried, &["--chunker=size-65536"]);
    let car = h.repo.path("carried.car");
    std::fs::write(&car, other.run(&["dag", "export", &carried_cid]).stdout).unwrap();
    let car_s = car.to_str().unwrap().to_string();

    // Calibrate each operation on this machine, then undo it.
    let add_time = h.duration_of(&["add", "-Q", &big_s]);
    let big_cid = h.repo.add(&big, &[]);
    h.expected.insert(big_cid.clone(), big.clone());
    h.repo.ok(&["pin", "rm", &big_cid]);
    h.repo.ok(&["repo", "gc", "--quiet"]);
    let import_time = h.duration_of(&["dag", "import", &car_s]);
    h.expected.insert(carried_cid.clone(), carried.clone());
    h.repo.ok(&["pin", "rm", &carried_cid]);
    let many_cid = h.repo.ok(&many_flags);
    h.expected.insert(many_cid.clone(), many.clone());
    h.repo.ok(&["pin", "rm", &many_cid]);
    let gc_time = h.duration_of(&["repo", "gc", "--quiet"]);
    eprintln!("calibrated: add {add_time:?}, import {import_time:?}, gc {gc_time:?}");

    // Each scenario runs until `kills` kills land mid-operation (a kill
    // that comes after the command finished still gets checked, but does not count).
    let scenarios = [
        (Scenario::Add, add_time),
        (Scenario::GcAfterPinRm, gc_time),
        (Scenario::DagImport, import_time),
    ];
    let mut checks = 0;
    for (scenario, duration) in scenarios {
        let mut interrupted = 0;
        for attempt in 0..kills * 4 {
            if interrupted == kills {
                break;
            }
            let context = format!("{scenario:?} attempt {attempt}");
            let delay = duration.mul_f64(rng.random_range(0.0..0.9));
            let killed = match scenario {
                Scenario::Add => h.kill_after(&["add", "-Q", &big_s], delay),
                Scenario::GcAfterPinRm => {
                    // Something unpinned to sweep: add (and pin) the many-block file,
                    // then unpin it and kill the sweep.
                    h.repo.ok(&many_flags);
                    h.repo.ok(&["pin", "rm", &many_cid]);
                    h.kill_after(&["repo", "gc", "--quiet"], delay)
                }
                Scenario::DagImport => h.kill_after(&["dag", "import", &car_s], delay),
            };
            interrupted += usize::from(killed);
            h.check(&context);
            checks += 1;
        }
        eprintln!("{scenario:?}: {interrupted} kills landed mid-operation");
        assert_eq!(
            interrupted, kills,
            "{scenario:?}: too few kills landed while the command was running"
        );
    }
    eprintln!(
        "crash trials: {} kills landed mid-operation, repo verify clean after all {checks} kills",
        kills * scenarios.len()
    );
}
