//! Driving a started run to the answer: text pieces and client-tool calls, the non-streamed
//! result, and the SSE stream with keep-alives.

use super::*;
use crate::error::Code;

/// What a run produces, reduced to what the compatible APIs show.
pub(crate) enum Piece {
    Text(String),
    /// The model's reasoning, as the CLI printed it (only when the request asks for it).
    Thinking(String),
    /// The model called client tools: the answer ends with them, the run is parked.
    Calls(Vec<CallView>),
    /// The text reached one of the request's stop sequences (not shown): the answer ends here.
    Stopped(String),
    Done(Box<Completed>),
}

/// A client-tool call as the answer shows it.
#[derive(Debug, Clone)]
pub(crate) struct CallView {
    pub(crate) id: String,
    /// The function's name as the client gave it.
    pub(crate) name: String,
    /// The Responses API namespace it came in (a `namespace` tool), if any.
    pub(crate) namespace: Option<String>,
    pub(crate) arguments: serde_json::Map<String, Value>,
}

impl CallView {
    /// The arguments as JSON text (the OpenAI formats carry them so).
    pub(crate) fn arguments_json(&self) -> String {
        Value::Object(self.arguments.clone()).to_string()
    }
}

/// How long a batch of calls the CLI announced waits for the calls still to come (a CLI that
/// runs them one by one sends only the first; then the batch goes out without the others).
const BATCH_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// How long after a call others are taken into the same answer (a call that comes later is
/// answered in the next round trip: nothing is lost, only batching).
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(150);

/// Reads a run's updates as text pieces: token deltas as the CLI prints them, or whole messages
/// when the CLI prints no deltas (a whole message after deltas would repeat them); client-tool
/// calls as one batch per model step.
pub(crate) struct Pieces {
    run: PromptRun,
    saw_delta: bool,
    pub(crate) emitted: String,
    pending: Option<Box<Completed>>,
    tools: Option<ClientTools>,
    /// Client-tool calls the CLI printed (reported name, input) since the last batch: how many
    /// calls to wait for, and their order.
    announced: Vec<(String, Value)>,
    batch: Vec<PendingCall>,
    require_call: bool,
    owner: Option<String>,
    one_call: bool,
    /// The request's stop sequences, and the text held back because it may begin one.
    stop: Vec<String>,
    held: String,
    /// A stop sequence met after the text just handed out.
    pending_stop: Option<String>,
    /// The request asks for the reasoning text; what came of it so far.
    show_reasoning: bool,
    pub(crate) thought: String,
}

impl Pieces {
    pub(crate) fn new(started: Started) -> (Self, Continuity) {
        let Started {
            run,
            meta,
            tools,
            require_call,
            owner,
            one_call,
            stop,
            show_reasoning,
        } = started;
        (
            Pieces {
                run,
                saw_delta: false,
                emitted: String::new(),
                pending: None,
                tools,
                announced: Vec::new(),
                batch: Vec::new(),
                require_call,
                owner,
                one_call,
                stop,
                held: String::new(),
                pending_stop: None,
                show_reasoning,
                thought: String::new(),
            },
            meta,
        )
    }

    /// Parks the run at the calls of the last `Piece::Calls` until the client's results come.
    pub(crate) fn park(self, ctx: &Ctx) {
        let Some(tools) = self.tools else { return };
        let settings = ctx.settings();
        let timeout = std::time::Duration::from_secs(settings.tools.pending_timeout_secs);
        ctx.tools.park(
            Parked {
                run: self.run,
                calls: self.batch,
                owner: self.owner,
                tools,
            },
            timeout,
            settings.tools.max_parked_runs,
        );
    }

    /// After `Piece::Stopped`: the CLI stops spending. A warm turn is interrupted (its worker
    /// stays for the session's next turn; what the model wrote past the stop stays in the
    /// CLI's own history) — unless the CLI would then forget the turn (copilot), which, like a
    /// one-shot run, finishes unseen in the background, so its turn is recorded and its session
    /// stays whole and resumable.
    pub(crate) fn release(self, ctx: &Ctx) {
        let mut run = self.run;
        if run.is_warm() && !run.interrupt_forgets_turn() {
            drop(run);
        } else {
            ctx.work
                .spawn(async move { while run.next().await.is_some() {} });
        }
    }

    fn cut(&mut self, text: &str) -> (String, Option<String>) {
        cut_at_stop(&self.stop, &mut self.held, text)
    }

