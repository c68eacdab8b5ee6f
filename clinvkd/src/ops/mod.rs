//! The core operations, shared by every front end: the native HTTP API, the compatible APIs
//! and the control socket (`clinvk` commands) all call these — never two implementations of one
//! operation. Each takes the native API's JSON body and answers JSON, or streams events.

pub mod multi;
pub mod prompt;
pub mod sessions;

use crate::ctx::Ctx;
use crate::http::error::ApiError;
use serde_json::Value;

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
    match op {
        "prompt" => prompt::run_to_json(ctx, &bytes, "cli").await,
        "parallel" => multi::parallel(ctx, &bytes).await,
        "chain" => multi::chain(ctx, &bytes).await,
        "compare" => multi::compare(ctx, &bytes).await,
        "backends" => Ok(sessions::backends(ctx)),
        "sessions.list" => sessions::list(ctx, &body),
        "sessions.get" => sessions::get(ctx, body["id"].as_str().unwrap_or_default()),
        "sessions.delete" => sessions::delete(ctx, body["id"].as_str().unwrap_or_default()),
        "sessions.clean" => sessions::clean(ctx, &body),
        "keys.add" => {
            let name = body["name"].as_str().unwrap_or("unnamed");
            let (k, secret) = ctx.keys.add(name).map_err(|e| {
                ApiError::new(
                    crate::http::error::Kind::Internal,
                    "key_store_error",
                    e.to_string(),
                )
            })?;
            Ok(
                serde_json::json!({"key": secret, "id": k.id, "name": k.name, "prefix": k.prefix, "created_at": k.created_at}),
            )
        }
        "keys.list" => {
            Ok(serde_json::json!({"keys": ctx.keys.list(), "required": ctx.keys.required()}))
        }
        "keys.revoke" => {
            let id = body["id"].as_str().unwrap_or_default();
            match ctx.keys.revoke(id) {
                Ok(true) => Ok(serde_json::json!({"revoked": id})),
                Ok(false) => Err(ApiError::not_found(format!(
                    "no key with id or name {id:?}"
                ))),
                Err(e) => Err(ApiError::new(
                    crate::http::error::Kind::Internal,
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
