//! The usage store: one row per run in SQLite (`usage.db` in the state folder, WAL mode, 0600)
//! — when, which key, backend, model, API style, session, duration, time to first output, how
//! it ended, tokens and cost. The schema is migrated by `PRAGMA user_version`.
//!
//! The store never stops a run: a database that cannot be opened, is corrupt or stays locked is
//! logged and counted (`clinvk_usage_store_errors_total`) and the run goes on unrecorded. A
//! corrupt file is moved aside (`usage.db.corrupt-<time>`) and a new one started.
//!
//! The daily quotas are counted here too: the check and the new row happen in one transaction
//! under the store's lock, so concurrent requests cannot slip past a quota together.

use clinvk_shared::api::{
    Backend, Quotas, UsageGroup, UsageGroupBy, UsageQuery, UsageReport, UsageTotals,
};
use clinvk_shared::config::Settings;
use clinvk_shared::types::TokenUsage;
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The schema, one migration per entry; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_ms INTEGER NOT NULL,
        key_id TEXT,
        backend TEXT NOT NULL,
        model TEXT,
        api_style TEXT NOT NULL,
        session_id TEXT,
        duration_ms INTEGER,
        first_output_ms INTEGER,
        exit_code INTEGER,
        outcome TEXT NOT NULL DEFAULT 'running',
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL,
        cost_source TEXT
    );
    CREATE INDEX runs_started ON runs(started_ms);
    CREATE INDEX runs_key_started ON runs(key_id, started_ms);",
    // The account that answered (NULL: the CLI's own login).
    "ALTER TABLE runs ADD COLUMN account TEXT;",
];

/// How long a write waits for a lock held by someone else before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1000);

/// A run as it starts.
#[derive(Debug, Clone)]
pub(crate) struct NewRun {
    pub(crate) key_id: Option<String>,
    pub(crate) backend: Backend,
    pub(crate) model: Option<String>,
    pub(crate) api_style: clinvk_shared::api::ApiStyle,
    pub(crate) session_id: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunEnd {
    /// The backend and the account that answered (a route or a failover may have moved it).
    pub(crate) backend: Backend,
    pub(crate) account: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) duration_ms: u64,
    pub(crate) first_output_ms: Option<u64>,
    pub(crate) exit_code: i32,
    pub(crate) outcome: crate::engine::RunOutcome,
    pub(crate) usage: TokenUsage,
}

/// Why a run may not start.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QuotaExceeded {
    Requests { limit: u64 },
    Tokens { used: u64, limit: u64 },
}

/// The counter of store errors in `/metrics`.
const ERRORS_METRIC: &str = "clinvk_usage_store_errors_total";

