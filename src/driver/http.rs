//! Just enough HTTP/1.x for `GET /metrics`, `GET /healthz` and `GET /livez` on the relay's
//! own loop: bounded request size, bounded connections, one response per connection (then
//! close).
//!
//! Nobody can keep a probe out: the request head must arrive within HEAD_DEADLINE, and when
//! every slot is taken a new connection evicts one that is there already, chosen from the
//! source address holding the most slots (oldest first). A kubelet or Prometheus that opens
//! one connection at a time is thus the last to be evicted, however many idle or trickling
//! connections others hold open.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

/// Largest request head we read; anything bigger is answered 431 and closed.
const MAX_REQUEST: usize = 4096;
/// A connection must have sent its whole request head by then (a scraper sends it at once).
pub(super) const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// A connection must have taken its response by then, counted from its accept.
pub(super) const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Concurrent connections; beyond it a new one evicts an old one (see the module docs).
pub(super) const MAX_CONNECTIONS: usize = 16;

pub(super) struct Connection {
    pub stream: TcpStream,
    source: IpAddr,
    accepted_at: Instant,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Metrics,
    /// Can the relay take allocations (readiness).
    Health,
    /// Does the loop answer (liveness): 200 whenever it can be asked.
    Live,
}

pub(super) enum Progress {
    /// Keep the connection; wait for more readiness.
    Pending,
    /// Done (or broken): close it.
    Close,
}

impl Connection {
    pub(super) fn new(stream: TcpStream, source: IpAddr, now: Instant) -> Connection {
        Connection {
            stream,
            source,
            accepted_at: now,
            request: Vec::new(),
            response: Vec::new(),
            written: 0,
        }
    }

    /// When the connection is closed if it is still open: the head deadline until the
    /// request head is in, then the whole connection's.
    pub(super) fn deadline(&self) -> Instant {
        if self.response.is_empty() {
            self.accepted_at + HEAD_DEADLINE
        } else {
            self.accepted_at + CONNECTION_DEADLINE
        }
    }

