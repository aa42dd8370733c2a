//! What a Hugging Face model folder declares, read strictly from its files' bytes: the
//! architecture and sizes in config.json, sentence-transformers' pooling files, and the
//! tensors model.safetensors says it holds. The engine builds a model only from what these
//! accept; every refusal names the file and the field.

use serde::Deserialize;

pub mod config;
pub mod decoder;
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
