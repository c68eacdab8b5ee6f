//! Running a plan: the session created or continued under its turn lock, the engine's run
//! streamed as prompt updates, the turn recorded at its end; the dry run.

use super::*;
use crate::session::check_write;

/// One update of a running prompt.
#[derive(Debug)]
pub(crate) enum PromptUpdate {
    Event(Event),
    /// The model called a client tool (only a run with client tools, see `tools`).
    ToolCall(crate::tools::McpCall),
    Done(Box<Completed>),
}

/// A started prompt: the run's stream with the session's bookkeeping on it. No task runs
/// behind it; the front end that renders it pulls the updates with `next`. Dropping it before
/// its end cancels the run (the CLI's process group is killed) and marks the session
/// interrupted.
pub(crate) struct PromptRun {
    pub(crate) session_id: Option<String>,
    pub(crate) backend: Backend,
    /// None once cancelled (dropping the stream killed the CLI's group).
    pub(super) run: Option<engine::RunStream>,
    pub(super) ctx: Ctx,
    /// The run's bookkeeping: its place in the live view and its usage row.
    pub(super) account: Account,
    pub(super) prompt: String,
    pub(super) backend_sid: Option<String>,
    /// Set once the end is being recorded: a drop after that is not an interruption.
    pub(super) ended: bool,
    /// See `Plan::redact`.
    pub(super) redact: Option<String>,
    /// The session's turn lock, held until the run ends or is dropped.
    pub(super) _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// The invocation as started (its own prompt): a move to another account starts from it.
    pub(super) inv: Invocation,
    /// Where the turn moves when a spent window refuses it before any output (`route`).
    pub(super) retries: std::collections::VecDeque<route::Candidate>,
    /// Events held back while the turn may still move (nothing of a refused run is shown).
    pub(super) held: Vec<Event>,
    /// Updates to hand out before reading the run again.
    pub(super) pending: std::collections::VecDeque<PromptUpdate>,
    /// What serves the turn (front ends name it in `X-Clinvk-Backend`/`X-Clinvk-Account`).
    pub(crate) served: Served,
    /// The tools the model called (kept in the turn: a moved session carries them).
    pub(super) tool_calls: Vec<api::TurnToolCall>,
}

/// An update of the run, or none to hand out yet.
enum Moved {
    No(PromptUpdate),
    /// Held back (the turn may still move), or the turn moved to another account.
    Held,
}

/// Whether an event is part of the answer (after it the turn can no longer move).
fn is_output(ev: &Event) -> bool {
    matches!(
        ev,
        Event::TextDelta { .. }
            | Event::Message { .. }
            | Event::ToolUse { .. }
            | Event::ToolResult { .. }
            | Event::Thinking { .. }
    )
}

impl PromptRun {
    /// See `RunStream::release_slot`.
    pub(crate) fn release_slot(&mut self) {
        if let Some(run) = self.run.as_mut() {
            run.release_slot();
        }
    }

    /// See `RunStream::restore_slot`.
    pub(crate) async fn restore_slot(&mut self) -> Result<(), ApiError> {
        match self.run.as_mut() {
            Some(run) => run.restore_slot(&self.ctx).await.map_err(|e| e.api_error()),
            None => Ok(()),
        }
    }

