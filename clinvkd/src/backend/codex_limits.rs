//! codex's quota windows, as its app-server reports them: `account/rateLimits/updated` after
//! every turn (measured with 0.169: `primary` and `secondary`, each `usedPercent`,
//! `windowDurationMins`, `resetsAt`; both null once the API sends no `x-codex-*` headers), and a
//! turn refused with `codexErrorInfo: usageLimitExceeded`. `codex exec --json` reports neither
//! (only the error's text).

use super::Event;
use clinvk_shared::quota::{AccountLimits, QuotaWindow, WindowStatus};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Update {
    rate_limits: Snapshot,
}

#[derive(Deserialize)]
struct Snapshot {
    #[serde(default)]
    primary: Option<Window>,
    #[serde(default)]
    secondary: Option<Window>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Window {
    used_percent: f64,
    #[serde(default)]
    window_duration_mins: Option<u32>,
    #[serde(default)]
    resets_at: Option<i64>,
}

/// The error code of a turn refused for a spent window.
pub(super) const USAGE_LIMIT_EXCEEDED: &str = "usageLimitExceeded";

/// The report of an `account/rateLimits/updated` notification (None: no windows in it).
pub(super) fn from_update(params: serde_json::Value) -> Option<AccountLimits> {
    let s = serde_json::from_value::<Update>(params).ok()?.rate_limits;
    let windows: Vec<QuotaWindow> = [("primary", s.primary), ("secondary", s.secondary)]
        .into_iter()
        .filter_map(|(name, w)| {
            let w = w?;
            Some(QuotaWindow {
                name: name.into(),
                utilization: w.used_percent / 100.0,
                resets_at: w.resets_at,
                // codex reports a percentage only: spent at 100.
                status: if w.used_percent >= 100.0 {
                    WindowStatus::Rejected
                } else {
                    WindowStatus::Allowed
                },
                minutes: w.window_duration_mins,
            })
        })
        .collect();
    if windows.is_empty() {
        return None;
    }
    let spent = windows
        .iter()
        .filter(|w| w.status == WindowStatus::Rejected)
        .max_by_key(|w| w.resets_at);
    Some(AccountLimits {
        status: if spent.is_some() {
            WindowStatus::Rejected
        } else {
            WindowStatus::Allowed
        },
        limiting_window: spent.map(|w| w.name.clone()),
        resets_at: spent.and_then(|w| w.resets_at),
        windows,
        seen_at: crate::quota::now(),
        source: "codex account/rateLimits/updated".into(),
    })
}

/// The report of a turn refused for a spent window: the last windows seen, marked spent.
pub(super) fn refused(last: Option<&AccountLimits>) -> Event {
    let mut l = last.cloned().unwrap_or(AccountLimits {
        status: WindowStatus::Rejected,
        limiting_window: None,
        resets_at: None,
        windows: Vec::new(),
        seen_at: crate::quota::now(),
        source: "codex usageLimitExceeded".into(),
    });
    l.status = WindowStatus::Rejected;
    Event::Limits(l)
}

/// `codex exec` tells a spent window only in words: "You’ve hit your usage limit. … try again
/// at 10:51 PM." (measured with 0.169). The reset is a time of the local clock (or a date and
/// time), which clinvk does not turn back into an instant: no reset time, so `Retry-After`
/// falls back to a minute.
pub(super) fn exec_refusal(message: &str) -> Option<Event> {
    message
        .contains("hit your usage limit")
        .then(|| Event::Limits(crate::quota::refusal_report("codex exec error", None, None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_refusal_in_words() {
        let words = "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit https://chatgpt.com/settings/usage to purchase more credits or try again at 10:51 PM.";
        let Some(Event::Limits(l)) = exec_refusal(words) else {
            panic!("not a refusal")
        };
        assert_eq!(l.status, WindowStatus::Rejected);
        assert!(exec_refusal("stream disconnected before completion").is_none());
    }

    #[test]
    fn updates_and_a_refusal() {
        let update = |p: f64| serde_json::json!({"rateLimits": {"limitId": "codex", "primary": {"usedPercent": p, "windowDurationMins": 300, "resetsAt": 1000}, "secondary": {"usedPercent": 42, "windowDurationMins": 10080, "resetsAt": 9000}, "credits": null}});
        let l = from_update(update(91.0)).unwrap();
        assert_eq!(l.status, WindowStatus::Allowed);
        assert_eq!(
            l.windows
                .iter()
                .map(|w| (w.name.as_str(), w.utilization, w.minutes))
                .collect::<Vec<_>>(),
            [
                ("primary", 0.91, Some(300)),
                ("secondary", 0.42, Some(10080))
            ]
        );
        let spent = from_update(update(100.0)).unwrap();
        assert_eq!(spent.status, WindowStatus::Rejected);
        assert_eq!(spent.limiting_window.as_deref(), Some("primary"));
        assert_eq!(spent.resets_at, Some(1000));
        assert_eq!(
            from_update(serde_json::json!({"rateLimits": {"primary": null, "secondary": null}})),
            None
        );
        let Event::Limits(r) = refused(Some(&l)) else {
            panic!()
        };
        assert_eq!((r.status, r.windows.len()), (WindowStatus::Rejected, 2));
    }
}
