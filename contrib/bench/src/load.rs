//! The data-path load: N client sockets (each an allocation with a channel, or for the
//! forwarder a plain client of its in-socket) and one peer socket; one-way saturation in
//! either direction, ping-pong RTT, and a fixed burst workload for the count measurements.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::alloc::{self, CHANNEL};
use crate::servers::{self, Server};
use crate::stun::{self, Credentials};
use crate::sys::{self, Batch, GsoBatch};

const MAGIC: &[u8; 4] = b"BNCH";
/// Datagrams per sendmmsg/recvmmsg of the load generator.
const BATCH: usize = 64;
/// Every this many received datagrams, the whole payload is checked, not only its header.
const FULL_CHECK_EVERY: u64 = 64;
/// The sender's sendmmsg: GSO_MSGS messages of GSO_SEGS datagrams each.
const GSO_MSGS: usize = 8;
const GSO_SEGS: usize = 32;
/// How often the receiver reads one batch from each of its sockets: rarely enough that
/// reading takes little of the CPU the sender shares, so what the kernel drops at the full
/// sockets is most of what is counted (see `one_way`).
const RX_PERIOD: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// ChannelData from the clients, relayed to the peer.
    ClientToPeer,
    /// Datagrams from the peer, relayed to the clients as ChannelData.
    PeerToClient,
}

impl Direction {
    pub fn key(self) -> &'static str {
        match self {
            Direction::ClientToPeer => "c2p",
            Direction::PeerToClient => "p2c",
        }
    }
}

/// The sockets of the load generator and where each sends.
pub struct Path {
    /// One per allocation, connected to the server (TURN listen address / forwarder in).
    pub clients: Vec<UdpSocket>,
    pub peer: UdpSocket,
    /// Where the peer sends to reach client i (its relayed address / the forwarder's out).
    pub peer_targets: Vec<SocketAddr>,
    /// Whether what the peer receives still carries the 4-byte ChannelData header (forwarder).
    pub peer_sees_header: bool,
    /// Whether what a client receives carries a ChannelData header (TURN server).
    pub client_sees_header: bool,
}

fn payload_fill(buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(7).wrapping_add(13);
    }
}

fn payload_ok(payload: &[u8]) -> bool {
    payload.len() >= 16
        && &payload[..4] == MAGIC
        && payload[16..]
            .iter()
            .enumerate()
            .all(|(k, b)| *b == ((k + 16) as u8).wrapping_mul(7).wrapping_add(13))
}

/// Sets up N allocations (TURN) or N plain clients (forwarder).
pub fn setup(server: &Server, n: usize, creds: &Credentials) -> io::Result<Path> {
    let peer = sys::udp_loopback()?;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let c = sys::udp_client(i)?;
        c.connect(server.listen)?;
        clients.push(c);
    }
    let peer_addr = peer.local_addr()?;
    if server.kind.is_turn() {
        let est = alloc::establish(
            &clients,
            creds,
            &alloc::Options {
                window: 32,
                rto: Duration::from_millis(300),
                channel_peer: Some(peer_addr),
            },
        )?;
        if est.binds_ok != n {
            return Err(io::Error::other(format!(
                "setup of {n} allocations failed: {:?}",
                est.failures
            )));
        }
        for c in &clients {
            c.set_nonblocking(false)?;
        }
        Ok(Path {
            clients,
            peer,
            peer_targets: est.relayed.into_iter().map(|r| r.expect("bound")).collect(),
            peer_sees_header: false,
            client_sees_header: true,
        })
    } else {
        let out = server.out.expect("forwarder has an out address");
        peer.send_to(b"hello", out)?;
        std::thread::sleep(Duration::from_millis(20));
        for c in &clients {
            c.send(b"hello")?;
        }
        std::thread::sleep(Duration::from_millis(20));
        let path = Path {
            clients,
            peer,
            peer_targets: vec![out; n],
            peer_sees_header: true,
            client_sees_header: false,
        };
        drain(&path);
        Ok(path)
    }
}

/// Discards whatever is queued on the load generator's sockets.
pub fn drain(path: &Path) {
    let mut buf = [0u8; 2048];
    for s in path.clients.iter().chain(std::iter::once(&path.peer)) {
        let _ = s.set_nonblocking(true);
        while s.recv(&mut buf).is_ok() {}
        let _ = s.set_nonblocking(false);
    }
}

