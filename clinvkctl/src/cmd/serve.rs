//! `clinvk serve`: start the daemon (or attach to the running one) and show its requests.

use crate::{exit, start_daemon, status, ClientError, Connection, StartOptions};
use clinvk_shared::protocol::{AttachEvent, ClientFrame, Event, Request, ServerFrame, StatusInfo};
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
    /// Serve a non-loopback --host without API keys (refused otherwise: anyone on the network
    /// could run agents as you)
    #[arg(long)]
    pub insecure: bool,
    /// Return at once and leave the daemon running in the background
    #[arg(long, short = 'd')]
    pub detach: bool,
}

pub async fn run(args: ServeArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    // Installed before anything is printed, so a Ctrl-C right after the prompt is never lost.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    // A closed terminal (SIGHUP) or a service manager's SIGTERM stops what this command
    // started, as Ctrl-C does: no orphan daemon is left behind.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let (started, info) = match status(&paths, "clinvk").await {
        Ok(info) => (None, info),
        Err(ClientError::NotRunning(_)) => {
            let opts = StartOptions {
                host: args.host.clone(),
                port: args.port,
                config: args.config.clone(),
                insecure: args.insecure,
            };
            match start_daemon(&paths, &opts).await {
                Ok(Some(s)) => {
                    let info = s.status.clone();
                    (Some(s), info)
                }
                Ok(None) => (None, status(&paths, "clinvk").await?),
                Err(e) => (None, port_owner(&paths, &args, e).await?),
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
                "clinvkd already running (pid {}{}), serving {}",
                info.pid,
                if info.socket_activated {
                    ", socket-activated service"
                } else {
                    ""
                },
                info.http_url
            );
            for m in mismatches(&args, &info) {
                eprintln!("warning: {m}; the running daemon keeps its address (stop it with `clinvkctl stop` to change it)");
            }
        }
    }
    println!(
        "Dashboard: {}/ui · API docs: {}/docs",
        info.http_url, info.http_url
    );
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
                Ok(ServerFrame::Event(Event::Attach(ev))) => print_event(&ev),
                Ok(ServerFrame::End) | Err(_) => {
                    println!("clinvkd has stopped");
                    if let Some(mut s) = started { let _ = s.child.wait().await; }
                    return Ok(exit::OK);
                }
                Ok(_) => {}
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
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

/// The daemon we tried to start could not listen. When the port is held by a socket-activated
/// clinvkd (systemd owns the socket, the daemon starts on the first connection), a request to
/// its `/health` starts it; if it is ours (same state folder, so same control socket), we attach
/// to it. Otherwise the error says who holds the port instead of a bare "address in use".
async fn port_owner(
    paths: &clinvk_shared::paths::Paths,
    args: &ServeArgs,
    start_error: ClientError,
) -> Result<StatusInfo, ClientError> {
    if !matches!(start_error, ClientError::PortInUse(_)) {
        return Err(start_error);
    }
    let (host, port) = target_addr(paths, args);
    let Some(version) = probe_clinvkd(&host, port).await else {
        return Err(start_error);
    };
    // The daemon binds its control socket before it serves HTTP, so once /health has answered,
    // ours would answer at once; the short wait only absorbs slow machines.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match status(paths, "clinvk").await {
            Ok(info) => return Ok(info),
            Err(ClientError::NotRunning(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(_) => break,
        }
    }
    Err(ClientError::Other(format!(
        "port {port} on {host} is served by another clinvkd ({version}), most likely a \
socket-activated service (systemd clinvkd.socket), but its control socket is not {} (another \
user or state folder), so `clinvk serve` cannot attach to it. Use that service \
(`systemctl --user status clinvkd.socket`, or `systemctl status clinvkd.socket`), or start \
your own daemon on another port with --port.",
        paths.socket().display()
    )))
}

/// Where a daemon started by this command would listen: flags, else the config file and
/// `CLINVK_*` environment, else the defaults.
fn target_addr(paths: &clinvk_shared::paths::Paths, args: &ServeArgs) -> (String, u16) {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let explicit = args.config.is_some();
    let file = args
        .config
        .clone()
        .unwrap_or_else(|| paths.default_config_file());
    let settings = clinvk_shared::config::load(&file, explicit, &env)
        .map(|l| l.settings)
        .unwrap_or_default();
    let host = args.host.clone().unwrap_or(settings.server.host);
    let host = if host == "0.0.0.0" || host == "::" || host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    (host, args.port.unwrap_or(settings.server.port))
}

/// `Some("clinvkd <version>")` when `/health` on `host:port` answers as clinvkd does.
async fn probe_clinvkd(host: &str, port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.ok()?;
        let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        conn.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let body = text.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
        if v.get("uptime_ms").is_none() {
            // With auth on, /health tells a client without a key only its status.
            let status = v.get("status")?.as_str()?;
            return ["ok", "degraded", "unhealthy"]
                .contains(&status)
                .then(|| "clinvkd (version shown only with a key)".to_string());
        }
        Some(format!(
            "clinvkd {}",
            v.get("version").and_then(|x| x.as_str()).unwrap_or("?")
        ))
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), exchange)
        .await
        .ok()
        .flatten()
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
