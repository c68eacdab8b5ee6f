//! GitHub Copilot CLI (`copilot`): `--prompt=… --output-format json` (JSON lines of session
//! events), `copilot --acp` as its live mode.

use super::*;

pub(crate) struct Copilot;

/// The live mode's reading of a failed turn (`Acp::refusal`): over ACP copilot gives a failed
/// model call as the turn's text, "Error: 429 …" for the API's rate limit (measured).
fn rate_limit_text(message: &str) -> Option<clinvk_shared::quota::AccountLimits> {
    message.contains("Error: 429 ").then(|| {
        crate::quota::refusal_report(
            "copilot error text",
            None,
            crate::quota::retry_in_secs(message),
        )
    })
}

/// Flags a request's `extra` may use: `--reasoning-effort` only changes how hard the model
/// thinks. The others grant tools, paths, URLs or MCP servers (`allowed_extra_flags` may allow
/// them).
const ALLOW: &[&str] = &["--reasoning-effort <level>"];

/// Its own state and logins (`COPILOT_HOME`, default `~/.copilot`).
const STATE: &[&str] = &[".copilot"];

impl Adapter for Copilot {
    fn backend(&self) -> Backend {
        Backend::Copilot
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: ImageDelivery::Files,
            output_schema: SchemaDelivery::Instruction,
            client_tools: ToolSupport::Always,
        }
    }

    /// Copilot serves other vendors' models (claude-…, gpt-…): a name reaches it as
    /// `copilot/<model>` only.
    fn claims_model(&self, _lower: &str) -> bool {
        false
    }

    fn model_families(&self) -> &'static str {
        "copilot/<model>"
    }

    fn credential_folders(&self) -> &'static [&'static str] {
        STATE
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        ALLOW
    }

    /// `--reasoning-effort` takes every level.
    fn effort_args(&self, effort: ReasoningEffort) -> Option<Vec<String>> {
        Some(vec![format!("--reasoning-effort={}", effort.as_str())])
    }

    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError> {
        let mut full = with_system_prompt(inv, inv.system_prompt.as_deref());
        // No structured-output option: an instruction, and the engine checks.
        if let Some(schema) = &inv.output_schema {
            full.push_str(&super::schema_instruction(schema));
        }
        // `--prompt=<text>` keeps a prompt that starts with "-" a prompt. Without `--prompt`
        // copilot reads the prompt from stdin (measured: all of it, as one user message).
        let mut a = Vec::new();
        let stdin = if full.len() > STDIN_THRESHOLD {
            Some(full)
        } else {
            a.push(format!("--prompt={full}"));
            None
        };
        a.extend(["--output-format".to_string(), "json".to_string()]);
        a.extend(session_args(inv, cfg));
        for image in &inv.image_files {
            a.push(format!("--attachment={}", image.display()));
        }
        if let Some(ct) = &inv.client_tools {
            let mcp = serde_json::json!({"mcpServers": {crate::tools::SERVER_NAME: {
                "type": "http", "url": ct.url, "tools": ["*"],
            }}});
            a.push(format!("--additional-mcp-config={mcp}"));
            a.extend(tool_permissions(ct));
        }
        if let Some(id) = &inv.resume {
            a.push(format!("--resume={id}"));
        }
        a.extend(cfg.extra_flags.iter().cloned());
        a.extend(check_extra(&inv.extra, ALLOW, cfg)?);
        Ok(CommandSpec::for_run("copilot", cfg, inv, a, stdin))
    }

    fn parser(&self) -> Box<dyn LineParser> {
        Box::new(Parser::default())
    }

    /// `copilot --acp` (the ACP driver, `acp`): the session is opened, or loaded when resumed
    /// (copilot replays it and goes on; measured with 1.0.102). Images stay one-shot
    /// (`--attachment` files).
    fn live(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<LiveSpec, ArgvError> {
        let mut a = vec!["--acp".to_string()];
        a.extend(session_args(inv, cfg));
        if let Some(ct) = &inv.client_tools {
            a.extend(tool_permissions(ct));
        }
        a.extend(cfg.extra_flags.iter().cloned());
        a.extend(check_extra(&inv.extra, ALLOW, cfg)?);
        let cwd = inv
            .workdir
            .as_ref()
            .map(|w| w.display().to_string())
            .unwrap_or_else(|| ".".into());
        Ok(LiveSpec {
            command: CommandSpec::for_run("copilot", cfg, inv, a, None),
            driver: Box::new(super::acp::Acp::new(
                super::acp::AcpOptions {
                    label: "copilot --acp",
                    cwd,
                    images: false,
                    mcp_servers: super::acp::mcp_servers(inv),
                    resumes: true,
                    load: inv.resume.clone(),
                    // The result's `usage` counts since the session was opened in the process.
                    cumulative_usage: true,
                    // A failed model call is the turn's text "Error: …" (measured).
                    error_text_prefix: Some("Error: "),
                    // Measured: after `session/cancel` the next prompt is merged with the cancelled one
                    // and no part of the cancelled answer stays in the session.
                    cancel_forgets_turn: true,
                    refusal: Some(rate_limit_text),
                },
                inv.images.is_empty(),
            )),
        })
    }
}

