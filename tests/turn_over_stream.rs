//! The real binary over TCP and TLS on loopback (RFC 8656 §3.1, §12.5): a small client of
//! our own over `std::net::TcpStream` and over rustls, relaying to a UDP peer. The relayed
//! side stays UDP. Frames are built by the tests' own encoder and read back byte for byte
//! (ChannelData padding included).

mod common;
#[path = "support/stun_encoder.rs"]
mod stun_encoder;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{RelayProcess, SECRET, WAIT, credentials, metric, scrape};
use stun_encoder::{self as enc, Class, Encoder, kind, long_term_key};

const ALLOCATE: u16 = 0x003;
const CHANNEL_BIND: u16 = 0x009;
const BINDING: u16 = 0x001;
const CHANNEL: u16 = 0x4001;

trait Io: Read + Write {}
impl<T: Read + Write> Io for T {}

/// A TURN client over one stream (TCP or TLS).
struct StreamClient {
    io: Box<dyn Io>,
    /// Bytes read past the last frame.
    buf: Vec<u8>,
    username: String,
    password: String,
    nonce: Option<String>,
    next: u32,
}

/// A decoded response: its type and attributes.
struct Answer {
    message_type: u16,
    attributes: Vec<(u16, Vec<u8>)>,
    bytes: Vec<u8>,
}

impl Answer {
    fn class(&self) -> Class {
        Class::of(self.message_type)
    }

    fn attr(&self, k: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, v)| v.as_slice())
    }

    fn error_code(&self) -> Option<u16> {
        self.attr(kind::ERROR_CODE)
            .map(|v| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
    }
}

