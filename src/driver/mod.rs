//! The single mio loop: owns every socket, feeds the core, executes its outputs and sleeps
//! until its next deadline. It makes no protocol decision (DESIGN.md).

// The modules that call libc are the only ones allowed unsafe code (src/lib.rs denies it).
#[allow(unsafe_code)] // recvmmsg, sendmmsg, sendmsg with UDP GSO
mod batch;
pub mod clock;
pub mod control;
mod health;
mod http;
#[allow(unsafe_code)] // getifaddrs
pub mod interfaces;
#[allow(unsafe_code)] // setrlimit
pub mod limits;
#[allow(unsafe_code)] // sysconf, getrlimit (process gauges)
mod metrics;
#[allow(unsafe_code)] // clock_gettime (CLOCK_MONOTONIC for systemd)
mod notify;
pub mod portal;
mod relay_sockets;
#[allow(unsafe_code)] // signalfd
mod signals;
#[allow(unsafe_code)] // setsockopt
mod sockets;
mod stream;
pub mod tls;
pub mod usage_log;

pub use stream::{StreamCounters, StreamOptions};

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::core::{
    AllocationId, Config, EndReason, Family, HEADROOM, ListenerId, Now, Output, Server, Transport,
};

/// Where the datagrams of the socket being read come from.
#[derive(Clone, Copy)]
enum Source {
    Client(ListenerId),
    /// And the stream transport of the allocation's client, if it uses one.
    Peer(AllocationId, Option<stream::Kind>),
}

enum Socket {
    Listener {
        id: ListenerId,
        socket: UdpSocket,
    },
    Relay {
        allocation: AllocationId,
        socket: UdpSocket,
        /// The connection (key, generation) whose allocation this is, for a stream client:
        /// closing the relay socket ends the allocation, and the connection is closed too.
        owner: Option<(usize, u64)>,
    },
    /// TURN over TCP, and over TLS when a certificate is set (stream.rs).
    TcpListener(mio::net::TcpListener),
    Connection(Box<stream::Connection>),
}

/// Tokens outside the slab's range: the signalfd, the metrics listener, and the metrics
/// connections from HTTP_FIRST_TOKEN on.
const SIGNAL_TOKEN: Token = Token(usize::MAX);
const HTTP_LISTENER_TOKEN: Token = Token(usize::MAX - 1);
const PORTAL_TOKEN: Token = Token(usize::MAX - 2);
const HTTP_FIRST_TOKEN: usize = 1 << 40;

/// What the loop serves besides STUN/TURN over UDP.
#[derive(Default)]
pub struct Options {
    /// Where to serve metrics and health, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// For process_start_time_seconds.
    pub start_time_unix: u64,
    /// TURN over TCP and TLS.
    pub streams: StreamOptions,
    /// Reload, drain and systemd notifications.
    pub control: control::Control,
    /// Usage records carry the client's address (`--log-client-addresses`).
    pub log_client_addresses: bool,
    /// Firezone mode: the portal to join (no allocations until its `init`).
    pub portal: Option<crate::cli::PortalSettings>,
    /// Verifies a wss:// portal (`portal::client_config`).
    pub portal_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Jitters the portal's reconnection backoff.
    pub portal_seed: u64,
}

/// I/O failures of the driver, counted, never fatal.
#[derive(Debug, Default, Clone)]
pub struct IoCounters {
    /// Sends that failed (the datagram is lost).
    pub send_failed: u64,
    /// Receives that failed.
    pub recv_failed: u64,
    /// Datagrams received without a usable source address (not IPv4/IPv6): unanswerable.
    pub recv_no_source: u64,
    /// Relayed datagrams the driver could not queue for sending (no such listener, or a
    /// frame outside its slot): bugs if ever non-zero, but counted, never silent.
    pub unsendable: u64,
    /// Bytes of datagrams from UDP clients, and to them (sent or queued to send).
    pub udp_bytes_in: u64,
    pub udp_bytes_out: u64,
}

/// The mio loop: sockets, the core, and the queues between them.
pub struct Driver {
    poll: Poll,
    sockets: Slab<Socket>,
    /// Slab key of each listener, indexed by `ListenerId`.
    listeners: Vec<usize>,
    /// Slab keys of the TCP listeners.
    tcp_listeners: Vec<usize>,
    streams: stream::Streams,
    core: Server,
    /// Receive slots and the queue of relayed datagrams to send (see batch.rs).
    batch: batch::Batch,
    /// Sockets whose budget (one batch) ran out while still readable.
    backlog: Vec<usize>,
    /// Sockets to read this turn (kept to reuse its memory).
    ready: Vec<usize>,
    io: IoCounters,
    signals: signals::ShutdownSignals,
    http: Option<http::HttpServer>,
    portal: Option<portal::PortalLink>,
    start_time_unix: u64,
    control: control::Control,
    log_client_addresses: bool,
}

