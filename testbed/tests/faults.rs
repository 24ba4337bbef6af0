//! Fault injection on the four-host testbed (docs/testbed.md, "Fault injection"): the
//! orchestrator drives the real agents (no mocks) through a migration edge1 → edge2 of the
//! counter under the live client, and each run is broken in a different way after the
//! destination prepared:
//!
//! 1. **corrupted image**: the bytes the source serves differ from its manifest's SHA-256;
//! 2. **destination restore fails**: the service's image is removed from edge2's podman;
//! 3. **source agent restarted** after its checkpoint, before the destination fetched;
//! 4. **step timeout**: the destination's agent is paused (SIGSTOP) during the restore until the
//!    orchestrator's restore timeout passes and it gave up waiting for the agent; podman finished
//!    the restore meanwhile, and the agent, continued, must remove that late copy by itself.
//!
//! 5. **release unconfirmed**: the source's agent is paused once the destination's restore is
//!    under way, so the release past the point of no return never answers.
//!
//! After each of 1-4: the task is rolled back, the counter runs on edge1 again and the client is served
//! again on its one connection with its count continuing, and edge2 keeps nothing of the service
//! (no container, namespace, port, flows, task files). After 5 the task failed (exit status 4 of
//! `mose migration`), the counter runs on edge2 and the client followed it. One testbed is
//! brought up for all five.
//!
//! Determinism: the destination fetches the image within milliseconds of the checkpoint, faster
//! than this test can see the checkpoint finish. So the test pauses edge2's agent (SIGSTOP) once
//! the checkpoint started (the destination prepared by then), injects the fault while the
//! orchestrator's Restore waits in that agent's socket, and continues it: no hook in the product.
//!
//! Needs root, `testbed/setup-host.sh`, and `mose-agent` + `mose-orchestrator` built in the same
//! profile: `cargo build -p mose-agent -p mose-orchestrator && sudo -E MOSE_ROOT_TESTS=1 cargo
//! test -p mose-testbed --test faults -- --nocapture`.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mose_api::{MigrationRequest, TaskRecord, TaskStatus};
use mose_protocol::messages::{Phase, PhaseStatus};
use mose_protocol::model::Objective;
use mose_protocol::steps::ImageId;
use mose_testbed::client::LiveClient;
use mose_testbed::fourhost::{Config, FourHost, AGENT_WORK_DIR, EDGE1, EDGE2};

use common::*;

/// Not `mtb-`: `mose-testbed down` (default prefix) must not sweep this test's testbed.
const PREFIX: &str = "mtf-";
/// API link 10.98.3.0/30 (the CLI uses 0, the four-host test 1).
const API_NET: u8 = 3;
/// Long enough that pausing edge2's agent for fault 4 makes the orchestrator's restore time out
/// (restore_ms + the RPC's 2 s travel margin = 6 s) before the Zenoh lease declares it gone, and
/// that the short pauses of faults 1-3 (≈0.3 s) go unnoticed.
const LEASE_MS: u64 = 8000;
/// The orchestrator's steps for this testbed: a restore (after the transfer) may take 4 s — the
/// failing restore of fault 2 takes ≈3 s (podman tries to pull the missing image) and must fail,
/// not time out; rollback attempts are short so the timeout fault rolls back within seconds; an
/// absent agent is waited for 4 s (fault 3's source returns after 2 s, fault 4's destination
/// only after the orchestrator gave up on it); a release may take 3 s (fault 5's source never
/// answers: its attempts time out until the lease declares it gone, ≈10 s).
const ORCHESTRATOR_TOML: &str = "[steps]
restore_ms = 4000
release_ms = 3000
rollback_ms = 1000
retry_backoff_ms = 200
agent_wait_ms = 4000
";

