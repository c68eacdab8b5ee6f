//! The folders and files clinvk uses. Every path derives from `CLINVK_HOME`, or from `HOME`
//! (and `XDG_RUNTIME_DIR`), so a daemon started with another `HOME` is fully isolated.

use std::path::{Path, PathBuf};

/// Where one clinvk installation keeps its state, config, sockets and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The state folder: `$CLINVK_HOME`, else `~/.clinvk`.
    pub state_dir: PathBuf,
    /// The private runtime folder holding the control socket and the pid file.
    pub runtime_dir: PathBuf,
}

/// Errors finding the folders.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot find the home folder: set HOME or CLINVK_HOME")]
    NoHome,
}

impl Paths {
    /// Resolves the folders from the process environment.
    pub fn from_env() -> Result<Self, PathError> {
        Self::resolve(|k| std::env::var_os(k))
    }

    /// Resolves the folders from an environment lookup (testable without touching the process).
    pub fn resolve(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, PathError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(home) = non_empty("CLINVK_HOME") {
            // An explicit state folder owns its runtime folder too, so two CLINVK_HOMEs never
            // share a socket even when XDG_RUNTIME_DIR is set.
            return Ok(Self::under(home));
        }
        let home = non_empty("HOME")
            .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf()))
            .ok_or(PathError::NoHome)?;
        let state_dir = home.join(".clinvk");
        let runtime_dir = match non_empty("XDG_RUNTIME_DIR") {
            Some(xdg) => xdg.join("clinvk"),
            None => state_dir.join("run"),
        };
        Ok(Self {
            state_dir,
            runtime_dir,
        })
    }

    /// All folders under one state folder (used for `CLINVK_HOME` and by tests).
    pub fn under(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            runtime_dir: state_dir.join("run"),
            state_dir,
        }
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("clinvkd.sock")
    }

    /// The pid file, locked by the running daemon.
    pub fn pid_file(&self) -> PathBuf {
        self.runtime_dir.join("clinvkd.pid")
    }

    /// Default folder of log files.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// One JSON file per session.
    pub fn sessions_dir(&self) -> PathBuf {
        self.state_dir.join("sessions")
    }

    /// The daemon's own API key store.
    pub fn keys_file(&self) -> PathBuf {
        self.state_dir.join("keys.json")
    }

    /// The config file to read: the first of `config.yaml`, `config.yml`, `config.toml` that
    /// exists, else `config.yaml` (which may not exist: defaults apply).
    pub fn default_config_file(&self) -> PathBuf {
        for name in ["config.yaml", "config.yml", "config.toml"] {
            let p = self.state_dir.join(name);
            if p.exists() {
                return p;
            }
        }
        self.state_dir.join("config.yaml")
    }
}

/// A command name (looked up on `path_var`, a PATH value) or a path, resolved to an executable
/// file.
pub fn find_executable(command: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let p = PathBuf::from(command);
        return is_exec(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(command))
        .find(|p| is_exec(p))
}

/// Creates a folder (and parents) and makes it private to its user (0700).
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes a file atomically (temp file in the same folder, fsync, rename) and privately (0600).
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call: concurrent writers of one file never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    // A full or failing disk: the partial temp file goes, the old file stays as it was.
    let written = f.write_all(bytes).and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// When this process started, as clinvk counts it: the first call (`clinvkd` makes it first
/// thing in `main`). A temporary file last written before it cannot belong to a write of this
/// process.
pub fn process_start() -> std::time::SystemTime {
    static START: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::SystemTime::now)
}

