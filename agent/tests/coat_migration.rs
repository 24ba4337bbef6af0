//! Root integration test of the COAT executor on three emulated hosts (edge A, edge B, mobile M),
//! each running the real `mose-agent` binary with its own podman service and OvS. The test
//! process plays the orchestrator: it sends the steps as Zenoh queries to the agents'
//! `agents/{id}/rpc/{op}` queryables, in the order the orchestrator's driver uses.
//!
//! ```text
//!   client netns --cli-- [M br0] --to-a == to-m-- [A br0] --mv-counter-- mose-counter (service)
//!                                --to-b == to-m-- [B br0] --mv-counter-- mose-counter (prepared)
//!   agents talk Zenoh over the testbed LAN (eth0 of each host, 10.99.0.0/24); the test joins it
//!   from the root namespace as 10.99.0.1.
//! ```
//!
//! Proves, with a client sending a request every 10 ms on ONE TCP connection:
//! 1. a failed restore on B (CRIU cannot bind the service's port), then Abort(B) + SwitchFlow(M→A) + Resume(A), leaves the service
//!    running on A with the client still served and nothing of it on B;
//! 2. the migrations A→B→A keep the same connection and the count continues without a jump;
//! 3. bad requests (unknown flow target, a pre-dump round out of order, a checkpoint on rounds
//!    that were never dumped, fetch of an image nobody serves, missing service, bad name) fail
//!    with the reason.
//!
//! Run: `sudo -E MOSE_ROOT_TESTS=1 cargo test -p mose-agent --test coat_migration -- --nocapture`

// Test code: a failed unwrap is a failed test, and its casts are of small measured numbers.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod runtime_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mose_agent::runtime::Podman;
use mose_overlay::netns::{self, EndpointSpec, MacAddr, Neighbour, NETNS_DIR};
use mose_overlay::{connect_wire, HostOverlay};
use mose_protocol::domain::MemberRole;
use mose_protocol::messages::{overlay_mac, Peer, ServiceNetwork, ServiceSpec};
use mose_protocol::steps::{
    Abort, Checkpoint, Deploy, Describe, Described, Fetch, ImageId, PreDump, Prepare, Release,
    Restore, Resume, Step, StepKind, StepOutcome, StepReply, StepRequest, SwitchFlow,
};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::{decode, encode, KeySpace};
use mose_testbed::{Host, Lan};
use mose_testkit::TestDomain;
use runtime_common::image;
use tokio::process::Child;
use zenoh::query::ConsolidationMode;
use zenoh::Session;

const PREFIX: &str = "mtb-coat-";
const SERVICE: &str = "counter";
const SVC_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 7000;
/// The test's own address on the testbed LAN (hosts start at .10).
const TEST_LAN_IP: &str = "10.99.0.1/24";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Podman, runc and CRIU on each host, a private OvS on each, ethtool for the wires.
const COAT_TOOLS: &[&str] = &[
    "podman",
    "runc",
    "criu",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
    "ip",
    "nsenter",
];

fn client_netns() -> String {
    format!("{PREFIX}cli")
}

/// Everything the test made; dropped in field order (agents before their hosts) also when an
/// assertion fails, so nothing is left behind.
struct Lab {
    agents: Vec<Child>,
    client_ns: Option<PathBuf>,
    hosts: Vec<Host>,
    lan: Option<Lan>,
    /// The certificates: this test (as the orchestrator) and agents a, b, m.
    domain: TestDomain,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.start_kill();
        }
        if let Some(ns) = self.client_ns.take() {
            if let Err(e) = netns::delete_netns(&ns) {
                eprintln!("cannot delete the client namespace {}: {e}", ns.display());
            }
        }
    }
}

impl Lab {
    /// Orderly teardown, with errors reported.
    async fn destroy(mut self) {
        for mut a in self.agents.drain(..) {
            let _ = a.kill().await;
        }
        if let Some(ns) = self.client_ns.take() {
            netns::delete_netns(&ns).expect("delete the client namespace");
        }
        for h in self.hosts.drain(..) {
            h.destroy().await.expect("host teardown");
        }
        if let Some(lan) = self.lan.take() {
            lan.destroy().await.expect("LAN teardown");
        }
    }
}

fn overlay_of(host: &Host) -> HostOverlay {
    HostOverlay::for_instance(host.ovs().expect("OvS started"), "br0")
        .with_host_netns(host.netns_path())
}

