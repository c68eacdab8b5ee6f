//! The OpenAI Responses API under `/openai/v1/responses`: create (JSON or the typed SSE event
//! sequence), retrieve and delete; `previous_response_id` continues the clinvk session of the
//! response it names.

use super::compat::{self, CallView, Conversation, Frames, Msg, Role};
use super::error::{json_response, ApiError, Kind};
use crate::ctx::Ctx;
use crate::error::Code;
use crate::ops;
use crate::ops::prompt::PromptResult;
use crate::responses::Stored;
use bytes::Bytes;
use clinvk_shared::api::ApiStyle;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;

mod frames;
use frames::EventFrames;

/// A create request. The fields read here are honoured or refused (400 naming them); any other
/// field is accepted and named in `X-Clinvk-Ignored-Params` (`temperature`,
/// `max_output_tokens`, `reasoning`…: the CLIs cannot enforce them).
#[derive(Debug, Deserialize)]
pub(crate) struct CreateRequest {
    model: String,
    input: Input,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    previous_response_id: Option<String>,
    /// Default true: the response can be retrieved and continued.
    #[serde(default)]
    store: Option<bool>,
    /// Echoed in the response.
    #[serde(default)]
    metadata: Option<Value>,
    /// `text.format`: `text`, or structured output (`json_object`, `json_schema`: the answer
    /// is checked against the schema).
    #[serde(default)]
    text: Option<Value>,
    /// Function tools, called by the model through the client (see `tools`); other tool types
    /// (web search, file search, …) are refused.
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    /// Refused when true: there is no background queue.
    #[serde(default)]
    background: Option<bool>,
    /// Refused when set: conversation objects and stored prompt templates are not kept here.
    #[serde(default)]
    conversation: Option<Value>,
    #[serde(default)]
    prompt: Option<Value>,
    /// `effort` goes through the CLI's effort setting where it has one (else named ignored);
    /// `summary` asks for the reasoning the CLI prints, as a `reasoning` output item.
    #[serde(default)]
    reasoning: Option<Reasoning>,
    /// `reasoning.encrypted_content` also asks for the reasoning item (it has no encrypted
    /// content: the reasoning comes from a CLI); any other entry is named ignored.
    #[serde(default)]
    include: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Reasoning {
    #[serde(default)]
    effort: Option<clinvk_shared::api::ReasoningEffort>,
    /// `auto`, `concise` or `detailed`: the CLI's reasoning text is shown whole, whichever.
    #[serde(default)]
    summary: Option<String>,
}

/// The `include` entry that asks for the reasoning.
const INCLUDE_REASONING: &str = "reasoning.encrypted_content";

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Value>),
}

fn not_found(id: &str, param: Option<&str>) -> ApiError {
    let e = ApiError::new(
        Kind::NotFound,
        Code::ResponseNotFound,
        format!("no stored response with id {id:?}"),
    );
    match param {
        Some(p) => e.with_param(p),
        None => e,
    }
}

