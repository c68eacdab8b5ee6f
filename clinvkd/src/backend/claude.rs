//! Claude Code (`claude`): `-p --output-format stream-json --verbose --include-partial-messages`.

use super::*;
use clinvk_shared::quota::{AccountLimits, QuotaWindow, WindowStatus};
use serde_json::Value;

pub(crate) struct Claude;

/// Flags a request's `extra` may use: none that grants tools, permissions or folders
/// (`--permission-mode`, `--allowedTools`, `--add-dir`, … need `allowed_extra_flags`).
const ALLOW: &[&str] = &[
    "--disallowedTools <tools>",
    "--disallowed-tools <tools>",
    "--append-system-prompt <text>",
    "--fallback-model <model>",
];

impl Adapter for Claude {
    fn backend(&self) -> Backend {
        Backend::Claude
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: ImageDelivery::Inline,
            output_schema: SchemaDelivery::Argument,
            client_tools: ToolSupport::Always,
        }
    }

    fn claims_model(&self, lower: &str) -> bool {
        lower.contains("claude")
    }

    fn model_families(&self) -> &'static str {
        "claude-…"
    }

    fn credential_folders(&self) -> &'static [&'static str] {
        &[".claude"]
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        ALLOW
    }

    /// `--effort` takes low, medium, high, xhigh and max: none and minimal are its low.
    fn effort_args(&self, effort: ReasoningEffort) -> Option<Vec<String>> {
        let level = match effort {
            ReasoningEffort::None | ReasoningEffort::Minimal => "low",
            e => e.as_str(),
        };
        Some(vec!["--effort".into(), level.into()])
    }

    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError> {
        let mut a = session_args(inv, cfg)?;
        // Images: the prompt goes through stdin as one stream-json user message with image blocks.
        if !inv.images.is_empty() {
            a.extend(["--input-format".to_string(), "stream-json".to_string()]);
            let line = user_message(&inv.prompt, &inv.images);
            return Ok(CommandSpec::for_run(
                "claude",
                cfg,
                inv,
                a,
                Some(format!("{line}\n")),
            ));
        }
        // claude reads a long prompt from stdin when no prompt argument is given.
        let stdin = push_prompt(&mut a, &inv.prompt, None);
        Ok(CommandSpec::for_run("claude", cfg, inv, a, stdin))
    }

    fn parser(&self) -> Box<dyn LineParser> {
        Box::new(Parser::default())
    }

    /// One process is one session: each user message written to stdin is one turn, answered
    /// with the usual stream-json lines and one `result`.
    fn live(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<LiveSpec, ArgvError> {
        let mut a = session_args(inv, cfg)?;
        a.extend(["--input-format".to_string(), "stream-json".to_string()]);
        Ok(LiveSpec {
            command: CommandSpec::for_run("claude", cfg, inv, a, None),
            driver: Box::new(Live::default()),
        })
    }
}

/// One stream-json user message: the prompt and its images.
fn user_message(prompt: &str, images: &[Image]) -> Value {
    let mut content = vec![serde_json::json!({"type": "text", "text": prompt})];
    content.extend(images.iter().map(|i| {
        serde_json::json!({"type": "image", "source": {"type": "base64", "media_type": i.media_type, "data": i.base64}})
    }));
    serde_json::json!({"type": "user", "message": {"role": "user", "content": content}})
}

/// The driver of claude's live mode.
#[derive(Default)]
struct Live {
    parser: Parser,
}

impl Driver for Live {
    fn open(&mut self) -> Vec<String> {
        vec![]
    }

    fn turn(&mut self, inv: &Invocation) -> Vec<String> {
        self.parser = Parser::default();
        vec![user_message(&inv.prompt, &inv.images).to_string()]
    }

    fn on_line(&mut self, line: &str) -> Step {
        let events = self.parser.parse_line(line);
        Step {
            events,
            write: vec![],
            end: self.parser.saw_result,
        }
    }

    fn key(&self) -> String {
        String::new() // everything is in the argv
    }

    fn accepts(&self, _inv: &Invocation) -> bool {
        true
    }

    /// The interrupt control request: claude answers with a `control_response`, then ends the
    /// turn with an error `result` (`error_during_execution`) and takes the next message.
    fn interrupt(&mut self) -> Option<Vec<String>> {
        Some(vec![serde_json::json!({
            "type": "control_request",
            "request_id": format!("clinvk-interrupt-{}", uuid::Uuid::new_v4().simple()),
            "request": {"subtype": "interrupt"}
        })
        .to_string()])
    }
}

