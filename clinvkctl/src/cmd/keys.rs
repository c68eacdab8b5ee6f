//! `clinvkctl keys add|list|revoke`: the daemon's own API keys (stored hashed; live at once),
//! with their scopes, quotas and expiry.

use crate::{exit, print_json, unexpected, ClientError};
use clinvk_shared::api::{KeyAddRequest, KeyInfo, Scope};
use clinvk_shared::protocol::{KeysRequest, Reply, Request};

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored
    Add {
        /// A name to recognise the key by
        name: String,
        /// What the key may do: read (list sessions and usage), use (also run prompts), admin
        /// (also manage keys over HTTP)
        #[arg(long, value_enum, default_value = "use")]
        scope: ScopeArg,
        /// Runs it may start per UTC day (then 429 quota_exceeded until midnight UTC)
        #[arg(long, value_name = "N")]
        requests_per_day: Option<u64>,
        /// Tokens (input + output) its runs may use per UTC day
        #[arg(long, value_name = "N")]
        tokens_per_day: Option<u64>,
        /// Runs it may have going at once
        #[arg(long, value_name = "N")]
        max_concurrent: Option<u32>,
        /// When it stops working, from now: e.g. 30d, 12h
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List the stored keys (names, ids, prefixes, scopes, use against quotas — never the keys)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id or name
    Revoke { id: String },
}

/// `--scope`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ScopeArg {
    Read,
    Use,
    Admin,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Scope {
        match s {
            ScopeArg::Read => Scope::Read,
            ScopeArg::Use => Scope::Use,
            ScopeArg::Admin => Scope::Admin,
        }
    }
}

async fn keys(paths: &clinvk_shared::paths::Paths, req: KeysRequest) -> Result<Reply, ClientError> {
    // Never start a daemon for this: keys belong to a running one.
    crate::request(paths, "clinvkctl", Request::Keys(req)).await
}

/// `used/limit`, or `used` without a limit.
fn against(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(l) => format!("{used}/{l}"),
        None => used.to_string(),
    }
}

fn line(k: &KeyInfo) -> String {
    let scope = clinvk_shared::api::wire_name(&k.scope);
    let expiry = match (&k.expires_at, k.expired) {
        (_, true) => "  EXPIRED".to_string(),
        (Some(t), false) => format!("  expires {t}"),
        (None, false) => String::new(),
    };
    format!(
        "{}  {:<20} {}…  {:<5}  today: requests {}  tokens {}  running {}  created {}{expiry}",
        k.id,
        k.name,
        k.prefix,
        scope,
        against(k.today.requests, k.quotas.requests_per_day),
        against(k.today.tokens, k.quotas.tokens_per_day),
        against(
            u64::from(k.today.running),
            k.quotas.max_concurrent.map(u64::from)
        ),
        k.created_at,
    )
}

pub async fn run(cmd: KeysCommand) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    match cmd {
        KeysCommand::Add {
            name,
            scope,
            requests_per_day,
            tokens_per_day,
            max_concurrent,
            expires,
        } => {
            let req = KeyAddRequest {
                name: name.clone(),
                scope: scope.into(),
                requests_per_day,
                tokens_per_day,
                max_concurrent,
                expires,
            };
            match keys(&paths, KeysRequest::Add(req)).await? {
                Reply::KeyAdded(k) => {
                    eprintln!(
                        "created key {} ({name}, scope {}); store it now, it is not shown again:",
                        k.info.id,
                        clinvk_shared::api::wire_name(&k.info.scope)
                    );
                    println!("{}", k.key);
                }
                other => return Err(unexpected(other)),
            }
        }
        KeysCommand::List { json } => {
            let v = match keys(&paths, KeysRequest::List).await? {
                Reply::Keys(v) => v,
                other => return Err(unexpected(other)),
            };
            if json {
                print_json(&v);
            } else {
                for k in &v.keys {
                    println!("{}", line(k));
                }
                let auth = clinvk_shared::api::wire_name(&v.auth);
                println!(
                    "keys {} (server.auth: {auth})",
                    if v.required {
                        "are required"
                    } else {
                        "are not required"
                    }
                );
            }
        }
        KeysCommand::Revoke { id } => {
            match keys(&paths, KeysRequest::Revoke { id: id.clone() }).await? {
                Reply::KeyRevoked(v) => {
                    println!("revoked {id}");
                    if v.remaining == 0 && v.required {
                        eprintln!(
                        "no key is left: the API stays closed (every request gets 401) until you add \
one with `clinvkctl keys add NAME`, or set server.auth: off to open it"
                    );
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }
    Ok(exit::OK)
}
