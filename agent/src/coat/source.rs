//! The source's steps: describe, pre-dump, checkpoint, resume, release. The source copy is
//! the truth until the destination confirmed (docs/coat.md, "Failure semantics"): nothing here
//! deletes it but release, and resume can always bring it back from what the state lists.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mose_protocol::messages::{CriuStats, ServiceNetwork, ServiceSpec};
use mose_protocol::steps::{Described, Done, Dumped, Exported, ImageId};
use tracing::info;

use super::error::{io, overlay, runtime, CoatError, Result};
use super::host::Host;
use super::naming::{check_service, netns_name};
use super::state::{ServiceRole, ServiceState};
use super::{create_task_dir, dump_stats, Inner, Volumes};
use crate::runtime::{CheckpointOptions, DumpKind};

impl<H: Host> Inner<H> {
    #[tracing::instrument(name = "coat.describe", skip(self))]
    pub(super) async fn describe(&self, service: &str) -> Result<Described> {
        check_service(service)?;
        let info = self.inspect(service).await?;
        let expected = self.host.netns_path(&netns_name(service));
        if info.netns_path().as_deref() != Some(expected.as_path()) {
            return Err(CoatError::State(format!(
                "service {service} uses network '{}', but COAT needs it in the namespace {} so the \
                 destination can restore it into the same path",
                info.host_config.network_mode,
                expected.display()
            )));
        }
        let net = self
            .host
            .read_identity(&expected)
            .await
            .map_err(overlay(format!(
                "read the address of {service} in {}",
                expected.display()
            )))?;
        let state_bytes = match info.state.running {
            true => self.host.anon_bytes(info.state.pid).map_err(io(
                format!("read the memory cgroup of {service}"),
                format!("/proc/{}", info.state.pid),
            ))?,
            false => 0,
        };
        Ok(Described {
            spec: ServiceSpec {
                name: service.to_string(),
                image: info.image_reference().to_string(),
                image_id: (!info.image.is_empty()).then(|| info.image.clone()),
                network: ServiceNetwork {
                    ip: net.ip,
                    prefix_len: net.prefix_len,
                    mac: net.mac,
                    clients: net.clients,
                },
            },
            state_bytes,
        })
    }

    /// The state of a dump of `task`: the source's, and not rolled back.
    fn dump_state(&self, task: &str, service: &str) -> Result<ServiceState> {
        let state = self.state_for(task, service, ServiceRole::Source)?;
        if state.resumed {
            return Err(CoatError::State(format!(
                "task {task} was rolled back here (service {service} resumed): no dump of it may follow"
            )));
        }
        Ok(state)
    }

    /// Pre-copy round `round`: `runc` pre-dumps the running service on top of round
    /// `round - 1`, and the round's images are archived for the destination to fetch.
    #[tracing::instrument(name = "coat.pre_dump", skip(self))]
    pub(super) async fn pre_dump(
        &self,
        task: &str,
        service: &str,
        round: u32,
        to: &str,
    ) -> Result<Dumped> {
        check_service(service)?;
        let mut state = self.dump_state(task, service)?;
        let image = ImageId::Round(round);
        if let Some(done) = state.rounds.iter().find(|d| d.image == image).cloned() {
            info!("round already dumped for this task: answering from the state");
            self.serve(task, service, image, to).await?;
            return Ok(done);
        }
        if state.final_dump.is_some() {
            return Err(CoatError::State(format!(
                "the final dump of {service} for task {task} is taken: no pre-copy round after it"
            )));
        }
        let next = u32::try_from(state.rounds.len()).unwrap_or(u32::MAX);
        if round != next {
            return Err(CoatError::State(format!(
                "pre-copy round {round} of {service} does not follow: task {task} has {next} \
                 round(s) here, so the next is round {next}"
            )));
        }
        let info = self.inspect(service).await?;
        if !info.state.running {
            return Err(CoatError::State(format!(
                "service {service} is {}: a pre-dump needs it running",
                info.state.status
            )));
        }
        let path = self.image_path(task, image);
        create_task_dir(&path).await?;
        let parent = round.checked_sub(1).map(|r| ImageId::Round(r).key_chunk());
        let report = self
            .host
            .pre_dump(service, &image.key_chunk(), parent.as_deref())
            .await
            .map_err(runtime(format!(
                "pre-dump {service} (pre-copy needs kernel soft-dirty tracking)"
            )))?;
        let partial = path.with_extension("tar.partial");
        let image_bytes = tokio::task::spawn_blocking({
            let (dir, partial, name) = (report.dir.clone(), partial.clone(), image.key_chunk());
            move || crate::runtime::precopy::write_round_archive(&dir, &name, &partial)
        })
        .await
        .map_err(|e| io("archive the pre-copy round", &partial)(std::io::Error::other(e)))?
        .map_err(io("archive the pre-copy round", &partial))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(io("name the finished round archive", &path))?;
        info!(
            image_bytes,
            runc_ms = mose_protocol::units::millis(report.elapsed),
            pages = report.criu.map(|c| c.pages_written),
            "pre-copy round archived"
        );
        let dumped = Dumped {
            image,
            image_bytes,
            stats: dump_stats(report.criu),
        };
        state.rounds.push(dumped.clone());
        self.save_state(&state)?;
        self.serve(task, service, image, to).await?;
        Ok(dumped)
    }

