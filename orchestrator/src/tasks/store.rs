//! Tasks and services persisted in SQLite (one file under the state directory).
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

use mose_api::ServiceRecord;

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
    #[error("task database: record of {id} is unreadable: {source}")]
    Corrupt {
        /// The row (`task <id>`, `service <name>`).
        id: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A page token that this store did not hand out.
    #[error("'{0}' is not a page token of this list (use the one a previous page gave)")]
    BadToken(String),
    /// A record could not be serialized.
    #[error("task database: cannot encode {id}: {source}")]
    Encode {
        /// The row (`task <id>`, `service <name>`).
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
CREATE TABLE IF NOT EXISTS services (
    name   TEXT PRIMARY KEY,
    ip     TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
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
            id: format!("task {}", record.id),
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
        json.map(|j| parse(&format!("task {id}"), &j)).transpose()
    }

    /// Every task, newest first.
    pub fn list(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.select(
            "task",
            "SELECT id, record FROM tasks ORDER BY created_us DESC, id DESC",
            &[],
        )
    }

    /// One page of tasks, newest first: those matching `filter`, at most `filter.limit`, and
    /// the token of the next page when there are more.
    pub fn page(
        &self,
        filter: &TaskFilter,
    ) -> Result<(Vec<TaskRecord>, Option<String>), StoreError> {
        let (after_us, after_id) = match &filter.after {
            Some(token) => parse_token(token)?,
            None => (i64::MAX, String::new()),
        };
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, record FROM tasks
             WHERE (?1 IS NULL OR status = ?1)
               AND (?2 IS NULL OR json_extract(record, '$.request.service') = ?2)
               AND (created_us < ?3 OR (created_us = ?3 AND ?4 != '' AND id < ?4))
             ORDER BY created_us DESC, id DESC LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                filter.status.map(TaskStatus::as_str),
                filter.service,
                after_us,
                after_id,
                limit.saturating_add(1)
            ],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row?;
            out.push(parse::<TaskRecord>(&format!("task {id}"), &json)?);
        }
        let next = match out.len() > filter.limit {
            true => {
                out.truncate(filter.limit);
                out.last().map(|r| format!("{}.{}", r.created_us, r.id))
            }
            false => None,
        };
        Ok((out, next))
    }

    /// Forgets finished tasks created before `before_us`; how many.
    pub fn prune_finished(&self, before_us: u64) -> Result<usize, StoreError> {
        let before = i64::try_from(before_us).unwrap_or(i64::MAX);
        Ok(self.conn().execute(
            "DELETE FROM tasks WHERE created_us < ?1 AND status NOT IN (?2, ?3)",
            params![
                before,
                TaskStatus::Queued.as_str(),
                TaskStatus::Running.as_str()
            ],
        )?)
    }

    /// Tasks the driver had not finished (queued or running), oldest first.
    pub fn unfinished(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.select(
            "task",
            "SELECT id, record FROM tasks WHERE status IN (?1, ?2) ORDER BY created_us, id",
            &[TaskStatus::Queued.as_str(), TaskStatus::Running.as_str()],
        )
    }

    /// Inserts or replaces the service. Its address is a unique column: two services can
    /// never be stored with one address, whatever the caller checked before.
    pub fn save_service(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|source| StoreError::Encode {
            id: format!("service {}", record.name),
            source,
        })?;
        self.conn().execute(
            "INSERT INTO services (name, ip, record) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET ip = excluded.ip, record = excluded.record",
            params![record.name, record.network.ip.to_string(), json],
        )?;
        Ok(())
    }

    /// One service by name.
    pub fn service(&self, name: &str) -> Result<Option<ServiceRecord>, StoreError> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM services WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()?;
        json.map(|j| parse(&format!("service {name}"), &j))
            .transpose()
    }

    /// Every service, by name.
    pub fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        self.select(
            "service",
            "SELECT name, record FROM services ORDER BY name",
            &[],
        )
    }

    /// Forgets the service, freeing its address; `false` when there was none.
    pub fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM services WHERE name = ?1", [name])?
            > 0)
    }

    /// The records of `(key, record)` rows; `kind` names them in errors.
    fn select<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        sql: &str,
        args: &[&str],
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, json) = row?;
            out.push(parse(&format!("{kind} {key}"), &json)?);
        }
        Ok(out)
    }
}

