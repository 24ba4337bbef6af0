//! Checkpoint (export) and restore (import) through libpod, with the archive streamed.
//!
//! Checkpoint: podman dumps the container, writes the archive to a temp file, then sends it as
//! the (chunked) response body. We copy it chunk by chunk into the caller's writer: a file, a
//! Zenoh transfer, or a pipe into another host's restore. Nothing holds the whole archive.
//!
//! Pre-copy (docs/coat.md, "Order of steps"): the rounds are chained CRIU pre-dumps by runc
//! ([`super::precopy`]); [`DumpKind::WithPrevious`] (`withPrevious`) is the final dump holding
//! only what changed since the last round, a query parameter of libpod's checkpoint endpoint
//! (podman 4.3 has it), so it goes through the same streamed export. Its restore cannot:
//! libpod's restore endpoint takes one uploaded archive and has no `importPrevious`, so
//! [`Podman::restore_with_previous`] runs the podman CLI (the agent shares podman's host and
//! mount namespace, so the CLI sees the same storage as the API service).
//!
//! Restore: the caller's reader is streamed as the request body (podman saves it under
//! `/var/tmp`, then imports). On the way we check the archive is a complete tar and learn the
//! container's ID from `config.dump`; an incomplete archive aborts the upload, so podman never
//! sees it, and a container podman created before failing is removed again (measured on 4.3.1:
//! an archive cut at a member boundary leaves a `Created` container behind).

use std::ffi::OsString;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::archive::{Member, TarScanner};
use super::criu_stats::{parse_stats_dump, CriuDumpStats, CriuRestoreStats, PodmanCriuStatistics};
use super::error::{Op, Result, RuntimeError};
use super::libpod::{check_name, decode, Podman, UPLOAD_CHUNK};

/// CRIU's dump statistics inside an exported archive.
const STATS_DUMP: &str = "stats-dump";
/// libpod's container configuration inside the archive (JSON with `id` and `name`).
const CONFIG_DUMP: &str = "config.dump";
/// Largest member the scanner copies (config.dump is ~25 KB, stats-dump ~50 bytes).
const MAX_KEPT_MEMBER: u64 = 4 * 1024 * 1024;

/// How to checkpoint. `Default` is what COAT uses: established TCP connections included,
/// file locks included, statistics on, container stopped afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Dump established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// Keep the container running after the dump (`--leave-running`): for MS2M and tests.
    pub leave_running: bool,
    /// Dump file locks (`--file-locks`); without it CRIU refuses processes holding any.
    pub file_locks: bool,
    /// Let CRIU write `stats-dump` (read back into [`CheckpointReport::criu`]).
    pub print_stats: bool,
    /// Deadline for the whole checkpoint, dump and archive transfer included.
    pub timeout: Duration,
    /// A complete dump, a pre-dump, or the final dump on top of a pre-dump.
    pub kind: DumpKind,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            tcp_established: true,
            leave_running: false,
            file_locks: true,
            print_stats: true,
            timeout: Duration::from_secs(300),
            kind: DumpKind::Full,
        }
    }
}

/// Which dump a checkpoint makes (the second needs kernel soft-dirty tracking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DumpKind {
    /// Everything: the archive restores on its own (cold migration).
    #[default]
    Full,
    /// `--with-previous`: the final dump, only the pages dirtied since the last pre-copy round
    /// (podman's `pre-checkpoint`); its archive restores only together with the rounds'
    /// ([`Podman::restore_with_previous`]).
    WithPrevious,
}

impl CheckpointOptions {
    /// libpod's query parameters. A [`DumpKind::Full`] dump sends exactly the parameters it
    /// always did, so podman versions without pre-copy support see no unknown ones.
    fn query(&self) -> Vec<(&'static str, &'static str)> {
        let flag = |b: bool| if b { "true" } else { "false" };
        let mut q = vec![
            ("export", "true"),
            ("tcpEstablished", flag(self.tcp_established)),
            ("leaveRunning", flag(self.leave_running)),
            ("fileLocks", flag(self.file_locks)),
            ("printStats", flag(self.print_stats)),
        ];
        match self.kind {
            DumpKind::Full => {}
            DumpKind::WithPrevious => q.push(("withPrevious", "true")),
        }
        q
    }
}

