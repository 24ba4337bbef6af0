//! The migration driver end to end over Zenoh loopback: HTTP and Zenoh task API → validation →
//! planning → COAT steps on the agents → rollback, cancel and restart reconciliation.
//!
//! This tests the **protocol and state-machine layer only**: the agents are real `AgentNode`s
//! with real step queryables, but their `StepExecutor` is a scripted test double that records
//! each call and fails, hangs or dies where a scenario says. Real execution (Podman, CRIU, OvS)
//! is tested on emulated hosts elsewhere.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mose_agent::node::AgentNode;
use mose_agent::profiling::CgroupProbe;
use mose_agent::steps::{StepExecutor, StepServer};
use mose_api::{ApiClient, ApiToken, ApiTokens, ClientError, MigrationEvent, Reason};
use mose_orchestrator::api::{self, ApiState};
use mose_orchestrator::api_auth::ApiAuth;
use mose_orchestrator::registry::{Registry, RegistryOptions};
use mose_orchestrator::services::{
    AddressPool, DeployRequest, ServiceRecord, ServiceStatus, Services,
};
use mose_orchestrator::tasks::queryables::QueryServer;
use mose_orchestrator::tasks::{
    DriverConfig, MigrationRequest, Migrations, StepTimeouts, Store, TaskRecord, TaskStatus,
};
use mose_protocol::domain::MemberRole;
use mose_protocol::messages::{
    now_us, AgentProfile, Capabilities, CriuStats, Peer, Phase, PhaseEvent, PhaseStatus, Role,
    ServiceNetwork, ServiceSpec, Task,
};
use mose_protocol::model::Objective;
use mose_protocol::steps::{
    Described, Done, Dumped, Exported, FailureKind, Fetched, ImageId, Prepared, Resent, Restored,
    Step, StepFailure, StepOutcome,
};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::units::BytesPerSec;
use mose_protocol::volumes::VolumeMount;
use mose_protocol::{decode, encode, KeySpace};
use mose_testkit::domain::tls_loopback;
use mose_testkit::TestDomain;
use zenoh::Session;

/// What the scripted agents do differently from succeeding at once.
#[derive(Default, Clone)]
struct Script {
    /// (agent, op) that fails with a reason; a flow switch is named with its target
    /// (`switch-flow->edge2`), so the switch back can still succeed.
    fail: Vec<(String, String)>,
    /// (agent, op) that never finishes (the agent's step timeout answers for it).
    hang: Option<(String, String)>,
    /// (agent, op) during which the agent dies: its session closes, nothing answers.
    die: Option<(String, String)>,
    /// The agent whose Prepare finds the service's image missing.
    image_absent: Option<String>,
}

/// One call an agent received: (task, agent, op with detail).
type Call = (String, String, String);

#[derive(Default)]
struct World {
    script: Mutex<Script>,
    calls: Mutex<Vec<Call>>,
}

impl World {
    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    /// The calls of one task, as "agent:op".
    fn calls(&self, task: &str) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t == task)
            .map(|(_, a, op)| format!("{a}:{op}"))
            .collect()
    }
}

struct Scripted {
    agent: String,
    world: Arc<World>,
    /// The agent's own session and keys: to publish its phase events, and to die.
    session: Session,
    keys: KeySpace,
}

fn spec() -> ServiceSpec {
    ServiceSpec {
        name: "counter".into(),
        image: "localhost/mose/counter:latest".into(),
        image_id: None,
        network: ServiceNetwork {
            clients: vec![Peer {
                ip: Ipv4Addr::new(10, 77, 0, 2),
                mac: [2, 0, 0, 0, 0, 2],
            }],
            ..ServiceNetwork::new(Ipv4Addr::new(10, 77, 0, 10), 24)
        },
    }
}

impl Scripted {
    async fn agent_event(&self, task: &str, phase: Phase, status: PhaseStatus) {
        let event = PhaseEvent {
            task: task.into(),
            agent: self.agent.clone(),
            phase,
            status,
            at_us: now_us(),
        };
        self.session
            .put(
                self.keys.agent_events(&self.agent, task),
                encode(&event).unwrap(),
            )
            .await
            .unwrap();
    }
}

impl StepExecutor for Scripted {
    async fn execute(&self, task: &str, step: Step) -> Result<StepOutcome, StepFailure> {
        let op = step.op();
        let detail = match &step {
            Step::SwitchFlow(s) => format!("{op}->{}", s.to),
            Step::PreDump(s) => format!("{op}({})", s.round),
            Step::Restore(s) if s.rounds > 0 => format!("{op}(rounds {})", s.rounds),
            Step::Checkpoint(s) if s.rounds > 0 => format!("{op}(rounds {})", s.rounds),
            Step::Fetch(s) => format!("{op}({})", s.image.key_chunk()),
            _ => op.to_string(),
        };
        self.world
            .calls
            .lock()
            .unwrap()
            .push((task.into(), self.agent.clone(), detail.clone()));
        let script = self.world.script.lock().unwrap().clone();
        let me = Some((self.agent.clone(), detail));
        let failure = |kind, reason: String| StepFailure { op, kind, reason };
        if me.as_ref().is_some_and(|me| script.fail.contains(me)) {
            return Err(failure(
                FailureKind::Runtime,
                format!("scripted failure of {op}"),
            ));
        }
        if script.hang == me {
            std::future::pending::<()>().await;
        }
        if script.die == me {
            let _ = self.session.close().await;
            std::future::pending::<()>().await;
        }
        let dumped = |image| Dumped {
            image,
            image_bytes: 1 << 20,
            stats: CriuStats {
                frozen_time_us: Some(1000),
                ..Default::default()
            },
        };
        Ok(match step {
            Step::Describe(d) if d.service == "counter" => Described {
                spec: spec(),
                state_bytes: 10 << 20,
            }
            .into(),
            Step::Describe(d) => {
                return Err(failure(
                    FailureKind::WrongState,
                    format!("no container named '{}' here", d.service),
                ))
            }
            Step::PreDump(p) => dumped(ImageId::Round(p.round)).into(),
            Step::Checkpoint(_) => dumped(ImageId::Final).into(),
            Step::Fetch(f) => Fetched {
                image: f.image,
                image_bytes: 1 << 20,
            }
            .into(),
            Step::Restore(_) => {
                // A destination reports its own sub-phases on the task's event key.
                self.agent_event(task, Phase::Transfer, PhaseStatus::Started)
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.agent_event(task, Phase::Transfer, PhaseStatus::Finished)
                    .await;
                Restored {
                    fetched_bytes: 1 << 20,
                    stats: CriuStats::default(),
                }
                .into()
            }
            Step::Resend(_) => Resent { nudges: 1 }.into(),
            Step::Prepare(_) => Prepared {
                image_present: script.image_absent.as_deref() != Some(self.agent.as_str()),
            }
            .into(),
            Step::ExportImage(_) => Exported {
                image_bytes: 8 << 20,
            }
            .into(),
            Step::SwitchFlow(_)
            | Step::Resume(_)
            | Step::Abort(_)
            | Step::Release(_)
            | Step::Deploy(_)
            | Step::Remove(_)
            | Step::ClearFlow(_) => Done.into(),
        })
    }
}

