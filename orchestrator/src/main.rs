//! mose-orchestrator: discovers the agents, plans and drives migrations, serves the HTTP API.

use anyhow::Context;
use clap::Parser;
use mose_orchestrator::api::{self, ApiState};
use mose_orchestrator::api_auth::ApiAuth;
use mose_orchestrator::cli::Cli;
use mose_orchestrator::registry::{Registry, RegistryOptions};
use mose_orchestrator::services::Services;
use mose_orchestrator::tasks::queryables::QueryServer;
use mose_orchestrator::tasks::{Migrations, Store};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `error: <cause chain>` and exit 1, never a backtrace (even with RUST_BACKTRACE set).
    mose_protocol::cli::exit_with(run().await)
}

async fn run() -> anyhow::Result<()> {
    mose_protocol::cli::init_logging();
    let config = Cli::parse().settle()?;
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            config.state_dir.display()
        )
    })?;
    // Tasks name hosts, services and images; tokens are secrets: the owner's only (SQLite gives
    // its journal files the database's mode).
    private(&config.state_dir, 0o700)?;
    let store = Store::open(&config.task_db())?;
    private(&config.task_db(), 0o600)?;
    if let Some(tls) = config.zenoh.tls()? {
        let cert = mose_pki::check_node(
            &tls.cert,
            &tls.key,
            mose_protocol::domain::MemberRole::Orchestrator,
            None,
        )?;
        tracing::info!(name = %cert.common_name, not_after_unix_s = cert.not_after_unix_s, "mutual TLS");
    }
    let session = config
        .zenoh
        .open(&config.keys)
        .await
        .context("joining the MOSE network")?;
    let registry =
        Registry::start(&session, config.keys.clone(), RegistryOptions::default()).await?;
    // Starting the service reconciles whatever a previous run left unfinished.
    let migrations = Migrations::start(
        session.clone(),
        config.keys.clone(),
        registry.view(),
        store,
        config.driver.clone(),
    )
    .await?;
    if let Some(retention) = config.task_retention {
        tokio::spawn(prune(migrations.clone(), retention));
    }
    let services = Services::new(migrations.clone(), config.service_pool);
    // …and the services: deployments and removals it did not finish.
    tokio::spawn({
        let services = services.clone();
        async move { services.reconcile().await }
    });
    let rpc_server =
        QueryServer::start(&session, &config.keys, migrations.clone(), services.clone()).await?;
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on {} for the HTTP API", config.http))?;
    tracing::info!(
        http = %config.http,
        prefix = config.keys.prefix(),
        tasks = %config.task_db().display(),
        api_tokens = %config.api_tokens.display(),
        service_pool = %config.service_pool,
        "orchestrator up"
    );
    let tokens =
        mose_api::ApiTokens::load_or_create(&config.api_tokens).context("the HTTP API's tokens")?;
    let state = ApiState {
        agents: registry.view(),
        services,
        migrations,
        auth: std::sync::Arc::new(ApiAuth::new(tokens, config.api_allowed_hosts.clone())),
    };
    let shutdown = async {
        if let Err(e) = mose_protocol::cli::shutdown_signal().await {
            tracing::error!(error = %e, "cannot wait for signals; stopping");
        }
    };
    api::serve(listener, state, shutdown)
        .await
        .context("HTTP API")?;
    tracing::info!("shutting down");
    drop(rpc_server);
    drop(registry);
    session
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("closing zenoh: {e}"))?;
    Ok(())
}

fn private(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    mose_protocol::cli::set_mode(path, mode)
        .with_context(|| format!("cannot make {} private (mode {mode:o})", path.display()))
}

/// Forgets finished task records older than `retention`, at start and every hour.
async fn prune(migrations: Migrations, retention: std::time::Duration) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        match migrations.prune(retention) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                pruned = n,
                "finished task records past their retention removed"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot prune finished task records"),
        }
    }
}
