//! The working-folder policy: the default workdir, the blocked folders (system folders, the
//! state folder, the home's credential folders — the CLIs' own come from their adapters) and
//! the allowed prefixes.

use super::*;
use crate::error::Code;

/// The built-in system folders a run may never use as its working folder.
pub(crate) const BLOCKED_WORKDIRS: [&str; 14] = [
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
    "/var/run",
    "/var/lib",
];

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
/// folders, `server.blocked_workdir_prefixes`, the state folder, and the home's credential
/// folders.
pub(super) fn blocked_folders(ctx: &Ctx) -> Vec<PathBuf> {
    let settings = ctx.settings();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut out: Vec<PathBuf> = BLOCKED_WORKDIRS.iter().map(PathBuf::from).collect();
    out.extend(
        settings
            .server
            .blocked_workdir_prefixes
            .iter()
            .map(PathBuf::from),
    );
    out.push(ctx.paths.state_dir.clone());
    if let Some(h) = &home {
        out.extend(BLOCKED_HOME_FOLDERS.iter().map(|f| h.join(f)));
        out.extend(
            backend::adapters()
                .flat_map(|a| a.credential_folders())
                .map(|f| h.join(f)),
        );
    }
    let mut resolved = Vec::new();
    for p in out {
        if let Ok(real) = std::fs::canonicalize(&p) {
            if real != p {
                resolved.push(real);
            }
        }
        resolved.push(p);
    }
    resolved
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
    if real == Path::new("/") || blocked_folders(ctx).iter().any(|b| real.starts_with(b)) {
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
