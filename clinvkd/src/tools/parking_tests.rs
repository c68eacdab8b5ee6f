//! Parked runs: taken back with their results, expired, evicted. The runs are real prompt runs
//! of the fake CLI (`testkit`); the model's calls are made here, as the MCP endpoint makes them.

use super::*;
use crate::backend::Event;
use crate::ctx::Ctx;
use crate::ops::prompt::PromptUpdate;
use crate::testkit::{no_hang, request, start_prompt, CtxBuilder, FakeAdapter};
use clinvk_shared::api::{Backend, PromptRequest, SessionStatus};
use tokio::sync::oneshot::error::TryRecvError;

/// A call of the model, as the CLI's `tools/call` hands it over, and where its answer goes.
fn call(name: &str) -> (PendingCall, oneshot::Receiver<ToolReply>) {
    let (reply, answer) = oneshot::channel();
    let call = McpCall {
        name: name.into(),
        arguments: Map::new(),
        reply,
    };
    (PendingCall::new(call), answer)
}

fn client_tools() -> ClientTools {
    ClientTools {
        tools: vec![],
        builtin: false,
        scope: "test".into(),
        url: None,
        call_timeout_secs: 60,
    }
}

/// Parks `run` at `n` new calls of `owner`; their ids and answers.
fn park(
    ctx: &Ctx,
    run: PromptRun,
    n: usize,
    owner: Option<&str>,
) -> (Vec<String>, Vec<oneshot::Receiver<ToolReply>>) {
    let (calls, answers): (Vec<_>, Vec<_>) = (0..n).map(|i| call(&format!("tool{i}"))).unzip();
    let ids = calls.iter().map(|c| c.id.clone()).collect();
    let settings = ctx.settings();
    ctx.tools.park(
        Parked {
            run,
            calls,
            owner: owner.map(str::to_string),
            tools: client_tools(),
        },
        Duration::from_secs(settings.tools.pending_timeout_secs),
        settings.tools.max_parked_runs,
    );
    (ids, answers)
}

fn oneshot(s: &mut clinvk_shared::config::Settings) {
    for b in s.backends.values_mut() {
        b.mode = clinvk_shared::config::BackendMode::Oneshot;
    }
}

/// A CLI that waits (for its tool results) until it is stopped.
const WAITS: &str = "exec sleep 600";

fn unmatched(r: Result<Parked, Unmatched>) -> Unmatched {
    r.err().expect("not taken")
}

#[tokio::test]
async fn a_parked_run_is_taken_back_with_all_its_results() {
    let fake = FakeAdapter::new()
        .oneshot(r#"printf '{"session":"fs-1"}\n{"text":"after the tools"}\n'"#)
        .leak();
    let ctx = CtxBuilder::new()
        .settings(oneshot)
        .adapter(Backend::Claude, fake)
        .build();
    let run = start_prompt(&ctx, request("claude", "weather?")).await;
    let (ids, mut answers) = park(&ctx, run, 2, Some("key-1"));
    let hub = &ctx.tools;
    let key = Some("key-1");

    // Only its owner, with every result, takes it.
    assert!(matches!(
        unmatched(hub.take(&ids, None)),
        Unmatched::Unknown(_)
    ));
    assert_eq!(
        unmatched(hub.take(&ids[..1], key)),
        Unmatched::Missing(vec![ids[1].clone()])
    );
    assert_eq!(
        unmatched(hub.take(&["toolu_elsewhere".to_string()], key)),
        Unmatched::Foreign
    );
    let stray = format!("{CALL_PREFIX}0000");
    assert_eq!(
        unmatched(hub.take(&[ids[0].clone(), stray.clone()], key)),
        Unmatched::Unknown(stray)
    );
    assert_eq!(ctx.live.snapshot().len(), 1, "the parked run still runs");

    let parked = hub
        .take(&[ids[1].clone(), ids[0].clone()], key)
        .expect("taken");
    assert_eq!(parked.calls.len(), 2);
    assert_eq!(
        unmatched(hub.take(&ids, key)),
        Unmatched::Unknown(ids[0].clone()),
        "taken once"
    );

    let results = HashMap::from([
        (
            ids[0].clone(),
            ToolReply {
                content: "sunny".into(),
                is_error: false,
            },
        ),
        (
            ids[1].clone(),
            ToolReply {
                content: "no such city".into(),
                is_error: true,
            },
        ),
    ]);
    let (run, _) = parked.answer(&results);
    let first = answers[0].try_recv().expect("answered");
    assert_eq!((first.content.as_str(), first.is_error), ("sunny", false));
    let second = answers[1].try_recv().expect("answered");
    assert_eq!(
        (second.content.as_str(), second.is_error),
        ("no such city", true)
    );

    // The same run goes on to its end.
    let done = no_hang("the continued run", run.finish()).await;
    assert_eq!(done.output, "after the tools");
    assert_eq!(done.error, None);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_run_expires_and_a_late_result_is_refused() {
    let fake = FakeAdapter::new().oneshot(WAITS).leak();
    let ctx = CtxBuilder::new()
        .settings(oneshot)
        .adapter(Backend::Claude, fake)
        .build();
    let run = start_prompt(&ctx, request("claude", "weather?")).await;
    let session = run.session_id.clone().expect("a session");
    let (ids, mut answers) = park(&ctx, run, 1, None);
    let timeout = Duration::from_secs(ctx.settings().tools.pending_timeout_secs);

    tokio::time::advance(timeout - Duration::from_secs(1)).await;
    assert_eq!(
        answers[0].try_recv().err(),
        Some(TryRecvError::Empty),
        "still waiting"
    );
    assert_eq!(ctx.live.snapshot().len(), 1);

    // At `tools.pending_timeout_secs` the call is dropped unanswered and the run stopped.
    assert!(answers.remove(0).await.is_err());
    assert_eq!(
        unmatched(ctx.tools.take(&ids, None)),
        Unmatched::Expired(ids[0].clone())
    );
    assert!(ctx.live.snapshot().is_empty(), "the run is gone");
    ctx.work.close();
    no_hang("the run's bookkeeping", ctx.work.wait()).await;
    let s = ctx.sessions.get(&session, None).unwrap();
    assert_eq!(s.status, SessionStatus::Interrupted);
}

/// A worker whose turn waits (for its tool results) after the model's first step; an interrupt
/// ends the turn and keeps the session.
const WAITING_WORKER: &str = r#"while IFS= read -r line; do
  case $line in
    open) echo '{"ready":true}' ;;
    "turn "*) printf '{"session":"%s"}\n' "$1" ;;
    interrupt) echo '{"end":true}' ;;
  esac
