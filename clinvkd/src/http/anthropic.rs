//! The Anthropic-compatible API under `/anthropic/v1/`: messages (JSON or SSE) and models.

use super::compat::{self, CallView, Conversation, Frames, Msg, Role, ToolChoice};
use super::error::{json_response, ApiError, Render as _, Style};
use crate::error::Code;
use clinvk_shared::api::ApiStyle;

use crate::ctx::Ctx;
use crate::ops;
use crate::ops::prompt::PromptResult;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::reply::Response;

fn model_object(ctx: &Ctx, id: &str) -> Value {
    json!({
        "type": "model",
        "id": id,
        "display_name": format!("{id} (clinvk: {})", compat::owner_of(ctx, id)),
        "created_at": ctx.started_at,
    })
}

/// `GET /anthropic/v1/models`.
pub(crate) fn models(ctx: &Ctx) -> Response {
    let ids = compat::model_ids(ctx);
    let data: Vec<Value> = ids.iter().map(|id| model_object(ctx, id)).collect();
    json_response(
        StatusCode::OK,
        &json!({"data": data, "has_more": false, "first_id": ids.first(), "last_id": ids.last()}),
    )
}

/// `GET /anthropic/v1/models/{id}`.
pub(crate) fn model(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    compat::resolve_model(ctx, id)?;
    Ok(json_response(StatusCode::OK, &model_object(ctx, id)))
}

/// A messages request. The fields read here are honoured or refused (400 naming them); any
/// other field is accepted and named in `X-Clinvk-Ignored-Params` (`temperature`, `top_k`,
/// `metadata`…; `max_tokens` is required and checked, but the CLIs cannot enforce it).
#[derive(Debug, Deserialize)]
pub(crate) struct MessagesRequest {
    model: String,
    #[serde(default)]
    max_tokens: Option<i64>,
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    /// Stop sequences: the answer ends before the first (see `Conversation::stop`).
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    /// Client tools (`{name, description, input_schema}`), called by the model through the
    /// client (see `tools`); server tools (web search, code execution, …) are refused.
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    mcp_servers: Option<Vec<Value>>,
    /// Extended thinking: its budget reaches the CLI's effort setting, and the thinking the CLI
    /// prints goes out as `thinking` blocks.
    #[serde(default)]
    thinking: Option<Thinking>,
}

/// The `thinking` field.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Thinking {
    Enabled {
        budget_tokens: u64,
    },
    /// The model decides how much to think.
    Adaptive {},
    Disabled {},
}

impl Thinking {
    /// The effort a budget stands for (the CLIs take efforts, not budgets): under 4,096 tokens
    /// low, under 16,384 medium, else high. Adaptive thinking leaves the CLI's own default.
    fn effort(&self) -> Option<clinvk_shared::api::ReasoningEffort> {
        use clinvk_shared::api::ReasoningEffort as E;
        match self {
            Thinking::Enabled { budget_tokens } if *budget_tokens < 4096 => Some(E::Low),
            Thinking::Enabled { budget_tokens } if *budget_tokens < 16384 => Some(E::Medium),
            Thinking::Enabled { .. } => Some(E::High),
            Thinking::Adaptive {} | Thinking::Disabled {} => None,
        }
    }

    fn shown(&self) -> bool {
        !matches!(self, Thinking::Disabled {})
    }
}

impl MessagesRequest {
    /// The client tools and the choice.
    fn tools(&self, conv: &mut Conversation) -> Result<(), ApiError> {
        let mut tools = Vec::new();
        for (i, t) in self.tools.iter().flatten().enumerate() {
            let param = format!("tools[{i}]");
            match t.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(other) => {
                    return Err(compat::unsupported(
                        &format!("{param}.type"),
                        format!("tool type {other:?} is not supported (client tools only)"),
                    ))
                }
            }
            tools.push(compat::client_tool(t, "input_schema", &param)?);
        }
        let choice = match &self.tool_choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(c) => match c.get("type").and_then(Value::as_str) {
                Some("auto") => ToolChoice::Auto,
                Some("none") => ToolChoice::None,
                Some("any") => ToolChoice::Required,
                Some("tool") => ToolChoice::Named(
                    c.get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            compat::invalid(
                                "tool_choice.name",
                                "`tool_choice` of type tool needs a `name`",
                            )
                        })?
                        .to_string(),
                ),
                other => {
                    return Err(compat::invalid(
                        "tool_choice.type",
                        format!("unknown tool_choice type {other:?} (auto, any, tool, none)"),
                    ))
                }
            },
        };
        conv.set_tools(tools, choice, "tool_choice")
    }
}

