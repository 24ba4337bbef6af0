//! The emulated edge LAN: one Linux bridge in the root network namespace, one veth per host.
//!
//! Addressing (10.99.0.0/24, see docs/testbed.md):
//! * `.1`–`.9`: reserved (nothing in the root namespace has an address: no traffic can leave the LAN);
//! * `.10`–`.99`: hosts, [`Lan::host_addr`]`(i)` = `10.99.0.(10+i)`;
//! * `.100`–`.199`: service addresses that move between hosts, [`Lan::service_addr`]`(i)`;
//! * `.200`–`.254`: free for tests.
//!
//! Every LAN is a separate bridge with no uplink, so parallel LANs (e.g. parallel tests) may
//! reuse the same addresses without seeing each other.
//!
//! Link shaping is per host, on both ends of its veth: the host's `eth0` egress (upload) and the
//! root-side veth egress (download). A host link of rate R and delay d is a star-topology
//! link to the switch, so between hosts A and B the one-way delay is d_A + d_B and the rate
//! min(R_A, R_B).

use std::net::Ipv4Addr;
use std::time::Duration;

use mose_command::{Cmd, CommandError};
use mose_protocol::units::BitsPerSec;

use crate::error::{Result, TestbedError};
use crate::host::{validate_name, Host};
use crate::sys;

/// The LAN subnet.
pub const LAN_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 0);
/// Its prefix length.
pub const LAN_PREFIX_LEN: u8 = 24;
/// First host octet (`host_addr(0)`).
pub const FIRST_HOST_OCTET: u8 = 10;
/// First service octet (`service_addr(0)`).
pub const FIRST_SERVICE_OCTET: u8 = 100;
/// Longest LAN prefix: the bridge is `<prefix>br` and a host's veth `<prefix><host>`, and
/// interface names are at most 15 characters.
pub const MAX_PREFIX_LEN: usize = 10;

/// Rate and delay of one host's link to the LAN switch, applied in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkShape {
    /// Rate (tc tbf); `None` = unlimited.
    pub rate: Option<BitsPerSec>,
    /// One-way delay (tc netem); `None` or zero = none.
    pub delay: Option<Duration>,
}

impl LinkShape {
    /// A link shaped to `rate`, no added delay.
    pub fn rate(rate: BitsPerSec) -> Self {
        LinkShape {
            rate: Some(rate),
            delay: None,
        }
    }
    /// Adds a one-way delay.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    fn validate(&self) -> Result<()> {
        if let Some(BitsPerSec(r)) = self.rate {
            if !(8_000..=100_000_000_000).contains(&r) {
                return Err(TestbedError::Invalid(format!(
                    "link rate {r} bit/s out of range (8 kbit/s ..= 100 Gbit/s)"
                )));
            }
        }
        if let Some(d) = self.delay {
            if d > Duration::from_secs(10) {
                return Err(TestbedError::Invalid(format!(
                    "link delay {d:?} is over 10 s"
                )));
            }
        }
        Ok(())
    }

    /// The tc commands (arguments after `tc`) that shape egress of `dev`. The token bucket sits
    /// under netem so delayed packets are still paced.
    pub fn tc_commands(&self, dev: &str) -> Vec<Vec<String>> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let delay_us = self
            .delay
            .map(mose_protocol::units::micros)
            .filter(|&u| u > 0);
        let tbf = |parent: &[&str], rate: u64| {
            // Burst: 5 ms worth of tokens, at least 32 KiB, so the kernel timer (HZ) does not cap
            // the rate; queue (latency): 200 ms before drops, like a modest switch buffer.
            let burst = (rate / 8 / 200).max(32 * 1024);
            let mut v = s(&["qdisc", "add", "dev", dev]);
            v.extend(s(parent));
            v.extend([
                "tbf".into(),
                "rate".into(),
                format!("{rate}bit"),
                "burst".into(),
                burst.to_string(),
                "latency".into(),
                "200ms".into(),
            ]);
            v
        };
        let mut cmds = Vec::new();
        match (delay_us, self.rate.map(|r| r.0)) {
            (None, None) => {}
            (None, Some(r)) => cmds.push(tbf(&["root", "handle", "10:"], r)),
            (Some(us), rate) => {
                // netem's default queue (1000 packets) would drop at high rate x delay products.
                let mut v = s(&[
                    "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay",
                ]);
                v.extend([format!("{us}us"), "limit".into(), "100000".into()]);
                cmds.push(v);
                if let Some(r) = rate {
                    cmds.push(tbf(&["parent", "1:1", "handle", "10:"], r));
                }
            }
        }
        cmds
    }
}

