//! The agent documents of the HTTP API (`GET /v1/agents`, `GET /v1/agents/{id}`).

use mose_protocol::messages::{AgentProfile, MetricsSample};
use serde::{Deserialize, Serialize};

/// What the orchestrator knows about one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentView {
    /// The agent's id.
    pub id: String,
    /// When the orchestrator saw the agent's token appear (Unix µs).
    pub joined_us: u64,
    /// `None` until the profile has been fetched.
    pub profile: Option<AgentProfile>,
    /// The latest metrics sample, if any arrived.
    pub metrics: Option<MetricsSample>,
    /// When that sample arrived here (Unix µs), to judge its age without trusting peer clocks.
    pub metrics_received_us: Option<u64>,
}
