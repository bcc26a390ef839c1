//! Batched datagram I/O: one `recvmmsg` reads up to `BATCH` datagrams from a socket into fixed
//! slots, each with the core's headroom in front of the payload; the core's Forward/Deliver
//! decisions are queued as slices of those slots, and one `sendmmsg` per sending socket
//! sends them. A relayed datagram is copied only by the kernel: into its slot, and out of it.
//!
//! Consecutive datagrams of one socket to one destination with one size (a media stream
//! in a burst) go out as one UDP GSO message (`UDP_SEGMENT`): the kernel routes and
//! processes the burst once and cuts it into the same datagrams at the end (or the NIC
//! does). The benchmark (contrib/bench) measured both steps: batching removed the two
//! syscalls per datagram; GSO then cut the kernel's per-datagram send work.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::RawFd;

use crate::core::{HEADROOM, TAILROOM};

/// Datagrams per recvmmsg, and so the budget of one socket per loop turn: a flooded socket
/// yields to the others after this many.
pub(super) const BATCH: usize = 64;
/// The largest UDP payload (65,507 bytes over IPv4, 65,527 over IPv6) fits in a slot; the
/// slots are allocated zeroed and untouched, so only the bytes datagrams actually used
/// become resident memory.
const SLOT_PAYLOAD: usize = 65536;
/// Slot stride, a multiple of 64 (cache line).
const SLOT: usize = (HEADROOM + SLOT_PAYLOAD + TAILROOM).next_multiple_of(64);
/// The kernel's limit of segments per GSO send (UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per GSO send: the total must fit UDP's 16-bit length.
const GSO_MAX_BYTES: usize = 65000;
/// Control buffer of one message: a cmsghdr and the u16 segment size (CMSG_SPACE(2)),
/// in u64 words for alignment.
const CMSG_WORDS: usize = 3;

/// A datagram to send: a range of a slot, to `dest` (already in `dests[j]`), from the
/// socket with slab key `socket`.
#[derive(Clone, Copy)]
struct Pending {
    socket: usize,
    dest: SocketAddr,
    /// Offset of the first byte in `bufs`.
    offset: usize,
    len: usize,
}

/// One message of a sendmmsg: `segments` datagrams of `segment_len` bytes (the last may be
/// shorter) to one destination; more than one is a GSO message.
#[derive(Clone, Copy, Default)]
struct Message {
    first: usize,
    segments: usize,
    segment_len: usize,
    bytes: usize,
    /// A shorter last segment ended it.
    closed: bool,
}

/// Slots, headers and address storage, set up once. The headers point into the boxed
/// slices, whose heap memory never moves.
pub(super) struct Batch {
    bufs: Box<[u8]>,
    recv_iovs: Box<[libc::iovec]>,
    sources: Box<[libc::sockaddr_storage]>,
    recv_hdrs: Box<[libc::mmsghdr]>,
    pending: Vec<Pending>,
    dests: Box<[libc::sockaddr_storage]>,
    dest_lens: Box<[libc::socklen_t]>,
    send_iovs: Box<[libc::iovec]>,
    send_hdrs: Box<[libc::mmsghdr]>,
    messages: Box<[Message]>,
    cmsgs: Box<[[u64; CMSG_WORDS]]>,
}

// SAFETY: the raw pointers in the headers point only into the batch's own heap memory,
// which moves with it.
unsafe impl Send for Batch {}

/// Outcome of sending the queued datagrams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flushed {
    pub sent: u64,
    pub failed: u64,
}

