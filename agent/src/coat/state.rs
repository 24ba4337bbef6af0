//! What this agent did for one service in one task, persisted next to the task's archives
//! (`<work_dir>/<task>/<service>.state.json`, see [`super::naming::state_path`]).
//!
//! Every step reads it under the service's lock and writes it back before answering, so a
//! repeated step answers from it and an agent restarted mid-migration knows exactly which
//! archive is which (docs/coat.md, "Idempotency"). Written atomically (a temporary file, then a
//! rename), so a crash leaves the old state or the new one, never half of either.

use std::io;
use std::path::{Path, PathBuf};

use mose_protocol::steps::{Dumped, Fetched, ImageId, Restored};
use serde::{Deserialize, Serialize};

use super::error::{io, Result};
use super::naming::{is_state_file, state_path};

/// The file format; another number is refused rather than misread.
const STATE_FORMAT: u32 = 1;

/// Which side of the migration this host is for the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceRole {
    /// The service ran here: pre-dumps, the final dump, then resume or release.
    Source,
    /// The service comes here: prepare, fetches, restore, then resend or abort.
    Destination,
}

/// One service in one task on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// File format version.
    pub format: u32,
    /// The task.
    pub task: String,
    /// The service.
    pub service: String,
    /// Source or destination.
    pub role: ServiceRole,
    /// Source: the pre-copy rounds dumped, round `i` at index `i`; each archive is on disk.
    pub rounds: Vec<Dumped>,
    /// Source: the final dump, built on every round in `rounds`; its archive is on disk.
    pub final_dump: Option<Dumped>,
    /// Source: a rollback resumed the service here; no dump of this task may follow.
    pub resumed: bool,
    /// Destination: the images fetched (digest verified, on disk until the restore).
    pub fetched: Vec<Fetched>,
    /// Destination: what the restore answered.
    pub restored: Option<Restored>,
    /// The receive sequence numbers of the TCP sockets restored here (by a restore or a
    /// resume), for Resend's nudges.
    pub client_seqs: Vec<u32>,
}

impl ServiceState {
    /// A fresh state: nothing done yet.
    pub fn new(task: &str, service: &str, role: ServiceRole) -> Self {
        ServiceState {
            format: STATE_FORMAT,
            task: task.to_string(),
            service: service.to_string(),
            role,
            rounds: Vec::new(),
            final_dump: None,
            resumed: false,
            fetched: Vec::new(),
            restored: None,
            client_seqs: Vec::new(),
        }
    }

    /// The state of `service` in `task` under `work_dir`, `None` when there is none.
    pub fn load(work_dir: &Path, task: &str, service: &str) -> Result<Option<Self>> {
        load_file(&state_path(work_dir, task, service))
    }

    /// Writes the state atomically: a temporary file, synced, renamed over the old one.
    pub fn save(&self, work_dir: &Path) -> Result<()> {
        let path = state_path(work_dir, &self.task, &self.service);
        let dir = path.parent().unwrap_or(work_dir);
        std::fs::create_dir_all(dir).map_err(io("create the task's work directory", dir))?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        text.and_then(|bytes| {
            use io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .map_err(io("write the service's state", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("name the service's new state", &path))
    }

    /// The image `image` was fetched and verified: recorded, replacing an older record of it.
    pub fn record_fetched(&mut self, fetched: Fetched) {
        self.fetched.retain(|f| f.image != fetched.image);
        self.fetched.push(fetched);
        self.fetched.sort_by_key(|f| f.image);
    }

    /// The pre-copy rounds the final dump builds on, oldest first.
    pub fn round_images(&self) -> impl Iterator<Item = ImageId> + '_ {
        self.rounds.iter().map(|d| d.image)
    }
}

fn load_file(path: &Path) -> Result<Option<ServiceState>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read the service's state", path)(e)),
    };
    let state: ServiceState = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        .map_err(io("parse the service's state", path))?;
    if state.format != STATE_FORMAT {
        let why = format!(
            "state format {}, this agent reads {STATE_FORMAT}",
            state.format
        );
        return Err(io("read the service's state", path)(io::Error::new(
            io::ErrorKind::InvalidData,
            why,
        )));
    }
    Ok(Some(state))
}