/// What a checkpoint produced.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointReport {
    /// The checkpointed container's name.
    pub container: String,
    /// Size of the exported archive.
    pub archive_bytes: u64,
    /// Request sent → response headers: podman's dump plus writing its temp archive.
    pub podman_time: Duration,
    /// Response headers → last byte handed to the writer.
    pub transfer_time: Duration,
    /// CRIU's statistics, when the archive carried them.
    pub criu: Option<CriuDumpStats>,
}

/// How to restore an imported archive. The container keeps the name and ID it had (podman
/// refuses `--name` together with `--tcp-established`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Restore established TCP connections (CRIU `--tcp-established`).
    pub tcp_established: bool,
    /// Restore file locks (CRIU `--file-locks`).
    pub file_locks: bool,
    /// Ask for CRIU's statistics ([`RestoreReport::criu`]).
    pub print_stats: bool,
    /// Keep the host's named volumes as they are instead of creating them from the archive
    /// (which podman refuses while they exist): right where the container was checkpointed,
    /// whose volumes hold the content the archive has.
    pub ignore_volumes: bool,
    /// Deadline for upload, import and restore.
    pub timeout: Duration,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            tcp_established: true,
            file_locks: true,
            print_stats: true,
            ignore_volumes: false,
            timeout: Duration::from_secs(300),
        }
    }
}

/// What a restore produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreReport {
    /// ID of the restored container (the same as on the source).
    pub id: String,
    /// Its name, from the archive.
    pub name: Option<String>,
    /// Size of the archive sent to podman.
    pub archive_bytes: u64,
    /// First byte sent → podman's answer.
    pub elapsed: Duration,
    /// The OCI runtime's restore duration as podman measured it.
    pub runtime_duration: Option<Duration>,
    /// CRIU's restore statistics, when asked for.
    pub criu: Option<CriuRestoreStats>,
}

/// podman's restore answer (`entities.RestoreReport`).
#[derive(Debug, Deserialize)]
struct PodmanRestoreReport {
    #[serde(rename = "Id")]
    id: String,
    /// Microseconds.
    #[serde(default)]
    runtime_restore_duration: Option<u64>,
    #[serde(default)]
    criu_statistics: Option<PodmanCriuStatistics>,
}