    /// Whether the run is a turn of a warm worker.
    pub(crate) fn is_warm(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.is_warm())
    }

    /// Whether interrupting it would leave nothing of the turn in the CLI's session.
    pub(crate) fn interrupt_forgets_turn(&mut self) -> bool {
        self.run
            .as_mut()
            .is_some_and(|r| r.interrupt_forgets_turn())
    }

    /// Another client-tool call of the same model step, if one comes within `wait`.
    pub(crate) async fn next_call_within(
        &mut self,
        wait: std::time::Duration,
    ) -> Option<crate::tools::McpCall> {
        self.run.as_mut()?.next_call_within(wait).await
    }

    /// See `RunStream::hold_for`.
    pub(crate) fn hold_for(&mut self, d: std::time::Duration) {
        if let Some(run) = self.run.as_mut() {
            run.hold_for(d);
        }
    }

    /// See `RunStream::restart_timeout`.
    pub(crate) fn restart_timeout(&mut self) {
        if let Some(run) = self.run.as_mut() {
            run.restart_timeout();
        }
    }

    /// Stops the run for good (its warm worker too); dropping it afterwards marks the session
    /// interrupted.
    pub(crate) fn abandon(&mut self) {
        if let Some(run) = self.run.as_mut() {
            run.abandon();
        }
    }

    /// The next update: the CLI's events as they come, then one `Done`, then `None`. A caller
    /// that abandons a pending `next` (a `select!` arm) must be leaving: the update it was
    /// waiting for is not handed out again (the session's writes still complete).
    pub(crate) async fn next(&mut self) -> Option<PromptUpdate> {
        if let Some(u) = self.pending.pop_front() {
            return Some(u);
        }
        if self.ended {
            return None;
        }
        loop {
            match self.next_update().await? {
                Moved::No(u) => return Some(u),
                Moved::Held => continue,
            }
        }
    }

    /// Whether the turn may still move to another account.
    fn may_move(&self) -> bool {
        !self.retries.is_empty() && self.account.first_output_ms.is_none()
    }

    /// The held events, then `u`.
    fn release(&mut self, u: PromptUpdate) -> PromptUpdate {
        if self.held.is_empty() {
            return u;
        }
        self.pending
            .extend(self.held.drain(..).map(PromptUpdate::Event));
        self.pending.push_back(u);
        self.pending.pop_front().unwrap_or_else(|| unreachable!())
    }

    /// The next update of the run, or `Held` when it was held back or the turn moved.
    async fn next_update(&mut self) -> Option<Moved> {
        let cancel = self.account.live.cancel.clone();
        let update = {
            let run = self.run.as_mut()?;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                u = run.next() => Some(u?),
            }
        };
        let Some(update) = update else {
            // Cancelled (dashboard, `POST /api/v1/runs/{id}/cancel`): dropping the stream kills
            // the CLI's process group; the run ends like a failed one.
            self.run = None;
            let summary = RunSummary {
                backend: self.backend,
                model: self.account.model.clone(),
                exit_code: -1,
                duration_ms: self.account.started.elapsed().as_millis() as u64,
                error: Some("cancelled".into()),
                cancelled: true,
                ..Default::default()
            };
            let u = self.done(summary).await;
            return Some(Moved::No(self.release(u)));
        };
        match update {
            RunUpdate::Event(ev) => {
                self.account.saw(&ev);
                if let Event::ToolUse { name, input, .. } = &ev {
                    self.tool_calls.push(api::TurnToolCall {
                        name: name.clone(),
                        input: input.clone(),
                    });
                }
                if let Event::SessionStarted { session_id, .. } = &ev {
                    self.backend_sid = Some(session_id.clone());
                    // Kept as soon as it is known: a crash mid-run stays resumable.
                    if let Some(id) = &self.session_id {
                        let b = session_id.clone();
                        let r = self
                            .ctx
                            .sessions
                            .update_async(id, |s| s.backend_session_id = Some(b))
                            .await;
                        check_write("backend_session_id", id, r);
                    }
                }
                let ev = self.redacted_event(ev);
                if self.may_move() && !is_output(&ev) {
                    self.held.push(ev);
                    return Some(Moved::Held);
                }
                Some(Moved::No(self.release(PromptUpdate::Event(ev))))
            }
            RunUpdate::ToolCall(c) => Some(Moved::No(self.release(PromptUpdate::ToolCall(c)))),
            RunUpdate::Done(mut summary) => {
                if summary.refused.is_some() && self.may_move() && self.move_on().await {
                    return Some(Moved::Held);
                }
                // Refused with no account left to try: `Retry-After` is the earliest reset of
                // the backend's accounts.
                if let Some(limits) = summary.refused.as_mut() {
                    if let Some(r) = route::earliest_reset(&self.ctx, self.backend) {
                        limits.resets_at = Some(limits.resets_at.map_or(r, |own| own.min(r)));
                    }
                }
                let u = self.done(summary).await;
                Some(Moved::No(self.release(u)))
            }
        }
    }

    /// A CLI's own error report, for a caller who may not read it: logged in full (with the
    /// request id), replaced by a message that points to the log.
    fn redacted(&self, what: &str, message: &str) -> Option<String> {
        let rid = self.redact.as_ref()?;
        tracing::warn!(request_id = %rid, backend = %self.backend, error = %message, "{what} (shown to admins only)");
        Some(format!(
            "the {} CLI failed; its own message is in the server log under request id {rid} (shown to admin keys)",
            self.backend
        ))
    }

    fn redacted_event(&self, ev: Event) -> Event {
        match ev {
            Event::Error { message } => Event::Error {
                message: self
                    .redacted("the CLI reported an error", &message)
                    .unwrap_or(message),
            },
            other => other,
        }
    }

    /// The end: the turn and the usage recorded, the result.
    pub(super) async fn done(&mut self, mut summary: RunSummary) -> PromptUpdate {
        self.ended = true;
        // Before the turn is recorded: the caller can read its session.
        if summary.error_from_cli {
            if let Some(e) = summary.error.as_deref() {
                if let Some(generic) = self.redacted("the CLI failed", e) {
                    summary.error = Some(generic);
                }
            }
        }
        self.record(&summary).await;
        self.account.finish(&summary).await;
        let result = PromptResult {
            session_id: self.session_id.clone(),
            backend: self.backend,
            account: self.account.account.clone(),
            exit_code: summary.exit_code,
            duration_ms: summary.duration_ms,
            output: summary.output.clone(),
            error: summary.error.clone(),
            token_usage: summary.usage,
            usage_limit: summary.refused.clone(),
        };
        PromptUpdate::Done(Box::new(Completed { result, summary }))
    }

    /// Runs to the end and returns the result.
    pub(crate) async fn finish(mut self) -> Completed {
        while let Some(u) = self.next().await {
            if let PromptUpdate::Done(r) = u {
                return *r;
            }
        }
        Completed {
            result: PromptResult {
                backend: self.backend,
                session_id: self.session_id.clone(),
                exit_code: -1,
                error: Some("cancelled".into()),
                ..Default::default()
            },
            summary: RunSummary::default(),
        }
    }

    /// Records the turn in the session (the write runs off the async threads and completes even
    /// if the caller goes away meanwhile). Owns what it needs: no borrow of the run lives across
    /// the write.
    pub(super) fn record(
        &self,
        summary: &RunSummary,
    ) -> impl std::future::Future<Output = ()> + Send {
        let session_id = self.session_id.clone();
        let ctx = self.ctx.clone();
        let prompt = self.prompt.clone();
        let backend_sid = self.backend_sid.clone();
        let summary = summary.clone();
        let tool_calls = self.tool_calls.clone();
        async move {
            let Some(id) = session_id else { return };
            record_turn(&ctx, &id, (prompt, tool_calls), backend_sid, &summary).await
        }
    }
}

