//! Length-prefixed Bitswap messages on a stream, with size limits and timeouts.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ipfs_accelerate_protocol::bitswap::{MESSAGE_SIZE_LIMIT, Message, ProtocolVersion};

/// Why a stream read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("stream closed")]
    Closed,
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("message of {0} bytes is over the limit")]
    TooLarge(u64),
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
) -> Result<Message, WireError> {
    let len = read_length(stream, idle).await?;
    read_body(stream, len).await
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

/// Reads and decodes a message body of `len` bytes (from [`read_length`]).
pub(crate) async fn read_body(
    stream: &mut (impl AsyncRead + Unpin),
    len: usize,
) -> Result<Message, WireError> {
    let mut body = vec![0u8; len];
    // A message that started arriving must finish in reasonable time.
    tokio::time::timeout(Duration::from_secs(60), stream.read_exact(&mut body))
        .await
        .map_err(|_| WireError::Timeout)??;
    Ok(Message::decode(body)?)
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

async fn read_varint(stream: &mut (impl AsyncRead + Unpin)) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut byte = [0u8];
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Err(if i == 0 {
                WireError::Closed
            } else {
                WireError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::TooLarge(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipfs_accelerate_protocol::bitswap::{WantEntry, WantType};

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
        assert_eq!(read_message(&mut reader, idle).await.unwrap(), message);
        assert_eq!(read_message(&mut reader, idle).await.unwrap(), message);
        assert!(matches!(
            read_message(&mut reader, idle).await,
            Err(WireError::Closed)
        ));
        // The second message is cut short.
        let mut reader = futures::io::Cursor::new(buf[..buf.len() - 3].to_vec());
        assert!(read_message(&mut reader, idle).await.is_ok());
        assert!(read_message(&mut reader, idle).await.is_err());
        // A length prefix over the limit is refused before allocating.
        let mut huge = Vec::new();
        let mut vbuf = unsigned_varint::encode::u64_buffer();
        huge.extend_from_slice(unsigned_varint::encode::u64(u64::from(u32::MAX), &mut vbuf));
        let mut reader = futures::io::Cursor::new(huge);
        assert!(matches!(
            read_message(&mut reader, idle).await,
            Err(WireError::TooLarge(_))
        ));
    }
}