    pub(crate) async fn next(&mut self) -> Option<Piece> {
        if let Some(seq) = self.pending_stop.take() {
            return Some(Piece::Stopped(seq));
        }
        if let Some(r) = self.pending.take() {
            return Some(Piece::Done(r));
        }
        loop {
            let text = match self.run.next().await? {
                PromptUpdate::Event(Event::TextDelta { text }) => {
                    self.saw_delta = true;
                    text
                }
                PromptUpdate::Event(Event::Message { text }) if !self.saw_delta => {
                    if self.emitted.is_empty() || self.emitted.ends_with(char::is_whitespace) {
                        text
                    } else {
                        format!("\n\n{text}")
                    }
                }
                PromptUpdate::Event(Event::ToolUse { name, input, .. })
                    if self.tools.as_ref().is_some_and(|t| t.is_client_tool(&name)) =>
                {
                    self.announced.push((name, input));
                    continue;
                }
                PromptUpdate::ToolCall(call) => return Some(self.batch_from(call).await),
                PromptUpdate::Event(Event::Thinking { text })
                    if self.show_reasoning && !text.is_empty() =>
                {
                    self.thought.push_str(&text);
                    return Some(Piece::Thinking(text));
                }
                // Not part of the reply text (tools, thinking and usage are in the result or the
                // native stream only).
                PromptUpdate::Event(
                    Event::Message { .. }
                    | Event::SessionStarted { .. }
                    | Event::ToolUse { .. }
                    | Event::ToolResult { .. }
                    | Event::Thinking { .. }
                    | Event::Usage(_)
                    | Event::Result { .. }
                    | Event::Error { .. }
                    | Event::Limits(_)
                    | Event::Unparsed { .. },
                ) => continue,
                PromptUpdate::Done(mut r) => {
                    if self.require_call && r.error.is_none() {
                        r.result.error = Some(
                            "the model answered without calling a tool, which `tool_choice` requires"
                                .into(),
                        );
                        return Some(Piece::Done(r));
                    }
                    // A CLI that printed its answer only in the final result.
                    if self.emitted.is_empty() && !r.output.is_empty() && r.error.is_none() {
                        let whole = r.output.clone();
                        let (text, hit) = self.cut(&whole);
                        let text = text + &std::mem::take(&mut self.held);
                        if text.is_empty() {
                            if let Some(seq) = hit {
                                return Some(Piece::Stopped(seq));
                            }
                        }
                        self.emitted.push_str(&text);
                        // Hand out the text now and the result (or the stop) on the next call.
                        match hit {
                            Some(seq) => self.pending_stop = Some(seq),
                            None => self.pending = Some(r),
                        }
                        return Some(Piece::Text(text));
                    }
                    // The text held back in case it began a stop sequence did not.
                    let held = std::mem::take(&mut self.held);
                    if !held.is_empty() && r.error.is_none() {
                        self.emitted.push_str(&held);
                        self.pending = Some(r);
                        return Some(Piece::Text(held));
                    }
                    return Some(Piece::Done(r));
                }
            };
            let (text, hit) = self.cut(&text);
            if let Some(seq) = hit {
                self.emitted.push_str(&text);
                if !text.is_empty() {
                    self.pending_stop = Some(seq);
                    return Some(Piece::Text(text));
                }
                return Some(Piece::Stopped(seq));
            }
            if text.is_empty() {
                continue;
            }
            self.emitted.push_str(&text);
            return Some(Piece::Text(text));
        }
    }

    /// The calls of one model step: this one, the others the CLI announced (they may come a
    /// moment later), and any already waiting.
    async fn batch_from(&mut self, first: crate::tools::McpCall) -> Piece {
        self.require_call = false;
        self.batch = vec![PendingCall::new(first)];
        while self.batch.len() < self.announced.len() {
            match self.run.next_call_within(BATCH_GRACE).await {
                Some(c) => self.batch.push(PendingCall::new(c)),
                None => break,
            }
        }
        // Calls the CLI did not announce (codex and gemini print a call only as they make
        // it): those that follow within a moment belong to the same step.
        while let Some(c) = self.run.next_call_within(BATCH_WINDOW).await {
            self.batch.push(PendingCall::new(c));
        }
        // In the order the model made them (the endpoint gets them in any order).
        let announced = std::mem::take(&mut self.announced);
        let mut taken = vec![false; announced.len()];
        let mut rank = |c: &PendingCall| {
            let at = announced.iter().enumerate().position(|(i, (name, input))| {
                !taken[i]
                    && (name == &c.name || name.ends_with(&format!("__{}", c.name)))
                    && input.as_object() == Some(&c.arguments)
            });
            if let Some(i) = at {
                taken[i] = true;
            }
            at.unwrap_or(usize::MAX)
        };
        let mut ranked: Vec<(usize, PendingCall)> =
            self.batch.drain(..).map(|c| (rank(&c), c)).collect();
        ranked.sort_by_key(|(r, _)| *r);
        self.batch = ranked.into_iter().map(|(_, c)| c).collect();
        if self.one_call && self.batch.len() > 1 {
            // The client takes one call per answer: the model is asked to make the others
            // one at a time.
            for extra in self.batch.drain(1..) {
                extra.answer_now(crate::tools::ToolReply {
                    content: "Not run: this client takes one function call at a time. Call this function again after the result of the first call.".into(),
                    is_error: true,
                });
            }
        }
        Piece::Calls(
            self.batch
                .iter()
                .map(|c| {
                    let tool = self
                        .tools
                        .as_ref()
                        .and_then(|t| t.tools.iter().find(|t| t.name == c.name));
                    CallView {
                        id: c.id.clone(),
                        name: tool
                            .and_then(|t| t.client_name.clone())
                            .unwrap_or_else(|| c.name.clone()),
                        namespace: tool.and_then(|t| t.namespace.clone()),
                        arguments: c.arguments.clone(),
                    }
                })
                .collect(),
        )
    }
}

