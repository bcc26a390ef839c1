//! The metrics/health listener cannot be locked out: idle, trickling or crowding connections
//! never keep a scrape or a probe out (src/driver/http.rs). Before the eviction, 16 idle
//! connections shut out `/metrics` and `/healthz`, and the DaemonSet's liveness probe would
//! have restarted the pod.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{RelayProcess, http_get, metric, scrape};
use socket2::{Domain, Socket, Type};

/// The relay's connection table (src/driver/http.rs MAX_CONNECTIONS), for the figures.
const SLOTS: usize = 16;

fn relay_with_metrics() -> (RelayProcess, SocketAddr) {
    let (lowest, highest) = common::free_port_range_args(10);
    let mut relay = RelayProcess::start(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--auth-secret",
        common::SECRET,
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ]);
    let addr = relay.metrics_addr();
    (relay, addr)
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
        .expect("bind the source address");
    socket
        .connect_timeout(&to.into(), common::WAIT)
        .expect("connect");
    socket.into()
}

/// `GET path` on an open connection: the status, or None if the relay closed it unanswered.
fn get_on(mut stream: TcpStream, path: &str) -> Option<u16> {
    stream
        .set_read_timeout(Some(common::WAIT))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.get(9..12)?.parse().ok()
}

#[test]
fn sixty_four_idle_connections_do_not_keep_health_probes_out() {
    let (_relay, metrics) = relay_with_metrics();
    // Four times the table, from the prober's own address, all held open and silent.
    let idle: Vec<TcpStream> = (0..4 * SLOTS)
        .map(|_| TcpStream::connect_timeout(&metrics, common::WAIT).expect("idle connection"))
        .collect();
    for path in ["/healthz", "/livez", "/healthz"] {
        let started = Instant::now();
        let (status, _) = http_get(metrics, path);
        let took = started.elapsed();
        assert_eq!(status, 200, "{path}");
        assert!(took < Duration::from_secs(1), "{path} took {took:?}");
    }
    // Each connection that found the table full evicted one: the idle ones past the
    // table's size, then the first probe (the later probes and this scrape found the slot
    // the previous one closed).
    let evicted = metric(&scrape(metrics), "relay_metrics_connections_evicted_total");
    assert_eq!(evicted, (4 * SLOTS - SLOTS + 1) as u64);
    drop(idle);
}

#[test]
fn a_crowding_source_evicts_its_own_connections_not_the_probe() {
    let (_relay, metrics) = relay_with_metrics();
    // The probe connects first and is slow to send its request (a kubelet over a long path).
    let probe = connect_from(Ipv4Addr::new(127, 0, 0, 1), metrics);
    // Meanwhile another address opens far more connections than there are slots: each new
    // one must evict one of that address's own, the oldest first, never the probe.
    let crowd: Vec<TcpStream> = (0..3 * SLOTS)
        .map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 2), metrics))
        .collect();
    // Let the relay accept them all before the probe speaks.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get_on(probe, "/healthz"), Some(200));
    drop(crowd);
}

#[test]
fn a_connection_without_a_request_head_is_closed_after_the_head_deadline() {
    let (_relay, metrics) = relay_with_metrics();
    let mut trickle = TcpStream::connect_timeout(&metrics, common::WAIT).expect("connect");
    trickle.write_all(b"GET /metr").expect("half a request");
    trickle
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = trickle.read_to_end(&mut rest);
    let took = started.elapsed();
    // HEAD_DEADLINE is 2 s; the loop wakes for it, so allow one second of scheduling.
    assert!(rest.is_empty(), "no answer to half a request: {rest:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}
