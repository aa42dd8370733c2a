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
