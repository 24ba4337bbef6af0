//! A fake [`Host`] for the executor's unit tests: containers, namespaces, ports and flows as
//! plain data, every call recorded. Archives are real tar files (podman's `config.dump` and a
//! CRIU `tcp-stream` image), so the executor's own file handling — round archives, joined
//! rounds, the sockets read for Resend, blob serving — runs for real.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mose_overlay::netns::{EndpointSpec, Neighbour};
use mose_overlay::{OverlayError, ServiceAddr};
use mose_protocol::messages::{Peer, ServiceSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::host::Host;
use super::naming::{host_ifname, netns_name};
use super::netinfo::NetIdentity;
use crate::runtime::container::{ContainerState, HostConfig};
use crate::runtime::{
    CheckpointOptions, CheckpointReport, ContainerInfo, CreateSpec, CriuDumpStats,
    CriuRestoreStats, Netns, Op, PreDumpReport, RestoreOptions, RestoreReport, RuntimeError,
};

/// The anonymous memory every fake container reports.
pub const ANON_BYTES: u64 = 84 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeContainer {
    pub running: bool,
    pub checkpointed: bool,
    pub restored: bool,
    /// The namespace it runs in (by name).
    pub netns: String,
    pub image: String,
    /// `rcv_nxt` of its one TCP connection, carried through its archives.
    pub inq_seq: u32,
}

/// What the fake host holds.
#[derive(Debug, Default)]
pub struct World {
    pub containers: BTreeMap<String, FakeContainer>,
    pub images: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    /// Every mutating call, in order (`"checkpoint counter Full"`, `"remove_port mv-counter"`).
    pub calls: Vec<String>,
    pub netns: BTreeMap<String, NetIdentity>,
    pub links: BTreeSet<String>,
    pub ports: BTreeMap<String, u32>,
    pub flows: BTreeMap<Ipv4Addr, u32>,
    pub nudged: Vec<Vec<u32>>,
    /// Calls (by method name) that take this long.
    pub delays: BTreeMap<&'static str, Duration>,
    /// Calls (by method name) whose next invocation fails with this message.
    pub failures: BTreeMap<&'static str, String>,
    next_ofport: u32,
}

impl World {
    /// How many recorded calls start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.calls.iter().filter(|c| c.starts_with(prefix)).count()
    }

    /// Index of the first recorded call starting with `prefix`.
    pub fn position(&self, prefix: &str) -> Option<usize> {
        self.calls.iter().position(|c| c.starts_with(prefix))
    }

    fn port(&mut self, name: &str) -> u32 {
        let next = &mut self.next_ofport;
        *self.ports.entry(name.to_string()).or_insert_with(|| {
            *next += 1;
            *next + 10
        })
    }
}

/// A host; clones share it (a restarted agent finds the host as it was).
#[derive(Clone)]
pub struct FakeHost {
    world: Arc<Mutex<World>>,
    root: PathBuf,
}