impl Driver {
    /// Binds every listen socket of `config`; fails (for a clear start-up error) if any bind fails.
    pub fn new(mut config: Config, seed: [u8; 32], options: Options) -> io::Result<Driver> {
        let poll = Poll::new()?;
        let signals = signals::ShutdownSignals::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&signals)),
            SIGNAL_TOKEN,
            Interest::READABLE,
        )?;
        let http = match options.metrics_addr {
            Some(addr) => Some(
                http::HttpServer::bind(
                    addr,
                    poll.registry(),
                    HTTP_LISTENER_TOKEN,
                    HTTP_FIRST_TOKEN,
                )
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot bind metrics address {addr}: {e}"))
                })?,
            ),
            None => None,
        };
        let mut sockets = Slab::new();
        let mut listeners = Vec::new();
        let mut tcp_listeners = Vec::new();
        let tcp = options.streams.tcp;
        let port_given: Vec<bool> = config.listeners.iter().map(|a| a.port() != 0).collect();
        for (index, addr) in config.listeners.clone().iter().enumerate() {
            let (mut socket, tcp_listener) = if tcp && addr.port() == 0 {
                let (udp, tcp) = sockets::bind_udp_and_tcp(*addr)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
                (udp, Some(tcp))
            } else {
                let udp = sockets::bind_udp(*addr, false)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
                (udp, None)
            };
            if let Some(mut listener) = tcp_listener {
                let entry = sockets.vacant_entry();
                poll.registry()
                    .register(&mut listener, Token(entry.key()), Interest::READABLE)?;
                tcp_listeners.push(entry.key());
                entry.insert(Socket::TcpListener(listener));
            }
            let entry = sockets.vacant_entry();
            poll.registry()
                .register(&mut socket, Token(entry.key()), Interest::READABLE)?;
            listeners.push(entry.key());
            let id = ListenerId(
                u16::try_from(index).map_err(|_| io::Error::other("too many listeners"))?,
            );
            // The core must know the port the kernel chose: the listen socket is never a peer.
            if let Ok(bound) = socket.local_addr() {
                config.listeners[index] = bound;
            }
            entry.insert(Socket::Listener { id, socket });
        }
        config.metrics_addr = http.as_ref().and_then(|h| h.local_addr().ok());
        // TCP on the listen addresses not bound above: those with a port given.
        let udp_bound: Vec<SocketAddr> = config
            .listeners
            .iter()
            .zip(&port_given)
            .filter(|(_, given)| **given)
            .map(|(addr, _)| *addr)
            .collect();
        let portal = match options.portal {
            Some(settings) => Some(portal::PortalLink::new(
                settings,
                options.portal_tls,
                PORTAL_TOKEN,
                clock::now().instant,
                options.portal_seed,
            )?),
            None => None,
        };
        let mut core = Server::new(config, seed);
        if portal.is_some() {
            core.set_availability(crate::core::Availability::NotReady);
        }
        let mut driver = Driver {
            poll,
            sockets,
            listeners,
            tcp_listeners,
            streams: stream::Streams::new(options.streams),
            core,
            batch: batch::Batch::new(),
            backlog: Vec::new(),
            ready: Vec::new(),
            io: IoCounters::default(),
            signals,
            http,
            portal,
            start_time_unix: options.start_time_unix,
            control: options.control,
            log_client_addresses: options.log_client_addresses,
        };
        driver.bind_stream_listeners(&udp_bound)?;
        Ok(driver)
    }

    /// TCP on every UDP listen address (same port), then the TLS listen addresses not
    /// already bound. A default IPv6 TLS address that cannot be bound (no IPv6) is logged.
    fn bind_stream_listeners(&mut self, udp_bound: &[SocketAddr]) -> io::Result<()> {
        let mut bound = Vec::new();
        if self.streams.options().tcp {
            for addr in udp_bound {
                let local = self.add_tcp_listener(*addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot bind TCP {addr}: {e}"))
                })?;
                bound.push(local);
            }
        }
        if self.streams.options().tls.is_none() {
            return Ok(());
        }
        for addr in self.streams.options().tls_listen.clone() {
            if bound.contains(&addr) {
                continue;
            }
            match self.add_tcp_listener(addr) {
                Ok(local) => bound.push(local),
                Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
                    warn!("cannot bind TLS {addr}: {e}; serving TLS without it");
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot bind TLS {addr}: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The addresses the TCP (and TLS) listeners are bound to.
    pub fn tcp_listen_addresses(&self) -> Vec<SocketAddr> {
        self.tcp_listeners
            .iter()
            .filter_map(|key| match self.sockets.get(*key) {
                Some(Socket::TcpListener(listener)) => listener.local_addr().ok(),
                _ => None,
            })
            .collect()
    }

    /// What the stream side counted.
    pub fn stream_counters(&self) -> &StreamCounters {
        &self.streams.counters
    }

    /// The address the metrics listener is bound to, if any.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|h| h.local_addr().ok())
    }

    /// The addresses the listen sockets are bound to (with the ports the kernel chose for 0).
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|key| match self.sockets.get(*key) {
                Some(Socket::Listener { socket, .. }) => socket.local_addr().ok(),
                _ => None,
            })
            .collect()
    }

    /// Runs until SIGTERM or SIGINT, or a drain's end (control.rs); returns Ok then, and
    /// every socket closes on drop.
    pub fn run(&mut self) -> io::Result<()> {
        let result = self.serve();
        // What is still allocated ends with the relay (a drain's deadline, or SIGTERM
        // without one): each allocation gets its usage record.
        let now = clock::now();
        self.core.end_all(now, EndReason::Drained);
        self.drain_outputs(now);
        result
    }

    fn serve(&mut self) -> io::Result<()> {
        self.notify_ready();
        let mut events = Events::with_capacity(1024);
        let mut http_deadline = None;
        loop {
            let timeout = self.poll_timeout(http_deadline);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = clock::now();
            self.core.handle_timeout(now);
            self.drain_outputs(now);
            self.streams.new_turn();
            self.expire_connections(now);
            let mut portal_event = false;
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.append(&mut self.backlog);
            self.due_accepts(now.instant, &mut ready);
            for event in events.iter() {
                match event.token() {
                    SIGNAL_TOKEN => {
                        while let Some(signal) = self.signals.take() {
                            if self.on_signal(signal, now.instant) {
                                return Ok(());
                            }
                        }
                    }
                    HTTP_LISTENER_TOKEN => self.accept_http(now.instant),
                    PORTAL_TOKEN => portal_event = true,
                    token if token.0 >= HTTP_FIRST_TOKEN => self.serve_http(token, now.instant),
                    token => ready.push(token.0),
                }
            }
            ready.sort_unstable();
            ready.dedup();
            for &key in &ready {
                if self.read_socket(key, now) {
                    self.backlog.push(key);
                }
                // What this socket's batch queued for stream clients: one write each.
                self.flush_connections();
            }
            self.ready = ready;
            self.close_ended_connections(now);
            self.flush_connections();
            if self.drain_finished(clock::now().instant) {
                return Ok(());
            }
            if let Some(link) = self.portal.as_mut() {
                link.drive_if_due(
                    now.instant,
                    portal_event,
                    self.poll.registry(),
                    &mut self.core,
                );
            }
            http_deadline = self
                .http
                .as_mut()
                .and_then(|http| http.expire(now.instant, self.poll.registry()));
        }
    }

    fn poll_timeout(&self, http_deadline: Option<Instant>) -> Option<Duration> {
        if !self.backlog.is_empty() || self.portal.as_ref().is_some_and(|p| p.has_more()) {
            return Some(Duration::ZERO);
        }
        let deadline = [
            self.core.poll_timeout(),
            http_deadline,
            self.streams.next_deadline(),
            self.control.deadline(),
            self.portal.as_ref().map(|p| p.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(deadline.saturating_duration_since(clock::now().instant))
    }

    /// Reads one batch (the socket's budget for this turn) with one recvmmsg, hands each
    /// datagram to the core, and sends the relayed ones with one sendmmsg per socket.
    /// True if the socket may still have datagrams.
    fn read_socket(&mut self, key: usize, now: Now) -> bool {
        let (fd, source) = match self.sockets.get(key) {
            Some(Socket::Listener { id, socket }) => (socket.as_raw_fd(), Source::Client(*id)),
            Some(Socket::Relay {
                allocation,
                socket,
                owner,
            }) => {
                let kind = owner.and_then(|owner| self.connection_kind(owner));
                (socket.as_raw_fd(), Source::Peer(*allocation, kind))
            }
            Some(Socket::TcpListener(_)) => return self.accept(key, now),
            Some(Socket::Connection(_)) => return self.read_connection(key, now),
            None => return false,
        };
        let count = match self.batch.recv(fd) {
            Ok(count) => count,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => return true,
            Err(e) => {
                // ICMP errors from earlier sends surface here (ECONNREFUSED); not fatal, and
                // the error is consumed: there may be datagrams behind it.
                debug!("recv on socket {key}: {e}");
                self.io.recv_failed += 1;
                return true;
            }
        };
        for i in 0..count {
            let (from, len, slot) = self.batch.datagram(i);
            let Some(from) = from else {
                self.io.recv_no_source += 1;
                continue;
            };
            match source {
                Source::Client(listener) => {
                    self.io.udp_bytes_in += len as u64;
                    // The core's ranges index the buffer it was given: here the datagram,
                    // which sits HEADROOM bytes into the slot.
                    let datagram = &slot[HEADROOM..HEADROOM + len];
                    if let Some(forward) = self
                        .core
                        .handle_client_datagram(now, listener, from, datagram)
                    {
                        let range = in_slot(HEADROOM, forward.payload);
                        if !self.batch.queue(i, range, forward.relay.0, forward.peer) {
                            self.io.unsendable += 1;
                        }
                    }
                }
                Source::Peer(allocation, kind) => {
                    // Here the whole slot (the core writes the header into its headroom).
                    let delivered = stream::peer_datagram(
                        &mut self.core,
                        &mut self.streams.counters,
                        kind,
                        |core| core.handle_peer_datagram(now, allocation, from, slot, len),
                    );
                    if let Some(deliver) = delivered {
                        let range = in_slot(0, deliver.frame);
                        let queued = match deliver.transport {
                            Transport::Udp(listener) => {
                                match self.listeners.get(usize::from(listener.0)) {
                                    Some(&listener_key) => {
                                        self.io.udp_bytes_out += range.len() as u64;
                                        self.batch.queue(i, range, listener_key, deliver.client)
                                    }
                                    None => false,
                                }
                            }
                            Transport::Stream(connection) => stream::send_frame(
                                &mut self.sockets,
                                &mut self.streams,
                                connection.0,
                                &slot[range],
                            ),
                        };
                        if !queued {
                            self.io.unsendable += 1;
                        }
                    }
                }
            }
            self.drain_outputs(now);
        }
        self.flush_sends();
        count == batch::BATCH
    }

    /// Sends the queued relayed datagrams.
    fn flush_sends(&mut self) {
        if !self.batch.has_pending() {
            return;
        }
        let sockets = &self.sockets;
        let flushed = self.batch.flush(|key| match sockets.get(key) {
            Some(Socket::Listener { socket, .. } | Socket::Relay { socket, .. }) => {
                Some(socket.as_raw_fd())
            }
            _ => None,
        });
        self.io.send_failed += flushed.failed;
    }

    fn listener_socket(&self, id: ListenerId) -> Option<&UdpSocket> {
        let key = self.listeners.get(usize::from(id.0))?;
        match self.sockets.get(*key) {
            Some(Socket::Listener { socket, .. }) => Some(socket),
            _ => None,
        }
    }

    fn drain_outputs(&mut self, now: Now) {
        self.log_usage_records(None);
        let Some(first) = self.core.poll_output() else {
            return;
        };
        // Relayed datagrams queued so far go first: they came in before what caused these
        // outputs, and a CloseRelay/OpenRelay may reuse the slab key they are queued for.
        self.flush_sends();
        let mut next = Some(first);
        while let Some(output) = next.take().or_else(|| self.core.poll_output()) {
            match output {
                Output::ToClient {
                    transport: Transport::Udp(listener),
                    client,
                    bytes,
                } => {
                    let sent = self
                        .listener_socket(listener)
                        .map(|s| s.send_to(&bytes, client));
                    if matches!(sent, Some(Ok(_))) {
                        self.io.udp_bytes_out += bytes.len() as u64;
                    } else {
                        self.io.send_failed += 1;
                    }
                }
                Output::ToClient {
                    transport: Transport::Stream(connection),
                    bytes,
                    ..
                } => {
                    if !stream::send_frame(
                        &mut self.sockets,
                        &mut self.streams,
                        connection.0,
                        &bytes,
                    ) {
                        self.io.send_failed += 1;
                    }
                }
                Output::OpenRelay {
                    allocation,
                    family,
                    addr,
                    dont_fragment,
                } => {
                    let result = self.open_relay(allocation, addr, dont_fragment);
                    self.core
                        .handle_relay_opened(now, allocation, family, result);
                }
                Output::CloseRelay { relay } => self.close_relay(relay),
            }
        }
    }

    /// The core, for inspection.
    pub fn core(&self) -> &Server {
        &self.core
    }

    /// The driver's own I/O counters.
    pub fn io_counters(&self) -> &IoCounters {
        &self.io
    }
}

/// Logs the start-up line: where we listen, what we relay, the port range and realm.
pub fn log_startup(config: &Config, listening: &[SocketAddr]) {
    let relayed: Vec<String> = Family::ALL
        .iter()
        .filter_map(|f| config.relay_address(*f))
        .map(|r| format!("{} (bound on {})", r.public, r.bind))
        .collect();
    info!(
        "relay listening on {:?}, relaying from {} ports {}-{}, realm {:?}",
        listening,
        relayed.join(", "),
        config.ports.start(),
        config.ports.end(),
        config.realm
    );
}

/// A range the core returned, which indexes the buffer it was given, as a range of the
/// receive slot that buffer starts `offset` bytes into.
fn in_slot(offset: usize, range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    offset + range.start..offset + range.end
}
