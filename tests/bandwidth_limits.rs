//! The bandwidth limits of the real binary (`--max-bps-per-allocation`, `--max-bps-per-user`,
//! `--max-bps-total`) hold within 10% with real traffic over loopback: clients and a peer
//! offer half again the limit, split over both directions, for a couple of seconds, and what
//! comes out of the relay after its initial burst is measured at the receivers.
//!
//! The rate (4 Mbit/s, 1 000-byte datagrams: ~500 per second relayed) is one loopback and a
//! 2-core machine sustain easily, even in a debug build under load, so that what limits the
//! traffic is the relay's bucket and not the machine.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::stun_encoder::codec::Attribute;
use common::{Client, RelayProcess, channel_data, credentials, metric, peer_socket, scrape};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND};

const LIMIT_BPS: u64 = 4_000_000;
const CHANNEL: u16 = 0x4000;
const PAYLOAD: usize = 1000;
/// Traffic before the window: long enough to spend the bucket's burst (65 535 bytes, the
/// largest datagram, at this limit) at the offered excess of 2 Mbit/s (~0.26 s).
const WARM_UP: Duration = Duration::from_millis(500);
/// The window measured.
const WINDOW: Duration = Duration::from_secs(2);

fn relay(limit_flag: &str) -> RelayProcess {
    let (lowest, highest) = common::free_port_range_args(10);
    RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--allow-loopback-peers",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
        "--metrics-addr",
        "127.0.0.1:0",
        limit_flag,
        &LIMIT_BPS.to_string(),
    ])
}

/// One allocation of `user` with channel CHANNEL bound to `peer`; the client and the
/// relayed address, both non-blocking for the pacing loop.
fn allocation(relay: &RelayProcess, user: &str, peer: SocketAddr) -> (Client, SocketAddr) {
    let (username, password) = credentials(user);
    let mut client = Client::new(relay.addr, &username, &password);
    let response = client.authenticated(
        ALLOCATE,
        vec![Attribute::RequestedTransport(RequestedTransport::new(17))],
    );
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    let relayed = response
        .get::<XorRelayAddress>()
        .expect("XOR-RELAYED-ADDRESS")
        .address();
    let bind = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(CHANNEL).expect("number")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer)),
        ],
    );
    assert_eq!(bind.class(), MessageClass::SuccessResponse);
    client.socket.set_nonblocking(true).expect("non-blocking");
    (client, relayed)
}

/// Payload bits received in the window, per direction: (to peers, to clients).
struct Measured {
    to_peers: u64,
    to_clients: u64,
}

impl Measured {
    fn bps(bits: u64) -> u64 {
        bits * 1000 / WINDOW.as_millis() as u64
    }
}

/// Each allocation's client sends ChannelData to the peer and the peer sends to each
/// relayed address, every flow at `flow_bps`, paced over WARM_UP + WINDOW; counts what
/// arrives during the window.
fn offer(allocations: &[(Client, SocketAddr)], peer: &UdpSocket, flow_bps: u64) -> Measured {
    peer.set_nonblocking(true).expect("non-blocking");
    let per_second = flow_bps / (PAYLOAD as u64 * 8);
    let frame = channel_data(CHANNEL, &[0x5a; PAYLOAD]);
    let start = Instant::now();
    let (window_start, end) = (start + WARM_UP, start + WARM_UP + WINDOW);
    let mut sent = 0u64;
    let mut measured = Measured {
        to_peers: 0,
        to_clients: 0,
    };
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        let due = start.elapsed().as_micros() as u64 * per_second / 1_000_000;
        while sent < due {
            for (client, relayed) in allocations {
                // Loopback does not fail these; a failure would show as a short rate.
                let _ = client.socket.send_to(&frame, client.server);
                let _ = peer.send_to(&frame[4..], relayed);
            }
            sent += 1;
        }
        let counting = Instant::now() >= window_start;
        while let Ok(len) = peer.recv(&mut buf) {
            measured.to_peers += u64::from(counting) * len as u64 * 8;
        }
        for (client, _) in allocations {
            while let Ok(len) = client.socket.recv(&mut buf) {
                let payload = len.saturating_sub(4) as u64;
                measured.to_clients += u64::from(counting) * payload * 8;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    measured
}

/// The combined rate of both directions is within 10% of the limit, and each direction
/// got some of it. Each direction alone is offered less than the limit: were only one
/// counted, the total would pass it by half.
fn assert_holds(measured: &Measured) {
    let (to_peers, to_clients) = (
        Measured::bps(measured.to_peers),
        Measured::bps(measured.to_clients),
    );
    let total = to_peers + to_clients;
    eprintln!("relayed {total} bit/s ({to_peers} to peers, {to_clients} to clients)");
    assert!(
        total.abs_diff(LIMIT_BPS) * 10 <= LIMIT_BPS,
        "relayed {total} bit/s ({to_peers} to peers, {to_clients} to clients), limit {LIMIT_BPS}"
    );
    for direction in [to_peers, to_clients] {
        assert!(
            direction * 10 >= LIMIT_BPS,
            "one direction starved: {to_peers} to peers, {to_clients} to clients"
        );
    }
}

fn drops(relay: &mut RelayProcess, reason: &str) -> u64 {
    let body = scrape(relay.metrics_addr());
    metric(&body, &format!("relay_drops_total{{reason=\"{reason}\"}}"))
}

/// One allocation offered 6 Mbit/s (3 each way) against a 4 Mbit/s limit.
#[test]
fn per_allocation_limit_holds() {
    let mut relay = relay("--max-bps-per-allocation");
    let peer = peer_socket();
    let one = [allocation(
        &relay,
        "bw-alice",
        peer.local_addr().expect("addr"),
    )];
    assert_holds(&offer(&one, &peer, 3_000_000));
    assert!(drops(&mut relay, "bandwidth_per_allocation") > 0);
}

/// Two allocations of one user, each offered 3 Mbit/s (1.5 each way): together 6 against
/// the user's 4 Mbit/s.
#[test]
fn per_user_limit_holds_across_the_users_allocations() {
    let mut relay = relay("--max-bps-per-user");
    let peer = peer_socket();
    let peer_addr = peer.local_addr().expect("addr");
    let two = [
        allocation(&relay, "bw-bob", peer_addr),
        allocation(&relay, "bw-bob", peer_addr),
    ];
    assert_holds(&offer(&two, &peer, 1_500_000));
    assert!(drops(&mut relay, "bandwidth_per_user") > 0);
}

/// Two users, each offered 3 Mbit/s (1.5 each way): together 6 against the relay's 4 Mbit/s.
#[test]
fn total_limit_holds_across_users() {
    let mut relay = relay("--max-bps-total");
    let peer = peer_socket();
    let peer_addr = peer.local_addr().expect("addr");
    let two = [
        allocation(&relay, "bw-carol", peer_addr),
        allocation(&relay, "bw-dave", peer_addr),
    ];
    assert_holds(&offer(&two, &peer, 1_500_000));
    assert!(drops(&mut relay, "bandwidth_total") > 0);
}
