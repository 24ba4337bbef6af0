//! Profiling: what the agent publishes as metrics (`agents/{id}/metrics`, docs/protocol.md).
//!
//! Host load comes from sysinfo. Per-container state size M comes from the container's cgroup
//! (`memory.stat`), through the [`ContainerProbe`] seam: the runtime driver registers the
//! containers it runs, so profiling does not need to know about Podman.
//!
//! The dirty rate R is measured between two metrics samples, on the container's processes
//! (`cgroup.procs`): with kernel soft-dirty bits where they work (`clear_refs` 4, then pagemap
//! bit 55 = pages really written), else with accessed bits (`clear_refs` 1, then `Referenced` in
//! `smaps_rollup` = pages read *or* written, an upper bound). On the development kernel writing 4
//! to `clear_refs` succeeds yet bit 55 never appears, so the method is chosen by a real test
//! ([`crate::runtime::capabilities`]), and every number says which method produced it.
//! While a pre-copy chain holds a container's soft-dirty bits ([`crate::runtime::precopy`]),
//! clearing them would make CRIU's next round miss pages: that container is measured with
//! accessed bits until the hold ends (the first sample after a switch only sets the baseline).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use mose_protocol::messages::{ContainerMetrics, DirtyMethod, HostMetrics};
use mose_protocol::units::BytesPerSec;
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
    /// A probe; its first sample covers the time since this call.
    pub fn new() -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        Self { system }
    }

    /// Host-wide load since the previous sample.
    pub fn sample(&mut self) -> HostMetrics {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let load = System::load_average();
        HostMetrics {
            cpu_percent: self.system.global_cpu_usage(),
            cpus: u32::try_from(self.system.cpus().len()).unwrap_or(u32::MAX),
            // f32 is the wire's precision for a load average.
            #[allow(clippy::cast_possible_truncation)]
            load_avg: [load.one as f32, load.five as f32, load.fifteen as f32],
            mem_total_bytes: self.system.total_memory(),
            mem_used_bytes: self.system.used_memory(),
        }
    }
}

/// Per-container metrics, provided by whoever knows the containers.
pub trait ContainerProbe: Send + Sync {
    /// The current metrics of every service container.
    fn containers(&self) -> Vec<ContainerMetrics>;
}

/// A [`ContainerProbe`] over cgroups registered by name: reads the anonymous memory of each
/// (the part of a container's memory a checkpoint must carry) and its dirty rate since the
/// previous sample.
pub struct CgroupProbe {
    method: DirtyMethod,
    /// Where pre-copy chains hold containers' soft-dirty bits.
    holds: PathBuf,
    tracked: Mutex<BTreeMap<String, Tracked>>,
}

struct Tracked {
    dir: PathBuf,
    /// When the container's dirty/accessed bits were last cleared, and with which method;
    /// `None` before the first sample.
    cleared: Option<(Instant, DirtyMethod)>,
}

impl Default for CgroupProbe {
    /// Soft-dirty where this kernel really tracks it, accessed bits otherwise.
    fn default() -> Self {
        let page = crate::runtime::capabilities::page_size() as usize;
        let soft_dirty = crate::runtime::capabilities::kernel_soft_dirty(page).unwrap_or(false);
        Self::new(if soft_dirty {
            DirtyMethod::SoftDirty
        } else {
            DirtyMethod::AccessedBit
        })
    }
}

impl CgroupProbe {
    /// A probe measuring dirty rates with `method`.
    pub fn new(method: DirtyMethod) -> Self {
        Self {
            method,
            holds: PathBuf::from(crate::runtime::precopy::SOFT_DIRTY_HOLDS),
            tracked: Mutex::default(),
        }
    }

    /// The same probe, with soft-dirty holds looked up in `dir` (tests).
    pub fn with_holds(self, dir: impl Into<PathBuf>) -> Self {
        Self {
            holds: dir.into(),
            ..self
        }
    }

