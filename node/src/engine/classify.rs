//! Image classification: a [`Classifier`] loaded from a ViT model folder takes encoded
//! images (JPEG, PNG) or pixels already prepared, and gives each image its most likely
//! labels with their softmax probabilities, as transformers' image-classification
//! pipeline does.

use std::time::{Duration, Instant};

use burn::prelude::*;

use super::image::{self, PixelBatch};
use super::vit::{self, Vit, VitWeights};
use super::{
    DeviceKind, EngineError, ModelFiles, Placement, Precision, Result, check_weights_file, weights,
};
use ipfs_accelerate_protocol::model_folder::{FolderError, ImageProcessor, VitConfig};

/// One label of an image's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// The class's index in the model's output (config.json's `id2label` key).
    pub id: usize,
    pub label: String,
    /// Softmax probability, 0 to 1.
    pub score: f32,
}

/// The raw scores of a batch: `rows` images of `labels` logits each, row after row.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub rows: usize,
    pub labels: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.labels..(i + 1) * self.labels]
    }
}

/// Where the time of one call went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Decoding, resizing and normalising the images.
    pub preprocess: Duration,
    pub compute: Duration,
}

/// A loaded image classifier on one device.
#[derive(Debug)]
pub struct Classifier {
    config: VitConfig,
    processor: ImageProcessor,
    model: Vit,
    device: Device,
    kind: DeviceKind,
    precision: Precision,
}

