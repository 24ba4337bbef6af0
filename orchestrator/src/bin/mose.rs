//! `mose`: the operator's command line, a client of the orchestrator's HTTP API.

use clap::{Parser, Subcommand};
use mose_orchestrator::client::{agents_table, ApiClient};

/// Operate MOSE-RS: list agents, inspect them (and, later, migrate services).
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

#[derive(Debug, Subcommand)]
enum Command {
    /// List the agents that are present, with their latest metrics
    Agents,
    /// Show one agent's profile and metrics as JSON
    Agent {
        /// Agent id
        id: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mose_protocol::cli::exit_with(run().await)
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
    }
    Ok(())
}
