//! The daemon's shared context: one cheap-to-clone handle through which HTTP and control-socket
//! handlers reach the settings (swappable on reload), counters, the event feed of attached
//! clients, and the shutdown state. It owns no task; the daemon module starts and stops them.

use clinvk_shared::config::{self, ConfigError, Settings};
use clinvk_shared::paths::Paths;
use clinvk_shared::protocol::AttachEvent;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::{broadcast, watch};

/// Values given on the command line; they win over the file and the environment, on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub log_file: Option<PathBuf>,
    /// `--insecure`: serve a non-loopback address without authentication.
    pub insecure: bool,
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyStoreError),
    #[error("{0}")]
    Refused(String),
}

/// Loads the configuration as the daemon does at start: file, environment, flags, validation.
pub fn load_settings(
    config_path: &std::path::Path,
    explicit: bool,
    overrides: &Overrides,
) -> Result<config::Loaded, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut loaded = config::load(config_path, explicit, &env)?;
    if let Some(h) = &overrides.host {
        loaded.settings.server.host = h.clone();
    }
    if let Some(p) = overrides.port {
        loaded.settings.server.port = p;
    }
    if let Some(f) = &overrides.log_file {
        loaded.settings.log.file = Some(f.clone());
    }
    config::validate(&loaded.settings, Some(config_path))?;
    Ok(loaded)
}

/// Refuses to serve a non-loopback address without authentication (unless `--insecure`).
pub(crate) fn check_exposure(
    addrs: &[SocketAddr],
    auth_required: bool,
    insecure: bool,
) -> Result<(), String> {
    if auth_required || insecure {
        return Ok(());
    }
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        Some(a) => Err(format!(
            "refusing to serve {a} without authentication: anyone who can reach it could run agents as you. \
Add an API key (CLINVK_API_KEYS, or `clinvkctl keys add NAME` while serving on 127.0.0.1) and keep \
server.auth at auto or required, or pass --insecure to serve it unauthenticated anyway"
        )),
        None => Ok(()),
    }
}

