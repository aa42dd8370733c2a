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
