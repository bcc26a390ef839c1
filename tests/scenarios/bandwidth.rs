//! Bandwidth limits (`--max-bps-per-allocation`, `--max-bps-per-user`, `--max-bps-total`;
//! RFC 8656 §5 recommends a per-user one): token buckets over relayed payload bytes, both
//! directions from the same bucket, refilled by the injected time. At 8 Mbit/s a bucket
//! holds 100 ms of traffic: 100 000 bytes, refilled at 1 000 bytes per millisecond.

use relay::core::{BandwidthLimits, Counters};

use crate::harness::*;

const EIGHT_MBIT: Option<u64> = Some(8_000_000);
const KB: [u8; 1000] = [0x5a; 1000];

fn limited(bandwidth: BandwidthLimits) -> Harness {
    Harness::with_config(Config {
        bandwidth,
        ..config()
    })
}

/// An allocation of `id` from `from` with a channel 0x4000 to (and a permission for) `peer`.
fn allocate_with_channel(
    h: &mut Harness,
    from: &str,
    id: &str,
    peer: SocketAddr,
) -> (Client, Allocated) {
    let c = h.client(from, id);
    let a = h.allocate(&c);
    h.channel_bind(&c, 0x4000, peer);
    (c, a)
}

/// 1 000-byte datagrams from the client until one is dropped: how many passed.
fn send_until_dropped(h: &mut Harness, c: &Client) -> usize {
    (0..)
        .take_while(|_| h.channel_data(c.addr, 0x4000, &KB).is_some())
        .count()
}

fn drops(h: &Harness) -> [u64; 3] {
    let c: &Counters = h.server.counters();
    [
        c.bandwidth_per_allocation,
        c.bandwidth_per_user,
        c.bandwidth_total,
    ]
}

/// The burst passes, the next datagram does not, in either direction; time refills the
/// bucket at the rate; another allocation of the same user has its own bucket.
#[test]
fn per_allocation_limit_counts_both_directions() {
    let mut h = limited(BandwidthLimits {
        per_allocation: EIGHT_MBIT,
        ..BandwidthLimits::default()
    });
    let peer = addr("8.8.8.9:7000");
    let (c, a) = allocate_with_channel(&mut h, "198.51.100.1:40000", "alice", peer);
    // 60 kB to the peer and 40 kB from it: exactly the burst.
    for _ in 0..60 {
        assert_eq!(
            h.channel_data(c.addr, 0x4000, &KB),
            Some(forward_to(&a, peer, 4..1004))
        );
    }
    for _ in 0..40 {
        assert!(h.peer(a.id, peer, &KB).is_some());
    }
    // One byte past it: dropped both ways, counted, nothing sent.
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.peer(a.id, peer, b"x"), None);
    // A Send indication is relayed data too.
    let send = Req::indication(SEND)
        .attr(XorPeerAddress::new(peer))
        .attr(Data::new(b"x".to_vec()).unwrap());
    assert_eq!(h.send(c.addr, send.clone()).1, None);
    h.expect_nothing();
    assert_eq!(drops(&h), [3, 0, 0]);
    // Control messages are not limited.
    h.create_permission(&c, &[addr("8.8.8.9:0")]);
    // 5 ms refill 5 000 bytes: five datagrams, not six.
    h.set_time_ms(5);
    assert_eq!(send_until_dropped(&mut h, &c), 5);
    // 1 ms later: one more, in either direction.
    h.set_time_ms(6);
    assert!(h.peer(a.id, peer, &KB).is_some());
    assert_eq!(h.peer(a.id, peer, &KB), None);
    assert_eq!(drops(&h), [5, 0, 0]);
    // Idle for long, the bucket is full again, not fuller.
    h.set_time(10);
    assert!(h.send(c.addr, send).1.is_some());
    h.expect_nothing();
    assert_eq!(send_until_dropped(&mut h, &c), 99);
    // Another allocation of the same user is not held back.
    let (c2, _) = allocate_with_channel(&mut h, "198.51.100.1:40001", "alice", peer);
    assert_eq!(send_until_dropped(&mut h, &c2), 100);
    let counters = h.server.counters();
    assert_eq!(counters.relayed_to_peer_packets, 60 + 5 + 1 + 99 + 100);
    assert_eq!(counters.relayed_to_client_packets, 40 + 1);
    assert_eq!(drops(&h), [7, 0, 0]);
}

