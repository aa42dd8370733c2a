//! Loading a safetensors file into the encoder, strictly: every parameter must come from
//! the file with the right shape, and every tensor in the file must either be used or be
//! one the encoder knowingly ignores. burn-store on its own would leave a missing
//! weight at its random initial value, which gives plausible-looking wrong embeddings.

use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use super::bert::BertWeights;
use super::{EngineError, Result};

/// Tensors a BERT checkpoint may carry that an embedding encoder does not use: the
/// position-id buffer, the pooler (sentence embeddings pool themselves) and the heads of
/// pre-training and classification checkpoints.
const IGNORED_PREFIXES: &[&str] = &["embeddings.position_ids", "pooler.", "cls.", "classifier."];

/// Fills `model`'s parameters from a safetensors file held in memory.
pub(super) fn load(model: &mut BertWeights, safetensors: Vec<u8>) -> Result<()> {
    let mut store = SafetensorsStore::from_bytes(Some(safetensors))
        // Checkpoints saved from `BertFor*` classes prefix the encoder with `bert.`.
        .with_key_remapping(r"^bert\.", "")
        .with_key_remapping(r"\.LayerNorm\.", ".layer_norm.")
        .with_key_remapping(r"\.attention\.self\.", ".attention.self_attention.")
        // Linear weights are [out, in] in PyTorch; LayerNorm's weight/bias are gamma/beta.
        .with_from_adapter(PyTorchToBurnAdapter)
        .validate(true)
        .allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| EngineError::Weights(e.to_string()))?;

    let mut problems = Vec::new();
    for error in &result.errors {
        problems.push(error.to_string());
    }
    for (path, _) in &result.missing {
        problems.push(format!("missing: {path}"));
    }
    for path in &result.unused {
        if !IGNORED_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            problems.push(format!("not used by the encoder: {path}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort();
        Err(EngineError::Weights(problems.join("; ")))
    }
}
