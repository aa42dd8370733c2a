//! Encoded images to the pixels an image classifier takes, as transformers' image pipeline
//! makes them: JPEG or PNG decoded under limits set before anything is allocated, EXIF
//! orientation applied and the pixels converted to RGB as PIL's `convert("RGB")` does,
//! resized with PIL's own fixed-point resampling, then rescaled and normalised in the
//! arithmetic `ViTImageProcessor` uses. On PNG the result is bit for bit transformers'.

use std::io::Cursor;

use image::{ColorType, ImageDecoder, ImageFormat, ImageReader, Limits};
use ipfs_accelerate_protocol::model_folder::{Filter, ImageProcessor, Resize};

/// Largest width or height of an image that is decoded: above any camera's (a 200 MP
/// sensor is 16 320 wide). A header that declares more is refused before decoding.
pub(super) const MAX_IMAGE_SIDE: u32 = 16_384;

/// Most bytes one decoded image may take (16-bit RGBA counts 8 bytes a pixel): a 12 MP
/// photo takes 36 MB as 8-bit RGB. Checked against the header's size before the pixels'
/// buffer is allocated.
pub(super) const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;

/// Images prepared for a classifier, `[images, 3, height, width]` row after row.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelBatch {
    pub images: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl PixelBatch {
    /// Floats per image.
    pub fn image_len(&self) -> usize {
        3 * self.height * self.width
    }
}

/// A decoded image: 8-bit RGB, row after row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rgb {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) pixels: Vec<u8>,
}

/// Decodes a JPEG or PNG image to RGB as transformers' `load_image` sees it: EXIF
/// orientation applied, then PIL's `convert("RGB")`. Any other format, a header past the
/// limits, or bytes that do not decode whole are an error that says which.
pub(super) fn decode(bytes: &[u8]) -> Result<Rgb, String> {
    let format = match image::guess_format(bytes) {
        Ok(format @ (ImageFormat::Png | ImageFormat::Jpeg)) => format,
        Ok(other) => {
            return Err(format!(
                "{} images are not supported: send JPEG or PNG",
                other.extensions_str().first().unwrap_or(&"these")
            ));
        }
        Err(_) => return Err("not a JPEG or PNG image".to_owned()),
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits.clone());
    // Reads the header only, and refuses its sizes past the limits.
    let mut decoder = reader.into_decoder().map_err(describe)?;
    limits.reserve(decoder.total_bytes()).map_err(describe)?;
    let orientation = decoder.orientation().map_err(describe)?;
    let color = decoder.color_type();
    let (width, height) = decoder.dimensions();
    let total = usize::try_from(decoder.total_bytes()).map_err(|_| "image too large".to_owned())?;
    if format == ImageFormat::Jpeg && !jpeg_is_whole(bytes) {
        // The JPEG decoder fills a cut-off scan with grey instead of failing; PIL refuses
        // such a file ("image file is truncated"), and so does this.
        return Err("the JPEG image is truncated (its scan has no end-of-image marker)".to_owned());
    }
    let mut raw = vec![0u8; total];
    decoder.read_image(&mut raw).map_err(describe)?;
    let pixels = to_rgb(color, raw)?;
    let mut image = image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(width, height, pixels)
            .ok_or_else(|| "decoded pixels do not fill the image".to_owned())?,
    );
    image.apply_orientation(orientation);
    let image = image.into_rgb8();
    Ok(Rgb {
        width: image.width() as usize,
        height: image.height() as usize,
        pixels: image.into_raw(),
    })
}

/// An error of the `image` crate in words a caller can act on.
fn describe(error: image::ImageError) -> String {
    match error {
        image::ImageError::Limits(_) => format!(
            "the image is larger than this node decodes (at most {MAX_IMAGE_SIDE} pixels a \
             side and {} MiB decoded)",
            MAX_DECODED_BYTES >> 20
        ),
        other => format!("the image does not decode: {other}"),
    }
}

