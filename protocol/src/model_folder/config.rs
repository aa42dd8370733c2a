//! What a model folder declares: the encoder's architecture (config.json: BERT, RoBERTa or
//! XLM-RoBERTa), and for sentence-transformers folders the pooling, normalisation and
//! maximum sequence length (modules.json, the pooling module's config.json,
//! sentence_bert_config.json).

use serde::Deserialize;

use super::{FolderError, Kind, Result, within_bounds};

/// Architectures this engine runs, as config.json names them. RoBERTa and XLM-RoBERTa are
/// BERT's encoder with other position ids (see [`PositionIds`]); the heads of the
/// `*For*` classes are not run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "BertModel",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "RobertaModel",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "XLMRobertaModel",
    "XLMRobertaForMaskedLM",
    "XLMRobertaForSequenceClassification",
];

/// Bounds on config.json's sizes, (field, least, most): generous for any BERT-family
/// encoder (BERT-large has 1024 hidden, 24 layers, 4096 intermediate; XLM-R 250 002
/// tokens), and small enough that the arithmetic on them cannot overflow.
const FIELD_BOUNDS: &[(&str, usize, usize)] = &[
    ("vocab_size", 1, 1 << 22),
    ("hidden_size", 1, 1 << 15),
    ("num_hidden_layers", 1, 1 << 10),
    ("num_attention_heads", 1, 1 << 10),
    ("intermediate_size", 1, 1 << 17),
    ("max_position_embeddings", 1, 1 << 20),
    ("type_vocab_size", 1, 1 << 10),
];

/// The encoder's shape and numerics, read from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub family: EncoderFamily,
    /// The padding token's id; RoBERTa's position ids are counted from it.
    pub pad_token_id: usize,
}

/// Which of the BERT-family encoders config.json describes. They share the encoder and
/// its checkpoint names (under a `bert.` or `roberta.` prefix in `*For*` checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderFamily {
    Bert,
    Roberta,
    XlmRoberta,
}

impl EncoderFamily {
    /// The `model_type` config.json gives it.
    pub fn model_type(self) -> &'static str {
        match self {
            EncoderFamily::Bert => "bert",
            EncoderFamily::Roberta => "roberta",
            EncoderFamily::XlmRoberta => "xlm-roberta",
        }
    }

    pub(super) fn from_model_type(model_type: &str) -> Option<Self> {
        [Self::Bert, Self::Roberta, Self::XlmRoberta]
            .into_iter()
            .find(|family| family.model_type() == model_type)
    }

    /// The family of one of [`SUPPORTED_ARCHITECTURES`].
    pub(super) fn from_architecture(architecture: &str) -> Option<Self> {
        if !SUPPORTED_ARCHITECTURES.contains(&architecture) {
            None
        } else if architecture.starts_with("XLMRoberta") {
            Some(Self::XlmRoberta)
        } else if architecture.starts_with("Roberta") {
            Some(Self::Roberta)
        } else {
            Some(Self::Bert)
        }
    }
}

/// How an encoder numbers the positions of a row's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionIds {
    /// BERT: 0, 1, 2, ... whatever the tokens are.
    FromZero,
    /// RoBERTa and XLM-RoBERTa (transformers' `create_position_ids_from_input_ids`): a
    /// token whose id is `pad_token_id` takes position `pad_token_id`; the others count
    /// on from it, `pad_token_id + 1` for the first, skipping the padding ones.
    AfterPadding { pad_token_id: usize },
}

/// The feed-forward activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU with erf (`gelu`).
    Gelu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Average of the non-padding tokens.
    Mean,
    /// The first token's vector ([CLS]).
    Cls,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// What sentence-transformers adds on top of the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    pub pooling: Pooling,
    /// L2-normalise each embedding (a `Normalize` module in modules.json).
    pub normalize: bool,
    /// Longest input in tokens, [CLS] and [SEP] included; longer inputs are truncated.
    pub max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    position_embedding_type: Option<String>,
    pad_token_id: Option<usize>,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_hidden_act() -> String {
    "gelu".to_owned()
}

