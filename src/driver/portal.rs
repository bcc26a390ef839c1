//! Firezone mode's I/O: the WebSocket to the portal (tungstenite over a non-blocking mio
//! TcpStream, rustls for wss://), driven by the loop like any other socket. The decisions
//! are the sans-IO `portal::Portal`'s; this connects, moves bytes and reports back.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::cli::PortalSettings;
use crate::core::{Availability, Server};
use crate::portal::url::Endpoint;
use crate::portal::{Output, Portal};

/// The largest message taken from the portal (its messages are a few hundred bytes).
const MAX_MESSAGE: usize = 64 * 1024;
/// Messages read per loop turn; the rest wait for the next turn (the data path goes on).
const READ_BUDGET: usize = 16;
/// Where distributions keep their CA bundle (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE).
const SYSTEM_CA_FILES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

enum Connection {
    None,
    /// TCP connect in progress.
    Tcp(TcpStream),
    /// TLS and WebSocket handshakes in progress.
    Handshake(MidHandshake<ClientHandshake<Stream>>),
    Open(Box<WebSocket<Stream>>),
}

/// How often, at most, a failing portal's name is looked up again (getaddrinfo blocks the
/// loop; with a slow resolver each lookup can stall relaying for seconds).
const RESOLVE_INTERVAL: Duration = Duration::from_secs(300);

/// The portal connection of the loop.
pub(super) struct PortalLink {
    portal: Portal,
    endpoint: Endpoint,
    join_url: String,
    tls: Option<Arc<ClientConfig>>,
    connection: Connection,
    /// The portal's address, resolved on the first attempt and kept while connections to
    /// it open (DNS, which blocks the loop, is asked again only after a failed connect, and
    /// then at most every RESOLVE_INTERVAL: a portal outage must not mean a blocking lookup
    /// per retry).
    address: Option<SocketAddr>,
    /// When `address` was resolved.
    resolved_at: Option<Instant>,
    /// Whether the current connection got as far as an open WebSocket.
    opened: bool,
    token: Token,
    /// The read budget ran out: drive again next turn.
    more: bool,
}

