//! Root integration test of a service with clients on two devices: on the testbed with a second
//! mobile host, a Mosquitto broker (Debian's, built locally, loaded on edge1 only) is deployed
//! through `POST /v1/services` for both mobiles (the default: every mobile present). A QoS 1
//! `mosquitto_sub` on mobile and a `mosquitto_pub` on mobile2 keep one connection each while
//! the broker moves edge1 → edge2 → edge1, the way back once refused by a failing restore on
//! edge1 (rolled back, the broker safe on edge2). Both flows follow each move and stay with the
//! broker after the rollback; the subscriber receives every message the publisher sent, once,
//! in order, and neither client ever connected twice.
//!
//! Needs root, a host prepared by `testbed/setup-host.sh` (mosquitto, mosquitto-clients), and
//! `mose-agent` + `mose-orchestrator` built in the same profile.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mose_api::{DeployRequest, MigrationRequest, TaskRecord, TaskStatus};
use mose_protocol::messages::{Phase, PhaseStatus};
use mose_protocol::model::Objective;
use mose_testbed::fourhost::{port_toward, FourHost, EDGE1, EDGE2, MOBILE, MOBILE2};
use mose_testbed::images::MOSQUITTO;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use common::*;

const PREFIX: &str = "mtb-mq-";
/// Not the other tests' API networks.
const API_NET: u8 = 5;
const TOPIC: &str = "mose/seq";
/// One message every this often, during the whole test.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// The lines an MQTT client printed so far (its `-d` debug lines and, for the subscriber, the
/// payloads), each with when it was read: stdout is line-buffered through `stdbuf`.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<(Instant, String)>>>);

impl Output {
    fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }
    /// The longest time between two payloads arriving: what the subscriber felt of the
    /// migrations (a message is published every [`PUBLISH_EVERY`]).
    fn longest_gap(&self) -> Duration {
        let arrivals: Vec<Instant> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| is_payload(l))
            .map(|(t, _)| *t)
            .collect();
        arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
    /// Debug lines containing `needle` (`sending CONNECT`, `received PUBACK`).
    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }
    /// The payloads received (the subscriber's lines that are not debug lines).
    fn payloads(&self) -> Vec<String> {
        self.lines().into_iter().filter(|l| is_payload(l)).collect()
    }
}

/// A subscriber's line that is a message, not one of its `-d` debug lines.
fn is_payload(line: &str) -> bool {
    !line.starts_with("Client ") && !line.starts_with("Subscribed")
}

/// `program args` in the client namespace `netns`, its stdout collected into an [`Output`].
fn client(netns: &Path, program: &str, args: &[&str]) -> (Child, Output) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["stdbuf", "-oL", program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let out = Output::default();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let sink = out.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.0.lock().unwrap().push((Instant::now(), line));
        }
    });
    (child, out)
}

/// Every mobile's three steering flows for `ip` lead to its wire toward `edge`.
async fn assert_flows_toward(tb: &FourHost, ip: Ipv4Addr, edge: &str) {
    for mobile in [MOBILE, MOBILE2] {
        let overlay = tb.overlay(mobile).unwrap();
        let port = overlay.ofport(&port_toward(edge)).await.unwrap();
        let flows = overlay.steering().flows(ip).await.unwrap();
        assert_eq!(flows.len(), 3, "{mobile}: {flows:?}");
        for f in &flows {
            assert!(
                f.ends_with(&format!("actions=output:{port}")),
                "{mobile} steers {ip} toward {edge} (port {port}): {f}"
            );
        }
    }
}

/// Migrates the broker to `to` by name and waits for the outcome.
async fn migrate(tb: &FourHost, to: &str) -> TaskRecord {
    let api = tb.state().api().expect("API client");
    let request = MigrationRequest {
        service: "mosquitto".into(),
        destination: to.into(),
        source: None,
        mobiles: None,
        objective: Objective::Downtime,
        target_downtime_ms: 1000.0,
        target_duration_ms: 5000.0,
        bandwidth_bytes_per_s: None,
    };
    let t = Instant::now();
    let task = api.submit(&request).await.expect("POST /v1/migrations");
    wait_finished(&api, &task.id, t).await
}

