//! `prompt`: run one prompt on one backend, in a new or a resumed clinvk session.
//!
//! `plan` checks a typed request (`Ask`) into a `Plan`, `images` decodes its images once, `run`
//! starts and streams it and records the turn, `account` keeps its live entry and usage row.

use super::Caller;
use crate::backend::{ApprovalMode, Event, Image, Invocation, SandboxMode};
use crate::ctx::Ctx;
use crate::engine::{self, RunSummary, RunUpdate};
use crate::error::Code;
use crate::error::{ApiError, Kind};
use crate::session::{clip, Session, StoreError};
use clinvk_shared::api::{self, Backend, DryRun, OutputFormat, RunEvent, SessionStatus, Turn};
pub(crate) use clinvk_shared::api::{PromptRequest, PromptResult};
use clinvk_shared::config::{is_safe_model_name, KNOWN_BACKENDS};
use std::collections::BTreeMap;

mod account;
mod images;
mod plan;
mod route;
mod run;

use account::Account;
pub(crate) use images::*;
pub(crate) use plan::*;
pub(crate) use route::peek_account;
pub(crate) use route::{Served, ServedBy};
pub(crate) use run::*;

/// A finished prompt: the result every front end shows, and the run's details (the compatible
/// APIs tell a timeout from a failure by them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Completed {
    pub(crate) result: PromptResult,
    pub(crate) summary: RunSummary,
}

impl std::ops::Deref for Completed {
    type Target = PromptResult;
    fn deref(&self) -> &PromptResult {
        &self.result
    }
}

/// A validated prompt, ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) inv: Invocation,
    pub(crate) resume_session: Option<Session>,
    pub(crate) ephemeral: bool,
    pub(crate) dry_run: bool,
    pub(crate) stream: bool,
    pub(crate) tags: Vec<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) source: api::ApiStyle,
    /// The key that asks (recorded as the owner of a new session).
    pub(crate) owner: Option<String>,
    /// For a caller without the `admin` scope: the request id that replaces the CLI's own
    /// error text (which goes to the log).
    pub(crate) redact: Option<String>,
    /// A model route's later targets (see `route`).
    pub(crate) fallbacks: Vec<(Backend, Option<String>)>,
}

pub(super) fn bad(code: Code, msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, msg)
}

pub(super) fn escalation(field: &str, requested: &str, configured: &str) -> ApiError {
    ApiError::new(
        Kind::Forbidden,
        Code::EscalationNotAllowed,
        format!("`{field}: {requested}` is looser than the server's `{configured}`; a request may only keep or tighten it (server.allow_request_escalation)"),
    )
    .with_param(field)
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(_) | StoreError::Ambiguous(_) => {
            ApiError::new(Kind::NotFound, Code::SessionNotFound, e.to_string())
        }
        StoreError::Write { .. } => {
            ApiError::new(Kind::Internal, Code::SessionStoreError, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests;
