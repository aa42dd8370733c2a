//! GGUF, llama.cpp's model file, read strictly: the header (magic, version 2 or 3,
//! metadata key/values, tensor descriptions) from the file's first bytes, every length,
//! count and offset checked against the bytes that exist before anything is allocated
//! for it, and each tensor's byte range checked against the file's real size.
//! [`quant`] turns a tensor's blocks into numbers; [`llama`] says what a Llama GGUF is in
//! Hugging Face layout, the folder the engine loads.
//!
//! Layout (all little-endian): `GGUF`, u32 version, u64 tensor count, u64 metadata
//! count; metadata as (string key, u32 type, value); tensor descriptions as (string
//! name, u32 dimension count, u64 per dimension (innermost first), u32 ggml type, u64
//! offset); padding to `general.alignment` (32 by default); then the tensors' data,
//! each at its offset from there. A string is a u64 length and UTF-8 bytes; an array
//! is a u32 element type, a u64 count and the elements.

use std::collections::BTreeMap;

pub mod llama;
pub mod quant;

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Where tensor data is aligned when `general.alignment` does not say.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most bytes the header (metadata and tensor descriptions) may take: a vocabulary of
/// 256k tokens with its merges and scores takes about 15 MB.
pub const HEADER_LIMIT: usize = 64 << 20;
/// Most dimensions a tensor has (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Most elements one tensor may hold (Llama 3's 405B embedding has 2.1 G).
pub const TENSOR_ELEMENTS_LIMIT: u64 = 1 << 36;
/// Longest tensor name accepted (ggml's own limit is 64 bytes).
const NAME_LIMIT: u64 = 1024;
/// Largest `general.alignment` accepted.
const ALIGNMENT_LIMIT: u64 = 1 << 16;

/// A GGUF file that cannot be read or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    /// The bytes given end inside the header and the file has more: read further and
    /// parse again (the caller holds the file; this module holds none of it).
    #[error("the GGUF header runs past the first {0} bytes read")]
    NeedMore(usize),
    /// Not a GGUF file, or a version this reader does not take.
    #[error("not a GGUF file we can read: {0}")]
    NotGguf(String),
    /// A field, the header or a tensor runs past the end of the file.
    #[error("the GGUF file is cut short: {0}")]
    Truncated(String),
    /// A field holds something the format does not allow.
    #[error("invalid GGUF file: {0}")]
    Invalid(String),
    /// Valid GGUF that this converter does not turn into a model folder (an
    /// architecture, quantisation or tokenizer it does not know), named.
    #[error("{0}")]
    Unsupported(String),
}

/// Result alias for this module.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    /// An array of numbers or booleans, kept as the file's bytes (so it takes no more
    /// memory than the file gave it) and read by [`Value::integers`]/[`Value::floats`].
    Numbers {
        kind: NumberKind,
        bytes: Vec<u8>,
    },
    /// An array of strings.
    Strings(Vec<String>),
}

/// The element type of a [`Value::Numbers`] array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberKind {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Bool,
}

impl NumberKind {
    fn from_type(ty: u32) -> Option<Self> {
        Some(match ty {
            0 => NumberKind::U8,
            1 => NumberKind::I8,
            2 => NumberKind::U16,
            3 => NumberKind::I16,
            4 => NumberKind::U32,
            5 => NumberKind::I32,
            6 => NumberKind::F32,
            7 => NumberKind::Bool,
            10 => NumberKind::U64,
            11 => NumberKind::I64,
            12 => NumberKind::F64,
            _ => return None,
        })
    }

    /// Bytes one element takes.
    pub fn size(self) -> usize {
        match self {
            NumberKind::U8 | NumberKind::I8 | NumberKind::Bool => 1,
            NumberKind::U16 | NumberKind::I16 => 2,
            NumberKind::U32 | NumberKind::I32 | NumberKind::F32 => 4,
            NumberKind::U64 | NumberKind::I64 | NumberKind::F64 => 8,
        }
    }