/// Start `mose-agent` inside `host` with the TLS directory of the lab's domain, listening on its
/// LAN address and connected to `peers`.
fn spawn_agent(
    lab: &Lab,
    host: &Host,
    id: &str,
    role: &str,
    peers: &[Ipv4Addr],
    extra: &[&str],
) -> Child {
    let ovs = host.ovs().expect("OvS started");
    let mut c = host.command(env!("CARGO_BIN_EXE_mose-agent"));
    c.args([
        "--id",
        id,
        "--role",
        role,
        "--no-multicast",
        "--ovs-bridge",
        "br0",
    ])
    .args(["--listen", &format!("tls/{}:7447", host.addr())])
    .arg("--tls-dir")
    .arg(lab.domain.tls_dir(role.parse().expect("member role"), id))
    .args(["--podman-socket", "/run/podman/podman.sock"])
    .arg("--ovsdb-socket")
    .arg(ovs.db_socket())
    .arg("--ovs-rundir")
    .arg(ovs.rundir())
    // /var/tmp is private to each emulated host; /var/lib/mose-agent would be shared.
    .args(["--work-dir", "/var/tmp/mose-agent"])
    .args(extra)
    .env("RUST_LOG", "info,zenoh=warn")
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    for p in peers {
        c.args(["--connect", &format!("tls/{p}:7447")]);
    }
    c.spawn().expect("spawn mose-agent")
}

/// One step on one agent, as the orchestrator's `AgentRpc::call` sends it; a failure as its
/// reason.
async fn step_any(
    session: &Session,
    keys: &KeySpace,
    agent: &str,
    task: &str,
    step: Step,
) -> Result<StepOutcome, String> {
    let op = step.op();
    let request = StepRequest {
        task: task.into(),
        step,
        timeout_ms: mose_protocol::units::millis(STEP_TIMEOUT),
    };
    let replies = session
        .get(keys.agent_rpc(agent, op.as_str()))
        .payload(encode(&request).unwrap())
        .consolidation(ConsolidationMode::None)
        .timeout(STEP_TIMEOUT + Duration::from_secs(2))
        .await
        .map_err(|e| format!("get: {e}"))?;
    let reply = replies
        .recv_async()
        .await
        .map_err(|_| format!("agent {agent} did not answer {op}"))?;
    let sample = reply.result().map_err(|e| {
        format!(
            "agent {agent} refused {op}: {:?}",
            e.payload().try_to_string()
        )
    })?;
    let reply: StepReply = decode(&sample.payload().to_bytes()).map_err(|e| e.to_string())?;
    assert_eq!(reply.task, task);
    reply.result.map_err(|f| f.reason)
}

/// [`step_any`] answering with the step's own outcome type.
async fn step<S: StepKind>(
    session: &Session,
    keys: &KeySpace,
    agent: &str,
    task: &str,
    s: S,
) -> Result<S::Outcome, String> {
    let outcome = step_any(session, keys, agent, task, s.into()).await?;
    S::Outcome::try_from(outcome).map_err(|o| format!("{} answered {o:?}", S::OP))
}

/// A step that must succeed; returns its outcome and how long it took end to end.
async fn ok<S: StepKind>(
    session: &Session,
    keys: &KeySpace,
    agent: &str,
    task: &str,
    s: S,
) -> (S::Outcome, Duration) {
    let op = S::OP;
    let t = Instant::now();
    let out = step(session, keys, agent, task, s)
        .await
        .unwrap_or_else(|e| panic!("{op} on {agent}: {e}"));
    (out, t.elapsed())
}