/// The client's tools (the MCP server `clinvk`) run without a prompt; copilot's own tools are
/// not offered unless `tools.builtin` (an MCP server's name in `--available-tools` offers all
/// its tools; measured).
fn tool_permissions(ct: &crate::tools::ClientTools) -> Vec<String> {
    let server = crate::tools::SERVER_NAME;
    let mut a = vec![format!("--allow-tool={server}")];
    if !ct.builtin {
        a.push(format!("--available-tools={server}"));
    }
    a
}

/// The options of a copilot session: no update downloads, model, what it may do unasked.
///
/// Copilot has no approval modes like the others, but tool permissions: by default it runs
/// what it deems safe and asks for the rest (nobody answers here: refused). `auto` allows file
/// writes, `none` everything (`--allow-all-tools`), `read_only` denies writes and shell
/// commands (denials win over any allowance); `workspace` turns its command sandbox on.
fn session_args(inv: &Invocation, cfg: &BackendSettings) -> Vec<String> {
    let mut a = vec!["--no-auto-update".to_string(), "--no-color".to_string()];
    if let Some(m) = model_for(inv, cfg) {
        a.extend(["--model".to_string(), m]);
    }
    a.extend(super::effort_args_of(&Copilot, inv));
    match inv.approval_mode {
        ApprovalMode::Auto => a.push("--allow-tool=write".into()),
        ApprovalMode::None => a.push("--allow-all-tools".into()),
        ApprovalMode::Always | ApprovalMode::Default => {}
    }
    match inv.sandbox_mode {
        SandboxMode::ReadOnly => a.extend(["--deny-tool=write".into(), "--deny-tool=shell".into()]),
        SandboxMode::Workspace => a.push("--sandbox".into()),
        SandboxMode::Full | SandboxMode::Default => {}
    }
    a
}

#[derive(Default)]
struct Parser {
    saw_error: bool,
}

