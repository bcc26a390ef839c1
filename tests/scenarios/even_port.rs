//! EVEN-PORT and RESERVATION-TOKEN (RFC 8656 §7.2, §14.6, §14.9).

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 12. EVEN-PORT and RESERVATION-TOKEN
// ---------------------------------------------------------------------------------------

/// RFC 8656 §7.2: "If the request contains an EVEN-PORT attribute with the R bit set to 0,
/// then the server allocates a relayed transport address with an even port number."
#[test]
fn even_port_without_reservation() {
    let mut h = Harness::new();
    for i in 0..5 {
        let c = h.client(&format!("198.51.100.{}:40000", i + 1), "alice");
        let a = h.allocate_with(
            &c,
            c.req(ALLOCATE)
                .attr(RequestedTransport::new(UDP))
                .attr(EvenPort::new(false)),
        );
        assert_eq!(a.port % 2, 0, "even port");
        assert_eq!(
            a.response.types(),
            vec![
                t::XOR_RELAYED_ADDRESS,
                t::LIFETIME,
                t::XOR_MAPPED_ADDRESS,
                t::MESSAGE_INTEGRITY
            ]
        );
    }
    assert_eq!(h.server.ports_in_use(), [5, 0]);
}

/// RFC 8656 §7.2: with R set, "Port N is used in the current allocation, while the relayed
/// transport address with port N+1 is assigned a token and reserved for a future allocation";
/// an Allocate with that RESERVATION-TOKEN gets port N+1.
#[test]
fn even_port_reservation_is_claimed_by_token() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    assert_eq!(a.port % 2, 0);
    assert_eq!(
        a.response.types(),
        vec![
            t::XOR_RELAYED_ADDRESS,
            t::LIFETIME,
            t::XOR_MAPPED_ADDRESS,
            t::RESERVATION_TOKEN,
            t::MESSAGE_INTEGRITY
        ]
    );
    let token = a.response.get::<ReservationToken>().unwrap().token();
    assert_eq!(h.server.ports_in_use(), [2, 0]);

    h.set_time(29);
    assert_eq!(h.timeout(), vec![]);
    let d = h.client("198.51.100.2:40000", "bob");
    let b = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
    );
    assert_eq!(b.port, a.port + 1);
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    // The token is spent; its timer passes harmlessly.
    h.set_time(30);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    let e = h.client("198.51.100.3:40000", "carol");
    h.fails(
        &e,
        e.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
        508,
    );
}

/// RFC 8656 §7.2: "The server MUST hold this reservation for at least 30 seconds"; we hold it
/// exactly 30 s, then the port is free again.
#[test]
fn unclaimed_reservation_is_released_after_30_seconds() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    let token = a.response.get::<ReservationToken>().unwrap().token();
    assert_eq!(h.server.poll_timeout(), Some(h.at(30)));
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    h.set_time(29);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    h.set_time(30);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));
    let d = h.client("198.51.100.2:40000", "bob");
    h.fails(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
        508,
    );
}

/// RFC 8656 §7.2 item 5: RESERVATION-TOKEN with EVEN-PORT or an address-family attribute is
/// 400; "If the token is not valid for some reason, the server rejects the request with a 508
/// (Insufficient Capacity) error."
#[test]
fn reservation_token_errors() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let r = h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(0x0123_4567_89AB_CDEF)),
        508,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    for even in [false, true] {
        h.fails(
            &c,
            c.req(ALLOCATE)
                .attr(RequestedTransport::new(UDP))
                .attr(EvenPort::new(even))
                .attr(ReservationToken::new(1)),
            400,
        );
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
}

/// RFC 8656 §7.2 item 8: "If the server cannot satisfy the request, then the server rejects
/// the request with a 508 (Insufficient Capacity) error."
#[test]
fn even_port_reservation_fails_when_no_pair_is_free() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50002,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    assert_eq!(a.port, 50000);
    let d = h.client("198.51.100.2:40000", "bob");
    h.fails(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
        508,
    );
    // 50002 is still free for an even port without pair.
    let b = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(false)),
    );
    assert_eq!(b.port, 50002);
}

/// RFC 8656 §7.2: the reserved port is N+1 of the port N actually allocated, also when the
/// first port tried was in use.
#[test]
fn even_port_reservation_follows_a_retried_port() {
    // RFC 8656 §7.2: the reserved port is the one just above the relayed port. When the
    // first even port is in use and the core retries on another, the token must still name
    // relayed port + 1.
    let mut h = Harness::with_config(Config {
        ports: 50000..=50003,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    h.script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse)]);
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [
            Seen::open(V4),
            Seen::open(V4),
            Seen::success(c.addr, ALLOCATE)
        ],
        "the first port was in use, the retry succeeded"
    );
    let r = to_client(&outputs[2], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    let port = r.get::<XorRelayAddress>().unwrap().address().port();
    assert_eq!(port % 2, 0);
    let token = r.get::<ReservationToken>().expect("token").token();
    let d = h.client("198.51.100.2:40000", "bob");
    let b = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
    );
    assert_eq!(b.port, port + 1, "reserved port is relayed port + 1");
}

/// RFC 8656 §7.2: "the server uses the previously reserved transport address corresponding to
/// the included token (if it is still available)"; §7.4: 508 when "the one that was reserved is
/// no longer available".
#[test]
fn reserved_port_in_use_is_508_not_another_port() {
    // RFC 8656 §7.2: RESERVATION-TOKEN asks for the reserved port itself (the neighbour of an
    // RTP port, say). If someone else holds it, another port would break the pairing: 508.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    let token = a.response.get::<ReservationToken>().unwrap().token();
    let d = h.client("198.51.100.2:40000", "bob");
    h.script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse)]);
    h.send(
        d.addr,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::open(V4), Seen::error(d.addr, ALLOCATE, 508)]
    );
    assert!(matches!(
        outputs[0],
        Output::OpenRelay { addr, .. } if addr.port() == a.port + 1
    ));
    let r = to_client(&outputs[1], d.addr);
    assert_eq!(r.error_code(), Some(508));
    assert!(r.integrity_valid(&d.key()));
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
}
