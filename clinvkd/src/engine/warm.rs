//! Warm turns: a worker's key, starting a worker, giving a turn to the session's worker, a pooled
//! one or a new one, and interrupting or retiring it when a turn is dropped.

use super::*;
use crate::error::Code;

/// One turn of a warm worker. The worker goes back to the idle set when the turn ends well;
/// a turn dropped before its end (cancelled, client gone) kills the worker with its group —
/// the session's next turn resumes it in a new one.
pub(super) struct WarmTurn {
    pub(super) id: String,
    pub(super) worker: Option<crate::worker::Worker>,
    pub(super) workers: crate::worker::Workers,
    pub(super) busy: Option<crate::worker::BusyGuard>,
    pub(super) permit: Option<crate::supervisor::Permit>,
    /// The number of this turn in its session (see `Workers::begin_turn`); 0 for a new session.
    pub(super) seq: u64,
    pub(super) deadline: tokio::time::Instant,
    pub(super) timeout: Duration,
    pub(super) started: Instant,
    /// Output bytes of this turn, against `limits.max_output_bytes`.
    pub(super) bytes: usize,
    pub(super) max_bytes: usize,
    pub(super) max_workers: usize,
    /// The worker is not kept after the turn (an ephemeral run, a draining daemon).
    pub(super) retire_after: bool,
}

pub(super) enum TurnStep {
    Events(Vec<Event>),
    Call(crate::tools::McpCall),
    End(ExitInfo),
}

impl WarmTurn {
    pub(super) async fn step(&mut self, calls: Option<&mut Calls>) -> TurnStep {
        let Some(w) = self.worker.as_mut() else {
            return TurnStep::End(ExitInfo::default());
        };
        let backend = w.backend;
        let next = tokio::select! {
            ev = w.recv() => ev,
            Some(c) = next_call(calls) => return TurnStep::Call(c),
            _ = tokio::time::sleep_until(self.deadline) => {
                self.give_up();
                return TurnStep::End(ExitInfo {
                    timed_out: true,
                    duration: self.started.elapsed(),
                    ..Default::default()
                });
            }
        };
        match next {
            Some(ProcEvent::Line(line)) => {
                self.bytes += line.len() + 1;
                if self.bytes > self.max_bytes {
                    self.give_up();
                    return TurnStep::Events(vec![Event::Error {
                        message: format!(
                            "the turn's output passed limits.max_output_bytes ({} bytes); the {backend} worker was stopped",
                            self.max_bytes
                        ),
                    }]);
                }
                let step = w.on_line(&line);
                for e in &step.events {
                    if let Event::SessionStarted { session_id, .. } = e {
                        w.session = Some(session_id.clone());
                    }
                }
                if !step.write.is_empty() {
                    if let Err(e) = w.write(&step.write).await {
                        let pid = w.pid;
                        self.give_up();
                        return TurnStep::Events(vec![Event::Error {
                            message: format!(
                                "cannot write to the {backend} worker (pid {pid}): {e}"
                            ),
                        }]);
                    }
                }
                if step.end {
                    self.finish_turn();
                }
                TurnStep::Events(step.events)
            }
            Some(ProcEvent::Exit(info)) => {
                let pid = w.pid;
                self.give_up();
                let how = match (info.code, info.signal) {
                    (Some(c), _) => format!("code {c}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "an unknown status".into(),
                };
                let tail = info
                    .stderr_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| format!(": {}", clip_quote(l.trim())))
                    .unwrap_or_default();
                TurnStep::Events(vec![Event::Error {
                    message: format!(
                        "the {backend} worker (pid {pid}) exited during the turn with {how}{tail}"
                    ),
                }])
            }
            None => {
                self.give_up();
                TurnStep::End(ExitInfo::default())
            }
        }
    }

    /// The worker is lost to this turn (dead, or stopped: dropping it kills its group), and so is
    /// the turn's concurrency slot.
    pub(super) fn give_up(&mut self) {
        self.worker = None;
        self.permit = None;
    }

    /// The turn is over: the worker waits for the session's next turn (or is retired).
    pub(super) fn finish_turn(&mut self) {
        self.permit = None;
        if let Some(mut w) = self.worker.take() {
            w.turns += 1;
            if self.retire_after || w.session.is_none() || !w.driver().healthy() {
                return; // dropped: killed with its group
            }
            self.workers.park(w, self.max_workers);
        }
    }

