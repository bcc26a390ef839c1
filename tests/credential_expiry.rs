//! Issue 10, item 6, through the real binary: a call outlives its credentials. Issuers mint
//! short REST credentials that only need to hold at set-up; the relay judges the expiry when
//! the allocation is created, and the allocation goes on refreshing and relaying with that
//! username (as coturn and eturnal do). `--strict-credential-expiry` ends it at the expiry.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::time::Duration;

use crate::stun_encoder::codec::Attribute;
use crate::stun_encoder::rest_password as rest_api_password;
use common::{Client, RelayProcess, channel_data, peer_socket};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, REFRESH};

/// The credentials expire this long after they were minted.
const VALID_FOR: u64 = 2;

fn relay(extra: &[&str]) -> RelayProcess {
    let (lowest, highest) = common::free_port_range(8);
    let mut args = vec![
        "--auth-secret",
        common::SECRET,
        "--allow-loopback-peers",
        "--lowest-port",
    ];
    let (lowest, highest) = (lowest.to_string(), highest.to_string());
    args.extend([lowest.as_str(), "--highest-port", highest.as_str()]);
    args.extend_from_slice(extra);
    RelayProcess::start(&args)
}

/// A client holding credentials that expire `VALID_FOR` seconds from now, allocated, with
/// a channel to `peer`; returns it and its relayed address.
fn call_with_short_credentials(
    relay: &RelayProcess,
    peer: std::net::SocketAddr,
) -> (Client, std::net::SocketAddr) {
    let username = format!("{}:short", common::unix_now() + VALID_FOR);
    let password = rest_api_password(common::SECRET.as_bytes(), &username);
    let mut client = Client::new(relay.addr, &username, &password);
    let r = client.authenticated(
        ALLOCATE,
        vec![Attribute::RequestedTransport(RequestedTransport::new(17))],
    );
    assert_eq!(
        r.class(),
        MessageClass::SuccessResponse,
        "{:?}",
        r.error_code()
    );
    let relayed = r.get::<XorRelayAddress>().expect("relayed").address();
    let r = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(0x4000).expect("channel")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer)),
        ],
    );
    assert_eq!(
        r.class(),
        MessageClass::SuccessResponse,
        "{:?}",
        r.error_code()
    );
    (client, relayed)
}

/// One datagram each way over the channel.
fn relays_both_ways(client: &Client, peer: &std::net::UdpSocket, relayed: std::net::SocketAddr) {
    client
        .socket
        .send_to(&channel_data(0x4000, b"to peer"), client.server)
        .expect("send");
    let mut buf = [0u8; 64];
    let (len, from) = peer.recv_from(&mut buf).expect("peer receives");
    assert_eq!((&buf[..len], from), (&b"to peer"[..], relayed));
    peer.send_to(b"to client", relayed).expect("peer sends");
    assert_eq!(
        client.recv_datagram(),
        channel_data(0x4000, b"to client"),
        "ChannelData to the client"
    );
}

fn wait_past_expiry() {
    std::thread::sleep(Duration::from_secs(VALID_FOR + 1) + Duration::from_millis(500));
}

#[test]
fn a_call_goes_on_after_its_credentials_expire() {
    let relay = relay(&[]);
    let peer = peer_socket();
    let (mut client, relayed) = call_with_short_credentials(&relay, peer.local_addr().unwrap());
    relays_both_ways(&client, &peer, relayed);
    wait_past_expiry();
    // The browser's periodic Refresh with the same (now expired) username: accepted.
    let r = client.authenticated(REFRESH, vec![Attribute::Lifetime(Lifetime::from_u32(600))]);
    assert_eq!(
        r.class(),
        MessageClass::SuccessResponse,
        "{:?}",
        r.error_code()
    );
    // The channel is refreshed too, and data keeps flowing.
    let r = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(0x4000).expect("channel")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer.local_addr().unwrap())),
        ],
    );
    assert_eq!(
        r.class(),
        MessageClass::SuccessResponse,
        "{:?}",
        r.error_code()
    );
    relays_both_ways(&client, &peer, relayed);
    // The expired username cannot start another allocation.
    let mut late = Client::new(relay.addr, &client.username, &client.password);
    let r = late.request(
        ALLOCATE,
        vec![Attribute::RequestedTransport(RequestedTransport::new(17))],
    );
    assert_eq!(r.error_code(), Some(401));
    late.nonce = Some(
        r.get::<stun_codec::rfc5389::attributes::Nonce>()
            .expect("nonce")
            .value()
            .to_owned(),
    );
    let r = late.request(
        ALLOCATE,
        vec![Attribute::RequestedTransport(RequestedTransport::new(17))],
    );
    assert_eq!(r.error_code(), Some(401), "expired username allocated");
}

#[test]
fn strict_credential_expiry_refuses_requests_after_the_expiry() {
    let relay = relay(&["--strict-credential-expiry"]);
    let peer = peer_socket();
    let (mut client, relayed) = call_with_short_credentials(&relay, peer.local_addr().unwrap());
    relays_both_ways(&client, &peer, relayed);
    wait_past_expiry();
    let r = client.request(REFRESH, vec![Attribute::Lifetime(Lifetime::from_u32(600))]);
    assert_eq!(r.error_code(), Some(401));
}
