//! Deterministic scenario tests of the sans-IO core: a fake driver, virtual time, fixed
//! seeds. Every test asserts the complete list of outputs after each input, and the harness
//! fails on leftovers (DESIGN convention 8).

#[path = "scenarios/known_answers.rs"]
mod known_answers;
#[path = "support/stun_client.rs"]
mod stun_client;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use bytecodec::DecodeExt;
use relay::core::{
    AllocationId, Config, Deliver, Family, Forward, HEADROOM, Lifetimes, ListenerId, Now,
    OpenError, Output, RelayAddress, RelayId, Server, TAILROOM,
};
use stun_client::{Creds, Req, Response, types as t};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::rfc8656::attributes::{
    AdditionalAddressFamily, AddressFamily, RequestedAddressFamily,
};
use stun_codec::{MessageClass, MessageDecoder, Method};
use stun_encoder::codec::Attribute;

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

const UNIX0: u64 = 1_700_000_000;
const REALM: &str = "relay.test";
const SECRET: &[u8] = b"north-secret";
const SECRET2: &[u8] = b"south-secret";
const LISTENER: ListenerId = ListenerId(0);
const SEED: [u8; 32] = [7; 32];
const PORTS: RangeInclusive<u16> = 50000..=50099;
const UDP: u8 = 17;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn relay_bind() -> IpAddr {
    ip("10.0.0.10")
}

fn relay_public() -> IpAddr {
    ip("203.0.113.10")
}

fn relay_bind_v6() -> IpAddr {
    ip("fd00::10")
}

fn relay_public_v6() -> IpAddr {
    ip("2001:db8::10")
}

fn config() -> Config {
    Config {
        listeners: vec![addr("192.0.2.10:3478")],
        realm: REALM.to_owned(),
        auth_secrets: vec![SECRET.to_vec()],
        relay_v4: Some(RelayAddress {
            bind: relay_bind(),
            public: relay_public(),
        }),
        relay_v6: None,
        ports: PORTS,
        allow_loopback_peers: false,
        lifetimes: Lifetimes::default(),
        ..Config::default()
    }
}

fn config_v6() -> Config {
    Config {
        relay_v6: Some(RelayAddress {
            bind: relay_bind_v6(),
            public: relay_public_v6(),
        }),
        ..config()
    }
}

/// Credentials valid for a day, for `id`, minted from SECRET in our realm.
fn creds(id: &str) -> Creds {
    Creds::rest(SECRET, UNIX0 + 86_400, id, REALM)
}

/// A client with its credentials and a nonce the server issued to its address.
#[derive(Debug, Clone)]
struct Client {
    addr: SocketAddr,
    creds: Creds,
    nonce: String,
}

impl Client {
    /// An authenticated request from this client.
    fn req(&self, method: Method) -> Req {
        Req::request(method).auth(&self.creds, &self.nonce)
    }

    fn key(&self) -> [u8; 16] {
        self.creds.key
    }
}

/// What a successful Allocate gave.
#[derive(Debug, Clone)]
struct Allocated {
    id: AllocationId,
    relay: RelayId,
    port: u16,
    relayed: SocketAddr,
    response: Response,
}

/// What the fake driver answers to the next OpenRelay requests (default: Ok).
#[derive(Debug, Clone, Copy)]
enum OpenAnswer {
    Ok,
    Err(OpenError),
    /// Leave it pending: the test completes it later with `Harness::complete`.
    Defer,
}

/// The server, a virtual clock and a fake driver.
struct Harness {
    server: Server,
    t0: Instant,
    elapsed: Duration,
    next_relay: usize,
    open_script: VecDeque<OpenAnswer>,
    /// OpenRelay requests left pending by `OpenAnswer::Defer`.
    deferred: Vec<(AllocationId, Family)>,
    next_tid: u32,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(config())
    }

    fn with_config(config: Config) -> Self {
        Harness {
            server: Server::new(config, SEED),
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            next_relay: 0,
            open_script: VecDeque::new(),
            deferred: Vec::new(),
            next_tid: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.t0 + self.elapsed,
            unix_secs: UNIX0 + self.elapsed.as_secs(),
        }
    }

    /// Virtual time `secs` after the start.
    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// Moves the clock to `secs` after the start (never backwards).
    fn set_time(&mut self, secs: u64) {
        let to = Duration::from_secs(secs);
        assert!(to >= self.elapsed, "time goes forward");
        self.elapsed = to;
    }

    fn set_time_ms(&mut self, ms: u64) {
        let to = Duration::from_millis(ms);
        assert!(to >= self.elapsed, "time goes forward");
        self.elapsed = to;
    }

    /// `handle_timeout` at the current time, then all its outputs.
    fn timeout(&mut self) -> Vec<Output> {
        self.assert_drained();
        self.server.handle_timeout(self.now());
        self.drain()
    }

    fn tid(&mut self) -> [u8; 12] {
        self.next_tid += 1;
        let mut id = [0xA5; 12];
        id[8..].copy_from_slice(&self.next_tid.to_be_bytes());
        id
    }

    fn assert_drained(&mut self) {
        let leftover = self.server.poll_output();
        assert!(
            leftover.is_none(),
            "unexpected leftover output: {leftover:?}"
        );
    }

    /// Builds and sends `req` from `from` (giving it a fresh transaction ID unless it has
    /// one); returns the bytes sent and the data-path decision.
    fn send(&mut self, from: SocketAddr, mut req: Req) -> (Vec<u8>, Option<Forward>) {
        if req.transaction_id.is_none() {
            req.transaction_id = Some(self.tid());
        }
        let bytes = req.build();
        let forward = self.send_bytes(from, &bytes);
        (bytes, forward)
    }

    fn send_bytes(&mut self, from: SocketAddr, bytes: &[u8]) -> Option<Forward> {
        self.assert_drained();
        self.server
            .handle_client_datagram(self.now(), LISTENER, from, bytes)
    }

    /// The fake driver: drains the output queue, answering every OpenRelay at once (with
    /// the next scripted answer, or Ok with a fresh RelayId), and returns every output.
    fn drain(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        while let Some(output) = self.server.poll_output() {
            if let Output::OpenRelay {
                allocation, family, ..
            } = &output
            {
                let result = match self.open_script.pop_front().unwrap_or(OpenAnswer::Ok) {
                    OpenAnswer::Ok => {
                        self.next_relay += 1;
                        Some(Ok(RelayId(self.next_relay)))
                    }
                    OpenAnswer::Err(e) => Some(Err(e)),
                    OpenAnswer::Defer => None,
                };
                let (allocation, family) = (*allocation, *family);
                outputs.push(output);
                match result {
                    Some(result) => {
                        self.server
                            .handle_relay_opened(self.now(), allocation, family, result)
                    }
                    None => self.deferred.push((allocation, family)),
                }
            } else {
                outputs.push(output);
            }
        }
        self.assert_consistent();
        outputs
    }

    /// The core's own invariant checker, after every drained input.
    fn assert_consistent(&self) {
        let broken = self.server.invariant_violations();
        assert!(broken.is_empty(), "core invariants broken: {broken:#?}");
    }

    /// Completes the `index`th deferred OpenRelay (Ok gets a fresh RelayId, returned), then
    /// returns everything the core asks for.
    fn complete(
        &mut self,
        index: usize,
        result: Result<(), OpenError>,
    ) -> (Option<RelayId>, Vec<Output>) {
        self.assert_drained();
        let (allocation, family) = self.deferred[index];
        let result = result.map(|()| {
            self.next_relay += 1;
            RelayId(self.next_relay)
        });
        self.server
            .handle_relay_opened(self.now(), allocation, family, result);
        (result.ok(), self.drain())
    }

    fn expect_nothing(&mut self) {
        let outputs = self.drain();
        assert!(outputs.is_empty(), "expected no output, got {outputs:?}");
    }

    /// Exactly one output: a response to `to`.
    fn expect_response(&mut self, to: SocketAddr) -> Response {
        let outputs = self.drain();
        assert_eq!(outputs.len(), 1, "expected one response, got {outputs:?}");
        to_client(&outputs[0], to)
    }

    /// Sends a request and expects exactly one response of the same method and transaction.
    fn call(&mut self, from: SocketAddr, req: Req) -> Response {
        let method = req.method;
        let (bytes, forward) = self.send(from, req);
        assert_eq!(forward, None, "a request is not forwarded");
        let response = self.expect_response(from);
        assert_eq!(response.transaction_id(), bytes[8..20], "transaction id");
        assert_eq!(response.message.method(), method, "method");
        response
    }

    /// A fresh nonce for `from`, from the 401 of an unauthenticated Allocate (which creates
    /// nothing).
    fn nonce(&mut self, from: SocketAddr) -> String {
        let r = self.call(
            from,
            Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
        );
        assert_eq!(r.error_code(), Some(401));
        r.nonce()
    }

    /// Replaces the client's nonce by a fresh one (nonces last 600 s).
    fn renew(&mut self, client: &mut Client) {
        client.nonce = self.nonce(client.addr);
    }

    fn client(&mut self, from: &str, id: &str) -> Client {
        let addr = addr(from);
        let nonce = self.nonce(addr);
        Client {
            addr,
            creds: creds(id),
            nonce,
        }
    }

    /// Allocates a UDP relay with default options and checks the success.
    fn allocate(&mut self, client: &Client) -> Allocated {
        self.allocate_with(
            client,
            client.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
        )
    }

    /// Sends an Allocate and expects exactly [OpenRelay (IPv4, in range), success].
    fn allocate_with(&mut self, client: &Client, req: Req) -> Allocated {
        let (bytes, forward) = self.send(client.addr, req);
        assert_eq!(forward, None);
        let outputs = self.drain();
        assert_eq!(
            outputs.len(),
            2,
            "expected OpenRelay + success: {outputs:?}"
        );
        let Output::OpenRelay {
            allocation,
            family: Family::V4,
            addr: bind,
            dont_fragment: _,
        } = outputs[0]
        else {
            panic!("expected an IPv4 OpenRelay, got {:?}", outputs[0]);
        };
        assert_eq!(bind.ip(), relay_bind());
        assert!(
            PORTS.contains(&bind.port()),
            "port {} in range",
            bind.port()
        );
        let response = to_client(&outputs[1], client.addr);
        assert_eq!(response.transaction_id(), bytes[8..20]);
        assert_eq!(
            response.class(),
            MessageClass::SuccessResponse,
            "{response:?}"
        );
        assert!(response.integrity_valid(&client.key()));
        let relayed = response.get::<XorRelayAddress>().unwrap().address();
        assert_eq!(relayed, SocketAddr::new(relay_public(), bind.port()));
        assert_eq!(
            response.get::<XorMappedAddress>().unwrap().address(),
            client.addr
        );
        Allocated {
            id: allocation,
            relay: RelayId(self.next_relay),
            port: bind.port(),
            relayed,
            response,
        }
    }

    /// An authenticated request expected to succeed with a valid MESSAGE-INTEGRITY.
    fn ok(&mut self, client: &Client, req: Req) -> Response {
        let r = self.call(client.addr, req);
        assert_eq!(r.class(), MessageClass::SuccessResponse, "{r:?}");
        assert!(r.integrity_valid(&client.key()), "MI of success");
        r
    }

    /// An authenticated request expected to fail with `code`, signed with the client's key.
    fn fails(&mut self, client: &Client, req: Req, code: u16) -> Response {
        let r = self.call(client.addr, req);
        assert_eq!(r.class(), MessageClass::ErrorResponse, "{r:?}");
        assert_eq!(r.error_code(), Some(code), "{r:?}");
        assert!(r.integrity_valid(&client.key()), "MI of error {code}");
        r
    }

    fn create_permission(&mut self, client: &Client, peers: &[SocketAddr]) -> Response {
        let mut req = client.req(CREATE_PERMISSION);
        for peer in peers {
            req = req.attr(XorPeerAddress::new(*peer));
        }
        let r = self.ok(client, req);
        assert_eq!(r.types(), vec![t::MESSAGE_INTEGRITY]);
        r
    }

    fn channel_bind_req(client: &Client, number: u16, peer: SocketAddr) -> Req {
        client
            .req(CHANNEL_BIND)
            .attr(ChannelNumber::new(number).unwrap())
            .attr(XorPeerAddress::new(peer))
    }

    fn channel_bind(&mut self, client: &Client, number: u16, peer: SocketAddr) {
        let r = self.ok(client, Self::channel_bind_req(client, number, peer));
        assert_eq!(r.types(), vec![t::MESSAGE_INTEGRITY]);
    }

    /// ChannelData from a client: returns the forwarded payload, checked against `payload`.
    fn channel_data(&mut self, from: SocketAddr, number: u16, payload: &[u8]) -> Option<Forward> {
        let frame = channel_data_frame(number, payload);
        let forward = self.send_bytes(from, &frame);
        self.expect_nothing();
        if let Some(f) = &forward {
            assert_eq!(&frame[f.payload.clone()], payload);
        }
        forward
    }

    /// A datagram from `from` on the relay socket of `allocation`; returns the decision and
    /// the frame bytes to send to the client.
    fn peer(
        &mut self,
        allocation: AllocationId,
        from: SocketAddr,
        payload: &[u8],
    ) -> Option<(Deliver, Vec<u8>)> {
        self.assert_drained();
        let mut buf = vec![0xEE; HEADROOM + payload.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        let deliver =
            self.server
                .handle_peer_datagram(self.now(), allocation, from, &mut buf, payload.len());
        self.expect_nothing();
        deliver.map(|d| {
            let frame = buf[d.frame.clone()].to_vec();
            (d, frame)
        })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let leftover = self.server.poll_output();
            assert!(
                leftover.is_none(),
                "leftover output at the end: {leftover:?}"
            );
        }
    }
}