impl MessagesRequest {
    fn check(&self) -> Result<(), ApiError> {
        match self.max_tokens {
            Some(n) if n > 0 => {}
            Some(_) => {
                return Err(compat::invalid(
                    "max_tokens",
                    "`max_tokens` must be greater than 0",
                ))
            }
            None => return Err(compat::invalid("max_tokens", "`max_tokens` is required")),
        }
        for (i, s) in self.stop_sequences.iter().flatten().enumerate() {
            if s.is_empty() {
                return Err(compat::invalid(
                    format!("stop_sequences[{i}]"),
                    format!("`stop_sequences[{i}]` must not be empty"),
                ));
            }
        }
        if self.mcp_servers.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(compat::unsupported(
                "mcp_servers",
                "`mcp_servers` is not supported: this server does not connect to remote MCP servers; send client tools instead",
            ));
        }
        Ok(())
    }
}

/// `POST /anthropic/v1/messages/count_tokens`.
#[derive(Debug, Deserialize)]
pub(crate) struct CountRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
}

/// How `count_tokens` counts (the CLIs expose no tokenizer): named in this header.
pub(crate) const TOKEN_COUNT_HEADER: &str = "x-clinvk-token-count-method";

/// `POST /anthropic/v1/messages/count_tokens`: an estimate — a quarter of the characters of
/// the system prompt, the messages and the tool definitions, rounded up.
pub(crate) fn count_tokens(ctx: &Ctx, r: CountRequest) -> Result<Response, ApiError> {
    compat::resolve_model(ctx, &r.model)?;
    let conv = conversation(r.system.as_ref(), &r.messages)?;
    let mut chars = conv.system.as_deref().map_or(0, |s| s.chars().count());
    chars += conv
        .messages
        .iter()
        .map(|m| m.text.chars().count())
        .sum::<usize>();
    chars += r
        .tools
        .iter()
        .flatten()
        .map(|t| t.to_string().chars().count())
        .sum::<usize>();
    let mut resp = json_response(
        StatusCode::OK,
        &json!({ "input_tokens": chars.div_ceil(4) }),
    );
    resp.headers_mut().insert(
        TOKEN_COUNT_HEADER,
        warp::http::HeaderValue::from_static("estimate; characters/4"),
    );
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Value,
}

/// Text of a `tool_result` block's content (string or blocks).
fn tool_result_text(content: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(_)) => {
            blocks_text(content.unwrap_or(&Value::Null), param).map(|(t, _)| t)
        }
        Some(_) => Err(compat::invalid(
            param,
            "tool_result content must be a string or blocks",
        )),
    }
}

/// An `image` block's picture (`source.type: base64`; URLs are not fetched).
fn image_block(b: &Value, param: &str) -> Result<crate::backend::Image, ApiError> {
    let source = b.get("source").unwrap_or(&Value::Null);
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let image = clinvk_shared::api::ImageInput {
                media_type: source
                    .get("media_type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                data: source
                    .get("data")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            };
            crate::ops::prompt::decode_image(image, &format!("{param}.source"))
        }
        Some("url") => Err(ApiError::bad_request(
            Code::InvalidImage,
            "image URLs are not fetched; send the image as a base64 source",
        )
        .with_param(format!("{param}.source"))),
        _ => Err(compat::invalid(
            format!("{param}.source.type"),
            "an image source must be `base64`",
        )),
    }
}

/// The images of a content (its `image` blocks).
fn blocks_images(content: &Value, param: &str) -> Result<Vec<crate::backend::Image>, ApiError> {
    let Value::Array(blocks) = content else {
        return Ok(Vec::new());
    };
    blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.get("type").and_then(Value::as_str) == Some("image"))
        .map(|(i, b)| image_block(b, &format!("{param}[{i}]")))
        .collect()
}