impl CreateRequest {
    /// The function tools (also those of `namespace` tools) and the choice; the names of the
    /// hosted tools that are ignored (`web_search`: the CLI's model answers without it).
    fn tools(&self, conv: &mut Conversation) -> Result<Vec<String>, ApiError> {
        let mut tools = Vec::new();
        let mut ignored = Vec::new();
        for (i, t) in self.tools.iter().flatten().enumerate() {
            let param = format!("tools[{i}]");
            match t.get("type").and_then(Value::as_str) {
                Some("function") => tools.push(compat::function_tool(t, &param)?),
                Some("namespace") => {
                    let ns = t.get("name").and_then(Value::as_str).unwrap_or_default();
                    for (j, f) in t
                        .get("tools")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        let fparam = format!("{param}.tools[{j}]");
                        if f.get("type").and_then(Value::as_str) != Some("function") {
                            return Err(compat::unsupported(
                                &format!("{fparam}.type"),
                                "only function tools are supported in a namespace",
                            ));
                        }
                        let mut tool = compat::function_tool(f, &fparam)?;
                        tool.client_name = Some(tool.name.clone());
                        tool.name = format!("{ns}__{}", tool.name);
                        tool.namespace = Some(ns.to_string());
                        tools.push(tool);
                    }
                }
                Some("web_search" | "web_search_preview") => {
                    ignored.push("tools.web_search".into())
                }
                other => {
                    return Err(compat::unsupported(
                        &format!("{param}.type"),
                        format!(
                            "tool type {} is not supported (function tools only)",
                            other.map_or("(none)".to_string(), |o| format!("{o:?}"))
                        ),
                    ))
                }
            }
        }
        let choice = compat::openai_tool_choice(self.tool_choice.as_ref(), "tool_choice")?;
        conv.set_tools(tools, choice, "tool_choice")?;
        Ok(ignored)
    }

    fn check(&self) -> Result<(), ApiError> {
        if self.background == Some(true) {
            return Err(compat::unsupported(
                "background",
                "`background: true` is not supported: a response runs while its request is open",
            ));
        }
        for (param, v) in [
            ("conversation", &self.conversation),
            ("prompt", &self.prompt),
        ] {
            if v.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(compat::unsupported(
                    param,
                    format!("`{param}` is not supported: send the input itself (and `previous_response_id` to continue)"),
                ));
            }
        }
        Ok(())
    }
}

/// The conversation of a request: `instructions` as the system prompt, then the input items.
fn conversation(r: &CreateRequest) -> Result<Conversation, ApiError> {
    let mut conv = Conversation::default();
    if let Some(i) = &r.instructions {
        conv.add_system(i);
    }
    let items = match &r.input {
        Input::Text(t) => {
            conv.messages.push(Msg::new(Role::User, t.clone()));
            return Ok(conv);
        }
        Input::Items(items) => items,
    };
    if items.is_empty() {
        return Err(compat::invalid(
            "input",
            "`input` must hold at least one item",
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                let (text, images) =
                    compat::openai_content(item.get("content"), &format!("{param}.content"))?;
                let at = conv.messages.len();
                conv.images.extend(images.into_iter().map(|img| (at, img)));
                match role {
                    "system" | "developer" => conv.add_system(&text),
                    "user" => conv.messages.push(Msg::new(Role::User, text)),
                    "assistant" => conv.messages.push(Msg::new(Role::Assistant, text)),
                    other => {
                        return Err(compat::invalid(
                            format!("{param}.role"),
                            format!("unknown role {other:?} (system, developer, user, assistant)"),
                        ))
                    }
                }
            }
            "function_call" => {
                let name = item.get("name").and_then(Value::as_str).unwrap_or("tool");
                let args = item.get("arguments").and_then(Value::as_str).unwrap_or("");
                let id = item.get("call_id").and_then(Value::as_str).unwrap_or("?");
                conv.messages.push(Msg::new(
                    Role::Assistant,
                    format!("[called tool {name} (call {id}) with {args}]"),
                ));
            }
            "function_call_output" => conv.messages.push(Msg::tool_result(
                item.get("call_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                },
                false,
            )),
            // The model's reasoning of an earlier turn: not part of the conversation text.
            "reasoning" => {}
            // An earlier output item by reference (clients that rely on stored responses):
            // its content is the stored response's; the turn is kept as a marker.
            "item_reference" => {
                let id = item.get("id").and_then(Value::as_str).unwrap_or("?");
                conv.messages.push(Msg::new(
                    Role::Assistant,
                    format!("[earlier output item {id}]"),
                ));
            }
            other => {
                return Err(compat::unsupported(
                    &format!("{param}.type"),
                    format!("input item type {other:?} is not supported"),
                ))
            }
        }
    }
    Ok(conv)
}

/// What every rendering of one response shares.
#[derive(Debug, Clone)]
struct Shape {
    id: String,
    message_id: String,
    created_at: u64,
    model: String,
    instructions: Option<String>,
    previous_response_id: Option<String>,
    store: bool,
    metadata: Value,
    /// `text.format` as requested (echoed).
    format: Value,
    reasoning_id: String,
    /// The model's reasoning shown (a `reasoning` item before the message), when asked for.
    reasoning: String,
}

impl Shape {
    /// The response object.
    fn object(
        &self,
        status: &str,
        text: Option<&str>,
        calls: &[CallView],
        result: Option<&PromptResult>,
        error: Option<&ApiError>,
    ) -> Value {
        let mut output: Vec<Value> = Vec::new();
        if !self.reasoning.is_empty() {
            output.push(self.reasoning_item(&self.reasoning));
        }
        output.extend(
            text.filter(|t| calls.is_empty() || !t.is_empty())
                .map(|t| self.message(t, "completed")),
        );
        output.extend(calls.iter().map(|c| function_call(c, "completed")));
        let usage = result.map(|r| {
            let u = r.token_usage;
            json!({
                "input_tokens": u.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": u.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.input_tokens + u.output_tokens,
            })
        });
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error.map(|e| json!({"code": e.code, "message": e.message})),
            "incomplete_details": null,
            "instructions": self.instructions,
            "max_output_tokens": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "store": self.store,
            "temperature": null,
            "text": {"format": self.format},
            "tool_choice": "auto",
            "tools": [],
            "top_p": null,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": self.metadata,
        })
    }

    fn message(&self, text: &str, status: &str) -> Value {
        message_item(&self.message_id, text, status)
    }

    /// The `reasoning` output item: the reasoning as one summary text.
    fn reasoning_item(&self, text: &str) -> Value {
        let summary: Vec<Value> = (!text.is_empty())
            .then(|| json!({"type": "summary_text", "text": text}))
            .into_iter()
            .collect();
        json!({"type": "reasoning", "id": self.reasoning_id, "summary": summary})
    }
}

