//! The one fake driver of the tests: the scenario tests (`tests/scenarios/`), the security
//! tests (`tests/security.rs`) and the fuzz and property harness
//! (`fuzz/harness/core_driver.rs`) all drive `relay::core::Server` through it.
//!
//! It plays the driver of DESIGN.md with virtual time and a fixed seed: it hands the core
//! datagrams and time, drains `poll_output` (answering each `OpenRelay` at once from a
//! script, or leaving it pending until the test completes it), keeps the books of the fake
//! relay sockets it opened, and checks what a driver can see: an `OpenRelay` is on the
//! configured bind address and port range and for a port no open socket holds, a socket is
//! closed only if open and only once, the core's own invariants hold after every input, and
//! nothing is left in the output queue when the next input comes or the driver is dropped.
#![allow(dead_code)] // each test crate uses a different part of this

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay::core::{
    AllocationId, Config, ConnectionId, Deliver, Family, Forward, HEADROOM, ListenerId, Now,
    OpenError, Output, RelayId, Server, TAILROOM, Transport,
};

/// Unix time at virtual time zero.
pub const UNIX0: u64 = 1_700_000_000;

/// How the driver answers an `OpenRelay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAnswer {
    /// A fresh socket (`RelayId(n)` for the n-th socket opened, from 1).
    Ok,
    Err(OpenError),
    /// Leave it pending: the test completes it later (`complete`, `complete_oldest`).
    Defer,
}

/// A relay socket the driver opened.
#[derive(Debug, Clone)]
pub struct RelaySocket {
    pub allocation: AllocationId,
    pub family: Family,
    pub addr: SocketAddr,
}

/// An `OpenRelay` left pending.
#[derive(Debug, Clone, Copy)]
pub struct PendingOpen {
    pub allocation: AllocationId,
    pub family: Family,
    pub addr: SocketAddr,
    pub answered: bool,
}

pub struct FakeDriver {
    pub server: Server,
    config: Config,
    t0: Instant,
    elapsed: Duration,
    /// The answers to the next `OpenRelay`s, in order; `default_answer` once empty.
    pub script: VecDeque<OpenAnswer>,
    pub default_answer: OpenAnswer,
    /// Every deferred `OpenRelay`, in request order (indexes stay valid once answered).
    pub deferred: Vec<PendingOpen>,
    /// How many relay sockets were opened: the last one is `RelayId(opened)`.
    pub opened: usize,
    /// The relay sockets open now, by `RelayId.0` (closed ones are forgotten, so that a
    /// million allocations one after another cost no memory).
    pub open: BTreeMap<usize, RelaySocket>,
    /// The addresses open sockets are bound to (binds in flight are in `deferred`).
    bound: BTreeMap<SocketAddr, RelayId>,
    /// Walk the core's invariants after every input (off only for loops of millions).
    pub check_every_input: bool,
}

impl FakeDriver {
    pub fn new(config: Config, seed: [u8; 32]) -> FakeDriver {
        FakeDriver {
            server: Server::new(config.clone(), seed),
            config,
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            script: VecDeque::new(),
            default_answer: OpenAnswer::Ok,
            deferred: Vec::new(),
            opened: 0,
            open: BTreeMap::new(),
            bound: BTreeMap::new(),
            check_every_input: true,
        }
    }

    // --- time ---------------------------------------------------------------------------

    pub fn now(&self) -> Now {
        Now {
            instant: self.t0 + self.elapsed,
            unix_secs: UNIX0 + self.elapsed.as_secs(),
        }
    }

    /// The instant `secs` after virtual time zero.
    pub fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Moves the clock to `to` after time zero (never backwards).
    pub fn set_elapsed(&mut self, to: Duration) {
        assert!(to >= self.elapsed, "time goes forward");
        self.elapsed = to;
    }

    pub fn advance_clock(&mut self, by: Duration) {
        self.elapsed += by;
    }

    // --- inputs -------------------------------------------------------------------------

