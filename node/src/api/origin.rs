//! Keeps web pages out of the API, as Kubo does. A browser names the page behind every
//! request it sends for that page (`Origin`, or at least `Referer`); programs such as the
//! CLI and Kubo's RPC clients send neither. A request naming an origin that
//! `api.allowed_origins` does not list is refused with 403 before any handler runs, so no
//! page (not even one our own gateway serves) can POST `shutdown`, `repo/gc` or
//! `model/publish`. With the API on loopback, `Host` must name loopback too: a
//! DNS-rebinding page reaches 127.0.0.1 under its own host name, and is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::config::ApiConfig;

/// Headers a page allowed to call the API may send (Kubo's clients send these).
const ALLOWED_REQUEST_HEADERS: &str = "Authorization, Content-Type, X-Requested-With, Range";

/// Who may call the API, from [`ApiConfig`] and the address it is bound to.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    /// Allowed origins, lower case, without a trailing `/`.
    origins: Vec<String>,
    /// `*` was listed: any page may call.
    any_origin: bool,
    /// Host names (without port) a request may name; `None` when not bound to loopback.
    hosts: Option<Vec<String>>,
}

impl Policy {
    pub(super) fn new(config: &ApiConfig, bound: SocketAddr) -> Policy {
        let origins: Vec<String> = config
            .allowed_origins
            .iter()
            .map(String::as_str)
            .map(normalize_origin)
            .collect();
        let hosts = bound.ip().is_loopback().then(|| {
            let mut hosts = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "[::1]".to_string(),
            ];
            hosts.push(match bound {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            });
            hosts
        });
        Policy {
            any_origin: origins.iter().any(|o| o == "*"),
            origins,
            hosts,
        }
    }

    /// Why a request with these headers is refused, if it is. `Ok(Some(origin))` is an
    /// allowed page's origin, to echo in CORS headers.
    pub(super) fn check(&self, headers: &HeaderMap) -> Result<Option<String>, String> {
        if let Some(hosts) = &self.hosts
            && let Some(host) = headers.get(header::HOST)
        {
            let host = host.to_str().unwrap_or_default();
            let name = host_name(host).to_ascii_lowercase();
            if !hosts.contains(&name) {
                return Err(format!(
                    "Host {host:?} is not this machine's loopback name: the API answers \
                     localhost, 127.0.0.1 and [::1] only (a guard against DNS rebinding)"
                ));
            }
        }
        let origin = match headers.get(header::ORIGIN) {
            Some(origin) => origin.to_str().unwrap_or("invalid").to_string(),
            None => match headers.get(header::REFERER) {
                Some(referer) => origin_of(referer.to_str().unwrap_or("invalid")),
                None => return Ok(None),
            },
        };
        let normalized = normalize_origin(&origin);
        if self.any_origin || self.origins.contains(&normalized) {
            return Ok(Some(origin));
        }
        Err(format!(
            "requests from the web page {origin:?} are refused; to let that page call the \
             API, add its origin to api.allowed_origins in the repo's config.toml"
        ))
    }
}

/// Refuses requests from pages and hosts the policy does not allow; answers an allowed
/// page's CORS preflight and marks its answers readable by it.
pub(super) async fn guard(
    State(policy): State<Arc<Policy>>,
    request: Request,
    next: Next,
) -> Response {
    let openai = super::openai::is_openai_path(request.uri().path());
    let origin = match policy.check(request.headers()) {
        Ok(origin) => origin,
        Err(message) if openai => {
            return super::openai::OpenAiError::forbidden(message).into_response();
        }
        Err(message) => {
            return ApiError {
                status: StatusCode::FORBIDDEN,
                message,
            }
            .into_response();
        }
    };
    let Some(origin) = origin.and_then(|o| HeaderValue::from_str(&o).ok()) else {
        return next.run(request).await;
    };
    let mut response = if request.method() == Method::OPTIONS {
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        let h = preflight.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, OPTIONS"),
        );
        // OpenAI's browser client sends headers of its own (`x-stainless-*`): an
        // allowed page may send any header to `/v1`.
        let asked = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|_| openai)
            .cloned();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            asked.unwrap_or(HeaderValue::from_static(ALLOWED_REQUEST_HEADERS)),
        );
        preflight
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// `host[:port]` without the port; `[v6]` keeps its brackets.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `scheme://authority` of a URL, as a browser's `Origin` would name its page.
fn origin_of(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    format!("{scheme}://{authority}")
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn policy(allowed: &[&str], bound: &str) -> Policy {
        let config = ApiConfig {
            allowed_origins: allowed.iter().map(|s| s.to_string()).collect(),
            ..ApiConfig::default()
        };
        Policy::new(&config, bound.parse().unwrap())
    }

    #[test]
    fn programs_pass_and_pages_are_refused() {
        let p = policy(&[], "127.0.0.1:5001");
        assert_eq!(p.check(&headers(&[("host", "127.0.0.1:5001")])), Ok(None));
        assert_eq!(p.check(&headers(&[])), Ok(None));
        assert!(
            p.check(&headers(&[("origin", "http://example.com")]))
                .is_err()
        );
        assert!(p.check(&headers(&[("origin", "null")])).is_err());
        assert!(
            p.check(&headers(&[("referer", "http://example.com/a?b")]))
                .is_err()
        );
        let gateway_page = "http://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi.ipfs.localhost:8080";
        assert!(p.check(&headers(&[("origin", gateway_page)])).is_err());
    }

    #[test]
    fn listed_origins_pass() {
        let p = policy(&["http://App.example:3000/"], "127.0.0.1:5001");
        assert_eq!(
            p.check(&headers(&[("origin", "http://app.example:3000")])),
            Ok(Some("http://app.example:3000".into()))
        );
        assert!(
            p.check(&headers(&[("referer", "http://app.example:3000/page")]))
                .is_ok()
        );
        assert!(
            p.check(&headers(&[("origin", "http://app.example")]))
                .is_err()
        );
        let any = policy(&["*"], "127.0.0.1:5001");
        assert!(
            any.check(&headers(&[("origin", "http://x.example")]))
                .is_ok()
        );
    }

    #[test]
    fn loopback_apis_refuse_rebinding_hosts() {
        let p = policy(&[], "127.0.0.1:5001");
        for ok in ["localhost:5001", "LOCALHOST", "127.0.0.1", "[::1]:5001"] {
            assert_eq!(p.check(&headers(&[("host", ok)])), Ok(None), "{ok}");
        }
        for bad in [
            "evil.example:5001",
            "evil.example",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(p.check(&headers(&[("host", bad)])).is_err(), "{bad}");
        }
        let v6 = policy(&[], "[::1]:5001");
        assert!(v6.check(&headers(&[("host", "[::1]:5001")])).is_ok());
        // Bound to every interface, the API cannot know its names: Host is not checked.
        let open = policy(&[], "0.0.0.0:5001");
        assert!(open.check(&headers(&[("host", "node.lan:5001")])).is_ok());
    }

    #[test]
    fn host_names_drop_their_port() {
        assert_eq!(host_name("localhost:5001"), "localhost");
        assert_eq!(host_name("[::1]:5001"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("example"), "example");
        assert_eq!(
            origin_of("https://a.example:8/x/y?z"),
            "https://a.example:8"
        );
    }
}
