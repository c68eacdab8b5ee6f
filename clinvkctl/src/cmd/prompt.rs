//! `clinvk [-b BACKEND] [-m MODEL] [-w DIR] "prompt"` and `clinvk resume`: run a prompt through
//! the daemon, streaming the answer to the terminal as it arrives.

use crate::{ensure_daemon, exit, ClientError};
use clinvk_shared::protocol::{ClientFrame, Request, ServerFrame};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PromptOptions {
    /// Backend: claude, codex or gemini (default: default_backend from the config)
    #[arg(short, long, global = true)]
    pub backend: Option<String>,
    /// Model (default: the backend's configured model, else the CLI's default)
    #[arg(short, long, global = true)]
    pub model: Option<String>,
    /// Working folder for the CLI (absolute; default: the current folder)
    #[arg(short, long, value_name = "DIR", global = true)]
    pub workdir: Option<std::path::PathBuf>,
    /// text (stream the answer), json (the result object), stream-json (one event per line)
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "text", global = true,
          value_parser = ["text", "json", "stream-json"])]
    pub output_format: String,
    /// Do not keep a session for this prompt
    #[arg(long, global = true)]
    pub ephemeral: bool,
    /// Print the exact command that would run, run nothing
    #[arg(long, global = true)]
    pub dry_run: bool,
}

/// Runs `body` as a prompt and renders it; returns the exit code.
pub async fn run(opts: &PromptOptions, mut body: Value) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    if let Some(b) = &opts.backend {
        body["backend"] = json!(b);
    }
    if let Some(m) = &opts.model {
        body["model"] = json!(m);
    }
    let workdir = match &opts.workdir {
        Some(w) => std::path::absolute(w)?,
        None => std::env::current_dir()?,
    };
    body["workdir"] = json!(workdir);
    body["ephemeral"] = json!(opts.ephemeral);
    body["dry_run"] = json!(opts.dry_run);
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut conn = ensure_daemon(&paths, "clinvk").await?;
    conn.send(&ClientFrame::Request(Request::Call {
        op: "prompt".into(),
        body,
    }))
    .await?;
    let spinner = opts.output_format == "text" && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut printed_any = false;
    let mut spin_tick = tokio::time::interval(Duration::from_millis(120));
    let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut n = 0usize;
    let mut stdout = std::io::stdout();
    loop {
        let frame = tokio::select! {
            f = conn.recv() => f?,
            _ = sigint.recv() => {
                if spinner { eprint!("\r\x1b[K"); }
                eprintln!("interrupted; the run is cancelled");
                return Ok(exit::INTERRUPTED); // closing the connection cancels the run in the daemon
            }
            _ = spin_tick.tick(), if spinner && !printed_any => {
                eprint!("\r{} waiting for the answer… {}s", frames[n % frames.len()], started.elapsed().as_secs());
                n += 1;
                continue;
            }
        };
        match frame {
            ServerFrame::Event(ev) => {
                if opts.output_format == "stream-json" {
                    println!("{ev}");
                    continue;
                }
                if opts.output_format != "text" {
                    continue;
                }
                match ev["type"].as_str() {
                    Some("message") => {
                        if spinner && !printed_any {
                            eprint!("\r\x1b[K");
                        }
                        printed_any = true;
                        let _ = write!(
                            stdout,
                            "{}",
                            ev["content"]["text"].as_str().unwrap_or_default()
                        );
                        let _ = stdout.flush();
                    }
                    Some("error") => eprintln!(
                        "\nerror: {}",
                        ev["content"]["message"].as_str().unwrap_or_default()
                    ),
                    _ => {}
                }
            }
            ServerFrame::End(result) => {
                if spinner && !printed_any {
                    eprint!("\r\x1b[K");
                }
                if opts.dry_run || opts.output_format == "json" {
                    crate::print_json(&result);
                } else if opts.output_format == "stream-json" {
                    println!("{}", json!({"type": "done", "content": result}));
                } else if printed_any {
                    println!();
                } else if let Some(out) = result["output"].as_str().filter(|o| !o.is_empty()) {
                    println!("{out}");
                }
                let failed = !result["error"].is_null();
                if failed && opts.output_format == "text" {
                    eprintln!("error: {}", result["error"].as_str().unwrap_or_default());
                }
                if let (Some(sid), "text") =
                    (result["session_id"].as_str(), opts.output_format.as_str())
                {
                    if std::io::stderr().is_terminal() {
                        eprintln!(
                            "(session {sid}; continue with `clinvk resume {}`)",
                            &sid[..8.min(sid.len())]
                        );
                    }
                }
                return Ok(if failed { exit::FAILURE } else { exit::OK });
            }
            ServerFrame::Error(e) => return Err(ClientError::Daemon(e)),
            _ => {}
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// Continue the most recently used session
    #[arg(long)]
    pub last: bool,
    /// `ID PROMPT` (the session id or a unique prefix, then the prompt), or `PROMPT` with --last
    #[arg(required = true, num_args = 1..=2, value_names = ["ID", "PROMPT"])]
    pub args: Vec<String>,
}

/// `clinvk resume [--last | ID] "prompt"`.
pub async fn resume(opts: &PromptOptions, args: ResumeArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    let (session, prompt) = match (args.last, args.args.as_slice()) {
        (false, [id, prompt]) => (Some(id.clone()), prompt.clone()),
        (true, [prompt]) => (None, prompt.clone()),
        (true, _) => {
            return Err(ClientError::Other(
                "with --last, give only the prompt".into(),
            ))
        }
        (false, _) => {
            return Err(ClientError::Other(
                "give the session id and the prompt, or use --last".into(),
            ))
        }
    };
    let id = match session {
        Some(id) => id,
        None => {
            let mut q = json!({"limit": 1});
            if let Some(b) = &opts.backend {
                q["backend"] = json!(b);
            }
            let list = crate::call_json(&paths, "sessions.list", q).await?;
            list["sessions"][0]["id"]
                .as_str()
                .ok_or_else(|| ClientError::Other("there is no session to resume yet".into()))?
                .to_string()
        }
    };
    let mut opts = opts.clone();
    // The session decides the backend and working folder unless given.
    let body = json!({"prompt": prompt, "session_id": id});
    if opts.workdir.is_none() {
        let s = crate::call_json(&paths, "sessions.get", json!({"id": id})).await?;
        if let Some(w) = s["working_dir"].as_str() {
            opts.workdir = Some(w.into());
        }
        if opts.backend.is_none() {
            opts.backend = s["backend"].as_str().map(str::to_string);
        }
    }
    run(&opts, body).await
}
