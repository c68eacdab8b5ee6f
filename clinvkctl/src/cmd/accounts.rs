//! `clinvkctl accounts list|add|remove`: several logins per CLI. An account is a folder under
//! the daemon's state folder (`accounts/<backend>/<name>/`) that the CLI keeps its state and
//! login in; `add` makes it and either stores a token read from standard input (`--token -`,
//! never argv) or runs the CLI's own login there.

use crate::{exit, print_json, unexpected, ClientError};
use clinvk_shared::api::Backend;
use clinvk_shared::protocol::{AccountsRequest, Reply, Request};
use clinvk_shared::quota::{Account, AccountAdded};
use std::io::{IsTerminal, Read};

#[derive(clap::Subcommand, Debug)]
pub enum AccountsCommand {
    /// List every backend's accounts: login state and quota windows (never a token)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add an account: make its folder, then log in there (the CLI's own login, on a terminal)
    /// or store a token given on standard input
    Add {
        /// claude, codex, gemini, copilot or opencode
        backend: String,
        /// A name: letters, digits, _ and - (not `default`)
        name: String,
        /// `-`: read a token from standard input (a `claude setup-token` token, an OpenAI or
        /// Gemini API key, a GitHub token), stored 0600 in the folder and passed to the CLI by
        /// environment
        #[arg(long, value_name = "-")]
        token: Option<String>,
        /// Make the folder only; print how to log in there
        #[arg(long, conflicts_with = "token")]
        no_login: bool,
    },
    /// Remove an account: its folder, with the CLI's login and the token in it
    Remove { backend: String, name: String },
}

async fn accounts(req: AccountsRequest) -> Result<Reply, ClientError> {
    let paths = crate::paths()?;
    // Never start a daemon for this: the accounts belong to a running one.
    crate::request(&paths, "clinvkctl", Request::Accounts(req)).await
}

fn backend(name: &str) -> Result<Backend, ClientError> {
    Backend::from_name(name).ok_or_else(|| {
        ClientError::Other(format!(
            "unknown backend {name:?} (known: {})",
            Backend::ALL.map(|b| b.as_str()).join(", ")
        ))
    })
}

/// The token from standard input (the first line, trimmed).
fn read_token(arg: &str) -> Result<String, ClientError> {
    if arg != "-" {
        return Err(ClientError::Other(
            "--token takes `-` and reads the token from standard input (a token in argv would be visible to other users)".into(),
        ));
    }
    if std::io::stdin().is_terminal() {
        eprintln!("paste the token, then press Enter:");
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| ClientError::Other(format!("cannot read the token: {e}")))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(ClientError::Other("no token on standard input".to_string()));
    }
    Ok(token)
}

/// `claude/work  token  config  five_hour 91% allowed_warning, resets …`.
fn line(a: &Account) -> String {
    let windows = super::status::quota_lines(a)
        .into_iter()
        .map(|l| l.split_once(' ').map(|x| x.1.to_string()).unwrap_or(l))
        .collect::<Vec<_>>();
    let state = match &a.limits {
        Some(l) if windows.is_empty() => l.status.as_str().to_string(),
        Some(_) => windows.join("; "),
        None => "no windows reported".into(),
    };
    format!(
        "{:<24} login {:<8} {:<7} {state}",
        format!("{}/{}", a.backend, a.account),
        a.login,
        a.source,
    )
}

/// Runs the CLI's own login in the account's folder, on this terminal.
fn login(added: &AccountAdded) -> Result<u8, ClientError> {
    let Some(cmd) = &added.login else {
        return Ok(exit::OK);
    };
    let shown = format!("{}={} {}", cmd.var, cmd.value, cmd.argv.join(" "));
    if !std::io::stdin().is_terminal() {
        eprintln!("log in to it on a terminal (as the daemon's user): {shown}");
        return Ok(exit::OK);
    }
    eprintln!("logging in with {shown}");
    let status = std::process::Command::new(&cmd.argv[0])
        .args(&cmd.argv[1..])
        .env(&cmd.var, &cmd.value)
        .status()
        .map_err(|e| ClientError::Other(format!("cannot run `{}`: {e}", cmd.argv[0])))?;
    if status.success() {
        eprintln!(
            "logged in; new sessions of {} may use it now",
            added.backend
        );
        Ok(exit::OK)
    } else {
        eprintln!("the login did not finish ({status}); run it again: {shown}");
        Ok(exit::FAILURE)
    }
}

pub async fn run(cmd: AccountsCommand) -> Result<u8, ClientError> {
    match cmd {
        AccountsCommand::List { json } => {
            let v = match accounts(AccountsRequest::List).await? {
                Reply::Accounts(v) => v,
                other => return Err(unexpected(other)),
            };
            if json {
                print_json(&v);
            } else {
                for a in &v.accounts {
                    println!("{}", line(a));
                }
            }
            Ok(exit::OK)
        }
        AccountsCommand::Add {
            backend: b,
            name,
            token,
            no_login,
        } => {
            let backend = backend(&b)?;
            let token = token.as_deref().map(read_token).transpose()?;
            let added = match accounts(AccountsRequest::Add {
                backend,
                name,
                token,
            })
            .await?
            {
                Reply::AccountAdded(a) => a,
                other => return Err(unexpected(other)),
            };
            eprintln!(
                "added account {}/{} in {}{}",
                added.backend,
                added.account,
                added.folder,
                if added.token { " (token stored)" } else { "" }
            );
            if no_login {
                if let Some(cmd) = &added.login {
                    eprintln!(
                        "log in to it (as the daemon's user): {}={} {}",
                        cmd.var,
                        cmd.value,
                        cmd.argv.join(" ")
                    );
                }
                return Ok(exit::OK);
            }
            login(&added)
        }
        AccountsCommand::Remove { backend: b, name } => {
            let backend = backend(&b)?;
            match accounts(AccountsRequest::Remove { backend, name }).await? {
                Reply::AccountRemoved(r) => {
                    eprintln!("removed account {}/{}", r.backend, r.account);
                    Ok(exit::OK)
                }
                other => Err(unexpected(other)),
            }
        }
    }
}
