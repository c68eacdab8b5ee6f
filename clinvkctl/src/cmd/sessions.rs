//! `clinvk sessions list|show|delete|clean`.

use crate::{call, exit, print_json, unexpected, ClientError};
use clinvk_shared::api::{from_wire, wire_name, ListQuery, SessionStatus};
use clinvk_shared::protocol::{Reply, Request, SessionsRequest};

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

/// A `--status` value.
fn parse_status(s: &str) -> Result<SessionStatus, ClientError> {
    from_wire(s).ok_or_else(|| {
        ClientError::Other(format!(
            "unknown status {s:?}: use active, completed, error or interrupted"
        ))
    })
}

async fn sessions(
    paths: &clinvk_shared::paths::Paths,
    req: SessionsRequest,
) -> Result<Reply, ClientError> {
    call(paths, Request::Sessions(req)).await
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
            let q = ListQuery {
                backend,
                status: status.as_deref().map(parse_status).transpose()?,
                limit: Some(limit),
                offset: None,
            };
            let v = match sessions(&paths, SessionsRequest::List(q)).await? {
                Reply::Sessions(v) => v,
                other => return Err(unexpected(other)),
            };
            if json {
                print_json(&v);
                return Ok(exit::OK);
            }
            if v.sessions.is_empty() {
                println!("no sessions");
            }
            for s in &v.sessions {
                println!(
                    "{}  {:<7} {:<11} {:>3} turns  {}  {}",
                    &s.id[..8.min(s.id.len())],
                    s.backend,
                    wire_name(&s.status),
                    s.turn_count,
                    s.last_used.get(..19).unwrap_or_default(),
                    s.title
                );
            }
            println!("({} of {})", v.sessions.len(), v.total);
        }
        SessionsCommand::Show { id, json } => {
            let s = match sessions(&paths, SessionsRequest::Get { id }).await? {
                Reply::Session(s) => s,
                other => return Err(unexpected(other)),
            };
            if json {
                print_json(&s);
                return Ok(exit::OK);
            }
            let i = &s.info;
            println!(
                "session {}  ({}, {})",
                i.id,
                i.backend,
                wire_name(&i.status)
            );
            println!("  title:    {}", i.title);
            println!("  workdir:  {}", i.working_dir.as_deref().unwrap_or("-"));
            println!(
                "  tokens:   {} in / {} out",
                i.token_usage.input_tokens, i.token_usage.output_tokens
            );
            for (n, t) in s.turns.iter().enumerate() {
                println!("\n[{}] {}", n + 1, t.at);
                println!("> {}", t.prompt);
                println!("{}", t.output_summary);
                if let Some(e) = &t.error {
                    println!("(error: {e})");
                }
            }
        }
        SessionsCommand::Delete { id } => {
            match sessions(&paths, SessionsRequest::Delete { id }).await? {
                Reply::SessionDeleted(v) => println!("deleted session {}", v.id),
                other => return Err(unexpected(other)),
            }
        }
        SessionsCommand::Clean { older_than } => {
            let days = parse_days(&older_than)?;
            match sessions(
                &paths,
                SessionsRequest::Clean {
                    older_than_days: days,
                },
            )
            .await?
            {
                Reply::SessionsCleaned { deleted } => {
                    println!("deleted {deleted} sessions unused for {days} days or more")
                }
                other => return Err(unexpected(other)),
            }
        }
    }
    Ok(exit::OK)
}
