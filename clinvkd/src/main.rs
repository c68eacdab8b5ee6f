//! `clinvkd`: the clinvk daemon. Runs in the foreground, as service managers expect;
//! `clinvk serve` starts it in the background.

use clap::Parser;
use clinvk_shared::paths::Paths;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "clinvkd",
    version,
    about = "The clinvk daemon: serves the AI coding CLIs (claude, codex, gemini, …) over HTTP",
    long_about = "The clinvk daemon. It serves the native REST API (/api/v1), the OpenAI- and \
Anthropic-compatible APIs and /health on one HTTP listener (default 127.0.0.1:8080), and \
listens on a private control socket for clinvk and clinvkctl.\n\n\
It runs in the foreground. Use `clinvk serve` to start it in the background, or a service \
manager (see systemd/ and launchd/).\n\n\
Configuration: ~/.clinvk/config.yaml (or $CLINVK_CONFIG), then CLINVK_* environment variables \
(e.g. CLINVK_SERVER_PORT=9000), then these flags. State lives in ~/.clinvk (or $CLINVK_HOME).\n\n\
Signals: SIGTERM/SIGINT drain and stop (exit 0); SIGHUP reloads the configuration.\n\n\
Exit codes: 0 stopped cleanly; 98 the HTTP port is already in use; 1 any other failure."
)]
struct Args {
    /// Config file (default: ~/.clinvk/config.yaml, .yml or config.toml; env CLINVK_CONFIG)
    #[arg(long, short = 'c', value_name = "PATH", env = "CLINVK_CONFIG")]
    config: Option<PathBuf>,
    /// Address to bind the HTTP server to (default 127.0.0.1)
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// HTTP port (default 8080; 0 picks a free port, shown by `clinvkctl status`)
    #[arg(long, short = 'p', value_name = "PORT")]
    port: Option<u16>,
    /// Log to this file (rolled daily) instead of stderr
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// More logging: -v debug, -vv trace (RUST_LOG overrides)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Serve a non-loopback --host without authentication (refused otherwise: anyone on the
    /// network could run agents as you)
    #[arg(long)]
    insecure: bool,
    /// Start a new session (used by `clinvk serve` to detach from the terminal)
    #[arg(long, hide = true)]
    setsid: bool,
    /// Write the man page (clinvkd.8) into this folder and exit (used by scripts/build-man.sh)
    #[arg(long, hide = true, value_name = "DIR")]
    generate_man: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    // The daemon's start: temporary files written before it are stale (see the stores).
    clinvk_shared::paths::process_start();
    let args = Args::parse();
    if let Some(dir) = &args.generate_man {
        return match write_man(dir) {
            Ok(path) => {
                println!("{}", path.display());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "clinvkd: cannot write the man page into {}: {e}",
                    dir.display()
                );
                std::process::ExitCode::FAILURE
            }
        };
    }
    match start(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clinvkd: {e:#}");
            let port_in_use = e.chain().any(|c| {
                matches!(
                    c.downcast_ref(),
                    Some(clinvkd::StartError::PortInUse { .. })
                )
            });
            if port_in_use {
                std::process::ExitCode::from(clinvk_shared::EXIT_PORT_IN_USE)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    // Everything the daemon writes (logs, sessions, keys) is private; the CLIs get the user's
    // own umask back (see supervisor).
    clinvkd::supervisor::set_private_umask();
    // First, before any thread: taking the passed sockets clears LISTEN_* from the environment.
    let activation = clinvkd::service::take_activation()?;
    let paths = Paths::from_env()?;
    let explicit = args.config.is_some();
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| paths.default_config_file());
    let overrides = clinvkd::ctx::Overrides {
        host: args.host.clone(),
        port: args.port,
        log_file: args.log_file.clone(),
        insecure: args.insecure,
    };
    let loaded = clinvkd::ctx::load_settings(&config_path, explicit, &overrides)?;
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let filter = clinvkd::logging::filter_for(&loaded.settings.log.level, args.verbose);
    let log_file = loaded.settings.log.file.clone();
    let _guard = clinvkd::logging::init(filter, log_file.as_deref(), events.clone())?;
    if args.setsid {
        // Started in the background by `clinvk serve`: leave the terminal's session.
        let _ = nix::unistd::setsid();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let opts = clinvkd::DaemonOptions {
        paths,
        config_path,
        config_explicit: explicit,
        overrides,
        loaded,
        events,
        activation,
    };
    let result = runtime.block_on(clinvkd::run(opts, std::future::pending()));
    if let (Err(e), Some(_)) = (&result, &log_file) {
        tracing::error!("{e:#}");
    }
    result
}

/// The daemon's man page, in section 8 (system administration).
fn write_man(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("clinvkd.8");
    let mut out = Vec::new();
    clap_mangen::Man::new(Args::command())
        .section("8")
        .render(&mut out)?;
    std::fs::write(&path, out)?;
    Ok(path)
}
