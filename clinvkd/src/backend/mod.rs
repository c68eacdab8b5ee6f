//! The backend adapters: one per CLI, each the single place that builds that CLI's argv and
//! parses its streaming output into the unified event stream.

mod acp;
mod claude;
mod codex;
mod codex_app;
mod codex_limits;
mod copilot;
mod flags;
mod gemini;
mod jsonrpc;
mod opencode;

use clinvk_shared::api::Backend;
use clinvk_shared::config::BackendSettings;
use clinvk_shared::types::TokenUsage;
use serde::Serialize;
use std::path::PathBuf;

pub(crate) use clinvk_shared::api::{ApprovalMode, ReasoningEffort, SandboxMode};
pub(crate) use flags::{check_extra, extra_folders};

/// One run of a backend CLI, as every API describes it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Invocation {
    pub(crate) backend: Backend,
    pub(crate) prompt: String,
    /// None: the backend's configured model, else the CLI's default.
    pub(crate) model: Option<String>,
    /// Already validated and absolute; the process runs there.
    pub(crate) workdir: Option<PathBuf>,
    /// The backend's own session id to resume.
    pub(crate) resume: Option<String>,
    pub(crate) system_prompt: Option<String>,
    pub(crate) max_turns: Option<u32>,
    pub(crate) approval_mode: ApprovalMode,
    pub(crate) sandbox_mode: SandboxMode,
    /// Extra CLI flags from the request, checked against the allowlist.
    pub(crate) extra: Vec<String>,
    /// Environment variables from the request (names allowed by the operator).
    pub(crate) env: Vec<(String, String)>,
    /// No persisted session where the CLI supports it.
    pub(crate) ephemeral: bool,
    /// Structured output: the JSON Schema the answer must match (checked by `engine`).
    pub(crate) output_schema: Option<serde_json::Value>,
    /// The schema written to a file, for a CLI that takes a path (codex); set by `engine`.
    pub(crate) output_schema_file: Option<PathBuf>,
    /// Images with the prompt, checked and decoded once (`ops::prompt::decode_image`).
    pub(crate) images: Vec<Image>,
    /// The images written as files (codex `-i`, gemini `@path`), in a private folder of the run;
    /// set by `engine`.
    pub(crate) image_files: Vec<PathBuf>,
    /// The client's functions, offered to the model through the daemon's MCP endpoint.
    pub(crate) client_tools: Option<crate::tools::ClientTools>,
    /// How hard the model thinks (only for a CLI whose `effort_args` takes it).
    pub(crate) reasoning_effort: Option<ReasoningEffort>,
    /// The account it runs under (None: the user's own login).
    pub(crate) account: Option<crate::accounts::AccountDef>,
}

/// An image of a prompt: checked (type, size, the bytes match the type) and decoded once; the
/// base64 text is kept for the CLIs that take it inline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Image {
    pub(crate) media_type: String,
    pub(crate) base64: String,
    pub(crate) bytes: std::sync::Arc<Vec<u8>>,
}

/// For a CLI without a structured-output option: the instruction after the prompt.
pub(crate) fn schema_instruction(schema: &serde_json::Value) -> String {
    format!(
        "\n\nAnswer with only a JSON value that matches this JSON Schema (no prose, no code fence):\n{schema}"
    )
}

/// What to start.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CommandSpec {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<PathBuf>,
    /// Written to the child's stdin, then closed (long prompts); None: stdin is /dev/null.
    pub(crate) stdin: Option<String>,
}

impl CommandSpec {
    /// The spec of one run: `cfg.command` (or the CLI's own name), the args, the request's workdir.
    pub(crate) fn for_run(
        default_program: &str,
        cfg: &BackendSettings,
        inv: &Invocation,
        args: Vec<String>,
        stdin: Option<String>,
    ) -> Self {
        CommandSpec {
            program: cfg
                .command
                .clone()
                .unwrap_or_else(|| default_program.to_string()),
            args,
            env: vec![],
            cwd: inv.workdir.clone(),
            stdin,
        }
    }
}

/// Prompts longer than this go through stdin: Linux refuses one argv element of 128 KiB or more.
pub(crate) const STDIN_THRESHOLD: usize = 96 * 1024;

