//! Independent client stacks through our relay on loopback, over IPv4 and IPv6:
//! - aiortc (PyPI): two WebRTC peers restricted to relay candidates open a data channel;
//! - aioice's TURN client (PyPI): ChannelBind + ChannelData to an echo peer;
//! - coturn's turnutils_uclient/turnutils_peer (Debian): Send/Data indications and channels.
//!
//! `tests/run` installs all of them (a venv for the Python ones, Debian's coturn package);
//! run it rather than bare `cargo test` on a fresh machine. The matrix these tests cover is
//! in README.md, "Interop".

mod common;
#[path = "interop/harness.rs"]
mod harness;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::credentials;
use harness::{DualStackRelay, Finished, Guard, V4, V6, free_port_range, run_bounded, script};

/// Echo peers on loopback need this; two clients of the relay talking through each other's
/// relayed addresses (the aiortc tests) do not: the relay's own addresses are reachable on
/// its relay port range whatever the loopback policy.
const ALLOW_LOOPBACK: &str = "--allow-loopback-peers";

// ---------------------------------------------------------------------------------------
// aioice and aiortc (Python, from the venv tests/run creates)

/// The one JSON line a script prints must say `"ok": true`, with the named counts.
fn assert_script_ok(what: &str, finished: &Finished, relay: &DualStackRelay, expect: &[&str]) {
    assert!(
        finished.success(),
        "{what} failed\n{}\n--- relay log ---\n{}",
        finished.output(),
        relay.log()
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

/// aioice allocates (over `transport`), binds a channel to an echo peer and relays `count`
/// payloads of each size there and back without loss, then deletes the allocation.
fn aioice_echo(transport: IpAddr, request_family: Option<u8>, relayed: IpAddr) {
    let relay = DualStackRelay::start(20, &[ALLOW_LOOPBACK]);
    for size in ["100", "1200"] {
        let (username, password) = credentials("aioice");
        let mut command = script("aioice_relay.py");
        command
            .args(["--server", &relay.addr(transport).to_string()])
            .args(["--username", &username, "--password", &password])
            .args(["--count", "300", "--size", size, "--timeout", "20"])
            .args(["--expect-relayed-family", family_number(relayed)]);
        if let Some(family) = request_family {
            command.args(["--request-family", &family.to_string()]);
        }
        let finished = run_bounded(command, Duration::from_secs(40));
        assert_script_ok(
            &format!("aioice ({size} bytes)"),
            &finished,
            &relay,
            &["\"lost\": 0", "\"received\": 300", "\"deleted\": true"],
        );
        let relayed_prefix = match relayed {
            IpAddr::V4(_) => "\"relayed\": \"127.0.0.1:",
            IpAddr::V6(_) => "\"relayed\": \"[::1]:",
        };
        assert!(
            finished.stdout.contains(relayed_prefix),
            "{}",
            finished.output()
        );
    }
    // aioice sends only ChannelData: every payload went through a bound channel both ways.
    assert_eq!(
        relay.responses("channel_bind", 200),
        2,
        "{}",
        relay.metrics_text()
    );
    assert_eq!(relay.responses("create_permission", 200), 0);
    assert!(relay.relayed("peer_to_client") >= 600);
}

fn family_number(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { "6" } else { "4" }
}

#[test]
fn aioice_channels_over_ipv4() {
    aioice_echo(V4, None, V4);
}

/// aioice reaches the relay over ::1; without REQUESTED-ADDRESS-FAMILY it gets an IPv4
/// relayed address (RFC 8656 §7.2), so the peer is IPv4.
#[test]
fn aioice_channels_over_ipv6_transport() {
    aioice_echo(V6, None, V4);
}

/// IPv6 end to end: over ::1, REQUESTED-ADDRESS-FAMILY IPv6, an IPv6 relayed address and peer.
#[test]
fn aioice_channels_over_ipv6_relayed_address() {
    aioice_echo(V6, Some(6), V6);
}

/// Two aiortc peers, each allowed only its TURN-relayed candidate (iceTransportPolicy
/// "relay"), connect ICE + DTLS + SCTP through our relay and exchange 200 messages each way.
/// The relay runs with its default peer policy (no loopback peers): each peer's only peer is
/// the other's relayed address, one of the relay's own.
fn aiortc_data_channel(transport: IpAddr, request_family: Option<u8>, relayed: IpAddr) {
    let relay = DualStackRelay::start(20, &[]);
    let (username, password) = credentials("aiortc");
    let mut command = script("aiortc_datachannel.py");
    command
        .args(["--server", &relay.addr(transport).to_string()])
        .args(["--username", &username, "--password", &password])
        .args(["--count", "200", "--timeout", "30"])
        .args(["--expect-relay-ports", &relay.port_range_arg()])
        .args(["--expect-relayed-family", family_number(relayed)]);
    if let Some(family) = request_family {
        command.args(["--request-family", &family.to_string()]);
    }
    let finished = run_bounded(command, Duration::from_secs(50));
    assert_script_ok(
        "aiortc data channel",
        &finished,
        &relay,
        &[
            "\"a_to_b\": 200",
            "\"b_to_a\": 200",
            "\"allocations_deleted\": 2",
        ],
    );
    // Both peers allocated here and talked through channels; the relay saw the traffic.
    assert!(
        relay.responses("allocate", 200) >= 2,
        "{}",
        relay.metrics_text()
    );
    assert!(
        relay.responses("channel_bind", 200) >= 2,
        "{}",
        relay.metrics_text()
    );
    assert!(
        relay.relayed("client_to_peer") >= 400,
        "{}",
        relay.metrics_text()
    );
    assert!(
        relay.relayed("peer_to_client") >= 400,
        "{}",
        relay.metrics_text()
    );
}

#[test]
fn aiortc_data_channel_over_ipv4() {
    aiortc_data_channel(V4, None, V4);
}

#[test]
fn aiortc_data_channel_over_ipv6_transport() {
    aiortc_data_channel(V6, None, V4);
}

#[test]
fn aiortc_data_channel_over_ipv6_relayed_addresses() {
    aiortc_data_channel(V6, Some(6), V6);
}

// ---------------------------------------------------------------------------------------
// coturn's turnutils_uclient and turnutils_peer (Debian package coturn)

/// turnutils_peer: a UDP echo server on PORT and PORT+1 of 127.0.0.1 and ::1.
struct EchoPeer {
    _process: Guard,
    port: u16,
}

impl EchoPeer {
    fn start() -> EchoPeer {
        let (port, _) = free_port_range(2);
        let process = Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-L", "::1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer (Debian package coturn; tests/run installs it)");
        let peer = EchoPeer {
            _process: Guard(process),
            port,
        };
        for ip in [V4, V6] {
            for port in [port, port + 1] {
                wait_for_echo(SocketAddr::new(ip, port));
            }
        }
        peer
    }
}

/// Waits (bounded) until `addr` echoes a datagram.
fn wait_for_echo(addr: SocketAddr) {
    let socket = UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).expect("bind probe");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let deadline = Instant::now() + common::WAIT;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = socket.send_to(b"ready?", addr);
        if let Ok((len, from)) = socket.recv_from(&mut buf)
            && from == addr
            && &buf[..len] == b"ready?"
        {
            return;
        }
    }
    panic!(
        "turnutils_peer did not echo on {addr} within {:?}",
        common::WAIT
    );
}

