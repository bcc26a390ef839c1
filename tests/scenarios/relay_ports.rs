//! Relay ports (RFC 8656 §7.2: "the server allocates a relayed transport address"):
//! exhaustion, bind failures and retries, and the driver opening sockets asynchronously.

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 4. Relay ports
// ---------------------------------------------------------------------------------------

/// RFC 8656 §7.4: 508 (Insufficient Capacity): "The server has no more relayed transport
/// addresses available"; a deleted allocation's port is available again.
#[test]
fn port_exhaustion_is_508() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50001,
        ..config()
    });
    let a = h.client("198.51.100.1:40000", "alice");
    let b = h.client("198.51.100.2:40000", "bob");
    let c = h.client("198.51.100.3:40000", "carol");
    let first = h.allocate(&a);
    let second = h.allocate(&b);
    let mut ports = [first.port, second.port];
    ports.sort_unstable();
    assert_eq!(ports, [50000, 50001]);
    let r = h.fails(&c, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)), 508);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.allocation_count(), 2);
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    // When one goes, the third gets its port.
    h.send(a.addr, a.req(REFRESH).attr(Lifetime::from_u32(0)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::close(first.relay), Seen::success(a.addr, REFRESH)]
    );
    assert_eq!(
        to_client(&outputs[1], a.addr).class(),
        MessageClass::SuccessResponse
    );
    let third = h.allocate(&c);
    assert_eq!(third.port, first.port);
}

/// RFC 8656 §7.2: "the server allocates any available relayed transport address": a port the
/// OS refuses (address in use) is not available, so another one is tried.
#[test]
fn address_in_use_is_retried_on_another_port() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50001,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    h.script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse)]);
    h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [
            Seen::open(V4),
            Seen::open(V4),
            Seen::success(c.addr, ALLOCATE)
        ]
    );
    let (
        Output::OpenRelay { addr: first, .. },
        Output::OpenRelay {
            addr: second,
            allocation,
            ..
        },
    ) = (&outputs[0], &outputs[1])
    else {
        panic!("{outputs:?}");
    };
    assert_ne!(first.port(), second.port());
    let r = to_client(&outputs[2], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(
        r.get::<XorRelayAddress>().unwrap().address(),
        SocketAddr::new(relay_public(), second.port())
    );
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    assert_eq!(h.server.counters().relay_open_failed, 1);
    // The allocation relays through the socket that did open.
    h.create_permission(&c, &[addr("8.8.8.9:1")]);
    h.channel_bind(&c, 0x4000, addr("8.8.8.9:1"));
    assert_eq!(
        h.channel_data(c.addr, 0x4000, b"x"),
        Some(Forward {
            relay: RelayId(1),
            peer: addr("8.8.8.9:1"),
            payload: 4..5
        })
    );
    assert!(h.peer(*allocation, addr("8.8.8.9:1"), b"y").is_some());
}

/// RFC 8656 §7.2 (any available relayed transport address) and §7.4 (508 when none is): binds
/// that fail are retried on other ports up to a bound, then 508 with every port back.
#[test]
fn address_in_use_is_retried_until_the_attempt_limit() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50001,
        ..config()
    });
    // Two failures, then a bind that works: the port that failed first is tried again
    // (it went back to the pool), and the allocation succeeds on the third attempt.
    let c = h.client("198.51.100.1:40000", "alice");
    h.script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse); 2]);
    h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [
            Seen::open(V4),
            Seen::open(V4),
            Seen::open(V4),
            Seen::success(c.addr, ALLOCATE)
        ]
    );
    let ports: Vec<u16> = outputs[..3]
        .iter()
        .map(|o| match o {
            Output::OpenRelay { addr, .. } => addr.port(),
            _ => unreachable!("checked above"),
        })
        .collect();
    assert_eq!(
        ports[0], ports[2],
        "the port that failed first is tried again"
    );
    assert_ne!(ports[0], ports[1]);
    assert_eq!(
        to_client(&outputs[3], c.addr).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(h.server.ports_in_use(), [1, 0]);

    // With a single free port left, one failure is already the end.
    let d = h.client("198.51.100.2:40000", "bob");
    h.script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse)]);
    h.send(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::open(V4), Seen::error(d.addr, ALLOCATE, 508)]
    );
    assert_eq!(h.server.ports_in_use(), [1, 0]);

    // Eight failures in a row, with ports to spare: 508, every port back.
    let mut h = Harness::with_config(Config {
        ports: 50000..=50009,
        ..config()
    });
    let d = h.client("198.51.100.2:40000", "bob");
    h.script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse); 8]);
    h.send(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    let mut expected = vec![Seen::open(V4); 8];
    expected.push(Seen::error(d.addr, ALLOCATE, 508));
    assert_eq!(seen(&outputs), expected);
    let r = to_client(&outputs[8], d.addr);
    assert_eq!(r.error_code(), Some(508));
    assert!(r.integrity_valid(&d.key()));
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().relay_open_failed, 8);
}

/// RFC 8656 §7.4: a relay socket that cannot be opened is 508 (Insufficient Capacity); nothing
/// of the attempt remains.
#[test]
fn bind_failure_other_is_508_and_returns_the_port() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50001,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    h.script = VecDeque::from([OpenAnswer::Err(OpenError::Other)]);
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .fingerprint(),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::open(V4), Seen::error(c.addr, ALLOCATE, 508)]
    );
    let r = to_client(&outputs[1], c.addr);
    assert_eq!(r.error_code(), Some(508));
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY, t::FINGERPRINT]
    );
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().relay_open_failed, 1);
    // Nothing is left of it: the same client can try again.
    h.allocate(&c);
}

