//! What every request passes before its handler: CORS (preflights answered before auth), API
//! key check (`Authorization: Bearer` or `X-Api-Key`; 401 in the style's shape), and the rate
//! limit (token bucket per key, else per client IP; `X-Forwarded-For`/`X-Real-IP` are trusted
//! only from `server.trusted_proxies`).

use super::error::{ApiError, Kind};
use super::HttpRequest;
use crate::ctx::Ctx;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;

/// Paths that never need a key.
fn is_public(path: &str) -> bool {
    path == "/health" || path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/")
}

/// The presented key, if any.
fn presented_key(req: &HttpRequest) -> Option<String> {
    if let Some(a) = req.header("authorization") {
        let a = a.trim();
        if a.len() > 7 && a[..7].eq_ignore_ascii_case("bearer ") {
            return Some(a[7..].trim().to_string());
        }
    }
    req.header("x-api-key").map(|k| k.trim().to_string())
}

/// The client's address: the socket peer, or the forwarded one from a trusted proxy.
pub fn client_ip(ctx: &Ctx, req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.remote.map(|a| a.ip());
    let trusted = ctx.settings().server.trusted_proxies.clone();
    match peer {
        Some(ip)
            if trusted
                .iter()
                .any(|t| t.parse::<IpAddr>().is_ok_and(|t| t == ip)) =>
        {
            req.header("x-forwarded-for")
                .and_then(|v| v.split(',').next())
                .or_else(|| req.header("x-real-ip"))
                .and_then(|v| v.trim().parse().ok())
                .or(peer)
        }
        _ => peer,
    }
}

/// Checks the key; returns the client identity for rate limiting.
pub fn authenticate(ctx: &Ctx, req: &HttpRequest) -> Result<String, ApiError> {
    let ip = client_ip(ctx, req)
        .map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into());
    let settings = ctx.settings();
    let needs_key =
        !is_public(&req.path) && (req.path != "/metrics" || settings.server.metrics_require_auth);
    if !needs_key || !ctx.keys.required() {
        return Ok(format!("ip:{ip}"));
    }
    match presented_key(req) {
        Some(k) if ctx.keys.check(&k) => {
            use sha2::Digest;
            let d = sha2::Sha256::digest(k.as_bytes());
            Ok(format!(
                "key:{:02x}{:02x}{:02x}{:02x}",
                d[0], d[1], d[2], d[3]
            ))
        }
        Some(_) => Err(ApiError::new(
            Kind::Unauthorized,
            "invalid_api_key",
            "the API key is not valid",
        )),
        None => Err(ApiError::new(
            Kind::Unauthorized,
            "missing_api_key",
            "an API key is required: send `Authorization: Bearer <key>` or `X-Api-Key: <key>`",
        )),
    }
}

/// Token buckets per client.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes a token for `client`, or says how long to wait.
    pub fn check(&self, ctx: &Ctx, client: &str) -> Result<(), ApiError> {
        let s = ctx.settings();
        if !s.server.rate_limit_enabled {
            return Ok(());
        }
        let (rps, burst) = (
            s.server.rate_limit_rps,
            f64::from(s.server.rate_limit_burst),
        );
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() > 10_000 {
            b.retain(|_, (tokens, at)| *tokens < burst || at.elapsed().as_secs() < 60);
        }
        let now = Instant::now();
        let (tokens, at) = b.entry(client.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rps).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - *tokens) / rps).ceil().max(1.0) as u64;
        let mut e = ApiError::new(
            Kind::RateLimited,
            "rate_limited",
            format!("too many requests; retry in {wait} s"),
        );
        e.retry_after_secs = Some(wait);
        Err(e)
    }
}

fn origin_allowed(ctx: &Ctx, origin: &str) -> bool {
    ctx.settings()
        .server
        .cors_allowed_origins
        .iter()
        .any(|o| o == "*" || o == origin)
}

/// Answers a CORS preflight (before auth), or None when the request is not one.
pub fn preflight(ctx: &Ctx, req: &HttpRequest) -> Option<Response> {
    if req.method != Method::OPTIONS {
        return None;
    }
    let mut resp = Response::new(Vec::<u8>::new().into());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let s = ctx.settings();
    if let Some(origin) = req.header("origin").filter(|o| origin_allowed(ctx, o)) {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(origin) {
            h.insert("access-control-allow-origin", v);
        }
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
        if let Ok(v) = HeaderValue::from_str(&s.server.cors_max_age.to_string()) {
            h.insert("access-control-max-age", v);
        }
        if s.server.cors_allow_credentials {
            h.insert(
                "access-control-allow-credentials",
                HeaderValue::from_static("true"),
            );
        }
        h.insert("vary", HeaderValue::from_static("Origin"));
    }
    Some(resp)
}

/// Adds the CORS headers of an allowed origin to a response.
pub fn add_cors(ctx: &Ctx, origin: Option<&str>, resp: &mut Response) {
    let Some(origin) = origin.filter(|o| origin_allowed(ctx, o)) else {
        return;
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert("access-control-allow-origin", v);
    }
    if ctx.settings().server.cors_allow_credentials {
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
    }
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("x-request-id, retry-after"),
    );
    h.insert("vary", HeaderValue::from_static("Origin"));
}
