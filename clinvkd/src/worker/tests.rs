//! Retirement of warm workers, with workers of the fake CLI (`testkit::FakeAdapter`): real
//! processes, each worker's driver counted alive until the worker is dropped.

use super::*;
use crate::ctx::Ctx;
use crate::testkit::{no_hang, spawn_worker, CtxBuilder, FakeAdapter};

/// The (backend, session) of every worker the set keeps, sorted.
fn kept(workers: &Workers) -> Vec<(Backend, Option<String>)> {
    let mut v: Vec<_> = workers
        .list()
        .into_iter()
        .map(|w| (w.backend, w.backend_session_id))
        .collect();
    v.sort();
    v
}

fn session(backend: Backend, id: &str) -> (Backend, Option<String>) {
    (backend, Some(id.to_string()))
}

/// A context with its own fake behind claude and codex.
fn ctx_with_fakes(
    edit: impl FnOnce(&mut clinvk_shared::config::Settings),
) -> (Ctx, &'static FakeAdapter, &'static FakeAdapter) {
    let (claude, codex) = (FakeAdapter::new().leak(), FakeAdapter::new().leak());
    let ctx = CtxBuilder::new()
        .settings(edit)
        .adapter(Backend::Claude, claude)
        .adapter(Backend::Codex, codex)
        .build();
    (ctx, claude, codex)
}

#[tokio::test]
async fn retire_session_retires_that_sessions_worker_only() {
    let (ctx, claude, codex) = ctx_with_fakes(|_| {});
    let w1 = spawn_worker(&ctx, Backend::Claude, Some("s1")).await;
    let w2 = spawn_worker(&ctx, Backend::Claude, Some("s2")).await;
    let w3 = spawn_worker(&ctx, Backend::Codex, Some("s1")).await;
    let key = w2.key.clone();
    for w in [w1, w2, w3] {
        ctx.workers.park(w, 8);
    }
    assert_eq!((claude.live_drivers(), codex.live_drivers()), (2, 1));

    ctx.workers.retire_session(Backend::Claude, "s1");
    assert_eq!(claude.live_drivers(), 1, "the worker was dropped");
    assert_eq!(
        codex.live_drivers(),
        1,
        "another backend's session s1 stays"
    );
    assert_eq!(
        kept(&ctx.workers),
        vec![
            session(Backend::Claude, "s2"),
            session(Backend::Codex, "s1")
        ]
    );
    assert!(ctx
        .workers
        .take_session(Backend::Claude, "s1", &key)
        .is_none());
    let w = ctx.workers.take_session(Backend::Claude, "s2", &key);
    assert_eq!(w.and_then(|w| w.session.clone()), Some("s2".to_string()));
}

#[tokio::test]
async fn a_worker_started_with_other_settings_is_not_reused() {
    let (ctx, claude, _) = ctx_with_fakes(|_| {});
    let w = spawn_worker(&ctx, Backend::Claude, Some("s1")).await;
    let mut other = w.key.clone();
    other.args.push("--another-setting".into());
    ctx.workers.park(w, 8);
    assert!(ctx
        .workers
        .take_session(Backend::Claude, "s1", &other)
        .is_none());
    assert_eq!(claude.live_drivers(), 0, "retired, not kept");
    assert!(ctx.workers.list().is_empty());
}

#[tokio::test]
async fn the_least_recently_used_worker_goes_beyond_the_cap() {
    let (ctx, claude, _) = ctx_with_fakes(|_| {});
    let a = spawn_worker(&ctx, Backend::Claude, Some("a")).await;
    let b = spawn_worker(&ctx, Backend::Claude, Some("b")).await;
    let c = spawn_worker(&ctx, Backend::Claude, Some("c")).await;
    let key = a.key.clone();
    ctx.workers.park(a, 2);
    ctx.workers.park(b, 2);
    // `a` takes a turn: now `b` is the least recently used.
    let a = ctx
        .workers
        .take_session(Backend::Claude, "a", &key)
        .expect("a's worker");
    ctx.workers.park(a, 2);
    assert_eq!(claude.live_drivers(), 3);

    ctx.workers.park(c, 2);
    assert_eq!(claude.live_drivers(), 2, "one worker was dropped");
    assert_eq!(
        kept(&ctx.workers),
        vec![session(Backend::Claude, "a"), session(Backend::Claude, "c")]
    );
}

#[tokio::test]
async fn busy_workers_count_against_the_cap() {
    let (ctx, claude, _) = ctx_with_fakes(|_| {});
    let busy = spawn_worker(&ctx, Backend::Claude, Some("busy")).await;
    let _turn = ctx.workers.busy(&busy);
    let a = spawn_worker(&ctx, Backend::Claude, Some("a")).await;
    let b = spawn_worker(&ctx, Backend::Claude, Some("b")).await;
    ctx.workers.park(a, 2);
    assert_eq!(ctx.workers.live(), 2);
    ctx.workers.park(b, 2);
    assert_eq!(ctx.workers.live(), 2, "one busy, one idle");
    assert_eq!(
        claude.live_drivers(),
        2,
        "`a` was dropped, the busy one is not"
    );
    assert_eq!(
        kept(&ctx.workers),
        vec![
            session(Backend::Claude, "b"),
            session(Backend::Claude, "busy")
        ]
    );
    drop(busy);
}

#[tokio::test]
async fn the_maintenance_task_retires_idle_and_dead_workers() {
    let (ctx, claude, codex) = ctx_with_fakes(|s| {
        s.backends.get_mut("claude").unwrap().warm.idle_secs = 0;
        s.backends.get_mut("codex").unwrap().warm.idle_secs = 3600;
    });
    let idle = spawn_worker(&ctx, Backend::Claude, Some("idle")).await;
    let fresh = spawn_worker(&ctx, Backend::Codex, Some("fresh")).await;
    let mut dead = spawn_worker(&ctx, Backend::Codex, Some("dead")).await;
    dead.write(&["exit".to_string()]).await.unwrap();
    no_hang("the worker's exit", async {
        while let Some(ev) = dead.recv().await {
            if matches!(ev, ProcEvent::Exit(_)) {
                break; // reaped: no longer alive
            }
        }
    })
    .await;
    for w in [idle, fresh, dead] {
        ctx.workers.park(w, 8);
    }
    assert_eq!((claude.live_drivers(), codex.live_drivers()), (1, 2));

    let task = tokio::spawn(maintain(ctx.clone()));
    ctx.workers.wake.notify_one();
    no_hang("the idle worker's retirement", claude.until_live_drivers(0)).await;
    no_hang("the dead worker's retirement", codex.until_live_drivers(1)).await;
    // (Low memory would also retire the least recently used worker: not a verdict here.)
    if !memory_low() {
        assert_eq!(kept(&ctx.workers), vec![session(Backend::Codex, "fresh")]);
    }

    // The drain ends the task, which retires every idle worker.
    ctx.begin_drain("test");
    no_hang("the end of the task", task).await.unwrap();
    assert!(ctx.workers.list().is_empty());
    assert_eq!(codex.live_drivers(), 0);
}