/// The output must be a response to `to` on our listener; decodes it.
fn to_client(output: &Output, to: SocketAddr) -> Response {
    let Output::ToClient {
        listener,
        client,
        bytes,
    } = output
    else {
        panic!("expected ToClient, got {output:?}");
    };
    assert_eq!(*listener, LISTENER);
    assert_eq!(*client, to);
    Response::decode(bytes)
}

fn channel_data_frame(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = number.to_be_bytes().to_vec();
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    while !frame.len().is_multiple_of(4) {
        frame.push(0);
    }
    frame
}

fn lifetime_of(r: &Response) -> u64 {
    r.get::<Lifetime>().expect("LIFETIME").lifetime().as_secs()
}

/// The `Forward` expected for `payload` of a datagram relayed through `a` to `peer`.
fn forward_to(a: &Allocated, peer: SocketAddr, payload: std::ops::Range<usize>) -> Forward {
    Forward {
        relay: a.relay,
        peer,
        payload,
    }
}

// ---------------------------------------------------------------------------------------
// 1. Binding
// ---------------------------------------------------------------------------------------

#[test]
fn binding_reflects_the_sender_and_mirrors_fingerprint() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");

    let r = h.call(c, Req::request(BINDING));
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS]);
    assert_eq!(r.get::<XorMappedAddress>().unwrap().address(), c);
    assert!(!r.has_fingerprint());

    let r = h.call(c, Req::request(BINDING).fingerprint());
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS, t::FINGERPRINT]);
    assert!(r.has_fingerprint());

    // An IPv6 client sees its own address.
    let c6 = addr("[2001:db8::77]:1234");
    let r = h.call(c6, Req::request(BINDING).fingerprint());
    assert_eq!(r.get::<XorMappedAddress>().unwrap().address(), c6);

    // Binding is not authenticated: MESSAGE-INTEGRITY in the request does not make one
    // appear in the response.
    let mut req = Req::request(BINDING);
    req.bare_integrity = Some([1; 16]);
    let r = h.call(c, req);
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS]);

    // A bad FINGERPRINT: dropped silently, counted.
    let tid = h.tid();
    let mut bytes = Req::request(BINDING).fingerprint().tid(tid).build();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    assert_eq!(h.send_bytes(c, &bytes), None);
    h.expect_nothing();
    assert_eq!(h.server.counters().malformed, 1);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.poll_timeout(), None);
}

// ---------------------------------------------------------------------------------------
// 2. Authentication
// ---------------------------------------------------------------------------------------

/// A 401/438: ERROR-CODE, REALM and NONCE, no MESSAGE-INTEGRITY, and nothing created.
fn assert_challenge(h: &Harness, r: &Response, code: u16) {
    assert_challenge_with(h, r, code, 0);
}

/// A 401/438 while `allocations` allocations (one port each) exist.
fn assert_challenge_with(h: &Harness, r: &Response, code: u16, allocations: usize) {
    assert_eq!(r.class(), MessageClass::ErrorResponse);
    assert_eq!(r.error_code(), Some(code));
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::REALM, t::NONCE]);
    assert_eq!(r.realm(), REALM);
    assert!(!r.has_integrity());
    assert_eq!(h.server.allocation_count(), allocations);
    assert_eq!(h.server.ports_in_use(), [allocations, 0]);
}

#[test]
fn allocate_without_credentials_is_challenged_and_creates_nothing() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let r = h.call(c, Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r, 401);
    assert_eq!(h.server.poll_timeout(), None);
    // The challenge mirrors FINGERPRINT too.
    let r = h.call(
        c,
        Req::request(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .fingerprint(),
    );
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::REALM, t::NONCE, t::FINGERPRINT]
    );
    assert!(r.has_fingerprint());
}

#[test]
fn incomplete_credentials_are_a_bad_request() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    for omit in 0..3 {
        let mut req = c.req(ALLOCATE).attr(RequestedTransport::new(UDP));
        req.omit[omit] = true;
        let r = h.call(c.addr, req);
        assert_eq!(r.error_code(), Some(400), "omitting #{omit}");
        assert_eq!(r.types(), vec![t::ERROR_CODE]);
    }
    // MESSAGE-INTEGRITY alone.
    let mut req = Req::request(ALLOCATE).attr(RequestedTransport::new(UDP));
    req.bare_integrity = Some(c.key());
    let r = h.call(c.addr, req);
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.types(), vec![t::ERROR_CODE]);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn nonce_from_another_address_is_stale_and_the_fresh_one_works() {
    let mut h = Harness::new();
    let other = h.client("198.51.100.2:40000", "alice");
    let c = Client {
        addr: addr("198.51.100.1:40000"),
        ..other.clone()
    };
    let r = h.call(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r, 438);
    assert_ne!(r.nonce(), other.nonce);
    // The same address and port but another IP is another client, and so is another port.
    let c2 = Client {
        addr: addr("198.51.100.2:40001"),
        ..other.clone()
    };
    let r2 = h.call(c2.addr, c2.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r2, 438);
    let c = Client {
        nonce: r.nonce(),
        ..c
    };
    h.allocate(&c);
}

#[test]
fn nonce_older_than_its_lifetime_is_stale() {
    let mut h = Harness::new();
    let fresh = h.client("198.51.100.1:40000", "alice");
    let old = h.client("198.51.100.2:40000", "bob");
    // 600 s old is still fine.
    h.set_time(600);
    h.allocate(&fresh);
    h.set_time(601);
    let r = h.call(
        old.addr,
        old.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_eq!(r.error_code(), Some(438));
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::REALM, t::NONCE]);
    assert!(!r.has_integrity());
    assert_eq!(h.server.allocation_count(), 1);
    let old = Client {
        nonce: r.nonce(),
        ..old
    };
    h.allocate(&old);
}

#[test]
fn expired_rest_username_is_unauthorized() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    c.creds = Creds::rest(SECRET, UNIX0 - 1, "alice", REALM);
    let r = h.call(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r, 401);
    // Expiring exactly now is still accepted; a username that is not `<expiry>[:id]` is not.
    c.creds = Creds::rest(SECRET, UNIX0, "alice", REALM);
    h.allocate(&c);
    let mut d = h.client("198.51.100.2:40000", "x");
    let username = "alice".to_owned();
    let password = stun_encoder::rest_password(SECRET, &username);
    d.creds = Creds {
        key: stun_encoder::long_term_key(&username, REALM, &password),
        username,
        password,
        realm: REALM.to_owned(),
    };
    let r = h.call(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge_with(&h, &r, 401, 1);
}

#[test]
fn wrong_password_corrupted_integrity_and_foreign_realm_are_unauthorized() {
    let mut h = Harness::new();
    let base = h.client("198.51.100.1:40000", "alice");

    let wrong_secret = Client {
        creds: Creds::rest(b"not-our-secret", UNIX0 + 3600, "alice", REALM),
        ..base.clone()
    };
    let r = h.call(
        base.addr,
        wrong_secret
            .req(ALLOCATE)
            .attr(RequestedTransport::new(UDP)),
    );
    assert_challenge(&h, &r, 401);

    let mut req = base.req(ALLOCATE).attr(RequestedTransport::new(UDP));
    req.corrupt_integrity = true;
    let r = h.call(base.addr, req);
    assert_challenge(&h, &r, 401);

    let foreign_realm = Client {
        creds: Creds::rest(SECRET, UNIX0 + 3600, "alice", "elsewhere.test"),
        ..base.clone()
    };
    let r = h.call(
        base.addr,
        foreign_realm
            .req(ALLOCATE)
            .attr(RequestedTransport::new(UDP)),
    );
    assert_challenge(&h, &r, 401);
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn credentials_from_either_rotated_secret_are_accepted() {
    let mut h = Harness::with_config(Config {
        auth_secrets: vec![SECRET.to_vec(), SECRET2.to_vec()],
        ..config()
    });
    let mut a = h.client("198.51.100.1:40000", "alice");
    a.creds = Creds::rest(SECRET, UNIX0 + 3600, "alice", REALM);
    let mut b = h.client("198.51.100.2:40000", "bob");
    b.creds = Creds::rest(SECRET2, UNIX0 + 3600, "bob", REALM);
    let first = h.allocate(&a);
    let second = h.allocate(&b);
    // Each answer is signed with the key of the secret the client used.
    assert!(first.response.integrity_valid(&a.key()));
    assert!(second.response.integrity_valid(&b.key()));
    assert!(
        !second
            .response
            .integrity_valid(&Creds::rest(SECRET, UNIX0 + 3600, "bob", REALM).key)
    );
    assert_eq!(h.server.allocation_count(), 2);
}

// ---------------------------------------------------------------------------------------
// 3. Allocate
// ---------------------------------------------------------------------------------------

#[test]
fn allocate_success_has_exact_attributes_and_signed_response() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    assert_eq!(
        a.response.types(),
        vec![
            t::XOR_RELAYED_ADDRESS,
            t::LIFETIME,
            t::XOR_MAPPED_ADDRESS,
            t::MESSAGE_INTEGRITY
        ]
    );
    assert_eq!(lifetime_of(&a.response), 600);
    assert_eq!(a.relayed, SocketAddr::new(relay_public(), a.port));
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    assert_eq!(h.server.counters().allocations_created, 1);
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));

    // With FINGERPRINT, the (deferred) success carries it after MESSAGE-INTEGRITY.
    let d = h.client("198.51.100.2:40000", "bob");
    let a = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .fingerprint(),
    );
    assert_eq!(
        a.response.types(),
        vec![
            t::XOR_RELAYED_ADDRESS,
            t::LIFETIME,
            t::XOR_MAPPED_ADDRESS,
            t::MESSAGE_INTEGRITY,
            t::FINGERPRINT
        ]
    );
    assert!(a.response.has_fingerprint());
}

#[test]
fn allocate_lifetime_is_floored_at_default_and_capped() {
    let mut h = Harness::new();
    for (i, (requested, granted)) in [(1200, 1200), (99_999, 3600), (10, 600), (600, 600)]
        .into_iter()
        .enumerate()
    {
        let c = h.client(&format!("198.51.100.{}:40000", i + 1), "alice");
        let a = h.allocate_with(
            &c,
            c.req(ALLOCATE)
                .attr(RequestedTransport::new(UDP))
                .attr(Lifetime::from_u32(requested)),
        );
        assert_eq!(lifetime_of(&a.response), granted, "requested {requested}");
    }
    // An allocation given 1200 s outlives the default one.
    h.set_time(600);
    let outputs = h.timeout();
    assert_eq!(
        outputs.len(),
        2,
        "the two 600 s allocations close: {outputs:?}"
    );
    assert_eq!(h.server.allocation_count(), 2);
    h.set_time(1200);
    assert_eq!(h.timeout().len(), 1);
    h.set_time(3600);
    assert_eq!(h.timeout().len(), 1);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn allocate_rejects_missing_or_unsupported_transport() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let r = h.fails(&c, c.req(ALLOCATE), 400);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    let r = h.fails(&c, c.req(ALLOCATE).attr(RequestedTransport::new(6)), 442);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    h.allocate(&c);
}

