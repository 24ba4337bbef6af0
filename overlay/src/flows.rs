//! OpenFlow steering of a service's traffic (OpenFlow is not in OVSDB).
//!
//! A service is identified by its IPv4 address; all its flows on a bridge carry one cookie derived
//! from that address ([`service_cookie`]), so "replace the steering of service S" is one atomic
//! step: delete the flows with S's cookie and add the new ones, in one bundle. Packets never see a
//! half-switched bridge (e.g. IP already to B but ARP still to A).
//!
//! The steering flows ([`service_flows`]) match the service's IP (`ip,nw_dst`), ARP for it
//! (`arp,arp_tpa`) and its MAC (`dl_dst`), at [`STEERING_PRIORITY`], above the bridge's default
//! `NORMAL` flow: everything else keeps being learned and switched normally.
//!
//! The [`FlowBackend`] trait is the one seam: [`OfctlBackend`] drives `ovs-ofctl -O OpenFlow13`,
//! a native OpenFlow client can implement the same three methods.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use mose_command::{argv, Cmd};

use crate::error::{OverlayError, Result};
use crate::netns::MacAddr;

/// Priority of steering flows: above OvS's default `priority=0 actions=NORMAL`.
pub const STEERING_PRIORITY: u16 = 1000;

/// "MOSE" in the high half of every cookie we set, so our flows are recognisable in dumps.
const COOKIE_TAG: u64 = 0x4d4f_5345 << 32;

/// What a flow matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// IPv4 packets to this address.
    Ipv4Dst(Ipv4Addr),
    /// ARP packets asking for / answering about this address.
    ArpTpa(Ipv4Addr),
    /// Frames to this MAC.
    EthDst(MacAddr),
}

/// What a flow does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send to this OpenFlow port.
    Output(u32),
    /// Ordinary L2 switching.
    Normal,
    /// Discard.
    Drop,
}

/// One flow entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// OpenFlow priority; higher wins.
    pub priority: u16,
    /// Which packets it applies to.
    pub matcher: Match,
    /// What happens to them.
    pub action: Action,
}

/// A service's stable addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAddr {
    /// The service's IPv4 address.
    pub ip: Ipv4Addr,
    /// The service's MAC.
    pub mac: MacAddr,
}

/// The cookie of all flows steering `ip`.
pub fn service_cookie(ip: Ipv4Addr) -> u64 {
    COOKIE_TAG | u64::from(u32::from(ip))
}

/// The flows that send everything for `svc` (IP, ARP, MAC) out of OpenFlow port `port`.
pub fn service_flows(svc: ServiceAddr, port: u32) -> Vec<Flow> {
    let out = Action::Output(port);
    [
        Match::Ipv4Dst(svc.ip),
        Match::ArpTpa(svc.ip),
        Match::EthDst(svc.mac),
    ]
    .into_iter()
    .map(|matcher| Flow {
        priority: STEERING_PRIORITY,
        matcher,
        action: out,
    })
    .collect()
}

/// Installs and removes flows on a bridge. Implementations must make [`FlowBackend::replace`]
/// atomic: after it returns, the bridge holds exactly `flows` under `cookie`, packets are
/// forwarded by them (no cached datapath flow still follows the old ones), and no packet saw a mix
/// of old and new.
pub trait FlowBackend {
    /// Replace all flows with `cookie` on `bridge` by `flows` (each tagged with `cookie`).
    fn replace(
        &self,
        bridge: &str,
        cookie: u64,
        flows: &[Flow],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Delete all flows with `cookie` on `bridge` (none is fine).
    fn remove(&self, bridge: &str, cookie: u64) -> impl Future<Output = Result<()>> + Send;
    /// The flows with `cookie` on `bridge`, as the backend prints them (for checks and logs).
    fn list(&self, bridge: &str, cookie: u64) -> impl Future<Output = Result<Vec<String>>> + Send;
}

/// [`FlowBackend`] on `ovs-ofctl -O OpenFlow13`, talking to `<rundir>/<bridge>.mgmt`.
#[derive(Debug, Clone)]
pub struct OfctlBackend {
    rundir: PathBuf,
}

impl OfctlBackend {
    /// For the OvS whose run directory (where `<bridge>.mgmt` sockets live) is `rundir`:
    /// `/var/run/openvswitch` for the system one, [`crate::OvsInstance::rundir`] for ours.
    pub fn new(rundir: impl AsRef<Path>) -> Self {
        OfctlBackend {
            rundir: rundir.as_ref().to_path_buf(),
        }
    }

    fn target(&self, bridge: &str) -> Result<String> {
        crate::netns::validate_ifname(bridge)?;
        Ok(format!(
            "unix:{}",
            self.rundir.join(format!("{bridge}.mgmt")).display()
        ))
    }

