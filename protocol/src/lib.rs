//! Wire types and codecs of ipfs-accelerate.
//!
//! This crate knows no I/O: it turns bytes into typed values and back, with explicit
//! limits and typed errors. Everything that reads files, sockets or databases lives in
//! `ipfs-accelerate-node`.
//!
//! - [`archive`]: `get`'s tar stream, read strictly.
//! - [`bitswap`]: Bitswap 1.0.0-1.2.0 messages.
//! - [`block`]: a block is bytes plus the CID that names them; constructing one from the
//!   network or a file always verifies the hash.
//! - [`car`]: CAR v1 framing (header and block frames).
//! - [`codec`]: multicodec and multihash numbers we understand.
//! - [`infer`]: the `/ipfs-accelerate/infer/1.0.0` messages and the DHT service key of a
//!   model.
//! - [`limits`]: size limits shared by every component.
//! - [`manifest`]: signed model manifests, registry entries and gossip topics.
//! - [`model_folder`]: what a Hugging Face model folder's config.json, sentence-transformers
//!   files and model.safetensors header declare.
//! - [`protobuf`]: the protobuf wire format, read strictly.
//! - [`unixfs`]: one step of a UnixFS walk over untrusted blocks.
//! - [`upload`]: the parts of a Kubo-style multipart upload.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod archive;
pub mod bitswap;
pub mod block;
pub mod car;
pub mod codec;
#[cfg(test)]
mod heap;
pub mod infer;
pub mod limits;
pub mod manifest;
pub mod model_folder;
pub mod protobuf;
pub mod unixfs;
pub mod upload;

pub use block::Block;
pub use cid::Cid;
pub use ipld_dagpb::{PbLink, PbNode};
