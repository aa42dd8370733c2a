//! When a sequence stops, and what text it may emit before then: an end-of-sequence
//! token, the token budget, or a stop sequence in the text. Stop sequences are found in
//! text, not tokens, so they match across token boundaries; text that could be the
//! start of one is held back until the next tokens show whether it is.

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// A stop sequence appeared in the text (which ends just before it).
    Stop,
    /// The token budget (`max_tokens`, or the model's context) ran out.
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
}

impl FinishReason {
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
        }
    }
}

/// Whether `token`, the `generated`-th new token, ends the sequence by itself.
pub(crate) fn token_finish(
    token: u32,
    eos_ids: &[u32],
    generated: usize,
    max_new: usize,
) -> Option<FinishReason> {
    if eos_ids.contains(&token) {
        Some(FinishReason::Eos)
    } else if generated >= max_new {
        Some(FinishReason::Length)
    } else {
        None
    }
}

/// A sequence's stop sequences and the text held back while it may be starting one.
#[derive(Debug)]
pub(crate) struct StopSequences {
    stops: Vec<String>,
    held: String,
}

impl StopSequences {
    /// Stop sequences must not be empty (the caller validates them).
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Whether no text is held back.
    pub(crate) fn is_settled(&self) -> bool {
        self.held.is_empty()
    }

    /// Takes in newly decoded text. Returns the text that is safe to emit now, and
    /// whether a stop sequence was found, in which case the returned text ends just
    /// before it and nothing more may follow.
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (text.to_owned(), false);
        }
        self.held.push_str(text);
        let found = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = found {
            let mut out = std::mem::take(&mut self.held);
            out.truncate(at);
            return (out, true);
        }
        let keep = self.partial_match_len();
        let emit_to = self.held.len() - keep;
        let rest = self.held.split_off(emit_to);
        (std::mem::replace(&mut self.held, rest), false)
    }

    /// The held text, once nothing more will follow it.
    pub(crate) fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest end of the held text that is the start of a stop sequence.
    fn partial_match_len(&self) -> usize {
        self.stops
            .iter()
            .filter_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&len| stop.is_char_boundary(len))
                    .find(|&len| self.held.ends_with(&stop[..len]))
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one by one; returns what was emitted piece by piece and whether a
    /// stop was found.
    fn feed(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut s = StopSequences::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for piece in pieces {
            let (text, stopped) = s.push(piece);
            out.push(text);
            if stopped {
                return (out, true);
            }
        }
        out.push(s.flush());
        (out, false)
    }

    #[test]
    fn stop_sequences_match_across_pieces_and_cut_the_text() {
        // "\n\nUser:" split over three tokens.
        let (out, stopped) = feed(
            &["\n\nUser:"],
            &["Hello", " world\n", "\nUs", "er:", " more"],
        );
        assert!(stopped);
        assert_eq!(out.concat(), "Hello world");
        // The newline is held back until it is clear it does not start the stop.
        assert_eq!(out, vec!["Hello", " world", "", ""]);

        // A held start that turns out not to be a stop is released whole.
        let (out, stopped) = feed(&["\n\nUser:"], &["a\n", "\nUx", "yz"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a", "\n\nUx", "yz", ""]);

        // The earliest of several stops wins; a stop inside one piece cuts it.
        let (out, stopped) = feed(&["END", "ND!"], &["abcEND!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "abc");

        // Held text at the end of generation is flushed.
        let (out, stopped) = feed(&["###"], &["x#", "#"]);
        assert!(!stopped);
        assert_eq!(out, vec!["x", "", "##"]);

        // No stops: text passes straight through.
        let (out, stopped) = feed(&[], &["a", "b"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a", "b", ""]);
    }

    #[test]
    fn partial_matches_respect_character_boundaries() {
        // The stop starts with a two-byte character; text ending in another character
        // that shares no prefix must not be split.
        let (out, stopped) = feed(&["éz"], &["café", "!"]);
        assert!(!stopped);
        assert_eq!(out, vec!["caf", "é!", ""]);
        let (out, stopped) = feed(&["東京"], &["in 東", "京 now"]);
        assert!(stopped);
        assert_eq!(out, vec!["in ", ""]);
    }

    #[test]
    fn eos_and_length() {
        assert_eq!(token_finish(2, &[2, 7], 1, 10), Some(FinishReason::Eos));
        assert_eq!(token_finish(7, &[2, 7], 10, 10), Some(FinishReason::Eos));
        assert_eq!(token_finish(5, &[2, 7], 10, 10), Some(FinishReason::Length));
        assert_eq!(token_finish(5, &[2, 7], 9, 10), None);
        assert_eq!(token_finish(5, &[], 1, 1), Some(FinishReason::Length));
    }
}