/// Splits new text at the stop sequences: what may be shown now, and the sequence met, if any
/// (the text from it on is never shown). The end of the text that could be the start of a
/// sequence is held back in `held` until the next piece tells.
fn cut_at_stop(stop: &[String], held: &mut String, text: &str) -> (String, Option<String>) {
    if stop.is_empty() {
        return (text.to_string(), None);
    }
    held.push_str(text);
    let first = stop
        .iter()
        .filter_map(|s| held.find(s.as_str()).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at);
    if let Some((at, seq)) = first {
        let seq = seq.clone();
        let shown = held[..at].to_string();
        held.clear();
        return (shown, Some(seq));
    }
    // The longest end of the held text that begins a stop sequence stays held.
    let keep = stop
        .iter()
        .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
        .filter(|p| held.ends_with(p))
        .map(str::len)
        .max()
        .unwrap_or(0);
    let split = held.len() - keep;
    let shown = held[..split].to_string();
    held.drain(..split);
    (shown, None)
}

/// The API error of a failed run (502 CLI failed, 504 timeout).
pub(crate) fn run_error(r: &Completed) -> Option<ApiError> {
    r.summary.api_error().or_else(|| {
        r.error
            .as_ref()
            .map(|e| ApiError::new(Kind::CliFailed, Code::BackendFailed, e.clone()))
    })
}

/// A finished, successful run (or one stopped at client-tool calls): the reply text, the
/// calls and the result.
pub(crate) struct Finished {
    pub(crate) text: String,
    /// Client-tool calls the answer ends with (the run waits for their results).
    pub(crate) calls: Vec<CallView>,
    /// The run's result (the default while it waits at tool calls).
    pub(crate) result: PromptResult,
    pub(crate) session_id: Option<String>,
    /// What served it (`X-Clinvk-Backend`, `X-Clinvk-Account`).
    pub(crate) served: crate::ops::prompt::ServedBy,
    /// For a route: the model name the answer shows (the target that served it).
    pub(crate) shown_model: Option<String>,
    /// The stop sequence the answer ended at (it is not part of `text`).
    pub(crate) stop_sequence: Option<String>,
    /// The model's reasoning the CLI printed, when the request asked for it (else empty).
    pub(crate) reasoning: String,
}

/// Runs to the end or to client-tool calls (the non-streaming answer); a failed run is an
/// error.
pub(crate) async fn complete(ctx: &Ctx, started: Started) -> Result<Finished, ApiError> {
    let stopped = ctx.stopped();
    tokio::pin!(stopped);
    let (mut pieces, meta) = Pieces::new(started);
    let result = loop {
        let piece = tokio::select! {
            p = pieces.next() => p,
            _ = &mut stopped => return Err(shutting_down()),
        };
        match piece {
            Some(Piece::Text(_) | Piece::Thinking(_)) => continue,
            Some(Piece::Calls(calls)) => {
                let text = pieces.emitted.clone();
                let reasoning = std::mem::take(&mut pieces.thought);
                pieces.park(ctx);
                return Ok(Finished {
                    text,
                    calls,
                    result: PromptResult::default(),
                    session_id: meta.session_id.clone(),
                    served: meta.served.get(),
                    shown_model: meta.shown_model(),
                    stop_sequence: None,
                    reasoning,
                });
            }
            Some(Piece::Stopped(seq)) => {
                let text = pieces.emitted.clone();
                let reasoning = std::mem::take(&mut pieces.thought);
                meta.commit(ctx, &text);
                pieces.release(ctx);
                return Ok(Finished {
                    text,
                    calls: Vec::new(),
                    result: PromptResult::default(),
                    session_id: meta.session_id.clone(),
                    served: meta.served.get(),
                    shown_model: meta.shown_model(),
                    stop_sequence: Some(seq),
                    reasoning,
                });
            }
            Some(Piece::Done(r)) => break *r,
            None => return Err(run_lost()),
        }
    };
    if let Some(e) = run_error(&result) {
        return Err(e);
    }
    let text = if result.output.is_empty() {
        pieces.emitted.clone()
    } else {
        result.output.clone()
    };
    meta.commit(ctx, &text);
    Ok(Finished {
        text,
        calls: Vec::new(),
        result: result.result,
        session_id: meta.session_id.clone(),
        served: meta.served.get(),
        shown_model: meta.shown_model(),
        stop_sequence: None,
        reasoning: pieces.thought,
    })
}

