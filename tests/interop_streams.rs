//! Independent TURN clients over TCP and TLS (issue 12): aioice's TURN client
//! (`turn_transport="tcp"`, `turn_ssl`), coturn's turnutils_uclient (`-t`, `-t -S`) and
//! aiortc's relay-only data channel over `turns:` and `turn:?transport=tcp`.
//!
//! Each client runs against our relay (`*_ours_*`, with the CLI contract of issue 12:
//! `--listen-addr` serves UDP and TCP, `--tls-listen-addr` with `--tls-cert-file` and
//! `--tls-key-file` serves TLS) and against coturn's turnserver (`*_coturn_*`), the
//! reference that proves the clients and these tests themselves. The certificate comes from
//! a test CA made at test time (tests/support/turn_servers.rs); the TLS clients verify it.
//!
//! `tests/run` installs the clients (the venv, Debian's coturn); the matrix is in README.md,
//! "Interop".

mod common;
#[path = "interop/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "support/sha256.rs"]
mod sha256;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;
#[path = "support/turn_servers.rs"]
mod turn_servers;

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::credentials;
use harness::{Finished, Guard, run_bounded, script};
use turn_servers::{Kind, TurnServer, V4, V6};

fn server(kind: Kind, relay_ports: u16, extra: &[&str]) -> TurnServer {
    match kind {
        Kind::Ours => TurnServer::ours(relay_ports, extra),
        Kind::Coturn => TurnServer::coturn(relay_ports),
    }
}

/// The one JSON line a script prints must say `"ok": true`, with the named fields.
fn assert_script_ok(what: &str, finished: &Finished, server: &TurnServer, expect: &[&str]) {
    assert!(
        finished.success(),
        "{what} failed against {:?}\n{}\n--- server log ---\n{}",
        server.kind,
        finished.output(),
        server.log()
    );
    let json = finished
        .stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{what}: no JSON result line\n{}", finished.output()));
    for needle in std::iter::once("\"ok\": true").chain(expect.iter().copied()) {
        assert!(
            json.contains(needle),
            "{what}: {needle} missing in the result\n{}",
            finished.output()
        );
    }
}

// ---------------------------------------------------------------------------------------
// aioice

/// How a stream client reaches the server.
#[derive(Clone, Copy, Debug)]
enum Stream {
    Tcp,
    /// TLS on the TLS port.
    Tls,
    /// TLS on the plain TCP port (one port serves both, told apart by the first byte).
    TlsOnTcpPort,
}

impl Stream {
    fn transport(self) -> &'static str {
        match self {
            Stream::Tcp => "tcp",
            Stream::Tls | Stream::TlsOnTcpPort => "tls",
        }
    }

    fn port(self, server: &TurnServer) -> u16 {
        match self {
            Stream::Tcp | Stream::TlsOnTcpPort => server.port,
            Stream::Tls => server.tls_port,
        }
    }
}

/// aioice allocates over `stream` (reaching the server over `ip`), binds a channel to a UDP
/// echo peer and relays 300 payloads of 101 and of 1202 bytes there and back without loss,
/// then deletes the allocation. The sizes need stream padding (3 and 2 bytes) both ways. At most 8 payloads are in flight: coturn drops a few of 32
/// 1200-byte ones in flight over TCP (its per-connection output buffer), a limit of coturn's
/// that is not what these tests are about.
fn aioice_echo(kind: Kind, stream: Stream, ip: IpAddr) {
    let server = server(kind, 20, &["--allow-loopback-peers"]);
    for size in ["101", "1202"] {
        let (username, password) = credentials("aioice");
        let mut command = script("aioice_relay.py");
        command
            .args([
                "--server",
                &format!("{}", std::net::SocketAddr::new(ip, stream.port(&server))),
            ])
            .args(["--transport", stream.transport()])
            .arg("--ca-file")
            .arg(server.ca_file())
            .args(["--username", &username, "--password", &password])
            .args(["--count", "300", "--size", size, "--window", "8"])
            .args(["--timeout", "20"]);
        let finished = run_bounded(command, Duration::from_secs(40));
        assert_script_ok(
            &format!("aioice over {stream:?} ({size} bytes)"),
            &finished,
            &server,
            &[
                "\"lost\": 0",
                "\"received\": 300",
                "\"deleted\": true",
                "\"relayed\": \"127.0.0.1:",
            ],
        );
    }
    // aioice sends only ChannelData: every payload went through a bound channel both ways.
    if let Some(binds) = server.responses("channel_bind", 200) {
        assert_eq!(binds, 2, "{}", server.metrics_text());
        assert!(server.relayed("peer_to_client") >= Some(600));
        assert!(server.relayed("client_to_peer") >= Some(600));
    }
}

