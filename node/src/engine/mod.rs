//! The inference engine: BERT-family sentence encoders (BERT, RoBERTa, XLM-RoBERTa) and
//! ViT image classifiers on burn, loaded from a model folder in Hugging Face layout (on
//! disk or a UnixFS directory in the repo), run on a backend chosen at run time.
//!
//! An [`Embedder`] takes a batch of texts (or token ids with their attention mask) and
//! returns one embedding per input. Batches are padded to their longest input, never to a
//! fixed length, and truncated at the model's maximum sequence length. A [`Classifier`]
//! takes encoded images (or pixels already prepared) and returns each one's top labels.

mod activation;
mod bert;
mod chat;
pub mod classify;
mod decoder;
mod detokenize;
pub mod generate;
pub mod gguf;
#[cfg(all(test, feature = "wgpu"))]
mod half_precision;
mod image;
mod matmul;
mod sampling;
pub mod source;
mod stop;
#[cfg(test)]
pub(crate) mod testing;
mod tokenize;
mod vit;
mod weights;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::*;

use self::bert::{Bert, BertWeights, PackedBatch};
pub use self::chat::ChatMessage;
pub use self::classify::{Classifier, Label, Logits};
pub use self::generate::{GenerateParams, Generation, Generator, Sequence, StepOutput};
pub use self::image::PixelBatch;
pub use self::source::ModelFiles;
pub use self::stop::FinishReason;
use self::tokenize::TextTokenizer;
pub use ipfs_accelerate_protocol::model_folder::DecoderConfig;
use ipfs_accelerate_protocol::model_folder::PositionIds;
pub use ipfs_accelerate_protocol::model_folder::{
    self, BertConfig, EncoderFamily, FolderError, ImageProcessor, ModelKind, Pooling,
    SentenceConfig, VitConfig,
};

/// Errors of loading a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file the model needs is not in its folder.
    #[error("the model folder has no {0}")]
    MissingFile(String),
    /// A file of the folder cannot be used: bad config.json, unsupported architecture,
    /// a model.safetensors header that disagrees with its bytes.
    #[error(transparent)]
    Folder(#[from] FolderError),
    /// The weights do not fit the architecture: missing, unused or mis-shaped tensors.
    #[error("model.safetensors does not match config.json: {0}")]
    Weights(String),
    /// tokenizer.json could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The inputs cannot be run: empty, ragged, ids out of range, too long.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The requested backend is not built in or has no device here.
    #[error("{0}")]
    Device(String),
    /// Reading the model's files failed.
    #[error(transparent)]
    Source(#[from] source::SourceError),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Refuses a model whose config.json sizes make more parameters than its weights file
/// has bytes (memory is allocated from those sizes before any weight is read, so it is
/// bounded by the file's real size, not by what config.json claims), and a
/// model.safetensors whose header disagrees with its bytes, naming the file.
fn check_weights_file(parameters: usize, weights: &[u8]) -> Result<()> {
    if parameters > weights.len() {
        return Err(FolderError::Invalid {
            file: "config.json",
            reason: format!(
                "its sizes make {parameters} parameters, more than model.safetensors \
                 ({} bytes) can hold",
                weights.len()
            ),
        }
        .into());
    }
    model_folder::safetensors::tensors(weights)?;
    Ok(())
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceKind {
    /// burn's flex backend: pure Rust, SIMD, multi-threaded with rayon.
    #[default]
    Cpu,
    /// burn's ndarray backend, when built with the `ndarray` feature.
    Ndarray,
    /// burn's wgpu backend (Vulkan, Metal, DX12; lavapipe in software), when built with
    /// the `wgpu` feature.
    Wgpu,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Cpu, DeviceKind::Ndarray, DeviceKind::Wgpu];

    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Ndarray => "ndarray",
            DeviceKind::Wgpu => "wgpu",
        }
    }

    /// Whether this build can run on it.
    pub fn is_built(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::Ndarray => cfg!(feature = "ndarray"),
            DeviceKind::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    fn device(self) -> Result<Device> {
        match self {
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // named in the design; flex is its successor
            DeviceKind::Ndarray => Ok(Device::ndarray()),
            #[cfg(not(feature = "ndarray"))]
            DeviceKind::Ndarray => Err(EngineError::Device(
                "this build has no ndarray backend; rebuild with `--features ndarray`".to_owned(),
            )),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            DeviceKind::Wgpu => Err(EngineError::Device(
                "this build has no wgpu backend; rebuild with `--features wgpu`".to_owned(),
            )),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        DeviceKind::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                EngineError::Device(format!("unknown device {s:?}: use cpu, ndarray or wgpu"))
            })
    }
}

