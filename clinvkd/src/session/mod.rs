//! The session store, owned by the daemon: one JSON file per session in the state folder,
//! written atomically (temp file + fsync + rename) and privately (0600). The in-memory map is
//! rebuilt from the files at start, so listings never depend on an index that can drift; a
//! corrupt file is reported and skipped. Prompts on one session are serialised (a per-session
//! lock), so turns never interleave.

use clinvk_shared::api::Backend;
use clinvk_shared::paths::{ensure_private_dir, remove_stale_temp_files, write_private_atomic};
use clinvk_shared::types::{now_rfc3339, TokenUsage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) use clinvk_shared::api::{ListQuery, SessionStatus, Turn};

/// A clinvk session: a conversation with one backend, resumable through the backend's own id.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) backend: Backend,
    /// The backend CLI's own session id (what `--resume` takes).
    pub(crate) backend_session_id: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) working_dir: Option<String>,
    pub(crate) title: String,
    pub(crate) initial_prompt: String,
    pub(crate) tags: Vec<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) status: SessionStatus,
    pub(crate) turn_count: u32,
    pub(crate) token_usage: TokenUsage,
    pub(crate) created_at: String,
    pub(crate) last_used: String,
    /// Which API made it: `native`, `openai`, `anthropic`, `cli`.
    pub(crate) source: String,
    /// For the compatible APIs: a hash of the transcript so far (continuity).
    pub(crate) transcript_hash: Option<String>,
    /// The id of the API key that created it (never the key); none: made by the daemon's
    /// owner (control socket, or HTTP with auth off). Key holders see only their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) owner: Option<String>,
    /// The account its CLI session is in; none: the CLI's own login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) account: Option<String>,
    pub(crate) turns: Vec<Turn>,
}

/// Whether a caller that acts for `owner` (`None`: the daemon's owner, who sees everything) may
/// see session `s`.
pub(crate) fn visible_to(s: &Session, owner: Option<&str>) -> bool {
    owner.is_none_or(|o| s.owner.as_deref() == Some(o))
}

impl Session {
    /// The listing form (no turns).
    pub(crate) fn info(&self) -> clinvk_shared::api::SessionInfo {
        clinvk_shared::api::SessionInfo {
            id: self.id.clone(),
            backend: self.backend,
            backend_session_id: self.backend_session_id.clone(),
            created_at: self.created_at.clone(),
            last_used: self.last_used.clone(),
            working_dir: self.working_dir.clone(),
            model: self.model.clone(),
            initial_prompt: self.initial_prompt.clone(),
            status: self.status,
            turn_count: self.turn_count,
            token_usage: self.token_usage,
            tags: self.tags.clone(),
            title: self.title.clone(),
            metadata: self.metadata.clone(),
            source: self.source.clone(),
            account: self.account.clone(),
        }
    }