/// RFC 8656 §7.2 (one allocation per 5-tuple) with the driver opening sockets asynchronously
/// (DESIGN convention 6): a retransmission while the socket opens gets no second answer and no
/// second socket, then the stored success.
#[test]
fn allocate_retransmitted_while_the_socket_opens_is_answered_once() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let tid = h.tid();
    let req = c.req(ALLOCATE).attr(RequestedTransport::new(UDP)).tid(tid);
    h.script = VecDeque::from([OpenAnswer::Defer]);
    h.send(c.addr, req.clone());
    let outputs = h.drain();
    assert_eq!(seen(&outputs), [Seen::open(V4)]);
    // Nothing to say yet, and nothing usable yet.
    h.send(c.addr, req.clone());
    h.expect_nothing();
    h.fails(&c, c.req(REFRESH), 437);
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    let (relay, outputs) = h.complete(0, Ok(()));
    assert_eq!(seen(&outputs), [Seen::success(c.addr, ALLOCATE)]);
    let r = to_client(&outputs[0], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(r.transaction_id(), tid);
    assert_eq!(relay, Some(RelayId(1)));
    let again = h.call(c.addr, req);
    assert_eq!(again.bytes, r.bytes);
}

/// DESIGN convention 6 (fallible I/O is a request plus a completion): a completion for an
/// allocation that is gone closes its socket and never reaches the next allocation in the same
/// slot, and its port stays taken until then.
#[test]
fn stale_relay_completion_is_not_applied_to_a_reused_allocation_id() {
    // OpenRelay/handle_relay_opened is a request and a completion. A completion for an
    // allocation that failed meanwhile must close its socket, even when a new allocation has
    // taken the same AllocationId (slab slot) and is waiting for a socket of that family.
    let mut h = Harness::with_config(config_v6());
    let dual = |c: &Client| {
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6))
    };
    let a = h.client("198.51.100.1:40000", "alice");
    h.script = VecDeque::from([OpenAnswer::Defer, OpenAnswer::Defer]);
    h.send(a.addr, dual(&a));
    let outputs = h.drain();
    assert_eq!(seen(&outputs), [Seen::open(V4), Seen::open(V6)]);
    let Output::OpenRelay { addr: a_v6, .. } = outputs[1] else {
        panic!("{outputs:?}");
    };
    // A's IPv4 socket fails: A is gone (its IPv6 socket is still being opened).
    let (_, outputs) = h.complete(0, Err(OpenError::Other));
    assert_eq!(seen(&outputs), [Seen::error(a.addr, ALLOCATE, 508)]);
    // A's IPv6 port stays taken while its bind is in flight: handing it to B now would race
    // with that bind.
    assert_eq!(h.server.ports_in_use(), [0, 1]);
    // B takes the same slot.
    let b = h.client("198.51.100.2:40000", "bob");
    h.script = VecDeque::from([OpenAnswer::Defer, OpenAnswer::Defer]);
    h.send(b.addr, dual(&b));
    let outputs = h.drain();
    assert_eq!(seen(&outputs), [Seen::open(V4), Seen::open(V6)]);
    let Output::OpenRelay {
        allocation: b_id,
        addr: b_v6,
        ..
    } = outputs[1]
    else {
        panic!("{outputs:?}");
    };
    // Same slot, new generation: the IDs differ, which is what keeps A's completion away.
    assert_eq!(
        b_id.slot, h.deferred[0].allocation.slot,
        "the slab slot was reused"
    );
    assert_ne!(b_id, h.deferred[0].allocation);
    assert_ne!(b_v6, a_v6, "B was given the port A is still binding");
    assert_eq!(h.server.ports_in_use(), [1, 2]);
    // A's IPv6 socket opens now: it belongs to nobody and must be closed, and its port
    // goes back to the pool.
    let (stale, outputs) = h.complete(1, Ok(()));
    assert_eq!(
        outputs,
        vec![Output::CloseRelay {
            relay: stale.unwrap()
        }]
    );
    assert_eq!(h.server.ports_in_use(), [1, 1]);
    // B's own sockets open: it is answered with the ports it was given.
    let (_, outputs) = h.complete(2, Ok(()));
    assert_eq!(outputs, vec![]);
    let (_, outputs) = h.complete(3, Ok(()));
    assert_eq!(seen(&outputs), [Seen::success(b.addr, ALLOCATE)]);
    let r = to_client(&outputs[0], b.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    let relayed: Vec<u16> = r
        .message
        .attributes()
        .filter_map(|a| match a {
            Attribute::XorRelayAddress(x) => Some(x.address().port()),
            _ => None,
        })
        .collect();
    assert_eq!(relayed[1], b_v6.port());
    // A datagram the driver read from A's socket before closing it names A: it must not
    // reach B, whose allocation now sits in that slot and permits the same peer.
    let peer = addr("8.8.8.50:1");
    h.create_permission(&b, &[peer]);
    assert!(h.peer(b_id, peer, b"for b").is_some());
    let a_id = h.deferred[0].allocation;
    assert_eq!(h.peer(a_id, peer, b"for a"), None);
    assert_eq!(h.server.counters().peer_no_allocation, 1);
}
