//! The OpenAI-compatible API under `/openai/v1/`: models and chat completions (JSON or SSE).

use super::compat::{self, CallView, Conversation, Frames, Msg, Role};
use super::error::{json_response, ApiError, Render as _};
use clinvk_shared::api::ApiStyle;

use crate::ctx::Ctx;
use crate::ops;
use crate::ops::prompt::PromptResult;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;

fn model_object(ctx: &Ctx, id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": compat::owner_of(ctx, id)})
}

/// `GET /openai/v1/models`.
pub(crate) fn models(ctx: &Ctx) -> Response {
    let created = ctx_created(ctx);
    let data: Vec<Value> = compat::model_ids(ctx)
        .iter()
        .map(|id| model_object(ctx, id, created))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// When the daemon started (a stable `created` for the listed models).
fn ctx_created(ctx: &Ctx) -> u64 {
    compat::unix_now().saturating_sub(ctx.started.elapsed().as_secs())
}

/// `GET /openai/v1/models/{id}`.
pub(crate) fn model(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    compat::resolve_model(ctx, id)?;
    Ok(json_response(
        StatusCode::OK,
        &model_object(ctx, id, ctx_created(ctx)),
    ))
}

/// A chat completion request. The fields read here are honoured or refused (400 naming them);
/// any other field is accepted and named in `X-Clinvk-Ignored-Params` (`temperature`, `seed`,
/// `max_tokens`…: the CLIs cannot enforce them, and ignoring them changes nothing a client
/// relies on).
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    /// Stop sequences: the answer ends before the first (see `Conversation::stop`).
    #[serde(default)]
    stop: Option<Value>,
    /// Refused when true: the CLIs report no log probabilities.
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<Value>,
    /// Refused when not empty (until tool calls are passed through).
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    functions: Option<Vec<Value>>,
    #[serde(default)]
    function_call: Option<Value>,
    /// `text`, or structured output: `json_object`, `json_schema` (the answer is checked
    /// against the schema; one that does not match is an error).
    #[serde(default)]
    response_format: Option<Value>,
    /// `["text"]` only.
    #[serde(default)]
    modalities: Option<Vec<String>>,
    #[serde(default)]
    audio: Option<Value>,
    #[serde(default)]
    web_search_options: Option<Value>,
    /// Through the CLI's effort setting where it has one (else named ignored).
    #[serde(default)]
    reasoning_effort: Option<clinvk_shared::api::ReasoningEffort>,
}

impl ChatRequest {
    /// The request, checked and translated once into the conversation every backend runs.
    fn conversation(&self) -> Result<Conversation, ApiError> {
        self.check()?;
        let mut conv = conversation(&self.messages)?;
        conv.output_schema =
            compat::format_schema(self.response_format.as_ref(), "response_format")?;
        self.tools(&mut conv)?;
        conv.stop = self.stop_sequences()?;
        conv.reasoning_effort = self.reasoning_effort;
        // OpenAI-compatible servers answer the reasoning in `reasoning_content` when asked for
        // an effort.
        conv.show_reasoning = self.reasoning_effort.is_some();
        Ok(conv)
    }

