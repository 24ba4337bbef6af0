//! The demo (docs/operations.md#fixed-names): with the four hosts up, a live client on the
//! mobile host, the counter migrates edge1 → edge2 → edge1 (`runs` round trips) through the
//! orchestrator's HTTP API; then the KPI table, `report.json` and `latency.png`.
//!
//! Nothing is simulated: a migration is `POST /v1/migrations` to the real orchestrator, which
//! drives the real agents; the KPIs come from the orchestrator's task record and the client's
//! own timeline. If the API has no migrations, the demo stops and says so.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mose_api::format::event_line;
use mose_api::{ApiClient, MigrationRequest, TaskRecord, TaskStatus};
use mose_protocol::messages::{PhaseEvent, PhaseStatus};
use mose_protocol::model::Objective;
use mose_protocol::units::BytesPerSec;

use crate::client::{LiveClient, Timeline};
use crate::error::{Result, TestbedError};
use crate::fourhost::{FourHost, State, EDGE1, EDGE2, MOBILE};
use crate::plot::PhaseSpan;
use crate::report::{HostInfo, MigrationReport, Report};

/// How long one migration may take before the demo gives up on it (it is still the
/// orchestrator's to finish or roll back).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(180);
/// Replies the client must get after a migration before the next one starts: it is served again.
const SERVED_AGAIN: u64 = 20;
/// The workload name in the report.
const WORKLOAD: &str = "counter-service";

/// KPI targets handed to the orchestrator's designer with every migration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    /// Downtime target, ms.
    pub downtime_ms: f64,
    /// Total migration time target, ms.
    pub duration_ms: f64,
    /// Which KPI the designer optimises.
    pub objective: Objective,
    /// Bandwidth edge → edge the caller states (bytes/s), e.g. the LAN's shaped rate.
    pub bandwidth_bytes_per_s: Option<BytesPerSec>,
}

