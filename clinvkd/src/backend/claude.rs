//! Claude Code (`claude`, npm `@anthropic-ai/claude-code`): argv and `stream-json` parsing.
//!
//! Runs `claude -p --output-format stream-json --verbose --include-partial-messages … -- PROMPT`.
//! The prompt comes last after `--`, so a prompt starting with `-` is never read as a flag.
//! Output: NDJSON `system/init` (session id, model), `stream_event` lines wrapping the Anthropic
//! SSE events (token deltas), whole `assistant` / `user` messages (text, tool use, tool
//! results), and a last `result` line (final text, `is_error`, usage).

use clinvk_shared::config::BackendSettings;
use clinvk_shared::types::TokenUsage;
use serde_json::Value;

use super::common::{
    check_arg_lengths, config_env, content_text, exit_error, joined, json_object, resolve, str_of,
    u64_of, ExtraRules,
};
use super::{
    Adapter, ApprovalMode, ArgvError, CommandSpec, Event, Invocation, LineParser, SandboxMode,
};

pub struct Claude;

/// Flags a request's `extra` may use. Not here on purpose: anything that loads code or
/// config (`--mcp-config`, `--settings`, `--plugin-dir`, `--agents`), widens file access
/// (`--add-dir`) or overrides what clinvk controls (`--permission-mode`, `--resume`, …).
const EXTRA_ALLOWED: &[&str] = &[
    "--allowedTools",
    "--allowed-tools",
    "--disallowedTools",
    "--disallowed-tools",
    "--append-system-prompt",
    "--effort",
    "--fallback-model",
    "--max-budget-usd",
    "--tools",
    "--json-schema",
    "--name",
    "--fork-session",
    "--disable-slash-commands",
    "--exclude-dynamic-system-prompt-sections",
    "--strict-mcp-config",
];
const EXTRA_NO_VALUE: &[&str] = &[
    "--fork-session",
    "--disable-slash-commands",
    "--exclude-dynamic-system-prompt-sections",
    "--strict-mcp-config",
];

impl Adapter for Claude {
    fn name(&self) -> &'static str {
        "claude"
    }

    fn default_command(&self) -> &'static str {
        "claude"
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @anthropic-ai/claude-code"
    }

    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError> {
        let r = resolve(
            self.name(),
            inv,
            cfg,
            &ExtraRules {
                allowed: EXTRA_ALLOWED,
                no_value: EXTRA_NO_VALUE,
            },
        )?;
        let mut args: Vec<String> = [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
        ]
        .map(String::from)
        .to_vec();
        if let Some(m) = r.model {
            args.extend(["--model".into(), m]);
        }
        // Read-only is plan mode, whatever the approval mode; claude has no other sandbox.
        let permission_mode = match (r.sandbox, r.approval) {
            (SandboxMode::ReadOnly, _) => Some("plan"),
            (_, ApprovalMode::Auto) => Some("acceptEdits"),
            // bypassPermissions is refused when running as root; dontAsk never prompts.
            (_, ApprovalMode::None) => Some("dontAsk"),
            (_, ApprovalMode::Always) => Some("manual"),
            (_, ApprovalMode::Default) => None,
        };
        if let Some(pm) = permission_mode {
            args.extend(["--permission-mode".into(), pm.into()]);
        }
        if let Some(s) = r.system_prompt {
            args.extend(["--system-prompt".into(), s]);
        }
        if let Some(n) = r.max_turns {
            args.extend(["--max-turns".into(), n.to_string()]);
        }
        // One `--allowedTools=T` each: the option takes a list and would swallow a bare word.
        for t in cfg.allowed_tools.iter().filter(|t| !t.trim().is_empty()) {
            args.push(joined("--allowedTools", t));
        }
        if let Some(id) = r.resume {
            args.extend(["--resume".into(), id]);
        } else if let Some(id) = r.new_session_id {
            args.extend(["--session-id".into(), id]);
        }
        if inv.ephemeral {
            args.push("--no-session-persistence".into());
        }
        args.extend(cfg.extra_flags.iter().cloned());
        args.extend(r.extra);
        args.push("--".into());
        args.push(r.prompt);
        check_arg_lengths(&args)?;
        Ok(CommandSpec {
            program: cfg
                .command
                .clone()
                .unwrap_or_else(|| self.default_command().into()),
            args,
            env: config_env(cfg),
            cwd: inv.workdir.clone(),
            stdin_null: true,
        })
    }

    fn parser(&self) -> Box<dyn LineParser> {
        Box::<ClaudeParser>::default()
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        EXTRA_ALLOWED
    }
}

