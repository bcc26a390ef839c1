//! Quotas and the bound on unauthenticated answers (RFC 8656 §7.2: 486 Allocation Quota
//! Reached; RFC 8489 §6.2.1 on amplification).

use crate::harness::*;

/// RFC 8656 §7.2 item 10: "the server MAY choose to reject the request with a 486 (Allocation
/// Quota Reached) error [...] it SHOULD define it based on the username"; 508 when the server
/// is full; expiry gives the quota back.
#[test]
fn allocation_quotas() {
    let mut h = Harness::with_config(Config {
        max_allocations_per_user: 2,
        max_allocations: 3,
        ..config()
    });
    let a1 = h.client("198.51.100.1:40000", "alice");
    let mut a2 = h.client("198.51.100.1:40001", "alice");
    // Fresh credentials (another expiry) of the same id share the quota.
    a2.creds = Creds::rest(SECRET, UNIX0 + 7200, "alice", REALM);
    let a3 = h.client("198.51.100.1:40002", "alice");
    let first = h.allocate(&a1);
    h.allocate(&a2);
    let r = h.fails(
        &a3,
        a3.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
        486,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // Others are not affected until the server is full.
    let b = h.client("198.51.100.2:40000", "bob");
    h.allocate(&b);
    let carol = h.client("198.51.100.3:40000", "carol");
    h.fails(
        &carol,
        carol.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
        508,
    );
    // Expiry gives the quota back.
    h.set_time(600);
    let outputs = h.timeout();
    assert_eq!(first.relay, RelayId(1));
    assert_same_outputs_any_order(
        &outputs,
        &[
            Seen::close(RelayId(1)),
            Seen::close(RelayId(2)),
            Seen::close(RelayId(3)),
        ],
    );
    let mut a3 = a3;
    h.renew(&mut a3);
    h.allocate(&a3);
}

/// RFC 8656 §7.2 item 10: the quota counts allocations; one that failed (508) counts for
/// nothing.
#[test]
fn failed_allocation_does_not_use_up_the_quota() {
    let mut h = Harness::with_config(Config {
        max_allocations_per_user: 1,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    for _ in 0..3 {
        h.script = VecDeque::from([OpenAnswer::Err(OpenError::Other)]);
        h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
        let outputs = h.drain();
        assert_eq!(
            seen(&outputs),
            [Seen::open(V4), Seen::error(c.addr, ALLOCATE, 508)]
        );
    }
    h.allocate(&c);
}

/// RFC 8489 §6.2.1 and DESIGN ("Unauthenticated answers are bounded in bytes per source"): a
/// spoofed victim gets at most three bytes per byte sent, while ordinary clients and every
/// authenticated request are always answered.
#[test]
fn unauthenticated_answers_never_exceed_three_times_the_request() {
    // Admission by byte credit: a header-only Allocate (20 bytes) earns 60 bytes, and its
    // 401 with the realm "relay.test" is 64: the first is refused and its credit banked,
    // the second paid from the bank.
    let mut h = Harness::new();
    let victim = addr("198.51.100.66:1000");
    let (mut sent, mut received) = (0usize, 0usize);
    for _ in 0..1000 {
        let (bytes, _) = h.send(victim, Req::request(ALLOCATE));
        sent += bytes.len();
        let outputs = h.drain();
        if !outputs.is_empty() {
            assert_eq!(seen(&outputs), [Seen::error(victim, ALLOCATE, 401)]);
        }
        for output in outputs {
            let Output::ToClient { bytes, .. } = output else {
                unreachable!("checked above");
            };
            received += bytes.len();
        }
    }
    assert!(received > 0);
    assert!(received <= 3 * sent, "{received} bytes for {sent}");
    assert!(h.server.counters().rate_limited > 0);
    // Ordinary requests from one address are all answered, however many.
    for port in 0..2000u16 {
        let from = addr(&format!("198.51.100.67:{}", 1000 + port));
        let r = h.call(
            from,
            Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
        );
        assert_eq!(r.error_code(), Some(401));
        let r = h.call(from, Req::request(BINDING));
        assert_eq!(r.class(), MessageClass::SuccessResponse);
    }
    // An authenticated request is never limited.
    let c = h.client("198.51.100.66:1000", "alice");
    let before = h.server.counters().rate_limited;
    for _ in 0..50 {
        h.fails(&c, c.req(REFRESH), 437);
    }
    assert_eq!(h.server.counters().rate_limited, before);
}
