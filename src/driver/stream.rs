//! TURN over TCP and TLS on the loop: listeners and connections live in the driver's slab
//! next to the UDP sockets (their index is the mio `Token` and the core's `ConnectionId`).
//!
//! A connection's bytes are framed by `stream_framing::next_frame` and each frame goes to
//! the core like a datagram. Everything a connection holds is bounded: the bytes of one
//! incomplete frame (read buffer: at most one maximal frame plus one read), and a write
//! queue of `WRITE_LIMIT` bytes: a client that does not read loses frames (counted), the
//! loop never waits for it. When a TLS certificate is set, every TCP listener serves both:
//! a first byte of 0x16 starts a TLS handshake, anything else is plain TURN over TCP.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::tls::ReloadableConfig;
use super::tls::connection::TlsConnection;

mod admission;
mod connection;
mod deadlines;
mod drops;
mod writes;
use super::{Driver, Socket, usage_log};
use crate::core::wire::stream_framing::{NextFrame, TLS_HANDSHAKE_FIRST_BYTE, next_frame};
use crate::core::{AllocationId, ConnectionId, Now, Transport};
use admission::{Admission, Admit, Limits};
pub(super) use connection::{Close, Connection, Kind};
use connection::{State, WRITE_LIMIT};
pub use drops::ClientDrops;
pub(super) use drops::REASONS as CLIENT_DROP_REASONS;
pub(super) use drops::peer_datagram;
pub(super) use writes::send_frame;

/// One read from a socket: the slack a read buffer may hold beyond an incomplete frame.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per connection per loop turn: a busy connection yields to the others after this.
const READS_PER_TURN: usize = 4;
/// New connections per listener per loop turn.
const ACCEPTS_PER_TURN: usize = 64;
/// TLS connections still in their handshake processed per loop turn: a handshake flood
/// costs the UDP clients at most this many handshake steps of latency per turn.
const HANDSHAKES_PER_TURN: usize = 16;
/// A read buffer this large is given back once it is empty (idle connections hold none).
const KEEP_READ_CAPACITY: usize = 4096;

/// What the stream side is configured to do.
pub struct StreamOptions {
    /// TCP listeners on every `--listen-addr`.
    pub tcp: bool,
    /// More TCP listeners (TLS, and plain TCP on the same port).
    pub tls_listen: Vec<SocketAddr>,
    /// The certificate, if TLS is served.
    pub tls: Option<ReloadableConfig>,
    pub max_connections: usize,
    /// Per IPv4 address, per IPv6 /64.
    pub max_connections_per_ip: usize,
    /// Connections without an allocation yet (admission.rs).
    pub max_pending_connections: usize,
    /// A connection without an allocation this long is closed.
    pub no_allocation_deadline: Duration,
    /// A TLS handshake not done by then is abandoned.
    pub handshake_deadline: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            tcp: true,
            tls_listen: Vec::new(),
            tls: None,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_pending_connections: 2_000,
            no_allocation_deadline: Duration::from_secs(10),
            handshake_deadline: Duration::from_secs(10),
        }
    }
}

/// What the stream side counted, for metrics.
#[derive(Debug, Default, Clone)]
pub struct StreamCounters {
    /// Connections accepted, by kind known at close or now (all count as TCP at accept).
    pub accepted: u64,
    /// Connections refused: over the total limit, over the per-address limit.
    pub refused_total: u64,
    pub refused_per_ip: u64,
    /// Connections closed, by kind and `Close` reason.
    pub closed: [[u64; Close::COUNT]; 2],
    /// TLS handshakes completed.
    pub tls_handshakes_ok: u64,
    /// TLS handshakes not completed, by the `Close` reason of their connection.
    pub tls_handshakes_failed: [u64; Close::COUNT],
    /// Frames dropped because the client's write queue was full, by kind.
    pub write_queue_full: [u64; 2],
    /// Open connections right now, by kind.
    pub open: [usize; 2],
    /// Open connections without an allocation yet.
    pub pending: usize,
    /// Bytes of frames received from clients and queued for them (over TLS: plaintext), by kind.
    pub bytes_in: [u64; 2],
    pub bytes_out: [u64; 2],
    /// accept() failures other than "no connection waiting" (out of descriptors).
    pub accept_failed: u64,
    /// write/writev calls that sent queued frames to clients, by kind.
    pub write_calls: [u64; 2],
    /// The core's drops of messages that came over each stream transport, by kind.
    pub client_drops: [ClientDrops; 2],
}

