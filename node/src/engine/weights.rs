//! Loading a safetensors file into a model, strictly: every parameter must come from the
//! file with the right shape, and every tensor in the file must either be used or be one
//! the model knowingly ignores. burn-store on its own would leave a missing weight at its
//! random initial value, which gives plausible-looking wrong outputs. burn-store would
//! keep a half checkpoint's dtype (F16, BF16, which ndarray cannot even hold), so every
//! float is widened to f32 as it is read: a model then runs in the precision it is asked
//! for, whatever its file stores.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType, bf16, f16};
use burn_store::{
    FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use safetensors::{Dtype, SafeTensors};

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

/// Fills `model`'s parameters from a safetensors file held in memory, as f32.
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
        .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32)))
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

/// Refuses a checkpoint with a float f16 cannot hold (beyond ±65504: it would become
/// infinite), naming the tensor, for a model about to run at f16.
pub(super) fn check_half_range(safetensors: &[u8]) -> Result<()> {
    let file = SafeTensors::deserialize(safetensors)
        .map_err(|e| EngineError::Weights(format!("model.safetensors cannot be read: {e}")))?;
    let limit = f16::MAX.to_f32();
    let mut names = file.names();
    names.sort();
    for name in names {
        let Ok(view) = file.tensor(name) else {
            continue;
        };
        let data = view.data();
        let too_large = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .find(|v| v.abs() > limit),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .find(|v| v.abs() > limit),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()) as f32)
                .find(|v| v.abs() > limit),
            _ => None,
        };
        if let Some(value) = too_large {
            return Err(EngineError::Weights(format!(
                "{name} holds {value}, beyond f16's range (±{limit}): run this model at f32"
            )));
        }
    }
    Ok(())
}

/// `module` with every float parameter cast to `dtype` (on its device: burn reads the
/// f32 values loaded and writes them rounded).
pub(super) fn cast<M: Module>(module: M, dtype: FloatDType) -> M {
    struct Cast(FloatDType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|tensor| tensor.cast(self.0))
        }
    }
    module.map(&mut Cast(dtype))
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::TensorView;

    use super::*;

    /// A safetensors file of `(name, dtype, little-endian bytes)`, each one-dimensional.
    fn file(tensors: &[(&str, Dtype, Vec<u8>)]) -> Vec<u8> {
        let views = tensors.iter().map(|(name, dtype, data)| {
            let len = data.len() * 8 / dtype.bitsize();
            (*name, TensorView::new(*dtype, vec![len], data).unwrap())
        });
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn floats_beyond_half_range_are_refused_by_tensor_name() {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>();
        let bf16s = |v: &[f32]| {
            v.iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect::<Vec<_>>()
        };
        let ints = (1i64 << 40).to_le_bytes().to_vec();
        let fine = file(&[
            ("a", Dtype::F32, f32s(&[1.0, -65504.0])),
            ("b", Dtype::F16, f16::MAX.to_le_bytes().to_vec()),
            ("c", Dtype::I64, ints),
        ]);
        check_half_range(&fine).unwrap();
        for (dtype, data) in [
            (Dtype::F32, f32s(&[0.5, -70000.0])),
            (Dtype::BF16, bf16s(&[0.5, 1e6])),
        ] {
            let bad = file(&[("fine", Dtype::F32, f32s(&[1.0])), ("big", dtype, data)]);
            let err = check_half_range(&bad).unwrap_err().to_string();
            assert!(
                err.contains("big holds") && err.contains("run this model at f32"),
                "{err}"
            );
        }
    }
}
