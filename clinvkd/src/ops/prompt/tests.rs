//! `plan`'s policies, on a test context (`Ctx::for_tests`), and a prompt run to its end through
//! the fake CLI.

use super::*;
use crate::testkit::{folder, no_hang, request, start_prompt, CtxBuilder};
use std::path::{Path, PathBuf};

fn plan_as(ctx: &Ctx, req: PromptRequest, source: api::ApiStyle) -> Result<Plan, ApiError> {
    plan(ctx, &Caller::control(), Ask::from_request(req, source)?)
}

fn plan_of(ctx: &Ctx, req: PromptRequest) -> Result<Plan, ApiError> {
    plan_as(ctx, req, api::ApiStyle::Native)
}

/// The refusal of `req`: its code and the field it names.
fn refusal(ctx: &Ctx, req: PromptRequest) -> (String, Option<String>, ApiError) {
    let e = plan_of(ctx, req).expect_err("refused");
    (e.code().to_string(), e.param.clone(), e)
}

fn with_workdir(dir: impl AsRef<std::path::Path>) -> PromptRequest {
    PromptRequest {
        workdir: Some(dir.as_ref().display().to_string()),
        ..request("claude", "p")
    }
}

#[test]
fn the_configured_modes_are_a_ceiling() {
    let ctx = Ctx::for_tests(|s| {
        s.backends.get_mut("codex").unwrap().approval_mode = Some(ApprovalMode::Auto);
    });
    let looser_approval = PromptRequest {
        approval_mode: Some(ApprovalMode::None),
        ..request("claude", "p")
    };
    let (code, param, e) = refusal(&ctx, looser_approval);
    assert_eq!(code, "escalation_not_allowed");
    assert_eq!(param.as_deref(), Some("approval_mode"));
    assert_eq!(e.kind, Kind::Forbidden);

    let looser_sandbox = PromptRequest {
        sandbox_mode: Some(SandboxMode::Full),
        ..request("claude", "p")
    };
    let (code, param, _) = refusal(&ctx, looser_sandbox);
    assert_eq!(code, "escalation_not_allowed");
    assert_eq!(param.as_deref(), Some("sandbox_mode"));

    // Keeping or tightening is fine.
    let tighter = PromptRequest {
        approval_mode: Some(ApprovalMode::Always),
        sandbox_mode: Some(SandboxMode::ReadOnly),
        ..request("claude", "p")
    };
    let p = plan_of(&ctx, tighter).expect("tighter modes pass");
    assert_eq!(p.inv.approval_mode, ApprovalMode::Always);
    assert_eq!(p.inv.sandbox_mode, SandboxMode::ReadOnly);

    // A backend's own setting is its ceiling: codex runs `auto`, claude the global `default`.
    let auto = |b: &str| PromptRequest {
        approval_mode: Some(ApprovalMode::Auto),
        ..request(b, "p")
    };
    assert_eq!(
        plan_of(&ctx, auto("codex"))
            .expect("codex allows auto")
            .inv
            .approval_mode,
        ApprovalMode::Auto
    );
    assert_eq!(refusal(&ctx, auto("claude")).0, "escalation_not_allowed");
    let none_on_codex = PromptRequest {
        approval_mode: Some(ApprovalMode::None),
        ..request("codex", "p")
    };
    assert_eq!(refusal(&ctx, none_on_codex).0, "escalation_not_allowed");
    // Without a request mode, the configured one applies.
    assert_eq!(
        plan_of(&ctx, request("codex", "p"))
            .unwrap()
            .inv
            .approval_mode,
        ApprovalMode::Auto
    );
}

#[test]
fn an_operator_may_let_requests_loosen_the_modes() {
    let ctx = Ctx::for_tests(|s| s.server.allow_request_escalation = true);
    let looser = PromptRequest {
        approval_mode: Some(ApprovalMode::None),
        sandbox_mode: Some(SandboxMode::Full),
        ..request("claude", "p")
    };
    let p = plan_of(&ctx, looser).expect("escalation allowed");
    assert_eq!(p.inv.approval_mode, ApprovalMode::None);
    assert_eq!(p.inv.sandbox_mode, SandboxMode::Full);
}

