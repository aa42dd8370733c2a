//! Text to token ids with the model's own tokenizer.json, truncated at the model's maximum
//! sequence length. Padding is left to the batch (see `Embedder::token_batch`), so a batch
//! is only as long as its longest text. Texts for a sentence-transformers model are first
//! stripped of surrounding whitespace, as sentence-transformers does before tokenizing.

use tokenizers::{Tokenizer, TruncationParams};

use super::{EngineError, Result, TokenInput};

#[derive(Debug)]
pub(crate) struct TextTokenizer {
    inner: Tokenizer,
    /// Strip each text's surrounding whitespace first: sentence-transformers'
    /// `Transformer.tokenize` does, and a SentencePiece-style tokenizer turns that
    /// whitespace into tokens of its own.
    strip: bool,
}

impl TextTokenizer {
    pub(crate) fn new(tokenizer_json: &[u8], max_seq_length: usize, strip: bool) -> Result<Self> {
        let mut inner = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| EngineError::Tokenizer(format!("reading tokenizer.json: {e}")))?;
        // tokenizer.json often carries its own padding (to a fixed 128) and truncation;
        // the model's limit governs instead, and padding is done per batch.
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(Self { inner, strip })
    }

    pub(crate) fn encode(&self, texts: &[&str]) -> Result<TokenInput> {
        let inputs: Vec<&str> = match self.strip {
            true => texts.iter().map(|t| t.trim()).collect(),
            false => texts.to_vec(),
        };
        let encodings = self
            .inner
            .encode_batch_fast(inputs, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut input = TokenInput {
            ids: Vec::with_capacity(texts.len()),
            mask: Vec::with_capacity(texts.len()),
        };
        for encoding in encodings {
            input.ids.push(encoding.get_ids().to_vec());
            input.mask.push(encoding.get_attention_mask().to_vec());
        }
        Ok(input)
    }
}
