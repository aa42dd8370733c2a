//! File contents sealed before chunking, and opened again after reading: zstd
//! compression, then age encryption to named recipients.
//!
//! Sealing happens before UnixFS sees a byte, so blocks, Bitswap, the gateway and CARs
//! only ever carry what was sealed, and CIDs address it. Both layers are standard
//! formats any tool reads:
//!
//! - **Encrypted** content is an age file (`age-encryption.org/v1`): X25519 recipients
//!   ([`keys`]), ChaCha20-Poly1305 in 64 KiB chunks, each authenticated as it is read,
//!   the last one marked, so a cut or altered file fails instead of reading short.
//! - **Compressed** content is a zstd stream that starts with a skippable frame holding
//!   [`COMPRESSED_TAG`]. `zstd -d` ignores that frame; [`open`] uses it to know the
//!   stream is ours to decompress, so a `.zst` file someone adds comes back as added.
//!
//! Opening looks at the first bytes: an age header is decrypted (with this node's key),
//! then a tagged zstd stream is decompressed; anything else passes through untouched.

pub mod keys;

use std::io::{self, BufRead, BufReader, Cursor, PipeWriter, Read, Write};
use std::thread::JoinHandle;

use age::x25519::{Identity, Recipient};

pub use keys::{KeyError, node_identity, parse_recipient, peer_recipient};

/// The first line of every age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// What the skippable frame in front of our zstd streams holds.
pub const COMPRESSED_TAG: &[u8] = b"ipfs-accelerate/zstd/1";
/// zstd's level 3: its default, the usual balance of ratio and speed.
const ZSTD_LEVEL: i32 = 3;
/// Plaintext read per step while sealing.
const SEAL_STEP: usize = 256 * 1024;
/// Most recipients one file is sealed to: their header (about 100 bytes each) stays
/// well inside [`AGE_HEADER_LIMIT`], so whatever this node seals it can open.
pub const RECIPIENT_LIMIT: usize = 256;
/// Longest age header opened: room for about 650 X25519 recipients. age re-parses the
/// header from its start at every line, so a longer one (or one that never ends) is
/// refused before age sees it.
const AGE_HEADER_LIMIT: u64 = 64 * 1024;
/// Largest zstd window opened, as a power of two: 8 MiB, what levels up to 19 use
/// (ours, level 3, uses 2 MiB). A frame may declare up to 2 GiB, which the decoder
/// would allocate before a byte of content arrives.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The skippable frame that starts a compressed stream: magic 0x184D2A5A (one of the
/// sixteen zstd reserves for skippable frames), the tag's length, the tag.
fn compressed_marker() -> Vec<u8> {
    let mut frame = 0x184D_2A5A_u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&(COMPRESSED_TAG.len() as u32).to_le_bytes());
    frame.extend_from_slice(COMPRESSED_TAG);
    frame
}

/// Bytes [`open`] looks at to tell what it was given.
fn sniff_len() -> usize {
    AGE_MAGIC.len().max(compressed_marker().len())
}

/// Why content could not be sealed or opened. Each is one line.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("encrypted to other recipients: this node's key is not one of them")]
    NotRecipient,
    #[error("encrypted, and there is no node key here to open it")]
    NoKey,
    #[error("{0} recipients, at most {RECIPIENT_LIMIT} allowed")]
    TooManyRecipients(usize),
    #[error("encrypted content is unreadable: {0}")]
    BadCiphertext(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What [`seal`] does to a file's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seal {
    /// Encrypt to these; none means no encryption.
    pub recipients: Vec<Recipient>,
    /// zstd-compress (before encrypting).
    pub compress: bool,
}

impl Seal {
    /// True when sealing would leave the bytes as they are.
    pub fn is_plain(&self) -> bool {
        self.recipients.is_empty() && !self.compress
    }
}

/// The sealed form of `plain`, produced as it is read.
pub fn seal<'a, R: Read + 'a>(plain: R, seal: &Seal) -> Result<Box<dyn Read + 'a>, EnvelopeError> {
    if seal.recipients.len() > RECIPIENT_LIMIT {
        return Err(EnvelopeError::TooManyRecipients(seal.recipients.len()));
    }
    let mut reader: Box<dyn Read + 'a> = Box::new(plain);
    if seal.compress {
        let encoder = zstd::stream::read::Encoder::new(reader, ZSTD_LEVEL)?;
        reader = Box::new(Cursor::new(compressed_marker()).chain(encoder));
    }
    if !seal.recipients.is_empty() {
        reader = Box::new(Encrypting::new(reader, &seal.recipients)?);
    }
    Ok(reader)
}

