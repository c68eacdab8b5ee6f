//! Google Gemini CLI (`gemini`): `--prompt=… --output-format stream-json`.

use super::*;
use serde_json::Value;

pub(crate) struct Gemini;

/// Flags a request's `extra` may use: none by default — gemini's flags that take one grant
/// folders, tools, extensions or MCP servers (`allowed_extra_flags` may allow them).
const ALLOW: &[&str] = &[];

impl Adapter for Gemini {
    fn backend(&self) -> Backend {
        Backend::Gemini
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: ImageDelivery::Files,
            output_schema: SchemaDelivery::Instruction,
            client_tools: ToolSupport::WarmOnly,
        }
    }

    fn claims_model(&self, lower: &str) -> bool {
        lower.contains("gemini")
    }

    fn model_families(&self) -> &'static str {
        "gemini-…"
    }

    fn credential_folders(&self) -> &'static [&'static str] {
        &[".gemini"]
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        ALLOW
    }

    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError> {
        if inv.client_tools.is_some() {
            // One-shot gemini has no way to be given an MCP server but its settings files.
            return Err(ArgvError::Invalid(
                "gemini takes client tools in warm mode only (backends.gemini.mode: warm), and not with images or a session whose worker is gone".into(),
            ));
        }
        // `--prompt=<text>` keeps a prompt that starts with "-" a prompt. A long prompt goes
        // through stdin (gemini prepends stdin to the -p text): one argv element may not exceed 128 KiB.
        let mut full = with_system_prompt(inv, inv.system_prompt.as_deref());
        // gemini has no structured-output option: an instruction, and the engine checks.
        if let Some(schema) = &inv.output_schema {
            full.push_str(&super::schema_instruction(schema));
        }
        // Images: gemini reads `@path` references itself, inside its workspace (their folder is
        // added to it below).
        for image in &inv.image_files {
            full.push_str(&format!(" @{}", image.display()));
        }
        let (prompt_arg, stdin) = if full.len() > STDIN_THRESHOLD {
            (String::new(), Some(full))
        } else {
            (full, None)
        };
        let mut a = vec![
            format!("--prompt={prompt_arg}"),
            "--output-format".to_string(),
            "stream-json".to_string(),
        ];
        a.extend(session_args(inv, cfg));
        if let Some(dir) = inv.image_files.first().and_then(|f| f.parent()) {
            a.extend([
                "--include-directories".to_string(),
                dir.display().to_string(),
            ]);
        }
        if let Some(id) = &inv.resume {
            a.extend(["--resume".to_string(), id.clone()]);
        }
        a.extend(cfg.extra_flags.iter().cloned());
        a.extend(check_extra(&inv.extra, ALLOW, cfg)?);
        Ok(CommandSpec {
            env: trust_env(),
            ..CommandSpec::for_run("gemini", cfg, inv, a, stdin)
        })
    }

    fn parser(&self) -> Box<dyn LineParser> {
        Box::new(Parser::default())
    }

    /// `gemini --acp` (the ACP driver, `acp`); the session is opened (or loaded) in the protocol.
    /// Images stay one-shot (`@path` files).
    fn live(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<LiveSpec, ArgvError> {
        let mut a = vec!["--acp".to_string()];
        a.extend(session_args(inv, cfg));
        if inv.client_tools.is_some() {
            // Only the daemon's MCP server (given in `session/new`; gemini runs the tools of
            // an ACP client's MCP server without a permission request).
            a.extend([
                "--allowed-mcp-server-names".to_string(),
                crate::tools::SERVER_NAME.to_string(),
            ]);
        }
        a.extend(cfg.extra_flags.iter().cloned());
        a.extend(check_extra(&inv.extra, ALLOW, cfg)?);
        let cwd = inv
            .workdir
            .as_ref()
            .map(|w| w.display().to_string())
            .unwrap_or_else(|| ".".into());
        Ok(LiveSpec {
            command: CommandSpec {
                env: trust_env(),
                ..CommandSpec::for_run("gemini", cfg, inv, a, None)
            },
            driver: Box::new(super::acp::Acp::new(
                super::acp::AcpOptions {
                    label: "gemini --acp",
                    cwd,
                    images: false,
                    mcp_servers: super::acp::mcp_servers(inv),
                    // gemini 0.61's `session/load` re-creates the session's recording file
                    // before reading it; when that happens within the minute the file was
                    // created (same file name), the turns are gone, the load fails ("No
                    // previous sessions found") and the session cannot be resumed at all any
                    // more. Measured; a session whose worker is gone therefore continues
                    // one-shot (`gemini --resume`, which appends).
                    resumes: false,
                    load: None,
                    cumulative_usage: false,
                    error_text_prefix: None,
                    cancel_forgets_turn: false,
                    refusal: Some(quota_refusal),
                },
                inv.images.is_empty(),
            )),
        })
    }
}

