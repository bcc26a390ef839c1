//! Permissions (RFC 8656 §9): CreatePermission, Send indications (§11), and the bounds
//! on permissions and channels per allocation.

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 11. CreatePermission and Send
// ---------------------------------------------------------------------------------------

/// RFC 8656 §10.2: the server "installs or refreshes a permission for the IP address contained
/// in each XOR-PEER-ADDRESS attribute [...] The port portion of each attribute is ignored";
/// one refused peer (403, 443) refuses the whole request and installs nothing; no peer is 400,
/// no allocation 437.
#[test]
fn create_permission_installs_all_or_none() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let p1 = addr("8.8.8.11:1");
    let p2 = addr("8.8.8.12:1");
    let p3 = addr("8.8.8.13:1");
    // Port 0 is fine for a permission (only the IP counts).
    h.create_permission(&c, &[p1, addr("8.8.8.12:0")]);
    assert!(h.peer(a.id, p1, b"x").is_some());
    assert!(h.peer(a.id, p2, b"x").is_some());

    // One forbidden peer: 403 and nothing installed.
    let r = h.fails(
        &c,
        c.req(CREATE_PERMISSION)
            .attr(XorPeerAddress::new(p3))
            .attr(XorPeerAddress::new(addr("127.0.0.1:1"))),
        403,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert!(h.peer(a.id, p3, b"x").is_none());
    for forbidden in ["0.0.0.0:1", "224.0.0.1:1", "255.255.255.255:1"] {
        h.fails(
            &c,
            c.req(CREATE_PERMISSION)
                .attr(XorPeerAddress::new(p3))
                .attr(XorPeerAddress::new(addr(forbidden))),
            403,
        );
    }
    // IPv6 peer on IPv4 allocation: 443, nothing installed.
    h.fails(
        &c,
        c.req(CREATE_PERMISSION)
            .attr(XorPeerAddress::new(p3))
            .attr(XorPeerAddress::new(addr("[2001:db8::1]:1"))),
        443,
    );
    assert!(h.peer(a.id, p3, b"x").is_none());
    // No peer at all.
    let r = h.fails(&c, c.req(CREATE_PERMISSION), 400);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // No allocation.
    let d = h.client("198.51.100.2:40000", "bob");
    h.fails(
        &d,
        d.req(CREATE_PERMISSION).attr(XorPeerAddress::new(p3)),
        437,
    );
}

/// RFC 8656 §11.2: "The server also checks that there is a permission installed for the IP
/// address contained in the XOR-PEER-ADDRESS attribute"; otherwise the indication is silently
/// discarded. §11.1: a permission "prevents a third party from using a TURN server to send data
/// to arbitrary destinations."
#[test]
fn send_indication_is_forwarded_with_permission_only() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peer = addr("8.8.8.11:5555");
    let send = |payload: &[u8]| {
        Req::indication(SEND)
            .attr(XorPeerAddress::new(peer))
            .attr(Data::new(payload.to_vec()).unwrap())
    };
    let (_, forward) = h.send(c.addr, send(b"early"));
    assert_eq!(forward, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().send_dropped, 1);

    h.create_permission(&c, &[addr("8.8.8.11:0")]);
    let (bytes, forward) = h.send(c.addr, send(b"hello"));
    h.expect_nothing();
    let forward = forward.expect("forwarded");
    assert_eq!(forward.relay, a.relay);
    assert_eq!(forward.peer, peer);
    assert_eq!(&bytes[forward.payload.clone()], b"hello");
    // With FINGERPRINT, too.
    let (bytes, forward) = h.send(c.addr, send(b"fp").fingerprint());
    h.expect_nothing();
    assert_eq!(&bytes[forward.unwrap().payload], b"fp");

    // Without DATA, to a port-0 peer, from another 5-tuple: dropped and counted.
    let (_, f) = h.send(
        c.addr,
        Req::indication(SEND).attr(XorPeerAddress::new(peer)),
    );
    assert_eq!(f, None);
    let (_, f) = h.send(
        c.addr,
        Req::indication(SEND)
            .attr(XorPeerAddress::new(addr("8.8.8.11:0")))
            .attr(Data::new(b"x".to_vec()).unwrap()),
    );
    assert_eq!(f, None);
    let (_, f) = h.send(addr("198.51.100.1:40001"), send(b"x"));
    assert_eq!(f, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().send_dropped, 4);
    assert_eq!(h.server.counters().relayed_to_peer_packets, 2);
}

// ---------------------------------------------------------------------------------------
// Beyond the list: bounds, quotas, rate limits, IPv6 relaying, deferred socket opening
// ---------------------------------------------------------------------------------------

/// RFC 8656 §10.2 and §12.2: "If the request is valid, but the server is unable to fulfill the
/// request due to some capacity limit or similar, the server replies with a 508 (Insufficient
/// Capacity) error."
#[test]
fn permissions_and_channels_are_bounded_per_allocation() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let peers: Vec<SocketAddr> = (0..64u16)
        .map(|i| {
            SocketAddr::new(
                IpAddr::from([8, 8, (i / 200) as u8 + 4, (i % 200) as u8 + 1]),
                9,
            )
        })
        .collect();
    h.create_permission(&c, &peers);
    // Refreshing existing ones is fine; one more is not (and installs nothing).
    h.create_permission(&c, &peers[..3]);
    let extra = addr("9.9.9.9:9");
    h.fails(
        &c,
        c.req(CREATE_PERMISSION)
            .attr(XorPeerAddress::new(extra))
            .attr(XorPeerAddress::new(peers[0])),
        508,
    );
    // Channels to the permitted peers: 64 fit, the 65th does not.
    for (i, peer) in peers.iter().enumerate() {
        h.channel_bind(&c, 0x4000 + i as u16, *peer);
    }
    h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4FFF, addr("8.8.4.1:10")),
        508,
    );
}

