use super::*;
use std::path::Path;

fn spec(script: &str, timeout_ms: u64) -> SpawnSpec {
    SpawnSpec {
        backend: clinvk_shared::api::Backend::Claude,
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        cwd: None,
        timeout: Duration::from_millis(timeout_ms),
        kill_grace: Duration::from_millis(500),
        max_line_bytes: 64 * 1024,
        max_output_bytes: 1024 * 1024,
        stdin: None,
        env_remove: vec![],
    }
}

fn limits() -> limiter::Limits {
    limiter::Limits {
        global: 4,
        backend: None,
        queue: 4,
        queue_timeout: Duration::from_secs(5),
    }
}

async fn start(sup: &Supervisor, s: SpawnSpec) -> RunHandle {
    let permit = sup
        .limiter
        .acquire(clinvk_shared::api::Backend::Claude, limits())
        .await
        .unwrap();
    sup.spawn(permit, s).unwrap()
}

async fn collect(h: &mut RunHandle) -> (Vec<String>, ExitInfo) {
    let mut lines = vec![];
    while let Some(ev) = h.events.recv().await {
        match ev {
            ProcEvent::Line(l) => lines.push(l),
            ProcEvent::Exit(i) => return (lines, i),
        }
    }
    panic!("no exit event");
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

async fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    !alive(pid)
}

#[tokio::test]
async fn lines_exit_code_and_stderr() {
    let sup = Supervisor::new(Limiter::default());
    let mut h = start(
        &sup,
        spec(
            "echo one; printf 'two\\r\\n'; echo oops >&2; printf three; exit 7",
            10_000,
        ),
    )
    .await;
    let (lines, info) = collect(&mut h).await;
    assert_eq!(lines, vec!["one", "two\r", "three"]);
    assert_eq!(info.code, Some(7));
    assert_eq!(info.exit_code(), 7);
    assert!(info.stderr_tail.contains("oops"));
    assert!(!info.timed_out && !info.cancelled);
    assert_eq!(sup.running_count(), 0);
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let sup = Supervisor::new(Limiter::default());
    let mut h = start(&sup, spec("sleep 1000 & echo $!; sleep 1000", 300)).await;
    let main_pid = h.pid;
    let (lines, info) = collect(&mut h).await;
    let grandchild: u32 = lines[0].parse().unwrap();
    assert!(info.timed_out);
    assert_eq!(info.exit_code(), -1);
    assert!(wait_gone(main_pid, Duration::from_secs(2)).await);
    assert!(
        wait_gone(grandchild, Duration::from_secs(2)).await,
        "grandchild {grandchild} survived"
    );
}

