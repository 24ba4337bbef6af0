//! COAT migration steps on this host (SPEC §4): the agent's real [`StepExecutor`].
//!
//! | step | host | what it does |
//! |---|---|---|
//! | describe | source | inspect the container; read IP/MAC/client from its netns; anon memory from its cgroup |
//! | prepare | destination | image present?; netns with the same IP/MAC + client neighbour; steer the service to it on the local bridge |
//! | checkpoint | source | `checkpoint --tcp-established --export` into the work dir, serve it under `images/{task}/{image}`; a pre-dump is one pre-copy round (`runc checkpoint --pre-dump` chained to the round before, container keeps running), the final dump after rounds `--with-previous` |
//! | fetch | destination (pre-copy) | fetch a pre-dump round now, while the service still runs at the source |
//! | restore | destination | fetch the image (chunked, SHA-256), `restore --tcp-established --import` into the prepared netns; after pre-copy with the rounds joined as `--import-previous` |
//! | switch-flow | mobile | steer the service's IP/ARP/MAC on the local bridge to the port toward `to_agent` |
//! | resume | source (rollback) | running: nothing; checkpointed: restore from its own archive(s); stop serving the images |
//! | abort | destination (rollback) | remove the container, netns, veth, flows and files of the service |
//! | release | source (commit) | the same removal, after the destination confirmed |
//! | resend | destination (after the switch) | ICMP nudge so the clients resend at once (see `resend.rs`) |
//!
//! Every step is idempotent: repeating it after success (or after a timeout whose effect is
//! unknown) converges on the same state without harming the service. Steps on one service are
//! serialized by a per-service lock. See `docs/coat.md`.

mod error;
mod netinfo;
pub mod resend;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mose_overlay::netns::{replace_neighbour, EndpointSpec, MacAddr, Neighbour};
use mose_overlay::ovsdb::{PortKind, PortSpec};
use mose_overlay::{HostOverlay, ServiceAddr};
use mose_protocol::blob::{fetch_to_file, BlobServer, FetchOptions, DEFAULT_CHUNK_SIZE};
use mose_protocol::messages::{
    now_us, CriuStats, Phase, PhaseEvent, PhaseStatus, ServiceNetwork, ServiceSpec, Step,
    StepOutcome,
};
use mose_protocol::{encode, KeySpace};
use tracing::{info, warn, Instrument};
use zenoh::Session;

use crate::profiling::{anon_bytes_of_cgroup, memory_cgroup_dir};
use crate::runtime::{
    CheckpointOptions, ContainerInfo, CriuDumpStats, CriuRestoreStats, DumpKind, Podman,
    RestoreOptions,
};
use crate::steps::StepExecutor;

pub use error::CoatError;
use error::{blob, io, overlay, runtime, Result};

/// The joined pre-copy rounds, in the task's work directory during a restore (not `.tar`:
/// only the task's own archives are, which a resume after a restart lists).
const JOINED_ROUNDS: &str = "rounds.joined";

/// The interface a service has inside its namespace.
pub const SERVICE_IFNAME: &str = "eth0";

/// What the executor needs besides the runtime, the overlay and the session.
#[derive(Debug, Clone)]
pub struct CoatSettings {
    /// This agent's id: the `agent` of the phase events it publishes (transfer, netns).
    pub agent_id: String,
    /// Checkpoint archives live under `<work_dir>/<task>/<image>.tar`.
    pub work_dir: PathBuf,
    /// Mobile hosts: the OvS port on this host's bridge that leads toward each agent's host,
    /// by agent id. SwitchFlow steers the service there.
    pub flow_ports: BTreeMap<String, String>,
    /// How the destination fetches images (window, per-chunk timeout, retries).
    pub fetch: FetchOptions,
    pub chunk_size: u32,
}

impl CoatSettings {
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

/// The checkpoint images of one task this host serves until the task's Release or Resume:
/// its pre-copy rounds and its final checkpoint.
struct Served {
    task: String,
    /// By image: the outcome a repeated step answers with, and the image's server.
    images: HashMap<String, (StepOutcome, BlobServer)>,
    /// The pre-copy rounds so far, oldest first: each the parent of the next, the last the
    /// parent of the final dump.
    rounds: Vec<String>,
    /// The final checkpoint and the rounds it was dumped against.
    last_final: Option<(String, Vec<String>)>,
}

impl Served {
    fn new(task: &str) -> Self {
        Served {
            task: task.to_string(),
            images: HashMap::new(),
            rounds: Vec::new(),
            last_final: None,
        }
    }
}

/// Carries out COAT steps with podman (runtime driver), the OvS overlay and Zenoh blobs.
///
/// Each step runs as its own task holding the service's lock: when the caller stops waiting
/// (the step server's timeout), the step still runs to its end, and the next step on that
/// service (e.g. Resume after a timed-out Checkpoint) waits for it instead of racing it. A
/// checkpoint cut off halfway would leave the container frozen without an archive to resume from.
#[derive(Clone)]
pub struct CoatExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    podman: Podman,
    overlay: HostOverlay,
    session: Session,
    keys: KeySpace,
    settings: CoatSettings,
    /// One lock per service (and per flow), so concurrent steps on one service serialize.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Images being served, by service (one task at a time).
    served: Mutex<HashMap<String, Served>>,
    /// Restore statistics by (task, service), so a repeated Restore answers like the first.
    restored: Mutex<HashMap<(String, String), CriuStats>>,
    /// By service: the receive sequence numbers of its restored TCP sockets (Resend's nudges).
    client_seqs: Mutex<HashMap<String, Vec<u32>>>,
}

