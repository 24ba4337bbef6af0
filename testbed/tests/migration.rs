//! Root integration test: a stateful TCP counter migrates between two emulated hosts with
//! `podman container checkpoint --export --tcp-established` / `restore --import`, while a client
//! on a third host keeps its TCP connection open. Proves: the count continues (state preserved)
//! and the client's connection is the same one (no reconnect, no reset).
//!
//! Needs root and a host prepared by `testbed/setup-host.sh`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mose_testbed::images::{ImageBuilder, COUNTER};
use mose_testbed::{Host, Lan};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::*;

const PREFIX: &str = "mtb-mig-";
const SVC_NETNS: &str = "svc";
const PORT: u16 = 7000;
const CKPT_INSIDE: &str = "/var/tmp/counter-ckpt.tar.gz";

/// Send one line, return the count the service answers with.
async fn ask(r: &mut BufReader<TcpStream>) -> u64 {
    r.get_mut().write_all(b"tick\n").await.expect("send");
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .expect("reply within 10 s")
        .expect("read");
    assert!(n > 0, "service closed the connection");
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a count: {line:?}"))
}

fn ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}

#[tokio::test(flavor = "multi_thread")]
async fn counter_migrates_between_hosts_with_state_and_connection() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    sweep_before(PREFIX).await;
    let images = ImageBuilder::default();
    let t = Instant::now();
    let built = images.build_all().await.expect("build images");
    let counter = built
        .iter()
        .find(|i| i.spec == COUNTER)
        .expect("counter image")
        .clone();
    eprintln!("images built in {} ms: {}", ms(t), counter.id);

    let lan = Lan::create(PREFIX).await.expect("LAN");
    let t = Instant::now();
    let mut a = Host::create("a", &lan, lan.host_addr(0).unwrap())
        .await
        .expect("host a");
    let mut b = Host::create("b", &lan, lan.host_addr(1).unwrap())
        .await
        .expect("host b");
    let m = Host::create("m", &lan, lan.host_addr(2).unwrap())
        .await
        .expect("mobile client host");
    eprintln!("3 hosts up in {} ms", ms(t));
    // Each host runs its own OvS and podman API service, like a real edge host (not used by the
    // plain-CLI migration below, but they must coexist with it).
    let t = Instant::now();
    a.start_ovs().await.expect("ovs a");
    b.start_ovs().await.expect("ovs b");
    a.start_podman_service().await.expect("podman service a");
    b.start_podman_service().await.expect("podman service b");
    eprintln!("OvS + podman API services of 2 hosts up in {} ms", ms(t));

    let t = Instant::now();
    a.load_image(&counter).await.expect("load image on a");
    b.load_image(&counter).await.expect("load image on b");
    eprintln!(
        "image loaded on 2 hosts in {} ms (same ID {} on both)",
        ms(t),
        counter.id
    );

    let svc = lan.service_addr(0).unwrap();
    service_netns(&a, &lan, SVC_NETNS, "mtb-mig-sa", svc, true).await;
    let net = format!("ns:/run/netns/{SVC_NETNS}");
    let id = a
        .podman_output(
            [
                "run",
                "-d",
                "--name",
                "counter",
                "--network",
                &net,
                &counter.reference,
            ],
            Duration::from_secs(60),
        )
        .await
        .expect("podman run counter on a");
    eprintln!("counter container {} on host a at {svc}:{PORT}", id.trim());

    // The client: a third host, one TCP connection for the whole test.
    let to = SocketAddr::from((svc, PORT));
    let mut conn = None;
    // The service needs a moment to listen after `podman run` returns.
    for _ in 0..100 {
        match m.tcp_connect(to, Duration::from_secs(1)).await {
            Ok(s) => {
                conn = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let stream = conn.expect("client connects to the counter service");
    let local = stream.local_addr().unwrap();
    let mut r = BufReader::new(stream);
    for want in 1..=5 {
        assert_eq!(ask(&mut r).await, want);
    }
    // From here on the client keeps asking every 10 ms through the whole migration and records
    // when each reply came: the longest gap is the downtime the client sees (docs/testbed.md,
    // "KPIs").
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut replies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                replies.push((ask(&mut r).await, Instant::now()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (r, replies)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Destination prepares before the freeze: same address and MAC, not yet on the LAN.
    let t = Instant::now();
    service_netns(&b, &lan, SVC_NETNS, "mtb-mig-sb", svc, false).await;
    let prepare_ms = ms(t);

    let t = Instant::now();
    a.podman_output(
        [
            "container",
            "checkpoint",
            "--tcp-established",
            "--export",
            CKPT_INSIDE,
            "counter",
        ],
        Duration::from_secs(120),
    )
    .await
    .expect("checkpoint --export on a");
    let checkpoint_ms = ms(t);
    // The source stops answering for the address at once: its kernel would reset the connection.
    detach_service("mtb-mig-sa").await;

    let t = Instant::now();
    let from = a.outside_path(CKPT_INSIDE).unwrap();
    let dest = b.outside_path(CKPT_INSIDE).unwrap();
    let image_bytes = tokio::fs::copy(&from, &dest)
        .await
        .expect("copy checkpoint a -> b");
    let transfer_ms = ms(t);

    let t = Instant::now();
    b.podman_output(
        [
            "container",
            "restore",
            "--tcp-established",
            "--import",
            CKPT_INSIDE,
        ],
        Duration::from_secs(120),
    )
    .await
    .expect("restore --import on b");
    let restore_ms = ms(t);
    let t = Instant::now();
    attach_service(&lan, "mtb-mig-sb").await;
    let switch_ms = ms(t);

    // Let the client see the service answer again for a while, then check every reply.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (r, replies) = client.await.expect("client task");
    let counts: Vec<u64> = replies.iter().map(|&(c, _)| c).collect();
    let want: Vec<u64> = (6..6 + counts.len() as u64).collect();
    assert_eq!(
        counts, want,
        "count must continue without a jump or reset on the same connection"
    );
    assert!(counts.len() > 20, "too few replies: {counts:?}");
    // Same socket, same local port: no reconnect happened.
    assert_eq!(r.get_ref().local_addr().unwrap(), local);
    let client_downtime_ms = replies
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1).as_millis())
        .max()
        .unwrap_or(0);
    let state = b
        .podman_output(
            ["inspect", "--format", "{{.State.Status}}", "counter"],
            Duration::from_secs(20),
        )
        .await
        .expect("inspect on b");
    assert_eq!(state.trim(), "running");
    let on_a = a
        .podman_output(
            ["ps", "-a", "--format", "{{.Names}} {{.Status}}"],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    eprintln!("after migration, containers on a: {:?}", on_a.trim());
    println!(
        "MIGRATION counter a->b: prepare {prepare_ms} ms, checkpoint {checkpoint_ms} ms, transfer {transfer_ms} ms \
         ({image_bytes} B), restore {restore_ms} ms, switch {switch_ms} ms; client-observed downtime {client_downtime_ms} ms; \
         count continued 6..={} on the same connection",
        5 + counts.len()
    );

    drop(r);
    // Orderly teardown; on a panic above, the Drops of the hosts and the LAN do the same.
    let t = Instant::now();
    for h in [a, b, m] {
        h.destroy().await.expect("host teardown");
    }
    lan.destroy().await.expect("LAN teardown");
    eprintln!("teardown in {} ms", ms(t));
    assert!(
        eventually(Duration::from_secs(10), || mose_testbed::leftovers(PREFIX)
            .is_empty())
        .await,
        "left behind: {:?}",
        mose_testbed::leftovers(PREFIX)
    );
}