/// The workspace is trusted: the working folder was checked by clinvk's workdir policy.
fn trust_env() -> Vec<(String, String)> {
    vec![("GEMINI_CLI_TRUST_WORKSPACE".into(), "true".into())]
}

/// The options of a gemini session: trust, model, approval mode, sandbox.
fn session_args(inv: &Invocation, cfg: &BackendSettings) -> Vec<String> {
    let mut a = vec!["--skip-trust".to_string()];
    if let Some(m) = model_for(inv, cfg) {
        a.extend(["-m".to_string(), m]);
    }
    let mode = match (inv.approval_mode, inv.sandbox_mode) {
        (ApprovalMode::Auto, _) => Some("auto_edit"),
        (ApprovalMode::None, _) => Some("yolo"),
        (ApprovalMode::Always, _) => Some("default"),
        (ApprovalMode::Default, SandboxMode::ReadOnly) => Some("plan"),
        _ => None,
    };
    if let Some(m) = mode {
        a.extend(["--approval-mode".to_string(), m.to_string()]);
    }
    if inv.sandbox_mode == SandboxMode::Workspace {
        a.push("--sandbox".into());
    }
    a
}

#[derive(Default)]
struct Parser {
    saw_error: bool,
    /// The run's error was a spent quota (its words; the delay may be on stderr).
    quota_error: Option<String>,
}

/// gemini's words for a spent quota (it reads no quota headers, so this is all it tells):
/// a terminal quota error ("You have exhausted your daily quota on this model.", exit 173), or
/// the API's own message ("You exceeded your current quota … Please retry in 3598s.").
fn is_quota_error(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("quota") && (lower.contains("exhausted") || lower.contains("exceeded"))
}

/// The refusal of a spent quota: the daily window when gemini says so, the API's retry delay
/// when `text` holds it.
fn quota_report(message: &str, text: &str) -> clinvk_shared::quota::AccountLimits {
    let window = message
        .to_ascii_lowercase()
        .contains("daily")
        .then_some("daily");
    crate::quota::refusal_report(
        "gemini quota error",
        window,
        crate::quota::retry_in_secs(text),
    )
}

/// The live mode's reading of a failed turn (`Acp::refusal`).
fn quota_refusal(message: &str) -> Option<clinvk_shared::quota::AccountLimits> {
    is_quota_error(message).then(|| quota_report(message, message))
}

