//! What the OpenAI- and Anthropic-compatible APIs share: model → backend mapping, rendering a
//! conversation into a CLI prompt, conversation continuity (transcript hashes), and driving a
//! prompt run to a JSON answer or an SSE stream. Each API module only parses its own request
//! shape into a `Conversation` and renders its own frames (`Frames`).

use super::error::{ApiError, Kind};
use crate::backend::Event;
use crate::ctx::Ctx;
use crate::ops::prompt::{self, Completed, PromptRequest, PromptResult, PromptRun, PromptUpdate};
use crate::tools::{ClientTool, ClientTools, Parked, PendingCall, ToolReply, Unmatched};
use bytes::Bytes;
use clinvk_shared::api::Backend;
use clinvk_shared::config::KNOWN_BACKENDS;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use warp::http::HeaderValue;
use warp::reply::Response;

/// The header naming a native session to continue (and, on answers, the session used).
pub(crate) const SESSION_HEADER: &str = "x-clinvk-session";

/// Where a model name leads: a backend and, when given, the model the CLI should use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) backend: Backend,
    /// `None` = the backend's default model (never the backend's own name).
    pub(crate) model: Option<String>,
}

fn model_not_found(name: &str) -> ApiError {
    ApiError::new(
        Kind::ModelNotFound,
        "model_not_found",
        format!(
            "the model {name:?} does not exist: use a backend name ({}), `<backend>/<model>`, a configured alias, or a name of a backend's model family ({})",
            KNOWN_BACKENDS.join(", "),
            crate::backend::adapters()
                .map(|a| a.model_families())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .with_param("model")
}

fn enabled(ctx: &Ctx, backend: Backend) -> bool {
    ctx.settings()
        .backends
        .get(backend.as_str())
        .is_none_or(|b| b.enabled)
}

/// `backend` or `backend/model` (the form of config aliases and of explicit names).
fn split_target(s: &str) -> Option<Target> {
    let (backend, model) = match s.split_once('/') {
        Some((b, m)) => (b, Some(m.trim()).filter(|m| !m.is_empty() && *m != b)),
        None => (s, None),
    };
    Backend::from_name(backend).map(|backend| Target {
        backend,
        model: model.map(str::to_string),
    })
}

/// Maps a requested model name: configured alias, `<backend>/<model>`, bare backend name (its
/// default model), then family names (`claude…` → claude, `gpt…`/`o1…`/`o3…`/`o4…`/`codex…` →
/// codex, `gemini…` → gemini, passed on as the model). Anything else is 404 `model_not_found`.
pub(crate) fn resolve_model(ctx: &Ctx, name: &str) -> Result<Target, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(
            ApiError::bad_request("missing_field", "`model` is required").with_param("model"),
        );
    }
    let settings = ctx.settings();
    let target = if let Some(t) = settings.models.get(name).and_then(|t| split_target(t)) {
        Some(t)
    } else if let Some(t) = split_target(name) {
        Some(t)
    } else {
        crate::backend::claimed_by(name).map(|backend| Target {
            backend,
            model: Some(name.to_string()),
        })
    };
    match target {
        Some(t) if enabled(ctx, t.backend) => Ok(t),
        Some(t) => Err(ApiError::new(
            Kind::Unavailable,
            "backend_disabled",
            format!("the backend {} is disabled in the configuration", t.backend),
        )),
        None => Err(model_not_found(name)),
    }
}

