//! model.safetensors's header: the tensors the file says it holds, each checked against
//! the bytes that follow it by the `safetensors` crate (the parser burn-store loads the
//! weights with), so a hostile header is refused here with the file's name, before the
//! engine allocates anything from it.

use safetensors::SafeTensors;

use super::{FolderError, Result};

/// One tensor of the file, as its header declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    pub name: String,
    /// The element type as safetensors names it (`F32`, `F16`, `BF16`, `I64`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// The tensors of a safetensors file held in memory, sorted by name. Every tensor's
/// element count, element size and byte range agree with the file, or this is an error.
pub fn tensors(file: &[u8]) -> Result<Vec<TensorHeader>> {
    let parsed = SafeTensors::deserialize(file).map_err(|e| FolderError::Invalid {
        file: "model.safetensors",
        reason: format!("its header is invalid: {e}"),
    })?;
    let mut tensors: Vec<TensorHeader> = parsed
        .iter()
        .map(|(name, view)| TensorHeader {
            name: name.to_owned(),
            dtype: format!("{:?}", view.dtype()),
            shape: view.shape().to_vec(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of one header and `data`.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn lists_the_tensors_a_valid_file_holds() {
        let header = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
            "a":{"dtype":"I64","shape":[1,1],"data_offsets":[8,16]}}"#;
        let tensors = tensors(&file(header, &[0; 16])).unwrap();
        assert_eq!(
            tensors,
            vec![
                TensorHeader {
                    name: "a".into(),
                    dtype: "I64".into(),
                    shape: vec![1, 1]
                },
                TensorHeader {
                    name: "b".into(),
                    dtype: "F32".into(),
                    shape: vec![2]
                },
            ]
        );
    }

    #[test]
    fn a_header_that_disagrees_with_the_bytes_is_refused_naming_the_file() {
        for (header, data) in [
            // Declares more bytes than follow.
            (
                r#"{"w":{"dtype":"F32","shape":[1048576],"data_offsets":[0,4194304]}}"#,
                &[0u8; 8][..],
            ),
            // A shape whose element count overflows.
            (
                r#"{"w":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#,
                &[0; 8][..],
            ),
            // Element count and byte range disagree.
            (
                r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                &[0; 8][..],
            ),
            // Not JSON.
            ("{", &[][..]),
        ] {
            let err = tensors(&file(header, data)).unwrap_err().to_string();
            assert!(err.starts_with("model.safetensors: "), "{header}: {err}");
        }
        // A header length past the end of the file.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(tensors(&huge).is_err());
        assert!(tensors(&[1, 2, 3]).is_err());
    }
}
