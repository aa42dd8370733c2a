//! Blocks: bytes and the CID that names them.
//!
//! A [`Block`] can only be built by hashing its data ([`Block::from_data`]) or by checking
//! data against a claimed CID ([`Block::verified`]), so holding one means its data matches
//! its CID. [`links`] lists the CIDs a block points to, which pins and GC follow.

use bytes::Bytes;
use cid::{Cid, Version};
use ipld_core::ipld::Ipld;
use multihash::Multihash;
use multihash_codetable::{Code, MultihashDigest};

use crate::codec::{DAG_CBOR, DAG_PB, IDENTITY, RAW, SHA2_256};
use crate::limits::BLOCK_SIZE_LIMIT;

/// Why bytes could not become a [`Block`], or its links could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data does not hash to the digest in the CID.
    #[error("block data does not match {cid}: the data is corrupt or was tampered with")]
    HashMismatch { cid: Cid },
    /// The CID uses a hash function this node cannot compute.
    #[error("unsupported hash function {code:#x} in {cid}")]
    UnsupportedHash { cid: Cid, code: u64 },
    /// The block is larger than [`BLOCK_SIZE_LIMIT`].
    #[error("block of {size} bytes is over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    /// A CIDv0 can only name a sha2-256 dag-pb block.
    #[error("CIDv0 requires dag-pb and sha2-256")]
    InvalidV0,
    /// The block's codec is dag-pb or dag-cbor but its bytes do not decode.
    #[error("{cid} is not valid {codec}: {reason}")]
    Malformed {
        cid: Cid,
        codec: &'static str,
        reason: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Bytes together with the CID that names them; the data is known to match the CID.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    data: Bytes,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("cid", &self.cid.to_string())
            .field("len", &self.data.len())
            .finish()
    }
}

impl Block {
    /// Hashes `data` and names it with a CID of the given version, codec and hash.
    pub fn from_data(
        version: Version,
        codec: u64,
        hash: Code,
        data: impl Into<Bytes>,
    ) -> Result<Self> {
        let data = data.into();
        check_size(data.len())?;
        let digest = hash.digest(&data);
        let cid = match version {
            Version::V0 => {
                if codec != DAG_PB || u64::from(hash) != SHA2_256 {
                    return Err(Error::InvalidV0);
                }
                Cid::new_v0(digest).map_err(|_| Error::InvalidV0)?
            }
            Version::V1 => Cid::new_v1(codec, digest),
        };
        Ok(Block { cid, data })
    }

    /// Checks that `data` hashes to the digest in `cid`; the only way data from outside
    /// (network, CAR file, disk being verified) becomes a block.
    pub fn verified(cid: Cid, data: impl Into<Bytes>) -> Result<Self> {
        let data = data.into();
        check_size(data.len())?;
        verify(&cid, &data)?;
        Ok(Block { cid, data })
    }

    /// Wraps data already known to match `cid`, e.g. just produced by a trusted encoder
    /// in this process that computed the CID from these very bytes.
    pub fn new_unchecked(cid: Cid, data: Bytes) -> Self {
        Block { cid, data }
    }

    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn into_parts(self) -> (Cid, Bytes) {
        (self.cid, self.data)
    }

    /// The CIDs this block links to (see [`links`]).
    pub fn links(&self) -> Result<Vec<Cid>> {
        links(&self.cid, &self.data)
    }
}

/// Checks `data` against the digest in `cid`.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<()> {
    let mh = cid.hash();
    let code = mh.code();
    let expected = if code == IDENTITY {
        Multihash::<64>::wrap(IDENTITY, data).map_err(|_| Error::HashMismatch { cid: *cid })?
    } else {
        let hasher =
            Code::try_from(code).map_err(|_| Error::UnsupportedHash { cid: *cid, code })?;
        hasher.digest(data)
    };
    if expected.code() == mh.code() && expected.digest() == mh.digest() {
        Ok(())
    } else {
        Err(Error::HashMismatch { cid: *cid })
    }
}

