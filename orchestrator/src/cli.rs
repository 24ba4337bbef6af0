//! Command line and config file of the `mose-orchestrator` daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use mose_protocol::cli::ZenohArgs;
use mose_protocol::cli::{load_toml, ConfigFileError};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::{KeyError, KeySpace};
use serde::Deserialize;
use thiserror::Error;

use crate::tasks::DriverConfig;

/// Default address of the HTTP API (SPEC §8).
pub const DEFAULT_HTTP: &str = "127.0.0.1:7070";

/// Default directory of the task database.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mose";

/// MOSE-RS orchestrator: discovers the agents on the edge LAN (Zenoh, no configuration needed
/// with multicast), keeps their live view, and serves it over HTTP.
#[derive(Debug, Parser)]
#[command(name = "mose-orchestrator", version)]
pub struct Cli {
    /// TOML config file; flags given here override its values
    #[arg(long, short, value_name = "FILE", env = "MOSE_ORCHESTRATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:7070]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Key-expression prefix of the MOSE domain [default: mose]
    #[arg(long)]
    pub prefix: Option<String>,
    /// Directory of the task database (tasks.sqlite), kept across restarts so unfinished
    /// migrations are reconciled [default: /var/lib/mose]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Bandwidth source → destination to plan with when the source has no estimate, in bytes
    /// per second [default: 125000000, 1 Gbit/s]
    #[arg(long, value_name = "BYTES_PER_S", value_parser = clap::value_parser!(u64).range(1..))]
    pub default_bandwidth: Option<u64>,
    #[command(flatten)]
    pub zenoh: ZenohArgs,
}

/// The config file; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    pub http: Option<SocketAddr>,
    pub prefix: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub default_bandwidth_bps: Option<u64>,
    pub zenoh: ZenohOptions,
}

/// The settled configuration.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub http: SocketAddr,
    pub keys: KeySpace,
    pub state_dir: PathBuf,
    pub driver: DriverConfig,
    pub zenoh: ZenohOptions,
}

impl OrchestratorConfig {
    /// The task database inside the state directory.
    pub fn task_db(&self) -> PathBuf {
        self.state_dir.join("tasks.sqlite")
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("default_bandwidth_bps must be at least 1 byte per second")]
    ZeroBandwidth,
    #[error("invalid key prefix: {0}")]
    Prefix(#[from] KeyError),
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(load_toml(path)?)
    }
}

impl Cli {
    /// Reads the config file (if any) and applies the flags over it.
    pub fn settle(self) -> Result<OrchestratorConfig, ConfigError> {
        let mut file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        file.zenoh.apply(&self.zenoh);
        let http = match self.http.or(file.http) {
            Some(addr) => addr,
            None => DEFAULT_HTTP
                .parse()
                .expect("DEFAULT_HTTP is a socket address"),
        };
        let prefix = self.prefix.or(file.prefix);
        let mut driver = DriverConfig::default();
        if let Some(bandwidth) = self.default_bandwidth.or(file.default_bandwidth_bps) {
            // The designer needs at least one byte per second to plan with.
            if bandwidth == 0 {
                return Err(ConfigError::ZeroBandwidth);
            }
            driver.default_bandwidth_bps = bandwidth;
        }
        Ok(OrchestratorConfig {
            http,
            keys: KeySpace::new(
                prefix
                    .as_deref()
                    .unwrap_or(mose_protocol::keys::DEFAULT_PREFIX),
            )?,
            state_dir: self
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            driver,
            zenoh: file.zenoh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn defaults_and_overrides() {
        let cfg = Cli::parse_from(["mose-orchestrator"]).settle().unwrap();
        assert_eq!(cfg.http.to_string(), DEFAULT_HTTP);
        assert_eq!(cfg.keys.prefix(), "mose");
        assert_eq!(cfg.task_db(), Path::new("/var/lib/mose/tasks.sqlite"));

        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "http = \"0.0.0.0:8080\"\nprefix = \"lab\"\nstate_dir = \"/srv/mose\"\n[zenoh]\nlease_ms = 2000"
        )
        .unwrap();
        let path = f.path().to_str().unwrap();
        let cfg = Cli::parse_from(["mose-orchestrator", "-c", path, "--prefix", "site"])
            .settle()
            .unwrap();
        assert_eq!(cfg.state_dir, Path::new("/srv/mose"));
        let cfg2 = Cli::parse_from(["mose-orchestrator", "-c", path, "--state-dir", "/tmp/x"])
            .settle()
            .unwrap();
        assert_eq!(cfg2.state_dir, Path::new("/tmp/x"));
        assert_eq!(cfg2.driver.default_bandwidth_bps, 125_000_000);
        let cfg3 = Cli::parse_from(["mose-orchestrator", "--default-bandwidth", "12500000"])
            .settle()
            .unwrap();
        assert_eq!(cfg3.driver.default_bandwidth_bps, 12_500_000);
        assert_eq!(cfg.http.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.keys.prefix(), "site");
        assert_eq!(cfg.zenoh.lease_ms, 2000);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(Cli::try_parse_from(["mose-orchestrator", "--http", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["mose-orchestrator", "--default-bandwidth", "0"]).is_err());
        let err = Cli::parse_from(["mose-orchestrator", "--prefix", "a b"])
            .settle()
            .unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "listen = 3").unwrap();
        let path = f.path().to_str().unwrap();
        let err = Cli::parse_from(["mose-orchestrator", "-c", path])
            .settle()
            .unwrap_err();
        assert!(err.to_string().contains(path), "{err}");
    }
}
