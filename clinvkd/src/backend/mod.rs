//! The backend adapters: for each AI coding CLI (`claude`, `codex`, `gemini`) the one place
//! that builds its argv from an [`Invocation`], and a [`LineParser`] that turns its streaming
//! stdout into the unified [`Event`] stream. Nothing here spawns a process: the supervisor runs
//! the [`CommandSpec`] and feeds stdout lines (lossy UTF-8, no trailing newline) to the parser.
//!
//! Flags, output shapes and failure signals follow what the pinned CLI versions actually do
//! (`docs/real-clis.md`, recorded outputs in `clinvkd/tests/fixtures/`).

mod claude;
mod codex;
mod common;
mod gemini;
#[cfg(test)]
mod live_tests;
mod outcome;

use std::path::PathBuf;
use std::str::FromStr;

use clinvk_shared::config::BackendSettings;
use clinvk_shared::types::TokenUsage;
use serde::{Deserialize, Serialize};

pub use claude::Claude;
pub use codex::Codex;
pub use gemini::Gemini;
pub use outcome::Outcome;

/// When the agent asks before acting (`approval_mode` of the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    /// The CLI's own default (or the backend's configured mode).
    #[default]
    Default,
    /// Approve routine actions (edits) automatically.
    Auto,
    /// Never ask.
    None,
    /// Ask for everything (headless: whatever would need approval is refused).
    Always,
}

impl ApprovalMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Auto => "auto",
            Self::None => "none",
            Self::Always => "always",
        }
    }
}

impl FromStr for ApprovalMode {
    type Err = ArgvError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "default" => Ok(Self::Default),
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            "always" => Ok(Self::Always),
            other => Err(ArgvError::Invalid(format!(
                "approval_mode {other:?} is not one of default, auto, none, always"
            ))),
        }
    }
}

/// What the agent's commands may touch (`sandbox_mode` of the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    #[default]
    Default,
    #[serde(alias = "read_only")]
    ReadOnly,
    Workspace,
    Full,
}

impl SandboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::ReadOnly => "read-only",
            Self::Workspace => "workspace",
            Self::Full => "full",
        }
    }
}

impl FromStr for SandboxMode {
    type Err = ArgvError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "default" => Ok(Self::Default),
            "read-only" | "read_only" | "readonly" => Ok(Self::ReadOnly),
            "workspace" => Ok(Self::Workspace),
            "full" => Ok(Self::Full),
            other => Err(ArgvError::Invalid(format!(
                "sandbox_mode {other:?} is not one of default, read-only, workspace, full"
            ))),
        }
    }
}

/// One run of a backend CLI, as the engine asks for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Invocation {
    pub backend: String,
    pub prompt: String,
    /// None = the backend's configured model, else the CLI's default. The backend's bare name
    /// (e.g. `claude`) also means the default.
    pub model: Option<String>,
    /// Already validated and absolute; the supervisor sets it as the process cwd.
    pub workdir: Option<PathBuf>,
    /// The backend's own session id to continue.
    pub resume: Option<String>,
    /// A UUID for a new session, where the CLI lets the caller choose it (claude, gemini).
    pub new_session_id: Option<String>,
    /// None = the backend's configured system prompt.
    pub system_prompt: Option<String>,
    /// claude only.
    pub max_turns: Option<u32>,
    /// `Default` = the backend's configured mode.
    pub approval_mode: ApprovalMode,
    /// `Default` = the backend's configured mode.
    pub sandbox_mode: SandboxMode,
    /// The request's extra CLI flags, checked against the allowlists.
    pub extra: Vec<String>,
    /// No persisted session where the CLI supports it (claude, codex).
    pub ephemeral: bool,
}

/// What to spawn. `env` is added to the daemon's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Run with stdin on /dev/null: all three CLIs read a piped stdin and wait for its end.
    pub stdin_null: bool,
}

impl CommandSpec {
    /// `program` followed by the arguments, as `dry_run` shows it.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }
}

/// The unified event stream of a run, whatever the CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    SessionStarted {
        session_id: String,
        model: Option<String>,
    },
    /// A piece of assistant text as the CLI streams it (claude, gemini).
    TextDelta {
        text: String,
    },
    /// A complete assistant message (codex `agent_message`, claude `assistant` text). When a
    /// CLI streams deltas too, this repeats their text: renderers that showed the deltas skip it.
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
    /// The CLI's final result line, if it prints one.
    Result {
        text: Option<String>,
        is_error: bool,
    },
    /// A failure the CLI reported (or a failed exit).
    Error {
        message: String,
    },
    /// Output that is not the expected JSON: kept, never dropped.
    Unparsed {
        line: String,
    },
}

