//! RFC 8656 over TCP/TLS (§3.1, §12.5): the connection is the client's 5-tuple, ChannelData
//! to a stream client is padded to a multiple of 4, and closing the connection deletes the
//! allocation. The framing itself is `stream_framing`'s (unit tests and fuzz target); here
//! the driver hands the core one frame at a time, its padding stripped.

use relay::core::{ConnectionId, Transport};

use crate::harness::*;

const CONN: ConnectionId = ConnectionId(7);

/// Sends `req` over connection `connection` from `from`; returns the outputs.
pub(crate) fn send_on(
    h: &mut Harness,
    connection: ConnectionId,
    from: SocketAddr,
    mut req: Req,
) -> (Option<Forward>, Vec<Output>) {
    req.transaction_id = Some(h.tid());
    let bytes = req.build();
    let forward = h.driver.stream_frame(connection, from, &bytes);
    (forward, h.driver.drain())
}

/// A client that allocates over `connection`: 401 with a nonce, then the Allocate.
pub(crate) fn allocate_on(
    h: &mut Harness,
    connection: ConnectionId,
    from: SocketAddr,
) -> (Client, AllocationId) {
    let (_, outputs) = send_on(
        h,
        connection,
        from,
        Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_eq!(
        seen(&outputs),
        [Seen::error_on(connection, from, ALLOCATE, 401)]
    );
    let Output::ToClient { bytes, .. } = &outputs[0] else {
        unreachable!()
    };
    let client = Client {
        addr: from,
        creds: creds("alice"),
        nonce: Response::decode(bytes).nonce(),
    };
    let (_, outputs) = send_on(
        h,
        connection,
        from,
        client.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_eq!(
        seen(&outputs),
        [Seen::open(V4), Seen::success_on(connection, from, ALLOCATE)]
    );
    let Output::OpenRelay { allocation, .. } = outputs[0] else {
        unreachable!()
    };
    (client, allocation)
}

#[test]
fn allocate_over_a_stream_answers_on_the_connection() {
    let mut h = Harness::new();
    let from = addr("198.51.100.1:40000");
    let (_, id) = allocate_on(&mut h, CONN, from);
    assert_eq!(h.server.allocation_count(), 1);
    // The same address over UDP is another client: no allocation there.
    let frame = channel_data_frame(0x4000, b"x");
    assert_eq!(h.send_bytes(from, &frame), None);
    assert_eq!(h.server.counters().channel_data_no_allocation, 1);
    assert!(h.server.invariant_violations().is_empty());
    let _ = id;
}

#[test]
fn channel_data_to_a_stream_client_is_padded_and_from_it_is_forwarded() {
    let mut h = Harness::new();
    let from = addr("198.51.100.1:40000");
    let (client, id) = allocate_on(&mut h, CONN, from);
    let peer = addr("8.8.8.9:7000");
    let (_, outputs) = send_on(
        &mut h,
        CONN,
        from,
        Harness::channel_bind_req(&client, 0x4001, peer),
    );
    assert_eq!(seen(&outputs), [Seen::success_on(CONN, from, CHANNEL_BIND)]);

    // Peer -> client: 5 bytes of payload, 4 of header, 3 of zero padding.
    let (deliver, frame) = h.peer(id, peer, b"hello").unwrap();
    assert_eq!(deliver.transport, Transport::Stream(CONN));
    assert_eq!(deliver.client, from);
    assert_eq!(deliver.frame, HEADROOM - 4..HEADROOM + 8);
    assert_eq!(
        frame,
        [
            0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0
        ]
    );
    // A multiple of 4 needs no padding.
    let (deliver, _) = h.peer(id, peer, b"four").unwrap();
    assert_eq!(deliver.frame, HEADROOM - 4..HEADROOM + 4);

    // Client -> peer: the driver passes the frame without its padding.
    let frame = channel_data_frame(0x4001, b"hi!");
    let forward = h.driver.stream_frame(CONN, from, &frame).unwrap();
    h.expect_nothing();
    assert_eq!(forward.peer, peer);
    assert_eq!(&frame[forward.payload], b"hi!");
}

#[test]
fn closing_the_connection_deletes_the_allocation_and_closes_its_relay() {
    let mut h = Harness::new();
    let from = addr("198.51.100.1:40000");
    let (_, _) = allocate_on(&mut h, CONN, from);
    let relays = h.driver.open_relays();
    assert_eq!(relays.len(), 1);
    h.driver.connection_closed(CONN, from);
    assert_eq!(seen(&h.driver.drain()), [Seen::close(relays[0].0)]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().allocations_closed_with_connection, 1);
    // A second close (or a close of a connection without an allocation) does nothing.
    h.driver.connection_closed(CONN, from);
    h.driver.connection_closed(ConnectionId(8), from);
    h.expect_nothing();
    assert_eq!(h.server.counters().allocations_closed_with_connection, 1);
}

#[test]
fn two_connections_from_one_address_are_two_clients() {
    let mut h = Harness::new();
    let from = addr("198.51.100.1:40000");
    let (_, first) = allocate_on(&mut h, ConnectionId(1), from);
    let (_, second) = allocate_on(&mut h, ConnectionId(2), from);
    assert_ne!(first, second);
    assert_eq!(h.server.allocation_count(), 2);
    h.driver.connection_closed(ConnectionId(1), from);
    assert_eq!(seen(&h.driver.drain()).len(), 1, "one relay closed");
    assert_eq!(h.server.allocation_count(), 1);
}