/// The identity a checkpoint archive carries in `config.dump`.
#[derive(Debug, Clone, Deserialize)]
struct ArchivedContainer {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

impl Podman {
    /// Checkpoint `name` with `--export`, writing the archive to `sink` as it arrives.
    ///
    /// The writer is flushed, not shut down: a pipe's reader sees the end of the archive only
    /// when the caller shuts the writer (`AsyncWriteExt::shutdown`). On error nothing more is
    /// written; what was written is a partial archive the caller discards. Unless `leave_running` is set, a container whose dump succeeded stays
    /// checkpointed (stopped) even if the transfer then fails: restore it from its own
    /// checkpoint or from the archive, per the COAT failure rules.
    #[tracing::instrument(skip(self, sink), fields(socket = %self.socket().display()))]
    pub async fn checkpoint<W>(
        &self,
        name: &str,
        opts: &CheckpointOptions,
        sink: &mut W,
    ) -> Result<CheckpointReport>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let op = Op::Checkpoint;
        check_name(op, name)?;
        let req = self
            .http
            .post(self.url(&format!("/containers/{name}/checkpoint")))
            .query(&opts.query());
        self.within(op, name, opts.timeout, async {
            let t0 = Instant::now();
            let mut resp = self.exchange(op, name, req).await?;
            let podman_time = t0.elapsed();
            let t1 = Instant::now();
            let mut scan = TarScanner::new(|n| n == STATS_DUMP, MAX_KEPT_MEMBER);
            let mut kept = Vec::new();
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    // A body that breaks off is a half-read archive, not a transport hiccup.
                    Err(e) => return Err(incomplete(op, name, scan.offset(), e.to_string())),
                };
                kept.extend(
                    scan.feed(&chunk)
                        .map_err(|why| incomplete(op, name, scan.offset(), why))?,
                );
                sink.write_all(&chunk)
                    .await
                    .map_err(archive_io(op, name, scan.offset()))?;
            }
            if !scan.is_complete() {
                return Err(incomplete(
                    op,
                    name,
                    scan.offset(),
                    "response ended before the end-of-archive marker".into(),
                ));
            }
            sink.flush()
                .await
                .map_err(archive_io(op, name, scan.offset()))?;
            let report = CheckpointReport {
                container: name.to_string(),
                archive_bytes: scan.offset(),
                podman_time,
                transfer_time: t1.elapsed(),
                criu: dump_stats(name, opts.print_stats, &kept),
            };
            tracing::info!(
                container = name,
                bytes = report.archive_bytes,
                podman_ms = mose_protocol::units::millis(podman_time),
                transfer_ms = mose_protocol::units::millis(report.transfer_time),
                frozen_us = report.criu.map(|c| c.frozen_time_us),
                "checkpoint exported"
            );
            Ok(report)
        })
        .await
    }

    /// Restore a container from the checkpoint archive read from `archive` (`--import`).
    ///
    /// The archive must be complete: if `archive` ends early or fails, the upload is aborted
    /// and podman discards it ([`RuntimeError::ArchiveIncomplete`] / [`RuntimeError::ArchiveIo`]).
    /// If podman fails after creating the container, the container is removed again, unless
    /// it existed before this call (e.g. restoring at the source next to the original).
    #[tracing::instrument(skip(self, archive), fields(socket = %self.socket().display()))]
    pub async fn restore<R>(&self, opts: &RestoreOptions, archive: R) -> Result<RestoreReport>
    where
        R: AsyncRead + Send + 'static,
    {
        let op = Op::Restore;
        let flag = |b: bool| if b { "true" } else { "false" };
        let upload = Arc::new(Mutex::new(Upload::default()));
        let body = reqwest::Body::wrap_stream(upload_stream(self.clone(), archive, upload.clone()));
        // With import=true libpod ignores the path's name; the archive names the container.
        let req = self
            .http
            .post(self.url("/containers/import/restore"))
            .query(&[
                ("import", "true"),
                ("tcpEstablished", flag(opts.tcp_established)),
                ("fileLocks", flag(opts.file_locks)),
                ("printStats", flag(opts.print_stats)),
                ("ignoreVolumes", flag(opts.ignore_volumes)),
            ])
            // Required: with Go's default form parsing, any other type lets the handler consume
            // the body before saving it, and the import fails with "spec.dump: no such file".
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(body);
        let t0 = Instant::now();
        let result = self
            .within(op, "(imported archive)", opts.timeout, async {
                let resp = match req.send().await {
                    Ok(r) => r,
                    // If our upload stream failed, that is the story; reqwest only saw its effect.
                    Err(e) => {
                        return Err(upload
                            .lock()
                            .map(|mut u| u.failure.take())
                            .ok()
                            .flatten()
                            .unwrap_or_else(|| self.transport_error(op, &target_of(&upload), e)))
                    }
                };
                let status = resp.status();
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| self.transport_error(op, &target_of(&upload), e))?;
                if !status.is_success() {
                    return Err(super::libpod::podman_error(
                        op,
                        &target_of(&upload),
                        status,
                        &body,
                    ));
                }
                decode::<PodmanRestoreReport>(op, &target_of(&upload), &body)
            })
            .await;
        let elapsed = t0.elapsed();
        let (container, existed_before, bytes) = match upload.lock() {
            Ok(u) => (u.container.clone(), u.existed_before, u.bytes),
            Err(_) => (None, None, 0),
        };
        match result {
            Ok(r) => {
                let report = RestoreReport {
                    id: r.id,
                    name: container.and_then(|c| c.name),
                    archive_bytes: bytes,
                    elapsed,
                    runtime_duration: r.runtime_restore_duration.map(Duration::from_micros),
                    criu: r.criu_statistics.map(CriuRestoreStats::from),
                };
                tracing::info!(
                    container = report.name.as_deref().unwrap_or(&report.id),
                    bytes,
                    ms = mose_protocol::units::millis(elapsed),
                    restore_us = report.criu.map(|c| c.restore_time_us),
                    "checkpoint restored"
                );
                Ok(report)
            }
            Err(e) => {
                // Only a container this call created is ours to remove.
                if let (Some(c), Some(false)) = (&container, existed_before) {
                    match self.remove(&c.id).await {
                        Ok(true) => {
                            tracing::warn!(container = %c.id, "removed the container a failed restore left")
                        }
                        Ok(false) => {}
                        Err(ce) => {
                            tracing::error!(container = %c.id, error = %ce, "cannot remove what a failed restore left")
                        }
                    }
                }
                Err(e)
            }
        }
    }
}

