//! The HTTP server: warp extracts the request, `dispatch` does the rest in plain Rust — request
//! id, drain check, routing to one module per API style, metrics and the request feed of attached
//! clients. Each style answers errors in its own shape (`error`).

pub(crate) mod anthropic;
pub(crate) mod compat;
mod conns;
pub(crate) mod error;
pub(crate) mod guard;
pub(crate) mod meta;
pub(crate) mod native;
pub(crate) mod openai;
pub(crate) mod openapi;
pub(crate) mod responses;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod ui;

use crate::ctx::Ctx;
use crate::error::Code;
use bytes::{Buf, Bytes};
use error::{ApiError, Kind, Render as _, Style};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::Instrument;
use warp::http::{HeaderMap, HeaderValue, Method};
use warp::reply::Response;
use warp::Filter;

/// One HTTP request as the handlers see it.
pub(crate) struct HttpRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) request_id: String,
    /// Who asks (set by the key check).
    pub(crate) caller: crate::ops::Caller,
    /// How long the body may stall (`server.read_timeout_secs`), and its base deadline.
    read_timeout: std::time::Duration,
    body: Option<BoxStream<'static, Result<Bytes, warp::Error>>>,
}

/// The slowest a request body may come once its base deadline (`read_timeout_secs`) is spent:
/// 64 KiB a second.
const MIN_BODY_RATE: f64 = 64.0 * 1024.0;

