//! Operating the binary: metrics and health on the same loop, graceful shutdown on SIGTERM,
//! secret rotation and the `credentials` subcommand.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::stun_encoder::codec::Attribute;
use common::{Client, RelayProcess, channel_data, http_get, peer_socket};
use stun_codec::MessageClass;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};

fn udp() -> Attribute {
    Attribute::RequestedTransport(RequestedTransport::new(17))
}

fn relay_with_metrics(extra: &[&str]) -> (RelayProcess, SocketAddr) {
    let (lowest, highest) = common::free_port_range_args(100);
    let mut args = vec![
        "--metrics-addr",
        "127.0.0.1:0",
        "--allow-loopback-peers",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ];
    args.extend_from_slice(extra);
    let mut relay = RelayProcess::start(&args);
    let addr = relay.metrics_addr();
    (relay, addr)
}

fn metric(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}

#[test]
fn metrics_move_with_traffic_and_health_is_ok() {
    let (relay, metrics) = relay_with_metrics(&["--auth-secret", common::SECRET]);
    let (status, body) = http_get(metrics, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, before) = http_get(metrics, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&before, "relay_allocations{family=\"ipv4\"}"), 0);
    assert_eq!(
        metric(&before, "relay_relay_ports{family=\"ipv4\",state=\"free\"}"),
        100
    );
    assert!(metric(&before, "process_start_time_seconds") > 1_600_000_000);

    let (username, password) = common::credentials("metrics");
    let mut client = Client::new(relay.addr, &username, &password);
    let allocated = client.authenticated(ALLOCATE, vec![udp()]);
    let relayed = allocated
        .get::<XorRelayAddress>()
        .expect("relayed")
        .address();
    let peer = peer_socket();
    let bound = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(0x4000).expect("n")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer.local_addr().expect("peer"))),
        ],
    );
    assert_eq!(bound.class(), MessageClass::SuccessResponse);
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        client
            .socket
            .send_to(&channel_data(0x4000, &[7; 100]), relay.addr)
            .expect("send");
        peer.recv_from(&mut buf).expect("peer receives");
    }
    peer.send_to(&[1; 60], relayed).expect("peer send");
    client.recv_datagram();
    client
        .socket
        .send_to(&[0xFF; 3], relay.addr)
        .expect("garbage");
    client
        .socket
        .send_to(&channel_data(0x4ABC, &[1]), relay.addr)
        .expect("unbound");
    // Both drops are counted once the relay has read them; a Binding round trip orders us after them.
    client.request(BINDING, vec![]);

    let (_, after) = http_get(metrics, "/metrics");
    assert_eq!(metric(&after, "relay_allocations{family=\"ipv4\"}"), 1);
    assert_eq!(metric(&after, "relay_channels{family=\"ipv4\"}"), 1);
    assert_eq!(metric(&after, "relay_permissions{family=\"ipv4\"}"), 1);
    assert_eq!(
        metric(&after, "relay_relay_ports{family=\"ipv4\",state=\"used\"}"),
        1
    );
    assert_eq!(
        metric(
            &after,
            "relay_packets_relayed_total{direction=\"client_to_peer\"}"
        ),
        5
    );
    assert_eq!(
        metric(
            &after,
            "relay_bytes_relayed_total{direction=\"client_to_peer\"}"
        ),
        500
    );
    assert_eq!(
        metric(
            &after,
            "relay_packets_relayed_total{direction=\"peer_to_client\"}"
        ),
        1
    );
    assert_eq!(metric(&after, "relay_drops_total{reason=\"malformed\"}"), 1);
    assert_eq!(
        metric(&after, "relay_drops_total{reason=\"channel_data_unbound\"}"),
        1
    );
    assert_eq!(
        metric(
            &after,
            "relay_responses_total{method=\"allocate\",code=\"401\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &after,
            "relay_responses_total{method=\"allocate\",code=\"200\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &after,
            "relay_responses_total{method=\"channel_bind\",code=\"200\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &after,
            "relay_responses_total{method=\"binding\",code=\"200\"}"
        ),
        1
    );
    assert!(!after.contains("metrics:"), "no per-user labels");

    assert_eq!(http_get(metrics, "/nope").0, 404);
}

#[test]
fn slow_and_malformed_http_clients_do_not_stall_the_relay() {
    let (relay, metrics) = relay_with_metrics(&["--auth-secret", common::SECRET]);
    // A client that connects and sends nothing, one that sends half a request, and one that
    // sends an endless header: none may block STUN or other scrapes.
    let _idle = TcpStream::connect(metrics).expect("idle");
    let mut half = TcpStream::connect(metrics).expect("half");
    half.write_all(b"GET /metr").expect("half request");
    let mut flood = TcpStream::connect(metrics).expect("flood");
    flood.set_read_timeout(Some(common::WAIT)).expect("timeout");
    let _ = flood.write_all(&[b'a'; 8192]);
    let mut answer = String::new();
    let _ = flood.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized request: {answer:?}"
    );
    let mut garbage = TcpStream::connect(metrics).expect("garbage");
    garbage
        .set_read_timeout(Some(common::WAIT))
        .expect("timeout");
    garbage
        .write_all(b"\x16\x03\x01 not http\r\n\r\n")
        .expect("garbage");
    let mut answer = String::new();
    let _ = garbage.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    let started = Instant::now();
    let mut client = Client::new(relay.addr, "", "");
    assert_eq!(
        client.request(BINDING, vec![]).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the loop was stalled"
    );

    // The idle connection is closed by its deadline (5 s).
    half.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let mut rest = Vec::new();
    let closed_at = Instant::now();
    let _ = half.read_to_end(&mut rest);
    assert!(
        closed_at.elapsed() < Duration::from_secs(7),
        "a stalled connection must be dropped"
    );
}

