//! Batched datagram I/O: one `recvmmsg` reads up to `BATCH` datagrams from a socket into fixed
//! slots, each with the core's headroom in front of the payload; the core's Forward/Deliver
//! decisions are queued as slices of those slots, and one `sendmmsg` per destination socket
//! sends them. A relayed datagram is copied only by the kernel: into its slot, and out of it.
//!
//! On loopback the kernel work per datagram (socket lookup, buffer accounting, copy) is what
//! remains; batching removes the per-datagram syscall entry and exit on both sides, which
//! the benchmark (contrib/bench) measured as the largest user-space-controllable cost.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::RawFd;

use crate::core::{HEADROOM, TAILROOM};

/// Datagrams per recvmmsg, and so the budget of one socket per loop turn: a flooded socket
/// yields to the others after this many.
pub const BATCH: usize = 64;
/// The largest UDP payload (65,507 bytes over IPv4, 65,527 over IPv6) fits in a slot; the
/// slots are allocated zeroed and untouched, so only the bytes datagrams actually used
/// become resident memory.
const SLOT_PAYLOAD: usize = 65536;
/// Slot stride, a multiple of 64 (cache line).
const SLOT: usize = (HEADROOM + SLOT_PAYLOAD + TAILROOM).next_multiple_of(64);

/// A datagram to send: a range of a slot, to `dest` (already in `names[i]`), from the socket
/// with slab key `socket`.
#[derive(Clone, Copy)]
struct Pending {
    socket: usize,
    /// Offset of the first byte in `bufs`.
    offset: usize,
    len: usize,
}

/// Slots, headers and address storage, set up once. The headers point into the boxed
/// slices, whose heap memory never moves.
pub struct Batch {
    bufs: Box<[u8]>,
    recv_iovs: Box<[libc::iovec]>,
    sources: Box<[libc::sockaddr_storage]>,
    recv_hdrs: Box<[libc::mmsghdr]>,
    pending: Vec<Pending>,
    dests: Box<[libc::sockaddr_storage]>,
    dest_lens: Box<[libc::socklen_t]>,
    send_iovs: Box<[libc::iovec]>,
    send_hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers in the headers point only into the batch's own heap memory,
// which moves with it.
unsafe impl Send for Batch {}

/// Outcome of sending the queued datagrams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub sent: u64,
    pub failed: u64,
}

impl Batch {
    pub fn new() -> Batch {
        // SAFETY (all `mem::zeroed` below): all-zero is a valid value of these C structs.
        let zero_iov: libc::iovec = unsafe { mem::zeroed() };
        let zero_name: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        let mut batch = Batch {
            bufs: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            recv_iovs: vec![zero_iov; BATCH].into_boxed_slice(),
            sources: vec![zero_name; BATCH].into_boxed_slice(),
            recv_hdrs: vec![zero_hdr; BATCH].into_boxed_slice(),
            pending: Vec::with_capacity(BATCH),
            dests: vec![zero_name; BATCH].into_boxed_slice(),
            dest_lens: vec![0; BATCH].into_boxed_slice(),
            send_iovs: vec![zero_iov; BATCH].into_boxed_slice(),
            send_hdrs: vec![zero_hdr; BATCH].into_boxed_slice(),
        };
        for i in 0..BATCH {
            // Every datagram lands HEADROOM bytes into its slot, client or peer alike.
            batch.recv_iovs[i] = libc::iovec {
                iov_base: batch.bufs[i * SLOT + HEADROOM..].as_mut_ptr().cast(),
                iov_len: SLOT_PAYLOAD,
            };
            let hdr = &mut batch.recv_hdrs[i].msg_hdr;
            hdr.msg_iov = &mut batch.recv_iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_name = (&mut batch.sources[i] as *mut libc::sockaddr_storage).cast();
            let hdr = &mut batch.send_hdrs[i].msg_hdr;
            hdr.msg_iov = &mut batch.send_iovs[i];
            hdr.msg_iovlen = 1;
        }
        batch
    }

