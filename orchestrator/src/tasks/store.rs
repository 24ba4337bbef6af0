//! Tasks persisted in SQLite (one file under the state directory).
//!
//! A record is stored whole as JSON next to the columns that are queried (status, creation
//! time): the record changes shape as the product grows, and serde defaults carry old rows
//! forward, while the columns keep "which tasks were running" a plain indexed query.
//! The driver saves after every transition, before it sends the step that follows, so what is
//! on disk is never ahead of what the agents were asked to do.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use thiserror::Error;

use super::{TaskRecord, TaskStatus};

/// The task database failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database file could not be opened or migrated.
    #[error("task database {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("task database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored record does not parse.
    #[error("task database: record of task {id} is unreadable: {source}")]
    Corrupt {
        /// The task's id.
        id: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A record could not be serialized.
    #[error("task database: cannot encode task {id}: {source}")]
    Encode {
        /// The task's id.
        id: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The task database. Calls are short single-row statements, so a blocking mutex around one
/// connection is simpler than a pool and never holds an async task for long.
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id         TEXT PRIMARY KEY,
    created_us INTEGER NOT NULL,
    status     TEXT NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
";

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // WAL keeps a crash mid-write from losing the previous state of a task.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// A database that lives in memory only (tests, and `--state-dir` of `:memory:`).
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (statements are
        // atomic), so the connection is still good.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts or replaces the task.
    pub fn save(&self, record: &TaskRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|source| StoreError::Encode {
            id: record.id.clone(),
            source,
        })?;
        self.conn().execute(
            "INSERT INTO tasks (id, created_us, status, record) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, record = excluded.record",
            params![
                record.id,
                // SQLite integers are i64; µs since 1970 fit until the year 294 247.
                i64::try_from(record.created_us).unwrap_or(i64::MAX),
                record.status.as_str(),
                json
            ],
        )?;
        Ok(())
    }

    /// One task by id.
    pub fn get(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let json: Option<String> = self
            .conn()
            .query_row("SELECT record FROM tasks WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()?;
        json.map(|j| parse(id, &j)).transpose()
    }

    /// Every task, newest first.
    pub fn list(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.select(
            "SELECT id, record FROM tasks ORDER BY created_us DESC, id DESC",
            &[],
        )
    }

    /// Tasks the driver had not finished (queued or running), oldest first.
    pub fn unfinished(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.select(
            "SELECT id, record FROM tasks WHERE status IN (?1, ?2) ORDER BY created_us, id",
            &[TaskStatus::Queued.as_str(), TaskStatus::Running.as_str()],
        )
    }

    fn select(&self, sql: &str, args: &[&str]) -> Result<Vec<TaskRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row?;
            out.push(parse(&id, &json)?);
        }
        Ok(out)
    }
}

fn parse(id: &str, json: &str) -> Result<TaskRecord, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        id: id.to_string(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tasks::{MigrationRequest, Progress, TaskStatus};
    use mose_protocol::messages::{ServiceNetwork, ServiceSpec};
    use mose_protocol::model::{Objective, Plan, Strategy};
    use mose_protocol::units::BytesPerSec;
    use std::net::Ipv4Addr;

    pub(crate) fn record(id: &str, created_us: u64, status: TaskStatus) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            request: MigrationRequest {
                service: "counter".into(),
                source: "edge1".into(),
                destination: "edge2".into(),
                mobile: Some("mobile1".into()),
                objective: Objective::Resources,
                target_downtime_ms: 1000.0,
                target_duration_ms: 5000.0,
                bandwidth_bytes_per_s: None,
            },
            spec: ServiceSpec {
                name: "counter".into(),
                image: "localhost/counter".into(),
                network: ServiceNetwork {
                    ip: Ipv4Addr::new(10, 77, 0, 10),
                    prefix_len: 24,
                    mac: [2, 0, 0, 0, 0, 10],
                    client_ip: None,
                    client_mac: None,
                },
            },
            inputs: crate::tasks::PlanInputs {
                state_bytes: 1 << 20,
                dirty_rate_bytes_per_s: BytesPerSec(0),
                bandwidth_bytes_per_s: BytesPerSec(125_000_000),
                source_calibrated: false,
                destination_calibrated: false,
                notes: vec![],
            },
            plan: Plan {
                strategy: Strategy::Cold,
                objective: Objective::Resources,
                bandwidth_bytes_per_s: BytesPerSec(1_000_000),
                rounds: 0,
                predicted_downtime_s: 0.9,
                predicted_total_s: 0.9,
                target_met: true,
                explanation: "test".into(),
            },
            status,
            phase: None,
            progress: Progress::default(),
            events: vec![],
            faults: vec![],
            error: None,
            measurements: Default::default(),
            created_us,
            updated_us: created_us,
            finished_us: None,
        }
    }

    #[test]
    fn saves_updates_lists_and_finds_unfinished() {
        let store = Store::in_memory().unwrap();
        store.save(&record("a", 1, TaskStatus::Succeeded)).unwrap();
        store.save(&record("b", 2, TaskStatus::Running)).unwrap();
        store.save(&record("c", 3, TaskStatus::Queued)).unwrap();
        let ids = |v: Vec<TaskRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list().unwrap()), ["c", "b", "a"]);
        assert_eq!(ids(store.unfinished().unwrap()), ["b", "c"]);

        let mut b = store.get("b").unwrap().unwrap();
        b.status = TaskStatus::RolledBack;
        b.error = Some("restore failed".into());
        store.save(&b).unwrap();
        assert_eq!(store.get("b").unwrap().unwrap(), b);
        assert_eq!(ids(store.unfinished().unwrap()), ["c"]);
        assert!(store.get("nope").unwrap().is_none());
    }

    #[test]
    fn reads_never_write() {
        // GET /v1/migrations[/{id}], the `inspect`/`list` queryables and /metrics only read:
        // a read that wrote could overwrite a newer state saved by the driver meanwhile.
        let store = Store::in_memory().unwrap();
        store.save(&record("a", 1, TaskStatus::Running)).unwrap();
        store.save(&record("b", 2, TaskStatus::Succeeded)).unwrap();
        let before = store.conn().total_changes();
        store.get("a").unwrap().unwrap();
        assert!(store.get("missing").unwrap().is_none());
        store.list().unwrap();
        store.unfinished().unwrap();
        assert_eq!(
            store.conn().total_changes(),
            before,
            "a read changed the database"
        );
    }

    #[test]
    fn survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.sqlite");
        Store::open(&path)
            .unwrap()
            .save(&record("a", 1, TaskStatus::Running))
            .unwrap();
        let again = Store::open(&path).unwrap();
        assert_eq!(again.unfinished().unwrap().len(), 1);
    }

    #[test]
    fn a_corrupt_row_is_an_error_naming_the_task() {
        let store = Store::in_memory().unwrap();
        store
            .conn()
            .execute(
                "INSERT INTO tasks (id, created_us, status, record) VALUES ('x', 1, 'running', '{')",
                [],
            )
            .unwrap();
        let err = store.get("x").unwrap_err();
        assert!(err.to_string().contains("task x"), "{err}");
    }
}
