//! `mose-testbed`: the testbed's command line (SPEC §8): `up`, `status`, `migrate`, `demo`,
//! `down`. `bench` and `vm` come with their own issues.
//!
//! Binaries: `up` and `demo` run `mose-agent` and `mose-orchestrator` from the same cargo target
//! and profile directory as this binary, and first run `cargo build -p mose-agent -p
//! mose-orchestrator` with that profile (a no-op when they are up to date), because `cargo run
//! -p mose-testbed` builds only this package. `--no-build` skips that and uses what is there.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use mose_protocol::model::Objective;
use mose_testbed::demo::{self, Targets};
use mose_testbed::fourhost::{Binaries, Config, FourHost, Placement, State};

#[derive(Parser)]
#[command(name = "mose-testbed", about = "MOSE-RS emulated edge testbed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct UpArgs {
    /// Name prefix of everything the testbed makes (hosts, links, namespaces).
    #[arg(long, default_value = mose_testbed::DEFAULT_PREFIX)]
    prefix: String,
    /// Use the mose-agent and mose-orchestrator next to this binary without running cargo build.
    #[arg(long)]
    no_build: bool,
    /// Zenoh lease of agents and orchestrator, in ms.
    #[arg(long, default_value_t = 1000)]
    lease_ms: u64,
    /// N of the API link 10.98.N.0/30 between this namespace and the controller.
    #[arg(long, default_value_t = 0)]
    api_net: u8,
}

#[derive(clap::Args, Clone, Copy)]
struct TargetArgs {
    /// θ_down handed to the orchestrator's designer, in ms.
    #[arg(long, default_value_t = 1000.0)]
    target_downtime_ms: f64,
    /// θ_mig handed to the orchestrator's designer, in ms.
    #[arg(long, default_value_t = 10_000.0)]
    target_duration_ms: f64,
    /// What the designer minimises: downtime or resources.
    #[arg(long, default_value = "downtime", value_parser = parse_objective)]
    objective: Objective,
    /// Bandwidth edge → edge to plan with (e.g. 100Mbit); default: the agents' estimate or
    /// the orchestrator's default.
    #[arg(long, value_parser = mose_orchestrator::client::parse_bandwidth_bytes_per_s)]
    bandwidth: Option<u64>,
}

impl TargetArgs {
    fn targets(self) -> Targets {
        Targets {
            downtime_ms: self.target_downtime_ms,
            duration_ms: self.target_duration_ms,
            objective: self.objective,
            bandwidth_bytes_per_s: self.bandwidth,
        }
    }
}

