//! A backend's accounts: the CLI run with its own state folder and environment. Found as
//! folders under `<state>/accounts/<backend>/<name>/` (at start, at a reload, and when
//! `clinvkctl accounts` changes them) and listed in `backends.<b>.accounts`. No account: the
//! user's own login (`default`), as before accounts existed.
//!
//! Which account a new session goes to (`backends.<b>.routing`) and which are skipped (refused
//! until a reset) is decided here; `ops::prompt::route` turns it into a run's candidates.

use clinvk_shared::accounts::{Routing, DEFAULT_ACCOUNT, TOKEN_FILE};
use clinvk_shared::api::Backend;
use clinvk_shared::config::Settings;
use clinvk_shared::quota::WindowStatus;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// One account of a backend, as a run uses it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AccountDef {
    pub(crate) name: String,
    /// The CLI's state folder (its variable points here).
    pub(crate) dir: PathBuf,
    /// `backends.<b>.accounts[].env`.
    pub(crate) env: BTreeMap<String, String>,
    /// Listed in the configuration (else found as a folder).
    pub(crate) configured: bool,
}

impl std::fmt::Debug for AccountDef {
    /// Without the variables' values (they may hold tokens).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountDef")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("configured", &self.configured)
            .finish()
    }
}

impl AccountDef {
    /// The variables this account's CLI runs with, over `backends.<b>.env` and a request's
    /// `env`: the state folder's variable, the configured ones, and the stored token.
    pub(crate) fn env(&self, backend: Backend) -> Vec<(String, String)> {
        let info = backend.info();
        let mut env = vec![(info.state.var.to_string(), self.dir.display().to_string())];
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let (Some(var), Some(token)) = (info.token_var, self.token()) {
            env.push((var.to_string(), token));
        }
        env
    }

    /// The token given to `clinvkctl accounts add --token -`, if any.
    pub(crate) fn token(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

/// The accounts found in the state folder, and the round-robin turns.
pub(crate) struct Accounts {
    root: PathBuf,
    found: RwLock<BTreeMap<Backend, Vec<String>>>,
    turns: Mutex<BTreeMap<Backend, usize>>,
}

/// An account ranked for a new session: its name (None: the CLI's own login) and, when a spent
/// window refuses it, the reset (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ranked {
    pub(crate) name: Option<String>,
    pub(crate) refused_until: Option<i64>,
}

impl Accounts {
    /// The accounts under `root` (`<state>/accounts`).
    pub(crate) fn open(root: PathBuf) -> Accounts {
        let a = Accounts {
            root,
            found: RwLock::default(),
            turns: Mutex::default(),
        };
        a.scan();
        a
    }

    /// `<state>/accounts/<backend>/<name>`.
    pub(crate) fn folder(&self, backend: Backend, name: &str) -> PathBuf {
        self.root.join(backend.as_str()).join(name)
    }

    /// Finds the account folders again.
    pub(crate) fn scan(&self) {
        let mut found = BTreeMap::new();
        for b in Backend::ALL {
            let mut names: Vec<String> = std::fs::read_dir(self.root.join(b.as_str()))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| clinvk_shared::accounts::is_valid_account_name(n))
                .collect();
            names.sort();
            if !names.is_empty() {
                found.insert(b, names);
            }
        }
        *self.found.write().unwrap_or_else(|e| e.into_inner()) = found;
    }

    /// A backend's accounts: the configured ones in their order, then the folders found.
    pub(crate) fn list(&self, settings: &Settings, backend: Backend) -> Vec<AccountDef> {
        let cfg = settings.backend(backend);
        let mut out: Vec<AccountDef> = cfg
            .accounts
            .iter()
            .map(|a| AccountDef {
                name: a.name.clone(),
                dir: a
                    .config_dir
                    .clone()
                    .unwrap_or_else(|| self.folder(backend, &a.name)),
                env: a.env.clone(),
                configured: true,
            })
            .collect();
        let found = self.found.read().unwrap_or_else(|e| e.into_inner());
        for name in found.get(&backend).into_iter().flatten() {
            if !out.iter().any(|a| &a.name == name) {
                out.push(AccountDef {
                    name: name.clone(),
                    dir: self.folder(backend, name),
                    env: BTreeMap::new(),
                    configured: false,
                });
            }
        }
        out
    }

    /// The account named `name` of a backend (None: it is gone, or it is the own login).
    pub(crate) fn get(
        &self,
        settings: &Settings,
        backend: Backend,
        name: &str,
    ) -> Option<AccountDef> {
        self.list(settings, backend)
            .into_iter()
            .find(|a| a.name == name)
    }

