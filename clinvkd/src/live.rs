//! The prompts running now, for the dashboard's live view and `POST /api/v1/runs/{id}/cancel`:
//! each started prompt registers here for its lifetime (its `LiveGuard` lives in the
//! `PromptRun`), and every change wakes the subscribers of `/api/v1/live`. The per-key
//! concurrency quota is counted here, under the same lock that registers a run.

use clinvk_shared::api::LiveRun;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Entry {
    info: LiveRun,
    started: Instant,
    cancel: CancellationToken,
}

/// The running prompts (cheap to clone).
#[derive(Clone)]
pub(crate) struct LiveRuns {
    runs: Arc<Mutex<HashMap<String, Entry>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for LiveRuns {
    fn default() -> Self {
        LiveRuns {
            runs: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

/// A registered run: removed (and the change announced) on drop; `cancel` fires when someone
/// cancels it.
pub(crate) struct LiveGuard {
    live: LiveRuns,
    pub(crate) id: String,
    pub(crate) cancel: CancellationToken,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
        self.live.changed.send_modify(|n| *n += 1);
    }
}

impl LiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a run, unless its key already runs `max_concurrent` (then: that number).
    pub(crate) fn register(
        &self,
        info: LiveRun,
        max_concurrent: Option<u32>,
    ) -> Result<LiveGuard, u32> {
        let cancel = CancellationToken::new();
        let id = info.id.clone();
        {
            let mut runs = self.lock();
            if let (Some(max), Some(key)) = (max_concurrent, &info.key_id) {
                let n = runs
                    .values()
                    .filter(|e| e.info.key_id.as_ref() == Some(key))
                    .count() as u32;
                if n >= max {
                    return Err(n);
                }
            }
            runs.insert(
                id.clone(),
                Entry {
                    info,
                    started: Instant::now(),
                    cancel: cancel.clone(),
                },
            );
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(LiveGuard {
            live: self.clone(),
            id,
            cancel,
        })
    }

    /// Fills in what becomes known after the start (the session id).
    pub(crate) fn update(&self, id: &str, f: impl FnOnce(&mut LiveRun)) {
        if let Some(e) = self.lock().get_mut(id) {
            f(&mut e.info);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// The running prompts, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<LiveRun> {
        let mut v: Vec<LiveRun> = self
            .lock()
            .values()
            .map(|e| LiveRun {
                elapsed_ms: e.started.elapsed().as_millis() as u64,
                ..e.info.clone()
            })
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.elapsed_ms));
        v
    }

    /// How many runs `key_id` has going.
    pub(crate) fn running_for(&self, key_id: &str) -> u32 {
        self.lock()
            .values()
            .filter(|e| e.info.key_id.as_deref() == Some(key_id))
            .count() as u32
    }

    /// Cancels a run; whether it was running.
    pub(crate) fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(e) => {
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Wakes on every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_per_key_and_cancel() {
        let live = LiveRuns::default();
        let info = |id: &str, key: &str| LiveRun {
            id: id.into(),
            key_id: Some(key.into()),
            ..Default::default()
        };
        let mut rx = live.subscribe();
        let a = live.register(info("a", "k"), Some(1)).unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(live.register(info("b", "k"), Some(1)).err(), Some(1));
        let c = live.register(info("c", "other"), Some(1)).unwrap();
        assert_eq!(live.running_for("k"), 1);
        assert!(live.cancel("a") && a.cancel.is_cancelled() && !c.cancel.is_cancelled());
        drop(a);
        assert!(rx.has_changed().unwrap());
        assert!(!live.cancel("a"));
        assert_eq!(live.snapshot().len(), 1);
        assert!(live.register(info("b", "k"), Some(1)).is_ok());
    }
}
