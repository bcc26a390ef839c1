//! Which peer addresses a client may reach through the relay. A TURN relay is a proxy into
//! the network it sits in, so addresses that are not globally reachable are refused (403).
//!
//! The verdict for a peer is that of the most specific matching prefix among
//! - the defaults: every range of the IANA IPv4 and IPv6 Special-Purpose Address Registries
//!   that is not globally reachable, plus multicast and the reserved/deprecated blocks, with
//!   the registries' globally reachable exceptions inside them allowed;
//! - the relay's own addresses (a /32 or /128 each; those it is given: its listen, bind and
//!   relayed IPs): reachable on the relay port range only, so two clients of this relay can
//!   talk through each other's relayed addresses but nobody reaches the relay's listen port
//!   or another service on its host through them;
//! - the operator's `--allow-peer`/`--deny-peer` prefixes (and `--allow-loopback-peers`).
//!
//! Before any of these, the relay's listen and metrics sockets (`own_sockets`) are refused
//! whatever the rules say: a relay that may send to its own listen socket is a loop.
//!
//! At equal length an operator rule beats an own-address rule, which beats a default, and
//! among rules of the same rank deny wins. An address matching nothing is allowed.
//!
//! An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:0:0/96`, NAT64
//! `64:ff9b::/96`, 6to4 `2002::/16`) is judged by the IPv4 rules applied to the address it
//! carries, as if every IPv4 rule were repeated inside each of those prefixes: `10.0.0.0/8`
//! acts as `::ffff:10.0.0.0/104`, `64:ff9b::a00:0/104` and `2002:a00::/24`. Operator rules
//! written in IPv6 still match the address as written, and compete by that length.
//!
//! Choices where the registries leave room:
//! - IPv4-compatible `::/96` (deprecated by RFC 4291) is denied outright: nothing legitimate
//!   uses it, and a host that still tunnels it would deliver to the IPv4 it carries.
//! - The rest of `::/8` (reserved by RFC 4291) is denied, IPv4-translated `::ffff:0:0:0/96`
//!   (SIIT, RFC 2765, obsolete) included: a stateless translator would deliver it to the
//!   IPv4 address it carries, and nothing current uses the form. IPv4-mapped `::ffff:0:0/96`
//!   inside it is still judged by its IPv4 address; `::` and `::1` stay denied.
//! - Teredo `2001::/32` is denied outright rather than judged by its obfuscated client IPv4:
//!   the address names a NAT binding, not a host, and Teredo is dead in practice.
//! - 6to4 `2002::/16` is judged by its embedded IPv4 (bits 16..48): a 6to4 relay delivers to
//!   that IPv4 address, so `2002:a00:1::` is 10.0.0.1 and denied, `2002:808:808::` allowed.
//! - `192.0.0.0/24` and `2001::/23` (IETF protocol assignments) are denied, except for the
//!   entries the registries mark globally reachable (listed in the tables below). Newer
//!   assignments inside them stay denied until they are added here.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{BitAnd, RangeInclusive};

use super::cidr::{Cidr, mask4, mask6};
use super::config::Config;
use super::own_sockets::OwnSockets;

/// What the peer address is used for: a permission ignores the port (RFC 8656 §10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUse {
    Permission,
    ChannelOrSend,
}

/// The effective peer-address policy, with every prefix's mask computed once: `allows`
/// runs per Send indication and must not allocate.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    v4: Vec<Rule<u32>>,
    v6: Vec<Rule<u128>>,
    relay_ports: RangeInclusive<u16>,
    // What the operator asked for, kept for `describe`.
    allow_loopback: bool,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    own: Vec<IpAddr>,
    /// Listen and metrics sockets: never a peer, whatever the rules say.
    own_sockets: OwnSockets,
}

impl Default for PeerPolicy {
    /// The defaults alone: no overrides, no own addresses.
    #[allow(
        clippy::reversed_empty_ranges,
        reason = "no relay ports: the range is empty"
    )]
    fn default() -> Self {
        PeerPolicy::new(false, Vec::new(), Vec::new(), Vec::new(), 1..=0)
    }
}

