//! Discovery across network namespaces with NO configured endpoints (root): an orchestrator
//! and two agents, each in its own namespace on a bridged LAN, find each other by multicast
//! scouting, and speak mutual TLS under the domain's access control. A killed agent leaves at once; an agent whose link dies is noticed within the lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mose_agent::node::AgentNode;
use mose_agent::profiling::CgroupProbe;
use mose_api::{AgentView, ApiClient};
use mose_protocol::domain::MemberRole;
use mose_protocol::messages::{now_us, AgentProfile, Capabilities, Role};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::KeySpace;
use mose_testkit::{child_role, spawn_self, ChildGuard, TestDomain, TestNet};

const LEASE_MS: u64 = 1000;

/// Child entry: runs one agent inside its namespace until killed.
#[test]
#[ignore = "entry point of a child process of discovery_across_namespaces"]
fn agent_child() {
    let Some(id) = child_role() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let options = ZenohOptions {
            lease_ms: LEASE_MS,
            multicast_interface: Some("eth0".into()),
            tls_dir: Some(std::env::var("MOSE_TLS_DIR").unwrap().into()),
            ..ZenohOptions::default()
        };
        let session = options.open(&KeySpace::default()).await.unwrap();
        let profile = AgentProfile {
            security: mose_protocol::messages::LinkSecurity::MutualTls {
                common_name: format!("edge:{id}"),
                not_after_unix_s: 0,
            },
            id: id.clone(),
            role: Role::Edge,
            hostname: id.clone(),
            agent_version: "test".into(),
            started_us: now_us(),
            capabilities: Some(Capabilities::default()),
            pam: None,
        };
        let _node = AgentNode::start(
            session,
            KeySpace::default(),
            profile,
            Duration::from_millis(200),
            Arc::new(CgroupProbe::default()),
        )
        .await
        .unwrap();
        std::future::pending::<()>().await;
    });
}

async fn wait_for(
    client: &ApiClient,
    timeout: Duration,
    check: impl Fn(&[AgentView]) -> bool,
) -> Result<Duration, Vec<AgentView>> {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < timeout {
        if let Ok(agents) = client.agents().await {
            if check(&agents) {
                return Ok(start.elapsed());
            }
            last = agents;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last)
}

fn ids(agents: &[AgentView]) -> Vec<&str> {
    agents.iter().map(|a| a.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_across_namespaces() {
    mose_testkit::root_test!(&["ip"]);
    let mut net = TestNet::new("disc", 71).unwrap();
    for n in 1..=3 {
        net.add_host(n).unwrap();
    }
    let http = format!("{}:7070", net.ip(1));
    // Its own task database, not the host's /var/lib/mose.
    let state = tempfile::tempdir().unwrap();
    // Scouting finds the peers; every link is mutual TLS under the domain's access control.
    let domain = TestDomain::new(&[
        (MemberRole::Orchestrator, "orchestrator"),
        (MemberRole::Edge, "edge-a"),
        (MemberRole::Edge, "edge-b"),
    ]);
    let tls = |role, id| {
        let dir = domain.tls_dir(role, id);
        ("MOSE_TLS_DIR", dir.to_string_lossy().into_owned())
    };
    // Made before the orchestrator starts, which then loads it.
    let tokens = state.path().join("api-tokens");
    mose_api::ApiTokens::load_or_create(&tokens).unwrap();
    let token = mose_api::ApiToken::read_file(&tokens).unwrap();
    let _orchestrator = ChildGuard(
        net.command(1, env!("CARGO_BIN_EXE_mose-orchestrator"))
            .args(["--http", &http, "--lease-ms", &LEASE_MS.to_string()])
            .arg("--state-dir")
            .arg(state.path())
            .args(["--multicast-interface", "eth0"])
            .arg("--tls-dir")
            .arg(domain.tls_dir(MemberRole::Orchestrator, "orchestrator"))
            .spawn()
            .unwrap(),
    );
    let mut agent_a = Some(spawn_self(
        &net,
        2,
        "agent_child",
        "edge-a",
        &[tls(MemberRole::Edge, "edge-a")],
    ));
    let _agent_b = spawn_self(
        &net,
        3,
        "agent_child",
        "edge-b",
        &[tls(MemberRole::Edge, "edge-b")],
    );

    let client = ApiClient::new(&format!("http://{http}"), Some(&token));
    let found = wait_for(&client, Duration::from_secs(30), |agents| {
        agents.len() == 2
            && agents
                .iter()
                .all(|a| a.profile.is_some() && a.metrics.is_some())
    })
    .await
    .unwrap_or_else(|last| panic!("agents not discovered by scouting: {last:?}"));
    println!("both agents discovered with profile and metrics after {found:?}");

    // A killed process: its TCP connections are reset by the kernel, so it leaves at once.
    let killed = Instant::now();
    drop(agent_a.take());
    let gone = wait_for(&client, Duration::from_secs(5), |a| ids(a) == ["edge-b"])
        .await
        .unwrap_or_else(|last| panic!("killed agent still listed: {:?}", ids(&last)));
    println!(
        "killed agent gone after {:?} (measured from kill: {:?})",
        gone,
        killed.elapsed()
    );

    // A dead link: no FIN, no RST. Only the lease can tell.
    net.cut(3).unwrap();
    let limit = Duration::from_millis(3 * LEASE_MS);
    let gone = wait_for(&client, limit, |a| a.is_empty())
        .await
        .unwrap_or_else(|last| {
            panic!(
                "cut-off agent still listed after {limit:?}: {:?}",
                ids(&last)
            )
        });
    println!("agent behind a cut link gone after {gone:?} (lease {LEASE_MS} ms)");
}