    /// Element `bytes` (exactly [`NumberKind::size`] of them) as an integer; `None` for
    /// floats.
    fn integer(self, b: &[u8]) -> Option<i128> {
        Some(match self {
            NumberKind::U8 | NumberKind::Bool => i128::from(b[0]),
            NumberKind::I8 => i128::from(b[0] as i8),
            NumberKind::U16 => i128::from(u16::from_le_bytes([b[0], b[1]])),
            NumberKind::I16 => i128::from(i16::from_le_bytes([b[0], b[1]])),
            NumberKind::U32 => i128::from(u32::from_le_bytes(b.try_into().ok()?)),
            NumberKind::I32 => i128::from(i32::from_le_bytes(b.try_into().ok()?)),
            NumberKind::U64 => i128::from(u64::from_le_bytes(b.try_into().ok()?)),
            NumberKind::I64 => i128::from(i64::from_le_bytes(b.try_into().ok()?)),
            NumberKind::F32 | NumberKind::F64 => return None,
        })
    }
}

impl Value {
    /// The value as an integer, whatever integer type the file used.
    pub fn integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float (a float, or an integer the file wrote for one).
    pub fn float(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.integer().map(|v| v as f64),
        }
    }

    /// An array of integers as integers, in order.
    pub fn integers(&self) -> Option<Vec<i128>> {
        let Value::Numbers { kind, bytes } = self else {
            return None;
        };
        bytes
            .chunks_exact(kind.size())
            .map(|b| kind.integer(b))
            .collect()
    }

    /// What kind of value it is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::F32(_) | Value::F64(_) => "a float",
            Value::Numbers { .. } => "an array of numbers",
            Value::Strings(_) => "an array of strings",
            _ => "an integer",
        }
    }
}

/// ggml's element types: how a tensor's numbers are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    /// Blocks of 32: an f16 scale and 4-bit values centred on 8.
    Q4_0,
    /// Blocks of 32: an f16 scale, an f16 minimum and 4-bit values.
    Q4_1,
    /// Blocks of 32: an f16 scale and signed 8-bit values.
    Q8_0,
    /// Super-blocks of 256: 8 sub-blocks of 4-bit values with 6-bit scales and minima.
    Q4K,
    /// Super-blocks of 256: 16 sub-blocks of 6-bit values with 8-bit scales.
    Q6K,
    /// Any other type, by its number (named by [`GgmlType::name`] where known).
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// ggml's name for the type.
    pub fn name(self) -> String {
        let known = match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Other(id) => match id {
                6 => "Q5_0",
                7 => "Q5_1",
                9 => "Q8_1",
                10 => "Q2_K",
                11 => "Q3_K",
                13 => "Q5_K",
                15 => "Q8_K",
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                20 => "IQ4_NL",
                21 => "IQ3_S",
                22 => "IQ2_S",
                23 => "IQ4_XS",
                24 => "I8",
                25 => "I16",
                26 => "I32",
                27 => "I64",
                28 => "F64",
                29 => "IQ1_M",
                34 => "TQ1_0",
                35 => "TQ2_0",
                39 => "MXFP4",
                _ => return format!("type {id}"),
            },
        };
        known.to_owned()
    }

    /// (elements per block, bytes per block) of the types this reader understands.
    pub fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }
}

/// Names of the tensor types [`quant`] reads, for messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K";

/// One tensor as the header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Sizes, innermost (contiguous) first, as ggml orders them: the reverse of
    /// PyTorch's shape.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Where its data starts, from the start of the file.
    pub offset: u64,
    /// Bytes of data; `None` for a type this reader does not understand (its bytes
    /// were not checked, and it cannot be converted).
    pub bytes: Option<u64>,
}

impl TensorInfo {
    /// Elements in the tensor.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// PyTorch's shape: the dimensions outermost first.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A GGUF file's header: its metadata and what it says of its tensors, every tensor's
/// bytes within the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Where tensor data starts in the file.
    pub data_start: u64,
    pub alignment: u64,
}

