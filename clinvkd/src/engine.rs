//! The core operation every API uses: run one invocation of a backend CLI and stream its
//! unified events. It checks the backend, builds the argv through the backend's adapter (the one
//! place argv is built), takes a concurrency slot, starts the process under the supervisor and
//! parses its output line by line. Dropping the stream cancels the run (its group is killed).

use crate::backend::{self, Event, Invocation, Outcome};
use crate::ctx::Ctx;
use crate::error::{ApiError, Kind};
use crate::supervisor::{CapacityError, ExitInfo, Limits, ProcEvent, RunHandle, SpawnSpec};
use clinvk_shared::api::Backend;
use clinvk_shared::config::{BackendMode, BackendSettings};
use clinvk_shared::types::TokenUsage;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    #[error("backend {0} is disabled in the configuration (backends.{0}.enabled)")]
    Disabled(Backend),
    #[error("backend {name} is not available: {message}")]
    Unavailable { name: Backend, message: String },
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Spawn(String),
    #[error("the server is shutting down; retry shortly")]
    Draining,
}

impl EngineError {
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        EngineError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The API error (status and code) for this failure; the style decides the shape.
    pub(crate) fn api_error(&self) -> ApiError {
        let msg = self.to_string();
        match self {
            EngineError::Disabled(_) => ApiError::new(Kind::Unavailable, "backend_disabled", msg),
            EngineError::Unavailable { .. } => {
                ApiError::new(Kind::Unavailable, "backend_unavailable", msg)
            }
            EngineError::Capacity(_) => {
                let mut e = ApiError::new(Kind::Unavailable, "at_capacity", msg);
                e.retry_after_secs = Some(5);
                e
            }
            EngineError::BadRequest { code, .. } => ApiError::new(Kind::BadRequest, *code, msg),
            EngineError::Spawn(_) => ApiError::new(Kind::Unavailable, "backend_unavailable", msg),
            EngineError::Draining => ApiError::new(Kind::Unavailable, "shutting_down", msg),
        }
    }
}

/// How a run ended, for every API style to render.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct RunSummary {
    pub(crate) backend: Backend,
    pub(crate) model: Option<String>,
    pub(crate) exit_code: i32,
    pub(crate) duration_ms: u64,
    pub(crate) output: String,
    /// Set when the run failed: CLI-reported error, non-zero exit, timeout, cancellation.
    pub(crate) error: Option<String>,
    pub(crate) usage: TokenUsage,
    /// The backend's own session id (for resume).
    pub(crate) backend_session_id: Option<String>,
    pub(crate) timed_out: bool,
    pub(crate) cancelled: bool,
}

impl RunSummary {
    pub(crate) fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// The API error a compatible API answers for a failed run (502 CLI failed, 504 timeout).
    pub(crate) fn api_error(&self) -> Option<ApiError> {
        let msg = self.error.clone()?;
        Some(if self.timed_out {
            ApiError::new(Kind::Timeout, "backend_timeout", msg)
        } else {
            ApiError::new(Kind::CliFailed, "backend_failed", msg)
        })
    }
}

/// One update of a running invocation.
#[derive(Debug)]
pub(crate) enum RunUpdate {
    Event(Event),
    /// The model called a client tool; the CLI waits for the answer (see `tools`).
    ToolCall(crate::tools::McpCall),
    Done(RunSummary),
}

/// The client-tool calls of a run (its MCP endpoint is open while this lives).
type Calls = (
    crate::tools::Registration,
    tokio::sync::mpsc::UnboundedReceiver<crate::tools::McpCall>,
);

/// A started run: its process, and the parser turning its output into events. Dropping it
/// cancels the run (its process group is killed).
pub(crate) struct RunStream {
    source: Source,
    backend: Backend,
    model: Option<String>,
    started: Instant,
    outcome: Outcome,
    /// Events parsed but not handed out yet.
    pending: std::collections::VecDeque<Event>,
    first_output: bool,
    exit: Option<ExitInfo>,
    finished: bool,
    /// Structured output: the schema the final answer must match.
    output_schema: Option<serde_json::Value>,
    /// The schema file a CLI reads (codex), removed with the run.
    _schema_file: Option<tempfile::NamedTempFile>,
    /// The run's image files (codex, gemini), removed with the run.
    _images: Option<tempfile::TempDir>,
    /// Client tools: the calls the model makes.
    calls: Option<Calls>,
}