    /// The backend's accounts in the order a new session tries them (`routing`), each with the
    /// reset of a window that refuses it. `advance`: a round-robin choice moves the turn on
    /// (a pool filling ahead only peeks).
    pub(crate) fn ranked(
        &self,
        settings: &Settings,
        quotas: &crate::quota::QuotaBook,
        backend: Backend,
        advance: bool,
    ) -> Vec<Ranked> {
        let accounts = self.list(settings, backend);
        let now = crate::quota::now();
        let refused = |name: &str| {
            quotas
                .get(backend, name)
                .filter(|l| l.status == WindowStatus::Rejected)
                .and_then(|l| l.resets_at)
                .filter(|r| *r > now)
        };
        if accounts.is_empty() {
            return vec![Ranked {
                name: None,
                refused_until: refused(DEFAULT_ACCOUNT),
            }];
        }
        let mut ranked: Vec<(Ranked, f64)> = accounts
            .iter()
            .map(|a| {
                let used = quotas
                    .get(backend, &a.name)
                    .map(|l| l.windows.iter().map(|w| w.utilization).fold(0.0, f64::max))
                    .unwrap_or(0.0);
                (
                    Ranked {
                        name: Some(a.name.clone()),
                        refused_until: refused(&a.name),
                    },
                    used,
                )
            })
            .collect();
        match settings.backend(backend).routing {
            Routing::FillFirst => {}
            // Stable: equal headroom keeps the listed order.
            Routing::LeastUsed => ranked.sort_by(|a, b| a.1.total_cmp(&b.1)),
            Routing::RoundRobin => {
                let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
                let turn = turns.entry(backend).or_insert(0);
                let at = *turn % ranked.len();
                if advance {
                    *turn = turn.wrapping_add(1);
                }
                ranked.rotate_left(at);
            }
        }
        ranked.into_iter().map(|(r, _)| r).collect()
    }
}

/// Creates an account folder (0700, its parents too).
pub(crate) fn create_folder(dir: &Path) -> std::io::Result<()> {
    clinvk_shared::paths::ensure_private_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clinvk_shared::accounts::AccountSettings;
    use clinvk_shared::quota::AccountLimits;

    fn limits(status: WindowStatus, util: f64, reset_in: i64) -> AccountLimits {
        crate::quota::test_report(status, util, reset_in)
    }

    fn names(r: &[Ranked]) -> Vec<String> {
        r.iter()
            .map(|r| r.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn found_configured_and_ranked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("accounts");
        for n in ["b", "a", "not valid"] {
            std::fs::create_dir_all(root.join("claude").join(n)).unwrap();
        }
        let accounts = Accounts::open(root.clone());
        let quotas = crate::quota::QuotaBook::open(dir.path().join("quotas.json"));
        let mut settings = Settings::default();
        // No account: the own login.
        assert_eq!(
            accounts.ranked(&settings, &quotas, Backend::Codex, true),
            vec![Ranked {
                name: None,
                refused_until: None
            }]
        );
        let cfg = settings.backends.get_mut("claude").unwrap();
        cfg.accounts = vec![AccountSettings {
            name: "z".into(),
            config_dir: Some("/elsewhere/z".into()),
            env: [("ANTHROPIC_BASE_URL".to_string(), "http://x".to_string())].into(),
        }];
        let list = accounts.list(&settings, Backend::Claude);
        assert_eq!(
            list.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            vec!["z", "a", "b"],
            "configured first, then the folders by name; an invalid name is skipped"
        );
        assert_eq!(list[1].dir, root.join("claude").join("a"));
        // The folder's variable first, the configured variables after; a token last.
        std::fs::write(list[1].dir.join(TOKEN_FILE), "tok-1\n").unwrap();
        assert_eq!(
            list[1].env(Backend::Claude),
            vec![
                (
                    "CLAUDE_CONFIG_DIR".into(),
                    list[1].dir.display().to_string()
                ),
                ("CLAUDE_CODE_OAUTH_TOKEN".into(), "tok-1".into())
            ]
        );
        assert_eq!(list[0].env(Backend::Claude)[1].0, "ANTHROPIC_BASE_URL");

        // least_used: the most headroom first; unknown = unused; ties keep the order.
        quotas.record(
            Backend::Claude,
            "z",
            limits(WindowStatus::AllowedWarning, 0.9, 3600),
        );
        quotas.record(
            Backend::Claude,
            "a",
            limits(WindowStatus::Allowed, 0.2, 3600),
        );
        let r = accounts.ranked(&settings, &quotas, Backend::Claude, true);
        assert_eq!(names(&r), vec!["b", "a", "z"]);
        // fill_first keeps the listed order; a refused account carries its reset.
        quotas.record(
            Backend::Claude,
            "z",
            limits(WindowStatus::Rejected, 1.0, 600),
        );
        settings.backends.get_mut("claude").unwrap().routing = Routing::FillFirst;
        let r = accounts.ranked(&settings, &quotas, Backend::Claude, true);
        assert_eq!(names(&r), vec!["z", "a", "b"]);
        assert!(r[0].refused_until.is_some() && r[1].refused_until.is_none());
        // round_robin: the turn moves on only when asked to.
        settings.backends.get_mut("claude").unwrap().routing = Routing::RoundRobin;
        let peek = names(&accounts.ranked(&settings, &quotas, Backend::Claude, false));
        let first = names(&accounts.ranked(&settings, &quotas, Backend::Claude, true));
        let second = names(&accounts.ranked(&settings, &quotas, Backend::Claude, true));
        assert_eq!(peek, first);
        assert_eq!(second, vec!["a", "b", "z"]);
    }
}
