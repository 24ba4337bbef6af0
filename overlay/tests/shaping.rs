//! A shaped migration path measures within 10 % of the configured rate (our own TCP sender, so
//! the test needs no iperf3). Run:
//! `sudo -E MOSE_ROOT_TESTS=1 cargo test -p mose-overlay --test shaping -- --nocapture`

// Test code: a failed unwrap is a failed test, and its casts are of small measured numbers.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{mac_for, Lab};
use mose_overlay::netns::{self, EndpointSpec, NETNS_DIR};
use mose_overlay::shaping::{self, Shape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const X_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const Y_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// Measured window: skip the first second (slow start, the initial token bucket burst).
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(3);

/// Send as fast as possible from `x` to `y_addr` for warm-up + window; return the goodput the
/// receiver saw during the window, in bit/s.
async fn measure(x: &Path, y: &Path, port: u16) -> f64 {
    let at = SocketAddr::from((Y_IP, port));
    let l = netns::in_netns(y, move || {
        let l = std::net::TcpListener::bind(at)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .await
    .unwrap();
    let l = tokio::net::TcpListener::from_std(l).unwrap();
    let receiver = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut start: Option<(Instant, u64)> = None;
        let mut total = 0u64;
        let t0 = Instant::now();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return 0.0;
            }
            total += n as u64;
            let t = t0.elapsed();
            if start.is_none() && t >= WARMUP {
                start = Some((Instant::now(), total));
            }
            if let Some((ts, b0)) = start {
                let dt = ts.elapsed();
                if dt >= WINDOW {
                    return (total - b0) as f64 * 8.0 / dt.as_secs_f64();
                }
            }
        }
    });
    let s = netns::in_netns(x, move || {
        let s = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(5))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .await
    .unwrap();
    let mut s = tokio::net::TcpStream::from_std(s).unwrap();
    let chunk = vec![0x5au8; 1 << 16];
    let deadline = Instant::now() + WARMUP + WINDOW + Duration::from_secs(2);
    while !receiver.is_finished() && Instant::now() < deadline {
        // The receiver closing its end is how the sender learns to stop.
        if tokio::time::timeout(Duration::from_millis(200), s.write_all(&chunk))
            .await
            .is_ok_and(|r| r.is_err())
        {
            break;
        }
    }
    drop(s);
    receiver.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaped_link_meets_configured_rate() {
    mose_testkit::root_test!(common::OVS_TOOLS);
    let mut lab = Lab::new("mov-sh-");
    let x = lab.plain("x").await;
    let y = netns::create_endpoint(
        Path::new(NETNS_DIR),
        Some(&x),
        &EndpointSpec::new(lab.name("y"), "to-y", Y_IP, 24, mac_for(Y_IP)),
    )
    .await
    .unwrap();
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(["-n", &lab.name("x")])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["addr", "add", &format!("{X_IP}/24"), "dev", "to-y"]);

    let unshaped = measure(&x, &y.netns_path, 5000).await;
    println!("unshaped: {:.1} Mbit/s", unshaped / 1e6);
    for (i, rate) in [20_000_000u64, 80_000_000].into_iter().enumerate() {
        assert!(
            unshaped > rate as f64 * 1.5,
            "link too slow to test {rate} bit/s: {unshaped}"
        );
        let shape = Shape {
            dev: "to-y".into(),
            rate_bits_per_s: rate,
            dst: Some(Y_IP),
        };
        shaping::shape(Some(&x), &shape).await.unwrap();
        // Shaping twice is harmless (a retried step).
        shaping::shape(Some(&x), &shape).await.unwrap();
        let got = measure(&x, &y.netns_path, 5001 + i as u16).await;
        let err = (got - rate as f64) / rate as f64 * 100.0;
        println!(
            "shaped to {} Mbit/s: measured {:.2} Mbit/s ({err:+.1} %)",
            rate / 1_000_000,
            got / 1e6
        );
        assert!(
            err.abs() <= 10.0,
            "measured {got} bit/s for {rate} bit/s ({err:+.1} %)"
        );
    }
    // Traffic to other destinations is not classified, so it keeps the full rate.
    let other = Shape {
        dev: "to-y".into(),
        rate_bits_per_s: 20_000_000,
        dst: Some(Ipv4Addr::new(10, 78, 0, 3)),
    };
    shaping::shape(Some(&x), &other).await.unwrap();
    let bypass = measure(&x, &y.netns_path, 5003).await;
    println!(
        "shaped for another destination: {:.1} Mbit/s to ours",
        bypass / 1e6
    );
    assert!(
        bypass > 40_000_000.0,
        "unclassified traffic was shaped: {bypass}"
    );
    shaping::unshape(Some(&x), "to-y").await.unwrap();
    shaping::unshape(Some(&x), "to-y").await.unwrap();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.name("x"),
            "tc",
            "qdisc",
            "show",
            "dev",
            "to-y",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(!out.contains("tbf") && !out.contains("htb"), "{out}");
}