impl PeerPolicy {
    /// `own_ips` are the relay's listen and relayed addresses (unspecified ones are
    /// ignored); `relay_ports` is the range its relay sockets are bound in.
    ///
    /// `allow_loopback` adds operator allows for `127.0.0.0/8` and `::1/128`, and exempts
    /// loopback own addresses from the own-address rule: once any loopback peer may be
    /// reached, every service on this host already can be (through 127.0.0.2, say), so
    /// fencing the one loopback address the relay listens on would protect nothing and
    /// would break the relay-and-peers-on-one-host set-ups the flag exists for.
    pub fn new(
        allow_loopback: bool,
        allow: Vec<Cidr>,
        deny: Vec<Cidr>,
        own_ips: Vec<IpAddr>,
        relay_ports: RangeInclusive<u16>,
    ) -> Self {
        let mut own: Vec<IpAddr> = Vec::new();
        for ip in own_ips.into_iter().map(unmap) {
            let exempt = allow_loopback && ip.is_loopback();
            if !(ip.is_unspecified() || exempt || own.contains(&ip)) {
                own.push(ip);
            }
        }

        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for &(net, len, action) in DEFAULT_V4 {
            v4.push(Rule::v4(net, len, Source::Default, action));
        }
        for &(net, len, action) in DEFAULT_V6 {
            v6.push(Rule::v6(net, len, Source::Default, action));
        }
        for ip in &own {
            match *ip {
                IpAddr::V4(ip) => v4.push(Rule::v4(ip, 32, Source::Own, Action::Own)),
                IpAddr::V6(ip) => v6.push(Rule::v6(ip, 128, Source::Own, Action::Own)),
            }
        }
        if allow_loopback {
            v4.push(Rule::v4(
                Ipv4Addr::LOCALHOST,
                8,
                Source::Operator,
                Action::Allow,
            ));
            v6.push(Rule::v6(
                Ipv6Addr::LOCALHOST,
                128,
                Source::Operator,
                Action::Allow,
            ));
        }
        let operator = allow
            .iter()
            .map(|c| (c, Action::Allow))
            .chain(deny.iter().map(|c| (c, Action::Deny)));
        for (cidr, action) in operator {
            match cidr.network() {
                IpAddr::V4(net) => {
                    v4.push(Rule::v4(net, cidr.prefix_len(), Source::Operator, action))
                }
                IpAddr::V6(net) => {
                    v6.push(Rule::v6(net, cidr.prefix_len(), Source::Operator, action))
                }
            }
        }

        PeerPolicy {
            v4,
            v6,
            relay_ports,
            allow_loopback,
            allow,
            deny,
            own,
            own_sockets: OwnSockets::default(),
        }
    }

    /// The same policy, with these sockets of the relay refused as peers before any rule
    /// is consulted: not even `--allow-loopback-peers` or an `--allow-peer` covering them
    /// may let the relay send to itself.
    pub fn with_own_sockets(mut self, own_sockets: OwnSockets) -> Self {
        self.own_sockets = own_sockets;
        self
    }

    pub fn own_sockets(&self) -> &OwnSockets {
        &self.own_sockets
    }

    /// The policy a relay with this configuration enforces: the operator's flags, and as
    /// own addresses its listen IPs and its relayed (public) and bind IPs.
    pub fn for_config(config: &Config) -> Self {
        let own = config
            .listeners
            .iter()
            .map(SocketAddr::ip)
            .chain(
                [config.relay_v4, config.relay_v6]
                    .into_iter()
                    .flatten()
                    .flat_map(|relay| [relay.public, relay.bind]),
            )
            .collect();
        PeerPolicy::new(
            config.allow_loopback_peers,
            config.allow_peers.clone(),
            config.deny_peers.clone(),
            own,
            config.ports.clone(),
        )
        .with_own_sockets(OwnSockets::for_config(config))
    }