#[test]
fn allocate_retransmission_gets_the_same_bytes_and_new_transaction_gets_437() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let tid = h.tid();
    let req = c
        .req(ALLOCATE)
        .attr(RequestedTransport::new(UDP))
        .fingerprint()
        .tid(tid);
    let a = h.allocate_with(&c, req.clone());
    h.set_time(2);
    let again = h.call(c.addr, req);
    assert_eq!(
        again.bytes, a.response.bytes,
        "byte-identical retransmission"
    );
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    let r = h.fails(&c, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)), 437);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn allocate_address_family_checks() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V6)),
        440,
    );
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
        440,
    );
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V4))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
        400,
    );
    assert_eq!(h.server.allocation_count(), 0);
    // Asking for IPv4 explicitly works.
    h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V4)),
    );
}

#[test]
fn dual_stack_allocate_opens_both_families() {
    let mut h = Harness::with_config(config_v6());
    let c = h.client("198.51.100.1:40000", "alice");
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    let (
        Output::OpenRelay {
            family: Family::V4,
            addr: v4,
            ..
        },
        Output::OpenRelay {
            family: Family::V6,
            addr: v6,
            ..
        },
    ) = (&outputs[0], &outputs[1])
    else {
        panic!("{outputs:?}");
    };
    assert_eq!(v4.ip(), relay_bind());
    assert_eq!(v6.ip(), relay_bind_v6());
    let r = to_client(&outputs[2], c.addr);
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(
        r.types(),
        vec![
            t::XOR_RELAYED_ADDRESS,
            t::XOR_RELAYED_ADDRESS,
            t::LIFETIME,
            t::XOR_MAPPED_ADDRESS,
            t::MESSAGE_INTEGRITY
        ]
    );
    let relayed: Vec<SocketAddr> = r
        .message
        .attributes()
        .filter_map(|a| match a {
            Attribute::XorRelayAddress(x) => Some(x.address()),
            _ => None,
        })
        .collect();
    assert_eq!(
        relayed,
        vec![
            SocketAddr::new(relay_public(), v4.port()),
            SocketAddr::new(relay_public_v6(), v6.port())
        ]
    );
    assert_eq!(h.server.ports_in_use(), [1, 1]);

    // Only IPv6, through REQUESTED-ADDRESS-FAMILY.
    let d = h.client("198.51.100.2:40000", "bob");
    h.send(
        d.addr,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V6)),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert!(matches!(
        outputs[0],
        Output::OpenRelay {
            family: Family::V6,
            ..
        }
    ));
    let r = to_client(&outputs[1], d.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(h.server.ports_in_use(), [1, 2]);
}

#[test]
fn dual_stack_allocate_failing_one_family_closes_the_other() {
    let mut h = Harness::with_config(config_v6());
    let c = h.client("198.51.100.1:40000", "alice");
    h.open_script = VecDeque::from([OpenAnswer::Ok, OpenAnswer::Err(OpenError::Other)]);
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 4, "{outputs:?}");
    assert!(matches!(
        outputs[0],
        Output::OpenRelay {
            family: Family::V4,
            ..
        }
    ));
    assert!(matches!(
        outputs[1],
        Output::OpenRelay {
            family: Family::V6,
            ..
        }
    ));
    assert_eq!(outputs[2], Output::CloseRelay { relay: RelayId(1) });
    let r = to_client(&outputs[3], c.addr);
    assert_eq!(r.error_code(), Some(508));
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
}

#[test]
fn dont_fragment_opens_a_df_relay_socket() {
    // DONT-FRAGMENT is supported (DF on the relay socket), so it is not a 420.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(DontFragment),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    let Output::OpenRelay {
        dont_fragment: true,
        family: Family::V4,
        ..
    } = outputs[0]
    else {
        panic!("expected a DF OpenRelay: {outputs:?}");
    };
    let r = to_client(&outputs[1], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert!(r.integrity_valid(&c.key()));
    // Without it, no DF.
    let d = h.client("198.51.100.2:40000", "bob");
    h.send(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert!(
        matches!(
            outputs[0],
            Output::OpenRelay {
                dont_fragment: false,
                ..
            }
        ),
        "{outputs:?}"
    );
    assert_eq!(outputs.len(), 2);
}

#[test]
fn send_with_dont_fragment_needs_a_df_allocation() {
    let mut h = Harness::new();
    let peer = addr("8.8.8.11:5555");
    let send = || {
        Req::indication(SEND)
            .attr(XorPeerAddress::new(peer))
            .attr(Data::new(b"df".to_vec()).unwrap())
            .attr(DontFragment)
    };
    // Without DF on the socket: dropped (RFC 8656 §10.2).
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    h.create_permission(&c, &[peer]);
    let (_, forward) = h.send(c.addr, send());
    assert_eq!(forward, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().send_dropped, 1);
    // With DF on the socket: forwarded.
    let d = h.client("198.51.100.2:40000", "bob");
    let a = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(DontFragment),
    );
    h.create_permission(&d, &[peer]);
    let (bytes, forward) = h.send(d.addr, send());
    h.expect_nothing();
    let forward = forward.expect("forwarded");
    assert_eq!(forward.relay, a.relay);
    assert_eq!(&bytes[forward.payload], b"df");
}

// ---------------------------------------------------------------------------------------
// 4. Relay ports
// ---------------------------------------------------------------------------------------

#[test]
fn port_exhaustion_is_508() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50001,
        ..config()
    });
    let a = h.client("198.51.100.1:40000", "alice");
    let b = h.client("198.51.100.2:40000", "bob");
    let c = h.client("198.51.100.3:40000", "carol");
    let first = h.allocate(&a);
    let second = h.allocate(&b);
    let mut ports = [first.port, second.port];
    ports.sort_unstable();
    assert_eq!(ports, [50000, 50001]);
    let r = h.fails(&c, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)), 508);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.allocation_count(), 2);
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    // When one goes, the third gets its port.
    h.send(a.addr, a.req(REFRESH).attr(Lifetime::from_u32(0)));
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert_eq!(outputs[0], Output::CloseRelay { relay: first.relay });
    assert_eq!(
        to_client(&outputs[1], a.addr).class(),
        MessageClass::SuccessResponse
    );
    let third = h.allocate(&c);
    assert_eq!(third.port, first.port);
}

#[test]
fn address_in_use_is_retried_on_another_port() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50001,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    h.open_script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse)]);
    h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    let (
        Output::OpenRelay { addr: first, .. },
        Output::OpenRelay {
            addr: second,
            allocation,
            ..
        },
    ) = (&outputs[0], &outputs[1])
    else {
        panic!("{outputs:?}");
    };
    assert_ne!(first.port(), second.port());
    let r = to_client(&outputs[2], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(
        r.get::<XorRelayAddress>().unwrap().address(),
        SocketAddr::new(relay_public(), second.port())
    );
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    assert_eq!(h.server.counters().relay_open_failed, 1);
    // The allocation relays through the socket that did open.
    h.create_permission(&c, &[addr("8.8.8.9:1")]);
    h.channel_bind(&c, 0x4000, addr("8.8.8.9:1"));
    assert_eq!(
        h.channel_data(c.addr, 0x4000, b"x"),
        Some(Forward {
            relay: RelayId(1),
            peer: addr("8.8.8.9:1"),
            payload: 4..5
        })
    );
    assert!(h.peer(*allocation, addr("8.8.8.9:1"), b"y").is_some());
}

#[test]
fn address_in_use_is_retried_until_the_attempt_limit() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50001,
        ..config()
    });
    // Two failures, then a bind that works: the port that failed first is tried again
    // (it went back to the pool), and the allocation succeeds on the third attempt.
    let c = h.client("198.51.100.1:40000", "alice");
    h.open_script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse); 2]);
    h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(outputs.len(), 4, "{outputs:?}");
    assert!(
        outputs[..3]
            .iter()
            .all(|o| matches!(o, Output::OpenRelay { .. }))
    );
    assert_eq!(
        to_client(&outputs[3], c.addr).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(h.server.ports_in_use(), [1, 0]);

    // With a single free port left, one failure is already the end.
    let d = h.client("198.51.100.2:40000", "bob");
    h.open_script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse)]);
    h.send(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert_eq!(to_client(&outputs[1], d.addr).error_code(), Some(508));
    assert_eq!(h.server.ports_in_use(), [1, 0]);

    // Eight failures in a row, with ports to spare: 508, every port back.
    let mut h = Harness::with_config(Config {
        ports: 50000..=50009,
        ..config()
    });
    let d = h.client("198.51.100.2:40000", "bob");
    h.open_script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse); 8]);
    h.send(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(outputs.len(), 9, "{outputs:?}");
    assert!(
        outputs[..8]
            .iter()
            .all(|o| matches!(o, Output::OpenRelay { .. }))
    );
    let r = to_client(&outputs[8], d.addr);
    assert_eq!(r.error_code(), Some(508));
    assert!(r.integrity_valid(&d.key()));
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().relay_open_failed, 8);
}

#[test]
fn bind_failure_other_is_508_and_returns_the_port() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50001,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    h.open_script = VecDeque::from([OpenAnswer::Err(OpenError::Other)]);
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .fingerprint(),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert!(matches!(outputs[0], Output::OpenRelay { .. }));
    let r = to_client(&outputs[1], c.addr);
    assert_eq!(r.error_code(), Some(508));
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY, t::FINGERPRINT]
    );
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.counters().relay_open_failed, 1);
    // Nothing is left of it: the same client can try again.
    h.allocate(&c);
}

// ---------------------------------------------------------------------------------------
// 5. Refresh
// ---------------------------------------------------------------------------------------

#[test]
fn refresh_updates_the_lifetime_with_a_cap() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    h.set_time(100);
    let r = h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(1200)));
    assert_eq!(r.types(), vec![t::LIFETIME, t::MESSAGE_INTEGRITY]);
    assert_eq!(lifetime_of(&r), 1200);
    // The old deadline passes harmlessly.
    h.set_time(600);
    assert_eq!(h.timeout(), vec![]);
    h.set_time(1299);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.allocation_count(), 1);

    // The nonce is stale by now: 438 (unsigned) with a fresh one, and the allocation stays.
    let r = h.call(c.addr, c.req(REFRESH).attr(Lifetime::from_u32(99_999)));
    assert_challenge_with(&h, &r, 438, 1);
    c.nonce = r.nonce();
    let r = h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(99_999)));
    assert_eq!(lifetime_of(&r), 3600);
    // Without LIFETIME: the default.
    h.set_time(1300);
    let r = h.ok(&c, c.req(REFRESH));
    assert_eq!(lifetime_of(&r), 600);
    h.set_time(1899);
    assert_eq!(h.timeout(), vec![]);
    h.set_time(1900);
    assert_eq!(h.timeout(), vec![Output::CloseRelay { relay: a.relay }]);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn refresh_shorter_than_default_gets_the_default() {
    // RFC 8656 §7.3: a non-zero requested lifetime below the default is raised to the
    // default, as for Allocate.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let r = h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(10)));
    assert_eq!(lifetime_of(&r), 600);
}

#[test]
fn refresh_with_zero_lifetime_deletes() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    h.set_time(10);
    h.send(
        c.addr,
        c.req(REFRESH).attr(Lifetime::from_u32(0)).fingerprint(),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert_eq!(outputs[0], Output::CloseRelay { relay: a.relay });
    let r = to_client(&outputs[1], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(
        r.types(),
        vec![t::LIFETIME, t::MESSAGE_INTEGRITY, t::FINGERPRINT]
    );
    assert_eq!(lifetime_of(&r), 0);
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    // The stale timer entry fires harmlessly.
    h.set_time(600);
    assert_eq!(h.timeout(), vec![]);
    // A second delete finds nothing.
    h.fails(&c, c.req(REFRESH).attr(Lifetime::from_u32(0)), 437);
    // The peer's datagrams to the gone allocation are counted.
    assert!(h.peer(a.id, addr("8.8.8.9:1"), b"late").is_none());
    assert_eq!(h.server.counters().peer_no_allocation, 1);
}

#[test]
fn refresh_without_allocation_or_by_another_user() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let r = h.fails(&c, c.req(REFRESH), 437);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    h.allocate(&c);
    let mallory = Client {
        creds: creds("mallory"),
        ..c.clone()
    };
    let r = h.fails(
        &mallory,
        mallory.req(REFRESH).attr(Lifetime::from_u32(0)),
        441,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.allocation_count(), 1);
    // Refresh with a family the allocation does not have.
    h.fails(
        &c,
        c.req(REFRESH)
            .attr(RequestedAddressFamily::new(AddressFamily::V6)),
        443,
    );
}

// ---------------------------------------------------------------------------------------
// 6. ChannelBind and ChannelData from the client
// ---------------------------------------------------------------------------------------

