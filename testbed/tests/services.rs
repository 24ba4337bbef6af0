//! Root integration test of a service an operator deploys: on the four-host testbed, a Redis
//! (Debian's redis-server, built locally, loaded on edge1 only) is deployed on edge1 through
//! `POST /v1/services`, a `redis-cli` on the mobile host writes keys over one connection while
//! the service is migrated to edge2 by name only (no source, no mobile named; its image moves
//! before the freeze; its volume, holding the AOF, moves inside the checkpoint), and the same
//! connection reads every key back, also after edge2's redis reloaded them from the volume.
//! Then the `mose` CLI's exit statuses (3 for a rollback, 0, 1), `mose -o json services`, the
//! deployment errors an operator meets, and `DELETE` leaving nothing on the hosts (volumes
//! included).
//!
//! Needs root, a host prepared by `testbed/setup-host.sh` (redis-server, redis-tools), and
//! `mose-agent` + `mose-orchestrator` built in the same profile.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mose_api::{ClientError, DeployRequest, MigrationRequest, TaskStatus};
use mose_protocol::messages::{Phase, PhaseStatus};
use mose_protocol::model::Objective;
use mose_testbed::fourhost::{EDGE1, EDGE2, MOBILE};
use mose_testbed::images::REDIS;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use common::*;

const PREFIX: &str = "mtb-svc-";
/// Not the other tests' API networks: they may run next to this one.
const API_NET: u8 = 4;

/// One `redis-cli` process in the client's namespace: one TCP connection, commands written to
/// its stdin one per line, one reply line read back for each (raw output: stdout is a pipe).
struct RedisCli {
    /// Killed when dropped.
    _child: Child,
    stdin: ChildStdin,
    replies: Lines<BufReader<ChildStdout>>,
}

