//! The daemon's own API keys (`clinvkctl keys`, `/api/v1/keys`): add, list (with each key's use
//! against its quotas), revoke.

use crate::ctx::Ctx;
use crate::error::Code;
use crate::error::{ApiError, Kind};
use clinvk_shared::api::{
    KeyAddRequest, KeyInfo, KeyList, KeyRevoked, KeyUsageToday, NewKey, Quotas,
};

fn store_error(e: crate::keys::KeyStoreError) -> ApiError {
    tracing::error!(error = %e, "key store");
    ApiError::new(Kind::Internal, Code::KeyStoreError, e.to_string())
}

fn info(ctx: &Ctx, k: &crate::keys::StoredKey) -> KeyInfo {
    let (requests, tokens) = ctx.usage.today(&k.id);
    KeyInfo {
        id: k.id.clone(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        created_at: k.created_at.clone(),
        scope: k.scope(),
        quotas: k.quotas,
        expires_at: k.expires_at.clone(),
        expired: k.expired_at(std::time::SystemTime::now()),
        today: KeyUsageToday {
            requests,
            tokens,
            running: ctx.live.running_for(&k.id),
        },
    }
}

/// Runs key-store work on the blocking pool (it locks a file and waits for the disk).
async fn off_thread<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&crate::keys::KeyStore) -> Result<T, crate::keys::KeyStoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let keys = ctx.keys.clone();
    match tokio::task::spawn_blocking(move || f(&keys)).await {
        Ok(r) => r.map_err(store_error),
        Err(e) => Err(ApiError::new(
            Kind::Internal,
            Code::KeyStoreError,
            format!("the key store task failed: {e}"),
        )),
    }
}

/// A duration such as `30d`, `12h`, `90m` (humantime's forms).
pub(crate) fn parse_duration(field: &str, text: &str) -> Result<std::time::Duration, ApiError> {
    humantime::parse_duration(text.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ApiError::bad_request(
                Code::InvalidRequest,
                format!("`{field}`: {text:?} is not a duration such as 30d, 12h or 90m"),
            )
            .with_param(field)
        })
}

pub(crate) async fn add(ctx: &Ctx, req: KeyAddRequest) -> Result<NewKey, ApiError> {
    let name = req.name.trim().to_string();
    if name.is_empty() {
        return Err(
            ApiError::bad_request(Code::MissingField, "a key needs a name").with_param("name"),
        );
    }
    let zero = |field: &str| {
        ApiError::bad_request(
            Code::InvalidRequest,
            format!("`{field}` must be at least 1"),
        )
        .with_param(field)
    };
    if req.requests_per_day == Some(0) {
        return Err(zero("requests_per_day"));
    }
    if req.tokens_per_day == Some(0) {
        return Err(zero("tokens_per_day"));
    }
    if req.max_concurrent == Some(0) {
        return Err(zero("max_concurrent"));
    }
    let expires_at = match req.expires.as_deref() {
        Some(t) => Some(
            humantime::format_rfc3339_seconds(
                std::time::SystemTime::now() + parse_duration("expires", t)?,
            )
            .to_string(),
        ),
        None => None,
    };
    let spec = crate::keys::NewKeySpec {
        name,
        scope: req.scope,
        quotas: Quotas {
            requests_per_day: req.requests_per_day,
            tokens_per_day: req.tokens_per_day,
            max_concurrent: req.max_concurrent,
        },
        expires_at,
    };
    let (k, key) = off_thread(ctx, move |ks| ks.add_spec(spec)).await?;
    tracing::info!(key_id = %k.id, scope = ?k.scope(), "key added");
    Ok(NewKey {
        key,
        info: info(ctx, &k),
    })
}

pub(crate) fn list(ctx: &Ctx) -> KeyList {
    KeyList {
        keys: ctx.keys.list().iter().map(|k| info(ctx, k)).collect(),
        required: ctx.auth_required(),
        auth: ctx.settings().server.auth,
        accepted_keys: ctx.keys.count(),
    }
}

pub(crate) async fn revoke(ctx: &Ctx, id: &str) -> Result<KeyRevoked, ApiError> {
    let owned = id.to_string();
    if !off_thread(ctx, move |ks| ks.revoke(&owned)).await? {
        return Err(ApiError::not_found(format!(
            "no key with id or name {id:?}"
        )));
    }
    tracing::info!(key = %id, "key revoked");
    Ok(KeyRevoked {
        revoked: id.to_string(),
        remaining: ctx.keys.count(),
        required: ctx.auth_required(),
    })
}
