//! Sessions and backends: listing, showing, deleting, cleaning.

use super::prompt::store_error;
use super::Caller;
use crate::ctx::Ctx;
use crate::error::ApiError;
use clinvk_shared::api::{BackendList, ListQuery, SessionDeleted, SessionDetail, SessionPage};

/// Every backend with its workers. A key holder does not see which backend session a worker
/// holds (it may be another key holder's); only admins see where the executables are (a path
/// tells about the machine: also in an unavailable backend's message).
pub(crate) fn backends(ctx: &Ctx, caller: &Caller) -> BackendList {
    let mut backends = ctx.backend_statuses();
    if caller.owner().is_some() {
        for w in backends.iter_mut().flat_map(|b| b.workers.iter_mut()) {
            w.backend_session_id = None;
        }
    }
    if !caller.is_admin() {
        for b in &mut backends {
            b.path = None;
            if b.message.as_deref().is_some_and(|m| m.contains('/')) {
                b.message = Some("not available (the details are shown to admin keys)".into());
            }
        }
    }
    BackendList {
        backends,
        capacity: capacity(ctx),
    }
}

/// The concurrency limits and the slots in use now.
pub(crate) fn capacity(ctx: &Ctx) -> clinvk_shared::api::Capacity {
    let settings = ctx.settings();
    let (running, per) = ctx.supervisor.limiter.running();
    clinvk_shared::api::Capacity {
        max_concurrent: settings.limits.max_concurrent,
        running,
        queue_size: settings.limits.queue_size,
        queued: ctx.supervisor.limiter.queued(),
        per_backend: clinvk_shared::api::Backend::ALL
            .iter()
            .filter_map(|b| Some((b.to_string(), settings.backend(*b).max_concurrent?)))
            .collect(),
        running_per_backend: per
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(b, n)| (b.to_string(), n))
            .collect(),
    }
}

pub(crate) fn list(ctx: &Ctx, caller: &Caller, q: &ListQuery) -> SessionPage {
    let (page, total) = ctx.sessions.list(q, caller.owner());
    SessionPage {
        sessions: page.iter().map(|s| s.info()).collect(),
        total,
        limit: q.limit.unwrap_or(100),
        offset: q.offset.unwrap_or(0),
    }
}

pub(crate) fn get(ctx: &Ctx, caller: &Caller, id: &str) -> Result<SessionDetail, ApiError> {
    caller.check_session_id(id)?;
    Ok(ctx
        .sessions
        .get(id, caller.owner())
        .map_err(store_error)?
        .detail())
}

pub(crate) fn delete(ctx: &Ctx, caller: &Caller, id: &str) -> Result<SessionDeleted, ApiError> {
    caller.check_session_id(id)?;
    let s = ctx
        .sessions
        .delete(id, caller.owner())
        .map_err(store_error)?;
    Ok(SessionDeleted {
        deleted: true,
        id: s.id,
    })
}

/// Deletes the sessions not used for `days` days; returns how many.
pub(crate) fn clean(ctx: &Ctx, days: u64) -> usize {
    ctx.sessions.clean_older_than(days)
}