/// The writer's pid if `file_name` is a temporary file that `write_private_atomic` makes for
/// `target` (for any file when `None`): `.<target>.tmp.<pid>.<n>`.
fn temp_file_writer(file_name: &str, target: Option<&str>) -> Option<u32> {
    let (stem, tail) = file_name.strip_prefix('.')?.rsplit_once(".tmp.")?;
    if stem.is_empty() || target.is_some_and(|t| t != stem) {
        return None;
    }
    let (pid, n) = tail.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` exists (a process of another user counts).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Removes the temporary files of `write_private_atomic` in `dir` (those for `target` only, when
/// given) that no write can still rename: left by a writer that is gone (a process killed
/// mid-write), or last written before this process started. A file of another name — a real
/// one — is never touched. Returns the removed files.
///
/// Call it where no other writer of these files can run: the stores are the daemon's, which
/// holds the state folder's pid lock; the key store also takes its file lock.
pub fn remove_stale_temp_files(dir: &Path, target: Option<&str>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let (me, started) = (std::process::id(), process_start());
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| temp_file_writer(n, target)) else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let before_start = meta.modified().is_ok_and(|t| t < started);
        let writer_gone = pid != me && !process_exists(pid);
        if (before_start || writer_gone) && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: std::collections::HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn clinvk_home_wins_and_owns_runtime_dir() {
        let p = Paths::resolve(env(&[
            ("CLINVK_HOME", "/s"),
            ("HOME", "/h"),
            ("XDG_RUNTIME_DIR", "/r"),
        ]))
        .unwrap();
        assert_eq!(p.state_dir, PathBuf::from("/s"));
        assert_eq!(p.socket(), PathBuf::from("/s/run/clinvkd.sock"));
    }

    #[test]
    fn home_and_xdg_runtime() {
        let p = Paths::resolve(env(&[("HOME", "/h"), ("XDG_RUNTIME_DIR", "/r")])).unwrap();
        assert_eq!(p.state_dir, PathBuf::from("/h/.clinvk"));
        assert_eq!(p.runtime_dir, PathBuf::from("/r/clinvk"));
        let p = Paths::resolve(env(&[("HOME", "/h")])).unwrap();
        assert_eq!(p.runtime_dir, PathBuf::from("/h/.clinvk/run"));
    }

    #[test]
    fn temp_file_names() {
        assert_eq!(temp_file_writer(".a.json.tmp.12.3", None), Some(12));
        assert_eq!(
            temp_file_writer(".a.json.tmp.12.3", Some("a.json")),
            Some(12)
        );
        assert_eq!(temp_file_writer(".a.json.tmp.12.3", Some("b.json")), None);
        for real in [
            "a.json",
            "a.json.tmp.12.3",
            ".a.json.tmp.12",
            ".a.json.tmp.x.3",
            ".a.json.tmp.12.3.json",
            ".tmp.12.3",
        ] {
            assert_eq!(temp_file_writer(real, None), None, "{real}");
        }
    }

    #[test]
    fn stale_temp_files_go_and_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.json");
        write_private_atomic(&f, b"{}").unwrap();
        let at = |name: &str, t: std::time::SystemTime| {
            let p = d.path().join(name);
            std::fs::write(&p, b"{").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
            p
        };
        let hour = std::time::Duration::from_secs(3600);
        let later = process_start() + hour;
        let dead = at(&format!(".x.json.tmp.{}.1", i32::MAX), later);
        let old = at(
            &format!(".x.json.tmp.{}.2", std::process::id()),
            process_start() - hour,
        );
        let live = at(".x.json.tmp.1.3", later);
        let mine_now = at(&format!(".x.json.tmp.{}.4", std::process::id()), later);
        let other = at(&format!(".y.json.tmp.{}.5", i32::MAX), later);
        let removed = remove_stale_temp_files(d.path(), Some("x.json"));
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!dead.exists() && !old.exists());
        assert!(live.exists() && mine_now.exists() && other.exists() && f.exists());
        assert_eq!(remove_stale_temp_files(d.path(), None), vec![other]);
    }

    #[test]
    fn atomic_write_is_private() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.json");
        write_private_atomic(&f, b"{}").unwrap();
        write_private_atomic(&f, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"{\"a\":1}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
