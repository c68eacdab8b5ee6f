//! Stored OpenAI Responses (`store: true`, the default): what `GET /openai/v1/responses/{id}`
//! answers and what `previous_response_id` continues. One private JSON file per response in
//! `<state>/responses/`, written off the async threads; each remembers the key that created it
//! (a key holder sees only its own, like sessions) and the clinvk session it continued.

use clinvk_shared::api::Backend;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// The key that created it (`None`: the daemon's owner, auth off).
    pub(crate) owner: Option<String>,
    /// The clinvk session the run used; `previous_response_id` continues it.
    pub(crate) session_id: Option<String>,
    pub(crate) backend: Backend,
    /// The response object as the API answered it (a foreign format: kept as JSON).
    pub(crate) body: serde_json::Value,
}

#[derive(Debug, Clone)]
pub(crate) struct ResponseStore {
    dir: PathBuf,
}

impl ResponseStore {
    /// Opens (creating) the folder, removing the temporary files that a write cut short left.
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Self> {
        clinvk_shared::paths::ensure_private_dir(&dir)?;
        crate::session::report_stale_temp_files(
            &dir,
            clinvk_shared::paths::remove_stale_temp_files(&dir, None),
        );
        Ok(ResponseStore { dir })
    }

    /// The file of an id; `None` for ids this server never makes (no path tricks).
    fn file(&self, id: &str) -> Option<PathBuf> {
        let ok = id.starts_with("resp_")
            && id.len() <= 100
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| self.dir.join(format!("{id}.json")))
    }

    pub(crate) async fn put(&self, id: &str, rec: Stored) -> std::io::Result<()> {
        let store = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || store.put_now(&id, &rec))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Writes on the calling thread (one small file; for a caller that must not return before
    /// it is on disk and cannot await).
    pub(crate) fn put_now(&self, id: &str, rec: &Stored) -> std::io::Result<()> {
        let path = self
            .file(id)
            .ok_or_else(|| std::io::Error::other(format!("invalid response id {id:?}")))?;
        let bytes = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        clinvk_shared::paths::write_private_atomic(&path, &bytes)
    }

    /// The response, if it exists and `owner` may see it.
    pub(crate) async fn get(&self, id: &str, owner: Option<&str>) -> Option<Stored> {
        let path = self.file(id)?;
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .ok()?
            .ok()?;
        let rec: Stored = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(response = %id, error = %e, "unreadable stored response");
                return None;
            }
        };
        owner
            .is_none_or(|o| rec.owner.as_deref() == Some(o))
            .then_some(rec)
    }

    /// Deletes it; false when it does not exist for `owner`.
    pub(crate) async fn delete(&self, id: &str, owner: Option<&str>) -> std::io::Result<bool> {
        if self.get(id, owner).await.is_none() {
            return Ok(false);
        }
        let Some(path) = self.file(id) else {
            return Ok(false);
        };
        tokio::task::spawn_blocking(move || match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{leave_temp, DEAD_PID};

    #[test]
    fn temp_files_of_dead_writers_are_removed_at_open() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("responses");
        let store = ResponseStore::open(dir.clone()).unwrap();
        let rec = Stored {
            owner: None,
            session_id: Some("s1".into()),
            backend: Backend::Codex,
            body: serde_json::json!({"id": "resp_1"}),
        };
        store.put_now("resp_1", &rec).unwrap();
        let dead = leave_temp(&dir, "resp_2.json", DEAD_PID, 60);
        let live = leave_temp(&dir, "resp_3.json", 1, -86_400);
        let store = ResponseStore::open(dir.clone()).unwrap();
        assert!(!dead.exists(), "a dead writer's temp file is removed");
        assert!(live.exists(), "a live writer's fresh temp file stays");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt
            .block_on(store.get("resp_1", None))
            .expect("still stored");
        assert_eq!(got.session_id.as_deref(), Some("s1"));
    }
}
