//! Channels (RFC 8656 §12): ChannelBind, ChannelData from the client, and peer data to
//! the client over a channel or as a Data indication (§11.6, §12.7).

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 6. ChannelBind and ChannelData from the client
// ---------------------------------------------------------------------------------------

/// RFC 8656 §12.6: "On the server, if no errors are detected, the server relays the
/// application data to the peer": from the relayed address to the bound peer, the data of the
/// ChannelData message.
#[test]
fn channel_bind_then_channel_data_is_forwarded() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peer = addr("8.8.8.9:7000");
    h.channel_bind(&c, 0x4000, peer);
    assert_eq!(
        h.channel_data(c.addr, 0x4000, b"hello"),
        Some(forward_to(&a, peer, 4..9))
    );
    // The highest number works too.
    let peer2 = addr("8.8.8.9:7001");
    h.channel_bind(&c, 0x4FFF, peer2);
    assert_eq!(
        h.channel_data(c.addr, 0x4FFF, b""),
        Some(forward_to(&a, peer2, 4..4))
    );
    // Frames without padding are accepted over UDP, too.
    let mut frame = channel_data_frame(0x4000, b"abc");
    frame.truncate(7);
    assert_eq!(
        h.send_bytes(c.addr, &frame),
        Some(forward_to(&a, peer, 4..7))
    );
    h.expect_nothing();
    let counters = h.server.counters();
    assert_eq!(counters.relayed_to_peer_packets, 3);
    assert_eq!(counters.relayed_to_peer_bytes, 8);
}

/// RFC 8656 §12.2: the server checks that "The channel number is in the range 0x4000 through
/// 0x4FFF (inclusive)"; "If any of these tests fail, the server replies with a 400 (Bad
/// Request) error."
#[test]
fn channel_numbers_out_of_range_get_400() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let peer = XorPeerAddress::new(addr("8.8.8.9:7000"));
    for number in [0x0000u16, 0x3FFF, 0x5000, 0x7FFF, 0xFFFF] {
        let mut value = number.to_be_bytes().to_vec();
        value.extend_from_slice(&[0, 0]);
        let r = h.call(
            c.addr,
            c.req(CHANNEL_BIND)
                .attr(peer.clone())
                .raw(t::CHANNEL_NUMBER, &value),
        );
        assert_eq!(r.error_code(), Some(400), "{number:#06x}");
        // stun_codec refuses the attribute, but MESSAGE-INTEGRITY is verified on the raw
        // bytes first (RFC 8489 §9.2.4): the 400 is signed.
        assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
        assert!(r.integrity_valid(&c.key()), "{number:#06x}");
    }
    assert_eq!(h.server.allocation_count(), 1);
}

/// RFC 8656 §12.2: "The channel number is not currently bound to a different transport address
/// (same transport address is OK); The transport address is not currently bound to a different
/// channel number." Otherwise 400; rebinding the same pair refreshes (§12.1).
#[test]
fn channel_bind_conflicts_and_refresh() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let p1 = addr("8.8.8.9:7000");
    let p2 = addr("8.8.8.10:7000");
    h.channel_bind(&c, 0x4001, p1);
    // The number is bound to another peer.
    let r = h.fails(&c, Harness::channel_bind_req(&c, 0x4001, p2), 400);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // The peer is bound to another number (same IP, same port).
    h.fails(&c, Harness::channel_bind_req(&c, 0x4002, p1), 400);
    // Another port of the same IP is another peer.
    h.channel_bind(&c, 0x4002, addr("8.8.8.9:7001"));

    // Keep the allocation alive, and re-bind the same pair at 500 s.
    h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));
    h.set_time(500);
    h.channel_bind(&c, 0x4001, p1);
    h.set_time(899);
    assert_eq!(
        h.channel_data(c.addr, 0x4001, b"x"),
        Some(forward_to(&a, p1, 4..5))
    );
    // The binding made at 0 s is gone at 600 s.
    assert_eq!(h.channel_data(c.addr, 0x4002, b"x"), None);
    h.set_time(1099);
    assert!(h.channel_data(c.addr, 0x4001, b"x").is_some());
    h.set_time(1100);
    assert_eq!(h.channel_data(c.addr, 0x4001, b"x"), None);
    assert_eq!(h.server.counters().channel_data_unbound, 2);
}

/// RFC 8656 §12.2: a ChannelBind needs an allocation (437) and a peer of the allocation's
/// family (443); "The server MAY impose restrictions on the IP address and port values allowed
/// in the XOR-PEER-ADDRESS attribute" (403: loopback by default, port 0).
#[test]
fn channel_bind_refusals() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    // No allocation.
    h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("8.8.8.9:1")),
        437,
    );
    h.allocate(&c);
    // IPv6 peer on an IPv4 allocation.
    let r = h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("[2001:db8::9]:1")),
        443,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // Loopback peers are refused unless allowed; port 0 is no peer for a channel.
    let r = h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("127.0.0.1:5000")),
        403,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("8.8.8.9:0")),
        403,
    );
    // Missing XOR-PEER-ADDRESS or CHANNEL-NUMBER.
    h.fails(
        &c,
        c.req(CHANNEL_BIND)
            .attr(ChannelNumber::new(0x4000).unwrap()),
        400,
    );
    h.fails(
        &c,
        c.req(CHANNEL_BIND)
            .attr(XorPeerAddress::new(addr("8.8.8.9:1"))),
        400,
    );
    // None of that bound anything.
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.server.counters().channel_data_unbound, 1);
}