fn profile(id: &str, role: Role, dirty_tracking: bool) -> AgentProfile {
    AgentProfile {
        security: mose_protocol::messages::LinkSecurity::Insecure,
        id: id.into(),
        role,
        hostname: id.into(),
        agent_version: "test".into(),
        started_us: now_us(),
        capabilities: Some(Capabilities {
            dirty_tracking,
            ..Capabilities::default()
        }),
        pam: None,
    }
}

fn test_config() -> DriverConfig {
    let s = Duration::from_secs(2);
    DriverConfig {
        timeouts: StepTimeouts {
            describe: s,
            prepare: s,
            checkpoint: s,
            restore: s,
            switch_flow: s,
            release: s,
            rollback: Duration::from_secs(1),
        },
        retry_attempts: 2,
        retry_backoff: Duration::from_millis(50),
        default_bandwidth_bytes_per_s: BytesPerSec(125_000_000),
        reconcile_wait: Duration::from_secs(5),
        agent_wait: Duration::from_secs(5),
    }
}

/// A scripted agent (TLS directory `tls_dir`) connected to the orchestrator at `endpoint`: its
/// step server and its node.
async fn start_agent(
    tls_dir: std::path::PathBuf,
    endpoint: &str,
    keys: &KeySpace,
    world: &Arc<World>,
    id: &str,
    role: Role,
    dirty_tracking: bool,
) -> (AgentNode, StepServer) {
    let session = ZenohOptions::secured(tls_dir, vec![], vec![endpoint.to_string()])
        .open(keys)
        .await
        .unwrap();
    let executor = Arc::new(Scripted {
        agent: id.into(),
        world: world.clone(),
        session: session.clone(),
        keys: keys.clone(),
    });
    let server = StepServer::start(&session, keys, id, executor)
        .await
        .unwrap();
    let node = AgentNode::start(
        session,
        keys.clone(),
        profile(id, role, dirty_tracking),
        Duration::from_secs(3600),
        Arc::new(CgroupProbe::default()),
    )
    .await
    .unwrap();
    (node, server)
}

/// Three agents (edge1, edge2, drone) and an orchestrator with its HTTP API, over loopback.
struct Rig {
    world: Arc<World>,
    keys: KeySpace,
    orch: Session,
    registry: Registry,
    endpoint: String,
    client: ApiClient,
    /// The HTTP API's address, for raw calls.
    http: std::net::SocketAddr,
    /// The HTTP API's one token (operator `ops`), which `client` sends.
    token: ApiToken,
    migrations: Migrations,
    services: Services,
    _agents: Vec<(AgentNode, StepServer)>,
    /// The members' certificates: the orchestrator, edge1, edge2, drone, car and operator `ops`.
    domain: TestDomain,
}

impl Rig {
    async fn start(store: Store, config: DriverConfig) -> Self {
        Self::start_with(store, config, false, AddressPool::default()).await
    }