/// The model ids the mapping accepts by name: enabled backends, `backend/<configured model>`,
/// and configured aliases (sorted, no duplicates).
pub(crate) fn model_ids(ctx: &Ctx) -> Vec<String> {
    let settings = ctx.settings();
    let mut ids: Vec<String> = Vec::new();
    for b in Backend::ALL {
        if !enabled(ctx, b) {
            continue;
        }
        ids.push(b.to_string());
        if let Some(m) = settings
            .backends
            .get(b.as_str())
            .and_then(|c| c.model.clone())
        {
            ids.push(format!("{b}/{m}"));
        }
    }
    for (alias, target) in &settings.models {
        if split_target(target).is_some_and(|t| enabled(ctx, t.backend)) {
            ids.push(alias.clone());
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// The backend a listed model id runs on (for `owned_by`).
pub(crate) fn owner_of(ctx: &Ctx, id: &str) -> String {
    resolve_model(ctx, id)
        .map(|t| t.backend.to_string())
        .unwrap_or_else(|_| "clinvk".into())
}

/// The role of one conversation turn (system and developer turns go to the system prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    User,
    Assistant,
    Tool,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One turn, already reduced to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) role: Role,
    /// For tool results: the call they answer.
    pub(crate) label: Option<String>,
    pub(crate) text: String,
    /// For tool results: the tool failed.
    pub(crate) is_error: bool,
}

impl Msg {
    pub(crate) fn new(role: Role, text: impl Into<String>) -> Msg {
        Msg {
            role,
            label: None,
            text: text.into(),
            is_error: false,
        }
    }

    /// A tool's result for the call `id`.
    pub(crate) fn tool_result(id: Option<String>, text: impl Into<String>, is_error: bool) -> Msg {
        Msg {
            role: Role::Tool,
            label: id,
            text: text.into(),
            is_error,
        }
    }
}

/// A request's conversation: the system prompt and the turns, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conversation {
    pub(crate) system: Option<String>,
    pub(crate) messages: Vec<Msg>,
    /// Structured output the request asks for: the JSON Schema the answer must match.
    pub(crate) output_schema: Option<Value>,
    /// Images, each with the index of the message it came in.
    pub(crate) images: Vec<(usize, clinvk_shared::api::ImageInput)>,
    /// The client's functions the model may call (empty: none, or `tool_choice: none`).
    pub(crate) tools: Vec<ClientTool>,
    pub(crate) tool_choice: ToolChoice,
}

/// What a request's `tool_choice` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    #[default]
    Auto,
    /// No tool is offered to the model.
    None,
    /// The model must call one of the tools.
    Required,
    /// The model must call this tool.
    Named(String),
}

impl Conversation {
    /// Sets the tools and the choice; `none` offers no tool, and a named tool must exist.
    pub(crate) fn set_tools(
        &mut self,
        tools: Vec<ClientTool>,
        choice: ToolChoice,
        param: &str,
    ) -> Result<(), ApiError> {
        if tools.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
            return Err(invalid(
                param,
                "`tool_choice` asks for a tool call, but the request has no tools",
            ));
        }
        if let ToolChoice::Named(n) = &choice {
            if !tools.iter().any(|t| &t.name == n) {
                return Err(invalid(
                    param,
                    format!("`tool_choice` names {n:?}, which is not among the request's tools"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in &tools {
            if !is_tool_name(&t.name) {
                return Err(invalid(
                    "tools",
                    format!(
                        "tool name {:?} must be 1 to 64 letters, digits, `_` or `-`",
                        t.name
                    ),
                ));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(invalid(
                    "tools",
                    format!("tool {:?} is given twice", t.name),
                ));
            }
        }
        self.tools = if choice == ToolChoice::None {
            Vec::new()
        } else {
            tools
        };
        self.tool_choice = choice;
        Ok(())
    }
}

/// A function definition (`{name, description, parameters}`).
pub(crate) fn function_tool(f: &Value, param: &str) -> Result<ClientTool, ApiError> {
    client_tool(f, "parameters", param)
}

/// A tool definition `{name, description, <schema field>}`: OpenAI `parameters`, Anthropic
/// `input_schema`.
pub(crate) fn client_tool(
    f: &Value,
    schema_field: &str,
    param: &str,
) -> Result<ClientTool, ApiError> {
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{param}.name"), "a tool needs a `name`"))?;
    Ok(ClientTool {
        namespace: None,
        client_name: None,
        name: name.to_string(),
        description: f
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        parameters: tool_schema(f.get(schema_field), &format!("{param}.{schema_field}"))?,
    })
}

/// `tool_choice` in the OpenAI formats: `none`, `auto`, `required`, or a named function
/// (chat: `{"type":"function","function":{"name"}}`, Responses: `{"type":"function","name"}`).
pub(crate) fn openai_tool_choice(v: Option<&Value>, param: &str) -> Result<ToolChoice, ApiError> {
    Ok(match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(invalid(
                    param,
                    format!(
                        "unknown tool_choice {other:?} (none, auto, required, or a named function)"
                    ),
                ))
            }
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(param, "a named tool_choice needs the function's `name`"))?;
            ToolChoice::Named(name.to_string())
        }
    })
}

