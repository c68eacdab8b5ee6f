//! The operations' requests, results and events: one set of types for the daemon's native HTTP
//! API, its control socket and both clients, so the compiler finds every place a change touches.
//! Their JSON forms are the native API's (`/api/v1/…`); requests refuse unknown fields.

use crate::types::TokenUsage;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value's name on the wire (`read-only`, `interrupted`, `auto`…), for messages and listings.
pub fn wire_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// A value from its name on the wire (the inverse of `wire_name`).
pub fn from_wire<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// A backend CLI clinvk drives. Requests name it as a string (checked once, with an error that
/// lists the known names); everything after that check holds this type.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Claude Code (`claude`).
    #[default]
    Claude,
    /// OpenAI Codex CLI (`codex`).
    Codex,
    /// Google Gemini CLI (`gemini`).
    Gemini,
    /// GitHub Copilot CLI (`copilot`).
    Copilot,
    /// opencode (`opencode`).
    Opencode,
}

impl Backend {
    pub const ALL: [Backend; 5] = [
        Backend::Claude,
        Backend::Codex,
        Backend::Gemini,
        Backend::Copilot,
        Backend::Opencode,
    ];

    /// Its row in the table of CLIs (`crate::cli::CLIS`, in the order of `ALL`).
    pub fn info(self) -> &'static crate::cli::CliInfo {
        &crate::cli::CLIS[self as usize]
    }

    /// Its name on the wire, in the config and on the command line.
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// The backend of this name, if it is one.
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.as_str() == name)
    }

    /// Its npm package.
    pub fn npm_package(self) -> &'static str {
        self.info().npm_package
    }

    /// How to install it.
    pub fn install_hint(self) -> String {
        self.info().install_hint()
    }

    /// The version of the CLI clinvk is tested against (`tests/cli-versions.env`, compiled in).
    pub fn tested_version(self) -> &'static str {
        self.info().tested_version()
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which front end a run came through: the `clinvk` command (the control socket), the native
/// HTTP API, or a compatible API. Recorded with sessions (`source`) and usage rows
/// (`api_style`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiStyle {
    Cli,
    #[default]
    Native,
    OpenAi,
    Anthropic,
}

impl ApiStyle {
    pub const fn as_str(self) -> &'static str {
        match self {
            ApiStyle::Cli => "cli",
            ApiStyle::Native => "native",
            ApiStyle::OpenAi => "openai",
            ApiStyle::Anthropic => "anthropic",
        }
    }
}

/// `approval_mode`: how much the agent may do without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    /// The CLI's own default.
    #[default]
    Default,
    /// Edits without asking.
    Auto,
    /// Nothing is asked (the loosest).
    None,
    /// Everything is asked (the strictest).
    Always,
}

impl ApprovalMode {
    /// How strict it is (higher: asks more).
    pub fn strictness(self) -> u8 {
        match self {
            ApprovalMode::None => 0,
            ApprovalMode::Auto => 1,
            ApprovalMode::Default => 2,
            ApprovalMode::Always => 3,
        }
    }
}

/// `reasoning_effort`: how hard the model thinks, where the CLI has a setting for it (OpenAI's
/// levels, plus `max`). Each CLI takes its nearest level (see docs/compat.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    None,
    Minimal,
    Low,
    Medium,
    High,
    Xhigh,
    Max,
}

impl ReasoningEffort {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::None => "none",
            ReasoningEffort::Minimal => "minimal",
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
            ReasoningEffort::Xhigh => "xhigh",
            ReasoningEffort::Max => "max",
        }
    }
}

/// `sandbox_mode`: what the agent's commands may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    /// The CLI's own default.
    #[default]
    Default,
    ReadOnly,
    Workspace,
    /// No sandbox (the loosest).
    Full,
}

impl SandboxMode {
    /// How strict it is (higher: allows less).
    pub fn strictness(self) -> u8 {
        match self {
            SandboxMode::Full => 0,
            SandboxMode::Workspace => 1,
            SandboxMode::Default => 2,
            SandboxMode::ReadOnly => 3,
        }
    }
}

/// `output_format` of a prompt: a JSON answer at the end, or NDJSON events as they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    #[default]
    Default,
    Text,
    Json,
    StreamJson,
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// A turn is running.
    #[default]
    Active,
    Completed,
    Error,
    /// A run was cut short (the client left, the daemon stopped or crashed).
    Interrupted,
}

