//! `GET /metrics` in the Prometheus text format (version 0.0.4), written by hand: a few
//! gauges, counters and histograms derived from the agents' view and the task store at scrape
//! time, so nothing can drift from what the API shows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::registry::AgentView;
use crate::tasks::{TaskRecord, TaskStatus};

/// Histogram buckets (s), spanning a fast cold migration (≈0.5 s) to a slow pre-copy.
const BUCKETS_S: [f64; 9] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// The exposition for these agents and tasks.
pub fn render(agents: &[AgentView], tasks: &[TaskRecord]) -> String {
    let mut out = String::new();

    let mut by_role: BTreeMap<String, u64> = ["edge", "mobile", "unknown"]
        .into_iter()
        .map(|r| (r.to_string(), 0))
        .collect();
    for a in agents {
        let role = a
            .profile
            .as_ref()
            .map_or("unknown".to_string(), |p| p.role.to_string());
        *by_role.entry(role).or_default() += 1;
    }
    header(
        &mut out,
        "mose_agents_online",
        "gauge",
        "Agents present, by role (unknown: no profile yet).",
    );
    for (role, n) in &by_role {
        let _ = writeln!(out, "mose_agents_online{{role=\"{role}\"}} {n}");
    }

    let mut outcomes: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut running = 0u64;
    let mut frozen = Histogram::default();
    let mut duration = Histogram::default();
    let mut bytes_moved = 0u64;
    for t in tasks {
        if !t.status.is_finished() {
            running += 1;
            continue;
        }
        *outcomes
            .entry((t.plan.strategy.to_string(), t.status.as_str()))
            .or_default() += 1;
        if t.status == TaskStatus::Succeeded {
            let m = &t.measurements;
            if let Some(ms) = m.frozen_ms {
                frozen.observe(ms / 1000.0);
            }
            if let Some(ms) = m.total_ms {
                duration.observe(ms / 1000.0);
            }
            bytes_moved += m.image_bytes.unwrap_or(0);
        }
    }
    header(
        &mut out,
        "mose_migrations_running",
        "gauge",
        "Migrations queued or running.",
    );
    let _ = writeln!(out, "mose_migrations_running {running}");
    header(
        &mut out,
        "mose_migrations_total",
        "counter",
        "Finished migrations by planned strategy and outcome.",
    );
    for ((strategy, outcome), n) in &outcomes {
        let _ = writeln!(
            out,
            "mose_migrations_total{{strategy=\"{strategy}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    frozen.write(
        &mut out,
        "mose_migration_downtime_seconds",
        "Frozen time of succeeded migrations as the orchestrator sees it (checkpoint start to flow switched).",
    );
    duration.write(
        &mut out,
        "mose_migration_duration_seconds",
        "Total time of succeeded migrations (accepted to source released).",
    );
    header(
        &mut out,
        "mose_migration_bytes_moved_total",
        "counter",
        "Checkpoint image bytes of succeeded migrations.",
    );
    let _ = writeln!(out, "mose_migration_bytes_moved_total {bytes_moved}");
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_S.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        for (bound, count) in BUCKETS_S.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        for (bound, count) in BUCKETS_S.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mose_api::fixtures::task_record as record;

    #[test]
    fn counts_outcomes_histograms_and_bytes() {
        let mut ok = record("a", 1, TaskStatus::Succeeded);
        ok.measurements.frozen_ms = Some(400.0);
        ok.measurements.total_ms = Some(1500.0);
        ok.measurements.image_bytes = Some(1000);
        let tasks = vec![
            ok,
            record("b", 2, TaskStatus::RolledBack),
            record("c", 3, TaskStatus::Running),
        ];
        let text = render(&[], &tasks);
        assert!(
            text.contains("mose_agents_online{role=\"edge\"} 0"),
            "{text}"
        );
        assert!(text.contains("mose_migrations_running 1"));
        assert!(text.contains("mose_migrations_total{strategy=\"cold\",outcome=\"succeeded\"} 1"));
        assert!(text.contains("mose_migrations_total{strategy=\"cold\",outcome=\"rolled_back\"} 1"));
        assert!(text.contains("mose_migration_downtime_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("mose_migration_downtime_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("mose_migration_duration_seconds_bucket{le=\"2\"} 1"));
        assert!(text.contains("mose_migration_duration_seconds_count 1"));
        assert!(text.contains("mose_migration_bytes_moved_total 1000"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.rsplit(' ').count(), 2, "{line}");
        }
    }
}