impl BertConfig {
    /// Parses config.json; an architecture other than the BERT family's is an error that
    /// names it.
    pub fn parse(json: &[u8]) -> Result<Self> {
        let invalid = |e: serde_json::Error| FolderError::Invalid {
            file: "config.json",
            reason: e.to_string(),
        };
        let family = family(&serde_json::from_slice(json).map_err(invalid)?)?;
        let raw: RawConfig = serde_json::from_slice(json).map_err(invalid)?;
        if let Some(kind) = raw.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(FolderError::Invalid {
                file: "config.json",
                reason: format!(
                    "position_embedding_type {kind:?} is not supported (only \"absolute\")"
                ),
            });
        }
        let activation = match raw.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            other => {
                return Err(FolderError::Invalid {
                    file: "config.json",
                    reason: format!("hidden_act {other:?} is not supported (gelu, gelu_new)"),
                });
            }
        };
        for (field, value) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("intermediate_size", raw.intermediate_size),
            ("max_position_embeddings", raw.max_position_embeddings),
            ("type_vocab_size", raw.type_vocab_size),
        ] {
            check_bounds(field, value)?;
        }
        // BERT does not use the padding id; RoBERTa's default is transformers' (1).
        let pad_token_id = match (family, raw.pad_token_id) {
            (_, Some(id)) => id,
            (EncoderFamily::Bert, None) => 0,
            (_, None) => 1,
        };
        if pad_token_id >= raw.vocab_size {
            return Err(FolderError::Invalid {
                file: "config.json",
                reason: format!(
                    "pad_token_id {pad_token_id} is outside the vocabulary of {}",
                    raw.vocab_size
                ),
            });
        }
        if family != EncoderFamily::Bert && pad_token_id + 1 >= raw.max_position_embeddings {
            return Err(FolderError::Invalid {
                file: "config.json",
                reason: format!(
                    "max_position_embeddings {} leaves no position for a token: {} positions \
                     count from pad_token_id {pad_token_id} + 1",
                    raw.max_position_embeddings,
                    family.model_type()
                ),
            });
        }
        if !(raw.layer_norm_eps.is_finite() && raw.layer_norm_eps > 0.0) {
            return Err(FolderError::Invalid {
                file: "config.json",
                reason: format!(
                    "layer_norm_eps {} must be a positive number",
                    raw.layer_norm_eps
                ),
            });
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(FolderError::Invalid {
                file: "config.json",
                reason: format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    raw.hidden_size, raw.num_attention_heads
                ),
            });
        }
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            activation,
            family,
            pad_token_id,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    pub fn position_ids(&self) -> PositionIds {
        match self.family {
            EncoderFamily::Bert => PositionIds::FromZero,
            EncoderFamily::Roberta | EncoderFamily::XlmRoberta => PositionIds::AfterPadding {
                pad_token_id: self.pad_token_id,
            },
        }
    }

    /// The most tokens a row may have, special tokens included: as many as there are
    /// position embeddings after the first position a token can take.
    pub fn max_tokens(&self) -> usize {
        match self.position_ids() {
            PositionIds::FromZero => self.max_position_embeddings,
            PositionIds::AfterPadding { pad_token_id } => self
                .max_position_embeddings
                .saturating_sub(pad_token_id + 1),
        }
    }

    /// Weights in the encoder, for the model's size in memory. Computed in checked
    /// `u64` arithmetic: a config [`BertConfig::parse`] accepted never overflows, and
    /// one built by hand saturates at `usize::MAX` rather than wrapping.
    pub fn parameter_count(&self) -> usize {
        self.checked_parameter_count()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX)
    }

    fn checked_parameter_count(&self) -> Option<u64> {
        let n = |v: usize| u64::try_from(v).ok();
        let (h, inter) = (n(self.hidden_size)?, n(self.intermediate_size)?);
        let rows = n(self.vocab_size)?
            .checked_add(n(self.max_position_embeddings)?)?
            .checked_add(n(self.type_vocab_size)?)?;
        let embeddings = rows.checked_mul(h)?.checked_add(h.checked_mul(2)?)?;
        let attention = h
            .checked_mul(h)?
            .checked_add(h)?
            .checked_mul(4)?
            .checked_add(h.checked_mul(2)?)?;
        let feed_forward = h
            .checked_mul(inter)?
            .checked_mul(2)?
            .checked_add(inter)?
            .checked_add(h.checked_mul(3)?)?;
        let layer = attention.checked_add(feed_forward)?;
        embeddings.checked_add(n(self.num_layers)?.checked_mul(layer)?)
    }
}