    /// The whole session, turns included.
    pub(crate) fn detail(&self) -> clinvk_shared::api::SessionDetail {
        clinvk_shared::api::SessionDetail {
            info: self.info(),
            turns: self.turns.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("session {0:?} not found")]
    NotFound(String),
    #[error("session id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    #[error("cannot write session {id}: {source}")]
    Write { id: String, source: std::io::Error },
}

/// The counter of failed session writes in `/metrics`, labelled by `op`.
pub(crate) const ERRORS_METRIC: &str = "clinvk_session_store_errors_total";

/// A session write that failed where nothing can be refused any more (the run goes on, the
/// session on disk stays as it was): logged with the session id and the step (`op`: `status`,
/// `backend_session_id`, `turn`, `delete`, `claim`, `transcript_hash`) — never a prompt — and
/// counted. A session deleted meanwhile is no store error (debug log only).
pub(crate) fn write_failed(op: &'static str, id: &str, e: &StoreError) {
    match e {
        StoreError::Write { .. } => {
            metrics::counter!(ERRORS_METRIC, "op" => op).increment(1);
            tracing::warn!(session = %id, op, error = %e, "cannot write the session");
        }
        StoreError::NotFound(_) | StoreError::Ambiguous(_) => {
            tracing::debug!(session = %id, op, error = %e, "the session went away meanwhile");
        }
    }
}

/// `write_failed` for a result whose value is not needed.
pub(crate) fn check_write<T>(op: &'static str, id: &str, r: Result<T, StoreError>) {
    if let Err(e) = r {
        write_failed(op, id, &e);
    }
}

/// The store (cheap to clone).
#[derive(Clone)]
pub(crate) struct Store {
    dir: PathBuf,
    map: Arc<Mutex<HashMap<String, Session>>>,
    /// Held from a change of the map to the end of its write to disk, so writes land in the
    /// order the changes were made: a file never goes back to an older state, and a deleted
    /// session is never written again.
    writes: Arc<Mutex<()>>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    pub(crate) corrupt_files: Arc<Mutex<Vec<String>>>,
}

impl Store {
    /// Opens (creating) the folder and loads every session file in it, after removing the
    /// temporary files that a write cut short (a daemon killed mid-write) left behind.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Store> {
        ensure_private_dir(dir)?;
        report_stale_temp_files(dir, remove_stale_temp_files(dir, None));
        let store = Store {
            dir: dir.to_path_buf(),
            map: Arc::default(),
            writes: Arc::default(),
            locks: Arc::default(),
            corrupt_files: Arc::default(),
        };
        store.load_all();
        Ok(store)
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut map = self.map();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Session>(&b).map_err(|e| e.to_string()))
            {
                Ok(s) if !s.id.is_empty() => {
                    map.insert(s.id.clone(), s);
                }
                Ok(_) => self.report_corrupt(&path, "no id"),
                Err(err) => self.report_corrupt(&path, &err),
            }
        }
    }

    fn report_corrupt(&self, path: &Path, err: &str) {
        tracing::warn!(file = %path.display(), error = err, "skipping a corrupt session file");
        self.corrupt_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.display().to_string());
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn persist(&self, s: &Session) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(s).map_err(|e| StoreError::Write {
            id: s.id.clone(),
            source: std::io::Error::other(e),
        })?;
        write_private_atomic(&self.path_of(&s.id), &bytes).map_err(|source| StoreError::Write {
            id: s.id.clone(),
            source,
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.map().len()
    }

    /// Creates and persists a new session.
    pub(crate) fn create(&self, mut s: Session) -> Result<Session, StoreError> {
        if s.id.is_empty() {
            s.id = uuid::Uuid::new_v4().to_string();
        }
        let now = now_rfc3339();
        s.created_at = now.clone();
        s.last_used = now;
        if s.title.is_empty() {
            s.title = title_of(&s.initial_prompt);
        }
        let _writing = self.writing();
        self.persist(&s)?;
        self.map().insert(s.id.clone(), s.clone());
        metrics::counter!("clinvk_sessions_created_total").increment(1);
        metrics::gauge!("clinvk_active_sessions").set(self.count() as f64);
        Ok(s)
    }

    /// Applies `f` to a session and persists it.
    pub(crate) fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut Session),
    ) -> Result<Session, StoreError> {
        let _writing = self.writing();
        let updated = {
            let mut map = self.map();
            let s = map
                .get_mut(id)
                .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
            f(s);
            s.clone()
        };
        self.persist(&updated)?;
        Ok(updated)
    }

    /// Records a finished turn.
    pub(crate) fn add_turn(
        &self,
        id: &str,
        turn: Turn,
        backend_session_id: Option<String>,
        failed: bool,
    ) -> Result<Session, StoreError> {
        self.update(id, |s| {
            s.turn_count += 1;
            s.token_usage.add(turn.usage);
            s.last_used = now_rfc3339();
            if backend_session_id.is_some() {
                s.backend_session_id = backend_session_id;
            }
            s.status = if failed {
                SessionStatus::Error
            } else {
                SessionStatus::Completed
            };
            s.turns.push(turn);
        })
    }

    /// Runs store work on the blocking pool: writes wait for the disk (fsync), and the async
    /// workers must keep serving meanwhile.
    pub(crate) async fn off_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let st = self.clone();
        match tokio::task::spawn_blocking(move || f(&st)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Write {
                id: String::new(),
                source: std::io::Error::other("the session write was cancelled (shutdown)"),
            }),
        }
    }

    /// `create` on the blocking pool.
    pub(crate) async fn create_async(&self, s: Session) -> Result<Session, StoreError> {
        self.off_thread(move |st| st.create(s)).await
    }

    /// `update` on the blocking pool.
    pub(crate) async fn update_async(
        &self,
        id: &str,
        f: impl FnOnce(&mut Session) + Send + 'static,
    ) -> Result<Session, StoreError> {
        let id = id.to_string();
        self.off_thread(move |st| st.update(&id, f)).await
    }

    /// By full id or unique prefix, among the sessions `owner` may see.
    pub(crate) fn get(
        &self,
        id_or_prefix: &str,
        owner: Option<&str>,
    ) -> Result<Session, StoreError> {
        let map = self.map();
        if let Some(s) = map.get(id_or_prefix).filter(|s| visible_to(s, owner)) {
            return Ok(s.clone());
        }
        if id_or_prefix.is_empty() {
            return Err(StoreError::NotFound(String::new()));
        }
        let mut hits = map
            .values()
            .filter(|s| visible_to(s, owner) && s.id.starts_with(id_or_prefix));
        match (hits.next(), hits.next()) {
            (Some(s), None) => Ok(s.clone()),
            (Some(_), Some(_)) => Err(StoreError::Ambiguous(id_or_prefix.to_string())),
            _ => Err(StoreError::NotFound(id_or_prefix.to_string())),
        }
    }

    /// Newest `last_used` first; returns (page, total matching).
    pub(crate) fn list(&self, q: &ListQuery, owner: Option<&str>) -> (Vec<Session>, usize) {
        let mut all: Vec<Session> = self
            .map()
            .values()
            .filter(|s| visible_to(s, owner))
            .filter(|s| q.backend.as_ref().is_none_or(|b| s.backend.as_str() == b))
            .filter(|s| q.status.is_none_or(|st| s.status == st))
            .cloned()
            .collect();
        all.sort_by(|a, b| {
            b.last_used
                .cmp(&a.last_used)
                .then(b.created_at.cmp(&a.created_at))
        });
        let total = all.len();
        let offset = q.offset.unwrap_or(0);
        let limit = q.limit.unwrap_or(100);
        (all.into_iter().skip(offset).take(limit).collect(), total)
    }

    pub(crate) fn delete(
        &self,
        id_or_prefix: &str,
        owner: Option<&str>,
    ) -> Result<Session, StoreError> {
        let _writing = self.writing();
        let s = self.get(id_or_prefix, owner)?;
        match std::fs::remove_file(self.path_of(&s.id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Write { id: s.id, source }),
        }
        self.map().remove(&s.id);
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&s.id);
        metrics::gauge!("clinvk_active_sessions").set(self.count() as f64);
        Ok(s)
    }

    /// Deletes sessions not used for `days`; returns how many.
    pub(crate) fn clean_older_than(&self, days: u64) -> usize {
        let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400);
        let old: Vec<String> = self
            .map()
            .values()
            .filter(|s| {
                humantime::parse_rfc3339(&s.last_used)
                    .map(|t| t < cutoff)
                    .unwrap_or(false)
            })
            .map(|s| s.id.clone())
            .collect();
        old.iter()
            .filter(|id| match self.delete(id, None) {
                Ok(_) => true,
                Err(e) => {
                    write_failed("delete", id, &e);
                    false
                }
            })
            .count()
    }

    /// Marks sessions left `active` by a daemon that died or was stopped mid-run.
    pub(crate) fn mark_interrupted(&self) -> usize {
        let ids: Vec<String> = self
            .map()
            .values()
            .filter(|s| s.status == SessionStatus::Active)
            .map(|s| s.id.clone())
            .collect();
        ids.iter()
            .filter(
                |id| match self.update(id, |s| s.status = SessionStatus::Interrupted) {
                    Ok(_) => true,
                    Err(e) => {
                        write_failed("status", id, &e);
                        false
                    }
                },
            )
            .count()
    }

    /// The lock that serialises turns on one session.
    pub(crate) fn turn_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }
}

