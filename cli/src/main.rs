//! `mose`: the operator's command line, a client of the orchestrator's HTTP API. Built on
//! `mose-api` only, so it links no Zenoh, axum or SQLite.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use mose_api::format::{
    agents_table, event_line, kpi_table, migrations_table, parse_bandwidth_bytes_per_s,
    parse_duration_ms, plan_summary, service_summary, services_table,
};
use mose_api::{
    ApiClient, ApiToken, DeployRequest, MigrationEvent, MigrationRequest, TaskRecord, TaskStatus,
};
use mose_protocol::messages::{Phase, PhaseEvent, PhaseStatus};
use mose_protocol::model::Objective;
use mose_protocol::units::BytesPerSec;
use mose_protocol::volumes::VolumeMount;
use serde::Serialize;

mod pki;

/// What the exit status says, for scripts.
const EXIT_HELP: &str = "\
Exit status:
  0  the command succeeded (for a migration: the service runs at the destination)
  1  usage error, the orchestrator unreachable, or a request it refused
  3  the migration rolled back or was cancelled: the service runs safely at its source
  4  the migration failed and an operator must look (see `mose migration ID`)";

/// Operate MOSE-RS: deploy services, migrate them, follow and list migrations.
#[derive(Debug, Parser)]
#[command(name = "mose", version, after_help = EXIT_HELP)]
struct Cli {
    /// Base URL of the orchestrator's HTTP API
    #[arg(
        long,
        global = true,
        env = "MOSE_API",
        default_value = "http://127.0.0.1:7070"
    )]
    api: String,
    /// The API's bearer token (prefer --token-file: a command line is visible to others)
    #[arg(
        long,
        global = true,
        env = "MOSE_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// A file holding the API's bearer token: a bare token, or the orchestrator's tokens file
    /// (its first line's token); readable by its owner only
    #[arg(long, global = true, env = "MOSE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Output format
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned tables and summaries for people
    Table,
    /// The API's JSON documents, pretty-printed
    Json,
    /// The API's documents as YAML
    Yaml,
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
    /// Deploy a service on an edge host: its overlay address is allocated, its container
    /// started in its own namespace, and the flows of its mobiles steered to it
    #[command(
        after_help = "Example:\n  mose deploy redis --image localhost/mose/redis:latest --on edge1 \\\n    --volume data:/data -- --dir /data --appendonly yes"
    )]
    Deploy {
        /// Service name (letters, digits, '-', '_', '.')
        name: String,
        /// Container image, present on the host (podman load it there)
        #[arg(long)]
        image: String,
        /// Edge agent to run it on
        #[arg(long = "on", value_name = "HOST")]
        host: String,
        /// Environment variable of the container (repeatable)
        #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Named volume mounted at PATH (repeatable). It starts empty, moves with the service
        /// inside its checkpoint (so its size adds to the freeze) and is deleted by `mose rm`
        #[arg(long = "volume", short = 'v', value_name = "NAME:PATH")]
        volumes: Vec<VolumeMount>,
        /// Mobile agent whose device uses the service (repeatable) [default: every mobile
        /// agent present]
        #[arg(long = "mobile", value_name = "AGENT")]
        mobiles: Vec<String>,
        /// Arguments replacing the image's command
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// List the deployed services
    Services,
    /// Show one service: where it runs, its address, state size, dirty rate and clients
    Service {
        /// Service name
        name: String,
    },
    /// Remove a service: its flows on the mobiles, its container, namespace and volumes (their
    /// data is deleted) on its host
    Rm {
        /// Service name
        name: String,
    },
    /// Migrate a service: show the plan, follow the phases, print predicted vs measured
    Migrate {
        /// Service name
        service: String,
        /// Destination edge agent
        #[arg(long)]
        to: String,
        /// Where the service runs now: known for a deployed service (given, it is only
        /// checked); needed for a container MOSE did not deploy
        #[arg(long)]
        from: Option<String>,
        /// Mobile agent whose client flow follows the service (repeatable) [default: the
        /// service's own mobiles]
        #[arg(long = "mobile", value_name = "AGENT")]
        mobiles: Vec<String>,
        /// What to minimise
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
        /// Only plan: print the strategy and its predictions, run nothing
        #[arg(long, conflicts_with = "no_wait")]
        dry_run: bool,
    },
    /// List past and running migrations, newest first, one page at a time
    Migrations {
        /// Only migrations of this service
        #[arg(long)]
        service: Option<String>,
        /// Only migrations in this status (queued, running, succeeded, failed, rolled_back,
        /// cancelled)
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1-1000)
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The page after this token (printed under a full page)
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one migration; with --follow, follow it to its end
    Migration {
        /// Task id
        id: String,
        /// Follow the phases until the migration ends (exit status as for `migrate`)
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a running migration (it rolls back to the source)
    Cancel {
        /// Task id
        id: String,
    },
    /// The domain's certificate authority: create it, issue members' TLS directories, list
    /// expiries (files only, no orchestrator needed)
    Pki(pki::PkiArgs),
    /// Print a shell completion script (e.g. `mose completion bash > /etc/bash_completion.d/mose`)
    Completion {
        /// The shell
        shell: Shell,
    },
}

/// How long `follow` waits before attaching again to a stream that broke.
const REATTACH_AFTER: Duration = Duration::from_millis(200);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Usage errors exit 1 like every other refusal (clap's own default is 2); help and
    // version are successes.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // `error: <cause chain>`, never a backtrace (even with RUST_BACKTRACE set).
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(ApiToken::parse(t)?),
        (None, Some(path)) => Some(ApiToken::read_file(path)?),
        (None, None) => None,
    };
    let client = ApiClient::new(&cli.api, token.as_ref());
    let out = cli.output;
    match cli.command {
        Command::Pki(args) => pki::run(args)?,
        Command::Agents => {
            let agents = client.agents().await?;
            print_as(out, &agents, || agents_table(&agents))?;
        }
        Command::Agent { id } => {
            // One agent is best read as its full document.
            let agent = client.agent(&id).await?;
            print_doc(
                if out == Output::Table {
                    Output::Json
                } else {
                    out
                },
                &agent,
            )?;
        }
        Command::Deploy {
            name,
            image,
            host,
            env,
            volumes,
            mobiles,
            args,
        } => {
            let request = DeployRequest {
                name,
                image,
                host,
                args,
                env: env.into_iter().collect::<BTreeMap<_, _>>(),
                volumes,
                mobiles: (!mobiles.is_empty()).then_some(mobiles),
            };
            let service = client.deploy(&request).await?;
            print_as(out, &service, || {
                format!(
                    "deployed {} on {} at {}/{} (mobiles: {})\n",
                    service.name,
                    service.host,
                    service.network.ip,
                    service.network.prefix_len,
                    match service.mobiles.is_empty() {
                        true => "none".to_string(),
                        false => service.mobiles.join(", "),
                    }
                )
            })?;
        }
        Command::Services => {
            let services = client.services().await?;
            print_as(out, &services, || services_table(&services))?;
        }
        Command::Service { name } => {
            let view = client.service(&name).await?;
            print_as(out, &view, || service_summary(&view))?;
        }
        Command::Rm { name } => {
            client.remove_service(&name).await?;
            if out == Output::Table {
                println!("removed {name}");
            }
        }
        Command::Migrate {
            service,
            to,
            from,
            mobiles,
            objective,
            target_downtime,
            target_duration,
            bandwidth,
            no_wait,
            dry_run,
        } => {
            let request = MigrationRequest {
                service,
                destination: to,
                source: from,
                mobiles: (!mobiles.is_empty()).then_some(mobiles),
                objective: objective.into(),
                target_downtime_ms: target_downtime,
                target_duration_ms: target_duration,
                bandwidth_bytes_per_s: bandwidth,
            };
            if dry_run {
                let plan = client.plan(&request).await?;
                print_as(out, &plan, || {
                    plan_summary(&plan).replacen("migration ", "plan of ", 1)
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let task = client.submit(&request).await?;
            if out == Output::Table {
                print!("{}", plan_summary(&task));
            }
            if no_wait {
                if out != Output::Table {
                    print_doc(out, &task)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            return follow(&client, task, out).await;
        }
        Command::Migrations {
            service,
            status,
            limit,
            after,
        } => {
            let limit = limit.to_string();
            let mut query = vec![("limit", limit.as_str())];
            let filters = [
                ("service", &service),
                ("status", &status),
                ("after", &after),
            ];
            query.extend(
                filters
                    .iter()
                    .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))),
            );
            let (tasks, next) = client.migrations_page(&query).await?;
            print_as(out, &tasks, || migrations_table(&tasks))?;
            if let (Some(token), Output::Table) = (next, out) {
                println!("(more: mose migrations --after {token})");
            }
        }
        Command::Migration { id, follow: true } => {
            let task = client.migration(&id).await?;
            if out == Output::Table {
                print!("{}", plan_summary(&task));
            }
            return follow(&client, task, out).await;
        }
        Command::Migration { id, follow: false } => {
            let task = client.migration(&id).await?;
            print_as(out, &task, || {
                format!("{}{}", plan_summary(&task), kpi_table(&task))
            })?;
        }
        Command::Cancel { id } => {
            let task = client.cancel(&id).await?;
            print_as(out, &task, || {
                format!(
                    "cancel requested for {}: it rolls back to {}\n",
                    task.id, task.route.source
                )
            })?;
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "mose", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows the task's event stream to its end: each phase event as a line, a progress line
/// under them on a terminal (the phase running, the image's size and transfer rate once
/// known), then the KPIs; the exit status says how it ended. A stream that breaks or lags is
/// picked up again (it replays every event; those shown are skipped). Interrupted, the
/// migration goes on: `mose migration ID --follow` picks it up again.
async fn follow(client: &ApiClient, task: TaskRecord, out: Output) -> anyhow::Result<ExitCode> {
    let id = task.id.clone();
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    let mut progress = Progress::new(out == Output::Table, &task);
    let task = loop {
        let attach = progress.attach(client, &id);
        let ended = tokio::select! {
            ended = attach => ended,
            () = &mut interrupted => {
                progress.finish();
                eprintln!(
                    "\ninterrupted: migration {id} goes on without you; follow it again with \
                     `mose migration {id} --follow`, or roll it back with `mose cancel {id}`"
                );
                return Ok(ExitCode::from(130));
            }
        };
        if let Some(record) = ended {
            break record;
        }
        // The stream broke or lagged: the record says whether there is more to wait for.
        let now = client.migration(&id).await?;
        progress.catch_up(&now);
        if now.status.is_finished() {
            break now;
        }
        tokio::time::sleep(REATTACH_AFTER).await;
    };
    progress.finish();
    match out {
        Output::Table => print!("\n{}", kpi_table(&task)),
        doc => print_doc(doc, &task)?,
    }
    Ok(ExitCode::from(exit_status(task.status)))
}

/// What `follow` shows of a running migration: event lines, and on a terminal a spinner line
/// under them (indicatif) with the phase and what is known of the image.
struct Progress {
    /// `None` for document output, which prints only the final record.
    bar: Option<ProgressBar>,
    created_us: u64,
    /// Events already shown (the task's `events` only ever grow).
    shown: usize,
    image_bytes: Option<u64>,
}

impl Progress {
    fn new(lines: bool, task: &TaskRecord) -> Self {
        let bar = lines.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let mut progress = Progress {
            bar,
            created_us: task.created_us,
            shown: 0,
            image_bytes: None,
        };
        progress.catch_up(task);
        progress
    }

    /// Reads the task's event stream until it ends: the final record, or `None` when the
    /// stream broke or lagged before the end.
    async fn attach(&mut self, client: &ApiClient, id: &str) -> Option<TaskRecord> {
        let mut stream = client.events(id).await.ok()?;
        loop {
            match stream.next().await {
                Ok(Some(MigrationEvent::Phase { index, event })) if index >= self.shown => {
                    self.shown = index + 1;
                    self.show(&event);
                    let image_known = matches!(event.phase, Phase::Checkpoint | Phase::Transfer)
                        && matches!(event.status, PhaseStatus::Finished);
                    if image_known {
                        if let Ok(now) = client.migration(id).await {
                            self.image(&now);
                        }
                    }
                }
                Ok(Some(MigrationEvent::Phase { .. })) => {} // replayed: shown already
                Ok(Some(MigrationEvent::End(record))) => {
                    self.catch_up(&record);
                    return Some(*record);
                }
                Ok(Some(MigrationEvent::Lagged(_)) | None) | Err(_) => return None,
            }
        }
    }

    /// Shows the record's events not shown yet.
    fn catch_up(&mut self, task: &TaskRecord) {
        for event in task.events.iter().skip(self.shown) {
            self.show(event);
        }
        self.shown = self.shown.max(task.events.len());
        self.image(task);
    }

    fn show(&self, event: &PhaseEvent) {
        let Some(bar) = &self.bar else {
            return;
        };
        let line = event_line(event, self.created_us);
        if bar.is_hidden() {
            // Not a terminal: the lines alone, as they come.
            println!("{line}");
            let _ = std::io::stdout().flush();
        } else {
            bar.println(line);
        }
        bar.set_message(format!(
            "{} on {}{}",
            event.phase,
            event.agent,
            self.image_note()
        ));
    }

    /// Takes the image's size (known after the checkpoint) and transfer time from the record.
    fn image(&mut self, task: &TaskRecord) {
        let m = &task.measurements;
        if m.image_bytes.is_some() {
            self.image_bytes = m.image_bytes;
        }
        if let (Some(bar), Some(bytes), Some(ms)) = (
            &self.bar,
            self.image_bytes,
            m.phases_ms.get(&Phase::Transfer),
        ) {
            let rate = bytes as f64 / (ms / 1000.0).max(1e-3);
            bar.set_message(format!(
                "image {} moved in {ms:.0} ms ({}/s)",
                HumanBytes(bytes),
                HumanBytes(mose_protocol::units::saturating_u64(rate))
            ));
        }
    }

    fn image_note(&self) -> String {
        self.image_bytes
            .map(|b| format!(", image {}", HumanBytes(b)))
            .unwrap_or_default()
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The exit status of a finished migration (see [`EXIT_HELP`]).
fn exit_status(status: TaskStatus) -> u8 {
    match status {
        TaskStatus::Succeeded => 0,
        TaskStatus::RolledBack | TaskStatus::Cancelled => 3,
        TaskStatus::Failed => 4,
        // Not finished: `follow` only returns for finished tasks.
        TaskStatus::Queued | TaskStatus::Running => 1,
    }
}

/// `table()` for people, the document itself for `-o json|yaml`.
fn print_as<T: Serialize>(
    out: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match out {
        Output::Table => {
            print!("{}", table());
            Ok(())
        }
        doc => print_doc(doc, value),
    }
}

/// The document as JSON (also for `table`: one agent is best read whole) or YAML.
fn print_doc<T: Serialize>(out: Output, value: &T) -> anyhow::Result<()> {
    match out {
        Output::Yaml => print!("{}", serde_norway::to_string(value)?),
        Output::Json | Output::Table => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

/// `K=V` of `--env`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not K=V")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_tell_a_script_where_the_service_is() {
        assert_eq!(exit_status(TaskStatus::Succeeded), 0);
        assert_eq!(exit_status(TaskStatus::RolledBack), 3);
        assert_eq!(exit_status(TaskStatus::Cancelled), 3);
        assert_eq!(exit_status(TaskStatus::Failed), 4);
    }

    #[test]
    fn the_command_line_parses_as_documented() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "mose",
            "-o",
            "json",
            "deploy",
            "redis",
            "--image",
            "r:1",
            "--on",
            "edge1",
            "-e",
            "A=1",
            "-v",
            "data:/data",
            "--mobile",
            "m1",
            "--",
            "--port",
            "7000",
        ])
        .unwrap();
        match cli.command {
            Command::Deploy {
                env,
                volumes,
                mobiles,
                args,
                ..
            } => {
                assert_eq!(env, [("A".to_string(), "1".to_string())]);
                assert_eq!(volumes, ["data:/data".parse::<VolumeMount>().unwrap()]);
                assert_eq!(
                    (mobiles, args),
                    (
                        vec!["m1".to_string()],
                        vec!["--port".to_string(), "7000".to_string()]
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cli.output, Output::Json);
        let cli = Cli::try_parse_from(["mose", "migrate", "redis", "--to", "edge2"]).unwrap();
        assert!(matches!(cli.command, Command::Migrate { from: None, .. }));
        assert!(Cli::try_parse_from([
            "mose", "deploy", "x", "--image", "i", "--on", "h", "-e", "novalue"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["mose", "migrate", "redis"]).is_err(),
            "--to is required"
        );
    }
}
