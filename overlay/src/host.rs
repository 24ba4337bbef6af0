//! The overlay as one host sees it: its OvS bridge, the endpoint namespaces hanging off it, the
//! wires to other hosts' bridges and the steering flows. This is what the agent calls for COAT.
//!
//! ```no_run
//! # async fn coat() -> mose_overlay::Result<()> {
//! use std::net::Ipv4Addr;
//! use mose_overlay::{EndpointSpec, HostOverlay, MacAddr, Neighbour, OvsInstance, ServiceAddr};
//! use mose_overlay::shaping::{self, Shape};
//!
//! let ovs = OvsInstance::start("/run/mose/ovs", &[]).await?; // or the testbed host's instance
//! let dst = HostOverlay::for_instance(&ovs, "br0");
//! dst.ensure_bridge().await?;
//! let svc = ServiceAddr { ip: Ipv4Addr::new(10, 99, 0, 100), mac: "02:00:0a:63:00:64".parse::<MacAddr>()? };
//! // COAT 1 (destination, before the freeze): netns with the same IP/MAC, client's ARP entry, flows.
//! let mut spec = EndpointSpec::new("svc-counter", "svc-counter", svc.ip, 24, svc.mac);
//! spec.neighbours.push(Neighbour { ip: Ipv4Addr::new(10, 99, 0, 12), mac: "02:00:0a:63:00:0c".parse()? });
//! let ep = dst.add_endpoint(&spec).await?;
//! dst.steer(svc, ep.ofport).await?;
//! // Source: allocate PAM's L towards the destination for the transfer, release it afterwards.
//! shaping::shape(None, &Shape { dev: "eth0".into(), rate_bits_per_s: 100_000_000, dst: Some(Ipv4Addr::new(10, 99, 0, 11)) }).await?;
//! // ... checkpoint, transfer, restore into ep.endpoint.netns_path ...
//! shaping::unshape(None, "eth0").await?;
//! // COAT 5 (mobile host, after the restore): one atomic bundle moves IP and ARP.
//! let mobile = HostOverlay::for_instance(&ovs, "br0"); // the mobile host's own OvS in reality
//! mobile.steer(svc, mobile.ofport("to-edge2").await?).await?;
//! // COAT 6 (source, after the destination confirmed):
//! let src = HostOverlay::for_instance(&ovs, "br0"); // the source host's own OvS in reality
//! src.remove_endpoint("svc-counter", "svc-counter").await?;
//! src.unsteer(svc.ip).await?;
//! # Ok(()) }
//! ```
//!
//! Every method opens its own short OVSDB connection (a unix socket, ~0.1 ms): a `HostOverlay`
//! is then `Sync`, cheap to share, and never holds a connection the server may have dropped.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{OverlayError, Result};
use crate::flows::{OfctlBackend, ServiceAddr, Steering};
use crate::netns::{self, Endpoint, EndpointSpec, NETNS_DIR};
use crate::ovs_instance::OvsInstance;
use crate::ovsdb::{BridgeOptions, OvsdbClient, PortKind, PortSpec};

/// How long ovs-vswitchd may take to open a new port and number it, or to apply a removal.
const OFPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// One host's bridge and the namespaces around it.
#[derive(Debug, Clone)]
pub struct HostOverlay {
    db_socket: PathBuf,
    bridge: String,
    host_ns: Option<PathBuf>,
    netns_dir: PathBuf,
    steering: Steering<OfctlBackend>,
}

/// An endpoint attached to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedEndpoint {
    /// The namespace and its veth.
    pub endpoint: Endpoint,
    /// OpenFlow port number of its host-side veth.
    pub ofport: u32,
}

impl HostOverlay {
    /// For the OvS with OVSDB socket `db_socket` and run directory `rundir` (where
    /// `<bridge>.mgmt` lives), bridge `bridge`. Ports and endpoints are made in the current
    /// network namespace, endpoint namespaces under [`NETNS_DIR`].
    pub fn new(
        db_socket: impl AsRef<Path>,
        rundir: impl AsRef<Path>,
        bridge: impl Into<String>,
    ) -> Self {
        let bridge = bridge.into();
        HostOverlay {
            db_socket: db_socket.as_ref().to_path_buf(),
            steering: Steering::new(OfctlBackend::new(rundir), bridge.clone()),
            bridge,
            host_ns: None,
            netns_dir: PathBuf::from(NETNS_DIR),
        }
    }

    /// For a private [`OvsInstance`].
    pub fn for_instance(ovs: &OvsInstance, bridge: impl Into<String>) -> Self {
        Self::new(ovs.db_socket(), ovs.rundir(), bridge)
    }

    /// The bridge's ports live in the network namespace at `ns` (a host we are not running in,
    /// e.g. in tests or when driving an emulated host from outside).
    pub fn with_host_netns(mut self, ns: impl AsRef<Path>) -> Self {
        self.host_ns = Some(ns.as_ref().to_path_buf());
        self
    }

