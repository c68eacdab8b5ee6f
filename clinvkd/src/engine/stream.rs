//! A started run as one stream of events: a one-shot process or a warm worker's turn, parsed
//! into the unified events, its client-tool calls, and its summary at the end. Dropping it
//! cancels the run.

use super::*;

/// The client-tool calls of a run (its MCP endpoint is open while this lives).
pub(super) type Calls = (
    crate::tools::Registration,
    tokio::sync::mpsc::UnboundedReceiver<crate::tools::McpCall>,
);

/// A started run: its process, and the parser turning its output into events. Dropping it
/// cancels the run (its process group is killed).
pub(crate) struct RunStream {
    pub(super) source: Source,
    pub(super) backend: Backend,
    pub(super) model: Option<String>,
    pub(super) started: Instant,
    pub(super) outcome: Outcome,
    /// Events parsed but not handed out yet.
    pub(super) pending: std::collections::VecDeque<Event>,
    pub(super) first_output: bool,
    pub(super) exit: Option<ExitInfo>,
    pub(super) finished: bool,
    /// Structured output: the schema the final answer must match.
    pub(super) output_schema: Option<serde_json::Value>,
    /// The schema file a CLI reads (codex), removed with the run.
    pub(super) _schema_file: Option<tempfile::NamedTempFile>,
    /// The run's image files (codex, gemini), removed with the run.
    pub(super) _images: Option<tempfile::TempDir>,
    /// Client tools: the calls the model makes.
    pub(super) calls: Option<Calls>,
}

/// Where a run's output comes from.
pub(super) enum Source {
    /// A process started for this run alone.
    Oneshot {
        handle: RunHandle,
        parser: Box<dyn backend::LineParser>,
    },
    /// A turn of a warm worker.
    Warm(Box<WarmTurn>),
}

impl Source {
    pub(super) fn id(&self) -> &str {
        match self {
            Source::Oneshot { handle, .. } => &handle.id,
            Source::Warm(t) => &t.id,
        }
    }
}

