//! Everything the COAT steps do to the host, behind one narrow trait: the container runtime
//! (podman, runc, CRIU) and the network plumbing (namespaces, veths, OvS ports and flows).
//! The steps' rules — idempotency, ordering, what a repeat answers — live in the executor and
//! are unit-tested against a fake of this trait (`fake.rs`); [`PodmanHost`] is the real one.

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use mose_overlay::netns::{replace_neighbour, EndpointSpec, Neighbour};
use mose_overlay::ovsdb::{PortKind, PortSpec};
use mose_overlay::{HostOverlay, OverlayError, ServiceAddr};

use super::naming::SERVICE_IFNAME;
use super::netinfo::{self, NetIdentity};
use super::resend;
use crate::profiling::{anon_bytes_of_cgroup, memory_cgroup_of};
use crate::runtime::{
    CheckpointOptions, CheckpointReport, ContainerInfo, CreateSpec, HostLimits, Podman,
    PreDumpReport, RestoreOptions, RestoreReport, RuntimeError,
};

type RtResult<T> = Result<T, RuntimeError>;

/// How long exporting or loading a container image may take (images of tens of MB: seconds).
const IMAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);
type NetResult<T> = Result<T, OverlayError>;

/// The host operations of the COAT steps.
pub trait Host: Send + Sync + 'static {
    // --- container runtime

    /// The container `name`; `None` when there is none.
    fn inspect(&self, name: &str) -> impl Future<Output = RtResult<Option<ContainerInfo>>> + Send;
    /// Whether the container image `reference` is present.
    fn image_exists(&self, reference: &str) -> impl Future<Output = RtResult<bool>> + Send;
    /// Anonymous memory of the memory cgroup of process `pid`.
    fn anon_bytes(&self, pid: i64) -> io::Result<u64>;
    /// Checkpoint `name` with its established TCP connections, its archive into `sink`.
    fn checkpoint(
        &self,
        name: &str,
        opts: &CheckpointOptions,
        sink: &mut tokio::fs::File,
    ) -> impl Future<Output = RtResult<CheckpointReport>> + Send;
    /// One pre-copy round `round` of the running `name` on top of round `parent`.
    fn pre_dump(
        &self,
        name: &str,
        round: &str,
        parent: Option<&str>,
    ) -> impl Future<Output = RtResult<PreDumpReport>> + Send;
    /// Removes `name`'s pre-copy chain and releases its soft-dirty bits.
    fn drop_pre_dumps(&self, name: &str) -> impl Future<Output = RtResult<()>> + Send;
    /// Restores the container the archive `archive` holds.
    fn restore(
        &self,
        opts: &RestoreOptions,
        archive: tokio::fs::File,
    ) -> impl Future<Output = RtResult<RestoreReport>> + Send;
    /// Restores the final `--with-previous` archive on top of the joined rounds `previous`.
    fn restore_with_previous(
        &self,
        opts: &RestoreOptions,
        previous: &Path,
        archive: &Path,
    ) -> impl Future<Output = RtResult<RestoreReport>> + Send;
    /// Exports the image `reference` as a docker-archive into `sink`; its size.
    fn export_image(
        &self,
        reference: &str,
        sink: &mut tokio::fs::File,
    ) -> impl Future<Output = RtResult<u64>> + Send;
    /// Loads the image archive at `path`.
    fn load_image(&self, path: &Path) -> impl Future<Output = RtResult<()>> + Send;
    /// Creates the container of `spec` (with the host's ulimits) and starts it.
    fn run_container(&self, spec: &CreateSpec) -> impl Future<Output = RtResult<()>> + Send;
    /// Removes the container `name` (stopping it); `false` when there was none.
    fn remove(&self, name: &str) -> impl Future<Output = RtResult<bool>> + Send;
    /// The names of every volume on the host.
    fn volumes(&self) -> impl Future<Output = RtResult<Vec<String>>> + Send;
    /// Removes the volume `name`; `false` when there was none.
    fn remove_volume(&self, name: &str) -> impl Future<Output = RtResult<bool>> + Send;

    // --- network

    /// The path of the namespace `netns` (it exists when the file does).
    fn netns_path(&self, netns: &str) -> PathBuf;
    /// Whether the host has a network interface `ifname`.
    fn link_exists(&self, ifname: &str) -> bool;
    /// The identity of the service interface in the namespace at `netns`.
    fn read_identity(&self, netns: &Path) -> impl Future<Output = NetResult<NetIdentity>> + Send;
    /// Sets the neighbour entry `n` on the service interface in the namespace at `netns`.
    fn replace_neighbour(
        &self,
        netns: &Path,
        n: Neighbour,
    ) -> impl Future<Output = NetResult<()>> + Send;
    /// Creates the namespace and veth of `spec`, its host end on the bridge; its OpenFlow port.
    fn add_endpoint(&self, spec: &EndpointSpec) -> impl Future<Output = NetResult<u32>> + Send;
    /// Removes the namespace `netns` and the veth `host_if` (absent is fine).
    fn remove_endpoint(
        &self,
        netns: &str,
        host_if: &str,
    ) -> impl Future<Output = NetResult<()>> + Send;
    /// Attaches the existing interface `name` to the bridge; its OpenFlow port.
    fn ensure_port(&self, name: &str) -> impl Future<Output = NetResult<u32>> + Send;
    /// Detaches `name` from the bridge (absent is fine).
    fn remove_port(&self, name: &str) -> impl Future<Output = NetResult<()>> + Send;
    /// The OpenFlow number of the bridge's port `name`.
    fn ofport(&self, name: &str) -> impl Future<Output = NetResult<u32>> + Send;
    /// Steers the service's IP, ARP and MAC to `ofport` (replacing its flows atomically).
    fn steer(&self, svc: ServiceAddr, ofport: u32) -> impl Future<Output = NetResult<()>> + Send;
    /// Removes the flows of `ip` (absent is fine).
    fn unsteer(&self, ip: Ipv4Addr) -> impl Future<Output = NetResult<()>> + Send;
    /// Nudges the clients of the established connections in the namespace at `netns` to
    /// resend (`resend.rs`); the connections nudged.
    fn nudge_clients(
        &self,
        netns: &Path,
        seqs: Vec<u32>,
    ) -> impl Future<Output = NetResult<usize>> + Send;
}

