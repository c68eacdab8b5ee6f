//! The live mode of any CLI that speaks the Agent Client Protocol (JSON-RPC 2.0 over stdio, one
//! message per line): `gemini --acp`, `copilot --acp`, `opencode acp`. What differs per CLI
//! comes in `AcpOptions`.
//!
//! Per worker: `initialize` (protocol version 1, no file-system or terminal capability: the CLI
//! uses its own), then `session/new`, or `session/load` of the session to resume when the CLI
//! loads sessions well (`AcpOptions::resumes`; the history it replays before its answer is not
//! a turn's output). Per turn: `session/prompt` → `session/update` notifications
//! (`agent_message_chunk` token pieces, `agent_thought_chunk`, `tool_call`) → the request's
//! result (`stopReason`, token counts in `usage` or gemini's `_meta.quota.token_count`). Permission requests are answered with the reject option (nobody
//! is there to ask; the configured approval mode decides what the CLI asks at all), any other
//! request with a JSON-RPC error.

use super::jsonrpc::{self, Dialect, Message, TurnMarks};
use super::{Driver, Event, Invocation, Step};
use clinvk_shared::types::TokenUsage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// ACP messages carry `"jsonrpc": "2.0"`.
const RPC: Dialect = Dialect {
    jsonrpc: Some("2.0"),
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitializeParams {
    protocol_version: u32,
    client_capabilities: ClientCapabilities,
    client_info: ClientInfo,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientCapabilities {
    fs: FsCapabilities,
    terminal: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FsCapabilities {
    read_text_file: bool,
    write_text_file: bool,
}

#[derive(Serialize)]
struct ClientInfo {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NewSessionParams {
    cwd: String,
    mcp_servers: Vec<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadSessionParams {
    session_id: String,
    cwd: String,
    mcp_servers: Vec<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PromptParams {
    session_id: String,
    prompt: Vec<ContentBlock>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum ContentBlock {
    Text { text: String },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CancelParams {
    session_id: String,
}

#[derive(Serialize)]
struct PermissionOutcome {
    outcome: Outcome,
}

#[derive(Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
enum Outcome {
    Selected {
        #[serde(rename = "optionId")]
        option_id: String,
    },
    Cancelled,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSessionResult {
    session_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptResult {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default, rename = "_meta")]
    meta: Option<PromptMeta>,
    #[serde(default)]
    usage: Option<PromptUsage>,
}

/// The `usage` of a `session/prompt` result (copilot: totals since the session was opened in
/// this process; see `AcpOptions::cumulative_usage`).
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct PromptUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cached_read_tokens: u64,
    #[serde(default)]
    cached_write_tokens: u64,
}

#[derive(Deserialize)]
struct PromptMeta {
    #[serde(default)]
    quota: Option<Quota>,
}

#[derive(Deserialize)]
struct Quota {
    #[serde(default)]
    token_count: Option<TokenCount>,
}

#[derive(Deserialize)]
struct TokenCount {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateNote {
    session_id: String,
    update: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PermissionRequest {
    #[serde(default)]
    options: Vec<PermissionOption>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PermissionOption {
    option_id: String,
    #[serde(default)]
    kind: String,
}

const INITIALIZE: u64 = 0;
const OPEN_SESSION: u64 = 1;

/// What one CLI's ACP worker needs besides the protocol.
pub(crate) struct AcpOptions {
    /// How its errors are named (`gemini --acp`).
    pub(crate) label: &'static str,
    /// The session's working folder.
    pub(crate) cwd: String,
    /// Whether the live mode takes turns with images (else they go one-shot).
    pub(crate) images: bool,
    /// MCP servers of the session (the daemon's client-tools endpoint).
    pub(crate) mcp_servers: Vec<Value>,
    /// Whether a new worker may load an existing session (see `Driver::resumes`).
    pub(crate) resumes: bool,
    /// The session to load (`session/load`) instead of opening a new one; only when `resumes`.
    pub(crate) load: Option<String>,
    /// The result's `usage` counts since the session was opened in this process, not the
    /// turn's alone: each turn reports the difference.
    pub(crate) cumulative_usage: bool,
    /// A CLI that reports a failed model call as the turn's text (copilot 1.0.102: one
    /// `agent_message_chunk` "Error: 400 …", then `end_turn` with no `usage`): a turn whose
    /// first text starts with this is held until its result; without `usage` it is the
    /// turn's error, with `usage` it was the answer and goes out.
    pub(crate) error_text_prefix: Option<&'static str>,
    /// A cancelled turn leaves nothing in the session (see `Driver::interrupt_forgets_turn`).
    pub(crate) cancel_forgets_turn: bool,
    /// Reads a failed turn's error as a refusal for a spent limit (the CLI's own words: ACP has
    /// no field for it).
    pub(crate) refusal: Option<Refusal>,
}

/// A CLI's reading of an error message as a refusal for a spent limit.
pub(crate) type Refusal = fn(&str) -> Option<clinvk_shared::quota::AccountLimits>;

/// The ACP `session/new` MCP servers of a run: the daemon's client-tools endpoint, if any.
pub(crate) fn mcp_servers(inv: &Invocation) -> Vec<Value> {
    inv.client_tools
        .as_ref()
        .map(|ct| {
            vec![serde_json::json!({
                "type": "http",
                "name": crate::tools::SERVER_NAME,
                "url": ct.url,
                "headers": [],
            })]
        })
        .unwrap_or_default()
}

/// The driver of one ACP worker.
pub(crate) struct Acp {
    label: &'static str,
    resumes: bool,
    load: Option<String>,
    cumulative_usage: bool,
    /// The usage totals reported so far (with `cumulative_usage`).
    usage_seen: PromptUsage,
    error_text_prefix: Option<&'static str>,
    cancel_forgets_turn: bool,
    refusal: Option<Refusal>,
    /// This turn's text so far, while it may be an error report (`error_text_prefix`).
    held: Option<String>,
    /// This turn has given out text.
    spoke: bool,
    cwd: String,
    session: Option<String>,
    next_id: u64,
    /// The `session/prompt` of the running turn.
    prompt_request: Option<u64>,
    /// A turn asked for before the session was open.
    queued: Option<Vec<ContentBlock>>,
    marks: TurnMarks,
    broken: Option<String>,
    /// No images: the live mode can take the turn (images go one-shot, as `@path` files).
    plain: bool,
    /// MCP servers of the session (the daemon's client-tools endpoint).
    mcp_servers: Vec<Value>,
}

impl Acp {
    /// `plain`: the turn has no images.
    pub(crate) fn new(o: AcpOptions, plain: bool) -> Self {
        Acp {
            label: o.label,
            resumes: o.resumes,
            load: o.load.filter(|_| o.resumes),
            cumulative_usage: o.cumulative_usage,
            usage_seen: PromptUsage::default(),
            error_text_prefix: o.error_text_prefix,
            cancel_forgets_turn: o.cancel_forgets_turn,
            refusal: o.refusal,
            held: None,
            spoke: false,
            mcp_servers: o.mcp_servers,
            cwd: o.cwd,
            session: None,
            next_id: OPEN_SESSION + 1,
            prompt_request: None,
            queued: None,
            marks: TurnMarks::default(),
            broken: None,
            plain: plain || o.images,
        }
    }

    fn prompt_line(&mut self, session: &str, prompt: Vec<ContentBlock>) -> String {
        let id = self.next_id;
        self.next_id += 1;
        self.prompt_request = Some(id);
        RPC.request(
            id,
            "session/prompt",
            PromptParams {
                session_id: session.to_string(),
                prompt,
            },
        )
    }

    /// The turn failed; a refusal for a spent limit is reported as such first.
    fn fail(&mut self, out: &mut Step, message: String) {
        if let Some(limits) = self.refusal.and_then(|read| read(&message)) {
            out.events.push(Event::Limits(limits));
        }
        self.marks.fail(out, message);
    }

    fn announce(&mut self, out: &mut Step) {
        self.marks.announce(out, self.session.as_deref(), None);
    }

    fn on_response(&mut self, id: u64, result: Result<Value, jsonrpc::RpcError>, out: &mut Step) {
        let result = match result {
            Ok(r) => r,
            Err(err) => {
                let detail = err
                    .data
                    .as_ref()
                    .and_then(|d| d["details"].as_str())
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                let what = match id {
                    INITIALIZE => "initialize".to_string(),
                    OPEN_SESSION if self.load.is_some() => "cannot load the session".to_string(),
                    OPEN_SESSION => "cannot start a session".to_string(),
                    _ => "session/prompt".to_string(),
                };
                let message = format!("{}: {what}: {}{detail}", self.label, err.message);
                if id <= OPEN_SESSION {
                    self.broken = Some(message.clone());
                }
                if self.queued.take().is_some() || Some(id) == self.prompt_request {
                    self.prompt_request = None;
                    self.fail(out, message);
                    out.end = true;
                }
                return;
            }
        };
        if id == OPEN_SESSION {
            // `session/load` answers without an id: the session is the one asked for.
            let session = match &self.load {
                Some(s) => Some(s.clone()),
                None => serde_json::from_value::<NewSessionResult>(result)
                    .ok()
                    .map(|r| r.session_id),
            };
            match session {
                Some(s) => {
                    self.session = Some(s.clone());
                    if let Some(prompt) = self.queued.take() {
                        let line = self.prompt_line(&s, prompt);
                        out.write.push(line);
                    }
                    self.announce(out);
                }
                None => {
                    let message =
                        format!("{}: session/new answered without a session id", self.label);
                    self.broken = Some(message);
                    if self.queued.take().is_some() {
                        let m = self.broken.clone().unwrap_or_default();
                        self.fail(out, m);
                        out.end = true;
                    }
                }
            }
        } else if Some(id) == self.prompt_request {
            self.prompt_request = None;
            let r: PromptResult = serde_json::from_value(result).unwrap_or(PromptResult {
                stop_reason: None,
                meta: None,
                usage: None,
            });
            if let Some(text) = self.held.take() {
                if r.usage.is_some() {
                    out.events.push(Event::TextDelta { text });
                } else {
                    self.fail(out, format!("{}: {}", self.label, text.trim()));
                }
            }
            if let Some(u) = r.usage {
                out.events.push(Event::Usage(self.turn_usage(u)));
            } else if let Some(tc) = r.meta.and_then(|m| m.quota).and_then(|q| q.token_count) {
                out.events.push(Event::Usage(TokenUsage {
                    input_tokens: tc.input_tokens,
                    output_tokens: tc.output_tokens,
                    ..Default::default()
                }));
            }
            match r.stop_reason.as_deref() {
                Some("cancelled") => self.fail(out, "cancelled".into()),
                Some("refusal") => self.fail(out, format!("{} refused to answer", self.label)),
                Some("max_tokens") | Some("max_turn_requests") | Some("end_turn") | None => {}
                Some(other) => {
                    tracing::debug!(stop_reason = other, cli = self.label, "ACP turn ended")
                }
            }
            out.end = true;
        }
    }

    /// A turn's usage from a result's `usage` (the difference to the totals seen so far when
    /// they are cumulative).
    fn turn_usage(&mut self, u: PromptUsage) -> TokenUsage {
        let turn = if self.cumulative_usage {
            let seen = std::mem::replace(&mut self.usage_seen, u);
            PromptUsage {
                input_tokens: u.input_tokens.saturating_sub(seen.input_tokens),
                output_tokens: u.output_tokens.saturating_sub(seen.output_tokens),
                cached_read_tokens: u.cached_read_tokens.saturating_sub(seen.cached_read_tokens),
                cached_write_tokens: u
                    .cached_write_tokens
                    .saturating_sub(seen.cached_write_tokens),
            }
        } else {
            u
        };
        TokenUsage {
            input_tokens: turn.input_tokens,
            output_tokens: turn.output_tokens,
            cache_tokens: turn.cached_read_tokens + turn.cached_write_tokens,
            ..Default::default()
        }
    }

    fn on_request(&self, id: Value, method: &str, params: Value, out: &mut Step) {
        let line = match method {
            "session/request_permission" => {
                let req: PermissionRequest =
                    serde_json::from_value(params).unwrap_or(PermissionRequest { options: vec![] });
                let outcome = match req.options.iter().find(|o| o.kind == "reject_once") {
                    Some(o) => Outcome::Selected {
                        option_id: o.option_id.clone(),
                    },
                    None => Outcome::Cancelled,
                };
                RPC.reply(id, PermissionOutcome { outcome })
            }
            _ => RPC.refuse(id, method),
        };
        out.write.push(line);
    }

    fn on_update(&mut self, params: Value, out: &mut Step) {
        let Ok(n) = serde_json::from_value::<UpdateNote>(params) else {
            return;
        };
        if self.session.as_deref() != Some(n.session_id.as_str()) {
            return;
        }
        let u = &n.update;
        let kind = u["sessionUpdate"].as_str().unwrap_or_default();
        if self.prompt_request.is_none() {
            return; // between turns
        }
        let text = || {
            u["content"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        match kind {
            "agent_message_chunk" => {
                let t = text();
                if let Some(held) = self.held.as_mut() {
                    held.push_str(&t);
                } else if !self.spoke && self.error_text_prefix.is_some_and(|p| t.starts_with(p)) {
                    self.held = Some(t);
                } else if !t.is_empty() {
                    self.spoke = true;
                    out.events.push(Event::TextDelta { text: t });
                }
            }
            "agent_thought_chunk" => out.events.push(Event::Thinking { text: text() }),
            "tool_call" => out.events.push(Event::ToolUse {
                id: u["toolCallId"].as_str().map(str::to_string),
                name: u["title"].as_str().unwrap_or("tool").to_string(),
                input: u["rawInput"].clone(),
            }),
            "tool_call_update" if matches!(u["status"].as_str(), Some("completed" | "failed")) => {
                let output: Vec<String> = u["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["content"]["text"].as_str().map(str::to_string))
                    .collect();
                out.events.push(Event::ToolResult {
                    id: u["toolCallId"].as_str().map(str::to_string),
                    output: output.join("\n"),
                    is_error: u["status"] == "failed",
                });
            }
            _ => {}
        }
    }
}

impl Driver for Acp {
    fn open(&mut self) -> Vec<String> {
        let init = RPC.request(
            INITIALIZE,
            "initialize",
            InitializeParams {
                protocol_version: 1,
                client_capabilities: ClientCapabilities {
                    fs: FsCapabilities {
                        read_text_file: false,
                        write_text_file: false,
                    },
                    terminal: false,
                },
                client_info: ClientInfo {
                    name: "clinvk",
                    version: clinvk_shared::VERSION,
                },
            },
        );
        let open = match &self.load {
            Some(session) => RPC.request(
                OPEN_SESSION,
                "session/load",
                LoadSessionParams {
                    session_id: session.clone(),
                    cwd: self.cwd.clone(),
                    mcp_servers: self.mcp_servers.clone(),
                },
            ),
            None => RPC.request(
                OPEN_SESSION,
                "session/new",
                NewSessionParams {
                    cwd: self.cwd.clone(),
                    mcp_servers: self.mcp_servers.clone(),
                },
            ),
        };
        vec![init, open]
    }

    fn turn(&mut self, inv: &Invocation) -> Vec<String> {
        self.marks.begin();
        self.held = None;
        self.spoke = false;
        let mut text = super::with_system_prompt(inv, inv.system_prompt.as_deref());
        if let Some(schema) = &inv.output_schema {
            text.push_str(&super::schema_instruction(schema));
        }
        let prompt = vec![ContentBlock::Text { text }];
        match self.session.clone() {
            Some(s) => vec![self.prompt_line(&s, prompt)],
            None => {
                self.queued = Some(prompt);
                vec![]
            }
        }
    }

    fn on_line(&mut self, line: &str) -> Step {
        let mut out = Step::default();
        let msg = match jsonrpc::parse(line) {
            Ok(m) => m,
            Err(events) => {
                out.events = events;
                return out;
            }
        };
        self.announce(&mut out);
        match msg {
            Some(Message::Request { id, method, params }) => {
                self.on_request(id, &method, params, &mut out)
            }
            Some(Message::Response { id, result }) => self.on_response(id, result, &mut out),
            Some(Message::Notification { method, params }) if method == "session/update" => {
                self.on_update(params, &mut out)
            }
            _ => {}
        }
        out
    }

    fn key(&self) -> String {
        format!("cwd={} mcp={:?}", self.cwd, self.mcp_servers)
    }

    fn accepts(&self, _inv: &Invocation) -> bool {
        self.plain
    }

    fn healthy(&self) -> bool {
        self.broken.is_none()
    }

    /// `session/cancel`: the running `session/prompt` then answers `stopReason: cancelled`.
    fn interrupt(&mut self) -> Option<Vec<String>> {
        self.prompt_request?;
        let session = self.session.clone()?;
        Some(vec![RPC.notify(
            "session/cancel",
            Some(CancelParams {
                session_id: session,
            }),
        )])
    }

    fn resumes(&self) -> bool {
        self.resumes
    }

    fn interrupt_forgets_turn(&self) -> bool {
        self.cancel_forgets_turn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cwd: &str) -> AcpOptions {
        AcpOptions {
            label: "gemini --acp",
            cwd: cwd.into(),
            images: false,
            mcp_servers: vec![],
            resumes: false,
            load: None,
            cumulative_usage: false,
            error_text_prefix: None,
            cancel_forgets_turn: false,
            refusal: None,
        }
    }

    fn parsed(line: &str) -> Value {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn a_turn_from_handshake_to_result() {
        let mut d = Acp::new(opts("/work"), true);
        let open = d.open();
        assert_eq!(parsed(&open[0])["method"], "initialize");
        assert_eq!(parsed(&open[0])["params"]["protocolVersion"], 1);
        let new = parsed(&open[1]);
        assert_eq!(new["method"], "session/new");
        assert_eq!(new["params"]["cwd"], "/work");
        assert_eq!(new["params"]["mcpServers"], serde_json::json!([]));

        // The turn waits for the session.
        let inv = Invocation {
            prompt: "hello".into(),
            system_prompt: Some("SYS".into()),
            ..Default::default()
        };
        assert!(d.turn(&inv).is_empty());
        assert_eq!(d.interrupt(), None, "nothing to cancel yet");
        d.on_line(r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1}}"#);
        let step = d.on_line(r#"{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s-1"}}"#);
        assert_eq!(
            step.events,
            vec![Event::SessionStarted {
                session_id: "s-1".into(),
                model: None
            }]
        );
        let prompt = parsed(&step.write[0]);
        assert_eq!(prompt["method"], "session/prompt");
        assert_eq!(prompt["params"]["sessionId"], "s-1");
        let text = prompt["params"]["prompt"][0]["text"].as_str().unwrap();
        assert!(text.contains("SYS") && text.ends_with("hello"), "{text}");

        let step = d.on_line(r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s-1","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"fake "}}}}"#);
        assert_eq!(
            step.events,
            vec![Event::TextDelta {
                text: "fake ".into()
            }]
        );
        // Another session's update is not this turn's.
        let step = d.on_line(r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"other","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"x"}}}}"#);
        assert!(step.events.is_empty());

        let cancel = parsed(&d.interrupt().unwrap()[0]);
        assert_eq!(cancel["method"], "session/cancel");
        assert_eq!(cancel["params"]["sessionId"], "s-1");
        assert!(cancel.get("id").is_none(), "a notification");

        let step = d.on_line(r#"{"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn","_meta":{"quota":{"token_count":{"input_tokens":11,"output_tokens":4}}}}}"#);
        assert!(step.end);
        assert_eq!(
            step.events,
            vec![Event::Usage(TokenUsage {
                input_tokens: 11,
                output_tokens: 4,
                ..Default::default()
            })]
        );
    }

    #[test]
    fn permission_requests_are_refused_and_errors_end_the_turn() {
        let mut d = Acp::new(opts("/w"), true);
        d.open();
        d.on_line(r#"{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s"}}"#);
        d.turn(&Invocation::default());
        let step = d.on_line(r#"{"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{"sessionId":"s","options":[{"optionId":"proceed_once","kind":"allow_once"},{"optionId":"no","kind":"reject_once"}]}}"#);
        let answer = parsed(&step.write[0]);
        assert_eq!(answer["id"], 7);
        assert_eq!(
            answer["result"]["outcome"],
            serde_json::json!({"outcome": "selected", "optionId": "no"})
        );
        let step = d.on_line(r#"{"jsonrpc":"2.0","id":8,"method":"session/request_permission","params":{"sessionId":"s","options":[{"optionId":"proceed_once","kind":"allow_once"}]}}"#);
        assert_eq!(
            parsed(&step.write[0])["result"]["outcome"],
            serde_json::json!({"outcome": "cancelled"})
        );
        let step =
            d.on_line(r#"{"jsonrpc":"2.0","id":9,"method":"fs/read_text_file","params":{}}"#);
        assert_eq!(parsed(&step.write[0])["error"]["code"], -32601);

        let step = d
            .on_line(r#"{"jsonrpc":"2.0","id":2,"error":{"code":429,"message":"quota exceeded"}}"#);
        assert!(step.end);
        assert!(
            matches!(&step.events[..], [Event::Error { message }] if message.contains("quota exceeded"))
        );
        assert!(d.healthy(), "a failed prompt leaves the session usable");
    }

    #[test]
    fn a_loaded_session_and_cumulative_usage() {
        let mut d = Acp::new(
            AcpOptions {
                resumes: true,
                load: Some("s-old".into()),
                cumulative_usage: true,
                ..opts("/w")
            },
            true,
        );
        let load = parsed(&d.open()[1]);
        assert_eq!(load["method"], "session/load");
        assert_eq!(load["params"]["sessionId"], "s-old");
        assert_eq!(load["params"]["cwd"], "/w");
        // The replayed history is not output.
        let step = d.on_line(r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s-old","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"old answer"}}}}"#);
        assert!(step.events.is_empty());
        assert!(
            d.turn(&Invocation::default()).is_empty(),
            "waits for the load"
        );
        let step = d.on_line(r#"{"jsonrpc":"2.0","id":1,"result":{"configOptions":[]}}"#);
        assert_eq!(
            step.events,
            vec![Event::SessionStarted {
                session_id: "s-old".into(),
                model: None
            }]
        );
        assert_eq!(parsed(&step.write[0])["params"]["sessionId"], "s-old");
        let mut usage = Vec::new();
        for (id, input, output) in [(2, 100, 3), (3, 250, 7)] {
            if id > 2 {
                let line = &d.turn(&Invocation::default())[0];
                assert_eq!(parsed(line)["id"], id);
            }
            let step = d.on_line(&format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"stopReason":"end_turn","usage":{{"inputTokens":{input},"outputTokens":{output},"cachedReadTokens":0}}}}}}"#
            ));
            assert!(step.end);
            usage.extend(
                step.events
                    .into_iter()
                    .filter(|e| matches!(e, Event::Usage(_))),
            );
        }
        let per_turn = |i: u64, o: u64| {
            Event::Usage(TokenUsage {
                input_tokens: i,
                output_tokens: o,
                ..Default::default()
            })
        };
        assert_eq!(usage, vec![per_turn(100, 3), per_turn(150, 4)]);
    }

    #[test]
    fn a_session_is_loaded_only_where_the_cli_resumes() {
        let mut d = Acp::new(
            AcpOptions {
                load: Some("s-old".into()),
                ..opts("/w")
            },
            true,
        );
        assert_eq!(parsed(&d.open()[1])["method"], "session/new");
    }

    #[test]
    fn an_error_reported_as_text_is_an_error() {
        let opts = || AcpOptions {
            error_text_prefix: Some("Error: "),
            ..opts("/w")
        };
        let chunk = |t: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"session/update","params":{{"sessionId":"s","update":{{"sessionUpdate":"agent_message_chunk","content":{{"type":"text","text":"{t}"}}}}}}}}"#
            )
        };
        let mut d = Acp::new(opts(), true);
        d.open();
        d.on_line(r#"{"jsonrpc":"2.0","id":1,"result":{"sessionId":"s"}}"#);
        d.turn(&Invocation::default());
        let step = d.on_line(&chunk("Error: 400 injected"));
        assert!(
            !step
                .events
                .iter()
                .any(|e| matches!(e, Event::TextDelta { .. })),
            "held"
        );
        let step = d.on_line(r#"{"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}"#);
        assert!(step.end);
        assert_eq!(
            step.events,
            vec![Event::Error {
                message: "gemini --acp: Error: 400 injected".into()
            }]
        );
        // An answer that starts so, with usage, is an answer; and later text is never held.
        d.turn(&Invocation::default());
        d.on_line(&chunk("Error: is a word"));
        let step = d.on_line(r#"{"jsonrpc":"2.0","id":3,"result":{"stopReason":"end_turn","usage":{"inputTokens":5,"outputTokens":2}}}"#);
        assert_eq!(
            step.events[0],
            Event::TextDelta {
                text: "Error: is a word".into()
            }
        );
        d.turn(&Invocation::default());
        d.on_line(&chunk("fine "));
        let step = d.on_line(&chunk("Error: x"));
        assert_eq!(
            step.events,
            vec![Event::TextDelta {
                text: "Error: x".into()
            }]
        );
    }
}
