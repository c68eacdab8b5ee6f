//! Start, listeners, signals, reload and the shutdown order of the daemon.
//!
//! Start: private folders → pid lock (one daemon per state folder) → HTTP listener → control
//! socket → pid written → serve → `READY=1` (see `service`). Under systemd socket activation the
//! HTTP listener (and the control socket, when passed named `control`) are the passed sockets. Stop (SIGTERM, SIGINT, `clinvkctl stop`, or the caller's
//! `shutdown` future): drain (new requests get 503, in-flight ones get
//! `server.shutdown_grace_secs`) → hard stop (streams end, connections close) → socket and pid
//! file removed → `Ok(())`.

use crate::ctx::{Ctx, Overrides};
use anyhow::Context as _;
use clinvk_shared::config::Loaded;
use clinvk_shared::paths::{ensure_private_dir, Paths};
use clinvk_shared::protocol::AttachEvent;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::broadcast;

/// Everything `run` needs; `main` builds it from flags, tests build it directly.
pub struct DaemonOptions {
    pub paths: Paths,
    pub config_path: PathBuf,
    pub config_explicit: bool,
    pub overrides: Overrides,
    pub loaded: Loaded,
    pub events: broadcast::Sender<AttachEvent>,
    /// Sockets passed by systemd (`service::take_activation`, called before threads start).
    pub activation: Option<crate::service::Activation>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("another clinvkd (pid {pid}) is already running for {state_dir}")]
    AlreadyRunning { pid: String, state_dir: String },
    #[error("cannot listen on {addr}: port {port} is already in use (choose another with --port or server.port)")]
    PortInUse { addr: String, port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// The held pid-file lock: released (and the file removed) on drop.
struct PidLock {
    lock: Flock<File>,
    path: PathBuf,
}

impl PidLock {
    fn acquire(paths: &Paths) -> anyhow::Result<PidLock> {
        let path = paths.pid_file();
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts
            .open(&path)
            .with_context(|| format!("cannot open pid file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(PidLock { lock, path }),
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                Err(StartError::AlreadyRunning {
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.to_string()
                    },
                    state_dir: paths.state_dir.display().to_string(),
                }
                .into())
            }
            Err((_, e)) => Err(anyhow::anyhow!(
                "cannot lock pid file {}: {e}",
                path.display()
            )),
        }
    }

    fn write_pid(&mut self) -> std::io::Result<()> {
        let f: &mut File = &mut self.lock;
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Remove while still locked, so a new daemon never sees our file unlocked and half-gone.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the HTTP listener on `host:port`.
pub(crate) fn bind_http(host: &str, port: u16) -> Result<std::net::TcpListener, StartError> {
    let addr_text = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addr: SocketAddr = match addr_text.parse() {
        Ok(a) => a,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], port)), // "localhost"
    };
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            StartError::PortInUse {
                addr: addr.to_string(),
                port,
            }
        } else {
            StartError::Bind {
                addr: addr.to_string(),
                source: e,
            }
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| StartError::Bind {
            addr: addr.to_string(),
            source: e,
        })?;
    Ok(listener)
}