/// The CIDs a block links to, in the order they appear. Raw blocks and unknown codecs
/// have none; dag-pb and DAG-CBOR blocks are decoded.
pub fn links(cid: &Cid, data: &Bytes) -> Result<Vec<Cid>> {
    match cid.codec() {
        DAG_PB => Ok(decode_dag_pb(cid, data)?
            .links
            .into_iter()
            .map(|link| link.cid)
            .collect()),
        DAG_CBOR => {
            let ipld: Ipld =
                serde_ipld_dagcbor::from_slice(data).map_err(|e| Error::Malformed {
                    cid: *cid,
                    codec: "dag-cbor",
                    reason: e.to_string(),
                })?;
            let mut out = Vec::new();
            collect_cbor_links(&ipld, &mut out);
            Ok(out)
        }
        RAW => Ok(Vec::new()),
        _ => Ok(Vec::new()),
    }
}

/// Decodes a dag-pb node; `data` is shared, not copied.
pub fn decode_dag_pb(cid: &Cid, data: &Bytes) -> Result<ipld_dagpb::PbNode> {
    ipld_dagpb::PbNode::from_bytes(data.clone()).map_err(|e| Error::Malformed {
        cid: *cid,
        codec: "dag-pb",
        reason: e.to_string(),
    })
}

fn collect_cbor_links(ipld: &Ipld, out: &mut Vec<Cid>) {
    // Iterative: a deeply nested document from the network must not overflow the stack.
    let mut stack = vec![ipld];
    while let Some(node) = stack.pop() {
        match node {
            Ipld::Link(cid) => out.push(*cid),
            Ipld::List(items) => stack.extend(items.iter().rev()),
            Ipld::Map(map) => stack.extend(map.values().rev()),
            _ => {}
        }
    }
}

fn check_size(size: usize) -> Result<()> {
    if size > BLOCK_SIZE_LIMIT {
        return Err(Error::TooLarge {
            size,
            limit: BLOCK_SIZE_LIMIT,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_raw_block_has_the_well_known_cid() {
        let block = Block::from_data(Version::V1, RAW, Code::Sha2_256, Bytes::new()).unwrap();
        assert_eq!(
            block.cid().to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
    }

    #[test]
    fn verified_rejects_tampered_data() {
        let block = Block::from_data(Version::V1, RAW, Code::Sha2_256, &b"hello"[..]).unwrap();
        assert!(Block::verified(*block.cid(), &b"hello"[..]).is_ok());
        let err = Block::verified(*block.cid(), &b"hellO"[..]).unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }));
    }

    #[test]
    fn verified_supports_blake3() {
        let block = Block::from_data(Version::V1, RAW, Code::Blake3_256, &b"hello"[..]).unwrap();
        assert!(Block::verified(*block.cid(), &b"hello"[..]).is_ok());
        assert!(Block::verified(*block.cid(), &b"jello"[..]).is_err());
    }

    #[test]
    fn v0_requires_dag_pb() {
        let err = Block::from_data(Version::V0, RAW, Code::Sha2_256, &b"x"[..]).unwrap_err();
        assert!(matches!(err, Error::InvalidV0));
    }

    #[test]
    fn oversized_blocks_are_rejected() {
        let data = vec![0u8; BLOCK_SIZE_LIMIT + 1];
        let err = Block::from_data(Version::V1, RAW, Code::Sha2_256, data).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
    }

    #[test]
    fn garbage_dag_pb_is_malformed_not_a_panic() {
        let block =
            Block::from_data(Version::V1, DAG_PB, Code::Sha2_256, &[0xff, 0xff, 0x01][..]).unwrap();
        assert!(matches!(block.links(), Err(Error::Malformed { .. })));
        let truncated =
            Block::from_data(Version::V1, DAG_CBOR, Code::Sha2_256, &[0xa1, 0x61][..]).unwrap();
        assert!(matches!(truncated.links(), Err(Error::Malformed { .. })));
    }

    #[test]
    fn dag_cbor_links_are_found() {
        let target = Block::from_data(Version::V1, RAW, Code::Sha2_256, &b"x"[..]).unwrap();
        let doc = Ipld::Map(
            [("a".to_string(), Ipld::List(vec![Ipld::Link(*target.cid())]))]
                .into_iter()
                .collect(),
        );
        let bytes = serde_ipld_dagcbor::to_vec(&doc).unwrap();
        let block = Block::from_data(Version::V1, DAG_CBOR, Code::Sha2_256, bytes).unwrap();
        assert_eq!(block.links().unwrap(), vec![*target.cid()]);
    }
}