/// The options of a claude session (everything but the prompt and how it is passed).
fn session_args(inv: &Invocation, cfg: &BackendSettings) -> Result<Vec<String>, ArgvError> {
    let mut a: Vec<String> = [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut push = |k: &str, v: &str| {
        a.push(k.to_string());
        a.push(v.to_string());
    };
    if let Some(m) = model_for(inv, cfg) {
        push("--model", &m);
    }
    // Note: claude keeps a session's first system prompt; on --resume it ignores a new one.
    if let Some(sp) = inv.system_prompt.as_deref().filter(|s| !s.is_empty()) {
        push("--system-prompt", sp);
    }
    if let Some(n) = inv.max_turns {
        push("--max-turns", &n.to_string());
    }
    if let [flag, level] = &super::effort_args_of(&Claude, inv)[..] {
        push(flag, level);
    }
    let mode = match (inv.approval_mode, inv.sandbox_mode) {
        (ApprovalMode::Auto, _) => Some("acceptEdits"),
        (ApprovalMode::None, _) => Some("dontAsk"),
        (ApprovalMode::Always, _) => Some("manual"),
        (ApprovalMode::Default, SandboxMode::ReadOnly) => Some("plan"),
        _ => None,
    };
    if let Some(m) = mode {
        push("--permission-mode", m);
    }
    let mut allowed = cfg.allowed_tools.clone();
    if let Some(ct) = &inv.client_tools {
        // Only the client's tools (the MCP endpoint), allowed without a prompt; the built-in
        // tools are off unless `tools.builtin`.
        let mcp = serde_json::json!({"mcpServers": {crate::tools::SERVER_NAME: {"type": "http", "url": ct.url}}});
        push("--mcp-config", &mcp.to_string());
        allowed.push(format!("mcp__{}", crate::tools::SERVER_NAME));
        if !ct.builtin {
            push("--tools", "");
        }
    }
    if !allowed.is_empty() {
        push("--allowedTools", &allowed.join(","));
    }
    if let Some(id) = &inv.resume {
        push("--resume", id);
    }
    // Structured output: claude gives the model a tool to call with the answer and reports
    // it as the result.
    if let Some(schema) = &inv.output_schema {
        push("--json-schema", &schema.to_string());
    }
    if inv.client_tools.is_some() {
        a.push("--strict-mcp-config".into());
    }
    if inv.ephemeral {
        a.push("--no-session-persistence".into());
    }
    a.extend(cfg.extra_flags.iter().cloned());
    a.extend(check_extra(&inv.extra, ALLOW, cfg)?);
    Ok(a)
}

/// claude's `rate_limit_info` (read from the API's `anthropic-ratelimit-unified-*` headers).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RateLimitInfo {
    status: WindowStatus,
    #[serde(default)]
    resets_at: Option<i64>,
    #[serde(default)]
    rate_limit_type: Option<String>,
    #[serde(default)]
    unified_windows: std::collections::BTreeMap<String, UnifiedWindow>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UnifiedWindow {
    #[serde(default)]
    utilization: f64,
    #[serde(default)]
    resets_at: Option<i64>,
    #[serde(default)]
    status: WindowStatus,
}

/// The account's windows from a `rate_limit_event` (nothing when it does not parse).
fn rate_limits(info: &Value) -> Option<Event> {
    let info: RateLimitInfo = serde_json::from_value(info.clone()).ok()?;
    Some(Event::Limits(AccountLimits {
        status: info.status,
        limiting_window: info.rate_limit_type,
        resets_at: info.resets_at,
        windows: info
            .unified_windows
            .into_iter()
            .map(|(name, w)| QuotaWindow {
                minutes: match name.as_str() {
                    "five_hour" => Some(300),
                    "seven_day" | "seven_day_opus" | "seven_day_sonnet" => Some(7 * 24 * 60),
                    _ => None,
                },
                name,
                utilization: w.utilization,
                resets_at: w.resets_at,
                status: w.status,
            })
            .collect(),
        seen_at: crate::quota::now(),
        source: "claude rate_limit_event".into(),
    }))
}

#[derive(Default)]
struct Parser {
    session_announced: bool,
    saw_error: bool,
    saw_result: bool,
}

fn usage_of(v: &Value) -> TokenUsage {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let cache = n("cache_creation_input_tokens") + n("cache_read_input_tokens");
    TokenUsage {
        input_tokens: n("input_tokens") + cache,
        output_tokens: n("output_tokens"),
        cache_tokens: cache,
        cost_usd: None,
    }
}

impl LineParser for Parser {
    fn parse_line(&mut self, line: &str) -> Vec<Event> {
        let v = match json_line(line) {
            Ok(v) => v,
            Err(events) => return events,
        };
        let mut out = Vec::new();
        if !self.session_announced {
            if let Some(sid) = v["session_id"].as_str() {
                self.session_announced = true;
                out.push(Event::SessionStarted {
                    session_id: sid.to_string(),
                    model: v["model"].as_str().map(str::to_string),
                });
            }
        }
        match v["type"].as_str() {
            Some("stream_event") => {
                let ev = &v["event"];
                if ev["type"] == "content_block_delta" {
                    match ev["delta"]["type"].as_str() {
                        Some("text_delta") => out.push(Event::TextDelta {
                            text: ev["delta"]["text"].as_str().unwrap_or_default().to_string(),
                        }),
                        Some("thinking_delta") => out.push(Event::Thinking {
                            text: ev["delta"]["thinking"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        }),
                        _ => {}
                    }
                }
            }
            // An API failure, or a refusal for a spent quota window (a text from the
            // `<synthetic>` model, "You've hit your 5-hour limit…"), is first reported as an
            // assistant message; the result line that follows carries the error.
            // A refusal names the spent window here too (claude prints `rate_limit_event` only
            // when the state changes: a warm worker's second refused turn has none).
            Some("assistant")
                if v["is_api_error_message"].as_bool() == Some(true)
                    || v["message"]["model"] == "<synthetic>" =>
            {
                if v["api_error"] == "usage_limit_reached" {
                    out.extend(rate_limits(&v["api_error_params"]["rate_limit_info"]));
                }
            }
            // Under a subscription login: the account's quota windows.
            Some("rate_limit_event") => out.extend(rate_limits(&v["rate_limit_info"])),
            Some("assistant") => {
                let mut text = Vec::new();
                for block in v["message"]["content"].as_array().into_iter().flatten() {
                    match block["type"].as_str() {
                        Some("text") => {
                            text.push(block["text"].as_str().unwrap_or_default().to_string())
                        }
                        Some("tool_use") => out.push(Event::ToolUse {
                            id: block["id"].as_str().map(str::to_string),
                            name: block["name"].as_str().unwrap_or_default().to_string(),
                            input: block["input"].clone(),
                        }),
                        _ => {}
                    }
                }
                if !text.is_empty() {
                    out.push(Event::Message {
                        text: text.join(""),
                    });
                }
            }
            Some("user") => {
                for block in v["message"]["content"].as_array().into_iter().flatten() {
                    if block["type"] == "tool_result" {
                        let output = match &block["content"] {
                            Value::String(s) => s.clone(),
                            Value::Array(parts) => parts
                                .iter()
                                .filter_map(|p| p["text"].as_str())
                                .collect::<Vec<_>>()
                                .join("\n"),
                            other => other.to_string(),
                        };
                        out.push(Event::ToolResult {
                            id: block["tool_use_id"].as_str().map(str::to_string),
                            output,
                            is_error: block["is_error"].as_bool().unwrap_or(false),
                        });
                    }
                }
            }
            Some("result") => {
                self.saw_result = true;
                out.push(Event::Usage(TokenUsage {
                    cost_usd: v["total_cost_usd"].as_f64(),
                    ..usage_of(&v["usage"])
                }));
                let is_error = v["is_error"].as_bool().unwrap_or(false);
                let text = v["result"].as_str().map(str::to_string);
                out.push(Event::Result {
                    text: text.clone(),
                    is_error,
                });
                if is_error {
                    self.saw_error = true;
                    let errors: Vec<String> = v["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect();
                    let message = text
                        .filter(|t| !t.is_empty())
                        .or_else(|| (!errors.is_empty()).then(|| errors.join("; ")))
                        .unwrap_or_else(|| {
                            format!(
                                "claude reported an error ({})",
                                v["subtype"].as_str().unwrap_or("unknown")
                            )
                        });
                    out.push(Event::Error { message });
                }
            }
            Some("system") => {}
            Some(_) => {}
            None => out.push(Event::Unparsed {
                line: line.to_string(),
            }),
        }
        out
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        exit_error("claude", self.saw_error, exit_code, stderr_tail)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::super::testutil::{inv, replay};
    use super::*;

    #[test]
    fn rate_limit_events_and_a_refusal() {
        let mut p = Parser::default();
        let warn = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","resetsAt":1796700000,"rateLimitType":"five_hour","isUsingOverage":false,"unifiedWindows":{"five_hour":{"utilization":0.91,"resetsAt":1796700000,"status":"allowed_warning"},"seven_day":{"utilization":0.42,"resetsAt":1797000000,"status":"allowed"}}},"session_id":"s"}"#;
        let events = p.parse_line(warn);
        let Some(Event::Limits(l)) = events.iter().find(|e| matches!(e, Event::Limits(_))) else {
            panic!("{events:?}")
        };
        assert_eq!(l.status, WindowStatus::AllowedWarning);
        assert_eq!(l.limiting_window.as_deref(), Some("five_hour"));
        let w: Vec<(&str, f64, Option<u32>)> = l
            .windows
            .iter()
            .map(|w| (w.name.as_str(), w.utilization, w.minutes))
            .collect();
        assert_eq!(
            w,
            [
                ("five_hour", 0.91, Some(300)),
                ("seven_day", 0.42, Some(10080))
            ]
        );
        // A refusal: the synthetic text is not output, the run fails, the report says why.
        let mut out = Outcome::default();
        for line in [
            r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1796700000,"rateLimitType":"five_hour","unifiedWindows":{"five_hour":{"utilization":1.0,"resetsAt":1796700000,"status":"rejected"}}},"session_id":"s"}"#,
            r#"{"type":"assistant","message":{"model":"<synthetic>","role":"assistant","content":[{"type":"text","text":"You've hit your 5-hour limit"}]},"session_id":"s"}"#,
            r#"{"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"You've hit your 5-hour limit","session_id":"s","usage":{}}"#,
        ] {
            for e in p.parse_line(line) {
                out.apply(&e);
            }
        }
        assert!(out.is_error);
        assert_eq!(out.output(), "");
        assert_eq!(
            out.refused.as_ref().map(|l| l.status),
            Some(WindowStatus::Rejected)
        );
    }

    #[test]
    fn argv() {
        let cfg = BackendSettings::default();
        let mut i = inv("claude", "-hello");
        let spec = Claude.build(&i, &cfg).unwrap();
        assert_eq!(
            spec.args,
            [
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
                "--",
                "-hello"
            ]
        );
        assert_eq!(spec.program, "claude");
        i.model = Some("sonnet".into());
        i.system_prompt = Some("be brief".into());
        i.max_turns = Some(3);
        i.approval_mode = ApprovalMode::Auto;
        i.resume = Some("abc".into());
        i.ephemeral = true;
        i.extra = vec!["--fallback-model".into(), "haiku".into()];
        let args = Claude.build(&i, &cfg).unwrap().args;
        let tail: Vec<&str> = args[5..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "--model",
                "sonnet",
                "--system-prompt",
                "be brief",
                "--max-turns",
                "3",
                "--permission-mode",
                "acceptEdits",
                "--resume",
                "abc",
                "--no-session-persistence",
                "--fallback-model",
                "haiku",
                "--",
                "-hello"
            ]
        );
        i.extra = vec!["--dangerously-skip-permissions".into()];
        assert!(matches!(
            Claude.build(&i, &cfg),
            Err(ArgvError::DisallowedFlag(..))
        ));
        let mut i = inv("claude", "x");
        i.sandbox_mode = SandboxMode::ReadOnly;
        assert!(Claude
            .build(&i, &cfg)
            .unwrap()
            .args
            .windows(2)
            .any(|w| w == ["--permission-mode", "plan"]));
        i.approval_mode = ApprovalMode::None;
        assert!(Claude
            .build(&i, &cfg)
            .unwrap()
            .args
            .windows(2)
            .any(|w| w == ["--permission-mode", "dontAsk"]));
    }

    #[test]
    fn ok_stream() {
        let (o, e, x) = fixture!("claude-2.1.328-", "ok");
        let (events, out) = replay(&mut *Claude.parser(), o, e, x);
        assert_eq!(
            out.session_id.as_deref(),
            Some("1b18f70d-443c-483d-a197-ee9a42506920")
        );
        let deltas = events
            .iter()
            .filter(|e| matches!(e, Event::TextDelta { .. }))
            .count();
        assert!(deltas >= 2, "{deltas}");
        assert_eq!(
            out.output(),
            "fake-reply turns=1 last=Say hello in a few words"
        );
        assert_eq!(out.usage.output_tokens, 8);
        assert_eq!(out.usage.input_tokens, 12315);
        assert!(out.error.is_none() && !out.is_error);
        assert_eq!(out.unparsed, 0);
    }

    #[test]
    fn resume_and_system() {
        for (o, e, x) in [
            fixture!("claude-2.1.328-", "resume"),
            fixture!("claude-2.1.328-", "system"),
        ] {
            let (_, out) = replay(&mut *Claude.parser(), o, e, x);
            assert!(out.output().starts_with("fake-reply"), "{}", out.output());
            assert!(out.error.is_none());
        }
        let (o, e, x) = fixture!("claude-2.1.328-", "resume");
        let (_, out) = replay(&mut *Claude.parser(), o, e, x);
        assert!(out.output().contains("turns=2"), "{}", out.output());
    }

    #[test]
    fn api_error_is_an_error() {
        let (o, e, x) = fixture!("claude-2.1.328-", "error");
        let (_, out) = replay(&mut *Claude.parser(), o, e, x);
        assert!(out.is_error);
        assert!(
            out.error.as_deref().unwrap().contains("400"),
            "{:?}",
            out.error
        );
    }

    #[test]
    fn bad_resume() {
        let (o, e, x) = fixture!("claude-2.1.328-", "badresume");
        let (_, out) = replay(&mut *Claude.parser(), o, e, x);
        assert!(
            out.error
                .as_deref()
                .unwrap()
                .contains("No conversation found"),
            "{:?}",
            out.error
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut p = Claude.parser();
        assert!(matches!(
            p.parse_line("not json")[0],
            Event::Unparsed { .. }
        ));
        assert!(p.parse_line("").is_empty());
        assert!(matches!(p.parse_line("[1,2]")[0], Event::Unparsed { .. }));
        let big = "x".repeat(1 << 20);
        assert!(matches!(p.parse_line(&big)[0], Event::Unparsed { .. }));
        let (o, e, x) = fixture!("claude-2.1.328-", "json");
        let (_, out) = replay(&mut *Claude.parser(), o, e, x);
        assert!(out.error.is_none());
        let ev = p.finish(Some(1), "boom\nError: it broke\n");
        assert_eq!(
            ev,
            vec![Event::Error {
                message: "Error: it broke".into()
            }]
        );
    }

    #[test]
    fn live_mode_turns_and_interrupt() {
        let cfg = BackendSettings::default();
        let mut i = inv("claude", "look at this");
        i.images = vec![Image {
            media_type: "image/png".into(),
            base64: "iVBORw0KGgo=".into(),
            bytes: Default::default(),
        }];
        let live = Claude.live(&i, &cfg).unwrap();
        let args = &live.command.args;
        assert!(args
            .windows(2)
            .any(|w| w == ["--input-format", "stream-json"]));
        assert!(
            !args.iter().any(|a| a == "look at this"),
            "the prompt goes to stdin per turn"
        );
        let mut d = live.driver;
        assert!(d.open().is_empty());
        let line: Value = serde_json::from_str(&d.turn(&i)[0]).unwrap();
        assert_eq!(line["type"], "user");
        assert_eq!(line["message"]["content"][0]["text"], "look at this");
        assert_eq!(
            line["message"]["content"][1]["source"]["media_type"],
            "image/png"
        );
        let step = d.on_line(r#"{"type":"stream_event","session_id":"s1","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}}"#);
        assert!(
            !step.end
                && step
                    .events
                    .contains(&Event::TextDelta { text: "hi".into() })
        );
        let int: Value = serde_json::from_str(&d.interrupt().unwrap()[0]).unwrap();
        assert_eq!(int["type"], "control_request");
        assert_eq!(int["request"]["subtype"], "interrupt");
        let step = d.on_line(r#"{"type":"result","subtype":"error_during_execution","is_error":true,"session_id":"s1","result":"","usage":{}}"#);
        assert!(step.end);
        // The next turn starts clean.
        d.turn(&i);
        let step = d.on_line(r#"{"type":"result","subtype":"success","is_error":false,"session_id":"s1","result":"ok","usage":{"output_tokens":2}}"#);
        assert!(step.end && !step.events.iter().any(|e| matches!(e, Event::Error { .. })));
    }
}