/// `POST /api/v1/prompt` (also a task of `parallel`, a step of `chain`, and `clinvk "…"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PromptRequest {
    pub backend: Option<String>,
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub workdir: Option<String>,
    pub approval_mode: Option<ApprovalMode>,
    pub sandbox_mode: Option<SandboxMode>,
    pub output_format: Option<OutputFormat>,
    /// Refused when set: none of the CLIs can cap the tokens of an answer.
    pub max_tokens: Option<u32>,
    pub max_turns: Option<u32>,
    pub system_prompt: Option<String>,
    /// Refused when true: the CLIs always run with their verbose event stream, and the events
    /// the stream shows do not change.
    pub verbose: Option<bool>,
    pub dry_run: bool,
    pub ephemeral: bool,
    pub extra: Vec<String>,
    /// Environment variables for the CLI: only names in `backends.<b>.allowed_request_env`.
    pub env: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub tags: Vec<String>,
    /// Continue this session (by id or unique prefix) through the backend's own resume.
    pub session_id: Option<String>,
    /// Structured output: a JSON Schema the final answer must match. The answer is then that
    /// JSON; one that does not match is a failed run, never prose presented as JSON.
    pub output_schema: Option<serde_json::Value>,
    /// Images for the model, with the prompt (PNG, JPEG, GIF or WebP; base64).
    pub images: Vec<ImageInput>,
    /// How hard the model thinks, through the CLI's own setting (400 for a CLI without one).
    pub reasoning_effort: Option<ReasoningEffort>,
}

/// An image sent with a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// `image/png`, `image/jpeg`, `image/gif` or `image/webp`.
    pub media_type: String,
    /// The image, base64-encoded.
    pub data: String,
}

/// The answer of a finished prompt (a run that started, even if it failed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PromptResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub backend: Backend,
    /// The account that answered (`backends.<b>.accounts`); none: the CLI's own login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// -1 for a timeout or a cancellation.
    pub exit_code: i32,
    pub duration_ms: u64,
    pub output: String,
    /// Why the run failed (CLI error, non-zero exit, timeout, cancellation).
    pub error: Option<String>,
    pub token_usage: TokenUsage,
    /// Set when the CLI's subscription refused the run for a spent limit: its report (the
    /// window, when it resets). A single prompt answers such a run 429 `usage_limit_reached`;
    /// a task of `parallel`, `chain` or `compare` reports it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<crate::quota::AccountLimits>,
}

impl PromptResult {
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.exit_code != 0
    }
}

/// What a dry run reports: exactly what would run, nothing started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DryRun {
    /// Always true (tells a dry run's answer from a result).
    pub dry_run: bool,
    pub backend: Backend,
    /// The full argv, program first.
    pub command: Vec<String>,
    pub program: String,
    pub cwd: Option<String>,
    /// Names of the extra environment variables (values are not shown).
    pub env: Vec<String>,
    pub session_id: Option<String>,
    /// In warm mode, the live CLI process (the worker) that would take the turn, program first;
    /// its session settings travel in its protocol. `command` is what runs when the turn goes
    /// one-shot. None: the turn runs one-shot.
    #[serde(default)]
    pub worker_command: Option<Vec<String>>,
    /// The prompt goes on the CLI's standard input (a long prompt; opencode's always), not in
    /// `command`.
    #[serde(default)]
    pub stdin: bool,
}

/// A prompt's answer: a result, or a dry run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PromptOutcome {
    DryRun(DryRun),
    Result(PromptResult),
}

impl PromptOutcome {
    pub fn failed(&self) -> bool {
        match self {
            PromptOutcome::Result(r) => r.failed(),
            PromptOutcome::DryRun(_) => false,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            PromptOutcome::Result(r) => r.backend,
            PromptOutcome::DryRun(d) => d.backend,
        }
    }

    pub fn result(&self) -> Option<&PromptResult> {
        match self {
            PromptOutcome::Result(r) => Some(r),
            PromptOutcome::DryRun(_) => None,
        }
    }
}

/// `POST /api/v1/parallel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelRequest {
    pub tasks: Vec<PromptRequest>,
    /// Tasks at once (default `parallel.max_workers`, capped by
    /// `limits.max_parallel_per_request`).
    pub max_parallel: Option<usize>,
    pub fail_fast: Option<bool>,
    pub dry_run: bool,
}

/// The answer of `parallel`: one outcome per task, in the tasks' order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ParallelResult {
    pub total_tasks: usize,
    pub completed: usize,
    pub failed: usize,
    pub total_duration_ms: u64,
    pub results: Vec<PromptOutcome>,
}

