//! The scenario tests' fixture: a configuration, clients with REST credentials, and the
//! requests and checks the tests are written in, over the one fake driver.
#![allow(dead_code, unused_imports)] // a prelude: each section uses a part of it

pub use std::collections::VecDeque;
pub use std::net::{IpAddr, SocketAddr};
pub use std::ops::{Deref, DerefMut, RangeInclusive};
pub use std::time::{Duration, Instant};

pub use bytecodec::DecodeExt;
pub use relay::core::{
    AllocationId, Config, Deliver, Family, Forward, HEADROOM, Lifetimes, ListenerId, Now,
    OpenError, Output, RelayAddress, RelayId, Server, TAILROOM,
};
pub use stun_codec::rfc5389::attributes::XorMappedAddress;
pub use stun_codec::rfc5389::methods::BINDING;
pub use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayAddress,
};
pub use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
pub use stun_codec::rfc8656::attributes::{
    AdditionalAddressFamily, AddressFamily, RequestedAddressFamily,
};
pub use stun_codec::{MessageClass, MessageDecoder, Method};

pub use crate::fake_driver::{FakeDriver, OpenAnswer, Seen, UNIX0, seen};
pub use crate::stun_client::{self, Creds, Req, Response, types as t};
pub use crate::stun_encoder::{self, codec::Attribute};
pub use Family::{V4, V6};

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

pub const REALM: &str = "relay.test";
pub const SECRET: &[u8] = b"north-secret";
pub const SECRET2: &[u8] = b"south-secret";
pub const LISTENER: ListenerId = ListenerId(0);
pub const SEED: [u8; 32] = [7; 32];
pub const PORTS: RangeInclusive<u16> = 50000..=50099;
pub const UDP: u8 = 17;

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn relay_bind() -> IpAddr {
    ip("10.0.0.10")
}

pub fn relay_public() -> IpAddr {
    ip("203.0.113.10")
}

pub fn relay_bind_v6() -> IpAddr {
    ip("fd00::10")
}

pub fn relay_public_v6() -> IpAddr {
    ip("2001:db8::10")
}

