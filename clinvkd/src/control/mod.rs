//! The control socket server: a local socket (Unix domain socket, mode 0600, in a 0700 folder)
//! that only the daemon's own user may use. One connection = handshake, one request, its answer.

use crate::ctx::Ctx;
use crate::error::Code;
use clinvk_shared::protocol::{
    read_frame, write_frame, AttachEvent, ClientFrame, ErrorBody, Event, FrameError, Reply,
    Request, ServerFrame, StatusInfo, Welcome, HANDSHAKE_TIMEOUT_MS, PROTOCOL_VERSION,
};
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::traits::StreamCommon as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Binds the control socket at `path` (mode 0600). The caller holds the pid lock, so a file
/// already there is a stale socket of a crashed daemon and is replaced.
pub(crate) fn bind(path: &Path) -> std::io::Result<Listener> {
    if path.as_os_str().len() > 100 {
        return Err(std::io::Error::other(format!(
            "control socket path {} is too long for a Unix socket (set CLINVK_HOME or XDG_RUNTIME_DIR to a shorter folder)",
            path.display()
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let name = path.to_fs_name::<GenericFilePath>()?;
    ListenerOptions::new().name(name).mode(0o600).create_tokio()
}

/// Control connections open at once; more wait in the socket's listen queue.
const MAX_CONTROL_CONNECTIONS: usize = 256;

/// Accepts connections until the hard stop, at most `MAX_CONTROL_CONNECTIONS` at once, backing
/// off on accept errors (out of descriptors and the like) instead of spinning.
pub(crate) async fn serve(ctx: Ctx, listener: Listener) {
    let stopped = ctx.stopped();
    tokio::pin!(stopped);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stopped => break,
        };
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok(conn) => {
                    backoff = Duration::from_millis(5);
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        handle(ctx, conn).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = &mut stopped => break,
        }
    }
}

async fn send(mut tx: &Stream, frame: &ServerFrame) -> Result<(), FrameError> {
    write_frame(&mut tx, frame).await
}

async fn send_error(tx: &Stream, code: &str, message: impl Into<String>) {
    let _ = send(tx, &ServerFrame::Error(ErrorBody::new(code, message))).await;
}

async fn handle(ctx: Ctx, conn: Stream) {
    let peer_uid = conn.peer_creds().ok().and_then(|c| c.euid());
    let tx = &conn;
    let mut rx = &conn;
    let my_uid = nix::unistd::geteuid().as_raw();
    if peer_uid != Some(my_uid) {
        tracing::warn!(peer_uid = ?peer_uid, "refused a control connection from another user");
        send_error(
            tx,
            "permission_denied",
            "this daemon belongs to another user",
        )
        .await;
        return;
    }
    // Handshake.
    let hello = tokio::time::timeout(
        Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        read_frame::<_, ClientFrame>(&mut rx),
    )
    .await;
    match hello {
        Ok(Ok(Some(ClientFrame::Hello(h)))) if h.protocol == PROTOCOL_VERSION => {}
        Ok(Ok(Some(ClientFrame::Hello(h)))) => {
            send_error(
                tx,
                "version_mismatch",
                format!(
                    "client {} speaks control protocol {}, this daemon ({}) speaks {}; restart the daemon (clinvkctl stop) after upgrading",
                    h.client,
                    h.protocol,
                    clinvk_shared::VERSION,
                    PROTOCOL_VERSION
                ),
            )
            .await;
            return;
        }
        Ok(Ok(Some(_))) => {
            return send_error(tx, "handshake_required", "the first frame must be hello").await
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return send_error(tx, "bad_frame", e.to_string()).await,
        Err(_) => {
            return send_error(
                tx,
                "handshake_timeout",
                "no hello within the handshake timeout",
            )
            .await
        }
    }
    let welcome = ServerFrame::Welcome(Welcome {
        protocol: PROTOCOL_VERSION,
        daemon_version: clinvk_shared::VERSION.to_string(),
        pid: std::process::id(),
    });
    if send(tx, &welcome).await.is_err() {
        return;
    }
    // A client that says hello and then nothing does not keep a connection forever.
    let idle = Duration::from_secs(ctx.settings().server.read_timeout_secs);
    let request = match tokio::time::timeout(idle, read_frame::<_, ClientFrame>(&mut rx)).await {
        Err(_) => {
            return send_error(
                tx,
                Code::RequestTimeout.as_str(),
                "no request within the read timeout",
            )
            .await
        }
        Ok(r) => r,
    };
    let request = match request {
        Ok(Some(ClientFrame::Request(r))) => r,
        Ok(Some(_)) => return send_error(tx, "bad_frame", "expected a request").await,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "bad control frame");
            return send_error(tx, "bad_frame", e.to_string()).await;
        }
    };
    tracing::debug!(request = ?std::mem::discriminant(&request), "control request");
    match request {
        Request::Status => {
            let _ = send(
                tx,
                &ServerFrame::Reply(Reply::Status(Box::new(status(&ctx)))),
            )
            .await;
        }
        Request::Reload => {
            let frame = match ctx.reload().await {
                Ok(o) => {
                    tracing::info!(changed = ?o.changed, "configuration reloaded");
                    ServerFrame::Reply(Reply::Reloaded {
                        changed: o.changed,
                        warnings: o.warnings,
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reload refused; the running configuration stays");
                    ServerFrame::Error(ErrorBody::new("invalid_config", e.to_string()))
                }
            };
            let _ = send(tx, &frame).await;
        }
        Request::Stop => {
            let _ = send(tx, &ServerFrame::Reply(Reply::Stopping)).await;
            ctx.begin_drain("stop requested by clinvkctl");
        }
        Request::Attach => attach(&ctx, &conn).await,
        op => operation(&ctx, &conn, op).await,
    }
}

/// Streams attach events until the client leaves or the daemon stops.
async fn attach(ctx: &Ctx, conn: &Stream) {
    let tx = conn;
    let mut rx = conn;
    let mut events = ctx.events.subscribe();
    let stopped = ctx.stopped();
    tokio::pin!(stopped);
    let client_gone = async move {
        // Any byte or EOF from the client ends the attachment.
        let _ = read_frame::<_, ClientFrame>(&mut rx).await;
    };
    tokio::pin!(client_gone);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    if send(tx, &ServerFrame::Event(Event::Attach(ev))).await.is_err() { return; }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = AttachEvent::Log {
                        time: clinvk_shared::types::now_rfc3339(),
                        level: "WARN".into(),
                        message: format!("{n} events were dropped (client too slow)"),
                    };
                    if send(tx, &ServerFrame::Event(Event::Attach(ev))).await.is_err() { return; }
                }
                Err(_) => break,
            },
            _ = &mut client_gone => return,
            _ = &mut stopped => break,
        }
    }
    let _ = send(tx, &ServerFrame::End).await;
}