/// A task of `parallel` has ended (streamed to `clinvk parallel` as it happens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskDone {
    pub index: usize,
    pub total: usize,
    pub backend: Backend,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
}

/// One step of `chain`: a prompt request with an optional name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ChainStep {
    pub name: Option<String>,
    #[serde(flatten)]
    pub request: PromptRequest,
}

// Written by hand: `deny_unknown_fields` does not work through `flatten`.
impl<'de> Deserialize<'de> for ChainStep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::deserialize(d)?;
        let name = match map.remove("name") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(String::deserialize(v).map_err(D::Error::custom)?),
        };
        let request =
            PromptRequest::deserialize(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        Ok(ChainStep { name, request })
    }
}

/// `POST /api/v1/chain`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ChainRequest {
    pub steps: Vec<ChainStep>,
    /// Default true.
    pub stop_on_failure: Option<bool>,
    /// A step without `workdir` gets the previous step's.
    pub pass_working_dir: bool,
    pub dry_run: bool,
}

/// One step's outcome in `chain` (or one backend's in `compare`): the fields of a result, or of
/// a dry run (then only `command` is set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepOutcome {
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
    pub output: Option<String>,
    pub session_id: Option<String>,
    pub command: Option<Vec<String>>,
}

impl StepOutcome {
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.exit_code.is_some_and(|c| c != 0)
    }
}

impl From<&PromptOutcome> for StepOutcome {
    fn from(o: &PromptOutcome) -> Self {
        match o {
            PromptOutcome::Result(r) => StepOutcome {
                exit_code: Some(r.exit_code),
                error: r.error.clone(),
                duration_ms: Some(r.duration_ms),
                output: Some(r.output.clone()),
                session_id: r.session_id.clone(),
                command: None,
            },
            PromptOutcome::DryRun(d) => StepOutcome {
                command: Some(d.command.clone()),
                session_id: d.session_id.clone(),
                ..Default::default()
            },
        }
    }
}

/// One step of a `chain` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChainStepResult {
    /// 1-based.
    pub step: usize,
    pub name: String,
    pub backend: Backend,
    #[serde(flatten)]
    pub outcome: StepOutcome,
}

/// The answer of `chain`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChainResult {
    pub total_steps: usize,
    pub completed_steps: usize,
    /// The first step that failed (1-based).
    pub failed_step: Option<usize>,
    pub total_duration_ms: u64,
    pub results: Vec<ChainStepResult>,
}

/// `POST /api/v1/compare`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CompareRequest {
    pub backends: Vec<String>,
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub workdir: Option<String>,
    pub sequential: bool,
    pub dry_run: bool,
    pub ephemeral: bool,
}

/// One backend of a `compare` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompareEntry {
    pub backend: Backend,
    pub model: Option<String>,
    #[serde(flatten)]
    pub outcome: StepOutcome,
}

/// The answer of `compare`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompareResult {
    pub prompt: Option<String>,
    pub backends: Vec<String>,
    pub results: Vec<CompareEntry>,
    pub total_duration_ms: u64,
}

/// `GET /api/v1/backends`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackendList {
    pub backends: Vec<crate::protocol::BackendStatus>,
    /// The concurrency limits and what uses them now.
    #[serde(default)]
    pub capacity: Capacity,
}

/// The concurrency limits (`limits.*`, `backends.<b>.max_concurrent`) and their use now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Capacity {
    /// CLI runs at once, all backends (`limits.max_concurrent`).
    pub max_concurrent: usize,
    /// Runs holding a slot now.
    pub running: usize,
    /// Runs that may wait for a slot (`limits.queue_size`).
    pub queue_size: usize,
    /// Runs waiting for a slot now.
    pub queued: usize,
    /// Each backend's own cap, where one is set (`backends.<b>.max_concurrent`).
    pub per_backend: BTreeMap<String, usize>,
    /// Runs holding a slot now, per backend.
    pub running_per_backend: BTreeMap<String, usize>,
}

/// Filters and paging of `GET /api/v1/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ListQuery {
    pub backend: Option<String>,
    pub status: Option<SessionStatus>,
    /// Default 100.
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

