//! The table of CLIs clinvk drives: what the clients and the daemon both need to know of each —
//! its name, npm package, tested version, state folder and how to tell it is logged in. One row
//! per CLI; everything else about a CLI (argv, output parsing, live protocol, capabilities) is
//! the daemon's, in that CLI's backend module.

use crate::api::Backend;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What everyone knows of one CLI.
#[derive(Debug)]
pub struct CliInfo {
    pub backend: Backend,
    /// Its name on the wire, in the config and on the command line (also its program's name).
    pub name: &'static str,
    /// The product, for people (`Claude Code`).
    pub product: &'static str,
    pub npm_package: &'static str,
    /// Its key in `tests/cli-versions.env` (the version the test suite pins).
    pub version_key: &'static str,
    pub state: StateFolder,
    pub login: LoginCheck,
    /// The variable an account's stored token is passed in (`clinvkctl accounts add --token
    /// -`); None: the CLI takes no token by environment (log in inside the account's folder).
    pub token_var: Option<&'static str>,
    /// The CLI's own login command (after the program), run in an account's folder.
    pub login_args: &'static [&'static str],
    /// The variables that carry a login (keys, tokens): an account's CLI never sees the
    /// daemon's own values of these, only the account's.
    pub login_vars: &'static [&'static str],
}

/// Where a CLI keeps its state and logins, and the variable that moves it.
#[derive(Debug)]
pub struct StateFolder {
    /// The variable (`CLAUDE_CONFIG_DIR`, `CODEX_HOME`, `GEMINI_CLI_HOME`, `COPILOT_HOME`,
    /// `XDG_DATA_HOME`).
    pub var: &'static str,
    /// When the variable names a folder above the state folder (gemini's home, opencode's XDG
    /// data folder): the state folder's path under it (`.gemini`, `opencode`).
    pub under_var: Option<&'static str>,
    /// The folder under the home when the variable is unset (`.claude`).
    pub folder: &'static str,
}

impl StateFolder {
    /// The folder in force for a child environment (`HOME` and the variable from `env`).
    pub fn resolve(&self, env: &BTreeMap<String, String>) -> PathBuf {
        let home = || PathBuf::from(env.get("HOME").cloned().unwrap_or_default());
        match env.get(self.var).filter(|v| !v.trim().is_empty()) {
            Some(v) => match self.under_var {
                Some(sub) => PathBuf::from(v).join(sub),
                None => PathBuf::from(v),
            },
            None => home().join(self.folder),
        }
    }
}

/// A status command of the CLI's own.
#[derive(Debug)]
pub enum StatusCommand {
    /// Prints JSON with `loggedIn` (and `authMethod`, `apiKeySource`; never the key).
    Json(&'static [&'static str]),
    /// Exits 0 when logged in.
    ExitCode(&'static [&'static str]),
}

/// A login by environment: every variable of `all_of` and one of `any_of` set.
#[derive(Debug)]
pub struct EnvLogin {
    /// What it is, for the report (`API key`, `Vertex AI`).
    pub label: &'static str,
    pub all_of: &'static [&'static str],
    pub any_of: &'static [&'static str],
}

/// How `clinvk doctor` tells, without the daemon, that a CLI can run as the user: tried in
/// this order, the first that holds wins.
#[derive(Debug)]
pub struct LoginCheck {
    pub status: Option<StatusCommand>,
    /// A TOML file in the state folder whose `model_provider` names a `model_providers.<p>`
    /// table with its key variable in `env_key` (codex's custom providers).
    pub provider_config: Option<&'static str>,
    pub env: &'static [EnvLogin],
    /// Files in the state folder that hold a saved login.
    pub saved_login: &'static [&'static str],
    /// What is missing, and what to do about it.
    pub missing: &'static str,
    pub fix: &'static str,
}

