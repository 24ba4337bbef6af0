//! The step RPC between orchestrator and agent, over loopback: outcomes, failures, timeouts,
//! refused garbage, another protocol version, a step on the wrong queryable, and an agent that
//! is not there. The executors here are test doubles for the protocol layer only; the real
//! executor is tested against a fake host (agent unit tests) and on emulated hosts.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mose_agent::steps::{StepExecutor, StepServer};
use mose_orchestrator::rpc::{AgentRpc, RpcError};
use mose_protocol::domain::MemberRole;
use mose_protocol::messages::{CriuStats, ServiceNetwork, ServiceSpec};
use mose_protocol::steps::{
    Abort, Done, FailureKind, Op, Release, Restore, Restored, Resume, Step, StepFailure,
    StepOutcome, StepRequest,
};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::{encode, KeySpace, PROTOCOL_VERSION};
use mose_testkit::domain::tls_loopback;
use mose_testkit::TestDomain;
use zenoh::query::Reply;
use zenoh::Session;

struct Scripted;

/// How often `Resume {service: "count"}` ran.
static COUNTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl StepExecutor for Scripted {
    async fn execute(&self, _task: &str, step: Step) -> Result<StepOutcome, StepFailure> {
        match step {
            Step::Resume(r) if r.service == "ok" => Ok(Done.into()),
            Step::Resume(r) if r.service == "count" => {
                COUNTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Done.into())
            }
            Step::Resume(r) if r.service == "slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Done.into())
            }
            other => Err(StepFailure {
                op: other.op(),
                kind: FailureKind::WrongState,
                reason: format!("cannot {}", other.op()),
            }),
        }
    }
}

/// Agent `agent`'s session and the orchestrator's, connected over loopback with mutual TLS
/// in a test domain (kept alive by the caller).
async fn sessions(agent: &str) -> (Session, Session, TestDomain) {
    let domain = TestDomain::new(&[
        (MemberRole::Orchestrator, "orchestrator"),
        (MemberRole::Edge, agent),
    ]);
    let endpoint = tls_loopback();
    let agent_session = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Edge, agent),
        vec![endpoint.clone()],
        vec![],
    )
    .open(&KeySpace::default())
    .await
    .unwrap();
    let orch = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Orchestrator, "orchestrator"),
        vec![],
        vec![endpoint],
    )
    .open(&KeySpace::default())
    .await
    .unwrap();
    (agent_session, orch, domain)
}

fn resume(s: &str) -> Resume {
    Resume { service: s.into() }
}

/// The first reply to raw `payload` on agent `agent`'s queryable `op`.
async fn raw(orch: &Session, keys: &KeySpace, agent: &str, op: &str, payload: Vec<u8>) -> Reply {
    let replies = orch
        .get(keys.agent_rpc(agent, op))
        .payload(payload)
        .await
        .unwrap();
    replies.recv_async().await.unwrap()
}

