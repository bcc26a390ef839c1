//! TURN over TCP and TLS on the loop: listeners and connections live in the driver's slab
//! next to the UDP sockets (their index is the mio `Token` and the core's `ConnectionId`).
//!
//! A connection's bytes are framed by `stream_framing::next_frame` and each frame goes to
//! the core like a datagram. Everything a connection holds is bounded: the bytes of one
//! incomplete frame (read buffer: at most one maximal frame plus one read), and a write
//! queue of `WRITE_LIMIT` bytes: a client that does not read loses frames (counted), the
//! loop never waits for it. When a TLS certificate is set, every TCP listener serves both:
//! a first byte of 0x16 starts a TLS handshake, anything else is plain TURN over TCP.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::tls::ReloadableConfig;
use super::tls::connection::TlsConnection;

mod connection;
use super::{Driver, Socket, usage_log};
use crate::core::wire::stream_framing::{NextFrame, TLS_HANDSHAKE_FIRST_BYTE, next_frame};
use crate::core::{ConnectionId, Now, Transport};
pub(super) use connection::{Connection, Kind};
use connection::{State, WRITE_LIMIT};

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
    pub max_connections_per_ip: usize,
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
            no_allocation_deadline: Duration::from_secs(30),
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
    /// Connections closed because their bytes cannot start a frame, by kind.
    pub closed_invalid: [u64; 2],
    /// Connections closed without an allocation at the deadline, by kind.
    pub closed_no_allocation: [u64; 2],
    /// TLS handshakes completed, failed (bad records, alerts) and timed out.
    pub tls_handshakes_ok: u64,
    pub tls_handshakes_failed: u64,
    pub tls_handshakes_timed_out: u64,
    /// Frames dropped because the client's write queue was full, by kind.
    pub write_queue_full: [u64; 2],
    /// Open connections right now, by kind.
    pub open: [usize; 2],
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
    per_ip: BTreeMap<IpAddr, usize>,
    total: usize,
    next_generation: u64,
    /// Deadlines in creation order: every entry is `created + a constant`, so each queue is
    /// sorted and expiry looks only at its front.
    handshake_due: VecDeque<Due>,
    allocation_due: VecDeque<Due>,
    handshakes_this_turn: usize,
    /// One read of ciphertext or plaintext; taken out while in use.
    scratch: Box<[u8]>,
    plain: Box<[u8]>,
    pub(super) counters: StreamCounters,
}

impl Streams {
    pub(super) fn new(options: StreamOptions) -> Streams {
        Streams {
            options,
            per_ip: BTreeMap::new(),
            total: 0,
            next_generation: 0,
            handshake_due: VecDeque::new(),
            allocation_due: VecDeque::new(),
            handshakes_this_turn: 0,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            plain: vec![0; READ_CHUNK].into_boxed_slice(),
            counters: StreamCounters::default(),
        }
    }

    pub(super) fn options(&self) -> &StreamOptions {
        &self.options
    }