/// The text of a content (string or blocks), and its tool results as their own turns.
fn blocks_text(content: &Value, param: &str) -> Result<(String, Vec<Msg>), ApiError> {
    let blocks = match content {
        Value::String(s) => return Ok((s.clone(), Vec::new())),
        Value::Array(b) => b,
        _ => {
            return Err(compat::invalid(
                param,
                "`content` must be a string or an array of content blocks",
            ))
        }
    };
    let mut texts = Vec::new();
    let mut results = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let p = format!("{param}[{i}]");
        let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "text" => texts.push(b.get("text").and_then(Value::as_str).unwrap_or("").to_string()),
            "tool_result" => {
                let id = b.get("tool_use_id").and_then(Value::as_str).map(str::to_string);
                let is_error = b.get("is_error").and_then(Value::as_bool) == Some(true);
                let text = tool_result_text(b.get("content"), &format!("{p}.content"))?;
                results.push(Msg::tool_result(id, text, is_error));
            }
            "tool_use" | "server_tool_use" => {
                let name = b.get("name").and_then(Value::as_str).unwrap_or("tool");
                let input = b.get("input").cloned().unwrap_or(Value::Null);
                texts.push(match b.get("id").and_then(Value::as_str) {
                    Some(id) => format!("[called tool {name} (call {id}) with {input}]"),
                    None => format!("[called tool {name} with {input}]"),
                });
            }
            // Images are taken by `blocks_images`.
            "thinking" | "redacted_thinking" | "image" => {}
            "document" | "search_result" | "container_upload" => {
                return Err(ApiError::bad_request(
                    Code::UnsupportedContent,
                    format!("content block type {kind:?} is not supported: the CLIs behind this server take text only; send text blocks"),
                )
                .with_param(p))
            }
            other => {
                return Err(compat::invalid(
                    format!("{p}.type"),
                    format!("unknown content block type {other:?}"),
                ))
            }
        }
    }
    Ok((texts.join("\n"), results))
}

fn conversation(system: Option<&Value>, messages: &[InMessage]) -> Result<Conversation, ApiError> {
    let mut conv = Conversation::default();
    match system {
        None | Some(Value::Null) => {}
        Some(v) => conv.add_system(&blocks_text(v, "system")?.0),
    }
    if messages.is_empty() {
        return Err(compat::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        // Tool results arrive inside user turns; their text carries their own labels.
        let param = format!("messages[{i}].content");
        let (text, results) = blocks_text(&m.content, &param)?;
        let at = conv.messages.len();
        conv.images.extend(
            blocks_images(&m.content, &param)?
                .into_iter()
                .map(|img| (at, img)),
        );
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(compat::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {other:?} (user, assistant)"),
                ))
            }
        };
        let only_results = !results.is_empty() && text.trim().is_empty();
        conv.messages.extend(results);
        if !only_results {
            conv.messages.push(Msg::new(role, text));
        }
    }
    Ok(conv)
}

/// The request decoding of `messages`, without a daemon (for the fuzz tests).
#[cfg(test)]
pub(crate) fn decode(v: Value) -> Result<(), ApiError> {
    let mr: MessagesRequest = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(Code::InvalidRequest, e.to_string()))?;
    mr.check()?;
    let mut conv = conversation(mr.system.as_ref(), &mr.messages)?;
    mr.tools(&mut conv)
}

pub(crate) async fn messages(
    ctx: &Ctx,
    caller: &ops::Caller,
    session: Option<String>,
    mr: MessagesRequest,
) -> Result<Response, ApiError> {
    mr.check()?;
    let target = compat::resolve_model(ctx, &mr.model)?;
    let mut conv = conversation(mr.system.as_ref(), &mr.messages)?;
    mr.tools(&mut conv)?;
    conv.stop = mr.stop_sequences.clone().unwrap_or_default();
    conv.reasoning_effort = mr.thinking.as_ref().and_then(Thinking::effort);
    conv.show_reasoning = mr.thinking.as_ref().is_some_and(Thinking::shown);
    let ignored = compat::effort_for(ctx, &target, &mut conv, "thinking");
    let started = compat::start(ctx, caller, session, ApiStyle::Anthropic, &target, conv).await?;
    let id = format!("msg_{}", compat::new_id());
    if mr.stream.unwrap_or(false) {
        let frames = EventFrames {
            id,
            model: mr.model.clone(),
            open: None,
            blocks: 0,
            text_seen: false,
        };
        let mut resp = compat::stream(ctx, started, frames).await?;
        compat::name_ignored(&mut resp, &ignored);
        return Ok(resp);
    }
    let reply = compat::complete(ctx, started).await?;
    let u = reply.result.token_usage;
    let mut content: Vec<Value> = Vec::new();
    if !reply.reasoning.is_empty() {
        // No signature: the thinking comes from a CLI, not from this API's model.
        content.push(json!({"type": "thinking", "thinking": reply.reasoning, "signature": ""}));
    }
    if reply.calls.is_empty() || !reply.text.is_empty() {
        content.push(json!({"type": "text", "text": reply.text}));
    }
    content.extend(reply.calls.iter().map(tool_use_block));
    let stop_reason = match (&reply.stop_sequence, reply.calls.is_empty()) {
        (Some(_), _) => "stop_sequence",
        (None, true) => "end_turn",
        (None, false) => "tool_use",
    };
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": reply.shown_model.as_deref().unwrap_or(&mr.model),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens},
        }),
    );
    compat::set_run_headers(&mut resp, &reply.session_id, &reply.served);
    compat::name_ignored(&mut resp, &ignored);
    Ok(resp)
}

