//! Protobuf wire format, read strictly: the bounds checks quick-protobuf (behind
//! rust-unixfs and ipld-dagpb) leaves out.
//!
//! quick-protobuf 0.8 checks a varint against the whole buffer, not the end of the
//! message being read, so a varint that runs past the end of a nested message (a dag-pb
//! link) leaves its reader past that end, and the next unknown field's length check
//! underflows (a panic with overflow checks). [`check`] walks a message's fields and those
//! of its nested messages and refuses any field that runs past its enclosing message, so
//! such bytes never reach quick-protobuf. Found by the `unixfs_walk` fuzz target.

use std::ops::Range;

/// Wire types (the low three bits of a field's key).
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

/// One field of a message: its number and where its value lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Varint(u64, u64),
    Bytes(u64, Range<usize>),
    Fixed(u64),
}

/// Reads the field at `*at` in `bytes`, moving `at` past it. Every read stays within
/// `bytes`; a field that would run past its end is an error.
pub fn field(bytes: &[u8], at: &mut usize) -> Result<Field, String> {
    let key = varint(bytes, at)?;
    let number = key >> 3;
    match key & 7 {
        VARINT => Ok(Field::Varint(number, varint(bytes, at)?)),
        LENGTH_DELIMITED => Ok(Field::Bytes(number, length_delimited(bytes, at)?)),
        FIXED64 => {
            *at = skip(bytes, *at, 8)?;
            Ok(Field::Fixed(number))
        }
        FIXED32 => {
            *at = skip(bytes, *at, 4)?;
            Ok(Field::Fixed(number))
        }
        wire => Err(format!("unsupported protobuf wire type {wire}")),
    }
}

/// Checks that `bytes` is a well-formed message whose length-delimited fields numbered in
/// `nested` are themselves well-formed messages (one level down, as dag-pb's links and
/// UnixFS's mtime are).
pub fn check(bytes: &[u8], nested: &[u64]) -> Result<(), String> {
    let mut at = 0;
    while at < bytes.len() {
        if let Field::Bytes(number, range) = field(bytes, &mut at)?
            && nested.contains(&number)
        {
            check(&bytes[range], &[]).map_err(|e| format!("field {number}: {e}"))?;
        }
    }
    Ok(())
}

/// Reads an unsigned varint at `*at`, moving `at` past it.
pub fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let rest = bytes.get(*at..).unwrap_or_default();
    let (value, after) =
        unsigned_varint::decode::u64(rest).map_err(|e| format!("bad varint at byte {at}: {e}"))?;
    *at = bytes.len() - after.len();
    Ok(value)
}

/// Reads a length prefix at `*at` and returns the range it covers, moving `at` past it.
pub fn length_delimited(bytes: &[u8], at: &mut usize) -> Result<Range<usize>, String> {
    let len = varint(bytes, at)?;
    let start = *at;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| format!("field of {len} bytes at byte {start} runs past the end"))?;
    *at = end;
    Ok(start..end)
}

fn skip(bytes: &[u8], at: usize, n: usize) -> Result<usize, String> {
    at.checked_add(n)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| "a fixed-width field runs past the end".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_within_their_message() {
        let mut at = 0;
        let bytes = [
            0x08, 0x96, 0x01, 0x12, 0x01, b'x', 0x19, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(field(&bytes, &mut at), Ok(Field::Varint(1, 150)));
        assert_eq!(field(&bytes, &mut at), Ok(Field::Bytes(2, 5..6)));
        assert_eq!(field(&bytes, &mut at), Ok(Field::Fixed(3)));
        assert_eq!(at, bytes.len());
        assert!(check(&bytes, &[]).is_ok());
    }

    #[test]
    fn a_nested_varint_past_its_message_is_refused() {
        // A link (field 2) of two bytes whose Tsize varint takes a third byte from
        // outside it; then a fixed64 field: quick-protobuf's length check underflows.
        let block = [0x12, 0x02, 0x18, 0x80, 0x01, 0x21];
        assert!(check(&block, &[2]).is_err());
        // The same link, well-formed.
        assert!(check(&[0x12, 0x02, 0x18, 0x01], &[2]).is_ok());
    }

    #[test]
    fn truncated_or_garbage_fields_are_errors() {
        for bytes in [
            &[0x12, 0x05, b'a'][..],
            &[0x08],
            &[0x0b],
            &[0x0f],
            &[0x09, 0, 0],
            &[0x22, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0xff; 11],
        ] {
            assert!(check(bytes, &[]).is_err(), "{bytes:?}");
        }
    }
}
