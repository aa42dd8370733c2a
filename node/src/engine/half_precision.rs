//! f16 on wgpu against transformers' f32 outputs: every generation fixture, tiny-vit and
//! tiny-bert run in half precision, each one's drift is bounded, and the figures are
//! printed as the table docs/models.md keeps (tests/bench/results/f16-drift.txt is a
//! run's output: `cargo nextest run --workspace --features
//! ipfs-accelerate/wgpu,ipfs-accelerate/ndarray -E 'test(half_precision)' --no-capture`).
//! Each model also runs at f32 on wgpu, so the table shows what f16 adds.

use base64::Engine as _;
use burn::tensor::DType;
use serde_json::Value;

use super::testing::{fixture_copy, fixtures, floats, read_json};
use super::*;

/// Generation fixtures and the model whose reference they are checked against: the
/// half checkpoints are the f32 ones' weights rounded.
const GENERATORS: [(&str, &str); 6] = [
    ("tiny-gpt2", "tiny-gpt2"),
    ("tiny-llama", "tiny-llama"),
    ("tiny-mistral", "tiny-mistral"),
    ("tiny-qwen2", "tiny-qwen2"),
    ("tiny-qwen2-f16", "tiny-qwen2"),
    ("tiny-llama-bf16", "tiny-llama"),
];
/// New tokens of transformers' greedy continuations in the reference.
const NEW_TOKENS: usize = 32;
/// Largest logit drift at f16 from transformers' f32 on the same weights. A logit of
/// these models is a sum over a few hundred f16 products; f16 keeps 11 significant bits
/// (a relative 4.9e-4), so a few hundredths is the scale.
const LOGIT_BOUND: f32 = 0.1;
/// Largest difference of an embedding value at f16 (tiny-bert's are within ±3).
const EMBEDDING_BOUND: f32 = 0.02;
/// A greedy token is compared where transformers' top two logits are further apart than
/// this many times the drift: a gap of more than twice the drift cannot close.
const CLEAR_FACTOR: f64 = 2.5;

fn on_wgpu(precision: Precision) -> Placement {
    Placement::new(DeviceKind::Wgpu, precision).unwrap()
}

fn files(model: &str) -> ModelFiles {
    ModelFiles::from_dir(&fixtures().join(model)).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

/// One line of the drift table.
struct Row {
    fixture: &'static str,
    weights: String,
    compared: String,
    at_f32: f32,
    at_f16: f32,
    agreement: String,
}

#[test]
fn half_precision_on_wgpu_drifts_little_from_transformers() {
    let mut rows = Vec::new();
    for (fixture, of) in GENERATORS {
        rows.push(generator_row(fixture, of));
    }
    rows.push(classifier_row());
    rows.push(embedder_row());
    println!(
        "| fixture | weights | compared with transformers (f32 compute) | f32 on wgpu \
         | f16 on wgpu | at f16 |"
    );
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {:.1e} | {:.1e} | {} |",
            row.fixture, row.weights, row.compared, row.at_f32, row.at_f16, row.agreement
        );
    }
}

/// The dtype(s) the fixture's model.safetensors stores.
fn stored(fixture: &str) -> String {
    let weights = std::fs::read(fixtures().join(fixture).join("model.safetensors")).unwrap();
    let mut dtypes: Vec<String> = model_folder::safetensors::tensors(&weights)
        .unwrap()
        .into_iter()
        .map(|t| t.dtype.to_lowercase())
        .collect();
    dtypes.sort();
    dtypes.dedup();
    dtypes.join("+")
}

