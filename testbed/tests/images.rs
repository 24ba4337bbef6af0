//! Root integration test: the local images are reproducible and their workloads run.
//!
//! Needs root and a host prepared by `testbed/setup-host.sh` (which installs the Debian
//! packages of the memcached and iperf3 images; without them those tests fail), and
//! `MOSE_ROOT_TESTS=1` (else every test here is skipped: `mose_testkit::root_test!`).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mose_testbed::images::{self, DEBIAN, IPERF3, MEMCACHED, MEMLOAD};
use mose_testbed::{BuiltImage, Host, ImageBuilder, ImageSpec, Lan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const PREFIX: &str = "mtb-img-";
const PREFIX_DEB: &str = "mtb-imd-";
const PREFIX_MIG: &str = "mtb-imm-";
const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn images_are_reproducible_and_memload_runs() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    sweep_before(PREFIX).await;
    let builder = ImageBuilder::default();
    let first = builder.build_all().await.expect("build");
    let second = builder.build_all().await.expect("rebuild");
    let ids = |v: &[mose_testbed::BuiltImage]| v.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&first),
        ids(&second),
        "same sources must give the same image IDs"
    );

    let memload = first
        .iter()
        .find(|i| i.spec == MEMLOAD)
        .expect("memload image");
    let lan = Lan::create(PREFIX).await.expect("LAN");
    let h = Host::create("a", &lan, lan.host_addr(0).unwrap())
        .await
        .expect("host");
    h.load_image(memload).await.expect("load");
    h.podman_output(
        [
            "run",
            "-d",
            "--name",
            "memload",
            "--network",
            "none",
            &memload.reference,
            "--mib",
            "8",
            "--mib-per-sec",
            "4",
            "--report-ms",
            "100",
        ],
        Duration::from_secs(60),
    )
    .await
    .expect("run memload");
    let mut logs = String::new();
    for _ in 0..100 {
        logs = h
            .podman_output(["logs", "memload"], Duration::from_secs(20))
            .await
            .expect("logs");
        if logs.contains("dirtied_pages=") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logs.contains("memload: ready mib=8 pages=2048"), "{logs}");
    assert!(logs.contains("dirtied_pages="), "{logs}");
    h.destroy().await.expect("teardown");
    lan.destroy().await.expect("LAN teardown");
}

/// `specs` built. Their Debian packages are prerequisites like the programs the gate checks:
/// past the gate (`MOSE_ROOT_TESTS=1`) a missing one fails the test, it does not skip it.
async fn debian_images(specs: &[ImageSpec]) -> Vec<BuiltImage> {
    let missing = images::missing_packages(specs).await;
    assert!(
        missing.is_empty(),
        "Debian packages {missing:?} are not installed (run testbed/setup-host.sh)"
    );
    ImageBuilder::default().build(specs).await.expect("build")
}

fn find<'a>(built: &'a [BuiltImage], spec: &ImageSpec) -> &'a BuiltImage {
    built
        .iter()
        .find(|i| i.spec == *spec)
        .unwrap_or_else(|| panic!("{} image", spec.name))
}

/// Connect from `host` to `to`, retrying while the service starts (up to 10 s).
async fn connect(host: &Host, to: SocketAddr) -> TcpStream {
    for _ in 0..100 {
        if let Ok(s) = host.tcp_connect(to, Duration::from_secs(1)).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} cannot connect to {to}", host.full_name());
}

/// One memcached text-protocol request; returns the reply once it ends with `end`.
async fn mc(s: &mut TcpStream, request: &str, end: &str) -> String {
    s.write_all(request.as_bytes()).await.expect("send");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(end.as_bytes()) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("memcached replies within 10 s")
            .expect("read");
        assert!(n > 0, "memcached closed the connection; got {reply:?}");
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(reply).expect("text reply")
}

async fn mc_set(s: &mut TcpStream, key: &str, value: &str) {
    let req = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
    assert_eq!(mc(s, &req, "\r\n").await, "STORED\r\n", "set {key}");
}

async fn mc_get(s: &mut TcpStream, key: &str) -> String {
    mc(s, &format!("get {key}\r\n"), "END\r\n").await
}

fn mc_value(key: &str, value: &str) -> String {
    format!("VALUE {key} 0 {}\r\n{value}\r\nEND\r\n", value.len())
}

