//! The one settings model of clinvk, with a default for every field, and its loading:
//! file (`config.yaml`, `config.yml` or `config.toml`), then `CLINVK_*` environment overrides,
//! then command-line flags (applied by the caller), then validation.

use crate::api::{ApprovalMode, Backend, OutputFormat, SandboxMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The backends clinvk knows how to drive.
pub const KNOWN_BACKENDS: [&str; crate::cli::CLIS.len()] = {
    let mut names = [""; crate::cli::CLIS.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = crate::cli::CLIS[i].name;
        i += 1;
    }
    names
};

/// Everything configurable. Keys follow clinvk's documented `~/.clinvk/config.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub default_backend: String,
    pub backends: BTreeMap<String, BackendSettings>,
    pub unified_flags: UnifiedFlags,
    pub session: SessionSettings,
    pub output: OutputSettings,
    pub parallel: ParallelSettings,
    pub server: ServerSettings,
    /// Model aliases for the OpenAI/Anthropic-compatible APIs: alias → `backend` or
    /// `backend/model`, or a list of them tried in order (the first with headroom serves).
    pub models: BTreeMap<String, crate::accounts::ModelRoute>,
    pub log: LogSettings,
    pub limits: LimitSettings,
    pub tools: ToolSettings,
    /// Prices (US dollars per million tokens) for the cost of runs whose CLI reports none, by
    /// `backend/model`, `model` or `backend` (the first that matches). An estimate.
    pub pricing: BTreeMap<String, Price>,
}

/// The price of a model's tokens, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// For the cached part of the input (the input price when absent).
    #[serde(default)]
    pub cache_per_mtok: Option<f64>,
}

impl Settings {
    /// The price for a run of `backend` with `model`: `backend/model`, then `model`, then
    /// `backend` in `pricing:`.
    pub fn price(&self, backend: Backend, model: Option<&str>) -> Option<Price> {
        let by = |k: &str| self.pricing.get(k).copied();
        model
            .and_then(|m| by(&format!("{backend}/{m}")).or_else(|| by(m)))
            .or_else(|| by(backend.as_str()))
    }
}

impl Settings {
    /// One backend's settings (the defaults when the configuration names it not).
    pub fn backend(&self, backend: Backend) -> BackendSettings {
        self.backends
            .get(backend.as_str())
            .cloned()
            .unwrap_or_default()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            // The first CLI of the table (claude).
            default_backend: crate::cli::CLIS[0].name.into(),
            backends: KNOWN_BACKENDS
                .iter()
                .map(|b| (b.to_string(), BackendSettings::default()))
                .collect(),
            unified_flags: UnifiedFlags::default(),
            session: SessionSettings::default(),
            output: OutputSettings::default(),
            parallel: ParallelSettings::default(),
            server: ServerSettings::default(),
            models: BTreeMap::new(),
            log: LogSettings::default(),
            limits: LimitSettings::default(),
            tools: ToolSettings::default(),
            pricing: BTreeMap::new(),
        }
    }
}

/// Settings of one backend CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendSettings {
    /// Executable name (looked up in PATH) or path; default: the backend's name.
    pub command: Option<String>,
    pub enabled: bool,
    /// Default model; none = the CLI's own default.
    pub model: Option<String>,
    pub approval_mode: Option<ApprovalMode>,
    pub sandbox_mode: Option<SandboxMode>,
    pub system_prompt: Option<String>,
    pub allowed_tools: Vec<String>,
    /// Flags always added to this backend's argv.
    pub extra_flags: Vec<String>,
    /// Flags a request's `extra` may add, in addition to the built-in allowlist.
    pub allowed_extra_flags: Vec<String>,
    /// Extra environment variables for the child process.
    pub env: BTreeMap<String, String>,
    /// Names a request's `env` may set for this backend (none by default).
    pub allowed_request_env: Vec<String>,
    /// Variables of the daemon's environment this backend's CLI must not see (besides `CLINVK_*`,
    /// which it never sees).
    pub env_remove: Vec<String>,
    /// Per-run timeout; default `server.request_timeout_secs`.
    pub timeout_secs: Option<u64>,
    /// Runs of this backend at once; default: only the global limit applies.
    pub max_concurrent: Option<usize>,
    /// `warm`: turns go to a live CLI process kept between turns (a worker); `oneshot`: every
    /// turn starts the CLI afresh.
    pub mode: BackendMode,
    /// The warm workers of this backend.
    pub warm: WarmSettings,
    /// Accounts besides (or instead of) the folders under `<state>/accounts/<backend>/`.
    pub accounts: Vec<crate::accounts::AccountSettings>,
    /// How new sessions are spread over the accounts.
    pub routing: crate::accounts::Routing,
}

