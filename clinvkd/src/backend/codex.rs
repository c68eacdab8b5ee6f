//! OpenAI Codex (`codex`): `exec --json` (whole messages; no token deltas in this mode).

use super::*;
use serde_json::Value;

pub(crate) struct Codex;

/// Flags a request's `extra` may use: none that grants permissions or folders (`--add-dir`,
/// `-c`, … need `allowed_extra_flags`).
const ALLOW: &[&str] = &["--skip-git-repo-check", "--oss"];

impl Adapter for Codex {
    fn backend(&self) -> Backend {
        Backend::Codex
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: ImageDelivery::Files,
            output_schema: SchemaDelivery::File,
            client_tools: ToolSupport::Always,
        }
    }

    /// OpenAI's names: `gpt-…`, `codex…`, and the `o1`/`o3`/`o4` reasoning families.
    fn claims_model(&self, lower: &str) -> bool {
        lower.starts_with("gpt")
            || lower.contains("codex")
            || ["o1", "o3", "o4"]
                .iter()
                .any(|p| lower == *p || lower.starts_with(&format!("{p}-")))
    }

    fn model_families(&self) -> &'static str {
        "gpt-…/o3…/codex…"
    }

    fn credential_folders(&self) -> &'static [&'static str] {
        &[".codex"]
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        ALLOW
    }

    /// `model_reasoning_effort`: none, minimal, low, medium, high, xhigh (max is its xhigh).
    fn effort_args(&self, effort: ReasoningEffort) -> Option<Vec<String>> {
        let level = match effort {
            ReasoningEffort::Max => "xhigh",
            e => e.as_str(),
        };
        Some(vec![
            "-c".into(),
            format!("model_reasoning_effort={}", toml_string(level)),
        ])
    }

    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError> {
        let mut a: Vec<String> = Vec::new();
        // The approval policy belongs before `exec` (`exec -a` is rejected); 0.169.0 accepts only
        // on-request and never (`untrusted` is gone). `exec` alone runs with `never`; its
        // `--approve-for-me` (automatic review) is the closest to `auto`, but conflicts with -s.
        let approval = match (inv.approval_mode, inv.sandbox_mode) {
            (ApprovalMode::Auto, SandboxMode::Default) => None,
            (ApprovalMode::Auto, _) | (ApprovalMode::Always, _) => Some("on-request"),
            (ApprovalMode::None, _) => Some("never"),
            (ApprovalMode::Default, _) => None,
        };
        if let Some(p) = approval {
            a.extend(["-a".to_string(), p.to_string()]);
        }
        a.extend(mcp_overrides(inv));
        a.extend(super::effort_args_of(&Codex, inv));
        a.extend(["exec", "--json", "--skip-git-repo-check"].map(String::from));
        if (inv.approval_mode, inv.sandbox_mode) == (ApprovalMode::Auto, SandboxMode::Default) {
            a.push("--approve-for-me".into());
        }
        if let Some(m) = model_for(inv, cfg) {
            a.extend(["-m".to_string(), m]);
        }
        if let Some(s) = sandbox_name(inv.sandbox_mode) {
            a.extend(["--sandbox".to_string(), s.to_string()]);
        }
        if inv.ephemeral {
            a.push("--ephemeral".into());
        }
        // codex has a real route for a system prompt: developer instructions.
        if let Some(sp) = inv
            .system_prompt
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            a.extend([
                "-c".to_string(),
                format!("developer_instructions={}", toml_string(sp)),
            ]);
        }
        for image in &inv.image_files {
            a.extend(["-i".to_string(), image.display().to_string()]);
        }
        if let Some(file) = &inv.output_schema_file {
            a.extend(["--output-schema".to_string(), file.display().to_string()]);
        }
        a.extend(cfg.extra_flags.iter().cloned());
        a.extend(check_extra(&inv.extra, ALLOW, cfg)?);
        if let Some(id) = &inv.resume {
            a.extend(["resume".to_string(), id.clone()]);
        }
        // codex reads the prompt from stdin when it is `-`.
        let stdin = push_prompt(&mut a, &inv.prompt, Some("-"));
        Ok(CommandSpec::for_run("codex", cfg, inv, a, stdin))
    }

    fn parser(&self) -> Box<dyn LineParser> {
        Box::new(Parser::default())
    }

    /// `codex app-server`: the session settings go in `thread/start` (see `codex_app`); the
    /// request's and the operator's extra flags are `exec` flags, so a run with any stays
    /// one-shot.
    fn live(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<LiveSpec, ArgvError> {
        let approval = match inv.approval_mode {
            ApprovalMode::Default | ApprovalMode::None => "never",
            ApprovalMode::Auto | ApprovalMode::Always => "on-request",
        };
        let settings = super::codex_app::ThreadSettings {
            cwd: inv.workdir.as_ref().map(|w| w.display().to_string()),
            approval_policy: Some(approval),
            sandbox: sandbox_name(inv.sandbox_mode),
            model: model_for(inv, cfg),
            developer_instructions: inv.system_prompt.clone().filter(|s| !s.trim().is_empty()),
        };
        let driver = super::codex_app::AppServer::new(
            settings,
            inv.ephemeral,
            inv.resume.clone(),
            inv.approval_mode == ApprovalMode::Auto,
            inv.extra.is_empty() && cfg.extra_flags.is_empty(),
        );
        let mut argv = mcp_overrides(inv);
        argv.extend(super::effort_args_of(&Codex, inv));
        argv.push("app-server".into());
        Ok(LiveSpec {
            command: CommandSpec::for_run("codex", cfg, inv, argv, None),
            driver: Box::new(driver),
        })
    }
}