async fn runtime_of(host: &Host, container: &str) -> String {
    host.podman_output(
        ["inspect", "--format", "{{.OCIRuntime}}", container],
        Duration::from_secs(20),
    )
    .await
    .expect("podman inspect")
    .trim()
    .to_string()
}

/// Same image IDs and bytes on a rebuild; on an emulated host both images run under runc:
/// memcached answers `set`/`get` from the host's namespace, the iperf3 server serves an
/// `iperf3 -c` run from another host on the LAN.
#[tokio::test(flavor = "multi_thread")]
async fn debian_images_are_reproducible_and_serve() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    let t = Instant::now();
    let first = debian_images(DEBIAN).await;
    let build_ms = t.elapsed().as_millis();
    let t = Instant::now();
    let second = debian_images(DEBIAN).await;
    let rebuild_ms = t.elapsed().as_millis();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(
            a.id, b.id,
            "{}: same files must give the same ID",
            a.reference
        );
        assert_eq!(
            std::fs::read(&a.archive).unwrap(),
            std::fs::read(&b.archive).unwrap(),
            "{}: archive bytes",
            a.reference
        );
        let size = std::fs::metadata(&a.archive).unwrap().len();
        println!(
            "IMAGE {} {} archive {size} B (both built in {build_ms} ms, rebuilt in {rebuild_ms} ms)",
            a.reference, a.id
        );
    }
    let (memcached, iperf3) = (find(&first, &MEMCACHED), find(&first, &IPERF3));

    let (lan, [a, c]) = lan_with_hosts(PREFIX_DEB, ["a", "c"]).await;
    for img in [memcached, iperf3] {
        let t = Instant::now();
        a.load_image(img).await.expect("load");
        println!(
            "LOAD {} on an empty host: {} ms",
            img.reference,
            t.elapsed().as_millis()
        );
    }

    // memcached, in the host's network namespace; the client too.
    a.podman_output(
        [
            "run",
            "-d",
            "--name",
            "memcached",
            "--network",
            "host",
            &memcached.reference,
            "-m",
            "16",
        ],
        LONG,
    )
    .await
    .expect("podman run memcached");
    assert_eq!(runtime_of(&a, "memcached").await, "runc");
    let mut s = connect(&a, SocketAddr::from((a.addr(), MEMCACHED.tcp_ports[0]))).await;
    mc_set(&mut s, "greeting", "hello from mose").await;
    assert_eq!(
        mc_get(&mut s, "greeting").await,
        mc_value("greeting", "hello from mose")
    );
    assert_eq!(mc_get(&mut s, "absent").await, "END\r\n");
    drop(s);

    // iperf3 server on a, the client (this machine's iperf3) on host c, across the LAN.
    a.podman_output(
        [
            "run",
            "-d",
            "--name",
            "iperf3",
            "--network",
            "host",
            &iperf3.reference,
        ],
        LONG,
    )
    .await
    .expect("podman run iperf3");
    assert_eq!(runtime_of(&a, "iperf3").await, "runc");
    let port = IPERF3.tcp_ports[0].to_string();
    let server = a.addr().to_string();
    // Wait for the server's LISTEN socket: a probe connection would be a failed test to it.
    let (ah, filter) = (&a, &format!("sport = :{port}"));
    let listening = eventually_async(Duration::from_secs(10), || async move {
        ah.run("ss", ["-Hltn", filter.as_str()])
            .await
            .map(|o| !o.trim().is_empty())
            .unwrap_or(false)
    })
    .await;
    assert!(listening, "iperf3 server does not listen on {port}");
    let json = c
        .run(
            "iperf3",
            [
                "-c",
                &server,
                "-p",
                &port,
                "-t",
                "1",
                "-J",
                "--connect-timeout",
                "5000",
            ],
        )
        .await
        .expect("iperf3 -c from host c");
    let v: serde_json::Value = serde_json::from_str(&json).expect("iperf3 JSON");
    let received = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(received > 0, "iperf3 moved no data: {json}");
    let logs = a
        .podman_output(["logs", "iperf3"], Duration::from_secs(20))
        .await
        .expect("logs");
    assert!(
        logs.contains(&format!("Accepted connection from {}", c.addr())),
        "{logs}"
    );
    println!(
        "IPERF3 c -> container on a: {received} B in 1 s, {:.0} Mbit/s",
        bps / 1e6
    );

    for h in [a, c] {
        h.destroy().await.expect("host teardown");
    }
    lan.destroy().await.expect("LAN teardown");
}