    /// `dirty_tracking`: what every host's profile says about soft-dirty tracking; `pool`: the
    /// addresses services are deployed with.
    async fn start_with(
        store: Store,
        config: DriverConfig,
        dirty_tracking: bool,
        pool: AddressPool,
    ) -> Self {
        let endpoint = tls_loopback();
        let keys = KeySpace::default();
        let rig_domain = TestDomain::new(&[
            (MemberRole::Orchestrator, "orchestrator"),
            (MemberRole::Edge, "edge1"),
            (MemberRole::Edge, "edge2"),
            (MemberRole::Mobile, "drone"),
            (MemberRole::Mobile, "car"),
            (MemberRole::Operator, "ops"),
        ]);
        let orch = ZenohOptions::secured(
            rig_domain.tls_dir(MemberRole::Orchestrator, "orchestrator"),
            vec![endpoint.clone()],
            vec![],
        )
        .open(&keys)
        .await
        .unwrap();
        let registry = Registry::start(&orch, keys.clone(), RegistryOptions::default())
            .await
            .unwrap();
        let world = Arc::new(World::default());
        let mut agents = Vec::new();
        for (id, role) in [
            ("edge1", Role::Edge),
            ("edge2", Role::Edge),
            ("drone", Role::Mobile),
        ] {
            let tls_dir = rig_domain.tls_dir(role.into(), id);
            agents.push(
                start_agent(tls_dir, &endpoint, &keys, &world, id, role, dirty_tracking).await,
            );
        }
        let view = registry.view();
        let ready = view
            .wait_until(Duration::from_secs(10), |m| {
                m.len() == 3 && m.values().all(|a| a.profile.is_some())
            })
            .await;
        assert!(ready, "agents never showed up: {:?}", view.list());
        let migrations = Migrations::start(orch.clone(), keys.clone(), view.clone(), store, config)
            .await
            .unwrap();
        let services = Services::new(migrations.clone(), pool);
        // As mose-orchestrator does at start.
        tokio::spawn({
            let services = services.clone();
            async move { services.reconcile().await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let token = ApiToken::generate().unwrap();
        tokio::spawn(api::serve(
            listener,
            ApiState {
                agents: view,
                services: services.clone(),
                migrations: migrations.clone(),
                auth: Arc::new(ApiAuth::new(
                    ApiTokens::single("ops", token.clone()),
                    vec![],
                )),
            },
            std::future::pending(),
        ));
        Self {
            world,
            keys,
            orch,
            registry,
            endpoint,
            client: ApiClient::new(&format!("http://{http}"), Some(&token)),
            token,
            http,
            migrations,
            services,
            _agents: agents,
            domain: rig_domain,
        }
    }

    /// Submits a migration of `counter` edge1 → edge2 with the drone's flow following.
    async fn submit(&self) -> TaskRecord {
        // The first get after a remote queryable appears can find nothing: retry briefly.
        let start = Instant::now();
        loop {
            match self.client.submit(&request()).await {
                Ok(task) => return task,
                Err(ClientError::Api {
                    status: 502,
                    message,
                    ..
                }) if start.elapsed() < Duration::from_secs(5) => {
                    eprintln!("retrying submit: {message}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("submit failed: {e}"),
            }
        }
    }

    /// Polls the task over HTTP until it has finished.
    async fn wait_finished(&self, id: &str) -> TaskRecord {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let task = self.client.migration(id).await.unwrap();
            if task.status.is_finished() {
                return task;
            }
            assert!(Instant::now() < deadline, "task never finished: {task:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn request() -> MigrationRequest {
    MigrationRequest {
        service: "counter".into(),
        source: Some("edge1".into()),
        destination: "edge2".into(),
        mobiles: Some(vec!["drone".into()]),
        objective: Objective::Downtime,
        target_downtime_ms: 1000.0,
        target_duration_ms: 5000.0,
        bandwidth_bytes_per_s: None,
    }
}

const HAPPY: [&str; 7] = [
    "edge1:describe",
    "edge2:prepare",
    "edge1:checkpoint",
    "edge2:restore",
    "drone:switch-flow->edge2",
    "edge2:resend",
    "edge1:release",
];

#[tokio::test(flavor = "multi_thread")]
async fn happy_path_runs_coat_in_order_and_reports() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let tasks = rig
        .orch
        .declare_subscriber(rig.keys.task("*"))
        .await
        .unwrap();

    let accepted = rig.submit().await;
    assert_eq!(accepted.status, TaskStatus::Queued);
    assert!(
        accepted.plan.explanation.contains("not calibrated"),
        "{}",
        accepted.plan.explanation
    );
    assert_eq!(accepted.inputs.state_bytes, 10 << 20);

    let done = rig.wait_finished(&accepted.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:#?}");
    assert_eq!(done.error, None);
    assert_eq!(rig.world.calls(&done.id), HAPPY);
    assert!(done.progress.past_point_of_no_return());

    // The task was published with its plan for the agents.
    let sample = tokio::time::timeout(Duration::from_secs(5), tasks.recv_async())
        .await
        .unwrap()
        .unwrap();
    let published: Task = decode(&sample.payload().to_bytes()).unwrap();
    assert_eq!(published.id, done.id);
    assert_eq!(published.plan, done.plan);

    // Phases from the orchestrator and from the destination agent, with measurements.
    let phases: Vec<Phase> = [
        Phase::Prepare,
        Phase::Checkpoint,
        Phase::Transfer,
        Phase::Restore,
        Phase::FlowSwitch,
        Phase::Cleanup,
    ]
    .into_iter()
    .filter(|p| !done.measurements.phases_ms.contains_key(p))
    .collect();
    assert!(
        phases.is_empty(),
        "phases without a time: {phases:?} in {:?}",
        done.measurements
    );
    assert!(done
        .events
        .iter()
        .any(|e| e.agent == "edge2" && e.phase == Phase::Transfer));
    assert_eq!(done.measurements.image_bytes, Some(1 << 20));
    assert!(done.measurements.frozen_ms.is_some() && done.measurements.total_ms.is_some());

    // Listed, and counted in the metrics.
    let list = rig.client.migrations().await.unwrap();
    assert_eq!(list.len(), 1);
    let metrics = rig.client.text("/metrics").await.unwrap();
    assert!(
        metrics.contains("mose_migrations_total{strategy=\"cold\",outcome=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mose_agents_online{role=\"edge\"} 2"),
        "{metrics}"
    );
    let openapi = rig.client.text("/openapi.json").await.unwrap();
    assert!(openapi.contains("/v1/migrations/{id}"));

    // A finished task cannot be cancelled.
    match rig.client.cancel(&done.id).await {
        Err(ClientError::Api { status: 409, .. }) => {}
        other => panic!("expected 409, got {other:?}"),
    }
    drop(rig.registry);
}

#[tokio::test(flavor = "multi_thread")]
async fn precopy_plans_run_pre_dumps_before_the_final_checkpoint() {
    // Hosts with dirty tracking and the downtime objective: the designer picks pre-copy, and
    // the driver runs its rounds as pre-dumps while the service keeps running, each fetched
    // by the destination before the next.
    let rig = Rig::start_with(
        Store::in_memory().unwrap(),
        test_config(),
        true,
        AddressPool::default(),
    )
    .await;
    let task = rig.submit().await;
    assert!(task.plan.rounds >= 1, "{:#?}", task.plan);
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:#?}");
    let calls = rig.world.calls(&task.id);
    let rounds = task.plan.rounds as usize;
    assert_eq!(calls[..2], HAPPY[..2]);
    let pre_copy: Vec<String> = (0..rounds)
        .flat_map(|i| {
            [
                format!("edge1:pre-dump({i})"),
                format!("edge2:fetch(round-{i})"),
            ]
        })
        .collect();
    let n = 2 * rounds;
    assert_eq!(calls[2..2 + n], pre_copy, "{calls:?}");
    // The final checkpoint on top of every round, then a restore of all of them (each
    // builds on the last).
    assert_eq!(calls[2 + n], format!("edge1:checkpoint(rounds {rounds})"));
    assert_eq!(calls[3 + n], format!("edge2:restore(rounds {rounds})"));
    assert_eq!(calls[4 + n..], HAPPY[4..]);
    assert!(done.measurements.phases_ms.contains_key(&Phase::PreCopy));
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_rollback_or_release_cannot_repair_end_failed_after_retries() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let fail = |pairs: &[(&str, &str)]| Script {
        fail: pairs
            .iter()
            .map(|(a, o)| (a.to_string(), o.to_string()))
            .collect(),
        ..Script::default()
    };

    // The source cannot resume: the service may run nowhere, so the task says so loudly.
    rig.world
        .set(fail(&[("edge2", "restore"), ("edge1", "resume")]));
    let task = rig.submit().await;
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::Failed, "{done:#?}");
    let error = done.error.unwrap();
    assert!(
        error.contains("rollback incomplete") && error.contains("resume on edge1 failed 2 times"),
        "{error}"
    );
    let calls = rig.world.calls(&task.id);
    assert_eq!(
        calls.iter().filter(|c| *c == "edge1:resume").count(),
        2,
        "retried: {calls:?}"
    );

    // Past the point of no return the source is only ever released, never resumed.
    rig.world.set(fail(&[("edge1", "release")]));
    let task = rig.submit().await;
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::Failed, "{done:#?}");
    assert!(done
        .error
        .unwrap()
        .contains("runs at edge2, but edge1 did not release"));
    let calls = rig.world.calls(&task.id);
    assert_eq!(calls[..HAPPY.len()], HAPPY);
    assert_eq!(calls[HAPPY.len()..], ["edge1:release"]);
    assert!(!calls
        .iter()
        .any(|c| c.ends_with("resume") || c.ends_with("abort")));
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_at_each_step_before_the_point_of_no_return_rolls_back() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    for (agent, op) in [
        ("edge2", "prepare"),
        ("edge1", "checkpoint"),
        ("edge2", "restore"),
        ("drone", "switch-flow->edge2"),
    ] {
        rig.world.set(Script {
            fail: vec![(agent.into(), op.into())],
            ..Script::default()
        });
        let task = rig.submit().await;
        let done = rig.wait_finished(&task.id).await;
        assert_eq!(done.status, TaskStatus::RolledBack, "{op}: {done:#?}");
        assert!(
            done.error.as_deref().unwrap().contains("scripted failure"),
            "{:?}",
            done.error
        );

        let calls = rig.world.calls(&task.id);
        let failed_at = calls
            .iter()
            .position(|c| c.starts_with(&format!("{agent}:{op}")))
            .unwrap();
        let mut expected: Vec<String> = HAPPY[..=failed_at].iter().map(|s| s.to_string()).collect();
        expected.push("edge2:abort".into());
        expected.push("edge1:resume".into());
        if agent == "drone" {
            // The switch may have happened: the flow goes back, after the source resumed.
            expected.push("drone:switch-flow->edge1".into());
        }
        // The resumed source nudges the clients its checkpoint swallowed requests of.
        expected.push("edge1:resend".into());
        assert_eq!(calls, expected, "failure at {op}");
        assert!(
            !calls.iter().any(|c| c.ends_with("release")),
            "nothing is released at the source"
        );
    }
}

/// Two mobiles: both switch at once; when one of them fails, the rollback switches both back
/// (the one that moved and the one that may have), after the source resumed.
#[tokio::test(flavor = "multi_thread")]
async fn one_mobile_failing_its_switch_rolls_back_every_mobile() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let _car = start_agent(
        rig.domain.tls_dir(MemberRole::Mobile, "car"),
        &rig.endpoint,
        &rig.keys,
        &rig.world,
        "car",
        Role::Mobile,
        false,
    )
    .await;
    let view = rig.registry.view();
    assert!(
        view.wait_until(Duration::from_secs(10), |m| m.len() == 4)
            .await,
        "the second mobile never showed up"
    );
    rig.world.set(Script {
        fail: vec![("car".into(), "switch-flow->edge2".into())],
        ..Script::default()
    });
    let both = MigrationRequest {
        mobiles: Some(vec!["drone".into(), "car".into()]),
        ..request()
    };
    let task = rig.client.submit(&both).await.unwrap();
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::RolledBack, "{done:#?}");
    let calls = rig.world.calls(&task.id);
    let at = |call: &str| {
        calls
            .iter()
            .position(|c| c == call)
            .unwrap_or_else(|| panic!("no {call} in {calls:?}"))
    };
    for mobile in ["drone", "car"] {
        assert!(
            at(&format!("{mobile}:switch-flow->edge2")) < at("edge1:resume"),
            "{calls:?}"
        );
        assert!(
            at("edge1:resume") < at(&format!("{mobile}:switch-flow->edge1")),
            "{mobile} switched back after the source resumed: {calls:?}"
        );
    }
    for mobile in ["drone", "car"] {
        let events: Vec<_> = done
            .events
            .iter()
            .filter(|e| e.agent == mobile && e.phase == Phase::FlowSwitch)
            .map(|e| e.status.clone())
            .collect();
        assert_eq!(
            events.len(),
            2,
            "one started/ended pair per mobile: {events:?}"
        );
    }
    assert!(!calls.iter().any(|c| c.ends_with("release")), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_never_finishes_times_out_and_rolls_back() {
    let mut config = test_config();
    config.timeouts.restore = Duration::from_millis(300);
    let rig = Rig::start(Store::in_memory().unwrap(), config).await;
    rig.world.set(Script {
        hang: Some(("edge2".into(), "restore".into())),
        ..Script::default()
    });
    let task = rig.submit().await;
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::RolledBack, "{done:#?}");
    assert!(
        done.error.as_deref().unwrap().contains("within"),
        "{:?}",
        done.error
    );
    let calls = rig.world.calls(&task.id);
    assert_eq!(
        calls[calls.len() - 3..],
        ["edge2:abort", "edge1:resume", "edge1:resend"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_dies_mid_restore_never_answers_and_the_source_resumes() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    rig.world.set(Script {
        die: Some(("edge2".into(), "restore".into())),
        ..Script::default()
    });
    let task = rig.submit().await;
    let done = rig.wait_finished(&task.id).await;
    // The source runs again; the dead destination could not confirm its cleanup, and says so.
    assert_eq!(done.status, TaskStatus::RolledBack, "{done:#?}");
    let error = done.error.unwrap();
    assert!(
        error.contains("edge2 is gone: no answer to 'restore'"),
        "{error}"
    );
    assert!(error.contains("edge2 may keep leftovers"), "{error}");
    let calls = rig.world.calls(&task.id);
    assert_eq!(calls[calls.len() - 2..], ["edge1:resume", "edge1:resend"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rollback_waits_for_a_source_agent_that_restarts() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    // The source's agent dies after it froze the service: nothing answers the checkpoint.
    rig.world.set(Script {
        die: Some(("edge1".into(), "checkpoint".into())),
        ..Script::default()
    });
    let task = rig.submit().await;
    // Its retries alone (2 attempts, 50 ms apart) would have given up long before this.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = rig.client.migration(&task.id).await.unwrap();
    assert!(!now.status.is_finished(), "gave up on the source: {now:#?}");
    rig.world.set(Script::default());
    let _back = start_agent(
        rig.domain.tls_dir(MemberRole::Edge, "edge1"),
        &rig.endpoint,
        &rig.keys,
        &rig.world,
        "edge1",
        Role::Edge,
        false,
    )
    .await;
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::RolledBack, "{done:#?}");
    let calls = rig.world.calls(&task.id);
    assert_eq!(
        calls[calls.len() - 2..],
        ["edge1:resume", "edge1:resend"],
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_rolls_back() {
    let mut config = test_config();
    config.timeouts.restore = Duration::from_secs(30);
    let rig = Rig::start(Store::in_memory().unwrap(), config).await;
    rig.world.set(Script {
        hang: Some(("edge2".into(), "restore".into())),
        ..Script::default()
    });
    let task = rig.submit().await;
    // Cancel once the restore is under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rig
        .world
        .calls(&task.id)
        .contains(&"edge2:restore".to_string())
    {
        assert!(Instant::now() < deadline, "restore never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let cancelled = rig.client.cancel(&task.id).await.unwrap();
    assert_eq!(cancelled.id, task.id);
    let done = rig.wait_finished(&task.id).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancel waited for the step timeout"
    );
    assert_eq!(done.status, TaskStatus::Cancelled, "{done:#?}");
    let calls = rig.world.calls(&task.id);
    assert_eq!(
        calls[calls.len() - 3..],
        ["edge2:abort", "edge1:resume", "edge1:resend"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_orchestrator_reconciles_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.sqlite");
    // What a crashed orchestrator left behind: one task switched-or-not (before the point of no
    // return), one restored and switched (past it).
    {
        let rig = Rig::start(Store::open(&path).unwrap(), test_config()).await;
        let template = rig.submit().await;
        rig.wait_finished(&template.id).await;
        let store = Store::open(&path).unwrap();
        let mut before = template.clone();
        before.id = "crashed-before".into();
        before.status = TaskStatus::Running;
        before.progress.restored = true;
        before.progress.switch_attempted = true;
        store.save(&before).unwrap();
        let mut after = before.clone();
        after.id = "crashed-after".into();
        after.progress.switched = true;
        store.save(&after).unwrap();
        // The service is a deployed one, its record still at the source.
        store
            .save_service(&ServiceRecord {
                name: "counter".into(),
                image: "localhost/mose/counter:latest".into(),
                host: "edge1".into(),
                args: vec![],
                env: BTreeMap::new(),
                volumes: Vec::new(),
                mobiles: vec!["drone".into()],
                network: spec().network,
                status: ServiceStatus::Running,
                last_migration: Some("crashed-after".into()),
                created_us: 1,
                updated_us: 1,
            })
            .unwrap();
    }

    let rig = Rig::start(Store::open(&path).unwrap(), test_config()).await;
    let before = rig.wait_finished("crashed-before").await;
    assert_eq!(before.status, TaskStatus::RolledBack, "{before:#?}");
    assert!(before.error.unwrap().contains("restarted"));
    assert_eq!(
        rig.world.calls("crashed-before"),
        [
            "edge2:abort",
            "edge1:resume",
            "drone:switch-flow->edge1",
            "edge1:resend"
        ]
    );
    let after = rig.wait_finished("crashed-after").await;
    assert_eq!(after.status, TaskStatus::Succeeded, "{after:#?}");
    assert_eq!(rig.world.calls("crashed-after"), ["edge1:release"]);
    let store = Store::open(&path).unwrap();
    assert!(store.unfinished().unwrap().is_empty());
    assert_eq!(
        store.service("counter").unwrap().unwrap().host,
        "edge2",
        "a task reconciled past its point of no return moves the service's record"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_submissions_get_clear_4xx() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let refused = |status: u16, needle: &'static str| {
        move |r: Result<TaskRecord, ClientError>| match r {
            Err(ClientError::Api {
                status: s, message, ..
            }) if s == status => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("expected {status} containing '{needle}', got {other:?}"),
        }
    };
    let with = |change: fn(&mut MigrationRequest)| {
        let mut r = request();
        change(&mut r);
        r
    };
    // Unknown service: the source's own reason comes back, as a conflict with the source's
    // state (its kind is wrong_state).
    refused(409, "no container named 'ghost'")(
        rig.client
            .submit(&with(|r| r.service = "ghost".into()))
            .await,
    );
    refused(422, "'edge9' is not a present agent")(
        rig.client
            .submit(&with(|r| r.destination = "edge9".into()))
            .await,
    );
    refused(400, "must be edge")(
        rig.client
            .submit(&with(|r| {
                r.source = Some("drone".into());
                r.mobiles = None;
            }))
            .await,
    );
    refused(400, "nothing to migrate")(
        rig.client
            .submit(&with(|r| r.destination = "edge1".into()))
            .await,
    );
    refused(400, "target_duration_ms")(
        rig.client
            .submit(&with(|r| r.target_duration_ms = -1.0))
            .await,
    );
    refused(404, "no migration 'nope'")(rig.client.migration("nope").await);
    assert!(
        rig.migrations.list().unwrap().is_empty(),
        "refused tasks are not stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_calls_work_over_zenoh() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let _server = QueryServer::start(
        &rig.orch,
        &rig.keys,
        rig.migrations.clone(),
        rig.services.clone(),
    )
    .await
    .unwrap();
    let caller = ZenohOptions::secured(
        rig.domain.tls_dir(MemberRole::Operator, "ops"),
        vec![],
        vec![rig.endpoint.clone()],
    )
    .open(&rig.keys)
    .await
    .unwrap();
    let ask = |op: &'static str, body: Vec<u8>| {
        let (caller, key) = (caller.clone(), rig.keys.orchestrator_rpc(op));
        async move {
            let start = Instant::now();
            loop {
                let replies = caller.get(&key).payload(body.clone()).await.unwrap();
                match replies.recv_async().await {
                    Ok(reply) => {
                        return reply
                            .result()
                            .map(|s| s.payload().to_bytes().into_owned())
                            .map_err(|e| e.payload().to_bytes().into_owned())
                    }
                    // No queryable seen yet: retry briefly.
                    Err(_) if start.elapsed() < Duration::from_secs(5) => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("no reply to {op}: {e}"),
                }
            }
        }
    };
    let task: TaskRecord = serde_json::from_slice(
        &ask("submit", serde_json::to_vec(&request()).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded);
    let id = serde_json::to_vec(&BTreeMap::from([("id", task.id.clone())])).unwrap();
    let inspected: TaskRecord =
        serde_json::from_slice(&ask("inspect", id.clone()).await.unwrap()).unwrap();
    assert_eq!(inspected.status, TaskStatus::Succeeded);
    let list: Vec<TaskRecord> =
        serde_json::from_slice(&ask("list", vec![]).await.unwrap()).unwrap();
    assert_eq!(list.len(), 1);
    let err: serde_json::Value =
        serde_json::from_slice(&ask("cancel", id).await.unwrap_err()).unwrap();
    assert_eq!(
        (err["status"].as_u64(), err["reason"].as_str()),
        (Some(409), Some("finished")),
        "{err}"
    );
    let err: serde_json::Value =
        serde_json::from_slice(&ask("submit", b"{not json".to_vec()).await.unwrap_err()).unwrap();
    assert_eq!(err["status"], 400, "{err}");
    assert_eq!(err["reason"], "invalid_request", "{err}");

    // The service calls.
    let deployed: ServiceRecord = serde_json::from_slice(
        &ask("deploy", serde_json::to_vec(&deploy_request("kv")).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(deployed.status, ServiceStatus::Running);
    let all: Vec<ServiceRecord> =
        serde_json::from_slice(&ask("services", vec![]).await.unwrap()).unwrap();
    assert_eq!(all, vec![deployed]);
    let name = serde_json::to_vec(&BTreeMap::from([("name", "kv")])).unwrap();
    let view: serde_json::Value =
        serde_json::from_slice(&ask("service", name.clone()).await.unwrap()).unwrap();
    assert_eq!(view["host"], "edge1", "{view}");
    ask("remove", name.clone()).await.unwrap();
    let err: serde_json::Value =
        serde_json::from_slice(&ask("remove", name).await.unwrap_err()).unwrap();
    assert_eq!(
        (err["status"].as_u64(), err["reason"].as_str()),
        (Some(404), Some("no_such_service")),
        "{err}"
    );
}

/// Every call any agent received, as "agent:op", in order.
fn all_calls(world: &World) -> Vec<String> {
    world
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, a, op)| format!("{a}:{op}"))
        .collect()
}

fn deploy_request(name: &str) -> DeployRequest {
    DeployRequest {
        name: name.into(),
        image: "localhost/mose/counter:latest".into(),
        host: "edge1".into(),
        args: vec![],
        env: BTreeMap::new(),
        volumes: Vec::new(),
        mobiles: None,
    }
}

/// Asserts `r` is an API error with `status` whose message contains `needle`; returns its
/// reason.
fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, ClientError>,
    status: u16,
    needle: &str,
) -> Option<Reason> {
    match r {
        Err(ClientError::Api {
            status: s,
            message,
            reason,
            ..
        }) if s == status => {
            assert!(message.contains(needle), "{message}");
            reason
        }
        other => panic!("expected {status} containing '{needle}', got {other:?}"),
    }
}

impl Rig {
    /// Deploys, retrying while the first queries find no queryable yet (502).
    async fn deploy(&self, request: &DeployRequest) -> Result<ServiceRecord, ClientError> {
        let start = Instant::now();
        loop {
            match self.client.deploy(request).await {
                Err(ClientError::Api { status: 502, .. })
                    if start.elapsed() < Duration::from_secs(5)
                        && self.world.script.lock().unwrap().fail.is_empty() =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployed_service_migrates_by_name_and_its_record_follows() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let svc = rig.deploy(&deploy_request("counter")).await.unwrap();
    assert_eq!(svc.status, ServiceStatus::Running);
    assert_eq!(
        svc.network.ip,
        Ipv4Addr::new(10, 88, 0, 100),
        "first of the pool"
    );
    assert_eq!(svc.network.mac, [2, 0, 10, 88, 0, 100]);
    assert_eq!(svc.mobiles, ["drone"], "every mobile present by default");
    let calls = all_calls(&rig.world);
    assert!(
        calls.contains(&"edge1:deploy".to_string())
            && calls.contains(&"drone:switch-flow->edge1".to_string()),
        "{calls:?}"
    );
    assert_eq!(rig.client.services().await.unwrap(), vec![svc.clone()]);
    let view = rig.client.service("counter").await.unwrap();
    assert_eq!(
        view.state_bytes,
        Some(10 << 20),
        "live from the host's Describe"
    );
    assert_eq!(view.clients.len(), 1, "{view:?}");
    assert_eq!(view.migrating, None);

    // By name only: the source is the service's host, its mobiles follow.
    let by_name = MigrationRequest {
        source: None,
        mobiles: None,
        ..request()
    };
    let task = rig.client.submit(&by_name).await.unwrap();
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:#?}");
    assert_eq!(
        (done.route.source.as_str(), done.route.mobiles.clone()),
        ("edge1", vec!["drone".to_string()])
    );
    let moved = rig.client.service("counter").await.unwrap().record;
    assert_eq!(moved.host, "edge2", "the record moved with the service");
    assert_eq!(moved.last_migration.as_deref(), Some(task.id.as_str()));
    // A source that is no longer right is refused, not obeyed.
    assert_refused(
        rig.client.submit(&request()).await,
        409,
        "runs on edge2, not on edge1",
    );

    rig.client.remove_service("counter").await.unwrap();
    let calls = all_calls(&rig.world);
    assert!(
        calls.contains(&"drone:clear-flow".to_string())
            && calls.contains(&"edge2:remove".to_string()),
        "removed where it runs now: {calls:?}"
    );
    assert!(rig.client.services().await.unwrap().is_empty());
    assert_refused(
        rig.client.service("counter").await,
        404,
        "no service 'counter'",
    );
    assert_refused(
        rig.client.remove_service("counter").await,
        404,
        "no service",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_errors_are_clear_and_a_failed_deployment_leaves_nothing() {
    let pool: AddressPool = "10.88.0.100-10.88.0.100/24".parse().unwrap();
    let rig = Rig::start_with(Store::in_memory().unwrap(), test_config(), false, pool).await;
    rig.deploy(&deploy_request("counter")).await.unwrap();
    assert_refused(
        rig.deploy(&deploy_request("counter")).await,
        409,
        "already exists",
    );
    assert_refused(rig.deploy(&deploy_request("other")).await, 409, "exhausted");
    let on = |host: &str| DeployRequest {
        host: host.into(),
        ..deploy_request("other")
    };
    let unknown = assert_refused(rig.deploy(&on("edge9")).await, 422, "not a present agent");
    assert_eq!(unknown, Some(Reason::NoSuchAgent));
    assert_refused(rig.deploy(&on("drone")).await, 400, "must be edge");
    assert_refused(
        rig.deploy(&deploy_request("a/b")).await,
        400,
        "service name",
    );
    let no_image = DeployRequest {
        image: " ".into(),
        ..deploy_request("other")
    };
    assert_refused(rig.deploy(&no_image).await, 400, "not an image reference");
    let volumes = |specs: &[&str]| DeployRequest {
        volumes: specs
            .iter()
            .map(|s| {
                let (name, path) = s.split_once(':').unwrap();
                VolumeMount {
                    name: name.into(),
                    path: path.into(),
                }
            })
            .collect(),
        ..deploy_request("other")
    };
    assert_refused(
        rig.deploy(&volumes(&["a.b:/x"])).await,
        400,
        "volume name \"a.b\"",
    );
    assert_refused(
        rig.deploy(&volumes(&["data:/x", "data:/y"])).await,
        400,
        "given twice",
    );

    // The address comes free with the removal; a host failing Deploy leaves no record, no
    // address taken, and is told to remove what it made.
    rig.client.remove_service("counter").await.unwrap();
    rig.world.set(Script {
        fail: vec![("edge1".into(), "deploy".into())],
        ..Script::default()
    });
    assert_refused(
        rig.deploy(&deploy_request("counter")).await,
        502,
        "scripted failure",
    );
    assert!(rig.client.services().await.unwrap().is_empty());
    assert_eq!(
        all_calls(&rig.world).last().map(String::as_str),
        Some("edge1:remove")
    );
    rig.world.set(Script::default());
    let again = rig.deploy(&deploy_request("counter")).await.unwrap();
    assert_eq!(again.network.ip, Ipv4Addr::new(10, 88, 0, 100), "reused");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_plans_without_running_or_storing() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let start = Instant::now();
    let plan = loop {
        match rig.client.plan(&request()).await {
            Ok(plan) => break plan,
            Err(ClientError::Api { status: 502, .. })
                if start.elapsed() < Duration::from_secs(5) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("dry run: {e}"),
        }
    };
    assert_eq!(plan.status, TaskStatus::Queued);
    assert!(plan.plan.predicted_downtime_s > 0.0, "{:?}", plan.plan);
    assert_eq!(
        plan.inputs.state_bytes,
        10 << 20,
        "M from the source's Describe"
    );
    assert!(
        rig.client.migrations().await.unwrap().is_empty(),
        "nothing stored"
    );
    let calls = rig.world.calls(&plan.id);
    assert_eq!(calls, ["edge1:describe"], "only the Describe ran");
    // A dry run is checked like a submission.
    let bad = MigrationRequest {
        destination: "edge1".into(),
        ..request()
    };
    assert_refused(rig.client.plan(&bad).await, 400, "nothing to migrate");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migrations_events_stream_while_it_runs_and_end_with_it() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    // The restore hangs until its timeout: the task runs for seconds, then rolls back.
    rig.world.set(Script {
        hang: Some(("edge2".into(), "restore".into())),
        ..Script::default()
    });
    let task = rig.submit().await;
    let mut stream = rig.client.events(&task.id).await.unwrap();
    let first = stream.next().await.unwrap().expect("a first event");
    match &first {
        MigrationEvent::Phase { index: 0, event } => assert_eq!(event.phase, Phase::Prepare),
        other => panic!("{other:?}"),
    }
    assert!(
        !rig.client
            .migration(&task.id)
            .await
            .unwrap()
            .status
            .is_finished(),
        "the first event arrived while the migration ran"
    );
    let mut phases = 1;
    let end = loop {
        match stream
            .next()
            .await
            .unwrap()
            .expect("the stream ends with `end`")
        {
            MigrationEvent::Phase { index, .. } => {
                assert_eq!(index, phases, "in order, none missed");
                phases += 1;
            }
            MigrationEvent::End(record) => break *record,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        stream.next().await.unwrap().is_none(),
        "nothing after the end"
    );
    assert_eq!(end.status, TaskStatus::RolledBack, "{end:#?}");
    assert_eq!(phases, end.events.len(), "every event of the task, once");
    // A finished task's stream replays its events and ends at once.
    let mut replay = rig.client.events(&task.id).await.unwrap();
    let mut replayed = Vec::new();
    while let Some(e) = replay.next().await.unwrap() {
        replayed.push(e);
    }
    assert_eq!(replayed.len(), end.events.len() + 1);
    assert!(matches!(replayed.last(), Some(MigrationEvent::End(_))));
    assert_refused(
        rig.client.events("nope").await.map(drop),
        404,
        "no migration",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_without_the_image_gets_it_before_the_freeze() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    rig.world.set(Script {
        image_absent: Some("edge2".into()),
        ..Script::default()
    });
    let task = rig.submit().await;
    let done = rig.wait_finished(&task.id).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:#?}");
    let calls = rig.world.calls(&done.id);
    let at = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c}: {calls:?}"))
    };
    assert!(at("edge2:prepare") < at("edge1:export-image"));
    assert!(at("edge1:export-image") < at("edge2:fetch(container)"));
    assert!(
        at("edge2:fetch(container)") < at("edge1:checkpoint"),
        "the image moves before the freeze: {calls:?}"
    );
    assert!(
        done.measurements.phases_ms.contains_key(&Phase::Image),
        "{:?}",
        done.measurements
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_task_list_pages_and_filters() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let first = rig.submit().await;
    rig.wait_finished(&first.id).await;
    let back = MigrationRequest {
        source: Some("edge2".into()),
        destination: "edge1".into(),
        ..request()
    };
    let second = rig.client.submit(&back).await.unwrap();
    rig.wait_finished(&second.id).await;

    let (page, next) = rig.client.migrations_page(&[("limit", "1")]).await.unwrap();
    assert_eq!(page.iter().map(|t| &t.id).collect::<Vec<_>>(), [&second.id]);
    let token = next.expect("a next page");
    let (page, next) = rig
        .client
        .migrations_page(&[("limit", "1"), ("after", &token)])
        .await
        .unwrap();
    assert_eq!(page.iter().map(|t| &t.id).collect::<Vec<_>>(), [&first.id]);
    assert_eq!(next, None, "the last page");
    let (page, _) = rig
        .client
        .migrations_page(&[("status", "succeeded"), ("service", "counter")])
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    let (page, _) = rig
        .client
        .migrations_page(&[("service", "other")])
        .await
        .unwrap();
    assert!(page.is_empty());
    let bad = rig.client.migrations_page(&[("limit", "0")]).await;
    assert_eq!(
        assert_refused(bad, 400, "limit"),
        Some(Reason::InvalidRequest)
    );
    let bad = rig.client.migrations_page(&[("after", "x")]).await;
    assert_eq!(
        assert_refused(bad, 400, "page token"),
        Some(Reason::InvalidRequest)
    );
    let bad = rig.client.migrations_page(&[("status", "sleeping")]).await;
    assert_refused(bad, 400, "invalid query");
    // Retention: finished records older than it go, here all of them.
    assert_eq!(rig.migrations.prune(Duration::ZERO).unwrap(), 2);
    assert!(rig.client.migrations().await.unwrap().is_empty());
}

/// A caller without the token (none, a wrong one, another scheme) gets 401 and changes
/// nothing; a Host that is neither an IP literal nor allowed gets 421; health and the API's
/// description stay public; the real token works, and the answers are in the OpenAPI document.
#[tokio::test(flavor = "multi_thread")]
async fn the_http_api_refuses_callers_without_a_token() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let base = format!("http://{}", rig.http);
    let http = reqwest::Client::new();
    let doc: serde_json::Value =
        serde_json::from_str(&rig.client.text("/openapi.json").await.unwrap()).unwrap();
    let conformance = Conformance { doc: &doc };
    let submit = serde_json::to_value(request()).unwrap();
    let wrong = ApiToken::generate().unwrap();
    let stranger = ApiClient::new(&base, Some(&wrong));
    let anonymous = ApiClient::new(&base, None);
    for client in [&stranger, &anonymous] {
        for refused in [
            client.agents().await.map(drop),
            client.submit(&request()).await.map(drop),
            client.deploy(&deploy_request("counter")).await.map(drop),
            client.cancel("anything").await.map(drop),
            client.remove_service("counter").await,
            client.text("/metrics").await.map(drop),
        ] {
            assert_refused(refused, 401, "bearer token");
        }
    }
    for (method, route, auth) in [
        (reqwest::Method::GET, "/v1/agents", None),
        (
            reqwest::Method::POST,
            "/v1/migrations",
            Some(format!("Basic {}", rig.token.expose())),
        ),
        (
            reqwest::Method::POST,
            "/v1/migrations",
            Some(format!("Bearer {}x", rig.token.expose())),
        ),
    ] {
        let mut call = http
            .request(method.clone(), format!("{base}{route}"))
            .json(&submit);
        if let Some(auth) = auth {
            call = call.header(reqwest::header::AUTHORIZATION, auth);
        }
        let answer = call.send().await.unwrap();
        assert_eq!(answer.status(), 401);
        assert_eq!(
            answer.headers()[reqwest::header::WWW_AUTHENTICATE],
            "Bearer"
        );
        let ct = answer.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = answer.text().await.unwrap();
        assert!(body.contains("\"unauthorized\""), "{body}");
        conformance.check(
            &method.as_str().to_lowercase(),
            route,
            &(401, Some(ct), body),
        );
    }
    assert!(
        rig.migrations.list().unwrap().is_empty(),
        "no task was created"
    );
    assert!(
        rig.services.list().unwrap().is_empty(),
        "no service was deployed"
    );

    // DNS rebinding: a page of evil.example whose name now resolves to the API.
    let rebound = http
        .get(format!("{base}/v1/agents"))
        .bearer_auth(rig.token.expose())
        .header(reqwest::header::HOST, "evil.example:7070")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
    let ct = rebound.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    conformance.check(
        "get",
        "/v1/agents",
        &(421, Some(ct), rebound.text().await.unwrap()),
    );

    for public in ["/healthz", "/openapi.json"] {
        assert_eq!(
            anonymous.text(public).await.map(drop).ok(),
            Some(()),
            "{public}"
        );
    }
    assert_eq!(rig.client.agents().await.unwrap().len(), 3);
}

/// The OpenAPI document describes what the API really answers: every route is called on the
/// running orchestrator (successes and refusals, a queued task, a dry run, the event stream's
/// events) and each body is validated against the schema the document gives for that route,
/// method, status and content type.
#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_what_its_openapi_document_says() {
    let rig = Rig::start(Store::in_memory().unwrap(), test_config()).await;
    let base = format!("http://{}", rig.http);
    let http = reqwest::Client::new();
    let doc: serde_json::Value =
        serde_json::from_str(&rig.client.text("/openapi.json").await.unwrap()).unwrap();
    let conformance = Conformance { doc: &doc };
    let call = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(rig.token.expose());
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string());
            (status, content_type, response.text().await.unwrap())
        }
    };
    use reqwest::Method as M;
    let mut checked = Vec::new();
    let mut check = |method: &str, route: &str, answer: (u16, Option<String>, String)| {
        conformance.check(method, route, &answer);
        checked.push(format!("{method} {route} {}", answer.0));
        answer
    };

    check(
        "get",
        "/healthz",
        call(M::GET, "/healthz".into(), None).await,
    );
    check(
        "get",
        "/openapi.json",
        call(M::GET, "/openapi.json".into(), None).await,
    );
    check(
        "get",
        "/metrics",
        call(M::GET, "/metrics".into(), None).await,
    );
    check(
        "get",
        "/v1/agents",
        call(M::GET, "/v1/agents".into(), None).await,
    );
    check(
        "get",
        "/v1/agents/{id}",
        call(M::GET, "/v1/agents/edge1".into(), None).await,
    );
    check(
        "get",
        "/v1/agents/{id}",
        call(M::GET, "/v1/agents/nope".into(), None).await,
    );

    // Services: deployed (the first queries may find no queryable yet: 502, retried).
    let deploy = serde_json::to_value(deploy_request("counter")).unwrap();
    let start = Instant::now();
    let deployed = loop {
        let answer = call(M::POST, "/v1/services".into(), Some(deploy.clone())).await;
        if answer.0 != 502 || start.elapsed() > Duration::from_secs(5) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(deployed.0, 201, "{}", deployed.2);
    check("post", "/v1/services", deployed);
    let twice = call(M::POST, "/v1/services".into(), Some(deploy)).await;
    assert_eq!(twice.0, 409);
    check("post", "/v1/services", twice);
    let bad = call(
        M::POST,
        "/v1/services".into(),
        Some(serde_json::json!({"name": 1})),
    )
    .await;
    assert_eq!(bad.0, 400);
    check("post", "/v1/services", bad);
    check(
        "get",
        "/v1/services",
        call(M::GET, "/v1/services".into(), None).await,
    );
    let one = call(M::GET, "/v1/services/counter".into(), None).await;
    assert_eq!(one.0, 200, "{}", one.2);
    check("get", "/v1/services/{name}", one);
    check(
        "get",
        "/v1/services/{name}",
        call(M::GET, "/v1/services/nope".into(), None).await,
    );

    // Migrations: a dry run, a queued task, its stream, the list, one, a cancel too late.
    let by_name = serde_json::json!({"service": "counter", "destination": "edge2",
        "target_downtime_ms": 1000.0, "target_duration_ms": 5000.0});
    let plan = call(
        M::POST,
        "/v1/migrations?dry_run=true".into(),
        Some(by_name.clone()),
    )
    .await;
    assert_eq!(plan.0, 200, "{}", plan.2);
    check("post", "/v1/migrations", plan);
    let accepted = call(M::POST, "/v1/migrations".into(), Some(by_name)).await;
    assert_eq!(accepted.0, 201, "{}", accepted.2);
    let task: TaskRecord = serde_json::from_str(&accepted.2).unwrap();
    assert_eq!(
        task.status,
        TaskStatus::Queued,
        "the answer is the queued task"
    );
    check("post", "/v1/migrations", accepted);
    let events = call(M::GET, format!("/v1/migrations/{}/events", task.id), None).await;
    let (mut phases, mut ends) = (0, 0);
    for block in events.2.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim_start))
                .unwrap_or_default()
        };
        let data: serde_json::Value = serde_json::from_str(field("data:")).unwrap();
        match field("event:") {
            "phase" => {
                conformance.check_schema("PhaseEvent", &data);
                phases += 1;
            }
            "end" => {
                conformance.check_schema("TaskRecord", &data);
                ends += 1;
            }
            other => panic!("event {other}: {block}"),
        }
    }
    assert!(phases > 0 && ends == 1, "{}", events.2);
    check("get", "/v1/migrations/{id}/events", events);
    check(
        "get",
        "/v1/migrations",
        call(M::GET, "/v1/migrations".into(), None).await,
    );
    let bad_page = call(M::GET, "/v1/migrations?limit=x".into(), None).await;
    assert_eq!(bad_page.0, 400);
    check("get", "/v1/migrations", bad_page);
    let id_path = format!("/v1/migrations/{}", task.id);
    check(
        "get",
        "/v1/migrations/{id}",
        call(M::GET, id_path.clone(), None).await,
    );
    check(
        "get",
        "/v1/migrations/{id}",
        call(M::GET, "/v1/migrations/nope".into(), None).await,
    );
    let late = call(M::DELETE, id_path, None).await;
    assert_eq!(late.0, 409, "finished: too late to cancel");
    check("delete", "/v1/migrations/{id}", late);

    let removed = call(M::DELETE, "/v1/services/counter".into(), None).await;
    assert_eq!(removed.0, 204, "{}", removed.2);
    check("delete", "/v1/services/{name}", removed);
    check(
        "delete",
        "/v1/services/{name}",
        call(M::DELETE, "/v1/services/counter".into(), None).await,
    );

    // Every route and method of the document was called.
    for (route, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let prefix = format!("{method} {route} ");
            assert!(
                checked.iter().any(|c| c.starts_with(&prefix)),
                "{method} {route} was not exercised: {checked:?}"
            );
        }
    }
}

/// Checks answers against an OpenAPI 3.1 document (its schemas are JSON Schema 2020-12).
struct Conformance<'a> {
    doc: &'a serde_json::Value,
}

impl Conformance<'_> {
    /// `answer` = (status, content type, body) of `method route` matches the document.
    fn check(&self, method: &str, route: &str, answer: &(u16, Option<String>, String)) {
        let (status, content_type, body) = answer;
        let response = &self.doc["paths"][route][method]["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {route} answered {status}, which the document does not list: {body}"
        );
        let Some(content) = response.get("content").and_then(|c| c.as_object()) else {
            assert!(
                body.is_empty(),
                "{method} {route} {status}: no content documented: {body}"
            );
            return;
        };
        let content_type = content_type.as_deref().unwrap_or_default();
        let (documented, media) = content
            .iter()
            .find(|(ct, _)| content_type.starts_with(ct.as_str()))
            .unwrap_or_else(|| {
                panic!("{method} {route} {status}: content type {content_type} not in {content:?}")
            });
        if documented.contains("json") {
            let instance: serde_json::Value = serde_json::from_str(body).unwrap();
            self.validate(
                &media["schema"],
                &instance,
                &format!("{method} {route} {status}"),
            );
        }
    }

    /// `instance` matches the component schema `name`.
    fn check_schema(&self, name: &str, instance: &serde_json::Value) {
        let schema = serde_json::json!({"$ref": format!("#/components/schemas/{name}")});
        self.validate(&schema, instance, name);
    }

    fn validate(&self, schema: &serde_json::Value, instance: &serde_json::Value, what: &str) {
        // The schema with the document's components next to it, so its $refs resolve.
        let mut root = schema.clone();
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::draft202012::new(&root)
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{instance:#}");
    }
}

/// A restarted orchestrator finishes the service calls a previous run left half done: a
/// deployment that never answered is brought up (its steps again), a removal is completed.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_orchestrator_finishes_deployments_and_removals() {
    let store = Store::in_memory().unwrap();
    let record = |name: &str, last: u8, status| ServiceRecord {
        name: name.into(),
        image: "localhost/mose/counter:latest".into(),
        host: "edge1".into(),
        args: vec![],
        env: BTreeMap::new(),
        volumes: Vec::new(),
        mobiles: vec!["drone".into()],
        network: ServiceNetwork::new(Ipv4Addr::new(10, 88, 0, last), 24),
        status,
        last_migration: None,
        created_us: 1,
        updated_us: 1,
    };
    store
        .save_service(&record("half-up", 100, ServiceStatus::Deploying))
        .unwrap();
    store
        .save_service(&record("half-gone", 101, ServiceStatus::Removing))
        .unwrap();
    let rig = Rig::start(store, test_config()).await;
    let start = Instant::now();
    let services = loop {
        let services = rig.client.services().await.unwrap();
        if services.len() == 1 && services[0].status == ServiceStatus::Running {
            break services;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never reconciled: {services:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(services[0].name, "half-up");
    let calls = all_calls(&rig.world);
    for call in [
        "edge1:deploy",
        "drone:switch-flow->edge1",
        "edge1:remove",
        "drone:clear-flow",
    ] {
        assert!(calls.iter().any(|c| c == call), "{call} in {calls:?}");
    }
}
