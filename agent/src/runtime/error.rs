//! Errors of the runtime driver. Every variant names the libpod operation and the container
//! (or image) it was about, because a failed migration step is reported to the orchestrator as
//! text and must say what failed where without a log dive.

use std::fmt;
use std::path::PathBuf;

/// The libpod operation an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /version`.
    Version,
    /// `GET /info`.
    Info,
    /// Creating a container.
    Create,
    /// Starting a container.
    Start,
    /// Inspecting a container.
    Inspect,
    /// Asking whether a container exists.
    Exists,
    /// Listing containers.
    List,
    /// Reading container statistics.
    Stats,
    /// Stopping a container.
    Stop,
    /// Removing a container.
    Remove,
    /// Loading an image archive.
    ImageLoad,
    /// Exporting an image archive.
    ImageExport,
    /// Asking whether an image exists.
    ImageExists,
    /// Checkpointing a container (final dump).
    Checkpoint,
    /// A pre-dump round.
    PreDump,
    /// Restoring a checkpoint.
    Restore,
    /// Listing volumes.
    VolumeList,
    /// Removing a volume.
    VolumeRemove,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Version => "version",
            Op::Info => "info",
            Op::Create => "create",
            Op::Start => "start",
            Op::Inspect => "inspect",
            Op::Exists => "exists",
            Op::List => "list",
            Op::Stats => "stats",
            Op::Stop => "stop",
            Op::Remove => "remove",
            Op::ImageLoad => "image load",
            Op::ImageExport => "image export",
            Op::ImageExists => "image exists",
            Op::Checkpoint => "checkpoint",
            Op::PreDump => "pre-dump",
            Op::Restore => "restore",
            Op::VolumeList => "volume list",
            Op::VolumeRemove => "volume remove",
        })
    }
}

/// A podman or runtime operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Nothing listens on the socket (podman service not running, wrong path, permissions).
    #[error("{op} {target}: podman API socket {} is unreachable: {source}", socket.display())]
    Unreachable {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// The API socket.
        socket: PathBuf,
        /// The connection error.
        #[source]
        source: reqwest::Error,
    },
    /// The operation did not finish within its deadline (podman may still be working on it).
    #[error("{op} {target}: podman did not finish within {after_ms} ms")]
    Timeout {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// The deadline.
        after_ms: u64,
    },
    /// Podman answered 404: no such container or image.
    #[error("{op} {target}: not found ({message})")]
    NotFound {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// Podman's message.
        message: String,
    },
    /// Podman refused or failed the operation; `message` is its own explanation.
    #[error("{op} {target}: podman answered HTTP {status}: {message}")]
    Podman {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// The HTTP status.
        status: u16,
        /// Podman's `message`.
        message: String,
        /// Podman's `cause` (the innermost error).
        cause: String,
    },
    /// The checkpoint archive stopped before its end: podman's response broke off mid-body, or the
    /// archive given to restore ended early. Restore never hands such an archive to podman.
    #[error("{op} {target}: checkpoint archive incomplete after {bytes} bytes: {reason}")]
    ArchiveIncomplete {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// Bytes that did arrive.
        bytes: u64,
        /// What broke off.
        reason: String,
    },
    /// Our side of the archive failed: writing the checkpoint out, or reading the one to restore.
    #[error("{op} {target}: archive I/O failed after {bytes} bytes: {source}")]
    ArchiveIo {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// Bytes moved before the failure.
        bytes: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange broke for another reason (connection reset, malformed HTTP).
    #[error("{op} {target}: HTTP exchange with podman failed: {source}")]
    Transport {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// Podman answered something we cannot read (an API change, or not podman at all).
    #[error("{op} {target}: unexpected answer from podman: {why}")]
    Protocol {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// What we could not read.
        why: String,
    },
    /// A file or directory of ours next to podman's (the pre-copy chain in a bundle).
    #[error("{op} {target}: {what}: {source}")]
    LocalIo {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// What we were doing with the file.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The podman CLI or the OCI runtime (used where the API has no equivalent) could not be
    /// started, failed (with its own explanation on stderr) or did not finish in time.
    #[error("{op} {target}: {source}")]
    Cli {
        /// The operation.
        op: Op,
        /// The container or image it was about.
        target: String,
        /// The command's failure.
        #[source]
        source: mose_command::CommandError,
    },
    /// A request we refuse to send (e.g. an empty container name).
    #[error("{op}: invalid request: {why}")]
    Invalid {
        /// The operation.
        op: Op,
        /// What is wrong with the request.
        why: String,
    },
}

impl RuntimeError {
    /// The operation that failed.
    pub fn op(&self) -> Op {
        match self {
            RuntimeError::Unreachable { op, .. }
            | RuntimeError::Timeout { op, .. }
            | RuntimeError::NotFound { op, .. }
            | RuntimeError::Podman { op, .. }
            | RuntimeError::ArchiveIncomplete { op, .. }
            | RuntimeError::ArchiveIo { op, .. }
            | RuntimeError::Transport { op, .. }
            | RuntimeError::Protocol { op, .. }
            | RuntimeError::LocalIo { op, .. }
            | RuntimeError::Cli { op, .. }
            | RuntimeError::Invalid { op, .. } => *op,
        }
    }

    /// True for "no such container / image".
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }
}

/// A result whose error defaults to [`RuntimeError`].
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
