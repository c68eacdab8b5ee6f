//! The core operations, shared by every front end: the native HTTP API, the compatible APIs
//! and the control socket (`clinvk` commands) all call these — never two implementations of one
//! operation. Each takes its typed request (`clinvk_shared::api`) and answers its typed result,
//! or streams events.

pub(crate) mod accounts;
pub(crate) mod keys;
pub(crate) mod multi;
pub(crate) mod prompt;
pub(crate) mod sessions;
pub(crate) mod usage;

use crate::error::ApiError;
use crate::error::Code;

/// Who asks for an operation: the daemon's owner (control socket, or HTTP with auth off) sees
/// every session; an API key holder only the sessions its key made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The id of the key that authenticated the request (never the key).
    pub(crate) key_id: Option<String>,
    /// Whether the request came over HTTP (session id prefixes must then be long).
    pub(crate) via_http: bool,
    /// What the key may do (ignored without a key: the owner may do everything).
    pub(crate) scope: clinvk_shared::api::Scope,
    /// The HTTP request's id (empty elsewhere): where a redacted message points.
    pub(crate) request_id: String,
}

/// The shortest session id prefix accepted over HTTP.
pub(crate) const MIN_HTTP_ID_PREFIX: usize = 8;

impl Caller {
    /// The daemon's owner on the control socket.
    pub(crate) fn control() -> Self {
        Caller::default()
    }

    /// An HTTP client, authenticated by `key_id` when auth is on.
    pub(crate) fn http(key_id: Option<String>) -> Self {
        Caller {
            key_id,
            via_http: true,
            scope: clinvk_shared::api::Scope::Use,
            request_id: String::new(),
        }
    }

    /// Whether this caller may see and manage everything: the daemon's owner, or an `admin` key.
    pub(crate) fn is_admin(&self) -> bool {
        self.key_id.is_none() || self.scope == clinvk_shared::api::Scope::Admin
    }

    /// For a caller who may not read the CLIs' own messages (their stderr can carry paths and
    /// tokens): the request id the redacted text points to; `None` for an admin.
    pub(crate) fn redaction(&self) -> Option<String> {
        (!self.is_admin()).then(|| self.request_id.clone())
    }

    /// Whose sessions this caller sees (`None`: all).
    pub(crate) fn owner(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// Checks a session id or prefix this caller names.
    pub(crate) fn check_session_id(&self, id: &str) -> Result<(), ApiError> {
        if self.via_http && id.chars().count() < MIN_HTTP_ID_PREFIX {
            return Err(ApiError::bad_request(
                Code::InvalidSessionId,
                format!("a session id (or prefix) needs at least {MIN_HTTP_ID_PREFIX} characters"),
            ));
        }
        Ok(())
    }
}

/// Parses a JSON body into an operation's request type (400 with a clear message otherwise).
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    check_not_empty(body)?;
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(body_error)
}

/// As `parse_body`, for a foreign format whose unknown fields are accepted: also returns the
/// fields the type does not read (`temperature`, `messages[0].name`, …), for the answer to name.
pub(crate) fn parse_body_noting_unknown<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<(T, Vec<String>), ApiError> {
    check_not_empty(body)?;
    let mut unknown = Vec::new();
    let de = &mut serde_json::Deserializer::from_slice(body);
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let tracked = serde_ignored::Deserializer::new(de, &mut note);
    let value = serde_path_to_error::deserialize(tracked).map_err(body_error)?;
    Ok((value, unknown))
}

fn check_not_empty(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            Code::InvalidJson,
            "the request body is empty; expected a JSON object",
        ));
    }
    Ok(())
}

fn body_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = if inner.is_syntax() || inner.is_eof() {
        format!("malformed JSON: {inner}")
    } else if path == "." {
        format!("invalid request: {inner}")
    } else {
        format!("invalid field `{path}`: {inner}")
    };
    ApiError::bad_request(Code::InvalidRequest, msg)
}
