//! The quota windows the CLIs report of their accounts (`Event::Limits`), kept per backend and
//! account: shown by `GET /api/v1/accounts`, `clinvkctl status`, the dashboard and `/metrics`,
//! and kept across a restart (`<state>/quotas.json`) until every window has reset.

use clinvk_shared::api::Backend;
use clinvk_shared::quota::{AccountLimits, WindowStatus};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The account of a backend's own login.
pub(crate) use clinvk_shared::accounts::DEFAULT_ACCOUNT;

/// The metric of each window's utilization (0–1).
pub(crate) const UTILIZATION_METRIC: &str = "clinvk_account_utilization";
/// The metric of runs a spent window refused.
pub(crate) const REFUSED_METRIC: &str = "clinvk_usage_limit_refusals_total";

type Key = (Backend, String);

/// The last report of every account, saved on each change.
pub(crate) struct QuotaBook {
    file: PathBuf,
    reports: Mutex<BTreeMap<Key, AccountLimits>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    backend: Backend,
    account: String,
    limits: AccountLimits,
}

impl QuotaBook {
    /// Opens the book saved in `file` (a missing or unreadable file is an empty book: the next
    /// run's report fills it again), dropping what has all reset.
    pub(crate) fn open(file: PathBuf) -> QuotaBook {
        let now = now();
        let reports = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Saved>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !s.limits.expired(now))
            .map(|s| ((s.backend, s.account), s.limits))
            .collect();
        let book = QuotaBook {
            file,
            reports: Mutex::new(reports),
        };
        book.publish();
        book
    }

    /// Records a CLI's report. A report without windows (a refusal that names only the spent
    /// window) keeps the windows last reported.
    pub(crate) fn record(&self, backend: Backend, account: &str, mut limits: AccountLimits) {
        let key = (backend, account.to_string());
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        if limits.windows.is_empty() {
            if let Some(prev) = reports.get(&key) {
                limits.windows = prev.windows.clone();
                if let Some(w) = limits
                    .windows
                    .iter_mut()
                    .find(|w| Some(&w.name) == limits.limiting_window.as_ref())
                {
                    w.status = limits.status;
                    w.resets_at = limits.resets_at.or(w.resets_at);
                }
            }
        }
        reports.insert(key, limits);
        self.save(reports);
    }

    /// A run of the account went through: a refusal known only from the CLI's words (no
    /// windows) is over.
    pub(crate) fn passed(&self, backend: Backend, account: &str) {
        let key = (backend, account.to_string());
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let stale = reports
            .get(&key)
            .is_some_and(|l| l.status == WindowStatus::Rejected && l.windows.is_empty());
        if stale {
            reports.remove(&key);
            self.save(reports);
        }
    }

    /// Writes the book to its file (`reports` is the book's own lock, released here).
    fn save(&self, reports: std::sync::MutexGuard<'_, BTreeMap<(Backend, String), AccountLimits>>) {
        let saved: Vec<Saved> = reports
            .iter()
            .map(|((b, a), l)| Saved {
                backend: *b,
                account: a.clone(),
                limits: l.clone(),
            })
            .collect();
        drop(reports);
        if let Err(e) = serde_json::to_vec_pretty(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| clinvk_shared::paths::write_private_atomic(&self.file, &b))
        {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot save the quota windows");
        }
        self.publish();
    }

    /// The current report of an account (None once every window has reset).
    pub(crate) fn get(&self, backend: Backend, account: &str) -> Option<AccountLimits> {
        let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        reports
            .get(&(backend, account.to_string()))
            .filter(|l| !l.expired(now()))
            .cloned()
    }

    /// Counts a run a spent window refused.
    pub(crate) fn refused(&self, backend: Backend, account: &str) {
        metrics::counter!(REFUSED_METRIC, "backend" => backend.as_str(), "account" => account.to_string())
            .increment(1);
    }

    /// Sets the utilization gauges from the book.
    fn publish(&self) {
        let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        for ((backend, account), limits) in reports.iter() {
            for w in &limits.windows {
                metrics::gauge!(UTILIZATION_METRIC, "backend" => backend.as_str(), "account" => account.clone(), "window" => w.name.clone())
                    .set(w.utilization);
            }
        }
    }
}

