//! The adapters' argv run against the real, pinned CLIs and the fake model server. Ignored by
//! default: they need the CLIs in PATH and the environment of `tests/fakemodel/cli_env.py`:
//!
//! ```sh
//! python3 tests/fakemodel/server.py --port 0 --port-file /tmp/fm.port &
//! export RUSTUP_HOME=~/.rustup CARGO_HOME=~/.cargo   # the eval below replaces HOME
//! eval "$(python3 tests/fakemodel/cli_env.py --home /tmp/h --port "$(cat /tmp/fm.port)" --fast-fail --print-env)"
//! export PATH="$PWD/.test-cache/npm/node_modules/.bin:$PATH"
//! cargo test -p clinvkd --lib backend::live_tests -- --ignored
//! ```
//! (about 2½ minutes; the three tests run in parallel.)
//!
//! Each test spawns the CLI exactly as built by `Adapter::build` (stdin /dev/null, the
//! spec's env and cwd) and folds its output with the adapter's parser.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use clinvk_shared::config::BackendSettings;

use super::*;

struct Ran {
    events: Vec<Event>,
    outcome: Outcome,
    exit: Option<i32>,
    argv: Vec<String>,
}

fn run(backend: &str, inv: &Invocation, cfg: &BackendSettings, dir: &Path) -> Ran {
    let adapter = adapter(backend).unwrap();
    let mut inv = inv.clone();
    inv.backend = backend.into();
    inv.workdir = Some(dir.to_path_buf());
    let spec = adapter.build(&inv, cfg).unwrap();
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if spec.stdin_null {
        cmd.stdin(Stdio::null());
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut parser = adapter.parser();
    let mut events = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf).unwrap() > 0 {
        let line = String::from_utf8_lossy(&buf);
        events.extend(parser.parse_line(line.trim_end_matches(['\n', '\r'])));
        buf.clear();
    }
    let status = child.wait().unwrap();
    let stderr = err_thread.join().unwrap();
    events.extend(parser.finish(status.code(), &stderr));
    let outcome = Outcome::from_events(&events);
    Ran {
        events,
        outcome,
        exit: status.code(),
        argv: spec.argv(),
    }
}

fn inv(prompt: &str) -> Invocation {
    Invocation {
        prompt: prompt.into(),
        ..Invocation::default()
    }
}

fn ok(r: &Ran) {
    assert_eq!(r.exit, Some(0), "{:?}\n{:?}", r.argv, r.events);
    assert!(!r.outcome.is_error, "{:?}\n{:?}", r.argv, r.outcome);
    assert!(r.outcome.session_id.is_some(), "{:?}", r.events);
    assert!(r.outcome.output.contains("fake-reply"), "{:?}", r.outcome);
    assert_eq!(r.outcome.unparsed, 0, "{:?}", r.events);
}

fn deltas(r: &Ran) -> usize {
    r.events
        .iter()
        .filter(|e| matches!(e, Event::TextDelta { .. }))
        .count()
}

fn the_basics(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BackendSettings::default();

    let first = run(backend, &inv("hello there world"), &cfg, dir.path());
    ok(&first);
    assert!(
        first
            .outcome
            .output
            .contains("fake-reply turns=1 last=hello there world"),
        "{:?}",
        first.outcome
    );
    assert!(first.outcome.usage.input_tokens > 0 && first.outcome.usage.output_tokens > 0);
    if backend != "codex" {
        assert!(deltas(&first) >= 2);
    }
    let sid = first.outcome.session_id.clone().unwrap();

    let mut again = inv("and again");
    again.resume = Some(sid.clone());
    let second = run(backend, &again, &cfg, dir.path());
    ok(&second);
    assert!(
        second.outcome.output.contains("turns=2 last=and again"),
        "{:?} {:?}",
        second.argv,
        second.outcome
    );
    assert_eq!(second.outcome.session_id.as_deref(), Some(sid.as_str()));

    let dash = run(backend, &inv("-v --help dash prompt"), &cfg, dir.path());
    ok(&dash);
    assert!(
        dash.outcome.output.contains("last=-v --help dash prompt"),
        "{:?}",
        dash.outcome
    );

    let mut e = inv("[[error]] fail");
    e.model = None;
    let failed = run(backend, &e, &cfg, dir.path());
    assert_ne!(failed.exit, Some(0));
    assert!(failed.outcome.is_error);
    assert!(
        failed
            .outcome
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("injected error"),
        "{:?}",
        failed.outcome
    );

    let mut bad = inv("hi");
    bad.resume = Some("00000000-0000-4000-8000-00000000dead".into());
    let bad = run(backend, &bad, &cfg, dir.path());
    assert_ne!(bad.exit, Some(0));
    assert!(bad.outcome.is_error);
    let msg = bad.outcome.error.clone().unwrap_or_default();
    assert!(
        msg.contains("00000000-0000-4000-8000-00000000dead"),
        "{msg}"
    );
}

