//! `clinvkctl service install|uninstall|status`: the daemon as a systemd service (socket
//! activated; user or system) or a launchd agent, written from the unit files shipped with
//! clinvk, with this installation's binary path, address and PATH filled in.

use crate::{exit, ClientError};
use clinvk_shared::api::Backend;
use std::path::{Path, PathBuf};

const USER_SERVICE: &str = include_str!("../../../systemd/user/clinvkd.service");
const USER_SOCKET: &str = include_str!("../../../systemd/user/clinvkd.socket");
const USER_CONTROL_SOCKET: &str = include_str!("../../../systemd/user/clinvkd-control.socket");
const SYSTEM_SERVICE: &str = include_str!("../../../systemd/system/clinvkd.service");
const SYSTEM_SOCKET: &str = include_str!("../../../systemd/system/clinvkd.socket");
const SYSUSERS: &str = include_str!("../../../systemd/system/clinvk.sysusers.conf");
const LAUNCHD_PLIST: &str = include_str!("../../../launchd/dev.clinvk.clinvkd.plist");
const LAUNCHD_LABEL: &str = "dev.clinvk.clinvkd";

#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// Write the units (or the launchd agent), reload the service manager and enable the sockets
    Install(InstallArgs),
    /// Disable and stop the service, remove what `install` wrote, reload the service manager
    Uninstall(TargetArgs),
    /// Show whether the units are installed, enabled and active
    Status(TargetArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// A systemd user service (runs as you, state in ~/.clinvk) — the default on Linux
    #[arg(long, conflicts_with_all = ["system", "launchd"])]
    pub user: bool,
    /// A systemd system service run by the `clinvk` system user (needs root)
    #[arg(long, conflicts_with = "launchd")]
    pub system: bool,
    /// A launchd agent (the default on macOS)
    #[arg(long)]
    pub launchd: bool,
    /// Print what would be written and run; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Write under this folder instead of / (for packaging and tests); runs no service manager
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Write the files only: do not enable or start anything
    #[arg(long)]
    pub no_enable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Manager {
    User,
    System,
    Launchd,
}

impl TargetArgs {
    fn manager(&self) -> Manager {
        if self.system {
            Manager::System
        } else if self.launchd || (!self.user && cfg!(target_os = "macos")) {
            Manager::Launchd
        } else {
            Manager::User
        }
    }

    /// Where an absolute path lands (under `--root` when given).
    fn place(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }
}

/// One file to write.
struct File {
    path: PathBuf,
    text: String,
}

fn home() -> Result<PathBuf, ClientError> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| ClientError::Other("HOME is not set".into()))
}

/// Where the launchd agent's plist lives.
pub(crate) fn launchd_plist(home: &Path) -> PathBuf {
    home.join(format!("Library/LaunchAgents/{LAUNCHD_LABEL}.plist"))
}

/// The folder of the user's systemd units.
pub(crate) fn user_unit_dir() -> Result<PathBuf, ClientError> {
    Ok(std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or(home()?.join(".config"))
        .join("systemd/user"))
}

/// The daemon binary the units start: the one next to this clinvkctl, made absolute.
fn daemon_path() -> Result<PathBuf, ClientError> {
    let p = crate::daemon_executable();
    let p = std::fs::canonicalize(&p).map_err(|e| {
        ClientError::Other(format!(
            "cannot find clinvkd ({}): {e}; install it next to clinvkctl",
            p.display()
        ))
    })?;
    let text = p.display().to_string();
    if text
        .chars()
        .any(|c| c.is_whitespace() || c == '%' || c == '"')
    {
        return Err(ClientError::Other(format!(
            "the path of clinvkd ({text}) has spaces or special characters a unit file cannot hold: install it elsewhere"
        )));
    }
    Ok(p)
}

/// `host:port` from the configuration (defaults when it cannot be read).
fn listen_address() -> String {
    let settings = crate::paths()
        .ok()
        .and_then(|paths| clinvk_shared::config::load_as_daemon(&paths).1.ok())
        .map(|l| l.settings)
        .unwrap_or_default();
    let host = &settings.server.host;
    let port = if settings.server.port == 0 {
        8080
    } else {
        settings.server.port
    };
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The PATH the service gets: the folders where the CLIs and node are found now, then the
/// usual ones.
fn service_path(defaults: &[&str]) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<String> = Vec::new();
    let mut add = |d: String| {
        if !d.is_empty() && !d.contains(char::is_whitespace) && !dirs.contains(&d) {
            dirs.push(d);
        }
    };
    let found = Backend::ALL
        .iter()
        .map(|b| b.as_str())
        .chain(["node"])
        .filter_map(|name| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        });
    for p in found {
        if let Some(d) = p.parent() {
            add(d.display().to_string());
        }
    }
    for d in defaults {
        add(d.to_string());
    }
    dirs.join(":")
}

