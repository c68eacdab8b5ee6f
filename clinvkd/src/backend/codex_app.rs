//! codex's live mode: `codex app-server`, JSON-RPC over stdio (one message per line, no
//! `jsonrpc` member). The messages clinvk sends and the ones it reads are typed below, after the
//! JSON Schema the pinned CLI prints (`codex app-server generate-json-schema`); the parts of
//! that schema they follow are kept in `codex-app-server.schema.json` and a test checks both
//! the messages against it and it against the installed CLI.
//!
//! Per worker: `initialize`, `initialized`, then `thread/start` (or `thread/resume` of the
//! session) — written at once, answered while the worker waits. Per turn: `turn/start` with the
//! text (and local images, and the output schema), then `item/agentMessage/delta` token deltas,
//! `thread/tokenUsage/updated`, `error`, and `turn/completed` ending it. The server's approval
//! requests are answered (file changes accepted in `auto` mode, everything else declined: no
//! one is there to ask), any other request with a JSON-RPC error.

use super::jsonrpc::{self, Dialect, Message, TurnMarks};
use super::{Driver, Event, Invocation, Step};
use clinvk_shared::types::TokenUsage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The app-server writes no `jsonrpc` member.
const RPC: Dialect = Dialect { jsonrpc: None };

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InitializeParams {
    pub(crate) client_info: ClientInfo,
}

#[derive(Serialize)]
pub(crate) struct ClientInfo {
    pub(crate) name: &'static str,
    pub(crate) version: &'static str,
}

