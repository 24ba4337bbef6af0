//! A checkpoint of a 100 MiB workload must not raise the agent's memory by more than a few MiB:
//! the archive streams from podman's response to the writer. Alone in its own test binary so
//! no other test's allocations blur the peak-RSS measurement.

mod runtime_common;

use std::time::Duration;

use mose_agent::runtime::{CheckpointOptions, RestoreOptions};
use runtime_common::*;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_and_restore_of_100_mib_stream() {
    mose_testkit::root_test!(RUNTIME_TOOLS);
    let img = image("memload").await;
    let (lan, mut hs) = hosts("mtb-rts", 1, &img).await;
    let (host, podman) = hs.pop().unwrap();
    let cmd = Some(vec![
        "--mib".into(),
        "100".into(),
        "--pages-per-sec".into(),
        "0".into(),
    ]);
    podman.create(&spec("memload", &img, cmd)).await.unwrap();
    podman.start("memload").await.unwrap();
    // Wait until the workload has filled its memory.
    let t0 = std::time::Instant::now();
    loop {
        let st = podman.stats("memload").await.unwrap();
        if st.mem_usage_bytes >= 100 * MIB {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "memload did not fill 100 MiB: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memload.tar");
    let before = rss_kib();
    reset_peak_rss();
    let mut f = tokio::fs::File::create(&path).await.unwrap();
    let ck = podman
        .checkpoint("memload", &CheckpointOptions::default(), &mut f)
        .await
        .unwrap();
    drop(f);
    let peak = peak_rss_kib();
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "checkpoint of 100 MiB: archive {:.1} MiB, podman {} ms, transfer {} ms, CRIU frozen {:?} us; \
         RSS before {} KiB, peak during {} KiB (+{growth_mib:.1} MiB)",
        ck.archive_bytes as f64 / MIB as f64,
        ck.podman_time.as_millis(),
        ck.transfer_time.as_millis(),
        ck.criu.map(|c| c.frozen_time_us),
        before,
        peak
    );
    assert!(
        ck.archive_bytes >= 100 * MIB,
        "the archive holds the memory: {}",
        ck.archive_bytes
    );
    assert!(
        growth_mib < 8.0,
        "checkpoint raised RSS by {growth_mib:.1} MiB: not streamed"
    );

    // The same for the upload: restore from the file after removing the original.
    assert!(podman.remove("memload").await.unwrap());
    let before = rss_kib();
    reset_peak_rss();
    let file = tokio::fs::File::open(&path).await.unwrap();
    let rs = podman
        .restore(&RestoreOptions::default(), file)
        .await
        .unwrap();
    let growth_mib = peak_rss_kib().saturating_sub(before) as f64 / 1024.0;
    println!(
        "restore of 100 MiB: {} ms (CRIU {:?} us), RSS +{growth_mib:.1} MiB",
        rs.elapsed.as_millis(),
        rs.criu.map(|c| c.restore_time_us)
    );
    assert!(
        growth_mib < 8.0,
        "restore raised RSS by {growth_mib:.1} MiB: not streamed"
    );
    assert!(podman.inspect("memload").await.unwrap().state.running);

    host.destroy().await.unwrap();
    lan.destroy().await.unwrap();
}