pub(super) fn shutting_down() -> ApiError {
    ApiError::new(
        Kind::Unavailable,
        Code::ShuttingDown,
        "the server is shutting down; retry shortly",
    )
}

/// One API style's stream frames.
pub(crate) trait Frames: Send + 'static {
    /// Frames before the first text (e.g. the role chunk, `message_start`).
    fn start(&mut self) -> Vec<Bytes>;
    fn delta(&mut self, text: &str) -> Vec<Bytes>;
    /// A piece of the model's reasoning (only when the request asked for it; it comes before
    /// the text of its step).
    fn thinking(&mut self, text: &str) -> Vec<Bytes>;
    /// The closing frames of a successful run.
    fn finish(&mut self, result: &PromptResult) -> Vec<Bytes>;
    /// The closing frames of an answer that ends with client-tool calls.
    fn calls(&mut self, calls: &[CallView]) -> Vec<Bytes>;
    /// The frame of a failure after the stream began; the stream ends after it.
    fn error(&mut self, e: &ApiError) -> Vec<Bytes>;
    /// The closing frames of an answer that ended at a stop sequence.
    fn stopped(&mut self, _sequence: &str) -> Vec<Bytes> {
        self.finish(&PromptResult::default())
    }
    /// The model name to show: a route's target served the answer (before `start`).
    fn serve_as(&mut self, model: &str);
    /// A frame that keeps the connection alive while the CLI is silent (clients ignore it).
    fn keepalive(&mut self) -> Bytes {
        Bytes::from_static(b": keep-alive\n\n")
    }
}

/// Resolves when the request waiting for the stream's status is gone (its client left).
async fn held_request_gone(decide: &mut Option<DecideTx>) {
    match decide {
        Some(d) => d.closed().await,
        None => std::future::pending().await,
    }
}

type DecideTx = tokio::sync::oneshot::Sender<Result<(), ApiError>>;