/// The session settings of `thread/start` and `thread/resume`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ThreadSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) approval_policy: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sandbox: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) developer_instructions: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ThreadStartParams {
    #[serde(flatten)]
    pub(crate) settings: ThreadSettings,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) ephemeral: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ThreadResumeParams {
    pub(crate) thread_id: String,
    /// The history is not sent back (clinvk has it; codex warns that full hydration is
    /// deprecated).
    pub(crate) exclude_turns: bool,
    #[serde(flatten)]
    pub(crate) settings: ThreadSettings,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TurnStartParams {
    pub(crate) thread_id: String,
    pub(crate) input: Vec<UserInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output_schema: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TurnInterruptParams {
    pub(crate) thread_id: String,
    pub(crate) turn_id: String,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum UserInput {
    Text { text: String },
    LocalImage { path: String },
}

/// The answer to an approval request.
#[derive(Serialize)]
struct Decision {
    decision: &'static str,
}

#[derive(Deserialize)]
struct ThreadResult {
    thread: ThreadRef,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct ThreadRef {
    id: String,
}

#[derive(Deserialize)]
struct TurnResult {
    turn: TurnRef,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TurnRef {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<TurnError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TurnError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    codex_error_info: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaNote {
    turn_id: String,
    delta: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemNote {
    turn_id: String,
    item: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageNote {
    turn_id: String,
    token_usage: UsageBreakdown,
}

#[derive(Deserialize)]
struct UsageBreakdown {
    last: UsageCounts,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageCounts {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorNote {
    error: TurnError,
    #[serde(default)]
    will_retry: bool,
    #[serde(default)]
    turn_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TurnNote {
    turn: TurnRef,
}

/// A turn's input, until its thread is known.
struct QueuedTurn {
    input: Vec<UserInput>,
    output_schema: Option<Value>,
}

const INITIALIZE: u64 = 1;
const OPEN_THREAD: u64 = 2;

/// The driver of one app-server worker.
pub(crate) struct AppServer {
    settings: ThreadSettings,
    ephemeral: bool,
    resume: Option<String>,
    /// Accept file-change approvals (`approval_mode: auto`).
    accept_edits: bool,
    /// No extra flags: the live mode can take the turns.
    plain: bool,
    thread: Option<String>,
    model: Option<String>,
    next_id: u64,
    /// The `turn/start` written and not answered yet.
    turn_request: Option<u64>,
    turn: Option<String>,
    /// A turn asked for before the thread was open.
    queued: Option<QueuedTurn>,
    marks: TurnMarks,
    /// The session could not be opened: every turn fails with this.
    broken: Option<String>,
    /// The account's windows as last reported (see `codex_limits`).
    limits: Option<clinvk_shared::quota::AccountLimits>,
}

impl AppServer {
    pub(crate) fn new(
        settings: ThreadSettings,
        ephemeral: bool,
        resume: Option<String>,
        accept_edits: bool,
        plain: bool,
    ) -> Self {
        AppServer {
            settings,
            ephemeral,
            resume,
            accept_edits,
            plain,
            thread: None,
            model: None,
            next_id: OPEN_THREAD + 1,
            turn_request: None,
            turn: None,
            queued: None,
            marks: TurnMarks::default(),
            broken: None,
            limits: None,
        }
    }

    fn turn_line(&mut self, thread: &str, turn: QueuedTurn) -> String {
        let id = self.next_id;
        self.next_id += 1;
        self.turn_request = Some(id);
        RPC.request(
            id,
            "turn/start",
            TurnStartParams {
                thread_id: thread.to_string(),
                input: turn.input,
                output_schema: turn.output_schema,
            },
        )
    }

    fn fail(&mut self, out: &mut Step, message: String) {
        self.marks.fail(out, message);
    }

    fn announce(&mut self, out: &mut Step) {
        self.marks
            .announce(out, self.thread.as_deref(), self.model.as_deref());
    }

    /// Whether a turn-scoped notification belongs to the running turn.
    fn current(&self, turn_id: &str) -> bool {
        self.turn.as_deref() == Some(turn_id)
    }

    fn on_response(&mut self, id: u64, result: Result<Value, jsonrpc::RpcError>, out: &mut Step) {
        let result = match result {
            Ok(r) => r,
            Err(err) => {
                let what = match id {
                    INITIALIZE => "initialize".to_string(),
                    OPEN_THREAD if self.resume.is_some() => format!(
                        "cannot resume thread {}",
                        self.resume.as_deref().unwrap_or_default()
                    ),
                    OPEN_THREAD => "cannot start a thread".to_string(),
                    _ => "turn/start".to_string(),
                };
                let message = format!("codex app-server: {what}: {}", err.message);
                if id <= OPEN_THREAD {
                    self.broken = Some(message.clone());
                }
                if self.queued.take().is_some() || Some(id) == self.turn_request {
                    self.fail(out, message);
                    out.end = true;
                }
                return;
            }
        };
        if id == OPEN_THREAD {
            match serde_json::from_value::<ThreadResult>(result) {
                Ok(r) => {
                    self.thread = Some(r.thread.id.clone());
                    self.model = r.model;
                    if let Some(turn) = self.queued.take() {
                        let line = self.turn_line(&r.thread.id, turn);
                        out.write.push(line);
                    }
                    self.announce(out);
                }
                Err(e) => {
                    let message = format!("codex app-server: unexpected thread answer: {e}");
                    self.broken = Some(message.clone());
                    if self.queued.take().is_some() {
                        self.fail(out, message);
                        out.end = true;
                    }
                }
            }
        } else if Some(id) == self.turn_request {
            self.turn_request = None;
            match serde_json::from_value::<TurnResult>(result) {
                Ok(r) => self.turn = Some(r.turn.id),
                Err(e) => {
                    self.fail(
                        out,
                        format!("codex app-server: unexpected turn answer: {e}"),
                    );
                    out.end = true;
                }
            }
        }
    }

    fn on_request(&self, id: Value, method: &str, out: &mut Step) {
        let decision = match method {
            "item/fileChange/requestApproval" | "applyPatchApproval" if self.accept_edits => {
                Some(if method == "applyPatchApproval" {
                    "approved"
                } else {
                    "accept"
                })
            }
            "item/fileChange/requestApproval" | "item/commandExecution/requestApproval" => {
                Some("decline")
            }
            "applyPatchApproval" | "execCommandApproval" => Some("denied"),
            _ => None,
        };
        out.write.push(match decision {
            Some(d) => RPC.reply(id, Decision { decision: d }),
            None => RPC.refuse(id, method),
        });
    }

    fn on_notification(&mut self, method: &str, params: Value, out: &mut Step) {
        match method {
            "item/agentMessage/delta" => {
                if let Ok(n) = serde_json::from_value::<DeltaNote>(params) {
                    if self.current(&n.turn_id) && !n.delta.is_empty() {
                        out.events.push(Event::TextDelta { text: n.delta });
                    }
                }
            }
            "item/completed" => {
                if let Ok(n) = serde_json::from_value::<ItemNote>(params) {
                    if self.current(&n.turn_id) {
                        out.events.extend(item_events(&n.item));
                    }
                }
            }
            "item/started" => {
                if let Ok(n) = serde_json::from_value::<ItemNote>(params) {
                    if self.current(&n.turn_id) && n.item["type"] == "commandExecution" {
                        out.events.push(Event::ToolUse {
                            id: n.item["id"].as_str().map(str::to_string),
                            name: "shell".into(),
                            input: serde_json::json!({"command": n.item["command"]}),
                        });
                    }
                }
            }
            "thread/tokenUsage/updated" => {
                if let Ok(n) = serde_json::from_value::<UsageNote>(params) {
                    if self.current(&n.turn_id) {
                        out.events.push(Event::Usage(TokenUsage {
                            input_tokens: n.token_usage.last.input_tokens,
                            output_tokens: n.token_usage.last.output_tokens,
                            ..Default::default()
                        }));
                    }
                }
            }
            // The account's windows, after every turn (also between turns: kept for a refusal).
            "account/rateLimits/updated" => {
                if let Some(l) = super::codex_limits::from_update(params) {
                    self.limits = Some(l.clone());
                    if self.turn.is_some() {
                        out.events.push(Event::Limits(l));
                    }
                }
            }
            "error" => {
                if let Ok(n) = serde_json::from_value::<ErrorNote>(params) {
                    if !n.will_retry && n.turn_id.as_deref().is_none_or(|t| self.current(t)) {
                        if n.error.codex_error_info.as_ref().and_then(Value::as_str)
                            == Some(super::codex_limits::USAGE_LIMIT_EXCEEDED)
                        {
                            out.events
                                .push(super::codex_limits::refused(self.limits.as_ref()));
                        }
                        self.fail(out, super::codex::error_text(&n.error.message));
                    }
                }
            }
            "turn/completed" => {
                if let Ok(n) = serde_json::from_value::<TurnNote>(params) {
                    if self.current(&n.turn.id) {
                        match n.turn.status.as_deref() {
                            Some("failed") => {
                                let msg = n
                                    .turn
                                    .error
                                    .map(|e| super::codex::error_text(&e.message))
                                    .unwrap_or_else(|| "the turn failed".into());
                                self.fail(out, msg);
                            }
                            Some("interrupted") => self.fail(out, "interrupted".into()),
                            _ => {}
                        }
                        self.turn = None;
                        out.end = true;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The events of a completed item of the running turn.
fn item_events(item: &Value) -> Vec<Event> {
    match item["type"].as_str() {
        Some("agentMessage") => vec![Event::Message {
            text: item["text"].as_str().unwrap_or_default().to_string(),
        }],
        Some("reasoning") => {
            let text: Vec<&str> = item["summary"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if text.is_empty() {
                vec![]
            } else {
                vec![Event::Thinking {
                    text: text.join("\n"),
                }]
            }
        }
        Some("commandExecution") => vec![Event::ToolResult {
            id: item["id"].as_str().map(str::to_string),
            output: item["aggregatedOutput"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            is_error: item["exitCode"].as_i64().is_some_and(|c| c != 0),
        }],
        _ => vec![],
    }
}

impl Driver for AppServer {
    fn open(&mut self) -> Vec<String> {
        let init = RPC.request(
            INITIALIZE,
            "initialize",
            InitializeParams {
                client_info: ClientInfo {
                    name: "clinvk",
                    version: clinvk_shared::VERSION,
                },
            },
        );
        let initialized = RPC.notify::<()>("initialized", None);
        let open = match &self.resume {
            Some(thread) => RPC.request(
                OPEN_THREAD,
                "thread/resume",
                ThreadResumeParams {
                    thread_id: thread.clone(),
                    exclude_turns: true,
                    settings: self.settings.clone(),
                },
            ),
            None => RPC.request(
                OPEN_THREAD,
                "thread/start",
                ThreadStartParams {
                    settings: self.settings.clone(),
                    ephemeral: self.ephemeral,
                },
            ),
        };
        vec![init, initialized, open]
    }

    fn turn(&mut self, inv: &Invocation) -> Vec<String> {
        self.marks.begin();
        self.turn = None;
        let mut input = vec![UserInput::Text {
            text: inv.prompt.clone(),
        }];
        input.extend(inv.image_files.iter().map(|p| UserInput::LocalImage {
            path: p.display().to_string(),
        }));
        let turn = QueuedTurn {
            input,
            output_schema: inv.output_schema.clone(),
        };
        match self.thread.clone() {
            Some(thread) => vec![self.turn_line(&thread, turn)],
            None => {
                // Written when `thread/start` (or `thread/resume`) answers.
                self.queued = Some(turn);
                vec![]
            }
        }
    }

    fn on_line(&mut self, line: &str) -> Step {
        let mut out = Step::default();
        if let Some(why) = self.broken.clone() {
            if self.queued.take().is_some() || self.turn_request.is_some() {
                self.fail(&mut out, why);
                out.end = true;
                return out;
            }
        }
        let msg = match jsonrpc::parse(line) {
            Ok(m) => m,
            Err(events) => {
                out.events = events;
                return out;
            }
        };
        self.announce(&mut out);
        match msg {
            Some(Message::Request { id, method, .. }) => self.on_request(id, &method, &mut out),
            Some(Message::Response { id, result }) => self.on_response(id, result, &mut out),
            Some(Message::Notification { method, params }) => {
                self.on_notification(&method, params, &mut out)
            }
            None => {}
        }
        out
    }

    fn key(&self) -> String {
        format!("{:?} ephemeral={}", self.settings, self.ephemeral)
    }

    fn accepts(&self, _inv: &Invocation) -> bool {
        self.plain
    }

    fn healthy(&self) -> bool {
        self.broken.is_none()
    }

    /// `turn/interrupt`: codex ends the turn with `turn/completed` (status `interrupted`). Before
    /// `turn/start` answered, the turn has no id yet: the worker is stopped instead.
    fn interrupt(&mut self) -> Option<Vec<String>> {
        let (thread, turn) = (self.thread.clone()?, self.turn.clone()?);
        let id = self.next_id;
        self.next_id += 1;
        Some(vec![RPC.request(
            id,
            "turn/interrupt",
            TurnInterruptParams {
                thread_id: thread,
                turn_id: turn,
            },
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned CLI's schema of one message (see the module doc).
    fn schema(name: &str) -> jsonschema::Validator {
        let path = format!(
            "{}/tests/fixtures/codex-0.169.0-app-server-schema/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
    }

    fn params_valid(line: &str, schema_name: &str) {
        let v: Value = serde_json::from_str(line).unwrap();
        let errors: Vec<String> = schema(schema_name)
            .iter_errors(&v["params"])
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{schema_name}: {errors:?} in {line}");
    }

    fn settings() -> ThreadSettings {
        ThreadSettings {
            cwd: Some("/work".into()),
            approval_policy: Some("never"),
            sandbox: Some("read-only"),
            model: Some("gpt-x".into()),
            developer_instructions: Some("be terse".into()),
        }
    }

    #[test]
    fn requests_follow_the_pinned_schema() {
        let mut d = AppServer::new(settings(), true, None, false, true);
        let open = d.open();
        assert_eq!(open.len(), 3);
        params_valid(&open[0], "v1/InitializeParams");
        assert_eq!(open[1], r#"{"method":"initialized"}"#);
        params_valid(&open[2], "v2/ThreadStartParams");
        let mut resumed = AppServer::new(settings(), false, Some("t-1".into()), false, true);
        let open = resumed.open();
        assert!(
            open[2].contains(r#""method":"thread/resume""#),
            "{}",
            open[2]
        );
        params_valid(&open[2], "v2/ThreadResumeParams");

        // A turn before the thread is open is held, then written with the thread id.
        let inv = Invocation {
            prompt: "look".into(),
            image_files: vec!["/tmp/a.png".into()],
            output_schema: Some(serde_json::json!({"type": "object"})),
            ..Default::default()
        };
        assert!(d.turn(&inv).is_empty());
        let step = d.on_line(r#"{"id":2,"result":{"thread":{"id":"th-9"}}}"#);
        assert_eq!(step.write.len(), 1, "{step:?}");
        params_valid(&step.write[0], "v2/TurnStartParams");
        assert!(step.write[0].contains(r#""threadId":"th-9""#));
        assert!(step.write[0].contains(r#""type":"localImage","path":"/tmp/a.png""#));
        assert_eq!(
            step.events,
            vec![Event::SessionStarted {
                session_id: "th-9".into(),
                model: None
            }]
        );
    }

    #[test]
    fn approval_answers_follow_the_pinned_schema() {
        let d = AppServer::new(settings(), false, None, true, true);
        let mut out = Step::default();
        d.on_request(
            Value::from(7),
            "item/commandExecution/requestApproval",
            &mut out,
        );
        d.on_request(Value::from(8), "item/fileChange/requestApproval", &mut out);
        d.on_request(Value::from(9), "item/tool/requestUserInput", &mut out);
        let answers: Vec<Value> = out
            .write
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(answers[0]["result"]["decision"], "decline");
        assert!(schema("CommandExecutionRequestApprovalResponse").is_valid(&answers[0]["result"]));
        assert_eq!(answers[1]["result"]["decision"], "accept"); // auto: edits are accepted
        assert!(schema("FileChangeRequestApprovalResponse").is_valid(&answers[1]["result"]));
        assert_eq!(answers[2]["error"]["code"], -32601);
        assert_eq!(answers[2]["id"], 9);
    }

    /// A turn as the pinned CLI printed it against the fake model.
    const TURN: &str = include_str!("../../tests/fixtures/codex-0.169.0-app-server-turn.jsonl");

    #[test]
    fn a_recorded_turn_gives_deltas_usage_and_the_end() {
        let mut d = AppServer::new(settings(), false, None, false, true);
        d.open();
        d.turn(&Invocation {
            prompt: "hello one".into(),
            ..Default::default()
        });
        let mut events = Vec::new();
        let mut ended = false;
        for line in TURN.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            // The notifications clinvk reads match the schema it was typed after.
            let name = match v["method"].as_str() {
                Some("item/agentMessage/delta") => Some("v2/AgentMessageDeltaNotification"),
                Some("thread/tokenUsage/updated") => Some("v2/ThreadTokenUsageUpdatedNotification"),
                Some("turn/completed") => Some("v2/TurnCompletedNotification"),
                Some("item/completed") => Some("v2/ItemCompletedNotification"),
                _ => None,
            };
            if let Some(n) = name {
                assert!(schema(n).is_valid(&v["params"]), "{n}: {line}");
            }
            assert!(!ended, "events after the end");
            let step = d.on_line(line);
            events.extend(step.events);
            ended = step.end;
        }
        assert!(ended);
        let deltas: String = events
            .iter()
            .filter_map(|e| match e {
                Event::TextDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas, "fake-reply turns=1 last=hello one");
        assert!(
            events
                .iter()
                .filter(|e| matches!(e, Event::TextDelta { .. }))
                .count()
                >= 2
        );
        assert!(
            matches!(&events[0], Event::SessionStarted { session_id, .. } if session_id == "01a22a00-03ce-7711-b5b0-090d4d7a70af")
        );
        assert!(events.contains(&Event::Message {
            text: "fake-reply turns=1 last=hello one".into()
        }));
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Usage(u) if u.output_tokens == 4 && u.input_tokens > 0)));
        assert!(!events.iter().any(|e| matches!(e, Event::Error { .. })));
    }

    #[test]
    fn a_failed_turn_and_a_refused_resume_are_errors() {
        let mut d = AppServer::new(settings(), false, None, false, true);
        d.open();
        d.on_line(r#"{"id":2,"result":{"thread":{"id":"th"}}}"#);
        d.turn(&Invocation::default());
        d.on_line(r#"{"id":3,"result":{"turn":{"id":"tu"}}}"#);
        let s = d.on_line(
            r#"{"method":"error","params":{"error":{"message":"{\"error\":{\"message\":\"quota\"}}"},"willRetry":false,"threadId":"th","turnId":"tu"}}"#,
        );
        assert_eq!(
            s.events,
            vec![Event::Error {
                message: "quota".into()
            }]
        );
        let s = d.on_line(
            r#"{"method":"turn/completed","params":{"threadId":"th","turn":{"id":"tu","status":"failed","error":{"message":"quota"}}}}"#,
        );
        assert!(s.end && s.events.is_empty(), "one error per turn: {s:?}");
        assert!(d.healthy());

        let mut r = AppServer::new(settings(), false, Some("gone".into()), false, true);
        r.open();
        r.turn(&Invocation::default());
        let s = r.on_line(
            r#"{"id":2,"error":{"code":-32600,"message":"no rollout found for thread id gone"}}"#,
        );
        assert!(s.end);
        assert!(
            matches!(&s.events[..], [Event::Error { message }] if message.contains("cannot resume thread gone"))
        );
        assert!(!r.healthy());
    }
}
