//! The TCP and TLS workloads: ChannelData from clients over streams relayed to a UDP peer
//! (saturation, as the UDP c2p workload), TLS handshakes per second, allocation set-up over
//! TLS, and the memory of idle TLS connections.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::alloc::CHANNEL;
use crate::load::Throughput;
use crate::servers::{self, Server};
use crate::stream_client::{Conn, Transport};
use crate::stun::{self, Credentials, TidSource};
use crate::sys::{self, Batch};

const MAGIC: &[u8; 4] = b"BNCH";
/// ChannelData frames per write on a stream: the client writes in large batches so that it
/// is not the bottleneck (one syscall, and for TLS a few records, per 64 frames).
const FRAMES_PER_WRITE: usize = 64;
/// Send buffer of a data connection: enough to keep the server busy, small enough that what
/// is queued at the end of a run drains quickly.
const SNDBUF: libc::c_int = 256 * 1024;
const RX_BATCH: usize = 64;
const RX_PERIOD: Duration = Duration::from_millis(10);
/// Client threads of the handshake and set-up workloads (blocking connections each).
pub const THREADS: usize = 16;

/// Allocations with a channel over one transport, and the UDP peer they are bound to.
pub struct StreamPath {
    pub clients: Vec<Conn>,
    pub peer: UdpSocket,
    /// Relayed address of each client's allocation (where the peer sends to reach it).
    pub relayed: Vec<SocketAddr>,
}

fn listen_of(server: &Server, transport: Transport) -> io::Result<SocketAddr> {
    match transport {
        Transport::Tcp => Ok(server.listen),
        Transport::Tls => server
            .tls_listen
            .ok_or_else(|| io::Error::other("server started without TLS")),
    }
}

pub fn setup(
    server: &Server,
    transport: Transport,
    n: usize,
    creds: &Credentials,
    config: &Arc<ClientConfig>,
) -> io::Result<StreamPath> {
    let peer = sys::udp_loopback()?;
    let peer_addr = peer.local_addr()?;
    let remote = listen_of(server, transport)?;
    let mut tids = TidSource::new();
    let mut clients = Vec::with_capacity(n);
    let mut relayed = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Conn::open(transport, i, remote, config)?;
        relayed.push(c.allocate_with_channel(creds, peer_addr, &mut tids)?);
        let fd = c.tcp().as_raw_fd();
        // SAFETY: a c_int option of the right size on our own socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&SNDBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        clients.push(c);
    }
    Ok(StreamPath {
        clients,
        peer,
        relayed,
    })
}

/// FRAMES_PER_WRITE ChannelData frames of `payload` bytes, each padded to 4 bytes as on any
/// stream (RFC 8656 §12.5).
fn frames(payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; payload.max(16)];
    for (k, b) in p.iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(7).wrapping_add(13);
    }
    p[..4].copy_from_slice(MAGIC);
    let mut f = stun::channel_data_header(CHANNEL, p.len()).to_vec();
    f.extend_from_slice(&p);
    f.resize(f.len().div_ceil(4) * 4, 0);
    f.repeat(FRAMES_PER_WRITE)
}

