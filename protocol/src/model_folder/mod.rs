//! What a Hugging Face model folder declares, read strictly from its files' bytes: the
//! architecture and sizes in config.json, sentence-transformers' pooling files, and the
//! tensors model.safetensors says it holds; and GGUF files, read and planned as such a
//! folder (gguf/). The engine builds a model only from what these accept; every refusal
//! names the file and the field.

use serde::Deserialize;

pub mod config;
pub mod decoder;
pub mod gguf;
pub mod safetensors;
pub mod vision;

pub use config::{
    Activation, BertConfig, EncoderFamily, Pooling, PositionIds, SUPPORTED_ARCHITECTURES,
    SentenceConfig,
};
pub use decoder::{DECODER_ARCHITECTURES, DecoderConfig, GenerationConfig, TokenizerConfig};
pub use vision::{Filter, ImageProcessor, Resize, VISION_ARCHITECTURES, VitConfig};

/// A model folder's file that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// A file could not be read or asks for something unsupported.
    #[error("{file}: {reason}")]
    Invalid { file: &'static str, reason: String },
    /// config.json names an architecture the engine does not run for this task (each
    /// loader accepts its own kind; the message lists them all).
    #[error(
        "model architecture {0:?} cannot be used here: this engine embeds text with \
         {encoders}, generates text with {decoders} and classifies images with {vision}",
        encoders = SUPPORTED_ARCHITECTURES.join(", "),
        decoders = DECODER_ARCHITECTURES.join(", "),
        vision = VISION_ARCHITECTURES.join(", ")
    )]
    UnsupportedArchitecture(String),
}

/// Result alias for this module.
pub type Result<T, E = FolderError> = std::result::Result<T, E>;

/// What a model folder is for: the task its config.json's architecture serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// A text encoder: sentence embeddings.
    Embed,
    /// A decoder language model: text generation.
    Generate,
    /// An image classifier.
    Classify,
}

impl ModelKind {
    /// The task's name, as manifests and `model ls --task` write it.
    pub fn task(self) -> &'static str {
        match self {
            ModelKind::Embed => "embed",
            ModelKind::Generate => "generate",
            ModelKind::Classify => "classify",
        }
    }
}

/// Which kind of model config.json describes, from its first architecture, or its
/// `model_type` when it names none. Only the kind is read here; the kind's own parser
/// checks the rest.
pub fn model_kind(config_json: &[u8]) -> Result<ModelKind> {
    let kind: Kind = serde_json::from_slice(config_json).map_err(|e| FolderError::Invalid {
        file: "config.json",
        reason: e.to_string(),
    })?;
    let by_architecture = |name: &str| {
        if VISION_ARCHITECTURES.contains(&name) {
            Some(ModelKind::Classify)
        } else if decoder::DecoderArchitecture::from_name(name).is_some() {
            Some(ModelKind::Generate)
        } else if EncoderFamily::from_architecture(name).is_some() {
            Some(ModelKind::Embed)
        } else {
            None
        }
    };
    let by_model_type = |name: &str| {
        if name == "vit" {
            Some(ModelKind::Classify)
        } else if decoder::DecoderArchitecture::from_model_type(name).is_some() {
            Some(ModelKind::Generate)
        } else if EncoderFamily::from_model_type(name).is_some() {
            Some(ModelKind::Embed)
        } else {
            None
        }
    };
    let (found, named) = match (kind.architectures.first(), kind.model_type.as_deref()) {
        (Some(name), _) => (by_architecture(name), name.clone()),
        (None, Some(model_type)) => (by_model_type(model_type), model_type.to_owned()),
        (None, None) => (None, "(none given)".to_owned()),
    };
    found.ok_or(FolderError::UnsupportedArchitecture(named))
}

/// What config.json says the model is, read before its sizes so that another kind of
/// model is refused by name rather than for a field it lacks.
#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
}

/// `value` of config.json's `field`, refused (naming the field) when outside the
/// `(name, least, most)` entry of `bounds` named `bound`; a name with no entry is
/// unbounded.
fn within_bounds(
    bounds: &[(&str, usize, usize)],
    bound: &str,
    field: &str,
    value: usize,
) -> Result<usize> {
    match bounds.iter().find(|(name, ..)| *name == bound) {
        Some(&(_, least, most)) if !(least..=most).contains(&value) => Err(FolderError::Invalid {
            file: "config.json",
            reason: format!("{field} {value} is out of range (between {least} and {most})"),
        }),
        _ => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_sorted_by_its_architecture_or_model_type() {
        let kind = |json: &str| model_kind(json.as_bytes());
        for (json, expected) in [
            (r#"{"architectures": ["BertModel"]}"#, ModelKind::Embed),
            (
                r#"{"architectures": ["XLMRobertaModel"]}"#,
                ModelKind::Embed,
            ),
            (
                r#"{"architectures": ["GPT2LMHeadModel"]}"#,
                ModelKind::Generate,
            ),
            (
                r#"{"architectures": ["Qwen2ForCausalLM"]}"#,
                ModelKind::Generate,
            ),
            (
                r#"{"architectures": ["ViTForImageClassification"]}"#,
                ModelKind::Classify,
            ),
            (r#"{"model_type": "llama"}"#, ModelKind::Generate),
            (r#"{"model_type": "bert"}"#, ModelKind::Embed),
            (r#"{"model_type": "vit"}"#, ModelKind::Classify),
        ] {
            assert_eq!(kind(json).unwrap(), expected, "{json}");
        }
        for json in [
            r#"{"architectures": ["T5ForConditionalGeneration"]}"#,
            r#"{"model_type": "whisper"}"#,
            "{}",
        ] {
            let error = kind(json).unwrap_err().to_string();
            assert!(error.contains("cannot be used here"), "{json}: {error}");
        }
        assert!(kind("[1, 2").is_err());
    }
}
