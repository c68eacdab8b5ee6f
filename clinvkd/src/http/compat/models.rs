//! Model names → backends: configured aliases, `<backend>/<model>`, bare backend names, and the
//! model families each backend's adapter claims.

use super::*;
use crate::error::Code;

/// Where a model name leads: a backend and, when given, the model the CLI should use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Target {
    pub(crate) backend: Backend,
    /// `None` = the backend's default model (never the backend's own name).
    pub(crate) model: Option<String>,
    /// A route's later targets (`models: {best: [claude/opus, codex]}`), tried in order when
    /// this one's accounts are refused for a spent window.
    pub(crate) fallbacks: Vec<(Backend, Option<String>)>,
    /// Named by a route (a list alias): the answer's `model` says which target served it.
    pub(crate) route: bool,
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
        fallbacks: Vec::new(),
        route: false,
    })
}

/// The model name an answer shows for what served it: `backend/model`, or the backend.
pub(crate) fn served_name(by: &crate::ops::prompt::ServedBy) -> String {
    match &by.model {
        Some(m) => format!("{}/{m}", by.backend),
        None => by.backend.to_string(),
    }
}

/// A configured route's enabled targets from the first with headroom (a target whose every
/// account is refused until a reset is passed over while a later one is not), the later ones as
/// its fallbacks; None when none is enabled.
fn route_target(ctx: &Ctx, route: &clinvk_shared::accounts::ModelRoute) -> Option<Target> {
    let targets: Vec<Target> = route
        .targets()
        .into_iter()
        .filter_map(split_target)
        .filter(|t| enabled(ctx, t.backend))
        .collect();
    let settings = ctx.settings();
    let first = targets
        .iter()
        .position(|t| {
            ctx.accounts
                .ranked(&settings, &ctx.quotas, t.backend, false)
                .iter()
                .any(|r| r.refused_until.is_none())
        })
        .unwrap_or(0);
    let mut rest = targets.into_iter().skip(first);
    let mut chosen = rest.next()?;
    chosen.fallbacks = rest.map(|t| (t.backend, t.model)).collect();
    chosen.route = matches!(route, clinvk_shared::accounts::ModelRoute::Many(_));
    Some(chosen)
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
    let target = if let Some(route) = settings.models.get(name) {
        match route_target(ctx, route) {
            Some(t) => Some(t),
            // Every target's backend is disabled: say so about the first.
            None => route.targets().first().and_then(|t| split_target(t)),
        }
    } else if let Some(t) = split_target(name) {
        Some(t)
    } else {
        crate::backend::claimed_by(name).map(|backend| Target {
            backend,
            model: Some(name.to_string()),
            fallbacks: Vec::new(),
            route: false,
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
    for (alias, route) in &settings.models {
        if route
            .targets()
            .into_iter()
            .filter_map(split_target)
            .any(|t| enabled(ctx, t.backend))
        {
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