/// How a backend's turns run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendMode {
    /// A live CLI process per session, kept between turns (claude stream-json input, codex
    /// app-server, gemini ACP).
    #[default]
    Warm,
    /// A fresh CLI process per turn.
    Oneshot,
}

/// Settings of a backend's warm workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WarmSettings {
    /// A session's worker is stopped after this many seconds without a turn (its session stays
    /// resumable).
    pub idle_secs: u64,
    /// Workers kept ready for new sessions with the default settings.
    pub pool: usize,
    /// Besides the default folder, the folders new sessions (with the default settings) used
    /// most recently, within `idle_secs`, each keep one spare worker (when `pool` > 0).
    pub folders: usize,
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self {
            idle_secs: 300,
            pool: 1,
            folders: 2,
        }
    }
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            command: None,
            enabled: true,
            model: None,
            approval_mode: None,
            sandbox_mode: None,
            system_prompt: None,
            allowed_tools: Vec::new(),
            extra_flags: Vec::new(),
            allowed_extra_flags: Vec::new(),
            env: BTreeMap::new(),
            allowed_request_env: Vec::new(),
            env_remove: Vec::new(),
            timeout_secs: None,
            max_concurrent: None,
            mode: BackendMode::Warm,
            warm: WarmSettings::default(),
            accounts: Vec::new(),
            routing: Default::default(),
        }
    }
}

/// Options that apply to every backend unless a request says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnifiedFlags {
    pub approval_mode: ApprovalMode,
    pub sandbox_mode: SandboxMode,
    /// The native prompt's default `output_format`.
    pub output_format: OutputFormat,
    pub verbose: bool,
    pub dry_run: bool,
    pub max_turns: Option<u32>,
    pub max_tokens: Option<u32>,
}

