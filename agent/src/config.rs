//! Agent configuration: a TOML file, overridden field by field by command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mose_protocol::cli::{load_toml, ConfigFileError};
use mose_protocol::messages::Role;
use mose_protocol::transport::ZenohOptions;
use mose_protocol::{KeyError, KeySpace};
use serde::Deserialize;
use thiserror::Error;

/// The configuration file. Every field is optional; see [`AgentConfig`] for the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// Agent id.
    pub id: Option<String>,
    /// Edge or mobile.
    pub role: Option<Role>,
    /// Key-expression prefix.
    pub prefix: Option<String>,
    /// Metrics period.
    pub metrics_interval_ms: Option<u64>,
    /// The Podman API socket.
    pub podman_socket: Option<PathBuf>,
    /// The OVSDB socket.
    pub ovsdb_socket: Option<PathBuf>,
    /// Where ovs-vswitchd keeps its OpenFlow sockets.
    pub ovs_rundir: Option<PathBuf>,
    /// The OvS bridge.
    pub ovs_bridge: Option<String>,
    /// Work directory for archives and service state.
    pub work_dir: Option<PathBuf>,
    /// `[flow_ports]`: agent id = OvS port toward that agent's host.
    pub flow_ports: BTreeMap<String, String>,
    /// Zenoh session settings (`[zenoh]`).
    pub zenoh: ZenohOptions,
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// The agent id is not a valid key chunk.
    #[error("invalid agent id: {0}")]
    Id(KeyError),
    /// The prefix is not a valid key expression.
    #[error("invalid key prefix: {0}")]
    Prefix(KeyError),
    /// The metrics interval is out of range.
    #[error("metrics interval must be between 50 ms and 1 h, got {0} ms")]
    MetricsInterval(u64),
    /// No id was given and the host name is unknown.
    #[error("cannot determine the host name for the default agent id; set --id")]
    NoHostname,
    /// A `--flow-port` or `[flow_ports]` entry is malformed.
    #[error("invalid flow port entry: {0}")]
    FlowPort(String),
}

/// The settled configuration an agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Agent id (one key chunk); default: the host name.
    pub id: String,
    /// Default: edge.
    pub role: Role,
    /// The MOSE key space. Default prefix: `mose`.
    pub keys: KeySpace,
    /// Default: 1 s.
    pub metrics_interval: Duration,
    /// The Podman API service (`podman --runtime runc system service`). Default:
    /// `/run/podman/podman.sock`.
    pub podman_socket: PathBuf,
    /// This host's OVSDB. Default: `/run/openvswitch/db.sock`.
    pub ovsdb_socket: PathBuf,
    /// Where ovs-vswitchd keeps `<bridge>.mgmt` (OpenFlow). Default: `/var/run/openvswitch`.
    pub ovs_rundir: PathBuf,
    /// The bridge services and wires hang off. Default: `br0`.
    pub ovs_bridge: String,
    /// Checkpoint archives of running migrations. Default: `/var/lib/mose-agent`.
    pub work_dir: PathBuf,
    /// Mobile hosts: OvS port on `ovs_bridge` toward each edge agent, by agent id (the flow
    /// switch steers the service there). Default: none.
    pub flow_ports: BTreeMap<String, String>,
    /// Zenoh session settings.
    pub zenoh: ZenohOptions,
}