/// Locks a std mutex whose data stays consistent even if a holder panicked (plain inserts).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CoatExecutor {
    pub fn new(
        podman: Podman,
        overlay: HostOverlay,
        session: Session,
        keys: KeySpace,
        settings: CoatSettings,
    ) -> Self {
        let inner = Inner {
            podman,
            overlay,
            session,
            keys,
            settings,
            locks: Mutex::default(),
            served: Mutex::default(),
            restored: Mutex::default(),
            client_seqs: Mutex::default(),
        };
        CoatExecutor {
            inner: Arc::new(inner),
        }
    }
}

impl Inner {
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
                .put(self.keys.task_events(task), bytes)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            warn!(task, ?phase, error = %e, "could not publish a phase event");
        }
    }

    fn lock_for(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(key).or_default().clone()
    }

    async fn run(&self, task: &str, step: Step) -> Result<StepOutcome> {
        match step {
            Step::Describe { service } => self.describe(&service).await,
            Step::Prepare { spec } => self.prepare(task, &spec).await.map(|_| StepOutcome::Done),
            Step::Checkpoint {
                service,
                image,
                leave_running,
                pre_dump,
            } => {
                self.checkpoint(task, &service, &image, leave_running, pre_dump)
                    .await
            }
            Step::Restore {
                spec,
                from_agent,
                image,
                previous,
            } => {
                self.restore(task, &spec, &from_agent, &image, &previous)
                    .await
            }
            Step::Fetch { from_agent, image } => self.prefetch(task, &from_agent, &image).await,
            Step::SwitchFlow { network, to_agent } => self.switch_flow(&network, &to_agent).await,
            Step::Resume { service } => self.resume(task, &service).await,
            Step::Abort { service } => self.remove_here(task, &service, "abort").await,
            Step::Release { service } => self.remove_here(task, &service, "release").await,
            Step::Resend { service } => self.resend(&service).await,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Source

    #[tracing::instrument(name = "coat.describe", skip(self))]
    async fn describe(&self, service: &str) -> Result<StepOutcome> {
        check_service(service)?;
        let info = self.inspect(service).await?;
        let expected = self.overlay.endpoint_path(&netns_name(service));
        if info.netns_path().as_deref() != Some(expected.as_path()) {
            return Err(CoatError::State(format!(
                "service {service} uses network '{}', but COAT needs it in the namespace {} so the \
                 destination can restore it into the same path",
                info.host_config.network_mode,
                expected.display()
            )));
        }
        let net = netinfo::read(&expected, SERVICE_IFNAME).await?;
        let state_bytes = if info.state.running {
            cgroup_anon_bytes(service, info.state.pid)?
        } else {
            0
        };
        let image = if info.image_name.is_empty() {
            info.image.clone()
        } else {
            info.image_name.clone()
        };
        Ok(StepOutcome::Described {
            spec: ServiceSpec {
                name: service.to_string(),
                image,
                network: ServiceNetwork {
                    ip: net.ip,
                    prefix_len: net.prefix_len,
                    mac: net.mac,
                    client_ip: net.client.map(|c| c.0),
                    client_mac: net.client.map(|c| c.1),
                },
            },
            state_bytes,
        })
    }

    #[tracing::instrument(name = "coat.checkpoint", skip(self))]
    async fn checkpoint(
        &self,
        task: &str,
        service: &str,
        image: &str,
        leave_running: bool,
        pre_dump: bool,
    ) -> Result<StepOutcome> {
        check_service(service)?;
        check_id("task", task)?;
        check_id("image", image)?;
        // The rounds this task made so far: a round builds on the last, the final dump on all.
        let rounds = match lock(&self.served).get(service) {
            Some(s) if s.task == task => {
                if let Some((outcome, _)) = s.images.get(image) {
                    info!("already checkpointed and served for this task");
                    return Ok(outcome.clone());
                }
                s.rounds.clone()
            }
            _ => Vec::new(),
        };
        let path = self.image_path(task, image);
        let info = self.inspect(service).await?;
        let outcome = if pre_dump {
            if !info.state.running {
                return Err(CoatError::State(format!(
                    "service {service} is {}: a pre-dump needs it running",
                    info.state.status
                )));
            }
            self.pre_dump_to(service, image, rounds.last().map(String::as_str), &path)
                .await?
        } else if info.state.running {
            let opts = CheckpointOptions {
                leave_running,
                kind: match rounds.is_empty() {
                    true => DumpKind::Full,
                    false => DumpKind::WithPrevious,
                },
                ..CheckpointOptions::default()
            };
            self.dump_to(service, &path, &opts).await?
        } else if info.state.checkpointed && path.is_file() {
            // A repeat after the agent lost its memory (restart): the archive is complete, since
            // it only gets its final name once podman finished writing it.
            let len = std::fs::metadata(&path)
                .map_err(io("size of the checkpoint archive", &path))?
                .len();
            StepOutcome::Checkpointed {
                image_bytes: len,
                stats: CriuStats::default(),
            }
        } else {
            return Err(CoatError::State(format!(
                "service {service} is {}, not running, and no checkpoint of task {task} is on disk: \
                 nothing to checkpoint",
                info.state.status
            )));
        };
        let key = self.keys.image(task, image);
        let server = BlobServer::serve_file(&self.session, &key, &path, self.settings.chunk_size)
            .await
            .map_err(blob(format!("serve the checkpoint of {service} as {key}")))?;
        let mut served = lock(&self.served);
        let s = served
            .entry(service.to_string())
            .or_insert_with(|| Served::new(task));
        // A checkpoint of another task replaces the old one's servers (stale by now).
        if s.task != task {
            *s = Served::new(task);
        }
        s.images
            .insert(image.to_string(), (outcome.clone(), server));
        match pre_dump {
            true => s.rounds.push(image.to_string()),
            false => s.last_final = Some((image.to_string(), rounds)),
        }
        Ok(outcome)
    }

    /// One pre-copy round: `runc` pre-dumps the running service on top of round `parent`, and
    /// the round's images are archived into `path` (written as `path.partial`, renamed when
    /// complete) for the destination to fetch.
    async fn pre_dump_to(
        &self,
        service: &str,
        round: &str,
        parent: Option<&str>,
        path: &Path,
    ) -> Result<StepOutcome> {
        create_task_dir(&path).await?;
        let report = self
            .podman
            .pre_dump(service, round, parent, CheckpointOptions::default().timeout)
            .await
            .map_err(runtime(format!(
                "pre-dump {service} (pre-copy needs kernel soft-dirty tracking)"
            )))?;
        let partial = path.with_extension("tar.partial");
        let bytes = tokio::task::spawn_blocking({
            let (images, partial, round) = (report.dir.clone(), partial.clone(), round.to_string());
            move || crate::runtime::precopy::write_round_archive(&images, &round, &partial)
        })
        .await
        .map_err(|e| CoatError::State(format!("archiving pre-copy round {round} stopped: {e}")))?
        .map_err(io("archive the pre-copy round", &partial))?;
        tokio::fs::rename(&partial, path)
            .await
            .map_err(io("name the finished round archive", path))?;
        info!(
            bytes,
            runc_ms = report.elapsed.as_millis() as u64,
            pages = report.criu.map(|c| c.pages_written),
            "pre-copy round archived"
        );
        Ok(StepOutcome::Checkpointed {
            image_bytes: bytes,
            stats: dump_stats(report.criu),
        })
    }

    /// Checkpoint into `path`, written as `path.partial` and renamed when complete.
    async fn dump_to(
        &self,
        service: &str,
        path: &Path,
        opts: &CheckpointOptions,
    ) -> Result<StepOutcome> {
        create_task_dir(&path).await?;
        let partial = path.with_extension("tar.partial");
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(io("create the checkpoint archive", &partial))?;
        let report = match self.podman.checkpoint(service, opts, &mut file).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(runtime(format!("checkpoint {service}"))(e));
            }
        };
        file.sync_all()
            .await
            .map_err(io("flush the checkpoint archive", &partial))?;
        tokio::fs::rename(&partial, path)
            .await
            .map_err(io("name the finished checkpoint archive", path))?;
        info!(
            bytes = report.archive_bytes,
            podman_ms = report.podman_time.as_millis() as u64,
            frozen_us = report.criu.map(|c| c.frozen_time_us),
            "checkpointed"
        );
        Ok(StepOutcome::Checkpointed {
            image_bytes: report.archive_bytes,
            stats: dump_stats(report.criu),
        })
    }

    #[tracing::instrument(name = "coat.resume", skip(self))]
    async fn resume(&self, task: &str, service: &str) -> Result<StepOutcome> {
        check_service(service)?;
        check_id("task", task)?;
        // The source is the truth again: nobody may restore this image any more.
        let served_final = lock(&self.served)
            .remove(service)
            .and_then(|s| s.last_final);
        match self.podman.inspect(service).await {
            Ok(info) if info.state.running => {
                info!("still running (never frozen, left running, or only pre-dumped): nothing to resume");
                self.drop_pre_dumps(service).await;
                self.remove_task_files(task).await;
                return Ok(StepOutcome::Done);
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(runtime(format!("inspect {service} before resuming it"))(e)),
        }
        let (archive, previous) = self.own_checkpoint(task, service, served_final)?;
        // The stopped, checkpointed container holds the name and ID the archive restores;
        // the archive stays on disk until the restore succeeded, so a retry can start over.
        self.podman.remove(service).await.map_err(runtime(format!(
            "remove the checkpointed {service} before restoring it"
        )))?;
        let what = format!(
            "restore {service} from its own checkpoint {}",
            archive.display()
        );
        let report = self
            .restore_archive(service, &archive, &previous, what)
            .await?;
        info!(
            ms = report.elapsed.as_millis() as u64,
            "resumed from the local checkpoint"
        );
        self.remove_task_files(task).await;
        Ok(StepOutcome::Done)
    }

    /// The final archive a checkpoint of `task` left for `service` on this host, and the
    /// pre-copy rounds it was dumped against (oldest first, with their archives).
    fn own_checkpoint(
        &self,
        task: &str,
        service: &str,
        served_final: Option<(String, Vec<String>)>,
    ) -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
        if let Some((image, rounds)) = served_final {
            let rounds = rounds
                .into_iter()
                .map(|r| {
                    let path = self.image_path(task, &r);
                    (r, path)
                })
                .collect();
            return Ok((self.image_path(task, &image), rounds));
        }
        // The agent restarted since the checkpoint: read the task's directory.
        let dir = self.settings.work_dir.join(task);
        task_archives(&dir).ok_or_else(|| {
            CoatError::State(format!(
                "service {service} is not running and task {task} left no checkpoint in {}: cannot resume it",
                dir.display()
            ))
        })
    }

    // ---------------------------------------------------------------------------------------
    // Destination

    /// Image present, namespace with the service's identity, explicit flows to it. Returns the
    /// OpenFlow port of the service's veth.
    #[tracing::instrument(name = "coat.prepare", skip(self, spec), fields(service = %spec.name))]
    async fn prepare(&self, task: &str, spec: &ServiceSpec) -> Result<u32> {
        check_service(&spec.name)?;
        let t0 = Instant::now();
        let present = self
            .podman
            .image_exists(&spec.image)
            .await
            .map_err(runtime(format!(
                "check that image {} of {} is here",
                spec.image, spec.name
            )))?;
        if !present {
            return Err(CoatError::State(format!(
                "image {} of service {} is not present on this host; load it before migrating \
                 (the agent does not transfer container images)",
                spec.image, spec.name
            )));
        }
        let ofport = self
            .in_phase(task, Phase::Netns, self.ensure_endpoint(spec))
            .await?;
        let net = &spec.network;
        self.overlay
            .steer(
                ServiceAddr {
                    ip: net.ip,
                    mac: MacAddr(net.mac),
                },
                ofport,
            )
            .await
            .map_err(overlay(format!(
                "steer {} to the local port {ofport} of {}",
                net.ip, spec.name
            )))?;
        info!(ms = t0.elapsed().as_millis() as u64, ofport, "prepared");
        Ok(ofport)
    }

    /// The service's namespace and veth, created unless they exist with the right identity
    /// (then only the neighbour entry is refreshed): a repeated Prepare, or one on the host the
    /// service runs on, must not cut a live service's interface.
    async fn ensure_endpoint(&self, spec: &ServiceSpec) -> Result<u32> {
        let (name, host_if) = (netns_name(&spec.name), host_ifname(&spec.name));
        let path = self.overlay.endpoint_path(&name);
        let net = &spec.network;
        let client = match (net.client_ip, net.client_mac) {
            (Some(ip), Some(mac)) => Some(Neighbour {
                ip,
                mac: MacAddr(mac),
            }),
            _ => None,
        };
        let host_link = Path::new("/sys/class/net").join(&host_if);
        if path.exists() && host_link.exists() {
            match netinfo::read(&path, SERVICE_IFNAME).await {
                Ok(id)
                    if id.ip == net.ip && id.prefix_len == net.prefix_len && id.mac == net.mac =>
                {
                    if let Some(n) = client {
                        replace_neighbour(&path, SERVICE_IFNAME, n)
                            .await
                            .map_err(overlay(format!(
                                "carry the client's neighbour entry into {}",
                                path.display()
                            )))?;
                    }
                    return self
                        .overlay
                        .ensure_port(&PortSpec::new(&host_if, PortKind::System))
                        .await
                        .map_err(overlay(format!(
                            "attach {host_if} of {} to the bridge",
                            spec.name
                        )));
                }
                Ok(id) => {
                    if self.running_here(&spec.name).await? {
                        return Err(CoatError::State(format!(
                            "service {} runs here with {}/{} instead of {}/{}: refusing to replace its network",
                            spec.name, id.ip, id.prefix_len, net.ip, net.prefix_len
                        )));
                    }
                }
                Err(e) => warn!(error = %e, "existing namespace unreadable, recreating it"),
            }
        }
        let mut endpoint =
            EndpointSpec::new(&name, &host_if, net.ip, net.prefix_len, MacAddr(net.mac));
        endpoint.ifname = SERVICE_IFNAME.to_string();
        endpoint.neighbours.extend(client);
        let attached = self
            .overlay
            .add_endpoint(&endpoint)
            .await
            .map_err(overlay(format!(
                "create the namespace {name} of {}",
                spec.name
            )))?;
        Ok(attached.ofport)
    }

    #[tracing::instrument(name = "coat.restore", skip(self, spec), fields(service = %spec.name))]
    async fn restore(
        &self,
        task: &str,
        spec: &ServiceSpec,
        from_agent: &str,
        image: &str,
        previous: &[String],
    ) -> Result<StepOutcome> {
        let service = spec.name.as_str();
        check_service(service)?;
        check_id("task", task)?;
        check_id("image", image)?;
        for round in previous {
            check_id("image", round)?;
        }
        let cached = lock(&self.restored)
            .get(&(task.to_string(), service.to_string()))
            .cloned();
        match self.podman.inspect(service).await {
            Ok(info) if info.state.running => {
                return match cached {
                    Some(stats) => Ok(StepOutcome::Restored { stats }),
                    // Restored by an earlier attempt whose answer was lost (agent restart).
                    None if info.state.restored => Ok(StepOutcome::Restored {
                        stats: CriuStats::default(),
                    }),
                    None => Err(CoatError::State(format!(
                        "service {service} already runs here and was not restored by a migration: \
                         refusing to replace it"
                    ))),
                };
            }
            // Left by a failed attempt; the archive recreates it.
            Ok(_) => {
                self.podman
                    .remove(service)
                    .await
                    .map_err(runtime(format!("remove the stale {service}")))?;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(runtime(format!("inspect {service} before restoring it"))(e)),
        }
        if !self.overlay.endpoint_path(&netns_name(service)).exists() {
            warn!("restore without a prepared namespace: preparing now (inside the downtime)");
            self.prepare(task, spec).await?;
        }

        let path = self.image_path(task, image);
        create_task_dir(&path).await?;
        let rounds: Vec<(String, PathBuf)> = previous
            .iter()
            .map(|r| (r.clone(), self.image_path(task, r)))
            .collect();
        let t0 = Instant::now();
        // The rounds a Fetch brought during pre-copy are complete on disk (a fetch names its
        // file only after the digest matched); any other is fetched now, with the final dump.
        let fetch = async {
            let missing = rounds.iter().filter(|(_, p)| !p.is_file()).map(|(r, p)| async move {
                self.fetch_image(task, r, p, from_agent).await
            });
            let (bytes, round_bytes) = tokio::try_join!(
                self.fetch_image(task, image, &path, from_agent),
                futures::future::try_join_all(missing)
            )?;
            Ok(bytes + round_bytes.iter().sum::<u64>())
        };
        let bytes = self.in_phase(task, Phase::Transfer, fetch).await?;
        let fetch_ms = t0.elapsed().as_millis() as u64;
        let result = self
            .restore_archive(
                service,
                &path,
                &rounds,
                format!("restore {service} from the checkpoint of task {task}"),
            )
            .await;
        // The archives are not needed any more either way: a retry fetches them again.
        for p in std::iter::once(&path).chain(rounds.iter().map(|(_, p)| p)) {
            let _ = tokio::fs::remove_file(p).await;
        }
        // And the task's directory with them, once empty (it is nothing but their place).
        if let Some(dir) = path.parent() {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        let report = result?;
        info!(
            bytes,
            fetch_ms,
            restore_ms = report.elapsed.as_millis() as u64,
            "restored"
        );
        let stats = restore_stats(report.criu);
        lock(&self.restored).insert((task.to_string(), service.to_string()), stats.clone());
        Ok(StepOutcome::Restored { stats })
    }

    /// Pre-copy: fetch round `image` of `task` now, while the service still runs at the
    /// source; the Restore then finds it on disk. A round already here is not fetched again.
    #[tracing::instrument(name = "coat.fetch", skip(self))]
    async fn prefetch(&self, task: &str, from_agent: &str, image: &str) -> Result<StepOutcome> {
        check_id("task", task)?;
        check_id("image", image)?;
        let path = self.image_path(task, image);
        if path.is_file() {
            info!("already fetched");
            return Ok(StepOutcome::Done);
        }
        create_task_dir(&path).await?;
        let t0 = Instant::now();
        let bytes = self.fetch_image(task, image, &path, from_agent).await?;
        info!(bytes, ms = t0.elapsed().as_millis() as u64, "pre-copy round fetched");
        Ok(StepOutcome::Done)
    }

    /// Fetch `image` of `task` from `from_agent` into `path`; returns its size.
    async fn fetch_image(
        &self,
        task: &str,
        image: &str,
        path: &Path,
        from_agent: &str,
    ) -> Result<u64> {
        let key = self.keys.image(task, image);
        let manifest = fetch_to_file(&self.session, &key, path, &self.settings.fetch, &mut |_| {})
            .await
            .map_err(blob(format!(
                "fetch the checkpoint {key} from agent {from_agent}"
            )))?;
        Ok(manifest.size)
    }

    /// Restore `service` from the podman checkpoint archive at `path`, on top of the pre-copy
    /// `rounds` (name and archive, oldest first) the final dump was made against (`what` names
    /// the attempt in errors), and remember the receive sequence numbers of its TCP
    /// connections for a later Resend. They are read from `path` (the final dump holds the
    /// sockets; a round has memory only) alongside the restore (both only read the file), so
    /// nothing is added to the downtime.
    async fn restore_archive(
        &self,
        service: &str,
        path: &Path,
        rounds: &[(String, PathBuf)],
        what: String,
    ) -> Result<crate::runtime::RestoreReport> {
        // Opened in both cases: a missing archive fails here, before podman is involved.
        let file = tokio::fs::File::open(path)
            .await
            .map_err(io("open the checkpoint", path))?;
        let seqs = tokio::task::spawn_blocking({
            let path = path.to_path_buf();
            move || crate::runtime::criu_tcp::tcp_receive_seqs(&path)
        });
        let opts = RestoreOptions::default();
        let result = match rounds.is_empty() {
            true => self.podman.restore(&opts, file).await,
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
                .map_err(|e| CoatError::State(format!("joining the pre-copy rounds stopped: {e}")))?
                .map_err(io("join the pre-copy rounds", &joined))?;
                let restored = self
                    .podman
                    .restore_with_previous(&opts, &joined, path)
                    .await;
                let _ = tokio::fs::remove_file(&joined).await;
                if restored.is_ok() {
                    // podman unpacked the chain into the new bundle and leaves it there.
                    self.drop_pre_dumps(service).await;
                }
                restored
            }
        };
        match seqs.await {
            Ok(Ok(seqs)) => {
                lock(&self.client_seqs).insert(service.to_string(), seqs);
            }
            Ok(Err(why)) => warn!(
                %why,
                "TCP connections of the checkpoint unreadable: clients will not be nudged"
            ),
            Err(e) => warn!(error = %e, "reading the checkpoint's TCP connections failed"),
        }
        result.map_err(runtime(what))
    }

    /// After the flow switch: nudge the restored service's TCP clients to resend what the
    /// freeze swallowed now (RFC 6069 backoff revert, see `resend.rs`). Best effort by nature:
    /// a client that needs no nudge ignores it.
    #[tracing::instrument(name = "coat.resend", skip(self))]
    async fn resend(&self, service: &str) -> Result<StepOutcome> {
        check_service(service)?;
        let seqs = lock(&self.client_seqs)
            .get(service)
            .cloned()
            .unwrap_or_default();
        if seqs.is_empty() {
            info!("no TCP connection in the checkpoint: nobody to nudge");
            return Ok(StepOutcome::Done);
        }
        let path = self.overlay.endpoint_path(&netns_name(service));
        let sent = mose_overlay::netns::in_netns(&path, move || resend::prompt_clients(&seqs))
            .await
            .map_err(overlay(format!("nudge the clients of {service}")))?;
        info!(messages = sent, "clients nudged to resend");
        Ok(StepOutcome::Done)
    }

    /// Abort (destination) and Release (source): remove everything of `service` on this host.
    #[tracing::instrument(name = "coat.remove", skip(self))]
    async fn remove_here(&self, task: &str, service: &str, why: &str) -> Result<StepOutcome> {
        check_service(service)?;
        check_id("task", task)?;
        lock(&self.served).remove(service);
        let (name, host_if) = (netns_name(service), host_ifname(service));
        let path = self.overlay.endpoint_path(&name);
        // The flows are keyed by the service IP, which only the namespace still knows.
        let ip = match path.exists() {
            true => netinfo::read(&path, SERVICE_IFNAME)
                .await
                .ok()
                .map(|n| n.ip),
            false => None,
        };
        // Cut the namespace off the bridge first: a restored container (abort on the
        // destination) still holds the client's live TCP socket, and killing it makes the
        // kernel send FIN/RST — which must not reach the client, whose service lives on at the
        // source.
        self.overlay
            .remove_port(&host_if)
            .await
            .map_err(overlay(format!("{why}: detach {service} from the bridge")))?;
        // A pre-copy chain's hold on the soft-dirty bits ends with the container.
        self.drop_pre_dumps(service).await;
        let removed = self
            .podman
            .remove(service)
            .await
            .map_err(runtime(format!("{why}: remove container {service}")))?;
        self.overlay
            .remove_endpoint(&name, &host_if)
            .await
            .map_err(overlay(format!(
                "{why}: remove the namespace {name} of {service}"
            )))?;
        if let Some(ip) = ip {
            self.overlay.unsteer(ip).await.map_err(overlay(format!(
                "{why}: remove the flows of {service} ({ip})"
            )))?;
        }
        self.remove_task_files(task).await;
        lock(&self.restored).retain(|(_, s), _| s != service);
        lock(&self.client_seqs).remove(service);
        info!(
            container_removed = removed,
            ?ip,
            "service removed from this host"
        );
        Ok(StepOutcome::Done)
    }

    // ---------------------------------------------------------------------------------------
    // Mobile

    #[tracing::instrument(name = "coat.switch_flow", skip(self, network), fields(ip = %network.ip))]
    async fn switch_flow(&self, network: &ServiceNetwork, to_agent: &str) -> Result<StepOutcome> {
        let port = self.settings.flow_ports.get(to_agent).ok_or_else(|| {
            CoatError::Invalid(format!(
                "no OvS port toward agent {to_agent} is configured on this host (flow_ports: {:?}); \
                 add `{to_agent} = \"<port>\"` under [flow_ports] or --flow-port {to_agent}=<port>",
                self.settings.flow_ports.keys().collect::<Vec<_>>()
            ))
        })?;
        let ofport = self
            .overlay
            .ofport(port)
            .await
            .map_err(overlay(format!("find the port {port} toward {to_agent}")))?;
        let t0 = Instant::now();
        self.overlay
            .steer(
                ServiceAddr {
                    ip: network.ip,
                    mac: MacAddr(network.mac),
                },
                ofport,
            )
            .await
            .map_err(overlay(format!(
                "steer {} to {port} (toward {to_agent})",
                network.ip
            )))?;
        info!(port = %port, ofport, ms = t0.elapsed().as_millis() as u64, "client flow switched");
        Ok(StepOutcome::Done)
    }

    // ---------------------------------------------------------------------------------------
    // Helpers

    async fn inspect(&self, service: &str) -> Result<ContainerInfo> {
        self.podman
            .inspect(service)
            .await
            .map_err(|e| match e.is_not_found() {
                true => CoatError::State(format!("no container {service} on this host")),
                false => runtime(format!("inspect {service}"))(e),
            })
    }

    async fn running_here(&self, service: &str) -> Result<bool> {
        match self.podman.inspect(service).await {
            Ok(info) => Ok(info.state.running),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(runtime(format!("inspect {service}"))(e)),
        }
    }

    fn image_path(&self, task: &str, image: &str) -> PathBuf {
        self.settings
            .work_dir
            .join(task)
            .join(format!("{image}.tar"))
    }

    /// Best effort: a leftover pre-copy chain costs disk in the container's bundle, not
    /// correctness (a new chain replaces it).
    async fn drop_pre_dumps(&self, service: &str) {
        if let Err(e) = self.podman.drop_pre_dumps(service).await {
            warn!(error = %e, "cannot remove the pre-copy chain");
        }
    }

    /// Best effort: a leftover archive costs disk, not correctness.
    async fn remove_task_files(&self, task: &str) {
        let dir = self.settings.work_dir.join(task);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot remove the task's files"),
        }
    }
}