/// turnutils_uclient against `relay` over `transport`, with `peer` as the peer address.
/// It mints REST API credentials itself from the secret (`-W`), for user `user`.
fn uclient(
    relay: &DualStackRelay,
    transport: IpAddr,
    peer: &EchoPeer,
    peer_ip: IpAddr,
    user: &str,
    flags: &[&str],
) -> Command {
    let mut command = Command::new("turnutils_uclient");
    command
        .args(["-W", common::SECRET, "-u", user])
        .args(["-p", &relay.addr(transport).port().to_string()])
        .args(["-e", &peer_ip.to_string(), "-r", &peer.port.to_string()])
        .args(flags)
        .arg(transport.to_string());
    command
}

/// uclient's summary: `Total lost packets 0 (0.000000%), total send dropped 0 (...)` and
/// `start_mclient: tot_send_msgs=400, tot_recv_msgs=400`.
fn assert_uclient_lossless(what: &str, finished: &Finished, relay: &DualStackRelay, messages: u64) {
    let out = finished.output();
    assert!(
        finished.success(),
        "{what}: turnutils_uclient failed\n{out}\n--- relay log ---\n{}",
        relay.log()
    );
    assert!(
        finished
            .stdout
            .contains("Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)"),
        "{what}: loss, or uclient did not finish\n{out}"
    );
    let totals = format!("tot_send_msgs={messages}, tot_recv_msgs={messages}\n");
    assert!(
        finished.stdout.contains(&totals),
        "{what}: expected {totals:?}\n{out}"
    );
}

