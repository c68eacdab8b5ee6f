//! opencode (`opencode`, npm `opencode-ai`): one-shot `opencode run --format json` with the
//! prompt on stdin, warm `opencode acp` (the ACP driver, `acp`).
//!
//! What opencode has no flag for goes in its own environment variables, never in the user's
//! config files: the permission rules of the approval and sandbox modes in
//! `OPENCODE_PERMISSION`, the live mode's model and agent in `OPENCODE_CONFIG_CONTENT`.

use super::*;
use serde_json::Value;

pub(crate) struct Opencode;

/// Flags a request's `extra` may use: the model variant (reasoning effort), printing thinking
/// blocks, and no external plugins. None grants a tool, a permission or a folder.
const ALLOW: &[&str] = &["--variant <effort>", "--thinking", "--pure"];
/// The ones `opencode acp` also takes (it refuses any flag it does not know, printing its help).
const ACP_FLAGS: &[&str] = &["--pure"];

impl Adapter for Opencode {
    fn backend(&self) -> Backend {
        Backend::Opencode
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // `run -f FILE` sends an image file as an image block (measured).
            images: ImageDelivery::Files,
            output_schema: SchemaDelivery::Instruction,
            client_tools: ToolSupport::WarmOnly,
        }
    }

    /// opencode's models are `provider/model`, and the names of every family belong to another
    /// CLI; `opencode/<model>` reaches it through the compatible APIs' `backend/model` form.
    fn claims_model(&self, _lower: &str) -> bool {
        false
    }

    fn model_families(&self) -> &'static str {
        ""
    }

    fn credential_folders(&self) -> &'static [&'static str] {
        &[".local/share/opencode", ".config/opencode"]
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        ALLOW
    }

    /// opencode creates and migrates its SQLite database when it starts; two processes started
    /// together on a fresh folder race on it and one fails ("database is locked", or "table …
    /// already exists"; measured with two `opencode acp` on a fresh home, and as a pooled
    /// worker and its refill). `opencode db` opens the database (migrating it) and exits.
    fn state_setup(&self) -> Option<StateSetup> {
        Some(StateSetup {
            marker: "opencode.db",
            args: &["db", "select 1"],
        })
    }

    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError> {
        if inv.client_tools.is_some() {
            // One-shot opencode takes MCP servers from its config only.
            return Err(ArgvError::Invalid(
                "opencode takes client tools in warm mode only (backends.opencode.mode: warm), and not with images or a session whose worker is gone".into(),
            ));
        }
        let s = Session::of(inv, cfg)?;
        let mut full = with_system_prompt(inv, inv.system_prompt.as_deref());
        if let Some(schema) = &inv.output_schema {
            full.push_str(&schema_instruction(schema));
        }
        // `--print-logs --log-level ERROR`: the real cause of an "Unexpected server error" is
        // only in opencode's log (see `Parser::finish`). `--title=`: the session is named after
        // the prompt's first 50 characters instead of by a second model call.
        let mut a: Vec<String> = [
            "run",
            "--format",
            "json",
            "--print-logs",
            "--log-level",
            "ERROR",
            "--title=",
        ]
        .map(String::from)
        .to_vec();
        if let Some(m) = &s.model {
            a.extend(["-m".to_string(), m.clone()]);
        }
        if let Some(agent) = s.agent {
            a.extend(["--agent".to_string(), agent.to_string()]);
        }
        if let Some(id) = &inv.resume {
            a.extend(["-s".to_string(), id.clone()]);
        }
        // One element each: `-f` takes an array and would swallow what follows.
        for image in &inv.image_files {
            a.push(format!("--file={}", image.display()));
        }
        a.extend(cfg.extra_flags.iter().cloned());
        a.extend(check_extra(&inv.extra, ALLOW, cfg)?);
        // The prompt always goes through stdin: `run` quotes every argv word that holds a space
        // (`"Say hello"` reached the model with its quotes) and takes stdin as is when there is
        // no message on the command line. Nothing of it can be read as a flag either.
        Ok(CommandSpec {
            env: s.env(false),
            ..CommandSpec::for_run("opencode", cfg, inv, a, Some(full))
        })
    }

    fn parser(&self) -> Box<dyn LineParser> {
        Box::new(Parser::default())
    }

    /// `opencode acp`; the model and agent come from `OPENCODE_CONFIG_CONTENT` (it has no flag
    /// for them). Images and the flags only `run` takes stay one-shot.
    fn live(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<LiveSpec, ArgvError> {
        let s = Session::of(inv, cfg)?;
        let extra = check_extra(&inv.extra, ALLOW, cfg)?;
        let mut a = vec!["acp".to_string()];
        a.extend(cfg.extra_flags.iter().cloned());
        let acp_extra: Vec<String> = extra
            .iter()
            .filter(|f| ACP_FLAGS.contains(&f.as_str()))
            .cloned()
            .collect();
        let run_only = acp_extra.len() != extra.len();
        a.extend(acp_extra);
        let cwd = inv
            .workdir
            .as_ref()
            .map(|w| w.display().to_string())
            .unwrap_or_else(|| ".".into());
        Ok(LiveSpec {
            command: CommandSpec {
                env: s.env(true),
                ..CommandSpec::for_run("opencode", cfg, inv, a, None)
            },
            driver: Box::new(super::acp::Acp::new(
                super::acp::AcpOptions {
                    label: "opencode acp",
                    cwd,
                    images: false,
                    mcp_servers: super::acp::mcp_servers(inv),
                    // `session/load` replays the history as `user_message_chunk` and
                    // `agent_message_chunk` updates before it answers; the next turn's model
                    // call had every earlier turn (measured).
                    resumes: true,
                    load: inv.resume.clone(),
                    // The result's `usage` is the turn's own (measured: two turns of one
                    // process reported 7635/4 then 7686/5 tokens).
                    cumulative_usage: false,
                    // A failed model call is a JSON-RPC error of `session/prompt`.
                    error_text_prefix: None,
                    cancel_forgets_turn: false,
                    refusal: None,
                },
                inv.images.is_empty() && !run_only,
            )),
        })
    }
}

