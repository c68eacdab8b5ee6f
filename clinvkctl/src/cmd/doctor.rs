//! `clinvk doctor`: checks the setup — the CLIs (found, version, logged in), the config,
//! the daemon (running, port, control socket, auth) and the service — and says what to fix.
//! Nothing here changes anything; only `--smoke` runs prompts (through the daemon).

mod login;

use crate::{exit, ClientError};
use clinvk_shared::api::{Backend, PromptOutcome, PromptRequest};
use clinvk_shared::config::{self, BackendSettings, Settings};
use clinvk_shared::paths::Paths;
use clinvk_shared::protocol::{Reply, Request};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Print the checks as JSON ({"ok", "failures", "warnings", "checks": [{area, verdict, summary, fix}]})
    #[arg(long)]
    pub json: bool,
    /// Also run a short prompt on each usable backend through the daemon (starts it if needed)
    #[arg(long)]
    pub smoke: bool,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked: `config`, `claude`, `codex`, `gemini`, `daemon`, `port`, `socket`,
    /// `auth`, `service`, `smoke claude`…
    pub area: String,
    pub verdict: Verdict,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    failures: usize,
    warnings: usize,
    checks: Vec<Check>,
}

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, area: impl Into<String>, verdict: Verdict, summary: impl Into<String>) {
        self.0.push(Check {
            area: area.into(),
            verdict,
            summary: summary.into(),
            fix: None,
        });
    }

    fn fix(
        &mut self,
        area: impl Into<String>,
        verdict: Verdict,
        summary: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Check {
            area: area.into(),
            verdict,
            summary: summary.into(),
            fix: Some(fix.into()),
        });
    }
}

