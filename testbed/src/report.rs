//! The run report in the format of docs/testbed.md#report-format (`target/testbed/report.json`,
//! and the same format for `bench.json` and `vm-report.json`). Field names are that section's,
//! exactly: other tools read them.
//!
//! Every number comes from a measurement: the orchestrator's task record (phases, total,
//! image size, plan) and the live client's timeline (downtime, connection, continuity). A phase
//! the orchestrator did not see is `null`, not 0.

use std::path::Path;

use mose_api::{TaskRecord, TaskStatus};
use mose_protocol::model::{Objective, Strategy};
use serde::{Deserialize, Serialize};

use crate::client::ClientKpis;
use crate::error::{Result, TestbedError};

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What the migrations ran on.
    pub host: HostInfo,
    /// The same steps by a plain script in the same run (bench only; `null` in the demo).
    pub raw_floor_ms: Option<f64>,
    /// One entry per migration.
    pub migrations: Vec<MigrationReport>,
}

/// What the migrations ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `uname -r`.
    pub kernel: String,
    /// `criu --version`.
    pub criu: String,
    /// `podman version`.
    pub podman: String,
    /// Kernel soft-dirty tracking works (pre-copy possible).
    pub dirty_tracking: bool,
}

/// One migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The service migrated.
    pub service: String,
    /// The workload it runs.
    pub workload: String,
    /// Its state size as the source described it.
    pub state_bytes: u64,
    /// Source agent.
    pub from: String,
    /// Destination agent.
    pub to: String,
    /// The strategy the plan chose.
    pub strategy: Strategy,
    /// The KPI the plan optimised.
    pub objective: Objective,
    /// Bandwidth the plan allocated, in bits per second (the plan carries bytes/s).
    pub bandwidth_bits_per_s: Option<u64>,
    /// The migration succeeded.
    pub ok: bool,
    /// Why it did not.
    pub error: Option<String>,
    /// It was rolled back to the source.
    pub rolled_back: bool,
    /// Longest time without a reply around the migration, as the client saw it.
    pub client_downtime_ms: f64,
    /// The client's TCP connection survived.
    pub same_connection: bool,
    /// The client's counter continued without a jump.
    pub state_continuous: bool,
    /// Per-phase durations.
    pub phases_ms: Phases,
    /// Task accepted → source released.
    pub total_ms: f64,
    /// The plan's predictions.
    pub predicted: Option<Predicted>,
    /// The final dump's archive.
    pub image_bytes: u64,
    /// Pre-copy only (absent for cold): each round's archive, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_copy_bytes: Vec<u64>,
}

/// Per-phase durations (first start to last end over all agents' events); `null` when the
/// phase produced no events in this migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Destination readiness.
    pub prepare: Option<f64>,
    /// Moving the container image to a destination that lacked it (absent when none moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<f64>,
    /// Pre-copy only (absent for cold): the rounds, dumps and their fetches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_copy: Option<f64>,
    /// The final dump.
    pub checkpoint: Option<f64>,
    /// Moving the final image.
    pub transfer: Option<f64>,
    /// The destination's service namespace.
    pub netns: Option<f64>,
    /// The restore, its transfer included.
    pub restore: Option<f64>,
    /// Steering the client's flow.
    pub flow_switch: Option<f64>,
    /// Releasing the source.
    pub cleanup: Option<f64>,
}

/// PAM's predictions (upper bounds) for the migration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    /// Predicted downtime, ms.
    pub downtime_ms: f64,
    /// Predicted total migration time, ms.
    pub total_ms: f64,
}

