//! The real binary over real UDP on loopback: Binding, 401 → Allocate, Refresh, ChannelBind,
//! ChannelData both ways, and the error answers a client can provoke.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::net::{SocketAddr, UdpSocket};

use crate::stun_encoder::codec::Attribute;
use bytecodec::DecodeExt;
use common::{Client, RelayProcess, channel_data, credentials, peer_socket};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::{Message, MessageClass, MessageDecoder};

/// A relay whose relay ports are a range found free at run time; returns the range too.
fn relay_with_ports() -> (RelayProcess, std::ops::RangeInclusive<u16>) {
    let (lowest, highest) = common::free_port_range(50);
    let relay = RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--allow-loopback-peers",
        "--lowest-port",
        &lowest.to_string(),
        "--highest-port",
        &highest.to_string(),
    ]);
    (relay, lowest..=highest)
}

fn relay() -> RelayProcess {
    relay_with_ports().0
}

fn udp() -> Attribute {
    Attribute::RequestedTransport(RequestedTransport::new(17))
}

fn allocate(client: &mut Client) -> SocketAddr {
    let response = client.authenticated(ALLOCATE, vec![udp()]);
    assert_eq!(
        response.class(),
        MessageClass::SuccessResponse,
        "{:?}",
        response.error_code()
    );
    let mapped = response
        .get::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .address();
    assert_eq!(mapped, client.socket.local_addr().expect("local"));
    let lifetime = response
        .get::<Lifetime>()
        .expect("LIFETIME")
        .lifetime()
        .as_secs();
    assert_eq!(lifetime, 600);
    response
        .get::<XorRelayAddress>()
        .expect("XOR-RELAYED-ADDRESS")
        .address()
}

#[test]
fn binding_reports_the_mapped_address() {
    let relay = relay();
    let mut client = Client::new(relay.addr, "", "");
    let response = client.request(BINDING, vec![]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    let mapped = response
        .get::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .address();
    assert_eq!(mapped, client.socket.local_addr().expect("local"));
    // The request carried FINGERPRINT, so the response does, and it checks out.
    assert_eq!(
        stun_encoder::fingerprint_valid(&response.bytes),
        Some(true),
        "FINGERPRINT mirrored, valid and last"
    );
}

#[test]
fn allocate_bind_and_relay_channel_data_both_ways_then_refresh_and_delete() {
    let (relay, ports) = relay_with_ports();
    let (username, password) = credentials("alice");
    let mut client = Client::new(relay.addr, &username, &password);
    let relayed = allocate(&mut client);
    assert_eq!(relayed.ip(), relay.addr.ip());
    assert!(ports.contains(&relayed.port()), "{relayed}");

    let peer = peer_socket();
    let peer_addr = peer.local_addr().expect("peer addr");
    let bind = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(0x4001).expect("number")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer_addr)),
        ],
    );
    assert_eq!(
        bind.class(),
        MessageClass::SuccessResponse,
        "{:?}",
        bind.error_code()
    );

    // client → peer, from the relayed address, payload unchanged
    let mut buf = [0u8; 2048];
    for i in 0..20u8 {
        let payload = vec![i; 100 + usize::from(i)];
        client
            .socket
            .send_to(&channel_data(0x4001, &payload), relay.addr)
            .expect("send");
        let (len, from) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!(from, relayed);
        assert_eq!(&buf[..len], &payload[..]);
    }
    // peer → client, framed as ChannelData on the listener the allocation came in on
    for i in 0..20u8 {
        let payload = vec![i ^ 0xFF; 1200];
        peer.send_to(&payload, relayed).expect("peer send");
        let frame = client.recv_datagram();
        assert_eq!(frame, channel_data(0x4001, &payload));
    }

    let refresh =
        client.authenticated(REFRESH, vec![Attribute::Lifetime(Lifetime::from_u32(1800))]);
    assert_eq!(refresh.class(), MessageClass::SuccessResponse);
    assert_eq!(
        refresh
            .get::<Lifetime>()
            .expect("LIFETIME")
            .lifetime()
            .as_secs(),
        1800
    );

    let delete = client.authenticated(REFRESH, vec![Attribute::Lifetime(Lifetime::from_u32(0))]);
    assert_eq!(delete.class(), MessageClass::SuccessResponse);
    // The relay port was closed: we can bind it ourselves.
    UdpSocket::bind(relayed).expect("relay port released after Refresh(0)");
    let again = client.authenticated(REFRESH, vec![]);
    assert_eq!(again.error_code(), Some(437));
}

