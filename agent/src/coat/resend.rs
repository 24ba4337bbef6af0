//! After a restore, the client's request that the freeze swallowed is resent only when the
//! client's retransmission timer fires — and that timer backs off exponentially while the
//! service is frozen (≈ 0.2, 0.6, 1.4, 3.0 s after the loss on Linux), so the client may wait up
//! to twice the freeze for nothing. RFC 6069 (TCP-LD) gives a sender a reason to undo the backoff:
//! an ICMP destination-unreachable about its oldest unacknowledged segment. Linux implements
//! it (`tcp_ld_RTO_revert`): each such message halves the backed-off RTO and, once the shortened
//! timer has already run out, retransmits at once. It acts only when the embedded sequence
//! number is exactly the client's `snd_una` (= the restored socket's `rcv_nxt`, read from the
//! checkpoint) and the socket is retransmitting; otherwise the kernel ignores the message, so
//! a nudge can never harm a connection. Soft errors like this one do not close the socket.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Messages per connection: enough halvings to bring back any backoff of a freeze ≤ 2 min.
const NUDGES: usize = 10;
/// `ICMP_DEST_UNREACH`, `ICMP_HOST_UNREACH`.
const DEST_UNREACH: u8 = 3;
const HOST_UNREACH: u8 = 1;

/// The established TCP connections of the calling thread's network namespace
/// (`/proc/thread-self/net/tcp`), as (local, remote).
pub(super) fn established() -> std::io::Result<Vec<(SocketAddrV4, SocketAddrV4)>> {
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
    Ok(parse_tcp_table(&table))
}

fn parse_tcp_table(table: &str) -> Vec<(SocketAddrV4, SocketAddrV4)> {
    // "  sl  local_address rem_address   st ...": addresses are hex IP (host byte order):port.
    let addr = |s: &str| -> Option<SocketAddrV4> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The kernel prints the address's network-order bytes as a native u32.
        Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace().skip(1);
            let (local, remote, state) = (f.next()?, f.next()?, f.next()?);
            // 01 = TCP_ESTABLISHED
            (state == "01").then_some(())?;
            Some((addr(local)?, addr(remote)?))
        })
        .collect()
}

/// An ICMP host-unreachable about the client's segment `seq` toward `service` (the ICMP
/// message; the kernel adds the outer IP header).
pub(super) fn host_unreachable(service: SocketAddrV4, client: SocketAddrV4, seq: u32) -> Vec<u8> {
    let mut m = vec![DEST_UNREACH, HOST_UNREACH, 0, 0, 0, 0, 0, 0];
    // The "original" datagram: the client's IP header (20 bytes, TCP) and the first 8 bytes of
    // its TCP header, which is what the receiver matches the socket and sequence number on.
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&client.ip().octets());
    ip[16..20].copy_from_slice(&service.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    m.extend(ip);
    m.extend(client.port().to_be_bytes());
    m.extend(service.port().to_be_bytes());
    m.extend(seq.to_be_bytes());
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded above: the sum fits 16 bits now.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// In the service's namespace (call on a thread inside it): for every established connection
/// and every receive sequence number of the checkpoint, the nudges to the client. Returns the
/// connections nudged. Only the pair whose number matches the client's has an effect.
// FFI: AF_INET and sizeof(sockaddr_in) fit the C types they are cast to.
#[allow(clippy::cast_possible_truncation)]
pub fn prompt_clients(seqs: &[u32]) -> std::io::Result<usize> {
    let connections = established()?;
    if connections.is_empty() || seqs.is_empty() {
        return Ok(0);
    }
    // SAFETY: plain socket(2); the fd is owned below and closed on drop.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&socket);
    for (local, remote) in &connections {
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(remote.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        for &seq in seqs {
            let msg = host_unreachable(*local, *remote, seq);
            for _ in 0..NUDGES {
                // SAFETY: msg and to outlive the call; the lengths are theirs.
                let n = unsafe {
                    libc::sendto(
                        raw,
                        msg.as_ptr().cast(),
                        msg.len(),
                        0,
                        (&to as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
    }
    Ok(connections.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_connections_are_read_from_the_proc_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   \
             1: 6400580A:1B58 0200580A:D9A2 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        assert_eq!(
            parse_tcp_table(table),
            vec![(
                "10.88.0.100:7000".parse().unwrap(),
                "10.88.0.2:55714".parse().unwrap()
            )]
        );
        assert!(parse_tcp_table("header only\ngarbage line\n").is_empty());
    }

    #[test]
    fn the_nudge_is_a_valid_icmp_message_about_the_clients_segment() {
        let m = host_unreachable(
            "10.88.0.100:7000".parse().unwrap(),
            "10.88.0.2:55714".parse().unwrap(),
            0xdead_beef,
        );
        assert_eq!(m.len(), 8 + 20 + 8);
        assert_eq!((m[0], m[1]), (3, 1));
        assert_eq!(checksum(&m), 0, "ICMP checksum");
        assert_eq!(checksum(&m[8..28]), 0, "embedded IP header checksum");
        assert_eq!(&m[20..24], &[10, 88, 0, 2], "embedded source: the client");
        assert_eq!(&m[24..28], &[10, 88, 0, 100]);
        assert_eq!(u16::from_be_bytes([m[28], m[29]]), 55714);
        assert_eq!(u16::from_be_bytes([m[30], m[31]]), 7000);
        assert_eq!(&m[32..36], &0xdead_beef_u32.to_be_bytes());
    }
}
