//! Warm workers: live CLI processes kept between turns, so that a turn does not pay the CLI's
//! start-up (claude's stream-json input, codex `app-server`, gemini `--acp`).
//!
//! A worker is a process started by the supervisor (own process group, death signal, killed
//! with its group when dropped) plus the driver of its protocol. It holds one backend session.
//! Between turns it waits here, idle, found again by that session's id; a pool keeps workers
//! ready for new sessions with the default settings, in the default folder and in the folders
//! used lately (`pool`). The maintenance task retires idle workers
//! (`backends.<b>.warm.idle_secs`), dead ones, the least recently used when memory runs low or
//! `limits.max_workers` is reached, and pooled ones whose settings a reload changed.

use crate::backend::{Driver, Step};
use crate::supervisor::{ProcEvent, RunHandle};
use clinvk_shared::api::Backend;
use clinvk_shared::protocol::{WorkerInfo, WorkerState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How a worker was started — program, argv, environment, folder and the driver's session
/// settings — without the resumed session and the turn's own input: a turn is only given to a
/// worker started the way that turn would start one.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct WorkerKey {
    pub(crate) program: std::path::PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<std::path::PathBuf>,
    /// `Driver::key`: what the protocol sets per session (folder, model, modes).
    pub(crate) session: String,
}

impl std::fmt::Debug for WorkerKey {
    /// Without the environment's values (they may hold keys).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerKey")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("session", &self.session)
            .finish()
    }
}

/// A live CLI process and the driver of its protocol.
pub(crate) struct Worker {
    pub(crate) id: String,
    pub(crate) backend: Backend,
    /// How it was started.
    pub(crate) key: WorkerKey,
    pub(crate) pid: u32,
    handle: RunHandle,
    stdin: tokio::process::ChildStdin,
    driver: Box<dyn Driver>,
    /// The backend's session id, once known.
    pub(crate) session: Option<String>,
    spawned: Instant,
    last_used: Instant,
    pub(crate) turns: u64,
    /// No output line seen yet (for the time-to-ready histogram).
    silent: bool,
}

impl Worker {
    pub(crate) fn new(
        backend: Backend,
        key: WorkerKey,
        handle: RunHandle,
        stdin: tokio::process::ChildStdin,
        driver: Box<dyn Driver>,
    ) -> Self {
        let now = Instant::now();
        Worker {
            id: handle.id.clone(),
            backend,
            key,
            pid: handle.pid,
            handle,
            stdin,
            driver,
            session: None,
            spawned: now,
            last_used: now,
            turns: 0,
            silent: true,
        }
    }

    pub(crate) fn driver(&mut self) -> &mut dyn Driver {
        self.driver.as_mut()
    }

    /// Writes protocol lines to the process.
    pub(crate) async fn write(&mut self, lines: &[String]) -> std::io::Result<()> {
        for l in lines {
            self.stdin.write_all(l.as_bytes()).await?;
            self.stdin.write_all(b"\n").await?;
        }
        self.stdin.flush().await
    }

    /// The next output line or the exit report; `None` once the reader is gone.
    pub(crate) async fn recv(&mut self) -> Option<ProcEvent> {
        let ev = self.handle.events.recv().await;
        if self.silent && matches!(ev, Some(ProcEvent::Line(_))) {
            self.silent = false;
            metrics::histogram!("clinvk_worker_ready_seconds", "backend" => self.backend.as_str())
                .record(self.spawned.elapsed().as_secs_f64());
        }
        ev
    }

    pub(crate) fn on_line(&mut self, line: &str) -> Step {
        self.driver.on_line(line)
    }

    /// Whether the process still runs (its exit is reaped by the supervisor).
    fn alive(&self) -> bool {
        crate::supervisor::process_alive(self.pid)
    }