/// The options of an opencode session, one-shot or live.
struct Session {
    /// `provider/model`.
    model: Option<String>,
    /// The primary agent (`plan` for read-only).
    agent: Option<&'static str>,
    /// Permission rules in order (the last match wins in opencode): `(permission, action)`.
    rules: Vec<(&'static str, &'static str)>,
    /// Only the client's tools: every other tool denied.
    only_client_tools: bool,
}

impl Session {
    fn of(inv: &Invocation, cfg: &BackendSettings) -> Result<Self, ArgvError> {
        // A bare name is one of opencode's own models (its `opencode` provider): the compatible
        // APIs turn `opencode/<model>` into the backend and `<model>`.
        let model = model_for(inv, cfg).map(|m| {
            if m.contains('/') {
                m
            } else {
                format!("opencode/{m}")
            }
        });
        // opencode allows every tool by default; "ask" is refused when nobody is there to
        // answer (`run` rejects it, the ACP driver answers with the reject option).
        let mut rules: Vec<(&str, &str)> = match inv.approval_mode {
            ApprovalMode::Default => vec![],
            ApprovalMode::Auto => vec![("edit", "allow"), ("bash", "ask")],
            ApprovalMode::None => vec![("*", "allow")],
            ApprovalMode::Always => vec![("*", "ask")],
        };
        let agent = match inv.sandbox_mode {
            SandboxMode::Default | SandboxMode::Full => None,
            SandboxMode::ReadOnly => {
                // The plan agent denies edits (but not the shell): both denied, whatever the
                // approval mode.
                rules.extend([("edit", "deny"), ("bash", "deny")]);
                Some("plan")
            }
            SandboxMode::Workspace => {
                return Err(ArgvError::Invalid(
                    "opencode has no sandbox: sandbox_mode workspace cannot be kept (read_only: its plan agent with edits and the shell denied; full or default: no sandbox)".into(),
                ))
            }
        };
        let only_client_tools = inv.client_tools.as_ref().is_some_and(|ct| !ct.builtin);
        Ok(Session {
            model,
            agent,
            rules,
            only_client_tools,
        })
    }

