//! A service's network identity, read back from its namespace: the address and MAC of its
//! interface and the clients it serves (on-link peers of its established TCP connections, with
//! their MACs from the namespace's neighbour table). Describe reports it, so the destination
//! can recreate the same identity and carry every client's neighbour entry over.
//!
//! Everything is read from inside the namespace on one short-lived thread (the overlay's
//! [`mose_overlay::netns::in_netns`]): `getifaddrs` for the interface and
//! `/proc/thread-self/net/{tcp,arp}`, which show the namespace of the reading thread.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use mose_overlay::Result;
use mose_protocol::messages::Peer;

/// What a service's namespace says about its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetIdentity {
    /// The interface's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Its MAC.
    pub mac: [u8; 6],
    /// The clients, see [`pick_clients`].
    pub clients: Vec<Peer>,
}

/// Reads the identity of interface `ifname` in the namespace at `netns`.
pub async fn read(netns: &Path, ifname: &str) -> Result<NetIdentity> {
    let name = ifname.to_string();
    mose_overlay::netns::in_netns(netns, move || read_here(&name)).await
}

/// Runs on a thread inside the namespace.
fn read_here(ifname: &str) -> io::Result<NetIdentity> {
    let (ip, prefix_len, mac) = interface_addrs(ifname)?;
    let tcp = std::fs::read_to_string("/proc/thread-self/net/tcp")?;
    let arp = std::fs::read_to_string("/proc/thread-self/net/arp")?;
    let clients = pick_clients(
        ip,
        prefix_len,
        &established_peers(&tcp),
        &complete_neighbours(&arp, ifname),
    );
    Ok(NetIdentity {
        ip,
        prefix_len,
        mac,
        clients,
    })
}

/// First IPv4 address (with prefix length) and the MAC of `ifname`.
fn interface_addrs(ifname: &str) -> io::Result<(Ipv4Addr, u8, [u8; 6])> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut ip, mut mac) = (None, None);
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned; it lives until freeifaddrs,
        // and the kernel-filled sockaddrs have the size their family implies.
        unsafe {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null()
                || ifa.ifa_name.is_null()
                || CStr::from_ptr(ifa.ifa_name).to_bytes() != ifname.as_bytes()
            {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET if ip.is_none() => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let prefix = if ifa.ifa_netmask.is_null() {
                        32
                    } else {
                        let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                        // At most 32 bits are set.
                        u8::try_from(u32::from_be(m.sin_addr.s_addr).count_ones()).unwrap_or(32)
                    };
                    ip = Some((Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), prefix));
                }
                libc::AF_PACKET => {
                    let ll = &*(ifa.ifa_addr as *const libc::sockaddr_ll);
                    if ll.sll_halen == 6 {
                        let mut m = [0u8; 6];
                        m.copy_from_slice(&ll.sll_addr[..6]);
                        mac = Some(m);
                    }
                }
                _ => {}
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    match (ip, mac) {
        (Some((ip, prefix)), Some(mac)) => Ok((ip, prefix, mac)),
        (None, _) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{ifname} has no IPv4 address"),
        )),
        (_, None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{ifname} has no MAC (no such interface?)"),
        )),
    }
}

/// Remote IPv4 addresses of ESTABLISHED connections in a `/proc/net/tcp` text.
fn established_peers(tcp: &str) -> Vec<Ipv4Addr> {
    tcp.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 01 = ESTABLISHED.
            if f.get(3) != Some(&"01") {
                return None;
            }
            let (hex, _port) = f.get(2)?.split_once(':')?;
            // The kernel prints the network-order address as a native-endian u32.
            u32::from_str_radix(hex, 16)
                .ok()
                .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
        })
        .collect()
}

