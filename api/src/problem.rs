//! Every error answer of the API: RFC 9457 problem details (`application/problem+json`) with a
//! stable, machine-readable [`Reason`] a script can act on; `detail` is for people.

use serde::{Deserialize, Serialize};

/// The media type of [`Problem`] answers.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer: `{"type", "title", "status", "detail", "reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// `about:blank`: the status and the reason say what kind of problem it is.
    #[serde(rename = "type", default = "about_blank")]
    pub kind: String,
    /// The status's name (`Conflict`, `Not Found`, …).
    pub title: String,
    /// The HTTP status, repeated for clients that only see the body (the Zenoh API).
    pub status: u16,
    /// What went wrong and what to do about it, in one or two sentences.
    pub detail: String,
    /// Why, as a stable name.
    pub reason: Reason,
}

fn about_blank() -> String {
    "about:blank".into()
}

/// Why a call was refused or failed. The names are stable: scripts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Reason {
    /// The request is malformed or names something impossible (400).
    InvalidRequest,
    /// A named agent is not present (422).
    NoSuchAgent,
    /// A named agent is present but not ready (no profile, not probed yet): retry (503).
    AgentNotReady,
    /// No service has that name (404).
    NoSuchService,
    /// No migration has that id (404).
    NoSuchMigration,
    /// No such endpoint (404).
    NoSuchEndpoint,
    /// A service of that name exists already (409).
    NameTaken,
    /// Every address of the service pool is in use (409).
    PoolExhausted,
    /// The service is being migrated (409).
    Migrating,
    /// The service is being deployed or removed, not running (409).
    NotRunning,
    /// The service does not run where the request says (409).
    WrongSource,
    /// The migration has finished (409).
    Finished,
    /// The migration has passed its point of no return: it completes forward (409).
    PastPointOfNoReturn,
    /// A deployment failed and so did removing what it made: repeat the removal (409).
    RemovalIncomplete,
    /// The designer refused the inputs (422).
    PlanRefused,
    /// An agent refused the request as invalid (422).
    AgentInvalidRequest,
    /// An agent's host is not in a state the step can start from (409).
    AgentWrongState,
    /// Podman, runc or CRIU failed on an agent (502).
    AgentRuntime,
    /// Namespaces, OvS or the network failed, or the agent could not be reached (502).
    AgentNetwork,
    /// Moving an image failed (502).
    AgentTransfer,
    /// An agent did not finish in time (504).
    AgentTimeout,
    /// An agent failed internally (500).
    AgentInternal,
    /// The orchestrator failed internally (500).
    Internal,
    /// No valid bearer token came with the call (401).
    Unauthorized,
    /// The request's Host header names a host the API does not answer for (421).
    HostNotAllowed,
}

impl Reason {
    /// Every reason.
    pub const ALL: &'static [Reason] = &[
        Reason::InvalidRequest,
        Reason::NoSuchAgent,
        Reason::AgentNotReady,
        Reason::NoSuchService,
        Reason::NoSuchMigration,
        Reason::NoSuchEndpoint,
        Reason::NameTaken,
        Reason::PoolExhausted,
        Reason::Migrating,
        Reason::NotRunning,
        Reason::WrongSource,
        Reason::Finished,
        Reason::PastPointOfNoReturn,
        Reason::RemovalIncomplete,
        Reason::PlanRefused,
        Reason::AgentInvalidRequest,
        Reason::AgentWrongState,
        Reason::AgentRuntime,
        Reason::AgentNetwork,
        Reason::AgentTransfer,
        Reason::AgentTimeout,
        Reason::AgentInternal,
        Reason::Internal,
        Reason::Unauthorized,
        Reason::HostNotAllowed,
    ];

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "invalid_request",
            Reason::NoSuchAgent => "no_such_agent",
            Reason::AgentNotReady => "agent_not_ready",
            Reason::NoSuchService => "no_such_service",
            Reason::NoSuchMigration => "no_such_migration",
            Reason::NoSuchEndpoint => "no_such_endpoint",
            Reason::NameTaken => "name_taken",
            Reason::PoolExhausted => "pool_exhausted",
            Reason::Migrating => "migrating",
            Reason::NotRunning => "not_running",
            Reason::WrongSource => "wrong_source",
            Reason::Finished => "finished",
            Reason::PastPointOfNoReturn => "past_point_of_no_return",
            Reason::RemovalIncomplete => "removal_incomplete",
            Reason::PlanRefused => "plan_refused",
            Reason::AgentInvalidRequest => "agent_invalid_request",
            Reason::AgentWrongState => "agent_wrong_state",
            Reason::AgentRuntime => "agent_runtime",
            Reason::AgentNetwork => "agent_network",
            Reason::AgentTransfer => "agent_transfer",
            Reason::AgentTimeout => "agent_timeout",
            Reason::AgentInternal => "agent_internal",
            Reason::Internal => "internal",
            Reason::Unauthorized => "unauthorized",
            Reason::HostNotAllowed => "host_not_allowed",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_reads_as_rfc_9457_with_its_reason() {
        let p = Problem {
            kind: about_blank(),
            title: "Conflict".into(),
            status: 409,
            detail: "a service named 'redis' already exists".into(),
            reason: Reason::NameTaken,
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["reason"], "name_taken");
        assert_eq!(serde_json::from_value::<Problem>(json).unwrap(), p);
        for &r in Reason::ALL {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                r.as_str(),
                "serde name = as_str"
            );
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
