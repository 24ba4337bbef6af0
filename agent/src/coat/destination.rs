//! The destination's steps: prepare, fetch, restore, resend, abort. Everything that does not
//! need the frozen service happens in prepare, before the freeze (docs/coat.md, "Why this
//! order"); restore fetches only what a pre-copy fetch did not bring.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mose_overlay::netns::{EndpointSpec, MacAddr, Neighbour};
use mose_protocol::blob::fetch_to_file;
use mose_protocol::messages::{CriuStats, Phase, ServiceSpec};
use mose_protocol::steps::{Done, Fetched, ImageId, Prepared, Resent, Restored};
use tracing::{info, warn};

use super::error::{blob, overlay, runtime, CoatError, Result};
use super::host::Host;
use super::naming::{check_service, host_ifname, netns_name, task_dir, SERVICE_IFNAME};
use super::state::{self, ServiceRole, ServiceState};
use super::{create_task_dir, restore_stats, Inner, Volumes};

impl<H: Host> Inner<H> {
    /// Image present, namespace with the service's identity, explicit flows to it. Returns the
    /// OpenFlow port of the service's veth.
    #[tracing::instrument(name = "coat.prepare", skip(self, spec), fields(service = %spec.name))]
    pub(super) async fn prepare(&self, task: &str, spec: &ServiceSpec) -> Result<Prepared> {
        check_service(&spec.name)?;
        let t0 = Instant::now();
        // A missing image is not a failure: the caller moves it before the freeze.
        let image_present = self.has_image(spec).await?;
        // Podman restores a volume only where none of its name exists. Where the service does
        // not run, one of its volumes is a leftover of an earlier abort or release (the service's
        // data is at the source): it goes now, not as a failed restore inside the freeze.
        if self.container(&spec.name).await?.is_none() {
            for left in self.remove_volumes(&spec.name, "prepare").await? {
                warn!(volume = %left, "removed a stale volume of the service");
            }
        }
        let ofport = self
            .in_phase(task, Phase::Netns, self.ensure_endpoint(spec))
            .await?;
        let net = &spec.network;
        self.steer_to(net.ip, net.mac, &host_ifname(&spec.name))
            .await?;
        // The task's fetches name no service: they find it by this state. A host that is the
        // source of this task (a prepare where the service runs) keeps its source state.
        if self.load_state(task, &spec.name)?.is_none() {
            self.save_state(&ServiceState::new(
                task,
                &spec.name,
                ServiceRole::Destination,
            ))?;
        }
        info!(
            ms = mose_protocol::units::millis(t0.elapsed()),
            ofport, image_present, "prepared"
        );
        Ok(Prepared { image_present })
    }

    /// Whether the image of `spec` is on this host: by its ID when the spec has one (the
    /// same name may name another image here), else by its reference.
    async fn has_image(&self, spec: &ServiceSpec) -> Result<bool> {
        let wanted = spec.image_id.as_deref().unwrap_or(&spec.image);
        self.host
            .image_exists(wanted)
            .await
            .map_err(runtime(format!(
                "check that image {} ({wanted}) of {} is here",
                spec.image, spec.name
            )))
    }

    /// Fails with `wrong_state` unless the image of `spec` is on this host.
    pub(super) async fn require_image(&self, spec: &ServiceSpec) -> Result<()> {
        match self.has_image(spec).await? {
            true => Ok(()),
            false => Err(CoatError::State(format!(
                "image {} of service {} is not present on this host; load it first \
                 (`podman load`)",
                spec.image, spec.name
            ))),
        }
    }

