//! The inference protocol, `/ipfs-accelerate/infer/1.0.0`: messages and the DHT service key.
//!
//! # Spec
//!
//! A client opens one stream to a peer that serves a model and keeps it: it sends its
//! [`InferRequest`]s on it back to back, and the server answers each with an
//! [`InferResponse`] as soon as it is done, in any order; the request id pairs them. Every
//! message is one frame ([`encode_frame`]): an unsigned varint length, then that many bytes
//! of CBOR (serde). Keeping the stream saves a stream negotiation per request, which is
//! most of a small request's latency.
//!
//! - Limits: a request is at most [`INFER_REQUEST_LIMIT`] encoded bytes, a response at most
//!   [`INFER_RESPONSE_LIMIT`]; a peer announcing a larger frame, or sending one that does
//!   not decode, has its stream closed. Decoding counts as it goes: a request carries at
//!   most [`INFER_ROWS_LIMIT`] inputs and a tensor at most [`TENSOR_DIMS_LIMIT`]
//!   dimensions, so a decoded message takes a small multiple of its frame's bytes
//!   (strings and ids cost their bytes, a token id at most 4 bytes per byte received).
//! - Tensors carry little-endian bytes with a dtype and shape; [`Tensor::check`] verifies
//!   that the byte length matches before any element is read, and [`Tensor::matrix`]
//!   gives a row count only when bytes back it (a `[2^50, 0]` shape holds no bytes).
//! - Errors carry an [`ErrorCode`]; `Busy` comes with `retry_after_ms` and the server's
//!   [`Load`], so the client can pick another provider or wait.
//! - Discovery: a server provides [`service_key`] of each model it serves on the DHT, which
//!   is distinct from the model's root CID (that key means "I have the blocks").
//!
//! [`INFER_REQUEST_LIMIT`]: crate::limits::INFER_REQUEST_LIMIT
//! [`INFER_RESPONSE_LIMIT`]: crate::limits::INFER_RESPONSE_LIMIT
//! [`INFER_ROWS_LIMIT`]: crate::limits::INFER_ROWS_LIMIT
//! [`TENSOR_DIMS_LIMIT`]: crate::limits::TENSOR_DIMS_LIMIT

use std::fmt;

use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};
use serde::{Deserialize, Serialize};

use crate::codec::RAW;

/// The bytes of an encoded image in [`Inputs::Images`].
pub use serde_bytes::ByteBuf;

/// The libp2p protocol id of inference requests.
pub const INFER_PROTOCOL: &str = "/ipfs-accelerate/infer/1.0.0";

/// Prefix hashed with a model's CID bytes to derive its [`service_key`].
pub const SERVICE_KEY_PREFIX: &[u8] = b"/ipfs-accelerate/infer-service/1/";

/// The DHT key meaning "this peer serves inference for `model`", distinct from the content
/// key (the root CID itself): a raw CIDv1 whose sha2-256 multihash is over
/// [`SERVICE_KEY_PREFIX`] followed by `model.to_bytes()`.
pub fn service_key(model: &Cid) -> Cid {
    let model = model.to_bytes();
    let mut preimage = Vec::with_capacity(SERVICE_KEY_PREFIX.len() + model.len());
    preimage.extend_from_slice(SERVICE_KEY_PREFIX);
    preimage.extend_from_slice(&model);
    Cid::new_v1(RAW, Code::Sha2_256.digest(&preimage))
}

/// One inference call: run `task` of `model` on `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Chosen by the client; echoed in the response.
    pub id: u64,
    /// Root CID of the model's folder.
    pub model: Cid,
    pub task: Task,
    pub inputs: Inputs,
    #[serde(default)]
    pub options: InferOptions,
    /// ms the caller still waits; 0 = no deadline stated
    #[serde(default)]
    pub deadline_ms: u32,
}

/// What the model is asked to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One embedding vector per input.
    Embed,
    /// Text generated after one prompt ([`Inputs::Prompt`] or [`Inputs::Messages`]),
    /// streamed as [`Delta`]s before the final answer.
    Generate,
    /// The most likely labels of each image ([`Inputs::Images`]).
    Classify,
}

/// The inputs of a request, in the most convenient form the client has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inputs {
    /// Raw texts; the server tokenizes them with the model's tokenizer.
    Texts(#[serde(deserialize_with = "bounded::rows")] Vec<String>),
    /// Already tokenized: one row of ids and one attention-mask row per input.
    Tokens {
        #[serde(deserialize_with = "bounded::rows")]
        ids: Vec<Vec<u32>>,
        #[serde(deserialize_with = "bounded::rows")]
        attention_mask: Vec<Vec<u32>>,
    },
    /// A ready input tensor.
    Tensor(Tensor),
    /// For [`Task::Generate`]: the prompt, tokenized by the server.
    Prompt(String),
    /// For [`Task::Generate`]: chat messages, made into a prompt by the model's chat
    /// template.
    Messages(#[serde(deserialize_with = "bounded::rows")] Vec<Message>),
    /// For [`Task::Classify`]: encoded images (JPEG or PNG), one per input.
    Images(#[serde(deserialize_with = "bounded::rows")] Vec<ByteBuf>),
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// Options of a request; `None` means the model's default (generation_config.json's
/// for generation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InferOptions {
    /// L2-normalize embeddings.
    pub normalize: Option<bool>,
    /// Generation: new tokens at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Generation: 0 is greedy; above 0 samples at that temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Generation: nucleus sampling's share of the probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Generation: sample among this many most likely tokens; 0 for all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Generation: above 1 discourages repeating tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Generation: the sampler's seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Generation: text that ends the answer (left out of it).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "bounded::rows"
    )]
    pub stop: Vec<String>,
    /// Generation: tokens already generated after this prompt (by a provider that went
    /// away); the server continues after them, and they count toward `max_tokens`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resume: Vec<u32>,
    /// Classification: labels per image, most likely first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<u32>,
}