/// Client tools: the daemon's MCP endpoint as an MCP server of this codex (config overrides,
/// before the subcommand), with a tool timeout past `tools.pending_timeout_secs` (the call
/// waits for the client; codex's default is 60 s).
fn mcp_overrides(inv: &Invocation) -> Vec<String> {
    let Some(ct) = &inv.client_tools else {
        return Vec::new();
    };
    let server = format!("mcp_servers.{}", crate::tools::SERVER_NAME);
    let url = ct.url.as_deref().unwrap_or_default();
    let mut a = Vec::new();
    let mut kvs = vec![
        format!("{server}.url={}", toml_string(url)),
        format!("{server}.tool_timeout_sec={}", ct.call_timeout_secs),
        format!("{server}.startup_timeout_sec=30"),
        // The client decides about its own tools: no approval prompt (nobody would answer).
        format!("{server}.default_tools_approval_mode=\"approve\""),
    ];
    if !ct.builtin {
        // codex's own tools off (its `exec` JavaScript tool stays: it is how codex 0.169
        // calls MCP tools).
        kvs.extend([
            "features.shell_tool=false".to_string(),
            "web_search=\"disabled\"".to_string(),
        ]);
    }
    for kv in kvs {
        a.extend(["-c".to_string(), kv]);
    }
    a
}

/// codex's name of a sandbox mode (none: its default).
fn sandbox_name(mode: SandboxMode) -> Option<&'static str> {
    match mode {
        SandboxMode::ReadOnly => Some("read-only"),
        SandboxMode::Workspace => Some("workspace-write"),
        SandboxMode::Full => Some("danger-full-access"),
        SandboxMode::Default => None,
    }
}

#[derive(Default)]
struct Parser {
    saw_error: bool,
}

