//! The real binary's logs (issue 13): with `--log-format json` every stderr line is one JSON
//! object, and the usage record of an allocation carries the traffic it relayed, counted
//! both ways; the client's address only with `--log-client-addresses`. And `--software` on
//! the wire.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::net::SocketAddr;

use crate::stun_encoder::codec::Attribute;
use common::{Client, RelayProcess, channel_data, credentials, peer_socket};
use stun_codec::MessageClass;
use stun_codec::rfc5389::attributes::Software;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, REFRESH};

fn relay(extra: &[&str]) -> RelayProcess {
    let (lowest, highest) = common::free_port_range(20);
    let (lowest, highest) = (lowest.to_string(), highest.to_string());
    let mut args = vec![
        "--auth-secret",
        common::SECRET,
        "--allow-loopback-peers",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ];
    args.extend_from_slice(extra);
    RelayProcess::start(&args)
}

fn allocate(client: &mut Client) -> (SocketAddr, Option<String>) {
    let udp = Attribute::RequestedTransport(RequestedTransport::new(17));
    let response = client.authenticated(ALLOCATE, vec![udp]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    let relayed = response
        .get::<XorRelayAddress>()
        .expect("XOR-RELAYED-ADDRESS")
        .address();
    let software = response
        .get::<Software>()
        .map(|s| s.description().to_owned());
    (relayed, software)
}

/// Allocates, relays `to_peer` client -> peer and `to_client` peer -> client over a
/// channel, deletes the allocation; returns the client's and the relayed address.
fn relay_traffic(
    relay: &RelayProcess,
    to_peer: &[usize],
    to_client: &[usize],
) -> (SocketAddr, SocketAddr) {
    let (username, password) = credentials("alice");
    let mut client = Client::new(relay.addr, &username, &password);
    let (relayed, _) = allocate(&mut client);
    let peer = peer_socket();
    let peer_addr = peer.local_addr().expect("peer addr");
    let bind = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(0x4001).expect("number")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer_addr)),
        ],
    );
    assert_eq!(bind.class(), MessageClass::SuccessResponse);
    let mut buf = [0u8; 2048];
    for &len in to_peer {
        let payload = vec![0x11; len];
        client
            .socket
            .send_to(&channel_data(0x4001, &payload), relay.addr)
            .expect("send");
        let (n, _) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!(n, len);
    }
    for &len in to_client {
        peer.send_to(&vec![0x22; len], relayed).expect("peer send");
        assert_eq!(
            client.recv_datagram(),
            channel_data(0x4001, &vec![0x22; len])
        );
    }
    let delete = client.authenticated(REFRESH, vec![Attribute::Lifetime(Lifetime::from_u32(0))]);
    assert_eq!(delete.class(), MessageClass::SuccessResponse);
    (client.socket.local_addr().expect("client addr"), relayed)
}

#[test]
fn json_lines_parse_and_the_usage_record_counts_the_traffic() {
    let mut relay = relay(&["--log-format", "json"]);
    let to_peer = [100, 101, 102, 103, 104];
    let to_client = [1200, 1200, 1200];
    let (_, relayed) = relay_traffic(&relay, &to_peer, &to_client);
    relay.wait_for_log("relay::usage");
    assert!(relay.terminate().success());
    let lines = relay.all_logs();
    assert!(lines.len() > 5, "{lines:#?}");
    let mut records = Vec::new();
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let object = value.as_object().expect("an object per line");
        for member in ["time", "level", "target", "message"] {
            assert!(object[member].is_string(), "{member} in {line}");
        }
        // RFC 3339 in UTC: 2026-12-06T13:00:00.000Z
        let time = object["time"].as_str().unwrap_or_default();
        assert!(
            time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
            "{time}"
        );
        if object["target"] == "relay::usage" {
            records.push(value.clone());
        }
    }
    let [record] = records.as_slice() else {
        panic!("one usage record expected: {records:#?}");
    };
    let field = |name: &str| record[name].clone();
    assert_eq!(field("level"), "INFO");
    assert_eq!(field("user"), "alice");
    assert_eq!(field("transport"), "udp");
    assert_eq!(field("reason"), "deleted");
    assert_eq!(field("relayed"), relayed.to_string());
    assert_eq!(field("client_to_peer_packets"), to_peer.len());
    assert_eq!(field("client_to_peer_bytes"), to_peer.iter().sum::<usize>());
    assert_eq!(field("peer_to_client_packets"), to_client.len());
    assert_eq!(
        field("peer_to_client_bytes"),
        to_client.iter().sum::<usize>()
    );
    assert!(field("allocation").is_u64());
    assert!(field("duration_ms").as_u64().is_some_and(|ms| ms < 10_000));
    // Privacy by default: no client address anywhere in the record.
    assert!(record.get("client").is_none(), "{record}");
}

#[test]
fn text_usage_record_has_the_client_only_when_asked() {
    let mut relay = relay(&["--log-client-addresses"]);
    let (client, _) = relay_traffic(&relay, &[10], &[20, 30]);
    let line = relay.wait_for_log("allocation ended");
    assert!(relay.terminate().success());
    for expected in [
        "relay::usage".to_owned(),
        "user=alice".to_owned(),
        "client_to_peer_bytes=10".to_owned(),
        "peer_to_client_packets=2".to_owned(),
        "peer_to_client_bytes=50".to_owned(),
        "reason=deleted".to_owned(),
        format!("client={client}"),
    ] {
        assert!(line.contains(&expected), "{expected} in {line}");
    }
}

/// Usage records are accounts, not diagnostics: a relay reloaded to `--log-level warn`
/// still writes them (nothing else at info).
#[test]
fn usage_records_are_written_at_log_level_warn() {
    let dir = std::env::temp_dir().join(format!("relay-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("relay.env");
    std::fs::write(&file, "RELAY_LOG_LEVEL=info\n").expect("write config");
    let path = file.to_str().expect("utf-8 path");
    let mut relay = relay(&["--config-file", path]);
    std::fs::write(&file, "RELAY_LOG_LEVEL=warn\n").expect("write config");
    relay.signal(libc::SIGHUP);
    relay.wait_for_log("SIGHUP: log level warn");
    relay_traffic(&relay, &[10], &[20]);
    let line = relay.wait_for_log("allocation ended");
    assert!(line.contains("reason=deleted"), "{line}");
    assert!(relay.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn software_goes_in_signed_responses_over_the_wire() {
    let relay = relay(&["--software", "relay-test/1.0"]);
    let (username, password) = credentials("bob");
    let mut client = Client::new(relay.addr, &username, &password);
    let binding = client.request(BINDING, vec![]);
    assert!(binding.get::<Software>().is_none());
    let (_, software) = allocate(&mut client);
    assert_eq!(software.as_deref(), Some("relay-test/1.0"));
}