/// The encoder family config.json describes: every architecture it names must be one this
/// engine runs, and they and `model_type` must agree on the family.
fn family(kind: &Kind) -> Result<EncoderFamily> {
    if let Some(other) = kind
        .architectures
        .iter()
        .find(|a| EncoderFamily::from_architecture(a).is_none())
    {
        return Err(FolderError::UnsupportedArchitecture(other.clone()));
    }
    let by_type = kind
        .model_type
        .as_deref()
        .and_then(EncoderFamily::from_model_type);
    let mut families = kind
        .architectures
        .iter()
        .filter_map(|a| EncoderFamily::from_architecture(a))
        .chain(by_type);
    let Some(family) = families.next() else {
        let named = kind
            .model_type
            .clone()
            .unwrap_or_else(|| "(none given)".to_owned());
        return Err(FolderError::UnsupportedArchitecture(named));
    };
    if let Some(other) = families.find(|f| *f != family) {
        return Err(FolderError::Invalid {
            file: "config.json",
            reason: format!(
                "architectures {:?} and model_type {:?} name different encoders ({} and {})",
                kind.architectures,
                kind.model_type.as_deref().unwrap_or("(none)"),
                family.model_type(),
                other.model_type()
            ),
        });
    }
    Ok(family)
}

/// Refuses a config.json size outside [`FIELD_BOUNDS`], naming the field.
fn check_bounds(field: &str, value: usize) -> Result<()> {
    within_bounds(FIELD_BOUNDS, field, field, value).map(drop)
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

const POOLING_MODULE: &str = "sentence_transformers.models.Pooling";
const NORMALIZE_MODULE: &str = "sentence_transformers.models.Normalize";

impl SentenceConfig {
    /// A plain Hugging Face encoder: mean pooling, no normalisation (what
    /// sentence-transformers builds around a model folder without modules.json).
    pub fn plain() -> Self {
        Self {
            pooling: Pooling::Mean,
            normalize: false,
            max_seq_length: None,
        }
    }

    /// The pooling module's folder named in modules.json, if any: plain names inside the
    /// model folder only, never `..` or a root, since it becomes a path that is read.
    pub fn pooling_dir(modules_json: &[u8]) -> Result<Option<String>> {
        let modules = parse_modules(modules_json)?;
        let Some(path) = modules
            .into_iter()
            .find(|m| m.kind == POOLING_MODULE)
            .map(|m| m.path)
        else {
            return Ok(None);
        };
        let plain = path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'));
        if !plain {
            return Err(FolderError::Invalid {
                file: "modules.json",
                reason: format!(
                    "the pooling module's path {path:?} is not a folder inside the model"
                ),
            });
        }
        Ok(Some(path))
    }

    /// Reads modules.json, the pooling module's config.json (when modules.json names one)
    /// and sentence_bert_config.json.
    pub fn parse(
        modules_json: &[u8],
        pooling_json: Option<&[u8]>,
        sentence_bert_json: Option<&[u8]>,
    ) -> Result<Self> {
        let modules = parse_modules(modules_json)?;
        for module in &modules {
            let known = module.kind == POOLING_MODULE
                || module.kind == NORMALIZE_MODULE
                || module.kind == "sentence_transformers.models.Transformer";
            if !known {
                return Err(FolderError::Invalid {
                    file: "modules.json",
                    reason: format!("module {:?} is not supported", module.kind),
                });
            }
        }
        let pooling = match (
            modules.iter().any(|m| m.kind == POOLING_MODULE),
            pooling_json,
        ) {
            (false, _) => Pooling::Mean,
            (true, None) => {
                return Err(FolderError::Invalid {
                    file: "modules.json",
                    reason: "names a pooling module whose config.json is missing".to_owned(),
                });
            }
            (true, Some(json)) => parse_pooling(json)?,
        };
        let max_seq_length = match sentence_bert_json {
            Some(json) => {
                let config: SentenceBertConfig =
                    serde_json::from_slice(json).map_err(|e| FolderError::Invalid {
                        file: "sentence_bert_config.json",
                        reason: e.to_string(),
                    })?;
                config.max_seq_length
            }
            None => None,
        };
        Ok(Self {
            pooling,
            normalize: modules.iter().any(|m| m.kind == NORMALIZE_MODULE),
            max_seq_length,
        })
    }
}

fn parse_modules(json: &[u8]) -> Result<Vec<ModuleEntry>> {
    serde_json::from_slice(json).map_err(|e| FolderError::Invalid {
        file: "modules.json",
        reason: e.to_string(),
    })
}

fn parse_pooling(json: &[u8]) -> Result<Pooling> {
    let config: PoolingConfig = serde_json::from_slice(json).map_err(|e| FolderError::Invalid {
        file: "pooling config.json",
        reason: e.to_string(),
    })?;
    let unsupported = [
        (config.pooling_mode_max_tokens, "max"),
        (config.pooling_mode_mean_sqrt_len_tokens, "mean_sqrt_len"),
        (config.pooling_mode_weightedmean_tokens, "weightedmean"),
        (config.pooling_mode_lasttoken, "lasttoken"),
    ];
    if let Some((_, name)) = unsupported.iter().find(|(on, _)| *on) {
        return Err(FolderError::Invalid {
            file: "pooling config.json",
            reason: format!("pooling mode {name} is not supported (mean, cls)"),
        });
    }
    match (
        config.pooling_mode_mean_tokens,
        config.pooling_mode_cls_token,
    ) {
        (true, false) => Ok(Pooling::Mean),
        (false, true) => Ok(Pooling::Cls),
        _ => Err(FolderError::Invalid {
            file: "pooling config.json",
            reason:
                "exactly one of pooling_mode_mean_tokens and pooling_mode_cls_token must be true"
                    .to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"architectures":["BertModel"],"hidden_size":384,"num_hidden_layers":6,
        "num_attention_heads":12,"intermediate_size":1536,"max_position_embeddings":512,
        "vocab_size":30522,"model_type":"bert","hidden_act":"gelu","layer_norm_eps":1e-12}"#;

    #[test]
    fn reads_bert_config() {
        let config = BertConfig::parse(MINILM.as_bytes()).unwrap();
        assert_eq!(config.hidden_size, 384);
        assert_eq!(config.head_dim(), 32);
        assert_eq!(config.activation, Activation::Gelu);
        // all-MiniLM-L6-v2: 22.7 M with the pooler, which embeddings do not use.
        assert_eq!(config.parameter_count(), 22_565_376);
    }

    #[test]
    fn hostile_sizes_are_errors_naming_the_field() {
        let with = |field: &str, value: &str| {
            let mut config: serde_json::Value = serde_json::from_str(MINILM).unwrap();
            // Spliced in as text: some values are no JSON number serde_json would build.
            config[field] = "@".into();
            let text = config.to_string().replace("\"@\"", value);
            BertConfig::parse(text.as_bytes())
        };
        for (field, value) in [
            ("vocab_size", "18446744073709551615"),
            ("hidden_size", "4294967296"),
            ("hidden_size", "0"),
            ("num_hidden_layers", "9223372036854775807"),
            ("num_attention_heads", "0"),
            ("intermediate_size", "18446744073709551615"),
            ("max_position_embeddings", "18446744073709551615"),
            ("type_vocab_size", "18446744073709551615"),
        ] {
            let err = with(field, value).unwrap_err().to_string();
            assert!(
                err.contains("config.json") && err.contains(field),
                "{field}: {err}"
            );
        }
        for value in ["-1", "1e400", "-1.5"] {
            let err = with("vocab_size", value).unwrap_err().to_string();
            assert!(err.contains("config.json"), "{value}: {err}");
        }
        let err = with("layer_norm_eps", "0").unwrap_err().to_string();
        assert!(err.contains("layer_norm_eps"), "{err}");

        // The largest config the bounds allow still counts without overflow.
        let mut config: serde_json::Value = serde_json::from_str(MINILM).unwrap();
        for &(field, _, most) in FIELD_BOUNDS {
            config[field] = most.into();
        }
        config["num_attention_heads"] = 1.into();
        let largest = BertConfig::parse(config.to_string().as_bytes()).unwrap();
        assert!(largest.parameter_count() < usize::MAX);
        // One built by hand past the bounds saturates instead of wrapping or panicking.
        let huge = BertConfig {
            vocab_size: usize::MAX,
            ..largest
        };
        assert_eq!(huge.parameter_count(), usize::MAX);
    }

    #[test]
    fn names_another_kind_of_model_before_its_missing_fields() {
        let vit = br#"{"architectures":["ViTForImageClassification"],"model_type":"vit",
            "hidden_size":768,"image_size":224,"patch_size":16}"#;
        let err = BertConfig::parse(vit).unwrap_err();
        assert!(
            matches!(&err, FolderError::UnsupportedArchitecture(name) if name == "ViTForImageClassification"),
            "{err}"
        );
    }

    #[test]
    fn names_unsupported_architecture() {
        let gpt2 = r#"{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2","hidden_size":768,
            "num_hidden_layers":12,"num_attention_heads":12,"intermediate_size":3072,
            "max_position_embeddings":1024,"vocab_size":50257}"#;
        let err = BertConfig::parse(gpt2.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
    }

    const XLM_R_BASE: &str = r#"{"architectures":["XLMRobertaForMaskedLM"],"hidden_size":768,
        "num_hidden_layers":12,"num_attention_heads":12,"intermediate_size":3072,
        "max_position_embeddings":514,"vocab_size":250002,"model_type":"xlm-roberta",
        "type_vocab_size":1,"pad_token_id":1,"layer_norm_eps":1e-05}"#;

    fn edited(json: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Result<BertConfig> {
        let mut config: serde_json::Value = serde_json::from_str(json).unwrap();
        edit(&mut config);
        BertConfig::parse(config.to_string().as_bytes())
    }

    #[test]
    fn reads_roberta_family_configs() {
        let bert = BertConfig::parse(MINILM.as_bytes()).unwrap();
        assert_eq!(bert.family, EncoderFamily::Bert);
        assert_eq!(bert.position_ids(), PositionIds::FromZero);
        assert_eq!(bert.max_tokens(), 512);

        let xlmr = BertConfig::parse(XLM_R_BASE.as_bytes()).unwrap();
        assert_eq!(xlmr.family, EncoderFamily::XlmRoberta);
        assert_eq!(
            xlmr.position_ids(),
            PositionIds::AfterPadding { pad_token_id: 1 }
        );
        // Positions 2..=513 of 514: 512 tokens, as XLM-R's tokenizer allows.
        assert_eq!(xlmr.max_tokens(), 512);
        // XLM-R base: 278 M parameters without the pooler and the LM head.
        assert_eq!(xlmr.parameter_count(), 277_453_056);

        // roberta-base, as sentence-transformers saves it: no architectures, and
        // RobertaModel's default padding id.
        let roberta = edited(XLM_R_BASE, |c| {
            c["model_type"] = "roberta".into();
            c["vocab_size"] = 50265.into();
            c.as_object_mut().unwrap().remove("architectures");
            c.as_object_mut().unwrap().remove("pad_token_id");
        })
        .unwrap();
        assert_eq!(roberta.family, EncoderFamily::Roberta);
        assert_eq!(roberta.pad_token_id, 1);
        let by_name = edited(XLM_R_BASE, |c| {
            c["architectures"] = serde_json::json!(["RobertaModel"]);
            c.as_object_mut().unwrap().remove("model_type");
        })
        .unwrap();
        assert_eq!(by_name.family, EncoderFamily::Roberta);
    }

    #[test]
    fn roberta_configs_that_contradict_themselves_are_refused() {
        let err = edited(XLM_R_BASE, |c| c["model_type"] = "bert".into()).unwrap_err();
        assert!(err.to_string().contains("different encoders"), "{err}");
        let err = edited(XLM_R_BASE, |c| c["pad_token_id"] = 250002.into()).unwrap_err();
        assert!(err.to_string().contains("pad_token_id"), "{err}");
        // No position left for a token after the padding's.
        let err = edited(XLM_R_BASE, |c| c["max_position_embeddings"] = 2.into()).unwrap_err();
        assert!(err.to_string().contains("max_position_embeddings"), "{err}");
        let err = edited(XLM_R_BASE, |c| c["pad_token_id"] = (-1).into()).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        let err = edited(XLM_R_BASE, |c| {
            c["architectures"] = serde_json::json!(["XLMRobertaForTokenClassification"]);
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("XLMRobertaForTokenClassification"),
            "{err}"
        );
        let err = edited(XLM_R_BASE, |c| {
            c.as_object_mut().unwrap().remove("architectures");
            c["model_type"] = "camembert".into();
        })
        .unwrap_err();
        assert!(err.to_string().contains("camembert"), "{err}");
    }

    #[test]
    fn reads_sentence_modules() {
        let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#;
        assert_eq!(
            SentenceConfig::pooling_dir(modules.as_bytes())
                .unwrap()
                .as_deref(),
            Some("1_Pooling")
        );
        let cls = r#"{"word_embedding_dimension":384,"pooling_mode_cls_token":true}"#;
        let config = SentenceConfig::parse(
            modules.as_bytes(),
            Some(cls.as_bytes()),
            Some(br#"{"max_seq_length":256,"do_lower_case":false}"#),
        )
        .unwrap();
        assert_eq!(config.pooling, Pooling::Cls);
        assert!(config.normalize);
        assert_eq!(config.max_seq_length, Some(256));

        for escape in ["../1_Pooling", "/etc", "a//b", "", "a\\\\..\\\\b"] {
            let modules =
                format!(r#"[{{"path":"{escape}","type":"sentence_transformers.models.Pooling"}}]"#);
            let err = SentenceConfig::pooling_dir(modules.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("modules.json"), "{escape}: {err}");
        }

        let max = r#"{"pooling_mode_max_tokens":true}"#;
        let err =
            SentenceConfig::parse(modules.as_bytes(), Some(max.as_bytes()), None).unwrap_err();
        assert!(err.to_string().contains("max"), "{err}");
    }
}
