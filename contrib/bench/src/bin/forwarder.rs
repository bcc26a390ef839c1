//! The bare UDP forwarder: the ceiling of any user-space relay on this machine.
//!
//! Two sockets, one thread, no parsing. A datagram received on the "in" socket (the client
//! side) is sent from the "out" socket to the peer; a datagram received on the "out" socket is
//! sent from the "in" socket to the client. The peer and the client are whoever last sent to
//! the out and in socket respectively (the load generator says hello from both ends first),
//! the way a TURN allocation learns its client and is told its peer.
//!
//! The event loop is the relay's shape without the protocol: level-triggered epoll, then up
//! to 64 datagrams per ready socket per turn. `--batched` reads and writes those 64 with one
//! recvmmsg and one sendmmsg instead of one recv_from and one send_to each; `--gso` also
//! sends each run of equal-size datagrams as one UDP GSO message, as the relay does.
//!
//! Usage: forwarder --in ADDR --out ADDR [--batched | --gso]   (prints "ready" once bound)

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use relay_bench::sys::{self, Batch, Epoll};

const BUDGET: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Batched,
    Gso,
}
const SLOT: usize = 65536;

struct Side {
    socket: UdpSocket,
    /// Who last sent to this socket: the destination of what the other side receives.
    last_source: Option<(libc::sockaddr_storage, libc::socklen_t)>,
}

fn main() {
    let mut in_addr: Option<SocketAddr> = None;
    let mut out_addr: Option<SocketAddr> = None;
    let mut mode = Mode::Plain;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--in" => in_addr = args.next().and_then(|a| a.parse().ok()),
            "--out" => out_addr = args.next().and_then(|a| a.parse().ok()),
            "--batched" => mode = Mode::Batched,
            "--gso" => mode = Mode::Gso,
            _ => {
                eprintln!("usage: forwarder --in ADDR --out ADDR [--batched | --gso]");
                std::process::exit(2);
            }
        }
    }
    let (Some(in_addr), Some(out_addr)) = (in_addr, out_addr) else {
        eprintln!("usage: forwarder --in ADDR --out ADDR [--batched | --gso]");
        std::process::exit(2);
    };
    if let Err(e) = run(in_addr, out_addr, mode) {
        eprintln!("forwarder: {e}");
        std::process::exit(1);
    }
}

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s =
        sys::udp_bind(addr).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn run(in_addr: SocketAddr, out_addr: SocketAddr, mode: Mode) -> io::Result<()> {
    let mut sides = [
        Side {
            socket: bind(in_addr)?,
            last_source: None,
        },
        Side {
            socket: bind(out_addr)?,
            last_source: None,
        },
    ];
    let mut epoll = Epoll::new(8)?;
    epoll.add(sides[0].socket.as_raw_fd(), 0)?;
    epoll.add(sides[1].socket.as_raw_fd(), 1)?;
    println!("ready");
    io::stdout().flush()?;

    let mut ready = Vec::with_capacity(2);
    let mut batch = Batch::new(BUDGET, SLOT);
    let mut buf = vec![0u8; SLOT];
    let mut gso = sys::GsoSender::new(BUDGET);
    loop {
        epoll.wait(-1, &mut ready)?;
        for &token in &ready {
            let from = token as usize;
            match mode {
                Mode::Plain => forward_plain(&mut sides, from, &mut buf),
                Mode::Batched => forward_batched(&mut sides, from, &mut batch, None),
                Mode::Gso => forward_batched(&mut sides, from, &mut batch, Some(&mut gso)),
            }
        }
    }
}

/// Up to BUDGET datagrams, one recvfrom and one sendto each.
fn forward_plain(sides: &mut [Side; 2], from: usize, buf: &mut [u8]) {
    let to = 1 - from;
    let rfd = sides[from].socket.as_raw_fd();
    let sfd = sides[to].socket.as_raw_fd();
    for _ in 0..BUDGET {
        // SAFETY: zeroed storage is valid; the kernel fills it.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid buffer and address storage.
        let n = unsafe {
            libc::recvfrom(
                rfd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut name as *mut libc::sockaddr_storage).cast(),
                &mut namelen,
            )
        };
        if n < 0 {
            return; // EAGAIN (or an ICMP error surfacing): back to epoll
        }
        sides[from].last_source = Some((name, namelen));
        if let Some((dest, destlen)) = &sides[to].last_source {
            // SAFETY: valid buffer and destination.
            unsafe {
                libc::sendto(
                    sfd,
                    buf.as_ptr().cast(),
                    n as usize,
                    0,
                    (dest as *const libc::sockaddr_storage).cast(),
                    *destlen,
                );
            }
        }
    }
}

/// Up to BUDGET datagrams with one recvmmsg and one sendmmsg (of GSO runs with `gso`).
fn forward_batched(
    sides: &mut [Side; 2],
    from: usize,
    batch: &mut Batch,
    gso: Option<&mut sys::GsoSender>,
) {
    let to = 1 - from;
    let rfd = sides[from].socket.as_raw_fd();
    let sfd = sides[to].socket.as_raw_fd();
    let Ok(n) = batch.recv(rfd, BUDGET, libc::MSG_DONTWAIT) else {
        return;
    };
    if n == 0 {
        return;
    }
    // The last sender is learned from the batch's last datagram (its address storage is
    // overwritten below with the destination).
    let mut src: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    if let Some(addr) = batch.source(n - 1) {
        let len = sys::to_sockaddr(addr, &mut src);
        sides[from].last_source = Some((src, len));
    }
    let Some((dest, destlen)) = sides[to].last_source else {
        return;
    };
    if let Some(gso) = gso {
        gso.send(sfd, batch, n, &dest, destlen);
        return;
    }
    for i in 0..n {
        batch.reflect_len(i);
        batch.set_dest_raw(i, &dest, destlen);
    }
    let mut sent = 0;
    while sent < n {
        match batch.send(sfd, sent, n, 0) {
            Ok(k) if k > 0 => sent += k,
            // A datagram the kernel refused (e.g. ECONNREFUSED from an earlier ICMP) is
            // dropped, as the plain form drops it.
            _ => sent += 1,
        }
    }
}
