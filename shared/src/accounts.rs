//! Several accounts per CLI and model routes: the configuration of both (`backends.<b>.accounts`,
//! `backends.<b>.routing`, list-valued `models:` aliases) and the checks serde cannot make.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The name of a backend's own login (no account configured or found).
pub const DEFAULT_ACCOUNT: &str = "default";

/// The file in an account's folder holding the token given to `clinvkctl accounts add --token -`
/// (0600; passed to the CLI by environment, never by argv).
pub const TOKEN_FILE: &str = ".clinvk-token";

/// An account entry of `backends.<b>.accounts`: a folder elsewhere than
/// `<state>/accounts/<backend>/<name>/`, or extra variables (a base URL) for it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub name: String,
    /// The CLI's state folder for this account; default `<state>/accounts/<backend>/<name>/`.
    #[serde(default)]
    pub config_dir: Option<PathBuf>,
    /// Variables for this account's CLI, over `backends.<b>.env` (a request's `env` never
    /// overrides them).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// How new sessions are spread over a backend's accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// The account with the most headroom (the lowest utilization of its fullest window; an
    /// account with no known window counts as unused); ties go to the first listed.
    #[default]
    LeastUsed,
    /// The first account in the listed order that is not refused.
    FillFirst,
    /// Each new session to the next account in turn.
    RoundRobin,
}

/// A `models:` alias: one target (`claude/haiku`) or a list tried in order
/// (`[claude/opus, codex/gpt-5.5]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelRoute {
    One(String),
    Many(Vec<String>),
}

impl ModelRoute {
    /// The targets in the order they are tried.
    pub fn targets(&self) -> Vec<&str> {
        match self {
            ModelRoute::One(t) => vec![t.as_str()],
            ModelRoute::Many(ts) => ts.iter().map(String::as_str).collect(),
        }
    }
}

impl From<&str> for ModelRoute {
    fn from(s: &str) -> Self {
        ModelRoute::One(s.to_string())
    }
}

/// Whether `name` can name an account: 1–64 letters, digits, `_` and `-`, not starting with
/// `-`, and not `default` (the CLI's own login).
pub fn is_valid_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name != DEFAULT_ACCOUNT
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks a backend's account entries: valid, unique names; absolute folders.
pub fn validate_accounts(accounts: &[AccountSettings]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for a in accounts {
        if !is_valid_account_name(&a.name) {
            return Err(format!(
                "{:?} is not a valid account name (1-64 letters, digits, _ and -; not `default`)",
                a.name
            ));
        }
        if !seen.insert(a.name.as_str()) {
            return Err(format!("the account {:?} is listed twice", a.name));
        }
        if a.config_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(format!(
                "the config_dir of account {:?} must be an absolute path",
                a.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for ok in ["work", "a1", "team_2", "x-y"] {
            assert!(is_valid_account_name(ok), "{ok}");
        }
        for bad in ["", "default", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(!is_valid_account_name(bad), "{bad}");
        }
        let a = |n: &str| AccountSettings {
            name: n.into(),
            ..Default::default()
        };
        assert!(validate_accounts(&[a("a"), a("b")]).is_ok());
        assert!(validate_accounts(&[a("a"), a("a")])
            .unwrap_err()
            .contains("twice"));
        let rel = AccountSettings {
            config_dir: Some("rel/dir".into()),
            ..a("c")
        };
        assert!(validate_accounts(&[rel]).unwrap_err().contains("absolute"));
    }

    #[test]
    fn routes_read_one_target_or_a_list() {
        let one: ModelRoute = serde_json::from_str(r#""claude/haiku""#).unwrap();
        assert_eq!(one.targets(), vec!["claude/haiku"]);
        let many: ModelRoute = serde_json::from_str(r#"["claude/opus","codex"]"#).unwrap();
        assert_eq!(many.targets(), vec!["claude/opus", "codex"]);
    }
}
