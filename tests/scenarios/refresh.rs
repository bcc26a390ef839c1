//! Refresh (RFC 8656 §8) and expiry with virtual time (§7, §9, §12: lifetimes of
//! allocations, permissions and channel bindings).

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 5. Refresh
// ---------------------------------------------------------------------------------------

/// RFC 8656 §8.2: "if the request contains a LIFETIME attribute, then the server computes the
/// minimum of the client's requested lifetime and the server's maximum allowed lifetime"; the
/// success response contains "A LIFETIME attribute containing the current value of the
/// time-to-expiry timer."
#[test]
fn refresh_updates_the_lifetime_with_a_cap() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    h.set_time(100);
    let r = h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(1200)));
    assert_eq!(r.types(), vec![t::LIFETIME, t::MESSAGE_INTEGRITY]);
    assert_eq!(lifetime_of(&r), 1200);
    // The old deadline passes harmlessly.
    h.set_time(600);
    assert_eq!(h.timeout(), vec![]);
    h.set_time(1299);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.allocation_count(), 1);

    // The nonce is stale by now: 438 (unsigned) with a fresh one, and the allocation stays.
    let r = h.call(c.addr, c.req(REFRESH).attr(Lifetime::from_u32(99_999)));
    assert_challenge_with(&h, &r, 438, 1);
    c.nonce = r.nonce();
    let r = h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(99_999)));
    assert_eq!(lifetime_of(&r), 3600);
    // Without LIFETIME: the default.
    h.set_time(1300);
    let r = h.ok(&c, c.req(REFRESH));
    assert_eq!(lifetime_of(&r), 600);
    h.set_time(1899);
    assert_eq!(h.timeout(), vec![]);
    h.set_time(1900);
    assert_eq!(h.timeout(), vec![Output::CloseRelay { relay: a.relay }]);
    assert_eq!(h.server.allocation_count(), 0);
}

/// RFC 8656 §8.2: "If this computed value is greater than the default lifetime, then the
/// 'desired lifetime' is the computed value. Otherwise, the 'desired lifetime' is the default
/// lifetime."
#[test]
fn refresh_shorter_than_default_gets_the_default() {
    // RFC 8656 §7.3: a non-zero requested lifetime below the default is raised to the
    // default, as for Allocate.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let r = h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(10)));
    assert_eq!(lifetime_of(&r), 600);
}

/// RFC 8656 §8.2: "if the request contains a LIFETIME attribute and the attribute value is
/// zero, then the 'desired lifetime' is zero" and "If the 'desired lifetime' is zero, then the
/// request succeeds and the allocation is deleted."
#[test]
fn refresh_with_zero_lifetime_deletes() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    h.set_time(10);
    h.send(
        c.addr,
        c.req(REFRESH).attr(Lifetime::from_u32(0)).fingerprint(),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [Seen::close(a.relay), Seen::success(c.addr, REFRESH)]
    );
    let r = to_client(&outputs[1], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(
        r.types(),
        vec![t::LIFETIME, t::MESSAGE_INTEGRITY, t::FINGERPRINT]
    );
    assert_eq!(lifetime_of(&r), 0);
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    // The stale timer entry fires harmlessly.
    h.set_time(600);
    assert_eq!(h.timeout(), vec![]);
    // A second delete finds nothing.
    h.fails(&c, c.req(REFRESH).attr(Lifetime::from_u32(0)), 437);
    // The peer's datagrams to the gone allocation are counted.
    assert!(h.peer(a.id, addr("8.8.8.9:1"), b"late").is_none());
    assert_eq!(h.server.counters().peer_no_allocation, 1);
}

