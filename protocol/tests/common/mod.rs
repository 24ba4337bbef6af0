//! Shared helpers for the protocol's integration tests.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)] // each test file uses a different subset

use mose_protocol::domain::MemberRole;
use mose_protocol::transport::ZenohOptions;
use mose_protocol::KeySpace;
use mose_testkit::domain::tls_loopback;
use mose_testkit::TestDomain;

/// A free TCP port on loopback (the small race with other binders is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Edges `a` and `b` of a test domain, on loopback with mutual TLS, explicit endpoints and no
/// scouting; `a` serves images to `b` under [`image_key`]. The domain's files live as long as
/// the returned [`TestDomain`].
pub async fn session_pair() -> (zenoh::Session, zenoh::Session, TestDomain) {
    let domain = TestDomain::new(&[(MemberRole::Edge, "a"), (MemberRole::Edge, "b")]);
    let endpoint = tls_loopback();
    let keys = KeySpace::default();
    let a = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Edge, "a"),
        vec![endpoint.clone()],
        vec![],
    )
    .open(&keys)
    .await
    .unwrap();
    let b = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Edge, "b"),
        vec![],
        vec![endpoint],
    )
    .open(&keys)
    .await
    .unwrap();
    (a, b, domain)
}

/// The key of image `name` of task `task`, served by edge `a` to edge `b`.
pub fn image_key(task: &str, name: &str) -> String {
    format!("mose/agents/a/images/b/{task}/{name}")
}

/// Deterministic pseudo-random bytes (xorshift), so two processes can agree on content.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