/// Whether a JPEG's image data runs to its end-of-image marker. The marker is looked for
/// after the first scan's header, found by walking the segments before it: an EXIF
/// thumbnail (before the scan) has one of its own, and phones append data after it.
fn jpeg_is_whole(bytes: &[u8]) -> bool {
    let mut at = 2; // after the start-of-image marker
    loop {
        match bytes.get(at..).unwrap_or_default() {
            // A fill byte before a marker.
            [0xFF, 0xFF, ..] => at += 1,
            [0xFF, marker, high, low, ..] => {
                let after = at + 2 + usize::from(u16::from_be_bytes([*high, *low]));
                if *marker == 0xDA {
                    let scan = bytes.get(after..).unwrap_or_default();
                    return scan.windows(2).any(|w| w == [0xFF, 0xD9]);
                }
                at = after;
            }
            _ => return false,
        }
    }
}

/// Decoded pixels of any colour type the PNG and JPEG decoders give, to 8-bit RGB as
/// PIL's `convert("RGB")` makes it: grey replicated, alpha dropped (not composited),
/// 16-bit colour cut to its high byte (PIL reads it so), and 16-bit grey clipped at 255
/// (PIL's `I;16` to RGB conversion clips, it does not scale).
fn to_rgb(color: ColorType, raw: Vec<u8>) -> Result<Vec<u8>, String> {
    // The decoders give 16-bit samples in native byte order.
    let sample = |p: &[u8], i: usize| u16::from_ne_bytes([p[2 * i], p[2 * i + 1]]);
    let high = |p: &[u8], i: usize| (sample(p, i) >> 8) as u8;
    let pixels = match color {
        ColorType::Rgb8 => return Ok(raw),
        ColorType::Rgba8 => raw
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        ColorType::L8 => raw.iter().flat_map(|&v| [v, v, v]).collect(),
        ColorType::La8 => raw
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        ColorType::L16 => raw
            .chunks_exact(2)
            .flat_map(|p| {
                let v = sample(p, 0).min(255) as u8;
                [v, v, v]
            })
            .collect(),
        ColorType::La16 => raw
            .chunks_exact(4)
            .flat_map(|p| [high(p, 0), high(p, 0), high(p, 0)])
            .collect(),
        ColorType::Rgb16 => raw
            .chunks_exact(6)
            .flat_map(|p| [high(p, 0), high(p, 1), high(p, 2)])
            .collect(),
        ColorType::Rgba16 => raw
            .chunks_exact(8)
            .flat_map(|p| [high(p, 0), high(p, 1), high(p, 2)])
            .collect(),
        other => return Err(format!("pixels of type {other:?} are not supported")),
    };
    Ok(pixels)
}

/// Prepares one decoded image as `processor` says and appends its `[3, height, width]`
/// floats to `out`; `size` is the `[height, width]` the model takes.
pub(super) fn preprocess(
    image: &Rgb,
    processor: &ImageProcessor,
    size: [usize; 2],
    out: &mut Vec<f32>,
) -> Result<(), String> {
    let resized;
    let image = match processor.resize {
        Some(resize) => {
            resized = self::resize(image, resize);
            &resized
        }
        None => image,
    };
    if [image.height, image.width] != size {
        return Err(format!(
            "the image is {}x{} pixels and the model's processor does not resize: send \
             {}x{} images",
            image.width, image.height, size[1], size[0]
        ));
    }
    let plane = image.width * image.height;
    out.reserve(3 * plane);
    for channel in 0..3 {
        let (mean, std) = match processor.normalize {
            Some((mean, std)) => (Some(mean[channel]), std[channel]),
            None => (None, 1.0),
        };
        out.extend(image.pixels[channel..].iter().step_by(3).map(|&v| {
            // transformers rescales in float64 and casts to float32, then normalises
            // in float32: the same operations in the same order give the same bits.
            let v = match processor.rescale {
                Some(factor) => (f64::from(v) * factor) as f32,
                None => f32::from(v),
            };
            match mean {
                Some(mean) => (v - mean) / std,
                None => v,
            }
        }));
    }
    Ok(())
}

