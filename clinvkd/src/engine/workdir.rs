//! The working-folder policy: the default workdir, the blocked folders (system folders, the
//! state folder, the credential folders of `HOME` and of the daemon user's own home — the CLIs'
//! own come from their adapters; a root daemon's home itself) and the allowed prefixes.

use super::*;
use crate::error::Code;

/// The built-in system folders a run may never use as its working folder: the system's
/// programs, libraries and settings, the kernel's files, and `/var`'s state, logs, mail, spools
/// (cron tables), caches (package archives) and backups (`/etc/shadow` copies). `/tmp` and
/// `/var/tmp` stay usable.
pub(crate) const BLOCKED_WORKDIRS: [&str; 19] = [
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/root/.ssh",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/backups",
    "/var/cache",
    "/var/lib",
    "/var/log",
    "/var/mail",
    "/var/run",
    "/var/spool",
];

/// macOS's own system folders, blocked there besides the above (`/etc` and `/var` resolve into
/// `/private`, which the resolution through symlinks covers).
pub(crate) const BLOCKED_WORKDIRS_MACOS: [&str; 3] = ["/System", "/Library", "/private/var/db"];

/// Folders of the home that hold credentials besides the CLIs' own (which each adapter
/// declares): the usual secret ones.
pub(crate) const BLOCKED_HOME_FOLDERS: [&str; 6] = [
    ".ssh",
    ".aws",
    ".gnupg",
    ".kube",
    ".docker",
    ".config/gcloud",
];

/// macOS's keychains, in the home there.
pub(crate) const BLOCKED_HOME_FOLDERS_MACOS: [&str; 1] = ["Library/Keychains"];

/// The homes whose secret folders are never a workdir, found once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Homes {
    /// `HOME` as the daemon sees it.
    pub(crate) env: Option<PathBuf>,
    /// The daemon user's home in the password database: not the same folder when `HOME`
    /// points elsewhere (a service started with another `HOME`, `HOME=/tmp/x clinvkd`), and
    /// its credentials are just as readable.
    pub(crate) account: Option<PathBuf>,
    /// Whether the daemon runs as root: then a home itself is no workdir either (`/root`).
    pub(crate) root: bool,
}

impl Homes {
    /// The daemon process's homes (`HOME`, and the effective user's entry in the password
    /// database).
    pub(crate) fn of_process() -> Homes {
        let euid = nix::unistd::geteuid();
        let account = match nix::unistd::User::from_uid(euid) {
            Ok(user) => user.map(|u| u.dir).filter(|d| d.is_absolute()),
            Err(e) => {
                tracing::warn!(uid = euid.as_raw(), error = %e, "cannot read the daemon user's home from the password database");
                None
            }
        };
        Homes {
            env: std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|h| h.is_absolute()),
            account,
            root: euid.is_root(),
        }
    }

    /// Each distinct home.
    fn all(&self) -> Vec<&PathBuf> {
        let mut v: Vec<&PathBuf> = self.env.iter().chain(self.account.iter()).collect();
        v.dedup();
        v
    }
}

/// The folder a run without `workdir` uses: `server.default_workdir`, else
/// `<state folder>/workspace`.
pub(crate) fn default_workdir(ctx: &Ctx) -> PathBuf {
    let configured = ctx.settings().server.default_workdir.clone();
    if configured.trim().is_empty() {
        ctx.paths.state_dir.join("workspace")
    } else {
        PathBuf::from(configured)
    }
}

/// Creates the default workdir (private) at start.
pub(crate) fn prepare_default_workdir(ctx: &Ctx) -> anyhow::Result<()> {
    let dir = default_workdir(ctx);
    if ctx.settings().server.default_workdir.trim().is_empty() {
        clinvk_shared::paths::ensure_private_dir(&dir)
    } else {
        std::fs::create_dir_all(&dir)
    }
    .map_err(|e| anyhow::anyhow!("cannot create the default workdir {}: {e}", dir.display()))
}

/// Every blocked folder, resolved through symlinks where it exists: the built-in system
/// folders, `server.blocked_workdir_prefixes`, the state folder, every account's folder, and
/// the home's credential folders.
pub(super) fn blocked_folders(ctx: &Ctx) -> Vec<PathBuf> {
    let settings = ctx.settings();
    let macos = cfg!(target_os = "macos");
    let mut out: Vec<PathBuf> = BLOCKED_WORKDIRS.iter().map(PathBuf::from).collect();
    if macos {
        out.extend(BLOCKED_WORKDIRS_MACOS.iter().map(PathBuf::from));
    }
    out.extend(
        settings
            .server
            .blocked_workdir_prefixes
            .iter()
            .map(PathBuf::from),
    );
    out.push(ctx.paths.state_dir.clone());
    // Every account's folder (its login and token), also one configured outside the state folder.
    for b in clinvk_shared::api::Backend::ALL {
        out.extend(ctx.accounts.list(&settings, b).into_iter().map(|a| a.dir));
    }
    for h in ctx.homes.all() {
        out.extend(BLOCKED_HOME_FOLDERS.iter().map(|f| h.join(f)));
        if macos {
            out.extend(BLOCKED_HOME_FOLDERS_MACOS.iter().map(|f| h.join(f)));
        }
        out.extend(
            backend::adapters()
                .flat_map(|a| a.credential_folders())
                .map(|f| h.join(f)),
        );
    }
    resolved(out)
}

/// Folders refused themselves (what is inside them may be allowed): `/`, and a home when the
/// daemon runs as root (`/root`: the agent would work among root's own files).
fn refused_exactly(ctx: &Ctx) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/")];
    if ctx.homes.root {
        out.extend(ctx.homes.all().into_iter().cloned());
    }
    resolved(out)
}

/// The paths, each also resolved through symlinks where it exists.
fn resolved(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if let Ok(real) = std::fs::canonicalize(&p) {
            if real != p {
                out.push(real);
            }
        }
        out.push(p);
    }
    out
}

/// Checks a requested working folder: absolute, exists, a folder, resolved through symlinks,
/// outside the blocked folders, inside the allowed ones when set (path-boundary matching). The
/// default workdir is always allowed. A refusal says the same whether or not the path exists.
pub(crate) fn validate_workdir(ctx: &Ctx, requested: &str) -> Result<PathBuf, EngineError> {
    let settings = ctx.settings();
    let p = Path::new(requested);
    if !p.is_absolute() {
        return Err(EngineError::bad(
            Code::InvalidWorkdir,
            format!("workdir {requested:?} must be an absolute path"),
        ));
    }
    let refused = || {
        EngineError::bad(
            Code::WorkdirNotAllowed,
            format!("workdir {requested:?} cannot be used: it must be an existing folder that the server's workdir policy allows"),
        )
    };
    let real = std::fs::canonicalize(p).map_err(|_| refused())?;
    if !real.is_dir() {
        return Err(refused());
    }
    let default = std::fs::canonicalize(default_workdir(ctx)).ok();
    if default.as_ref().is_some_and(|d| real.starts_with(d)) {
        return Ok(real);
    }
    if refused_exactly(ctx).contains(&real)
        || blocked_folders(ctx).iter().any(|b| real.starts_with(b))
    {
        return Err(refused());
    }
    let allowed = &settings.server.allowed_workdir_prefixes;
    if !allowed.is_empty()
        && !allowed.iter().any(|a| {
            real.starts_with(a) || std::fs::canonicalize(a).is_ok_and(|a| real.starts_with(a))
        })
    {
        return Err(refused());
    }
    Ok(real)
}
