//! Allocate (RFC 8656 §7): the success response, lifetimes, transports, address families
//! (RFC 8656 §7.1 and §7.2, dual stack), DONT-FRAGMENT.

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 3. Allocate
// ---------------------------------------------------------------------------------------

/// RFC 8656 §7.2: "The success response contains: An XOR-RELAYED-ADDRESS attribute [...] A
/// LIFETIME attribute containing the current value of the time-to-expiry timer [...] An
/// XOR-MAPPED-ADDRESS attribute containing the client's IP address and port (from the
/// 5-tuple)", signed (RFC 8489 §9.2.4), FINGERPRINT mirrored.
#[test]
fn allocate_success_has_exact_attributes_and_signed_response() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    assert_eq!(
        a.response.types(),
        vec![
            t::XOR_RELAYED_ADDRESS,
            t::LIFETIME,
            t::XOR_MAPPED_ADDRESS,
            t::MESSAGE_INTEGRITY
        ]
    );
    assert_eq!(lifetime_of(&a.response), 600);
    assert_eq!(a.relayed, SocketAddr::new(relay_public(), a.port));
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    assert_eq!(h.server.counters().allocations_created, 1);
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));

    // With FINGERPRINT, the (deferred) success carries it after MESSAGE-INTEGRITY.
    let d = h.client("198.51.100.2:40000", "bob");
    let a = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .fingerprint(),
    );
    assert_eq!(
        a.response.types(),
        vec![
            t::XOR_RELAYED_ADDRESS,
            t::LIFETIME,
            t::XOR_MAPPED_ADDRESS,
            t::MESSAGE_INTEGRITY,
            t::FINGERPRINT
        ]
    );
    assert!(a.response.has_fingerprint());
}

/// RFC 8656 §7.2: "If the request contains a LIFETIME attribute, then the server computes the
/// minimum of the client's proposed lifetime and the server's maximum allowed lifetime. If this
/// computed value is greater than the default lifetime, then the server uses the computed
/// lifetime [...]. Otherwise, the server uses the default lifetime." Default 600 s, maximum 3600.
#[test]
fn allocate_lifetime_is_floored_at_default_and_capped() {
    let mut h = Harness::new();
    for (i, (requested, granted)) in [(1200, 1200), (99_999, 3600), (10, 600), (600, 600)]
        .into_iter()
        .enumerate()
    {
        let c = h.client(&format!("198.51.100.{}:40000", i + 1), "alice");
        let a = h.allocate_with(
            &c,
            c.req(ALLOCATE)
                .attr(RequestedTransport::new(UDP))
                .attr(Lifetime::from_u32(requested)),
        );
        assert_eq!(lifetime_of(&a.response), granted, "requested {requested}");
    }
    // An allocation given 1200 s outlives the default one.
    h.set_time(600);
    // Relay sockets 1..=4 went to the allocations granted 1200, 3600, 600 and 600 s.
    let outputs = h.timeout();
    assert_same_outputs_any_order(
        &outputs,
        &[Seen::close(RelayId(3)), Seen::close(RelayId(4))],
    );
    assert_eq!(h.server.allocation_count(), 2);
    h.set_time(1200);
    assert_eq!(seen(&h.timeout()), [Seen::close(RelayId(1))]);
    h.set_time(3600);
    assert_eq!(seen(&h.timeout()), [Seen::close(RelayId(2))]);
    assert_eq!(h.server.allocation_count(), 0);
}

/// RFC 8656 §7.2 item 3: "If the REQUESTED-TRANSPORT attribute is not included or is malformed,
/// the server rejects the request with a 400 (Bad Request) error. Otherwise, if the attribute is
/// included but specifies a protocol that is not supported by the server, the server rejects
/// the request with a 442 (Unsupported Transport Protocol) error."
#[test]
fn allocate_rejects_missing_or_unsupported_transport() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let r = h.fails(&c, c.req(ALLOCATE), 400);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    let r = h.fails(&c, c.req(ALLOCATE).attr(RequestedTransport::new(6)), 442);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    h.allocate(&c);
}

/// RFC 8656 §7.2 item 2: "The server checks if the 5-tuple is currently in use by an existing
/// allocation. If yes, the server rejects the request with a 437 (Allocation Mismatch) error."
/// A retransmission of the Allocate that created it (same transaction ID) gets the same answer.
#[test]
fn allocate_retransmission_gets_the_same_bytes_and_new_transaction_gets_437() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let tid = h.tid();
    let req = c
        .req(ALLOCATE)
        .attr(RequestedTransport::new(UDP))
        .fingerprint()
        .tid(tid);
    let a = h.allocate_with(&c, req.clone());
    h.set_time(2);
    let again = h.call(c.addr, req);
    assert_eq!(
        again.bytes, a.response.bytes,
        "byte-identical retransmission"
    );
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    let r = h.fails(&c, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)), 437);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.allocation_count(), 1);
}