impl Default for UnifiedFlags {
    fn default() -> Self {
        Self {
            approval_mode: ApprovalMode::Default,
            sandbox_mode: SandboxMode::Default,
            output_format: OutputFormat::Default,
            verbose: false,
            dry_run: false,
            max_turns: None,
            max_tokens: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionSettings {
    /// Sessions unused for longer are deleted by a background task; 0 keeps them forever.
    pub retention_days: u32,
    pub default_tags: Vec<String>,
    pub store_token_usage: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            retention_days: 30,
            default_tags: Vec::new(),
            store_token_usage: true,
        }
    }
}

/// How `clinvk` shows an answer (read by the client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputSettings {
    /// `clinvk`'s default `-o`: text, json or stream-json.
    pub format: String,
    /// After an answer, `clinvk` prints its token counts (stderr).
    pub show_tokens: bool,
    /// After an answer, `clinvk` prints how long it took (stderr).
    pub show_timing: bool,
    /// `clinvk` prints no colours; `false` is accepted, `true` changes nothing.
    pub color: bool,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self {
            format: "text".into(),
            show_tokens: false,
            show_timing: false,
            color: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ParallelSettings {
    pub max_workers: usize,
    pub fail_fast: bool,
    pub aggregate_output: bool,
}

impl Default for ParallelSettings {
    fn default() -> Self {
        Self {
            max_workers: 3,
            fail_fast: false,
            aggregate_output: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub request_timeout_secs: u64,
    pub read_timeout_secs: u64,
    pub write_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    /// How long in-flight runs may go on after a stop was asked for.
    pub shutdown_grace_secs: u64,
    pub api_keys_gopass_path: String,
    /// `auto` (required as soon as any key exists), `required`, or `off`.
    pub auth: AuthMode,
    /// Failed authentications one client IP may make per minute before it gets 429.
    pub max_auth_failures: u32,
    /// Host names (or `host:port`) accepted in the `Host` header besides loopback names and
    /// the bound address (DNS-rebinding defence); `*` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Whether a request may loosen the configured `approval_mode`/`sandbox_mode`.
    pub allow_request_escalation: bool,
    /// Where a request without `workdir` runs; empty: `<state folder>/workspace`.
    pub default_workdir: String,
    /// HTTP connections open at once; more wait in the listen queue.
    pub max_connections: usize,
    /// HTTP connections one client address may hold (trusted proxies excepted).
    pub max_connections_per_client: usize,
    pub rate_limit_enabled: bool,
    pub rate_limit_rps: f64,
    pub rate_limit_burst: u32,
    pub trusted_proxies: Vec<String>,
    pub max_request_body_bytes: u64,
    pub cors_allowed_origins: Vec<String>,
    pub cors_allow_credentials: bool,
    pub cors_max_age: u64,
    pub allowed_workdir_prefixes: Vec<String>,
    /// Folders refused as a workdir, in addition to the built-in list (system folders, the state
    /// folder, the CLIs' credential folders and the home's secret folders).
    pub blocked_workdir_prefixes: Vec<String>,
    pub metrics_enabled: bool,
    pub metrics_require_auth: bool,
    /// While a CLI is silent, streams send a keep-alive this often (SSE comment or `ping`;
    /// NDJSON `heartbeat` line); 0 turns it off.
    pub sse_keepalive_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            request_timeout_secs: 300,
            read_timeout_secs: 30,
            write_timeout_secs: 300,
            idle_timeout_secs: 120,
            shutdown_grace_secs: 30,
            api_keys_gopass_path: String::new(),
            auth: AuthMode::Auto,
            max_auth_failures: 10,
            allowed_hosts: Vec::new(),
            allow_request_escalation: false,
            default_workdir: String::new(),
            max_connections: 512,
            max_connections_per_client: 256,
            rate_limit_enabled: false,
            rate_limit_rps: 10.0,
            rate_limit_burst: 20,
            trusted_proxies: Vec::new(),
            max_request_body_bytes: 10 * 1024 * 1024,
            cors_allowed_origins: Vec::new(),
            cors_allow_credentials: false,
            cors_max_age: 300,
            allowed_workdir_prefixes: Vec::new(),
            blocked_workdir_prefixes: Vec::new(),
            sse_keepalive_secs: 15,
            metrics_enabled: false,
            metrics_require_auth: true,
        }
    }
}

/// When the HTTP API asks for a key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Required as soon as any key exists (environment, gopass, or the key store file), and
    /// from then on: revoking the last key leaves the API closed.
    #[default]
    Auto,
    /// Always required; with no key at all, every request is refused.
    Required,
    /// Never asked for, even when keys exist.
    Off,
}

impl AuthMode {
    /// Whether the HTTP API asks for a key, given whether keys were ever set up (any key from
    /// any source, or a key store file).
    pub fn requires_key(self, keys_configured: bool) -> bool {
        match self {
            AuthMode::Off => false,
            AuthMode::Required => true,
            AuthMode::Auto => keys_configured,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// Log to this file (rolled daily) instead of stderr.
    pub file: Option<PathBuf>,
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            file: None,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// CLI processes running at once, all backends together.
    pub max_concurrent: usize,
    /// Runs waiting for a slot; beyond that a run is refused at once ("at capacity").
    pub queue_size: usize,
    /// How long a queued run waits for a slot before it is refused.
    pub queue_timeout_secs: u64,
    /// Seconds between SIGTERM and SIGKILL when a run is cancelled.
    pub kill_grace_secs: u64,
    /// Cap on one run's captured output (stdout), in bytes; the rest is dropped and noted.
    pub max_output_bytes: usize,
    /// The most tasks of one `parallel` request that run at once (a request's `max_parallel`
    /// is capped by it, and by half of `max_concurrent`).
    pub max_parallel_per_request: usize,
    /// Prompts one API key may have running or queued at once (a key's own `max_concurrent`
    /// quota may set fewer); unset: three quarters of `max_concurrent` (at least 1), so one key
    /// cannot take every slot. Callers without a key (auth off) are not counted.
    pub max_concurrent_per_key: Option<usize>,
    /// Warm CLI processes alive at once, all backends together; 0: derived from the machine's
    /// memory (one per GiB of RAM, at least 2, at most 64). The least recently used idle one is
    /// stopped first.
    pub max_workers: usize,
}

impl LimitSettings {
    /// The most tasks of one `parallel` request at once: the request's wish, capped by
    /// `max_parallel_per_request` and by half of `max_concurrent` (at least 1).
    pub fn parallel_cap(&self, wanted: usize) -> usize {
        wanted
            .clamp(1, self.max_parallel_per_request)
            .min((self.max_concurrent / 2).max(1))
    }

    /// The most prompts one key may have running or queued (see `max_concurrent_per_key`).
    pub fn per_key_cap(&self) -> usize {
        self.max_concurrent_per_key
            .unwrap_or(self.max_concurrent * 3 / 4)
            .max(1)
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_concurrent: 8,
            queue_size: 32,
            queue_timeout_secs: 120,
            kill_grace_secs: 2,
            max_output_bytes: 16 * 1024 * 1024,
            max_parallel_per_request: 8,
            max_concurrent_per_key: None,
            max_workers: 0,
        }
    }
}

/// Client tool calls (the `tools` of OpenAI and Anthropic requests): the CLI's model calls the
/// client's functions through an MCP server that the daemon hosts on loopback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolSettings {
    /// A run with client tools also keeps the CLI's own built-in tools (shell, files, web).
    /// Off by default: a client that sends tools expects the model to use only those.
    pub builtin: bool,
    /// How long a tool call waits for the client's result; then the run is stopped and a late
    /// result gets 409 `tool_call_expired`.
    pub pending_timeout_secs: u64,
    /// Runs waiting for tool results at once (each holds its CLI process and a concurrency
    /// slot); beyond it the oldest is stopped as if it had expired.
    pub max_parked_runs: usize,
}

impl Default for ToolSettings {
    fn default() -> Self {
        Self {
            builtin: false,
            pending_timeout_secs: 600,
            max_parked_runs: 4,
        }
    }
}

/// A configuration problem, with the file, key and line where known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: key `{key}`: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("invalid environment variable {var}={value:?}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("invalid configuration{}: {key}: {message}", source_name.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    Invalid {
        source_name: Option<PathBuf>,
        key: String,
        message: String,
    },
}

