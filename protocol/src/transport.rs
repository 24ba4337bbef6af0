//! How a MOSE node opens its Zenoh session.
//!
//! Defaults fit an edge LAN: peer mode with multicast scouting, so agents and the orchestrator
//! find each other with no configured endpoints; and a short lease, so a host that vanishes
//! without closing its connections (power loss, radio gone) is noticed in about a second instead
//! of Zenoh's default ten.
//!
//! Secure by default: every link is TLS with mutual authentication against the domain's CA,
//! and Zenoh's access control enforces the domain's policy ([`crate::acl`]). Plaintext needs an
//! explicit `insecure`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::acl::AccessControl;
use crate::domain::Roster;
use crate::keys::KeySpace;

/// Zenoh settings shared by every MOSE binary. Deserialised from the `[zenoh]` table of a
/// config file; command-line flags override it field by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZenohOptions {
    /// Endpoints to listen on, e.g. `tcp/0.0.0.0:7447`. Empty: Zenoh's default for peers.
    pub listen: Vec<String>,
    /// Endpoints to connect to, e.g. `tcp/10.0.0.1:7447`. Empty: rely on scouting.
    pub connect: Vec<String>,
    /// Find peers by UDP multicast scouting.
    pub multicast_scouting: bool,
    /// Interface for multicast scouting (needed where the default route is not the LAN, or in a
    /// namespace with only loopback). `None`: Zenoh picks.
    pub multicast_interface: Option<String>,
    /// Link lease in milliseconds: a silent peer is declared gone after this.
    pub lease_ms: u64,
    /// This node's TLS identity and the domain's roster, as `mose pki issue` writes them
    /// ([`TlsDir`]). Required unless `insecure`.
    pub tls_dir: Option<PathBuf>,
    /// Plaintext links and no access control: anyone on the network may join, read and drive
    /// the domain. Only for comparisons and throw-away labs.
    pub insecure: bool,
}

/// The files of a node's TLS directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDir {
    /// The domain CA's certificate (`ca.pem`): peers must present a certificate it signed.
    pub ca: PathBuf,
    /// This node's certificate (`cert.pem`), common name `{role}:{id}`.
    pub cert: PathBuf,
    /// Its private key (`key.pem`, mode 0600).
    pub key: PathBuf,
    /// The domain's members (`roster.toml`), from which the access control is built.
    pub roster: PathBuf,
}

impl TlsDir {
    /// The files under `dir`.
    pub fn at(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            roster: dir.join("roster.toml"),
        }
    }

    /// The domain's roster.
    pub fn load_roster(&self) -> Result<Roster, TransportError> {
        let bad = |reason: String| TransportError::Roster {
            path: self.roster.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&self.roster).map_err(|e| bad(e.to_string()))?;
        let roster: Roster = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        roster.validate().map_err(|e| bad(e.to_string()))?;
        Ok(roster)
    }
}

/// Zenoh's largest message, received: a blob chunk and its envelope. Zenoh's own default
/// (1 GiB) lets any peer make a node buffer a gigabyte.
pub const MAX_MESSAGE_BYTES: u64 = crate::blob::MAX_CHUNK_SIZE as u64 + (64 << 10);

impl Default for ZenohOptions {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            connect: Vec::new(),
            multicast_scouting: true,
            multicast_interface: None,
            lease_ms: 1000,
            tls_dir: None,
            insecure: false,
        }
    }
}

