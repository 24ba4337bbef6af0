//! Root integration test: link shaping per host gives the rate (and, where the kernel has netem,
//! the delay) PAM is told about.
//!
//! Needs root and a host prepared by `testbed/setup-host.sh`.

mod common;

use mose_protocol::units::BitsPerSec;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mose_testbed::LinkShape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const PREFIX: &str = "mtb-lan-";
const RATE: BitsPerSec = BitsPerSec(20_000_000);
const DELAY: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread")]
async fn shaped_link_has_the_configured_rate_and_delay() {
    mose_testkit::root_test!(&["ip", "tc", "nsenter"]);
    let (lan, [a, b]) = lan_with_hosts(PREFIX, ["a", "b"]).await;
    // Delay needs netem; kernels without it (this machine's) must say so clearly and leave the
    // link unshaped, and then the rate alone is checked.
    let delay = match lan.shape(&b, LinkShape::rate(RATE).with_delay(DELAY)).await {
        Ok(()) => DELAY,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("CONFIG_NET_SCH_NETEM"), "{msg}");
            eprintln!("no netem here ({msg}); checking the rate alone");
            lan.shape(&b, LinkShape::rate(RATE))
                .await
                .expect("shape b (rate only)");
            Duration::ZERO
        }
    };

    let at = SocketAddr::from((b.addr(), 5001));
    let listener = b.tcp_listen(at).await.expect("listen on b");
    // b: answer one byte per byte for the RTT probe, then swallow the bulk transfer.
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut byte = [0u8; 1];
        for _ in 0..5 {
            s.read_exact(&mut byte).await?;
            s.write_all(&byte).await?;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n;
        }
        s.write_all(b"k").await?;
        std::io::Result::Ok(total)
    });

    let mut c = a
        .tcp_connect(at, Duration::from_secs(5))
        .await
        .expect("connect a -> b");
    let mut rtts = Vec::new();
    let mut byte = [7u8; 1];
    for _ in 0..5 {
        let t = Instant::now();
        c.write_all(&byte).await.unwrap();
        c.read_exact(&mut byte).await.unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let rtt = rtts[2];

    const BULK: usize = 4 * 1024 * 1024;
    let t = Instant::now();
    c.write_all(&vec![1u8; BULK]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    c.read_exact(&mut ack).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let received = server.await.unwrap().expect("server");
    assert_eq!(received, BULK);
    let rate = BULK as f64 * 8.0 / secs;
    println!("LAN shaping: configured {RATE}, {delay:?} one way on b; measured {rate:.0} bit/s, median RTT {rtt:?}");

    // The delay sits on both directions of b's link: RTT a<->b = 2 x DELAY (+ a little).
    assert!(
        rtt >= 2 * delay && rtt < 2 * delay + Duration::from_millis(15),
        "RTT {rtt:?}"
    );
    let ratio = rate / RATE.0 as f64;
    assert!(
        (0.6..=1.1).contains(&ratio),
        "measured {rate:.0} bit/s vs {RATE} configured"
    );

    lan.unshape(&b).await.expect("unshape");
    for h in [a, b] {
        h.destroy().await.expect("host teardown");
    }
    lan.destroy().await.expect("LAN teardown");
}
