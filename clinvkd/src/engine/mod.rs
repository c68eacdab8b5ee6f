//! The core operation every API uses: run one invocation of a backend CLI and stream its
//! unified events. It checks the backend, builds the argv through the backend's adapter (the one
//! place argv is built), takes a concurrency slot, starts the process under the supervisor and
//! parses its output line by line. Dropping the stream cancels the run (its group is killed).
//!
//! One file per concern: `prepare` (argv, program, environment, limits, schema and image
//! files, dry run), `state_setup` (a fresh state folder set up before a CLI's first start),
//! `stream` (the run's event stream and summary), `warm` (warm-worker turns),
//! `structured` (structured-output checks), `workdir` (the working-folder policy); this file
//! holds the errors, the summary types and `start`.

use crate::backend::{self, Event, Invocation, Outcome};
use crate::ctx::Ctx;
use crate::error::Code;
use crate::error::{ApiError, Kind};
use crate::supervisor::{CapacityError, ExitInfo, Limits, ProcEvent, RunHandle, SpawnSpec};
use clinvk_shared::api::Backend;
use clinvk_shared::config::{BackendMode, BackendSettings};
use clinvk_shared::types::TokenUsage;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod prepare;
mod state_setup;
mod stream;
mod structured;
mod warm;
mod workdir;

pub(crate) use prepare::*;
use state_setup::ensure_state;
pub(crate) use stream::*;
pub(crate) use structured::*;
pub(crate) use warm::*;
pub(crate) use workdir::*;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    #[error("backend {0} is disabled in the configuration (backends.{0}.enabled)")]
    Disabled(Backend),
    #[error("backend {name} is not available: {message}")]
    Unavailable { name: Backend, message: String },
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    #[error("{message}")]
    BadRequest { code: Code, message: String },
    #[error("{0}")]
    Spawn(String),
    #[error("the server is shutting down; retry shortly")]
    Draining,
}

impl EngineError {
    fn bad(code: Code, message: impl Into<String>) -> Self {
        EngineError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The API error (status and code) for this failure; the style decides the shape.
    pub(crate) fn api_error(&self) -> ApiError {
        let msg = self.to_string();
        match self {
            EngineError::Disabled(_) => {
                ApiError::new(Kind::Unavailable, Code::BackendDisabled, msg)
            }
            EngineError::Unavailable { .. } => {
                ApiError::new(Kind::Unavailable, Code::BackendUnavailable, msg)
            }
            EngineError::Capacity(_) => {
                let mut e = ApiError::new(Kind::Unavailable, Code::AtCapacity, msg);
                e.retry_after_secs = Some(5);
                e
            }
            EngineError::BadRequest { code, .. } => ApiError::new(Kind::BadRequest, *code, msg),
            EngineError::Spawn(_) => {
                ApiError::new(Kind::Unavailable, Code::BackendUnavailable, msg)
            }
            EngineError::Draining => ApiError::new(Kind::Unavailable, Code::ShuttingDown, msg),
        }
    }
}

/// How a run ended, for every API style to render.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct RunSummary {
    pub(crate) backend: Backend,
    pub(crate) model: Option<String>,
    pub(crate) exit_code: i32,
    pub(crate) duration_ms: u64,
    pub(crate) output: String,
    /// Set when the run failed: CLI-reported error, non-zero exit, timeout, cancellation.
    pub(crate) error: Option<String>,
    pub(crate) usage: TokenUsage,
    /// The backend's own session id (for resume).
    pub(crate) backend_session_id: Option<String>,
    pub(crate) timed_out: bool,
    pub(crate) cancelled: bool,
    /// `error` quotes the CLI itself (its error report or stderr): shown to admins only.
    pub(crate) error_from_cli: bool,
    /// The run failed, before any output, because a quota window of the account is spent:
    /// the CLI's report (answered as a 429 with `Retry-After`).
    pub(crate) refused: Option<clinvk_shared::quota::AccountLimits>,
}

/// How a run ended, in one word: the usage store's `outcome` column and the `status` label of
/// `clinvk_backend_executions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RunOutcome {
    #[default]
    Ok,
    Failed,
    Timeout,
    Cancelled,
}

impl RunOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Timeout => "timeout",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

impl RunSummary {
    pub(crate) fn failed(&self) -> bool {
        self.error.is_some()
    }