#[test]
fn channel_bind_then_channel_data_is_forwarded() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peer = addr("8.8.8.9:7000");
    h.channel_bind(&c, 0x4000, peer);
    assert_eq!(
        h.channel_data(c.addr, 0x4000, b"hello"),
        Some(forward_to(&a, peer, 4..9))
    );
    // The highest number works too.
    let peer2 = addr("8.8.8.9:7001");
    h.channel_bind(&c, 0x4FFF, peer2);
    assert_eq!(
        h.channel_data(c.addr, 0x4FFF, b""),
        Some(forward_to(&a, peer2, 4..4))
    );
    // Frames without padding are accepted over UDP, too.
    let mut frame = channel_data_frame(0x4000, b"abc");
    frame.truncate(7);
    assert_eq!(
        h.send_bytes(c.addr, &frame),
        Some(forward_to(&a, peer, 4..7))
    );
    h.expect_nothing();
    let counters = h.server.counters();
    assert_eq!(counters.relayed_to_peer_packets, 3);
    assert_eq!(counters.relayed_to_peer_bytes, 8);
}

#[test]
fn channel_numbers_out_of_range_get_400() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let peer = XorPeerAddress::new(addr("8.8.8.9:7000"));
    for number in [0x0000u16, 0x3FFF, 0x5000, 0x7FFF, 0xFFFF] {
        let mut value = number.to_be_bytes().to_vec();
        value.extend_from_slice(&[0, 0]);
        let r = h.call(
            c.addr,
            c.req(CHANNEL_BIND)
                .attr(peer.clone())
                .raw(t::CHANNEL_NUMBER, &value),
        );
        assert_eq!(r.error_code(), Some(400), "{number:#06x}");
        // stun_codec refuses the attribute, but MESSAGE-INTEGRITY is verified on the raw
        // bytes first (RFC 8489 §9.2.4): the 400 is signed.
        assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
        assert!(r.integrity_valid(&c.key()), "{number:#06x}");
    }
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn channel_bind_conflicts_and_refresh() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let p1 = addr("8.8.8.9:7000");
    let p2 = addr("8.8.8.10:7000");
    h.channel_bind(&c, 0x4001, p1);
    // The number is bound to another peer.
    let r = h.fails(&c, Harness::channel_bind_req(&c, 0x4001, p2), 400);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // The peer is bound to another number (same IP, same port).
    h.fails(&c, Harness::channel_bind_req(&c, 0x4002, p1), 400);
    // Another port of the same IP is another peer.
    h.channel_bind(&c, 0x4002, addr("8.8.8.9:7001"));

    // Keep the allocation alive, and re-bind the same pair at 500 s.
    h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));
    h.set_time(500);
    h.channel_bind(&c, 0x4001, p1);
    h.set_time(899);
    assert_eq!(
        h.channel_data(c.addr, 0x4001, b"x"),
        Some(forward_to(&a, p1, 4..5))
    );
    // The binding made at 0 s is gone at 600 s.
    assert_eq!(h.channel_data(c.addr, 0x4002, b"x"), None);
    h.set_time(1099);
    assert!(h.channel_data(c.addr, 0x4001, b"x").is_some());
    h.set_time(1100);
    assert_eq!(h.channel_data(c.addr, 0x4001, b"x"), None);
    assert_eq!(h.server.counters().channel_data_unbound, 2);
}

#[test]
fn channel_bind_refusals() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    // No allocation.
    h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("8.8.8.9:1")),
        437,
    );
    h.allocate(&c);
    // IPv6 peer on an IPv4 allocation.
    let r = h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("[2001:db8::9]:1")),
        443,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // Loopback peers are refused unless allowed; port 0 is no peer for a channel.
    let r = h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("127.0.0.1:5000")),
        403,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("8.8.8.9:0")),
        403,
    );
    // Missing XOR-PEER-ADDRESS or CHANNEL-NUMBER.
    h.fails(
        &c,
        c.req(CHANNEL_BIND)
            .attr(ChannelNumber::new(0x4000).unwrap()),
        400,
    );
    h.fails(
        &c,
        c.req(CHANNEL_BIND)
            .attr(XorPeerAddress::new(addr("8.8.8.9:1"))),
        400,
    );
    // None of that bound anything.
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.server.counters().channel_data_unbound, 1);
}

#[test]
fn loopback_peers_are_allowed_when_configured() {
    let mut h = Harness::with_config(Config {
        allow_loopback_peers: true,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peer = addr("127.0.0.1:5000");
    h.channel_bind(&c, 0x4000, peer);
    assert_eq!(
        h.channel_data(c.addr, 0x4000, b"x"),
        Some(forward_to(&a, peer, 4..5))
    );
}

// ---------------------------------------------------------------------------------------
// 7. Peer → client
// ---------------------------------------------------------------------------------------

#[test]
fn peer_datagrams_go_through_channel_or_data_indication_or_are_dropped() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let stranger = addr("8.8.8.50:9");
    assert!(h.peer(a.id, stranger, b"who").is_none());
    assert_eq!(h.server.counters().peer_no_permission, 1);

    // Channel: 4-byte ChannelData header in the headroom, no padding.
    let peer = addr("8.8.8.9:7000");
    h.channel_bind(&c, 0x4123, peer);
    let (deliver, frame) = h.peer(a.id, peer, b"hello").unwrap();
    assert_eq!(deliver.listener, LISTENER);
    assert_eq!(deliver.client, c.addr);
    assert_eq!(deliver.frame, HEADROOM - 4..HEADROOM + 5);
    assert_eq!(
        frame,
        [0x41, 0x23, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']
    );

    // Same IP, other port: permitted (permissions are per IP), but not the channel's peer:
    // a Data indication.
    let other_port = addr("8.8.8.9:7001");
    let payload = b"abcde";
    let (deliver, frame) = h.peer(a.id, other_port, payload).unwrap();
    assert_eq!(deliver.client, c.addr);
    assert_eq!(deliver.frame.end, HEADROOM + payload.len() + 3);
    let message = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(&frame)
        .unwrap()
        .unwrap();
    assert_eq!(message.class(), MessageClass::Indication);
    assert_eq!(message.method(), DATA);
    let raw = stun_client::raw_attributes(&frame);
    assert_eq!(
        raw.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![t::XOR_PEER_ADDRESS, t::DATA]
    );
    assert_eq!(
        message.get_attribute::<XorPeerAddress>().unwrap().address(),
        other_port
    );
    assert_eq!(message.get_attribute::<Data>().unwrap().data(), payload);

    // Permission through CreatePermission, no channel: Data indication too.
    let p3 = addr("8.8.8.77:4444");
    h.create_permission(&c, &[p3]);
    let (_, frame) = h.peer(a.id, p3, b"1234").unwrap();
    let message = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(&frame)
        .unwrap()
        .unwrap();
    assert_eq!(
        message.get_attribute::<XorPeerAddress>().unwrap().address(),
        p3
    );
    assert_eq!(message.get_attribute::<Data>().unwrap().data(), b"1234");
    // Two indications, two different transaction IDs.
    let (_, again) = h.peer(a.id, p3, b"1234").unwrap();
    assert_ne!(frame[8..20], again[8..20]);

    let counters = h.server.counters().clone();
    assert_eq!(counters.peer_no_permission, 1);
    assert_eq!(counters.relayed_to_client_packets, 4);
    assert_eq!(counters.relayed_to_client_bytes, 5 + 5 + 4 + 4);
}

#[test]
fn channel_data_without_binding_or_allocation_is_counted() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.server.counters().channel_data_no_allocation, 1);
    h.allocate(&c);
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.server.counters().channel_data_unbound, 1);
    // Another 5-tuple (port) of the same host has no allocation.
    assert_eq!(
        h.channel_data(addr("198.51.100.1:40001"), 0x4000, b"x"),
        None
    );
    assert_eq!(h.server.counters().channel_data_no_allocation, 2);
    // A ChannelData frame whose length runs past the datagram is malformed.
    let mut frame = channel_data_frame(0x4000, b"abcd");
    frame.truncate(6);
    assert_eq!(h.send_bytes(c.addr, &frame), None);
    h.expect_nothing();
    assert_eq!(h.server.counters().malformed, 1);
}

// ---------------------------------------------------------------------------------------
// 8. Expiry with virtual time
// ---------------------------------------------------------------------------------------

#[test]
fn permissions_channels_and_allocations_expire_on_time() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));
    // Keep the allocation for an hour.
    h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));

    let perm_peer = addr("8.8.8.20:1");
    h.set_time(10);
    h.create_permission(&c, &[perm_peer]);
    assert_eq!(h.server.poll_timeout(), Some(h.at(310)));
    // Early and repeated calls do nothing.
    assert_eq!(h.timeout(), vec![]);
    h.set_time(309);
    assert_eq!(h.timeout(), vec![]);
    assert!(h.peer(a.id, perm_peer, b"x").is_some());
    h.set_time_ms(309_999);
    assert!(h.peer(a.id, perm_peer, b"x").is_some());
    h.set_time(310);
    assert!(
        h.peer(a.id, perm_peer, b"x").is_none(),
        "permission gone at 300 s"
    );
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.timeout(), vec![]);
    assert!(h.peer(a.id, perm_peer, b"x").is_none());
    assert_eq!(h.server.counters().peer_no_permission, 2);

    // A channel bound at 400 s: usable until 1000 s, held until 1300 s.
    let p1 = addr("8.8.8.30:1");
    let p2 = addr("8.8.8.31:1");
    h.set_time(400);
    h.channel_bind(&c, 0x4000, p1);
    h.set_time(999);
    assert!(h.channel_data(c.addr, 0x4000, b"x").is_some());
    h.set_time(1000);
    assert_eq!(h.timeout(), vec![]);
    h.renew(&mut c);
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    // Held: neither the number nor the peer can be bound elsewhere...
    h.fails(&c, Harness::channel_bind_req(&c, 0x4000, p2), 400);
    h.fails(&c, Harness::channel_bind_req(&c, 0x4001, p1), 400);
    h.set_time(1299);
    assert_eq!(h.timeout(), vec![]);
    h.fails(&c, Harness::channel_bind_req(&c, 0x4000, p2), 400);
    // ...until the hold is over.
    h.set_time(1300);
    assert_eq!(h.timeout(), vec![]);
    h.channel_bind(&c, 0x4000, p2);
    assert!(h.channel_data(c.addr, 0x4000, b"x").is_some());

    // The allocation ends at 3600 s: its relay closes and its port returns.
    h.set_time(3599);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.allocation_count(), 1);
    h.set_time(3600);
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.timeout(), vec![Output::CloseRelay { relay: a.relay }]);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
    assert_eq!(h.server.counters().allocations_expired, 1);
    h.set_time(10_000);
    assert_eq!(h.timeout(), vec![]);
}