/// A generation fixture at f32 and f16: logits after each prompt against transformers'
/// on the same weights, and the f16 model's greedy continuations against theirs.
fn generator_row(fixture: &'static str, of: &str) -> Row {
    let reference = read_json("generation-reference.json");
    assert_eq!(
        reference["new_tokens"], NEW_TOKENS,
        "regenerate the reference"
    );
    let cases = reference["models"][of]["prompts"].as_array().unwrap();
    // A half checkpoint's logits are compared with transformers' on the same rounded
    // weights; its tokens with the f32 model's.
    let rounded = (fixture != of).then(|| {
        reference["rounded"][fixture]["last_logits"]
            .as_array()
            .unwrap()
            .clone()
    });
    let full = Generator::load(files(fixture), on_wgpu(Precision::F32)).unwrap();
    let half = Generator::load(files(fixture), on_wgpu(Precision::F16)).unwrap();
    assert_eq!(half.precision(), Precision::F16);
    assert_eq!(
        half.weights_dtype(),
        DType::F16,
        "{fixture}: f16 must run as f16"
    );
    assert_eq!(full.weights_dtype(), DType::F32);
    assert_eq!(
        2 * half.cache_bytes_per_token(),
        full.cache_bytes_per_token()
    );
    let logits = |generator: &Generator, prompt: &[u32]| {
        let mut sequence = generator.start(prompt.to_vec(), greedy(1)).unwrap();
        generator.forward(&mut [&mut sequence]).unwrap()
    };
    let (mut at_f32, mut at_f16, mut from_f32_model) = (0f32, 0f32, 0f32);
    let (mut same, mut total, mut compared) = (0, 0, 0);
    for (i, case) in cases.iter().enumerate() {
        let prompt = ids(&case["input_ids"]);
        let f32_model = floats(&case["last_logits"]);
        let want = rounded
            .as_ref()
            .map_or_else(|| f32_model.clone(), |r| floats(&r[i]));
        at_f32 = at_f32.max(max_abs_diff(&logits(&full, &prompt), &want));
        let ours = logits(&half, &prompt);
        at_f16 = at_f16.max(max_abs_diff(&ours, &want));
        let drift = max_abs_diff(&ours, &f32_model);
        from_f32_model = from_f32_model.max(drift);

        let want = ids(&case["greedy_ids"]);
        let got = half
            .generate(prompt, greedy(NEW_TOKENS), |_| {})
            .unwrap()
            .tokens;
        let clear = case["greedy_steps"]
            .as_array()
            .unwrap()
            .iter()
            .take_while(|s| s["margin"].as_f64().unwrap() > CLEAR_FACTOR * f64::from(drift))
            .count();
        assert_eq!(
            got[..clear.min(got.len())],
            want[..clear],
            "{fixture}: prompt {i}, where transformers' margins are clear of the drift"
        );
        same += got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        total += want.len();
        compared += clear;
    }
    assert!(at_f16 > 0.0, "{fixture}: f16 gave f32's logits exactly");
    assert!(at_f16 < LOGIT_BOUND, "{fixture}: f16 logits drift {at_f16}");
    assert!(at_f32 < 1e-3, "{fixture}: f32 logits differ by {at_f32}");
    let mut agreement = format!(
        "greedy: {same}/{total} tokens as transformers' before a first difference \
         ({compared} with clear margins, all equal)"
    );
    if rounded.is_some() {
        agreement.push_str(&format!(
            "; {from_f32_model:.1e} from the f32 checkpoint's logits"
        ));
    }
    Row {
        fixture,
        weights: stored(fixture),
        compared: format!("logits after {} prompts", cases.len()),
        at_f32,
        at_f16,
        agreement,
    }
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        ..GenerateParams::default()
    }
}

/// tiny-vit on transformers' own pixels: logits, and the order of the labels where
/// transformers' logits are clear of the drift.
fn classifier_row() -> Row {
    let reference = read_json("tiny-vit-reference.json");
    let full = Classifier::load(files("tiny-vit"), on_wgpu(Precision::F32)).unwrap();
    let half = Classifier::load(files("tiny-vit"), on_wgpu(Precision::F16)).unwrap();
    assert_eq!(
        half.weights_dtype(),
        DType::F16,
        "tiny-vit: f16 must run as f16"
    );
    let images = reference["images"].as_array().unwrap();
    let (mut at_f32, mut at_f16) = (0f32, 0f32);
    let (mut top, mut order) = (0, 0);
    for entry in images {
        let file = entry["file"].as_str().unwrap();
        let pixels = PixelBatch {
            images: 1,
            height: 32,
            width: 32,
            data: base64::engine::general_purpose::STANDARD
                .decode(entry["pixel_values_f32_base64"].as_str().unwrap())
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        };
        let want = floats(&entry["logits"]);
        at_f32 = at_f32.max(max_abs_diff(full.logits(&pixels).unwrap().0.row(0), &want));
        let drift = max_abs_diff(half.logits(&pixels).unwrap().0.row(0), &want);
        at_f16 = at_f16.max(drift);
        let (labels, _) = half.classify_pixels(&pixels, want.len()).unwrap();
        let got: Vec<usize> = labels[0].iter().map(|l| l.id).collect();
        let expected: Vec<usize> = serde_json::from_value(entry["top"].clone()).unwrap();
        // Labels whose logits are clear of each other keep transformers' order.
        let clear = expected
            .windows(2)
            .take_while(|w| want[w[0]] - want[w[1]] > CLEAR_FACTOR as f32 * drift)
            .count();
        assert_eq!(got[..clear], expected[..clear], "tiny-vit: {file}");
        top += usize::from(got[0] == expected[0]);
        order += usize::from(got == expected);
    }
    assert!(at_f16 > 0.0 && at_f16 < LOGIT_BOUND, "tiny-vit: {at_f16}");
    assert!(at_f32 < 1e-3, "tiny-vit: f32 logits differ by {at_f32}");
    Row {
        fixture: "tiny-vit",
        weights: stored("tiny-vit"),
        compared: format!("logits of {} images", images.len()),
        at_f32,
        at_f16,
        agreement: format!(
            "top label as transformers' on {top}/{n}, all five labels in their order on \
             {order}/{n}",
            n = images.len()
        ),
    }
}