    pub(crate) fn outcome(&self) -> RunOutcome {
        if self.cancelled {
            RunOutcome::Cancelled
        } else if self.timed_out {
            RunOutcome::Timeout
        } else if self.failed() {
            RunOutcome::Failed
        } else {
            RunOutcome::Ok
        }
    }

    /// The API error answered for a failed run (429 a spent quota window, 502 CLI failed, 504
    /// timeout).
    pub(crate) fn api_error(&self) -> Option<ApiError> {
        let msg = self.error.clone()?;
        if let Some(limits) = &self.refused {
            return Some(usage_limit_error(self.backend, limits, &msg));
        }
        Some(if self.timed_out {
            ApiError::new(Kind::Timeout, Code::BackendTimeout, msg)
        } else {
            ApiError::new(Kind::CliFailed, Code::BackendFailed, msg)
        })
    }
}

/// The 429 of a run refused for a spent quota window: its own code (not clinvk's rate
/// limiter's `rate_limited`), the window named, `Retry-After` = seconds to the reset.
pub(crate) fn usage_limit_error(
    backend: Backend,
    limits: &clinvk_shared::quota::AccountLimits,
    cli_said: &str,
) -> ApiError {
    let now = crate::quota::now();
    let window = limits
        .limiting_window
        .as_deref()
        .unwrap_or("a quota window");
    let reset = limits
        .resets_at
        .map(|r| format!(" until {}", clinvk_shared::quota::reset_time(r)))
        .unwrap_or_default();
    let mut e = ApiError::new(
        Kind::RateLimited,
        Code::UsageLimitReached,
        format!("{backend}: the subscription's {window} limit is reached{reset} ({cli_said})"),
    );
    e.retry_after_secs = limits.retry_after(now);
    e
}

/// One update of a running invocation.
#[derive(Debug)]
pub(crate) enum RunUpdate {
    Event(Event),
    /// The model called a client tool; the CLI waits for the answer (see `tools`).
    ToolCall(crate::tools::McpCall),
    Done(RunSummary),
}

/// Starts a run (waiting for a concurrency slot) and streams its events.
pub(crate) async fn start(ctx: &Ctx, inv: Invocation) -> Result<RunStream, EngineError> {
    if ctx.is_draining() {
        return Err(EngineError::Draining);
    }
    let mut inv = inv;
    let schema_file = match (&inv.output_schema, schema_in_file(ctx, &inv)) {
        (Some(schema), true) => {
            let f = write_schema_file(ctx, schema)?;
            inv.output_schema_file = Some(f.path().to_path_buf());
            Some(f)
        }
        _ => None,
    };
    let images = if images_in_files(ctx, &inv) {
        Some(write_images(ctx, &mut inv)?)
    } else {
        None
    };
    let calls = match &mut inv.client_tools {
        Some(ct) => {
            let (url, registration, rx) = ctx.tools.open(ct).map_err(EngineError::Spawn)?;
            ct.url = Some(url);
            Some((registration, rx))
        }
        None => None,
    };
    let cfg = backend_settings(ctx, inv.backend)?;
    let source = match warm_turn(ctx, &inv, &cfg).await? {
        Some(turn) => Source::Warm(Box::new(turn)),
        None => {
            let p = prepare(ctx, &inv)?;
            // A one-shot turn of a session continues it on disk: a worker holding the session
            // would answer its next turn without this one.
            if let Some(sid) = &inv.resume {
                ctx.workers.retire_session(inv.backend, sid);
                ctx.workers.begin_turn(sid);
            }
            let permit = ctx
                .supervisor
                .limiter
                .acquire(inv.backend, p.limits)
                .await?;
            ensure_state(p.adapter, &p.spec).await;
            let handle = ctx
                .supervisor
                .spawn(permit, p.spec)
                .map_err(|e| EngineError::Spawn(format!("{e}; {}", inv.backend.install_hint())))?;
            tracing::info!(run = %handle.id, backend = %inv.backend, pid = handle.pid, "run started");
            Source::Oneshot {
                parser: p.adapter.parser(),
                handle,
            }
        }
    };
    Ok(RunStream {
        source,
        backend: inv.backend,
        model: inv.model,
        started: Instant::now(),
        outcome: Outcome::default(),
        pending: std::collections::VecDeque::new(),
        first_output: true,
        exit: None,
        finished: false,
        output_schema: inv.output_schema,
        _schema_file: schema_file,
        _images: images,
        calls,
    })
}

#[cfg(test)]
mod tests;