pub async fn run(args: DoctorArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    let mut checks = Checks::default();
    let settings = check_config(&paths, &mut checks);
    // The three CLIs at once (gemini alone takes seconds to print its version).
    let results = futures::future::join_all(Backend::ALL.map(|backend| {
        let settings = &settings;
        async move {
            let mut own = Checks::default();
            let usable = check_backend(backend, settings, &mut own).await;
            (backend, usable, own)
        }
    }))
    .await;
    let mut usable = Vec::new();
    for (backend, ok, own) in results {
        checks.0.extend(own.0);
        if ok {
            usable.push(backend);
        }
    }
    let running = check_daemon(&paths, &settings, &mut checks).await;
    check_socket(&paths, running, &mut checks);
    check_auth(&paths, &settings, &mut checks);
    check_service(&mut checks).await;
    if args.smoke {
        smoke(&paths, &usable, &mut checks).await;
    }
    let failures = checks
        .0
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .count();
    let warnings = checks
        .0
        .iter()
        .filter(|c| c.verdict == Verdict::Warn)
        .count();
    let report = Report {
        ok: failures == 0,
        failures,
        warnings,
        checks: checks.0,
    };
    if args.json {
        crate::print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(if failures == 0 {
        exit::OK
    } else {
        exit::FAILURE
    })
}

fn print_report(r: &Report) {
    println!("clinvk doctor (clinvk {})", clinvk_shared::VERSION);
    for c in &r.checks {
        let v = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        println!("  {v}  {:<13} {}", c.area, c.summary);
        if let Some(f) = &c.fix {
            println!("        {:<13} fix: {f}", "");
        }
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    println!(
        "{}: {}, {}",
        if r.ok {
            "No problem found"
        } else {
            "Problems found"
        },
        plural(r.failures, "failure"),
        plural(r.warnings, "warning")
    );
}

/// The config as the daemon would load it (file, then `CLINVK_*` variables).
fn check_config(paths: &Paths, checks: &mut Checks) -> Settings {
    let (path, loaded) = config::load_as_daemon(paths);
    match loaded {
        Ok(loaded) => {
            if loaded.file_found {
                checks.add("config", Verdict::Ok, format!("{} parsed", path.display()));
            } else {
                checks.add(
                    "config",
                    Verdict::Ok,
                    format!("no file at {}: the defaults apply", path.display()),
                );
            }
            for w in loaded.warnings {
                checks.fix(
                    "config",
                    Verdict::Warn,
                    w,
                    "remove or correct the key (it has no effect)",
                );
            }
            loaded.settings
        }
        Err(e) => {
            checks.fix(
                "config",
                Verdict::Fail,
                e.to_string(),
                "correct the file: the daemon does not start (and a reload is refused) while it is invalid; the checks below use the defaults",
            );
            Settings::default()
        }
    }
}

/// The environment a backend's CLI gets: the process's, with the config's `env` on top.
fn child_env(cfg: &BackendSettings) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    for name in &cfg.env_remove {
        env.remove(name);
    }
    env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Runs a program with a timeout: (exit success, stdout, stderr).
async fn run_program(
    program: &Path,
    args: &[&str],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(bool, String, String), String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => Err(format!("gave no answer within {} s", timeout.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) => Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
    }
}

/// The first `N.N.N` in a text.
fn find_version(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        // "GitHub Copilot CLI 1.0.102." ends its sentence with a dot.
        .map(|w| w.trim_matches('.'))
        .find(|w| {
            let parts: Vec<_> = w.split('.').collect();
            parts.len() >= 3 && parts.iter().all(|p| !p.is_empty())
        })
        .map(str::to_string)
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Found, version, logged in. True when the backend looks usable.
async fn check_backend(backend: Backend, settings: &Settings, checks: &mut Checks) -> bool {
    let area = backend.as_str();
    let cfg = settings.backend(backend);
    let is_default = settings.default_backend == backend.as_str();
    if !cfg.enabled {
        let verdict = if is_default {
            Verdict::Fail
        } else {
            Verdict::Ok
        };
        checks.fix(
            area,
            verdict,
            format!("disabled in the configuration (backends.{area}.enabled: false)"),
            if is_default {
                "it is the default_backend: enable it or choose another default"
            } else {
                "nothing to do unless you want to use it"
            },
        );
        return false;
    }
    let env = child_env(&cfg);
    let command = cfg.command.clone().unwrap_or_else(|| area.to_string());
    let path_var = env.get("PATH").map(std::ffi::OsStr::new);
    let Some(program) = clinvk_shared::paths::find_executable(&command, path_var) else {
        let verdict = if is_default {
            Verdict::Fail
        } else {
            Verdict::Warn
        };
        checks.fix(
            area,
            verdict,
            format!(
                "`{command}` not found on PATH{}",
                if is_default {
                    " (it is the default_backend)"
                } else {
                    ""
                }
            ),
            format!(
                "{} (or set backends.{area}.command to its path)",
                backend.install_hint()
            ),
        );
        return false;
    };
    let tested = backend.tested_version();
    match run_program(&program, &["--version"], &env, Duration::from_secs(30)).await {
        Ok((true, out, err)) => match find_version(&out).or_else(|| find_version(&err)) {
            Some(v) if v == tested => checks.add(
                area,
                Verdict::Ok,
                format!("{} {v} (the tested version)", program.display()),
            ),
            Some(v) => {
                let newer = version_key(&v) > version_key(tested);
                checks.fix(
                    area,
                    Verdict::Warn,
                    format!(
                        "{} {v} is {} than the tested {tested}",
                        program.display(),
                        if newer { "newer" } else { "older" }
                    ),
                    format!(
                        "it may work; if answers look wrong, install the tested one: npm install -g {}@{tested}",
                        backend.npm_package()
                    ),
                )
            }
            None => checks.fix(
                area,
                Verdict::Warn,
                format!("{} printed no version", program.display()),
                format!("check that it is the real {area} CLI"),
            ),
        },
        Ok((false, _, err)) => {
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            checks.fix(
                area,
                Verdict::Fail,
                format!("{} --version failed: {}", program.display(), clip(last)),
                format!("reinstall it: {}", backend.install_hint()),
            );
            return false;
        }
        Err(e) => {
            checks.fix(
                area,
                Verdict::Fail,
                format!("{} --version {e}", program.display()),
                format!("reinstall it: {}", backend.install_hint()),
            );
            return false;
        }
    }
    let login = login::check(backend.info(), &program, &env).await;
    match login {
        Ok(how) => {
            checks.add(format!("{area} login"), Verdict::Ok, how);
            true
        }
        Err((what, fix)) => {
            let verdict = if is_default {
                Verdict::Fail
            } else {
                Verdict::Warn
            };
            checks.fix(format!("{area} login"), verdict, what, fix);
            false
        }
    }
}

fn clip(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Running or not; when not, whether its port is free. Returns whether one runs.
async fn check_daemon(paths: &Paths, settings: &Settings, checks: &mut Checks) -> bool {
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        crate::status(paths, "clinvk-doctor"),
    )
    .await;
    match status {
        Ok(Ok(s)) => {
            if s.version == clinvk_shared::VERSION {
                checks.add(
                    "daemon",
                    Verdict::Ok,
                    format!("running (pid {}), serving {}", s.pid, s.http_url),
                );
            } else {
                checks.fix(
                    "daemon",
                    Verdict::Warn,
                    format!(
                        "running (pid {}) version {}, this clinvk is {}",
                        s.pid,
                        s.version,
                        clinvk_shared::VERSION
                    ),
                    "restart it so both are the same build: clinvkctl stop, then clinvk serve",
                );
            }
            if s.draining {
                checks.add("daemon", Verdict::Warn, "it is shutting down");
            }
            // The quota windows the CLIs reported: a spent one refuses runs until its reset.
            for a in &s.accounts {
                let Some(l) = &a.limits else { continue };
                let area = format!("{} quota", a.backend);
                let summary = super::status::quota_lines(a).join("; ");
                match l.status {
                    clinvk_shared::quota::WindowStatus::Rejected => checks.fix(
                        &area,
                        Verdict::Warn,
                        summary,
                        "runs on it are refused (429) until the window resets",
                    ),
                    clinvk_shared::quota::WindowStatus::AllowedWarning => {
                        checks.add(&area, Verdict::Warn, summary)
                    }
                    clinvk_shared::quota::WindowStatus::Allowed => {
                        checks.add(&area, Verdict::Ok, summary)
                    }
                }
            }
            true
        }
        Ok(Err(ClientError::NotRunning(_))) => {
            let (host, port) = (&settings.server.host, settings.server.port);
            match std::net::TcpListener::bind((host.as_str(), port)) {
                Ok(_) => checks.add(
                    "daemon",
                    Verdict::Ok,
                    format!("not running (`clinvk serve` starts it); {host}:{port} is free"),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => checks.fix(
                    "port",
                    Verdict::Fail,
                    format!("not running, and {host}:{port} is in use by another program"),
                    "stop that program, or choose another port (server.port, or `clinvk serve --port N`)",
                ),
                Err(e) => checks.fix(
                    "port",
                    Verdict::Fail,
                    format!("not running, and {host}:{port} cannot be bound: {e}"),
                    "check server.host (an address of this machine) and server.port",
                ),
            }
            false
        }
        Ok(Err(e)) => {
            checks.fix(
                "daemon",
                Verdict::Fail,
                format!("its control socket answers badly: {e}"),
                "stop it (clinvkctl stop, or kill the pid in run/clinvkd.pid) and start it again",
            );
            false
        }
        Err(_) => {
            checks.fix(
                "daemon",
                Verdict::Fail,
                "its control socket gave no answer within 10 s",
                "the daemon may be stuck: see its log (~/.clinvk/logs) and restart it",
            );
            false
        }
    }
}

/// The control socket and its folder are private to this user.
fn check_socket(paths: &Paths, running: bool, checks: &mut Checks) {
    let socket = paths.socket();
    let me = nix::unistd::getuid().as_raw();
    let dir = socket.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut problems = Vec::new();
    match std::fs::metadata(&dir) {
        Ok(m) => problems.extend(not_private(&dir, &m, me, "700")),
        Err(_) if !running => {
            checks.add(
                "socket",
                Verdict::Ok,
                format!("{} (created when the daemon starts)", socket.display()),
            );
            return;
        }
        Err(e) => problems.push(format!("{}: {e}", dir.display())),
    }
    if let Ok(m) = std::fs::symlink_metadata(&socket) {
        problems.extend(not_private(&socket, &m, me, "600"));
    }
    if problems.is_empty() {
        checks.add(
            "socket",
            Verdict::Ok,
            format!("{} private to this user", socket.display()),
        );
    } else {
        checks.fix(
            "socket",
            Verdict::Fail,
            problems.join("; "),
            format!(
                "other users could drive your CLIs: `chmod 700 {}` and restart the daemon",
                dir.display()
            ),
        );
    }
}

/// What makes a file not private to user `me`: another owner, or access for group or others.
fn not_private(path: &Path, m: &std::fs::Metadata, me: u32, want: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    if m.uid() != me {
        out.push(format!("{} belongs to uid {}", path.display(), m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        out.push(format!(
            "{} is mode {:o} (want {want})",
            path.display(),
            m.mode() & 0o777
        ));
    }
    out
}

/// Whether the HTTP API asks for a key, and whether that is safe for the bound address.
fn check_auth(paths: &Paths, settings: &Settings, checks: &mut Checks) {
    let host = settings.server.host.as_str();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let keys_configured = paths.keys_file().exists()
        || std::env::var("CLINVK_API_KEYS").is_ok_and(|v| !v.trim().is_empty())
        || !settings.server.api_keys_gopass_path.trim().is_empty();
    let on = settings.server.auth.requires_key(keys_configured);
    match (on, loopback) {
        (true, _) => checks.add(
            "auth",
            Verdict::Ok,
            format!("on: requests need an API key (server.auth: {})", clinvk_shared::api::wire_name(&settings.server.auth)),
        ),
        (false, true) => checks.add(
            "auth",
            Verdict::Ok,
            format!("off, and the API listens on {host} only (other programs of this machine can use it; `clinvkctl keys add NAME` turns keys on)"),
        ),
        (false, false) => checks.fix(
            "auth",
            Verdict::Fail,
            format!("off while server.host is {host}: anyone who reaches it could run agents as you (the daemon refuses to start so)"),
            "add a key (`clinvkctl keys add NAME`, or CLINVK_API_KEYS) or bind 127.0.0.1",
        ),
    }
}

/// The service units, and what systemd (or launchd) says of them.
async fn check_service(checks: &mut Checks) {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    if cfg!(target_os = "macos") {
        let plist = super::service::launchd_plist(&home);
        if plist.is_file() {
            checks.add(
                "service",
                Verdict::Ok,
                format!("launchd agent installed ({})", plist.display()),
            );
        } else {
            checks.add(
                "service",
                Verdict::Ok,
                "no launchd agent (optional: `clinvkctl service install`)",
            );
        }
        return;
    }
    let user: Vec<PathBuf> = super::service::user_unit_dir()
        .ok()
        .map(|d| d.join("clinvkd.service"))
        .into_iter()
        .chain([
            PathBuf::from("/etc/systemd/user/clinvkd.service"),
            PathBuf::from("/usr/lib/systemd/user/clinvkd.service"),
        ])
        .collect();
    let system = [
        PathBuf::from("/etc/systemd/system/clinvkd.service"),
        PathBuf::from("/usr/lib/systemd/system/clinvkd.service"),
        PathBuf::from("/lib/systemd/system/clinvkd.service"),
    ];
    let mut found = false;
    for (scope, files) in [("user", &user[..]), ("system", &system[..])] {
        let Some(unit) = files.iter().find(|p| p.is_file()) else {
            continue;
        };
        found = true;
        let mut args = Vec::new();
        if scope == "user" {
            args.push("--user");
        }
        let ask = |what: &'static str, unit: &'static str| {
            let mut a = args.clone();
            a.extend([what, unit]);
            async move {
                let out = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::process::Command::new("systemctl")
                        .args(&a)
                        .stdin(std::process::Stdio::null())
                        .output(),
                )
                .await;
                match out {
                    Ok(Ok(o)) => Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
                        .filter(|s| !s.is_empty()),
                    _ => None,
                }
            }
        };
        let enabled = ask("is-enabled", "clinvkd.socket").await;
        let active = ask("is-active", "clinvkd.service").await;
        match (enabled, active) {
            (Some(e), Some(a)) => checks.fix(
                "service",
                if e == "enabled" { Verdict::Ok } else { Verdict::Warn },
                format!("{scope} units installed ({}); clinvkd.socket {e}, clinvkd.service {a}", unit.display()),
                if scope == "user" {
                    "systemctl --user enable --now clinvkd.socket clinvkd-control.socket"
                } else {
                    "sudo systemctl enable --now clinvkd.socket"
                },
            ),
            _ => checks.add(
                "service",
                Verdict::Warn,
                format!("{scope} units installed ({}), but systemctl gave no answer (is systemd running here?)", unit.display()),
            ),
        }
    }
    if !found {
        checks.add(
            "service",
            Verdict::Ok,
            "not installed (optional: `clinvkctl service install` keeps the daemon running)",
        );
    }
}

/// One short prompt per usable backend, through the daemon.
async fn smoke(paths: &Paths, usable: &[Backend], checks: &mut Checks) {
    for &backend in usable {
        let area = format!("smoke {backend}");
        let req = PromptRequest {
            backend: Some(backend.to_string()),
            prompt: Some("Reply with the single word OK.".into()),
            ephemeral: true,
            ..Default::default()
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            // The run's events come first; only its result matters here.
            crate::call_stream(paths, Request::Prompt(Box::new(req)), |_| {}),
        )
        .await;
        let secs = started.elapsed().as_secs_f64();
        match answer {
            Ok(Ok(Reply::Prompt(outcome))) => match *outcome {
                PromptOutcome::Result(r) if !r.failed() => checks.add(
                    area,
                    Verdict::Ok,
                    format!("answered in {secs:.1} s: {:?}", clip(&r.output)),
                ),
                PromptOutcome::Result(r) => checks.fix(
                    area,
                    Verdict::Fail,
                    format!(
                        "failed after {secs:.1} s: {}",
                        clip(r.error.as_deref().unwrap_or("no error text"))
                    ),
                    "run the CLI by hand to see why (login, network, model access)",
                ),
                PromptOutcome::DryRun(_) => checks.fix(
                    area,
                    Verdict::Warn,
                    "not run: unified_flags.dry_run is set",
                    "unset unified_flags.dry_run to run prompts",
                ),
            },
            Ok(Ok(other)) => {
                checks.add(area, Verdict::Fail, format!("unexpected answer: {other:?}"))
            }
            Ok(Err(e)) => checks.fix(
                area,
                Verdict::Fail,
                e.to_string(),
                "see the daemon's log (~/.clinvk/logs/clinvkd.log)",
            ),
            Err(_) => checks.fix(
                area,
                Verdict::Fail,
                "no answer within 60 s (the run was cancelled)",
                "run the CLI by hand to see why (login, network, model access)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            find_version("2.1.328 (Claude Code)").as_deref(),
            Some("2.1.328")
        );
        assert_eq!(
            find_version("codex-cli 0.169.0").as_deref(),
            Some("0.169.0")
        );
        assert_eq!(
            find_version("GitHub Copilot CLI 1.0.102.\nRun 'copilot update'").as_deref(),
            Some("1.0.102")
        );
        assert_eq!(find_version("v1.2"), None);
        assert!(version_key("0.170.0") > version_key("0.169.0"));
        assert!(version_key("2.1.99") < version_key("2.1.328"));
    }
}
