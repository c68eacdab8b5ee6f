//! Planning: a typed request (`Ask`) checked against the configuration — backend, session,
//! modes under the operator's ceiling, flags, folders, environment, output schema — into a
//! `Plan` ready to run.

use super::*;
use crate::error::Code;

/// A prompt as a front end asks for it, typed once: the backend it names (None: the session's,
/// or the default for `clinvk`), its images decoded, the client's tools. The other fields are
/// the request's; its `backend` and `images` are taken out into the typed fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ask {
    pub(crate) backend: Option<Backend>,
    pub(crate) images: Vec<Image>,
    pub(crate) client_tools: Option<crate::tools::ClientTools>,
    pub(crate) source: api::ApiStyle,
    pub(crate) req: PromptRequest,
    /// A model route's later targets.
    pub(crate) fallbacks: Vec<(Backend, Option<String>)>,
}

impl Ask {
    /// A native (or `clinvk`) request: its backend name checked, its images decoded.
    pub(crate) fn from_request(
        mut req: PromptRequest,
        source: api::ApiStyle,
    ) -> Result<Ask, ApiError> {
        let backend = match req.backend.take().filter(|b| !b.is_empty()) {
            Some(name) => Some(backend_named(&name)?),
            None => None,
        };
        let images = decode_images(std::mem::take(&mut req.images))?;
        Ok(Ask {
            backend,
            images,
            client_tools: None,
            source,
            req,
            fallbacks: Vec::new(),
        })
    }
}

/// The backend of a name a request gave.
pub(super) fn backend_named(name: &str) -> Result<Backend, ApiError> {
    Backend::from_name(name).ok_or_else(|| {
        bad(
            Code::UnknownBackend,
            format!(
                "unknown backend {name:?} (known: {})",
                KNOWN_BACKENDS.join(", ")
            ),
        )
        .with_param("backend")
    })
}

/// Checks a request and turns it into a plan.
pub(crate) fn plan(ctx: &Ctx, caller: &Caller, ask: Ask) -> Result<Plan, ApiError> {
    let Ask {
        backend: named,
        images,
        client_tools,
        source,
        req,
        fallbacks,
    } = ask;
    let settings = ctx.settings();
    let prompt = req.prompt.unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(bad(
            Code::MissingField,
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
            Code::InvalidModel,
            format!("model {m:?} is not a valid model name (letters, digits and ._:/@+- only; not starting with -)"),
        )
        .with_param("model"));
    }
    let backend = match (named, &resume_session) {
        (Some(b), _) => b,
        (None, Some(s)) => s.backend,
        (None, None) if source == api::ApiStyle::Cli => backend_named(&settings.default_backend)?,
        (None, None) => {
            return Err(bad(
                Code::MissingField,
                format!("`backend` is required ({})", KNOWN_BACKENDS.join(", ")),
            )
            .with_param("backend"))
        }
    };
    if let Some(s) = &resume_session {
        if s.backend != backend {
            return Err(bad(
                Code::SessionBackendMismatch,
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
            Code::UnsupportedField,
            "`max_tokens` is not supported: none of the CLIs can cap the tokens of an answer (use `max_turns` to bound a run)",
        )
        .with_param("max_tokens"));
    }
    if req.verbose == Some(true) {
        return Err(bad(
            Code::UnsupportedField,
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
    if let Some(effort) = req.reasoning_effort {
        if adapter.effort_args(effort).is_none() {
            return Err(bad(
                Code::UnsupportedField,
                format!("{backend} has no reasoning-effort setting; send the request without `reasoning_effort`"),
            )
            .with_param("reasoning_effort"));
        }
    }
    crate::backend::check_extra(&req.extra, adapter.builtin_extra_allowlist(), &cfg)
        .map_err(|e| bad(Code::InvalidFlags, e.to_string()).with_param("extra"))?;
    for folder in crate::backend::extra_folders(&req.extra) {
        engine::validate_workdir(ctx, &folder).map_err(|e| e.api_error().with_param("extra"))?;
    }
    if let Some(schema) = &req.output_schema {
        if !schema.is_object() {
            return Err(bad(
                Code::InvalidOutputSchema,
                "`output_schema` must be a JSON Schema object",
            )
            .with_param("output_schema"));
        }
        if let Err(e) = jsonschema::validator_for(schema) {
            return Err(bad(
                Code::InvalidOutputSchema,
                format!("`output_schema` is not a valid JSON Schema: {e}"),
            )
            .with_param("output_schema"));
        }
    }
    if images.len() > MAX_IMAGES {
        return Err(too_many_images());
    }
    let mut env = Vec::new();
    for (name, value) in &req.env {
        if name.starts_with("CLINVK_") || !cfg.allowed_request_env.iter().any(|a| a == name) {
            return Err(bad(
                Code::EnvNotAllowed,
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
        images,
        image_files: Vec::new(),
        client_tools,
        reasoning_effort: req.reasoning_effort,
        account: None,
    };
    if resume_session
        .as_ref()
        .is_some_and(|s| s.backend_session_id.is_none())
    {
        return Err(ApiError::new(Kind::Conflict, Code::SessionNotResumable, "this session has no backend session id yet (its first turn did not start a backend session); start a new one"));
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
        source,
        owner: caller.key_id.clone(),
        redact: caller.redaction(),
        fallbacks,
    })
}

/// What a new session's first turn with the default settings runs as (the warm pool starts
/// its workers for it); None when such a request would be refused.
pub(crate) fn default_invocation(ctx: &Ctx, backend: Backend) -> Option<Invocation> {
    let ask = Ask {
        backend: Some(backend),
        req: PromptRequest {
            prompt: Some("(pool)".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut inv = plan(ctx, &Caller::control(), ask).ok()?.inv;
    inv.prompt.clear();
    inv.account = super::peek_account(ctx, backend);
    Some(inv)
}