    /// The final dump, built on exactly the `rounds` pre-copy rounds the state holds.
    #[tracing::instrument(name = "coat.checkpoint", skip(self))]
    pub(super) async fn checkpoint(
        &self,
        task: &str,
        service: &str,
        rounds: u32,
        to: &str,
    ) -> Result<Dumped> {
        check_service(service)?;
        let mut state = self.dump_state(task, service)?;
        let held = u32::try_from(state.rounds.len()).unwrap_or(u32::MAX);
        if held != rounds {
            return Err(CoatError::State(format!(
                "the checkpoint of {service} asks for pre-copy rounds 0..{rounds}, but task {task} \
                 holds {held} round(s) here"
            )));
        }
        if let Some(done) = state.final_dump.clone() {
            info!("already checkpointed for this task: answering from the state");
            self.serve(task, service, ImageId::Final, to).await?;
            return Ok(done);
        }
        let path = self.image_path(task, ImageId::Final);
        let info = self.inspect(service).await?;
        let dumped = if info.state.running {
            let opts = CheckpointOptions {
                kind: match rounds {
                    0 => DumpKind::Full,
                    _ => DumpKind::WithPrevious,
                },
                ..CheckpointOptions::default()
            };
            self.dump_to(service, &path, &opts).await?
        } else if info.state.checkpointed && path.is_file() {
            // Dumped, but the agent stopped before it recorded so: the archive is complete,
            // since it only gets its final name once podman finished writing it.
            info!("checkpointed before the agent stopped: adopting the archive");
            Dumped {
                image: ImageId::Final,
                image_bytes: file_len(&path)?,
                stats: CriuStats::default(),
            }
        } else {
            return Err(CoatError::State(format!(
                "service {service} is {}, not running, and task {task} has no final dump here: \
                 nothing to checkpoint",
                info.state.status
            )));
        };
        state.final_dump = Some(dumped.clone());
        self.save_state(&state)?;
        self.serve(task, service, ImageId::Final, to).await?;
        Ok(dumped)
    }

    /// For a destination that lacks the image: the running service's image exported as a
    /// docker-archive into the task's directory (written as `.partial`, renamed when complete,
    /// so a named archive is whole) and served as [`ImageId::Container`]. A repeat, or a
    /// restarted agent, serves the archive it already has.
    #[tracing::instrument(name = "coat.export_image", skip(self))]
    pub(super) async fn export_image(
        &self,
        task: &str,
        service: &str,
        to: &str,
    ) -> Result<Exported> {
        check_service(service)?;
        let path = self.image_path(task, ImageId::Container);
        if !path.is_file() {
            let info = self.inspect(service).await?;
            let image = info.image_reference().to_string();
            create_task_dir(&path).await?;
            let partial = path.with_extension("tar.partial");
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(io("create the image archive", &partial))?;
            let t0 = Instant::now();
            if let Err(e) = self.host.export_image(&image, &mut file).await {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(runtime(format!("export the image {image} of {service}"))(e));
            }
            file.sync_all()
                .await
                .map_err(io("flush the image archive", &partial))?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(io("name the finished image archive", &path))?;
            info!(
                image,
                ms = mose_protocol::units::millis(t0.elapsed()),
                "image exported"
            );
        }
        let image_bytes = file_len(&path)?;
        self.serve(task, service, ImageId::Container, to).await?;
        Ok(Exported { image_bytes })
    }

