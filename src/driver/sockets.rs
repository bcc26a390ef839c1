//! Creating UDP sockets with the options set before bind: non-blocking, IPV6_V6ONLY on IPv6
//! (so `0.0.0.0:3478` and `[::]:3478` can both be bound) and deliberate buffer sizes.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel buffer size asked for on every socket: enough for a burst of ~2000 full-size
/// datagrams. The kernel caps it at net.core.{r,w}mem_max (see README).
const BUFFER_BYTES: usize = 4 << 20;

pub fn bind_udp(addr: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Best effort: a smaller buffer than asked for is not an error.
    let _ = socket.set_recv_buffer_size(BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}