/// Send indications out, Data indications back (`-s`: CreatePermission, no channels), four
/// concurrent clients, DONT-FRAGMENT in every Allocate (`-g`). uclient asks for a relayed
/// address of the peer's family. With `rtcp_pairs`, uclient's RTP/RTCP mode also exercises
/// EVEN-PORT with the R bit, RESERVATION-TOKEN and a reservation never claimed.
fn uclient_indications(transport: IpAddr, peer_ip: IpAddr, rtcp_pairs: bool) {
    let relay = DualStackRelay::start(100, &[ALLOW_LOOPBACK, "--max-allocations-per-user", "100"]);
    let peer = EchoPeer::start();
    let (clients, per_client) = (4u64, 100u64);
    let mut flags = vec![
        "-s", "-g", "-m", "4", "-n", "100", "-l", "1000", "-z", "5", "-v",
    ];
    if !rtcp_pairs {
        flags.push("-c");
    }
    let finished = run_bounded(
        uclient(&relay, transport, &peer, peer_ip, "indications", &flags),
        Duration::from_secs(60),
    );
    // In RTP/RTCP mode the four clients are two RTP+RTCP pairs: still 4 x 100 messages.
    assert_uclient_lossless("send indications", &finished, &relay, clients * per_client);
    let metrics = relay.metrics_text();
    assert!(
        relay.responses("create_permission", 200) >= clients,
        "{metrics}"
    );
    assert_eq!(
        relay.responses("channel_bind", 200),
        0,
        "no channels in -s mode\n{metrics}"
    );
    assert!(
        relay.relayed("peer_to_client") >= clients * per_client,
        "{metrics}"
    );
    assert_eq!(
        relay.metric("relay_drops_total{reason=\"send_indication\"}"),
        0,
        "{metrics}"
    );
    if rtcp_pairs {
        assert_reserved_pairs(&finished);
    }
}