    /// Checkpoint into `path`, written as `path.partial` and renamed when complete.
    async fn dump_to(
        &self,
        service: &str,
        path: &Path,
        opts: &CheckpointOptions,
    ) -> Result<Dumped> {
        create_task_dir(path).await?;
        let partial = path.with_extension("tar.partial");
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(io("create the checkpoint archive", &partial))?;
        let report = match self.host.checkpoint(service, opts, &mut file).await {
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
            podman_ms = mose_protocol::units::millis(report.podman_time),
            frozen_us = report.criu.map(|c| c.frozen_time_us),
            "checkpointed"
        );
        Ok(Dumped {
            image: ImageId::Final,
            image_bytes: report.archive_bytes,
            stats: dump_stats(report.criu),
        })
    }

    /// Rollback: the service runs here again, from its own archives if it was frozen.
    #[tracing::instrument(name = "coat.resume", skip(self))]
    pub(super) async fn resume(&self, task: &str, service: &str) -> Result<Done> {
        check_service(service)?;
        // The source is the truth again: nobody may restore its images any more.
        self.stop_serving(service);
        let state = self.load_state(task, service)?;
        let info = self.container(service).await?;
        if info.as_ref().is_some_and(|i| i.state.running) {
            info!("still running (never frozen, or only pre-dumped): nothing to resume");
            self.drop_pre_dumps(service).await;
            if let Some(mut state) = state.filter(|s| s.role == ServiceRole::Source) {
                self.remove_archives(task);
                resumed(&mut state, None);
                self.save_state(&state)?;
            }
            return Ok(Done);
        }
        let status = info
            .as_ref()
            .map_or("absent", |i| i.state.status.as_str())
            .to_string();
        let Some(mut state) = state.filter(|s| s.role == ServiceRole::Source) else {
            return Err(CoatError::State(format!(
                "service {service} is {status} and task {task} left no checkpoint state here: \
                 cannot resume it"
            )));
        };
        let (archive, rounds) = self.own_checkpoint(&state).ok_or_else(|| {
            CoatError::State(format!(
                "service {service} is {status} and task {task} has no final dump here: cannot \
                 resume it"
            ))
        })?;
        // The stopped, checkpointed container holds the name and ID the archive restores;
        // the archive stays on disk until the restore succeeded, so a retry can start over.
        if info.is_some() {
            self.host.remove(service).await.map_err(runtime(format!(
                "remove the checkpointed {service} before restoring it"
            )))?;
        }
        let what = format!(
            "restore {service} from its own checkpoint {}",
            archive.display()
        );
        let (report, seqs) = self
            .restore_archive(service, &archive, &rounds, Volumes::KeptHere, what)
            .await?;
        info!(
            ms = mose_protocol::units::millis(report.elapsed),
            "resumed from the local checkpoint"
        );
        self.remove_archives(task);
        resumed(&mut state, Some(seqs));
        self.save_state(&state)?;
        Ok(Done)
    }

    /// The final archive of the task's state and the rounds it was dumped against (name and
    /// archive, oldest first), as the state lists them — never guessed from the files. A final
    /// archive the state does not list yet (the agent stopped between naming it and recording
    /// it) is complete and built on the rounds listed, since no round may follow a final dump.
    fn own_checkpoint(&self, state: &ServiceState) -> Option<(PathBuf, Vec<(String, PathBuf)>)> {
        let archive = self.image_path(&state.task, ImageId::Final);
        if state.final_dump.is_none() && !archive.is_file() {
            return None;
        }
        let rounds = state
            .round_images()
            .map(|image| (image.key_chunk(), self.image_path(&state.task, image)))
            .collect();
        Some((archive, rounds))
    }

    /// Commit: the destination serves, the old copy goes.
    #[tracing::instrument(name = "coat.release", skip(self))]
    pub(super) async fn release(&self, task: &str, service: &str) -> Result<Done> {
        self.remove_service(task, service, None, "release").await
    }
}

/// The state after a resume: its archives are gone, the clients of the restored sockets (if
/// it restored any) are the ones a Resend nudges.
fn resumed(state: &mut ServiceState, seqs: Option<Vec<u32>>) {
    state.resumed = true;
    state.rounds.clear();
    state.final_dump = None;
    if let Some(seqs) = seqs {
        state.client_seqs = seqs;
    }
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(io("size of the checkpoint archive", path))
}