impl Store {
    /// Takes the newest session of `backend` whose transcript hash is `hash`, atomically clearing
    /// its hash so that no second request can continue the same conversation at the same time
    /// (two clients sending the same history would otherwise share one backend session). The
    /// caller stores the new hash once the turn succeeded.
    pub(crate) fn claim_by_transcript(
        &self,
        backend: Backend,
        hash: &str,
        owner: Option<&str>,
    ) -> Option<Session> {
        let _writing = self.writing();
        let claimed = {
            let mut map = self.map();
            let id = map
                .values()
                .filter(|s| visible_to(s, owner))
                .filter(|s| s.backend == backend && s.transcript_hash.as_deref() == Some(hash))
                .max_by(|a, b| a.last_used.cmp(&b.last_used))
                .map(|s| s.id.clone())?;
            let s = map.get_mut(&id)?;
            s.transcript_hash = None;
            s.clone()
        };
        if let Err(e) = self.persist(&claimed) {
            write_failed("claim", &claimed.id, &e);
        }
        Some(claimed)
    }
}

/// Logs the temporary files a store removed at open (left by writes cut short).
pub(crate) fn report_stale_temp_files(dir: &Path, removed: Vec<PathBuf>) {
    if !removed.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            files = removed.len(),
            "removed temporary files left by writes that were cut short (a daemon killed mid-write)"
        );
    }
}