/// Runs the daemon until a stop is asked for, then shuts down in order and returns.
pub async fn run(
    opts: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    clinvk_shared::paths::process_start(); // (`main` marked it already)
    let paths = opts.paths.clone();
    // The state folder holds sessions, keys and logs: private to its user.
    ensure_private_dir(&paths.state_dir)
        .with_context(|| format!("cannot create {}", paths.state_dir.display()))?;
    ensure_private_dir(&paths.runtime_dir)
        .with_context(|| format!("cannot create {}", paths.runtime_dir.display()))?;
    let mut pid_lock = PidLock::acquire(&paths)?;

    for w in &opts.loaded.warnings {
        tracing::warn!("{w}");
    }
    let settings = opts.loaded.settings.clone();
    let ctx = Ctx::new(
        paths.clone(),
        opts.config_path,
        opts.config_explicit,
        opts.overrides,
        opts.loaded,
        opts.events,
    )
    .await?;
    // Process groups a crashed predecessor left behind (recorded with their start times).
    let reaped = crate::supervisor::reap_orphans(&paths.runtime_dir);
    if reaped > 0 {
        tracing::warn!(
            groups = reaped,
            "killed CLI process groups left running by a daemon that did not stop cleanly"
        );
    }
    ctx.supervisor
        .set_record_dir(paths.runtime_dir.join("runs"));
    let interrupted = ctx.sessions.mark_interrupted();
    if interrupted > 0 {
        tracing::warn!(
            sessions = interrupted,
            "marked sessions whose run was cut short by the last stop as interrupted"
        );
    }
    crate::http::meta::install_metrics();
    metrics::gauge!("clinvk_active_sessions").set(ctx.sessions.count() as f64);
    ctx.usage.count_open_errors();

    let activation = opts.activation.unwrap_or_default();
    let socket_activated = !activation.is_empty();
    ctx.socket_activated
        .store(socket_activated, Ordering::Relaxed);
    let std_listeners = if activation.http.is_empty() {
        vec![bind_http(&settings.server.host, settings.server.port)?]
    } else {
        tracing::info!(sockets = ?activation.described, "socket-activated: serving on the passed sockets");
        activation.http
    };
    let mut listeners = Vec::new();
    for l in std_listeners {
        let addr = l.local_addr()?;
        listeners.push((addr, tokio::net::TcpListener::from_std(l)?));
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|(a, _)| *a).collect();
    crate::ctx::check_exposure(&addrs, ctx.auth_required(), ctx.overrides.insecure)
        .map_err(anyhow::Error::msg)?;
    if ctx.overrides.insecure && !ctx.auth_required() {
        tracing::warn!("--insecure: serving without authentication");
    }
    if settings.server.auth == clinvk_shared::config::AuthMode::Required && ctx.keys.count() == 0 {
        tracing::warn!("server.auth is `required` but no key exists: every API request is refused until one is added (clinvkctl keys add NAME)");
    }
    ctx.set_http_addrs(addrs);
    crate::engine::prepare_default_workdir(&ctx)?;
    ctx.tools
        .start(ctx.stopped())
        .context("cannot listen on a loopback port for the client-tools MCP endpoint")?;

    // A control socket passed by systemd belongs to it: adopted, never bound or removed here.
    let control_passed = activation.control.is_some();
    let control = match activation.control {
        Some(l) => {
            if l.local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()))
                != Some(paths.socket())
            {
                tracing::warn!(
                    expected = %paths.socket().display(),
                    "the passed control socket is not where clinvk and clinvkctl look for it"
                );
            }
            crate::service::adopt_control(l).context("cannot use the passed control socket")?
        }
        None => crate::control::bind(&paths.socket()).with_context(|| {
            format!(
                "cannot create the control socket {}",
                paths.socket().display()
            )
        })?,
    };
    pid_lock.write_pid().context("cannot write the pid file")?;

    {
        // Availability: checked now (before readiness, so the first request knows), then every 5 min.
        let ctx2 = ctx.clone();
        ctx.backends.refresh(&ctx.settings()).await;
        // The warm workers' upkeep: idle retirement, the pools (filled from now on).
        ctx.work.spawn(crate::worker::maintain(ctx.clone()));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(300));
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if ticks > 0 {
                            ctx2.backends.refresh(&ctx2.settings()).await;
                        }
                        // Session retention, hourly.
                        let days = ctx2.settings().session.retention_days;
                        if days > 0 && ticks.is_multiple_of(12) {
                            let n = ctx2.sessions.clean_older_than(u64::from(days));
                            if n > 0 {
                                tracing::info!(deleted = n, days, "session retention");
                            }
                        }
                        ticks += 1;
                    }
                    _ = ctx2.stopped() => break,
                }
            }
        });
    }
    raise_fd_limit();
    // One set of rate-limit buckets for every listener.
    let rate = std::sync::Arc::new(crate::http::guard::RateLimiter::default());
    let http_tasks: Vec<_> = listeners
        .into_iter()
        .map(|(_, l)| {
            tokio::spawn(crate::http::serve(
                ctx.clone(),
                rate.clone(),
                l,
                ctx.stopped(),
            ))
        })
        .collect();
    let control_task = tokio::spawn(crate::control::serve(ctx.clone(), control));
    tracing::info!(
        pid = std::process::id(),
        version = clinvk_shared::VERSION,
        url = %ctx.http_url(),
        socket = %paths.socket().display(),
        socket_activated,
        "clinvkd ready"
    );
    crate::service::ready(&format!("serving {}", ctx.http_url()));

    wait_for_stop(&ctx, shutdown).await;
    drain(&ctx).await;

    // What is still running after the grace period is killed with its process group.
    ctx.supervisor.cancel_all();
    let kill_deadline = tokio::time::Instant::now()
        + Duration::from_secs(ctx.settings().limits.kill_grace_secs + 3);
    while ctx.supervisor.running_count() > 0 && tokio::time::Instant::now() < kill_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.hard_stop();
    crate::service::status("closing connections");
    if tokio::time::timeout(
        Duration::from_secs(5),
        futures::future::join_all(http_tasks),
    )
    .await
    .is_err()
    {
        tracing::warn!("HTTP connections did not close within 5 s; leaving them");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), control_task).await;
    if !control_passed {
        let _ = std::fs::remove_file(paths.socket());
    }
    drop(pid_lock);
    tracing::info!("clinvkd stopped");
    Ok(())
}

