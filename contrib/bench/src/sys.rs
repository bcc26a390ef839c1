//! Thin wrappers over the Linux calls the benchmark needs and std does not offer:
//! recvmmsg/sendmmsg batches, epoll, CPU affinity, socket buffer sizes, rlimits.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Socket buffers asked for on every benchmark socket (the relay asks for the same 4 MiB;
/// the kernel caps it at net.core.{r,w}mem_max).
pub const SOCKET_BUFFER: usize = 4 << 20;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Pins the calling thread (and threads it spawns later) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(libc::sched_setaffinity(
            0,
            mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// Pins the calling thread (and threads it spawns later) to a set of CPUs.
pub fn pin_to_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        check(libc::sched_setaffinity(
            0,
            mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// Best effort: nice -20 for this process and the children it starts, so that other work
/// on a shared machine disturbs the measurement less. With scheduler autogroups (the
/// default on desktop and many server kernels) nice only ranks tasks within their session's
/// group, so the group's nice is raised too, and restored when the guard drops. Needs root
/// (CAP_SYS_NICE); without it nothing changes.
pub fn raise_priority() -> PriorityGuard {
    // SAFETY: no preconditions.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, -20);
    }
    const AUTOGROUP: &str = "/proc/self/autogroup";
    let previous = std::fs::read_to_string(AUTOGROUP).ok().and_then(|s| {
        s.split_whitespace()
            .last()
            .and_then(|n| n.parse::<i32>().ok())
    });
    let raised = previous.is_some() && std::fs::write(AUTOGROUP, "-20").is_ok();
    PriorityGuard {
        autogroup_nice: if raised { previous } else { None },
    }
}

pub struct PriorityGuard {
    autogroup_nice: Option<i32>,
}

impl Drop for PriorityGuard {
    fn drop(&mut self) {
        if let Some(nice) = self.autogroup_nice {
            let _ = std::fs::write("/proc/self/autogroup", nice.to_string());
        }
    }
}

/// Number of CPUs online (whatever this process is pinned to).
pub fn configured_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

/// Number of CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Raises the soft limit of open files to the hard limit (10,000 client sockets).
pub fn raise_nofile() -> io::Result<u64> {
    // SAFETY: plain struct out-parameter.
    unsafe {
        let mut lim: libc::rlimit = mem::zeroed();
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
        lim.rlim_cur = lim.rlim_max;
        check(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
        Ok(lim.rlim_cur)
    }
}

/// Clock ticks per second of /proc/PID/stat's utime and stime.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a c_int option of the right size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A UDP socket bound to `addr` with 4 MiB buffers (best effort).
pub fn udp_bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let fd = socket.as_raw_fd();
    let _ = setsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        SOCKET_BUFFER as libc::c_int,
    );
    let _ = setsockopt_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        SOCKET_BUFFER as libc::c_int,
    );
    Ok(socket)
}

/// A UDP socket for client number `i`, on its own loopback address (127.1.x.y, all of
/// 127.0.0.0/8 is local), as clients on the Internet come from many addresses: servers limit
/// unauthenticated answers (401) per source address, and 10,000 clients behind one address
/// would measure that limit, not the allocation rate.
pub fn udp_client(i: usize) -> io::Result<UdpSocket> {
    let (hi, lo) = ((i / 250) % 250, i % 250);
    udp_bind(SocketAddr::from(([127, 1, hi as u8, lo as u8 + 1], 0)))
}

/// A loopback UDP socket on a port the kernel picks.
pub fn udp_loopback() -> io::Result<UdpSocket> {
    udp_bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

pub fn to_sockaddr(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large enough and suitably aligned for both families.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let sin =
                    &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                *sin = mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                let sin6 =
                    &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                *sin6 = mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

pub fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which view is valid.
    unsafe {
        match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                let sin = &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6 =
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
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
}

/// A batch of datagram slots for recvmmsg/sendmmsg: `capacity` buffers of `slot` bytes each,
/// with their iovecs, headers and address storage set up once.
pub struct Batch {
    slot: usize,
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside point into the batch's own heap buffers.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(capacity: usize, slot: usize) -> Batch {
        let mut b = Batch {
            slot,
            bufs: vec![0u8; capacity * slot],
            // SAFETY: all-zero is a valid value for these C structs.
            iovs: vec![unsafe { mem::zeroed() }; capacity],
            names: vec![unsafe { mem::zeroed() }; capacity],
            hdrs: vec![unsafe { mem::zeroed() }; capacity],
        };
        for i in 0..capacity {
            b.iovs[i].iov_base = b.bufs[i * slot..].as_mut_ptr().cast();
            b.iovs[i].iov_len = slot;
        }
        for i in 0..capacity {
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        b
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// The buffer of slot `i` (its full size).
    pub fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * self.slot..(i + 1) * self.slot]
    }

    /// The datagram received into slot `i`.
    pub fn received(&self, i: usize) -> &[u8] {
        let len = self.hdrs[i].msg_len as usize;
        &self.bufs[i * self.slot..i * self.slot + len.min(self.slot)]
    }

    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        from_sockaddr(&self.names[i])
    }

    /// Sets the length of the datagram in slot `i` for the next send.
    pub fn set_len(&mut self, i: usize, len: usize) {
        self.iovs[i].iov_len = len.min(self.slot);
    }

    /// Sets the destination of slot `i` (None: the socket is connected).
    pub fn set_dest(&mut self, i: usize, dest: Option<SocketAddr>) {
        match dest {
            Some(addr) => {
                let len = to_sockaddr(addr, &mut self.names[i]);
                self.hdrs[i].msg_hdr.msg_name =
                    (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                self.hdrs[i].msg_hdr.msg_namelen = len;
            }
            None => {
                self.hdrs[i].msg_hdr.msg_name = std::ptr::null_mut();
                self.hdrs[i].msg_hdr.msg_namelen = 0;
            }
        }
    }

    /// Sets the destination of slot `i` from a prepared sockaddr (no conversion per packet).
    pub fn set_dest_raw(&mut self, i: usize, addr: &libc::sockaddr_storage, len: libc::socklen_t) {
        self.names[i] = *addr;
        self.hdrs[i].msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
        self.hdrs[i].msg_hdr.msg_namelen = len;
    }

    /// recvmmsg into up to `max` slots; Ok(0) never happens (EAGAIN is an error).
    pub fn recv(&mut self, fd: RawFd, max: usize, flags: libc::c_int) -> io::Result<usize> {
        let n = max.min(self.capacity());
        for i in 0..n {
            self.iovs[i].iov_len = self.slot;
            self.hdrs[i].msg_hdr.msg_name =
                (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            self.hdrs[i].msg_hdr.msg_namelen =
                mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every header points at live buffers of this batch.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        check(r).map(|r| r as usize)
    }

    /// sendmmsg of slots `from..to` (lengths and destinations set beforehand); returns how
    /// many were sent.
    pub fn send(
        &mut self,
        fd: RawFd,
        from: usize,
        to: usize,
        flags: libc::c_int,
    ) -> io::Result<usize> {
        let n = to.saturating_sub(from);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: every header points at live buffers of this batch.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs[from..to].as_mut_ptr(),
                n as libc::c_uint,
                flags,
            )
        };
        check(r).map(|r| r as usize)
    }

    /// Makes slot `i` send the datagram just received into slot `i` (same length).
    pub fn reflect_len(&mut self, i: usize) {
        self.iovs[i].iov_len = self.hdrs[i].msg_len as usize;
    }
}

/// Level-triggered epoll over a few file descriptors.
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: no preconditions.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            fd,
            // SAFETY: all-zero is valid.
            events: vec![unsafe { mem::zeroed() }; capacity.max(1)],
        })
    }

    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: a valid event struct.
        check(unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns the ready tokens.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        // SAFETY: the events buffer is valid for its length.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        out.extend(self.events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe {
            libc::close(self.fd);
        }
    }
}