#[test]
fn late_timeout_expires_several_allocations_at_once() {
    let mut h = Harness::new();
    let a = h.client("198.51.100.1:40000", "alice");
    let b = h.client("198.51.100.2:40000", "bob");
    let first = h.allocate(&a);
    h.set_time(5);
    let second = h.allocate(&b);
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));
    h.set_time(10_000);
    assert_eq!(
        h.timeout(),
        vec![
            Output::CloseRelay { relay: first.relay },
            Output::CloseRelay {
                relay: second.relay
            }
        ]
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn allocate_after_expiry_before_the_timer_fires_succeeds() {
    // DESIGN: "Fires are hints, state is the truth: an early, late or repeated
    // handle_timeout is harmless." A client whose allocation has expired must be able to
    // allocate again even if the driver has not yet called handle_timeout.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let old = h.allocate(&c);
    h.set_time(600);
    // Refresh already treats it as gone:
    h.fails(&c, c.req(REFRESH), 437);
    h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    let outputs = h.drain();
    assert_eq!(
        outputs.len(),
        3,
        "CloseRelay, OpenRelay, success: {outputs:?}"
    );
    assert_eq!(outputs[0], Output::CloseRelay { relay: old.relay });
    assert!(matches!(outputs[1], Output::OpenRelay { .. }));
    assert_eq!(
        to_client(&outputs[2], c.addr).class(),
        MessageClass::SuccessResponse
    );
}

#[test]
fn expired_but_unswept_allocation_is_gone_for_every_lookup() {
    // The same rule for every other way to reach an allocation: by the client's 5-tuple
    // (requests, ChannelData, Send), by its relay socket (peer data), and through the
    // quota, the allocation limit and the port pool it holds.
    let mut h = Harness::with_config(Config {
        ports: 50000..=50000,
        max_allocations_per_user: 1,
        max_allocations: 1,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    let old = h.allocate(&c);
    let peer = addr("8.8.8.40:1");
    h.channel_bind(&c, 0x4000, peer);
    assert!(h.channel_data(c.addr, 0x4000, b"x").is_some());
    assert!(h.peer(old.id, peer, b"y").is_some());
    h.set_time(600);
    // No handle_timeout yet: the allocation is still in the core's tables.
    h.fails(&c, Harness::channel_bind_req(&c, 0x4000, peer), 437);
    h.fails(
        &c,
        c.req(CREATE_PERMISSION).attr(XorPeerAddress::new(peer)),
        437,
    );
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    assert_eq!(h.server.counters().channel_data_no_allocation, 1);
    let (_, forward) = h.send(
        c.addr,
        Req::indication(SEND)
            .attr(XorPeerAddress::new(peer))
            .attr(Data::new(b"z".to_vec()).unwrap()),
    );
    assert_eq!(forward, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().send_dropped, 1);
    assert!(h.peer(old.id, peer, b"y").is_none());
    assert_eq!(h.server.counters().peer_no_allocation, 1);
    assert_eq!(h.server.allocation_count(), 1, "still unswept");

    // The same user on another 5-tuple gets the only port, within quota and limit.
    let mut other = c.clone();
    other.addr = addr("198.51.100.1:40001");
    h.renew(&mut other);
    h.send(
        other.addr,
        other.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    assert_eq!(outputs[0], Output::CloseRelay { relay: old.relay });
    assert!(matches!(
        outputs[1],
        Output::OpenRelay { addr, .. } if addr.port() == 50000
    ));
    assert_eq!(
        to_client(&outputs[2], other.addr).class(),
        MessageClass::SuccessResponse
    );
    assert_eq!(h.server.counters().allocations_expired, 1);
    // The old timer entry fires harmlessly.
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.allocation_count(), 1);
}

// ---------------------------------------------------------------------------------------
// 9. Unknown attributes
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let r = h.call(c, Req::request(BINDING).raw(0x7FAA, b"zz").fingerprint());
    assert_eq!(r.error_code(), Some(420));
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::UNKNOWN_ATTRIBUTES, t::FINGERPRINT]
    );
    assert_eq!(r.unknown_attributes(), vec![0x7FAA]);
    // Two unknown ones are both listed, in order.
    let r = h.call(
        c,
        Req::request(BINDING).raw(0x7FAA, b"").raw(0x0033, b"1234"),
    );
    assert_eq!(r.unknown_attributes(), vec![0x7FAA, 0x0033]);

    // A comprehension-optional unknown attribute is ignored.
    let r = h.call(c, Req::request(BINDING).raw(0xC0AA, b"zz"));
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(r.types(), vec![t::XOR_MAPPED_ADDRESS]);

    let client = h.client("198.51.100.2:40000", "alice");
    let r = h.call(
        client.addr,
        client
            .req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .raw(0x7FAA, b"zz"),
    );
    assert_eq!(r.error_code(), Some(420));
    assert_eq!(r.unknown_attributes(), vec![0x7FAA]);
    assert_eq!(h.server.allocation_count(), 0);
    h.allocate_with(
        &client,
        client
            .req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .raw(0xC0AA, b"zz"),
    );
}

#[test]
fn unknown_attribute_in_authenticated_request_gets_signed_420() {
    // RFC 8489 §6.3.1: the unknown-attribute check comes after the authentication checks,
    // so the 420 to an authenticated request carries MESSAGE-INTEGRITY like every other
    // answer to one (and an unauthenticated one gets 401 first).
    let mut h = Harness::new();
    let c = h.client("198.51.100.2:40000", "alice");
    let r = h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .raw(0x7FAA, b"zz"),
        420,
    );
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::UNKNOWN_ATTRIBUTES, t::MESSAGE_INTEGRITY]
    );
    let r = h.call(
        c.addr,
        Req::request(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .raw(0x7FAA, b"zz"),
    );
    assert_eq!(r.error_code(), Some(401));
}

#[test]
fn unknown_method_is_400() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let r = h.call(c, Req::request(Method::new(0x00F).unwrap()).fingerprint());
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::FINGERPRINT]);
    // Responses and unknown indications from clients are ignored, counted.
    let mut resp = Req::request(BINDING);
    resp.class = MessageClass::SuccessResponse;
    h.send(c, resp);
    h.expect_nothing();
    h.send(c, Req::indication(BINDING));
    h.expect_nothing();
    assert_eq!(h.server.counters().unexpected_stun, 2);
}

/// STUN message type of `method` and class bits (RFC 8489 §5).
fn message_type(method: u16, class_bits: u16) -> u16 {
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | class_bits
}

#[test]
fn error_response_to_a_method_above_0x00f_keeps_the_method() {
    // stun_codec 0.4.0's `Type::as_u16` shifts method bits 4-6 by 5 and 7-11 by 9 instead
    // of 1 and 2, so every message the core encodes for a method >= 0x010 has the wrong
    // message type. Only unknown methods are affected (all TURN methods are < 0x010).
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    for method in [0x010u16, 0x0FF, 0x800] {
        let request = stun_header(message_type(method, 0), 0, &[0x11; 12]);
        assert_eq!(h.send_bytes(c, &request), None);
        let r = h.expect_response(c);
        assert_eq!(r.error_code(), Some(400));
        let got = u16::from_be_bytes([r.bytes[0], r.bytes[1]]);
        assert_eq!(got, message_type(method, 0x0110), "method {method:#05x}");
    }
}

// ---------------------------------------------------------------------------------------
// 10. Malformed input
// ---------------------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn stun_header(message_type: u16, body_len: usize, tid: &[u8]) -> Vec<u8> {
    let mut bytes = message_type.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(body_len as u16).to_be_bytes());
    bytes.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    bytes.extend_from_slice(tid);
    bytes
}

#[test]
fn malformed_datagrams_are_counted_and_dropped() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let binding = Req::request(BINDING).tid([3; 12]).build();
    let mut bad_cookie = binding.clone();
    bad_cookie[5] ^= 0xFF;
    let mut bad_length = binding.clone();
    bad_length[3] = 8;
    let mut unaligned = binding.clone();
    unaligned[3] = 2;
    unaligned.extend_from_slice(&[0, 0]);
    // A TLV whose length runs past the end of the message.
    let mut truncated_tlv = stun_header(0x0001, 8, &[4; 12]);
    truncated_tlv.extend_from_slice(&[0x80, 0x22, 0x00, 0x10, b'a', b'b', b'c', b'd']);
    let mut bad_fingerprint = Req::request(BINDING).fingerprint().tid([5; 12]).build();
    let n = bad_fingerprint.len();
    bad_fingerprint[n - 2] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![0x00]),
        ("one ChannelData byte", vec![0x40]),
        ("high first byte", vec![0x80, 0, 0, 0]),
        ("short header", binding[..19].to_vec()),
        ("bad cookie", bad_cookie),
        ("bad length", bad_length),
        ("unaligned length", unaligned),
        ("truncated TLV", truncated_tlv),
        ("bad FINGERPRINT", bad_fingerprint),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        assert_eq!(h.send_bytes(c, bytes), None, "{name}");
        h.expect_nothing();
        assert_eq!(h.server.counters().malformed, i as u64 + 1, "{name}");
    }
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn undecodable_attribute_in_request_is_400_and_in_indication_is_dropped() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    // XOR-MAPPED-ADDRESS-like value with family 7: framing fine, attribute broken.
    let bad_peer = [0x00, 0x07, 0x00, 0x01, 1, 2, 3, 4];
    // Without credentials the request is challenged before its attributes are decoded.
    let r = h.call(
        c,
        Req::request(CREATE_PERMISSION).raw(t::XOR_PEER_ADDRESS, &bad_peer),
    );
    assert_eq!(r.error_code(), Some(401));
    // A Binding (never authenticated) gets its 400 unsigned.
    let r = h.call(c, Req::request(BINDING).raw(t::XOR_PEER_ADDRESS, &bad_peer));
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.types(), vec![t::ERROR_CODE]);
    let (_, forward) = h.send(c, Req::indication(SEND).raw(t::XOR_PEER_ADDRESS, &bad_peer));
    assert_eq!(forward, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().malformed, 1);
}

#[test]
fn bad_request_mirrors_a_valid_fingerprint() {
    // The project's rule: FINGERPRINT on a response iff the request had a valid one. A
    // request whose attributes do not decode (here CHANNEL-NUMBER 0x3FFF) had a valid
    // FINGERPRINT, checked before the attributes.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let r = h.call(
        c.addr,
        c.req(CHANNEL_BIND)
            .attr(XorPeerAddress::new(addr("8.8.8.9:1")))
            .raw(t::CHANNEL_NUMBER, &[0x3F, 0xFF, 0, 0])
            .fingerprint(),
    );
    assert_eq!(r.error_code(), Some(400));
    assert!(r.has_fingerprint(), "{:?}", r.types());
}

/// Every output must be an answer to one of the fuzz requests: a ToClient to the sender,
/// a response of the request's transaction, success only for Binding.
fn check_fuzz_outputs(outputs: &[Output], from: SocketAddr, datagram: &[u8]) {
    assert!(outputs.len() <= 1, "{outputs:?} for {datagram:02x?}");
    let Some(output) = outputs.first() else {
        return;
    };
    let Output::ToClient { client, bytes, .. } = output else {
        panic!("fuzz input caused {output:?} for {datagram:02x?}");
    };
    assert_eq!(*client, from);
    assert_eq!(datagram[0] & 0xC0, 0, "only STUN requests are answered");
    assert_eq!(bytes[8..20], datagram[8..20], "transaction id");
    // A request (class bits 00) gets a response.
    let request_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    assert_eq!(request_type & 0x0110, 0, "answered a non-request");
    let response_type = u16::from_be_bytes([bytes[0], bytes[1]]);
    // Methods from 0x010 up come back garbled: see
    // error_response_to_a_method_above_0x00f_keeps_the_method.
    if request_type & 0x3EE0 == 0 {
        assert_eq!(response_type & !0x0110, request_type, "same method");
    }
    if response_type & 0x0110 == 0x0100 {
        assert_eq!(
            request_type, 0x0001,
            "only Binding succeeds: {datagram:02x?}"
        );
    } else {
        assert_eq!(response_type & 0x0110, 0x0110, "error response");
    }
}

#[test]
fn random_datagrams_never_panic_or_create_state() {
    let mut h = Harness::new();
    // A live allocation with a channel, so the fuzz runs past a populated server.
    let owner = h.client("198.51.100.200:40000", "owner");
    let a = h.allocate(&owner);
    h.channel_bind(&owner, 0x4000, addr("8.8.8.9:1"));

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let known_types: [u16; 24] = [
        0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015,
        0x0016, 0x0017, 0x0018, 0x0019, 0x001A, 0x0020, 0x0022, 0x8000, 0x8022, 0x8028, 0x7FAA,
        0xC0AA, 0x0003,
    ];
    let methods: [u16; 8] = [0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0x0FF];
    let mut answered = 0;
    for round in 0..5000u32 {
        // 20 datagrams a second over four sources: below the limit on unauthenticated
        // answers, so every request that deserves an answer gets one.
        h.set_time_ms(u64::from(round) * 50);
        let from = SocketAddr::new(
            IpAddr::from([198, 51, 100, (rng.below(4) + 1) as u8]),
            40000 + rng.below(3) as u16,
        );
        let datagram = match round % 5 {
            0 => {
                let len = rng.below(120) as usize;
                rng.bytes(len)
            }
            1 => {
                // ChannelData-looking frames.
                let len = rng.below(40) as usize;
                let mut d = rng.bytes(len + 4);
                d[0] = 0x40 | (d[0] & 0x0F);
                d
            }
            2 => {
                // A valid header around random attribute bytes.
                let body = (rng.below(30) * 4) as usize;
                let tid = rng.bytes(12);
                let class_bits = [0x0000u16, 0x0010, 0x0100, 0x0110][rng.below(4) as usize];
                let m = methods[rng.below(methods.len() as u64) as usize];
                let mut d = stun_header(message_type(m, class_bits), body, &tid);
                d.extend(rng.bytes(body));
                d
            }
            _ => {
                // Well-framed TLVs of known (and unknown) types with random values, maybe
                // followed by MESSAGE-INTEGRITY and a valid FINGERPRINT.
                let tid = rng.bytes(12);
                let m = methods[rng.below(methods.len() as u64) as usize];
                let class_bits = if rng.below(4) == 0 { 0x0010 } else { 0x0000 };
                let mut d = stun_header(message_type(m, class_bits), 0, &tid);
                for _ in 0..rng.below(6) {
                    let kind = known_types[rng.below(known_types.len() as u64) as usize];
                    let len = match rng.below(3) {
                        0 => rng.below(4),
                        1 => [4, 8, 20][rng.below(3) as usize],
                        _ => rng.below(40),
                    } as usize;
                    let value = rng.bytes(len);
                    stun_client::append_raw(&mut d, kind, &value);
                }
                let mut d = stun_encoder::Encoder::resume(d);
                if rng.below(3) == 0 {
                    d.integrity(&[9; 16]);
                }
                if rng.below(2) == 0 {
                    d.fingerprint();
                }
                d.bytes()
            }
        };
        let forward = h.send_bytes(from, &datagram);
        assert_eq!(
            forward, None,
            "fuzz from a client without allocation forwarded"
        );
        let outputs = h.drain();
        check_fuzz_outputs(&outputs, from, &datagram);
        answered += outputs.len();
    }
    // Random datagrams from peers without permission.
    for _ in 0..1000 {
        let len = rng.below(200) as usize;
        let payload = rng.bytes(len);
        let from = SocketAddr::new(IpAddr::from([203, 0, 113, rng.below(250) as u8]), 9);
        assert!(h.peer(a.id, from, &payload).is_none());
    }
    let counters = h.server.counters();
    assert!(counters.malformed > 1000, "{counters:?}");
    assert!(
        answered > 500,
        "some fuzz requests were answered: {answered}"
    );
    assert_eq!(counters.peer_no_permission, 1000);
    assert_eq!(counters.relayed_to_peer_packets, 0);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    assert_eq!(h.server.counters().allocations_created, 1);
    // The owner's allocation is untouched.
    assert!(h.channel_data(owner.addr, 0x4000, b"still here").is_some());
}

