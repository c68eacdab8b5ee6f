//! The daemon's own API keys (`clinvkctl keys`): add, list, revoke.

use crate::ctx::Ctx;
use crate::error::{ApiError, Kind};
use clinvk_shared::api::{KeyInfo, KeyList, KeyRevoked, NewKey};

fn store_error(e: crate::keys::KeyStoreError) -> ApiError {
    tracing::error!(error = %e, "key store");
    ApiError::new(Kind::Internal, "key_store_error", e.to_string())
}

fn info(k: &crate::keys::StoredKey) -> KeyInfo {
    KeyInfo {
        id: k.id.clone(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        created_at: k.created_at.clone(),
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
            "key_store_error",
            format!("the key store task failed: {e}"),
        )),
    }
}

pub(crate) async fn add(ctx: &Ctx, name: &str) -> Result<NewKey, ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("missing_field", "a key needs a name"));
    }
    let owned = name.to_string();
    let (k, key) = off_thread(ctx, move |ks| ks.add(&owned)).await?;
    Ok(NewKey {
        key,
        info: info(&k),
    })
}

pub(crate) fn list(ctx: &Ctx) -> KeyList {
    KeyList {
        keys: ctx.keys.list().iter().map(info).collect(),
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
    Ok(KeyRevoked {
        revoked: id.to_string(),
        remaining: ctx.keys.count(),
        required: ctx.auth_required(),
    })
}
