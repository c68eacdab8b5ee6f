//! Starting a run for a conversation: a stored session continued, a parked tool-call run
//! resumed with its results, or a fresh session.

use super::*;
use crate::error::Code;

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
    /// See `Conversation::one_call`.
    pub(crate) one_call: bool,
    /// See `Conversation::stop`.
    pub(crate) stop: Vec<String>,
    /// See `Conversation::show_reasoning`.
    pub(crate) show_reasoning: bool,
}

/// The tool results at the end of a conversation (the new turns), by call id. What the user
/// wrote next to them (a user turn after the results, text beside Anthropic `tool_result`
/// blocks) cannot be a turn of its own — the model is in the middle of its turn — so it goes
/// with the last result, marked as the user's.
pub(super) fn tool_results(new: &[Msg]) -> HashMap<String, ToolReply> {
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
pub(super) async fn continue_parked(
    ctx: &Ctx,
    caller: &crate::ops::Caller,
    target: &Target,
    conv: &Conversation,
    new: &[Msg],
) -> Result<Option<Started>, ApiError> {
    let mut results = tool_results(new);
    if results.is_empty() {
        return Ok(None);
    }
    // A legacy result names the function, not the call: the one call of that name waiting.
    let named: Vec<String> = results
        .keys()
        .filter(|k| !k.starts_with(crate::tools::CALL_PREFIX))
        .cloned()
        .collect();
    for name in named {
        if let Some(id) = ctx.tools.pending_id_by_name(&name, caller.owner()) {
            if let Some(reply) = results.remove(&name) {
                results.insert(id, reply);
            }
        }
    }
    let ids: Vec<String> = results.keys().cloned().collect();
    match ctx.tools.take(&ids, caller.owner()) {
        Ok(mut parked) => {
            // The continuation takes a slot like a new run; without one in time the run waits
            // on (parked again) and the client may send its results again.
            if let Err(e) = parked.run.restore_slot().await {
                let settings = ctx.settings();
                ctx.tools.park(
                    parked,
                    std::time::Duration::from_secs(settings.tools.pending_timeout_secs),
                    settings.tools.max_parked_runs,
                );
                return Err(e);
            }
            let (run, tools) = parked.answer(&results);
            Ok(Some(Started {
                meta: Continuity {
                    session_id: run.session_id.clone(),
                    transcript: conv.messages.clone(),
                    target: target.clone(),
                    system: conv.system.clone(),
                    served: run.served.clone(),
                },
                run,
                tools: Some(tools),
                require_call: false,
                owner: caller.owner().map(str::to_string),
                one_call: conv.one_call,
                stop: conv.stop.clone(),
                show_reasoning: conv.show_reasoning,
            }))
        }
        Err(Unmatched::Foreign) => Ok(None),
        Err(Unmatched::Expired(id)) => Err(ApiError::new(
            Kind::Conflict,
            Code::ToolCallExpired,
            format!("tool call {id:?} expired (tools.pending_timeout_secs) and its run was stopped; send the conversation again without it"),
        )
        .with_param("messages")),
        Err(Unmatched::Unknown(id)) => Err(ApiError::bad_request(
            Code::ToolCallNotPending,
            format!("no run waits for the result of tool call {id:?} (answered already, made by another key, or the server restarted)"),
        )
        .with_param("messages")),
        Err(Unmatched::Missing(ids)) => Err(ApiError::bad_request(
            Code::ToolResultsMissing,
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
    if let Some(started) = continue_parked(ctx, caller, target, &conv, new).await? {
        return Ok(started);
    }
    if !conv.tools.is_empty() {
        crate::tools::check_support(ctx, target.backend).map_err(|m| unsupported("tools", m))?;
    }
    if !new.iter().any(|m| m.role != Role::Assistant) || new.is_empty() {
        return Err(ApiError::bad_request(
            Code::InvalidRequest,
            "the conversation must end with a user turn (or tool results) after the last assistant turn",
        )
        .with_param("messages"));
    }
    if !conv.messages.iter().any(|m| !m.text.trim().is_empty()) {
        return Err(
            ApiError::bad_request(Code::InvalidRequest, "the conversation holds no text")
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
    let tools = (!conv.tools.is_empty()).then(|| ClientTools {
        tools: conv.tools.clone(),
        builtin: ctx.settings().tools.builtin,
        scope: String::new(), // the session, set when it is known
        url: None,
        call_timeout_secs: ctx.settings().tools.pending_timeout_secs + 60,
    });
    let ask = prompt::Ask {
        backend: Some(target.backend),
        // A resumed session already holds the earlier turns' images.
        images: conv
            .images
            .iter()
            .filter(|(i, _)| resume.is_none() || *i >= split)
            .map(|(_, img)| img.clone())
            .collect(),
        client_tools: tools.clone(),
        source,
        req: PromptRequest {
            prompt: Some(prompt_text),
            model: target.model.clone(),
            system_prompt: conv.system.clone(),
            session_id: resume.clone(),
            output_schema: conv.output_schema.clone(),
            reasoning_effort: conv.reasoning_effort,
            ..Default::default()
        },
        fallbacks: target.fallbacks.clone(),
    };
    let plan = prompt::plan(ctx, caller, ask)?;
    let run = prompt::start(ctx, plan).await?;
    Ok(Started {
        meta: Continuity {
            session_id: run.session_id.clone(),
            transcript: conv.messages,
            target: target.clone(),
            system: conv.system,
            served: run.served.clone(),
        },
        run,
        tools,
        require_call: matches!(
            conv.tool_choice,
            ToolChoice::Required | ToolChoice::Named(_)
        ),
        owner: caller.owner().map(str::to_string),
        one_call: conv.one_call,
        stop: conv.stop,
        show_reasoning: conv.show_reasoning,
    })
}