/// RFC 8656 §7.2 item 7: "If the server does not support the address family requested by the
/// client in REQUESTED-ADDRESS-FAMILY [...] it MUST generate an Allocate error response [...]
/// with the 440 (Address Family not Supported) response code."
#[test]
fn allocate_address_family_checks() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V6)),
        440,
    );
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
        440,
    );
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V4))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
        400,
    );
    assert_eq!(h.server.allocation_count(), 0);
    // Asking for IPv4 explicitly works.
    h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V4)),
    );
}

/// RFC 8656 §7.2 item 9: "If the server can fully meet the request, then the server allocates
/// one IPv4 and one IPv6 relay address and returns an Allocate success response containing the
/// relayed transport addresses assigned to the dual allocation in two XOR-RELAYED-ADDRESS
/// attributes."
#[test]
fn dual_stack_allocate_opens_both_families() {
    let mut h = Harness::with_config(config_v6());
    let c = h.client("198.51.100.1:40000", "alice");
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [
            Seen::open(V4),
            Seen::open(V6),
            Seen::success(c.addr, ALLOCATE)
        ]
    );
    let (
        Output::OpenRelay {
            family: Family::V4,
            addr: v4,
            ..
        },
        Output::OpenRelay {
            family: Family::V6,
            addr: v6,
            ..
        },
    ) = (&outputs[0], &outputs[1])
    else {
        panic!("{outputs:?}");
    };
    assert_eq!(v4.ip(), relay_bind());
    assert_eq!(v6.ip(), relay_bind_v6());
    let r = to_client(&outputs[2], c.addr);
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(
        r.types(),
        vec![
            t::XOR_RELAYED_ADDRESS,
            t::XOR_RELAYED_ADDRESS,
            t::LIFETIME,
            t::XOR_MAPPED_ADDRESS,
            t::MESSAGE_INTEGRITY
        ]
    );
    let relayed: Vec<SocketAddr> = r
        .message
        .attributes()
        .filter_map(|a| match a {
            Attribute::XorRelayAddress(x) => Some(x.address()),
            _ => None,
        })
        .collect();
    assert_eq!(
        relayed,
        vec![
            SocketAddr::new(relay_public(), v4.port()),
            SocketAddr::new(relay_public_v6(), v6.port())
        ]
    );
    assert_eq!(h.server.ports_in_use(), [1, 1]);

    // Only IPv6, through REQUESTED-ADDRESS-FAMILY.
    let d = h.client("198.51.100.2:40000", "bob");
    h.send(
        d.addr,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V6)),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::open(V6), Seen::success(d.addr, ALLOCATE)]
    );
    let r = to_client(&outputs[1], d.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(h.server.ports_in_use(), [1, 2]);
}

/// RFC 8656 §7.2 item 9: "If the server cannot satisfy the request, then the server rejects the
/// request with a 508 (Insufficient Capacity) error"; the socket of the other family is closed.
#[test]
fn dual_stack_allocate_failing_one_family_closes_the_other() {
    let mut h = Harness::with_config(config_v6());
    let c = h.client("198.51.100.1:40000", "alice");
    h.script = VecDeque::from([OpenAnswer::Ok, OpenAnswer::Err(OpenError::Other)]);
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [
            Seen::open(V4),
            Seen::open(V6),
            Seen::close(RelayId(1)),
            Seen::error(c.addr, ALLOCATE, 508)
        ]
    );
    let r = to_client(&outputs[3], c.addr);
    assert_eq!(r.error_code(), Some(508));
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
}

/// RFC 8656 §7.2 item 4: DONT-FRAGMENT is an unknown comprehension-required attribute only
/// "if [...] the server does not support sending UDP datagrams with the DF bit set to 1"; we
/// do, so the relay socket is opened with DF.
#[test]
fn dont_fragment_opens_a_df_relay_socket() {
    // DONT-FRAGMENT is supported (DF on the relay socket), so it is not a 420.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(DontFragment),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::open_df(V4), Seen::success(c.addr, ALLOCATE)]
    );
    let r = to_client(&outputs[1], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert!(r.integrity_valid(&c.key()));
    // Without it, no DF.
    let d = h.client("198.51.100.2:40000", "bob");
    h.send(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::open(V4), Seen::success(d.addr, ALLOCATE)]
    );
}

