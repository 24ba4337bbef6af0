//! Root integration tests: tearing the testbed down leaves no namespaces, bridges, veths, OvS
//! daemons, podman services or containers behind, whether the test ends well ([`Host::destroy`]),
//! panics (the `Drop`s), or the whole process crashes (the stale sweep by name prefix).
//!
//! Needs root and a host prepared by `testbed/setup-host.sh`.

// Test code: a failed unwrap is a failed test, and its casts are of small measured numbers.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

use mose_testbed::{sweep_stale, Host, Lan, NsInodes};

use common::*;

/// Tells the re-executed test binary to play the crashing run.
const CRASH_ROLE_ENV: &str = "MOSE_TESTBED_CRASH_CHILD";
const CRASH_PREFIX: &str = "mtb-tc-";

/// Everything a populated host runs, recorded while it runs.
struct Snapshot {
    inodes: Vec<NsInodes>,
    pids: Vec<i32>,
    containers: Vec<String>,
}

async fn two_populated_hosts(lan: &Lan) -> (Vec<Host>, Snapshot) {
    let image = counter_image().await;
    let mut hosts = Vec::new();
    let mut snap = Snapshot {
        inodes: Vec::new(),
        pids: Vec::new(),
        containers: Vec::new(),
    };
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let mut h = Host::create(name, lan, lan.host_addr(i as u8).unwrap())
            .await
            .expect("host");
        snap.containers.push(populate(&mut h, &image).await);
        snap.inodes.push(h.inodes());
        hosts.push(h);
    }
    for h in &hosts {
        let (db, vswitchd) = h.ovs().expect("ovs").pids();
        snap.pids.extend([
            db.expect("ovsdb-server pid"),
            vswitchd.expect("ovs-vswitchd pid"),
        ]);
        // podman service, conmon, the container, OvS: all of it must be gone afterwards.
        snap.pids.extend(h.processes());
    }
    assert!(
        snap.pids.len() >= 2 * 5,
        "expected OvS, podman service, conmon and container per host: {:?}",
        snap.pids
    );
    (hosts, snap)
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_leaves_nothing_behind() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    const PREFIX: &str = "mtb-td-";
    sweep_before(PREFIX).await;
    let lan = Lan::create(PREFIX).await.expect("LAN");
    let (hosts, snap) = two_populated_hosts(&lan).await;
    assert!(
        !mose_testbed::leftovers(PREFIX).is_empty(),
        "a running testbed must be visible to leftovers()"
    );
    for h in hosts {
        h.destroy().await.expect("destroy");
    }
    lan.destroy().await.expect("LAN destroy");
    assert_nothing_left(PREFIX, &snap.inodes, &snap.pids, &snap.containers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_test_is_cleaned_up_by_drop() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    const PREFIX: &str = "mtb-tp-";
    sweep_before(PREFIX).await;
    // The "test" runs in its own task and panics with the testbed up: unwinding drops the hosts
    // and the LAN, and their Drops must tear everything down.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let lan = Lan::create(PREFIX).await.expect("LAN");
        let (_hosts, snap) = two_populated_hosts(&lan).await;
        tx.send(snap).ok().expect("parent waits");
        panic!("simulated test failure with the testbed up");
    });
    let err = task.await.expect_err("the task panics");
    assert!(err.is_panic());
    let snap = rx.await.expect("snapshot sent before the panic");
    assert_nothing_left(PREFIX, &snap.inodes, &snap.pids, &snap.containers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_run_is_swept_by_prefix() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    sweep_before(CRASH_PREFIX).await;
    // A child process (this test binary again) brings the testbed up and aborts: no Drop runs.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ROLE_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn crash child");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<String> =
        tokio::task::spawn_blocking(move || stdout.lines().map_while(Result::ok).collect())
            .await
            .unwrap();
    let status = child.wait().unwrap();
    // Parse and look first, sweep second, assert last: a failing assertion must not leave the
    // crashed run's state on the machine.
    let nums: Vec<u64> = lines
        .iter()
        .find_map(|l| l.split_once("CRASHED-WITH ").map(|(_, rest)| rest))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let left_by_crash = mose_testbed::leftovers(CRASH_PREFIX);
    let pids: Vec<i32> = nums.iter().skip(6).map(|&p| p as i32).collect();
    let alive_after_crash = alive(&pids);
    let report = sweep_stale(CRASH_PREFIX).await.expect("sweep");

    assert!(!status.success(), "the child must crash");
    assert!(
        nums.len() > 6,
        "child did not report its state; its stdout: {lines:?}"
    );
    let inodes: Vec<NsInodes> = nums[..6]
        .chunks(3)
        .map(|c| NsInodes {
            net: c[0],
            mnt: c[1],
            uts: c[2],
        })
        .collect();
    assert!(
        !left_by_crash.is_empty(),
        "the crash must have left state behind"
    );
    assert!(
        !alive_after_crash.is_empty(),
        "the crashed run's daemons must still run before the sweep"
    );
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.hosts.len(), 2, "{report:?}");
    assert!(report.links.iter().any(|l| l == "mtb-tc-br"), "{report:?}");
    assert_nothing_left(CRASH_PREFIX, &inodes, &pids, &[]).await;
}

/// The crashing run of [`a_crashed_run_is_swept_by_prefix`]; does nothing when run directly.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by a_crashed_run_is_swept_by_prefix in a child process"]
async fn crash_child() {
    if std::env::var_os(CRASH_ROLE_ENV).is_none() {
        return;
    }
    let lan = Lan::create(CRASH_PREFIX).await.expect("LAN");
    let (hosts, snap) = two_populated_hosts(&lan).await;
    let mut nums: Vec<String> = snap
        .inodes
        .iter()
        .flat_map(|i| [i.net, i.mnt, i.uts])
        .map(|n| n.to_string())
        .collect();
    nums.extend(snap.pids.iter().map(i32::to_string));
    println!("CRASHED-WITH {}", nums.join(" "));
    std::mem::forget((hosts, lan));
    std::process::abort();
}
