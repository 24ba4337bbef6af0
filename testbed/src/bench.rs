//! `mose-testbed bench` (docs/testbed.md#benchmark): measured claims, each against a baseline
//! of the same run.
//!
//! 1. **MOSE vs the raw-tool floor.** With a live client on the mobile host, the counter
//!    migrates edge1 → edge2 through the orchestrator (COAT over Zenoh), then back edge2 →
//!    edge1 by a plain script: `podman container checkpoint --export --tcp-established`, a TCP
//!    copy of the archive over the LAN, `podman container restore --import --tcp-established`,
//!    the flow switch on the mobile bridge — back to back, with the destination namespace made
//!    beforehand (as COAT does). Both downtimes are what the client observed; their medians give
//!    the ratio. The floor has no orchestration, no Zenoh, no rollback safety: it is the
//!    cheapest way the same tools can move the service.
//! 2. **PAM as an upper bound.** The counter is redeployed with M MiB of state dirtied at R
//!    MiB/s, the edges' LAN links are shaped to L, and it migrates back and forth with the
//!    task API told L. Each migration's client-observed downtime is set against the plan's
//!    predicted downtime.
//!
//! Everything goes to `bench.json` in the report format, plus `bench-floor.json` (the floor's
//! per-step times) and the client timelines, so every number printed can be recomputed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mose_agent::coat::{host_ifname, netns_name};
use mose_api::{ClientError, TaskRecord, TaskStatus};
use mose_overlay::ServiceAddr;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::client::{ClientKpis, LiveClient};
use crate::demo::{host_info, migrate, start_client, Targets};
use crate::error::{Result, TestbedError};
use crate::fourhost::{
    overlay_mac, port_toward, FourHost, EDGE1, EDGE2, MOBILE, SERVICE, SERVICE_IP,
};
use crate::images::COUNTER;
use crate::lan::LinkShape;
use crate::report::{MigrationReport, Report};
use mose_protocol::units::BitsPerSec;

/// The workload name in the report.
const WORKLOAD: &str = "counter-service";
/// Replies the client must get after a migration before the next one starts.
const SERVED_AGAIN: u64 = 20;
/// The floor's archive, inside each edge host's private /var/tmp.
const FLOOR_ARCHIVE: &str = "/var/tmp/mose-floor.tar";
/// Port of the floor's archive copy on the destination's LAN address.
const FLOOR_COPY_PORT: u16 = 7999;
/// How long one floor podman command may take.
const FLOOR_STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// MOSE/floor pairs in part 1.
    pub runs: u32,
    /// KPI targets every MOSE migration is planned against.
    pub targets: Targets,
    /// Part 2; `None` skips it.
    pub sweep: Option<Sweep>,
}

/// The PAM validation grid: every state size at every link rate, `repeats` round trips each.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// State sizes, MiB.
    pub sizes_mib: Vec<u32>,
    /// Link rates; each edge's LAN link is shaped to it and the task API is told.
    pub rates: Vec<BitsPerSec>,
    /// Dirty rate of the memory workload, MiB/s.
    pub dirty_mib_per_s: f64,
    /// Round trips per grid point.
    pub repeats: u32,
}

impl Sweep {
    /// Migrations the sweep runs (two per round trip).
    pub fn migrations(&self) -> usize {
        self.sizes_mib.len() * self.rates.len() * self.repeats as usize * 2
    }
}

/// One migration by the plain script, timed step by step (ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorRun {
    /// The edge the service left.
    pub from: String,
    /// The edge it moved to.
    pub to: String,
    /// Checkpoint with export, ms.
    pub checkpoint_ms: f64,
    /// Copying the archive to the destination, ms.
    pub transfer_ms: f64,
    /// Restore from the archive, ms.
    pub restore_ms: f64,
    /// Re-pointing the client's flow, ms.
    pub flow_switch_ms: f64,
    /// Checkpoint start → flow switched.
    pub total_ms: f64,
    /// Size of the checkpoint archive.
    pub image_bytes: u64,
    /// What the client saw during the run.
    pub client: ClientKpis,
}

