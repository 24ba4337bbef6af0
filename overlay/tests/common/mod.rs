//! Shared scaffolding of the root integration tests: emulated hosts as plain network namespaces,
//! each with a private OvS, all named `<prefix>...` and removed on drop (also when a test fails).
//!
//! Every test binary compiles this module and none uses all of it, hence the allow below.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use mose_overlay::netns::{self, NETNS_DIR};
use mose_overlay::{HostOverlay, OvsInstance};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What every test here needs besides root (network namespaces, OvS): each starts with
/// `mose_testkit::root_test!(common::OVS_TOOLS)`, skipped unless `MOSE_ROOT_TESTS=1`, then
/// failing when one is missing (testbed/setup-host.sh installs openvswitch-switch, iproute2,
/// util-linux).
pub const OVS_TOOLS: &[&str] = &[
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-ofctl",
    "ovs-vsctl",
    "tc",
    "nsenter",
    "ip",
];

/// Everything one test creates. Drop stops the OvS daemons first (they hold the host
/// namespaces), then deletes every namespace with the prefix, then the OvS directories.
pub struct Lab {
    prefix: String,
    ovs: Vec<OvsInstance>,
    dirs: Vec<PathBuf>,
}

impl Lab {
    /// A lab whose names all start with `prefix` (e.g. `mov-sw-`); removes stale ones first.
    pub fn new(prefix: &str) -> Lab {
        let stale =
            netns::sweep_netns(Path::new(NETNS_DIR), prefix).expect("sweep stale namespaces");
        if !stale.is_empty() {
            eprintln!("removed stale namespaces from an earlier run: {stale:?}");
        }
        Lab {
            prefix: prefix.to_string(),
            ovs: Vec::new(),
            dirs: Vec::new(),
        }
    }

    pub fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// A plain namespace `<prefix><short>` (no OvS).
    pub async fn plain(&mut self, short: &str) -> PathBuf {
        netns::create_netns(Path::new(NETNS_DIR), &self.name(short))
            .await
            .expect("create netns")
    }

    /// An emulated host: a netns `<prefix><short>` with a private OvS running inside it and
    /// bridge `br0` (netdev datapath). Returns the host's namespace path and its overlay view.
    pub async fn host(&mut self, short: &str) -> (PathBuf, HostOverlay) {
        let name = self.name(short);
        let ns = netns::create_netns(Path::new(NETNS_DIR), &name)
            .await
            .expect("create host netns");
        let dir = PathBuf::from(format!("/tmp/{name}-ovs"));
        self.dirs.push(dir.clone());
        let enter = ["ip", "netns", "exec", name.as_str()]
            .map(String::from)
            .to_vec();
        // OvsInstance::start also kills daemons a crashed earlier run left in this directory.
        let ovs = OvsInstance::start(&dir, &enter)
            .await
            .expect("start private OvS");
        let host = HostOverlay::for_instance(&ovs, "br0").with_host_netns(&ns);
        self.ovs.push(ovs);
        host.ensure_bridge().await.expect("ensure br0");
        (ns, host)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.ovs.clear();
        if let Err(e) = netns::sweep_netns(Path::new(NETNS_DIR), &self.prefix) {
            eprintln!("cleanup of {}*: {e}", self.prefix);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A TCP server in namespace `ns` on `addr` that answers every line with `tag`.
pub async fn tag_server(
    ns: &Path,
    addr: SocketAddr,
    tag: &'static str,
) -> tokio::task::JoinHandle<()> {
    let l = netns::in_netns(ns, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .await
    .expect("bind tag server");
    let l = TcpListener::from_std(l).expect("register listener");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    if w.write_all(format!("{tag}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// A TCP connection from inside namespace `ns`.
pub async fn connect_from(ns: &Path, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = netns::in_netns(ns, move || {
        let s = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .await
    .map_err(std::io::Error::other)?;
    TcpStream::from_std(s)
}

/// Send one line and read the one-line answer.
pub async fn ask(s: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    s.get_mut().write_all(b"ping\n").await?;
    let mut line = String::new();
    let n = s.read_line(&mut line).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim().to_string())
}

/// A locally administered MAC from an IPv4 address (like the testbed's).
pub fn mac_for(ip: Ipv4Addr) -> mose_overlay::MacAddr {
    let o = ip.octets();
    mose_overlay::MacAddr([2, 0, o[0], o[1], o[2], o[3]])
}