    pub fn allows(&self, peer: SocketAddr, usage: PeerUse) -> bool {
        if usage == PeerUse::ChannelOrSend && peer.port() == 0 {
            return false;
        }
        // The relay's listen and metrics sockets are never peers. A permission is per IP,
        // but one naming such a socket exactly can only mean to send there: refused too.
        if self.own_sockets.is_service(peer) {
            return false;
        }
        // A permission is per IP (its port is meaningless), so it may name an own address;
        // what is sent there is then checked port by port.
        let own_reachable = usage == PeerUse::Permission || self.relay_ports.contains(&peer.port());
        let mut verdict = Verdict::ALLOW_UNMATCHED;
        match peer.ip() {
            IpAddr::V4(v4) => verdict.scan(&self.v4, u32::from(v4), 0, own_reachable, false),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let embedded = embedded_ipv4(bits);
                verdict.scan(&self.v6, bits, 0, own_reachable, embedded.is_some());
                if let Some((v4, carrier_len)) = embedded {
                    verdict.scan(&self.v4, v4, carrier_len, own_reachable, false);
                }
            }
        }
        verdict.allow
    }

    /// One paragraph for the start-up log: what is denied, what the operator changed.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "peer policy: {} IPv4 and {} IPv6 special-purpose ranges that are not globally \
             reachable are denied (IANA special-purpose registries, multicast, reserved), \
             except {} IPv4 and {} IPv6 globally reachable assignments inside them; \
             IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 (2002::/16) peers are judged by the \
             IPv4 address they carry; IPv4-compatible (::/96), IPv4-translated \
             (::ffff:0:0:0/96), the rest of ::/8 and Teredo (2001::/32) peers are denied; \
             loopback peers are {}",
            count(DEFAULT_V4, Action::Deny),
            count(DEFAULT_V6, Action::Deny),
            count(DEFAULT_V4, Action::Allow),
            count(DEFAULT_V6, Action::Allow),
            if self.allow_loopback {
                "allowed (--allow-loopback-peers)"
            } else {
                "denied"
            },
        );
        let list = |cidrs: &[Cidr]| {
            if cidrs.is_empty() {
                "none".to_owned()
            } else {
                cidrs
                    .iter()
                    .map(Cidr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = write!(
            text,
            "; operator allow: {}; operator deny: {}; ",
            list(&self.allow),
            list(&self.deny)
        );
        if self.own.is_empty() {
            text.push_str("own addresses: none");
        } else {
            let own: Vec<String> = self.own.iter().map(IpAddr::to_string).collect();
            let _ = write!(
                text,
                "own addresses {} are reachable on relay ports {}-{} only",
                own.join(", "),
                self.relay_ports.start(),
                self.relay_ports.end()
            );
        }
        let _ = write!(
            text,
            "; the relay's own sockets {} are never peers",
            self.own_sockets.describe_services()
        );
        text.push_str(
            "; the most specific prefix wins, at equal length an operator rule beats a \
             built-in one and between operator rules deny wins",
        );
        text
    }
}

fn count<T>(table: &[(T, u8, Action)], action: Action) -> usize {
    let same = |a: Action| match a {
        Action::DenyNative => Action::Deny,
        a => a,
    };
    table.iter().filter(|(_, _, a)| same(*a) == action).count()
}

/// Where a rule comes from; at equal prefix length the later kind wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Default,
    Own,
    Operator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    /// Deny, except an address that carries an IPv4 one (IPv4-mapped inside `::/8`): the
    /// IPv4 rules judge that.
    DenyNative,
    /// One of the relay's own addresses: allowed for permissions and on relay ports.
    Own,
}

#[derive(Debug, Clone, Copy)]
struct Rule<T> {
    net: T,
    mask: T,
    len: u8,
    source: Source,
    action: Action,
}

impl Rule<u32> {
    fn v4(net: Ipv4Addr, len: u8, source: Source, action: Action) -> Self {
        let mask = mask4(len);
        Rule {
            net: u32::from(net) & mask,
            mask,
            len,
            source,
            action,
        }
    }
}

impl Rule<u128> {
    fn v6(net: Ipv6Addr, len: u8, source: Source, action: Action) -> Self {
        let mask = mask6(len);
        Rule {
            net: u128::from(net) & mask,
            mask,
            len,
            source,
            action,
        }
    }
}

/// The best match so far: its rank (prefix length, source) and whether it allows.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    rank: (u8, Source),
    allow: bool,
}

impl Verdict {
    /// What applies when nothing matches: a /0 allow that any rule outranks.
    const ALLOW_UNMATCHED: Verdict = Verdict {
        rank: (0, Source::Default),
        allow: true,
    };

    /// Offers every rule matching `addr`, its length counted from `carrier_len` (the length
    /// of the IPv6 prefix carrying an IPv4 address, 0 for a native address). `carries_ipv4`
    /// says the IPv4 rules judge `addr` too, so rules that deny only native addresses skip it.
    fn scan<T>(
        &mut self,
        rules: &[Rule<T>],
        addr: T,
        carrier_len: u8,
        own_reachable: bool,
        carries_ipv4: bool,
    ) where
        T: Copy + Eq + BitAnd<Output = T>,
    {
        for rule in rules {
            if addr & rule.mask != rule.net {
                continue;
            }
            let allow = match rule.action {
                Action::Allow => true,
                Action::Deny => false,
                Action::DenyNative if carries_ipv4 => continue,
                Action::DenyNative => false,
                Action::Own => own_reachable,
            };
            let rank = (carrier_len + rule.len, rule.source);
            if rank > self.rank {
                *self = Verdict { rank, allow };
            } else if rank == self.rank {
                self.allow &= allow;
            }
        }
    }
}

const NAT64_WKP: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;
const SIX_TO_FOUR: u128 = 0x2002 << 112;

/// The IPv4 address an IPv6 address carries, and the length of the prefix carrying it.
fn embedded_ipv4(v6: u128) -> Option<(u32, u8)> {
    if v6 & mask6(96) == 0xffff << 32 {
        // IPv4-mapped: a dual-stack socket sends this as IPv4.
        Some((v6 as u32, 96))
    } else if v6 & mask6(96) == NAT64_WKP {
        // NAT64 well-known prefix: the translator delivers to the IPv4 address.
        Some((v6 as u32, 96))
    } else if v6 & mask6(16) == SIX_TO_FOUR {
        // 6to4: tunnelled to the IPv4 address in bits 16..48.
        Some(((v6 >> 80) as u32, 16))
    } else {
        None
    }
}

