//! Profiling: what the agent publishes as metrics (SPEC §3, `agents/{id}/metrics`).
//!
//! Host load comes from sysinfo. Per-container state size M comes from the container's cgroup
//! (`memory.stat`), through the [`ContainerProbe`] seam: the runtime driver registers the
//! containers it runs, so profiling does not need to know about Podman.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mose_protocol::messages::{ContainerMetrics, HostMetrics};
use sysinfo::{MemoryRefreshKind, System};
use tracing::warn;

/// Samples host-wide CPU, memory and load. CPU usage is measured between two samples, so the
/// first sample after construction reports the usage since construction.
pub struct HostProbe {
    system: System,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl HostProbe {
    pub fn new() -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        Self { system }
    }

    pub fn sample(&mut self) -> HostMetrics {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let load = System::load_average();
        HostMetrics {
            cpu_percent: self.system.global_cpu_usage(),
            cpus: self.system.cpus().len() as u32,
            load_avg: [load.one as f32, load.five as f32, load.fifteen as f32],
            mem_total_bytes: self.system.total_memory(),
            mem_used_bytes: self.system.used_memory(),
        }
    }
}

/// Per-container metrics, provided by whoever knows the containers.
pub trait ContainerProbe: Send + Sync {
    fn containers(&self) -> Vec<ContainerMetrics>;
}

/// A [`ContainerProbe`] over cgroups registered by name: reads the anonymous memory of each
/// (the part of a container's memory a checkpoint must carry).
#[derive(Default)]
pub struct CgroupProbe {
    tracked: Mutex<BTreeMap<String, PathBuf>>,
}

impl CgroupProbe {
    /// Starts reporting `name` from the cgroup directory `dir` (holding `memory.stat`).
    pub fn track(&self, name: &str, dir: PathBuf) {
        self.lock().insert(name.to_string(), dir);
    }

    /// Stops reporting `name`.
    pub fn untrack(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PathBuf>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep using it.
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ContainerProbe for CgroupProbe {
    fn containers(&self) -> Vec<ContainerMetrics> {
        let tracked = self.lock().clone();
        let mut out = Vec::with_capacity(tracked.len());
        for (name, dir) in tracked {
            match anon_bytes_of_cgroup(&dir) {
                Ok(state_bytes) => out.push(ContainerMetrics {
                    name,
                    state_bytes,
                    dirty_rate_bps: None,
                    dirty_method: None,
                }),
                // The container may have just stopped; the runtime untracks it shortly.
                Err(e) => warn!(container = %name, cgroup = %dir.display(), error = %e,
                                "cannot read container memory"),
            }
        }
        out
    }
}

/// Anonymous memory of a cgroup in bytes: `anon` (cgroup v2) or `total_rss`/`rss` (v1).
pub fn anon_bytes_of_cgroup(dir: &Path) -> io::Result<u64> {
    let stat = std::fs::read_to_string(dir.join("memory.stat"))?;
    parse_anon_bytes(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}/memory.stat has no anon, total_rss or rss line", dir.display()),
        )
    })
}

fn parse_anon_bytes(stat: &str) -> Option<u64> {
    let value = |key: &str| {
        stat.lines().find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    value("anon").or_else(|| value("total_rss")).or_else(|| value("rss"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sample_is_plausible() {
        let mut probe = HostProbe::new();
        let m = probe.sample();
        assert!(m.cpus >= 1);
        assert!(m.mem_total_bytes > 0);
        assert!(m.mem_used_bytes <= m.mem_total_bytes);
        assert!((0.0..=100.0 * m.cpus as f32).contains(&m.cpu_percent));
    }

    #[test]
    fn anon_from_v2_and_v1_stat() {
        assert_eq!(parse_anon_bytes("file 10\nanon 4096\nkernel 1\n"), Some(4096));
        assert_eq!(parse_anon_bytes("cache 1\nrss 77\ntotal_rss 99\n"), Some(99));
        assert_eq!(parse_anon_bytes("file 10\n"), None);
        assert_eq!(parse_anon_bytes("anon lots\n"), None);
    }

    #[test]
    fn probe_reports_tracked_cgroups_and_skips_vanished_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.stat"), "anon 8192\nfile 1\n").unwrap();
        let probe = CgroupProbe::default();
        probe.track("svc", dir.path().to_path_buf());
        probe.track("gone", dir.path().join("missing"));
        let got = probe.containers();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "svc");
        assert_eq!(got[0].state_bytes, 8192);
        probe.untrack("svc");
        probe.untrack("gone");
        assert!(probe.containers().is_empty());
    }
}