impl Classifier {
    /// Builds the classifier that `files` describe and loads its weights onto
    /// `placement`. The folder must have a preprocessor_config.json: without it the
    /// pixels the model was trained on are unknown.
    pub fn load(files: ModelFiles, placement: impl Into<Placement>) -> Result<Self> {
        let placement = placement.into();
        let kind = placement.device;
        let config = VitConfig::parse(&files.config)?;
        let processor_json = files
            .preprocessor
            .as_deref()
            .ok_or_else(|| EngineError::MissingFile("preprocessor_config.json".to_owned()))?;
        let processor = ImageProcessor::parse(processor_json)?;
        if let Some(resize) = processor.resize
            && [resize.height, resize.width] != config.image_size
        {
            return Err(FolderError::Invalid {
                file: "preprocessor_config.json",
                reason: format!(
                    "it resizes images to {}x{} but config.json's model takes {}x{}",
                    resize.width, resize.height, config.image_size[1], config.image_size[0]
                ),
            }
            .into());
        }
        check_weights_file(config.parameter_count(), &files.weights)?;
        let device = placement.device()?;
        if placement.precision == Precision::F16 {
            weights::check_half_range(&files.weights)?;
        }
        let mut loaded = VitWeights::new(&config, &device);
        weights::load(&mut loaded, files.weights, &weights::VIT_CLASSIFIER)?;
        let model = Vit::new(
            config.clone(),
            loaded,
            kind != DeviceKind::Wgpu,
            placement.precision.dtype(),
        );
        Ok(Self {
            config,
            processor,
            model,
            device,
            kind,
            precision: placement.precision,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// The name of each class, by id.
    pub fn labels(&self) -> &[String] {
        &self.config.labels
    }

    pub fn device(&self) -> DeviceKind {
        self.kind
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The element type the encoder's weights are held in (tests: that f16 runs).
    #[cfg(test)]
    pub(super) fn weights_dtype(&self) -> burn::tensor::DType {
        self.model.weights_dtype()
    }

    /// `[height, width]` of the pixels the model takes.
    pub fn image_size(&self) -> [usize; 2] {
        self.config.image_size
    }

    /// Bytes the weights take in memory (4 a parameter at f32, 2 at f16).
    pub fn memory_bytes(&self) -> usize {
        self.config
            .parameter_count()
            .saturating_mul(self.precision.bytes())
    }

    /// Decodes and prepares encoded images as the model's processor says. An image that
    /// is not a JPEG or PNG, is larger than the decoder's limits or does not decode is an
    /// error naming its index.
    pub fn preprocess(&self, images: &[&[u8]]) -> Result<PixelBatch> {
        let [height, width] = self.config.image_size;
        // Room is taken per image once it decodes, not for the whole batch up front:
        // a thousand bytes of garbage "images" must not reserve a thousand images' pixels.
        let mut data = Vec::new();
        for (i, bytes) in images.iter().enumerate() {
            let bad = |reason: String| EngineError::BadInput(format!("image {i}: {reason}"));
            let rgb = image::decode(bytes).map_err(bad)?;
            data.reserve(3 * height * width);
            image::preprocess(&rgb, &self.processor, self.config.image_size, &mut data)
                .map_err(bad)?;
        }
        Ok(PixelBatch {
            images: images.len(),
            height,
            width,
            data,
        })
    }

    /// Classifies encoded images: each one's `top_k` labels (all of them if it has
    /// fewer), most likely first.
    pub fn classify_images(
        &self,
        images: &[&[u8]],
        top_k: usize,
    ) -> Result<(Vec<Vec<Label>>, Timings)> {
        let started = Instant::now();
        let pixels = self.preprocess(images)?;
        let preprocess = started.elapsed();
        let (labels, compute) = self.classify_pixels(&pixels, top_k)?;
        Ok((
            labels,
            Timings {
                preprocess,
                compute,
            },
        ))
    }

    /// Classifies images already prepared as the model's processor says.
    pub fn classify_pixels(
        &self,
        pixels: &PixelBatch,
        top_k: usize,
    ) -> Result<(Vec<Vec<Label>>, Duration)> {
        if top_k == 0 {
            return Err(EngineError::BadInput("top_k must be at least 1".to_owned()));
        }
        let (logits, compute) = self.logits(pixels)?;
        let labels = (0..logits.rows)
            .map(|i| self.top(logits.row(i), top_k))
            .collect();
        Ok((labels, compute))
    }

    /// The raw scores of images already prepared.
    pub fn logits(&self, pixels: &PixelBatch) -> Result<(Logits, Duration)> {
        let started = Instant::now();
        self.check(pixels)?;
        let labels = self.config.labels.len();
        if pixels.images == 0 {
            let empty = Logits {
                rows: 0,
                labels,
                data: Vec::new(),
            };
            return Ok((empty, started.elapsed()));
        }
        let patches = vit::patches(&pixels.data, pixels.images, &self.config);
        let rows = patches.len() / self.patch_len();
        let patches = Tensor::from_data(
            TensorData::new(patches, [rows, self.patch_len()]),
            &self.device,
        );
        let data = self
            .model
            .forward(patches, pixels.images)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| EngineError::Device(format!("reading logits back: {e:?}")))?;
        let logits = Logits {
            rows: pixels.images,
            labels,
            data,
        };
        Ok((logits, started.elapsed()))
    }

    fn patch_len(&self) -> usize {
        3 * self.config.patch_size[0] * self.config.patch_size[1]
    }

    /// Checks that pixels have the model's size and are numbers.
    fn check(&self, pixels: &PixelBatch) -> Result<()> {
        let [height, width] = self.config.image_size;
        if [pixels.height, pixels.width] != [height, width] {
            return Err(EngineError::BadInput(format!(
                "pixels are {}x{}; this model takes {width}x{height}",
                pixels.width, pixels.height
            )));
        }
        let expected = pixels.images.checked_mul(pixels.image_len());
        if expected != Some(pixels.data.len()) {
            return Err(EngineError::BadInput(format!(
                "{} floats of pixels for {} images of 3x{height}x{width}",
                pixels.data.len(),
                pixels.images
            )));
        }
        if let Some(at) = pixels.data.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::BadInput(format!(
                "image {}: pixel value {} is not a finite number",
                at / pixels.image_len(),
                pixels.data[at]
            )));
        }
        Ok(())
    }

    /// The `top_k` most likely labels of one image's logits, by softmax probability
    /// (ties in id order).
    fn top(&self, logits: &[f32], top_k: usize) -> Vec<Label> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let scores: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
        let total: f32 = scores.iter().sum();
        let mut ids: Vec<usize> = (0..scores.len()).collect();
        ids.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        ids.into_iter()
            .take(top_k)
            .map(|id| Label {
                id,
                label: self.config.labels[id].clone(),
                score: scores[id] / total,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::Engine as _;
    use serde_json::Value;

    use super::*;
    use crate::engine::testing::{fixtures, floats, image as read, read_json};

    fn reference() -> Value {
        read_json("tiny-vit-reference.json")
    }

    fn pixel_values(entry: &Value) -> Vec<f32> {
        base64::engine::general_purpose::STANDARD
            .decode(entry["pixel_values_f32_base64"].as_str().unwrap())
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    fn load(dir: &Path, device: DeviceKind) -> Result<Classifier> {
        Classifier::load(ModelFiles::from_dir(dir).unwrap(), device)
    }

    fn tiny(device: DeviceKind) -> Classifier {
        load(&fixtures().join("tiny-vit"), device).unwrap()
    }

    /// A copy of the tiny ViT folder with `edit` applied, in a temporary directory.
    fn tiny_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixtures().join("tiny-vit")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        edit(dir.path());
        dir
    }

    fn edit_json(dir: &Path, file: &str, key: &str, value: Value) {
        let path = dir.join(file);
        let mut json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        json[key] = value;
        std::fs::write(path, serde_json::to_vec(&json).unwrap()).unwrap();
    }

    /// Checks one image's answer against transformers': logits within `bound`, and every
    /// label in transformers' order with its probability.
    fn assert_answer(file: &str, logits: &[f32], labels: &[Label], entry: &Value, bound: f32) {
        let want = floats(&entry["logits"]);
        let worst = largest_difference(logits, &want);
        println!("{file}: logits differ by at most {worst:e} (bound {bound:e})");
        assert!(worst < bound, "{file}: logits differ by {worst}");
        let order: Vec<usize> = serde_json::from_value(entry["top"].clone()).unwrap();
        let ids: Vec<usize> = labels.iter().map(|l| l.id).collect();
        assert_eq!(ids, order, "{file}");
        let probabilities = floats(&entry["probabilities"]);
        for label in labels {
            assert!(
                (label.score - probabilities[label.id]).abs() < bound,
                "{file}: {label:?} against {}",
                probabilities[label.id]
            );
        }
    }

    #[test]
    fn half_checkpoints_are_widened_on_the_cpu() {
        let reference = reference();
        let cpu_backends = [DeviceKind::Cpu, DeviceKind::Ndarray].into_iter();
        for device in cpu_backends.filter(|d| d.is_built()) {
            for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
                let dir = crate::engine::testing::half_copy("tiny-vit", dtype);
                let model = load(dir.path(), device).unwrap();
                assert_eq!(model.weights_dtype(), burn::tensor::DType::F32);
                let mut worst = 0f32;
                for entry in reference["images"].as_array().unwrap() {
                    let pixels = PixelBatch {
                        images: 1,
                        height: 32,
                        width: 32,
                        data: pixel_values(entry),
                    };
                    let (logits, _) = model.logits(&pixels).unwrap();
                    worst = worst.max(largest_difference(logits.row(0), &floats(&entry["logits"])));
                    let (labels, _) = model.classify_pixels(&pixels, 1).unwrap();
                    let top: Vec<usize> = serde_json::from_value(entry["top"].clone()).unwrap();
                    assert_eq!(labels[0][0].id, top[0], "{dtype:?}: {}", entry["file"]);
                }
                println!("tiny-vit as {dtype:?} on {device}: largest logit difference {worst:.1e}");
                assert!(worst > 0.0 && worst < 0.1, "{dtype:?} on {device}: {worst}");
            }
        }
    }

    #[test]
    fn tiny_vit_matches_transformers_on_every_backend() {
        let reference = reference();
        let names: Vec<String> = serde_json::from_value(reference["labels"].clone()).unwrap();
        for device in DeviceKind::ALL.into_iter().filter(|d| d.is_built()) {
            // A GPU sums in another order, and lavapipe's exp and erf are its own.
            let tight = if device == DeviceKind::Wgpu {
                1e-4
            } else {
                1e-5
            };
            let model = tiny(device);
            assert_eq!(model.labels(), names);
            for entry in reference["images"].as_array().unwrap() {
                let file = entry["file"].as_str().unwrap();
                let bytes = read(file);
                // On transformers' own pixels, the network alone: tight.
                let pixels = PixelBatch {
                    images: 1,
                    height: 32,
                    width: 32,
                    data: pixel_values(entry),
                };
                let (logits, _) = model.logits(&pixels).unwrap();
                let (labels, _) = model.classify_pixels(&pixels, 5).unwrap();
                assert_answer(file, logits.row(0), &labels[0], entry, tight);

                // From the encoded file. A PNG's pixels are transformers' to the bit; a
                // JPEG's differ by the decoders' rounding (see image.rs), and so do its
                // logits, a little.
                let ours = model.preprocess(&[&bytes]).unwrap();
                let bound = if file.ends_with(".png") {
                    assert_eq!(ours, pixels, "{file}");
                    tight
                } else {
                    let worst = largest_difference(&ours.data, &pixels.data);
                    println!("{file}: pixel values differ by at most {worst}");
                    5e-2
                };
                let (logits, _) = model.logits(&ours).unwrap();
                let (labels, timings) = model.classify_images(&[&bytes], 5).unwrap();
                assert!(timings.compute > Duration::ZERO);
                assert_answer(file, logits.row(0), &labels[0], entry, bound);
            }
        }
    }

    #[test]
    fn a_batch_of_mixed_images_gives_each_its_own_answer() {
        let reference = reference();
        let model = tiny(DeviceKind::Cpu);
        let files: Vec<Vec<u8>> = reference["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| read(e["file"].as_str().unwrap()))
            .collect();
        let images: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let (batch, _) = model.classify_images(&images, 3).unwrap();
        let batch_pixels = model.preprocess(&images).unwrap();
        let (batch_logits, _) = model.logits(&batch_pixels).unwrap();
        assert_eq!(batch.len(), images.len());
        for (i, image) in images.iter().enumerate() {
            let (alone, _) = model.classify_images(&[image], 3).unwrap();
            let (alone_logits, _) = model.logits(&model.preprocess(&[image]).unwrap()).unwrap();
            let worst = largest_difference(batch_logits.row(i), alone_logits.row(0));
            assert!(worst < 1e-5, "image {i}: batch and alone differ by {worst}");
            let ids = |labels: &[Label]| labels.iter().map(|l| l.id).collect::<Vec<_>>();
            assert_eq!(ids(&batch[i]), ids(&alone[0]), "image {i}");
            assert_eq!(batch[i].len(), 3);
        }
        let (none, _) = model.classify_images(&[], 3).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn top_k_is_clamped_and_scores_are_probabilities() {
        let model = tiny(DeviceKind::Cpu);
        let image = read("rgb.png");
        let (all, _) = model.classify_images(&[&image], 100).unwrap();
        assert_eq!(all[0].len(), 5);
        let total: f32 = all[0].iter().map(|l| l.score).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(all[0].windows(2).all(|w| w[0].score >= w[1].score));
        let (one, _) = model.classify_images(&[&image], 1).unwrap();
        assert_eq!(one[0], all[0][..1]);
        assert_eq!(one[0][0].label, model.labels()[one[0][0].id]);
        let err = model.classify_images(&[&image], 0).unwrap_err();
        assert!(err.to_string().contains("top_k"), "{err}");
    }

    #[test]
    fn bad_images_and_pixels_are_errors_naming_the_image() {
        let model = tiny(DeviceKind::Cpu);
        let good = read("rgb.png");
        for (file, says) in [
            ("bomb.png", "larger than this node decodes"),
            ("bomb.jpg", "larger than this node decodes"),
            ("truncated.png", "does not decode"),
            ("truncated.jpg", "truncated"),
            ("not-an-image.txt", "not a JPEG or PNG"),
        ] {
            let bad = read(&format!("hostile/{file}"));
            let err = model.classify_images(&[&good, &bad], 5).unwrap_err();
            assert!(matches!(err, EngineError::BadInput(_)), "{file}: {err:?}");
            let err = err.to_string();
            assert!(
                err.contains("image 1") && err.contains(says),
                "{file}: {err}"
            );
        }
        let pixels = |images, height, width, data| PixelBatch {
            images,
            height,
            width,
            data,
        };
        let bad = |batch: PixelBatch| model.logits(&batch).unwrap_err().to_string();
        assert!(bad(pixels(1, 32, 16, vec![0.0; 3 * 32 * 16])).contains("16x32"));
        assert!(bad(pixels(2, 32, 32, vec![0.0; 3 * 32 * 32])).contains("2 images"));
        assert!(bad(pixels(usize::MAX, 32, 32, vec![])).contains("floats"));
        let mut nan = vec![0.0; 2 * 3 * 32 * 32];
        nan[3 * 32 * 32 + 5] = f32::NAN;
        assert!(bad(pixels(2, 32, 32, nan)).contains("image 1"));
    }

    #[test]
    fn folders_that_do_not_fit_are_refused_by_name() {
        let err =
            |dir: &tempfile::TempDir| load(dir.path(), DeviceKind::Cpu).unwrap_err().to_string();
        let dir =
            tiny_copy(|dir| std::fs::remove_file(dir.join("preprocessor_config.json")).unwrap());
        assert!(
            err(&dir).contains("preprocessor_config.json"),
            "{}",
            err(&dir)
        );

        let dir = tiny_copy(|dir| {
            edit_json(
                dir,
                "preprocessor_config.json",
                "size",
                serde_json::json!({"height": 224, "width": 224}),
            );
        });
        assert!(err(&dir).contains("224x224"), "{}", err(&dir));

        // One layer more than the file has.
        let dir = tiny_copy(|dir| edit_json(dir, "config.json", "num_hidden_layers", 3.into()));
        let e = err(&dir);
        assert!(
            e.contains("vit.encoder.layer.2.") && e.contains("missing"),
            "{e}"
        );
        // One layer less: the second layer's weights would be unused.
        let dir = tiny_copy(|dir| edit_json(dir, "config.json", "num_hidden_layers", 1.into()));
        let e = err(&dir);
        assert!(
            e.contains("not used") && e.contains("vit.encoder.layer.1."),
            "{e}"
        );
        // A sixth label the classifier has no row for.
        let dir = tiny_copy(|dir| {
            let labels =
                serde_json::json!({"0": "a", "1": "b", "2": "c", "3": "d", "4": "e", "5": "f"});
            edit_json(dir, "config.json", "id2label", labels);
            edit_json(dir, "config.json", "label2id", Value::Null);
        });
        assert!(err(&dir).contains("classifier.weight"), "{}", err(&dir));
        // No query/key/value biases where the file has them.
        let dir = tiny_copy(|dir| edit_json(dir, "config.json", "qkv_bias", false.into()));
        let e = err(&dir);
        assert!(e.contains("not used") && e.contains("query.bias"), "{e}");
        // Sizes the weights cannot fill: refused before allocating.
        let dir = tiny_copy(|dir| {
            edit_json(dir, "config.json", "hidden_size", (1 << 14).into());
            edit_json(dir, "config.json", "intermediate_size", (1 << 16).into());
        });
        assert!(
            err(&dir).contains("more than model.safetensors"),
            "{}",
            err(&dir)
        );
        // An encoder's folder is not a classifier.
        let e = load(&fixtures().join("tiny-bert"), DeviceKind::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BertModel") && e.contains("ViTForImageClassification"),
            "{e}"
        );
    }
}