/// The IPv4 address an IPv6 address carries, if any (for the own-socket checks).
pub(super) fn carried_ipv4(v6: u128) -> Option<u32> {
    embedded_ipv4(v6).map(|(v4, _)| v4)
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

use Action::{Allow, Deny, DenyNative};

/// IANA IPv4 Special-Purpose Address Registry entries that are not globally reachable,
/// multicast, and the globally reachable exceptions inside a denied block. Globally
/// reachable entries outside any denied block (AS112 192.31.196.0/24 and 192.175.48.0/24,
/// AMT 192.52.193.0/24) need no rule.
const DEFAULT_V4: &[(Ipv4Addr, u8, Action)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, Deny),          // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8, Deny),         // private use
    (Ipv4Addr::new(100, 64, 0, 0), 10, Deny),      // shared address space (CGN)
    (Ipv4Addr::new(127, 0, 0, 0), 8, Deny),        // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16, Deny),     // link local
    (Ipv4Addr::new(172, 16, 0, 0), 12, Deny),      // private use
    (Ipv4Addr::new(192, 0, 0, 0), 24, Deny),       // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 0, 9), 32, Allow),      // Port Control Protocol anycast
    (Ipv4Addr::new(192, 0, 0, 10), 32, Allow),     // Traversal Using Relays around NAT anycast
    (Ipv4Addr::new(192, 0, 2, 0), 24, Deny),       // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 88, 99, 0), 24, Deny),     // deprecated 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16, Deny),     // private use
    (Ipv4Addr::new(198, 18, 0, 0), 15, Deny),      // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24, Deny),    // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24, Deny),     // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4, Deny),        // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4, Deny),        // reserved
    (Ipv4Addr::new(255, 255, 255, 255), 32, Deny), // limited broadcast
];

const fn v6(segments: [u16; 8]) -> Ipv6Addr {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Addr::new(a, b, c, d, e, f, g, h)
}

