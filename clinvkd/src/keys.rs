//! API keys: from `CLINVK_API_KEYS` (comma-separated), from gopass
//! (`server.api_keys_gopass_path`), and from the daemon's own key store (`keys.json` in the state
//! folder, 0600, managed with `clinvkctl keys`). Only SHA-256 digests are kept in memory and on
//! disk; a presented key is checked against every digest in constant time. No keys → open.
//! A stored key has a scope (what it may do), quotas and an expiry; files written before they
//! existed are read as keys of scope `use` without limits.

use clinvk_shared::api::{Quotas, Scope};
use clinvk_shared::config::AuthMode;
use clinvk_shared::paths::write_private_atomic;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use subtle::ConstantTimeEq;

/// A key of the daemon's own store (the secret itself is never stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct StoredKey {
    pub(crate) id: String,
    pub(crate) name: String,
    /// Hex SHA-256 of the key.
    pub(crate) sha256: String,
    /// The first characters of the key, to recognise it.
    pub(crate) prefix: String,
    pub(crate) created_at: String,
    /// None in files written before scopes: `use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<Scope>,
    #[serde(default)]
    pub(crate) quotas: Quotas,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<String>,
}

impl StoredKey {
    pub(crate) fn scope(&self) -> Scope {
        self.scope.unwrap_or_default()
    }

    /// Whether the key has expired at `now`.
    pub(crate) fn expired_at(&self, now: std::time::SystemTime) -> bool {
        self.expires_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .is_some_and(|t| t <= now)
    }
}

/// What a presented key proves: which key, what it may do, and whether it has expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) id: String,
    pub(crate) scope: Scope,
    pub(crate) expired: bool,
}

/// A new key's properties (validated by `ops::keys`).
#[derive(Debug, Clone, Default)]
pub(crate) struct NewKeySpec {
    pub(crate) name: String,
    pub(crate) scope: Scope,
    pub(crate) quotas: Quotas,
    pub(crate) expires_at: Option<String>,
}

/// Why the key store cannot be used. The daemon refuses to start (and a reload fails) rather
/// than treat an unreadable store as "no keys".
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyStoreError {
    #[error("cannot read the key store {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("the key store {file} is corrupt ({message}); fix or remove it")]
    Corrupt { file: PathBuf, message: String },
    #[error("cannot write the key store {file}: {source}")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Inner {
    /// Digests of the keys from the environment and gopass, with their ids (`env-…`).
    external: Vec<([u8; 32], String)>,
    stored: Vec<StoredKey>,
    stored_digests: Vec<([u8; 32], String)>,
    /// Whether the store file exists (even empty): keys were managed here once.
    file_exists: bool,
}

