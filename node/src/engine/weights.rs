//! Loading a safetensors file into a model, strictly: every parameter must come from the
//! file with the right shape, and every tensor in the file must either be used or be one
//! the model knowingly ignores. burn-store on its own would leave a missing weight at its
//! random initial value, which gives plausible-looking wrong outputs.

use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use super::{EngineError, Result};

/// How a family of Hugging Face checkpoints names its tensors, against the burn modules
/// that hold them.
#[derive(Debug)]
pub(super) struct Checkpoint {
    /// `(pattern, replacement)` regular expressions applied to every tensor name in turn.
    remap: &'static [(&'static str, &'static str)],
    /// Prefixes (after remapping) of tensors the model does not use.
    ignored: &'static [&'static str],
}

/// BERT, RoBERTa and XLM-RoBERTa encoders: the position-id buffer, the pooler (sentence
/// embeddings pool themselves) and the heads of pre-training, masked-LM and classification
/// checkpoints are ignored.
pub(super) const BERT_ENCODER: Checkpoint = Checkpoint {
    remap: &[
        // Checkpoints saved from `BertFor*` / `(XLM)RobertaFor*` classes prefix the encoder.
        (r"^(bert|roberta)\.", ""),
        (r"\.LayerNorm\.", ".layer_norm."),
        (r"\.attention\.self\.", ".attention.self_attention."),
    ],
    ignored: &[
        "embeddings.position_ids",
        "embeddings.token_type_ids",
        "pooler.",
        "cls.",
        "lm_head.",
        "classifier.",
    ],
};

/// `ViTForImageClassification`, whose names the ViT modules follow as they are: every
/// tensor is used.
pub(super) const VIT_CLASSIFIER: Checkpoint = Checkpoint {
    remap: &[],
    ignored: &[],
};

/// Fills `model`'s parameters from a safetensors file held in memory.
pub(super) fn load<M: ModuleSnapshot>(
    model: &mut M,
    safetensors: Vec<u8>,
    checkpoint: &Checkpoint,
) -> Result<()> {
    let mut store = SafetensorsStore::from_bytes(Some(safetensors));
    for (pattern, replacement) in checkpoint.remap {
        store = store.with_key_remapping(pattern, *replacement);
    }
    let mut store = store
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
        if !checkpoint
            .ignored
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            problems.push(format!("not used by the model: {path}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort();
        Err(EngineError::Weights(problems.join("; ")))
    }
}
