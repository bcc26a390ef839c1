//! A TURN client over TCP or TLS for the stream workloads: a connection from its own
//! loopback address, the TLS handshake (rustls), STUN requests and their answers read off
//! the byte stream, and the Allocate → 401 → Allocate → ChannelBind exchange, one
//! transaction at a time (a stream neither loses nor reorders).

use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::alloc::{self, CHANNEL};
use crate::stun::{self, Builder, Credentials, Parsed, TidSource};
use crate::tls;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
}

impl Transport {
    pub fn key(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A client connection: plain TCP, or TLS over TCP.
pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// Bounds every blocking read and write: a server that stops answering fails the workload
/// instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The loopback address of client `i` (127.1.x.y, as `sys::udp_client`): clients come from
/// many addresses, so no per-address limit of a server is what gets measured.
pub fn client_ip(i: usize) -> Ipv4Addr {
    let (hi, lo) = ((i / 250) % 250, i % 250);
    Ipv4Addr::new(127, 1, hi as u8, lo as u8 + 1)
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn set_int(fd: libc::c_int, level: libc::c_int, name: libc::c_int, v: libc::c_int) {
    // SAFETY: a c_int option of the right size; best effort.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A blocking TCP connection from `local` (any port) to `remote`.
pub fn tcp_connect(local: Ipv4Addr, remote: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(remote) = remote else {
        return Err(io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket calls on a descriptor we own; TcpStream takes it over.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let stream = TcpStream::from_raw_fd(fd);
        // The port is chosen at connect time, per destination: thousands of connections
        // from few addresses do not run out of ports at bind.
        set_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        let mut sa: libc::sockaddr_in = mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(local).to_be();
        let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        check(libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        sa.sin_port = remote.port().to_be();
        sa.sin_addr.s_addr = u32::from(*remote.ip()).to_be();
        check(libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }
}

impl Conn {
    /// Connects client `i` and, for TLS, completes the handshake.
    pub fn open(
        transport: Transport,
        i: usize,
        remote: SocketAddr,
        config: &Arc<ClientConfig>,
    ) -> io::Result<Conn> {
        let mut sock = tcp_connect(client_ip(i), remote)?;
        match transport {
            Transport::Tcp => Ok(Conn::Tcp(sock)),
            Transport::Tls => {
                let mut conn = ClientConnection::new(config.clone(), tls::server_name())
                    .map_err(io::Error::other)?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock)?;
                }
                Ok(Conn::Tls(Box::new(StreamOwned::new(conn, sock))))
            }
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    /// Close with RST: no TIME_WAIT left behind by thousands of short connections.
    pub fn abort(self) {
        let fd = self.tcp().as_raw_fd();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a linger struct of the right size on our own socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    /// Writes all of `buf` (encrypted for TLS) to the socket.
    pub fn send_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(buf),
            Conn::Tls(t) => {
                let mut done = 0;
                while done < buf.len() {
                    done += t.conn.writer().write(&buf[done..])?;
                    while t.conn.wants_write() {
                        t.conn.write_tls(&mut t.sock)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Appends what can be read now (the socket is non-blocking; decrypted for TLS) to
    /// `out`; Ok(0) when nothing was there.
    pub fn read_available(&mut self, scratch: &mut [u8], out: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => match s.read(scratch) {
                Ok(n) => {
                    out.extend_from_slice(&scratch[..n]);
                    Ok(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            },
            Conn::Tls(t) => {
                match t.conn.read_tls(&mut t.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                t.conn.process_new_packets().map_err(io::Error::other)?;
                let mut total = 0;
                loop {
                    match t.conn.reader().read(scratch) {
                        Ok(0) => return Ok(total),
                        Ok(n) => {
                            out.extend_from_slice(&scratch[..n]);
                            total += n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.read_exact(buf),
            Conn::Tls(t) => t.read_exact(buf),
        }
    }

    /// The next STUN message on the stream (ChannelData frames before it are skipped).
    pub fn read_stun(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let mut head = [0u8; 4];
            self.read_exact(&mut head)?;
            let len = u16::from_be_bytes([head[2], head[3]]) as usize;
            if head[0] & 0xC0 == 0 {
                let mut msg = vec![0u8; 20 + len];
                msg[..4].copy_from_slice(&head);
                self.read_exact(&mut msg[4..])?;
                return Ok(msg);
            }
            // ChannelData, padded to 4 bytes on a stream (RFC 8656 §12.5).
            let mut skip = vec![0u8; len.div_ceil(4) * 4];
            self.read_exact(&mut skip)?;
        }
    }

    /// Sends a request and returns the answer with the same transaction id.
    pub fn transact(&mut self, request: &[u8]) -> io::Result<Vec<u8>> {
        self.send_all(request)?;
        loop {
            let answer = self.read_stun()?;
            if answer.len() >= 20 && answer[8..20] == request[8..20] {
                return Ok(answer);
            }
        }
    }

    /// A Binding request answered: the server has finished with the handshake.
    pub fn binding(&mut self, tids: &mut TidSource) -> io::Result<()> {
        let req = Builder::new(stun::BINDING_REQUEST, tids.next()).fingerprint();
        let answer = self.transact(&req)?;
        match Parsed::parse(&answer) {
            Some(p) if p.msg_type == stun::BINDING_SUCCESS => Ok(()),
            _ => Err(io::Error::other("Binding not answered with success")),
        }
    }

    /// Allocate (401, then with credentials) and ChannelBind CHANNEL to `peer`; returns the
    /// relayed address.
    pub fn allocate_with_channel(
        &mut self,
        creds: &Credentials,
        peer: SocketAddr,
        tids: &mut TidSource,
    ) -> io::Result<SocketAddr> {
        let probe = Builder::new(stun::ALLOCATE_REQUEST, tids.next())
            .attr(stun::ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .fingerprint();
        let answer = self.transact(&probe)?;
        let p = Parsed::parse(&answer).ok_or_else(|| io::Error::other("bad STUN answer"))?;
        if p.error_code() != Some(401) {
            return Err(io::Error::other(format!(
                "unauthenticated Allocate: type {:#06x} code {:?}",
                p.msg_type,
                p.error_code()
            )));
        }
        let realm = p.attr(stun::ATTR_REALM).unwrap_or_default().to_vec();
        let nonce = p.attr(stun::ATTR_NONCE).unwrap_or_default().to_vec();
        let answer = self.transact(&alloc::allocate_request(tids.next(), creds, &realm, &nonce))?;
        let p = Parsed::parse(&answer).ok_or_else(|| io::Error::other("bad STUN answer"))?;
        let relayed = match p.xor_address(stun::ATTR_XOR_RELAYED_ADDRESS) {
            Some(r) if p.msg_type == stun::ALLOCATE_SUCCESS => r,
            _ => {
                return Err(io::Error::other(format!(
                    "Allocate: type {:#06x} code {:?}",
                    p.msg_type,
                    p.error_code()
                )));
            }
        };
        let answer = self.transact(&alloc::bind_request(
            tids.next(),
            peer,
            creds,
            &realm,
            &nonce,
        ))?;
        match Parsed::parse(&answer) {
            Some(p) if p.msg_type == stun::CHANNEL_BIND_SUCCESS => Ok(relayed),
            Some(p) => Err(io::Error::other(format!(
                "ChannelBind of {CHANNEL:#x}: type {:#06x} code {:?}",
                p.msg_type,
                p.error_code()
            ))),
            None => Err(io::Error::other("bad STUN answer")),
        }
    }
}
