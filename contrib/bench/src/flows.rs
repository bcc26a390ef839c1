//! The many-flows workload: 1,000 allocations, each with a channel to the peer, each sending
//! 40 datagrams/s of 200 B each way, one sendto per datagram on an even schedule. Unlike the
//! saturation runs (GSO bursts of 32 to one destination) nothing here arrives in runs a
//! server can batch: the pattern of many media streams at ordinary rates. Measures the
//! server's CPU per relayed packet and the loss each way.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::alloc::CHANNEL;
use crate::load::Path;
use crate::servers::Server;
use crate::stun;
use crate::sys::{self, Epoll};

pub const FLOWS: usize = 1000;
/// Datagrams per second per allocation and direction.
pub const RATE: u64 = 40;
pub const PAYLOAD: usize = 200;
const MAGIC: &[u8; 4] = b"FLOW";
/// How long a sender sleeps between looks at its schedule (40,000 datagrams/s is one every
/// 25 µs): with a 1 ns timer slack it wakes some µs later and sends the few datagrams (of
/// different flows) that fell due meanwhile; a finer step would spin the load generator's CPU.
const STEP: Duration = Duration::from_micros(50);

#[derive(Clone, Debug, Default)]
pub struct Flows {
    /// Datagrams sent over the whole run, per direction (c2p, p2c).
    pub sent: [u64; 2],
    /// Received over the whole run (after the tail was drained), plus what the kernel dropped
    /// at the load generator's full sockets (the server relayed those), per direction.
    pub received: [u64; 2],
    /// Sent and relayed within the measuring window, per direction.
    pub window_sent: [u64; 2],
    pub window_received: [u64; 2],
    pub window_secs: f64,
    pub server_cpu_secs: f64,
    pub send_errors: u64,
    pub corrupt: u64,
    pub loadgen_socket_drops: u64,
}

impl Flows {
    pub fn loss(&self, dir: usize) -> f64 {
        if self.sent[dir] == 0 {
            f64::NAN
        } else {
            1.0 - (self.received[dir] as f64 / self.sent[dir] as f64).min(1.0)
        }
    }

    /// Server CPU per packet relayed in the window, both directions together (one process
    /// does both; its CPU time cannot be split).
    pub fn cpu_us_per_packet(&self) -> f64 {
        let relayed = self.window_received[0] + self.window_received[1];
        if relayed == 0 {
            f64::NAN
        } else {
            self.server_cpu_secs * 1e6 / relayed as f64
        }
    }

    pub fn server_cpu_share(&self) -> f64 {
        self.server_cpu_secs / self.window_secs
    }

    /// Offered datagrams/s in the window, per direction (the schedule asks for FLOWS × RATE).
    pub fn offered_pps(&self, dir: usize) -> f64 {
        self.window_sent[dir] as f64 / self.window_secs
    }
}

/// The datagram of one direction: ChannelData from a client, a raw payload from the peer.
fn frame(client_to_peer: bool) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD];
    for (k, b) in p.iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(7).wrapping_add(13);
    }
    p[..4].copy_from_slice(MAGIC);
    if client_to_peer {
        let mut f = stun::channel_data_header(CHANNEL, p.len()).to_vec();
        f.extend_from_slice(&p);
        f
    } else {
        p
    }
}

