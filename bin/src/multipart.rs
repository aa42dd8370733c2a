//! A multipart/form-data request body the way Kubo's clients build uploads: one part
//! per file, directory (`application/x-directory`) or symlink (`application/symlink`),
//! each named by its URL-escaped path. Files are opened only when their part is read,
//! so a tree of any size streams with one file open at a time.
//!
//! Each body draws its own boundary: 32 random alphanumeric characters (about 190
//! bits). The content is streamed, never scanned, so it is not checked for the
//! boundary; a file holds it by chance with probability about `len / 2^190`, far below
//! any disk error rate, and a file cannot be crafted to hold a boundary that does not
//! exist until the upload starts. A fixed boundary broke any file that contained it.

use std::collections::VecDeque;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipfs_accelerate_node::envelope::{self, Seal};
use ipfs_accelerate_node::unixfs::{self, FsKind};

/// Random characters in a boundary (RFC 2046 allows up to 70 in all).
const BOUNDARY_RANDOM_CHARS: usize = 32;

/// Where a part's content comes from.
enum Content {
    Bytes(Vec<u8>),
    File(PathBuf),
    Reader(Box<dyn Read>),
}

/// A streaming multipart body; add parts, then read it.
pub(crate) struct MultipartBody {
    boundary: String,
    parts: VecDeque<(String, Content)>,
    current: Box<dyn Read>,
    finished: bool,
    /// Applied to every file's bytes (`add --encrypt-to`, `--compress`).
    seal: Seal,
}

impl std::fmt::Debug for MultipartBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MultipartBody({} parts left)", self.parts.len())
    }
}

impl MultipartBody {
    pub(crate) fn new() -> MultipartBody {
        use rand::RngExt;
        let random: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(BOUNDARY_RANDOM_CHARS)
            .map(char::from)
            .collect();
        MultipartBody {
            boundary: format!("ipfs-accelerate-{random}"),
            parts: VecDeque::new(),
            current: Box::new(std::io::empty()),
            finished: false,
            seal: Seal::default(),
        }
    }

    /// Seals every file's bytes as they are read (see `node::envelope`).
    pub(crate) fn sealed(mut self, seal: Seal) -> Self {
        self.seal = seal;
        self
    }

    /// The request's Content-Type, naming this body's boundary.
    pub(crate) fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// One part with the bytes of `reader` (a file, stdin).
    pub(crate) fn reader(mut self, name: &str, reader: Box<dyn Read>) -> Self {
        self.push(name, "application/octet-stream", Content::Reader(reader));
        self
    }

    /// `path` as `name`: a file, or a directory and everything under it (hidden names
    /// only with `hidden`).
    pub(crate) fn path(mut self, name: &str, path: &Path, hidden: bool) -> Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot add {}", path.display()))?;
        if !meta.is_dir() {
            self.push(name, "application/octet-stream", Content::File(path.into()));
            return Ok(self);
        }
        self.push(name, "application/x-directory", Content::Bytes(Vec::new()));
        for (rel, kind) in unixfs::walk_dir(path, hidden)? {
            let part = format!("{name}/{rel}");
            let full = path.join(&rel);
            match kind {
                FsKind::Directory => {
                    self.push(&part, "application/x-directory", Content::Bytes(Vec::new()))
                }
                FsKind::File => self.push(&part, "application/octet-stream", Content::File(full)),
                FsKind::Symlink => {
                    let target = std::fs::read_link(&full)
                        .with_context(|| format!("reading link {}", full.display()))?;
                    let target = target.to_string_lossy().into_owned().into_bytes();
                    self.push(&part, "application/symlink", Content::Bytes(target));
                }
            }
        }
        Ok(self)
    }

    fn push(&mut self, name: &str, content_type: &str, content: Content) {
        let escaped: String =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let head = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{escaped}\"\r\nContent-Type: {content_type}\r\n\r\n",
            self.boundary
        );
        self.parts.push_back((head, content));
    }

    /// Moves to the next part (its head, content and line break), or the closing line.
    fn advance(&mut self) -> std::io::Result<bool> {
        let Some((head, content)) = self.parts.pop_front() else {
            if self.finished {
                return Ok(false);
            }
            self.finished = true;
            self.current = Box::new(Cursor::new(format!("--{}--\r\n", self.boundary)));
            return Ok(true);
        };
        let body: Box<dyn Read> = match content {
            Content::Bytes(bytes) => Box::new(Cursor::new(bytes)),
            Content::Reader(reader) => self.seal_file(reader)?,
            Content::File(path) => {
                let file = std::fs::File::open(&path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot add {}: {e}", path.display()))
                })?;
                self.seal_file(Box::new(file))?
            }
        };
        self.current = Box::new(Cursor::new(head).chain(body).chain(&b"\r\n"[..]));
        Ok(true)
    }
}

impl MultipartBody {
    fn seal_file(&self, file: Box<dyn Read>) -> std::io::Result<Box<dyn Read>> {
        envelope::seal(file, &self.seal).map_err(std::io::Error::other)
    }
}

impl Read for MultipartBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if !self.advance()? {
                return Ok(0);
            }
        }
    }
}