/// Streams a run as server-sent events. The HTTP status is decided by the first thing the run
/// produces: a run that fails before any text answers an ordinary error response (so clients
/// raise their usual exception with the right status); once text flowed, a failure is an error
/// frame, then the stream ends. Each piece is written as soon as the CLI printed it. While the
/// CLI is silent, a keep-alive frame goes out every `server.sse_keepalive_secs` (so proxies and
/// clients with idle timeouts do not cut a long run); a start-up silence that long decides the
/// status (200) early, so that keep-alives can flow.
pub(crate) async fn stream(
    ctx: &Ctx,
    started: Started,
    mut frames: impl Frames,
) -> Result<Response, ApiError> {
    let (pieces, meta) = Pieces::new(started);
    let session_id = meta.session_id.clone();
    let served = meta.served.clone();
    let shown = {
        let meta = meta.clone_shown();
        move || meta.shown_model()
    };
    let mut keepalive = crate::http::KeepAlive::new(ctx);
    let (decide, decided) = tokio::sync::oneshot::channel::<Result<(), ApiError>>();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let ctx2 = ctx.clone();
    // Tracked: a stop lets the stream run to its end within the grace period.
    ctx.work.spawn(async move {
        let mut pieces = pieces;
        let stopped = ctx2.stopped();
        tokio::pin!(stopped);
        let mut decide = Some(decide);
        let mut out: Vec<Bytes> = Vec::new();
        loop {
            // The next piece is awaited across keep-alives (never dropped half-way).
            let piece = {
                let next = pieces.next();
                tokio::pin!(next);
                loop {
                tokio::select! {
                    p = &mut next => break p,
                    // The client left while the CLI was silent: dropping `pieces` cancels it.
                    _ = tx.closed(), if decide.is_none() => return,
                    // ... or before the status was decided (the request's future is gone).
                    _ = held_request_gone(&mut decide), if decide.is_some() => return,
                    _ = &mut stopped => {
                        match decide.take() {
                            Some(d) => { let _ = d.send(Err(shutting_down())); }
                            None => {
                                for b in frames.error(&shutting_down()) { let _ = tx.send(b).await; }
                            }
                        }
                        return;
                    }
                    _ = keepalive.due() => {
                        keepalive.reset();
                        if let Some(d) = decide.take() {
                            // A long silent start: answer 200 now, so keep-alives can flow.
                            if d.send(Ok(())).is_err() {
                                return; // the request is gone
                            }
                            if let Some(m) = shown() {
                                frames.serve_as(&m);
                            }
                            out.extend(frames.start());
                        }
                        out.push(frames.keepalive());
                        for b in out.drain(..) {
                            if tx.send(b).await.is_err() { return; }
                        }
                    }
                }
                }
            };
            if let Some(d) = decide.take() {
                let failed = match &piece {
                    None => Some(run_lost()),
                    Some(Piece::Done(r)) => run_error(r),
                    Some(
                        Piece::Text(_) | Piece::Thinking(_) | Piece::Calls(_) | Piece::Stopped(_),
                    ) => None,
                };
                match failed {
                    Some(e) => {
                        let _ = d.send(Err(e));
                        return;
                    }
                    None => {
                        if d.send(Ok(())).is_err() {
                            return;
                        }
                        if let Some(m) = shown() {
                            frames.serve_as(&m);
                        }
                        out.extend(frames.start());
                    }
                }
            }
            let mut end = false;
            match piece {
                Some(Piece::Text(t)) => out.extend(frames.delta(&t)),
                Some(Piece::Thinking(t)) => out.extend(frames.thinking(&t)),
                Some(Piece::Calls(calls)) => {
                    out.extend(frames.calls(&calls));
                    // Parked before the client sees the calls: its results may come at once.
                    pieces.park(&ctx2);
                    for b in out.drain(..) {
                        if tx.send(b).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                Some(Piece::Stopped(seq)) => {
                    out.extend(frames.stopped(&seq));
                    meta.commit(&ctx2, &pieces.emitted);
                    pieces.release(&ctx2);
                    for b in out.drain(..) {
                        if tx.send(b).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                Some(Piece::Done(r)) => {
                    end = true;
                    match run_error(&r) {
                        Some(e) => out.extend(frames.error(&e)),
                        None => {
                            meta.commit(&ctx2, &pieces.emitted);
                            out.extend(frames.finish(&r));
                        }
                    }
                }
                None => {
                    end = true;
                    out.extend(frames.error(&run_lost()));
                }
            }
            for b in out.drain(..) {
                if tx.send(b).await.is_err() {
                    return; // client gone: dropping `pieces` cancels the CLI
                }
            }
            if end {
                return;
            }
            keepalive.reset();
        }
    });
    match decided.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(run_lost()),
    }
    let mut resp = crate::http::streamed(rx, "text/event-stream");
    set_run_headers(&mut resp, &session_id, &served.get());
    Ok(resp)
}

pub(super) fn run_lost() -> ApiError {
    ApiError::new(
        Kind::Internal,
        Code::RunLost,
        "the run ended without a result",
    )
}

#[cfg(test)]
mod tests {
    use super::cut_at_stop;

    fn run(stop: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut held = String::new();
        let mut shown = String::new();
        for p in pieces {
            let (s, hit) = cut_at_stop(&stop, &mut held, p);
            shown.push_str(&s);
            if hit.is_some() {
                return (shown, hit);
            }
        }
        shown.push_str(&held);
        (shown, None)
    }

    #[test]
    fn stops_before_a_sequence_split_across_pieces() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D and more"]),
            ("hello ".into(), Some("END".into()))
        );
        // A held prefix that turns out not to be a sequence is shown.
        assert_eq!(
            run(&["END"], &["hello E", "Nx"]),
            ("hello ENx".into(), None)
        );
        assert_eq!(run(&["END"], &["tail E"]), ("tail E".into(), None));
    }

    #[test]
    fn the_earliest_sequence_wins_and_text_is_never_split_inside_a_char() {
        assert_eq!(
            run(&["zz", "b"], &["a b c zz"]),
            ("a ".into(), Some("b".into()))
        );
        assert_eq!(
            run(&["éé"], &["café", "é!"]),
            ("caf".into(), Some("éé".into()))
        );
        assert_eq!(run(&[], &["x"]), ("x".into(), None));
    }
}
