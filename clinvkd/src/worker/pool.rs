//! The pool: workers started ahead for new sessions — `warm.pool` of them with the default
//! settings in the default folder, and one spare in each of the `warm.folders` other folders that
//! new sessions with the default settings used most recently (within `warm.idle_secs`) — each
//! refilled after it is taken.

use super::*;
use crate::backend::Invocation;

/// A folder a new session used with the default settings: what its spare is started with.
pub(super) struct RecentFolder {
    backend: Backend,
    inv: Invocation,
    key: WorkerKey,
    used: Instant,
}

impl Workers {
    /// A new warm session started with `key`: when that is the default settings in another
    /// folder than the default one, the folder keeps a spare from now on.
    pub(crate) fn note_new_session(
        &self,
        ctx: &crate::ctx::Ctx,
        inv: &Invocation,
        key: &WorkerKey,
    ) {
        let warm = ctx.settings().backend(inv.backend).warm;
        if inv.resume.is_some() || warm.pool == 0 || warm.folders == 0 {
            return;
        }
        let Some(mut template) = crate::ops::prompt::default_invocation(ctx, inv.backend) else {
            return;
        };
        if template.workdir == inv.workdir {
            return; // the default folder: the pool proper
        }
        template.workdir = inv.workdir.clone();
        if crate::engine::worker_key(ctx, &template).ok().as_ref() != Some(key) {
            return; // other settings: such sessions start their worker on demand
        }
        {
            let mut st = self.state();
            st.recent.retain(|r| r.key != *key);
            st.recent.push(RecentFolder {
                backend: inv.backend,
                inv: template,
                key: key.clone(),
                used: Instant::now(),
            });
        }
        self.wake.notify_one();
    }

    /// The folders of `backend` that keep a spare: the `n` most recently used within `idle`
    /// (the others are forgotten).
    fn recent_folders(
        &self,
        backend: Backend,
        n: usize,
        idle: Duration,
    ) -> Vec<(Invocation, WorkerKey)> {
        let mut st = self.state();
        st.recent.retain(|r| r.used.elapsed() < idle);
        st.recent.sort_by_key(|r| std::cmp::Reverse(r.used));
        let mut kept = 0;
        st.recent.retain(|r| {
            if r.backend != backend {
                return true;
            }
            kept += 1;
            kept <= n
        });
        st.recent
            .iter()
            .filter(|r| r.backend == backend)
            .map(|r| (r.inv.clone(), r.key.clone()))
            .collect()
    }
}

/// Refilling a backend's pool after its pooled workers died unused: 1 s, then doubling up to
/// 5 min, so a CLI that cannot start is not restarted every second; a reload starts afresh.
#[derive(Default)]
pub(super) struct PoolBackoff {
    /// Per backend: consecutive failures, and when the next refill may run.
    pub(super) state: HashMap<Backend, (u32, Instant)>,
    pub(super) reloads: u64,
}

impl PoolBackoff {
    pub(super) fn failed(&mut self, b: Backend) -> Duration {
        let entry = self.state.entry(b).or_insert((0, Instant::now()));
        entry.0 += 1;
        let wait = Duration::from_secs((1u64 << (entry.0 - 1).min(9)).min(300));
        entry.1 = Instant::now() + wait;
        wait
    }

    pub(super) fn ready(&self, b: Backend) -> bool {
        self.state
            .get(&b)
            .is_none_or(|(_, at)| Instant::now() >= *at)
    }
}

/// Keeps `backends.<b>.warm.pool` workers ready for a new session with the default settings
/// (pooled workers started with other settings are retired).
pub(super) async fn fill_pool(ctx: &crate::ctx::Ctx, backend: Backend) {
    let settings = ctx.settings();
    let cfg = settings.backend(backend);
    let wanted = if cfg.enabled && cfg.mode == clinvk_shared::config::BackendMode::Warm {
        cfg.warm.pool
    } else {
        0
    };
    let available = ctx.backends.get(backend).is_some_and(|s| s.available);
    let template = if wanted > 0 && available {
        crate::ops::prompt::default_invocation(ctx, backend)
    } else {
        None
    };
    let key = template
        .as_ref()
        .and_then(|inv| crate::engine::worker_key(ctx, inv).ok());
    // What the pool holds: `wanted` workers with the default settings, one per recent folder.
    let mut wants: Vec<(Invocation, WorkerKey, usize)> = Vec::new();
    if let (Some(inv), Some(key)) = (template, key) {
        wants.push((inv, key, wanted));
        let idle = Duration::from_secs(cfg.warm.idle_secs);
        wants.extend(
            ctx.workers
                .recent_folders(backend, cfg.warm.folders, idle)
                .into_iter()
                .map(|(inv, key)| (inv, key, 1)),
        );
    }
    let stale = ctx.workers.retire_where(|w| {
        w.backend == backend
            && w.state() == WorkerState::Pooled
            && !wants.iter().any(|(_, key, _)| *key == w.key)
    });
    if stale > 0 {
        tracing::info!(backend = %backend, count = stale, "pooled workers retired: the default settings changed, or their folder was not used lately");
    }
    let max = max_workers(settings.limits.max_workers);
    for (inv, key, n) in &wants {
        while ctx.workers.pooled(backend, key) < *n && ctx.workers.live() < max {
            match crate::engine::spawn_worker(ctx, inv, key.clone()).await {
                Ok(w) => {
                    tracing::info!(worker = %w.id, backend = %backend, pid = w.pid, folder = ?inv.workdir, "pooled worker started");
                    metrics::counter!("clinvk_worker_spawns_total", "backend" => backend.as_str(), "reason" => "pool").increment(1);
                    ctx.workers.park(w, max);
                }
                Err(e) => {
                    tracing::warn!(backend = %backend, error = %e, "cannot start a pooled worker");
                    return;
                }
            }
        }
    }
}