/// `f` until it returns true or `limit` passes (the async twin of `common::eventually`).
async fn eventually_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stateful point of the workload: values stored in memcached on host a are still there
/// after `checkpoint --export` on a and `restore --import` on b (same service address and
/// netns path, as in `migration.rs`; no client connection is open during the freeze, so no
/// `--tcp-established`).
#[tokio::test(flavor = "multi_thread")]
async fn memcached_keeps_its_values_across_checkpoint_restore() {
    const NETNS: &str = "svc";
    const CKPT: &str = "/var/tmp/memcached-ckpt.tar.gz";
    mose_testkit::root_test!(TESTBED_TOOLS);
    let built = debian_images(&[MEMCACHED]).await;
    let img = find(&built, &MEMCACHED);
    let (lan, [a, b, m]) = lan_with_hosts(PREFIX_MIG, ["a", "b", "m"]).await;
    a.load_image(img).await.expect("load on a");
    b.load_image(img).await.expect("load on b (same ID)");

    let svc: Ipv4Addr = lan.service_addr(0).unwrap();
    let (veth_a, veth_b) = ("mtb-imm-sa", "mtb-imm-sb");
    service_netns(&a, &lan, NETNS, veth_a, svc, true).await;
    let net = format!("ns:/run/netns/{NETNS}");
    a.podman_output(
        [
            "run",
            "-d",
            "--name",
            "memcached",
            "--network",
            &net,
            &img.reference,
            "-m",
            "16",
        ],
        LONG,
    )
    .await
    .expect("podman run memcached on a");

    let to = SocketAddr::from((svc, MEMCACHED.tcp_ports[0]));
    let values: Vec<(String, String)> = (0..50)
        .map(|i| (format!("key{i}"), format!("value {i} stored on host a")))
        .collect();
    let mut s = connect(&m, to).await;
    for (k, v) in &values {
        mc_set(&mut s, k, v).await;
    }
    // memcached closes on `quit`; EOF here means its side of the socket is gone, so the
    // checkpoint sees only the LISTEN socket.
    s.write_all(b"quit\r\n").await.expect("quit");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("memcached closes after quit")
        .expect("read");
    drop(s);

    service_netns(&b, &lan, NETNS, veth_b, svc, false).await;
    let t = Instant::now();
    a.podman_output(
        ["container", "checkpoint", "--export", CKPT, "memcached"],
        LONG,
    )
    .await
    .expect("checkpoint --export on a");
    let checkpoint_ms = t.elapsed().as_millis();
    detach_service(veth_a).await;
    let bytes = tokio::fs::copy(a.outside_path(CKPT).unwrap(), b.outside_path(CKPT).unwrap())
        .await
        .expect("copy checkpoint a -> b");
    let t = Instant::now();
    b.podman_output(["container", "restore", "--import", CKPT], LONG)
        .await
        .expect("restore --import on b");
    let restore_ms = t.elapsed().as_millis();
    attach_service(&lan, veth_b).await;

    let mut s = connect(&m, to).await;
    for (k, v) in &values {
        assert_eq!(mc_get(&mut s, k).await, mc_value(k, v), "{k} after restore");
    }
    let state = b
        .podman_output(
            ["inspect", "--format", "{{.State.Status}}", "memcached"],
            Duration::from_secs(20),
        )
        .await
        .expect("inspect on b");
    assert_eq!(state.trim(), "running");
    println!(
        "MEMCACHED a->b: checkpoint {checkpoint_ms} ms ({bytes} B), restore {restore_ms} ms; \
         {} values intact",
        values.len()
    );
    drop(s);

    for h in [a, b, m] {
        h.destroy().await.expect("host teardown");
    }
    lan.destroy().await.expect("LAN teardown");
    assert!(
        eventually(Duration::from_secs(10), || mose_testbed::leftovers(
            PREFIX_MIG
        )
        .is_empty())
        .await,
        "left behind: {:?}",
        mose_testbed::leftovers(PREFIX_MIG)
    );
}
