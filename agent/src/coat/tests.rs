//! The idempotency table of docs/coat.md, step by step, against a fake host: a repeat after
//! success answers the same (without a second podman call where the table says so), a repeat
//! after a timeout converges, a late Restore or Checkpoint is undone, and an agent restarted
//! mid-migration carries on from its persisted state. Real Zenoh (one loopback session) moves
//! the images, so serving and fetching run for real.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mose_protocol::blob::FetchOptions;
use mose_protocol::domain::MemberRole;
use mose_protocol::messages::{Peer, ServiceNetwork, ServiceSpec};
use mose_protocol::steps::{
    Abort, Checkpoint, ClearFlow, Deploy, Describe, Done, Dumped, ExportImage, FailureKind, Fetch,
    Fetched, ImageId, PreDump, Prepare, Release, Remove, Resend, Resent, Restore, Restored, Resume,
    StepFailure, StepKind, SwitchFlow,
};
use mose_protocol::transport::ZenohOptions;
use mose_protocol::volumes::VolumeMount;
use mose_protocol::KeySpace;
use tempfile::TempDir;
use zenoh::Session;

use super::fake::{identity_of, FakeHost, ANON_BYTES};
use super::naming::{image_path, state_path};
use super::*;
use crate::steps::{run_step, StepExecutor};

const SERVICE: &str = "counter";
const SEQ: u32 = 0xdead_beef;

fn spec() -> ServiceSpec {
    ServiceSpec {
        name: SERVICE.into(),
        image: "localhost/mose/counter:latest".into(),
        image_id: None,
        network: ServiceNetwork {
            ip: Ipv4Addr::new(10, 77, 0, 100),
            prefix_len: 24,
            mac: [2, 0, 10, 77, 0, 100],
            clients: vec![Peer {
                ip: Ipv4Addr::new(10, 77, 0, 2),
                mac: [2, 0, 10, 77, 0, 2],
            }],
        },
    }
}

/// One test's world: a Zenoh session (every agent's, in one process), and per agent a fake
/// host and a work directory.
struct Lab {
    session: Session,
    keys: KeySpace,
    dir: TempDir,
    _domain: mose_testkit::TestDomain,
}

/// One agent: its host (which outlives the agent) and the executor (the agent process).
struct Agent {
    id: &'static str,
    host: FakeHost,
    exec: CoatExecutor<FakeHost>,
}

impl Lab {
    async fn new() -> Lab {
        let domain = mose_testkit::TestDomain::new(&[(MemberRole::Edge, "a")]);
        let keys = KeySpace::default();
        let tls_dir = domain.tls_dir(MemberRole::Edge, "a");
        let session = ZenohOptions::secured(tls_dir, vec!["tls/127.0.0.1:0".into()], vec![])
            .open(&keys)
            .await
            .expect("loopback zenoh session");
        Lab {
            session,
            keys,
            dir: tempfile::tempdir().unwrap(),
            _domain: domain,
        }
    }

    fn work_dir(&self, id: &str) -> std::path::PathBuf {
        self.dir.path().join(id).join("work")
    }

    /// A fresh agent `id` on a fresh host.
    fn agent(&self, id: &'static str) -> Agent {
        let host = FakeHost::new(&self.dir.path().join(id), &[("to-a", 1), ("to-b", 2)]);
        Agent {
            id,
            exec: self.executor(id, host.clone()),
            host,
        }
    }

    /// The agent `a` restarted: what it held in memory (its image servers) is gone, its host
    /// and its work directory are as they were.
    fn restart(&self, a: Agent) -> Agent {
        let Agent { id, host, exec } = a;
        drop(exec);
        Agent {
            id,
            exec: self.executor(id, host.clone()),
            host,
        }
    }

    fn executor(&self, id: &str, host: FakeHost) -> CoatExecutor<FakeHost> {
        let mut settings = CoatSettings::new(id, self.work_dir(id));
        settings.flow_ports = [("a", "to-a"), ("b", "to-b")]
            .map(|(a, p)| (a.to_string(), p.to_string()))
            .into();
        // A missing image fails in a fraction of a second, not after 4 × 5 s.
        settings.fetch = FetchOptions {
            chunk_timeout: Duration::from_millis(300),
            retries: 1,
            ..FetchOptions::default()
        };
        CoatExecutor::new(host, self.session.clone(), self.keys.clone(), settings)
    }
}

impl Agent {
    async fn run<S: StepKind>(&self, task: &str, step: S) -> Result<S::Outcome, StepFailure> {
        let outcome = self.exec.execute(task, step.into()).await?;
        Ok(S::Outcome::try_from(outcome).expect("the step's own outcome type"))
    }

    async fn ok<S: StepKind>(&self, task: &str, step: S) -> S::Outcome {
        let op = S::OP;
        self.run(task, step)
            .await
            .unwrap_or_else(|f| panic!("{op} on {}: {f}", self.id))
    }

    async fn fail<S: StepKind>(&self, task: &str, step: S) -> StepFailure {
        match self.run(task, step).await {
            Err(f) => f,
            Ok(o) => panic!("{} on {} succeeded: {o:?}", S::OP, self.id),
        }
    }

