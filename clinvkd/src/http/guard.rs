//! What every request passes before its handler, in this order:
//! 1. **Host** (DNS rebinding): a loopback name or address, the bound address, or
//!    `server.allowed_hosts`; otherwise 421.
//! 2. **Origin** (browsers): a request carrying `Origin` must come from the daemon's own origin
//!    or from `server.cors_allowed_origins` (`null` never matches); `Sec-Fetch-Site:
//!    cross-site` without an allowed Origin is refused too; otherwise 403.
//! 3. CORS preflights are answered (for allowed origins only).
//! 4. **API key** (`Authorization: Bearer` or `X-Api-Key`), checked in constant time when auth is
//!    on; failed attempts count per client IP (`server.max_auth_failures` per minute, then 429).
//! 5. The rate limit (token bucket per key, else per client IP; `X-Forwarded-For` is read right
//!    to left, skipping `server.trusted_proxies`).
//! 6. **Body**: a request with a body must be `application/json` (415), and a declared
//!    `Content-Length` over `server.max_request_body_bytes` is refused at once (413).

use super::error::{ApiError, Kind};
use super::HttpRequest;
use crate::ctx::Ctx;
use crate::error::Code;
use crate::ops::Caller;
use clinvk_shared::config::{cidr_contains, parse_cidr};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;

/// The host part of a `Host` header value (`[::1]:8080` → `::1`, `a.b:80` → `a.b`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// 1. The `Host` check against DNS rebinding.
pub(crate) fn check_host(ctx: &Ctx, req: &HttpRequest) -> Result<(), ApiError> {
    // Browsers always send Host; a client that sends none is not a rebinding page.
    let Some(host) = req.header("host").map(str::trim) else {
        return Ok(());
    };
    let name = host_name(host);
    let allowed_by_config = || {
        ctx.settings().server.allowed_hosts.iter().any(|a| {
            a == "*"
                || a.eq_ignore_ascii_case(host)
                || (!a.contains(':') && a.eq_ignore_ascii_case(name))
        })
    };
    let ok = name.eq_ignore_ascii_case("localhost")
        || match name.parse::<IpAddr>() {
            Ok(ip) => {
                ip.is_loopback()
                    || ctx.http_addrs().iter().any(|a| {
                        a.ip() == ip
                            // Bound to every address: an address literal cannot be a
                            // rebinding name, so any one is accepted.
                            || a.ip().is_unspecified()
                    })
            }
            Err(_) => false,
        }
        || allowed_by_config();
    if ok {
        return Ok(());
    }
    Err(ApiError::new(
        Kind::Misdirected,
        Code::MisdirectedRequest,
        format!("this server does not answer for host {name:?}; add it to server.allowed_hosts to allow it"),
    ))
}

/// What the origin check found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OriginCheck {
    /// No `Origin`, or the daemon's own: no CORS headers needed.
    SameOrigin,
    /// A listed cross origin: answers carry its CORS headers.
    Allowed(String),
}

/// 2. The `Origin` / `Sec-Fetch-Site` check against web pages.
pub(crate) fn check_origin(ctx: &Ctx, req: &HttpRequest) -> Result<OriginCheck, ApiError> {
    let refuse = |what: String| {
        ApiError::new(
            Kind::Forbidden,
            Code::OriginNotAllowed,
            format!("{what} may not use this server (server.cors_allowed_origins)"),
        )
    };
    match req.header("origin").map(str::trim) {
        Some(origin) => {
            if origin.eq_ignore_ascii_case("null") {
                return Err(refuse("a page with origin `null`".into()));
            }
            if let Some(host) = req.header("host").map(str::trim) {
                let own = ["http://", "https://"]
                    .iter()
                    .any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{host}")));
                if own {
                    return Ok(OriginCheck::SameOrigin);
                }
            }
            let listed = ctx
                .settings()
                .server
                .cors_allowed_origins
                .iter()
                .any(|o| o == "*" || o == origin);
            if listed {
                Ok(OriginCheck::Allowed(origin.to_string()))
            } else {
                Err(refuse(format!("the web page at {origin}")))
            }
        }
        None if req
            .header("sec-fetch-site")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("cross-site")) =>
        {
            Err(refuse("a cross-site request".into()))
        }
        None => Ok(OriginCheck::SameOrigin),
    }
}