/// The report of a run a CLI refused for a spent limit without giving its windows (only its
/// words or an error type): the window when it named one, the reset when it said when.
pub(crate) fn refusal_report(
    source: &str,
    window: Option<&str>,
    retry_in_secs: Option<u64>,
) -> AccountLimits {
    let now = now();
    AccountLimits {
        status: WindowStatus::Rejected,
        limiting_window: window.map(str::to_string),
        resets_at: retry_in_secs.map(|s| now + s as i64),
        windows: Vec::new(),
        seen_at: now,
        source: source.to_string(),
    }
}

/// The delay of a "… retry in 3598s." / "retry in 12.5s" in a CLI's or an API's words.
pub(crate) fn retry_in_secs(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find("retry in ")? + "retry in ".len();
    let rest = &lower[at..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    if !rest[digits.len()..].starts_with('s') {
        return None;
    }
    digits.parse::<f64>().ok().map(|s| s.ceil() as u64)
}

/// Whether a run's limits report says it was refused.
pub(crate) fn refusal(limits: &AccountLimits) -> bool {
    limits.status == WindowStatus::Rejected
}

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A report of one `five_hour` window (unit tests of the book and of the accounts' ranking).
#[cfg(test)]
pub(crate) fn test_report(status: WindowStatus, util: f64, resets_in: i64) -> AccountLimits {
    let reset = now() + resets_in;
    AccountLimits {
        status,
        limiting_window: Some("five_hour".into()),
        resets_at: Some(reset),
        windows: vec![clinvk_shared::quota::QuotaWindow {
            name: "five_hour".into(),
            utilization: util,
            resets_at: Some(reset),
            status,
            minutes: None,
        }],
        seen_at: now(),
        source: "test".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_in_words() {
        assert_eq!(
            retry_in_secs("quota exceeded\nPlease retry in 3598s."),
            Some(3598)
        );
        assert_eq!(retry_in_secs("Please retry in 12.2s"), Some(13));
        assert_eq!(retry_in_secs("retry in 5 minutes"), None);
        assert_eq!(retry_in_secs("nothing"), None);
    }
    fn report(util: f64, resets_in: i64) -> AccountLimits {
        test_report(WindowStatus::AllowedWarning, util, resets_in)
    }

    #[test]
    fn kept_across_a_restart_until_the_windows_reset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("quotas.json");
        let book = QuotaBook::open(file.clone());
        assert_eq!(book.get(Backend::Claude, DEFAULT_ACCOUNT), None);
        book.record(Backend::Claude, DEFAULT_ACCOUNT, report(0.91, 3600));
        book.record(Backend::Codex, DEFAULT_ACCOUNT, report(0.5, -10));
        let again = QuotaBook::open(file.clone());
        assert_eq!(
            again
                .get(Backend::Claude, DEFAULT_ACCOUNT)
                .map(|l| l.windows[0].utilization),
            Some(0.91)
        );
        assert_eq!(again.get(Backend::Codex, DEFAULT_ACCOUNT), None, "reset");
        // A refusal without windows keeps them, the spent one marked.
        let mut refusal = report(1.0, 600);
        refusal.status = WindowStatus::Rejected;
        refusal.windows.clear();
        book.record(Backend::Claude, DEFAULT_ACCOUNT, refusal);
        let l = book.get(Backend::Claude, DEFAULT_ACCOUNT).unwrap();
        assert_eq!(l.windows.len(), 1);
        assert_eq!(l.windows[0].status, WindowStatus::Rejected);
        assert_eq!(l.windows[0].utilization, 0.91);
        // An unreadable file is an empty book, not a failure.
        std::fs::write(&file, b"not json").unwrap();
        assert_eq!(
            QuotaBook::open(file).get(Backend::Claude, DEFAULT_ACCOUNT),
            None
        );
    }
}
