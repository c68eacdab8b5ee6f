//! The one place that maps an error to an HTTP status and a body, in each API style's shape:
//! native `{"success":false,"error","code"}`, OpenAI `{"error":{"message","type","code","param"}}`,
//! Anthropic `{"type":"error","error":{"type","message"}}`.

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// Which API a request belongs to, by path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Native,
    OpenAi,
    Anthropic,
    Meta,
}

impl Style {
    pub(crate) fn from_path(path: &str) -> Style {
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

pub(crate) use crate::error::{ApiError, Kind};

/// HTTP status and vendor error types of each kind.
trait KindHttp {
    fn status(self) -> StatusCode;
    fn openai_type(self) -> &'static str;
    fn anthropic_type(self) -> &'static str;
}

impl KindHttp for Kind {
    fn status(self) -> StatusCode {
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

/// Rendering of a core error in an API style's shape.
pub(crate) trait Render {
    /// The body in a style's shape, as JSON (also used for mid-stream error frames).
    fn body(&self, style: Style) -> serde_json::Value;
    /// The full HTTP response in a style's shape.
    fn response(&self, style: Style) -> Response;
}

impl Render for ApiError {
    fn body(&self, style: Style) -> serde_json::Value {
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
                    "type": self.kind().openai_type(),
                    "code": self.code,
                    "param": self.param,
                }
            }),
            Style::Anthropic => json!({
                "type": "error",
                "error": {"type": self.kind().anthropic_type(), "message": self.message},
            }),
        }
    }

    fn response(&self, style: Style) -> Response {
        let mut resp = json_response(self.kind().status(), &self.body(style));
        if self.kind() == Kind::Unauthorized {
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
pub(crate) fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Response {
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
    use crate::error::Code;

    #[test]
    fn shapes() {
        let e = ApiError::new(Kind::ModelNotFound, Code::ModelNotFound, "no such model");
        assert_eq!(e.body(Style::OpenAi)["error"]["code"], "model_not_found");
        assert_eq!(e.body(Style::Anthropic)["error"]["type"], "not_found_error");
        assert_eq!(e.body(Style::Native)["success"], false);
        let r =
            ApiError::new(Kind::Unauthorized, Code::InvalidApiKey, "key").response(Style::Native);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
}