    /// `OPENCODE_PERMISSION` (and, live, `OPENCODE_CONFIG_CONTENT` for what `run` takes as
    /// flags).
    fn env(&self, live: bool) -> Vec<(String, String)> {
        let mut rules = self.rules.clone();
        if self.only_client_tools {
            rules.retain(|(p, _)| *p != "*");
            rules.insert(0, ("*", "deny"));
            rules.push(("clinvk_*", "allow"));
        }
        let mut env = vec![];
        if !rules.is_empty() {
            // In order (a JSON object keeps it as written): the wildcard first.
            let body: Vec<String> = rules
                .iter()
                .map(|(p, a)| format!("{}:{}", Value::from(*p), Value::from(*a)))
                .collect();
            env.push((
                "OPENCODE_PERMISSION".to_string(),
                format!("{{{}}}", body.join(",")),
            ));
        }
        if live {
            let mut content = serde_json::Map::new();
            if let Some(m) = &self.model {
                content.insert("model".into(), Value::from(m.as_str()));
            }
            if let Some(agent) = self.agent {
                content.insert("default_agent".into(), Value::from(agent));
            }
            if !content.is_empty() {
                env.push((
                    "OPENCODE_CONFIG_CONTENT".to_string(),
                    Value::Object(content).to_string(),
                ));
            }
        }
        env
    }
}

/// `opencode run --format json`: one JSON object a line, each with the `sessionID`:
/// `step_start`, `text` (a whole text part: `run` prints no token deltas), `reasoning` (with
/// `--thinking`), `tool_use` (a finished tool call), `step_finish` (the step's tokens and cost),
/// `error` (`error.name`, `error.data.message`).
#[derive(Default)]
struct Parser {
    session_announced: bool,
    saw_error: bool,
    usage: TokenUsage,
    cost: f64,
    /// An "Unexpected server error" whose cause is in opencode's log (by its `ref`), reported
    /// at the end with the log line's error.
    pending: Option<(String, String)>,
}

fn error_message(e: &Value) -> String {
    e["data"]["message"]
        .as_str()
        .or_else(|| e["message"].as_str())
        .or_else(|| e["name"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string())
}

/// Terminal colours out (opencode colours its stderr even when it is not a terminal).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `error="…"` of the log line `ref=<r>` (a `--print-logs` line).
fn logged_error(stderr: &str, r: &str) -> Option<String> {
    let needle = format!("ref={r} ");
    let line = stderr.lines().find(|l| l.contains(&needle))?;
    let rest = &line[line.find(" error=\"")? + 8..];
    let mut msg = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => msg.extend(chars.next()),
            '"' => break,
            c => msg.push(c),
        }
    }
    Some(msg).filter(|m| !m.is_empty())
}

