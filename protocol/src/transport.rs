//! How a MOSE node opens its Zenoh session.
//!
//! Defaults fit an edge LAN: peer mode with multicast scouting, so agents and the orchestrator
//! find each other with no configured endpoints; and a short lease, so a host that vanishes
//! without closing its connections (power loss, radio gone) is noticed in about a second instead
//! of Zenoh's default ten.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

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
}

impl Default for ZenohOptions {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            connect: Vec::new(),
            multicast_scouting: true,
            multicast_interface: None,
            lease_ms: 1000,
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

    /// Builds the Zenoh configuration (peer mode).
    pub fn to_config(&self) -> Result<zenoh::Config, TransportError> {
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
        if !self.listen.is_empty() {
            set("listen/endpoints", json_list(&self.listen))?;
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
        Ok(config)
    }

    /// Opens the session.
    pub async fn open(&self) -> Result<zenoh::Session, TransportError> {
        let config = self.to_config()?;
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

impl QueryService {
    /// Declares a queryable on `key` and runs `answer` for each query.
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
        let task = tokio::spawn(async move {
            while let Ok(query) = queryable.recv_async().await {
                tokio::spawn(answer(query));
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

    #[test]
    fn defaults_build_a_peer_config_with_short_lease() {
        let config = ZenohOptions::default().to_config().unwrap();
        let json = format!("{config}");
        assert!(json.contains("\"mode\":\"peer\""), "{json}");
        assert!(json.contains("\"lease\":1000"), "{json}");
    }

    #[test]
    fn explicit_endpoints_and_interface_are_set() {
        let mut o = ZenohOptions::explicit(
            vec!["tcp/127.0.0.1:17447".into()],
            vec!["tcp/127.0.0.1:17448".into()],
        );
        o.multicast_interface = Some("veth0".into());
        let json = format!("{}", o.to_config().unwrap());
        assert!(json.contains("tcp/127.0.0.1:17447"), "{json}");
        assert!(json.contains("tcp/127.0.0.1:17448"), "{json}");
        assert!(json.contains("veth0"), "{json}");
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let o = ZenohOptions {
            lease_ms: 5,
            ..Default::default()
        };
        assert!(o.to_config().unwrap_err().to_string().contains("lease_ms"));
        let o = ZenohOptions::explicit(vec!["not-an-endpoint".into()], vec![]);
        let err = o.to_config().unwrap_err().to_string();
        assert!(err.contains("listen/endpoints"), "{err}");
    }
}
