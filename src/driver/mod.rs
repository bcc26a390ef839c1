//! The single mio loop: owns every socket, feeds the core, executes its outputs and sleeps
//! until its next deadline. It makes no protocol decision (DESIGN.md).

pub mod clock;
mod http;
pub mod interfaces;
pub mod limits;
mod metrics;
mod signals;
mod sockets;

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::core::{
    AllocationId, Config, Deliver, Family, Forward, HEADROOM, ListenerId, Now, OpenError, Output,
    RelayId, Server, TAILROOM,
};

/// Datagrams read from one socket per loop turn, so that one flooded socket cannot starve
/// the others; a socket still readable after its budget is revisited next turn.
const BUDGET_PER_SOCKET: usize = 64;
/// Large enough for any UDP datagram plus the headroom/tailroom the core writes into.
const BUFFER_LEN: usize = HEADROOM + 65536 + TAILROOM;

enum Socket {
    Listener {
        id: ListenerId,
        socket: UdpSocket,
    },
    Relay {
        allocation: AllocationId,
        socket: UdpSocket,
    },
}

/// Tokens outside the slab's range: the signalfd, the metrics listener, and the metrics
/// connections from HTTP_FIRST_TOKEN on.
const SIGNAL_TOKEN: Token = Token(usize::MAX);
const HTTP_LISTENER_TOKEN: Token = Token(usize::MAX - 1);
const HTTP_FIRST_TOKEN: usize = 1 << 40;

/// What the loop serves besides STUN/TURN.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub metrics_addr: Option<SocketAddr>,
    /// For process_start_time_seconds.
    pub start_time_unix: u64,
}

/// I/O failures of the driver, counted, never fatal.
#[derive(Debug, Default, Clone)]
pub struct IoCounters {
    pub send_failed: u64,
    pub recv_failed: u64,
}

pub struct Driver {
    poll: Poll,
    sockets: Slab<Socket>,
    /// Slab key of each listener, indexed by `ListenerId`.
    listeners: Vec<usize>,
    core: Server,
    buf: Box<[u8]>,
    /// Sockets whose budget ran out while still readable.
    backlog: Vec<usize>,
    io: IoCounters,
    signals: signals::ShutdownSignals,
    http: Option<http::HttpServer>,
    start_time_unix: u64,
}

impl Driver {
    /// Binds every listen socket of `config`; fails (for a clear start-up error) if any bind fails.
    pub fn new(config: Config, seed: [u8; 32], options: Options) -> io::Result<Driver> {
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
        for (index, addr) in config.listeners.iter().enumerate() {
            let mut socket = sockets::bind_udp(*addr, false)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
            let entry = sockets.vacant_entry();
            poll.registry()
                .register(&mut socket, Token(entry.key()), Interest::READABLE)?;
            listeners.push(entry.key());
            let id = ListenerId(
                u16::try_from(index).map_err(|_| io::Error::other("too many listeners"))?,
            );
            entry.insert(Socket::Listener { id, socket });
        }
        Ok(Driver {
            poll,
            sockets,
            listeners,
            core: Server::new(config, seed),
            buf: vec![0u8; BUFFER_LEN].into_boxed_slice(),
            backlog: Vec::new(),
            io: IoCounters::default(),
            signals,
            http,
            start_time_unix: options.start_time_unix,
        })
    }

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

