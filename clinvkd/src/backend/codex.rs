//! OpenAI Codex CLI (`codex`, npm `@openai/codex`): argv and `exec --json` parsing.
//!
//! Runs `codex [-a POLICY] exec --json --skip-git-repo-check [exec options] -- PROMPT`, or
//! `… exec … resume -- THREAD_ID PROMPT` to continue a thread. The approval policy is a
//! top-level option (`exec -a` is rejected); everything else goes after `exec`, before
//! `resume`, where the pinned version accepts it for both forms. stdin must be /dev/null:
//! codex reads a piped stdin to its end before starting.
//!
//! Output: NDJSON `thread.started` (thread id), `item.started`/`item.completed` (agent
//! messages, reasoning, commands, file changes, MCP calls), `turn.completed` (usage),
//! `turn.failed` / `error` on failure. No token deltas: text comes as whole messages.

use std::collections::HashSet;

use clinvk_shared::config::BackendSettings;
use clinvk_shared::types::TokenUsage;
use serde_json::Value;

use super::common::{
    check_arg_lengths, config_env, content_text, exit_error, humanize_error, json_object, resolve,
    str_of, u64_of, ExtraRules,
};
use super::{
    Adapter, ApprovalMode, ArgvError, CommandSpec, Event, Invocation, LineParser, SandboxMode,
};

pub struct Codex;

/// Flags a request's `extra` may use (after `exec`). Codex has few harmless ones: `-c`,
/// `--enable`, `--profile`, `--oss`, `--ignore-user-config` could reroute the model provider
/// or turn on features, `--add-dir`/`--image`/`--output-schema` reach outside the workdir.
const EXTRA_ALLOWED: &[&str] = &["--strict-config", "--color"];
const EXTRA_NO_VALUE: &[&str] = &["--strict-config"];

impl Adapter for Codex {
    fn name(&self) -> &'static str {
        "codex"
    }

    fn default_command(&self) -> &'static str {
        "codex"
    }

    fn install_hint(&self) -> &'static str {
        "npm install -g @openai/codex"
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
        let mut args: Vec<String> = Vec::new();
        // `--approve-for-me` (automatic review of approval requests, workspace-write sandbox)
        // is what makes `auto` differ from the default in exec mode; it cannot be combined
        // with an explicit sandbox, where `-a on-request` states the intent instead.
        let approve_for_me = r.approval == ApprovalMode::Auto && r.sandbox == SandboxMode::Default;
        let policy = match r.approval {
            ApprovalMode::Default => None,
            ApprovalMode::Auto if approve_for_me => None,
            ApprovalMode::Auto => Some("on-request"),
            ApprovalMode::None => Some("never"),
            // `untrusted` is gone from 0.169.0; on-request is the strictest policy left.
            ApprovalMode::Always => Some("on-request"),
        };
        if let Some(p) = policy {
            args.extend(["-a".into(), p.into()]);
        }
        args.extend(["exec", "--json", "--skip-git-repo-check"].map(String::from));
        if let Some(dir) = &inv.workdir {
            args.extend(["-C".into(), dir.to_string_lossy().into_owned()]);
        }
        if let Some(m) = r.model {
            args.extend(["-m".into(), m]);
        }
        let sandbox = match r.sandbox {
            SandboxMode::Default => None,
            SandboxMode::ReadOnly => Some("read-only"),
            SandboxMode::Workspace => Some("workspace-write"),
            SandboxMode::Full => Some("danger-full-access"),
        };
        if let Some(s) = sandbox {
            args.extend(["-s".into(), s.into()]);
        }
        if approve_for_me {
            args.push("--approve-for-me".into());
        }
        if inv.ephemeral {
            args.push("--ephemeral".into());
        }
        // A developer message: the model gets it as instructions, not as the user's words.
        if let Some(s) = r.system_prompt {
            args.extend([
                "-c".into(),
                format!("developer_instructions={}", toml_string(&s)),
            ]);
        }
        args.extend(cfg.extra_flags.iter().cloned());
        args.extend(r.extra);
        if let Some(id) = r.resume {
            args.extend(["resume".into(), "--".into(), id]);
        } else {
            args.push("--".into());
        }
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
        Box::<CodexParser>::default()
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        EXTRA_ALLOWED
    }
}

