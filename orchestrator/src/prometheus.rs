//! `GET /metrics` in the Prometheus text format (version 0.0.4), through `prometheus-client`.
//!
//! Two kinds of metric:
//! * **counted as migrations finish** ([`MigrationMetrics`], fed by the task service): outcomes,
//!   downtime, duration and per-phase histograms, bytes moved. They live in memory and start at
//!   zero with the process, as Prometheus counters are meant to: a rate over them survives
//!   restarts, and pruning old records ([`crate::tasks`] retention) never makes them go down.
//! * **read at scrape time** ([`render`]): agents present, migrations running, each service's
//!   state size and dirty rate from its host's latest metrics. They describe now, so they are
//!   gauges taken from the same views the API answers from.

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::registry::AgentView;
use crate::tasks::{TaskRecord, TaskStatus};
use mose_api::ServiceRecord;
use mose_protocol::messages::LinkSecurity;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Downtime buckets (s): fine below 500 ms, where cold and pre-copy migrations of small
/// services land (≈0.2–0.6 s on the testbed), coarse above.
const DOWNTIME_BUCKETS_S: [f64; 14] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, 2.5, 5.0,
];
/// Duration buckets (s) of whole migrations and of their phases: a flow switch takes
/// milliseconds, an image transfer over a slow link minutes.
const DURATION_BUCKETS_S: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    strategy: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
    host: String,
}

fn phase_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_S)
}

/// What is counted as migrations finish. Cloning shares the counts.
#[derive(Clone, Debug)]
pub struct MigrationMetrics {
    finished: Family<OutcomeLabels, Counter>,
    downtime: Histogram,
    duration: Histogram,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    bytes_moved: Counter,
}

impl Default for MigrationMetrics {
    fn default() -> Self {
        MigrationMetrics {
            finished: Family::default(),
            downtime: Histogram::new(DOWNTIME_BUCKETS_S),
            duration: Histogram::new(DURATION_BUCKETS_S),
            phases: Family::new_with_constructor(phase_histogram),
            bytes_moved: Counter::default(),
        }
    }
}

impl MigrationMetrics {
    /// Counts a task that has just finished.
    pub fn finished(&self, r: &TaskRecord) {
        self.finished
            .get_or_create(&OutcomeLabels {
                strategy: r.plan.strategy.to_string(),
                outcome: r.status.as_str().to_string(),
            })
            .inc();
        for (phase, ms) in &r.measurements.phases_ms {
            self.phases
                .get_or_create(&PhaseLabels {
                    phase: phase.to_string(),
                })
                .observe(ms / 1000.0);
        }
        if r.status != TaskStatus::Succeeded {
            return;
        }
        let m = &r.measurements;
        if let Some(ms) = m.frozen_ms {
            self.downtime.observe(ms / 1000.0);
        }
        if let Some(ms) = m.total_ms {
            self.duration.observe(ms / 1000.0);
        }
        self.bytes_moved.inc_by(m.image_bytes.unwrap_or(0));
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "mose_migrations",
            "Finished migrations by planned strategy and outcome",
            self.finished.clone(),
        );
        registry.register_with_unit(
            "mose_migration_downtime",
            "Frozen time of succeeded migrations as the orchestrator sees it (checkpoint start \
             to flow switched)",
            Unit::Seconds,
            self.downtime.clone(),
        );
        registry.register_with_unit(
            "mose_migration_duration",
            "Total time of succeeded migrations (accepted to source released)",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "mose_migration_phase_duration",
            "Time of each phase of finished migrations (first start to last end over the agents)",
            Unit::Seconds,
            self.phases.clone(),
        );
        registry.register_with_unit(
            "mose_migration_moved",
            "Checkpoint image bytes of succeeded migrations",
            Unit::Bytes,
            self.bytes_moved.clone(),
        );
    }
}

/// What a scrape reads besides the counts: the agents present, the tasks not finished, the
/// services.
pub struct Scrape<'a> {
    /// Every agent present.
    pub agents: &'a [AgentView],
    /// How many migrations are queued or running.
    pub running: usize,
    /// Every service record, with the migration running on it if any.
    pub services: &'a [(ServiceRecord, bool)],
}

