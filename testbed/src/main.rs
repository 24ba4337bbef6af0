//! `mose-testbed`: the testbed's command line (its names are fixed: docs/operations.md, "Fixed
//! names"): `up`, `status`, `migrate`, `demo`, `bench`, `down`.
//!
//! Binaries: `up` and `demo` run `mose-agent` and `mose-orchestrator` from the same cargo target
//! and profile directory as this binary, and first run `cargo build -p mose-agent -p
//! mose-orchestrator` with that profile (a no-op when they are up to date), because `cargo run
//! -p mose-testbed` builds only this package. `--no-build` skips that and uses what is there.
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use mose_protocol::model::Objective;
use mose_protocol::units::BitsPerSec;
use mose_testbed::bench;
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
    /// Add a fifth host, mobile2: a second device wired to both edges, with its own agent and
    /// a client namespace at 10.88.0.3 (services with clients on two devices).
    #[arg(long)]
    second_mobile: bool,
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
    #[arg(long, value_parser = mose_api::format::parse_bandwidth_bytes_per_s)]
    bandwidth: Option<mose_protocol::units::BytesPerSec>,
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
    /// Set up this machine, bring the testbed up and measure: N migrations through MOSE against
    /// the same steps by a plain script (the raw-tool floor), then PAM's predicted downtime
    /// against the client-observed one over state sizes and link rates. Writes
    /// target/testbed/bench.json; tears down.
    Bench {
        /// MOSE migrations (each followed by one plain-script migration back).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Skip testbed/setup-host.sh (the machine is known to be ready).
        #[arg(long)]
        skip_setup: bool,
        /// Skip the PAM sweep (part 2).
        #[arg(long)]
        no_sweep: bool,
        /// PAM sweep: the service's state sizes in MiB.
        #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
        sizes_mib: Vec<u32>,
        /// PAM sweep: the edges' link rates (each edge's LAN link is shaped to it).
        #[arg(long, value_delimiter = ',', default_value = "1Gbit,200Mbit,50Mbit",
              value_parser = mose_api::format::parse_rate_bits_per_s)]
        rates: Vec<BitsPerSec>,
        /// PAM sweep: how fast the service dirties its state, in MiB/s.
        #[arg(long, default_value_t = 1.0)]
        dirty_mib_per_s: f64,
        /// PAM sweep: round trips edge1 -> edge2 -> edge1 per size and rate.
        #[arg(long, default_value_t = 2)]
        repeats: u32,
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
    /// The four-VM testbed (QEMU): vm up | status | down | demo.
    Vm {
        #[command(subcommand)]
        cmd: mose_testbed::vm::VmCmd,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `error: <cause chain>` and exit 1, never a backtrace (even with RUST_BACKTRACE set).
    mose_protocol::cli::exit_with(run().await)
}

async fn run() -> anyhow::Result<()> {
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
            let st = tb.state();
            println!(
                "API: {} (e.g. `mose --api {} --token-file {} agents`)",
                st.api_url,
                st.api_url,
                st.api_tokens.display()
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
            print!("{}", mose_api::format::kpi_table(&task));
            if task.status != mose_api::tasks::TaskStatus::Succeeded {
                bail!("migration {} ended {}", task.id, task.status);
            }
        }
        Cmd::Demo {
            runs,
            skip_setup,
            up,
            targets,
        } => run_demo(runs, skip_setup, &up, targets.targets(), &out_dir).await?,
        Cmd::Bench {
            runs,
            skip_setup,
            no_sweep,
            sizes_mib,
            rates,
            dirty_mib_per_s,
            repeats,
            up,
            targets,
        } => {
            if runs == 0 {
                bail!("--runs must be at least 1");
            }
            let sweep = (!no_sweep).then_some(bench::Sweep {
                sizes_mib,
                rates,
                dirty_mib_per_s,
                repeats,
            });
            if let Some(s) = &sweep {
                if s.migrations() == 0 {
                    bail!("the PAM sweep is empty: give --sizes-mib, --rates and --repeats ≥ 1, or --no-sweep");
                }
                if !s.dirty_mib_per_s.is_finite() || s.dirty_mib_per_s < 0.0 {
                    bail!("--dirty-mib-per-s must be a finite number ≥ 0");
                }
            }
            let cfg = bench::BenchConfig {
                runs,
                targets: targets.targets(),
                sweep,
            };
            run_bench(&cfg, skip_setup, &up, &out_dir).await?
        }
        Cmd::Down { prefix } => down(&prefix, &out_dir).await?,
        Cmd::PlaceEndpoint { placement } => {
            let p: Placement =
                serde_json::from_str(&placement).context("placement argument is not valid JSON")?;
            println!("{}", p.apply_here().await?);
        }
        Cmd::Vm { cmd } => mose_testbed::vm::run(cmd).await?,
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
        second_mobile: args.second_mobile,
    })
}

/// Run `testbed/setup-host.sh` unless skipped.
async fn setup_host(skip: bool) -> anyhow::Result<()> {
    if !skip {
        eprintln!("== host setup: testbed/setup-host.sh");
        mose_testbed::run_script("testbed/setup-host.sh").await?;
    }
    Ok(())
}

/// Bring the four hosts up and show their status.
async fn bring_up(up: &UpArgs, out_dir: &Path) -> anyhow::Result<FourHost> {
    let cfg = config(up, out_dir).await?;
    eprintln!("== bringing up the four hosts (prefix {})", cfg.prefix);
    let t = Instant::now();
    let (tb, timings) = interruptible(FourHost::up(cfg)).await??;
    println!(
        "four hosts up in {:.1} s ({timings:?})\n",
        t.elapsed().as_secs_f64()
    );
    println!("{}", tb.state().status().await);
    Ok(tb)
}

/// Tear the testbed down whatever `outcome` is; then the outcome's error, else teardown's.
async fn tear_down<T>(
    tb: FourHost,
    outcome: anyhow::Result<mose_testbed::Result<T>>,
) -> anyhow::Result<T> {
    eprintln!("== tearing down");
    let down = tb.destroy().await;
    let outcome = outcome??;
    down?;
    Ok(outcome)
}

async fn run_bench(
    cfg: &bench::BenchConfig,
    skip_setup: bool,
    up: &UpArgs,
    out_dir: &Path,
) -> anyhow::Result<()> {
    setup_host(skip_setup).await?;
    let tb = bring_up(up, out_dir).await?;
    let outcome = interruptible(bench::run(&tb, cfg, out_dir, &mut |l| println!("{l}"))).await;
    let outcome = tear_down(tb, outcome).await?;
    println!("\n{}", outcome.report.kpi_table());
    println!("\n{}", bench::summary(&outcome));
    println!(
        "report: {}\nfloor:  {}",
        out_dir.join("bench.json").display(),
        out_dir.join("bench-floor.json").display()
    );
    if let Some(why) = &outcome.stopped {
        bail!("the bench stopped early: {why}");
    }
    Ok(())
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
    setup_host(skip_setup).await?;
    let tb = bring_up(up, out_dir).await?;
    let outcome = interruptible(demo::run(&tb, runs, targets, out_dir, &mut |l| {
        println!("{l}")
    }))
    .await;
    let outcome = tear_down(tb, outcome).await?;
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