/// RFC 8656 §8.3: a Refresh on a 5-tuple without allocation is 437 (Allocation Mismatch); §5:
/// other credentials than the allocation's are 441 (Wrong Credentials); §8.2: a
/// REQUESTED-ADDRESS-FAMILY the allocation does not have is 443 (Peer Address Family Mismatch).
#[test]
fn refresh_without_allocation_or_by_another_user() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let r = h.fails(&c, c.req(REFRESH), 437);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    h.allocate(&c);
    let mallory = Client {
        creds: creds("mallory"),
        ..c.clone()
    };
    let r = h.fails(
        &mallory,
        mallory.req(REFRESH).attr(Lifetime::from_u32(0)),
        441,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.allocation_count(), 1);
    // Refresh with a family the allocation does not have.
    h.fails(
        &c,
        c.req(REFRESH)
            .attr(RequestedAddressFamily::new(AddressFamily::V6)),
        443,
    );
}

// ---------------------------------------------------------------------------------------
// 8. Expiry with virtual time
// ---------------------------------------------------------------------------------------

/// RFC 8656 §9: "The Permission Lifetime MUST be 300 seconds (= 5 minutes)"; §12: "A channel
/// binding lasts for 10 minutes unless refreshed"; §6: an allocation expires at its
/// time-to-expiry, and "If an allocation expires, all its permissions expire with it."
#[test]
fn permissions_channels_and_allocations_expire_on_time() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));
    // Keep the allocation for an hour.
    h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));

    let perm_peer = addr("8.8.8.20:1");
    h.set_time(10);
    h.create_permission(&c, &[perm_peer]);
    assert_eq!(h.server.poll_timeout(), Some(h.at(310)));
    // Early and repeated calls do nothing.
    assert_eq!(h.timeout(), vec![]);
    h.set_time(309);
    assert_eq!(h.timeout(), vec![]);
    assert!(h.peer(a.id, perm_peer, b"x").is_some());
    h.set_time_ms(309_999);
    assert!(h.peer(a.id, perm_peer, b"x").is_some());
    h.set_time(310);
    assert!(
        h.peer(a.id, perm_peer, b"x").is_none(),
        "permission gone at 300 s"
    );
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.timeout(), vec![]);
    assert!(h.peer(a.id, perm_peer, b"x").is_none());
    assert_eq!(h.server.counters().peer_no_permission, 2);

    // A channel bound at 400 s: usable until 1000 s, held until 1300 s.
    let p1 = addr("8.8.8.30:1");
    let p2 = addr("8.8.8.31:1");
    h.set_time(400);
    h.channel_bind(&c, 0x4000, p1);
    h.set_time(999);
    assert!(h.channel_data(c.addr, 0x4000, b"x").is_some());
    h.set_time(1000);
    assert_eq!(h.timeout(), vec![]);
    h.renew(&mut c);
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    // Held: neither the number nor the peer can be bound elsewhere...
    h.fails(&c, Harness::channel_bind_req(&c, 0x4000, p2), 400);
    h.fails(&c, Harness::channel_bind_req(&c, 0x4001, p1), 400);
    h.set_time(1299);
    assert_eq!(h.timeout(), vec![]);
    h.fails(&c, Harness::channel_bind_req(&c, 0x4000, p2), 400);
    // ...until the hold is over.
    h.set_time(1300);
    assert_eq!(h.timeout(), vec![]);
    h.channel_bind(&c, 0x4000, p2);
    assert!(h.channel_data(c.addr, 0x4000, b"x").is_some());

    // The allocation ends at 3600 s: its relay closes and its port returns.
    h.set_time(3599);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.allocation_count(), 1);
    h.set_time(3600);
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.timeout(), vec![Output::CloseRelay { relay: a.relay }]);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    assert_eq!(h.server.counters().allocations_expired, 1);
    h.set_time(10_000);
    assert_eq!(h.timeout(), vec![]);
}

