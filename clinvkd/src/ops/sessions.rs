//! Sessions and backends: listing, showing, deleting, cleaning.

use super::prompt::store_error;
use super::Caller;
use crate::ctx::Ctx;
use crate::error::ApiError;
use crate::session::ListQuery;
use serde_json::{json, Value};

pub fn backends(ctx: &Ctx) -> Value {
    let list: Vec<Value> = ctx
        .backends
        .all()
        .into_iter()
        .map(|b| {
            json!({
                "name": b.name, "available": b.available, "enabled": b.enabled, "version": b.version,
                "command": b.command, "path": b.path, "default_model": b.default_model, "message": b.message,
            })
        })
        .collect();
    json!({ "backends": list })
}

pub fn list(ctx: &Ctx, caller: &Caller, query: &Value) -> Result<Value, ApiError> {
    let mut q: ListQuery = serde_json::from_value(query.clone())
        .map_err(|e| ApiError::bad_request("invalid_request", format!("invalid query: {e}")))?;
    q.owner = caller.key_id.clone();
    let (page, total) = ctx.sessions.list(&q);
    Ok(json!({
        "sessions": page.iter().map(|s| s.summary()).collect::<Vec<_>>(),
        "total": total,
        "limit": q.limit.unwrap_or(100),
        "offset": q.offset.unwrap_or(0),
    }))
}

pub fn get(ctx: &Ctx, caller: &Caller, id: &str) -> Result<Value, ApiError> {
    caller.check_session_id(id)?;
    let s = ctx.sessions.get(id, caller.owner()).map_err(store_error)?;
    let mut v = s.summary();
    v["turns"] = serde_json::to_value(&s.turns).unwrap_or_default();
    Ok(v)
}

pub fn delete(ctx: &Ctx, caller: &Caller, id: &str) -> Result<Value, ApiError> {
    caller.check_session_id(id)?;
    let s = ctx
        .sessions
        .delete(id, caller.owner())
        .map_err(store_error)?;
    Ok(json!({"deleted": true, "id": s.id}))
}

pub fn clean(ctx: &Ctx, body: &Value) -> Result<Value, ApiError> {
    let days = body["older_than_days"]
        .as_u64()
        .ok_or_else(|| ApiError::bad_request("missing_field", "`older_than_days` is required"))?;
    Ok(json!({"deleted": ctx.sessions.clean_older_than(days)}))
}