impl StepExecutor for CoatExecutor {
    async fn execute(&self, task: &str, step: Step) -> Result<StepOutcome, String> {
        let key = match &step {
            Step::Describe { service }
            | Step::Checkpoint { service, .. }
            | Step::Resume { service }
            | Step::Abort { service }
            | Step::Release { service }
            | Step::Resend { service } => service.clone(),
            Step::Prepare { spec } | Step::Restore { spec, .. } => spec.name.clone(),
            // A round's file, not the service: the fetch runs alongside the next round.
            Step::Fetch { image, .. } => format!("fetch {task} {image}"),
            // Flows belong to the service address, not to a container on this host.
            Step::SwitchFlow { network, .. } => format!("flow {}", network.ip),
        };
        let (inner, task) = (self.inner.clone(), task.to_string());
        let run = async move {
            let op = step.op();
            let service_lock = inner.lock_for(key);
            let _held = service_lock.lock().await;
            let t0 = Instant::now();
            let result = inner.run(&task, step).await;
            let ms = t0.elapsed().as_millis() as u64;
            match &result {
                Ok(_) => info!(op, ms, "step done"),
                Err(e) => warn!(op, ms, error = %e, "step failed"),
            }
            result.map_err(|e| e.to_string())
        };
        // Spawned, not awaited in place: see [`CoatExecutor`] on steps outliving their caller.
        tokio::spawn(run.instrument(tracing::Span::current()))
            .await
            .unwrap_or_else(|e| Err(format!("the step's task ended abnormally: {e}")))
    }
}

