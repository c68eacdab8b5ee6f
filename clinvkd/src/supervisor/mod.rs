//! The supervisor: sole owner of every CLI process the daemon starts.
//!
//! Each run gets its own process group, stdin closed, stdout and stderr read concurrently with
//! caps (an endless line or a flood of output cannot exhaust memory), a timeout, and
//! cancellation (SIGTERM to the group, SIGKILL after a grace period). When the main process
//! exits, whatever it left in its group is killed, so no orphan outlives its run. A global and a
//! per-backend concurrency limit with a bounded wait queue decide when a run may start.

mod limiter;
mod lines;

pub(crate) use limiter::{CapacityError, Limiter, Limits, Permit};

use clinvk_shared::api::Backend;
use clinvk_shared::protocol::RunInfo;
use clinvk_shared::protocol::RunState;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    pub(crate) backend: Backend,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) timeout: Duration,
    /// Seconds between SIGTERM and SIGKILL.
    pub(crate) kill_grace: Duration,
    /// Longest stdout line kept; the rest of a longer line is dropped (and counted).
    pub(crate) max_line_bytes: usize,
    /// Stdout kept in all; later lines are dropped (and counted), the process keeps running.
    pub(crate) max_output_bytes: usize,
    /// Written to stdin, which is then closed; None: stdin is /dev/null.
    pub(crate) stdin: Option<Vec<u8>>,
    /// Variables of the daemon's environment the child must not see (besides `CLINVK_*`,
    /// which it never sees).
    pub(crate) env_remove: Vec<String>,
}

/// What a run reports, in order: stdout lines, then one `Exit`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ProcEvent {
    /// One stdout line (lossy UTF-8, without the newline; cut to `max_line_bytes`).
    Line(String),
    Exit(ExitInfo),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ExitInfo {
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) timed_out: bool,
    pub(crate) cancelled: bool,
    /// The last 64 KiB of stderr.
    pub(crate) stderr_tail: String,
    pub(crate) truncated_lines: usize,
    pub(crate) dropped_bytes: u64,
    pub(crate) duration: Duration,
}

impl ExitInfo {
    /// The code as the native API reports it: -1 for timeout/cancel/signal.
    pub(crate) fn exit_code(&self) -> i32 {
        if self.timed_out || self.cancelled {
            return -1;
        }
        self.code.unwrap_or(-1)
    }
}

/// Spawn failures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("cannot start {program}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
}

/// A started run: its events, and cancellation on drop.
pub(crate) struct RunHandle {
    pub(crate) id: String,
    pub(crate) pid: u32,
    pub(crate) events: mpsc::Receiver<ProcEvent>,
    cancel: CancellationToken,
    /// When the process is killed for taking too long (movable: see `restart_timeout`).
    deadline: tokio::sync::watch::Sender<tokio::time::Instant>,
    timeout: Duration,
    /// Its concurrency slot (None for a live worker's process, or while released).
    slot: Arc<std::sync::Mutex<Option<Permit>>>,
}

impl RunHandle {
    /// Gives the run's concurrency slot back (the run waits for a client and runs nothing).
    pub(crate) fn release_slot(&self) {
        drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Gives the run a slot again (see `release_slot`).
    pub(crate) fn restore_slot(&self, permit: Permit) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
    }

    /// Gives the run its whole timeout again from now (a run that waited for a client's tool
    /// results: the wait is not the CLI's time).
    pub(crate) fn restart_timeout(&self) {
        self.kill_in(self.timeout);
    }

    /// Moves the deadline to `d` from now.
    pub(crate) fn kill_in(&self, d: Duration) {
        let _ = self.deadline.send(tokio::time::Instant::now() + d);
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        // Nobody listens any more (client gone, fail-fast, shutdown): stop the process group.
        self.cancel.cancel();
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    backend: Backend,
    pid: Option<u32>,
    started: Instant,
    state: RunState,
    cancel: CancellationToken,
    /// A warm worker (listed with the workers, not the runs).
    live: bool,
}

/// The process supervisor (cheap to clone).
#[derive(Clone)]
pub(crate) struct Supervisor {
    runs: Arc<Mutex<HashMap<String, Tracked>>>,
    pub(crate) limiter: Limiter,
    /// Where each running process group is recorded (pid and start time), so that a daemon
    /// starting after a crash can kill what its predecessor left.
    record_dir: Arc<Mutex<Option<PathBuf>>>,
}

impl Supervisor {
    pub(crate) fn new(limiter: Limiter) -> Self {
        Self {
            runs: Arc::new(Mutex::new(HashMap::new())),
            limiter,
            record_dir: Arc::default(),
        }
    }

    /// Records running process groups in `dir` from now on.
    pub(crate) fn set_record_dir(&self, dir: PathBuf) {
        if let Err(e) = clinvk_shared::paths::ensure_private_dir(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot record running CLIs; a crash may leave them running");
            return;
        }
        *self.record_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
    }