/// The tool names every API and MCP accept.
fn is_tool_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A tool's parameter schema: an object schema (none given: an object without properties).
pub(crate) fn tool_schema(v: Option<&Value>, param: &str) -> Result<Value, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(json!({"type": "object", "properties": {}})),
        Some(Value::Object(o)) => {
            let mut o = o.clone();
            o.entry("type").or_insert_with(|| json!("object"));
            if o.get("type") != Some(&json!("object")) {
                return Err(invalid(
                    param,
                    "a tool's parameters must be an object schema",
                ));
            }
            Ok(Value::Object(o))
        }
        Some(_) => Err(invalid(
            param,
            "a tool's parameters must be a JSON Schema object",
        )),
    }
}

/// A client mistake in a compatible API's body: 400 `invalid_request` naming the field.
pub(crate) fn invalid(param: impl Into<String>, msg: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", msg).with_param(param)
}

/// A message's content in the OpenAI formats (chat and Responses): its text — a string, or the
/// `text`/`input_text`/`output_text`/`refusal` parts joined — and its images (chat `image_url`
/// parts, Responses `input_image` parts: data: URLs).
pub(crate) fn openai_content(
    content: Option<&Value>,
    param: &str,
) -> Result<(String, Vec<clinvk_shared::api::ImageInput>), ApiError> {
    let parts = match content {
        None | Some(Value::Null) => return Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => return Ok((s.clone(), Vec::new())),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(invalid(
                param,
                "`content` must be a string or an array of content parts",
            ))
        }
    };
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let at = format!("{param}[{i}]");
        let text = |field: &str| {
            p.get(field)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match p.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" | "input_text" | "output_text" => texts.push(text("text")),
            "refusal" => texts.push(text("refusal")),
            // chat: `{"image_url": {"url": …}}`; Responses: `{"image_url": "…"}`.
            kind @ ("image_url" | "input_image") => {
                let url = p
                    .get("image_url")
                    .and_then(|u| u.get("url").or(Some(u)))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if url.is_empty() {
                    return Err(ApiError::bad_request(
                        "invalid_image",
                        format!("a {kind} part needs `image_url` (a data: URL); file ids are not kept here"),
                    )
                    .with_param(at));
                }
                images.push(data_url_image(url, &format!("{at}.image_url"))?);
            }
            kind @ ("input_audio" | "file" | "input_file") => {
                return Err(ApiError::bad_request(
                    "unsupported_content",
                    format!(
                        "content part type {kind:?} is not supported: send text and image parts"
                    ),
                )
                .with_param(at))
            }
            other => {
                return Err(invalid(
                    format!("{at}.type"),
                    format!("unknown content part type {other:?}"),
                ))
            }
        }
    }
    Ok((texts.join("\n"), images))
}

/// An image given as a `data:` URL (`data:image/png;base64,…`). Remote URLs are not fetched: a
/// server that runs agents must not be made to fetch arbitrary URLs.
pub(crate) fn data_url_image(
    url: &str,
    param: &str,
) -> Result<clinvk_shared::api::ImageInput, ApiError> {
    let refuse = |msg: String| ApiError::bad_request("invalid_image", msg).with_param(param);
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(refuse(format!(
            "`{param}`: remote image URLs are not fetched; send the image as a data: URL (data:image/png;base64,…)"
        )));
    }
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        refuse(format!(
            "`{param}`: expected a data: URL (data:image/png;base64,…)"
        ))
    })?;
    let (meta, data) = rest.split_once(',').ok_or_else(|| {
        refuse(format!(
            "`{param}`: a data: URL needs a comma before its data"
        ))
    })?;
    let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
        refuse(format!(
            "`{param}`: the data: URL must be base64 (…;base64,…)"
        ))
    })?;
    let image = clinvk_shared::api::ImageInput {
        media_type: media_type.to_string(),
        data: data.to_string(),
    };
    crate::ops::prompt::check_image(&image, param)?;
    Ok(image)
}

/// The JSON Schema of an OpenAI `response_format` (chat) or `text.format` (Responses):
/// `json_schema` → its schema, `json_object` → any object, `text` → none; anything else is
/// refused.
pub(crate) fn format_schema(
    format: Option<&Value>,
    param: &str,
) -> Result<Option<Value>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => {
            // chat nests it (`json_schema.schema`), Responses does not (`schema`).
            let schema = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .or_else(|| format.get("schema"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            Ok(Some(schema))
        }
        Some(other) => Err(unsupported(
            param,
            format!("unknown format type {other:?} (text, json_object, json_schema)"),
        )),
    }
}

