//! HTTP gateway: `GET`/`HEAD /ipfs/{cid}[/path]` for people and browsers (files with
//! content types, directory listings, byte ranges) and the trustless formats for
//! programs (`?format=raw|car`, `Accept: application/vnd.ipld.raw|car`), with
//! immutable caching headers and ETags. Blocks we lack are fetched from peers as the
//! answer needs them, in order within a bounded window ([`crate::unixfs::reader`]): a
//! file's first bytes go out once its first leaf is here, and a byte range fetches only
//! the blocks it covers ([`file`]). The empty directory is
//! always served, stored or not.
//!
//! Origins: as Kubo's subdomain gateway, `http://{cidv1}.ipfs.localhost:PORT/path`
//! serves each root under an origin of its own, so one site's scripts cannot read
//! another's data; a path request (`/ipfs/{cid}/...`) with `Host: localhost` is
//! redirected there. Answers carry the configured CORS header
//! (`gateway.cors_allow_origin`, `*` by default as in Kubo).

mod file;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cid::Cid;
use tokio::sync::watch;

use crate::config::GatewayConfig;
use crate::http_body::stream_from_blocking;
use crate::http_server::{self, Limits};
use crate::unixfs::{self, export::EntryKind, reader};
use crate::{BLOCK_FETCH_TIMEOUT, Node};

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";
const IMMUTABLE: &str = "public, max-age=29030400, immutable";
/// The empty UnixFS directory, always answerable (`QmUNLLs...`).
const EMPTY_DIR: &[u8] = &[0x0a, 0x02, 0x08, 0x01];
/// Host names under which each root gets an origin of its own.
const SUBDOMAIN_SUFFIX: &str = ".ipfs.localhost";
/// Longest DNS label: a CID longer than this cannot be a subdomain.
const DNS_LABEL_LIMIT: usize = 63;
/// Response headers a page on another origin may read (with CORS).
const EXPOSED_HEADERS: &str = "Content-Length, Content-Range, X-Ipfs-Path";
/// Characters escaped in a link built from a DAG name.
const LINK_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What the handlers share.
#[derive(Debug, Clone)]
struct Gateway {
    node: Arc<Node>,
    config: Arc<GatewayConfig>,
}

/// Serves the gateway on `listener` until `stop` fires.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let config = node.repo().config().gateway.clone();
    let limits = Limits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout(),
        write_timeout: config.write_timeout(),
    };
    let gateway = Gateway {
        node,
        config: Arc::new(config),
    };
    let app = Router::new().fallback(entry).with_state(gateway);
    http_server::serve(listener, app, limits, stop).await
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

/// Every request: CORS preflight, GET and HEAD, within the request timeout.
async fn entry(
    State(gw): State<Gateway>,
    method: Method,
    uri: Uri,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    let mut response = if method == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else if method != Method::GET && method != Method::HEAD {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("the gateway answers GET and HEAD, not {method}"),
        )
    } else {
        let timeout = gw.config.request_timeout();
        let request = Request { method, q, headers };
        match tokio::time::timeout(timeout, route(&gw, &uri, &request)).await {
            Ok(response) => response,
            Err(_) => error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer for {uri} within {timeout:?}"),
            ),
        }
    };
    add_cors(&gw.config, response.headers_mut());
    response
}

/// What the answer depends on besides the content.
struct Request {
    method: Method,
    q: Vec<(String, String)>,
    headers: HeaderMap,
}

fn add_cors(config: &GatewayConfig, h: &mut HeaderMap) {
    let Ok(origin) = HeaderValue::from_str(&config.cors_allow_origin) else {
        return;
    };
    if origin.is_empty() {
        return;
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Range, User-Agent, X-Requested-With"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
}

/// Picks the root from the host (subdomain) or the path, or redirects a path request
/// on `localhost` to the root's own subdomain.
async fn route(gw: &Gateway, uri: &Uri, request: &Request) -> Response {
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (name, port) = split_host(host);
    let name = name.to_ascii_lowercase();
    if let Some(label) = name.strip_suffix(SUBDOMAIN_SUFFIX)
        && !label.is_empty()
        && !label.contains('.')
    {
        let path = match decode_path(uri.path()) {
            Ok(path) => path,
            Err(response) => return response,
        };
        return respond(gw, label, path, String::new(), request).await;
    }
    let Some(rest) = uri.path().strip_prefix("/ipfs/") else {
        return error(
            StatusCode::NOT_FOUND,
            "this gateway serves /ipfs/{cid}[/path]",
        );
    };
    let (cid_text, raw_path) = rest.split_once('/').unwrap_or((rest, ""));
    if name == "localhost"
        && let Some(location) = subdomain_url(cid_text, raw_path, uri.query(), port)
        && let Ok(location) = HeaderValue::from_str(&location)
    {
        return (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, location)],
        )
            .into_response();
    }
    let path = match decode_path(raw_path) {
        Ok(path) => path,
        Err(response) => return response,
    };
    let base = format!("/ipfs/{cid_text}");
    respond(gw, cid_text, path, base, request).await
}