/// A session as listings show it (no turns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionInfo {
    pub id: String,
    pub backend: Backend,
    /// The backend CLI's own session id (what its resume takes).
    pub backend_session_id: Option<String>,
    pub created_at: String,
    pub last_used: String,
    pub working_dir: Option<String>,
    pub model: Option<String>,
    pub initial_prompt: String,
    pub status: SessionStatus,
    pub turn_count: u32,
    pub token_usage: TokenUsage,
    pub tags: Vec<String>,
    pub title: String,
    pub metadata: BTreeMap<String, String>,
    /// Which API made it: `native`, `openai`, `anthropic`, `cli`.
    pub source: String,
    /// The account its CLI session is in (`backends.<b>.accounts`); none: the CLI's own login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// One turn of a session.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, JsonSchema)]
#[serde(default)]
pub struct Turn {
    pub at: String,
    /// The prompt, whole (a session moved to another account carries its turns).
    pub prompt: String,
    /// The answer, whole (the name is from when only its start was kept).
    pub output_summary: String,
    pub usage: TokenUsage,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The tools the model called during the turn, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<TurnToolCall>,
}

/// A tool call of a turn: the tool's name and its input (the model's JSON).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, JsonSchema)]
pub struct TurnToolCall {
    pub name: String,
    pub input: serde_json::Value,
}

/// `GET /api/v1/sessions/{id}`: a session with its turns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub info: SessionInfo,
    pub turns: Vec<Turn>,
}

/// A page of sessions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionPage {
    pub sessions: Vec<SessionInfo>,
    /// How many match the filters in all.
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
}

/// `DELETE /api/v1/sessions/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionDeleted {
    pub deleted: bool,
    pub id: String,
}

/// What an API key may do. Each scope includes the ones before it: `read` lists sessions,
/// backends and usage; `use` also runs prompts (and deletes its own sessions); `admin` also
/// manages keys (`/api/v1/keys`) and cancels any run. A stored key without a scope (made before
/// scopes existed) and a key from `CLINVK_API_KEYS` or gopass are `use`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    #[default]
    Use,
    Admin,
}

/// A key's limits per UTC day and at once (none when absent). Stored in the key store, so its
/// readers tolerate fields they do not know (a newer store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Quotas {
    /// Runs started per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Tokens (input + output, as the CLIs report them) per UTC day; a run that starts under
    /// the quota may end over it, the next one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Runs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// `POST /api/v1/keys`, `clinvkctl keys add NAME …`: a new key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyAddRequest {
    pub name: String,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// How long the key lives, e.g. `30d`, `12h` (forever when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// What a key used today (UTC) and has running now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyUsageToday {
    pub requests: u64,
    pub tokens: u64,
    pub running: u32,
}

/// A stored API key as `clinvkctl keys list` shows it (never the key nor its digest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub created_at: String,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub quotas: Quotas,
    /// When the key stops working (RFC 3339), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub expired: bool,
    /// Its use against the quotas (in listings).
    #[serde(default)]
    pub today: KeyUsageToday,
}

/// How `GET /api/v1/usage` and `clinvkctl usage` group the runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroupBy {
    #[default]
    Day,
    Key,
    Backend,
    Model,
    /// `backend/account` (`claude/default`: the CLI's own login).
    Account,
}

/// `GET /api/v1/usage?by=…&since=…`, `clinvkctl usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    #[serde(default)]
    pub by: UsageGroupBy,
    /// How far back: a duration such as `7d` or `12h` (default `7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Sums over some runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageTotals {
    pub requests: u64,
    /// Runs that failed (CLI error, timeout, cancellation).
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_tokens: u64,
    /// US dollars: what claude reports for its runs, else tokens × the `pricing:` table — an
    /// estimate.
    pub cost_usd: f64,
    pub duration_ms: u64,
}

/// One group of `UsageReport`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageGroup {
    /// The key id, backend, model or day (`YYYY-MM-DD`, UTC) of the group.
    pub group: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// The runs since a time, grouped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageReport {
    pub by: UsageGroupBy,
    /// The start of the period (RFC 3339).
    pub since: String,
    pub groups: Vec<UsageGroup>,
    pub total: UsageTotals,
}

/// A prompt running now (`/api/v1/live`, the dashboard).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LiveRun {
    pub id: String,
    pub backend: Backend,
    pub model: Option<String>,
    pub session_id: Option<String>,
    /// The id of the key that started it.
    pub key_id: Option<String>,
    /// `native`, `openai`, `anthropic` or `cli`.
    pub api_style: ApiStyle,
    pub started_at: String,
    pub elapsed_ms: u64,
}

/// What runs now: one event of `GET /api/v1/live`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LiveSnapshot {
    pub runs: Vec<LiveRun>,
    pub workers: Vec<crate::protocol::WorkerInfo>,
    /// The concurrency slots in use.
    pub capacity: Capacity,
}