#[tokio::test(flavor = "multi_thread")]
async fn faults_after_prepare_roll_back_to_the_source_and_leave_the_destination_clean() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    sweep_before(PREFIX).await;
    let binaries = test_binaries();
    // Kept after the run (logs of every agent and the orchestrator); /work and /tmp are shared
    // with the hosts, so ctrl's orchestrator reads its config file at this path.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults");
    std::fs::create_dir_all(&out).expect("output directory");
    let toml = out.join("orchestrator.toml");
    std::fs::write(&toml, ORCHESTRATOR_TOML).expect("write the orchestrator's config");
    let cfg = Config {
        prefix: PREFIX.into(),
        binaries,
        out_dir: out.clone(),
        api_net: API_NET,
        lease_ms: LEASE_MS,
        second_mobile: false,
    };
    let t = Instant::now();
    let (mut tb, _) = FourHost::up_with(
        cfg,
        vec!["--config".into(), toml.to_string_lossy().into_owned()],
    )
    .await
    .expect("four hosts up");
    println!("UP in {} ms", t.elapsed().as_millis());
    let state = tb.state().clone();
    let api = state.api().expect("API client");
    assert_eq!(
        tb.service_traces(EDGE2).await.expect("inspect edge2"),
        Vec::<String>::new(),
        "edge2 is clean before any fault"
    );

    let client = mose_testbed::demo::start_client(&state, &mut |l| println!("{l}"))
        .await
        .expect("client connects and is served");
    let request = MigrationRequest {
        service: state.service.clone(),
        // A deployed service: its source and mobiles come from its record.
        source: None,
        destination: EDGE2.into(),
        mobiles: None,
        objective: Objective::Downtime,
        target_downtime_ms: 1000.0,
        target_duration_ms: 5000.0,
        bandwidth_bytes_per_s: None,
    };
    let mut windows = Vec::new();

    // 1. Corrupted image. The source serves its archive through a file handle opened when the
    // checkpoint finished; the test flips bytes in that file and puts an intact copy under the
    // archive's name. The destination fetches the flipped bytes (what a bad disk, memory or
    // link would hand it), while the source's own archive — which its Resume restores from —
    // stays intact, as the source's copy must.
    let from = client.now_ms();
    let (id, t) = submit_until_checkpoint(&api, &request, false).await;
    tb.pause_agent(EDGE2).expect("pause edge2's agent");
    wait_for_event(&api, &id, Phase::Checkpoint, true).await;
    let archive = tb
        .host(EDGE1)
        .unwrap()
        .outside_path(
            Path::new(AGENT_WORK_DIR)
                .join(&id)
                .join(format!("{}.tar", ImageId::Final.key_chunk())),
        )
        .expect("edge1's work dir");
    corrupt_served_copy(&archive);
    tb.continue_agent(EDGE2).expect("continue edge2's agent");
    let task = wait_finished(&api, &id, t).await;
    let error = task.error.clone().unwrap_or_default();
    assert!(error.contains("SHA-256"), "not a digest mismatch: {task:?}");
    windows.push((
        "corrupted image",
        from,
        rolled_back(&tb, &client, &task).await,
    ));

    // 2. The destination's restore fails for real: edge2 no longer has the service's image
    // (Prepare checked it; it is removed while edge2's agent is paused), so podman's import
    // has nothing to create the container from.
    let image = counter_image().await;
    let from = client.now_ms();
    let (id, t) = submit_until_checkpoint(&api, &request, false).await;
    tb.pause_agent(EDGE2).expect("pause edge2's agent");
    tb.host(EDGE2)
        .unwrap()
        .podman_output(["rmi", "-f", &image.reference], Duration::from_secs(30))
        .await
        .expect("remove the image on edge2");
    tb.continue_agent(EDGE2).expect("continue edge2's agent");
    let task = wait_finished(&api, &id, t).await;
    let error = task.error.clone().unwrap_or_default();
    assert!(
        task.events.iter().any(|e| e.phase == Phase::Restore
            && e.agent == EDGE2
            && matches!(e.status, PhaseStatus::Failed { .. })),
        "the restore did not fail: {task:?}"
    );
    println!("RESTORE FAILED: {error}");
    windows.push((
        "restore fails",
        from,
        rolled_back(&tb, &client, &task).await,
    ));
    tb.host(EDGE2)
        .unwrap()
        .load_image(&image)
        .await
        .expect("reload the image on edge2");

    // 3. The source's agent dies after its checkpoint, before the destination fetched, and is
    // restarted 2 s later (longer than the rollback's retries take): the fetch fails, and the
    // rollback's Resume must wait for the source's agent, which comes back knowing nothing but
    // what is on its disk.
    let from = client.now_ms();
    let (id, t) = submit_until_checkpoint(&api, &request, false).await;
    tb.pause_agent(EDGE2).expect("pause edge2's agent");
    wait_for_event(&api, &id, Phase::Checkpoint, true).await;
    tb.kill_agent(EDGE1).await.expect("kill edge1's agent");
    tb.continue_agent(EDGE2).expect("continue edge2's agent");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = api.migration(&id).await.expect("poll");
    assert!(!now.status.is_finished(), "gave up on the source: {now:?}");
    tb.restart_agent(EDGE1)
        .await
        .expect("restart edge1's agent");
    let task = wait_finished(&api, &id, t).await;
    windows.push((
        "source agent restarted",
        from,
        rolled_back(&tb, &client, &task).await,
    ));
    tb.wait_for_agents()
        .await
        .expect("edge1's agent listed again");

    // 4. Timeout: edge2's agent is paused once podman's restore is under way (the restored
    // container exists in edge2's podman), for longer than the restore's timeout and then the
    // orchestrator's patience with it
    // (`agent_wait_ms`): the rollback resumes the source without it and gives up on cleaning
    // edge2, where podman finished the restore meanwhile — a running orphan copy. Continued
    // only after that, the agent must remove it by itself: the restore it finishes late was
    // answered as timed out, so it is unwanted.
    let from = client.now_ms();
    let task = api.submit(&request).await.expect("submit");
    let (id, t) = (task.id, Instant::now());
    restore_under_way(&tb, &api, &id).await;
    tb.pause_agent(EDGE2).expect("pause edge2's agent");
    let paused = Instant::now();
    let task = wait_finished(&api, &id, t).await;
    let resumed_at = task
        .events
        .iter()
        .find(|e| {
            e.phase == Phase::Rollback
                && e.agent == EDGE1
                && matches!(e.status, PhaseStatus::Finished)
        })
        .map(|e| e.at_us);
    println!(
        "TIMEOUT: task ended {} ms after pausing edge2 (source resumed at {resumed_at:?}): {:?}",
        paused.elapsed().as_millis(),
        task.error
    );
    assert!(
        task.events.iter().any(|e| e.phase == Phase::Restore
            && matches!(&e.status, PhaseStatus::Failed { error }
                if error.contains("did not answer 'restore' within"))),
        "the restore did not time out: {task:?}"
    );
    let error = task.error.clone().unwrap_or_default();
    assert!(error.contains("edge2 may keep leftovers"), "{error}");
    let orphan = tb.service_traces(EDGE2).await.expect("inspect edge2");
    println!("WHILE PAUSED edge2 keeps: {orphan:?}");
    assert!(
        orphan.iter().any(|t| t.starts_with("container")),
        "podman did not finish the restore while the agent was paused: {orphan:?}"
    );
    tb.continue_agent(EDGE2).expect("continue edge2's agent");
    windows.push(("step timeout", from, rolled_back(&tb, &client, &task).await));
    // The late copy on edge2 answered the client (its segments reach the mobile bridge, which
    // steers only traffic *to* the service), with TCP timestamps later than the resumed
    // source's: the client's PAWS check then drops the source's segments for a while.
    println!(
        "CLIENT TCP counters: {}",
        run(
            "ip",
            &[
                "netns",
                "exec",
                &state.client_netns.file_name().unwrap().to_string_lossy(),
                "nstat",
                "-az",
                "TcpExtPAWSEstab",
                "TcpExtTCPACKSkippedPAWS",
                "TcpRetransSegs",
            ],
        )
        .await
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
    );

    // 5. The source never confirms its release: edge1's agent is paused once edge2's restore
    // is under way (edge1's part is done by then: edge2 has its archive). Past the point of no
    // return the service runs at edge2 and the client follows it, but edge1 keeps its stopped
    // copy until its agent answers again: the task fails, since an operator must look, and
    // `mose migration ID` says so with exit status 4.
    let task = api.submit(&request).await.expect("submit");
    let (id, t) = (task.id, Instant::now());
    restore_under_way(&tb, &api, &id).await;
    tb.pause_agent(EDGE1).expect("pause edge1's agent");
    let task = wait_finished(&api, &id, t).await;
    tb.continue_agent(EDGE1).expect("continue edge1's agent");
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    let error = task.error.clone().unwrap_or_default();
    assert!(
        error.contains("runs at edge2, but edge1 did not release its copy"),
        "{error}"
    );
    runs_and_serves_at(&tb, &client, EDGE2).await;
    let status = tokio::process::Command::new(mose_binary())
        .args(["--api", &state.api_url, "migration", &id, "--follow"])
        .arg("--token-file")
        .arg(&state.api_tokens)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("run mose");
    assert_eq!(status.code(), Some(4), "failed: exit 4");
    println!(
        "RELEASE UNCONFIRMED: {error}; edge1 keeps, once its agent runs again: {:?}",
        tb.service_traces(EDGE1).await.expect("inspect edge1")
    );

    // The client over all of it: one connection, a count without jump or reset, and per fault
    // the longest time it went without a reply.
    let timeline = client.finish();
    // Every sample, to recompute any number (as the demo's client-timeline.json).
    std::fs::write(
        out.join("client-timeline.json"),
        serde_json::to_string(&timeline).expect("encode the timeline"),
    )
    .expect("write the client's timeline");
    assert!(timeline.error.is_none(), "{:?}", timeline.error);
    let n = timeline.samples.len();
    let all = timeline.kpis(0.0, timeline.samples[n - 1].reply_ms());
    assert!(all.same_connection && all.state_continuous, "{all:?}");
    for (name, from, (to, rollback_ms)) in windows {
        let k = timeline.kpis(from, to);
        assert!(k.same_connection && k.state_continuous, "{name}: {k:?}");
        println!(
            "FAULT {name:<24} rollback {rollback_ms:>6.0} ms  client-observed downtime {:>6.0} ms \
             (client window {from:.0}-{to:.0} ms)",
            k.client_downtime_ms
        );
    }
    println!(
        "CLIENT {n} replies, counts 1..={}",
        timeline.samples[n - 1].count
    );
    let inodes: Vec<_> = ["edge1", "edge2", "mobile", "ctrl"]
        .iter()
        .map(|h| tb.host(h).unwrap().inodes())
        .collect();
    tb.destroy().await.expect("teardown");
    assert_nothing_left(PREFIX, &inodes, &[], &[]).await;
}