/// The result of loading: the settings, where they came from, and warnings (unknown keys).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub path: PathBuf,
    pub file_found: bool,
    pub warnings: Vec<String>,
}

/// Environment variables that are not `CLINVK_<SECTION>_<KEY>` overrides.
const SPECIAL_ENV: [&str; 4] = [
    "CLINVK_HOME",
    "CLINVK_CONFIG",
    "CLINVK_API_KEYS",
    "CLINVK_TEST_CACHE",
];

/// The config file the daemon reads when started without `--config`: `$CLINVK_CONFIG` (then it
/// must exist), else the state folder's. Returns the file and whether it was named explicitly.
pub fn config_file(paths: &crate::paths::Paths) -> (PathBuf, bool) {
    match std::env::var_os("CLINVK_CONFIG").filter(|v| !v.is_empty()) {
        Some(f) => (PathBuf::from(f), true),
        None => (paths.default_config_file(), false),
    }
}

/// The settings as a daemon started now would load them (its config file, then this process's
/// `CLINVK_*` variables): what the clients use to know what the daemon sees.
pub fn load_as_daemon(paths: &crate::paths::Paths) -> (PathBuf, Result<Loaded, ConfigError>) {
    let (file, explicit) = config_file(paths);
    let env: Vec<(String, String)> = std::env::vars().collect();
    let loaded = load(&file, explicit, &env);
    (file, loaded)
}

/// Loads settings from `path` (must exist when `explicit`), then the environment `env`.
pub fn load(path: &Path, explicit: bool, env: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let (mut settings, file_found) = match std::fs::read_to_string(path) {
        Ok(text) => (parse_text(path, &text, &mut warnings)?, true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            (Settings::default(), false)
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    settings = apply_env(settings, env, &mut warnings)?;
    fill_backends(&mut settings);
    validate(&settings, file_found.then_some(path))?;
    Ok(Loaded {
        settings,
        path: path.to_path_buf(),
        file_found,
        warnings,
    })
}

/// Parses the text of a config file (YAML, or TOML when the name ends in `.toml`).
pub fn parse_text(
    path: &Path,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<Settings, ConfigError> {
    let parse_err = |key: String, message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        key: if key.is_empty() || key == "." {
            "(top level)".into()
        } else {
            key
        },
        message,
    };
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let result = if text.trim().is_empty()
        || (!is_toml
            && text.lines().all(|l| {
                l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---"
            })) {
        Ok(Settings::default())
    } else if is_toml {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| parse_err(String::new(), e.to_string()))?;
        let de = serde_ignored::Deserializer::new(de, &mut on_unknown);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            parse_err(key, e.into_inner().to_string().trim().replace('\n', " "))
        })
    } else {
        let de = yaml_serde::Deserializer::from_str(text);
        let de = serde_ignored::Deserializer::new(de, &mut on_unknown);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            // yaml_serde already names the key; say it once.
            let message = message
                .strip_prefix(&format!("{key}: "))
                .map(str::to_string)
                .unwrap_or(message);
            parse_err(key, message)
        })
    };
    for key in unknown {
        warnings.push(format!("{}: unknown key `{key}` ignored", path.display()));
    }
    result
}