/// RFC 8656 §11.2: "If the server is unable to set the DF bit on outgoing UDP datagrams when
/// this attribute is present, then the server acts as if the DONT-FRAGMENT attribute is an
/// unknown comprehension-required attribute" (an indication is then dropped).
#[test]
fn send_with_dont_fragment_needs_a_df_allocation() {
    let mut h = Harness::new();
    let peer = addr("8.8.8.11:5555");
    let send = || {
        Req::indication(SEND)
            .attr(XorPeerAddress::new(peer))
            .attr(Data::new(b"df".to_vec()).unwrap())
            .attr(DontFragment)
    };
    // Without DF on the socket: dropped (RFC 8656 §10.2).
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    h.create_permission(&c, &[peer]);
    let (_, forward) = h.send(c.addr, send());
    assert_eq!(forward, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().send_dropped, 1);
    // With DF on the socket: forwarded.
    let d = h.client("198.51.100.2:40000", "bob");
    let a = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(DontFragment),
    );
    h.create_permission(&d, &[peer]);
    let (bytes, forward) = h.send(d.addr, send());
    h.expect_nothing();
    let forward = forward.expect("forwarded");
    assert_eq!(forward.relay, a.relay);
    assert_eq!(&bytes[forward.payload], b"df");
}

/// RFC 8656 §7.2 item 9 and §11.3: a dual allocation relays to IPv4 peers through its IPv4
/// address and to IPv6 peers through its IPv6 address; a Data indication carries the peer in
/// XOR-PEER-ADDRESS and the payload in DATA.
#[test]
fn dual_stack_relays_ipv6_peers() {
    let mut h = Harness::with_config(config_v6());
    let c = h.client("198.51.100.1:40000", "alice");
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [
            Seen::open(V4),
            Seen::open(V6),
            Seen::success(c.addr, ALLOCATE)
        ]
    );
    let Output::OpenRelay { allocation, .. } = outputs[0] else {
        unreachable!("checked above");
    };
    let (v4_relay, v6_relay) = (RelayId(1), RelayId(2));
    let p4 = addr("8.8.8.8:53");
    let p6 = addr("[2606:4700:4700::1111]:53");
    h.create_permission(&c, &[p4, p6]);
    h.channel_bind(&c, 0x4000, p4);
    h.channel_bind(&c, 0x4001, p6);
    assert_eq!(
        h.channel_data(c.addr, 0x4000, b"four"),
        Some(Forward {
            relay: v4_relay,
            peer: p4,
            payload: 4..8
        })
    );
    assert_eq!(
        h.channel_data(c.addr, 0x4001, b"six"),
        Some(Forward {
            relay: v6_relay,
            peer: p6,
            payload: 4..7
        })
    );
    // A Data indication for an IPv6 peer uses all of the headroom.
    let other6 = addr("[2606:4700:4700::1111]:54");
    let (deliver, frame) = h.peer(allocation, other6, b"hello").unwrap();
    assert_eq!(deliver.frame, 0..HEADROOM + 5 + 3);
    assert_eq!(frame[frame.len() - 3..], [0, 0, 0], "zero padding");
    let message = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(&frame)
        .unwrap()
        .unwrap();
    assert_eq!(
        message.get_attribute::<XorPeerAddress>().unwrap().address(),
        other6
    );
    assert_eq!(message.get_attribute::<Data>().unwrap().data(), b"hello");

    // The largest IPv6 UDP payload (65527 B) does not fit a Data indication for an IPv6 peer
    // (28 bytes of attributes headers and address on top): dropped and counted, not truncated.
    assert!(h.peer(allocation, other6, &vec![0x55; 65527]).is_none());
    assert_eq!(h.server.counters().peer_too_large, 1);
    // The largest that fits: 28 + 65504 = 65532, no padding needed.
    let (deliver, _) = h.peer(allocation, other6, &vec![0x55; 65504]).unwrap();
    assert_eq!(deliver.frame, 0..HEADROOM + 65504);
    assert_eq!(h.server.counters().peer_too_large, 1);
}

/// RFC 8656 §7.2 item 6: both REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY is a 400;
/// item 9: ADDITIONAL-ADDRESS-FAMILY of "0x01 (IPv4 address family)" is a 400.
#[test]
fn address_family_attribute_combinations() {
    let mut h = Harness::with_config(config_v6());
    let c = h.client("198.51.100.1:40000", "alice");
    // ADDITIONAL-ADDRESS-FAMILY may only add IPv6.
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V4)),
        400,
    );
    // A reservation is for one family.
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6))
            .attr(EvenPort::new(true)),
        400,
    );
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    let token = a.response.get::<ReservationToken>().unwrap().token();
    let d = h.client("198.51.100.2:40000", "bob");
    h.fails(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V6))
            .attr(ReservationToken::new(token)),
        400,
    );
    // The reservation survived the refusal.
    let b = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
    );
    assert_eq!(b.port, a.port + 1);
}