/// The allocations of one user (the `<id>` of the REST username) share one bucket; another
/// user has their own.
#[test]
fn per_user_limit_is_shared_by_the_users_allocations() {
    let mut h = limited(BandwidthLimits {
        per_user: EIGHT_MBIT,
        ..BandwidthLimits::default()
    });
    let peer = addr("8.8.8.9:7000");
    let (c1, a1) = allocate_with_channel(&mut h, "198.51.100.1:40000", "alice", peer);
    let (c2, a2) = allocate_with_channel(&mut h, "198.51.100.2:40000", "alice", peer);
    let (bob, _) = allocate_with_channel(&mut h, "198.51.100.3:40000", "bob", peer);
    for _ in 0..30 {
        assert!(h.channel_data(c1.addr, 0x4000, &KB).is_some());
        assert!(h.peer(a2.id, peer, &KB).is_some());
    }
    for _ in 0..20 {
        assert!(h.peer(a1.id, peer, &KB).is_some());
        assert!(h.channel_data(c2.addr, 0x4000, &KB).is_some());
    }
    assert_eq!(h.channel_data(c1.addr, 0x4000, b"x"), None);
    assert_eq!(h.peer(a2.id, peer, b"x"), None);
    assert_eq!(drops(&h), [0, 2, 0]);
    assert_eq!(send_until_dropped(&mut h, &bob), 100);
    h.set_time_ms(2);
    assert_eq!(send_until_dropped(&mut h, &c2), 2);
    assert_eq!(drops(&h), [0, 4, 0]);
}

/// The total is shared by every user; the first level that is short is the one counted.
#[test]
fn total_limit_is_shared_by_all_users() {
    let mut h = limited(BandwidthLimits {
        per_allocation: Some(80_000_000),
        per_user: Some(80_000_000),
        total: EIGHT_MBIT,
    });
    let peer = addr("8.8.8.9:7000");
    let (alice, a) = allocate_with_channel(&mut h, "198.51.100.1:40000", "alice", peer);
    let (bob, b) = allocate_with_channel(&mut h, "198.51.100.2:40000", "bob", peer);
    let (carol, _) = allocate_with_channel(&mut h, "198.51.100.3:40000", "carol", peer);
    for _ in 0..25 {
        assert!(h.channel_data(alice.addr, 0x4000, &KB).is_some());
        assert!(h.peer(a.id, peer, &KB).is_some());
        assert!(h.channel_data(bob.addr, 0x4000, &KB).is_some());
        assert!(h.peer(b.id, peer, &KB).is_some());
    }
    assert_eq!(h.channel_data(carol.addr, 0x4000, b"x"), None);
    assert_eq!(h.peer(b.id, peer, b"x"), None);
    assert_eq!(drops(&h), [0, 0, 2]);
    h.set_time_ms(10);
    assert_eq!(send_until_dropped(&mut h, &carol), 10);
    assert_eq!(drops(&h), [0, 0, 3]);
}

/// Without limits nothing is dropped, however much is relayed at one instant.
#[test]
fn unlimited_by_default() {
    let mut h = Harness::new();
    let peer = addr("8.8.8.9:7000");
    let (c, a) = allocate_with_channel(&mut h, "198.51.100.1:40000", "alice", peer);
    for _ in 0..1000 {
        assert!(h.channel_data(c.addr, 0x4000, &KB).is_some());
        assert!(h.peer(a.id, peer, &KB).is_some());
    }
    assert_eq!(drops(&h), [0, 0, 0]);
}

/// A peer datagram the relay cannot deliver (too large for a Data indication) takes nothing
/// from the buckets: only what is relayed counts.
#[test]
fn an_undeliverable_peer_datagram_is_not_charged() {
    let mut h = limited(BandwidthLimits {
        // The smallest bucket: one full-size datagram (65 535 bytes), refilled at 1 kB/s.
        per_allocation: Some(8_000),
        ..BandwidthLimits::default()
    });
    let peer = addr("8.8.8.9:7000");
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    h.create_permission(&c, &[addr("8.8.8.9:0")]);
    // 65 520 bytes do not fit a Data indication (16 bytes of attributes over 65 535).
    assert_eq!(h.peer(a.id, peer, &[0x5a; 65_520]), None);
    assert_eq!(h.server.counters().peer_too_large, 1);
    // The bucket is still full: 65 datagrams of 1 000 bytes pass.
    let passed = (0..)
        .take_while(|_| h.peer(a.id, peer, &KB).is_some())
        .count();
    assert_eq!(passed, 65);
    assert_eq!(drops(&h), [1, 0, 0]);
}