    /// Runs until SIGTERM or SIGINT; returns Ok then, and every socket closes on drop.
    pub fn run(&mut self) -> io::Result<()> {
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
            let mut ready = std::mem::take(&mut self.backlog);
            for event in events.iter() {
                match event.token() {
                    SIGNAL_TOKEN => {
                        if let Some(signal) = self.signals.take() {
                            info!(
                                "signal {signal}: shutting down, closing {} allocations",
                                self.core.allocation_count()
                            );
                            return Ok(());
                        }
                    }
                    HTTP_LISTENER_TOKEN => self.accept_http(now.instant),
                    token if token.0 >= HTTP_FIRST_TOKEN => self.serve_http(token, now.instant),
                    token => ready.push(token.0),
                }
            }
            ready.sort_unstable();
            ready.dedup();
            for key in ready {
                if self.read_socket(key, now) {
                    self.backlog.push(key);
                }
            }
            http_deadline = self
                .http
                .as_mut()
                .and_then(|http| http.expire(now.instant, self.poll.registry()));
        }
    }

    fn poll_timeout(&self, http_deadline: Option<Instant>) -> Option<Duration> {
        if !self.backlog.is_empty() {
            return Some(Duration::ZERO);
        }
        let deadline = match (self.core.poll_timeout(), http_deadline) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(deadline.saturating_duration_since(clock::now().instant))
    }

    fn accept_http(&mut self, now: Instant) {
        if let Some(http) = self.http.as_mut() {
            http.accept(self.poll.registry(), now);
        }
    }

    /// Answers a scrape or a health check. Rendering is O(allocations), per request only.
    fn serve_http(&mut self, token: Token, now: Instant) {
        let (core, io, start_time_unix) = (&self.core, &self.io, self.start_time_unix);
        let Some(http) = self.http.as_mut() else {
            return;
        };
        http.handle(token, self.poll.registry(), |route| match route {
            Some(http::Route::Metrics) => {
                let gauges = core.gauges(now);
                let snapshot = metrics::Snapshot {
                    counters: core.counters(),
                    gauges: &gauges,
                    io,
                    start_time_unix,
                };
                (200, "text/plain; version=0.0.4", metrics::render(&snapshot))
            }
            Some(http::Route::Health) => {
                // Listeners are bound (or we would not be running); can we allocate?
                if Family::ALL.iter().any(|f| core.can_allocate(*f)) {
                    (200, "text/plain", "ok\n".into())
                } else {
                    (503, "text/plain", "no relay capacity\n".into())
                }
            }
            None => (404, "text/plain", "not found\n".into()),
        });
    }

    /// Reads up to the budget from one socket. True if it may still have datagrams.
    fn read_socket(&mut self, key: usize, now: Now) -> bool {
        for _ in 0..BUDGET_PER_SOCKET {
            let received = match self.sockets.get(key) {
                Some(Socket::Listener { id, socket }) => {
                    let id = *id;
                    match socket.recv_from(&mut self.buf[..BUFFER_LEN - HEADROOM]) {
                        Ok((len, from)) => {
                            let forward =
                                self.core
                                    .handle_client_datagram(now, id, from, &self.buf[..len]);
                            if let Some(forward) = forward {
                                self.send_forward(forward);
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(Socket::Relay { allocation, socket }) => {
                    let allocation = *allocation;
                    match socket.recv_from(&mut self.buf[HEADROOM..BUFFER_LEN - TAILROOM]) {
                        Ok((len, from)) => {
                            let deliver = self.core.handle_peer_datagram(
                                now,
                                allocation,
                                from,
                                &mut self.buf,
                                len,
                            );
                            if let Some(deliver) = deliver {
                                self.send_deliver(deliver);
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                None => return false,
            };
            match received {
                Ok(()) => self.drain_outputs(now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors from earlier sends surface here (ECONNREFUSED); not fatal.
                    debug!("recv on socket {key}: {e}");
                    self.io.recv_failed += 1;
                }
            }
        }
        true
    }

    fn send_forward(&mut self, forward: Forward) {
        let Some(Socket::Relay { socket, .. }) = self.sockets.get(forward.relay.0) else {
            return;
        };
        if socket
            .send_to(&self.buf[forward.payload], forward.peer)
            .is_err()
        {
            self.io.send_failed += 1;
        }
    }

    fn send_deliver(&mut self, deliver: Deliver) {
        let Some(socket) = self.listener_socket(deliver.listener) else {
            return;
        };
        if socket
            .send_to(&self.buf[deliver.frame], deliver.client)
            .is_err()
        {
            self.io.send_failed += 1;
        }
    }

    fn listener_socket(&self, id: ListenerId) -> Option<&UdpSocket> {
        let key = self.listeners.get(usize::from(id.0))?;
        match self.sockets.get(*key) {
            Some(Socket::Listener { socket, .. }) => Some(socket),
            _ => None,
        }
    }

    fn drain_outputs(&mut self, now: Now) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::ToClient {
                    listener,
                    client,
                    bytes,
                } => {
                    let sent = self
                        .listener_socket(listener)
                        .map(|s| s.send_to(&bytes, client));
                    if !matches!(sent, Some(Ok(_))) {
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

    fn open_relay(
        &mut self,
        allocation: AllocationId,
        addr: SocketAddr,
        dont_fragment: bool,
    ) -> Result<RelayId, OpenError> {
        let bound = sockets::bind_udp(addr, dont_fragment).and_then(|mut socket| {
            let entry = self.sockets.vacant_entry();
            self.poll
                .registry()
                .register(&mut socket, Token(entry.key()), Interest::READABLE)?;
            let key = entry.key();
            entry.insert(Socket::Relay { allocation, socket });
            Ok(key)
        });
        match bound {
            Ok(key) => Ok(RelayId(key)),
            Err(e) if e.kind() == ErrorKind::AddrInUse => Err(OpenError::AddressInUse),
            Err(e) => {
                warn!("cannot open relay socket {addr}: {e}");
                Err(OpenError::Other)
            }
        }
    }

    fn close_relay(&mut self, relay: RelayId) {
        if !matches!(self.sockets.get(relay.0), Some(Socket::Relay { .. })) {
            return;
        }
        if let Some(Socket::Relay { mut socket, .. }) = self.sockets.try_remove(relay.0) {
            let _ = self.poll.registry().deregister(&mut socket);
        }
    }

    pub fn core(&self) -> &Server {
        &self.core
    }

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
