//! Whose fault a failed inference is, one sorting for both APIs' status codes (Kubo's
//! `/api/v0/accelerate/infer` and OpenAI's `/v1`): inputs the model refuses are the
//! caller's (400), a busy provider is a 503 to retry after [`BUSY_RETRY_AFTER_SECS`],
//! providers resting after recent failures a 503 to retry when the first may be tried
//! again ([`retry_after_secs`]), anything else is the node's or a provider's failure
//! (500).
//!
//! [`Node::infer`](crate::Node::infer) reports failures as text (its error keeps no
//! [`ErrorCode`]), so the sorting reads the codes' wire names, which every refusal's
//! text carries as `code: message`.

use ipfs_accelerate_protocol::infer::ErrorCode;

use crate::infer::RETRY_HINT;

/// Seconds a client is told to wait (`Retry-After`) before trying a busy model again:
/// about one batch's run time, after which a queue has room again.
pub(crate) const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// Whose fault a failed inference is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InferFault {
    /// The model refuses the inputs (`bad input`, `too large`); retrying will not help.
    Caller,
    /// A provider was busy (its queue full), or every provider rests after failing
    /// lately, and none refused the inputs: retry later.
    Busy,
    /// The node or a provider failed.
    Node,
}

impl InferFault {
    /// Sorts a failed inference by its error's text.
    pub(crate) fn of(error: &str) -> InferFault {
        let says = |code: ErrorCode| error.contains(&format!("{code}: "));
        if says(ErrorCode::BadInput) || says(ErrorCode::TooLarge) {
            InferFault::Caller
        } else if says(ErrorCode::Busy) || resting_secs(error).is_some() {
            InferFault::Busy
        } else {
            InferFault::Node
        }
    }
}

/// Seconds a 503 tells its client to wait (`Retry-After`): until the first resting
/// provider may be tried again where the message says so, else a busy queue's
/// [`BUSY_RETRY_AFTER_SECS`].
pub(crate) fn retry_after_secs(message: &str) -> u64 {
    resting_secs(message).unwrap_or(BUSY_RETRY_AFTER_SECS)
}

/// The seconds in "…tried again in N s" of a call whose providers all rest.
fn resting_secs(error: &str) -> Option<u64> {
    let (_, after) = error.split_once(RETRY_HINT)?;
    let digits = after.split_once(" s").map_or(after, |(n, _)| n);
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::CallError;
    use std::time::Duration;

    #[test]
    fn providers_resting_after_failures_are_a_503_until_the_first_may_be_tried_again() {
        let resting = CallError::Unusable {
            providers: 2,
            retry_in: Some(Duration::from_millis(41_500)),
        }
        .to_string();
        assert_eq!(InferFault::of(&resting), InferFault::Busy, "{resting}");
        assert_eq!(retry_after_secs(&resting), 41);
        // Distrusted for good: retrying will not help.
        let distrusted = CallError::Unusable {
            providers: 1,
            retry_in: None,
        }
        .to_string();
        assert_eq!(
            InferFault::of(&distrusted),
            InferFault::Node,
            "{distrusted}"
        );
        assert_eq!(
            retry_after_secs("busy: the model's queue is full"),
            BUSY_RETRY_AFTER_SECS
        );
    }

    #[test]
    fn failures_are_sorted_by_whose_fault_they_are() {
        let cases = [
            (
                "inference for bafy: bad input: ids and attention_mask differ",
                InferFault::Caller,
            ),
            (
                "too large: 9000 rows is over the 256-row limit",
                InferFault::Caller,
            ),
            ("busy: the model's queue is full", InferFault::Busy),
            (
                "inference for bafy: every provider failed: 12D3KooA: busy: queue full; \
                 12D3KooB: busy: queue full",
                InferFault::Busy,
            ),
            ("inference for bafy: no provider answered", InferFault::Node),
            ("internal: the engine failed", InferFault::Node),
        ];
        for (text, fault) in cases {
            assert_eq!(InferFault::of(text), fault, "{text}");
        }
    }
}
