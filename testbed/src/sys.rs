//! Low-level, synchronous helpers over /proc, mounts and namespaces. Synchronous on purpose:
//! teardown runs them from `Drop`, where no async runtime is guaranteed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Inode of the namespace a bind-mounted namespace file refers to, or `None` if the path is not
/// (or no longer) a namespace file (missing, or a plain file whose bind mount is gone).
pub fn ns_inode(path: &Path) -> Option<u64> {
    let fs = nix::sys::statfs::statfs(path).ok()?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return None;
    }
    nix::sys::stat::stat(path).ok().map(|s| s.st_ino)
}

/// `net:[4026532123]` → 4026532123.
fn link_inode(pid: i32, kind: &str) -> Option<u64> {
    let l = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let s = l.to_string_lossy();
    s.strip_prefix(&format!("{kind}:["))?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn all_pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}

/// A process id as the kernel's `pid_t`: Linux pids fit it (`pid_max` is at most 2²²).
pub fn raw_pid(pid: u32) -> i32 {
    i32::try_from(pid).unwrap_or(i32::MAX)
}

/// A process id for nix's signal calls.
pub fn pid(pid: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(raw_pid(pid))
}

/// Processes inside any of the given net/mnt namespaces, plus all their descendants (containers
/// run in namespaces of their own but are children of the host's conmon).
/// Namespaces equal to our own are ignored: matching them would select every process on the machine.
pub fn pids_in_namespaces(net: Option<u64>, mnt: Option<u64>) -> Vec<i32> {
    let me = raw_pid(std::process::id());
    let net = net.filter(|&n| Some(n) != link_inode(me, "net"));
    let mnt = mnt.filter(|&m| Some(m) != link_inode(me, "mnt"));
    if net.is_none() && mnt.is_none() {
        return Vec::new();
    }
    let pids = all_pids();
    let mut hit: HashSet<i32> = pids
        .iter()
        .copied()
        .filter(|&p| p != me)
        .filter(|&p| {
            (net.is_some() && link_inode(p, "net") == net)
                || (mnt.is_some() && link_inode(p, "mnt") == mnt)
        })
        .collect();
    let parents: HashMap<i32, i32> = pids.iter().filter_map(|&p| Some((p, ppid(p)?))).collect();
    // Close over descendants; bounded by the number of processes.
    loop {
        let before = hit.len();
        for (&child, parent) in &parents {
            if child != me && hit.contains(parent) {
                hit.insert(child);
            }
        }
        if hit.len() == before {
            break;
        }
    }
    let mut v: Vec<i32> = hit.into_iter().collect();
    v.sort_unstable();
    v
}

/// Processes whose command line mentions `needle` (daemons of a host whose namespace files are
/// already gone still name their state directory).
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let me = raw_pid(std::process::id());
    all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// SIGTERM, wait up to `grace`, SIGKILL the rest and wait a little more. Returns survivors.
pub fn terminate(pids: &[i32], grace: Duration) -> Vec<i32> {
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let wait = |limit: Duration| {
        let end = Instant::now() + limit;
        while pids.iter().any(|&p| alive(p)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(grace);
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    wait(Duration::from_secs(3));
    pids.iter().copied().filter(|&p| alive(p)).collect()
}

/// Mount points (as this process sees them) equal to or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let d = dir.to_string_lossy();
    let mut v: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m == &*d || m.starts_with(&format!("{d}/")))
        .collect();
    v.sort_by(|a, b| b.len().cmp(&a.len()).then(b.cmp(a)));
    v
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn is_mountpoint(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| Path::new(m) == dir)
}

/// Lazily detach every mount at or below `dir`. Returns what could not be unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut failed = Vec::new();
    for m in mounts_under(dir) {
        // A stacked mount needs one umount per layer; stop when the path is no longer mounted.
        for _ in 0..8 {
            match nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => {}
                Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
                Err(e) => {
                    failed.push(format!("umount {m}: {e}"));
                    break;
                }
            }
            if !is_mountpoint(Path::new(&m)) {
                break;
            }
        }
    }
    failed
}

/// Make `dir` a private bind mount of itself (once). Bind-mounting a mount-namespace file is only
/// allowed on a mount with private propagation, otherwise the kernel refuses (EINVAL), because the
/// namespace could then end up referencing itself through propagation.
pub fn ensure_private_mount(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Serialise concurrent test processes: two binds stacked here would be harmless but confusing.
    let lock = File::options()
        .create(true)
        .append(true)
        .open(dir.with_extension("lock"))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    if !is_mountpoint(dir) {
        nix::mount::mount(
            Some(dir),
            dir,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)?;
    }
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// Run `f` on a fresh thread that first joins the network namespace at `netns`. Sockets created
/// there stay in that namespace for their whole life, whichever thread uses them later; a fresh
/// thread (not a pool thread) is used because the switch cannot be undone reliably.
pub fn in_netns<T, F>(netns: &Path, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let ns = File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("thread in netns panicked"))?
}

/// Names of the network interfaces of the current (root) network namespace.
pub fn link_names() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_selects_our_own_namespaces() {
        let mine = link_inode(raw_pid(std::process::id()), "net");
        assert!(mine.is_some());
        assert!(
            pids_in_namespaces(mine, link_inode(raw_pid(std::process::id()), "mnt")).is_empty()
        );
    }

    #[test]
    fn finds_processes_in_a_namespace_and_terminates_them() {
        mose_testkit::root_test!(&["unshare", "sleep"]);
        // A child in a fresh netns (unshare) stands in for a host's process.
        let mut child = std::process::Command::new("unshare")
            .args(["--net", "sleep", "30"])
            .spawn()
            .unwrap();
        let pid = raw_pid(child.id());
        let mut ino = None;
        for _ in 0..200 {
            ino = link_inode(pid, "net")
                .filter(|&n| Some(n) != link_inode(raw_pid(std::process::id()), "net"));
            if ino.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pids = pids_in_namespaces(ino, None);
        assert_eq!(pids, vec![pid]);
        let left = terminate(&pids, Duration::from_secs(2));
        let _ = child.wait();
        assert!(left.is_empty());
    }

    #[test]
    fn non_namespace_paths_have_no_inode() {
        assert_eq!(ns_inode(Path::new("/etc/hostname")), None);
        assert_eq!(ns_inode(Path::new("/nonexistent")), None);
        assert!(ns_inode(Path::new("/proc/self/ns/net")).is_some());
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert!(mounts_under(Path::new("/proc"))
            .iter()
            .any(|m| m == "/proc"));
    }
}
