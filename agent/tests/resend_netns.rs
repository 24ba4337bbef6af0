//! The Resend nudge on this kernel (root): a client whose request was swallowed — the server's
//! namespace drops it, as CRIU's network lock does during a checkpoint — retransmits by a tail
//! loss probe (≈ 0.2 s), then on its backed-off timer (≈ 0.4 s, 0.8 s, … after the loss). Once the path is open again, the
//! nudge (ICMP host-unreachable about the client's `snd_una`, RFC 6069) makes it resend at once.
//! The same scenario runs without and with the nudge in one run; the nudged reply must come
//! well before the client's own next retransmission.

// Test code: a failed unwrap is a failed test, and its casts are of small measured numbers.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mose_agent::coat::resend::prompt_clients;
use mose_overlay::netns::in_netns;

const SERVER: &str = "10.66.0.2:9000";
/// When the path opens again, after the swallowed request (ms).
const OPEN_AT_MS: u64 = 550;

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Two namespaces on a veth; deleted on drop, also when the test fails.
struct Pair {
    client: String,
    server: String,
}

impl Pair {
    fn create() -> Option<Pair> {
        let id = std::process::id();
        let p = Pair {
            client: format!("mrs-c{id}"),
            server: format!("mrs-s{id}"),
        };
        let ok = sh(&["ip", "netns", "add", &p.client])
            && sh(&["ip", "netns", "add", &p.server])
            && sh(&[
                "ip", "link", "add", "mrsv0", "netns", &p.client, "type", "veth", "peer", "name",
                "mrsv1", "netns", &p.server,
            ])
            && sh(&[
                "ip",
                "-n",
                &p.client,
                "addr",
                "add",
                "10.66.0.1/24",
                "dev",
                "mrsv0",
            ])
            && sh(&[
                "ip",
                "-n",
                &p.server,
                "addr",
                "add",
                "10.66.0.2/24",
                "dev",
                "mrsv1",
            ])
            && sh(&["ip", "-n", &p.client, "link", "set", "mrsv0", "up"])
            && sh(&["ip", "-n", &p.server, "link", "set", "mrsv1", "up"]);
        ok.then_some(p)
    }
    fn path(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }
    /// Drop (or let through again) TCP toward the server, in the server's namespace.
    fn block(&self, on: bool) {
        let op = if on { "-I" } else { "-D" };
        assert!(sh(&[
            "ip",
            "netns",
            "exec",
            &self.server,
            "iptables",
            op,
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "9000",
            "-j",
            "DROP"
        ]));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// The server socket's `rcv_nxt`, read the way CRIU reads it (repair mode, receive queue).
fn rcv_nxt(server: &TcpStream) -> u32 {
    let fd = server.as_raw_fd();
    let set = |opt: libc::c_int, val: libc::c_int| {
        // SAFETY: setsockopt on a valid fd with an int option.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            r,
            0,
            "setsockopt {opt}: {}",
            std::io::Error::last_os_error()
        );
    };
    set(libc::TCP_REPAIR, 1);
    // TCP_RECV_QUEUE (linux/tcp.h) is not in the libc crate.
    const TCP_RECV_QUEUE: libc::c_int = 1;
    set(libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    let mut seq: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt into a u32 of the length given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUEUE_SEQ,
            (&mut seq as *mut u32).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_QUEUE_SEQ: {}", std::io::Error::last_os_error());
    set(libc::TCP_REPAIR, 0);
    seq
}

/// One swallowed request: how long until the client has its reply (ms).
async fn swallowed_request(pair: &Pair, nudge: bool) -> f64 {
    let listener = in_netns(&Pair::path(&pair.server), || TcpListener::bind(SERVER))
        .await
        .unwrap();
    let to: SocketAddr = SERVER.parse().unwrap();
    let mut client = in_netns(&Pair::path(&pair.client), move || TcpStream::connect(to))
        .await
        .unwrap();
    client.set_nodelay(true).unwrap();
    let (server, _) = listener.accept().unwrap();
    let echo = std::thread::spawn({
        let mut server = server.try_clone().unwrap();
        move || {
            let mut b = [0u8; 1];
            while server.read_exact(&mut b).is_ok() && server.write_all(&b).is_ok() {}
        }
    });
    let mut b = [0u8; 1];
    client.write_all(b"a").unwrap();
    client.read_exact(&mut b).unwrap();

    pair.block(true);
    let seq = rcv_nxt(&server);
    let t0 = Instant::now();
    let asker = std::thread::spawn(move || {
        client.write_all(b"b").unwrap();
        client.read_exact(&mut b).unwrap();
        t0.elapsed().as_secs_f64() * 1e3
    });
    // Past the first retransmission timeout (≈ 0.4 s): the client has backed off.
    tokio::time::sleep(Duration::from_millis(OPEN_AT_MS)).await;
    pair.block(false);
    if nudge {
        let sent = in_netns(&Pair::path(&pair.server), move || prompt_clients(&[seq]))
            .await
            .unwrap();
        assert!(sent > 0, "one connection, one sequence number: nudges sent");
    }
    let ms = asker.join().unwrap();
    server.shutdown(std::net::Shutdown::Both).unwrap();
    echo.join().unwrap();
    ms
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nudged_client_resends_before_its_backed_off_timer() {
    mose_testkit::root_test!(&["ip", "iptables"]);
    let pair = Pair::create().expect("create the namespace pair");
    let plain = swallowed_request(&pair, false).await;
    let nudged = swallowed_request(&pair, true).await;
    eprintln!(
        "reply to the swallowed request: {plain:.0} ms on the client's own timer, {nudged:.0} ms \
         with the nudge when the path opened at {OPEN_AT_MS} ms"
    );
    assert!(
        plain > OPEN_AT_MS as f64 + 100.0,
        "without a nudge the reply waits for the next backed-off retransmission: {plain:.0} ms"
    );
    assert!(
        nudged + 100.0 < plain,
        "the nudge did not bring the retransmission forward: {nudged:.0} vs {plain:.0} ms"
    );
}
