//! The mobile host's steps: steer the client's flow toward the host the service runs on, and
//! drop it when the service is gone.

use std::net::Ipv4Addr;
use std::time::Instant;

use mose_protocol::messages::ServiceNetwork;
use mose_protocol::steps::Done;
use tracing::info;

use super::error::{CoatError, Result};
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
        // The port's number is looked up at every switch (≈1 ms), so a re-wired port needs no
        // restart.
        let t0 = Instant::now();
        let ofport = self.steer_to(network.ip, network.mac, port).await?;
        info!(port = %port, ofport, ms = mose_protocol::units::millis(t0.elapsed()), "client flow switched");
        Ok(Done)
    }

    /// Removes the flows of a deleted service; none there is fine, so a repeat succeeds.
    #[tracing::instrument(name = "coat.clear_flow", skip(self))]
    pub(super) async fn clear_flow(&self, ip: Ipv4Addr) -> Result<Done> {
        self.unsteer(ip).await?;
        info!("client flow removed");
        Ok(Done)
    }
}
