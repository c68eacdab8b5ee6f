//! `clinvk sessions list|show|delete|clean`.

use crate::{call_json, exit, print_json, ClientError};
use serde_json::json;

#[derive(clap::Subcommand, Debug)]
pub enum SessionsCommand {
    /// List sessions, most recently used first
    List {
        #[arg(long)]
        backend: Option<String>,
        /// active, completed, error, interrupted
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one session and its turns
    Show {
        /// Session id or unique prefix
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a session
    Delete { id: String },
    /// Delete sessions not used for a while
    Clean {
        /// Age, e.g. 30d, 12h, 2w
        #[arg(long, value_name = "AGE", required = true)]
        older_than: String,
    },
}

fn parse_days(age: &str) -> Result<u64, ClientError> {
    let (num, unit) = age.split_at(age.find(|c: char| !c.is_ascii_digit()).unwrap_or(age.len()));
    let n: u64 = num.parse().map_err(|_| {
        ClientError::Other(format!("cannot read the age {age:?}: use e.g. 30d or 2w"))
    })?;
    Ok(match unit {
        "d" | "" => n,
        "w" => n * 7,
        "h" => n / 24,
        _ => {
            return Err(ClientError::Other(format!(
                "unknown unit in {age:?}: use d, w or h"
            )))
        }
    })
}

pub async fn run(cmd: SessionsCommand) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    match cmd {
        SessionsCommand::List {
            backend,
            status,
            limit,
            json,
        } => {
            let v = call_json(
                &paths,
                "sessions.list",
                json!({"backend": backend, "status": status, "limit": limit}),
            )
            .await?;
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
            if sessions.is_empty() {
                println!("no sessions");
            }
            for s in sessions {
                println!(
                    "{}  {:<7} {:<11} {:>3} turns  {}  {}",
                    &s["id"].as_str().unwrap_or_default()
                        [..8.min(s["id"].as_str().unwrap_or_default().len())],
                    s["backend"].as_str().unwrap_or_default(),
                    s["status"].as_str().unwrap_or_default(),
                    s["turn_count"],
                    s["last_used"]
                        .as_str()
                        .unwrap_or_default()
                        .get(..19)
                        .unwrap_or_default(),
                    s["title"].as_str().unwrap_or_default()
                );
            }
            println!(
                "({} of {})",
                v["sessions"].as_array().map(|a| a.len()).unwrap_or(0),
                v["total"]
            );
        }
        SessionsCommand::Show { id, json } => {
            let s = call_json(&paths, "sessions.get", json!({"id": id})).await?;
            if json {
                print_json(&s);
                return Ok(exit::OK);
            }
            println!(
                "session {}  ({}, {})",
                s["id"].as_str().unwrap_or_default(),
                s["backend"].as_str().unwrap_or_default(),
                s["status"].as_str().unwrap_or_default()
            );
            println!("  title:    {}", s["title"].as_str().unwrap_or_default());
            println!("  workdir:  {}", s["working_dir"].as_str().unwrap_or("-"));
            println!(
                "  tokens:   {} in / {} out",
                s["token_usage"]["input_tokens"], s["token_usage"]["output_tokens"]
            );
            for (i, t) in s["turns"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                println!("\n[{}] {}", i + 1, t["at"].as_str().unwrap_or_default());
                println!("> {}", t["prompt"].as_str().unwrap_or_default());
                println!("{}", t["output_summary"].as_str().unwrap_or_default());
                if let Some(e) = t["error"].as_str() {
                    println!("(error: {e})");
                }
            }
        }
        SessionsCommand::Delete { id } => {
            let v = call_json(&paths, "sessions.delete", json!({"id": id})).await?;
            println!("deleted session {}", v["id"].as_str().unwrap_or_default());
        }
        SessionsCommand::Clean { older_than } => {
            let days = parse_days(&older_than)?;
            let v = call_json(&paths, "sessions.clean", json!({"older_than_days": days})).await?;
            println!(
                "deleted {} sessions unused for {days} days or more",
                v["deleted"]
            );
        }
    }
    Ok(exit::OK)
}
