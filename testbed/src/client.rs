//! The live client of the counter service (docs/testbed.md#kpis): one TCP connection from the
//! mobile host, a request every 10 ms, every reply timestamped **on the client**. The timeline
//! it records is what the client-observed KPIs are computed from:
//!
//! * `client_downtime_ms`: the longest time the client went without a reply in a migration's
//!   window, reply to reply (with a request every 10 ms a healthy service shows ≈ 10.5 ms). One
//!   request is in flight at a time, so the request caught by the freeze makes this gap; a
//!   client whose connection never answers again is down until the window's end;
//! * `same_connection`: the one connection never broke and still answered after the window (the
//!   client never reconnects, so any reset or close ends the timeline with an error);
//! * `state_continuous`: every reply in the window is the previous count + 1 (no jump, no reset).
//!
//! The client is a plain thread with a blocking socket: its timing must not depend on how busy the
//! async runtime that drives the migration is.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TestbedError};

/// How often the client asks (docs/testbed.md#kpis).
pub const REQUEST_INTERVAL: Duration = Duration::from_millis(10);
/// A reply slower than this ends the client with an error (the connection is taken as dead):
/// longer than any stall a migration may cause, including TCP retransmission back-off.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One answered request, times in ms since the client started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When the request was sent.
    pub sent_ms: f64,
    /// Request → reply.
    pub latency_ms: f64,
    /// The count the service answered with.
    pub count: u64,
}

impl Sample {
    /// When the reply arrived.
    pub fn reply_ms(&self) -> f64 {
        self.sent_ms + self.latency_ms
    }
}

/// What the client saw from start to finish.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Every answered request, in order.
    pub samples: Vec<Sample>,
    /// Why the client stopped before it was told to (reset, closed, timeout, garbage), and when
    /// (ms since start). `None` when it ran until [`LiveClient::finish`].
    pub error: Option<(f64, String)>,
    /// Wall clock (Unix µs) of the client's time 0, to place the orchestrator's phase events
    /// (Unix µs, same machine clock) on the client's time axis.
    pub started_unix_us: u64,
}

impl Timeline {
    /// A Unix µs instant on this timeline's clock (ms since the client started).
    pub fn ms_of_unix_us(&self, at_us: u64) -> f64 {
        (at_us as f64 - self.started_unix_us as f64) / 1e3
    }
}

/// The client-observed KPIs of one migration window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClientKpis {
    /// Longest time without a reply that overlaps the window.
    pub client_downtime_ms: f64,
    /// The same TCP connection answered before and after.
    pub same_connection: bool,
    /// Every count after the window follows the one before it (no state lost or repeated).
    pub state_continuous: bool,
}

impl Timeline {
    /// KPIs of the window `[from_ms, to_ms]` (a migration from its submission until the client
    /// was served again after it). Requests whose request→reply interval overlaps the window
    /// count; continuity also checks the step from the last reply before the window into it.
    pub fn kpis(&self, from_ms: f64, to_ms: f64) -> ClientKpis {
        // Gaps between consecutive replies that overlap the window.
        let gaps = self
            .samples
            .windows(2)
            .map(|w| (w[0].reply_ms(), w[1].reply_ms()))
            .filter(|&(a, b)| b >= from_ms && a <= to_ms)
            .map(|(a, b)| b - a);
        let answered_after = self.samples.iter().any(|s| s.reply_ms() >= to_ms);
        // No reply after the window: the outage lasts at least from the last reply to its end.
        let open_end = self
            .samples
            .last()
            .filter(|_| !answered_after)
            .map(|s| to_ms - s.reply_ms().max(from_ms));
        let client_downtime_ms = gaps.chain(open_end).fold(0.0, f64::max);
        let broke_in_or_before = self.error.as_ref().is_some_and(|(at, _)| *at <= to_ms);
        // The last reply before the window anchors the first count inside it.
        let first = self
            .samples
            .iter()
            .rposition(|s| s.reply_ms() < from_ms)
            .unwrap_or(0);
        let last = self
            .samples
            .iter()
            .rposition(|s| s.sent_ms <= to_ms)
            .map_or(0, |i| i + 1);
        let window = self.samples.get(first..last.max(first)).unwrap_or(&[]);
        let state_continuous =
            !window.is_empty() && window.windows(2).all(|w| w[1].count == w[0].count + 1);
        ClientKpis {
            client_downtime_ms,
            same_connection: !broke_in_or_before && answered_after,
            state_continuous,
        }
    }
}