fn tcp_to(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

impl StreamClient {
    fn tcp(addr: SocketAddr) -> StreamClient {
        StreamClient::over(Box::new(tcp_to(addr)))
    }

    fn tls(addr: SocketAddr, pki: &Pki) -> StreamClient {
        StreamClient::over(Box::new(tls_to(addr, pki)))
    }

    fn over(io: Box<dyn Io>) -> StreamClient {
        let (username, password) = credentials("stream");
        StreamClient {
            io,
            buf: Vec::new(),
            username,
            password,
            nonce: None,
            next: 0,
        }
    }

    fn encode(&mut self, method: u16, attributes: &[(u16, Vec<u8>)]) -> Vec<u8> {
        self.next += 1;
        let mut tid = [0x3C; 12];
        tid[8..].copy_from_slice(&self.next.to_be_bytes());
        let mut request = Encoder::new(Class::Request, method, tid);
        for (k, v) in attributes {
            request.tlv(*k, v);
        }
        if let Some(nonce) = &self.nonce {
            request.tlv(kind::USERNAME, self.username.as_bytes());
            request.tlv(kind::REALM, common::REALM.as_bytes());
            request.tlv(kind::NONCE, nonce.as_bytes());
            request.integrity(&long_term_key(
                &self.username,
                common::REALM,
                &self.password,
            ));
        }
        request.fingerprint();
        request.bytes()
    }

    /// Sends a request and reads frames until its answer.
    fn request(&mut self, method: u16, attributes: &[(u16, Vec<u8>)]) -> Answer {
        let bytes = self.encode(method, attributes);
        self.io.write_all(&bytes).expect("write");
        loop {
            let frame = self.read_frame();
            if frame[0] < 0x40 && frame[8..20] == bytes[8..20] {
                let attributes = enc::tlvs(&frame).expect("TLVs");
                return Answer {
                    message_type: u16::from_be_bytes([frame[0], frame[1]]),
                    attributes,
                    bytes: frame,
                };
            }
        }
    }

    /// 401 for the nonce, then the signed request.
    fn authenticated(&mut self, method: u16, attributes: &[(u16, Vec<u8>)]) -> Answer {
        if self.nonce.is_none() {
            let first = self.request(method, attributes);
            assert_eq!(first.error_code(), Some(401));
            let nonce = first.attr(kind::NONCE).expect("NONCE");
            self.nonce = Some(String::from_utf8(nonce.to_vec()).expect("nonce"));
        }
        let answer = self.request(method, attributes);
        let key = long_term_key(&self.username, common::REALM, &self.password);
        assert!(enc::integrity_valid(&answer.bytes, &key), "signed answer");
        answer
    }

    /// Allocate; returns the relayed address.
    fn allocate(&mut self) -> SocketAddr {
        let answer =
            self.authenticated(ALLOCATE, &[(kind::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])]);
        assert_eq!(answer.class(), Class::Success, "{:?}", answer.error_code());
        let tid: [u8; 12] = answer.bytes[8..20].try_into().expect("tid");
        enc::xor_address_decode(
            answer.attr(kind::XOR_RELAYED_ADDRESS).expect("relayed"),
            &tid,
        )
        .expect("relayed address")
    }

    fn channel_bind(&mut self, peer: SocketAddr) {
        // An IPv4 XOR-PEER-ADDRESS is XORed with the magic cookie only (RFC 8489 §14.2):
        // the transaction id does not enter it.
        let tid = [0; 12];
        let answer = self.authenticated(
            CHANNEL_BIND,
            &[
                (
                    kind::CHANNEL_NUMBER,
                    vec![(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0],
                ),
                (kind::XOR_PEER_ADDRESS, enc::xor_address(peer, &tid)),
            ],
        );
        assert_eq!(answer.class(), Class::Success, "{:?}", answer.error_code());
    }

    /// Reads one whole frame, padding included (checked to be zero).
    fn read_frame(&mut self) -> Vec<u8> {
        loop {
            if self.buf.len() >= 4 {
                let len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                let (message, padded) = if self.buf[0] >= 0x40 {
                    (4 + len, (4 + len).next_multiple_of(4))
                } else {
                    (20 + len, 20 + len)
                };
                if self.buf.len() >= padded {
                    let frame: Vec<u8> = self.buf.drain(..padded).collect();
                    assert!(frame[message..].iter().all(|b| *b == 0), "zero padding");
                    return frame;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).expect("read a frame");
            assert!(n > 0, "connection closed while reading a frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True if the relay closed the connection (read returns 0 or a reset) within WAIT.
    fn is_closed_by_relay(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.io.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return true,
                Err(_) => return false,
            }
        }
    }
}

fn channel_data(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![(CHANNEL >> 8) as u8, CHANNEL as u8];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().next_multiple_of(4), 0);
    frame
}

// --- test PKI -----------------------------------------------------------------------------

struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_der = params.self_signed(&key).expect("CA").der().clone();
        let dir = std::env::temp_dir().join(format!(
            "relay-stream-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        Pki {
            issuer: rcgen::Issuer::new(params, key),
            ca_der,
            dir,
        }
    }

    /// Writes a fresh certificate for relay.test to cert.pem/key.pem; returns its DER.
    fn write_server(&self) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["relay.test".into()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("cert");
        std::fs::write(self.cert(), cert.pem()).expect("cert.pem");
        std::fs::write(self.key(), key.serialize_pem()).expect("key.pem");
        cert.der().to_vec()
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    // ring, as the relay uses (its post-quantum group needs aws-lc-rs; see driver/tls.rs).
    #[allow(deprecated)]
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_to(addr: SocketAddr, pki: &Pki) -> TlsStream {
    let name = rustls_pki_types::ServerName::try_from("relay.test").expect("name");
    let conn = rustls::ClientConnection::new(pki.client_config(), name).expect("client");
    let mut stream = rustls::StreamOwned::new(conn, tcp_to(addr));
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    stream
}

/// The server certificate a new TLS connection is shown.
fn served_certificate(addr: SocketAddr, pki: &Pki) -> Vec<u8> {
    let stream = tls_to(addr, pki);
    stream.conn.peer_certificates().expect("certificates")[0].to_vec()
}

// --- relay -------------------------------------------------------------------------------

fn start(extra: &[&str]) -> RelayProcess {
    let (lowest, highest) = common::free_port_range(20);
    let (lowest, highest) = (lowest.to_string(), highest.to_string());
    let mut args = vec![
        "--auth-secret",
        SECRET,
        "--allow-loopback-peers",
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    RelayProcess::start(&args)
}

fn start_tls(pki: &Pki, extra: &[&str]) -> RelayProcess {
    let (cert, key) = (pki.cert(), pki.key());
    let mut args = vec![
        "--tls-cert-file",
        cert.to_str().expect("path"),
        "--tls-key-file",
        key.to_str().expect("path"),
        "--tls-listen-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    start(&args)
}

fn peer() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("peer");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    socket
}

/// Waits (bounded) until `series` reads `value` in the relay's metrics.
fn wait_metric(relay: &mut RelayProcess, series: &str, value: u64) {
    let addr = relay.metrics_addr();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = metric(&scrape(addr), series);
        if got == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {got}, expected {value}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Allocate, permission by ChannelBind, ChannelData both ways with its padding, a frame
/// written a byte at a time; then closing the connection deletes the allocation.
fn relays_both_ways(relay: &mut RelayProcess, mut client: StreamClient, transport: &str) {
    let relayed = client.allocate();
    let peer = peer();
    let peer_addr = peer.local_addr().expect("peer addr");
    client.channel_bind(peer_addr);
    let series = format!("relay_transport_allocations{{transport=\"{transport}\"}}");
    wait_metric(relay, &series, 1);

    // Client -> peer: 5 bytes padded to 8 on the stream, 5 on the wire to the peer.
    client.io.write_all(&channel_data(b"hello")).expect("write");
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
    assert_eq!((&buf[..n], from), (&b"hello"[..], relayed));

    // Peer -> client: ChannelData, padded to a multiple of 4, byte for byte.
    for payload in [&b"abc"[..], b"four", b"seven!!", b""] {
        peer.send_to(payload, relayed).expect("peer sends");
        let frame = client.read_frame();
        assert_eq!(frame, channel_data(payload), "frame for {payload:?}");
    }

    // A frame written one byte at a time waits for its last byte.
    for byte in channel_data(b"slowly") {
        client.io.write_all(&[byte]).expect("write a byte");
        client.io.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(2));
    }
    let (n, _) = peer
        .recv_from(&mut buf)
        .expect("peer receives the slow frame");
    assert_eq!(&buf[..n], b"slowly");

    // A Binding on the same connection is answered too.
    let answer = client.request(BINDING, &[]);
    assert_eq!(answer.class(), Class::Success);

    drop(client);
    wait_metric(relay, &series, 0);
    // Its usage record names the transport the driver knew the connection by, and counts
    // payload bytes without the stream padding: "hello" + "slowly" one way, 3 + 4 + 7 + 0
    // the other.
    let record = relay.wait_for_log(&format!("transport={transport} "));
    for expected in [
        "relay::usage",
        "reason=connection_closed",
        "client_to_peer_packets=2 ",
        "client_to_peer_bytes=11 ",
        "peer_to_client_packets=4 ",
        "peer_to_client_bytes=14 ",
    ] {
        assert!(record.contains(expected), "{expected} in {record}");
    }
}

#[test]
fn turn_over_tcp_relays_both_ways_and_dies_with_its_connection() {
    let mut relay = start(&[]);
    let client = StreamClient::tcp(relay.addr);
    relays_both_ways(&mut relay, client, "tcp");
    wait_metric(&mut relay, "relay_connections{transport=\"tcp\"}", 0);
}

#[test]
fn turn_over_tls_relays_both_ways_on_the_same_port_as_tcp() {
    let pki = Pki::new();
    pki.write_server();
    let mut relay = start_tls(&pki, &[]);
    // TLS and plain TCP on the one port, told apart by the first byte.
    let client = StreamClient::tls(relay.addr, &pki);
    relays_both_ways(&mut relay, client, "tls");
    let client = StreamClient::tcp(relay.addr);
    relays_both_ways(&mut relay, client, "tcp");
    let metrics = scrape(relay.metrics_addr());
    assert_eq!(
        metric(&metrics, "relay_tls_handshakes_total{result=\"ok\"}"),
        1
    );
}

#[test]
fn bytes_that_cannot_start_a_frame_close_the_connection() {
    let mut relay = start(&[]);
    let mut client = StreamClient::tcp(relay.addr);
    client.allocate();
    // 0x80: neither STUN (top bits 00) nor ChannelData (0x40-0x4F).
    client
        .io
        .write_all(&[0x80, 0, 0, 4, 1, 2, 3, 4])
        .expect("write");
    assert!(client.is_closed_by_relay(), "closed after garbage");
    wait_metric(
        &mut relay,
        "relay_connections_closed_total{transport=\"tcp\",reason=\"invalid_frame\"}",
        1,
    );
    wait_metric(
        &mut relay,
        "relay_transport_allocations{transport=\"tcp\"}",
        0,
    );
}

#[test]
fn connections_per_address_are_limited() {
    let mut relay = start(&["--max-connections-per-ip", "3"]);
    let mut held: Vec<StreamClient> = (0..3).map(|_| StreamClient::tcp(relay.addr)).collect();
    for client in &mut held {
        assert_eq!(client.request(BINDING, &[]).class(), Class::Success);
    }
    let mut refused = StreamClient::tcp(relay.addr);
    assert!(refused.is_closed_by_relay(), "the fourth is closed");
    wait_metric(
        &mut relay,
        "relay_connections_refused_total{reason=\"per_ip\"}",
        1,
    );
    // One closes: a new one fits again.
    held.pop();
    wait_metric(&mut relay, "relay_connections{transport=\"tcp\"}", 2);
    let mut again = StreamClient::tcp(relay.addr);
    assert_eq!(again.request(BINDING, &[]).class(), Class::Success);
}

#[test]
fn a_connection_without_an_allocation_is_closed_at_the_deadline() {
    let mut relay = start(&["--allocate-deadline", "1"]);
    let started = Instant::now();
    let mut idle = StreamClient::tcp(relay.addr);
    let mut allocated = StreamClient::tcp(relay.addr);
    allocated.allocate();
    assert!(idle.is_closed_by_relay());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    wait_metric(
        &mut relay,
        "relay_connections_closed_total{transport=\"tcp\",reason=\"no_allocation\"}",
        1,
    );
    // The one with an allocation stays past several deadlines.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(allocated.request(BINDING, &[]).class(), Class::Success);
}

#[test]
fn a_tls_handshake_not_done_by_its_deadline_is_abandoned() {
    let pki = Pki::new();
    pki.write_server();
    let mut relay = start_tls(&pki, &["--test-handshake-deadline", "1"]);
    // The start of a TLS record (a ClientHello that never completes).
    let mut stalled = StreamClient::tcp(relay.addr);
    stalled
        .io
        .write_all(&[0x16, 0x03, 0x01, 0x00])
        .expect("write");
    let started = Instant::now();
    assert!(stalled.is_closed_by_relay());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    wait_metric(
        &mut relay,
        "relay_tls_handshakes_total{result=\"failed\",reason=\"timeout\"}",
        1,
    );
    // A complete handshake is not affected.
    let mut client = StreamClient::tls(relay.addr, &pki);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(client.request(BINDING, &[]).class(), Class::Success);
}

#[test]
fn a_client_that_never_reads_loses_datagrams_not_the_loop() {
    let mut relay = start(&[]);
    let mut stalled = StreamClient::tcp(relay.addr);
    let relayed = stalled.allocate();
    let peer = peer();
    stalled.channel_bind(peer.local_addr().expect("addr"));
    // Fill the kernel buffers and the relay's write queue: the client never reads.
    let payload = [0x55u8; 1200];
    for _ in 0..4000 {
        peer.send_to(&payload, relayed).expect("send");
    }
    let series = "relay_drops_total{reason=\"write_queue_full\",transport=\"tcp\"}";
    let addr = relay.metrics_addr();
    let deadline = Instant::now() + WAIT;
    while metric(&scrape(addr), series) == 0 {
        assert!(Instant::now() < deadline, "no drops counted");
        for _ in 0..200 {
            peer.send_to(&payload, relayed).expect("send");
        }
    }
    // A UDP client's Binding RTT stays low while the queue is full.
    let mut udp = common::Client::new(relay.addr, "", "");
    let mut worst = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        let response = udp.request(stun_codec::rfc5389::methods::BINDING, vec![]);
        assert_eq!(response.class(), stun_codec::MessageClass::SuccessResponse);
        worst = worst.max(started.elapsed());
        peer.send_to(&payload, relayed).expect("send");
    }
    assert!(
        worst < Duration::from_millis(5),
        "worst Binding RTT {worst:?}"
    );
    drop(stalled);
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let pki = Pki::new();
    let first = pki.write_server();
    let mut relay = start_tls(&pki, &[]);
    assert_eq!(served_certificate(relay.addr, &pki), first);
    let kept = StreamClient::tls(relay.addr, &pki);

    std::fs::write(pki.cert(), "not a certificate").expect("write");
    signal(&relay, libc::SIGHUP);
    relay.wait_for_log("keeping the current certificate");
    assert_eq!(served_certificate(relay.addr, &pki), first);

    let second = pki.write_server();
    signal(&relay, libc::SIGHUP);
    relay.wait_for_log("reloaded the TLS certificate");
    assert_eq!(served_certificate(relay.addr, &pki), second);

    // The connection made before both reloads is still served.
    let mut kept = kept;
    assert_eq!(kept.request(BINDING, &[]).class(), Class::Success);
}

fn signal(relay: &RelayProcess, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(relay.pid()).expect("pid");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// Runs the binary with `args` and returns its exit code and stderr (it must exit at once).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(common::relay_binary())
        .args(["--listen-addr", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run relay");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_certificate_without_its_key_or_an_unreadable_file_is_a_usage_error() {
    let (code, stderr) = run_to_exit(&["--tls-cert-file", "/nonexistent/cert.pem"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key-file"), "{stderr}");

    let pki = Pki::new();
    pki.write_server();
    std::fs::write(pki.key(), "not a key").expect("write");
    let (cert, key) = (pki.cert(), pki.key());
    let (code, stderr) = run_to_exit(&[
        "--tls-cert-file",
        cert.to_str().expect("path"),
        "--tls-key-file",
        key.to_str().expect("path"),
        "--tls-listen-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("key.pem"), "names the file: {stderr}");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// 1,000 idle TLS connections (handshake done) and 1,000 plain ones trickling a partial
/// frame: the relay's memory per idle TLS connection is measured (VmRSS), the handshake CPU
/// cost too, and UDP clients' Binding RTT p99 stays under 5 ms while they are held.
#[test]
fn idle_and_trickling_connections_cost_little_and_do_not_slow_udp() {
    const N: usize = 1000;
    let pki = Pki::new();
    pki.write_server();
    // Connections without an allocation are what this measures: their pool and deadline
    // must not close them while 1,000 handshakes run on a loaded machine.
    let mut relay = start_tls(
        &pki,
        &[
            "--max-connections-per-ip",
            "5000",
            "--max-pending-connections",
            "5000",
            "--allocate-deadline",
            "300",
        ],
    );
    let pid = relay.pid();
    // Warm up: one connection of each kind, so allocator arenas exist before the baseline.
    drop(StreamClient::tls(relay.addr, &pki));
    drop(StreamClient::tcp(relay.addr));
    wait_metric(&mut relay, "relay_connections{transport=\"tls\"}", 0);
    let before = common::rss_kib(pid);
    let ticks_before = cpu_ticks(pid);
    let started = Instant::now();
    let held: Vec<TlsStream> = (0..N).map(|_| tls_to(relay.addr, &pki)).collect();
    let handshakes = started.elapsed();
    let ticks = cpu_ticks(pid) - ticks_before;
    wait_metric(&mut relay, "relay_connections{transport=\"tls\"}", N as u64);
    let after = common::rss_kib(pid);
    let per_connection = (after.saturating_sub(before)) * 1024 / N as u64;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    eprintln!(
        "{N} idle TLS connections: VmRSS {before} -> {after} KiB, {per_connection} bytes each; \
         {N} handshakes in {handshakes:?} (client and relay on one host), relay CPU {} ms \
         ({} us per handshake)",
        ticks * 1000 / hz,
        ticks * 1_000_000 / hz / N as u64
    );
    assert!(
        per_connection < 64 * 1024,
        "{per_connection} bytes per idle TLS connection"
    );

    // Trickling: each sent the first 3 bytes of a STUN header and nothing more.
    let trickling: Vec<TcpStream> = (0..N)
        .map(|_| {
            let mut stream = tcp_to(relay.addr);
            stream.write_all(&[0x00, 0x01, 0x00]).expect("write");
            stream
        })
        .collect();
    wait_metric(&mut relay, "relay_connections{transport=\"tcp\"}", N as u64);

    let mut udp = common::Client::new(relay.addr, "", "");
    let mut rtts: Vec<Duration> = (0..200)
        .map(|_| {
            let started = Instant::now();
            let response = udp.request(stun_codec::rfc5389::methods::BINDING, vec![]);
            assert_eq!(response.class(), stun_codec::MessageClass::SuccessResponse);
            started.elapsed()
        })
        .collect();
    rtts.sort();
    let p99 = rtts[rtts.len() * 99 / 100];
    eprintln!("UDP Binding RTT with {N} TLS + {N} trickling connections: p99 {p99:?}");
    assert!(p99 < Duration::from_millis(5), "p99 {p99:?}");
    drop((held, trickling));
}

#[test]
fn no_tcp_leaves_the_listen_port_udp_only() {
    let relay = start(&["--no-tcp"]);
    assert!(TcpStream::connect(relay.addr).is_err(), "no TCP listener");
    let mut udp = common::Client::new(relay.addr, "", "");
    let response = udp.request(stun_codec::rfc5389::methods::BINDING, vec![]);
    assert_eq!(response.class(), stun_codec::MessageClass::SuccessResponse);
}

/// Connections without an allocation have their own pool: at its limit all are served; past
/// it the oldest of them is closed for the new one, never one with an allocation; at the
/// total limit a pending one makes room too, and only when every connection holds an
/// allocation is a new one refused.
#[test]
fn connections_without_an_allocation_make_room_for_new_ones() {
    let mut relay = start(&["--max-pending-connections", "3", "--max-connections", "5"]);
    let served = |client: &mut StreamClient| {
        assert_eq!(client.request(BINDING, &[]).class(), Class::Success);
    };
    let mut allocated = StreamClient::tcp(relay.addr);
    allocated.allocate();
    // At the pending limit: all three are served.
    let mut pending: Vec<StreamClient> = (0..3).map(|_| StreamClient::tcp(relay.addr)).collect();
    for client in &mut pending {
        served(client);
    }
    wait_metric(&mut relay, "relay_connections_pending", 3);
    // Past it: the oldest pending one goes, the new one is served.
    let mut fourth = StreamClient::tcp(relay.addr);
    served(&mut fourth);
    assert!(
        pending[0].is_closed_by_relay(),
        "the oldest pending one is closed"
    );
    let evicted = "relay_connections_closed_total{transport=\"tcp\",reason=\"evicted\"}";
    wait_metric(&mut relay, evicted, 1);
    served(&mut pending[1]);
    served(&mut pending[2]);
    served(&mut allocated);

    // Allocations take connections out of the pending pool: 1 + 3 allocated, 1 pending.
    pending[1].allocate();
    pending[2].allocate();
    fourth.allocate();
    let mut fifth = StreamClient::tcp(relay.addr);
    served(&mut fifth);
    wait_metric(&mut relay, "relay_connections{transport=\"tcp\"}", 5);
    // At the total limit: the pending one makes room.
    let mut sixth = StreamClient::tcp(relay.addr);
    served(&mut sixth);
    assert!(fifth.is_closed_by_relay(), "the pending one is closed");
    wait_metric(&mut relay, evicted, 2);
    // Every connection holds an allocation: a new one is refused, the others stay.
    sixth.allocate();
    let mut refused = StreamClient::tcp(relay.addr);
    assert!(refused.is_closed_by_relay(), "refused at the total limit");
    wait_metric(
        &mut relay,
        "relay_connections_refused_total{reason=\"total\"}",
        1,
    );
    let held = pending.iter_mut().skip(1);
    for client in [&mut allocated, &mut fourth, &mut sixth]
        .into_iter()
        .chain(held)
    {
        served(client);
    }
}

/// An allocation that ends (Refresh 0 here; expiry takes the same path: its relay socket
/// closes) closes its connection at once, not at a later periodic check.
#[test]
fn a_connection_whose_allocation_ended_is_closed_at_once() {
    let mut relay = start(&[]);
    let mut client = StreamClient::tcp(relay.addr);
    client.allocate();
    let deleted = client.authenticated(0x004, &[(kind::LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(deleted.class(), Class::Success);
    let started = Instant::now();
    assert!(
        client.is_closed_by_relay(),
        "closed after its allocation ended"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    wait_metric(
        &mut relay,
        "relay_connections_closed_total{transport=\"tcp\",reason=\"allocation_ended\"}",
        1,
    );
}

#[test]
fn an_allocation_that_expires_closes_its_connection() {
    let mut relay = start(&["--test-lifetime", "1"]);
    let mut client = StreamClient::tcp(relay.addr);
    let started = Instant::now();
    client.allocate();
    assert!(
        client.is_closed_by_relay(),
        "closed when its allocation expired"
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "closed after {waited:?}");
    wait_metric(
        &mut relay,
        "relay_connections_closed_total{transport=\"tcp\",reason=\"allocation_ended\"}",
        1,
    );
}

/// A TLS handshake the client abandons counts as failed, with why.
#[test]
fn an_abandoned_tls_handshake_counts_as_failed() {
    let pki = Pki::new();
    pki.write_server();
    let mut relay = start_tls(&pki, &[]);
    let mut abandoned = tcp_to(relay.addr);
    abandoned
        .write_all(&[0x16, 0x03, 0x01, 0x00])
        .expect("write");
    wait_metric(&mut relay, "relay_connections{transport=\"tls\"}", 1);
    drop(abandoned);
    wait_metric(
        &mut relay,
        "relay_tls_handshakes_total{result=\"failed\",reason=\"client\"}",
        1,
    );
    wait_metric(&mut relay, "relay_connections{transport=\"tls\"}", 0);
}

/// Out of descriptors, accept() fails and mio (edge-triggered) reports the listener no more:
/// the relay retries it, so a connection waiting in the backlog is served once a descriptor
/// is free. The connection limit is lowered to what the descriptors serve, with a warning.
#[test]
fn connections_waiting_while_out_of_descriptors_are_served_once_one_is_free() {
    use std::os::unix::process::CommandExt;
    use stun_codec::rfc5766::attributes::{Lifetime, RequestedTransport};
    use stun_encoder::codec::Attribute;

    const NOFILE: libc::rlim_t = 64;
    let (lowest, highest) = common::free_port_range_args(100);
    let mut command = std::process::Command::new(common::relay_binary());
    command.args([
        "--listen-addr",
        "127.0.0.1:0",
        "--realm",
        common::REALM,
        "--auth-secret",
        SECRET,
        "--lowest-port",
        &lowest,
        "--highest-port",
        &highest,
    ]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut relay = RelayProcess::start_command(command);
    relay.wait_for_log("serve at most 16 TCP/TLS connections");

    // UDP allocations (a relay socket each) until the descriptors run out.
    let mut clients = Vec::new();
    loop {
        assert!(clients.len() < 64, "more allocations than descriptors");
        let (username, password) = credentials(&format!("user{}", clients.len()));
        let mut client = common::Client::new(relay.addr, &username, &password);
        let r = client.authenticated(
            stun_codec::rfc5766::methods::ALLOCATE,
            vec![Attribute::RequestedTransport(RequestedTransport::new(17))],
        );
        if r.class() != stun_codec::MessageClass::SuccessResponse {
            assert_eq!(r.error_code(), Some(508));
            break;
        }
        clients.push(client);
    }
    // The kernel completes this connection into the backlog; the relay cannot accept it.
    let mut waiting = tcp_to(relay.addr);
    let mut client = StreamClient::over(Box::new(waiting.try_clone().expect("clone")));
    let binding = client.encode(BINDING, &[]);
    waiting.write_all(&binding).expect("write");
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(
        waiting.read(&mut byte).is_err(),
        "answered while out of descriptors"
    );
    waiting.set_read_timeout(Some(WAIT)).expect("timeout");
    relay.wait_for_log("cannot accept TCP connections");

    // One allocation deleted frees a descriptor: the waiting connection is served.
    let deleted = clients[0].authenticated(
        stun_codec::rfc5766::methods::REFRESH,
        vec![Attribute::Lifetime(Lifetime::from_u32(0))],
    );
    assert_eq!(deleted.class(), stun_codec::MessageClass::SuccessResponse);
    let frame = client.read_frame();
    assert_eq!(frame[8..20], binding[8..20], "the Binding answer");
    relay.wait_for_log("accepting TCP connections again");
    let warnings = relay
        .seen
        .iter()
        .filter(|l| l.contains("cannot accept TCP connections"))
        .count();
    assert_eq!(warnings, 1, "one warning per episode, not per retry");
}

/// Client bytes and the core's drops of client messages, by the transport they came over.
#[test]
fn bytes_and_drops_are_counted_by_transport() {
    let pki = Pki::new();
    pki.write_server();
    let mut relay = start_tls(&pki, &[]);
    let addr = relay.metrics_addr();
    let series = |name: &str, transport: &str, label: &str| {
        format!("{name}{{transport=\"{transport}\",{label}}}")
    };
    // ChannelData without an allocation, once over each transport: dropped, counted there.
    let unbound = channel_data(b"abc");
    let mut expected_bytes = Vec::new();
    for transport in ["tcp", "tls"] {
        let mut client = if transport == "tcp" {
            StreamClient::tcp(relay.addr)
        } else {
            StreamClient::tls(relay.addr, &pki)
        };
        client.io.write_all(&unbound).expect("write");
        let request_len = client.encode(BINDING, &[]).len();
        let answer = client.request(BINDING, &[]);
        assert_eq!(answer.class(), Class::Success);
        expected_bytes.push((
            transport,
            (unbound.len() + request_len) as u64,
            answer.bytes.len() as u64,
        ));
    }
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let datagram = common::channel_data(0x4001, b"abc");
    udp.send_to(&datagram, relay.addr).expect("send");
    let reason = "reason=\"channel_data_no_allocation\"";
    wait_metric(
        &mut relay,
        &series("relay_client_drops_total", "udp", reason),
        1,
    );
    let metrics = scrape(addr);
    for (transport, bytes_in, bytes_out) in expected_bytes {
        assert_eq!(
            metric(
                &metrics,
                &series("relay_client_drops_total", transport, reason)
            ),
            1,
            "{transport}"
        );
        assert_eq!(
            metric(
                &metrics,
                &series("relay_client_bytes_total", transport, "direction=\"in\"")
            ),
            bytes_in,
            "{transport} in"
        );
        assert_eq!(
            metric(
                &metrics,
                &series("relay_client_bytes_total", transport, "direction=\"out\"")
            ),
            bytes_out,
            "{transport} out"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "relay_drops_total{reason=\"channel_data_no_allocation\"}"
        ),
        3
    );
    assert_eq!(
        metric(
            &metrics,
            &series("relay_client_bytes_total", "udp", "direction=\"in\"")
        ),
        datagram.len() as u64
    );

    // A peer without a permission, for a client over TLS: dropped, counted under TLS.
    let mut client = StreamClient::tls(relay.addr, &pki);
    let relayed = client.allocate();
    peer().send_to(b"no permission", relayed).expect("send");
    let reason = "reason=\"peer_no_permission\"";
    wait_metric(
        &mut relay,
        &series("relay_client_drops_total", "tls", reason),
        1,
    );
    let metrics = scrape(addr);
    for transport in ["udp", "tcp"] {
        let series = series("relay_client_drops_total", transport, reason);
        assert_eq!(metric(&metrics, &series), 0, "{series}");
    }
}

/// Datagrams for one stream client that arrive together leave in few write calls, not one
/// each: the relay is stopped while a burst waits in its relay socket, then read in batches.
fn burst_write_calls(relay: &mut RelayProcess, mut client: StreamClient, transport: &str) -> u64 {
    const BURST: usize = 128;
    let relayed = client.allocate();
    let peer = peer();
    client.channel_bind(peer.local_addr().expect("peer addr"));
    let series = format!("relay_connection_write_calls_total{{transport=\"{transport}\"}}");
    let before = metric(&scrape(relay.metrics_addr()), &series);
    signal(relay, libc::SIGSTOP);
    for i in 0..BURST {
        peer.send_to(&[i as u8; 100], relayed).expect("peer sends");
    }
    signal(relay, libc::SIGCONT);
    for i in 0..BURST {
        assert_eq!(
            client.read_frame(),
            channel_data(&[i as u8; 100]),
            "frame {i}"
        );
    }
    let writes = metric(&scrape(relay.metrics_addr()), &series) - before;
    eprintln!("{transport}: {BURST} frames in {writes} write calls");
    writes
}

#[test]
fn a_burst_for_one_stream_client_leaves_in_few_write_calls() {
    let pki = Pki::new();
    pki.write_server();
    let mut relay = start_tls(&pki, &[]);
    let tcp = StreamClient::tcp(relay.addr);
    let tcp_writes = burst_write_calls(&mut relay, tcp, "tcp");
    let tls = StreamClient::tls(relay.addr, &pki);
    let tls_writes = burst_write_calls(&mut relay, tls, "tls");
    // The relay reads 64 datagrams per recvmmsg: two batches, a write each (or a few more
    // when the kernel does not hand the whole burst at once).
    assert!(tcp_writes <= 8, "{tcp_writes} write calls over TCP");
    assert!(tls_writes <= 8, "{tls_writes} write calls over TLS");
}