    async fn ofctl(&self, args: &[String], input: Option<&[u8]>) -> Result<String> {
        let mut c = Cmd::new("ovs-ofctl").args(["-O", "OpenFlow13"]).args(args);
        if let Some(data) = input {
            c = c.input(data);
        }
        Ok(c.stdout().await?)
    }

    /// Let `port` of `bridge` take part in flooding or not (the OpenFlow `no-flood` port flag,
    /// honoured by the `NORMAL` action's floods): a bridge topology with a loop stays usable
    /// when one wire of the loop floods at neither end. OpenFlow 1.0, the flag's last version
    /// (1.1 dropped it; OvS still keeps it per port). Not kept in the database: lost when
    /// ovs-vswitchd restarts.
    pub async fn set_flooding(&self, bridge: &str, port: &str, flood: bool) -> Result<()> {
        crate::netns::validate_ifname(port)?;
        let target = self.target(bridge)?;
        let flag = if flood { "flood" } else { "no-flood" };
        Cmd::new("ovs-ofctl")
            .args(["-O", "OpenFlow10", "mod-port", &target, port, flag])
            .output()
            .await?;
        Ok(())
    }

    /// Make the datapath follow the new tables now. The OpenFlow reply only says the *tables*
    /// changed; packets keep following cached datapath flows until a revalidator pass, so a new
    /// connection right after a switch had its SYN sent to the old host and its data to the new
    /// one (which answered RST) — seen in tests/flow_switch.rs. `revalidator/wait` fixes that but
    /// waits for a periodic pass (~250 ms measured); `revalidator/purge` drops the cached flows at
    /// once (whole switch incl. purge: 19-29 ms), and the next packets take the slow path through
    /// the new tables.
    async fn revalidated(&self) -> Result<()> {
        // Our OvsInstance names its control socket `ovs-vswitchd.ctl`; the system daemon's is found
        // through its pidfile in the run directory.
        let ctl = self.rundir.join("ovs-vswitchd.ctl");
        let target = if ctl.exists() {
            ctl.to_string_lossy().into_owned()
        } else {
            "ovs-vswitchd".into()
        };
        let rundir = self.rundir.to_string_lossy().into_owned();
        Cmd::new("ovs-appctl")
            .args(["-t", target.as_str(), "revalidator/purge"])
            .env("OVS_RUNDIR", rundir.as_str())
            .output()
            .await?;
        Ok(())
    }
}

/// `ovs-ofctl` syntax of one flow's match and actions.
pub fn ofctl_flow(cookie: u64, f: &Flow) -> String {
    let m = match f.matcher {
        Match::Ipv4Dst(ip) => format!("ip,nw_dst={ip}"),
        Match::ArpTpa(ip) => format!("arp,arp_tpa={ip}"),
        Match::EthDst(mac) => format!("dl_dst={mac}"),
    };
    let a = match f.action {
        Action::Output(p) => format!("output:{p}"),
        Action::Normal => "NORMAL".into(),
        Action::Drop => "drop".into(),
    };
    format!("cookie={cookie:#x},priority={},{m},actions={a}", f.priority)
}

/// The `add-flows --bundle` input that replaces `cookie`'s flows (one atomic transaction).
pub fn ofctl_bundle(cookie: u64, flows: &[Flow]) -> String {
    let mut s = format!("delete cookie={cookie:#x}/-1\n");
    for f in flows {
        s.push_str("add ");
        s.push_str(&ofctl_flow(cookie, f));
        s.push('\n');
    }
    s
}

impl FlowBackend for OfctlBackend {
    async fn replace(&self, bridge: &str, cookie: u64, flows: &[Flow]) -> Result<()> {
        let target = self.target(bridge)?;
        let input = ofctl_bundle(cookie, flows);
        self.ofctl(
            &argv(["--bundle", "add-flows", &target, "-"]),
            Some(input.as_bytes()),
        )
        .await?;
        self.revalidated().await
    }

    async fn remove(&self, bridge: &str, cookie: u64) -> Result<()> {
        let target = self.target(bridge)?;
        self.ofctl(
            &argv(["del-flows", &target, &format!("cookie={cookie:#x}/-1")]),
            None,
        )
        .await?;
        self.revalidated().await
    }

    async fn list(&self, bridge: &str, cookie: u64) -> Result<Vec<String>> {
        let target = self.target(bridge)?;
        let out = self
            .ofctl(
                &argv([
                    "--no-stats",
                    "dump-flows",
                    &target,
                    &format!("cookie={cookie:#x}/-1"),
                ]),
                None,
            )
            .await?;
        Ok(parse_dump(&out))
    }
}

/// Flow lines of a `dump-flows` reply (drops the `OFPST_FLOW reply` header line).
fn parse_dump(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("OFPST_") && !l.starts_with("NXST_"))
        .map(String::from)
        .collect()
}

