//! `clinvkctl keys add|list|revoke`: the daemon's own API keys (stored hashed; live at once).

use crate::{exit, print_json, unexpected, ClientError};
use clinvk_shared::protocol::{KeysRequest, Reply, Request};

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored
    Add {
        /// A name to recognise the key by
        name: String,
    },
    /// List the stored keys (names, ids, prefixes — never the keys)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id or name
    Revoke { id: String },
}

async fn keys(paths: &clinvk_shared::paths::Paths, req: KeysRequest) -> Result<Reply, ClientError> {
    // Never start a daemon for this: keys belong to a running one.
    crate::request(paths, "clinvkctl", Request::Keys(req)).await
}

pub async fn run(cmd: KeysCommand) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    match cmd {
        KeysCommand::Add { name } => {
            match keys(&paths, KeysRequest::Add { name: name.clone() }).await? {
                Reply::KeyAdded(k) => {
                    eprintln!(
                        "created key {} ({name}); store it now, it is not shown again:",
                        k.info.id
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
                    println!("{}  {:<20} {}…  {}", k.id, k.name, k.prefix, k.created_at);
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
