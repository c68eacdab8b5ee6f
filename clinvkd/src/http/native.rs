//! The native REST API under `/api/v1/`: thin adapters over the core operations (`ops`).

use super::error::{json_response, ApiError, Kind};
use crate::error::Code;

use crate::ctx::Ctx;
use crate::ops::{self, prompt};
use bytes::Bytes;
use clinvk_shared::api::{Backend, Done, ListQuery, RunEvent};
use serde::Serialize;
use serde_json::Value;
use warp::http::StatusCode;
use warp::reply::Response;

/// A 200 answer of a typed result; a result that cannot be written is a 500, never `null`.
pub(crate) fn json_ok<T: Serialize>(v: &T) -> Result<Response, ApiError> {
    let v = serde_json::to_value(v).map_err(|e| {
        ApiError::new(
            Kind::Internal,
            Code::SerializationFailed,
            format!("the answer could not be written: {e}"),
        )
    })?;
    Ok(json_response(StatusCode::OK, &v))
}

/// `?backend=claude&status=completed&limit=5` as the listing query.
pub(crate) fn list_query(query: &str) -> Result<ListQuery, ApiError> {
    let mut out = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = super::routes::percent_decode(v, true);
        let value = match k {
            "limit" | "offset" => Value::from(v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    Code::InvalidRequest,
                    format!("query parameter `{k}` must be a whole number"),
                )
            })?),
            "backend" | "status" => Value::String(v),
            other => {
                return Err(ApiError::bad_request(
                    Code::InvalidRequest,
                    format!(
                        "unknown query parameter `{other}` (known: backend, status, limit, offset)"
                    ),
                ))
            }
        };
        out.insert(k.to_string(), value);
    }
    serde_json::from_value(Value::Object(out))
        .map_err(|e| ApiError::bad_request(Code::InvalidRequest, format!("invalid query: {e}")))
}

pub(crate) async fn prompt(
    ctx: &Ctx,
    caller: &ops::Caller,
    req: prompt::PromptRequest,
) -> Result<Response, ApiError> {
    let ask = prompt::Ask::from_request(req, clinvk_shared::api::ApiStyle::Native)?;
    let plan = prompt::plan(ctx, caller, ask)?;
    if plan.dry_run {
        return json_ok(&prompt::dry_run(ctx, &plan)?);
    }
    let stream = plan.stream;
    let run = prompt::start(ctx, plan).await?;
    if !stream {
        let done = run.finish().await;
        // A run a spent quota window refused is a 429, not a result.
        if let Some(e) = done.summary.refused.as_ref().and(done.summary.api_error()) {
            return Err(e);
        }
        let mut resp = json_ok(&done.result)?;
        let served = crate::ops::prompt::ServedBy {
            backend: done.result.backend,
            model: None,
            account: done.result.account.clone(),
        };
        super::compat::set_run_headers(&mut resp, &done.result.session_id, &served);
        return Ok(resp);
    }
    ndjson(ctx, run).await
}