/// Saturation from the clients to the peer: one thread writes batches of frames round-robin
/// on the connections (blocking: a full connection waits while the server drains the
/// others), one counts what reaches the peer (read, or dropped at its full socket).
pub fn client_to_peer(
    path: &mut StreamPath,
    server: &Server,
    payload: usize,
    warmup: Duration,
    measure: Duration,
) -> io::Result<Throughput> {
    let buf = frames(payload);
    let expect_len = payload.max(16);
    let stop_tx = AtomicBool::new(false);
    let stop_rx = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let corrupt = AtomicU64::new(0);
    let peer = &path.peer;
    let clients = &mut path.clients;
    let inodes = [sys::inode(peer.as_raw_fd())];
    std::thread::scope(|scope| -> io::Result<Throughput> {
        let rx = scope.spawn(|| {
            let mut batch = Batch::new(RX_BATCH, 2048);
            let (mut count, mut bad) = (0u64, 0u64);
            while !stop_rx.load(Ordering::Relaxed) {
                while let Ok(n) = batch.recv(peer.as_raw_fd(), RX_BATCH, libc::MSG_DONTWAIT) {
                    for i in 0..n {
                        let d = batch.received(i);
                        if d.len() != expect_len {
                            continue; // late from an earlier run (another size): not ours
                        }
                        count += 1;
                        if &d[..4] != MAGIC {
                            bad += 1;
                        }
                    }
                    if n < RX_BATCH {
                        break;
                    }
                }
                received.store(count, Ordering::Relaxed);
                corrupt.store(bad, Ordering::Relaxed);
                std::thread::sleep(RX_PERIOD);
            }
        });
        let tx = scope.spawn(|| -> io::Result<()> {
            let mut total = 0u64;
            'outer: loop {
                for c in clients.iter_mut() {
                    if stop_tx.load(Ordering::Relaxed) {
                        break 'outer;
                    }
                    c.send_all(&buf)?;
                    total += FRAMES_PER_WRITE as u64;
                    sent.store(total, Ordering::Relaxed);
                }
            }
            Ok(())
        });
        std::thread::sleep(warmup);
        let snap = || {
            (
                sent.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed) + sys::udp_drops(&inodes),
                server.cpu_ticks().unwrap_or(0),
                servers::self_cpu_ticks(),
                Instant::now(),
            )
        };
        let (s0, r0, c0, l0, t0) = snap();
        std::thread::sleep(measure);
        let (s1, r1, c1, l1, t1) = snap();
        stop_tx.store(true, Ordering::Relaxed);
        let tx_result = tx.join().expect("sender thread");
        // Let the server relay what is queued, so the next measurement starts quiet.
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
        rx.join().expect("receiver thread");
        tx_result?;
        let ticks = sys::clock_ticks() as f64;
        Ok(Throughput {
            sent: s1 - s0,
            received: r1 - r0,
            secs: (t1 - t0).as_secs_f64(),
            server_cpu_secs: (c1 - c0) as f64 / ticks,
            loadgen_cpu_secs: (l1 - l0) as f64 / ticks,
            corrupt: corrupt.load(Ordering::Relaxed),
            send_errors: 0,
            backlog_drops: 0,
        })
    })
}

/// Datagrams per sendmmsg message of the peer (UDP GSO), and messages per sendmmsg.
const GSO_SEGS: usize = 32;
const GSO_MSGS: usize = 8;

/// Counts the ChannelData frames of `payload` bytes at the start of `buf` (each padded to 4
/// bytes) and removes them, leaving a partial frame for the next read. Returns (frames of
/// that size, of which corrupt).
fn take_frames(buf: &mut Vec<u8>, payload: usize) -> (u64, u64) {
    let (mut count, mut bad, mut at) = (0u64, 0u64, 0usize);
    while buf.len() - at >= 4 {
        let len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
        let total = if buf[at] & 0xC0 == 0 {
            20 + len // a STUN message: skipped
        } else {
            4 + len.div_ceil(4) * 4
        };
        if buf.len() - at < total {
            break;
        }
        if buf[at] & 0xC0 != 0 && len == payload {
            count += 1;
            if &buf[at + 4..at + 8] != MAGIC {
                bad += 1;
            }
        }
        at += total;
    }
    buf.drain(..at);
    (count, bad)
}