/// The float precision a model's weights, activations and key/value cache are held in
/// on its device, whatever precision its checkpoint stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// Single precision: half checkpoints (F16, BF16) are widened on load.
    #[default]
    F32,
    /// Half precision (IEEE f16) on wgpu: weights, activations and the key/value cache
    /// in f16, matrix products and flash attention accumulating in f32 (burn's kernels),
    /// layer and RMS norm statistics computed in f32, logits read back as f32.
    F16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::F16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// Bytes of one float on the device.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    fn dtype(self) -> burn::tensor::FloatDType {
        match self {
            Precision::F32 => burn::tensor::FloatDType::F32,
            Precision::F16 => burn::tensor::FloatDType::F16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| EngineError::Device(format!("unknown precision {s:?}: use f32 or f16")))
    }
}

/// Where a model runs and in which precision. A bare [`DeviceKind`] is that device at
/// f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Placement {
    pub device: DeviceKind,
    pub precision: Precision,
}

impl Placement {
    /// `device` at `precision`, refused where that device cannot run it: f16 runs on
    /// wgpu only (whether the adapter has 16-bit float shaders is checked when a model
    /// loads, on the device itself).
    pub fn new(device: DeviceKind, precision: Precision) -> Result<Self> {
        if precision == Precision::F16 && device != DeviceKind::Wgpu {
            return Err(EngineError::Device(format!(
                "f16 runs on wgpu only; the CPU widens half weights to f32 (device \
                 {device} was asked for f16: use device wgpu, or precision f32)"
            )));
        }
        Ok(Self { device, precision })
    }

    /// The burn device, checked to run this precision.
    fn device(self) -> Result<Device> {
        let placement = Self::new(self.device, self.precision)?;
        let device = placement.device.device()?;
        if placement.precision == Precision::F16
            && !device.supports_dtype(burn::tensor::FloatDType::F16)
        {
            return Err(EngineError::Device(
                "this wgpu adapter has no 16-bit float shaders (wgpu's SHADER_F16: Vulkan's \
                 shaderFloat16 with 16-bit storage buffers), so it cannot run f16: use \
                 precision f32"
                    .to_owned(),
            ));
        }
        Ok(device)
    }
}

impl From<DeviceKind> for Placement {
    fn from(device: DeviceKind) -> Self {
        Self {
            device,
            precision: Precision::F32,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.device, self.precision)
    }
}

/// Token ids of a batch with their attention masks, as a caller may send them instead of
/// text. Rows may differ in length; they are padded to the longest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenInput {
    pub ids: Vec<Vec<u32>>,
    /// 1 for tokens to attend to, 0 for padding; same shape as `ids`.
    pub mask: Vec<Vec<u32>>,
}

/// `rows` embeddings of `dim` floats each, row after row.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Embeddings {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn to_rows(&self) -> Vec<Vec<f32>> {
        self.data
            .chunks(self.dim.max(1))
            .map(<[f32]>::to_vec)
            .collect()
    }
}

/// Scales each row of `rows` to unit L2 length, as sentence-transformers' Normalize does.
pub fn l2_normalize(rows: &mut [f32], dim: usize) {
    for row in rows.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Where the time of one call went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub tokenize: Duration,
    pub compute: Duration,
}

/// How a batch's token vectors become sentence vectors.
enum Pool {
    /// `[rows, longest, 1]` weight of each padded slot: 1/attended tokens, 0 elsewhere.
    Mean(Tensor<3>),
    /// `[rows]` the packed index of each row's first token.
    Cls(Tensor<1, Int>),
}

/// A loaded model of any kind the engine runs.
#[derive(Debug, Clone)]
pub enum Model {
    Embed(Arc<Embedder>),
    Generate(Arc<Generator>),
    Classify(Arc<Classifier>),
}

