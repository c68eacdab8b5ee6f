//! `accounts`: list the backends' accounts with their windows and login state (never a secret),
//! add a folder account (with a token given on standard input), remove one.

use crate::accounts::AccountDef;
use crate::ctx::Ctx;
use crate::error::{ApiError, Code, Kind};
use clinvk_shared::accounts::{is_valid_account_name, DEFAULT_ACCOUNT, TOKEN_FILE};
use clinvk_shared::api::Backend;
use clinvk_shared::quota::{Account, AccountAdded, AccountList, AccountRemoved, LoginCommand};

/// Every backend's accounts (the own login when a backend has none), with the quota windows
/// their CLIs last reported.
pub(crate) fn list(ctx: &Ctx) -> AccountList {
    let statuses = ctx.backend_statuses();
    let settings = ctx.settings();
    let mut accounts = Vec::new();
    for b in Backend::ALL {
        let available = statuses.iter().any(|s| s.name == b && s.available);
        let defs = ctx.accounts.list(&settings, b);
        if defs.is_empty() {
            accounts.push(Account {
                backend: b,
                account: DEFAULT_ACCOUNT.to_string(),
                available,
                limits: ctx.quotas.get(b, DEFAULT_ACCOUNT),
                login: "own".into(),
                token: false,
                source: "own".into(),
            });
        }
        for a in defs {
            accounts.push(Account {
                backend: b,
                available,
                limits: ctx.quotas.get(b, &a.name),
                login: login_state(b, &a).into(),
                token: a.token().is_some(),
                source: if a.configured { "config" } else { "folder" }.into(),
                account: a.name,
            });
        }
    }
    AccountList { accounts }
}

/// How an account logs in, as far as its folder and settings tell.
fn login_state(backend: Backend, a: &AccountDef) -> &'static str {
    let info = backend.info();
    if a.token().is_some() {
        "token"
    } else if info.login_vars.iter().any(|v| a.env.contains_key(*v)) {
        "env"
    } else if info
        .login
        .saved_login
        .iter()
        .chain([".credentials.json", "auth.json"].iter())
        .any(|f| {
            a.dir
                .join(info.state.under_var.unwrap_or(""))
                .join(f)
                .exists()
        })
    {
        "saved"
    } else {
        "unknown"
    }
}

fn bad(code: Code, msg: String) -> ApiError {
    ApiError::bad_request(code, msg)
}

/// Makes a folder account, storing `token` (never logged) when given.
pub(crate) fn add(
    ctx: &Ctx,
    backend: Backend,
    name: &str,
    token: Option<String>,
) -> Result<AccountAdded, ApiError> {
    if !is_valid_account_name(name) {
        return Err(bad(
            Code::InvalidAccount,
            format!("{name:?} is not a valid account name (1-64 letters, digits, _ and -; not `default`)"),
        ));
    }
    let info = backend.info();
    let token = token.map(|t| t.trim().to_string());
    if let Some(t) = &token {
        if info.token_var.is_none() {
            return Err(bad(
                Code::InvalidAccount,
                format!("{backend} takes no token by environment: add the account without --token and log in with {backend} in its folder"),
            ));
        }
        if t.is_empty() || t.contains(['\n', '\r', '\0']) {
            return Err(bad(
                Code::InvalidAccount,
                "the token is empty or spans several lines".into(),
            ));
        }
    }
    let settings = ctx.settings();
    if ctx.accounts.get(&settings, backend, name).is_some() {
        return Err(ApiError::new(
            Kind::Conflict,
            Code::AccountExists,
            format!("{backend} already has an account {name:?}"),
        ));
    }
    let dir = ctx.accounts.folder(backend, name);
    let io = |what: &str, e: std::io::Error| {
        ApiError::new(
            Kind::Internal,
            Code::AccountStoreError,
            format!("cannot {what} {}: {e}", dir.display()),
        )
    };
    crate::accounts::create_folder(&dir).map_err(|e| io("make the folder", e))?;
    if let Some(t) = &token {
        clinvk_shared::paths::write_private_atomic(&dir.join(TOKEN_FILE), t.as_bytes())
            .map_err(|e| io("store the token in", e))?;
    }
    ctx.accounts.scan();
    tracing::info!(backend = %backend, account = %name, token = token.is_some(), "account added");
    // The CLI the daemon runs (its configured command, resolved), else its name on PATH.
    let program = ctx
        .backends
        .get(backend)
        .and_then(|s| s.path)
        .unwrap_or_else(|| info.name.to_string());
    let login = token.is_none().then(|| LoginCommand {
        argv: std::iter::once(program)
            .chain(info.login_args.iter().map(|a| a.to_string()))
            .collect(),
        var: info.state.var.to_string(),
        value: dir.display().to_string(),
    });
    Ok(AccountAdded {
        backend,
        account: name.to_string(),
        folder: dir.display().to_string(),
        token: token.is_some(),
        login,
    })
}

/// Removes a folder account: its folder, with the CLI's state and the token in it. An account
/// listed in the configuration is removed there.
pub(crate) fn remove(ctx: &Ctx, backend: Backend, name: &str) -> Result<AccountRemoved, ApiError> {
    let settings = ctx.settings();
    let found = ctx
        .accounts
        .get(&settings, backend, name)
        .filter(|_| is_valid_account_name(name));
    let Some(a) = found else {
        return Err(ApiError::new(
            Kind::NotFound,
            Code::AccountNotFound,
            format!("{backend} has no account {name:?}"),
        ));
    };
    if a.configured {
        return Err(bad(
            Code::InvalidAccount,
            format!("the account {name:?} is listed in backends.{backend}.accounts: remove it from the configuration"),
        ));
    }
    std::fs::remove_dir_all(&a.dir).map_err(|e| {
        ApiError::new(
            Kind::Internal,
            Code::AccountStoreError,
            format!("cannot remove {}: {e}", a.dir.display()),
        )
    })?;
    ctx.accounts.scan();
    tracing::info!(backend = %backend, account = %name, "account removed");
    Ok(AccountRemoved {
        backend,
        account: name.to_string(),
    })
}