    /// The service's namespace and veth, created unless they exist with the right identity
    /// (then only the clients' neighbour entries are refreshed): a repeated Prepare, or one on the host the
    /// service runs on, must not cut a live service's interface.
    pub(super) async fn ensure_endpoint(&self, spec: &ServiceSpec) -> Result<u32> {
        let (name, host_if) = (netns_name(&spec.name), host_ifname(&spec.name));
        let path = self.host.netns_path(&name);
        let net = &spec.network;
        let clients: Vec<Neighbour> = net
            .clients
            .iter()
            .map(|c| Neighbour {
                ip: c.ip,
                mac: MacAddr(c.mac),
            })
            .collect();
        if path.exists() && self.host.link_exists(&host_if) {
            match self.host.read_identity(&path).await {
                Ok(id)
                    if id.ip == net.ip && id.prefix_len == net.prefix_len && id.mac == net.mac =>
                {
                    for &n in &clients {
                        self.host
                            .replace_neighbour(&path, n)
                            .await
                            .map_err(overlay(format!(
                                "carry the neighbour entry of client {} into {}",
                                n.ip,
                                path.display()
                            )))?;
                    }
                    return self
                        .host
                        .ensure_port(&host_if)
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
        endpoint.neighbours = clients;
        self.host
            .add_endpoint(&endpoint)
            .await
            .map_err(overlay(format!(
                "create the namespace {name} of {}",
                spec.name
            )))
    }

    pub(super) async fn running_here(&self, service: &str) -> Result<bool> {
        Ok(self
            .container(service)
            .await?
            .is_some_and(|i| i.state.running))
    }

    /// The service a Fetch of `task` is for: the one its Prepare recorded here.
    pub(super) fn fetch_service(&self, task: &str) -> Result<String> {
        let states = state::states_of_task(&task_dir(self.work_dir(), task))?;
        let mut prepared = states
            .into_iter()
            .filter(|s| s.role == ServiceRole::Destination);
        match (prepared.next(), prepared.next()) {
            (Some(s), None) => Ok(s.service),
            (None, _) => Err(CoatError::State(format!(
                "no service of task {task} was prepared here: a fetch needs its prepare first"
            ))),
            (Some(a), Some(b)) => Err(CoatError::State(format!(
                "task {task} prepared both {} and {} here: a task migrates one service",
                a.service, b.service
            ))),
        }
    }

    /// Pre-copy: fetch `image` of `task` now, while the service still runs at the source; the
    /// Restore then finds it on disk. An image already fetched is not fetched again.
    #[tracing::instrument(name = "coat.fetch", skip(self))]
    pub(super) async fn fetch(&self, task: &str, from: &str, image: ImageId) -> Result<Fetched> {
        let service = self.fetch_service(task)?;
        let mut state = self.state_for(task, &service, ServiceRole::Destination)?;
        let path = self.image_path(task, image);
        if let Some(done) = fetched(&state, image, &path) {
            info!("already fetched");
            return Ok(done);
        }
        create_task_dir(&path).await?;
        let t0 = Instant::now();
        let image_bytes = self.fetch_image(task, image, &path, from).await?;
        info!(
            %image,
            image_bytes,
            ms = mose_protocol::units::millis(t0.elapsed()),
            "image fetched"
        );
        if image == ImageId::Container {
            // Loaded now, before the freeze; the archive is not needed after that.
            self.host
                .load_image(&path)
                .await
                .map_err(runtime(format!("load the image of {service}")))?;
            let _ = tokio::fs::remove_file(&path).await;
        }
        let done = Fetched { image, image_bytes };
        state.record_fetched(done);
        self.save_state(&state)?;
        Ok(done)
    }

    /// Fetch `image` of `task` from agent `from` into `path`; returns its size.
    async fn fetch_image(
        &self,
        task: &str,
        image: ImageId,
        path: &Path,
        from: &str,
    ) -> Result<u64> {
        let key = self.keys.image(from, &self.settings.agent_id, task, image);
        let manifest = fetch_to_file(&self.session, &key, path, &self.settings.fetch, &mut |_| {})
            .await
            .map_err(blob(format!("fetch the {image} {key} from agent {from}")))?;
        Ok(manifest.size)
    }

    #[tracing::instrument(name = "coat.restore", skip(self, spec), fields(service = %spec.name))]
    pub(super) async fn restore(
        &self,
        task: &str,
        spec: &ServiceSpec,
        from: &str,
        rounds: u32,
    ) -> Result<Restored> {
        let service = spec.name.as_str();
        check_service(service)?;
        let mut state = self.state_for(task, service, ServiceRole::Destination)?;
        match self.container(service).await? {
            Some(info) if info.state.running => {
                let done = match (state.restored.clone(), info.state.restored) {
                    (Some(done), _) => done,
                    // Restored by an attempt whose end this agent did not record (it stopped
                    // between podman's answer and writing the state).
                    (None, true) => {
                        let done = Restored {
                            fetched_bytes: 0,
                            stats: CriuStats::default(),
                        };
                        state.restored = Some(done.clone());
                        self.save_state(&state)?;
                        done
                    }
                    (None, false) => {
                        return Err(CoatError::State(format!(
                            "service {service} already runs here and was not restored by a \
                             migration: refusing to replace it"
                        )))
                    }
                };
                info!("already restored for this task: answering from the state");
                return Ok(done);
            }
            // Left by a failed attempt; the archive recreates it.
            Some(_) => {
                self.host
                    .remove(service)
                    .await
                    .map_err(runtime(format!("remove the stale {service}")))?;
            }
            None => {}
        }
        if !self.host.netns_path(&netns_name(service)).exists() {
            warn!("restore without a prepared namespace: preparing now (inside the downtime)");
            if !self.prepare(task, spec).await?.image_present {
                return Err(CoatError::State(format!(
                    "image {} of {service} is not on this host: it must be moved before the \
                     restore (export-image at the source, fetch of the container image here)",
                    spec.image
                )));
            }
        }

        let final_path = self.image_path(task, ImageId::Final);
        create_task_dir(&final_path).await?;
        let images: Vec<(ImageId, PathBuf)> = ImageId::of_migration(rounds)
            .map(|image| (image, self.image_path(task, image)))
            .collect();
        let t0 = Instant::now();
        // What a Fetch brought during pre-copy is complete on disk (a fetch names its file
        // only after the digest matched); everything else is fetched now, together.
        let fetch = async {
            let missing = images
                .iter()
                .filter(|(image, path)| fetched(&state, *image, path).is_none())
                .map(
                    |(image, path)| async move { self.fetch_image(task, *image, path, from).await },
                );
            let bytes = futures::future::try_join_all(missing).await?;
            Ok(bytes.iter().sum::<u64>())
        };
        let fetched_bytes = self.in_phase(task, Phase::Transfer, fetch).await?;
        let fetch_ms = mose_protocol::units::millis(t0.elapsed());
        let rounds: Vec<(String, PathBuf)> = images
            .iter()
            .filter(|(image, _)| *image != ImageId::Final)
            .map(|(image, path)| (image.key_chunk(), path.clone()))
            .collect();
        let result = self
            .restore_archive(
                service,
                &final_path,
                &rounds,
                Volumes::FromArchive,
                format!("restore {service} from the checkpoint of task {task}"),
            )
            .await;
        // The archives are not needed any more either way: a retry fetches them again.
        for (_, path) in &images {
            let _ = tokio::fs::remove_file(path).await;
        }
        state.fetched.clear();
        let (report, seqs) = match result {
            Ok(r) => r,
            Err(e) => {
                self.save_state(&state)?;
                return Err(e);
            }
        };
        info!(
            fetched_bytes,
            fetch_ms,
            restore_ms = mose_protocol::units::millis(report.elapsed),
            "restored"
        );
        let done = Restored {
            fetched_bytes,
            stats: restore_stats(report.criu),
        };
        state.restored = Some(done.clone());
        state.client_seqs = seqs;
        self.save_state(&state)?;
        Ok(done)
    }

    /// After the flow switch: nudge the restored service's TCP clients to resend what the
    /// freeze swallowed now (RFC 6069 backoff revert, see `resend.rs`). Best effort by nature:
    /// a client that needs no nudge ignores it. The sockets are the ones the task's restore
    /// (or, after a rollback, the source's resume) recorded.
    #[tracing::instrument(name = "coat.resend", skip(self))]
    pub(super) async fn resend(&self, task: &str, service: &str) -> Result<Resent> {
        check_service(service)?;
        let seqs = self
            .load_state(task, service)?
            .map(|s| s.client_seqs)
            .unwrap_or_default();
        if seqs.is_empty() {
            info!("no TCP connection in the checkpoint: nobody to nudge");
            return Ok(Resent { nudges: 0 });
        }
        let path = self.host.netns_path(&netns_name(service));
        let nudged = self
            .host
            .nudge_clients(&path, seqs)
            .await
            .map_err(overlay(format!("nudge the clients of {service}")))?;
        info!(connections = nudged, "clients nudged to resend");
        Ok(Resent {
            nudges: u32::try_from(nudged).unwrap_or(u32::MAX),
        })
    }

    /// Rollback: remove whatever a prepare or restore left.
    #[tracing::instrument(name = "coat.abort", skip(self))]
    pub(super) async fn abort(&self, task: &str, service: &str) -> Result<Done> {
        self.remove_service(task, service, None, "abort").await
    }
}

/// The record of `image` in `state`, if its file is still on disk.
/// A fetch the state records, whose result is still here: a round's archive on disk, or the
/// container image (loaded, its archive gone).
fn fetched(state: &ServiceState, image: ImageId, path: &Path) -> Option<Fetched> {
    state
        .fetched
        .iter()
        .find(|f| f.image == image)
        .filter(|_| image == ImageId::Container || path.is_file())
        .copied()
}
