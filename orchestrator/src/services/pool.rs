//! The overlay addresses services are deployed with: a range of one subnet, each address
//! handed to one service at a time. The allocation is the service records themselves (the
//! store keeps the address unique), so nothing is lost or handed out twice across restarts.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The default range: the top of 10.88.0.0/24 minus the broadcast address, leaving .1–.99
/// to the devices and gateways of the overlay (the testbed's client is 10.88.0.2).
pub const DEFAULT_POOL: &str = "10.88.0.100-10.88.0.254/24";

/// A range of overlay addresses and the prefix length services get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    first: Ipv4Addr,
    last: Ipv4Addr,
    prefix_len: u8,
}

/// Why a pool setting is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service address pool '{given}': {why} (expected FIRST-LAST/PREFIX, e.g. {DEFAULT_POOL})")]
pub struct PoolError {
    given: String,
    why: String,
}

impl AddressPool {
    /// The prefix length of the services' subnet.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// How many addresses the pool holds.
    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// The lowest address of the pool not in `used`; `None` when every one is taken.
    pub fn allocate(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        (u32::from(self.first)..=u32::from(self.last))
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(a))
    }
}

impl FromStr for AddressPool {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, PoolError> {
        let err = |why: &str| PoolError {
            given: s.to_string(),
            why: why.to_string(),
        };
        let (range, prefix) = s.split_once('/').ok_or_else(|| err("no /PREFIX"))?;
        let (first, last) = range.split_once('-').ok_or_else(|| err("no FIRST-LAST"))?;
        let parse = |a: &str| {
            a.trim()
                .parse::<Ipv4Addr>()
                .map_err(|e| err(&e.to_string()))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        let prefix_len: u8 = prefix
            .trim()
            .parse()
            .map_err(|_| err("the prefix is not a number"))?;
        if !(8..=30).contains(&prefix_len) {
            return Err(err("the prefix must be between 8 and 30"));
        }
        if first > last {
            return Err(err("FIRST is above LAST"));
        }
        let mask = u32::MAX << (32 - u32::from(prefix_len));
        let net = u32::from(first) & mask;
        if u32::from(last) & mask != net {
            return Err(err(
                "FIRST and LAST are in different subnets of that prefix",
            ));
        }
        if u32::from(first) == net || u32::from(last) == net | !mask {
            return Err(err(
                "the range includes the subnet's network or broadcast address",
            ));
        }
        Ok(AddressPool {
            first,
            last,
            prefix_len,
        })
    }
}

impl fmt::Display for AddressPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}/{}", self.first, self.last, self.prefix_len)
    }
}

impl Default for AddressPool {
    fn default() -> Self {
        AddressPool {
            first: Ipv4Addr::new(10, 88, 0, 100),
            last: Ipv4Addr::new(10, 88, 0, 254),
            prefix_len: 24,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_parses_to_itself() {
        let p: AddressPool = DEFAULT_POOL.parse().unwrap();
        assert_eq!(p, AddressPool::default());
        assert_eq!(p.to_string(), DEFAULT_POOL);
        assert_eq!((p.size(), p.prefix_len()), (155, 24));
    }

    #[test]
    fn allocation_takes_the_lowest_free_address_and_ends_when_all_are_used() {
        let p: AddressPool = "10.9.0.10-10.9.0.12/24".parse().unwrap();
        let mut used = BTreeSet::new();
        for expected in [10, 11, 12] {
            let a = p.allocate(&used).unwrap();
            assert_eq!(a, Ipv4Addr::new(10, 9, 0, expected));
            used.insert(a);
        }
        assert_eq!(p.allocate(&used), None, "exhausted");
        used.remove(&Ipv4Addr::new(10, 9, 0, 11));
        assert_eq!(
            p.allocate(&used),
            Some(Ipv4Addr::new(10, 9, 0, 11)),
            "freed, reused"
        );
    }

    #[test]
    fn bad_pools_are_refused_with_the_reason() {
        for (bad, why) in [
            ("10.9.0.10-10.9.0.12", "no /PREFIX"),
            ("10.9.0.10/24", "no FIRST-LAST"),
            ("10.9.0.x-10.9.0.12/24", "invalid IPv4"),
            ("10.9.0.12-10.9.0.10/24", "above"),
            ("10.9.0.10-10.9.1.10/24", "different subnets"),
            ("10.9.0.0-10.9.0.10/24", "network or broadcast"),
            ("10.9.0.10-10.9.0.255/24", "network or broadcast"),
            ("10.9.0.10-10.9.0.12/31", "between 8 and 30"),
            ("10.9.0.10-10.9.0.12/x", "not a number"),
        ] {
            let e = bad.parse::<AddressPool>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