/// Where a run's output comes from.
enum Source {
    /// A process started for this run alone.
    Oneshot {
        handle: RunHandle,
        parser: Box<dyn backend::LineParser>,
    },
    /// A turn of a warm worker.
    Warm(Box<WarmTurn>),
}

impl Source {
    fn id(&self) -> &str {
        match self {
            Source::Oneshot { handle, .. } => &handle.id,
            Source::Warm(t) => &t.id,
        }
    }
}

/// One turn of a warm worker. The worker goes back to the idle set when the turn ends well;
/// a turn dropped before its end (cancelled, client gone) kills the worker with its group —
/// the session's next turn resumes it in a new one.
struct WarmTurn {
    id: String,
    worker: Option<crate::worker::Worker>,
    workers: crate::worker::Workers,
    busy: Option<crate::worker::BusyGuard>,
    permit: Option<crate::supervisor::Permit>,
    /// The number of this turn in its session (see `Workers::begin_turn`); 0 for a new session.
    seq: u64,
    deadline: tokio::time::Instant,
    timeout: Duration,
    started: Instant,
    /// Output bytes of this turn, against `limits.max_output_bytes`.
    bytes: usize,
    max_bytes: usize,
    max_workers: usize,
    /// The worker is not kept after the turn (an ephemeral run, a draining daemon).
    retire_after: bool,
}

enum TurnStep {
    Events(Vec<Event>),
    Call(crate::tools::McpCall),
    End(ExitInfo),
}

