//! Reading a decoder's safetensors file strictly: every tensor the architecture needs
//! must be there with its exact shape and a float dtype (F32, F16 or BF16, widened to
//! f32), and every tensor in the file must be used or be one the engine knowingly
//! ignores (GPT-2's causal-mask buffers, rotary `inv_freq`, a tied `lm_head`). All
//! problems are checked and reported together before any weight is copied.

use std::collections::BTreeSet;

use burn::tensor::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::engine::{EngineError, Result};

/// A safetensors file, checked against the tensors a model expects.
#[derive(Debug)]
pub(super) struct Checkpoint<'a> {
    file: SafeTensors<'a>,
}

impl<'a> Checkpoint<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| EngineError::Weights(format!("model.safetensors cannot be read: {e}")))?;
        Ok(Self { file })
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_ok()
    }

    /// Checks that the file holds each of `expected` (name and shape) in a float dtype,
    /// and nothing else but tensors `ignored` accepts. Every problem is named.
    pub(super) fn check(
        &self,
        expected: &[(String, Vec<usize>)],
        ignored: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let mut problems = Vec::new();
        let mut wanted = BTreeSet::new();
        for (name, shape) in expected {
            wanted.insert(name.as_str());
            match self.file.tensor(name) {
                Err(_) => problems.push(format!("missing: {name}")),
                Ok(view) => {
                    if view.shape() != shape.as_slice() {
                        problems.push(format!(
                            "{name} has shape {:?}, the configuration needs {shape:?}",
                            view.shape()
                        ));
                    }
                    if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                        problems.push(format!(
                            "{name} is {:?}; weights must be F32, F16 or BF16",
                            view.dtype()
                        ));
                    }
                }
            }
        }
        for name in self.file.names() {
            if !wanted.contains(name) && !ignored(name) {
                problems.push(format!("not used by the model: {name}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.sort();
            Err(EngineError::Weights(problems.join("; ")))
        }
    }

    /// The tensor `name` as f32, row-major. [`Checkpoint::check`] has vouched for it.
    pub(super) fn read(&self, name: &str) -> Result<Vec<f32>> {
        let view = self
            .file
            .tensor(name)
            .map_err(|_| EngineError::Weights(format!("missing: {name}")))?;
        let bytes = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            other => {
                return Err(EngineError::Weights(format!(
                    "{name} is {other:?}; weights must be F32, F16 or BF16"
                )));
            }
        })
    }

    /// A PyTorch `nn.Linear` weight (`[out, in]`) as `[in, out]`, the layout the engine
    /// multiplies by.
    pub(super) fn read_transposed(&self, name: &str, out: usize, inp: usize) -> Result<Vec<f32>> {
        let data = self.read(name)?;
        let mut transposed = vec![0f32; data.len()];
        for (o, row) in data.chunks_exact(inp).enumerate().take(out) {
            for (i, &value) in row.iter().enumerate() {
                transposed[i * out + o] = value;
            }
        }
        Ok(transposed)
    }
}

/// `[rows, a]` and `[rows, b]` side by side as `[rows, a + b]`.
pub(super) fn concat_columns(parts: &[(&[f32], usize)], rows: usize) -> Vec<f32> {
    let width: usize = parts.iter().map(|(_, cols)| cols).sum();
    let mut out = Vec::with_capacity(rows * width);
    for row in 0..rows {
        for (data, cols) in parts {
            out.extend_from_slice(&data[row * cols..(row + 1) * cols]);
        }
    }
    out
}
