//! What an image classifier's folder declares: the Vision Transformer in config.json
//! (`ViTForImageClassification`: sizes, patches, labels) and how its pixels are prepared
//! in preprocessor_config.json (`ViTImageProcessor`: resize, rescale, normalise). Both are
//! read strictly; a value the engine would not honour as transformers does is refused,
//! never approximated.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Activation, FolderError, Kind, Result, within_bounds};

/// Image classifiers this engine runs, as config.json names them.
pub const VISION_ARCHITECTURES: &[&str] = &["ViTForImageClassification"];

/// Image processors whose steps [`ImageProcessor`] reproduces.
pub const IMAGE_PROCESSORS: &[&str] = &["ViTImageProcessor", "ViTFeatureExtractor"];

/// Bounds on config.json's sizes, (field, least, most): above ViT-huge (1280 hidden, 32
/// layers, 5120 intermediate) and ImageNet-21k's 21 843 labels, and small enough that the
/// arithmetic on them cannot overflow.
const FIELD_BOUNDS: &[(&str, usize, usize)] = &[
    ("hidden_size", 1, 1 << 14),
    ("num_hidden_layers", 1, 1 << 8),
    ("num_attention_heads", 1, 1 << 8),
    ("intermediate_size", 1, 1 << 16),
    ("image_size", 1, MAX_IMAGE_SIDE),
    ("patch_size", 1, MAX_IMAGE_SIDE),
    ("labels", 1, 1 << 16),
];

/// Largest side of the square (or rectangle) a model takes, and of the size a processor
/// resizes to: 4096 is eight times ViT's usual 224-518.
pub const MAX_IMAGE_SIDE: usize = 4096;

/// Most patches an image may be cut into. Attention costs the square of this per head,
/// so it bounds the memory a config.json can make one image take (ViT-H/14 at 518 pixels
/// has 1369).
pub const MAX_PATCHES: usize = 4096;

/// A Vision Transformer image classifier's shape, numerics and labels, from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    /// `[height, width]` of the images the model takes.
    pub image_size: [usize; 2],
    /// `[height, width]` of a patch; each divides the image's side.
    pub patch_size: [usize; 2],
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// Whether query, key and value have biases.
    pub qkv_bias: bool,
    /// The name of each class, by id (config.json's `id2label`).
    pub labels: Vec<String>,
}

/// The steps that turn a decoded RGB image into the model's pixels, in order, as
/// `ViTImageProcessor.preprocess` runs them.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// Resize to exactly this size; `None` when `do_resize` is false (images must then
    /// already be the model's size).
    pub resize: Option<Resize>,
    /// `rescale_factor` when `do_rescale` is true: the 0-255 values are multiplied by it.
    pub rescale: Option<f64>,
    /// `(image_mean, image_std)` per channel when `do_normalize` is true, in float32 as
    /// transformers computes with them.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// A resize to `height` x `width` with a PIL filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    pub height: usize,
    pub width: usize,
    pub filter: Filter,
}

/// PIL's resampling filters that resize by convolution (`resample` in
/// preprocessor_config.json is PIL's number for one). NEAREST (0) is refused: PIL
/// resizes with it by another algorithm, which the engine does not reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// 1: Lanczos, a windowed sinc over 3 pixels.
    Lanczos,
    /// 2: a triangle over 1 pixel, antialiased when shrinking; ViT's default.
    Bilinear,
    /// 3: Keys' cubic with a = -0.5, over 2 pixels.
    Bicubic,
    /// 4: each output pixel the average of the input pixels it covers.
    Box,
    /// 5: a Hamming-windowed sinc over 1 pixel.
    Hamming,
}

impl Filter {
    fn from_pil(number: i64) -> Option<Self> {
        match number {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            4 => Some(Filter::Box),
            5 => Some(Filter::Hamming),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct RawConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    image_size: Side,
    patch_size: Side,
    #[serde(default = "default_num_channels")]
    num_channels: usize,
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default = "default_qkv_bias")]
    qkv_bias: bool,
    id2label: Option<BTreeMap<String, String>>,
    label2id: Option<BTreeMap<String, Value>>,
    num_labels: Option<usize>,
}

/// An image or patch side: one number for a square, or `[height, width]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Side {
    Square(usize),
    Sides([usize; 2]),
}

