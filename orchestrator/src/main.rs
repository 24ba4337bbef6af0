use anyhow::Context;
use clap::Parser;
use mose_orchestrator::api::{self, ApiState};
use mose_orchestrator::cli::Cli;
use mose_orchestrator::registry::{Registry, RegistryOptions};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mose_protocol::cli::exit_with(run().await)
}

async fn run() -> anyhow::Result<()> {
    mose_protocol::cli::init_logging();
    let config = Cli::parse().settle()?;
    let session = config.zenoh.open().await.context("joining the MOSE network")?;
    let registry = Registry::start(&session, config.keys.clone(), RegistryOptions::default()).await?;
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on {} for the HTTP API", config.http))?;
    tracing::info!(http = %config.http, prefix = config.keys.prefix(), "orchestrator up");
    let state = ApiState {
        agents: registry.view(),
    };
    let shutdown = async {
        if let Err(e) = mose_protocol::cli::shutdown_signal().await {
            tracing::error!(error = %e, "cannot wait for signals; stopping");
        }
    };
    api::serve(listener, state, shutdown).await.context("HTTP API")?;
    tracing::info!("shutting down");
    drop(registry);
    session.close().await.map_err(|e| anyhow::anyhow!("closing zenoh: {e}"))?;
    Ok(())
}