/// The next client-tool call, if the run has client tools (never ends otherwise).
pub(super) async fn next_call(calls: Option<&mut Calls>) -> Option<crate::tools::McpCall> {
    match calls {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl RunStream {
    /// Whether the run is a turn of a warm worker (not a process of its own).
    pub(crate) fn is_warm(&self) -> bool {
        matches!(self.source, Source::Warm(_))
    }

    /// A warm turn whose interruption would leave nothing of it in the session (see
    /// `Driver::interrupt_forgets_turn`).
    pub(crate) fn interrupt_forgets_turn(&mut self) -> bool {
        match &mut self.source {
            Source::Warm(turn) => turn
                .worker
                .as_mut()
                .is_some_and(|w| w.driver().interrupt_forgets_turn()),
            Source::Oneshot { .. } => false,
        }
    }

    /// Gives the run's concurrency slot back while it waits for a client's tool results (its
    /// CLI runs nothing meanwhile; `tools.max_parked_runs` bounds such runs).
    pub(crate) fn release_slot(&mut self) {
        match &mut self.source {
            Source::Oneshot { handle, .. } => handle.release_slot(),
            Source::Warm(turn) => turn.permit = None,
        }
    }

    /// Takes a concurrency slot again, like a new run: queued, within `queue_timeout_secs`.
    pub(crate) async fn restore_slot(&mut self, ctx: &Ctx) -> Result<(), EngineError> {
        let settings = ctx.settings();
        let limits = limits(&settings, &settings.backend(self.backend));
        let permit = ctx.supervisor.limiter.acquire(self.backend, limits).await?;
        match &mut self.source {
            Source::Oneshot { handle, .. } => handle.restore_slot(permit),
            Source::Warm(turn) => turn.permit = Some(permit),
        }
        Ok(())
    }
}

impl RunStream {
    /// The next update: the run's events as the CLI prints them, then one `Done`, then `None`.
    /// No task runs behind it: dropping the stream drops the process handle, which kills the
    /// process group.
    /// Another client-tool call of the same model step, if one comes within `wait` (the
    /// CLI's other output stays queued meanwhile).
    pub(crate) async fn next_call_within(
        &mut self,
        wait: Duration,
    ) -> Option<crate::tools::McpCall> {
        let (_, rx) = self.calls.as_mut()?;
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }

    /// The run continues after waiting for a client's tool results: it gets its whole timeout
    /// again (the wait was not the CLI's time; `tools.pending_timeout_secs` bounds it).
    pub(crate) fn restart_timeout(&mut self) {
        match &mut self.source {
            Source::Oneshot { handle, .. } => handle.restart_timeout(),
            Source::Warm(turn) => turn.deadline = tokio::time::Instant::now() + turn.timeout,
        }
    }

    /// The run waits up to `d` for a client's tool results: its timeout does not end it
    /// meanwhile (`restart_timeout` follows when it continues).
    pub(crate) fn hold_for(&mut self, d: Duration) {
        if let Source::Oneshot { handle, .. } = &self.source {
            handle.kill_in(d + Duration::from_secs(5));
        }
    }

    /// Stops the run for good: a warm worker is killed too (not interrupted and kept), e.g.
    /// when its client-tool calls expired with the CLI waiting on them.
    pub(crate) fn abandon(&mut self) {
        if let Source::Warm(turn) = &mut self.source {
            turn.give_up();
        }
    }

    pub(crate) async fn next(&mut self) -> Option<RunUpdate> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if self.first_output && matches!(e, Event::TextDelta { .. } | Event::Message { .. })
                {
                    self.first_output = false;
                    let mode = match self.source {
                        Source::Oneshot { .. } => "oneshot",
                        Source::Warm(_) => "warm",
                    };
                    metrics::histogram!("clinvk_time_to_first_output_seconds", "backend" => self.backend.as_str(), "mode" => mode)
                        .record(self.started.elapsed().as_secs_f64());
                }
                self.outcome.apply(&e);
                return Some(RunUpdate::Event(e));
            }
            if self.finished {
                return None;
            }
            if self.exit.is_some() {
                self.finished = true;
                return Some(RunUpdate::Done(self.summary()));
            }
            match &mut self.source {
                Source::Oneshot { handle, parser } => match tokio::select! {
                    ev = handle.events.recv() => ev,
                    Some(c) = next_call(self.calls.as_mut()) => return Some(RunUpdate::ToolCall(c)),
                } {
                    Some(ProcEvent::Line(line)) => self.pending.extend(parser.parse_line(&line)),
                    Some(ProcEvent::Exit(info)) => {
                        self.pending
                            .extend(parser.finish(info.code, &info.stderr_tail));
                        self.exit = Some(info);
                    }
                    // The process reader ended without an exit report.
                    None => self.exit = Some(ExitInfo::default()),
                },
                Source::Warm(turn) => match turn.step(self.calls.as_mut()).await {
                    TurnStep::Call(c) => return Some(RunUpdate::ToolCall(c)),
                    TurnStep::Events(events) => {
                        self.pending.extend(events);
                        if turn.over() {
                            let failed = self.outcome.is_error
                                || self.pending.iter().any(|e| {
                                    matches!(
                                        e,
                                        Event::Error { .. } | Event::Result { is_error: true, .. }
                                    )
                                });
                            self.exit = Some(ExitInfo {
                                code: Some(if failed { 1 } else { 0 }),
                                duration: turn.started.elapsed(),
                                ..Default::default()
                            });
                        }
                    }
                    TurnStep::End(info) => self.exit = Some(info),
                },
            }
        }
    }

    /// How the run ended (recorded in the metrics and the log).
    pub(super) fn summary(&mut self) -> RunSummary {
        let info = self.exit.take().unwrap_or_default();
        let outcome = std::mem::take(&mut self.outcome);
        let mut summary = summarize(
            self.backend,
            self.model.clone(),
            outcome,
            &info,
            self.started.elapsed(),
        );
        if let (Some(schema), None) = (&self.output_schema, &summary.error) {
            match check_structured(&summary.output, schema) {
                Ok(json) => summary.output = json,
                Err(why) => summary.error = Some(format!("{}: {why}", self.backend)),
            }
        }
        let status = summary.outcome().as_str();
        metrics::counter!("clinvk_backend_executions_total", "backend" => self.backend.as_str(), "status" => status).increment(1);
        metrics::histogram!("clinvk_backend_execution_duration_seconds", "backend" => self.backend.as_str())
            .record(summary.duration_ms as f64 / 1000.0);
        tracing::info!(run = %self.source.id(), backend = %self.backend, exit_code = summary.exit_code, status, duration_ms = summary.duration_ms, "run finished");
        summary
    }
}

pub(super) fn summarize(
    backend: Backend,
    model: Option<String>,
    o: Outcome,
    info: &ExitInfo,
    elapsed: Duration,
) -> RunSummary {
    let exit_code = info.exit_code();
    let error = if info.timed_out {
        Some(format!(
            "{backend} timed out after {} s and was stopped",
            elapsed.as_secs()
        ))
    } else if info.cancelled {
        Some("cancelled".to_string())
    } else if let Some(e) = o.error.as_deref() {
        Some(format!("{backend}: {}", clip_quote(e)))
    } else if o.is_error || exit_code != 0 {
        let tail = clip_quote(
            info.stderr_tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim(),
        );
        Some(format!(
            "{backend} exited with {}{}",
            match (info.code, info.signal) {
                (Some(c), _) => format!("code {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => "an unknown status".into(),
            },
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        ))
    } else {
        None
    };
    let error_from_cli = !info.timed_out && !info.cancelled && error.is_some();
    // Refused for a spent quota window: only when it failed, and before any output.
    let output = o.output();
    let refused = o
        .refused
        .filter(|_| error.is_some() && output.trim().is_empty() && !info.timed_out);
    RunSummary {
        backend,
        model,
        exit_code,
        duration_ms: elapsed.as_millis() as u64,
        output,
        error,
        usage: o.usage,
        backend_session_id: o.session_id,
        timed_out: info.timed_out,
        cancelled: info.cancelled,
        error_from_cli,
        refused,
    }
}

/// The longest piece of a CLI's own output (stderr, error text) quoted in an error message.
pub(super) const MAX_QUOTE_CHARS: usize = 1000;

/// `text` cut to `MAX_QUOTE_CHARS` characters (marked when cut).
pub(super) fn clip_quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTE_CHARS) {
        Some((i, _)) => format!("{}… (cut)", &text[..i]),
        None => text.to_string(),
    }
}
