//! The parts of a Kubo-style multipart upload (`/api/v0/add`): each part is a file, a
//! directory (`application/x-directory`) or a symlink (`application/symlink`), named by
//! its URL-escaped path; a top-level directory and the parts under it make one tree.
//! [`Part::classify`] reads a part's name and content type into where it goes, refusing
//! names that are not plain paths before any byte of the part is read.

use percent_encoding::percent_decode_str;

/// Content type of a directory part.
pub const DIRECTORY: &str = "application/x-directory";
/// Content type of a symlink part (its body is the target).
pub const SYMLINK: &str = "application/symlink";

/// What kind of entry a part inside a tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    Directory,
    File,
    Symlink,
}

/// Where one part of an upload goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A file at the top level, imported on its own under `name`.
    TopFile { name: String },
    /// The top-level directory of the tree `top`.
    TreeRoot { top: String },
    /// An entry at `rel` (a plain `/`-separated path) inside the tree `top`.
    InTree {
        top: String,
        rel: String,
        kind: PartKind,
    },
}

/// A part whose name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("part name {0:?} is not UTF-8 once unescaped")]
    NotUtf8(String),
    #[error("invalid path {0:?} in a tree: only plain names (no empty part, '.' or '..')")]
    NotPlain(String),
}

impl Part {
    /// Where the part named `file_name` (as sent, URL-escaped) with `content_type` goes.
    pub fn classify(file_name: &str, content_type: &str) -> Result<Part, PartError> {
        let path = percent_decode_str(file_name)
            .decode_utf8()
            .map_err(|_| PartError::NotUtf8(file_name.to_owned()))?;
        let path = path.trim_matches('/');
        let (top, rel) = path.split_once('/').unwrap_or((path, ""));
        let top = top.to_owned();
        let kind = match content_type {
            DIRECTORY => PartKind::Directory,
            SYMLINK => PartKind::Symlink,
            _ => PartKind::File,
        };
        match (kind, rel.is_empty()) {
            (PartKind::Directory, true) => Ok(Part::TreeRoot { top }),
            (_, true) => Ok(Part::TopFile {
                name: path.to_owned(),
            }),
            (kind, false) => {
                check_plain(rel)?;
                Ok(Part::InTree {
                    top,
                    rel: rel.to_owned(),
                    kind,
                })
            }
        }
    }
}

/// Refuses a relative `/`-separated path with an empty, `.` or `..` part (or none).
pub fn check_plain(path: &str) -> Result<(), PartError> {
    let bad = path.is_empty()
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    match bad {
        true => Err(PartError::NotPlain(path.to_owned())),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_go_where_kubo_clients_mean_them() {
        assert_eq!(
            Part::classify("a%20b.txt", "application/octet-stream"),
            Ok(Part::TopFile {
                name: "a b.txt".into()
            })
        );
        assert_eq!(
            Part::classify("dir", DIRECTORY),
            Ok(Part::TreeRoot { top: "dir".into() })
        );
        assert_eq!(
            Part::classify("/dir/sub/f%C3%B6", "text/plain"),
            Ok(Part::InTree {
                top: "dir".into(),
                rel: "sub/fö".into(),
                kind: PartKind::File
            })
        );
        assert_eq!(
            Part::classify("dir/l", SYMLINK),
            Ok(Part::InTree {
                top: "dir".into(),
                rel: "l".into(),
                kind: PartKind::Symlink
            })
        );
    }

    #[test]
    fn names_that_are_not_plain_paths_are_refused() {
        for name in [
            "dir/..",
            "dir/a/../b",
            "dir/./a",
            "dir/a//b",
            "dir/%2E%2E/x",
        ] {
            assert!(
                matches!(
                    Part::classify(name, "text/plain"),
                    Err(PartError::NotPlain(_))
                ),
                "{name}"
            );
        }
        assert!(matches!(
            Part::classify("%FF", "text/plain"),
            Err(PartError::NotUtf8(_))
        ));
    }
}