/// A dense tensor: dtype, shape and little-endian element bytes in row-major order.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub dtype: DType,
    #[serde(deserialize_with = "bounded::dims")]
    pub shape: Vec<u64>,
    /// Little-endian bytes; a CBOR byte string on the wire, not a list of numbers.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Element types a [`Tensor`] can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
    I32,
    U32,
    U8,
}

/// Why a [`Tensor`]'s bytes cannot be read as its dtype and shape says.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    /// Multiplying the dimensions (or the element count by the element size) overflows.
    #[error("tensor shape {shape:?} has more elements than this machine can address")]
    ShapeOverflow { shape: Vec<u64> },
    /// [`Tensor::from_f32`] got a different number of values than the shape holds.
    #[error("tensor shape {shape:?} holds {expected} values but {actual} were given")]
    ValueCount {
        shape: Vec<u64>,
        expected: usize,
        actual: usize,
    },
    /// The data is not exactly element count times element size bytes.
    #[error("{dtype} tensor of shape {shape:?} needs {expected} bytes but has {actual}")]
    DataLength {
        dtype: DType,
        shape: Vec<u64>,
        expected: usize,
        actual: usize,
    },
    /// The tensor holds another element type than the caller reads.
    #[error("expected a {expected} tensor, got {actual}")]
    WrongDType { expected: DType, actual: DType },
    /// Rows were asked of a tensor that is not 2-D.
    #[error("expected a 2-D tensor [rows, width], got shape {shape:?}")]
    NotMatrix { shape: Vec<u64> },
    /// Rows of width 0 carry no data, so nothing received backs their count: a huge row
    /// count of them would only size allocations.
    #[error("tensor shape {shape:?} has rows of width 0; each row needs at least one element")]
    ZeroWidth { shape: Vec<u64> },
}

/// The server's answer to one [`InferRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferResponse {
    Ok(InferOutput),
    Err(InferError),
    /// Part of a generation's text, sent before its final `Ok` (or `Err`).
    Delta(Delta),
}

/// New tokens of a generation and their text. A delta's tokens are those whose text is
/// all out: its own text and earlier deltas' hold all of it and nothing of later
/// tokens, so a generation can resume elsewhere after the last delta received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The request's id.
    pub id: u64,
    pub tokens: Vec<u32>,
    pub text: String,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop sequence appeared (the text ends before it).
    Stop,
    /// `max_tokens` or the model's context ran out.
    Length,
    /// The model ended the text.
    Eos,
}

/// What the final answer of a generation adds: why it ended and what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generated {
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    /// New tokens, those of a resumed generation included.
    pub completion_tokens: u32,
    /// From the request's arrival to its first token.
    pub first_token_us: u64,
}

/// A class of an image's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassLabel {
    /// The class's index in the model's output.
    pub id: u32,
    pub label: String,
}

/// What a client sends on the stream: requests, and cancellations of requests it no
/// longer waits for (a generation stops at its next step).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Request(InferRequest),
    Cancel(u64),
}

/// A cancellation's wire form: a map with the one key `cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub cancel: u64,
}

/// A successful inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferOutput {
    /// The request's id.
    pub id: u64,
    /// The model that ran.
    pub model: Cid,
    /// For [`Task::Embed`]: F32 of shape `[inputs, dimensions]`.
    pub output: Tensor,
    /// e.g. "cpu", "wgpu"
    pub backend: String,
    /// Time the request waited in the queue.
    pub queue_us: u64,
    /// Time the model computed (for the whole batch this request ran in).
    pub compute_us: u64,
    pub load: Load,
    /// For [`Task::Generate`], whose `output` is the new token ids, U32 `[1, n]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generated>,
    /// For [`Task::Classify`], whose `output` is F32 `[images, k]` probabilities: the
    /// labels of those scores, row by row.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "bounded::rows"
    )]
    pub labels: Vec<Vec<ClassLabel>>,
    /// For [`Task::Embed`]: the tokens the inputs made, what OpenAI's API reports as
    /// usage. Absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u32>,
}

/// A server's load for one model, so clients can spread their requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// requests waiting in this model's queue
    pub queued: u32,
    /// Requests the queue holds before the server answers `Busy`.
    pub capacity: u32,
    /// Workers running this model.
    pub workers: u32,
}

/// A failed inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("inference request {id} failed ({code}): {message}")]
pub struct InferError {
    /// The request's id.
    pub id: u64,
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// For `Busy`: when trying this server again is worthwhile.
    pub retry_after_ms: Option<u32>,
    pub load: Option<Load>,
}

/// What kind of failure an [`InferError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The server does not serve this model (any more).
    UnknownModel,
    /// The model's queue is full.
    Busy,
    /// The inputs do not fit the model or the task.
    BadInput,
    /// The request or its output is over a limit.
    TooLarge,
    /// This peer may not use the server.
    Unauthorized,
    /// The server failed on its own.
    Internal,
}