/// The content of `sealed`, opened layer by layer; `key` decrypts (without one,
/// encrypted content is [`EnvelopeError::NoKey`]). Unsealed bytes pass through.
pub fn open<R: Read + Send + 'static>(
    sealed: R,
    key: Option<&Identity>,
) -> Result<Box<dyn Read + Send>, EnvelopeError> {
    let (prefix, reader) = sniff(sealed)?;
    if prefix.starts_with(AGE_MAGIC) {
        let key = key.ok_or(EnvelopeError::NoKey)?;
        let mut reader = BufReader::new(reader);
        let header = read_age_header(&mut reader)?;
        let decryptor = age::Decryptor::new_buffered(Cursor::new(header).chain(reader))
            .map_err(decrypt_error)?;
        let plain = decryptor
            .decrypt(std::iter::once(key as &dyn age::Identity))
            .map_err(decrypt_error)?;
        let plain = Labelled {
            inner: plain,
            label: "encrypted content is corrupt or cut short",
        };
        return decompress_if_tagged(plain);
    }
    decompress_if_tagged(reader)
}

fn decompress_if_tagged<R: Read + Send + 'static>(
    reader: R,
) -> Result<Box<dyn Read + Send>, EnvelopeError> {
    let (prefix, reader) = sniff(reader)?;
    if prefix.starts_with(&compressed_marker()) {
        let mut decoder = zstd::stream::read::Decoder::new(reader)?;
        decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
        return Ok(Box::new(Labelled {
            inner: decoder,
            label: "compressed content is corrupt or cut short",
        }));
    }
    Ok(Box::new(reader))
}

/// An age header's lines, up to and with its MAC line (`--- ...`), within
/// [`AGE_HEADER_LIMIT`] bytes.
fn read_age_header(reader: &mut impl BufRead) -> Result<Vec<u8>, EnvelopeError> {
    let mut header = Vec::new();
    loop {
        let start = header.len();
        let room = AGE_HEADER_LIMIT - start as u64;
        if (&mut *reader).take(room).read_until(b'\n', &mut header)? == 0 {
            return Err(EnvelopeError::BadCiphertext(
                "its header is cut short".into(),
            ));
        }
        let line = &header[start..];
        if line.starts_with(b"--- ") && line.ends_with(b"\n") {
            return Ok(header);
        }
        if header.len() as u64 >= AGE_HEADER_LIMIT {
            return Err(EnvelopeError::BadCiphertext(format!(
                "its header is over {} KiB",
                AGE_HEADER_LIMIT / 1024
            )));
        }
    }
}

/// Whether `prefix` (a file's first bytes) is sealed content [`open`] would change.
fn is_sealed(prefix: &[u8]) -> bool {
    prefix.starts_with(AGE_MAGIC) || prefix.starts_with(&compressed_marker())
}

/// Reads up to [`sniff_len`] bytes and gives them back with a reader that yields them
/// again first.
fn sniff<R: Read>(mut reader: R) -> io::Result<(Vec<u8>, impl Read)> {
    let mut prefix = Vec::with_capacity(sniff_len());
    (&mut reader)
        .take(sniff_len() as u64)
        .read_to_end(&mut prefix)?;
    Ok((prefix.clone(), Cursor::new(prefix).chain(reader)))
}

fn decrypt_error(e: age::DecryptError) -> EnvelopeError {
    match e {
        age::DecryptError::NoMatchingKeys => EnvelopeError::NotRecipient,
        age::DecryptError::Io(e) => EnvelopeError::Io(e),
        other => EnvelopeError::BadCiphertext(other.to_string()),
    }
}

/// Gives a reader's errors a line saying which layer failed.
struct Labelled<R> {
    inner: R,
    label: &'static str,
}

impl<R: Read> Read for Labelled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.label)))
    }
}

