//! Soak: the real binary under churn and abuse, then back to its baseline.
//!
//! Client threads, each with its own loopback source IP, loop until the deadline: a fresh
//! client socket allocates, binds a channel to an echo peer, relays ChannelData and a Send
//! indication both ways, refreshes, then either deletes its allocation (Refresh 0) or
//! abandons it (the socket just goes away, and the allocation must expire). Meanwhile
//! garbage (random bytes, STUN-looking headers, ChannelData-looking frames, unauthenticated
//! requests) is sprayed at the listen socket and at every port of the relay range, and junk
//! HTTP at the metrics port. Allocations live `LIFETIME` seconds (the hidden
//! `--test-lifetime` flag), so the abandoned ones expire during the run.
//!
//! Afterwards the relay must be where it started: no allocations, permissions, channels or
//! relay ports in use (from /metrics), the same number of open descriptors
//! (/proc/PID/fd), and a resident set (/proc/PID/status VmRSS) within a small margin of the
//! baseline taken after a warm-up round.
//!
//! `RELAY_SOAK_SECONDS` sets the traffic phase (default 15 s, what CI runs);
//! `RELAY_SOAK_SECONDS=600 cargo test --release --test soak -- --nocapture` is the long form.

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::stun_encoder::codec::Attribute;
use common::{Client, RelayProcess, channel_data, credentials};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, REFRESH, SEND};
use stun_codec::{Message, TransactionId};

/// The relay port range: 1,000 ports found free when the test starts (never a fixed range:
/// another relay on the machine may hold it).
fn relay_ports() -> std::ops::RangeInclusive<u16> {
    static PORTS: std::sync::OnceLock<(u16, u16)> = std::sync::OnceLock::new();
    let (lowest, highest) = *PORTS.get_or_init(|| common::free_port_range(1000));
    lowest..=highest
}
/// Seconds an allocation (and its permissions and channels) lives without a refresh.
const LIFETIME: u64 = 4;
const CLIENT_THREADS: usize = 8;
/// Loopback source IPs per client thread: each client socket takes the next one, so the
/// per-source limit on 401 answers (a reflection guard) never throttles the churn.
const IPS_PER_THREAD: u8 = 25;
const PEERS: usize = 4;
/// Pause between two cycles of a client thread.
const CYCLE_PAUSE: Duration = Duration::from_millis(40);
/// Round trips per client through its channel (plus one Send indication).
const ROUND_TRIPS: usize = 5;
/// Resident set growth tolerated after everything expired: allocator caches and the
/// capacity that hash maps keep after shrinking, not anything that grows with the run.
const RSS_SLACK_KIB: u64 = 8 * 1024;

fn soak_seconds() -> u64 {
    std::env::var("RELAY_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

// ---------------------------------------------------------------------------------------
// The relay process from outside: metrics, descriptors, memory
// ---------------------------------------------------------------------------------------

/// The sum of every series of `name` (all families / states given by `filter`).
fn metric_sum(body: &str, name: &str, filter: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Load {
    allocations: u64,
    permissions: u64,
    channels: u64,
    ports_used: u64,
}

fn load(metrics: SocketAddr) -> Load {
    let body = common::scrape(metrics);
    Load {
        allocations: metric_sum(&body, "relay_allocations{", ""),
        permissions: metric_sum(&body, "relay_permissions{", ""),
        channels: metric_sum(&body, "relay_channels{", ""),
        ports_used: metric_sum(&body, "relay_relay_ports{", "state=\"used\""),
    }
}

const IDLE: Load = Load {
    allocations: 0,
    permissions: 0,
    channels: 0,
    ports_used: 0,
};

/// Polls (bounded) until `done` holds, returning the last value seen.
fn wait_for<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let value = probe();
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {value:?} after {limit:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------
// Peers, clients, garbage
// ---------------------------------------------------------------------------------------

/// Echo peers on 127.0.0.1: everything received goes back to where it came from.
fn spawn_peers(stop: &Arc<AtomicBool>) -> (Vec<SocketAddr>, Vec<thread::JoinHandle<()>>) {
    let mut addrs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..PEERS {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        addrs.push(socket.local_addr().expect("peer addr"));
        let stop = Arc::clone(stop);
        handles.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..len], from);
                }
            }
        }));
    }
    (addrs, handles)
}

