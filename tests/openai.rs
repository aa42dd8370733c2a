//! OpenAI's API on a daemon (`/v1`), driven by OpenAI's own client packages: the
//! Python `openai` from PyPI and the npm `openai` (both installed by tests/setup.sh).
//! Their answers must equal what `infer` gives for the same model; bad requests get
//! OpenAI's error shape; a streamed chat completion whose provider is killed part way
//! still ends with the text an uninterrupted generation gives.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ipfs_accelerate_tests::{
    Daemon, LlamaShape, TestRepo, node_script, poll_until, python, wait_with_timeout,
    workspace_root, write_random_llama,
};
use serde_json::{Value, json};

const SENTENCES: [&str; 2] = ["Peers fetch model weights over Bitswap", "héllo wörld"];
const TIMEOUT: Duration = Duration::from_secs(120);

fn parse(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn check_script() -> Command {
    let mut command = Command::new(python());
    command.arg(workspace_root().join("tests/interop/openai/check.py"));
    command
}

/// Runs a client script to its end and parses the JSON it prints last.
fn run_json(mut command: Command) -> Value {
    let described = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{described}: {e}"));
    let out = wait_with_timeout(child, TIMEOUT).expect("the client script ended in time");
    assert!(
        out.status.success(),
        "{described}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    parse(text.lines().last().unwrap_or_default())
}

/// A daemon serving the tiny BERT and Llama fixtures under short names.
fn daemon_serving_fixtures(repo: TestRepo, extra: &[&str]) -> Daemon {
    let fixtures = workspace_root().join("tests/fixtures");
    for name in ["tiny-bert", "tiny-llama"] {
        let folder = fixtures.join(name);
        repo.ok(&["model", "import", folder.to_str().unwrap(), "--name", name]);
    }
    let mut args = vec!["--serve", "tiny-bert", "--serve", "tiny-llama"];
    args.extend_from_slice(extra);
    Daemon::start_on(repo, &args)
}

fn floats(value: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
}

fn largest_difference(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

/// The native API's generation for `body` (`/api/v0/accelerate/infer`, NDJSON): its
/// last line.
fn native_generation(daemon: &Daemon, body: Value) -> Value {
    let text = ureq::post(format!("{}/api/v0/accelerate/infer", daemon.api_url()))
        .send_json(body)
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    parse(text.lines().last().unwrap())
}

#[test]
fn openais_python_and_js_clients_get_what_infer_gives() {
    let daemon = daemon_serving_fixtures(TestRepo::new(), &[]);
    let url = format!("{}/v1", daemon.api_url());
    let mut command = check_script();
    command.args([
        "drive",
        &url,
        "--embed",
        "tiny-bert",
        "--generate",
        "tiny-llama",
    ]);
    let py = run_json(command);

    // Models: both, owned by this node.
    let ids: Vec<&str> = py["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny-bert", "tiny-llama"], "{py}");
    assert_eq!(py["models"][0]["owned_by"], daemon.peer_id().as_str());

    // Embeddings equal `infer`'s: exactly through base64 (the package's default),
    // to float printing through JSON floats.
    let mut args = vec!["infer", "tiny-bert", "--json"];
    for text in SENTENCES {
        args.extend(["--text", text]);
    }
    let infer = parse(&daemon.repo.ok(&args));
    let want = floats(&infer["embeddings"]);
    let e = &py["embeddings"];
    assert_eq!(largest_difference(&floats(&e["default"]), &want), 0.0);
    assert!(largest_difference(&floats(&e["float"]), &want) < 1e-6);
    assert_eq!(floats(&e["one"])[0], want[0]);
    assert_eq!(e["indexes"], json!([0, 1]));
    assert!(e["prompt_tokens"].as_u64().unwrap() >= 8, "{e}");
    assert_eq!(e["prompt_tokens"], e["total_tokens"]);

    // A chat completion equals the native API's generation for the same messages,
    // whole and streamed, with its usage and provider.
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a content-addressed network."},
    ]);
    let native = native_generation(
        &daemon,
        json!({"model": "tiny-llama", "messages": messages, "max_tokens": 24, "temperature": 0.0}),
    );
    let chat = &py["chat"];
    assert_eq!(chat["text"], native["done"]["text"], "{chat} {native}");
    assert_eq!(chat["role"], "assistant");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["finish_reason"], "length");
    assert_eq!(chat["usage"]["completion_tokens"], 24);
    assert_eq!(
        chat["usage"]["prompt_tokens"],
        native["done"]["prompt_tokens"]
    );
    assert_eq!(chat["provider"], daemon.peer_id().as_str());
    let streamed = &py["chat_stream"];
    assert_eq!(streamed["text"], chat["text"]);
    assert_eq!(streamed["finish_reason"], "length");
    assert_eq!(streamed["usage"], chat["usage"]);
    assert_eq!(streamed["provider"], daemon.peer_id().as_str());
    assert!(streamed["chunks"].as_u64().unwrap() > 3, "{streamed}");

    // A text completion equals `infer --prompt`.
    let infer = parse(&daemon.repo.ok(&[
        "infer",
        "tiny-llama",
        "--prompt",
        "Hello",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--json",
    ]));
    let completion = &py["completion"];
    assert_eq!(completion["text"], infer["text"], "{completion} {infer}");
    assert_eq!(completion["streamed"], infer["text"]);
    assert_eq!(completion["usage"]["completion_tokens"], 12);

    // Refusals in OpenAI's shape, with the status its clients act on.
    let refused = &py["refused"];
    let expect = [
        ("unknown_model", 404, Some("model_not_found"), Some("model")),
        ("wrong_type", 400, None, None),
        ("too_many", 400, None, Some("input")),
        ("embed_model_chat", 400, None, None),
        ("two_choices", 400, Some("unsupported_parameter"), Some("n")),
        ("tools", 400, Some("unsupported_parameter"), Some("tools")),
        ("temperature", 400, None, Some("temperature")),
        ("unknown_argument", 400, None, Some("frobnicate")),
    ];
    for (case, status, code, param) in expect {
        let r = &refused[case];
        assert_eq!(r["status"], status, "{case}: {r}");
        assert_eq!(r["type"], "invalid_request_error", "{case}: {r}");
        assert_eq!(r["code"].as_str(), code, "{case}: {r}");
        assert_eq!(r["param"].as_str(), param, "{case}: {r}");
        assert!(!r["message"].as_str().unwrap().is_empty());
    }

    // The npm package: the same values.
    let mut command = node_script("openai_check.mjs");
    command.args([&url, "tiny-bert", "tiny-llama"]);
    let js = run_json(command);
    assert_eq!(js["models"], json!(["tiny-bert", "tiny-llama"]));
    assert_eq!(
        largest_difference(&floats(&js["embeddings"]["default"]), &want),
        0.0
    );
    assert!(largest_difference(&floats(&js["embeddings"]["float"]), &want) < 1e-6);
    assert_eq!(js["chat"]["text"], chat["text"]);
    assert_eq!(js["chat"]["usage"], chat["usage"]);
    assert_eq!(js["chat"]["provider"], daemon.peer_id().as_str());
    assert_eq!(js["chat_stream"]["text"], chat["text"]);
    assert_eq!(
        js["unknown_model"],
        json!({"status": 404, "code": "model_not_found", "type": "invalid_request_error", "param": "model"})
    );
}