/// age encryption as a reader: age writes ciphertext into a buffer this drains.
struct Encrypting<R> {
    source: R,
    writer: Option<age::stream::StreamWriter<SharedBuffer>>,
    buffer: SharedBuffer,
    pending: Cursor<Vec<u8>>,
    step: Vec<u8>,
}

/// Where age's writer puts ciphertext until [`Encrypting`] hands it out.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<R: Read> Encrypting<R> {
    fn new(source: R, recipients: &[Recipient]) -> Result<Self, EnvelopeError> {
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| EnvelopeError::BadCiphertext(e.to_string()))?;
        let buffer = SharedBuffer::default();
        let writer = encryptor.wrap_output(buffer.clone())?;
        Ok(Self {
            source,
            writer: Some(writer),
            pending: Cursor::new(buffer.take()),
            buffer,
            step: vec![0; SEAL_STEP],
        })
    }
}

impl<R: Read> Read for Encrypting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.pending.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(writer) = self.writer.as_mut() else {
                return Ok(0);
            };
            let read = self.source.read(&mut self.step)?;
            if read == 0 {
                if let Some(writer) = self.writer.take() {
                    writer.finish()?;
                }
            } else {
                writer.write_all(&self.step[..read])?;
            }
            self.pending = Cursor::new(self.buffer.take());
        }
    }
}

/// What reading content does with sealed files: open them with this node's key (if
/// there is one here), or leave them as stored (`--raw`).
#[derive(Clone)]
pub struct Opener {
    raw: bool,
    key: Option<Identity>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("raw", &self.raw)
            .field("key", &self.key.is_some())
            .finish()
    }
}

impl Opener {
    /// Sealed content stays as stored.
    pub fn raw() -> Self {
        Self {
            raw: true,
            key: None,
        }
    }

    /// Sealed content is opened, decrypting with `key`.
    pub fn with_key(key: Option<Identity>) -> Self {
        Self { raw: false, key }
    }

    /// A writer that passes content on to `out` as this opener reads it.
    pub fn writer<W: Write + Send + 'static>(&self, out: W) -> OpeningWriter<W> {
        match self.raw {
            true => OpeningWriter {
                state: State::Plain(out),
            },
            false => OpeningWriter::new(out, self.key.clone()),
        }
    }
}

/// A writer that opens sealed content on its way to `out`: the first bytes decide;
/// unsealed bytes go straight through, sealed ones through [`open`] on a thread of
/// their own fed by a pipe. [`OpeningWriter::finish`] says whether all of it opened.
pub struct OpeningWriter<W: Write + Send + 'static> {
    state: State<W>,
}

impl<W: Write + Send + 'static> std::fmt::Debug for OpeningWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Sniffing { .. } => "sniffing",
            State::Plain(_) => "plain",
            State::Opening { .. } => "opening",
            State::Failed => "failed",
        };
        f.debug_struct("OpeningWriter")
            .field("state", &state)
            .finish()
    }
}

enum State<W> {
    Sniffing {
        prefix: Vec<u8>,
        out: W,
        key: Option<Identity>,
    },
    Plain(W),
    Opening {
        pipe: PipeWriter,
        worker: JoinHandle<Result<W, EnvelopeError>>,
    },
    Failed,
}

impl<W: Write + Send + 'static> OpeningWriter<W> {
    pub fn new(out: W, key: Option<Identity>) -> Self {
        Self {
            state: State::Sniffing {
                prefix: Vec::with_capacity(sniff_len()),
                out,
                key,
            },
        }
    }

    /// Ends the content: flushes what is left and gives `out` back, or the reason the
    /// content did not open whole.
    pub fn finish(mut self) -> Result<W, EnvelopeError> {
        self.decide()?;
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Plain(mut out) => {
                out.flush()?;
                Ok(out)
            }
            State::Opening { pipe, worker } => {
                drop(pipe);
                join(worker)
            }
            State::Sniffing { .. } | State::Failed => {
                Err(io::Error::other("the content failed to open earlier").into())
            }
        }
    }

    /// Leaves the sniffing state with the prefix seen so far.
    fn decide(&mut self) -> Result<(), EnvelopeError> {
        let State::Sniffing { .. } = self.state else {
            return Ok(());
        };
        let State::Sniffing {
            prefix,
            mut out,
            key,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Ok(());
        };
        if !is_sealed(&prefix) {
            out.write_all(&prefix)?;
            self.state = State::Plain(out);
            return Ok(());
        }
        let (reader, mut pipe) = io::pipe()?;
        let worker = std::thread::Builder::new()
            .name("open-content".into())
            .spawn(move || {
                let mut plain = open(reader, key.as_ref())?;
                io::copy(&mut plain, &mut out)?;
                out.flush()?;
                Ok(out)
            })?;
        if pipe.write_all(&prefix).is_err() {
            // The worker stopped already; its reason is the error.
            return join(worker).map(|_| ());
        }
        self.state = State::Opening { pipe, worker };
        Ok(())
    }
}

