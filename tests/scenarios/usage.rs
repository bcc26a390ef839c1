//! Usage records (issue 13): one per granted allocation when it ends, with its traffic both
//! ways counted exactly and the way it ended; none for an allocation that never started.
//! The records are a queue of their own (`poll_usage_record`), not outputs: the output lists
//! below are complete as everywhere else.

use relay::core::{ConnectionId, EndReason, Traffic, Transport, Usage, UsageRecord};

use crate::harness::*;
use crate::stream::allocate_on;

const PEER: &str = "8.8.8.9:7000";

/// Relays 4 datagrams (65 bytes) client -> peer and 2 (15 bytes) peer -> client, plus some
/// that are dropped and must not count.
fn traffic(h: &mut Harness, c: &Client, a: &Allocated) {
    let peer = addr(PEER);
    h.create_permission(c, &[peer]);
    h.channel_bind(c, 0x4000, peer);
    for len in [10, 20, 30] {
        assert!(h.channel_data(c.addr, 0x4000, &vec![1; len]).is_some());
    }
    let send = Req::indication(SEND)
        .attr(XorPeerAddress::new(peer))
        .attr(Data::new(vec![2; 5]).unwrap());
    let (_, forward) = h.send(c.addr, send);
    assert!(forward.is_some());
    h.expect_nothing();
    assert!(h.peer(a.id, peer, &[3; 7]).is_some());
    assert!(h.peer(a.id, peer, &[4; 8]).is_some());
    // Dropped: an unbound channel, a peer without permission.
    assert!(h.channel_data(c.addr, 0x4001, b"zz").is_none());
    assert!(h.peer(a.id, addr("8.8.4.4:7000"), &[5; 9]).is_none());
}

const USAGE: Usage = Usage {
    client_to_peer: Traffic {
        packets: 4,
        bytes: 65,
    },
    peer_to_client: Traffic {
        packets: 2,
        bytes: 15,
    },
};

fn record(c: &Client, a: &Allocated, secs: u64, usage: Usage, reason: EndReason) -> UsageRecord {
    UsageRecord {
        allocation: a.id.generation,
        user: "alice".into(),
        transport: Transport::Udp(LISTENER),
        client: c.addr,
        relayed: vec![a.relayed],
        duration: Duration::from_secs(secs),
        usage,
        reason,
    }
}

#[test]
fn refresh_zero_ends_with_a_deleted_record() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    traffic(&mut h, &c, &a);
    assert_eq!(h.server.poll_usage_record(), None, "not before it ends");
    h.set_time(42);
    h.send(c.addr, c.req(REFRESH).attr(Lifetime::from_u32(0)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::Close(a.relay), Seen::success(c.addr, REFRESH)]
    );
    assert_eq!(
        h.server.poll_usage_record(),
        Some(record(&c, &a, 42, USAGE, EndReason::Deleted))
    );
    assert_eq!(
        h.server.poll_usage_record(),
        None,
        "one record per allocation"
    );
}

#[test]
fn expiry_ends_with_an_expired_record() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    traffic(&mut h, &c, &a);
    h.set_time(599);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.poll_usage_record(), None);
    h.set_time(600);
    assert_eq!(h.timeout(), vec![Output::CloseRelay { relay: a.relay }]);
    assert_eq!(
        h.server.poll_usage_record(),
        Some(record(&c, &a, 600, USAGE, EndReason::Expired))
    );
    assert_eq!(h.server.poll_usage_record(), None);
}

#[test]
fn end_all_ends_every_allocation_with_a_drained_record() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    traffic(&mut h, &c, &a);
    let mut d = h.client("198.51.100.2:40000", "bob");
    d.creds = Creds::rest(SECRET, UNIX0 + 86_400, "bob", REALM);
    h.set_time(5);
    let b = h.allocate(&d);
    h.set_time(70);
    let now = h.now();
    h.server.end_all(now, EndReason::Drained);
    let outputs = h.drain();
    assert_same_outputs_any_order(&outputs, &[Seen::Close(a.relay), Seen::Close(b.relay)]);
    assert_eq!(h.server.allocation_count(), 0);
    let mut records = vec![];
    while let Some(r) = h.server.poll_usage_record() {
        records.push(r);
    }
    records.sort_by_key(|r| r.allocation);
    let mut bobs = record(&d, &b, 65, Usage::default(), EndReason::Drained);
    bobs.user = "bob".into();
    assert_eq!(
        records,
        [record(&c, &a, 70, USAGE, EndReason::Drained), bobs]
    );
}

#[test]
fn a_closed_connection_ends_with_a_connection_closed_record() {
    let mut h = Harness::new();
    let conn = ConnectionId(3);
    let from = addr("198.51.100.1:40000");
    let (_, id) = allocate_on(&mut h, conn, from);
    let peer = addr(PEER);
    let relayed = h
        .driver
        .open_relays()
        .first()
        .map(|(_, socket)| SocketAddr::new(relay_public(), socket.addr.port()))
        .unwrap();
    // No permission: nothing relayed, nothing counted.
    assert!(h.peer(id, peer, b"x").is_none());
    h.set_time(3);
    h.driver.connection_closed(conn, from);
    assert_eq!(seen(&h.drain()).len(), 1, "its relay socket closes");
    assert_eq!(
        h.server.poll_usage_record(),
        Some(UsageRecord {
            allocation: id.generation,
            user: "alice".into(),
            transport: Transport::Stream(conn),
            client: from,
            relayed: vec![relayed],
            duration: Duration::from_secs(3),
            usage: Usage::default(),
            reason: EndReason::ConnectionClosed,
        })
    );
    assert_eq!(h.server.poll_usage_record(), None);
}

#[test]
fn an_allocation_that_never_started_leaves_no_record() {
    let mut h = Harness::new();
    // Every bind fails: 508 after the tries, and no usage record.
    h.driver.default_answer = OpenAnswer::Err(OpenError::Other);
    let c = h.client("198.51.100.1:40000", "alice");
    h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::open(V4), Seen::error(c.addr, ALLOCATE, 508)]
    );
    assert_eq!(h.server.poll_usage_record(), None);
    // A stream client whose connection closes while its relay socket is still opening.
    h.driver.default_answer = OpenAnswer::Defer;
    let conn = ConnectionId(4);
    let from = addr("198.51.100.3:40000");
    let (_, outputs) = crate::stream::send_on(
        &mut h,
        conn,
        from,
        Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    let Output::ToClient { bytes, .. } = &outputs[0] else {
        unreachable!()
    };
    let client = Client {
        addr: from,
        creds: creds("carol"),
        nonce: Response::decode(bytes).nonce(),
    };
    let (_, outputs) = crate::stream::send_on(
        &mut h,
        conn,
        from,
        client.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_eq!(seen(&outputs), [Seen::open(V4)]);
    h.driver.connection_closed(conn, from);
    h.expect_nothing();
    assert_eq!(
        h.complete(0, Ok(())).1.len(),
        1,
        "the late socket is closed"
    );
    assert_eq!(h.server.poll_usage_record(), None);
}