    fn info(&self, state: WorkerState) -> WorkerInfo {
        WorkerInfo {
            id: self.id.clone(),
            backend: self.backend,
            pid: self.pid,
            backend_session_id: self.session.clone(),
            state,
            age_ms: self.spawned.elapsed().as_millis() as u64,
            idle_ms: if state == WorkerState::Busy {
                0
            } else {
                self.last_used.elapsed().as_millis() as u64
            },
            turns: self.turns,
            rss_bytes: crate::supervisor::group_rss(self.pid),
        }
    }

    fn state(&self) -> WorkerState {
        if self.session.is_none() && self.turns == 0 {
            WorkerState::Pooled
        } else {
            WorkerState::Idle
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        tracing::debug!(worker = %self.id, backend = %self.backend, pid = self.pid, turns = self.turns, "worker retired");
    }
}

/// What a busy worker looks like while a turn holds it.
#[derive(Clone)]
struct Busy {
    info: WorkerInfo,
    since: Instant,
    /// Which turn marked it (a later turn of the same worker has another).
    serial: u64,
}

#[derive(Default)]
struct State {
    idle: Vec<Worker>,
    busy: HashMap<String, Busy>,
    /// Turns started per backend session (so a worker still finishing an interrupted turn is
    /// not parked after a later turn of its session began elsewhere).
    turn_seq: HashMap<String, u64>,
    /// Folders new sessions used lately, which keep a spare (see `pool`).
    recent: Vec<pool::RecentFolder>,
    /// Sessions whose turn is being interrupted, and how many (see `interrupts`).
    interrupting: HashMap<String, u32>,
}

/// Every warm worker of the daemon (cheap to clone).
#[derive(Clone, Default)]
pub(crate) struct Workers {
    state: Arc<Mutex<State>>,
    /// Wakes the maintenance task (a pooled worker was taken, settings were reloaded).
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Wakes the turns waiting for an interrupt to end.
    interrupted: Arc<tokio::sync::Notify>,
}

/// Removes a busy entry when the turn that holds the worker ends, however it ends.
pub(crate) struct BusyGuard {
    workers: Workers,
    id: String,
    serial: u64,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        {
            let mut st = self.workers.state();
            if st
                .busy
                .get(&self.id)
                .is_some_and(|b| b.serial == self.serial)
            {
                st.busy.remove(&self.id);
            }
        }
        self.workers.publish_gauges();
    }
}