#[derive(Default)]
struct Tally {
    cycles: AtomicU64,
    deleted: AtomicU64,
    abandoned: AtomicU64,
    sent: AtomicU64,
    echoed: AtomicU64,
    /// Allocates refused with 437 on a 5-tuple an abandoned allocation still held.
    mismatches: AtomicU64,
}

fn udp() -> Attribute {
    Attribute::RequestedTransport(RequestedTransport::new(17))
}

/// Waits (bounded) for the ChannelData frame `expected` on the client socket, skipping
/// anything else (a late echo of an earlier round trip, say). False on timeout.
fn await_frame(client: &Client, expected: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((len, from)) = client.socket.recv_from(&mut buf)
            && from == client.server
            && buf[..len] == *expected
        {
            return true;
        }
    }
    false
}

/// One client's life: allocate, bind, relay both ways, refresh, then delete or abandon.
fn client_cycle(relay: SocketAddr, source: Ipv4Addr, peer: SocketAddr, n: u64, tally: &Tally) {
    let (username, password) = credentials(&format!("soak{n}"));
    let mut client = Client::new(relay, &username, &password);
    // The kernel may hand this client the port of an earlier client of the same address
    // whose abandoned allocation is still alive: that 5-tuple gets 437 (RFC 8656 §7.2), and
    // a real client tries again from another port. The refused sockets are kept until the
    // cycle ends, so that the kernel does not hand out their ports again meanwhile.
    let mut refused = Vec::new();
    let mut allocated;
    loop {
        let socket = UdpSocket::bind((source, 0)).expect("bind client on loopback");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        refused.push(std::mem::replace(&mut client.socket, socket));
        client.nonce = None; // nonces are bound to the client's address and port
        allocated = client.authenticated(ALLOCATE, vec![udp()]);
        if allocated.error_code() != Some(437) || refused.len() > 8 {
            break;
        }
        tally.mismatches.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(
        allocated.class(),
        MessageClass::SuccessResponse,
        "Allocate: {:?}",
        allocated.error_code()
    );
    let relayed = allocated
        .get::<XorRelayAddress>()
        .expect("XOR-RELAYED-ADDRESS")
        .address();
    assert!(relay_ports().contains(&relayed.port()));
    let channel = 0x4000 + (n % 0x100) as u16;
    let bound = client.authenticated(
        CHANNEL_BIND,
        vec![
            Attribute::ChannelNumber(ChannelNumber::new(channel).expect("number")),
            Attribute::XorPeerAddress(XorPeerAddress::new(peer)),
        ],
    );
    assert_eq!(
        bound.class(),
        MessageClass::SuccessResponse,
        "ChannelBind: {:?}",
        bound.error_code()
    );

    for i in 0..ROUND_TRIPS {
        let payload = format!("soak {n} round trip {i}").into_bytes();
        client
            .socket
            .send_to(&channel_data(channel, &payload), relay)
            .expect("send");
        tally.sent.fetch_add(1, Ordering::Relaxed);
        if await_frame(&client, &channel_data(channel, &payload)) {
            tally.echoed.fetch_add(1, Ordering::Relaxed);
        }
    }
    // A Send indication: out through the relay, back as ChannelData (the peer has a channel).
    let payload = format!("soak {n} send indication").into_bytes();
    let mut send = Message::new(
        stun_codec::MessageClass::Indication,
        SEND,
        TransactionId::new([n as u8; 12]),
    );
    send.add_attribute(Attribute::XorPeerAddress(XorPeerAddress::new(peer)));
    send.add_attribute(Attribute::Data(Data::new(payload.clone()).expect("data")));
    client
        .socket
        .send_to(&stun_encoder::encode_message(&send, None, false), relay)
        .expect("send");
    tally.sent.fetch_add(1, Ordering::Relaxed);
    if await_frame(&client, &channel_data(channel, &payload)) {
        tally.echoed.fetch_add(1, Ordering::Relaxed);
    }

    let refreshed = client.authenticated(
        REFRESH,
        vec![Attribute::Lifetime(Lifetime::from_u32(LIFETIME as u32))],
    );
    assert_eq!(
        refreshed.class(),
        MessageClass::SuccessResponse,
        "Refresh: {:?}",
        refreshed.error_code()
    );
    if n.is_multiple_of(2) {
        let deleted =
            client.authenticated(REFRESH, vec![Attribute::Lifetime(Lifetime::from_u32(0))]);
        assert_eq!(deleted.class(), MessageClass::SuccessResponse);
        tally.deleted.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.abandoned.fetch_add(1, Ordering::Relaxed);
    }
    tally.cycles.fetch_add(1, Ordering::Relaxed);
}

/// A small deterministic generator (reproducible garbage, no dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 16
    }
}

