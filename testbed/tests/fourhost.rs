//! Root integration test of the four-host testbed: `up` (four emulated hosts, OvS wires, podman,
//! the real mose-agent ×3 and mose-orchestrator found by multicast scouting, the counter on
//! edge1), the live client against the service, one cold COAT migration edge1 → edge2 through
//! the orchestrator's API while the client runs (same connection, count continuous), a second
//! migration back cancelled after the checkpoint and another whose destination agent is killed
//! during the checkpoint and restarted after the source resumed (both rolled back: the service
//! runs at the source, same connection, count continuous; the destination keeps nothing), then
//! `mose-testbed down` leaving nothing behind. More faults: `tests/faults.rs`.
//!
//! Needs root, a host prepared by `testbed/setup-host.sh`, and `mose-agent` + `mose-orchestrator`
//! built in the same profile (`cargo test --workspace` builds them; with `-p mose-testbed` run
//! `cargo build -p mose-agent -p mose-orchestrator` first).

mod common;

use std::time::{Duration, Instant};

use mose_api::{MigrationRequest, TaskStatus};
use mose_protocol::messages::{Phase, PhaseStatus};
use mose_protocol::model::Objective;
use mose_testbed::demo::{migrate, Targets};
use mose_testbed::fourhost::{Config, FourHost, State, EDGE1, EDGE2, MOBILE};

use common::*;

const PREFIX: &str = "mtb-4h-";