fn error_text(reply: &Reply) -> String {
    reply
        .result()
        .unwrap_err()
        .payload()
        .try_to_string()
        .unwrap()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn steps_answer_fail_and_time_out_with_typed_errors() {
    let (agent, orch, _domain) = sessions("edge1").await;
    let keys = KeySpace::default();
    let _server = StepServer::start(&agent, &keys, "edge1", Arc::new(Scripted))
        .await
        .unwrap();
    let rpc = AgentRpc::new(orch.clone(), keys.clone());
    let t = Duration::from_secs(5);

    // The first get after a remote queryable is declared may find nothing: retry briefly.
    let start = Instant::now();
    loop {
        match rpc.call("edge1", "t1", resume("ok"), t).await {
            Ok(outcome) => {
                assert_eq!(outcome, Done);
                break;
            }
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("step never answered: {e}"),
        }
    }

    match rpc
        .call(
            "edge1",
            "t1",
            Release {
                service: "x".into(),
            },
            t,
        )
        .await
    {
        Err(RpcError::Failed { failure, .. }) => {
            assert_eq!(
                (failure.op, failure.kind),
                (Op::Release, FailureKind::WrongState)
            );
            assert!(failure.reason.contains("cannot release"));
        }
        other => panic!("expected a step failure, got {other:?}"),
    }

    let start = Instant::now();
    match rpc
        .call("edge1", "t1", resume("slow"), Duration::from_millis(300))
        .await
    {
        Err(RpcError::Failed { failure, .. }) => {
            assert_eq!(failure.kind, FailureKind::Timeout, "{failure}");
            assert!(failure.reason.contains("within"), "{failure}");
        }
        other => panic!("expected a timeout failure, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the agent enforces the step timeout"
    );

    // Garbage is refused with a reason, not dropped.
    let err = error_text(&raw(&orch, &keys, "edge1", "resume", vec![1u8, 2, 3]).await);
    assert!(err.contains("bad step request"), "{err}");

    // A step sent to another op's queryable is an invalid request, answered as a step failure.
    let request = StepRequest {
        task: "t1".into(),
        step: resume("ok").into(),
        timeout_ms: 5000,
    };
    let reply = raw(&orch, &keys, "edge1", "release", encode(&request).unwrap()).await;
    let reply: mose_protocol::steps::StepReply =
        mose_protocol::decode(&reply.result().unwrap().payload().to_bytes()).unwrap();
    let failure = reply.result.unwrap_err();
    assert_eq!(
        (failure.op, failure.kind),
        (Op::Resume, FailureKind::InvalidRequest)
    );
    assert!(
        failure.reason.contains("sent to the 'release' queryable"),
        "{failure}"
    );

    // A wildcard does not run a step, even from the orchestrator: `agents/*/rpc/resume` would
    // reach every agent, `rpc/*` every step. (The access control also drops the agent's
    // answer to a key outside its own space, so the effect is what is checked.)
    let counting = encode(&StepRequest {
        task: "t1".into(),
        step: resume("count").into(),
        timeout_ms: 5000,
    })
    .unwrap();
    for key in [
        "mose/agents/*/rpc/resume",
        "mose/agents/edge1/rpc/*",
        "mose/agents/**",
    ] {
        let replies = orch.get(key).payload(counting.clone()).await.unwrap();
        while let Ok(reply) = replies.recv_async().await {
            let err = error_text(&reply);
            assert!(err.contains("exactly"), "{key}: {err}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(COUNTED.load(std::sync::atomic::Ordering::SeqCst), 0);
    raw(&orch, &keys, "edge1", "resume", counting)
        .await
        .result()
        .unwrap();
    assert_eq!(
        COUNTED.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the exact key runs it"
    );

    match rpc
        .call("ghost", "t1", resume("ok"), Duration::from_millis(200))
        .await
    {
        Err(RpcError::Gone { agent, .. }) => assert_eq!(agent, "ghost"),
        other => panic!("expected no answer from an absent agent, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_of_another_protocol_version_is_refused_naming_both_versions() {
    let (agent, orch, _domain) = sessions("edge1").await;
    let keys = KeySpace::default();
    let _server = StepServer::start(&agent, &keys, "edge1", Arc::new(Scripted))
        .await
        .unwrap();
    let request = StepRequest {
        task: "t1".into(),
        step: resume("ok").into(),
        timeout_ms: 5000,
    };
    let mut old = encode(&request).unwrap();
    // The envelope's version field (u16 LE after the magic), as a version-2 node writes it.
    old[2..4].copy_from_slice(&2u16.to_le_bytes());
    // The first get after a remote queryable is declared may find nothing: retry briefly.
    let start = Instant::now();
    let reply = loop {
        let replies = orch
            .get(keys.agent_rpc("edge1", "resume"))
            .payload(old.clone())
            .timeout(Duration::from_secs(2))
            .await
            .unwrap();
        match replies.recv_async().await {
            Ok(reply) => break reply,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no answer: {e}"),
        }
    };
    let err = error_text(&reply);
    assert!(
        err.contains(&format!(
            "unsupported protocol version 2, this node speaks {PROTOCOL_VERSION}"
        )),
        "{err}"
    );
}

/// Records the steps it runs; a Restore takes 500 ms. Undoes a late Restore with an Abort, as
/// the COAT executor does.
#[derive(Default)]
struct Recording {
    ran: std::sync::Mutex<Vec<Op>>,
}

impl StepExecutor for Recording {
    async fn execute(&self, _task: &str, step: Step) -> Result<StepOutcome, StepFailure> {
        if let Step::Restore(_) = step {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.ran.lock().unwrap().push(step.op());
        Ok(match step {
            Step::Restore(_) => Restored {
                fetched_bytes: 1,
                stats: CriuStats::default(),
            }
            .into(),
            _ => Done.into(),
        })
    }

    fn undo_of(&self, step: &Step) -> Option<Step> {
        match step {
            Step::Restore(r) => Some(
                Abort {
                    service: r.spec.name.clone(),
                }
                .into(),
            ),
            _ => None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_that_succeeds_after_its_timeout_is_undone_by_the_agent() {
    let (agent, orch, _domain) = sessions("edge2").await;
    let keys = KeySpace::default();
    let executor = Arc::new(Recording::default());
    let _server = StepServer::start(&agent, &keys, "edge2", executor.clone())
        .await
        .unwrap();
    let rpc = AgentRpc::new(orch.clone(), keys.clone());
    let spec = ServiceSpec {
        name: "counter".into(),
        image: "i".into(),
        image_id: None,
        network: ServiceNetwork::new(std::net::Ipv4Addr::new(10, 0, 0, 1), 24),
    };
    let restore = Restore {
        spec,
        from: "edge1".into(),
        rounds: 0,
    };
    // The first get after a remote queryable is declared may find nothing: retry briefly.
    let start = Instant::now();
    let failure = loop {
        match rpc
            .call("edge2", "t1", restore.clone(), Duration::from_millis(200))
            .await
        {
            Err(RpcError::Failed { failure, .. }) => break failure,
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected a timeout failure, got {other:?}"),
        }
    };
    assert_eq!(failure.kind, FailureKind::Timeout, "{failure:?}");
    // The caller was told it failed: the restore that finishes anyway is undone right after.
    let t = Instant::now();
    while executor.ran.lock().unwrap().len() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            executor.ran.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ran = executor.ran.lock().unwrap().clone();
    assert_eq!(ran, [Op::Restore, Op::Abort]);
}