#[test]
fn sigterm_exits_zero_and_releases_ports() {
    let ports = common::free_port_range(10);
    let (lowest, highest) = (ports.0.to_string(), ports.1.to_string());
    let mut relay = RelayProcess::start(&[
        "--auth-secret",
        "x",
        "--allow-loopback-peers",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let (username, password) = (
        "9999999999:x".to_owned(),
        stun_encoder::rest_password(b"x", "9999999999:x"),
    );
    let mut client = Client::new(relay.addr, &username, &password);
    let relayed = client
        .authenticated(ALLOCATE, vec![udp()])
        .get::<XorRelayAddress>()
        .expect("relayed")
        .address();
    assert!((ports.0..=ports.1).contains(&relayed.port()), "{relayed}");

    let status = relay.terminate();
    assert!(status.success(), "exit status {status:?}");
    relay.wait_for_log("shutting down");
    UdpSocket::bind(relay.addr).expect("listen port released");
    UdpSocket::bind(relayed).expect("relay port released");
}

#[test]
fn credentials_from_any_listed_secret_are_accepted() {
    let relay =
        RelayProcess::start(&["--auth-secret", "old-secret", "--auth-secret", "new-secret"]);
    for secret in ["old-secret", "new-secret"] {
        let output = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args([
                "credentials",
                "--auth-secret",
                secret,
                "--ttl",
                "600",
                "--user",
                "rotating",
                "--json",
            ])
            .output()
            .expect("credentials");
        assert!(output.status.success());
        let json = String::from_utf8(output.stdout).expect("utf8");
        let field = |name: &str| {
            let start = json.find(&format!("\"{name}\":\"")).expect(name) + name.len() + 4;
            json[start..start + json[start..].find('"').expect("end")].to_owned()
        };
        let (username, password) = (field("username"), field("password"));
        assert!(username.ends_with(":rotating"));
        let mut client = Client::new(relay.addr, &username, &password);
        let response = client.authenticated(ALLOCATE, vec![udp()]);
        assert_eq!(
            response.class(),
            MessageClass::SuccessResponse,
            "secret {secret}"
        );
    }
    let (username, password) = (
        "9999999999:z".to_owned(),
        stun_encoder::rest_password(b"retired", "9999999999:z"),
    );
    let mut client = Client::new(relay.addr, &username, &password);
    assert_eq!(
        client.authenticated(ALLOCATE, vec![udp()]).error_code(),
        Some(401)
    );
}

#[test]
fn credentials_subcommand_prints_text_and_rejects_bad_input() {
    let output = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["credentials", "--auth-secret", "s", "--user", "alice"])
        .output()
        .expect("run");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf8");
    let username = text
        .lines()
        .find_map(|l| l.strip_prefix("username: "))
        .expect("username line");
    let password = text
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("password line");
    assert_eq!(password, stun_encoder::rest_password(b"s", username));
    let failed = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["credentials", "--auth-secret", ""])
        .output()
        .expect("run");
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("--auth-secret"));
}

#[test]
fn credentials_subcommand_mints_from_the_first_secret_of_a_rotation_list() {
    // The relays' own environment during a rotation: RELAY_AUTH_SECRET=NEW,OLD.
    let output = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["credentials", "--json", "--user", "bob"])
        .env("RELAY_AUTH_SECRET", "new-secret,old-secret")
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let json = String::from_utf8(output.stdout).expect("utf8");
    let field = |name: &str| -> String {
        let start = json.find(&format!("\"{name}\":\"")).expect(name) + name.len() + 4;
        json[start..].split('"').next().expect("value").to_owned()
    };
    let (username, password) = (field("username"), field("password"));
    assert_eq!(
        password,
        stun_encoder::rest_password(b"new-secret", &username),
        "{json}"
    );
}