fn parse_objective(s: &str) -> Result<Objective, String> {
    match s {
        "downtime" => Ok(Objective::Downtime),
        "resources" => Ok(Objective::Resources),
        other => Err(format!("`{other}`: use downtime or resources")),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring up the four emulated hosts (edge1, edge2, mobile, ctrl) with agents, orchestrator and
    /// the counter service on edge1; they keep running until `down`.
    Up(UpArgs),
    /// Hosts, agents (from the orchestrator's API) and where the service runs.
    Status,
    /// Migrate the service to another edge host through the orchestrator's API.
    Migrate {
        /// Destination edge host (edge1 or edge2); the source is where the service runs now.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Set up this machine, bring the testbed up, migrate edge1 -> edge2 -> edge1 with a live
    /// client, print the KPIs, write target/testbed/report.json and latency.png, tear down.
    Demo {
        /// Round trips edge1 -> edge2 -> edge1.
        #[arg(long, default_value_t = 1)]
        runs: u32,
        /// Skip testbed/setup-host.sh (the machine is known to be ready).
        #[arg(long)]
        skip_setup: bool,
        #[command(flatten)]
        up: UpArgs,
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Remove everything the testbed made (hosts, namespaces, LAN, containers, OvS, agents,
    /// orchestrator), also after a crash.
    Down {
        /// Name prefix to sweep.
        #[arg(long, default_value = mose_testbed::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Internal: runs inside an edge host to place the service's endpoint (JSON argument).
    #[command(hide = true)]
    PlaceEndpoint { placement: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let out_dir = mose_testbed::out_dir();
    match Cli::parse().cmd {
        Cmd::Up(args) => {
            let cfg = config(&args, &out_dir).await?;
            let (tb, timings) = interruptible(FourHost::up(cfg)).await??;
            println!("testbed up ({timings:?})\n");
            println!("{}", tb.state().status().await);
            println!(
                "API: {} (e.g. `mose --api {} agents`)",
                tb.state().api_url,
                tb.state().api_url
            );
            tb.persist();
        }
        Cmd::Status => {
            let state = State::load(&out_dir.join("state.json"))?;
            print!("{}", state.status().await);
        }
        Cmd::Migrate { to, targets } => {
            let state = State::load(&out_dir.join("state.json"))?;
            let from = state
                .service_location()
                .await?
                .context("the service runs on no edge host")?;
            if from == to {
                bail!("the service already runs on {to}");
            }
            let task = demo::migrate(&state, &from, &to, targets.targets(), &mut |l| {
                println!("{l}")
            })
            .await?;
            print!("{}", mose_orchestrator::client::kpi_table(&task));
            if task.status != mose_orchestrator::tasks::TaskStatus::Succeeded {
                bail!("migration {} ended {}", task.id, task.status);
            }
        }
        Cmd::Demo {
            runs,
            skip_setup,
            up,
            targets,
        } => run_demo(runs, skip_setup, &up, targets.targets(), &out_dir).await?,
        Cmd::Down { prefix } => down(&prefix, &out_dir).await?,
        Cmd::PlaceEndpoint { placement } => {
            let p: Placement =
                serde_json::from_str(&placement).context("placement argument is not valid JSON")?;
            println!("{}", p.apply_here().await?);
        }
    }
    Ok(())
}

/// Run `f` unless Ctrl-C (or SIGTERM) comes first; dropping `f` then cleans up what it made.
async fn interruptible<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::select! {
        r = f => Ok(r),
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

/// Binaries next to this one (built first unless `--no-build`), and the testbed's config.
async fn config(args: &UpArgs, out_dir: &Path) -> anyhow::Result<Config> {
    let exe = std::env::current_exe().context("where is this binary?")?;
    let dir = exe
        .parent()
        .map(Path::to_path_buf)
        .context("this binary has no directory")?;
    if !args.no_build {
        eprintln!(
            "building mose-agent and mose-orchestrator (profile of {})",
            dir.display()
        );
        Binaries::build(&mose_testbed::workspace_dir(), &dir).await?;
    }
    Ok(Config {
        prefix: args.prefix.clone(),
        binaries: Binaries::in_dir(&dir, exe)?,
        out_dir: out_dir.to_path_buf(),
        api_net: args.api_net,
        lease_ms: args.lease_ms,
    })
}

async fn run_demo(
    runs: u32,
    skip_setup: bool,
    up: &UpArgs,
    targets: Targets,
    out_dir: &Path,
) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !skip_setup {
        let script: PathBuf = mose_testbed::workspace_dir().join("testbed/setup-host.sh");
        eprintln!("== host setup: {}", script.display());
        let status = tokio::process::Command::new("bash")
            .arg(&script)
            .status()
            .await
            .with_context(|| format!("run {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
    }
    let cfg = config(up, out_dir).await?;
    eprintln!("== bringing up the four hosts (prefix {})", cfg.prefix);
    let t = Instant::now();
    let (tb, timings) = interruptible(FourHost::up(cfg)).await??;
    println!(
        "four hosts up in {:.1} s ({timings:?})\n",
        t.elapsed().as_secs_f64()
    );
    println!("{}", tb.state().status().await);
    let outcome = interruptible(demo::run(&tb, runs, targets, out_dir, &mut |l| {
        println!("{l}")
    }))
    .await;
    eprintln!("== tearing down");
    let down = tb.destroy().await;
    let outcome = outcome??;
    down?;
    println!("\n{}", outcome.report.kpi_table());
    println!(
        "report: {}\nplot:   {}",
        out_dir.join("report.json").display(),
        out_dir.join("latency.png").display()
    );
    if let Some(why) = &outcome.stopped {
        bail!("the demo stopped early: {why}");
    }
    if !outcome.all_good() {
        bail!("not every migration kept the connection and the state; see the table above");
    }
    Ok(())
}

async fn down(prefix: &str, out_dir: &Path) -> anyhow::Result<()> {
    let r = mose_testbed::sweep_stale(prefix).await?;
    println!(
        "removed {} host(s) {:?}, {} link(s)/namespace(s) {:?}",
        r.hosts.len(),
        r.hosts,
        r.links.len(),
        r.links
    );
    if !r.is_clean() {
        bail!("could not remove everything: {}", r.problems.join("; "));
    }
    // The state of a testbed that is gone; only ours (another prefix's is not touched).
    let state_file = out_dir.join("state.json");
    if State::load(&state_file).is_ok_and(|s| s.prefix == prefix) {
        std::fs::remove_file(&state_file)
            .with_context(|| format!("remove {}", state_file.display()))?;
    }
    // A veth vanishes with its namespace a moment after the namespace's last user.
    let mut left = mose_testbed::leftovers(prefix);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = mose_testbed::leftovers(prefix);
    }
    if !left.is_empty() {
        bail!("still present after the sweep: {}", left.join("; "));
    }
    Ok(())
}