/// `host[:port]` as the name and the `:port` part (empty without one).
fn split_host(host: &str) -> (&str, &str) {
    match host.rfind(':') {
        Some(at) if !host.ends_with(']') && host[at + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            host.split_at(at)
        }
        _ => (host, ""),
    }
}

/// Where a path request for `cid_text` lives on the subdomain gateway: the CID as
/// base32 CIDv1 (DNS names ignore case), if it fits in a DNS label.
fn subdomain_url(
    cid_text: &str,
    raw_path: &str,
    query: Option<&str>,
    port: &str,
) -> Option<String> {
    let cid = Cid::try_from(cid_text).ok()?;
    let label = Cid::new_v1(cid.codec(), *cid.hash()).to_string();
    if label.len() > DNS_LABEL_LIMIT {
        return None;
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Some(format!(
        "http://{label}{SUBDOMAIN_SUFFIX}{port}/{raw_path}{query}"
    ))
}

/// The URL path, percent-decoded, without leading or trailing `/`.
fn decode_path(raw: &str) -> Result<String, Response> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|path| path.trim_matches('/').to_string())
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("path {raw:?} is not UTF-8"),
            )
        })
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
    gw: &Gateway,
    cid_text: &str,
    path: String,
    base: String,
    request: &Request,
) -> Response {
    let node = &gw.node;
    let Ok(root) = Cid::try_from(cid_text) else {
        return error(StatusCode::BAD_REQUEST, format!("invalid CID {cid_text:?}"));
    };
    let target = match resolve(node, root, &path).await {
        Ok(cid) => cid,
        Err(response) => return response,
    };
    store_if_empty_dir(node, target).await;
    let format = format_of(&request.q, &request.headers);
    let etag = match format {
        Format::Raw => format!("\"{target}.raw\""),
        Format::Car => format!("\"{target}.car\""),
        Format::UnixFs => format!("\"{target}\""),
    };
    if request
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let mut response = match format {
        Format::Raw => raw(node, target).await,
        Format::Car => car(gw, target).await,
        Format::UnixFs => unixfs_response(gw, target, &path, &base, request).await,
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
        crate::Error::NoLink { .. } => error(StatusCode::NOT_FOUND, e),
        _ => error(StatusCode::GATEWAY_TIMEOUT, e),
    })
}

async fn raw(node: &Node, cid: Cid) -> Response {
    match block(node, cid).await {
        Ok(block) => ([(header::CONTENT_TYPE, RAW)], block.data().clone()).into_response(),
        Err(response) => response,
    }
}