/// tiny-bert's mean-pooled embeddings.
fn embedder_row() -> Row {
    let reference = read_json("tiny-bert-reference.json");
    let texts: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want: Vec<Vec<f32>> = reference["mean_pooled"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let full = Embedder::load(files("tiny-bert"), on_wgpu(Precision::F32)).unwrap();
    let half = Embedder::load(files("tiny-bert"), on_wgpu(Precision::F16)).unwrap();
    assert_eq!(
        half.weights_dtype(),
        DType::F16,
        "tiny-bert: f16 must run as f16"
    );
    let worst = |embeddings: &Embeddings| {
        (0..embeddings.rows)
            .map(|i| max_abs_diff(embeddings.row(i), &want[i]))
            .fold(0f32, f32::max)
    };
    let at_f32 = worst(&full.embed_texts(&texts).unwrap().0);
    let embeddings = half.embed_texts(&texts).unwrap().0;
    let at_f16 = worst(&embeddings);
    let lowest = (0..embeddings.rows)
        .map(|i| {
            let (a, b) = (embeddings.row(i), want[i].as_slice());
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (norm(a) * norm(b))
        })
        .fold(1f32, f32::min);
    assert!(
        at_f16 > 0.0 && at_f16 < EMBEDDING_BOUND,
        "tiny-bert: {at_f16}"
    );
    assert!(lowest > 0.9999, "tiny-bert: cosine {lowest}");
    assert!(
        at_f32 < 1e-3,
        "tiny-bert: f32 embeddings differ by {at_f32}"
    );
    Row {
        fixture: "tiny-bert",
        weights: stored("tiny-bert"),
        compared: format!("mean-pooled embeddings of {} sentences", texts.len()),
        at_f32,
        at_f16,
        agreement: format!("lowest cosine {lowest:.6}"),
    }
}

/// A copy of the fixture `model` with one weight set to 100,000, beyond f16's range;
/// returns the folder and the tensor's name.
fn with_a_weight_beyond_half(model: &str) -> (tempfile::TempDir, String) {
    let dir = fixture_copy(model);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    tensors.sort();
    let (name, _, _, data) = tensors
        .iter_mut()
        .rev()
        .find(|(_, dtype, _, _)| *dtype == safetensors::Dtype::F32)
        .unwrap();
    data[..4].copy_from_slice(&1e5f32.to_le_bytes());
    let name = name.clone();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
            (name.clone(), view.unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    (dir, name)
}

#[test]
fn weights_beyond_half_range_are_refused_at_f16_by_name() {
    for model in ["tiny-llama", "tiny-vit", "tiny-bert"] {
        let (dir, name) = with_a_weight_beyond_half(model);
        let load = |precision| {
            let files = ModelFiles::from_dir(dir.path()).unwrap();
            Model::load(files, on_wgpu(precision))
        };
        let err = load(Precision::F16).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{name} holds 100000")) && err.contains("at f32"),
            "{model}: {err}"
        );
        // At f32 the same weights load.
        load(Precision::F32).unwrap();
    }
}