impl FakeHost {
    /// A host whose namespaces and bundles live under `root`, with bridge ports `ports`.
    pub fn new(root: &Path, ports: &[(&str, u32)]) -> Self {
        std::fs::create_dir_all(root.join("netns")).unwrap();
        let mut world = World::default();
        world
            .ports
            .extend(ports.iter().map(|(n, p)| (n.to_string(), *p)));
        FakeHost {
            world: Arc::new(Mutex::new(world)),
            root: root.to_path_buf(),
        }
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// The service as it runs on its source: image, namespace, port, a running container.
    pub fn run_service(&self, spec: &ServiceSpec, inq_seq: u32) {
        let name = netns_name(&spec.name);
        self.create_netns(&name, identity_of(spec));
        let mut w = self.world();
        w.images.insert(spec.image.clone());
        w.links.insert(host_ifname(&spec.name));
        w.port(&host_ifname(&spec.name));
        w.containers
            .insert(spec.name.clone(), running(name, &spec.image, inq_seq));
    }

    pub fn create_netns(&self, name: &str, id: NetIdentity) {
        std::fs::write(self.netns_path(name), b"").unwrap();
        self.world().netns.insert(name.to_string(), id);
    }

    fn record(&self, call: String) {
        self.world().calls.push(call);
    }

    /// Waits the configured delay of `method`, then fails if a failure is set for it.
    async fn enter(&self, method: &'static str, target: &str) -> Result<(), RuntimeError> {
        let delay = self.world().delays.get(method).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match self.world().failures.remove(method) {
            Some(message) => Err(RuntimeError::Podman {
                op: Op::Restore,
                target: target.to_string(),
                status: 500,
                message,
                cause: String::new(),
            }),
            None => Ok(()),
        }
    }

    fn bundle(&self, name: &str) -> PathBuf {
        self.root.join("bundles").join(name)
    }
}

/// A container running in the namespace `netns`, never checkpointed.
fn running(netns: String, image: &str, inq_seq: u32) -> FakeContainer {
    FakeContainer {
        running: true,
        checkpointed: false,
        restored: false,
        netns,
        image: image.to_string(),
        inq_seq,
    }
}

pub fn identity_of(spec: &ServiceSpec) -> NetIdentity {
    let net = &spec.network;
    NetIdentity {
        ip: net.ip,
        prefix_len: net.prefix_len,
        mac: net.mac,
        clients: net.clients.clone(),
    }
}

fn podman_error(op: Op, target: &str, message: &str) -> RuntimeError {
    RuntimeError::Podman {
        op,
        target: target.to_string(),
        status: 500,
        message: message.to_string(),
        cause: String::new(),
    }
}

fn no_such(what: &str, path: &Path) -> OverlayError {
    OverlayError::Path {
        what: what.to_string(),
        path: path.to_path_buf(),
    }
}

/// A podman checkpoint archive of `name`: its `config.dump` and one CRIU `tcp-stream` image.
pub fn archive_of(name: &str, inq_seq: u32) -> Vec<u8> {
    let config = format!(r#"{{"id": "id-{name}", "name": "{name}"}}"#);
    // IMG_COMMON_MAGIC, TCP_STREAM_MAGIC, entry length, tcp_stream_entry {inq_len: 0, inq_seq}.
    let mut entry = vec![0x08, 0x00, 0x10];
    let mut v = u64::from(inq_seq);
    while v >= 0x80 {
        entry.push((v as u8) | 0x80);
        v >>= 7;
    }
    entry.push(v as u8);
    let mut image = Vec::new();
    image.extend(0x5456_4319u32.to_le_bytes());
    image.extend(0x5146_5506u32.to_le_bytes());
    image.extend((entry.len() as u32).to_le_bytes());
    image.extend(entry);
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("config.dump", config.into_bytes()),
        ("checkpoint/tcp-stream-1.img", image),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    tar.into_inner().unwrap()
}

/// The container name and `inq_seq` an [`archive_of`] archive holds.
fn read_archive(bytes: &[u8]) -> Option<(String, u32)> {
    let mut tar = tar::Archive::new(bytes);
    let mut name = None;
    for entry in tar.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.path().ok()?.to_str() == Some("config.dump") {
            let mut text = String::new();
            entry.read_to_string(&mut text).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            name = v["name"].as_str().map(str::to_string);
        }
    }
    let seq = {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("a.tar");
        std::fs::write(&path, bytes).ok()?;
        crate::runtime::criu_tcp::tcp_receive_seqs(&path).ok()?
    };
    Some((name?, *seq.first()?))
}

/// The rounds a joined pre-checkpoint archive holds, in order, if it links `pre-checkpoint`.
fn joined_rounds(path: &Path) -> Option<Vec<String>> {
    let file = std::fs::File::open(path).ok()?;
    let mut tar = tar::Archive::new(file);
    let (mut rounds, mut linked) = (Vec::<String>::new(), false);
    for entry in tar.entries().ok()? {
        let entry = entry.ok()?;
        let p = entry.path().ok()?.into_owned();
        if p == Path::new("pre-checkpoint") {
            linked = true;
            continue;
        }
        let round = p.iter().nth(1)?.to_string_lossy().into_owned();
        if !rounds.contains(&round) {
            rounds.push(round);
        }
    }
    linked.then_some(rounds)
}

impl Host for FakeHost {
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        let w = self.world();
        Ok(w.containers.get(name).map(|c| ContainerInfo {
            id: format!("id-{name}"),
            name: name.to_string(),
            image_name: c.image.clone(),
            state: ContainerState {
                status: match (c.running, c.checkpointed) {
                    (true, _) => "running",
                    (false, true) => "exited (checkpointed)",
                    (false, false) => "exited",
                }
                .to_string(),
                running: c.running,
                pid: if c.running { 4242 } else { 0 },
                checkpointed: c.checkpointed,
                restored: c.restored,
                ..ContainerState::default()
            },
            host_config: HostConfig {
                network_mode: format!("ns:{}", self.netns_path(&c.netns).display()),
            },
            ..ContainerInfo::default()
        }))
    }

