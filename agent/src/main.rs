//! mose-agent: announces this host, publishes its metrics and runs the COAT steps of migrations.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mose_agent::calibration::{self, CalibrationPlan};
use mose_agent::cli::{CalibrateArgs, Cli, Command};
use mose_agent::coat::{CoatExecutor, CoatSettings, PodmanHost};
use mose_agent::config::AgentConfig;
use mose_agent::node::AgentNode;
use mose_agent::profiling::{memory_cgroup_of, CgroupProbe};
use mose_agent::runtime::{self, Podman, ProbeOptions};
use mose_agent::steps::StepServer;
use mose_overlay::HostOverlay;
use mose_protocol::messages::{now_us, AgentProfile, LinkSecurity};
use mose_protocol::model::PamParams;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mose_protocol::cli::exit_with(run().await)
}

/// Checkpoint archives are a service's whole memory: whatever this agent writes is its owner's
/// only (files 0600, directories 0700), and so is the work directory, also one made earlier.
fn make_private(work_dir: &std::path::Path) -> anyhow::Result<()> {
    // SAFETY: umask sets this process's file-creation mask and cannot fail.
    unsafe { libc::umask(0o077) };
    std::fs::create_dir_all(work_dir)
        .and_then(|()| mose_protocol::cli::set_mode(work_dir, 0o700))
        .with_context(|| {
            format!(
                "cannot make the work directory {} private",
                work_dir.display()
            )
        })
}

async fn run() -> anyhow::Result<()> {
    mose_protocol::cli::init_logging();
    let (config, command) = Cli::parse().settle()?;
    make_private(&config.work_dir)?;
    if let Some(Command::Calibrate(args)) = command {
        return calibrate(&config, args).await;
    }
    let calibration_file = calibration::stored_path(&config.work_dir);
    let pam = calibration::load(&calibration_file)?.map(|c| c.params);
    if pam.is_none() {
        tracing::warn!(file = %calibration_file.display(),
                       "not calibrated: the orchestrator will plan with paper defaults (run `mose-agent calibrate`)");
    }
    let security = link_security(&config)?;
    let session = config
        .zenoh
        .open(&config.keys)
        .await
        .context("joining the MOSE network")?;
    // The podman client connects lazily: a mobile host without podman still serves its steps
    // (switch-flow needs only OvS), and the others fail with the socket's name in the error.
    let podman = Podman::new(&config.podman_socket).context("podman API client")?;
    let overlay = HostOverlay::new(
        &config.ovsdb_socket,
        &config.ovs_rundir,
        config.ovs_bridge.clone(),
    );
    let settings = CoatSettings {
        flow_ports: config.flow_ports.clone(),
        ..CoatSettings::new(&config.id, &config.work_dir)
    };
    let executor = CoatExecutor::new(
        PodmanHost::new(podman.clone(), overlay),
        session.clone(),
        config.keys.clone(),
        settings,
    );
    // Flows live in ovs-vswitchd's memory only: what this agent steered before it (or the
    // switch, or the host) restarted is installed again before any step runs.
    executor
        .reassert_steering()
        .await
        .context("reasserting the steering flows of the work directory")?;
    // Steps are served before the profile is announced: whoever sees the agent can use it.
    let _steps = StepServer::start(&session, &config.keys, &config.id, Arc::new(executor)).await?;
    let profile = AgentProfile {
        security,
        id: config.id.clone(),
        role: config.role,
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_us: now_us(),
        // Not probed yet: "unknown", which the orchestrator must not read as "cannot".
        capabilities: None,
        pam,
    };
    let containers = Arc::new(CgroupProbe::default());
    let node = AgentNode::start(
        session,
        config.keys.clone(),
        profile,
        config.metrics_interval,
        containers.clone(),
    )
    .await?;
    let _discovery = tokio::spawn(follow_containers(
        podman.clone(),
        containers,
        config.metrics_interval,
    ));
    // The probe runs real CRIU dumps (seconds): announce first, publish capabilities when known.
    let probe_options = ProbeOptions {
        ovsdb_socket: Some(config.ovsdb_socket.clone()),
        ..ProbeOptions::default()
    };
    let report = runtime::probe(&podman, &probe_options).await;
    node.update_profile(|p| p.capabilities = Some(report.capabilities))
        .await?;
    mose_protocol::cli::shutdown_signal().await?;
    tracing::info!("shutting down");
    node.close().await;
    Ok(())
}

