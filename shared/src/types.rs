//! Common types of a run, shared by the daemon's core and the clients that render its events.

use serde::{Deserialize, Serialize};

/// Token counts of a run or a session, as the CLI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenUsage {
    /// Input tokens, cache reads and writes included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `input_tokens` read from or written to the prompt cache (claude reports it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_tokens: u64,
    /// The run's cost in US dollars as the CLI itself reports it (claude's `total_cost_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TokenUsage {
    pub fn add(&mut self, other: TokenUsage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_tokens += other.cache_tokens;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// Now, as an RFC 3339 timestamp with milliseconds (UTC).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