impl MigrationReport {
    /// A finished task as the orchestrator recorded it, with what the client saw meanwhile.
    pub fn from_task(task: &TaskRecord, workload: &str, client: ClientKpis) -> Self {
        let m = &task.measurements;
        let phase = |name: &str| {
            m.phases_ms
                .iter()
                .find(|(p, _)| p.as_str() == name)
                .map(|(_, ms)| *ms)
        };
        MigrationReport {
            service: task.request.service.clone(),
            workload: workload.to_string(),
            state_bytes: task.inputs.state_bytes,
            from: task.route.source.clone(),
            to: task.route.destination.clone(),
            strategy: task.plan.strategy,
            objective: task.plan.objective,
            bandwidth_bits_per_s: Some(task.plan.bandwidth_bytes_per_s.to_bits().0),
            ok: task.status == TaskStatus::Succeeded,
            error: task.error.clone(),
            rolled_back: matches!(task.status, TaskStatus::RolledBack | TaskStatus::Cancelled),
            client_downtime_ms: client.client_downtime_ms,
            same_connection: client.same_connection,
            state_continuous: client.state_continuous,
            phases_ms: Phases {
                prepare: phase("prepare"),
                image: phase("image"),
                pre_copy: phase("pre_copy"),
                checkpoint: phase("checkpoint"),
                transfer: phase("transfer"),
                netns: phase("netns"),
                restore: phase("restore"),
                flow_switch: phase("flow_switch"),
                cleanup: phase("cleanup"),
            },
            // Accepted → finished; a task that never finished has no total yet.
            total_ms: m.total_ms.unwrap_or(f64::NAN),
            predicted: Some(Predicted {
                downtime_ms: task.plan.predicted_downtime_s * 1e3,
                total_ms: task.plan.predicted_total_s * 1e3,
            }),
            image_bytes: m.image_bytes.unwrap_or(0),
            pre_copy_bytes: m.pre_copy_bytes.clone(),
        }
    }
}