/// Saturation from the peer to the clients: the peer sends with UDP GSO to the relayed
/// addresses in turn, as fast as it can; one thread reads the connections (non-blocking,
/// 64 KiB at a time) and counts whole frames. A stream server cannot drop on the stream, so
/// what it cannot take is dropped before (its UDP socket, or its write queue).
pub fn peer_to_client(
    path: &mut StreamPath,
    server: &Server,
    payload: usize,
    warmup: Duration,
    measure: Duration,
) -> io::Result<Throughput> {
    let payload = payload.max(16);
    for c in &path.clients {
        c.tcp().set_nonblocking(true)?;
    }
    let targets: Vec<(libc::sockaddr_storage, libc::socklen_t)> = path
        .relayed
        .iter()
        .map(|t| {
            // SAFETY: zeroed storage is valid.
            let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let l = sys::to_sockaddr(*t, &mut s);
            (s, l)
        })
        .collect();
    let stop_tx = AtomicBool::new(false);
    let stop_rx = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let corrupt = AtomicU64::new(0);
    let peer = &path.peer;
    let clients = &mut path.clients;
    let result = std::thread::scope(|scope| -> io::Result<Throughput> {
        let rx = scope.spawn(|| -> io::Result<()> {
            let mut scratch = vec![0u8; 64 * 1024];
            let mut pending: Vec<Vec<u8>> = clients.iter().map(|_| Vec::new()).collect();
            let (mut count, mut bad) = (0u64, 0u64);
            while !stop_rx.load(Ordering::Relaxed) {
                let mut got = 0;
                for (c, buf) in clients.iter_mut().zip(pending.iter_mut()) {
                    got += c.read_available(&mut scratch, buf)?;
                    let (k, b) = take_frames(buf, payload);
                    count += k;
                    bad += b;
                }
                received.store(count, Ordering::Relaxed);
                corrupt.store(bad, Ordering::Relaxed);
                if got == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            Ok(())
        });
        let tx = scope.spawn(|| {
            let mut gso = sys::GsoBatch::new(GSO_MSGS, GSO_SEGS, payload);
            for m in 0..gso.msgs() {
                for k in 0..gso.segs() {
                    let seg = gso.seg_mut(m, k);
                    for (j, b) in seg.iter_mut().enumerate() {
                        *b = (j as u8).wrapping_mul(7).wrapping_add(13);
                    }
                    seg[..4].copy_from_slice(MAGIC);
                }
            }
            let (mut total, mut next) = (0u64, 0usize);
            while !stop_tx.load(Ordering::Relaxed) {
                for m in 0..gso.msgs() {
                    let (s, l) = &targets[next];
                    gso.set_dest(m, Some((s, *l)));
                    next = (next + 1) % targets.len();
                }
                if let Ok(k) = gso.send(peer.as_raw_fd()) {
                    total += k as u64;
                }
                sent.store(total, Ordering::Relaxed);
            }
        });
        std::thread::sleep(warmup);
        let snap = || {
            (
                sent.load(Ordering::Relaxed),
                received.load(Ordering::Relaxed),
                server.cpu_ticks().unwrap_or(0),
                servers::self_cpu_ticks(),
                Instant::now(),
            )
        };
        let (s0, r0, c0, l0, t0) = snap();
        std::thread::sleep(measure);
        let (s1, r1, c1, l1, t1) = snap();
        stop_tx.store(true, Ordering::Relaxed);
        tx.join().expect("sender thread");
        // Read what the server still has queued, so the next measurement starts quiet.
        let mut last = received.load(Ordering::Relaxed);
        let quiet_deadline = Instant::now() + Duration::from_secs(3);
        loop {
            std::thread::sleep(Duration::from_millis(60));
            let now = received.load(Ordering::Relaxed);
            if now == last || Instant::now() > quiet_deadline {
                break;
            }
            last = now;
        }
        stop_rx.store(true, Ordering::Relaxed);
        rx.join().expect("receiver thread")?;
        let ticks = sys::clock_ticks() as f64;
        Ok(Throughput {
            sent: s1 - s0,
            received: r1 - r0,
            secs: (t1 - t0).as_secs_f64(),
            server_cpu_secs: (c1 - c0) as f64 / ticks,
            loadgen_cpu_secs: (l1 - l0) as f64 / ticks,
            corrupt: corrupt.load(Ordering::Relaxed),
            send_errors: 0,
            backlog_drops: 0,
        })
    });
    for c in &path.clients {
        c.tcp().set_nonblocking(false)?;
    }
    result
}

/// What the handshake workload measured in its window.
pub struct Handshakes {
    pub completed: u64,
    pub failed: u64,
    pub secs: f64,
    pub server_cpu_secs: f64,
    pub loadgen_cpu_secs: f64,
    pub first_error: Option<String>,
}

impl Handshakes {
    pub fn per_sec(&self) -> f64 {
        self.completed as f64 / self.secs
    }
    pub fn cpu_us_per_handshake(&self) -> f64 {
        if self.completed == 0 {
            f64::NAN
        } else {
            self.server_cpu_secs * 1e6 / self.completed as f64
        }
    }
}

/// TLS handshakes per second: THREADS clients, each in a loop connect, full handshake (no
/// resumption), a Binding answered over TLS (so the server has finished its side), close
/// with RST. Counted in the measuring window, with the server's CPU time.
pub fn handshakes(
    server: &Server,
    config: &Arc<ClientConfig>,
    warmup: Duration,
    measure: Duration,
) -> io::Result<Handshakes> {
    let remote = listen_of(server, Transport::Tls)?;
    let stop = AtomicBool::new(false);
    let completed = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let first_error = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                let mut tids = TidSource::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let r = Conn::open(Transport::Tls, i, remote, config).and_then(|mut c| {
                        c.binding(&mut tids)?;
                        c.abort();
                        Ok(())
                    });
                    match r {
                        Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e.to_string());
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
        std::thread::sleep(warmup);
        let snap = || {
            (
                completed.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                server.cpu_ticks().unwrap_or(0),
                servers::self_cpu_ticks(),
                Instant::now(),
            )
        };
        let (k0, f0, c0, l0, t0) = snap();
        std::thread::sleep(measure);
        let (k1, f1, c1, l1, t1) = snap();
        stop.store(true, Ordering::Relaxed);
        Ok(Handshakes {
            completed: k1 - k0,
            failed: f1 - f0,
            secs: (t1 - t0).as_secs_f64(),
            server_cpu_secs: (c1 - c0) as f64 / sys::clock_ticks() as f64,
            loadgen_cpu_secs: (l1 - l0) as f64 / sys::clock_ticks() as f64,
            first_error: first_error.lock().ok().and_then(|f| f.clone()),
        })
    })
}

