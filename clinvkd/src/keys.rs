//! API keys: from `CLINVK_API_KEYS` (comma-separated), from gopass
//! (`server.api_keys_gopass_path`), and from the daemon's own key store (`keys.json` in the state
//! folder, 0600, managed with `clinvkctl keys`). Only SHA-256 digests are kept in memory and on
//! disk; a presented key is checked against every digest in constant time. No keys → open.

use clinvk_shared::paths::write_private_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// A key of the daemon's own store (the secret itself is never stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: String,
}

#[derive(Default)]
struct Inner {
    external: Vec<[u8; 32]>,
    stored: Vec<StoredKey>,
    stored_digests: Vec<[u8; 32]>,
}

/// All accepted keys (cheap to clone).
#[derive(Clone, Default)]
pub struct KeyStore {
    file: PathBuf,
    inner: Arc<RwLock<Inner>>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl KeyStore {
    /// Loads the store file (a missing file is an empty store).
    pub fn open(file: &Path) -> Self {
        let ks = KeyStore {
            file: file.to_path_buf(),
            inner: Arc::default(),
        };
        let stored: Vec<StoredKey> = std::fs::read(file)
            .ok()
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "cannot read the key store; its keys are not accepted");
                    None
                }
            })
            .unwrap_or_default();
        ks.set_stored(stored);
        ks
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set_stored(&self, stored: Vec<StoredKey>) {
        let mut w = self.write();
        w.stored_digests = stored.iter().filter_map(|k| unhex(&k.sha256)).collect();
        w.stored = stored;
    }

    /// Replaces the keys that come from outside the store (environment, gopass).
    pub fn set_external(&self, keys: &[String]) {
        self.write().external = keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(digest)
            .collect();
    }

    /// Whether any key is configured (no keys: the API is open).
    pub fn required(&self) -> bool {
        let r = self.read();
        !r.external.is_empty() || !r.stored_digests.is_empty()
    }

    /// Checks a presented key in constant time against every accepted digest.
    pub fn check(&self, presented: &str) -> bool {
        let d = digest(presented);
        let r = self.read();
        let mut ok = subtle::Choice::from(0u8);
        for k in r.external.iter().chain(r.stored_digests.iter()) {
            ok |= k.ct_eq(&d);
        }
        ok.into()
    }

    /// Creates a key, stores its digest, and returns the key (shown once).
    pub fn add(&self, name: &str) -> std::io::Result<(StoredKey, String)> {
        let secret = format!(
            "ck-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let key = StoredKey {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            name: name.to_string(),
            sha256: hex(&digest(&secret)),
            prefix: secret[..8].to_string(),
            created_at: clinvk_shared::types::now_rfc3339(),
        };
        let mut stored = self.list();
        stored.push(key.clone());
        self.save(&stored)?;
        self.set_stored(stored);
        Ok((key, secret))
    }

    pub fn list(&self) -> Vec<StoredKey> {
        self.read().stored.clone()
    }

    /// Revokes a stored key by id or name; returns whether one was found.
    pub fn revoke(&self, id_or_name: &str) -> std::io::Result<bool> {
        let mut stored = self.list();
        let before = stored.len();
        stored.retain(|k| k.id != id_or_name && k.name != id_or_name);
        if stored.len() == before {
            return Ok(false);
        }
        self.save(&stored)?;
        self.set_stored(stored);
        Ok(true)
    }

    fn save(&self, stored: &[StoredKey]) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(stored).map_err(std::io::Error::other)?;
        write_private_atomic(&self.file, &bytes)
    }
}

/// Keys from the environment and gopass, read at start and on every reload.
pub fn external_keys(gopass_path: &str) -> Vec<String> {
    let mut keys: Vec<String> = std::env::var("CLINVK_API_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let path = std::env::var("CLINVK_API_KEYS_GOPASS_PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| gopass_path.to_string());
    if !path.is_empty() {
        match std::process::Command::new("gopass")
            .args(["show", "-o", &path])
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => keys.extend(
                String::from_utf8_lossy(&o.stdout)
                    .split([',', '\n'])
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty()),
            ),
            Ok(o) => {
                tracing::error!(path, status = %o.status, "gopass could not read the API keys")
            }
            Err(e) => tracing::error!(path, error = %e, "cannot run gopass to read the API keys"),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_check_revoke_and_persist() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys.json");
        let ks = KeyStore::open(&f);
        assert!(!ks.required());
        let (k, secret) = ks.add("ci").unwrap();
        assert!(ks.required() && ks.check(&secret) && !ks.check("nope"));
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains(&secret), "only the digest is stored");
        assert!(KeyStore::open(&f).check(&secret));
        ks.set_external(&["env-key".into()]);
        assert!(ks.check("env-key"));
        assert!(ks.revoke(&k.id).unwrap());
        assert!(!ks.check(&secret));
        assert!(!ks.revoke("nothing").unwrap());
    }
}
