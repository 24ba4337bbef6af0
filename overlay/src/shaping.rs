//! Bandwidth allocation for a migration (PAM's L): a tc token bucket (tbf) on the egress of the
//! device the migration leaves by, optionally only for traffic to the destination.
//!
//! Layout when a destination is given (other traffic must keep its full rate):
//! ```text
//! root 1: htb                    (no default class: unclassified traffic bypasses shaping)
//!   class 1:4 htb rate L ceil L  <- u32 match ip dst <destination>/32
//!     40: tbf rate L             (the token bucket that paces the migration)
//! ```
//! Why htb and not `prio`: this kernel (and the testbed's) ships only htb, tbf and pfifo_fast
//! among the qdiscs (no prio, netem, fq_codel); htb with no default class is the classful qdisc
//! that passes everything we do not classify untouched.
//! Without a destination the tbf is the root qdisc. rtnetlink has no builder for tbf/htb
//! options, so this one step shells out to `tc` (inside the namespace via `nsenter`).

use std::net::Ipv4Addr;
use std::path::Path;

use mose_command::{argv, Cmd, CommandError};

use crate::error::{OverlayError, Result};
use crate::netns::validate_ifname;

/// A rate limit on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The egress device (in the namespace given to [`shape`]).
    pub dev: String,
    /// Rate in bit/s.
    pub rate_bits_per_s: u64,
    /// Only traffic to this address is limited; None = all egress of `dev`.
    pub dst: Option<Ipv4Addr>,
}

/// Token bucket depth: 10 ms worth of tokens, at least 10 full-size frames. Smaller buckets
/// cannot reach the rate with the kernel's timer granularity; larger ones make the first
/// burst overshoot.
fn burst_bytes(rate_bits_per_s: u64) -> u64 {
    (rate_bits_per_s / 8 / 100).max(10 * 1514)
}

/// The `tc` argument lists (without `tc`) that install `s`.
pub fn tc_commands(s: &Shape) -> Vec<Vec<String>> {
    let rate = format!("{}bit", s.rate_bits_per_s);
    let burst = burst_bytes(s.rate_bits_per_s).to_string();
    let tbf = |parent: &[&str]| {
        let mut v = argv(["qdisc", "add", "dev", s.dev.as_str()]);
        v.extend(argv(parent.iter().copied()));
        v.extend(argv([
            "tbf",
            "rate",
            rate.as_str(),
            "burst",
            burst.as_str(),
            "latency",
            "100ms",
        ]));
        v
    };
    match s.dst {
        None => vec![tbf(&["root", "handle", "40:"])],
        Some(dst) => vec![
            argv([
                "qdisc",
                "add",
                "dev",
                s.dev.as_str(),
                "root",
                "handle",
                "1:",
                "htb",
            ]),
            argv([
                "class",
                "add",
                "dev",
                s.dev.as_str(),
                "parent",
                "1:",
                "classid",
                "1:4",
                "htb",
                "rate",
                rate.as_str(),
                "ceil",
                rate.as_str(),
                "burst",
                burst.as_str(),
            ]),
            tbf(&["parent", "1:4", "handle", "40:"]),
            argv([
                "filter".to_string(),
                "add".into(),
                "dev".into(),
                s.dev.clone(),
                "parent".into(),
                "1:".into(),
                "protocol".into(),
                "ip".into(),
                "prio".into(),
                "1".into(),
                "u32".into(),
                "match".into(),
                "ip".into(),
                "dst".into(),
                format!("{dst}/32"),
                "flowid".into(),
                "1:4".into(),
            ]),
        ],
    }
}

fn validate(s: &Shape) -> Result<()> {
    validate_ifname(&s.dev)?;
    if !(8_000..=100_000_000_000).contains(&s.rate_bits_per_s) {
        return Err(OverlayError::Invalid(format!(
            "rate {} bit/s out of range (8 kbit/s ..= 100 Gbit/s)",
            s.rate_bits_per_s
        )));
    }
    Ok(())
}

async fn tc(ns: Option<&Path>, args: Vec<String>) -> Result<String> {
    let c = match ns {
        Some(p) => Cmd::new("nsenter")
            .arg(format!("--net={}", p.display()))
            .args(["--", "tc"]),
        None => Cmd::new("tc"),
    };
    Ok(c.args(args).stdout().await?)
}

/// Limit `s.dev` in namespace `ns` (None: ours) to `s.rate_bits_per_s`. Replaces any root qdisc the
/// device had (a retried step, or a new rate for the next migration).
pub async fn shape(ns: Option<&Path>, s: &Shape) -> Result<()> {
    validate(s)?;
    unshape(ns, &s.dev).await?;
    for c in tc_commands(s) {
        if let Err(e) = tc(ns, c).await {
            // Leave the device as we found it (unlimited), not half-configured.
            let _ = unshape(ns, &s.dev).await;
            return Err(e);
        }
    }
    tracing::info!(dev = %s.dev, rate_bits_per_s = s.rate_bits_per_s, dst = ?s.dst, "shaped");
    Ok(())
}

/// Remove any root qdisc (and with it our filter) from `dev`; nothing to remove is fine.
pub async fn unshape(ns: Option<&Path>, dev: &str) -> Result<()> {
    validate_ifname(dev)?;
    match tc(ns, argv(["qdisc", "del", "dev", dev, "root"])).await {
        Ok(_) => Ok(()),
        // Deleting the default qdisc: "Cannot delete qdisc with handle of zero" / "No such file".
        Err(OverlayError::Command(CommandError::Failed { stderr, .. }))
            if stderr.contains("handle of zero")
                || stderr.contains("No such file")
                || stderr.contains("Invalid handle") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_for_whole_device_and_one_destination() {
        let s = Shape {
            dev: "eth0".into(),
            rate_bits_per_s: 40_000_000,
            dst: None,
        };
        assert_eq!(
            tc_commands(&s),
            vec![argv([
                "qdisc",
                "add",
                "dev",
                "eth0",
                "root",
                "handle",
                "40:",
                "tbf",
                "rate",
                "40000000bit",
                "burst",
                "50000",
                "latency",
                "100ms"
            ])]
        );
        let s = Shape {
            dst: Some(Ipv4Addr::new(10, 99, 0, 11)),
            ..s
        };
        let c = tc_commands(&s);
        assert_eq!(c.len(), 4);
        assert_eq!(c[0].join(" "), "qdisc add dev eth0 root handle 1: htb");
        assert_eq!(c[1].join(" "), "class add dev eth0 parent 1: classid 1:4 htb rate 40000000bit ceil 40000000bit burst 50000");
        assert_eq!(c[2].join(" "), "qdisc add dev eth0 parent 1:4 handle 40: tbf rate 40000000bit burst 50000 latency 100ms");
        assert_eq!(c[3].join(" "), "filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.99.0.11/32 flowid 1:4");
    }

    #[test]
    fn small_rates_get_a_minimum_bucket() {
        assert_eq!(burst_bytes(1_000_000), 15_140);
    }

    #[tokio::test]
    async fn bad_input_is_rejected_before_running_tc() {
        let s = Shape {
            dev: "eth0".into(),
            rate_bits_per_s: 10,
            dst: None,
        };
        assert!(matches!(
            shape(None, &s).await,
            Err(OverlayError::Invalid(_))
        ));
        let s = Shape {
            dev: "bad dev".into(),
            rate_bits_per_s: 1_000_000,
            dst: None,
        };
        assert!(matches!(
            shape(None, &s).await,
            Err(OverlayError::Invalid(_))
        ));
    }
}
