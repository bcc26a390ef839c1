//! The door to new allocations (drain before stopping, a portal not yet initialised):
//! RFC 8656 §7.2 lets a server refuse an Allocate with 508 (Insufficient Capacity); RFC 8489
//! §10 redirects a client with 300 (Try Alternate) and ALTERNATE-SERVER. What is already
//! allocated goes on.

use relay::core::Availability;

use crate::harness::*;
use crate::stun_client::raw_attributes;

const ALTERNATE_SERVER: u16 = 0x8023;

/// While not serving, a new Allocate gets 508 (no alternate) or 300 with the alternate's
/// address, signed; the allocation made before keeps refreshing and relaying; opening the
/// door again allocates as usual.
#[test]
fn closed_door_refuses_new_allocations_and_keeps_the_old_ones() {
    let mut h = Harness::new();
    let old = h.client("198.51.100.1:40000", "alice");
    let allocated = h.allocate(&old);
    let peer = addr("8.8.8.9:7000");
    h.channel_bind(&old, 0x4000, peer);

    let newcomer = h.client("198.51.100.2:40000", "bob");
    let allocate = || newcomer.req(ALLOCATE).attr(RequestedTransport::new(UDP));

    h.server.set_availability(Availability::NotReady);
    let r = h.fails(&newcomer, allocate(), 508);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);

    h.server
        .set_availability(Availability::Draining { alternate: None });
    h.fails(&newcomer, allocate(), 508);

    let alternate = addr("192.0.2.7:3478");
    h.server.set_availability(Availability::Draining {
        alternate: Some(alternate),
    });
    let r = h.fails(&newcomer, allocate(), 300);
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, ALTERNATE_SERVER, t::MESSAGE_INTEGRITY]
    );
    // ALTERNATE-SERVER is a plain (not XOR-ed) address: family 1, port, IPv4.
    let value = raw_attributes(&r.bytes)
        .into_iter()
        .find(|(kind, _)| *kind == ALTERNATE_SERVER)
        .map(|(_, value)| value);
    assert_eq!(value, Some(vec![0, 1, 0x0D, 0x96, 192, 0, 2, 7]));
    assert!(h.server.allocation_count() == 1, "no allocation was made");

    // The old allocation: Refresh, and ChannelData both ways.
    let r = h.ok(&old, old.req(REFRESH).attr(Lifetime::from_u32(600)));
    assert_eq!(lifetime_of(&r), 600);
    let forward = h.channel_data(old.addr, 0x4000, b"still relaying");
    assert_eq!(forward, Some(forward_to(&allocated, peer, 4..18)));

    h.server.set_availability(Availability::Serving);
    h.allocate(&newcomer);
}
