//! The mobile host's steps: steer the client's flow toward the host the service runs on, and
//! drop it when the service is gone.

use std::net::Ipv4Addr;
use std::time::Instant;

use mose_overlay::netns::MacAddr;
use mose_overlay::ServiceAddr;
use mose_protocol::messages::ServiceNetwork;
use mose_protocol::steps::Done;
use tracing::info;

use super::error::{overlay, CoatError, Result};
use super::host::Host;
use super::Inner;

impl<H: Host> Inner<H> {
    /// Replaces the service's flows atomically, so a repeat (or a switch back) needs no state.
    #[tracing::instrument(name = "coat.switch_flow", skip(self, network), fields(ip = %network.ip))]
    pub(super) async fn switch_flow(&self, network: &ServiceNetwork, to: &str) -> Result<Done> {
        let port = self.settings.flow_ports.get(to).ok_or_else(|| {
            CoatError::Invalid(format!(
                "no OvS port toward agent {to} is configured on this host (flow_ports: {:?}); \
                 add `{to} = \"<port>\"` under [flow_ports] or --flow-port {to}=<port>",
                self.settings.flow_ports.keys().collect::<Vec<_>>()
            ))
        })?;
        // Looked up at every switch (≈1 ms), so a re-wired port needs no restart.
        let ofport = self
            .host
            .ofport(port)
            .await
            .map_err(overlay(format!("find the port {port} toward {to}")))?;
        let t0 = Instant::now();
        self.host
            .steer(
                ServiceAddr {
                    ip: network.ip,
                    mac: MacAddr(network.mac),
                },
                ofport,
            )
            .await
            .map_err(overlay(format!(
                "steer {} to {port} (toward {to})",
                network.ip
            )))?;
        info!(port = %port, ofport, ms = mose_protocol::units::millis(t0.elapsed()), "client flow switched");
        Ok(Done)
    }

    /// Removes the flows of a deleted service; none there is fine, so a repeat succeeds.
    #[tracing::instrument(name = "coat.clear_flow", skip(self))]
    pub(super) async fn clear_flow(&self, ip: Ipv4Addr) -> Result<Done> {
        self.host
            .unsteer(ip)
            .await
            .map_err(overlay(format!("remove the flows of {ip}")))?;
        info!("client flow removed");
        Ok(Done)
    }
}