/// Fixed-point precision of PIL's 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `Image.resize(size, filter)` on an RGB image: separable convolution, one pass
/// per axis into an 8-bit image, each with PIL's fixed-point coefficients and rounding, so
/// the result is PIL's to the bit. The passes' order matters to the last bit, and is
/// Pillow 13's (`ImagingResample`): the vertical pass first when the height shrinks by
/// more than twice what the width does, else the horizontal one. (Pillow 12 and earlier
/// always ran the horizontal pass first; where the orders differ, by a level or two on a
/// few pixels.)
pub(super) fn resize(image: &Rgb, to: Resize) -> Rgb {
    let (width, height) = (to.width, to.height);
    let shrinks_by = |from: usize, to: usize| from as i64 - to as i64;
    let vertical_first = width != image.width
        && height != image.height
        && shrinks_by(image.height, height) > 0
        && shrinks_by(image.height, height) > 2 * shrinks_by(image.width, width);
    if vertical_first {
        horizontal(&vertical(image, height, to.filter), width, to.filter)
    } else {
        vertical(&horizontal(image, width, to.filter), height, to.filter)
    }
}

/// PIL's horizontal pass (`ImagingResampleHorizontal_8bpc`): each row to `width` pixels.
fn horizontal(image: &Rgb, width: usize, filter: Filter) -> Rgb {
    if width == image.width {
        return image.clone();
    }
    let (bounds, weights, taps) = coefficients(image.width, width, filter);
    let mut pixels = vec![0u8; width * image.height * 3];
    for (row, out) in image
        .pixels
        .chunks_exact(image.width * 3)
        .zip(pixels.chunks_exact_mut(width * 3))
    {
        for (x, out) in out.chunks_exact_mut(3).enumerate() {
            let (start, len) = bounds[x];
            let k = &weights[x * taps..x * taps + len];
            for (c, out) in out.iter_mut().enumerate() {
                let sum = k.iter().enumerate().fold(ROUNDING, |sum, (i, &w)| {
                    sum + i32::from(row[(start + i) * 3 + c]) * w
                });
                *out = clip8(sum);
            }
        }
    }
    Rgb {
        width,
        height: image.height,
        pixels,
    }
}

/// PIL's vertical pass (`ImagingResampleVertical_8bpc`): each column to `height` pixels.
fn vertical(image: &Rgb, height: usize, filter: Filter) -> Rgb {
    if height == image.height {
        return image.clone();
    }
    let (bounds, weights, taps) = coefficients(image.height, height, filter);
    let stride = image.width * 3;
    let mut pixels = vec![0u8; stride * height];
    for (y, out) in pixels.chunks_exact_mut(stride).enumerate() {
        let (start, len) = bounds[y];
        let k = &weights[y * taps..y * taps + len];
        for (i, out) in out.iter_mut().enumerate() {
            let sum = k.iter().enumerate().fold(ROUNDING, |sum, (j, &w)| {
                sum + i32::from(image.pixels[(start + j) * stride + i]) * w
            });
            *out = clip8(sum);
        }
    }
    Rgb {
        width: image.width,
        height,
        pixels,
    }
}

/// Half of the last fixed-point step: PIL's sums start here so that the shift rounds.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// `clip8` of Resample.c: a fixed-point sum back to a byte.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `precompute_coeffs` and `normalize_coeffs_8bpc` of Resample.c, for resizing `input`
/// samples to `output`: for each output sample the first input sample and how many it
/// reads, and its weights in fixed point, `taps` apart.
fn coefficients(
    input: usize,
    output: usize,
    filter: Filter,
) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let support_radius = support(filter);
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let inverse_scale = 1.0 / filter_scale;
    let support = support_radius * filter_scale;
    let taps = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(output);
    let mut weights = vec![0i32; output * taps];
    let mut k = vec![0f64; taps];
    for (out, slot) in weights.chunks_exact_mut(taps).enumerate() {
        let center = (out as f64 + 0.5) * scale;
        // C's (int) truncates toward zero; negative starts are clamped to 0 either way.
        let min = ((center - support + 0.5) as i64).max(0) as usize;
        let max = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let len = max.saturating_sub(min);
        let mut total = 0.0;
        for (i, w) in k.iter_mut().enumerate().take(len) {
            *w = weight(filter, ((min + i) as f64 - center + 0.5) * inverse_scale);
            total += *w;
        }
        for (i, w) in k.iter().enumerate().take(len) {
            let w = if total != 0.0 { w / total } else { *w };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            slot[i] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((min, len));
    }
    (bounds, weights, taps)
}

