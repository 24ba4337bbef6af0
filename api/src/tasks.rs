//! The task documents of the HTTP API: what `POST /v1/migrations` takes ([`MigrationRequest`])
//! and what every task call answers ([`TaskRecord`]). The orchestrator stores the same record in
//! its SQLite task database and sends it over its Zenoh task queryables.

use std::collections::BTreeMap;

use mose_protocol::messages::{CriuStats, Phase, PhaseEvent, PhaseStatus, ServiceSpec};
use mose_protocol::model::{Objective, Plan};
use mose_protocol::steps::Fault;
use mose_protocol::units::BytesPerSec;
use serde::{Deserialize, Serialize};

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskStatus {
    /// Accepted and planned, the driver has not started yet.
    Queued,
    /// The driver is carrying out steps (or rolling back).
    Running,
    /// The service runs at the destination and the source is released.
    Succeeded,
    /// Something failed that rollback or release could not make whole (the source did not
    /// resume, the flow did not switch back, or the source did not release); `error` says
    /// what is left where.
    Failed,
    /// A step failed before the point of no return; the service runs at the source again
    /// (`error` also names any leftovers the destination did not confirm removing).
    RolledBack,
    /// Cancelled before the point of no return; the service runs at the source again.
    Cancelled,
}

impl TaskStatus {
    /// The name used in JSON, SQLite and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the driver is done with the task.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_objective() -> Objective {
    Objective::Downtime
}

/// A migration as an operator asks for it (`POST /v1/migrations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MigrationRequest {
    /// The service to move.
    pub service: String,
    /// Agent id of the edge host it moves to.
    pub destination: String,
    /// Agent id of the edge host it runs on now. For a service MOSE deployed it is known and
    /// this only asserts it (a mismatch is refused); a container placed by other means needs it.
    #[serde(default)]
    pub source: Option<String>,
    /// Mobile agents whose client flows follow the service. Omitted: the service's own (every
    /// mobile it was deployed for), or none for a container MOSE did not deploy.
    #[serde(default)]
    pub mobiles: Option<Vec<String>>,
    /// What to minimise; `downtime` when omitted.
    #[serde(default = "default_objective")]
    pub objective: Objective,
    /// θ_down in milliseconds, > 0.
    pub target_downtime_ms: f64,
    /// θ_mig in milliseconds, > 0.
    pub target_duration_ms: f64,
    /// L source → destination in **bytes**/s when the caller knows it (a reserved or shaped
    /// link); overrides the agents' link estimate and the configured default.
    #[serde(default)]
    pub bandwidth_bytes_per_s: Option<BytesPerSec>,
}

/// Who takes part in a migration, resolved from the request and the service's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Route {
    /// The edge host the service leaves.
    pub source: String,
    /// The edge host it moves to.
    pub destination: String,
    /// The mobile agents whose flows are switched, each in parallel.
    pub mobiles: Vec<String>,
}

/// What the designer was fed, kept with the task so its plan can be reproduced and judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanInputs {
    /// M, as the source's Describe reported it.
    pub state_bytes: u64,
    /// R_max from the source's latest metrics (0 when unknown).
    pub dirty_rate_bytes_per_s: BytesPerSec,
    /// L source → destination (from the request, else link estimates, else the configured
    /// default).
    pub bandwidth_bytes_per_s: BytesPerSec,
    /// Whether each host's own calibration was used (else the paper's defaults).
    pub source_calibrated: bool,
    /// Same for the destination.
    pub destination_calibrated: bool,
    /// Where an input came from a fallback, in words.
    pub notes: Vec<String>,
}

/// How far the forward path got. Each flag is set *before* the step it guards is sent, except
/// the confirmations, so a crash at any moment leaves a conservative record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    /// The destination confirmed the restore.
    pub restored: bool,
    /// A flow switch towards the destination was sent (it may have taken effect).
    pub switch_attempted: bool,
    /// The flow switch was confirmed (or there is no client flow to switch).
    pub switched: bool,
}

impl Progress {
    /// Restored and switched: from here on the destination is the truth and the task can only
    /// go forward (release the source).
    pub fn past_point_of_no_return(&self) -> bool {
        self.restored && self.switched
    }
}

/// What was measured while the task ran (docs/testbed.md#kpis), next to the plan's predictions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Measurements {
    /// Per phase (`prepare`, `pre_copy`, `checkpoint`, `transfer`, `netns`, `restore`,
    /// `flow_switch`, `cleanup`, `rollback`): first start to last end over all agents' events.
    pub phases_ms: BTreeMap<Phase, f64>,
    /// Checkpoint start → flow switched (restore confirmed without a mobile agent): the
    /// service's frozen time as the orchestrator sees it. The client-observed downtime is
    /// measured by a client probe (testbed), not here.
    pub frozen_ms: Option<f64>,
    /// Task accepted → source released.
    pub total_ms: Option<f64>,
    /// Size of the final checkpoint archive.
    pub image_bytes: Option<u64>,
    /// Archive size of each pre-copy round, oldest first (empty for cold): after the first,
    /// only what was dirtied since the round before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_copy_bytes: Vec<u64>,
    /// CRIU's statistics of the final dump.
    pub checkpoint_stats: Option<CriuStats>,
    /// CRIU's statistics of the restore.
    pub restore_stats: Option<CriuStats>,
}