/// Opens `n` connections (client numbers `first..first + n`) on THREADS threads, each made
/// by `open`; returns them with the seconds it took, or the first error.
pub fn open_many(
    n: usize,
    first: usize,
    open: impl Fn(usize, &mut TidSource) -> io::Result<Conn> + Sync,
) -> io::Result<(Vec<Conn>, f64)> {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let results: Vec<io::Result<Vec<Conn>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| -> io::Result<Vec<Conn>> {
                    let mut tids = TidSource::new();
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(mine);
                        }
                        mine.push(open(first + i, &mut tids)?);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut all = Vec::with_capacity(n);
    for r in results {
        all.extend(r?);
    }
    Ok((all, secs))
}

#[cfg(test)]
mod tests {
    use super::{MAGIC, take_frames};

    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x40, 0x00, (len >> 8) as u8, len as u8];
        f.extend_from_slice(MAGIC);
        f.resize(4 + len, 7);
        f.resize(4 + len.div_ceil(4) * 4, 0);
        f
    }

    #[test]
    fn counts_padded_frames_and_keeps_a_partial_one() {
        let mut buf = [frame(102), frame(102), frame(50)].concat();
        let partial = frame(102);
        buf.extend_from_slice(&partial[..10]);
        assert_eq!(take_frames(&mut buf, 102), (2, 0));
        assert_eq!(buf, partial[..10].to_vec());
        buf.extend_from_slice(&partial[10..]);
        assert_eq!(take_frames(&mut buf, 102), (1, 0));
        assert!(buf.is_empty());
    }

    #[test]
    fn skips_stun_messages_and_counts_corrupt_frames() {
        let mut stun = vec![0x01, 0x01, 0x00, 0x04];
        stun.resize(24, 0);
        let mut bad = frame(100);
        bad[4] = b'X';
        let mut buf = [stun, frame(100), bad].concat();
        assert_eq!(take_frames(&mut buf, 100), (2, 1));
        assert!(buf.is_empty());
    }
}
