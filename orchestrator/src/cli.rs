//! Command line and config file of the `mose-orchestrator` daemon.

use mose_protocol::units::BytesPerSec;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use mose_protocol::cli::ZenohArgs;
use mose_protocol::cli::{load_toml, ConfigFileError};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::{KeyError, KeySpace};
use serde::Deserialize;
use thiserror::Error;

use crate::services::{AddressPool, PoolError};
use crate::tasks::DriverConfig;

/// Default address of the HTTP API (docs/protocol.md#http-api).
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
    /// Overlay addresses deployed services get, FIRST-LAST/PREFIX [default:
    /// 10.88.0.100-10.88.0.254/24]
    #[arg(long, value_name = "RANGE")]
    pub service_pool: Option<AddressPool>,
    /// The HTTP API's bearer tokens, `operator token` per line, readable by its owner only;
    /// created with one random `admin` token when missing [default: STATE_DIR/api-tokens]
    #[arg(long, value_name = "FILE")]
    pub api_tokens: Option<PathBuf>,
    /// A DNS name clients may reach the HTTP API by (its Host header); IP literals and
    /// localhost are always accepted. Repeatable
    #[arg(long = "api-allowed-host", value_name = "NAME")]
    pub api_allowed_hosts: Vec<String>,
    /// Zenoh connection flags.
    #[command(flatten)]
    pub zenoh: ZenohArgs,
}

/// The config file; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// Address of the HTTP API.
    pub http: Option<SocketAddr>,
    /// Key-expression prefix of the MOSE domain.
    pub prefix: Option<String>,
    /// Directory of the task database.
    pub state_dir: Option<PathBuf>,
    /// Bandwidth to plan with when the source has no estimate.
    pub default_bandwidth_bytes_per_s: Option<u64>,
    /// The HTTP API's tokens file.
    pub api_tokens: Option<PathBuf>,
    /// DNS names the HTTP API answers for.
    pub api_allowed_hosts: Vec<String>,
    /// Step timeouts and retries (`[steps]`); what is absent keeps its default.
    pub steps: StepsFile,
    /// Deployed services (`[services]`).
    pub services: ServicesFile,
    /// Task records (`[tasks]`).
    pub tasks: TasksFile,
    /// Zenoh session settings (`[zenoh]`).
    pub zenoh: ZenohOptions,
}

/// `[steps]` of the config file: how long each migration step may take and how rollback and
/// release steps are retried. Short values make faults show quickly (the fault tests use them);
/// the defaults are generous next to measured step times.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepsFile {
    /// Timeout of Describe.
    pub describe_ms: Option<u64>,
    /// Timeout of Prepare.
    pub prepare_ms: Option<u64>,
    /// Timeout of each pre-dump round and of the final checkpoint.
    pub checkpoint_ms: Option<u64>,
    /// Excluding the transfer, whose allowance is added per task.
    pub restore_ms: Option<u64>,
    /// Timeout of SwitchFlow.
    pub switch_flow_ms: Option<u64>,
    /// Timeout of Release.
    pub release_ms: Option<u64>,
    /// Each attempt of each rollback step.
    pub rollback_ms: Option<u64>,
    /// Attempts of each rollback or release step.
    pub retry_attempts: Option<u32>,
    /// Pause between those attempts.
    pub retry_backoff_ms: Option<u64>,
    /// How long a rollback or release step waits for its agent to come back when it is absent.
    pub agent_wait_ms: Option<u64>,
}

impl StepsFile {
    /// `driver` with every value given here replacing the default.
    fn apply(&self, driver: &mut DriverConfig) -> Result<(), ConfigError> {
        let t = &mut driver.timeouts;
        for (value, field, name) in [
            (self.describe_ms, &mut t.describe, "describe_ms"),
            (self.prepare_ms, &mut t.prepare, "prepare_ms"),
            (self.checkpoint_ms, &mut t.checkpoint, "checkpoint_ms"),
            (self.restore_ms, &mut t.restore, "restore_ms"),
            (self.switch_flow_ms, &mut t.switch_flow, "switch_flow_ms"),
            (self.release_ms, &mut t.release, "release_ms"),
            (self.rollback_ms, &mut t.rollback, "rollback_ms"),
        ] {
            if let Some(ms) = value {
                // A zero timeout would fail every step before it is sent.
                if ms == 0 {
                    return Err(ConfigError::ZeroStepSetting(name));
                }
                *field = Duration::from_millis(ms);
            }
        }
        if let Some(n) = self.retry_attempts {
            if n == 0 {
                return Err(ConfigError::ZeroStepSetting("retry_attempts"));
            }
            driver.retry_attempts = n;
        }
        if let Some(ms) = self.retry_backoff_ms {
            driver.retry_backoff = Duration::from_millis(ms);
        }
        if let Some(ms) = self.agent_wait_ms {
            driver.agent_wait = Duration::from_millis(ms);
        }
        Ok(())
    }
}

/// The `[services]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesFile {
    /// Overlay addresses deployed services get, `FIRST-LAST/PREFIX`.
    pub pool: Option<String>,
}

/// The `[tasks]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksFile {
    /// How long finished task records are kept, in hours (0: forever).
    pub retention_hours: Option<u64>,
}

/// Finished task records are kept a week unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The settled configuration.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    /// The MOSE key space.
    pub keys: KeySpace,
    /// Directory of the task database.
    pub state_dir: PathBuf,
    /// Step timeouts, retries and the planning default.
    pub driver: DriverConfig,
    /// Overlay addresses of deployed services.
    pub service_pool: AddressPool,
    /// How long finished task records are kept; `None`: forever.
    pub task_retention: Option<Duration>,
    /// Zenoh session settings.
    pub zenoh: ZenohOptions,
    /// The HTTP API's tokens file.
    pub api_tokens: PathBuf,
    /// DNS names the HTTP API answers for.
    pub api_allowed_hosts: Vec<String>,
}