impl DType {
    /// Bytes of one element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::I64 => 8,
        }
    }

    /// The name used on the wire, e.g. `f32`.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U8 => "u8",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Tensor {
    /// An F32 tensor of `shape` holding `values` in row-major order.
    pub fn from_f32(shape: Vec<u64>, values: &[f32]) -> Result<Tensor, TensorError> {
        let expected = element_count(&shape)?;
        if expected != values.len() {
            return Err(TensorError::ValueCount {
                shape,
                expected,
                actual: values.len(),
            });
        }
        let mut data = Vec::with_capacity(values.len() * DType::F32.size_bytes());
        for value in values {
            data.extend_from_slice(&value.to_le_bytes());
        }
        Ok(Tensor {
            dtype: DType::F32,
            shape,
            data,
        })
    }

    /// The number of elements the shape holds.
    pub fn element_count(&self) -> Result<usize, TensorError> {
        element_count(&self.shape)
    }

    /// Checks that the data is exactly element count times element size bytes; a tensor
    /// from a peer must pass this before anything reads its elements.
    pub fn check(&self) -> Result<(), TensorError> {
        let expected = self
            .element_count()?
            .checked_mul(self.dtype.size_bytes())
            .ok_or_else(|| TensorError::ShapeOverflow {
                shape: self.shape.clone(),
            })?;
        if expected != self.data.len() {
            return Err(TensorError::DataLength {
                dtype: self.dtype,
                shape: self.shape.clone(),
                expected,
                actual: self.data.len(),
            });
        }
        Ok(())
    }

    /// The elements of an F32 tensor, in row-major order.
    pub fn to_f32(&self) -> Result<Vec<f32>, TensorError> {
        if self.dtype != DType::F32 {
            return Err(TensorError::WrongDType {
                expected: DType::F32,
                actual: self.dtype,
            });
        }
        self.check()?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// `[rows, width]` of a 2-D tensor whose bytes hold every element (it passes
    /// [`Tensor::check`]) and whose rows, if any, are at least one element wide. Then
    /// `rows` is at most the number of bytes received, so it may size an allocation; a
    /// shape alone, e.g. `[2^50, 0]` with no data, must never do that.
    pub fn matrix(&self) -> Result<(usize, usize), TensorError> {
        let &[rows, width] = self.shape.as_slice() else {
            return Err(TensorError::NotMatrix {
                shape: self.shape.clone(),
            });
        };
        self.check()?;
        if rows > 0 && width == 0 {
            return Err(TensorError::ZeroWidth {
                shape: self.shape.clone(),
            });
        }
        // `check` passed and every dimension is non-zero or the rows are empty, so both
        // fit in usize (the empty case: `rows` is 0).
        let fit = |dim: u64| {
            usize::try_from(dim).map_err(|_| TensorError::ShapeOverflow {
                shape: self.shape.clone(),
            })
        };
        Ok((fit(rows)?, fit(width)?))
    }

    /// The rows of a 2-D F32 tensor: shape `[n, d]` gives `n` rows of `d` values.
    pub fn rows_f32(&self) -> Result<Vec<Vec<f32>>, TensorError> {
        let (rows, width) = self.matrix()?;
        let values = self.to_f32()?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        Ok(values.chunks_exact(width).map(<[f32]>::to_vec).collect())
    }
}

impl fmt::Debug for Tensor {
    // The data can be megabytes; a log line needs its size, not its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// A message that could not be encoded (only when memory runs out).
#[derive(Debug, thiserror::Error)]
#[error("encoding an inference message: {0}")]
pub struct EncodeError(String);

/// A frame's body that is not the CBOR of the expected message.
#[derive(Debug, thiserror::Error)]
#[error("decoding an inference message: {0}")]
pub struct DecodeError(String);

/// One message as it goes on the stream: the length of its CBOR as an unsigned varint,
/// then the CBOR.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, EncodeError> {
    let body =
        cbor4ii::serde::to_vec(Vec::new(), message).map_err(|e| EncodeError(e.to_string()))?;
    let mut length = unsigned_varint::encode::usize_buffer();
    let length = unsigned_varint::encode::usize(body.len(), &mut length);
    let mut frame = Vec::with_capacity(length.len() + body.len());
    frame.extend_from_slice(length);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// A frame's body (without its length) as a message.
pub fn decode_message<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    cbor4ii::serde::from_slice(body).map_err(|e| DecodeError(e.to_string()))
}

/// Why a request frame's body is not a request the server can run.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body is a request with this id whose contents are over a wire limit or do not
    /// fit the message: the sender gets an answer, and the stream stays open.
    #[error("request {id} refused ({code}): {message}")]
    Refused {
        id: u64,
        code: ErrorCode,
        message: String,
    },
    /// The body is not a request at all: the stream is closed.
    #[error(transparent)]
    Garbage(#[from] DecodeError),
}

/// A request frame's body (without its length) as a request. When the request does
/// not decode but its id does (skipping the rest allocates nothing), the error says
/// which request to refuse: `TooLarge` over a wire limit, `BadInput` otherwise.
pub fn decode_request(body: &[u8]) -> Result<InferRequest, RequestError> {
    #[derive(Deserialize)]
    struct Id {
        id: u64,
    }
    let error = match decode_message::<InferRequest>(body) {
        Ok(request) => return Ok(request),
        Err(error) => error,
    };
    match decode_message::<Id>(body) {
        Ok(Id { id }) => Err(RequestError::Refused {
            id,
            code: if error.0.contains(bounded::OVER_LIMIT) {
                ErrorCode::TooLarge
            } else {
                ErrorCode::BadInput
            },
            message: error.to_string(),
        }),
        Err(_) => Err(RequestError::Garbage(error)),
    }
}

/// A client frame's body (without its length): a [`Cancel`], or a request as
/// [`decode_request`] reads it.
pub fn decode_client_frame(body: &[u8]) -> Result<ClientFrame, RequestError> {
    match decode_request(body) {
        Ok(request) => Ok(ClientFrame::Request(request)),
        Err(RequestError::Garbage(error)) => match decode_message::<Cancel>(body) {
            Ok(Cancel { cancel }) => Ok(ClientFrame::Cancel(cancel)),
            Err(_) => Err(RequestError::Garbage(error)),
        },
        Err(refused) => Err(refused),
    }
}

impl InferRequest {
    /// Bytes of the request's CBOR, which the server's request limit applies to.
    pub fn encoded_len(&self) -> usize {
        cbor4ii::serde::to_vec(Vec::new(), self).map_or(usize::MAX, |bytes| bytes.len())
    }
}

impl Inputs {
    /// The task these inputs are for: a prompt or messages generate, images are
    /// classified, texts and tokens embedded.
    pub fn task(&self) -> Task {
        match self {
            Inputs::Prompt(_) | Inputs::Messages(_) => Task::Generate,
            Inputs::Images(_) => Task::Classify,
            Inputs::Texts(_) | Inputs::Tokens { .. } | Inputs::Tensor(_) => Task::Embed,
        }
    }

    /// How many inputs the request carries; an embedding answer has one row for each.
    pub fn rows(&self) -> u64 {
        match self {
            Inputs::Texts(texts) => texts.len() as u64,
            Inputs::Tokens { ids, .. } => ids.len() as u64,
            Inputs::Tensor(tensor) => tensor.shape.first().copied().unwrap_or(0),
            Inputs::Prompt(_) | Inputs::Messages(_) => 1,
            Inputs::Images(images) => images.len() as u64,
        }
    }
}