/// `n` distinct, allowed IPv4 peers (8.8.x.y).
fn distinct_peers(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            SocketAddr::new(
                IpAddr::from([8, 8, (i / 200) as u8 + 4, (i % 200) as u8 + 1]),
                9,
            )
        })
        .collect()
}

fn create_permission_req(client: &Client, peers: &[SocketAddr]) -> Req {
    peers
        .iter()
        .fold(client.req(CREATE_PERMISSION), |req, peer| {
            req.attr(XorPeerAddress::new(*peer))
        })
}

/// RFC 8656 §10.2: a CreatePermission "MAY contain multiple" XOR-PEER-ADDRESS attributes, and
/// the server installs a permission for each; up to our cap of 64.
#[test]
fn create_permission_with_64_peers_installs_them_all() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    // At the cap: one response (exactly MESSAGE-INTEGRITY), 64 permissions installed.
    let peers = distinct_peers(64);
    h.create_permission(&c, &peers);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [64, 0]);
    for peer in [peers[0], peers[31], peers[63]] {
        assert!(h.peer(a.id, peer, b"x").is_some(), "{peer} permitted");
    }
    // 64 attributes naming one IP are one permission (deduplicated), refreshed in place.
    h.create_permission(&c, &[peers[5]; 64]);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [64, 0]);
    // At the cap, each peer is still judged: one forbidden peer among 64 is a 403.
    let mut with_forbidden = distinct_peers(63);
    with_forbidden.push(addr("127.0.0.1:1"));
    let r = h.fails(&c, create_permission_req(&c, &with_forbidden), 403);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
}

/// RFC 8656 §10.2: over a capacity limit the answer is 508 (Insufficient Capacity); project rule
/// (README): the 65th peer is refused before any peer is looked at.
#[test]
fn create_permission_past_64_peers_is_508_before_any_peer_is_judged() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peers = distinct_peers(65);
    // 65 allowed peers: 508, nothing installed.
    let r = h.fails(&c, create_permission_req(&c, &peers), 508);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [0, 0]);
    assert!(h.peer(a.id, peers[0], b"x").is_none());
    // The count decides, not the set: 65 attributes naming one IP are refused too.
    let r = h.fails(&c, create_permission_req(&c, &[peers[0]; 65]), 508);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // Refused before the peers are looked at: a forbidden peer or one of the wrong family
    // among 65 does not turn the answer into 403 or 443.
    let mut forbidden_first = vec![addr("127.0.0.1:1"), addr("[2001:db8::1]:1")];
    forbidden_first.extend(distinct_peers(63));
    h.fails(&c, create_permission_req(&c, &forbidden_first), 508);
    // As many XOR-PEER-ADDRESS as a datagram holds (5,400): past the attribute cap (128), a
    // 400 before any other work, unsigned (its integrity is not checked); nothing installed.
    let mut huge = distinct_peers(5_399);
    huge.push(addr("127.0.0.1:1"));
    let (bytes, forward) = h.send(c.addr, create_permission_req(&c, &huge));
    assert!(
        bytes.len() > 64_000 && bytes.len() < 65_507,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(forward, None);
    let r = h.expect_response(c.addr, CREATE_PERMISSION);
    assert_eq!(r.error_code(), Some(400), "{r:?}");
    assert_eq!(r.types(), vec![t::ERROR_CODE]);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [0, 0]);
    // The allocation is unharmed: 64 peers still fit.
    h.create_permission(&c, &peers[..64]);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [64, 0]);
}

/// RFC 8656 §9: "If a permission for that IP address already exists, then the time-to-expiry
/// for that permission is reset to Permission Lifetime"; §12: after a channel binding expires
/// the number and the peer stay reserved 5 minutes, and rebinding the same pair is allowed.
#[test]
fn permission_refresh_and_channel_rebind_during_the_hold() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peer = addr("8.8.8.40:1");
    h.create_permission(&c, &[peer]);
    h.set_time(200);
    h.create_permission(&c, &[peer]);
    h.set_time(499);
    assert!(h.peer(a.id, peer, b"x").is_some());
    h.set_time(500);
    assert!(h.peer(a.id, peer, b"x").is_none());

    // A channel's permission lapses before the channel does: the peer is then dropped
    // (RFC 8656 §12: the client must refresh the permission, by re-binding).
    let mut c = c;
    h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));
    h.set_time(550);
    let cp = addr("8.8.8.41:1");
    h.channel_bind(&c, 0x4100, cp);
    h.set_time(850);
    assert!(
        h.peer(a.id, cp, b"x").is_none(),
        "permission from the bind is over"
    );
    assert!(h.channel_data(c.addr, 0x4100, b"x").is_some());
    // Re-binding the same pair after expiry, during the hold, works.
    h.set_time(1150);
    assert_eq!(h.channel_data(c.addr, 0x4100, b"x"), None);
    h.renew(&mut c);
    h.channel_bind(&c, 0x4100, cp);
    let (_, frame) = h.peer(a.id, cp, b"x").unwrap();
    assert_eq!(frame, [0x41, 0x00, 0x00, 0x01, b'x']);
}
