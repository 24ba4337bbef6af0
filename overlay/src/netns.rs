//! Network namespaces and the endpoints inside them (a service's or a client's netns), via rtnetlink.
//!
//! An *endpoint* is a named netns (`ip netns` compatible: a bind mount of the namespace file under
//! [`NETNS_DIR`]) holding one veth end with a fixed IP and MAC; the other veth end stays in the
//! *host* namespace, where it becomes a port of the host's OvS bridge. Podman then restores the
//! container into that path (`--network ns:/run/netns/<name>`), so the service keeps its address.
//!
//! Why threads: a netlink socket talks to the namespace it was created in. We create sockets (and
//! namespaces) on a short-lived OS thread that has entered the target namespace, then use the
//! socket from the async runtime. The thread is discarded afterwards, so no pooled thread is ever
//! left in a foreign namespace.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures::TryStreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::error::{OverlayError, Result};

/// Where named network namespaces live (what `ip netns` and podman's `ns:` paths use).
pub const NETNS_DIR: &str = "/run/netns";

/// Linux interface names: at most 15 bytes (IFNAMSIZ 16 with the NUL).
const IFNAMSIZ_MAX: usize = 15;

/// A MAC address (`02:00:0a:63:00:64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = OverlayError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || OverlayError::Invalid(format!("not a MAC address: {s:?}"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A neighbour (ARP) entry to pre-load, so the first packet does not wait ~1 s for ARP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's IPv4 address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: MacAddr,
}

/// What an endpoint namespace looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Namespace name (file under the netns directory).
    pub netns: String,
    /// The veth end left in the host namespace; it becomes the OvS port name.
    pub host_ifname: String,
    /// The interface name inside the namespace.
    pub ifname: String,
    /// The address inside the namespace.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The MAC of the inner interface.
    pub mac: MacAddr,
    /// Default route, if the service talks beyond its subnet.
    pub gateway: Option<Ipv4Addr>,
    /// Neighbour entries carried over (e.g. the client's IP/MAC from the source host).
    pub neighbours: Vec<Neighbour>,
}

impl EndpointSpec {
    /// An endpoint with `eth0` inside, no gateway and no neighbours.
    pub fn new(
        netns: impl Into<String>,
        host_ifname: impl Into<String>,
        ip: Ipv4Addr,
        prefix_len: u8,
        mac: MacAddr,
    ) -> Self {
        EndpointSpec {
            netns: netns.into(),
            host_ifname: host_ifname.into(),
            ifname: "eth0".into(),
            ip,
            prefix_len,
            mac,
            gateway: None,
            neighbours: Vec::new(),
        }
    }

    fn validate(&self) -> Result<()> {
        validate_netns_name(&self.netns)?;
        validate_ifname(&self.host_ifname)?;
        validate_ifname(&self.ifname)?;
        if self.prefix_len > 32 {
            return Err(OverlayError::Invalid(format!(
                "prefix length {} > 32",
                self.prefix_len
            )));
        }
        if self.mac.0[0] & 1 == 1 {
            return Err(OverlayError::Invalid(format!(
                "{} is a multicast MAC",
                self.mac
            )));
        }
        Ok(())
    }
}

/// An endpoint that exists: its namespace path and the host-side veth name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The namespace's bind-mount path.
    pub netns_path: PathBuf,
    /// The veth end in the host namespace.
    pub host_ifname: String,
    /// The interface name inside the namespace.
    pub ifname: String,
}