    fn record_file(&self, pid: u32) -> Option<PathBuf> {
        self.record_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|d| d.join(pid.to_string()))
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running one-shot runs, for `clinvkctl status` (the warm workers are listed apart).
    pub(crate) fn running(&self) -> Vec<RunInfo> {
        let mut v: Vec<RunInfo> = self
            .runs()
            .iter()
            .filter(|(_, t)| !t.live)
            .map(|(id, t)| RunInfo {
                id: id.clone(),
                backend: t.backend,
                pid: t.pid,
                age_ms: t.started.elapsed().as_millis() as u64,
                state: t.state,
            })
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
        v
    }

    /// Number of CLI processes alive now (runs and warm workers).
    pub(crate) fn running_count(&self) -> usize {
        self.runs().len()
    }

    /// Cancels every run (shutdown).
    pub(crate) fn cancel_all(&self) {
        for t in self.runs().values() {
            t.cancel.cancel();
        }
    }

    /// Starts a process for a run that holds `permit`. The permit is released when it exits.
    pub(crate) fn spawn(&self, permit: Permit, spec: SpawnSpec) -> Result<RunHandle, SpawnError> {
        self.launch(Some(permit), spec, false).map(|(h, _)| h)
    }

    /// Starts a live process (a warm worker): stdin stays open for the caller to write, no
    /// timeout and no output cap apply to the process (its turns have their own), and it holds
    /// no concurrency slot (each turn takes one). Dropping the handle kills its group.
    pub(crate) fn spawn_live(
        &self,
        spec: SpawnSpec,
    ) -> Result<(RunHandle, tokio::process::ChildStdin), SpawnError> {
        let program = spec.program.display().to_string();
        let (handle, stdin) = self.launch(None, spec, true)?;
        let stdin = stdin.ok_or_else(|| SpawnError::Start {
            program,
            source: std::io::Error::other("no stdin pipe"),
        })?;
        Ok((handle, stdin))
    }

    fn launch(
        &self,
        permit: Option<Permit>,
        mut spec: SpawnSpec,
        live: bool,
    ) -> Result<(RunHandle, Option<tokio::process::ChildStdin>), SpawnError> {
        // The run's concurrency slot, released when the process exits — or while the run waits
        // for a client's tool results (`RunHandle::release_slot`).
        let slot = Arc::new(std::sync::Mutex::new(permit));
        let slot_task = slot.clone();
        if live {
            spec.stdin = None;
            spec.max_output_bytes = usize::MAX;
        }
        let id = format!(
            "{}-{}",
            if live { "worker" } else { "run" },
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin.is_some() || live {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        scrub_env(cmd.as_std_mut(), &spec.env_remove);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Start {
            program: spec.program.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let record = self.record_file(pid);
        if let Some(f) = &record {
            match proc_start_time(pid) {
                Some(t) => {
                    if let Err(e) = std::fs::write(f, format!("{pid} {t}\n")) {
                        tracing::warn!(file = %f.display(), error = %e, "cannot record a running CLI");
                    }
                }
                None => tracing::debug!(pid, "no start time to record"),
            }
        }
        let live_stdin = if live { child.stdin.take() } else { None };
        if let (Some(mut sink), Some(data)) = (child.stdin.take(), spec.stdin.clone()) {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = sink.write_all(&data).await;
                let _ = sink.shutdown().await; // EOF: the CLI stops waiting for more
            });
        }
        let cancel = CancellationToken::new();
        self.runs().insert(
            id.clone(),
            Tracked {
                backend: spec.backend,
                pid: Some(pid),
                started: Instant::now(),
                state: RunState::Running,
                cancel: cancel.clone(),
                live,
            },
        );
        metrics::gauge!("clinvk_running_processes").set(self.running_count() as f64);
        tracing::debug!(run = %id, pid, backend = %spec.backend, program = %spec.program.display(), "started");
        let (tx, rx) = mpsc::channel(256);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let sup = self.clone();
        let run_id = id.clone();
        let token = cancel.clone();
        let (deadline_tx, mut deadline_rx) =
            tokio::sync::watch::channel(tokio::time::Instant::now() + spec.timeout);
        let timeout = spec.timeout;
        tokio::spawn(async move {
            let started = Instant::now();
            let stderr_task = tokio::spawn(read_tail(stderr, 64 * 1024));
            let reader = lines::LineReader::new(spec.max_line_bytes, spec.max_output_bytes);
            let (line_tx, mut line_rx) = mpsc::channel::<String>(256);
            let stdout_task = tokio::spawn(reader.pump(stdout, line_tx));
            let mut info = ExitInfo::default();
            let deadline = async {
                if live {
                    std::future::pending::<()>().await
                }
                loop {
                    let at = *deadline_rx.borrow_and_update();
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => break,
                        moved = deadline_rx.changed() => if moved.is_err() {
                            // The handle is gone: the last deadline stands.
                            tokio::time::sleep_until(at).await;
                            break;
                        }
                    }
                }
            };
            tokio::pin!(deadline);
            let mut lines_open = true;
            let mut consumer_gone = false;
            let status = loop {
                tokio::select! {
                    line = line_rx.recv(), if lines_open => match line {
                        Some(l) => {
                            if !consumer_gone && tx.send(ProcEvent::Line(l)).await.is_err() {
                                consumer_gone = true; // keep reading so the child never blocks
                            }
                        }
                        None => lines_open = false,
                    },
                    st = child.wait() => break st.ok(),
                    _ = &mut deadline => {
                        info.timed_out = true;
                        sup.set_state(&run_id, RunState::Killing);
                        break terminate(&mut child, pid, spec.kill_grace).await;
                    }
                    _ = token.cancelled() => {
                        info.cancelled = true;
                        sup.set_state(&run_id, RunState::Cancelling);
                        break terminate(&mut child, pid, spec.kill_grace).await;
                    }
                }
            };
            // The main process is gone: anything left in its group (helpers, a grandchild
            // holding stdout) goes too, so the pipes close and nothing is orphaned.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            while let Some(l) = line_rx.recv().await {
                if !consumer_gone && tx.send(ProcEvent::Line(l)).await.is_err() {
                    consumer_gone = true;
                }
            }
            let counts = stdout_task.await.unwrap_or_default();
            info.stderr_tail = stderr_task.await.unwrap_or_default();
            info.truncated_lines = counts.truncated_lines;
            info.dropped_bytes = counts.dropped_bytes;
            if let Some(st) = status {
                use std::os::unix::process::ExitStatusExt;
                info.code = st.code();
                info.signal = st.signal();
            }
            info.duration = started.elapsed();
            sup.runs().remove(&run_id);
            if let Some(f) = &record {
                let _ = std::fs::remove_file(f);
            }
            metrics::gauge!("clinvk_running_processes").set(sup.running_count() as f64);
            drop(slot_task.lock().unwrap_or_else(|e| e.into_inner()).take());
            tracing::debug!(run = %run_id, code = ?info.code, signal = ?info.signal, timed_out = info.timed_out, cancelled = info.cancelled, "exited");
            let _ = tx.send(ProcEvent::Exit(info)).await;
        });
        Ok((
            RunHandle {
                id,
                pid,
                events: rx,
                cancel,
                deadline: deadline_tx,
                timeout,
                slot,
            },
            live_stdin,
        ))
    }

