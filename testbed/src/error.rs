//! The crate's error type: every message says what failed and why.

use std::path::PathBuf;

/// Errors of the testbed library.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A local I/O operation failed (file, socket, namespace switch).
    #[error(transparent)]
    Io(#[from] mose_command::IoError),
    /// An external tool (ip, tc, nsenter, podman, cargo …) could not run, failed or missed its
    /// deadline.
    #[error(transparent)]
    Command(#[from] mose_command::CommandError),
    /// Something did not happen within its deadline.
    #[error("timed out after {after_ms} ms: {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after_ms: u64,
    },
    /// The caller gave a value we cannot use (name, address, rate...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The machine is not in the state the operation needs (missing tool, leftover host...).
    #[error("{0}")]
    State(String),
    /// A file we read or produced has unexpected content.
    #[error("unexpected content in {path}: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The host's Open vSwitch could not be started or stopped.
    #[error("open vswitch: {0}")]
    Ovs(#[from] mose_overlay::OverlayError),
    /// The testbed's domain CA could not issue its members' certificates.
    #[error("testbed PKI: {0}")]
    Pki(#[from] mose_pki::PkiError),
    /// A member name the domain cannot hold.
    #[error(transparent)]
    Domain(#[from] mose_protocol::domain::DomainError),
    /// The orchestrator's HTTP API refused a call or could not be reached.
    #[error("orchestrator API: {0}")]
    Api(#[from] mose_api::ClientError),
}

/// A result whose error defaults to [`TestbedError`].
pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

impl TestbedError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        TestbedError::Io(mose_command::IoError::new(what, source))
    }
}