    /// A datagram from a client; the data-path decision (outputs stay queued: `drain`).
    pub fn client_datagram(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Option<Forward> {
        self.assert_drained();
        let forward = self
            .server
            .handle_client_datagram(self.now(), listener, from, bytes);
        self.check_invariants("handle_client_datagram");
        if let Some(f) = &forward {
            assert!(
                f.payload.start <= f.payload.end && f.payload.end <= bytes.len(),
                "Forward range {:?} outside a {}-byte datagram",
                f.payload,
                bytes.len()
            );
            let socket = self.relay(f.relay);
            assert_eq!(
                socket.family,
                Family::of_addr(f.peer),
                "Forward to a peer of the other family"
            );
        }
        forward
    }

    /// One frame (padding stripped) from TCP/TLS connection `connection` of `from`.
    pub fn stream_frame(
        &mut self,
        connection: ConnectionId,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Option<Forward> {
        self.assert_drained();
        let forward = self
            .server
            .handle_stream_frame(self.now(), connection, from, bytes);
        self.check_invariants("handle_stream_frame");
        if let Some(f) = &forward {
            assert!(
                f.payload.end <= bytes.len(),
                "Forward range outside the frame"
            );
        }
        forward
    }

    /// The driver saw connection `connection` of `from` close.
    pub fn connection_closed(&mut self, connection: ConnectionId, from: SocketAddr) {
        self.assert_drained();
        self.server
            .handle_connection_closed(self.now(), connection, from);
        self.check_invariants("handle_connection_closed");
    }

    /// A datagram from `from` read on the relay socket of `allocation`, laid out in a
    /// buffer with the core's headroom and tailroom (one byte short if `short_buffer`);
    /// returns the decision and the frame bytes to send to the client.
    pub fn peer_datagram(
        &mut self,
        allocation: AllocationId,
        from: SocketAddr,
        payload: &[u8],
        short_buffer: bool,
    ) -> Option<(Deliver, Vec<u8>)> {
        self.assert_drained();
        let mut buf = vec![0xEE; HEADROOM + payload.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        if short_buffer {
            buf.pop();
        }
        let deliver =
            self.server
                .handle_peer_datagram(self.now(), allocation, from, &mut buf, payload.len());
        self.check_invariants("handle_peer_datagram");
        deliver.map(|d| {
            assert!(!short_buffer, "delivered from a buffer without tailroom");
            let frame = buf
                .get(d.frame.clone())
                .unwrap_or_else(|| panic!("Deliver frame {:?} outside the buffer", d.frame))
                .to_vec();
            (d, frame)
        })
    }

    /// `handle_timeout` now (outputs stay queued: `drain`).
    pub fn fire_timers(&mut self) {
        self.assert_drained();
        let now = self.now();
        self.server.handle_timeout(now);
        if let Some(next) = self.server.poll_timeout() {
            assert!(
                next > now.instant,
                "poll_timeout is due right after handle_timeout"
            );
        }
        self.check_invariants("handle_timeout");
    }

    /// Completes the `index`th deferred open (Ok gets a fresh RelayId, returned); the
    /// outputs stay queued (`drain`).
    pub fn complete(&mut self, index: usize, result: Result<(), OpenError>) -> Option<RelayId> {
        self.assert_drained();
        let open = self.deferred[index];
        assert!(!open.answered, "deferred open #{index} completed twice");
        self.deferred[index].answered = true;
        self.answer(open.allocation, open.family, open.addr, result)
    }

    /// Completes the oldest deferred open not answered yet, if any.
    pub fn complete_oldest(&mut self, result: Result<(), OpenError>) -> Option<Option<RelayId>> {
        let index = self.deferred.iter().position(|o| !o.answered)?;
        Some(self.complete(index, result))
    }

    // --- outputs ------------------------------------------------------------------------

    /// The next output, after doing what a driver does with it (opening or closing a fake
    /// socket) and checking what it can see.
    pub fn next_output(&mut self) -> Option<Output> {
        let output = self.server.poll_output()?;
        match &output {
            Output::OpenRelay {
                allocation,
                family,
                addr,
                dont_fragment: _,
            } => {
                let bind = self
                    .config
                    .relay_address(*family)
                    .expect("OpenRelay for a family without relay address")
                    .bind;
                assert_eq!(addr.ip(), bind, "OpenRelay on the wrong address");
                assert!(
                    self.config.ports.contains(&addr.port()),
                    "OpenRelay on port {} outside the range",
                    addr.port()
                );
                assert!(
                    !self.bound.contains_key(addr),
                    "OpenRelay for {addr}, which an open relay socket is bound to: {:?}",
                    self.open
                );
                assert!(
                    self.deferred.iter().all(|p| p.answered || p.addr != *addr),
                    "OpenRelay for {addr} while its bind is in flight"
                );
                let answer = self.script.pop_front().unwrap_or(self.default_answer);
                let result = match answer {
                    OpenAnswer::Ok => Ok(()),
                    OpenAnswer::Err(e) => Err(e),
                    OpenAnswer::Defer => {
                        self.deferred.push(PendingOpen {
                            allocation: *allocation,
                            family: *family,
                            addr: *addr,
                            answered: false,
                        });
                        return Some(output);
                    }
                };
                self.answer(*allocation, *family, *addr, result);
            }
            Output::CloseRelay { relay } => {
                assert!(
                    (1..=self.opened).contains(&relay.0),
                    "CloseRelay for {relay:?}, never opened"
                );
                let socket = self
                    .open
                    .remove(&relay.0)
                    .unwrap_or_else(|| panic!("CloseRelay for {relay:?} twice"));
                self.bound.remove(&socket.addr);
            }
            Output::ToClient { .. } => {}
        }
        Some(output)
    }

    /// Every output, in order (see `next_output`).
    pub fn drain(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        while let Some(output) = self.next_output() {
            outputs.push(output);
        }
        self.check_invariants("draining");
        outputs
    }

    pub fn assert_drained(&mut self) {
        let leftover = self.server.poll_output();
        assert!(
            leftover.is_none(),
            "output left in the queue before the next input: {leftover:?}"
        );
    }

    /// The core's own invariant checker (after every input unless `check_every_input` is
    /// off).
    pub fn check_invariants(&self, after: &str) {
        if !self.check_every_input {
            return;
        }
        let broken = self.server.invariant_violations();
        assert!(
            broken.is_empty(),
            "core invariants broken after {after}: {broken:#?}"
        );
    }

    // --- the fake sockets ---------------------------------------------------------------

    /// An open relay socket (panics if closed or never opened).
    pub fn relay(&self, id: RelayId) -> &RelaySocket {
        self.open
            .get(&id.0)
            .unwrap_or_else(|| panic!("{id:?} is not open (closed, or never opened)"))
    }

    pub fn is_open(&self, id: RelayId) -> bool {
        self.open.contains_key(&id.0)
    }

    /// The relay sockets that are open, in the order they were opened.
    pub fn open_relays(&self) -> Vec<(RelayId, RelaySocket)> {
        self.open
            .iter()
            .map(|(i, r)| (RelayId(*i), r.clone()))
            .collect()
    }

    fn answer(
        &mut self,
        allocation: AllocationId,
        family: Family,
        addr: SocketAddr,
        result: Result<(), OpenError>,
    ) -> Option<RelayId> {
        let result = result.map(|()| {
            self.opened += 1;
            let id = RelayId(self.opened);
            let socket = RelaySocket {
                allocation,
                family,
                addr,
            };
            self.open.insert(id.0, socket);
            self.bound.insert(addr, id);
            id
        });
        self.server
            .handle_relay_opened(self.now(), allocation, family, result);
        self.check_invariants("handle_relay_opened");
        result.ok()
    }
}

impl Drop for FakeDriver {
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

// ---------------------------------------------------------------------------------------
// Outputs as the tests compare them
// ---------------------------------------------------------------------------------------

/// One output in a form a test can write down and compare whole: `assert_eq!(seen(&outputs),
/// [Seen::open(V4), Seen::success(client, ALLOCATE)])` checks the complete, ordered list
/// (where it goes, what it asks for, and for an answer its class, method and error code, read
/// by the tests' own code). Tests check bytes and attributes beyond this separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Answer {
        transport: Transport,
        to: SocketAddr,
        class: crate::stun_encoder::Class,
        method: u16,
        error: Option<u16>,
    },
    Open {
        family: Family,
        dont_fragment: bool,
    },
    Close(RelayId),
}

impl Seen {
    /// A success response on listener 0.
    pub fn success(to: SocketAddr, method: stun_codec::Method) -> Seen {
        Seen::answer(to, crate::stun_encoder::Class::Success, method, None)
    }

    /// An error response with `code` on listener 0.
    pub fn error(to: SocketAddr, method: stun_codec::Method, code: u16) -> Seen {
        Seen::answer(to, crate::stun_encoder::Class::Error, method, Some(code))
    }

    fn answer(
        to: SocketAddr,
        class: crate::stun_encoder::Class,
        method: stun_codec::Method,
        error: Option<u16>,
    ) -> Seen {
        Seen::Answer {
            transport: Transport::Udp(ListenerId(0)),
            to,
            class,
            method: method.as_u16(),
            error,
        }
    }

    /// A success response over connection `connection`.
    pub fn success_on(
        connection: ConnectionId,
        to: SocketAddr,
        method: stun_codec::Method,
    ) -> Seen {
        Seen::Answer {
            transport: Transport::Stream(connection),
            to,
            class: crate::stun_encoder::Class::Success,
            method: method.as_u16(),
            error: None,
        }
    }

    /// An error response with `code` over connection `connection`.
    pub fn error_on(
        connection: ConnectionId,
        to: SocketAddr,
        method: stun_codec::Method,
        code: u16,
    ) -> Seen {
        Seen::Answer {
            transport: Transport::Stream(connection),
            to,
            class: crate::stun_encoder::Class::Error,
            method: method.as_u16(),
            error: Some(code),
        }
    }

    /// An `OpenRelay` of `family` without DF.
    pub fn open(family: Family) -> Seen {
        Seen::Open {
            family,
            dont_fragment: false,
        }
    }

    pub fn open_df(family: Family) -> Seen {
        Seen::Open {
            family,
            dont_fragment: true,
        }
    }

    pub fn close(relay: RelayId) -> Seen {
        Seen::Close(relay)
    }
}

/// The outputs as `Seen`s, in order.
pub fn seen(outputs: &[Output]) -> Vec<Seen> {
    use crate::stun_encoder::{Class, kind, method_of, tlvs};
    outputs
        .iter()
        .map(|output| match output {
            Output::ToClient {
                transport,
                client,
                bytes,
            } => {
                assert!(bytes.len() >= 20, "runt answer {bytes:02x?}");
                let message_type = u16::from_be_bytes([bytes[0], bytes[1]]);
                let attributes = tlvs(bytes).unwrap_or_else(|| panic!("bad TLVs {bytes:02x?}"));
                let error = attributes
                    .iter()
                    .find(|(k, _)| *k == kind::ERROR_CODE)
                    .map(|(_, v)| u16::from(v[2] & 0x07) * 100 + u16::from(v[3]));
                Seen::Answer {
                    transport: *transport,
                    to: *client,
                    class: Class::of(message_type),
                    method: method_of(message_type),
                    error,
                }
            }
            Output::OpenRelay {
                family,
                dont_fragment,
                ..
            } => Seen::Open {
                family: *family,
                dont_fragment: *dont_fragment,
            },
            Output::CloseRelay { relay } => Seen::Close(*relay),
        })
        .collect()
}