pub fn config() -> Config {
    Config {
        listeners: vec![addr("192.0.2.10:3478")],
        realm: REALM.to_owned(),
        auth_secrets: vec![SECRET.to_vec()],
        auth_scheme: Default::default(),
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

pub fn config_v6() -> Config {
    Config {
        relay_v6: Some(RelayAddress {
            bind: relay_bind_v6(),
            public: relay_public_v6(),
        }),
        ..config()
    }
}

/// Credentials valid for a day, for `id`, minted from SECRET in our realm.
pub fn creds(id: &str) -> Creds {
    Creds::rest(SECRET, UNIX0 + 86_400, id, REALM)
}

/// A client with its credentials and a nonce the server issued to its address.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub creds: Creds,
    pub nonce: String,
}

impl Client {
    /// An authenticated request from this client.
    pub fn req(&self, method: Method) -> Req {
        Req::request(method).auth(&self.creds, &self.nonce)
    }

    pub fn key(&self) -> [u8; 16] {
        self.creds.key
    }
}

/// What a successful Allocate gave.
#[derive(Debug, Clone)]
pub struct Allocated {
    pub id: AllocationId,
    pub relay: RelayId,
    pub port: u16,
    pub relayed: SocketAddr,
    pub response: Response,
}

/// The server behind the one fake driver (`tests/support/fake_driver.rs`), with the
/// scenario tests' vocabulary on top.
pub struct Harness {
    pub driver: FakeDriver,
    next_tid: u32,
}

impl Deref for Harness {
    type Target = FakeDriver;
    fn deref(&self) -> &FakeDriver {
        &self.driver
    }
}

impl DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut FakeDriver {
        &mut self.driver
    }
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(config())
    }

    pub fn with_config(config: Config) -> Self {
        Harness {
            driver: FakeDriver::new(config, SEED),
            next_tid: 0,
        }
    }

    /// Moves the clock to `secs` after the start (never backwards).
    pub fn set_time(&mut self, secs: u64) {
        self.driver.set_elapsed(Duration::from_secs(secs));
    }

    pub fn set_time_ms(&mut self, ms: u64) {
        self.driver.set_elapsed(Duration::from_millis(ms));
    }

    /// `handle_timeout` at the current time, then all its outputs.
    pub fn timeout(&mut self) -> Vec<Output> {
        self.driver.fire_timers();
        self.driver.drain()
    }

    pub fn tid(&mut self) -> [u8; 12] {
        self.next_tid += 1;
        let mut id = [0xA5; 12];
        id[8..].copy_from_slice(&self.next_tid.to_be_bytes());
        id
    }

    /// Builds and sends `req` from `from` (giving it a fresh transaction ID unless it has
    /// one); returns the bytes sent and the data-path decision.
    pub fn send(&mut self, from: SocketAddr, mut req: Req) -> (Vec<u8>, Option<Forward>) {
        if req.transaction_id.is_none() {
            req.transaction_id = Some(self.tid());
        }
        let bytes = req.build();
        let forward = self.send_bytes(from, &bytes);
        (bytes, forward)
    }

    pub fn send_bytes(&mut self, from: SocketAddr, bytes: &[u8]) -> Option<Forward> {
        self.driver.client_datagram(LISTENER, from, bytes)
    }

    /// Completes the `index`th deferred OpenRelay (Ok gets a fresh RelayId, returned), then
    /// returns everything the core asks for.
    pub fn complete(
        &mut self,
        index: usize,
        result: Result<(), OpenError>,
    ) -> (Option<RelayId>, Vec<Output>) {
        let relay = self.driver.complete(index, result);
        (relay, self.driver.drain())
    }

    pub fn expect_nothing(&mut self) {
        let outputs = self.drain();
        assert!(outputs.is_empty(), "expected no output, got {outputs:?}");
    }

    /// Exactly one output: an answer to `to` of `method`, whatever its class.
    pub fn expect_response(&mut self, to: SocketAddr, method: Method) -> Response {
        let outputs = self.drain();
        let response = match seen(&outputs).as_slice() {
            [Seen::Answer { .. }] => to_client(&outputs[0], to),
            _ => panic!("expected one answer, got {outputs:?}"),
        };
        let expected = match response.error_code() {
            Some(code) => Seen::error(to, method, code),
            None => Seen::success(to, method),
        };
        assert_eq!(seen(&outputs), [expected]);
        response
    }

    /// Sends a request and expects exactly one response of the same method and transaction.
    pub fn call(&mut self, from: SocketAddr, req: Req) -> Response {
        let method = req.method;
        let (bytes, forward) = self.send(from, req);
        assert_eq!(forward, None, "a request is not forwarded");
        let response = self.expect_response(from, method);
        assert_eq!(response.transaction_id(), bytes[8..20], "transaction id");
        response
    }

    /// A fresh nonce for `from`, from the 401 of an unauthenticated Allocate (which creates
    /// nothing).
    pub fn nonce(&mut self, from: SocketAddr) -> String {
        let r = self.call(
            from,
            Req::request(ALLOCATE).attr(RequestedTransport::new(UDP)),
        );
        assert_eq!(r.error_code(), Some(401));
        r.nonce()
    }

    /// Replaces the client's nonce by a fresh one (nonces last 600 s).
    pub fn renew(&mut self, client: &mut Client) {
        client.nonce = self.nonce(client.addr);
    }

    pub fn client(&mut self, from: &str, id: &str) -> Client {
        let addr = addr(from);
        let nonce = self.nonce(addr);
        Client {
            addr,
            creds: creds(id),
            nonce,
        }
    }

    /// Allocates a UDP relay with default options and checks the success.
    pub fn allocate(&mut self, client: &Client) -> Allocated {
        self.allocate_with(
            client,
            client.req(ALLOCATE).attr(RequestedTransport::new(UDP)),
        )
    }

    /// Sends an Allocate and expects exactly [OpenRelay (IPv4, in range, DF if asked),
    /// success].
    pub fn allocate_with(&mut self, client: &Client, req: Req) -> Allocated {
        let dont_fragment = req
            .attributes
            .iter()
            .any(|a| a.kind == stun_encoder::kind::DONT_FRAGMENT);
        let (bytes, forward) = self.send(client.addr, req);
        assert_eq!(forward, None);
        let outputs = self.drain();
        let open = Seen::Open {
            family: V4,
            dont_fragment,
        };
        assert_eq!(seen(&outputs), [open, Seen::success(client.addr, ALLOCATE)]);
        let Output::OpenRelay {
            allocation,
            addr: bind,
            ..
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
            relay: RelayId(self.driver.opened),
            port: bind.port(),
            relayed,
            response,
        }
    }

    /// An authenticated request expected to succeed with a valid MESSAGE-INTEGRITY.
    pub fn ok(&mut self, client: &Client, req: Req) -> Response {
        let r = self.call(client.addr, req);
        assert_eq!(r.class(), MessageClass::SuccessResponse, "{r:?}");
        assert!(r.integrity_valid(&client.key()), "MI of success");
        r
    }

    /// An authenticated request expected to fail with `code`, signed with the client's key.
    pub fn fails(&mut self, client: &Client, req: Req, code: u16) -> Response {
        let r = self.call(client.addr, req);
        assert_eq!(r.class(), MessageClass::ErrorResponse, "{r:?}");
        assert_eq!(r.error_code(), Some(code), "{r:?}");
        assert!(r.integrity_valid(&client.key()), "MI of error {code}");
        r
    }

    pub fn create_permission(&mut self, client: &Client, peers: &[SocketAddr]) -> Response {
        let mut req = client.req(CREATE_PERMISSION);
        for peer in peers {
            req = req.attr(XorPeerAddress::new(*peer));
        }
        let r = self.ok(client, req);
        assert_eq!(r.types(), vec![t::MESSAGE_INTEGRITY]);
        r
    }

    pub fn channel_bind_req(client: &Client, number: u16, peer: SocketAddr) -> Req {
        client
            .req(CHANNEL_BIND)
            .attr(ChannelNumber::new(number).unwrap())
            .attr(XorPeerAddress::new(peer))
    }

    pub fn channel_bind(&mut self, client: &Client, number: u16, peer: SocketAddr) {
        let r = self.ok(client, Self::channel_bind_req(client, number, peer));
        assert_eq!(r.types(), vec![t::MESSAGE_INTEGRITY]);
    }

    /// ChannelData from a client: returns the forwarded payload, checked against `payload`.
    pub fn channel_data(
        &mut self,
        from: SocketAddr,
        number: u16,
        payload: &[u8],
    ) -> Option<Forward> {
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
    pub fn peer(
        &mut self,
        allocation: AllocationId,
        from: SocketAddr,
        payload: &[u8],
    ) -> Option<(Deliver, Vec<u8>)> {
        let delivered = self.driver.peer_datagram(allocation, from, payload, false);
        self.expect_nothing();
        delivered
    }
}