/// A deadline of one connection (its slab key and generation: the key may be reused).
#[derive(Clone, Copy)]
struct Due {
    at: Instant,
    key: usize,
    generation: u64,
}

/// The stream side's state outside the slab.
pub(super) struct Streams {
    options: StreamOptions,
    admission: Admission,
    next_generation: u64,
    /// Deadlines in creation order: every entry is `created + a constant`, so each queue is
    /// sorted and expiry looks only at its front. `pending_due` holds every connection
    /// still without an allocation: its front is also the oldest one to evict.
    handshake_due: VecDeque<Due>,
    pending_due: VecDeque<Due>,
    handshakes_this_turn: usize,
    /// Listeners whose accept failed (out of descriptors), retried at `accept_retry_at`:
    /// mio is edge-triggered, so the connections waiting in their backlog would otherwise
    /// wait until yet another one arrives.
    starved: Vec<usize>,
    accept_retry_at: Option<Instant>,
    /// An accept failed and none succeeded since (logged once per episode).
    accept_failing: bool,
    /// Connections with frames queued since their last flush (`flush_connections`).
    unflushed: Vec<usize>,
    /// Connections whose allocation ended this turn (key, generation), closed at its end.
    ended: Vec<(usize, u64)>,
    /// One read of ciphertext or plaintext; taken out while in use.
    scratch: Box<[u8]>,
    plain: Box<[u8]>,
    pub(super) counters: StreamCounters,
}

impl Streams {
    pub(super) fn new(options: StreamOptions) -> Streams {
        let limits = Limits {
            total: options.max_connections,
            per_source: options.max_connections_per_ip,
            pending: options.max_pending_connections,
        };
        Streams {
            options,
            admission: Admission::new(limits),
            next_generation: 0,
            handshake_due: VecDeque::new(),
            pending_due: VecDeque::new(),
            handshakes_this_turn: 0,
            starved: Vec::new(),
            accept_retry_at: None,
            accept_failing: false,
            ended: Vec::new(),
            unflushed: Vec::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            plain: vec![0; READ_CHUNK].into_boxed_slice(),
            counters: StreamCounters::default(),
        }
    }

    pub(super) fn options(&self) -> &StreamOptions {
        &self.options
    }

    /// The earliest connection deadline, or accept retry.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [
            self.handshake_due.front().map(|d| d.at),
            self.pending_due.front().map(|d| d.at),
            self.accept_retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A new loop turn: the handshake budget is full again.
    pub(super) fn new_turn(&mut self) {
        self.handshakes_this_turn = 0;
    }

    /// SIGHUP: reads the certificate again; on error the old one stays.
    pub(super) fn reload_certificate(&mut self) {
        let Some(tls) = self.options.tls.as_mut() else {
            return;
        };
        match tls.reload() {
            Ok(()) => log::info!("SIGHUP: reloaded the TLS certificate"),
            Err(e) => log::error!("SIGHUP: {e}; keeping the current certificate"),
        }
    }
}

impl Driver {
    /// Binds a TCP listener into the slab.
    pub(super) fn add_tcp_listener(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let mut listener = super::sockets::bind_tcp(addr)?;
        let entry = self.sockets.vacant_entry();
        self.poll
            .registry()
            .register(&mut listener, Token(entry.key()), Interest::READABLE)?;
        let bound = listener.local_addr()?;
        self.tcp_listeners.push(entry.key());
        entry.insert(Socket::TcpListener(listener));
        Ok(bound)
    }

