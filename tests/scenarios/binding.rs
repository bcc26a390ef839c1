//! Binding (RFC 8489 §3, §7.3, §14.7): the reflexive address, FINGERPRINT mirrored.

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 1. Binding
// ---------------------------------------------------------------------------------------

/// RFC 8489 §3: the server answers a Binding request with the client's reflexive transport
/// address in XOR-MAPPED-ADDRESS; Binding needs no credentials. Project rule: FINGERPRINT on a
/// response iff the request carried a valid one; a bad FINGERPRINT drops the message (§14.7).
#[test]
fn binding_reflects_the_sender_and_mirrors_fingerprint() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");

    let r = h.call(c, Req::request(BINDING));
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS]);
    assert_eq!(r.get::<XorMappedAddress>().unwrap().address(), c);
    assert!(!r.has_fingerprint());

    let r = h.call(c, Req::request(BINDING).fingerprint());
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS, t::FINGERPRINT]);
    assert!(r.has_fingerprint());

    // An IPv6 client sees its own address.
    let c6 = addr("[2001:db8::77]:1234");
    let r = h.call(c6, Req::request(BINDING).fingerprint());
    assert_eq!(r.get::<XorMappedAddress>().unwrap().address(), c6);

    // Binding is not authenticated: MESSAGE-INTEGRITY in the request does not make one
    // appear in the response.
    let mut req = Req::request(BINDING);
    req.bare_integrity = Some([1; 16]);
    let r = h.call(c, req);
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS]);

    // A bad FINGERPRINT: dropped silently, counted.
    let tid = h.tid();
    let mut bytes = Req::request(BINDING).fingerprint().tid(tid).build();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    assert_eq!(h.send_bytes(c, &bytes), None);
    h.expect_nothing();
    assert_eq!(h.server.counters().malformed, 1);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_timeout(), None);
}
