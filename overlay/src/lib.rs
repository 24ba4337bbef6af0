//! MOSE-RS overlay network management: keeps a service's IP/MAC stable wherever it runs and steers
//! the mobile client's traffic to the host that runs it now.
//!
//! * [`ovs_instance`]: a private ovsdb-server + ovs-vswitchd per (emulated) host.
//! * [`ovsdb`]: our own RFC 7047 client (bridges, ports, interfaces, ofport numbers).
//! * [`flows`]: steering flows behind the [`flows::FlowBackend`] trait (`ovs-ofctl` bundles today).
//! * [`netns`]: service network namespaces (fixed IP/MAC, veth into the bridge, neighbours) via rtnetlink.
//! * [`link`]: wires between hosts' bridges (veth or VXLAN).
//! * [`shaping`]: tc tbf rate limits for a migration path.
//!
//! See `docs/overlay.md` for the design and the measurements behind it.

mod cmd;
pub mod error;
pub mod ovs_instance;
pub mod ovsdb;

pub use error::{OverlayError, Result};
pub use ovs_instance::OvsInstance;
