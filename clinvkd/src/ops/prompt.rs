//! `prompt`: run one prompt on one backend, in a new or a resumed clinvk session.

use super::Caller;
use crate::backend::{ApprovalMode, Event, Invocation, SandboxMode};
use crate::ctx::Ctx;
use crate::engine::{self, RunSummary, RunUpdate};
use crate::error::{ApiError, Kind};
use crate::session::{clip, Session, StoreError};
use clinvk_shared::api::{self, Backend, DryRun, OutputFormat, RunEvent, SessionStatus, Turn};
pub(crate) use clinvk_shared::api::{PromptRequest, PromptResult};
use clinvk_shared::config::{is_safe_model_name, KNOWN_BACKENDS};
use std::collections::BTreeMap;

/// A finished prompt: the result every front end shows, and the run's details (the compatible
/// APIs tell a timeout from a failure by them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Completed {
    pub(crate) result: PromptResult,
    pub(crate) summary: RunSummary,
}

impl std::ops::Deref for Completed {
    type Target = PromptResult;
    fn deref(&self) -> &PromptResult {
        &self.result
    }
}

/// A validated prompt, ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) inv: Invocation,
    pub(crate) resume_session: Option<Session>,
    pub(crate) ephemeral: bool,
    pub(crate) dry_run: bool,
    pub(crate) stream: bool,
    pub(crate) tags: Vec<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) source: String,
    /// The key that asks (recorded as the owner of a new session).
    pub(crate) owner: Option<String>,
}

fn bad(code: &str, msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(code.to_string(), msg)
}

fn escalation(field: &str, requested: &str, configured: &str) -> ApiError {
    ApiError::new(
        Kind::Forbidden,
        "escalation_not_allowed",
        format!("`{field}: {requested}` is looser than the server's `{configured}`; a request may only keep or tighten it (server.allow_request_escalation)"),
    )
    .with_param(field)
}

