//! Model names → backends: configured aliases, `<backend>/<model>`, bare backend names, and the
//! model families each backend's adapter claims.

use super::*;
use crate::error::Code;

/// Where a model name leads: a backend and, when given, the model the CLI should use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) backend: Backend,
    /// `None` = the backend's default model (never the backend's own name).
    pub(crate) model: Option<String>,
}

pub(super) fn model_not_found(name: &str) -> ApiError {
    ApiError::new(
        Kind::ModelNotFound,
        Code::ModelNotFound,
        format!(
            "the model {name:?} does not exist: use a backend name ({}), `<backend>/<model>`, a configured alias, or a name of a backend's model family ({})",
            KNOWN_BACKENDS.join(", "),
            crate::backend::adapters()
                .map(|a| a.model_families())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .with_param("model")
}

pub(super) fn enabled(ctx: &Ctx, backend: Backend) -> bool {
    ctx.settings()
        .backends
        .get(backend.as_str())
        .is_none_or(|b| b.enabled)
}

/// `backend` or `backend/model` (the form of config aliases and of explicit names).
pub(super) fn split_target(s: &str) -> Option<Target> {
    let (backend, model) = match s.split_once('/') {
        Some((b, m)) => (b, Some(m.trim()).filter(|m| !m.is_empty() && *m != b)),
        None => (s, None),
    };
    Backend::from_name(backend).map(|backend| Target {
        backend,
        model: model.map(str::to_string),
    })
}

/// Maps a requested model name: configured alias, `<backend>/<model>`, bare backend name (its
/// default model), then family names (`claude…` → claude, `gpt…`/`o1…`/`o3…`/`o4…`/`codex…` →
/// codex, `gemini…` → gemini, passed on as the model). Anything else is 404 `model_not_found`.
pub(crate) fn resolve_model(ctx: &Ctx, name: &str) -> Result<Target, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(
            ApiError::bad_request(Code::MissingField, "`model` is required").with_param("model"),
        );
    }
    let settings = ctx.settings();
    let target = if let Some(t) = settings.models.get(name).and_then(|t| split_target(t)) {
        Some(t)
    } else if let Some(t) = split_target(name) {
        Some(t)
    } else {
        crate::backend::claimed_by(name).map(|backend| Target {
            backend,
            model: Some(name.to_string()),
        })
    };
    match target {
        Some(t) if enabled(ctx, t.backend) => Ok(t),
        Some(t) => Err(ApiError::new(
            Kind::Unavailable,
            Code::BackendDisabled,
            format!("the backend {} is disabled in the configuration", t.backend),
        )),
        None => Err(model_not_found(name)),
    }
}

/// The model ids the mapping accepts by name: enabled backends, `backend/<configured model>`,
/// and configured aliases (sorted, no duplicates).
pub(crate) fn model_ids(ctx: &Ctx) -> Vec<String> {
    let settings = ctx.settings();
    let mut ids: Vec<String> = Vec::new();
    for b in Backend::ALL {
        if !enabled(ctx, b) {
            continue;
        }
        ids.push(b.to_string());
        if let Some(m) = settings
            .backends
            .get(b.as_str())
            .and_then(|c| c.model.clone())
        {
            ids.push(format!("{b}/{m}"));
        }
    }
    for (alias, target) in &settings.models {
        if split_target(target).is_some_and(|t| enabled(ctx, t.backend)) {
            ids.push(alias.clone());
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// The backend a listed model id runs on (for `owned_by`).
pub(crate) fn owner_of(ctx: &Ctx, id: &str) -> String {
    resolve_model(ctx, id)
        .map(|t| t.backend.to_string())
        .unwrap_or_else(|_| "clinvk".into())
}
