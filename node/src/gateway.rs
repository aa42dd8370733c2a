//! HTTP gateway: `GET`/`HEAD /ipfs/{cid}[/path]` for people and browsers (files with
//! content types, directory listings, byte ranges) and the trustless formats for
//! programs (`?format=raw|car`, `Accept: application/vnd.ipld.raw|car`), with
//! immutable caching headers and ETags. Blocks we lack are fetched from peers first.
//! The empty directory is always served, stored or not.

use std::sync::Arc;

use axum::Router;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cid::Cid;
use tokio::sync::watch;

use crate::http_body::stream_from_blocking;
use crate::node::{BLOCK_FETCH_TIMEOUT, Node};
use crate::unixfs::{self, export::EntryKind};

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";
const IMMUTABLE: &str = "public, max-age=29030400, immutable";
/// The empty UnixFS directory, always answerable (`QmUNLLs...`).
const EMPTY_DIR: &[u8] = &[0x0a, 0x02, 0x08, 0x01];

/// Serves the gateway on `listener` until `stop` fires.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/ipfs/{cid}", get(root))
        .route("/ipfs/{cid}/", get(root))
        .route("/ipfs/{cid}/{*path}", get(with_path))
        .with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
}

type Params = Query<Vec<(String, String)>>;

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

async fn root(
    State(node): State<Arc<Node>>,
    Path(cid): Path<String>,
    q: Params,
    headers: HeaderMap,
) -> Response {
    respond(node, cid, String::new(), q.0, headers).await
}

async fn with_path(
    State(node): State<Arc<Node>>,
    Path((cid, path)): Path<(String, String)>,
    q: Params,
    headers: HeaderMap,
) -> Response {
    respond(node, cid, path, q.0, headers).await
}

/// Which representation the client asked for.
#[derive(Debug, PartialEq, Eq)]
enum Format {
    UnixFs,
    Raw,
    Car,
}

fn format_of(q: &[(String, String)], headers: &HeaderMap) -> Format {
    let asked = q
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.as_str());
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match asked {
        Some("raw") => Format::Raw,
        Some("car") => Format::Car,
        _ if accept.contains(RAW) => Format::Raw,
        _ if accept.contains(CAR) => Format::Car,
        _ => Format::UnixFs,
    }
}

async fn respond(
    node: Arc<Node>,
    cid_text: String,
    path: String,
    q: Vec<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(root) = Cid::try_from(cid_text.as_str()) else {
        return error(StatusCode::BAD_REQUEST, format!("invalid CID {cid_text:?}"));
    };
    let target = match resolve(&node, root, &path).await {
        Ok(cid) => cid,
        Err(response) => return response,
    };
    store_if_empty_dir(&node, target).await;
    let format = format_of(&q, &headers);
    let etag = match format {
        Format::Raw => format!("\"{target}.raw\""),
        Format::Car => format!("\"{target}.car\""),
        Format::UnixFs => format!("\"{target}\""),
    };
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let mut response = match format {
        Format::Raw => raw(&node, target).await,
        Format::Car => car(&node, target).await,
        Format::UnixFs => unixfs_response(&node, target, &path, &headers).await,
    };
    let success = response.status().is_success();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if success {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    }
    let ipfs_path = if path.is_empty() {
        format!("/ipfs/{root}")
    } else {
        format!("/ipfs/{root}/{path}")
    };
    if let Ok(v) = HeaderValue::from_str(&ipfs_path) {
        h.insert("x-ipfs-path", v);
    }
    response
}

/// Puts the empty directory into the store when it is asked for, so it is always
/// served without the network.
async fn store_if_empty_dir(node: &Node, cid: Cid) {
    if cid.codec() != ipfs_accelerate_protocol::codec::DAG_PB {
        return;
    }
    if let Ok(empty) = ipfs_accelerate_protocol::Block::verified(cid, EMPTY_DIR) {
        let store = node.store();
        let _ = tokio::task::spawn_blocking(move || store.put_many(&[empty])).await;
    }
}

