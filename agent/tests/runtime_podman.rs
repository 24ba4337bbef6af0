//! The runtime driver against real podman 4.3 + runc + CRIU on emulated hosts (root only;
//! skipped with a message elsewhere). Each test makes its own LAN prefix, so they run in
//! parallel, and hosts are torn down on drop, so a failing assertion leaves nothing behind.

// Test code: a failed unwrap is a failed test, and its casts are of small measured numbers.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod runtime_common;

use std::path::Path;
use std::time::{Duration, Instant};

use mose_agent::runtime::{
    probe, CheckpointOptions, Op, Podman, ProbeOptions, RestoreOptions, RuntimeError,
};
use runtime_common::*;
use tokio::io::AsyncWriteExt;

const COUNTER: &str = "counter";

/// Files podman left in a host's `/var/tmp` (its import spool).
fn spool_leftovers(host: &mose_testbed::Host) -> Vec<String> {
    let dir = host.outside_path("/var/tmp").unwrap();
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The archive's tar members up to (not including) the first `checkpoint/pages-` member,
/// followed by an end-of-archive marker: a well-formed tar that lacks the memory pages.
fn cut_before_pages(archive: &[u8]) -> Vec<u8> {
    let mut at = 0;
    while at + 512 <= archive.len() {
        let h = &archive[at..at + 512];
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        if name.starts_with("checkpoint/pages-") {
            let mut out = archive[..at].to_vec();
            out.extend([0u8; 1024]);
            return out;
        }
        let size_txt = String::from_utf8_lossy(&h[124..136])
            .trim_matches(|c: char| c == '\0' || c == ' ')
            .to_string();
        let size = u64::from_str_radix(&size_txt, 8).unwrap_or(0) as usize;
        at += 512 + size.div_ceil(512) * 512;
    }
    panic!("no pages member in the archive");
}

/// Checkpoint → restore between two emulated hosts through the API, plus the fault cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_migrates_between_hosts_with_the_archive_streamed() {
    mose_testkit::root_test!(RUNTIME_TOOLS);
    let img = image("counter").await;
    let (lan, mut hs) = hosts("mtb-rtm", 2, &img).await;
    let (b_host, b) = hs.pop().unwrap();
    let (a_host, a) = hs.pop().unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // --- A serves; its count is the state that must survive.
    let id = a.create(&spec(COUNTER, &img, None)).await.unwrap();
    a.start(COUNTER).await.unwrap();
    a.start(COUNTER).await.expect("start is idempotent");
    let info = a.inspect(COUNTER).await.unwrap();
    assert_eq!((info.id.as_str(), info.state.running), (id.as_str(), true));
    assert_eq!(info.netns_path().as_deref(), Some(Path::new(SVC_NETNS)));
    assert_eq!(count(&a, COUNTER, 3).await, [1, 2, 3]);
    let st = a.stats(COUNTER).await.unwrap();
    assert!(st.pids >= 1 && st.mem_usage_bytes > 0, "{st:?}");

    // --- leaveRunning: a checkpoint to a file, the original keeps serving.
    let file = scratch.path().join("counter.tar");
    let mut f = tokio::fs::File::create(&file).await.unwrap();
    let keep = CheckpointOptions {
        leave_running: true,
        ..CheckpointOptions::default()
    };
    let ck = a.checkpoint(COUNTER, &keep, &mut f).await.unwrap();
    drop(f);
    assert_eq!(ck.archive_bytes, std::fs::metadata(&file).unwrap().len());
    let dump = ck.criu.expect("CRIU dump statistics from the archive");
    assert!(
        dump.frozen_time_us > 0 && dump.pages_written > 0,
        "{dump:?}"
    );
    assert!(a.inspect(COUNTER).await.unwrap().state.running);
    assert_eq!(count(&a, COUNTER, 1).await, [4]);
    println!(
        "leave-running checkpoint: {} bytes, podman {} ms, transfer {} ms, CRIU frozen {} us, {} pages",
        ck.archive_bytes,
        ck.podman_time.as_millis(),
        ck.transfer_time.as_millis(),
        dump.frozen_time_us,
        dump.pages_written
    );
    let archive = std::fs::read(&file).unwrap();

    // --- Faults on B; each must leave B without containers and podman's spool empty.
    // Podman deletes its spool file when its handler sees the aborted upload, which may be
    // a moment after our side returned the error (seen once under a loaded CI run).
    let b_clean = |what: &'static str| {
        let b_host = &b_host;
        async move {
            let mut left = spool_leftovers(b_host);
            for _ in 0..50 {
                if left.is_empty() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                left = spool_leftovers(b_host);
            }
            panic!("{what}: B's /var/tmp still holds {left:?} after 5 s");
        }
    };
    // Truncated mid-member: caught in the stream, never handed to podman.
    let half = archive[..archive.len() / 2].to_vec();
    let e = b
        .restore(&RestoreOptions::default(), std::io::Cursor::new(half))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::ArchiveIncomplete {
                op: Op::Restore,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("end-of-archive"), "{e}");
    assert!(!b.exists(COUNTER).await.unwrap());
    b_clean("truncated").await;
    // Not a tar at all (e.g. compressed, or garbage).
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let e = b
        .restore(&RestoreOptions::default(), std::io::Cursor::new(garbage))
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::ArchiveIncomplete { .. }), "{e:?}");
    assert!(e.to_string().contains("not a tar archive"), "{e}");
    b_clean("garbage").await;
    // Well-formed but without memory pages: podman imports (creating the container), CRIU
    // fails; the driver removes what podman left.
    let e = b
        .restore(
            &RestoreOptions::default(),
            std::io::Cursor::new(cut_before_pages(&archive)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::Podman {
                op: Op::Restore,
                status: 500,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("restore counter"),
        "names the container: {e}"
    );
    assert!(
        !b.exists(COUNTER).await.unwrap(),
        "the failed restore's container was removed"
    );
    b_clean("pages missing").await;

    // --- Missing container: typed NotFound everywhere.
    let mut sink = tokio::io::sink();
    let e = a
        .checkpoint("nope", &CheckpointOptions::default(), &mut sink)
        .await
        .unwrap_err();
    assert!(e.is_not_found() && e.op() == Op::Checkpoint, "{e:?}");
    assert!(a.inspect("nope").await.unwrap_err().is_not_found());
    assert!(a.stats("nope").await.unwrap_err().is_not_found());
    assert!(!a.remove("nope").await.unwrap(), "remove is idempotent");

    // --- The migration: A's response streamed straight into B's request.
    let (rx, mut tx) = tokio::io::simplex(256 * 1024);
    let t0 = Instant::now();
    let checkpoint = async {
        let r = a
            .checkpoint(COUNTER, &CheckpointOptions::default(), &mut tx)
            .await;
        // End of the archive for the restore side (dropping a simplex half does not say so).
        tx.shutdown().await.expect("shut the pipe");
        r
    };
    let ropts = RestoreOptions::default();
    let (ck, rs) = tokio::try_join!(checkpoint, b.restore(&ropts, rx)).unwrap();
    let total = t0.elapsed();
    assert_eq!(rs.id, id, "the restored container keeps its ID");
    assert_eq!(rs.name.as_deref(), Some(COUNTER));
    assert_eq!(rs.archive_bytes, ck.archive_bytes);
    let restore = rs.criu.expect("CRIU restore statistics");
    assert!(
        restore.restore_time_us > 0 && restore.pages_restored > 0,
        "{restore:?}"
    );
    let b_info = b.inspect(COUNTER).await.unwrap();
    assert!(
        b_info.state.running && b_info.state.restored,
        "{:?}",
        b_info.state
    );
    let a_info = a.inspect(COUNTER).await.unwrap();
    assert!(
        !a_info.state.running && a_info.state.checkpointed,
        "{:?}",
        a_info.state
    );
    assert_eq!(
        count(&b, COUNTER, 2).await,
        [5, 6],
        "the count continues on B"
    );
    println!(
        "streamed migration: {} bytes, checkpoint podman {} ms + transfer {} ms, restore {} ms \
         (runtime {:?}, CRIU {} us), end to end {} ms",
        ck.archive_bytes,
        ck.podman_time.as_millis(),
        ck.transfer_time.as_millis(),
        rs.elapsed.as_millis(),
        rs.runtime_duration,
        restore.restore_time_us,
        total.as_millis()
    );

    // --- Restoring at the source next to the checkpointed original must fail (same ID)
    // without the driver touching the original.
    let e = a
        .restore(&RestoreOptions::default(), std::io::Cursor::new(archive))
        .await
        .unwrap_err();
    assert!(matches!(e, RuntimeError::Podman { .. }), "{e:?}");
    assert!(
        a.exists(COUNTER).await.unwrap(),
        "the original container is untouched"
    );

    // --- Stop and remove, idempotently.
    b.stop(COUNTER, Duration::from_secs(1)).await.unwrap();
    b.stop(COUNTER, Duration::from_secs(1))
        .await
        .expect("stop is idempotent");
    assert!(b.remove(COUNTER).await.unwrap());
    assert!(a.remove(COUNTER).await.unwrap());

    b_host.destroy().await.unwrap();
    a_host.destroy().await.unwrap();
    lan.destroy().await.unwrap();
}

/// The capability probe on this machine, against a private API service in the root namespace
/// (started as every host must start it, docs/runtime.md#quirks:
/// `podman --runtime runc system service --time=0 unix://...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_what_this_host_can_do() {
    mose_testkit::root_test!(RUNTIME_TOOLS);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("podman.sock");
    let mut service = tokio::process::Command::new("podman")
        .args(["--runtime", "runc", "system", "service", "--time=0"])
        .arg(format!("unix://{}", sock.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let podman = Podman::new(&sock).unwrap();
    let t0 = Instant::now();
    while podman.version().await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "podman service did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let opts = ProbeOptions {
        scratch: dir.path().to_path_buf(),
        ..ProbeOptions::default()
    };
    let t0 = Instant::now();
    let report = probe(&podman, &opts).await;
    let c = &report.capabilities;
    println!(
        "probe took {} ms: {c:?}\nnotes: {:#?}",
        t0.elapsed().as_millis(),
        report.notes
    );
    let _ = service.kill().await;

    let v = c.podman_version.as_deref().unwrap();
    assert!(v.starts_with("4.") || v.starts_with("5."), "{v}");
    assert_eq!(
        c.runtime.as_deref(),
        Some("runc"),
        "the service was started with --runtime runc"
    );
    let criu = c.criu_version.as_deref().unwrap();
    let (major, minor) = criu
        .split_once('.')
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b))
        .unwrap();
    let minor: u32 = minor.split('.').next().unwrap().parse().unwrap();
    assert!((major, minor) >= (4, 2), "CRIU {criu} installed here");
    assert!(
        c.tcp_dump,
        "CRIU >= 4.2 dumps TCP sockets here: {:?}",
        report.notes
    );
    assert!(matches!(c.cgroup_version, 1 | 2));
    assert!(c.page_size >= 4096 && c.page_size.is_power_of_two());
    // This kernel has no soft-dirty bit; the probe must say so (and why).
    let criu_says = std::process::Command::new("criu")
        .args(["check", "--feature", "mem_dirty_track"])
        .status()
        .unwrap()
        .success();
    assert_eq!(c.dirty_tracking, criu_says);
    if !c.dirty_tracking {
        assert!(
            report.notes.iter().any(|n| n.contains("dirty")),
            "{:?}",
            report.notes
        );
    }
    if !c.lazy_pages {
        assert!(
            report.notes.iter().any(|n| n.contains("lazy")),
            "{:?}",
            report.notes
        );
    }
    // The probe's scratch dumps are gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("mose-probe"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
