//! Helpers shared by the testbed's root integration tests.

// Test code: a failed unwrap is a failed test, and its casts are of small measured numbers.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
#![allow(dead_code)] // each test binary uses a different subset

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mose_api::{ApiClient, MigrationRequest, TaskRecord};
use mose_protocol::messages::{Phase, PhaseStatus};
use mose_testbed::{sweep_stale, Host, Lan};

/// These tests create namespaces, bridges and containers: they need root and a host prepared by
/// `testbed/setup-host.sh`, which puts these on PATH. Each test starts with
/// `mose_testkit::root_test!(TESTBED_TOOLS)`: skipped unless `MOSE_ROOT_TESTS=1`, then a clear
/// failure instead of a confusing EPERM or "not found" later.
pub const TESTBED_TOOLS: &[&str] = &[
    "ip",
    "tc",
    "nsenter",
    "podman",
    "runc",
    "criu",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
];

/// Sweep what an earlier crashed run with this prefix may have left, failing on anything that stays.
pub async fn sweep_before(prefix: &str) {
    let r = sweep_stale(prefix).await.expect("sweep");
    assert!(
        r.is_clean(),
        "stale state of an earlier run could not be removed: {:?}",
        r.problems
    );
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
pub async fn service_netns(
    host: &Host,
    lan: &Lan,
    netns: &str,
    root_veth: &str,
    addr: Ipv4Addr,
    attach: bool,
) {
    let mac = mose_testbed::host::mac_for(addr);
    let cidr = format!("{addr}/{}", lan.prefix_len());
    let me = std::process::id().to_string();
    host.run("ip", ["netns", "add", netns])
        .await
        .expect("ip netns add");
    host.run(
        "ip",
        [
            "link", "add", root_veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ],
    )
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
        host.run("ip", &args)
            .await
            .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    }
    if attach {
        attach_service(lan, root_veth).await;
    }
}

/// Plug a service veth into the LAN (the "flow switch" of these tests).
pub async fn attach_service(lan: &Lan, root_veth: &str) {
    run(
        "ip",
        &["link", "set", root_veth, "master", lan.bridge(), "up"],
    )
    .await;
}

/// Unplug a service veth from the LAN; the bridge forgets the MACs it learnt there at once.
pub async fn detach_service(root_veth: &str) {
    run("ip", &["link", "set", root_veth, "down"]).await;
}

pub async fn run(program: &str, args: &[&str]) -> String {
    mose_command::run(program, args)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
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

/// A host as a test leaves it running: private OvS with a userspace bridge, the podman API
/// service, and a running counter container. Returns the container's ID.
pub async fn populate(host: &mut Host, image: &mose_testbed::BuiltImage) -> String {
    let ovs = host.start_ovs().await.expect("start OvS");
    let db = format!("--db={}", ovs.db_url());
    run(
        "ovs-vsctl",
        &[
            &db,
            "--timeout=20",
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ],
    )
    .await;
    let sock = host
        .start_podman_service()
        .await
        .expect("podman API service");
    assert_eq!(
        podman_ping(&sock).await,
        "OK",
        "podman API of {}",
        host.full_name()
    );
    host.load_image(image).await.expect("load image");
    let id = host
        .podman_output(
            [
                "run",
                "-d",
                "--name",
                "counter",
                "--network",
                "host",
                &image.reference,
            ],
            Duration::from_secs(60),
        )
        .await
        .expect("podman run");
    id.trim().to_string()
}

/// The counter image, built (or found up to date) from the workloads crate.
pub async fn counter_image() -> mose_testbed::BuiltImage {
    let built = mose_testbed::ImageBuilder::default()
        .build_all()
        .await
        .expect("build images");
    built
        .into_iter()
        .find(|i| i.spec == mose_testbed::images::COUNTER)
        .expect("counter image")
}

/// Everything that still uses one of the given namespaces: processes inside them and mounts
/// of them (`nsfs` bind mounts) in our mount namespace. Empty once the namespaces are gone.
pub fn namespace_users(inodes: &[mose_testbed::NsInodes]) -> Vec<String> {
    let wanted: Vec<String> = inodes
        .iter()
        .flat_map(|i| {
            [
                format!("net:[{}]", i.net),
                format!("mnt:[{}]", i.mnt),
                format!("uts:[{}]", i.uts),
            ]
        })
        .collect();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        for kind in ["net", "mnt", "uts"] {
            if let Ok(l) = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")) {
                let l = l.to_string_lossy().into_owned();
                if wanted.contains(&l) {
                    v.push(format!("process {pid} is in {l}"));
                }
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        if let Some(w) = wanted.iter().find(|w| line.contains(w.as_str())) {
            v.push(format!("mount of {w}: {line}"));
        }
    }
    v
}

/// Pids of `pids` that are still alive (zombies count as gone).
pub fn alive(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                == Some(false)
        })
        .collect()
}