pub(super) async fn record_turn(
    ctx: &Ctx,
    id: &str,
    (prompt, tool_calls): (String, Vec<api::TurnToolCall>),
    backend_sid: Option<String>,
    summary: &RunSummary,
) {
    let turn = Turn {
        tool_calls,
        at: clinvk_shared::types::now_rfc3339(),
        prompt,
        output_summary: summary.output.clone(),
        // `session.store_token_usage: false` keeps no token counts in the session.
        usage: if ctx.settings().session.store_token_usage {
            summary.usage
        } else {
            Default::default()
        },
        exit_code: summary.exit_code,
        duration_ms: summary.duration_ms,
        error: summary.error.clone(),
    };
    let bsid = summary.backend_session_id.clone().or(backend_sid);
    // A run cut short by the daemon's stop (grace period over) is interrupted, not failed.
    let interrupted = summary.failed() && ctx.is_draining();
    let (tid, failed) = (id.to_string(), summary.failed());
    let recorded = ctx
        .sessions
        .off_thread(move |st| {
            st.add_turn(&tid, turn, bsid, failed)?;
            if interrupted {
                st.update(&tid, |s| s.status = SessionStatus::Interrupted)?;
            }
            Ok(())
        })
        .await;
    check_write("turn", id, recorded);
}