// ---------------------------------------------------------------------------------------
// 11. CreatePermission and Send
// ---------------------------------------------------------------------------------------

#[test]
fn create_permission_installs_all_or_none() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let p1 = addr("8.8.8.11:1");
    let p2 = addr("8.8.8.12:1");
    let p3 = addr("8.8.8.13:1");
    // Port 0 is fine for a permission (only the IP counts).
    h.create_permission(&c, &[p1, addr("8.8.8.12:0")]);
    assert!(h.peer(a.id, p1, b"x").is_some());
    assert!(h.peer(a.id, p2, b"x").is_some());

    // One forbidden peer: 403 and nothing installed.
    let r = h.fails(
        &c,
        c.req(CREATE_PERMISSION)
            .attr(XorPeerAddress::new(p3))
            .attr(XorPeerAddress::new(addr("127.0.0.1:1"))),
        403,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert!(h.peer(a.id, p3, b"x").is_none());
    for forbidden in ["0.0.0.0:1", "224.0.0.1:1", "255.255.255.255:1"] {
        h.fails(
            &c,
            c.req(CREATE_PERMISSION)
                .attr(XorPeerAddress::new(p3))
                .attr(XorPeerAddress::new(addr(forbidden))),
            403,
        );
    }
    // IPv6 peer on IPv4 allocation: 443, nothing installed.
    h.fails(
        &c,
        c.req(CREATE_PERMISSION)
            .attr(XorPeerAddress::new(p3))
            .attr(XorPeerAddress::new(addr("[2001:db8::1]:1"))),
        443,
    );
    assert!(h.peer(a.id, p3, b"x").is_none());
    // No peer at all.
    let r = h.fails(&c, c.req(CREATE_PERMISSION), 400);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // No allocation.
    let d = h.client("198.51.100.2:40000", "bob");
    h.fails(
        &d,
        d.req(CREATE_PERMISSION).attr(XorPeerAddress::new(p3)),
        437,
    );
}

#[test]
fn send_indication_is_forwarded_with_permission_only() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peer = addr("8.8.8.11:5555");
    let send = |payload: &[u8]| {
        Req::indication(SEND)
            .attr(XorPeerAddress::new(peer))
            .attr(Data::new(payload.to_vec()).unwrap())
    };
    let (_, forward) = h.send(c.addr, send(b"early"));
    assert_eq!(forward, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().send_dropped, 1);

    h.create_permission(&c, &[addr("8.8.8.11:0")]);
    let (bytes, forward) = h.send(c.addr, send(b"hello"));
    h.expect_nothing();
    let forward = forward.expect("forwarded");
    assert_eq!(forward.relay, a.relay);
    assert_eq!(forward.peer, peer);
    assert_eq!(&bytes[forward.payload.clone()], b"hello");
    // With FINGERPRINT, too.
    let (bytes, forward) = h.send(c.addr, send(b"fp").fingerprint());
    h.expect_nothing();
    assert_eq!(&bytes[forward.unwrap().payload], b"fp");

    // Without DATA, to a port-0 peer, from another 5-tuple: dropped and counted.
    let (_, f) = h.send(
        c.addr,
        Req::indication(SEND).attr(XorPeerAddress::new(peer)),
    );
    assert_eq!(f, None);
    let (_, f) = h.send(
        c.addr,
        Req::indication(SEND)
            .attr(XorPeerAddress::new(addr("8.8.8.11:0")))
            .attr(Data::new(b"x".to_vec()).unwrap()),
    );
    assert_eq!(f, None);
    let (_, f) = h.send(addr("198.51.100.1:40001"), send(b"x"));
    assert_eq!(f, None);
    h.expect_nothing();
    assert_eq!(h.server.counters().send_dropped, 4);
    assert_eq!(h.server.counters().relayed_to_peer_packets, 2);
}

// ---------------------------------------------------------------------------------------
// 12. EVEN-PORT and RESERVATION-TOKEN
// ---------------------------------------------------------------------------------------

#[test]
fn even_port_without_reservation() {
    let mut h = Harness::new();
    for i in 0..5 {
        let c = h.client(&format!("198.51.100.{}:40000", i + 1), "alice");
        let a = h.allocate_with(
            &c,
            c.req(ALLOCATE)
                .attr(RequestedTransport::new(UDP))
                .attr(EvenPort::new(false)),
        );
        assert_eq!(a.port % 2, 0, "even port");
        assert_eq!(
            a.response.types(),
            vec![
                t::XOR_RELAYED_ADDRESS,
                t::LIFETIME,
                t::XOR_MAPPED_ADDRESS,
                t::MESSAGE_INTEGRITY
            ]
        );
    }
    assert_eq!(h.server.ports_in_use(), [5, 0]);
}

#[test]
fn even_port_reservation_is_claimed_by_token() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    assert_eq!(a.port % 2, 0);
    assert_eq!(
        a.response.types(),
        vec![
            t::XOR_RELAYED_ADDRESS,
            t::LIFETIME,
            t::XOR_MAPPED_ADDRESS,
            t::RESERVATION_TOKEN,
            t::MESSAGE_INTEGRITY
        ]
    );
    let token = a.response.get::<ReservationToken>().unwrap().token();
    assert_eq!(h.server.ports_in_use(), [2, 0]);

    h.set_time(29);
    assert_eq!(h.timeout(), vec![]);
    let d = h.client("198.51.100.2:40000", "bob");
    let b = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
    );
    assert_eq!(b.port, a.port + 1);
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    // The token is spent; its timer passes harmlessly.
    h.set_time(30);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    let e = h.client("198.51.100.3:40000", "carol");
    h.fails(
        &e,
        e.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
        508,
    );
}

#[test]
fn unclaimed_reservation_is_released_after_30_seconds() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    let token = a.response.get::<ReservationToken>().unwrap().token();
    assert_eq!(h.server.poll_timeout(), Some(h.at(30)));
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    h.set_time(29);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.ports_in_use(), [2, 0]);
    h.set_time(30);
    assert_eq!(h.timeout(), vec![]);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));
    let d = h.client("198.51.100.2:40000", "bob");
    h.fails(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
        508,
    );
}

#[test]
fn reservation_token_errors() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let r = h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(0x0123_4567_89AB_CDEF)),
        508,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    for even in [false, true] {
        h.fails(
            &c,
            c.req(ALLOCATE)
                .attr(RequestedTransport::new(UDP))
                .attr(EvenPort::new(even))
                .attr(ReservationToken::new(1)),
            400,
        );
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
}

#[test]
fn even_port_reservation_fails_when_no_pair_is_free() {
    let mut h = Harness::with_config(Config {
        ports: 50000..=50002,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    assert_eq!(a.port, 50000);
    let d = h.client("198.51.100.2:40000", "bob");
    h.fails(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
        508,
    );
    // 50002 is still free for an even port without pair.
    let b = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(false)),
    );
    assert_eq!(b.port, 50002);
}

#[test]
fn even_port_reservation_follows_a_retried_port() {
    // RFC 8656 §7.2: the reserved port is the one just above the relayed port. When the
    // first even port is in use and the core retries on another, the token must still name
    // relayed port + 1.
    let mut h = Harness::with_config(Config {
        ports: 50000..=50003,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    h.open_script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse)]);
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    let r = to_client(&outputs[2], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    let port = r.get::<XorRelayAddress>().unwrap().address().port();
    assert_eq!(port % 2, 0);
    let token = r.get::<ReservationToken>().expect("token").token();
    let d = h.client("198.51.100.2:40000", "bob");
    let b = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
    );
    assert_eq!(b.port, port + 1, "reserved port is relayed port + 1");
}

#[test]
fn reserved_port_in_use_is_508_not_another_port() {
    // RFC 8656 §7.2: RESERVATION-TOKEN asks for the reserved port itself (the neighbour of an
    // RTP port, say). If someone else holds it, another port would break the pairing: 508.
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    let token = a.response.get::<ReservationToken>().unwrap().token();
    let d = h.client("198.51.100.2:40000", "bob");
    h.open_script = VecDeque::from([OpenAnswer::Err(OpenError::AddressInUse)]);
    h.send(
        d.addr,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert!(matches!(
        outputs[0],
        Output::OpenRelay { addr, .. } if addr.port() == a.port + 1
    ));
    let r = to_client(&outputs[1], d.addr);
    assert_eq!(r.error_code(), Some(508));
    assert!(r.integrity_valid(&d.key()));
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.ports_in_use(), [1, 0]);
}

// ---------------------------------------------------------------------------------------
// 13. MESSAGE-INTEGRITY on responses
// ---------------------------------------------------------------------------------------

#[test]
fn answers_to_authenticated_requests_are_signed_and_challenges_are_not() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    // 437 after authentication.
    let r = h.fails(&c, c.req(REFRESH), 437);
    assert!(!r.integrity_valid(&creds("bob").key));
    let a = h.allocate(&c);
    assert!(a.response.integrity_valid(&c.key()));
    // Successes.
    let r = h.ok(&c, c.req(REFRESH));
    assert!(r.integrity_valid(&c.key()));
    h.create_permission(&c, &[addr("8.8.8.11:1")]);
    h.channel_bind(&c, 0x4000, addr("8.8.8.11:1"));
    // A channel conflict.
    h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("8.8.8.12:1")),
        400,
    );
    // With FINGERPRINT: MESSAGE-INTEGRITY, then FINGERPRINT last.
    let r = h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4000, addr("8.8.8.12:1")).fingerprint(),
        400,
    );
    assert_eq!(
        r.types(),
        vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY, t::FINGERPRINT]
    );
    assert!(r.has_fingerprint());
    // 401 and 438 are not signed.
    let mut bad = c.req(REFRESH);
    bad.corrupt_integrity = true;
    let r = h.call(c.addr, bad);
    assert_eq!(r.error_code(), Some(401));
    assert!(!r.has_integrity());
    let stale = Client {
        nonce: h.nonce(addr("198.51.100.99:1")),
        ..c.clone()
    };
    let r = h.call(c.addr, stale.req(REFRESH));
    assert_eq!(r.error_code(), Some(438));
    assert!(!r.has_integrity());
    assert_eq!(h.server.allocation_count(), 1);
}

// ---------------------------------------------------------------------------------------
// Beyond the list: bounds, quotas, rate limits, IPv6 relaying, deferred socket opening
// ---------------------------------------------------------------------------------------

#[test]
fn permissions_and_channels_are_bounded_per_allocation() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let peers: Vec<SocketAddr> = (0..64u16)
        .map(|i| {
            SocketAddr::new(
                IpAddr::from([8, 8, (i / 200) as u8 + 4, (i % 200) as u8 + 1]),
                9,
            )
        })
        .collect();
    h.create_permission(&c, &peers);
    // Refreshing existing ones is fine; one more is not (and installs nothing).
    h.create_permission(&c, &peers[..3]);
    let extra = addr("9.9.9.9:9");
    h.fails(
        &c,
        c.req(CREATE_PERMISSION)
            .attr(XorPeerAddress::new(extra))
            .attr(XorPeerAddress::new(peers[0])),
        508,
    );
    // Channels to the permitted peers: 64 fit, the 65th does not.
    for (i, peer) in peers.iter().enumerate() {
        h.channel_bind(&c, 0x4000 + i as u16, *peer);
    }
    h.fails(
        &c,
        Harness::channel_bind_req(&c, 0x4FFF, addr("8.8.4.1:10")),
        508,
    );
}

