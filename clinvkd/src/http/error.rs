//! The one place that maps an error to an HTTP status and a body, in each API style's shape:
//! native `{"success":false,"error","code"}`, OpenAI `{"error":{"message","type","code","param"}}`,
//! Anthropic `{"type":"error","error":{"type","message"}}`.

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// Which API a request belongs to, by path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Native,
    OpenAi,
    Anthropic,
    Meta,
}

impl Style {
    pub fn from_path(path: &str) -> Style {
        if path.starts_with("/openai/") {
            Style::OpenAi
        } else if path.starts_with("/anthropic/") {
            Style::Anthropic
        } else if path.starts_with("/api/") {
            Style::Native
        } else {
            Style::Meta
        }
    }
}

/// What went wrong, independent of the API style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    Unauthorized,
    /// Refused by policy: a foreign origin, an escalation the operator does not allow.
    Forbidden,
    NotFound,
    ModelNotFound,
    MethodNotAllowed,
    Conflict,
    /// The client took too long to send its request.
    RequestTimeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The `Host` is not one this server answers for (DNS rebinding).
    Misdirected,
    RateLimited,
    /// No capacity, backend unavailable, or the daemon is draining.
    Unavailable,
    /// The CLI ran and failed.
    CliFailed,
    Timeout,
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Kind::NotFound | Kind::ModelNotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::CliFailed => StatusCode::BAD_GATEWAY,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn openai_type(self) -> &'static str {
        match self {
            Kind::BadRequest
            | Kind::MethodNotAllowed
            | Kind::Conflict
            | Kind::PayloadTooLarge
            | Kind::RequestTimeout
            | Kind::UnsupportedMediaType
            | Kind::Misdirected => "invalid_request_error",
            Kind::Unauthorized => "authentication_error",
            Kind::Forbidden => "permission_error",
            Kind::NotFound | Kind::ModelNotFound => "not_found_error",
            Kind::RateLimited => "rate_limit_error",
            Kind::Unavailable => "service_unavailable_error",
            Kind::CliFailed => "api_error",
            Kind::Timeout => "timeout_error",
            Kind::Internal => "server_error",
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic_type(self) -> &'static str {
        match self {
            Kind::BadRequest
            | Kind::MethodNotAllowed
            | Kind::Conflict
            | Kind::RequestTimeout
            | Kind::UnsupportedMediaType
            | Kind::Misdirected => "invalid_request_error",
            Kind::PayloadTooLarge => "request_too_large",
            Kind::Unauthorized => "authentication_error",
            Kind::Forbidden => "permission_error",
            Kind::NotFound | Kind::ModelNotFound => "not_found_error",
            Kind::RateLimited => "rate_limit_error",
            Kind::Unavailable => "overloaded_error",
            Kind::CliFailed | Kind::Internal => "api_error",
            Kind::Timeout => "timeout_error",
        }
    }
}

/// An error answer: kind, machine code, message, and optional extras.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: Kind,
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(kind: Kind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
            param: None,
            retry_after_secs: None,
        }
    }

    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, "not_found", message)
    }

    /// The path exists, the method does not.
    pub fn method_not_allowed(method: impl std::fmt::Display, path: &str) -> Self {
        Self::new(
            Kind::MethodNotAllowed,
            "method_not_allowed",
            format!("method {method} is not allowed on {path}"),
        )
    }

    /// Nothing is served at this path.
    pub fn no_route(method: impl std::fmt::Display, path: &str) -> Self {
        Self::not_found(format!("no route for {method} {path}"))
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The body in a style's shape, as JSON (also used for mid-stream error frames).
    pub fn body(&self, style: Style) -> serde_json::Value {
        use serde_json::json;
        match style {
            Style::Native | Style::Meta => json!({
                "success": false,
                "error": self.message,
                "code": self.code,
            }),
            Style::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind.openai_type(),
                    "code": self.code,
                    "param": self.param,
                }
            }),
            Style::Anthropic => json!({
                "type": "error",
                "error": {"type": self.kind.anthropic_type(), "message": self.message},
            }),
        }
    }

    /// The full HTTP response in a style's shape.
    pub fn response(&self, style: Style) -> Response {
        let mut resp = json_response(self.kind.status(), &self.body(style));
        if self.kind == Kind::Unauthorized {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

/// A JSON response with a status.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(bytes.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = ApiError::new(Kind::ModelNotFound, "model_not_found", "no such model");
        assert_eq!(e.body(Style::OpenAi)["error"]["code"], "model_not_found");
        assert_eq!(e.body(Style::Anthropic)["error"]["type"], "not_found_error");
        assert_eq!(e.body(Style::Native)["success"], false);
        let r = ApiError::new(Kind::Unauthorized, "unauthorized", "key").response(Style::Native);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
}