impl WarmTurn {
    async fn step(&mut self, calls: Option<&mut Calls>) -> TurnStep {
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
    fn give_up(&mut self) {
        self.worker = None;
        self.permit = None;
    }

    /// The turn is over: the worker waits for the session's next turn (or is retired).
    fn finish_turn(&mut self) {
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
    fn over(&self) -> bool {
        self.worker.is_none()
    }
}

/// How long an interrupted turn may take to end before its worker is stopped.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

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
        rt.spawn(async move {
            let _held = (busy, permit);
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
async fn interrupt_turn(w: &mut crate::worker::Worker, lines: &[String]) -> bool {
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

/// What a dry run reports: exactly what would run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DryRun {
    pub(crate) backend: Backend,
    pub(crate) program: String,
    /// The full argv, program first.
    pub(crate) argv: Vec<String>,
    pub(crate) cwd: Option<String>,
    /// Names of the extra environment variables set for the child (values are not shown).
    pub(crate) env: Vec<String>,
    /// In warm mode: the worker's argv.
    pub(crate) worker_argv: Option<Vec<String>>,
}

struct Prepared {
    adapter: &'static dyn backend::Adapter,
    spec: SpawnSpec,
    argv: Vec<String>,
    env_names: Vec<String>,
    limits: Limits,
}

fn prepare(ctx: &Ctx, inv: &Invocation) -> Result<Prepared, EngineError> {
    let cfg = backend_settings(ctx, inv.backend)?;
    let cmd = ctx
        .adapter(inv.backend)
        .build(inv, &cfg)
        .map_err(|e| EngineError::bad("invalid_flags", e.to_string()))?;
    prepare_command(ctx, inv, &cfg, cmd)
}

/// The settings of an enabled backend.
fn backend_settings(ctx: &Ctx, backend: Backend) -> Result<BackendSettings, EngineError> {
    let cfg = ctx.settings().backend(backend);
    if !cfg.enabled {
        return Err(EngineError::Disabled(backend));
    }
    Ok(cfg)
}

/// What starting `cmd` for `inv` takes: the program resolved, the environment, the limits.
fn prepare_command(
    ctx: &Ctx,
    inv: &Invocation,
    cfg: &BackendSettings,
    cmd: backend::CommandSpec,
) -> Result<Prepared, EngineError> {
    let settings = ctx.settings();
    let adapter = ctx.adapter(inv.backend);
    let status = ctx.backends.get(inv.backend);
    let program = match status {
        Some(st) if st.available => st.path.clone().map(PathBuf::from),
        Some(st) => {
            return Err(EngineError::Unavailable {
                name: inv.backend,
                message: st.message.unwrap_or_else(|| "not available".into()),
            })
        }
        None => None,
    };
    let program = program
        .or_else(|| {
            crate::availability::resolve(
                &cmd.program,
                crate::availability::child_path(cfg).as_deref(),
            )
        })
        .ok_or_else(|| EngineError::Unavailable {
            name: inv.backend,
            message: format!(
                "`{}` was not found; {}",
                cmd.program,
                inv.backend.install_hint()
            ),
        })?;
    let timeout = Duration::from_secs(
        cfg.timeout_secs
            .unwrap_or(settings.server.request_timeout_secs),
    );
    let mut argv = vec![program.display().to_string()];
    argv.extend(cmd.args.iter().cloned());
    let mut env: Vec<(String, String)> = cfg
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(inv.env.iter().cloned());
    env.extend(cmd.env.iter().cloned());
    let env_names = env.iter().map(|(k, _)| k.clone()).collect();
    let cwd = cmd.cwd.clone().or_else(|| inv.workdir.clone());
    Ok(Prepared {
        adapter,
        spec: SpawnSpec {
            backend: inv.backend,
            program,
            args: cmd.args,
            env,
            cwd,
            timeout,
            kill_grace: Duration::from_secs(settings.limits.kill_grace_secs),
            max_line_bytes: 8 * 1024 * 1024,
            max_output_bytes: settings.limits.max_output_bytes,
            stdin: cmd.stdin.map(String::into_bytes),
            env_remove: cfg.env_remove.clone(),
        },
        argv,
        env_names,
        limits: Limits {
            global: settings.limits.max_concurrent,
            backend: cfg.max_concurrent,
            queue: settings.limits.queue_size,
            queue_timeout: Duration::from_secs(settings.limits.queue_timeout_secs),
        },
    })
}

/// Whether the backend reads the output schema from a file (codex `--output-schema FILE`).
fn schema_in_file(inv: &Invocation) -> bool {
    inv.output_schema.is_some() && inv.backend == Backend::Codex
}

/// Writes the output schema where the CLI reads it (private, removed with the run).
fn write_schema_file(
    ctx: &Ctx,
    schema: &serde_json::Value,
) -> Result<tempfile::NamedTempFile, EngineError> {
    let dir = ctx.paths.state_dir.join("tmp");
    let fail = |e: std::io::Error| {
        EngineError::Spawn(format!(
            "cannot write the output schema file in {}: {e}",
            dir.display()
        ))
    };
    clinvk_shared::paths::ensure_private_dir(&dir).map_err(fail)?;
    let mut file = tempfile::Builder::new()
        .prefix("output-schema-")
        .suffix(".json")
        .tempfile_in(&dir)
        .map_err(fail)?;
    use std::io::Write as _;
    file.write_all(schema.to_string().as_bytes())
        .map_err(fail)?;
    file.flush().map_err(fail)?;
    Ok(file)
}

/// Whether the backend reads the images from files (codex `-i`, gemini `@path`); claude takes
/// them in its stream-json input.
fn images_in_files(inv: &Invocation) -> bool {
    !inv.images.is_empty() && inv.backend != Backend::Claude
}

fn image_extension(media_type: &str) -> &'static str {
    match media_type {
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => "png",
    }
}

/// Writes the images into a private folder of the run (removed with it).
fn write_images(ctx: &Ctx, inv: &mut Invocation) -> Result<tempfile::TempDir, EngineError> {
    use base64::Engine as _;
    let dir = ctx.paths.state_dir.join("tmp");
    let fail = |e: std::io::Error| {
        EngineError::Spawn(format!("cannot write the images in {}: {e}", dir.display()))
    };
    clinvk_shared::paths::ensure_private_dir(&dir).map_err(fail)?;
    let scratch = tempfile::Builder::new()
        .prefix("images-")
        .tempdir_in(&dir)
        .map_err(fail)?;
    for (i, img) in inv.images.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(img.data.trim())
            .map_err(|e| EngineError::bad("invalid_image", e.to_string()))?;
        let path = scratch.path().join(format!(
            "image-{}.{}",
            i + 1,
            image_extension(&img.media_type)
        ));
        std::fs::write(&path, bytes).map_err(fail)?;
        inv.image_files.push(path);
    }
    Ok(scratch)
}

/// The answer of a structured-output run, checked against its schema: the JSON text (a single
/// ```json fence around it is removed), or why it does not match.
pub(crate) fn check_structured(output: &str, schema: &serde_json::Value) -> Result<String, String> {
    let mut text = output.trim();
    if let Some(inner) = text.strip_prefix("```") {
        let inner = inner.strip_prefix("json").unwrap_or(inner);
        if let Some(body) = inner.trim_end().strip_suffix("```") {
            text = body.trim();
        }
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!("the answer is not JSON ({e}), but the request asked for structured output")
    })?;
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("the output schema is not a valid JSON Schema: {e}"))?;
    if let Err(e) = validator.validate(&value) {
        let at = e.instance_path().to_string();
        return Err(format!(
            "the answer does not match the output schema: {e}{}",
            if at.is_empty() {
                String::new()
            } else {
                format!(" (at {at})")
            }
        ));
    }
    Ok(text.to_string())
}

