//! Which backends can run: the executable resolves and answers `--version`. Cached; refreshed at
//! start, on reload and periodically. The version string is shown by `/api/v1/backends`,
//! `/health` and `clinvkctl status`.
//!
//! A CLI's answer is remembered by the executable's identity (its real path, size and
//! modification time, and the probe's environment) in the user's cache folder
//! (`$XDG_CACHE_HOME/clinvk/versions.json`): while the file is unchanged, a later start (of this
//! daemon or another of the user's) does not run it again — `gemini --version` alone costs
//! about 2 s of CPU. An install or upgrade replaces the file, so it is probed again.

use clinvk_shared::api::Backend;
use clinvk_shared::config::{BackendSettings, Settings};
use clinvk_shared::protocol::BackendStatus;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The cached availability of every backend (cheap to clone).
#[derive(Clone, Default)]
pub(crate) struct Registry {
    map: Arc<RwLock<HashMap<Backend, BackendStatus>>>,
}

impl Registry {
    /// The last known status of every backend, in a stable order.
    pub(crate) fn all(&self) -> Vec<BackendStatus> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        Backend::ALL
            .iter()
            .filter_map(|b| map.get(b).cloned())
            .collect()
    }

    pub(crate) fn get(&self, backend: Backend) -> Option<BackendStatus> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&backend)
            .cloned()
    }

    /// Re-checks every backend against `settings` (concurrently).
    pub(crate) async fn refresh(&self, settings: &Settings) {
        let checks = Backend::ALL.into_iter().map(|backend| {
            let cfg = settings.backend(backend);
            async move { check(backend, &cfg).await }
        });
        let results = futures::future::join_all(checks).await;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for st in results {
            map.insert(st.name, st);
        }
    }
}

/// The PATH a backend's child sees: its `env.PATH` if configured, else the daemon's.
pub(crate) fn child_path(cfg: &BackendSettings) -> Option<std::ffi::OsString> {
    cfg.env
        .get("PATH")
        .map(Into::into)
        .or_else(|| std::env::var_os("PATH"))
}

pub(crate) use clinvk_shared::paths::find_executable as resolve;

async fn check(backend: Backend, cfg: &BackendSettings) -> BackendStatus {
    let command = cfg
        .command
        .clone()
        .unwrap_or_else(|| backend.as_str().to_string());
    let hint = backend.install_hint();
    let mut st = BackendStatus {
        name: backend,
        enabled: cfg.enabled,
        available: false,
        version: None,
        command: command.clone(),
        path: None,
        message: None,
        default_model: cfg.model.clone(),
        mode: cfg.mode,
        workers: Vec::new(),
    };
    if !cfg.enabled {
        st.message = Some(format!(
            "disabled in the configuration (backends.{backend}.enabled: false)"
        ));
        return st;
    }
    let Some(path) = resolve(&command, child_path(cfg).as_deref()) else {
        st.message = Some(format!(
            "`{command}` was not found in PATH; install it ({hint}) or set backends.{backend}.command to its path"
        ));
        return st;
    };
    st.path = Some(path.display().to_string());
    let seen = identity(&path, cfg);
    if let Some(version) = seen.as_deref().and_then(seen_version) {
        st.version = version;
        st.available = true;
        return st;
    }
    let mut probe = tokio::process::Command::new(&path);
    probe
        .arg("--version")
        .envs(cfg.env.iter())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // The environment a run of this backend gets: no daemon secret, no `env_remove` name.
    crate::supervisor::scrub_env(probe.as_std_mut(), &cfg.env_remove);
    let out = tokio::time::timeout(Duration::from_secs(30), probe.output()).await;
    match out {
        Ok(Ok(o)) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            st.version = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string);
            st.available = true;
            if let Some(key) = &seen {
                remember(key, st.version.clone());
            }
        }
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            st.message = Some(format!(
                "`{} --version` failed ({}): {}",
                path.display(),
                o.status,
                err.lines().last().unwrap_or("").trim()
            ));
        }
        Ok(Err(e)) => st.message = Some(format!("cannot run {}: {e}", path.display())),
        Err(_) => {
            st.message = Some(format!(
                "`{} --version` did not answer within 30 s",
                path.display()
            ))
        }
    }
    st
}

/// The probe's identity of an executable: its real path, size and modification time, and a
/// hash of the variables the probe runs with (None when it cannot be read).
fn identity(path: &std::path::Path, cfg: &BackendSettings) -> Option<String> {
    use std::hash::{Hash, Hasher};
    let real = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&cfg.env, &cfg.env_remove).hash(&mut h);
    Some(format!(
        "{}|{}|{mtime}|{:x}",
        real.display(),
        meta.len(),
        h.finish()
    ))
}

/// `$XDG_CACHE_HOME/clinvk/versions.json` (or the platform's cache folder).
fn cache_file() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| directories::BaseDirs::new().map(|d| d.cache_dir().to_path_buf()))?;
    Some(dir.join("clinvk").join("versions.json"))
}

type Seen = std::collections::BTreeMap<String, Option<String>>;

fn read_seen(file: &std::path::Path) -> Seen {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The version an unchanged executable answered before.
fn seen_version(key: &str) -> Option<Option<String>> {
    read_seen(&cache_file()?).get(key).cloned()
}

/// Remembers an answer (a cache: a failure to write only costs a probe next time).
fn remember(key: &str, version: Option<String>) {
    let Some(file) = cache_file() else { return };
    if let Err(e) = remember_in(&file, key, version) {
        tracing::debug!(file = %file.display(), error = %e, "cannot remember a CLI's version");
    }
}

fn remember_in(file: &std::path::Path, key: &str, version: Option<String>) -> std::io::Result<()> {
    let mut seen = read_seen(file);
    // One entry per path: a replaced executable's goes.
    let path = key.split('|').next().unwrap_or_default();
    seen.retain(|k, _| k.split('|').next() != Some(path));
    seen.insert(key.to_string(), version);
    let bytes = serde_json::to_vec_pretty(&seen).map_err(std::io::Error::other)?;
    clinvk_shared::paths::ensure_private_dir(file.parent().unwrap_or(std::path::Path::new(".")))?;
    clinvk_shared::paths::write_private_atomic(file, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_executable_is_probed_again() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("cli");
        std::fs::write(&exe, "#!/bin/sh\necho 1.0\n").unwrap();
        let cfg = BackendSettings::default();
        let key = identity(&exe, &cfg).unwrap();
        assert_eq!(identity(&exe, &cfg), Some(key.clone()), "stable");
        let file = dir.path().join("cache").join("versions.json");
        remember_in(&file, &key, Some("1.0".into())).unwrap();
        assert_eq!(read_seen(&file).get(&key), Some(&Some("1.0".to_string())));
        // Rewritten (an upgrade): another identity; its entry replaces the old one.
        std::fs::write(&exe, "#!/bin/sh\necho 2.0.0\n").unwrap();
        let newer = identity(&exe, &cfg).unwrap();
        assert_ne!(newer, key);
        remember_in(&file, &newer, Some("2.0.0".into())).unwrap();
        let seen = read_seen(&file);
        assert_eq!(seen.len(), 1);
        assert!(seen.contains_key(&newer));
        // Other variables for the probe: another identity.
        let mut other = cfg.clone();
        other.env.insert("X".into(), "1".into());
        assert_ne!(identity(&exe, &other), Some(newer));
    }
}