impl Header {
    /// Reads the header from `prefix`, the first bytes of a file of `file_len` bytes.
    /// [`GgufError::NeedMore`] when `prefix` ends inside the header but the file goes
    /// on (up to [`HEADER_LIMIT`]): read more and call again.
    pub fn parse(prefix: &[u8], file_len: u64) -> Result<Self> {
        let mut r = Reader {
            bytes: prefix,
            at: 0,
            file_len,
        };
        let magic = r.take(4, "the magic number")?;
        if magic != MAGIC {
            return Err(GgufError::NotGguf(format!(
                "it starts with {magic:02x?}, not \"GGUF\""
            )));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::NotGguf(format!(
                "version {version} (this reader takes versions 2 and 3)"
            )));
        }
        let tensor_count = r.u64("the tensor count")?;
        let metadata_count = r.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..metadata_count {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.u32(&format!("the type of {key}"))?;
            let value = r.value(ty, &key)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Invalid(format!(
                    "metadata key {key} appears twice"
                )));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.integer() {
                Some(a) if a > 0 && a <= i128::from(ALIGNMENT_LIMIT) && (a & (a - 1)) == 0 => {
                    a as u64
                }
                _ => {
                    return Err(GgufError::Invalid(format!(
                        "general.alignment {v:?} is not a power of two up to {ALIGNMENT_LIMIT}"
                    )));
                }
            },
        };
        let mut tensors = Vec::new();
        for i in 0..tensor_count {
            tensors.push(r.tensor_info(i)?);
        }
        let end = r.at as u64;
        let data_start = end.div_ceil(alignment) * alignment;
        if data_start > file_len {
            return Err(GgufError::Truncated(
                "the file ends before its tensor data".to_owned(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for tensor in &mut tensors {
            if !names.insert(tensor.name.clone()) {
                return Err(GgufError::Invalid(format!(
                    "tensor {} appears twice",
                    tensor.name
                )));
            }
            if tensor.offset % alignment != 0 {
                return Err(GgufError::Invalid(format!(
                    "tensor {} starts at offset {}, not a multiple of the alignment {alignment}",
                    tensor.name, tensor.offset
                )));
            }
            let start = data_start.checked_add(tensor.offset);
            let end = start.zip(tensor.bytes).and_then(|(s, b)| s.checked_add(b));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensor.offset = start,
                (Some(start), None) if tensor.bytes.is_none() && start <= file_len => {
                    tensor.offset = start
                }
                _ => {
                    return Err(GgufError::Truncated(format!(
                        "tensor {} ({} bytes at offset {}) runs past the end of the file \
                         ({file_len} bytes)",
                        tensor.name,
                        tensor.bytes.map_or("unknown".to_owned(), |b| b.to_string()),
                        tensor.offset
                    )));
                }
            }
        }
        Ok(Header {
            version,
            metadata,
            tensors,
            data_start,
            alignment,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A string value; an error naming the key when it holds something else.
    pub fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_kind(key, other, "a string")),
        }
    }

    /// A non-negative integer value that fits `u64`.
    pub fn unsigned(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => match value.integer().map(u64::try_from) {
                Some(Ok(v)) => Ok(Some(v)),
                Some(Err(_)) => Err(GgufError::Invalid(format!(
                    "{key} is negative or too large"
                ))),
                None => Err(wrong_kind(key, value, "an integer")),
            },
        }
    }

    /// A float value (an integer is taken as one).
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => match value.float() {
                Some(v) => Ok(Some(v)),
                None => Err(wrong_kind(key, value, "a number")),
            },
        }
    }

    /// A boolean value.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_kind(key, other, "a boolean")),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<&[String]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Strings(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_kind(key, other, "an array of strings")),
        }
    }

    /// An array of integers.
    pub fn integers(&self, key: &str) -> Result<Option<Vec<i128>>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => match value.integers() {
                Some(v) => Ok(Some(v)),
                None => Err(wrong_kind(key, value, "an array of integers")),
            },
        }
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn wrong_kind(key: &str, value: &Value, want: &str) -> GgufError {
    GgufError::Invalid(format!("{key} is {}, not {want}", value.kind()))
}

/// A cursor over the header's bytes that tells a cut-off prefix (read more) from a
/// cut-off file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    file_len: u64,
}