#[test]
fn aioice_ours_tcp_ipv4() {
    aioice_echo(Kind::Ours, Stream::Tcp, V4);
}

#[test]
fn aioice_ours_tcp_ipv6() {
    aioice_echo(Kind::Ours, Stream::Tcp, V6);
}

#[test]
fn aioice_ours_tls_ipv4() {
    aioice_echo(Kind::Ours, Stream::Tls, V4);
}

#[test]
fn aioice_ours_tls_ipv6() {
    aioice_echo(Kind::Ours, Stream::Tls, V6);
}

/// `turns:` on the `--listen-addr` port: a certificate makes the TCP listener serve TLS
/// too (a first byte of 0x16), as on 443.
#[test]
fn aioice_ours_tls_on_the_tcp_port() {
    aioice_echo(Kind::Ours, Stream::TlsOnTcpPort, V4);
}

/// coturn too tells TLS from TCP by the first byte on its plain TCP port.
#[test]
fn aioice_coturn_tls_on_the_tcp_port() {
    aioice_echo(Kind::Coturn, Stream::TlsOnTcpPort, V4);
}

#[test]
fn aioice_coturn_tcp_ipv4() {
    aioice_echo(Kind::Coturn, Stream::Tcp, V4);
}

#[test]
fn aioice_coturn_tcp_ipv6() {
    aioice_echo(Kind::Coturn, Stream::Tcp, V6);
}

#[test]
fn aioice_coturn_tls_ipv4() {
    aioice_echo(Kind::Coturn, Stream::Tls, V4);
}

#[test]
fn aioice_coturn_tls_ipv6() {
    aioice_echo(Kind::Coturn, Stream::Tls, V6);
}

// ---------------------------------------------------------------------------------------
// aiortc

/// Two aiortc peers restricted to relay candidates connect through the server over
/// `stream` (`turn:...?transport=tcp` or `turns:...?transport=tcp`) and exchange 200
/// messages each way on a data channel; closing deletes both allocations.
fn aiortc_data_channel(kind: Kind, stream: Stream, ip: IpAddr) {
    // Our relay with its default peer policy: each peer's only peer is the other's relayed
    // address, one of the relay's own. coturn needs loopback peers allowed for that.
    let server = server(kind, 20, &[]);
    let (username, password) = credentials("aiortc");
    let mut command = script("aiortc_datachannel.py");
    command
        .args([
            "--server",
            &format!("{}", std::net::SocketAddr::new(ip, stream.port(&server))),
        ])
        .args(["--transport", stream.transport()])
        .arg("--ca-file")
        .arg(server.ca_file())
        .args(["--username", &username, "--password", &password])
        .args(["--count", "200", "--timeout", "30"])
        .args(["--expect-relay-ports", &server.port_range_arg()])
        .args(["--expect-relayed-family", "4"]);
    let finished = run_bounded(command, Duration::from_secs(50));
    assert_script_ok(
        &format!("aiortc data channel over {stream:?}"),
        &finished,
        &server,
        &[
            "\"a_to_b\": 200",
            "\"b_to_a\": 200",
            "\"allocations_deleted\": 2",
        ],
    );
    if let Some(allocations) = server.responses("allocate", 200) {
        let metrics = server.metrics_text();
        assert!(allocations >= 2, "{metrics}");
        assert!(
            server.responses("channel_bind", 200) >= Some(2),
            "{metrics}"
        );
        assert!(server.relayed("client_to_peer") >= Some(400), "{metrics}");
        assert!(server.relayed("peer_to_client") >= Some(400), "{metrics}");
    }
}

