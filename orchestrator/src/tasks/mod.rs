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

use mose_api::{Problem, Reason};
use mose_protocol::steps::FailureKind;
use thiserror::Error;

pub use driver::{DriverConfig, StepTimeouts};
/// The task documents are the HTTP API's (crate `mose-api`, shared with the CLI and testbed).
pub use mose_api::tasks::{
    Measurements, MigrationRequest, PlanInputs, Progress, Route, TaskRecord, TaskStatus,
};
pub use service::{Migrations, TaskChange, MAX_PAGE};
pub use store::{Store, StoreError, TaskFilter};

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
    /// The call conflicts with the state of the task or the service (finished, past the point
    /// of no return, already migrating, name taken, pool exhausted…); the reason says which.
    #[error("{1}")]
    Conflict(Reason, String),
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
            Self::Conflict(..) => 409,
            Self::Unknown(_) | Self::Design(_) => 422,
            Self::Agent(e) => status_of_failure(e.kind()),
            Self::NotReady(_) => 503,
            Self::Store(_) | Self::Internal(_) => 500,
        }
    }

    /// The stable reason of the problem answer.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Invalid(_) => Reason::InvalidRequest,
            Self::Unknown(_) => Reason::NoSuchAgent,
            Self::NotReady(_) => Reason::AgentNotReady,
            Self::Conflict(reason, _) => *reason,
            Self::NotFound(_) => Reason::NoSuchMigration,
            Self::NoService(_) => Reason::NoSuchService,
            Self::Agent(e) => reason_of_failure(e.kind()),
            Self::Design(_) => Reason::PlanRefused,
            Self::Store(_) | Self::Internal(_) => Reason::Internal,
        }
    }

    /// The problem answer of this error, for the HTTP and the Zenoh API alike.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: "about:blank".into(),
            title: title_of(status).into(),
            status,
            detail: self.to_string(),
            reason: self.reason(),
        }
    }
}

/// The name of an HTTP status, as a problem's title.
pub fn title_of(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// The reason of a step that failed with `kind` (its status: [`status_of_failure`]).
pub fn reason_of_failure(kind: FailureKind) -> Reason {
    match kind {
        FailureKind::InvalidRequest => Reason::AgentInvalidRequest,
        FailureKind::WrongState => Reason::AgentWrongState,
        FailureKind::Runtime => Reason::AgentRuntime,
        FailureKind::Network => Reason::AgentNetwork,
        FailureKind::Transfer => Reason::AgentTransfer,
        FailureKind::Timeout => Reason::AgentTimeout,
        FailureKind::Internal => Reason::AgentInternal,
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
        let reasons: std::collections::HashSet<_> = FailureKind::ALL
            .iter()
            .map(|&k| reason_of_failure(k))
            .collect();
        assert_eq!(reasons.len(), FailureKind::ALL.len(), "one reason per kind");
    }

    #[test]
    fn a_problem_carries_status_title_detail_and_reason() {
        let e = TaskError::Conflict(Reason::NameTaken, "a service named 'x' exists".into());
        let p = e.problem();
        assert_eq!((p.status, p.title.as_str()), (409, "Conflict"));
        assert_eq!(
            (p.reason, p.detail.as_str()),
            (Reason::NameTaken, "a service named 'x' exists")
        );
        assert_eq!(
            TaskError::NoService("no".into()).problem().reason,
            Reason::NoSuchService
        );
    }
}