/// All accepted keys (cheap to clone).
#[derive(Clone, Default)]
pub(crate) struct KeyStore {
    file: PathBuf,
    inner: Arc<RwLock<Inner>>,
    /// Serialises read-modify-write of the store file inside this process (the file lock
    /// serialises it between processes).
    write_lock: Arc<Mutex<()>>,
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

/// Reads the store file: `Ok(None)` when it does not exist.
fn read_file(file: &Path) -> Result<Option<Vec<StoredKey>>, KeyStoreError> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KeyStoreError::Read {
                file: file.to_path_buf(),
                source,
            })
        }
    };
    let keys: Vec<StoredKey> =
        serde_json::from_slice(&bytes).map_err(|e| KeyStoreError::Corrupt {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
    if let Some(k) = keys.iter().find(|k| unhex(&k.sha256).is_none()) {
        return Err(KeyStoreError::Corrupt {
            file: file.to_path_buf(),
            message: format!("key {:?} has no valid sha256", k.id),
        });
    }
    Ok(Some(keys))
}

impl KeyStore {
    /// Loads the store file (a missing file is an empty store; an unreadable one is an error),
    /// after removing the temporary files that a write cut short left next to it.
    pub(crate) fn open(file: &Path) -> Result<Self, KeyStoreError> {
        let ks = KeyStore {
            file: file.to_path_buf(),
            ..Default::default()
        };
        ks.remove_stale_temp_files();
        ks.reload()?;
        Ok(ks)
    }

    /// Removes the store file's stale temporary files (see
    /// `clinvk_shared::paths::remove_stale_temp_files`) under the file lock, so no write of
    /// another handle is in between; only when there are some (no lock file made for nothing).
    fn remove_stale_temp_files(&self) {
        let (Some(dir), Some(name)) = (
            self.file.parent(),
            self.file.file_name().and_then(|n| n.to_str()),
        ) else {
            return;
        };
        let prefix = format!(".{name}.tmp.");
        let any = std::fs::read_dir(dir).is_ok_and(|mut entries| {
            entries.any(|e| {
                e.is_ok_and(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(&prefix))
                })
            })
        });
        if !any {
            return;
        }
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(_flock) = self.file_lock() else {
            return;
        };
        crate::session::report_stale_temp_files(
            dir,
            clinvk_shared::paths::remove_stale_temp_files(dir, Some(name)),
        );
    }

    /// The exclusive lock on `<store>.lock` that serialises writers between processes.
    fn file_lock(&self) -> std::io::Result<Flock<std::fs::File>> {
        let lock_path = self.file.with_extension("json.lock");
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let lock_file = opts.open(&lock_path)?;
        Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
    }

    /// Re-reads the store file (on reload); on error the keys in force stay.
    pub(crate) fn reload(&self) -> Result<(), KeyStoreError> {
        let stored = read_file(&self.file)?;
        self.set_stored(stored.is_some(), stored.unwrap_or_default());
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set_stored(&self, file_exists: bool, stored: Vec<StoredKey>) {
        let mut w = self.write();
        w.stored_digests = stored
            .iter()
            .filter_map(|k| unhex(&k.sha256).map(|d| (d, k.id.clone())))
            .collect();
        w.stored = stored;
        w.file_exists = file_exists;
    }

    /// Replaces the keys that come from outside the store (environment, gopass).
    pub(crate) fn set_external(&self, keys: &[String]) {
        self.write().external = keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| {
                let d = digest(k);
                (d, format!("env-{}", &hex(&d)[..8]))
            })
            .collect();
    }

    /// Whether keys were ever set up: any key from any source, or a store file (even one whose
    /// last key was revoked).
    pub(crate) fn configured(&self) -> bool {
        let r = self.read();
        !r.external.is_empty() || !r.stored_digests.is_empty() || r.file_exists
    }

    /// Whether the HTTP API asks for a key under `mode`.
    pub(crate) fn required(&self, mode: AuthMode) -> bool {
        mode.requires_key(self.configured())
    }

    /// Number of keys that are accepted now.
    pub(crate) fn count(&self) -> usize {
        let r = self.read();
        r.external.len() + r.stored_digests.len()
    }

    /// Checks a presented key in constant time against every accepted digest; returns the id
    /// of the key it matches.
    #[cfg(test)]
    pub(crate) fn check(&self, presented: &str) -> Option<String> {
        self.grant(presented).map(|g| g.id)
    }

    /// As `check`, with the key's scope and whether it has expired.
    pub(crate) fn grant(&self, presented: &str) -> Option<Grant> {
        let d = digest(presented);
        let r = self.read();
        let mut found = None;
        for (k, id) in r.external.iter().chain(r.stored_digests.iter()) {
            let eq: bool = k.ct_eq(&d).into();
            if eq {
                found = Some(id.clone());
            }
        }
        let id = found?;
        let stored = r.stored.iter().find(|k| k.id == id);
        Some(Grant {
            scope: stored.map_or(Scope::Use, StoredKey::scope),
            expired: stored.is_some_and(|k| k.expired_at(std::time::SystemTime::now())),
            id,
        })
    }

    /// A stored key by id.
    pub(crate) fn get(&self, id: &str) -> Option<StoredKey> {
        self.read().stored.iter().find(|k| k.id == id).cloned()
    }

    /// Read-modify-write of the store file under the in-process lock and an exclusive file
    /// lock, starting from what is on disk (so no update is lost).
    fn modify<T>(&self, f: impl FnOnce(&mut Vec<StoredKey>) -> T) -> Result<T, KeyStoreError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let werr = |source| KeyStoreError::Write {
            file: self.file.clone(),
            source,
        };
        let _flock = self.file_lock().map_err(werr)?;
        let on_disk = read_file(&self.file)?;
        let mut stored = on_disk.clone().unwrap_or_default();
        let out = f(&mut stored);
        if on_disk.as_ref() == Some(&stored) || (on_disk.is_none() && stored.is_empty()) {
            // Nothing changed: no write (a revoke of an unknown key must not create the store
            // file, which would switch auth on).
            self.set_stored(on_disk.is_some(), stored);
            return Ok(out);
        }
        let bytes =
            serde_json::to_vec_pretty(&stored).map_err(|e| werr(std::io::Error::other(e)))?;
        write_private_atomic(&self.file, &bytes).map_err(werr)?;
        self.set_stored(true, stored);
        Ok(out)
    }

    /// Creates a key of scope `use` without limits (see `add_spec`).
    #[cfg(test)]
    pub(crate) fn add(&self, name: &str) -> Result<(StoredKey, String), KeyStoreError> {
        self.add_spec(NewKeySpec {
            name: name.to_string(),
            ..Default::default()
        })
    }

    /// Creates a key, stores its digest, and returns the key (shown once).
    pub(crate) fn add_spec(&self, spec: NewKeySpec) -> Result<(StoredKey, String), KeyStoreError> {
        let secret = format!(
            "ck-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let key = StoredKey {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            name: spec.name,
            sha256: hex(&digest(&secret)),
            prefix: secret[..8].to_string(),
            created_at: clinvk_shared::types::now_rfc3339(),
            scope: Some(spec.scope),
            quotas: spec.quotas,
            expires_at: spec.expires_at,
        };
        let k = key.clone();
        self.modify(move |stored| stored.push(k))?;
        Ok((key, secret))
    }

    pub(crate) fn list(&self) -> Vec<StoredKey> {
        self.read().stored.clone()
    }

    /// Revokes a stored key by id or name; returns whether one was found.
    pub(crate) fn revoke(&self, id_or_name: &str) -> Result<bool, KeyStoreError> {
        self.modify(|stored| {
            let before = stored.len();
            stored.retain(|k| k.id != id_or_name && k.name != id_or_name);
            stored.len() != before
        })
    }
}