    async fn image_exists(&self, reference: &str) -> Result<bool, RuntimeError> {
        Ok(self.world().images.contains(reference))
    }

    fn anon_bytes(&self, _pid: i64) -> std::io::Result<u64> {
        Ok(ANON_BYTES)
    }

    async fn checkpoint(
        &self,
        name: &str,
        opts: &CheckpointOptions,
        sink: &mut tokio::fs::File,
    ) -> Result<CheckpointReport, RuntimeError> {
        self.record(format!("checkpoint {name} {:?}", opts.kind));
        self.enter("checkpoint", name).await?;
        let seq = match self.world().containers.get(name) {
            Some(c) if c.running => c.inq_seq,
            _ => {
                return Err(podman_error(
                    Op::Checkpoint,
                    name,
                    "container is not running",
                ))
            }
        };
        let bytes = archive_of(name, seq);
        let io = |source| RuntimeError::ArchiveIo {
            op: Op::Checkpoint,
            target: name.to_string(),
            bytes: 0,
            source,
        };
        sink.write_all(&bytes).await.map_err(io)?;
        sink.flush().await.map_err(io)?;
        if let Some(c) = self.world().containers.get_mut(name) {
            c.running = opts.leave_running;
            c.checkpointed = true;
        }
        Ok(CheckpointReport {
            container: name.to_string(),
            archive_bytes: bytes.len() as u64,
            podman_time: Duration::ZERO,
            transfer_time: Duration::ZERO,
            criu: Some(CriuDumpStats {
                frozen_time_us: 50_000,
                pages_written: 21,
                ..CriuDumpStats::default()
            }),
        })
    }

    async fn pre_dump(
        &self,
        name: &str,
        round: &str,
        parent: Option<&str>,
    ) -> Result<PreDumpReport, RuntimeError> {
        self.record(format!("pre_dump {name} {round} {parent:?}"));
        self.enter("pre_dump", name).await?;
        if !self.world().containers.get(name).is_some_and(|c| c.running) {
            return Err(podman_error(Op::PreDump, name, "container is not running"));
        }
        let dir = self.bundle(name).join("mose-precopy").join(round);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pages-1.img"), format!("pages of {round}")).unwrap();
        if let Some(p) = parent {
            let _ = std::fs::remove_file(dir.join("parent"));
            std::os::unix::fs::symlink(format!("../{p}"), dir.join("parent")).unwrap();
        }
        Ok(PreDumpReport {
            dir,
            elapsed: Duration::ZERO,
            criu: Some(CriuDumpStats {
                pages_written: 7,
                ..CriuDumpStats::default()
            }),
        })
    }

    async fn drop_pre_dumps(&self, name: &str) -> Result<(), RuntimeError> {
        self.record(format!("drop_pre_dumps {name}"));
        let _ = std::fs::remove_dir_all(self.bundle(name));
        Ok(())
    }