    /// The method for `name` now: soft-dirty bits held by a pre-copy chain are not ours.
    fn method_for(&self, name: &str) -> DirtyMethod {
        match self.method {
            DirtyMethod::SoftDirty
                if crate::runtime::precopy::soft_dirty_held(&self.holds, name) =>
            {
                DirtyMethod::AccessedBit
            }
            m => m,
        }
    }

    /// The dirty-rate method in use.
    pub fn method(&self) -> DirtyMethod {
        self.method
    }

    /// Starts reporting `name` from the cgroup directory `dir` (holding `memory.stat` and
    /// `cgroup.procs`).
    pub fn track(&self, name: &str, dir: PathBuf) {
        self.lock()
            .insert(name.to_string(), Tracked { dir, cleared: None });
    }

    /// Stops reporting `name`.
    pub fn untrack(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Reports exactly `running` (name, cgroup dir): new ones are tracked, gone ones dropped,
    /// unchanged ones keep their dirty-rate baseline.
    pub fn sync(&self, running: Vec<(String, PathBuf)>) {
        let mut tracked = self.lock();
        tracked.retain(|name, t| running.iter().any(|(n, d)| n == name && *d == t.dir));
        for (name, dir) in running {
            tracked
                .entry(name)
                .or_insert(Tracked { dir, cleared: None });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tracked>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep using it.
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ContainerProbe for CgroupProbe {
    fn containers(&self) -> Vec<ContainerMetrics> {
        let mut tracked = self.lock();
        let mut out = Vec::with_capacity(tracked.len());
        for (name, t) in tracked.iter_mut() {
            let state_bytes = match anon_bytes_of_cgroup(&t.dir) {
                Ok(b) => b,
                // The container may have just stopped; the runtime untracks it shortly.
                Err(e) => {
                    warn!(container = %name, cgroup = %t.dir.display(), error = %e,
                          "cannot read container memory");
                    continue;
                }
            };
            let method = self.method_for(name);
            // Bits cleared with another method are no baseline for this one.
            let since = t.cleared.and_then(|(at, m)| (m == method).then_some(at));
            let dirty_rate_bytes_per_s = match dirty_rate_since(method, &t.dir, since) {
                Ok(rate) => rate,
                Err(e) => {
                    warn!(container = %name, error = %e, "cannot measure the dirty rate");
                    None
                }
            };
            t.cleared = Some((Instant::now(), method));
            out.push(ContainerMetrics {
                name: name.clone(),
                state_bytes,
                dirty_method: dirty_rate_bytes_per_s.map(|_| method),
                dirty_rate_bytes_per_s,
            });
        }
        out
    }
}

/// Bytes/s dirtied by the cgroup's processes since `cleared` (`None` on the first call), and
/// clears the bits for the next call.
fn dirty_rate_since(
    method: DirtyMethod,
    cgroup: &Path,
    cleared: Option<Instant>,
) -> io::Result<Option<BytesPerSec>> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))?;
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let mut bytes = 0u64;
    for &pid in &pids {
        // A process may exit between listing and reading: it dirties nothing more.
        if cleared.is_some() {
            match pid_dirty_bytes(method, pid) {
                Ok(b) => bytes += b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        let code = match method {
            DirtyMethod::SoftDirty => "4",
            DirtyMethod::AccessedBit => "1",
        };
        match std::fs::write(format!("/proc/{pid}/clear_refs"), code) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(cleared.map(|at| {
        let secs = at.elapsed().as_secs_f64().max(1e-3);
        BytesPerSec(mose_protocol::units::saturating_u64(bytes as f64 / secs))
    }))
}

/// Bytes one process dirtied (soft-dirty) or touched (accessed bit) since its bits were cleared.
fn pid_dirty_bytes(method: DirtyMethod, pid: u32) -> io::Result<u64> {
    match method {
        DirtyMethod::AccessedBit => {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
            parse_referenced_bytes(&rollup).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "smaps_rollup has no Referenced line",
                )
            })
        }
        DirtyMethod::SoftDirty => soft_dirty_bytes(pid),
    }
}

/// `Referenced:` of an `smaps_rollup`, in bytes.
fn parse_referenced_bytes(rollup: &str) -> Option<u64> {
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Referenced:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Bit 55 of a pagemap entry: written since the soft-dirty bits were cleared.
const PM_SOFT_DIRTY: u64 = 1 << 55;

/// Pages with the soft-dirty bit over the writable mappings of `pid`, in bytes.
fn soft_dirty_bytes(pid: u32) -> io::Result<u64> {
    let page = crate::runtime::capabilities::page_size() as u64;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    // Bounded reads: a large reserved mapping must not become a large buffer here.
    const ENTRIES_PER_READ: usize = 1 << 16;
    let mut dirty = 0u64;
    let mut buf = vec![0u8; ENTRIES_PER_READ * 8];
    for (start, end) in writable_ranges(&maps) {
        let (mut first, last) = (start / page, end / page);
        while first < last {
            let n =
                usize::try_from(last - first).map_or(ENTRIES_PER_READ, |n| n.min(ENTRIES_PER_READ));
            let chunk = &mut buf[..n * 8];
            pagemap.read_exact_at(chunk, first * 8)?;
            dirty += chunk
                .chunks_exact(8)
                .filter(|e| {
                    let entry =
                        u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
                    entry & PM_SOFT_DIRTY != 0
                })
                .count() as u64;
            first += n as u64;
        }
    }
    Ok(dirty * page)
}

/// Address ranges of the writable mappings in a `/proc/<pid>/maps` text.
fn writable_ranges(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if !perms.starts_with("rw") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// The memory cgroup directory from a `/proc/<pid>/cgroup` text. A v1 `memory` controller wins
/// (hybrid hosts also list a `0::` line, but memory is accounted in v1 there); else the v2
/// `0::<path>` under the unified mount.
pub fn memory_cgroup_dir(text: &str) -> Option<PathBuf> {
    let rel = |p: &str| p.trim_start_matches('/').to_string();
    let v1 = text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == "memory")
            .then(|| Path::new("/sys/fs/cgroup/memory").join(rel(path)))
    });
    v1.or_else(|| {
        text.lines().find_map(|l| {
            l.strip_prefix("0::")
                .map(|p| Path::new("/sys/fs/cgroup").join(rel(p)))
        })
    })
}