/// Both mobiles' flow switch events, finished, in the task's record.
fn switched_on_both(task: &TaskRecord) {
    for mobile in [MOBILE, MOBILE2] {
        assert!(
            task.events.iter().any(|e| e.agent == mobile
                && e.phase == Phase::FlowSwitch
                && matches!(e.status, PhaseStatus::Finished)),
            "{mobile}'s switch: {:?}",
            task.events
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_with_clients_on_two_mobiles_moves_there_and_back_losing_nothing() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    let (tb, _out) = up_with_image_on_edge1(PREFIX, API_NET, true, &MOSQUITTO).await;
    let api = tb.state().api().expect("API client");
    let svc = api
        .deploy(&DeployRequest {
            name: "mosquitto".into(),
            image: MOSQUITTO.reference.into(),
            host: EDGE1.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
            mobiles: None,
        })
        .await
        .expect("POST /v1/services");
    assert_eq!(svc.mobiles, [MOBILE, MOBILE2], "every mobile present");
    let ip = svc.network.ip;
    assert_flows_toward(&tb, ip, EDGE1).await;

    // The subscriber on mobile, subscribed before anything is published.
    let host = ip.to_string();
    let (_sub, sub) = client(
        &tb.state().client_netns,
        "mosquitto_sub",
        &["-h", &host, "-t", TOPIC, "-q", "1", "-i", "mose-sub", "-d"],
    );
    assert!(
        eventually(Duration::from_secs(10), || sub.count("received SUBACK")
            == 1)
        .await,
        "subscribed: {:?}",
        sub.lines()
    );
    // The publisher on mobile2: one line of stdin, one QoS 1 message, one connection.
    let (mut publisher, acks) = client(
        tb.state().client2_netns.as_deref().unwrap(),
        "mosquitto_pub",
        &[
            "-h", &host, "-t", TOPIC, "-q", "1", "-i", "mose-pub", "-d", "-l",
        ],
    );
    let mut stdin = publisher.stdin.take().unwrap();
    let sent = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn({
        let (sent, stop) = (sent.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                stdin.write_all(format!("m{n}\n").as_bytes()).await.unwrap();
                sent.store(n + 1, Ordering::Relaxed);
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
            stdin // dropped by the caller: end of input ends the publisher
        }
    });
    assert!(
        eventually(Duration::from_secs(10), || sub.payloads().len() >= 25).await,
        "messages flow before the migration: {:?}",
        sub.lines()
    );

    // edge1 → edge2: the image moves, both flows switch.
    let there = migrate(&tb, EDGE2).await;
    assert_eq!(there.status, TaskStatus::Succeeded, "{there:#?}");
    switched_on_both(&there);
    assert_flows_toward(&tb, ip, EDGE2).await;
    println!(
        "MQTT edge1 -> edge2: frozen {:?} ms, {} messages so far",
        there.measurements.frozen_ms,
        sent.load(Ordering::Relaxed)
    );

    // The way back, refused once by edge1's restore: another container named mosquitto runs
    // there, which a restore never replaces. Rolled back: the broker stays on edge2, and so
    // do both flows.
    squat(&tb, EDGE1, "mosquitto").await;
    let refused = migrate(&tb, EDGE1).await;
    assert_eq!(refused.status, TaskStatus::RolledBack, "{refused:#?}");
    assert!(
        refused
            .events
            .iter()
            .any(|e| e.agent == EDGE1 && matches!(e.status, PhaseStatus::Failed { .. })),
        "the restore on edge1 failed: {:?}",
        refused.events
    );
    assert_flows_toward(&tb, ip, EDGE2).await;
    assert_eq!(api.service("mosquitto").await.unwrap().record.host, EDGE2);
    unsquat(&tb, EDGE1, "mosquitto").await;

    // edge2 → edge1, now without a fault.
    let back = migrate(&tb, EDGE1).await;
    assert_eq!(back.status, TaskStatus::Succeeded, "{back:#?}");
    switched_on_both(&back);
    assert_flows_toward(&tb, ip, EDGE1).await;
    assert_eq!(api.service("mosquitto").await.unwrap().record.host, EDGE1);

    // A second of traffic at edge1, then the end of input: the publisher sends what is left,
    // disconnects and exits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    drop(feeder.await.unwrap());
    let status = tokio::time::timeout(Duration::from_secs(30), publisher.wait())
        .await
        .expect("the publisher exits at the end of its input")
        .unwrap();
    assert!(status.success(), "mosquitto_pub: {status}");
    let total = sent.load(Ordering::Relaxed);
    assert_eq!(
        acks.count("received PUBACK"),
        total as usize,
        "the broker acknowledged every message"
    );
    let expected: Vec<String> = (0..total).map(|n| format!("m{n}")).collect();
    assert!(
        eventually(Duration::from_secs(30), || sub.payloads().len()
            >= expected.len())
        .await,
        "received {} of {total}",
        sub.payloads().len()
    );
    assert_eq!(sub.payloads(), expected, "every message, once, in order");
    assert_eq!(
        acks.count("sending CONNECT"),
        1,
        "the publisher's one connection"
    );
    assert_eq!(
        sub.count("sending CONNECT"),
        1,
        "the subscriber's one connection"
    );
    println!(
        "MQTT edge1 -> edge2 -> (rolled back) -> edge1: {total} QoS 1 messages from mobile2 \
         to mobile, all delivered in order over one connection each; longest time between two \
         deliveries {} ms (one message every {} ms)",
        sub.longest_gap().as_millis(),
        PUBLISH_EVERY.as_millis()
    );
    tb.destroy().await.expect("down");
}