/// Checks a request and turns it into a plan.
pub(crate) fn plan(
    ctx: &Ctx,
    caller: &Caller,
    req: PromptRequest,
    source: &str,
) -> Result<Plan, ApiError> {
    let settings = ctx.settings();
    let prompt = req.prompt.unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(bad(
            "missing_field",
            "`prompt` is required and must not be empty",
        )
        .with_param("prompt"));
    }
    let resume_session = match req.session_id.as_deref().filter(|s| !s.is_empty()) {
        Some(id) => {
            caller.check_session_id(id)?;
            Some(ctx.sessions.get(id, caller.owner()).map_err(store_error)?)
        }
        None => None,
    };
    if let Some(m) = req
        .model
        .as_deref()
        .filter(|m| !m.is_empty() && !is_safe_model_name(m))
    {
        return Err(bad(
            "invalid_model",
            format!("model {m:?} is not a valid model name (letters, digits and ._:/@+- only; not starting with -)"),
        )
        .with_param("model"));
    }
    let named = match (req.backend.filter(|b| !b.is_empty()), &resume_session) {
        (Some(b), _) => b,
        (None, Some(s)) => s.backend.to_string(),
        (None, None) if source == "cli" => settings.default_backend.clone(),
        (None, None) => {
            return Err(bad(
                "missing_field",
                "`backend` is required (claude, codex or gemini)",
            )
            .with_param("backend"))
        }
    };
    let Some(backend) = Backend::from_name(&named) else {
        return Err(bad(
            "unknown_backend",
            format!(
                "unknown backend {named:?} (known: {})",
                KNOWN_BACKENDS.join(", ")
            ),
        )
        .with_param("backend"));
    };
    if let Some(s) = &resume_session {
        if s.backend != backend {
            return Err(bad(
                "session_backend_mismatch",
                format!(
                    "session {} belongs to backend {}, not {backend}",
                    s.id, s.backend
                ),
            ));
        }
    }
    // The request's format, else `unified_flags.output_format` (validated at load).
    let format = req
        .output_format
        .unwrap_or(settings.unified_flags.output_format);
    let stream = format == OutputFormat::StreamJson;
    if req.max_tokens.is_some() {
        return Err(bad(
            "unsupported_field",
            "`max_tokens` is not supported: none of the CLIs can cap the tokens of an answer (use `max_turns` to bound a run)",
        )
        .with_param("max_tokens"));
    }
    if req.verbose == Some(true) {
        return Err(bad(
            "unsupported_field",
            "`verbose` is not supported: the stream always carries every event the CLI reports",
        )
        .with_param("verbose"));
    }
    let cfg = settings.backend(backend);
    // The configured modes are a ceiling: a request may keep or tighten them, never loosen.
    let cfg_approval: ApprovalMode = cfg
        .approval_mode
        .unwrap_or(settings.unified_flags.approval_mode);
    let cfg_sandbox: SandboxMode = cfg
        .sandbox_mode
        .unwrap_or(settings.unified_flags.sandbox_mode);
    let approval: ApprovalMode = req.approval_mode.unwrap_or(cfg_approval);
    let sandbox: SandboxMode = req.sandbox_mode.unwrap_or(cfg_sandbox);
    if !settings.server.allow_request_escalation {
        if approval.strictness() < cfg_approval.strictness() {
            return Err(escalation(
                "approval_mode",
                &api::wire_name(&approval),
                &api::wire_name(&cfg_approval),
            ));
        }
        if sandbox.strictness() < cfg_sandbox.strictness() {
            return Err(escalation(
                "sandbox_mode",
                &api::wire_name(&sandbox),
                &api::wire_name(&cfg_sandbox),
            ));
        }
    }
    let adapter = ctx.adapter(backend);
    crate::backend::check_extra(&req.extra, adapter.builtin_extra_allowlist(), &cfg)
        .map_err(|e| bad("invalid_flags", e.to_string()).with_param("extra"))?;
    for folder in crate::backend::extra_folders(&req.extra) {
        engine::validate_workdir(ctx, &folder).map_err(|e| e.api_error().with_param("extra"))?;
    }
    if let Some(schema) = &req.output_schema {
        if !schema.is_object() {
            return Err(bad(
                "invalid_output_schema",
                "`output_schema` must be a JSON Schema object",
            )
            .with_param("output_schema"));
        }
        if let Err(e) = jsonschema::validator_for(schema) {
            return Err(bad(
                "invalid_output_schema",
                format!("`output_schema` is not a valid JSON Schema: {e}"),
            )
            .with_param("output_schema"));
        }
    }
    check_images(&req.images)?;
    let mut env = Vec::new();
    for (name, value) in &req.env {
        if name.starts_with("CLINVK_") || !cfg.allowed_request_env.iter().any(|a| a == name) {
            return Err(bad(
                "env_not_allowed",
                format!("environment variable {name:?} may not be set by a request (backends.{backend}.allowed_request_env)"),
            )
            .with_param("env"));
        }
        env.push((name.clone(), value.clone()));
    }
    let workdir = match (
        req.workdir.as_deref().filter(|w| !w.is_empty()),
        &resume_session,
    ) {
        (Some(w), _) => Some(
            engine::validate_workdir(ctx, w).map_err(|e| e.api_error().with_param("workdir"))?,
        ),
        // A continued session runs where it started — if the policy still allows that folder.
        (None, Some(s)) => match s.working_dir.as_deref() {
            Some(w) => Some(
                engine::validate_workdir(ctx, w)
                    .map_err(|e| e.api_error().with_param("session_id"))?,
            ),
            None => Some(engine::default_workdir(ctx)),
        },
        // Never the folder the daemon happened to be started in.
        (None, None) => Some(engine::default_workdir(ctx)),
    };
    let model = req
        .model
        .filter(|m| !m.is_empty() && m != backend.as_str())
        .or_else(|| resume_session.as_ref().and_then(|s| s.model.clone()));
    let inv = Invocation {
        backend,
        prompt,
        model,
        workdir,
        resume: resume_session
            .as_ref()
            .and_then(|s| s.backend_session_id.clone()),
        system_prompt: req
            .system_prompt
            .filter(|s| !s.is_empty())
            .or(cfg.system_prompt.clone()),
        max_turns: req.max_turns.or(settings.unified_flags.max_turns),
        approval_mode: approval,
        sandbox_mode: sandbox,
        extra: req.extra,
        env,
        ephemeral: req.ephemeral,
        output_schema: req.output_schema,
        output_schema_file: None,
        images: req.images,
        image_files: Vec::new(),
        client_tools: None,
    };
    if resume_session
        .as_ref()
        .is_some_and(|s| s.backend_session_id.is_none())
    {
        return Err(ApiError::new(Kind::Conflict, "session_not_resumable", "this session has no backend session id yet (its first turn did not start a backend session); start a new one"));
    }
    let mut tags = settings.session.default_tags.clone();
    tags.extend(req.tags);
    Ok(Plan {
        inv,
        resume_session,
        ephemeral: req.ephemeral,
        dry_run: req.dry_run || settings.unified_flags.dry_run,
        stream,
        tags,
        metadata: req.metadata,
        source: source.to_string(),
        owner: caller.key_id.clone(),
    })
}

