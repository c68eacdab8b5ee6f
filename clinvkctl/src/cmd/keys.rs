//! `clinvkctl keys add|list|revoke`: the daemon's own API keys (stored hashed; live at once).

use crate::{call_json, exit, print_json, ClientError};
use serde_json::json;

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

pub async fn run(cmd: KeysCommand) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    crate::status(&paths, "clinvkctl").await?; // never start a daemon for this
    match cmd {
        KeysCommand::Add { name } => {
            let v = call_json(&paths, "keys.add", json!({"name": name})).await?;
            eprintln!(
                "created key {} ({}); store it now, it is not shown again:",
                v["id"].as_str().unwrap_or_default(),
                name
            );
            println!("{}", v["key"].as_str().unwrap_or_default());
        }
        KeysCommand::List { json } => {
            let v = call_json(&paths, "keys.list", json!({})).await?;
            if json {
                print_json(&v);
            } else {
                for k in v["keys"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{}  {:<20} {}…  {}",
                        k["id"].as_str().unwrap_or_default(),
                        k["name"].as_str().unwrap_or_default(),
                        k["prefix"].as_str().unwrap_or_default(),
                        k["created_at"].as_str().unwrap_or_default()
                    );
                }
                println!(
                    "keys {} (server.auth: {})",
                    if v["required"] == json!(true) {
                        "are required"
                    } else {
                        "are not required"
                    },
                    v["auth"].as_str().unwrap_or("auto")
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let v = call_json(&paths, "keys.revoke", json!({"id": id})).await?;
            println!("revoked {id}");
            if v["remaining"] == json!(0) && v["required"] == json!(true) {
                eprintln!(
                    "no key is left: the API stays closed (every request gets 401) until you add \
one with `clinvkctl keys add NAME`, or set server.auth: off to open it"
                );
            }
        }
    }
    Ok(exit::OK)
}