impl Model {
    /// Loads what `files` hold, the kind read from config.json's architecture, onto
    /// `placement` (a device, at f32, or a device and precision).
    ///
    /// Returns once the weights are on the device: a GPU's uploads are waited for, so
    /// their failures surface here, and a process that exits next leaves no work in
    /// flight (lavapipe then races LLVM's exit handlers and crashes).
    pub fn load(files: ModelFiles, placement: impl Into<Placement>) -> Result<Self> {
        let placement = placement.into();
        let model = match model_folder::model_kind(&files.config)? {
            ModelKind::Embed => Model::Embed(Arc::new(Embedder::load(files, placement)?)),
            ModelKind::Generate => Model::Generate(Arc::new(Generator::load(files, placement)?)),
            ModelKind::Classify => Model::Classify(Arc::new(Classifier::load(files, placement)?)),
        };
        placement
            .device()?
            .sync()
            .map_err(|e| EngineError::Device(format!("loading onto {}: {e}", placement.device)))?;
        Ok(model)
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Model::Embed(_) => ModelKind::Embed,
            Model::Generate(_) => ModelKind::Generate,
            Model::Classify(_) => ModelKind::Classify,
        }
    }

    pub fn device(&self) -> DeviceKind {
        match self {
            Model::Embed(model) => model.device(),
            Model::Generate(model) => model.device(),
            Model::Classify(model) => model.device(),
        }
    }

    /// The precision it runs in.
    pub fn precision(&self) -> Precision {
        match self {
            Model::Embed(model) => model.precision(),
            Model::Generate(model) => model.precision(),
            Model::Classify(model) => model.precision(),
        }
    }
}

/// A loaded sentence encoder on one device.
#[derive(Debug)]
pub struct Embedder {
    config: BertConfig,
    sentence: SentenceConfig,
    model: Bert,
    tokenizer: TextTokenizer,
    max_seq_length: usize,
    device: Device,
    kind: DeviceKind,
    precision: Precision,
}