/// The exposition: the counts of `metrics` and the gauges of `now`.
pub fn render(metrics: &MigrationMetrics, now: &Scrape<'_>) -> String {
    let mut registry = Registry::default();
    registry.register(
        "mose_build",
        "The orchestrator's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );

    let agents = Family::<RoleLabels, Gauge>::default();
    for role in ["edge", "mobile", "unknown"] {
        // Every role is listed, also with no agent.
        let _ = agents.get_or_create(&RoleLabels { role: role.into() });
    }
    for a in now.agents {
        let role = a
            .profile
            .as_ref()
            .map_or("unknown".to_string(), |p| p.role.to_string());
        agents.get_or_create(&RoleLabels { role }).inc();
    }
    registry.register(
        "mose_agents_online",
        "Agents present, by role (unknown: no profile yet)",
        agents,
    );
    let expiry = Family::<AgentLabels, Gauge>::default();
    let insecure = Family::<AgentLabels, Gauge>::default();
    for a in now.agents {
        let labels = AgentLabels {
            agent: a.id.clone(),
        };
        match a.profile.as_ref().map(|p| &p.security) {
            Some(LinkSecurity::MutualTls {
                not_after_unix_s, ..
            }) => {
                expiry.get_or_create(&labels).set(*not_after_unix_s);
                insecure.get_or_create(&labels).set(0);
            }
            Some(LinkSecurity::Insecure) => {
                insecure.get_or_create(&labels).set(1);
            }
            None => {}
        }
    }
    registry.register(
        "mose_agent_certificate_expiry_timestamp_seconds",
        "When the agent's domain certificate expires (Unix time; alert on it minus time())",
        expiry,
    );
    registry.register(
        "mose_agent_insecure",
        "1 for an agent running with --insecure (plaintext links, no access control)",
        insecure,
    );
    let running: Gauge = Gauge::default();
    running.set(i64::try_from(now.running).unwrap_or(i64::MAX));
    registry.register(
        "mose_migrations_running",
        "Migrations queued or running",
        running,
    );

    let state = Family::<ServiceLabels, Gauge>::default();
    let dirty = Family::<ServiceLabels, Gauge>::default();
    let migrating = Family::<ServiceLabels, Gauge>::default();
    for (record, moving) in now.services {
        let labels = ServiceLabels {
            service: record.name.clone(),
            host: record.host.clone(),
        };
        migrating.get_or_create(&labels).set(i64::from(*moving));
        let sample = now
            .agents
            .iter()
            .find(|a| a.id == record.host)
            .and_then(|a| a.metrics.as_ref())
            .and_then(|m| m.containers.iter().find(|c| c.name == record.name));
        if let Some(c) = sample {
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            state.get_or_create(&labels).set(clamp(c.state_bytes));
            if let Some(rate) = c.dirty_rate_bytes_per_s {
                dirty.get_or_create(&labels).set(clamp(rate.0));
            }
        }
    }
    registry.register_with_unit(
        "mose_service_state",
        "M: anonymous memory of the service's processes, from its host's latest metrics",
        Unit::Bytes,
        state,
    );
    registry.register(
        "mose_service_dirty_rate_bytes_per_second",
        "R: bytes the service dirties per second, from its host's latest metrics",
        dirty,
    );
    registry.register(
        "mose_service_migrating",
        "1 while a migration of the service is queued or running",
        migrating,
    );

    metrics.register(&mut registry);
    let mut out = String::new();
    // Writing into a String cannot fail; an error here would be the crate's bug.
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mose_api::fixtures::task_record as record;
    use mose_protocol::messages::Role;

    /// The value of the sample line that starts with `prefix` (name and labels).
    fn sample(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
    }

    #[test]
    fn counts_outcomes_histograms_and_bytes_as_tasks_finish() {
        let metrics = MigrationMetrics::default();
        let mut ok = record("a", 1, TaskStatus::Succeeded);
        ok.measurements.frozen_ms = Some(180.0);
        ok.measurements.total_ms = Some(1500.0);
        ok.measurements.image_bytes = Some(1000);
        metrics.finished(&ok);
        metrics.finished(&record("b", 2, TaskStatus::RolledBack));
        let now = Scrape {
            agents: &[],
            running: 1,
            services: &[],
        };
        let text = render(&metrics, &now);
        assert_eq!(sample(&text, "mose_agents_online{role=\"edge\"}"), 0.0);
        assert_eq!(sample(&text, "mose_migrations_running"), 1.0);
        let total = "mose_migrations_total{strategy=\"cold\",outcome=";
        assert_eq!(sample(&text, &format!("{total}\"succeeded\"}}")), 1.0);
        assert_eq!(sample(&text, &format!("{total}\"rolled_back\"}}")), 1.0);
        // 180 ms lands between the 150 ms and 200 ms buckets.
        let downtime = "mose_migration_downtime_seconds_bucket";
        assert_eq!(sample(&text, &format!("{downtime}{{le=\"0.15\"}}")), 0.0);
        assert_eq!(sample(&text, &format!("{downtime}{{le=\"0.2\"}}")), 1.0);
        assert_eq!(sample(&text, "mose_migration_duration_seconds_count"), 1.0);
        assert_eq!(sample(&text, "mose_migration_moved_bytes_total"), 1000.0);
        assert_eq!(
            sample(&text, "mose_build_info{version=\"0.1.0\"}"),
            1.0,
            "{text}"
        );
        let mut secure = mose_api::fixtures::agent_view("edge1", Some(Role::Edge));
        if let Some(p) = secure.profile.as_mut() {
            p.security = LinkSecurity::MutualTls {
                common_name: "edge:edge1".into(),
                not_after_unix_s: 1_900_000_000,
            };
        }
        let agents = [
            secure,
            mose_api::fixtures::agent_view("old", Some(Role::Mobile)),
            mose_api::fixtures::agent_view("new", None),
        ];
        let text = render(
            &metrics,
            &Scrape {
                agents: &agents,
                running: 0,
                services: &[],
            },
        );
        let expiry = "mose_agent_certificate_expiry_timestamp_seconds";
        assert_eq!(
            sample(&text, &format!("{expiry}{{agent=\"edge1\"}}")),
            1.9e9
        );
        assert!(!text.contains(&format!("{expiry}{{agent=\"old\"}}")));
        assert_eq!(sample(&text, "mose_agent_insecure{agent=\"old\"}"), 1.0);
        assert_eq!(sample(&text, "mose_agent_insecure{agent=\"edge1\"}"), 0.0);
        assert!(!text.contains("agent=\"new\""), "no profile, no sample");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.rsplit(' ').count(), 2, "{line}");
        }
    }
}