/// A TOML basic string (what `-c key=value` parses): JSON string escapes are valid TOML.
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[derive(Debug, Default)]
pub struct CodexParser {
    error_reported: bool,
    last_error: Option<String>,
    /// Tool items whose `ToolUse` was sent at `item.started`.
    started: HashSet<String>,
}

/// Item types that are tool calls, and the name they get in `ToolUse`.
fn tool_name(item: &Value) -> Option<String> {
    match str_of(item, "type")? {
        "command_execution" => Some("shell".into()),
        "file_change" => Some("file_change".into()),
        "web_search" => Some("web_search".into()),
        "mcp_tool_call" => Some(match (str_of(item, "server"), str_of(item, "tool")) {
            (Some(s), Some(t)) => format!("{s}.{t}"),
            (None, Some(t)) => t.to_string(),
            _ => "mcp_tool_call".to_string(),
        }),
        _ => None,
    }
}

fn tool_input(item: &Value) -> Value {
    match str_of(item, "type") {
        Some("command_execution") => {
            serde_json::json!({"command": item.get("command").cloned().unwrap_or(Value::Null)})
        }
        Some("file_change") => {
            serde_json::json!({"changes": item.get("changes").cloned().unwrap_or(Value::Null)})
        }
        Some("web_search") => {
            serde_json::json!({"query": item.get("query").cloned().unwrap_or(Value::Null)})
        }
        Some("mcp_tool_call") => item.get("arguments").cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn tool_result(item: &Value) -> (String, bool) {
    let failed = str_of(item, "status") == Some("failed");
    match str_of(item, "type") {
        Some("command_execution") => {
            let exit = item.get("exit_code").and_then(Value::as_i64);
            let output = str_of(item, "aggregated_output")
                .unwrap_or_default()
                .to_string();
            (output, failed || exit.is_some_and(|c| c != 0))
        }
        Some("file_change") => {
            let changes = item
                .get("changes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|c| {
                            format!(
                                "{} {}",
                                str_of(c, "kind").unwrap_or("update"),
                                str_of(c, "path").unwrap_or("?")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            (changes, failed)
        }
        Some("mcp_tool_call") => {
            if let Some(msg) = item.get("error").and_then(|e| str_of(e, "message")) {
                return (msg.to_string(), true);
            }
            let output = item
                .get("result")
                .map(|r| content_text(r.get("content")))
                .unwrap_or_default();
            (output, failed)
        }
        _ => (String::new(), failed),
    }
}

impl CodexParser {
    fn error(&mut self, message: &str) -> Option<Event> {
        let message = humanize_error(message);
        // `error` and `turn.failed` usually carry the same message.
        if self.last_error.as_deref() == Some(message.as_str()) {
            return None;
        }
        self.error_reported = true;
        self.last_error = Some(message.clone());
        Some(Event::Error { message })
    }

    fn item(&mut self, line: &str, ty: &str, item: &Value, out: &mut Vec<Event>) {
        let id = str_of(item, "id").map(String::from);
        let item_type = str_of(item, "type").unwrap_or_default();
        if let Some(name) = tool_name(item) {
            let seen = id.as_ref().is_some_and(|i| self.started.contains(i));
            if !seen {
                out.push(Event::ToolUse {
                    id: id.clone(),
                    name,
                    input: tool_input(item),
                });
                if let Some(i) = &id {
                    self.started.insert(i.clone());
                }
            }
            if ty == "item.completed" {
                let (output, is_error) = tool_result(item);
                out.push(Event::ToolResult {
                    id,
                    output,
                    is_error,
                });
            }
            return;
        }
        if ty != "item.completed" {
            return;
        }
        match item_type {
            "agent_message" => {
                let text = str_of(item, "text").unwrap_or_default();
                if !text.is_empty() {
                    out.push(Event::Message { text: text.into() });
                }
            }
            "reasoning" => {
                let text = str_of(item, "text").unwrap_or_default();
                if !text.is_empty() {
                    out.push(Event::Thinking { text: text.into() });
                }
            }
            // Warnings (e.g. unknown model metadata), not failures.
            "error" => {
                tracing::info!(
                    message = str_of(item, "message").unwrap_or_default(),
                    "codex warning"
                );
            }
            "todo_list" => {}
            _ => out.push(Event::Unparsed { line: line.into() }),
        }
    }
}

impl LineParser for CodexParser {
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
            "thread.started" => match str_of(&v, "thread_id").filter(|s| !s.is_empty()) {
                Some(id) => out.push(Event::SessionStarted {
                    session_id: id.into(),
                    model: None,
                }),
                None => out.push(Event::Unparsed { line: line.into() }),
            },
            "turn.started" => {}
            ty @ ("item.started" | "item.updated" | "item.completed") => match v.get("item") {
                Some(item) if item.is_object() => self.item(line, ty, item, &mut out),
                _ => out.push(Event::Unparsed { line: line.into() }),
            },
            "turn.completed" => {
                let u = v.get("usage").cloned().unwrap_or(Value::Null);
                out.push(Event::Usage(TokenUsage {
                    // `input_tokens` includes the cached ones.
                    input_tokens: u64_of(&u, "input_tokens"),
                    output_tokens: u64_of(&u, "output_tokens"),
                }));
            }
            "turn.failed" => {
                let msg = v
                    .get("error")
                    .and_then(|e| str_of(e, "message"))
                    .unwrap_or("the turn failed")
                    .to_string();
                out.extend(self.error(&msg));
            }
            "error" => {
                let msg = str_of(&v, "message").unwrap_or("unknown error").to_string();
                // Stream retries ("Reconnecting... 2/5 (…)") come as `error` lines too; the
                // run fails only with `turn.failed` or a final error after them.
                if msg.starts_with("Reconnecting...") {
                    tracing::debug!(message = %msg, "codex retries its model API");
                } else {
                    out.extend(self.error(&msg));
                }
            }
            _ => out.push(Event::Unparsed { line: line.into() }),
        }
        out
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        if self.error_reported || exit_code == Some(0) {
            return Vec::new();
        }
        self.error_reported = true;
        vec![Event::Error {
            message: exit_error(exit_code, stderr_tail),
        }]
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
            backend: "codex".into(),
            prompt: prompt.into(),
            ..Invocation::default()
        }
    }

    fn args(inv: &Invocation, cfg: &BackendSettings) -> Vec<String> {
        Codex.build(inv, cfg).unwrap().args
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const ID: &str = "01a21a40-191b-7573-972e-4db10b0b0b58";

    #[test]
    fn typical_prompt_and_resume() {
        let cfg = BackendSettings::default();
        let spec = Codex.build(&inv("Say hello"), &cfg).unwrap();
        assert_eq!(spec.program, "codex");
        assert_eq!(
            spec.args,
            v(&["exec", "--json", "--skip-git-repo-check", "--", "Say hello"])
        );
        assert!(spec.stdin_null);
        let mut i = inv("Which word was it?");
        i.resume = Some(ID.into());
        // A new session id cannot be chosen for codex: ignored.
        i.new_session_id = Some("11111111-2222-4333-8444-555555555555".into());
        assert_eq!(
            args(&i, &cfg),
            v(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "resume",
                "--",
                ID,
                "Which word was it?"
            ])
        );
    }

    #[test]
    fn resume_needs_a_uuid() {
        // codex takes a non-UUID as a thread *name* and silently starts a new thread.
        let cfg = BackendSettings::default();
        let mut i = inv("p");
        i.resume = Some("no-such-session".into());
        assert!(matches!(Codex.build(&i, &cfg), Err(ArgvError::Invalid(_))));
    }

    #[test]
    fn workdir_model_prompt_like_flag() {
        let cfg = BackendSettings {
            model: Some("gpt-5.5".into()),
            ..BackendSettings::default()
        };
        let mut i = inv("--json please");
        i.workdir = Some(PathBuf::from("/srv/p"));
        let spec = Codex.build(&i, &cfg).unwrap();
        assert_eq!(
            spec.args,
            v(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "-C",
                "/srv/p",
                "-m",
                "gpt-5.5",
                "--",
                "--json please"
            ])
        );
        assert_eq!(spec.cwd, Some(PathBuf::from("/srv/p")));
        i.workdir = None;
        i.model = Some("codex".into());
        assert_eq!(
            args(&i, &cfg),
            v(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "--",
                "--json please"
            ])
        );
        i.model = Some("o4-mini".into());
        assert_eq!(
            args(&i, &cfg),
            v(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "-m",
                "o4-mini",
                "--",
                "--json please"
            ])
        );
    }

    #[test]
    fn approval_and_sandbox() {
        let cfg = BackendSettings::default();
        let e = |pre: &[&str], post: &[&str]| -> Vec<String> {
            pre.iter()
                .chain(["exec", "--json", "--skip-git-repo-check"].iter())
                .chain(post)
                .chain(["--", "p"].iter())
                .map(|s| s.to_string())
                .collect()
        };
        let cases = [
            (ApprovalMode::Default, SandboxMode::Default, e(&[], &[])),
            (
                ApprovalMode::Auto,
                SandboxMode::Default,
                e(&[], &["--approve-for-me"]),
            ),
            (
                ApprovalMode::Auto,
                SandboxMode::Workspace,
                e(&["-a", "on-request"], &["-s", "workspace-write"]),
            ),
            (
                ApprovalMode::None,
                SandboxMode::Default,
                e(&["-a", "never"], &[]),
            ),
            (
                ApprovalMode::Always,
                SandboxMode::Default,
                e(&["-a", "on-request"], &[]),
            ),
            (
                ApprovalMode::Default,
                SandboxMode::ReadOnly,
                e(&[], &["-s", "read-only"]),
            ),
            (
                ApprovalMode::None,
                SandboxMode::Full,
                e(&["-a", "never"], &["-s", "danger-full-access"]),
            ),
        ];
        for (a, s, want) in cases {
            let mut i = inv("p");
            i.approval_mode = a;
            i.sandbox_mode = s;
            assert_eq!(args(&i, &cfg), want, "{a:?} {s:?}");
        }
        let cfg = BackendSettings {
            approval_mode: Some("none".into()),
            sandbox_mode: Some("workspace".into()),
            ..BackendSettings::default()
        };
        assert_eq!(
            args(&inv("p"), &cfg),
            e(&["-a", "never"], &["-s", "workspace-write"])
        );
    }

    #[test]
    fn ephemeral_system_prompt_extra_and_ignored_options() {
        let mut cfg = BackendSettings {
            extra_flags: v(&["-c", "model_reasoning_effort=\"high\""]),
            allowed_extra_flags: v(&["--enable"]),
            allowed_tools: v(&["ignored"]),
            ..BackendSettings::default()
        };
        cfg.env.insert("CODEX_HOME".into(), "/srv/codex".into());
        let mut i = inv("p");
        i.ephemeral = true;
        i.max_turns = Some(4); // claude only
        i.system_prompt = Some("Be \"terse\".\nSYSMARK".into());
        i.extra = v(&["--strict-config", "--enable", "web_search"]);
        i.resume = Some(ID.into());
        let spec = Codex.build(&i, &cfg).unwrap();
        assert_eq!(
            spec.args,
            v(&[
                "exec",
                "--json",
                "--skip-git-repo-check",
                "--ephemeral",
                "-c",
                "developer_instructions=\"Be \\\"terse\\\".\\nSYSMARK\"",
                "-c",
                "model_reasoning_effort=\"high\"",
                "--strict-config",
                "--enable=web_search",
                "resume",
                "--",
                ID,
                "p"
            ])
        );
        assert_eq!(
            spec.env,
            vec![("CODEX_HOME".to_string(), "/srv/codex".to_string())]
        );
        i.extra = v(&["-c", "model_provider=\"evil\""]);
        assert_eq!(
            Codex.build(&i, &cfg),
            Err(ArgvError::DisallowedFlag("-c".into()))
        );
        i.extra = v(&["--strict-config", "resume"]);
        assert_eq!(
            Codex.build(&i, &cfg),
            Err(ArgvError::DisallowedFlag("resume".into()))
        );
    }

    // ---- parser ----

    fn run(stdout: &str, exit: &str, stderr: &str) -> Vec<Event> {
        let mut p = Codex.parser();
        let mut evs: Vec<Event> = stdout.lines().flat_map(|l| p.parse_line(l)).collect();
        evs.extend(p.finish(exit.trim().parse().ok(), stderr));
        evs
    }

    macro_rules! fixture {
        ($name:literal) => {
            run(
                include_str!(concat!(
                    "../../tests/fixtures/codex-0.169.0-",
                    $name,
                    ".stdout"
                )),
                include_str!(concat!(
                    "../../tests/fixtures/codex-0.169.0-",
                    $name,
                    ".exit"
                )),
                include_str!(concat!(
                    "../../tests/fixtures/codex-0.169.0-",
                    $name,
                    ".stderr"
                )),
            )
        };
    }

    #[test]
    fn fixture_ok() {
        let evs = fixture!("ok");
        assert_eq!(
            evs,
            vec![
                Event::SessionStarted {
                    session_id: "01a21a40-150b-7670-91cd-c8e6c5761462".into(),
                    model: None
                },
                Event::Message {
                    text: "fake-reply turns=1 last=Say hello in a few words".into()
                },
                Event::Usage(TokenUsage {
                    input_tokens: 13826,
                    output_tokens: 8
                }),
            ]
        );
        let o = Outcome::from_events(&evs);
        assert_eq!(o.output, "fake-reply turns=1 last=Say hello in a few words");
        assert!(!o.is_error);
        assert_eq!(o.unparsed, 0);
    }

    #[test]
    fn fixture_resume_and_model() {
        let o = Outcome::from_events(&fixture!("resume"));
        assert_eq!(o.session_id.as_deref(), Some(ID));
        assert_eq!(o.output, "fake-reply turns=2 last=Which word was it?");
        assert_eq!(
            o.usage,
            TokenUsage {
                input_tokens: 27739,
                output_tokens: 12
            }
        );
        let o = Outcome::from_events(&fixture!("model"));
        assert_eq!(o.usage.input_tokens, 9529);
        assert!(!o.is_error);
    }

    #[test]
    fn fixture_error() {
        let evs = fixture!("error");
        let errors: Vec<_> = evs
            .iter()
            .filter(|e| matches!(e, Event::Error { .. }))
            .collect();
        assert_eq!(errors.len(), 1, "{evs:?}");
        let o = Outcome::from_events(&evs);
        assert!(o.is_error);
        assert_eq!(
            o.error.as_deref(),
            Some("fakemodel: injected error [[error]] (invalid_request)")
        );
        assert_eq!(o.output, "");
        assert_eq!(
            o.session_id.as_deref(),
            Some("01a21a40-1cdc-7ff2-a26f-829eb316fbc7")
        );
    }

    #[test]
    fn fixture_badresume() {
        let o = Outcome::from_events(&fixture!("badresume"));
        assert!(o.is_error);
        assert_eq!(
            o.error.as_deref(),
            Some("Error: thread/resume: thread/resume failed: no rollout found for thread id 00000000-0000-4000-8000-00000000dead (code -32600)")
        );
        assert_eq!(o.session_id, None);
        assert_eq!(o.output, "");
    }

    /// `codex-0.169.0-retry`: recorded for this adapter like the others, but with the fake
    /// model answering HTTP 500 (`Say hello [[error5xx]]`) and codex's retries left on:
    /// five `Reconnecting...` error lines, then the real failure.
    #[test]
    fn fixture_retries_then_failure() {
        let evs = fixture!("retry");
        let errors: Vec<_> = evs
            .iter()
            .filter(|e| matches!(e, Event::Error { .. }))
            .collect();
        assert_eq!(errors.len(), 1, "{evs:?}");
        let o = Outcome::from_events(&evs);
        assert!(o.is_error);
        assert_eq!(
            o.error.as_deref(),
            Some("We’re currently experiencing high demand, which may cause temporary errors.")
        );
    }

    #[test]
    fn retry_notices_are_not_errors() {
        let mut p = Codex.parser();
        let line = r#"{"type":"error","message":"Reconnecting... 1/5 (We’re currently experiencing high demand, which may cause temporary errors.)"}"#;
        assert!(p.parse_line(line).is_empty());
        assert!(p.parse_line(r#"{"type":"item.completed","item":{"id":"item_1","type":"error","message":"Model metadata for `x` not found"}}"#).is_empty());
        assert!(p.finish(Some(0), "").is_empty());
    }

    #[test]
    fn fixture_text_mode_is_unparsed() {
        let o = Outcome::from_events(&fixture!("text"));
        assert_eq!(o.unparsed, 1);
        assert!(!o.is_error);
    }

    #[test]
    fn tool_items() {
        let lines = [
            r#"{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#,
            r#"{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"bash -lc ls","aggregated_output":"a.txt\n","exit_code":0,"status":"completed"}}"#,
            r#"{"type":"item.completed","item":{"id":"item_2","type":"command_execution","command":"false","aggregated_output":"","exit_code":1,"status":"failed"}}"#,
            r#"{"type":"item.completed","item":{"id":"item_3","type":"file_change","changes":[{"path":"a.txt","kind":"add"}],"status":"completed"}}"#,
            r#"{"type":"item.completed","item":{"id":"item_4","type":"mcp_tool_call","server":"docs","tool":"search","arguments":{"q":"x"},"result":{"content":[{"type":"text","text":"found"}]},"error":null,"status":"completed"}}"#,
            r#"{"type":"item.completed","item":{"id":"item_5","type":"reasoning","text":"**Thinking**"}}"#,
            r#"{"type":"item.updated","item":{"id":"item_6","type":"todo_list","items":[]}}"#,
            r#"{"type":"item.completed","item":{"id":"item_7","type":"brand_new"}}"#,
        ];
        let mut p = Codex.parser();
        let evs: Vec<Event> = lines.iter().flat_map(|l| p.parse_line(l)).collect();
        assert_eq!(
            evs,
            vec![
                Event::ToolUse {
                    id: Some("item_1".into()),
                    name: "shell".into(),
                    input: serde_json::json!({"command": "bash -lc ls"})
                },
                Event::ToolResult {
                    id: Some("item_1".into()),
                    output: "a.txt\n".into(),
                    is_error: false
                },
                Event::ToolUse {
                    id: Some("item_2".into()),
                    name: "shell".into(),
                    input: serde_json::json!({"command": "false"})
                },
                Event::ToolResult {
                    id: Some("item_2".into()),
                    output: String::new(),
                    is_error: true
                },
                Event::ToolUse {
                    id: Some("item_3".into()),
                    name: "file_change".into(),
                    input: serde_json::json!({"changes": [{"path": "a.txt", "kind": "add"}]})
                },
                Event::ToolResult {
                    id: Some("item_3".into()),
                    output: "add a.txt".into(),
                    is_error: false
                },
                Event::ToolUse {
                    id: Some("item_4".into()),
                    name: "docs.search".into(),
                    input: serde_json::json!({"q": "x"})
                },
                Event::ToolResult {
                    id: Some("item_4".into()),
                    output: "found".into(),
                    is_error: false
                },
                Event::Thinking {
                    text: "**Thinking**".into()
                },
                Event::Unparsed {
                    line: lines[7].into()
                },
            ]
        );
    }

    #[test]
    fn never_panics_on_junk() {
        let mut p = Codex.parser();
        let big = "y".repeat(1 << 20);
        let big_json = format!(
            r#"{{"type":"item.completed","item":{{"id":"i","type":"agent_message","text":"{big}"}}}}"#
        );
        for line in [
            "",
            "  ",
            "garbage",
            "{",
            "[]",
            "{}",
            r#"{"type":null}"#,
            r#"{"type":"thread.started"}"#,
            r#"{"type":"item.completed"}"#,
            r#"{"type":"item.completed","item":5}"#,
            r#"{"type":"item.completed","item":{"type":"command_execution","exit_code":"x","changes":7}}"#,
            r#"{"type":"item.completed","item":{"type":"file_change","changes":[1,{"path":2}]}}"#,
            r#"{"type":"turn.completed","usage":"lots"}"#,
            r#"{"type":"turn.failed","error":"str"}"#,
            r#"{"type":"error"}"#,
            "\u{fffd}",
            &big,
            &big_json,
        ] {
            let _ = p.parse_line(line);
        }
        assert_eq!(
            p.parse_line("Reading additional input from stdin..."),
            vec![Event::Unparsed {
                line: "Reading additional input from stdin...".into()
            }]
        );
        let _ = p.finish(None, &big);
    }
}