impl OrchestratorConfig {
    /// The task database inside the state directory.
    pub fn task_db(&self) -> PathBuf {
        self.state_dir.join("tasks.sqlite")
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A bandwidth of 0 would plan an endless transfer.
    #[error("default_bandwidth_bytes_per_s must be at least 1 byte per second")]
    ZeroBandwidth,
    /// A step setting that must be positive is 0.
    #[error("[steps] {0} must be at least 1")]
    ZeroStepSetting(&'static str),
    /// The key prefix is not a valid key expression.
    #[error("invalid key prefix: {0}")]
    Prefix(#[from] KeyError),
    /// The service address pool is unusable.
    #[error("[services] {0}")]
    Pool(#[from] PoolError),
}

impl ConfigFile {
    /// Reads and parses a config file.
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
        if let Some(bandwidth) = self
            .default_bandwidth
            .or(file.default_bandwidth_bytes_per_s)
        {
            // The designer needs at least one byte per second to plan with.
            if bandwidth == 0 {
                return Err(ConfigError::ZeroBandwidth);
            }
            driver.default_bandwidth_bytes_per_s = BytesPerSec(bandwidth);
        }
        file.steps.apply(&mut driver)?;
        let service_pool = match (self.service_pool, &file.services.pool) {
            (Some(pool), _) => pool,
            (None, Some(text)) => text.parse()?,
            (None, None) => AddressPool::default(),
        };
        let state_dir = self
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let mut api_allowed_hosts = file.api_allowed_hosts;
        api_allowed_hosts.extend(self.api_allowed_hosts);
        Ok(OrchestratorConfig {
            api_tokens: self
                .api_tokens
                .or(file.api_tokens)
                .unwrap_or_else(|| state_dir.join("api-tokens")),
            api_allowed_hosts,
            http,
            keys: KeySpace::new(
                prefix
                    .as_deref()
                    .unwrap_or(mose_protocol::keys::DEFAULT_PREFIX),
            )?,
            state_dir,
            driver,
            service_pool,
            task_retention: match file.tasks.retention_hours {
                Some(0) => None,
                Some(hours) => Some(Duration::from_secs(hours.saturating_mul(3600))),
                None => Some(DEFAULT_RETENTION),
            },
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
        assert_eq!(
            cfg2.driver.default_bandwidth_bytes_per_s,
            BytesPerSec(125_000_000)
        );
        let cfg3 = Cli::parse_from(["mose-orchestrator", "--default-bandwidth", "12500000"])
            .settle()
            .unwrap();
        assert_eq!(
            cfg3.driver.default_bandwidth_bytes_per_s,
            BytesPerSec(12_500_000)
        );
        assert_eq!(cfg.http.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.keys.prefix(), "site");
        assert_eq!(cfg.zenoh.lease_ms, 2000);
        assert_eq!(cfg.service_pool, AddressPool::default());
        assert_eq!(cfg.task_retention, Some(DEFAULT_RETENTION));
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[tasks]\nretention_hours = 0").unwrap();
        let path = f.path().to_str().unwrap();
        let cfg = Cli::parse_from(["mose-orchestrator", "-c", path])
            .settle()
            .unwrap();
        assert_eq!(cfg.task_retention, None, "0 keeps them forever");
    }

    #[test]
    fn the_service_pool_from_the_file_or_the_flag() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[services]\npool = \"10.5.0.10-10.5.0.20/16\"").unwrap();
        let path = f.path().to_str().unwrap();
        let cfg = Cli::parse_from(["mose-orchestrator", "-c", path])
            .settle()
            .unwrap();
        assert_eq!(cfg.service_pool.to_string(), "10.5.0.10-10.5.0.20/16");
        let cfg = Cli::parse_from([
            "mose-orchestrator",
            "-c",
            path,
            "--service-pool",
            "10.6.0.2-10.6.0.3/24",
        ])
        .settle()
        .unwrap();
        assert_eq!(cfg.service_pool.size(), 2);
        assert!(Cli::try_parse_from(["mose-orchestrator", "--service-pool", "10.6.0.2"]).is_err());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[services]\npool = \"nope\"").unwrap();
        let err = Cli::parse_from(["mose-orchestrator", "-c", f.path().to_str().unwrap()])
            .settle()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("[services] invalid service address pool"),
            "{err}"
        );
    }

    #[test]
    fn step_timeouts_from_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[steps]\nrestore_ms = 1500\nrollback_ms = 2000\nretry_attempts = 5\nretry_backoff_ms = 100\nagent_wait_ms = 7000"
        )
        .unwrap();
        let path = f.path().to_str().unwrap();
        let d = Cli::parse_from(["mose-orchestrator", "-c", path])
            .settle()
            .unwrap()
            .driver;
        assert_eq!(d.timeouts.restore, Duration::from_millis(1500));
        assert_eq!(d.timeouts.rollback, Duration::from_secs(2));
        assert_eq!(d.retry_attempts, 5);
        assert_eq!(d.retry_backoff, Duration::from_millis(100));
        assert_eq!(d.agent_wait, Duration::from_secs(7));
        // What the file leaves out keeps its default.
        assert_eq!(
            d.timeouts.checkpoint,
            DriverConfig::default().timeouts.checkpoint
        );

        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[steps]\nrestore_ms = 0").unwrap();
        let err = Cli::parse_from(["mose-orchestrator", "-c", f.path().to_str().unwrap()])
            .settle()
            .unwrap_err();
        assert!(err.to_string().contains("restore_ms"), "{err}");
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