/// 6. A body must be JSON and may not be declared larger than the limit.
pub(crate) fn check_body_headers(ctx: &Ctx, req: &HttpRequest) -> Result<(), ApiError> {
    let length = req
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let has_body = matches!(req.method, Method::POST | Method::PUT | Method::PATCH)
        || length.is_some_and(|n| n > 0)
        || req.headers.contains_key("transfer-encoding");
    if !has_body {
        return Ok(());
    }
    let limit = ctx.settings().server.max_request_body_bytes;
    if let Some(n) = length.filter(|n| *n > limit) {
        return Err(ApiError::new(
            Kind::PayloadTooLarge,
            Code::RequestTooLarge,
            format!("the request body ({n} bytes) is larger than the {limit}-byte limit (server.max_request_body_bytes)"),
        ));
    }
    let media = req.header("content-type").map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if media.as_deref() != Some("application/json") {
        return Err(ApiError::new(
            Kind::UnsupportedMediaType,
            Code::UnsupportedMediaType,
            format!(
                "the request body must be JSON with `Content-Type: application/json` (got {})",
                req.header("content-type")
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_else(|| "no Content-Type".into())
            ),
        ));
    }
    Ok(())
}

/// The presented key, if any.
fn presented_key(req: &HttpRequest) -> Option<String> {
    if let Some(a) = req.header("authorization") {
        let a = a.trim();
        if a.len() > 7 && a.is_char_boundary(7) && a[..7].eq_ignore_ascii_case("bearer ") {
            return Some(a[7..].trim().to_string());
        }
    }
    req.header("x-api-key").map(|k| k.trim().to_string())
}

/// The client's address: the socket peer, or — when the peer is a trusted proxy — the first
/// address of `X-Forwarded-For` read from the right that is not a trusted proxy.
pub(crate) fn client_ip(ctx: &Ctx, req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.remote.map(|a| a.ip())?;
    let settings = ctx.settings();
    let trusted: Vec<(IpAddr, u8)> = settings
        .server
        .trusted_proxies
        .iter()
        .filter_map(|t| parse_cidr(t))
        .collect();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| cidr_contains(*n, ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !is_trusted(**ip)) {
        return Some(*ip);
    }
    if let Some(ip) = req
        .header("x-real-ip")
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return Some(ip);
    }
    // Every hop is trusted: the leftmost is the client.
    forwarded.first().copied().or(Some(peer))
}

/// Who a request is, after the key check.
pub(crate) struct Authenticated {
    pub(crate) caller: Caller,
    /// Whether the request proved a key (or needs none): public paths answer more then.
    pub(crate) verified: bool,
    /// The rate-limit identity: the key, else the client IP.
    pub(crate) client: String,
}