/// The daemon's state for `clinvkctl status`.
pub(crate) fn status(ctx: &Ctx) -> StatusInfo {
    let s = ctx.settings();
    StatusInfo {
        pid: std::process::id(),
        version: clinvk_shared::VERSION.to_string(),
        uptime_ms: ctx.uptime_ms(),
        started_at: ctx.started_at.clone(),
        http_url: ctx.http_url(),
        http_addr: ctx.http_addr().map(|a| a.to_string()).unwrap_or_default(),
        config_path: ctx.config_path.display().to_string(),
        config_loaded_from_file: ctx.loaded_from_file(),
        state_dir: ctx.paths.state_dir.display().to_string(),
        socket_path: ctx.paths.socket().display().to_string(),
        socket_activated: ctx.socket_activated.load(Ordering::Relaxed),
        draining: ctx.is_draining(),
        reloads: ctx.reloads.load(Ordering::Relaxed),
        config_summary: serde_json::json!({
            "default_backend": s.default_backend,
            "request_timeout_secs": s.server.request_timeout_secs,
            "rate_limit_enabled": s.server.rate_limit_enabled,
            "metrics_enabled": s.server.metrics_enabled,
            "max_concurrent": s.limits.max_concurrent,
            "log_level": s.log.level,
        }),
        requests_total: ctx.requests_total.load(Ordering::Relaxed),
        requests_in_flight: ctx.requests_in_flight.load(Ordering::Relaxed),
        sessions: ctx.sessions.count() as u64,
        // One-shot runs and the turns running in warm workers.
        runs: {
            let mut runs = ctx.supervisor.running();
            runs.extend(ctx.workers.busy_runs());
            runs.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
            runs
        },
        workers: ctx.workers.list(),
        backends: ctx.backend_statuses(),
        accounts: crate::ops::accounts::list(ctx)
            .accounts
            .into_iter()
            .filter(|a| a.limits.is_some())
            .collect(),
    }
}

/// Resolves when the client closes its side (EOF or any further frame).
async fn client_gone(conn: &Stream) {
    let mut rx = conn;
    let _ = read_frame::<_, ClientFrame>(&mut rx).await;
}

/// The error frame of a failed operation.
fn error_frame(e: crate::error::ApiError) -> ServerFrame {
    ServerFrame::Error(ErrorBody::new(e.code(), e.message.clone()))
}

/// The answer frame of an operation's result.
fn reply<T>(r: Result<T, crate::error::ApiError>, wrap: impl FnOnce(T) -> Reply) -> ServerFrame {
    match r {
        Ok(v) => ServerFrame::Reply(wrap(v)),
        Err(e) => error_frame(e),
    }
}