impl HttpRequest {
    /// Reads the whole body, refusing more than `limit` bytes (413), a body that stalls for
    /// `read_timeout`, and one that trickles: the whole body must arrive within `read_timeout`
    /// plus one second per `MIN_BODY_RATE` bytes received (408).
    pub(crate) async fn body_bytes(&mut self, limit: u64) -> Result<Bytes, ApiError> {
        let Some(mut stream) = self.body.take() else {
            return Ok(Bytes::new());
        };
        let started = tokio::time::Instant::now();
        let mut buf = bytes::BytesMut::new();
        loop {
            let earned = std::time::Duration::from_secs_f64(buf.len() as f64 / MIN_BODY_RATE);
            let deadline = (started + self.read_timeout + earned)
                .min(tokio::time::Instant::now() + self.read_timeout);
            let next = tokio::time::timeout_at(deadline, stream.next())
                .await
                .map_err(|_| {
                    ApiError::new(
                        Kind::RequestTimeout,
                        Code::RequestTimeout,
                        format!(
                            "the request body stalled or came too slowly: it must arrive within {} s (server.read_timeout_secs) plus one second per {} KiB",
                            self.read_timeout.as_secs(),
                            MIN_BODY_RATE as u64 / 1024
                        ),
                    )
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(
                    Code::InvalidBody,
                    format!("could not read the request body: {e}"),
                )
            })?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::new(
                    Kind::PayloadTooLarge,
                    Code::RequestTooLarge,
                    format!("request body is larger than the {limit}-byte limit (server.max_request_body_bytes)"),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Reads the body (within `server.max_request_body_bytes`) and parses it as `T`.
    pub(crate) async fn json<T: serde::de::DeserializeOwned>(
        &mut self,
        ctx: &Ctx,
    ) -> Result<T, ApiError> {
        let limit = ctx.settings().server.max_request_body_bytes;
        crate::ops::parse_body(&self.body_bytes(limit).await?)
    }

    /// The body as a foreign format's request, with the fields it does not read (see
    /// `compat::Ignored`).
    pub(crate) async fn json_noting_unknown<T: serde::de::DeserializeOwned>(
        &mut self,
        ctx: &Ctx,
    ) -> Result<(T, Vec<String>), ApiError> {
        let limit = ctx.settings().server.max_request_body_bytes;
        crate::ops::parse_body_noting_unknown(&self.body_bytes(limit).await?)
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The warp filter serving everything. `rate` holds the rate limiter's buckets (one set for
/// every listener of the daemon).
pub(crate) fn filter(
    ctx: Ctx,
    rate: std::sync::Arc<guard::RateLimiter>,
) -> impl Filter<Extract = (Response,), Error = std::convert::Infallible> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<server::Peer>())
        .and(warp::body::stream())
        .then(
            move |method,
                  path: warp::path::FullPath,
                  query,
                  headers,
                  peer: Option<server::Peer>,
                  body| {
                let body = box_body(body);
                let req = HttpRequest {
                    method,
                    path: path.as_str().to_string(),
                    query,
                    headers,
                    remote: peer.map(|p| p.0),
                    request_id: String::new(),
                    caller: crate::ops::Caller::http(None),
                    read_timeout: std::time::Duration::from_secs(
                        ctx.settings().server.read_timeout_secs,
                    ),
                    body: Some(body),
                };
                dispatch(ctx.clone(), rate.clone(), req)
            },
        )
        .or(warp::any().map(|| {
            let mut resp = ApiError::not_found("not found").response(Style::Meta);
            resp.headers_mut().insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            resp
        }))
        .unify()
}

fn box_body<S, B>(s: S) -> BoxStream<'static, Result<Bytes, warp::Error>>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    s.map_ok(|mut b| b.copy_to_bytes(b.remaining())).boxed()
}

/// A valid incoming `X-Request-Id`, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Counts a request in flight (for status) and holds the drain open until its handler returns;
/// a streamed answer holds it through its relay task.
struct InFlight(
    Ctx,
    #[allow(dead_code)] tokio_util::task::task_tracker::TaskTrackerToken,
);

impl InFlight {
    fn new(ctx: &Ctx) -> Self {
        ctx.requests_in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(ctx.clone(), ctx.work.token())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn dispatch(
    ctx: Ctx,
    rate: std::sync::Arc<guard::RateLimiter>,
    mut req: HttpRequest,
) -> Response {
    let start = Instant::now();
    req.request_id = request_id(&req.headers);
    let rid = req.request_id.clone();
    let method = req.method.clone();
    let path = req.path.clone();
    let style = Style::from_path(&path);
    let found = routes::find(&method, &path);
    let template = found.template();
    ctx.requests_total.fetch_add(1, Ordering::Relaxed);
    let _guard = InFlight::new(&ctx);
    let span = tracing::info_span!("request", request_id = %rid, method = %method, path = %path);

    let mut cors_origin = None;
    let mut resp = match admit(&ctx, &rate, &mut req, found.access()) {
        Err(e) => e.response(style),
        Ok(Admitted::Answered(resp, origin)) => {
            cors_origin = origin;
            resp
        }
        Ok(Admitted::Route(origin)) => {
            cors_origin = origin;
            route(&ctx, req, found, style)
                .instrument(span.clone())
                .await
        }
    };
    if let Some(o) = &cors_origin {
        guard::add_cors(&ctx, o, &mut resp);
    }
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );

    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    metrics::counter!("clinvk_requests_total", "method" => method.to_string(), "path" => template, "status" => status.to_string()).increment(1);
    metrics::histogram!("clinvk_request_duration_seconds", "method" => method.to_string(), "path" => template).record(elapsed.as_secs_f64());
    span.in_scope(|| tracing::info!(status, duration_ms = elapsed.as_millis() as u64, "request"));
    ctx.publish(clinvk_shared::protocol::AttachEvent::Request {
        time: clinvk_shared::types::now_rfc3339(),
        request_id: rid,
        method: method.to_string(),
        path,
        status,
        duration_ms: elapsed.as_millis() as u64,
    });
    resp
}

/// What the guards decided about a request.
enum Admitted {
    /// Answered already (a preflight); with the allowed cross origin, if any.
    Answered(Response, Option<String>),
    /// Go on to the handler; with the allowed cross origin, if any.
    Route(Option<String>),
}

/// Runs the guards in order (see `guard`): host, origin, preflight, drain, key, rate limit, body
/// headers. Nothing of a refused request reaches a handler.
fn admit(
    ctx: &Ctx,
    rate: &guard::RateLimiter,
    req: &mut HttpRequest,
    access: routes::Access,
) -> Result<Admitted, ApiError> {
    guard::check_host(ctx, req)?;
    let origin = guard::check_origin(ctx, req)?;
    let cors = match &origin {
        guard::OriginCheck::Allowed(o) => Some(o.clone()),
        guard::OriginCheck::SameOrigin => None,
    };
    if let Some(p) = guard::preflight(ctx, req, &origin) {
        return Ok(Admitted::Answered(p, cors));
    }
    if ctx.is_draining() && req.path != "/health" {
        return Err(ApiError::new(
            Kind::Unavailable,
            Code::ShuttingDown,
            "the server is shutting down; retry shortly",
        ));
    }
    let auth = guard::authenticate(ctx, rate, req, access)?;
    rate.check(ctx, &auth.client)?;
    guard::check_body_headers(ctx, req)?;
    req.caller = auth.caller;
    req.caller.request_id = req.request_id.clone();
    if !auth.verified && req.path == "/health" {
        // Without a key, /health says only whether the server is up.
        return Ok(Admitted::Answered(meta::health_status_only(ctx), cors));
    }
    Ok(Admitted::Route(cors))
}

/// When a silent stream sends its next keep-alive: `server.sse_keepalive_secs` after the last
/// thing it sent (0: never).
pub(crate) struct KeepAlive {
    period: Option<std::time::Duration>,
    at: tokio::time::Instant,
}

impl KeepAlive {
    pub(crate) fn new(ctx: &Ctx) -> Self {
        let secs = ctx.settings().server.sse_keepalive_secs;
        let mut k = KeepAlive {
            period: (secs > 0).then(|| std::time::Duration::from_secs(secs)),
            at: tokio::time::Instant::now(),
        };
        k.reset();
        k
    }

    /// Something was sent: the next keep-alive is a whole period away.
    pub(crate) fn reset(&mut self) {
        // Off: a deadline that never comes.
        let wait = self
            .period
            .unwrap_or(std::time::Duration::from_secs(365 * 24 * 3600));
        self.at = tokio::time::Instant::now() + wait;
    }

    /// Completes when a keep-alive is due.
    pub(crate) fn due(&self) -> tokio::time::Sleep {
        tokio::time::sleep_until(self.at)
    }
}

/// A streamed answer: each chunk `rx` yields is written as soon as it comes (no buffering by
/// proxies either), until the sender closes.
pub(crate) fn streamed(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    content_type: &'static str,
) -> Response {
    use warp::reply::Reply as _;
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    let mut resp = warp::reply::stream(body).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Answers a request the guards let through, by the route table.
async fn route(ctx: &Ctx, req: HttpRequest, found: routes::Lookup, style: Style) -> Response {
    let result = match found {
        routes::Lookup::Route(r, params) => call(ctx, req, r.op, params).await,
        routes::Lookup::WrongMethod(_) => Err(ApiError::method_not_allowed(&req.method, &req.path)),
        routes::Lookup::NotFound => Err(ApiError::no_route(&req.method, &req.path)),
    };
    result.unwrap_or_else(|e| e.response(style))
}

/// The handler of each route.
async fn call(
    ctx: &Ctx,
    mut req: HttpRequest,
    op: routes::Op,
    params: Vec<String>,
) -> Result<Response, ApiError> {
    use crate::ops::{multi, sessions};
    use routes::Op;
    let param = params.into_iter().next().unwrap_or_default();
    let me = req.caller.clone();
    match op {
        Op::Health => Ok(meta::health(ctx)),
        Op::Metrics => meta::metrics(ctx),
        Op::OpenApi => Ok(openapi::spec()),
        Op::Docs => Ok(openapi::docs_page()),
        Op::DocsAsset => openapi::asset(&param),
        Op::Prompt => native::prompt(ctx, &me, req.json(ctx).await?).await,
        Op::Parallel => {
            native::json_ok(&multi::parallel(ctx, &me, req.json(ctx).await?, None).await?)
        }
        Op::Chain => native::json_ok(&multi::chain(ctx, &me, req.json(ctx).await?).await?),
        Op::Compare => native::json_ok(&multi::compare(ctx, &me, req.json(ctx).await?).await?),
        Op::Backends => native::json_ok(&sessions::backends(ctx, &me)),
        Op::Accounts => native::json_ok(&crate::ops::accounts::list(ctx)),
        Op::SessionsList => {
            native::json_ok(&sessions::list(ctx, &me, &native::list_query(&req.query)?))
        }
        Op::SessionGet => native::json_ok(&sessions::get(ctx, &me, &param)?),
        Op::SessionDelete => native::json_ok(&sessions::delete(ctx, &me, &param)?),
        Op::OpenAiModels => Ok(openai::models(ctx)),
        Op::OpenAiModel => openai::model(ctx, &param),
        Op::OpenAiChat => {
            let session = compat::session_header(&req);
            let (body, ignored) = req.json_noting_unknown(ctx).await?;
            let mut resp = openai::chat(ctx, &me, session, body).await?;
            compat::name_ignored(&mut resp, &ignored);
            Ok(resp)
        }
        Op::OpenAiResponses => {
            let session = compat::session_header(&req);
            let (body, ignored) = req.json_noting_unknown(ctx).await?;
            let mut resp = responses::create(ctx, &me, session, body).await?;
            compat::name_ignored(&mut resp, &ignored);
            Ok(resp)
        }
        Op::OpenAiResponseGet => responses::get(ctx, &me, &param).await,
        Op::OpenAiResponseDelete => responses::delete(ctx, &me, &param).await,
        Op::AnthropicMessages => {
            let session = compat::session_header(&req);
            let (body, mut ignored) = req.json_noting_unknown(ctx).await?;
            ignored.push("max_tokens".into());
            let mut resp = anthropic::messages(ctx, &me, session, body).await?;
            compat::name_ignored(&mut resp, &ignored);
            Ok(resp)
        }
        Op::AnthropicCountTokens => {
            anthropic::count_tokens(ctx, req.json_noting_unknown(ctx).await?.0)
        }
        Op::AnthropicModels => Ok(anthropic::models(ctx)),
        Op::AnthropicModel => anthropic::model(ctx, &param),
        Op::Ui => Ok(ui::page()),
        Op::UiAsset => ui::asset(&param),
        Op::Usage => native::json_ok(
            &crate::ops::usage::report(ctx, &me, ui::usage_query(&req.query)?).await?,
        ),
        Op::Live => ui::live(ctx, me, req.header("accept")),
        Op::RunCancel => {
            let _: clinvk_shared::api::RunCancelRequest = req.json(ctx).await?;
            native::json_ok(&crate::ops::usage::cancel(ctx, &me, &param)?)
        }
        Op::KeysList => native::json_ok(&crate::ops::keys::list(ctx)),
        Op::KeysAdd => native::json_ok(&crate::ops::keys::add(ctx, req.json(ctx).await?).await?),
        Op::KeysRevoke => native::json_ok(&crate::ops::keys::revoke(ctx, &param).await?),
    }
}

pub(crate) use server::serve;
