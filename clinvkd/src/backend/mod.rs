//! PLACEHOLDER interface, replaced by the real adapters (branch backend-adapters) at merge.

use clinvk_shared::config::BackendSettings;
use clinvk_shared::types::TokenUsage;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    #[default]
    Default,
    Auto,
    None,
    Always,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    #[default]
    Default,
    ReadOnly,
    Workspace,
    Full,
}

#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub backend: String,
    pub prompt: String,
    pub model: Option<String>,
    pub workdir: Option<PathBuf>,
    pub resume: Option<String>,
    pub new_session_id: Option<String>,
    pub system_prompt: Option<String>,
    pub max_turns: Option<u32>,
    pub approval_mode: ApprovalMode,
    pub sandbox_mode: SandboxMode,
    pub extra: Vec<String>,
    pub ephemeral: bool,
}
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stdin_null: bool,
}
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Event {
    SessionStarted {
        session_id: String,
        model: Option<String>,
    },
    TextDelta {
        text: String,
    },
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
    Result {
        text: Option<String>,
        is_error: bool,
    },
    Error {
        message: String,
    },
    Unparsed {
        line: String,
    },
}
pub trait LineParser: Send {
    fn parse_line(&mut self, line: &str) -> Vec<Event>;
    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event>;
}
pub trait Adapter: Send + Sync {
    fn name(&self) -> &'static str;
    fn default_command(&self) -> &'static str;
    fn install_hint(&self) -> &'static str;
    fn build(&self, inv: &Invocation, cfg: &BackendSettings) -> Result<CommandSpec, ArgvError>;
    fn parser(&self) -> Box<dyn LineParser>;
    fn builtin_extra_allowlist(&self) -> &'static [&'static str];
}
pub fn adapter(_name: &str) -> Option<&'static dyn Adapter> {
    None
}
#[derive(Debug, thiserror::Error)]
pub enum ArgvError {
    #[error("{0}")]
    DisallowedFlag(String),
    #[error("{0}")]
    Invalid(String),
}
#[derive(Debug, Default)]
pub struct Outcome {
    pub session_id: Option<String>,
    pub output: String,
    pub usage: TokenUsage,
    pub error: Option<String>,
    pub is_error: bool,
    pub unparsed: usize,
}
impl Outcome {
    pub fn apply(&mut self, _ev: &Event) {}
}