/// Cgroup directories podman/runc made for container `id` that still exist.
pub fn container_cgroups(id: &str) -> Vec<String> {
    let out = std::process::Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-maxdepth",
            "3",
            "-type",
            "d",
            "-name",
            &format!("*{id}*"),
        ])
        .output()
        .expect("find");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Assert that nothing of the testbed `prefix` and the given hosts' namespaces, processes and
/// containers is left (waiting a little: the kernel frees namespaces and their veths asynchronously).
pub async fn assert_nothing_left(
    prefix: &str,
    inodes: &[mose_testbed::NsInodes],
    pids: &[i32],
    containers: &[String],
) {
    let clean = || {
        mose_testbed::leftovers(prefix).is_empty()
            && namespace_users(inodes).is_empty()
            && alive(pids).is_empty()
            && containers.iter().all(|c| container_cgroups(c).is_empty())
    };
    if !eventually(Duration::from_secs(15), clean).await {
        panic!(
            "left behind: {:?} {:?} alive pids {:?} cgroups {:?}",
            mose_testbed::leftovers(prefix),
            namespace_users(inodes),
            alive(pids),
            containers
                .iter()
                .flat_map(|c| container_cgroups(c))
                .collect::<Vec<_>>()
        );
    }
}

/// `GET /_ping` on a podman API socket: the body ("OK" when the service works).
pub async fn podman_ping(sock: &std::path::Path) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect to the podman API socket");
    s.write_all(b"GET /v4.0.0/libpod/_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        .await
        .expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("read");
    reply
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Submits `request` and returns once the task shows the source's checkpoint started
/// (`finished` false: the destination has prepared, the service is being frozen) or finished.
pub async fn submit_until_checkpoint(
    api: &ApiClient,
    request: &MigrationRequest,
    finished: bool,
) -> (String, Instant) {
    let task = api.submit(request).await.expect("submit");
    let t = Instant::now();
    wait_for_event(api, &task.id, Phase::Checkpoint, finished).await;
    (task.id, t)
}

/// Polls until the task shows `phase` started (`finished` false) or finished.
pub async fn wait_for_event(api: &ApiClient, id: &str, phase: Phase, finished: bool) -> TaskRecord {
    wait_for(api, id, Duration::from_secs(30), |r| {
        assert!(!r.status.is_finished(), "finished before {phase:?}: {r:?}");
        r.events.iter().any(|e| {
            e.phase == phase
                && match e.status {
                    PhaseStatus::Started => !finished,
                    PhaseStatus::Finished => finished,
                    PhaseStatus::Failed { .. } => false,
                }
        })
    })
    .await
}

/// Polls the task every 5 ms until `done` holds, failing after `limit`.
pub async fn wait_for(
    api: &ApiClient,
    id: &str,
    limit: Duration,
    mut done: impl FnMut(&TaskRecord) -> bool,
) -> TaskRecord {
    let t = Instant::now();
    loop {
        let now = api.migration(id).await.expect("poll");
        if done(&now) {
            return now;
        }
        assert!(t.elapsed() < limit, "waited {limit:?} in vain: {now:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until the task has finished (any outcome).
pub async fn wait_finished(api: &ApiClient, id: &str, since: Instant) -> TaskRecord {
    let limit = Duration::from_secs(120).saturating_sub(since.elapsed());
    wait_for(api, id, limit, |r| r.status.is_finished()).await
}

/// `mose-agent` and `mose-orchestrator` of the profile this test was built in, with this
/// crate's `mose-testbed` as the placement helper.
pub fn test_binaries() -> mose_testbed::fourhost::Binaries {
    // target/<profile>/deps/<this test> → target/<profile>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    mose_testbed::fourhost::Binaries::in_dir(profile_dir, env!("CARGO_BIN_EXE_mose-testbed").into())
        .expect("agent and orchestrator binaries (cargo build -p mose-agent -p mose-orchestrator)")
}

/// The `mose` CLI of the profile this test was built in.
pub fn mose_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|profile| profile.join("mose"))
        .unwrap();
    assert!(
        path.exists(),
        "{} is not built (cargo build -p mose-cli)",
        path.display()
    );
    path
}

/// A fresh LAN `prefix` (after sweeping an earlier crashed run's) with one host per name, at
/// the LAN's first addresses. Bind as `let (lan, [a, b]) = …`: the hosts drop before the LAN.
pub async fn lan_with_hosts<const N: usize>(prefix: &str, names: [&str; N]) -> (Lan, [Host; N]) {
    sweep_before(prefix).await;
    let lan = Lan::create(prefix).await.expect("LAN");
    let mut hosts = Vec::with_capacity(N);
    for (i, name) in names.into_iter().enumerate() {
        let addr = lan.host_addr(i as u8).unwrap();
        hosts.push(Host::create(name, &lan, addr).await.expect(name));
    }
    match hosts.try_into() {
        Ok(hosts) => (lan, hosts),
        Err(_) => unreachable!("one host per name"),
    }
}

/// A testbed (`prefix`, API link `10.98.<api_net>.0/30`, optionally with the second mobile)
/// with `image` built and loaded on edge1 only, so a migration to edge2 must move it. Keep the
/// directory for as long as the testbed: it holds its state and logs.
pub async fn up_with_image_on_edge1(
    prefix: &str,
    api_net: u8,
    second_mobile: bool,
    image: &mose_testbed::images::ImageSpec,
) -> (mose_testbed::fourhost::FourHost, tempfile::TempDir) {
    use mose_testbed::fourhost::{Config, FourHost, EDGE1};
    sweep_before(prefix).await;
    let out = tempfile::tempdir().unwrap();
    let cfg = Config {
        prefix: prefix.into(),
        binaries: test_binaries(),
        out_dir: out.path().to_path_buf(),
        api_net,
        lease_ms: 1000,
        second_mobile,
    };
    let (tb, _) = FourHost::up(cfg).await.expect("testbed up");
    let built = mose_testbed::images::ImageBuilder::default()
        .build(std::slice::from_ref(image))
        .await
        .unwrap_or_else(|e| panic!("build the {} image: {e}", image.name))
        .remove(0);
    tb.host(EDGE1)
        .unwrap()
        .load_image(&built)
        .await
        .unwrap_or_else(|e| panic!("load {} on edge1: {e}", image.name));
    (tb, out)
}

/// Another container named `name` running on `host` (the counter image, no network): a
/// restore of a service of that name there refuses to replace it, so the migration rolls back.
pub async fn squat(tb: &mose_testbed::fourhost::FourHost, host: &str, name: &str) {
    tb.host(host)
        .unwrap()
        .podman_output(
            [
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "none",
                mose_testbed::images::COUNTER.reference,
            ],
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("a squatter named {name} on {host}: {e}"));
}

/// Removes the container [`squat`] started.
pub async fn unsquat(tb: &mose_testbed::fourhost::FourHost, host: &str, name: &str) {
    let _ = tb
        .host(host)
        .unwrap()
        .podman_output(["rm", "--force", name], Duration::from_secs(60))
        .await;
}