/// The namespace of `service` on every host: one path everywhere, because the checkpoint
/// records it and podman restores into exactly that path.
pub fn netns_name(service: &str) -> String {
    format!("mose-{service}")
}

/// The host-side veth (and OvS port) of `service`: `mv-<service>` when that fits the 15 bytes
/// of an interface name, else `mv-` and 12 hex digits of a hash of the name.
pub fn host_ifname(service: &str) -> String {
    let plain = format!("mv-{service}");
    if plain.len() <= 15 {
        return plain;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = service.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("mv-{:012x}", hash >> 16)
}

/// Container names as podman accepts them, short enough for [`netns_name`].
fn check_service(service: &str) -> Result<()> {
    let ok = !service.is_empty()
        && service.len() <= 59
        && service.starts_with(|c: char| c.is_ascii_alphanumeric())
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(CoatError::Invalid(format!(
            "invalid service name {service:?}: 1-59 characters of [A-Za-z0-9_.-], starting alphanumeric"
        ))),
    }
}

/// Task and image ids become key chunks and file names: no separators, no leading dot.
fn check_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(CoatError::Invalid(format!(
            "invalid {what} id {id:?}: 1-128 characters of [A-Za-z0-9_.-], starting alphanumeric"
        ))),
    }
}

/// The archives a task's checkpoints left in `dir`: the final dump and the pre-copy rounds it
/// was made against (name and path, oldest first); `None` when there is none. Archives get
/// their name only when complete, and the final dump comes after every round, so the newest is
/// the final one.
fn task_archives(dir: &Path) -> Option<(PathBuf, Vec<(String, PathBuf)>)> {
    let mut archives: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "tar"))
                .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
                .collect()
        })
        .unwrap_or_default();
    archives.sort();
    let ((_, last), rounds) = archives.split_last()?;
    let rounds = rounds
        .iter()
        .map(|(_, p)| {
            let name = p.file_stem().unwrap_or_default().to_string_lossy();
            (name.into_owned(), p.clone())
        })
        .collect();
    Some((last.clone(), rounds))
}