/// With `network.api_token` set, `/v1` wants it as the API key, in OpenAI's shape; on
/// the separate address (`--openai`) too.
#[test]
fn the_api_token_is_the_api_key() {
    let repo = TestRepo::new();
    let config = repo.repo_path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[network]\n", "[network]\napi_token = \"s3cret-token\"\n"),
    )
    .unwrap();
    let daemon = daemon_serving_fixtures(repo, &["--openai", "127.0.0.1:0"]);
    let own_address = openai_address(&daemon);
    for url in [
        format!("{}/v1", daemon.api_url()),
        format!("{own_address}/v1"),
    ] {
        let mut without = check_script();
        without.args(["refused", &url, "--embed", "tiny-bert"]);
        let refused = run_json(without);
        assert_eq!(refused["status"], 401, "{refused}");
        assert_eq!(refused["class"], "AuthenticationError");
        assert_eq!(refused["code"], "invalid_api_key");
        let mut with = check_script();
        with.args([
            "refused",
            &url,
            "--embed",
            "tiny-bert",
            "--api-key",
            "s3cret-token",
        ]);
        assert_eq!(
            run_json(with),
            Value::Null,
            "the key was not taken at {url}"
        );
    }
    // The separate address serves `/v1` only.
    let kubo = ureq::post(format!("{own_address}/api/v0/id")).send_empty();
    assert!(kubo.is_err(), "{kubo:?}");
}

