//! Issue 10, item 5, through the real binary over loopback: many clients behind one address
//! (an office or carrier NAT) all get their 401 and their allocation at once, with ordinary
//! RFC 8489 retransmissions, however many of them start together.

mod common;
#[path = "support/stun_client.rs"]
mod stun_client;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use stun_client::{Creds, Req, Response};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::RequestedTransport;
use stun_codec::rfc5766::methods::ALLOCATE;

const CLIENTS: usize = 1000;
/// RFC 8489 §6.2.1: the first retransmission after 500 ms, then doubling.
const RTO: Duration = Duration::from_millis(500);

/// One client's state in the set-up: what it last sent and when it resends it.
struct Client {
    socket: UdpSocket,
    creds: Creds,
    request: Vec<u8>,
    tid: [u8; 12],
    started: Instant,
    resend_at: Instant,
    rto: Duration,
    sent: u32,
    allocated_after: Option<Duration>,
}

impl Client {
    fn send(&mut self, relay: SocketAddr, now: Instant) {
        // Loopback does not drop, and a full socket buffer shows up as the retransmission.
        let _ = self.socket.send_to(&self.request, relay);
        self.sent += 1;
        self.resend_at = now + self.rto;
        self.rto *= 2;
    }

    /// The next request: an unauthenticated Allocate, or one signed with `nonce`.
    fn prepare(&mut self, index: usize, nonce: Option<&str>) {
        self.tid = [0x4E; 12];
        self.tid[..8].copy_from_slice(&(index as u64).to_be_bytes());
        self.tid[8] = u8::from(nonce.is_some());
        let mut req = Req::request(ALLOCATE).attr(RequestedTransport::new(17));
        if let Some(nonce) = nonce {
            req = req.auth(&self.creds, nonce);
        }
        self.request = req.tid(self.tid).build();
        self.rto = RTO;
    }
}

/// What a set-up of many clients on 127.0.0.1 gave.
struct SetUp {
    allocated: usize,
    /// From the first client's start to the last allocation (or the deadline).
    all_done: Duration,
    slowest: Duration,
    retransmissions: u32,
    answers: HashMap<u16, u32>,
}

/// `clients` clients on distinct ports of 127.0.0.1, client i starting `spacing` x i after
/// the first, each Allocate -> 401 -> authenticated Allocate with RFC 8489 retransmissions.
fn set_up(relay: SocketAddr, clients: usize, spacing: Duration, user: &str) -> SetUp {
    // More sockets than a default soft descriptor limit of 1024 leaves room for.
    relay::driver::limits::raise_nofile_limit();
    let mut poll = Poll::new().expect("poll");
    let expiry = common::unix_now() + 3600;
    let mut clients: Vec<Client> = (0..clients)
        .map(|i| {
            let mut socket =
                UdpSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind client");
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)
                .expect("register");
            let now = Instant::now();
            let mut client = Client {
                socket,
                creds: Creds::rest(
                    common::SECRET.as_bytes(),
                    expiry,
                    &format!("{user}-{i}"),
                    common::REALM,
                ),
                request: Vec::new(),
                tid: [0; 12],
                started: now,
                resend_at: now,
                rto: RTO,
                sent: 0,
                allocated_after: None,
            };
            client.prepare(i, None);
            client
        })
        .collect();

    let t0 = Instant::now();
    for (i, client) in clients.iter_mut().enumerate() {
        client.started = t0 + spacing * i as u32;
        client.resend_at = client.started;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut answers: HashMap<u16, u32> = HashMap::new();
    let deadline = t0 + Duration::from_secs(10);
    let mut last_allocation = t0;
    while clients.iter().any(|c| c.allocated_after.is_none()) && Instant::now() < deadline {
        let now = Instant::now();
        for client in clients.iter_mut().filter(|c| c.allocated_after.is_none()) {
            if client.resend_at <= now {
                client.send(relay, now);
            }
        }
        let next = clients
            .iter()
            .filter(|c| c.allocated_after.is_none())
            .map(|c| c.resend_at)
            .min()
            .unwrap_or(now);
        let wait = next.saturating_duration_since(Instant::now());
        poll.poll(&mut events, Some(wait.min(Duration::from_millis(5))))
            .expect("poll");
        for event in &events {
            let index = event.token().0;
            let client = &mut clients[index];
            while let Ok((len, _)) = client.socket.recv_from(&mut buf) {
                let response = Response::decode(&buf[..len]);
                if response.transaction_id() != client.tid || client.allocated_after.is_some() {
                    continue; // the answer to a retransmission already answered
                }
                let code = response.error_code().unwrap_or(200);
                *answers.entry(code).or_default() += 1;
                match code {
                    200 => {
                        assert_eq!(response.class(), MessageClass::SuccessResponse);
                        client.allocated_after = Some(client.started.elapsed());
                        last_allocation = Instant::now();
                    }
                    401 => {
                        let nonce = response.nonce();
                        client.prepare(index, Some(&nonce));
                        client.send(relay, Instant::now());
                    }
                    other => panic!("client {index}: {other} {response:?}"),
                }
            }
        }
    }
    let allocated: Vec<Duration> = clients.iter().filter_map(|c| c.allocated_after).collect();
    let done = allocated.len() == clients.len();
    SetUp {
        allocated: allocated.len(),
        all_done: if done {
            last_allocation - t0
        } else {
            t0.elapsed()
        },
        slowest: allocated.iter().max().copied().unwrap_or_default(),
        // Two requests per client that got as far as its allocation; more are resends.
        retransmissions: clients.iter().map(|c| c.sent).sum::<u32>() - 2 * allocated.len() as u32,
        answers,
    }
}