/// One emulated LAN (a bridge). Dropping it without [`Lan::destroy`] deletes the bridge.
#[derive(Debug)]
pub struct Lan {
    prefix: String,
    bridge: String,
    torn_down: bool,
}

/// Stop the root namespace from talking on our links (router solicitations, MLD): it has no
/// business on the LAN. Best effort: a kernel without IPv6 has nothing to disable.
pub(crate) fn disable_ipv6(ifname: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        b"1",
    );
}

impl Lan {
    /// Create the bridge `<prefix>br`. Every host on this LAN is named `<prefix><name>`, so
    /// [`crate::sweep_stale`]`(prefix)` finds all of it. Fails if the bridge exists already.
    pub async fn create(prefix: &str) -> Result<Lan> {
        validate_name("LAN prefix", prefix, MAX_PREFIX_LEN)?;
        let bridge = format!("{prefix}br");
        if sys::link_names().contains(&bridge) {
            return Err(TestbedError::State(format!(
                "LAN bridge {bridge} already exists; a crashed run? `mose-testbed down` or sweep_stale(\"{prefix}\") removes it"
            )));
        }
        // STP off and no forwarding delay: ports forward at once, there are no loops to protect.
        mose_command::run(
            "ip",
            [
                "link",
                "add",
                &bridge,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
        )
        .await?;
        let lan = Lan {
            prefix: prefix.to_string(),
            bridge,
            torn_down: false,
        };
        disable_ipv6(&lan.bridge);
        mose_command::run("ip", ["link", "set", &lan.bridge, "up"]).await?;
        tracing::info!(bridge = %lan.bridge, "LAN up");
        Ok(lan)
    }

    /// Name prefix of everything on this LAN.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The bridge interface (root namespace).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
    /// Prefix length of the LAN subnet.
    pub fn prefix_len(&self) -> u8 {
        LAN_PREFIX_LEN
    }

    /// Address of the `index`-th host: `10.99.0.(10+index)`, index 0..=89.
    pub fn host_addr(&self, index: u8) -> Result<Ipv4Addr> {
        if index > 89 {
            return Err(TestbedError::Invalid(format!(
                "host index {index} out of range 0..=89"
            )));
        }
        Ok(octet(FIRST_HOST_OCTET + index))
    }

    /// The `index`-th service address: `10.99.0.(100+index)`, index 0..=99.
    pub fn service_addr(&self, index: u8) -> Result<Ipv4Addr> {
        if index > 99 {
            return Err(TestbedError::Invalid(format!(
                "service index {index} out of range 0..=99"
            )));
        }
        Ok(octet(FIRST_SERVICE_OCTET + index))
    }

    /// True for usable unicast addresses of the subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let [a, b, c, d] = addr.octets();
        let [na, nb, nc, _] = LAN_NETWORK.octets();
        (a, b, c) == (na, nb, nc) && d != 0 && d != 255
    }

    pub(crate) fn check_host_addr(&self, addr: Ipv4Addr) -> Result<()> {
        if self.contains(addr) {
            Ok(())
        } else {
            Err(TestbedError::Invalid(format!(
                "address {addr} is not a host address of the LAN {LAN_NETWORK}/{LAN_PREFIX_LEN}"
            )))
        }
    }

    /// Shape `host`'s link (both directions); replaces any previous shaping of it.
    pub async fn shape(&self, host: &Host, shape: LinkShape) -> Result<()> {
        shape.validate()?;
        self.unshape(host).await?;
        if let Err(e) = self.apply(host, &shape).await {
            // Half a shaping (one direction only) would mislead PAM more than none.
            self.unshape(host).await?;
            return Err(match e {
                TestbedError::Command(CommandError::Failed { stderr, .. }) if shape.delay.is_some() && stderr.contains("qdisc kind is unknown") => {
                    TestbedError::State(
                        "link delay needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel \
                         lacks; rate shaping (tbf) works without it"
                            .into(),
                    )
                }
                e => e,
            });
        }
        tracing::info!(host = %host.full_name(), ?shape, "link shaped");
        Ok(())
    }

