use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mose_agent::cli::Cli;
use mose_agent::node::AgentNode;
use mose_agent::profiling::CgroupProbe;
use mose_agent::runtime::{self, Podman, ProbeOptions};
use mose_protocol::messages::{now_us, AgentProfile, Capabilities};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mose_protocol::cli::exit_with(run().await)
}

async fn run() -> anyhow::Result<()> {
    mose_protocol::cli::init_logging();
    let config = Cli::parse().settle()?;
    let session = config.zenoh.open().await.context("joining the MOSE network")?;
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
    let report = match Podman::new(&config.podman_socket) {
        Ok(podman) => Some(runtime::probe(&podman, &probe_options).await),
        Err(e) => {
            tracing::warn!(error = %e, "no usable podman socket; this host cannot run services");
            None
        }
    };
    if let Some(report) = report {
        node.update_profile(|p| p.capabilities = report.capabilities).await?;
    }
    mose_protocol::cli::shutdown_signal().await?;
    tracing::info!("shutting down");
    node.close().await;
    Ok(())
}
