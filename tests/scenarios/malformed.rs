//! Unknown attributes (RFC 8489 §14, §7.3.1: 420 with UNKNOWN-ATTRIBUTES) and malformed
//! input (counted and dropped, never state).

use crate::harness::*;

// ---------------------------------------------------------------------------------------
// 9. Unknown attributes
// ---------------------------------------------------------------------------------------

/// RFC 8489 §6.3.1: unknown comprehension-required attributes get 420 (Unknown Attribute) with
/// an UNKNOWN-ATTRIBUTES attribute listing them; unknown comprehension-optional ones are
/// ignored.
#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let r = h.call(c, Req::request(BINDING).raw(0x7FAA, b"zz").fingerprint());
    assert_eq!(r.error_code(), Some(420));
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::UNKNOWN_ATTRIBUTES, t::FINGERPRINT]
    );
    assert_eq!(r.unknown_attributes(), vec![0x7FAA]);
    // Two unknown ones are both listed, in order.
    let r = h.call(
        c,
        Req::request(BINDING).raw(0x7FAA, b"").raw(0x0033, b"1234"),
    );
    assert_eq!(r.unknown_attributes(), vec![0x7FAA, 0x0033]);

    // A comprehension-optional unknown attribute is ignored.
    let r = h.call(c, Req::request(BINDING).raw(0xC0AA, b"zz"));
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS]);

    let client = h.client("198.51.100.2:40000", "alice");
    let r = h.call(
        client.addr,
        client
            .req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .raw(0x7FAA, b"zz"),
    );
    assert_eq!(r.error_code(), Some(420));
    assert_eq!(r.unknown_attributes(), vec![0x7FAA]);
    assert_eq!(h.server.allocation_count(), 0);
    h.allocate_with(
        &client,
        client
            .req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .raw(0xC0AA, b"zz"),
    );
}

/// RFC 8489 §6.3.1 and §9.2.4: the unknown-attribute check comes after authentication, so the
/// 420 to an authenticated request is signed.
#[test]
fn unknown_attribute_in_authenticated_request_gets_signed_420() {
    // RFC 8489 §6.3.1: the unknown-attribute check comes after the authentication checks,
    // so the 420 to an authenticated request carries MESSAGE-INTEGRITY like every other
    // answer to one (and an unauthenticated one gets 401 first).
    let mut h = Harness::new();
    let c = h.client("198.51.100.2:40000", "alice");
    let r = h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .raw(0x7FAA, b"zz"),
        420,
    );
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::UNKNOWN_ATTRIBUTES, t::MESSAGE_INTEGRITY]
    );
    let r = h.call(
        c.addr,
        Req::request(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .raw(0x7FAA, b"zz"),
    );
    assert_eq!(r.error_code(), Some(401));
}

/// RFC 8489 §6.3.1: a request the server cannot process is an error response; an unknown
/// method is a 400 (Bad Request) of that method.
#[test]
fn unknown_method_is_400() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let r = h.call(c, Req::request(Method::new(0x00F).unwrap()).fingerprint());
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::FINGERPRINT]);
    // Responses and unknown indications from clients are ignored, counted.
    let mut resp = Req::request(BINDING);
    resp.class = MessageClass::SuccessResponse;
    h.send(c, resp);
    h.expect_nothing();
    h.send(c, Req::indication(BINDING));
    h.expect_nothing();
    assert_eq!(h.server.counters().unexpected_stun, 2);
}

/// STUN message type of `method` and class bits (RFC 8489 §5), by the tests' encoder.
fn message_type(method: u16, class_bits: u16) -> u16 {
    stun_encoder::message_type(stun_encoder::Class::of(class_bits), method)
}

/// RFC 8489 §5: the message type interleaves the 12 method bits with the class bits; an error
/// response carries the request's method whatever its value.
#[test]
fn error_response_to_a_method_above_0x00f_keeps_the_method() {
    // stun_codec 0.4.0's `Type::as_u16` shifts method bits 4-6 by 5 and 7-11 by 9 instead
    // of 1 and 2, so every message the core encodes for a method >= 0x010 has the wrong
    // message type. Only unknown methods are affected (all TURN methods are < 0x010).
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    for method in [0x010u16, 0x0FF, 0x800] {
        let request = stun_header(message_type(method, 0), 0, &[0x11; 12]);
        assert_eq!(h.send_bytes(c, &request), None);
        let r = h.expect_response(c, Method::new(method).unwrap());
        assert_eq!(r.error_code(), Some(400));
        let got = u16::from_be_bytes([r.bytes[0], r.bytes[1]]);
        assert_eq!(got, message_type(method, 0x0110), "method {method:#05x}");
    }
}

// ---------------------------------------------------------------------------------------
// 10. Malformed input
// ---------------------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn stun_header(message_type: u16, body_len: usize, tid: &[u8]) -> Vec<u8> {
    let mut bytes = message_type.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(body_len as u16).to_be_bytes());
    bytes.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    bytes.extend_from_slice(tid);
    bytes
}

