//! The peer policy's unit tests: defaults, embedded IPv4, own sockets, operator rules.

use super::rules::{NAT64_WKP, SIX_TO_FOUR};
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
