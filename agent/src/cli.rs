//! Command line of `mose-agent`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mose_protocol::cli::ZenohArgs;
use mose_protocol::messages::Role;

use crate::config::{AgentConfig, ConfigError, ConfigFile};

/// MOSE-RS agent: announces this host on the edge LAN (Zenoh, no configuration needed with
/// multicast), publishes its metrics and carries out migration steps for the orchestrator.
#[derive(Debug, Parser)]
#[command(name = "mose-agent", version)]
pub struct Cli {
    /// TOML config file; flags given here override its values
    #[arg(long, short, value_name = "FILE", env = "MOSE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Agent id, one key chunk of [A-Za-z0-9._-] [default: host name]
    #[arg(long)]
    pub id: Option<String>,
    /// edge (hosts services) or mobile (runs the client, steers its flow) [default: edge]
    #[arg(long)]
    pub role: Option<Role>,
    /// Key-expression prefix of the MOSE domain [default: mose]
    #[arg(long)]
    pub prefix: Option<String>,
    /// Metrics publication interval in ms [default: 1000]
    #[arg(long, value_name = "MS")]
    pub metrics_interval_ms: Option<u64>,
    /// Podman API socket [default: /run/podman/podman.sock]
    #[arg(long, value_name = "PATH")]
    pub podman_socket: Option<PathBuf>,
    /// OVSDB socket of this host's Open vSwitch [default: /run/openvswitch/db.sock]
    #[arg(long, value_name = "PATH")]
    pub ovsdb_socket: Option<PathBuf>,
    /// Open vSwitch run directory holding <bridge>.mgmt [default: /var/run/openvswitch]
    #[arg(long, value_name = "PATH")]
    pub ovs_rundir: Option<PathBuf>,
    /// OvS bridge that services and inter-host wires attach to [default: br0]
    #[arg(long, value_name = "NAME")]
    pub ovs_bridge: Option<String>,
    /// Directory for checkpoint archives of running migrations [default: /var/lib/mose-agent]
    #[arg(long, value_name = "PATH")]
    pub work_dir: Option<PathBuf>,
    /// Mobile hosts: OvS port toward an edge agent's host, as AGENT=PORT; repeatable, adds to
    /// (and overrides) the config file's [flow_ports]
    #[arg(long = "flow-port", value_name = "AGENT=PORT", value_parser = parse_flow_port)]
    pub flow_ports: Vec<(String, String)>,
    /// Zenoh connection flags.
    #[command(flatten)]
    pub zenoh: ZenohArgs,
    /// A one-off job instead of running the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Without a subcommand the agent runs (announces itself and serves migration steps).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure this host's checkpoint/restore costs with the memory workload and fit the PAM
    /// model's parameters; stores them in <work-dir>/pam.json, published in the profile from the
    /// agent's next start. Refuses a fit that is clearly bad.
    Calibrate(CalibrateArgs),
}

/// Options of `calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The memory workload image (testbed/workloads `memload`), present on this host
    #[arg(long, default_value = "localhost/mose/memload:latest")]
    pub image: String,
    /// State sizes to measure, MiB
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    pub sizes_mib: Vec<u32>,
    /// Dirty rates to measure, MiB/s (the lowest and highest to plan for)
    #[arg(long, value_delimiter = ',', default_value = "0,20")]
    pub rates_mib_per_s: Vec<f64>,
    /// Runs per size and rate (their medians are fitted)
    #[arg(long, default_value_t = 3)]
    pub repeats: u32,
    /// Smallest acceptable R² of a fitted law (a law under it is still accepted when its
    /// points lie within 15 % of the line: nearly flat, predicted well)
    #[arg(long, default_value_t = 0.8)]
    pub min_r_squared: f64,
}

impl Cli {
    /// Reads the config file (if any) and applies the flags over it.
    pub fn settle(self) -> Result<(AgentConfig, Option<Command>), ConfigError> {
        let command = self.command;
        let mut file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        file.id = self.id.or(file.id);
        file.role = self.role.or(file.role);
        file.prefix = self.prefix.or(file.prefix);
        file.metrics_interval_ms = self.metrics_interval_ms.or(file.metrics_interval_ms);
        file.podman_socket = self.podman_socket.or(file.podman_socket);
        file.ovsdb_socket = self.ovsdb_socket.or(file.ovsdb_socket);
        file.ovs_rundir = self.ovs_rundir.or(file.ovs_rundir);
        file.ovs_bridge = self.ovs_bridge.or(file.ovs_bridge);
        file.work_dir = self.work_dir.or(file.work_dir);
        file.flow_ports.extend(self.flow_ports);
        file.zenoh.apply(&self.zenoh);
        Ok((file.settle()?, command))
    }
}

fn parse_flow_port(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((agent, port)) if !agent.is_empty() && !port.is_empty() => {
            Ok((agent.to_string(), port.to_string()))
        }
        _ => Err(format!("expected AGENT=PORT, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flags_override_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "id = \"from-file\"\nrole = \"mobile\"\n[zenoh]\nlease_ms = 3000"
        )
        .unwrap();
        let cli = Cli::parse_from([
            "mose-agent",
            "--config",
            f.path().to_str().unwrap(),
            "--id",
            "from-flag",
            "--no-multicast",
            "--connect",
            "tcp/127.0.0.1:7447",
            "--flow-port",
            "edge-b=to-b",
            "--work-dir",
            "/tmp/w",
        ]);
        let (cfg, _) = cli.settle().unwrap();
        assert_eq!(cfg.id, "from-flag");
        assert_eq!(cfg.role, Role::Mobile);
        assert_eq!(cfg.zenoh.lease_ms, 3000);
        assert!(!cfg.zenoh.multicast_scouting);
        assert_eq!(cfg.zenoh.connect, vec!["tcp/127.0.0.1:7447".to_string()]);
        assert_eq!(
            cfg.flow_ports.get("edge-b").map(String::as_str),
            Some("to-b")
        );
        assert_eq!(cfg.work_dir, PathBuf::from("/tmp/w"));
    }

    #[test]
    fn bad_flow_port_flag_is_rejected_by_the_parser() {
        let err = Cli::try_parse_from(["mose-agent", "--flow-port", "edge-b"]).unwrap_err();
        assert!(err.to_string().contains("AGENT=PORT"), "{err}");
    }

    #[test]
    fn calibrate_takes_lists_and_defaults() {
        let cli = Cli::parse_from([
            "mose-agent",
            "--id",
            "e1",
            "calibrate",
            "--sizes-mib",
            "2,20",
        ]);
        let (_, command) = cli.settle().unwrap();
        let Some(Command::Calibrate(args)) = command else {
            panic!("calibrate subcommand expected")
        };
        assert_eq!(args.sizes_mib, [2, 20]);
        assert_eq!(args.rates_mib_per_s, [0.0, 20.0]);
        assert_eq!(args.repeats, 3);
        assert!(Cli::try_parse_from(["mose-agent", "calibrate", "--sizes-mib", "x"]).is_err());
    }

    #[test]
    fn bad_role_flag_is_rejected_by_the_parser() {
        let err = Cli::try_parse_from(["mose-agent", "--role", "satellite"]).unwrap_err();
        assert!(err.to_string().contains("satellite"), "{err}");
    }
}