/// The CLIs, in the order of `Backend::ALL`.
pub const CLIS: [CliInfo; 5] = [
    CliInfo {
        backend: Backend::Claude,
        name: "claude",
        product: "Claude Code",
        npm_package: "@anthropic-ai/claude-code",
        version_key: "CLAUDE_CODE_VERSION",
        state: StateFolder {
            var: "CLAUDE_CONFIG_DIR",
            under_var: None,
            folder: ".claude",
        },
        login: LoginCheck {
            status: Some(StatusCommand::Json(&["auth", "status"])),
            provider_config: None,
            env: &[],
            saved_login: &[],
            missing: "not logged in",
            fix: "run `claude` and log in (/login), or set ANTHROPIC_API_KEY (in the daemon's environment or backends.claude.env)",
        },
        token_var: Some("CLAUDE_CODE_OAUTH_TOKEN"),
        login_args: &["auth", "login"],
        login_vars: &["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"],
    },
    CliInfo {
        backend: Backend::Codex,
        name: "codex",
        product: "OpenAI Codex CLI",
        npm_package: "@openai/codex",
        version_key: "CODEX_VERSION",
        state: StateFolder {
            var: "CODEX_HOME",
            under_var: None,
            folder: ".codex",
        },
        login: LoginCheck {
            status: Some(StatusCommand::ExitCode(&["login", "status"])),
            provider_config: Some("config.toml"),
            env: &[EnvLogin {
                label: "API key",
                all_of: &[],
                any_of: &["CODEX_API_KEY", "OPENAI_API_KEY"],
            }],
            saved_login: &[],
            missing: "not logged in",
            fix: "run `codex login`, or set OPENAI_API_KEY (in the daemon's environment or backends.codex.env)",
        },
        token_var: Some("CODEX_API_KEY"),
        login_args: &["login"],
        login_vars: &["CODEX_API_KEY", "OPENAI_API_KEY"],
    },
    CliInfo {
        backend: Backend::Gemini,
        name: "gemini",
        product: "Google Gemini CLI",
        npm_package: "@google/gemini-cli",
        version_key: "GEMINI_CLI_VERSION",
        state: StateFolder {
            var: "GEMINI_CLI_HOME",
            under_var: Some(".gemini"),
            folder: ".gemini",
        },
        login: LoginCheck {
            status: None,
            provider_config: None,
            env: &[
                EnvLogin {
                    label: "API key",
                    all_of: &[],
                    any_of: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
                },
                EnvLogin {
                    label: "Vertex AI",
                    all_of: &["GOOGLE_GENAI_USE_VERTEXAI"],
                    any_of: &["GOOGLE_CLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS"],
                },
            ],
            saved_login: &["oauth_creds.json"],
            missing: "not logged in (no GEMINI_API_KEY, no Vertex settings, no saved Google login)",
            fix: "run `gemini` once and log in with Google, or set GEMINI_API_KEY (in the daemon's environment or backends.gemini.env)",
        },
        token_var: Some("GEMINI_API_KEY"),
        login_args: &[],
        login_vars: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    },
    CliInfo {
        backend: Backend::Copilot,
        name: "copilot",
        product: "GitHub Copilot CLI",
        npm_package: "@github/copilot",
        version_key: "COPILOT_VERSION",
        state: StateFolder {
            var: "COPILOT_HOME",
            under_var: None,
            folder: ".copilot",
        },
        login: LoginCheck {
            status: None,
            provider_config: None,
            env: &[
                EnvLogin {
                    label: "GitHub token",
                    all_of: &[],
                    any_of: &["COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN"],
                },
                EnvLogin {
                    label: "own model provider",
                    all_of: &["COPILOT_PROVIDER_BASE_URL"],
                    any_of: &[],
                },
            ],
            saved_login: &[],
            missing: "no GitHub token and no own model provider in the environment (a login saved by `copilot login` cannot be checked without running it)",
            fix: "run `copilot login`, or set COPILOT_GITHUB_TOKEN (in the daemon's environment or backends.copilot.env)",
        },
        token_var: Some("COPILOT_GITHUB_TOKEN"),
        login_args: &["login"],
        login_vars: &["COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN"],
    },
    CliInfo {
        backend: Backend::Opencode,
        name: "opencode",
        product: "opencode",
        npm_package: "opencode-ai",
        version_key: "OPENCODE_VERSION",
        state: StateFolder {
            var: "XDG_DATA_HOME",
            under_var: Some("opencode"),
            folder: ".local/share/opencode",
        },
        login: LoginCheck {
            status: None,
            provider_config: None,
            env: &[EnvLogin {
                label: "API key",
                all_of: &[],
                any_of: &["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY"],
            }],
            saved_login: &["auth.json"],
            missing: "not logged in (no saved login, no provider API key)",
            fix: "run `opencode auth login`, or set a provider's API key such as ANTHROPIC_API_KEY (in the daemon's environment or backends.opencode.env)",
        },
        token_var: None,
        login_args: &["auth", "login"],
        login_vars: &[
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GEMINI_API_KEY",
            "OPENROUTER_API_KEY",
        ],
    },
];

/// The pinned CLI versions of the test suite.
const TESTED_VERSIONS: &str = include_str!("../../tests/cli-versions.env");

impl CliInfo {
    /// How to install it.
    pub fn install_hint(&self) -> String {
        format!("npm install -g {}", self.npm_package)
    }

    /// The version of the CLI clinvk is tested against (`tests/cli-versions.env`, compiled in).
    pub fn tested_version(&self) -> &'static str {
        TESTED_VERSIONS
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| k.trim() == self.version_key)
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_backend_in_order() {
        assert_eq!(CLIS.len(), Backend::ALL.len());
        for (row, b) in CLIS.iter().zip(Backend::ALL) {
            assert_eq!(row.backend, b);
            assert_eq!(b.info().name, b.as_str());
            let v = row.tested_version();
            assert_eq!(v.split('.').count(), 3, "{b}: {v:?}");
        }
    }

    #[test]
    fn state_folders() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let claude = &Backend::Claude.info().state;
        assert_eq!(
            claude.resolve(&env(&[("HOME", "/h")])),
            PathBuf::from("/h/.claude")
        );
        assert_eq!(
            claude.resolve(&env(&[("HOME", "/h"), ("CLAUDE_CONFIG_DIR", "/acct")])),
            PathBuf::from("/acct")
        );
        let gemini = &Backend::Gemini.info().state;
        assert_eq!(
            gemini.resolve(&env(&[("HOME", "/h"), ("GEMINI_CLI_HOME", "/g")])),
            PathBuf::from("/g/.gemini")
        );
    }
}