/// Keeps the metrics' container set equal to podman's running containers. A host without
/// podman (a mobile device) has none: said once, not every interval.
async fn follow_containers(podman: Podman, probe: Arc<CgroupProbe>, every: std::time::Duration) {
    let mut warned = false;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match podman.list_running().await {
            Ok(list) => {
                warned = false;
                let running = list
                    .into_iter()
                    .filter(|c| c.pid > 0)
                    .filter_map(|c| {
                        let name = c.names.into_iter().next()?;
                        match memory_cgroup_of(c.pid) {
                            Ok(dir) => Some((name, dir)),
                            Err(e) => {
                                tracing::debug!(container = %name, error = %e, "no cgroup");
                                None
                            }
                        }
                    })
                    .collect();
                probe.sync(running);
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "cannot list containers; metrics carry none");
            }
            Err(_) => {}
        }
    }
}

/// `mose-agent calibrate`: measure, fit, refuse a bad fit, store.
async fn calibrate(config: &AgentConfig, args: CalibrateArgs) -> anyhow::Result<()> {
    let podman = Podman::new(&config.podman_socket).context("podman API client")?;
    let path = calibration::stored_path(&config.work_dir);
    let previous = calibration::load(&path)?
        .map(|c| c.params)
        .unwrap_or_else(PamParams::paper_defaults);
    // Pre-dump laws need kernel dirty tracking: ask the capability probe the agent publishes.
    let probe_options = ProbeOptions {
        ovsdb_socket: None,
        ..ProbeOptions::default()
    };
    let probed = runtime::probe(&podman, &probe_options).await;
    let pre_dumps = probed.capabilities.dirty_tracking;
    if !pre_dumps {
        eprintln!("no dirty tracking on this host: pre-dump laws are not measured");
        for note in probed.notes.iter().filter(|n| n.contains("dirty")) {
            eprintln!("  {note}");
        }
    }
    let plan = CalibrationPlan {
        sizes_mib: args.sizes_mib,
        rates_mib_per_s: args.rates_mib_per_s,
        repeats: args.repeats,
        min_r_squared: args.min_r_squared,
        pre_dumps,
        ..CalibrationPlan::new(args.image, config.work_dir.join("calibration"))
    };
    let samples = calibration::measure(&podman, &plan, &mut |p| {
        if p.done < p.total {
            eprintln!(
                "[{}/{}] M = {} MiB, R = {} MiB/s: {}checkpoint + restore",
                p.done + 1,
                p.total,
                p.state_mib,
                p.rate_mib_per_s,
                if pre_dumps { "2 pre-dumps + " } else { "" }
            );
        }
    })
    .await?;
    let result = calibration::fit(&samples, &previous, plan.min_r_squared)?;
    println!(
        "{:<28} {:>12} {:>14} {:>6} {:>8}",
        "law", "intercept s", "slope s/B", "R²", "rms err"
    );
    for f in &result.fits {
        println!(
            "{:<28} {:>12.4e} {:>14.4e} {:>6.3} {:>7.1}%",
            f.law,
            f.intercept,
            f.slope,
            f.r_squared,
            f.relative_error * 100.0
        );
        println!("{:<28} residuals {:?}", "", f.residuals);
    }
    for note in &result.notes {
        println!("note: {note}");
    }
    println!("{}", serde_json::to_string_pretty(&result.params)?);
    calibration::store(&path, &result)?;
    println!(
        "stored in {} (published in the profile from the agent's next start)",
        path.display()
    );
    Ok(())
}

/// The agent's link security, its own certificate checked first (it must name this agent).
fn link_security(config: &AgentConfig) -> anyhow::Result<LinkSecurity> {
    let Some(tls) = config.zenoh.tls()? else {
        return Ok(LinkSecurity::Insecure);
    };
    let cert = mose_pki::check_node(&tls.cert, &tls.key, config.role.into(), Some(&config.id))?;
    tracing::info!(name = %cert.common_name, not_after_unix_s = cert.not_after_unix_s, "mutual TLS");
    Ok(LinkSecurity::MutualTls {
        common_name: cert.common_name,
        not_after_unix_s: cert.not_after_unix_s,
    })
}
