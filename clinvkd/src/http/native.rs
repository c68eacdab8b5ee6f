//! The native REST API under `/api/v1/`: thin adapters over the core operations (`ops`).

use super::error::{json_response, ApiError};
use super::HttpRequest;
use crate::ctx::Ctx;
use crate::ops::{self, prompt};
use bytes::Bytes;
use serde_json::{json, Value};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};

pub async fn route(ctx: &Ctx, mut req: HttpRequest, rest: &[&str]) -> Result<Response, ApiError> {
    let m = req.method.clone();
    let limit = ctx.settings().server.max_request_body_bytes;
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    let me = req.caller.clone();
    match (rest, m) {
        (["prompt"], Method::POST) => prompt(ctx, &me, &req.body_bytes(limit).await?).await,
        (["parallel"], Method::POST) => {
            ok(ops::multi::parallel(ctx, &me, &req.body_bytes(limit).await?).await?)
        }
        (["chain"], Method::POST) => {
            ok(ops::multi::chain(ctx, &me, &req.body_bytes(limit).await?).await?)
        }
        (["compare"], Method::POST) => {
            ok(ops::multi::compare(ctx, &me, &req.body_bytes(limit).await?).await?)
        }
        (["backends"], Method::GET) => ok(ops::sessions::backends(ctx)),
        (["sessions"], Method::GET) => ok(ops::sessions::list(ctx, &me, &query_json(&req.query)?)?),
        (["sessions", id], Method::GET) => ok(ops::sessions::get(ctx, &me, id)?),
        (["sessions", id], Method::DELETE) => ok(ops::sessions::delete(ctx, &me, id)?),
        (
            ["prompt"]
            | ["parallel"]
            | ["chain"]
            | ["compare"]
            | ["backends"]
            | ["sessions"]
            | ["sessions", _],
            m,
        ) => Err(ApiError::method_not_allowed(m, &req.path)),
        _ => Err(ApiError::no_route(&req.method, &req.path)),
    }
}

/// `?backend=claude&limit=5` as a JSON object of the listing query.
fn query_json(query: &str) -> Result<Value, ApiError> {
    let mut out = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let value = match k {
            "limit" | "offset" => Value::from(v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_request",
                    format!("query parameter `{k}` must be a whole number"),
                )
            })?),
            "backend" | "status" => Value::String(v),
            _ => continue,
        };
        out.insert(k.to_string(), value);
    }
    Ok(Value::Object(out))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn prompt(ctx: &Ctx, caller: &ops::Caller, body: &[u8]) -> Result<Response, ApiError> {
    let req: prompt::PromptRequest = ops::parse_body(body)?;
    let plan = prompt::plan(ctx, caller, req, "native")?;
    if plan.dry_run {
        return Ok(json_response(
            StatusCode::OK,
            &prompt::dry_run_json(ctx, &plan)?,
        ));
    }
    let stream = plan.stream;
    let run = prompt::start(ctx, plan).await?;
    if !stream {
        let result = run.finish().await;
        return Ok(json_response(
            StatusCode::OK,
            &serde_json::to_value(&result).unwrap_or_default(),
        ));
    }
    Ok(ndjson(ctx, run))
}

/// Streams a prompt as NDJSON events, each line written as soon as the CLI produced it.
fn ndjson(ctx: &Ctx, mut run: prompt::PromptRun) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let stopped = ctx.stopped();
    // Tracked: a stop lets the stream run to its end within the grace period.
    ctx.work.spawn(async move {
        tokio::pin!(stopped);
        let backend = run.backend.clone();
        let session_id = run.session_id.clone();
        let mut seq: u64 = 0;
        let mut saw_delta = false;
        loop {
            let update = tokio::select! {
                u = run.rx.recv() => u,
                _ = &mut stopped => None,
                // The client left while the CLI was silent: dropping `run` cancels it now.
                _ = tx.closed() => return,
            };
            let Some(update) = update else { break };
            let (kind, content) = match update {
                prompt::PromptUpdate::Event(ev) => {
                    match prompt::native_event(&ev, &mut saw_delta) {
                        Some(kc) => kc,
                        None => continue,
                    }
                }
                prompt::PromptUpdate::Done(r) => {
                    if let Some(e) = &r.error {
                        let line = event_line(
                            &backend,
                            &session_id,
                            seq,
                            "error",
                            json!({"message": e, "exit_code": r.exit_code}),
                        );
                        seq += 1;
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                    ("done", prompt::done_content(&r))
                }
            };
            let done = kind == "done";
            if tx
                .send(event_line(&backend, &session_id, seq, kind, content))
                .await
                .is_err()
            {
                return; // client gone: dropping `run` cancels the CLI
            }
            seq += 1;
            if done {
                break;
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    let mut resp = warp::reply::stream(body).into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

fn event_line(
    backend: &str,
    session_id: &Option<String>,
    seq: u64,
    kind: &str,
    content: Value,
) -> Bytes {
    let mut line = serde_json::to_vec(&json!({
        "type": kind,
        "backend": backend,
        "session_id": session_id,
        "timestamp": clinvk_shared::types::now_rfc3339(),
        "content": content,
        "sequence": seq,
    }))
    .unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}
