//! Whose fault a failed inference is, one sorting for both APIs' status codes (Kubo's
//! `/api/v0/accelerate/infer` and OpenAI's `/v1`): inputs the model refuses are the
//! caller's (400), a busy provider is a 503 to retry after [`BUSY_RETRY_AFTER_SECS`],
//! anything else is the node's or a provider's failure (500).
//!
//! [`Node::infer`](crate::Node::infer) reports failures as text (its error keeps no
//! [`ErrorCode`]), so the sorting reads the codes' wire names, which every refusal's
//! text carries as `code: message`.

use ipfs_accelerate_protocol::infer::ErrorCode;

/// Seconds a client is told to wait (`Retry-After`) before trying a busy model again:
/// about one batch's run time, after which a queue has room again.
pub(crate) const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// Whose fault a failed inference is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InferFault {
    /// The model refuses the inputs (`bad input`, `too large`); retrying will not help.
    Caller,
    /// A provider was busy (its queue full) and none refused the inputs: retry later.
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
        } else if says(ErrorCode::Busy) {
            InferFault::Busy
        } else {
            InferFault::Node
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