    /// `stop`: a string or up to 4 strings (none empty); the answer ends before the first.
    fn stop_sequences(&self) -> Result<Vec<String>, ApiError> {
        let bad = |m: &str| compat::invalid("stop", m);
        let list: Vec<String> = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("`stop` must be a string or an array of strings"))?,
            Some(_) => return Err(bad("`stop` must be a string or an array of strings")),
        };
        if list.len() > 4 {
            return Err(bad("`stop` holds at most 4 sequences"));
        }
        if list.iter().any(String::is_empty) {
            return Err(bad("`stop` must not hold an empty sequence"));
        }
        Ok(list)
    }

    /// The legacy function-calling form (`functions` without `tools`): answered in that form,
    /// `message.function_call` and `finish_reason: function_call`, one call per answer.
    fn legacy_functions(&self) -> bool {
        self.tools.as_ref().is_none_or(Vec::is_empty)
            && self.functions.as_ref().is_some_and(|f| !f.is_empty())
    }

    /// The client's functions (`tools`, or the legacy `functions`) and the choice.
    fn tools(&self, conv: &mut Conversation) -> Result<(), ApiError> {
        conv.one_call = self.legacy_functions();
        let mut tools = Vec::new();
        for (i, t) in self.tools.iter().flatten().enumerate() {
            let param = format!("tools[{i}]");
            let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
            if kind != "function" {
                return Err(compat::unsupported(
                    &format!("{param}.type"),
                    format!("tool type {kind:?} is not supported (function tools only)"),
                ));
            }
            let f = t
                .get("function")
                .ok_or_else(|| compat::invalid(&param, "a function tool needs `function`"))?;
            tools.push(compat::function_tool(f, &format!("{param}.function"))?);
        }
        for (i, f) in self.functions.iter().flatten().enumerate() {
            tools.push(compat::function_tool(f, &format!("functions[{i}]"))?);
        }
        let (param, choice) = match (&self.tool_choice, &self.function_call) {
            (Some(c), _) if !c.is_null() => ("tool_choice", Some(c)),
            (_, Some(c)) if !c.is_null() => ("function_call", Some(c)),
            _ => ("tool_choice", None),
        };
        let choice = compat::openai_tool_choice(choice, param)?;
        conv.set_tools(tools, choice, param)
    }

    /// Refuses what the CLIs cannot do and a client would rely on.
    fn check(&self) -> Result<(), ApiError> {
        let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
        if self.n.is_some_and(|n| n != 1) {
            return Err(compat::unsupported(
                "n",
                "only `n: 1` is supported (one CLI run answers one choice)",
            ));
        }
        if self.logprobs == Some(true) || set(&self.top_logprobs) {
            return Err(compat::unsupported(
                "logprobs",
                "log probabilities are not available from the CLIs; send `logprobs: false`",
            ));
        }
        if self
            .modalities
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m != "text"))
            || set(&self.audio)
        {
            return Err(compat::unsupported(
                "modalities",
                "only text output is supported",
            ));
        }
        if set(&self.web_search_options) {
            return Err(compat::unsupported(
                "web_search_options",
                "`web_search_options` is not supported: web search depends on the CLI's own tools",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    #[serde(default)]
    function_call: Option<Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn conversation(messages: &[ChatMessage]) -> Result<Conversation, ApiError> {
    if messages.is_empty() {
        return Err(compat::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut conv = Conversation::default();
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        let (text, images) = compat::openai_content(m.content.as_ref(), &param)?;
        let at = conv.messages.len();
        conv.images.extend(images.into_iter().map(|img| (at, img)));
        match m.role.as_str() {
            "system" | "developer" => conv.add_system(&text),
            "user" => conv.messages.push(Msg::new(Role::User, text)),
            "assistant" => {
                let mut text = text;
                let calls = m.tool_calls.iter().flatten().chain(m.function_call.iter());
                for c in calls {
                    let f = c.get("function").unwrap_or(c);
                    let name = f.get("name").and_then(Value::as_str).unwrap_or("tool");
                    let args = f
                        .get("arguments")
                        .map(|a| {
                            a.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| a.to_string())
                        })
                        .unwrap_or_default();
                    let id = c.get("id").and_then(Value::as_str);
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&match id {
                        Some(id) => format!("[called tool {name} (call {id}) with {args}]"),
                        None => format!("[called tool {name} with {args}]"),
                    });
                }
                conv.messages.push(Msg::new(Role::Assistant, text));
            }
            "tool" | "function" => conv.messages.push(Msg::tool_result(
                m.tool_call_id.clone().or_else(|| m.name.clone()),
                text,
                false,
            )),
            other => {
                return Err(compat::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {other:?} (system, developer, user, assistant, tool)"),
                ))
            }
        }
    }
    Ok(conv)
}

/// The `tool_calls` of an assistant message.
fn tool_calls_json(calls: &[CallView]) -> Value {
    calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json()}}))
        .collect()
}

fn usage_json(r: &PromptResult) -> Value {
    let u = r.token_usage;
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// The request decoding of `chat`, without a daemon (for the fuzz tests).
#[cfg(test)]
pub(crate) fn decode(v: Value) -> Result<(), ApiError> {
    let cr: ChatRequest = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(crate::error::Code::InvalidRequest, e.to_string()))?;
    cr.conversation().map(|_| ())
}

