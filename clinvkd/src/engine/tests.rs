//! The engine with a fake CLI behind it (`testkit::FakeAdapter`): real child processes, a few
//! milliseconds each.

use super::*;
use crate::testkit::{no_hang, CtxBuilder, FakeAdapter};
use clinvk_shared::protocol::WorkerState;

fn inv(ctx: &Ctx, prompt: &str) -> Invocation {
    Invocation {
        backend: Backend::Claude,
        prompt: prompt.into(),
        workdir: Some(default_workdir(ctx)),
        ..Default::default()
    }
}

/// Every event up to the summary.
async fn run_to_end(mut run: RunStream) -> (Vec<Event>, RunSummary) {
    let mut events = Vec::new();
    let drained = no_hang("the run", async {
        while let Some(u) = run.next().await {
            match u {
                RunUpdate::Event(e) => events.push(e),
                RunUpdate::Done(s) => return Some(s),
                RunUpdate::ToolCall(c) => panic!("unexpected tool call {c:?}"),
            }
        }
        None
    })
    .await;
    (events, drained.expect("a summary at the end"))
}

fn oneshot(s: &mut clinvk_shared::config::Settings) {
    for b in s.backends.values_mut() {
        b.mode = BackendMode::Oneshot;
    }
}

#[tokio::test]
async fn a_oneshot_run_streams_the_clis_events() {
    let ctx = Ctx::for_tests(oneshot);
    let run = start(&ctx, inv(&ctx, "hello")).await.expect("started");
    let (events, summary) = run_to_end(run).await;
    assert!(
        matches!(&events[..], [Event::SessionStarted { session_id, .. }, Event::TextDelta { text }]
            if session_id.starts_with("fake-") && text == "hello"),
        "{events:?}"
    );
    assert_eq!(summary.output, "hello");
    assert_eq!(summary.exit_code, 0);
    assert_eq!(summary.error, None);
    assert!(summary.backend_session_id.is_some());
    assert!(ctx.workers.list().is_empty(), "no worker in one-shot mode");
}

#[tokio::test]
async fn a_failing_cli_is_reported_with_its_stderr() {
    let fake = FakeAdapter::new()
        .oneshot("echo 'Error: out of credit' >&2; exit 3")
        .leak();
    let ctx = CtxBuilder::new()
        .settings(oneshot)
        .adapter(Backend::Claude, fake)
        .build();
    let run = start(&ctx, inv(&ctx, "hello")).await.expect("started");
    let (_, summary) = run_to_end(run).await;
    assert_eq!(summary.exit_code, 3);
    assert_eq!(
        summary.api_error().map(|e| e.code),
        Some(crate::error::Code::BackendFailed)
    );
    let error = summary.error.expect("an error");
    assert!(error.contains("Error: out of credit"), "{error}");
}

#[tokio::test]
async fn a_warm_session_keeps_its_worker_between_turns() {
    let fake = FakeAdapter::new().leak();
    let ctx = CtxBuilder::new().adapter(Backend::Claude, fake).build();

    let (events, first) = run_to_end(start(&ctx, inv(&ctx, "one")).await.expect("started")).await;
    assert_eq!(first.output, "one", "{events:?}");
    let sid = first.backend_session_id.clone().expect("a session id");
    let workers = ctx.workers.list();
    assert_eq!(workers.len(), 1, "the worker waits for the next turn");
    assert_eq!(workers[0].backend_session_id.as_deref(), Some(sid.as_str()));
    assert_eq!(workers[0].state, WorkerState::Idle);
    assert_eq!(workers[0].turns, 1);

    let mut next = inv(&ctx, "two");
    next.resume = Some(sid.clone());
    let (_, second) = run_to_end(start(&ctx, next).await.expect("started")).await;
    assert_eq!(second.output, "two");
    assert_eq!(second.backend_session_id.as_deref(), Some(sid.as_str()));
    let again = ctx.workers.list();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].pid, workers[0].pid,
        "the same process took the turn"
    );
    assert_eq!(again[0].turns, 2);
    assert_eq!(fake.live_drivers(), 1, "no other worker was started");
}

#[tokio::test]
async fn a_dry_run_shows_the_fake_command() {
    let ctx = Ctx::for_tests(|_| {});
    let d = dry_run(&ctx, &inv(&ctx, "hello")).expect("a dry run");
    assert_eq!(d.program, "/bin/sh");
    assert_eq!(d.argv.last().map(String::as_str), Some("hello"));
    let worker = d.worker_argv.expect("warm by default");
    assert_eq!(worker[..2], ["/bin/sh".to_string(), "-c".to_string()]);
}

#[tokio::test]
async fn a_worker_that_dies_during_a_turn_fails_it_and_is_not_kept() {
    let fake = FakeAdapter::new()
        .worker(
            r#"while IFS= read -r line; do
  case $line in
    open) echo '{"ready":true}' ;;
    "turn "*) echo '{"session":"s-dead"}'; echo 'fatal: out of memory' >&2; exit 2 ;;
  esac
done"#,
        )
        .leak();
    let ctx = CtxBuilder::new().adapter(Backend::Claude, fake).build();
    let (_, summary) = run_to_end(start(&ctx, inv(&ctx, "hello")).await.expect("started")).await;
    let error = summary.error.expect("the turn failed");
    assert!(
        error.contains("exited during the turn with code 2: fatal: out of memory"),
        "{error}"
    );
    assert_ne!(summary.exit_code, 0);
    assert!(ctx.workers.list().is_empty(), "a dead worker is not kept");
    assert_eq!(fake.live_drivers(), 0);
}