#[derive(Debug, Default)]
pub struct ClaudeParser {
    session_started: bool,
    error_reported: bool,
    /// Text of an `assistant` line that is an API error (the `result` line repeats it).
    api_error: Option<String>,
}

/// Line types that carry nothing for the event stream.
const IGNORED_TYPES: &[&str] = &["rate_limit_event", "prompt_suggestion", "keep_alive"];

impl ClaudeParser {
    fn error(&mut self, message: String) -> Event {
        self.error_reported = true;
        Event::Error { message }
    }

    fn assistant(&mut self, line: &str, v: &Value, subagent: bool, out: &mut Vec<Event>) {
        let Some(msg) = v.get("message") else {
            out.push(Event::Unparsed { line: line.into() });
            return;
        };
        let api_error = v.get("is_api_error_message").and_then(Value::as_bool) == Some(true)
            || v.get("error").is_some_and(|e| !e.is_null());
        let Some(blocks) = msg.get("content").and_then(Value::as_array) else {
            return;
        };
        for b in blocks {
            match str_of(b, "type") {
                Some("text") => {
                    let text = str_of(b, "text").unwrap_or_default();
                    if api_error {
                        self.api_error = Some(text.to_string());
                    } else if !subagent && !text.is_empty() {
                        out.push(Event::Message { text: text.into() });
                    }
                }
                Some("tool_use") | Some("server_tool_use") => out.push(Event::ToolUse {
                    id: str_of(b, "id").map(String::from),
                    name: str_of(b, "name").unwrap_or("tool").into(),
                    input: b.get("input").cloned().unwrap_or(Value::Null),
                }),
                Some("thinking") => {
                    let text = str_of(b, "thinking").unwrap_or_default();
                    if !text.is_empty() {
                        out.push(Event::Thinking { text: text.into() });
                    }
                }
                _ => {}
            }
        }
    }

    fn user(&mut self, v: &Value, out: &mut Vec<Event>) {
        let Some(blocks) = v
            .get("message")
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
        else {
            return;
        };
        for b in blocks {
            if str_of(b, "type") == Some("tool_result") {
                out.push(Event::ToolResult {
                    id: str_of(b, "tool_use_id").map(String::from),
                    output: content_text(b.get("content")),
                    is_error: b.get("is_error").and_then(Value::as_bool) == Some(true),
                });
            }
        }
    }

    fn result(&mut self, v: &Value, out: &mut Vec<Event>) {
        if let Some(u) = v.get("usage") {
            // `input_tokens` leaves out the cached part; count everything the model read,
            // as codex and gemini do.
            out.push(Event::Usage(TokenUsage {
                input_tokens: u64_of(u, "input_tokens")
                    + u64_of(u, "cache_creation_input_tokens")
                    + u64_of(u, "cache_read_input_tokens"),
                output_tokens: u64_of(u, "output_tokens"),
            }));
        }
        let is_error = v.get("is_error").and_then(Value::as_bool) == Some(true);
        let text = str_of(v, "result").map(String::from);
        out.push(Event::Result {
            text: text.clone(),
            is_error,
        });
        if is_error && !self.error_reported {
            let errors: Vec<&str> = v
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let message = if !errors.is_empty() {
                errors.join("; ")
            } else if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
                t
            } else if let Some(t) = self.api_error.clone() {
                t
            } else {
                format!(
                    "the run ended with {}",
                    str_of(v, "subtype").unwrap_or("an error and no message")
                )
            };
            let ev = self.error(message);
            out.push(ev);
        }
    }
}