/// RFC 8656 §6: "When an allocation expires, the state data associated with the allocation can
/// be freed"; DESIGN: fires are hints, a late `handle_timeout` expires everything due.
#[test]
fn late_timeout_expires_several_allocations_at_once() {
    let mut h = Harness::new();
    let a = h.client("198.51.100.1:40000", "alice");
    let b = h.client("198.51.100.2:40000", "bob");
    let first = h.allocate(&a);
    h.set_time(5);
    let second = h.allocate(&b);
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));
    h.set_time(10_000);
    assert_eq!(
        h.timeout(),
        vec![
            Output::CloseRelay { relay: first.relay },
            Output::CloseRelay {
                relay: second.relay
            }
        ]
    );
    assert_eq!(h.server.allocation_count(), 0);
}

/// DESIGN: "Fires are hints, state is the truth": an allocation past its time-to-expiry (RFC
/// 8656 §6) is gone before its timer fires, so the client may allocate again at once.
#[test]
fn allocate_after_expiry_before_the_timer_fires_succeeds() {
    // DESIGN: "Fires are hints, state is the truth: an early, late or repeated
    // handle_timeout is harmless." A client whose allocation has expired must be able to
    // allocate again even if the driver has not yet called handle_timeout.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let old = h.allocate(&c);
    h.set_time(600);
    // Refresh already treats it as gone:
    h.fails(&c, c.req(REFRESH), 437);
    h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [
            Seen::close(old.relay),
            Seen::open(V4),
            Seen::success(c.addr, ALLOCATE)
        ]
    );
    assert_eq!(
        to_client(&outputs[2], c.addr).class(),
        MessageClass::SuccessResponse
    );
}

/// DESIGN: "an expired allocation is gone for every lookup even before its entry fires"
/// (RFC 8656 §6, time-to-expiry): requests, ChannelData and peer datagrams alike.
#[test]
fn expired_but_unswept_allocation_is_gone_for_every_lookup() {
    // The same rule for every other way to reach an allocation: by the client's 5-tuple
    // (requests, ChannelData, Send), by its relay socket (peer data), and through the
    // quota, the allocation limit and the port pool it holds.
    let mut h = Harness::with_config(Config {
        ports: 50000..=50000,
        max_allocations_per_user: 1,
        max_allocations: 1,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    let old = h.allocate(&c);
    let peer = addr("8.8.8.40:1");
    h.channel_bind(&c, 0x4000, peer);
    assert!(h.channel_data(c.addr, 0x4000, b"x").is_some());
    assert!(h.peer(old.id, peer, b"y").is_some());
    h.set_time(600);
    // No handle_timeout yet: the allocation is still in the core's tables.
    h.fails(&c, Harness::channel_bind_req(&c, 0x4000, peer), 437);
    h.fails(
        &c,
        c.req(CREATE_PERMISSION).attr(XorPeerAddress::new(peer)),
        437,
    );
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.server.counters().channel_data_no_allocation, 1);
    let (_, forward) = h.send(
        c.addr,
        Req::indication(SEND)
            .attr(XorPeerAddress::new(peer))
            .attr(Data::new(b"z".to_vec()).unwrap()),
    );
    assert_eq!(forward, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().send_dropped, 1);
    assert!(h.peer(old.id, peer, b"y").is_none());
    assert_eq!(h.server.counters().peer_no_allocation, 1);
    assert_eq!(h.server.allocation_count(), 1, "still unswept");

    // The same user on another 5-tuple gets the only port, within quota and limit.
    let mut other = c.clone();
    other.addr = addr("198.51.100.1:40001");
    h.renew(&mut other);
    h.send(
        other.addr,
        other.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    let outputs = h.drain();
    assert_eq!(
        seen(&outputs),
        [
            Seen::close(old.relay),
            Seen::open(V4),
            Seen::success(other.addr, ALLOCATE)
        ]
    );
    assert!(matches!(
        outputs[1],
        Output::OpenRelay { addr, .. } if addr.port() == 50000
    ));
    assert_eq!(
        to_client(&outputs[2], other.addr).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(h.server.counters().allocations_expired, 1);
    // The old timer entry fires harmlessly.
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.allocation_count(), 1);
}