/// A TOML basic string (for `-c key=value`).
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// codex wraps upstream errors as a JSON string; show the inner message.
pub(crate) fn error_text(raw: &str) -> String {
    serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or(v["message"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| raw.to_string())
}

impl LineParser for Parser {
    fn parse_line(&mut self, line: &str) -> Vec<Event> {
        let v = match json_line(line) {
            Ok(v) => v,
            Err(events) => return events,
        };
        let item = &v["item"];
        match v["type"].as_str() {
            Some("thread.started") => vec![Event::SessionStarted {
                session_id: v["thread_id"].as_str().unwrap_or_default().to_string(),
                model: None,
            }],
            Some("item.completed") => match item["type"].as_str() {
                Some("agent_message") => vec![Event::Message {
                    text: item["text"].as_str().unwrap_or_default().to_string(),
                }],
                Some("reasoning") => vec![Event::Thinking {
                    text: item["text"].as_str().unwrap_or_default().to_string(),
                }],
                Some("command_execution") => vec![Event::ToolResult {
                    id: item["id"].as_str().map(str::to_string),
                    output: item["aggregated_output"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    is_error: item["exit_code"].as_i64().is_some_and(|c| c != 0),
                }],
                // `error` items are warnings (e.g. an unknown model's metadata), not failures.
                _ => vec![],
            },
            Some("item.started") if item["type"] == "command_execution" => vec![Event::ToolUse {
                id: item["id"].as_str().map(str::to_string),
                name: "shell".into(),
                input: serde_json::json!({"command": item["command"]}),
            }],
            Some("turn.completed") => {
                let u = &v["usage"];
                vec![Event::Usage(TokenUsage {
                    input_tokens: u["input_tokens"].as_u64().unwrap_or(0),
                    output_tokens: u["output_tokens"].as_u64().unwrap_or(0),
                    cache_tokens: u["cached_input_tokens"].as_u64().unwrap_or(0),
                    cost_usd: None,
                })]
            }
            Some("turn.failed") => {
                if self.saw_error {
                    return vec![];
                }
                self.saw_error = true;
                vec![Event::Error {
                    message: error_text(
                        v["error"]["message"].as_str().unwrap_or("the turn failed"),
                    ),
                }]
            }
            Some("error") => {
                let msg = v["message"].as_str().unwrap_or("error");
                if msg.starts_with("Reconnecting") || self.saw_error {
                    return vec![];
                }
                self.saw_error = true;
                let mut out: Vec<Event> =
                    super::codex_limits::exec_refusal(msg).into_iter().collect();
                out.push(Event::Error {
                    message: error_text(msg),
                });
                out
            }
            Some(_) => vec![],
            None => vec![Event::Unparsed {
                line: line.to_string(),
            }],
        }
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        exit_error("codex", self.saw_error, exit_code, stderr_tail)
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
        let mut i = inv("codex", "hi");
        assert_eq!(
            Codex.build(&i, &cfg).unwrap().args,
            ["exec", "--json", "--skip-git-repo-check", "--", "hi"]
        );
        i.approval_mode = ApprovalMode::None;
        i.sandbox_mode = SandboxMode::ReadOnly;
        i.model = Some("o4-mini".into());
        i.resume = Some("T1".into());
        i.ephemeral = true;
        i.system_prompt = Some("Be \"terse\".\nSYSMARK".into());
        let expected = [
            "-a",
            "never",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-m",
            "o4-mini",
            "--sandbox",
            "read-only",
            "--ephemeral",
            "-c",
            "developer_instructions=\"Be \\\"terse\\\".\\nSYSMARK\"",
            "resume",
            "T1",
            "--",
            "hi",
        ];
        assert_eq!(Codex.build(&i, &cfg).unwrap().args, expected);
        let mut i = inv("codex", "hi");
        i.approval_mode = ApprovalMode::Auto;
        assert!(Codex
            .build(&i, &cfg)
            .unwrap()
            .args
            .contains(&"--approve-for-me".to_string()));
        i.prompt = "x".repeat(200_000);
        let spec = Codex.build(&i, &cfg).unwrap();
        assert_eq!(spec.args.last().unwrap(), "-");
        assert_eq!(spec.stdin.as_deref().map(str::len), Some(200_000));
        i.extra = vec!["-c".into(), "x=1".into()];
        assert!(
            Codex.build(&i, &cfg).is_err(),
            "arbitrary config overrides are not allowed"
        );
    }

    #[test]
    fn ok_and_resume() {
        let (o, e, x) = fixture!("codex-0.169.0-", "ok");
        let (_, out) = replay(&mut *Codex.parser(), o, e, x);
        assert_eq!(
            out.session_id.as_deref(),
            Some("01a21a40-150b-7670-91cd-c8e6c5761462")
        );
        assert_eq!(
            out.output(),
            "fake-reply turns=1 last=Say hello in a few words"
        );
        assert_eq!(out.usage.output_tokens, 8);
        assert!(out.error.is_none());
        let (o, e, x) = fixture!("codex-0.169.0-", "resume");
        let (_, out) = replay(&mut *Codex.parser(), o, e, x);
        assert!(out.output().contains("turns=2"), "{}", out.output());
        let (o, e, x) = fixture!("codex-0.169.0-", "model");
        let (_, out) = replay(&mut *Codex.parser(), o, e, x);
        assert!(
            out.error.is_none(),
            "warning items are not failures: {:?}",
            out.error
        );
    }

    #[test]
    fn errors() {
        let (o, e, x) = fixture!("codex-0.169.0-", "error");
        let (events, out) = replay(&mut *Codex.parser(), o, e, x);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Error { .. }))
                .count(),
            1
        );
        assert_eq!(
            out.error.as_deref(),
            Some("fakemodel: injected error [[error]]")
        );
        let (o, e, x) = fixture!("codex-0.169.0-", "badresume");
        let (_, out) = replay(&mut *Codex.parser(), o, e, x);
        assert!(
            out.error.as_deref().unwrap().contains("no rollout found"),
            "{:?}",
            out.error
        );
    }

    #[test]
    fn garbage() {
        let mut p = Codex.parser();
        assert!(matches!(
            p.parse_line("Reading additional input from stdin...")[0],
            Event::Unparsed { .. }
        ));
        assert!(p.parse_line("{\"type\":\"turn.started\"}").is_empty());
    }
}