impl LineParser for ClaudeParser {
    fn parse_line(&mut self, line: &str) -> Vec<Event> {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Vec::new();
        }
        let Some(obj) = json_object(trimmed) else {
            return vec![Event::Unparsed { line: line.into() }];
        };
        let v = Value::Object(obj);
        let mut out = Vec::new();
        let ty = str_of(&v, "type").unwrap_or_default();
        if !self.session_started {
            if let Some(id) = str_of(&v, "session_id").filter(|s| !s.is_empty()) {
                self.session_started = true;
                let model = if ty == "system" {
                    str_of(&v, "model").map(String::from)
                } else {
                    None
                };
                out.push(Event::SessionStarted {
                    session_id: id.into(),
                    model,
                });
            }
        }
        // Lines of a sub-agent (Task tool) carry its parent's tool-use id; their text is not
        // the answer.
        let subagent = v.get("parent_tool_use_id").is_some_and(|p| !p.is_null());
        match ty {
            "system" => {
                if str_of(&v, "subtype") == Some("api_retry") {
                    tracing::debug!(line = %trimmed, "claude retries its model API");
                }
            }
            "stream_event" => {
                let delta = v
                    .get("event")
                    .filter(|e| str_of(e, "type") == Some("content_block_delta"))
                    .and_then(|e| e.get("delta"));
                if let Some(d) = delta {
                    if str_of(d, "type") == Some("text_delta") && !subagent {
                        let text = str_of(d, "text").unwrap_or_default();
                        if !text.is_empty() {
                            out.push(Event::TextDelta { text: text.into() });
                        }
                    }
                }
            }
            "assistant" => self.assistant(line, &v, subagent, &mut out),
            "user" => self.user(&v, &mut out),
            "result" => self.result(&v, &mut out),
            t if IGNORED_TYPES.contains(&t) => {}
            _ => out.push(Event::Unparsed { line: line.into() }),
        }
        out
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        if self.error_reported || exit_code == Some(0) {
            return Vec::new();
        }
        let message = match self.api_error.take() {
            Some(t) if !t.trim().is_empty() => t,
            _ => exit_error(exit_code, stderr_tail),
        };
        vec![self.error(message)]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::super::Outcome;
    use super::*;
    use std::path::PathBuf;

    fn inv(prompt: &str) -> Invocation {
        Invocation {
            backend: "claude".into(),
            prompt: prompt.into(),
            ..Invocation::default()
        }
    }

