//! What the `mose` CLI (and the testbed) print: aligned tables of agents and migrations, the plan
//! in a few lines, one line per phase event, predicted vs measured; and the parsers of the
//! durations and rates operators type.

use std::fmt::Write as _;

use mose_protocol::messages::{now_us, PhaseEvent, PhaseStatus};
use mose_protocol::units::{BitsPerSec, BytesPerSec};

use crate::agents::AgentView;
use crate::services::{ServiceRecord, ServiceView};
use crate::tasks::TaskRecord;

/// The agents as an aligned text table.
pub fn agents_table(agents: &[AgentView]) -> String {
    let mut rows = vec![[
        "ID",
        "ROLE",
        "HOST",
        "CPU%",
        "MEM USED",
        "LOAD1",
        "CONTAINERS",
        "CRIU",
        "DIRTY-TRACK",
        "METRICS AGE",
    ]
    .map(String::from)];
    let now = now_us();
    for a in agents {
        let p = a.profile.as_ref();
        let m = a.metrics.as_ref();
        let caps = p.and_then(|p| p.capabilities.as_ref());
        let dash = || "-".to_string();
        rows.push([
            a.id.clone(),
            p.map_or_else(dash, |p| p.role.to_string()),
            p.map_or_else(dash, |p| p.hostname.clone()),
            m.map_or_else(dash, |m| format!("{:.0}", m.host.cpu_percent)),
            m.map_or_else(dash, |m| {
                format!(
                    "{} / {}",
                    mib(m.host.mem_used_bytes),
                    mib(m.host.mem_total_bytes)
                )
            }),
            m.map_or_else(dash, |m| format!("{:.2}", m.host.load_avg[0])),
            m.map_or_else(dash, |m| m.containers.len().to_string()),
            caps.and_then(|c| c.criu_version.clone())
                .unwrap_or_else(dash),
            // Not probed yet reads as such, not as "no".
            caps.map_or_else(|| "probing".into(), |c| yes_no(c.dirty_tracking)),
            a.metrics_received_us.map_or_else(dash, |t| {
                format!("{:.1}s", now.saturating_sub(t) as f64 / 1e6)
            }),
        ]);
    }
    aligned(&rows)
}

