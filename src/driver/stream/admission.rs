//! Who may hold a connection: limits in total, per source, and on the cheap connections
//! that hold no allocation yet ("pending": a TCP or TLS handshake costs an attacker nothing
//! more). Found by review: 10 IPv4 addresses, or one IPv6 /64 (which holds more addresses
//! than any attacker needs), could take every slot, and nobody else got in.
//!
//! Pending connections are capped in total; when the cap (or the total) is reached, the
//! oldest pending connection makes room for the new one. A legitimate client leaves the
//! pending pool within a few round trips (its Allocate), so a flood of connections that
//! never allocate churns itself while clients with allocations, and new clients that
//! allocate, keep their place.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

/// The address the per-source limit counts: an IPv4 address, or the /64 of an IPv6 one
/// (one subscriber's or one host's network: its addresses are free to choose).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub total: usize,
    pub per_source: usize,
    pub pending: usize,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Yes,
    /// Yes, once the oldest pending connection is closed.
    EvictOldestPending,
    RefusePerSource,
    RefuseTotal,
}

/// Counts of open connections, by source and by whether they hold an allocation.
pub(crate) struct Admission {
    limits: Limits,
    per_source: BTreeMap<IpAddr, usize>,
    total: usize,
    pending: usize,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            per_source: BTreeMap::new(),
            total: 0,
            pending: 0,
        }
    }

    /// Whether a connection from `ip` may be opened now.
    pub(crate) fn admit(&self, ip: IpAddr) -> Admit {
        let from_source = self.per_source.get(&source_key(ip)).copied().unwrap_or(0);
        if from_source >= self.limits.per_source {
            return Admit::RefusePerSource;
        }
        let full = self.total >= self.limits.total || self.pending >= self.limits.pending;
        match (full, self.pending > 0) {
            (false, _) => Admit::Yes,
            (true, true) => Admit::EvictOldestPending,
            (true, false) => Admit::RefuseTotal,
        }
    }

    /// A connection from `ip` opened (pending: it holds no allocation yet).
    pub(crate) fn opened(&mut self, ip: IpAddr) {
        *self.per_source.entry(source_key(ip)).or_insert(0) += 1;
        self.total += 1;
        self.pending += 1;
    }

    /// A pending connection got its allocation.
    pub(crate) fn allocated(&mut self) {
        self.pending -= 1;
    }

    /// A connection from `ip` closed.
    pub(crate) fn closed(&mut self, ip: IpAddr, was_pending: bool) {
        let key = source_key(ip);
        if let Some(count) = self.per_source.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&key);
            }
        }
        self.total -= 1;
        if was_pending {
            self.pending -= 1;
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_sources_count_per_64_and_ipv4_per_address() {
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(source_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn one_ipv6_64_is_one_source_at_its_limit_and_past_it() {
        let mut a = Admission::new(Limits {
            total: 100,
            per_source: 2,
            pending: 100,
        });
        a.opened(ip("2001:db8::1"));
        assert_eq!(a.admit(ip("2001:db8::2")), Admit::Yes);
        a.opened(ip("2001:db8::2"));
        assert_eq!(a.admit(ip("2001:db8::3")), Admit::RefusePerSource);
        assert_eq!(a.admit(ip("2001:db8:0:1::3")), Admit::Yes);
        a.closed(ip("2001:db8::1"), true);
        assert_eq!(a.admit(ip("2001:db8::3")), Admit::Yes);
    }

    #[test]
    fn pending_connections_make_room_and_allocated_ones_never_do() {
        let mut a = Admission::new(Limits {
            total: 3,
            per_source: 10,
            pending: 2,
        });
        a.opened(ip("192.0.2.1"));
        a.opened(ip("192.0.2.2"));
        // At the pending limit: the oldest pending one goes.
        assert_eq!(a.admit(ip("192.0.2.3")), Admit::EvictOldestPending);
        a.allocated();
        a.allocated();
        a.opened(ip("192.0.2.3"));
        // At the total limit with one pending: it goes.
        assert_eq!(a.admit(ip("192.0.2.4")), Admit::EvictOldestPending);
        a.allocated();
        // Every slot holds an allocation: refused.
        assert_eq!(a.admit(ip("192.0.2.4")), Admit::RefuseTotal);
        a.closed(ip("192.0.2.1"), false);
        assert_eq!(a.admit(ip("192.0.2.4")), Admit::Yes);
    }
}
