//! Known answers for the tests' own STUN encoder (`tests/support/stun_encoder.rs`): the
//! test vectors of RFC 5769 and RFC 2202, byte for byte, so that an encoder bug cannot
//! hide itself behind the same bug in the core.

use std::net::SocketAddr;

use crate::stun_encoder::{
    Class, Encoder, fingerprint_valid, hmac_sha1, integrity_valid, kind, long_term_key,
    message_type, method_of, rest_password, tlvs, xor_address, xor_address_decode,
};

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn tid(s: &str) -> [u8; 12] {
    hex(s).try_into().unwrap()
}

/// RFC 5769 §2.1, Sample Request (short-term credentials, password below).
const SAMPLE_REQUEST: &str = "
    0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
    8022 0010 5354554e 20746573 7420636c 69656e74
    0024 0004 6e0001ff
    8029 0008 932ff9b1 51263b36
    0006 0009 6576746a 3a683676 59202020
    0008 0014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
    8028 0004 e57a3bcf";
/// RFC 5769 §2.2, Sample IPv4 Response: 192.0.2.1 port 32853.
const SAMPLE_IPV4_RESPONSE: &str = "
    0101 003c 2112a442 b7e7a701 bc34d686 fa87dfae
    8022 000b 74657374 20766563 746f7220
    0020 0008 0001a147 e112a643
    0008 0014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
    8028 0004 c07d4c96";
/// RFC 5769 §2.3, Sample IPv6 Response: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
const SAMPLE_IPV6_RESPONSE: &str = "
    0101 0048 2112a442 b7e7a701 bc34d686 fa87dfae
    8022 000b 74657374 20766563 746f7220
    0020 0014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
    0008 0014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
    8028 0004 c8fb0b4c";
/// RFC 5769 §2.4, Sample Request with Long-Term Authentication.
const SAMPLE_LONG_TERM_REQUEST: &str = "
    0001 0060 2112a442 78ad3433 c6ad72c0 29da412e
    0006 0012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
    0015 001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
    0014 000b 6578616d 706c652e 6f726700
    0008 0014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666";

const SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
/// "マトリックス", unchanged by SASLprep.
const LONG_TERM_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep.
const LONG_TERM_PASSWORD: &str = "TheMatrIX";

/// RFC 5769 §2.1: "The message uses the padding byte 0x20" — header, TLVs, padding,
/// MESSAGE-INTEGRITY (short-term key = the password) and FINGERPRINT, byte for byte.
#[test]
fn rfc5769_sample_request_is_reproduced() {
    let mut m = Encoder::new(Class::Request, 0x001, tid("b7e7a701bc34d686fa87dfae")).padding(0x20);
    m.tlv(kind::SOFTWARE, b"STUN test client")
        .tlv(kind::PRIORITY, &hex("6e0001ff"))
        .tlv(kind::ICE_CONTROLLED, &hex("932ff9b151263b36"))
        .tlv(kind::USERNAME, b"evtj:h6vY")
        .integrity(SHORT_TERM_PASSWORD.as_bytes())
        .fingerprint();
    assert_eq!(m.bytes(), hex(SAMPLE_REQUEST));
}