/// Sprays garbage at the listen socket and every relay port from rotating loopback sources
/// (127.1.x.y), and junk at the metrics port, until `stop`. Returns datagrams sent.
fn spray(relay: SocketAddr, metrics: SocketAddr, stop: &AtomicBool, seed: u64) -> u64 {
    let mut rng = Lcg(seed);
    let sources: Vec<UdpSocket> = (0..16u8)
        .map(|i| UdpSocket::bind((Ipv4Addr::new(127, 1, seed as u8, i + 1), 0)).expect("bind"))
        .collect();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..50 {
            let len = (rng.next() % 1500) as usize;
            for b in &mut buf[..len] {
                *b = rng.next() as u8;
            }
            match rng.next() % 4 {
                // A STUN header with the magic cookie and a plausible length.
                0 if len >= 20 => {
                    buf[0] = 0;
                    buf[1] = [1, 3, 4, 8, 9, 0x16][(rng.next() % 6) as usize];
                    buf[2..4].copy_from_slice(&((len as u16 - 20) & !3).to_be_bytes());
                    buf[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
                }
                // ChannelData-looking.
                1 if len >= 4 => buf[0] = 0x40 | (rng.next() as u8 & 0x0F),
                _ => {}
            }
            let to = if rng.next().is_multiple_of(2) {
                relay
            } else {
                let ports = relay_ports();
                let span = u64::from(ports.end() - ports.start()) + 1;
                let port = ports.start() + (rng.next() % span) as u16;
                SocketAddr::new(relay.ip(), port)
            };
            let source = &sources[(rng.next() % sources.len() as u64) as usize];
            if source.send_to(&buf[..len], to).is_ok() {
                sent += 1;
            }
        }
        // Junk at the HTTP endpoint now and then; the answer does not matter.
        if rng.next().is_multiple_of(20)
            && let Ok(mut stream) = TcpStream::connect(metrics)
        {
            let _ = stream.write_all(&buf[..64]);
        }
        thread::sleep(Duration::from_millis(5));
    }
    sent
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[test]
fn churn_and_garbage_then_back_to_baseline() {
    let lifetime = LIFETIME.to_string();
    let mut relay = RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--allow-loopback-peers",
        "--lowest-port",
        &relay_ports().start().to_string(),
        "--highest-port",
        &relay_ports().end().to_string(),
        "--metrics-addr",
        "127.0.0.1:0",
        "--test-lifetime",
        &lifetime,
    ]);
    let line = relay.wait_for_log("metrics on http://");
    let start = line.find("http://").expect("url") + "http://".len();
    let end = start + line[start..].find('/').expect("path");
    let metrics: SocketAddr = line[start..end].parse().expect("metrics address");
    let pid = relay.pid();

    let stop_peers = Arc::new(AtomicBool::new(false));
    let (peers, peer_threads) = spawn_peers(&stop_peers);
    let tally = Arc::new(Tally::default());

    // Warm-up: one full cycle, so that buffers allocated once are in the baseline.
    client_cycle(relay.addr, Ipv4Addr::new(127, 0, 0, 2), peers[0], 0, &tally);
    let warm = wait_for(
        "warm-up",
        Duration::from_secs(10),
        || load(metrics),
        |l| *l == IDLE,
    );
    thread::sleep(Duration::from_millis(300));
    let baseline_fds = common::open_descriptors(pid);
    let baseline_rss = common::rss_kib(pid);
    assert_eq!(warm, IDLE);

    let seconds = soak_seconds();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let stop_spray = Arc::new(AtomicBool::new(false));
    let sprayers: Vec<_> = (0..2u64)
        .map(|seed| {
            let stop = Arc::clone(&stop_spray);
            let addr = relay.addr;
            thread::spawn(move || spray(addr, metrics, &stop, seed + 1))
        })
        .collect();
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let tally = Arc::clone(&tally);
            let peer = peers[t % PEERS];
            let addr = relay.addr;
            thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let ip = Ipv4Addr::new(
                        127,
                        0,
                        1 + t as u8,
                        1 + (n % u64::from(IPS_PER_THREAD)) as u8,
                    );
                    client_cycle(addr, ip, peer, (t as u64) << 32 | (n + 1), &tally);
                    n += 1;
                    // Paced, so that abandoned allocations (one in two) waiting out their
                    // lifetime stay well inside the port range and the machine stays usable.
                    thread::sleep(CYCLE_PAUSE);
                }
            })
        })
        .collect();

    // Mid-run: the relay is busy (allocations live, abandoned ones waiting to expire).
    let mut peak = IDLE;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        let now = load(metrics);
        peak.allocations = peak.allocations.max(now.allocations);
        peak.ports_used = peak.ports_used.max(now.ports_used);
        peak.channels = peak.channels.max(now.channels);
    }
    let client_panics = clients.into_iter().filter_map(|c| c.join().err()).count();
    stop_spray.store(true, Ordering::Relaxed);
    let garbage: u64 = sprayers
        .into_iter()
        .map(|s| s.join().expect("sprayer"))
        .sum();
    assert_eq!(client_panics, 0, "client threads failed (see above)");

    // Everything abandoned expires within its lifetime (plus timer slack).
    let after = wait_for(
        "allocations, permissions, channels and ports after the run",
        Duration::from_secs(LIFETIME + 15),
        || load(metrics),
        |l| *l == IDLE,
    );
    let fds = wait_for(
        "open descriptors",
        Duration::from_secs(5),
        || common::open_descriptors(pid),
        |n| *n == baseline_fds,
    );
    let rss = common::rss_kib(pid);

    let cycles = tally.cycles.load(Ordering::Relaxed);
    let sent = tally.sent.load(Ordering::Relaxed);
    let echoed = tally.echoed.load(Ordering::Relaxed);
    eprintln!(
        "soak {seconds}s: {cycles} client cycles ({} deleted, {} abandoned, {} Allocates met 437 \
         on a reused 5-tuple), {echoed}/{sent} \
         datagrams echoed, {garbage} garbage datagrams; peak {} allocations, {} relay ports, \
         {} channels; baseline vs after: fds {baseline_fds} vs {fds}, relay ports 0 vs {}, \
         allocations 0 vs {}, VmRSS {baseline_rss} KiB vs {rss} KiB",
        tally.deleted.load(Ordering::Relaxed),
        tally.abandoned.load(Ordering::Relaxed),
        tally.mismatches.load(Ordering::Relaxed),
        peak.allocations,
        peak.ports_used,
        peak.channels,
        after.ports_used,
        after.allocations,
    );
    assert!(cycles >= 20, "only {cycles} client cycles ran");
    assert!(
        peak.allocations >= 2,
        "never more than one allocation: {peak:?}"
    );
    // Loopback does not lose datagrams unless a socket buffer overflows; allow a little.
    assert!(
        echoed * 100 >= sent * 95,
        "only {echoed} of {sent} datagrams came back"
    );
    assert!(
        rss <= baseline_rss + RSS_SLACK_KIB,
        "VmRSS grew from {baseline_rss} KiB to {rss} KiB"
    );
    // Still serving after all that, data path included.
    let last = Tally::default();
    client_cycle(
        relay.addr,
        Ipv4Addr::new(127, 0, 0, 3),
        peers[0],
        1 << 40,
        &last,
    );
    assert_eq!(last.echoed.load(Ordering::Relaxed), ROUND_TRIPS as u64 + 1);
    stop_peers.store(true, Ordering::Relaxed);
    for p in peer_threads {
        p.join().expect("peer");
    }
}