/// RFC 8656 §12.2: "The server MAY impose restrictions on the IP address and port values
/// allowed": loopback peers are refused by default and allowed with `--allow-loopback-peers`.
#[test]
fn loopback_peers_are_allowed_when_configured() {
    let mut h = Harness::with_config(Config {
        allow_loopback_peers: true,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peer = addr("127.0.0.1:5000");
    h.channel_bind(&c, 0x4000, peer);
    assert_eq!(
        h.channel_data(c.addr, 0x4000, b"x"),
        Some(forward_to(&a, peer, 4..5))
    );
}

// ---------------------------------------------------------------------------------------
// 7. Peer → client
// ---------------------------------------------------------------------------------------

/// RFC 8656 §9: without a permission "the server silently discards the UDP datagram"; §12.5:
/// the server "MUST use the ChannelData message if a channel has been bound to the peer"; §11.3:
/// otherwise it "forms and sends a Data indication".
#[test]
fn peer_datagrams_go_through_channel_or_data_indication_or_are_dropped() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let stranger = addr("8.8.8.50:9");
    assert!(h.peer(a.id, stranger, b"who").is_none());
    assert_eq!(h.server.counters().peer_no_permission, 1);

    // Channel: 4-byte ChannelData header in the headroom, no padding.
    let peer = addr("8.8.8.9:7000");
    h.channel_bind(&c, 0x4123, peer);
    let (deliver, frame) = h.peer(a.id, peer, b"hello").unwrap();
    assert_eq!(deliver.transport, relay::core::Transport::Udp(LISTENER));
    assert_eq!(deliver.client, c.addr);
    assert_eq!(deliver.frame, HEADROOM - 4..HEADROOM + 5);
    assert_eq!(
        frame,
        [0x41, 0x23, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']
    );

    // Same IP, other port: permitted (permissions are per IP), but not the channel's peer:
    // a Data indication.
    let other_port = addr("8.8.8.9:7001");
    let payload = b"abcde";
    let (deliver, frame) = h.peer(a.id, other_port, payload).unwrap();
    assert_eq!(deliver.client, c.addr);
    assert_eq!(deliver.frame.end, HEADROOM + payload.len() + 3);
    let message = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(&frame)
        .unwrap()
        .unwrap();
    assert_eq!(message.class(), MessageClass::Indication);
    assert_eq!(message.method(), DATA);
    let raw = stun_client::raw_attributes(&frame);
    assert_eq!(
        raw.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![t::XOR_PEER_ADDRESS, t::DATA]
    );
    assert_eq!(
        message.get_attribute::<XorPeerAddress>().unwrap().address(),
        other_port
    );
    assert_eq!(message.get_attribute::<Data>().unwrap().data(), payload);

    // Permission through CreatePermission, no channel: Data indication too.
    let p3 = addr("8.8.8.77:4444");
    h.create_permission(&c, &[p3]);
    let (_, frame) = h.peer(a.id, p3, b"1234").unwrap();
    let message = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(&frame)
        .unwrap()
        .unwrap();
    assert_eq!(
        message.get_attribute::<XorPeerAddress>().unwrap().address(),
        p3
    );
    assert_eq!(message.get_attribute::<Data>().unwrap().data(), b"1234");
    // Two indications, two different transaction IDs.
    let (_, again) = h.peer(a.id, p3, b"1234").unwrap();
    assert_ne!(frame[8..20], again[8..20]);

    let counters = h.server.counters().clone();
    assert_eq!(counters.peer_no_permission, 1);
    assert_eq!(counters.relayed_to_client_packets, 4);
    assert_eq!(counters.relayed_to_client_bytes, 5 + 5 + 4 + 4);
}

/// RFC 8656 §12.6: "If the ChannelData message is received on a channel that is not bound to
/// any peer, then the message is silently discarded" (counted, DESIGN convention 5).
#[test]
fn channel_data_without_binding_or_allocation_is_counted() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.server.counters().channel_data_no_allocation, 1);
    h.allocate(&c);
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.server.counters().channel_data_unbound, 1);
    // Another 5-tuple (port) of the same host has no allocation.
    assert_eq!(
        h.channel_data(addr("198.51.100.1:40001"), 0x4000, b"x"),
        None
    );
    assert_eq!(h.server.counters().channel_data_no_allocation, 2);
    // A ChannelData frame whose length runs past the datagram is malformed.
    let mut frame = channel_data_frame(0x4000, b"abcd");
    frame.truncate(6);
    assert_eq!(h.send_bytes(c.addr, &frame), None);
    h.expect_nothing();
    assert_eq!(h.server.counters().malformed, 1);
}
