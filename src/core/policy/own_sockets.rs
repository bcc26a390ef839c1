//! The relay's own sockets, which are never a peer and never a client: a relay that can
//! send to its own listen socket, or that answers a datagram its own relay socket sent,
//! feeds its output back into its input, and one datagram becomes an unbounded stream.
//!
//! - Service sockets: every listen socket and the metrics socket, by address and port.
//!   One bound to an unspecified address is reached on every address of the host (and on
//!   the whole of 127.0.0.0/8 when the host has IPv4 loopback), so it stands for each of
//!   them on its port.
//! - Relay sockets: the addresses a relay socket sends from are its bind address (or, when
//!   that is unspecified, any host address) and the public address it is announced as; the
//!   port is one the relay holds in its port pool (the server knows which).
//!
//! Addresses are compared in one form: an IPv4 address as its IPv4-mapped IPv6 address,
//! and an IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4, see `policy`) also
//! as the address it carries, so no spelling of an own socket escapes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::cidr::mask6;
use crate::core::config::Config;
use crate::core::ids::Family;

/// `net/mask` over the mapped form; IPv4 prefixes sit inside `::ffff:0:0/96`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    net: u128,
    mask: u128,
}

impl Prefix {
    fn host(ip: IpAddr) -> Self {
        Prefix {
            net: canonical(ip),
            mask: u128::MAX,
        }
    }

    fn v4(net: Ipv4Addr, len: u8) -> Self {
        let mask = mask6(96 + len);
        Prefix {
            net: canonical(IpAddr::V4(net)) & mask,
            mask,
        }
    }

    fn contains(self, bits: u128) -> bool {
        bits & self.mask == self.net
    }
}

#[derive(Debug, Clone, Default)]
/// The relay's own sockets (see the module docs).
pub struct OwnSockets {
    /// Listen and metrics sockets: where, and on which port.
    services: Vec<(Prefix, u16)>,
    /// Where relay sockets of each family send from, indexed by `Family::index()`.
    relay_sources: [Vec<Prefix>; 2],
}

impl OwnSockets {
    /// The sockets of a relay with this configuration. `config.listeners` and
    /// `config.metrics_addr` must be the bound addresses (the kernel's port for port 0).
    pub fn for_config(config: &Config) -> Self {
        let mut own = OwnSockets::default();
        let services = config.listeners.iter().chain(&config.metrics_addr);
        for socket in services {
            for prefix in reached_at(socket.ip(), &config.host_addresses) {
                let entry = (prefix, socket.port());
                if !own.services.contains(&entry) {
                    own.services.push(entry);
                }
            }
        }
        for family in Family::ALL {
            let Some(relay) = config.relay_address(family) else {
                continue;
            };
            let sources = &mut own.relay_sources[family.index()];
            let ips =
                reached_at(relay.bind, &config.host_addresses).chain([Prefix::host(relay.public)]);
            for prefix in ips {
                if !sources.contains(&prefix) {
                    sources.push(prefix);
                }
            }
        }
        own
    }

    /// Whether `addr` is one of the relay's listen or metrics sockets. Per datagram on the
    /// peer path: a scan of a short list that looks at the port first, no allocation.
    pub fn is_service(&self, addr: SocketAddr) -> bool {
        let port = addr.port();
        forms(addr.ip()).any(|bits| {
            self.services
                .iter()
                .any(|(prefix, p)| *p == port && prefix.contains(bits))
        })
    }

    /// Whether a relay socket of `family` could send from `ip` (the port is the caller's).
    pub fn is_relay_source(&self, family: Family, ip: IpAddr) -> bool {
        let sources = &self.relay_sources[family.index()];
        forms(ip).any(|bits| sources.iter().any(|prefix| prefix.contains(bits)))
    }

    /// The service sockets, for the start-up description.
    pub fn describe_services(&self) -> String {
        let list: Vec<String> = self
            .services
            .iter()
            .map(|(prefix, port)| {
                let ip = std::net::Ipv6Addr::from(prefix.net);
                let len = prefix.mask.count_ones();
                match ip.to_ipv4_mapped() {
                    Some(v4) if len == 128 => format!("{v4}:{port}"),
                    Some(v4) => format!("{v4}/{}:{port}", len - 96),
                    None => format!("[{ip}]:{port}"),
                }
            })
            .collect();
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    }
}