impl Embedder {
    /// Builds the encoder that `files` describe and loads its weights onto `placement`.
    pub fn load(files: ModelFiles, placement: impl Into<Placement>) -> Result<Self> {
        let placement = placement.into();
        let kind = placement.device;
        let config = BertConfig::parse(&files.config)?;
        let sentence = match &files.modules {
            Some(modules) => SentenceConfig::parse(
                modules,
                files.pooling.as_deref(),
                files.sentence_bert.as_deref(),
            )?,
            None => SentenceConfig::plain(),
        };
        let max_seq_length = sentence
            .max_seq_length
            .unwrap_or(config.max_tokens())
            .min(config.max_tokens());
        let tokenizer_json = files
            .tokenizer
            .as_deref()
            .ok_or_else(|| EngineError::MissingFile("tokenizer.json".to_owned()))?;
        // A sentence-transformers folder's texts are stripped, as its pipeline does.
        let tokenizer =
            TextTokenizer::new(tokenizer_json, max_seq_length, files.modules.is_some())?;
        check_weights_file(config.parameter_count(), &files.weights)?;
        let device = placement.device()?;
        if placement.precision == Precision::F16 {
            weights::check_half_range(&files.weights)?;
        }
        let mut loaded = BertWeights::new(&config, &device);
        weights::load(&mut loaded, files.weights, &weights::BERT_ENCODER)?;
        // flex runs the encoder on host memory; ndarray (kept as a second CPU path) and
        // wgpu as tensors.
        let model = Bert::new(
            config.clone(),
            loaded,
            kind == DeviceKind::Cpu && placement.precision == Precision::F32,
            kind != DeviceKind::Wgpu,
            placement.precision.dtype(),
        );
        Ok(Self {
            config,
            sentence,
            model,
            tokenizer,
            max_seq_length,
            device,
            kind,
            precision: placement.precision,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn sentence_config(&self) -> &SentenceConfig {
        &self.sentence
    }

    pub fn device(&self) -> DeviceKind {
        self.kind
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The element type the encoder's weights are held in (tests: that f16 runs).
    #[cfg(test)]
    fn weights_dtype(&self) -> burn::tensor::DType {
        self.model.weights_dtype()
    }

    /// Length of each embedding.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Bytes the weights take in memory (4 a parameter at f32, 2 at f16).
    pub fn memory_bytes(&self) -> usize {
        self.config
            .parameter_count()
            .saturating_mul(self.precision.bytes())
    }

    /// Token ids and masks for `texts`, as the model's tokenizer makes them.
    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenInput> {
        self.tokenizer.encode(texts)
    }

    /// Embeds a batch of texts.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<(Embeddings, Timings)> {
        let started = Instant::now();
        let tokens = self.tokenize(texts)?;
        let tokenize = started.elapsed();
        let (embeddings, compute) = self.run(&tokens)?;
        Ok((embeddings, Timings { tokenize, compute }))
    }

    /// Embeds a batch given as token ids and attention masks.
    pub fn embed_tokens(&self, tokens: &TokenInput) -> Result<(Embeddings, Timings)> {
        let (embeddings, compute) = self.run(tokens)?;
        Ok((
            embeddings,
            Timings {
                tokenize: Duration::ZERO,
                compute,
            },
        ))
    }

    /// Embeds a batch of token ids without the model's L2 normalisation, for callers
    /// that normalise each request of a shared batch their own way ([`l2_normalize`]).
    pub fn embed_tokens_unnormalized(&self, tokens: &TokenInput) -> Result<(Embeddings, Duration)> {
        self.run_with(tokens, false)
    }

    /// Whether the model's own configuration normalises its embeddings.
    pub fn normalizes(&self) -> bool {
        self.sentence.normalize
    }

    fn run(&self, tokens: &TokenInput) -> Result<(Embeddings, Duration)> {
        self.run_with(tokens, self.sentence.normalize)
    }

    fn run_with(&self, tokens: &TokenInput, normalize: bool) -> Result<(Embeddings, Duration)> {
        let started = Instant::now();
        self.check(tokens)?;
        let rows = tokens.ids.len();
        let dim = self.dim();
        if rows == 0 {
            let empty = Embeddings {
                rows,
                dim,
                data: Vec::new(),
            };
            return Ok((empty, started.elapsed()));
        }
        let (batch, pool) = self.pack(tokens);
        let hidden = self.model.forward(&batch);
        let pooled = match pool {
            Pool::Mean(weights) => hidden
                .select(0, batch.to_padded)
                .reshape([rows, batch.longest, dim])
                .mul(weights)
                .sum_dim(1)
                .reshape([rows, dim]),
            Pool::Cls(starts) => hidden.select(0, starts),
        };
        let pooled = if normalize {
            let norms = pooled
                .clone()
                .powi_scalar(2)
                .sum_dim(1)
                .sqrt()
                .clamp_min(1e-12);
            pooled / norms
        } else {
            pooled
        };
        let data = pooled
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| EngineError::Device(format!("reading embeddings back: {e:?}")))?;
        Ok((Embeddings { rows, dim, data }, started.elapsed()))
    }

    /// Checks that ids and masks are well formed and within the model's limits.
    pub fn check(&self, tokens: &TokenInput) -> Result<()> {
        if tokens.ids.len() != tokens.mask.len() {
            return Err(EngineError::BadInput(format!(
                "{} rows of ids but {} rows of attention mask",
                tokens.ids.len(),
                tokens.mask.len()
            )));
        }
        for (i, (ids, mask)) in tokens.ids.iter().zip(&tokens.mask).enumerate() {
            if ids.len() != mask.len() {
                return Err(EngineError::BadInput(format!(
                    "row {i}: {} ids but {} mask entries",
                    ids.len(),
                    mask.len()
                )));
            }
            if ids.is_empty() {
                return Err(EngineError::BadInput(format!("row {i} has no tokens")));
            }
            if ids.len() > self.max_seq_length {
                return Err(EngineError::BadInput(format!(
                    "row {i} has {} tokens; this model takes at most {}",
                    ids.len(),
                    self.max_seq_length
                )));
            }
            if let Some(id) = ids
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(EngineError::BadInput(format!(
                    "row {i}: token id {id} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            if let Some(m) = mask.iter().find(|&&m| m > 1) {
                return Err(EngineError::BadInput(format!(
                    "row {i}: attention mask value {m} is not 0 or 1"
                )));
            }
            if mask.iter().all(|&m| m == 0) {
                return Err(EngineError::BadInput(format!("row {i} masks every token")));
            }
        }
        Ok(())
    }

    /// Packs the rows into one token sequence, with the indices attention uses to see
    /// them padded, and what pooling needs to turn token vectors into sentence vectors.
    fn pack(&self, tokens: &TokenInput) -> (PackedBatch, Pool) {
        let rows = tokens.ids.len();
        let longest = tokens.ids.iter().map(Vec::len).max().unwrap_or(0);
        let total: usize = tokens.ids.iter().map(Vec::len).sum();
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut to_padded = vec![0i64; rows * longest];
        let mut from_padded = Vec::with_capacity(total);
        let mut key_mask = vec![true; rows * longest];
        let mut mean_weights = vec![0f32; rows * longest];
        let mut starts = Vec::with_capacity(rows);
        let position_ids = self.config.position_ids();
        for (row, (row_ids, row_mask)) in tokens.ids.iter().zip(&tokens.mask).enumerate() {
            let start = ids.len();
            let attended: u32 = row_mask.iter().sum();
            let mut counted = 0;
            for (col, (&id, &m)) in row_ids.iter().zip(row_mask).enumerate() {
                let packed = ids.len();
                let slot = row * longest + col;
                ids.push(i64::from(id));
                let position = match position_ids {
                    PositionIds::FromZero => col,
                    PositionIds::AfterPadding { pad_token_id } if id as usize == pad_token_id => {
                        pad_token_id
                    }
                    PositionIds::AfterPadding { pad_token_id } => {
                        counted += 1;
                        pad_token_id + counted
                    }
                };
                positions.push(position as i64);
                to_padded[slot] = packed as i64;
                from_padded.push(slot as i64);
                key_mask[slot] = m == 0;
                mean_weights[slot] = m as f32 / attended as f32;
            }
            starts.push(start as i64);
        }
        let device = &self.device;
        let int = |v: Vec<i64>| {
            let len = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [len]), device)
        };
        let batch = PackedBatch {
            ids: int(ids),
            positions: int(positions),
            to_padded: int(to_padded),
            from_padded: int(from_padded),
            key_mask: Tensor::from_data(TensorData::new(key_mask, [rows, 1, 1, longest]), device),
            rows,
            longest,
        };
        let pool = match self.sentence.pooling {
            Pooling::Mean => Pool::Mean(Tensor::from_data(
                TensorData::new(mean_weights, [rows, longest, 1]),
                device,
            )),
            Pooling::Cls => Pool::Cls(int(starts)),
        };
        (batch, pool)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::*;
    use crate::engine::testing::{fixtures, floats, read_json};

    fn reference() -> Value {
        read_json("tiny-bert-reference.json")
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    /// A copy of the tiny BERT folder with `edit` applied, in a temporary directory.
    fn tiny_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
        tiny_copy_of("tiny-bert", edit)
    }

    /// A copy of the fixture folder `model` (its files, not its subfolders) with `edit`
    /// applied, in a temporary directory.
    fn tiny_copy_of(model: &str, edit: impl FnOnce(&Path)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixtures().join(model)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
        }
        edit(dir.path());
        dir
    }

    fn edit_config(dir: &Path, key: &str, value: Value) {
        let path = dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config[key] = value;
        std::fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
    }

    fn load(dir: &Path, device: DeviceKind) -> Result<Embedder> {
        Embedder::load(ModelFiles::from_dir(dir).unwrap(), device)
    }

    fn assert_matches(embeddings: &Embeddings, expected: &Value) {
        let expected = expected.as_array().unwrap();
        assert_eq!(embeddings.rows, expected.len());
        for (i, want) in expected.iter().enumerate() {
            let want = floats(want);
            let got = embeddings.row(i);
            let similarity = cosine(got, &want);
            assert!(similarity >= 0.9999, "row {i}: cosine {similarity}");
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "row {i}: largest difference {worst}");
        }
    }

    fn sentences(reference: &Value) -> Vec<String> {
        reference["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn f16_is_refused_off_wgpu_by_name() {
        assert_eq!("f16".parse::<Precision>().unwrap(), Precision::F16);
        let err = "bf16".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("use f32 or f16"), "{err}");
        assert_eq!(Placement::from(DeviceKind::Wgpu).precision, Precision::F32);
        for device in [DeviceKind::Cpu, DeviceKind::Ndarray] {
            let err = Placement::new(device, Precision::F16)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("f16 runs on wgpu only; the CPU widens half weights to f32"),
                "{err}"
            );
            // A placement made by hand is checked again when a model of any kind loads.
            let placement = Placement {
                device,
                precision: Precision::F16,
            };
            for model in ["tiny-bert", "tiny-llama", "tiny-vit"] {
                let files = ModelFiles::from_dir(&fixtures().join(model)).unwrap();
                let err = Model::load(files, placement).unwrap_err().to_string();
                assert!(err.contains("f16 runs on wgpu only"), "{model}: {err}");
            }
        }
    }

