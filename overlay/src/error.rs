//! One error type for the crate: every message says what failed and why.

use std::path::PathBuf;

/// Errors of the overlay crate.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A local I/O operation failed (file, socket).
    #[error(transparent)]
    Io(#[from] mose_command::IoError),
    /// An external tool (ovs-*, tc, nsenter) could not run, failed or missed its deadline.
    #[error(transparent)]
    Command(#[from] mose_command::CommandError),
    /// A netlink request was refused by the kernel.
    #[error("netlink: {what}: {reason}")]
    Netlink {
        /// The request that was refused.
        what: String,
        /// The kernel's answer.
        reason: String,
    },
    /// The OVSDB server, the transport or the reply was wrong.
    #[error("ovsdb: {0}")]
    Ovsdb(#[from] crate::ovsdb::OvsdbError),
    /// The caller gave a value we cannot use.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A path we need does not exist or is unusable.
    #[error("{what}: {path}")]
    Path {
        /// What the path is for.
        what: String,
        /// The path.
        path: PathBuf,
    },
}

/// A result whose error defaults to [`OverlayError`].
pub type Result<T, E = OverlayError> = std::result::Result<T, E>;

impl OverlayError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        OverlayError::Io(mose_command::IoError::new(what, source))
    }
    pub(crate) fn netlink(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        OverlayError::Netlink {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