    fn set_state(&self, id: &str, state: RunState) {
        if let Some(t) = self.runs().get_mut(id) {
            t.state = state;
        }
    }
}

/// Takes out of `cmd`'s environment what no process the daemon starts may see: every
/// `CLINVK_*` variable (the daemon's settings and secrets: `CLINVK_API_KEYS`, …), also when set
/// explicitly on `cmd`, and the names in `env_remove` (a backend's `env_remove`). Call it after
/// the variables are set. Every such spawn goes through it: runs, warm workers, the
/// availability probe, gopass.
pub(crate) fn scrub_env(cmd: &mut std::process::Command, env_remove: &[String]) {
    let explicit: Vec<std::ffi::OsString> =
        cmd.get_envs().map(|(name, _)| name.to_owned()).collect();
    for name in std::env::vars_os().map(|(name, _)| name).chain(explicit) {
        if name.to_string_lossy().starts_with("CLINVK_") {
            cmd.env_remove(&name);
        }
    }
    for name in env_remove {
        cmd.env_remove(name);
    }
}

/// The umask the daemon was started with (restored in its children).
static CHILD_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0o022);

/// Makes every file the daemon creates private (umask 077), remembering the user's umask for
/// the CLIs. Call once at start, before any thread.
pub fn set_private_umask() {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o077));
    CHILD_UMASK.store(old.bits(), std::sync::atomic::Ordering::Relaxed);
}

/// Prepares a CLI's process for its exec: the user's umask back (the daemon runs with 077), and
/// on Linux death with the daemon (`PR_SET_PDEATHSIG` = SIGKILL), even by `kill -9`; its own
/// children are caught by `reap_orphans` at the next start. Other systems have no death signal
/// (see docs/security.md).
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command) {
    guard_child(cmd, nix::unistd::getpid());
}