impl InferOutput {
    /// Checks an answer against the request it claims to answer: its id, its model,
    /// and for [`Task::Embed`] a well-formed F32 matrix with one non-empty row per
    /// input. A peer's answer must pass this before it is used.
    pub fn check_answers(&self, request: &InferRequest) -> Result<(), String> {
        if self.id != request.id {
            return Err(format!("answer to request {}, not {}", self.id, request.id));
        }
        if self.model != request.model {
            return Err(format!(
                "answer from model {}, not {}",
                self.model, request.model
            ));
        }
        self.output.check().map_err(|e| e.to_string())?;
        match request.task {
            Task::Embed => {
                let rows = request.inputs.rows();
                let fits = self.output.dtype == DType::F32
                    && matches!(self.output.shape[..], [n, width] if n == rows && width > 0);
                if !fits {
                    return Err(format!(
                        "a {} tensor of shape {:?} for {rows} inputs; expected f32 [{rows}, dimensions]",
                        self.output.dtype, self.output.shape
                    ));
                }
            }
            Task::Generate => self.check_generation(request)?,
            Task::Classify => self.check_labels(request)?,
        }
        Ok(())
    }

    /// A generation's answer: U32 `[1, n]` token ids that begin with the tokens it
    /// resumed after, and a summary counting them.
    fn check_generation(&self, request: &InferRequest) -> Result<(), String> {
        let generation = self
            .generation
            .ok_or("a generation's answer without its summary")?;
        let (dtype, shape) = (self.output.dtype, &self.output.shape);
        let tokens = match shape[..] {
            [1, n] if dtype == DType::U32 => n,
            _ => {
                return Err(format!(
                    "a {dtype} tensor of shape {shape:?}; expected u32 [1, tokens]"
                ));
            }
        };
        if u64::from(generation.completion_tokens) != tokens {
            return Err(format!(
                "{tokens} token ids for {} completion tokens",
                generation.completion_tokens
            ));
        }
        let resumed = &request.options.resume;
        if !self
            .output_u32()
            .take(resumed.len())
            .eq(resumed.iter().copied())
        {
            return Err("the tokens do not begin with those it resumed after".into());
        }
        Ok(())
    }

    /// A classification's answer: F32 `[images, k]` and `k` labels for each image, no
    /// more than were asked for.
    fn check_labels(&self, request: &InferRequest) -> Result<(), String> {
        let rows = request.inputs.rows();
        let (dtype, shape) = (self.output.dtype, &self.output.shape);
        let asked = request.options.labels.map_or(u64::MAX, u64::from);
        let width = match shape[..] {
            [n, k] if dtype == DType::F32 && n == rows && k > 0 && k <= asked => k,
            _ => {
                return Err(format!(
                    "a {dtype} tensor of shape {shape:?} for {rows} images; expected f32 \
                     [{rows}, labels]"
                ));
            }
        };
        let fits = self.labels.len() as u64 == rows
            && self.labels.iter().all(|row| row.len() as u64 == width);
        if !fits {
            return Err(format!("labels do not match the scores' shape {shape:?}"));
        }
        Ok(())
    }

    /// The elements of a U32 output, in order (none when it is another dtype).
    pub fn output_u32(&self) -> impl Iterator<Item = u32> + '_ {
        let data = match self.output.dtype {
            DType::U32 => &self.output.data[..],
            _ => &[],
        };
        data.chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl InferResponse {
    /// The id of the request this answers.
    pub fn id(&self) -> u64 {
        match self {
            InferResponse::Ok(out) => out.id,
            InferResponse::Err(err) => err.id,
            InferResponse::Delta(delta) => delta.id,
        }
    }
}

impl ErrorCode {
    /// whether another provider might succeed where this one failed
    pub fn is_retryable_elsewhere(self) -> bool {
        match self {
            ErrorCode::UnknownModel
            | ErrorCode::Busy
            | ErrorCode::Unauthorized
            | ErrorCode::Internal => true,
            ErrorCode::BadInput | ErrorCode::TooLarge => false,
        }
    }

    /// Lower-case words, e.g. `unknown model`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownModel => "unknown model",
            ErrorCode::Busy => "busy",
            ErrorCode::BadInput => "bad input",
            ErrorCode::TooLarge => "too large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deserializers that count while they decode, so a peer's declared or repeated items
/// cannot inflate a message far beyond its bytes.
mod bounded {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

    use crate::limits::{INFER_ROWS_LIMIT, TENSOR_DIMS_LIMIT};

    /// Starts the message of every error these deserializers give.
    pub(super) const OVER_LIMIT: &str = "over the wire limit";

    /// The inputs of a request: at most [`INFER_ROWS_LIMIT`].
    pub(super) fn rows<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        deserializer.deserialize_seq(Bounded::new(INFER_ROWS_LIMIT, "inputs"))
    }

    /// A tensor's shape: at most [`TENSOR_DIMS_LIMIT`] dimensions.
    pub(super) fn dims<'de, D>(deserializer: D) -> Result<Vec<u64>, D::Error>
    where
        D: Deserializer<'de>,
    {
        deserializer.deserialize_seq(Bounded::new(TENSOR_DIMS_LIMIT, "dimensions"))
    }

    /// A list of at most `limit` items, refused as soon as it declares or holds more.
    struct Bounded<T> {
        limit: usize,
        what: &'static str,
        items: PhantomData<T>,
    }

    impl<T> Bounded<T> {
        fn new(limit: usize, what: &'static str) -> Self {
            Self {
                limit,
                what,
                items: PhantomData,
            }
        }