/// The prefixes a socket bound to `ip` is reached at: `ip` itself, and when it is
/// unspecified every host address too (an IPv6 wildcard may be dual-stack, so both
/// families), with IPv4 loopback widened to 127.0.0.0/8, all of which is local on Linux.
fn reached_at(ip: IpAddr, host: &[IpAddr]) -> impl Iterator<Item = Prefix> + '_ {
    let unspecified = ip.is_unspecified();
    let host = host.iter().filter(move |h| {
        unspecified && !h.is_unspecified() && (ip.is_ipv6() || h.is_ipv4() || is_mapped(**h))
    });
    std::iter::once(Prefix::host(ip)).chain(host.map(|h| match unmap(*h) {
        IpAddr::V4(v4) if v4.is_loopback() => Prefix::v4(Ipv4Addr::LOCALHOST, 8),
        other => Prefix::host(other),
    }))
}

/// The forms an address is compared in: itself, and the IPv4 address it carries.
fn forms(ip: IpAddr) -> impl Iterator<Item = u128> {
    let bits = canonical(ip);
    let carried = match ip {
        IpAddr::V6(v6) => super::rules::carried_ipv4(u128::from(v6))
            .map(|v4| canonical(IpAddr::V4(Ipv4Addr::from(v4)))),
        IpAddr::V4(_) => None,
    };
    std::iter::once(bits).chain(carried.filter(|c| *c != bits))
}

fn canonical(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn is_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::RelayAddress;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn specific_listeners_are_exactly_their_address_and_port() {
        let own = OwnSockets::for_config(&Config {
            listeners: vec![sa("192.0.2.10:3478"), sa("[2001:db8::10]:3479")],
            metrics_addr: Some(sa("127.0.0.1:9090")),
            host_addresses: vec![ip("192.0.2.10"), ip("127.0.0.1")],
            ..Config::default()
        });
        for yes in [
            "192.0.2.10:3478",
            "[::ffff:192.0.2.10]:3478",
            "[64:ff9b::c000:20a]:3478",
            "[2002:c000:20a::1]:3478",
            "[2001:db8::10]:3479",
            "127.0.0.1:9090",
        ] {
            assert!(own.is_service(sa(yes)), "{yes}");
        }
        for no in [
            "192.0.2.10:3479",
            "192.0.2.11:3478",
            "[2001:db8::10]:3478",
            "127.0.0.2:9090",
            "127.0.0.1:3478",
        ] {
            assert!(!own.is_service(sa(no)), "{no}");
        }
    }

    #[test]
    fn wildcard_listeners_stand_for_every_host_address() {
        let own = OwnSockets::for_config(&Config {
            listeners: vec![sa("0.0.0.0:3478"), sa("[::]:3478")],
            host_addresses: vec![
                ip("127.0.0.1"),
                ip("172.17.0.2"),
                ip("::1"),
                ip("2001:db8::5"),
            ],
            ..Config::default()
        });
        for yes in [
            "0.0.0.0:3478",
            "127.0.0.1:3478",
            "127.0.0.5:3478",
            "127.255.255.255:3478",
            "172.17.0.2:3478",
            "[::ffff:172.17.0.2]:3478",
            "[::]:3478",
            "[::1]:3478",
            "[2001:db8::5]:3478",
        ] {
            assert!(own.is_service(sa(yes)), "{yes}");
        }
        for no in ["172.17.0.3:3478", "8.8.8.8:3478", "[2001:db8::6]:3478"] {
            assert!(!own.is_service(sa(no)), "{no}");
        }
        assert_eq!(
            own.describe_services(),
            "0.0.0.0:3478, 127.0.0.0/8:3478, 172.17.0.2:3478, [::]:3478, [::1]:3478, \
             [2001:db8::5]:3478"
        );
    }

    #[test]
    fn relay_sources_are_the_bind_and_public_addresses() {
        let own = OwnSockets::for_config(&Config {
            relay_v4: Some(RelayAddress {
                bind: ip("0.0.0.0"),
                public: ip("203.0.113.10"),
            }),
            relay_v6: Some(RelayAddress {
                bind: ip("fd00::10"),
                public: ip("2001:db8::10"),
            }),
            host_addresses: vec![ip("127.0.0.1"), ip("10.0.0.10")],
            ..Config::default()
        });
        for yes in ["203.0.113.10", "10.0.0.10", "127.0.0.9", "0.0.0.0"] {
            assert!(own.is_relay_source(Family::V4, ip(yes)), "{yes}");
        }
        assert!(!own.is_relay_source(Family::V4, ip("10.0.0.11")));
        for yes in ["fd00::10", "2001:db8::10"] {
            assert!(own.is_relay_source(Family::V6, ip(yes)), "{yes}");
        }
        assert!(!own.is_relay_source(Family::V6, ip("fd00::11")));
        assert!(!own.is_relay_source(Family::V6, ip("::1")));
    }
}
