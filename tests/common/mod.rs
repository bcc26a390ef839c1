//! Shared by the integration tests: start the real `relay` binary on loopback and talk
//! STUN/TURN to it over real UDP sockets.
#![allow(dead_code)] // each test binary uses a different part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytecodec::DecodeExt;
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm};
use stun_codec::{Message, MessageClass, MessageDecoder, Method, TransactionId};

// Requests are written by the tests' own encoder (pinned to RFC 5769), never the core's;
// each test crate declares it at its root.
use crate::stun_encoder::codec::Attribute;
use crate::stun_encoder::{self as enc, Encoder, long_term_key, rest_password};

pub const SECRET: &str = "integration-secret";
pub const REALM: &str = "test.realm";
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// The binary under test: the one cargo built, or `RELAY_BIN` (tests/run points it at the
/// static musl build to run the same tests against what operators ship).
pub fn relay_binary() -> std::path::PathBuf {
    std::env::var_os("RELAY_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_relay")))
}

/// The relay binary, killed when dropped.
pub struct RelayProcess {
    child: Child,
    pub addr: SocketAddr,
    logs: Receiver<String>,
    pub seen: Vec<String>,
}

impl RelayProcess {
    /// Starts the relay on 127.0.0.1 with a kernel-chosen port and waits for its start-up line.
    pub fn start(extra: &[&str]) -> RelayProcess {
        let mut args = vec!["--listen-addr", "127.0.0.1:0", "--realm", REALM];
        args.extend_from_slice(extra);
        RelayProcess::start_with(&args)
    }

    pub fn start_with(args: &[&str]) -> RelayProcess {
        RelayProcess::start_with_env(args, &[])
    }

    /// `start_with`, plus environment variables (RELAY_* configuration).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        let mut command = Command::new(relay_binary());
        command.args(args).envs(env.iter().copied());
        RelayProcess::start_command(command)
    }

    /// Runs a prepared command of the relay binary (e.g. with process limits set).
    pub fn start_command(mut command: Command) -> RelayProcess {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relay");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut relay = RelayProcess {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            logs,
            seen: Vec::new(),
        };
        let line = relay.wait_for_log("listening on");
        relay.addr = parse_listen_addr(&line);
        relay
    }

    /// Waits (bounded) for a log line containing `needle` and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("relay never logged {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and returns at once (reload, drain).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with our own child's pid, which is not reaped while `self` lives.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({signal})");
    }

    /// Waits (bounded) for the relay to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the relay") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every line the relay wrote to stderr, once it has exited (`terminate` first): the
    /// lines seen so far and the rest up to the end of its stderr (bounded wait).
    pub fn all_logs(&mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.seen.clone(),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the relay's stderr did not end; saw {:#?}", self.seen)
                }
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status. If the relay does not exit in
    /// time the test fails, and `Drop` still kills it.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` and waits (bounded) for the exit status; `Drop` kills a relay that
    /// does not exit in time.
    pub fn stop_with(&mut self, signal: libc::c_int) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with our own child's pid; it is not reaped before this returns.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({signal})");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the relay") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not exit within {WAIT:?} after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Where the relay serves its metrics (from its start-up log; needs `--metrics-addr`).
    pub fn metrics_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_log("metrics on http://");
        let start = line.find("http://").expect("url") + "http://".len();
        let end = start + line[start..].find('/').expect("path");
        line[start..end].parse().expect("metrics address")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_listen_addr(line: &str) -> SocketAddr {
    let start = line.find("listening on [").expect("listen line") + "listening on [".len();
    let rest = &line[start..];
    // An IPv6 address is bracketed itself: its end is after the port that follows "]:".
    let skip = if rest.starts_with('[') {
        rest.find("]:").expect("end of IPv6 address") + 2
    } else {
        0
    };
    let end = skip + rest[skip..].find([']', ',']).expect("end of address");
    rest[..end].parse().expect("listen address")
}