impl Podman {
    /// Restore from a pre-checkpoint archive `previous` plus the final `--with-previous`
    /// archive `archive`, both on this host's disk: `podman --runtime <the API service's OCI
    /// runtime> container restore --import-previous <previous> --import <archive>`.
    ///
    /// The CLI, because libpod's restore endpoint uploads one archive and has no
    /// `importPrevious` (podman 4.3 and later). The runtime is the API service's, because
    /// the CLI's default may differ (Debian's crun cannot restore, docs/runtime.md#quirks). A
    /// container podman created before failing is left to the caller, like any stale one (COAT's
    /// restore removes it before its next attempt, Abort removes it).
    #[tracing::instrument(skip(self, opts), fields(socket = %self.socket().display()))]
    pub async fn restore_with_previous(
        &self,
        opts: &RestoreOptions,
        previous: &Path,
        archive: &Path,
    ) -> Result<RestoreReport> {
        let op = Op::Restore;
        let target = archive.display().to_string();
        let runtime = self.info().await?.host.oci_runtime.name;
        let args = restore_with_previous_args(opts, &runtime, previous, archive);
        let archive_bytes = std::fs::metadata(archive).map(|m| m.len()).unwrap_or(0);
        let t0 = Instant::now();
        let stdout = self
            .run_cli(op, &target, PODMAN_CLI, &args, opts.timeout)
            .await?;
        let elapsed = t0.elapsed();
        let r = cli_restore_report(op, &target, opts.print_stats, &stdout)?;
        let report = RestoreReport {
            id: r.id,
            name: None,
            archive_bytes,
            elapsed,
            runtime_duration: r.runtime_restore_duration.map(Duration::from_micros),
            criu: r.criu_statistics.map(CriuRestoreStats::from),
        };
        tracing::info!(
            container = %report.id,
            bytes = archive_bytes,
            ms = mose_protocol::units::millis(elapsed),
            restore_us = report.criu.map(|c| c.restore_time_us),
            "checkpoint restored on top of its pre-checkpoint"
        );
        Ok(report)
    }
}

impl Podman {
    /// Runs `program` (podman's CLI, or the OCI runtime podman drives) for what the API
    /// cannot do, within `timeout` (killed when it passes); returns its stdout. Any failure is
    /// [`RuntimeError::Cli`]; a non-zero exit carries the program's own explanation (stderr).
    pub(crate) async fn run_cli(
        &self,
        op: Op,
        target: &str,
        program: &str,
        args: &[OsString],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let out = mose_command::Cmd::new(program)
            .args(args)
            .deadline(timeout)
            .output()
            .await
            .map_err(|source| RuntimeError::Cli {
                op,
                target: target.into(),
                source,
            })?;
        Ok(out.stdout)
    }
}

/// The podman CLI, found on `PATH` like the agent's other host tools.
const PODMAN_CLI: &str = "podman";

/// The arguments of [`Podman::restore_with_previous`]: the same options the API restore sends.
fn restore_with_previous_args(
    opts: &RestoreOptions,
    runtime: &str,
    previous: &Path,
    archive: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if !runtime.is_empty() {
        args.extend(["--runtime".into(), runtime.into()]);
    }
    args.extend(["container".into(), "restore".into()]);
    for (on, flag) in [
        (opts.tcp_established, "--tcp-established"),
        (opts.file_locks, "--file-locks"),
        (opts.print_stats, "--print-stats"),
        (opts.ignore_volumes, "--ignore-volumes"),
    ] {
        if on {
            args.push(flag.into());
        }
    }
    args.extend([
        "--import-previous".into(),
        previous.into(),
        "--import".into(),
        archive.into(),
    ]);
    args
}

