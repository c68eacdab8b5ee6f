//! Shell completions and man pages, generated from the clap definitions of the commands.

use crate::{exit, ClientError};
use std::path::Path;

/// `clinvk completions SHELL`, `clinvkctl completions SHELL`: the completion script on stdout.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell
    pub shell: clap_complete::Shell,
}

/// Prints the completion script of `cmd` for a shell.
pub fn completions(mut cmd: clap::Command, args: &CompletionsArgs) -> Result<u8, ClientError> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(exit::OK)
}

/// `generate-man DIR` (hidden; used by `scripts/build-man.sh`): writes the man page of the
/// command and one per subcommand (`clinvk.1`, `clinvk-serve.1`, …) into DIR.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// The folder to write the pages into (created if missing)
    pub dir: std::path::PathBuf,
}

/// Writes the man pages of `cmd` into `dir` and lists them on stdout.
pub fn man_pages(cmd: clap::Command, args: &ManArgs) -> Result<u8, ClientError> {
    write_man(cmd, &args.dir).map_err(|e| {
        ClientError::Other(format!(
            "cannot write man pages into {}: {e}",
            args.dir.display()
        ))
    })?;
    Ok(exit::OK)
}

fn write_man(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    clap_mangen::generate_to(cmd, dir)?;
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| *n == format!("{name}.1") || n.starts_with(&format!("{name}-")))
        .collect();
    names.sort();
    for n in names {
        println!("{}", dir.join(n).display());
    }
    Ok(())
}