/// The task's work directory, where `path` (one of its archives) goes.
async fn create_task_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("create the task's work directory", dir))
}

/// Anonymous memory of the container whose init is `pid` (the state a checkpoint carries).
fn cgroup_anon_bytes(service: &str, pid: i64) -> Result<u64> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&file)
        .map_err(io(format!("read the cgroup of {service}"), &file))?;
    let dir = memory_cgroup_dir(&text).ok_or_else(|| {
        CoatError::State(format!(
            "{} of {service} names no cgroup v2 or v1 memory cgroup",
            file.display()
        ))
    })?;
    anon_bytes_of_cgroup(&dir).map_err(io(format!("read the memory of {service}"), dir))
}

fn dump_stats(s: Option<CriuDumpStats>) -> CriuStats {
    s.as_ref().map(CriuStats::from).unwrap_or_default()
}

fn restore_stats(s: Option<CriuRestoreStats>) -> CriuStats {
    s.as_ref().map(CriuStats::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interfaces_and_are_stable() {
        assert_eq!(netns_name("counter"), "mose-counter");
        assert_eq!(host_ifname("counter"), "mv-counter");
        let long = host_ifname("a-rather-long-service-name");
        assert_eq!(long.len(), 15);
        assert_eq!(long, host_ifname("a-rather-long-service-name"));
        assert_ne!(long, host_ifname("a-rather-long-service-namf"));
    }

    #[test]
    fn bad_names_and_ids_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden", "-x", &"x".repeat(60)] {
            assert!(check_service(bad).is_err(), "{bad:?}");
        }
        assert!(check_service("counter_1.v2").is_ok());
        for bad in ["", "..", "t/1", ".t"] {
            assert!(check_id("task", bad).is_err(), "{bad:?}");
        }
        assert!(check_id("task", "t-1.a_b").is_ok());
    }

    /// After an agent restart, resume finds the final dump and its rounds by age; partial
    /// archives and the joined rounds are not taken for either.
    #[test]
    fn a_restarted_agent_finds_the_final_dump_and_its_rounds() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(task_archives(t.path()), None);
        assert_eq!(task_archives(&t.path().join("missing")), None);
        let at = |secs| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        for (name, secs) in [
            ("pre-1.tar", 20),
            ("pre-0.tar", 10),
            ("ckpt.tar", 30),
            ("ckpt.tar.partial", 40),
            (JOINED_ROUNDS, 50),
        ] {
            let f = std::fs::File::create(t.path().join(name)).unwrap();
            f.set_modified(at(secs)).unwrap();
        }
        let (last, rounds) = task_archives(t.path()).unwrap();
        assert_eq!(last, t.path().join("ckpt.tar"));
        let names: Vec<&str> = rounds.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["pre-0", "pre-1"]);
        assert_eq!(rounds[1].1, t.path().join("pre-1.tar"));
    }

    #[test]
    fn criu_statistics_map_onto_the_wire() {
        let d = CriuDumpStats {
            frozen_time_us: 7,
            pages_written: 3,
            ..CriuDumpStats::default()
        };
        let s = dump_stats(Some(d));
        assert_eq!(
            (s.frozen_time_us, s.pages_written, s.restore_time_us),
            (Some(7), Some(3), None)
        );
        assert_eq!(dump_stats(None), CriuStats::default());
        let r = CriuRestoreStats {
            restore_time_us: 9,
            ..CriuRestoreStats::default()
        };
        assert_eq!(restore_stats(Some(r)).restore_time_us, Some(9));
    }
}