/// A core operation for a `clinvk` command, as the daemon's owner (every session is visible).
/// `Prompt` and `Parallel` stream events before their answer. The client closing the
/// connection (Ctrl-C) cancels the operation and its CLI processes.
async fn operation(ctx: &Ctx, conn: &Stream, request: Request) {
    use crate::ops::{self, multi, sessions, Caller};
    use clinvk_shared::protocol::{AccountsRequest, KeysRequest, SessionsRequest};
    // A stop lets a `clinvk` command finish (and its answer reach the client) within the grace.
    let _work = ctx.work.token();
    let me = Caller::control();
    let work = async {
        let frame = match request {
            Request::Prompt(req) => return run_prompt(ctx, conn, *req).await,
            Request::Parallel(req) => {
                // Progress per task, then the result.
                let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
                let run = multi::parallel(ctx, &me, req, Some(ptx));
                tokio::pin!(run);
                let result = loop {
                    tokio::select! {
                        r = &mut run => break r,
                        Some(ev) = prx.recv() => {
                            if send(conn, &ServerFrame::Event(Event::TaskDone(ev))).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                while let Ok(ev) = prx.try_recv() {
                    let _ = send(conn, &ServerFrame::Event(Event::TaskDone(ev))).await;
                }
                reply(result, |r| Reply::Parallel(Box::new(r)))
            }
            Request::Chain(req) => reply(multi::chain(ctx, &me, req).await, |r| {
                Reply::Chain(Box::new(r))
            }),
            Request::Compare(req) => reply(multi::compare(ctx, &me, req).await, |r| {
                Reply::Compare(Box::new(r))
            }),
            Request::Backends => {
                ServerFrame::Reply(Reply::Backends(sessions::backends(ctx, &Caller::control())))
            }
            Request::Sessions(SessionsRequest::List(q)) => {
                ServerFrame::Reply(Reply::Sessions(sessions::list(ctx, &me, &q)))
            }
            Request::Sessions(SessionsRequest::Get { id }) => {
                reply(sessions::get(ctx, &me, &id), |s| {
                    Reply::Session(Box::new(s))
                })
            }
            Request::Sessions(SessionsRequest::Delete { id }) => {
                reply(sessions::delete(ctx, &me, &id), Reply::SessionDeleted)
            }
            Request::Sessions(SessionsRequest::Clean { older_than_days }) => {
                ServerFrame::Reply(Reply::SessionsCleaned {
                    deleted: sessions::clean(ctx, older_than_days),
                })
            }
            Request::Keys(KeysRequest::Add(req)) => {
                reply(ops::keys::add(ctx, req).await, Reply::KeyAdded)
            }
            Request::Keys(KeysRequest::List) => {
                ServerFrame::Reply(Reply::Keys(ops::keys::list(ctx)))
            }
            Request::Keys(KeysRequest::Revoke { id }) => {
                reply(ops::keys::revoke(ctx, &id).await, Reply::KeyRevoked)
            }
            Request::Usage(q) => reply(ops::usage::report(ctx, &me, q).await, |r| {
                Reply::Usage(Box::new(r))
            }),
            Request::Accounts(AccountsRequest::List) => {
                ServerFrame::Reply(Reply::Accounts(ops::accounts::list(ctx)))
            }
            Request::Accounts(AccountsRequest::Add {
                backend,
                name,
                token,
            }) => reply(
                ops::accounts::add(ctx, backend, &name, token),
                Reply::AccountAdded,
            ),
            Request::Accounts(AccountsRequest::Remove { backend, name }) => reply(
                ops::accounts::remove(ctx, backend, &name),
                Reply::AccountRemoved,
            ),
            Request::Status | Request::Reload | Request::Stop | Request::Attach => {
                ServerFrame::Error(ErrorBody::new("bad_request", "not an operation"))
            }
        };
        let _ = send(conn, &frame).await;
    };
    tokio::select! {
        _ = work => {}
        _ = client_gone(conn) => tracing::info!("control client left; operation cancelled"),
    }
}

/// `clinvk "prompt"`: the run's events as they come, then its result.
async fn run_prompt(ctx: &Ctx, conn: &Stream, req: clinvk_shared::api::PromptRequest) {
    use crate::ops::{prompt, Caller};
    use clinvk_shared::api::PromptOutcome;
    let ask = prompt::Ask::from_request(req, clinvk_shared::api::ApiStyle::Cli);
    let plan = match ask.and_then(|ask| prompt::plan(ctx, &Caller::control(), ask)) {
        Ok(p) => p,
        Err(e) => return send_error(conn, e.code(), e.message).await,
    };
    if plan.dry_run {
        let frame = reply(prompt::dry_run(ctx, &plan), |d| {
            Reply::Prompt(Box::new(PromptOutcome::DryRun(d)))
        });
        let _ = send(conn, &frame).await;
        return;
    }
    let mut run = match prompt::start(ctx, plan).await {
        Ok(r) => r,
        Err(e) => return send_error(conn, e.code(), e.message).await,
    };
    let mut saw_delta = false;
    while let Some(update) = run.next().await {
        let frame = match update {
            prompt::PromptUpdate::Event(ev) => match prompt::run_event(&ev, &mut saw_delta) {
                Some(ev) => ServerFrame::Event(Event::Run(ev)),
                None => continue,
            },
            // `clinvk` offers no client tools.
            prompt::PromptUpdate::ToolCall(_) => continue,
            prompt::PromptUpdate::Done(r) => {
                ServerFrame::Reply(Reply::Prompt(Box::new(PromptOutcome::Result(r.result))))
            }
        };
        if send(conn, &frame).await.is_err() {
            return;
        }
    }
}