/// 4. Checks the key. Public paths pass without one (`verified` says whether a valid key came).
pub(crate) fn authenticate(
    ctx: &Ctx,
    rate: &RateLimiter,
    req: &HttpRequest,
    access: super::routes::Access,
) -> Result<Authenticated, ApiError> {
    let ip = client_ip(ctx, req)
        .map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into());
    let settings = ctx.settings();
    let public = match access {
        super::routes::Access::Public => true,
        super::routes::Access::Metrics => !settings.server.metrics_require_auth,
        super::routes::Access::Read | super::routes::Access::Key | super::routes::Access::Admin => {
            false
        }
    };
    if !ctx.auth_required() {
        return Ok(Authenticated {
            caller: Caller::http(None),
            verified: true,
            client: format!("ip:{ip}"),
        });
    }
    let presented = presented_key(req);
    if public && presented.is_none() {
        return Ok(Authenticated {
            caller: Caller::http(None),
            verified: false,
            client: format!("ip:{ip}"),
        });
    }
    // A client that keeps guessing is stopped before its key is even checked.
    rate.check_failures(ctx, &ip)?;
    match presented.as_deref().map(|k| ctx.keys.grant(k)) {
        Some(Some(grant)) if grant.expired => {
            rate.record_failure(ctx, &ip);
            Err(ApiError::new(
                Kind::Unauthorized,
                Code::ExpiredApiKey,
                "the API key has expired",
            ))
        }
        Some(Some(grant)) => {
            if let Some(needed) = access.scope().filter(|n| grant.scope < *n) {
                return Err(ApiError::new(
                    Kind::Forbidden,
                    Code::InsufficientScope,
                    format!(
                        "this key's scope `{}` does not allow this; it needs `{}`",
                        clinvk_shared::api::wire_name(&grant.scope),
                        clinvk_shared::api::wire_name(&needed)
                    ),
                ));
            }
            Ok(Authenticated {
                client: format!("key:{}", grant.id),
                caller: Caller {
                    scope: grant.scope,
                    ..Caller::http(Some(grant.id))
                },
                verified: true,
            })
        }
        _ if public => Ok(Authenticated {
            caller: Caller::http(None),
            verified: false,
            client: format!("ip:{ip}"),
        }),
        Some(None) => {
            rate.record_failure(ctx, &ip);
            Err(ApiError::new(
                Kind::Unauthorized,
                Code::InvalidApiKey,
                "the API key is not valid",
            ))
        }
        None => {
            rate.record_failure(ctx, &ip);
            Err(ApiError::new(
                Kind::Unauthorized,
                Code::MissingApiKey,
                "an API key is required: send `Authorization: Bearer <key>` or `X-Api-Key: <key>`",
            ))
        }
    }
}

/// The most buckets kept; beyond it, idle ones are dropped first.
const MAX_BUCKETS: usize = 10_000;

/// A token bucket: tokens left and when it was last refilled.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The tokens it holds at `now`, refilled at `rate` per second up to `burst`.
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst)
    }
}

/// Seconds until a bucket holding `tokens` has `cost`, at `rate` per second (at least 1).
fn wait_secs(tokens: f64, cost: f64, rate: f64) -> u64 {
    ((cost - tokens) / rate).ceil().max(1.0) as u64
}

/// A 429 with `Retry-After`.
fn limited(code: Code, what: &str, wait: u64) -> ApiError {
    let mut e = ApiError::new(
        Kind::RateLimited,
        code,
        format!("{what}; retry in {wait} s"),
    );
    e.retry_after_secs = Some(wait);
    e
}

/// Token buckets per client (requests) and per client IP (failed authentications), bounded:
/// a bucket that has refilled completely is the same as no bucket, so such buckets are dropped
/// when the map grows.
#[derive(Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Refills `key`'s bucket and returns its tokens (a new bucket is full).
    fn take(&self, key: &str, rate: f64, burst: f64, cost: f64) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_BUCKETS && !map.contains_key(key) {
            // Full buckets carry no state: drop them; if that is not enough, drop everything
            // (a bound beats precision for an attacker with many addresses).
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= MAX_BUCKETS {
                map.clear();
            }
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = b.refilled(now, rate, burst);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            return Ok(());
        }
        Err(wait_secs(b.tokens, cost, rate))
    }

    /// Number of buckets held.
    #[cfg(test)]
    fn bucket_count(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes a token for `client`, or says how long to wait.
    pub(crate) fn check(&self, ctx: &Ctx, client: &str) -> Result<(), ApiError> {
        let s = ctx.settings();
        if !s.server.rate_limit_enabled {
            return Ok(());
        }
        self.take(
            client,
            s.server.rate_limit_rps,
            f64::from(s.server.rate_limit_burst),
            1.0,
        )
        .map_err(|wait| limited(Code::RateLimited, "too many requests", wait))
    }

    fn failure_params(ctx: &Ctx) -> (f64, f64) {
        let n = f64::from(ctx.settings().server.max_auth_failures.max(1));
        (n / 60.0, n)
    }

    /// Refuses a client IP that has used up its failed authentications.
    pub(crate) fn check_failures(&self, ctx: &Ctx, ip: &str) -> Result<(), ApiError> {
        let (rate, burst) = Self::failure_params(ctx);
        // A look only: checking takes no token (only a failure does).
        let left = {
            let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&format!("fail:{ip}"))
                .map(|b| b.refilled(Instant::now(), rate, burst))
        };
        match left {
            Some(t) if t < 1.0 => Err(limited(
                Code::TooManyAuthFailures,
                "too many failed authentications from this address",
                wait_secs(t, 1.0, rate),
            )),
            _ => Ok(()),
        }
    }

    /// Counts one failed authentication of a client IP.
    pub(crate) fn record_failure(&self, ctx: &Ctx, ip: &str) {
        let (rate, burst) = Self::failure_params(ctx);
        let _ = self.take(&format!("fail:{ip}"), rate, burst, 1.0);
    }
}

