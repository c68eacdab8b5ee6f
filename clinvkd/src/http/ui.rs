//! The operator's dashboard at `/ui`: one page, its script and style sheet, compiled into the
//! binary (works offline; the content security policy allows nothing but this origin). The page
//! asks for a key when auth is on and sends it like any client; it uses the JSON API and
//! `GET /api/v1/live`, a server-sent event stream of what runs now (no polling).

use super::error::{ApiError, Kind};
use crate::ctx::Ctx;
use crate::error::Code;
use crate::ops::Caller;
use bytes::Bytes;
use clinvk_shared::api::{UsageGroupBy, UsageQuery};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Nothing but this origin: no inline script or style, no other host, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often the live stream repeats its snapshot when nothing changed (workers age, pools
/// refill).
const LIVE_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

fn text(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// `GET /ui`.
pub(crate) fn page() -> Response {
    text(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /ui/{asset}`.
pub(crate) fn asset(name: &str) -> Result<Response, ApiError> {
    match name {
        "app.js" => Ok(text(APP_JS, "text/javascript; charset=utf-8")),
        "style.css" => Ok(text(STYLE_CSS, "text/css; charset=utf-8")),
        _ => Err(ApiError::new(
            Kind::NotFound,
            Code::NotFound,
            format!("no dashboard asset {name:?}"),
        )),
    }
}

/// The query of `GET /api/v1/usage`: `by` and `since`.
pub(crate) fn usage_query(query: &str) -> Result<UsageQuery, ApiError> {
    let mut q = UsageQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = super::routes::percent_decode(v, true);
        match k {
            "by" => {
                q.by = clinvk_shared::api::from_wire::<UsageGroupBy>(&v).ok_or_else(|| {
                    ApiError::bad_request(
                        Code::InvalidRequest,
                        format!("`by` must be one of day, key, backend, model (got {v:?})"),
                    )
                    .with_param("by")
                })?
            }
            "since" => q.since = Some(v),
            other => {
                return Err(ApiError::bad_request(
                    Code::InvalidRequest,
                    format!("unknown query parameter `{other}` (known: by, since)"),
                ))
            }
        }
    }
    Ok(q)
}

fn event(ctx: &Ctx, caller: &Caller) -> Bytes {
    let snap = crate::ops::usage::live(ctx, caller);
    match serde_json::to_string(&snap) {
        Ok(json) => Bytes::from(format!("event: live\ndata: {json}\n\n")),
        Err(_) => Bytes::new(),
    }
}

/// `GET /api/v1/live`: with `Accept: text/event-stream`, a `live` event with the running prompts
/// and warm workers at once, then at every change (and every few seconds), until the daemon
/// starts to stop; otherwise the snapshot once, as JSON.
pub(crate) fn live(ctx: &Ctx, caller: Caller, accept: Option<&str>) -> Result<Response, ApiError> {
    let wants_stream = accept.is_some_and(|a| {
        a.split(',')
            .any(|m| m.split(';').next().unwrap_or("").trim() == "text/event-stream")
    });
    if !wants_stream {
        return super::native::json_ok(&crate::ops::usage::live(ctx, &caller));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let mut changes = ctx.live.subscribe();
    let drain = ctx.drain_started();
    let ctx2 = ctx.clone();
    ctx.work.spawn(async move {
        tokio::pin!(drain);
        loop {
            changes.mark_unchanged();
            if tx.send(event(&ctx2, &caller)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = &mut drain => return,
                _ = tx.closed() => return,
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(LIVE_REFRESH) => {}
            }
        }
    });
    Ok(super::streamed(rx, "text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_self_contained() {
        for body in [INDEX_HTML, APP_JS, STYLE_CSS] {
            // The SVG namespace is a name, not an address the page loads.
            let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "dashboard assets must not load anything from elsewhere"
            );
        }
        assert!(asset("app.js").is_ok() && asset("style.css").is_ok());
        assert_eq!(asset("x.js").unwrap_err().kind, Kind::NotFound);
        assert_eq!(page().headers()["content-security-policy"], CSP);
    }

    #[test]
    fn usage_queries() {
        let q = usage_query("by=key&since=30d").unwrap();
        assert_eq!((q.by, q.since.as_deref()), (UsageGroupBy::Key, Some("30d")));
        assert!(usage_query("by=nope").is_err());
        assert!(usage_query("x=1").is_err());
    }
}
