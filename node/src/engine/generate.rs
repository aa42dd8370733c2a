//! Text generation: a loaded decoder language model ([`Generator`]) and the sequences it
//! runs ([`Sequence`]). A sequence carries everything that is its own (tokens, key/value
//! cache, sampler, stop state, streaming decoder), so any set of running sequences can be
//! stepped together: [`Generator::step`] is one engine step of a continuous batch, where
//! sequences join (their whole prompt goes in) and leave (once finished) between steps.

use std::sync::atomic::{AtomicU64, Ordering};

use tokenizers::Tokenizer;

use super::chat::{ChatMessage, ChatTemplate};
use super::decoder::{Decoder, KvCache, Segment};
use super::detokenize::Detokenizer;
use super::sampling::{Sampler, SamplingParams};
use super::stop::{self, FinishReason, StopSequences};
use super::{
    DeviceKind, EngineError, ModelFiles, Placement, Precision, Result, check_weights_file, weights,
};
use ipfs_accelerate_protocol::model_folder::{DecoderConfig, GenerationConfig, TokenizerConfig};

/// New tokens a sequence may generate when neither the request nor
/// generation_config.json says.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Most stop sequences one request may give.
pub const STOP_SEQUENCES_LIMIT: usize = 16;
/// Longest stop sequence, in bytes.
pub const STOP_SEQUENCE_BYTES_LIMIT: usize = 256;

/// How to generate: a budget, how tokens are picked, and where to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// New tokens at most (the model's context may end generation sooner).
    pub max_tokens: usize,
    /// 0 picks the most likely token (greedy); above 0 samples at that temperature.
    pub temperature: f32,
    /// Sample only from the `top_k` most likely tokens; 0 for all.
    pub top_k: usize,
    /// Sample only from the most likely tokens that make up `top_p` of the probability.
    pub top_p: f32,
    /// Above 1 discourages tokens already in the sequence; 1 is off.
    pub repetition_penalty: f32,
    /// The sampler's seed: the same seed, prompt and parameters give the same tokens.
    pub seed: Option<u64>,
    /// Generation stops before the first of these appears in the text.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    /// Greedy decoding of up to [`DEFAULT_MAX_TOKENS`] tokens.
    fn default() -> Self {
        let sampling = SamplingParams::default();
        Self {
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: sampling.temperature,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            repetition_penalty: sampling.repetition_penalty,
            seed: None,
            stop: Vec::new(),
        }
    }
}

impl GenerateParams {
    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(EngineError::BadInput(what));
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".to_owned());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature {} must be 0 or more",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!(
                "top_p {} must be above 0 and at most 1",
                self.top_p
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty {} must be above 0",
                self.repetition_penalty
            ));
        }
        if self.stop.len() > STOP_SEQUENCES_LIMIT {
            return bad(format!(
                "{} stop sequences; at most {STOP_SEQUENCES_LIMIT}",
                self.stop.len()
            ));
        }
        if let Some(stop) = self
            .stop
            .iter()
            .find(|s| s.is_empty() || s.len() > STOP_SEQUENCE_BYTES_LIMIT)
        {
            return bad(format!(
                "stop sequence of {} bytes; each must have 1 to {STOP_SEQUENCE_BYTES_LIMIT}",
                stop.len()
            ));
        }
        Ok(())
    }
}

/// What one step did for one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    /// The token chosen.
    pub token: u32,
    /// The text this step adds to the sequence's output: possibly empty (half a
    /// character, or text that may be the start of a stop sequence), never half a
    /// UTF-8 character.
    pub text: String,
    /// Set when the sequence finished with this step.
    pub finish: Option<FinishReason>,
    /// No text of the sequence's tokens is held back after this step (no half
    /// character, no possible start of a stop sequence): its text so far is exactly
    /// that of its tokens, so it could resume from them elsewhere.
    pub settled: bool,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// The new tokens, the end-of-sequence token included when that is why it finished.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
}

/// One running generation: its tokens, key/value cache and decoding state.
#[derive(Debug)]
pub struct Sequence {
    /// The [`Generator`] it belongs to.
    model: u64,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Generated tokens at most, counted from the end of the prompt.
    max_new: usize,
    cache: KvCache,
    sampler: Sampler,
    detokenizer: Detokenizer,
    stops: StopSequences,
    text: String,
    finish: Option<FinishReason>,
}

impl Sequence {
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// Tokens generated so far (those a resumed sequence started with included).
    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// The text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Bytes its key/value cache takes on the model's device.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// The seed its sampler draws from (drawn at random when none was given), which
    /// replays the same tokens from the same prompt and parameters.
    pub fn seed(&self) -> u64 {
        self.sampler.seed()
    }
}

/// Generators get distinct ids, so a sequence is only ever stepped by the model whose
/// cache it holds.
static NEXT_GENERATOR: AtomicU64 = AtomicU64::new(1);

/// A loaded decoder language model on one device.
#[derive(Debug)]
pub struct Generator {
    id: u64,
    config: DecoderConfig,
    generation: GenerationConfig,
    decoder: Decoder,
    tokenizer: Tokenizer,
    chat: Option<ChatTemplate>,
    eos_ids: Vec<u32>,
    kind: DeviceKind,
    precision: Precision,
}