#[tokio::test(flavor = "multi_thread")]
async fn four_hosts_up_discover_migrate_under_a_live_client_and_go_down() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    sweep_before(PREFIX).await;
    let binaries = test_binaries();
    let out = tempfile::tempdir().unwrap();
    let cfg = Config {
        prefix: PREFIX.into(),
        binaries,
        out_dir: out.path().to_path_buf(),
        // Not the CLI's 0: a demo may run next to this test.
        api_net: 1,
        lease_ms: 1000,
        second_mobile: false,
    };

    let t = Instant::now();
    let (mut tb, timings) = FourHost::up(cfg.clone()).await.expect("four hosts up");
    println!("UP in {} ms: {timings:?}", t.elapsed().as_millis());
    let inodes: Vec<_> = ["edge1", "edge2", "mobile", "ctrl"]
        .iter()
        .map(|h| tb.host(h).unwrap().inodes())
        .collect();

    // Discovery: the orchestrator (inside ctrl, reached over the API link) lists the three
    // agents with their profiles; nobody configured an endpoint.
    let state = tb.state().clone();
    let agents = state
        .api()
        .expect("API client")
        .agents()
        .await
        .expect("GET /v1/agents");
    let mut ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, [EDGE1, EDGE2, MOBILE]);
    assert!(agents.iter().all(|a| a.profile.is_some()), "{agents:?}");
    assert_eq!(
        State::load(&cfg.state_file()).expect("state.json"),
        state,
        "state.json is what later commands read"
    );
    assert_eq!(
        state.service_location().await.expect("ask podman"),
        Some(EDGE1.to_string())
    );

    // Edge1's metrics carry the running service: its state size and a measured dirty rate.
    let t = Instant::now();
    let svc = loop {
        let edge1 = state
            .api()
            .expect("API client")
            .agent(EDGE1)
            .await
            .expect("GET /v1/agents/edge1");
        let found = edge1.metrics.and_then(|m| {
            m.containers
                .into_iter()
                .find(|c| c.name == state.service && c.dirty_rate_bytes_per_s.is_some())
        });
        if let Some(c) = found {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "edge1's metrics never listed the service"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(svc.state_bytes > 0, "{svc:?}");
    println!("METRICS {svc:?}");

    // The live client from the mobile host, through the mobile bridge's steering to edge1.
    let client = mose_testbed::demo::start_client(&state, &mut |l| println!("{l}"))
        .await
        .expect("client connects and is served");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = Instant::now();
    let task = migrate(
        &state,
        EDGE1,
        EDGE2,
        Targets {
            downtime_ms: 1000.0,
            duration_ms: 5000.0,
            objective: Objective::Downtime,
            bandwidth_bytes_per_s: None,
        },
        &mut |line| println!("{line}"),
    )
    .await
    .expect("migration submitted and finished");
    assert_eq!(task.status, TaskStatus::Succeeded, "{task:?}");
    println!(
        "MIGRATED edge1 -> edge2 in {} ms",
        before.elapsed().as_millis()
    );
    assert_eq!(
        state.service_location().await.expect("ask podman"),
        Some(EDGE2.to_string())
    );
    // Served again from edge2 on the same connection.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Faults once the source is frozen: the task is cancelled after the checkpoint (the image on
    // its way); then the destination's agent dies during the checkpoint. Each time the orchestrator
    // must roll back: the service runs at the source again, the client keeps its connection
    // and its count.
    let api = state.api().expect("API client");
    let back = MigrationRequest {
        service: state.service.clone(),
        // A deployed service: its source and mobiles come from its record.
        source: None,
        destination: EDGE1.into(),
        mobiles: None,
        objective: Objective::Downtime,
        target_downtime_ms: 1000.0,
        target_duration_ms: 5000.0,
        bandwidth_bytes_per_s: None,
    };
    let (id, t) = submit_until_checkpoint(&api, &back, true).await;
    api.cancel(&id).await.expect("DELETE /v1/migrations/{id}");
    let task = wait_finished(&api, &id, t).await;
    assert_eq!(task.status, TaskStatus::Cancelled, "{task:?}");
    println!(
        "CANCELLED after the checkpoint, rolled back in {} ms",
        t.elapsed().as_millis()
    );
    assert_eq!(
        state.service_location().await.expect("ask podman"),
        Some(EDGE2.to_string()),
        "the service runs at the source again after the cancel"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Killed while the source freezes, so the destination never restores. The source resumes
    // without it; the destination's cleanup waits for its agent, restarted like a supervisor
    // would once the source serves again, which then removes what Prepare made there.
    let (id, t) = submit_until_checkpoint(&api, &back, false).await;
    tb.kill_agent(EDGE1).await.expect("kill edge1's agent");
    println!(
        "KILLED edge1's agent {} ms after submitting",
        t.elapsed().as_millis()
    );
    wait_for(&api, &id, Duration::from_secs(60), |r| {
        assert!(!r.status.is_finished(), "{r:?}");
        r.events.iter().any(|e| {
            e.phase == Phase::Rollback
                && e.agent == EDGE2
                && matches!(e.status, PhaseStatus::Finished)
        })
    })
    .await;
    println!("SOURCE RESUMED after {} ms", t.elapsed().as_millis());
    assert_eq!(
        state.service_location().await.expect("ask podman"),
        Some(EDGE2.to_string()),
        "the service runs at the source again"
    );
    tb.restart_agent(EDGE1)
        .await
        .expect("restart edge1's agent");
    let task = wait_finished(&api, &id, t).await;
    assert_eq!(task.status, TaskStatus::RolledBack, "{task:?}");
    println!(
        "ROLLED BACK after {} ms: {:?}",
        t.elapsed().as_millis(),
        task.error
    );
    let error = task.error.unwrap_or_default();
    assert!(!error.contains("leftovers"), "{error}");
    assert_eq!(
        tb.service_traces(EDGE1).await.expect("inspect edge1"),
        Vec::<String>::new(),
        "the destination keeps nothing once its agent is back"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let timeline = client.finish();
    assert!(timeline.error.is_none(), "{:?}", timeline.error);
    let n = timeline.samples.len();
    assert!(n > 100, "only {n} replies");
    let end = timeline.samples[n - 1].reply_ms();
    let k = timeline.kpis(0.0, end);
    assert!(k.same_connection && k.state_continuous, "{k:?}");
    println!("CLIENT-OBSERVED DOWNTIME {:.0} ms", k.client_downtime_ms);
    assert_eq!(
        timeline.samples[0].count, 1,
        "a fresh service counts from 1"
    );
    let mut lat: Vec<f64> = timeline.samples.iter().map(|s| s.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "CLIENT {n} replies, counts 1..={}, latency median {:.3} ms, max {:.3} ms",
        timeline.samples[n - 1].count,
        lat[n / 2],
        lat[n - 1]
    );

    // Leave it running as `up` does, and remove it the way an operator would.
    tb.persist();
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mose-testbed"))
        .args(["down", "--prefix", PREFIX])
        .output()
        .expect("run mose-testbed down");
    assert!(
        out.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("DOWN in {} ms", t.elapsed().as_millis());
    assert_nothing_left(PREFIX, &inodes, &[], &[]).await;
}