/// Answers a CORS preflight of an allowed origin (the origin check ran before), or None when
/// the request is not one.
pub(crate) fn preflight(ctx: &Ctx, req: &HttpRequest, origin: &OriginCheck) -> Option<Response> {
    if req.method != Method::OPTIONS {
        return None;
    }
    let mut resp = Response::new(Vec::<u8>::new().into());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    if let OriginCheck::Allowed(o) = origin {
        add_cors(ctx, o, &mut resp);
        let h = resp.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        let allow = req
            .header("access-control-request-headers")
            .unwrap_or("authorization, content-type, x-api-key");
        if let Ok(v) = HeaderValue::from_str(allow) {
            h.insert("access-control-allow-headers", v);
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.settings().server.cors_max_age.to_string()) {
            h.insert("access-control-max-age", v);
        }
    }
    Some(resp)
}

/// Adds the CORS headers of an allowed cross origin to a response. With `*` listed the answer
/// says `*` literally and never allows credentials.
pub(crate) fn add_cors(ctx: &Ctx, origin: &str, resp: &mut Response) {
    let settings = ctx.settings();
    let wildcard = settings
        .server
        .cors_allowed_origins
        .iter()
        .any(|o| o == "*")
        && !settings
            .server
            .cors_allowed_origins
            .iter()
            .any(|o| o == origin);
    let h = resp.headers_mut();
    if wildcard {
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    } else {
        if let Ok(v) = HeaderValue::from_str(origin) {
            h.insert("access-control-allow-origin", v);
        }
        if settings.server.cors_allow_credentials {
            h.insert(
                "access-control-allow-credentials",
                HeaderValue::from_static("true"),
            );
        }
        h.insert("vary", HeaderValue::from_static("Origin"));
    }
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(
            "x-request-id, retry-after, x-clinvk-session, x-clinvk-backend, x-clinvk-account",
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("localhost:80"), "localhost");
        assert_eq!(host_name("example.com"), "example.com");
    }

    #[test]
    fn buckets_stay_bounded() {
        let rl = RateLimiter::default();
        for i in 0..100_000 {
            let _ = rl.take(&format!("client-{i}"), 10.0, 20.0, 1.0);
        }
        assert!(rl.bucket_count() <= MAX_BUCKETS, "{}", rl.bucket_count());
    }

    #[test]
    fn bucket_refuses_then_says_when() {
        let rl = RateLimiter::default();
        assert!(rl.take("a", 1.0, 2.0, 1.0).is_ok());
        assert!(rl.take("a", 1.0, 2.0, 1.0).is_ok());
        assert_eq!(rl.take("a", 1.0, 2.0, 1.0), Err(1));
        assert!(
            rl.take("b", 1.0, 2.0, 1.0).is_ok(),
            "buckets are per client"
        );
    }
}
