//! Blob transfer throughput over Zenoh vs a raw TCP copy of the same bytes over the same path
//! (loopback), measured in the same run, over mutual TLS with the domain's access control (what
//! MOSE ships) and over plaintext (`--insecure`, the comparison). `cargo bench -p mose-protocol`.
//!
//! The raw copy is the floor: one TCP stream, no chunking, no framing. Both sides hash what they
//! receive (SHA-256), since a fetch that did not verify would not be the same job.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use mose_protocol::blob::{self, BlobServer, FetchOptions};
use mose_protocol::domain::MemberRole;
use mose_protocol::transport::ZenohOptions;
use mose_protocol::KeySpace;
use mose_testkit::TestDomain;
use sha2::{Digest, Sha256};

const SIZE: usize = 256 << 20;
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mb_per_s(d: Duration) -> f64 {
    SIZE as f64 / d.as_secs_f64() / 1e6
}

fn raw_tcp_copy(path: &Path) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let path = path.to_path_buf();
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut file = std::fs::File::open(path).unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).unwrap();
        }
    });
    let (mut stream, _) = listener.accept().unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    sender.join().unwrap();
    let took = start.elapsed();
    assert_eq!(total, SIZE);
    std::hint::black_box(hasher.finalize());
    took
}

/// The image edge `a` serves to edge `b`.
const KEY: &str = "mose/agents/a/images/b/bench/final";

/// Owner and fetcher options: TLS directories of edges `a` and `b`, or plaintext.
fn link_options(domain: Option<&TestDomain>) -> (ZenohOptions, ZenohOptions) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match domain {
        Some(d) => {
            let endpoint = format!("tls/127.0.0.1:{port}");
            (
                ZenohOptions::secured(
                    d.tls_dir(MemberRole::Edge, "a"),
                    vec![endpoint.clone()],
                    vec![],
                ),
                ZenohOptions::secured(d.tls_dir(MemberRole::Edge, "b"), vec![], vec![endpoint]),
            )
        }
        None => {
            let endpoint = format!("tcp/127.0.0.1:{port}");
            let plain = |listen, connect| ZenohOptions {
                insecure: true,
                ..ZenohOptions::explicit(listen, connect)
            };
            (
                plain(vec![endpoint.clone()], vec![]),
                plain(vec![], vec![endpoint]),
            )
        }
    }
}

async fn zenoh_fetch(path: &Path, in_flight: usize, domain: Option<&TestDomain>) -> Duration {
    let keys = KeySpace::default();
    let (owner, fetcher) = link_options(domain);
    let owner = owner.open(&keys).await.unwrap();
    let fetcher = fetcher.open(&keys).await.unwrap();
    let _server = BlobServer::serve_file(&owner, KEY, path, blob::DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    let opts = FetchOptions {
        in_flight,
        ..FetchOptions::default()
    };
    // The manifest is fetched once up front so a not-yet-propagated queryable does not count.
    blob::fetch_manifest(&fetcher, KEY, &opts).await.unwrap();
    let start = Instant::now();
    let m = blob::fetch_into(&fetcher, KEY, &mut tokio::io::sink(), &opts, &mut |_| {})
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(m.size, SIZE as u64);
    drop(_server);
    let _ = fetcher.close().await;
    let _ = owner.close().await;
    took
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let mut data = vec![0u8; SIZE];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&path, &data).unwrap();
    drop(data);
    let runs = RUNS;

    let raw = median((0..runs).map(|_| raw_tcp_copy(&path)).collect());
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "blob transfer, {} MiB, median of {runs} runs, loopback",
        SIZE >> 20
    );
    println!(
        "  raw TCP copy + SHA-256      {:>8.0} MB/s  (baseline)",
        mb_per_s(raw)
    );
    let domain = TestDomain::new(&[(MemberRole::Edge, "a"), (MemberRole::Edge, "b")]);
    for in_flight in [1, 4, 8] {
        let fetch = |domain| {
            median(
                (0..runs)
                    .map(|_| rt.block_on(zenoh_fetch(&path, in_flight, domain)))
                    .collect(),
            )
        };
        let plain = fetch(None);
        let tls = fetch(Some(&domain));
        println!(
            "  zenoh chunked, {in_flight} in flight, plaintext  {:>8.0} MB/s  ratio {:.2} of raw",
            mb_per_s(plain),
            raw.as_secs_f64() / plain.as_secs_f64()
        );
        println!(
            "  zenoh chunked, {in_flight} in flight, mTLS+ACL   {:>8.0} MB/s  ratio {:.2} of raw, {:.2} of plaintext",
            mb_per_s(tls),
            raw.as_secs_f64() / tls.as_secs_f64(),
            plain.as_secs_f64() / tls.as_secs_f64()
        );
    }
}