/// The unified event stream of every CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event {
    SessionStarted {
        session_id: String,
        model: Option<String>,
    },
    /// Token-level text, where the CLI offers it.
    TextDelta {
        text: String,
    },
    /// A complete assistant message.
    Message {
        text: String,
    },
    ToolUse {
        id: Option<String>,
        name: String,
        input: serde_json::Value,
    },
    ToolResult {
        id: Option<String>,
        output: String,
        is_error: bool,
    },
    Thinking {
        text: String,
    },
    Usage(TokenUsage),
    /// The CLI's final result, if it prints one.
    Result {
        text: Option<String>,
        is_error: bool,
    },
    /// A failure the CLI reported.
    Error {
        message: String,
    },
    /// What the CLI reported of its account's quota windows (a spent one: `status: rejected`).
    Limits(clinvk_shared::quota::AccountLimits),
    /// Output that is not the expected JSON: kept, never dropped.
    Unparsed {
        line: String,
    },
}

/// Parses one run's stdout, line by line (stateful).
pub(crate) trait LineParser: Send {
    fn parse_line(&mut self, line: &str) -> Vec<Event>;
    /// At exit: failures only visible in the exit code or on stderr.
    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event>;
}

/// How a CLI is given the images of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageDelivery {
    /// In its own input (claude: stream-json image blocks): nothing to write.
    Inline,
    /// As files the engine writes into a private folder of the run (`Invocation::image_files`).
    Files,
}

/// How a CLI is given a structured-output schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchemaDelivery {
    /// On its command line (claude `--json-schema`).
    Argument,
    /// As a file the engine writes (`Invocation::output_schema_file`; codex `--output-schema`).
    File,
    /// An instruction after the prompt (`schema_instruction`); the engine checks the answer.
    Instruction,
}

/// Where a CLI can be given the client's tools (through the daemon's MCP endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolSupport {
    /// One-shot and warm.
    Always,
    /// Only in its live mode (one-shot gemini takes MCP servers from settings files only).
    WarmOnly,
}

/// What a CLI can take, declared once in its module; the engine and the front ends ask this
/// (and build their clear 400s from it) instead of naming backends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Capabilities {
    pub(crate) images: ImageDelivery,
    pub(crate) output_schema: SchemaDelivery,
    pub(crate) client_tools: ToolSupport,
}

/// One backend CLI: everything the daemon knows about it (what the clients also need — names,
/// npm package, tested version, login check — is its row in `clinvk_shared::cli`).
pub(crate) trait Adapter: Send + Sync {
    /// Its row in the shared table of CLIs.
    fn backend(&self) -> Backend;
    /// What it can take.
    fn capabilities(&self) -> Capabilities;
    /// Whether a model name (lower case) belongs to this CLI's model family (`claude-…` →
    /// claude), so the compatible APIs can route names that do not name a backend.
    fn claims_model(&self, lower: &str) -> bool;
    /// The family names shown when a model is not found (`claude-…`).
    fn model_families(&self) -> &'static str;
    /// Folders of the home holding this CLI's state and credentials: never a run's workdir.
    fn credential_folders(&self) -> &'static [&'static str];
    /// The one place this CLI's argv is built.
    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError>;
    fn parser(&self) -> Box<dyn LineParser>;
    /// The live mode of this CLI (a warm worker): the command that starts it for `inv`'s session
    /// (resuming `inv.resume` when set) and the driver that speaks its protocol.
    fn live(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<LiveSpec, ArgvError>;
    /// Flags a request's `extra` may use (plus `backends.<name>.allowed_extra_flags`).
    fn builtin_extra_allowlist(&self) -> &'static [&'static str];
    /// The arguments that set the reasoning effort (one-shot and live alike); None: the CLI
    /// has no such setting (a native request is refused, a compatible one names the field
    /// ignored).
    fn effort_args(&self, _effort: ReasoningEffort) -> Option<Vec<String>> {
        None
    }
    /// A CLI that must start alone on a fresh state folder (see [`StateSetup`]); None: any
    /// number of its processes may start at once.
    fn state_setup(&self) -> Option<StateSetup> {
        None
    }
}