fn join<W>(worker: JoinHandle<Result<W, EnvelopeError>>) -> Result<W, EnvelopeError> {
    worker
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("opening content panicked").into()))
}

impl<W: Write + Send + 'static> Write for OpeningWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let State::Sniffing { prefix, .. } = &mut self.state {
            let room = sniff_len() - prefix.len();
            let taken = room.min(buf.len());
            prefix.extend_from_slice(&buf[..taken]);
            if prefix.len() == sniff_len() {
                self.decide().map_err(|e| io::Error::other(e.to_string()))?;
            }
            return Ok(taken);
        }
        match &mut self.state {
            State::Plain(out) => out.write(buf),
            State::Opening { pipe, .. } => match pipe.write(buf) {
                Ok(n) => Ok(n),
                Err(_) => {
                    let State::Opening { worker, .. } =
                        std::mem::replace(&mut self.state, State::Failed)
                    else {
                        return Err(io::Error::other("the content failed to open"));
                    };
                    Err(match join(worker) {
                        // Keeps the kind: a bounded output's FileTooLarge stays one.
                        Err(EnvelopeError::Io(e)) => e,
                        Err(e) => io::Error::other(e.to_string()),
                        Ok(_) => io::Error::other("the content ended before its last bytes"),
                    })
                }
            },
            State::Sniffing { .. } | State::Failed => {
                Err(io::Error::other("the content failed to open"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            State::Plain(out) => out.flush(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(plain: &[u8], seal_with: &Seal) -> Vec<u8> {
        let mut out = Vec::new();
        seal(Cursor::new(plain.to_vec()), seal_with)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn opened(sealed: &[u8], key: Option<&Identity>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        open(Cursor::new(sealed.to_vec()), key)
            .map_err(|e| e.to_string())?
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Pushes `sealed` through an [`OpeningWriter`] in uneven pieces.
    fn opened_by_writer(sealed: &[u8], key: Option<Identity>) -> Result<Vec<u8>, String> {
        let mut writer = OpeningWriter::new(Vec::new(), key);
        for piece in sealed.chunks(7919) {
            writer.write_all(piece).map_err(|e| e.to_string())?;
        }
        writer.finish().map_err(|e| e.to_string())
    }

    fn text(len: usize) -> Vec<u8> {
        (0..len)
            .flat_map(|i| format!("row {i}: {{\"score\": {}}}\n", i % 97).into_bytes())
            .take(len)
            .collect()
    }

    #[test]
    fn every_layer_round_trips_and_unsealed_bytes_pass_through() {
        let key = Identity::generate();
        let recipients = vec![key.to_public()];
        let plain = text(1_000_000);
        for (name, seal_with) in [
            ("plain", Seal::default()),
            (
                "compressed",
                Seal {
                    recipients: vec![],
                    compress: true,
                },
            ),
            (
                "encrypted",
                Seal {
                    recipients: recipients.clone(),
                    compress: false,
                },
            ),
            (
                "both",
                Seal {
                    recipients: recipients.clone(),
                    compress: true,
                },
            ),
        ] {
            let stored = sealed(&plain, &seal_with);
            assert_eq!(seal_with.is_plain(), stored == plain, "{name}");
            if seal_with.compress {
                assert!(stored.len() < plain.len() / 4, "{name}: {}", stored.len());
            }
            if !seal_with.recipients.is_empty() {
                assert!(stored.starts_with(AGE_MAGIC), "{name}");
                assert!(!stored.windows(6).any(|w| w == b"row 12"), "{name}");
            }
            assert_eq!(opened(&stored, Some(&key)).unwrap(), plain, "{name}");
            assert_eq!(
                opened_by_writer(&stored, Some(key.clone())).unwrap(),
                plain,
                "{name}"
            );
        }
        // Short and empty files are not mistaken for sealed ones.
        for short in [&b""[..], b"age", b"\x5a\x2a\x4d\x18"] {
            assert_eq!(opened(short, None).unwrap(), short);
            assert_eq!(opened_by_writer(short, None).unwrap(), short);
        }
        let empty = sealed(
            b"",
            &Seal {
                recipients: recipients.clone(),
                compress: true,
            },
        );
        assert_eq!(opened(&empty, Some(&key)).unwrap(), b"");
    }

    #[test]
    fn a_plain_zstd_file_is_left_compressed() {
        let zst = zstd::encode_all(Cursor::new(text(10_000)), 3).unwrap();
        assert_eq!(opened(&zst, None).unwrap(), zst);
        // And ours decode with any zstd decoder: the tag frame is skippable.
        let ours = sealed(
            &text(10_000),
            &Seal {
                recipients: vec![],
                compress: true,
            },
        );
        assert_eq!(zstd::decode_all(Cursor::new(ours)).unwrap(), text(10_000));
    }

    #[test]
    fn hostile_headers_and_windows_are_refused_before_they_cost() {
        let key = Identity::generate();
        // Endless stanzas, and a header with no line break at all: refused at 64 KiB.
        let mut stanzas = AGE_MAGIC.to_vec();
        stanzas.extend(b"-> x\n\n".repeat(100_000));
        let mut unbroken = AGE_MAGIC.to_vec();
        unbroken.extend(vec![b'a'; 10 << 20]);
        for hostile in [stanzas, unbroken] {
            let err = opened(&hostile, Some(&key)).unwrap_err();
            assert!(err.contains("header is over 64 KiB"), "{err}");
        }
        let cut = opened(AGE_MAGIC, Some(&key)).unwrap_err();
        assert!(cut.contains("header is cut short"), "{cut}");

        // A tagged zstd stream whose frame asks for a 128 MiB window.
        let mut encoder = zstd::stream::write::Encoder::new(compressed_marker(), 3).unwrap();
        encoder.window_log(27).unwrap();
        encoder.write_all(&text(100_000)).unwrap();
        let wide = encoder.finish().unwrap();
        let Err(err) = opened(&wide, None) else {
            panic!("a 128 MiB window opened");
        };
        assert!(err.contains("compressed content is corrupt"), "{err}");
        // The same content in a normal window opens.
        let normal = sealed(
            &text(100_000),
            &Seal {
                recipients: vec![],
                compress: true,
            },
        );
        assert_eq!(opened(&normal, None).unwrap(), text(100_000));
    }

    #[test]
    fn failures_are_one_line_errors() {
        let key = Identity::generate();
        let other = Identity::generate();
        let both = Seal {
            recipients: vec![key.to_public()],
            compress: true,
        };
        let stored = sealed(&text(300_000), &both);

        let not_ours = opened(&stored, Some(&other)).unwrap_err();
        assert!(not_ours.contains("other recipients"), "{not_ours}");
        let no_key = opened(&stored, None).unwrap_err();
        assert!(no_key.contains("no node key"), "{no_key}");

        let mut flipped = stored.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 1;
        let corrupt = opened(&flipped, Some(&key)).unwrap_err();
        assert!(corrupt.contains("corrupt or cut short"), "{corrupt}");

        let cut = &stored[..stored.len() - 10];
        let short = opened(cut, Some(&key)).unwrap_err();
        assert!(short.contains("corrupt or cut short"), "{short}");
        let short = opened_by_writer(cut, Some(key.clone())).unwrap_err();
        assert!(short.contains("corrupt or cut short"), "{short}");
        let not_ours = opened_by_writer(&stored, Some(other)).unwrap_err();
        assert!(not_ours.contains("other recipients"), "{not_ours}");

        let compressed = sealed(
            &text(300_000),
            &Seal {
                recipients: vec![],
                compress: true,
            },
        );
        let cut = &compressed[..compressed.len() / 2];
        let short = opened(cut, None).unwrap_err();
        assert!(
            short.contains("compressed content is corrupt or cut short"),
            "{short}"
        );
        for message in [not_ours, no_key, corrupt, short] {
            assert!(!message.contains('\n'), "{message}");
        }
    }
}