impl Side {
    fn sides(&self) -> [usize; 2] {
        match *self {
            Side::Square(side) => [side, side],
            Side::Sides(sides) => sides,
        }
    }
}

fn default_num_channels() -> usize {
    3
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_hidden_act() -> String {
    "gelu".to_owned()
}

fn default_qkv_bias() -> bool {
    true
}

fn invalid(reason: String) -> FolderError {
    FolderError::Invalid {
        file: "config.json",
        reason,
    }
}

impl VitConfig {
    /// Parses config.json; anything but a ViT image classifier is an error that names it.
    pub fn parse(json: &[u8]) -> Result<Self> {
        let kind: Kind = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        let named = kind
            .architectures
            .iter()
            .find(|a| !VISION_ARCHITECTURES.contains(&a.as_str()))
            .cloned()
            .or_else(|| match kind.model_type.as_deref() {
                Some("vit") => None,
                Some(other) => Some(other.to_owned()),
                None if kind.architectures.is_empty() => Some("(none given)".to_owned()),
                None => None,
            });
        if let Some(named) = named {
            return Err(invalid(format!(
                "architecture {named:?} is not an image classifier this engine runs ({})",
                VISION_ARCHITECTURES.join(", ")
            )));
        }
        let raw: RawConfig = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        let image_size = raw.image_size.sides();
        let patch_size = raw.patch_size.sides();
        for (field, value) in [
            ("hidden_size", raw.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("intermediate_size", raw.intermediate_size),
            ("image_size", image_size[0]),
            ("image_size", image_size[1]),
            ("patch_size", patch_size[0]),
            ("patch_size", patch_size[1]),
        ] {
            check_bounds(field, value)?;
        }
        if !raw.hidden_size.is_multiple_of(raw.num_attention_heads) {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        if (0..2).any(|i| !image_size[i].is_multiple_of(patch_size[i])) {
            return Err(invalid(format!(
                "patch_size {patch_size:?} does not divide image_size {image_size:?}"
            )));
        }
        let patches = (image_size[0] / patch_size[0]) * (image_size[1] / patch_size[1]);
        if patches > MAX_PATCHES {
            return Err(invalid(format!(
                "image_size {image_size:?} in patches of {patch_size:?} makes {patches} \
                 patches, more than the {MAX_PATCHES} this engine attends over"
            )));
        }
        if raw.num_channels != 3 {
            return Err(invalid(format!(
                "num_channels {} is not supported: images are decoded to RGB (3)",
                raw.num_channels
            )));
        }
        if !(raw.layer_norm_eps.is_finite() && raw.layer_norm_eps > 0.0) {
            return Err(invalid(format!(
                "layer_norm_eps {} must be a positive number",
                raw.layer_norm_eps
            )));
        }
        let activation = match raw.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            other => {
                return Err(invalid(format!(
                    "hidden_act {other:?} is not supported (gelu, gelu_new)"
                )));
            }
        };
        let labels = labels(raw.id2label, raw.label2id.as_ref(), raw.num_labels)?;
        Ok(Self {
            hidden_size: raw.hidden_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            image_size,
            patch_size,
            layer_norm_eps: raw.layer_norm_eps,
            activation,
            qkv_bias: raw.qkv_bias,
            labels,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// `[rows, columns]` of patches an image is cut into.
    pub fn grid(&self) -> [usize; 2] {
        [
            self.image_size[0] / self.patch_size[0],
            self.image_size[1] / self.patch_size[1],
        ]
    }

    /// Tokens the encoder sees per image: one per patch, and the class token.
    pub fn tokens(&self) -> usize {
        let [rows, columns] = self.grid();
        rows * columns + 1
    }

    /// Weights in the classifier, for its size in memory. Computed in checked `u64`
    /// arithmetic: a config [`VitConfig::parse`] accepted never overflows, and one built
    /// by hand saturates at `usize::MAX` rather than wrapping.
    pub fn parameter_count(&self) -> usize {
        self.checked_parameter_count()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX)
    }

    fn checked_parameter_count(&self) -> Option<u64> {
        let n = |v: usize| u64::try_from(v).ok();
        let (h, inter) = (n(self.hidden_size)?, n(self.intermediate_size)?);
        let patch = n(self.patch_size[0])?.checked_mul(n(self.patch_size[1])?)?;
        // The projection of a patch's 3 channels and its bias, the class token, and a
        // position embedding for every token.
        let embeddings = patch
            .checked_mul(3)?
            .checked_add(2)?
            .checked_add(n(self.tokens())?)?
            .checked_mul(h)?;
        let qkv_bias = if self.qkv_bias { 3 } else { 0 };
        let attention = h
            .checked_mul(h)?
            .checked_mul(4)?
            .checked_add(h * (1 + qkv_bias))?;
        let feed_forward = h
            .checked_mul(inter)?
            .checked_mul(2)?
            .checked_add(inter)?
            .checked_add(h)?;
        let layer = attention
            .checked_add(feed_forward)?
            .checked_add(h.checked_mul(4)?)?;
        let labels = n(self.labels.len())?;
        let head = h
            .checked_mul(2)?
            .checked_add(h.checked_add(1)?.checked_mul(labels)?)?;
        embeddings
            .checked_add(n(self.num_layers)?.checked_mul(layer)?)?
            .checked_add(head)
    }
}

/// The label names by id: `id2label`'s keys must be exactly `0..n`, `num_labels` (when
/// given) must be `n`, and `label2id` (when given) may only name ids in range.
fn labels(
    id2label: Option<BTreeMap<String, String>>,
    label2id: Option<&BTreeMap<String, Value>>,
    num_labels: Option<usize>,
) -> Result<Vec<String>> {
    let Some(id2label) = id2label else {
        return Err(invalid(
            "id2label is missing: a classifier needs its labels' names".to_owned(),
        ));
    };
    check_bounds("labels", id2label.len())?;
    let count = id2label.len();
    let mut labels = vec![None; count];
    for (key, name) in id2label {
        let id = key
            .parse::<usize>()
            .ok()
            .filter(|&id| id < count && key == id.to_string())
            .ok_or_else(|| {
                invalid(format!(
                    "id2label has the key {key:?}; its keys must be the ids 0 to {}",
                    count - 1
                ))
            })?;
        labels[id] = Some(name);
    }
    if let Some(num_labels) = num_labels
        && num_labels != count
    {
        return Err(invalid(format!(
            "num_labels {num_labels} but id2label names {count} labels"
        )));
    }
    for (name, id) in label2id.into_iter().flatten() {
        if id.as_u64().is_none_or(|id| id >= count as u64) {
            return Err(invalid(format!(
                "label2id gives {name:?} the id {id}, not one of the {count} labels"
            )));
        }
    }
    // Keys 0..count, each once (a BTreeMap has no duplicates): every slot is filled.
    Ok(labels.into_iter().flatten().collect())
}

/// Refuses a size outside [`FIELD_BOUNDS`], naming the field.
fn check_bounds(field: &str, value: usize) -> Result<()> {
    within_bounds(FIELD_BOUNDS, field, field, value).map(drop)
}

/// preprocessor_config.json as written by `ViTImageProcessor.save_pretrained` (or the older
/// `ViTFeatureExtractor`). Absent fields take the processor's defaults.
#[derive(Deserialize)]
struct RawProcessor {
    image_processor_type: Option<String>,
    feature_extractor_type: Option<String>,
    #[serde(default = "yes")]
    do_resize: bool,
    size: Option<Value>,
    #[serde(default = "default_resample")]
    resample: i64,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "default_rescale_factor")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    image_mean: Option<PerChannel>,
    image_std: Option<PerChannel>,
    /// Later processors' flag, typed so that a value other than a boolean is refused;
    /// images are always converted to RGB here (see [`ImageProcessor::parse`]).
    #[serde(default, rename = "do_convert_rgb")]
    _do_convert_rgb: Option<bool>,
    #[serde(default)]
    do_center_crop: Option<bool>,
}

/// A mean or standard deviation: one for every channel, or one each.
#[derive(Deserialize)]
#[serde(untagged)]
enum PerChannel {
    All(f64),
    Each(Vec<f64>),
}

fn yes() -> bool {
    true
}

fn default_resample() -> i64 {
    2
}

fn default_rescale_factor() -> f64 {
    1.0 / 255.0
}

/// ViTImageProcessor's default size, mean and standard deviation.
const DEFAULT_SIDE: usize = 224;
const DEFAULT_MEAN: f64 = 0.5;
const DEFAULT_STD: f64 = 0.5;

fn processor_invalid(reason: String) -> FolderError {
    FolderError::Invalid {
        file: "preprocessor_config.json",
        reason,
    }
}

impl ImageProcessor {
    /// Parses preprocessor_config.json. Images are always converted to RGB before these
    /// steps, as transformers' image pipeline does when it loads an image, whatever
    /// `do_convert_rgb` says.
    pub fn parse(json: &[u8]) -> Result<Self> {
        let raw: RawProcessor =
            serde_json::from_slice(json).map_err(|e| processor_invalid(e.to_string()))?;
        for kind in [&raw.image_processor_type, &raw.feature_extractor_type]
            .into_iter()
            .flatten()
        {
            if !IMAGE_PROCESSORS.contains(&kind.as_str()) {
                return Err(processor_invalid(format!(
                    "image processor {kind:?} is not supported ({})",
                    IMAGE_PROCESSORS.join(", ")
                )));
            }
        }
        if raw.do_center_crop == Some(true) {
            return Err(processor_invalid(
                "do_center_crop is not supported: ViTImageProcessor resizes without cropping"
                    .to_owned(),
            ));
        }
        let resize = if raw.do_resize {
            let [height, width] = size(raw.size.as_ref())?;
            let filter = Filter::from_pil(raw.resample).ok_or_else(|| {
                processor_invalid(format!(
                    "resample {} is not supported: use 1 (LANCZOS), 2 (BILINEAR), \
                     3 (BICUBIC), 4 (BOX) or 5 (HAMMING)",
                    raw.resample
                ))
            })?;
            Some(Resize {
                height,
                width,
                filter,
            })
        } else {
            None
        };
        let rescale = if raw.do_rescale {
            if !(raw.rescale_factor.is_finite() && raw.rescale_factor > 0.0) {
                return Err(processor_invalid(format!(
                    "rescale_factor {} must be a positive number",
                    raw.rescale_factor
                )));
            }
            Some(raw.rescale_factor)
        } else {
            None
        };
        let normalize = if raw.do_normalize {
            let mean = per_channel("image_mean", raw.image_mean, DEFAULT_MEAN, false)?;
            let std = per_channel("image_std", raw.image_std, DEFAULT_STD, true)?;
            Some((mean, std))
        } else {
            None
        };
        Ok(Self {
            resize,
            rescale,
            normalize,
        })
    }
}

/// The `size` a ViT processor resizes to: `{"height", "width"}`, or one number for a
/// square (the older feature extractors' form).
fn size(value: Option<&Value>) -> Result<[usize; 2]> {
    let side = |v: &Value, name: &str| {
        v.as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .filter(|v| (1..=MAX_IMAGE_SIDE).contains(v))
            .ok_or_else(|| {
                processor_invalid(format!(
                    "size's {name} {v} must be a whole number from 1 to {MAX_IMAGE_SIDE}"
                ))
            })
    };
    match value {
        None => Ok([DEFAULT_SIDE, DEFAULT_SIDE]),
        Some(Value::Object(map)) => match (map.get("height"), map.get("width")) {
            (Some(height), Some(width)) if map.len() == 2 => {
                Ok([side(height, "height")?, side(width, "width")?])
            }
            _ => Err(processor_invalid(format!(
                "size {} is not supported: ViTImageProcessor resizes to \
                 {{\"height\", \"width\"}} (shortest_edge and longest_edge are other \
                 processors' resizes, followed by a crop)",
                Value::Object(map.clone())
            ))),
        },
        Some(number @ Value::Number(_)) => {
            let side = side(number, "side")?;
            Ok([side, side])
        }
        Some(other) => Err(processor_invalid(format!(
            "size {other} is not supported: give {{\"height\", \"width\"}}"
        ))),
    }
}

/// Three finite values of `field` (one given for all channels, or three), in float32;
/// each nonzero and positive where `positive` (a standard deviation divides).
fn per_channel(
    field: &str,
    value: Option<PerChannel>,
    default: f64,
    positive: bool,
) -> Result<[f32; 3]> {
    let values = match value {
        None => vec![default; 3],
        Some(PerChannel::All(v)) => vec![v; 3],
        Some(PerChannel::Each(values)) => values,
    };
    let values: [f64; 3] = values.try_into().map_err(|values: Vec<f64>| {
        processor_invalid(format!(
            "{field} has {} values; images have 3 channels",
            values.len()
        ))
    })?;
    let mut out = [0f32; 3];
    for (slot, value) in out.iter_mut().zip(values) {
        let single = value as f32;
        let fine = single.is_finite() && (!positive || single > 0.0);
        if !fine {
            return Err(processor_invalid(format!(
                "{field} value {value} must be a finite number{}",
                if positive { " above 0" } else { "" }
            )));
        }
        *slot = single;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// google/vit-base-patch16-224's config.json, with three of its thousand labels.
    fn vit_base() -> Value {
        json!({
            "architectures": ["ViTForImageClassification"], "model_type": "vit",
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
            "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": true,
            "id2label": {"0": "tench, Tinca tinca", "1": "goldfish", "2": "great white shark"},
            "label2id": {"tench, Tinca tinca": 0, "goldfish": 1, "great white shark": 2}
        })
    }

    fn parse(config: &Value) -> Result<VitConfig> {
        VitConfig::parse(config.to_string().as_bytes())
    }

    fn with(field: &str, value: Value) -> Result<VitConfig> {
        let mut config = vit_base();
        config[field] = value;
        parse(&config)
    }

    #[test]
    fn reads_vit_config() {
        let config = parse(&vit_base()).unwrap();
        assert_eq!(config.image_size, [224, 224]);
        assert_eq!(config.grid(), [14, 14]);
        assert_eq!(config.tokens(), 197);
        assert_eq!(config.head_dim(), 64);
        assert_eq!(config.labels[2], "great white shark");
        // What transformers counts in `ViTForImageClassification(ViTConfig(num_labels=3))`.
        assert_eq!(config.parameter_count(), 85_800_963);

        let rectangular = with("image_size", json!([64, 96])).unwrap();
        assert_eq!(rectangular.grid(), [4, 6]);
        let no_bias = with("qkv_bias", json!(false)).unwrap();
        assert_eq!(
            config.parameter_count() - no_bias.parameter_count(),
            12 * 3 * 768
        );
    }

    #[test]
    fn hostile_configs_are_refused_naming_the_field() {
        for (field, value, says) in [
            ("image_size", json!(1_000_000), "image_size"),
            ("image_size", json!(0), "image_size"),
            ("image_size", json!([224]), "config.json"),
            ("image_size", json!(-224), "config.json"),
            ("patch_size", json!(0), "patch_size"),
            ("patch_size", json!(15), "does not divide"),
            ("patch_size", json!(1), "patches"),
            (
                "hidden_size",
                json!(18_446_744_073_709_551_615u64),
                "hidden_size",
            ),
            ("num_attention_heads", json!(7), "multiple"),
            ("num_hidden_layers", json!(100_000), "num_hidden_layers"),
            ("num_channels", json!(4), "num_channels"),
            ("layer_norm_eps", json!(0.0), "layer_norm_eps"),
            ("hidden_act", json!("swish"), "hidden_act"),
            ("architectures", json!(["ViTModel"]), "ViTModel"),
            ("architectures", json!(["BertModel"]), "BertModel"),
            ("model_type", json!("deit"), "deit"),
            ("id2label", json!({"0": "a", "2": "b"}), "id2label"),
            ("id2label", json!({"0": "a", "01": "b"}), "id2label"),
            ("id2label", json!({"0": "a", "-1": "b"}), "id2label"),
            ("id2label", json!({}), "labels"),
            ("id2label", Value::Null, "id2label"),
            ("label2id", json!({"goldfish": 3}), "label2id"),
            ("label2id", json!({"goldfish": -1}), "label2id"),
            ("num_labels", json!(1000), "num_labels"),
        ] {
            let err = with(field, value.clone()).unwrap_err().to_string();
            assert!(
                err.starts_with("config.json: ") && err.contains(says),
                "{field} = {value}: {err}"
            );
        }
        assert!(VitConfig::parse(b"{").is_err());
        assert!(VitConfig::parse(b"[]").is_err());

        // The largest config the bounds allow still counts without overflow.
        let mut largest = vit_base();
        for &(field, _, most) in FIELD_BOUNDS {
            largest[field] = most.into();
        }
        largest["num_attention_heads"] = 1.into();
        largest["patch_size"] = 64.into();
        let labels: BTreeMap<String, String> = (0..1 << 16)
            .map(|i| (i.to_string(), format!("l{i}")))
            .collect();
        largest["id2label"] = serde_json::to_value(labels).unwrap();
        largest["label2id"] = Value::Null;
        let largest = parse(&largest).unwrap();
        assert!(largest.parameter_count() < usize::MAX);
        let huge = VitConfig {
            hidden_size: usize::MAX,
            ..largest
        };
        assert_eq!(huge.parameter_count(), usize::MAX);
    }

    fn processor(json: Value) -> Result<ImageProcessor> {
        ImageProcessor::parse(json.to_string().as_bytes())
    }

    #[test]
    fn reads_vit_image_processor() {
        // transformers' ViTImageProcessor().save_pretrained, as google/vit-base-patch16-224.
        let saved = json!({
            "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "resample": 2,
            "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}
        });
        let parsed = processor(saved).unwrap();
        assert_eq!(
            parsed,
            ImageProcessor {
                resize: Some(Resize {
                    height: 224,
                    width: 224,
                    filter: Filter::Bilinear
                }),
                rescale: Some(1.0 / 255.0),
                normalize: Some(([0.5; 3], [0.5; 3])),
            }
        );
        // Every field absent: the processor's defaults.
        assert_eq!(processor(json!({})).unwrap(), parsed);
        // The older feature extractor's form, ImageNet statistics, other filters.
        let old = processor(json!({
            "feature_extractor_type": "ViTFeatureExtractor", "size": 384, "resample": 3,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "do_convert_rgb": null
        }))
        .unwrap();
        let resize = old.resize.unwrap();
        assert_eq!(
            (resize.height, resize.width, resize.filter),
            (384, 384, Filter::Bicubic)
        );
        assert_eq!(old.normalize.unwrap().1, [0.229f32, 0.224, 0.225]);
        let none = processor(json!({
            "do_resize": false, "do_rescale": false, "do_normalize": false,
            "do_convert_rgb": true, "image_mean": 0.5
        }))
        .unwrap();
        assert_eq!(
            (none.resize, none.rescale, none.normalize),
            (None, None, None)
        );
        let scalar = processor(json!({"image_mean": 0.25, "image_std": 2})).unwrap();
        assert_eq!(scalar.normalize, Some(([0.25; 3], [2.0; 3])));
    }

    #[test]
    fn hostile_processors_are_refused_naming_the_field() {
        for (json, says) in [
            (json!({"size": {"shortest_edge": 224}}), "shortest_edge"),
            (json!({"size": {"height": 224}}), "size"),
            (
                json!({"size": {"height": 224, "width": 224, "shortest_edge": 1}}),
                "size",
            ),
            (json!({"size": {"height": 0, "width": 224}}), "height"),
            (json!({"size": {"height": 224, "width": 100_000}}), "width"),
            (json!({"size": {"height": 2.5, "width": 224}}), "height"),
            (json!({"size": "224"}), "size"),
            (json!({"size": -3}), "size"),
            (json!({"resample": 0}), "resample"),
            (json!({"resample": 9}), "resample"),
            (json!({"rescale_factor": 0}), "rescale_factor"),
            (json!({"rescale_factor": -1.0}), "rescale_factor"),
            (json!({"image_mean": [0.5, 0.5]}), "image_mean"),
            (json!({"image_std": [0.5, 0.0, 0.5]}), "image_std"),
            (json!({"image_std": [0.5, 1e300, 0.5]}), "image_std"),
            (json!({"image_std": -1}), "image_std"),
            (
                json!({"do_center_crop": true, "crop_size": 224}),
                "do_center_crop",
            ),
            (
                json!({"image_processor_type": "CLIPImageProcessor"}),
                "CLIPImageProcessor",
            ),
            (json!({"do_resize": "yes"}), "preprocessor_config.json"),
            (json!({"do_convert_rgb": "yes"}), "preprocessor_config.json"),
        ] {
            let err = processor(json.clone()).unwrap_err().to_string();
            assert!(
                err.starts_with("preprocessor_config.json: ") && err.contains(says),
                "{json}: {err}"
            );
        }
        // Refused only when the step that uses them runs.
        assert!(processor(json!({"do_rescale": false, "rescale_factor": 0})).is_ok());
        assert!(processor(json!({"do_resize": false, "resample": 0})).is_ok());
        assert!(ImageProcessor::parse(b"\xff").is_err());
    }
}
