//! Property tests of the core's invariants: proptest generates whole scenarios (client
//! requests, garbage, peer datagrams, relay-socket completions and time steps) and the fuzz
//! harness (fuzz/harness/core_driver.rs, on the one fake driver of tests/support/) runs them, checking after every input
//! `invariant_violations()` and what a driver sees (well-formed outputs, sockets closed once,
//! data intact and to the owner, lifetimes within bounds), and at the end that everything
//! expired leaves no allocation, port, socket, timer or per-client state.
//!
//! Deterministic: a fixed RNG seed (PROPTEST_RNG_SEED still overrides it for exploration),
//! and no failure files written into the tree.

#[path = "../fuzz/harness/core_driver.rs"]
mod core_driver;
#[path = "support/fake_driver.rs"]
mod fake_driver;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use core_driver::{
    Auth, ChannelChoice, Datagram, Driver, FamilyRequest, Method, NonceMode, Op, OpenResult,
    PeerChoice, Request, Scenario, TimerMode, TokenChoice, Transport,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use relay::core::Footprint;

fn config(cases: u32) -> Config {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7e1a_75ec);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    }
}

/// Mostly small numbers: the harness maps 0 (and small values) to the ordinary, valid
/// choice (first client, first user, known peers), so most requests meet existing state.
fn mostly_small(below: u8) -> impl Strategy<Value = u8> {
    prop_oneof![8 => 0..below, 1 => any::<u8>()]
}

fn peer() -> impl Strategy<Value = PeerChoice> {
    prop_oneof![
        6 => mostly_small(9).prop_map(PeerChoice::Known),
        1 => (any::<bool>(), any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(v6, ip, port)| PeerChoice::Any { v6, ip, port }),
    ]
}

fn channel() -> impl Strategy<Value = ChannelChoice> {
    prop_oneof![
        6 => any::<u8>().prop_map(ChannelChoice::Low),
        1 => any::<u16>().prop_map(ChannelChoice::Any),
    ]
}

fn lifetime() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(0)),
        1 => (0u32..5000).prop_map(Some),
        1 => any::<u32>().prop_map(Some),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    let transport = prop_oneof![
        6 => Just(Transport::Udp),
        1 => Just(Transport::Missing),
        1 => any::<u8>().prop_map(Transport::Other),
    ];
    let family = prop_oneof![
        10 => Just(FamilyRequest::Default),
        1 => any::<bool>().prop_map(FamilyRequest::Requested),
        2 => any::<bool>().prop_map(FamilyRequest::Additional),
        1 => Just(FamilyRequest::Both),
        1 => any::<u8>().prop_map(FamilyRequest::RawRequested),
    ];
    let token = prop_oneof![
        10 => Just(None),
        1 => any::<u8>().prop_map(|n| Some(TokenChoice::Seen(n))),
        1 => any::<u64>().prop_map(|n| Some(TokenChoice::Raw(n))),
    ];
    let even_port = prop_oneof![8 => Just(None), 1 => any::<bool>().prop_map(Some)];
    prop_oneof![
        4 => (transport, lifetime(), family, even_port, token, prop::bool::weighted(0.1)).prop_map(
            |(transport, lifetime, family, even_port, token, dont_fragment)| Method::Allocate {
                transport,
                lifetime,
                family,
                even_port,
                token,
                dont_fragment,
            }
        ),
        2 => (lifetime(), prop_oneof![2 => Just(None), 1 => any::<bool>().prop_map(Some)])
            .prop_map(|(lifetime, family)| Method::Refresh { lifetime, family }),
        3 => (channel(), peer()).prop_map(|(channel, peer)| Method::ChannelBind { channel, peer }),
        3 => prop::collection::vec(peer(), 1..6)
            .prop_map(|peers| Method::CreatePermission { peers }),
        1 => Just(Method::Binding),
    ]
}

fn auth() -> impl Strategy<Value = Auth> {
    let nonce = prop_oneof![
        8 => Just(NonceMode::Fresh),
        1 => Just(NonceMode::Cached),
        1 => Just(NonceMode::Garbage),
        1 => Just(NonceMode::Omitted),
    ];
    let small =
        |valid: u8, odd: u8| prop_oneof![18 => Just(valid), 1 => Just(odd), 1 => any::<u8>()];
    (
        small(0, 1),
        small(0, 1),
        nonce,
        small(0, 2),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(user, secret, nonce, omit, corrupt, wrong_realm)| Auth {
            user,
            secret,
            nonce,
            omit,
            corrupt,
            wrong_realm,
        })
}