/// How far each of PIL's filters reaches, in input samples at scale 1.
fn support(filter: Filter) -> f64 {
    match filter {
        Filter::Box => 0.5,
        Filter::Bilinear | Filter::Hamming => 1.0,
        Filter::Bicubic => 2.0,
        Filter::Lanczos => 3.0,
    }
}

/// PIL's filter functions (Resample.c), in f64 as there.
fn weight(filter: Filter, x: f64) -> f64 {
    use std::f64::consts::PI;
    let sinc = |x: f64| {
        if x == 0.0 {
            1.0
        } else {
            (x * PI).sin() / (x * PI)
        }
    };
    match filter {
        Filter::Box => {
            if x > -0.5 && x <= 0.5 {
                1.0
            } else {
                0.0
            }
        }
        Filter::Bilinear => (1.0 - x.abs()).max(0.0),
        Filter::Hamming => {
            let x = x.abs();
            if x == 0.0 {
                1.0
            } else if x >= 1.0 {
                0.0
            } else {
                // Resample.c writes the window's constants as C floats.
                let x = x * PI;
                x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
            }
        }
        Filter::Bicubic => {
            const A: f64 = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }
        Filter::Lanczos => {
            if (-3.0..3.0).contains(&x) {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use base64::Engine as _;
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::engine::testing::{fixtures, image as read, read_json};

    fn reference() -> Value {
        read_json("tiny-vit-reference.json")
    }

    fn sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn base64(value: &Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap()
    }

    /// The image PIL decoded for the reference: ours for a PNG (the same, as
    /// `png_decodes_as_pil_does` checks), the reference's own pixels for a JPEG.
    fn pil_rgb(entry: &Value) -> Rgb {
        let file = entry["file"].as_str().unwrap();
        let width = entry["width"].as_u64().unwrap() as usize;
        let height = entry["height"].as_u64().unwrap() as usize;
        let pixels = match file.ends_with(".jpg") {
            true => base64(&entry["rgb_base64"]),
            false => decode(&read(file)).unwrap().pixels,
        };
        Rgb {
            width,
            height,
            pixels,
        }
    }

    fn entry<'a>(reference: &'a Value, file: &str) -> &'a Value {
        reference["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["file"] == file)
            .unwrap()
    }

    #[test]
    fn png_decodes_as_pil_does() {
        // RGB, RGBA, grey, 16-bit grey and colour, palette: every pixel as PIL's
        // `convert("RGB")` gives it.
        let reference = reference();
        let mut checked = 0;
        for entry in reference["images"].as_array().unwrap() {
            let file = entry["file"].as_str().unwrap();
            if !file.ends_with(".png") {
                continue;
            }
            let rgb = decode(&read(file)).unwrap();
            assert_eq!(
                [rgb.width, rgb.height],
                [
                    entry["width"].as_u64().unwrap() as usize,
                    entry["height"].as_u64().unwrap() as usize
                ],
                "{file}"
            );
            assert_eq!(sha256(&rgb.pixels), entry["rgb_sha256"], "{file}");
            checked += 1;
        }
        assert_eq!(checked, 7);
    }

    #[test]
    fn jpeg_decodes_close_to_pil() {
        // zune-jpeg is not libjpeg-turbo: its chroma upsampling and colour conversion
        // round differently, by a few levels on a few pixels (measured: at most 4 and 7
        // levels, 0.4 on average, on the colour ones; 1 on the grey one).
        let reference = reference();
        for (file, bound) in [("photo.jpg", 8), ("gray.jpg", 1), ("rotated.jpg", 8)] {
            let entry = entry(&reference, file);
            let ours = decode(&read(file)).unwrap();
            let pil = pil_rgb(entry);
            // rotated.jpg is stored 64x40 with EXIF orientation 6: shown 40x64.
            assert_eq!([ours.width, ours.height], [pil.width, pil.height], "{file}");
            let worst = ours
                .pixels
                .iter()
                .zip(&pil.pixels)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            let mean = ours
                .pixels
                .iter()
                .zip(&pil.pixels)
                .map(|(a, b)| f64::from(a.abs_diff(*b)))
                .sum::<f64>()
                / ours.pixels.len() as f64;
            println!("{file}: largest difference {worst}, mean {mean:.3} levels");
            assert!(worst <= bound, "{file}: largest difference {worst}");
            assert!(mean < 0.5, "{file}: mean difference {mean}");
        }
    }

    #[test]
    fn resizes_as_pil_does_with_every_filter() {
        let reference = reference();
        let resizes = reference["resizes"].as_array().unwrap();
        assert_eq!(resizes.len(), 15);
        for case in resizes {
            let file = case["file"].as_str().unwrap();
            let filter = match case["resample"].as_u64().unwrap() {
                1 => Filter::Lanczos,
                2 => Filter::Bilinear,
                3 => Filter::Bicubic,
                4 => Filter::Box,
                5 => Filter::Hamming,
                other => panic!("resample {other}"),
            };
            let to = Resize {
                width: case["width"].as_u64().unwrap() as usize,
                height: case["height"].as_u64().unwrap() as usize,
                filter,
            };
            let resized = resize(&pil_rgb(entry(&reference, file)), to);
            assert_eq!([resized.width, resized.height], [to.width, to.height]);
            assert_eq!(sha256(&resized.pixels), case["sha256"], "{file} {to:?}");
        }
    }

    #[test]
    fn preprocessing_gives_transformers_pixels() {
        // From PIL's decoded pixels, every image's pixel_values are ViTImageProcessor's,
        // bit for bit: resize, rescale and normalise as it computes them.
        let reference = reference();
        let processor = ImageProcessor::parse(
            &std::fs::read(fixtures().join("tiny-vit/preprocessor_config.json")).unwrap(),
        )
        .unwrap();
        for entry in reference["images"].as_array().unwrap() {
            let file = entry["file"].as_str().unwrap();
            let mut ours = Vec::new();
            preprocess(&pil_rgb(entry), &processor, [32, 32], &mut ours).unwrap();
            let want: Vec<f32> = base64(&entry["pixel_values_f32_base64"])
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(ours, want, "{file}");
        }
        // Without a resize, an image of another size is refused.
        let unresized = ImageProcessor {
            resize: None,
            ..processor
        };
        let rgb = decode(&read("rgb.png")).unwrap();
        let err = preprocess(&rgb, &unresized, [32, 32], &mut Vec::new()).unwrap_err();
        assert!(err.contains("61x47") && err.contains("32x32"), "{err}");
    }

    #[test]
    fn hostile_images_are_refused_before_allocating() {
        for (file, says) in [
            // 60000 x 60000 declared by a 68-byte PNG and by a JPEG frame header.
            ("bomb.png", "larger than this node decodes"),
            ("bomb.jpg", "larger than this node decodes"),
            // 8000 x 8000, within the side limit, but 512 MB as 16-bit RGBA.
            ("large16.png", "larger than this node decodes"),
            ("truncated.png", "does not decode"),
            ("truncated.jpg", "truncated"),
            ("not-an-image.txt", "not a JPEG or PNG"),
            ("tiny.gif", "gif images are not supported"),
        ] {
            let err = decode(&read(&format!("hostile/{file}"))).unwrap_err();
            assert!(err.contains(says), "{file}: {err}");
        }
        // Every prefix of a valid image fails cleanly or decodes; none panics.
        for file in ["rgb.png", "photo.jpg", "rotated.jpg"] {
            let bytes = read(file);
            for cut in (0..bytes.len()).step_by(7) {
                let _ = decode(&bytes[..cut]);
            }
        }
        // Bytes flipped all over a valid image: errors or some image, never a panic.
        for file in ["rgb.png", "photo.jpg"] {
            let mut bytes = read(file);
            for i in (0..bytes.len()).step_by(13) {
                bytes[i] ^= 0x5A;
                let _ = decode(&bytes);
            }
        }
        assert!(decode(&[]).is_err());
    }
}