impl Conversation {
    /// Adds to the system prompt (several system/developer turns are joined).
    pub(crate) fn add_system(&mut self, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        match &mut self.system {
            Some(s) => {
                s.push_str("\n\n");
                s.push_str(text);
            }
            None => self.system = Some(text.to_string()),
        }
    }

    /// The index where the new turns start: right after the last assistant turn.
    fn split(&self) -> usize {
        self.messages
            .iter()
            .rposition(|m| m.role == Role::Assistant)
            .map_or(0, |i| i + 1)
    }
}

/// Renders turns into one prompt. A lone user turn is sent as it is; several turns (a fresh
/// start of a longer conversation, or tool results before a user turn) are written out with
/// their roles, so the CLI sees the whole conversation faithfully.
pub(crate) fn render(msgs: &[Msg]) -> String {
    if let [m] = msgs {
        if m.role == Role::User {
            return m.text.clone();
        }
    }
    let mut out = String::new();
    let last_user = msgs.iter().rposition(|m| m.role == Role::User);
    if msgs.len() > 1 {
        out.push_str(
            "The conversation so far is below, one turn per block. Reply as the assistant to the last turn.\n\n",
        );
    }
    for (i, m) in msgs.iter().enumerate() {
        let head = match (m.role, &m.label) {
            (Role::Tool, Some(l)) => format!("[tool result for {l}]"),
            (Role::Tool, None) => "[tool result]".to_string(),
            (r, _) if Some(i) == last_user && msgs.len() > 1 => {
                format!("[{} — reply to this]", r.name())
            }
            (r, _) => format!("[{}]", r.name()),
        };
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push_str("\n\n");
        }
        out.push_str(&head);
        out.push('\n');
        out.push_str(m.text.trim_end());
    }
    out
}

