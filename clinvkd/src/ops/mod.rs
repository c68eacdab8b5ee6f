//! The core operations, shared by every front end: the native HTTP API, the compatible APIs
//! and the control socket (`clinvk` commands) all call these — never two implementations of one
//! operation. Each takes the native API's JSON body and answers JSON, or streams events.

pub mod multi;
pub mod prompt;
pub mod sessions;

use crate::ctx::Ctx;
use crate::error::ApiError;
use serde_json::Value;

/// Who asks for an operation: the daemon's owner (control socket, or HTTP with auth off) sees
/// every session; an API key holder only the sessions its key made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The id of the key that authenticated the request (never the key).
    pub key_id: Option<String>,
    /// Whether the request came over HTTP (session id prefixes must then be long).
    pub via_http: bool,
}

/// The shortest session id prefix accepted over HTTP.
pub const MIN_HTTP_ID_PREFIX: usize = 8;

impl Caller {
    /// The daemon's owner on the control socket.
    pub fn control() -> Self {
        Caller::default()
    }

    /// An HTTP client, authenticated by `key_id` when auth is on.
    pub fn http(key_id: Option<String>) -> Self {
        Caller {
            key_id,
            via_http: true,
        }
    }

    /// Whose sessions this caller sees (`None`: all).
    pub fn owner(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// Checks a session id or prefix this caller names.
    pub fn check_session_id(&self, id: &str) -> Result<(), ApiError> {
        if self.via_http && id.chars().count() < MIN_HTTP_ID_PREFIX {
            return Err(ApiError::bad_request(
                "invalid_session_id",
                format!("a session id (or prefix) needs at least {MIN_HTTP_ID_PREFIX} characters"),
            ));
        }
        Ok(())
    }
}

/// Parses a JSON body into an operation's request type (400 with a clear message otherwise).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty; expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else if path == "." {
            format!("invalid request: {inner}")
        } else {
            format!("invalid field `{path}`: {inner}")
        };
        ApiError::bad_request("invalid_request", msg)
    })
}

/// Calls a non-streaming operation by its native-API name (the control socket's `Call`).
pub async fn call(ctx: &Ctx, op: &str, body: Value) -> Result<Value, ApiError> {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let me = Caller::control();
    match op {
        "prompt" => prompt::run_to_json(ctx, &me, &bytes, "cli").await,
        "parallel" => multi::parallel(ctx, &me, &bytes).await,
        "chain" => multi::chain(ctx, &me, &bytes).await,
        "compare" => multi::compare(ctx, &me, &bytes).await,
        "backends" => Ok(sessions::backends(ctx)),
        "sessions.list" => sessions::list(ctx, &me, &body),
        "sessions.get" => sessions::get(ctx, &me, body["id"].as_str().unwrap_or_default()),
        "sessions.delete" => sessions::delete(ctx, &me, body["id"].as_str().unwrap_or_default()),
        "sessions.clean" => sessions::clean(ctx, &body),
        "keys.add" => {
            let name = body["name"].as_str().unwrap_or("unnamed");
            let (k, secret) = ctx.keys.add(name).map_err(|e| {
                tracing::error!(error = %e, "cannot add a key");
                ApiError::new(
                    crate::error::Kind::Internal,
                    "key_store_error",
                    e.to_string(),
                )
            })?;
            Ok(
                serde_json::json!({"key": secret, "id": k.id, "name": k.name, "prefix": k.prefix, "created_at": k.created_at}),
            )
        }
        "keys.list" => Ok(serde_json::json!({
            "keys": ctx.keys.list(),
            "required": ctx.auth_required(),
            "auth": ctx.settings().server.auth,
            "accepted_keys": ctx.keys.count(),
        })),
        "keys.revoke" => {
            let id = body["id"].as_str().unwrap_or_default();
            match ctx.keys.revoke(id) {
                Ok(true) => Ok(serde_json::json!({
                    "revoked": id,
                    "remaining": ctx.keys.count(),
                    "required": ctx.auth_required(),
                })),
                Ok(false) => Err(ApiError::not_found(format!(
                    "no key with id or name {id:?}"
                ))),
                Err(e) => Err(ApiError::new(
                    crate::error::Kind::Internal,
                    "key_store_error",
                    e.to_string(),
                )),
            }
        }
        _ => Err(ApiError::bad_request(
            "unknown_op",
            format!("unknown operation {op:?}"),
        )),
    }
}