/// A running client. Dropping it stops the thread (the socket closes with it).
pub struct LiveClient {
    stop: Arc<AtomicBool>,
    replies: Arc<AtomicU64>,
    started: Instant,
    local: SocketAddr,
    thread: Option<std::thread::JoinHandle<Timeline>>,
}

impl LiveClient {
    /// Connect from the network namespace `netns` to `to` (retrying for up to `connect_within`:
    /// the service needs a moment to listen after its container started) and start asking.
    pub async fn start(netns: &Path, to: SocketAddr, connect_within: Duration) -> Result<Self> {
        let deadline = Instant::now() + connect_within;
        let stream = loop {
            let attempt = mose_overlay::netns::in_netns(netns, move || {
                TcpStream::connect_timeout(&to, Duration::from_secs(1))
            })
            .await;
            match attempt {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(TestbedError::State(format!(
                        "the client in {} cannot connect to {to}: {e}",
                        netns.display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let io = |what: &str, e| TestbedError::io(format!("client socket: {what}"), e);
        stream.set_nodelay(true).map_err(|e| io("nodelay", e))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| io("read timeout", e))?;
        let local = stream.local_addr().map_err(|e| io("local address", e))?;
        let reader = stream.try_clone().map_err(|e| io("clone", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let started_unix_us = mose_protocol::messages::now_us();
        let (flag, seen) = (stop.clone(), replies.clone());
        let thread = std::thread::Builder::new()
            .name("live-client".into())
            .spawn(move || {
                let mut tl = run(stream, BufReader::new(reader), started, &flag, &seen);
                tl.started_unix_us = started_unix_us;
                tl
            })
            .map_err(|e| io("spawn thread", e))?;
        Ok(LiveClient {
            stop,
            replies,
            started,
            local,
            thread: Some(thread),
        })
    }

    /// Milliseconds since the client started: the clock of its [`Timeline`].
    pub fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    /// Replies received so far.
    pub fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }

    /// The client's own address (what the service sees as its peer).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether the client has stopped on its own (its connection broke).
    pub fn has_stopped(&self) -> bool {
        match &self.thread {
            Some(t) => t.is_finished(),
            None => true,
        }
    }

    /// Wait until `n` more replies arrived, i.e. the client is served again. Fails if the client
    /// stopped or `within` passed (its TCP retransmission backs off while the service is frozen,
    /// so this can take seconds after a long stall).
    pub async fn served_again(&self, n: u64, within: Duration) -> Result<()> {
        let start = self.replies();
        let t = Instant::now();
        while self.replies() < start + n {
            if self.has_stopped() {
                return Err(TestbedError::State(
                    "the live client stopped (its connection broke)".into(),
                ));
            }
            if t.elapsed() > within {
                return Err(TestbedError::Timeout {
                    what: format!("{n} replies to the live client"),
                    after_ms: mose_protocol::units::millis(within),
                });
            }
            tokio::time::sleep(REQUEST_INTERVAL).await;
        }
        Ok(())
    }

    /// Stop and return everything recorded.
    pub fn finish(mut self) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take();
        thread
            .map(|t| {
                t.join().unwrap_or_else(|_| Timeline {
                    error: Some((0.0, "the client thread panicked".into())),
                    ..Timeline::default()
                })
            })
            .unwrap_or_default()
    }
}

impl Drop for LiveClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The client loop: ask, wait for the count, record, pace to the interval.
fn run(
    mut w: TcpStream,
    mut r: BufReader<TcpStream>,
    started: Instant,
    stop: &AtomicBool,
    seen: &AtomicU64,
) -> Timeline {
    let ms = |t: Instant| t.duration_since(started).as_secs_f64() * 1e3;
    let mut tl = Timeline::default();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let mut line = String::new();
        let outcome = w.write_all(b"tick\n").and_then(|()| r.read_line(&mut line));
        let got = Instant::now();
        let failure = match outcome {
            Ok(0) => Some("connection closed by the service".to_string()),
            Ok(_) => match line.trim().parse() {
                Ok(count) => {
                    tl.samples.push(Sample {
                        sent_ms: ms(sent),
                        latency_ms: got.duration_since(sent).as_secs_f64() * 1e3,
                        count,
                    });
                    seen.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(_) => Some(format!("not a count: {line:?}")),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure {
            tl.error = Some((ms(got), why));
            break;
        }
        std::thread::sleep(REQUEST_INTERVAL.saturating_sub(sent.elapsed()));
    }
    tl
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A steady client: a request every 10 ms answered in `lat` ms, counts from `first`.
    fn steady(from_ms: f64, n: usize, lat: f64, first: u64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                sent_ms: from_ms + i as f64 * (10.0 + lat),
                latency_ms: lat,
                count: first + i as u64,
            })
            .collect()
    }

    /// 100 replies, then one request stalled for `stall` ms, then 100 more: a migration.
    fn migration(stall: f64) -> Timeline {
        let mut s = steady(0.0, 100, 0.2, 1);
        let t = s.last().unwrap().reply_ms() + 10.0;
        s.push(Sample {
            sent_ms: t,
            latency_ms: stall,
            count: 101,
        });
        s.extend(steady(t + stall + 10.0, 100, 0.2, 102));
        Timeline {
            samples: s,
            ..Timeline::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn downtime_is_the_longest_time_without_a_reply_in_the_window() {
        let tl = migration(612.5);
        let k = tl.kpis(500.0, 2200.0);
        // The pause before the stalled request, then the stall itself.
        assert!(close(k.client_downtime_ms, 10.0 + 612.5), "{k:?}");
        assert!(k.same_connection && k.state_continuous, "{k:?}");
        // Outside the window the stall does not count: a steady 10 ms + 0.2 ms.
        assert!(close(tl.kpis(0.0, 400.0).client_downtime_ms, 10.2));
    }

    #[test]
    fn no_reply_after_the_window_counts_as_down_until_its_end() {
        let mut tl = migration(300.0);
        tl.samples.truncate(101); // the stalled request never came back
        tl.error = Some((3000.0, "timed out".into()));
        let last = tl.samples[100].reply_ms();
        let k = tl.kpis(500.0, 3000.0);
        assert!(close(k.client_downtime_ms, 3000.0 - last), "{k:?}");
        assert!(!k.same_connection);
    }

    #[test]
    fn a_jump_or_reset_breaks_continuity() {
        let mut tl = migration(300.0);
        tl.samples[101].count = 1; // the service restarted from scratch
        assert!(!tl.kpis(500.0, 2500.0).state_continuous);
        let mut tl = migration(300.0);
        for s in &mut tl.samples[101..] {
            s.count += 5; // replies lost: the count jumped
        }
        assert!(!tl.kpis(500.0, 2500.0).state_continuous);
        // The jump is at the window's edge: the anchor before the window catches it.
        let mut tl = migration(300.0);
        let edge = tl.samples[101].sent_ms;
        for s in &mut tl.samples[101..] {
            s.count += 1;
        }
        assert!(!tl.kpis(edge, edge + 2000.0).state_continuous);
    }

    #[test]
    fn a_broken_connection_is_not_the_same_connection() {
        let mut tl = migration(300.0);
        tl.samples.truncate(101);
        tl.error = Some((1800.0, "Connection reset by peer (os error 104)".into()));
        let k = tl.kpis(500.0, 2500.0);
        assert!(!k.same_connection);
        // A client that ended before the window closed saw no reply after it either.
        let mut tl = migration(300.0);
        tl.samples.truncate(100);
        assert!(!tl.kpis(500.0, 5000.0).same_connection);
        // An error after a later window does not taint an earlier one.
        let mut tl = migration(300.0);
        tl.error = Some((1e6, "closed".into()));
        assert!(tl.kpis(500.0, 2000.0).same_connection);
    }

    #[test]
    fn empty_timelines_give_no_false_yes() {
        let k = Timeline::default().kpis(0.0, 100.0);
        assert_eq!(k.client_downtime_ms, 0.0);
        assert!(!k.same_connection && !k.state_continuous);
    }
}