#[test]
fn aiortc_ours_turns() {
    aiortc_data_channel(Kind::Ours, Stream::Tls, V4);
}

#[test]
fn aiortc_ours_turn_tcp() {
    aiortc_data_channel(Kind::Ours, Stream::Tcp, V4);
}

/// `turns:[::1]:PORT?transport=tcp`: TLS over IPv6 (the certificate has an IP SAN for ::1),
/// IPv4 relayed addresses (aioice asks for no family).
#[test]
fn aiortc_ours_turns_ipv6() {
    aiortc_data_channel(Kind::Ours, Stream::Tls, V6);
}

#[test]
fn aiortc_coturn_turns() {
    aiortc_data_channel(Kind::Coturn, Stream::Tls, V4);
}

#[test]
fn aiortc_coturn_turns_ipv6() {
    aiortc_data_channel(Kind::Coturn, Stream::Tls, V6);
}

#[test]
fn aiortc_coturn_turn_tcp() {
    aiortc_data_channel(Kind::Coturn, Stream::Tcp, V4);
}

// ---------------------------------------------------------------------------------------
// coturn's turnutils_uclient

/// turnutils_peer: a UDP echo server on PORT and PORT+1 of 127.0.0.1 and ::1.
fn echo_peer() -> (Guard, u16) {
    let (port, _) = harness::free_port_range(2);
    let process = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-L", "::1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer (Debian package coturn; tests/run installs it)");
    let guard = Guard(process);
    wait_for_echo(std::net::SocketAddr::new(V4, port));
    (guard, port)
}

fn wait_for_echo(addr: std::net::SocketAddr) {
    let socket = std::net::UdpSocket::bind((addr.ip(), 0)).expect("bind probe");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let deadline = std::time::Instant::now() + common::WAIT;
    let mut buf = [0u8; 64];
    while std::time::Instant::now() < deadline {
        let _ = socket.send_to(b"ready?", addr);
        if let Ok((len, from)) = socket.recv_from(&mut buf)
            && from == addr
            && &buf[..len] == b"ready?"
        {
            return;
        }
    }
    panic!("turnutils_peer did not echo on {addr}");
}

/// uclient's `Total lost packets N (...)` and `tot_send_msgs=S, tot_recv_msgs=R`.
fn uclient_totals(stdout: &str) -> Option<(u64, u64, u64)> {
    let lost = stdout
        .lines()
        .find_map(|l| l.split("Total lost packets ").nth(1))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let totals = stdout
        .lines()
        .rev()
        .find_map(|l| l.split("start_mclient: tot_send_msgs=").nth(1))?;
    let (sent, received) = totals.split_once(", tot_recv_msgs=")?;
    Some((
        lost,
        sent.trim().parse().ok()?,
        received.trim().parse().ok()?,
    ))
}

/// Four uclients over `stream` (`-t`, or `-t -S` for TLS: `-S` alone is DTLS), Send
/// indications out and Data indications back (`-s`: CreatePermission, no channels, so no
/// channel-number caveat), 100 messages of 1000 bytes each, DONT-FRAGMENT in every
/// Allocate (`-g`), to turnutils_peer on 127.0.0.1, within `tolerance` (none for our relay).
fn uclient_indications(kind: Kind, stream: Stream, tolerance: Tolerance) {
    let server = server(
        kind,
        40,
        &[
            "--allow-loopback-peers",
            "--max-allocations-per-user",
            "100",
        ],
    );
    let (_peer, peer_port) = echo_peer();
    let mut failures = Vec::new();
    for _ in 0..tolerance.runs {
        let mut command = Command::new("turnutils_uclient");
        command
            .args(["-W", common::SECRET, "-u", "streams"])
            .args(["-p", &stream.port(&server).to_string()])
            .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
            .arg("-t");
        if !matches!(stream, Stream::Tcp) {
            command.arg("-S");
        }
        command
            .args([
                "-s", "-g", "-c", "-m", "4", "-n", "100", "-l", "1000", "-z", "5",
            ])
            .arg("127.0.0.1");
        let finished = run_bounded(command, Duration::from_secs(60));
        match uclient_outcome(&finished, tolerance.lost) {
            Ok((lost, received)) => {
                eprintln!(
                    "uclient over {stream:?} against {kind:?}: {received}/400 back, {lost} lost \
                     (after {} failed runs)",
                    failures.len()
                );
                if let Some(permissions) = server.responses("create_permission", 200) {
                    let metrics = server.metrics_text();
                    assert!(permissions >= 4, "{metrics}");
                    assert_eq!(server.responses("channel_bind", 200), Some(0), "{metrics}");
                    assert!(server.relayed("peer_to_client") >= Some(400), "{metrics}");
                }
                return;
            }
            Err(why) => failures.push(format!("{why}\n{}", finished.output())),
        }
    }
    panic!(
        "uclient over {stream:?} against {kind:?}: {} of {} runs failed\n{}\n--- server log ---\n{}",
        failures.len(),
        tolerance.runs,
        failures.join("\n=====\n"),
        server.log()
    );
}