fn error_message(e: &Value) -> String {
    e["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string())
}

impl LineParser for Parser {
    fn parse_line(&mut self, line: &str) -> Vec<Event> {
        let v = match json_line(line) {
            Ok(v) => v,
            Err(events) => return events,
        };
        match v["type"].as_str() {
            Some("init") => vec![Event::SessionStarted {
                session_id: v["session_id"].as_str().unwrap_or_default().to_string(),
                model: v["model"].as_str().map(str::to_string),
            }],
            Some("message") if v["role"] == "assistant" => {
                let text = v["content"].as_str().unwrap_or_default().to_string();
                if v["delta"].as_bool().unwrap_or(false) {
                    vec![Event::TextDelta { text }]
                } else {
                    vec![Event::Message { text }]
                }
            }
            Some("tool_use") => vec![Event::ToolUse {
                id: v["tool_id"].as_str().map(str::to_string),
                name: v["tool_name"].as_str().unwrap_or_default().to_string(),
                input: v["parameters"].clone(),
            }],
            Some("tool_result") => vec![Event::ToolResult {
                id: v["tool_id"].as_str().map(str::to_string),
                output: v["output"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v["error"].to_string()),
                is_error: v["status"] == "error",
            }],
            Some("result") => {
                let s = &v["stats"];
                let mut out = vec![Event::Usage(TokenUsage {
                    input_tokens: s["input_tokens"].as_u64().unwrap_or(0),
                    output_tokens: s["output_tokens"].as_u64().unwrap_or(0),
                    ..Default::default()
                })];
                let is_error = v["status"] == "error";
                out.push(Event::Result {
                    text: None,
                    is_error,
                });
                if is_error {
                    self.saw_error = true;
                    let message = error_message(&v["error"]);
                    if is_quota_error(&message) {
                        self.quota_error = Some(message.clone());
                    }
                    out.push(Event::Error { message });
                }
                out
            }
            Some("error") => {
                self.saw_error = true;
                vec![Event::Error {
                    message: error_message(&v),
                }]
            }
            Some(_) => vec![],
            None => vec![Event::Unparsed {
                line: line.to_string(),
            }],
        }
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        if let Some(message) = self.quota_error.take() {
            // The API's retry delay is in the error object gemini prints on stderr.
            let text = format!("{message}\n{stderr_tail}");
            return vec![Event::Limits(quota_report(&message, &text))];
        }
        if self.saw_error || exit_code == Some(0) {
            return vec![];
        }
        // In json mode gemini prints its error object on stderr.
        for line in stderr_tail.lines().rev() {
            if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                if v["error"].is_object() {
                    return vec![Event::Error {
                        message: error_message(&v["error"]),
                    }];
                }
            }
        }
        exit_error("gemini", false, exit_code, stderr_tail)
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
        let mut i = inv("gemini", "-hi");
        let spec = Gemini.build(&i, &cfg).unwrap();
        assert_eq!(
            spec.args,
            [
                "--prompt=-hi",
                "--output-format",
                "stream-json",
                "--skip-trust"
            ]
        );
        assert!(spec
            .env
            .contains(&("GEMINI_CLI_TRUST_WORKSPACE".into(), "true".into())));
        i.model = Some("gemini-2.5-flash".into());
        i.resume = Some("S1".into());
        i.approval_mode = ApprovalMode::Auto;
        assert_eq!(
            Gemini.build(&i, &cfg).unwrap().args[4..],
            [
                "-m",
                "gemini-2.5-flash",
                "--approval-mode",
                "auto_edit",
                "--resume",
                "S1"
            ]
        );
    }

    #[test]
    fn ok_resume_system() {
        let (o, e, x) = fixture!("gemini-0.61.0-", "ok");
        let (events, out) = replay(&mut *Gemini.parser(), o, e, x);
        assert_eq!(
            out.session_id.as_deref(),
            Some("dbce03c2-4f20-4956-9224-5ae94efbfb2f")
        );
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
        assert!(out.usage.output_tokens > 0);
        assert!(out.error.is_none());
        let (o, e, x) = fixture!("gemini-0.61.0-", "resume");
        let (_, out) = replay(&mut *Gemini.parser(), o, e, x);
        assert!(out.output().contains("turns=2"), "{}", out.output());
    }

    #[test]
    fn errors() {
        let (o, e, x) = fixture!("gemini-0.61.0-", "error");
        let (_, out) = replay(&mut *Gemini.parser(), o, e, x);
        assert!(
            out.error.as_deref().unwrap().contains("injected error"),
            "{:?}",
            out.error
        );
        let (o, e, x) = fixture!("gemini-0.61.0-", "badresume");
        let (_, out) = replay(&mut *Gemini.parser(), o, e, x);
        assert!(out.error.is_some());
        let (o, e, x) = fixture!("gemini-0.61.0-", "error-json");
        let (_, out) = replay(&mut *Gemini.parser(), o, e, x);
        assert!(out.error.is_some(), "json-mode error on stderr is found");
    }

    #[test]
    fn a_spent_daily_quota_is_a_refusal_with_the_apis_delay() {
        let (o, e, x) = fixture!("gemini-0.61.0-", "limit-rejected");
        let (_, out) = replay(&mut *Gemini.parser(), o, e, x);
        assert!(out.error.is_some());
        let l = out.refused.expect("refused");
        assert_eq!(l.limiting_window.as_deref(), Some("daily"));
        // "Please retry in 3598s." is in the error gemini prints on stderr.
        let wait = l.resets_at.unwrap() - crate::quota::now();
        assert!((3590..=3598).contains(&wait), "{wait}");
        // Another failure is not one.
        assert!(quota_refusal("gemini --acp: session/prompt: Error: 400 injected").is_none());
        let l = quota_refusal(
            "gemini --acp: session/prompt: You have exhausted your daily quota on this model.",
        )
        .unwrap();
        assert_eq!(
            (l.limiting_window.as_deref(), l.resets_at),
            (Some("daily"), None)
        );
    }
}