    async fn restore(
        &self,
        opts: &RestoreOptions,
        mut archive: tokio::fs::File,
    ) -> Result<RestoreReport, RuntimeError> {
        let mut bytes = Vec::new();
        archive.read_to_end(&mut bytes).await.unwrap();
        let (name, seq) = read_archive(&bytes)
            .ok_or_else(|| podman_error(Op::Restore, "?", "not a checkpoint archive"))?;
        self.record(format!("restore {name}{}", volumes_kept(opts)));
        self.enter("restore", &name).await?;
        self.restored(&name, seq, bytes.len() as u64)
    }

    async fn restore_with_previous(
        &self,
        opts: &RestoreOptions,
        previous: &Path,
        archive: &Path,
    ) -> Result<RestoreReport, RuntimeError> {
        let bytes = std::fs::read(archive).unwrap();
        let (name, seq) = read_archive(&bytes)
            .ok_or_else(|| podman_error(Op::Restore, "?", "not a checkpoint archive"))?;
        let rounds = joined_rounds(previous)
            .ok_or_else(|| podman_error(Op::Restore, &name, "not a pre-checkpoint archive"))?;
        let file = archive.file_name().unwrap_or_default().to_string_lossy();
        self.record(format!(
            "restore_with_previous {name} {file} {rounds:?}{}",
            volumes_kept(opts)
        ));
        self.enter("restore", &name).await?;
        self.restored(&name, seq, bytes.len() as u64)
    }

    async fn export_image(
        &self,
        reference: &str,
        sink: &mut tokio::fs::File,
    ) -> Result<u64, RuntimeError> {
        self.record(format!("export_image {reference}"));
        self.enter("export_image", reference).await?;
        if !self.world().images.contains(reference) {
            return Err(podman_error(Op::ImageExport, reference, "image not known"));
        }
        let bytes = format!("IMAGE {reference}\n").into_bytes();
        sink.write_all(&bytes).await.unwrap();
        Ok(bytes.len() as u64)
    }