/// Complete (resolved) neighbour entries on `ifname` in a `/proc/net/arp` text.
fn complete_neighbours(arp: &str, ifname: &str) -> Vec<(Ipv4Addr, [u8; 6])> {
    arp.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // IP HW-type Flags HW-address Mask Device; flag 0x2 = ATF_COM (resolved).
            let flags = u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()?;
            if flags & 0x2 == 0 || f.get(5) != Some(&ifname) {
                return None;
            }
            Some((f.first()?.parse().ok()?, parse_mac(f.get(3)?)?))
        })
        .collect()
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The clients whose neighbour entries the destination pre-loads: every on-link peer of an
/// established connection whose MAC is known, in address order; with no such peer, every
/// resolved on-link neighbour (a client between requests may have no connection open). A
/// client missing here is resolved by ARP after the restore, which costs its first reply ~1 s.
fn pick_clients(
    ip: Ipv4Addr,
    prefix_len: u8,
    peers: &[Ipv4Addr],
    neighbours: &[(Ipv4Addr, [u8; 6])],
) -> Vec<Peer> {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    let on_link = |a: Ipv4Addr| a != ip && (u32::from(a) & mask) == (u32::from(ip) & mask);
    let mac_of = |a: Ipv4Addr| neighbours.iter().find(|(n, _)| *n == a).map(|(_, m)| *m);
    let mut connected: Vec<Peer> = peers
        .iter()
        .copied()
        .filter(|a| on_link(*a))
        .filter_map(|a| mac_of(a).map(|mac| Peer { ip: a, mac }))
        .collect();
    if connected.is_empty() {
        connected = neighbours
            .iter()
            .filter(|(a, _)| on_link(*a))
            .map(|&(ip, mac)| Peer { ip, mac })
            .collect();
    }
    connected.sort();
    connected.dedup();
    connected
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 644D0A0A:1B58 024D0A0A:A3F2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 644D0A0A:1B58 0900000A:A3F3 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
10.77.0.2        0x1         0x2         02:00:0a:4d:00:02     *        eth0
10.77.0.3        0x1         0x0         00:00:00:00:00:00     *        eth0
10.77.0.4        0x1         0x2         02:00:0a:4d:00:04     *        eth1
";
    const SVC: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

    #[test]
    fn established_peers_are_decoded() {
        let peers = established_peers(TCP);
        assert_eq!(peers.len(), 2, "the listening socket is skipped");
        assert_eq!(peers[0].octets(), 0x024D0A0Au32.to_ne_bytes());
    }

    #[test]
    fn only_resolved_neighbours_of_the_interface_count() {
        let n = complete_neighbours(ARP, "eth0");
        assert_eq!(
            n,
            vec![(Ipv4Addr::new(10, 77, 0, 2), [2, 0, 0x0a, 0x4d, 0, 2])]
        );
        assert!(complete_neighbours("header only\n", "eth0").is_empty());
        assert!(
            complete_neighbours("h\ngarbage line\n1.2.3.4 0x1 zz 02:00 * eth0\n", "eth0")
                .is_empty()
        );
    }

    #[test]
    fn clients_are_the_connected_on_link_peers() {
        let peer = |ip: Ipv4Addr, mac: [u8; 6]| Peer { ip, mac };
        let (c1, m1) = (Ipv4Addr::new(10, 77, 0, 2), [2, 0, 0x0a, 0x4d, 0, 2]);
        let (c2, m2) = (Ipv4Addr::new(10, 77, 0, 3), [2, 0, 0x0a, 0x4d, 0, 3]);
        let other = (Ipv4Addr::new(10, 77, 0, 5), [2, 0, 0, 0, 0, 5]);
        // Every connected peer (each connection counted once), not the idle neighbour.
        assert_eq!(
            pick_clients(SVC, 24, &[c2, c1, c2], &[other, (c1, m1), (c2, m2)]),
            vec![peer(c1, m1), peer(c2, m2)]
        );
        // Off-link peers (behind a gateway) have no neighbour entry that matters: the
        // resolved on-link neighbours stand in.
        assert_eq!(
            pick_clients(SVC, 24, &[Ipv4Addr::new(10, 0, 0, 9)], &[other]),
            vec![peer(other.0, other.1)]
        );
        // A connected peer whose MAC is unknown is left to ARP.
        assert_eq!(pick_clients(SVC, 24, &[c1], &[]), vec![]);
        // Neighbours off the subnet are not clients either.
        assert_eq!(
            pick_clients(SVC, 24, &[], &[(Ipv4Addr::new(10, 9, 0, 1), [2; 6])]),
            vec![]
        );
        assert_eq!(pick_clients(SVC, 0, &[], &[]), vec![]);
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:00:0a:4d:00:02"), Some([2, 0, 10, 77, 0, 2]));
        assert_eq!(parse_mac("02:00:0a:4d:00"), None);
        assert_eq!(parse_mac("02:00:0a:4d:00:02:03"), None);
        assert_eq!(parse_mac("zz:00:0a:4d:00:02"), None);
    }
}