/// Every state file of `task` (a task migrates one service, so normally one).
pub fn states_of_task(task_dir: &Path) -> Result<Vec<ServiceState>> {
    let entries = match std::fs::read_dir(task_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list the task's work directory", task_dir)(e)),
    };
    let mut states = Vec::new();
    for entry in entries.flatten() {
        if is_state_file(&entry.file_name().to_string_lossy()) {
            states.extend(load_file(&entry.path())?);
        }
    }
    Ok(states)
}

/// The task directories under `work_dir` that hold a state of `service`.
pub fn task_dirs_of_service(work_dir: &Path, service: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|dir| {
            dir.file_name()
                .and_then(|task| task.to_str())
                .is_some_and(|task| state_path(work_dir, task, service).is_file())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mose_protocol::messages::CriuStats;

    fn dumped(image: ImageId, bytes: u64) -> Dumped {
        Dumped {
            image,
            image_bytes: bytes,
            stats: CriuStats {
                pages_written: Some(3),
                ..CriuStats::default()
            },
        }
    }

    #[test]
    fn state_round_trips_through_its_file_atomically() {
        let w = tempfile::tempdir().unwrap();
        assert_eq!(ServiceState::load(w.path(), "t1", "counter").unwrap(), None);
        let mut s = ServiceState::new("t1", "counter", ServiceRole::Source);
        s.rounds.push(dumped(ImageId::Round(0), 10));
        s.final_dump = Some(dumped(ImageId::Final, 20));
        s.client_seqs = vec![7, 9];
        s.save(w.path()).unwrap();
        assert_eq!(
            ServiceState::load(w.path(), "t1", "counter").unwrap(),
            Some(s.clone())
        );
        s.resumed = true;
        s.save(w.path()).unwrap();
        let back = ServiceState::load(w.path(), "t1", "counter")
            .unwrap()
            .unwrap();
        assert!(back.resumed);
        let files: Vec<String> = std::fs::read_dir(w.path().join("t1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, ["counter.state.json"], "no temporary file left");
        assert_eq!(states_of_task(&w.path().join("t1")).unwrap(), [back]);
        assert_eq!(
            task_dirs_of_service(w.path(), "counter"),
            [w.path().join("t1")]
        );
        assert!(task_dirs_of_service(w.path(), "other").is_empty());
    }

    #[test]
    fn the_file_is_plain_json_with_images_by_role() {
        let mut s = ServiceState::new("t1", "counter", ServiceRole::Destination);
        s.record_fetched(Fetched {
            image: ImageId::Round(1),
            image_bytes: 5,
        });
        s.record_fetched(Fetched {
            image: ImageId::Round(0),
            image_bytes: 4,
        });
        s.record_fetched(Fetched {
            image: ImageId::Round(1),
            image_bytes: 6,
        });
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(json["role"], "destination");
        assert_eq!(json["fetched"][0]["image"]["Round"], 0);
        assert_eq!(json["fetched"][1]["image_bytes"], 6);
        assert_eq!(json["fetched"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_or_foreign_state_file_is_an_error_not_a_fresh_state() {
        let w = tempfile::tempdir().unwrap();
        let path = state_path(w.path(), "t1", "counter");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"format\": 1, \"task\": ").unwrap();
        let e = ServiceState::load(w.path(), "t1", "counter").unwrap_err();
        assert_eq!(e.kind(), mose_protocol::steps::FailureKind::Internal);
        let mut future =
            serde_json::to_value(ServiceState::new("t1", "counter", ServiceRole::Source)).unwrap();
        future["format"] = 2.into();
        std::fs::write(&path, future.to_string()).unwrap();
        let e = ServiceState::load(w.path(), "t1", "counter").unwrap_err();
        assert!(e.to_string().contains("state format 2"), "{e}");
    }
}