/// Which tasks a page holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks of this service.
    pub service: Option<String>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// At most this many.
    pub limit: usize,
    /// The token of the page before (from its last task on).
    pub after: Option<String>,
}

/// `<created_us>.<id>` of the last task of a page.
fn parse_token(token: &str) -> Result<(i64, String), StoreError> {
    token
        .split_once('.')
        .and_then(|(us, id)| Some((us.parse::<i64>().ok()?, id.to_string())))
        .filter(|(_, id)| !id.is_empty())
        .ok_or_else(|| StoreError::BadToken(token.to_string()))
}

/// `what` names the row in errors (`task m1-0`, `service redis`).
fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        id: what.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::TaskStatus;
    use mose_api::fixtures::task_record as record;
    use mose_api::{ServiceRecord, ServiceStatus};
    use mose_protocol::messages::ServiceNetwork;
    use std::net::Ipv4Addr;

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
    fn pages_filter_and_continue_without_gaps_or_repeats() {
        let store = Store::in_memory().unwrap();
        for (i, status) in [
            TaskStatus::Succeeded,
            TaskStatus::RolledBack,
            TaskStatus::Succeeded,
            TaskStatus::Running,
            TaskStatus::Succeeded,
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = record(&format!("m{i}"), 10 + i as u64 / 2, status);
            if i == 2 {
                r.request.service = "redis".into();
            }
            store.save(&r).unwrap();
        }
        let filter = |limit| TaskFilter {
            service: None,
            status: None,
            limit,
            after: None,
        };
        let ids = |v: &[TaskRecord]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        let (first, next) = store.page(&filter(2)).unwrap();
        assert_eq!(ids(&first), ["m4", "m3"]);
        let (second, next) = store
            .page(&TaskFilter {
                after: next,
                ..filter(2)
            })
            .unwrap();
        assert_eq!(
            ids(&second),
            ["m2", "m1"],
            "same created_us: ordered by id, none lost"
        );
        let (third, next) = store
            .page(&TaskFilter {
                after: next,
                ..filter(2)
            })
            .unwrap();
        assert_eq!((ids(&third), next), (vec!["m0".to_string()], None));
        let succeeded = TaskFilter {
            status: Some(TaskStatus::Succeeded),
            ..filter(10)
        };
        assert_eq!(ids(&store.page(&succeeded).unwrap().0), ["m4", "m2", "m0"]);
        let redis = TaskFilter {
            service: Some("redis".into()),
            ..filter(10)
        };
        assert_eq!(ids(&store.page(&redis).unwrap().0), ["m2"]);
        let bad = TaskFilter {
            after: Some("nonsense".into()),
            ..filter(10)
        };
        assert!(store.page(&bad).is_err());
        // Pruning keeps what is unfinished, however old.
        assert_eq!(store.prune_finished(12).unwrap(), 3);
        assert_eq!(ids(&store.list().unwrap()), ["m4", "m3"]);
        assert_eq!(store.prune_finished(u64::MAX).unwrap(), 1);
        assert_eq!(ids(&store.list().unwrap()), ["m3"]);
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

    fn service(name: &str, last: u8) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            image: "localhost/redis".into(),
            host: "edge1".into(),
            args: vec![],
            env: Default::default(),
            volumes: vec![],
            mobiles: vec!["mobile1".into()],
            network: ServiceNetwork::new(Ipv4Addr::new(10, 88, 0, last), 24),
            status: ServiceStatus::Running,
            last_migration: None,
            created_us: 1,
            updated_us: 1,
        }
    }

    #[test]
    fn services_are_stored_by_name_with_unique_addresses() {
        let store = Store::in_memory().unwrap();
        store.save_service(&service("redis", 100)).unwrap();
        store.save_service(&service("mqtt", 101)).unwrap();
        let mut moved = service("redis", 100);
        moved.host = "edge2".into();
        store.save_service(&moved).unwrap();
        assert_eq!(store.service("redis").unwrap(), Some(moved));
        let names: Vec<_> = store
            .services()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["mqtt", "redis"]);
        // A second service on a taken address is refused by the database itself.
        assert!(store.save_service(&service("other", 101)).is_err());
        assert!(store.delete_service("mqtt").unwrap());
        assert!(!store.delete_service("mqtt").unwrap());
        store.save_service(&service("other", 101)).unwrap();
        assert!(store.service("gone").unwrap().is_none());
    }
}