/// Submit a migration of the testbed's service and wait until the orchestrator has finished
/// it (succeeded, rolled back, cancelled or failed). `progress` gets the plan and each phase
/// event as a line.
pub async fn migrate(
    state: &State,
    from: &str,
    to: &str,
    targets: Targets,
    progress: &mut dyn FnMut(&str),
) -> Result<TaskRecord> {
    let api = state.api()?;
    let request = MigrationRequest {
        service: state.service.clone(),
        // Named although a deployed service brings both: the bench migrates a container it
        // placed by hand, and for a deployed one they are checked against its record.
        source: Some(from.into()),
        destination: to.into(),
        mobiles: Some(vec![MOBILE.into()]),
        objective: targets.objective,
        target_downtime_ms: targets.downtime_ms,
        target_duration_ms: targets.duration_ms,
        bandwidth_bytes_per_s: targets.bandwidth_bytes_per_s,
    };
    let task = api.submit(&request).await?;
    progress(mose_api::format::plan_summary(&task).trim_end());
    let t = Instant::now();
    let mut shown = 0;
    loop {
        let task = api.migration(&task.id).await?;
        for e in task.events.iter().skip(shown) {
            progress(&event_line(e, task.created_us));
        }
        shown = task.events.len();
        if task.status.is_finished() {
            return Ok(task);
        }
        if t.elapsed() > MIGRATION_TIMEOUT {
            return Err(TestbedError::Timeout {
                what: format!("migration {} ({from} -> {to}) to finish", task.id),
                after_ms: mose_protocol::units::millis(MIGRATION_TIMEOUT),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The host facts of the report, from edge1's agent profile (what the agent probed) and the
/// running kernel.
pub async fn host_info(api: &ApiClient) -> Result<HostInfo> {
    let agent = api.agent(EDGE1).await?;
    let caps = agent.profile.and_then(|p| p.capabilities).ok_or_else(|| {
        TestbedError::State(format!("agent {EDGE1} has no profile or capabilities yet"))
    })?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| TestbedError::io("read the kernel release", e))?;
    let unknown = || "unknown".to_string();
    Ok(HostInfo {
        kernel: kernel.trim().to_string(),
        criu: caps.criu_version.unwrap_or_else(unknown),
        podman: caps.podman_version.unwrap_or_else(unknown),
        dirty_tracking: caps.dirty_tracking,
    })
}

/// The phases of a task (its events) on the client's time axis: first start to last end per
/// phase, as the orchestrator's measurements span them.
pub fn phase_spans(events: &[PhaseEvent], timeline: &Timeline) -> Vec<PhaseSpan> {
    let mut spans: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for e in events {
        let span = spans.entry(e.phase.as_str()).or_insert((u64::MAX, 0));
        match e.status {
            PhaseStatus::Started => span.0 = span.0.min(e.at_us),
            PhaseStatus::Finished | PhaseStatus::Failed { .. } => span.1 = span.1.max(e.at_us),
        }
    }
    spans
        .into_iter()
        .filter(|(_, (start, end))| end >= start)
        .map(|(phase, (start, end))| PhaseSpan {
            phase: phase.to_string(),
            start_ms: timeline.ms_of_unix_us(start),
            end_ms: timeline.ms_of_unix_us(end),
        })
        .collect()
}

/// The live client on the mobile host, once it has had a second of steady state (the
/// baseline latency before the first migration).
pub async fn start_client(state: &State, progress: &mut dyn FnMut(&str)) -> Result<LiveClient> {
    let client = LiveClient::start(
        &state.client_netns,
        state.service_addr,
        Duration::from_secs(20),
    )
    .await?;
    progress(&format!(
        "client {} -> {}: one TCP connection, a request every 10 ms",
        client.local_addr(),
        state.service_addr
    ));
    client.served_again(50, Duration::from_secs(10)).await?;
    Ok(client)
}

/// What a demo run produced.
pub struct DemoOutcome {
    /// The report of every migration that ran.
    pub report: Report,
    /// Why the run stopped early (a migration that could not be submitted or did not finish, a
    /// client that was not served again); the report holds what was measured until then.
    pub stopped: Option<String>,
}

impl DemoOutcome {
    /// Every migration ran, succeeded, kept the connection and continued the state.
    pub fn all_good(&self) -> bool {
        self.stopped.is_none()
            && !self.report.migrations.is_empty()
            && self
                .report
                .migrations
                .iter()
                .all(|m| m.ok && m.same_connection && m.state_continuous)
    }
}

/// Run the migrations with a live client, then write the report and the plot to `out_dir`.
/// Stops at the first migration that does not succeed (the service is then wherever the
/// orchestrator left it), still writing what was measured.
pub async fn run(
    tb: &FourHost,
    runs: u32,
    targets: Targets,
    out_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<DemoOutcome> {
    let state = tb.state();
    let client = start_client(state, progress).await?;

    let mut done: Vec<(TaskRecord, f64, f64)> = Vec::new();
    let mut failure = None;
    'runs: for run in 1..=runs {
        for (from, to) in [(EDGE1, EDGE2), (EDGE2, EDGE1)] {
            progress(&format!("\n== run {run}/{runs}: {from} -> {to}"));
            let t0 = client.now_ms();
            let task = match migrate(state, from, to, targets, progress).await {
                Ok(t) => t,
                Err(e) => {
                    failure = Some(e.to_string());
                    break 'runs;
                }
            };
            // The window ends once the client is served again (or gives up on the connection).
            let served = client
                .served_again(SERVED_AGAIN, Duration::from_secs(30))
                .await;
            let t1 = client.now_ms();
            let (id, status) = (task.id.clone(), task.status);
            done.push((task, t0, t1));
            if let Err(e) = served {
                failure = Some(format!("after migration {id} ({status}): {e}"));
                break 'runs;
            }
            if status != TaskStatus::Succeeded {
                failure = Some(format!("migration {id} {from} -> {to} ended {status}"));
                break 'runs;
            }
        }
    }
    // A little tail after the last migration, for the plot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let timeline = client.finish();

    let mut migrations = Vec::new();
    let mut phases = Vec::new();
    for (task, t0, t1) in &done {
        migrations.push(MigrationReport::from_task(
            task,
            WORKLOAD,
            timeline.kpis(*t0, *t1),
        ));
        phases.extend(phase_spans(&task.events, &timeline));
    }
    // Asked at the end: the agents' capability probes (CRIU, podman) finish seconds after they
    // join, and the profile is updated then.
    let report = Report {
        host: host_info(&state.api()?).await?,
        raw_floor_ms: None,
        migrations,
    };
    report.write(&out_dir.join("report.json"))?;
    // The raw timeline next to the report: every number above can be recomputed from it.
    let raw = serde_json::to_string(&timeline)
        .map_err(|e| TestbedError::State(format!("encode the client timeline: {e}")))?;
    let raw_path = out_dir.join("client-timeline.json");
    std::fs::write(&raw_path, raw)
        .map_err(|e| TestbedError::io(format!("write {}", raw_path.display()), e))?;
    if !timeline.samples.is_empty() {
        crate::plot::latency_png(&timeline, &phases, &out_dir.join("latency.png"))?;
    }
    Ok(DemoOutcome {
        report,
        stopped: failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mose_protocol::messages::Phase;

    #[test]
    fn phases_are_placed_on_the_client_clock() {
        let ev = |phase, status, at_us| PhaseEvent {
            task: "t1".into(),
            agent: "edge1".into(),
            phase,
            status,
            at_us,
        };
        let events = vec![
            ev(Phase::Checkpoint, PhaseStatus::Started, 10_000_000),
            ev(Phase::Checkpoint, PhaseStatus::Finished, 10_400_000),
            ev(Phase::Restore, PhaseStatus::Started, 10_400_000),
            ev(Phase::Restore, PhaseStatus::Finished, 10_700_000),
            ev(Phase::Cleanup, PhaseStatus::Started, 10_800_000),
        ];
        let tl = Timeline {
            started_unix_us: 9_000_000,
            ..Timeline::default()
        };
        let spans = phase_spans(&events, &tl);
        assert_eq!(
            spans,
            vec![
                PhaseSpan {
                    phase: "checkpoint".into(),
                    start_ms: 1000.0,
                    end_ms: 1400.0
                },
                PhaseSpan {
                    phase: "restore".into(),
                    start_ms: 1400.0,
                    end_ms: 1700.0
                },
            ],
            "an unfinished phase has no span"
        );
    }
}
