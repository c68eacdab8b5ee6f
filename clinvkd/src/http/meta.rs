//! Meta endpoints: `/health`, `/metrics` (`/openapi.json` and `/docs` live in `openapi`).

use super::error::{json_response, ApiError, Kind};
use crate::ctx::Ctx;
use crate::error::Code;
use schemars::JsonSchema;
use serde::Serialize;
use std::sync::OnceLock;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// The answer of `GET /health`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Health {
    /// `degraded`: some enabled backend is unusable; `unhealthy`: none is usable, or the daemon
    /// is draining (then the status code is 503).
    status: HealthStatus,
    /// The details below are absent when auth is on and the request sent no key.
    #[serde(flatten)]
    details: Option<HealthDetails>,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum HealthStatus {
    Ok,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Serialize, JsonSchema)]
struct HealthDetails {
    /// The daemon's build version.
    version: String,
    /// Human-readable, e.g. `1h 2m 3s`.
    uptime: String,
    uptime_ms: u64,
    backends: Vec<HealthBackend>,
    session_store: SessionStoreHealth,
}

#[derive(Debug, Serialize, JsonSchema)]
struct HealthBackend {
    name: String,
    available: bool,
    enabled: bool,
    version: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
struct SessionStoreHealth {
    available: bool,
    session_count: usize,
}

/// `GET /health`: `ok`, `degraded` (some enabled backend unusable) or `unhealthy` (draining, or
/// no backend usable).
pub(crate) fn health(ctx: &Ctx) -> Response {
    let uptime_ms = ctx.uptime_ms();
    let (status, code) = health_status(ctx);
    let details = HealthDetails {
        version: clinvk_shared::VERSION.to_string(),
        uptime: humantime::format_duration(std::time::Duration::from_secs(uptime_ms / 1000))
            .to_string(),
        uptime_ms,
        backends: ctx
            .backends
            .all()
            .into_iter()
            .map(|b| HealthBackend {
                name: b.name.to_string(),
                available: b.available,
                enabled: b.enabled,
                version: b.version,
            })
            .collect(),
        session_store: SessionStoreHealth {
            available: true,
            session_count: ctx.sessions.count(),
        },
    };
    json_response(
        code,
        &Health {
            status,
            details: Some(details),
        },
    )
}

/// The health verdict and its HTTP status.
fn health_status(ctx: &Ctx) -> (HealthStatus, StatusCode) {
    let backends = ctx.backend_statuses();
    let enabled: Vec<_> = backends.iter().filter(|b| b.enabled).collect();
    let usable = enabled.iter().filter(|b| b.available).count();
    let status = if ctx.is_draining() || usable == 0 {
        HealthStatus::Unhealthy
    } else if usable < enabled.len() {
        HealthStatus::Degraded
    } else {
        HealthStatus::Ok
    };
    let code = if ctx.is_draining() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, code)
}

/// `GET /health` without a key while auth is on: only the verdict.
pub(crate) fn health_status_only(ctx: &Ctx) -> Response {
    let (status, code) = health_status(ctx);
    json_response(
        code,
        &Health {
            status,
            details: None,
        },
    )
}

static RECORDER: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once (several daemons in one test process share it).
pub(crate) fn install_metrics() {
    RECORDER.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .ok()
    });
}

/// The metrics in Prometheus text format (empty before `install_metrics`).
pub(crate) fn rendered() -> String {
    RECORDER
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default()
}

/// `GET /metrics` in Prometheus text format, when `server.metrics_enabled`.
pub(crate) fn metrics(ctx: &Ctx) -> Result<Response, ApiError> {
    if !ctx.settings().server.metrics_enabled {
        return Err(ApiError::new(
            Kind::NotFound,
            Code::MetricsDisabled,
            "metrics are disabled (server.metrics_enabled: false)",
        ));
    }
    let text = rendered();
    let mut resp = Response::new(text.into());
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}