#[derive(Clone, Debug, Default)]
pub struct Throughput {
    pub sent: u64,
    pub received: u64,
    pub secs: f64,
    pub server_cpu_secs: f64,
    pub loadgen_cpu_secs: f64,
    pub corrupt: u64,
    pub send_errors: u64,
    /// Datagrams the kernel dropped at a CPU's input backlog during the window.
    pub backlog_drops: u64,
}

impl Throughput {
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.secs
    }
    pub fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.secs
    }
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - (self.received as f64 / self.sent as f64).min(1.0)
        }
    }
    pub fn cpu_us_per_packet(&self) -> f64 {
        if self.received == 0 {
            f64::NAN
        } else {
            self.server_cpu_secs * 1e6 / self.received as f64
        }
    }
    pub fn server_cpu_share(&self) -> f64 {
        self.server_cpu_secs / self.secs
    }
    pub fn loadgen_cpu_share(&self) -> f64 {
        self.loadgen_cpu_secs / self.secs
    }
}

/// Builds the datagram client i sends (ChannelData) or the peer sends (raw payload).
fn frame(dir: Direction, payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; payload.max(16)];
    payload_fill(&mut p);
    p[..4].copy_from_slice(MAGIC);
    match dir {
        Direction::ClientToPeer => {
            let mut f = stun::channel_data_header(CHANNEL, p.len()).to_vec();
            f.extend_from_slice(&p);
            f
        }
        Direction::PeerToClient => p,
    }
}