fn request() -> impl Strategy<Value = Request> {
    let extra = prop_oneof![
        12 => Just(None),
        1 => (any::<u16>(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(Some),
    ];
    (method(), auth(), any::<u8>(), any::<bool>(), extra).prop_map(
        |(method, auth, tid, fingerprint, extra)| Request {
            method,
            auth,
            tid,
            fingerprint,
            extra,
        },
    )
}

fn datagram() -> impl Strategy<Value = Datagram> {
    prop_oneof![
        6 => request().prop_map(Datagram::Request),
        2 => (peer(), any::<u16>(), prop::bool::weighted(0.1), any::<bool>(), any::<u8>())
            .prop_map(|(peer, len, dont_fragment, fingerprint, tid)| Datagram::Send {
                peer,
                len,
                dont_fragment,
                fingerprint,
                tid,
            }),
        3 => (channel(), any::<u16>(), any::<u8>(), prop::bool::weighted(0.1)).prop_map(
            |(channel, len, padding, bad_length)| Datagram::ChannelData {
                channel,
                len,
                padding,
                bad_length,
            }
        ),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Datagram::Raw),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let timers = prop_oneof![
        3 => Just(TimerMode::WhenDue),
        1 => Just(TimerMode::Always),
        1 => Just(TimerMode::Never),
    ];
    let open = prop_oneof![
        6 => Just(OpenResult::Ok),
        1 => Just(OpenResult::AddressInUse),
        1 => Just(OpenResult::Other),
    ];
    prop_oneof![
        10 => (mostly_small(2), datagram())
            .prop_map(|(client, datagram)| Op::Client { client, datagram }),
        4 => (mostly_small(3), peer(), any::<u16>(), prop::bool::weighted(0.1)).prop_map(
            |(relay, peer, len, short_buffer)| Op::Peer {
                relay,
                peer,
                len,
                short_buffer,
            }
        ),
        2 => open.prop_map(Op::RelayOpened),
        2 => (prop_oneof![6 => 0u16..30, 1 => 0u16..700], any::<u16>(), timers)
            .prop_map(|(secs, millis, timers)| Op::Advance { secs, millis, timers }),
    ]
}

fn scenario(max_ops: usize) -> impl Strategy<Value = Scenario> {
    (
        any::<u8>(),
        any::<bool>(),
        prop::collection::vec(op(), 1..max_ops),
    )
        .prop_map(|(seed, deferred_opens, ops)| Scenario {
            seed,
            deferred_opens,
            ops,
        })
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any sequence of inputs: no panic, invariants after every input, everything freed at
    /// the end (the harness asserts all of it).
    #[test]
    fn invariants_hold_for_any_sequence_of_inputs(scenario in scenario(80)) {
        Driver::run(&scenario);
    }

    /// Without a valid MESSAGE-INTEGRITY nothing is created: the same scenarios, with every
    /// request's credentials broken in one of the ways an attacker can break them.
    #[test]
    fn unauthenticated_inputs_create_no_state(
        scenario in scenario(60),
        breakage in 0u8..4,
    ) {
        let mut driver = Driver::new(scenario.seed, scenario.deferred_opens);
        for op in &scenario.ops {
            let op = match op {
                Op::Client { client, datagram: Datagram::Request(request) } => {
                    let mut request = request.clone();
                    match breakage {
                        0 => request.auth.nonce = NonceMode::Omitted,
                        1 => request.auth.nonce = NonceMode::Garbage,
                        2 => request.auth.corrupt = true,
                        _ => request.auth.secret = 2, // a secret the server does not know
                    }
                    Op::Client { client: *client, datagram: Datagram::Request(request) }
                }
                other => other.clone(),
            };
            driver.step(&op);
            prop_assert_eq!(driver.server.footprint(), Footprint::default());
        }
        prop_assert_eq!(driver.stats.allocations, 0);
        driver.finish();
    }
}

/// Deferred relay-socket completions, as an asynchronous driver would deliver them: a late
/// completion for a gone allocation must not reach the next one in its slot.
#[test]
fn invariants_hold_with_deferred_relay_socket_completions() {
    let mut runner = proptest::test_runner::TestRunner::new(config(4096));
    let result = runner.run(&scenario(80), |scenario| {
        let mut driver = Driver::new(scenario.seed, true);
        for op in &scenario.ops {
            driver.step(op);
        }
        driver.finish();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The generator is not vacuous: over a fixed batch, scenarios allocate, bind channels,
/// install permissions, relay both ways, get refused by the policy and hit the 508 quota.
#[test]
fn generated_scenarios_exercise_the_core() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(config(1));
    let mut total = core_driver::Stats::default();
    for _ in 0..200 {
        let scenario = scenario(80)
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("{e}"))
            .current();
        let s = Driver::run(&scenario);
        total.allocations += s.allocations;
        total.channel_binds += s.channel_binds;
        total.permissions += s.permissions;
        total.forwards += s.forwards;
        total.delivers += s.delivers;
        total.refreshes_to_zero += s.refreshes_to_zero;
        for (code, n) in s.errors {
            *total.errors.entry(code).or_default() += n;
        }
    }
    assert!(total.allocations > 50, "{total:?}");
    assert!(total.channel_binds > 5, "{total:?}");
    assert!(total.permissions > 5, "{total:?}");
    assert!(total.forwards > 0, "{total:?}");
    assert!(total.delivers > 5, "{total:?}");
    assert!(total.refreshes_to_zero > 0, "{total:?}");
    for code in [400, 401, 403, 437, 438, 508] {
        assert!(total.errors.contains_key(&code), "no {code}: {total:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The peer-address policy
// ---------------------------------------------------------------------------------------

mod policy {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;
    use relay::core::{Cidr, PeerPolicy, PeerUse};

    /// The IPv6 forms that carry `v4` (mapped, NAT64 well-known prefix, 6to4 with any
    /// subnet and interface bits).
    fn carriers(v4: Ipv4Addr, low: u128) -> [Ipv6Addr; 3] {
        let bits = u128::from(u32::from(v4));
        [
            Ipv6Addr::from((0xffff << 32) | bits),
            Ipv6Addr::from((0x64_ff9b_u128 << 96) | bits),
            Ipv6Addr::from((0x2002_u128 << 112) | (bits << 80) | (low & ((1 << 80) - 1))),
        ]
    }

    fn policy(allow: &[Cidr], deny: &[Cidr]) -> PeerPolicy {
        let own = vec![IpAddr::from([203, 0, 113, 10]), IpAddr::from([8, 8, 4, 4])];
        PeerPolicy::new(false, allow.to_vec(), deny.to_vec(), own, 50000..=50099)
    }

    fn cidr4() -> impl Strategy<Value = Cidr> {
        (any::<u32>(), 0u8..=32).prop_map(|(addr, len)| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Cidr::new(IpAddr::V4(Ipv4Addr::from(addr & mask)), len)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    }

    proptest! {
        #![proptest_config(super::config(2048))]

        /// An IPv6 address carrying an IPv4 one gets the IPv4 address's verdict, whatever
        /// the operator's IPv4 rules, for every use and port.
        #[test]
        fn embedded_ipv4_forms_share_the_ipv4_verdict(
            v4 in any::<u32>(),
            low in any::<u128>(),
            port in any::<u16>(),
            allow in prop::collection::vec(cidr4(), 0..4),
            deny in prop::collection::vec(cidr4(), 0..4),
        ) {
            let policy = policy(&allow, &deny);
            let v4 = Ipv4Addr::from(v4);
            for usage in [PeerUse::Permission, PeerUse::ChannelOrSend] {
                let verdict = policy.allows(SocketAddr::new(v4.into(), port), usage);
                for form in carriers(v4, low) {
                    prop_assert_eq!(
                        policy.allows(SocketAddr::new(form.into(), port), usage),
                        verdict,
                        "{} carrying {} ({:?})", form, v4, usage
                    );
                }
            }
        }

        /// IPv4-translated `::ffff:0:0:0/96` and the rest of `::/8` are denied whatever the
        /// IPv4 address inside and the operator's IPv4 rules; IPv4-mapped forms keep the
        /// IPv4 verdict (the property above).
        #[test]
        fn ipv4_translated_and_the_rest_of_colon_colon_slash_8_are_denied(
            v4 in any::<u32>(),
            rest in any::<u128>(),
            port in any::<u16>(),
            allow in prop::collection::vec(cidr4(), 0..4),
        ) {
            let policy = policy(&allow, &[]);
            let translated = Ipv6Addr::from((0xffff_u128 << 48) | u128::from(v4));
            let reserved = rest & ((1u128 << 120) - 1);
            // The carriers inside ::/8 (IPv4-mapped, NAT64's 64:ff9b::/96) are judged by IPv4.
            let carrier = reserved >> 32;
            let mapped = carrier == 0xffff || carrier == 0x64_ff9b << 64;
            for usage in [PeerUse::Permission, PeerUse::ChannelOrSend] {
                prop_assert!(!policy.allows(SocketAddr::new(translated.into(), port), usage));
                if !mapped {
                    let addr = Ipv6Addr::from(reserved);
                    prop_assert!(!policy.allows(SocketAddr::new(addr.into(), port), usage), "{}", addr);
                }
            }
        }

        /// Port 0 is never a peer for ChannelBind or Send; a permission ignores the port.
        #[test]
        fn port_zero_and_permissions(ip in any::<[u8; 16]>(), v6 in any::<bool>(), port in 1u16..) {
            let policy = policy(&[], &[]);
            let ip = if v6 {
                IpAddr::from(ip)
            } else {
                IpAddr::from([ip[0], ip[1], ip[2], ip[3]])
            };
            prop_assert!(!policy.allows(SocketAddr::new(ip, 0), PeerUse::ChannelOrSend));
            prop_assert_eq!(
                policy.allows(SocketAddr::new(ip, 0), PeerUse::Permission),
                policy.allows(SocketAddr::new(ip, port), PeerUse::Permission)
            );
        }

        /// A host rule of the operator decides for that host; deny wins a tie.
        #[test]
        fn exact_operator_rules_decide(addr in any::<u32>(), port in 1u16.., both in any::<bool>()) {
            let host = Cidr::new(IpAddr::V4(Ipv4Addr::from(addr)), 32)
                .unwrap_or_else(|e| panic!("{e}"));
            let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(addr)), port);
            let allowed = policy(&[host], &[]);
            prop_assert!(allowed.allows(peer, PeerUse::ChannelOrSend));
            let denied = if both { policy(&[host], &[host]) } else { policy(&[], &[host]) };
            prop_assert!(!denied.allows(peer, PeerUse::ChannelOrSend));
            prop_assert!(!denied.allows(peer, PeerUse::Permission));
        }
    }
}