/// A stable hash of a conversation on one target: what identifies a conversation for continuity.
pub(crate) fn transcript_hash(target: &Target, system: Option<&str>, msgs: &[Msg]) -> String {
    let turns: Vec<serde_json::Value> = msgs
        .iter()
        .map(|m| json!([m.role.name(), m.label, m.text.trim()]))
        .collect();
    let canon = json!({
        "backend": target.backend,
        "model": target.model,
        "system": system.map(str::trim),
        "turns": turns,
    });
    let digest = Sha256::digest(serde_json::to_vec(&canon).unwrap_or_default());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is needed to record a conversation when its turn succeeds.
pub(crate) struct Continuity {
    pub(crate) session_id: Option<String>,
    /// The conversation up to and including the new turns (the reply is appended at the end).
    transcript: Vec<Msg>,
    target: Target,
    system: Option<String>,
}

impl Continuity {
    /// Stores the transcript hash of the conversation including `reply`, so the client's next
    /// request (which sends this reply back as history) continues this session.
    fn commit(&self, ctx: &Ctx, reply: &str) {
        let Some(id) = &self.session_id else { return };
        let mut msgs = self.transcript.clone();
        msgs.push(Msg::new(Role::Assistant, reply));
        let hash = transcript_hash(&self.target, self.system.as_deref(), &msgs);
        if let Err(e) = ctx.sessions.update(id, |s| s.transcript_hash = Some(hash)) {
            tracing::warn!(session = %id, error = %e, "cannot store the transcript hash");
        }
    }
}

/// A started run.
pub(crate) struct Started {
    pub(crate) run: PromptRun,
    pub(crate) meta: Continuity,
    /// The run's client tools (None: the model calls none of the client's functions).
    pub(crate) tools: Option<ClientTools>,
    /// `tool_choice` asked for a call: a run that ends without one is an error.
    pub(crate) require_call: bool,
    /// Who asks (a parked run is continued by its owner only).
    pub(crate) owner: Option<String>,
}

/// The tool results at the end of a conversation (the new turns), by call id. What the user
/// wrote next to them (a user turn after the results, text beside Anthropic `tool_result`
/// blocks) cannot be a turn of its own — the model is in the middle of its turn — so it goes
/// with the last result, marked as the user's.
fn tool_results(new: &[Msg]) -> HashMap<String, ToolReply> {
    let mut last: Option<String> = None;
    let mut out: HashMap<String, ToolReply> = HashMap::new();
    for m in new.iter().filter(|m| m.role == Role::Tool) {
        if let Some(id) = &m.label {
            out.insert(
                id.clone(),
                ToolReply {
                    content: m.text.clone(),
                    is_error: m.is_error,
                },
            );
            last = Some(id.clone());
        }
    }
    let said: Vec<&str> = new
        .iter()
        .filter(|m| m.role == Role::User && !m.text.trim().is_empty())
        .map(|m| m.text.trim())
        .collect();
    if let Some(reply) = last.and_then(|id| out.get_mut(&id)) {
        for text in said {
            reply.content.push_str("\n\n[the user adds] ");
            reply.content.push_str(text);
        }
    }
    out
}

/// Continues the run parked at the tool calls these results answer. `Ok(None)`: the results
/// answer no call of this daemon (a conversation from elsewhere, rendered as text instead).
fn continue_parked(
    ctx: &Ctx,
    caller: &crate::ops::Caller,
    target: &Target,
    conv: &Conversation,
    new: &[Msg],
) -> Result<Option<Started>, ApiError> {
    let results = tool_results(new);
    if results.is_empty() {
        return Ok(None);
    }
    let ids: Vec<String> = results.keys().cloned().collect();
    match ctx.tools.take(&ids, caller.owner()) {
        Ok(parked) => {
            let (run, tools) = parked.answer(&results);
            Ok(Some(Started {
                meta: Continuity {
                    session_id: run.session_id.clone(),
                    transcript: conv.messages.clone(),
                    target: target.clone(),
                    system: conv.system.clone(),
                },
                run,
                tools: Some(tools),
                require_call: false,
                owner: caller.owner().map(str::to_string),
            }))
        }
        Err(Unmatched::Foreign) => Ok(None),
        Err(Unmatched::Expired(id)) => Err(ApiError::new(
            Kind::Conflict,
            "tool_call_expired",
            format!("tool call {id:?} expired (tools.pending_timeout_secs) and its run was stopped; send the conversation again without it"),
        )
        .with_param("messages")),
        Err(Unmatched::Unknown(id)) => Err(ApiError::bad_request(
            "tool_call_not_pending",
            format!("no run waits for the result of tool call {id:?} (answered already, made by another key, or the server restarted)"),
        )
        .with_param("messages")),
        Err(Unmatched::Missing(ids)) => Err(ApiError::bad_request(
            "tool_results_missing",
            format!("the model waits for the results of every call it made; missing: {}", ids.join(", ")),
        )
        .with_param("messages")),
    }
}

/// Plans and starts a run for a conversation: continues a stored session when the request names
/// one (`X-Clinvk-Session`) or when its earlier turns are exactly a stored conversation on the
/// same backend and model (then only the new turns are sent); otherwise a fresh session gets the
/// whole conversation.
pub(crate) async fn start(
    ctx: &Ctx,
    caller: &crate::ops::Caller,
    explicit_session: Option<String>,
    source: clinvk_shared::api::ApiStyle,
    target: &Target,
    conv: Conversation,
) -> Result<Started, ApiError> {
    let split = conv.split();
    let (history, new) = conv.messages.split_at(split);
    if let Some(started) = continue_parked(ctx, caller, target, &conv, new)? {
        return Ok(started);
    }
    if !conv.tools.is_empty() {
        crate::tools::check_support(ctx, target.backend).map_err(|m| unsupported("tools", m))?;
    }
    if !new.iter().any(|m| m.role != Role::Assistant) || new.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the conversation must end with a user turn (or tool results) after the last assistant turn",
        )
        .with_param("messages"));
    }
    if !conv.messages.iter().any(|m| !m.text.trim().is_empty()) {
        return Err(
            ApiError::bad_request("invalid_request", "the conversation holds no text")
                .with_param("messages"),
        );
    }
    let resume = match explicit_session {
        Some(id) => Some(id),
        None if !history.is_empty() => {
            let hash = transcript_hash(target, conv.system.as_deref(), history);
            ctx.sessions
                .claim_by_transcript(target.backend, &hash, caller.owner())
                .filter(|s| s.backend_session_id.is_some())
                .map(|s| s.id)
        }
        None => None,
    };
    let mut prompt_text = if resume.is_some() {
        render(new)
    } else {
        render(&conv.messages)
    };
    match &conv.tool_choice {
        ToolChoice::Required => {
            prompt_text.push_str("\n\n(Answer by calling one of the tools you were given.)")
        }
        ToolChoice::Named(n) => {
            prompt_text.push_str(&format!("\n\n(Answer by calling the tool `{n}`.)"))
        }
        ToolChoice::Auto | ToolChoice::None => {}
    }
    let preq = PromptRequest {
        backend: Some(target.backend.to_string()),
        prompt: Some(prompt_text),
        model: target.model.clone(),
        system_prompt: conv.system.clone(),
        session_id: resume.clone(),
        output_schema: conv.output_schema.clone(),
        // A resumed session already holds the earlier turns' images.
        images: conv
            .images
            .iter()
            .filter(|(i, _)| resume.is_none() || *i >= split)
            .map(|(_, img)| img.clone())
            .collect(),
        ..Default::default()
    };
    let mut plan = prompt::plan(ctx, caller, preq, source)?;
    let tools = (!conv.tools.is_empty()).then(|| ClientTools {
        tools: conv.tools.clone(),
        builtin: ctx.settings().tools.builtin,
        scope: String::new(), // the session, set when it is known
        url: None,
        call_timeout_secs: ctx.settings().tools.pending_timeout_secs + 60,
    });
    plan.inv.client_tools = tools.clone();
    let run = prompt::start(ctx, plan).await?;
    Ok(Started {
        meta: Continuity {
            session_id: run.session_id.clone(),
            transcript: conv.messages,
            target: target.clone(),
            system: conv.system,
        },
        run,
        tools,
        require_call: matches!(
            conv.tool_choice,
            ToolChoice::Required | ToolChoice::Named(_)
        ),
        owner: caller.owner().map(str::to_string),
    })
}