#[test]
fn the_workdir_policy() {
    let ctx = Ctx::for_tests(|_| {});
    let default = std::fs::canonicalize(engine::default_workdir(&ctx)).unwrap();

    let (code, param, _) = refusal(&ctx, with_workdir("relative/dir"));
    assert_eq!(code, "invalid_workdir");
    assert_eq!(param.as_deref(), Some("workdir"));

    let state = ctx.paths.state_dir.clone();
    for blocked in [
        PathBuf::from("/etc"),
        PathBuf::from("/"),
        state.clone(),
        state.join("sessions"),
        ctx.test_dir().join("missing"),
    ] {
        let (code, param, _) = refusal(&ctx, with_workdir(&blocked));
        assert_eq!(code, "workdir_not_allowed", "{}", blocked.display());
        assert_eq!(param.as_deref(), Some("workdir"));
    }

    // The default workdir is inside the state folder, and always allowed; it is also where a
    // request without one runs.
    let p = plan_of(&ctx, with_workdir(&default)).expect("the default workdir");
    assert_eq!(p.inv.workdir.as_deref(), Some(default.as_path()));
    let p = plan_of(&ctx, request("claude", "p")).unwrap();
    assert_eq!(
        p.inv.workdir.map(|w| std::fs::canonicalize(w).unwrap()),
        Some(default)
    );

    // Any other existing folder, without allowed prefixes.
    let work = folder(&ctx, "work");
    let p = plan_of(&ctx, with_workdir(&work)).expect("a free folder");
    assert_eq!(p.inv.workdir.as_deref(), Some(work.as_path()));
}

#[test]
fn system_folders_with_logs_mail_spools_and_backups_are_refused() {
    let ctx = Ctx::for_tests(|_| {});
    let system = [
        "/var/log",
        "/var/spool",
        "/var/mail",
        "/var/cache",
        "/var/backups",
    ];
    // A folder that does not exist is refused anyway: only the existing ones prove the list.
    let existing: Vec<&str> = system
        .into_iter()
        .filter(|d| Path::new(d).is_dir())
        .collect();
    assert!(existing.contains(&"/var/log"), "{existing:?}");
    for dir in existing {
        let (code, _, _) = refusal(&ctx, with_workdir(dir));
        assert_eq!(code, "workdir_not_allowed", "{dir}");
    }
    // The system's temp folder stays usable.
    let tmp = tempfile::tempdir().unwrap();
    assert!(plan_of(&ctx, with_workdir(tmp.path())).is_ok());
}

/// Two homes: `HOME` (what the daemon was started with) and the account's own home in the
/// password database, as when a service is started with another `HOME`.
fn two_homes(root: bool) -> (tempfile::TempDir, PathBuf, PathBuf, Ctx) {
    let outside = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(outside.path()).unwrap();
    let (env, account) = (base.join("env-home"), base.join("account-home"));
    for d in [".ssh", ".claude", ".codex", ".gemini", ".aws", "projects"] {
        std::fs::create_dir_all(account.join(d)).unwrap();
    }
    std::fs::create_dir_all(env.join(".ssh")).unwrap();
    let ctx = CtxBuilder::new()
        .homes(engine::Homes {
            env: Some(env.clone()),
            account: Some(account.clone()),
            root,
        })
        .build();
    (outside, env, account, ctx)
}

#[test]
fn the_accounts_own_home_is_guarded_when_home_points_elsewhere() {
    let (_keep, env, account, ctx) = two_homes(false);
    for secret in [
        account.join(".ssh"),
        account.join(".claude"),
        account.join(".codex"),
        account.join(".gemini"),
        account.join(".aws"),
        env.join(".ssh"),
    ] {
        let (code, _, _) = refusal(&ctx, with_workdir(&secret));
        assert_eq!(code, "workdir_not_allowed", "{}", secret.display());
    }
    // A user's home and its projects are workdirs like any other folder.
    assert!(plan_of(&ctx, with_workdir(account.join("projects"))).is_ok());
    assert!(plan_of(&ctx, with_workdir(&account)).is_ok());
    assert!(plan_of(&ctx, with_workdir(&env)).is_ok());
}