/// One-way saturation: a sender thread blasts for warmup + measure, a receiver thread counts;
/// the counters and the server's CPU time are sampled at the start and end of the measure window.
pub fn one_way(
    path: &Path,
    server: &Server,
    dir: Direction,
    payload: usize,
    warmup: Duration,
    measure: Duration,
) -> io::Result<Throughput> {
    drain(path);
    let template = frame(dir, payload);
    let payload_offset = match dir {
        Direction::ClientToPeer => 4, // within the frame we send
        Direction::PeerToClient => 0,
    };
    let (rx_sockets, rx_header): (Vec<&UdpSocket>, bool) = match dir {
        Direction::ClientToPeer => (vec![&path.peer], path.peer_sees_header),
        Direction::PeerToClient => (path.clients.iter().collect(), path.client_sees_header),
    };
    let rx_offset = if rx_header { 4 } else { 0 };
    let expect_len = payload.max(16) + rx_offset;

    let stop_tx = AtomicBool::new(false);
    let stop_rx = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let send_errors = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let corrupt = AtomicU64::new(0);

    std::thread::scope(|scope| -> io::Result<Throughput> {
        // Receiver. It reads one batch per socket per RX_PERIOD and lets the kernel drop
        // the rest at its sockets: a datagram the server relayed counts whether it was read
        // here or dropped by a full receive buffer (its drop counter, /proc/net/udp). So
        // reading never takes the CPU the sender needs to saturate the server.
        let rx = scope.spawn(|| -> io::Result<()> {
            let mut batch = Batch::new(BATCH, 2048);
            let mut count = 0u64;
            let mut bad = 0u64;
            while !stop_rx.load(Ordering::Relaxed) {
                for socket in &rx_sockets {
                    let Ok(n) = batch.recv(socket.as_raw_fd(), BATCH, libc::MSG_DONTWAIT) else {
                        continue;
                    };
                    for i in 0..n {
                        let d = batch.received(i);
                        if d.len() != expect_len {
                            continue; // late from an earlier run (another size): not ours
                        }
                        count += 1;
                        let ok = &d[rx_offset..rx_offset + 4] == MAGIC
                            && (!count.is_multiple_of(FULL_CHECK_EVERY)
                                || payload_ok(&d[rx_offset..]));
                        if !ok {
                            bad += 1;
                        }
                    }
                    received.store(count, Ordering::Relaxed);
                    corrupt.store(bad, Ordering::Relaxed);
                }
                std::thread::sleep(RX_PERIOD);
            }
            Ok(())
        });

        // Sender.
        let tx = scope.spawn(|| -> io::Result<()> {
            let n = path.clients.len();
            // Destinations of the peer's datagrams, converted once.
            let targets: Vec<(libc::sockaddr_storage, libc::socklen_t)> = path
                .peer_targets
                .iter()
                .map(|t| {
                    // SAFETY: zeroed storage is valid.
                    let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                    let l = sys::to_sockaddr(*t, &mut s);
                    (s, l)
                })
                .collect();
            let mut gso = GsoBatch::new(GSO_MSGS, GSO_SEGS, template.len());
            for m in 0..gso.msgs() {
                for k in 0..gso.segs() {
                    gso.seg_mut(m, k).copy_from_slice(&template);
                }
                gso.set_dest(m, None);
            }
            let mut seq = 0u64;
            let mut total = 0u64;
            let mut next_target = 0usize;
            'outer: loop {
                for c in 0..n {
                    if stop_tx.load(Ordering::Relaxed) {
                        break 'outer;
                    }
                    for m in 0..gso.msgs() {
                        let index = match dir {
                            Direction::ClientToPeer => c,
                            Direction::PeerToClient => {
                                let (s, l) = &targets[next_target];
                                gso.set_dest(m, Some((s, *l)));
                                let i = next_target;
                                next_target = (next_target + 1) % targets.len();
                                i
                            }
                        };
                        for k in 0..gso.segs() {
                            let buf = gso.seg_mut(m, k);
                            buf[payload_offset + 4..payload_offset + 8]
                                .copy_from_slice(&(index as u32).to_be_bytes());
                            buf[payload_offset + 8..payload_offset + 16]
                                .copy_from_slice(&seq.to_be_bytes());
                            seq += 1;
                        }
                    }
                    let fd = match dir {
                        Direction::ClientToPeer => path.clients[c].as_raw_fd(),
                        Direction::PeerToClient => path.peer.as_raw_fd(),
                    };
                    match gso.send(fd) {
                        Ok(k) => total += k as u64,
                        Err(_) => {
                            send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sent.store(total, Ordering::Relaxed);
                }
            }
            Ok(())
        });

        std::thread::sleep(warmup);
        let inodes: Vec<u64> = rx_sockets
            .iter()
            .map(|s| sys::inode(s.as_raw_fd()))
            .collect();
        let snap = || {
            (
                sent.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed) + sys::udp_drops(&inodes),
                server.cpu_ticks().unwrap_or(0),
                servers::self_cpu_ticks(),
                Instant::now(),
            )
        };
        let d0 = backlog_drops();
        let (s0, r0, c0, l0, t0) = snap();
        std::thread::sleep(measure);
        let (s1, r1, c1, l1, t1) = snap();
        let d1 = backlog_drops();
        stop_tx.store(true, Ordering::Relaxed);
        let tx_result = tx.join().expect("sender thread");
        // Let the server finish what is queued, so the next measurement starts quiet.
        let relayed = || received.load(Ordering::Relaxed) + sys::udp_drops(&inodes);
        let mut last = relayed();
        let quiet_deadline = Instant::now() + Duration::from_secs(3);
        loop {
            std::thread::sleep(Duration::from_millis(60));
            let now = relayed();
            if now == last || Instant::now() > quiet_deadline {
                break;
            }
            last = now;
        }
        stop_rx.store(true, Ordering::Relaxed);
        let rx_result = rx.join().expect("receiver thread");
        tx_result?;
        rx_result?;
        let ticks = sys::clock_ticks() as f64;
        Ok(Throughput {
            sent: s1 - s0,
            received: r1 - r0,
            secs: (t1 - t0).as_secs_f64(),
            server_cpu_secs: (c1 - c0) as f64 / ticks,
            loadgen_cpu_secs: (l1 - l0) as f64 / ticks,
            corrupt: corrupt.load(Ordering::Relaxed),
            send_errors: send_errors.load(Ordering::Relaxed),
            backlog_drops: d1.saturating_sub(d0),
        })
    })
}

#[derive(Clone, Debug, Default)]
pub struct Rtt {
    pub sent: u64,
    pub received: u64,
    /// Round-trip times in microseconds, sorted.
    pub samples_us: Vec<f64>,
}

impl Rtt {
    pub fn percentile(&self, p: f64) -> f64 {
        if self.samples_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.samples_us.len() as f64 - 1.0) * p / 100.0).round() as usize;
        self.samples_us[i]
    }
}

