//! A secured domain on loopback: mutual TLS on every link and the domain's access control,
//! tried by the members it is for and by peers it must refuse — a valid edge certificate for
//! another id, a certificate from another CA, a plaintext peer, an operator reaching for images.
//! Every refusal is checked next to a positive control on the same link, so "no reply" cannot
//! mean "not connected yet".

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use mose_protocol::blob::{self, BlobServer, FetchOptions};
use mose_protocol::domain::MemberRole;
use mose_protocol::transport::{TransportError, ZenohOptions};
use mose_protocol::KeySpace;
use mose_testkit::domain::tls_loopback;
use mose_testkit::TestDomain;
use zenoh::Session;

const ORCH: (MemberRole, &str) = (MemberRole::Orchestrator, "o");
const EDGE_A: (MemberRole, &str) = (MemberRole::Edge, "a");
const EDGE_B: (MemberRole, &str) = (MemberRole::Edge, "b");
const OPS: (MemberRole, &str) = (MemberRole::Operator, "ops");

fn domain() -> TestDomain {
    TestDomain::new(&[ORCH, EDGE_A, EDGE_B, OPS])
}

async fn join(domain: &TestDomain, who: (MemberRole, &str), endpoint: &str) -> Session {
    ZenohOptions::secured(domain.tls_dir(who.0, who.1), vec![], vec![endpoint.into()])
        .open(&KeySpace::default())
        .await
        .unwrap()
}

/// The payloads of the replies `session` gets for `key` within `timeout`.
async fn ask(session: &Session, key: &str, timeout: Duration) -> Vec<String> {
    let replies = session.get(key).timeout(timeout).await.unwrap();
    let mut answers = Vec::new();
    while let Ok(reply) = replies.recv_async().await {
        if let Ok(sample) = reply.result() {
            answers.push(sample.payload().try_to_string().unwrap().into_owned());
        }
    }
    answers
}

/// Asks until an answer comes (links and declarations take a moment), at most 10 s.
async fn ask_until_answered(session: &Session, key: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let answers = ask(session, key, Duration::from_millis(500)).await;
        if !answers.is_empty() || start.elapsed() > Duration::from_secs(10) {
            return answers;
        }
    }
}

/// Answers every query on `key` with `answer`.
async fn answer(session: &Session, key: &str, answer: &'static str) {
    let queryable = session.declare_queryable(key).await.unwrap();
    tokio::spawn(async move {
        while let Ok(q) = queryable.recv_async().await {
            let _ = q.reply(q.key_expr().clone(), answer).await;
        }
    });
}