impl Drop for PromptRun {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The consumer left before the end: the run is cancelled (dropping `run` kills its
        // group) and the session says so.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The account records the run as cancelled when it drops (after this).
        if let Some(id) = self.session_id.clone() {
            let ctx = self.ctx.clone();
            let turn = self._turn.take();
            let work = ctx.work.clone();
            work.spawn_on(
                async move {
                    let _turn = turn;
                    let r = ctx
                        .sessions
                        .update_async(&id, |s| s.status = SessionStatus::Interrupted)
                        .await;
                    check_write("status", &id, r);
                },
                &rt,
            );
        }
    }
}

/// Starts a planned prompt: takes the session's turn lock, creates the session (persisted before
/// the CLI starts, so a crash never loses it) and starts the run; the returned stream records
/// the turn at its end.
pub(crate) async fn start(ctx: &Ctx, plan: Plan) -> Result<PromptRun, ApiError> {
    let (mut first, mut retries) = route::route(ctx, &plan, plan.resume_session.as_ref(), true)?;
    let mut account = Account::open(ctx, &plan).await?;
    let lock = plan
        .resume_session
        .as_ref()
        .map(|s| ctx.sessions.turn_lock(&s.id));
    let guard = match lock {
        Some(l) => Some(l.lock_owned().await),
        None => None,
    };
    let mut plan = plan;
    // Under the turn lock, the session as the previous turn left it (its backend id may have
    // been set or changed since the plan was made).
    let mut previous: Option<Session> = None;
    if let Some(s) = &plan.resume_session {
        let fresh = ctx.sessions.get(&s.id, None).map_err(store_error)?;
        if fresh.backend_session_id.is_some() {
            plan.inv.resume = fresh.backend_session_id.clone();
        }
        previous = Some(fresh);
    }
    // A turn that waited for the lock: the one before may have moved the session meanwhile.
    if let (Some(fresh), Some(planned)) = (&previous, &plan.resume_session) {
        if (fresh.backend, &fresh.account) != (planned.backend, &planned.account) {
            (first, retries) = route::route(ctx, &plan, Some(fresh), true)?;
        }
    }
    let previous_status = previous.as_ref().map(|s| s.status);
    let original = plan.inv.clone();
    // The first candidate: the session's own account, or where the routing sends a new one.
    if first.backend != plan.inv.backend {
        plan.inv.backend = first.backend;
        plan.inv.model = first.model.clone();
        plan.inv.extra.clear();
    }
    plan.inv.account = first.account.clone();
    account.backend = first.backend;
    account.account = first.account_name();
    // A continued session whose account is gone or refused moves: a new CLI session there,
    // carrying the conversation.
    let moved = previous
        .as_ref()
        .filter(|s| s.backend != first.backend || s.account != first.account_name());
    if let Some(s) = moved {
        plan.inv.resume = None;
        plan.inv.prompt = route::carried_prompt(&s.turns, &original.prompt);
    }
    // The session is on disk before the CLI can start: a crash at any later point never loses
    // it (it is marked interrupted at the next start).
    let session_id = if let Some(s) = &plan.resume_session {
        let to = moved.map(|_| (first.backend, first.account_name(), plan.inv.model.clone()));
        let r = ctx
            .sessions
            .update_async(&s.id, move |s| {
                s.status = SessionStatus::Active;
                if let Some((backend, account, model)) = to {
                    s.backend = backend;
                    s.account = account;
                    s.model = model;
                    s.backend_session_id = None;
                }
            })
            .await;
        check_write("status", &s.id, r);
        Some(s.id.clone())
    } else if plan.ephemeral {
        None
    } else {
        let s = ctx
            .sessions
            .create_async(Session {
                backend: plan.inv.backend,
                account: first.account_name(),
                model: plan.inv.model.clone(),
                working_dir: plan.inv.workdir.as_ref().map(|w| w.display().to_string()),
                initial_prompt: clip(&plan.inv.prompt, 2000),
                tags: plan.tags.clone(),
                metadata: plan.metadata.clone(),
                source: plan.source.as_str().to_string(),
                owner: plan.owner.clone(),
                ..Default::default()
            })
            .await
            .map_err(store_error)?;
        Some(s.id)
    };
    // Client tools: one MCP endpoint per session (a warm worker keeps it across turns).
    if let Some(ct) = &mut plan.inv.client_tools {
        ct.scope = session_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    }
    let run = match engine::start(ctx, plan.inv.clone()).await {
        Ok(run) => run,
        Err(e) => {
            // Nothing ran: a new session goes away, a continued one gets its status back.
            match (&session_id, previous_status) {
                (Some(id), Some(status)) => {
                    let r = ctx
                        .sessions
                        .update_async(id, move |s| s.status = status)
                        .await;
                    check_write("status", id, r);
                }
                (Some(id), None) => {
                    let gone = id.clone();
                    let r = ctx
                        .sessions
                        .off_thread(move |st| st.delete(&gone, None))
                        .await;
                    check_write("delete", id, r);
                }
                _ => {}
            }
            let failed = RunSummary {
                backend: plan.inv.backend,
                exit_code: -1,
                error: Some(e.to_string()),
                ..Default::default()
            };
            account.finish(&failed).await;
            return Err(e.api_error());
        }
    };
    account.running = true;
    // The CLI holds its slot now: the live view hears of it (and of the new session's id).
    let sid = session_id.clone();
    ctx.live.update(&account.live.id, move |r| {
        if sid.is_some() {
            r.session_id = sid;
        }
    });
    let served = Served::default();
    served.set(ServedBy {
        backend: plan.inv.backend,
        model: plan.inv.model.clone(),
        account: first.account_name(),
    });
    let mut inv = plan.inv;
    inv.prompt = original.prompt.clone();
    Ok(PromptRun {
        session_id,
        backend: inv.backend,
        run: Some(run),
        ctx: ctx.clone(),
        account,
        prompt: original.prompt,
        backend_sid: None,
        ended: false,
        redact: plan.redact,
        _turn: guard,
        inv,
        retries: retries.into(),
        held: Vec::new(),
        pending: Default::default(),
        served,
        tool_calls: Vec::new(),
    })
}

