//! The open HTTP connections, so that connections that never send a request cannot hoard the
//! server: a client address holds at most `server.max_connections_per_client` connections
//! (addresses of `server.trusted_proxies` excepted: a balancer carries many clients), and when
//! a cap is reached the oldest connection that has not sent a request yet — a half-open one —
//! is closed to make room. A connection that sent a request is never closed for this.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// One connection as the registry sees it.
struct Entry {
    ip: IpAddr,
    /// Whether it has sent a request head (then it is never evicted).
    used: Arc<AtomicBool>,
    /// Closes it.
    close: Option<oneshot::Sender<()>>,
}

/// The registry (cheap to clone).
#[derive(Clone, Default)]
pub(crate) struct Conns(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    next: u64,
    /// By accept order: the first entries are the oldest.
    open: BTreeMap<u64, Entry>,
}

/// A registered connection: its `used` flag for the service, the signal that closes it, and the
/// guard that unregisters it when its task ends.
pub(crate) struct Registered {
    pub(crate) used: Arc<AtomicBool>,
    pub(crate) closed: oneshot::Receiver<()>,
    pub(crate) guard: Unregister,
}

pub(crate) struct Unregister {
    conns: Conns,
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.conns.state().open.remove(&self.id);
    }
}

/// Why a new connection was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused;

impl Conns {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for a new connection from `ip`: at the per-client cap (`per_client`, None
    /// for a trusted proxy), the client's oldest unused connection is closed; with none to
    /// close, the new one is refused.
    pub(crate) fn make_room(&self, ip: IpAddr, per_client: Option<usize>) -> Result<(), Refused> {
        let Some(cap) = per_client else {
            return Ok(());
        };
        let mut st = self.state();
        let mine = st
            .open
            .values()
            .filter(|e| e.ip == ip && e.close.is_some())
            .count();
        if mine >= cap && !close_oldest_unused(&mut st, |e| e.ip == ip) {
            return Err(Refused);
        }
        Ok(())
    }

    /// Registers a new connection from `ip`.
    pub(crate) fn register(&self, ip: IpAddr) -> Registered {
        let mut st = self.state();
        let id = st.next;
        st.next += 1;
        let used = Arc::new(AtomicBool::new(false));
        let (close, closed) = oneshot::channel();
        st.open.insert(
            id,
            Entry {
                ip,
                used: used.clone(),
                close: Some(close),
            },
        );
        Registered {
            used,
            closed,
            guard: Unregister {
                conns: self.clone(),
                id,
            },
        }
    }

    /// Closes the oldest connection (of any client) that has not sent a request; false when
    /// there is none.
    pub(crate) fn close_oldest_unused(&self) -> bool {
        close_oldest_unused(&mut self.state(), |_| true)
    }

    /// Open connections (registered and not ended).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state().open.len()
    }
}

fn close_oldest_unused(st: &mut State, pick: impl Fn(&Entry) -> bool) -> bool {
    let victim = st
        .open
        .iter_mut()
        .find(|(_, e)| pick(e) && e.close.is_some() && !e.used.load(Ordering::Relaxed));
    match victim {
        Some((_, e)) => {
            if let Some(tx) = e.close.take() {
                let _ = tx.send(());
            }
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn open(conns: &Conns, ip: IpAddr, cap: Option<usize>) -> Result<Registered, Refused> {
        conns.make_room(ip, cap)?;
        Ok(conns.register(ip))
    }

    #[test]
    fn a_client_over_its_cap_loses_its_oldest_unused_connection() {
        let conns = Conns::default();
        let mut a = open(&conns, ip(1), Some(2)).unwrap();
        let mut b = open(&conns, ip(1), Some(2)).unwrap();
        // Another client is not counted against the first.
        let mut other = open(&conns, ip(2), Some(2)).unwrap();
        let _c = open(&conns, ip(1), Some(2)).unwrap();
        assert!(
            a.closed.try_recv().is_ok(),
            "the oldest unused one is closed"
        );
        assert!(b.closed.try_recv().is_err());
        assert!(other.closed.try_recv().is_err());
        drop(a);
        assert_eq!(conns.len(), 3);
    }

    #[test]
    fn used_connections_are_never_closed_and_the_new_one_is_refused() {
        let conns = Conns::default();
        let a = open(&conns, ip(1), Some(1)).unwrap();
        a.used.store(true, Ordering::Relaxed);
        assert_eq!(open(&conns, ip(1), Some(1)).err(), Some(Refused));
        // A trusted proxy has no per-client cap.
        assert!(open(&conns, ip(1), None).is_ok());
    }

    #[test]
    fn the_global_cap_closes_the_oldest_unused_of_anyone() {
        let conns = Conns::default();
        let a = conns.register(ip(1));
        a.used.store(true, Ordering::Relaxed);
        let mut b = conns.register(ip(2));
        assert!(conns.close_oldest_unused());
        assert!(b.closed.try_recv().is_ok());
        assert!(!conns.close_oldest_unused(), "b is closing, a is in use");
        drop(b);
        assert_eq!(conns.len(), 1);
    }
}