#[test]
fn health_turns_503_while_no_relay_port_is_free() {
    // One relay port and an IPv4-only listener: one allocation uses up all capacity.
    let port = common::free_port_range(1).0.to_string();
    let mut relay = RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--metrics-addr",
        "127.0.0.1:0",
        "--lowest-port",
        &port,
        "--highest-port",
        &port,
    ]);
    let metrics = relay.metrics_addr();
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok\n".to_owned()));

    let (username, password) = common::credentials("health");
    let mut client = Client::new(relay.addr, &username, &password);
    let allocated = client.authenticated(ALLOCATE, vec![udp()]);
    assert_eq!(allocated.class(), MessageClass::SuccessResponse);
    let (status, body) = http_get(metrics, "/healthz");
    assert_eq!(status, 503, "{body}");
    let (_, scrape) = http_get(metrics, "/metrics");
    assert_eq!(
        metric(&scrape, "relay_relay_ports{family=\"ipv4\",state=\"free\"}"),
        0
    );

    // Deleting the allocation (Refresh with LIFETIME 0) frees the port: healthy again.
    let deleted = client.authenticated(
        REFRESH,
        vec![Attribute::Lifetime(
            Lifetime::new(Duration::ZERO).expect("lifetime"),
        )],
    );
    assert_eq!(deleted.class(), MessageClass::SuccessResponse);
    assert_eq!(http_get(metrics, "/healthz").0, 200);
}

#[test]
fn metrics_count_data_indications_unpermitted_peers_and_process_figures() {
    let (relay, metrics) = relay_with_metrics(&["--auth-secret", common::SECRET]);
    let (username, password) = common::credentials("indications");
    let mut client = Client::new(relay.addr, &username, &password);
    let relayed = client
        .authenticated(ALLOCATE, vec![udp()])
        .get::<XorRelayAddress>()
        .expect("relayed")
        .address();
    let peer = peer_socket();
    let peer_addr = peer.local_addr().expect("peer");

    // Before any permission, the peer's datagrams are dropped and counted. (The relay reads
    // its listen socket before relay sockets in one loop turn: wait for the count before
    // creating the permission.)
    peer.send_to(&[9; 40], relayed).expect("send");
    wait_for_metric(
        metrics,
        "relay_drops_total{reason=\"peer_no_permission\"}",
        1,
    );
    let permitted = client.authenticated(
        CREATE_PERMISSION,
        vec![Attribute::XorPeerAddress(XorPeerAddress::new(peer_addr))],
    );
    assert_eq!(permitted.class(), MessageClass::SuccessResponse);
    // With a permission but no channel, they reach the client as Data indications.
    peer.send_to(&[8; 30], relayed).expect("send");
    let indication = client.recv_datagram();
    assert_eq!(indication[..2], [0x00, 0x17], "a Data indication");

    let (_, scrape) = http_get(metrics, "/metrics");
    assert_eq!(metric(&scrape, "relay_permissions{family=\"ipv4\"}"), 1);
    assert_eq!(metric(&scrape, "relay_channels{family=\"ipv4\"}"), 0);
    assert_eq!(
        metric(&scrape, "relay_drops_total{reason=\"peer_no_permission\"}"),
        1
    );
    assert_eq!(
        metric(
            &scrape,
            "relay_packets_relayed_total{direction=\"peer_to_client\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &scrape,
            "relay_bytes_relayed_total{direction=\"peer_to_client\"}"
        ),
        30
    );
    assert_eq!(
        metric(
            &scrape,
            "relay_responses_total{method=\"create_permission\",code=\"200\"}"
        ),
        1
    );
    // Successes are exported from the start, so rate() sees the first one.
    assert_eq!(
        metric(
            &scrape,
            "relay_responses_total{method=\"refresh\",code=\"200\"}"
        ),
        0
    );
    let rss = metric(&scrape, "process_resident_memory_bytes");
    assert!((100_000..1_000_000_000).contains(&rss), "RSS {rss}");
    assert!(metric(&scrape, "process_max_fds") >= 64);
    assert_exposition_format(&scrape);
}

/// Scrapes until `series` has `value` (bounded wait).
fn wait_for_metric(metrics: SocketAddr, series: &str, value: u64) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let (_, scrape) = http_get(metrics, "/metrics");
        if metric(&scrape, series) == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never reached {value}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every sample belongs to a family declared once with # HELP and # TYPE before it, and
/// every value is a number: what Prometheus' text parser requires.
fn assert_exposition_format(scrape: &str) {
    let mut declared: Vec<&str> = Vec::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let name = words.next().expect("name");
            assert!(matches!(words.next(), Some("counter" | "gauge")), "{line}");
            assert!(!declared.contains(&name), "{name} declared twice");
            declared.push(name);
        } else if line.starts_with("# HELP ") {
        } else {
            let name_end = line.find(['{', ' ']).expect("sample name");
            let name = &line[..name_end];
            assert!(declared.contains(&name), "{name} has no # TYPE");
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
    assert!(scrape.ends_with('\n'));
}

#[test]
fn sigint_exits_zero_and_releases_every_port() {
    let (lowest, highest) = common::free_port_range_args(10);
    let mut relay = RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let metrics = relay.metrics_addr();
    let (username, password) = common::credentials("sigint");
    let mut client = Client::new(relay.addr, &username, &password);
    let relayed = client
        .authenticated(ALLOCATE, vec![udp()])
        .get::<XorRelayAddress>()
        .expect("relayed")
        .address();

    let status = relay.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    relay.wait_for_log("shutting down, closing 1 allocations");
    relay.wait_for_log("stopped");
    UdpSocket::bind(relay.addr).expect("listen port released");
    UdpSocket::bind(relayed).expect("relay port released");
    std::net::TcpListener::bind(metrics).expect("metrics port released");
}