    async fn load_image(&self, path: &Path) -> Result<(), RuntimeError> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let reference = text
            .strip_prefix("IMAGE ")
            .map(str::trim)
            .ok_or_else(|| podman_error(Op::ImageLoad, "?", "not an image archive"))?;
        self.record(format!("load_image {reference}"));
        self.enter("load_image", reference).await?;
        self.world().images.insert(reference.to_string());
        Ok(())
    }

    async fn run_container(&self, spec: &CreateSpec) -> Result<(), RuntimeError> {
        self.record(format!("run_container {}", spec.name));
        self.enter("run_container", &spec.name).await?;
        let netns = match &spec.netns {
            Netns::Path(p) => p.file_name().unwrap_or_default().to_string_lossy().into(),
            other => panic!("the fake runs services in a namespace path, not {other:?}"),
        };
        let mut w = self.world();
        if !w.images.contains(&spec.image) {
            return Err(podman_error(Op::Create, &spec.name, "image not known"));
        }
        w.containers
            .insert(spec.name.clone(), running(netns, &spec.image, 0));
        w.volumes
            .extend(spec.volumes.iter().map(|v| v.name.clone()));
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<bool, RuntimeError> {
        self.record(format!("remove {name}"));
        Ok(self.world().containers.remove(name).is_some())
    }

    async fn volumes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.world().volumes.iter().cloned().collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<bool, RuntimeError> {
        self.record(format!("remove_volume {name}"));
        Ok(self.world().volumes.remove(name))
    }

    fn netns_path(&self, netns: &str) -> PathBuf {
        self.root.join("netns").join(netns)
    }

    fn link_exists(&self, ifname: &str) -> bool {
        self.world().links.contains(ifname)
    }

    async fn read_identity(&self, netns: &Path) -> Result<NetIdentity, OverlayError> {
        let name = netns.file_name().unwrap_or_default().to_string_lossy();
        self.world()
            .netns
            .get(name.as_ref())
            .cloned()
            .ok_or_else(|| no_such("no such namespace", netns))
    }

    async fn replace_neighbour(&self, netns: &Path, n: Neighbour) -> Result<(), OverlayError> {
        self.record(format!("replace_neighbour {} {}", netns.display(), n.ip));
        Ok(())
    }

    async fn add_endpoint(&self, spec: &EndpointSpec) -> Result<u32, OverlayError> {
        self.record(format!("add_endpoint {}", spec.netns));
        let id = NetIdentity {
            ip: spec.ip,
            prefix_len: spec.prefix_len,
            mac: spec.mac.0,
            clients: spec
                .neighbours
                .iter()
                .map(|n| Peer {
                    ip: n.ip,
                    mac: n.mac.0,
                })
                .collect(),
        };
        self.create_netns(&spec.netns, id);
        let mut w = self.world();
        w.links.insert(spec.host_ifname.clone());
        Ok(w.port(&spec.host_ifname))
    }

    async fn remove_endpoint(&self, netns: &str, host_if: &str) -> Result<(), OverlayError> {
        self.record(format!("remove_endpoint {netns}"));
        let _ = std::fs::remove_file(self.netns_path(netns));
        let mut w = self.world();
        w.netns.remove(netns);
        w.links.remove(host_if);
        w.ports.remove(host_if);
        Ok(())
    }

    async fn ensure_port(&self, name: &str) -> Result<u32, OverlayError> {
        self.record(format!("ensure_port {name}"));
        let mut w = self.world();
        match w.links.contains(name) {
            true => Ok(w.port(name)),
            false => Err(OverlayError::Invalid(format!("no interface {name}"))),
        }
    }

    async fn remove_port(&self, name: &str) -> Result<(), OverlayError> {
        self.record(format!("remove_port {name}"));
        self.world().ports.remove(name);
        Ok(())
    }

    async fn ofport(&self, name: &str) -> Result<u32, OverlayError> {
        self.world()
            .ports
            .get(name)
            .copied()
            .ok_or_else(|| OverlayError::Invalid(format!("no port {name} on the bridge")))
    }

    async fn steer(&self, svc: ServiceAddr, ofport: u32) -> Result<(), OverlayError> {
        self.record(format!("steer {} {ofport}", svc.ip));
        self.world().flows.insert(svc.ip, ofport);
        Ok(())
    }

    async fn unsteer(&self, ip: Ipv4Addr) -> Result<(), OverlayError> {
        self.record(format!("unsteer {ip}"));
        self.world().flows.remove(&ip);
        Ok(())
    }

    async fn nudge_clients(&self, netns: &Path, seqs: Vec<u32>) -> Result<usize, OverlayError> {
        self.record(format!("nudge {} {seqs:?}", netns.display()));
        self.world().nudged.push(seqs);
        Ok(1)
    }
}

impl FakeHost {
    /// podman's restore: the container runs again, in the namespace its name implies (which
    /// must exist, as podman needs the checkpoint's netns path).
    fn restored(
        &self,
        name: &str,
        inq_seq: u32,
        bytes: u64,
    ) -> Result<RestoreReport, RuntimeError> {
        let netns = netns_name(name);
        if !self.netns_path(&netns).exists() {
            return Err(podman_error(Op::Restore, name, "netns path does not exist"));
        }
        let mut w = self.world();
        if w.containers.contains_key(name) {
            return Err(podman_error(
                Op::Restore,
                name,
                "the container name is in use",
            ));
        }
        w.containers.insert(
            name.to_string(),
            FakeContainer {
                running: true,
                checkpointed: false,
                restored: true,
                netns,
                image: String::new(),
                inq_seq,
            },
        );
        Ok(RestoreReport {
            id: format!("id-{name}"),
            name: Some(name.to_string()),
            archive_bytes: bytes,
            elapsed: Duration::ZERO,
            runtime_duration: None,
            criu: Some(CriuRestoreStats {
                restore_time_us: 90_000,
                ..CriuRestoreStats::default()
            }),
        })
    }
}

/// How a recorded restore says it kept the host's volumes.
fn volumes_kept(opts: &RestoreOptions) -> &'static str {
    match opts.ignore_volumes {
        true => " keeping volumes",
        false => "",
    }
}
