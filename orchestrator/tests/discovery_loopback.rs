//! Discovery in one process over explicit loopback endpoints: an agent appears with its profile
//! and metrics, profile changes propagate, bad publications are ignored, and an agent that leaves
//! disappears from the view and the HTTP API. Every session is a member of a test domain
//! (mutual TLS, access control).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mose_agent::node::AgentNode;
use mose_agent::profiling::CgroupProbe;
use mose_api::{ApiClient, ApiToken, ApiTokens, ClientError};
use mose_orchestrator::api::{self, ApiState};
use mose_orchestrator::api_auth::ApiAuth;
use mose_orchestrator::registry::{Registry, RegistryOptions};
use mose_orchestrator::services::{AddressPool, Services};
use mose_orchestrator::tasks::{DriverConfig, Migrations, Store};
use mose_protocol::domain::MemberRole;
use mose_protocol::messages::{
    now_us, AgentProfile, Capabilities, HostMetrics, MetricsSample, Role,
};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::{encode, KeySpace};
use mose_testkit::domain::tls_loopback;
use mose_testkit::TestDomain;

/// The orchestrator, an edge and a mobile, with mutual TLS and the domain's access control.
fn test_domain() -> TestDomain {
    TestDomain::new(&[
        (MemberRole::Orchestrator, "orchestrator"),
        (MemberRole::Edge, "edge1"),
        (MemberRole::Mobile, "drone1"),
    ])
}