/// A title from the first prompt: its first line, at most 60 characters.
pub(crate) fn title_of(prompt: &str) -> String {
    let line = prompt
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut t: String = line.chars().take(60).collect();
    if line.chars().count() > 60 {
        t.push('…');
    }
    t
}

/// At most `n` characters of `s`.
pub(crate) fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_list_delete_and_reload() {
        let d = tempfile::tempdir().unwrap();
        let st = Store::open(d.path()).unwrap();
        let a = st
            .create(Session {
                backend: Backend::Claude,
                initial_prompt: "hello there\nmore".into(),
                ..Default::default()
            })
            .unwrap();
        let b = st
            .create(Session {
                backend: Backend::Codex,
                initial_prompt: "x".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.title, "hello there");
        st.add_turn(
            &a.id,
            Turn {
                usage: TokenUsage {
                    input_tokens: 3,
                    output_tokens: 4,
                    ..Default::default()
                },
                ..Default::default()
            },
            Some("bs-1".into()),
            false,
        )
        .unwrap();
        let got = st.get(&a.id[..8], None).unwrap();
        assert_eq!(got.turn_count, 1);
        assert_eq!(got.backend_session_id.as_deref(), Some("bs-1"));
        let (page, total) = st.list(
            &ListQuery {
                backend: Some("codex".into()),
                ..Default::default()
            },
            None,
        );
        assert_eq!((page.len(), total), (1, 1));
        assert_eq!(page[0].id, b.id);
        // A corrupt file is skipped, not fatal; the store reloads from files.
        std::fs::write(d.path().join("junk.json"), b"{not json").unwrap();
        let st2 = Store::open(d.path()).unwrap();
        assert_eq!(st2.count(), 2);
        assert_eq!(st2.corrupt_files.lock().unwrap().len(), 1);
        assert_eq!(st2.get(&a.id, None).unwrap(), st.get(&a.id, None).unwrap());
        st2.delete(&b.id, None).unwrap();
        assert!(matches!(st2.get(&b.id, None), Err(StoreError::NotFound(_))));
        assert_eq!(Store::open(d.path()).unwrap().count(), 1);
        assert_eq!(st2.mark_interrupted(), 0);
    }

    #[test]
    fn ambiguous_prefix() {
        let d = tempfile::tempdir().unwrap();
        let st = Store::open(d.path()).unwrap();
        st.create(Session {
            id: "abc1".into(),
            ..Default::default()
        })
        .unwrap();
        st.create(Session {
            id: "abc2".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(st.get("abc", None), Err(StoreError::Ambiguous(_))));
        assert!(st.get("abc2", None).is_ok());
        assert_eq!(st.mark_interrupted(), 2);
    }

    #[test]
    fn concurrent_writes_never_leave_an_older_file() {
        let d = tempfile::tempdir().unwrap();
        let st = Store::open(d.path()).unwrap();
        let id = st.create(Session::default()).unwrap().id;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let st = st.clone();
                let id = id.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        st.update(&id, |s| s.turn_count += 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let on_disk: Session =
            serde_json::from_slice(&std::fs::read(d.path().join(format!("{id}.json"))).unwrap())
                .unwrap();
        assert_eq!(
            on_disk.turn_count, 400,
            "the last write is the newest state"
        );
        assert_eq!(st.get(&id, None).unwrap(), on_disk);
        // A delete racing an update never leaves the file behind.
        st.delete(&id, None).unwrap();
        assert!(st.update(&id, |s| s.turn_count += 1).is_err());
        assert!(!d.path().join(format!("{id}.json")).exists());
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "no temp file is left behind");
    }

    #[test]
    fn temp_files_of_dead_writers_are_removed_at_open() {
        use crate::testkit::{leave_temp, DEAD_PID};
        let d = tempfile::tempdir().unwrap();
        let st = Store::open(d.path()).unwrap();
        let s = st.create(Session::default()).unwrap();
        let file = format!("{}.json", s.id);
        drop(st);
        // Left by a daemon killed with -9 mid-write: its pid is gone; or its pid is ours (a
        // container's pid 1 after a restart) but the file predates this process.
        let dead = leave_temp(d.path(), &file, DEAD_PID, 60);
        let ours_before_start = leave_temp(d.path(), "other.json", std::process::id(), 86_400);
        // A writer that still runs (pid 1 always does) and wrote after this process started is
        // not touched; neither is a file that only looks alike, nor a session file.
        let live = leave_temp(d.path(), "live.json", 1, -86_400);
        let lookalike = d.path().join("notes.json.tmp.1.2");
        std::fs::write(&lookalike, b"x").unwrap();
        let st = Store::open(d.path()).unwrap();
        assert!(!dead.exists(), "a dead writer's temp file is removed");
        assert!(
            !ours_before_start.exists(),
            "a temp file older than this process is removed"
        );
        assert!(live.exists(), "a live writer's fresh temp file stays");
        assert!(
            lookalike.exists(),
            "only the store's own temp files are touched"
        );
        assert_eq!(st.count(), 1, "the sessions still load");
        assert_eq!(st.get(&s.id, None).unwrap(), s);
        assert!(st.corrupt_files.lock().unwrap().is_empty());
    }

    #[test]
    fn key_holders_see_only_their_own() {
        let d = tempfile::tempdir().unwrap();
        let st = Store::open(d.path()).unwrap();
        let a = st
            .create(Session {
                owner: Some("key-a".into()),
                ..Default::default()
            })
            .unwrap();
        assert!(st.get(&a.id, Some("key-b")).is_err());
        assert!(st.delete(&a.id, Some("key-b")).is_err());
        assert!(st.get(&a.id, Some("key-a")).is_ok());
        assert!(st.get(&a.id, None).is_ok(), "the owner sees all");
        assert_eq!(st.list(&ListQuery::default(), Some("key-b")).1, 0);
        assert_eq!(st.list(&ListQuery::default(), Some("key-a")).1, 1);
    }
}