/// Makes the calling thread's sleeps end close to when they were asked to (the default
/// 50 µs slack would double every step).
fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; it only affects this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Runs the schedule on `path` (set up with FLOWS allocations) against `server`: warmup,
/// then the measuring window, then waits for the tail to arrive.
pub fn run(path: &Path, server: &Server, warmup: Duration, measure: Duration) -> io::Result<Flows> {
    // drain() leaves the sockets blocking; the receiver drains them non-blocking.
    crate::load::drain(path);
    for c in &path.clients {
        c.set_nonblocking(true)?;
    }
    path.peer.set_nonblocking(true)?;
    let n = path.clients.len();
    let interval_ns = 1e9 / (n as f64 * RATE as f64);
    let total_secs = (warmup + measure).as_secs_f64();
    let per_dir = (total_secs * 1e9 / interval_ns) as u64;

    let sent = [AtomicU64::new(0), AtomicU64::new(0)];
    let received = [AtomicU64::new(0), AtomicU64::new(0)];
    let send_errors = AtomicU64::new(0);
    let corrupt = AtomicU64::new(0);
    let stop_rx = AtomicBool::new(false);
    // [c2p: the peer's socket, p2c: the clients' sockets]
    let inodes: [Vec<u64>; 2] = [
        vec![sys::inode(path.peer.as_raw_fd())],
        path.clients
            .iter()
            .map(|s| sys::inode(s.as_raw_fd()))
            .collect(),
    ];
    let drops0 = [sys::udp_drops(&inodes[0]), sys::udp_drops(&inodes[1])];

    let epoll = Epoll::new(256)?;
    for (i, c) in path.clients.iter().enumerate() {
        epoll.add(c.as_raw_fd(), i as u64)?;
    }
    epoll.add(path.peer.as_raw_fd(), n as u64)?;
    let mut epoll = epoll;

    std::thread::scope(|scope| -> io::Result<Flows> {
        // Receiver: drains every ready socket (non-blocking) and counts by direction.
        let rx = scope.spawn(|| -> io::Result<()> {
            let mut ready = Vec::new();
            let mut buf = [0u8; 2048];
            let c2p_header = if path.peer_sees_header { 4 } else { 0 };
            let p2c_header = if path.client_sees_header { 4 } else { 0 };
            let mut counts = [0u64; 2];
            let mut bad = 0u64;
            while !stop_rx.load(Ordering::Relaxed) {
                epoll.wait(5, &mut ready)?;
                for &token in &ready {
                    let i = token as usize;
                    let (socket, dir, offset): (&UdpSocket, usize, usize) = if i == n {
                        (&path.peer, 0, c2p_header)
                    } else {
                        (&path.clients[i], 1, p2c_header)
                    };
                    while let Ok(len) = socket.recv(&mut buf) {
                        if len != PAYLOAD + offset {
                            continue;
                        }
                        if &buf[offset..offset + 4] == MAGIC {
                            counts[dir] += 1;
                        } else {
                            bad += 1;
                        }
                    }
                }
                received[0].store(counts[0], Ordering::Relaxed);
                received[1].store(counts[1], Ordering::Relaxed);
                corrupt.store(bad, Ordering::Relaxed);
            }
            Ok(())
        });

        let start = Instant::now() + Duration::from_millis(20);
        // One sender per direction, each on its own even schedule: datagram k is due at
        // start + k × interval and goes from (or to) flow k mod N, so every flow sends every
        // 25 ms and the flows are spread evenly over those 25 ms. One send per datagram.
        let sender = |client_to_peer: bool| {
            let sent = &sent[usize::from(!client_to_peer)];
            let send_errors = &send_errors;
            move || {
                fine_timer_slack();
                let mut datagram = frame(client_to_peer);
                let offset = if client_to_peer { 4 } else { 0 };
                let mut k = 0u64;
                let mut errors = 0u64;
                while k < per_dir {
                    let now = Instant::now();
                    let due = if now < start {
                        0
                    } else {
                        (((now - start).as_nanos() as f64 / interval_ns) as u64 + 1).min(per_dir)
                    };
                    while k < due {
                        let flow = (k % n as u64) as usize;
                        datagram[offset + 4..offset + 12].copy_from_slice(&k.to_be_bytes());
                        let r = if client_to_peer {
                            path.clients[flow].send(&datagram)
                        } else {
                            path.peer.send_to(&datagram, path.peer_targets[flow])
                        };
                        if r.is_err() {
                            errors += 1;
                        }
                        k += 1;
                    }
                    sent.store(k, Ordering::Relaxed);
                    std::thread::sleep(STEP);
                }
                send_errors.fetch_add(errors, Ordering::Relaxed);
            }
        };
        let c2p = scope.spawn(sender(true));
        let p2c = scope.spawn(sender(false));

        let relayed = |d: usize| received[d].load(Ordering::Relaxed);
        std::thread::sleep((start + warmup).saturating_duration_since(Instant::now()));
        let snap = || {
            (
                [
                    sent[0].load(Ordering::Relaxed),
                    sent[1].load(Ordering::Relaxed),
                ],
                [relayed(0), relayed(1)],
                server.cpu_ticks().unwrap_or(0),
                Instant::now(),
            )
        };
        let (s0, r0, c0, t0) = snap();
        std::thread::sleep(measure);
        let (s1, r1, c1, t1) = snap();
        c2p.join()
            .map_err(|_| io::Error::other("c2p sender panicked"))?;
        p2c.join()
            .map_err(|_| io::Error::other("p2c sender panicked"))?;
        // The tail: wait until nothing more arrives (bounded).
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = (relayed(0), relayed(1));
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = (relayed(0), relayed(1));
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        stop_rx.store(true, Ordering::Relaxed);
        rx.join()
            .map_err(|_| io::Error::other("receiver panicked"))??;
        let drops = [
            sys::udp_drops(&inodes[0]).saturating_sub(drops0[0]),
            sys::udp_drops(&inodes[1]).saturating_sub(drops0[1]),
        ];
        let ticks = sys::clock_ticks() as f64;
        Ok(Flows {
            sent: [
                sent[0].load(Ordering::Relaxed),
                sent[1].load(Ordering::Relaxed),
            ],
            received: [relayed(0) + drops[0], relayed(1) + drops[1]],
            window_sent: [s1[0] - s0[0], s1[1] - s0[1]],
            window_received: [r1[0] - r0[0], r1[1] - r0[1]],
            window_secs: (t1 - t0).as_secs_f64(),
            server_cpu_secs: c1.saturating_sub(c0) as f64 / ticks,
            send_errors: send_errors.load(Ordering::Relaxed),
            corrupt: corrupt.load(Ordering::Relaxed),
            loadgen_socket_drops: drops[0] + drops[1],
        })
    })
}
