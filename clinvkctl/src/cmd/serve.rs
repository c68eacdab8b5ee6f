//! `clinvk serve`: start the daemon (or attach to the running one) and show its requests.

use crate::{exit, start_daemon, status, ClientError, Connection, StartOptions};
use clinvk_shared::protocol::{AttachEvent, ClientFrame, Request, ServerFrame, StatusInfo};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to bind (default 127.0.0.1; 0.0.0.0 exposes the server to the network: set API keys)
    #[arg(long)]
    pub host: Option<String>,
    /// HTTP port (default 8080)
    #[arg(long, short = 'p')]
    pub port: Option<u16>,
    /// Config file for a daemon this command starts
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Return at once and leave the daemon running in the background
    #[arg(long, short = 'd')]
    pub detach: bool,
}

pub async fn run(args: ServeArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    // Installed before anything is printed, so a Ctrl-C right after the prompt is never lost.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (started, info) = match status(&paths, "clinvk").await {
        Ok(info) => (None, info),
        Err(ClientError::NotRunning(_)) => {
            let opts = StartOptions {
                host: args.host.clone(),
                port: args.port,
                config: args.config.clone(),
            };
            match start_daemon(&paths, &opts).await? {
                Some(s) => {
                    let info = s.status.clone();
                    (Some(s), info)
                }
                None => (None, status(&paths, "clinvk").await?),
            }
        }
        Err(e) => return Err(e),
    };
    match &started {
        Some(_) => println!(
            "clinvkd started (pid {}), serving {}",
            info.pid, info.http_url
        ),
        None => {
            println!(
                "clinvkd already running (pid {}), serving {}",
                info.pid, info.http_url
            );
            for m in mismatches(&args, &info) {
                eprintln!("warning: {m}; the running daemon keeps its address (stop it with `clinvkctl stop` to change it)");
            }
        }
    }
    if args.detach {
        return Ok(exit::OK);
    }
    println!(
        "Showing requests; press Ctrl-C to {}.",
        if started.is_some() {
            "stop the daemon"
        } else {
            "detach"
        }
    );
    let mut conn = Connection::open(&paths, "clinvk").await?;
    conn.send(&ClientFrame::Request(Request::Attach)).await?;
    loop {
        tokio::select! {
            frame = conn.recv() => match frame {
                Ok(ServerFrame::Event(v)) => {
                    if let Ok(ev) = serde_json::from_value::<AttachEvent>(v) { print_event(&ev); }
                }
                Ok(ServerFrame::End(_)) | Err(_) => {
                    println!("clinvkd has stopped");
                    if let Some(mut s) = started { let _ = s.child.wait().await; }
                    return Ok(exit::OK);
                }
                Ok(_) => {}
            },
            _ = sigint.recv() => break,
        }
    }
    match started {
        Some(mut s) => {
            eprintln!("stopping clinvkd (pid {})…", info.pid);
            drop(conn);
            match crate::request(&paths, "clinvk", Request::Stop).await {
                Ok(_) | Err(ClientError::NotRunning(_)) => {}
                Err(e) => return Err(e),
            }
            let status = s.child.wait().await?;
            eprintln!("clinvkd stopped ({status})");
            Ok(if status.success() {
                exit::OK
            } else {
                exit::FAILURE
            })
        }
        None => {
            eprintln!(
                "detached; clinvkd keeps running (pid {}). Stop it with `clinvkctl stop`.",
                info.pid
            );
            Ok(exit::OK)
        }
    }
}

/// What the user asked for that the running daemon does not match.
fn mismatches(args: &ServeArgs, info: &StatusInfo) -> Vec<String> {
    let mut out = Vec::new();
    let addr: Option<std::net::SocketAddr> = info.http_addr.parse().ok();
    if let (Some(p), Some(a)) = (args.port, addr) {
        if p != a.port() && p != 0 {
            out.push(format!(
                "--port {p} ignored: clinvkd already serves on port {}",
                a.port()
            ));
        }
    }
    if let (Some(h), Some(a)) = (&args.host, addr) {
        let same = h
            .parse::<std::net::IpAddr>()
            .map(|ip| ip == a.ip())
            .unwrap_or(h == "localhost" && a.ip().is_loopback());
        if !same {
            out.push(format!(
                "--host {h} ignored: clinvkd already serves on {}",
                a.ip()
            ));
        }
    }
    if args.config.is_some() {
        out.push("--config ignored: it applies only when this command starts the daemon (use `clinvkctl reload`)".into());
    }
    out
}

fn short_time(rfc3339: &str) -> &str {
    rfc3339.get(11..19).unwrap_or(rfc3339)
}

fn print_event(ev: &AttachEvent) {
    match ev {
        AttachEvent::Request {
            time,
            request_id,
            method,
            path,
            status,
            duration_ms,
        } => {
            println!(
                "{} {method} {path} {status} {duration_ms}ms [{request_id}]",
                short_time(time)
            )
        }
        AttachEvent::Log {
            time,
            level,
            message,
        } => println!("{} {level} {message}", short_time(time)),
        AttachEvent::Stopping { reason } => println!("clinvkd is stopping ({reason})"),
    }
}