#[test]
fn a_daemon_run_as_root_refuses_roots_home_itself() {
    let (_keep, env, account, ctx) = two_homes(true);
    for home in [&account, &env] {
        let (code, _, _) = refusal(&ctx, with_workdir(home));
        assert_eq!(code, "workdir_not_allowed", "{}", home.display());
    }
    let (code, _, _) = refusal(&ctx, with_workdir(account.join(".ssh")));
    assert_eq!(code, "workdir_not_allowed");
    // A project folder inside it is not the home itself.
    assert!(plan_of(&ctx, with_workdir(account.join("projects"))).is_ok());
}

#[test]
fn the_process_homes_come_from_home_and_the_password_database() {
    let h = engine::Homes::of_process();
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("the test user has an account");
    assert_eq!(h.account, Some(me.dir));
    assert_eq!(h.root, nix::unistd::geteuid().is_root());
    assert_eq!(h.env, std::env::var_os("HOME").map(PathBuf::from));
}

#[test]
fn allowed_workdir_prefixes_are_honoured() {
    let outside = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(outside.path()).unwrap();
    let prefix = root.join("projects");
    std::fs::create_dir_all(prefix.join("app")).unwrap();
    std::os::unix::fs::symlink("/etc", prefix.join("etc-link")).unwrap();
    let ctx = Ctx::for_tests(|s| {
        s.server.allowed_workdir_prefixes = vec![prefix.display().to_string()];
    });

    let p = plan_of(&ctx, with_workdir(prefix.join("app"))).expect("inside the prefix");
    assert_eq!(p.inv.workdir, Some(prefix.join("app")));
    for refused in [
        folder(&ctx, "elsewhere"),
        root.clone(),
        prefix.join("etc-link"), // resolved: /etc
    ] {
        let (code, _, _) = refusal(&ctx, with_workdir(&refused));
        assert_eq!(code, "workdir_not_allowed", "{}", refused.display());
    }
    // The default workdir stays allowed.
    assert!(plan_of(&ctx, request("claude", "p")).is_ok());
}

#[test]
fn extra_flags_follow_the_allowlists() {
    let ctx = Ctx::for_tests(|s| {
        s.backends.get_mut("claude").unwrap().allowed_extra_flags = vec!["--verbose".into()];
    });
    let extra = |b: &str, flags: &[&str]| PromptRequest {
        extra: flags.iter().map(|f| f.to_string()).collect(),
        ..request(b, "p")
    };

    let (code, param, e) = refusal(&ctx, extra("claude", &["--dangerously-skip-permissions"]));
    assert_eq!(code, "invalid_flags");
    assert_eq!(param.as_deref(), Some("extra"));
    assert!(
        e.message.contains("--dangerously-skip-permissions"),
        "{}",
        e.message
    );

    // The operator's allow-list is per backend.
    let p = plan_of(&ctx, extra("claude", &["--verbose"])).expect("operator-allowed");
    assert_eq!(p.inv.extra, vec!["--verbose"]);
    let (code, _, e) = refusal(&ctx, extra("codex", &["--verbose"]));
    assert_eq!(code, "invalid_flags");
    assert!(e.message.contains("--verbose"), "{}", e.message);

    // The adapter's built-in list (the fake's: `--add-dir`), and a folder flag's value passes
    // the workdir policy.
    let work = folder(&ctx, "work").display().to_string();
    assert!(plan_of(&ctx, extra("claude", &["--add-dir", &work])).is_ok());
    let (code, param, _) = refusal(&ctx, extra("claude", &["--add-dir", "/etc"]));
    assert_eq!(code, "workdir_not_allowed");
    assert_eq!(param.as_deref(), Some("extra"));
}

#[test]
fn the_backend_must_be_known() {
    let ctx = Ctx::for_tests(|s| s.default_backend = "gemini".into());
    let (code, param, e) = refusal(&ctx, request("llama", "p"));
    assert_eq!(code, "unknown_backend");
    assert_eq!(param.as_deref(), Some("backend"));
    assert!(e.message.contains("claude, codex, gemini"), "{}", e.message);

    let unnamed = PromptRequest {
        backend: None,
        ..request("", "p")
    };
    let (code, param, _) = refusal(&ctx, unnamed.clone());
    assert_eq!(
        (code.as_str(), param.as_deref()),
        ("missing_field", Some("backend"))
    );
    // `clinvk "…"` uses the default backend.
    let p = plan_as(&ctx, unnamed, api::ApiStyle::Cli).expect("the default backend");
    assert_eq!(p.inv.backend, Backend::Gemini);
}

