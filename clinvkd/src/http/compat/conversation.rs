//! A compatible request's conversation, reduced to text turns, images, an output schema and
//! client tools; the field readers the OpenAI and Anthropic modules share; rendering the turns
//! into one CLI prompt.

use super::*;
use crate::error::Code;

/// The role of one conversation turn (system and developer turns go to the system prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    User,
    Assistant,
    Tool,
}

impl Role {
    pub(super) fn name(self) -> &'static str {
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
    pub(crate) images: Vec<(usize, crate::backend::Image)>,
    /// The client's functions the model may call (empty: none, or `tool_choice: none`).
    pub(crate) tools: Vec<ClientTool>,
    pub(crate) tool_choice: ToolChoice,
    /// The client takes one call per answer (OpenAI's legacy `functions`): further calls of
    /// the same model step are answered at once with an error asking to call one at a time.
    pub(crate) one_call: bool,
    /// Stop sequences (chat `stop`, Anthropic `stop_sequences`): the answer ends before the
    /// first one.
    pub(crate) stop: Vec<String>,
    /// The request asks for the model's reasoning text (chat `reasoning_effort`, Responses
    /// `reasoning.summary`, Anthropic `thinking`): what the CLI prints of it goes out in the
    /// style's own field.
    pub(crate) show_reasoning: bool,
    /// Chat `reasoning_effort`, Responses `reasoning.effort`: through the CLI's own setting
    /// where it has one (see `compat::effort_for`).
    pub(crate) reasoning_effort: Option<clinvk_shared::api::ReasoningEffort>,
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
pub(super) fn is_tool_name(n: &str) -> bool {
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
    ApiError::bad_request(Code::InvalidRequest, msg).with_param(param)
}

/// A message's content in the OpenAI formats (chat and Responses): its text — a string, or the
/// `text`/`input_text`/`output_text`/`refusal` parts joined — and its images (chat `image_url`
/// parts, Responses `input_image` parts: data: URLs).
pub(crate) fn openai_content(
    content: Option<&Value>,
    param: &str,
) -> Result<(String, Vec<crate::backend::Image>), ApiError> {
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
                        Code::InvalidImage,
                        format!("a {kind} part needs `image_url` (a data: URL); file ids are not kept here"),
                    )
                    .with_param(at));
                }
                images.push(data_url_image(url, &format!("{at}.image_url"))?);
            }
            kind @ ("input_audio" | "file" | "input_file") => {
                return Err(ApiError::bad_request(
                    Code::UnsupportedContent,
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
pub(crate) fn data_url_image(url: &str, param: &str) -> Result<crate::backend::Image, ApiError> {
    let refuse = |msg: String| ApiError::bad_request(Code::InvalidImage, msg).with_param(param);
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
    crate::ops::prompt::decode_image(image, param)
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
    pub(super) fn split(&self) -> usize {
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
