//! MOSE-RS overlay network management: keeps a service's IP/MAC stable wherever it runs and steers
//! the mobile client's traffic to the host that runs it now.
//!
//! * [`ovs_instance`]: a private ovsdb-server + ovs-vswitchd per (emulated) host.
//! * [`ovsdb`]: our own RFC 7047 client (bridges, ports, interfaces, ofport numbers).
//! * [`flows`]: steering flows behind the [`flows::FlowBackend`] trait (`ovs-ofctl` bundles today).
//! * [`netns`]: endpoint network namespaces (fixed IP/MAC, veth, neighbours, tx csum off) via rtnetlink.
//! * [`host`]: one host's view ([`HostOverlay`]): bridge + endpoints + wires + steering, for COAT.
//! * [`shaping`]: tc tbf rate limits for a migration path.
//!
//! See `docs/overlay.md` for the design and the measurements behind it.

pub mod error;
pub mod flows;
pub mod host;
pub mod netns;
pub mod ovs_instance;
pub mod ovsdb;
pub mod shaping;

pub use error::{OverlayError, Result};
pub use flows::{FlowBackend, OfctlBackend, ServiceAddr, Steering};
pub use host::{connect_wire, disconnect_wire, AttachedEndpoint, HostOverlay};
pub use netns::{EndpointSpec, MacAddr, Neighbour};
pub use ovs_instance::OvsInstance;
pub use shaping::Shape;
