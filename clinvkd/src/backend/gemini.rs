//! Gemini CLI (`gemini`, npm `@google/gemini-cli`): argv and `stream-json` parsing.
//!
//! Runs `gemini --prompt=PROMPT --output-format stream-json --skip-trust …`. The prompt is
//! given as `--prompt=…` in one element because yargs would read `-p -x…` as flags. gemini has
//! no system-prompt flag (`GEMINI_SYSTEM_MD` replaces its whole built-in prompt, tools
//! included), so a system prompt is put in front of the prompt of a new session, delimited.
//!
//! Output: NDJSON `init` (session id, model), `message` (assistant lines with `"delta":true`
//! are token deltas), `tool_use`, `tool_result`, `error`, and a last `result` (status, stats).
//! When the model API fails in json mode the error object goes to stderr instead: `finish`
//! looks for it there.

use clinvk_shared::config::BackendSettings;
use clinvk_shared::types::TokenUsage;
use serde_json::Value;

use super::common::{
    check_arg_lengths, config_env, content_text, exit_error, humanize_error, joined, json_object,
    last_json_error, resolve, str_of, u64_of, ExtraRules,
};
use super::{
    Adapter, ApprovalMode, ArgvError, CommandSpec, Event, Invocation, LineParser, SandboxMode,
};

pub struct Gemini;

/// Flags a request's `extra` may use. Not `--include-directories` (file access outside the
/// workdir), `--policy`/`--admin-policy` (loads files), `--yolo`/`--approval-mode` (use
/// `approval_mode`).
const EXTRA_ALLOWED: &[&str] = &[
    "--allowed-tools",
    "--allowed-mcp-server-names",
    "--extensions",
];
const EXTRA_NO_VALUE: &[&str] = &[];

impl Adapter for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn default_command(&self) -> &'static str {
        "gemini"
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @google/gemini-cli"
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
        // A resumed session already holds the instructions in its history.
        let prompt = match (&r.system_prompt, &r.resume) {
            (Some(s), None) => with_system_prompt(s, &r.prompt),
            _ => r.prompt.clone(),
        };
        let mut args = vec![
            joined("--prompt", &prompt),
            "--output-format".into(),
            "stream-json".into(),
            // Headless gemini refuses to run in a folder it does not trust (exit 55).
            "--skip-trust".into(),
        ];
        if let Some(m) = r.model {
            args.extend(["-m".into(), m]);
        }
        let approval = match (r.sandbox, r.approval) {
            (SandboxMode::ReadOnly, _) => Some("plan"),
            (_, ApprovalMode::Auto) => Some("auto_edit"),
            (_, ApprovalMode::None) => Some("yolo"),
            (_, ApprovalMode::Always) => Some("default"),
            (_, ApprovalMode::Default) => None,
        };
        if let Some(a) = approval {
            args.extend(["--approval-mode".into(), a.into()]);
        }
        // gemini's sandbox is a container (docker/podman, image pulled on first use).
        if r.sandbox == SandboxMode::Workspace {
            args.push("--sandbox".into());
        }
        for t in cfg.allowed_tools.iter().filter(|t| !t.trim().is_empty()) {
            args.push(joined("--allowed-tools", t));
        }
        if let Some(id) = r.resume {
            args.extend(["--resume".into(), id]);
        } else if let Some(id) = r.new_session_id {
            args.extend(["--session-id".into(), id]);
        }
        args.extend(cfg.extra_flags.iter().cloned());
        args.extend(r.extra);
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
        Box::<GeminiParser>::default()
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        EXTRA_ALLOWED
    }
}

fn with_system_prompt(system: &str, prompt: &str) -> String {
    format!("<system_instructions>\n{system}\n</system_instructions>\n\n{prompt}")
}

#[derive(Debug, Default)]
pub struct GeminiParser {
    error_reported: bool,
    last_error: Option<String>,
}

impl GeminiParser {
    fn error(&mut self, message: &str) -> Option<Event> {
        let message = humanize_error(message);
        if self.last_error.as_deref() == Some(message.as_str()) {
            return None;
        }
        self.error_reported = true;
        self.last_error = Some(message.clone());
        Some(Event::Error { message })
    }

