//! Blocks: bytes and the CID that names them.
//!
//! A [`Block`] can only be built by hashing its data ([`Block::from_data`]) or by checking
//! data against a claimed CID ([`Block::verified`]), so holding one means its data matches
//! its CID. [`links`] lists the CIDs a block points to, which pins and GC follow.

use bytes::Bytes;
use cid::{Cid, Version};
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

    /// Wraps `data` under `cid`, whose digest was just computed from these very bytes
    /// (as a Bitswap 1.1 prefix asks): checked for size only, so it is hashed once.
    pub(crate) fn named_by_own_digest(cid: Cid, data: Bytes) -> Result<Self> {
        check_size(data.len())?;
        Ok(Block { cid, data })
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
        DAG_CBOR => dag_cbor_links(cid, data),
        RAW => Ok(Vec::new()),
        _ => Ok(Vec::new()),
    }
}

/// Decodes a dag-pb node; `data` is shared, not copied. Its wire format is checked first
/// (links included): ipld-dagpb's reader lets a link's varint run past the link.
pub fn decode_dag_pb(cid: &Cid, data: &Bytes) -> Result<ipld_dagpb::PbNode> {
    let malformed = |reason: String| Error::Malformed {
        cid: *cid,
        codec: "dag-pb",
        reason,
    };
    crate::protobuf::check(data, &[DAG_PB_LINKS]).map_err(malformed)?;
    ipld_dagpb::PbNode::from_bytes(data.clone()).map_err(|e| malformed(e.to_string()))
}

/// The field number of a dag-pb node's links.
const DAG_PB_LINKS: u64 = 2;

/// The links of a DAG-CBOR document (tag 42), found in one pass over its bytes without
/// building the value: a decoded document costs many times its size (a 2 MiB block of
/// tiny items is millions of values), this costs the links found. Containers are
/// counted, not nested, so depth costs nothing either. Indefinite lengths and tags
/// other than 42 are not DAG-CBOR and are refused, as are trailing bytes.
fn dag_cbor_links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>> {
    let malformed = |reason: String| Error::Malformed {
        cid: *cid,
        codec: "dag-cbor",
        reason,
    };
    let mut reader = CborReader { data, pos: 0 };
    let mut out = Vec::new();
    // Items still to read: the document, then every array element, map key and value
    // announced so far. Each takes at least a byte, so more than the bytes left is a lie.
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        let (major, value) = reader.head().map_err(malformed)?;
        let items = match major {
            // Integers, and simple values and floats (read whole by `head`).
            0 | 1 | 7 => 0,
            // Byte and text strings.
            2 | 3 => {
                reader.take(value).map_err(malformed)?;
                0
            }
            4 => value,
            5 => value.saturating_mul(2),
            6 if value == CID_TAG => {
                out.push(reader.cid().map_err(malformed)?);
                0
            }
            _ => {
                return Err(malformed(format!(
                    "tag {value} is not allowed (only 42, a CID)"
                )));
            }
        };
        pending = pending.saturating_add(items);
        if pending > reader.left() {
            return Err(malformed(format!(
                "announces {pending} more items with {} bytes left",
                reader.left()
            )));
        }
    }
    if reader.left() > 0 {
        return Err(malformed(format!(
            "{} bytes follow the document",
            reader.left()
        )));
    }
    Ok(out)
}

/// CBOR's tag for a CID in DAG-CBOR.
const CID_TAG: u64 = 42;

/// A cursor over CBOR bytes that reads item heads; errors are reasons for `Malformed`.
struct CborReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> CborReader<'a> {
    fn left(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], String> {
        if len > self.left() {
            return Err(format!(
                "truncated: {len} bytes needed at offset {}",
                self.pos
            ));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.data[start..self.pos])
    }

    /// An item's major type and argument (for major type 7, the simple value or the
    /// float's bits).
    fn head(&mut self) -> Result<(u8, u64), String> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let width = match info {
            0..=23 => return Ok((major, u64::from(info))),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            31 => return Err("indefinite-length items are not DAG-CBOR".to_owned()),
            _ => return Err(format!("reserved additional information {info}")),
        };
        let bytes = self.take(width)?;
        Ok((
            major,
            bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)),
        ))
    }

    /// The CID in a tag 42's byte string (a zero byte, then the binary CID).
    fn cid(&mut self) -> Result<Cid, String> {
        let (major, len) = self.head()?;
        if major != 2 {
            return Err("tag 42 must hold a byte string".to_owned());
        }
        match self.take(len)? {
            [0, cid @ ..] => Cid::try_from(cid).map_err(|e| format!("invalid CID: {e}")),
            _ => Err("a CID's bytes must start with a zero byte".to_owned()),
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
    use ipld_core::ipld::Ipld;

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

    fn cbor_block(bytes: Vec<u8>) -> Block {
        Block::from_data(Version::V1, DAG_CBOR, Code::Sha2_256, bytes).unwrap()
    }

    /// A tag-42 link to `cid` as DAG-CBOR bytes.
    fn cbor_link(cid: &Cid) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(cid.to_bytes());
        let mut out = vec![0xd8, 42, 0x58, bytes.len() as u8];
        out.extend(bytes);
        out
    }

    #[test]
    fn dag_cbor_links_cost_the_links_not_the_document() {
        let target = Block::from_data(Version::V1, RAW, Code::Sha2_256, &b"x"[..]).unwrap();
        // An array of two million tiny items (and a link) fills a block near the limit;
        // decoded as a value it is hundreds of bytes per byte.
        let items = BLOCK_SIZE_LIMIT - 64;
        let mut bytes = vec![0x9b];
        bytes.extend((items as u64 + 1).to_be_bytes());
        bytes.extend(cbor_link(target.cid()));
        bytes.extend(std::iter::repeat_n(0x80u8, items));
        let block = cbor_block(bytes);
        let (links, peak) = crate::heap::peak_during(|| block.links().unwrap());
        assert_eq!(links, vec![*target.cid()]);
        assert!(peak < 64 * 1024, "reading links took {peak} bytes of heap");

        // Nested a million deep: no recursion, no stack overflow.
        let depth = 1_000_000;
        let mut bytes = vec![0x81u8; depth];
        bytes.extend(cbor_link(target.cid()));
        assert_eq!(cbor_block(bytes).links().unwrap(), vec![*target.cid()]);
    }

    #[test]
    fn hostile_dag_cbor_is_malformed() {
        let link = {
            let target = Block::from_data(Version::V1, RAW, Code::Sha2_256, &b"x"[..]).unwrap();
            cbor_link(target.cid())
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("truncated string", vec![0x45, 1, 2]),
            ("truncated head", vec![0x1b, 0, 0]),
            ("indefinite array", vec![0x9f, 0xff]),
            (
                "array longer than the block",
                vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
            (
                "map longer than the block",
                vec![0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0],
            ),
            ("other tag", vec![0xc1, 0x00]),
            ("tag 42 on a number", vec![0xd8, 42, 0x01]),
            ("CID without the zero byte", vec![0xd8, 42, 0x42, 1, 2]),
            ("garbage CID", vec![0xd8, 42, 0x43, 0, 0xff, 0xff]),
            ("trailing bytes", [link.clone(), vec![0x00]].concat()),
            ("reserved head", vec![0x1c]),
        ];
        for (what, bytes) in cases {
            let err = cbor_block(bytes).links().unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{what}: {err}");
        }
        assert_eq!(cbor_block(link).links().unwrap().len(), 1);
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
