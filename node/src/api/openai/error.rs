//! Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
//! the status codes OpenAI's clients act on (they retry 429 and 5xx, not 4xx).

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::wire::{ErrorBody, ErrorDetail};
use crate::api::infer_fault::{InferFault, retry_after_secs};

#[derive(Debug)]
pub(crate) struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl OpenAiError {
    /// The request is wrong: a missing, mistyped or unsupported parameter.
    pub(crate) fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
        }
    }

    /// A parameter this server does not implement (OpenAI's own code for them).
    pub(crate) fn unsupported(param: &str, message: impl Into<String>) -> Self {
        OpenAiError {
            code: Some("unsupported_parameter"),
            ..OpenAiError::invalid(Some(param), message)
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            ..OpenAiError::invalid(None, message)
        }
    }

    pub(crate) fn model_not_found(message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            ..OpenAiError::invalid(Some("model"), message)
        }
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::UNAUTHORIZED,
            code: Some("invalid_api_key"),
            ..OpenAiError::invalid(None, message)
        }
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::FORBIDDEN,
            ..OpenAiError::invalid(None, message)
        }
    }

    /// Every provider was busy: a client may retry later.
    pub(crate) fn overloaded(message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("overloaded"),
        }
    }

    pub(crate) fn server(message: impl std::fmt::Display) -> Self {
        OpenAiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.to_string(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The body, also sent as a stream's last event when it fails part way.
    pub(super) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                r#type: self.kind,
                param: self.param.clone(),
                code: self.code,
            },
        }
    }
}

impl IntoResponse for OpenAiError {
    /// OpenAI's error body; a 503 also says when to try again.
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let wait = retry_after_secs(&self.message);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, wait.into());
        }
        response
    }
}

/// A failed inference, sorted by whose fault it is ([`InferFault`]): inputs the model
/// refuses are the caller's (400), no free provider is a 503 to retry, anything else is
/// a 500.
pub(crate) fn from_inference(error: impl std::fmt::Display) -> OpenAiError {
    let message = error.to_string();
    match InferFault::of(&message) {
        InferFault::Caller => OpenAiError::invalid(None, message),
        InferFault::Busy => OpenAiError::overloaded(message),
        InferFault::Node => OpenAiError::server(message),
    }
}

/// Rewrites axum's own answers under `/v1` (a body that is not JSON, too large a body,
/// an unknown method) into OpenAI's error body.
pub(crate) async fn rewrite_rejections(request: Request, next: Next) -> Response {
    match crate::api::plain_rejection(next.run(request).await).await {
        Ok((status, message)) => {
            let mut error = match status.is_client_error() {
                true => OpenAiError::invalid(None, message),
                false => OpenAiError::server(message),
            };
            error.status = status;
            error.into_response()
        }
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_failures_are_sorted_by_fault() {
        let status = |text: &str| from_inference(text).status;
        assert_eq!(
            status("inference for bafy: bad input: the prompt is empty"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("too large: the prompt has 300000 bytes"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status("inference for bafy: busy: the queue is full"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status("no provider answered"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