/// The same for IPv6. IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 addresses have no rule
/// here: the IPv4 rules judge the address they carry.
const DEFAULT_V6: &[(Ipv6Addr, u8, Action)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0]), 128, Deny), // unspecified
    (v6([0, 0, 0, 0, 0, 0, 0, 1]), 128, Deny), // loopback
    (v6([0, 0, 0, 0, 0, 0, 0, 0]), 96, Deny),  // IPv4-compatible (deprecated)
    (v6([0, 0, 0, 0, 0, 0, 0, 0]), 8, DenyNative), // reserved by IETF (the rest of ::/8)
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]), 48, Deny), // NAT64 local use
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0]), 64, Deny), // discard only
    (v6([0x100, 0, 0, 1, 0, 0, 0, 0]), 64, Deny), // dummy prefix (RFC 9780)
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 23, Deny), // IETF protocol assignments
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 32, Deny), // Teredo
    (v6([0x2001, 1, 0, 0, 0, 0, 0, 1]), 128, Allow), // Port Control Protocol anycast
    (v6([0x2001, 1, 0, 0, 0, 0, 0, 2]), 128, Allow), // TURN anycast
    (v6([0x2001, 2, 0, 0, 0, 0, 0, 0]), 48, Deny), // benchmarking
    (v6([0x2001, 3, 0, 0, 0, 0, 0, 0]), 32, Allow), // AMT
    (v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0]), 48, Allow), // AS112-v6
    (v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0]), 28, Allow), // ORCHIDv2
    (v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0]), 28, Allow), // drone remote ID (DRIP DETs)
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), 32, Deny), // documentation
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]), 20, Deny), // documentation (RFC 9637)
    (v6([0x5f00, 0, 0, 0, 0, 0, 0, 0]), 16, Deny), // segment routing (SRv6) SIDs
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]), 7, Deny), // unique local
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10, Deny), // link local
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]), 10, Deny), // site local (deprecated)
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8, Deny), // multicast
];

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY_PORTS: RangeInclusive<u16> = 50000..=50099;

    fn sock(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap_or_else(|_| panic!("{ip}")), port)
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn with_rules(allow: &[&str], deny: &[&str]) -> PeerPolicy {
        PeerPolicy::new(false, cidrs(allow), cidrs(deny), Vec::new(), RELAY_PORTS)
    }

    /// The verdict for `ip` on a peer port, which must not depend on the use.
    fn verdict(policy: &PeerPolicy, ip: &str) -> bool {
        let permission = policy.allows(sock(ip, 9), PeerUse::Permission);
        let channel = policy.allows(sock(ip, 9), PeerUse::ChannelOrSend);
        assert_eq!(
            permission, channel,
            "{ip}: the port-9 verdict depends on the use"
        );
        permission
    }

    /// The IPv6 forms that carry `v4`: mapped, NAT64 well-known prefix, 6to4.
    fn carriers(v4: &str) -> [String; 3] {
        let bits = u128::from(u32::from(v4.parse::<Ipv4Addr>().unwrap()));
        [
            Ipv6Addr::from((0xffff << 32) | bits).to_string(),
            Ipv6Addr::from(NAT64_WKP | bits).to_string(),
            Ipv6Addr::from(SIX_TO_FOUR | (bits << 80) | 1).to_string(),
        ]
    }

    /// Denied ranges: (name, addresses inside, addresses just outside and otherwise global).
    const V4_DENIED: &[(&str, &[&str], &[&str])] = &[
        ("this network", &["0.0.0.0", "0.255.255.255"], &["1.0.0.0"]),
        (
            "private 10/8",
            &["10.0.0.0", "10.255.255.255"],
            &["9.255.255.255", "11.0.0.0"],
        ),
        (
            "shared",
            &["100.64.0.0", "100.127.255.255"],
            &["100.63.255.255", "100.128.0.0"],
        ),
        (
            "loopback",
            &["127.0.0.1", "127.255.255.255"],
            &["126.255.255.255", "128.0.0.0"],
        ),
        (
            "link local",
            &["169.254.0.0", "169.254.255.255"],
            &["169.253.255.255", "169.255.0.0"],
        ),
        (
            "private 172.16/12",
            &["172.16.0.0", "172.31.255.255"],
            &["172.15.255.255", "172.32.0.0"],
        ),
        (
            "IETF protocol assignments",
            &[
                "192.0.0.0",
                "192.0.0.8",
                "192.0.0.11",
                "192.0.0.170",
                "192.0.0.255",
            ],
            &["191.255.255.255", "192.0.1.0", "192.0.0.9", "192.0.0.10"],
        ),
        (
            "TEST-NET-1",
            &["192.0.2.0", "192.0.2.255"],
            &["192.0.1.255", "192.0.3.0"],
        ),
        (
            "6to4 relay anycast",
            &["192.88.99.0", "192.88.99.255"],
            &["192.88.98.255", "192.88.100.0"],
        ),
        (
            "private 192.168/16",
            &["192.168.0.0", "192.168.255.255"],
            &["192.167.255.255", "192.169.0.0"],
        ),
        (
            "benchmarking",
            &["198.18.0.0", "198.19.255.255"],
            &["198.17.255.255", "198.20.0.0"],
        ),
        (
            "TEST-NET-2",
            &["198.51.100.0", "198.51.100.255"],
            &["198.51.99.255", "198.51.101.0"],
        ),
        (
            "TEST-NET-3",
            &["203.0.113.0", "203.0.113.255"],
            &["203.0.112.255", "203.0.114.0"],
        ),
        (
            "multicast",
            &["224.0.0.0", "239.255.255.255"],
            &["223.255.255.255"],
        ),
        ("reserved", &["240.0.0.0", "255.255.255.254"], &[]),
        ("limited broadcast", &["255.255.255.255"], &[]),
    ];

    const V6_DENIED: &[(&str, &[&str], &[&str])] = &[
        ("unspecified", &["::"], &[]),
        ("loopback", &["::1"], &[]),
        (
            "IPv4-compatible",
            &["::2", "::8.8.8.8", "::1.1.1.1", "::ffff:ffff"],
            &[],
        ),
        (
            "IPv4-translated and the rest of ::/8",
            &[
                "::ffff:0:a9fe:a9fe",
                "::ffff:0:808:808",
                "::1:0:0",
                "::fffe:0:0",
                "::1:ffff:808:808",
                "ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["100:0:0:2::", "::ffff:8.8.8.8"],
        ),
        (
            "NAT64 local use",
            &["64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff"],
            // Its neighbours are in the rest of ::/8; the well-known prefix carries IPv4.
            &["64:ff9b::808:808"],
        ),
        (
            "discard only",
            &["100::", "100::ffff:ffff:ffff:ffff"],
            &["100:0:0:2::"],
        ),
        (
            "dummy prefix",
            &["100:0:0:1::", "100:0:0:1:ffff:ffff:ffff:ffff"],
            &[],
        ),
        (
            "IETF protocol assignments",
            &[
                "2001:100::",
                "2001:1::3",
                "2001:10::1",
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:200::"],
        ),
        (
            "Teredo",
            &[
                "2001::",
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &[],
        ),
        (
            "benchmarking",
            &["2001:2::", "2001:2:0:ffff:ffff:ffff:ffff:ffff"],
            &[],
        ),
        (
            "documentation 2001:db8::/32",
            &["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"],
        ),
        (
            "documentation 3fff::/20",
            &["3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff:1000::"],
        ),
        (
            "SRv6 SIDs",
            &["5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &["5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "5f01::"],
        ),
        (
            "unique local",
            &[
                "fc00::",
                "fd12:3456::1",
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::"],
        ),
        (
            "link local",
            &[
                "fe80::",
                "fe80::1",
                "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &["fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
        ),
        (
            "site local",
            &["fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
            &[],
        ),
        (
            "multicast",
            &[
                "ff00::",
                "ff02::1",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
            &[],
        ),
    ];

    #[test]
    fn denies_every_ipv4_special_range_and_its_embedded_forms() {
        let policy = PeerPolicy::default();
        for (name, inside, outside) in V4_DENIED {
            for ip in *inside {
                assert!(!verdict(&policy, ip), "{name}: {ip} must be denied");
                for form in carriers(ip) {
                    assert!(
                        !verdict(&policy, &form),
                        "{name}: {form} ({ip}) must be denied"
                    );
                }
            }
            for ip in *outside {
                assert!(verdict(&policy, ip), "{name}: {ip} must be allowed");
                for form in carriers(ip) {
                    assert!(
                        verdict(&policy, &form),
                        "{name}: {form} ({ip}) must be allowed"
                    );
                }
            }
        }
    }

    #[test]
    fn denies_every_ipv6_special_range() {
        let policy = PeerPolicy::default();
        for (name, inside, outside) in V6_DENIED {
            for ip in *inside {
                assert!(!verdict(&policy, ip), "{name}: {ip} must be denied");
            }
            for ip in *outside {
                assert!(verdict(&policy, ip), "{name}: {ip} must be allowed");
            }
        }
    }

    #[test]
    fn allows_globally_reachable_addresses_and_registry_exceptions() {
        let policy = PeerPolicy::default();
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "192.31.196.1", // AS112
            "192.52.193.1", // AMT
            "192.175.48.1", // AS112 direct delegation
            "192.0.0.9",    // PCP anycast
            "192.0.0.10",   // TURN anycast
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2620:4f:8000::1", // AS112 direct delegation
            "2001:1::1",       // PCP anycast
            "2001:1::2",       // TURN anycast
            "2001:3::1",       // AMT
            "2001:3:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:4:112::1", // AS112-v6
            "2001:20::1",    // ORCHIDv2
            "2001:2f:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:30::1", // DRIP
            "2001:3f:ffff:ffff:ffff:ffff:ffff:ffff",
            "4000::1", // unassigned, but not special
        ] {
            assert!(verdict(&policy, ip), "{ip} must be allowed");
        }
        // Just outside the exceptions, the protocol-assignment block denies again.
        for ip in [
            "2001:1::",
            "2001:1::3",
            "2001:4:113::",
            "2001:4:111:ffff::",
            "2001:40::",
            "2001:2::1",
        ] {
            assert!(!verdict(&policy, ip), "{ip} must be denied");
        }
    }

    #[test]
    fn judges_ipv6_forms_by_the_ipv4_they_carry() {
        let policy = PeerPolicy::default();
        for denied in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",   // NAT64 of 10.0.0.1
            "64:ff9b::7f00:1",  // NAT64 of 127.0.0.1
            "2002:7f00:1::",    // 6to4 of 127.0.0.1
            "2002:c0a8:101::1", // 6to4 of 192.168.1.1
            "::127.0.0.1",      // IPv4-compatible: denied whatever it carries
            "::8.8.8.8",
        ] {
            assert!(!verdict(&policy, denied), "{denied} must be denied");
        }
        for allowed in [
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2002:101:101:1::5",
        ] {
            assert!(verdict(&policy, allowed), "{allowed} must be allowed");
        }
    }

    #[test]
    fn port_zero_is_no_peer_for_channels_and_sends_but_permissions_ignore_the_port() {
        let policy = PeerPolicy::default();
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(policy.allows(sock(ip, 0), PeerUse::Permission), "{ip}");
            assert!(!policy.allows(sock(ip, 0), PeerUse::ChannelOrSend), "{ip}");
            assert!(policy.allows(sock(ip, 1), PeerUse::ChannelOrSend), "{ip}");
            assert!(
                policy.allows(sock(ip, 65535), PeerUse::ChannelOrSend),
                "{ip}"
            );
        }
    }

    #[test]
    fn own_addresses_are_reachable_on_relay_ports_only() {
        let own = [
            "8.8.4.4",
            "203.0.113.10",
            "10.0.0.10",
            "2606:4700::10",
            "::ffff:192.0.2.10",
        ];
        let policy = PeerPolicy::new(
            false,
            Vec::new(),
            Vec::new(),
            own.iter()
                .map(|ip| ip.parse().unwrap())
                .chain(["0.0.0.0".parse().unwrap()])
                .collect(),
            RELAY_PORTS,
        );
        // A mapped own address counts as its IPv4; each address is also reached through the
        // IPv6 forms that carry it.
        for ip in [
            "8.8.4.4",
            "203.0.113.10",
            "10.0.0.10",
            "2606:4700::10",
            "192.0.2.10",
            "::ffff:8.8.4.4",
            "64:ff9b::cb00:710a",
            "2002:a00:a::1",
        ] {
            for port in [50000, 50042, 50099] {
                assert!(
                    policy.allows(sock(ip, port), PeerUse::ChannelOrSend),
                    "{ip}:{port}"
                );
            }
            for port in [0, 22, 3478, 49999, 50100] {
                assert!(
                    !policy.allows(sock(ip, port), PeerUse::ChannelOrSend),
                    "{ip}:{port}"
                );
                // A permission is per IP: clients of this relay permit each other's relayed
                // addresses; the port is checked when data is sent.
                assert!(
                    policy.allows(sock(ip, port), PeerUse::Permission),
                    "{ip}:{port}"
                );
            }
        }
        // Only the exact addresses: their neighbours keep the verdict of their range.
        assert!(!policy.allows(sock("203.0.113.11", 50000), PeerUse::ChannelOrSend));
        assert!(!policy.allows(sock("203.0.113.11", 50000), PeerUse::Permission));
        assert!(policy.allows(sock("8.8.4.5", 22), PeerUse::ChannelOrSend));
        assert!(!policy.allows(sock("0.0.0.0", 50000), PeerUse::ChannelOrSend));
    }

    #[test]
    fn own_addresses_yield_only_to_exact_operator_rules() {
        let own = || vec!["8.8.4.4".parse().unwrap(), "2606:4700::10".parse().unwrap()];
        // A broader operator deny leaves the relay ports open, a broader allow opens nothing.
        let broad = PeerPolicy::new(
            false,
            cidrs(&["8.8.0.0/16"]),
            cidrs(&["2606:4700::/32"]),
            own(),
            RELAY_PORTS,
        );
        assert!(!broad.allows(sock("8.8.4.4", 22), PeerUse::ChannelOrSend));
        assert!(broad.allows(sock("2606:4700::10", 50000), PeerUse::ChannelOrSend));
        assert!(!broad.allows(sock("2606:4700::11", 50000), PeerUse::ChannelOrSend));
        // The exact address, named by the operator, is the operator's call.
        let exact = PeerPolicy::new(
            false,
            cidrs(&["8.8.4.4/32"]),
            cidrs(&["2606:4700::10"]),
            own(),
            RELAY_PORTS,
        );
        assert!(exact.allows(sock("8.8.4.4", 22), PeerUse::ChannelOrSend));
        assert!(!exact.allows(sock("2606:4700::10", 50000), PeerUse::ChannelOrSend));
        assert!(!exact.allows(sock("2606:4700::10", 50000), PeerUse::Permission));
    }

    #[test]
    fn operator_rules_override_by_specificity_and_deny_wins_ties() {
        let policy = with_rules(
            &["10.1.0.0/16", "10.1.2.3/32"],
            &["8.8.8.0/24", "10.1.2.0/24"],
        );
        assert!(verdict(&policy, "10.1.0.1"));
        assert!(verdict(&policy, "10.1.255.255"));
        assert!(!verdict(&policy, "10.2.0.1"));
        assert!(!verdict(&policy, "10.0.255.255"));
        assert!(!verdict(&policy, "8.8.8.8"));
        assert!(verdict(&policy, "8.8.4.4"));
        // A deny inside the allow, an allow inside that deny.
        assert!(!verdict(&policy, "10.1.2.4"));
        assert!(verdict(&policy, "10.1.2.3"));
        // Operator IPv4 rules apply to the IPv6 forms carrying the address.
        for form in carriers("10.1.0.1") {
            assert!(verdict(&policy, &form), "{form}");
        }
        for form in carriers("8.8.8.8").iter().chain(&carriers("10.1.2.4")) {
            assert!(!verdict(&policy, form), "{form}");
        }

        // The same prefix allowed and denied: deny.
        let tie = with_rules(&["8.8.8.0/24", "fd00::/8"], &["8.8.8.0/24", "fd00::/8"]);
        assert!(!verdict(&tie, "8.8.8.8"));
        assert!(!verdict(&tie, "fd00::1"));
        // An operator allow of exactly a default range beats the default.
        let same = with_rules(&["10.0.0.0/8", "fc00::/7"], &[]);
        assert!(verdict(&same, "10.9.9.9"));
        assert!(verdict(&same, "fd00::1"));
        assert!(!verdict(&same, "192.168.0.1"));
        // A default more specific than an operator allow still applies.
        let wide = with_rules(&["0.0.0.0/0", "::/0", "2001::/16"], &[]);
        assert!(!verdict(&wide, "10.0.0.1"));
        assert!(!verdict(&wide, "::ffff:10.0.0.1"));
        assert!(!verdict(&wide, "2001:db8::1"));
        assert!(verdict(&wide, "8.8.8.8"));
    }

    #[test]
    fn ipv6_operator_rules_match_the_address_as_written() {
        // Denying IPv6 prefixes reaches the IPv4-carrying forms inside them.
        let policy = with_rules(&[], &["2002::/16", "::/0"]);
        assert!(!verdict(&policy, "2002:808:808::1"));
        assert!(!verdict(&policy, "64:ff9b::808:808"));
        assert!(!verdict(&policy, "::ffff:8.8.8.8"));
        assert!(verdict(&policy, "8.8.8.8"));
        // Allowing a carrier prefix does not open what the IPv4 rules deny inside it,
        // because an IPv4 rule counts the carrier's length plus its own.
        let nat64 = with_rules(&["64:ff9b::/96", "2002::/16"], &[]);
        assert!(!verdict(&nat64, "64:ff9b::a00:1"));
        assert!(!verdict(&nat64, "2002:a00:1::"));
        // A rule as specific as the carried prefix decides like its IPv4 twin.
        let mapped = with_rules(&["::ffff:10.1.0.0/112", "64:ff9b::a01:0/112"], &[]);
        assert!(verdict(&mapped, "::ffff:10.1.2.3"));
        assert!(verdict(&mapped, "64:ff9b::a01:203"));
        assert!(!verdict(&mapped, "10.1.2.3"));
        assert!(!verdict(&mapped, "::ffff:10.2.0.1"));
    }

    #[test]
    fn loopback_flag_allows_loopback_only() {
        let strict = PeerPolicy::default();
        let lax = PeerPolicy::new(
            true,
            Vec::new(),
            cidrs(&["127.0.0.53"]),
            Vec::new(),
            RELAY_PORTS,
        );
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert!(!verdict(&strict, ip), "{ip}");
            assert!(verdict(&lax, ip), "{ip}");
        }
        for ip in [
            "127.0.0.53",
            "::2",
            "::",
            "10.0.0.1",
            "0.0.0.0",
            "fe80::1",
            "::ffff:192.168.1.1",
        ] {
            assert!(!verdict(&lax, ip), "{ip}");
        }
    }

    #[test]
    fn loopback_flag_exempts_loopback_own_addresses() {
        let own = || vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        // Without the flag, a relay on loopback lets its clients reach each other only.
        let strict = PeerPolicy::new(false, Vec::new(), Vec::new(), own(), RELAY_PORTS);
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(
                strict.allows(sock(ip, 50000), PeerUse::ChannelOrSend),
                "{ip}"
            );
            assert!(
                !strict.allows(sock(ip, 9999), PeerUse::ChannelOrSend),
                "{ip}"
            );
        }
        assert!(!strict.allows(sock("127.0.0.2", 50000), PeerUse::ChannelOrSend));
        // With it, peers on the same host are the point (tests, development).
        let lax = PeerPolicy::new(true, Vec::new(), Vec::new(), own(), RELAY_PORTS);
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(lax.allows(sock(ip, 50000), PeerUse::ChannelOrSend), "{ip}");
            assert!(lax.allows(sock(ip, 9999), PeerUse::ChannelOrSend), "{ip}");
        }
    }

    #[test]
    fn describe_summarises_the_effective_policy() {
        let text = PeerPolicy::new(
            false,
            cidrs(&["10.1.0.0/16"]),
            cidrs(&["8.8.8.0/24", "2001:db8::/32"]),
            vec![
                "203.0.113.10".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
            ],
            RELAY_PORTS,
        )
        .describe();
        for part in [
            "16 IPv4 and 17 IPv6 special-purpose ranges",
            "except 2 IPv4 and 6 IPv6 globally reachable",
            "loopback peers are denied",
            "operator allow: 10.1.0.0/16;",
            "operator deny: 8.8.8.0/24, 2001:db8::/32;",
            "own addresses 203.0.113.10, 2001:db8::10 are reachable on relay ports 50000-50099",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
        assert!(!text.contains('\n'));
        let default = PeerPolicy::default().describe();
        assert!(
            default.contains("operator allow: none; operator deny: none; own addresses: none"),
            "{default}"
        );
        assert!(
            PeerPolicy::new(true, Vec::new(), Vec::new(), Vec::new(), RELAY_PORTS)
                .describe()
                .contains("loopback peers are allowed")
        );
    }

    #[test]
    fn default_tables_are_normalised() {
        // Every table entry is a network address, so rules never silently widen.
        for &(net, len, _) in DEFAULT_V4 {
            assert!(Cidr::new(IpAddr::V4(net), len).is_ok(), "{net}/{len}");
        }
        for &(net, len, _) in DEFAULT_V6 {
            assert!(Cidr::new(IpAddr::V6(net), len).is_ok(), "{net}/{len}");
        }
    }
}
