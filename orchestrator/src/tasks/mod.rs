//! Migration tasks: what an operator asks for, how it is planned, driven and remembered.
//!
//! * [`plan`]: validation of a request and the designer's inputs (M, R_max, L, host parameters).
//! * [`store`]: every task persisted in SQLite, so a restarted orchestrator can reconcile.
//! * [`driver`]: the COAT state machine with its rollback, and the reconciliation on start.
//! * [`service`]: [`Migrations`], the submit/inspect/cancel calls the HTTP API and the Zenoh
//!   queryables ([`queryables`]) both map onto.
//!
//! Failure semantics (docs/coat.md#failure-semantics): until the destination has restored
//! **and** the client's flow is switched, the source copy is the truth; any failure, timeout or
//! cancel before that point ends with the service resumed at the source. After it, the source is
//! released.

pub mod driver;
pub mod plan;
pub mod queryables;
pub mod service;
pub mod store;

use mose_protocol::steps::FailureKind;
use thiserror::Error;

pub use driver::{DriverConfig, StepTimeouts};
/// The task documents are the HTTP API's (crate `mose-api`, shared with the CLI and testbed).
pub use mose_api::tasks::{
    Measurements, MigrationRequest, PlanInputs, Progress, Route, TaskRecord, TaskStatus,
};
pub use service::Migrations;
pub use store::{Store, StoreError};

/// Why a task call was refused. [`TaskError::status`] is the HTTP status for it, also sent
/// with Zenoh error replies so both APIs say the same.
#[derive(Debug, Error)]
pub enum TaskError {
    /// The request itself is wrong (bad id, source = destination, non-positive target…).
    #[error("{0}")]
    Invalid(String),
    /// The request names something that is not there (agent, service).
    #[error("{0}")]
    Unknown(String),
    /// A named agent is present but not ready (no profile yet): try again shortly.
    #[error("{0}")]
    NotReady(String),
    /// The call conflicts with the task's state (finished, past the point of no return, the
    /// service already migrating).
    #[error("{0}")]
    Conflict(String),
    /// No task has this id.
    #[error("no migration '{0}'")]
    NotFound(String),
    /// No service has this name.
    #[error("{0}")]
    NoService(String),
    /// A step an agent ran for the call (Describe at submission) failed or got no answer.
    #[error("{0}")]
    Agent(#[from] crate::rpc::RpcError),
    /// The orchestrator itself failed (its Zenoh session, encoding a reply).
    #[error("{0}")]
    Internal(String),
    /// The designer refused the inputs.
    #[error("cannot plan this migration: {0}")]
    Design(#[from] crate::designer::DesignError),
    /// The task database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TaskError {
    /// The HTTP status code that says whose fault it is.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::NotFound(_) | Self::NoService(_) => 404,
            Self::Conflict(_) => 409,
            Self::Unknown(_) | Self::Design(_) => 422,
            Self::Agent(e) => status_of_failure(e.kind()),
            Self::NotReady(_) => 503,
            Self::Store(_) | Self::Internal(_) => 500,
        }
    }
}

/// The HTTP status for a step that failed with `kind`: the one place that says whose fault each
/// kind of failure is. A request the agent cannot act on is the caller's (422); a host in the
/// wrong state a conflict (409); a runtime, network or transfer fault an upstream one (502),
/// a timeout too (504) — podman being down is not the caller's mistake.
pub fn status_of_failure(kind: FailureKind) -> u16 {
    match kind {
        FailureKind::InvalidRequest => 422,
        FailureKind::WrongState => 409,
        FailureKind::Runtime | FailureKind::Network | FailureKind::Transfer => 502,
        FailureKind::Timeout => 504,
        FailureKind::Internal => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_kind_has_a_status_that_names_whose_fault_it_is() {
        for &kind in FailureKind::ALL {
            let status = status_of_failure(kind);
            assert!((400..600).contains(&status), "{kind}: {status}");
        }
        assert_eq!(
            status_of_failure(FailureKind::Runtime),
            502,
            "podman down is no 422"
        );
        assert_eq!(status_of_failure(FailureKind::InvalidRequest), 422);
        assert_eq!(status_of_failure(FailureKind::WrongState), 409);
    }
}