/// The state folder of a CLI whose first processes race when started together on a fresh
/// folder: before a process starts and while `marker` (a file in the state folder) is missing,
/// `args` run alone and create it.
pub(crate) struct StateSetup {
    pub(crate) marker: &'static str,
    pub(crate) args: &'static [&'static str],
}

/// The effort arguments of `inv` for `adapter` (none when not asked for or not supported).
pub(crate) fn effort_args_of(adapter: &dyn Adapter, inv: &Invocation) -> Vec<String> {
    inv.reasoning_effort
        .and_then(|e| adapter.effort_args(e))
        .unwrap_or_default()
}

/// How to start a warm worker.
pub(crate) struct LiveSpec {
    pub(crate) command: CommandSpec,
    pub(crate) driver: Box<dyn Driver>,
}

/// What a worker's output line means.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Step {
    pub(crate) events: Vec<Event>,
    /// Lines to write to the worker's stdin (protocol answers, a turn held until the session
    /// was open).
    pub(crate) write: Vec<String>,
    /// The turn is over (its last events are in `events`).
    pub(crate) end: bool,
}

/// The protocol of a CLI's live mode, as a state machine fed with its output lines.
pub(crate) trait Driver: Send {
    /// Lines written as soon as the process is started (the handshake, opening the session).
    fn open(&mut self) -> Vec<String>;
    /// Starts a turn of `inv` (its prompt, images, output schema): the lines to write now (none
    /// while the session is still opening: they come out of a later `on_line`).
    fn turn(&mut self, inv: &Invocation) -> Vec<String>;
    /// One output line.
    fn on_line(&mut self, line: &str) -> Step;
    /// The session settings besides the argv (working folder, model, modes), so that a worker
    /// is only reused for a turn that would have started it the same way.
    fn key(&self) -> String;
    /// Whether this live mode can take `inv`'s turn (otherwise it runs one-shot).
    fn accepts(&self, inv: &Invocation) -> bool;
    /// False once the session could not be opened: the worker is retired after its turn.
    fn healthy(&self) -> bool {
        true
    }
    /// The lines that interrupt the running turn while keeping the session (its end then comes
    /// as usual); None: the CLI cannot be interrupted now, the worker is stopped instead.
    fn interrupt(&mut self) -> Option<Vec<String>>;
    /// Whether a new worker can resume an existing session (otherwise a session whose worker is
    /// gone continues one-shot, with the CLI's own `--resume`).
    fn resumes(&self) -> bool {
        true
    }
    /// Whether an interrupted turn leaves nothing of its answer in the session (copilot: the
    /// next prompt is then merged with the interrupted one): a turn ended early at a stop
    /// sequence is then run to its end unseen instead, so the history stays whole.
    fn interrupt_forgets_turn(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum ArgvError {
    #[error("flag {0:?} is not allowed in `extra` (allowed: {1})")]
    DisallowedFlag(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// The registry: every CLI's adapter, one line each (a new CLI adds its line here and its row
/// in `clinvk_shared::cli`).
static ADAPTERS: [&dyn Adapter; 5] = [
    &claude::Claude,
    &codex::Codex,
    &gemini::Gemini,
    &copilot::Copilot,
    &opencode::Opencode,
];

/// The real adapter of a backend. The daemon asks its context (`Ctx::adapter`), which holds
/// these unless a test put fakes there.
pub(crate) fn adapter(backend: Backend) -> &'static dyn Adapter {
    ADAPTERS
        .iter()
        .copied()
        .find(|a| a.backend() == backend)
        .expect("every backend has an adapter (checked by a test)")
}

/// Every adapter, in the order of `Backend::ALL`.
pub(crate) fn adapters() -> impl Iterator<Item = &'static dyn Adapter> {
    Backend::ALL.into_iter().map(adapter)
}

/// The backend whose model family a name belongs to (`claude-sonnet-4-5` → claude).
pub(crate) fn claimed_by(model: &str) -> Option<Backend> {
    let lower = model.to_ascii_lowercase();
    adapters()
        .find(|a| a.claims_model(&lower))
        .map(|a| a.backend())
}

/// The adapter behind each backend (in `Ctx`): the real ones, or a test's fakes.
#[derive(Clone, Copy)]
pub(crate) struct Adapters([&'static dyn Adapter; Backend::ALL.len()]);

impl Default for Adapters {
    /// The real adapters.
    fn default() -> Self {
        Adapters(Backend::ALL.map(adapter))
    }
}

impl Adapters {
    pub(crate) fn get(&self, backend: Backend) -> &'static dyn Adapter {
        self.0[backend as usize]
    }

    /// Puts `adapter` behind `backend` (tests: a fake CLI).
    #[cfg(test)]
    pub(crate) fn set(&mut self, backend: Backend, adapter: &'static dyn Adapter) {
        self.0[backend as usize] = adapter;
    }
}

/// The model to pass: the request's, else the config's; a bare backend name means the default.
pub(crate) fn model_for(inv: &Invocation, cfg: &BackendSettings) -> Option<String> {
    inv.model
        .clone()
        .or_else(|| cfg.model.clone())
        .filter(|m| !m.is_empty() && m != inv.backend.as_str() && m != "default")
}

/// The system prompt folded into the prompt, for CLIs without a system-prompt flag.
pub(crate) fn with_system_prompt(inv: &Invocation, sp: Option<&str>) -> String {
    match sp.filter(|s| !s.trim().is_empty()) {
        Some(sp) if inv.resume.is_none() => format!("<system>\n{sp}\n</system>\n\n{}", inv.prompt),
        _ => inv.prompt.clone(),
    }
}

/// Ends the options with `--` and adds the prompt; a long prompt goes through stdin instead
/// (one argv element may not exceed 128 KiB): then `stdin_marker` (if any) stands in its place.
pub(crate) fn push_prompt(
    args: &mut Vec<String>,
    prompt: &str,
    stdin_marker: Option<&str>,
) -> Option<String> {
    if prompt.len() > STDIN_THRESHOLD {
        if let Some(m) = stdin_marker {
            args.extend(["--".to_string(), m.to_string()]);
        }
        return Some(prompt.to_string());
    }
    args.extend(["--".to_string(), prompt.to_string()]);
    None
}

/// One stdout line as JSON; `Err` holds the events for a line that is not (blank: none).
pub(crate) fn json_line(line: &str) -> Result<serde_json::Value, Vec<Event>> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Err(vec![]);
    }
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(vec![Event::Unparsed {
            line: line.to_string(),
        }]),
    }
}

