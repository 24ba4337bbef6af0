//! What every MOSE binary shares on its command line: Zenoh flags, logging, shutdown.

use std::path::{Path, PathBuf};

use crate::transport::ZenohOptions;

/// A config file that cannot be read or parsed; names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this program.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
}

/// Reads a TOML config file into `T` (whose unknown keys should be refused by
/// `#[serde(deny_unknown_fields)]`).
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Command-line flags that override [`ZenohOptions`] (shared by every MOSE binary).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ZenohArgs {
    /// Zenoh endpoint to listen on (repeatable), e.g. tcp/0.0.0.0:7447
    #[arg(long = "listen", value_name = "ENDPOINT")]
    pub listen: Vec<String>,
    /// Zenoh endpoint to connect to (repeatable); not needed on a LAN with multicast
    #[arg(long = "connect", value_name = "ENDPOINT")]
    pub connect: Vec<String>,
    /// Disable multicast scouting (then give --connect or --listen)
    #[arg(long)]
    pub no_multicast: bool,
    /// Network interface for multicast scouting
    #[arg(long, value_name = "IFACE")]
    pub multicast_interface: Option<String>,
    /// Link lease in ms: a host silent this long is declared gone [default: 1000]
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// This node's TLS directory (ca.pem, cert.pem, key.pem, roster.toml), as `mose pki issue`
    /// writes it: links are mutual TLS and the domain's access control applies
    #[arg(long, value_name = "DIR", env = "MOSE_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Run without TLS and access control: anyone on the network can join, read and drive the
    /// domain (for comparisons and throw-away labs only)
    #[arg(long)]
    pub insecure: bool,
}

impl ZenohOptions {
    /// Applies command-line flags over options read from a file.
    pub fn apply(&mut self, args: &ZenohArgs) {
        if !args.listen.is_empty() {
            self.listen = args.listen.clone();
        }
        if !args.connect.is_empty() {
            self.connect = args.connect.clone();
        }
        if args.no_multicast {
            self.multicast_scouting = false;
        }
        if let Some(iface) = &args.multicast_interface {
            self.multicast_interface = Some(iface.clone());
        }
        if let Some(lease) = args.lease_ms {
            self.lease_ms = lease;
        }
        if let Some(dir) = &args.tls_dir {
            self.tls_dir = Some(dir.clone());
        }
        if args.insecure {
            self.insecure = true;
        }
    }
}

/// Waits for Ctrl-C or SIGTERM (what `kill` and service managers send): how every MOSE binary
/// knows to leave the network cleanly.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// Gives `path` (which must exist) `mode`: a node's state is its owner's only.
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Logs to stderr, filtered by `RUST_LOG` (default: info, with Zenoh's own chatter at warn).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,zenoh=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Ends a binary: operators get the error chain (`{:#}`) on stderr, not a backtrace, and a
/// failure exit status.
pub fn exit_with<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