/// RFC 8489 §6.3: a message whose first two bits are not zero, whose magic cookie is wrong, whose
/// length is not a multiple of 4 or does not match, or whose TLVs overrun, is not STUN and is
/// discarded (counted, DESIGN convention 5).
#[test]
fn malformed_datagrams_are_counted_and_dropped() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let binding = Req::request(BINDING).tid([3; 12]).build();
    let mut bad_cookie = binding.clone();
    bad_cookie[5] ^= 0xFF;
    let mut bad_length = binding.clone();
    bad_length[3] = 8;
    let mut unaligned = binding.clone();
    unaligned[3] = 2;
    unaligned.extend_from_slice(&[0, 0]);
    // A TLV whose length runs past the end of the message.
    let mut truncated_tlv = stun_header(0x0001, 8, &[4; 12]);
    truncated_tlv.extend_from_slice(&[0x80, 0x22, 0x00, 0x10, b'a', b'b', b'c', b'd']);
    let mut bad_fingerprint = Req::request(BINDING).fingerprint().tid([5; 12]).build();
    let n = bad_fingerprint.len();
    bad_fingerprint[n - 2] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![0x00]),
        ("one ChannelData byte", vec![0x40]),
        ("high first byte", vec![0x80, 0, 0, 0]),
        ("short header", binding[..19].to_vec()),
        ("bad cookie", bad_cookie),
        ("bad length", bad_length),
        ("unaligned length", unaligned),
        ("truncated TLV", truncated_tlv),
        ("bad FINGERPRINT", bad_fingerprint),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        assert_eq!(h.send_bytes(c, bytes), None, "{name}");
        h.expect_nothing();
        assert_eq!(h.server.counters().malformed, i as u64 + 1, "{name}");
    }
    assert_eq!(h.server.allocation_count(), 0);
}

/// RFC 8489 §6.3.1: a malformed request gets 400 (Bad Request), after the authentication
/// checks of §9.2.4 (so an unauthenticated one is challenged first); an indication is never
/// answered (§6.3.2), so a malformed one is silently dropped.
#[test]
fn undecodable_attribute_in_request_is_400_and_in_indication_is_dropped() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    // XOR-MAPPED-ADDRESS-like value with family 7: framing fine, attribute broken.
    let bad_peer = [0x00, 0x07, 0x00, 0x01, 1, 2, 3, 4];
    // Without credentials the request is challenged before its attributes are decoded.
    let r = h.call(
        c,
        Req::request(CREATE_PERMISSION).raw(t::XOR_PEER_ADDRESS, &bad_peer),
    );
    assert_eq!(r.error_code(), Some(401));
    // A Binding (never authenticated) gets its 400 unsigned.
    let r = h.call(c, Req::request(BINDING).raw(t::XOR_PEER_ADDRESS, &bad_peer));
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.types(), vec![t::ERROR_CODE]);
    let (_, forward) = h.send(c, Req::indication(SEND).raw(t::XOR_PEER_ADDRESS, &bad_peer));
    assert_eq!(forward, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().malformed, 1);
}

/// RFC 8489 §14.7: FINGERPRINT "MUST be the last attribute in the message"; project rule: a
/// response carries FINGERPRINT iff the request had a valid one, error responses included.
#[test]
fn bad_request_mirrors_a_valid_fingerprint() {
    // The project's rule: FINGERPRINT on a response iff the request had a valid one. A
    // request whose attributes do not decode (here CHANNEL-NUMBER 0x3FFF) had a valid
    // FINGERPRINT, checked before the attributes.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let r = h.call(
        c.addr,
        c.req(CHANNEL_BIND)
            .attr(XorPeerAddress::new(addr("8.8.8.9:1")))
            .raw(t::CHANNEL_NUMBER, &[0x3F, 0xFF, 0, 0])
            .fingerprint(),
    );
    assert_eq!(r.error_code(), Some(400));
    assert!(r.has_fingerprint(), "{:?}", r.types());
}

/// Every output must be an answer to one of the fuzz requests: a ToClient to the sender,
/// a response of the request's transaction, success only for Binding.
fn check_fuzz_outputs(outputs: &[Output], from: SocketAddr, datagram: &[u8]) {
    assert!(outputs.len() <= 1, "{outputs:?} for {datagram:02x?}");
    let Some(output) = outputs.first() else {
        return;
    };
    let Output::ToClient { client, bytes, .. } = output else {
        panic!("fuzz input caused {output:?} for {datagram:02x?}");
    };
    assert_eq!(*client, from);
    assert_eq!(datagram[0] & 0xC0, 0, "only STUN requests are answered");
    assert_eq!(bytes[8..20], datagram[8..20], "transaction id");
    // A request (class bits 00) gets a response.
    let request_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    assert_eq!(request_type & 0x0110, 0, "answered a non-request");
    let response_type = u16::from_be_bytes([bytes[0], bytes[1]]);
    // Methods from 0x010 up come back garbled: see
    // error_response_to_a_method_above_0x00f_keeps_the_method.
    if request_type & 0x3EE0 == 0 {
        assert_eq!(response_type & !0x0110, request_type, "same method");
    }
    if response_type & 0x0110 == 0x0100 {
        assert_eq!(
            request_type, 0x0001,
            "only Binding succeeds: {datagram:02x?}"
        );
    } else {
        assert_eq!(response_type & 0x0110, 0x0110, "error response");
    }
}