    /// Whether the turn is over (its worker parked, retired or lost).
    pub(super) fn over(&self) -> bool {
        self.worker.is_none()
    }
}

/// How long an interrupted turn may take to end before its worker is stopped.
pub(super) const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

impl Drop for WarmTurn {
    /// A turn left before its end (client gone, cancelled): the CLI is asked to interrupt it and
    /// the worker is kept for the session's next turn once the turn ended; a CLI that cannot be
    /// interrupted now, or does not end the turn within `INTERRUPT_GRACE`, is stopped with its
    /// group.
    fn drop(&mut self) {
        let Some(mut w) = self.worker.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(lines) = w.driver().interrupt() else {
            return;
        };
        let (workers, max, seq) = (self.workers.clone(), self.max_workers, self.seq);
        let (busy, permit, retire) = (self.busy.take(), self.permit.take(), self.retire_after);
        // The session's next turn waits for this (see `Workers::after_interrupt`).
        let interrupting = w.session.as_deref().map(|s| workers.interrupting(s));
        rt.spawn(async move {
            let _held = (busy, permit, interrupting);
            let ended = tokio::time::timeout(INTERRUPT_GRACE, interrupt_turn(&mut w, &lines))
                .await
                .unwrap_or(false);
            let session = w.session.clone();
            let current = session
                .as_deref()
                .is_some_and(|s| workers.last_turn(s) == seq);
            if ended && current && !retire && w.driver().healthy() {
                w.turns += 1;
                tracing::info!(worker = %w.id, backend = %w.backend, pid = w.pid, "turn interrupted; the worker stays");
                workers.park(w, max);
            } else {
                tracing::info!(worker = %w.id, backend = %w.backend, pid = w.pid, ended, "turn interrupted; the worker is stopped");
            }
        });
    }
}

/// Writes the interrupt and reads the worker's output up to the turn's end (true) or its exit.
pub(super) async fn interrupt_turn(w: &mut crate::worker::Worker, lines: &[String]) -> bool {
    if w.write(lines).await.is_err() {
        return false;
    }
    while let Some(ev) = w.recv().await {
        let ProcEvent::Line(line) = ev else {
            return false;
        };
        let step = w.on_line(&line);
        if !step.write.is_empty() && w.write(&step.write).await.is_err() {
            return false;
        }
        if step.end {
            return true;
        }
    }
    false
}

/// The settings a warm worker is started with for `inv`, as a key: a worker only takes a turn
/// that would have started it the same way (the resumed session and the turn's own input —
/// prompt, images — aside).
pub(crate) fn worker_key(
    ctx: &Ctx,
    inv: &Invocation,
) -> Result<crate::worker::WorkerKey, EngineError> {
    let cfg = backend_settings(ctx, inv.backend)?;
    let mut base = inv.clone();
    base.resume = None;
    base.prompt.clear();
    base.images.clear();
    base.image_files.clear();
    base.output_schema_file = None;
    let live = ctx
        .adapter(inv.backend)
        .live(&base, &cfg)
        .map_err(|e| EngineError::bad(Code::InvalidFlags, e.to_string()))?;
    let session = live.driver.key();
    let p = prepare_command(ctx, &base, &cfg, live.command)?;
    Ok(crate::worker::WorkerKey {
        program: p.spec.program,
        args: p.spec.args,
        env: p.spec.env,
        cwd: p.spec.cwd,
        session,
    })
}

/// Starts a warm worker for `inv`'s session (resuming `inv.resume` when set) and writes its
/// handshake.
pub(crate) async fn spawn_worker(
    ctx: &Ctx,
    inv: &Invocation,
    key: crate::worker::WorkerKey,
) -> Result<crate::worker::Worker, EngineError> {
    let cfg = backend_settings(ctx, inv.backend)?;
    let live = ctx
        .adapter(inv.backend)
        .live(inv, &cfg)
        .map_err(|e| EngineError::bad(Code::InvalidFlags, e.to_string()))?;
    let p = prepare_command(ctx, inv, &cfg, live.command)?;
    ensure_state(p.adapter, &p.spec).await;
    let (handle, stdin) = ctx
        .supervisor
        .spawn_live(p.spec)
        .map_err(|e| EngineError::Spawn(format!("{e}; {}", inv.backend.install_hint())))?;
    let mut w = crate::worker::Worker::new(inv.backend, key, handle, stdin, live.driver);
    w.session = inv.resume.clone();
    let open = w.driver().open();
    w.write(&open).await.map_err(|e| {
        EngineError::Spawn(format!(
            "the {} worker (pid {}) did not take its handshake: {e}",
            inv.backend, w.pid
        ))
    })?;
    tracing::info!(worker = %w.id, backend = %inv.backend, pid = w.pid, resume = inv.resume.is_some(), "worker started");
    Ok(w)
}