#[tokio::test]
async fn dropping_the_handle_cancels_within_two_seconds() {
    let sup = Supervisor::new(Limiter::default());
    let mut h = start(&sup, spec("echo started; sleep 1000", 60_000)).await;
    let pid = h.pid;
    assert_eq!(
        h.events.recv().await,
        Some(ProcEvent::Line("started".into()))
    );
    assert_eq!(sup.running().len(), 1);
    assert_eq!(sup.running()[0].pid, Some(pid));
    drop(h);
    assert!(wait_gone(pid, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill() {
    let sup = Supervisor::new(Limiter::default());
    let mut h = start(
        &sup,
        spec(
            "trap '' TERM; echo ready; while true; do sleep 0.05; done",
            60_000,
        ),
    )
    .await;
    let pid = h.pid;
    assert_eq!(h.events.recv().await, Some(ProcEvent::Line("ready".into())));
    h.cancel.cancel();
    let (_, info) = collect(&mut h).await;
    assert!(info.cancelled);
    assert_eq!(info.signal, Some(9), "{info:?}");
    assert!(!alive(pid));
}

#[tokio::test]
async fn grandchild_holding_stdout_does_not_hang_the_run() {
    let sup = Supervisor::new(Limiter::default());
    let mut h = start(&sup, spec("(sleep 1000) & echo bye", 60_000)).await;
    let (lines, info) = tokio::time::timeout(Duration::from_secs(10), collect(&mut h))
        .await
        .unwrap();
    assert_eq!(lines, vec!["bye"]);
    assert_eq!(info.code, Some(0));
}

#[tokio::test]
async fn huge_line_is_cut_and_later_lines_arrive() {
    let sup = Supervisor::new(Limiter::default());
    let mut h = start(
        &sup,
        spec(
            "head -c 50000000 /dev/zero | tr '\\0' a; echo; echo done",
            60_000,
        ),
    )
    .await;
    let (lines, info) = collect(&mut h).await;
    assert_eq!(
        lines.len(),
        2,
        "{:?}",
        lines.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert_eq!(lines[0].len(), 64 * 1024);
    assert_eq!(lines[1], "done");
    assert_eq!(info.truncated_lines, 1);
    assert_eq!(info.dropped_bytes, 50_000_000 - 64 * 1024);
}

#[tokio::test]
async fn output_cap_drops_but_reads_to_the_end() {
    let sup = Supervisor::new(Limiter::default());
    let mut s = spec("i=0; while [ $i -lt 3000 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done; echo last", 60_000);
    s.max_output_bytes = 4000;
    let mut h = start(&sup, s).await;
    let (lines, info) = collect(&mut h).await;
    assert_eq!(lines.len(), 100);
    assert_eq!(info.code, Some(0), "the child was never blocked");
    assert!(info.dropped_bytes > 100_000);
}

#[tokio::test]
async fn missing_program_is_a_spawn_error() {
    let sup = Supervisor::new(Limiter::default());
    let permit = sup
        .limiter
        .acquire(clinvk_shared::api::Backend::Claude, limits())
        .await
        .unwrap();
    let mut s = spec("", 1000);
    s.program = Path::new("/nonexistent/clinvk-nothing").to_path_buf();
    let err = sup.spawn(permit, s).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/clinvk-nothing"));
    assert_eq!(sup.limiter.queued(), 0);
}

#[tokio::test]
async fn limiter_queues_then_refuses() {
    let limiter = Limiter::default();
    let l = limiter::Limits {
        global: 1,
        backend: None,
        queue: 1,
        queue_timeout: Duration::from_secs(5),
    };
    let first = limiter
        .acquire(clinvk_shared::api::Backend::Claude, l)
        .await
        .unwrap();
    let l2 = limiter.clone();
    let waiter = tokio::spawn(async move {
        l2.acquire(clinvk_shared::api::Backend::Claude, l)
            .await
            .map(|_| ())
    });
    while limiter.queued() == 0 {
        tokio::task::yield_now().await;
    }
    let refused = limiter
        .acquire(clinvk_shared::api::Backend::Claude, l)
        .await
        .err()
        .unwrap();
    assert!(matches!(refused, CapacityError::QueueFull { .. }));
    drop(first);
    waiter.await.unwrap().unwrap();
    // Per-backend cap.
    let l = limiter::Limits {
        global: 5,
        backend: Some(1),
        queue: 0,
        queue_timeout: Duration::from_millis(10),
    };
    let _a = limiter
        .acquire(clinvk_shared::api::Backend::Claude, l)
        .await
        .unwrap();
    assert!(limiter
        .acquire(clinvk_shared::api::Backend::Claude, l)
        .await
        .is_err());
    assert!(limiter
        .acquire(clinvk_shared::api::Backend::Codex, l)
        .await
        .is_ok());
}

#[tokio::test]
async fn stdin_payload_is_written_and_closed() {
    let sup = Supervisor::new(Limiter::default());
    let mut s = spec("wc -c", 10_000);
    s.stdin = Some(vec![b'x'; 300_000]);
    let mut h = start(&sup, s).await;
    let (lines, info) = collect(&mut h).await;
    assert_eq!(lines[0].trim(), "300000");
    assert_eq!(info.code, Some(0));
}

/// A child whose daemon died before its death signal was set does not start; the reason
/// reaches the spawner as an OS error (built without allocating, after the fork).
#[tokio::test]
async fn a_child_whose_daemon_is_gone_does_not_start() {
    let marker = tempfile::tempdir().unwrap();
    let ran = marker.path().join("ran");
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.args(["-c", &format!("touch '{}'", ran.display())]);
    // As if the daemon had died between the fork and the prctl: the parent is not the one
    // the child was made for.
    guard_child(&mut cmd, Pid::from_raw(i32::MAX));
    let e = cmd.spawn().expect_err("refused before exec");
    assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e:?}");
    assert!(!ran.exists(), "the program never ran");
}

#[test]
fn a_scrubbed_environment_holds_no_clinvk_variable() {
    use std::ffi::OsStr;
    let mut cmd = std::process::Command::new("/bin/true");
    cmd.env("CLINVK_FROM_THE_CONFIG", "x")
        .env("KEPT", "y")
        .env("REMOVED", "z");
    scrub_env(&mut cmd, &["REMOVED".into()]);
    let envs: HashMap<&OsStr, Option<&OsStr>> = cmd.get_envs().collect();
    assert_eq!(envs[OsStr::new("CLINVK_FROM_THE_CONFIG")], None, "removed");
    assert_eq!(envs[OsStr::new("REMOVED")], None);
    assert_eq!(envs[OsStr::new("KEPT")], Some(OsStr::new("y")));
    // The daemon's own CLINVK_* variables are taken out too.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CLINVK_") {
            assert_eq!(envs[name.as_os_str()], None);
        }
    }
}

/// The liveness check of systems without `/proc` (macOS), exercised here too.
#[test]
fn signal_zero_tells_a_running_process_from_a_gone_one() {
    assert!(signal_reaches(std::process::id()));
    assert!(signal_reaches(1), "another user's process counts");
    assert!(!signal_reaches(i32::MAX as u32));
    assert!(!signal_reaches(u32::MAX), "not a pid at all");
}