/// What a run produces, reduced to what the compatible APIs show.
pub(crate) enum Piece {
    Text(String),
    /// The model called client tools: the answer ends with them, the run is parked.
    Calls(Vec<CallView>),
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
}

impl Pieces {
    pub(crate) fn new(started: Started) -> (Self, Continuity) {
        let Started {
            run,
            meta,
            tools,
            require_call,
            owner,
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

    pub(crate) async fn next(&mut self) -> Option<Piece> {
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
                        let text = r.output.clone();
                        self.emitted.push_str(&text);
                        // Hand out the text now and the result on the next call.
                        self.pending = Some(r);
                        return Some(Piece::Text(text));
                    }
                    return Some(Piece::Done(r));
                }
            };
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

/// The API error of a failed run (502 CLI failed, 504 timeout).
pub(crate) fn run_error(r: &Completed) -> Option<ApiError> {
    r.summary.api_error().or_else(|| {
        r.error
            .as_ref()
            .map(|e| ApiError::new(Kind::CliFailed, "backend_failed", e.clone()))
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
            Some(Piece::Text(_)) => continue,
            Some(Piece::Calls(calls)) => {
                let text = pieces.emitted.clone();
                pieces.park(ctx);
                return Ok(Finished {
                    text,
                    calls,
                    result: PromptResult::default(),
                    session_id: meta.session_id,
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
        session_id: meta.session_id,
    })
}

fn shutting_down() -> ApiError {
    ApiError::new(
        Kind::Unavailable,
        "shutting_down",
        "the server is shutting down; retry shortly",
    )
}

/// One API style's stream frames.
pub(crate) trait Frames: Send + 'static {
    /// Frames before the first text (e.g. the role chunk, `message_start`).
    fn start(&mut self) -> Vec<Bytes>;
    fn delta(&mut self, text: &str) -> Vec<Bytes>;
    /// The closing frames of a successful run.
    fn finish(&mut self, result: &PromptResult) -> Vec<Bytes>;
    /// The closing frames of an answer that ends with client-tool calls.
    fn calls(&mut self, calls: &[CallView]) -> Vec<Bytes>;
    /// The frame of a failure after the stream began; the stream ends after it.
    fn error(&mut self, e: &ApiError) -> Vec<Bytes>;
    /// A frame that keeps the connection alive while the CLI is silent (clients ignore it).
    fn keepalive(&mut self) -> Bytes {
        Bytes::from_static(b": keep-alive\n\n")
    }
}

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
    let mut keepalive = super::KeepAlive::new(ctx);
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
                    Some(Piece::Text(_) | Piece::Calls(_)) => None,
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
                        out.extend(frames.start());
                    }
                }
            }
            let mut end = false;
            match piece {
                Some(Piece::Text(t)) => out.extend(frames.delta(&t)),
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
    let mut resp = super::streamed(rx, "text/event-stream");
    set_session_header(&mut resp, &session_id);
    Ok(resp)
}

