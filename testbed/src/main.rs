//! `mose-testbed`: the testbed's command line. `demo` and `bench` (SPEC §8) come with a later
//! issue; `down` is here already because clearing what a crashed run left is needed today.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mose-testbed", about = "MOSE-RS emulated edge testbed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Remove everything the testbed made (hosts, namespaces, LAN, containers, OvS), also after a crash.
    Down {
        /// Name prefix to sweep.
        #[arg(long, default_value = mose_testbed::DEFAULT_PREFIX)]
        prefix: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Down { prefix } => {
            let r = mose_testbed::sweep_stale(&prefix).await?;
            println!(
                "removed {} host(s) {:?}, {} link(s) {:?}",
                r.hosts.len(),
                r.hosts,
                r.links.len(),
                r.links
            );
            if !r.is_clean() {
                anyhow::bail!("could not remove everything: {}", r.problems.join("; "));
            }
            // A veth vanishes with its namespace a moment after the namespace's last user.
            let mut left = mose_testbed::leftovers(&prefix);
            for _ in 0..50 {
                if left.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                left = mose_testbed::leftovers(&prefix);
            }
            if !left.is_empty() {
                anyhow::bail!("still present after the sweep: {}", left.join("; "));
            }
        }
    }
    Ok(())
}
