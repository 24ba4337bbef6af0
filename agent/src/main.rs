use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mose_agent::cli::Cli;
use mose_agent::coat::{CoatExecutor, CoatSettings};
use mose_agent::node::AgentNode;
use mose_agent::profiling::CgroupProbe;
use mose_agent::runtime::{self, Podman, ProbeOptions};
use mose_agent::steps::StepServer;
use mose_overlay::HostOverlay;
use mose_protocol::messages::{now_us, AgentProfile, Capabilities};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mose_protocol::cli::exit_with(run().await)
}

async fn run() -> anyhow::Result<()> {
    mose_protocol::cli::init_logging();
    let config = Cli::parse().settle()?;
    let session = config
        .zenoh
        .open()
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
        ..CoatSettings::new(&config.work_dir)
    };
    let executor = CoatExecutor::new(
        podman.clone(),
        overlay,
        session.clone(),
        config.keys.clone(),
        settings,
    );
    // Steps are served before the profile is announced: whoever sees the agent can use it.
    let _steps = StepServer::start(&session, &config.keys, &config.id, Arc::new(executor)).await?;
    let profile = AgentProfile {
        id: config.id.clone(),
        role: config.role,
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        started_us: now_us(),
        capabilities: Capabilities::default(),
        pam: None,
    };
    let node = AgentNode::start(
        session,
        config.keys.clone(),
        profile,
        config.metrics_interval,
        Arc::new(CgroupProbe::default()),
    )
    .await?;
    // The probe runs real CRIU dumps (seconds): announce first, publish capabilities when known.
    let probe_options = ProbeOptions {
        ovsdb_socket: Some(config.ovsdb_socket.clone()),
        ..ProbeOptions::default()
    };
    let report = runtime::probe(&podman, &probe_options).await;
    node.update_profile(|p| p.capabilities = report.capabilities)
        .await?;
    mose_protocol::cli::shutdown_signal().await?;
    tracing::info!("shutting down");
    node.close().await;
    Ok(())
}