    /// Reads up to BATCH datagrams from `fd` (non-blocking). Ok(0) never happens: an empty
    /// socket is `WouldBlock`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for hdr in self.recv_hdrs.iter_mut() {
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every header points at live iovecs, buffers and address storage of self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Datagram `i` of the last `recv`: its source, its length, and its whole slot (the
    /// payload at `HEADROOM..HEADROOM + len`, TAILROOM spare bytes after the largest one).
    pub fn datagram(&mut self, i: usize) -> (Option<SocketAddr>, usize, &mut [u8]) {
        let len = (self.recv_hdrs[i].msg_len as usize).min(SLOT_PAYLOAD);
        let source = from_sockaddr(&self.sources[i]);
        (source, len, &mut self.bufs[i * SLOT..(i + 1) * SLOT])
    }

    /// Queues `range` of slot `i` to be sent from socket `socket` to `dest` at the next flush.
    pub fn queue(&mut self, i: usize, range: Range<usize>, socket: usize, dest: SocketAddr) {
        let j = self.pending.len();
        if j >= BATCH || range.end > SLOT || range.start > range.end {
            return; // one per received datagram: cannot happen
        }
        self.dest_lens[j] = to_sockaddr(dest, &mut self.dests[j]);
        self.pending.push(Pending {
            socket,
            offset: i * SLOT + range.start,
            len: range.len(),
        });
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends everything queued: one sendmmsg per socket, in queue order within a socket
    /// (so each flow keeps its order). `fd_of` gives the descriptor of a slab key (None: the
    /// socket is gone, its datagrams are dropped and counted as failed).
    pub fn flush(&mut self, fd_of: impl Fn(usize) -> Option<RawFd>) -> Flushed {
        let mut out = Flushed::default();
        let n = self.pending.len();
        // Bit j: pending[j] was handed to a sendmmsg (BATCH = 64 fits a u64).
        let mut taken: u64 = 0;
        for first in 0..n {
            if taken & (1 << first) != 0 {
                continue;
            }
            let socket = self.pending[first].socket;
            let mut count = 0;
            for j in first..n {
                let p = self.pending[j];
                if taken & (1 << j) != 0 || p.socket != socket {
                    continue;
                }
                taken |= 1 << j;
                self.send_iovs[count] = libc::iovec {
                    iov_base: self.bufs[p.offset..].as_mut_ptr().cast(),
                    iov_len: p.len,
                };
                let hdr = &mut self.send_hdrs[count].msg_hdr;
                hdr.msg_name = (&mut self.dests[j] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = self.dest_lens[j];
                count += 1;
            }
            match fd_of(socket) {
                Some(fd) => {
                    let (sent, failed) = send_all(fd, &mut self.send_hdrs[..count]);
                    out.sent += sent;
                    out.failed += failed;
                }
                None => out.failed += count as u64,
            }
        }
        self.pending.clear();
        out
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

/// sendmmsg until every header is sent or refused. A refused datagram (the kernel reports
/// the first failure of a batch as the call's error: EAGAIN on a full send buffer,
/// ECONNREFUSED after an ICMP error, EMSGSIZE under DF) is dropped and counted, as a lost
/// UDP datagram would be; the rest of the batch is still sent.
fn send_all(fd: RawFd, hdrs: &mut [libc::mmsghdr]) -> (u64, u64) {
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut at = 0;
    while at < hdrs.len() {
        // SAFETY: the headers point at live iovecs, buffers and addresses of the batch.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                hdrs[at..].as_mut_ptr(),
                (hdrs.len() - at) as libc::c_uint,
                0,
            )
        };
        if r > 0 {
            sent += r as u64;
            at += r as usize;
        } else if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            failed += 1;
            at += 1;
        }
    }
    (sent, failed)
}

fn to_sockaddr(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn sockaddr_round_trips() {
        for text in ["127.0.0.1:3478", "[::1]:5000", "[fe80::1%2]:9"] {
            let addr: SocketAddr = text.parse().unwrap();
            // SAFETY: all-zero is valid.
            let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
            to_sockaddr(addr, &mut storage);
            assert_eq!(from_sockaddr(&storage), Some(addr));
        }
    }

    /// Datagrams from two senders, read in one recvmmsg, land at HEADROOM in their slots
    /// with their sources; queued slices go out grouped per socket, each flow in order.
    #[test]
    fn receives_and_sends_batches_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        for k in 0..3u8 {
            a.send_to(&[b'a', k], rx.local_addr().unwrap()).unwrap();
            b.send_to(&[b'b', k, k], rx.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::new();
        let n = batch.recv(rx.as_raw_fd()).unwrap();
        assert_eq!(n, 6);
        let out1 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let out2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for i in 0..n {
            let (source, len, slot) = batch.datagram(i);
            let source = source.unwrap();
            let payload = &slot[HEADROOM..HEADROOM + len];
            let expected = if source == a.local_addr().unwrap() {
                vec![b'a', payload[1]]
            } else {
                vec![b'b', payload[1], payload[1]]
            };
            assert_eq!(payload, &expected[..]);
            // Interleave the two output sockets: a's datagrams out of out1, b's out of out2.
            let socket = if payload[0] == b'a' { 1 } else { 2 };
            batch.queue(
                i,
                HEADROOM..HEADROOM + len,
                socket,
                sink.local_addr().unwrap(),
            );
        }
        let fds = [0, out1.as_raw_fd(), out2.as_raw_fd()];
        let flushed = batch.flush(|key| fds.get(key).copied());
        assert_eq!(flushed, Flushed { sent: 6, failed: 0 });
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        for _ in 0..6 {
            let (len, from) = sink.recv_from(&mut buf).unwrap();
            got.push((from, buf[..len].to_vec()));
        }
        let from1: Vec<_> = got
            .iter()
            .filter(|(f, _)| *f == out1.local_addr().unwrap())
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(from1, vec![vec![b'a', 0], vec![b'a', 1], vec![b'a', 2]]);
        let from2: Vec<_> = got
            .iter()
            .filter(|(f, _)| *f == out2.local_addr().unwrap())
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(
            from2,
            vec![vec![b'b', 0, 0], vec![b'b', 1, 1], vec![b'b', 2, 2]]
        );
        assert!(!batch.has_pending());
    }

    #[test]
    fn a_vanished_socket_counts_its_datagrams_as_failed() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        let mut batch = Batch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        batch.queue(0, HEADROOM..HEADROOM + 1, 7, tx.local_addr().unwrap());
        assert_eq!(batch.flush(|_| None), Flushed { sent: 0, failed: 1 });
        let err = batch.recv(rx.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
