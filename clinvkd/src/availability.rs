//! Which backends can run: the executable resolves and answers `--version`. Cached; refreshed at
//! start, on reload and periodically. The version string is shown by `/api/v1/backends`,
//! `/health` and `clinvkctl status`.

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