done"#;

#[tokio::test]
async fn an_expired_warm_run_stops_its_worker() {
    let fake = FakeAdapter::new().worker(WAITING_WORKER).leak();
    let ctx = CtxBuilder::new().adapter(Backend::Claude, fake).build();
    let session = ctx
        .sessions
        .create(crate::session::Session {
            backend: Backend::Claude,
            backend_session_id: Some("sess-w".into()),
            ..Default::default()
        })
        .unwrap();
    let req = PromptRequest {
        session_id: Some(session.id),
        ..request("claude", "weather?")
    };
    let mut run = start_prompt(&ctx, req).await;
    // The turn runs in the worker (an interrupt would end it and keep the worker).
    let first = no_hang("the turn's first event", run.next()).await;
    assert!(
        matches!(
            first,
            Some(PromptUpdate::Event(Event::SessionStarted { .. }))
        ),
        "{first:?}"
    );
    assert_eq!(fake.live_drivers(), 1);

    // From here on nothing waits on the worker: the paused clock jumps to the expiry.
    tokio::time::pause();
    let (ids, mut answers) = park(&ctx, run, 1, None);
    assert!(answers.remove(0).await.is_err(), "expired");
    // Stopped for good, at once: not interrupted and kept for the session's next turn.
    assert_eq!(fake.live_drivers(), 0);
    assert!(ctx.workers.list().is_empty());
    assert_eq!(
        unmatched(ctx.tools.take(&ids, None)),
        Unmatched::Expired(ids[0].clone())
    );
}

#[tokio::test]
async fn beyond_max_parked_runs_the_oldest_is_stopped() {
    let fake = FakeAdapter::new().oneshot(WAITS).leak();
    let ctx = CtxBuilder::new()
        .settings(|s| {
            oneshot(s);
            s.tools.max_parked_runs = 2;
            s.limits.max_concurrent = 3;
        })
        .adapter(Backend::Claude, fake)
        .build();
    let mut parked = Vec::new();
    for _ in 0..3 {
        let run = start_prompt(&ctx, request("claude", "weather?")).await;
        parked.push(park(&ctx, run, 1, None));
    }
    let [(a, mut a_answer), (b, mut b_answer), (c, mut c_answer)] =
        <[_; 3]>::try_from(parked).ok().unwrap();

    assert_eq!(
        a_answer[0].try_recv().err(),
        Some(TryRecvError::Closed),
        "evicted"
    );
    assert_eq!(b_answer[0].try_recv().err(), Some(TryRecvError::Empty));
    assert_eq!(c_answer[0].try_recv().err(), Some(TryRecvError::Empty));
    assert_eq!(
        unmatched(ctx.tools.take(&a, None)),
        Unmatched::Expired(a[0].clone())
    );
    assert_eq!(ctx.live.snapshot().len(), 2);

    // The evicted run's CLI was stopped: its concurrency slot (of 3) comes free.
    let d = no_hang(
        "a slot freed by the evicted run",
        start_prompt(&ctx, request("claude", "next")),
    )
    .await;
    assert_eq!(ctx.live.snapshot().len(), 3);
    assert!(ctx.tools.take(&b, None).is_ok());
    assert!(ctx.tools.take(&c, None).is_ok());
    drop(d);
}
