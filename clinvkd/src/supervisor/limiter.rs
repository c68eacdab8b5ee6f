//! Concurrency limits: a global cap and a per-backend cap on running CLI processes, with a
//! bounded wait queue. Limits are read from the current settings at each decision, so a reload
//! applies to the next run.

use clinvk_shared::api::Backend;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Why a run could not get a slot.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum CapacityError {
    #[error("at capacity: {running} runs in progress and {queued} waiting (limits.max_concurrent / limits.queue_size); retry later")]
    QueueFull { running: usize, queued: usize },
    #[error("at capacity: no slot for {backend} became free within {waited_secs} s")]
    Timeout { backend: Backend, waited_secs: u64 },
}

/// Current limits, read at each decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) global: usize,
    pub(crate) backend: Option<usize>,
    pub(crate) queue: usize,
    pub(crate) queue_timeout: Duration,
}

#[derive(Default)]
struct State {
    running: usize,
    per_backend: HashMap<Backend, usize>,
    queued: usize,
}

/// The limiter (cheap to clone).
#[derive(Clone, Default)]
pub(crate) struct Limiter {
    state: Arc<Mutex<State>>,
    freed: Arc<Notify>,
}

/// A held slot; dropping it frees the slot.
pub(crate) struct Permit {
    limiter: Limiter,
    backend: Backend,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut st = self.limiter.lock();
            st.running = st.running.saturating_sub(1);
            if let Some(n) = st.per_backend.get_mut(&self.backend) {
                *n = n.saturating_sub(1);
            }
        }
        self.limiter.freed.notify_waiters();
        metrics::gauge!("clinvk_queued_runs").set(self.limiter.queued() as f64);
    }
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn queued(&self) -> usize {
        self.lock().queued
    }

    /// Slots held now: in all, and per backend.
    pub(crate) fn running(&self) -> (usize, Vec<(Backend, usize)>) {
        let st = self.lock();
        let per = st.per_backend.iter().map(|(b, n)| (*b, *n)).collect();
        (st.running, per)
    }

    fn try_take(&self, backend: Backend, limits: &Limits) -> bool {
        let mut st = self.lock();
        let b = st.per_backend.get(&backend).copied().unwrap_or(0);
        if st.running < limits.global && limits.backend.is_none_or(|max| b < max) {
            st.running += 1;
            *st.per_backend.entry(backend).or_insert(0) += 1;
            true
        } else {
            false
        }
    }

    /// Waits for a slot for `backend`. Refused at once when the queue is full, or after the
    /// queue timeout.
    pub(crate) async fn acquire(
        &self,
        backend: Backend,
        limits: Limits,
    ) -> Result<Permit, CapacityError> {
        let permit = || Permit {
            limiter: self.clone(),
            backend,
        };
        if self.try_take(backend, &limits) {
            return Ok(permit());
        }
        let _queued = {
            let mut st = self.lock();
            if st.queued >= limits.queue {
                return Err(CapacityError::QueueFull {
                    running: st.running,
                    queued: st.queued,
                });
            }
            st.queued += 1;
            QueueSlot(self.clone())
        };
        metrics::gauge!("clinvk_queued_runs").set(self.queued() as f64);
        let result = tokio::time::timeout(limits.queue_timeout, async {
            loop {
                let notified = self.freed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.try_take(backend, &limits) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        match result {
            Ok(()) => Ok(permit()),
            Err(_) => Err(CapacityError::Timeout {
                backend,
                waited_secs: limits.queue_timeout.as_secs(),
            }),
        }
    }
}

/// A place in the wait queue, given back on drop (also when the waiting caller goes away).
struct QueueSlot(Limiter);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.queued = st.queued.saturating_sub(1);
    }
}