/// Makes sure every known backend has an entry (a file that configures one keeps the others).
fn fill_backends(s: &mut Settings) {
    for b in KNOWN_BACKENDS {
        s.backends.entry(b.to_string()).or_default();
    }
}

/// Applies `CLINVK_<SECTION>_<KEY>=value` overrides, e.g. `CLINVK_SERVER_PORT=9000`,
/// `CLINVK_BACKENDS_CLAUDE_MODEL=opus`, `CLINVK_DEFAULT_BACKEND=codex`.
pub fn apply_env(
    settings: Settings,
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<Settings, ConfigError> {
    let mut tree = serde_json::to_value(&settings).map_err(|e| ConfigError::Invalid {
        source_name: None,
        key: "(settings)".into(),
        message: e.to_string(),
    })?;
    let mut touched = false;
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("CLINVK_") else {
            continue;
        };
        if SPECIAL_ENV.contains(&var.as_str()) {
            continue;
        }
        let name = rest.to_ascii_lowercase();
        // CLINVK_API_KEYS_GOPASS_PATH is documented under this short name.
        let name = if name == "api_keys_gopass_path" {
            "server_api_keys_gopass_path".to_string()
        } else {
            name
        };
        let env_err = |message: String| ConfigError::Env {
            var: var.clone(),
            value: value.clone(),
            message,
        };
        match set_by_env_name(&mut tree, &name, value) {
            Ok(true) => touched = true,
            Ok(false) => warnings.push(format!(
                "environment variable {var} matches no config key; ignored"
            )),
            Err(m) => return Err(env_err(m)),
        }
    }
    if !touched {
        return Ok(settings);
    }
    serde_json::from_value(tree).map_err(|e| ConfigError::Invalid {
        source_name: None,
        key: "(environment)".into(),
        message: e.to_string(),
    })
}

/// Finds the key whose path, joined with `_`, equals `name`, and sets it from `raw`, keeping
/// the type of the current value. Map sections (`backends`, `models`) accept new keys only for
/// known backends.
fn set_by_env_name(node: &mut serde_json::Value, name: &str, raw: &str) -> Result<bool, String> {
    let serde_json::Value::Object(map) = node else {
        return Ok(false);
    };
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if name == key {
            let slot = map.get_mut(&key).ok_or("internal: key vanished")?;
            *slot = convert_env_value(slot, raw)?;
            return Ok(true);
        }
        if let Some(rest) = name.strip_prefix(&format!("{key}_")) {
            let child = map.get_mut(&key).ok_or("internal: key vanished")?;
            if set_by_env_name(child, rest, raw)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn convert_env_value(current: &serde_json::Value, raw: &str) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match current {
        Value::Bool(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Value::Bool(true),
            "0" | "false" | "no" | "off" => Value::Bool(false),
            _ => return Err("expected true or false".into()),
        },
        Value::Number(n) => {
            let t = raw.trim();
            if n.is_f64() {
                let f: f64 = t.parse().map_err(|_| "expected a number".to_string())?;
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or("expected a finite number")?
            } else {
                let i: u64 = t
                    .parse()
                    .map_err(|_| "expected a whole number".to_string())?;
                Value::Number(i.into())
            }
        }
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Value::Object(_) => {
            serde_json::from_str(raw).map_err(|e| format!("expected a JSON object: {e}"))?
        }
        Value::Null => match raw.trim().parse::<u64>() {
            Ok(n) => Value::Number(n.into()),
            Err(_) => Value::String(raw.to_string()),
        },
        Value::String(_) => Value::String(raw.to_string()),
    })
}

