//! A browser's own TURN client through our relay: headless Chromium (Debian's `chromium`,
//! installed by tests/run) loads a page with two RTCPeerConnections restricted to relayed
//! candidates (`iceTransportPolicy: "relay"`) whose only ICE server is our relay, opens an
//! ordered data channel and sends 200 messages each way, all delivered in order. The test
//! then requires the selected candidate pair of both peers to be relay/relay, on relayed
//! addresses of our relay, and the relay's metrics to show the allocations, the channels
//! and the relayed datagrams.
//!
//! The page (tests/browser/datachannel.html) is served by the test's own HTTP server on
//! loopback and POSTs its outcome back to it; nothing else is involved (no driver, no
//! DevTools protocol). Everything runs on 127.0.0.1; Chromium is started with its
//! background networking off and is killed, with its temporary profile removed, at the end.

#[path = "browser/chromium.rs"]
mod chromium;
mod common;
#[path = "browser/page_server.rs"]
mod page_server;
#[path = "support/sha256.rs"]
mod sha256;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;
#[path = "support/turn_servers.rs"]
mod turn_servers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chromium::Chromium;
use common::{RelayProcess, credentials, free_port_range, scrape};
use page_server::{PageServer, Posted};
use turn_servers::{Kind, TurnServer, V4, metric_sum};

const PAGE: &str = include_str!("browser/datachannel.html");
/// Messages each way.
const COUNT: u32 = 200;
/// The page gives up (and reports why) after this; the test waits a little longer.
const PAGE_TIMEOUT: Duration = Duration::from_secs(45);
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The ICE server URL a browser is given for `transport` (RFC 7065): "udp" is the only one
/// the relay serves today; "tcp" and "tls" are the URLs the same test will take once it
/// serves TURN over TCP and TLS.
fn ice_server_url(transport: &str, server: SocketAddr) -> String {
    match transport {
        "udp" | "tcp" => format!("turn:{server}?transport={transport}"),
        "tls" => format!("turns:{server}?transport=tcp"),
        other => panic!("unknown TURN transport {other:?}"),
    }
}

/// `window.RELAY_TEST` for the page. The values are ours (URL, REST username `expiry:id`,
/// base64 password), but quote them properly anyway.
fn page_config(url: &str, username: &str, password: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    format!(
        "window.RELAY_TEST = {{ urls: [{}], username: {}, credential: {}, count: {COUNT}, \
         timeoutMs: {} }};\n",
        quote(url),
        quote(username),
        quote(password),
        PAGE_TIMEOUT.as_millis()
    )
}

/// Waits (bounded) for the page's result; its progress lines go into `log`.
fn wait_for_result(server: &PageServer, browser: &mut Chromium, log: &mut Vec<String>) -> String {
    let deadline = Instant::now() + TEST_TIMEOUT;
    while Instant::now() < deadline {
        match server.posted.recv_timeout(Duration::from_millis(100)) {
            Ok(Posted::Result(result)) => return result,
            Ok(Posted::Log(line)) => log.push(line),
            Err(_) => {
                if let Some(status) = browser.exited() {
                    panic!(
                        "chromium exited ({status}) before the page reported\n--- page log ---\n\
                         {}\n--- chromium stderr ---\n{}",
                        log.join("\n"),
                        browser.stderr()
                    );
                }
            }
        }
    }
    panic!(
        "the page reported nothing within {TEST_TIMEOUT:?}\n--- page log ---\n{}\n\
         --- chromium stderr ---\n{}",
        log.join("\n"),
        browser.stderr()
    );
}