/// What a bench produced.
pub struct BenchOutcome {
    /// Every MOSE migration of the run.
    pub report: Report,
    /// The plain script's runs of part 1.
    pub floor: Vec<FloorRun>,
    /// Part 1's MOSE migrations are `report.migrations[..mose_runs]`; the sweep's follow.
    pub mose_runs: usize,
    /// Why the bench stopped early; what was measured until then is in the report.
    pub stopped: Option<String>,
}

/// Run the bench on a testbed that is up (the counter on edge1, no client yet).
pub async fn run(
    tb: &FourHost,
    cfg: &BenchConfig,
    out_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchOutcome> {
    let mut migrations = Vec::new();
    let mut floor = Vec::new();
    place_by_hand(tb, BTreeMap::new()).await?;
    let mut stopped = floor_comparison(tb, cfg, &mut migrations, &mut floor, out_dir, progress)
        .await
        .err()
        .map(|e| e.to_string());
    let mose_runs = migrations.len();
    if let (None, Some(sweep)) = (&stopped, &cfg.sweep) {
        let swept = pam_sweep(tb, cfg.targets, sweep, &mut migrations, out_dir, progress).await;
        // The links are unshaped whatever happened: the testbed may be used on.
        for edge in [EDGE1, EDGE2] {
            tb.lan()?.unshape(tb.host(edge)?).await?;
        }
        stopped = swept.err().map(|e| e.to_string());
    }
    let report = Report {
        host: host_info(&tb.state().api()?).await?,
        raw_floor_ms: median(floor.iter().map(|f| f.client.client_downtime_ms)),
        migrations,
    };
    report.write(&out_dir.join("bench.json"))?;
    write_json(&out_dir.join("bench-floor.json"), &floor)?;
    Ok(BenchOutcome {
        report,
        floor,
        mose_runs,
        stopped,
    })
}

/// The floor moves the service behind the orchestrator's back, which would leave a deployed
/// service's record pointing at the wrong host. So the bench runs the counter as a container
/// placed by hand (its migrations name their source), as an operator's pre-existing container
/// would be: the deployed one is removed through the API first.
async fn place_by_hand(tb: &FourHost, env: BTreeMap<String, String>) -> Result<()> {
    match tb.state().api()?.remove_service(SERVICE).await {
        Ok(()) | Err(ClientError::Api { status: 404, .. }) => {}
        Err(e) => return Err(e.into()),
    }
    tb.place_endpoint(EDGE1).await?;
    tb.start_service(EDGE1, COUNTER.reference, env).await?;
    let mobile = tb.overlay(MOBILE)?;
    let service = ServiceAddr {
        ip: SERVICE_IP,
        mac: overlay_mac(SERVICE_IP),
    };
    mobile
        .steer(service, mobile.ofport(&port_toward(EDGE1)).await?)
        .await?;
    Ok(())
}

/// Part 1: `runs` × (MOSE edge1 → edge2, floor edge2 → edge1) under one live client.
async fn floor_comparison(
    tb: &FourHost,
    cfg: &BenchConfig,
    migrations: &mut Vec<MigrationReport>,
    floor: &mut Vec<FloorRun>,
    out_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let client = start_client(tb.state(), progress).await?;
    let mut windows: Vec<(Option<TaskRecord>, Option<FloorSteps>, f64, f64)> = Vec::new();
    let mut failure = None;
    for run in 1..=cfg.runs {
        progress(&format!(
            "\n== run {run}/{}: MOSE {EDGE1} -> {EDGE2}",
            cfg.runs
        ));
        let t0 = client.now_ms();
        let task = migrate(tb.state(), EDGE1, EDGE2, cfg.targets, progress).await;
        let served = client
            .served_again(SERVED_AGAIN, Duration::from_secs(30))
            .await;
        let t1 = client.now_ms();
        match task {
            Ok(task) => {
                let ok = task.status == TaskStatus::Succeeded;
                let id = task.id.clone();
                windows.push((Some(task), None, t0, t1));
                if !ok {
                    failure = Some(format!("MOSE migration {id} did not succeed"));
                    break;
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
        if let Err(e) = served {
            failure = Some(format!("after the MOSE migration: {e}"));
            break;
        }

        progress(&format!(
            "== run {run}/{}: plain script {EDGE2} -> {EDGE1}",
            cfg.runs
        ));
        let t0 = client.now_ms();
        let steps = raw_migrate(tb, EDGE2, EDGE1).await;
        let served = client
            .served_again(SERVED_AGAIN, Duration::from_secs(30))
            .await;
        let t1 = client.now_ms();
        match steps {
            Ok(s) => {
                progress(&format!(
                    "  checkpoint {:.0} ms, copy {:.0} ms ({} B), restore {:.0} ms, flow switch {:.0} ms",
                    s.checkpoint_ms, s.transfer_ms, s.image_bytes, s.restore_ms, s.flow_switch_ms
                ));
                windows.push((None, Some(s), t0, t1));
            }
            Err(e) => {
                failure = Some(format!("plain-script migration: {e}"));
                break;
            }
        }
        if let Err(e) = served {
            failure = Some(format!("after the plain-script migration: {e}"));
            break;
        }
    }
    let timeline = finish(client).await;
    write_json(&out_dir.join("bench-client-timeline.json"), &timeline)?;
    for (task, steps, t0, t1) in windows {
        let kpis = timeline.kpis(t0, t1);
        match (task, steps) {
            (Some(task), _) => migrations.push(MigrationReport::from_task(&task, WORKLOAD, kpis)),
            (None, Some(s)) => floor.push(s.into_run(kpis)),
            (None, None) => {}
        }
    }
    failure.map_or(Ok(()), |f| Err(TestbedError::State(f)))
}

/// Part 2: the PAM grid, each point with a freshly deployed service of that state size.
async fn pam_sweep(
    tb: &FourHost,
    targets: Targets,
    sweep: &Sweep,
    migrations: &mut Vec<MigrationReport>,
    out_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut point = 0;
    for &mib in &sweep.sizes_mib {
        for &rate in &sweep.rates {
            point += 1;
            progress(&format!(
                "\n== PAM point {point}/{}: state {mib} MiB dirtied at {} MiB/s, links at {}",
                sweep.sizes_mib.len() * sweep.rates.len(),
                sweep.dirty_mib_per_s,
                rate
            ));
            for edge in [EDGE1, EDGE2] {
                tb.lan()?
                    .shape(tb.host(edge)?, LinkShape::rate(rate))
                    .await?;
            }
            redeploy(tb, mib, sweep.dirty_mib_per_s).await?;
            let client = start_client(tb.state(), progress).await?;
            // The agent samples the dirty rate once a second: let it see a few.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let targets = Targets {
                bandwidth_bytes_per_s: Some(rate.to_bytes()),
                ..targets
            };
            let mut windows = Vec::new();
            let mut failure = None;
            'point: for _ in 0..sweep.repeats {
                for (from, to) in [(EDGE1, EDGE2), (EDGE2, EDGE1)] {
                    let t0 = client.now_ms();
                    let task = migrate(tb.state(), from, to, targets, progress).await;
                    let served = client
                        .served_again(SERVED_AGAIN, Duration::from_secs(60))
                        .await;
                    let t1 = client.now_ms();
                    match task {
                        Ok(t) if t.status == TaskStatus::Succeeded => windows.push((t, t0, t1)),
                        Ok(t) => {
                            failure = Some(format!("migration {} ended {}", t.id, t.status));
                            windows.push((t, t0, t1));
                            break 'point;
                        }
                        Err(e) => {
                            failure = Some(e.to_string());
                            break 'point;
                        }
                    }
                    if let Err(e) = served {
                        failure = Some(e.to_string());
                        break 'point;
                    }
                }
            }
            let timeline = finish(client).await;
            write_json(
                &out_dir.join(format!("bench-client-timeline-{mib}mib-{}.json", rate)),
                &timeline,
            )?;
            for (task, t0, t1) in windows {
                let m = MigrationReport::from_task(&task, WORKLOAD, timeline.kpis(t0, t1));
                progress(&pam_line(&m));
                migrations.push(m);
            }
            if let Some(f) = failure {
                return Err(TestbedError::State(f));
            }
        }
    }
    Ok(())
}

/// Stop the client after a short tail: a window's connection verdict needs replies after it.
async fn finish(client: LiveClient) -> crate::client::Timeline {
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.finish()
}

/// The service anew on the edge it runs on, holding `mib` MiB dirtied at `rate` MiB/s.
async fn redeploy(tb: &FourHost, mib: u32, rate: f64) -> Result<()> {
    let at = tb
        .state()
        .service_location()
        .await?
        .ok_or_else(|| TestbedError::State("the service runs on no edge host".into()))?;
    let host = tb.host(&at)?;
    host.podman_output(
        ["rm", "--force", "--time", "0", SERVICE],
        FLOOR_STEP_TIMEOUT,
    )
    .await?;
    let env = BTreeMap::from([
        ("STATE_MIB".to_string(), mib.to_string()),
        ("DIRTY_MIB_PER_SEC".to_string(), rate.to_string()),
    ]);
    tb.start_service(&at, COUNTER.reference, env).await
}

/// The floor's step times, before the client's verdict is known.
struct FloorSteps {
    from: String,
    to: String,
    checkpoint_ms: f64,
    transfer_ms: f64,
    restore_ms: f64,
    flow_switch_ms: f64,
    total_ms: f64,
    image_bytes: u64,
}

impl FloorSteps {
    fn into_run(self, client: ClientKpis) -> FloorRun {
        FloorRun {
            from: self.from,
            to: self.to,
            checkpoint_ms: self.checkpoint_ms,
            transfer_ms: self.transfer_ms,
            restore_ms: self.restore_ms,
            flow_switch_ms: self.flow_switch_ms,
            total_ms: self.total_ms,
            image_bytes: self.image_bytes,
            client,
        }
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The plain script: the same tools as COAT, back to back, nothing else.
async fn raw_migrate(tb: &FourHost, from: &str, to: &str) -> Result<FloorSteps> {
    let (src, dst) = (tb.host(from)?, tb.host(to)?);
    // Before the freeze, as COAT's Prepare: the namespace and local flows on the destination.
    tb.place_endpoint(to).await?;
    let mobile = tb.overlay(MOBILE)?;
    let toward = mobile.ofport(&port_toward(to)).await?;
    let (src_file, dst_file) = (outside(src, FLOOR_ARCHIVE)?, outside(dst, FLOOR_ARCHIVE)?);
    let listen_at = SocketAddr::from((dst.addr(), FLOOR_COPY_PORT));
    let listener = dst.tcp_listen(listen_at).await?;

    let start = Instant::now();
    let t = Instant::now();
    let export = format!("--export={FLOOR_ARCHIVE}");
    src.podman_output(
        [
            "container",
            "checkpoint",
            "--tcp-established",
            &export,
            SERVICE,
        ],
        FLOOR_STEP_TIMEOUT,
    )
    .await?;
    let checkpoint_ms = ms_since(t);

    let t = Instant::now();
    let image_bytes = copy_over_lan(src, listener, listen_at, &src_file, &dst_file).await?;
    let transfer_ms = ms_since(t);

    let t = Instant::now();
    let import = format!("--import={FLOOR_ARCHIVE}");
    dst.podman_output(
        ["container", "restore", "--tcp-established", &import],
        FLOOR_STEP_TIMEOUT,
    )
    .await?;
    let restore_ms = ms_since(t);

    let t = Instant::now();
    let service = ServiceAddr {
        ip: SERVICE_IP,
        mac: overlay_mac(SERVICE_IP),
    };
    mobile.steer(service, toward).await?;
    let flow_switch_ms = ms_since(t);
    let total_ms = ms_since(start);

    // After the switch, not timed: the source lets go (as COAT's Release).
    src.podman_output(
        ["rm", "--force", "--time", "0", SERVICE],
        FLOOR_STEP_TIMEOUT,
    )
    .await?;
    src.run("ip", ["netns", "delete", &netns_name(SERVICE)])
        .await?;
    let source_overlay = tb.overlay(from)?;
    source_overlay.remove_port(&host_ifname(SERVICE)).await?;
    source_overlay.unsteer(SERVICE_IP).await?;
    for f in [&src_file, &dst_file] {
        let _ = std::fs::remove_file(f);
    }
    Ok(FloorSteps {
        from: from.into(),
        to: to.into(),
        checkpoint_ms,
        transfer_ms,
        restore_ms,
        flow_switch_ms,
        total_ms,
        image_bytes,
    })
}

fn outside(host: &crate::host::Host, inside: &str) -> Result<std::path::PathBuf> {
    host.outside_path(inside).ok_or_else(|| {
        TestbedError::State(format!("{inside} of {} has no outside path", host.name()))
    })
}

/// Copy `from_file` (on the source) to `to_file` (on the destination) over one TCP connection
/// on the LAN: what scp would do, minus the encryption.
async fn copy_over_lan(
    src: &crate::host::Host,
    listener: tokio::net::TcpListener,
    listen_at: SocketAddr,
    from_file: &Path,
    to_file: &Path,
) -> Result<u64> {
    let to_file = to_file.to_path_buf();
    let receive = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut out = tokio::fs::File::create(&to_file).await?;
        let n = tokio::io::copy(&mut stream, &mut out).await?;
        out.sync_all().await?;
        Ok::<u64, std::io::Error>(n)
    });
    let mut stream = src.tcp_connect(listen_at, Duration::from_secs(5)).await?;
    let mut input = tokio::fs::File::open(from_file)
        .await
        .map_err(|e| TestbedError::io(format!("open {}", from_file.display()), e))?;
    let sent = tokio::io::copy(&mut input, &mut stream)
        .await
        .map_err(|e| TestbedError::io("send the archive", e))?;
    stream
        .shutdown()
        .await
        .map_err(|e| TestbedError::io("close the archive copy", e))?;
    let received = receive
        .await
        .map_err(|e| TestbedError::State(format!("archive receiver failed: {e}")))?
        .map_err(|e| TestbedError::io("receive the archive", e))?;
    if received != sent {
        return Err(TestbedError::State(format!(
            "archive copy cut short: sent {sent} B, received {received} B"
        )));
    }
    Ok(sent)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| TestbedError::State(format!("encode {}: {e}", path.display())))?;
    std::fs::write(path, json).map_err(|e| TestbedError::io(format!("write {}", path.display()), e))
}

/// Median of the finite values (`None` when there are none).
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    percentile(values, 50.0)
}

