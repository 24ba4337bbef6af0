//! Root integration test: the local images are reproducible and their workloads run.
//!
//! Needs root and a host prepared by `testbed/setup-host.sh`.

mod common;

use std::time::Duration;

use mose_testbed::images::MEMLOAD;
use mose_testbed::{Host, ImageBuilder, Lan};

use common::*;

const PREFIX: &str = "mtb-img-";

#[tokio::test(flavor = "multi_thread")]
async fn images_are_reproducible_and_memload_runs() {
    require_root();
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