    /// Accepts up to a turn's budget of connections; true if more may wait.
    pub(super) fn accept(&mut self, key: usize, now: Now) -> bool {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(Socket::TcpListener(listener)) = self.sockets.get(key) else {
                return false;
            };
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                // A connection reset before accept: the next one may be fine.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: try again soon.
                    self.accept_failed(key, now.instant, &e);
                    return false;
                }
            };
            if self.streams.accept_failing {
                self.streams.accept_failing = false;
                log::info!("accepting TCP connections again");
            }
            self.add_connection(stream, peer, now);
        }
        true
    }

    fn add_connection(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Now) {
        match self.streams.admission.admit(peer.ip()) {
            Admit::Yes => {}
            Admit::EvictOldestPending => {
                if !self.evict_oldest_pending(now) {
                    self.streams.counters.refused_total += 1;
                    return;
                }
            }
            Admit::RefusePerSource => {
                self.streams.counters.refused_per_ip += 1;
                return;
            }
            Admit::RefuseTotal => {
                self.streams.counters.refused_total += 1;
                return;
            }
        }
        let streams = &mut self.streams;
        let _ = stream.set_nodelay(true);
        let entry = self.sockets.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot register a connection from {peer}: {e}");
            return;
        }
        streams.admission.opened(peer.ip());
        streams.counters.pending = streams.admission.pending();
        streams.next_generation += 1;
        let generation = streams.next_generation;
        streams.counters.accepted += 1;
        streams.counters.open[Kind::Tcp as usize] += 1;
        let due = |after| Due {
            at: now.instant + after,
            key,
            generation,
        };
        streams
            .pending_due
            .push_back(due(streams.options.no_allocation_deadline));
        if streams.options.tls.is_some() {
            streams
                .handshake_due
                .push_back(due(streams.options.handshake_deadline));
        }
        entry.insert(Socket::Connection(Box::new(Connection {
            stream,
            peer,
            generation,
            pending: true,
            unflushed: false,
            state: State::Undecided,
            read: Vec::new(),
            write: Vec::new(),
            written: 0,
        })));
        self.compact_deadlines();
    }

    /// Writes what waits, then reads up to a turn's budget; true if more may wait.
    pub(super) fn read_connection(&mut self, key: usize, now: Now) -> bool {
        let tls_enabled = self.streams.options.tls.is_some();
        for _ in 0..READS_PER_TURN {
            let Some(Socket::Connection(conn)) = self.sockets.get_mut(key) else {
                return false;
            };
            let writes = &mut self.streams.counters.write_calls[conn.kind() as usize];
            if conn.flush(writes).is_err() {
                self.close_connection(key, now, Close::Client);
                return false;
            }
            if conn.may_cost_a_handshake_step(tls_enabled) {
                if self.streams.handshakes_this_turn >= HANDSHAKES_PER_TURN {
                    return true;
                }
                self.streams.handshakes_this_turn += 1;
            }
            let mut scratch = std::mem::take(&mut self.streams.scratch);
            let read = conn.stream.read(&mut scratch);
            let more = match read {
                Ok(0) => {
                    self.close_connection(key, now, Close::Client);
                    false
                }
                Ok(n) => self.received(key, now, &scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(e) if e.kind() == ErrorKind::Interrupted => true,
                Err(_) => {
                    self.close_connection(key, now, Close::Client);
                    false
                }
            };
            self.streams.scratch = scratch;
            if !more {
                return false;
            }
        }
        true
    }

    /// Bytes read from connection `key`; false if it was closed.
    fn received(&mut self, key: usize, now: Now, bytes: &[u8]) -> bool {
        let Some(Socket::Connection(conn)) = self.sockets.get_mut(key) else {
            return false;
        };
        if matches!(conn.state, State::Undecided) {
            let tls_config = match &self.streams.options.tls {
                Some(tls) if bytes.first() == Some(&TLS_HANDSHAKE_FIRST_BYTE) => {
                    Some(tls.current())
                }
                _ => None,
            };
            match tls_config.map(|config| TlsConnection::new(config, WRITE_LIMIT)) {
                None => conn.state = State::Tcp,
                Some(Ok(tls)) => {
                    conn.state = State::Tls(Box::new(tls));
                    self.streams.counters.open[Kind::Tcp as usize] -= 1;
                    self.streams.counters.open[Kind::Tls as usize] += 1;
                }
                Some(Err(_)) => {
                    self.close_connection(key, now, Close::TlsError);
                    return false;
                }
            }
        }
        if !matches!(conn.state, State::Tls(_)) {
            return self.consume(key, now, bytes);
        }
        let mut rest = bytes;
        let mut plain = std::mem::take(&mut self.streams.plain);
        let open = loop {
            let Some(Socket::Connection(conn)) = self.sockets.get_mut(key) else {
                break false;
            };
            let State::Tls(tls) = &mut conn.state else {
                break false;
            };
            let was_handshaking = !tls.is_handshake_complete();
            let received = match tls.receive(rest) {
                Ok(received) => received,
                Err(e) => {
                    debug!("TLS from {}: {e}", conn.peer);
                    let _ = tls.write_ciphertext(&mut conn.stream);
                    self.close_connection(key, now, Close::TlsError);
                    break false;
                }
            };
            rest = &rest[received.consumed..];
            if was_handshaking && tls.is_handshake_complete() {
                self.streams.counters.tls_handshakes_ok += 1;
            }
            let _ = tls.write_ciphertext(&mut conn.stream);
            let n = tls.read_plaintext(&mut plain);
            if n > 0 && !self.consume(key, now, &plain[..n]) {
                break false;
            }
            if received.peer_closed {
                self.close_connection(key, now, Close::Client);
                break false;
            }
            if rest.is_empty() && n == 0 {
                break true;
            }
            if received.consumed == 0 && n == 0 {
                // rustls took nothing and gave nothing: cannot progress.
                self.close_connection(key, now, Close::TlsError);
                break false;
            }
        };
        self.streams.plain = plain;
        open
    }

    /// Plaintext of connection `key`: frames go to the core, the start of an incomplete one
    /// is kept. False if the connection was closed (bytes that cannot start a frame).
    fn consume(&mut self, key: usize, now: Now, bytes: &[u8]) -> bool {
        let Some(Socket::Connection(conn)) = self.sockets.get_mut(key) else {
            return false;
        };
        let (peer, kind) = (conn.peer, conn.kind());
        self.streams.counters.bytes_in[kind as usize] += bytes.len() as u64;
        let mut pending = std::mem::take(&mut conn.read);
        let result = if pending.is_empty() {
            // The common case: whole frames straight from the read, no copy.
            self.frames(key, peer, now, bytes).map(|used| {
                pending.extend_from_slice(&bytes[used..]);
            })
        } else {
            pending.extend_from_slice(bytes);
            self.frames(key, peer, now, &pending).map(|used| {
                pending.drain(..used);
            })
        };
        if result.is_err() {
            self.close_connection(key, now, Close::InvalidFrame);
            return false;
        }
        let Some(Socket::Connection(conn)) = self.sockets.get_mut(key) else {
            return false;
        };
        if pending.is_empty() && pending.capacity() > KEEP_READ_CAPACITY {
            pending = Vec::new();
        }
        conn.read = pending;
        true
    }

    /// Hands each whole frame at the start of `buf` to the core; returns the bytes used.
    fn frames(&mut self, key: usize, peer: SocketAddr, now: Now, buf: &[u8]) -> Result<usize, ()> {
        let mut used = 0;
        loop {
            match next_frame(&buf[used..]) {
                NextFrame::Complete(frame) => {
                    let message = &buf[used..used + frame.message_len];
                    let before = ClientDrops::of(self.core.counters());
                    let forwarded =
                        self.core
                            .handle_stream_frame(now, ConnectionId(key), peer, message);
                    let after = ClientDrops::of(self.core.counters());
                    if after != before {
                        self.count_client_drops(key, &before, &after);
                    }
                    if let Some(forward) = forwarded {
                        let sent = match self.sockets.get(forward.relay.0) {
                            Some(Socket::Relay { socket, .. }) => socket
                                .send_to(&message[forward.payload], forward.peer)
                                .is_ok(),
                            _ => false,
                        };
                        if !sent {
                            self.io.send_failed += 1;
                        }
                    }
                    self.drain_outputs(now);
                    self.note_allocation(key, peer);
                    used += frame.frame_len;
                }
                NextFrame::Incomplete { .. } => return Ok(used),
                NextFrame::Invalid(_) => return Err(()),
            }
        }
    }

    fn count_client_drops(&mut self, key: usize, before: &ClientDrops, after: &ClientDrops) {
        if let Some(Socket::Connection(conn)) = self.sockets.get(key) {
            self.streams.counters.client_drops[conn.kind() as usize].add_growth(before, after);
        }
    }

    /// A pending connection that now holds an allocation leaves the pending pool (only
    /// pending connections pay this look-up: a few frames each).
    fn note_allocation(&mut self, key: usize, peer: SocketAddr) {
        if let Some(Socket::Connection(conn)) = self.sockets.get_mut(key)
            && conn.pending
            && self.core.has_stream_allocation(ConnectionId(key), peer)
        {
            conn.pending = false;
            self.streams.admission.allocated();
            self.streams.counters.pending = self.streams.admission.pending();
        }
    }

    /// Closes connection `key`: its allocation goes with it.
    pub(super) fn close_connection(&mut self, key: usize, now: Now, why: Close) {
        if !matches!(self.sockets.get(key), Some(Socket::Connection(_))) {
            return;
        }
        let Some(Socket::Connection(mut conn)) = self.sockets.try_remove(key) else {
            return;
        };
        let handshaking = conn.is_handshaking();
        // What was queued for it this turn (an answer before the frame that closes it).
        let _ = conn.flush(&mut self.streams.counters.write_calls[conn.kind() as usize]);
        if let State::Tls(tls) = &mut conn.state {
            tls.close();
            let _ = tls.write_ciphertext(&mut conn.stream);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let streams = &mut self.streams;
        let kind = conn.kind() as usize;
        streams.counters.open[kind] -= 1;
        streams.counters.closed[kind][why as usize] += 1;
        if handshaking {
            streams.counters.tls_handshakes_failed[why as usize] += 1;
        }
        streams.admission.closed(conn.peer.ip(), conn.pending);
        streams.counters.pending = streams.admission.pending();
        if !streams.starved.is_empty() {
            // A descriptor is free: a starved listener may accept again.
            streams.accept_retry_at = Some(now.instant);
        }
        self.core
            .handle_connection_closed(now, ConnectionId(key), conn.peer);
        // The connection has left the slab: name its transport here.
        self.log_usage_records(Some((ConnectionId(key), conn.kind())));
        self.drain_outputs(now);
    }

    /// The connection (key, generation) whose client holds `allocation`, if a stream client.
    pub(super) fn connection_of(&self, allocation: AllocationId) -> Option<(usize, u64)> {
        match self.core.allocation_transport(allocation) {
            Some(Transport::Stream(connection)) => self
                .generation_of(connection.0)
                .map(|generation| (connection.0, generation)),
            _ => None,
        }
    }

    /// Logs the usage records of allocations that ended, naming a stream's transport by its
    /// connection (the core knows only that it is a stream); `closed` is one that has just
    /// left the slab.
    pub(super) fn log_usage_records(&mut self, closed: Option<(ConnectionId, Kind)>) {
        while let Some(record) = self.core.poll_usage_record() {
            let transport = match record.transport {
                Transport::Udp(_) => "udp",
                Transport::Stream(id) => match (closed, self.sockets.get(id.0)) {
                    (Some((closed, kind)), _) if closed == id => kind.label(),
                    (_, Some(Socket::Connection(conn))) => conn.kind().label(),
                    // Not reached: a stream allocation ends with or before its connection.
                    _ => "tcp",
                },
            };
            usage_log::log(&record, transport, self.log_client_addresses);
        }
    }

    /// The transport of connection `owner` (key, generation), if it is still open.
    pub(super) fn connection_kind(&self, owner: (usize, u64)) -> Option<Kind> {
        match self.sockets.get(owner.0) {
            Some(Socket::Connection(conn)) if conn.generation == owner.1 => Some(conn.kind()),
            _ => None,
        }
    }

    pub(super) fn generation_of(&self, key: usize) -> Option<u64> {
        match self.sockets.get(key) {
            Some(Socket::Connection(conn)) => Some(conn.generation),
            _ => None,
        }
    }

    /// Allocations over each stream transport (per scrape: O(connections)).
    pub(super) fn stream_allocations(&self) -> [usize; 2] {
        let mut counts = [0; 2];
        for (key, socket) in self.sockets.iter() {
            if let Socket::Connection(conn) = socket
                && self
                    .core
                    .has_stream_allocation(ConnectionId(key), conn.peer)
            {
                counts[conn.kind() as usize] += 1;
            }
        }
        counts
    }
}