    fn result(&mut self, v: &Value, out: &mut Vec<Event>) {
        if let Some(stats) = v.get("stats").filter(|s| s.is_object()) {
            out.push(Event::Usage(usage(stats)));
        }
        let is_error = str_of(v, "status").is_some_and(|s| s != "success");
        out.push(Event::Result {
            text: None,
            is_error,
        });
        if is_error {
            let msg = v
                .get("error")
                .and_then(|e| str_of(e, "message"))
                .unwrap_or("the run failed")
                .to_string();
            out.extend(self.error(&msg));
        }
    }
}

/// Token counts of a `result.stats` (stream-json) or a json-mode `stats` (per model).
fn usage(stats: &Value) -> TokenUsage {
    if stats.get("input_tokens").is_some() || stats.get("output_tokens").is_some() {
        return TokenUsage {
            input_tokens: u64_of(stats, "input_tokens"),
            output_tokens: u64_of(stats, "output_tokens"),
        };
    }
    let mut u = TokenUsage::default();
    if let Some(models) = stats.get("models").and_then(Value::as_object) {
        for m in models.values() {
            if let Some(t) = m.get("tokens") {
                u.input_tokens += u64_of(t, "prompt");
                u.output_tokens += u64_of(t, "candidates");
            }
        }
    }
    u
}

