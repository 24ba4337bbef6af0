//! Host quirks, detected in one place so the rest of the code never guesses.
//!
//! The one we know: on the development machines the process lacks `CAP_SYS_RESOURCE`, so it cannot
//! raise a hard rlimit. Podman asks runc for `nofile`/`nproc` = 1048576 by default, and runc then
//! fails with "error setting rlimit type 7: operation not permitted". The fix is explicit
//! `--ulimit nofile=<hard>:<hard> --ulimit nproc=<n>:<n>` no higher than what the container's
//! parent (conmon) holds. Real hosts have the capability and get no extra flags.

use std::path::Path;

use crate::error::{Result, TestbedError};

/// Bit of `CAP_SYS_RESOURCE` in the capability masks of `/proc/<pid>/status`.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// What podman requests when no ulimit is given (its built-in default for nofile and nproc).
pub const PODMAN_DEFAULT_RLIMIT: u64 = 1_048_576;

/// Podman lowers its own `RLIMIT_NPROC` to 32768 when it cannot raise it (measured here:
/// `/proc/<podman>/limits` shows 32768 while the shell that started it has 96364), and conmon,
/// the container's parent, inherits that; anything above fails in runc with "rlimit type 6".
pub const PODMAN_NPROC_CEILING: u64 = 32_768;

/// The facts about this machine that change how containers must be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    /// The effective capability set includes `CAP_SYS_RESOURCE`.
    pub has_sys_resource: bool,
    /// Hard `RLIMIT_NOFILE` of this process (`u64::MAX` = unlimited).
    pub nofile_hard: u64,
    /// Hard `RLIMIT_NPROC` of this process (`u64::MAX` = unlimited).
    pub nproc_hard: u64,
}

impl Quirks {
    /// Detect from `/proc/self/status` and `getrlimit`.
    pub fn detect() -> Result<Quirks> {
        let path = Path::new("/proc/self/status");
        let status = std::fs::read_to_string(path).map_err(|e| {
            TestbedError::io(format!("read {} to check capabilities", path.display()), e)
        })?;
        let cap_eff = parse_cap_eff(&status).map_err(|why| TestbedError::Parse {
            path: path.into(),
            why,
        })?;
        let hard = |r, name: &str| {
            nix::sys::resource::getrlimit(r)
                .map(|(_, hard)| hard)
                .map_err(|e| TestbedError::State(format!("getrlimit({name}) failed: {e}")))
        };
        Ok(Quirks {
            has_sys_resource: cap_eff & (1u64 << CAP_SYS_RESOURCE) != 0,
            nofile_hard: hard(nix::sys::resource::Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE")?,
            nproc_hard: hard(nix::sys::resource::Resource::RLIMIT_NPROC, "RLIMIT_NPROC")?,
        })
    }

    /// Ulimits every container must be created with, as podman's `type=soft:hard` strings.
    /// Empty when the host can raise limits itself (the normal case on real hosts).
    pub fn container_ulimits(&self) -> Vec<String> {
        if self.has_sys_resource {
            return Vec::new();
        }
        let nofile = self.nofile_hard.min(PODMAN_DEFAULT_RLIMIT);
        let nproc = self.nproc_hard.min(PODMAN_NPROC_CEILING);
        vec![
            format!("nofile={nofile}:{nofile}"),
            format!("nproc={nproc}:{nproc}"),
        ]
    }

    /// The same as command-line arguments: `--ulimit a --ulimit b`.
    pub fn podman_ulimit_args(&self) -> Vec<String> {
        self.container_ulimits()
            .into_iter()
            .flat_map(|u| ["--ulimit".to_string(), u])
            .collect()
    }
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> std::result::Result<u64, String> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| "no CapEff line".to_string())?;
    u64::from_str_radix(line.trim(), 16)
        .map_err(|e| format!("CapEff `{}` is not hex: {e}", line.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_THIS_MACHINE: &str =
        "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
        CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
    const STATUS_FULL_ROOT: &str = "CapEff:\t000001ffffffffff\n";

    fn quirks(status: &str, nofile: u64, nproc: u64) -> Quirks {
        let cap = parse_cap_eff(status).unwrap();
        Quirks {
            has_sys_resource: cap & (1 << CAP_SYS_RESOURCE) != 0,
            nofile_hard: nofile,
            nproc_hard: nproc,
        }
    }

    #[test]
    fn this_machine_needs_explicit_ulimits() {
        let q = quirks(STATUS_THIS_MACHINE, 20000, 96364);
        assert!(!q.has_sys_resource);
        assert_eq!(
            q.container_ulimits(),
            ["nofile=20000:20000", "nproc=32768:32768"]
        );
        assert_eq!(
            q.podman_ulimit_args(),
            [
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=32768:32768"
            ]
        );
    }

    #[test]
    fn low_or_unlimited_hard_limits_are_clamped() {
        let q = quirks(STATUS_THIS_MACHINE, u64::MAX, 1000);
        assert_eq!(
            q.container_ulimits(),
            ["nofile=1048576:1048576", "nproc=1000:1000"]
        );
    }

    #[test]
    fn real_hosts_get_nothing() {
        let q = quirks(STATUS_FULL_ROOT, 1024, 1024);
        assert!(q.has_sys_resource);
        assert!(q.container_ulimits().is_empty());
        assert!(q.podman_ulimit_args().is_empty());
    }

    #[test]
    fn bad_status_is_an_error_not_a_panic() {
        assert!(parse_cap_eff("Name: x\n")
            .unwrap_err()
            .contains("no CapEff"));
        assert!(parse_cap_eff("CapEff:\tzzzz\n")
            .unwrap_err()
            .contains("not hex"));
        assert!(parse_cap_eff("CapEff:\t1ffffffffffffffffffff\n").is_err());
    }

    #[test]
    fn detect_works_here() {
        let q = Quirks::detect().unwrap();
        assert!(q.nofile_hard > 0 && q.nproc_hard > 0);
        // Whatever this machine is, the flags must be consistent with the capability.
        assert_eq!(q.container_ulimits().is_empty(), q.has_sys_resource);
    }
}
