//! The API's bearer token: with `network.api_token` set, a request without
//! `Authorization: Bearer <token>` is refused before any handler runs (Kubo's
//! `API.Authorizations` take the same header).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Passes requests that carry the token; answers 401 to the others.
pub(super) async fn require_token(
    State(token): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    match presents_token(request.headers(), &token) {
        true => next.run(request).await,
        false => ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "this API needs `Authorization: Bearer <token>` (network.api_token)".into(),
        }
        .into_response(),
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`.
pub(super) fn presents_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|presented| same_secret(presented.as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first differing byte, so the time taken tells a
/// guesser nothing about how much of the token it has right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn only_the_same_bytes_match() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cres", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