/// Starts `inv` as a turn of a warm worker when its backend runs warm and the live mode takes
/// this turn: the session's own worker, a pooled one for a new session, else a new one.
pub(super) async fn warm_turn(
    ctx: &Ctx,
    inv: &Invocation,
    cfg: &BackendSettings,
) -> Result<Option<WarmTurn>, EngineError> {
    if cfg.mode != BackendMode::Warm {
        return Ok(None);
    }
    let live = ctx
        .adapter(inv.backend)
        .live(inv, cfg)
        .map_err(|e| EngineError::bad(Code::InvalidFlags, e.to_string()))?;
    if !live.driver.accepts(inv) {
        return Ok(None);
    }
    let p = prepare_command(ctx, inv, cfg, live.command)?;
    let key = worker_key(ctx, inv)?;
    if let Some(sid) = &inv.resume {
        // The session's last turn may still be ending in its worker (interrupted).
        ctx.workers
            .after_interrupt(sid, INTERRUPT_GRACE + Duration::from_secs(1))
            .await;
    }
    let permit = ctx
        .supervisor
        .limiter
        .acquire(inv.backend, p.limits)
        .await?;
    let backend = inv.backend;
    let found = match &inv.resume {
        Some(sid) => ctx.workers.take_session(backend, sid, &key),
        None => {
            ctx.workers.note_new_session(ctx, inv, &key);
            ctx.workers.take_pooled(backend, &key)
        }
    };
    if found.is_none() && inv.resume.is_some() && !live.driver.resumes() {
        return Ok(None);
    }
    let reason = match (&found, &inv.resume) {
        (Some(_), _) => "reused",
        (None, Some(_)) => "resume",
        (None, None) => "new",
    };
    metrics::counter!("clinvk_worker_turns_total", "backend" => backend.as_str(), "worker" => reason).increment(1);
    let mut worker = match found {
        Some(w) => w,
        None => {
            metrics::counter!("clinvk_worker_spawns_total", "backend" => backend.as_str(), "reason" => reason).increment(1);
            spawn_worker(ctx, inv, key.clone()).await?
        }
    };
    let lines = worker.driver().turn(inv);
    if let Err(e) = worker.write(&lines).await {
        // The turn never reached the CLI: an idle worker that died meanwhile is replaced once.
        if reason != "reused" {
            return Err(EngineError::Spawn(format!(
                "the {backend} worker (pid {}) does not take input: {e}",
                worker.pid
            )));
        }
        if inv.resume.is_some() && !live.driver.resumes() {
            return Ok(None); // the session continues one-shot
        }
        tracing::info!(worker = %worker.id, backend = %backend, error = %e, "the idle worker is gone; starting another");
        metrics::counter!("clinvk_worker_spawns_total", "backend" => backend.as_str(), "reason" => "replace").increment(1);
        worker = spawn_worker(ctx, inv, key).await?;
        let lines = worker.driver().turn(inv);
        worker.write(&lines).await.map_err(|e| {
            EngineError::Spawn(format!(
                "the {backend} worker (pid {}) does not take input: {e}",
                worker.pid
            ))
        })?;
    }
    let busy = ctx.workers.busy(&worker);
    let seq = inv
        .resume
        .as_deref()
        .map(|s| ctx.workers.begin_turn(s))
        .unwrap_or(0);
    tracing::info!(run = %worker.id, backend = %backend, pid = worker.pid, turn = worker.turns + 1, worker = reason, "turn started");
    let settings = ctx.settings();
    Ok(Some(WarmTurn {
        id: worker.id.clone(),
        worker: Some(worker),
        workers: ctx.workers.clone(),
        busy: Some(busy),
        permit: Some(permit),
        seq,
        deadline: tokio::time::Instant::now() + p.spec.timeout,
        timeout: p.spec.timeout,
        started: Instant::now(),
        bytes: 0,
        max_bytes: settings.limits.max_output_bytes,
        max_workers: crate::worker::max_workers(settings.limits.max_workers),
        retire_after: inv.ephemeral,
    }))
}