/// The body of `POST /api/v1/runs/{id}/cancel`: an empty object (the run is in the path).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCancelRequest {}

/// The answer of `POST /api/v1/runs/{id}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunCancelled {
    pub id: String,
    pub cancelled: bool,
}

/// A key just created: the only time the key itself is shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NewKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// The stored keys and whether the API asks for one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
    pub required: bool,
    pub auth: crate::config::AuthMode,
    /// Keys accepted now, from every source.
    pub accepted_keys: usize,
}

/// A key revoked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyRevoked {
    pub revoked: String,
    /// Keys accepted now, from every source.
    pub remaining: usize,
    pub required: bool,
}

/// The content of a run's closing `done` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Done {
    pub token_usage: TokenUsage,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub output: String,
    pub error: Option<String>,
    pub session_id: Option<String>,
}

impl From<&PromptResult> for Done {
    fn from(r: &PromptResult) -> Self {
        Done {
            token_usage: r.token_usage,
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            output: r.output.clone(),
            error: r.error.clone(),
            session_id: r.session_id.clone(),
        }
    }
}

/// One event of a running prompt, as the native NDJSON stream and `clinvk` show it
/// (`{"type": …, "content": …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "content", rename_all = "snake_case")]
pub enum RunEvent {
    /// The CLI announced its session.
    Init {
        backend_session_id: String,
        model: Option<String>,
    },
    /// Assistant text: a token delta (`delta: true`) or a whole message.
    Message {
        text: String,
        role: String,
        delta: bool,
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
    /// A failure: reported by the CLI, or the run's end (then with its exit code).
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// Sent on the native NDJSON stream while the CLI is silent (every
    /// `server.sse_keepalive_secs`), so idle timeouts do not cut a long run. Carries nothing.
    Heartbeat,
    /// The last event.
    Done(Done),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields() {
        let e = serde_json::from_str::<PromptRequest>(r#"{"prompt":"x","bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let step: ChainStep =
            serde_json::from_str(r#"{"name":"a","prompt":"x","backend":"claude"}"#).unwrap();
        assert_eq!(step.name.as_deref(), Some("a"));
        assert_eq!(step.request.prompt.as_deref(), Some("x"));
        let e = serde_json::from_str::<ChainStep>(r#"{"prompt":"x","nope":true}"#).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn backend_names() {
        for b in Backend::ALL {
            assert_eq!(wire_name(&b), b.as_str());
            assert_eq!(Backend::from_name(b.as_str()), Some(b));
            assert_eq!(from_wire::<Backend>(b.as_str()), Some(b));
        }
        assert_eq!(Backend::from_name("Claude"), None);
        for b in Backend::ALL {
            let v = b.tested_version();
            assert_eq!(v.split('.').count(), 3, "{b}: {v:?}");
            assert!(v.split('.').all(|p| p.parse::<u32>().is_ok()), "{b}: {v:?}");
        }
        assert_eq!(Backend::from_name("bash"), None);
        assert_eq!(
            crate::config::KNOWN_BACKENDS.to_vec(),
            Backend::ALL.map(Backend::as_str).to_vec()
        );
    }

    #[test]
    fn wire_forms() {
        let ev = RunEvent::Message {
            text: "hi".into(),
            role: "assistant".into(),
            delta: true,
        };
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            serde_json::json!({"type": "message", "content": {"text": "hi", "role": "assistant", "delta": true}})
        );
        let dry = PromptOutcome::DryRun(DryRun {
            dry_run: true,
            ..Default::default()
        });
        let back: PromptOutcome =
            serde_json::from_value(serde_json::to_value(&dry).unwrap()).unwrap();
        assert_eq!(back, dry);
        let res = PromptOutcome::Result(PromptResult::default());
        let back: PromptOutcome =
            serde_json::from_value(serde_json::to_value(&res).unwrap()).unwrap();
        assert_eq!(back, res);
        assert_eq!(
            serde_json::to_value(SandboxMode::ReadOnly).unwrap(),
            "read-only"
        );
        assert!(ApprovalMode::Always.strictness() > ApprovalMode::None.strictness());
        assert_eq!(wire_name(&SessionStatus::Interrupted), "interrupted");
        assert_eq!(
            from_wire::<SandboxMode>("read-only"),
            Some(SandboxMode::ReadOnly)
        );
        assert_eq!(from_wire::<SandboxMode>("sometimes"), None);
    }
}
