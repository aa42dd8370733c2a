//! Size limits shared by every component. A value from outside the process is checked
//! against one of these before it is allocated or stored.

/// Largest block we store or accept from anywhere. Bitswap peers (Kubo included) refuse
/// blocks over 2 MiB, so a larger block could never be exchanged.
pub const BLOCK_SIZE_LIMIT: usize = 2 * 1024 * 1024;

/// Largest block `block put` accepts without `--allow-big-block` (Kubo's soft limit).
pub const BLOCK_PUT_SOFT_LIMIT: usize = 1024 * 1024;

/// Largest UnixFS chunk size accepted by the importer (Kubo's limit).
pub const CHUNK_SIZE_LIMIT: usize = 1024 * 1024;

/// Largest encoded CAR v1 header. Real headers hold a handful of roots.
pub const CAR_HEADER_LIMIT: usize = 1024 * 1024;

/// Largest CAR frame: one CID plus one block.
pub const CAR_FRAME_LIMIT: usize = BLOCK_SIZE_LIMIT + 256;

/// Longest encoded CID we accept (a CIDv1 with a 64-byte digest is 70 bytes).
pub const CID_LENGTH_LIMIT: usize = 128;

/// Largest encoded inference request (`/ipfs-accelerate/infer/1.0.0`): room for a batch of
/// texts or token ids, or a modest input tensor.
pub const INFER_REQUEST_LIMIT: usize = 4 * 1024 * 1024;

/// Largest encoded inference response: e.g. 2,048 embeddings of 2,048 f32 values.
pub const INFER_RESPONSE_LIMIT: usize = 16 * 1024 * 1024;

/// Largest encoded manifest, which is also the largest model announcement.
pub const MANIFEST_LIMIT: usize = 64 * 1024;

/// Most inputs (rows) one inference request carries on the wire. They are counted while
/// the request is decoded, so millions of empty strings in a 4 MiB frame are refused
/// before they take memory; a server's own row limit is usually far lower.
pub const INFER_ROWS_LIMIT: usize = 4096;

/// Most dimensions of a tensor on the wire, counted while decoding.
pub const TENSOR_DIMS_LIMIT: usize = 8;