/// Until the agent answers at all (its queryables are declared and routed to us).
async fn wait_ready(session: &Session, keys: &KeySpace, agent: &str) {
    let t = Instant::now();
    loop {
        let probe = Describe {
            service: "no-such-service".into(),
        };
        match step(session, keys, agent, "ready", probe).await {
            Err(e) if e.contains("did not answer") || e.starts_with("get:") => {}
            _ => return,
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "agent {agent} never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Replies seen by the client: (request sent, reply received, count).
type Samples = Vec<(Instant, Instant, u64)>;

/// The mobile client: one TCP connection from its namespace, a request every 10 ms until told
/// to stop. Any error (reset, timeout, closed) ends it with the samples so far and the error.
struct Client {
    stop: Arc<AtomicBool>,
    replies: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<(Samples, Option<String>, SocketAddr)>,
}

impl Client {
    async fn start(ns: &Path, to: SocketAddr) -> Client {
        let mut stream = None;
        // The service needs a moment to listen after its container started.
        for _ in 0..100 {
            match netns::in_netns(ns, move || {
                TcpStream::connect_timeout(&to, Duration::from_secs(1))
            })
            .await
            {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let s = stream.expect("client connects to the service");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicU64::new(0));
        let (flag, seen) = (stop.clone(), replies.clone());
        let thread = std::thread::spawn(move || {
            let local = s.local_addr().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let mut line = String::new();
                let res = w.write_all(b"tick\n").and_then(|()| r.read_line(&mut line));
                match res {
                    Ok(0) => {
                        return (
                            samples,
                            Some("connection closed by the service".into()),
                            local,
                        )
                    }
                    Ok(_) => match line.trim().parse() {
                        Ok(n) => {
                            samples.push((sent, Instant::now(), n));
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return (samples, Some(format!("not a count: {line:?}")), local),
                    },
                    Err(e) => return (samples, Some(format!("{e}")), local),
                }
                std::thread::sleep(Duration::from_millis(10).saturating_sub(sent.elapsed()));
            }
            (samples, None, local)
        });
        Client {
            stop,
            replies,
            thread,
        }
    }

    /// Waits until `n` more replies arrived: the client is served again. Its TCP retransmission
    /// timer backs off while the service is frozen, so this can take seconds after a long stall.
    async fn served_again(&self, n: u64, within: Duration) {
        let start = self.replies.load(Ordering::Relaxed);
        let t = Instant::now();
        while self.replies.load(Ordering::Relaxed) < start + n {
            assert!(
                !self.thread.is_finished(),
                "the client stopped (connection broken?)"
            );
            assert!(
                t.elapsed() < within,
                "the client got no replies for {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn finish(self) -> (Samples, Option<String>, SocketAddr) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("client thread")
    }
}

/// Longest gap between consecutive replies received within [from, to] (the client-observed
/// downtime of a migration in that window).
fn longest_gap(samples: &Samples, from: Instant, to: Instant) -> Duration {
    samples
        .windows(2)
        .filter(|w| w[1].1 >= from && w[0].1 <= to)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coat_migrates_with_the_connection_and_rolls_back_a_failed_restore() {
    mose_testkit::root_test!(COAT_TOOLS);
    let counter = image("counter").await;
    let r = mose_testbed::sweep_stale(PREFIX).await.expect("sweep");
    assert!(r.is_clean(), "stale state: {:?}", r.problems);
    netns::sweep_netns(Path::new(NETNS_DIR), PREFIX).expect("sweep stale client namespace");

    // --- Three hosts, each with OvS br0; A and B with podman and the image.
    let lan = Lan::create(PREFIX).await.expect("LAN");
    let mut lab = Lab {
        agents: Vec::new(),
        client_ns: None,
        hosts: Vec::new(),
        lan: None,
        domain: TestDomain::new(&[
            (MemberRole::Orchestrator, "test"),
            (MemberRole::Edge, "a"),
            (MemberRole::Edge, "b"),
            (MemberRole::Mobile, "m"),
        ]),
    };
    for (i, name) in ["a", "b", "m"].into_iter().enumerate() {
        let mut h = Host::create(name, &lan, lan.host_addr(i as u8).unwrap())
            .await
            .expect("host");
        h.start_ovs().await.expect("OvS");
        if name != "m" {
            h.start_podman_service().await.expect("podman service");
            h.load_image(&counter).await.expect("load image");
        }
        overlay_of(&h).ensure_bridge().await.expect("br0");
        lab.hosts.push(h);
    }
    lab.lan = Some(lan);
    let (a, b, m) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let (hb, hm) = (overlay_of(b), overlay_of(m));
    connect_wire(&hm, "to-a", &overlay_of(a), "to-m")
        .await
        .expect("wire M-A");
    connect_wire(&hm, "to-b", &hb, "to-m")
        .await
        .expect("wire M-B");
    let lan_bridge = lab.lan.as_ref().unwrap().bridge().to_string();
    run_cmd("ip", &["addr", "add", TEST_LAN_IP, "dev", &lan_bridge]);

    // --- The agents, and the test's own Zenoh session on the LAN.
    let addrs = [a.addr(), b.addr(), m.addr()];
    let others = |i: usize| {
        addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect::<Vec<_>>()
    };
    let agent_a = spawn_agent(&lab, a, "a", "edge", &others(0), &[]);
    let agent_b = spawn_agent(&lab, b, "b", "edge", &others(1), &[]);
    let agent_m = spawn_agent(
        &lab,
        m,
        "m",
        "mobile",
        &others(2),
        &["--flow-port", "a=to-a", "--flow-port", "b=to-b"],
    );
    lab.agents.extend([agent_a, agent_b, agent_m]);
    let keys = KeySpace::new("mose").unwrap();
    let session = ZenohOptions::secured(
        lab.domain.tls_dir(MemberRole::Orchestrator, "test"),
        vec![],
        addrs.iter().map(|a| format!("tls/{a}:7447")).collect(),
    )
    .open(&keys)
    .await
    .expect("test session");
    for id in ["a", "b", "m"] {
        wait_ready(&session, &keys, id).await;
    }

    // --- The service deployed on A (its endpoint, flows and container), its flow on M
    // pointing at A.
    let deployed = ServiceSpec {
        name: SERVICE.into(),
        image: counter.reference.clone(),
        image_id: None,
        network: ServiceNetwork::new(SVC_IP, 24),
    };
    let deploy = Deploy {
        spec: deployed.clone(),
        args: Vec::new(),
        env: BTreeMap::new(),
        volumes: Vec::new(),
    };
    ok(&session, &keys, "a", "deploy", deploy.clone()).await;
    // A repeat finds it running and changes nothing.
    ok(&session, &keys, "a", "deploy", deploy).await;
    let pa = Podman::new(a.podman_socket()).unwrap();
    let pb = Podman::new(b.podman_socket()).unwrap();
    // What Describe reports once the client is connected: the same identity, the client known.
    let mut network = deployed.network.clone();
    network.clients = vec![Peer {
        ip: CLIENT_IP,
        mac: overlay_mac(CLIENT_IP),
    }];
    let spec = ServiceSpec {
        network: network.clone(),
        ..deployed
    };
    let to_a = SwitchFlow {
        network: network.clone(),
        to: "a".into(),
    };
    ok(&session, &keys, "m", "place", to_a.clone()).await;

    // The client's namespace on M, with the service's neighbour entry pre-loaded.
    let mut cli = EndpointSpec::new(
        client_netns(),
        "cli",
        CLIENT_IP,
        24,
        MacAddr(overlay_mac(CLIENT_IP)),
    );
    cli.neighbours.push(Neighbour {
        ip: SVC_IP,
        mac: MacAddr(overlay_mac(SVC_IP)),
    });
    let cli = hm.add_endpoint(&cli).await.expect("client endpoint");
    lab.client_ns = Some(cli.endpoint.netns_path.clone());
    let client = Client::start(&cli.endpoint.netns_path, SocketAddr::from((SVC_IP, PORT))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // --- Describe reads the identity back, the client included.
    let (described, _) = ok(
        &session,
        &keys,
        "a",
        "t-fail",
        Describe {
            service: SERVICE.into(),
        },
    )
    .await;
    let Described {
        spec: got,
        state_bytes,
    } = described;
    let hex = |id: &str| id.trim_start_matches("sha256:").to_string();
    assert_eq!(
        got.image_id.as_deref().map(hex),
        Some(hex(&counter.id)),
        "describe names the image by its ID"
    );
    assert_eq!(
        ServiceSpec {
            image_id: None,
            ..got
        },
        spec,
        "describe reports what the service was deployed with, and its client"
    );
    assert!(state_bytes > 0, "state size from the cgroup");
    println!("describe: {SERVICE} {SVC_IP} state {state_bytes} B");

    // --- 1. Restore fails on B → Abort(B), flow back to A, Resume(A).
    let t_fail = Instant::now();
    ok(
        &session,
        &keys,
        "b",
        "t-fail",
        Prepare { spec: spec.clone() },
    )
    .await;
    let ckpt = Checkpoint {
        service: SERVICE.into(),
        rounds: 0,
        to: "b".into(),
    };
    ok(&session, &keys, "a", "t-fail", ckpt.clone()).await;
    // Break B's restore at the CRIU level: something else listens on the service's port in the
    // prepared namespace, so CRIU cannot bind the restored listening socket.
    let mut squatter = b
        .command("ip")
        .args(["netns", "exec", &format!("mose-{SERVICE}"), "python3", "-c"])
        .arg(format!("import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',{PORT}))\ns.listen()\nprint('squatting',flush=True)\ntime.sleep(300)"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("port squatter in B's service netns");
    let mut ready = String::new();
    tokio::io::AsyncBufReadExt::read_line(
        &mut tokio::io::BufReader::new(squatter.stdout.take().unwrap()),
        &mut ready,
    )
    .await
    .unwrap();
    assert_eq!(ready.trim(), "squatting");
    let restore = Restore {
        spec: spec.clone(),
        from: "a".into(),
        rounds: 0,
    };
    let err = step(&session, &keys, "b", "t-fail", restore.clone())
        .await
        .expect_err("restore onto a taken port must fail");
    squatter.kill().await.expect("stop the squatter");
    println!("restore on B failed as intended: {err}");
    for _ in 0..2 {
        ok(
            &session,
            &keys,
            "b",
            "t-fail",
            Abort {
                service: SERVICE.into(),
            },
        )
        .await;
    }
    ok(&session, &keys, "m", "t-fail", to_a.clone()).await;
    let (_, resume_time) = ok(
        &session,
        &keys,
        "a",
        "t-fail",
        Resume {
            service: SERVICE.into(),
        },
    )
    .await;
    ok(
        &session,
        &keys,
        "a",
        "t-fail",
        Resume {
            service: SERVICE.into(),
        },
    )
    .await;
    client.served_again(5, Duration::from_secs(20)).await;
    let t_fail_end = Instant::now();
    assert!(
        pa.inspect(SERVICE).await.unwrap().state.running,
        "service runs on A again"
    );
    assert!(!pb.exists(SERVICE).await.unwrap(), "no container left on B");
    assert!(
        !b.outside_path(format!("/run/netns/mose-{SERVICE}"))
            .unwrap()
            .exists(),
        "no netns left on B"
    );
    assert!(
        hb.steering().flows(SVC_IP).await.unwrap().is_empty(),
        "no flows left on B"
    );

    // --- 2. A→B→A in the orchestrator's order, on the same client connection.
    let hosts = [("a", a, &pa), ("b", b, &pb)];
    let mut migrations = Vec::new();
    for (task, from, to) in [("t-ab", 0, 1), ("t-ba", 1, 0)] {
        let mig = migrate(&session, &keys, hosts[from].0, hosts[to].0, task, &client).await;
        assert!(
            hosts[to].2.inspect(SERVICE).await.unwrap().state.running,
            "service runs on {}",
            hosts[to].0
        );
        assert!(
            !hosts[from].2.exists(SERVICE).await.unwrap(),
            "{} released the container",
            hosts[from].0
        );
        assert!(
            !hosts[from]
                .1
                .outside_path(format!("/run/netns/mose-{SERVICE}"))
                .unwrap()
                .exists(),
            "{} released the netns",
            hosts[from].0
        );
        migrations.push(mig);
    }

    // --- Bad requests fail with the reason, and change nothing.
    let refusals: [(&str, Step, &str); 5] = [
        (
            "m",
            SwitchFlow {
                network: network.clone(),
                to: "c".into(),
            }
            .into(),
            "no OvS port toward agent c",
        ),
        (
            "a",
            PreDump {
                service: SERVICE.into(),
                round: 3,
                to: "b".into(),
            }
            .into(),
            "does not follow",
        ),
        (
            "a",
            Checkpoint {
                service: SERVICE.into(),
                rounds: 2,
                to: "b".into(),
            }
            .into(),
            "holds 0 round(s)",
        ),
        (
            "b",
            Describe {
                service: SERVICE.into(),
            }
            .into(),
            "no container counter",
        ),
        (
            "a",
            Describe {
                service: "../etc".into(),
            }
            .into(),
            "invalid service name",
        ),
    ];
    for (agent, s, why) in refusals {
        let err = step_any(&session, &keys, agent, "t-bad", s)
            .await
            .expect_err("must fail");
        assert!(err.contains(why), "{agent}: {err}");
    }
    // A fetch names no service: it needs its task's prepare, then fails on the missing image.
    let fetch = Fetch {
        from: "a".into(),
        image: ImageId::Round(0),
    };
    let err = step(&session, &keys, "b", "t-bad", fetch.clone())
        .await
        .expect_err("a fetch before its prepare must fail");
    assert!(err.contains("needs its prepare first"), "{err}");
    ok(
        &session,
        &keys,
        "b",
        "t-bad",
        Prepare { spec: spec.clone() },
    )
    .await;
    let err = step(&session, &keys, "b", "t-bad", fetch)
        .await
        .expect_err("a fetch of an image nobody serves must fail");
    assert!(err.contains("no manifest for blob"), "{err}");
    ok(
        &session,
        &keys,
        "b",
        "t-bad",
        Abort {
            service: SERVICE.into(),
        },
    )
    .await;
    client.served_again(5, Duration::from_secs(5)).await;

    let (samples, error, local) = client.finish();
    assert!(
        error.is_none(),
        "the client's connection broke: {error:?} after {} replies",
        samples.len()
    );
    let counts: Vec<u64> = samples.iter().map(|s| s.2).collect();
    assert!(
        counts.windows(2).all(|w| w[1] == w[0] + 1),
        "the count jumps or resets: {counts:?}"
    );
    assert_eq!(local.ip(), std::net::IpAddr::V4(CLIENT_IP));
    println!(
        "ROLLBACK (restore failed on B): client-observed downtime {:.0} ms, resume on A {:.0} ms",
        ms(longest_gap(&samples, t_fail, t_fail_end)),
        ms(resume_time)
    );
    for m in &migrations {
        let steps: Vec<String> = m
            .steps
            .iter()
            .map(|(op, d)| format!("{op} {:.0} ms", ms(*d)))
            .collect();
        println!(
            "COAT {}->{} ({} B image): client-observed downtime {:.0} ms; steps end to end over Zenoh: {}; \
             CRIU frozen {:?} us, CRIU restore {:?} us; total {:.0} ms",
            m.from,
            m.to,
            m.image_bytes,
            ms(longest_gap(&samples, m.window.0, m.window.1)),
            steps.join(", "),
            m.frozen_us,
            m.restore_us,
            ms(m.total)
        );
    }
    println!(
        "count {}..{} continuous on one TCP connection ({} replies)",
        counts[0],
        counts[counts.len() - 1],
        counts.len()
    );

    session.close().await.ok();
    lab.destroy().await;
    assert!(
        mose_testbed::leftovers(PREFIX).is_empty(),
        "left: {:?}",
        mose_testbed::leftovers(PREFIX)
    );
}

/// One migration: its step times and the time window it ran in (for the client's gap).
struct Migration {
    from: String,
    to: String,
    window: (Instant, Instant),
    steps: Vec<(&'static str, Duration)>,
    image_bytes: u64,
    frozen_us: Option<u64>,
    restore_us: Option<u64>,
    total: Duration,
}

/// Migrate the service `from` → `to` in the orchestrator's order, repeat the restore and the
/// release (idempotent), and wait until the client is served again.
async fn migrate(
    session: &Session,
    keys: &KeySpace,
    from: &str,
    to: &str,
    task: &str,
    client: &Client,
) -> Migration {
    let service = || SERVICE.to_string();
    let t0 = Instant::now();
    let mut steps = Vec::new();
    let (d, t) = ok(session, keys, from, task, Describe { service: service() }).await;
    steps.push(("describe", t));
    let spec = d.spec;
    let (_, t) = ok(session, keys, to, task, Prepare { spec: spec.clone() }).await;
    steps.push(("prepare", t));
    let ckpt = Checkpoint {
        service: service(),
        rounds: 0,
        to: to.into(),
    };
    let (c, t) = ok(session, keys, from, task, ckpt).await;
    steps.push(("checkpoint", t));
    let (image_bytes, dump) = (c.image_bytes, c.stats);
    let restore = Restore {
        spec: spec.clone(),
        from: from.into(),
        rounds: 0,
    };
    let (r, t) = ok(session, keys, to, task, restore.clone()).await;
    steps.push(("restore", t));
    let rst = r.stats.clone();
    let switch = SwitchFlow {
        network: spec.network.clone(),
        to: to.into(),
    };
    let (_, t) = ok(session, keys, "m", task, switch).await;
    steps.push(("switch-flow", t));
    let (_, t) = ok(session, keys, from, task, Release { service: service() }).await;
    steps.push(("release", t));
    let total = t0.elapsed();
    assert_eq!(
        ok(session, keys, to, task, restore).await.0,
        r,
        "restore is idempotent"
    );
    ok(session, keys, from, task, Release { service: service() }).await;
    client.served_again(50, Duration::from_secs(20)).await;
    Migration {
        from: from.into(),
        to: to.into(),
        window: (t0, Instant::now()),
        steps,
        image_bytes,
        frozen_us: dump.frozen_time_us,
        restore_us: rst.restore_time_us,
        total,
    }
}

fn run_cmd(program: &str, args: &[&str]) {
    if let Err(e) = mose_command::Cmd::new(program).args(args).output_blocking() {
        panic!("{e}");
    }
}
