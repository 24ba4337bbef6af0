//! Shared by the runtime driver's integration tests: prerequisites, images, emulated hosts
//! with a podman API service, and talking to a container inside its network namespace.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use mose_agent::runtime::{CreateSpec, HostLimits, Netns, Podman};
use mose_testbed::{BuiltImage, Host, ImageBuilder, Lan};
use tokio::sync::OnceCell;

/// The service network namespace every test host gets (inside the host: `/run/netns/svc`).
pub const SVC_NETNS: &str = "/run/netns/svc";

/// What the real tests need besides root: each starts with
/// `mose_testkit::root_test!(RUNTIME_TOOLS)` (skipped unless `MOSE_ROOT_TESTS=1`, then failing
/// when root or one of these is missing).
pub const RUNTIME_TOOLS: &[&str] = &["podman", "runc", "criu", "ip", "nsenter"];

static IMAGES: OnceCell<Vec<BuiltImage>> = OnceCell::const_new();

/// The testbed's workload images (built once per test binary; a nested static cargo build).
pub async fn images() -> &'static [BuiltImage] {
    IMAGES
        .get_or_init(|| async {
            ImageBuilder::default()
                .build_all()
                .await
                .expect("build workload images")
        })
        .await
}

pub async fn image(name: &str) -> BuiltImage {
    images()
        .await
        .iter()
        .find(|i| i.spec.name == name)
        .cloned()
        .expect("image exists")
}

/// A LAN and `n` emulated hosts, each with a podman API service, `image` loaded through our
/// client and a service netns at [`SVC_NETNS`]. A crashed earlier run of the same prefix is
/// swept first.
pub async fn hosts(prefix: &str, n: u8, image: &BuiltImage) -> (Lan, Vec<(Host, Podman)>) {
    mose_testbed::sweep_stale(prefix)
        .await
        .expect("sweep stale testbed objects");
    let lan = Lan::create(prefix).await.expect("create LAN");
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("h{i}");
        let mut host = Host::create(&name, &lan, lan.host_addr(i).unwrap())
            .await
            .expect("create host");
        let sock = host.start_podman_service().await.expect("podman service");
        let podman = Podman::new(sock).unwrap();
        let file = tokio::fs::File::open(&image.archive)
            .await
            .expect("open image archive");
        let names = podman
            .image_load(file, Duration::from_secs(120))
            .await
            .expect("image load");
        assert!(
            names.iter().any(|n| n.contains(&image.reference)),
            "loaded {names:?}"
        );
        assert!(podman.image_exists(&image.reference).await.unwrap());
        host.run("ip", ["netns", "add", "svc"])
            .await
            .expect("netns add");
        host.run("ip", ["-n", "svc", "link", "set", "lo", "up"])
            .await
            .expect("lo up");
        out.push((host, podman));
    }
    (lan, out)
}

/// A container of `image` in the service netns with the ulimits this machine needs.
pub fn spec(name: &str, image: &BuiltImage, command: Option<Vec<String>>) -> CreateSpec {
    CreateSpec {
        name: name.into(),
        image: image.reference.clone(),
        command,
        netns: Netns::Path(PathBuf::from(SVC_NETNS)),
        ulimits: HostLimits::detect()
            .expect("detect limits")
            .container_ulimits(),
        ..CreateSpec::default()
    }
}

/// Connect to `addr` from inside the network namespace of process `pid` (a container's init).
/// The socket keeps that namespace after the helper thread ends.
pub fn connect_in_netns_of(pid: i64, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let ns = format!("/proc/{pid}/ns/net");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns)?;
        // SAFETY: setns on this (short-lived) thread only; the fd is valid for the call.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(s)
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

/// Send `n` lines to the counter service of container `name` on `podman` (one connection),
/// return the replies.
pub async fn count(podman: &Podman, name: &str, n: usize) -> Vec<u64> {
    let pid = podman.inspect(name).await.expect("inspect").state.pid;
    assert!(pid > 0, "{name} is not running");
    tokio::task::spawn_blocking(move || {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        // The service may still be starting: retry the connection for a moment.
        let mut s = None;
        for _ in 0..100 {
            match connect_in_netns_of(pid, addr) {
                Ok(c) => {
                    s = Some(c);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let s = s.expect("connect to the counter service");
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        (0..n)
            .map(|_| {
                w.write_all(b"x\n").unwrap();
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                line.trim().parse().unwrap()
            })
            .collect()
    })
    .await
    .unwrap()
}

/// VmHWM (peak RSS) of this process in KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Reset VmHWM to the current RSS.
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}
