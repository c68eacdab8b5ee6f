//! `clinvk`: the user's command. Everything goes through the daemon, started on demand.

use clap::{CommandFactory, Parser, Subcommand};
use clinvkctl::cmd;

#[derive(Parser, Debug)]
#[command(
    name = "clinvk",
    version,
    about = "Use the AI coding CLIs (claude, codex, gemini, …) through the clinvk daemon",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  clinvk \"explain this repository\"            # default backend, streams the answer\n  clinvk -b codex -m o4-mini \"write a test\"\n  clinvk resume --last \"and now the docs\"\n  clinvk sessions list\n  clinvk compare --backends claude,gemini \"what is a monad?\"\n  clinvk serve                                  # the HTTP server\n\n\
Exit codes: 0 ok, 1 failure (the run failed, or the daemon refused), 2 usage error,\n3 no daemon running (clinvkctl), 130 interrupted (Ctrl-C cancels the run in the daemon).\n\
Commands that run prompts start the daemon (clinvkd) when none runs."
)]
struct Cli {
    #[command(flatten)]
    opts: cmd::prompt::PromptOptions,
    /// The prompt to run
    prompt: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the HTTP server (the clinvkd daemon) or attach to the running one, and show requests
    Serve(cmd::serve::ServeArgs),
    /// Continue a session with a new prompt
    Resume(cmd::prompt::ResumeArgs),
    /// List, show, delete and clean sessions
    #[command(subcommand)]
    Sessions(cmd::sessions::SessionsCommand),
    /// Run many prompts at once from a JSON file
    Parallel(cmd::multi::ParallelArgs),
    /// Run prompts in sequence from a JSON file ({{previous}} is the previous output)
    Chain(cmd::multi::ChainArgs),
    /// Run one prompt on several backends
    Compare(cmd::multi::CompareArgs),
    /// Check the setup (CLIs found, versions, logins, config, daemon, port, auth, service) and say what to fix
    Doctor(cmd::doctor::DoctorArgs),
    /// Print the shell completion script (bash: `source <(clinvk completions bash)`)
    Completions(cmd::generate::CompletionsArgs),
    /// Write the man pages into a folder
    #[command(hide = true)]
    GenerateMan(cmd::generate::ManArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    clinvkctl::block_on(async move {
        match (cli.command, cli.prompt) {
            (Some(Command::Serve(a)), _) => cmd::serve::run(a).await,
            (Some(Command::Resume(a)), _) => cmd::prompt::resume(&cli.opts, a).await,
            (Some(Command::Sessions(c)), _) => cmd::sessions::run(c).await,
            (Some(Command::Parallel(a)), _) => cmd::multi::parallel(a).await,
            (Some(Command::Chain(a)), _) => cmd::multi::chain(a).await,
            (Some(Command::Compare(a)), _) => cmd::multi::compare(a).await,
            (Some(Command::Doctor(a)), _) => cmd::doctor::run(a).await,
            (Some(Command::Completions(a)), _) => cmd::generate::completions(Cli::command(), &a),
            (Some(Command::GenerateMan(a)), _) => cmd::generate::man_pages(Cli::command(), &a),
            (None, Some(p)) => {
                let req = clinvk_shared::api::PromptRequest {
                    prompt: Some(p),
                    ..Default::default()
                };
                cmd::prompt::run(&cli.opts, req).await
            }
            (None, None) => {
                let _ = Cli::command().print_help();
                Ok(clinvkctl::exit::USAGE)
            }
        }
    })
}