impl Batch {
    pub(super) fn new() -> Batch {
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
            messages: vec![Message::default(); BATCH].into_boxed_slice(),
            cmsgs: vec![[0; CMSG_WORDS]; BATCH].into_boxed_slice(),
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
            write_segment_cmsg(&mut batch.cmsgs[i]);
        }
        batch
    }

    /// Reads up to BATCH datagrams from `fd` (non-blocking). Ok(0) never happens: an empty
    /// socket is `WouldBlock`.
    pub(super) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for hdr in self.recv_hdrs.iter_mut() {
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every header points at live iovecs, buffers and address storage of self.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT as _, // c_int on glibc, c_uint on musl
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
    pub(super) fn datagram(&mut self, i: usize) -> (Option<SocketAddr>, usize, &mut [u8]) {
        let len = (self.recv_hdrs[i].msg_len as usize).min(SLOT_PAYLOAD);
        let source = from_sockaddr(&self.sources[i]);
        (source, len, &mut self.bufs[i * SLOT..(i + 1) * SLOT])
    }

    /// Queues `range` of slot `i` to be sent from socket `socket` to `dest` at the next flush.
    /// False (and nothing queued) if the queue is full or the range is not inside the slot,
    /// neither of which can happen with one send per received datagram.
    #[must_use]
    pub(super) fn queue(
        &mut self,
        i: usize,
        range: Range<usize>,
        socket: usize,
        dest: SocketAddr,
    ) -> bool {
        let j = self.pending.len();
        if j >= BATCH || range.end > SLOT || range.start > range.end {
            return false;
        }
        self.dest_lens[j] = to_sockaddr(dest, &mut self.dests[j]);
        self.pending.push(Pending {
            socket,
            dest,
            offset: i * SLOT + range.start,
            len: range.len(),
        });
        true
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends everything queued: one sendmmsg per socket, in queue order within a socket
    /// (so each flow keeps its order), runs to one destination as GSO messages. `fd_of` gives
    /// the descriptor of a slab key (None: the socket is gone, its datagrams are dropped and
    /// counted as failed).
    pub(super) fn flush(&mut self, fd_of: impl Fn(usize) -> Option<RawFd>) -> Flushed {
        let mut out = Flushed::default();
        let n = self.pending.len();
        // Bit j: pending[j] was put in a message (BATCH = 64 fits a u64).
        let mut taken: u64 = 0;
        for first in 0..n {
            if taken & (1 << first) != 0 {
                continue;
            }
            let socket = self.pending[first].socket;
            let mut messages = 0;
            let mut iovs = 0;
            for j in first..n {
                let p = self.pending[j];
                if taken & (1 << j) != 0 || p.socket != socket {
                    continue;
                }
                taken |= 1 << j;
                let extends = messages > 0 && {
                    let m = &self.messages[messages - 1];
                    let q = &self.pending[m.first];
                    !m.closed
                        && q.dest == p.dest
                        && p.len <= m.segment_len
                        && m.segments < GSO_MAX_SEGMENTS
                        && m.bytes + p.len <= GSO_MAX_BYTES
                };
                if extends {
                    let m = &mut self.messages[messages - 1];
                    m.segments += 1;
                    m.bytes += p.len;
                    m.closed = p.len < m.segment_len;
                } else {
                    self.messages[messages] = Message {
                        first: j,
                        segments: 1,
                        segment_len: p.len,
                        bytes: p.len,
                        closed: p.len == 0,
                    };
                    messages += 1;
                }
                self.send_iovs[iovs] = libc::iovec {
                    iov_base: self.bufs[p.offset..].as_mut_ptr().cast(),
                    iov_len: p.len,
                };
                iovs += 1;
            }
            let Some(fd) = fd_of(socket) else {
                out.failed += iovs as u64;
                continue;
            };
            self.build_headers(messages);
            let (sent, failed) = self.send_all(fd, messages);
            out.sent += sent;
            out.failed += failed;
        }
        self.pending.clear();
        out
    }

    /// Points the first `messages` headers at their iovecs (laid out in message order),
    /// destinations and, for GSO messages, their segment size.
    fn build_headers(&mut self, messages: usize) {
        let mut iov = 0;
        for k in 0..messages {
            let m = self.messages[k];
            let hdr = &mut self.send_hdrs[k].msg_hdr;
            hdr.msg_iov = &mut self.send_iovs[iov];
            hdr.msg_iovlen = m.segments as _;
            hdr.msg_name = (&mut self.dests[m.first] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = self.dest_lens[m.first];
            if m.segments > 1 {
                let cmsg = &mut self.cmsgs[k];
                set_segment_size(cmsg, m.segment_len as u16);
                hdr.msg_control = cmsg.as_mut_ptr().cast();
                hdr.msg_controllen = mem::size_of_val(cmsg) as _;
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
            iov += m.segments;
        }
    }

    /// sendmmsg until every message is sent or refused; returns (datagrams sent, failed).
    /// A refused message (the kernel reports the first failure of a batch as the call's
    /// error: EAGAIN on a full send buffer, ECONNREFUSED after an ICMP error, EMSGSIZE under
    /// DF) is dropped and counted, as a lost UDP datagram would be, and the rest still go.
    /// A GSO message the route refuses (EINVAL, EIO: segments above its MTU, no checksum
    /// offload) is retried as separate datagrams.
    fn send_all(&mut self, fd: RawFd, messages: usize) -> (u64, u64) {
        let (mut sent, mut failed) = (0u64, 0u64);
        let mut at = 0;
        while at < messages {
            // SAFETY: the headers point at live iovecs, buffers, addresses and control
            // buffers of the batch.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_hdrs[at..].as_mut_ptr(),
                    (messages - at) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                for m in &self.messages[at..at + r as usize] {
                    sent += m.segments as u64;
                }
                at += r as usize;
                continue;
            }
            let error = io::Error::last_os_error();
            if r < 0 && error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let m = self.messages[at];
            if m.segments > 1 && matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EIO)) {
                let (s, f) = self.send_separately(fd, at);
                sent += s;
                failed += f;
            } else {
                failed += m.segments as u64;
            }
            at += 1;
        }
        (sent, failed)
    }

    /// Sends the segments of GSO message `k` as separate datagrams.
    fn send_separately(&mut self, fd: RawFd, k: usize) -> (u64, u64) {
        let (mut sent, mut failed) = (0, 0);
        let hdr = self.send_hdrs[k].msg_hdr;
        for s in 0..self.messages[k].segments {
            let mut single = hdr;
            // SAFETY: msg_iov points at `segments` consecutive iovecs of the batch.
            single.msg_iov = unsafe { hdr.msg_iov.add(s) };
            single.msg_iovlen = 1;
            single.msg_control = std::ptr::null_mut();
            single.msg_controllen = 0;
            // SAFETY: as in send_all.
            if unsafe { libc::sendmsg(fd, &single, 0) } >= 0 {
                sent += 1;
            } else {
                failed += 1;
            }
        }
        (sent, failed)
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

/// Writes the header of a UDP_SEGMENT control message (the size is set per send).
fn write_segment_cmsg(buf: &mut [u64; CMSG_WORDS]) {
    let mut hdr: libc::msghdr = unsafe_zeroed_msghdr();
    hdr.msg_control = buf.as_mut_ptr().cast();
    hdr.msg_controllen = mem::size_of_val(buf) as _;
    // SAFETY: the control buffer is CMSG_SPACE(2) bytes, 8-aligned, so CMSG_FIRSTHDR is
    // inside it and has room for the u16 after the header.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&hdr);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
    }
}

fn set_segment_size(buf: &mut [u64; CMSG_WORDS], size: u16) {
    let mut hdr: libc::msghdr = unsafe_zeroed_msghdr();
    hdr.msg_control = buf.as_mut_ptr().cast();
    hdr.msg_controllen = mem::size_of_val(buf) as _;
    // SAFETY: as in write_segment_cmsg.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&hdr);
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
    }
}

