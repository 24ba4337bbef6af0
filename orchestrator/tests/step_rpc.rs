//! The step RPC between orchestrator and agent, over loopback: outcomes, failures, timeouts,
//! refused garbage and an agent that is not there. The executor here is a test double for the
//! protocol layer only; the real executor is tested on emulated hosts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mose_agent::steps::{StepExecutor, StepServer};
use mose_orchestrator::rpc::{AgentRpc, RpcError};
use mose_protocol::messages::{Step, StepOutcome};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::KeySpace;

struct Scripted;

impl StepExecutor for Scripted {
    async fn execute(&self, _task: &str, step: Step) -> Result<StepOutcome, String> {
        match step {
            Step::Resume { service } if service == "ok" => Ok(StepOutcome::Done),
            Step::Resume { service } if service == "slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(StepOutcome::Done)
            }
            other => Err(format!("cannot {}", other.op())),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn steps_answer_fail_and_time_out_with_typed_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let keys = KeySpace::default();
    let agent = ZenohOptions::explicit(vec![endpoint.clone()], vec![]).open().await.unwrap();
    let orch = ZenohOptions::explicit(vec![], vec![endpoint]).open().await.unwrap();
    let _server = StepServer::start(&agent, &keys, "edge1", Arc::new(Scripted)).await.unwrap();
    let rpc = AgentRpc::new(orch.clone(), keys.clone());
    let resume = |s: &str| Step::Resume { service: s.into() };
    let t = Duration::from_secs(5);

    // The first get after a remote queryable is declared may find nothing: retry briefly.
    let start = Instant::now();
    loop {
        match rpc.call("edge1", "t1", resume("ok"), t).await {
            Ok(outcome) => {
                assert_eq!(outcome, StepOutcome::Done);
                break;
            }
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("step never answered: {e}"),
        }
    }

    match rpc.call("edge1", "t1", Step::Release { service: "x".into() }, t).await {
        Err(RpcError::Failed { failure, .. }) => {
            assert_eq!(failure.op, "release");
            assert!(failure.reason.contains("cannot release"));
        }
        other => panic!("expected a step failure, got {other:?}"),
    }

    let start = Instant::now();
    match rpc.call("edge1", "t1", resume("slow"), Duration::from_millis(300)).await {
        Err(RpcError::Failed { failure, .. }) => assert!(failure.reason.contains("within")),
        other => panic!("expected a timeout failure, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3), "the agent enforces the step timeout");

    // Garbage and mismatched ops are refused with a reason, not dropped.
    let replies = orch
        .get(keys.agent_rpc("edge1", "resume"))
        .payload(vec![1u8, 2, 3])
        .await
        .unwrap();
    let reply = replies.recv_async().await.unwrap();
    let err = reply.result().unwrap_err().payload().try_to_string().unwrap().into_owned();
    assert!(err.contains("bad step request"), "{err}");

    match rpc.call("ghost", "t1", resume("ok"), Duration::from_millis(200)).await {
        Err(RpcError::Gone { agent, .. }) => assert_eq!(agent, "ghost"),
        other => panic!("expected no answer from an absent agent, got {other:?}"),
    }
}

/// Records the steps it runs; a Restore takes 500 ms.
#[derive(Default)]
struct Recording {
    ran: std::sync::Mutex<Vec<String>>,
}

impl StepExecutor for Recording {
    async fn execute(&self, _task: &str, step: Step) -> Result<StepOutcome, String> {
        if let Step::Restore { .. } = step {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.ran.lock().unwrap().push(step.op().to_string());
        Ok(match step {
            Step::Restore { .. } => StepOutcome::Restored {
                stats: Default::default(),
            },
            _ => StepOutcome::Done,
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_that_succeeds_after_its_timeout_is_aborted_by_the_agent() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let keys = KeySpace::default();
    let agent = ZenohOptions::explicit(vec![endpoint.clone()], vec![]).open().await.unwrap();
    let orch = ZenohOptions::explicit(vec![], vec![endpoint]).open().await.unwrap();
    let executor = Arc::new(Recording::default());
    let _server = StepServer::start(&agent, &keys, "edge2", executor.clone()).await.unwrap();
    let rpc = AgentRpc::new(orch.clone(), keys.clone());
    let spec = mose_protocol::messages::ServiceSpec {
        name: "counter".into(),
        image: "i".into(),
        network: mose_protocol::messages::ServiceNetwork {
            ip: std::net::Ipv4Addr::new(10, 0, 0, 1),
            prefix_len: 24,
            mac: [2, 0, 0, 0, 0, 1],
            client_ip: None,
            client_mac: None,
        },
    };
    let restore =
        Step::Restore { spec, from_agent: "edge1".into(), image: "c".into(), previous: Vec::new() };
    // The first get after a remote queryable is declared may find nothing: retry briefly.
    let start = Instant::now();
    let failure = loop {
        match rpc.call("edge2", "t1", restore.clone(), Duration::from_millis(200)).await {
            Err(RpcError::Failed { failure, .. }) => break failure,
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected a timeout failure, got {other:?}"),
        }
    };
    assert!(failure.reason.contains("within"), "{failure:?}");
    // The caller was told it failed: the restore that finishes anyway is aborted right after.
    let t = Instant::now();
    while executor.ran.lock().unwrap().len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", executor.ran.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*executor.ran.lock().unwrap(), ["restore", "abort"]);
}
