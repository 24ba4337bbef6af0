//! COAT migration steps on this host (docs/coat.md, "Order of steps"): the agent's real
//! [`StepExecutor`].
//!
//! | step | host | module | what it does |
//! |---|---|---|---|
//! | describe | source | `source` | inspect the container; read IP/MAC/client from its netns; anon memory from its cgroup |
//! | prepare | destination | `destination` | image present?; netns with the same IP/MAC + client neighbour; steer the service to it on the local bridge |
//! | pre-dump | source | `source` | one pre-copy round (`runc checkpoint --pre-dump` chained to the round before, the container keeps running), served under `images/{task}/round-{n}` |
//! | fetch | destination | `destination` | fetch a pre-copy round now, while the service still runs at the source |
//! | checkpoint | source | `source` | `checkpoint --tcp-established --export` (after rounds `--with-previous`), served under `images/{task}/final` |
//! | restore | destination | `destination` | fetch what is missing (chunked, SHA-256), `restore --tcp-established --import` into the prepared netns; after pre-copy with the rounds joined as `--import-previous` |
//! | switch-flow | mobile | `mobile` | steer the service's IP/ARP/MAC on the local bridge to the port toward `to` |
//! | resend | destination (after the switch) | `destination` | ICMP nudge so the clients resend at once (see `resend.rs`) |
//! | resume | source (rollback) | `source` | running: nothing; checkpointed: restore from its own archives; stop serving the images |
//! | abort | destination (rollback) | `destination` | remove the container, netns, veth, flows and files of the service |
//! | release | source (commit) | `source` | the same removal, after the destination confirmed |
//!
//! Every step is idempotent: repeating it after success (or after a timeout whose effect is
//! unknown) converges on the same state without harming the service. What a step did is kept
//! in the service's persisted state (`state.rs`), which repeats answer from and a restarted
//! agent resumes from. All host work goes through [`Host`] (`host.rs`). Steps on one service
//! are serialized by a per-service lock. See `docs/coat.md`.

mod destination;
mod error;
mod host;
mod lifecycle;
mod mobile;
mod naming;
mod netinfo;
pub mod resend;
mod source;
mod state;
mod steering;

#[cfg(test)]
// Test double: its fixtures cast small lengths and varint bytes.
#[allow(clippy::cast_possible_truncation)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mose_protocol::blob::{BlobServer, FetchOptions, DEFAULT_CHUNK_SIZE};
use mose_protocol::messages::{now_us, CriuStats, Phase, PhaseEvent, PhaseStatus};
use mose_protocol::steps::{
    Abort, Done, FailureKind, ImageId, Remove, Resume, Step, StepFailure, StepOutcome,
};
use mose_protocol::{encode, KeySpace};
use tracing::{info, warn, Instrument};
use zenoh::Session;

use crate::runtime::{CriuDumpStats, CriuRestoreStats, RestoreOptions, RestoreReport};
use crate::steps::StepExecutor;

pub use error::CoatError;
pub use host::{Host, PodmanHost};
pub use naming::{host_ifname, netns_name, volume_name, volume_of, SERVICE_IFNAME};
pub use state::{ServiceRole, ServiceState};

use error::{blob, io, runtime, Result};
use naming::{check_service, check_task, image_path, is_state_file, task_dir, JOINED_ROUNDS};

/// What the executor needs besides the host, the session and the keys.
#[derive(Debug, Clone)]
pub struct CoatSettings {
    /// This agent's id: the `agent` of the phase events it publishes (transfer, netns).
    pub agent_id: String,
    /// Each task's archives and service state live under `<work_dir>/<task>/`.
    pub work_dir: PathBuf,
    /// Mobile hosts: the OvS port on this host's bridge that leads toward each agent's host,
    /// by agent id. SwitchFlow steers the service there.
    pub flow_ports: BTreeMap<String, String>,
    /// How the destination fetches images (window, per-chunk timeout, retries).
    pub fetch: FetchOptions,
    /// Chunk size of the images this host serves, bytes.
    pub chunk_size: u32,
}

