//! Token ids to text one token at a time, for streaming. A token can end in the middle
//! of a UTF-8 character (byte-level BPE splits characters into bytes); the text of such
//! a token is held until the character is complete, so no delta ever holds half a
//! character. Each token is decoded in a small window after the tokens before it (as
//! Hugging Face's text-generation-inference does), so tokenizers whose decoding depends
//! on what comes before (SentencePiece's leading spaces) stream as they decode whole;
//! the window starts on the last few prompt tokens, so the first generated word keeps
//! the space that separates it from the prompt.

use tokenizers::Tokenizer;

use super::{EngineError, Result};

/// Prompt tokens the first generated token is decoded after.
const CONTEXT_TOKENS: usize = 5;

/// What `char::REPLACEMENT_CHARACTER` at the end of a decode means: bytes of a character
/// still to come (or invalid ones, which the end of generation flushes).
const INCOMPLETE: char = char::REPLACEMENT_CHARACTER;

/// One sequence's incremental decoding state.
#[derive(Debug)]
pub(crate) struct Detokenizer {
    /// The window: tokens from `prefix_offset` on, earlier ones dropped.
    ids: Vec<u32>,
    /// Start of the tokens already emitted that the next decode is made after.
    prefix_offset: usize,
    /// End of the tokens already emitted.
    read_offset: usize,
}

impl Detokenizer {
    /// A detokenizer whose first token follows `context` (the prompt).
    pub(crate) fn new(tokenizer: &Tokenizer, context: &[u32]) -> Self {
        let tail = &context[context.len().saturating_sub(CONTEXT_TOKENS)..];
        // A tail that does not decode to whole characters would make a poor prefix:
        // start clean instead.
        let clean = decode(tokenizer, tail).is_ok_and(|text| !text.ends_with(INCOMPLETE));
        let ids = if clean { tail.to_vec() } else { Vec::new() };
        Self {
            read_offset: ids.len(),
            prefix_offset: 0,
            ids,
        }
    }

    /// The text `id` adds, possibly empty while a character is incomplete.
    pub(crate) fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = decode(tokenizer, &self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(tokenizer, &self.ids[self.prefix_offset..])?;
        if full.len() <= prefix.len() || full.ends_with(INCOMPLETE) {
            return Ok(String::new());
        }
        let delta = after_common_prefix(&full, &prefix).to_owned();
        // The next window starts on what was just emitted, and nothing before it is needed.
        self.ids.drain(..self.read_offset);
        self.prefix_offset = 0;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Whether every token pushed has had its text emitted.
    pub(crate) fn is_settled(&self) -> bool {
        self.read_offset == self.ids.len()
    }

    /// The text still held when no more tokens will come: an incomplete character is
    /// emitted as the replacement character, as a whole decode would show it.
    pub(crate) fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let prefix = decode(tokenizer, &self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(tokenizer, &self.ids[self.prefix_offset..])?;
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        Ok(after_common_prefix(&full, &prefix).to_owned())
    }
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer
        .decode(ids, true)
        .map_err(|e| EngineError::Tokenizer(format!("decoding tokens {ids:?}: {e}")))
}

/// `full` after the part it shares with `prefix`. Normally `full` extends `prefix`; if a
/// decoder rewrote the end of it, the text from where they differ (on a character
/// boundary) is what is new.
fn after_common_prefix<'a>(full: &'a str, prefix: &str) -> &'a str {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest;
    }
    let common = full
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(full.len().min(prefix.len()));
    let mut at = common.min(full.len());
    while !full.is_char_boundary(at) {
        at -= 1;
    }
    &full[at..]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn tokenizer(model: &str) -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(model)
            .join("tokenizer.json");
        Tokenizer::from_file(path).unwrap()
    }

    #[test]
    fn streams_multibyte_characters_whole() {
        let tokenizer = tokenizer("tiny-gpt2");
        let text = "Café 東京 😀 naïve Москва — ok";
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let mut detokenizer = Detokenizer::new(&tokenizer, &[]);
        let mut deltas = Vec::new();
        for &id in &ids {
            deltas.push(detokenizer.push(&tokenizer, id).unwrap());
        }
        deltas.push(detokenizer.flush(&tokenizer).unwrap());
        assert_eq!(deltas.concat(), text);
        assert!(deltas.iter().all(|d| !d.contains(INCOMPLETE)), "{deltas:?}");
        // The small vocabulary splits characters: some tokens emit nothing alone.
        let held = deltas[..ids.len()].iter().filter(|d| d.is_empty()).count();
        assert!(held >= 3, "only {held} tokens were held back: {deltas:?}");
        // Each token alone would have shown replacement characters.
        let alone: String = ids
            .iter()
            .map(|&id| tokenizer.decode(&[id], true).unwrap())
            .collect();
        assert!(alone.contains(INCOMPLETE));
    }

    #[test]
    fn invalid_bytes_stream_as_a_whole_decode_shows_them() {
        let tokenizer = tokenizer("tiny-gpt2");
        // Pieces of different characters, out of order: not valid UTF-8 anywhere.
        let bytes_of = |s: &str| tokenizer.encode(s, false).unwrap().get_ids().to_vec();
        let mut ids = bytes_of("東京");
        ids.reverse();
        ids.extend(bytes_of("ok"));
        ids.extend(bytes_of("é"));
        ids.truncate(ids.len() - 1); // ends inside a character
        let whole = tokenizer.decode(&ids, true).unwrap();
        let mut detokenizer = Detokenizer::new(&tokenizer, &[]);
        let mut streamed = String::new();
        for &id in &ids {
            streamed += &detokenizer.push(&tokenizer, id).unwrap();
        }
        streamed += &detokenizer.flush(&tokenizer).unwrap();
        assert_eq!(streamed, whole);
        assert!(whole.contains(INCOMPLETE));
    }

    #[test]
    fn the_first_token_follows_the_prompt() {
        let tokenizer = tokenizer("tiny-llama");
        let prompt = tokenizer
            .encode("The quick", true)
            .unwrap()
            .get_ids()
            .to_vec();
        let next = tokenizer
            .encode(" brown fox", false)
            .unwrap()
            .get_ids()
            .to_vec();
        let mut detokenizer = Detokenizer::new(&tokenizer, &prompt);
        let mut streamed = String::new();
        for &id in &next {
            streamed += &detokenizer.push(&tokenizer, id).unwrap();
        }
        streamed += &detokenizer.flush(&tokenizer).unwrap();
        assert_eq!(streamed, " brown fox");
        assert_eq!(after_common_prefix("abcé", "abd"), "cé");
        assert_eq!(after_common_prefix("ab", "abc"), "");
    }
}
