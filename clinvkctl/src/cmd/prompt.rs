//! `clinvk [-b BACKEND] [-m MODEL] [-w DIR] "prompt"` and `clinvk resume`: run a prompt through
//! the daemon, streaming the answer to the terminal as it arrives.

use crate::{ensure_daemon, exit, unexpected, ClientError};
use clinvk_shared::api::{Done, ListQuery, PromptOutcome, PromptRequest, RunEvent};
use clinvk_shared::protocol::{ClientFrame, Event, Reply, Request, ServerFrame, SessionsRequest};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PromptOptions {
    /// Backend: a CLI name such as claude, codex or gemini (default: default_backend from the config)
    #[arg(short, long, global = true)]
    pub backend: Option<String>,
    /// Model (default: the backend's configured model, else the CLI's default)
    #[arg(short, long, global = true)]
    pub model: Option<String>,
    /// Working folder for the CLI (absolute; default: the current folder)
    #[arg(short, long, value_name = "DIR", global = true)]
    pub workdir: Option<std::path::PathBuf>,
    /// text (stream the answer), json (the result object), stream-json (one event per line);
    /// default: output.format from the config, else text
    #[arg(short = 'o', long, value_name = "FORMAT", global = true,
          value_parser = ["text", "json", "stream-json"])]
    pub output_format: Option<String>,
    /// Do not keep a session for this prompt
    #[arg(long, global = true)]
    pub ephemeral: bool,
    /// Print the exact command that would run, run nothing
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Structured output: a JSON Schema file the answer must match (the answer is then that JSON)
    #[arg(long, value_name = "FILE", global = true)]
    pub output_schema: Option<std::path::PathBuf>,
}

/// Runs `req` as a prompt (with the options' backend, model, workdir — default: the current
/// folder, sent explicitly) and renders it; returns the exit code.
pub async fn run(opts: &PromptOptions, mut req: PromptRequest) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    if opts.backend.is_some() {
        req.backend = opts.backend.clone();
    }
    if opts.model.is_some() {
        req.model = opts.model.clone();
    }
    let workdir = match &opts.workdir {
        Some(w) => std::path::absolute(w)?,
        None => std::env::current_dir()?,
    };
    req.workdir = Some(workdir.display().to_string());
    req.ephemeral = opts.ephemeral;
    req.dry_run = opts.dry_run;
    if let Some(file) = &opts.output_schema {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ClientError::Other(format!(
                "cannot read the output schema {}: {e}",
                file.display()
            ))
        })?;
        req.output_schema = Some(
            serde_json::from_str(&text)
                .map_err(|e| ClientError::Other(format!("{} is not JSON: {e}", file.display())))?,
        );
    }
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut conn = ensure_daemon(&paths, "clinvk").await?;
    conn.send(&ClientFrame::Request(Request::Prompt(Box::new(req))))
        .await?;
    let display = display_settings(&paths);
    let format = opts
        .output_format
        .clone()
        .unwrap_or_else(|| display.format.clone());
    let spinner = format == "text" && std::io::stderr().is_terminal();
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
            ServerFrame::Event(Event::Run(ev)) => {
                if format == "stream-json" {
                    crate::print_line(&ev);
                    continue;
                }
                if format != "text" {
                    continue;
                }
                match ev {
                    RunEvent::Message { text, .. } => {
                        if spinner && !printed_any {
                            eprint!("\r\x1b[K");
                        }
                        printed_any = true;
                        let _ = write!(stdout, "{text}");
                        let _ = stdout.flush();
                    }
                    RunEvent::Error { message, .. } => eprintln!("\nerror: {message}"),
                    // Shown only with `-o stream-json` (and a heartbeat never comes here).
                    RunEvent::Init { .. }
                    | RunEvent::ToolUse { .. }
                    | RunEvent::ToolResult { .. }
                    | RunEvent::Thinking { .. }
                    | RunEvent::Heartbeat
                    | RunEvent::Done(_) => {}
                }
            }
            ServerFrame::Reply(Reply::Prompt(outcome)) => {
                if spinner && !printed_any {
                    eprint!("\r\x1b[K");
                }
                let result = match *outcome {
                    PromptOutcome::DryRun(d) => {
                        crate::print_json(&d);
                        return Ok(exit::OK);
                    }
                    PromptOutcome::Result(r) => r,
                };
                if format == "json" {
                    crate::print_json(&result);
                } else if format == "stream-json" {
                    crate::print_line(&RunEvent::Done(Done::from(&result)));
                } else if printed_any {
                    println!();
                } else if !result.output.is_empty() {
                    println!("{}", result.output);
                }
                let failed = result.error.is_some();
                if let (Some(e), "text") = (&result.error, format.as_str()) {
                    eprintln!("error: {e}");
                }
                if format == "text" && display.show_tokens {
                    eprintln!(
                        "tokens: {} in, {} out",
                        result.token_usage.input_tokens, result.token_usage.output_tokens
                    );
                }
                if format == "text" && display.show_timing {
                    eprintln!("time: {:.1} s", result.duration_ms as f64 / 1000.0);
                }
                if let (Some(sid), "text") = (&result.session_id, format.as_str()) {
                    if std::io::stderr().is_terminal() {
                        eprintln!(
                            "(session {sid}; continue with `clinvk resume {}`)",
                            &sid[..8.min(sid.len())]
                        );
                    }
                }
                return Ok(if failed { exit::FAILURE } else { exit::OK });
            }
            ServerFrame::Reply(other) => return Err(unexpected(other)),
            ServerFrame::Error(e) => return Err(ClientError::Daemon(e)),
            _ => {}
        }
    }
}

/// The config's `output` section (how answers are shown); defaults when it cannot be read (the
/// daemon reports a broken config).
fn display_settings(paths: &clinvk_shared::paths::Paths) -> clinvk_shared::config::OutputSettings {
    clinvk_shared::config::load_as_daemon(paths)
        .1
        .map(|l| l.settings.output)
        .unwrap_or_default()
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
            let q = ListQuery {
                backend: opts.backend.clone(),
                limit: Some(1),
                ..Default::default()
            };
            match crate::call(&paths, Request::Sessions(SessionsRequest::List(q))).await? {
                Reply::Sessions(page) => page
                    .sessions
                    .into_iter()
                    .next()
                    .map(|s| s.id)
                    .ok_or_else(|| {
                        ClientError::Other("there is no session to resume yet".into())
                    })?,
                other => return Err(unexpected(other)),
            }
        }
    };
    let mut opts = opts.clone();
    // The session decides the backend and working folder unless given.
    if opts.workdir.is_none() {
        let s = match crate::call(
            &paths,
            Request::Sessions(SessionsRequest::Get { id: id.clone() }),
        )
        .await?
        {
            Reply::Session(s) => s,
            other => return Err(unexpected(other)),
        };
        if let Some(w) = &s.info.working_dir {
            opts.workdir = Some(w.into());
        }
        if opts.backend.is_none() {
            opts.backend = Some(s.info.backend.to_string());
        }
    }
    let req = PromptRequest {
        prompt: Some(prompt),
        session_id: Some(id),
        ..Default::default()
    };
    run(&opts, req).await
}
