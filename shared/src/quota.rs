//! Subscription quota windows: what a CLI reports of its account's limits (claude's 5-hour and
//! 7-day windows, codex's primary and secondary), as the daemon keeps them and `GET
//! /api/v1/accounts`, `clinvkctl status` and the dashboard show them.

use crate::api::Backend;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a window stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowStatus {
    #[default]
    Allowed,
    /// Close to the limit: runs go on.
    AllowedWarning,
    /// Spent: runs are refused until the reset.
    Rejected,
}

impl WindowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowStatus::Allowed => "allowed",
            WindowStatus::AllowedWarning => "allowed_warning",
            WindowStatus::Rejected => "rejected",
        }
    }
}

/// A reset time (Unix seconds) as RFC 3339, UTC (`2026-12-07T17:53:00Z`).
pub fn reset_time(epoch_secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch_secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One quota window of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuotaWindow {
    /// The CLI's name for it (`five_hour`, `seven_day`; codex `primary`, `secondary`).
    pub name: String,
    /// How much of it is used, 0 to 1.
    pub utilization: f64,
    /// When it resets (Unix seconds), if the CLI said.
    pub resets_at: Option<i64>,
    pub status: WindowStatus,
    /// Its length in minutes, if the CLI said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<u32>,
}

/// What a CLI last reported of one account's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountLimits {
    /// The overall verdict (the worst window's, or the CLI's own).
    pub status: WindowStatus,
    /// The window the verdict is about (the spent one when rejected), if the CLI said.
    pub limiting_window: Option<String>,
    /// When runs may go again after a rejection (Unix seconds).
    pub resets_at: Option<i64>,
    pub windows: Vec<QuotaWindow>,
    /// When clinvk last saw it (Unix seconds).
    pub seen_at: i64,
    /// What reported it (`claude rate_limit_event`).
    pub source: String,
}

impl AccountLimits {
    /// Seconds until a rejection lifts, from `now` (at least 1); None when not rejected.
    pub fn retry_after(&self, now: i64) -> Option<u64> {
        if self.status != WindowStatus::Rejected {
            return None;
        }
        Some(self.resets_at.map_or(60, |r| (r - now).max(1) as u64))
    }

    /// Whether everything it says has passed (every reset is before `now`): then it is dropped.
    pub fn expired(&self, now: i64) -> bool {
        let resets = self
            .windows
            .iter()
            .filter_map(|w| w.resets_at)
            .chain(self.resets_at);
        let mut any = false;
        for r in resets {
            any = true;
            if r > now {
                return false;
            }
        }
        any
    }
}

/// One account of a backend, as `GET /api/v1/accounts` and `clinvkctl accounts list` show it
/// (never a secret: not the token, not the variables' values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Account {
    pub backend: Backend,
    /// The account's name (`default`: the CLI's own login, listed when the backend has no
    /// other account).
    pub account: String,
    /// Whether the backend's CLI is found and enabled.
    pub available: bool,
    /// The windows the CLI last reported (none: it never reported any, or they all reset).
    pub limits: Option<AccountLimits>,
    /// How the account logs in, as far as clinvk can tell without running the CLI: `token`
    /// (stored by `clinvkctl accounts add --token -`), `env` (its configured variables carry a
    /// login), `saved` (a login file of the CLI in its folder), `own` (the user's own login),
    /// `unknown` (none of these: log in with the CLI in its folder).
    #[serde(default)]
    pub login: String,
    /// Whether a token is stored for it.
    #[serde(default)]
    pub token: bool,
    /// `config` (listed in `backends.<b>.accounts`), `folder` (found under the state folder),
    /// `own` (the CLI's own login).
    #[serde(default)]
    pub source: String,
}

/// `clinvkctl accounts add`: what was made, and how to log in there when no token was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountAdded {
    pub backend: Backend,
    pub account: String,
    /// The account's folder (0700).
    pub folder: String,
    /// Whether a token was stored.
    pub token: bool,
    /// The CLI's own login, to run in a terminal with `var` set to `folder` (none when a
    /// token was stored).
    pub login: Option<LoginCommand>,
}

/// A CLI's login command for an account's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoginCommand {
    pub argv: Vec<String>,
    /// The variable that points the CLI at the account's folder, and its value.
    pub var: String,
    pub value: String,
}

/// `clinvkctl accounts remove`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountRemoved {
    pub backend: Backend,
    pub account: String,
}

/// `GET /api/v1/accounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountList {
    pub accounts: Vec<Account>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(status: WindowStatus, resets: &[i64]) -> AccountLimits {
        AccountLimits {
            status,
            limiting_window: Some("five_hour".into()),
            resets_at: resets.first().copied(),
            windows: resets
                .iter()
                .map(|r| QuotaWindow {
                    name: "w".into(),
                    utilization: 0.5,
                    resets_at: Some(*r),
                    status,
                    minutes: None,
                })
                .collect(),
            seen_at: 0,
            source: "test".into(),
        }
    }

    #[test]
    fn retry_after_and_expiry() {
        let l = limits(WindowStatus::Rejected, &[1_000, 5_000]);
        assert_eq!(l.retry_after(400), Some(600));
        assert_eq!(l.retry_after(2_000), Some(1));
        assert!(!l.expired(2_000), "the 7-day window has not reset");
        assert!(l.expired(5_000));
        assert_eq!(
            limits(WindowStatus::AllowedWarning, &[10]).retry_after(0),
            None
        );
        assert!(!limits(WindowStatus::Allowed, &[]).expired(i64::MAX));
    }
}