    async fn apply(&self, host: &Host, shape: &LinkShape) -> Result<()> {
        for args in shape.tc_commands(host.veth_outside()) {
            mose_command::run("tc", &args).await?;
        }
        for args in shape.tc_commands(host.lan_ifname()) {
            host.run("tc", &args).await?;
        }
        Ok(())
    }

    /// Remove shaping from `host`'s link.
    pub async fn unshape(&self, host: &Host) -> Result<()> {
        // "No such file" / "Cannot delete qdisc with handle of zero" just mean: nothing to remove.
        let _ = mose_command::run("tc", ["qdisc", "del", "dev", host.veth_outside(), "root"]).await;
        let _ = host
            .run("tc", ["qdisc", "del", "dev", host.lan_ifname(), "root"])
            .await;
        Ok(())
    }

    /// Keep the bridge after this process exits (`mose-testbed up`); [`crate::sweep_stale`]
    /// deletes it later.
    pub fn persist(mut self) {
        self.torn_down = true;
    }

    /// Delete the bridge (hosts' veths are deleted by the hosts).
    pub async fn destroy(mut self) -> Result<()> {
        self.torn_down = true;
        let bridge = self.bridge.clone();
        if sys::link_names().contains(&bridge) {
            mose_command::run("ip", ["link", "del", &bridge]).await?;
        }
        tracing::info!(bridge = %bridge, "LAN down");
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if !self.torn_down && sys::link_names().contains(&self.bridge) {
            let del = Cmd::new("ip")
                .args(["link", "del", &self.bridge])
                .deadline(Duration::from_secs(10));
            if let Err(e) = del.stdout_blocking() {
                tracing::warn!(bridge = %self.bridge, error = %e, "could not delete LAN bridge on drop");
            }
        }
    }
}

fn octet(last: u8) -> Ipv4Addr {
    let [a, b, c, _] = LAN_NETWORK.octets();
    Ipv4Addr::new(a, b, c, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan() -> Lan {
        // Not created: only the pure helpers are exercised. torn_down keeps Drop quiet.
        Lan {
            prefix: "t-".into(),
            bridge: "t-br".into(),
            torn_down: true,
        }
    }

    #[test]
    fn addressing() {
        let l = lan();
        assert_eq!(l.host_addr(0).unwrap(), Ipv4Addr::new(10, 99, 0, 10));
        assert_eq!(l.host_addr(89).unwrap(), Ipv4Addr::new(10, 99, 0, 99));
        assert!(l.host_addr(90).is_err());
        assert_eq!(l.service_addr(0).unwrap(), Ipv4Addr::new(10, 99, 0, 100));
        assert!(l.service_addr(100).is_err());
        assert!(l.contains(Ipv4Addr::new(10, 99, 0, 1)));
        assert!(!l.contains(Ipv4Addr::new(10, 99, 1, 1)));
        assert!(!l.contains(Ipv4Addr::new(10, 99, 0, 255)));
        assert!(l
            .check_host_addr(Ipv4Addr::new(192, 168, 0, 1))
            .unwrap_err()
            .to_string()
            .contains("not a host address"));
    }

    #[test]
    fn tc_commands_per_shape() {
        assert!(LinkShape::default().tc_commands("x").is_empty());
        let r = LinkShape::rate(BitsPerSec(100_000_000)).tc_commands("x");
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].join(" "),
            "qdisc add dev x root handle 10: tbf rate 100000000bit burst 62500 latency 200ms"
        );
        let rd = LinkShape::rate(BitsPerSec(8_000_000))
            .with_delay(Duration::from_millis(5))
            .tc_commands("x");
        assert_eq!(
            rd[0].join(" "),
            "qdisc add dev x root handle 1: netem delay 5000us limit 100000"
        );
        assert_eq!(
            rd[1].join(" "),
            "qdisc add dev x parent 1:1 handle 10: tbf rate 8000000bit burst 32768 latency 200ms"
        );
        let d = LinkShape::default()
            .with_delay(Duration::from_millis(1))
            .tc_commands("x");
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn shapes_are_validated() {
        assert!(LinkShape::rate(BitsPerSec(10)).validate().is_err());
        assert!(LinkShape::default()
            .with_delay(Duration::from_secs(11))
            .validate()
            .is_err());
        assert!(LinkShape::rate(BitsPerSec(1_000_000))
            .with_delay(Duration::from_millis(2))
            .validate()
            .is_ok());
    }
}
