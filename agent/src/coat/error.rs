//! Why a COAT step failed. Every message names the service and the operation, because the
//! orchestrator receives it as text in a [`mose_protocol::messages::StepFailure`] and an
//! operator must see what failed where without reading the agent's log.

use std::path::PathBuf;

use mose_overlay::OverlayError;
use mose_protocol::blob::BlobError;
use thiserror::Error;

use crate::runtime::RuntimeError;

#[derive(Debug, Error)]
pub enum CoatError {
    /// The request itself is unusable (bad name, unsupported option).
    #[error("{0}")]
    Invalid(String),
    /// The host is not in a state the step can work from (e.g. no such container).
    #[error("{0}")]
    State(String),
    #[error("{what}: {source}")]
    Runtime {
        what: String,
        #[source]
        source: RuntimeError,
    },
    #[error("{what}: {source}")]
    Overlay {
        what: String,
        #[source]
        source: OverlayError,
    },
    #[error("{what}: {source}")]
    Blob {
        what: String,
        #[source]
        source: BlobError,
    },
    #[error("{what} ({}): {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = CoatError> = std::result::Result<T, E>;

/// `map_err` adapters that attach what was being done.
pub(crate) fn runtime(what: impl Into<String>) -> impl FnOnce(RuntimeError) -> CoatError {
    let what = what.into();
    move |source| CoatError::Runtime { what, source }
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