/// What a new session's first turn with the default settings runs as (the warm pool starts
/// its workers for it); None when such a request would be refused.
pub(crate) fn default_invocation(ctx: &Ctx, backend: Backend) -> Option<Invocation> {
    let req = PromptRequest {
        backend: Some(backend.to_string()),
        prompt: Some("(pool)".into()),
        ..Default::default()
    };
    let mut inv = plan(ctx, &Caller::control(), req, "pool").ok()?.inv;
    inv.prompt.clear();
    Some(inv)
}

/// At most this many images per prompt.
pub(crate) const MAX_IMAGES: usize = 8;
/// At most this many bytes per image (decoded).
pub(crate) const MAX_IMAGE_BYTES: usize = 10 * 1024 * 1024;

/// The image types the CLIs take, with the first bytes of each.
fn image_kind_matches(media_type: &str, bytes: &[u8]) -> Option<bool> {
    Some(match media_type {
        "image/png" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a"),
        "image/webp" => bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP",
        _ => return None,
    })
}

/// Checks a prompt's images: how many, and each one (see `check_image`).
pub(crate) fn check_images(images: &[api::ImageInput]) -> Result<(), ApiError> {
    if images.len() > MAX_IMAGES {
        return Err(bad(
            "too_many_images",
            format!("at most {MAX_IMAGES} images per prompt"),
        )
        .with_param("images"));
    }
    for (i, img) in images.iter().enumerate() {
        check_image(img, &format!("images[{i}]"))?;
    }
    Ok(())
}