#[derive(Clone)]
pub(crate) struct Ctx(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) paths: Paths,
    pub(crate) config_path: PathBuf,
    pub(crate) config_explicit: bool,
    pub(crate) overrides: Overrides,
    settings: RwLock<Arc<Settings>>,
    loaded_from_file: AtomicBool,
    pub(crate) started: Instant,
    pub(crate) started_at: String,
    http_addrs: RwLock<Vec<SocketAddr>>,
    pub(crate) socket_activated: AtomicBool,
    pub(crate) events: broadcast::Sender<AttachEvent>,
    draining: AtomicBool,
    drain_tx: watch::Sender<bool>,
    stop_tx: watch::Sender<bool>,
    pub(crate) requests_total: AtomicU64,
    pub(crate) requests_in_flight: AtomicU64,
    /// Everything a stop must let finish (within `server.shutdown_grace_secs`): HTTP requests
    /// until their answer is sent (streams included), prompt runs, and `clinvk` calls. The drain
    /// closes it and awaits it.
    pub(crate) work: tokio_util::task::TaskTracker,
    pub(crate) reloads: AtomicU64,
    /// Every CLI process the daemon runs.
    pub(crate) supervisor: crate::supervisor::Supervisor,
    /// Which backends can run.
    pub(crate) backends: crate::availability::Registry,
    /// Sessions on disk.
    pub(crate) sessions: crate::session::Store,
    /// Accepted API keys.
    pub(crate) keys: crate::keys::KeyStore,
    /// Stored OpenAI Responses.
    pub(crate) responses: crate::responses::ResponseStore,
    /// The warm workers (live CLI processes kept between turns).
    pub(crate) workers: crate::worker::Workers,
    /// One row per run (SQLite), and the daily quotas counted from it.
    pub(crate) usage: crate::usage::UsageStore,
    /// The prompts running now (live view, cancel, concurrency quota).
    pub(crate) live: crate::live::LiveRuns,
    /// The quota windows the CLIs report of their accounts.
    pub(crate) quotas: crate::quota::QuotaBook,
    /// The backends' accounts (`<state>/accounts/<backend>/<name>/` and the configured ones).
    pub(crate) accounts: crate::accounts::Accounts,
    /// Client tool calls: the MCP endpoint and the runs waiting for results.
    pub(crate) tools: Arc<crate::tools::ToolHub>,
    /// The adapter of each backend (the real ones; a test may put fakes here).
    adapters: crate::backend::Adapters,
    /// The homes whose secret folders the workdir policy blocks (a test may set others).
    pub(crate) homes: crate::engine::Homes,
    /// A test context's temporary folder (see `testkit`), removed with the last clone — after
    /// the stores above closed their files (fields drop in order).
    #[cfg(test)]
    test_dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Ctx {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The result of a successful reload.
#[derive(Debug, Clone)]
pub(crate) struct ReloadOutcome {
    pub(crate) changed: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

impl Ctx {
    pub(crate) async fn new(
        paths: Paths,
        config_path: PathBuf,
        config_explicit: bool,
        overrides: Overrides,
        loaded: config::Loaded,
        events: broadcast::Sender<AttachEvent>,
    ) -> anyhow::Result<Self> {
        let external = crate::keys::external_keys(&loaded.settings.server.api_keys_gopass_path)
            .await
            .map_err(anyhow::Error::msg)?;
        let inner = Self::build(
            paths,
            (config_path, config_explicit, overrides),
            loaded,
            events,
            &external,
            crate::backend::Adapters::default(),
        )?;
        Ok(Ctx(Arc::new(inner)))
    }

    /// The context's parts: the stores opened under `paths`, with the external API keys given.
    fn build(
        paths: Paths,
        (config_path, config_explicit, overrides): (PathBuf, bool, Overrides),
        loaded: config::Loaded,
        events: broadcast::Sender<AttachEvent>,
        external_keys: &[String],
        adapters: crate::backend::Adapters,
    ) -> anyhow::Result<Inner> {
        use anyhow::Context as _;
        let sessions = crate::session::Store::open(&paths.sessions_dir()).with_context(|| {
            format!(
                "cannot open the session store in {}",
                paths.sessions_dir().display()
            )
        })?;
        let responses_dir = paths.state_dir.join("responses");
        let responses =
            crate::responses::ResponseStore::open(responses_dir.clone()).with_context(|| {
                format!(
                    "cannot open the response store in {}",
                    responses_dir.display()
                )
            })?;
        let keys = crate::keys::KeyStore::open(&paths.keys_file())?;
        keys.set_external(external_keys);
        let usage = crate::usage::UsageStore::open(&paths.state_dir.join("usage.db"));
        let quotas_file = paths.state_dir.join("quotas.json");
        let accounts_dir = paths.state_dir.join("accounts");
        let (drain_tx, _) = watch::channel(false);
        let (stop_tx, _) = watch::channel(false);
        Ok(Inner {
            paths,
            config_path,
            config_explicit,
            overrides,
            settings: RwLock::new(Arc::new(loaded.settings)),
            loaded_from_file: AtomicBool::new(loaded.file_found),
            started: Instant::now(),
            started_at: clinvk_shared::types::now_rfc3339(),
            http_addrs: RwLock::new(Vec::new()),
            socket_activated: AtomicBool::new(false),
            events,
            draining: AtomicBool::new(false),
            drain_tx,
            stop_tx,
            requests_total: AtomicU64::new(0),
            requests_in_flight: AtomicU64::new(0),
            work: tokio_util::task::TaskTracker::new(),
            reloads: AtomicU64::new(0),
            supervisor: crate::supervisor::Supervisor::new(crate::supervisor::Limiter::default()),
            backends: crate::availability::Registry::default(),
            sessions,
            keys,
            responses,
            workers: crate::worker::Workers::default(),
            usage,
            live: crate::live::LiveRuns::default(),
            quotas: crate::quota::QuotaBook::open(quotas_file),
            accounts: crate::accounts::Accounts::open(accounts_dir),
            tools: Arc::default(),
            adapters,
            homes: crate::engine::Homes::of_process(),
            #[cfg(test)]
            test_dir: None,
        })
    }

    /// A complete context for unit tests (`testkit` builds it): its state folder is
    /// `<dir>/state`, its settings and adapters are the ones given, it reads no external API keys
    /// and starts no task; `dir` is removed with the last clone of the context.
    #[cfg(test)]
    pub(crate) fn for_tests_in(
        dir: tempfile::TempDir,
        settings: Settings,
        adapters: crate::backend::Adapters,
        homes: Option<crate::engine::Homes>,
    ) -> anyhow::Result<Ctx> {
        let paths = Paths::under(dir.path().join("state"));
        clinvk_shared::paths::ensure_private_dir(&paths.state_dir)?;
        let config = paths.default_config_file();
        let loaded = config::Loaded {
            settings,
            path: config.clone(),
            file_found: false,
            warnings: Vec::new(),
        };
        let mut inner = Self::build(
            paths,
            (config, false, Overrides::default()),
            loaded,
            broadcast::channel(16).0,
            &[],
            adapters,
        )?;
        inner.test_dir = Some(dir);
        if let Some(h) = homes {
            inner.homes = h;
        }
        Ok(Ctx(Arc::new(inner)))
    }

    /// A test context's temporary folder (the state folder is its `state`).
    #[cfg(test)]
    pub(crate) fn test_dir(&self) -> &std::path::Path {
        self.test_dir
            .as_ref()
            .map(tempfile::TempDir::path)
            .expect("a context made by Ctx::for_tests")
    }

    /// The adapter behind `backend`: the one place the daemon gets a CLI's argv builder, parser
    /// and live driver.
    pub(crate) fn adapter(
        &self,
        backend: clinvk_shared::api::Backend,
    ) -> &'static dyn crate::backend::Adapter {
        self.adapters.get(backend)
    }

    /// The settings in force now (a snapshot: a reload swaps in a new one).
    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn loaded_from_file(&self) -> bool {
        self.loaded_from_file.load(Ordering::Relaxed)
    }

    /// Records the addresses the HTTP server listens on (the first is the one shown).
    pub(crate) fn set_http_addrs(&self, addrs: Vec<SocketAddr>) {
        *self.http_addrs.write().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    pub(crate) fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http_addrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addrs().first().copied()
    }

    /// Whether the HTTP API asks for a key now.
    pub(crate) fn auth_required(&self) -> bool {
        self.keys.required(self.settings().server.auth)
    }

    pub(crate) fn http_url(&self) -> String {
        match self.http_addr() {
            Some(a) => format!("http://{a}"),
            None => String::new(),
        }
    }

    /// Re-reads the configuration. An invalid one is refused and the running one stays.
    /// The service manager (if any) sees `RELOADING=1`, then `READY=1` whatever the outcome.
    pub(crate) async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        crate::service::reloading();
        let result = self.reload_inner().await;
        let status = match &result {
            Ok(_) => format!("serving {}; configuration reloaded", self.http_url()),
            Err(_) => format!(
                "serving {}; last reload refused (invalid configuration)",
                self.http_url()
            ),
        };
        crate::service::ready(&status);
        result
    }

    async fn reload_inner(&self) -> Result<ReloadOutcome, ReloadError> {
        let loaded = load_settings(&self.config_path, self.config_explicit, &self.overrides)?;
        // Keys first: an unreadable store or gopass refuses the reload (never "no keys").
        let external = crate::keys::external_keys(&loaded.settings.server.api_keys_gopass_path)
            .await
            .map_err(ReloadError::Refused)?;
        let probe = crate::keys::KeyStore::open(&self.paths.keys_file())?;
        probe.set_external(&external);
        check_exposure(
            &self.http_addrs(),
            probe.required(loaded.settings.server.auth),
            self.overrides.insecure,
        )
        .map_err(ReloadError::Refused)?;
        self.keys.reload()?;
        self.keys.set_external(&external);
        let old = self.settings();
        let mut changed = diff_keys(&old, &loaded.settings);
        let mut warnings = loaded.warnings.clone();
        for key in ["server.host", "server.port", "log.file"] {
            if changed.iter().any(|c| c == key) {
                warnings.push(format!(
                    "{key} changed: takes effect when the daemon restarts"
                ));
            }
        }
        changed.sort();
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded.settings);
        self.accounts.scan();
        self.loaded_from_file
            .store(loaded.file_found, Ordering::Relaxed);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        let (registry, settings) = (self.backends.clone(), self.settings());
        let wake = self.workers.wake.clone();
        tokio::spawn(async move {
            registry.refresh(&settings).await;
            wake.notify_one(); // the pools follow the new settings
        });
        Ok(ReloadOutcome { changed, warnings })
    }

    /// Starts the drain: new work is refused, in-flight work may finish.
    pub(crate) fn begin_drain(&self, reason: &str) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            crate::service::stopping(reason);
            let _ = self.drain_tx.send(true);
            let _ = self.events.send(AttachEvent::Stopping {
                reason: reason.to_string(),
            });
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves when the drain starts.
    pub(crate) fn drain_started(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.drain_tx.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }

    /// Ends every open stream and connection: the last step of shutdown.
    pub(crate) fn hard_stop(&self) {
        let _ = self.stop_tx.send(true);
    }

    /// Resolves at the hard stop (streams use it to end so that graceful shutdown completes).
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop_tx.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }

    /// Sends an event to attached clients (dropped when nobody listens).
    pub(crate) fn publish(&self, event: AttachEvent) {
        let _ = self.events.send(event);
    }

    /// Every backend's availability with its warm workers.
    pub(crate) fn backend_statuses(&self) -> Vec<clinvk_shared::protocol::BackendStatus> {
        let workers = self.workers.list();
        self.backends
            .all()
            .into_iter()
            .map(|mut b| {
                b.workers = workers
                    .iter()
                    .filter(|w| w.backend == b.name)
                    .cloned()
                    .collect();
                b
            })
            .collect()
    }

    /// Milliseconds since start.
    pub(crate) fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// Dotted keys whose values differ between two settings.
pub(crate) fn diff_keys(a: &Settings, b: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let (Ok(a), Ok(b)) = (serde_json::to_value(a), serde_json::to_value(b)) else {
        return out;
    };
    diff_values("", &a, &b, &mut out);
    out
}

fn diff_values(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                diff_values(
                    &key,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_changed_keys() {
        let a = Settings::default();
        let mut b = a.clone();
        b.server.port = 1;
        b.backends.get_mut("codex").unwrap().model = Some("x".into());
        assert_eq!(
            diff_keys(&a, &b),
            vec!["backends.codex.model", "server.port"]
        );
    }
}