/// The real host: podman's API (and CLI) and this host's OvS bridge.
pub struct PodmanHost {
    podman: Podman,
    overlay: HostOverlay,
}

impl PodmanHost {
    /// The host reached through `podman` and `overlay`.
    pub fn new(podman: Podman, overlay: HostOverlay) -> Self {
        PodmanHost { podman, overlay }
    }
}

impl Host for PodmanHost {
    async fn inspect(&self, name: &str) -> RtResult<Option<ContainerInfo>> {
        match self.podman.inspect(name).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn image_exists(&self, reference: &str) -> RtResult<bool> {
        self.podman.image_exists(reference).await
    }

    fn anon_bytes(&self, pid: i64) -> io::Result<u64> {
        anon_bytes_of_cgroup(&memory_cgroup_of(pid)?)
    }

    async fn checkpoint(
        &self,
        name: &str,
        opts: &CheckpointOptions,
        sink: &mut tokio::fs::File,
    ) -> RtResult<CheckpointReport> {
        self.podman.checkpoint(name, opts, sink).await
    }

    async fn pre_dump(
        &self,
        name: &str,
        round: &str,
        parent: Option<&str>,
    ) -> RtResult<PreDumpReport> {
        let timeout = CheckpointOptions::default().timeout;
        self.podman.pre_dump(name, round, parent, timeout).await
    }

    async fn drop_pre_dumps(&self, name: &str) -> RtResult<()> {
        self.podman.drop_pre_dumps(name).await
    }

    async fn restore(
        &self,
        opts: &RestoreOptions,
        archive: tokio::fs::File,
    ) -> RtResult<RestoreReport> {
        self.podman.restore(opts, archive).await
    }

    async fn restore_with_previous(
        &self,
        opts: &RestoreOptions,
        previous: &Path,
        archive: &Path,
    ) -> RtResult<RestoreReport> {
        self.podman
            .restore_with_previous(opts, previous, archive)
            .await
    }

    async fn export_image(&self, reference: &str, sink: &mut tokio::fs::File) -> RtResult<u64> {
        self.podman
            .image_export(reference, sink, IMAGE_DEADLINE)
            .await
    }

    async fn load_image(&self, path: &Path) -> RtResult<()> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| RuntimeError::ArchiveIo {
                op: crate::runtime::Op::ImageLoad,
                target: path.display().to_string(),
                bytes: 0,
                source,
            })?;
        self.podman.image_load(file, IMAGE_DEADLINE).await.map(drop)
    }

    async fn run_container(&self, spec: &CreateSpec) -> RtResult<()> {
        let mut spec = spec.clone();
        // Restores must find the same limits the container started with (docs/coat.md).
        spec.ulimits = HostLimits::detect()
            .map(|l| l.container_ulimits())
            .map_err(|e| RuntimeError::Invalid {
                op: crate::runtime::Op::Create,
                why: format!("cannot read this process's limits: {e}"),
            })?;
        self.podman.create(&spec).await?;
        self.podman.start(&spec.name).await
    }

    async fn remove(&self, name: &str) -> RtResult<bool> {
        self.podman.remove(name).await
    }

    async fn volumes(&self) -> RtResult<Vec<String>> {
        let all = self.podman.volumes().await?;
        Ok(all.into_iter().map(|v| v.name).collect())
    }

    async fn remove_volume(&self, name: &str) -> RtResult<bool> {
        self.podman.remove_volume(name).await
    }

    fn netns_path(&self, netns: &str) -> PathBuf {
        self.overlay.endpoint_path(netns)
    }

    fn link_exists(&self, ifname: &str) -> bool {
        Path::new("/sys/class/net").join(ifname).exists()
    }

    async fn read_identity(&self, netns: &Path) -> NetResult<NetIdentity> {
        netinfo::read(netns, SERVICE_IFNAME).await
    }

    async fn replace_neighbour(&self, netns: &Path, n: Neighbour) -> NetResult<()> {
        replace_neighbour(netns, SERVICE_IFNAME, n).await
    }

    async fn add_endpoint(&self, spec: &EndpointSpec) -> NetResult<u32> {
        Ok(self.overlay.add_endpoint(spec).await?.ofport)
    }

    async fn remove_endpoint(&self, netns: &str, host_if: &str) -> NetResult<()> {
        self.overlay.remove_endpoint(netns, host_if).await
    }

    async fn ensure_port(&self, name: &str) -> NetResult<u32> {
        self.overlay
            .ensure_port(&PortSpec::new(name, PortKind::System))
            .await
    }

    async fn remove_port(&self, name: &str) -> NetResult<()> {
        self.overlay.remove_port(name).await
    }

    async fn ofport(&self, name: &str) -> NetResult<u32> {
        self.overlay.ofport(name).await
    }

    async fn steer(&self, svc: ServiceAddr, ofport: u32) -> NetResult<()> {
        self.overlay.steer(svc, ofport).await
    }

    async fn unsteer(&self, ip: Ipv4Addr) -> NetResult<()> {
        self.overlay.unsteer(ip).await
    }

    async fn nudge_clients(&self, netns: &Path, seqs: Vec<u32>) -> NetResult<usize> {
        mose_overlay::netns::in_netns(netns, move || resend::prompt_clients(&seqs)).await
    }
}