/// Checks one image — its type, base64, size, and that the bytes are what the type says —
/// naming it `param` in the error.
pub(crate) fn check_image(img: &api::ImageInput, param: &str) -> Result<(), ApiError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(img.data.trim())
        .map_err(|e| {
            bad(
                "invalid_image",
                format!("{param}: the data is not base64: {e}"),
            )
            .with_param(param)
        })?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(bad(
            "image_too_large",
            format!(
                "{param}: {} bytes; at most {MAX_IMAGE_BYTES} per image",
                bytes.len()
            ),
        )
        .with_param(param));
    }
    match image_kind_matches(&img.media_type, &bytes) {
        None => Err(bad(
            "unsupported_image_type",
            format!(
                "{param}: media type {:?} is not supported (image/png, image/jpeg, image/gif, image/webp)",
                img.media_type
            ),
        )
        .with_param(param)),
        Some(false) => Err(bad(
            "invalid_image",
            format!("{param}: the data is not a {} image", img.media_type),
        )
        .with_param(param)),
        Some(true) => Ok(()),
    }
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(_) | StoreError::Ambiguous(_) => {
            ApiError::new(Kind::NotFound, "session_not_found", e.to_string())
        }
        StoreError::Write { .. } => {
            ApiError::new(Kind::Internal, "session_store_error", e.to_string())
        }
    }
}

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
    run: Option<engine::RunStream>,
    ctx: Ctx,
    /// The run's bookkeeping: its place in the live view and its usage row.
    account: Account,
    prompt: String,
    backend_sid: Option<String>,
    /// Set once the end is being recorded: a drop after that is not an interruption.
    ended: bool,
    /// The session's turn lock, held until the run ends or is dropped.
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl PromptRun {
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
        if self.ended {
            return None;
        }
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
            return Some(self.done(summary).await);
        };
        match update {
            RunUpdate::Event(ev) => {
                self.account.saw(&ev);
                if let Event::SessionStarted { session_id, .. } = &ev {
                    self.backend_sid = Some(session_id.clone());
                    // Kept as soon as it is known: a crash mid-run stays resumable.
                    if let Some(id) = &self.session_id {
                        let b = session_id.clone();
                        let _ = self
                            .ctx
                            .sessions
                            .update_async(id, |s| s.backend_session_id = Some(b))
                            .await;
                    }
                }
                Some(PromptUpdate::Event(ev))
            }
            RunUpdate::ToolCall(c) => Some(PromptUpdate::ToolCall(c)),
            RunUpdate::Done(summary) => Some(self.done(summary).await),
        }
    }

    /// The end: the turn and the usage recorded, the result.
    async fn done(&mut self, summary: RunSummary) -> PromptUpdate {
        self.ended = true;
        self.record(&summary).await;
        self.account.finish(&summary).await;
        let result = PromptResult {
            session_id: self.session_id.clone(),
            backend: self.backend,
            exit_code: summary.exit_code,
            duration_ms: summary.duration_ms,
            output: summary.output.clone(),
            error: summary.error.clone(),
            token_usage: summary.usage,
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
    fn record(&self, summary: &RunSummary) -> impl std::future::Future<Output = ()> + Send {
        let session_id = self.session_id.clone();
        let ctx = self.ctx.clone();
        let prompt = clip(&self.prompt, 4000);
        let backend_sid = self.backend_sid.clone();
        let summary = summary.clone();
        async move {
            let Some(id) = session_id else { return };
            record_turn(&ctx, &id, prompt, backend_sid, &summary).await
        }
    }
}

async fn record_turn(
    ctx: &Ctx,
    id: &str,
    prompt: String,
    backend_sid: Option<String>,
    summary: &RunSummary,
) {
    let turn = Turn {
        at: clinvk_shared::types::now_rfc3339(),
        prompt,
        output_summary: clip(&summary.output, 4000),
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
    if let Err(e) = recorded {
        tracing::error!(session = %id, error = %e, "cannot record the turn");
    }
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
                    let _ = ctx
                        .sessions
                        .update_async(&id, |s| s.status = SessionStatus::Interrupted)
                        .await;
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
    let previous_status = match &plan.resume_session {
        Some(s) => {
            let fresh = ctx.sessions.get(&s.id, None).map_err(store_error)?;
            if fresh.backend_session_id.is_some() {
                plan.inv.resume = fresh.backend_session_id.clone();
            }
            Some(fresh.status)
        }
        None => None,
    };
    // The session is on disk before the CLI can start: a crash at any later point never loses
    // it (it is marked interrupted at the next start).
    let session_id = if let Some(s) = &plan.resume_session {
        let _ = ctx
            .sessions
            .update_async(&s.id, |s| s.status = SessionStatus::Active)
            .await;
        Some(s.id.clone())
    } else if plan.ephemeral {
        None
    } else {
        let s = ctx
            .sessions
            .create_async(Session {
                backend: plan.inv.backend,
                model: plan.inv.model.clone(),
                working_dir: plan.inv.workdir.as_ref().map(|w| w.display().to_string()),
                initial_prompt: clip(&plan.inv.prompt, 2000),
                tags: plan.tags.clone(),
                metadata: plan.metadata.clone(),
                source: plan.source.clone(),
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
                    let _ = ctx
                        .sessions
                        .update_async(id, move |s| s.status = status)
                        .await;
                }
                (Some(id), None) => {
                    let id = id.clone();
                    let _ = ctx
                        .sessions
                        .off_thread(move |st| st.delete(&id, None))
                        .await;
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
    Ok(PromptRun {
        session_id,
        backend: plan.inv.backend,
        run: Some(run),
        ctx: ctx.clone(),
        account,
        prompt: plan.inv.prompt,
        backend_sid: None,
        ended: false,
        _turn: guard,
    })
}

/// The dry-run answer: the exact argv, nothing started.
pub(crate) fn dry_run(ctx: &Ctx, plan: &Plan) -> Result<DryRun, ApiError> {
    let d = engine::dry_run(ctx, &plan.inv).map_err(|e| e.api_error())?;
    Ok(DryRun {
        dry_run: true,
        backend: d.backend,
        command: d.argv,
        program: d.program,
        cwd: d.cwd,
        env: d.env,
        session_id: plan.resume_session.as_ref().map(|s| s.id.clone()),
        worker_command: d.worker_argv,
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
        // Folded into the result (usage, final text) or kept in the log (unparsed lines).
        Event::Message { .. } | Event::Usage(_) | Event::Result { .. } | Event::Unparsed { .. } => {
            return None
        }
    })
}

/// A run's accounting: its entry in the live view (cancel, concurrency quota) and its row in the
/// usage store (daily quotas), opened before anything starts and closed at the end — a run
/// dropped before its end is closed as cancelled.
struct Account {
    ctx: Ctx,
    backend: Backend,
    /// Whether its CLI started (a drop then means cancelled, else failed).
    running: bool,
    live: crate::live::LiveGuard,
    row: Option<i64>,
    started: std::time::Instant,
    first_output_ms: Option<u64>,
    model: Option<String>,
    closed: bool,
}

fn quota_exceeded(what: String, retry_after: u64) -> ApiError {
    let mut e = ApiError::new(
        Kind::RateLimited,
        "quota_exceeded",
        format!("{what}; retry in {retry_after} s"),
    );
    e.retry_after_secs = Some(retry_after);
    e
}

impl Account {
    /// Admits a run under its key's quotas (429 `quota_exceeded` with `Retry-After` otherwise)
    /// and records its start.
    async fn open(ctx: &Ctx, plan: &Plan) -> Result<Account, ApiError> {
        let quotas = plan
            .owner
            .as_deref()
            .and_then(|id| ctx.keys.get(id))
            .map(|k| k.quotas)
            .unwrap_or_default();
        let info = api::LiveRun {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            backend: plan.inv.backend,
            model: plan.inv.model.clone(),
            session_id: plan.resume_session.as_ref().map(|s| s.id.clone()),
            key_id: plan.owner.clone(),
            api_style: plan.source.clone(),
            started_at: clinvk_shared::types::now_rfc3339(),
            elapsed_ms: 0,
        };
        let live = ctx
            .live
            .register(info, quotas.max_concurrent)
            .map_err(|n| {
                quota_exceeded(
                    format!("this key already runs {n} prompts (its max_concurrent quota)"),
                    1,
                )
            })?;
        let new = crate::usage::NewRun {
            key_id: plan.owner.clone(),
            backend: plan.inv.backend,
            model: plan.inv.model.clone(),
            api_style: plan.source.clone(),
            session_id: plan.resume_session.as_ref().map(|s| s.id.clone()),
        };
        let store = ctx.usage.clone();
        let begun = tokio::task::spawn_blocking(move || store.begin(&new, &quotas))
            .await
            .unwrap_or(Ok(None));
        let row = begun.map_err(|q| {
            let reset = crate::usage::utc_day().1;
            quota_exceeded(
                match q {
                    crate::usage::QuotaExceeded::Requests { limit } => {
                        format!("this key has used its {limit} requests for today (UTC)")
                    }
                    crate::usage::QuotaExceeded::Tokens { used, limit } => {
                        format!("this key has used {used} of its {limit} tokens for today (UTC)")
                    }
                },
                reset,
            )
        })?;
        Ok(Account {
            ctx: ctx.clone(),
            backend: plan.inv.backend,
            running: false,
            live,
            row,
            started: std::time::Instant::now(),
            first_output_ms: None,
            model: plan.inv.model.clone(),
            closed: false,
        })
    }

    /// Notes what an event says about the run: its first output, its model.
    fn saw(&mut self, ev: &Event) {
        match ev {
            Event::SessionStarted { model: Some(m), .. } if self.model.is_none() => {
                self.model = Some(m.clone());
            }
            Event::TextDelta { .. }
            | Event::Message { .. }
            | Event::ToolUse { .. }
            | Event::Thinking { .. }
                if self.first_output_ms.is_none() =>
            {
                self.first_output_ms = Some(self.started.elapsed().as_millis() as u64);
            }
            _ => {}
        }
    }

    fn end(&self, summary: &RunSummary) -> crate::usage::RunEnd {
        crate::usage::RunEnd {
            model: summary.model.clone().or_else(|| self.model.clone()),
            duration_ms: summary.duration_ms,
            first_output_ms: self.first_output_ms,
            exit_code: summary.exit_code,
            outcome: if summary.cancelled {
                "cancelled"
            } else if summary.timed_out {
                "timeout"
            } else if summary.failed() {
                "failed"
            } else {
                "ok"
            },
            usage: summary.usage,
        }
    }

    /// Records the end (waits for the write: a usage report right after the answer has it).
    async fn finish(&mut self, summary: &RunSummary) {
        self.closed = true;
        let Some(id) = self.row else { return };
        let (store, settings, end) = (
            self.ctx.usage.clone(),
            self.ctx.settings(),
            self.end(summary),
        );
        let backend = summary.backend;
        let _ =
            tokio::task::spawn_blocking(move || store.finish(id, &settings, backend, &end)).await;
    }
}

impl Drop for Account {
    /// A run that did not reach its end: its consumer left (`cancelled`), or `start` gave up
    /// before the CLI ran (`failed`). The write completes off this thread, tracked by the drain.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let (Some(id), Ok(rt)) = (self.row, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let summary = RunSummary {
            model: self.model.clone(),
            exit_code: -1,
            duration_ms: self.started.elapsed().as_millis() as u64,
            error: Some("cancelled".into()),
            cancelled: self.running,
            ..Default::default()
        };
        let (store, settings, end) = (
            self.ctx.usage.clone(),
            self.ctx.settings(),
            self.end(&summary),
        );
        let backend = self.backend;
        self.ctx
            .work
            .spawn_blocking_on(move || store.finish(id, &settings, backend, &end), &rt);
    }
}

#[cfg(test)]
mod tests;