/// A `function_call` output item.
fn function_call(c: &CallView, status: &str) -> Value {
    let arguments = if status == "completed" {
        c.arguments_json()
    } else {
        String::new()
    };
    let mut item = json!({
        "type": "function_call", "id": format!("fc_{}", c.id), "call_id": c.id,
        "name": c.name, "arguments": arguments, "status": status,
    });
    if let Some(ns) = &c.namespace {
        item["namespace"] = ns.as_str().into();
    }
    item
}

/// The assistant's `message` output item.
fn message_item(message_id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": message_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// The request decoding of `create`, without a daemon (for the fuzz tests).
#[cfg(test)]
pub(crate) fn decode(v: Value) -> Result<(), ApiError> {
    let r: CreateRequest = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(Code::InvalidRequest, e.to_string()))?;
    r.check()?;
    let format = r.text.as_ref().and_then(|t| t.get("format"));
    let mut conv = conversation(&r)?;
    conv.output_schema = compat::format_schema(format, "text.format")?;
    r.tools(&mut conv)?;
    Ok(())
}

/// `POST /openai/v1/responses`.
pub(crate) async fn create(
    ctx: &Ctx,
    caller: &ops::Caller,
    session: Option<String>,
    r: CreateRequest,
) -> Result<Response, ApiError> {
    r.check()?;
    let target = compat::resolve_model(ctx, &r.model)?;
    let format = r.text.as_ref().and_then(|t| t.get("format"));
    let mut conv = conversation(&r)?;
    conv.output_schema = compat::format_schema(format, "text.format")?;
    let mut ignored = r.tools(&mut conv)?;
    conv.reasoning_effort = r.reasoning.as_ref().and_then(|x| x.effort);
    let include = r.include.as_deref().unwrap_or_default();
    conv.show_reasoning = r.reasoning.as_ref().is_some_and(|x| x.summary.is_some())
        || include.iter().any(|i| i == INCLUDE_REASONING);
    if include.iter().any(|i| i != INCLUDE_REASONING) {
        ignored.push("include".into());
    }
    ignored.extend(compat::effort_for(
        ctx,
        &target,
        &mut conv,
        "reasoning.effort",
    ));
    // Continue the session of the named response (its owner only).
    let session = match &r.previous_response_id {
        Some(prev) => {
            let stored = ctx
                .responses
                .get(prev, caller.owner())
                .await
                .ok_or_else(|| not_found(prev, Some("previous_response_id")))?;
            Some(stored.session_id.ok_or_else(|| {
                ApiError::new(
                    Kind::Conflict,
                    Code::ResponseNotResumable,
                    format!("response {prev:?} kept no session to continue"),
                )
                .with_param("previous_response_id")
            })?)
        }
        None => session,
    };
    let started = compat::start(ctx, caller, session, ApiStyle::OpenAi, &target, conv).await?;
    let shape = Shape {
        id: format!("resp_{}", compat::new_id()),
        message_id: format!("msg_{}", compat::new_id()),
        created_at: compat::unix_now(),
        model: r.model.clone(),
        instructions: r.instructions.clone(),
        previous_response_id: r.previous_response_id.clone(),
        store: r.store.unwrap_or(true),
        metadata: r.metadata.clone().unwrap_or_else(|| json!({})),
        format: format.cloned().unwrap_or_else(|| json!({"type": "text"})),
        reasoning_id: format!("rs_{}", compat::new_id()),
        reasoning: String::new(),
    };
    let keep = Keep {
        ctx: ctx.clone(),
        owner: caller.owner().map(str::to_string),
        session_id: started.meta.session_id.clone(),
        backend: target.backend,
    };
    if r.stream.unwrap_or(false) {
        let frames = EventFrames::new(shape, keep);
        let mut resp = compat::stream(ctx, started, frames).await?;
        compat::name_ignored(&mut resp, &ignored);
        return Ok(resp);
    }
    let reply = compat::complete(ctx, started).await?;
    let mut shape = shape;
    shape.reasoning = reply.reasoning.clone();
    if let Some(m) = &reply.shown_model {
        shape.model = m.clone();
    }
    let body = shape.object(
        "completed",
        Some(&reply.text),
        &reply.calls,
        Some(&reply.result),
        None,
    );
    if shape.store {
        keep.save(&shape.id, &body).await;
    }
    let mut resp = json_response(StatusCode::OK, &body);
    compat::set_run_headers(&mut resp, &reply.session_id, &reply.served);
    compat::name_ignored(&mut resp, &ignored);
    Ok(resp)
}