impl LineParser for GeminiParser {
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
        match str_of(&v, "type").unwrap_or_default() {
            "init" => match str_of(&v, "session_id").filter(|s| !s.is_empty()) {
                Some(id) => out.push(Event::SessionStarted {
                    session_id: id.into(),
                    model: str_of(&v, "model").map(String::from),
                }),
                None => out.push(Event::Unparsed { line: line.into() }),
            },
            "message" => {
                if str_of(&v, "role") == Some("assistant") {
                    let text = content_text(v.get("content"));
                    if !text.is_empty() {
                        if v.get("delta").and_then(Value::as_bool) == Some(true) {
                            out.push(Event::TextDelta { text });
                        } else {
                            out.push(Event::Message { text });
                        }
                    }
                }
            }
            "tool_use" => out.push(Event::ToolUse {
                id: str_of(&v, "tool_id").map(String::from),
                name: str_of(&v, "tool_name").unwrap_or("tool").into(),
                input: v.get("parameters").cloned().unwrap_or(Value::Null),
            }),
            "tool_result" => {
                let is_error = str_of(&v, "status").is_some_and(|s| s != "success");
                let mut output = content_text(v.get("output"));
                if output.is_empty() {
                    if let Some(m) = v.get("error").and_then(|e| str_of(e, "message")) {
                        output = m.to_string();
                    }
                }
                out.push(Event::ToolResult {
                    id: str_of(&v, "tool_id").map(String::from),
                    output,
                    is_error,
                });
            }
            "error" => {
                let msg = str_of(&v, "message").unwrap_or("unknown error").to_string();
                if str_of(&v, "severity") == Some("warning") {
                    tracing::info!(message = %msg, "gemini warning");
                } else {
                    out.extend(self.error(&msg));
                }
            }
            "result" => self.result(&v, &mut out),
            _ => out.push(Event::Unparsed { line: line.into() }),
        }
        out
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        if self.error_reported || exit_code == Some(0) {
            return Vec::new();
        }
        // json mode: `{"session_id", "error": {"type", "message", "code"}}` on stderr.
        let from_json = last_json_error(stderr_tail).and_then(|v| {
            v.get("error")
                .and_then(|e| str_of(e, "message"))
                .map(String::from)
        });
        let message = match from_json {
            Some(m) => m,
            None => exit_error(exit_code, stderr_tail),
        };
        self.error(&message).into_iter().collect()
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
            backend: "gemini".into(),
            prompt: prompt.into(),
            ..Invocation::default()
        }
    }

    fn args(inv: &Invocation, cfg: &BackendSettings) -> Vec<String> {
        Gemini.build(inv, cfg).unwrap().args
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn base(prompt: &str, rest: &[&str]) -> Vec<String> {
        let mut a = vec![
            format!("--prompt={prompt}"),
            "--output-format".into(),
            "stream-json".into(),
            "--skip-trust".into(),
        ];
        a.extend(rest.iter().map(|s| s.to_string()));
        a
    }

    const ID: &str = "32bc06fb-c5b8-49c3-80fd-c2bb29557d8e";

    #[test]
    fn typical_prompt_and_resume() {
        let cfg = BackendSettings::default();
        let spec = Gemini.build(&inv("Say hello"), &cfg).unwrap();
        assert_eq!(spec.program, "gemini");
        assert_eq!(spec.args, base("Say hello", &[]));
        assert!(spec.stdin_null);
        assert!(spec.env.is_empty());
        let mut i = inv("Which word was it?");
        i.resume = Some(ID.into());
        assert_eq!(
            args(&i, &cfg),
            base("Which word was it?", &["--resume", ID])
        );
        i.resume = Some("latest".into());
        assert!(matches!(Gemini.build(&i, &cfg), Err(ArgvError::Invalid(_))));
    }

    #[test]
    fn prompt_starting_with_dash_is_one_element() {
        let cfg = BackendSettings::default();
        assert_eq!(
            args(&inv("-x hello\n--line two"), &cfg),
            base("-x hello\n--line two", &[])
        );
    }

    #[test]
    fn model_session_id_workdir_env() {
        let mut cfg = BackendSettings {
            model: Some("gemini-2.5-flash".into()),
            ..BackendSettings::default()
        };
        cfg.env.insert("GEMINI_CLI_HOME".into(), "/srv/g".into());
        let mut i = inv("p");
        i.new_session_id = Some("22222222-3333-4444-8555-666666666666".into());
        i.workdir = Some(PathBuf::from("/srv/p"));
        i.ephemeral = true; // no such thing for gemini
        i.max_turns = Some(2); // claude only
        let spec = Gemini.build(&i, &cfg).unwrap();
        assert_eq!(
            spec.args,
            base(
                "p",
                &[
                    "-m",
                    "gemini-2.5-flash",
                    "--session-id",
                    "22222222-3333-4444-8555-666666666666"
                ]
            )
        );
        assert_eq!(spec.cwd, Some(PathBuf::from("/srv/p")));
        assert_eq!(spec.env, vec![("GEMINI_CLI_HOME".into(), "/srv/g".into())]);
        i.model = Some("gemini".into());
        i.new_session_id = None;
        assert_eq!(args(&i, &cfg), base("p", &[]));
    }

    #[test]
    fn approval_and_sandbox() {
        let cfg = BackendSettings::default();
        let cases: [(ApprovalMode, SandboxMode, &[&str]); 8] = [
            (ApprovalMode::Default, SandboxMode::Default, &[]),
            (
                ApprovalMode::Auto,
                SandboxMode::Default,
                &["--approval-mode", "auto_edit"],
            ),
            (
                ApprovalMode::None,
                SandboxMode::Default,
                &["--approval-mode", "yolo"],
            ),
            (
                ApprovalMode::Always,
                SandboxMode::Default,
                &["--approval-mode", "default"],
            ),
            (
                ApprovalMode::Default,
                SandboxMode::ReadOnly,
                &["--approval-mode", "plan"],
            ),
            (
                ApprovalMode::None,
                SandboxMode::ReadOnly,
                &["--approval-mode", "plan"],
            ),
            (
                ApprovalMode::Default,
                SandboxMode::Workspace,
                &["--sandbox"],
            ),
            (
                ApprovalMode::Auto,
                SandboxMode::Full,
                &["--approval-mode", "auto_edit"],
            ),
        ];
        for (a, s, want) in cases {
            let mut i = inv("p");
            i.approval_mode = a;
            i.sandbox_mode = s;
            assert_eq!(args(&i, &cfg), base("p", want), "{a:?} {s:?}");
        }
    }

    #[test]
    fn system_prompt_only_for_new_sessions() {
        let cfg = BackendSettings {
            system_prompt: Some("Be terse.".into()),
            ..BackendSettings::default()
        };
        assert_eq!(
            args(&inv("Say hello"), &cfg),
            base(
                "<system_instructions>\nBe terse.\n</system_instructions>\n\nSay hello",
                &[]
            )
        );
        let mut i = inv("Again");
        i.resume = Some(ID.into());
        assert_eq!(args(&i, &cfg), base("Again", &["--resume", ID]));
    }

    #[test]
    fn tools_and_extra() {
        let cfg = BackendSettings {
            allowed_tools: v(&["read_file", "glob"]),
            extra_flags: v(&["--screen-reader"]),
            ..BackendSettings::default()
        };
        let mut i = inv("p");
        i.extra = v(&["--allowed-mcp-server-names", "docs"]);
        assert_eq!(
            args(&i, &cfg),
            base(
                "p",
                &[
                    "--allowed-tools=read_file",
                    "--allowed-tools=glob",
                    "--screen-reader",
                    "--allowed-mcp-server-names=docs"
                ]
            )
        );
        i.extra = v(&["--yolo"]);
        assert_eq!(
            Gemini.build(&i, &cfg),
            Err(ArgvError::DisallowedFlag("--yolo".into()))
        );
    }

    // ---- parser ----

    fn run(stdout: &str, exit: &str, stderr: &str) -> Vec<Event> {
        let mut p = Gemini.parser();
        let mut evs: Vec<Event> = stdout.lines().flat_map(|l| p.parse_line(l)).collect();
        evs.extend(p.finish(exit.trim().parse().ok(), stderr));
        evs
    }

    macro_rules! fixture {
        ($name:literal) => {
            run(
                include_str!(concat!(
                    "../../tests/fixtures/gemini-0.61.0-",
                    $name,
                    ".stdout"
                )),
                include_str!(concat!(
                    "../../tests/fixtures/gemini-0.61.0-",
                    $name,
                    ".exit"
                )),
                include_str!(concat!(
                    "../../tests/fixtures/gemini-0.61.0-",
                    $name,
                    ".stderr"
                )),
            )
        };
    }

    fn deltas(evs: &[Event]) -> usize {
        evs.iter()
            .filter(|e| matches!(e, Event::TextDelta { .. }))
            .count()
    }

    #[test]
    fn fixture_ok() {
        let evs = fixture!("ok");
        assert_eq!(
            evs[0],
            Event::SessionStarted {
                session_id: "dbce03c2-4f20-4956-9224-5ae94efbfb2f".into(),
                model: Some("auto".into())
            }
        );
        assert!(deltas(&evs) >= 2);
        let o = Outcome::from_events(&evs);
        assert_eq!(o.output, "fake-reply turns=1 last=Say hello in a few words");
        assert_eq!(
            o.usage,
            TokenUsage {
                input_tokens: 10538,
                output_tokens: 13
            }
        );
        assert!(!o.is_error);
        assert_eq!(o.unparsed, 0);
        assert_eq!(
            evs.last(),
            Some(&Event::Result {
                text: None,
                is_error: false
            })
        );
    }

    #[test]
    fn fixture_resume_and_system() {
        let evs = fixture!("resume");
        assert!(deltas(&evs) >= 2);
        let o = Outcome::from_events(&evs);
        assert_eq!(o.session_id.as_deref(), Some(ID));
        assert_eq!(o.output, "fake-reply turns=2 last=Which word was it?");
        assert_eq!(o.usage.output_tokens, 11);
        let o = Outcome::from_events(&fixture!("system"));
        assert_eq!(
            o.output,
            "fake-reply turns=1 last=Say hello in a few words sys=SYSMARK You are terse."
        );
        assert_eq!(
            o.usage,
            TokenUsage {
                input_tokens: 1929,
                output_tokens: 12
            }
        );
    }

    #[test]
    fn fixture_error_stream() {
        let evs = fixture!("error");
        assert_eq!(
            evs.iter()
                .filter(|e| matches!(e, Event::Error { .. }))
                .count(),
            1
        );
        let o = Outcome::from_events(&evs);
        assert!(o.is_error);
        assert_eq!(
            o.error.as_deref(),
            Some("API Error: fakemodel: injected error [[error]] (400 INVALID_ARGUMENT)")
        );
        assert_eq!(o.output, "");
        assert_eq!(
            o.session_id.as_deref(),
            Some("09612731-8f58-4d35-9d96-bcc041754506")
        );
    }

    #[test]
    fn fixture_error_json_mode_reads_stderr() {
        let evs = fixture!("error-json");
        assert_eq!(
            evs,
            vec![Event::Error {
                message: "fakemodel: injected error [[error]] (400 INVALID_ARGUMENT)".into()
            }]
        );
    }

    #[test]
    fn fixture_badresume() {
        let evs = fixture!("badresume");
        let stderr = include_str!("../../tests/fixtures/gemini-0.61.0-badresume.stderr");
        let o = Outcome::from_events(&evs);
        assert!(o.is_error);
        assert_eq!(o.error.as_deref(), Some(stderr.trim()));
    }

    #[test]
    fn fixture_json_mode_is_unparsed_not_a_panic() {
        let o = Outcome::from_events(&fixture!("json"));
        assert!(o.unparsed > 10);
        assert!(!o.is_error);
    }

    #[test]
    fn tools_messages_errors() {
        let lines = [
            r#"{"type":"tool_use","timestamp":"t","tool_name":"read_file","tool_id":"r1","parameters":{"path":"a.txt"}}"#,
            r#"{"type":"tool_result","timestamp":"t","tool_id":"r1","status":"success","output":"hello"}"#,
            r#"{"type":"tool_result","timestamp":"t","tool_id":"r2","status":"error","error":{"type":"x","message":"no such file"}}"#,
            r#"{"type":"message","role":"assistant","content":"whole"}"#,
            r#"{"type":"message","role":"user","content":"ignored"}"#,
            r#"{"type":"error","severity":"warning","message":"loop?"}"#,
            r#"{"type":"error","severity":"error","message":"Maximum session turns exceeded"}"#,
        ];
        let mut p = Gemini.parser();
        let evs: Vec<Event> = lines.iter().flat_map(|l| p.parse_line(l)).collect();
        assert_eq!(
            evs,
            vec![
                Event::ToolUse {
                    id: Some("r1".into()),
                    name: "read_file".into(),
                    input: serde_json::json!({"path": "a.txt"})
                },
                Event::ToolResult {
                    id: Some("r1".into()),
                    output: "hello".into(),
                    is_error: false
                },
                Event::ToolResult {
                    id: Some("r2".into()),
                    output: "no such file".into(),
                    is_error: true
                },
                Event::Message {
                    text: "whole".into()
                },
                Event::Error {
                    message: "Maximum session turns exceeded".into()
                },
            ]
        );
        assert!(
            p.finish(Some(1), "more").is_empty(),
            "error already reported"
        );
    }

    #[test]
    fn failed_exit_with_plain_stderr() {
        let mut p = Gemini.parser();
        let evs = p.finish(
            Some(1),
            "Fatal error: Failed to relaunch the CLI process.\nFatalSandboxError: Sandbox image 'x' is missing\n    at start_sandbox (file:///a.js:1:2)\n",
        );
        assert_eq!(
            evs,
            vec![Event::Error {
                message: "Fatal error: Failed to relaunch the CLI process.\nFatalSandboxError: Sandbox image 'x' is missing".into()
            }]
        );
    }

    #[test]
    fn never_panics_on_junk() {
        let mut p = Gemini.parser();
        let big = "z".repeat(1 << 20);
        let big_json =
            format!(r#"{{"type":"message","role":"assistant","content":"{big}","delta":true}}"#);
        for line in [
            "",
            "\t",
            "{",
            "}",
            "[]",
            "{}",
            r#"{"type":"init"}"#,
            r#"{"type":"message","role":"assistant","content":[1,{"text":"x"}]}"#,
            r#"{"type":"tool_result","output":{"a":1}}"#,
            r#"{"type":"result","stats":{"models":{"m":{"tokens":"x"},"n":5}}}"#,
            r#"{"type":"result","status":"error","error":7}"#,
            "\u{fffd}\u{fffd}",
            &big,
            &big_json,
        ] {
            let _ = p.parse_line(line);
        }
        assert_eq!(
            p.parse_line("Warning: 256-color support not detected."),
            vec![Event::Unparsed {
                line: "Warning: 256-color support not detected.".into()
            }]
        );
        let _ = p.finish(Some(144), &big);
    }

    #[test]
    fn json_mode_stats_shape() {
        let stats = serde_json::json!({"models": {
            "a": {"tokens": {"prompt": 851, "candidates": 5}},
            "b": {"tokens": {"prompt": 9687, "candidates": 8}}
        }});
        assert_eq!(
            usage(&stats),
            TokenUsage {
                input_tokens: 10538,
                output_tokens: 13
            }
        );
    }
}