static BUSY_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Workers {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the idle worker holding `session`, if its process still runs. One started with
    /// other settings than `key` is retired instead (the session is resumed in a new one).
    pub(crate) fn take_session(
        &self,
        backend: Backend,
        session: &str,
        key: &WorkerKey,
    ) -> Option<Worker> {
        let found = {
            let mut st = self.state();
            let i = st
                .idle
                .iter()
                .position(|w| w.backend == backend && w.session.as_deref() == Some(session))?;
            st.idle.swap_remove(i)
        };
        self.publish_gauges();
        if found.key != *key {
            tracing::info!(worker = %found.id, backend = %backend, "the session's settings changed: its worker is retired");
            return None;
        }
        found.alive().then_some(found)
    }

    /// Takes a pooled worker started with `key`.
    pub(crate) fn take_pooled(&self, backend: Backend, key: &WorkerKey) -> Option<Worker> {
        let taken = {
            let mut st = self.state();
            let mut taken = None;
            while let Some(i) = st.idle.iter().position(|w| {
                w.backend == backend && w.state() == WorkerState::Pooled && w.key == *key
            }) {
                let w = st.idle.swap_remove(i);
                if w.alive() {
                    taken = Some(w);
                    break;
                }
            }
            taken
        };
        if taken.is_some() {
            self.wake.notify_one(); // replenish
        }
        self.publish_gauges();
        taken
    }

    /// Marks a worker busy for as long as the guard lives.
    pub(crate) fn busy(&self, w: &Worker) -> BusyGuard {
        let serial = BUSY_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state().busy.insert(
            w.id.clone(),
            Busy {
                info: w.info(WorkerState::Busy),
                since: Instant::now(),
                serial,
            },
        );
        self.publish_gauges();
        BusyGuard {
            workers: self.clone(),
            id: w.id.clone(),
            serial,
        }
    }

    /// Puts a worker back after a turn (or into the pool), within `max` live workers: beyond
    /// it the least recently used idle ones are retired.
    pub(crate) fn park(&self, mut w: Worker, max: usize) {
        w.last_used = Instant::now();
        let retired: Vec<Worker> = {
            let mut st = self.state();
            st.busy.remove(&w.id); // its turn is over (the guard may be dropped later)
            st.idle.push(w);
            let mut out = Vec::new();
            while st.idle.len() + st.busy.len() > max.max(1) && !st.idle.is_empty() {
                let lru = st
                    .idle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, w)| w.last_used)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                out.push(st.idle.swap_remove(lru));
            }
            out
        };
        for w in &retired {
            tracing::info!(worker = %w.id, backend = %w.backend, max, "limits.max_workers reached: the least recently used worker is retired");
        }
        drop(retired);
        self.publish_gauges();
    }

    /// Notes that a turn of `session` begins; returns its number.
    pub(crate) fn begin_turn(&self, session: &str) -> u64 {
        let mut st = self.state();
        let n = st.turn_seq.entry(session.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    /// The number of the last turn of `session` (0: none noted).
    pub(crate) fn last_turn(&self, session: &str) -> u64 {
        self.state().turn_seq.get(session).copied().unwrap_or(0)
    }

    /// Retires the idle worker of a session (a one-shot turn is about to continue it).
    pub(crate) fn retire_session(&self, backend: Backend, session: &str) {
        self.retire_where(|w| w.backend == backend && w.session.as_deref() == Some(session));
    }

    /// Retires the idle workers `pred` selects; returns how many.
    pub(crate) fn retire_where(&self, pred: impl Fn(&Worker) -> bool) -> usize {
        let gone: Vec<Worker> = {
            let mut st = self.state();
            let (gone, keep): (Vec<Worker>, Vec<Worker>) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|w| pred(w));
            st.idle = keep;
            gone
        };
        let n = gone.len();
        drop(gone);
        if n > 0 {
            self.publish_gauges();
        }
        n
    }

    /// Retires the least recently used idle worker; false when none is idle.
    fn retire_lru(&self) -> bool {
        let victim = {
            let mut st = self.state();
            let lru = st
                .idle
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(i, _)| i);
            lru.map(|i| st.idle.swap_remove(i))
        };
        let found = victim.is_some();
        drop(victim);
        self.publish_gauges();
        found
    }

    /// Pooled workers of `backend` started with `key`.
    pub(super) fn pooled(&self, backend: Backend, key: &WorkerKey) -> usize {
        self.state()
            .idle
            .iter()
            .filter(|w| w.backend == backend && w.state() == WorkerState::Pooled && w.key == *key)
            .count()
    }

    /// Live workers, busy or not.
    pub(crate) fn live(&self) -> usize {
        let st = self.state();
        st.idle.len() + st.busy.len()
    }

    /// The turns running in workers, as runs (for `clinvkctl status`).
    pub(crate) fn busy_runs(&self) -> Vec<clinvk_shared::protocol::RunInfo> {
        self.state()
            .busy
            .values()
            .map(|b| clinvk_shared::protocol::RunInfo {
                id: b.info.id.clone(),
                backend: b.info.backend,
                pid: Some(b.info.pid),
                age_ms: b.since.elapsed().as_millis() as u64,
                state: clinvk_shared::protocol::RunState::Running,
            })
            .collect()
    }

    /// Every worker, for `clinvkctl status`, `/api/v1/backends` and the metrics.
    pub(crate) fn list(&self) -> Vec<WorkerInfo> {
        let st = self.state();
        let mut v: Vec<WorkerInfo> = st
            .busy
            .values()
            .map(|b| {
                let mut i = b.info.clone();
                i.age_ms += b.since.elapsed().as_millis() as u64;
                i.rss_bytes = crate::supervisor::group_rss(i.pid);
                i
            })
            .chain(st.idle.iter().map(|w| w.info(w.state())))
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn publish_gauges(&self) {
        let counts: Vec<(Backend, WorkerState)> = {
            let st = self.state();
            st.busy
                .values()
                .map(|b| (b.info.backend, WorkerState::Busy))
                .chain(st.idle.iter().map(|w| (w.backend, w.state())))
                .collect()
        };
        for b in Backend::ALL {
            for s in [WorkerState::Pooled, WorkerState::Idle, WorkerState::Busy] {
                let n = counts
                    .iter()
                    .filter(|(cb, cs)| *cb == b && *cs == s)
                    .count();
                metrics::gauge!("clinvk_workers", "backend" => b.as_str(), "state" => s.to_string())
                    .set(n as f64);
            }
        }
    }

    /// Retires every idle worker (drain).
    pub(crate) fn retire_all(&self) -> usize {
        self.retire_where(|_| true)
    }
}

