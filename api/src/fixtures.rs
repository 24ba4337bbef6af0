//! Test fixtures shared by this crate's tests and the orchestrator's (feature `fixtures`).

use std::net::Ipv4Addr;

use mose_protocol::messages::{
    AgentProfile, Capabilities, LinkSecurity, Role, ServiceNetwork, ServiceSpec,
};
use mose_protocol::model::{Objective, Plan, Strategy};
use mose_protocol::units::BytesPerSec;

use crate::agents::AgentView;
use crate::tasks::{MigrationRequest, PlanInputs, Progress, Route, TaskRecord, TaskStatus};

/// A finished-looking task for tests of the rendering and the store.
pub fn task_record(id: &str, created_us: u64, status: TaskStatus) -> TaskRecord {
    TaskRecord {
        id: id.into(),
        request: MigrationRequest {
            service: "counter".into(),
            source: None,
            destination: "edge2".into(),
            mobiles: None,
            objective: Objective::Resources,
            target_downtime_ms: 1000.0,
            target_duration_ms: 5000.0,
            bandwidth_bytes_per_s: None,
        },
        route: Route {
            source: "edge1".into(),
            destination: "edge2".into(),
            mobiles: vec!["mobile1".into()],
        },
        spec: ServiceSpec {
            name: "counter".into(),
            image: "localhost/counter".into(),
            image_id: None,
            network: ServiceNetwork::new(Ipv4Addr::new(10, 77, 0, 10), 24),
        },
        inputs: PlanInputs {
            state_bytes: 1 << 20,
            dirty_rate_bytes_per_s: BytesPerSec(0),
            bandwidth_bytes_per_s: BytesPerSec(125_000_000),
            source_calibrated: false,
            destination_calibrated: false,
            notes: vec![],
        },
        plan: Plan {
            strategy: Strategy::Cold,
            objective: Objective::Resources,
            bandwidth_bytes_per_s: BytesPerSec(1_000_000),
            rounds: 0,
            predicted_downtime_s: 0.9,
            predicted_total_s: 0.9,
            target_met: true,
            explanation: "test".into(),
        },
        status,
        phase: None,
        progress: Progress::default(),
        events: vec![],
        faults: vec![],
        error: None,
        measurements: Default::default(),
        created_us,
        updated_us: created_us,
        finished_us: None,
    }
}

/// An agent present with a probed profile of `role` (`None`: no profile yet), its links insecure.
pub fn agent_view(id: &str, role: Option<Role>) -> AgentView {
    AgentView {
        id: id.into(),
        joined_us: 0,
        profile: role.map(|role| AgentProfile {
            security: LinkSecurity::Insecure,
            id: id.into(),
            role,
            hostname: id.into(),
            agent_version: "t".into(),
            started_us: 0,
            capabilities: Some(Capabilities::default()),
            pam: None,
        }),
        metrics: None,
        metrics_received_us: None,
    }
}
