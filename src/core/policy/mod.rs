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
use std::ops::RangeInclusive;

pub mod cidr;
pub mod own_sockets;
mod rules;
mod special_purpose;

use self::cidr::Cidr;
use self::own_sockets::OwnSockets;
use self::rules::{Action, Rule, Source, Verdict, embedded_ipv4, unmap};
use self::special_purpose::{DEFAULT_V4, DEFAULT_V6};
use super::config::Config;

/// What the peer address is used for: a permission ignores the port (RFC 8656 §10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUse {
    /// CreatePermission: only the IP counts.
    Permission,
    /// ChannelBind or Send: IP and port count.
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

    /// The relay's own sockets this policy refuses.
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

    /// Whether a client may reach `peer` for `usage`.
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

#[cfg(test)]
mod tests;