        fn too_many<E: Error>(&self) -> E {
            E::custom(format_args!("{OVER_LIMIT} of {} {}", self.limit, self.what))
        }
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {} {}", self.limit, self.what)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let declared = seq.size_hint().unwrap_or(0);
            if declared > self.limit {
                return Err(self.too_many());
            }
            let mut items = Vec::with_capacity(declared);
            while let Some(item) = seq.next_element()? {
                if items.len() == self.limit {
                    return Err(self.too_many());
                }
                items.push(item);
            }
            Ok(items)
        }
    }
}

/// The product of the dimensions; overflow of any partial product is an error.
fn element_count(shape: &[u64]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &dim| {
            usize::try_from(dim).ok().and_then(|d| acc.checked_mul(d))
        })
        .ok_or_else(|| TensorError::ShapeOverflow {
            shape: shape.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{
        INFER_REQUEST_LIMIT, INFER_RESPONSE_LIMIT, INFER_ROWS_LIMIT, TENSOR_DIMS_LIMIT,
    };

    fn model(seed: &[u8]) -> Cid {
        Cid::new_v1(crate::codec::DAG_PB, Code::Sha2_256.digest(seed))
    }

    fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
        cbor4ii::serde::to_vec(Vec::new(), value).unwrap()
    }

    fn from_cbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
        cbor4ii::serde::from_slice(bytes).unwrap()
    }

    fn request(inputs: Inputs) -> InferRequest {
        InferRequest {
            id: 7,
            model: model(b"minilm"),
            task: Task::Embed,
            inputs,
            options: InferOptions {
                normalize: Some(true),
                ..InferOptions::default()
            },
            deadline_ms: 1500,
        }
    }

    #[test]
    fn requests_round_trip_through_cbor() {
        let tensor = Tensor::from_f32(vec![1, 3], &[1.0, -2.5, 3.25]).unwrap();
        for inputs in [
            Inputs::Texts(vec!["hello".into(), "wörld".into()]),
            Inputs::Tokens {
                ids: vec![vec![101, 7592, 102]],
                attention_mask: vec![vec![1, 1, 1]],
            },
            Inputs::Tensor(tensor),
        ] {
            let req = request(inputs);
            let bytes = to_cbor(&req);
            assert!(bytes.len() < INFER_REQUEST_LIMIT);
            assert_eq!(from_cbor::<InferRequest>(&bytes), req);
        }
    }

    #[test]
    fn responses_round_trip_through_cbor() {
        let load = Load {
            queued: 3,
            capacity: 64,
            workers: 2,
        };
        let ok = InferResponse::Ok(InferOutput {
            id: 9,
            model: model(b"minilm"),
            output: Tensor::from_f32(vec![2, 2], &[0.0, 1.0, 2.0, 3.0]).unwrap(),
            backend: "cpu".into(),
            queue_us: 120,
            compute_us: 4500,
            load,
            generation: None,
            labels: Vec::new(),
            input_tokens: None,
        });
        let err = InferResponse::Err(InferError {
            id: 10,
            code: ErrorCode::Busy,
            message: "queue full".into(),
            retry_after_ms: Some(50),
            load: Some(load),
        });
        for resp in [ok, err] {
            let bytes = to_cbor(&resp);
            assert_eq!(from_cbor::<InferResponse>(&bytes), resp);
        }
    }

    #[test]
    fn wire_names_are_stable() {
        // Another implementation must be able to write these by hand.
        let bytes = to_cbor(&(Task::Embed, DType::BF16, ErrorCode::UnknownModel));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("embed"));
        assert!(text.contains("bf16"));
        assert!(text.contains("unknown_model"));
    }

    #[test]
    fn tensor_data_is_a_cbor_byte_string() {
        let values = vec![0.5f32; 256 * 1024];
        let tensor = Tensor::from_f32(vec![256, 1024], &values).unwrap();
        let resp = InferResponse::Ok(InferOutput {
            id: 1,
            model: model(b"m"),
            output: tensor.clone(),
            backend: "cpu".into(),
            queue_us: 0,
            compute_us: 0,
            load: Load::default(),
            generation: None,
            labels: Vec::new(),
            input_tokens: None,
        });
        let bytes = to_cbor(&resp);
        // A list of numbers would take about two bytes per data byte.
        assert!(
            bytes.len() < tensor.data.len() + 256,
            "{} bytes",
            bytes.len()
        );
        assert!(bytes.len() < INFER_RESPONSE_LIMIT);
        assert_eq!(from_cbor::<InferResponse>(&bytes), resp);
    }

    #[test]
    fn missing_options_and_deadline_default() {
        #[derive(Serialize)]
        struct Old {
            id: u64,
            model: Cid,
            task: Task,
            inputs: Inputs,
        }
        let bytes = to_cbor(&Old {
            id: 1,
            model: model(b"m"),
            task: Task::Embed,
            inputs: Inputs::Texts(vec!["a".into()]),
        });
        let req: InferRequest = from_cbor(&bytes);
        assert_eq!(req.options, InferOptions::default());
        assert_eq!(req.deadline_ms, 0);
    }

    #[test]
    fn garbage_and_truncated_cbor_are_errors() {
        let bytes = to_cbor(&request(Inputs::Texts(vec!["hello".into()])));
        for cut in 0..bytes.len() {
            assert!(cbor4ii::serde::from_slice::<InferRequest>(&bytes[..cut]).is_err());
        }
        assert!(cbor4ii::serde::from_slice::<InferRequest>(&[0xff; 64]).is_err());
        // Deep nesting is refused by the decoder's depth limit, not a stack overflow.
        let deep = vec![0x81u8; 100_000];
        assert!(cbor4ii::serde::from_slice::<InferRequest>(&deep).is_err());
        assert!(cbor4ii::serde::from_slice::<InferResponse>(&deep).is_err());
    }

    #[test]
    fn tensor_f32_round_trip_and_rows() {
        let t = Tensor::from_f32(vec![2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(t.data.len(), 24);
        t.check().unwrap();
        assert_eq!(t.to_f32().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(
            t.rows_f32().unwrap(),
            vec![vec![1., 2., 3.], vec![4., 5., 6.]]
        );
        let empty = Tensor::from_f32(vec![0, 384], &[]).unwrap();
        assert_eq!(empty.rows_f32().unwrap(), Vec::<Vec<f32>>::new());
    }

    #[test]
    fn from_f32_checks_the_value_count() {
        let err = Tensor::from_f32(vec![2, 3], &[1.0; 5]).unwrap_err();
        assert_eq!(
            err,
            TensorError::ValueCount {
                shape: vec![2, 3],
                expected: 6,
                actual: 5
            }
        );
        assert!(err.to_string().contains('6') && err.to_string().contains('5'));
    }

    #[test]
    fn wrong_data_length_is_refused() {
        let mut t = Tensor::from_f32(vec![2, 2], &[1.0; 4]).unwrap();
        t.data.pop();
        let err = t.check().unwrap_err();
        assert_eq!(
            err,
            TensorError::DataLength {
                dtype: DType::F32,
                shape: vec![2, 2],
                expected: 16,
                actual: 15
            }
        );
        assert!(err.to_string().contains("16") && err.to_string().contains("15"));
        assert!(matches!(t.to_f32(), Err(TensorError::DataLength { .. })));
        assert!(matches!(t.rows_f32(), Err(TensorError::DataLength { .. })));
    }

    #[test]
    fn shape_overflow_is_an_error_not_a_panic() {
        let t = Tensor {
            dtype: DType::F32,
            shape: vec![u64::MAX, 2],
            data: Vec::new(),
        };
        assert!(matches!(t.check(), Err(TensorError::ShapeOverflow { .. })));
        assert!(matches!(t.to_f32(), Err(TensorError::ShapeOverflow { .. })));
        // The element count fits, but times 4 bytes it does not.
        let t = Tensor {
            dtype: DType::F32,
            shape: vec![u64::MAX / 2],
            data: Vec::new(),
        };
        assert!(matches!(t.check(), Err(TensorError::ShapeOverflow { .. })));
        assert!(matches!(
            Tensor::from_f32(vec![1 << 40, 1 << 40], &[]),
            Err(TensorError::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn wrong_dtype_is_refused() {
        let t = Tensor {
            dtype: DType::I64,
            shape: vec![1, 2],
            data: vec![0; 16],
        };
        t.check().unwrap();
        let err = t.to_f32().unwrap_err();
        assert_eq!(
            err,
            TensorError::WrongDType {
                expected: DType::F32,
                actual: DType::I64
            }
        );
        assert_eq!(err.to_string(), "expected a f32 tensor, got i64");
        assert!(matches!(t.rows_f32(), Err(TensorError::WrongDType { .. })));
    }

    #[test]
    fn rows_need_two_dimensions_and_a_width() {
        let t = Tensor::from_f32(vec![4], &[1.0; 4]).unwrap();
        assert!(matches!(t.rows_f32(), Err(TensorError::NotMatrix { .. })));
        let t = Tensor::from_f32(vec![1, 2, 2], &[1.0; 4]).unwrap();
        assert!(matches!(t.rows_f32(), Err(TensorError::NotMatrix { .. })));
        let t = Tensor {
            dtype: DType::F32,
            shape: vec![u64::MAX, 0],
            data: Vec::new(),
        };
        t.check().unwrap();
        assert!(matches!(t.rows_f32(), Err(TensorError::ZeroWidth { .. })));
    }

    #[test]
    fn answers_must_fit_their_request() {
        let model = super::tests::model(b"model");
        let request = InferRequest {
            id: 7,
            model,
            task: Task::Embed,
            inputs: Inputs::Texts(vec!["a".into(), "b".into()]),
            options: InferOptions::default(),
            deadline_ms: 0,
        };
        let answer = |id, model, tensor| InferOutput {
            id,
            model,
            output: tensor,
            backend: "cpu".into(),
            queue_us: 0,
            compute_us: 0,
            load: Load::default(),
            generation: None,
            labels: Vec::new(),
            input_tokens: None,
        };
        let good = Tensor::from_f32(vec![2, 3], &[0.0; 6]).unwrap();
        assert!(
            answer(7, model, good.clone())
                .check_answers(&request)
                .is_ok()
        );
        assert!(
            answer(8, model, good.clone())
                .check_answers(&request)
                .is_err()
        );
        let other = super::tests::model(b"other");
        assert!(answer(7, other, good).check_answers(&request).is_err());
        let one_row = Tensor::from_f32(vec![1, 3], &[0.0; 3]).unwrap();
        assert!(answer(7, model, one_row).check_answers(&request).is_err());
        let flat = Tensor::from_f32(vec![6], &[0.0; 6]).unwrap();
        assert!(answer(7, model, flat).check_answers(&request).is_err());
        let mut short = Tensor::from_f32(vec![2, 3], &[0.0; 6]).unwrap();
        short.data.truncate(20);
        assert!(answer(7, model, short).check_answers(&request).is_err());
        let empty_rows = Tensor::from_f32(vec![2, 0], &[]).unwrap();
        assert!(
            answer(7, model, empty_rows)
                .check_answers(&request)
                .is_err()
        );
        assert!(request.encoded_len() > 0 && request.encoded_len() < 200);
    }

    fn generation_answer(request: &InferRequest, tokens: &[u32]) -> InferOutput {
        let data = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        InferOutput {
            id: request.id,
            model: request.model,
            output: Tensor {
                dtype: DType::U32,
                shape: vec![1, tokens.len() as u64],
                data,
            },
            backend: "cpu".into(),
            queue_us: 0,
            compute_us: 0,
            load: Load::default(),
            generation: Some(Generated {
                finish_reason: FinishReason::Length,
                prompt_tokens: 3,
                completion_tokens: tokens.len() as u32,
                first_token_us: 10,
            }),
            labels: Vec::new(),
            input_tokens: None,
        }
    }

    #[test]
    fn generation_requests_deltas_and_answers_round_trip_and_are_checked() {
        let mut request = request(Inputs::Messages(vec![Message {
            role: "user".into(),
            content: "hi".into(),
        }]));
        request.task = Task::Generate;
        request.options = InferOptions {
            max_tokens: Some(32),
            temperature: Some(0.5),
            stop: vec!["\n".into()],
            resume: vec![5, 6],
            ..InferOptions::default()
        };
        assert_eq!(from_cbor::<InferRequest>(&to_cbor(&request)), request);
        let delta = InferResponse::Delta(Delta {
            id: 7,
            tokens: vec![5, 6],
            text: "é!".into(),
        });
        assert_eq!(from_cbor::<InferResponse>(&to_cbor(&delta)), delta);
        assert_eq!(delta.id(), 7);

        let good = generation_answer(&request, &[5, 6, 9]);
        assert!(good.check_answers(&request).is_ok());
        assert_eq!(good.output_u32().collect::<Vec<_>>(), [5, 6, 9]);
        let ok = InferResponse::Ok(good.clone());
        assert_eq!(from_cbor::<InferResponse>(&to_cbor(&ok)), ok);
        // Not the tokens it resumed after, a miscount, no summary.
        assert!(
            generation_answer(&request, &[5, 7, 9])
                .check_answers(&request)
                .is_err()
        );
        let mut miscounted = good.clone();
        miscounted.generation.as_mut().unwrap().completion_tokens = 4;
        assert!(miscounted.check_answers(&request).is_err());
        let mut bare = good;
        bare.generation = None;
        assert!(bare.check_answers(&request).is_err());
    }

    #[test]
    fn classification_answers_carry_one_row_of_labels_per_image() {
        let mut request = request(Inputs::Images(vec![
            serde_bytes::ByteBuf::from(vec![0x89, b'P']),
            serde_bytes::ByteBuf::from(vec![0xff, 0xd8]),
        ]));
        request.task = Task::Classify;
        request.options.labels = Some(2);
        assert_eq!(from_cbor::<InferRequest>(&to_cbor(&request)), request);
        let label = |id: u32| ClassLabel {
            id,
            label: format!("class {id}"),
        };
        let answer = |k: usize, labels: Vec<Vec<ClassLabel>>| InferOutput {
            id: 7,
            model: request.model,
            output: Tensor::from_f32(vec![2, k as u64], &vec![0.5; 2 * k]).unwrap(),
            backend: "cpu".into(),
            queue_us: 0,
            compute_us: 0,
            load: Load::default(),
            generation: None,
            labels,
            input_tokens: None,
        };
        let good = answer(2, vec![vec![label(1), label(0)], vec![label(0), label(1)]]);
        assert!(good.check_answers(&request).is_ok());
        assert_eq!(
            from_cbor::<InferResponse>(&to_cbor(&InferResponse::Ok(good.clone()))),
            InferResponse::Ok(good)
        );
        // More labels than asked for, a row short, a row missing.
        let three = (0..3).map(label).collect::<Vec<_>>();
        assert!(
            answer(3, vec![three.clone(), three])
                .check_answers(&request)
                .is_err()
        );
        assert!(
            answer(2, vec![vec![label(1)], vec![label(0), label(1)]])
                .check_answers(&request)
                .is_err()
        );
        assert!(
            answer(2, vec![vec![label(1), label(0)]])
                .check_answers(&request)
                .is_err()
        );
    }

    #[test]
    fn a_cancel_frame_is_told_from_a_request_and_from_garbage() {
        let request = request(Inputs::Prompt("hello".into()));
        assert_eq!(
            decode_client_frame(&to_cbor(&request)).unwrap(),
            ClientFrame::Request(request)
        );
        assert_eq!(
            decode_client_frame(&to_cbor(&Cancel { cancel: 9 })).unwrap(),
            ClientFrame::Cancel(9)
        );
        assert!(matches!(
            decode_client_frame(&[0xa1, 0x61, b'x', 0x01]),
            Err(RequestError::Garbage(_))
        ));
    }

    #[test]
    fn a_zero_width_tensor_from_the_wire_gives_no_row_count() {
        // [2^50, 0] with no data: zero elements, zero bytes, so `check` holds, but no
        // byte backs the 2^50 rows.
        let huge = Tensor {
            dtype: DType::I64,
            shape: vec![1 << 50, 0],
            data: Vec::new(),
        };
        let bytes = to_cbor(&request(Inputs::Tensor(huge)));
        let InferRequest {
            inputs: Inputs::Tensor(tensor),
            ..
        } = decode_message::<InferRequest>(&bytes).unwrap()
        else {
            panic!("not a tensor");
        };
        tensor.check().unwrap();
        assert_eq!(
            tensor.matrix(),
            Err(TensorError::ZeroWidth {
                shape: vec![1 << 50, 0]
            })
        );
        // No rows of any width is an empty matrix; rows come from bytes.
        let empty = Tensor {
            dtype: DType::I64,
            shape: vec![0, 1 << 50],
            data: Vec::new(),
        };
        assert_eq!(empty.matrix(), Ok((0, 1 << 50)));
        let ids = Tensor {
            dtype: DType::U32,
            shape: vec![2, 3],
            data: vec![0; 24],
        };
        assert_eq!(ids.matrix(), Ok((2, 3)));
    }

    /// Serializes `count` copies of `item` as one CBOR array without holding them.
    struct Repeat<T>(T, usize);

    impl<T: Serialize> Serialize for Repeat<T> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(std::iter::repeat_n(&self.0, self.1))
        }
    }

    /// The shape of an [`InferRequest`] with inputs built by [`Repeat`].
    #[derive(Serialize)]
    struct Crafted<I> {
        id: u64,
        model: Cid,
        task: Task,
        inputs: I,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum CraftedInputs<R> {
        Texts(R),
        Tokens { ids: R, attention_mask: R },
        Tensor(CraftedTensor),
    }

    #[derive(Serialize)]
    struct CraftedTensor {
        dtype: DType,
        shape: Repeat<u64>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    fn crafted<R: Serialize>(inputs: CraftedInputs<R>) -> Vec<u8> {
        to_cbor(&Crafted {
            id: 1,
            model: model(b"m"),
            task: Task::Embed,
            inputs,
        })
    }

    /// About [`INFER_REQUEST_LIMIT`] bytes of requests whose items take far more memory
    /// decoded than encoded: empty strings and lists are one byte each on the wire and
    /// 24 bytes on the heap, a dimension of 0 one byte and 8.
    fn inflating_frames() -> Vec<(&'static str, Vec<u8>)> {
        let n = INFER_REQUEST_LIMIT - 1024;
        let empty_rows = Repeat(Vec::<u32>::new(), n / 2);
        vec![
            (
                "empty strings",
                crafted(CraftedInputs::Texts(Repeat("", n))),
            ),
            (
                "empty token rows",
                crafted(CraftedInputs::Tokens {
                    ids: &empty_rows,
                    attention_mask: &empty_rows,
                }),
            ),
            (
                "zero dimensions",
                crafted(CraftedInputs::<()>::Tensor(CraftedTensor {
                    dtype: DType::U32,
                    shape: Repeat(0, n),
                    data: Vec::new(),
                })),
            ),
        ]
    }

    #[test]
    fn inflating_requests_are_refused_while_decoding() {
        for (what, frame) in inflating_frames() {
            assert!(frame.len() <= INFER_REQUEST_LIMIT, "{what}");
            let (decoded, peak) =
                crate::heap::peak_during(|| decode_message::<InferRequest>(&frame).map(|_| ()));
            let error = decoded.expect_err(what).to_string();
            assert!(error.contains("over the wire limit"), "{what}: {error}");
            // Refused within the limits' worth of items, not after millions of them.
            assert!(peak < 1 << 20, "{what}: {peak} bytes on the heap");
        }
        // At the limit, the same inputs decode.
        let at_limit = crafted(CraftedInputs::Texts(Repeat("", INFER_ROWS_LIMIT)));
        let request = decode_message::<InferRequest>(&at_limit).unwrap();
        assert_eq!(request.inputs.rows(), INFER_ROWS_LIMIT as u64);
        let dims = crafted(CraftedInputs::<()>::Tensor(CraftedTensor {
            dtype: DType::U32,
            shape: Repeat(1, TENSOR_DIMS_LIMIT + 1),
            data: vec![0; 4],
        }));
        assert!(decode_message::<InferRequest>(&dims).is_err());
    }

    #[test]
    fn a_request_over_the_limits_is_refused_by_its_id() {
        for (what, frame) in inflating_frames() {
            match decode_request(&frame) {
                Err(RequestError::Refused { id, code, message }) => {
                    assert_eq!((id, code), (1, ErrorCode::TooLarge), "{what}: {message}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // The id decodes, the inputs are of the wrong kind.
        let wrong = crafted(CraftedInputs::Texts(Repeat(7u32, 3)));
        assert!(matches!(
            decode_request(&wrong),
            Err(RequestError::Refused {
                id: 1,
                code: ErrorCode::BadInput,
                ..
            })
        ));
        assert!(matches!(
            decode_request(&[0xff; 64]),
            Err(RequestError::Garbage(_))
        ));
        let good = to_cbor(&request(Inputs::Texts(vec!["a".into()])));
        assert_eq!(decode_request(&good).unwrap().id, 7);
    }

    #[test]
    fn a_decoded_request_takes_a_small_multiple_of_its_frame() {
        // The most a frame can cost once decoded: one-byte token ids become 4 bytes.
        let n = (INFER_REQUEST_LIMIT - 1024) / 2;
        let zeros = Repeat(Repeat(0u32, n), 1);
        let frames = [
            crafted(CraftedInputs::Tokens {
                ids: &zeros,
                attention_mask: &zeros,
            }),
            crafted(CraftedInputs::Texts(Repeat("x".repeat(1000), n / 1002))),
            crafted(CraftedInputs::Texts(Repeat("", INFER_ROWS_LIMIT))),
        ];
        for frame in frames {
            assert!(frame.len() <= INFER_REQUEST_LIMIT);
            let (decoded, peak) =
                crate::heap::peak_during(|| decode_message::<InferRequest>(&frame));
            decoded.unwrap();
            assert!(
                peak <= 8 * frame.len().max(64 * 1024),
                "{peak} bytes on the heap for a frame of {}",
                frame.len()
            );
        }
    }

    #[test]
    fn dtype_sizes() {
        assert_eq!(DType::F32.size_bytes(), 4);
        assert_eq!(DType::F16.size_bytes(), 2);
        assert_eq!(DType::BF16.size_bytes(), 2);
        assert_eq!(DType::I64.size_bytes(), 8);
        assert_eq!(DType::I32.size_bytes(), 4);
        assert_eq!(DType::U32.size_bytes(), 4);
        assert_eq!(DType::U8.size_bytes(), 1);
    }

    #[test]
    fn error_codes_display_and_retry() {
        assert_eq!(ErrorCode::UnknownModel.to_string(), "unknown model");
        assert_eq!(ErrorCode::BadInput.to_string(), "bad input");
        assert!(ErrorCode::Busy.is_retryable_elsewhere());
        assert!(ErrorCode::UnknownModel.is_retryable_elsewhere());
        assert!(ErrorCode::Unauthorized.is_retryable_elsewhere());
        assert!(ErrorCode::Internal.is_retryable_elsewhere());
        assert!(!ErrorCode::BadInput.is_retryable_elsewhere());
        assert!(!ErrorCode::TooLarge.is_retryable_elsewhere());
    }

    #[test]
    fn service_key_is_derived_and_distinct() {
        let a = model(b"a");
        let b = model(b"b");
        let key = service_key(&a);
        assert_eq!(key, service_key(&a));
        assert_ne!(key, a);
        assert_ne!(key, service_key(&b));
        assert_eq!(key.codec(), RAW);
        assert_eq!(key.version(), cid::Version::V1);
        assert_eq!(key.hash().code(), crate::codec::SHA2_256);
        let mut preimage = SERVICE_KEY_PREFIX.to_vec();
        preimage.extend_from_slice(&a.to_bytes());
        assert_eq!(
            key.hash().digest(),
            Code::Sha2_256.digest(&preimage).digest()
        );
    }
}