fn modes(backend: &str, skip: &[(ApprovalMode, SandboxMode)]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BackendSettings::default();
    for a in [
        ApprovalMode::Default,
        ApprovalMode::Auto,
        ApprovalMode::None,
        ApprovalMode::Always,
    ] {
        for s in [
            SandboxMode::Default,
            SandboxMode::ReadOnly,
            SandboxMode::Workspace,
            SandboxMode::Full,
        ] {
            if skip.contains(&(a, s)) {
                continue;
            }
            let mut i = inv("modes");
            i.approval_mode = a;
            i.sandbox_mode = s;
            let r = run(backend, &i, &cfg, dir.path());
            ok(&r);
        }
    }
}

#[test]
#[ignore = "needs the real CLIs and the fake model server"]
fn claude_live() {
    the_basics("claude");
    let dir = tempfile::tempdir().unwrap();
    let cfg = BackendSettings {
        allowed_tools: vec!["Read".into(), "Bash(git log:*)".into()],
        ..BackendSettings::default()
    };
    let mut i = inv("sys check");
    i.model = Some("claude-sonnet-4-5".into());
    i.system_prompt = Some("SYSMARK be brief".into());
    i.max_turns = Some(3);
    i.new_session_id = Some("5b0c9d1e-2f3a-4b5c-8d6e-7f8091a2b3c4".into());
    i.extra = vec![
        "--effort".into(),
        "high".into(),
        "--strict-mcp-config".into(),
    ];
    let r = run("claude", &i, &cfg, dir.path());
    ok(&r);
    assert!(
        r.outcome.output.contains("sys=SYSMARK be brief"),
        "{:?}",
        r.outcome
    );
    assert_eq!(
        r.outcome.session_id.as_deref(),
        Some("5b0c9d1e-2f3a-4b5c-8d6e-7f8091a2b3c4")
    );
    assert!(
        matches!(&r.events[0], Event::SessionStarted { model: Some(m), .. } if m == "claude-sonnet-4-5")
    );
    let mut e = inv("not kept");
    e.ephemeral = true;
    let r = run("claude", &e, &BackendSettings::default(), dir.path());
    ok(&r);
    let mut again = inv("resume it");
    again.resume = r.outcome.session_id.clone();
    let r = run("claude", &again, &BackendSettings::default(), dir.path());
    assert!(r.outcome.is_error, "an ephemeral session cannot be resumed");
    modes("claude", &[]);
}

#[test]
#[ignore = "needs the real CLIs and the fake model server"]
fn codex_live() {
    the_basics("codex");
    let dir = tempfile::tempdir().unwrap();
    let cfg = BackendSettings::default();
    let mut i = inv("sys check");
    i.system_prompt = Some("SYSMARK be \"brief\"\nsecond line".into());
    i.sandbox_mode = SandboxMode::Workspace;
    i.approval_mode = ApprovalMode::None;
    i.extra = vec!["--strict-config".into()];
    let first = run("codex", &i, &cfg, dir.path());
    ok(&first);
    assert!(
        first.outcome.output.contains("sys=SYSMARK be \"brief\""),
        "{:?}",
        first.outcome
    );
    // Every exec-level option also works in front of `resume`.
    let mut again = i.clone();
    again.prompt = "and again".into();
    again.resume = first.outcome.session_id.clone();
    again.approval_mode = ApprovalMode::Auto;
    again.sandbox_mode = SandboxMode::Default;
    let r = run("codex", &again, &cfg, dir.path());
    ok(&r);
    assert!(
        r.outcome.output.contains("turns=2 last=and again"),
        "{:?}",
        r.outcome
    );
    assert!(r.outcome.output.contains("sys=SYSMARK"), "{:?}", r.outcome);
    let mut e = inv("not kept");
    e.ephemeral = true;
    e.model = Some("m-test-1".into());
    ok(&run("codex", &e, &cfg, dir.path()));
    modes("codex", &[]);
}

#[test]
#[ignore = "needs the real CLIs and the fake model server"]
fn gemini_live() {
    the_basics("gemini");
    let dir = tempfile::tempdir().unwrap();
    let cfg = BackendSettings {
        model: Some("gemini-2.5-flash".into()),
        allowed_tools: vec!["read_file".into()],
        ..BackendSettings::default()
    };
    let mut i = inv("sys check");
    i.system_prompt = Some("SYSMARK be brief".into());
    i.new_session_id = Some("6c1d0e2f-3a4b-4c5d-9e6f-708192a3b4c5".into());
    i.extra = vec!["--allowed-mcp-server-names".into(), "docs".into()];
    let r = run("gemini", &i, &cfg, dir.path());
    ok(&r);
    assert_eq!(
        r.outcome.session_id.as_deref(),
        Some("6c1d0e2f-3a4b-4c5d-9e6f-708192a3b4c5")
    );
    assert!(
        r.outcome.output.contains("SYSMARK be brief"),
        "{:?}",
        r.outcome
    );
    // `--sandbox` needs a container image that cannot be pulled offline.
    let workspace = [
        ApprovalMode::Default,
        ApprovalMode::Auto,
        ApprovalMode::None,
        ApprovalMode::Always,
    ]
    .map(|a| (a, SandboxMode::Workspace));
    modes("gemini", &workspace);
}