/// Ping-pong: client 0 sends `rate` pings/s (ChannelData with a send timestamp); the peer
/// echoes each back to where it came from (the relayed address); the client times the echo.
pub fn ping_pong(
    path: &Path,
    rate: u32,
    warmup: Duration,
    measure: Duration,
    payload: usize,
) -> io::Result<Rtt> {
    drain(path);
    let client = &path.clients[0];
    let peer = &path.peer;
    let base = Instant::now();
    let stop = AtomicBool::new(false);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let warm_count = (warmup.as_secs_f64() * f64::from(rate)) as u64;
    let total = warm_count + (measure.as_secs_f64() * f64::from(rate)) as u64;
    let rx_offset = if path.client_sees_header { 4 } else { 0 };
    client.set_read_timeout(Some(Duration::from_millis(50)))?;
    peer.set_read_timeout(Some(Duration::from_millis(50)))?;

    std::thread::scope(|scope| -> io::Result<Rtt> {
        // The peer: echo everything back to its source.
        let echo = scope.spawn(|| {
            let mut buf = [0u8; 2048];
            let hdr = if path.peer_sees_header { 4 } else { 0 };
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = peer.recv_from(&mut buf)
                    && n >= hdr
                {
                    let _ = peer.send_to(&buf[hdr..n], from);
                }
            }
        });
        // The client's receiver.
        let rx = scope.spawn(|| {
            let mut buf = [0u8; 2048];
            let mut samples = Vec::with_capacity(total as usize);
            let mut received = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = client.recv(&mut buf) {
                    let now = base.elapsed().as_nanos() as u64;
                    let d = &buf[rx_offset.min(n)..n];
                    if d.len() >= 24 && &d[..4] == MAGIC {
                        let seq = u64::from_be_bytes(d[8..16].try_into().unwrap());
                        let ts = u64::from_be_bytes(d[16..24].try_into().unwrap());
                        if seq >= warm_count {
                            received += 1;
                            samples.push(now.saturating_sub(ts) as f64 / 1000.0);
                        }
                    }
                }
            }
            (received, samples)
        });
        let mut p = vec![0u8; payload.max(24)];
        payload_fill(&mut p);
        p[..4].copy_from_slice(MAGIC);
        let mut f = stun::channel_data_header(CHANNEL, p.len()).to_vec();
        f.extend_from_slice(&p);
        let start = Instant::now();
        let mut sent = 0u64;
        for seq in 0..total {
            let due = start + interval * seq as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            f[4 + 8..4 + 16].copy_from_slice(&seq.to_be_bytes());
            f[4 + 16..4 + 24].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
            if client.send(&f).is_ok() && seq >= warm_count {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let _ = echo.join();
        let (received, mut samples) = rx.join().expect("receiver");
        client.set_read_timeout(None)?;
        peer.set_read_timeout(None)?;
        samples.sort_by(f64::total_cmp);
        Ok(Rtt {
            sent,
            received,
            samples_us: samples,
        })
    })
}

/// The fixed workload of the count measurements: `bursts` bursts of `burst` datagrams of
/// `payload` bytes through allocation 0 in direction `dir`, each burst sent with one sendmmsg
/// and fully received (or timed out) before the next. Returns (sent, received).
pub fn fixed_bursts(
    path: &Path,
    dir: Direction,
    bursts: usize,
    burst: usize,
    payload: usize,
    per_burst_timeout: Duration,
) -> io::Result<(u64, u64)> {
    drain(path);
    let template = frame(dir, payload);
    let mut batch = Batch::new(burst, template.len());
    let (tx, rx, dest) = match dir {
        Direction::ClientToPeer => (&path.clients[0], &path.peer, None),
        Direction::PeerToClient => (&path.peer, &path.clients[0], Some(path.peer_targets[0])),
    };
    for i in 0..burst {
        batch.buf_mut(i)[..template.len()].copy_from_slice(&template);
        batch.set_len(i, template.len());
        batch.set_dest(i, dest);
    }
    let mut rbatch = Batch::new(burst, 2048);
    rx.set_read_timeout(Some(Duration::from_millis(20)))?;
    let (mut sent, mut received) = (0u64, 0u64);
    for _ in 0..bursts {
        let mut k = 0;
        while k < burst {
            k += batch.send(tx.as_raw_fd(), k, burst, 0)?;
        }
        sent += burst as u64;
        let deadline = Instant::now() + per_burst_timeout;
        let mut got = 0;
        while got < burst && Instant::now() < deadline {
            if let Ok(n) = rbatch.recv(rx.as_raw_fd(), burst - got, libc::MSG_WAITFORONE) {
                got += n;
            }
        }
        received += got as u64;
    }
    rx.set_read_timeout(None)?;
    Ok((sent, received))
}

/// Datagrams dropped so far because a CPU's input backlog was full (all CPUs), from
/// /proc/net/softnet_stat: nonzero means the kernel, not a socket, dropped load.
pub fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        })
        .sum()
}