/// What storing a finished response needs.
#[derive(Clone)]
struct Keep {
    ctx: Ctx,
    owner: Option<String>,
    session_id: Option<String>,
    backend: clinvk_shared::api::Backend,
}

impl Keep {
    fn record(&self, body: &Value) -> Stored {
        Stored {
            owner: self.owner.clone(),
            session_id: self.session_id.clone(),
            backend: self.backend,
            body: body.clone(),
        }
    }

    async fn save(&self, id: &str, body: &Value) {
        if let Err(e) = self.ctx.responses.put(id, self.record(body)).await {
            tracing::error!(response = %id, error = %e, "cannot store the response");
        }
    }

    fn save_now(&self, id: &str, body: &Value) {
        if let Err(e) = self.ctx.responses.put_now(id, &self.record(body)) {
            tracing::error!(response = %id, error = %e, "cannot store the response");
        }
    }
}

/// `GET /openai/v1/responses/{id}`.
pub(crate) async fn get(ctx: &Ctx, caller: &ops::Caller, id: &str) -> Result<Response, ApiError> {
    let stored = ctx
        .responses
        .get(id, caller.owner())
        .await
        .ok_or_else(|| not_found(id, None))?;
    Ok(json_response(StatusCode::OK, &stored.body))
}

/// `DELETE /openai/v1/responses/{id}`.
pub(crate) async fn delete(
    ctx: &Ctx,
    caller: &ops::Caller,
    id: &str,
) -> Result<Response, ApiError> {
    match ctx.responses.delete(id, caller.owner()).await {
        Ok(true) => Ok(json_response(
            StatusCode::OK,
            &json!({"id": id, "object": "response.deleted", "deleted": true}),
        )),
        Ok(false) => Err(not_found(id, None)),
        Err(e) => Err(ApiError::new(
            Kind::Internal,
            Code::ResponseStoreError,
            format!("cannot delete the response: {e}"),
        )),
    }
}
