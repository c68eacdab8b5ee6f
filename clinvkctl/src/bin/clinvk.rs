//! `clinvk`: the user's command. Everything goes through the daemon, started on demand.

use clap::{Parser, Subcommand};
use clinvkctl::cmd;

#[derive(Parser, Debug)]
#[command(
    name = "clinvk",
    version,
    about = "Use the claude, codex and gemini CLIs through the clinvk daemon",
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage error, 3 no daemon running, 130 interrupted.\n\
`clinvk serve` starts the daemon (clinvkd) in the background or attaches to the running one."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the HTTP server (the clinvkd daemon) or attach to the running one, and show requests
    Serve(cmd::serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    clinvkctl::block_on(async move {
        match cli.command {
            Command::Serve(a) => cmd::serve::run(a).await,
        }
    })
}
