//! The batched data path of the real binary (src/driver/batch.rs): bursts that arrive faster
//! than one datagram per loop turn are read with recvmmsg, relayed with sendmmsg and UDP GSO
//! runs, and must come out whole, in order per flow, from the right addresses, however the
//! batches and runs fall. A Refresh(0) inside a burst ends the relaying exactly there.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::stun_encoder::codec::Attribute;
use common::{Client, RelayProcess, channel_data, credentials, peer_socket};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, REFRESH};

const CHANNEL: u16 = 0x4002;

fn relay() -> RelayProcess {
    let (lowest, highest) = common::free_port_range_args(100);
    RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--allow-loopback-peers",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ])
}

/// An allocation with channel CHANNEL bound to `peer`; returns the relayed address.
fn allocate_with_channel(client: &mut Client, peer: SocketAddr) -> SocketAddr {
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
    relayed
}

/// Payload `seq` of flow `flow`: sizes in runs of equal length (GSO runs), shorter ends,
/// and now and then a large datagram, each byte telling where it belongs.
fn payload(flow: u8, seq: u16) -> Vec<u8> {
    let len = match seq % 50 {
        0..=29 => 1000,
        30 => 37,
        31..=45 => 120,
        46 => 9000,
        _ => 1 + usize::from(seq % 7),
    };
    let mut p = vec![flow; len];
    p[0] = flow;
    if len >= 3 {
        p[1..3].copy_from_slice(&seq.to_be_bytes());
    }
    p
}

/// Receives up to `count` datagrams (waiting at most `wait`) into per-source lists.
fn receive(socket: &UdpSocket, count: usize, wait: Duration) -> HashMap<SocketAddr, Vec<Vec<u8>>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut got: HashMap<SocketAddr, Vec<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + wait;
    let mut received = 0;
    while received < count && Instant::now() < deadline {
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            got.entry(from).or_default().push(buf[..len].to_vec());
            received += 1;
        }
    }
    got
}

fn big_buffers(socket: &UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    socket.set_recv_buffer_size(4 << 20).expect("SO_RCVBUF");
}

#[test]
fn interleaved_bursts_arrive_whole_and_in_order_both_ways() {
    let relay = relay();
    let peer = peer_socket();
    big_buffers(&peer);
    let peer_addr = peer.local_addr().expect("peer addr");
    let mut clients = Vec::new();
    let mut relayed = Vec::new();
    for name in ["burst-a", "burst-b", "burst-c"] {
        let (username, password) = credentials(name);
        let mut client = Client::new(relay.addr, &username, &password);
        big_buffers(&client.socket);
        relayed.push(allocate_with_channel(&mut client, peer_addr));
        clients.push(client);
    }
    // Short of the 4 MiB socket buffers, so nothing is lost on loopback.
    const PER_FLOW: u16 = 300;

    // client → peer: the three clients' bursts interleave on the listen socket.
    for seq in 0..PER_FLOW {
        for (flow, client) in clients.iter().enumerate() {
            let frame = channel_data(CHANNEL, &payload(flow as u8, seq));
            client.socket.send_to(&frame, relay.addr).expect("send");
        }
    }
    let got = receive(&peer, clients.len() * usize::from(PER_FLOW), common::WAIT);
    for (flow, from) in relayed.iter().enumerate() {
        let expected: Vec<Vec<u8>> = (0..PER_FLOW).map(|s| payload(flow as u8, s)).collect();
        let datagrams = got.get(from).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(datagrams.len(), expected.len(), "flow {flow} from {from}");
        assert!(
            datagrams == expected,
            "flow {flow}: a datagram differs or is out of order"
        );
    }

    // peer → clients: one socket sends to the three relayed addresses in turn.
    for seq in 0..PER_FLOW {
        for (flow, to) in relayed.iter().enumerate() {
            peer.send_to(&payload(flow as u8 + 10, seq), to)
                .expect("peer send");
        }
    }
    for (flow, client) in clients.iter().enumerate() {
        let got = receive(&client.socket, usize::from(PER_FLOW), common::WAIT);
        let frames = got.get(&relay.addr).map(Vec::as_slice).unwrap_or_default();
        let expected: Vec<Vec<u8>> = (0..PER_FLOW)
            .map(|s| channel_data(CHANNEL, &payload(flow as u8 + 10, s)))
            .collect();
        assert_eq!(frames.len(), expected.len(), "flow {flow}");
        assert!(
            frames == expected,
            "flow {flow}: a frame differs or is out of order"
        );
    }
}

#[test]
fn a_refresh_to_zero_inside_a_burst_ends_relaying_exactly_there() {
    let relay = relay();
    let peer = peer_socket();
    let (username, password) = credentials("burst-refresh");
    let mut client = Client::new(relay.addr, &username, &password);
    let relayed = allocate_with_channel(&mut client, peer.local_addr().expect("peer addr"));

    // 20 frames, Refresh(0), 20 more, all sent before the relay reads any of them.
    let id = client.transaction_id();
    let delete = client.encode_request(
        REFRESH,
        vec![Attribute::Lifetime(Lifetime::from_u32(0))],
        id,
    );
    for seq in 0..20 {
        client
            .socket
            .send_to(&channel_data(CHANNEL, &payload(1, seq)), relay.addr)
            .expect("send");
    }
    client.socket.send_to(&delete, relay.addr).expect("send");
    for seq in 20..40 {
        client
            .socket
            .send_to(&channel_data(CHANNEL, &payload(1, seq)), relay.addr)
            .expect("send");
    }
    // 40 would be a bug: wait long enough to see stray ones, not for all 40.
    let got = receive(&peer, 40, Duration::from_millis(1500));
    let expected: Vec<Vec<u8>> = (0..20).map(|s| payload(1, s)).collect();
    assert_eq!(
        got.get(&relayed).map(Vec::as_slice).unwrap_or_default(),
        &expected[..],
        "the 20 frames before the Refresh, and none after"
    );
    assert_eq!(got.len(), 1, "nothing from elsewhere");
    // The relay port is free again.
    UdpSocket::bind(relayed).expect("relay port released after Refresh(0)");
}