/// DESIGN convention 5: "work per datagram is bounded whatever the datagram says": random and
/// mutated datagrams from clients and peers are answered at most once, to their sender, and
/// create no state.
#[test]
fn random_datagrams_never_panic_or_create_state() {
    let mut h = Harness::new();
    // A live allocation with a channel, so the fuzz runs past a populated server.
    let owner = h.client("198.51.100.200:40000", "owner");
    let a = h.allocate(&owner);
    h.channel_bind(&owner, 0x4000, addr("8.8.8.9:1"));

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let known_types: [u16; 24] = [
        0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015,
        0x0016, 0x0017, 0x0018, 0x0019, 0x001A, 0x0020, 0x0022, 0x8000, 0x8022, 0x8028, 0x7FAA,
        0xC0AA, 0x0003,
    ];
    let methods: [u16; 8] = [0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0x0FF];
    let mut answered = 0;
    for round in 0..5000u32 {
        // 20 datagrams a second over four sources: below the limit on unauthenticated
        // answers, so every request that deserves an answer gets one.
        h.set_time_ms(u64::from(round) * 50);
        let from = SocketAddr::new(
            IpAddr::from([198, 51, 100, (rng.below(4) + 1) as u8]),
            40000 + rng.below(3) as u16,
        );
        let datagram = match round % 5 {
            0 => {
                let len = rng.below(120) as usize;
                rng.bytes(len)
            }
            1 => {
                // ChannelData-looking frames.
                let len = rng.below(40) as usize;
                let mut d = rng.bytes(len + 4);
                d[0] = 0x40 | (d[0] & 0x0F);
                d
            }
            2 => {
                // A valid header around random attribute bytes.
                let body = (rng.below(30) * 4) as usize;
                let tid = rng.bytes(12);
                let class_bits = [0x0000u16, 0x0010, 0x0100, 0x0110][rng.below(4) as usize];
                let m = methods[rng.below(methods.len() as u64) as usize];
                let mut d = stun_header(message_type(m, class_bits), body, &tid);
                d.extend(rng.bytes(body));
                d
            }
            _ => {
                // Well-framed TLVs of known (and unknown) types with random values, maybe
                // followed by MESSAGE-INTEGRITY and a valid FINGERPRINT.
                let tid = rng.bytes(12);
                let m = methods[rng.below(methods.len() as u64) as usize];
                let class_bits = if rng.below(4) == 0 { 0x0010 } else { 0x0000 };
                let mut d = stun_header(message_type(m, class_bits), 0, &tid);
                for _ in 0..rng.below(6) {
                    let kind = known_types[rng.below(known_types.len() as u64) as usize];
                    let len = match rng.below(3) {
                        0 => rng.below(4),
                        1 => [4, 8, 20][rng.below(3) as usize],
                        _ => rng.below(40),
                    } as usize;
                    let value = rng.bytes(len);
                    stun_client::append_raw(&mut d, kind, &value);
                }
                let mut d = stun_encoder::Encoder::resume(d);
                if rng.below(3) == 0 {
                    d.integrity(&[9; 16]);
                }
                if rng.below(2) == 0 {
                    d.fingerprint();
                }
                d.bytes()
            }
        };
        let forward = h.send_bytes(from, &datagram);
        assert_eq!(
            forward, None,
            "fuzz from a client without allocation forwarded"
        );
        let outputs = h.drain();
        check_fuzz_outputs(&outputs, from, &datagram);
        answered += outputs.len();
    }
    // Random datagrams from peers without permission.
    for _ in 0..1000 {
        let len = rng.below(200) as usize;
        let payload = rng.bytes(len);
        let from = SocketAddr::new(IpAddr::from([203, 0, 113, rng.below(250) as u8]), 9);
        assert!(h.peer(a.id, from, &payload).is_none());
    }
    let counters = h.server.counters();
    assert!(counters.malformed > 1000, "{counters:?}");
    assert!(
        answered > 500,
        "some fuzz requests were answered: {answered}"
    );
    assert_eq!(counters.peer_no_permission, 1000);
    assert_eq!(counters.relayed_to_peer_packets, 0);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    assert_eq!(h.server.counters().allocations_created, 1);
    // The owner's allocation is untouched.
    assert!(h.channel_data(owner.addr, 0x4000, b"still here").is_some());
}