/// A block from the store or the network.
async fn block(node: &Node, cid: Cid) -> Result<ipfs_accelerate_protocol::Block, Response> {
    store_if_empty_dir(node, cid).await;
    node.bitswap()
        .get(cid, BLOCK_FETCH_TIMEOUT)
        .await
        .map_err(|e| error(StatusCode::GATEWAY_TIMEOUT, e))
}

/// Follows `path` through directory links from `root`.
async fn resolve(node: &Node, root: Cid, path: &str) -> Result<Cid, Response> {
    store_if_empty_dir(node, root).await;
    node.resolve(root, path).await.map_err(|e| match e {
        crate::node::Error::NoLink { .. } => error(StatusCode::NOT_FOUND, e),
        _ => error(StatusCode::GATEWAY_TIMEOUT, e),
    })
}

async fn raw(node: &Node, cid: Cid) -> Response {
    match block(node, cid).await {
        Ok(block) => ([(header::CONTENT_TYPE, RAW)], block.data().clone()).into_response(),
        Err(response) => response,
    }
}

async fn car(node: &Node, cid: Cid) -> Response {
    if let Err(e) = node.fetch(cid).await {
        return error(StatusCode::GATEWAY_TIMEOUT, e);
    }
    let store = node.store();
    let body = stream_from_blocking(move |out| {
        crate::car::export(&store, &cid, out)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    ([(header::CONTENT_TYPE, format!("{CAR}; version=1"))], body).into_response()
}

async fn unixfs_response(node: &Node, cid: Cid, path: &str, headers: &HeaderMap) -> Response {
    if let Err(e) = node.fetch(cid).await {
        return error(StatusCode::GATEWAY_TIMEOUT, e);
    }
    let store = node.store();
    let probe = store.clone();
    let size =
        match tokio::task::spawn_blocking(move || unixfs::export::file_size(&probe, &cid)).await {
            Ok(Ok(size)) => size,
            Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
    let Some(size) = size else {
        return directory(node, cid, path).await;
    };
    let content_type = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_string();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, size));
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    let body = stream_from_blocking(move |out| {
        let mut window = Window {
            out,
            skip: start,
            left: len,
        };
        unixfs::cat(&store, &cid, &mut window, &mut |_| {})
            .map(|_| ())
            .or_else(|e| {
                if window.left == 0 {
                    Ok(())
                } else {
                    Err(e.to_string())
                }
            })
    });
    let mut response = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = response.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    response
}

/// Passes through only bytes `skip..skip+left` of what is written.
struct Window<'a> {
    out: &'a mut dyn std::io::Write,
    skip: u64,
    left: u64,
}

impl std::io::Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut data = buf;
        let skipped = (self.skip as usize).min(data.len());
        self.skip -= skipped as u64;
        data = &data[skipped..];
        let take = (self.left as usize).min(data.len());
        if take > 0 {
            self.out.write_all(&data[..take])?;
            self.left -= take as u64;
        } else if self.left == 0 && self.skip == 0 {
            // Everything asked for is out; stop reading the rest of the file.
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `size`, inclusive.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

async fn directory(node: &Node, cid: Cid, path: &str) -> Response {
    let store = node.store();
    let entries = match tokio::task::spawn_blocking(move || unixfs::ls(&store, &cid)).await {
        Ok(Ok(entries)) => entries,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if let Some(index) = entries.iter().find(|e| e.name == "index.html") {
        let store = node.store();
        let index_cid = index.cid;
        let body = stream_from_blocking(move |out| {
            unixfs::cat(&store, &index_cid, out, &mut |_| {})
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        return ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    }
    // Links go through this directory's own CID, so they work at any depth.
    let base = format!("/ipfs/{cid}");
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body><h1>Index of {}</h1><ul>",
        escape(&format!("/ipfs/{cid}/{path}")),
        escape(&format!("/ipfs/{cid}/{path}"))
    );
    for entry in entries {
        let suffix = if entry.kind == EntryKind::Directory {
            "/"
        } else {
            ""
        };
        html.push_str(&format!(
            "<li><a href=\"{base}/{}\">{}{suffix}</a> {} bytes <small>{}</small></li>",
            escape(&entry.name),
            escape(&entry.name),
            entry.size,
            entry.cid
        ));
    }
    html.push_str("</ul></body></html>");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_parse_within_the_file() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