/// `n` distinct, allowed IPv4 peers (8.8.x.y).
fn distinct_peers(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            SocketAddr::new(
                IpAddr::from([8, 8, (i / 200) as u8 + 4, (i % 200) as u8 + 1]),
                9,
            )
        })
        .collect()
}

fn create_permission_req(client: &Client, peers: &[SocketAddr]) -> Req {
    peers
        .iter()
        .fold(client.req(CREATE_PERMISSION), |req, peer| {
            req.attr(XorPeerAddress::new(*peer))
        })
}

#[test]
fn create_permission_with_64_peers_installs_them_all() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    // At the cap: one response (exactly MESSAGE-INTEGRITY), 64 permissions installed.
    let peers = distinct_peers(64);
    h.create_permission(&c, &peers);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [64, 0]);
    for peer in [peers[0], peers[31], peers[63]] {
        assert!(h.peer(a.id, peer, b"x").is_some(), "{peer} permitted");
    }
    // 64 attributes naming one IP are one permission (deduplicated), refreshed in place.
    h.create_permission(&c, &[peers[5]; 64]);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [64, 0]);
    // At the cap, each peer is still judged: one forbidden peer among 64 is a 403.
    let mut with_forbidden = distinct_peers(63);
    with_forbidden.push(addr("127.0.0.1:1"));
    let r = h.fails(&c, create_permission_req(&c, &with_forbidden), 403);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
}

#[test]
fn create_permission_past_64_peers_is_508_before_any_peer_is_judged() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peers = distinct_peers(65);
    // 65 allowed peers: 508, nothing installed.
    let r = h.fails(&c, create_permission_req(&c, &peers), 508);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [0, 0]);
    assert!(h.peer(a.id, peers[0], b"x").is_none());
    // The count decides, not the set: 65 attributes naming one IP are refused too.
    let r = h.fails(&c, create_permission_req(&c, &[peers[0]; 65]), 508);
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // Refused before the peers are looked at: a forbidden peer or one of the wrong family
    // among 65 does not turn the answer into 403 or 443.
    let mut forbidden_first = vec![addr("127.0.0.1:1"), addr("[2001:db8::1]:1")];
    forbidden_first.extend(distinct_peers(63));
    h.fails(&c, create_permission_req(&c, &forbidden_first), 508);
    // As many XOR-PEER-ADDRESS as a datagram holds (5,400): past the attribute cap (128), a
    // 400 before any other work, unsigned (its integrity is not checked); nothing installed.
    let mut huge = distinct_peers(5_399);
    huge.push(addr("127.0.0.1:1"));
    let (bytes, forward) = h.send(c.addr, create_permission_req(&c, &huge));
    assert!(
        bytes.len() > 64_000 && bytes.len() < 65_507,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(forward, None);
    let r = h.expect_response(c.addr);
    assert_eq!(r.error_code(), Some(400), "{r:?}");
    assert_eq!(r.types(), vec![t::ERROR_CODE]);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [0, 0]);
    // The allocation is unharmed: 64 peers still fit.
    h.create_permission(&c, &peers[..64]);
    assert_eq!(h.server.gauges(h.now().instant).permissions, [64, 0]);
}

#[test]
fn permission_refresh_and_channel_rebind_during_the_hold() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    let peer = addr("8.8.8.40:1");
    h.create_permission(&c, &[peer]);
    h.set_time(200);
    h.create_permission(&c, &[peer]);
    h.set_time(499);
    assert!(h.peer(a.id, peer, b"x").is_some());
    h.set_time(500);
    assert!(h.peer(a.id, peer, b"x").is_none());

    // A channel's permission lapses before the channel does: the peer is then dropped
    // (RFC 8656 §12: the client must refresh the permission, by re-binding).
    let mut c = c;
    h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));
    h.set_time(550);
    let cp = addr("8.8.8.41:1");
    h.channel_bind(&c, 0x4100, cp);
    h.set_time(850);
    assert!(
        h.peer(a.id, cp, b"x").is_none(),
        "permission from the bind is over"
    );
    assert!(h.channel_data(c.addr, 0x4100, b"x").is_some());
    // Re-binding the same pair after expiry, during the hold, works.
    h.set_time(1150);
    assert_eq!(h.channel_data(c.addr, 0x4100, b"x"), None);
    h.renew(&mut c);
    h.channel_bind(&c, 0x4100, cp);
    let (_, frame) = h.peer(a.id, cp, b"x").unwrap();
    assert_eq!(frame, [0x41, 0x00, 0x00, 0x01, b'x']);
}

#[test]
fn dual_stack_relays_ipv6_peers() {
    let mut h = Harness::with_config(config_v6());
    let c = h.client("198.51.100.1:40000", "alice");
    h.send(
        c.addr,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6)),
    );
    let outputs = h.drain();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    let Output::OpenRelay { allocation, .. } = outputs[0] else {
        panic!("{outputs:?}");
    };
    assert_eq!(
        to_client(&outputs[2], c.addr).class(),
        MessageClass::SuccessResponse
    );
    let (v4_relay, v6_relay) = (RelayId(1), RelayId(2));
    let p4 = addr("8.8.8.8:53");
    let p6 = addr("[2606:4700:4700::1111]:53");
    h.create_permission(&c, &[p4, p6]);
    h.channel_bind(&c, 0x4000, p4);
    h.channel_bind(&c, 0x4001, p6);
    assert_eq!(
        h.channel_data(c.addr, 0x4000, b"four"),
        Some(Forward {
            relay: v4_relay,
            peer: p4,
            payload: 4..8
        })
    );
    assert_eq!(
        h.channel_data(c.addr, 0x4001, b"six"),
        Some(Forward {
            relay: v6_relay,
            peer: p6,
            payload: 4..7
        })
    );
    // A Data indication for an IPv6 peer uses all of the headroom.
    let other6 = addr("[2606:4700:4700::1111]:54");
    let (deliver, frame) = h.peer(allocation, other6, b"hello").unwrap();
    assert_eq!(deliver.frame, 0..HEADROOM + 5 + 3);
    assert_eq!(frame[frame.len() - 3..], [0, 0, 0], "zero padding");
    let message = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(&frame)
        .unwrap()
        .unwrap();
    assert_eq!(
        message.get_attribute::<XorPeerAddress>().unwrap().address(),
        other6
    );
    assert_eq!(message.get_attribute::<Data>().unwrap().data(), b"hello");

    // The largest IPv6 UDP payload (65527 B) does not fit a Data indication for an IPv6 peer
    // (28 bytes of attributes headers and address on top): dropped and counted, not truncated.
    assert!(h.peer(allocation, other6, &vec![0x55; 65527]).is_none());
    assert_eq!(h.server.counters().peer_too_large, 1);
    // The largest that fits: 28 + 65504 = 65532, no padding needed.
    let (deliver, _) = h.peer(allocation, other6, &vec![0x55; 65504]).unwrap();
    assert_eq!(deliver.frame, 0..HEADROOM + 65504);
    assert_eq!(h.server.counters().peer_too_large, 1);
}

#[test]
fn address_family_attribute_combinations() {
    let mut h = Harness::with_config(config_v6());
    let c = h.client("198.51.100.1:40000", "alice");
    // ADDITIONAL-ADDRESS-FAMILY may only add IPv6.
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V4)),
        400,
    );
    // A reservation is for one family.
    h.fails(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6))
            .attr(EvenPort::new(true)),
        400,
    );
    let a = h.allocate_with(
        &c,
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(EvenPort::new(true)),
    );
    let token = a.response.get::<ReservationToken>().unwrap().token();
    let d = h.client("198.51.100.2:40000", "bob");
    h.fails(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(RequestedAddressFamily::new(AddressFamily::V6))
            .attr(ReservationToken::new(token)),
        400,
    );
    // The reservation survived the refusal.
    let b = h.allocate_with(
        &d,
        d.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(ReservationToken::new(token)),
    );
    assert_eq!(b.port, a.port + 1);
}

#[test]
fn allocation_quotas() {
    let mut h = Harness::with_config(Config {
        max_allocations_per_user: 2,
        max_allocations: 3,
        ..config()
    });
    let a1 = h.client("198.51.100.1:40000", "alice");
    let mut a2 = h.client("198.51.100.1:40001", "alice");
    // Fresh credentials (another expiry) of the same id share the quota.
    a2.creds = Creds::rest(SECRET, UNIX0 + 7200, "alice", REALM);
    let a3 = h.client("198.51.100.1:40002", "alice");
    let first = h.allocate(&a1);
    h.allocate(&a2);
    let r = h.fails(
        &a3,
        a3.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
        486,
    );
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY]);
    // Others are not affected until the server is full.
    let b = h.client("198.51.100.2:40000", "bob");
    h.allocate(&b);
    let carol = h.client("198.51.100.3:40000", "carol");
    h.fails(
        &carol,
        carol.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
        508,
    );
    // Expiry gives the quota back.
    h.set_time(600);
    let outputs = h.timeout();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    assert!(outputs.contains(&Output::CloseRelay { relay: first.relay }));
    let mut a3 = a3;
    h.renew(&mut a3);
    h.allocate(&a3);
}

