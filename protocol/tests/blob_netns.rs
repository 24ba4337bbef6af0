//! Chunked blob transfer across network namespaces (root): a 64 MiB image served from inside an
//! emulated host reaches the root namespace over veth + bridge with its digest verified; the
//! same image corrupted on the source's disk after its manifest was made is refused.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::pseudo_random;
use mose_protocol::blob::{self, BlobError, BlobServer, FetchOptions};
use mose_protocol::domain::MemberRole;
use mose_protocol::transport::ZenohOptions;
use mose_protocol::KeySpace;
use mose_testkit::{child_role, spawn_self, TestDomain, TestNet};
use sha2::{Digest, Sha256};

const SIZE: usize = 64 << 20;
const SEED: u64 = 64;
/// Served by edge `a` (the child) to edge `b` (this process).
const KEY: &str = "mose/agents/a/images/b/netns/ckpt";
const CORRUPT_AT: u64 = 10 << 20;

/// Child entry: serves the image from inside host 1; role "corrupt" flips a byte after the
/// manifest was computed, as a disk or a buggy writer would.
#[test]
#[ignore = "entry point of a child process of the namespace blob tests"]
fn blob_server_child() {
    let Some(role) = child_role() else { return };
    let connect = std::env::var("MOSE_TEST_CONNECT").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, pseudo_random(SIZE, SEED)).unwrap();
        let tls_dir = std::env::var("MOSE_TLS_DIR").unwrap().into();
        let session = ZenohOptions::secured(tls_dir, vec![], vec![connect])
            .open(&KeySpace::default())
            .await
            .unwrap();
        let _server = BlobServer::serve_file(&session, KEY, &path, blob::DEFAULT_CHUNK_SIZE)
            .await
            .unwrap();
        if role == "corrupt" {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut byte = [0u8; 1];
            f.read_exact_at(&mut byte, CORRUPT_AT).unwrap();
            f.write_all_at(&[byte[0] ^ 0x40], CORRUPT_AT).unwrap();
        }
        std::future::pending::<()>().await;
    });
}

/// Resets this process's peak RSS (VmHWM) so a later reading covers only what follows.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Starts the server child in host 1 connecting to a fetcher session in the root namespace.
async fn setup(
    tag: &str,
    subnet: u8,
    role: &str,
) -> (
    TestNet,
    mose_testkit::ChildGuard,
    zenoh::Session,
    TestDomain,
) {
    let mut net = TestNet::new(tag, subnet).unwrap();
    net.add_host(1).unwrap();
    let domain = TestDomain::new(&[(MemberRole::Edge, "a"), (MemberRole::Edge, "b")]);
    let endpoint = format!("tls/{}:{}", net.bridge_ip(), common::free_port());
    let session = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Edge, "b"),
        vec![endpoint.clone()],
        vec![],
    )
    .open(&KeySpace::default())
    .await
    .unwrap();
    let child = spawn_self(
        &net,
        1,
        "blob_server_child",
        role,
        &[
            ("MOSE_TEST_CONNECT", endpoint),
            (
                "MOSE_TLS_DIR",
                domain
                    .tls_dir(MemberRole::Edge, "a")
                    .to_string_lossy()
                    .into_owned(),
            ),
        ],
    );
    // The child writes and hashes 64 MiB before it serves: wait for the manifest.
    let start = Instant::now();
    let quick = FetchOptions {
        chunk_timeout: Duration::from_millis(500),
        retries: 0,
        ..Default::default()
    };
    while blob::fetch_manifest(&session, KEY, &quick).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server child never served the blob"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (net, child, session, domain)
}

#[tokio::test(flavor = "multi_thread")]
async fn image_of_64_mib_crosses_namespaces_intact() {
    mose_testkit::root_test!(&["ip"]);
    let (_net, _child, session, _domain) = setup("blobok", 72, "serve").await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image");
    let mut reports = 0u64;
    reset_peak_rss();
    let rss_before = peak_rss_kib();
    let start = Instant::now();
    let manifest = blob::fetch_to_file(&session, KEY, &dest, &FetchOptions::default(), &mut |_| {
        reports += 1
    })
    .await
    .unwrap();
    let took = start.elapsed();
    let rss_growth_mib = (peak_rss_kib() - rss_before) / 1024;
    // The fetch streams to disk: its memory is the reorder window, not the blob. (Another test
    // of this binary may fetch concurrently, so the bound leaves room for two windows.)
    assert!(
        rss_growth_mib < 40,
        "peak RSS grew {rss_growth_mib} MiB for a 64 MiB blob"
    );
    let expected = pseudo_random(SIZE, SEED);
    assert_eq!(manifest.size, SIZE as u64);
    assert_eq!(manifest.chunks, 64);
    assert_eq!(reports, 64);
    assert_eq!(manifest.sha256, <[u8; 32]>::from(Sha256::digest(&expected)));
    assert!(std::fs::read(&dest).unwrap() == expected, "content differs");
    println!(
        "64 MiB across namespaces in {took:?} ({:.0} MB/s), peak RSS +{rss_growth_mib} MiB",
        SIZE as f64 / took.as_secs_f64() / 1e6
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_chunk_fails_the_fetch_and_leaves_no_file() {
    mose_testkit::root_test!(&["ip"]);
    let (_net, _child, session, _domain) = setup("blobbad", 73, "corrupt").await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image");
    let err = blob::fetch_to_file(&session, KEY, &dest, &FetchOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "partial file left behind"
    );
}
