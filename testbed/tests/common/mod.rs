//! Helpers shared by the testbed's root integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mose_testbed::{sweep_stale, Host, Lan};

/// These tests create namespaces, bridges and containers: they need root and a host prepared by
/// `testbed/setup-host.sh`. Fail with a clear message instead of a confusing EPERM later.
pub fn require_root() {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    assert_eq!(euid, Some(0), "this integration test needs root (namespaces, bridges, podman)");
}

/// Sweep what an earlier crashed run with this prefix may have left, failing on anything that stays.
pub async fn sweep_before(prefix: &str) {
    let r = sweep_stale(prefix).await.expect("sweep");
    assert!(r.is_clean(), "stale state of an earlier run could not be removed: {:?}", r.problems);
    if !r.hosts.is_empty() || !r.links.is_empty() {
        eprintln!("swept leftovers of an earlier run: {r:?}");
    }
}

/// Give a container on `host` its own network namespace `/run/netns/<netns>` (inside the host's
/// private /run, so the same path names a different namespace on every host: what a checkpoint
/// that references it needs) with the service address `addr` and a MAC derived from it, wired
/// straight onto the LAN bridge through the root-side veth `root_veth`.
///
/// The root-side end is left DOWN and unattached when `attach` is false: the destination of a
/// migration prepares the namespace before the freeze but must not answer for the address yet
/// (its kernel would reset the client's connection). In the product the overlay's OvS flows do
/// this switching; this test wiring keeps the testbed tests independent of it.
pub async fn service_netns(host: &Host, lan: &Lan, netns: &str, root_veth: &str, addr: Ipv4Addr, attach: bool) {
    let mac = mose_testbed::host::mac_for(addr);
    let cidr = format!("{addr}/{}", lan.prefix_len());
    let me = std::process::id().to_string();
    host.run("ip", ["netns", "add", netns]).await.expect("ip netns add");
    host.run("ip", ["link", "add", root_veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        .await
        .expect("veth for the service netns");
    for args in [
        vec!["-n", netns, "link", "set", "lo", "up"],
        vec!["-n", netns, "link", "set", "eth0", "address", &mac],
        vec!["-n", netns, "addr", "add", &cidr, "dev", "eth0"],
        vec!["-n", netns, "link", "set", "eth0", "up"],
        // Into the root namespace (ours), where the LAN bridge is.
        vec!["link", "set", root_veth, "netns", &me],
    ] {
        host.run("ip", &args).await.unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    }
    if attach {
        attach_service(lan, root_veth).await;
    }
}

/// Plug a service veth into the LAN (the "flow switch" of these tests).
pub async fn attach_service(lan: &Lan, root_veth: &str) {
    run("ip", &["link", "set", root_veth, "master", lan.bridge(), "up"]).await;
}

/// Unplug a service veth from the LAN; the bridge forgets the MACs it learnt there at once.
pub async fn detach_service(root_veth: &str) {
    run("ip", &["link", "set", root_veth, "down"]).await;
}

pub async fn run(program: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program).args(args).output().await.expect("spawn");
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `f` until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Interface names of the root namespace starting with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with(prefix)).collect())
        .unwrap_or_default()
}