    /// Keep endpoint namespaces under `dir` instead of [`NETNS_DIR`].
    pub fn with_netns_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.netns_dir = dir.as_ref().to_path_buf();
        self
    }

    /// The OvS bridge endpoints are attached to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The namespace the host side lives in, if not the caller's.
    pub fn host_netns(&self) -> Option<&Path> {
        self.host_ns.as_deref()
    }

    /// Where named namespaces are mounted.
    pub fn netns_dir(&self) -> &Path {
        &self.netns_dir
    }

    /// Flow steering on this host's bridge.
    pub fn steering(&self) -> &Steering<OfctlBackend> {
        &self.steering
    }

    /// A fresh OVSDB connection to this host's OvS.
    pub async fn ovsdb(&self) -> Result<OvsdbClient> {
        Ok(OvsdbClient::connect(&self.db_socket).await?)
    }

    /// Make sure the bridge exists (userspace datapath, OpenFlow 1.0/1.3/1.4). Idempotent.
    pub async fn ensure_bridge(&self) -> Result<()> {
        let mut db = self.ovsdb().await?;
        db.ensure_bridge(&self.bridge, &BridgeOptions::default())
            .await?;
        Ok(())
    }

    /// Make sure `spec` is a port of the bridge and return its OpenFlow port number once
    /// ovs-vswitchd has opened it. Idempotent.
    pub async fn ensure_port(&self, spec: &PortSpec) -> Result<u32> {
        let mut db = self.ovsdb().await?;
        db.ensure_port(&self.bridge, spec).await?;
        Ok(db.wait_ofport(&spec.name, OFPORT_TIMEOUT).await?)
    }

    /// Remove port `name` from the bridge (absent is fine) and wait until ovs-vswitchd has let
    /// go of the device, so it may be deleted or recreated right after.
    pub async fn remove_port(&self, name: &str) -> Result<()> {
        let mut db = self.ovsdb().await?;
        if db.remove_port(&self.bridge, name).await? {
            db.sync(OFPORT_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Let `port` take part in the bridge's floods or not ([`OfctlBackend::set_flooding`]).
    pub async fn set_flooding(&self, port: &str, flood: bool) -> Result<()> {
        self.steering
            .backend()
            .set_flooding(self.steering.bridge(), port, flood)
            .await
    }

    /// The OpenFlow port number of `port` (error if it has none).
    pub async fn ofport(&self, port: &str) -> Result<u32> {
        Ok(self
            .ovsdb()
            .await?
            .wait_ofport(port, OFPORT_TIMEOUT)
            .await?)
    }

    /// COAT step 1 on the destination (and the mobile client's own namespace): create the
    /// endpoint namespace with its fixed IP/MAC, attach its veth to the bridge, return the port.
    ///
    /// Idempotent: a retry replaces the veth, and the OvS port is removed first and re-added,
    /// because ovs-vswitchd keeps its packet socket on the *old* device of that name otherwise
    /// (the port would exist but pass no traffic).
    pub async fn add_endpoint(&self, spec: &EndpointSpec) -> Result<AttachedEndpoint> {
        self.remove_port(&spec.host_ifname).await?;
        let endpoint =
            netns::create_endpoint(&self.netns_dir, self.host_ns.as_deref(), spec).await?;
        let ofport = self
            .ensure_port(&PortSpec::new(&spec.host_ifname, PortKind::System))
            .await?;
        Ok(AttachedEndpoint { endpoint, ofport })
    }

    /// COAT step 6 on the source: detach and delete the endpoint (absent parts are fine).
    pub async fn remove_endpoint(&self, netns_name: &str, host_ifname: &str) -> Result<()> {
        self.remove_port(host_ifname).await?;
        netns::delete_endpoint(
            &self.netns_dir,
            self.host_ns.as_deref(),
            netns_name,
            host_ifname,
        )
        .await
    }

    /// The namespace path an endpoint called `netns_name` has on this host.
    pub fn endpoint_path(&self, netns_name: &str) -> PathBuf {
        netns::netns_path(&self.netns_dir, netns_name)
    }

    /// Steer `svc` on this bridge to `port` (atomic replace; see [`Steering::steer`]).
    pub async fn steer(&self, svc: ServiceAddr, port: u32) -> Result<()> {
        self.steering.steer(svc, port).await
    }

    /// Remove `ip`'s steering from this bridge.
    pub async fn unsteer(&self, ip: Ipv4Addr) -> Result<()> {
        self.steering.unsteer(ip).await
    }
}

/// Join two hosts' bridges with a veth wire (`a_port` on `a`, `b_port` on `b`) and return the
/// two OpenFlow port numbers. `b` must name its host namespace ([`HostOverlay::with_host_netns`]):
/// the wire's far end is moved there. Idempotent (a leftover wire is replaced). The hosts' bridges
/// must form a tree (no loops): there is no spanning tree protocol on them.
pub async fn connect_wire(
    a: &HostOverlay,
    a_port: &str,
    b: &HostOverlay,
    b_port: &str,
) -> Result<(u32, u32)> {
    let b_ns = b.host_ns.as_deref().ok_or_else(|| {
        OverlayError::Invalid(format!(
            "host of bridge {} has no netns path to put {b_port} in",
            b.bridge
        ))
    })?;
    // As in add_endpoint: drop stale ports first, or OvS keeps reading the replaced devices.
    a.remove_port(a_port).await?;
    b.remove_port(b_port).await?;
    netns::create_wire(a.host_ns.as_deref(), a_port, b_ns, b_port).await?;
    let pa = a
        .ensure_port(&PortSpec::new(a_port, PortKind::System))
        .await?;
    let pb = b
        .ensure_port(&PortSpec::new(b_port, PortKind::System))
        .await?;
    Ok((pa, pb))
}

/// Undo [`connect_wire`] (absent parts are fine).
pub async fn disconnect_wire(
    a: &HostOverlay,
    a_port: &str,
    b: &HostOverlay,
    b_port: &str,
) -> Result<()> {
    a.remove_port(a_port).await?;
    b.remove_port(b_port).await?;
    // Deleting one end of a veth deletes the pair.
    netns::delete_link_in(a.host_ns.as_deref(), a_port).await?;
    if let Some(ns) = b.host_ns.as_deref() {
        netns::delete_link_in(Some(ns), b_port).await?;
    }
    Ok(())
}