/// Streams a prompt as NDJSON events, each line written as soon as the CLI produced it; a
/// `heartbeat` line every `server.sse_keepalive_secs` while the CLI is silent. The status waits
/// for the first output or the run's end (at most one keep-alive period): a run a spent quota
/// window refused before any output is a 429, not a stream.
async fn ndjson(ctx: &Ctx, mut run: prompt::PromptRun) -> Result<Response, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let (decide, decided) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
    let stopped = ctx.stopped();
    let mut keepalive = super::KeepAlive::new(ctx);
    // Tracked: a stop lets the stream run to its end within the grace period.
    ctx.work.spawn(async move {
        tokio::pin!(stopped);
        let backend = run.backend;
        let session_id = run.session_id.clone();
        let mut seq: u64 = 0;
        let mut saw_delta = false;
        let mut decide = Some(decide);
        // Lines written before the status is decided.
        let mut held: Vec<Bytes> = Vec::new();
        loop {
            // The next update is awaited across heartbeats (never dropped half-way).
            let update = {
                let next = run.next();
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        u = &mut next => break u,
                        _ = &mut stopped => break None,
                        // The client left while the CLI was silent: dropping `run` cancels it now.
                        _ = tx.closed() => return,
                        _ = keepalive.due() => {
                            keepalive.reset();
                            if let Some(d) = decide.take() {
                                // A long silent start: answer 200 now, so heartbeats can flow.
                                if d.send(Ok(())).is_err() {
                                    return;
                                }
                            }
                            held.push(event_line(&backend, &session_id, seq, &RunEvent::Heartbeat));
                            seq += 1;
                            for line in held.drain(..) {
                                if tx.send(line).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            };
            let Some(update) = update else { break };
            keepalive.reset();
            let mut lines = Vec::new();
            let mut done = false;
            match update {
                prompt::PromptUpdate::Event(ev) => match prompt::run_event(&ev, &mut saw_delta) {
                    Some(ev) => lines.push(ev),
                    None => continue,
                },
                // The native API offers no client tools.
                prompt::PromptUpdate::ToolCall(_) => continue,
                prompt::PromptUpdate::Done(r) => {
                    // Refused for a spent quota window before any output: a 429.
                    if r.summary.refused.is_some() && decide.is_some() {
                        if let (Some(d), Some(e)) = (decide.take(), r.summary.api_error()) {
                            let _ = d.send(Err(e));
                            return;
                        }
                    }
                    if let Some(e) = &r.error {
                        lines.push(RunEvent::Error {
                            message: e.clone(),
                            exit_code: Some(r.exit_code),
                        });
                    }
                    lines.push(RunEvent::Done(Done::from(&r.result)));
                    done = true;
                }
            }
            // What the model produced decides the status; the session's start and an error
            // (which may be a refusal, decided at the end) wait.
            let output = done
                || lines.iter().any(|e| {
                    !matches!(
                        e,
                        RunEvent::Init { .. } | RunEvent::Heartbeat | RunEvent::Error { .. }
                    )
                });
            for ev in &lines {
                held.push(event_line(&backend, &session_id, seq, ev));
                seq += 1;
            }
            if output {
                if let Some(d) = decide.take() {
                    if d.send(Ok(())).is_err() {
                        return;
                    }
                }
            }
            if decide.is_none() {
                for line in held.drain(..) {
                    if tx.send(line).await.is_err() {
                        return; // client gone: dropping `run` cancels the CLI
                    }
                }
            }
            if done {
                break;
            }
        }
        // Ended without a verdict (a stop): what was held goes out with a 200.
        if let Some(d) = decide.take() {
            if d.send(Ok(())).is_ok() {
                for line in held.drain(..) {
                    let _ = tx.send(line).await;
                }
            }
        }
    });
    let response = super::streamed(rx, "application/x-ndjson");
    match decided.await {
        Ok(Ok(())) => Ok(response),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(
            crate::error::Kind::Unavailable,
            crate::error::Code::ShuttingDown,
            "the run ended before it answered",
        )),
    }
}

/// One line of the native NDJSON prompt stream: an event and where it belongs.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct StreamLine<'a> {
    #[serde(flatten)]
    event: &'a RunEvent,
    backend: &'a Backend,
    /// `null` for an ephemeral run.
    session_id: &'a Option<String>,
    /// RFC 3339, UTC.
    timestamp: String,
    /// 0, 1, 2… in the order written.
    sequence: u64,
}

fn event_line(backend: &Backend, session_id: &Option<String>, seq: u64, event: &RunEvent) -> Bytes {
    let line = StreamLine {
        event,
        backend,
        session_id,
        timestamp: clinvk_shared::types::now_rfc3339(),
        sequence: seq,
    };
    match serde_json::to_vec(&line) {
        Ok(mut v) => {
            v.push(b'\n');
            Bytes::from(v)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot write a stream event");
            Bytes::new()
        }
    }
}
