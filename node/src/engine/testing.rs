//! The engine's committed test fixtures (tests/fixtures): model folders, reference
//! outputs written by tests/reference/*.py, and test images.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A reference JSON file of tests/fixtures.
pub(super) fn read_json(file: &str) -> Value {
    let text = std::fs::read(fixtures().join(file)).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// The bytes of a test image in tests/fixtures/images.
pub(super) fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

/// A JSON array of numbers as f32s.
pub(super) fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// A copy of the fixture folder `model` in a temporary directory.
pub(super) fn fixture_copy(model: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join(model)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// A copy of the fixture folder `model` in a temporary directory, with every F32 tensor
/// of its model.safetensors rounded to `dtype` (F16 or BF16), as a half checkpoint
/// saved from it would be.
pub(super) fn half_copy(model: &str, dtype: safetensors::Dtype) -> tempfile::TempDir {
    use burn::tensor::{bf16, f16};
    let dir = fixture_copy(model);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape().to_vec();
            if view.dtype() != safetensors::Dtype::F32 {
                return (name, view.dtype(), shape, view.data().to_vec());
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let data: Vec<u8> = match dtype {
                safetensors::Dtype::F16 => values
                    .flat_map(|v| f16::from_f32(v).to_le_bytes())
                    .collect(),
                safetensors::Dtype::BF16 => values
                    .flat_map(|v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
                other => panic!("not a half dtype: {other:?}"),
            };
            (name, dtype, shape, data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
            (name.clone(), view.unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    dir
}