/// Runs a short helper command, killing it when it takes longer than `limit` (a gopass waiting
/// for a passphrase must not hang a start or a reload).
fn run_with_timeout(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", limit.as_secs()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout)?;
    }
    Ok(std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    })
}

/// Keys from the environment and gopass, read at start and on every reload. A configured gopass
/// path that cannot be read is an error (never "no keys"). Waiting for gopass (up to 10 s, its
/// exit polled) happens on the blocking pool, never on an async worker.
pub(crate) async fn external_keys(gopass_path: &str) -> Result<Vec<String>, String> {
    external_keys_from(std::path::Path::new("gopass"), gopass_path).await
}

/// `external_keys` with `gopass` as the gopass program.
async fn external_keys_from(
    gopass: &std::path::Path,
    gopass_path: &str,
) -> Result<Vec<String>, String> {
    let (gopass, gopass_path) = (gopass.to_path_buf(), gopass_path.to_string());
    tokio::task::spawn_blocking(move || external_keys_with(&gopass, &gopass_path))
        .await
        .map_err(|e| format!("reading the API keys did not finish: {e}"))?
}

fn external_keys_with(gopass: &std::path::Path, gopass_path: &str) -> Result<Vec<String>, String> {
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
        let mut cmd = std::process::Command::new(gopass);
        cmd.args(["show", "-o", &path]);
        crate::supervisor::scrub_env(&mut cmd, &[]);
        let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(10))
            .map_err(|e| format!("cannot run gopass to read the API keys at {path:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "gopass could not read the API keys at {path:?} ({}); fix it or unset server.api_keys_gopass_path",
                out.status
            ));
        }
        keys.extend(
            String::from_utf8_lossy(&out.stdout)
                .split([',', '\n'])
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
        );
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_check_revoke_and_persist() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys.json");
        let ks = KeyStore::open(&f).unwrap();
        assert!(!ks.required(AuthMode::Auto));
        let (k, secret) = ks.add("ci").unwrap();
        assert!(ks.required(AuthMode::Auto) && !ks.required(AuthMode::Off));
        assert_eq!(ks.check(&secret), Some(k.id.clone()));
        assert_eq!(ks.check("nope"), None);
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains(&secret), "only the digest is stored");
        assert!(KeyStore::open(&f).unwrap().check(&secret).is_some());
        ks.set_external(&["env-key".into()]);
        assert!(ks.check("env-key").unwrap().starts_with("env-"));
        ks.set_external(&[]);
        assert!(ks.revoke(&k.id).unwrap());
        assert!(ks.check(&secret).is_none());
        assert!(!ks.revoke("nothing").unwrap());
        let fresh = KeyStore::open(&d.path().join("other.json")).unwrap();
        assert!(!fresh.revoke("nothing").unwrap());
        assert!(
            !fresh.configured(),
            "revoking an unknown key creates no store (auth stays off)"
        );
        // The last key revoked: still required (fails closed) until auth is switched off.
        assert_eq!(ks.count(), 0);
        assert!(ks.required(AuthMode::Auto));
    }

    #[test]
    fn old_files_read_as_use_keys_and_expiry_counts() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys.json");
        let secret = "ck-old-key";
        std::fs::write(
            &f,
            format!(
                r#"[{{"id":"old1","name":"old","sha256":"{}","prefix":"ck-old-k","created_at":"2026-01-01T00:00:00Z"}}]"#,
                hex(&digest(secret))
            ),
        )
        .unwrap();
        let ks = KeyStore::open(&f).unwrap();
        let g = ks.grant(secret).unwrap();
        assert_eq!(
            (g.id.as_str(), g.scope, g.expired),
            ("old1", Scope::Use, false)
        );
        let (k, s2) = ks
            .add_spec(NewKeySpec {
                name: "gone".into(),
                scope: Scope::Read,
                expires_at: Some("2020-01-01T00:00:00Z".into()),
                ..Default::default()
            })
            .unwrap();
        let g = ks.grant(&s2).unwrap();
        assert_eq!((g.id, g.scope, g.expired), (k.id, Scope::Read, true));
        // The old key is kept as it was (no scope written into it by the rewrite).
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("\"old1\""), "{text}");
    }

    #[test]
    fn a_hanging_helper_is_stopped() {
        let e = run_with_timeout(
            std::process::Command::new("sleep").arg("30"),
            std::time::Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        let out = run_with_timeout(
            std::process::Command::new("echo").arg("k1,k2"),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "k1,k2");
    }

    /// On a current-thread runtime a blocking wait would stop every other task: this gopass
    /// answers only once another task of the same runtime has run.
    #[tokio::test]
    async fn the_gopass_fetch_leaves_the_runtime_free() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (flag, part) = (d.path().join("release"), d.path().join("release.part"));
        let gopass = d.path().join("gopass");
        std::fs::write(
            &gopass,
            format!(
                "#!/bin/sh\nwhile [ ! -e '{0}' ]; do sleep 0.01; done\ncat '{0}'\n",
                flag.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&gopass, std::fs::Permissions::from_mode(0o755)).unwrap();
        let release = tokio::spawn(async move {
            tokio::fs::write(&part, "gopass-key\n").await.unwrap();
            tokio::fs::rename(&part, &flag).await.unwrap();
        });
        let keys = external_keys_from(&gopass, "clinvk/api-keys")
            .await
            .expect("gopass answered");
        assert!(keys.iter().any(|k| k == "gopass-key"), "{keys:?}");
        release.await.unwrap();
    }

    #[test]
    fn corrupt_store_is_an_error_not_an_empty_store() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys.json");
        std::fs::write(&f, "{not json").unwrap();
        let e = KeyStore::open(&f).err().expect("corrupt store refused");
        assert!(e.to_string().contains("keys.json"), "{e}");
    }

    #[test]
    fn temp_files_of_dead_writers_are_removed_at_open() {
        use crate::testkit::{leave_temp, DEAD_PID};
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys.json");
        let (k, secret) = KeyStore::open(&f).unwrap().add("ci").unwrap();
        let dead = leave_temp(d.path(), "keys.json", DEAD_PID, 60);
        let ours_before_start = leave_temp(d.path(), "keys.json", std::process::id(), 86_400);
        // The state folder holds other files: only the key store's own temp files go.
        let other = leave_temp(d.path(), "config.yaml", DEAD_PID, 60);
        let ks = KeyStore::open(&f).unwrap();
        assert!(!dead.exists(), "a dead writer's temp file is removed");
        assert!(
            !ours_before_start.exists(),
            "a temp file older than this process is removed"
        );
        assert!(
            other.exists(),
            "another file's temp file is not the key store's"
        );
        assert_eq!(ks.check(&secret), Some(k.id), "the keys still load");
    }

    #[test]
    fn concurrent_adds_and_revokes_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("keys.json");
        let a = KeyStore::open(&f).unwrap();
        let b = KeyStore::open(&f).unwrap(); // a second handle: as another process would
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let ks = if t % 2 == 0 { a.clone() } else { b.clone() };
                std::thread::spawn(move || {
                    for i in 0..10 {
                        ks.add(&format!("t{t}-{i}")).unwrap();
                        if i % 2 == 1 {
                            assert!(ks.revoke(&format!("t{t}-{i}")).unwrap());
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        a.reload().unwrap();
        let mut names: Vec<String> = a.list().into_iter().map(|k| k.name).collect();
        names.sort();
        let mut want: Vec<String> = (0..8)
            .flat_map(|t| (0..10).step_by(2).map(move |i| format!("t{t}-{i}")))
            .collect();
        want.sort();
        assert_eq!(names, want);
    }
}