    fn running(&self) -> bool {
        self.host
            .world()
            .containers
            .get(SERVICE)
            .is_some_and(|c| c.running)
    }

    fn calls(&self, prefix: &str) -> usize {
        self.host.world().count(prefix)
    }

    fn state(&self, lab: &Lab, task: &str) -> Option<ServiceState> {
        ServiceState::load(&lab.work_dir(self.id), task, SERVICE).unwrap()
    }
}

fn service() -> String {
    SERVICE.to_string()
}

/// Source `a` with the service running, destination `b` prepared for `task`.
async fn prepared(lab: &Lab, task: &str) -> (Agent, Agent) {
    let (a, b) = (lab.agent("a"), lab.agent("b"));
    a.host.run_service(&spec(), SEQ);
    b.host.world().images.insert(spec().image);
    b.ok(task, Prepare { spec: spec() }).await;
    (a, b)
}

fn restore(rounds: u32) -> Restore {
    Restore {
        spec: spec(),
        from: "a".into(),
        rounds,
    }
}

/// Waits until `cond` holds (a late undo runs on its own).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(5), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- describe ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_reads_the_service_and_a_repeat_answers_the_same() {
    let lab = Lab::new().await;
    let a = lab.agent("a");
    a.host.run_service(&spec(), SEQ);
    let first = a.ok("t1", Describe { service: service() }).await;
    assert_eq!(first.spec, spec());
    assert_eq!(first.state_bytes, ANON_BYTES);
    assert_eq!(a.ok("t1", Describe { service: service() }).await, first);
    assert!(a.host.world().calls.is_empty(), "describe changes nothing");

    let f = a
        .fail(
            "t1",
            Describe {
                service: "other".into(),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("no container other"), "{f}");
    let f = a
        .fail(
            "t1",
            Describe {
                service: "../etc".into(),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::InvalidRequest);
    assert!(f.reason.contains("invalid service name"), "{f}");
    let f = a.fail("../t", Describe { service: service() }).await;
    assert_eq!(f.kind, FailureKind::InvalidRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_refuses_a_service_outside_its_namespace() {
    let lab = Lab::new().await;
    let a = lab.agent("a");
    a.host.run_service(&spec(), SEQ);
    a.host.world().containers.get_mut(SERVICE).unwrap().netns = "elsewhere".into();
    let f = a.fail("t1", Describe { service: service() }).await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("mose-counter"), "{f}");
}

// --- prepare -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prepare_keeps_the_namespace_and_refreshes_the_neighbour() {
    let lab = Lab::new().await;
    let (_a, b) = prepared(&lab, "t1").await;
    b.ok("t1", Prepare { spec: spec() }).await;
    let w = b.host.world();
    assert_eq!(w.count("add_endpoint"), 1, "{:?}", w.calls);
    assert_eq!(w.count("replace_neighbour"), 1);
    assert_eq!(w.count("ensure_port mv-counter"), 1);
    assert_eq!(w.count("steer 10.77.0.100"), 2, "flows replaced, not added");
    assert_eq!(w.flows.get(&spec().network.ip), w.ports.get("mv-counter"));
    drop(w);
    assert_eq!(b.state(&lab, "t1").unwrap().role, ServiceRole::Destination);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_never_replaces_the_network_of_a_running_service() {
    let lab = Lab::new().await;
    let b = lab.agent("b");
    let mut running = spec();
    running.network.ip = Ipv4Addr::new(10, 77, 0, 99);
    b.host.run_service(&running, SEQ);
    let f = b.fail("t1", Prepare { spec: spec() }).await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("refusing to replace its network"), "{f}");
    assert_eq!(b.calls("add_endpoint"), 0);
    assert!(b.running());

    // Nothing runs in it any more: a namespace of another identity is recreated.
    b.host.world().containers.clear();
    b.ok("t1", Prepare { spec: spec() }).await;
    assert_eq!(b.calls("add_endpoint"), 1);
    let w = b.host.world();
    assert_eq!(w.netns["mose-counter"], identity_of(&spec()));
}

/// A described spec names its image by ID: the same name over another image here is not it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_is_looked_for_by_its_id_when_the_spec_has_one() {
    let lab = Lab::new().await;
    let b = lab.agent("b");
    b.host.world().images.insert(spec().image);
    let by_id = ServiceSpec {
        image_id: Some("sha256:0123".into()),
        ..spec()
    };
    let p = b
        .ok(
            "t1",
            Prepare {
                spec: by_id.clone(),
            },
        )
        .await;
    assert!(!p.image_present, "another image under the name");
    b.host.world().images.insert("sha256:0123".into());
    assert!(b.ok("t1", Prepare { spec: by_id }).await.image_present);
    assert!(
        b.ok("t2", Prepare { spec: spec() }).await.image_present,
        "without an ID, by its name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_exported_by_the_source_and_loaded_before_the_freeze() {
    let lab = Lab::new().await;
    let (a, b) = (lab.agent("a"), lab.agent("b"));
    a.host.run_service(&spec(), SEQ);
    // Prepare says what is missing instead of failing: the endpoint is ready all the same.
    let p = b.ok("t1", Prepare { spec: spec() }).await;
    assert!(!p.image_present);
    assert_eq!(b.calls("add_endpoint"), 1);

    let exported = a
        .ok(
            "t1",
            ExportImage {
                service: service(),
                to: "b".into(),
            },
        )
        .await;
    assert!(exported.image_bytes > 0);
    let fetch = Fetch {
        from: "a".into(),
        image: ImageId::Container,
    };
    let fetched = b.ok("t1", fetch.clone()).await;
    assert_eq!(
        fetched.image_bytes, exported.image_bytes,
        "what the source served"
    );
    assert!(b.host.world().images.contains(&spec().image), "loaded");
    assert!(
        !image_path(&lab.work_dir("b"), "t1", ImageId::Container).exists(),
        "the archive goes once loaded"
    );
    // Repeats: the source serves what it exported, the destination loads nothing twice.
    a.ok(
        "t1",
        ExportImage {
            service: service(),
            to: "b".into(),
        },
    )
    .await;
    assert_eq!(a.calls("export_image"), 1);
    b.ok("t1", fetch).await;
    assert_eq!(b.calls("load_image"), 1);
    // Prepared again, the image is there.
    assert!(b.ok("t1", Prepare { spec: spec() }).await.image_present);

    // A source without the service cannot export it.
    let c = lab.agent("c");
    let f = c
        .fail(
            "t2",
            ExportImage {
                service: service(),
                to: "b".into(),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::WrongState, "{f}");
}

// --- pre-dump and checkpoint ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_dump_rounds_follow_each_other_and_a_repeat_answers_from_the_state() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    let round = |round| PreDump {
        service: service(),
        round,
        to: "b".into(),
    };
    let f = a.fail("t1", round(1)).await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("does not follow"), "{f}");
    assert_eq!(a.calls("pre_dump"), 0);

    let r0 = a.ok("t1", round(0)).await;
    assert_eq!(
        (r0.image, r0.stats.pages_written),
        (ImageId::Round(0), Some(7))
    );
    assert_eq!(a.ok("t1", round(0)).await, r0, "same answer");
    assert_eq!(a.calls("pre_dump"), 1, "no second pre-dump");
    let r1 = a.ok("t1", round(1)).await;
    assert_eq!(
        a.host.world().calls.last().unwrap(),
        "pre_dump counter round-1 Some(\"round-0\")"
    );
    assert!(image_path(&lab.work_dir("a"), "t1", ImageId::Round(1)).is_file());
    assert_eq!(a.state(&lab, "t1").unwrap().rounds, [r0, r1]);
    let f = a.fail("t1", round(3)).await;
    assert!(f.reason.contains("the next is round 2"), "{f}");

    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 2,
            to: "b".into(),
        },
    )
    .await;
    let f = a.fail("t1", round(2)).await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("final dump"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_dump_of_a_stopped_service_is_wrong_state() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    a.host.world().containers.get_mut(SERVICE).unwrap().running = false;
    let f = a
        .fail(
            "t1",
            PreDump {
                service: service(),
                round: 0,
                to: "b".into(),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("needs it running"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_needs_exactly_the_rounds_the_state_holds() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    let f = a
        .fail(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 1,
                to: "b".into(),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("holds 0 round(s)"), "{f}");
    a.ok(
        "t1",
        PreDump {
            service: service(),
            round: 0,
            to: "b".into(),
        },
    )
    .await;
    for rounds in [0, 2] {
        let f = a
            .fail(
                "t1",
                Checkpoint {
                    service: service(),
                    rounds,
                    to: "b".into(),
                },
            )
            .await;
        assert_eq!(f.kind, FailureKind::WrongState, "{f}");
    }
    assert_eq!(a.calls("checkpoint"), 0);
    assert!(a.running());
    let d = a
        .ok(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 1,
                to: "b".into(),
            },
        )
        .await;
    assert_eq!(d.image, ImageId::Final);
    assert_eq!(
        a.host.world().calls.last().unwrap(),
        "checkpoint counter WithPrevious"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_checkpoint_answers_from_the_state_without_podman() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    let first = a
        .ok(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 0,
                to: "b".into(),
            },
        )
        .await;
    assert_eq!(first.stats.frozen_time_us, Some(50_000));
    assert!(!a.running(), "frozen");
    assert_eq!(
        a.ok(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 0,
                to: "b".into()
            }
        )
        .await,
        first
    );
    assert_eq!(a.calls("checkpoint"), 1);
    assert_eq!(a.host.world().calls, ["checkpoint counter Full"]);
    let f = a
        .fail(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 1,
                to: "b".into(),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::WrongState);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_record_was_lost_adopts_its_complete_archive() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    let first = a
        .ok(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 0,
                to: "b".into(),
            },
        )
        .await;
    // The agent died between naming the archive and recording it.
    let mut state = a.state(&lab, "t1").unwrap();
    state.final_dump = None;
    state.save(&lab.work_dir("a")).unwrap();
    let a = lab.restart(a);
    let adopted = a
        .ok(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 0,
                to: "b".into(),
            },
        )
        .await;
    assert_eq!(adopted.image_bytes, first.image_bytes);
    assert_eq!(
        a.calls("checkpoint"),
        1,
        "no second dump of a stopped container"
    );
    b.ok("t1", restore(0)).await;
    assert!(b.running(), "the adopted archive is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_archive_is_never_adopted() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    if let Some(svc) = a.host.world().containers.get_mut(SERVICE) {
        (svc.running, svc.checkpointed) = (false, true);
    }
    let path = image_path(&lab.work_dir("a"), "t1", ImageId::Final);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path.with_extension("tar.partial"), b"half").unwrap();
    let f = a
        .fail(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 0,
                to: "b".into(),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("nothing to checkpoint"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_serves_its_final_dump_again() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    let a = lab.restart(a);
    let f = b.fail("t1", restore(0)).await;
    assert_eq!(
        f.kind,
        FailureKind::Transfer,
        "nobody serves the image: {f}"
    );
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    assert_eq!(a.calls("checkpoint"), 1);
    b.ok("t1", restore(0)).await;
    assert!(b.running());
}

// --- fetch and restore ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_needs_the_tasks_prepare() {
    let lab = Lab::new().await;
    let b = lab.agent("b");
    let f = b
        .fail(
            "t1",
            Fetch {
                from: "a".into(),
                image: ImageId::Round(0),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("needs its prepare first"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_of_an_image_nobody_serves_is_a_transfer_failure() {
    let lab = Lab::new().await;
    let (_a, b) = prepared(&lab, "t1").await;
    let f = b
        .fail(
            "t1",
            Fetch {
                from: "a".into(),
                image: ImageId::Round(7),
            },
        )
        .await;
    assert_eq!(f.kind, FailureKind::Transfer);
    assert!(f.reason.contains("no manifest for blob"), "{f}");
    assert!(b.state(&lab, "t1").unwrap().fetched.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_round_is_not_fetched_again() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    let dumped = a
        .ok(
            "t1",
            PreDump {
                service: service(),
                round: 0,
                to: "b".into(),
            },
        )
        .await;
    let fetch = || Fetch {
        from: "a".into(),
        image: ImageId::Round(0),
    };
    let first = b.ok("t1", fetch()).await;
    assert_eq!(
        first,
        Fetched {
            image: ImageId::Round(0),
            image_bytes: dumped.image_bytes
        }
    );
    // The source stops serving (a rollback): a repeat answers from the state and the file.
    a.ok("t1", Resume { service: service() }).await;
    assert_eq!(b.ok("t1", fetch()).await, first);
    let b = lab.restart(b);
    assert_eq!(b.ok("t1", fetch()).await, first, "also after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_fetches_and_restores_and_a_repeat_answers_the_same() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    let dumped: Dumped = a
        .ok(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 0,
                to: "b".into(),
            },
        )
        .await;
    let first = b.ok("t1", restore(0)).await;
    assert_eq!(first.fetched_bytes, dumped.image_bytes);
    assert_eq!(first.stats.restore_time_us, Some(90_000));
    assert!(b.running());
    assert!(
        !image_path(&lab.work_dir("b"), "t1", ImageId::Final).exists(),
        "archive dropped"
    );
    let state = b.state(&lab, "t1").unwrap();
    assert_eq!(
        (state.restored.as_ref(), state.client_seqs.as_slice()),
        (Some(&first), &[SEQ][..])
    );
    // Even with the source released and the agent restarted: the same answer, no podman call.
    a.ok("t1", Release { service: service() }).await;
    let b = lab.restart(b);
    assert_eq!(b.ok("t1", restore(0)).await, first);
    assert_eq!(b.calls("restore"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_after_pre_copy_joins_the_rounds_and_fetches_only_what_is_missing() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        PreDump {
            service: service(),
            round: 0,
            to: "b".into(),
        },
    )
    .await;
    b.ok(
        "t1",
        Fetch {
            from: "a".into(),
            image: ImageId::Round(0),
        },
    )
    .await;
    let r1 = a
        .ok(
            "t1",
            PreDump {
                service: service(),
                round: 1,
                to: "b".into(),
            },
        )
        .await;
    let fin = a
        .ok(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 2,
                to: "b".into(),
            },
        )
        .await;
    let done: Restored = b.ok("t1", restore(2)).await;
    assert_eq!(
        done.fetched_bytes,
        r1.image_bytes + fin.image_bytes,
        "round 0 came by fetch"
    );
    let w = b.host.world();
    assert_eq!(
        w.calls
            .iter()
            .filter(|c| c.starts_with("restore"))
            .collect::<Vec<_>>(),
        [r#"restore_with_previous counter final.tar ["round-0", "round-1"]"#]
    );
    assert!(
        w.calls.contains(&"drop_pre_dumps counter".to_string()),
        "the chain goes"
    );
    drop(w);
    let state = b.state(&lab, "t1").unwrap();
    assert!(
        state.fetched.is_empty(),
        "the archives are gone, so is their record"
    );
    assert!(!lab.work_dir("b").join("t1").join(JOINED_ROUNDS).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_container_not_restored_is_never_replaced() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.host.run_service(&spec(), 1);
    let f = b.fail("t1", restore(0)).await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("refusing to replace it"), "{f}");
    assert_eq!((b.calls("remove"), b.calls("restore")), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_restored_container_this_agent_has_no_record_of_answers_success() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.ok("t1", restore(0)).await;
    let mut state = b.state(&lab, "t1").unwrap();
    state.restored = None;
    state.save(&lab.work_dir("b")).unwrap();
    let done = b.ok("t1", restore(0)).await;
    assert_eq!(done.fetched_bytes, 0);
    assert_eq!(b.calls("restore"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_container_of_a_failed_restore_is_removed_first() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.host.run_service(&spec(), 1);
    b.host.world().containers.get_mut(SERVICE).unwrap().running = false;
    b.ok("t1", restore(0)).await;
    let w = b.host.world();
    assert!(
        w.position("remove counter") < w.position("restore counter"),
        "{:?}",
        w.calls
    );
    assert_eq!(
        w.count("restore counter keeping"),
        0,
        "a destination's volumes come from the archive"
    );
    assert!(w.containers[SERVICE].restored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_can_be_retried_and_fetches_again() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.host
        .world()
        .failures
        .insert("restore", "criu failed".into());
    let f = b.fail("t1", restore(0)).await;
    assert_eq!(f.kind, FailureKind::Runtime);
    assert!(f.reason.contains("criu failed"), "{f}");
    assert!(!b.running());
    b.ok("t1", restore(0)).await;
    assert!(b.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_without_a_prepared_namespace_prepares_first() {
    let lab = Lab::new().await;
    let (a, b) = (lab.agent("a"), lab.agent("b"));
    a.host.run_service(&spec(), SEQ);
    b.host.world().images.insert(spec().image);
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.ok("t1", restore(0)).await;
    let w = b.host.world();
    assert!(
        w.position("add_endpoint") < w.position("restore"),
        "{:?}",
        w.calls
    );
    assert!(w.containers[SERVICE].running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_repeated_while_the_first_still_runs_waits_and_answers_the_same() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.host
        .world()
        .delays
        .insert("restore", Duration::from_millis(300));
    let first = tokio::spawn({
        let exec = b.exec.clone();
        async move { exec.execute("t1", restore(0).into()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = b.ok("t1", restore(0)).await;
    let first = Restored::try_from(first.await.unwrap().unwrap()).unwrap();
    assert_eq!(first, second);
    assert_eq!(b.calls("restore"), 1);
}

// --- resend --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_nudges_the_restored_connections_also_after_a_restart() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    assert_eq!(
        b.ok("t1", Resend { service: service() }).await,
        Resent { nudges: 0 }
    );
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.ok("t1", restore(0)).await;
    let b = lab.restart(b);
    assert_eq!(
        b.ok("t1", Resend { service: service() }).await,
        Resent { nudges: 1 }
    );
    assert_eq!(b.host.world().nudged, [vec![SEQ]]);
}

// --- resume --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_of_a_running_service_does_nothing() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    a.ok("t1", Resume { service: service() }).await;
    a.ok(
        "t1",
        PreDump {
            service: service(),
            round: 0,
            to: "b".into(),
        },
    )
    .await;
    a.ok("t1", Resume { service: service() }).await;
    a.ok("t1", Resume { service: service() }).await;
    assert!(a.running());
    assert_eq!((a.calls("remove"), a.calls("restore")), (0, 0));
    let state = a.state(&lab, "t1").unwrap();
    assert!(state.resumed && state.rounds.is_empty());
    assert!(!image_path(&lab.work_dir("a"), "t1", ImageId::Round(0)).exists());
    let f = a
        .fail(
            "t1",
            PreDump {
                service: service(),
                round: 0,
                to: "b".into(),
            },
        )
        .await;
    assert!(f.reason.contains("rolled back"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_restores_from_the_archive_and_a_failed_attempt_can_be_retried() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    a.host
        .world()
        .failures
        .insert("restore", "criu failed".into());
    let f = a.fail("t1", Resume { service: service() }).await;
    assert_eq!(f.kind, FailureKind::Runtime);
    assert!(!a.running());
    assert!(
        image_path(&lab.work_dir("a"), "t1", ImageId::Final).is_file(),
        "archive kept"
    );
    a.ok("t1", Resume { service: service() }).await;
    assert!(a.running());
    a.ok("t1", Resume { service: service() }).await;
    assert_eq!(
        a.calls("restore"),
        2,
        "the failed attempt and the one that worked"
    );
    // The rollback's resend on the source nudges the sockets its own archive held.
    assert_eq!(
        a.ok("t1", Resend { service: service() }).await,
        Resent { nudges: 1 }
    );
    let f = a
        .fail(
            "t1",
            Checkpoint {
                service: service(),
                rounds: 0,
                to: "b".into(),
            },
        )
        .await;
    assert!(f.reason.contains("rolled back"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_without_a_state_cannot_be_resumed() {
    let lab = Lab::new().await;
    let a = lab.agent("a");
    a.host.run_service(&spec(), SEQ);
    a.host.world().containers.get_mut(SERVICE).unwrap().running = false;
    let f = a.fail("t1", Resume { service: service() }).await;
    assert_eq!(f.kind, FailureKind::WrongState);
    assert!(f.reason.contains("cannot resume"), "{f}");
    assert_eq!(a.calls("remove"), 0, "the stopped container is kept");
}

/// An agent restarted after a pre-copy checkpoint resumes from the archives its state lists.
/// The archives' ages say otherwise here (round 0 newest, the final dump oldest): the old
/// rule, "the newest archive is the final dump, the others are rounds by age", would restore
/// round 0 as the final dump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_resumes_from_its_persisted_state_not_by_file_age() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        PreDump {
            service: service(),
            round: 0,
            to: "b".into(),
        },
    )
    .await;
    a.ok(
        "t1",
        PreDump {
            service: service(),
            round: 1,
            to: "b".into(),
        },
    )
    .await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 2,
            to: "b".into(),
        },
    )
    .await;
    let work = lab.work_dir("a");
    let at = |secs| std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    for (image, secs) in [
        (ImageId::Final, 10),
        (ImageId::Round(1), 20),
        (ImageId::Round(0), 30),
    ] {
        let f = std::fs::File::options()
            .write(true)
            .open(image_path(&work, "t1", image))
            .unwrap();
        f.set_modified(at(secs)).unwrap();
    }
    let a = lab.restart(a);
    a.ok("t1", Resume { service: service() }).await;
    assert!(a.running());
    let w = a.host.world();
    assert_eq!(
        w.calls
            .iter()
            .filter(|c| c.starts_with("restore"))
            .collect::<Vec<_>>(),
        [r#"restore_with_previous counter final.tar ["round-0", "round-1"] keeping volumes"#]
    );
    drop(w);
    assert!(
        !image_path(&work, "t1", ImageId::Final).exists(),
        "archives gone after the resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_repeated_after_its_timeout_converges() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    a.host
        .world()
        .delays
        .insert("restore", Duration::from_millis(300));
    let exec = Arc::new(a.exec.clone());
    let f = run_step(
        &exec,
        "t1",
        Resume { service: service() }.into(),
        Duration::from_millis(50),
    )
    .await
    .unwrap_err();
    assert_eq!(f.kind, FailureKind::Timeout);
    a.ok("t1", Resume { service: service() }).await;
    assert!(a.running());
    assert_eq!(
        a.calls("restore"),
        1,
        "the repeat waited for the first and found it running"
    );
}

// --- abort and release ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_detaches_first_removes_everything_and_repeats_harmlessly() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.ok("t1", restore(0)).await;
    b.ok("t1", Abort { service: service() }).await;
    {
        let w = b.host.world();
        let (detach, kill) = (
            w.position("remove_port mv-counter"),
            w.position("remove counter"),
        );
        assert!(
            detach < kill,
            "the port goes before the container: {:?}",
            w.calls
        );
        assert!(w.containers.is_empty() && w.netns.is_empty() && w.flows.is_empty());
    }
    assert!(!lab.work_dir("b").join("t1").exists());
    b.ok("t1", Abort { service: service() }).await;
    let b = lab.restart(b);
    b.ok("t1", Abort { service: service() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_removes_the_source_and_every_state_of_the_service_here() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t2").await;
    // An earlier task's record of the service on this host (a rolled-back migration).
    a.ok(
        "t1",
        PreDump {
            service: service(),
            round: 0,
            to: "b".into(),
        },
    )
    .await;
    a.ok("t1", Resume { service: service() }).await;
    a.ok(
        "t2",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    a.ok("t2", Release { service: service() }).await;
    assert!(a.host.world().containers.is_empty());
    assert!(!state_path(&lab.work_dir("a"), "t1", SERVICE).exists());
    assert!(!lab.work_dir("a").join("t2").exists());
    a.ok("t2", Release { service: service() }).await;
    let f = a.fail("t2", Resume { service: service() }).await;
    assert_eq!(
        f.kind,
        FailureKind::WrongState,
        "released: nothing to resume"
    );
}

// --- switch-flow ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_flow_steers_toward_the_agent_and_repeats_harmlessly() {
    let lab = Lab::new().await;
    let m = lab.agent("m");
    let switch = |to: &str| SwitchFlow {
        network: spec().network,
        to: to.into(),
    };
    assert_eq!(m.ok("t1", switch("b")).await, Done);
    m.ok("t1", switch("b")).await;
    assert_eq!(m.host.world().flows[&spec().network.ip], 2);
    m.ok("t1", switch("a")).await;
    assert_eq!(m.host.world().flows[&spec().network.ip], 1);
    let f = m.fail("t1", switch("c")).await;
    assert_eq!(f.kind, FailureKind::InvalidRequest);
    assert!(f.reason.contains("no OvS port toward agent c"), "{f}");
}

// --- late steps ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_finishes_after_its_timeout_is_aborted() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    b.host
        .world()
        .delays
        .insert("restore", Duration::from_millis(300));
    let exec = Arc::new(b.exec.clone());
    let f = run_step(&exec, "t1", restore(0).into(), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(f.kind, FailureKind::Timeout);
    assert_eq!(f.op, Restore::OP);
    eventually("the late restore is aborted", || {
        let w = b.host.world();
        w.count("restore counter") == 1 && w.containers.is_empty() && w.netns.is_empty()
    })
    .await;
    assert!(
        a.state(&lab, "t1").unwrap().final_dump.is_some(),
        "the source is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_finishes_after_its_timeout_is_resumed() {
    let lab = Lab::new().await;
    let (a, _b) = prepared(&lab, "t1").await;
    a.host
        .world()
        .delays
        .insert("checkpoint", Duration::from_millis(300));
    let exec = Arc::new(a.exec.clone());
    let step = Checkpoint {
        service: service(),
        rounds: 0,
        to: "b".into(),
    };
    let f = run_step(&exec, "t1", step.into(), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(f.kind, FailureKind::Timeout);
    eventually("the late checkpoint is resumed", || {
        a.calls("restore counter") == 1 && a.running()
    })
    .await;
    eventually("the state says so", || {
        a.state(&lab, "t1").is_some_and(|s| s.resumed)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_step_that_failed_is_not_undone() {
    let lab = Lab::new().await;
    let (a, b) = prepared(&lab, "t1").await;
    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    {
        let mut w = b.host.world();
        w.delays.insert("restore", Duration::from_millis(200));
        w.failures.insert("restore", "criu failed".into());
    }
    let exec = Arc::new(b.exec.clone());
    run_step(&exec, "t1", restore(0).into(), Duration::from_millis(50))
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.calls("remove_port"),
        0,
        "nothing to undo: {:?}",
        b.host.world().calls
    );
    assert!(
        b.host.world().netns.contains_key("mose-counter"),
        "the prepared namespace stays"
    );
}

// --- wire mapping --------------------------------------------------------------------------

#[test]
fn criu_statistics_map_onto_the_wire() {
    let d = CriuDumpStats {
        frozen_time_us: 7,
        pages_written: 3,
        ..CriuDumpStats::default()
    };
    let s = dump_stats(Some(d));
    assert_eq!(
        (s.frozen_time_us, s.pages_written, s.restore_time_us),
        (Some(7), Some(3), None)
    );
    assert_eq!(dump_stats(None), CriuStats::default());
    let r = CriuRestoreStats {
        restore_time_us: 9,
        ..CriuRestoreStats::default()
    };
    assert_eq!(restore_stats(Some(r)).restore_time_us, Some(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_undoes_exactly_restore_checkpoint_and_deploy() {
    let lab = Lab::new().await;
    let a = lab.agent("a");
    let pairs = [
        (
            Step::from(restore(0)),
            Some(Abort { service: service() }.into()),
        ),
        (
            Checkpoint {
                service: service(),
                rounds: 1,
                to: "b".into(),
            }
            .into(),
            Some(Resume { service: service() }.into()),
        ),
        (
            PreDump {
                service: service(),
                round: 0,
                to: "b".into(),
            }
            .into(),
            None,
        ),
        (
            deploy().into(),
            Some(
                Remove {
                    service: service(),
                    ip: spec().network.ip,
                }
                .into(),
            ),
        ),
        (Prepare { spec: spec() }.into(), None),
        (Resume { service: service() }.into(), None),
    ];
    for (step, undo) in pairs {
        assert_eq!(a.exec.undo_of(&step), undo, "{step:?}");
    }
}

fn deploy() -> Deploy {
    Deploy {
        spec: ServiceSpec {
            network: ServiceNetwork::new(spec().network.ip, 24),
            ..spec()
        },
        args: vec!["--verbose".into()],
        env: [("STATE_MIB".to_string(), "1".to_string())].into(),
        volumes: vec![VolumeMount {
            name: "data".into(),
            path: "/data".into(),
        }],
    }
}

/// The host volume of [`deploy`]'s volume.
const VOLUME: &str = "mose.counter.data";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_made_at_deployment_never_reused_and_go_with_the_service() {
    let lab = Lab::new().await;
    let a = lab.agent("a");
    a.host.world().images.insert(spec().image);
    // Another service's volume, and one of an earlier service of this name.
    a.host.world().volumes.insert("mose.counter2.data".into());
    a.host.world().volumes.insert(VOLUME.into());
    let f = a.fail("d1", deploy()).await;
    assert_eq!(f.kind, FailureKind::WrongState, "{f}");
    assert!(f.reason.contains(VOLUME), "{f}");
    assert!(
        a.host.world().volumes.contains(VOLUME),
        "somebody's data stays"
    );
    assert_eq!(a.host.world().count("add_endpoint"), 0);

    a.host.world().volumes.remove(VOLUME);
    a.ok("d1", deploy()).await;
    assert!(a.host.world().volumes.contains(VOLUME));
    let bad = Deploy {
        volumes: vec![VolumeMount {
            name: "a.b".into(),
            path: "/x".into(),
        }],
        ..deploy()
    };
    assert_eq!(a.fail("d2", bad).await.kind, FailureKind::InvalidRequest);

    a.ok(
        "r1",
        Remove {
            service: service(),
            ip: spec().network.ip,
        },
    )
    .await;
    let w = a.host.world();
    assert_eq!(
        w.volumes.iter().collect::<Vec<_>>(),
        ["mose.counter2.data"],
        "its volume went with it, the other service's stayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_drops_stale_volumes_at_prepare_and_the_source_resumes_on_its_own() {
    let lab = Lab::new().await;
    let (a, b) = (lab.agent("a"), lab.agent("b"));
    a.host.run_service(&spec(), SEQ);
    a.host.world().volumes.insert(VOLUME.into());
    b.host.world().images.insert(spec().image);
    b.host.world().volumes.insert(VOLUME.into());
    b.ok("t1", Prepare { spec: spec() }).await;
    assert!(
        b.host.world().volumes.is_empty(),
        "left over by an earlier abort"
    );
    // A Prepare where the service runs keeps the volume it uses.
    a.ok("t0", Prepare { spec: spec() }).await;
    assert!(a.host.world().volumes.contains(VOLUME));

    a.ok(
        "t1",
        Checkpoint {
            service: service(),
            rounds: 0,
            to: "b".into(),
        },
    )
    .await;
    a.ok("t1", Resume { service: service() }).await;
    let w = a.host.world();
    assert_eq!(
        w.count("restore counter keeping volumes"),
        1,
        "the source's volumes hold the frozen content: {:?}",
        w.calls
    );
    assert!(w.volumes.contains(VOLUME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_builds_endpoint_flows_and_container_and_a_repeat_changes_nothing() {
    let lab = Lab::new().await;
    let a = lab.agent("a");
    // No image here: refused before anything is made.
    let f = a.fail("d1", deploy()).await;
    assert_eq!(f.kind, FailureKind::WrongState, "{f}");
    assert!(f.reason.contains("not present"), "{f}");
    assert_eq!(a.host.world().count("add_endpoint"), 0);

    a.host.world().images.insert(spec().image);
    a.ok("d1", deploy()).await;
    assert!(a.running());
    {
        let w = a.host.world();
        let port = w.ports[&host_ifname(SERVICE)];
        assert_eq!(
            w.flows.get(&spec().network.ip),
            Some(&port),
            "steered locally"
        );
        assert_eq!(w.netns[&netns_name(SERVICE)].ip, spec().network.ip);
        assert_eq!(w.count("run_container"), 1);
    }
    a.ok("d1", deploy()).await;
    assert_eq!(
        a.host.world().count("run_container"),
        1,
        "a repeat runs nothing"
    );
    assert_eq!(a.host.world().count("add_endpoint"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_a_foreign_container_of_that_name_and_cleans_up_a_failed_start() {
    let lab = Lab::new().await;
    let a = lab.agent("a");
    a.host.world().images.insert(spec().image);
    a.host
        .world()
        .failures
        .insert("run_container", "no such file".into());
    let f = a.fail("d1", deploy()).await;
    assert_eq!(f.kind, FailureKind::Runtime, "{f}");
    assert_eq!(
        a.host.world().count("remove counter"),
        1,
        "the half-made container goes"
    );
    // The retry goes through.
    a.ok("d1", deploy()).await;
    assert!(a.running());

    let b = lab.agent("b");
    b.host.world().images.insert(spec().image);
    b.host.run_service(&spec(), SEQ);
    b.host.world().containers.get_mut(SERVICE).unwrap().netns = "elsewhere".into();
    let f = b.fail("d2", deploy()).await;
    assert_eq!(f.kind, FailureKind::WrongState, "{f}");
    assert!(f.reason.contains("already exists"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_takes_everything_away_even_without_the_namespace_and_repeats() {
    let lab = Lab::new().await;
    let a = lab.agent("a");
    a.host.world().images.insert(spec().image);
    a.ok("d1", deploy()).await;
    let remove = Remove {
        service: service(),
        ip: spec().network.ip,
    };
    a.ok("r1", remove.clone()).await;
    {
        let w = a.host.world();
        assert!(
            w.containers.is_empty() && w.flows.is_empty(),
            "{:?}",
            w.calls
        );
        assert!(!w.netns.contains_key(&netns_name(SERVICE)));
    }
    // The namespace is gone, but a flow of the address is still removed by its address.
    a.host.world().flows.insert(spec().network.ip, 7);
    a.ok("r1", remove).await;
    assert!(a.host.world().flows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_flow_removes_the_mobile_steering_and_repeats() {
    let lab = Lab::new().await;
    let m = lab.agent("m");
    let ip = spec().network.ip;
    m.ok(
        "d1",
        SwitchFlow {
            network: spec().network,
            to: "a".into(),
        },
    )
    .await;
    assert_eq!(m.host.world().flows.get(&ip), Some(&1));
    m.ok("r1", ClearFlow { ip }).await;
    m.ok("r1", ClearFlow { ip }).await;
    assert!(m.host.world().flows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_reasserts_the_flows_it_made_and_not_the_removed_ones() {
    let lab = Lab::new().await;
    let m = lab.agent("m");
    let (one, two) = (
        spec().network,
        ServiceNetwork::new(Ipv4Addr::new(10, 77, 0, 101), 24),
    );
    for network in [one.clone(), two.clone()] {
        m.ok(
            "d1",
            SwitchFlow {
                network,
                to: "b".into(),
            },
        )
        .await;
    }
    m.ok("r1", ClearFlow { ip: two.ip }).await;
    // ovs-vswitchd restarted: every flow is gone, and the agent with it.
    m.host.world().flows.clear();
    let m = lab.restart(m);
    assert_eq!(m.exec.reassert_steering().await.unwrap(), 1);
    let w = m.host.world();
    assert_eq!(w.flows.get(&one.ip), Some(&2), "toward b again");
    assert!(
        !w.flows.contains_key(&two.ip),
        "a cleared flow stays cleared"
    );
}