/// The exact argv that `start` would run, without starting anything.
pub(crate) fn dry_run(ctx: &Ctx, inv: &Invocation) -> Result<DryRun, EngineError> {
    let mut inv = inv.clone();
    if schema_in_file(&inv) {
        inv.output_schema_file = Some(ctx.paths.state_dir.join("tmp/output-schema-XXXXXX.json"));
    }
    if images_in_files(&inv) {
        inv.image_files = inv
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                ctx.paths.state_dir.join(format!(
                    "tmp/images-XXXXXX/image-{}.{}",
                    i + 1,
                    image_extension(&img.media_type)
                ))
            })
            .collect();
    }
    let inv = &inv;
    let p = prepare(ctx, inv)?;
    let cfg = backend_settings(ctx, inv.backend)?;
    let worker_argv = match cfg.mode {
        BackendMode::Warm => {
            let live = ctx
                .adapter(inv.backend)
                .live(inv, &cfg)
                .map_err(|e| EngineError::bad("invalid_flags", e.to_string()))?;
            if live.driver.accepts(inv) {
                Some(prepare_command(ctx, inv, &cfg, live.command)?.argv)
            } else {
                None
            }
        }
        BackendMode::Oneshot => None,
    };
    Ok(DryRun {
        backend: inv.backend,
        program: p.spec.program.display().to_string(),
        argv: p.argv,
        cwd: p.spec.cwd.map(|c| c.display().to_string()),
        env: p.env_names,
        worker_argv,
    })
}

/// Starts a run (waiting for a concurrency slot) and streams its events.
pub(crate) async fn start(ctx: &Ctx, inv: Invocation) -> Result<RunStream, EngineError> {
    if ctx.is_draining() {
        return Err(EngineError::Draining);
    }
    let mut inv = inv;
    let schema_file = match (&inv.output_schema, schema_in_file(&inv)) {
        (Some(schema), true) => {
            let f = write_schema_file(ctx, schema)?;
            inv.output_schema_file = Some(f.path().to_path_buf());
            Some(f)
        }
        _ => None,
    };
    let images = if images_in_files(&inv) {
        Some(write_images(ctx, &mut inv)?)
    } else {
        None
    };
    let calls = match &mut inv.client_tools {
        Some(ct) => {
            let (url, registration, rx) = ctx.tools.open(ct).map_err(EngineError::Spawn)?;
            ct.url = Some(url);
            Some((registration, rx))
        }
        None => None,
    };
    let cfg = backend_settings(ctx, inv.backend)?;
    let source = match warm_turn(ctx, &inv, &cfg).await? {
        Some(turn) => Source::Warm(Box::new(turn)),
        None => {
            let p = prepare(ctx, &inv)?;
            // A one-shot turn of a session continues it on disk: a worker holding the session
            // would answer its next turn without this one.
            if let Some(sid) = &inv.resume {
                ctx.workers.retire_session(inv.backend, sid);
                ctx.workers.begin_turn(sid);
            }
            let permit = ctx
                .supervisor
                .limiter
                .acquire(inv.backend, p.limits)
                .await?;
            let handle = ctx
                .supervisor
                .spawn(permit, p.spec)
                .map_err(|e| EngineError::Spawn(format!("{e}; {}", inv.backend.install_hint())))?;
            tracing::info!(run = %handle.id, backend = %inv.backend, pid = handle.pid, "run started");
            Source::Oneshot {
                parser: p.adapter.parser(),
                handle,
            }
        }
    };
    Ok(RunStream {
        source,
        backend: inv.backend,
        model: inv.model,
        started: Instant::now(),
        outcome: Outcome::default(),
        pending: std::collections::VecDeque::new(),
        first_output: true,
        exit: None,
        finished: false,
        output_schema: inv.output_schema,
        _schema_file: schema_file,
        _images: images,
        calls,
    })
}

