//! Draining through the real binary: SIGUSR1 (or SIGTERM with --drain-seconds) closes the
//! door (/healthz 503, new Allocates 508, or 300 with ALTERNATE-SERVER) while the existing
//! allocation goes on refreshing and relaying; the relay exits 0 once it ends or at the
//! deadline, and at once on a second SIGTERM.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::stun_encoder::codec::Attribute;
use common::{Client, RelayProcess, channel_data, credentials, http_get, peer_socket};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, REFRESH};

fn udp() -> Attribute {
    Attribute::RequestedTransport(RequestedTransport::new(17))
}

fn start(extra: &[&str]) -> (RelayProcess, SocketAddr) {
    let (lowest, highest) = common::free_port_range_args(20);
    let mut args = vec![
        "--auth-secret",
        common::SECRET,
        "--allow-loopback-peers",
        "--metrics-addr",
        "127.0.0.1:0",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ];
    args.extend_from_slice(extra);
    let mut relay = RelayProcess::start(&args);
    let metrics = relay.metrics_addr();
    (relay, metrics)
}

/// An allocation with channel 0x4001 bound to a fresh peer.
fn allocation(relay: SocketAddr) -> (Client, UdpSocket, SocketAddr) {
    let (username, password) = credentials("alice");
    let mut client = Client::new(relay, &username, &password);
    let relayed = client
        .authenticated(ALLOCATE, vec![udp()])
        .get::<XorRelayAddress>()
        .expect("allocated")
        .address();
    let peer = peer_socket();
    let bind = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(0x4001).expect("number")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer.local_addr().expect("peer"))),
        ],
    );
    assert_eq!(bind.class(), MessageClass::SuccessResponse);
    (client, peer, relayed)
}

fn assert_relays_both_ways(
    client: &Client,
    relay: SocketAddr,
    peer: &UdpSocket,
    relayed: SocketAddr,
) {
    client
        .socket
        .send_to(&channel_data(0x4001, b"to peer"), relay)
        .expect("send");
    let mut buf = [0u8; 256];
    let (len, from) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!((from, &buf[..len]), (relayed, &b"to peer"[..]));
    peer.send_to(b"to client", relayed).expect("peer send");
    assert_eq!(client.recv_datagram(), channel_data(0x4001, b"to client"));
}

fn refresh(client: &mut Client, seconds: u32) -> MessageClass {
    let lifetime = Lifetime::new(Duration::from_secs(u64::from(seconds))).expect("lifetime");
    client
        .authenticated(REFRESH, vec![Attribute::Lifetime(lifetime)])
        .class()
}

/// A new client's Allocate: its error code and the raw response.
fn new_allocate(relay: SocketAddr) -> (Option<u16>, Vec<u8>) {
    let (username, password) = credentials("bob");
    let mut client = Client::new(relay, &username, &password);
    let response = client.authenticated(ALLOCATE, vec![udp()]);
    (response.error_code(), response.bytes)
}

/// The value of attribute `kind` in a STUN message, if present.
fn attribute(message: &[u8], kind: u16) -> Option<&[u8]> {
    let mut at = 20;
    while at + 4 <= message.len() {
        let t = u16::from_be_bytes([message[at], message[at + 1]]);
        let len = usize::from(u16::from_be_bytes([message[at + 2], message[at + 3]]));
        let value = message.get(at + 4..at + 4 + len)?;
        if t == kind {
            return Some(value);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[test]
fn sigusr1_drains_keeps_the_allocation_relaying_and_exits_0_once_it_is_deleted() {
    let (mut relay, metrics) = start(&[]);
    let (mut client, peer, relayed) = allocation(relay.addr);
    assert_eq!(http_get(metrics, "/healthz").0, 200);

    relay.signal(libc::SIGUSR1);
    relay.wait_for_log("SIGUSR1: draining 1 allocations: new Allocates get 508");
    assert_eq!(http_get(metrics, "/healthz").0, 503);
    assert_eq!(new_allocate(relay.addr).0, Some(508));
    assert_relays_both_ways(&client, relay.addr, &peer, relayed);
    assert_eq!(refresh(&mut client, 600), MessageClass::SuccessResponse);
    assert_relays_both_ways(&client, relay.addr, &peer, relayed);

    // A second SIGUSR1 changes nothing; deleting the last allocation ends the drain.
    relay.signal(libc::SIGUSR1);
    assert_eq!(refresh(&mut client, 0), MessageClass::SuccessResponse);
    assert!(relay.wait_exit().success());
    relay.wait_for_log("drain done: every allocation has ended");
}

#[test]
fn sigterm_with_drain_seconds_redirects_to_the_alternate_and_exits_0_at_the_deadline() {
    let (mut relay, metrics) = start(&[
        "--drain-seconds",
        "2",
        "--alternate-server",
        "192.0.2.7:3478",
    ]);
    let (client, peer, relayed) = allocation(relay.addr);
    let started = Instant::now();
    relay.signal(libc::SIGTERM);
    relay.wait_for_log("SIGTERM: draining 1 allocations: new Allocates get 300 with ALTERNATE-SERVER 192.0.2.7:3478");
    assert_eq!(http_get(metrics, "/healthz").0, 503);
    let (code, response) = new_allocate(relay.addr);
    assert_eq!(code, Some(300));
    // ALTERNATE-SERVER (0x8023): family IPv4, port 3478, 192.0.2.7, not XOR-ed.
    assert_eq!(
        attribute(&response, 0x8023),
        Some(&[0, 1, 0x0d, 0x96, 192, 0, 2, 7][..])
    );
    assert_relays_both_ways(&client, relay.addr, &peer, relayed);

    assert!(relay.wait_exit().success());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "exited after {waited:?}"
    );
    relay.wait_for_log("drain deadline passed: closing 1 allocations");
}

#[test]
fn a_second_sigterm_during_the_drain_exits_at_once() {
    let (mut relay, _) = start(&["--drain-seconds", "60"]);
    let _allocation = allocation(relay.addr);
    relay.signal(libc::SIGTERM);
    relay.wait_for_log("SIGTERM: draining 1 allocations");
    let started = Instant::now();
    assert!(relay.terminate().success());
    assert!(started.elapsed() < Duration::from_secs(5));
    relay.wait_for_log("during the drain: shutting down, closing 1 allocations");
}

#[test]
fn a_drain_without_allocations_exits_at_once() {
    let (mut relay, _) = start(&[]);
    relay.signal(libc::SIGUSR1);
    assert!(relay.wait_exit().success());
    relay.wait_for_log("drain done");
}