#[test]
fn a_session_stays_with_its_backend() {
    let ctx = Ctx::for_tests(|_| {});
    let s = ctx
        .sessions
        .create(Session {
            backend: Backend::Codex,
            backend_session_id: Some("cx-1".into()),
            ..Default::default()
        })
        .unwrap();
    let (code, _, e) = refusal(
        &ctx,
        PromptRequest {
            session_id: Some(s.id.clone()),
            ..request("claude", "p")
        },
    );
    assert_eq!(code, "session_backend_mismatch");
    assert!(e.message.contains("codex"), "{}", e.message);

    // Unnamed, the backend is the session's; the turn resumes its backend session.
    let p = plan_of(
        &ctx,
        PromptRequest {
            backend: None,
            session_id: Some(s.id.clone()),
            ..request("", "p")
        },
    )
    .expect("the session's backend");
    assert_eq!(p.inv.backend, Backend::Codex);
    assert_eq!(p.inv.resume.as_deref(), Some("cx-1"));

    let (code, _, e) = refusal(
        &ctx,
        PromptRequest {
            session_id: Some("no-such-session".into()),
            ..request("claude", "p")
        },
    );
    assert_eq!(
        (code.as_str(), e.kind),
        ("session_not_found", Kind::NotFound)
    );
}

#[test]
fn a_prompt_is_required() {
    let ctx = Ctx::for_tests(|_| {});
    for prompt in [None, Some(""), Some("  \n")] {
        let req = PromptRequest {
            prompt: prompt.map(str::to_string),
            ..request("claude", "")
        };
        let (code, param, _) = refusal(&ctx, req);
        assert_eq!(code, "missing_field", "{prompt:?}");
        assert_eq!(param.as_deref(), Some("prompt"));
    }
}

#[tokio::test]
async fn a_prompt_runs_and_its_session_records_the_turn() {
    let ctx = Ctx::for_tests(|_| {});
    let run = start_prompt(&ctx, request("claude", "hi")).await;
    let done = no_hang("the prompt", run.finish()).await;
    assert_eq!(done.output, "hi");
    assert_eq!(done.error, None);
    let id = done.session_id.clone().expect("a new session");
    let s = ctx.sessions.get(&id, None).unwrap();
    assert_eq!(s.backend, Backend::Claude);
    assert_eq!(s.turn_count, 1);
    assert_eq!(s.status, SessionStatus::Completed);
    assert_eq!(s.backend_session_id, done.summary.backend_session_id);
    assert!(s.backend_session_id.is_some());
    assert!(ctx.live.snapshot().is_empty(), "the run left the live view");
}

/// The value of a counter in `/metrics` (0 when absent).
fn counter(rendered: &str, series: &str) -> f64 {
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn session_writes_that_fail_are_counted_not_lost() {
    crate::http::meta::install_metrics();
    let series = |op: &str| format!("clinvk_session_store_errors_total{{op=\"{op}\"}}");
    let before = crate::http::meta::rendered();
    let ctx = Ctx::for_tests(|_| {});
    let run = start_prompt(&ctx, request("claude", "hi")).await;
    let id = run.session_id.clone().expect("a new session");
    // The session is on disk; from now on its folder cannot be written (a file took its place:
    // refused even to root, which a read-only mode is not).
    let dir = ctx.paths.sessions_dir();
    std::fs::rename(&dir, ctx.test_dir().join("sessions.moved")).unwrap();
    std::fs::write(&dir, b"not a folder").unwrap();
    let done = no_hang("the prompt", run.finish()).await;
    assert_eq!(done.output, "hi", "the run itself goes on");
    let after = crate::http::meta::rendered();
    for op in ["backend_session_id", "turn"] {
        assert!(
            counter(&after, &series(op)) > counter(&before, &series(op)),
            "the failed {op} write of session {id} is counted: {after}"
        );
    }
}