impl Reader<'_> {
    /// What running out of bytes `what` means: more to read, or the file's end.
    fn short(&self, what: &str) -> GgufError {
        let have = self.bytes.len();
        if (have as u64) < self.file_len && have < HEADER_LIMIT {
            GgufError::NeedMore(have)
        } else if have >= HEADER_LIMIT {
            GgufError::Invalid(format!(
                "the header is larger than {} MiB ({what} is past it)",
                HEADER_LIMIT >> 20
            ))
        } else {
            GgufError::Truncated(format!("the file ends inside {what}"))
        }
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&[u8]> {
        match usize::try_from(n) {
            Ok(n) if n <= self.left() => {
                let out = &self.bytes[self.at..self.at + n];
                self.at += n;
                Ok(out)
            }
            // More than the file holds is a lie, not a prefix to extend.
            _ if n > self.file_len.saturating_sub(self.at as u64) => Err(GgufError::Truncated(
                format!("{what} declares {n} bytes, more than the file has left"),
            )),
            _ => Err(self.short(what)),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::Invalid(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<Value> {
        Ok(match ty {
            8 => Value::Str(self.string(key)?),
            9 => self.array(key)?,
            _ => {
                let kind = NumberKind::from_type(ty).ok_or_else(|| {
                    GgufError::Invalid(format!(
                        "{key} has value type {ty}, which GGUF does not define"
                    ))
                })?;
                let b = self.take(kind.size() as u64, key)?;
                scalar(kind, b, key)?
            }
        })
    }

    fn array(&mut self, key: &str) -> Result<Value> {
        let ty = self.u32(key)?;
        let count = self.u64(key)?;
        match ty {
            8 => {
                // Each string takes at least its 8-byte length: a count the bytes left
                // cannot hold is refused before anything is allocated for it.
                let most = self.file_len.saturating_sub(self.at as u64) / 8;
                if count > most {
                    return Err(GgufError::Truncated(format!(
                        "{key} declares {count} strings, more than the file has room for"
                    )));
                }
                let mut strings = Vec::new();
                for i in 0..count {
                    strings.push(self.string(&format!("{key}[{i}]"))?);
                }
                Ok(Value::Strings(strings))
            }
            9 => Err(GgufError::Unsupported(format!(
                "{key} is an array of arrays, which this reader does not take"
            ))),
            _ => {
                let kind = NumberKind::from_type(ty).ok_or_else(|| {
                    GgufError::Invalid(format!(
                        "{key} is an array of type {ty}, which GGUF does not define"
                    ))
                })?;
                let len = count.checked_mul(kind.size() as u64).ok_or_else(|| {
                    GgufError::Truncated(format!("{key} declares {count} elements"))
                })?;
                let bytes = self.take(len, key)?.to_vec();
                if kind == NumberKind::Bool && bytes.iter().any(|&b| b > 1) {
                    return Err(GgufError::Invalid(format!(
                        "{key} holds a boolean other than 0 or 1"
                    )));
                }
                Ok(Value::Numbers { kind, bytes })
            }
        }
    }

    fn tensor_info(&mut self, i: u64) -> Result<TensorInfo> {
        let what = format!("tensor description {i}");
        let len = self.u64(&what)?;
        if len > NAME_LIMIT {
            return Err(GgufError::Invalid(format!(
                "{what} has a name of {len} bytes (at most {NAME_LIMIT})"
            )));
        }
        let name = String::from_utf8(self.take(len, &what)?.to_vec())
            .map_err(|_| GgufError::Invalid(format!("the name of {what} is not UTF-8")))?;
        let n_dims = self.u32(&name)?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(GgufError::Invalid(format!(
                "tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&name)?);
        }
        let ggml_type = GgmlType::from_id(self.u32(&name)?);
        let offset = self.u64(&name)?;
        let elements = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .filter(|&n| n > 0 && n <= TENSOR_ELEMENTS_LIMIT)
            .ok_or_else(|| {
                GgufError::Invalid(format!(
                    "tensor {name} has dimensions {dims:?}: empty, or more than \
                     {TENSOR_ELEMENTS_LIMIT} elements"
                ))
            })?;
        let bytes = match ggml_type.block() {
            None => None,
            Some((per_block, block_bytes)) => {
                if dims[0] % per_block != 0 {
                    return Err(GgufError::Invalid(format!(
                        "tensor {name} is {} with rows of {} elements, not a multiple of its \
                         blocks of {per_block}",
                        ggml_type.name(),
                        dims[0]
                    )));
                }
                Some(elements / per_block * block_bytes)
            }
        };
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            bytes,
        })
    }
}

fn scalar(kind: NumberKind, b: &[u8], key: &str) -> Result<Value> {
    let mut a = [0u8; 8];
    a[..b.len()].copy_from_slice(b);
    Ok(match kind {
        NumberKind::U8 => Value::U8(b[0]),
        NumberKind::I8 => Value::I8(b[0] as i8),
        NumberKind::U16 => Value::U16(u16::from_le_bytes([b[0], b[1]])),
        NumberKind::I16 => Value::I16(i16::from_le_bytes([b[0], b[1]])),
        NumberKind::U32 => Value::U32(u32::from_le_bytes([a[0], a[1], a[2], a[3]])),
        NumberKind::I32 => Value::I32(i32::from_le_bytes([a[0], a[1], a[2], a[3]])),
        NumberKind::F32 => Value::F32(f32::from_le_bytes([a[0], a[1], a[2], a[3]])),
        NumberKind::U64 => Value::U64(u64::from_le_bytes(a)),
        NumberKind::I64 => Value::I64(i64::from_le_bytes(a)),
        NumberKind::F64 => Value::F64(f64::from_le_bytes(a)),
        NumberKind::Bool => match b[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => {
                return Err(GgufError::Invalid(format!(
                    "{key} is a boolean of value {other}"
                )));
            }
        },
    })
}

/// Writes GGUF files in tests: the same layout the parser reads, built from parts so a
/// test can make any of them lie.
#[cfg(test)]
pub(crate) mod testing {
    /// A metadata value as written.
    #[derive(Debug, Clone)]
    pub(crate) enum Put {
        U32(u32),
        F32(f32),
        Bool(bool),
        Str(String),
        Strings(Vec<String>),
        I32s(Vec<i32>),
    }

    /// A tensor as written: name, dims (innermost first), type id, data.
    #[derive(Debug, Clone)]
    pub(crate) struct PutTensor {
        pub(crate) name: String,
        pub(crate) dims: Vec<u64>,
        pub(crate) ty: u32,
        pub(crate) data: Vec<u8>,
    }

    pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A whole GGUF v3 file with 32-byte alignment, tensors laid out in order.
    pub(crate) fn file(metadata: &[(&str, Put)], tensors: &[PutTensor]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            string(&mut out, key);
            match value {
                Put::U32(v) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Put::F32(v) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Put::Bool(v) => {
                    out.extend_from_slice(&7u32.to_le_bytes());
                    out.push(u8::from(*v));
                }
                Put::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Put::Strings(list) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(list.len() as u64).to_le_bytes());
                    for s in list {
                        string(&mut out, s);
                    }
                }
                Put::I32s(list) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&5u32.to_le_bytes());
                    out.extend_from_slice(&(list.len() as u64).to_le_bytes());
                    for v in list {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        for t in tensors {
            string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for t in tensors {
            out.extend_from_slice(&t.data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Put, PutTensor, file};
    use super::*;

    fn f32_tensor(name: &str, dims: Vec<u64>) -> PutTensor {
        let n: u64 = dims.iter().product();
        PutTensor {
            name: name.into(),
            dims,
            ty: 0,
            data: (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect(),
        }
    }

    fn sample() -> Vec<u8> {
        file(
            &[
                ("general.architecture", Put::Str("llama".into())),
                ("llama.block_count", Put::U32(2)),
                ("llama.rope.freq_base", Put::F32(10000.0)),
                ("tokenizer.ggml.add_bos_token", Put::Bool(true)),
                (
                    "tokenizer.ggml.tokens",
                    Put::Strings(vec!["a".into(), "b".into()]),
                ),
                ("tokenizer.ggml.token_type", Put::I32s(vec![1, 3])),
            ],
            &[
                f32_tensor("w", vec![3, 2]),
                PutTensor {
                    name: "q".into(),
                    dims: vec![32],
                    ty: 8,
                    data: vec![0; 34],
                },
            ],
        )
    }

    #[test]
    fn reads_metadata_and_tensor_descriptions() {
        let bytes = sample();
        let header = Header::parse(&bytes, bytes.len() as u64).unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(
            header.string("general.architecture").unwrap(),
            Some("llama")
        );
        assert_eq!(header.unsigned("llama.block_count").unwrap(), Some(2));
        assert_eq!(header.float("llama.rope.freq_base").unwrap(), Some(10000.0));
        assert_eq!(
            header.boolean("tokenizer.ggml.add_bos_token").unwrap(),
            Some(true)
        );
        assert_eq!(
            header.strings("tokenizer.ggml.tokens").unwrap().unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            header
                .integers("tokenizer.ggml.token_type")
                .unwrap()
                .unwrap(),
            [1, 3]
        );
        // A key of another kind is an error naming it.
        let err = header.string("llama.block_count").unwrap_err().to_string();
        assert!(err.contains("llama.block_count"), "{err}");
        let w = header.tensor("w").unwrap();
        assert_eq!(w.shape(), [2, 3]);
        assert_eq!(w.bytes, Some(24));
        assert_eq!(w.offset, header.data_start);
        assert_eq!(header.data_start % 32, 0);
        let q = header.tensor("q").unwrap();
        assert_eq!(q.ggml_type, GgmlType::Q8_0);
        assert_eq!(q.bytes, Some(34));
        assert_eq!(q.offset, header.data_start + 32);
        let data = &bytes[w.offset as usize..][..24];
        assert_eq!(&data[4..8], &1f32.to_le_bytes());
    }

    #[test]
    fn a_prefix_asks_for_more_and_a_cut_file_is_truncated() {
        let bytes = sample();
        let len = bytes.len() as u64;
        let header_end = Header::parse(&bytes, len).unwrap().data_start as usize;
        for cut in [0, 3, 10, 30, 60, header_end - 40] {
            assert_eq!(
                Header::parse(&bytes[..cut], len),
                Err(GgufError::NeedMore(cut)),
                "prefix of {cut}"
            );
            // The same bytes as the whole file: cut short.
            let err = Header::parse(&bytes[..cut], cut as u64).unwrap_err();
            assert!(
                matches!(err, GgufError::Truncated(_) | GgufError::NotGguf(_)),
                "{cut}: {err}"
            );
        }
        // The header whole but the last tensor's data cut off.
        let q_end = Header::parse(&bytes, len).unwrap().tensors[1].offset as usize + 34;
        let err = Header::parse(&bytes[..q_end - 1], q_end as u64 - 1).unwrap_err();
        assert!(
            matches!(&err, GgufError::Truncated(m) if m.contains("tensor q")),
            "{err}"
        );
    }

    /// Counts and lengths that claim more than the file holds are refused before
    /// anything is allocated for them, and nothing here panics.
    #[test]
    fn lying_counts_and_lengths_are_refused() {
        let mut head = b"GGUF".to_vec();
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&0u64.to_le_bytes());
        head.extend_from_slice(&1u64.to_le_bytes());
        let with = |tail: &[u8]| {
            let mut f = head.clone();
            f.extend_from_slice(tail);
            f
        };
        let key = |k: &str| {
            let mut out = Vec::new();
            testing::string(&mut out, k);
            out
        };
        // A string array of 2^60 strings in a few bytes.
        let mut tail = key("k");
        tail.extend_from_slice(&9u32.to_le_bytes());
        tail.extend_from_slice(&8u32.to_le_bytes());
        tail.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let f = with(&tail);
        let err = Header::parse(&f, f.len() as u64).unwrap_err();
        assert!(matches!(err, GgufError::Truncated(_)), "{err}");
        // A u64 array whose byte length overflows.
        let mut tail = key("k");
        tail.extend_from_slice(&9u32.to_le_bytes());
        tail.extend_from_slice(&10u32.to_le_bytes());
        tail.extend_from_slice(&u64::MAX.to_le_bytes());
        let f = with(&tail);
        assert!(Header::parse(&f, f.len() as u64).is_err());
        // A key of 2^40 bytes, as a whole file and as the prefix of a longer one; of
        // u64::MAX bytes, more than any file.
        let mut tail = (1u64 << 40).to_le_bytes().to_vec();
        tail.extend_from_slice(b"k");
        let f = with(&tail);
        assert!(matches!(
            Header::parse(&f, f.len() as u64),
            Err(GgufError::Truncated(_))
        ));
        assert!(matches!(
            Header::parse(&f, u64::MAX),
            Err(GgufError::NeedMore(_))
        ));
        let mut tail = u64::MAX.to_le_bytes().to_vec();
        tail.extend_from_slice(b"k");
        let f = with(&tail);
        assert!(matches!(
            Header::parse(&f, u64::MAX),
            Err(GgufError::Truncated(_))
        ));
        // A header past the limit.
        let mut long = vec![0u8; HEADER_LIMIT];
        long[..f.len()].copy_from_slice(&f);
        long[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            Header::parse(&long, u64::MAX),
            Err(GgufError::Invalid(_))
        ));
        // A value type GGUF does not define; an array of arrays; a bad boolean.
        for (ty, rest) in [
            (13u32, vec![]),
            (9, 9u32.to_le_bytes().to_vec()),
            (7, vec![2]),
        ] {
            let mut tail = key("k");
            tail.extend_from_slice(&ty.to_le_bytes());
            tail.extend_from_slice(&rest);
            tail.extend_from_slice(&[0; 16]);
            let f = with(&tail);
            assert!(Header::parse(&f, f.len() as u64).is_err(), "type {ty}");
        }
        // A tensor count of 2^62 with no descriptions.
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&(1u64 << 62).to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            Header::parse(&f, f.len() as u64),
            Err(GgufError::Truncated(_))
        ));
    }

    #[test]
    fn tensors_must_fit_the_file_and_their_blocks() {
        let tensor = |dims: Vec<u64>, ty: u32, data: Vec<u8>| {
            file(
                &[],
                &[PutTensor {
                    name: "t".into(),
                    dims,
                    ty,
                    data,
                }],
            )
        };
        // Declared larger than the data that follows.
        let f = tensor(vec![1 << 20], 0, vec![0; 16]);
        let err = Header::parse(&f, f.len() as u64).unwrap_err();
        assert!(matches!(err, GgufError::Truncated(_)), "{err}");
        // Elements overflowing u64; zero elements; five dimensions.
        for dims in [vec![u64::MAX, 4], vec![0], vec![1, 1, 1, 1, 1]] {
            let f = tensor(dims.clone(), 0, vec![0; 4]);
            assert!(
                matches!(
                    Header::parse(&f, f.len() as u64),
                    Err(GgufError::Invalid(_))
                ),
                "{dims:?}"
            );
        }
        // A Q8_0 row that is not whole blocks.
        let f = tensor(vec![31], 8, vec![0; 34]);
        assert!(Header::parse(&f, f.len() as u64).is_err());
        // An unknown type parses (its size is unknown) and is named.
        let f = tensor(vec![32], 13, vec![0; 64]);
        let header = Header::parse(&f, f.len() as u64).unwrap();
        assert_eq!(header.tensors[0].bytes, None);
        assert_eq!(header.tensors[0].ggml_type.name(), "Q5_K");
        // A misaligned offset.
        let mut f = tensor(vec![8], 0, vec![0; 32]);
        assert!(Header::parse(&f, f.len() as u64).is_ok());
        // After the fixed fields (24 bytes), the name (8 + 1), dimension count (4),
        // one dimension (8) and the type (4).
        let offset_at = 24 + 8 + 1 + 4 + 8 + 4;
        f[offset_at..offset_at + 8].copy_from_slice(&4u64.to_le_bytes());
        let err = Header::parse(&f, f.len() as u64).unwrap_err().to_string();
        assert!(err.contains("alignment"), "{err}");
    }

    #[test]
    fn not_gguf_and_other_versions_are_named() {
        let err = Header::parse(b"PK\x03\x04rest", 8).unwrap_err().to_string();
        assert!(err.contains("not a GGUF file"), "{err}");
        let mut f = sample();
        f[4..8].copy_from_slice(&1u32.to_le_bytes());
        let err = Header::parse(&f, f.len() as u64).unwrap_err().to_string();
        assert!(err.contains("version 1"), "{err}");
    }
}