/// RFC 5769 §2.2 and §2.3: XOR-MAPPED-ADDRESS for IPv4 and IPv6 (the IPv6 one XORed with
/// the transaction ID too), then MESSAGE-INTEGRITY and FINGERPRINT of a success response.
#[test]
fn rfc5769_sample_responses_are_reproduced() {
    let id = tid("b7e7a701bc34d686fa87dfae");
    for (mapped, vector) in [
        ("192.0.2.1:32853", SAMPLE_IPV4_RESPONSE),
        (
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            SAMPLE_IPV6_RESPONSE,
        ),
    ] {
        let mapped: SocketAddr = mapped.parse().unwrap();
        let mut m = Encoder::new(Class::Success, 0x001, id).padding(0x20);
        m.tlv(kind::SOFTWARE, b"test vector")
            .tlv(kind::XOR_MAPPED_ADDRESS, &xor_address(mapped, &id))
            .integrity(SHORT_TERM_PASSWORD.as_bytes())
            .fingerprint();
        let vector = hex(vector);
        assert_eq!(m.bytes(), vector, "{mapped}");
        // And read back: the checks the tests run on the core's answers.
        let attrs = tlvs(&vector).unwrap();
        assert_eq!(attrs[1].0, kind::XOR_MAPPED_ADDRESS);
        assert_eq!(xor_address_decode(&attrs[1].1, &id), Some(mapped));
        assert!(integrity_valid(&vector, SHORT_TERM_PASSWORD.as_bytes()));
        assert!(!integrity_valid(&vector, b"another password"));
        assert_eq!(fingerprint_valid(&vector), Some(true));
        let mut flipped = vector.clone();
        flipped[30] ^= 0x01;
        assert!(!integrity_valid(&flipped, SHORT_TERM_PASSWORD.as_bytes()));
        assert_eq!(fingerprint_valid(&flipped), Some(false));
        let message_type = u16::from_be_bytes([vector[0], vector[1]]);
        assert_eq!(
            (Class::of(message_type), method_of(message_type)),
            (Class::Success, 0x001)
        );
    }
}

/// RFC 5769 §2.4: the long-term key MD5(username ":" realm ":" password) (RFC 8489
/// §9.2.2) signs USERNAME, NONCE and REALM (zero padding) into the vector's MAC.
#[test]
fn rfc5769_long_term_request_is_reproduced() {
    let key = long_term_key(LONG_TERM_USERNAME, "example.org", LONG_TERM_PASSWORD);
    let mut m = Encoder::new(Class::Request, 0x001, tid("78ad3433c6ad72c029da412e"));
    m.tlv(kind::USERNAME, LONG_TERM_USERNAME.as_bytes())
        .tlv(kind::NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
        .tlv(kind::REALM, b"example.org")
        .integrity(&key);
    let vector = hex(SAMPLE_LONG_TERM_REQUEST);
    assert_eq!(m.bytes(), vector);
    assert!(integrity_valid(&vector, &key));
    assert_eq!(fingerprint_valid(&vector), None);
}

/// RFC 2202 §3, HMAC-SHA1 test case 2, and the TURN REST API password built on it:
/// base64(HMAC-SHA1(secret, username)).
#[test]
fn hmac_sha1_and_rest_password_known_answers() {
    assert_eq!(
        hmac_sha1(b"Jefe", b"what do ya want for nothing?").to_vec(),
        hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
    );
    assert_eq!(
        rest_password(b"Jefe", "what do ya want for nothing?"),
        "7/zfauXrL6LSdBbV8YTfnCWafHk="
    );
}

/// RFC 8656 §17 and RFC 8489 §5: the message types of the TURN methods in each class.
#[test]
fn message_types_interleave_method_and_class_bits() {
    for (class, method, expected) in [
        (Class::Request, 0x001, 0x0001),
        (Class::Success, 0x001, 0x0101),
        (Class::Error, 0x001, 0x0111),
        (Class::Request, 0x003, 0x0003),
        (Class::Success, 0x003, 0x0103),
        (Class::Error, 0x003, 0x0113),
        (Class::Request, 0x004, 0x0004),
        (Class::Indication, 0x006, 0x0016),
        (Class::Indication, 0x007, 0x0017),
        (Class::Request, 0x008, 0x0008),
        (Class::Request, 0x009, 0x0009),
        (Class::Success, 0xFFF, 0x3FEF),
    ] {
        assert_eq!(
            message_type(class, method),
            expected,
            "{class:?} {method:#x}"
        );
        assert_eq!(Class::of(expected), class);
        assert_eq!(method_of(expected), method);
    }
}
