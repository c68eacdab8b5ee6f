//! What the OpenAI- and Anthropic-compatible APIs share: model → backend mapping, rendering a
//! conversation into a CLI prompt, conversation continuity (transcript hashes), and driving a
//! prompt run to a JSON answer or an SSE stream. Each API module only parses its own request
//! shape into a `Conversation` and renders its own frames (`Frames`).
//!
//! One file per concern: `models` (names → backends), `conversation` (the request reduced to
//! turns, and the shared field readers), `continuity` (transcript hashes), `run` (starting or
//! continuing a run), `answer` (pieces, the JSON answer, the SSE stream); this file holds the
//! response headers the styles share.

use super::error::{ApiError, Kind};
use crate::backend::Event;
use crate::ctx::Ctx;
use crate::error::Code;
use crate::ops::prompt::{self, Completed, PromptRequest, PromptResult, PromptRun, PromptUpdate};
use crate::tools::{ClientTool, ClientTools, Parked, PendingCall, ToolReply, Unmatched};
use bytes::Bytes;
use clinvk_shared::api::Backend;
use clinvk_shared::config::KNOWN_BACKENDS;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use warp::http::HeaderValue;
use warp::reply::Response;

mod answer;
mod continuity;
mod conversation;
mod models;
mod run;

pub(crate) use answer::*;
pub(crate) use continuity::*;
pub(crate) use conversation::*;
pub(crate) use models::*;
pub(crate) use run::*;

/// The header naming a native session to continue (and, on answers, the session used).
pub(crate) const SESSION_HEADER: &str = "x-clinvk-session";

/// The header naming the request fields an answer did not honour: fields the CLIs cannot
/// enforce whose absence changes nothing a client relies on (`temperature`, `seed`,
/// `max_tokens`…), and fields this server does not know. Fields whose loss would matter are
/// refused instead (400 naming them).
pub(crate) const IGNORED_HEADER: &str = "x-clinvk-ignored-params";

/// A compatible request's reasoning effort for its backend: kept where the CLI has a setting;
/// else dropped, and `param` is returned to be named in `X-Clinvk-Ignored-Params` (the answer
/// is the same without it).
pub(crate) fn effort_for(
    ctx: &Ctx,
    target: &Target,
    conv: &mut Conversation,
    param: &str,
) -> Vec<String> {
    match conv.reasoning_effort {
        Some(e) if ctx.adapter(target.backend).effort_args(e).is_none() => {
            conv.reasoning_effort = None;
            vec![param.to_string()]
        }
        _ => Vec::new(),
    }
}

/// Adds `X-Clinvk-Ignored-Params` (sorted, once each; list indexes as `*`, e.g.
/// `messages.*.name`) to an answer.
pub(crate) fn name_ignored(resp: &mut Response, fields: &[String]) {
    let mut names: Vec<String> = fields
        .iter()
        .filter(|f| !f.is_empty() && f.as_str() != "?")
        .map(|f| {
            f.split('.')
                // serde's name for the inside of an `Option`: not a field of the request
                .filter(|seg| *seg != "?")
                .map(|seg| {
                    if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                        "*"
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    // Added to what an earlier call named (a handler names what it ignored inside a field).
    if let Some(earlier) = resp
        .headers()
        .get(IGNORED_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        names.extend(earlier.split(", ").map(str::to_string));
    }
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
        resp.headers_mut().insert(IGNORED_HEADER, v);
    }
}

/// A request field this server cannot honour and must not drop: 400 naming it.
pub(crate) fn unsupported(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(Code::UnsupportedParameter, message).with_param(param)
}

/// The backend that answered.
pub(crate) const BACKEND_HEADER: &str = "x-clinvk-backend";
/// The account that answered (`default`: the CLI's own login).
pub(crate) const ACCOUNT_HEADER: &str = "x-clinvk-account";

/// Names on the answer the session a run used (`X-Clinvk-Session`) and what served it
/// (`X-Clinvk-Backend`, `X-Clinvk-Account`).
pub(crate) fn set_run_headers(
    resp: &mut Response,
    session_id: &Option<String>,
    served: &crate::ops::prompt::ServedBy,
) {
    let account = served
        .account
        .as_deref()
        .unwrap_or(clinvk_shared::accounts::DEFAULT_ACCOUNT);
    let values = [
        (SESSION_HEADER, session_id.as_deref()),
        (BACKEND_HEADER, Some(served.backend.as_str())),
        (ACCOUNT_HEADER, Some(account)),
    ];
    for (name, value) in values {
        if let Some(v) = value.and_then(|s| HeaderValue::from_str(s).ok()) {
            resp.headers_mut().insert(name, v);
        }
    }
}

/// The session a request names explicitly (`X-Clinvk-Session`).
pub(crate) fn session_header(req: &super::HttpRequest) -> Option<String> {
    req.header(SESSION_HEADER)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A short unique id suffix.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_targets() {
        assert_eq!(
            split_target("claude"),
            Some(Target {
                backend: Backend::Claude,
                model: None,
                ..Default::default()
            })
        );
        assert_eq!(
            split_target("codex/gpt-5"),
            Some(Target {
                backend: Backend::Codex,
                model: Some("gpt-5".into()),
                ..Default::default()
            })
        );
        assert_eq!(
            split_target("claude/claude"),
            Some(Target {
                backend: Backend::Claude,
                model: None,
                ..Default::default()
            })
        );
        assert_eq!(split_target("nobody/x"), None);
    }

    #[test]
    fn render_and_split() {
        let mut c = Conversation::default();
        c.messages.push(Msg::new(Role::User, "hi"));
        assert_eq!(c.split(), 0);
        assert_eq!(render(&c.messages), "hi");
        c.messages.push(Msg::new(Role::Assistant, "hello"));
        c.messages.push(Msg::new(Role::User, "more"));
        assert_eq!(c.split(), 2);
        let all = render(&c.messages);
        assert!(
            all.contains("[user]\nhi") && all.contains("[assistant]\nhello"),
            "{all}"
        );
        assert!(all.contains("reply to this]\nmore"), "{all}");
        assert_eq!(render(&c.messages[2..]), "more");
    }

    #[test]
    fn hashes_depend_on_everything() {
        let t = Target {
            backend: Backend::Claude,
            model: None,
            ..Default::default()
        };
        let a = vec![Msg::new(Role::User, "hi"), Msg::new(Role::Assistant, "yo ")];
        let h = transcript_hash(&t, None, &a);
        assert_eq!(
            h,
            transcript_hash(
                &t,
                None,
                &[Msg::new(Role::User, " hi"), Msg::new(Role::Assistant, "yo")]
            )
        );
        assert_ne!(h, transcript_hash(&t, Some("sys"), &a));
        let t2 = Target {
            backend: Backend::Codex,
            model: None,
            ..Default::default()
        };
        assert_ne!(h, transcript_hash(&t2, None, &a));
        assert_ne!(h, transcript_hash(&t, None, &a[..1]));
    }
}