impl LineParser for Parser {
    fn parse_line(&mut self, line: &str) -> Vec<Event> {
        let v = match json_line(line) {
            Ok(v) => v,
            Err(events) => return events,
        };
        let mut out = vec![];
        if !self.session_announced {
            if let Some(sid) = v["sessionID"].as_str() {
                self.session_announced = true;
                out.push(Event::SessionStarted {
                    session_id: sid.to_string(),
                    model: None,
                });
            }
        }
        let part = &v["part"];
        match v["type"].as_str() {
            Some("text") => {
                let text = part["text"].as_str().unwrap_or_default();
                if !text.is_empty() {
                    out.push(Event::Message {
                        text: text.to_string(),
                    });
                }
            }
            Some("reasoning") => out.push(Event::Thinking {
                text: part["text"].as_str().unwrap_or_default().to_string(),
            }),
            Some("tool_use") => {
                let state = &part["state"];
                let id = part["callID"].as_str().map(str::to_string);
                out.push(Event::ToolUse {
                    id: id.clone(),
                    name: part["tool"].as_str().unwrap_or("tool").to_string(),
                    input: state["input"].clone(),
                });
                let is_error = state["status"] == "error";
                let output = if is_error {
                    &state["error"]
                } else {
                    &state["output"]
                };
                out.push(Event::ToolResult {
                    id,
                    output: output
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| output.to_string()),
                    is_error,
                });
            }
            Some("step_finish") => {
                // One per model call: the run's usage is their sum.
                let t = &part["tokens"];
                let n = |v: &Value| v.as_u64().unwrap_or(0);
                let cache = n(&t["cache"]["read"]) + n(&t["cache"]["write"]);
                self.usage.input_tokens += n(&t["input"]) + cache;
                self.usage.cache_tokens += cache;
                self.usage.output_tokens += n(&t["output"]) + n(&t["reasoning"]);
                self.cost += part["cost"].as_f64().unwrap_or(0.0);
                self.usage.cost_usd = Some(self.cost).filter(|c| *c > 0.0);
                out.push(Event::Usage(self.usage));
            }
            Some("error") => {
                self.saw_error = true;
                let e = &v["error"];
                match e["data"]["ref"].as_str() {
                    Some(r) if self.pending.is_none() => {
                        self.pending = Some((r.to_string(), error_message(e)));
                    }
                    _ => out.push(Event::Error {
                        message: error_message(e),
                    }),
                }
            }
            Some(_) => {}
            None => out.push(Event::Unparsed {
                line: line.to_string(),
            }),
        }
        out
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        if let Some((r, message)) = self.pending.take() {
            let message = logged_error(stderr_tail, &r).unwrap_or(message);
            return vec![Event::Error { message }];
        }
        // "Error: Session not found" (exit 1) and the like: coloured, on stderr only, among
        // the log lines (`timestamp=… level=ERROR …`, e.g. models.dev out of reach offline).
        let plain: Vec<String> = strip_ansi(stderr_tail)
            .lines()
            .filter(|l| !l.starts_with("timestamp="))
            .map(str::to_string)
            .collect();
        let plain = plain.join("\n");
        exit_error("opencode", self.saw_error, exit_code, &plain)
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
        let mut i = inv("opencode", "-hi there");
        let spec = Opencode.build(&i, &cfg).unwrap();
        assert_eq!(
            spec.args,
            [
                "run",
                "--format",
                "json",
                "--print-logs",
                "--log-level",
                "ERROR",
                "--title="
            ]
        );
        assert_eq!(
            spec.stdin.as_deref(),
            Some("-hi there"),
            "the prompt on stdin"
        );
        assert!(spec.env.is_empty());
        i.model = Some("anthropic/claude-sonnet-4-5".into());
        i.resume = Some("ses_1".into());
        i.sandbox_mode = SandboxMode::ReadOnly;
        i.image_files = vec!["/tmp/i/image-1.png".into()];
        i.extra = vec!["--variant".into(), "high".into()];
        let spec = Opencode.build(&i, &cfg).unwrap();
        assert_eq!(
            spec.args[7..],
            [
                "-m",
                "anthropic/claude-sonnet-4-5",
                "--agent",
                "plan",
                "-s",
                "ses_1",
                "--file=/tmp/i/image-1.png",
                "--variant",
                "high"
            ]
        );
        assert_eq!(
            spec.env,
            [(
                "OPENCODE_PERMISSION".to_string(),
                r#"{"edit":"deny","bash":"deny"}"#.to_string()
            )]
        );
        // A bare model is one of opencode's own.
        i.model = Some("big-pickle".into());
        i.sandbox_mode = SandboxMode::Default;
        i.approval_mode = ApprovalMode::Always;
        let spec = Opencode.build(&i, &cfg).unwrap();
        assert_eq!(spec.args[8], "opencode/big-pickle");
        assert_eq!(spec.env[0].1, r#"{"*":"ask"}"#);
        i.sandbox_mode = SandboxMode::Workspace;
        assert!(matches!(
            Opencode.build(&i, &cfg),
            Err(ArgvError::Invalid(m)) if m.contains("no sandbox")
        ));
        i.sandbox_mode = SandboxMode::Default;
        i.extra = vec!["--auto".into()];
        assert!(
            Opencode.build(&i, &cfg).is_err(),
            "--auto grants permissions"
        );
    }