/// A Zenoh configuration that cannot be built or a session that cannot be opened.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A setting has a value zenoh rejects.
    #[error("invalid zenoh setting {key} = {value}: {reason}")]
    Config {
        /// The zenoh configuration key.
        key: &'static str,
        /// The value given.
        value: String,
        /// Why zenoh rejected it.
        reason: String,
    },
    /// The session could not be opened (zenoh's message).
    #[error("cannot open the zenoh session: {0}")]
    Open(String),
    /// Neither a TLS directory nor `insecure`.
    #[error(
        "no TLS identity: give --tls-dir DIR (made by `mose pki issue`) or, to run without \
         encryption and access control, --insecure"
    )]
    NoTls,
    /// A plaintext endpoint on a secured node.
    #[error("endpoint {0} is not tls/…: a secured node speaks only TLS (or give --insecure)")]
    Plaintext(String),
    /// A file of the TLS directory is missing.
    #[error("TLS file {path} is missing: {reason}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The roster cannot be read or is invalid.
    #[error("invalid roster {path}: {reason}")]
    Roster {
        /// The roster file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl ZenohOptions {
    /// The lease as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// Options for a node that only talks over explicit endpoints (tests, or networks where
    /// multicast is filtered).
    pub fn explicit(listen: Vec<String>, connect: Vec<String>) -> Self {
        Self {
            listen,
            connect,
            multicast_scouting: false,
            ..Self::default()
        }
    }

    /// A secured node with explicit `tls/` endpoints and the TLS directory `tls_dir`.
    pub fn secured(tls_dir: PathBuf, listen: Vec<String>, connect: Vec<String>) -> Self {
        Self {
            tls_dir: Some(tls_dir),
            ..Self::explicit(listen, connect)
        }
    }

    /// The TLS directory a secured node uses; `None` when `insecure`.
    pub fn tls(&self) -> Result<Option<TlsDir>, TransportError> {
        if self.insecure {
            return Ok(None);
        }
        let dir = self.tls_dir.as_deref().ok_or(TransportError::NoTls)?;
        let tls = TlsDir::at(dir);
        for path in [&tls.ca, &tls.cert, &tls.key, &tls.roster] {
            std::fs::metadata(path).map_err(|e| TransportError::TlsFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Some(tls))
    }

    /// Builds the Zenoh configuration (peer mode) for the domain of `keys`: TLS with mutual
    /// authentication and the domain's access control, unless `insecure`.
    pub fn to_config(&self, keys: &KeySpace) -> Result<zenoh::Config, TransportError> {
        if self.lease_ms < 100 {
            return Err(TransportError::Config {
                key: "lease_ms",
                value: self.lease_ms.to_string(),
                reason: "a lease under 100 ms declares healthy peers dead under load".into(),
            });
        }
        let mut config = zenoh::Config::default();
        let mut set = |key: &'static str, value: String| {
            config
                .insert_json5(key, &value)
                .map_err(|e| TransportError::Config {
                    key,
                    value,
                    reason: e.to_string(),
                })
        };
        set("mode", "\"peer\"".into())?;
        let tls = self.tls()?;
        if let Some(tls) = &tls {
            if let Some(e) = self
                .listen
                .iter()
                .chain(&self.connect)
                .find(|e| !e.starts_with("tls/"))
            {
                return Err(TransportError::Plaintext(e.clone()));
            }
            let path = |p: &Path| json_string(&p.to_string_lossy());
            set("transport/link/tls/root_ca_certificate", path(&tls.ca))?;
            set("transport/link/tls/listen_certificate", path(&tls.cert))?;
            set("transport/link/tls/listen_private_key", path(&tls.key))?;
            set("transport/link/tls/connect_certificate", path(&tls.cert))?;
            set("transport/link/tls/connect_private_key", path(&tls.key))?;
            set("transport/link/tls/enable_mtls", "true".into())?;
            // Peers are found by scouting at addresses no certificate can name; who a peer
            // is comes from its certificate's common name, which the access control checks.
            set("transport/link/tls/verify_name_on_connect", "false".into())?;
            set("transport/link/tls/close_link_on_expiration", "true".into())?;
            let roster = tls.load_roster()?;
            set(
                "access_control",
                AccessControl::for_domain(keys, &roster).to_json(),
            )?;
        }
        let listen = match (&tls, self.listen.is_empty()) {
            // Zenoh's default for peers, over TLS.
            (Some(_), true) => vec!["tls/[::]:0".to_string()],
            _ => self.listen.clone(),
        };
        if !listen.is_empty() {
            set("listen/endpoints", json_list(&listen))?;
        }
        if !self.connect.is_empty() {
            set("connect/endpoints", json_list(&self.connect))?;
        }
        set(
            "scouting/multicast/enabled",
            self.multicast_scouting.to_string(),
        )?;
        if let Some(iface) = &self.multicast_interface {
            set("scouting/multicast/interface", json_string(iface))?;
        }
        set("transport/link/tx/lease", self.lease_ms.to_string())?;
        // Four keep-alives per lease (Zenoh's own ratio), so one lost keep-alive is not fatal.
        set("transport/link/tx/keep_alive", "4".into())?;
        set(
            "transport/link/rx/max_message_size",
            MAX_MESSAGE_BYTES.to_string(),
        )?;
        Ok(config)
    }

    /// Opens the session for the domain of `keys`.
    pub async fn open(&self, keys: &KeySpace) -> Result<zenoh::Session, TransportError> {
        let config = self.to_config(keys)?;
        if self.insecure {
            tracing::warn!(
                "INSECURE: plaintext Zenoh links and no access control; any host on the network \
                 can join, read and drive this domain"
            );
        }
        zenoh::open(config)
            .await
            .map_err(|e| TransportError::Open(e.to_string()))
    }
}