    /// Reads what is available and, once the request head is complete, asks `respond` for the
    /// response to the route, then writes as much as the socket takes.
    pub(super) fn advance(
        &mut self,
        respond: impl FnOnce(Option<Route>) -> (u16, &'static str, String),
    ) -> Progress {
        if self.response.is_empty() {
            match self.read_request() {
                Ok(Some(head)) => {
                    let (status, content_type, body) = match parse(&head) {
                        Parsed::Request(route) => respond(route),
                        Parsed::Bad => (400, "text/plain", "bad request\n".into()),
                        Parsed::WrongMethod => (405, "text/plain", "only GET\n".into()),
                    };
                    self.response = format_response(status, content_type, &body);
                }
                Ok(None) => return Progress::Pending,
                Err(TooLarge) => {
                    self.response = format_response(431, "text/plain", "request too large\n")
                }
            }
        }
        self.write_response()
    }

    fn read_request(&mut self) -> Result<Option<Vec<u8>>, TooLarge> {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Some(std::mem::take(&mut self.request))),
                Ok(n) => {
                    self.request.extend_from_slice(&chunk[..n]);
                    if self.request.len() > MAX_REQUEST {
                        return Err(TooLarge);
                    }
                    if let Some(end) = find(&self.request, b"\r\n\r\n") {
                        self.request.truncate(end);
                        return Ok(Some(std::mem::take(&mut self.request)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(Some(Vec::new())),
            }
        }
    }

    fn write_response(&mut self) -> Progress {
        while self.written < self.response.len() {
            match self.stream.write(&self.response[self.written..]) {
                Ok(0) => return Progress::Close,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Close,
            }
        }
        Progress::Close
    }
}

struct TooLarge;

/// The metrics listener and its connections. Tokens of connections are `first_token + key`.
pub(super) struct HttpServer {
    listener: TcpListener,
    connections: Slab<Connection>,
    first_token: usize,
    /// Connections closed to make room for a newer one.
    evicted: u64,
}

impl HttpServer {
    pub(super) fn bind(
        addr: SocketAddr,
        registry: &Registry,
        listener_token: Token,
        first_token: usize,
    ) -> io::Result<Self> {
        let mut listener = TcpListener::bind(addr)?;
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(HttpServer {
            listener,
            connections: Slab::with_capacity(MAX_CONNECTIONS),
            first_token,
            evicted: 0,
        })
    }

    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts every pending connection; with every slot taken, each new one evicts one.
    pub(super) fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.connections.len() >= MAX_CONNECTIONS
                        && let Some(victim) = self.eviction_victim()
                    {
                        self.close(victim, registry);
                        self.evicted += 1;
                    }
                    let entry = self.connections.vacant_entry();
                    let token = Token(self.first_token + entry.key());
                    if registry
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        entry.insert(Connection::new(stream, peer.ip(), now));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock, or out of descriptors: try again next event
            }
        }
    }

    pub(super) fn handle(
        &mut self,
        token: Token,
        registry: &Registry,
        respond: impl FnOnce(Option<Route>) -> (u16, &'static str, String),
    ) {
        let key = token.0 - self.first_token;
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        if let Progress::Close = connection.advance(respond) {
            self.close(key, registry);
        }
    }

    /// The connection a new one replaces: of the source address with the most connections,
    /// one still waiting for its request head before one being answered, the oldest. O(MAX_CONNECTIONS²) per accept into a full table, MAX_CONNECTIONS is small.
    fn eviction_victim(&self) -> Option<usize> {
        let from_source = |ip: IpAddr| {
            self.connections
                .iter()
                .filter(|(_, c)| c.source == ip)
                .count()
        };
        self.connections
            .iter()
            .map(|(key, c)| {
                let waiting_for_head = c.response.is_empty();
                let age = std::cmp::Reverse(c.accepted_at);
                (from_source(c.source), waiting_for_head, age, key)
            })
            .max()
            .map(|(_, _, _, key)| key)
    }

    /// Closes connections past their deadline; returns the next deadline.
    pub(super) fn expire(&mut self, now: Instant, registry: &Registry) -> Option<Instant> {
        self.connections.retain(|_, connection| {
            let keep = now < connection.deadline();
            if !keep {
                let _ = registry.deregister(&mut connection.stream);
            }
            keep
        });
        self.connections.iter().map(|(_, c)| c.deadline()).min()
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        if let Some(mut connection) = self.connections.try_remove(key) {
            let _ = registry.deregister(&mut connection.stream);
        }
    }
}

enum Parsed {
    Request(Option<Route>),
    Bad,
    WrongMethod,
}

fn parse(head: &[u8]) -> Parsed {
    let Ok(head) = std::str::from_utf8(head) else {
        return Parsed::Bad;
    };
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Parsed::Bad;
    }
    if method != "GET" {
        return Parsed::WrongMethod;
    }
    let path = target.split('?').next().unwrap_or(target);
    Parsed::Request(match path {
        "/metrics" => Some(Route::Metrics),
        "/healthz" => Some(Route::Health),
        "/livez" => Some(Route::Live),
        _ => None,
    })
}

fn format_response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_and_rejects_the_rest() {
        assert!(matches!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Parsed::Request(Some(Route::Metrics))
        ));
        assert!(matches!(
            parse(b"GET /healthz?x=1 HTTP/1.0"),
            Parsed::Request(Some(Route::Health))
        ));
        assert!(matches!(
            parse(b"GET /livez HTTP/1.1"),
            Parsed::Request(Some(Route::Live))
        ));
        assert!(matches!(
            parse(b"GET /nope HTTP/1.1"),
            Parsed::Request(None)
        ));
        assert!(matches!(
            parse(b"POST /metrics HTTP/1.1"),
            Parsed::WrongMethod
        ));
        assert!(matches!(parse(b"GET /metrics"), Parsed::Bad));
        assert!(matches!(parse(b"\xff\xfe"), Parsed::Bad));
        assert!(matches!(parse(b""), Parsed::Bad));
    }

    #[test]
    fn response_has_length_and_closes() {
        let text = String::from_utf8(format_response(200, "text/plain", "ok\n")).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nok\n"));
    }
}
