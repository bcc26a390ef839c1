//! The IANA Special-Purpose Address Registries (IPv4 and IPv6), as the relay's default
//! rules: what is not globally reachable is denied, with the registries' exceptions allowed.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::rules::Action::{self, Allow, Deny, DenyNative};

/// IANA IPv4 Special-Purpose Address Registry entries that are not globally reachable,
/// multicast, and the globally reachable exceptions inside a denied block. Globally
/// reachable entries outside any denied block (AS112 192.31.196.0/24 and 192.175.48.0/24,
/// AMT 192.52.193.0/24) need no rule.
pub(super) const DEFAULT_V4: &[(Ipv4Addr, u8, Action)] = &[
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

pub(super) const fn v6(segments: [u16; 8]) -> Ipv6Addr {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Addr::new(a, b, c, d, e, f, g, h)
}

/// The same for IPv6. IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 addresses have no rule
/// here: the IPv4 rules judge the address they carry.
pub(super) const DEFAULT_V6: &[(Ipv6Addr, u8, Action)] = &[
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