/// `limits.max_workers`, or the default derived from the machine's memory: one worker per GiB
/// of RAM (a live claude takes about 200 MiB), at least 2, at most 64. Without `/proc/meminfo`
/// (systems other than Linux) the memory is unknown: 2.
pub(crate) fn max_workers(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let gib = meminfo("MemTotal")
        .map(|kib| kib / (1024 * 1024))
        .unwrap_or(2);
    (gib as usize).clamp(2, 64)
}

/// A field of `/proc/meminfo`, in KiB (Linux; `None` elsewhere: no `/proc`, so the memory-low
/// retirement never fires there).
fn meminfo(field: &str) -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether the machine is short of memory: less than a tenth of it available.
fn memory_low() -> bool {
    match (meminfo("MemAvailable"), meminfo("MemTotal")) {
        (Some(avail), Some(total)) => avail < total / 10,
        _ => false,
    }
}

/// The maintenance task: every second (or when woken) retires idle workers past their
/// backend's `warm.idle_secs`, dead ones, the least recently used while memory is low, and
/// pooled ones whose settings changed; then fills each warm backend's pool.
pub(crate) async fn maintain(ctx: crate::ctx::Ctx) {
    let stopped = ctx.drain_started();
    tokio::pin!(stopped);
    let mut backoff = PoolBackoff::default();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = ctx.workers.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if ctx.is_draining() {
            break;
        }
        let settings = ctx.settings();
        let idle_limit = |b: Backend| settings.backend(b).warm.idle_secs;
        let reloads = ctx.reloads.load(std::sync::atomic::Ordering::Relaxed);
        if reloads != backoff.reloads {
            backoff = PoolBackoff {
                reloads,
                ..Default::default()
            };
        }
        // Pooled workers that died before any turn: their backend's refill backs off.
        let died: Vec<Backend> = ctx
            .workers
            .state()
            .idle
            .iter()
            .filter(|w| w.state() == WorkerState::Pooled && !w.alive())
            .map(|w| w.backend)
            .collect();
        for b in died {
            let wait = backoff.failed(b);
            tracing::warn!(backend = %b, retry_in_secs = wait.as_secs(), "a pooled worker exited before its first turn; refilling the pool later");
        }
        let n = ctx.workers.retire_where(|w| {
            !w.alive()
                || (w.state() == WorkerState::Idle
                    && w.last_used.elapsed() >= Duration::from_secs(idle_limit(w.backend)))
        });
        if n > 0 {
            tracing::info!(count = n, "idle workers retired");
        }
        if memory_low() && ctx.workers.retire_lru() {
            tracing::warn!("memory is low: the least recently used worker was retired");
        }
        for b in Backend::ALL {
            if backoff.ready(b) {
                fill_pool(&ctx, b).await;
            }
        }
    }
    let n = ctx.workers.retire_all();
    tracing::debug!(count = n, "drain: idle workers retired");
}

mod interrupts;
mod pool;
use pool::{fill_pool, PoolBackoff};

#[cfg(test)]
mod tests;
