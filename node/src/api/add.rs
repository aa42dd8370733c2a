//! `/api/v0/add`: files and whole directory trees from a multipart upload, the way
//! Kubo's clients send them (each part's name and type read by
//! [`ipfs_accelerate_protocol::upload`]). Bytes stream from the request into the
//! importer; nothing is buffered whole.

use axum::extract::multipart::Field;
use axum::extract::{Multipart, Query, State};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    Api, ApiError, ApiResult, ChannelReader, Params, consume_field, import_options, ndjson, types,
};
use ipfs_accelerate_protocol::upload::{Part, PartKind};

use crate::unixfs::{self, AddedEntry, ImportOptions, TreeEntry};

/// Longest symlink target accepted.
const SYMLINK_TARGET_LIMIT: usize = 4096;

/// Entries for the importer, then `None` once the tree is complete; closing the channel
/// without it fails the import, so a broken upload never pins a partial tree.
type Entries = mpsc::Sender<Option<TreeEntry<ChannelReader>>>;

/// A tree being imported on a blocking thread, fed entry by entry.
struct TreeUpload {
    name: String,
    entries: Entries,
    task: JoinHandle<Result<Vec<AddedEntry>, unixfs::Error>>,
}

impl TreeUpload {
    fn start(api: &Api, name: String, options: &ImportOptions) -> TreeUpload {
        let (entries, mut rx) = mpsc::channel(1);
        let store = api.node.store();
        let (tree_name, options) = (name.clone(), options.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut added = Vec::new();
            let incoming = std::iter::from_fn(|| match rx.blocking_recv() {
                Some(Some(entry)) => Some(Ok(entry)),
                Some(None) => None,
                None => Some(Err(unixfs::Error::Directory(
                    "the upload ended early".into(),
                ))),
            });
            unixfs::add_tree(
                &store,
                &tree_name,
                incoming,
                &options,
                &mut |entry| added.push(entry.clone()),
                &mut |_| {},
            )?;
            Ok(added)
        });
        TreeUpload {
            name,
            entries,
            task,
        }
    }

    /// Waits for the import; an error there explains a failed send better than the
    /// send does.
    async fn finish(self) -> ApiResult<Vec<AddedEntry>> {
        let _ = self.entries.send(None).await;
        drop(self.entries);
        self.task
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

pub(super) async fn add(
    State(api): State<Api>,
    Query(q): Params,
    mut form: Multipart,
) -> ApiResult {
    let options = import_options(&api, &q)?;
    let mut added: Vec<AddedEntry> = Vec::new();
    let mut tree: Option<TreeUpload> = None;
    while let Some(mut field) = form.next_field().await.map_err(super::upload_error)? {
        let part = Part::classify(
            field.file_name().unwrap_or_default(),
            field.content_type().unwrap_or_default(),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (top, rel, kind) = match part {
            Part::TopFile { name } => {
                // A top-level file: imported on its own.
                if let Some(done) = tree.take() {
                    added.extend(done.finish().await?);
                }
                added.push(add_file(&api, &mut field, name, &options).await?);
                continue;
            }
            Part::TreeRoot { top } => (top, None, PartKind::Directory),
            Part::InTree { top, rel, kind } => (top, Some(rel), kind),
        };
        let upload = match tree.take() {
            Some(current) if current.name == top => current,
            previous => {
                if let Some(done) = previous {
                    added.extend(done.finish().await?);
                }
                TreeUpload::start(&api, top, &options)
            }
        };
        let sent = match (rel, kind) {
            (None, _) => true,
            (Some(rel), PartKind::Directory) => {
                send(&upload.entries, TreeEntry::Directory(rel)).await
            }
            (Some(rel), PartKind::Symlink) => {
                let target = super::field_bytes(&mut field, SYMLINK_TARGET_LIMIT).await?;
                let target = String::from_utf8(target).map_err(|_| {
                    ApiError::bad_request(format!("symlink {}/{rel} is not UTF-8", upload.name))
                })?;
                send(&upload.entries, TreeEntry::Symlink { path: rel, target }).await
            }
            (Some(rel), PartKind::File) => send_file(&upload.entries, &rel, &mut field).await?,
        };
        if !sent {
            // The importer stopped: its error says why.
            return Err(match upload.finish().await {
                Err(error) => error,
                Ok(_) => ApiError::internal("the directory import stopped early"),
            });
        }
        tree = Some(upload);
    }
    if let Some(done) = tree.take() {
        added.extend(done.finish().await?);
    }
    if options.pin {
        for root in added.iter().filter(|e| !e.name.contains('/')) {
            api.node.provide_root(root.cid).await;
        }
    }
    Ok(ndjson(added.iter().map(types::Added::from)))
}

async fn add_file(
    api: &Api,
    field: &mut Field<'_>,
    name: String,
    options: &ImportOptions,
) -> ApiResult<AddedEntry> {
    let store = api.node.store();
    let options = options.clone();
    consume_field(field, move |reader| {
        unixfs::add_reader(&store, reader, &name, &options, &mut |_| {})
    })
    .await
}

async fn send(entries: &Entries, entry: TreeEntry<ChannelReader>) -> bool {
    entries.send(Some(entry)).await.is_ok()
}

/// Hands the importer a reader for this part, then pumps the part's bytes into it.
async fn send_file(entries: &Entries, rel: &str, field: &mut Field<'_>) -> ApiResult<bool> {
    let (tx, reader) = ChannelReader::channel();
    if !send(entries, TreeEntry::File(rel.into(), reader)).await {
        return Ok(false);
    }
    super::pump_field(field, &tx).await
}