/// A store error: logged and counted, never passed to a run.
fn failed(what: &str, e: &dyn std::fmt::Display) {
    metrics::counter!(ERRORS_METRIC).increment(1);
    tracing::error!(error = %e, "usage store: {what}");
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The start of the current UTC day, and the seconds until the next one.
pub(crate) fn utc_day() -> (i64, u64) {
    let now = now_ms();
    let day = 86_400_000;
    let start = now - now.rem_euclid(day);
    (start, ((start + day - now) as u64).div_ceil(1000).max(1))
}

/// The cost of a run: the CLI's own figure, else its tokens at the configured price.
pub(crate) fn cost(
    settings: &Settings,
    backend: Backend,
    model: Option<&str>,
    u: &TokenUsage,
) -> Option<(f64, &'static str)> {
    if let Some(c) = u.cost_usd {
        return Some((c, "cli"));
    }
    let p = settings.price(backend, model)?;
    let cache = u.cache_tokens.min(u.input_tokens) as f64;
    let fresh = u.input_tokens as f64 - cache;
    let usd = (fresh * p.input_per_mtok
        + cache * p.cache_per_mtok.unwrap_or(p.input_per_mtok)
        + u.output_tokens as f64 * p.output_per_mtok)
        / 1e6;
    Some((usd, "estimate"))
}

/// The usage database (cheap to clone). `None` inside: it could not be opened; nothing is
/// recorded until the next start.
#[derive(Clone)]
pub(crate) struct UsageStore {
    conn: Arc<Mutex<Option<Connection>>>,
    /// Errors while opening (before the metrics recorder exists; see `count_open_errors`).
    open_errors: u64,
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(&conn)?;
    // Rows of runs that were going when the daemon stopped.
    conn.execute(
        "UPDATE runs SET outcome = 'interrupted' WHERE outcome = 'running'",
        [],
    )?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Keeps a file private (the daemon's umask makes it so already; this covers a file made by
/// someone else).
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(PathBuf::from(p), std::fs::Permissions::from_mode(0o600));
    }
}

impl UsageStore {
    /// Opens (or creates) the database; failures are logged and leave a store that records
    /// nothing.
    pub(crate) fn open(path: &Path) -> Self {
        let mut open_errors = 0;
        let conn = match open_conn(path) {
            Ok(c) => Some(c),
            Err(e) if is_corrupt(&e) => {
                open_errors += 1;
                let aside = path.with_extension(format!("db.corrupt-{}", now_ms()));
                failed(
                    &format!(
                        "{} is corrupt; moved to {}",
                        path.display(),
                        aside.display()
                    ),
                    &e,
                );
                let _ = std::fs::rename(path, &aside);
                for suffix in ["-wal", "-shm"] {
                    let mut p = path.as_os_str().to_owned();
                    p.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(p));
                }
                open_conn(path)
                    .map_err(|e| {
                        open_errors += 1;
                        failed("cannot create a new database", &e)
                    })
                    .ok()
            }
            Err(e) => {
                open_errors += 1;
                failed(&format!("cannot open {}", path.display()), &e);
                None
            }
        };
        if conn.is_some() {
            make_private(path);
        }
        UsageStore {
            conn: Arc::new(Mutex::new(conn)),
            open_errors,
        }
    }

    /// Counts the errors of the opening in `/metrics` (called once the recorder is installed;
    /// the series exists from then on, at 0 when all went well).
    pub(crate) fn count_open_errors(&self) {
        metrics::counter!(ERRORS_METRIC).increment(self.open_errors);
    }

    /// A store that records nothing (tests).
    #[cfg(test)]
    pub(crate) fn disabled() -> Self {
        UsageStore {
            conn: Arc::new(Mutex::new(None)),
            open_errors: 0,
        }
    }

    fn with<T>(&self, what: &str, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let conn = guard.as_ref()?;
        f(conn).map_err(|e| failed(what, &e)).ok()
    }

    /// Checks `key_id`'s daily quotas and records the run's start in one transaction; the row's
    /// id, None when the store could not record it (the run goes on), or the quota it exceeds.
    pub(crate) fn begin(
        &self,
        run: &NewRun,
        quotas: &Quotas,
    ) -> Result<Option<i64>, QuotaExceeded> {
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let Some(conn) = guard.as_ref() else {
            return Ok(None);
        };
        let attempt = || -> rusqlite::Result<Result<i64, QuotaExceeded>> {
            let tx = conn.unchecked_transaction()?;
            if let (Some(key), true) = (
                &run.key_id,
                quotas.requests_per_day.is_some() || quotas.tokens_per_day.is_some(),
            ) {
                let (requests, tokens) = today(&tx, key, utc_day().0)?;
                if let Some(limit) = quotas.requests_per_day.filter(|l| requests >= *l) {
                    return Ok(Err(QuotaExceeded::Requests { limit }));
                }
                if let Some(limit) = quotas.tokens_per_day.filter(|l| tokens >= *l) {
                    return Ok(Err(QuotaExceeded::Tokens {
                        used: tokens,
                        limit,
                    }));
                }
            }
            tx.execute(
                "INSERT INTO runs (started_ms, key_id, backend, model, api_style, session_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    now_ms(),
                    run.key_id,
                    run.backend.as_str(),
                    run.model,
                    run.api_style.as_str(),
                    run.session_id
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Ok(id))
        };
        match attempt() {
            Ok(r) => r.map(Some),
            Err(e) => {
                failed("cannot record a run's start", &e);
                Ok(None)
            }
        }
    }

    /// Records how a run ended.
    pub(crate) fn finish(&self, id: i64, settings: &Settings, end: &RunEnd) {
        let price = cost(settings, end.backend, end.model.as_deref(), &end.usage);
        self.with("cannot record a run's end", |c| {
            c.execute(
                "UPDATE runs SET model = coalesce(?2, model), duration_ms = ?3,
                   first_output_ms = ?4, exit_code = ?5, outcome = ?6, input_tokens = ?7,
                   output_tokens = ?8, cache_tokens = ?9, cost_usd = ?10, cost_source = ?11,
                   backend = ?12, account = ?13
                 WHERE id = ?1",
                params![
                    id,
                    end.model,
                    end.duration_ms as i64,
                    end.first_output_ms.map(|v| v as i64),
                    end.exit_code,
                    end.outcome.as_str(),
                    end.usage.input_tokens as i64,
                    end.usage.output_tokens as i64,
                    end.usage.cache_tokens as i64,
                    price.map(|p| p.0),
                    price.map(|p| p.1),
                    end.backend.as_str(),
                    end.account,
                ],
            )
        });
    }

    /// What `key_id` used today (UTC): runs started, tokens.
    pub(crate) fn today(&self, key_id: &str) -> (u64, u64) {
        self.with("cannot read a key's usage", |c| {
            today(c, key_id, utc_day().0)
        })
        .unwrap_or_default()
    }

    /// The runs since `query.since`, grouped; only `key_id`'s when given.
    pub(crate) fn report(
        &self,
        query: &UsageQuery,
        since_ms: i64,
        key_id: Option<&str>,
    ) -> UsageReport {
        let group = match query.by {
            UsageGroupBy::Day => "strftime('%Y-%m-%d', started_ms / 1000, 'unixepoch')",
            UsageGroupBy::Key => "coalesce(key_id, '(local)')",
            UsageGroupBy::Backend => "backend",
            UsageGroupBy::Model => "backend || '/' || coalesce(model, '(default)')",
            UsageGroupBy::Account => "backend || '/' || coalesce(account, 'default')",
        };
        let sql = format!(
            "SELECT {group} AS g, count(*), sum(outcome NOT IN ('ok', 'running')),
                    sum(input_tokens), sum(output_tokens), sum(cache_tokens),
                    coalesce(sum(cost_usd), 0), coalesce(sum(duration_ms), 0)
             FROM runs WHERE started_ms >= ?1 AND (?2 IS NULL OR key_id = ?2)
             GROUP BY g ORDER BY g"
        );
        let groups = self
            .with("cannot read the usage", |c| {
                let mut st = c.prepare_cached(&sql)?;
                let rows = st.query_map(params![since_ms, key_id], |r| {
                    Ok(UsageGroup {
                        group: r.get(0)?,
                        totals: UsageTotals {
                            requests: r.get::<_, i64>(1)? as u64,
                            errors: r.get::<_, i64>(2)? as u64,
                            input_tokens: r.get::<_, i64>(3)? as u64,
                            output_tokens: r.get::<_, i64>(4)? as u64,
                            cache_tokens: r.get::<_, i64>(5)? as u64,
                            cost_usd: r.get(6)?,
                            duration_ms: r.get::<_, i64>(7)? as u64,
                        },
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap_or_default();
        let mut total = UsageTotals::default();
        for g in &groups {
            let t = &g.totals;
            total.requests += t.requests;
            total.errors += t.errors;
            total.input_tokens += t.input_tokens;
            total.output_tokens += t.output_tokens;
            total.cache_tokens += t.cache_tokens;
            total.cost_usd += t.cost_usd;
            total.duration_ms += t.duration_ms;
        }
        UsageReport {
            by: query.by,
            since: humantime::format_rfc3339_millis(
                UNIX_EPOCH + Duration::from_millis(since_ms.max(0) as u64),
            )
            .to_string(),
            groups,
            total,
        }
    }

    /// One run's row, for tests.
    #[cfg(test)]
    fn outcome(&self, id: i64) -> Option<(String, Option<f64>, Option<String>)> {
        self.with("read", |c| {
            c.query_row(
                "SELECT outcome, cost_usd, cost_source FROM runs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok()
            .map(Ok)
            .transpose()
        })
        .flatten()
    }
}

fn today(c: &Connection, key_id: &str, since_ms: i64) -> rusqlite::Result<(u64, u64)> {
    c.query_row(
        "SELECT count(*), coalesce(sum(input_tokens + output_tokens), 0) FROM runs
         WHERE key_id = ?1 AND started_ms >= ?2",
        params![key_id, since_ms],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(key: &str) -> NewRun {
        NewRun {
            key_id: Some(key.into()),
            backend: Backend::Claude,
            model: None,
            api_style: clinvk_shared::api::ApiStyle::Native,
            session_id: None,
        }
    }

    #[test]
    fn quotas_costs_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("usage.db");
        let store = UsageStore::open(&path);
        let q = Quotas {
            requests_per_day: Some(2),
            ..Default::default()
        };
        let a = store.begin(&run("k1"), &q).unwrap().unwrap();
        let mut settings = Settings::default();
        settings.pricing.insert(
            "claude".into(),
            clinvk_shared::config::Price {
                input_per_mtok: 3.0,
                output_per_mtok: 15.0,
                cache_per_mtok: Some(0.3),
            },
        );
        let usage = TokenUsage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cache_tokens: 500_000,
            cost_usd: None,
        };
        store.finish(
            a,
            &settings,
            &RunEnd {
                backend: Backend::Claude,
                outcome: crate::engine::RunOutcome::Ok,
                usage,
                ..Default::default()
            },
        );
        let (_, cost, source) = store.outcome(a).unwrap();
        assert!(
            (cost.unwrap() - (1.5 + 0.15 + 15.0)).abs() < 1e-9,
            "{cost:?}"
        );
        assert_eq!(source.as_deref(), Some("estimate"));
        let b = store.begin(&run("k1"), &q).unwrap().unwrap();
        assert_eq!(
            store.begin(&run("k1"), &q),
            Err(QuotaExceeded::Requests { limit: 2 })
        );
        assert!(store.begin(&run("k2"), &q).unwrap().is_some(), "per key");
        let tq = Quotas {
            tokens_per_day: Some(2_000_000),
            ..Default::default()
        };
        assert_eq!(
            store.begin(&run("k1"), &tq),
            Err(QuotaExceeded::Tokens {
                used: 2_000_000,
                limit: 2_000_000
            })
        );
        drop(store);
        // Reopened: rows kept, the unfinished one marked interrupted, no migration rerun.
        let store = UsageStore::open(&path);
        assert_eq!(store.outcome(b).unwrap().0, "interrupted");
        assert_eq!(store.today("k1"), (2, 2_000_000));
        let r = store.report(
            &UsageQuery {
                by: UsageGroupBy::Key,
                since: None,
            },
            0,
            None,
        );
        let keys: Vec<(&str, u64)> = r
            .groups
            .iter()
            .map(|g| (g.group.as_str(), g.totals.requests))
            .collect();
        assert_eq!(keys, [("k1", 2), ("k2", 1)]);
        assert_eq!(r.total.errors, 2, "interrupted and still-running rows");
        let mine = store.report(&UsageQuery::default(), 0, Some("k2"));
        assert_eq!(mine.total.requests, 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_corrupt_database_is_moved_aside_and_runs_go_on() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("usage.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let store = UsageStore::open(&path);
        assert!(store
            .begin(&run("k"), &Quotas::default())
            .unwrap()
            .is_some());
        let aside = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(aside, "the corrupt file is kept aside");
        let none = UsageStore::disabled();
        assert_eq!(none.begin(&run("k"), &Quotas::default()), Ok(None));
    }

    #[test]
    fn cli_cost_wins_over_the_price_table() {
        let u = TokenUsage {
            input_tokens: 10,
            output_tokens: 10,
            cost_usd: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            cost(&Settings::default(), Backend::Claude, None, &u),
            Some((0.5, "cli"))
        );
        assert_eq!(
            cost(
                &Settings::default(),
                Backend::Codex,
                None,
                &TokenUsage::default()
            ),
            None
        );
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    #[test]
    #[ignore = "a measurement, not a check: cargo test -p clinvkd --lib measure -- --ignored --nocapture"]
    fn write_latency_and_size_per_1000_runs() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("usage.db");
        let store = UsageStore::open(&path);
        let settings = Settings::default();
        let q = Quotas {
            requests_per_day: Some(1_000_000),
            tokens_per_day: Some(u64::MAX),
            ..Default::default()
        };
        let run = NewRun {
            key_id: Some("0123456789ab".into()),
            backend: Backend::Claude,
            model: Some("claude-sonnet-4-5".into()),
            api_style: clinvk_shared::api::ApiStyle::Native,
            session_id: Some("0b5e8f0e-4a0c-4f7e-9d43-2b8e1b7c9f10".into()),
        };
        let end = RunEnd {
            duration_ms: 1234,
            first_output_ms: Some(321),
            outcome: crate::engine::RunOutcome::Ok,
            usage: TokenUsage {
                input_tokens: 12_351,
                output_tokens: 512,
                cache_tokens: 12_000,
                cost_usd: Some(0.0495),
            },
            ..Default::default()
        };
        let n = 1000;
        let (mut begin, mut finish) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let t = std::time::Instant::now();
            let id = store.begin(&run, &q).unwrap().unwrap();
            begin.push(t.elapsed());
            let t = std::time::Instant::now();
            store.finish(id, &settings, &end);
            finish.push(t.elapsed());
        }
        begin.sort();
        finish.sort();
        let p = |v: &Vec<Duration>, q: f64| v[((v.len() - 1) as f64 * q) as usize];
        let t = std::time::Instant::now();
        let _ = store.report(&UsageQuery::default(), 0, None);
        let report = t.elapsed();
        drop(store);
        let size: u64 = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!(
            "begin (quota check + insert): p50 {:?} p99 {:?}; finish: p50 {:?} p99 {:?}; report over {n}: {:?}; files after {n} runs: {} bytes",
            p(&begin, 0.5), p(&begin, 0.99), p(&finish, 0.5), p(&finish, 0.99), report, size
        );
    }
}