    fn args(inv: &Invocation, cfg: &BackendSettings) -> Vec<String> {
        Claude.build(inv, cfg).unwrap().args
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const BASE: [&str; 5] = [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
    ];

    fn with_base(rest: &[&str]) -> Vec<String> {
        BASE.iter().chain(rest).map(|s| s.to_string()).collect()
    }

    #[test]
    fn typical_prompt() {
        let cfg = BackendSettings::default();
        let spec = Claude.build(&inv("Say hello"), &cfg).unwrap();
        assert_eq!(spec.program, "claude");
        assert_eq!(spec.args, with_base(&["--", "Say hello"]));
        assert!(spec.stdin_null);
        assert_eq!(spec.cwd, None);
        assert!(spec.env.is_empty());
    }

    #[test]
    fn prompt_that_looks_like_a_flag_stays_the_prompt() {
        let cfg = BackendSettings::default();
        assert_eq!(
            args(&inv("-v what version?"), &cfg),
            with_base(&["--", "-v what version?"])
        );
    }

    #[test]
    fn model_from_request_then_config_and_bare_name_is_default() {
        let mut cfg = BackendSettings::default();
        let mut i = inv("p");
        i.model = Some("sonnet".into());
        assert_eq!(args(&i, &cfg), with_base(&["--model", "sonnet", "--", "p"]));
        cfg.model = Some("opus".into());
        assert_eq!(args(&i, &cfg), with_base(&["--model", "sonnet", "--", "p"]));
        i.model = None;
        assert_eq!(args(&i, &cfg), with_base(&["--model", "opus", "--", "p"]));
        // The backend's own name means its default model: never `--model claude`.
        i.model = Some("claude".into());
        assert_eq!(args(&i, &cfg), with_base(&["--", "p"]));
        cfg.model = Some("claude".into());
        i.model = None;
        assert_eq!(args(&i, &cfg), with_base(&["--", "p"]));
        i.model = Some("--dangerous".into());
        assert!(matches!(Claude.build(&i, &cfg), Err(ArgvError::Invalid(_))));
    }

    #[test]
    fn approval_and_sandbox() {
        let cfg = BackendSettings::default();
        let cases = [
            (ApprovalMode::Default, SandboxMode::Default, None),
            (
                ApprovalMode::Auto,
                SandboxMode::Default,
                Some("acceptEdits"),
            ),
            (ApprovalMode::None, SandboxMode::Default, Some("dontAsk")),
            (ApprovalMode::Always, SandboxMode::Default, Some("manual")),
            (ApprovalMode::Default, SandboxMode::ReadOnly, Some("plan")),
            (ApprovalMode::None, SandboxMode::ReadOnly, Some("plan")),
            (ApprovalMode::Default, SandboxMode::Workspace, None),
            (ApprovalMode::Auto, SandboxMode::Full, Some("acceptEdits")),
        ];
        for (a, s, pm) in cases {
            let mut i = inv("p");
            i.approval_mode = a;
            i.sandbox_mode = s;
            let want = match pm {
                Some(pm) => with_base(&["--permission-mode", pm, "--", "p"]),
                None => with_base(&["--", "p"]),
            };
            assert_eq!(args(&i, &cfg), want, "{a:?} {s:?}");
        }
        // The backend's configured modes apply when the request leaves them at default.
        let cfg = BackendSettings {
            approval_mode: Some("auto".into()),
            sandbox_mode: Some("read-only".into()),
            ..BackendSettings::default()
        };
        assert_eq!(
            args(&inv("p"), &cfg),
            with_base(&["--permission-mode", "plan", "--", "p"])
        );
        let mut i = inv("p");
        i.sandbox_mode = SandboxMode::Workspace;
        assert_eq!(
            args(&i, &cfg),
            with_base(&["--permission-mode", "acceptEdits", "--", "p"])
        );
        let bad = BackendSettings {
            approval_mode: Some("sometimes".into()),
            ..BackendSettings::default()
        };
        assert!(Claude.build(&inv("p"), &bad).is_err());
    }

    #[test]
    fn system_prompt_max_turns_tools() {
        let mut cfg = BackendSettings {
            system_prompt: Some("cfg system".into()),
            allowed_tools: v(&["Read", "Bash(git log:*)"]),
            ..BackendSettings::default()
        };
        let mut i = inv("p");
        i.max_turns = Some(3);
        assert_eq!(
            args(&i, &cfg),
            with_base(&[
                "--system-prompt",
                "cfg system",
                "--max-turns",
                "3",
                "--allowedTools=Read",
                "--allowedTools=Bash(git log:*)",
                "--",
                "p"
            ])
        );
        i.system_prompt = Some("req system".into());
        cfg.allowed_tools.clear();
        assert_eq!(
            args(&i, &cfg),
            with_base(&[
                "--system-prompt",
                "req system",
                "--max-turns",
                "3",
                "--",
                "p"
            ])
        );
        i.max_turns = Some(0);
        assert!(Claude.build(&i, &cfg).is_err());
    }

    #[test]
    fn sessions() {
        let cfg = BackendSettings::default();
        let id = "1b18f70d-443c-483d-a197-ee9a42506920";
        let new = "11111111-2222-4333-8444-555555555555";
        let mut i = inv("p");
        i.new_session_id = Some(new.into());
        assert_eq!(args(&i, &cfg), with_base(&["--session-id", new, "--", "p"]));
        // Resuming wins over a new id.
        i.resume = Some(id.into());
        assert_eq!(args(&i, &cfg), with_base(&["--resume", id, "--", "p"]));
        i.ephemeral = true;
        assert_eq!(
            args(&i, &cfg),
            with_base(&["--resume", id, "--no-session-persistence", "--", "p"])
        );
        i.resume = Some("latest".into());
        assert!(matches!(Claude.build(&i, &cfg), Err(ArgvError::Invalid(_))));
        i.resume = None;
        i.new_session_id = Some("not-a-uuid".into());
        assert!(matches!(Claude.build(&i, &cfg), Err(ArgvError::Invalid(_))));
    }

    #[test]
    fn extra_flags_command_env_cwd() {
        let mut cfg = BackendSettings {
            command: Some("/opt/claude/bin/claude".into()),
            extra_flags: v(&["--strict-mcp-config", "--add-dir", "/srv/shared"]),
            allowed_extra_flags: v(&["--betas"]),
            ..BackendSettings::default()
        };
        cfg.env.insert("CLAUDE_CODE_MAX_RETRIES".into(), "2".into());
        let mut i = inv("p");
        i.workdir = Some(PathBuf::from("/srv/project"));
        i.extra = v(&["--effort", "high", "--fork-session", "--betas=x"]);
        let spec = Claude.build(&i, &cfg).unwrap();
        assert_eq!(spec.program, "/opt/claude/bin/claude");
        assert_eq!(
            spec.args,
            with_base(&[
                "--strict-mcp-config",
                "--add-dir",
                "/srv/shared",
                "--effort=high",
                "--fork-session",
                "--betas=x",
                "--",
                "p"
            ])
        );
        assert_eq!(spec.cwd, Some(PathBuf::from("/srv/project")));
        assert_eq!(
            spec.env,
            vec![("CLAUDE_CODE_MAX_RETRIES".to_string(), "2".to_string())]
        );
        i.extra = v(&["--dangerously-skip-permissions"]);
        assert_eq!(
            Claude.build(&i, &cfg),
            Err(ArgvError::DisallowedFlag(
                "--dangerously-skip-permissions".into()
            ))
        );
        i.extra = v(&["--mcp-config=/tmp/x.json"]);
        assert_eq!(
            Claude.build(&i, &cfg),
            Err(ArgvError::DisallowedFlag("--mcp-config".into()))
        );
    }

    #[test]
    fn empty_prompt_is_invalid() {
        let cfg = BackendSettings::default();
        assert!(matches!(
            Claude.build(&inv("  \n"), &cfg),
            Err(ArgvError::Invalid(_))
        ));
        assert!(matches!(
            Claude.build(&inv("a\0b"), &cfg),
            Err(ArgvError::Invalid(_))
        ));
    }

    // ---- parser ----

    fn run(stdout: &str, exit: i32, stderr: &str) -> Vec<Event> {
        let mut p = Claude.parser();
        let mut evs: Vec<Event> = stdout.lines().flat_map(|l| p.parse_line(l)).collect();
        evs.extend(p.finish(Some(exit), stderr));
        evs
    }

    fn fixture_run(name: &str) -> (Vec<Event>, Outcome) {
        let (out, err, code) = match name {
            "ok" => (
                include_str!("../../tests/fixtures/claude-2.1.328-ok.stdout"),
                include_str!("../../tests/fixtures/claude-2.1.328-ok.stderr"),
                include_str!("../../tests/fixtures/claude-2.1.328-ok.exit"),
            ),
            "resume" => (
                include_str!("../../tests/fixtures/claude-2.1.328-resume.stdout"),
                include_str!("../../tests/fixtures/claude-2.1.328-resume.stderr"),
                include_str!("../../tests/fixtures/claude-2.1.328-resume.exit"),
            ),
            "system" => (
                include_str!("../../tests/fixtures/claude-2.1.328-system.stdout"),
                include_str!("../../tests/fixtures/claude-2.1.328-system.stderr"),
                include_str!("../../tests/fixtures/claude-2.1.328-system.exit"),
            ),
            "error" => (
                include_str!("../../tests/fixtures/claude-2.1.328-error.stdout"),
                include_str!("../../tests/fixtures/claude-2.1.328-error.stderr"),
                include_str!("../../tests/fixtures/claude-2.1.328-error.exit"),
            ),
            "badresume" => (
                include_str!("../../tests/fixtures/claude-2.1.328-badresume.stdout"),
                include_str!("../../tests/fixtures/claude-2.1.328-badresume.stderr"),
                include_str!("../../tests/fixtures/claude-2.1.328-badresume.exit"),
            ),
            "json" => (
                include_str!("../../tests/fixtures/claude-2.1.328-json.stdout"),
                include_str!("../../tests/fixtures/claude-2.1.328-json.stderr"),
                include_str!("../../tests/fixtures/claude-2.1.328-json.exit"),
            ),
            _ => unreachable!(),
        };
        let evs = run(out, code.trim().parse().unwrap(), err);
        let o = Outcome::from_events(&evs);
        (evs, o)
    }

    fn deltas(evs: &[Event]) -> usize {
        evs.iter()
            .filter(|e| matches!(e, Event::TextDelta { .. }))
            .count()
    }

    #[test]
    fn fixture_ok() {
        let (evs, o) = fixture_run("ok");
        assert_eq!(
            evs[0],
            Event::SessionStarted {
                session_id: "1b18f70d-443c-483d-a197-ee9a42506920".into(),
                model: Some("claude-opus-5-5".into()),
            }
        );
        assert!(deltas(&evs) >= 2, "{evs:?}");
        let joined: String = evs
            .iter()
            .filter_map(|e| match e {
                Event::TextDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(joined, "fake-reply turns=1 last=Say hello in a few words");
        assert!(evs.contains(&Event::Message {
            text: "fake-reply turns=1 last=Say hello in a few words".into()
        }));
        assert_eq!(o.output, "fake-reply turns=1 last=Say hello in a few words");
        assert_eq!(
            o.session_id.as_deref(),
            Some("1b18f70d-443c-483d-a197-ee9a42506920")
        );
        assert_eq!(
            o.usage,
            TokenUsage {
                input_tokens: 12315,
                output_tokens: 8
            }
        );
        assert!(!o.is_error);
        assert_eq!(o.error, None);
        assert_eq!(o.unparsed, 0);
        assert_eq!(
            evs.last(),
            Some(&Event::Result {
                text: Some("fake-reply turns=1 last=Say hello in a few words".into()),
                is_error: false
            })
        );
    }

    #[test]
    fn fixture_resume_and_system() {
        let (evs, o) = fixture_run("resume");
        assert!(deltas(&evs) >= 2);
        assert_eq!(
            o.session_id.as_deref(),
            Some("dd9b6ba3-1e5a-49b9-9967-a5bf2323a23c")
        );
        assert_eq!(o.output, "fake-reply turns=2 last=Which word was it?");
        assert_eq!(
            o.usage,
            TokenUsage {
                input_tokens: 12353,
                output_tokens: 6
            }
        );
        assert!(!o.is_error);

        let (evs, o) = fixture_run("system");
        assert!(matches!(
            &evs[0],
            Event::SessionStarted { model: Some(m), .. } if m == "claude-sonnet-4-5"
        ));
        assert_eq!(
            o.output,
            "fake-reply turns=1 last=Say hello in a few words sys=SYSMARK You are terse."
        );
        assert_eq!(o.usage.output_tokens, 12);
        assert_eq!(o.unparsed, 0);
    }

    #[test]
    fn fixture_error() {
        let (evs, o) = fixture_run("error");
        assert!(o.is_error);
        assert_eq!(
            o.error.as_deref(),
            Some("API Error: 400 fakemodel: injected error [[error]]")
        );
        // The API error text is not passed off as the assistant's answer.
        assert_eq!(o.output, "");
        assert!(!evs.iter().any(|e| matches!(e, Event::Message { .. })));
        assert_eq!(
            evs.iter()
                .filter(|e| matches!(e, Event::Error { .. }))
                .count(),
            1
        );
        assert_eq!(
            o.session_id.as_deref(),
            Some("1719520d-3734-468f-8310-01b3d829732f")
        );
    }

    #[test]
    fn fixture_badresume() {
        let (evs, o) = fixture_run("badresume");
        let stderr = include_str!("../../tests/fixtures/claude-2.1.328-badresume.stderr");
        assert!(o.is_error);
        assert_eq!(o.error.as_deref(), Some(stderr.trim()));
        assert_eq!(o.output, "");
        assert!(evs.contains(&Event::Result {
            text: None,
            is_error: true
        }));
    }

    #[test]
    fn fixture_json_mode_is_a_result_line() {
        // `--output-format json` is not what the adapter uses, but its single object is a
        // result line and parses as one.
        let (_, o) = fixture_run("json");
        assert_eq!(o.output, "fake-reply turns=1 last=Say hello in a few words");
        assert_eq!(o.usage.input_tokens, 12315);
        assert_eq!(
            o.session_id.as_deref(),
            Some("a965fcc0-e711-483f-a7bd-21c9e5c14f23")
        );
    }

    #[test]
    fn tools_thinking_and_subagents() {
        let lines = [
            r#"{"type":"system","subtype":"init","session_id":"s1","model":"m"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Let me look."},{"type":"tool_use","id":"tu1","name":"Bash","input":{"command":"ls"}}]},"parent_tool_use_id":null,"session_id":"s1"}"#,
            r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"tu1","content":[{"type":"text","text":"a.txt"}],"is_error":false}]},"session_id":"s1"}"#,
            r#"{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"tu2","content":"denied","is_error":true}]},"session_id":"s1"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"subagent text"}]},"parent_tool_use_id":"tu9","session_id":"s1"}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"sub"}},"parent_tool_use_id":"tu9","session_id":"s1"}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a"}},"session_id":"s1"}"#,
            r#"{"type":"system","subtype":"api_retry","attempt":1,"session_id":"s1"}"#,
            r#"{"type":"rate_limit_event","session_id":"s1"}"#,
        ];
        let mut p = Claude.parser();
        let evs: Vec<Event> = lines.iter().flat_map(|l| p.parse_line(l)).collect();
        assert_eq!(
            evs,
            vec![
                Event::SessionStarted {
                    session_id: "s1".into(),
                    model: Some("m".into())
                },
                Event::Thinking { text: "hmm".into() },
                Event::Message {
                    text: "Let me look.".into()
                },
                Event::ToolUse {
                    id: Some("tu1".into()),
                    name: "Bash".into(),
                    input: serde_json::json!({"command": "ls"})
                },
                Event::ToolResult {
                    id: Some("tu1".into()),
                    output: "a.txt".into(),
                    is_error: false
                },
                Event::ToolResult {
                    id: Some("tu2".into()),
                    output: "denied".into(),
                    is_error: true
                },
            ]
        );
    }

    #[test]
    fn failed_exit_without_result() {
        let mut p = Claude.parser();
        assert!(p.finish(Some(0), "").is_empty());
        let mut p = Claude.parser();
        assert_eq!(
            p.finish(Some(1), "Error: something broke\n"),
            vec![Event::Error {
                message: "Error: something broke".into()
            }]
        );
        let mut p = Claude.parser();
        assert_eq!(
            p.finish(None, ""),
            vec![Event::Error {
                message: "the process was killed by a signal".into()
            }]
        );
        // An error result already reported: no second error at exit.
        let (evs, _) = fixture_run("error");
        assert_eq!(
            evs.iter()
                .filter(|e| matches!(e, Event::Error { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn never_panics_on_junk() {
        let mut p = Claude.parser();
        let big = "x".repeat(1 << 20);
        let big_json = format!(
            r#"{{"type":"stream_event","event":{{"type":"content_block_delta","delta":{{"type":"text_delta","text":"{big}"}}}}}}"#
        );
        for line in [
            "",
            "   ",
            "not json",
            "{",
            "[1,2]",
            "null",
            "42",
            "\"str\"",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"assistant"}"#,
            r#"{"type":"assistant","message":{"content":"just a string"}}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"text"},{"type":"tool_use"},7]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","content":{"weird":true}}]}}"#,
            r#"{"type":"result","usage":{"input_tokens":-1,"output_tokens":"x"}}"#,
            r#"{"type":"stream_event","event":null}"#,
            r#"{"type":"something_new","session_id":"zz"}"#,
            "\u{fffd}\u{fffd} lossy",
            &big,
            &big_json,
        ] {
            let _ = p.parse_line(line);
        }
        let evs = p.parse_line("garbage");
        assert_eq!(
            evs,
            vec![Event::Unparsed {
                line: "garbage".into()
            }]
        );
        assert!(matches!(
            p.parse_line(r#"{"type":"something_new"}"#).as_slice(),
            [Event::Unparsed { .. }]
        ));
        assert!(p.parse_line("").is_empty());
        let _ = p.finish(Some(2), &big);
    }
}