impl Generator {
    /// Builds the decoder that `files` describe and loads its weights onto `placement`.
    pub fn load(files: ModelFiles, placement: impl Into<Placement>) -> Result<Self> {
        let placement = placement.into();
        let kind = placement.device;
        let config = DecoderConfig::parse(&files.config)?;
        let generation = match &files.generation_config {
            Some(json) => GenerationConfig::parse(json)?,
            None => GenerationConfig::default(),
        };
        let tokenizer_json = files
            .tokenizer
            .as_deref()
            .ok_or_else(|| EngineError::MissingFile("tokenizer.json".to_owned()))?;
        let mut tokenizer = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| EngineError::Tokenizer(format!("reading tokenizer.json: {e}")))?;
        // The model's context governs length; prompts are never padded.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let chat = match &files.tokenizer_config {
            Some(json) => ChatTemplate::new(&TokenizerConfig::parse(json)?)?,
            None => None,
        };
        check_weights_file(config.parameter_count(), &files.weights)?;
        let device = placement.device()?;
        if placement.precision == Precision::F16 {
            weights::check_half_range(&files.weights)?;
        }
        // flex runs the decoder on host memory; ndarray (kept as a second CPU path) and
        // wgpu run it as burn tensors.
        let host = kind == DeviceKind::Cpu;
        let decoder = Decoder::load(
            &config,
            &files.weights,
            &device,
            host,
            kind != DeviceKind::Wgpu,
            placement.precision.dtype(),
        )?;
        let mut eos_ids = config.eos_token_ids.clone();
        for id in &generation.eos_token_ids {
            if !eos_ids.contains(id) {
                eos_ids.push(*id);
            }
        }
        Ok(Self {
            id: NEXT_GENERATOR.fetch_add(1, Ordering::Relaxed),
            config,
            generation,
            decoder,
            tokenizer,
            chat,
            eos_ids,
            kind,
            precision: placement.precision,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn device(&self) -> DeviceKind {
        self.kind
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The element type the weights are held in on the device (tests: that f16 runs).
    #[cfg(all(test, feature = "wgpu"))]
    pub(super) fn weights_dtype(&self) -> burn::tensor::DType {
        self.decoder.weights_dtype()
    }

    /// Longest sequence, prompt and new tokens together.
    pub fn context_length(&self) -> usize {
        self.config.context_length()
    }

    /// Bytes the weights take in memory (4 a parameter at f32, whatever the file's
    /// dtype; 2 at f16); each running sequence adds its [`Sequence::cache_bytes`].
    pub fn memory_bytes(&self) -> usize {
        self.config
            .parameter_count()
            .saturating_mul(self.precision.bytes())
    }

    /// Bytes of key/value cache each token of a running sequence takes (4 a value at
    /// f32, 2 at f16), for admitting sequences within a memory budget: a sequence holds
    /// at most [`Generator::context_length`] of them.
    pub fn cache_bytes_per_token(&self) -> usize {
        let c = &self.config;
        2 * c.num_layers * c.num_kv_heads * c.head_dim * self.precision.bytes()
    }

    /// Tokens that end a sequence: config.json's and generation_config.json's.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Decoding settings from generation_config.json, as transformers' `generate` reads
    /// them: greedy unless `do_sample`, then its temperature, top_k (50 when unset, as
    /// transformers) and top_p; its repetition penalty either way.
    pub fn default_params(&self) -> GenerateParams {
        let g = &self.generation;
        let sampling = |value: Option<f64>, default: f64, off: f64| {
            (if g.do_sample {
                value.unwrap_or(default)
            } else {
                off
            }) as f32
        };
        GenerateParams {
            max_tokens: g.max_new_tokens.unwrap_or(DEFAULT_MAX_TOKENS).max(1),
            temperature: sampling(g.temperature, 1.0, 0.0),
            top_k: if g.do_sample {
                g.top_k.unwrap_or(50)
            } else {
                0
            },
            top_p: sampling(g.top_p, 1.0, 1.0),
            repetition_penalty: g.repetition_penalty.unwrap_or(1.0) as f32,
            seed: None,
            stop: Vec::new(),
        }
    }

    /// Token ids of `prompt`, with the special tokens the tokenizer adds (a BOS for
    /// Llama's), as transformers' `tokenizer(prompt)` gives them.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode_with(prompt, true)
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// The prompt text the model's chat template makes of `messages`, with the
    /// assistant's turn opened; an error when the model has no template.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            EngineError::BadInput(
                "this model has no chat template (tokenizer_config.json has no \
                 chat_template); send a plain prompt"
                    .to_owned(),
            )
        })?;
        chat.render(messages)
    }

    /// Token ids of the chat prompt for `messages`: the rendered template, tokenized
    /// without adding special tokens (the template writes its own), as transformers'
    /// `apply_chat_template(..., tokenize=True)` does.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages)?;
        self.encode_with(&text, false)
    }

    fn encode_with(&self, text: &str, special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, special_tokens)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// A new sequence for `prompt_ids`, checked against the model: at least one token,
    /// every id in the vocabulary, and room in the context for one new token.
    pub fn start(&self, prompt_ids: Vec<u32>, params: GenerateParams) -> Result<Sequence> {
        self.resume(prompt_ids, Vec::new(), params)
    }

    /// A sequence that continues one that already generated `generated` after
    /// `prompt_ids` (elsewhere, say, on a peer that went away): they count toward
    /// `max_tokens` and the repetition penalty, and greedy decoding continues exactly as
    /// the first sequence would have. Stop sequences are looked for in new text only.
    pub fn resume(
        &self,
        prompt_ids: Vec<u32>,
        generated: Vec<u32>,
        params: GenerateParams,
    ) -> Result<Sequence> {
        params.validate()?;
        if prompt_ids.is_empty() {
            return Err(EngineError::BadInput("the prompt has no tokens".to_owned()));
        }
        let prompt_len = prompt_ids.len();
        let mut tokens = prompt_ids;
        tokens.extend(generated);
        if let Some(id) = tokens
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(EngineError::BadInput(format!(
                "token id {id} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let context = self.context_length();
        if tokens.len() >= context {
            return Err(EngineError::BadInput(format!(
                "the prompt has {} tokens; this model's context is {context} tokens, so a \
                 prompt may have at most {}",
                tokens.len(),
                context - 1
            )));
        }
        let already = tokens.len() - prompt_len;
        if already >= params.max_tokens {
            return Err(EngineError::BadInput(format!(
                "{already} tokens were already generated; max_tokens {} leaves none",
                params.max_tokens
            )));
        }
        let max_new = params.max_tokens.min(context - prompt_len);
        Ok(Sequence {
            model: self.id,
            prompt_len,
            max_new,
            cache: self.decoder.new_cache(),
            sampler: Sampler::new(params.sampling(), params.seed),
            detokenizer: Detokenizer::new(&self.tokenizer, &tokens),
            stops: StopSequences::new(params.stop),
            text: String::new(),
            finish: None,
            tokens,
        })
    }

    /// One engine step for a running batch. Sequences that have not run yet put in
    /// their whole prompt, the others their last token; all these tokens go through the
    /// dense layers as one packed matrix, and attention runs per sequence against its
    /// own cache. Returns, in order, each sequence's new token, its text and whether it
    /// finished. Finished sequences and sequences of another model are refused.
    pub fn step(&self, batch: &mut [&mut Sequence]) -> Result<Vec<StepOutput>> {
        let mut logits = self.forward(batch)?;
        let vocab = self.config.vocab_size;
        batch
            .iter_mut()
            .zip(logits.chunks_exact_mut(vocab))
            .map(|(sequence, row)| self.advance(sequence, row))
            .collect()
    }

    /// Runs `prompt_ids` to the end, calling `on_delta` after each token.
    pub fn generate(
        &self,
        prompt_ids: Vec<u32>,
        params: GenerateParams,
        mut on_delta: impl FnMut(&StepOutput),
    ) -> Result<Generation> {
        let mut sequence = self.start(prompt_ids, params)?;
        loop {
            let outputs = self.step(&mut [&mut sequence])?;
            for output in &outputs {
                on_delta(output);
            }
            if let Some(finish) = sequence.finish {
                return Ok(Generation {
                    prompt_tokens: sequence.prompt_len,
                    tokens: sequence.generated().to_vec(),
                    text: sequence.text,
                    finish,
                });
            }
        }
    }

    /// The logits after each sequence's new tokens, `batch.len()` rows of the vocabulary.
    pub(super) fn forward(&self, batch: &mut [&mut Sequence]) -> Result<Vec<f32>> {
        for sequence in batch.iter() {
            if sequence.model != self.id {
                return Err(EngineError::BadInput(
                    "a sequence of another model cannot be stepped by this one".to_owned(),
                ));
            }
            if let Some(finish) = sequence.finish {
                return Err(EngineError::BadInput(format!(
                    "a sequence that finished ({}) cannot be stepped",
                    finish.name()
                )));
            }
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        let mut segments = Vec::with_capacity(batch.len());
        for sequence in batch.iter() {
            let past = sequence.cache.len();
            let new = &sequence.tokens[past..];
            segments.push(Segment {
                start: ids.len(),
                len: new.len(),
                past,
            });
            ids.extend_from_slice(new);
        }
        let mut caches: Vec<&mut KvCache> = batch.iter_mut().map(|s| &mut s.cache).collect();
        let result = self.decoder.forward(&ids, &segments, &mut caches);
        if result.is_err() {
            // The caches may hold part of this step: start them over, so that the next
            // step recomputes each sequence from its tokens.
            for cache in caches {
                *cache = self.decoder.new_cache();
            }
        }
        result
    }

    /// Picks `sequence`'s next token from its logits and works out its text and finish.
    fn advance(&self, sequence: &mut Sequence, logits: &mut [f32]) -> Result<StepOutput> {
        let token = sequence.sampler.next(logits, &sequence.tokens);
        sequence.tokens.push(token);
        let generated = sequence.tokens.len() - sequence.prompt_len;
        let mut finish = stop::token_finish(token, &self.eos_ids, generated, sequence.max_new);
        let mut text = String::new();
        if finish != Some(FinishReason::Eos) {
            let piece = sequence.detokenizer.push(&self.tokenizer, token)?;
            let (emit, stopped) = sequence.stops.push(&piece);
            text = emit;
            if stopped {
                finish = Some(FinishReason::Stop);
            }
        }
        if matches!(finish, Some(FinishReason::Eos | FinishReason::Length)) {
            // Nothing follows: what was held for a character or a stop sequence goes out.
            let rest = sequence.detokenizer.flush(&self.tokenizer)?;
            let (emit, stopped) = sequence.stops.push(&rest);
            text.push_str(&emit);
            if stopped {
                finish = Some(FinishReason::Stop);
            } else {
                text.push_str(&sequence.stops.flush());
            }
        }
        sequence.text.push_str(&text);
        sequence.finish = finish;
        let settled =
            finish.is_some() || (sequence.detokenizer.is_settled() && sequence.stops.is_settled());
        Ok(StepOutput {
            token,
            text,
            finish,
            settled,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;
    use std::time::Instant;

    use safetensors::tensor::TensorView;
    use serde_json::Value;

    use super::*;
    use crate::engine::testing::{fixtures, floats};

    const MODELS: [&str; 4] = ["tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-mistral"];
    /// A greedy step is compared token for token where transformers' top two logits are
    /// further apart than this; our logits are within 1e-4 of theirs, so a closer pair
    /// could legitimately flip, and after a flip the continuations differ.
    const CLEAR_MARGIN: f64 = 1e-3;
    /// New tokens of transformers' greedy continuations in the reference.
    const NEW_TOKENS: usize = 32;

    fn reference() -> &'static Value {
        static REFERENCE: OnceLock<Value> = OnceLock::new();
        REFERENCE.get_or_init(|| {
            let text = std::fs::read(fixtures().join("generation-reference.json")).unwrap();
            let reference: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(
                reference["new_tokens"], NEW_TOKENS,
                "regenerate the reference"
            );
            reference
        })
    }

    fn cases(model: &str) -> &'static [Value] {
        reference()["models"][model]["prompts"].as_array().unwrap()
    }

    fn load(model: &str) -> Generator {
        load_dir(&fixtures().join(model)).unwrap()
    }

    fn load_dir(dir: &Path) -> Result<Generator> {
        Generator::load(ModelFiles::from_dir(dir).unwrap(), DeviceKind::Cpu)
    }

    fn ids(value: &Value) -> Vec<u32> {
        serde_json::from_value(value.clone()).unwrap()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn greedy(max_tokens: usize) -> GenerateParams {
        GenerateParams {
            max_tokens,
            ..GenerateParams::default()
        }
    }

    /// Logits after `tokens`, computed from scratch (no cache).
    fn full_logits(generator: &Generator, tokens: &[u32]) -> Vec<f32> {
        let mut sequence = generator.start(tokens.to_vec(), greedy(1)).unwrap();
        generator.forward(&mut [&mut sequence]).unwrap()
    }

    /// How many of transformers' greedy tokens can be compared: up to the first step
    /// whose margin is not clear.
    fn comparable(margins: impl Iterator<Item = f64>, clear: f64) -> usize {
        margins.take_while(|&m| m > clear).count()
    }

    /// Runs `sequences` as one continuous batch until all finish; `joining[i]` is the
    /// step at which sequence i joins. Returns each one's tokens.
    fn run_batch(generator: &Generator, mut sequences: Vec<(usize, Sequence)>) -> Vec<Vec<u32>> {
        let mut step = 0;
        while sequences.iter().any(|(_, s)| !s.is_finished()) {
            let mut batch: Vec<&mut Sequence> = sequences
                .iter_mut()
                .filter(|(join, s)| *join <= step && !s.is_finished())
                .map(|(_, s)| s)
                .collect();
            generator.step(&mut batch).unwrap();
            step += 1;
            assert!(step < 1000);
        }
        sequences
            .into_iter()
            .map(|(_, s)| s.generated().to_vec())
            .collect()
    }

    #[test]
    fn logits_and_greedy_continuations_match_transformers() {
        for model in MODELS {
            let generator = load(model);
            let (mut worst_prompt, mut worst_step) = (0f32, 0f32);
            for case in cases(model) {
                let prompt = case["prompt"].as_str().unwrap();
                let prompt_ids = generator.encode(prompt).unwrap();
                assert_eq!(prompt_ids, ids(&case["input_ids"]), "{model}: {prompt:?}");
                let diff = max_abs_diff(
                    &full_logits(&generator, &prompt_ids),
                    &floats(&case["last_logits"]),
                );
                worst_prompt = worst_prompt.max(diff);

                // Greedy decoding through the cache, one step at a time: each step's
                // logits against transformers' top 20, each token against theirs.
                let want = ids(&case["greedy_ids"]);
                let steps = case["greedy_steps"].as_array().unwrap();
                let compared = comparable(
                    steps.iter().map(|s| s["margin"].as_f64().unwrap()),
                    CLEAR_MARGIN,
                );
                let mut sequence = generator.start(prompt_ids, greedy(NEW_TOKENS)).unwrap();
                let mut text = String::new();
                for (i, step) in steps.iter().enumerate().take(compared) {
                    let mut logits = generator.forward(&mut [&mut sequence]).unwrap();
                    for (id, value) in ids(&step["top_ids"])
                        .iter()
                        .zip(floats(&step["top_logits"]))
                    {
                        worst_step = worst_step.max((logits[*id as usize] - value).abs());
                    }
                    let output = generator.advance(&mut sequence, &mut logits).unwrap();
                    assert_eq!(output.token, want[i], "{model}: {prompt:?} step {i}");
                    text.push_str(&output.text);
                }
                assert_eq!(compared, want.len(), "{model}: every margin here is clear");
                assert_eq!(sequence.generated(), want.as_slice());
                assert_eq!(
                    text,
                    case["greedy_text"].as_str().unwrap(),
                    "{model}: {prompt:?}"
                );
                let finish = if want.len() < NEW_TOKENS {
                    FinishReason::Eos
                } else {
                    FinishReason::Length
                };
                assert_eq!(
                    sequence.finish_reason(),
                    Some(finish),
                    "{model}: {prompt:?}"
                );
            }
            println!(
                "{model}: largest logit difference from transformers {worst_prompt:.2e} after \
                 the prompt, {worst_step:.2e} over {NEW_TOKENS} cached greedy steps"
            );
            assert!(worst_prompt < 1e-4, "{model}: {worst_prompt}");
            assert!(worst_step < 1e-4, "{model}: {worst_step}");
        }
    }

    #[test]
    fn cached_decoding_gives_the_logits_of_a_full_recompute() {
        for model in MODELS {
            let generator = load(model);
            // The long prompt passes Mistral's 8-token sliding window.
            let case = &cases(model)[2];
            let mut sequence = generator
                .start(ids(&case["input_ids"]), greedy(NEW_TOKENS))
                .unwrap();
            for _ in 0..12 {
                generator.step(&mut [&mut sequence]).unwrap();
            }
            let cached = generator.forward(&mut [&mut sequence]).unwrap();
            let full = full_logits(&generator, &sequence.tokens);
            let diff = max_abs_diff(&cached, &full);
            println!("{model}: cached vs recomputed logits after 12 steps: {diff:.2e}");
            assert!(diff < 1e-4, "{model}: {diff}");
        }
    }

    #[test]
    fn sequences_stepped_together_give_the_tokens_they_give_alone() {
        for model in MODELS {
            let generator = load(model);
            let want: Vec<Vec<u32>> = cases(model).iter().map(|c| ids(&c["greedy_ids"])).collect();
            let prompt = |i: usize| ids(&cases(model)[i]["input_ids"]);
            // All four prompts (2 to 44 tokens) from the first step.
            let together = (0..4)
                .map(|i| (0, generator.start(prompt(i), greedy(NEW_TOKENS)).unwrap()))
                .collect();
            assert_eq!(run_batch(&generator, together), want, "{model}");
            // Joining and leaving between steps: the second joins at step 3 while the
            // first decodes, the third (4 tokens at most) joins at 5 and leaves at 9, the
            // fourth joins at 12.
            let staggered = vec![
                (0, generator.start(prompt(0), greedy(NEW_TOKENS)).unwrap()),
                (3, generator.start(prompt(1), greedy(NEW_TOKENS)).unwrap()),
                (5, generator.start(prompt(2), greedy(4)).unwrap()),
                (12, generator.start(prompt(3), greedy(NEW_TOKENS)).unwrap()),
            ];
            let got = run_batch(&generator, staggered);
            assert_eq!(got[0], want[0], "{model}");
            assert_eq!(got[1], want[1], "{model}");
            assert_eq!(got[2], want[2][..4], "{model}");
            assert_eq!(got[3], want[3], "{model}");
        }
    }

    #[test]
    fn a_resumed_sequence_continues_as_the_original_would() {
        for model in MODELS {
            let generator = load(model);
            let case = &cases(model)[2];
            let want = ids(&case["greedy_ids"]);
            let mut sequence = generator
                .resume(
                    ids(&case["input_ids"]),
                    want[..10].to_vec(),
                    greedy(NEW_TOKENS),
                )
                .unwrap();
            assert_eq!(sequence.generated(), &want[..10]);
            while !sequence.is_finished() {
                generator.step(&mut [&mut sequence]).unwrap();
            }
            assert_eq!(sequence.generated(), want.as_slice(), "{model}");
            // The ten already generated count toward max_tokens.
            let err = generator
                .resume(ids(&case["input_ids"]), want[..10].to_vec(), greedy(10))
                .unwrap_err()
                .to_string();
            assert!(err.contains("leaves none"), "{err}");
        }
    }

    #[test]
    fn repetition_penalty_matches_transformers() {
        for model in MODELS {
            let generator = load(model);
            for case in cases(model) {
                let want = ids(&case["penalty_1_5_ids"]);
                let margins = case["penalty_1_5_margins"].as_array().unwrap();
                let compared =
                    comparable(margins.iter().map(|m| m.as_f64().unwrap()), CLEAR_MARGIN);
                let params = GenerateParams {
                    repetition_penalty: 1.5,
                    ..greedy(NEW_TOKENS)
                };
                let got = generator
                    .generate(ids(&case["input_ids"]), params, |_| {})
                    .unwrap();
                assert_eq!(compared, want.len(), "{model}: every margin here is clear");
                assert_eq!(got.tokens, want, "{model}");
            }
        }
    }

    #[test]
    fn sampling_is_deterministic_by_seed() {
        let generator = load("tiny-llama");
        let prompt = ids(&cases("tiny-llama")[2]["input_ids"]);
        let params = |seed| GenerateParams {
            temperature: 0.9,
            top_k: 100,
            top_p: 0.95,
            seed: Some(seed),
            ..greedy(NEW_TOKENS)
        };
        let run = |seed| {
            generator
                .generate(prompt.clone(), params(seed), |_| {})
                .unwrap()
        };
        let first = run(42);
        assert_eq!(first, run(42));
        assert_ne!(first.tokens, run(43).tokens);
        let greedy_tokens = ids(&cases("tiny-llama")[2]["greedy_ids"]);
        assert_ne!(first.tokens, greedy_tokens);
        // Seeded sequences draw the same in a batch as alone.
        let together = vec![
            (0, generator.start(prompt.clone(), params(42)).unwrap()),
            (
                0,
                generator
                    .start(ids(&cases("tiny-llama")[0]["input_ids"]), params(7))
                    .unwrap(),
            ),
        ];
        assert_eq!(run_batch(&generator, together)[0], first.tokens);
        // An unseeded sequence reports the seed it drew, which replays it.
        let unseeded = generator
            .start(
                prompt.clone(),
                GenerateParams {
                    seed: None,
                    ..params(0)
                },
            )
            .unwrap();
        let seed = unseeded.seed();
        let replayed = run_batch(&generator, vec![(0, unseeded)]);
        assert_eq!(replayed[0], run(seed).tokens);
    }

    #[test]
    fn defaults_come_from_generation_config() {
        let qwen = load("tiny-qwen2");
        let params = qwen.default_params();
        assert_eq!(params.temperature, 0.7);
        assert_eq!((params.top_k, params.top_p), (20, 0.8));
        assert_eq!(params.repetition_penalty, 1.05);
        // config.json's EOS and generation_config.json's two, once each.
        let mut eos = qwen.eos_token_ids().to_vec();
        eos.sort();
        assert_eq!(eos, vec![0, 2]);
        let gpt2 = load("tiny-gpt2");
        assert_eq!(gpt2.default_params(), GenerateParams::default());
    }

    #[test]
    fn stop_sequences_cut_the_text_across_token_boundaries() {
        let generator = load("tiny-qwen2");
        let prompt = ids(&cases("tiny-qwen2")[1]["input_ids"]);
        let mut deltas = Vec::new();
        let whole = generator
            .generate(prompt.clone(), greedy(NEW_TOKENS), |o| {
                deltas.push(o.text.clone())
            })
            .unwrap();
        assert_eq!(deltas.concat(), whole.text);
        // A stop made of the end of one token's text and the start of a later one's.
        let (i, j) = (3..deltas.len() - 1)
            .find_map(|i| {
                let j = (i + 1..deltas.len()).find(|&j| !deltas[j].is_empty())?;
                (deltas[i].chars().count() >= 1).then_some((i, j))
            })
            .unwrap();
        let last: String = deltas[i].chars().next_back().into_iter().collect();
        let first: String = deltas[j].chars().next().into_iter().collect();
        let stop = format!("{last}{first}");
        let cut = whole.text.find(&stop).unwrap();
        let mut streamed = String::new();
        let stopped = generator
            .generate(
                prompt,
                GenerateParams {
                    stop: vec!["never there".to_owned(), stop.clone()],
                    ..greedy(NEW_TOKENS)
                },
                |o| streamed.push_str(&o.text),
            )
            .unwrap();
        assert_eq!(stopped.finish, FinishReason::Stop);
        assert_eq!(stopped.text, whole.text[..cut], "stop {stop:?}");
        assert_eq!(streamed, stopped.text);
        assert!(stopped.tokens.len() <= j + 1);
    }

    #[test]
    fn eos_max_tokens_and_the_context_end_generation() {
        let generator = load("tiny-llama");
        // transformers stopped this one at its EOS, 18 tokens in.
        let case = &cases("tiny-llama")[1];
        let got = generator
            .generate(ids(&case["input_ids"]), greedy(NEW_TOKENS), |_| {})
            .unwrap();
        assert_eq!(got.finish, FinishReason::Eos);
        assert_eq!(got.tokens, ids(&case["greedy_ids"]));
        assert!(
            generator
                .eos_token_ids()
                .contains(got.tokens.last().unwrap())
        );
        assert_eq!(got.text, case["greedy_text"].as_str().unwrap());

        let got = generator
            .generate(ids(&case["input_ids"]), greedy(5), |_| {})
            .unwrap();
        assert_eq!((got.tokens.len(), got.finish), (5, FinishReason::Length));

        // A prompt two short of the 128-token context gets two tokens, however many
        // were asked for; one of 128 is refused.
        let context = generator.context_length();
        assert_eq!(context, 128);
        let long: Vec<u32> = (0..context - 2).map(|i| 10 + (i % 400) as u32).collect();
        let got = generator.generate(long, greedy(100), |_| {}).unwrap();
        assert_eq!((got.tokens.len(), got.finish), (2, FinishReason::Length));
        let too_long: Vec<u32> = vec![10; context];
        let err = generator
            .start(too_long, greedy(1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("context is 128 tokens") && err.contains("at most 127"),
            "{err}"
        );
        let text = "word ".repeat(200);
        let err = generator
            .start(generator.encode(&text).unwrap(), greedy(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("context is 128 tokens"), "{err}");
    }

    #[test]
    fn chat_prompts_tokenize_as_transformers_does() {
        for model in ["tiny-llama", "tiny-qwen2", "tiny-mistral"] {
            let generator = load(model);
            assert!(generator.has_chat_template());
            for case in reference()["models"][model]["chat"].as_array().unwrap() {
                let messages: Vec<ChatMessage> = case["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        ChatMessage::new(
                            m["role"].as_str().unwrap(),
                            m["content"].as_str().unwrap(),
                        )
                    })
                    .collect();
                match case.get("input_ids") {
                    Some(want) => {
                        assert_eq!(
                            generator.encode_chat(&messages).unwrap(),
                            ids(want),
                            "{model}"
                        )
                    }
                    None => assert!(generator.encode_chat(&messages).is_err()),
                }
            }
        }
        let gpt2 = load("tiny-gpt2");
        let err = gpt2
            .apply_chat_template(&[ChatMessage::new("user", "hi")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no chat template"), "{err}");
    }

    #[test]
    fn half_precision_checkpoints_load_and_drift_little() {
        let rounded = reference()["rounded"].as_object().unwrap();
        assert_eq!(rounded.len(), 2);
        for (copy, entry) in rounded {
            let of = entry["of"].as_str().unwrap();
            let dtype = if copy.ends_with("bf16") {
                "BF16"
            } else {
                "F16"
            };
            let weights = std::fs::read(fixtures().join(copy).join("model.safetensors")).unwrap();
            let headers =
                ipfs_accelerate_protocol::model_folder::safetensors::tensors(&weights).unwrap();
            assert!(headers.iter().all(|t| t.dtype == dtype), "{copy}");
            let generator = load(copy);
            let (mut exact, mut drift) = (0f32, 0f32);
            let mut clear_tokens = 0;
            for (case, want_rounded) in cases(of)
                .iter()
                .zip(entry["last_logits"].as_array().unwrap())
            {
                let prompt = ids(&case["input_ids"]);
                let logits = full_logits(&generator, &prompt);
                exact = exact.max(max_abs_diff(&logits, &floats(want_rounded)));
                let prompt_drift = max_abs_diff(&logits, &floats(&case["last_logits"]));
                drift = drift.max(prompt_drift);
                // Tokens must agree with the f32 model's where its margin is well clear
                // of the drift.
                let margins = case["greedy_steps"].as_array().unwrap();
                // A logit moves by at most the drift, so a gap of more than twice it
                // cannot close; 2.5 leaves room for the drift to grow over the steps.
                let clear = 2.5 * f64::from(prompt_drift);
                let compared =
                    comparable(margins.iter().map(|s| s["margin"].as_f64().unwrap()), clear);
                let got = generator
                    .generate(prompt, greedy(NEW_TOKENS), |_| {})
                    .unwrap();
                let want = ids(&case["greedy_ids"]);
                assert_eq!(got.tokens[..compared], want[..compared], "{copy}");
                clear_tokens += compared;
            }
            println!(
                "{copy}: logits within {exact:.2e} of transformers on the same rounded weights; \
                 {drift:.2e} from the f32 model; {clear_tokens} greedy tokens compared"
            );
            assert!(exact < 1e-4, "{copy}: {exact}");
            assert!(drift > 1e-4 && drift < 0.2, "{copy}: {drift}");
            assert!(clear_tokens >= 15, "{copy}: {clear_tokens}");
        }
    }

    #[test]
    fn bad_requests_are_refused_by_name() {
        let generator = load("tiny-gpt2");
        let bad = |prompt: Vec<u32>, params: GenerateParams| {
            generator.start(prompt, params).unwrap_err().to_string()
        };
        assert!(bad(vec![], greedy(1)).contains("no tokens"));
        assert!(
            bad(vec![1, 512], greedy(1)).contains("token id 512 is outside the vocabulary of 512")
        );
        for (params, says) in [
            (greedy(0), "max_tokens"),
            (
                GenerateParams {
                    temperature: -1.0,
                    ..greedy(1)
                },
                "temperature",
            ),
            (
                GenerateParams {
                    temperature: f32::NAN,
                    ..greedy(1)
                },
                "temperature",
            ),
            (
                GenerateParams {
                    top_p: 0.0,
                    ..greedy(1)
                },
                "top_p",
            ),
            (
                GenerateParams {
                    top_p: 1.5,
                    ..greedy(1)
                },
                "top_p",
            ),
            (
                GenerateParams {
                    repetition_penalty: 0.0,
                    ..greedy(1)
                },
                "repetition_penalty",
            ),
            (
                GenerateParams {
                    stop: vec![String::new()],
                    ..greedy(1)
                },
                "stop sequence",
            ),
            (
                GenerateParams {
                    stop: vec!["x".repeat(257)],
                    ..greedy(1)
                },
                "stop sequence",
            ),
            (
                GenerateParams {
                    stop: vec!["x".to_owned(); 17],
                    ..greedy(1)
                },
                "17 stop sequences",
            ),
        ] {
            let err = bad(vec![1], params);
            assert!(err.contains(says), "{says}: {err}");
        }
        // A sequence is stepped only by its own model, and not once finished.
        let other = load("tiny-gpt2");
        let mut sequence = other.start(vec![1, 2], greedy(1)).unwrap();
        let err = generator
            .step(&mut [&mut sequence])
            .unwrap_err()
            .to_string();
        assert!(err.contains("another model"), "{err}");
        other.step(&mut [&mut sequence]).unwrap();
        assert!(sequence.is_finished());
        let err = other.step(&mut [&mut sequence]).unwrap_err().to_string();
        assert!(err.contains("finished (length)"), "{err}");
        assert_eq!(other.step(&mut []).unwrap(), vec![]);
    }

    #[test]
    fn generators_are_shared_and_sequences_move_between_threads() {
        fn shared<T: Send + Sync>() {}
        fn movable<T: Send>() {}
        shared::<Generator>();
        movable::<Sequence>();
    }

    #[test]
    fn memory_follows_the_tokens() {
        let generator = load("tiny-llama");
        let config = generator.config();
        assert_eq!(generator.memory_bytes(), config.parameter_count() * 4);
        let weights = std::fs::metadata(fixtures().join("tiny-llama/model.safetensors")).unwrap();
        // The f32 file is the parameters and a small header.
        assert!(generator.memory_bytes() as u64 <= weights.len());
        assert!(generator.memory_bytes() as u64 + 4096 > weights.len());
        let per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4;
        assert_eq!(generator.cache_bytes_per_token(), per_token);
        let mut sequence = generator.start(vec![1; 10], greedy(5)).unwrap();
        assert_eq!(sequence.cache_bytes(), 0);
        generator.step(&mut [&mut sequence]).unwrap();
        assert_eq!(sequence.cache_bytes(), 10 * per_token);
        generator.step(&mut [&mut sequence]).unwrap();
        assert_eq!(sequence.cache_bytes(), 11 * per_token);
    }

    /// A copy of a fixture folder with `edit` applied, in a temporary directory.
    fn copy_of(model: &str, edit: impl FnOnce(&Path)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixtures().join(model)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        edit(dir.path());
        dir
    }

    fn edit_json(dir: &Path, file: &str, key: &str, value: Value) {
        let path = dir.join(file);
        let mut json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json[key] = value;
        std::fs::write(path, serde_json::to_vec(&json).unwrap()).unwrap();
    }

    /// Rewrites model.safetensors in `dir` through `edit` on its (name, dtype, shape,
    /// bytes) list.
    fn edit_weights(
        dir: &Path,
        edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
    ) {
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<_> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                (
                    name,
                    view.dtype(),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                )
            })
            .collect();
        edit(&mut tensors);
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (
                    name.clone(),
                    TensorView::new(*dtype, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn weights_that_do_not_fit_are_refused_by_name() {
        let err = |dir: &tempfile::TempDir| load_dir(dir.path()).unwrap_err().to_string();
        let dir = copy_of("tiny-llama", |d| {
            edit_json(d, "config.json", "num_hidden_layers", 3.into())
        });
        let e = err(&dir);
        assert!(
            e.contains("missing: model.layers.2.input_layernorm.weight"),
            "{e}"
        );
        let dir = copy_of("tiny-llama", |d| {
            edit_json(d, "config.json", "num_hidden_layers", 1.into())
        });
        let e = err(&dir);
        assert!(e.contains("not used by the model: model.layers.1."), "{e}");
        let dir = copy_of("tiny-llama", |d| {
            edit_json(d, "config.json", "intermediate_size", 96.into())
        });
        let e = err(&dir);
        assert!(e.contains("model.layers.0.mlp.gate_proj.weight has shape [128, 64], the configuration needs [96, 64]"), "{e}");
        // Untied in config.json but the file has no output head.
        let dir = copy_of("tiny-qwen2", |d| {
            edit_json(d, "config.json", "tie_word_embeddings", false.into())
        });
        assert!(err(&dir).contains("missing: lm_head.weight"));
        // A tensor nobody asked for.
        let dir = copy_of("tiny-qwen2", |d| {
            edit_weights(d, |t| {
                t.push((
                    "model.layers.0.mlp.extra".into(),
                    safetensors::Dtype::F32,
                    vec![1],
                    vec![0; 4],
                ))
            })
        });
        assert!(err(&dir).contains("not used by the model: model.layers.0.mlp.extra"));
        // Integer weights.
        let dir = copy_of("tiny-qwen2", |d| {
            edit_weights(d, |t| {
                let norm = t.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
                norm.1 = safetensors::Dtype::I32;
            })
        });
        assert!(err(&dir).contains("model.norm.weight is I32; weights must be F32, F16 or BF16"));
    }

    #[test]
    fn hostile_folders_are_refused_before_allocating() {
        let err = |dir: &tempfile::TempDir| load_dir(dir.path()).unwrap_err().to_string();
        // Within config.json's bounds but far more parameters than the file's bytes.
        let dir = copy_of("tiny-llama", |d| {
            edit_json(d, "config.json", "vocab_size", (1u64 << 22).into());
            edit_json(d, "config.json", "hidden_size", 4096.into());
            edit_json(d, "config.json", "num_attention_heads", 64.into());
            edit_json(d, "config.json", "num_key_value_heads", 64.into());
        });
        let e = err(&dir);
        assert!(e.contains("parameters, more than model.safetensors"), "{e}");
        let dir = copy_of("tiny-llama", |d| {
            edit_json(d, "config.json", "num_attention_heads", 0.into())
        });
        assert!(err(&dir).contains("num_attention_heads 0 is out of range"));
        let dir = copy_of("tiny-llama", |d| {
            edit_json(
                d,
                "config.json",
                "architectures",
                serde_json::json!(["FalconForCausalLM"]),
            )
        });
        let e = err(&dir);
        assert!(
            e.contains("\"FalconForCausalLM\"") && e.contains("LlamaForCausalLM"),
            "{e}"
        );
        let dir = copy_of("tiny-llama", |d| {
            std::fs::remove_file(d.join("tokenizer.json")).unwrap()
        });
        assert!(err(&dir).contains("tokenizer.json"));
        let dir = copy_of("tiny-llama", |d| {
            edit_json(
                d,
                "tokenizer_config.json",
                "chat_template",
                "{% if %}".into(),
            )
        });
        assert!(err(&dir).contains("tokenizer_config.json: chat_template does not compile"));
        let dir = copy_of("tiny-llama", |d| {
            edit_json(d, "generation_config.json", "top_p", 2.into())
        });
        assert!(err(&dir).contains("generation_config.json: top_p 2 is out of range"));
        // A header that claims more bytes than the file has.
        let dir = copy_of("tiny-llama", |d| {
            let path = d.join("model.safetensors");
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() - 100]).unwrap();
        });
        assert!(err(&dir).starts_with("model.safetensors: its header is invalid"));
    }

    #[test]
    fn gpt2_checkpoints_in_the_published_layout_load() {
        // openai-community/gpt2's file: no `transformer.` prefix, the causal-mask buffers
        // of older transformers, and the tied head saved too.
        let dir = copy_of("tiny-gpt2", |d| {
            edit_weights(d, |tensors| {
                let wte = tensors
                    .iter()
                    .find(|t| t.0 == "transformer.wte.weight")
                    .unwrap()
                    .clone();
                for t in tensors.iter_mut() {
                    t.0 = t.0.trim_start_matches("transformer.").to_owned();
                }
                for layer in 0..2 {
                    let mask = (0..128 * 128).flat_map(|_| [1u8]).collect::<Vec<u8>>();
                    tensors.push((
                        format!("h.{layer}.attn.bias"),
                        safetensors::Dtype::U8,
                        vec![1, 1, 128, 128],
                        mask,
                    ));
                    tensors.push((
                        format!("h.{layer}.attn.masked_bias"),
                        safetensors::Dtype::F32,
                        vec![],
                        vec![0; 4],
                    ));
                }
                tensors.push(("lm_head.weight".to_owned(), wte.1, wte.2, wte.3));
            })
        });
        let generator = load_dir(dir.path()).unwrap();
        let case = &cases("tiny-gpt2")[2];
        let diff = max_abs_diff(
            &full_logits(&generator, &ids(&case["input_ids"])),
            &floats(&case["last_logits"]),
        );
        assert!(diff < 1e-4, "{diff}");
        // A buffer of a layer the model does not have is not ignored.
        let dir = copy_of("tiny-gpt2", |d| {
            edit_weights(d, |t| {
                t.push((
                    "transformer.h.7.attn.bias".into(),
                    safetensors::Dtype::F32,
                    vec![1],
                    vec![0; 4],
                ))
            })
        });
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("not used by the model: transformer.h.7.attn.bias"),
            "{e}"
        );
    }

    /// The other backends, where the build has them (`--features wgpu,ndarray`; wgpu
    /// runs on Mesa's lavapipe without a GPU): logits and a continuous batch's tokens.
    #[test]
    fn every_built_backend_matches_transformers() {
        let others = [DeviceKind::Ndarray, DeviceKind::Wgpu];
        for kind in others.into_iter().filter(|k| k.is_built()) {
            for model in ["tiny-gpt2", "tiny-llama", "tiny-mistral"] {
                let files = ModelFiles::from_dir(&fixtures().join(model)).unwrap();
                let generator = Generator::load(files, kind).unwrap();
                let mut worst = 0f32;
                let mut sequences = Vec::new();
                for case in cases(model) {
                    let prompt = ids(&case["input_ids"]);
                    let logits = full_logits(&generator, &prompt);
                    worst = worst.max(max_abs_diff(&logits, &floats(&case["last_logits"])));
                    sequences.push((0, generator.start(prompt, greedy(NEW_TOKENS)).unwrap()));
                }
                println!("{model} on {kind}: largest logit difference {worst:.2e}");
                assert!(worst < 1e-3, "{model} on {kind}: {worst}");
                let want: Vec<Vec<u32>> =
                    cases(model).iter().map(|c| ids(&c["greedy_ids"])).collect();
                assert_eq!(run_batch(&generator, sequences), want, "{model} on {kind}");
            }
        }
    }

    /// Decode speed of tiny-llama on the CPU at batch 1 and 8 (no assertion on time):
    /// `cargo test -p ipfs-accelerate-node --lib decode_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn decode_throughput() {
        let generator = load("tiny-llama");
        for batch in [1usize, 8] {
            let mut sequences: Vec<Sequence> = (0..batch)
                .map(|i| {
                    let prompt: Vec<u32> = (0..8).map(|t| 10 + (i * 8 + t) as u32).collect();
                    generator.start(prompt, greedy(100)).unwrap()
                })
                .collect();
            // Prefill, then time the decode steps.
            generator
                .step(&mut sequences.iter_mut().collect::<Vec<_>>())
                .unwrap();
            let started = Instant::now();
            let mut tokens = 0;
            while sequences.iter().any(|s| !s.is_finished()) {
                let mut running: Vec<&mut Sequence> =
                    sequences.iter_mut().filter(|s| !s.is_finished()).collect();
                tokens += running.len();
                generator.step(&mut running).unwrap();
            }
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "tiny-llama, batch {batch}: {tokens} tokens in {seconds:.3} s, {:.0} tokens/s",
                tokens as f64 / seconds
            );
        }
    }
}
