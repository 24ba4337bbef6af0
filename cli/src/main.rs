//! `mose`: the operator's command line, a client of the orchestrator's HTTP API. Built on
//! `mose-api` only, so it links no Zenoh, axum or SQLite.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mose_api::format::{
    agents_table, event_line, kpi_table, migrations_table, parse_bandwidth_bytes_per_s,
    parse_duration_ms, plan_summary,
};
use mose_api::{ApiClient, MigrationRequest, TaskStatus};
use mose_protocol::model::Objective;
use mose_protocol::units::BytesPerSec;

/// Operate MOSE-RS: list agents, migrate services, follow and list migrations.
#[derive(Debug, Parser)]
#[command(name = "mose", version)]
struct Cli {
    /// Base URL of the orchestrator's HTTP API
    #[arg(long, env = "MOSE_API", default_value = "http://127.0.0.1:7070")]
    api: String,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ObjectiveArg {
    /// Minimise the client-observed downtime (pre-copy where the hosts can)
    Downtime,
    /// Minimise bandwidth: cold migration with the least bandwidth meeting the target
    Resources,
}

impl From<ObjectiveArg> for Objective {
    fn from(o: ObjectiveArg) -> Self {
        match o {
            ObjectiveArg::Downtime => Objective::Downtime,
            ObjectiveArg::Resources => Objective::Resources,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the agents that are present, with their latest metrics
    Agents,
    /// Show one agent's profile and metrics as JSON
    Agent {
        /// Agent id
        id: String,
    },
    /// Migrate a service: show the plan, follow the phases, print predicted vs measured
    Migrate {
        /// Service (container) name
        service: String,
        /// Destination edge agent
        #[arg(long)]
        to: String,
        /// Source edge agent (where the service runs now)
        #[arg(long)]
        from: String,
        /// Mobile agent whose client flow follows the service
        #[arg(long)]
        mobile: Option<String>,
        #[arg(long, value_enum, default_value = "downtime")]
        objective: ObjectiveArg,
        /// Downtime target θ_down (e.g. 500ms, 1s)
        #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
        target_downtime: f64,
        /// Total migration time target θ_mig (e.g. 5s)
        #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
        target_duration: f64,
        /// Bandwidth source → destination when you know it (e.g. 100Mbit, 1Gbit); otherwise
        /// the agents' link estimate or the orchestrator's default is planned with
        #[arg(long, value_parser = parse_bandwidth_bytes_per_s)]
        bandwidth: Option<BytesPerSec>,
        /// Print the plan and return at once instead of following the migration
        #[arg(long)]
        no_wait: bool,
    },
    /// List past and running migrations, newest first
    Migrations,
    /// Show one migration as JSON
    Migration {
        /// Task id
        id: String,
    },
    /// Cancel a running migration (it rolls back to the source)
    Cancel {
        /// Task id
        id: String,
    },
}

/// How often the progress display polls the task.
const POLL: Duration = Duration::from_millis(200);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // `error: <cause chain>` and exit 1, never a backtrace (even with RUST_BACKTRACE set), like
    // the other MOSE binaries (mose_protocol::cli::exit_with, which needs the Zenoh side).
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = ApiClient::new(&cli.api);
    match cli.command {
        Command::Agents => {
            let agents = client.agents().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&agents)?);
            } else {
                print!("{}", agents_table(&agents));
            }
        }
        Command::Agent { id } => {
            let agent = client.agent(&id).await?;
            // One agent is best read as its full document.
            println!("{}", serde_json::to_string_pretty(&agent)?);
        }
        Command::Migrate {
            service,
            to,
            from,
            mobile,
            objective,
            target_downtime,
            target_duration,
            bandwidth,
            no_wait,
        } => {
            let request = MigrationRequest {
                service,
                source: from,
                destination: to,
                mobile,
                objective: objective.into(),
                target_downtime_ms: target_downtime,
                target_duration_ms: target_duration,
                bandwidth_bytes_per_s: bandwidth,
            };
            let mut task = client.submit(&request).await?;
            if !cli.json {
                print!("{}", plan_summary(&task));
            }
            if no_wait {
                if cli.json {
                    println!("{}", serde_json::to_string_pretty(&task)?);
                }
                return Ok(());
            }
            // Progress: every new phase event as it appears (events only ever get appended),
            // until the task ends.
            let mut shown = 0;
            loop {
                if !cli.json {
                    for event in task.events.iter().skip(shown) {
                        println!("{}", event_line(event, task.created_us));
                    }
                }
                shown = task.events.len();
                if task.status.is_finished() {
                    break;
                }
                tokio::time::sleep(POLL).await;
                task = client.migration(&task.id).await?;
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&task)?);
            } else {
                print!("\n{}", kpi_table(&task));
            }
            if task.status != TaskStatus::Succeeded {
                anyhow::bail!("migration {} ended {}", task.id, task.status);
            }
        }
        Command::Migrations => {
            let tasks = client.migrations().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else {
                print!("{}", migrations_table(&tasks));
            }
        }
        Command::Migration { id } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&client.migration(&id).await?)?
            );
        }
        Command::Cancel { id } => {
            let task = client.cancel(&id).await?;
            println!(
                "cancel requested for {}: it rolls back to {}",
                task.id, task.request.source
            );
        }
    }
    Ok(())
}
