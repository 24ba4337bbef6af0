//! Why a COAT step failed. Every message names the service and the operation, because the
//! orchestrator receives it in a [`StepFailure`] and an operator must see what failed where
//! without reading the agent's log. The [`FailureKind`] it travels with is decided here, once.

use std::path::PathBuf;

use mose_overlay::OverlayError;
use mose_protocol::blob::BlobError;
use mose_protocol::steps::{FailureKind, Op, StepFailure};
use thiserror::Error;

use crate::runtime::RuntimeError;

/// Why a COAT step failed on this host.
#[derive(Debug, Error)]
pub enum CoatError {
    /// The request itself is unusable (bad name, unknown flow target).
    #[error("{0}")]
    Invalid(String),
    /// The host is not in a state the step can work from (e.g. no such container).
    #[error("{0}")]
    State(String),
    /// Podman or the OCI runtime failed.
    #[error("{what}: {source}")]
    Runtime {
        /// What the step was doing.
        what: String,
        /// Boxed: a runtime error carries a whole command's output, and every step's `Result`
        /// would be that large.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The overlay (namespace, veth, OvS) failed.
    #[error("{what}: {source}")]
    Overlay {
        /// What the step was doing.
        what: String,
        /// The overlay's error.
        #[source]
        source: OverlayError,
    },
    /// Serving or fetching an image failed.
    #[error("{what}: {source}")]
    Blob {
        /// What the step was doing.
        what: String,
        /// The transfer's error.
        #[source]
        source: BlobError,
    },
    /// A file of the task's work directory.
    #[error("{what} ({}): {source}", path.display())]
    Io {
        /// What the step was doing.
        what: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = CoatError> = std::result::Result<T, E>;

impl CoatError {
    /// What the caller may conclude from this error.
    pub fn kind(&self) -> FailureKind {
        match self {
            CoatError::Invalid(_) => FailureKind::InvalidRequest,
            CoatError::State(_) => FailureKind::WrongState,
            CoatError::Runtime { .. } => FailureKind::Runtime,
            CoatError::Overlay { .. } => FailureKind::Network,
            CoatError::Blob { .. } => FailureKind::Transfer,
            CoatError::Io { .. } => FailureKind::Internal,
        }
    }

    /// The failure of step `op` this error answers with: its kind and its whole cause chain.
    pub fn into_failure(self, op: Op) -> StepFailure {
        StepFailure {
            op,
            kind: self.kind(),
            reason: chain_text(&self),
        }
    }
}

/// `error` and every cause below it that its own message does not already include (most
/// variants print their source; deeper causes, e.g. a command's stderr, may not be).
fn chain_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let line = c.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = c.source();
    }
    text
}

/// `map_err` adapters that attach what was being done.
pub(crate) fn runtime(what: impl Into<String>) -> impl FnOnce(RuntimeError) -> CoatError {
    let what = what.into();
    move |source| CoatError::Runtime {
        what,
        source: Box::new(source),
    }
}

pub(crate) fn overlay(what: impl Into<String>) -> impl FnOnce(OverlayError) -> CoatError {
    let what = what.into();
    move |source| CoatError::Overlay { what, source }
}

pub(crate) fn blob(what: impl Into<String>) -> impl FnOnce(BlobError) -> CoatError {
    let what = what.into();
    move |source| CoatError::Blob { what, source }
}

pub(crate) fn io(
    what: impl Into<String>,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> CoatError {
    let (what, path) = (what.into(), path.into());
    move |source| CoatError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_coat_error_maps_to_its_failure_kind() {
        let io_err = || std::io::Error::other("disk on fire");
        let cases = [
            (
                CoatError::Invalid("bad".into()),
                FailureKind::InvalidRequest,
            ),
            (CoatError::State("stopped".into()), FailureKind::WrongState),
            (
                runtime("checkpoint counter")(RuntimeError::Invalid {
                    op: crate::runtime::Op::Checkpoint,
                    why: "empty name".into(),
                }),
                FailureKind::Runtime,
            ),
            (
                overlay("steer")(OverlayError::Invalid("port".into())),
                FailureKind::Network,
            ),
            (
                blob("fetch final")(BlobError::DigestMismatch {
                    key: "k".into(),
                    expected: "a".into(),
                    actual: "b".into(),
                }),
                FailureKind::Transfer,
            ),
            (
                io("write the state", "/w/t")(io_err()),
                FailureKind::Internal,
            ),
        ];
        for (error, kind) in cases {
            let failure = error.into_failure(Op::Restore);
            assert_eq!((failure.op, failure.kind), (Op::Restore, kind), "{failure}");
        }
    }

    #[test]
    fn the_reason_carries_the_whole_cause_chain_once() {
        let e = io("write the state", "/w/t")(std::io::Error::other("disk on fire"));
        let f = e.into_failure(Op::Checkpoint);
        assert_eq!(f.reason, "write the state (/w/t): disk on fire");
    }
}