/// Replaces the one line starting with `prefix` (the template must hold it).
fn set_line(text: &str, prefix: &str, line: &str) -> String {
    let mut done = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if !done && l.starts_with(prefix) {
                done = true;
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(done, "unit template without a {prefix} line");
    out.join("\n") + "\n"
}

fn stamp(text: &str, comment: &str) -> String {
    format!(
        "{comment} Written by `clinvkctl service install` (clinvk {}); `clinvkctl service uninstall` removes it.\n{text}",
        clinvk_shared::VERSION
    )
}

/// What `install` writes for a manager.
fn files(args: &TargetArgs) -> Result<Vec<File>, ClientError> {
    let daemon = daemon_path()?;
    let exec = format!("ExecStart={}", daemon.display());
    let listen = format!("ListenStream={}", listen_address());
    Ok(match args.manager() {
        Manager::User => {
            let dir = user_unit_dir()?;
            let h = home()?.display().to_string();
            let path = service_path(&[
                &format!("{h}/.local/bin"),
                &format!("{h}/.npm-global/bin"),
                &format!("{h}/.cargo/bin"),
                "/usr/local/bin",
                "/usr/bin",
                "/bin",
            ]);
            let service = set_line(USER_SERVICE, "ExecStart=", &exec);
            let service = set_line(
                &service,
                "Environment=PATH=",
                &format!("Environment=PATH={path}"),
            );
            vec![
                File {
                    path: dir.join("clinvkd.service"),
                    text: stamp(&service, "#"),
                },
                File {
                    path: dir.join("clinvkd.socket"),
                    text: stamp(&set_line(USER_SOCKET, "ListenStream=", &listen), "#"),
                },
                File {
                    path: dir.join("clinvkd-control.socket"),
                    text: stamp(USER_CONTROL_SOCKET, "#"),
                },
            ]
        }
        Manager::System => {
            let dir = PathBuf::from("/etc/systemd/system");
            vec![
                File {
                    path: dir.join("clinvkd.service"),
                    text: stamp(&set_line(SYSTEM_SERVICE, "ExecStart=", &exec), "#"),
                },
                File {
                    path: dir.join("clinvkd.socket"),
                    text: stamp(&set_line(SYSTEM_SOCKET, "ListenStream=", &listen), "#"),
                },
                File {
                    path: PathBuf::from("/etc/sysusers.d/clinvk.conf"),
                    text: stamp(SYSUSERS, "#"),
                },
            ]
        }
        Manager::Launchd => {
            let h = home()?.display().to_string();
            let text = LAUNCHD_PLIST
                .replace("__HOME__/.cargo/bin/clinvkd", &daemon.display().to_string())
                .replace("__HOME__", &h);
            vec![File {
                path: launchd_plist(Path::new(&h)),
                text,
            }]
        }
    })
}

/// The service manager commands of a step (none under `--root`).
fn commands(args: &TargetArgs, install: bool, enable: bool) -> Vec<Vec<String>> {
    if args.root.is_some() {
        return Vec::new();
    }
    let v = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match (args.manager(), install) {
        (Manager::User, true) => {
            let mut c = vec![v(&["systemctl", "--user", "daemon-reload"])];
            if enable {
                c.push(v(&[
                    "systemctl",
                    "--user",
                    "enable",
                    "--now",
                    "clinvkd.socket",
                    "clinvkd-control.socket",
                ]));
            }
            c
        }
        (Manager::User, false) => vec![
            v(&[
                "systemctl",
                "--user",
                "disable",
                "--now",
                "clinvkd.socket",
                "clinvkd-control.socket",
                "clinvkd.service",
            ]),
            v(&["systemctl", "--user", "daemon-reload"]),
        ],
        (Manager::System, true) => {
            let mut c = vec![
                v(&["systemd-sysusers", "/etc/sysusers.d/clinvk.conf"]),
                v(&["systemctl", "daemon-reload"]),
            ];
            if enable {
                c.push(v(&["systemctl", "enable", "--now", "clinvkd.socket"]));
            }
            c
        }
        (Manager::System, false) => vec![
            v(&[
                "systemctl",
                "disable",
                "--now",
                "clinvkd.socket",
                "clinvkd.service",
            ]),
            v(&["systemctl", "daemon-reload"]),
        ],
        (Manager::Launchd, install) => {
            let uid = nix::unistd::getuid().as_raw();
            let plist = home().map(|h| launchd_plist(&h)).unwrap_or_default();
            if install && enable {
                vec![vec![
                    "launchctl".into(),
                    "bootstrap".into(),
                    format!("gui/{uid}"),
                    plist.display().to_string(),
                ]]
            } else if install {
                Vec::new()
            } else {
                vec![vec![
                    "launchctl".into(),
                    "bootout".into(),
                    format!("gui/{uid}/{LAUNCHD_LABEL}"),
                ]]
            }
        }
    }
}

fn run_command(argv: &[String]) -> Result<(), String> {
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("`{}`: {e}", argv.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn needs_root(args: &TargetArgs) -> Result<(), ClientError> {
    if args.manager() == Manager::System
        && args.root.is_none()
        && !args.dry_run
        && !nix::unistd::geteuid().is_root()
    {
        return Err(ClientError::Other(
            "a system service needs root: run it with sudo (or use --user)".into(),
        ));
    }
    Ok(())
}

pub async fn run(cmd: ServiceCommand) -> Result<u8, ClientError> {
    match cmd {
        ServiceCommand::Install(a) => install(&a),
        ServiceCommand::Uninstall(a) => uninstall(&a),
        ServiceCommand::Status(a) => status(&a),
    }
}

fn install(a: &InstallArgs) -> Result<u8, ClientError> {
    let t = &a.target;
    needs_root(t)?;
    let files = files(t)?;
    let cmds = commands(t, true, !a.no_enable);
    if t.dry_run {
        for f in &files {
            println!("# would write {}\n{}", t.place(&f.path).display(), f.text);
        }
        for c in &cmds {
            println!("# would run: {}", c.join(" "));
        }
        return Ok(exit::OK);
    }
    for f in &files {
        let dest = t.place(&f.path);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ClientError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(&dest, &f.text)
            .map_err(|e| ClientError::Other(format!("cannot write {}: {e}", dest.display())))?;
        println!("wrote {}", dest.display());
    }
    for c in &cmds {
        run_command(c).map_err(|e| {
            ClientError::Other(format!(
                "{e}\nThe files are written; run the remaining steps by hand, or `clinvkctl service uninstall` to remove them."
            ))
        })?;
        println!("ran {}", c.join(" "));
    }
    if t.root.is_none() && !a.no_enable {
        match t.manager() {
            Manager::Launchd => {
                println!("clinvkd runs as a launchd agent (`clinvkctl status` to check)")
            }
            _ => println!(
                "the first connection to {} starts clinvkd (`clinvkctl status` to check)",
                listen_address()
            ),
        }
    }
    Ok(exit::OK)
}

fn uninstall(t: &TargetArgs) -> Result<u8, ClientError> {
    needs_root(t)?;
    let files = files(t)?;
    let cmds = commands(t, false, false);
    if t.dry_run {
        if let Some(first) = cmds.first() {
            println!("# would run: {}", first.join(" "));
        }
        for f in &files {
            println!("# would remove {}", t.place(&f.path).display());
        }
        for c in cmds.iter().skip(1) {
            println!("# would run: {}", c.join(" "));
        }
        return Ok(exit::OK);
    }
    // Stop first (a unit that is not loaded is no error), then remove, then reload.
    if let Some(first) = cmds.first() {
        if let Err(e) = run_command(first) {
            eprintln!("note: {e}");
        }
    }
    let mut removed = 0;
    for f in &files {
        let dest = t.place(&f.path);
        match std::fs::remove_file(&dest) {
            Ok(()) => {
                println!("removed {}", dest.display());
                removed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ClientError::Other(format!(
                    "cannot remove {}: {e}",
                    dest.display()
                )))
            }
        }
    }
    for c in cmds.iter().skip(1) {
        run_command(c).map_err(ClientError::Other)?;
    }
    if removed == 0 {
        println!("nothing to remove: the service was not installed");
    }
    Ok(exit::OK)
}

fn status(t: &TargetArgs) -> Result<u8, ClientError> {
    let files = files(t)?;
    let mut installed = 0;
    for f in &files {
        let dest = t.place(&f.path);
        let present = dest.is_file();
        installed += usize::from(present);
        println!(
            "{:<9} {}",
            if present { "installed" } else { "missing" },
            dest.display()
        );
    }
    if t.root.is_none() && t.manager() != Manager::Launchd {
        let user = t.manager() == Manager::User;
        for (what, unit) in [
            ("is-enabled", "clinvkd.socket"),
            ("is-active", "clinvkd.socket"),
            ("is-active", "clinvkd.service"),
        ] {
            let mut cmd = std::process::Command::new("systemctl");
            if user {
                cmd.arg("--user");
            }
            let answer = cmd
                .args([what, unit])
                .stdin(std::process::Stdio::null())
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown (systemctl gave no answer)".into());
            println!("{unit} {what}: {answer}");
        }
    }
    Ok(if installed == files.len() {
        exit::OK
    } else {
        exit::FAILURE
    })
}
