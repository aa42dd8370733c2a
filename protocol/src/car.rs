//! CAR v1 framing: the ecosystem's transport format for DAGs (`dag export`/`dag import`).
//!
//! A CAR v1 is `varint(len) header` followed by frames `varint(len) cid data`. The header
//! is DAG-CBOR `{"roots": [CID...], "version": 1}`. This module encodes and decodes the
//! header and frame bodies from byte buffers; the caller reads the varint prefixes and
//! enforces [`CAR_HEADER_LIMIT`] and [`CAR_FRAME_LIMIT`] before allocating.

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::limits::{CAR_FRAME_LIMIT, CAR_HEADER_LIMIT};

/// Why a CAR could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The header is not DAG-CBOR `{"roots", "version"}`.
    #[error("invalid CAR header: {0}")]
    InvalidHeader(String),
    /// The CAR declares a version other than 1.
    #[error("unsupported CAR version {0}: only CAR v1 is supported")]
    UnsupportedVersion(u64),
    /// A length prefix is larger than the limit for its kind.
    #[error("CAR {what} of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: usize,
    },
    /// A frame does not start with a valid CID.
    #[error("invalid CID in CAR frame: {0}")]
    InvalidCid(String),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A CAR v1 header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Field order matters: DAG-CBOR sorts map keys by length, so `roots` comes first.
    pub roots: Vec<Cid>,
    pub version: u64,
}

/// Encodes the header with its varint length prefix, ready to be written first.
pub fn encode_header(roots: &[Cid]) -> Vec<u8> {
    let header = Header {
        roots: roots.to_vec(),
        version: 1,
    };
    // Encoding a struct of CIDs and an integer cannot fail.
    let body = serde_ipld_dagcbor::to_vec(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 10);
    push_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

/// Decodes a header body (without its length prefix).
pub fn decode_header(body: &[u8]) -> Result<Header> {
    let header: Header = serde_ipld_dagcbor::from_slice(body).map_err(|e| {
        // A CARv2 starts with a fixed pragma that decodes as `{"version": 2}`.
        if let Ok(v) = serde_ipld_dagcbor::from_slice::<VersionOnly>(body)
            && v.version != 1
        {
            return Error::UnsupportedVersion(v.version);
        }
        Error::InvalidHeader(e.to_string())
    })?;
    if header.version != 1 {
        return Err(Error::UnsupportedVersion(header.version));
    }
    Ok(header)
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u64,
}

/// The varint length prefix of a frame holding `cid` and `data_len` bytes of data.
pub fn encode_frame_prefix(cid: &Cid, data_len: usize) -> Vec<u8> {
    let cid_bytes = cid.to_bytes();
    let mut out = Vec::with_capacity(cid_bytes.len() + 10);
    push_varint(&mut out, (cid_bytes.len() + data_len) as u64);
    out.extend_from_slice(&cid_bytes);
    out
}

/// Splits a frame body into its CID and the block data that follows it.
pub fn split_frame(body: &[u8]) -> Result<(Cid, &[u8])> {
    let mut cursor = std::io::Cursor::new(body);
    let cid = Cid::read_bytes(&mut cursor).map_err(|e| Error::InvalidCid(e.to_string()))?;
    let at = cursor.position() as usize;
    Ok((cid, &body[at..]))
}

/// Checks a header length prefix against [`CAR_HEADER_LIMIT`].
pub fn check_header_len(len: u64) -> Result<usize> {
    check_len("header", len, CAR_HEADER_LIMIT)
}

/// Checks a frame length prefix against [`CAR_FRAME_LIMIT`].
pub fn check_frame_len(len: u64) -> Result<usize> {
    check_len("frame", len, CAR_FRAME_LIMIT)
}

fn check_len(what: &'static str, len: u64, limit: usize) -> Result<usize> {
    if len == 0 || len > limit as u64 {
        return Err(Error::TooLarge {
            what,
            size: len,
            limit,
        });
    }
    Ok(len as usize)
}

fn push_varint(out: &mut Vec<u8>, value: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(value, &mut buf));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Block;
    use crate::codec::RAW;
    use multihash_codetable::Code;

    fn some_cid() -> Cid {
        *Block::from_data(cid::Version::V1, RAW, Code::Sha2_256, &b"car"[..])
            .unwrap()
            .cid()
    }

    #[test]
    fn header_round_trips() {
        let cid = some_cid();
        let encoded = encode_header(&[cid]);
        let (len, body) = unsigned_varint::decode::u64(&encoded).unwrap();
        assert_eq!(len as usize, body.len());
        let header = decode_header(body).unwrap();
        assert_eq!(header.roots, vec![cid]);
        assert_eq!(header.version, 1);
    }

    #[test]
    fn header_matches_the_canonical_encoding() {
        // {"roots": [], "version": 1} as DAG-CBOR: keys sorted by length.
        let encoded = encode_header(&[]);
        let expected = [
            0xa2, 0x65, b'r', b'o', b'o', b't', b's', 0x80, 0x67, b'v', b'e', b'r', b's', b'i',
            b'o', b'n', 0x01,
        ];
        assert_eq!(&encoded[1..], &expected[..]);
    }

    #[test]
    fn version_2_is_named_in_the_error() {
        let body = serde_ipld_dagcbor::to_vec(&Header {
            roots: vec![],
            version: 2,
        })
        .unwrap();
        assert!(matches!(
            decode_header(&body),
            Err(Error::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn garbage_and_truncated_headers_are_errors() {
        assert!(decode_header(&[0xff, 0x00, 0x13]).is_err());
        let encoded = encode_header(&[some_cid()]);
        assert!(decode_header(&encoded[1..encoded.len() - 3]).is_err());
        assert!(decode_header(&[]).is_err());
    }

    #[test]
    fn frames_split_into_cid_and_data() {
        let cid = some_cid();
        let mut frame = encode_frame_prefix(&cid, 3);
        frame.extend_from_slice(b"car");
        let (len, body) = unsigned_varint::decode::u64(&frame).unwrap();
        assert_eq!(len as usize, body.len());
        let (parsed, data) = split_frame(body).unwrap();
        assert_eq!(parsed, cid);
        assert_eq!(data, b"car");
        assert!(split_frame(&body[..5]).is_err());
    }

    #[test]
    fn length_limits_are_enforced() {
        assert!(check_frame_len(0).is_err());
        assert!(check_frame_len(CAR_FRAME_LIMIT as u64 + 1).is_err());
        assert!(check_header_len(u64::MAX).is_err());
        assert_eq!(check_frame_len(10).unwrap(), 10);
    }
}
