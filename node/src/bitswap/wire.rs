//! Length-prefixed Bitswap messages on a stream, with size limits and timeouts.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ipfs_accelerate_protocol::bitswap::{MESSAGE_SIZE_LIMIT, Message, ProtocolVersion};

use super::budget::{Exceeded, Reservation};

/// A message's buffer starts this small, whatever its length prefix says, and doubles
/// as bytes arrive: a stream that announces 4 MiB and sends nothing holds 1 KiB.
const FIRST_CHUNK: usize = 1024;
/// Most bytes one read may take (and zero-fill beforehand).
const READ_CHUNK: usize = 64 * 1024;
/// Longest a varint length prefix may be (a u64's).
const PREFIX_BYTES_LIMIT: usize = 10;

/// Why a stream read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("stream closed")]
    Closed,
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("message of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("malformed length prefix: {0}")]
    Prefix(unsigned_varint::decode::Error),
    /// Reading the message would hold more bytes than the peer (or everyone) may.
    #[error("no room to read the message: {0}")]
    OverBudget(#[from] Exceeded),
    #[error(transparent)]
    Decode(#[from] ipfs_accelerate_protocol::bitswap::Error),
    #[error("timed out")]
    Timeout,
}

/// Reads one message; `Closed` at a clean end of stream.
#[cfg(test)]
pub(crate) async fn read_message(
    stream: &mut (impl AsyncRead + Unpin),
    idle: Duration,
    room: &mut Reservation,
) -> Result<Message, WireError> {
    let len = read_length(stream, idle).await?;
    Ok(Message::decode(read_body(stream, len, room).await?)?)
}

/// Waits up to `idle` for the next message's length prefix; `Closed` at a clean end of
/// stream.
pub(crate) async fn read_length(
    stream: &mut (impl AsyncRead + Unpin),
    idle: Duration,
) -> Result<usize, WireError> {
    let len = tokio::time::timeout(idle, read_varint(stream))
        .await
        .map_err(|_| WireError::Timeout)??;
    if len > MESSAGE_SIZE_LIMIT as u64 {
        return Err(WireError::TooLarge(len));
    }
    Ok(len as usize)
}

/// Reads a message body of `len` bytes (from [`read_length`]). The buffer grows as
/// bytes arrive, each growth held in `room` first: a peer that announces 4 MiB and
/// sends nothing costs nothing.
pub(crate) async fn read_body(
    stream: &mut (impl AsyncRead + Unpin),
    len: usize,
    room: &mut Reservation,
) -> Result<Vec<u8>, WireError> {
    // A message that started arriving must finish in reasonable time.
    tokio::time::timeout(Duration::from_secs(60), read_growing(stream, len, room))
        .await
        .map_err(|_| WireError::Timeout)?
}

async fn read_growing(
    stream: &mut (impl AsyncRead + Unpin),
    len: usize,
    room: &mut Reservation,
) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::new();
    while body.len() < len {
        if body.len() == body.capacity() {
            // Doubling keeps the copies few; the room held is the capacity.
            let capacity = (body.capacity() * 2).clamp(FIRST_CHUNK.min(len), len);
            room.resize(capacity)?;
            body.reserve_exact(capacity - body.len());
        }
        let start = body.len();
        let end = body.capacity().min(len).min(start + READ_CHUNK);
        body.resize(end, 0);
        let n = stream.read(&mut body[start..]).await?;
        body.truncate(start + n);
        if n == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(body)
}

/// Writes one message with its length prefix.
pub(crate) async fn write_message(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &Message,
    version: ProtocolVersion,
    timeout: Duration,
) -> Result<(), WireError> {
    let body = message.encode(version);
    let mut buf = unsigned_varint::encode::u64_buffer();
    let prefix = unsigned_varint::encode::u64(body.len() as u64, &mut buf);
    tokio::time::timeout(timeout, async {
        stream.write_all(prefix).await?;
        stream.write_all(&body).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| WireError::Timeout)??;
    Ok(())
}

/// Reads a varint byte by byte (its end is known only at its last byte) and decodes it
/// with `unsigned_varint`.
async fn read_varint(stream: &mut (impl AsyncRead + Unpin)) -> Result<u64, WireError> {
    let mut prefix = [0u8; PREFIX_BYTES_LIMIT];
    for i in 0..PREFIX_BYTES_LIMIT {
        let n = stream.read(&mut prefix[i..=i]).await?;
        if n == 0 {
            return Err(if i == 0 {
                WireError::Closed
            } else {
                WireError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        if unsigned_varint::decode::is_last(prefix[i]) {
            let (len, _) =
                unsigned_varint::decode::u64(&prefix[..=i]).map_err(WireError::Prefix)?;
            return Ok(len);
        }
    }
    Err(WireError::Prefix(unsigned_varint::decode::Error::Overflow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitswap::budget::{Budget, Limits};
    use ipfs_accelerate_protocol::bitswap::{WantEntry, WantType};
    use libp2p::PeerId;

    #[tokio::test]
    async fn messages_round_trip_and_limits_hold() {
        let cid: cid::Cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            .parse()
            .unwrap();
        let message = Message {
            wantlist: vec![WantEntry {
                cid,
                priority: 1,
                cancel: false,
                want_type: WantType::Have,
                send_dont_have: true,
            }],
            ..Message::default()
        };
        let mut buf = Vec::new();
        for _ in 0..2 {
            let timeout = Duration::from_secs(1);
            write_message(&mut buf, &message, ProtocolVersion::V1_2_0, timeout)
                .await
                .unwrap();
        }
        let mut reader = futures::io::Cursor::new(buf.clone());
        let idle = Duration::from_secs(1);
        let budget = Budget::new(Limits {
            per_peer: 1 << 20,
            total: 1 << 20,
        });
        let mut room = budget.reserve(PeerId::random());
        assert_eq!(
            read_message(&mut reader, idle, &mut room).await.unwrap(),
            message
        );
        assert_eq!(
            read_message(&mut reader, idle, &mut room).await.unwrap(),
            message
        );
        assert!(matches!(
            read_message(&mut reader, idle, &mut room).await,
            Err(WireError::Closed)
        ));
        // The second message is cut short.
        let mut reader = futures::io::Cursor::new(buf[..buf.len() - 3].to_vec());
        assert!(read_message(&mut reader, idle, &mut room).await.is_ok());
        assert!(read_message(&mut reader, idle, &mut room).await.is_err());
        // A length prefix over the limit is refused before allocating.
        let mut huge = Vec::new();
        let mut vbuf = unsigned_varint::encode::u64_buffer();
        huge.extend_from_slice(unsigned_varint::encode::u64(u64::from(u32::MAX), &mut vbuf));
        let mut reader = futures::io::Cursor::new(huge);
        assert!(matches!(
            read_message(&mut reader, idle, &mut room).await,
            Err(WireError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn a_body_holds_room_for_the_bytes_that_arrived_not_for_its_length() {
        let budget = Budget::new(Limits {
            per_peer: 1 << 20,
            total: 8 << 20,
        });
        let peer = PeerId::random();
        // Announces 4 MiB, sends 10 bytes and stalls: the room held stays the first chunk.
        let mut prefix = unsigned_varint::encode::u64_buffer();
        let mut data =
            unsigned_varint::encode::u64(MESSAGE_SIZE_LIMIT as u64, &mut prefix).to_vec();
        data.extend_from_slice(&[7; 10]);
        let mut stream = futures::io::Cursor::new(data).chain(Pending);
        let len = read_length(&mut stream, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(len, MESSAGE_SIZE_LIMIT);
        let mut room = budget.reserve(peer);
        let reading = read_growing(&mut stream, len, &mut room);
        let waited = tokio::time::timeout(Duration::from_millis(100), reading).await;
        assert!(waited.is_err(), "the stalled body is still being read");
        assert_eq!(budget.total(), FIRST_CHUNK);
        drop(room);
        assert_eq!(budget.total(), 0);
        // A body larger than the peer's share is refused once its bytes pass it.
        let mut room = budget.reserve(peer);
        let mut stream = futures::io::Cursor::new(vec![1u8; 2 << 20]);
        let result = read_body(&mut stream, 2 << 20, &mut room).await;
        assert!(
            matches!(result, Err(WireError::OverBudget(Exceeded::Peer { .. }))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn malformed_length_prefixes_are_refused() {
        let idle = Duration::from_secs(1);
        // Not minimal (a trailing zero byte), and longer than any u64.
        for prefix in [vec![0x81, 0x00], vec![0xff; 11]] {
            let mut reader = futures::io::Cursor::new(prefix);
            let result = read_length(&mut reader, idle).await;
            assert!(matches!(result, Err(WireError::Prefix(_))), "{result:?}");
        }
        // Cut short inside the prefix.
        let mut reader = futures::io::Cursor::new(vec![0x81]);
        assert!(matches!(
            read_length(&mut reader, idle).await,
            Err(WireError::Io(_))
        ));
    }

    /// Never yields a byte, never ends: a peer that went quiet.
    struct Pending;

    impl AsyncRead for Pending {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            _buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Pending
        }
    }
}
