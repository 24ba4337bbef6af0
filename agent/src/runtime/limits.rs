//! The rlimits containers must be created with on this host.
//!
//! Podman asks runc for `nofile` and `nproc` = 1048576 unless told otherwise. A process without
//! `CAP_SYS_RESOURCE` cannot raise a hard limit, so on such hosts (the development machines)
//! runc fails with "error setting rlimit type 7: operation not permitted". There the container
//! must ask for no more than the hard limits podman itself holds: our `nofile` hard limit, and
//! `nproc` capped at 32768 (podman lowers its own `RLIMIT_NPROC` to that when it cannot raise
//! it, and conmon, the container's parent, inherits it). Hosts with the capability get nothing
//! extra, so their containers keep podman's defaults.
//!
//! The agent runs with the same credentials as the podman service it talks to (root, same
//! host), so its own capabilities and limits stand for podman's.

use serde::Serialize;

/// Bit of `CAP_SYS_RESOURCE` in the `CapEff` mask.
const CAP_SYS_RESOURCE: u32 = 24;
/// Podman's default for `nofile` and `nproc` when no ulimit is given.
const PODMAN_DEFAULT_RLIMIT: u64 = 1_048_576;
/// What podman lowers its `nproc` hard limit to when it cannot raise it.
const PODMAN_NPROC_CEILING: u64 = 32_768;

/// One rlimit in podman's create request (`r_limits`): `kind` is `nofile`, `nproc`, ...
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    /// The limit (`nofile`, `nproc`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Podman's command-line and containers.conf form: `nofile=1024:1024`.
impl std::fmt::Display for Ulimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}:{}", self.kind, self.soft, self.hard)
    }
}

impl Ulimit {
    /// Soft = hard = `value`.
    pub fn fixed(kind: &str, value: u64) -> Ulimit {
        Ulimit {
            kind: kind.to_string(),
            soft: value,
            hard: value,
        }
    }
}

/// What decides the ulimits (read from `/proc/self/status` and `getrlimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// The agent holds `CAP_SYS_RESOURCE` (may raise hard limits).
    pub has_sys_resource: bool,
    /// Hard `RLIMIT_NOFILE` (`u64::MAX` = unlimited).
    pub nofile_hard: u64,
    /// Hard `RLIMIT_NPROC` (`u64::MAX` = unlimited).
    pub nproc_hard: u64,
}

impl HostLimits {
    /// Read this process's capability mask and hard limits.
    pub fn detect() -> std::io::Result<HostLimits> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let cap_eff = parse_cap_eff(&status)
            .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidData, why))?;
        Ok(HostLimits {
            has_sys_resource: cap_eff & (1 << CAP_SYS_RESOURCE) != 0,
            nofile_hard: hard_limit(libc::RLIMIT_NOFILE)?,
            nproc_hard: hard_limit(libc::RLIMIT_NPROC)?,
        })
    }

    /// The ulimits every container needs here; empty when podman can raise limits itself.
    pub fn container_ulimits(&self) -> Vec<Ulimit> {
        if self.has_sys_resource {
            return Vec::new();
        }
        vec![
            Ulimit::fixed("nofile", self.nofile_hard.min(PODMAN_DEFAULT_RLIMIT)),
            Ulimit::fixed("nproc", self.nproc_hard.min(PODMAN_NPROC_CEILING)),
        ]
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(if r.rlim_max == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        r.rlim_max
    })
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
fn parse_cap_eff(status: &str) -> Result<u64, String> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or("no CapEff line in /proc/self/status")?;
    u64::from_str_radix(hex.trim(), 16)
        .map_err(|e| format!("CapEff `{}` is not hex: {e}", hex.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_capability_limits_are_explicit_and_clamped() {
        let cap = parse_cap_eff("Name:\tx\nCapEff:\t000001fffeffffff\n").unwrap();
        let l = HostLimits {
            has_sys_resource: cap & (1 << CAP_SYS_RESOURCE) != 0,
            nofile_hard: 20000,
            nproc_hard: 96364,
        };
        assert!(!l.has_sys_resource);
        assert_eq!(
            l.container_ulimits(),
            [
                Ulimit::fixed("nofile", 20000),
                Ulimit::fixed("nproc", 32768)
            ]
        );
        let as_flags: Vec<String> = l
            .container_ulimits()
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(as_flags, ["nofile=20000:20000", "nproc=32768:32768"]);
        let unlimited = HostLimits {
            nofile_hard: u64::MAX,
            nproc_hard: 1000,
            ..l
        };
        assert_eq!(
            unlimited.container_ulimits(),
            [
                Ulimit::fixed("nofile", 1_048_576),
                Ulimit::fixed("nproc", 1000)
            ]
        );
    }

    #[test]
    fn with_the_capability_podman_defaults_stay() {
        let cap = parse_cap_eff("CapEff:\t000001ffffffffff\n").unwrap();
        let l = HostLimits {
            has_sys_resource: cap & (1 << CAP_SYS_RESOURCE) != 0,
            nofile_hard: 1024,
            nproc_hard: 1024,
        };
        assert!(l.container_ulimits().is_empty());
    }

    #[test]
    fn bad_status_text_is_an_error() {
        assert!(parse_cap_eff("Name: x\n").is_err());
        assert!(parse_cap_eff("CapEff:\tzz\n").is_err());
    }

    #[test]
    fn detection_is_consistent_here() {
        let l = HostLimits::detect().unwrap();
        assert!(l.nofile_hard > 0 && l.nproc_hard > 0);
        assert_eq!(l.container_ulimits().is_empty(), l.has_sys_resource);
        let json = serde_json::to_value(Ulimit::fixed("nofile", 5)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "nofile", "soft": 5, "hard": 5})
        );
    }
}
