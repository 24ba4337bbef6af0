//! Test hosts for root integration tests: network namespaces created by the test, joined by a
//! Linux bridge, and removed again when the test ends — also when it fails (Drop) or when an
//! earlier run crashed (a sweep by name at creation).
//!
//! Processes inside a namespace are separate processes (`ip netns exec`): a namespace belongs to
//! a thread, and libraries such as Zenoh keep process-wide thread pools, so one process cannot
//! safely speak from two namespaces. To run library code there, a test binary re-executes itself
//! with [`spawn_self`], and an `#[ignore]`d entry test picks its role up with [`child_role`].
//!
//! Every root integration test of the workspace starts with [`root_test!`] (see [`gate`]): it
//! skips unless `MOSE_ROOT_TESTS=1`, and then fails on a missing prerequisite.

use std::process::{Child, Command, Output, Stdio};

pub mod domain;
pub mod gate;
pub use domain::TestDomain;
pub use gate::{is_root, privileged, Gate, ROOT_TESTS_ENV};

/// Environment variable that tells a re-executed test binary which role to play.
pub const ROLE_ENV: &str = "MOSE_TESTKIT_ROLE";

/// How long one setup command (`ip link`, `ip netns`) may take before it is killed.
const RUN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a command (blocking, with a deadline), failing with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    mose_command::Cmd::new(program)
        .args(args)
        .deadline(RUN_DEADLINE)
        .output_blocking()
        .map_err(|e| e.to_string())
}

/// A bridge in the root namespace with test hosts (namespaces) attached by veths.
///
/// Addresses: `10.{subnet}.0.254/24` on the bridge, `10.{subnet}.0.{n}/24` for host n (from 1).
pub struct TestNet {
    tag: String,
    subnet: u8,
    hosts: Vec<String>,
}

impl TestNet {
    /// Creates the bridge `mk{tag}` (tag ≤ 8 chars, unique per test) after sweeping leftovers.
    /// Needs root: call [`root_test!`] at the top of the test first, so that a run without
    /// root skips (or fails) there rather than here.
    pub fn new(tag: &str, subnet: u8) -> Result<Self, String> {
        assert!(
            is_root(),
            "TestNet needs root; start the test with mose_testkit::root_test!()"
        );
        assert!(
            tag.len() <= 8 && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "tag must be ≤ 8 alphanumerics (interface names are ≤ 15 chars)"
        );
        let net = Self {
            tag: tag.to_string(),
            subnet,
            hosts: Vec::new(),
        };
        net.sweep();
        let br = net.bridge();
        run("ip", &["link", "add", &br, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", net.bridge_ip()),
                "dev",
                &br,
            ],
        )?;
        run("ip", &["link", "set", &br, "up"])?;
        Ok(net)
    }

    /// The name of the test network's bridge.
    pub fn bridge(&self) -> String {
        format!("mk{}", self.tag)
    }

    /// The root namespace's address on the bridge (reachable from every host).
    pub fn bridge_ip(&self) -> String {
        format!("10.{}.0.254", self.subnet)
    }

    /// Namespace name of host `n`.
    pub fn ns(&self, n: usize) -> String {
        format!("mk-{}-{n}", self.tag)
    }

    /// Address of host `n`.
    pub fn ip(&self, n: usize) -> String {
        format!("10.{}.0.{n}", self.subnet)
    }

    /// Host-side interface name of host `n` (its link to the LAN).
    pub fn link(&self, n: usize) -> String {
        format!("mk{}h{n}", self.tag)
    }

    /// Adds host `n` (1-based): a namespace with loopback up and `eth0` on the bridge.
    pub fn add_host(&mut self, n: usize) -> Result<String, String> {
        let ns = self.ns(n);
        let outer = self.link(n);
        run("ip", &["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &outer, "master", &self.bridge(), "up"],
        )?;
        let inside = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.as_str()];
            full.extend_from_slice(args);
            run("ip", &full)
        };
        inside(&["ip", "link", "set", "lo", "up"])?;
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.ip(n)),
            "dev",
            "eth0",
        ])?;
        inside(&["ip", "link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    /// Cuts host `n` off the LAN without telling anyone (like a radio link dying).
    pub fn cut(&self, n: usize) -> Result<(), String> {
        run("ip", &["link", "del", &self.link(n)]).map(|_| ())
    }

    /// A command that runs `program` inside host `n`.
    pub fn command(&self, n: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(n), program]);
        cmd
    }

    /// Removes every namespace and link of this tag, including a crashed run's. Host links are
    /// deleted by name too: a veth can outlive its namespace for minutes while the kernel still
    /// holds sockets of that namespace, and then blocks the next run's `ip link add`.
    fn sweep(&self) {
        let _ = run("ip", &["link", "del", &self.bridge()]);
        if let Ok(out) = run("ip", &["-o", "link", "show"]) {
            let prefix = format!("{}h", self.bridge());
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // "12: mkdisch1@if11: <...>"
                let name = line.split(": ").nth(1).and_then(|n| n.split('@').next());
                if let Some(name) = name.filter(|n| n.starts_with(&prefix)) {
                    let _ = run("ip", &["link", "del", name]);
                }
            }
        }
        if let Ok(out) = run("ip", &["netns", "list"]) {
            let prefix = format!("mk-{}-", self.tag);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line.split_whitespace().next() {
                    if name.starts_with(&prefix) {
                        let _ = run("ip", &["netns", "del", name]);
                    }
                }
            }
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of each veth, and with it the peer.
        for ns in &self.hosts {
            let _ = run("ip", &["netns", "del", ns]);
        }
        self.sweep();
    }
}

/// A child process that is killed when dropped, so a failing test leaves no process behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Re-executes the current test binary inside host `n` as `role`, running the ignored entry test
/// `entry` (which calls [`child_role`]). `env` passes the role's parameters.
pub fn spawn_self(
    net: &TestNet,
    n: usize,
    entry: &str,
    role: &str,
    env: &[(&str, String)],
) -> ChildGuard {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = net.command(n, exe.to_str().expect("utf-8 test binary path"));
    cmd.args([
        entry,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_ENV, role)
    .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().expect("spawn child test process"))
}

/// The role this process was re-executed for, if any.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}