/// The error of a run that exited non-zero without reporting why on stdout.
pub(crate) fn exit_error(
    cli: &str,
    saw_error: bool,
    exit_code: Option<i32>,
    stderr_tail: &str,
) -> Vec<Event> {
    if saw_error || exit_code == Some(0) {
        return vec![];
    }
    let detail = stderr_summary(stderr_tail);
    let message = if !detail.is_empty() {
        detail
    } else {
        match exit_code {
            Some(c) => format!("{cli} exited with code {c}"),
            None => format!("{cli} was killed by a signal"),
        }
    };
    vec![Event::Error { message }]
}

/// A useful line of stderr for an error message: the last non-empty line that is not a trace.
pub(crate) fn stderr_summary(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("at ")
                && !l
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() && l.contains(": <"))
        })
        .collect();
    // Prefer an explicit error line.
    if let Some(l) = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("Error") || l.contains("error:") || l.starts_with("ERROR"))
    {
        return l.to_string();
    }
    lines.last().map(|l| l.to_string()).unwrap_or_default()
}

/// Accumulates a run's events into its final outcome.
#[derive(Debug, Default, Clone)]
pub(crate) struct Outcome {
    pub(crate) session_id: Option<String>,
    pub(crate) usage: TokenUsage,
    pub(crate) error: Option<String>,
    pub(crate) is_error: bool,
    pub(crate) unparsed: usize,
    /// The CLI's report of a spent quota window (the run was refused for it).
    pub(crate) refused: Option<clinvk_shared::quota::AccountLimits>,
    deltas: String,
    messages: Vec<String>,
    result: Option<String>,
}

