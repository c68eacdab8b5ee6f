//! Life under a service manager: systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`) and state notifications (`NOTIFY_SOCKET`: `READY=1`, `RELOADING=1`,
//! `STOPPING=1`, `STATUS=`). Without these variables every function here is a no-op, so a daemon
//! started by hand or by `clinvk serve` behaves exactly as before.
//!
//! The passed sockets are taken once, in `main`, before any thread starts: taking them removes
//! `LISTEN_*` from the environment, so the CLIs the daemon spawns never see them.

use sd_notify::NotifyState;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;

/// The name (`FileDescriptorName=` in a `.socket` unit, `--fdname` of `systemd-socket-activate`)
/// that marks a passed socket as the control socket.
pub(crate) const CONTROL_FD_NAME: &str = "control";

/// The sockets systemd passed.
#[derive(Debug, Default)]
pub struct Activation {
    /// Stream sockets for HTTP (every passed TCP socket not named `control`).
    pub(crate) http: Vec<TcpListener>,
    /// The control socket, when one was passed named `control` (or an unnamed Unix socket).
    pub(crate) control: Option<UnixListener>,
    /// What was passed, for the start-up log: `name=kind` per socket.
    pub(crate) described: Vec<String>,
}

impl Activation {
    pub(crate) fn is_empty(&self) -> bool {
        self.http.is_empty() && self.control.is_none()
    }
}

/// Why the passed sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Env(std::io::Error),
    #[error("socket activation: passed socket #{index} (name {name:?}) is {what}: {source}")]
    Socket {
        index: usize,
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("socket activation: {0} sockets were passed but none is a TCP stream socket for HTTP")]
    NoHttp(usize),
}

/// Takes the sockets passed by systemd, if any (`Ok(None)` when not socket-activated).
///
/// Call once, before threads start: it removes `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`.
pub fn take_activation() -> Result<Option<Activation>, ActivationError> {
    // Names in passing order (sd-notify also checks LISTEN_PID against our pid).
    let names: Vec<String> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::Env)?
        .map(|(_, name)| name)
        .collect();
    // listenfd turns the descriptors into owned std sockets without unsafe code on our side,
    // after checking their family and type, and clears LISTEN_PID/LISTEN_FDS.
    let mut fds = listenfd::ListenFd::from_env();
    std::env::remove_var("LISTEN_FDNAMES");
    if names.is_empty() {
        return Ok(None);
    }
    let mut act = Activation::default();
    for (index, name) in names.iter().enumerate() {
        if name == CONTROL_FD_NAME {
            let l = fds
                .take_unix_listener(index)
                .map_err(|source| ActivationError::Socket {
                    index,
                    name: name.clone(),
                    what: "named control but not a Unix stream socket",
                    source,
                })?;
            if let Some(l) = l {
                act.described.push(format!("{name}=unix"));
                act.control = Some(l);
            }
            continue;
        }
        match fds.take_tcp_listener(index) {
            Ok(Some(l)) => {
                act.described.push(format!("{name}=tcp"));
                act.http.push(l);
            }
            Ok(None) => {}
            Err(tcp_err) => match fds.take_unix_listener(index) {
                // An unnamed Unix stream socket can only be meant as the control socket.
                Ok(Some(l)) if act.control.is_none() => {
                    act.described.push(format!("{name}=unix (control)"));
                    act.control = Some(l);
                }
                _ => {
                    return Err(ActivationError::Socket {
                        index,
                        name: name.clone(),
                        what: "not a TCP listening socket",
                        source: tcp_err,
                    })
                }
            },
        }
    }
    if act.http.is_empty() {
        return Err(ActivationError::NoHttp(names.len()));
    }
    for l in &act.http {
        l.set_nonblocking(true).map_err(ActivationError::Env)?;
    }
    if let Some(c) = &act.control {
        c.set_nonblocking(true).map_err(ActivationError::Env)?;
    }
    Ok(Some(act))
}

/// Whether a service manager listens for our notifications.
pub(crate) fn notify_enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

fn send(states: &[NotifyState]) {
    if !notify_enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// `READY=1`: the daemon serves (sent once the listeners are up, and after a reload).
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (as `Type=notify-reload` requires); `ready` follows.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(_) => send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading the configuration"),
        ]),
    }
}

/// `STOPPING=1`: the drain has started.
pub(crate) fn stopping(reason: &str) {
    let status = format!("draining ({reason})");
    send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
}

/// `STATUS=…` alone.
pub(crate) fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// Turns a passed Unix socket into the control listener. The socket file belongs to the service
/// manager: the listener never removes it.
pub(crate) fn adopt_control(
    l: UnixListener,
) -> std::io::Result<interprocess::local_socket::tokio::Listener> {
    use interprocess::os::unix::uds_local_socket::tokio::Listener as UdsListener;
    let fd: std::os::fd::OwnedFd = l.into();
    let uds = UdsListener::try_from(fd)?;
    Ok(interprocess::local_socket::tokio::Listener::from(uds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_activated_without_env() {
        // The test runner never sets LISTEN_PID to our pid.
        let a = take_activation().expect("no error without LISTEN_*");
        assert!(a.is_none());
    }

    #[test]
    fn adopts_a_unix_listener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.sock");
        let l = UnixListener::bind(&path).expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let adopted = adopt_control(l).expect("adopt");
            drop(adopted);
        });
        assert!(path.exists(), "an adopted socket file is left to its owner");
    }
}