/// Rows as left-aligned columns two spaces apart; the first row is the header.
fn aligned<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.as_ref()[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// The migrations as an aligned text table, in the order given.
pub fn migrations_table(tasks: &[TaskRecord]) -> String {
    let mut rows = vec![[
        "ID",
        "SERVICE",
        "FROM",
        "TO",
        "STRATEGY",
        "STATUS",
        "PHASE",
        "PRED DOWN",
        "FROZEN",
        "TOTAL",
    ]
    .map(String::from)];
    for t in tasks {
        let m = &t.measurements;
        rows.push([
            t.id.clone(),
            t.request.service.clone(),
            t.route.source.clone(),
            t.route.destination.clone(),
            t.plan.strategy.to_string(),
            t.status.to_string(),
            t.phase
                .map_or_else(|| "-".to_string(), |p| p.as_str().to_string()),
            millis(Some(t.plan.predicted_downtime_s * 1000.0)),
            millis(m.frozen_ms),
            millis(m.total_ms),
        ]);
    }
    aligned(&rows)
}

/// The services as an aligned text table.
pub fn services_table(services: &[ServiceRecord]) -> String {
    let mut rows = vec![[
        "NAME",
        "HOST",
        "STATUS",
        "ADDRESS",
        "IMAGE",
        "MOBILES",
        "LAST MIGRATION",
    ]
    .map(String::from)];
    for s in services {
        rows.push([
            s.name.clone(),
            s.host.clone(),
            s.status.to_string(),
            format!("{}/{}", s.network.ip, s.network.prefix_len),
            s.image.clone(),
            match s.mobiles.is_empty() {
                true => "-".into(),
                false => s.mobiles.join(","),
            },
            s.last_migration.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    aligned(&rows)
}

/// One service in a few lines: where it runs, its identity, its live state.
pub fn service_summary(view: &ServiceView) -> String {
    let s = &view.record;
    let mut out = String::new();
    let _ = writeln!(out, "service {}: {} on {}", s.name, s.status, s.host);
    let _ = writeln!(out, "image:   {}", s.image);
    let _ = writeln!(
        out,
        "address: {}/{} mac {}",
        s.network.ip,
        s.network.prefix_len,
        mac(s.network.mac)
    );
    let mobiles = match s.mobiles.is_empty() {
        true => "none".to_string(),
        false => s.mobiles.join(", "),
    };
    let _ = writeln!(out, "mobiles: {mobiles}");
    for v in &s.volumes {
        let _ = writeln!(out, "volume:  {} at {}", v.name, v.path);
    }
    if let Some(bytes) = view.state_bytes {
        let _ = writeln!(
            out,
            "state:   {:.1} MiB (M)",
            bytes as f64 / f64::from(1 << 20)
        );
    }
    if let Some(rate) = view.dirty_rate_bytes_per_s {
        let _ = writeln!(
            out,
            "dirty:   {:.1} MiB/s (R)",
            rate.0 as f64 / f64::from(1 << 20)
        );
    }
    for c in &view.clients {
        let _ = writeln!(out, "client:  {} mac {}", c.ip, mac(c.mac));
    }
    match (&view.migrating, &s.last_migration) {
        (Some(task), _) => {
            let _ = writeln!(out, "migrating: {task}");
        }
        (None, Some(task)) => {
            let _ = writeln!(out, "last migration: {task}");
        }
        (None, None) => {}
    }
    for note in &view.notes {
        let _ = writeln!(out, "note:    {note}");
    }
    out
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// The plan in a few lines: strategy, bandwidth, rounds, predictions and why.
pub fn plan_summary(task: &TaskRecord) -> String {
    let p = &task.plan;
    format!(
        "migration {id}: {service} {from} → {to}\n\
         plan: {strategy}, {rounds} pre-copy round(s), {bw:.1} MB/s; predicted downtime {down}, \
         total {total}{met}\n\
         why: {why}\n",
        id = task.id,
        service = task.request.service,
        from = task.route.source,
        to = task.route.destination,
        strategy = p.strategy,
        rounds = p.rounds,
        bw = p.bandwidth_bytes_per_s.0 as f64 / 1e6,
        down = millis(Some(p.predicted_downtime_s * 1000.0)),
        total = millis(Some(p.predicted_total_s * 1000.0)),
        met = if p.target_met {
            ""
        } else {
            " (targets NOT met)"
        },
        why = p.explanation,
    )
}

/// One progress line for a phase event, timed from the task's creation.
pub fn event_line(event: &PhaseEvent, created_us: u64) -> String {
    let at = event.at_us.saturating_sub(created_us) as f64 / 1e6;
    let what = match &event.status {
        PhaseStatus::Started => "started".to_string(),
        PhaseStatus::Finished => "done".to_string(),
        PhaseStatus::Failed { error } => format!("FAILED: {error}"),
    };
    format!(
        "[{at:>7.3}s] {:<12} {:<8} {what}",
        event.phase.as_str(),
        event.agent
    )
}

/// Predicted vs measured, once the task has finished.
pub fn kpi_table(task: &TaskRecord) -> String {
    let m = &task.measurements;
    let p = &task.plan;
    let mut rows = vec![["KPI", "PREDICTED", "MEASURED"].map(String::from)];
    rows.push([
        "downtime (frozen)".into(),
        millis(Some(p.predicted_downtime_s * 1000.0)),
        millis(m.frozen_ms),
    ]);
    rows.push([
        "total".into(),
        millis(Some(p.predicted_total_s * 1000.0)),
        millis(m.total_ms),
    ]);
    for (phase, ms) in &m.phases_ms {
        rows.push([format!("  {phase}"), "-".into(), millis(Some(*ms))]);
    }
    rows.push([
        "image".into(),
        format!("{} B (M)", task.inputs.state_bytes),
        m.image_bytes
            .map_or_else(|| "-".into(), |b| format!("{b} B")),
    ]);
    let mut out = aligned(&rows);
    let _ = writeln!(out, "status: {}", task.status);
    for fault in &task.faults {
        let _ = writeln!(out, "fault: {fault}");
    }
    if let Some(error) = &task.error {
        let _ = writeln!(out, "error: {error}");
    }
    out
}

fn millis(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.0} ms"))
}

/// A number followed by one of `units` (`(name, scale)`), as number × scale. `kind` and
/// `example` make the error messages ("'x' is not a duration like 500ms, 1s or 1.5s").
fn parse_with_unit(
    text: &str,
    kind: &str,
    example: &str,
    units: &[(&str, f64)],
) -> Result<f64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a {kind} like {example}"))?;
    let names = || units.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    match (unit.trim(), units.iter().find(|(n, _)| *n == unit.trim())) {
        (_, Some((_, scale))) => Ok(value * scale),
        ("", None) => Err(format!("'{text}' needs a unit: {}", names())),
        (other, None) => Err(format!(
            "unknown unit '{other}' in '{text}': use {}",
            names()
        )),
    }
}

/// Parses a duration such as `500ms`, `1s`, `1.5s` or `2m` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<f64, String> {
    parse_with_unit(
        text,
        "duration",
        "500ms, 1s or 1.5s",
        &[
            ("ms", 1.0),
            ("s", 1000.0),
            ("m", 60_000.0),
            ("min", 60_000.0),
        ],
    )
}

/// A link rate like `100Mbit`, `1.5Gbit` or `800kbit` (per second, SI prefixes), as whole
/// **bytes** per second (what the task API takes).
pub fn parse_bandwidth_bytes_per_s(text: &str) -> Result<BytesPerSec, String> {
    let bytes = parse_rate_bits_per_s(text)?.to_bytes();
    if bytes.0 < 1 {
        return Err(format!(
            "'{}' is less than one byte per second",
            text.trim()
        ));
    }
    Ok(bytes)
}

/// A link rate as operators write it (`100Mbit`, `1Gbit`, `800kbit`), in bits per second.
pub fn parse_rate_bits_per_s(text: &str) -> Result<BitsPerSec, String> {
    let bits = parse_with_unit(
        text,
        "rate",
        "100Mbit, 1Gbit or 800kbit",
        &[("bit", 1.0), ("kbit", 1e3), ("Mbit", 1e6), ("Gbit", 1e9)],
    )?;
    Ok(BitsPerSec(mose_protocol::units::saturating_u64(
        bits.floor(),
    )))
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1 << 20))
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500.0));
        assert_eq!(parse_duration_ms("1s"), Ok(1000.0));
        assert_eq!(
            parse_bandwidth_bytes_per_s("100Mbit"),
            Ok(BytesPerSec(12_500_000))
        );
        assert_eq!(parse_rate_bits_per_s("50Mbit"), Ok(BitsPerSec(50_000_000)));
        assert_eq!(
            parse_bandwidth_bytes_per_s("1.5Gbit"),
            Ok(BytesPerSec(187_500_000))
        );
        for bad in ["100", "fast", "100MB", "0Mbit", "4bit"] {
            assert!(parse_bandwidth_bytes_per_s(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500.0));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000.0));
        for bad in ["", "5", "s", "1h", "-1s", "1..2s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn migration_tables_render() {
        use mose_protocol::messages::Phase;
        let mut task = crate::fixtures::task_record("m1", 0, crate::tasks::TaskStatus::Succeeded);
        task.measurements.frozen_ms = Some(640.0);
        task.measurements.phases_ms.insert(Phase::Restore, 300.0);
        let table = migrations_table(std::slice::from_ref(&task));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].starts_with("m1") && lines[1].contains("succeeded"),
            "{table}"
        );
        let kpi = kpi_table(&task);
        assert!(kpi.contains("900 ms") && kpi.contains("640 ms"), "{kpi}");
        assert!(
            kpi.contains("  restore") && kpi.contains("status: succeeded"),
            "{kpi}"
        );
        assert!(plan_summary(&task).contains("counter edge1 → edge2"));
    }

    #[test]
    fn table_has_a_row_per_agent_even_without_profile() {
        let agents = vec![AgentView {
            id: "edge1".into(),
            joined_us: 0,
            profile: None,
            metrics: None,
            metrics_received_us: None,
        }];
        let table = agents_table(&agents);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].starts_with("edge1"));
    }
}