pub(crate) async fn chat(
    ctx: &Ctx,
    caller: &ops::Caller,
    session: Option<String>,
    cr: ChatRequest,
) -> Result<Response, ApiError> {
    let mut conv = cr.conversation()?;
    let target = compat::resolve_model(ctx, &cr.model)?;
    let ignored = compat::effort_for(ctx, &target, &mut conv, "reasoning_effort");
    let started = compat::start(ctx, caller, session, ApiStyle::OpenAi, &target, conv).await?;
    let id = format!("chatcmpl-{}", compat::new_id());
    let created = compat::unix_now();
    let legacy = cr.legacy_functions();
    if cr.stream.unwrap_or(false) {
        let frames = ChunkFrames {
            id,
            created,
            legacy,
            model: cr.model.clone(),
            include_usage: cr
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        };
        let mut resp = compat::stream(ctx, started, frames).await?;
        compat::name_ignored(&mut resp, &ignored);
        return Ok(resp);
    }
    let reply = compat::complete(ctx, started).await?;
    let mut message = json!({"role": "assistant", "content": reply.text, "refusal": null});
    if !reply.reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reply.reasoning.clone());
    }
    let finish = match reply.calls.first() {
        None => "stop",
        Some(first) => {
            if reply.text.is_empty() {
                message["content"] = Value::Null;
            }
            if legacy {
                message["function_call"] =
                    json!({"name": first.name, "arguments": first.arguments_json()});
                "function_call"
            } else {
                message["tool_calls"] = tool_calls_json(&reply.calls);
                "tool_calls"
            }
        }
    };
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": reply.shown_model.as_deref().unwrap_or(&cr.model),
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage_json(&reply.result),
            "system_fingerprint": null,
        }),
    );
    compat::set_run_headers(&mut resp, &reply.session_id, &reply.served);
    compat::name_ignored(&mut resp, &ignored);
    Ok(resp)
}

/// `chat.completion.chunk` frames.
struct ChunkFrames {
    id: String,
    created: u64,
    /// The legacy `functions` form: a `function_call` delta, `finish_reason: function_call`.
    legacy: bool,
    model: String,
    include_usage: bool,
}

impl ChunkFrames {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        data_frame(&v)
    }
}

fn data_frame(v: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend(serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Frames for ChunkFrames {
    fn serve_as(&mut self, model: &str) {
        self.model = model.to_string();
    }

    fn start(&mut self) -> Vec<Bytes> {
        vec![self.chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            None,
        )]
    }

    fn delta(&mut self, text: &str) -> Vec<Bytes> {
        vec![self.chunk(
            json!([{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]),
            None,
        )]
    }

    fn thinking(&mut self, text: &str) -> Vec<Bytes> {
        vec![self.chunk(
            json!([{"index": 0, "delta": {"reasoning_content": text}, "logprobs": null, "finish_reason": null}]),
            None,
        )]
    }

    fn finish(&mut self, result: &PromptResult) -> Vec<Bytes> {
        let mut out = vec![self.chunk(
            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
            None,
        )];
        if self.include_usage {
            out.push(self.chunk(json!([]), Some(usage_json(result))));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn calls(&mut self, calls: &[CallView]) -> Vec<Bytes> {
        if self.legacy {
            let mut out: Vec<Bytes> = calls
                .first()
                .map(|c| {
                    self.chunk(
                        json!([{"index": 0, "delta": {"function_call": {
                            "name": c.name, "arguments": c.arguments_json(),
                        }}, "logprobs": null, "finish_reason": null}]),
                        None,
                    )
                })
                .into_iter()
                .collect();
            out.push(self.chunk(
                json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "function_call"}]),
                None,
            ));
            if self.include_usage {
                out.push(self.chunk(json!([]), Some(usage_json(&PromptResult::default()))));
            }
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            return out;
        }
        let mut out: Vec<Bytes> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.chunk(
                    json!([{"index": 0, "delta": {"tool_calls": [{
                        "index": i, "id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments_json()},
                    }]}, "logprobs": null, "finish_reason": null}]),
                    None,
                )
            })
            .collect();
        out.push(self.chunk(
            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}]),
            None,
        ));
        if self.include_usage {
            out.push(self.chunk(json!([]), Some(usage_json(&PromptResult::default()))));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    fn error(&mut self, e: &ApiError) -> Vec<Bytes> {
        vec![data_frame(&e.body(super::error::Style::OpenAi))]
    }
}
