//! Issue 10, item 1, through the real binary: state is bounded by live state. One client on
//! one 5-tuple creating and deleting its allocation over and over (Allocate, Refresh with
//! LIFETIME 0) leaves the relay's resident memory where it was. A lazy-deletion timer heap
//! kept an entry per cycle until the deleted allocation's would-be expiry: 292,768 cycles
//! took VmRSS from 3.0 MB to 14.9 MB and it never came back.

mod common;
#[path = "support/stun_client.rs"]
mod stun_client;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::net::UdpSocket;
use std::time::Duration;

use stun_client::{Creds, Req, Response};
use stun_codec::MessageClass;
use stun_codec::rfc5766::attributes::{Lifetime, RequestedTransport};
use stun_codec::rfc5766::methods::{ALLOCATE, REFRESH};

/// 200,000 in the release build (the figure); a tenth in a debug build, where each
/// cycle costs ten times the CPU.
const CYCLES: u32 = if cfg!(debug_assertions) {
    20_000
} else {
    200_000
};

struct Churn {
    socket: UdpSocket,
    relay: std::net::SocketAddr,
    creds: Creds,
    nonce: String,
    next: u64,
    buf: Vec<u8>,
}

impl Churn {
    /// Sends `req` with a fresh transaction id; returns the answer to it (bounded wait, with
    /// the retransmissions a real client makes).
    fn call(&mut self, req: Req) -> Response {
        self.next += 1;
        let mut tid = [0xC4; 12];
        tid[..8].copy_from_slice(&self.next.to_be_bytes());
        let bytes = req.tid(tid).build();
        for _ in 0..20 {
            self.socket.send_to(&bytes, self.relay).expect("send");
            while let Ok((len, _)) = self.socket.recv_from(&mut self.buf) {
                let response = Response::decode(&self.buf[..len]);
                if response.transaction_id() == tid {
                    return response;
                }
            }
        }
        panic!("no answer from the relay");
    }

    fn cycle(&mut self) {
        let allocate = Req::request(ALLOCATE)
            .attr(RequestedTransport::new(17))
            .auth(&self.creds, &self.nonce);
        let r = self.call(allocate);
        assert_eq!(r.class(), MessageClass::SuccessResponse, "Allocate: {r:?}");
        let delete = Req::request(REFRESH)
            .attr(Lifetime::from_u32(0))
            .auth(&self.creds, &self.nonce);
        let r = self.call(delete);
        assert_eq!(
            r.class(),
            MessageClass::SuccessResponse,
            "Refresh(0): {r:?}"
        );
    }
}

#[test]
fn allocate_and_delete_cycles_leave_resident_memory_at_baseline() {
    let (lowest, highest) = common::free_port_range(16);
    let mut relay = common::RelayProcess::start(&[
        "--auth-secret",
        common::SECRET,
        "--lowest-port",
        &lowest.to_string(),
        "--highest-port",
        &highest.to_string(),
        "--max-allocations-per-user",
        "1",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let metrics = relay.metrics_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let creds = Creds::rest(
        common::SECRET.as_bytes(),
        common::unix_now() + 3600,
        "churn",
        common::REALM,
    );
    let mut churn = Churn {
        socket,
        relay: relay.addr,
        creds,
        nonce: String::new(),
        next: 0,
        buf: vec![0; 2048],
    };
    let challenge = churn.call(Req::request(ALLOCATE).attr(RequestedTransport::new(17)));
    assert_eq!(challenge.error_code(), Some(401));
    churn.nonce = challenge.nonce();

    // Warm-up, so that buffers allocated once are in the baseline.
    for _ in 0..1000 {
        churn.cycle();
    }
    let before = common::rss_kib(relay.pid());
    let started = std::time::Instant::now();
    for _ in 0..CYCLES {
        churn.cycle();
    }
    let elapsed = started.elapsed();
    let after = common::rss_kib(relay.pid());
    let body = common::scrape(metrics);
    eprintln!(
        "{CYCLES} Allocate + Refresh(0) cycles on one 5-tuple in {elapsed:?}: VmRSS {before} KiB \
         -> {after} KiB"
    );
    assert_eq!(
        common::metric(&body, "relay_allocations{family=\"ipv4\"}"),
        0
    );
    assert!(
        after < before + 1024,
        "VmRSS grew by {} KiB over {CYCLES} cycles",
        after.saturating_sub(before)
    );
    relay.terminate();
}