/// The dry-run answer: the exact argv, nothing started.
pub(crate) fn dry_run(ctx: &Ctx, plan: &Plan) -> Result<DryRun, ApiError> {
    let (first, _) = route::route(ctx, plan, plan.resume_session.as_ref(), false)?;
    let mut inv = plan.inv.clone();
    inv.account = first.account;
    let d = engine::dry_run(ctx, &inv).map_err(|e| e.api_error())?;
    Ok(DryRun {
        dry_run: true,
        backend: d.backend,
        command: d.argv,
        program: d.program,
        cwd: d.cwd,
        env: d.env,
        session_id: plan.resume_session.as_ref().map(|s| s.id.clone()),
        worker_command: d.worker_argv,
        stdin: d.stdin,
    })
}

/// An event as the native stream and `clinvk` show it; `None` for events they do not show. A
/// whole message after token deltas is skipped (it would repeat them).
pub(crate) fn run_event(ev: &Event, saw_delta: &mut bool) -> Option<RunEvent> {
    Some(match ev {
        Event::SessionStarted { session_id, model } => RunEvent::Init {
            backend_session_id: session_id.clone(),
            model: model.clone(),
        },
        Event::TextDelta { text } => {
            *saw_delta = true;
            RunEvent::Message {
                text: text.clone(),
                role: "assistant".into(),
                delta: true,
            }
        }
        Event::Message { text } if !*saw_delta => RunEvent::Message {
            text: text.clone(),
            role: "assistant".into(),
            delta: false,
        },
        Event::ToolUse { id, name, input } => RunEvent::ToolUse {
            id: id.clone(),
            name: name.clone(),
            input: input.clone(),
        },
        Event::ToolResult {
            id,
            output,
            is_error,
        } => RunEvent::ToolResult {
            id: id.clone(),
            output: output.clone(),
            is_error: *is_error,
        },
        Event::Thinking { text } => RunEvent::Thinking { text: text.clone() },
        Event::Error { message } => RunEvent::Error {
            message: message.clone(),
            exit_code: None,
        },
        // Folded into the result (usage, final text), kept in the log (unparsed lines), or in
        // the quota book (limits: `GET /api/v1/accounts`).
        Event::Message { .. }
        | Event::Usage(_)
        | Event::Result { .. }
        | Event::Unparsed { .. }
        | Event::Limits(_) => return None,
    })
}