/// Raises the soft limit of open files to the hard limit, so that `server.max_connections`
/// (plus the CLIs' pipes) fits. macOS refuses a soft limit above `OPEN_MAX` (10240,
/// `<sys/syslimits.h>`) whatever the hard limit (often unlimited): it gets that much.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const OPEN_MAX_MACOS: nix::sys::resource::rlim_t = 10240;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let target = if cfg!(target_os = "macos") {
            hard.min(OPEN_MAX_MACOS)
        } else {
            hard
        };
        if soft < target {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
                tracing::warn!(soft, wanted = target, error = %e, "cannot raise the open-file limit");
            }
        }
    }
}

/// Waits for SIGTERM/SIGINT, a control `Stop`, or the caller's future; reloads on SIGHUP.
async fn wait_for_stop(ctx: &Ctx, shutdown: impl std::future::Future<Output = ()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            tracing::error!("cannot install signal handlers; stop with clinvkctl stop");
            tokio::select! { _ = shutdown => {}, _ = ctx.drain_started() => {} }
            return;
        }
    };
    tokio::pin!(shutdown);
    let drain_started = ctx.drain_started();
    tokio::pin!(drain_started);
    loop {
        tokio::select! {
            _ = term.recv() => { ctx.begin_drain("SIGTERM"); break; }
            _ = int.recv() => { ctx.begin_drain("SIGINT"); break; }
            _ = hup.recv() => match ctx.reload().await {
                Ok(o) => tracing::info!(changed = ?o.changed, "configuration reloaded (SIGHUP)"),
                Err(e) => tracing::error!(error = %e, "reload refused (SIGHUP); the running configuration stays"),
            },
            _ = &mut shutdown => { ctx.begin_drain("shutdown"); break; }
            _ = &mut drain_started => break,
        }
    }
}

/// Lets in-flight requests, streams, runs and `clinvk` calls finish, up to
/// `server.shutdown_grace_secs`.
async fn drain(ctx: &Ctx) {
    let grace = Duration::from_secs(ctx.settings().server.shutdown_grace_secs);
    tracing::info!(
        grace_secs = grace.as_secs(),
        in_flight = ctx.work.len(),
        "draining"
    );
    ctx.work.close();
    if tokio::time::timeout(grace, ctx.work.wait()).await.is_err() {
        tracing::warn!(
            in_flight = ctx.work.len(),
            "grace period over; stopping what is left"
        );
    }
}