/// `die_with_parent` for a child whose parent must be `parent`: if it is not (the daemon died
/// between the fork and the `prctl`, so the death signal will never come), the child does not
/// exec and the spawn fails with `ESRCH`.
#[allow(unsafe_code)]
fn guard_child(cmd: &mut tokio::process::Command, parent: Pid) {
    let mask = CHILD_UMASK.load(std::sync::atomic::Ordering::Relaxed) as libc::mode_t;
    let parent = parent.as_raw();
    // SAFETY: `pre_exec` runs the closure in the forked child before exec, where the daemon's
    // other threads are gone (one may have held the allocator's or another lock): it may only
    // call async-signal-safe functions and must not allocate. It owns two integers, copied in,
    // and calls exactly `umask(2)` and `getppid(2)` — both async-signal-safe (POSIX, see
    // signal-safety(7)) — and on Linux `prctl(2)`, which is not in POSIX's list but is a bare
    // system call in libc (no lock, no allocation). Its errors are made from errno
    // (`io::Error::last_os_error`, `io::Error::from_raw_os_error`: a code, no allocation; std
    // sends the code to the parent through its pipe). It takes no lock and touches no state but
    // the child's own umask, death signal and errno.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon died before the death signal was set (elsewhere: before this point):
            // do not start at all.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Fields of `/proc/<pid>/stat` after the command name: (process group, start time in ticks).
/// Linux only: other systems have no `/proc` (macOS), so nothing is known there — no start
/// time is recorded for a run, `reap_orphans` finds nothing to kill, `group_rss` is `None`,
/// and `process_alive` asks the kernel with signal 0 instead.
fn proc_stat(pid: u32) -> Option<(i32, u64)> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    if rest.first() == Some(&"Z") {
        return None; // a zombie is as good as gone
    }
    Some((rest.get(2)?.parse().ok()?, rest.get(19)?.parse().ok()?))
}

fn proc_start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, t)| t)
}

/// Kills the process groups recorded in `runtime_dir/runs` by a daemon that did not stop
/// cleanly: a group whose leader still runs with the recorded start time, or whose leader is
/// gone but whose members (started after it) live on. A pid reused by an unrelated process is
/// left alone. Returns the number of groups killed.
pub(crate) fn reap_orphans(runtime_dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(runtime_dir.join("runs")) else {
        return 0;
    };
    let mut killed = 0;
    for e in entries.flatten() {
        let path = e.path();
        let recorded = std::fs::read_to_string(&path).ok().and_then(|t| {
            let mut it = t.split_whitespace();
            Some((
                it.next()?.parse::<u32>().ok()?,
                it.next()?.parse::<u64>().ok()?,
            ))
        });
        let _ = std::fs::remove_file(&path);
        let Some((pid, started)) = recorded else {
            continue;
        };
        let ours = match proc_stat(pid) {
            Some((_, t)) => t == started,
            None => group_members(pid as i32)
                .iter()
                .any(|&m| proc_start_time(m as u32).is_some_and(|t| t >= started)),
        };
        if ours && killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            tracing::info!(
                pgid = pid,
                "killed a CLI process group left by the previous daemon"
            );
            killed += 1;
        }
    }
    killed
}

/// Whether a process runs. On Linux from `/proc` (a zombie does not run); elsewhere whether
/// signal 0 reaches it (a zombie counts until the supervisor reaps it, which it does as soon as
/// its child exits).
pub(crate) fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        proc_stat(pid).is_some()
    } else {
        signal_reaches(pid)
    }
}

/// Whether process `pid` exists (signal 0; another user's process counts).
fn signal_reaches(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| {
        !matches!(
            nix::sys::signal::kill(Pid::from_raw(p), None),
            Err(nix::errno::Errno::ESRCH)
        )
    })
}

/// The resident memory of a process group, in bytes (Linux; None when unreadable, and on other
/// systems: no `/proc`).
pub(crate) fn group_rss(pgid: u32) -> Option<u64> {
    let members = group_members(pgid as i32);
    if members.is_empty() {
        return None;
    }
    let kib: u64 = members
        .iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    Some(kib * 1024)
}

/// The live processes of a process group (Linux, from `/proc`; none elsewhere).
fn group_members(pgid: i32) -> Vec<i32> {
    if !cfg!(target_os = "linux") {
        return vec![];
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| proc_stat(p as u32).is_some_and(|(g, _)| g == pgid))
        .collect()
}

/// SIGTERM to the group, SIGKILL after `grace`; returns the exit status.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: u32,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(st) => st.ok(),
        Err(_) => {
            let _ = killpg(group, Signal::SIGKILL);
            child.wait().await.ok()
        }
    }
}

/// Reads a stream to its end, keeping only the last `cap` bytes (lossy UTF-8).
async fn read_tail(stream: Option<impl tokio::io::AsyncRead + Unpin>, cap: usize) -> String {
    let Some(mut s) = stream else {
        return String::new();
    };
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * cap {
                    let cut = tail.len() - cap;
                    tail.drain(..cut);
                }
            }
        }
    }
    if tail.len() > cap {
        let cut = tail.len() - cap;
        tail.drain(..cut);
    }
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests;