#[cfg(test)]
fn shown(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CLI's answer: with `--print-stats` a JSON document
/// (`{"podman_restore_duration", "container_statistics": [RestoreReport]}`), else the ID.
fn cli_restore_report(
    op: Op,
    target: &str,
    print_stats: bool,
    stdout: &[u8],
) -> Result<PodmanRestoreReport> {
    #[derive(Deserialize)]
    struct Statistics {
        container_statistics: Vec<PodmanRestoreReport>,
    }
    if print_stats {
        let s: Statistics = decode(op, target, stdout)?;
        return s
            .container_statistics
            .into_iter()
            .next()
            .ok_or_else(|| RuntimeError::Protocol {
                op,
                target: target.into(),
                why: "podman's restore statistics name no container".into(),
            });
    }
    let id = String::from_utf8_lossy(stdout).trim().to_string();
    check_name(op, &id).map_err(|_| RuntimeError::Protocol {
        op,
        target: target.into(),
        why: format!("podman restore printed `{id}` instead of a container ID"),
    })?;
    Ok(PodmanRestoreReport {
        id,
        runtime_restore_duration: None,
        criu_statistics: None,
    })
}

/// What the upload stream learned, shared with [`Podman::restore`].
#[derive(Debug, Default)]
struct Upload {
    bytes: u64,
    container: Option<ArchivedContainer>,
    /// Whether a container with the archive's ID existed before podman got the archive;
    /// `None` when unknown (then a failed restore leaves cleanup to the caller).
    existed_before: Option<bool>,
    /// Why the upload stream failed, if it did.
    failure: Option<RuntimeError>,
}

fn target_of(upload: &Mutex<Upload>) -> String {
    upload
        .lock()
        .ok()
        .and_then(|u| {
            u.container
                .as_ref()
                .map(|c| c.name.clone().unwrap_or_else(|| c.id.clone()))
        })
        .unwrap_or_else(|| "(imported archive)".into())
}

/// The request body: `archive` in chunks, checked as a tar on the way. When `config.dump` has
/// passed we ask podman whether that container exists *before* sending more: podman acts only
/// once the whole body is in, so the answer is about the state before this restore.
fn upload_stream<R>(
    podman: Podman,
    archive: R,
    shared: Arc<Mutex<Upload>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    R: AsyncRead + Send + 'static,
{
    struct St<R> {
        src: ReaderStream<Pin<Box<R>>>,
        scan: TarScanner,
        podman: Podman,
        shared: Arc<Mutex<Upload>>,
    }
    let st = St {
        // Boxed so any reader will do, Unpin or not.
        src: ReaderStream::with_capacity(Box::pin(archive), UPLOAD_CHUNK),
        scan: TarScanner::new(|n| n == CONFIG_DUMP, MAX_KEPT_MEMBER),
        podman,
        shared,
    };
    futures::stream::unfold(Some(st), |st| async move {
        let mut st = st?;
        let op = Op::Restore;
        let fail = |st: &St<R>, e: RuntimeError| {
            let msg = e.to_string();
            if let Ok(mut u) = st.shared.lock() {
                u.failure = Some(e);
            }
            Some((Err(std::io::Error::other(msg)), None))
        };
        match st.src.next().await {
            Some(Ok(chunk)) => {
                let members = match st.scan.feed(&chunk) {
                    Ok(m) => m,
                    Err(why) => {
                        let e = incomplete(op, &target_of(&st.shared), st.scan.offset(), why);
                        return fail(&st, e);
                    }
                };
                if let Some(c) = archived_container(&members) {
                    let existed = match st.podman.exists(&c.id).await {
                        Ok(b) => Some(b),
                        Err(e) => {
                            tracing::warn!(container = %c.id, error = %e, "cannot tell whether the container exists already");
                            None
                        }
                    };
                    if let Ok(mut u) = st.shared.lock() {
                        u.container = Some(c);
                        u.existed_before = existed;
                    }
                }
                if let Ok(mut u) = st.shared.lock() {
                    u.bytes = st.scan.offset();
                }
                Some((Ok(chunk), Some(st)))
            }
            Some(Err(source)) => {
                let e = RuntimeError::ArchiveIo {
                    op,
                    target: target_of(&st.shared),
                    bytes: st.scan.offset(),
                    source,
                };
                fail(&st, e)
            }
            None if st.scan.is_complete() => None,
            None => {
                let why = "the archive ended before its end-of-archive marker".to_string();
                let e = incomplete(op, &target_of(&st.shared), st.scan.offset(), why);
                fail(&st, e)
            }
        }
    })
}

fn archived_container(members: &[Member]) -> Option<ArchivedContainer> {
    let m = members.iter().find(|m| m.name == CONFIG_DUMP)?;
    match serde_json::from_slice::<ArchivedContainer>(&m.data) {
        Ok(c) if check_name(Op::Restore, &c.id).is_ok() => Some(c),
        Ok(c) => {
            tracing::warn!(id = %c.id, "config.dump names an invalid container ID");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "config.dump in the archive is not readable");
            None
        }
    }
}

fn dump_stats(name: &str, wanted: bool, kept: &[Member]) -> Option<CriuDumpStats> {
    let m = kept.iter().find(|m| m.name == STATS_DUMP);
    match m.map(|m| parse_stats_dump(&m.data)) {
        Some(Ok(s)) => Some(s),
        Some(Err(why)) => {
            tracing::warn!(container = name, %why, "stats-dump in the archive is unreadable");
            None
        }
        None => {
            if wanted {
                tracing::warn!(container = name, "the archive carries no stats-dump");
            }
            None
        }
    }
}

/// Writing the archive failed after `bytes` bytes.
pub(crate) fn archive_io(
    op: Op,
    target: &str,
    bytes: u64,
) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::ArchiveIo {
        op,
        target: target.into(),
        bytes,
        source,
    }
}