/// In RTP/RTCP mode uclient asks for EVEN-PORT with the R bit, then allocates with the
/// RESERVATION-TOKEN it got: its -v output shows the token and the two relayed ports.
fn assert_reserved_pairs(finished: &Finished) {
    let out = finished.output();
    let ports: Vec<u16> = finished
        .stdout
        .lines()
        .filter_map(|l| l.split("Received relay addr: ").nth(1))
        .filter_map(|a| a.trim().parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    let tokens = finished
        .stdout
        .lines()
        .filter_map(|l| l.split("rtv=").nth(1))
        .filter(|t| t.trim() != "0")
        .count();
    assert!(tokens > 0, "no RESERVATION-TOKEN handed out\n{out}");
    assert!(
        ports.windows(2).any(|w| w[0] % 2 == 0 && w[1] == w[0] + 1),
        "no allocation claimed the reserved port next to an even one: {ports:?}\n{out}"
    );
}

#[test]
fn coturn_uclient_send_indications_over_ipv4() {
    uclient_indications(V4, V4, true);
}

#[test]
fn coturn_uclient_send_indications_over_ipv6() {
    uclient_indications(V6, V6, false);
}

/// Over IPv4 to the relay, with an IPv6 peer: uclient sends REQUESTED-ADDRESS-FAMILY IPv6.
#[test]
fn coturn_uclient_send_indications_ipv4_transport_ipv6_relayed() {
    uclient_indications(V4, V6, false);
}

/// Channel mode (no `-s`). uclient draws each channel number uniformly from RFC 5766's
/// 0x4000–0x7FFF and has no flag to choose one; our relay accepts RFC 8656's 0x4000–0x4FFF
/// and answers 400 to the rest, on which uclient exits. Each run binds two numbers, so one
/// run in 16 draws both in range. The test runs uclient, `PARALLEL` runs at a time, until
/// one does (at most 252 runs: a chance of 1 in 10^7 of never drawing them), requires every
/// other run to have stopped at exactly that 400 and nothing else, and the winning run to
/// be lossless.
fn uclient_channels(transport: IpAddr) {
    const BATCHES: u16 = 63;
    const PARALLEL: u16 = 4;
    let relay = DualStackRelay::start(2 * BATCHES * PARALLEL + 20, &[ALLOW_LOOPBACK]);
    let peer = EchoPeer::start();
    let (mut rejected, mut bound) = (0u64, 0u64);
    for batch in 0..BATCHES {
        let runs: Vec<Finished> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..PARALLEL)
                .map(|i| {
                    // A user per run: every run leaves two allocations behind (uclient does
                    // not delete them on exit) and a user may hold only 10.
                    let user = format!("channels{}", batch * PARALLEL + i);
                    let flags = ["-v", "-c", "-m", "1", "-n", "200", "-l", "1000", "-z", "2"];
                    let command = uclient(&relay, transport, &peer, transport, &user, &flags);
                    scope.spawn(move || run_bounded(command, Duration::from_secs(30)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("uclient run"))
                .collect()
        });
        let mut winners = Vec::new();
        for finished in runs {
            // -v logs each accepted ChannelBind as `success: 0x4abc`.
            for number in finished
                .stdout
                .lines()
                .filter_map(|l| l.split("success: 0x").nth(1))
            {
                let number = u16::from_str_radix(number.trim(), 16).unwrap_or(0);
                assert!(
                    (0x4000..=0x4FFF).contains(&number),
                    "the relay accepted channel {number:#x}\n{}",
                    finished.output()
                );
                bound += 1;
            }
            if finished.success() {
                assert_uclient_lossless("channels", &finished, &relay, 200);
                winners.push(finished);
                continue;
            }
            assert!(
                finished
                    .stdout
                    .contains("channel bind: error 400 (Bad Request)"),
                "uclient failed for another reason than a channel number outside 0x4000-0x4FFF\n{}",
                finished.output()
            );
            rejected += 1;
        }
        if let Some(winner) = winners.first() {
            let metrics = relay.metrics_text();
            assert_eq!(relay.responses("channel_bind", 400), rejected, "{metrics}");
            // A winning run bound two channels, each twice (the second is a refresh); its
            // traffic loop may refresh them once more (unlogged), with a CreatePermission.
            assert!(bound >= 4, "{}", winner.output());
            assert!(relay.responses("channel_bind", 200) >= bound, "{metrics}");
            assert!(
                relay.relayed("peer_to_client") >= 200 * winners.len() as u64,
                "{metrics}"
            );
            eprintln!(
                "uclient channel mode: {} of {} runs passed, {rejected} drew a number above 0x4FFF",
                winners.len(),
                (batch + 1) * PARALLEL
            );
            return;
        }
    }
    panic!(
        "turnutils_uclient drew a channel number above 0x4FFF in each of {} runs",
        BATCHES * PARALLEL
    );
}

#[test]
fn coturn_uclient_channels_over_ipv4() {
    uclient_channels(V4);
}

#[test]
fn coturn_uclient_channels_over_ipv6() {
    uclient_channels(V6);
}