impl Measurements {
    /// Recomputes the timing fields from the task's events (the orchestrator does after every
    /// change of a task, so a stored record always has them).
    pub fn update_from(
        &mut self,
        created_us: u64,
        finished_us: Option<u64>,
        events: &[PhaseEvent],
    ) {
        let mut spans: BTreeMap<Phase, (u64, u64)> = BTreeMap::new();
        for e in events {
            let span = spans.entry(e.phase).or_insert((u64::MAX, 0));
            match e.status {
                PhaseStatus::Started => span.0 = span.0.min(e.at_us),
                PhaseStatus::Finished | PhaseStatus::Failed { .. } => span.1 = span.1.max(e.at_us),
            }
        }
        self.phases_ms = spans
            .into_iter()
            .filter(|(_, (start, end))| end >= start)
            .map(|(phase, (start, end))| (phase, ms(end - start)))
            .collect();
        let first = |phase: Phase, done: bool| {
            events
                .iter()
                .filter(|e| e.phase == phase)
                .filter(|e| matches!(e.status, PhaseStatus::Finished) == done)
                .map(|e| e.at_us)
                .min()
        };
        let frozen_end = first(Phase::FlowSwitch, true).or_else(|| first(Phase::Restore, true));
        self.frozen_ms = first(Phase::Checkpoint, false)
            .zip(frozen_end)
            .filter(|(start, end)| end >= start)
            .map(|(start, end)| ms(end - start));
        self.total_ms = finished_us.map(|end| ms(end.saturating_sub(created_us)));
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One migration task, as stored and as `GET /v1/migrations/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRecord {
    /// The task's id.
    pub id: String,
    /// The request as submitted.
    pub request: MigrationRequest,
    /// Source, destination and mobiles, as resolved at submission.
    pub route: Route,
    /// The service as the source described it (network identity the destination recreates).
    pub spec: ServiceSpec,
    /// What the designer was fed.
    pub inputs: PlanInputs,
    /// Strategy, bandwidth, rounds, and the predictions (upper bounds) with their explanation.
    pub plan: Plan,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// The phase the driver is in (or ended in).
    pub phase: Option<Phase>,
    /// How far the forward path got, for rollback and restart.
    pub progress: Progress,
    /// Every phase start/end, from the orchestrator and from the agents, in arrival order.
    pub events: Vec<PhaseEvent>,
    /// Every step failure the driver met, forward and in the rollback, oldest first.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// The outcome in one sentence when the task did not succeed.
    pub error: Option<String>,
    /// KPIs measured from the events.
    pub measurements: Measurements,
    /// When the task was accepted, Unix microseconds.
    pub created_us: u64,
    /// Last change of the record, Unix microseconds.
    pub updated_us: u64,
    /// When the task ended, Unix microseconds.
    pub finished_us: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_json() {
        let r = crate::fixtures::task_record("m1", 5, TaskStatus::RolledBack);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<TaskRecord>(&json).unwrap(), r);
        assert!(json.contains(r#""status":"rolled_back""#), "{json}");
    }

    fn event(phase: Phase, status: PhaseStatus, at_us: u64) -> PhaseEvent {
        PhaseEvent {
            task: "t".into(),
            agent: "a".into(),
            phase,
            status,
            at_us,
        }
    }

    #[test]
    fn measurements_span_each_phase_over_all_agents() {
        let events = vec![
            event(Phase::Prepare, PhaseStatus::Started, 1_000),
            event(Phase::Prepare, PhaseStatus::Finished, 3_000),
            event(Phase::Checkpoint, PhaseStatus::Started, 4_000),
            event(Phase::Checkpoint, PhaseStatus::Finished, 9_000),
            // An agent's own transfer events inside the orchestrator's restore step.
            event(Phase::Restore, PhaseStatus::Started, 10_000),
            event(Phase::Transfer, PhaseStatus::Started, 10_500),
            event(Phase::Transfer, PhaseStatus::Finished, 12_000),
            event(Phase::Restore, PhaseStatus::Finished, 15_000),
            event(Phase::FlowSwitch, PhaseStatus::Started, 15_100),
            event(Phase::FlowSwitch, PhaseStatus::Finished, 16_000),
            // A phase that started but never ended has no duration yet.
            event(Phase::Cleanup, PhaseStatus::Started, 17_000),
        ];
        let mut m = Measurements::default();
        m.update_from(0, Some(20_000), &events);
        assert_eq!(m.phases_ms[&Phase::Prepare], 2.0);
        assert_eq!(m.phases_ms[&Phase::Transfer], 1.5);
        assert_eq!(m.phases_ms[&Phase::Restore], 5.0);
        assert!(!m.phases_ms.contains_key(&Phase::Cleanup));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json["phases_ms"]["transfer"], 1.5,
            "JSON keys are the phase names"
        );
        assert_eq!(m.frozen_ms, Some(12.0));
        assert_eq!(m.total_ms, Some(20.0));
    }

    #[test]
    fn point_of_no_return_needs_restore_and_switch() {
        let mut p = Progress::default();
        assert!(!p.past_point_of_no_return());
        p.restored = true;
        p.switch_attempted = true;
        assert!(!p.past_point_of_no_return());
        p.switched = true;
        assert!(p.past_point_of_no_return());
    }

    #[test]
    fn request_json_defaults_and_rejects_typos() {
        let r: MigrationRequest = serde_json::from_str(
            r#"{"service":"c","source":"a","destination":"b","target_downtime_ms":1000,"target_duration_ms":5000}"#,
        )
        .unwrap();
        assert_eq!(r.objective, Objective::Downtime);
        assert_eq!((r.source.as_deref(), r.mobiles), (Some("a"), None));
        let r: MigrationRequest = serde_json::from_str(
            r#"{"service":"c","destination":"b","target_downtime_ms":1,"target_duration_ms":5}"#,
        )
        .unwrap();
        assert_eq!(r.source, None, "the source of a deployed service is known");
        assert!(serde_json::from_str::<MigrationRequest>(
            r#"{"service":"c","source":"a","destination":"b","target_downtime":1,"target_duration_ms":5}"#
        )
        .is_err());
    }
}