impl Outcome {
    pub(crate) fn apply(&mut self, ev: &Event) {
        match ev {
            Event::SessionStarted { session_id, .. } => self.session_id = Some(session_id.clone()),
            Event::TextDelta { text } => self.deltas.push_str(text),
            Event::Message { text } => self.messages.push(text.clone()),
            Event::Usage(u) => self.usage = *u,
            Event::Result { text, is_error } => {
                self.result = text.clone();
                self.is_error |= is_error;
            }
            Event::Error { message } => {
                self.is_error = true;
                if self.error.is_none() {
                    self.error = Some(message.clone());
                }
            }
            Event::Unparsed { .. } => self.unparsed += 1,
            Event::Limits(l) if crate::quota::refusal(l) => self.refused = Some(l.clone()),
            _ => {}
        }
    }

    /// The final text: the CLI's result if it printed one, else its whole messages, else the
    /// deltas. (Computed once at the end: copying the growing text on every delta would make a
    /// long answer quadratic.)
    pub(crate) fn output(&self) -> String {
        match (&self.result, self.messages.is_empty()) {
            (Some(r), _) if !self.is_error => r.clone(),
            (_, false) => self.messages.join("\n\n"),
            _ => self.deltas.clone(),
        }
    }
}

/// The recorded fixture `(stdout, stderr, exit)` of `clinvkd/tests/fixtures/<prefix><name>.*`.
#[cfg(test)]
macro_rules! fixture {
    ($prefix:literal, $name:literal) => {
        (
            include_str!(concat!("../../tests/fixtures/", $prefix, $name, ".stdout")),
            include_str!(concat!("../../tests/fixtures/", $prefix, $name, ".stderr")),
            include_str!(concat!("../../tests/fixtures/", $prefix, $name, ".exit")),
        )
    };
}
#[cfg(test)]
pub(crate) use fixture;

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// Runs a parser over a recorded fixture (stdout, stderr, exit code).
    pub(crate) fn replay(
        parser: &mut dyn LineParser,
        stdout: &str,
        stderr: &str,
        exit: &str,
    ) -> (Vec<Event>, Outcome) {
        let mut events = Vec::new();
        for line in stdout.lines() {
            events.extend(parser.parse_line(line));
        }
        events.extend(parser.finish(exit.trim().parse().ok(), stderr));
        let mut o = Outcome::default();
        for e in &events {
            o.apply(e);
        }
        (events, o)
    }

    pub(crate) fn inv(backend: &str, prompt: &str) -> Invocation {
        Invocation {
            backend: Backend::from_name(backend).expect("a known backend"),
            prompt: prompt.into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_allowlist() {
        let cfg = BackendSettings::default();
        let ok = check_extra(
            &["--add-dir".into(), "/x".into(), "--max-turns=3".into()],
            &["--add-dir", "--max-turns"],
            &cfg,
        );
        assert!(ok.is_ok());
        let bad = check_extra(
            &["--dangerously-skip-permissions".into()],
            &["--add-dir"],
            &cfg,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("--dangerously-skip-permissions"));
        assert!(check_extra(&["stray".into()], &["--add-dir"], &cfg).is_err());
        let cfg = BackendSettings {
            allowed_extra_flags: vec!["--verbose".into()],
            ..Default::default()
        };
        assert!(check_extra(&["--verbose".into()], &[], &cfg).is_ok());
        // A switch cannot carry a smuggled positional argument; a value never starts with `-`.
        assert!(check_extra(&["--verbose".into(), "rm -rf".into()], &[], &cfg).is_err());
        assert!(check_extra(
            &["--add-dir".into(), "--dangerously-skip-permissions".into()],
            &["--add-dir"],
            &cfg
        )
        .is_err());
        assert!(check_extra(&["--add-dir".into()], &["--add-dir"], &cfg).is_err());
        assert!(check_extra(&["--verbose=1".into()], &[], &cfg).is_err());
        // An operator entry with a placeholder takes a value.
        let cfg = BackendSettings {
            allowed_extra_flags: vec!["--tag <name>".into()],
            ..Default::default()
        };
        assert!(check_extra(&["--tag".into(), "x".into()], &[], &cfg).is_ok());
        assert_eq!(
            extra_folders(&[
                "--add-dir".into(),
                "/a".into(),
                "--include-directories=/b".into()
            ]),
            vec!["/a", "/b"]
        );
    }

    #[test]
    fn an_effort_reaches_every_cli_that_has_a_setting_one_shot_and_warm() {
        let cfg = BackendSettings::default();
        for a in adapters() {
            let mut inv = testutil::inv(a.backend().as_str(), "hi");
            inv.reasoning_effort = Some(ReasoningEffort::High);
            let Some(want) = a.effort_args(ReasoningEffort::High) else {
                continue;
            };
            let has = |args: &[String]| args.windows(want.len()).any(|w| w == want.as_slice());
            assert!(has(&a.build(&inv, &cfg).unwrap().args), "{}", a.backend());
            assert!(
                has(&a.live(&inv, &cfg).unwrap().command.args),
                "{}",
                a.backend()
            );
            inv.reasoning_effort = None;
            assert!(!has(&a.build(&inv, &cfg).unwrap().args), "{}", a.backend());
        }
        let levels = |b: Backend| {
            [ReasoningEffort::Minimal, ReasoningEffort::Max].map(|e| adapter(b).effort_args(e))
        };
        assert_eq!(
            levels(Backend::Claude),
            [
                Some(vec!["--effort".into(), "low".into()]),
                Some(vec!["--effort".into(), "max".into()])
            ]
        );
        assert_eq!(
            levels(Backend::Codex)[1],
            Some(vec!["-c".into(), "model_reasoning_effort=\"xhigh\"".into()])
        );
        assert_eq!(
            adapter(Backend::Gemini).effort_args(ReasoningEffort::High),
            None
        );
    }

    #[test]
    fn registry_is_complete() {
        for b in Backend::ALL {
            assert_eq!(adapter(b).backend(), b);
        }
        assert_eq!(ADAPTERS.len(), Backend::ALL.len());
        assert_eq!(claimed_by("claude-sonnet-4-5"), Some(Backend::Claude));
        assert_eq!(claimed_by("gpt-5"), Some(Backend::Codex));
        assert_eq!(claimed_by("o3-mini"), Some(Backend::Codex));
        assert_eq!(claimed_by("o3"), Some(Backend::Codex));
        assert_eq!(claimed_by("o30"), None);
        assert_eq!(claimed_by("Gemini-2.5-Pro"), Some(Backend::Gemini));
        assert_eq!(claimed_by("llama3"), None);
    }

    #[test]
    fn builtin_allowlists_grant_nothing() {
        for backend in Backend::ALL {
            let list = adapter(backend).builtin_extra_allowlist();
            for grant in [
                "--permission-mode",
                "--allowedTools",
                "--allowed-tools",
                "--add-dir",
                "--include-directories",
                "--dangerously-skip-permissions",
                "--yolo",
                "-c",
                "--extensions",
                "--allowed-mcp-server-names",
            ] {
                assert!(
                    !list.iter().any(|e| flags::allow_entry(e).0 == grant),
                    "{backend} allows {grant}"
                );
            }
        }
    }

    #[test]
    fn outcome_prefers_result_and_never_duplicates() {
        let mut o = Outcome::default();
        for e in [
            Event::TextDelta { text: "a".into() },
            Event::TextDelta { text: "b".into() },
            Event::Message { text: "ab".into() },
        ] {
            o.apply(&e);
        }
        assert_eq!(o.output(), "ab");
        o.apply(&Event::Result {
            text: Some("ab".into()),
            is_error: false,
        });
        assert_eq!(o.output(), "ab");
        let mut o = Outcome::default();
        o.apply(&Event::TextDelta { text: "x".into() });
        assert_eq!(o.output(), "x");
    }

    #[test]
    fn model_rules() {
        let cfg = BackendSettings::default();
        let mut i = testutil::inv("claude", "p");
        assert_eq!(model_for(&i, &cfg), None);
        i.model = Some("claude".into());
        assert_eq!(
            model_for(&i, &cfg),
            None,
            "a bare backend name is the default model"
        );
        i.model = Some("opus".into());
        assert_eq!(model_for(&i, &cfg).as_deref(), Some("opus"));
    }
}