    #[test]
    fn half_checkpoints_of_encoders_are_widened_on_the_cpu() {
        let reference = reference();
        let texts = sentences(&reference);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let cpu_backends = [DeviceKind::Cpu, DeviceKind::Ndarray].into_iter();
        for device in cpu_backends.filter(|d| d.is_built()) {
            for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
                let dir = crate::engine::testing::half_copy("tiny-bert", dtype);
                let model = load(dir.path(), device).unwrap();
                assert_eq!(model.weights_dtype(), burn::tensor::DType::F32);
                let (embeddings, _) = model.embed_texts(&texts).unwrap();
                let want = reference["mean_pooled"].as_array().unwrap();
                let worst = (0..embeddings.rows)
                    .map(|i| {
                        let want = floats(&want[i]);
                        assert!(
                            cosine(embeddings.row(i), &want) > 0.999,
                            "{dtype:?} row {i}"
                        );
                        embeddings
                            .row(i)
                            .iter()
                            .zip(&want)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max)
                    })
                    .fold(0f32, f32::max);
                println!("tiny-bert as {dtype:?} on {device}: largest difference {worst:.1e}");
                assert!(worst > 0.0 && worst < 0.1, "{dtype:?} on {device}: {worst}");
            }
        }
    }

    #[test]
    fn tiny_bert_matches_pytorch_on_every_cpu_backend() {
        let reference = reference();
        let texts = sentences(&reference);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let cpu_backends = [DeviceKind::Cpu, DeviceKind::Ndarray].into_iter();
        for device in cpu_backends.filter(|d| d.is_built()) {
            let model = load(&fixtures().join("tiny-bert"), device).unwrap();
            let tokens = model.tokenize(&texts).unwrap();
            let want_ids: Vec<Vec<u32>> =
                serde_json::from_value(reference["input_ids"].clone()).unwrap();
            assert_eq!(tokens.ids, want_ids);
            let (embeddings, _) = model.embed_texts(&texts).unwrap();
            assert_eq!(embeddings.dim, 32);
            assert_matches(&embeddings, &reference["mean_pooled"]);
            // Token ids in give the same as text in.
            let (from_ids, _) = model.embed_tokens(&tokens).unwrap();
            assert_eq!(from_ids, embeddings);
        }
    }

    fn reference_of(model: &str) -> Value {
        read_json(&format!("{model}-reference.json"))
    }

    /// Each row at cosine 0.99999 or more to transformers', every value within 1e-4 (the
    /// margins are printed, so a run shows them).
    fn assert_close(embeddings: &Embeddings, expected: &Value, what: &str) {
        let expected = expected.as_array().unwrap();
        assert_eq!(embeddings.rows, expected.len());
        let (mut lowest, mut worst) = (1f32, 0f32);
        for (i, want) in expected.iter().enumerate() {
            let want = floats(want);
            let got = embeddings.row(i);
            lowest = lowest.min(cosine(got, &want));
            worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(worst, f32::max);
        }
        println!("{what}: lowest cosine {lowest}, largest difference {worst:e}");
        assert!(lowest >= 0.99999, "{what}: cosine {lowest}");
        assert!(worst < 1e-4, "{what}: largest difference {worst}");
    }

    #[test]
    fn tiny_roberta_matches_transformers_on_every_backend() {
        // A RobertaForMaskedLM checkpoint: `roberta.` prefixed, with an LM head.
        let reference = reference_of("tiny-roberta");
        let texts = sentences(&reference);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        for device in DeviceKind::ALL.into_iter().filter(|d| d.is_built()) {
            let model = load(&fixtures().join("tiny-roberta"), device).unwrap();
            assert_eq!(model.config().family, EncoderFamily::Roberta);
            // 66 positions, counted from the padding id 1 + 1: 64 tokens.
            assert_eq!(model.max_seq_length(), 64);
            let tokens = model.tokenize(&texts).unwrap();
            let want_ids: Vec<Vec<u32>> =
                serde_json::from_value(reference["input_ids"].clone()).unwrap();
            assert_eq!(tokens.ids, want_ids);
            let (embeddings, _) = model.embed_texts(&texts).unwrap();
            assert_close(
                &embeddings,
                &reference["mean_pooled"],
                &format!("tiny-roberta {device}"),
            );
        }
    }

    #[test]
    fn roberta_positions_count_from_padding_and_skip_it() {
        // Left padding, and the padding id inside a row with its mask on: transformers
        // numbers positions by the ids, so each row's embedding depends on where the
        // padding ids are, not only on the mask.
        let reference = reference_of("tiny-roberta");
        let model = load(&fixtures().join("tiny-roberta"), DeviceKind::Cpu).unwrap();
        let tokens = TokenInput {
            ids: serde_json::from_value(reference["token_ids"].clone()).unwrap(),
            mask: serde_json::from_value(reference["token_mask"].clone()).unwrap(),
        };
        let (embeddings, _) = model.embed_tokens(&tokens).unwrap();
        assert_close(
            &embeddings,
            &reference["token_mean_pooled"],
            "tiny-roberta tokens",
        );

        let dir = tiny_copy_of("tiny-roberta", |dir| {
            std::fs::write(
                dir.join("modules.json"),
                r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                   {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
            )
            .unwrap();
            std::fs::create_dir(dir.join("1_Pooling")).unwrap();
            std::fs::write(
                dir.join("1_Pooling/config.json"),
                r#"{"pooling_mode_cls_token":true,"pooling_mode_mean_tokens":false}"#,
            )
            .unwrap();
        });
        let model = load(dir.path(), DeviceKind::Cpu).unwrap();
        // Token ids in: as a sentence-transformers folder this one strips its texts,
        // which the reference (plain transformers) did not.
        let ids: Vec<Vec<u32>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
        let mask = ids.iter().map(|row| vec![1; row.len()]).collect();
        let (embeddings, _) = model.embed_tokens(&TokenInput { ids, mask }).unwrap();
        assert_close(&embeddings, &reference["cls_pooled"], "tiny-roberta cls");
    }

    #[test]
    fn tiny_xlm_roberta_matches_sentence_transformers() {
        // A sentence-transformers folder: unprefixed XLMRobertaModel with its pooler,
        // mean pooling, Normalize, max_seq_length 48, a Unigram tokenizer.
        let reference = reference_of("tiny-xlm-roberta");
        let model = load(&fixtures().join("tiny-xlm-roberta"), DeviceKind::Cpu).unwrap();
        assert_eq!(model.config().family, EncoderFamily::XlmRoberta);
        assert_eq!(model.max_seq_length(), 48);
        assert!(model.normalizes());
        let texts = sentences(&reference);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = model.tokenize(&texts).unwrap();
        let want_ids: Vec<Vec<u32>> =
            serde_json::from_value(reference["input_ids"].clone()).unwrap();
        assert_eq!(tokens.ids, want_ids);
        let (embeddings, _) = model.embed_texts(&texts).unwrap();
        assert_close(&embeddings, &reference["embeddings"], "tiny-xlm-roberta");
        // One at a time gives the same as the padded batch.
        for (i, text) in texts.iter().enumerate() {
            let (alone, _) = model.embed_texts(&[text]).unwrap();
            let similarity = cosine(alone.row(0), embeddings.row(i));
            assert!(similarity > 0.99999, "row {i}: cosine {similarity}");
        }
    }

    #[test]
    fn roberta_weights_that_do_not_fit_are_refused_by_name() {
        let dir = tiny_copy_of("tiny-roberta", |dir| {
            edit_config(dir, "num_hidden_layers", 3.into())
        });
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("encoder.layer.2.") && err.contains("missing"),
            "{err}"
        );
        // BERT's position ids on RoBERTa's weights would run, wrongly: the families
        // must agree.
        let dir = tiny_copy_of("tiny-xlm-roberta", |dir| {
            edit_config(dir, "model_type", "bert".into())
        });
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(err.contains("different encoders"), "{err}");
        // A position table too short for the tokenizer's 64 tokens after the padding id.
        let dir = tiny_copy_of("tiny-roberta", |dir| {
            edit_config(dir, "max_position_embeddings", 2.into())
        });
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(err.contains("max_position_embeddings"), "{err}");
    }

    #[test]
    fn pooling_comes_from_the_folder() {
        let reference = reference();
        let dir = tiny_copy(|dir| {
            std::fs::write(
                dir.join("modules.json"),
                r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                   {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
            )
            .unwrap();
            std::fs::create_dir(dir.join("1_Pooling")).unwrap();
            std::fs::write(
                dir.join("1_Pooling/config.json"),
                r#"{"word_embedding_dimension":32,"pooling_mode_cls_token":true,"pooling_mode_mean_tokens":false}"#,
            )
            .unwrap();
        });
        let model = load(dir.path(), DeviceKind::Cpu).unwrap();
        assert_eq!(model.sentence_config().pooling, Pooling::Cls);
        let texts = sentences(&reference);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (embeddings, _) = model.embed_texts(&texts).unwrap();
        assert_matches(&embeddings, &reference["cls_pooled"]);
    }

    #[test]
    fn batch_results_do_not_depend_on_padding() {
        let model = load(&fixtures().join("tiny-bert"), DeviceKind::Cpu).unwrap();
        let short = "a";
        let long = "Peers fetch model weights from each other over Bitswap.";
        let (alone, _) = model.embed_texts(&[short]).unwrap();
        let (padded, _) = model.embed_texts(&[long, short]).unwrap();
        let similarity = cosine(alone.row(0), padded.row(1));
        assert!(similarity > 0.99999, "cosine {similarity}");
    }

    #[test]
    fn weights_that_do_not_fit_are_refused_by_name() {
        // One layer more than the file has: its weights are missing.
        let dir = tiny_copy(|dir| edit_config(dir, "num_hidden_layers", 3.into()));
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("encoder.layer.2.") && err.contains("missing"),
            "{err}"
        );

        // One layer less: the second layer's weights would be silently unused.
        let dir = tiny_copy(|dir| edit_config(dir, "num_hidden_layers", 1.into()));
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("not used") && err.contains("encoder.layer.1."),
            "{err}"
        );

        // A wider feed-forward than the file's: shapes differ.
        let dir = tiny_copy(|dir| edit_config(dir, "intermediate_size", 128.into()));
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(err.contains("intermediate.dense.weight"), "{err}");
    }

    #[test]
    fn sizes_the_weights_cannot_fill_are_refused_before_allocating() {
        // Within config.json's bounds, but half a terabyte of f32 parameters: refused
        // against the weights file's real size instead of allocated.
        let dir = tiny_copy(|dir| {
            edit_config(dir, "vocab_size", (1u64 << 22).into());
            edit_config(dir, "hidden_size", (1u64 << 15).into());
            edit_config(dir, "num_attention_heads", 1.into());
        });
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("parameters, more than model.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_architectures_and_missing_files_are_named() {
        let dir = tiny_copy(|dir| {
            edit_config(dir, "architectures", serde_json::json!(["GPT2LMHeadModel"]));
            edit_config(dir, "model_type", "gpt2".into());
        });
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(err.contains("GPT2LMHeadModel"), "{err}");

        let dir = tiny_copy(|dir| std::fs::remove_file(dir.join("tokenizer.json")).unwrap());
        let err = load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        let dir = tiny_copy(|dir| std::fs::remove_file(dir.join("model.safetensors")).unwrap());
        let err = ModelFiles::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }

    #[test]
    fn bad_token_input_is_an_error() {
        let model = load(&fixtures().join("tiny-bert"), DeviceKind::Cpu).unwrap();
        let bad = |ids: Vec<Vec<u32>>, mask: Vec<Vec<u32>>| {
            model
                .embed_tokens(&TokenInput { ids, mask })
                .unwrap_err()
                .to_string()
        };
        assert!(bad(vec![vec![101, 5000]], vec![vec![1, 1]]).contains("vocabulary"));
        assert!(bad(vec![vec![101, 102]], vec![vec![1]]).contains("mask"));
        assert!(bad(vec![vec![101]], vec![]).contains("rows"));
        assert!(bad(vec![vec![]], vec![vec![]]).contains("no tokens"));
        assert!(bad(vec![vec![101; 65]], vec![vec![1; 65]]).contains("at most 64"));
        assert!(bad(vec![vec![101, 102]], vec![vec![0, 0]]).contains("masks every token"));
        // Texts past the limit are truncated, not refused.
        let long = "word ".repeat(200);
        let (embeddings, _) = model.embed_texts(&[long.as_str()]).unwrap();
        assert_eq!(embeddings.rows, 1);
        assert_eq!(model.tokenize(&[long.as_str()]).unwrap().ids[0].len(), 64);
    }
}
