//! `usage`: the runs of a period grouped by key, backend, model or day (`GET /api/v1/usage`,
//! `clinvkctl usage`), and the live view of what runs now (`/api/v1/live`, cancel).

use super::Caller;
use crate::ctx::Ctx;
use crate::error::ApiError;
use crate::error::Code;
use clinvk_shared::api::{LiveSnapshot, RunCancelled, UsageQuery, UsageReport};

/// The default period of a report.
const DEFAULT_SINCE: &str = "7d";

/// The usage report. A key holder that is not `admin` sees only its own key's runs.
pub(crate) async fn report(
    ctx: &Ctx,
    caller: &Caller,
    query: UsageQuery,
) -> Result<UsageReport, ApiError> {
    let since =
        super::keys::parse_duration("since", query.since.as_deref().unwrap_or(DEFAULT_SINCE))?;
    let since_ms = crate::usage::now_ms() - since.as_millis().min(i64::MAX as u128) as i64;
    let key = (!caller.is_admin())
        .then(|| caller.key_id.clone())
        .flatten();
    let store = ctx.usage.clone();
    tokio::task::spawn_blocking(move || store.report(&query, since_ms, key.as_deref()))
        .await
        .map_err(|e| {
            ApiError::new(
                crate::error::Kind::Internal,
                Code::UsageStoreError,
                format!("the usage task failed: {e}"),
            )
        })
}

/// What runs now. A key holder that is not `admin` sees only its own key's runs (and no
/// workers' sessions).
pub(crate) fn live(ctx: &Ctx, caller: &Caller) -> LiveSnapshot {
    let mut runs = ctx.live.snapshot();
    let mut workers = ctx.workers.list();
    if !caller.is_admin() {
        runs.retain(|r| r.key_id == caller.key_id);
        for w in &mut workers {
            w.backend_session_id = None;
        }
    }
    LiveSnapshot {
        runs,
        workers,
        capacity: super::sessions::capacity(ctx),
    }
}

/// Cancels a running prompt (its CLI's process group is killed). An `admin` key or the owner
/// may cancel any; another key only its own.
pub(crate) fn cancel(ctx: &Ctx, caller: &Caller, id: &str) -> Result<RunCancelled, ApiError> {
    let visible = caller.is_admin()
        || ctx
            .live
            .snapshot()
            .iter()
            .any(|r| r.id == id && r.key_id == caller.key_id);
    if !visible || !ctx.live.cancel(id) {
        return Err(ApiError::new(
            crate::error::Kind::NotFound,
            Code::RunNotFound,
            format!("no running prompt with id {id:?}"),
        ));
    }
    tracing::info!(run = %id, "run cancelled on request");
    Ok(RunCancelled {
        id: id.to_string(),
        cancelled: true,
    })
}