pub fn is_would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// The kernel's limit on segments per UDP GSO send (UDP_MAX_SEGMENTS).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Datagrams sent with UDP generic segmentation offload: each of `msgs` messages is one
/// buffer of up to `segs` equal datagrams of `seg_len` bytes, handed to the kernel whole and
/// split into separate datagrams before they reach the receiving socket. One sendmmsg sends
/// msgs × segs datagrams, so the load generator spends far less per datagram than the server
/// it drives (which sees ordinary, separate datagrams).
pub struct GsoBatch {
    seg_len: usize,
    segs: usize,
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<u64>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside point into the batch's own heap buffers.
unsafe impl Send for GsoBatch {}

impl GsoBatch {
    pub fn new(msgs: usize, segs: usize, seg_len: usize) -> GsoBatch {
        let segs = segs
            .clamp(1, GSO_MAX_SEGMENTS)
            .min(65000 / seg_len.max(1))
            .max(1);
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        let words = space.div_ceil(8);
        let mut b = GsoBatch {
            seg_len,
            segs,
            bufs: vec![0u8; msgs * segs * seg_len],
            // SAFETY: all-zero is a valid value for these C structs.
            iovs: vec![unsafe { mem::zeroed() }; msgs],
            names: vec![unsafe { mem::zeroed() }; msgs],
            cmsgs: vec![0u64; msgs * words],
            hdrs: vec![unsafe { mem::zeroed() }; msgs],
        };
        for m in 0..msgs {
            b.iovs[m].iov_base = b.bufs[m * segs * seg_len..].as_mut_ptr().cast();
            b.iovs[m].iov_len = segs * seg_len;
            let h = &mut b.hdrs[m].msg_hdr;
            h.msg_iov = &mut b.iovs[m];
            h.msg_iovlen = 1;
            h.msg_control = b.cmsgs[m * words..].as_mut_ptr().cast();
            h.msg_controllen = space as _;
            // SAFETY: the control buffer is CMSG_SPACE(2) bytes, 8-aligned.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg_len as u16);
            }
        }
        b
    }

    pub fn msgs(&self) -> usize {
        self.hdrs.len()
    }

    pub fn segs(&self) -> usize {
        self.segs
    }