/// A usable Linux interface name (also what we allow for OvS bridge/port names, which become
/// netdev names and `<bridge>.mgmt` socket names).
pub(crate) fn ifname_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAMSIZ_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(crate) fn validate_ifname(name: &str) -> Result<()> {
    if !ifname_ok(name) {
        return Err(OverlayError::Invalid(format!(
            "invalid interface name {name:?}: 1-15 chars of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

fn validate_netns_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(OverlayError::Invalid(format!(
            "invalid netns name {name:?}: 1-64 chars of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Threads inside a namespace

/// Run `f` on a fresh OS thread that first enters the network namespace at `ns` (None: stay in
/// ours). The thread ends with `f`, so its namespace never leaks into other work.
pub(crate) async fn on_ns_thread<T, F>(ns: Option<&Path>, what: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let label = format!(
        "{what} (netns {})",
        ns.map(|p| p.display().to_string())
            .unwrap_or_else(|| "current".into())
    );
    let ns = ns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mose-netns".into())
        .spawn(move || {
            let r = (|| {
                if let Some(p) = &ns {
                    let fd = File::open(p)?;
                    setns(&fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                }
                f()
            })();
            let _ = tx.send(r);
        })
        .map_err(|e| OverlayError::io(format!("spawn thread for {label}"), e))?;
    rx.await
        .map_err(|_| OverlayError::Invalid(format!("thread for {label} died")))?
        .map_err(|e| OverlayError::io(label, e))
}

/// Run blocking `f` on a thread inside the network namespace at `ns`, e.g. to open a socket
/// there (a socket keeps its namespace whichever thread uses it later).
pub async fn in_netns<T, F>(ns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    on_ns_thread(Some(ns), "run in netns", f).await
}

/// An rtnetlink handle whose socket lives in the namespace at `ns` (None: ours).
pub(crate) async fn netlink(ns: Option<&Path>) -> Result<Handle> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = on_ns_thread(ns, "open netlink socket", move || {
        // The socket registers with our runtime's reactor but is created in the thread's netns.
        let _guard = rt.enter();
        rtnetlink::new_connection()
    })
    .await?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The positive errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(OverlayError::netlink(format!("look up link {name}"), e)),
    }
}

async fn require_index(h: &Handle, name: &str) -> Result<u32> {
    link_index(h, name)
        .await?
        .ok_or_else(|| OverlayError::netlink(format!("look up link {name}"), "no such device"))
}

async fn set_up(h: &Handle, name: &str) -> Result<()> {
    let idx = require_index(h, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(|e| OverlayError::netlink(format!("set {name} up"), e))
}

/// Delete link `name` in the namespace of `h`; absent is fine (idempotent).
async fn delete_link(h: &Handle, name: &str) -> Result<bool> {
    let Some(idx) = link_index(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(idx).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(OverlayError::netlink(format!("delete link {name}"), e)),
    }
}

/// Create a veth pair: `local` in the namespace of `h`, `peer` in the namespace at `peer_ns`
/// (with `peer_mac` if given). Both ends are left down.
async fn add_veth(
    h: &Handle,
    local: &str,
    peer: &str,
    peer_ns: &Path,
    peer_mac: Option<MacAddr>,
) -> Result<()> {
    let ns_file = File::open(peer_ns)
        .map_err(|e| OverlayError::io(format!("open netns {}", peer_ns.display()), e))?;
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .setns_by_fd(ns_file.as_raw_fd());
    if let Some(m) = peer_mac {
        peer_msg = peer_msg.address(m.0.to_vec());
    }
    let msg = LinkVeth::new(local, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
        .build();
    // The fd must stay open until the kernel has processed the request.
    let r = h.link().add(msg).execute().await;
    drop(ns_file);
    r.map_err(|e| {
        OverlayError::netlink(
            format!("create veth {local} <-> {peer} (in {})", peer_ns.display()),
            e,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Named namespaces

/// Path of namespace `name` under `dir`.
pub fn netns_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn is_netns(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Make `dir` a shared mount point, as `ip netns add` does: namespace mounts made later then
/// propagate to mount namespaces copied from ours (containers) and their removal does too, so a
/// deleted namespace is not kept alive by a stale copy of its mount.
fn ensure_shared_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let shared = |d: &Path| {
        mount(
            None::<&str>,
            d,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared(dir) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            shared(dir).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Create (or reuse) the named network namespace `dir/name`, with `lo` up. Idempotent: an
/// existing namespace is kept as it is.
pub async fn create_netns(dir: &Path, name: &str) -> Result<PathBuf> {
    validate_netns_name(name)?;
    let path = netns_path(dir, name);
    if is_netns(&path) {
        return Ok(path);
    }
    let (d, p) = (dir.to_path_buf(), path.clone());
    on_ns_thread(
        None,
        &format!("create netns {}", path.display()),
        move || {
            ensure_shared_dir(&d)?;
            // A plain file is the mount target; O_EXCL is not used because a leftover empty file
            // from a crashed run is harmless to reuse.
            File::create(&p)?;
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            if let Err(e) = mount(
                Some("/proc/thread-self/ns/net"),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ) {
                let _ = std::fs::remove_file(&p);
                return Err(e.into());
            }
            Ok(())
        },
    )
    .await?;
    let h = netlink(Some(&path)).await?;
    set_up(&h, "lo").await?;
    Ok(path)
}

/// Delete the named namespace at `path` (unmount + remove the file). Absent is fine. Processes
/// still inside keep it alive until they exit; its interfaces vanish with it.
pub fn delete_netns(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(OverlayError::io(
                format!("unmount netns {}", path.display()),
                e.into(),
            ))
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OverlayError::io(format!("remove {}", path.display()), e)),
    }
}

/// Delete every namespace under `dir` whose name starts with `prefix` (stale ones from a crashed
/// run). Returns the names removed.
pub fn sweep_netns(dir: &Path, prefix: &str) -> Result<Vec<String>> {
    if prefix.is_empty() {
        return Err(OverlayError::Invalid(
            "refusing to sweep namespaces with an empty prefix".into(),
        ));
    }
    let mut gone = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(gone);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            delete_netns(&e.path())?;
            gone.push(name);
        }
    }
    Ok(gone)
}

// ---------------------------------------------------------------------------------------------
// Endpoints

/// Create the endpoint `spec` under `dir`, with its host-side veth in the namespace `host_ns`
/// (None = the namespace this process runs in, i.e. the agent's host). The host end is up and
/// ready to be added to the OvS bridge.
///
/// Inside: `lo` and `ifname` up, `ip/prefix_len`, fixed MAC, TX checksum offload off (the
/// userspace datapath forwards the partial checksums of veth packets unfilled, and TCP then
/// drops them), neighbours pre-loaded, optional default route.
///
/// Idempotent for a retried "prepare" step: a leftover host veth of that name is deleted and
/// the inside is configured afresh; an existing namespace is reused.
pub async fn create_endpoint(
    dir: &Path,
    host_ns: Option<&Path>,
    spec: &EndpointSpec,
) -> Result<Endpoint> {
    spec.validate()?;
    let path = create_netns(dir, &spec.netns).await?;
    let host = netlink(host_ns).await?;
    let inside = netlink(Some(&path)).await?;
    delete_link(&host, &spec.host_ifname).await?;
    delete_link(&inside, &spec.ifname).await?;
    add_veth(
        &host,
        &spec.host_ifname,
        &spec.ifname,
        &path,
        Some(spec.mac),
    )
    .await?;
    set_up(&host, &spec.host_ifname).await?;

    let idx = require_index(&inside, &spec.ifname).await?;
    inside
        .address()
        .add(idx, IpAddr::V4(spec.ip), spec.prefix_len)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            OverlayError::netlink(
                format!("add {}/{} to {}", spec.ip, spec.prefix_len, spec.ifname),
                e,
            )
        })?;
    set_tx_checksum(&path, &spec.ifname, false).await?;
    set_up(&inside, &spec.ifname).await?;
    for n in &spec.neighbours {
        replace_neighbour_with(&inside, idx, n).await?;
    }
    if let Some(gw) = spec.gateway {
        inside
            .route()
            .add(
                rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gw)
                    .output_interface(idx)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(|e| OverlayError::netlink(format!("default route via {gw}"), e))?;
    }
    tracing::info!(netns = %path.display(), ip = %spec.ip, mac = %spec.mac, host_if = %spec.host_ifname, "endpoint ready");
    Ok(Endpoint {
        netns_path: path,
        host_ifname: spec.host_ifname.clone(),
        ifname: spec.ifname.clone(),
    })
}

/// Delete an endpoint: its host veth (in `host_ns`) and its namespace. Absent parts are fine.
/// Remove the OvS port first (see [`crate::HostOverlay::remove_endpoint`]) so OvS does not keep
/// polling a vanished device.
pub async fn delete_endpoint(
    dir: &Path,
    host_ns: Option<&Path>,
    netns: &str,
    host_ifname: &str,
) -> Result<()> {
    validate_netns_name(netns)?;
    validate_ifname(host_ifname)?;
    let host = netlink(host_ns).await?;
    delete_link(&host, host_ifname).await?;
    delete_netns(&netns_path(dir, netns))
}

async fn replace_neighbour_with(h: &Handle, idx: u32, n: &Neighbour) -> Result<()> {
    h.neighbours()
        .add(idx, IpAddr::V4(n.ip))
        .link_layer_address(&n.mac.0)
        .state(NeighbourState::Reachable)
        .replace()
        .execute()
        .await
        .map_err(|e| OverlayError::netlink(format!("neighbour {} lladdr {}", n.ip, n.mac), e))
}

/// `ip neigh replace <ip> lladdr <mac> nud reachable dev <ifname>` inside the namespace at `ns`.
pub async fn replace_neighbour(ns: &Path, ifname: &str, n: Neighbour) -> Result<()> {
    let h = netlink(Some(ns)).await?;
    let idx = require_index(&h, ifname).await?;
    replace_neighbour_with(&h, idx, &n).await
}

/// Create a veth "wire" between two namespaces (`a_if` in `a_ns`, `b_if` in `b_ns`), both ends
/// up. Used to join two hosts' OvS bridges directly (see docs/overlay.md, "links"). A leftover
/// wire of the same names is replaced.
pub async fn create_wire(a_ns: Option<&Path>, a_if: &str, b_ns: &Path, b_if: &str) -> Result<()> {
    validate_ifname(a_if)?;
    validate_ifname(b_if)?;
    let a = netlink(a_ns).await?;
    let b = netlink(Some(b_ns)).await?;
    delete_link(&a, a_if).await?;
    delete_link(&b, b_if).await?;
    add_veth(&a, a_if, b_if, b_ns, None).await?;
    set_up(&a, a_if).await?;
    set_up(&b, b_if).await
}

/// Delete link `ifname` in namespace `ns` (a wire end or a veth); true if it existed.
pub async fn delete_link_in(ns: Option<&Path>, ifname: &str) -> Result<bool> {
    validate_ifname(ifname)?;
    let h = netlink(ns).await?;
    delete_link(&h, ifname).await
}

// ---------------------------------------------------------------------------------------------
// ethtool

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member (padded to the kernel's 40 bytes).
#[repr(C)]
struct IfreqData {
    name: [u8; 16],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool_value(ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut val = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; 16],
        data: &mut val,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: `req` is a valid ifreq whose data pointer refers to `val`, both alive for the call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            SIOCETHTOOL as _,
            &mut req as *mut IfreqData,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val.data)
}

/// `ethtool -K <ifname> tx on|off` inside the namespace at `ns` (the legacy TX-checksum switch;
/// the kernel also drops TSO/GSO features that depend on it).
pub async fn set_tx_checksum(ns: &Path, ifname: &str, on: bool) -> Result<()> {
    validate_ifname(ifname)?;
    let n = ifname.to_string();
    on_ns_thread(
        Some(ns),
        &format!("ethtool tx {} {ifname}", if on { "on" } else { "off" }),
        move || ethtool_value(&n, ETHTOOL_STXCSUM, on as u32).map(drop),
    )
    .await
}

/// Whether TX checksum offload is on for `ifname` inside `ns`.
pub async fn tx_checksum(ns: &Path, ifname: &str) -> Result<bool> {
    validate_ifname(ifname)?;
    let n = ifname.to_string();
    on_ns_thread(Some(ns), &format!("ethtool -k {ifname}"), move || {
        ethtool_value(&n, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let m: MacAddr = "02:00:0a:63:00:64".parse().unwrap();
        assert_eq!(m.0, [2, 0, 10, 99, 0, 100]);
        assert_eq!(m.to_string(), "02:00:0a:63:00:64");
        for bad in [
            "",
            "02:00",
            "02:00:0a:63:00:64:01",
            "zz:00:0a:63:00:64",
            "2:0:a:63:0:64",
            "02-00-0a-63-00-64",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_validation() {
        let mac = "02:00:00:00:00:01".parse().unwrap();
        let ok = EndpointSpec::new("svc", "vsvc", Ipv4Addr::new(10, 0, 0, 1), 24, mac);
        assert!(ok.validate().is_ok());
        let mut s = ok.clone();
        s.host_ifname = "x".repeat(16);
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.netns = "../etc".into();
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.prefix_len = 33;
        assert!(s.validate().is_err());
        let mut s = ok;
        s.mac = "01:00:5e:00:00:01".parse().unwrap();
        assert!(s.validate().is_err());
    }

    #[test]
    fn sweep_refuses_empty_prefix() {
        assert!(sweep_netns(Path::new("/nonexistent"), "").is_err());
        assert!(sweep_netns(Path::new("/nonexistent"), "mov-")
            .unwrap()
            .is_empty());
    }
}