fn run_lost() -> ApiError {
    ApiError::new(Kind::Internal, "run_lost", "the run ended without a result")
}

/// The header naming the request fields an answer did not honour: fields the CLIs cannot
/// enforce whose absence changes nothing a client relies on (`temperature`, `seed`,
/// `max_tokens`…), and fields this server does not know. Fields whose loss would matter are
/// refused instead (400 naming them).
pub(crate) const IGNORED_HEADER: &str = "x-clinvk-ignored-params";

/// Adds `X-Clinvk-Ignored-Params` (sorted, once each; list indexes as `*`, e.g.
/// `messages.*.name`) to an answer.
pub(crate) fn name_ignored(resp: &mut Response, fields: &[String]) {
    let mut names: Vec<String> = fields
        .iter()
        .filter(|f| !f.is_empty() && f.as_str() != "?")
        .map(|f| {
            f.split('.')
                .map(|seg| {
                    if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                        "*"
                    } else {
                        seg
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    // Added to what an earlier call named (a handler names what it ignored inside a field).
    if let Some(earlier) = resp
        .headers()
        .get(IGNORED_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        names.extend(earlier.split(", ").map(str::to_string));
    }
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
        resp.headers_mut().insert(IGNORED_HEADER, v);
    }
}

/// A request field this server cannot honour and must not drop: 400 naming it.
pub(crate) fn unsupported(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("unsupported_parameter", message).with_param(param)
}

/// Names the session a run used on the answer (`X-Clinvk-Session`).
pub(crate) fn set_session_header(resp: &mut Response, session_id: &Option<String>) {
    if let Some(v) = session_id
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
}

/// The session a request names explicitly (`X-Clinvk-Session`).
pub(crate) fn session_header(req: &super::HttpRequest) -> Option<String> {
    req.header(SESSION_HEADER)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A short unique id suffix.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_targets() {
        assert_eq!(
            split_target("claude"),
            Some(Target {
                backend: Backend::Claude,
                model: None
            })
        );
        assert_eq!(
            split_target("codex/gpt-5"),
            Some(Target {
                backend: Backend::Codex,
                model: Some("gpt-5".into())
            })
        );
        assert_eq!(
            split_target("claude/claude"),
            Some(Target {
                backend: Backend::Claude,
                model: None
            })
        );
        assert_eq!(split_target("nobody/x"), None);
    }

    #[test]
    fn render_and_split() {
        let mut c = Conversation::default();
        c.messages.push(Msg::new(Role::User, "hi"));
        assert_eq!(c.split(), 0);
        assert_eq!(render(&c.messages), "hi");
        c.messages.push(Msg::new(Role::Assistant, "hello"));
        c.messages.push(Msg::new(Role::User, "more"));
        assert_eq!(c.split(), 2);
        let all = render(&c.messages);
        assert!(
            all.contains("[user]\nhi") && all.contains("[assistant]\nhello"),
            "{all}"
        );
        assert!(all.contains("reply to this]\nmore"), "{all}");
        assert_eq!(render(&c.messages[2..]), "more");
    }

    #[test]
    fn hashes_depend_on_everything() {
        let t = Target {
            backend: Backend::Claude,
            model: None,
        };
        let a = vec![Msg::new(Role::User, "hi"), Msg::new(Role::Assistant, "yo ")];
        let h = transcript_hash(&t, None, &a);
        assert_eq!(
            h,
            transcript_hash(
                &t,
                None,
                &[Msg::new(Role::User, " hi"), Msg::new(Role::Assistant, "yo")]
            )
        );
        assert_ne!(h, transcript_hash(&t, Some("sys"), &a));
        let t2 = Target {
            backend: Backend::Codex,
            model: None,
        };
        assert_ne!(h, transcript_hash(&t2, None, &a));
        assert_ne!(h, transcript_hash(&t, None, &a[..1]));
    }
}