fn profile(id: &str, role: Role) -> AgentProfile {
    AgentProfile {
        security: mose_protocol::messages::LinkSecurity::Insecure,
        id: id.into(),
        role,
        hostname: "test-host".into(),
        agent_version: "test".into(),
        started_us: now_us(),
        capabilities: Some(Capabilities::default()),
        pam: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_joins_reports_and_leaves() {
    let endpoint = tls_loopback();
    let domain = test_domain();
    let keys = KeySpace::default();
    let orch = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Orchestrator, "orchestrator"),
        vec![endpoint.clone()],
        vec![],
    )
    .open(&keys)
    .await
    .unwrap();
    let registry = Registry::start(&orch, keys.clone(), RegistryOptions::default())
        .await
        .unwrap();
    let view = registry.view();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let migrations = Migrations::start(
        orch.clone(),
        keys.clone(),
        view.clone(),
        Store::in_memory().unwrap(),
        DriverConfig::default(),
    )
    .await
    .unwrap();
    let token = ApiToken::generate().unwrap();
    tokio::spawn(api::serve(
        listener,
        ApiState {
            agents: view.clone(),
            services: Services::new(migrations.clone(), AddressPool::default()),
            migrations,
            auth: Arc::new(ApiAuth::new(
                ApiTokens::single("ops", token.clone()),
                vec![],
            )),
        },
        std::future::pending(),
    ));
    let client = ApiClient::new(&format!("http://{http}"), Some(&token));

    let agent_session = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Edge, "edge1"),
        vec![],
        vec![endpoint.clone()],
    )
    .open(&keys)
    .await
    .unwrap();
    let node = AgentNode::start(
        agent_session,
        keys.clone(),
        profile("edge1", Role::Edge),
        Duration::from_millis(100),
        Arc::new(CgroupProbe::default()),
    )
    .await
    .unwrap();

    let complete = view
        .wait_until(Duration::from_secs(10), |m| {
            m.get("edge1")
                .is_some_and(|a| a.profile.is_some() && a.metrics.is_some())
        })
        .await;
    assert!(
        complete,
        "agent never showed up complete: {:?}",
        view.list()
    );

    let agents = client.agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!(a.id, "edge1");
    assert_eq!(a.profile.as_ref().unwrap().role, Role::Edge);
    let metrics = a.metrics.as_ref().unwrap();
    assert!(metrics.host.cpus >= 1 && metrics.host.mem_total_bytes > 0);
    assert_eq!(client.agent("edge1").await.unwrap().id, "edge1");
    match client.agent("nobody").await {
        Err(ClientError::Api {
            status: 404,
            message,
            ..
        }) => assert!(message.contains("nobody")),
        other => panic!("expected a 404 naming the agent, got {other:?}"),
    }

    // Metrics keep flowing (sequence advances).
    let seq = metrics.seq;
    assert!(
        view.wait_until(Duration::from_secs(5), |m| m["edge1"]
            .metrics
            .as_ref()
            .unwrap()
            .seq
            > seq)
            .await
    );

    // A profile change is pushed, not polled.
    node.update_profile(|p| {
        if let Some(c) = p.capabilities.as_mut() {
            c.criu_version = Some("4.2".into());
        }
    })
    .await
    .unwrap();
    assert!(
        view.wait_until(Duration::from_secs(5), |m| {
            m["edge1"]
                .profile
                .as_ref()
                .unwrap()
                .capabilities
                .as_ref()
                .and_then(|c| c.criu_version.as_deref())
                == Some("4.2")
        })
        .await
    );

    // Leaving withdraws the token: gone from the view and the API.
    let left = Instant::now();
    node.close().await;
    assert!(
        view.wait_until(Duration::from_secs(3), |m| m.is_empty())
            .await
    );
    println!(
        "agent gone from the view {:?} after it closed",
        left.elapsed()
    );
    assert!(client.agents().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_impostor_publications_are_ignored() {
    let endpoint = tls_loopback();
    let domain = test_domain();
    let keys = KeySpace::new("garbage-test").unwrap();
    let orch = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Orchestrator, "orchestrator"),
        vec![endpoint.clone()],
        vec![],
    )
    .open(&keys)
    .await
    .unwrap();
    let registry = Registry::start(&orch, keys.clone(), RegistryOptions::default())
        .await
        .unwrap();
    let view = registry.view();

    let agent_session = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Mobile, "drone1"),
        vec![],
        vec![endpoint.clone()],
    )
    .open(&keys)
    .await
    .unwrap();
    let _node = AgentNode::start(
        agent_session,
        keys.clone(),
        profile("drone1", Role::Mobile),
        Duration::from_secs(3600),
        Arc::new(CgroupProbe::default()),
    )
    .await
    .unwrap();
    assert!(
        view.wait_until(Duration::from_secs(10), |m| {
            m.get("drone1").is_some_and(|a| a.profile.is_some())
        })
        .await
    );

    let rogue = ZenohOptions::secured(
        domain.tls_dir(MemberRole::Mobile, "drone1"),
        vec![],
        vec![endpoint],
    )
    .open(&keys)
    .await
    .unwrap();
    // Random bytes, a message of the wrong kind, and a sample claiming another agent's id.
    rogue
        .put(keys.agent_metrics("drone1"), vec![0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    rogue
        .put(
            keys.agent_metrics("drone1"),
            encode(&profile("drone1", Role::Edge)).unwrap(),
        )
        .await
        .unwrap();
    let impostor = MetricsSample {
        agent: "someone-else".into(),
        seq: 99,
        taken_us: now_us(),
        host: HostMetrics::default(),
        containers: vec![],
        links: vec![],
    };
    rogue
        .put(keys.agent_metrics("drone1"), encode(&impostor).unwrap())
        .await
        .unwrap();
    rogue
        .put(
            keys.agent_profile("drone1"),
            encode(&profile("edge9", Role::Edge)).unwrap(),
        )
        .await
        .unwrap();
    // A genuine sample sent after them arrives, so they have been processed (same session,
    // same key: in order).
    let genuine = MetricsSample {
        agent: "drone1".into(),
        seq: 1,
        ..impostor.clone()
    };
    rogue
        .put(keys.agent_metrics("drone1"), encode(&genuine).unwrap())
        .await
        .unwrap();
    assert!(
        view.wait_until(Duration::from_secs(5), |m| m["drone1"].metrics.is_some())
            .await
    );
    let list = view.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].metrics.as_ref().unwrap().seq, 1);
    assert_eq!(list[0].profile.as_ref().unwrap().role, Role::Mobile);
}