/// Nearest-rank percentile `p` (0..=100) of the finite values.
pub fn percentile(values: impl Iterator<Item = f64>, p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = usize::try_from(mose_protocol::units::saturating_u64(
        ((p / 100.0) * v.len() as f64).ceil().max(1.0),
    ))
    .unwrap_or(v.len());
    Some(v[rank.min(v.len()) - 1])
}

fn pam_line(m: &MigrationReport) -> String {
    let predicted = m.predicted.map(|p| p.downtime_ms);
    format!(
        "  {} -> {}: M {:.1} MiB, image {:.1} MiB, downtime predicted {} measured {:.0} ms{}",
        m.from,
        m.to,
        m.state_bytes as f64 / (1 << 20) as f64,
        m.image_bytes as f64 / (1 << 20) as f64,
        predicted.map_or("-".into(), |p| format!("{p:.0} ms")),
        m.client_downtime_ms,
        match predicted {
            Some(p) if m.client_downtime_ms <= p => "  (within)".to_string(),
            Some(_) => "  (ABOVE the prediction)".to_string(),
            None => String::new(),
        }
    )
}

/// The summary printed at the end: part 1's medians and ratio, part 2's bound check.
pub fn summary(outcome: &BenchOutcome) -> String {
    let mose = &outcome.report.migrations[..outcome.mose_runs];
    let down = |v: &[MigrationReport]| v.iter().map(|m| m.client_downtime_ms).collect::<Vec<_>>();
    let mose_down = down(mose);
    let floor_down: Vec<f64> = outcome
        .floor
        .iter()
        .map(|f| f.client.client_downtime_ms)
        .collect();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0} ms"));
    let mut out = String::from("MOSE vs the raw-tool floor (client-observed downtime)\n");
    out.push_str(&format!(
        "  {:<28}{:>6}{:>12}{:>12}\n",
        "", "runs", "median", "p95"
    ));
    for (name, v) in [
        ("MOSE (orchestrated COAT)", &mose_down),
        ("plain script (floor)", &floor_down),
    ] {
        out.push_str(&format!(
            "  {:<28}{:>6}{:>12}{:>12}\n",
            name,
            v.len(),
            fmt(median(v.iter().copied())),
            fmt(percentile(v.iter().copied(), 95.0))
        ));
    }
    let ratio = match (
        median(mose_down.iter().copied()),
        median(floor_down.iter().copied()),
    ) {
        (Some(m), Some(f)) if f > 0.0 => Some(m / f),
        _ => None,
    };
    if let (Some(r), Some(m)) = (ratio, median(mose_down.iter().copied())) {
        out.push_str(&format!(
            "  ratio MOSE / floor (medians): {r:.2}   targets: median ≤ 500 ms {}, ≤ 1.2 × floor {}\n",
            if m <= 500.0 { "met" } else { "MISSED" },
            if r <= 1.2 { "met" } else { "MISSED" }
        ));
    }
    let all_kept = mose
        .iter()
        .all(|m| m.ok && m.same_connection && m.state_continuous)
        && outcome
            .floor
            .iter()
            .all(|f| f.client.same_connection && f.client.state_continuous);
    out.push_str(&format!(
        "  same TCP connection and continuous state in every run: {}\n",
        if all_kept { "yes" } else { "NO" }
    ));

    let swept: Vec<&MigrationReport> = outcome.report.migrations[outcome.mose_runs..]
        .iter()
        .collect();
    if !swept.is_empty() {
        let judged: Vec<(f64, f64)> = swept
            .iter()
            .filter(|m| m.ok)
            .filter_map(|m| m.predicted.map(|p| (p.downtime_ms, m.client_downtime_ms)))
            .collect();
        let within = judged.iter().filter(|(p, m)| m <= p).count();
        let errors = judged.iter().map(|(p, m)| (p - m) / m * 100.0);
        out.push_str(&format!(
            "\nPAM predicted vs client-observed downtime: {} migrations ({} succeeded)\n  \
             measured ≤ predicted in {within}/{} = {:.0} % (target ≥ 95 %)\n  \
             median prediction error (predicted − measured) / measured: {}\n",
            swept.len(),
            judged.len(),
            judged.len(),
            if judged.is_empty() {
                0.0
            } else {
                within as f64 * 100.0 / judged.len() as f64
            },
            median(errors).map_or("-".into(), |e| format!("{e:+.0} %")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [5.0, 1.0, 3.0, f64::NAN, 2.0, 4.0];
        assert_eq!(median(v.iter().copied()), Some(3.0));
        assert_eq!(percentile(v.iter().copied(), 95.0), Some(5.0));
        assert_eq!(percentile(v.iter().copied(), 0.0), Some(1.0));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn sweep_counts_two_migrations_per_round_trip() {
        let s = Sweep {
            sizes_mib: vec![1, 10, 50],
            rates: vec![BitsPerSec(1_000_000_000), BitsPerSec(200_000_000)],
            dirty_mib_per_s: 1.0,
            repeats: 2,
        };
        assert_eq!(s.migrations(), 24);
    }
}