/// The memory cgroup directory of process `pid`.
pub fn memory_cgroup_of(pid: i64) -> io::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    memory_cgroup_dir(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/cgroup names no v1 or v2 memory cgroup"),
        )
    })
}

/// Anonymous memory of a cgroup in bytes: `anon` (cgroup v2) or `total_rss`/`rss` (v1).
pub fn anon_bytes_of_cgroup(dir: &Path) -> io::Result<u64> {
    let stat = std::fs::read_to_string(dir.join("memory.stat"))?;
    parse_anon_bytes(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}/memory.stat has no anon, total_rss or rss line",
                dir.display()
            ),
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
    value("anon")
        .or_else(|| value("total_rss"))
        .or_else(|| value("rss"))
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
        assert_eq!(
            parse_anon_bytes("file 10\nanon 4096\nkernel 1\n"),
            Some(4096)
        );
        assert_eq!(
            parse_anon_bytes("cache 1\nrss 77\ntotal_rss 99\n"),
            Some(99)
        );
        assert_eq!(parse_anon_bytes("file 10\n"), None);
        assert_eq!(parse_anon_bytes("anon lots\n"), None);
    }

    #[test]
    fn cgroup_paths_v2_and_v1() {
        assert_eq!(
            memory_cgroup_dir("0::/machine.slice/libpod-abc.scope/container\n"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/machine.slice/libpod-abc.scope/container"
            ))
        );
        assert_eq!(
            memory_cgroup_dir(
                "12:cpu,cpuacct:/x\n4:memory:/libpod_parent/abc\n0::/libpod_parent/abc\n"
            ),
            Some(PathBuf::from("/sys/fs/cgroup/memory/libpod_parent/abc")),
            "hybrid: memory is a v1 controller"
        );
        assert_eq!(memory_cgroup_dir("garbage\n"), None);
    }

    #[test]
    fn sync_keeps_baselines_and_drops_gone_containers() {
        let probe = CgroupProbe::new(DirtyMethod::AccessedBit);
        probe.track("a", PathBuf::from("/a"));
        probe.lock().get_mut("a").unwrap().cleared =
            Some((Instant::now(), DirtyMethod::AccessedBit));
        probe.track("b", PathBuf::from("/b"));
        probe.sync(vec![
            ("a".into(), PathBuf::from("/a")),
            ("c".into(), PathBuf::from("/c")),
        ]);
        let t = probe.lock();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert!(t["a"].cleared.is_some(), "a kept its baseline");
        assert!(t["c"].cleared.is_none());
    }

    #[test]
    fn smaps_and_maps_parse() {
        let rollup = "Rss:  100 kB\nReferenced:   12 kB\nAnonymous: 3 kB\n";
        assert_eq!(parse_referenced_bytes(rollup), Some(12 * 1024));
        assert_eq!(parse_referenced_bytes("Rss: 1 kB\n"), None);
        let maps = "55d0-55e0 r--p 0 08:01 1 /bin/x\n55e0-55f0 rw-p 0 00:00 0 [heap]\n\
                    7f00-7f10 ---p 0 00:00 0\ngarbage\n";
        assert_eq!(writable_ranges(maps), [(0x55e0, 0x55f0)]);
    }

    /// A fake cgroup directory holding this test process.
    fn cgroup_of_this_process() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.stat"), "anon 4096\n").unwrap();
        std::fs::write(
            dir.path().join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        dir
    }

    /// The accessed-bit method over a real process (this one): memory written between two
    /// samples shows up as a rate, and nothing is reported before a baseline exists.
    #[test]
    fn accessed_bit_rate_sees_memory_written_between_samples() {
        let dir = cgroup_of_this_process();
        let probe = CgroupProbe::new(DirtyMethod::AccessedBit);
        probe.track("me", dir.path().to_path_buf());
        let first = probe.containers();
        assert_eq!(first[0].dirty_rate_bytes_per_s, None, "no baseline yet");
        let mut block = vec![0u8; 32 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&block);
        let second = probe.containers();
        let rate = second[0]
            .dirty_rate_bytes_per_s
            .expect("a rate after the baseline")
            .0;
        assert_eq!(second[0].dirty_method, Some(DirtyMethod::AccessedBit));
        // 32 MiB touched in well under a second.
        assert!(rate > 32 << 20, "rate {rate} B/s");
        // The bits were cleared: the untouched block does not count again.
        let quiet = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let third = probe.containers()[0].dirty_rate_bytes_per_s.unwrap().0;
        let touched = third as f64 * quiet.elapsed().as_secs_f64();
        assert!(
            touched < f64::from(16u32 << 20),
            "{touched} B counted again"
        );
        drop(block);
    }

    /// A pre-copy chain's hold on a container switches it to accessed bits (soft-dirty bits
    /// left to CRIU) and back when released; each switch starts from a new baseline.
    #[test]
    fn a_held_container_is_measured_with_accessed_bits() {
        let dir = cgroup_of_this_process();
        let holds = tempfile::tempdir().unwrap();
        let probe = CgroupProbe::new(DirtyMethod::SoftDirty).with_holds(holds.path());
        probe.track("me", dir.path().to_path_buf());
        let sample = |probe: &CgroupProbe| {
            let c = probe.containers().remove(0);
            (c.dirty_method, c.dirty_rate_bytes_per_s.is_some())
        };
        sample(&probe);
        assert_eq!(sample(&probe), (Some(DirtyMethod::SoftDirty), true));
        std::fs::write(holds.path().join("me"), "/bundle").unwrap();
        assert_eq!(sample(&probe), (None, false), "new method, new baseline");
        assert_eq!(sample(&probe), (Some(DirtyMethod::AccessedBit), true));
        std::fs::remove_file(holds.path().join("me")).unwrap();
        assert_eq!(sample(&probe), (None, false));
        assert_eq!(sample(&probe), (Some(DirtyMethod::SoftDirty), true));
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