/// Steering of services on one bridge through a backend.
#[derive(Debug, Clone)]
pub struct Steering<B> {
    backend: B,
    bridge: String,
}

impl<B: FlowBackend> Steering<B> {
    /// Steering on `bridge` through `backend`.
    pub fn new(backend: B, bridge: impl Into<String>) -> Self {
        Steering {
            backend,
            bridge: bridge.into(),
        }
    }

    /// Send everything for `svc` out of `port`, atomically replacing where it went before. This is
    /// COAT's "flow switch" (on the client's bridge) and "explicit flows for the service's MAC"
    /// (on the destination bridge). Idempotent.
    pub async fn steer(&self, svc: ServiceAddr, port: u32) -> Result<()> {
        if port == 0 || port > 0xffff_ff00 {
            return Err(OverlayError::Invalid(format!(
                "{port} is not a physical OpenFlow port number"
            )));
        }
        self.backend
            .replace(
                &self.bridge,
                service_cookie(svc.ip),
                &service_flows(svc, port),
            )
            .await
    }

    /// Remove `svc`'s steering (its traffic falls back to normal switching). Idempotent.
    pub async fn unsteer(&self, ip: Ipv4Addr) -> Result<()> {
        self.backend.remove(&self.bridge, service_cookie(ip)).await
    }

    /// The flows currently steering `ip`.
    pub async fn flows(&self, ip: Ipv4Addr) -> Result<Vec<String>> {
        self.backend.list(&self.bridge, service_cookie(ip)).await
    }

    /// The backend the flows go through.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The bridge steered.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceAddr {
        ServiceAddr {
            ip: Ipv4Addr::new(10, 99, 0, 100),
            mac: "02:00:0a:63:00:64".parse().unwrap(),
        }
    }

    #[test]
    fn cookie_is_tagged_per_service() {
        assert_eq!(
            service_cookie(Ipv4Addr::new(10, 99, 0, 100)),
            0x4d4f_5345_0a63_0064
        );
        assert_ne!(
            service_cookie(Ipv4Addr::new(10, 99, 0, 100)),
            service_cookie(Ipv4Addr::new(10, 99, 0, 101))
        );
    }

    #[test]
    fn bundle_deletes_then_adds_ip_arp_and_mac() {
        let c = service_cookie(svc().ip);
        let b = ofctl_bundle(c, &service_flows(svc(), 7));
        assert_eq!(
            b,
            "delete cookie=0x4d4f53450a630064/-1\n\
             add cookie=0x4d4f53450a630064,priority=1000,ip,nw_dst=10.99.0.100,actions=output:7\n\
             add cookie=0x4d4f53450a630064,priority=1000,arp,arp_tpa=10.99.0.100,actions=output:7\n\
             add cookie=0x4d4f53450a630064,priority=1000,dl_dst=02:00:0a:63:00:64,actions=output:7\n"
        );
    }

    #[test]
    fn other_actions_render() {
        let f = Flow {
            priority: 5,
            matcher: Match::Ipv4Dst(Ipv4Addr::LOCALHOST),
            action: Action::Normal,
        };
        assert!(ofctl_flow(1, &f).ends_with("actions=NORMAL"));
        let f = Flow {
            action: Action::Drop,
            ..f
        };
        assert!(ofctl_flow(1, &f).ends_with("actions=drop"));
    }

    #[test]
    fn dump_parsing_skips_header() {
        let out = "OFPST_FLOW reply (OF1.3) (xid=0x2):\n cookie=0x1, priority=1000,ip,nw_dst=10.0.0.1 actions=output:2\n\n";
        assert_eq!(
            parse_dump(out),
            vec!["cookie=0x1, priority=1000,ip,nw_dst=10.0.0.1 actions=output:2"]
        );
    }

    #[tokio::test]
    async fn steer_rejects_reserved_ports_and_bad_bridges() {
        let s = Steering::new(OfctlBackend::new("/nonexistent"), "br0");
        assert!(matches!(
            s.steer(svc(), 0).await,
            Err(OverlayError::Invalid(_))
        ));
        assert!(matches!(
            s.steer(svc(), 0xffff_fffe).await,
            Err(OverlayError::Invalid(_))
        ));
        let s = Steering::new(OfctlBackend::new("/nonexistent"), "../x");
        assert!(matches!(
            s.steer(svc(), 1).await,
            Err(OverlayError::Invalid(_))
        ));
    }
}
