//! A CLI's first start on a fresh state folder, alone (`Adapter::state_setup`): before a process
//! of such a CLI starts and while its state folder lacks the marker file, the CLI's setup
//! command runs — one at a time in the daemon — so that processes started together afterwards
//! find their state ready.

use super::*;
use std::collections::BTreeMap;

/// One setup at a time (they are rare: once per fresh state folder).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a setup command may take before it is stopped (and the start goes on regardless).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment `spec`'s process will see, as far as the state folder goes.
fn child_env(spec: &SpawnSpec) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !spec.env_remove.contains(k))
        .collect();
    env.extend(spec.env.iter().cloned());
    env
}

/// The marker file of `spec`'s CLI, when it has a setup and the marker is missing.
fn missing_marker(adapter: &dyn backend::Adapter, spec: &SpawnSpec) -> Option<PathBuf> {
    let setup = adapter.state_setup()?;
    let folder = spec.backend.info().state.resolve(&child_env(spec));
    let marker = folder.join(setup.marker);
    (!marker.exists()).then_some(marker)
}

/// Runs the CLI's setup when its state folder is fresh. A failing setup is logged, not
/// returned: the process that follows reports the CLI's own error.
pub(super) async fn ensure_state(adapter: &dyn backend::Adapter, spec: &SpawnSpec) {
    if missing_marker(adapter, spec).is_none() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(marker) = missing_marker(adapter, spec) else {
        return; // another start set it up meanwhile
    };
    let Some(setup) = adapter.state_setup() else {
        return;
    };
    let backend = spec.backend;
    tracing::info!(backend = %backend, marker = %marker.display(), "a fresh state folder: setting it up before the CLI's first start");
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(setup.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    crate::supervisor::scrub_env(cmd.as_std_mut(), &spec.env_remove);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    crate::supervisor::die_with_parent(&mut cmd);
    let started = Instant::now();
    match tokio::time::timeout(SETUP_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(backend = %backend, ms = started.elapsed().as_millis() as u64, "state folder set up");
        }
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            tracing::warn!(backend = %backend, status = %out.status, stderr = %backend::stderr_summary(&stderr), "the state folder's setup failed");
        }
        Ok(Err(e)) => {
            tracing::warn!(backend = %backend, error = %e, "cannot run the state folder's setup")
        }
        Err(_) => {
            tracing::warn!(backend = %backend, secs = SETUP_TIMEOUT.as_secs(), "the state folder's setup took too long and was stopped")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(backend: Backend, env: &[(&str, &str)]) -> SpawnSpec {
        SpawnSpec {
            backend,
            program: PathBuf::from("/bin/true"),
            args: vec![],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: None,
            timeout: Duration::from_secs(5),
            kill_grace: Duration::from_secs(1),
            max_line_bytes: 1024,
            max_output_bytes: 1024,
            stdin: None,
            env_remove: vec![],
        }
    }

    #[test]
    fn the_marker_is_looked_for_in_the_state_folder_the_child_will_use() {
        for a in backend::adapters() {
            let home = tempfile::tempdir().unwrap();
            // The variable that moves the state folder, emptied: it counts as unset.
            let var = a.backend().info().state.var;
            let s = spec(
                a.backend(),
                &[("HOME", home.path().to_str().unwrap()), (var, "")],
            );
            let Some(setup) = a.state_setup() else {
                // CLIs without a setup never wait.
                assert_eq!(missing_marker(a, &s), None);
                continue;
            };
            // The folder the child's environment names (here, under its home), not the daemon's.
            let want = a
                .backend()
                .info()
                .state
                .resolve(&child_env(&s))
                .join(setup.marker);
            assert!(want.starts_with(home.path()), "{}", want.display());
            assert_eq!(missing_marker(a, &s), Some(want.clone()));
            std::fs::create_dir_all(want.parent().unwrap()).unwrap();
            std::fs::write(&want, b"").unwrap();
            assert_eq!(missing_marker(a, &s), None);
        }
    }
}