impl PortalLink {
    /// `tls` verifies a wss:// portal (`client_config`, loaded by main.rs); fails without it.
    pub(super) fn new(
        settings: PortalSettings,
        tls: Option<Arc<ClientConfig>>,
        token: Token,
        now: Instant,
        seed: u64,
    ) -> io::Result<PortalLink> {
        let tls = match (settings.endpoint.tls, tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls),
            (true, None) => {
                return Err(io::Error::other(
                    "wss:// portal without a TLS configuration",
                ));
            }
        };
        Ok(PortalLink {
            portal: Portal::new(settings.stamp_secret, settings.timing, now, seed),
            endpoint: settings.endpoint,
            join_url: settings.join_url,
            tls,
            connection: Connection::None,
            address: None,
            resolved_at: None,
            opened: false,
            token,
            more: false,
        })
    }

    /// When the loop must drive the link even without an event.
    pub(super) fn poll_timeout(&self) -> Instant {
        self.portal.poll_timeout()
    }

    /// Whether reads were left for the next turn.
    pub(super) fn has_more(&self) -> bool {
        self.more
    }

    /// On an event, a due timer or reads left over: timers, connection progress, reads
    /// (bounded) and writes. The portal's first `init` opens the door to allocations
    /// (unless something else, a drain, has closed it meanwhile).
    pub(super) fn drive_if_due(
        &mut self,
        now: Instant,
        event: bool,
        registry: &Registry,
        core: &mut Server,
    ) {
        if (event || self.more || now >= self.portal.poll_timeout())
            && self.drive(now, registry)
            && core.availability() == Availability::NotReady
        {
            core.set_availability(Availability::Serving);
        }
    }

    /// True when the portal has just sent its first `init`.
    fn drive(&mut self, now: Instant, registry: &Registry) -> bool {
        let mut initialised = false;
        self.portal.handle_timeout(now);
        // Each round either makes progress or ends; a few rounds cover connect → join.
        for _ in 0..4 {
            self.advance(now);
            let mut acted = false;
            while let Some(output) = self.portal.poll_output() {
                acted = true;
                match output {
                    Output::Connect => self.connect(now, registry),
                    Output::Send(text) => self.send(now, text),
                    Output::Disconnect => self.connection = Connection::None,
                    Output::Initialised => initialised = true,
                }
            }
            if !acted {
                break;
            }
        }
        initialised
    }

    fn connect(&mut self, now: Instant, registry: &Registry) {
        // Resolving blocks the loop (getaddrinfo): only when there is no address that
        // worked, and the backoff spaces those attempts out.
        if self.address.is_none() {
            self.resolved_at = Some(now);
            self.address = (self.endpoint.host.as_str(), self.endpoint.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addresses| addresses.next());
        }
        self.opened = false;
        let Some(address) = self.address else {
            self.portal
                .handle_disconnected(now, &format!("cannot resolve {}", self.endpoint.host));
            return;
        };
        let result = TcpStream::connect(address).and_then(|mut stream| {
            registry.register(
                &mut stream,
                self.token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match result {
            Ok(stream) => self.connection = Connection::Tcp(stream),
            Err(e) => self.lost(now, &format!("cannot connect to {address}: {e}")),
        }
    }

    fn send(&mut self, now: Instant, text: String) {
        let Connection::Open(socket) = &mut self.connection else {
            return;
        };
        match socket.send(Message::text(text)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => self.lost(now, &format!("send failed: {e}")),
        }
    }

    /// Moves the connection on as far as the socket allows.
    fn advance(&mut self, now: Instant) {
        self.more = false;
        match std::mem::replace(&mut self.connection, Connection::None) {
            Connection::None => {}
            Connection::Tcp(stream) => match stream.take_error() {
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => self.handshake(now, stream),
                    Err(e) if e.kind() == ErrorKind::NotConnected => {
                        self.connection = Connection::Tcp(stream);
                    }
                    Err(e) => self.lost(now, &format!("connect failed: {e}")),
                },
                Ok(Some(e)) | Err(e) => self.lost(now, &format!("connect failed: {e}")),
            },
            Connection::Handshake(mid) => {
                self.handshaken(now, mid.handshake().map(|(socket, _)| socket));
            }
            Connection::Open(socket) => {
                self.connection = Connection::Open(socket);
                self.read(now);
            }
        }
    }

    fn handshake(&mut self, now: Instant, tcp: TcpStream) {
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = match ServerName::try_from(self.endpoint.host.clone()) {
                    Ok(name) => name,
                    Err(e) => return self.lost(now, &format!("bad TLS server name: {e}")),
                };
                match ClientConnection::new(config.clone(), name) {
                    Ok(tls) => Stream::Tls(Box::new(StreamOwned::new(tls, tcp))),
                    Err(e) => return self.lost(now, &format!("TLS: {e}")),
                }
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        // The seed's User-Agent: "relay/<version>" (the portal records it).
        let request = match self.join_url.as_str().into_client_request() {
            Ok(mut request) => {
                request.headers_mut().insert(
                    "User-Agent",
                    HeaderValue::from_static(concat!("relay/", env!("CARGO_PKG_VERSION"))),
                );
                request
            }
            Err(e) => return self.lost(now, &format!("bad portal URL: {e}")),
        };
        let result = tungstenite::client::client_with_config(request, stream, Some(config));
        self.handshaken(now, result.map(|(socket, _)| socket));
    }

    fn handshaken(
        &mut self,
        now: Instant,
        result: Result<WebSocket<Stream>, HandshakeError<ClientHandshake<Stream>>>,
    ) {
        match result {
            Ok(socket) => {
                debug!("portal: WebSocket open");
                self.opened = true;
                self.connection = Connection::Open(Box::new(socket));
                self.portal.handle_connected(now);
                self.read(now);
            }
            Err(HandshakeError::Interrupted(mid)) => self.connection = Connection::Handshake(mid),
            // The error names the status and the reason, never the URL (it holds the token).
            Err(HandshakeError::Failure(e)) => self.lost(now, &format!("handshake failed: {e}")),
        }
    }

    /// Reads up to READ_BUDGET messages and flushes what waits to be written.
    fn read(&mut self, now: Instant) {
        for _ in 0..READ_BUDGET {
            let Connection::Open(socket) = &mut self.connection else {
                return; // the portal dropped it (a close, a refused join)
            };
            match socket.read() {
                Ok(Message::Text(text)) => self.portal.handle_message(now, text.as_str()),
                // Pings are answered by tungstenite (queued, flushed below).
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    return self.flush(now);
                }
                Err(e) => return self.lost(now, &format!("connection lost: {e}")),
            }
        }
        self.more = true;
        self.flush(now);
    }

    fn flush(&mut self, now: Instant) {
        let Connection::Open(socket) = &mut self.connection else {
            return;
        };
        match socket.flush() {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => self.lost(now, &format!("connection lost: {e}")),
        }
    }

    /// The connection failed: drop it and let the portal back off.
    fn lost(&mut self, now: Instant, why: &str) {
        self.connection = Connection::None;
        let resolved_long_ago = self
            .resolved_at
            .is_none_or(|at| now.saturating_duration_since(at) >= RESOLVE_INTERVAL);
        if !self.opened && resolved_long_ago {
            self.address = None; // resolve again: the portal may have moved
        }
        self.portal.handle_disconnected(now, why);
    }
}

/// rustls client configuration trusting `ca_file`'s certificates, or the system's: what
/// verifies a wss:// portal. The error is a start-up error for the operator.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let files: Vec<&Path> = match ca_file {
        Some(path) => vec![path],
        None => SYSTEM_CA_FILES
            .iter()
            .map(Path::new)
            .filter(|p| p.exists())
            .collect(),
    };
    let mut roots = RootCertStore::empty();
    for path in &files {
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--portal-ca-file {}: {e}", path.display()))?;
        for certificate in certificates.flatten() {
            if let Err(e) = roots.add(certificate) {
                warn!(
                    "portal CA file {}: skipped a certificate: {e}",
                    path.display()
                );
            }
        }
        if !roots.is_empty() {
            break;
        }
    }
    if roots.is_empty() {
        return Err(
            "wss:// portal: no CA certificates to verify it (install ca-certificates or set --portal-ca-file)"
                .into(),
        );
    }
    let config = ClientConfig::builder_with_provider(super::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