/// Turns one CLI's stdout into events. One parser per run.
pub trait LineParser: Send {
    /// One stdout line without its newline. Never panics, whatever the input.
    fn parse_line(&mut self, line: &str) -> Vec<Event>;
    /// Called once when the process has exited (`None`: killed by a signal), with the end of
    /// its stderr. A failed exit that produced no `Error` yet yields one here.
    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event>;
}

/// One backend CLI.
pub trait Adapter: Send + Sync {
    fn name(&self) -> &'static str;
    /// The program looked up in PATH when `backends.<name>.command` is not set.
    fn default_command(&self) -> &'static str;
    fn install_hint(&self) -> &'static str;
    /// The one place this CLI's argv is built.
    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError>;
    fn parser(&self) -> Box<dyn LineParser>;
    /// Flags a request's `extra` may use (besides `backends.<name>.allowed_extra_flags`).
    fn builtin_extra_allowlist(&self) -> &'static [&'static str];
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    #[error("flag not allowed in extra: {0}")]
    DisallowedFlag(String),
    #[error("{0}")]
    Invalid(String),
}

static CLAUDE: Claude = Claude;
static CODEX: Codex = Codex;
static GEMINI: Gemini = Gemini;

/// The adapter of a backend by name (`claude`, `codex`, `gemini`).
pub fn adapter(name: &str) -> Option<&'static dyn Adapter> {
    all().into_iter().find(|a| a.name() == name)
}

/// Every adapter, in a fixed order.
pub fn all() -> [&'static dyn Adapter; 3] {
    [&CLAUDE, &CODEX, &GEMINI]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn registry() {
        assert_eq!(
            all().map(|a| a.name()),
            ["claude", "codex", "gemini"],
            "fixed order"
        );
        for a in all() {
            assert_eq!(adapter(a.name()).map(|b| b.name()), Some(a.name()));
            assert_eq!(a.default_command(), a.name());
            assert!(a.install_hint().starts_with("npm install -g @"));
        }
        assert!(adapter("nope").is_none());
        assert!(adapter("Claude").is_none());
    }

    #[test]
    fn modes_from_strings_and_serde() {
        assert_eq!("none".parse::<ApprovalMode>(), Ok(ApprovalMode::None));
        assert_eq!("Always".parse::<ApprovalMode>(), Ok(ApprovalMode::Always));
        assert!("sometimes".parse::<ApprovalMode>().is_err());
        assert_eq!(
            "read-only".parse::<SandboxMode>(),
            Ok(SandboxMode::ReadOnly)
        );
        assert_eq!("full".parse::<SandboxMode>(), Ok(SandboxMode::Full));
        assert!("partial".parse::<SandboxMode>().is_err());
        let m: SandboxMode = serde_json::from_str("\"read-only\"").unwrap();
        assert_eq!(m, SandboxMode::ReadOnly);
        let m: SandboxMode = serde_json::from_str("\"read_only\"").unwrap();
        assert_eq!(m, SandboxMode::ReadOnly);
        let a: ApprovalMode = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(a, ApprovalMode::Auto);
        assert_eq!(
            serde_json::to_string(&SandboxMode::ReadOnly).unwrap(),
            "\"read-only\""
        );
        for m in [
            ApprovalMode::Default,
            ApprovalMode::Auto,
            ApprovalMode::None,
            ApprovalMode::Always,
        ] {
            assert_eq!(m.as_str().parse::<ApprovalMode>(), Ok(m));
        }
        for m in [
            SandboxMode::Default,
            SandboxMode::ReadOnly,
            SandboxMode::Workspace,
            SandboxMode::Full,
        ] {
            assert_eq!(m.as_str().parse::<SandboxMode>(), Ok(m));
        }
    }

    #[test]
    fn events_serialize_tagged() {
        let v = serde_json::to_value(Event::TextDelta { text: "hi".into() }).unwrap();
        assert_eq!(v, serde_json::json!({"type": "text_delta", "text": "hi"}));
        let v = serde_json::to_value(Event::Usage(TokenUsage {
            input_tokens: 3,
            output_tokens: 4,
        }))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "usage", "input_tokens": 3, "output_tokens": 4})
        );
    }
}