fn unsafe_zeroed_msghdr() -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr.
    unsafe { mem::zeroed() }
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
            assert!(batch.queue(
                i,
                HEADROOM..HEADROOM + len,
                socket,
                sink.local_addr().unwrap(),
            ));
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
    fn control_buffer_fits_a_segment_size() {
        // SAFETY: a pure computation.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
        assert!(space <= CMSG_WORDS * 8);
    }

    /// Runs of one size to one destination become GSO messages (a shorter datagram ends a
    /// run, a longer one starts the next); the receiver still gets each datagram whole, in
    /// order, whatever the grouping.
    #[test]
    fn segmented_sends_deliver_the_same_datagrams_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sizes = [100usize, 100, 100, 50, 100, 200, 200, 7, 1, 1];
        for (k, size) in sizes.iter().enumerate() {
            tx.send_to(&vec![k as u8; *size], rx.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), sizes.len());
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for (i, size) in sizes.iter().enumerate() {
            assert!(batch.queue(i, HEADROOM..HEADROOM + size, 0, sink.local_addr().unwrap()));
        }
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        let flushed = batch.flush(|_| Some(out.as_raw_fd()));
        assert_eq!(flushed.sent, sizes.len() as u64);
        let mut buf = [0u8; 512];
        for (k, size) in sizes.iter().enumerate() {
            let len = sink.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], &vec![k as u8; *size][..], "datagram {k}");
        }
    }

    #[test]
    fn a_vanished_socket_counts_its_datagrams_as_failed() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        let mut batch = Batch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert!(batch.queue(0, HEADROOM..HEADROOM + 1, 7, tx.local_addr().unwrap()));
        assert_eq!(batch.flush(|_| None), Flushed { sent: 0, failed: 1 });
        let err = batch.recv(rx.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