/// `len` consecutive UDP ports free on 127.0.0.1 now, for `--lowest-port`/`--highest-port`.
pub fn free_port_range(len: u16) -> (u16, u16) {
    free_port_range_on(len, &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

/// The one port-range finder of the tests: `len` consecutive UDP ports that are free on
/// every address of `ips` right now, outside the kernel's ephemeral range (so sockets bound
/// to port 0 never land in them), and not handed to another test of this binary; the start
/// is random so that concurrent test binaries spread out. Other processes may still take
/// one later; the relay then tries another port of its range.
pub fn free_port_range_on(len: u16, ips: &[IpAddr]) -> (u16, u16) {
    static HANDED_OUT: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());
    let (ephemeral_low, ephemeral_high) = ephemeral_ports();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Start somewhere random so that concurrent test binaries spread out, then scan.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().rotate_left(16);
    for (low, high) in [(10_000, ephemeral_low - 1), (ephemeral_high + 1, u16::MAX)] {
        if high < low || high - low + 1 < len {
            continue;
        }
        let bases = u32::from(high - low - len + 2);
        let first = seed % bases;
        let mut step = 0;
        while step < bases {
            let base = low + ((first + step) % bases) as u16;
            let window = (base, base + len - 1);
            let taken = handed_out
                .iter()
                .any(|&(l, h)| l <= window.1 && window.0 <= h);
            // The first busy port, if any: no window containing it can work.
            let busy = (base..=window.1)
                .find(|&port| ips.iter().any(|&ip| UdpSocket::bind((ip, port)).is_err()));
            match (taken, busy) {
                (false, None) => {
                    handed_out.push(window);
                    return window;
                }
                (_, Some(port)) if first + step + u32::from(port - base) < bases => {
                    step += u32::from(port - base) + 1;
                }
                _ => step += 1,
            }
        }
    }
    panic!("no {len} consecutive free UDP ports on {ips:?} outside the ephemeral range");
}

/// The kernel's ephemeral port range (Linux), or the usual default.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut numbers = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((numbers.next()??, numbers.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// `free_port_range(len)` as the strings `--lowest-port`/`--highest-port` take.
pub fn free_port_range_args(len: u16) -> (String, String) {
    let (lowest, highest) = free_port_range(len);
    (lowest.to_string(), highest.to_string())
}

/// REST API credentials valid for an hour.
pub fn credentials(user: &str) -> (String, String) {
    let expiry = unix_now() + 3600;
    let username = format!("{expiry}:{user}");
    let password = rest_password(SECRET.as_bytes(), &username);
    (username, password)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A TURN client over one UDP socket, with long-term credentials once it learned a nonce.
pub struct Client {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    pub realm: String,
    pub nonce: Option<String>,
    next_id: u8,
}

pub struct Response {
    pub message: Message<Attribute>,
    pub bytes: Vec<u8>,
}

impl Response {
    pub fn class(&self) -> MessageClass {
        self.message.class()
    }

    pub fn error_code(&self) -> Option<u16> {
        self.message.get_attribute::<ErrorCode>().map(|e| e.code())
    }

    pub fn get<T>(&self) -> Option<&T>
    where
        T: stun_codec::Attribute,
        Attribute: stun_codec::convert::TryAsRef<T>,
    {
        self.message.get_attribute::<T>()
    }
}

impl Client {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Client {
            socket,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: REALM.to_owned(),
            nonce: None,
            next_id: 0,
        }
    }

    /// A transaction id no other request of this test process used: a later client on a
    /// reused 5-tuple must not take a late answer to an earlier client's request for its own
    /// (the soak test churns thousands of clients over 200 addresses).
    pub fn transaction_id(&mut self) -> TransactionId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.next_id = self.next_id.wrapping_add(1);
        let mut id = [0x5A; 12];
        id[0] = (std::process::id() & 0xFF) as u8;
        id[3..11].copy_from_slice(&n.to_be_bytes());
        id[11] = self.next_id;
        TransactionId::new(id)
    }

    /// Sends a request (signed once a nonce is known) and waits for its response.
    pub fn request(&mut self, method: Method, attributes: Vec<Attribute>) -> Response {
        let id = self.transaction_id();
        self.request_with_id(method, attributes, id)
    }

    pub fn request_with_id(
        &mut self,
        method: Method,
        attributes: Vec<Attribute>,
        id: TransactionId,
    ) -> Response {
        let bytes = self.encode_request(method, attributes, id);
        self.exchange(&bytes, id)
    }

    pub fn encode_request(
        &self,
        method: Method,
        attributes: Vec<Attribute>,
        id: TransactionId,
    ) -> Vec<u8> {
        let mut request = Encoder::new(enc::Class::Request, method.as_u16(), *id.as_bytes());
        for attribute in attributes {
            request.attr(&attribute.into());
        }
        if let Some(nonce) = &self.nonce {
            request.tlv(enc::kind::USERNAME, self.username.as_bytes());
            request.tlv(enc::kind::REALM, self.realm.as_bytes());
            request.tlv(enc::kind::NONCE, nonce.as_bytes());
            let key = long_term_key(&self.username, &self.realm, &self.password);
            request.integrity(&key);
        }
        request.fingerprint();
        request.bytes()
    }

    /// Sends raw bytes and waits (bounded, with retransmissions) for the response to `id`.
    pub fn exchange(&mut self, bytes: &[u8], id: TransactionId) -> Response {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            self.socket.send_to(bytes, self.server).expect("send");
            let mut buf = [0u8; 2048];
            while let Ok((len, _)) = self.socket.recv_from(&mut buf) {
                let Ok(Ok(message)) =
                    MessageDecoder::<Attribute>::new().decode_from_bytes(&buf[..len])
                else {
                    continue;
                };
                if message.transaction_id() == id {
                    return Response {
                        message,
                        bytes: buf[..len].to_vec(),
                    };
                }
            }
        }
        panic!("no response from the relay within {WAIT:?}");
    }

    /// A request that first learns the nonce from the 401, as real clients do.
    pub fn authenticated(&mut self, method: Method, attributes: Vec<Attribute>) -> Response {
        if self.nonce.is_none() {
            let first = self.request(method, attributes.clone());
            assert_eq!(
                first.error_code(),
                Some(401),
                "unauthenticated request must get 401"
            );
            let nonce = first
                .get::<Nonce>()
                .expect("401 carries NONCE")
                .value()
                .to_owned();
            let realm = first
                .get::<Realm>()
                .expect("401 carries REALM")
                .text()
                .to_owned();
            assert_eq!(realm, self.realm);
            self.nonce = Some(nonce);
        }
        let response = self.request(method, attributes);
        if response.class() == MessageClass::SuccessResponse
            || response.error_code().is_some_and(|c| c != 401 && c != 438)
        {
            let key = long_term_key(&self.username, &self.realm, &self.password);
            assert!(
                enc::integrity_valid(&response.bytes, &key),
                "response to an authenticated request is signed under the client's key: {:?} {:?} {:02x?}",
                response.class(),
                response.error_code(),
                response.bytes
            );
        }
        response
    }

    /// Waits (bounded) for any datagram from the relay.
    pub fn recv_datagram(&self) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            if let Ok((len, from)) = self.socket.recv_from(&mut buf)
                && from == self.server
            {
                return buf[..len].to_vec();
            }
        }
        panic!("no datagram from the relay within {WAIT:?}");
    }
}

/// A plain UDP peer on loopback.
pub fn peer_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    socket
}

pub fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = channel.to_be_bytes().to_vec();
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `GET path` from the relay's metrics/health listener: (status, body). Bounded by WAIT.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the metrics port");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A `/metrics` scrape (asserting 200).
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one exact series of a scrape, e.g. `relay_drops_total{reason="malformed"}`;
/// 0 when absent (the relay omits error-response counters that are still zero).
pub fn metric(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// VmRSS of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Open file descriptors of a process, from /proc.
pub fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// Datagrams the kernel dropped at the full receive buffer of the IPv4 UDP socket bound to
/// `addr` (the `drops` column of /proc/net/udp), so that a flood test can count what the
/// relay never saw instead of depending on how much CPU it got.
pub fn udp_receive_drops(addr: SocketAddr) -> u64 {
    let SocketAddr::V4(v4) = addr else {
        panic!("udp_receive_drops: IPv4 only");
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&want.as_str()))
                .then(|| fields.last().and_then(|d| d.parse::<u64>().ok()))
                .flatten()
        })
        .sum()
}
