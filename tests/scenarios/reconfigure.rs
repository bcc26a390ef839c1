//! `Server::reconfigure` (SIGHUP): the new secrets, peer policy and quotas hold for the next
//! request; every allocation, its channels and its relay socket stay; what is bound to
//! sockets (listeners, relay addresses, ports) is kept whatever the new configuration says.

use relay::core::cidr::Cidr;

use crate::harness::*;

#[test]
fn reconfigure_swaps_secret_policy_and_quota_and_keeps_every_allocation() {
    let mut h = Harness::new();
    let old = h.client("198.51.100.1:40000", "alice");
    let allocated = h.allocate(&old);
    let peer = addr("8.8.8.9:7000");
    h.channel_bind(&old, 0x4000, peer);

    let before = h.server.config().clone();
    h.server.reconfigure(Config {
        auth_secrets: vec![SECRET2.to_vec()],
        deny_peers: vec!["8.8.8.0/24".parse::<Cidr>().unwrap()],
        max_allocations_per_user: 1,
        // Bound to sockets: ignored.
        listeners: vec![addr("192.0.2.99:1")],
        relay_v4: None,
        ports: 1..=2,
        ..config()
    });
    h.assert_drained();
    let now = h.server.config();
    assert_eq!(now.listeners, before.listeners);
    assert_eq!(now.relay_v4, before.relay_v4);
    assert_eq!(now.ports, before.ports);
    assert_eq!(now.auth_secrets, vec![SECRET2.to_vec()]);

    // The allocation relays on, even to a peer the new policy denies for new permissions.
    let forward = h.channel_data(old.addr, 0x4000, b"still relaying");
    assert_eq!(forward, Some(forward_to(&allocated, peer, 4..18)));
    assert_eq!(h.server.allocation_count(), 1);

    // Credentials from the old secret: 401, nothing created.
    let stale = h.client("198.51.100.2:40000", "bob");
    let r = h.call(
        stale.addr,
        stale.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_challenge_with(&h, &r, 401, 1);

    // The new secret allocates, from the old relay address and ports; the new deny list
    // and the new quota hold.
    let mut fresh = h.client("198.51.100.3:40000", "carol");
    fresh.creds = Creds::rest(SECRET2, UNIX0 + 3600, "carol", REALM);
    let second = h.allocate(&fresh);
    assert_eq!(second.relayed.ip(), relay_public());
    h.fails(
        &fresh,
        fresh.req(CREATE_PERMISSION).attr(XorPeerAddress::new(peer)),
        403,
    );
    let mut again = h.client("198.51.100.4:40000", "carol");
    again.creds = fresh.creds.clone();
    h.fails(
        &again,
        again.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
        486,
    );
    assert_eq!(h.server.allocation_count(), 2);
}