/// What a uclient test accepts: runs (the first that passes counts) and messages lost.
#[derive(Clone, Copy)]
struct Tolerance {
    runs: u32,
    lost: u64,
}

/// Our relay: one run, nothing lost.
const STRICT: Tolerance = Tolerance { runs: 1, lost: 0 };

/// Lost and received messages of a finished uclient run, or why it failed.
fn uclient_outcome(finished: &Finished, allowed_loss: u64) -> Result<(u64, u64), String> {
    if !finished.success() {
        return Err("uclient failed".into());
    }
    let (lost, sent, received) =
        uclient_totals(&finished.stdout).ok_or_else(|| "no uclient totals".to_owned())?;
    if sent != 400 {
        return Err(format!("uclient sent {sent} of 400"));
    }
    if lost > allowed_loss || received + allowed_loss < 400 {
        return Err(format!("{lost} lost, {received} of {sent} back"));
    }
    Ok((lost, received))
}

#[test]
fn uclient_ours_tcp() {
    uclient_indications(Kind::Ours, Stream::Tcp, STRICT);
}

#[test]
fn uclient_ours_tls() {
    uclient_indications(Kind::Ours, Stream::Tls, STRICT);
}

#[test]
fn uclient_coturn_tcp() {
    uclient_indications(Kind::Coturn, Stream::Tcp, STRICT);
}

/// coturn 4.6.1 over TLS with uclient: some handshakes end in "tlsv1 alert internal error"
/// (uclient reconnects) and up to 6.5 % of the messages were lost in our runs ("Wrong
/// integrity in a message received from server"; none in most runs, more under CPU load).
/// That is coturn's, tolerated here: up to a quarter lost, and up to three runs (a run
/// whose Allocate answer coturn garbles fails); our relay must lose none in one run.
#[test]
fn uclient_coturn_tls() {
    uclient_indications(Kind::Coturn, Stream::Tls, Tolerance { runs: 3, lost: 100 });
}

/// The metric lookup of these tests keeps working when the relay labels a series by
/// transport.
#[test]
fn metric_lookup_sums_over_extra_labels() {
    let text = "# TYPE relay_allocations gauge\nrelay_allocations{transport=\"udp\"} 1\n\
                relay_allocations{transport=\"tls\"} 2\nrelay_allocations_created_total 7\n\
                relay_responses_total{method=\"allocate\",code=\"200\",transport=\"tcp\"} 3\n\
                relay_responses_total{method=\"allocate\",code=\"401\",transport=\"tcp\"} 4\n";
    assert_eq!(turn_servers::metric_sum(text, "relay_allocations"), 3);
    assert_eq!(
        turn_servers::metric_sum(text, "relay_allocations{transport=\"tls\"}"),
        2
    );
    assert_eq!(
        turn_servers::metric_sum(
            text,
            "relay_responses_total{method=\"allocate\",code=\"200\"}"
        ),
        3
    );
    assert_eq!(turn_servers::metric_sum(text, "relay_missing"), 0);
}

/// FIPS 180-4's examples: the hash Chromium is given for the test's server key.
#[test]
fn sha256_known_answers() {
    let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(sha256::sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(sha256::sha256(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        )),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}