#[test]
fn failed_allocation_does_not_use_up_the_quota() {
    let mut h = Harness::with_config(Config {
        max_allocations_per_user: 1,
        ..config()
    });
    let c = h.client("198.51.100.1:40000", "alice");
    for _ in 0..3 {
        h.open_script = VecDeque::from([OpenAnswer::Err(OpenError::Other)]);
        h.send(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
        let outputs = h.drain();
        assert_eq!(outputs.len(), 2, "{outputs:?}");
        assert_eq!(to_client(&outputs[1], c.addr).error_code(), Some(508));
    }
    h.allocate(&c);
}

#[test]
fn unauthenticated_answers_never_exceed_three_times_the_request() {
    // Admission by byte credit: a header-only Allocate (20 bytes) earns 60 bytes, and its
    // 401 with the realm "relay.test" is 64: the first is refused and its credit banked,
    // the second paid from the bank.
    let mut h = Harness::new();
    let victim = addr("198.51.100.66:1000");
    let (mut sent, mut received) = (0usize, 0usize);
    for _ in 0..1000 {
        let (bytes, _) = h.send(victim, Req::request(ALLOCATE));
        sent += bytes.len();
        for output in h.drain() {
            let Output::ToClient { bytes, .. } = output else {
                panic!("{output:?}");
            };
            received += bytes.len();
        }
    }
    assert!(received > 0);
    assert!(received <= 3 * sent, "{received} bytes for {sent}");
    assert!(h.server.counters().rate_limited > 0);
    // Ordinary requests from one address are all answered, however many.
    for port in 0..2000u16 {
        let from = addr(&format!("198.51.100.67:{}", 1000 + port));
        let r = h.call(
            from,
            Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
        );
        assert_eq!(r.error_code(), Some(401));
        let r = h.call(from, Req::request(BINDING));
        assert_eq!(r.class(), MessageClass::SuccessResponse);
    }
    // An authenticated request is never limited.
    let c = h.client("198.51.100.66:1000", "alice");
    let before = h.server.counters().rate_limited;
    for _ in 0..50 {
        h.fails(&c, c.req(REFRESH), 437);
    }
    assert_eq!(h.server.counters().rate_limited, before);
}

#[test]
fn allocate_retransmitted_while_the_socket_opens_is_answered_once() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let tid = h.tid();
    let req = c.req(ALLOCATE).attr(RequestedTransport::new(UDP)).tid(tid);
    h.open_script = VecDeque::from([OpenAnswer::Defer]);
    h.send(c.addr, req.clone());
    let outputs = h.drain();
    assert_eq!(outputs.len(), 1);
    assert!(matches!(outputs[0], Output::OpenRelay { .. }));
    // Nothing to say yet, and nothing usable yet.
    h.send(c.addr, req.clone());
    h.expect_nothing();
    h.fails(&c, c.req(REFRESH), 437);
    assert_eq!(h.channel_data(c.addr, 0x4000, b"x"), None);
    let (relay, outputs) = h.complete(0, Ok(()));
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    let r = to_client(&outputs[0], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(r.transaction_id(), tid);
    assert_eq!(relay, Some(RelayId(1)));
    let again = h.call(c.addr, req);
    assert_eq!(again.bytes, r.bytes);
}

#[test]
fn stale_relay_completion_is_not_applied_to_a_reused_allocation_id() {
    // OpenRelay/handle_relay_opened is a request and a completion. A completion for an
    // allocation that failed meanwhile must close its socket, even when a new allocation has
    // taken the same AllocationId (slab slot) and is waiting for a socket of that family.
    let mut h = Harness::with_config(config_v6());
    let dual = |c: &Client| {
        c.req(ALLOCATE)
            .attr(RequestedTransport::new(UDP))
            .attr(AdditionalAddressFamily::new(AddressFamily::V6))
    };
    let a = h.client("198.51.100.1:40000", "alice");
    h.open_script = VecDeque::from([OpenAnswer::Defer, OpenAnswer::Defer]);
    h.send(a.addr, dual(&a));
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2);
    let Output::OpenRelay { addr: a_v6, .. } = outputs[1] else {
        panic!("{outputs:?}");
    };
    // A's IPv4 socket fails: A is gone (its IPv6 socket is still being opened).
    let (_, outputs) = h.complete(0, Err(OpenError::Other));
    assert_eq!(outputs.len(), 1);
    assert_eq!(to_client(&outputs[0], a.addr).error_code(), Some(508));
    // A's IPv6 port stays taken while its bind is in flight: handing it to B now would race
    // with that bind.
    assert_eq!(h.server.ports_in_use(), [0, 1]);
    // B takes the same slot.
    let b = h.client("198.51.100.2:40000", "bob");
    h.open_script = VecDeque::from([OpenAnswer::Defer, OpenAnswer::Defer]);
    h.send(b.addr, dual(&b));
    let outputs = h.drain();
    let Output::OpenRelay {
        allocation: b_id,
        addr: b_v6,
        ..
    } = outputs[1]
    else {
        panic!("{outputs:?}");
    };
    // Same slot, new generation: the IDs differ, which is what keeps A's completion away.
    assert_eq!(b_id.slot, h.deferred[0].0.slot, "the slab slot was reused");
    assert_ne!(b_id, h.deferred[0].0);
    assert_ne!(b_v6, a_v6, "B was given the port A is still binding");
    assert_eq!(h.server.ports_in_use(), [1, 2]);
    // A's IPv6 socket opens now: it belongs to nobody and must be closed, and its port
    // goes back to the pool.
    let (stale, outputs) = h.complete(1, Ok(()));
    assert_eq!(
        outputs,
        vec![Output::CloseRelay {
            relay: stale.unwrap()
        }]
    );
    assert_eq!(h.server.ports_in_use(), [1, 1]);
    // B's own sockets open: it is answered with the ports it was given.
    let (_, outputs) = h.complete(2, Ok(()));
    assert_eq!(outputs, vec![]);
    let (_, outputs) = h.complete(3, Ok(()));
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    let r = to_client(&outputs[0], b.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    let relayed: Vec<u16> = r
        .message
        .attributes()
        .filter_map(|a| match a {
            Attribute::XorRelayAddress(x) => Some(x.address().port()),
            _ => None,
        })
        .collect();
    assert_eq!(relayed[1], b_v6.port());
    // A datagram the driver read from A's socket before closing it names A: it must not
    // reach B, whose allocation now sits in that slot and permits the same peer.
    let peer = addr("8.8.8.50:1");
    h.create_permission(&b, &[peer]);
    assert!(h.peer(b_id, peer, b"for b").is_some());
    let a_id = h.deferred[0].0;
    assert_eq!(h.peer(a_id, peer, b"for a"), None);
    assert_eq!(h.server.counters().peer_no_allocation, 1);
}

// ---------------------------------------------------------------------------------------
// Issue 10: credentials and live calls, RFC 8489 §9.2.4 order, attribute cap
// ---------------------------------------------------------------------------------------

#[test]
fn wrong_password_with_a_stale_nonce_is_401() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.set_time(700); // the nonce is stale now
    let wrong = Client {
        creds: Creds::rest(b"not-our-secret", UNIX0 + 86_400, "alice", REALM),
        ..c.clone()
    };
    let r = h.call(
        c.addr,
        wrong.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
    );
    assert_challenge(&h, &r, 401);
    // The right password with the stale nonce: 438, unsigned.
    let r = h.call(c.addr, c.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge(&h, &r, 438);
}

#[test]
fn closing_refresh_with_a_stale_nonce_deletes_the_allocation() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    let a = h.allocate(&c);
    h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));
    h.set_time(700); // the nonce is stale, the allocation alive
    h.send(c.addr, c.req(REFRESH).attr(Lifetime::from_u32(0)));
    let outputs = h.drain();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert_eq!(outputs[0], Output::CloseRelay { relay: a.relay });
    let r = to_client(&outputs[1], c.addr);
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    assert_eq!(r.types(), vec![t::LIFETIME, t::MESSAGE_INTEGRITY]);
    assert!(r.integrity_valid(&c.key()));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.ports_in_use(), [0, 0]);
}

#[test]
fn undecodable_attributes_of_an_authenticated_request_get_a_signed_400() {
    let mut h = Harness::new();
    let c = h.client("198.51.100.1:40000", "alice");
    h.allocate(&c);
    let long_software = vec![b'x'; 130];
    let cases: Vec<(&str, Req)> = vec![
        (
            "address family 0x03",
            c.req(CREATE_PERMISSION)
                .raw(t::XOR_PEER_ADDRESS, &[0x00, 0x03, 0x00, 0x01, 1, 2, 3, 4]),
        ),
        (
            "SOFTWARE of 130 characters",
            c.req(REFRESH).raw(0x8022, &long_software),
        ),
    ];
    for (name, req) in cases {
        let r = h.call(c.addr, req);
        assert_eq!(r.error_code(), Some(400), "{name}");
        assert_eq!(
            r.types(),
            vec![t::ERROR_CODE, t::MESSAGE_INTEGRITY],
            "{name}"
        );
        assert!(r.integrity_valid(&c.key()), "{name}");
    }
    assert_eq!(h.server.allocation_count(), 1);
}

/// Credentials that expire at UNIX0 + 100.
fn short_creds(id: &str) -> Creds {
    Creds::rest(SECRET, UNIX0 + 100, id, REALM)
}

#[test]
fn expired_username_lives_on_with_its_allocation() {
    let mut h = Harness::new();
    let mut c = h.client("198.51.100.1:40000", "alice");
    c.creds = short_creds("alice");
    h.allocate(&c);
    h.set_time(500); // the username expired 400 s ago
    h.renew(&mut c);
    let r = h.ok(&c, c.req(REFRESH).attr(Lifetime::from_u32(3600)));
    assert_eq!(lifetime_of(&r), 3600);
    h.create_permission(&c, &[addr("8.8.8.9:1")]);
    // Another username, expired, on the same 5-tuple: 401; valid but different: 441.
    let other = Client {
        creds: short_creds("bob"),
        ..c.clone()
    };
    let r = h.call(c.addr, other.req(REFRESH));
    assert_challenge_with(&h, &r, 401, 1);
    let other = Client {
        creds: creds("bob"),
        ..c.clone()
    };
    h.fails(&other, other.req(REFRESH), 441);
    // The expired username cannot make a new allocation elsewhere.
    let mut d = h.client("198.51.100.2:40000", "alice");
    d.creds = short_creds("alice");
    let r = h.call(d.addr, d.req(ALLOCATE).attr(RequestedTransport::new(UDP)));
    assert_challenge_with(&h, &r, 401, 1);
}

#[test]
fn strict_credential_expiry_ends_the_allocation_at_the_expiry() {
    let mut h = Harness::with_config(Config {
        strict_credential_expiry: true,
        ..config()
    });
    let mut c = h.client("198.51.100.1:40000", "alice");
    c.creds = short_creds("alice");
    h.allocate(&c);
    h.set_time(100);
    h.ok(&c, c.req(REFRESH));
    h.set_time(101);
    let r = h.call(c.addr, c.req(REFRESH));
    assert_challenge_with(&h, &r, 401, 1);
}

#[test]
fn attribute_count_is_capped_at_128() {
    let mut h = Harness::new();
    let c = addr("198.51.100.1:40000");
    let with = |n: usize| {
        let mut req = Req::request(BINDING);
        for _ in 0..n {
            req = req.raw(0xC0AA, b"");
        }
        req
    };
    let r = h.call(c, with(128));
    assert_eq!(r.class(), MessageClass::SuccessResponse);
    let r = h.call(c, with(129));
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(r.types(), vec![t::ERROR_CODE]);
    // 16,200 empty attributes: the same 400, after walking 129 TLV headers.
    let r = h.call(c, with(16_200));
    assert_eq!(r.error_code(), Some(400));
    // An authenticated request with too many attributes is refused before its credentials.
    let client = h.client("198.51.100.2:40000", "alice");
    let mut req = client.req(ALLOCATE).attr(RequestedTransport::new(UDP));
    for _ in 0..130 {
        req = req.raw(0xC0AA, b"");
    }
    let r = h.call(client.addr, req);
    assert_eq!(r.error_code(), Some(400));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn a_thousand_clients_behind_one_address_are_all_allocated_within_two_seconds() {
    // 1,000 clients on one IP start within one second; each retransmits per RFC 8489 (RTO
    // 500 ms, doubling) until it has its 401, then its allocation.
    let mut h = Harness::with_config(Config {
        ports: 50000..=51999,
        max_allocations_per_user: 1000,
        ..config()
    });
    let n = 1000u64;
    // (address, nonce, next send ms, rto ms, tid); nonce None until the 401 arrived.
    struct Pending {
        addr: SocketAddr,
        nonce: Option<String>,
        next: u64,
        rto: u64,
        done_at: Option<u64>,
    }
    let mut clients: Vec<Pending> = (0..n)
        .map(|i| Pending {
            addr: addr(&format!("198.51.100.200:{}", 20000 + i)),
            nonce: None,
            next: i, // one per millisecond
            rto: 500,
            done_at: None,
        })
        .collect();
    let creds = creds("office");
    for ms in 0..=2000u64 {
        h.set_time_ms(ms);
        for client in clients
            .iter_mut()
            .filter(|c| c.done_at.is_none() && c.next == ms)
        {
            let req = match &client.nonce {
                None => Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
                Some(nonce) => Req::request(ALLOCATE)
                    .attr(RequestedTransport::new(UDP))
                    .auth(&creds, nonce),
            };
            let mut req = req;
            let mut tid = [0x11; 12];
            tid[..8].copy_from_slice(&client.addr.port().to_be_bytes().repeat(4));
            tid[8] = u8::from(client.nonce.is_some());
            req.transaction_id = Some(tid);
            h.send_bytes(client.addr, &req.build());
            let mut answered = false;
            for output in h.drain() {
                let Output::ToClient {
                    bytes, client: to, ..
                } = output
                else {
                    continue;
                };
                assert_eq!(to, client.addr);
                let r = Response::decode(&bytes);
                answered = true;
                if r.class() == MessageClass::SuccessResponse {
                    client.done_at = Some(ms);
                } else {
                    assert_eq!(r.error_code(), Some(401), "{r:?}");
                    client.nonce = Some(r.nonce());
                    client.next = ms; // sends the authenticated one at once
                    client.rto = 500;
                }
            }
            if !answered {
                client.next = ms + client.rto;
                client.rto *= 2;
            } else if client.done_at.is_none() {
                // The authenticated Allocate goes out in the same millisecond.
                let req = Req::request(ALLOCATE)
                    .attr(RequestedTransport::new(UDP))
                    .auth(&creds, client.nonce.as_ref().unwrap())
                    .tid([0x22; 12]);
                let mut req = req;
                let mut tid = [0x22; 12];
                tid[..2].copy_from_slice(&client.addr.port().to_be_bytes());
                req.transaction_id = Some(tid);
                h.send_bytes(client.addr, &req.build());
                for output in h.drain() {
                    if let Output::ToClient { bytes, .. } = output
                        && Response::decode(&bytes).class() == MessageClass::SuccessResponse
                    {
                        client.done_at = Some(ms);
                    }
                }
                if client.done_at.is_none() {
                    client.next = ms + client.rto;
                }
            }
        }
    }
    let allocated = clients.iter().filter(|c| c.done_at.is_some()).count();
    assert_eq!(allocated, n as usize, "allocated within 2 s");
    assert_eq!(h.server.allocation_count(), n as usize);
    assert_eq!(h.server.counters().rate_limited, 0);
}