impl ConfigFile {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(load_toml(path)?)
    }

    /// Fills the defaults and checks every value.
    pub fn settle(self) -> Result<AgentConfig, ConfigError> {
        let id = match self.id {
            Some(id) => id,
            None => sysinfo::System::host_name().ok_or(ConfigError::NoHostname)?,
        };
        mose_protocol::keys::validate_id("agent id", &id).map_err(ConfigError::Id)?;
        let keys = KeySpace::new(
            self.prefix
                .as_deref()
                .unwrap_or(mose_protocol::keys::DEFAULT_PREFIX),
        )
        .map_err(ConfigError::Prefix)?;
        let interval_ms = self.metrics_interval_ms.unwrap_or(1000);
        if !(50..=3_600_000).contains(&interval_ms) {
            return Err(ConfigError::MetricsInterval(interval_ms));
        }
        for (agent, port) in &self.flow_ports {
            mose_protocol::keys::validate_id("agent id", agent)
                .map_err(|e| ConfigError::FlowPort(format!("{agent} = {port:?}: {e}")))?;
            if port.is_empty() || port.len() > 15 {
                return Err(ConfigError::FlowPort(format!(
                    "{agent} = {port:?}: an OvS port name has 1-15 characters"
                )));
            }
        }
        Ok(AgentConfig {
            id,
            role: self.role.unwrap_or(Role::Edge),
            keys,
            metrics_interval: Duration::from_millis(interval_ms),
            podman_socket: self
                .podman_socket
                .unwrap_or_else(|| PathBuf::from("/run/podman/podman.sock")),
            ovsdb_socket: self
                .ovsdb_socket
                .unwrap_or_else(|| PathBuf::from("/run/openvswitch/db.sock")),
            ovs_rundir: self
                .ovs_rundir
                .unwrap_or_else(|| PathBuf::from("/var/run/openvswitch")),
            ovs_bridge: self.ovs_bridge.unwrap_or_else(|| "br0".into()),
            work_dir: self
                .work_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/mose-agent")),
            flow_ports: self.flow_ports,
            zenoh: self.zenoh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let cfg = ConfigFile {
            id: Some("edge1".into()),
            ..Default::default()
        }
        .settle()
        .unwrap();
        assert_eq!(cfg.role, Role::Edge);
        assert_eq!(cfg.keys.prefix(), "mose");
        assert_eq!(cfg.metrics_interval, Duration::from_secs(1));
        assert!(cfg.zenoh.multicast_scouting);
        assert_eq!(cfg.zenoh.lease_ms, 1000);
        assert_eq!(cfg.ovs_bridge, "br0");
        assert_eq!(cfg.work_dir, PathBuf::from("/var/lib/mose-agent"));
        assert!(cfg.flow_ports.is_empty());
    }

    #[test]
    fn toml_file_parses() {
        let file: ConfigFile = toml::from_str(
            r#"
            id = "drone-7"
            role = "mobile"
            prefix = "site-a/mose"
            metrics_interval_ms = 250
            ovs_bridge = "br-edge"
            work_dir = "/srv/mose"
            [flow_ports]
            edge-a = "to-a"
            [zenoh]
            connect = ["tcp/10.0.0.1:7447"]
            lease_ms = 2000
            "#,
        )
        .unwrap();
        let cfg = file.settle().unwrap();
        assert_eq!(cfg.id, "drone-7");
        assert_eq!(cfg.role, Role::Mobile);
        assert_eq!(cfg.keys.agent("x"), "site-a/mose/agents/x");
        assert_eq!(cfg.zenoh.connect, vec!["tcp/10.0.0.1:7447".to_string()]);
        assert_eq!(cfg.zenoh.lease_ms, 2000);
        assert_eq!(cfg.ovs_bridge, "br-edge");
        assert_eq!(cfg.work_dir, PathBuf::from("/srv/mose"));
        assert_eq!(
            cfg.flow_ports.get("edge-a").map(String::as_str),
            Some("to-a")
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        assert!(toml::from_str::<ConfigFile>("colour = \"red\"").is_err());
        assert!(toml::from_str::<ConfigFile>("role = \"satellite\"").is_err());
        let bad_id = ConfigFile {
            id: Some("a/b".into()),
            ..Default::default()
        };
        assert!(matches!(bad_id.settle(), Err(ConfigError::Id(_))));
        let bad_interval = ConfigFile {
            id: Some("a".into()),
            metrics_interval_ms: Some(1),
            ..Default::default()
        };
        assert!(matches!(
            bad_interval.settle(),
            Err(ConfigError::MetricsInterval(1))
        ));
        let bad_port = ConfigFile {
            id: Some("a".into()),
            flow_ports: [("b".to_string(), "a-port-name-too-long".to_string())].into(),
            ..Default::default()
        };
        assert!(matches!(bad_port.settle(), Err(ConfigError::FlowPort(_))));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = ConfigFile::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent.toml"));
    }
}