/// A `tool_use` content block.
fn tool_use_block(c: &CallView) -> Value {
    json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments})
}

/// Anthropic's `event:`/`data:` frames: content blocks numbered in order, a `thinking` block
/// for the model's reasoning (when asked) and a `text` block, each opened as its first piece
/// comes.
struct EventFrames {
    id: String,
    model: String,
    /// The open block: its index, and whether it is a thinking block.
    open: Option<(usize, bool)>,
    /// Blocks opened so far.
    blocks: usize,
    text_seen: bool,
}

fn event(name: &str, data: &Value) -> Bytes {
    let mut out = format!("event: {name}\ndata: ").into_bytes();
    out.extend(serde_json::to_vec(data).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl EventFrames {
    /// The open block closes.
    fn close(&mut self, out: &mut Vec<Bytes>) {
        if let Some((index, _)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// The block for the next piece: the open one when of the same kind, else a new one.
    fn block(&mut self, thinking: bool, out: &mut Vec<Bytes>) -> usize {
        if let Some((index, kind)) = self.open {
            if kind == thinking {
                return index;
            }
        }
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        let block = if thinking {
            json!({"type": "thinking", "thinking": "", "signature": ""})
        } else {
            self.text_seen = true;
            json!({"type": "text", "text": ""})
        };
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        if index == 0 {
            // As Anthropic's API does: the ping after the first block's start.
            out.push(event("ping", &json!({"type": "ping"})));
        }
        self.open = Some((index, thinking));
        index
    }

    /// A delta of the current text (or thinking) block, opened first if needed.
    fn block_delta(&mut self, thinking: bool, delta: Value) -> Vec<Bytes> {
        let mut out = Vec::new();
        let index = self.block(thinking, &mut out);
        out.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
        out
    }

    /// The answer's blocks close (an answer without text still has its empty text block).
    fn close_all(&mut self, out: &mut Vec<Bytes>) {
        if !self.text_seen {
            self.block(false, out);
        }
        self.close(out);
    }

    /// The blocks close and the message stops for `stop_reason`.
    fn end(
        &mut self,
        result: &PromptResult,
        stop_reason: Value,
        stop_sequence: Value,
    ) -> Vec<Bytes> {
        let u = result.token_usage;
        let mut out = Vec::new();
        self.close_all(&mut out);
        out.push(event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}}),
        ));
        out.push(event("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

impl Frames for EventFrames {
    fn serve_as(&mut self, model: &str) {
        self.model = model.to_string();
    }

    fn start(&mut self) -> Vec<Bytes> {
        vec![event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        )]
    }

    fn delta(&mut self, text: &str) -> Vec<Bytes> {
        self.block_delta(false, json!({"type": "text_delta", "text": text}))
    }

    fn thinking(&mut self, text: &str) -> Vec<Bytes> {
        self.block_delta(true, json!({"type": "thinking_delta", "thinking": text}))
    }

    fn finish(&mut self, result: &PromptResult) -> Vec<Bytes> {
        self.end(result, json!("end_turn"), Value::Null)
    }

    fn stopped(&mut self, sequence: &str) -> Vec<Bytes> {
        self.end(
            &PromptResult::default(),
            json!("stop_sequence"),
            json!(sequence),
        )
    }

    /// The text block closes; each call is a `tool_use` block with its input as one JSON
    /// delta; the message stops with `tool_use`.
    fn calls(&mut self, calls: &[CallView]) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.close_all(&mut out);
        for c in calls {
            let index = self.blocks;
            self.blocks += 1;
            out.push(event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}}),
            ));
            out.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": c.arguments_json()}}),
            ));
            out.push(event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
        out.push(event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 0, "output_tokens": 0}}),
        ));
        out.push(event("message_stop", &json!({"type": "message_stop"})));
        out
    }

    fn error(&mut self, e: &ApiError) -> Vec<Bytes> {
        vec![event("error", &e.body(Style::Anthropic))]
    }

    /// Anthropic streams keep alive with `ping` events.
    fn keepalive(&mut self) -> Bytes {
        event("ping", &json!({"type": "ping"}))
    }
}