impl LineParser for Parser {
    fn parse_line(&mut self, line: &str) -> Vec<Event> {
        let v = match json_line(line) {
            Ok(v) => v,
            Err(events) => return events,
        };
        let d = &v["data"];
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        match v["type"].as_str() {
            Some("assistant.message_delta") => {
                let t = text("deltaContent");
                if t.is_empty() {
                    vec![]
                } else {
                    vec![Event::TextDelta { text: t }]
                }
            }
            // A whole message; one that only asks for tools has no text.
            Some("assistant.message") => {
                let t = text("content");
                if t.is_empty() {
                    vec![]
                } else {
                    vec![Event::Message { text: t }]
                }
            }
            Some("assistant.reasoning_delta") => vec![Event::Thinking {
                text: text("deltaContent"),
            }],
            Some("tool.execution_start") => vec![Event::ToolUse {
                id: d["toolCallId"].as_str().map(str::to_string),
                name: text("toolName"),
                input: d["arguments"].clone(),
            }],
            Some("tool.execution_complete") => vec![Event::ToolResult {
                id: d["toolCallId"].as_str().map(str::to_string),
                output: d["result"]["content"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| d["error"].to_string()),
                is_error: d["success"].as_bool() == Some(false),
            }],
            Some("session.error") => {
                self.saw_error = true;
                let mut out = Vec::new();
                // `rate_limit` (the API's 429, measured) and `quota_exhausted` (copilot's own
                // plan quota): a refusal, with no window or reset in it.
                if matches!(
                    d["errorType"].as_str(),
                    Some("rate_limit" | "quota_exhausted")
                ) {
                    out.push(Event::Limits(crate::quota::refusal_report(
                        "copilot session.error",
                        None,
                        crate::quota::retry_in_secs(&text("message")),
                    )));
                }
                out.push(Event::Error {
                    message: text("message"),
                });
                out
            }
            // The last line: the session's id (known only now) and the exit code.
            Some("result") => {
                let mut out = Vec::new();
                if let Some(id) = v["sessionId"].as_str() {
                    out.push(Event::SessionStarted {
                        session_id: id.to_string(),
                        model: None,
                    });
                }
                let is_error = v["exitCode"].as_i64().is_some_and(|c| c != 0);
                out.push(Event::Result {
                    text: None,
                    is_error,
                });
                if is_error && !self.saw_error {
                    self.saw_error = true;
                    out.push(Event::Error {
                        message: format!("copilot exited with code {}", v["exitCode"]),
                    });
                }
                out
            }
            Some(_) => vec![],
            None => vec![Event::Unparsed {
                line: line.to_string(),
            }],
        }
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        exit_error("copilot", self.saw_error, exit_code, stderr_tail)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::super::testutil::{inv, replay};
    use super::*;

    #[test]
    fn argv() {
        let cfg = BackendSettings::default();
        let mut i = inv("copilot", "-hi");
        let spec = Copilot.build(&i, &cfg).unwrap();
        assert_eq!(
            spec.args,
            [
                "--prompt=-hi",
                "--output-format",
                "json",
                "--no-auto-update",
                "--no-color"
            ]
        );
        assert_eq!(spec.stdin, None);
        i.model = Some("gpt-5.4".into());
        i.resume = Some("S1".into());
        i.approval_mode = ApprovalMode::None;
        i.sandbox_mode = SandboxMode::ReadOnly;
        assert_eq!(
            Copilot.build(&i, &cfg).unwrap().args[5..],
            [
                "--model",
                "gpt-5.4",
                "--allow-all-tools",
                "--deny-tool=write",
                "--deny-tool=shell",
                "--resume=S1"
            ]
        );
        // A long prompt goes through stdin, which copilot reads when there is no --prompt.
        let long = inv("copilot", &"x".repeat(STDIN_THRESHOLD + 1));
        let spec = Copilot.build(&long, &cfg).unwrap();
        assert!(spec.args.iter().all(|a| !a.starts_with("--prompt")));
        assert_eq!(
            spec.stdin.as_deref().map(str::len),
            Some(STDIN_THRESHOLD + 1)
        );
        // Extra flags: only the harmless one.
        let mut e = inv("copilot", "x");
        e.extra = vec!["--reasoning-effort".into(), "high".into()];
        assert!(Copilot.build(&e, &cfg).is_ok());
        e.extra = vec!["--allow-all-paths".into()];
        assert!(matches!(
            Copilot.build(&e, &cfg),
            Err(ArgvError::DisallowedFlag(..))
        ));
    }

    #[test]
    fn live_loads_a_resumed_session() {
        let cfg = BackendSettings::default();
        let mut i = inv("copilot", "hi");
        let live = Copilot.live(&i, &cfg).unwrap();
        assert_eq!(live.command.args[0], "--acp");
        assert!(live.driver.resumes());
        assert!(
            live.driver.interrupt_forgets_turn(),
            "a stopped turn is drained"
        );
        i.resume = Some("S1".into());
        let mut d = Copilot.live(&i, &cfg).unwrap().driver;
        let open: serde_json::Value = serde_json::from_str(&d.open()[1]).unwrap();
        assert_eq!(open["method"], "session/load");
        assert_eq!(open["params"]["sessionId"], "S1");
    }

    #[test]
    fn ok_and_resume() {
        let (o, e, x) = fixture!("copilot-1.0.102-", "ok");
        let (events, out) = replay(&mut *Copilot.parser(), o, e, x);
        assert!(
            events
                .iter()
                .filter(|e| matches!(e, Event::TextDelta { .. }))
                .count()
                >= 2
        );
        assert_eq!(
            out.output(),
            "fake-reply turns=1 last=Say hello in a few words"
        );
        assert!(out.session_id.is_some());
        assert!(out.error.is_none() && !out.is_error);
        let (o, e, x) = fixture!("copilot-1.0.102-", "resume");
        let (_, out) = replay(&mut *Copilot.parser(), o, e, x);
        assert_eq!(out.output(), "fake-reply turns=2 last=Which word was it?");
        assert_eq!(
            out.session_id.as_deref(),
            Some("a219a095-2bfa-49ab-8cfc-839efa5fa0d1")
        );
    }

    #[test]
    fn tools() {
        let (o, e, x) = fixture!("copilot-1.0.102-", "tool");
        let (events, out) = replay(&mut *Copilot.parser(), o, e, x);
        let used = events.iter().find_map(|e| match e {
            Event::ToolUse { name, input, .. } => Some((name.clone(), input.clone())),
            _ => None,
        });
        assert_eq!(
            used,
            Some((
                "bash".to_string(),
                serde_json::json!({"command": "echo hi-from-tool", "description": "say hi"})
            ))
        );
        assert!(events.iter().any(
            |e| matches!(e, Event::ToolResult { output, is_error: false, .. } if output.contains("hi-from-tool"))
        ));
        assert!(
            out.output().contains("tool-results=hi-from-tool"),
            "{}",
            out.output()
        );
    }

    #[test]
    fn errors() {
        let (o, e, x) = fixture!("copilot-1.0.102-", "error");
        let (_, out) = replay(&mut *Copilot.parser(), o, e, x);
        assert!(
            out.error.as_deref().unwrap().contains("injected error"),
            "{:?}",
            out.error
        );
        let (o, e, x) = fixture!("copilot-1.0.102-", "badresume");
        let (_, out) = replay(&mut *Copilot.parser(), o, e, x);
        assert!(
            out.error.as_deref().unwrap().contains("No session"),
            "{:?}",
            out.error
        );
        // An injected error is not a refusal; the API's 429 is.
        assert!(out.refused.is_none());
        let (o, e, x) = fixture!("copilot-1.0.102-", "limit-rejected");
        let (_, out) = replay(&mut *Copilot.parser(), o, e, x);
        assert!(out.error.as_deref().unwrap().contains("rate limit"));
        assert_eq!(
            out.refused.map(|l| l.status),
            Some(clinvk_shared::quota::WindowStatus::Rejected)
        );
        assert!(rate_limit_text("copilot --acp: Error: 429 too many requests").is_some());
        assert!(rate_limit_text("copilot --acp: Error: 400 bad request").is_none());
    }
}