    /// The earliest connection deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let a = self.handshake_due.front().map(|d| d.at);
        let b = self.allocation_due.front().map(|d| d.at);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

/// Queues `frame` on connection `key` (a response or a relayed datagram); counts a drop.
pub(super) fn send_frame(
    sockets: &mut slab::Slab<Socket>,
    streams: &mut Streams,
    key: usize,
    frame: &[u8],
) -> bool {
    let Some(Socket::Connection(conn)) = sockets.get_mut(key) else {
        return false;
    };
    if !conn.send(frame) {
        streams.counters.write_queue_full[conn.kind() as usize] += 1;
    }
    true
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
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept.
                    debug!("accept on {key}: {e}");
                    return false;
                }
            };
            self.add_connection(stream, peer, now.instant);
        }
        true
    }

    fn add_connection(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let streams = &mut self.streams;
        if streams.total >= streams.options.max_connections {
            streams.counters.refused_total += 1;
            return;
        }
        let from_ip = streams.per_ip.get(&peer.ip()).copied().unwrap_or(0);
        if from_ip >= streams.options.max_connections_per_ip {
            streams.counters.refused_per_ip += 1;
            return;
        }
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
        streams.per_ip.insert(peer.ip(), from_ip + 1);
        streams.total += 1;
        streams.next_generation += 1;
        let generation = streams.next_generation;
        streams.counters.accepted += 1;
        streams.counters.open[Kind::Tcp as usize] += 1;
        let due = |after| Due {
            at: now + after,
            key,
            generation,
        };
        streams
            .allocation_due
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
            state: State::Undecided,
            read: Vec::new(),
            write: Vec::new(),
            written: 0,
        })));
    }

    /// Writes what waits, then reads up to a turn's budget; true if more may wait.
    pub(super) fn read_connection(&mut self, key: usize, now: Now) -> bool {
        let tls_enabled = self.streams.options.tls.is_some();
        for _ in 0..READS_PER_TURN {
            let Some(Socket::Connection(conn)) = self.sockets.get_mut(key) else {
                return false;
            };
            if conn.flush().is_err() {
                self.close_connection(key, now);
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
                    self.close_connection(key, now);
                    false
                }
                Ok(n) => self.received(key, now, &scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(e) if e.kind() == ErrorKind::Interrupted => true,
                Err(_) => {
                    self.close_connection(key, now);
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
                    self.close_connection(key, now);
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
                    if was_handshaking {
                        self.streams.counters.tls_handshakes_failed += 1;
                    }
                    self.close_connection(key, now);
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
                self.close_connection(key, now);
                break false;
            }
            if rest.is_empty() && n == 0 {
                break true;
            }
            if received.consumed == 0 && n == 0 {
                // rustls took nothing and gave nothing: cannot progress.
                self.close_connection(key, now);
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
            self.streams.counters.closed_invalid[kind as usize] += 1;
            self.close_connection(key, now);
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
                    if let Some(forward) =
                        self.core
                            .handle_stream_frame(now, ConnectionId(key), peer, message)
                    {
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
                    used += frame.frame_len;
                }
                NextFrame::Incomplete { .. } => return Ok(used),
                NextFrame::Invalid(_) => return Err(()),
            }
        }
    }

    /// Closes connection `key`: its allocation goes with it.
    pub(super) fn close_connection(&mut self, key: usize, now: Now) {
        if !matches!(self.sockets.get(key), Some(Socket::Connection(_))) {
            return;
        }
        let Some(Socket::Connection(mut conn)) = self.sockets.try_remove(key) else {
            return;
        };
        if let State::Tls(tls) = &mut conn.state {
            tls.close();
            let _ = tls.write_ciphertext(&mut conn.stream);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let streams = &mut self.streams;
        streams.total -= 1;
        streams.counters.open[conn.kind() as usize] -= 1;
        if let Some(count) = streams.per_ip.get_mut(&conn.peer.ip()) {
            *count -= 1;
            if *count == 0 {
                streams.per_ip.remove(&conn.peer.ip());
            }
        }
        self.core
            .handle_connection_closed(now, ConnectionId(key), conn.peer);
        // The connection has left the slab: name its transport here.
        self.log_usage_records(Some((ConnectionId(key), conn.kind())));
        self.drain_outputs(now);
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

    /// Closes the connections past a deadline. (A write error is not handled where it
    /// happens, in the middle of draining outputs: the socket reports it again as readable
    /// and the read closes the connection.)
    pub(super) fn expire_connections(&mut self, now: Now) {
        while let Some(due) = self.streams.handshake_due.front().copied() {
            if due.at > now.instant {
                break;
            }
            self.streams.handshake_due.pop_front();
            if self.generation_of(due.key) != Some(due.generation) {
                continue;
            }
            if let Some(Socket::Connection(conn)) = self.sockets.get(due.key)
                && conn.is_handshaking()
            {
                self.streams.counters.tls_handshakes_timed_out += 1;
                self.close_connection(due.key, now);
            }
        }
        while let Some(due) = self.streams.allocation_due.front().copied() {
            if due.at > now.instant {
                break;
            }
            self.streams.allocation_due.pop_front();
            if self.generation_of(due.key) != Some(due.generation) {
                continue;
            }
            let Some(Socket::Connection(conn)) = self.sockets.get(due.key) else {
                continue;
            };
            if self
                .core
                .has_stream_allocation(ConnectionId(due.key), conn.peer)
            {
                // Check again one period on: an allocation may be deleted while the
                // connection stays. Entries stay in deadline order (now + a constant).
                let again = Due {
                    at: now.instant + self.streams.options.no_allocation_deadline,
                    ..due
                };
                self.streams.allocation_due.push_back(again);
            } else {
                self.streams.counters.closed_no_allocation[conn.kind() as usize] += 1;
                self.close_connection(due.key, now);
            }
        }
    }

    fn generation_of(&self, key: usize) -> Option<u64> {
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
