//! Shared helpers for the protocol's integration tests.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)] // each test file uses a different subset

use mose_protocol::transport::ZenohOptions;

/// A free TCP port on loopback (the small race with other binders is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Two Zenoh peers on loopback with explicit endpoints and no scouting.
pub async fn session_pair() -> (zenoh::Session, zenoh::Session) {
    let port = free_port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let a = ZenohOptions::explicit(vec![endpoint.clone()], vec![])
        .open()
        .await
        .unwrap();
    let b = ZenohOptions::explicit(vec![], vec![endpoint])
        .open()
        .await
        .unwrap();
    (a, b)
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
