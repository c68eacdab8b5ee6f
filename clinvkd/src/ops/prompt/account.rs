//! A run's accounting: the live view (cancel, per-key concurrency) and the usage store (daily
//! quotas), opened before the run starts and closed at its end.

use super::*;
use crate::error::Code;

/// A run's accounting: its entry in the live view (cancel, concurrency quota) and its row in the
/// usage store (daily quotas), opened before anything starts and closed at the end — a run
/// dropped before its end is closed as cancelled.
pub(super) struct Account {
    pub(super) ctx: Ctx,
    pub(super) backend: Backend,
    /// The account the run is in (None: the CLI's own login); a failover moves it.
    pub(super) account: Option<String>,
    /// Whether its CLI started (a drop then means cancelled, else failed).
    pub(super) running: bool,
    pub(super) live: crate::live::LiveGuard,
    pub(super) row: Option<i64>,
    pub(super) started: std::time::Instant,
    pub(super) first_output_ms: Option<u64>,
    pub(super) model: Option<String>,
    pub(super) closed: bool,
}

pub(super) fn quota_exceeded(what: String, retry_after: u64) -> ApiError {
    let mut e = ApiError::new(
        Kind::RateLimited,
        Code::QuotaExceeded,
        format!("{what}; retry in {retry_after} s"),
    );
    e.retry_after_secs = Some(retry_after);
    e
}

impl Account {
    /// Admits a run under its key's quotas (429 `quota_exceeded` with `Retry-After` otherwise)
    /// and records its start.
    pub(super) async fn open(ctx: &Ctx, plan: &Plan) -> Result<Account, ApiError> {
        let quotas = plan
            .owner
            .as_deref()
            .and_then(|id| ctx.keys.get(id))
            .map(|k| k.quotas)
            .unwrap_or_default();
        let info = api::LiveRun {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            backend: plan.inv.backend,
            model: plan.inv.model.clone(),
            session_id: plan.resume_session.as_ref().map(|s| s.id.clone()),
            key_id: plan.owner.clone(),
            api_style: plan.source,
            started_at: clinvk_shared::types::now_rfc3339(),
            elapsed_ms: 0,
        };
        // The key's own quota, within the server's per-key share (no key holder takes every slot).
        let share = ctx.settings().limits.per_key_cap() as u32;
        let max_concurrent = Some(quotas.max_concurrent.map_or(share, |q| q.min(share)));
        let live = ctx.live.register(info, max_concurrent).map_err(|n| {
            quota_exceeded(
                format!("this key already runs {n} prompts (its max_concurrent quota, or limits.max_concurrent_per_key)"),
                1,
            )
        })?;
        let new = crate::usage::NewRun {
            key_id: plan.owner.clone(),
            backend: plan.inv.backend,
            model: plan.inv.model.clone(),
            api_style: plan.source,
            session_id: plan.resume_session.as_ref().map(|s| s.id.clone()),
        };
        let store = ctx.usage.clone();
        let begun = tokio::task::spawn_blocking(move || store.begin(&new, &quotas))
            .await
            .unwrap_or(Ok(None));
        let row = begun.map_err(|q| {
            let reset = crate::usage::utc_day().1;
            quota_exceeded(
                match q {
                    crate::usage::QuotaExceeded::Requests { limit } => {
                        format!("this key has used its {limit} requests for today (UTC)")
                    }
                    crate::usage::QuotaExceeded::Tokens { used, limit } => {
                        format!("this key has used {used} of its {limit} tokens for today (UTC)")
                    }
                },
                reset,
            )
        })?;
        Ok(Account {
            ctx: ctx.clone(),
            backend: plan.inv.backend,
            account: None,
            running: false,
            live,
            row,
            started: std::time::Instant::now(),
            first_output_ms: None,
            model: plan.inv.model.clone(),
            closed: false,
        })
    }

    /// Notes what an event says about the run: its first output, its model, its account's
    /// quota windows.
    pub(super) fn saw(&mut self, ev: &Event) {
        match ev {
            Event::Limits(limits) => {
                self.ctx
                    .quotas
                    .record(self.backend, self.quota_account(), limits.clone());
            }
            Event::SessionStarted { model: Some(m), .. } if self.model.is_none() => {
                self.model = Some(m.clone());
            }
            Event::TextDelta { .. }
            | Event::Message { .. }
            | Event::ToolUse { .. }
            | Event::Thinking { .. }
                if self.first_output_ms.is_none() =>
            {
                self.first_output_ms = Some(self.started.elapsed().as_millis() as u64);
            }
            _ => {}
        }
    }

    /// The account's name in the quota book.
    pub(super) fn quota_account(&self) -> &str {
        self.account
            .as_deref()
            .unwrap_or(crate::quota::DEFAULT_ACCOUNT)
    }

    pub(super) fn end(&self, summary: &RunSummary) -> crate::usage::RunEnd {
        crate::usage::RunEnd {
            backend: self.backend,
            account: self.account.clone(),
            model: summary.model.clone().or_else(|| self.model.clone()),
            duration_ms: summary.duration_ms,
            first_output_ms: self.first_output_ms,
            exit_code: summary.exit_code,
            outcome: summary.outcome(),
            usage: summary.usage,
        }
    }

    /// Records the end (waits for the write: a usage report right after the answer has it).
    pub(super) async fn finish(&mut self, summary: &RunSummary) {
        self.closed = true;
        if summary.refused.is_some() {
            self.ctx.quotas.refused(self.backend, self.quota_account());
        } else if summary.outcome() == crate::engine::RunOutcome::Ok {
            self.ctx.quotas.passed(self.backend, self.quota_account());
        }
        let Some(id) = self.row else { return };
        let (store, settings, end) = (
            self.ctx.usage.clone(),
            self.ctx.settings(),
            self.end(summary),
        );
        let _ = tokio::task::spawn_blocking(move || store.finish(id, &settings, &end)).await;
    }
}

impl Drop for Account {
    /// A run that did not reach its end: its consumer left (`cancelled`), or `start` gave up
    /// before the CLI ran (`failed`). The write completes off this thread, tracked by the drain.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let (Some(id), Ok(rt)) = (self.row, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let summary = RunSummary {
            model: self.model.clone(),
            exit_code: -1,
            duration_ms: self.started.elapsed().as_millis() as u64,
            error: Some("cancelled".into()),
            cancelled: self.running,
            ..Default::default()
        };
        let (store, settings, end) = (
            self.ctx.usage.clone(),
            self.ctx.settings(),
            self.end(&summary),
        );
        self.ctx
            .work
            .spawn_blocking_on(move || store.finish(id, &settings, &end), &rt);
    }
}