pub(crate) fn incomplete(op: Op, target: &str, bytes: u64, reason: String) -> RuntimeError {
    RuntimeError::ArchiveIncomplete {
        op,
        target: target.into(),
        bytes,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_dump_sends_what_it_always_did_and_pre_copy_adds_one_parameter() {
        let full = CheckpointOptions::default();
        assert_eq!(
            full.query(),
            [
                ("export", "true"),
                ("tcpEstablished", "true"),
                ("leaveRunning", "false"),
                ("fileLocks", "true"),
                ("printStats", "true"),
            ]
        );
        let q = CheckpointOptions {
            kind: DumpKind::WithPrevious,
            ..full.clone()
        }
        .query();
        assert_eq!(q[..5], full.query()[..]);
        assert_eq!(q[5..], [("withPrevious", "true")]);
    }

    #[test]
    fn restore_with_previous_runs_the_cli_with_the_api_runtime() {
        let args = restore_with_previous_args(
            &RestoreOptions::default(),
            "runc",
            Path::new("/w/t/pre-0.tar"),
            Path::new("/w/t/ckpt.tar"),
        );
        assert_eq!(
            shown(&args),
            "--runtime runc container restore --tcp-established --file-locks --print-stats \
             --import-previous /w/t/pre-0.tar --import /w/t/ckpt.tar"
        );
        let bare = RestoreOptions {
            tcp_established: false,
            file_locks: false,
            print_stats: false,
            ..RestoreOptions::default()
        };
        let args = restore_with_previous_args(&bare, "", Path::new("p"), Path::new("f"));
        assert_eq!(
            shown(&args),
            "container restore --import-previous p --import f"
        );
        let at_the_source = RestoreOptions {
            ignore_volumes: true,
            ..bare
        };
        let args = restore_with_previous_args(&at_the_source, "", Path::new("p"), Path::new("f"));
        assert_eq!(
            shown(&args),
            "container restore --ignore-volumes --import-previous p --import f"
        );
    }

    #[test]
    fn the_cli_answer_is_read_with_and_without_statistics() {
        // Recorded: podman 4.3.1 `container restore --print-stats --import-previous --import`.
        let json = br#"{
    "podman_restore_duration": 324287,
    "container_statistics": [
        {
            "Id": "509d879845186ae7435201c1ae18b6c1e85f89a4b8af6f49a79e657801d56426",
            "RawInput": "",
            "runtime_restore_duration": 227863,
            "criu_statistics": {
                "forking_time": 2,
                "restore_time": 132691,
                "pages_restored": 23
            }
        }
    ]
}"#;
        let r = cli_restore_report(Op::Restore, "f", true, json).unwrap();
        assert_eq!(
            (r.id.get(..12), r.runtime_restore_duration),
            (Some("509d87984518"), Some(227_863))
        );
        assert!(r.criu_statistics.is_some());
        let r = cli_restore_report(Op::Restore, "f", false, b"509d87984518\n").unwrap();
        assert_eq!(r.id, "509d87984518");
        for (stats, bad) in [
            (true, &b"abc123\n"[..]),
            (true, br#"{"container_statistics": []}"#),
            (false, b"Error: x y"),
        ] {
            assert!(
                matches!(
                    cli_restore_report(Op::Restore, "f", stats, bad),
                    Err(RuntimeError::Protocol { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