/// `key=value` lines.
fn parse_fields(result: &str) -> BTreeMap<String, String> {
    result
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The TURN server a browser test runs against: our relay over UDP as today, or (TCP, TLS)
/// our relay with issue 12's stream flags or coturn, with a certificate from a test CA.
struct UnderTest {
    url: String,
    ports: (u16, u16),
    /// Our relay's metrics endpoint; None for coturn.
    metrics: Option<SocketAddr>,
    /// Chromium flags (trusting the test's server key over TLS).
    flags: Vec<String>,
    relay: Option<RelayProcess>,
    server: Option<TurnServer>,
}

impl UnderTest {
    fn start(kind: Kind, transport: &str) -> UnderTest {
        if transport == "udp" && kind == Kind::Ours {
            // Default peer policy (no loopback peers): each peer's only peer is the other's
            // relayed address, one of the relay's own, which is reachable whatever that policy.
            let (lowest, highest) = free_port_range(20);
            let (lowest_arg, highest_arg) = (lowest.to_string(), highest.to_string());
            let mut relay = RelayProcess::start(&[
                "--auth-secret",
                common::SECRET,
                "--lowest-port",
                &lowest_arg,
                "--highest-port",
                &highest_arg,
                "--metrics-addr",
                "127.0.0.1:0",
            ]);
            return UnderTest {
                url: ice_server_url(transport, relay.addr),
                ports: (lowest, highest),
                metrics: Some(relay.metrics_addr()),
                flags: Vec::new(),
                relay: Some(relay),
                server: None,
            };
        }
        let server = match kind {
            Kind::Ours => TurnServer::ours(20, &[]),
            Kind::Coturn => TurnServer::coturn(20),
        };
        let port = if transport == "tls" {
            server.tls_port
        } else {
            server.port
        };
        // Chromium trusts the test's server key, named by the SHA-256 of its
        // SubjectPublicKeyInfo, instead of the test CA (which is in no NSS database): errors
        // in a certificate for that key are ignored, any other key fails the TLS connection
        // (checked by hand: 701 "Failed to establish connection" in the page's ICE errors).
        let flags = vec![format!(
            "--ignore-certificate-errors-spki-list={}",
            server.pki.spki_sha256
        )];
        UnderTest {
            url: ice_server_url(transport, SocketAddr::new(V4, port)),
            ports: server.relay_ports,
            metrics: server.metrics_addr(),
            flags,
            relay: None,
            server: Some(server),
        }
    }

    fn log(&self) -> String {
        match (&self.relay, &self.server) {
            (Some(relay), _) => relay.seen.join("\n"),
            (_, Some(server)) => server.log(),
            _ => String::new(),
        }
    }
}

/// Chromium's two peers connect through the server over `transport` ("udp", "tcp", "tls")
/// and exchange COUNT messages each way over a relayed pair.
fn browser_relays(kind: Kind, transport: &str) {
    let started = Instant::now();
    let under_test = UnderTest::start(kind, transport);
    let (lowest, highest) = under_test.ports;
    let url = under_test.url.clone();
    let (username, password) = credentials("chromium");
    let server = PageServer::start(PAGE, page_config(&url, &username, &password));

    let mut browser = Chromium::open(&server.url(), &under_test.flags);
    let mut log = Vec::new();
    let result = wait_for_result(&server, &mut browser, &mut log);
    let fields = parse_fields(&result);
    let context = || {
        format!(
            "{url}\n--- page result ---\n{result}\n--- page log ---\n{}\n--- chromium stderr ---\n\
             {}\n--- server log ---\n{}",
            log.join("\n"),
            browser.stderr(),
            under_test.log()
        )
    };
    let field = |key: &str| fields.get(key).map(String::as_str).unwrap_or("");
    assert_eq!(field("ok"), "true", "the page failed: {}", context());
    let count = COUNT.to_string();
    assert_eq!(field("a_to_b"), count, "{}", context());
    assert_eq!(field("b_to_a"), count, "{}", context());

    // The selected pair of each peer is relay/relay, between the two relayed addresses the
    // relay handed out, and Chromium reached the relay over `transport`.
    let in_range = |candidate: &str| {
        let port = candidate
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        candidate.starts_with("127.0.0.1:") && port.is_some_and(|p| (lowest..=highest).contains(&p))
    };
    for side in ["a", "b"] {
        let key = |k: &str| format!("{side}_{k}");
        assert_eq!(field(&key("local_type")), "relay", "{}", context());
        assert_eq!(field(&key("remote_type")), "relay", "{}", context());
        assert_eq!(field(&key("relay_protocol")), transport, "{}", context());
        assert!(in_range(field(&key("local"))), "{}", context());
    }
    assert_eq!(field("a_local"), field("b_remote"), "{}", context());
    assert_eq!(field("b_local"), field("a_remote"), "{}", context());

    let Some(metrics) = under_test.metrics else {
        eprintln!(
            "chromium over turn/{transport} against {kind:?}: {COUNT} messages each way; \
             connected in {} ms, transfer {} ms; test {:.1} s",
            field("connected_ms"),
            field("transfer_ms"),
            started.elapsed().as_secs_f64()
        );
        return;
    };
    // The relay saw it: two allocations, channels bound, and the traffic relayed both ways.
    // Each message crosses the relay once from a client to its peer (the other's relayed
    // address) and once from that peer to the other client, inside SCTP, DTLS and UDP: the
    // bytes relayed each way are at least the messages' (SCTP may bundle several messages in
    // a datagram, so datagrams are no measure of messages).
    let text = scrape(metrics);
    let value = |series: &str| metric_sum(&text, series);
    let allocations = value("relay_allocations_created_total");
    let channel_binds = value("relay_responses_total{method=\"channel_bind\",code=\"200\"}");
    let to_peer = value("relay_packets_relayed_total{direction=\"client_to_peer\"}");
    let to_client = value("relay_packets_relayed_total{direction=\"peer_to_client\"}");
    let bytes_to_peer = value("relay_bytes_relayed_total{direction=\"client_to_peer\"}");
    let bytes_to_client = value("relay_bytes_relayed_total{direction=\"peer_to_client\"}");
    let payload: u64 = field("payload_bytes").parse().unwrap_or(u64::MAX);
    assert!(allocations >= 2, "{text}\n{}", context());
    assert!(channel_binds >= 2, "{text}\n{}", context());
    assert!(bytes_to_peer >= payload, "{text}\n{}", context());
    assert!(bytes_to_client >= payload, "{text}\n{}", context());
    // The page closed both peer connections: Chromium deletes its allocations (Refresh with
    // LIFETIME 0), which the relay may not have seen yet when the result arrived.
    let deadline = Instant::now() + common::WAIT;
    while metric_sum(&scrape(metrics), "relay_allocations") > 0 {
        assert!(
            Instant::now() < deadline,
            "the allocations outlived the closed peer connections by {:?}\n{}\n{}",
            common::WAIT,
            scrape(metrics),
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "chromium over turn/{transport}: {COUNT} messages each way; connected in {} ms, \
         transfer {} ms; relay: {allocations} allocations, {channel_binds} ChannelBind 200, \
         client->peer {to_peer} datagrams ({bytes_to_peer} bytes), peer->client {to_client} \
         ({bytes_to_client} bytes), for {payload} bytes of messages; test {:.1} s",
        field("connected_ms"),
        field("transfer_ms"),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn chromium_data_channel_through_turn_over_udp() {
    browser_relays(Kind::Ours, "udp");
}

#[test]
fn chromium_data_channel_through_turn_over_tcp() {
    browser_relays(Kind::Ours, "tcp");
}

#[test]
fn chromium_data_channel_through_turns() {
    browser_relays(Kind::Ours, "tls");
}

/// The same browser test against coturn's turnserver: proves the test (the URLs, the
/// certificate Chromium accepts) independently of our relay.
#[test]
fn chromium_data_channel_through_coturn_over_tcp() {
    browser_relays(Kind::Coturn, "tcp");
}

#[test]
fn chromium_data_channel_through_coturn_turns() {
    browser_relays(Kind::Coturn, "tls");
}