/// Answers every query on a key expression, each in its own task, while it lives; dropping it
/// undeclares the queryable. Shared by every MOSE queryable (steps, task calls, blobs) so none of
/// them can block the others or outlive its owner.
pub struct QueryService {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for QueryService {
    fn drop(&mut self) {
        // Aborting drops the queryable, which undeclares it.
        self.task.abort();
    }
}

/// Queries one [`QueryService`] answers at once; one more is refused at once ("busy") rather
/// than queued, so a flood of queries costs a peer its own answers, not this node's memory.
/// Far above what a domain asks of one queryable (a step at a time per task, an image fetch
/// keeps a few chunks in flight).
pub const MAX_CONCURRENT_QUERIES: usize = 64;

impl QueryService {
    /// Declares a queryable on `key` and runs `answer` for each query, at most
    /// [`MAX_CONCURRENT_QUERIES`] at once.
    pub async fn start<F, Fut>(
        session: &zenoh::Session,
        key: &str,
        answer: F,
    ) -> Result<Self, zenoh::Error>
    where
        F: Fn(zenoh::query::Query) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let queryable = session.declare_queryable(key).await?;
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_QUERIES));
        let task = tokio::spawn(async move {
            while let Ok(query) = queryable.recv_async().await {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let answering = answer(query);
                        tokio::spawn(async move {
                            answering.await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(key = %query.key_expr(), "busy: refusing a query");
                        let busy = format!("busy: {MAX_CONCURRENT_QUERIES} queries in progress");
                        if let Err(e) = query.reply_err(busy).await {
                            tracing::debug!(error = %e, "busy reply not delivered");
                        }
                    }
                }
            }
        });
        Ok(Self { task })
    }
}

fn json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| json_string(s)).collect();
    format!("[{}]", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insecure() -> ZenohOptions {
        ZenohOptions {
            insecure: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_node_without_tls_or_insecure_refuses_to_start() {
        let err = ZenohOptions::default()
            .to_config(&KeySpace::default())
            .unwrap_err();
        assert!(matches!(err, TransportError::NoTls), "{err}");
        assert!(err.to_string().contains("--insecure"), "{err}");
    }

    #[test]
    fn insecure_defaults_build_a_peer_config_with_short_lease() {
        let config = insecure().to_config(&KeySpace::default()).unwrap();
        let json = format!("{config}");
        assert!(json.contains("\"mode\":\"peer\""), "{json}");
        assert!(json.contains("\"lease\":1000"), "{json}");
        assert!(
            json.contains(&format!("\"max_message_size\":{MAX_MESSAGE_BYTES}")),
            "{json}"
        );
        assert!(!json.contains("\"enable_mtls\":true"), "{json}");
    }

    #[test]
    fn explicit_endpoints_and_interface_are_set() {
        let mut o = ZenohOptions {
            insecure: true,
            ..ZenohOptions::explicit(
                vec!["tcp/127.0.0.1:17447".into()],
                vec!["tcp/127.0.0.1:17448".into()],
            )
        };
        o.multicast_interface = Some("veth0".into());
        let json = format!("{}", o.to_config(&KeySpace::default()).unwrap());
        assert!(json.contains("tcp/127.0.0.1:17447"), "{json}");
        assert!(json.contains("tcp/127.0.0.1:17448"), "{json}");
        assert!(json.contains("veth0"), "{json}");
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let keys = KeySpace::default();
        let o = ZenohOptions {
            lease_ms: 5,
            ..insecure()
        };
        assert!(o
            .to_config(&keys)
            .unwrap_err()
            .to_string()
            .contains("lease_ms"));
        let o = ZenohOptions {
            insecure: true,
            ..ZenohOptions::explicit(vec!["not-an-endpoint".into()], vec![])
        };
        let err = o.to_config(&keys).unwrap_err().to_string();
        assert!(err.contains("listen/endpoints"), "{err}");
    }
}