/// The output must be a response to `to` on our listener; decodes it.
pub fn to_client(output: &Output, to: SocketAddr) -> Response {
    let Output::ToClient {
        transport,
        client,
        bytes,
    } = output
    else {
        panic!("expected ToClient, got {output:?}");
    };
    assert_eq!(*transport, relay::core::Transport::Udp(LISTENER));
    assert_eq!(*client, to);
    Response::decode(bytes)
}

pub fn channel_data_frame(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = number.to_be_bytes().to_vec();
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    while !frame.len().is_multiple_of(4) {
        frame.push(0);
    }
    frame
}

pub fn lifetime_of(r: &Response) -> u64 {
    r.get::<Lifetime>().expect("LIFETIME").lifetime().as_secs()
}

/// The `Forward` expected for `payload` of a datagram relayed through `a` to `peer`.
pub fn forward_to(a: &Allocated, peer: SocketAddr, payload: std::ops::Range<usize>) -> Forward {
    Forward {
        relay: a.relay,
        peer,
        payload,
    }
}

/// A 401/438: ERROR-CODE, REALM and NONCE, no MESSAGE-INTEGRITY, and nothing created.
pub fn assert_challenge(h: &Harness, r: &Response, code: u16) {
    assert_challenge_with(h, r, code, 0);
}

/// A 401/438 while `allocations` allocations (one port each) exist.
pub fn assert_challenge_with(h: &Harness, r: &Response, code: u16, allocations: usize) {
    assert_eq!(r.class(), MessageClass::ErrorResponse);
    assert_eq!(r.error_code(), Some(code));
    assert_eq!(r.types(), vec![t::ERROR_CODE, t::REALM, t::NONCE]);
    assert_eq!(r.realm(), REALM);
    assert!(!r.has_integrity());
    assert_eq!(h.server.allocation_count(), allocations);
    assert_eq!(h.server.ports_in_use(), [allocations, 0]);
}

/// The outputs are exactly `expected` in some order: for things due at the same instant,
/// whose order the core does not promise (e.g. two allocations expiring in one tick).
pub fn assert_same_outputs_any_order(outputs: &[Output], expected: &[Seen]) {
    let mut left = seen(outputs);
    for want in expected {
        let at = left
            .iter()
            .position(|s| s == want)
            .unwrap_or_else(|| panic!("{want:?} missing from {outputs:?}"));
        left.remove(at);
    }
    assert!(left.is_empty(), "unexpected {left:?} in {outputs:?}");
}