#[test]
fn error_answers_over_the_wire() {
    let relay = relay();
    let (username, password) = credentials("bob");
    let mut client = Client::new(relay.addr, &username, &password);

    // No allocation yet.
    let refresh = client.authenticated(REFRESH, vec![]);
    assert_eq!(refresh.error_code(), Some(437));
    // Missing REQUESTED-TRANSPORT, then TCP.
    assert_eq!(
        client.authenticated(ALLOCATE, vec![]).error_code(),
        Some(400)
    );
    let tcp = Attribute::RequestedTransport(RequestedTransport::new(6));
    assert_eq!(
        client.authenticated(ALLOCATE, vec![tcp]).error_code(),
        Some(442)
    );

    allocate(&mut client);
    // A second Allocate on the same 5-tuple.
    assert_eq!(
        client.authenticated(ALLOCATE, vec![udp()]).error_code(),
        Some(437)
    );

    // RFC 5766's wider channel range is refused with a clean 400, not silence.
    let peer: SocketAddr = "127.0.0.1:9999".parse().expect("peer");
    let id = client.transaction_id();
    let wide = rewrite_with_raw_channel(&client, 0x7001, peer, id);
    let response = client.exchange(&wide, id);
    assert_eq!(response.error_code(), Some(400));

    // Wrong password.
    let mut intruder = Client::new(relay.addr, &username, "not-the-password");
    assert_eq!(
        intruder.authenticated(ALLOCATE, vec![udp()]).error_code(),
        Some(401)
    );
    // Expired REST username.
    let expired = format!("{}:carol", common::unix_now() - 10);
    let password = stun_encoder::rest_password(common::SECRET.as_bytes(), &expired);
    let mut late = Client::new(relay.addr, &expired, &password);
    assert_eq!(
        late.authenticated(ALLOCATE, vec![udp()]).error_code(),
        Some(401)
    );
}

/// A ChannelBind whose CHANNEL-NUMBER stun_codec would refuse to encode, built by hand and
/// signed, like an RFC 5766 client would send it.
fn rewrite_with_raw_channel(
    client: &Client,
    number: u16,
    peer: SocketAddr,
    id: stun_codec::TransactionId,
) -> Vec<u8> {
    let mut bytes = client.encode_request(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(0x4FFF).expect("number")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer)),
        ],
        id,
    );
    // Patch the channel number (attribute 0x000C, right after the header), then re-sign.
    assert_eq!(&bytes[20..22], &[0x00, 0x0C]);
    bytes[24..26].copy_from_slice(&number.to_be_bytes());
    let mut attributes = stun_encoder::tlvs(&bytes).expect("TLVs");
    let trailer: Vec<u16> = attributes
        .split_off(attributes.len() - 2)
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    use stun_encoder::kind::{FINGERPRINT, MESSAGE_INTEGRITY};
    assert_eq!(
        trailer,
        [MESSAGE_INTEGRITY, FINGERPRINT],
        "signed, then FINGERPRINT"
    );
    let id = bytes[8..20].try_into().expect("transaction ID");
    let class = stun_encoder::Class::Request;
    let mut resigned = stun_encoder::Encoder::new(class, CHANNEL_BIND.as_u16(), id);
    for (kind, value) in &attributes {
        resigned.tlv(*kind, value);
    }
    let key = stun_encoder::long_term_key(&client.username, &client.realm, &client.password);
    resigned.integrity(&key).fingerprint();
    resigned.bytes()
}

/// A Send indication from the client to `peer`.
fn send_indication(client: &mut Client, peer: SocketAddr, payload: &[u8]) {
    let id = client.transaction_id();
    let mut indication = Message::new(MessageClass::Indication, SEND, id);
    indication.add_attribute(Attribute::XorPeerAddress(XorPeerAddress::new(peer)));
    indication.add_attribute(Attribute::Data(Data::new(payload.to_vec()).expect("data")));
    let bytes = stun_encoder::encode_message(&indication, None, false);
    client
        .socket
        .send_to(&bytes, client.server)
        .expect("send indication");
}

#[test]
fn send_and_data_indications_need_a_permission() {
    let relay = relay();
    let (username, password) = credentials("dave");
    let mut client = Client::new(relay.addr, &username, &password);
    let relayed = allocate(&mut client);
    let permitted = peer_socket();
    let permitted_addr = permitted.local_addr().expect("addr");
    // Another loopback IP: a permission is per IP, and 127.0.0.1 is the permitted one.
    let stranger = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let stranger_addr = stranger.local_addr().expect("addr");
    stranger.set_nonblocking(true).expect("nonblocking");

    // Before any permission, a Send is dropped: the next one, after CreatePermission, is
    // the first datagram the peer sees.
    send_indication(&mut client, permitted_addr, b"too early");
    let permission = client.authenticated(
        CREATE_PERMISSION,
        vec![Attribute::XorPeerAddress(XorPeerAddress::new(
            permitted_addr,
        ))],
    );
    assert_eq!(permission.class(), MessageClass::SuccessResponse);
    send_indication(&mut client, stranger_addr, b"not permitted");
    send_indication(&mut client, permitted_addr, b"hello");
    let mut buf = [0u8; 2048];
    let (len, from) = permitted.recv_from(&mut buf).expect("peer receives");
    assert_eq!((from, &buf[..len]), (relayed, &b"hello"[..]));
    // The Send to the stranger was handled before "hello" and dropped.
    assert!(stranger.recv_from(&mut buf).is_err(), "stranger got data");

    // Peer → client without a channel: a Data indication naming the peer. The stranger's
    // datagram, sent first on the same path, is dropped.
    stranger.send_to(b"let me in", relayed).expect("send");
    permitted.send_to(b"back", relayed).expect("send");
    let datagram = client.recv_datagram();
    let indication = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(&datagram)
        .expect("decodes")
        .expect("complete");
    assert_eq!(indication.class(), MessageClass::Indication);
    assert_eq!(indication.method(), DATA);
    let peer = indication
        .get_attribute::<XorPeerAddress>()
        .expect("XOR-PEER-ADDRESS")
        .address();
    assert_eq!(peer, permitted_addr);
    let data = indication.get_attribute::<Data>().expect("DATA").data();
    assert_eq!(data, b"back");
}