    #[test]
    fn live_command() {
        let cfg = BackendSettings::default();
        let mut i = inv("opencode", "hi");
        i.model = Some("anthropic/claude-haiku-4-5".into());
        i.sandbox_mode = SandboxMode::ReadOnly;
        i.approval_mode = ApprovalMode::None;
        let live = Opencode.live(&i, &cfg).unwrap();
        assert_eq!(live.command.args, ["acp"]);
        assert!(live.command.env.contains(&(
            "OPENCODE_CONFIG_CONTENT".into(),
            r#"{"default_agent":"plan","model":"anthropic/claude-haiku-4-5"}"#.into()
        )));
        assert!(live.command.env.contains(&(
            "OPENCODE_PERMISSION".into(),
            r#"{"*":"allow","edit":"deny","bash":"deny"}"#.into()
        )));
        assert!(live.driver.accepts(&i));
        // A flag only `run` knows: that turn goes one-shot (`opencode acp` refuses it).
        i.extra = vec!["--thinking".into()];
        let live = Opencode.live(&i, &cfg).unwrap();
        assert_eq!(live.command.args, ["acp"]);
        assert!(!live.driver.accepts(&i));
        i.extra = vec!["--pure".into()];
        assert_eq!(
            Opencode.live(&i, &cfg).unwrap().command.args,
            ["acp", "--pure"]
        );
    }

    #[test]
    fn ok_and_resume() {
        let (o, e, x) = fixture!("opencode-1.18.33-", "ok");
        let (events, out) = replay(&mut *Opencode.parser(), o, e, x);
        assert!(out.session_id.as_deref().unwrap().starts_with("ses_"));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::SessionStarted { .. }))
                .count(),
            1
        );
        assert_eq!(
            out.output(),
            "fake-reply turns=1 last=Say hello in a few words"
        );
        assert!(out.usage.output_tokens > 0 && out.usage.input_tokens > 0);
        assert!(out.error.is_none() && out.unparsed == 0);
        let (o, e, x) = fixture!("opencode-1.18.33-", "resume");
        let (_, out) = replay(&mut *Opencode.parser(), o, e, x);
        assert!(out.output().contains("turns=2"), "{}", out.output());
    }

    #[test]
    fn errors() {
        let (o, e, x) = fixture!("opencode-1.18.33-", "error");
        let (_, out) = replay(&mut *Opencode.parser(), o, e, x);
        let err = out.error.as_deref().unwrap();
        assert_eq!(err, "fakemodel: injected error [[error]]");
        let (o, e, x) = fixture!("opencode-1.18.33-", "badresume");
        let (_, out) = replay(&mut *Opencode.parser(), o, e, x);
        assert_eq!(out.error.as_deref(), Some("Error: Session not found"));
        let (o, e, x) = fixture!("opencode-1.18.33-", "badmodel");
        let (_, out) = replay(&mut *Opencode.parser(), o, e, x);
        let err = out.error.as_deref().unwrap();
        assert!(err.contains("Model not found"), "{err}");
    }

    #[test]
    fn tool_calls_and_stderr_logs() {
        let mut p = Parser::default();
        let ev = p.parse_line(r#"{"type":"tool_use","sessionID":"ses_1","part":{"type":"tool","tool":"bash","callID":"toolu_1","state":{"status":"error","input":{"command":"touch y"},"error":"The user rejected permission to use this specific tool call."}}}"#);
        assert!(
            matches!(&ev[0], Event::SessionStarted { session_id, .. } if session_id == "ses_1")
        );
        assert!(matches!(&ev[1], Event::ToolUse { name, .. } if name == "bash"));
        assert!(
            matches!(&ev[2], Event::ToolResult { is_error: true, output, .. } if output.contains("rejected"))
        );
        assert_eq!(
            logged_error(
                r#"timestamp=x level=ERROR run=1 message=failed ref=err_1 error="A: \"q\" b" cause="x""#,
                "err_1"
            )
            .as_deref(),
            Some(r#"A: "q" b"#)
        );
        assert_eq!(
            strip_ansi("\u{1b}[91m\u{1b}[1mError: \u{1b}[0mx"),
            "Error: x"
        );
    }
}