/// The `--openai` listener's URL, from the daemon's log line (the address file names
/// the RPC API only).
fn openai_address(daemon: &Daemon) -> String {
    daemon
        .stdout_lines()
        .iter()
        .find_map(|line| line.strip_prefix("OpenAI API server listening on "))
        .map(str::to_owned)
        .expect("the daemon says where OpenAI's API listens")
}

/// A sample's value in a daemon's Prometheus text.
fn metric(daemon: &Daemon, name: &str) -> u64 {
    let text = ureq::get(format!("{}/debug/metrics/prometheus", daemon.api_url()))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

const RUNNING: &str = "ipfs_accelerate_infer_generations_running";
const ANSWERED: &str = "ipfs_accelerate_infer_answers_total{outcome=\"ok\"}";

/// A and C serve a model big enough that a generation takes a while; B, serving
/// nothing, streams a chat completion through OpenAI's Python package. When the first
/// text arrives the provider running it is killed: the stream goes on (B resumes on
/// the other provider after the tokens received) and ends with the text an
/// uninterrupted generation gives.
#[test]
fn a_streamed_chat_completion_outlives_its_provider() {
    let folder = tempfile::tempdir().unwrap();
    write_random_llama(folder.path(), LlamaShape::SLOW, 7).unwrap();
    let a = Daemon::start(&[]);
    let a_addr = a.addr();
    let c = Daemon::start(&["--bootstrap", &a_addr]);
    let b = Daemon::start(&["--bootstrap", &a_addr]);
    a.repo.ok(&[
        "model",
        "publish",
        folder.path().to_str().unwrap(),
        "--name",
        "slow",
    ]);
    let heard = |d: &Daemon| {
        let listed = parse(&d.repo.ok(&["model", "ls", "--task", "generate", "--json"]));
        listed["Models"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "slow"))
    };
    assert!(poll_until(Duration::from_secs(20), || heard(&c) && heard(&b)));
    c.repo.ok(&["model", "pull", "slow", "--serve"]);
    let url = format!("{}/v1", b.api_url());

    let mut stream = check_script();
    stream
        .args(["stream", &url, "--generate", "slow", "--max-tokens", "400"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = stream.spawn().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    assert_eq!(lines.recv_timeout(TIMEOUT).unwrap(), "first");
    let mut providers = vec![a, c];
    let running = providers
        .iter()
        .position(|p| metric(p, RUNNING) > 0)
        .expect("a provider is running the generation when its first text arrives");
    let survivor_answers = metric(&providers[1 - running], ANSWERED);
    let killed = providers[running].peer_id();
    drop(providers.remove(running));
    let survivor = providers.pop().unwrap();
    let answer = parse(&lines.recv_timeout(TIMEOUT).expect("the stream ends"));
    let out = wait_with_timeout(child, TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The survivor finished the generation the killed provider began; the stream's
    // header names the provider of its first text.
    assert_eq!(metric(&survivor, ANSWERED), survivor_answers + 1);
    assert_eq!(answer["provider"], killed.as_str());

    let mut again = check_script();
    again.args(["stream", &url, "--generate", "slow", "--max-tokens", "400"]);
    let uninterrupted = run_json(again);
    assert_eq!(answer["text"], uninterrupted["text"]);
    assert_eq!(answer["usage"], uninterrupted["usage"]);
    assert_eq!(answer["usage"]["completion_tokens"], 400, "{answer}");
}