impl RedisCli {
    async fn start(netns: &Path, ip: std::net::Ipv4Addr) -> RedisCli {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["redis-cli", "-h", &ip.to_string(), "-p", "6379"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-cli");
        let stdin = child.stdin.take().unwrap();
        let replies = BufReader::new(child.stdout.take().unwrap()).lines();
        RedisCli {
            _child: child,
            stdin,
            replies,
        }
    }

    /// Sends one command, returns its reply line.
    async fn ask(&mut self, command: &str) -> String {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to redis-cli");
        let line = tokio::time::timeout(Duration::from_secs(30), self.replies.next_line())
            .await
            .expect("redis-cli answers within 30 s")
            .expect("read from redis-cli");
        line.unwrap_or_else(|| panic!("redis-cli ended after `{command}`"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operators_redis_is_deployed_migrated_by_name_under_its_client_and_removed() {
    mose_testkit::root_test!(TESTBED_TOOLS);
    let (tb, _out) = up_with_image_on_edge1(PREFIX, API_NET, false, &REDIS).await;
    let api = tb.state().api().expect("API client");

    // Its data in a volume: every write appended to /data's AOF, which must move with it.
    let request = DeployRequest {
        name: "redis".into(),
        image: REDIS.reference.into(),
        host: EDGE1.into(),
        args: [
            "--dir",
            "/data",
            "--appendonly",
            "yes",
            "--enable-debug-command",
            "yes",
        ]
        .map(String::from)
        .to_vec(),
        env: BTreeMap::new(),
        volumes: vec!["data:/data".parse().unwrap()],
        mobiles: None,
    };
    let svc = api.deploy(&request).await.expect("POST /v1/services");
    assert_eq!(svc.mobiles, [MOBILE], "every mobile present by default");
    assert_eq!(
        tb.traces_of(EDGE1, "redis", svc.network.ip)
            .await
            .unwrap()
            .iter()
            .filter(|t| t.starts_with("volume"))
            .collect::<Vec<_>>(),
        ["volume mose.redis.data"]
    );
    assert_ne!(
        svc.network.ip,
        tb.state().service_addr.ip(),
        "the counter's address stays the counter's"
    );
    println!("deployed redis on {} at {}", svc.host, svc.network.ip);

    // What an operator gets wrong, each refused with its reason.
    let refused = |r: Result<_, ClientError>, status: u16, needle: &str| match r {
        Err(ClientError::Api {
            status: s, message, ..
        }) if s == status => assert!(message.contains(needle), "{message}"),
        other => panic!("expected {status} with '{needle}', got {other:?}"),
    };
    refused(api.deploy(&request).await.map(drop), 409, "already exists");
    let elsewhere = |change: fn(&mut DeployRequest)| {
        let mut r = DeployRequest {
            name: "other".into(),
            ..request.clone()
        };
        change(&mut r);
        r
    };
    refused(
        api.deploy(&elsewhere(|r| r.host = "edge9".into()))
            .await
            .map(drop),
        422,
        "not a present agent",
    );
    refused(
        api.deploy(&elsewhere(|r| r.image = "localhost/mose/nope:1".into()))
            .await
            .map(drop),
        409,
        "not present on this host",
    );
    assert_eq!(
        api.services().await.unwrap().len(),
        2,
        "a refused deployment leaves no record (counter and redis only)"
    );

    // The client: one redis-cli connection from the mobile's client namespace.
    let mut cli = RedisCli::start(&tb.state().client_netns, svc.network.ip).await;
    let id_before = cli.ask("CLIENT ID").await;
    assert!(id_before.parse::<u64>().is_ok(), "CLIENT ID: {id_before}");
    let mut written = 0u32;
    let mut write = async |cli: &mut RedisCli, n: u32, gaps: &mut Vec<f64>| {
        for _ in 0..n {
            let t = Instant::now();
            let reply = cli.ask(&format!("SET k{written} v{written}")).await;
            assert_eq!(reply, "OK", "SET k{written}");
            gaps.push(t.elapsed().as_secs_f64() * 1e3);
            written += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let mut gaps = Vec::new();
    write(&mut cli, 100, &mut gaps).await;

    // Migrate by name while the client keeps writing.
    let by_name = MigrationRequest {
        service: "redis".into(),
        destination: EDGE2.into(),
        source: None,
        mobiles: None,
        objective: Objective::Downtime,
        target_downtime_ms: 1000.0,
        target_duration_ms: 5000.0,
        bandwidth_bytes_per_s: None,
    };
    let t = Instant::now();
    let task = api.submit(&by_name).await.expect("POST /v1/migrations");
    assert_eq!(
        (task.route.source.as_str(), task.route.mobiles.clone()),
        (EDGE1, vec![MOBILE.to_string()]),
        "source and mobiles from the service's record"
    );
    let mut during = Vec::new();
    loop {
        write(&mut cli, 10, &mut during).await;
        if api.migration(&task.id).await.unwrap().status.is_finished() {
            break;
        }
    }
    let done = wait_finished(&api, &task.id, t).await;
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:#?}");
    write(&mut cli, 100, &mut gaps).await;
    // The image travelled before the freeze: its phase ended before the checkpoint began.
    let at = |phase: Phase, status: fn(&PhaseStatus) -> bool| {
        done.events
            .iter()
            .filter(|e| e.phase == phase && status(&e.status))
            .map(|e| e.at_us)
            .min()
            .unwrap_or_else(|| panic!("no {phase} event: {:?}", done.events))
    };
    let image_done = done
        .events
        .iter()
        .filter(|e| e.phase == Phase::Image && matches!(e.status, PhaseStatus::Finished))
        .map(|e| e.at_us)
        .max()
        .expect("the image phase finished");
    assert!(
        image_done <= at(Phase::Checkpoint, |s| matches!(s, PhaseStatus::Started)),
        "the image moved outside the downtime"
    );

    // Same connection, every key written before and during the migration there.
    assert_eq!(
        cli.ask("CLIENT ID").await,
        id_before,
        "one connection throughout"
    );
    for i in 0..written {
        assert_eq!(cli.ask(&format!("GET k{i}")).await, format!("v{i}"), "k{i}");
    }
    let longest = during.iter().copied().fold(0.0, f64::max);
    println!(
        "REDIS edge1 -> edge2 by name: {written} keys, all read back over one connection; \
         longest SET round trip during the migration {longest:.0} ms; frozen {:?} ms",
        done.measurements.frozen_ms
    );
    // The volume moved: edge2's redis reloads its whole dataset from the AOF in its own
    // volume, and edge1 kept nothing (its volume went with its release).
    assert_eq!(cli.ask("DEBUG LOADAOF").await, "OK");
    for i in 0..written {
        assert_eq!(
            cli.ask(&format!("GET k{i}")).await,
            format!("v{i}"),
            "k{i} from edge2's volume"
        );
    }
    assert_eq!(
        tb.traces_of(EDGE1, "redis", svc.network.ip).await.unwrap(),
        Vec::<String>::new(),
        "edge1 released everything of redis"
    );
    let moved = api.service("redis").await.unwrap();
    assert_eq!(moved.record.host, EDGE2, "the record follows the service");
    assert_eq!(
        moved.clients.len(),
        1,
        "its client, seen by edge2: {moved:?}"
    );

    // The CLI's exit status tells a script where the service is. Another container named
    // redis running on edge1 makes the way back's restore refuse (it never replaces a container
    // it did not restore) and the migration roll back: 3, the service safe on edge2.
    squat(&tb, EDGE1, "redis").await;
    let mose = |args: &[&str]| {
        let mut c = Command::new(mose_binary());
        c.args(["--api", &tb.state().api_url])
            .arg("--token-file")
            .arg(&tb.state().api_tokens)
            .args(args);
        c
    };
    let back = ["migrate", "redis", "--to", EDGE1];
    let status = mose(&back).status().await.expect("run mose");
    assert_eq!(status.code(), Some(3), "rolled back: exit 3");
    assert_eq!(api.service("redis").await.unwrap().record.host, EDGE2);
    assert_eq!(
        cli.ask("GET k0").await,
        "v0",
        "served at the source throughout"
    );
    // The squatter gone (the rollback's abort removed it), the way back succeeds: 0, and the
    // same connection still has every key.
    unsquat(&tb, EDGE1, "redis").await;
    let status = mose(&back).status().await.expect("run mose");
    assert_eq!(status.code(), Some(0), "succeeded: exit 0");
    assert_eq!(api.service("redis").await.unwrap().record.host, EDGE1);
    assert_eq!(
        cli.ask("CLIENT ID").await,
        id_before,
        "one connection, two migrations"
    );
    for i in (0..written).step_by(50) {
        assert_eq!(cli.ask(&format!("GET k{i}")).await, format!("v{i}"), "k{i}");
    }
    let status = mose(&back).status().await.expect("run mose");
    assert_eq!(
        status.code(),
        Some(1),
        "refused (nothing to migrate): exit 1"
    );
    // What a script reads: `mose -o json services`.
    let listed = mose(&["-o", "json", "services"])
        .output()
        .await
        .expect("run mose");
    assert!(listed.status.success(), "{listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let redis = listed
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "redis"))
        .unwrap_or_else(|| panic!("no redis in {listed}"));
    assert_eq!(
        (&redis["host"], &redis["status"], &redis["network"]["ip"]),
        (
            &serde_json::json!(EDGE1),
            &serde_json::json!("running"),
            &serde_json::json!(svc.network.ip.to_string())
        ),
        "{redis}"
    );
    assert_eq!(
        redis["volumes"],
        serde_json::json!([{"name": "data", "path": "/data"}])
    );

    // Removal: the hosts and the mobile keep nothing of it, the address is free again.
    drop(cli);
    api.remove_service("redis")
        .await
        .expect("DELETE /v1/services/redis");
    for edge in [EDGE1, EDGE2] {
        assert_eq!(
            tb.traces_of(edge, "redis", svc.network.ip).await.unwrap(),
            Vec::<String>::new(),
            "{edge} keeps nothing of redis"
        );
    }
    let mobile_flows = tb
        .overlay(MOBILE)
        .unwrap()
        .steering()
        .flows(svc.network.ip)
        .await
        .unwrap();
    assert!(mobile_flows.is_empty(), "{mobile_flows:?}");
    let names: Vec<String> = api
        .services()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["counter"]);
    tb.destroy().await.expect("down");
}