/// The DAG as a CAR, streamed as its blocks arrive in order.
async fn car(gw: &Gateway, cid: Cid) -> Response {
    if let Err(response) = block(&gw.node, cid).await {
        return response;
    }
    let mut read = reader::dag_reader(gw.node.bitswap().clone(), cid);
    let runtime = tokio::runtime::Handle::current();
    let body = stream_from_blocking(gw.config.write_timeout(), move |out| {
        reader::write_car(&mut read, &runtime, &cid, out)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    ([(header::CONTENT_TYPE, format!("{CAR}; version=1"))], body).into_response()
}

async fn unixfs_response(
    gw: &Gateway,
    cid: Cid,
    path: &str,
    base: &str,
    request: &Request,
) -> Response {
    let root = match block(&gw.node, cid).await {
        Ok(block) => block,
        Err(response) => return response,
    };
    if file::is_file(&root) {
        let content_type = mime_guess::from_path(path)
            .first_raw()
            .unwrap_or("application/octet-stream");
        return file_response(gw, root, content_type, request);
    }
    directory(gw, cid, path, base, request).await
}

/// A file (or the byte range asked for), streamed as its blocks arrive.
fn file_response(
    gw: &Gateway,
    root: ipfs_accelerate_protocol::Block,
    content_type: &str,
    request: &Request,
) -> Response {
    let size = match file::size(&root) {
        Ok(size) => size,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e),
    };
    let range = request
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeAnswer::Whole, |v| parse_range(v, size));
    let (status, start, len) = match range {
        RangeAnswer::Whole => (StatusCode::OK, 0, size),
        RangeAnswer::Part(start, end) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeAnswer::Unsatisfiable => {
            let mut response = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range asked for is outside the file's {size} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return response;
        }
    };
    let body = match request.method {
        Method::HEAD => Body::empty(),
        _ => {
            let range = start..start + len;
            let mut reader =
                reader::file_reader(gw.node.bitswap().clone(), *root.cid(), range.clone());
            let runtime = tokio::runtime::Handle::current();
            stream_from_blocking(gw.config.write_timeout(), move |out| {
                reader::write_file(&mut reader, &runtime, &range, out)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        }
    };
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

/// What a `Range` header asks of a file.
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// No usable range (several, or not bytes): the whole file, as Kubo answers.
    Whole,
    /// Bytes `a..=b`, within the file.
    Part(u64, u64),
    /// A range that starts past the end: 416.
    Unsatisfiable,
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `size`, inclusive.
fn parse_range(value: &str, size: u64) -> RangeAnswer {
    let Some(spec) = value.strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAnswer::Whole;
    };
    let parsed = match (a.trim(), b.trim()) {
        ("", n) => n.parse::<u64>().ok().map(|n| match n {
            0 => None,
            n => Some((size.saturating_sub(n), size.saturating_sub(1))),
        }),
        (a, "") => a.parse().ok().map(|a| Some((a, size.saturating_sub(1)))),
        (a, b) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some(Some((a, b.min(size.saturating_sub(1))))),
            _ => None,
        },
    };
    match parsed {
        // Not a valid range: ignored, as RFC 9110 says.
        None => RangeAnswer::Whole,
        Some(Some((start, end))) if start < size && start <= end => RangeAnswer::Part(start, end),
        Some(_) => RangeAnswer::Unsatisfiable,
    }
}

async fn directory(gw: &Gateway, cid: Cid, path: &str, base: &str, request: &Request) -> Response {
    let store = gw.node.store();
    let entries = match tokio::task::spawn_blocking(move || unixfs::ls(&store, &cid)).await {
        Ok(Ok(entries)) => entries,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if let Some(index) = entries.iter().find(|e| e.name == "index.html") {
        return match block(&gw.node, index.cid).await {
            Ok(index) if file::is_file(&index) => {
                file_response(gw, index, "text/html; charset=utf-8", request)
            }
            Ok(_) => error(StatusCode::BAD_GATEWAY, "index.html is not a file"),
            Err(response) => response,
        };
    }
    let shown = format!("/ipfs/{cid}/{path}");
    // Links are paths under the root this request came through (its own origin on the
    // subdomain gateway); names from the DAG are escaped for the URL and for HTML.
    let here = match path.is_empty() {
        true => base.to_string(),
        false => format!("{base}/{}", link_path(path)),
    };
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body><h1>Index of {}</h1><ul>",
        escape(&shown),
        escape(&shown)
    );
    for entry in entries {
        let suffix = if entry.kind == EntryKind::Directory {
            "/"
        } else {
            ""
        };
        let href = format!(
            "{here}/{}",
            percent_encoding::utf8_percent_encode(&entry.name, LINK_ESCAPES)
        );
        html.push_str(&format!(
            "<li><a href=\"{}\">{}{suffix}</a> {} bytes <small>{}</small></li>",
            escape(&href),
            escape(&entry.name),
            entry.size,
            entry.cid
        ));
    }
    html.push_str("</ul></body></html>");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// A `/`-separated path with each segment escaped for a URL.
fn link_path(path: &str) -> String {
    path.split('/')
        .map(|segment| percent_encoding::utf8_percent_encode(segment, LINK_ESCAPES).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_within_the_file() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=50-500", 100), Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=200-300", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Whole);
        assert_eq!(parse_range("bytes=x-1", 100), Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
    }

    #[test]
    fn path_requests_on_localhost_move_to_the_roots_subdomain() {
        let v0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn";
        let url = subdomain_url(v0, "a/b.html", Some("x=1"), ":8080").unwrap();
        assert_eq!(
            url,
            "http://bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354.ipfs.localhost:8080/a/b.html?x=1"
        );
        assert_eq!(subdomain_url("not-a-cid", "", None, ""), None);
        assert_eq!(split_host("localhost:8080"), ("localhost", ":8080"));
        assert_eq!(split_host("localhost"), ("localhost", ""));
        assert_eq!(split_host("[::1]"), ("[::1]", ""));
    }

    #[test]
    fn names_from_the_dag_cannot_inject_markup() {
        let name = "<script>alert('x')</script>\" onmouseover=\"x";
        assert!(!escape(name).contains(['<', '>', '"', '\'']));
        let link = link_path(name);
        assert!(!link.contains(['<', '>', '"', '\'', ' ']), "{link}");
    }
}