fn start_relay(ports: u16) -> common::RelayProcess {
    let (lowest, highest) = common::free_port_range(ports);
    common::RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--lowest-port",
        &lowest.to_string(),
        "--highest-port",
        &highest.to_string(),
        "--metrics-addr",
        "127.0.0.1:0",
    ])
}

#[test]
fn a_thousand_clients_on_one_address_are_all_allocated_within_two_seconds() {
    let mut relay = start_relay(1100);
    let metrics = relay.metrics_addr();
    // Client i starts i ms after the first: all 1,000 within one second.
    let result = set_up(relay.addr, CLIENTS, Duration::from_millis(1), "office");
    let body = common::scrape(metrics);
    let limited = common::metric(&body, "relay_drops_total{reason=\"rate_limited\"}");
    eprintln!(
        "{} of {CLIENTS} clients on 127.0.0.1 allocated; the last {:?} after the first \
         started; slowest set-up {:?}; answers {:?}; {} retransmissions; {limited} answers \
         refused by admission",
        result.allocated, result.all_done, result.slowest, result.answers, result.retransmissions
    );
    assert_eq!(result.allocated, CLIENTS, "answers {:?}", result.answers);
    assert!(
        result.all_done <= Duration::from_secs(2),
        "all allocated only after {:?}",
        result.all_done
    );
    assert_eq!(
        common::metric(&body, "relay_allocations{family=\"ipv4\"}"),
        CLIENTS as u64
    );
    relay.terminate();
}

/// Someone who shares or spoofs the clients' address floods the relay with the requests
/// whose answers cost the most credit (header-only Allocates: 20 bytes for a 401 of about
/// 64), 20,000 per second (400 KB/s; 2 KB/s used to exhaust a per-source budget). The
/// clients on that address still get every answer at the first try.
#[test]
fn a_flood_from_the_clients_address_does_not_keep_their_answers_from_them() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut relay = start_relay(300);
    let metrics = relay.metrics_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        let target = relay.addr;
        std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind flood");
            let mut sent = 0u64;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                for _ in 0..20 {
                    let mut tid = [0x66; 12];
                    tid[..8].copy_from_slice(&sent.to_be_bytes());
                    let request = Req::request(ALLOCATE).tid(tid).build();
                    let _ = socket.send_to(&request, target);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let result = set_up(relay.addr, 200, Duration::from_millis(2), "victim");
    stop.store(true, Ordering::Relaxed);
    let flooded = flood.join().expect("flood thread");
    let body = common::scrape(metrics);
    let limited = common::metric(&body, "relay_drops_total{reason=\"rate_limited\"}");
    eprintln!(
        "under a flood of {flooded} header-only Allocates from 127.0.0.1 ({limited} of their \
         401s refused): {} of 200 clients allocated, slowest set-up {:?}, {} retransmissions",
        result.allocated, result.slowest, result.retransmissions
    );
    assert!(limited > 0, "the flood's answers were not limited at all");
    assert_eq!(result.allocated, 200, "answers {:?}", result.answers);
    assert_eq!(result.retransmissions, 0, "a client had to retransmit");
    relay.terminate();
}