/// Checks the values serde cannot check.
pub fn validate(s: &Settings, source: Option<&Path>) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        source_name: source.map(Path::to_path_buf),
        key: key.to_string(),
        message,
    };
    if !s.backends.contains_key(&s.default_backend) {
        return Err(invalid(
            "default_backend",
            format!(
                "unknown backend {:?} (known: {})",
                s.default_backend,
                KNOWN_BACKENDS.join(", ")
            ),
        ));
    }
    for (name, p) in &s.pricing {
        let prices = [
            p.input_per_mtok,
            p.output_per_mtok,
            p.cache_per_mtok.unwrap_or(0.0),
        ];
        if prices.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(invalid(
                &format!("pricing.{name}"),
                "prices must be zero or more (US dollars per million tokens)".into(),
            ));
        }
    }
    for name in s.backends.keys() {
        if !KNOWN_BACKENDS.contains(&name.as_str()) {
            return Err(invalid(
                &format!("backends.{name}"),
                format!("unknown backend (known: {})", KNOWN_BACKENDS.join(", ")),
            ));
        }
    }
    let one_of = |key: &str, v: &str, allowed: &[&str]| {
        if allowed.contains(&v) {
            Ok(())
        } else {
            Err(invalid(
                key,
                format!("{v:?} is not one of {}", allowed.join(", ")),
            ))
        }
    };
    one_of(
        "output.format",
        &s.output.format,
        &["text", "json", "stream-json"],
    )?;
    // Settings no CLI can honour are refused, not silently ignored.
    if s.unified_flags.verbose {
        return Err(invalid(
            "unified_flags.verbose",
            "is not supported: the CLIs always run with their verbose event stream (remove the key)"
                .into(),
        ));
    }
    if s.unified_flags.max_tokens.is_some() {
        return Err(invalid(
            "unified_flags.max_tokens",
            "is not supported: none of the CLIs can cap the tokens of an answer (use max_turns)"
                .into(),
        ));
    }
    for (name, b) in &s.backends {
        if b.max_concurrent == Some(0) {
            return Err(invalid(
                &format!("backends.{name}.max_concurrent"),
                "must be at least 1".into(),
            ));
        }
        if b.timeout_secs == Some(0) {
            return Err(invalid(
                &format!("backends.{name}.timeout_secs"),
                "must be at least 1".into(),
            ));
        }
    }
    if s.server.host.parse::<std::net::IpAddr>().is_err() && s.server.host != "localhost" {
        return Err(invalid(
            "server.host",
            format!("{:?} is not an IP address", s.server.host),
        ));
    }
    if s.server.rate_limit_enabled
        && (s.server.rate_limit_rps.is_nan() || s.server.rate_limit_rps <= 0.0)
    {
        return Err(invalid(
            "server.rate_limit_rps",
            "must be greater than 0".into(),
        ));
    }
    if s.server.rate_limit_enabled && s.server.rate_limit_burst == 0 {
        return Err(invalid(
            "server.rate_limit_burst",
            "must be at least 1".into(),
        ));
    }
    if s.server.request_timeout_secs == 0 {
        return Err(invalid(
            "server.request_timeout_secs",
            "must be at least 1".into(),
        ));
    }
    if s.server.max_request_body_bytes == 0 {
        return Err(invalid(
            "server.max_request_body_bytes",
            "must be at least 1".into(),
        ));
    }
    if s.server.max_connections_per_client == 0 {
        return Err(invalid(
            "server.max_connections_per_client",
            "must be at least 1".into(),
        ));
    }
    if s.server.max_connections == 0 {
        return Err(invalid(
            "server.max_connections",
            "must be at least 1".into(),
        ));
    }
    if s.limits.max_parallel_per_request == 0 {
        return Err(invalid(
            "limits.max_parallel_per_request",
            "must be at least 1".into(),
        ));
    }
    for (key, v) in [
        ("server.read_timeout_secs", s.server.read_timeout_secs),
        ("server.write_timeout_secs", s.server.write_timeout_secs),
        ("server.idle_timeout_secs", s.server.idle_timeout_secs),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be at least 1".into()));
        }
    }
    for p in &s.server.trusted_proxies {
        if parse_cidr(p).is_none() {
            return Err(invalid(
                "server.trusted_proxies",
                format!("{p:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"),
            ));
        }
    }
    for o in &s.server.cors_allowed_origins {
        if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
            return Err(invalid(
                "server.cors_allowed_origins",
                format!("{o:?} must be `*` or scheme://host[:port]"),
            ));
        }
    }
    if s.parallel.max_workers == 0 {
        return Err(invalid("parallel.max_workers", "must be at least 1".into()));
    }
    if s.tools.max_parked_runs == 0 {
        return Err(invalid(
            "tools.max_parked_runs",
            "must be at least 1".into(),
        ));
    }
    if s.tools.pending_timeout_secs == 0 {
        return Err(invalid(
            "tools.pending_timeout_secs",
            "must be at least 1".into(),
        ));
    }
    if s.limits.max_concurrent == 0 {
        return Err(invalid(
            "limits.max_concurrent",
            "must be at least 1".into(),
        ));
    }
    for (alias, route) in &s.models {
        if route.targets().is_empty() {
            return Err(invalid(
                &format!("models.{alias}"),
                "an empty list: name at least one `backend` or `backend/model`".into(),
            ));
        }
        for target in route.targets() {
            let (backend, model) = target.split_once('/').unwrap_or((target, ""));
            if !KNOWN_BACKENDS.contains(&backend)
                || (!model.is_empty() && !is_safe_model_name(model))
            {
                return Err(invalid(
                    &format!("models.{alias}"),
                    format!("{target:?} must be `backend` or `backend/model` with a known backend"),
                ));
            }
        }
    }
    for (name, b) in &s.backends {
        crate::accounts::validate_accounts(&b.accounts)
            .map_err(|m| invalid(&format!("backends.{name}.accounts"), m))?;
        if let Some(m) = b.model.as_deref().filter(|m| !is_safe_model_name(m)) {
            return Err(invalid(
                &format!("backends.{name}.model"),
                format!("{m:?} is not a valid model name"),
            ));
        }
    }
    Ok(())
}