/// The next client-tool call, if the run has client tools (never ends otherwise).
async fn next_call(calls: Option<&mut Calls>) -> Option<crate::tools::McpCall> {
    match calls {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The settings a warm worker is started with for `inv`, as a key: a worker only takes a turn
/// that would have started it the same way (the resumed session and the turn's own input —
/// prompt, images — aside).
pub(crate) fn worker_key(ctx: &Ctx, inv: &Invocation) -> Result<String, EngineError> {
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
        .map_err(|e| EngineError::bad("invalid_flags", e.to_string()))?;
    let key = live.driver.key();
    let p = prepare_command(ctx, &base, &cfg, live.command)?;
    Ok(format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{key}",
        p.spec.program, p.spec.args, p.spec.env, p.spec.cwd
    ))
}

/// Starts a warm worker for `inv`'s session (resuming `inv.resume` when set) and writes its
/// handshake.
pub(crate) async fn spawn_worker(
    ctx: &Ctx,
    inv: &Invocation,
    key: String,
) -> Result<crate::worker::Worker, EngineError> {
    let cfg = backend_settings(ctx, inv.backend)?;
    let live = ctx
        .adapter(inv.backend)
        .live(inv, &cfg)
        .map_err(|e| EngineError::bad("invalid_flags", e.to_string()))?;
    let p = prepare_command(ctx, inv, &cfg, live.command)?;
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
async fn warm_turn(
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
        .map_err(|e| EngineError::bad("invalid_flags", e.to_string()))?;
    if !live.driver.accepts(inv) {
        return Ok(None);
    }
    let p = prepare_command(ctx, inv, cfg, live.command)?;
    let key = worker_key(ctx, inv)?;
    let permit = ctx
        .supervisor
        .limiter
        .acquire(inv.backend, p.limits)
        .await?;
    let backend = inv.backend;
    let found = match &inv.resume {
        Some(sid) => ctx.workers.take_session(backend, sid, &key),
        None => ctx.workers.take_pooled(backend, &key),
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
    fn summary(&mut self) -> RunSummary {
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
        let status = if summary.timed_out {
            "timeout"
        } else if summary.cancelled {
            "cancelled"
        } else if summary.failed() {
            "error"
        } else {
            "success"
        };
        metrics::counter!("clinvk_backend_executions_total", "backend" => self.backend.as_str(), "status" => status).increment(1);
        metrics::histogram!("clinvk_backend_execution_duration_seconds", "backend" => self.backend.as_str())
            .record(summary.duration_ms as f64 / 1000.0);
        tracing::info!(run = %self.source.id(), backend = %self.backend, exit_code = summary.exit_code, status, duration_ms = summary.duration_ms, "run finished");
        summary
    }
}

fn summarize(
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
    RunSummary {
        backend,
        model,
        exit_code,
        duration_ms: elapsed.as_millis() as u64,
        output: o.output(),
        error,
        usage: o.usage,
        backend_session_id: o.session_id,
        timed_out: info.timed_out,
        cancelled: info.cancelled,
    }
}

/// The longest piece of a CLI's own output (stderr, error text) quoted in an error message.
const MAX_QUOTE_CHARS: usize = 1000;

/// `text` cut to `MAX_QUOTE_CHARS` characters (marked when cut).
fn clip_quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTE_CHARS) {
        Some((i, _)) => format!("{}… (cut)", &text[..i]),
        None => text.to_string(),
    }
}

/// The built-in system folders a run may never use as its working folder.
pub(crate) const BLOCKED_WORKDIRS: [&str; 14] = [
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/root/.ssh",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/run",
    "/var/lib",
];

/// Folders of the home that hold credentials: the CLIs' own and the usual secret ones.
pub(crate) const BLOCKED_HOME_FOLDERS: [&str; 9] = [
    ".claude",
    ".codex",
    ".gemini",
    ".ssh",
    ".aws",
    ".gnupg",
    ".kube",
    ".docker",
    ".config/gcloud",
];

/// The folder a run without `workdir` uses: `server.default_workdir`, else
/// `<state folder>/workspace`.
pub(crate) fn default_workdir(ctx: &Ctx) -> PathBuf {
    let configured = ctx.settings().server.default_workdir.clone();
    if configured.trim().is_empty() {
        ctx.paths.state_dir.join("workspace")
    } else {
        PathBuf::from(configured)
    }
}

/// Creates the default workdir (private) at start.
pub(crate) fn prepare_default_workdir(ctx: &Ctx) -> anyhow::Result<()> {
    let dir = default_workdir(ctx);
    if ctx.settings().server.default_workdir.trim().is_empty() {
        clinvk_shared::paths::ensure_private_dir(&dir)
    } else {
        std::fs::create_dir_all(&dir)
    }
    .map_err(|e| anyhow::anyhow!("cannot create the default workdir {}: {e}", dir.display()))
}

/// Every blocked folder, resolved through symlinks where it exists: the built-in system
/// folders, `server.blocked_workdir_prefixes`, the state folder, and the home's credential
/// folders.
fn blocked_folders(ctx: &Ctx) -> Vec<PathBuf> {
    let settings = ctx.settings();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut out: Vec<PathBuf> = BLOCKED_WORKDIRS.iter().map(PathBuf::from).collect();
    out.extend(
        settings
            .server
            .blocked_workdir_prefixes
            .iter()
            .map(PathBuf::from),
    );
    out.push(ctx.paths.state_dir.clone());
    if let Some(h) = &home {
        out.extend(BLOCKED_HOME_FOLDERS.iter().map(|f| h.join(f)));
    }
    let mut resolved = Vec::new();
    for p in out {
        if let Ok(real) = std::fs::canonicalize(&p) {
            if real != p {
                resolved.push(real);
            }
        }
        resolved.push(p);
    }
    resolved
}

/// Checks a requested working folder: absolute, exists, a folder, resolved through symlinks,
/// outside the blocked folders, inside the allowed ones when set (path-boundary matching). The
/// default workdir is always allowed. A refusal says the same whether or not the path exists.
pub(crate) fn validate_workdir(ctx: &Ctx, requested: &str) -> Result<PathBuf, EngineError> {
    let settings = ctx.settings();
    let p = Path::new(requested);
    if !p.is_absolute() {
        return Err(EngineError::bad(
            "invalid_workdir",
            format!("workdir {requested:?} must be an absolute path"),
        ));
    }
    let refused = || {
        EngineError::bad(
            "workdir_not_allowed",
            format!("workdir {requested:?} cannot be used: it must be an existing folder that the server's workdir policy allows"),
        )
    };
    let real = std::fs::canonicalize(p).map_err(|_| refused())?;
    if !real.is_dir() {
        return Err(refused());
    }
    let default = std::fs::canonicalize(default_workdir(ctx)).ok();
    if default.as_ref().is_some_and(|d| real.starts_with(d)) {
        return Ok(real);
    }
    if real == Path::new("/") || blocked_folders(ctx).iter().any(|b| real.starts_with(b)) {
        return Err(refused());
    }
    let allowed = &settings.server.allowed_workdir_prefixes;
    if !allowed.is_empty()
        && !allowed.iter().any(|a| {
            real.starts_with(a) || std::fs::canonicalize(a).is_ok_and(|a| real.starts_with(a))
        })
    {
        return Err(refused());
    }
    Ok(real)
}

#[cfg(test)]
mod tests;
