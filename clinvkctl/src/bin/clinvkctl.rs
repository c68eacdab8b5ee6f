//! `clinvkctl`: operator commands for the clinvk daemon.

use clap::{CommandFactory, Parser, Subcommand};
use clinvkctl::cmd;

#[derive(Parser, Debug)]
#[command(
    name = "clinvkctl",
    version,
    about = "Operate the clinvk daemon (clinvkd): status, reload, stop, API keys, accounts, usage",
    after_help = "Exit codes: 0 ok, 1 failure (e.g. reload refused), 2 usage error, 3 no daemon running.\n\
The daemon is found through its control socket under $CLINVK_HOME (default ~/.clinvk/run or $XDG_RUNTIME_DIR/clinvk)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the daemon's pid, version, uptime, address, config, backends and running processes
    Status(cmd::status::StatusArgs),
    /// Re-read the configuration (like SIGHUP); an invalid file is refused and the old config stays
    Reload,
    /// Stop the daemon: in-flight requests get the grace period, then it exits
    Stop(cmd::stop::StopArgs),
    /// Manage the daemon's API keys (add, list, revoke)
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Several logins per CLI: list, add (log in, or a token on stdin), remove
    #[command(subcommand)]
    Accounts(cmd::accounts::AccountsCommand),
    /// Runs, tokens and cost from the usage store, grouped by day, key, backend, model or account
    Usage(cmd::usage::UsageArgs),
    /// Install, remove or inspect the daemon as a service (systemd user/system units, launchd agent)
    #[command(subcommand)]
    Service(cmd::service::ServiceCommand),
    /// Print the shell completion script (bash: `source <(clinvkctl completions bash)`)
    Completions(cmd::generate::CompletionsArgs),
    /// Write the man pages into a folder
    #[command(hide = true)]
    GenerateMan(cmd::generate::ManArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    clinvkctl::block_on(async move {
        match cli.command {
            Command::Status(a) => cmd::status::run(a).await,
            Command::Reload => cmd::reload::run().await,
            Command::Stop(a) => cmd::stop::run(a).await,
            Command::Keys(c) => cmd::keys::run(c).await,
            Command::Accounts(c) => cmd::accounts::run(c).await,
            Command::Usage(a) => cmd::usage::run(a).await,
            Command::Service(c) => cmd::service::run(c).await,
            Command::Completions(a) => cmd::generate::completions(Cli::command(), &a),
            Command::GenerateMan(a) => cmd::generate::man_pages(Cli::command(), &a),
        }
    })
}
