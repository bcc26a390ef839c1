//! The rules of the peer policy: a prefix with its source and verdict, the most specific
//! match, and the IPv4 address an IPv6 address may carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::BitAnd;

use super::cidr::{mask4, mask6};

/// Where a rule comes from; at equal prefix length the later kind wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    Default,
    Own,
    Operator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Allow,
    Deny,
    /// Deny, except an address that carries an IPv4 one (IPv4-mapped inside `::/8`): the
    /// IPv4 rules judge that.
    DenyNative,
    /// One of the relay's own addresses: allowed for permissions and on relay ports.
    Own,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Rule<T> {
    net: T,
    mask: T,
    len: u8,
    source: Source,
    action: Action,
}

impl Rule<u32> {
    pub(super) fn v4(net: Ipv4Addr, len: u8, source: Source, action: Action) -> Self {
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
    pub(super) fn v6(net: Ipv6Addr, len: u8, source: Source, action: Action) -> Self {
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
pub(super) struct Verdict {
    rank: (u8, Source),
    pub(super) allow: bool,
}

impl Verdict {
    /// What applies when nothing matches: a /0 allow that any rule outranks.
    pub(super) const ALLOW_UNMATCHED: Verdict = Verdict {
        rank: (0, Source::Default),
        allow: true,
    };

    /// Offers every rule matching `addr`, its length counted from `carrier_len` (the length
    /// of the IPv6 prefix carrying an IPv4 address, 0 for a native address). `carries_ipv4`
    /// says the IPv4 rules judge `addr` too, so rules that deny only native addresses skip it.
    pub(super) fn scan<T>(
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

pub(super) const NAT64_WKP: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;
pub(super) const SIX_TO_FOUR: u128 = 0x2002 << 112;

/// The IPv4 address an IPv6 address carries, and the length of the prefix carrying it.
pub(super) fn embedded_ipv4(v6: u128) -> Option<(u32, u8)> {
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
pub(crate) fn carried_ipv4(v6: u128) -> Option<u32> {
    embedded_ipv4(v6).map(|(v4, _)| v4)
}

pub(super) fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