impl CoatSettings {
    /// Settings with defaults for everything but the id and the work directory.
    pub fn new(agent_id: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        CoatSettings {
            agent_id: agent_id.into(),
            work_dir: work_dir.into(),
            flow_ports: BTreeMap::new(),
            fetch: FetchOptions::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// The images of one task this host serves, until the task's Resume or Release. In memory
/// only: a restarted agent serves them again from its persisted state when a step asks.
struct Served {
    task: String,
    images: BTreeMap<ImageId, BlobServer>,
}

/// Carries out COAT steps on a [`Host`] (the real one: podman and the OvS overlay), moving
/// images as Zenoh blobs.
///
/// Each step runs as its own task holding the service's lock: when the caller stops waiting
/// (the step server's timeout), the step still runs to its end, and the next step on that
/// service (e.g. Resume after a timed-out Checkpoint) waits for it instead of racing it. A
/// checkpoint cut off halfway would leave the container frozen without an archive to resume from.
pub struct CoatExecutor<H: Host = PodmanHost> {
    inner: Arc<Inner<H>>,
}

impl<H: Host> Clone for CoatExecutor<H> {
    fn clone(&self) -> Self {
        CoatExecutor {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<H> {
    host: H,
    session: Session,
    keys: KeySpace,
    settings: CoatSettings,
    /// One lock per service (and per flow), so concurrent steps on one service serialize.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Images being served, by service (one task at a time).
    served: Mutex<HashMap<String, Served>>,
    /// Serializes the changes of the persisted steering table (`steering.rs`).
    steering: tokio::sync::Mutex<()>,
}

/// Locks a std mutex whose data stays consistent even if a holder panicked (plain inserts).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<H: Host> CoatExecutor<H> {
    /// An executor working on `host`, publishing under `keys`.
    pub fn new(host: H, session: Session, keys: KeySpace, settings: CoatSettings) -> Self {
        let inner = Inner {
            host,
            session,
            keys,
            settings,
            locks: Mutex::default(),
            served: Mutex::default(),
            steering: tokio::sync::Mutex::default(),
        };
        CoatExecutor {
            inner: Arc::new(inner),
        }
    }
}

impl<H: Host> CoatExecutor<H> {
    /// Installs again every steering this agent made and did not remove (see `steering.rs`):
    /// run at start, before the steps are served. Returns how many were reasserted.
    pub async fn reassert_steering(&self) -> std::result::Result<usize, CoatError> {
        self.inner.reassert_steering().await
    }
}

impl<H: Host> StepExecutor for CoatExecutor<H> {
    async fn execute(&self, task: &str, step: Step) -> Result<StepOutcome, StepFailure> {
        let op = step.op();
        let (inner, task) = (self.inner.clone(), task.to_string());
        let run = async move {
            let service_lock = inner.lock_for(inner.lock_key(&task, &step));
            let _held = service_lock.lock().await;
            let t0 = Instant::now();
            let result = inner.run(&task, step).await;
            let ms = mose_protocol::units::millis(t0.elapsed());
            match &result {
                Ok(_) => info!(%op, ms, "step done"),
                Err(e) => warn!(%op, ms, error = %e, "step failed"),
            }
            result.map_err(|e| e.into_failure(op))
        };
        // Spawned, not awaited in place: see [`CoatExecutor`] on steps outliving their caller.
        tokio::spawn(run.instrument(tracing::Span::current()))
            .await
            .unwrap_or_else(|e| {
                Err(StepFailure {
                    op,
                    kind: FailureKind::Internal,
                    reason: format!("the step's task ended abnormally: {e}"),
                })
            })
    }

    /// A Restore that podman finished after the caller gave up would leave a running copy
    /// nobody wants, a Checkpoint a frozen source nobody resumes, a Deploy a service nobody
    /// knows of: each is undone by what the caller's rollback sends anyway (docs/coat.md,
    /// "Idempotency").
    fn undo_of(&self, step: &Step) -> Option<Step> {
        match step {
            Step::Deploy(d) => Some(
                Remove {
                    service: d.spec.name.clone(),
                    ip: d.spec.network.ip,
                }
                .into(),
            ),
            Step::Restore(r) => Some(
                Abort {
                    service: r.spec.name.clone(),
                }
                .into(),
            ),
            Step::Checkpoint(c) => Some(
                Resume {
                    service: c.service.clone(),
                }
                .into(),
            ),
            _ => None,
        }
    }
}

impl<H: Host> Inner<H> {
    fn lock_for(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(key).or_default().clone()
    }

    /// The lock a step takes: its service's.
    fn lock_key(&self, task: &str, step: &Step) -> String {
        match step {
            Step::Describe(s) => s.service.clone(),
            Step::Prepare(s) => s.spec.name.clone(),
            Step::ExportImage(s) => s.service.clone(),
            Step::PreDump(s) => s.service.clone(),
            Step::Checkpoint(s) => s.service.clone(),
            Step::Restore(s) => s.spec.name.clone(),
            Step::Resend(s) => s.service.clone(),
            Step::Resume(s) => s.service.clone(),
            Step::Abort(s) => s.service.clone(),
            Step::Release(s) => s.service.clone(),
            // The request names no service: the task's prepared one (else the fetch fails
            // under a lock of its own).
            Step::Fetch(_) => self
                .fetch_service(task)
                .unwrap_or_else(|_| format!("fetch {task}")),
            Step::Deploy(s) => s.spec.name.clone(),
            Step::Remove(s) => s.service.clone(),
            // Flows belong to the service address, not to a container on this host.
            Step::SwitchFlow(s) => format!("flow {}", s.network.ip),
            Step::ClearFlow(s) => format!("flow {}", s.ip),
        }
    }

    async fn run(&self, task: &str, step: Step) -> Result<StepOutcome> {
        check_task(task)?;
        Ok(match step {
            Step::Describe(s) => self.describe(&s.service).await?.into(),
            Step::Prepare(s) => self.prepare(task, &s.spec).await?.into(),
            Step::ExportImage(s) => self.export_image(task, &s.service, &s.to).await?.into(),
            Step::PreDump(s) => self
                .pre_dump(task, &s.service, s.round, &s.to)
                .await?
                .into(),
            Step::Fetch(s) => self.fetch(task, &s.from, s.image).await?.into(),
            Step::Checkpoint(s) => self
                .checkpoint(task, &s.service, s.rounds, &s.to)
                .await?
                .into(),
            Step::Restore(s) => self.restore(task, &s.spec, &s.from, s.rounds).await?.into(),
            Step::SwitchFlow(s) => self.switch_flow(&s.network, &s.to).await?.into(),
            Step::Resend(s) => self.resend(task, &s.service).await?.into(),
            Step::Resume(s) => self.resume(task, &s.service).await?.into(),
            Step::Abort(s) => self.abort(task, &s.service).await?.into(),
            Step::Release(s) => self.release(task, &s.service).await?.into(),
            Step::Deploy(s) => self.deploy(&s).await?.into(),
            Step::Remove(s) => self
                .remove_service(task, &s.service, Some(s.ip), "remove")
                .await?
                .into(),
            Step::ClearFlow(s) => self.clear_flow(s.ip).await?.into(),
        })
    }

    // ---------------------------------------------------------------------------------------
    // Phase events

    /// Runs `work` as `phase` of `task`, published as started/finished (or failed) events on
    /// the task's event key: the orchestrator's breakdown then shows the phases that happen
    /// inside a step (the fetch inside Restore, the namespace inside Prepare).
    async fn in_phase<T>(
        &self,
        task: &str,
        phase: Phase,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.publish_phase(task, phase, PhaseStatus::Started).await;
        let result = work.await;
        let status = match &result {
            Ok(_) => PhaseStatus::Finished,
            Err(e) => PhaseStatus::Failed {
                error: e.to_string(),
            },
        };
        self.publish_phase(task, phase, status).await;
        result
    }

    /// Best effort: a lost event costs a line of the breakdown, never the step.
    async fn publish_phase(&self, task: &str, phase: Phase, status: PhaseStatus) {
        let event = PhaseEvent {
            task: task.to_string(),
            agent: self.settings.agent_id.clone(),
            phase,
            status,
            at_us: now_us(),
        };
        let sent = match encode(&event) {
            Ok(bytes) => self
                .session
                .put(self.keys.agent_events(&self.settings.agent_id, task), bytes)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            warn!(task, ?phase, error = %e, "could not publish a phase event");
        }
    }

    // ---------------------------------------------------------------------------------------
    // State, files and images

    fn work_dir(&self) -> &Path {
        &self.settings.work_dir
    }

    fn image_path(&self, task: &str, image: ImageId) -> PathBuf {
        image_path(self.work_dir(), task, image)
    }

    fn load_state(&self, task: &str, service: &str) -> Result<Option<ServiceState>> {
        ServiceState::load(self.work_dir(), task, service)
    }

    /// The state of `service` in `task` for `role`: the persisted one, else a new one. A state
    /// of the other role is refused: one host is never both ends of one migration.
    fn state_for(&self, task: &str, service: &str, role: ServiceRole) -> Result<ServiceState> {
        match self.load_state(task, service)? {
            Some(s) if s.role != role => Err(CoatError::State(format!(
                "this host is the {:?} of {service} in task {task}, not its {role:?}",
                s.role
            ))),
            Some(s) => Ok(s),
            None => Ok(ServiceState::new(task, service, role)),
        }
    }

    fn save_state(&self, state: &ServiceState) -> Result<()> {
        state.save(self.work_dir())
    }

    /// Serves `image` of `service`'s `task` to agent `to` (its key names both, so in a secured
    /// domain only `to` may fetch it), unless it already is: a repeated step, or one after an
    /// agent restart, serves it again from its archive.
    async fn serve(&self, task: &str, service: &str, image: ImageId, to: &str) -> Result<()> {
        let served_already = lock(&self.served)
            .get(service)
            .is_some_and(|s| s.task == task && s.images.contains_key(&image));
        if served_already {
            return Ok(());
        }
        let path = self.image_path(task, image);
        let key = self.keys.image(&self.settings.agent_id, to, task, image);
        let server = BlobServer::serve_file(&self.session, &key, &path, self.settings.chunk_size)
            .await
            .map_err(blob(format!("serve the {image} of {service} as {key}")))?;
        let mut served = lock(&self.served);
        let s = served.entry(service.to_string()).or_insert_with(|| Served {
            task: task.to_string(),
            images: BTreeMap::new(),
        });
        // Another task's images are stale by now: their servers go.
        if s.task != task {
            s.task = task.to_string();
            s.images.clear();
        }
        s.images.insert(image, server);
        Ok(())
    }

    /// Nobody may fetch `service`'s images from here any more.
    fn stop_serving(&self, service: &str) {
        lock(&self.served).remove(service);
    }

    /// Removes the task's archives (and anything else but its state files): what a state that
    /// no longer lists them needs on disk. Best effort: a leftover archive costs disk.
    fn remove_archives(&self, task: &str) {
        let dir = task_dir(self.work_dir(), task);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !is_state_file(&entry.file_name().to_string_lossy()) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    warn!(file = %entry.path().display(), error = %e, "cannot remove a task file");
                }
            }
        }
    }

    /// Removes every task directory holding a state of `service`: the service leaves this
    /// host (release) or never arrived (abort), so whatever any task recorded of it here is
    /// stale. Best effort: a leftover costs disk, not correctness.
    fn remove_service_files(&self, task: &str, service: &str) {
        let mut dirs = state::task_dirs_of_service(self.work_dir(), service);
        dirs.push(task_dir(self.work_dir(), task));
        for dir in dirs {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(dir = %dir.display(), error = %e, "cannot remove the task's files"),
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Runtime helpers shared by both sides

    /// The container `service`, which must exist.
    async fn inspect(&self, service: &str) -> Result<crate::runtime::ContainerInfo> {
        self.container(service)
            .await?
            .ok_or_else(|| CoatError::State(format!("no container {service} on this host")))
    }

    async fn container(&self, service: &str) -> Result<Option<crate::runtime::ContainerInfo>> {
        self.host
            .inspect(service)
            .await
            .map_err(runtime(format!("inspect {service}")))
    }

    /// Best effort: a leftover pre-copy chain costs disk in the container's bundle, not
    /// correctness (a new chain replaces it).
    async fn drop_pre_dumps(&self, service: &str) {
        if let Err(e) = self.host.drop_pre_dumps(service).await {
            warn!(error = %e, "cannot remove the pre-copy chain");
        }
    }

    /// Restore `service` from the podman checkpoint archive at `path`, on top of the pre-copy
    /// `rounds` (name and archive, oldest first) the final dump was made against (`what` names
    /// the attempt in errors). Returns the report and the receive sequence numbers of the
    /// archive's TCP connections (for Resend), read from `path` alongside the restore (both
    /// only read the file; the final dump holds the sockets), so nothing is added to the
    /// downtime.
    async fn restore_archive(
        &self,
        service: &str,
        path: &Path,
        rounds: &[(String, PathBuf)],
        volumes: Volumes,
        what: String,
    ) -> Result<(RestoreReport, Vec<u32>)> {
        // Opened in both cases: a missing archive fails here, before podman is involved.
        let file = tokio::fs::File::open(path)
            .await
            .map_err(io("open the checkpoint", path))?;
        let seqs = tokio::task::spawn_blocking({
            let path = path.to_path_buf();
            move || crate::runtime::criu_tcp::tcp_receive_seqs(&path)
        });
        let opts = RestoreOptions {
            ignore_volumes: matches!(volumes, Volumes::KeptHere),
            ..RestoreOptions::default()
        };
        let result = match rounds.is_empty() {
            true => self.host.restore(&opts, file).await,
            // The API uploads one archive only: the final dump and the joined rounds go to the
            // CLI by path.
            false => {
                // Next to the final archive, in the task's directory.
                let joined = path.with_file_name(JOINED_ROUNDS);
                tokio::task::spawn_blocking({
                    let (rounds, joined) = (rounds.to_vec(), joined.clone());
                    move || crate::runtime::precopy::join_rounds(&rounds, &joined)
                })
                .await
                .map_err(|e| io("join the pre-copy rounds", &joined)(std::io::Error::other(e)))?
                .map_err(io("join the pre-copy rounds", &joined))?;
                let restored = self.host.restore_with_previous(&opts, &joined, path).await;
                let _ = tokio::fs::remove_file(&joined).await;
                if restored.is_ok() {
                    // podman unpacked the chain into the new bundle and leaves it there.
                    self.drop_pre_dumps(service).await;
                }
                restored
            }
        };
        let seqs = match seqs.await {
            Ok(Ok(seqs)) => seqs,
            Ok(Err(why)) => {
                warn!(%why, "TCP connections of the checkpoint unreadable: clients will not be nudged");
                Vec::new()
            }
            Err(e) => {
                warn!(error = %e, "reading the checkpoint's TCP connections failed");
                Vec::new()
            }
        };
        Ok((result.map_err(runtime(what))?, seqs))
    }

    /// The names of `service`'s volumes on this host.
    async fn volumes_of(&self, service: &str) -> Result<Vec<String>> {
        let all = self
            .host
            .volumes()
            .await
            .map_err(runtime(format!("list the volumes of {service}")))?;
        Ok(all.into_iter().filter(|n| volume_of(service, n)).collect())
    }

    /// Removes every volume of `service` on this host; their names.
    async fn remove_volumes(&self, service: &str, why: &str) -> Result<Vec<String>> {
        let names = self.volumes_of(service).await?;
        for name in &names {
            self.host
                .remove_volume(name)
                .await
                .map_err(runtime(format!("{why}: remove volume {name} of {service}")))?;
        }
        Ok(names)
    }

    /// Abort (destination), Release (source) and Remove: everything of `service` on this host.
    /// The flows are keyed by the service's address: `ip` when the caller knows it, else what
    /// the namespace (if it is still there) says.
    async fn remove_service(
        &self,
        task: &str,
        service: &str,
        ip: Option<Ipv4Addr>,
        why: &str,
    ) -> Result<Done> {
        check_service(service)?;
        self.stop_serving(service);
        let (name, host_if) = (netns_name(service), host_ifname(service));
        let path = self.host.netns_path(&name);
        let ip = match (ip, path.exists()) {
            (Some(ip), _) => Some(ip),
            (None, true) => self.host.read_identity(&path).await.ok().map(|n| n.ip),
            (None, false) => None,
        };
        // Cut the namespace off the bridge first: a restored container (abort on the
        // destination) still holds the client's live TCP socket, and killing it makes the
        // kernel send FIN/RST — which must not reach the client, whose service lives on at the
        // source.
        self.host
            .remove_port(&host_if)
            .await
            .map_err(error::overlay(format!(
                "{why}: detach {service} from the bridge"
            )))?;
        // A pre-copy chain's hold on the soft-dirty bits ends with the container.
        self.drop_pre_dumps(service).await;
        let removed = self
            .host
            .remove(service)
            .await
            .map_err(runtime(format!("{why}: remove container {service}")))?;
        let volumes = self.remove_volumes(service, why).await?;
        self.host
            .remove_endpoint(&name, &host_if)
            .await
            .map_err(error::overlay(format!(
                "{why}: remove the namespace {name} of {service}"
            )))?;
        if let Some(ip) = ip {
            self.unsteer(ip).await?;
        }
        self.remove_service_files(task, service);
        info!(
            container_removed = removed,
            ?volumes,
            ?ip,
            "service removed from this host"
        );
        Ok(Done)
    }
}

/// Where a restored container's named volumes come from.
#[derive(Debug, Clone, Copy)]
enum Volumes {
    /// The archive: podman creates them, so none may exist here (a destination).
    FromArchive,
    /// This host: the checkpointed container's own, untouched since its freeze (Resume).
    KeptHere,
}

/// The task's work directory, where `path` (one of its archives) goes.
async fn create_task_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("create the task's work directory", dir))
}

fn dump_stats(s: Option<CriuDumpStats>) -> CriuStats {
    s.as_ref().map(CriuStats::from).unwrap_or_default()
}

fn restore_stats(s: Option<CriuRestoreStats>) -> CriuStats {
    s.as_ref().map(CriuStats::from).unwrap_or_default()
}
