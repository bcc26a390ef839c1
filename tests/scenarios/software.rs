//! SOFTWARE (RFC 8489 §14.14, `--software`): in every response signed with the client's key,
//! never in an unauthenticated answer (Binding, 401), which stays byte for byte what it is
//! without it, so the 3x bound on what a spoofed source can reflect is untouched.

use stun_codec::rfc5389::attributes::Software;

use crate::harness::*;

fn with_software(text: &str) -> Harness {
    let mut config = config();
    config.software = Some(text.to_owned());
    Harness::with_config(config)
}

fn software_of(r: &Response) -> Option<String> {
    r.get::<Software>().map(|s| s.description().to_owned())
}

#[test]
fn software_is_in_signed_responses_only() {
    let text = "relay-test/1.0";
    let mut h = with_software(text);
    let from = addr("198.51.100.1:40000");
    let r = h.call(from, Req::request(BINDING));
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS]);
    let r = h.call(
        from,
        Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_eq!(r.error_code(), Some(401));
    assert_eq!(software_of(&r), None);

    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    assert_eq!(software_of(&a.response).as_deref(), Some(text));
    let r = h.ok(&c, c.req(REFRESH));
    assert_eq!(
        r.types(),
        vec![t::LIFETIME, t::SOFTWARE, t::MESSAGE_INTEGRITY]
    );
    assert_eq!(software_of(&r).as_deref(), Some(text));
    // A signed error: a second Allocate on the same 5-tuple.
    let r = h.fails(&c, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)), 437);
    assert_eq!(software_of(&r).as_deref(), Some(text));
}

#[test]
fn no_software_by_default() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    assert_eq!(software_of(&a.response), None);
    let r = h.ok(&c, c.req(REFRESH));
    assert_eq!(r.types(), vec![t::LIFETIME, t::MESSAGE_INTEGRITY]);
}

/// The longest SOFTWARE the CLI takes (127 characters of 4 bytes each) leaves the
/// unauthenticated answers as they are, and goes out whole in signed ones.
#[test]
fn the_longest_software_leaves_unauthenticated_answers_unchanged() {
    let longest = "😀".repeat(127);
    let mut plain = Harness::new();
    let mut with = with_software(&longest);
    let from = addr("198.51.100.1:40000");
    let unauthenticated = [
        Req::request(BINDING),
        Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
        Req::request(REFRESH),
    ];
    for req in unauthenticated {
        let a = plain.call(from, req.clone());
        let b = with.call(from, req);
        assert_eq!(a.bytes, b.bytes);
    }
    let c = with.client("198.51.100.1:40000", "alice");
    let a = with.allocate(&c);
    assert_eq!(software_of(&a.response), Some(longest));
}