/// Whether a model name is safe to pass to a CLI: 1–128 characters of letters, digits and
/// `._:/@+-`, not starting with `-` (it could be read as a flag) nor containing `..`.
pub fn is_safe_model_name(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 128
        && !m.starts_with(['-', '/', '.'])
        && !m.contains("..")
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b))
}

/// An IP address or a CIDR range (`10.0.0.0/8`, `::1/128`): the network and the prefix length.
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (
            a.parse::<std::net::IpAddr>().ok()?,
            Some(l.parse::<u8>().ok()?),
        ),
        None => (s.parse::<std::net::IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((addr, len))
}

/// Whether `ip` is inside the range `(net, len)` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn cidr_contains(net: (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (net.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if net.1 == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(net.1))
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if net.1 == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(net.1))
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_and_cidrs() {
        for ok in [
            "claude-sonnet-4",
            "gpt-5.1",
            "sonnet",
            "models/gemini-2.5-pro",
            "a@b:c+d",
        ] {
            assert!(is_safe_model_name(ok), "{ok}");
        }
        for bad in ["-rf", "--help", "a b", "", "x;y", "../x", "a\nb", "$(x)"] {
            assert!(!is_safe_model_name(bad), "{bad}");
        }
        let net = parse_cidr("10.0.0.0/8").unwrap();
        assert!(cidr_contains(net, "10.1.2.3".parse().unwrap()));
        assert!(!cidr_contains(net, "11.0.0.1".parse().unwrap()));
        assert!(cidr_contains(
            parse_cidr("127.0.0.1").unwrap(),
            "::ffff:127.0.0.1".parse().unwrap()
        ));
        assert!(cidr_contains(
            parse_cidr("::1/128").unwrap(),
            "::1".parse().unwrap()
        ));
        assert!(parse_cidr("10.0.0.0/33").is_none() && parse_cidr("nope").is_none());
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_when_file_missing() {
        let d = tempfile::tempdir().unwrap();
        let l = load(&d.path().join("config.yaml"), false, &[]).unwrap();
        assert!(!l.file_found);
        assert_eq!(l.settings.server.port, 8080);
        assert_eq!(l.settings.server.host, "127.0.0.1");
        assert_eq!(l.settings.backends.len(), Backend::ALL.len());
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = load(&d.path().join("nope.yaml"), true, &[]).unwrap_err();
        assert!(e.to_string().contains("nope.yaml"), "{e}");
    }

    #[test]
    fn yaml_values_and_unknown_key_warning() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "config.yaml",
            "default_backend: codex\nbogus: 1\nserver:\n  port: 9001\nbackends:\n  claude:\n    model: opus\n",
        );
        let l = load(&p, true, &[]).unwrap();
        assert_eq!(l.settings.default_backend, "codex");
        assert_eq!(l.settings.server.port, 9001);
        assert_eq!(l.settings.backends["claude"].model.as_deref(), Some("opus"));
        assert!(
            l.settings.backends.contains_key("gemini"),
            "other backends kept"
        );
        assert!(
            l.warnings.iter().any(|w| w.contains("bogus")),
            "{:?}",
            l.warnings
        );
    }

    #[test]
    fn bad_type_names_file_key_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "config.yaml",
            "# comment\nserver:\n  host: 127.0.0.1\n  port: lots\n",
        );
        let e = load(&p, true, &[]).unwrap_err().to_string();
        assert!(e.contains("config.yaml"), "{e}");
        assert!(e.contains("server.port"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn toml_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "config.toml", "[server]\nport = 9100\n");
        assert_eq!(load(&p, true, &[]).unwrap().settings.server.port, 9100);
        let p = write(d.path(), "bad.toml", "[server]\nport = \"x\"\n");
        let e = load(&p, true, &[]).unwrap_err().to_string();
        assert!(e.contains("server.port") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let d = tempfile::tempdir().unwrap();
        let env = vec![
            ("CLINVK_SERVER_PORT".to_string(), "9000".to_string()),
            (
                "CLINVK_SERVER_RATE_LIMIT_ENABLED".to_string(),
                "true".to_string(),
            ),
            (
                "CLINVK_BACKENDS_CLAUDE_MODEL".to_string(),
                "sonnet".to_string(),
            ),
            ("CLINVK_DEFAULT_BACKEND".to_string(), "gemini".to_string()),
            (
                "CLINVK_SERVER_TRUSTED_PROXIES".to_string(),
                "10.0.0.1, 10.0.0.2".to_string(),
            ),
            ("CLINVK_NOTHING_HERE".to_string(), "1".to_string()),
            ("CLINVK_HOME".to_string(), "/x".to_string()),
        ];
        let l = load(&d.path().join("c.yaml"), false, &env).unwrap();
        assert_eq!(l.settings.server.port, 9000);
        assert!(l.settings.server.rate_limit_enabled);
        assert_eq!(
            l.settings.backends["claude"].model.as_deref(),
            Some("sonnet")
        );
        assert_eq!(l.settings.default_backend, "gemini");
        assert_eq!(
            l.settings.server.trusted_proxies,
            vec!["10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        let bad = vec![("CLINVK_SERVER_PORT".to_string(), "high".to_string())];
        let e = load(&d.path().join("c.yaml"), false, &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CLINVK_SERVER_PORT"), "{e}");
    }

    #[test]
    fn validation() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "config.yaml", "default_backend: nope\n");
        assert!(load(&p, true, &[])
            .unwrap_err()
            .to_string()
            .contains("default_backend"));
        let p = write(
            d.path(),
            "c2.yaml",
            "unified_flags:\n  approval_mode: sometimes\n",
        );
        assert!(load(&p, true, &[])
            .unwrap_err()
            .to_string()
            .contains("approval_mode"));
        let p = write(d.path(), "c3.yaml", "models:\n  fast: nobody/x\n");
        assert!(load(&p, true, &[])
            .unwrap_err()
            .to_string()
            .contains("models.fast"));
    }

    #[test]
    fn settings_no_cli_honours_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("unified_flags:\n  verbose: true\n", "unified_flags.verbose"),
            (
                "unified_flags:\n  max_tokens: 100\n",
                "unified_flags.max_tokens",
            ),
            ("output:\n  format: xml\n", "output.format"),
        ] {
            let p = write(d.path(), "c.yaml", text);
            let e = load(&p, true, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn empty_or_comment_only_file_gives_defaults() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "config.yaml", "# nothing yet\n");
        assert_eq!(load(&p, true, &[]).unwrap().settings, {
            let mut s = Settings::default();
            fill_backends(&mut s);
            s
        });
    }
}
