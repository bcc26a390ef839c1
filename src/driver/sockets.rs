//! Creating UDP sockets with the options set before bind: non-blocking, IPV6_V6ONLY on IPv6
//! (so `0.0.0.0:3478` and `[::]:3478` can both be bound) and deliberate buffer sizes.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel buffer size asked for on every socket: enough for a burst of ~2000 full-size
/// datagrams. The kernel caps it at net.core.{r,w}mem_max (see README).
const BUFFER_BYTES: usize = 4 << 20;

pub(super) fn bind_udp(addr: SocketAddr, dont_fragment: bool) -> io::Result<mio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if dont_fragment {
        set_dont_fragment(&socket, addr.is_ipv6())?;
    }
    socket.set_nonblocking(true)?;
    // Best effort: a smaller buffer than asked for is not an error.
    let _ = socket.set_recv_buffer_size(BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

/// A non-blocking TCP listener on `addr` (TURN over TCP and TLS). SO_REUSEADDR so that a
/// restart does not wait for the old connections' TIME_WAIT.
pub(super) fn bind_tcp(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// A UDP socket and a TCP listener on one port the kernel chooses (`addr` has port 0): the
/// TCP port first, then UDP on it, again with another port if UDP's is taken.
pub(super) fn bind_udp_and_tcp(
    addr: SocketAddr,
) -> io::Result<(mio::net::UdpSocket, mio::net::TcpListener)> {
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..32 {
        let tcp = bind_tcp(addr)?;
        let port = tcp.local_addr()?.port();
        match bind_udp(SocketAddr::new(addr.ip(), port), false) {
            Ok(udp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// DF on every datagram: IP_PMTUDISC_DO for IPv4 (the kernel never fragments, and refuses
/// datagrams above the path MTU with EMSGSIZE), IPV6_DONTFRAG for IPv6.
fn set_dont_fragment(socket: &Socket, ipv6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    let value: libc::c_int = value;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