#[test]
fn a_secured_config_names_its_files_and_refuses_plaintext() {
    let domain = domain();
    let dir = domain.tls_dir(MemberRole::Edge, "a");
    let keys = KeySpace::default();
    let o = ZenohOptions {
        tls_dir: Some(dir.clone()),
        ..Default::default()
    };
    let json = format!("{}", o.to_config(&keys).unwrap());
    assert!(json.contains("\"enable_mtls\":true"), "{json}");
    assert!(json.contains("tls/[::]:0"), "{json}");
    assert!(json.contains("edge:a"), "{json}");
    assert!(json.contains("\"default_permission\":\"deny\""), "{json}");
    assert!(
        json.contains(&dir.join("key.pem").display().to_string()),
        "{json}"
    );

    let plain = ZenohOptions::secured(dir.clone(), vec!["tcp/127.0.0.1:1".into()], vec![]);
    let err = plain.to_config(&keys).unwrap_err();
    assert!(matches!(err, TransportError::Plaintext(_)), "{err}");

    let missing = ZenohOptions::secured(dir.join("nope"), vec![], vec![]);
    let err = missing.to_config(&keys).unwrap_err();
    assert!(matches!(err, TransportError::TlsFile { .. }), "{err}");

    std::fs::remove_file(dir.join("roster.toml")).unwrap();
    let err = o.to_config(&keys).unwrap_err();
    assert!(err.to_string().contains("roster.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_orchestrator_drives_an_agent_and_only_the_destination_fetches_its_images() {
    let domain = domain();
    let keys = KeySpace::default();
    let endpoint = tls_loopback();
    // Edge a listens; everyone else connects to it, so every verdict below is a's.
    let a = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Edge, "a"),
        vec![endpoint.clone()],
        vec![],
    )
    .open(&keys)
    .await
    .unwrap();
    let abort = keys.agent_rpc("a", "abort");
    answer(&a, &abort, "aborted").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("image");
    std::fs::write(&file, common::pseudo_random(100_000, 1)).unwrap();
    let image_key = keys.image("a", "b", "t1", mose_protocol::steps::ImageId::Final);
    let _server = BlobServer::serve_file(&a, &image_key, &file, 1 << 14)
        .await
        .unwrap();

    let orch = join(&domain, ORCH, &endpoint).await;
    let b = join(&domain, EDGE_B, &endpoint).await;
    let ops = join(&domain, OPS, &endpoint).await;

    // The orchestrator drives a's steps.
    assert_eq!(ask_until_answered(&orch, &abort).await, ["aborted"]);
    // b fetches what a serves to it: b's link is up…
    let quick = FetchOptions {
        chunk_timeout: Duration::from_millis(800),
        retries: 2,
        ..FetchOptions::default()
    };
    let start = Instant::now();
    let fetched = loop {
        let mut sink = Vec::new();
        match blob::fetch_into(&b, &image_key, &mut sink, &quick, &mut |_| {}).await {
            Ok(m) => break m,
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("b cannot fetch: {e}"),
            Err(_) => {}
        }
    };
    assert_eq!(fetched.size, 100_000);
    // …yet a refuses its step calls, addressed exactly or by wildcard.
    let wait = Duration::from_millis(1500);
    assert!(
        ask(&b, &abort, wait).await.is_empty(),
        "edge b drove a's abort"
    );
    assert!(
        ask(&b, &keys.agent_rpc("*", "abort"), wait)
            .await
            .is_empty(),
        "a wildcard abort from edge b reached a"
    );
    // The operator reaches the orchestrator's calls (its links are up: the one to the
    // orchestrator comes by gossip, after the one to a), but neither steps nor images.
    answer(&orch, &keys.orchestrator_rpc("list"), "tasks").await;
    assert_eq!(
        ask_until_answered(&ops, &keys.orchestrator_rpc("list")).await,
        ["tasks"]
    );
    assert!(
        ask(&ops, &abort, wait).await.is_empty(),
        "an operator drove a's abort"
    );
    let mut sink = Vec::new();
    let refused = blob::fetch_into(&ops, &image_key, &mut sink, &quick, &mut |_| {}).await;
    assert!(refused.is_err(), "an operator fetched b's image");
    assert!(sink.is_empty(), "image bytes reached the operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_answer_for_another() {
    let domain = domain();
    let keys = KeySpace::default();
    let endpoint = tls_loopback();
    // The orchestrator listens: a rogue declaration must be refused at its ingress.
    let orch = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Orchestrator, "o"),
        vec![endpoint.clone()],
        vec![],
    )
    .open(&keys)
    .await
    .unwrap();
    let a = join(&domain, EDGE_A, &endpoint).await;
    let b = join(&domain, EDGE_B, &endpoint).await;
    answer(&a, &keys.agent_rpc("a", "describe"), "a").await;
    // b, a valid edge, claims a's key space and answers its steps.
    answer(&b, &keys.agent_rpc("a", "describe"), "b pretending").await;
    answer(&b, &keys.agent_rpc("a", "restore"), "b pretending").await;
    answer(&b, &keys.agent_rpc("b", "describe"), "b").await;
    assert_eq!(
        ask_until_answered(&orch, &keys.agent_rpc("b", "describe")).await,
        ["b"]
    );
    assert_eq!(
        ask_until_answered(&orch, &keys.agent_rpc("a", "describe")).await,
        ["a"],
        "only a answers for a"
    );
    let wait = Duration::from_millis(1500);
    assert!(
        ask(&orch, &keys.agent_rpc("a", "restore"), wait)
            .await
            .is_empty(),
        "b answered a's restore"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_do_not_get_in() {
    let domain = domain();
    let keys = KeySpace::default();
    let endpoint = tls_loopback();
    let a = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Edge, "a"),
        vec![endpoint.clone()],
        vec![],
    )
    .open(&keys)
    .await
    .unwrap();
    let abort = keys.agent_rpc("a", "abort");
    answer(&a, &abort, "aborted").await;
    let orch = join(&domain, ORCH, &endpoint).await;
    assert_eq!(ask_until_answered(&orch, &abort).await, ["aborted"]);

    let wait = Duration::from_millis(1500);
    // A certificate from another CA, with the orchestrator's very name: the handshake fails.
    let other = TestDomain::new(&[ORCH]);
    let forged = join(&other, ORCH, &endpoint).await;
    assert!(
        ask(&forged, &abort, wait).await.is_empty(),
        "another CA's orchestrator got in"
    );
    // No certificate at all: a plaintext peer at a TLS endpoint.
    let plain = ZenohOptions {
        insecure: true,
        ..ZenohOptions::explicit(vec![], vec![endpoint.replacen("tls/", "tcp/", 1)])
    }
    .open(&keys)
    .await
    .unwrap();
    assert!(
        ask(&plain, &abort, wait).await.is_empty(),
        "a plaintext peer got in"
    );
}