/// After a fault: the task rolled back, the service runs at the source, the client is served
/// again, and the destination keeps nothing of the service. Returns when the client was served
/// again (client ms, the end of the fault's window) and the rollback's duration (first
/// rollback event → task finished).
async fn rolled_back(tb: &FourHost, client: &LiveClient, task: &TaskRecord) -> (f64, f64) {
    assert_eq!(task.status, TaskStatus::RolledBack, "{task:?}");
    println!("ROLLED BACK: {:?}", task.error);
    runs_and_serves_at(tb, client, EDGE1).await;
    let to = client.now_ms();
    // The destination's agent may still be removing what it made (a late step's own end).
    let clean = eventually_async(Duration::from_secs(10), || async {
        tb.service_traces(EDGE2).await.expect("inspect edge2")
    })
    .await;
    assert_eq!(clean, Vec::<String>::new(), "edge2 keeps traces");
    let start = task
        .events
        .iter()
        .filter(|e| e.phase == Phase::Rollback)
        .map(|e| e.at_us)
        .min()
        .expect("rollback events");
    let rollback_ms = (task.finished_us.expect("finished") - start) as f64 / 1e3;
    (to, rollback_ms)
}

/// Waits until the destination (edge2) of task `id` has begun podman's restore: its fetch
/// finished and the restored container exists in edge2's podman. Not at the transfer's end: the
/// agent still has work to do before it calls podman (seen once in CI). The container appears
/// when podman has the whole archive; CRIU's restore takes ≈0.25 s more, which this poll does
/// not miss.
async fn restore_under_way(tb: &FourHost, api: &mose_api::ApiClient, id: &str) {
    wait_for(api, id, Duration::from_secs(30), |r| {
        r.events.iter().any(|e| {
            e.phase == Phase::Transfer
                && e.agent == EDGE2
                && matches!(e.status, PhaseStatus::Finished)
        })
    })
    .await;
    let edge2 = tb.host(EDGE2).expect("edge2");
    let edge2_podman =
        mose_agent::runtime::Podman::new(edge2.podman_socket()).expect("edge2's podman");
    let polled = Instant::now();
    while !edge2_podman.exists("counter").await.unwrap_or(false) {
        assert!(
            polled.elapsed() < Duration::from_secs(10),
            "podman on edge2 never began the restore"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The service runs at `host`, and the client is served again on its one
/// connection.
async fn runs_and_serves_at(tb: &FourHost, client: &LiveClient, host: &str) {
    assert_eq!(
        tb.state().service_location().await.expect("ask podman"),
        Some(host.to_string()),
        "where the service runs"
    );
    client
        .served_again(20, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("the client is not served at {host} again: {e}"));
}

/// Polls `traces` until it returns nothing or `limit` passes; returns the last answer.
async fn eventually_async<F, Fut>(limit: Duration, mut traces: F) -> Vec<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let end = Instant::now() + limit;
    loop {
        let found = traces().await;
        if found.is_empty() || Instant::now() > end {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Flip bytes in the middle of the archive through its current inode (the one the source's
/// blob server holds open), after putting an intact copy under its name.
fn corrupt_served_copy(archive: &Path) {
    let bytes = std::fs::read(archive).expect("read the served archive");
    assert!(bytes.len() > 1024, "archive of {} bytes", bytes.len());
    let intact: PathBuf = archive.with_extension("intact");
    std::fs::write(&intact, &bytes).expect("copy the archive");
    let served = std::fs::OpenOptions::new()
        .write(true)
        .open(archive)
        .expect("open the served archive");
    let at = bytes.len() as u64 / 2;
    let flipped: Vec<u8> = bytes[at as usize..at as usize + 16]
        .iter()
        .map(|b| !b)
        .collect();
    served
        .write_all_at(&flipped, at)
        .expect("flip bytes of the served archive");
    std::fs::rename(&intact, archive).expect("put the intact archive under its name");
    println!(
        "CORRUPTED 16 bytes at {at} of the {} bytes served",
        bytes.len()
    );
}