impl Report {
    /// Write as pretty JSON (directories created as needed).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| TestbedError::State(format!("encode the report: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| TestbedError::io(format!("create {}", dir.display()), e))?;
        }
        std::fs::write(path, json)
            .map_err(|e| TestbedError::io(format!("write {}", path.display()), e))
    }

    /// The KPI table printed at the end of a demo: one block per migration.
    pub fn kpi_table(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "NO" };
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"));
        let mut out = format!(
            "host: kernel {}, criu {}, podman {}, dirty tracking {}\n",
            self.host.kernel,
            self.host.criu,
            self.host.podman,
            yes(self.host.dirty_tracking)
        );
        for (i, m) in self.migrations.iter().enumerate() {
            let pred = |f: fn(&Predicted) -> f64| m.predicted.as_ref().map(f);
            out.push_str(&format!(
                "\nmigration {n}: {svc} {from} -> {to} ({strategy}, objective {obj}): {status}\n",
                n = i + 1,
                svc = m.service,
                from = m.from,
                to = m.to,
                strategy = m.strategy,
                obj = m.objective,
                status = if m.ok {
                    "ok".to_string()
                } else {
                    format!(
                        "FAILED{}: {}",
                        if m.rolled_back { " (rolled back)" } else { "" },
                        m.error.as_deref().unwrap_or("no error given")
                    )
                },
            ));
            let mut rows: Vec<(String, String, String)> = vec![
                (
                    "client-observed downtime".into(),
                    ms(pred(|p| p.downtime_ms)),
                    ms(Some(m.client_downtime_ms)),
                ),
                (
                    "total migration time".into(),
                    ms(pred(|p| p.total_ms)),
                    ms(Some(m.total_ms).filter(|v| v.is_finite())),
                ),
                ("  prepare".into(), "-".into(), ms(m.phases_ms.prepare)),
                ("  pre-copy".into(), "-".into(), ms(m.phases_ms.pre_copy)),
                (
                    "  checkpoint".into(),
                    "-".into(),
                    ms(m.phases_ms.checkpoint),
                ),
                ("  transfer".into(), "-".into(), ms(m.phases_ms.transfer)),
                ("  netns".into(), "-".into(), ms(m.phases_ms.netns)),
                ("  restore".into(), "-".into(), ms(m.phases_ms.restore)),
                (
                    "  flow switch".into(),
                    "-".into(),
                    ms(m.phases_ms.flow_switch),
                ),
                ("  cleanup".into(), "-".into(), ms(m.phases_ms.cleanup)),
                (
                    "state / image".into(),
                    format!("{} B", m.state_bytes),
                    format!("{} B", m.image_bytes),
                ),
            ];
            if m.phases_ms.pre_copy.is_none() {
                rows.retain(|(k, _, _)| k != "  pre-copy");
            }
            out.push_str(&format!(
                "  {:<26}{:>12}{:>12}\n",
                "KPI", "PREDICTED", "MEASURED"
            ));
            for (k, p, v) in rows {
                out.push_str(&format!("  {k:<26}{p:>12}{v:>12}\n"));
            }
            if !m.pre_copy_bytes.is_empty() {
                let rounds: Vec<String> =
                    m.pre_copy_bytes.iter().map(|b| format!("{b} B")).collect();
                out.push_str(&format!(
                    "  pre-copy rounds ({}): {}\n",
                    rounds.len(),
                    rounds.join(", ")
                ));
            }
            out.push_str(&format!(
                "  same TCP connection: {}\n  state continuous: {}\n",
                yes(m.same_connection),
                yes(m.state_continuous)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            host: HostInfo {
                kernel: "6.18.0".into(),
                criu: "4.2.1".into(),
                podman: "4.3.1".into(),
                dirty_tracking: false,
            },
            raw_floor_ms: None,
            migrations: vec![MigrationReport {
                service: "counter".into(),
                workload: "counter-service".into(),
                state_bytes: 86016,
                from: "edge1".into(),
                to: "edge2".into(),
                strategy: Strategy::Cold,
                objective: Objective::Downtime,
                bandwidth_bits_per_s: Some(1_000_000_000),
                ok: true,
                error: None,
                rolled_back: false,
                client_downtime_ms: 562.0,
                same_connection: true,
                state_continuous: true,
                phases_ms: Phases {
                    prepare: Some(100.0),
                    image: None,
                    pre_copy: None,
                    checkpoint: Some(398.0),
                    transfer: None,
                    netns: None,
                    restore: Some(308.0),
                    flow_switch: Some(31.0),
                    cleanup: Some(104.0),
                },
                total_ms: 950.0,
                predicted: Some(Predicted {
                    downtime_ms: 900.0,
                    total_ms: 1200.0,
                }),
                image_bytes: 190_000,
                pre_copy_bytes: Vec::new(),
            }],
        }
    }

    #[test]
    fn json_has_exactly_the_spec_field_names() {
        let v = serde_json::to_value(sample()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), ["host", "migrations", "raw_floor_ms"]);
        assert_eq!(
            keys(&v["host"]),
            ["criu", "dirty_tracking", "kernel", "podman"]
        );
        let m = &v["migrations"][0];
        assert_eq!(
            keys(m),
            [
                "bandwidth_bits_per_s",
                "client_downtime_ms",
                "error",
                "from",
                "image_bytes",
                "objective",
                "ok",
                "phases_ms",
                "predicted",
                "rolled_back",
                "same_connection",
                "service",
                "state_bytes",
                "state_continuous",
                "strategy",
                "to",
                "total_ms",
                "workload"
            ]
        );
        assert_eq!(
            keys(&m["phases_ms"]),
            [
                "checkpoint",
                "cleanup",
                "flow_switch",
                "netns",
                "prepare",
                "restore",
                "transfer"
            ]
        );
        assert_eq!(keys(&m["predicted"]), ["downtime_ms", "total_ms"]);
        assert_eq!(m["strategy"], "cold");
        assert_eq!(m["objective"], "downtime");
        assert!(v["raw_floor_ms"].is_null() && m["phases_ms"]["transfer"].is_null());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn kpi_table_says_yes_only_for_what_held() {
        let mut r = sample();
        let t = r.kpi_table();
        assert!(t.contains("same TCP connection: yes") && t.contains("state continuous: yes"));
        assert!(t.contains("562 ms") && t.contains("900 ms"), "{t}");
        assert!(!t.contains("pre-copy"), "cold shows no pre-copy rows: {t}");
        r.migrations[0].state_continuous = false;
        assert!(r.kpi_table().contains("state continuous: NO"));
        r.migrations[0].phases_ms.pre_copy = Some(4200.0);
        r.migrations[0].pre_copy_bytes = vec![16_900_000, 2_100_000];
        let t = r.kpi_table();
        assert!(
            t.contains("4200 ms") && t.contains("pre-copy rounds (2): 16900000 B, 2100000 B"),
            "{t}"
        );
    }

    #[test]
    fn report_is_written_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/report.json");
        sample().write(&path).unwrap();
        let back: Report = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, sample());
    }
}
