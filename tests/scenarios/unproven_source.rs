//! Requests whose MESSAGE-INTEGRITY verifies but whose source is not proven by a fresh
//! nonce. The MAC proves the key, and a web application hands REST keys to every visitor;
//! only a nonce issued to the source address within its lifetime shows that the request
//! came from there (found by a hostile review of the admission change).

use crate::harness::*;

/// A request signed with `creds` from someone who holds the key but never saw a nonce for
/// the address it claims: REALM and NONCE present (RFC 8489 §9.2.4 only asks for their
/// presence before the integrity check) and empty.
fn spoofed_by_a_key_holder(creds: &Creds, method: Method) -> Req {
    let mut req = Req::request(method).auth(creds, "");
    req.omit = [false, true, true];
    req.raw(t::REALM, b"").raw(t::NONCE, b"")
}

/// Sends `n` copies of `req` with the source `victim`; (bytes sent, bytes answered).
fn reflect(h: &mut Harness, victim: SocketAddr, req: &Req, n: usize) -> (usize, usize) {
    let (mut sent, mut received) = (0, 0);
    for _ in 0..n {
        let (bytes, _) = h.send(victim, req.clone());
        sent += bytes.len();
        for output in h.drain() {
            let Output::ToClient { bytes, client, .. } = output else {
                panic!("{output:?}");
            };
            assert_eq!(client, victim);
            received += bytes.len();
        }
    }
    (sent, received)
}

/// RFC 8656 §21 (amplification): the relay must not send a spoofed victim more than it
/// received. Answers to a key holder whose nonce is not fresh (438, and a closing Refresh's
/// answer) are paid from the source's byte credit: at most 3 bytes per byte, whatever the
/// realm (127 characters of three bytes each made the 438 6.6 times its request before).
#[test]
fn answers_to_a_key_holder_without_a_fresh_nonce_stay_within_three_times() {
    for realm in ["relay.test".to_owned(), "x".repeat(127), "€".repeat(127)] {
        let mut h = Harness::with_config(Config {
            realm: realm.clone(),
            ..config()
        });
        let creds = Creds::rest(SECRET, UNIX0 + 86_400, "a", &realm);
        let victim = addr("198.51.100.66:53");
        // Credit banked by one kind of request may pay the other's answers: the bound
        // holds over everything the victim's address "sent".
        let (mut sent, mut received) = (0, 0);
        for req in [
            spoofed_by_a_key_holder(&creds, REFRESH),
            spoofed_by_a_key_holder(&creds, REFRESH).attr(Lifetime::from_u32(0)),
        ] {
            let (s, r) = reflect(&mut h, victim, &req, 1000);
            assert!(r > 0, "realm of {} bytes: never answered", realm.len());
            (sent, received) = (sent + s, received + r);
        }
        assert!(
            received <= 3 * sent,
            "realm of {} bytes: {received} bytes reflected for {sent}",
            realm.len()
        );
    }
}

/// RFC 8656 §8.2: a Refresh with LIFETIME 0 deletes the allocation. Accepting it with a
/// stale nonce (browsers do not retry a closing Refresh after 438) must not let a copy of
/// one client's closing Refresh delete another allocation of the same user elsewhere: the
/// nonce was issued to the first client's address, not the second's.
#[test]
fn a_closing_refresh_replayed_from_another_address_deletes_nothing() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let d = h.client("198.51.100.1:40001", "alice");
    let a = h.allocate(&c);
    h.allocate(&d);
    let (closing, _) = h.send(c.addr, c.req(REFRESH).attr(Lifetime::from_u32(0)));
    assert_eq!(
        seen(&h.drain()),
        [Seen::close(a.relay), Seen::success(c.addr, REFRESH)]
    );
    h.send_bytes(d.addr, &closing);
    assert_eq!(seen(&h.drain()), [Seen::error(d.addr, REFRESH, 438)]);
    assert_eq!(h.server.allocation_count(), 1);
}

/// The same 5-tuple an hour later (an ICE restart, or a NAT mapping handed on): an old
/// closing Refresh, its nonce issued long before the new allocation existed, gets 438.
#[test]
fn a_closing_refresh_replayed_an_hour_later_does_not_delete_the_next_allocation() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let (closing, _) = h.send(c.addr, c.req(REFRESH).attr(Lifetime::from_u32(0)));
    assert_eq!(
        seen(&h.drain()),
        [Seen::close(a.relay), Seen::success(c.addr, REFRESH)]
    );
    h.set_time(3600);
    h.renew(&mut c);
    h.allocate(&c);
    h.send_bytes(c.addr, &closing);
    assert_eq!(seen(&h.drain()), [Seen::error(c.addr, REFRESH, 438)]);
    assert_eq!(h.server.allocation_count(), 1);
}

/// Whoever holds credentials for the same username (the user's other device, or every
/// visitor where an application hands out one username) cannot delete an allocation blind
/// by spoofing its address with a made-up nonce.
#[test]
fn a_closing_refresh_with_a_made_up_nonce_deletes_nothing() {
    let mut h = Harness::new();
    let d = h.client("198.51.100.1:40001", "alice");
    h.allocate(&d);
    let mallory = Client {
        addr: d.addr,
        creds: creds("alice"),
        nonce: "AAAAAAAAAAAAAAAA".into(),
    };
    h.send(d.addr, mallory.req(REFRESH).attr(Lifetime::from_u32(0)));
    assert_eq!(seen(&h.drain()), [Seen::error(d.addr, REFRESH, 438)]);
    assert_eq!(h.server.allocation_count(), 1);
}

/// RFC 8656 §7.2: a retransmitted Allocate gets the original answer. A later client on the
/// same 5-tuple with other credentials (a NAT mapping handed on) whose transaction id happens
/// to match is not retransmitting: it gets 437, never the earlier client's answer.
#[test]
fn an_allocate_with_the_same_transaction_id_under_other_credentials_is_a_mismatch() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let tid = h.tid();
    h.allocate_with(
        &c,
        c.req(ALLOCATE).attr(RequestedTransport::new(UDP)).tid(tid),
    );
    let bob = Client {
        creds: creds("bob"),
        ..c.clone()
    };
    let r = h.call(
        c.addr,
        bob.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .tid(tid),
    );
    assert_eq!(r.error_code(), Some(437));
    assert!(r.integrity_valid(&bob.key()));
    // The real retransmission still gets the original success.
    let r = h.call(
        c.addr,
        c.req(ALLOCATE).attr(RequestedTransport::new(UDP)).tid(tid),
    );
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert!(r.integrity_valid(&c.key()));
}