    /// Datagram `s` of message `m`.
    pub fn seg_mut(&mut self, m: usize, s: usize) -> &mut [u8] {
        let at = (m * self.segs + s) * self.seg_len;
        &mut self.bufs[at..at + self.seg_len]
    }

    pub fn set_dest(&mut self, m: usize, dest: Option<(&libc::sockaddr_storage, libc::socklen_t)>) {
        let h = &mut self.hdrs[m].msg_hdr;
        match dest {
            Some((addr, len)) => {
                self.names[m] = *addr;
                h.msg_name = (&mut self.names[m] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = len;
            }
            None => {
                h.msg_name = std::ptr::null_mut();
                h.msg_namelen = 0;
            }
        }
    }

    /// sendmmsg of all messages; returns the number of datagrams (segments) sent.
    pub fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut done = 0;
        while done < self.hdrs.len() {
            // SAFETY: every header points at live buffers of this batch.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (self.hdrs.len() - done) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                if done == 0 {
                    return Err(io::Error::last_os_error());
                }
                break;
            }
            done += r as usize;
        }
        Ok(done * self.segs)
    }
}

/// Sends the datagrams of a received `Batch` to one destination, each run of equal-size
/// datagrams (the last may be shorter) as one UDP GSO message: the forwarder's version of
/// what the relay does (src/driver/batch.rs).
pub struct GsoSender {
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; 3]>,
    segs: Vec<usize>,
    dest: libc::sockaddr_storage,
}

// SAFETY: the raw pointers inside point into the sender's own heap buffers.
unsafe impl Send for GsoSender {}

impl GsoSender {
    pub fn new(capacity: usize) -> GsoSender {
        GsoSender {
            // SAFETY: all-zero is a valid value for these C structs.
            iovs: vec![unsafe { mem::zeroed() }; capacity],
            hdrs: vec![unsafe { mem::zeroed() }; capacity],
            cmsgs: vec![[0; 3]; capacity],
            segs: vec![0; capacity],
            dest: unsafe { mem::zeroed() },
        }
    }

    /// Sends datagrams 0..n of `batch` to `dest`; failed messages are dropped.
    pub fn send(
        &mut self,
        fd: RawFd,
        batch: &Batch,
        n: usize,
        dest: &libc::sockaddr_storage,
        destlen: libc::socklen_t,
    ) {
        self.dest = *dest;
        let n = n.min(self.iovs.len());
        let mut msgs = 0;
        let (mut first_iov, mut seg_len, mut bytes, mut closed) = (0, 0, 0, true);
        for i in 0..n {
            let d = batch.received(i);
            self.iovs[i] = libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            };
            let extends = msgs > 0
                && !closed
                && d.len() <= seg_len
                && self.segs[msgs - 1] < GSO_MAX_SEGMENTS
                && bytes + d.len() <= 65000;
            if extends {
                self.segs[msgs - 1] += 1;
                bytes += d.len();
                closed = d.len() < seg_len;
            } else {
                if msgs > 0 {
                    self.finish(msgs - 1, first_iov, seg_len, destlen);
                }
                first_iov = i;
                seg_len = d.len();
                bytes = d.len();
                closed = d.is_empty();
                self.segs[msgs] = 1;
                msgs += 1;
            }
        }
        if msgs > 0 {
            self.finish(msgs - 1, first_iov, seg_len, destlen);
        }
        let mut at = 0;
        while at < msgs {
            // SAFETY: the headers point at live iovecs, buffers and control buffers.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[at..].as_mut_ptr(),
                    (msgs - at) as libc::c_uint,
                    0,
                )
            };
            at += if r > 0 { r as usize } else { 1 };
        }
    }

    fn finish(&mut self, m: usize, first_iov: usize, seg_len: usize, destlen: libc::socklen_t) {
        let segs = self.segs[m];
        let hdr = &mut self.hdrs[m].msg_hdr;
        hdr.msg_iov = &mut self.iovs[first_iov];
        hdr.msg_iovlen = segs as _;
        hdr.msg_name = (&mut self.dest as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = destlen;
        if segs > 1 {
            hdr.msg_control = self.cmsgs[m].as_mut_ptr().cast();
            hdr.msg_controllen = mem::size_of::<[u64; 3]>() as _;
            // SAFETY: the control buffer is CMSG_SPACE(2) bytes, 8-aligned.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(hdr);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg_len as u16);
            }
        } else {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
        }
    }
}

/// The inode number of a socket (its key in /proc/net/udp).
pub fn inode(fd: RawFd) -> u64 {
    // SAFETY: fstat fills a plain struct.
    unsafe {
        let mut st: libc::stat = mem::zeroed();
        if libc::fstat(fd, &mut st) == 0 {
            st.st_ino
        } else {
            0
        }
    }
}

/// Datagrams the kernel dropped at these sockets (full receive buffer), from the last
/// column of /proc/net/udp and /proc/net/udp6.
pub fn udp_drops(inodes: &[u64]) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(inode), Some(drops)) = (fields.get(9), fields.last()) else {
                continue;
            };
            if inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i)) {
                total += drops.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}
